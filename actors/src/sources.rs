//! The real ingestion tasks: SEC EDGAR, Yahoo Finance and Alpha Vantage, as docs/upstreams.md
//! describes their APIs, params, records and results.
//!
//! Each upstream is one [`Source`] (`http.rs`): a reqwest client, the pipeline's
//! [`Gate`](crate::upstream::Gate) (rate-limit permit and breaker admission before every
//! request, one verdict after it), the pipeline's [`UpstreamArgs`](crate::args::UpstreamArgs)
//! and the node's journal (for what a source keeps between jobs, like SEC's ticker map). A task
//! builds its URLs, asks
//! [`Source::fetch`] for one request, and hands the response to its source's classifier, which
//! returns a [`Judgement`]: the useful answer, or why not, in one of the error classes of
//! docs/upstreams.md. The judgement's verdict goes back to the gate (so throttle signals pause the
//! whole source and transient failures count towards the breaker) and its class becomes the
//! task's [`TaskError`].
//!
//! - [`http`]: [`Source`], the request helper, the judgement shared by every source (status,
//!   `Retry-After`, JSON), error messages and key redaction.
//! - [`mod@sec`], [`mod@yahoo`], [`mod@alphavantage`]: each API's URLs, failure signals, record
//!   extraction and tasks.
//!
//! Params are validated before any request, so a bad job fails at once without spending a
//! permit. Records are stored through the attempt's [`Records`](crate::tasks::Records) (the
//! journal on a single node, the attempt's buffer written with its completion in cluster mode)
//! under keys that identify the data (a filing's accession number, a bar's date), so
//! re-ingesting the same data overwrites instead of duplicating (and a re-run reports 0 stored
//! on a single node).
//!
//! The Alpha Vantage key is only ever put in a URL's query. Requests appear in errors and logs
//! through [`http::redact_url`], and every message is also scrubbed of the key's literal value,
//! in case an upstream echoes it.

use std::future::Future;
use std::sync::Arc;

use serde_json::Value;

use crate::tasks::{fan_out, TaskCtx, TaskError, TaskFn, TaskResult, TaskSet};

pub mod alphavantage;
pub mod http;
pub mod sec;
pub mod yahoo;

pub use http::{Fetched, Judgement, Source, SourceError};

/// The `sec` pipeline's tasks: `sec.filings {ticker, forms?, since?}` and
/// `sec.company_facts {ticker, concepts?}`, and the batch `sec.batch_filings {tickers, forms?, since?}`.
pub fn sec(src: Arc<Source>) -> TaskSet {
    sec::tasks(src).with_split(
        "sec.batch_filings",
        fan_out(sec::FILINGS, "tickers", "ticker", &["forms", "since"]),
    )
}

/// The `yahoo` pipeline's tasks: `yahoo.chart {ticker, range?, interval?}` and the batch
/// `yahoo.batch_chart {tickers, range?, interval?}`.
pub fn yahoo(src: Arc<Source>) -> TaskSet {
    yahoo::tasks(src).with_split(
        "yahoo.batch_chart",
        fan_out(yahoo::CHART, "tickers", "ticker", &["range", "interval"]),
    )
}

/// The `alphavantage` pipeline's tasks: `alphavantage.overview {symbol}`,
/// `alphavantage.income_statement {symbol}` and the batch `alphavantage.batch_overview {symbols}`.
pub fn alphavantage(src: Arc<Source>) -> TaskSet {
    alphavantage::tasks(src).with_split(
        "alphavantage.batch_overview",
        fan_out(alphavantage::OVERVIEW, "symbols", "symbol", &[]),
    )
}

/// The tasks of the upstream pipeline called `pipeline`, or `None` when no source has that name.
pub fn task_set(pipeline: &str, src: Arc<Source>) -> Option<TaskSet> {
    match pipeline {
        "sec" => Some(sec(src)),
        "yahoo" => Some(yahoo(src)),
        "alphavantage" => Some(alphavantage(src)),
        _ => None,
    }
}

/// Wraps an async fn as a [`TaskFn`].
fn task<F, Fut>(f: F) -> TaskFn
where
    F: Fn(TaskCtx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = TaskResult> + Send + 'static,
{
    Arc::new(move |ctx| Box::pin(f(ctx)))
}

/// The longest ticker or symbol accepted; real ones are at most a dozen characters.
const MAX_SYMBOL_LEN: usize = 20;

/// A param value as shown in an error: its JSON, cut short so a huge param cannot flood a log.
fn shown(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Whether `s` looks like a ticker: letters, digits and the few marks real symbols use
/// (`BRK-B`, `BRK.B`, `^GSPC`, `EURUSD=X`). Anything else could not name a listing, and
/// refusing it keeps keys and URL paths clean.
fn is_symbol(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SYMBOL_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '^' | '=' | '_'))
}

/// Whether `s` can be one segment of a record key: not empty, no `/`, not absurdly long.
/// Upstream values (accession numbers, dates, concept names) become key parts, and one that is
/// not would nest or collide with other keys.
fn is_key_part(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.contains('/')
}

/// Reads the required ticker-like param `key` (`ticker` or `symbol`), upper-cased.
fn param_symbol(task: &str, params: &Value, key: &str, example: &str) -> Result<String, TaskError> {
    let what = if key == "symbol" {
        "a symbol"
    } else {
        "a ticker"
    };
    let bad = |got: String| {
        TaskError::Permanent(format!(
            "{task}: params.{key}: expected {what} like \"{example}\", got {got}"
        ))
    };
    match params.get(key) {
        None | Some(Value::Null) => Err(bad("nothing".into())),
        Some(Value::String(s)) if is_symbol(s) => Ok(s.to_ascii_uppercase()),
        Some(v) => Err(bad(shown(v))),
    }
}

/// Reads the optional param `key` as a non-empty list of strings.
fn param_strings(
    task: &str,
    params: &Value,
    key: &str,
    example: &str,
) -> Result<Option<Vec<String>>, TaskError> {
    let bad = |got: &Value| {
        TaskError::Permanent(format!(
            "{task}: params.{key}: expected a non-empty list like {example}, got {}",
            shown(got)
        ))
    };
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|item| match item {
                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                _ => Err(bad(v)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(v) => Err(bad(v)),
    }
}

/// Reads the optional param `key`, which must be one of `allowed`.
fn param_choice(
    task: &str,
    params: &Value,
    key: &str,
    default: &'static str,
    allowed: &[&str],
) -> Result<String, TaskError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(default.to_string()),
        Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(s.clone()),
        Some(v) => Err(TaskError::Permanent(format!(
            "{task}: params.{key}: expected one of {}, got {}",
            allowed.join(", "),
            shown(v)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Ensures that a missing or mistyped ticker is a permanent error naming the param.
    #[test]
    fn symbol_params_are_checked_and_named() {
        let missing = param_symbol("sec.filings", &json!({}), "ticker", "CHGG");
        assert_eq!(
            missing,
            Err(TaskError::Permanent(
                "sec.filings: params.ticker: expected a ticker like \"CHGG\", got nothing".into()
            ))
        );
        let number = param_symbol("yahoo.chart", &json!({"ticker": 42}), "ticker", "CHGG");
        assert_eq!(
            number,
            Err(TaskError::Permanent(
                "yahoo.chart: params.ticker: expected a ticker like \"CHGG\", got 42".into()
            ))
        );
        let spaced = param_symbol("x.y", &json!({"symbol": "I B M"}), "symbol", "IBM");
        assert!(
            matches!(&spaced, Err(TaskError::Permanent(m)) if m.contains("expected a symbol like \"IBM\", got \"I B M\"")),
            "{spaced:?}"
        );
        assert_eq!(
            param_symbol("x.y", &json!({"ticker": "brk-b"}), "ticker", "CHGG"),
            Ok("BRK-B".into())
        );
        assert_eq!(
            param_symbol("x.y", &json!({"ticker": "^gspc"}), "ticker", "CHGG"),
            Ok("^GSPC".into())
        );
    }

    /// Ensures that list and choice params accept what they should and name what they refuse.
    #[test]
    fn list_and_choice_params() {
        let p = json!({"forms": ["10-K", "8-K"], "bad": ["10-K", 3], "empty": [], "range": "5d"});
        assert_eq!(
            param_strings("t", &p, "forms", "[\"10-K\"]"),
            Ok(Some(vec!["10-K".into(), "8-K".into()]))
        );
        assert_eq!(param_strings("t", &p, "absent", "[\"10-K\"]"), Ok(None));
        assert!(param_strings("t", &p, "bad", "[\"10-K\"]").is_err());
        assert!(param_strings("t", &p, "empty", "[\"10-K\"]").is_err());
        assert_eq!(
            param_choice("t", &p, "range", "1mo", &["1mo", "5d"]),
            Ok("5d".into())
        );
        assert_eq!(
            param_choice("t", &p, "interval", "1d", &["1d"]),
            Ok("1d".into())
        );
        assert_eq!(
            param_choice("t", &json!({"range": "7y"}), "range", "1mo", &["1mo", "5d"]),
            Err(TaskError::Permanent(
                "t: params.range: expected one of 1mo, 5d, got \"7y\"".into()
            ))
        );
    }

    /// Ensures that a huge param value is cut short in the error that shows it.
    #[test]
    fn shown_values_are_bounded() {
        let long = Value::String("x".repeat(10_000));
        assert!(shown(&long).chars().count() <= 61);
    }
}
