//! `warden sinks` and `warden sinks backfill`: the sink's state drawn for people. The error
//! is shown in full (it is what an operator acts on), on a line of its own.

use serde_json::Value;

use super::render::{table, text};

/// `sinks`: one row per sink, then per sink the rows written by table and the last error.
pub(super) fn sinks(a: &Value) -> String {
    let all = a["sinks"].as_array().map(Vec::as_slice).unwrap_or_default();
    if all.is_empty() {
        return "no sinks configured (add [sinks.postgres] to the node's config)".into();
    }
    let rows = all.iter().map(|s| {
        [
            "name",
            "state",
            "backlog",
            "shipped",
            "rows_written_total",
            "target",
            "schema",
        ]
        .iter()
        .map(|k| text(&s[*k]))
        .collect::<Vec<_>>()
    });
    let mut out = table(
        &[
            "SINK", "STATE", "BACKLOG", "SHIPPED", "ROWS", "TARGET", "SCHEMA",
        ],
        rows,
    );
    for s in all {
        out.push_str(&details(s));
    }
    out
}

/// The lines under the table for one sink: rows by table, the last flush, the last error.
fn details(s: &Value) -> String {
    let name = text(&s["name"]);
    let mut out = String::new();
    if s["state"] == "standby" {
        out.push_str(&format!(
            "\n{name}: standby: another node of the cluster ships (it holds the shipping lock)"
        ));
    }
    if let Some(tables) = s["rows_written"].as_object().filter(|t| !t.is_empty()) {
        let parts: Vec<String> = tables.iter().map(|(t, n)| format!("{t}={n}")).collect();
        out.push_str(&format!(
            "\n{name}: rows written since start: {}",
            parts.join(" ")
        ));
    }
    if let Some(f) = s["last_flush"].as_object() {
        out.push_str(&format!(
            "\n{name}: last batch at {}: {} records, {} rows in {:.3} s",
            text(&f["at"]),
            text(&f["records"]),
            text(&f["rows"]),
            f["seconds"].as_f64().unwrap_or(0.0)
        ));
    }
    if s["rejected"].as_u64().unwrap_or(0) > 0 {
        out.push_str(&format!(
            "\n{name}: {} records refused by PostgreSQL and parked (see the log)",
            s["rejected"]
        ));
    }
    if let Some(e) = s["last_error"].as_object() {
        out.push_str(&format!(
            "\n{name}: last error at {} ({}): {}",
            text(&e["at"]),
            text(&e["kind"]),
            text(&e["message"])
        ));
        if s["state"] == "retrying" {
            out.push_str(&format!(
                "\n{name}: {} failures in a row, next try at {}",
                text(&s["consecutive_failures"]),
                text(&s["next_try_at"])
            ));
        }
    }
    out
}

/// `sinks backfill`: how many records were enqueued.
pub(super) fn backfilled(a: &Value) -> String {
    format!(
        "{} records enqueued for the sink; backlog now {}",
        text(&a["enqueued"]),
        text(&a["backlog"])
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Ensures that a cluster node's sink on standby says that another node ships, and that
    /// a shipping sink does not.
    #[test]
    fn a_standby_sink_says_another_node_ships() {
        let standby = json!({"sinks": [{"name": "postgres", "state": "standby", "backlog": 3}]});
        assert!(sinks(&standby).contains("postgres: standby: another node of the cluster ships"));
        let idle = json!({"sinks": [{"name": "postgres", "state": "idle", "backlog": 0}]});
        assert!(!sinks(&idle).contains("standby"));
    }
}
