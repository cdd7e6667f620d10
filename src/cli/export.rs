//! `warden export --prefix P`: every record under P as JSON lines on stdout, paging through
//! `records` with `after` = the last key seen, until a page comes back short.

use serde_json::Value;

use super::session::{emit, Failure, Session};

/// Records asked for per page (the protocol's maximum, so a prefix takes the fewest round trips).
pub(super) const PAGE: usize = 1000;

/// Pages from `first` (a `records` request) until a short page; prints each record (or, under
/// `--json`, each raw page).
pub(super) async fn run(session: &mut Session, first: Value) -> Result<(), Failure> {
    let mut req = first;
    loop {
        let answer = session.call(&req).await?;
        let records = answer.value["records"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if session.json {
            emit(&answer.raw)?;
        } else {
            emit(&json_lines(records))?;
        }
        match records.last() {
            Some(last) if records.len() >= PAGE => req["after"] = last["key"].clone(),
            _ => return Ok(()),
        }
    }
}

/// One `{"key":…,"value":…,"updated_at":…}` line per record. Written by hand because
/// serde_json sorts object keys, and the documented order puts the key first.
fn json_lines(records: &[Value]) -> String {
    let line = |r: &Value| {
        format!(
            r#"{{"key":{},"value":{},"updated_at":{}}}"#,
            r["key"], r["value"], r["updated_at"]
        )
    };
    records.iter().map(line).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Ensures that each record becomes one line with key, value and updated_at in that order.
    #[test]
    fn records_become_ordered_lines() {
        let recs = [
            json!({"updated_at": "2026-01-01T00:00:00.000Z", "value": {"b": 1}, "key": "a/1"}),
            json!({"key": "a/2", "value": "x\ny", "updated_at": "2026-01-02T00:00:00.000Z"}),
        ];
        assert_eq!(
            json_lines(&recs),
            "{\"key\":\"a/1\",\"value\":{\"b\":1},\"updated_at\":\"2026-01-01T00:00:00.000Z\"}\n\
             {\"key\":\"a/2\",\"value\":\"x\\ny\",\"updated_at\":\"2026-01-02T00:00:00.000Z\"}"
        );
    }
}
