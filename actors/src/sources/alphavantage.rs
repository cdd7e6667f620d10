//! Alpha Vantage (`alphavantage`): company overviews and quarterly income statements.
//!
//! `GET {base_url}/query?function=..&symbol=..&apikey=..`. Alpha Vantage reports every failure
//! with HTTP 200 and the body says what happened: a `Note` or `Information` key is its quota
//! (throttling; when the text is about a daily quota, the source waits until the next UTC day),
//! an `Error Message` key is a bad call, and `{}` is an unknown symbol. The key goes only into
//! the URL's query, which appears in errors and logs redacted.

use std::sync::Arc;

use reqwest::Url;
use serde_json::{json, Map, Value};

use super::http::{judge_json, Fetched, Judgement, Source};
use super::{is_key_part, param_symbol, task};
use crate::tasks::{TaskCtx, TaskResult, TaskSet};

/// `alphavantage.overview {symbol}`.
pub const OVERVIEW: &str = "alphavantage.overview";

/// `alphavantage.income_statement {symbol}`.
pub const INCOME_STATEMENT: &str = "alphavantage.income_statement";

/// The `alphavantage` pipeline's tasks.
pub fn tasks(src: Arc<Source>) -> TaskSet {
    let for_income = src.clone();
    TaskSet::default()
        .with(OVERVIEW, task(move |ctx| overview(src.clone(), ctx)))
        .with(
            INCOME_STATEMENT,
            task(move |ctx| income_statement(for_income.clone(), ctx)),
        )
}

async fn overview(src: Arc<Source>, ctx: TaskCtx) -> TaskResult {
    let symbol = param_symbol(OVERVIEW, &ctx.params, "symbol", "IBM")?;
    let url = query_url(&src, "OVERVIEW", &symbol);
    let overview = src
        .fetch(OVERVIEW, &url, &ctx.cancel, |fetched| {
            judge(fetched, &symbol)
        })
        .await?;
    let record = (
        format!("alphavantage/overview/{symbol}"),
        Value::Object(overview),
    );
    let stored = src.store(&ctx.records, OVERVIEW, vec![record]).await?;
    Ok(json!({ "symbol": symbol, "stored": stored }))
}

async fn income_statement(src: Arc<Source>, ctx: TaskCtx) -> TaskResult {
    let symbol = param_symbol(INCOME_STATEMENT, &ctx.params, "symbol", "IBM")?;
    let url = query_url(&src, "INCOME_STATEMENT", &symbol);
    let records = src
        .fetch(INCOME_STATEMENT, &url, &ctx.cancel, |fetched| {
            judge(fetched, &symbol)
                .and_then(|body| Judgement::shaped(income_records(&body, &symbol)))
        })
        .await?;
    let stored = src.store(&ctx.records, INCOME_STATEMENT, records).await?;
    Ok(json!({ "symbol": symbol, "stored": stored }))
}

/// The query URL of `function` for `symbol`, with the key.
fn query_url(src: &Source, function: &str, symbol: &str) -> Url {
    let key = src.args().api_key.as_deref().unwrap_or_default();
    src.url(
        &["query"],
        &[("function", function), ("symbol", symbol), ("apikey", key)],
    )
}

/// Alpha Vantage's judgement: the shared one, then the body's own failure signals.
pub(crate) fn judge(fetched: &Fetched, symbol: &str) -> Judgement<Map<String, Value>> {
    judge_json(fetched).and_then(|body| read_answer(body, symbol))
}

/// What a JSON answer (HTTP 200) says: a quota note, a refused call, no such symbol, or data.
fn read_answer(body: Value, symbol: &str) -> Judgement<Map<String, Value>> {
    let Value::Object(body) = body else {
        return Judgement::Permanent("the answer is not a JSON object".into());
    };
    if let Some(message) = body.get("Error Message") {
        return Judgement::Permanent(format!("Alpha Vantage refused the call: {}", text(message)));
    }
    if let Some(note) = body.get("Note").or_else(|| body.get("Information")) {
        let note = text(note);
        // `Information` also carries refusals that waiting never clears ("This is a premium
        // endpoint"); throttling those would keep the job waiting forever. (Quota notes link to
        // the premium plans too, so only that phrase counts.)
        if note.to_lowercase().contains("premium endpoint") {
            return Judgement::Permanent(format!("Alpha Vantage refused the call: {note}"));
        }
        let daily = is_daily_quota(&note);
        return Judgement::Throttled {
            problem: format!(
                "Alpha Vantage's {} quota: {note}",
                if daily { "daily" } else { "rate" }
            ),
            retry_after: None,
            until_next_utc_day: daily,
        };
    }
    if body.is_empty() {
        return Judgement::NotFound(format!(
            "unknown symbol \"{symbol}\" (Alpha Vantage answered {{}})"
        ));
    }
    Judgement::Answer(body)
}

/// A JSON value as plain text (strings without their quotes).
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether a quota note is about the daily quota. The per-minute note names both rates
/// ("5 calls per minute and 500 calls per day"), so a mention of minutes means it is the
/// per-minute one; the daily note speaks only of days ("25 requests per day").
pub(crate) fn is_daily_quota(note: &str) -> bool {
    let note = note.to_ascii_lowercase();
    (note.contains("per day") || note.contains("daily")) && !note.contains("per minute")
}

/// The records of an income statement answer: one per quarterly report, keyed
/// `alphavantage/income/{symbol}/{fiscalDateEnding}`, the report with its `symbol`.
pub(crate) fn income_records(
    body: &Map<String, Value>,
    symbol: &str,
) -> Result<Vec<(String, Value)>, String> {
    let reports = body
        .get("quarterlyReports")
        .and_then(Value::as_array)
        .ok_or("the answer has no quarterlyReports list")?;
    let mut records = Vec::with_capacity(reports.len());
    for report in reports {
        let Some(report) = report.as_object() else {
            continue;
        };
        let Some(end) = report
            .get("fiscalDateEnding")
            .and_then(Value::as_str)
            .filter(|e| is_key_part(e))
        else {
            continue;
        };
        let key = format!("alphavantage/income/{symbol}/{end}");
        let mut record = report.clone();
        record.insert("symbol".into(), json!(symbol));
        records.push((key, Value::Object(record)));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::http::tests::fetched;
    use crate::upstream::Verdict;

    /// Ensures that Alpha Vantage's HTTP 200 failure signals are classified as docs/upstreams.md
    /// says, the daily quota apart from the per-minute one.
    #[test]
    fn alphavantage_failure_signals() {
        let per_minute = r#"{"Note": "Thank you for using Alpha Vantage! Our standard API call frequency is 5 calls per minute and 500 calls per day."}"#;
        assert_eq!(
            judge(&fetched(200, &[], per_minute), "IBM").verdict(),
            Verdict::Throttled {
                retry_after: None,
                until_next_utc_day: false
            }
        );
        let daily = r#"{"Information": "We have detected your API key as XYZ and our standard API rate limit is 25 requests per day."}"#;
        assert_eq!(
            judge(&fetched(200, &[], daily), "IBM").verdict(),
            Verdict::Throttled {
                retry_after: None,
                until_next_utc_day: true
            }
        );
        let refused = r#"{"Error Message": "Invalid API call."}"#;
        assert_eq!(
            judge(&fetched(200, &[], refused), "IBM"),
            Judgement::Permanent("Alpha Vantage refused the call: Invalid API call.".into())
        );
        assert_eq!(
            judge(&fetched(200, &[], "{}"), "ZZZZ"),
            Judgement::NotFound("unknown symbol \"ZZZZ\" (Alpha Vantage answered {})".into())
        );
        assert_eq!(
            judge(&fetched(200, &[], "[]"), "IBM").verdict(),
            Verdict::Permanent
        );
        assert_eq!(
            judge(&fetched(503, &[], ""), "IBM").verdict(),
            Verdict::Transient
        );
        let data = r#"{"Symbol": "IBM", "Name": "International Business Machines"}"#;
        assert!(matches!(
            judge(&fetched(200, &[], data), "IBM"),
            Judgement::Answer(m) if m["Symbol"] == "IBM"
        ));
    }

    /// Ensures that each quarterly report becomes one record keyed by its fiscal date ending.
    #[test]
    fn income_records_per_quarter() {
        let body = json!({
            "symbol": "IBM",
            "annualReports": [{"fiscalDateEnding": "2024-12-31"}],
            "quarterlyReports": [
                {"fiscalDateEnding": "2025-09-30", "totalRevenue": "16331000000"},
                {"fiscalDateEnding": "2025-06-30", "totalRevenue": "16977000000"},
                {"noDate": true}
            ]
        });
        let Value::Object(body) = body else {
            unreachable!()
        };
        let records = income_records(&body, "IBM").unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].0, "alphavantage/income/IBM/2025-09-30");
        assert_eq!(
            records[0].1,
            json!({"fiscalDateEnding": "2025-09-30", "totalRevenue": "16331000000", "symbol": "IBM"})
        );
        assert!(income_records(&Map::new(), "IBM").is_err());
    }
}
