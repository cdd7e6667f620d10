//! The upstream pipelines inside a real node, against fake upstreams on loopback: records and
//! idempotent re-runs, the rate limit seen from the upstream's side, throttling that never
//! burns an attempt, the circuit breaker, timeouts, unknown tickers, and a throttle pause that
//! survives a restart.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warden_actors::args::NodeArgs;

use crate::fakes::{self, Failure, FakeUpstream, COMPANIES};
use crate::support::{add, finished, most_in_window, poll, req, status, upstream, TestNode};

const WAIT: Duration = Duration::from_secs(60);

async fn run(c: &mut warden::client::Client, job: &str, params: Value) -> Value {
    let a = req(c, json!({"cmd": "submit", "job": job, "params": params})).await;
    assert_eq!(a["ok"], true, "{a}");
    finished(c, a["job_id"].as_str().unwrap(), WAIT).await
}

/// Ensures that each upstream task stores the expected records through a real node, that a
/// re-run stores none (records are keyed, not appended), and that `records` serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_store_records_once() {
    let fake = FakeUpstream::start().await;
    let node = TestNode::start_with(|a| {
        add(a, "sec", 2, 3, upstream(&fake, "50/s"));
        add(a, "yahoo", 2, 3, upstream(&fake, "50/s"));
        add(a, "alphavantage", 2, 3, upstream(&fake, "50/s"));
    })
    .await;
    let mut c = node.client().await;
    let cases = [
        (
            "sec.filings",
            json!({"ticker": "CHGG"}),
            "filings_stored",
            fakes::FILINGS_PER_COMPANY,
        ),
        (
            "sec.company_facts",
            json!({"ticker": "CHGG"}),
            "facts_stored",
            fakes::FACT_RECORDS_PER_COMPANY,
        ),
        (
            "yahoo.chart",
            json!({"ticker": "CHGG"}),
            "stored",
            fakes::CHART_BARS_1MO - fakes::CHART_NULL_BARS_1MO,
        ),
        (
            "alphavantage.overview",
            json!({"symbol": "IBM"}),
            "stored",
            1,
        ),
        (
            "alphavantage.income_statement",
            json!({"symbol": "IBM"}),
            "stored",
            fakes::QUARTERLY_REPORTS,
        ),
    ];
    for (job, params, field, expected) in cases {
        let first = run(&mut c, job, params.clone()).await;
        assert_eq!(first["status"], "succeeded", "{job}: {first}");
        assert_eq!(first["result"][field], expected, "{job}: {first}");
        let again = run(&mut c, job, params).await;
        assert_eq!(again["result"][field], 0, "{job} re-run: {again}");
    }
    let r = req(
        &mut c,
        json!({"cmd": "records", "prefix": "sec/filings/1364954/"}),
    )
    .await;
    assert_eq!(
        r["records"].as_array().unwrap().len(),
        fakes::FILINGS_PER_COMPANY,
        "{r}"
    );
    let r = req(
        &mut c,
        json!({"cmd": "records", "prefix": "alphavantage/overview/IBM"}),
    )
    .await;
    assert_eq!(r["records"][0]["value"]["Symbol"], "IBM", "{r}");
    // SEC requires a declared User-Agent on every request.
    let sec = fake
        .requests()
        .into_iter()
        .filter(|r| !r.path.starts_with("/v8") && r.path != "/query")
        .collect::<Vec<_>>();
    assert!(!sec.is_empty());
    assert!(sec.iter().all(
        |r| r.headers.get("user-agent").and_then(|v| v.to_str().ok())
            == Some("Warden tests tests@example.com")
    ));
    // one ticker-map request served every SEC job
    assert_eq!(fake.requests_to(fakes::SEC_TICKERS_PATH).len(), 1);
}

/// Ensures that with `rate_limit = "5/s"` and 40 queued SEC jobs, no one-second window at the
/// upstream ever sees more than 5 requests, and that the limit is used (not far slower).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_holds_at_the_upstream() {
    let fake = FakeUpstream::start().await;
    let node = TestNode::start_with(|a| add(a, "sec", 4, 3, upstream(&fake, "5/s"))).await;
    let mut c = node.client().await;
    let jobs: Vec<Value> =
        (0..40).map(|i| json!({"job": "sec.filings", "params": {"ticker": COMPANIES[i % COMPANIES.len()].ticker}})).collect();
    let started = Instant::now();
    let a = req(&mut c, json!({"cmd": "submit_batch", "jobs": jobs})).await;
    assert_eq!(a["ok"], true, "{a}");
    poll(&mut c, "40 SEC jobs", WAIT, json!({"cmd": "stats"}), |s| {
        s["totals"]["succeeded"] == 40
    })
    .await;
    let took = started.elapsed();
    let arrivals: Vec<Instant> = fake.requests().iter().map(|r| r.at).collect();
    assert_eq!(arrivals.len(), 41, "one ticker map + 40 submissions");
    let most = most_in_window(&arrivals, Duration::from_secs(1));
    assert!(most <= 5, "{most} requests within one second");
    // 41 requests at 5/s need at least 7 s; a limiter that wastes capacity would take far longer.
    assert!(
        took >= Duration::from_secs(7) && took < Duration::from_secs(12),
        "took {took:?}"
    );
}

/// Ensures that a 429 storm (with Retry-After) and an Alpha Vantage `Note` delay jobs without
/// spending attempts, even with `max_retries = 1`, and that the jobs then succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_never_burns_attempts() {
    let fake = FakeUpstream::start().await;
    let node = TestNode::start_with(|a| {
        add(a, "yahoo", 2, 1, upstream(&fake, "50/s"));
        add(a, "alphavantage", 1, 1, upstream(&fake, "50/s"));
    })
    .await;
    let mut c = node.client().await;
    fake.fail_next_to(
        fakes::YAHOO_CHART_PREFIX,
        3,
        Failure::TooMany {
            retry_after: Some(1),
        },
    );
    let y = run(&mut c, "yahoo.chart", json!({"ticker": "AAPL"})).await;
    assert_eq!(
        (y["status"].as_str(), y["attempts"].as_u64()),
        (Some("succeeded"), Some(1)),
        "{y}"
    );
    fake.fail_next_to(fakes::AV_QUERY_PATH, 2, Failure::AvNote);
    let av = run(&mut c, "alphavantage.overview", json!({"symbol": "MSFT"})).await;
    assert_eq!(
        (av["status"].as_str(), av["attempts"].as_u64()),
        (Some("succeeded"), Some(1)),
        "{av}"
    );
    let h = req(&mut c, json!({"cmd": "history", "job_id": av["job_id"]})).await;
    assert!(
        h["events"].as_array().unwrap().iter().any(|e| e["detail"]
            .as_str()
            .is_some_and(|d| d.contains("throttled"))),
        "{h}"
    );
}

/// Ensures that 10 consecutive 5xx open the breaker, that the upstream then sees no request
/// while it is open, one probe in half-open, and that jobs flow again once it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_probes_and_closes() {
    let fake = FakeUpstream::start().await;
    // Two workers, so that a second probe would have someone to send it.
    let node = TestNode::start_with(|a| add(a, "yahoo", 2, 20, upstream(&fake, "100/s"))).await;
    let mut c = node.client().await;
    fake.fail_next_to(fakes::YAHOO_CHART_PREFIX, 10, Failure::Status(503));
    // The probe (the 11th request) is slow: while it is out, no other request may arrive.
    let probe_takes = Duration::from_millis(700);
    fake.fail_next_to(fakes::YAHOO_CHART_PREFIX, 1, Failure::Slow(probe_takes));
    let jobs: Vec<Value> = (0..5)
        .map(|i| json!({"job": "yahoo.chart", "params": {"ticker": COMPANIES[i].ticker}}))
        .collect();
    req(&mut c, json!({"cmd": "submit_batch", "jobs": jobs})).await;
    poll(
        &mut c,
        "the breaker to open",
        WAIT,
        json!({"cmd": "pipelines"}),
        |p| {
            p["pipelines"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "yahoo" && p["breaker"]["state"] == "open")
        },
    )
    .await;
    poll(
        &mut c,
        "all five to succeed",
        WAIT,
        json!({"cmd": "stats"}),
        |s| s["totals"]["succeeded"] == 5,
    )
    .await;
    let arrivals = fake.arrivals_to(fakes::YAHOO_CHART_PREFIX);
    assert!(
        arrivals.len() >= 15,
        "10 failures, a probe, then the 5 jobs: {}",
        arrivals.len()
    );
    // Nothing reached the upstream while the breaker was open (1 s after the 10th failure).
    let gap = arrivals[10].duration_since(arrivals[9]);
    assert!(
        gap >= Duration::from_millis(900),
        "the probe came {gap:?} after the 10th failure"
    );
    // Exactly one probe in half-open: the next request waited for the probe's answer.
    let after_probe = arrivals[11].duration_since(arrivals[10]);
    assert!(
        after_probe >= probe_takes - Duration::from_millis(50),
        "a second request came {after_probe:?} after the probe, while it was still out"
    );
    let p = req(&mut c, json!({"cmd": "pipelines"})).await;
    let yahoo = p["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "yahoo")
        .unwrap()
        .clone();
    assert_eq!(yahoo["breaker"]["state"], "closed", "{yahoo}");
}

/// Ensures that an unknown ticker fails at once, permanently, after one attempt, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ticker_fails_at_once() {
    let fake = FakeUpstream::start().await;
    let node = TestNode::start_with(|a| add(a, "sec", 1, 3, upstream(&fake, "50/s"))).await;
    let mut c = node.client().await;
    let j = run(&mut c, "sec.filings", json!({"ticker": "NOPE"})).await;
    assert_eq!(
        (j["status"].as_str(), j["attempts"].as_u64()),
        (Some("failed"), Some(1)),
        "{j}"
    );
    assert!(j["error"].as_str().unwrap().contains("NOPE"), "{j}");
    let y = TestNode::start_with(|a| add(a, "yahoo", 1, 3, upstream(&fake, "50/s"))).await;
    let mut c = y.client().await;
    let j = run(&mut c, "yahoo.chart", json!({"ticker": "NOPE"})).await;
    assert_eq!(
        (j["status"].as_str(), j["attempts"].as_u64()),
        (Some("failed"), Some(1)),
        "{j}"
    );
}

/// Ensures that a request slower than `request_timeout` fails as transient and is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeouts_are_retried() {
    let fake = FakeUpstream::start().await;
    let node = TestNode::start_with(|a| {
        let mut up = upstream(&fake, "50/s");
        up.request_timeout = Duration::from_millis(300);
        add(a, "yahoo", 1, 3, up);
    })
    .await;
    let mut c = node.client().await;
    fake.fail_next_to(
        fakes::YAHOO_CHART_PREFIX,
        1,
        Failure::Slow(Duration::from_secs(2)),
    );
    let j = run(&mut c, "yahoo.chart", json!({"ticker": "MSFT"})).await;
    assert_eq!(
        (j["status"].as_str(), j["attempts"].as_u64()),
        (Some("succeeded"), Some(2)),
        "{j}"
    );
}

/// Ensures that a source paused by a throttle signal stays paused across a node restart: the
/// limiter's pause is durable, so a restart cannot hammer an upstream that asked us to wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_pause_survives_a_restart() {
    let fake = FakeUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let setup = |a: &mut NodeArgs| {
        let mut up = upstream(&fake, "50/s");
        up.throttle_cooldown = Duration::from_secs(3600);
        add(a, "yahoo", 1, 3, up);
    };
    let node = TestNode::start_in(tmp.path(), setup).await.unwrap();
    let mut c = node.client().await;
    fake.fail_next_to(
        fakes::YAHOO_CHART_PREFIX,
        1,
        Failure::TooMany { retry_after: None },
    );
    let a = req(
        &mut c,
        json!({"cmd": "submit", "job": "yahoo.chart", "params": {"ticker": "IBM"}}),
    )
    .await;
    let id = a["job_id"].as_str().unwrap().to_string();
    poll(
        &mut c,
        "the source to pause",
        WAIT,
        json!({"cmd": "pipelines"}),
        |p| paused_until(p).is_some(),
    )
    .await;
    node.stop().await.unwrap();
    let seen = fake.requests().len();

    let node = TestNode::start_in(tmp.path(), setup).await.unwrap();
    let mut c = node.client().await;
    let p = req(&mut c, json!({"cmd": "pipelines"})).await;
    assert!(
        paused_until(&p).is_some(),
        "the pause must survive the restart: {p}"
    );
    let j = status(&mut c, &id).await;
    assert_ne!(j["status"], "succeeded", "{j}");
    assert_eq!(fake.requests().len(), seen, "no request while paused");
}

fn paused_until(p: &Value) -> Option<String> {
    let yahoo = p["pipelines"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == "yahoo")?;
    yahoo["rate_limit"]["paused_until"]
        .as_str()
        .map(String::from)
}
