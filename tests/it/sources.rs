//! The ingestion tasks (`sec.*`, `yahoo.chart`, `alphavantage.*`) run directly, without a node,
//! against a [`FakeUpstream`] with a journal on a temporary dir: the records they store, what
//! a re-run stores, how each way an upstream fails is classified, what the gate is told, and
//! what reaches the upstream (the SEC User-Agent) or never leaves the node (the API key).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use warden_actors::args::{BreakerArgs, UpstreamArgs};
use warden_actors::sources::{self, Source};
use warden_actors::store::journal::{Journal, StoredRecord};
use warden_actors::tasks::{Records, TaskCtx, TaskError, TaskResult, TaskSet};
use warden_actors::upstream::{Blocked, Gate, Hold, OpenGate, Verdict};

use crate::fakes::{self, Failure, FakeUpstream};

/// The Alpha Vantage key of these tests: distinctive, so a leak cannot hide.
const API_KEY: &str = "av-test-key-7f3a9c51";

/// The SEC User-Agent of these tests.
const USER_AGENT: &str = "Warden Tests tests@example.com";

/// A fake upstream and a journal on a temporary dir.
struct Rig {
    fake: FakeUpstream,
    journal: Journal,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start() -> Rig {
        let fake = FakeUpstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        Rig {
            fake,
            journal,
            _dir: dir,
        }
    }

    /// What a pipeline of this name is configured with, pointed at the fake.
    fn args(&self, pipeline: &str) -> UpstreamArgs {
        UpstreamArgs {
            base_url: self.fake.base_url(),
            tickers_url: (pipeline == "sec").then(|| self.fake.tickers_url()),
            user_agent: (pipeline == "sec").then(|| USER_AGENT.to_string()),
            api_key: (pipeline == "alphavantage").then(|| API_KEY.to_string()),
            rate_limit: vec![],
            request_timeout: Duration::from_secs(5),
            breaker: BreakerArgs {
                failure_threshold: 5,
                open_for: Duration::from_secs(60),
                max_open_for: Duration::from_secs(600),
            },
            throttle_cooldown: Duration::from_secs(60),
        }
    }

    /// The pipeline's tasks behind an always-open gate.
    fn tasks(&self, pipeline: &str) -> TaskSet {
        self.tasks_with(pipeline, Arc::new(OpenGate), |_| {})
    }

    /// The pipeline's tasks behind `gate`, with `tweak` applied to its arguments.
    fn tasks_with(
        &self,
        pipeline: &str,
        gate: Arc<dyn Gate>,
        tweak: impl FnOnce(&mut UpstreamArgs),
    ) -> TaskSet {
        let mut args = self.args(pipeline);
        tweak(&mut args);
        let src = Source::new(pipeline, args, gate, self.journal.clone()).unwrap();
        let set = sources::task_set(pipeline, Arc::new(src)).unwrap();
        // A task stores through its context, as a worker gives it: here the harness's journal.
        let records = Records::new(self.journal.clone());
        let names: Vec<String> = set.names().map(String::from).collect();
        names.iter().fold(TaskSet::default(), |out, name| {
            let (Some(task), records) = (set.get(name).cloned(), records.clone()) else {
                return out.with_split(name, set.split(name).unwrap().clone());
            };
            out.with(
                name,
                Arc::new(move |mut ctx: TaskCtx| {
                    ctx.records = records.clone();
                    task(ctx)
                }),
            )
        })
    }

    fn records(&self, prefix: &str) -> Vec<StoredRecord> {
        self.journal.records(prefix, None, 100_000).unwrap()
    }
}

/// A gate that admits everything (or refuses everything, or never answers) and remembers the
/// verdicts it is told.
#[derive(Default)]
struct RecordingGate {
    blocked: Option<Blocked>,
    hang: bool,
    verdicts: Mutex<Vec<Verdict>>,
}

impl RecordingGate {
    fn verdicts(&self) -> Vec<Verdict> {
        self.verdicts.lock().unwrap().clone()
    }
}

impl Gate for RecordingGate {
    fn acquire(&self) -> Pin<Box<dyn Future<Output = Result<(), Blocked>> + Send + '_>> {
        Box::pin(async move {
            if self.hang {
                std::future::pending::<()>().await;
            }
            match &self.blocked {
                Some(blocked) => Err(blocked.clone()),
                None => Ok(()),
            }
        })
    }

    fn report(&self, verdict: Verdict) {
        self.verdicts.lock().unwrap().push(verdict);
    }
}

fn ctx(name: &str, params: Value) -> TaskCtx {
    TaskCtx::detached(name, params, 1)
}

/// Runs the task `name` of `set` once, as a worker would.
async fn run(set: &TaskSet, name: &str, params: Value) -> TaskResult {
    let task = set
        .get(name)
        .unwrap_or_else(|| panic!("no task {name} in {set:?}"));
    task(ctx(name, params)).await
}

fn permanent(result: TaskResult) -> String {
    match result {
        Err(TaskError::Permanent(message)) => message,
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

fn transient(result: TaskResult) -> String {
    match result {
        Err(TaskError::Transient(message)) => message,
        other => panic!("expected a transient error, got {other:?}"),
    }
}

fn throttled(result: TaskResult) -> (String, Option<Duration>) {
    match result {
        Err(TaskError::Throttled {
            message,
            retry_after,
            ..
        }) => (message, retry_after),
        other => panic!("expected a throttled error, got {other:?}"),
    }
}

const NO_WAIT: Verdict = Verdict::Throttled {
    retry_after: None,
    until_next_utc_day: false,
};

/// Ensures that `sec.filings` stores one record per filing under its CIK and accession
/// number, and that a re-run stores nothing and duplicates nothing.
#[tokio::test]
async fn sec_filings_store_each_filing_once() {
    let rig = Rig::start().await;
    let sec = rig.tasks("sec");
    let expected = json!({
        "ticker": "CHGG",
        "cik": 1364954,
        "filings_found": fakes::FILINGS_PER_COMPANY,
        "filings_stored": fakes::FILINGS_PER_COMPANY,
    });
    assert_eq!(
        run(&sec, "sec.filings", json!({"ticker": "CHGG"})).await,
        Ok(expected)
    );
    let records = rig.records("sec/filings/1364954/");
    assert_eq!(records.len(), fakes::FILINGS_PER_COMPANY);
    let newest = rig
        .records("sec/filings/1364954/0001364954-25-000100")
        .remove(0);
    assert_eq!(newest.value["form"], "10-Q");
    assert_eq!(newest.value["filingDate"], "2025-11-03");
    assert_eq!(newest.value["reportDate"], "2025-09-30");
    assert_eq!(newest.value["name"], "Chegg, Inc.");
    assert_eq!(newest.value["cik"], 1364954);

    let again = run(&sec, "sec.filings", json!({"ticker": "CHGG"}))
        .await
        .unwrap();
    assert_eq!(again["filings_found"], fakes::FILINGS_PER_COMPANY);
    assert_eq!(again["filings_stored"], 0);
    assert_eq!(
        rig.records("sec/filings/").len(),
        fakes::FILINGS_PER_COMPANY
    );
}

/// Ensures that `forms` and `since` select filings, and that overlapping selections store
/// only the filings not stored before.
#[tokio::test]
async fn sec_filings_filter_by_forms_and_since() {
    let rig = Rig::start().await;
    let sec = rig.tasks("sec");
    let ten_q = run(
        &sec,
        "sec.filings",
        json!({"ticker": "chgg", "forms": ["10-Q"]}),
    )
    .await
    .unwrap();
    assert_eq!(ten_q["ticker"], "CHGG");
    assert_eq!(ten_q["filings_found"], fakes::TEN_Q_PER_COMPANY);
    assert_eq!(ten_q["filings_stored"], fakes::TEN_Q_PER_COMPANY);

    // Since June: two of the 10-Qs above plus two 8-Ks, of which only the 8-Ks are new.
    let since = run(
        &sec,
        "sec.filings",
        json!({"ticker": "CHGG", "since": "2025-06-01"}),
    )
    .await
    .unwrap();
    assert_eq!(since["filings_found"], fakes::FILINGS_SINCE_JUNE_2025);
    assert_eq!(since["filings_stored"], 2);

    let both = run(
        &sec,
        "sec.filings",
        json!({"ticker": "CHGG", "forms": ["10-Q"], "since": "2025-06-01"}),
    )
    .await
    .unwrap();
    assert_eq!(both["filings_found"], 2);
    assert_eq!(both["filings_stored"], 0);
    assert_eq!(rig.records("sec/filings/").len(), 5);
}

/// Ensures that `sec.company_facts` stores one record per (concept, period end), that
/// `concepts` narrows them, and that a re-run stores nothing.
#[tokio::test]
async fn sec_company_facts_store_each_period_once() {
    let rig = Rig::start().await;
    let sec = rig.tasks("sec");
    assert_eq!(
        run(&sec, "sec.company_facts", json!({"ticker": "CHGG"})).await,
        Ok(json!({
            "ticker": "CHGG",
            "cik": 1364954,
            "facts_stored": fakes::FACT_RECORDS_PER_COMPANY,
        }))
    );
    assert_eq!(
        rig.records("sec/facts/1364954/").len(),
        fakes::FACT_RECORDS_PER_COMPANY
    );
    let q3 = rig
        .records("sec/facts/1364954/Revenues/2025-09-30")
        .remove(0);
    // The quarter and the nine months to date end on the same day: one record holds both.
    assert_eq!(q3.value["facts"].as_array().unwrap().len(), 2);
    assert_eq!(q3.value["facts"][0]["unit"], "USD");

    let again = run(&sec, "sec.company_facts", json!({"ticker": "CHGG"}))
        .await
        .unwrap();
    assert_eq!(again["facts_stored"], 0);

    let revenues = run(
        &sec,
        "sec.company_facts",
        json!({"ticker": "IBM", "concepts": ["Revenues"]}),
    )
    .await
    .unwrap();
    assert_eq!(revenues["cik"], 51143);
    assert_eq!(revenues["facts_stored"], fakes::REVENUE_RECORDS_PER_COMPANY);
    assert_eq!(
        rig.records("sec/facts/51143/").len(),
        fakes::REVENUE_RECORDS_PER_COMPANY
    );
}

/// Ensures that one ticker-map request serves every ticker, concurrent jobs included, and
/// that the map cached in the journal serves a new source (a restarted node) too.
#[tokio::test]
async fn sec_ticker_map_is_fetched_once_and_cached() {
    let rig = Rig::start().await;
    let sec = rig.tasks("sec");
    let jobs: Vec<_> = fakes::COMPANIES
        .iter()
        .take(20)
        .map(|c| {
            let task = sec.get("sec.filings").unwrap().clone();
            tokio::spawn(task(ctx("sec.filings", json!({"ticker": c.ticker}))))
        })
        .collect();
    for job in jobs {
        let result = job.await.unwrap().unwrap();
        assert_eq!(result["filings_stored"], fakes::FILINGS_PER_COMPANY);
    }
    assert_eq!(rig.fake.requests_to(fakes::SEC_TICKERS_PATH).len(), 1);
    assert_eq!(
        rig.fake.requests_to(fakes::SEC_SUBMISSIONS_PREFIX).len(),
        20
    );

    let restarted = rig.tasks("sec");
    run(&restarted, "sec.company_facts", json!({"ticker": "MSFT"}))
        .await
        .unwrap();
    assert_eq!(rig.fake.requests_to(fakes::SEC_TICKERS_PATH).len(), 1);
}

/// Ensures that `yahoo.chart` stores one record per bar with prices, skipping null bars, and
/// that a re-run stores nothing.
#[tokio::test]
async fn yahoo_chart_stores_bars_and_skips_nulls() {
    let rig = Rig::start().await;
    let yahoo = rig.tasks("yahoo");
    let bars = fakes::CHART_BARS_1MO - fakes::CHART_NULL_BARS_1MO;
    assert_eq!(
        run(&yahoo, "yahoo.chart", json!({"ticker": "CHGG"})).await,
        Ok(json!({"ticker": "CHGG", "bars": bars, "stored": bars}))
    );
    let request = rig.fake.requests_to("/v8/finance/chart/CHGG").remove(0);
    assert_eq!(request.query_param("range").as_deref(), Some("1mo"));
    assert_eq!(request.query_param("interval").as_deref(), Some("1d"));
    let records = rig.records("yahoo/chart/CHGG/1d/");
    assert_eq!(records.len(), bars);
    assert_eq!(
        records.last().unwrap().key,
        "yahoo/chart/CHGG/1d/2025-11-28"
    );
    assert!(records.iter().all(|r| r.value["close"].is_number()));

    assert_eq!(
        run(&yahoo, "yahoo.chart", json!({"ticker": "CHGG"})).await,
        Ok(json!({"ticker": "CHGG", "bars": bars, "stored": 0}))
    );
    let week = run(
        &yahoo,
        "yahoo.chart",
        json!({"ticker": "AAPL", "range": "5d", "interval": "1d"}),
    )
    .await
    .unwrap();
    assert_eq!(week["bars"], 4);
}

/// Ensures that the Alpha Vantage tasks store the overview and one record per quarter, and
/// that a re-run stores nothing.
#[tokio::test]
async fn alphavantage_tasks_store_overview_and_quarters() {
    let rig = Rig::start().await;
    let av = rig.tasks("alphavantage");
    assert_eq!(
        run(&av, "alphavantage.overview", json!({"symbol": "IBM"})).await,
        Ok(json!({"symbol": "IBM", "stored": 1}))
    );
    let overview = rig.records("alphavantage/overview/IBM").remove(0);
    assert_eq!(overview.value["Symbol"], "IBM");
    assert_eq!(overview.value["CIK"], "51143");
    assert_eq!(
        run(
            &av,
            "alphavantage.income_statement",
            json!({"symbol": "ibm"})
        )
        .await,
        Ok(json!({"symbol": "IBM", "stored": fakes::QUARTERLY_REPORTS}))
    );
    let quarters = rig.records("alphavantage/income/IBM/");
    assert_eq!(quarters.len(), fakes::QUARTERLY_REPORTS);
    assert_eq!(quarters[0].key, "alphavantage/income/IBM/2024-12-31");
    assert_eq!(quarters[0].value["symbol"], "IBM");

    assert_eq!(
        run(&av, "alphavantage.overview", json!({"symbol": "IBM"})).await,
        Ok(json!({"symbol": "IBM", "stored": 0}))
    );
    assert_eq!(
        run(
            &av,
            "alphavantage.income_statement",
            json!({"symbol": "IBM"})
        )
        .await,
        Ok(json!({"symbol": "IBM", "stored": 0}))
    );
}

/// Ensures that an unknown ticker or symbol is a permanent error naming it, on every source,
/// and that the gate hears a healthy upstream.
#[tokio::test]
async fn unknown_tickers_are_permanent_and_named() {
    let rig = Rig::start().await;
    let gate = Arc::new(RecordingGate::default());
    let sec = rig.tasks_with("sec", gate.clone(), |_| {});
    let message = permanent(run(&sec, "sec.filings", json!({"ticker": "ZZZZ"})).await);
    assert!(
        message.starts_with("sec.filings: unknown ticker \"ZZZZ\""),
        "{message}"
    );
    assert!(rig
        .fake
        .requests_to(fakes::SEC_SUBMISSIONS_PREFIX)
        .is_empty());

    // A ticker SEC maps but whose CIK it then does not have.
    rig.fake
        .fail_next_to(fakes::SEC_FACTS_PREFIX, 1, Failure::Status(404));
    let message = permanent(run(&sec, "sec.company_facts", json!({"ticker": "CHGG"})).await);
    assert!(
        message.contains("no company facts for CIK 1364954"),
        "{message}"
    );

    let yahoo = rig.tasks_with("yahoo", gate.clone(), |_| {});
    let message = permanent(run(&yahoo, "yahoo.chart", json!({"ticker": "ZZZZ"})).await);
    assert!(
        message.starts_with("yahoo.chart: unknown ticker \"ZZZZ\" (Yahoo: No data found"),
        "{message}"
    );

    let av = rig.tasks_with("alphavantage", gate.clone(), |_| {});
    let message = permanent(run(&av, "alphavantage.overview", json!({"symbol": "ZZZZ"})).await);
    assert!(
        message.starts_with("alphavantage.overview: unknown symbol \"ZZZZ\""),
        "{message}"
    );
    // The ticker map, the facts 404, Yahoo's 404, Alpha Vantage's `{}`: all definite answers.
    assert_eq!(gate.verdicts(), vec![Verdict::Ok; 4]);
}

/// Ensures that missing or mistyped params are permanent errors naming the param, found
/// before any request.
#[tokio::test]
async fn bad_params_are_permanent_before_any_request() {
    let rig = Rig::start().await;
    let sec = rig.tasks("sec");
    let yahoo = rig.tasks("yahoo");
    let av = rig.tasks("alphavantage");
    assert_eq!(
        permanent(run(&sec, "sec.filings", json!({})).await),
        "sec.filings: params.ticker: expected a ticker like \"CHGG\", got nothing"
    );
    let cases = [
        (&sec, "sec.filings", json!({"ticker": 42}), "params.ticker"),
        (
            &sec,
            "sec.filings",
            json!({"ticker": "CHGG", "forms": "10-K"}),
            "params.forms",
        ),
        (
            &sec,
            "sec.filings",
            json!({"ticker": "CHGG", "since": "yesterday"}),
            "params.since",
        ),
        (
            &sec,
            "sec.company_facts",
            json!({"concepts": ["Revenues"]}),
            "params.ticker",
        ),
        (
            &sec,
            "sec.company_facts",
            json!({"ticker": "CHGG", "concepts": [1]}),
            "params.concepts",
        ),
        (
            &yahoo,
            "yahoo.chart",
            json!({"ticker": null}),
            "params.ticker",
        ),
        (
            &yahoo,
            "yahoo.chart",
            json!({"ticker": "CHGG", "range": "7y"}),
            "params.range",
        ),
        (
            &yahoo,
            "yahoo.chart",
            json!({"ticker": "CHGG", "interval": 1}),
            "params.interval",
        ),
        (&av, "alphavantage.overview", json!({}), "params.symbol"),
        (
            &av,
            "alphavantage.income_statement",
            json!({"symbol": "I B M"}),
            "params.symbol",
        ),
    ];
    for (set, name, params, named) in cases {
        let message = permanent(run(set, name, params.clone()).await);
        assert!(
            message.starts_with(&format!("{name}: {named}: expected")),
            "{name} {params}: {message}"
        );
    }
    assert!(rig.fake.requests().is_empty());
}

/// Ensures that a 5xx is transient, with an error naming the task, the request and what came
/// back, and that the gate hears a transient failure.
#[tokio::test]
async fn server_errors_are_transient() {
    let rig = Rig::start().await;
    let gate = Arc::new(RecordingGate::default());
    let yahoo = rig.tasks_with("yahoo", gate.clone(), |_| {});
    rig.fake.fail_next(1, Failure::Status(500));
    let message = transient(run(&yahoo, "yahoo.chart", json!({"ticker": "CHGG"})).await);
    let url = format!(
        "GET {}/v8/finance/chart/CHGG?range=1mo&interval=1d",
        rig.fake.base_url()
    );
    assert_eq!(
        message,
        format!(
            "yahoo.chart: upstream server error: {url} answered HTTP 500 Internal Server Error: \
             \"fake upstream: injected HTTP 500\""
        )
    );
    assert_eq!(gate.verdicts(), vec![Verdict::Transient]);

    run(&yahoo, "yahoo.chart", json!({"ticker": "CHGG"}))
        .await
        .unwrap();
    assert_eq!(gate.verdicts(), vec![Verdict::Transient, Verdict::Ok]);
}

/// Ensures that a 429 is throttled with the `Retry-After` it carried, or none.
#[tokio::test]
async fn too_many_requests_are_throttled_with_retry_after() {
    let rig = Rig::start().await;
    let gate = Arc::new(RecordingGate::default());
    let yahoo = rig.tasks_with("yahoo", gate.clone(), |_| {});
    rig.fake.fail_next(
        1,
        Failure::TooMany {
            retry_after: Some(7),
        },
    );
    let (message, retry_after) =
        throttled(run(&yahoo, "yahoo.chart", json!({"ticker": "CHGG"})).await);
    assert_eq!(retry_after, Some(Duration::from_secs(7)));
    assert!(message.contains("HTTP 429 Too Many Requests"), "{message}");

    rig.fake
        .fail_next(1, Failure::TooMany { retry_after: None });
    let (_, retry_after) = throttled(run(&yahoo, "yahoo.chart", json!({"ticker": "CHGG"})).await);
    assert_eq!(retry_after, None);
    assert_eq!(
        gate.verdicts(),
        vec![
            Verdict::Throttled {
                retry_after: Some(Duration::from_secs(7)),
                until_next_utc_day: false
            },
            NO_WAIT
        ]
    );
}

/// Ensures that SEC's 403 rate page is throttled without a wait of its own, so the limiter's
/// cooldown decides, on the ticker map as on the data requests.
#[tokio::test]
async fn sec_rate_page_is_throttled() {
    let rig = Rig::start().await;
    let gate = Arc::new(RecordingGate::default());
    let sec = rig.tasks_with("sec", gate.clone(), |_| {});
    rig.fake.fail_next(1, Failure::SecRateLimited);
    let (message, retry_after) =
        throttled(run(&sec, "sec.filings", json!({"ticker": "CHGG"})).await);
    assert_eq!(retry_after, None);
    assert!(
        message.contains("Request Rate Threshold Exceeded"),
        "{message}"
    );
    assert!(message.contains(fakes::SEC_TICKERS_PATH), "{message}");

    rig.fake
        .fail_next_to(fakes::SEC_SUBMISSIONS_PREFIX, 1, Failure::SecRateLimited);
    let (message, retry_after) =
        throttled(run(&sec, "sec.filings", json!({"ticker": "CHGG"})).await);
    assert_eq!(retry_after, None);
    assert!(message.contains("CIK0001364954.json"), "{message}");
    assert_eq!(gate.verdicts(), vec![NO_WAIT, Verdict::Ok, NO_WAIT]);
}

/// Ensures that Alpha Vantage's `Note` is throttled and its daily `Information` is throttled
/// until the next UTC day.
#[tokio::test]
async fn alphavantage_quota_notes_are_throttled() {
    let rig = Rig::start().await;
    let gate = Arc::new(RecordingGate::default());
    let av = rig.tasks_with("alphavantage", gate.clone(), |_| {});
    rig.fake.fail_next(1, Failure::AvNote);
    let (message, retry_after) =
        throttled(run(&av, "alphavantage.overview", json!({"symbol": "IBM"})).await);
    assert_eq!(retry_after, None);
    assert!(message.contains("5 calls per minute"), "{message}");

    rig.fake.fail_next(1, Failure::AvDailyLimit);
    let (message, retry_after) = throttled(
        run(
            &av,
            "alphavantage.income_statement",
            json!({"symbol": "IBM"}),
        )
        .await,
    );
    assert!(message.contains("daily quota"), "{message}");
    let wait = retry_after.expect("a daily quota says how long to wait");
    assert!(wait <= Duration::from_secs(86_400), "{wait:?}");
    assert_eq!(
        gate.verdicts(),
        vec![
            NO_WAIT,
            Verdict::Throttled {
                retry_after: None,
                until_next_utc_day: true
            }
        ]
    );
    assert!(rig.records("alphavantage/").is_empty());
}

/// Ensures that a body cut off in the middle, or one that is not JSON, is transient on
/// every source.
#[tokio::test]
async fn truncated_and_garbage_bodies_are_transient() {
    let rig = Rig::start().await;
    let gate = Arc::new(RecordingGate::default());
    let sec = rig.tasks_with("sec", gate.clone(), |_| {});
    let yahoo = rig.tasks_with("yahoo", gate.clone(), |_| {});
    let av = rig.tasks_with("alphavantage", gate.clone(), |_| {});
    for failure in [Failure::Truncated, Failure::Garbage] {
        rig.fake
            .fail_next_to(fakes::SEC_SUBMISSIONS_PREFIX, 1, failure.clone());
        let message = transient(run(&sec, "sec.filings", json!({"ticker": "CHGG"})).await);
        assert!(
            message.contains("CIK0001364954.json"),
            "{failure:?}: {message}"
        );
        let said = match failure {
            Failure::Truncated => "the body was cut off",
            _ => "the body is not JSON",
        };
        assert!(
            message.starts_with(&format!("sec.filings: {said}")),
            "{message}"
        );
        rig.fake.fail_next(1, failure.clone());
        transient(run(&yahoo, "yahoo.chart", json!({"ticker": "CHGG"})).await);
        rig.fake.fail_next(1, failure.clone());
        transient(run(&av, "alphavantage.overview", json!({"symbol": "IBM"})).await);
    }
    assert!(rig.records("").is_empty());
    let failures = gate
        .verdicts()
        .into_iter()
        .filter(|v| *v == Verdict::Transient)
        .count();
    assert_eq!(failures, 6);
}

/// Ensures that the configured User-Agent reaches the upstream on every SEC request.
#[tokio::test]
async fn sec_user_agent_is_sent_on_every_request() {
    let rig = Rig::start().await;
    let sec = rig.tasks("sec");
    for ticker in ["CHGG", "IBM", "AAPL"] {
        run(&sec, "sec.filings", json!({"ticker": ticker}))
            .await
            .unwrap();
        run(&sec, "sec.company_facts", json!({"ticker": ticker}))
            .await
            .unwrap();
    }
    let requests = rig.fake.requests();
    assert_eq!(requests.len(), 7);
    for request in requests {
        assert_eq!(
            request.user_agent(),
            Some(USER_AGENT),
            "{}",
            request.path_and_query()
        );
    }
}

/// Ensures that an answer slower than `request_timeout` is transient, and is given up on
/// at the timeout rather than waited for.
#[tokio::test]
async fn slow_answers_past_request_timeout_are_transient() {
    let rig = Rig::start().await;
    let gate = Arc::new(RecordingGate::default());
    let yahoo = rig.tasks_with("yahoo", gate.clone(), |args| {
        args.request_timeout = Duration::from_millis(300);
    });
    rig.fake.fail_next(1, Failure::Slow(Duration::from_secs(5)));
    let started = Instant::now();
    let message = transient(run(&yahoo, "yahoo.chart", json!({"ticker": "CHGG"})).await);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(
        message.starts_with("yahoo.chart: no answer within the request_timeout of 300ms"),
        "{message}"
    );
    assert_eq!(gate.verdicts(), vec![Verdict::Transient]);
}

/// Ensures that an upstream that refuses connections is transient.
#[tokio::test]
async fn connect_errors_are_transient() {
    let rig = Rig::start().await;
    // A port that was free a moment ago and has no listener now.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let gate = Arc::new(RecordingGate::default());
    let yahoo = rig.tasks_with("yahoo", gate.clone(), |args| {
        args.base_url = format!("http://{closed}");
    });
    let message = transient(run(&yahoo, "yahoo.chart", json!({"ticker": "CHGG"})).await);
    assert!(
        message.starts_with("yahoo.chart: could not connect"),
        "{message}"
    );
    assert_eq!(gate.verdicts(), vec![Verdict::Transient]);
}

/// Ensures that the Alpha Vantage key reaches the upstream in the query but never appears
/// in an error, whatever comes back.
#[tokio::test]
async fn the_api_key_never_appears_in_errors() {
    let rig = Rig::start().await;
    let av = rig.tasks_with("alphavantage", Arc::new(OpenGate), |args| {
        args.request_timeout = Duration::from_millis(300);
    });
    let failures = [
        Failure::Status(500),
        Failure::Status(403),
        Failure::TooMany {
            retry_after: Some(1),
        },
        Failure::AvNote,
        Failure::AvDailyLimit,
        Failure::Truncated,
        Failure::Garbage,
        Failure::Slow(Duration::from_secs(2)),
    ];
    let mut messages = Vec::new();
    for failure in failures {
        rig.fake.fail_next(1, failure);
        messages.push(
            run(&av, "alphavantage.overview", json!({"symbol": "IBM"}))
                .await
                .unwrap_err()
                .to_string(),
        );
    }
    messages.push(
        run(
            &av,
            "alphavantage.income_statement",
            json!({"symbol": "ZZZZ"}),
        )
        .await
        .unwrap_err()
        .to_string(),
    );
    for message in &messages {
        assert!(!message.contains(API_KEY), "the key leaked: {message}");
        assert!(message.contains("apikey=***"), "{message}");
    }
    let sent = rig.fake.requests_to(fakes::AV_QUERY_PATH);
    assert_eq!(sent.len(), messages.len());
    assert!(sent
        .iter()
        .all(|r| r.query_param("apikey").as_deref() == Some(API_KEY)));
}

/// Ensures that a gate's refusal becomes a throttled error with its wait, and that no
/// request reaches the upstream.
#[tokio::test]
async fn a_blocked_gate_is_throttled_and_sends_nothing() {
    let rig = Rig::start().await;
    let gate = Arc::new(RecordingGate {
        blocked: Some(Blocked {
            hold: Hold::BreakerOpen,
            retry_after: Some(Duration::from_secs(30)),
        }),
        ..RecordingGate::default()
    });
    for (pipeline, task, params) in [
        ("sec", "sec.filings", json!({"ticker": "CHGG"})),
        ("sec", "sec.company_facts", json!({"ticker": "CHGG"})),
        ("yahoo", "yahoo.chart", json!({"ticker": "CHGG"})),
        (
            "alphavantage",
            "alphavantage.overview",
            json!({"symbol": "IBM"}),
        ),
    ] {
        let set = rig.tasks_with(pipeline, gate.clone(), |_| {});
        let (message, retry_after) = throttled(run(&set, task, params).await);
        assert_eq!(retry_after, Some(Duration::from_secs(30)));
        assert!(message.starts_with(&format!("{task}: GET ")), "{message}");
        assert!(message.ends_with("circuit breaker open"), "{message}");
        assert!(!message.contains(API_KEY), "{message}");
    }
    assert!(rig.fake.requests().is_empty());
    assert!(gate.verdicts().is_empty());
}

/// Ensures that a job cancelled while waiting for the gate stops waiting, having sent
/// nothing.
#[tokio::test]
async fn cancel_stops_the_wait_for_the_gate() {
    let rig = Rig::start().await;
    let gate = Arc::new(RecordingGate {
        hang: true,
        ..RecordingGate::default()
    });
    let yahoo = rig.tasks_with("yahoo", gate, |_| {});
    let cancel = CancellationToken::new();
    let mut job = ctx("yahoo.chart", json!({"ticker": "CHGG"}));
    job.cancel = cancel.clone();
    let running = tokio::spawn(yahoo.get("yahoo.chart").unwrap()(job));
    tokio::time::sleep(Duration::from_millis(50)).await;
    cancel.cancel();
    let message = permanent(
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("the cancelled job ends")
            .unwrap(),
    );
    assert!(message.contains("cancelled while waiting"), "{message}");
    assert!(rig.fake.requests().is_empty());
}
