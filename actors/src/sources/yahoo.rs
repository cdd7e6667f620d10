//! Yahoo Finance (`yahoo`): price bars from the unofficial chart API.
//!
//! `GET {base_url}/v8/finance/chart/{ticker}?range=..&interval=..` answers timestamps and
//! parallel arrays of open, high, low, close and volume; a slot without trades has `null`s and
//! is skipped. An unknown ticker is a 404 whose body carries `chart.error`; Yahoo throttles with
//! 429 (honouring `Retry-After` when it sends one).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::DateTime;
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::http::{judge_json, Fetched, Judgement, Source};
use super::{is_key_part, param_choice, param_symbol, task};
use crate::tasks::{TaskCtx, TaskResult, TaskSet};

/// `yahoo.chart {ticker, range?, interval?}`.
pub const CHART: &str = "yahoo.chart";

/// The ranges the chart API accepts.
const RANGES: &[&str] = &[
    "1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max",
];

/// The intervals the chart API accepts.
const INTERVALS: &[&str] = &[
    "1m", "2m", "5m", "15m", "30m", "60m", "90m", "1h", "1d", "5d", "1wk", "1mo", "3mo",
];

/// The `yahoo` pipeline's task.
pub fn tasks(src: Arc<Source>) -> TaskSet {
    TaskSet::default().with(CHART, task(move |ctx| chart(src.clone(), ctx)))
}

async fn chart(src: Arc<Source>, ctx: TaskCtx) -> TaskResult {
    let ticker = param_symbol(CHART, &ctx.params, "ticker", "CHGG")?;
    let range = param_choice(CHART, &ctx.params, "range", "1mo", RANGES)?;
    let interval = param_choice(CHART, &ctx.params, "interval", "1d", INTERVALS)?;
    let url = src.url(
        &["v8", "finance", "chart", &ticker],
        &[("range", &range), ("interval", &interval)],
    );
    let records = src
        .fetch(CHART, &url, &ctx.cancel, |fetched| {
            judge(fetched, &ticker)
                .and_then(|body| Judgement::shaped(bar_records(&body, &ticker, &interval)))
        })
        .await?;
    let bars = records.len();
    let stored = src.store(&ctx.records, CHART, records).await?;
    Ok(json!({ "ticker": ticker, "bars": bars, "stored": stored }))
}

/// Yahoo's judgement: a 404 is an unknown ticker (with Yahoo's description when its body has
/// `chart.error`), the rest is shared.
pub(crate) fn judge(fetched: &Fetched, ticker: &str) -> Judgement<Value> {
    if fetched.status == StatusCode::NOT_FOUND {
        let said = serde_json::from_slice::<Value>(&fetched.body)
            .ok()
            .and_then(|body| {
                body.pointer("/chart/error/description")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
        return Judgement::NotFound(match said {
            Some(description) => format!("unknown ticker \"{ticker}\" (Yahoo: {description})"),
            None => format!("unknown ticker \"{ticker}\""),
        });
    }
    judge_json(fetched)
}

/// Whether bars of `interval` are a day or longer, so that a date names them.
fn is_daily(interval: &str) -> bool {
    matches!(interval, "1d" | "5d" | "1wk" | "1mo" | "3mo")
}

/// A bar's key part: its date at the exchange (Yahoo stamps daily bars with the session's
/// open, so the exchange's `gmtoffset` gives the trading day), or for intraday bars its UTC
/// time, since a date would not tell them apart.
fn bar_date(timestamp: i64, gmtoffset: i64, daily: bool) -> Option<String> {
    if daily {
        let local = DateTime::from_timestamp(timestamp.checked_add(gmtoffset)?, 0)?;
        Some(local.date_naive().to_string())
    } else {
        let utc = DateTime::from_timestamp(timestamp, 0)?;
        Some(utc.format("%Y-%m-%dT%H:%M:%SZ").to_string())
    }
}

/// The records of a chart answer: one per bar with prices, keyed
/// `yahoo/chart/{ticker}/{interval}/{date}`. Bars with a `null` price are skipped; of two
/// bars on one date (Yahoo appends the live one) the later wins.
pub(crate) fn bar_records(
    body: &Value,
    ticker: &str,
    interval: &str,
) -> Result<Vec<(String, Value)>, String> {
    let result = body
        .pointer("/chart/result/0")
        .filter(|r| r.is_object())
        .ok_or("the answer has no chart.result")?;
    // Yahoo leaves `timestamp` out when the range holds no bars.
    let Some(timestamps) = result.get("timestamp").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    let quote = result
        .pointer("/indicators/quote/0")
        .ok_or("the answer has no indicators.quote")?;
    let adjclose = result.pointer("/indicators/adjclose/0/adjclose");
    let meta = result.get("meta");
    let gmtoffset = meta
        .and_then(|m| m.get("gmtoffset"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let currency = meta
        .and_then(|m| m.get("currency"))
        .cloned()
        .unwrap_or(Value::Null);
    let daily = is_daily(interval);
    let mut bars = BTreeMap::new();
    for (i, timestamp) in timestamps.iter().enumerate() {
        let Some(timestamp) = timestamp.as_i64() else {
            continue;
        };
        let number = |series: Option<&Value>| {
            series
                .and_then(|values| values.get(i))
                .filter(|v| v.is_number())
                .cloned()
        };
        let field = |name: &str| number(quote.get(name));
        let (Some(open), Some(high), Some(low), Some(close)) =
            (field("open"), field("high"), field("low"), field("close"))
        else {
            continue;
        };
        let Some(date) = bar_date(timestamp, gmtoffset, daily).filter(|d| is_key_part(d)) else {
            continue;
        };
        let mut bar = json!({
            "ticker": ticker,
            "interval": interval,
            "date": date,
            "timestamp": timestamp,
            "open": open,
            "high": high,
            "low": low,
            "close": close,
            "volume": field("volume").unwrap_or(Value::Null),
            "currency": currency,
        });
        if let Some(adj) = number(adjclose) {
            bar["adjclose"] = adj;
        }
        bars.insert(format!("yahoo/chart/{ticker}/{interval}/{date}"), bar);
    }
    Ok(bars.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::http::tests::fetched;
    use crate::upstream::Verdict;

    fn chart() -> Value {
        json!({"chart": {"result": [{
            "meta": {"symbol": "CHGG", "currency": "USD", "gmtoffset": -18000},
            // 2025-11-24, 25 and 26 at 14:30 UTC (09:30 in New York)
            "timestamp": [1763994600, 1764081000, 1764167400],
            "indicators": {
                "quote": [{
                    "open": [1.5, null, 1.7],
                    "high": [1.6, null, 1.8],
                    "low": [1.4, null, 1.6],
                    "close": [1.55, null, 1.75],
                    "volume": [1000, null, null]
                }],
                "adjclose": [{"adjclose": [1.55, null, 1.75]}]
            }
        }], "error": null}})
    }

    /// Ensures that each bar with prices becomes a record keyed by its exchange date, and
    /// that null bars are skipped.
    #[test]
    fn bars_skip_nulls_and_key_by_date() {
        let records = bar_records(&chart(), "CHGG", "1d").unwrap();
        let keys: Vec<&str> = records.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "yahoo/chart/CHGG/1d/2025-11-24",
                "yahoo/chart/CHGG/1d/2025-11-26"
            ]
        );
        assert_eq!(
            records[0].1,
            json!({
                "ticker": "CHGG", "interval": "1d", "date": "2025-11-24", "timestamp": 1763994600,
                "open": 1.5, "high": 1.6, "low": 1.4, "close": 1.55, "volume": 1000,
                "currency": "USD", "adjclose": 1.55,
            })
        );
        assert_eq!(records[1].1["volume"], Value::Null);
    }

    /// Ensures that intraday bars are keyed by their UTC time, and that a range without bars
    /// gives no records rather than an error.
    #[test]
    fn intraday_keys_and_empty_ranges() {
        let records = bar_records(&chart(), "CHGG", "5m").unwrap();
        assert_eq!(records[0].0, "yahoo/chart/CHGG/5m/2025-11-24T14:30:00Z");
        let empty = json!({"chart": {"result": [{"meta": {}, "indicators": {"quote": [{}]}}]}});
        assert_eq!(bar_records(&empty, "CHGG", "1d"), Ok(vec![]));
        assert!(bar_records(&json!({"chart": {"result": null}}), "CHGG", "1d").is_err());
    }

    /// Ensures that Yahoo's failure signals are classified as docs/upstreams.md says.
    #[test]
    fn yahoo_failure_signals() {
        let not_found = r#"{"chart":{"result":null,"error":{"code":"Not Found","description":"No data found, symbol may be delisted"}}}"#;
        assert_eq!(
            judge(&fetched(404, &[], not_found), "ZZZZ"),
            Judgement::NotFound(
                "unknown ticker \"ZZZZ\" (Yahoo: No data found, symbol may be delisted)".into()
            )
        );
        assert_eq!(
            judge(&fetched(404, &[], "Not Found"), "ZZZZ"),
            Judgement::NotFound("unknown ticker \"ZZZZ\"".into())
        );
        assert_eq!(
            judge(
                &fetched(429, &[("retry-after", "12")], "Too Many Requests"),
                "X"
            )
            .verdict(),
            Verdict::Throttled {
                retry_after: Some(std::time::Duration::from_secs(12)),
                until_next_utc_day: false
            }
        );
        assert_eq!(
            judge(&fetched(500, &[], ""), "X").verdict(),
            Verdict::Transient
        );
        assert_eq!(
            judge(&fetched(200, &[], "<html>"), "X").verdict(),
            Verdict::Transient
        );
    }
}
