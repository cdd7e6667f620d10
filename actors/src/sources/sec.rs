//! SEC EDGAR (`sec`): filings and XBRL company facts by ticker.
//!
//! SEC's APIs are keyed by CIK, so every task first maps its ticker through SEC's ticker map
//! (`GET {tickers_url}`). The map is one request for every ticker there is; it is cached in
//! memory and in the journal's meta tree (`sec/tickers`) for a day, so a batch of jobs, and a
//! node restarted within the day, spend no further request on it. Workers that find it stale at
//! the same time wait for one fetch rather than each sending their own.
//!
//! Failure signals (docs/upstreams.md): a 403 that is SEC's rate page ("Request Rate Threshold
//! Exceeded", "Undeclared Automated Tool") is throttling without a `Retry-After`, so the
//! limiter's cooldown decides how long the source pauses; 404 is an unknown CIK; the rest is
//! the shared judgement (5xx and bad bodies transient, other 4xx permanent).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use reqwest::{StatusCode, Url};
use serde_json::{json, Map, Value};
use tokio::sync::Mutex;

use super::http::{judge_json, parse_http_url, Fetched, Judgement, Source};
use super::{is_key_part, param_strings, param_symbol, shown, task};
use crate::job::now_ms;
use tokio_util::sync::CancellationToken;

use crate::tasks::{TaskCtx, TaskError, TaskResult, TaskSet};

/// `sec.filings {ticker, forms?, since?}`.
pub const FILINGS: &str = "sec.filings";

/// `sec.company_facts {ticker, concepts?}`.
pub const COMPANY_FACTS: &str = "sec.company_facts";

/// Where the ticker map is cached in the journal's meta tree.
pub const TICKERS_META_KEY: &str = "sec/tickers";

/// How long a fetched ticker map is trusted (docs/upstreams.md: a day).
pub const TICKERS_MAX_AGE: Duration = Duration::from_secs(86_400);

/// First byte of the cached ticker map; bump it when its encoding changes (an unknown one is
/// simply fetched again: it is a cache).
const CACHE_VERSION: u8 = 1;

/// What SEC's 403 page says when it is throttling rather than forbidding.
const RATE_SIGNALS: [&str; 2] = [
    "Request Rate Threshold Exceeded",
    "Undeclared Automated Tool",
];

/// The `sec` pipeline's tasks, sharing one ticker map.
pub fn tasks(src: Arc<Source>) -> TaskSet {
    let sec = Arc::new(Sec {
        src,
        tickers: Mutex::new(None),
    });
    let for_facts = sec.clone();
    TaskSet::default()
        .with(FILINGS, task(move |ctx| filings(sec.clone(), ctx)))
        .with(
            COMPANY_FACTS,
            task(move |ctx| company_facts(for_facts.clone(), ctx)),
        )
}

/// The source and its ticker map, shared by both tasks.
struct Sec {
    src: Arc<Source>,
    /// The map in memory, so that jobs do not decode it from the journal each time. A tokio
    /// mutex, held across the fetch on purpose: it is what makes concurrent misses wait for a
    /// single request.
    tickers: Mutex<Option<Arc<TickerMap>>>,
}

async fn filings(sec: Arc<Sec>, ctx: TaskCtx) -> TaskResult {
    let ticker = param_symbol(FILINGS, &ctx.params, "ticker", "CHGG")?;
    let forms = param_strings(
        FILINGS,
        &ctx.params,
        "forms",
        "[\"10-K\", \"10-Q\", \"8-K\"]",
    )?;
    let since = param_date(FILINGS, &ctx.params, "since")?;
    let filter = FilingFilter { forms, since };
    let cik = sec.cik(FILINGS, &ticker, &ctx.cancel).await?;
    let url = sec
        .src
        .url(&["submissions", &format!("CIK{cik:010}.json")], &[]);
    let not_found = format!("SEC has no submissions for CIK {cik} (ticker {ticker})");
    let records = sec
        .src
        .fetch(FILINGS, &url, &ctx.cancel, |fetched| {
            judge(fetched, &not_found)
                .and_then(|body| Judgement::shaped(filing_records(&body, cik, &filter)))
        })
        .await?;
    let found = records.len();
    let stored = sec.src.store(&ctx.records, FILINGS, records).await?;
    Ok(json!({
        "ticker": ticker,
        "cik": cik,
        "filings_found": found,
        "filings_stored": stored,
    }))
}

async fn company_facts(sec: Arc<Sec>, ctx: TaskCtx) -> TaskResult {
    let ticker = param_symbol(COMPANY_FACTS, &ctx.params, "ticker", "CHGG")?;
    let concepts = param_strings(
        COMPANY_FACTS,
        &ctx.params,
        "concepts",
        "[\"Revenues\", \"NetIncomeLoss\"]",
    )?;
    let cik = sec.cik(COMPANY_FACTS, &ticker, &ctx.cancel).await?;
    let url = sec.src.url(
        &["api", "xbrl", "companyfacts", &format!("CIK{cik:010}.json")],
        &[],
    );
    let not_found = format!("SEC has no company facts for CIK {cik} (ticker {ticker})");
    let records = sec
        .src
        .fetch(COMPANY_FACTS, &url, &ctx.cancel, |fetched| {
            judge(fetched, &not_found)
                .and_then(|body| Judgement::shaped(fact_records(&body, cik, concepts.as_deref())))
        })
        .await?;
    let stored = sec.src.store(&ctx.records, COMPANY_FACTS, records).await?;
    Ok(json!({ "ticker": ticker, "cik": cik, "facts_stored": stored }))
}

impl Sec {
    /// The CIK of `ticker`; an unknown ticker is a permanent error naming it.
    async fn cik(
        &self,
        task: &str,
        ticker: &str,
        cancel: &CancellationToken,
    ) -> Result<u64, TaskError> {
        let map = self.ticker_map(task, cancel).await?;
        map.cik(ticker).ok_or_else(|| {
            TaskError::Permanent(format!(
                "{task}: unknown ticker \"{ticker}\": it is not among the {} tickers of SEC's \
                 ticker map ({})",
                map.ciks.len(),
                self.src
                    .args()
                    .tickers_url
                    .as_deref()
                    .unwrap_or("no tickers_url")
            ))
        })
    }

    /// The ticker map: from memory, else from the journal, else fetched (and cached in both),
    /// whichever is the first less than [`TICKERS_MAX_AGE`] old.
    async fn ticker_map(
        &self,
        task: &str,
        cancel: &CancellationToken,
    ) -> Result<Arc<TickerMap>, TaskError> {
        let mut cached = self.tickers.lock().await;
        let now = now_ms();
        if let Some(map) = cached.as_ref().filter(|m| m.is_fresh(now)) {
            return Ok(map.clone());
        }
        match self.src.journal().meta_get(TICKERS_META_KEY) {
            Ok(Some(bytes)) => {
                if let Some(map) = TickerMap::decode(&bytes).filter(|m| m.is_fresh(now)) {
                    let map = Arc::new(map);
                    *cached = Some(map.clone());
                    return Ok(map);
                }
            }
            Ok(None) => {}
            // The cache is an optimisation: a journal that cannot serve it costs one request.
            Err(error) => tracing::warn!(
                source = %self.src.name(),
                %error,
                "cannot read the cached SEC ticker map; fetching it"
            ),
        }
        let url = self.tickers_url(task)?;
        let map = self
            .src
            .fetch(task, &url, cancel, |fetched| {
                judge(fetched, "SEC's ticker map is not at tickers_url")
                    .and_then(|body| Judgement::shaped(TickerMap::from_sec_json(&body, now_ms())))
            })
            .await?;
        if let Err(error) = self.src.journal().meta_put(TICKERS_META_KEY, &map.encode()) {
            tracing::warn!(source = %self.src.name(), %error, "cannot cache the SEC ticker map");
        }
        let map = Arc::new(map);
        *cached = Some(map.clone());
        Ok(map)
    }

    /// The ticker map's URL (checked when the source was built; checked again rather than
    /// trusted, as it costs nothing).
    fn tickers_url(&self, task: &str) -> Result<Url, TaskError> {
        let text = self.src.args().tickers_url.as_deref().unwrap_or_default();
        parse_http_url(text).map_err(|problem| {
            TaskError::Permanent(format!(
                "{task}: the sec pipeline's tickers_url {text:?} is unusable: {problem}"
            ))
        })
    }
}

/// Reads the optional date param `key` (`YYYY-MM-DD`).
fn param_date(task: &str, params: &Value, key: &str) -> Result<Option<NaiveDate>, TaskError> {
    let bad = |got: &Value| {
        TaskError::Permanent(format!(
            "{task}: params.{key}: expected a date like \"2025-01-31\", got {}",
            shown(got)
        ))
    };
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::String(s)) => NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map(Some)
            .map_err(|_| bad(v)),
        Some(v) => Err(bad(v)),
    }
}

/// SEC's judgement: its rate page is throttling, 404 is `not_found`, the rest is shared.
pub(crate) fn judge(fetched: &Fetched, not_found: &str) -> Judgement<Value> {
    if fetched.status == StatusCode::FORBIDDEN {
        let page = String::from_utf8_lossy(&fetched.body);
        if let Some(signal) = RATE_SIGNALS.iter().find(|s| page.contains(**s)) {
            return Judgement::Throttled {
                problem: format!("SEC's rate page (\"{signal}\"): the source pauses"),
                retry_after: None,
                until_next_utc_day: false,
            };
        }
    }
    if fetched.status == StatusCode::NOT_FOUND {
        return Judgement::NotFound(not_found.to_string());
    }
    judge_json(fetched)
}

/// Ticker → CIK, as of a fetch time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TickerMap {
    /// When it was fetched (Unix ms, wall clock: the cache outlives the process).
    fetched_at_ms: i64,
    /// Upper-case ticker → CIK.
    ciks: HashMap<String, u64>,
}

impl TickerMap {
    /// Reads SEC's `company_tickers.json`: `{"0": {"cik_str": 1364954, "ticker": "CHGG",
    /// "title": "..."}, ...}`. Malformed entries are skipped; a map with none left is an error.
    pub(crate) fn from_sec_json(body: &Value, fetched_at_ms: i64) -> Result<TickerMap, String> {
        let entries = body
            .as_object()
            .ok_or("the ticker map is not an object of {cik_str, ticker, title} entries")?;
        let mut ciks = HashMap::with_capacity(entries.len());
        for entry in entries.values() {
            let Some(ticker) = entry.get("ticker").and_then(Value::as_str) else {
                continue;
            };
            let cik = match entry.get("cik_str") {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => s.parse().ok(),
                _ => None,
            };
            if let Some(cik) = cik {
                ciks.entry(ticker.to_ascii_uppercase()).or_insert(cik);
            }
        }
        if ciks.is_empty() {
            return Err("the ticker map has no usable entries".into());
        }
        Ok(TickerMap {
            fetched_at_ms,
            ciks,
        })
    }

    /// The CIK of an upper-case ticker; `BRK.B` also finds SEC's `BRK-B`.
    pub(crate) fn cik(&self, ticker: &str) -> Option<u64> {
        self.ciks
            .get(ticker)
            .or_else(|| self.ciks.get(&ticker.replace('.', "-")))
            .copied()
    }

    /// CIK → ticker, the first in order when several share a CIK (share classes): how the
    /// PostgreSQL sink fills `sec_filings.ticker`.
    pub(crate) fn tickers_by_cik(&self) -> HashMap<u64, String> {
        let mut out: HashMap<u64, String> = HashMap::with_capacity(self.ciks.len());
        for (ticker, cik) in &self.ciks {
            let slot = out.entry(*cik).or_insert_with(|| ticker.clone());
            if ticker < slot {
                *slot = ticker.clone();
            }
        }
        out
    }

    /// Less than [`TICKERS_MAX_AGE`] old at `now_ms` (and not from the future, which would
    /// mean the clock was set back: refetch rather than trust it).
    pub(crate) fn is_fresh(&self, now_ms: i64) -> bool {
        let max_age = i64::try_from(TICKERS_MAX_AGE.as_millis()).unwrap_or(i64::MAX);
        (0..max_age).contains(&now_ms.saturating_sub(self.fetched_at_ms))
    }

    /// `[CACHE_VERSION][fetched_at_ms i64 BE][JSON {ticker: cik}]`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![CACHE_VERSION];
        bytes.extend_from_slice(&self.fetched_at_ms.to_be_bytes());
        // A map with string keys and number values always serialises; an empty body would
        // only make the next read miss the cache.
        bytes.extend(serde_json::to_vec(&self.ciks).unwrap_or_default());
        bytes
    }

    /// The inverse of [`encode`](TickerMap::encode); `None` for anything else.
    pub(crate) fn decode(bytes: &[u8]) -> Option<TickerMap> {
        let (&version, rest) = bytes.split_first()?;
        if version != CACHE_VERSION || rest.len() < 8 {
            return None;
        }
        let (at, json) = rest.split_at(8);
        Some(TickerMap {
            fetched_at_ms: i64::from_be_bytes(at.try_into().ok()?),
            ciks: serde_json::from_slice(json).ok()?,
        })
    }
}

/// Which filings `sec.filings` keeps.
#[derive(Debug, Clone, Default)]
pub(crate) struct FilingFilter {
    /// Forms to keep (case-insensitive); all when `None`.
    pub(crate) forms: Option<Vec<String>>,
    /// Keep filings filed on or after this date; all when `None`.
    pub(crate) since: Option<NaiveDate>,
}

impl FilingFilter {
    fn admits(&self, form: Option<&str>, filing_date: Option<&str>) -> bool {
        let form_ok = match &self.forms {
            None => true,
            Some(forms) => form.is_some_and(|f| forms.iter().any(|w| w.eq_ignore_ascii_case(f))),
        };
        let date_ok = match self.since {
            None => true,
            Some(since) => filing_date
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
                .is_some_and(|d| d >= since),
        };
        form_ok && date_ok
    }
}

/// The records of the filings in a submissions answer that `filter` admits: one per index of
/// `filings.recent`'s parallel arrays, holding every array's value at that index plus the
/// company's CIK and name, keyed `sec/filings/{cik}/{accessionNumber}`. Only `recent` is read
/// (SEC's last thousand filings or last year); older pages under `files` are not fetched.
pub(crate) fn filing_records(
    body: &Value,
    cik: u64,
    filter: &FilingFilter,
) -> Result<Vec<(String, Value)>, String> {
    let recent = body
        .pointer("/filings/recent")
        .and_then(Value::as_object)
        .ok_or("the answer has no filings.recent object")?;
    let accessions = recent
        .get("accessionNumber")
        .and_then(Value::as_array)
        .ok_or("filings.recent has no accessionNumber list")?;
    let column = |name: &str, i: usize| {
        recent
            .get(name)
            .and_then(|values| values.get(i))
            .and_then(Value::as_str)
    };
    let name = body.get("name").cloned().unwrap_or(Value::Null);
    let mut records = Vec::new();
    for (i, accession) in accessions.iter().enumerate() {
        let Some(accession) = accession.as_str().filter(|a| is_key_part(a)) else {
            continue;
        };
        if !filter.admits(column("form", i), column("filingDate", i)) {
            continue;
        }
        let mut filing = Map::new();
        for (field, values) in recent {
            if let Value::Array(values) = values {
                filing.insert(field.clone(), values.get(i).cloned().unwrap_or(Value::Null));
            }
        }
        filing.insert("cik".into(), json!(cik));
        filing.insert("name".into(), name.clone());
        records.push((
            format!("sec/filings/{cik}/{accession}"),
            Value::Object(filing),
        ));
    }
    Ok(records)
}

/// The records of a company facts answer: one per (concept, period end), keyed
/// `sec/facts/{cik}/{concept}/{end}`. Several facts share a concept and an end (a quarter and
/// the year to date, other units, the same value in later filings), so a record holds all of
/// them, each with its taxonomy and unit. `concepts` keeps only those named, bare
/// (`Revenues`) or with their taxonomy (`us-gaap:Revenues`).
pub(crate) fn fact_records(
    body: &Value,
    cik: u64,
    concepts: Option<&[String]>,
) -> Result<Vec<(String, Value)>, String> {
    let taxonomies = body
        .get("facts")
        .and_then(Value::as_object)
        .ok_or("the answer has no facts object")?;
    let entity = body.get("entityName").cloned().unwrap_or(Value::Null);
    let wanted = |taxonomy: &str, concept: &str| {
        concepts.is_none_or(|names| {
            names.iter().any(|name| {
                name == concept
                    || name
                        .split_once(':')
                        .is_some_and(|(t, c)| t == taxonomy && c == concept)
            })
        })
    };
    // (concept, end) → (label, facts); a BTreeMap so records come out in a stable order.
    let mut grouped: BTreeMap<(String, String), (Value, Vec<Value>)> = BTreeMap::new();
    for (taxonomy, defs) in taxonomies {
        let Some(defs) = defs.as_object() else {
            continue;
        };
        for (concept, def) in defs {
            if !is_key_part(concept) || !wanted(taxonomy, concept) {
                continue;
            }
            let Some(units) = def.get("units").and_then(Value::as_object) else {
                continue;
            };
            let label = def.get("label").cloned().unwrap_or(Value::Null);
            for (unit, facts) in units {
                for fact in facts.as_array().into_iter().flatten() {
                    let Some(object) = fact.as_object() else {
                        continue;
                    };
                    let Some(end) = object
                        .get("end")
                        .and_then(Value::as_str)
                        .filter(|e| is_key_part(e))
                    else {
                        continue;
                    };
                    let mut fact = object.clone();
                    fact.insert("taxonomy".into(), json!(taxonomy));
                    fact.insert("unit".into(), json!(unit));
                    grouped
                        .entry((concept.clone(), end.to_string()))
                        .or_insert_with(|| (label.clone(), Vec::new()))
                        .1
                        .push(Value::Object(fact));
                }
            }
        }
    }
    Ok(grouped
        .into_iter()
        .map(|((concept, end), (label, facts))| {
            let key = format!("sec/facts/{cik}/{concept}/{end}");
            let record = json!({
                "cik": cik,
                "entityName": entity,
                "concept": concept,
                "label": label,
                "end": end,
                "facts": facts,
            });
            (key, record)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::http::tests::fetched;
    use crate::upstream::Verdict;

    fn submissions() -> Value {
        json!({
            "cik": "1364954",
            "name": "Chegg, Inc.",
            "tickers": ["CHGG"],
            "filings": {
                "recent": {
                    "accessionNumber": ["0001364954-25-000012", "0001364954-25-000011", "0001364954-25-000010", "0001364954-25-000009"],
                    "filingDate": ["2025-11-03", "2025-09-15", "2025-08-04", "2025-02-14"],
                    "reportDate": ["2025-09-30", "", "2025-06-30", "2024-12-31"],
                    "form": ["10-Q", "8-K", "10-Q", "10-K"],
                    "primaryDocument": ["chgg-20250930.htm", "chgg-8k.htm", "chgg-20250630.htm", "chgg-20241231.htm"]
                },
                "files": []
            }
        })
    }

    fn accessions(records: &[(String, Value)]) -> Vec<&str> {
        records
            .iter()
            .map(|(_, v)| v["accessionNumber"].as_str().unwrap())
            .collect()
    }

    /// Ensures that each filing becomes one record, keyed by CIK and accession number, holding
    /// every parallel array's value at its index.
    #[test]
    fn filings_are_read_across_parallel_arrays() {
        let records = filing_records(&submissions(), 1364954, &FilingFilter::default()).unwrap();
        assert_eq!(records.len(), 4);
        assert_eq!(records[0].0, "sec/filings/1364954/0001364954-25-000012");
        assert_eq!(
            records[2].1,
            json!({
                "accessionNumber": "0001364954-25-000010",
                "filingDate": "2025-08-04",
                "reportDate": "2025-06-30",
                "form": "10-Q",
                "primaryDocument": "chgg-20250630.htm",
                "cik": 1364954,
                "name": "Chegg, Inc.",
            })
        );
    }

    /// Ensures that `forms` and `since` filter filings, alone and together.
    #[test]
    fn filings_filter_by_forms_and_since() {
        let body = submissions();
        let only = |forms: Option<&[&str]>, since: Option<&str>| {
            let filter = FilingFilter {
                forms: forms.map(|f| f.iter().map(|s| s.to_string()).collect()),
                since: since.map(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()),
            };
            filing_records(&body, 1364954, &filter).unwrap()
        };
        assert_eq!(
            accessions(&only(Some(&["10-q"]), None)),
            ["0001364954-25-000012", "0001364954-25-000010"]
        );
        assert_eq!(
            accessions(&only(None, Some("2025-08-04"))),
            [
                "0001364954-25-000012",
                "0001364954-25-000011",
                "0001364954-25-000010"
            ]
        );
        assert_eq!(
            accessions(&only(Some(&["10-K", "8-K"]), Some("2025-03-01"))),
            ["0001364954-25-000011"]
        );
        assert!(only(Some(&["S-1"]), None).is_empty());
    }

    /// Ensures that a submissions answer without `filings.recent` is refused, naming what is
    /// missing.
    #[test]
    fn filings_need_recent() {
        let err = filing_records(&json!({"cik": "1"}), 1, &FilingFilter::default()).unwrap_err();
        assert!(err.contains("filings.recent"), "{err}");
    }

    /// Ensures that facts are grouped into one record per (concept, end), with taxonomy and
    /// unit on each fact, and that `concepts` keeps only those named.
    #[test]
    fn facts_group_by_concept_and_end() {
        let body = json!({
            "cik": 1364954,
            "entityName": "Chegg, Inc.",
            "facts": {
                "dei": {"EntityCommonStockSharesOutstanding": {"label": "Shares", "units": {"shares": [
                    {"end": "2025-10-20", "val": 100, "form": "10-Q"}
                ]}}},
                "us-gaap": {
                    "Revenues": {"label": "Revenues", "units": {"USD": [
                        {"start": "2025-07-01", "end": "2025-09-30", "val": 10, "fp": "Q3"},
                        {"start": "2025-01-01", "end": "2025-09-30", "val": 30, "fp": "Q3"},
                        {"start": "2025-04-01", "end": "2025-06-30", "val": 9, "fp": "Q2"}
                    ]}},
                    "NetIncomeLoss": {"label": "Net Income", "units": {"USD": [
                        {"end": "2025-09-30", "val": -1}
                    ]}}
                }
            }
        });
        let records = fact_records(&body, 1364954, None).unwrap();
        let keys: Vec<&str> = records.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "sec/facts/1364954/EntityCommonStockSharesOutstanding/2025-10-20",
                "sec/facts/1364954/NetIncomeLoss/2025-09-30",
                "sec/facts/1364954/Revenues/2025-06-30",
                "sec/facts/1364954/Revenues/2025-09-30",
            ]
        );
        let q3 = &records[3].1;
        assert_eq!(q3["label"], "Revenues");
        assert_eq!(q3["facts"].as_array().unwrap().len(), 2);
        assert_eq!(q3["facts"][1]["taxonomy"], "us-gaap");
        assert_eq!(q3["facts"][1]["unit"], "USD");
        assert_eq!(q3["facts"][1]["val"], 30);

        let names = [
            "Revenues".to_string(),
            "dei:EntityCommonStockSharesOutstanding".into(),
        ];
        let picked = fact_records(&body, 1364954, Some(&names)).unwrap();
        assert_eq!(picked.len(), 3);
        let wrong_taxonomy = ["ifrs-full:Revenues".to_string()];
        assert!(fact_records(&body, 1364954, Some(&wrong_taxonomy))
            .unwrap()
            .is_empty());
    }

    /// Ensures that SEC's failure signals are classified as docs/upstreams.md says.
    #[test]
    fn sec_failure_signals() {
        let rate_page = "<html><title>SEC.gov | Request Rate Threshold Exceeded</title></html>";
        let throttled = Verdict::Throttled {
            retry_after: None,
            until_next_utc_day: false,
        };
        assert_eq!(
            judge(&fetched(403, &[], rate_page), "x").verdict(),
            throttled
        );
        let undeclared = "<h1>Your Request Originates from an Undeclared Automated Tool</h1>";
        assert_eq!(
            judge(&fetched(403, &[], undeclared), "x").verdict(),
            throttled
        );
        assert_eq!(
            judge(&fetched(403, &[], "Forbidden"), "x").verdict(),
            Verdict::Permanent
        );
        assert_eq!(
            judge(
                &fetched(404, &[], "<Error><Code>NoSuchKey</Code></Error>"),
                "no CIK 9"
            ),
            Judgement::NotFound("no CIK 9".into())
        );
        assert_eq!(
            judge(&fetched(502, &[], ""), "x").verdict(),
            Verdict::Transient
        );
        assert_eq!(
            judge(&fetched(200, &[], "{\"filings\": {\"rec"), "x").verdict(),
            Verdict::Transient
        );
        assert_eq!(
            judge(&fetched(429, &[("retry-after", "3")], ""), "x").verdict(),
            Verdict::Throttled {
                retry_after: Some(Duration::from_secs(3)),
                until_next_utc_day: false
            }
        );
    }

    /// Ensures that the ticker map reads SEC's shape, finds class-share tickers written either
    /// way, survives its cache encoding and expires after a day.
    #[test]
    fn ticker_map_reads_caches_and_expires() {
        let body = json!({
            "0": {"cik_str": 1364954, "ticker": "CHGG", "title": "Chegg, Inc."},
            "1": {"cik_str": "1067983", "ticker": "BRK-B", "title": "Berkshire"},
            "2": {"ticker": "BROKEN"}
        });
        let map = TickerMap::from_sec_json(&body, 1_000).unwrap();
        assert_eq!(map.cik("CHGG"), Some(1364954));
        assert_eq!(map.cik("BRK.B"), Some(1067983));
        assert_eq!(map.cik("BROKEN"), None);
        assert_eq!(TickerMap::decode(&map.encode()), Some(map.clone()));
        assert_eq!(TickerMap::decode(&[9, 0, 0]), None);
        let day = 86_400_000;
        assert!(map.is_fresh(1_000));
        assert!(map.is_fresh(day));
        assert!(!map.is_fresh(1_000 + day));
        assert!(!map.is_fresh(0));
        assert!(TickerMap::from_sec_json(&json!({}), 0).is_err());
        assert!(TickerMap::from_sec_json(&json!([1]), 0).is_err());
    }

    /// Ensures that `since` must be a date.
    #[test]
    fn since_must_be_a_date() {
        assert_eq!(
            param_date(FILINGS, &json!({"since": "2025-02-30"}), "since"),
            Err(TaskError::Permanent(
                "sec.filings: params.since: expected a date like \"2025-01-31\", got \"2025-02-30\""
                    .into()
            ))
        );
        assert_eq!(
            param_date(FILINGS, &json!({"since": "2025-02-28"}), "since"),
            Ok(NaiveDate::from_ymd_opt(2025, 2, 28))
        );
    }
}
