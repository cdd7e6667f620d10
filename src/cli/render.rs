//! Human output: each function takes a successful answer and returns the text to print
//! (without a trailing newline). Tables are borderless and aligned; a missing value shows as
//! `-`; long or multi-line cells are cut to one line so rows stay rows.

use std::time::Duration;

use comfy_table::{presets, Table};
use serde_json::Value;

use super::session::Render;
use super::ClientCommand;

/// The widest error, value or detail cell in a table, in characters.
const CELL: usize = 60;

/// How the answer to `cmd` is drawn.
pub(super) fn for_command(cmd: &ClientCommand) -> Render {
    use ClientCommand as C;
    match cmd {
        C::Ping => ping,
        C::Submit(_) => submitted,
        C::Status { .. } | C::Cancel { .. } | C::Retry { .. } => job,
        C::History { .. } => history,
        C::List(_) | C::Dlq { .. } => jobs,
        C::Tree => tree,
        C::Nodes => nodes,
        C::Pipelines => pipelines,
        C::Pause { .. } | C::Resume { .. } => pipeline,
        C::Stats => stats,
        C::Records(_) | C::Export { to: None, .. } => records,
        C::Export { to: Some(_), .. } => super::sinks::backfilled,
        C::Schedules => schedules,
        C::Sinks { action: None } => super::sinks::sinks,
        C::Sinks { action: Some(_) } => super::sinks::backfilled,
        C::Shutdown { .. } => shutdown,
        C::Why { .. } => why,
    }
}

/// `why`: the blocker's kind and detail, and its ETA when known.
pub(super) fn why(a: &Value) -> String {
    let b = &a["blocker"];
    match b["eta"].as_str() {
        Some(eta) => format!("{}: {} (until {eta})", text(&b["kind"]), text(&b["detail"])),
        None => format!("{}: {}", text(&b["kind"]), text(&b["detail"])),
    }
}

/// `ping`: who answered and for how long it has been up.
pub(super) fn ping(a: &Value) -> String {
    format!(
        "pong from {} (warden {}), up {}",
        text(&a["node"]),
        text(&a["version"]),
        uptime(&a["uptime_s"])
    )
}

/// `submit`: the job id, and whether an existing job was returned instead.
pub(super) fn submitted(a: &Value) -> String {
    let id = text(&a["job_id"]);
    if a["deduplicated"] == Value::Bool(true) {
        format!("deduplicated: {id} (an unfinished job with this unique key already exists)")
    } else {
        format!("submitted {id}")
    }
}

/// The job object's fields in the order docs/protocol.md lists them; others follow, sorted.
const JOB_FIELDS: &[&str] = &[
    "job_id",
    "name",
    "status",
    "priority",
    "attempts",
    "max_retries",
    "params",
    "unique_key",
    "created_at",
    "started_at",
    "completed_at",
    "next_attempt_at",
    "error",
    "result",
    "parent_id",
    "workflow_id",
];

/// `status`, `cancel`, `retry`: the job as aligned `key: value` lines.
pub(super) fn job(a: &Value) -> String {
    let Some(fields) = a["job"].as_object() else {
        return text(&a["job"]);
    };
    let extra = fields.keys().filter(|k| !JOB_FIELDS.contains(&k.as_str()));
    let keys: Vec<&str> = JOB_FIELDS
        .iter()
        .copied()
        .chain(extra.map(String::as_str))
        .collect();
    let width = keys.iter().map(|k| k.len() + 1).max().unwrap_or(0);
    let line = |k: &&str| {
        let value = fields.get(*k).cloned().unwrap_or_default();
        let shown = match *k {
            "progress" => progress(&value).unwrap_or_else(|| text(&value)),
            _ => text(&value),
        };
        format!("{:<width$} {shown}", format!("{k}:"))
    };
    keys.iter().map(line).collect::<Vec<_>>().join("\n")
}

/// A job's `progress` for people: `10/27 (37 %) · message`, or `10 · message` without a total.
pub(super) fn progress(p: &Value) -> Option<String> {
    let done = p["done"].as_u64()?;
    let mut out = match p["total"].as_u64() {
        Some(total) if total > 0 => format!("{done}/{total} ({} %)", done * 100 / total),
        Some(total) => format!("{done}/{total}"),
        None => done.to_string(),
    };
    if let Some(m) = p["message"].as_str().filter(|m| !m.is_empty()) {
        out.push_str(" · ");
        out.push_str(m);
    }
    Some(out)
}

/// `history`: one line per event, oldest first, with the time since the first one.
pub(super) fn history(a: &Value) -> String {
    let events = list_of(&a["events"]);
    if events.is_empty() {
        return "no events".into();
    }
    let first = events[0]["at"].as_str().and_then(parse_time);
    let rows = events.iter().map(|e| {
        vec![
            text(&e["at"]),
            since(first, e["at"].as_str().and_then(parse_time)),
            text(&e["kind"]),
            text(&e["attempt"]),
            cut(&text(&e["detail"]), 2 * CELL),
        ]
    });
    table(&["TIME", "+ELAPSED", "EVENT", "ATTEMPT", "DETAIL"], rows)
}

/// `list`, `dlq`: one row per job, newest first.
pub(super) fn jobs(a: &Value) -> String {
    let jobs = list_of(&a["jobs"]);
    if jobs.is_empty() {
        return "no jobs".into();
    }
    let rows = jobs.iter().map(|j| {
        vec![
            text(&j["job_id"]),
            text(&j["name"]),
            text(&j["status"]),
            text(&j["priority"]),
            format!(
                "{}/{}",
                text(&j["attempts"]),
                j["max_retries"].as_u64().unwrap_or(0) + 1
            ),
            text(&j["created_at"]),
            cut(&text(&j["error"]), CELL),
        ]
    });
    table(
        &[
            "ID", "NAME", "STATUS", "PRIORITY", "ATTEMPTS", "CREATED", "ERROR",
        ],
        rows,
    )
}

/// `tree`: the supervision tree drawn with `├──`, `└──` and `│`.
pub(super) fn tree(a: &Value) -> String {
    let root = &a["tree"];
    let mut out = tree_node(root);
    tree_children(root, "", &mut out);
    out
}

fn tree_children(node: &Value, prefix: &str, out: &mut String) {
    let children = list_of(&node["children"]);
    for (i, child) in children.iter().enumerate() {
        let last = i + 1 == children.len();
        let (branch, indent) = if last {
            ("└── ", "    ")
        } else {
            ("├── ", "│   ")
        };
        out.push_str(&format!("\n{prefix}{branch}{}", tree_node(child)));
        tree_children(child, &format!("{prefix}{indent}"), out);
    }
}

fn tree_node(n: &Value) -> String {
    let mut line = format!(
        "{} [{}] {} · restarts {}",
        text(&n["name"]),
        text(&n["kind"]),
        text(&n["status"]),
        text(&n["restarts"])
    );
    if let Some(failure) = n["last_failure"].as_str() {
        line.push_str(&format!(" · last failure: {}", cut(failure, 2 * CELL)));
    }
    line
}

/// `pipelines`: one row per pipeline.
/// `nodes`: one line per node, the leader starred; a single node says it runs alone.
pub(super) fn nodes(a: &Value) -> String {
    if a["cluster"] != Value::Bool(true) {
        return format!(
            "{} runs alone (no [store] kind = \"postgres\")",
            text(&a["nodes"][0]["id"])
        );
    }
    let rows = list_of(&a["nodes"]).iter().map(|n| {
        let age = n["heartbeat_age_ms"].as_i64().unwrap_or(0);
        vec![
            text(&n["id"]),
            if n["leader"] == Value::Bool(true) {
                "leader"
            } else {
                "-"
            }
            .to_string(),
            format!("{:.1}s", age as f64 / 1000.0),
            text(&n["running"]),
            text(&n["admin"]),
            text(&n["started_at"]),
        ]
    });
    table(
        &["NODE", "ROLE", "HEARTBEAT", "RUNNING", "ADMIN", "STARTED"],
        rows,
    )
}

pub(super) fn pipelines(a: &Value) -> String {
    let all = list_of(&a["pipelines"]);
    if all.is_empty() {
        return "no pipelines".into();
    }
    pipeline_table(all)
}

/// `pause`, `resume`: the pipeline as it is now.
pub(super) fn pipeline(a: &Value) -> String {
    pipeline_table(std::slice::from_ref(&a["pipeline"]))
}

fn pipeline_table(all: &[Value]) -> String {
    let rows = all.iter().map(|p| {
        let q = &p["queue"];
        vec![
            text(&p["name"]),
            if p["paused"] == Value::Bool(true) {
                "paused"
            } else {
                "running"
            }
            .to_string(),
            format!(
                "{}/{}",
                text(&p["workers"]["busy"]),
                text(&p["workers"]["total"])
            ),
            format!(
                "{}/{}/{}",
                text(&q["high"]),
                text(&q["normal"]),
                text(&q["low"])
            ),
            text(&p["scheduled"]),
            text(p["breaker"].get("state").unwrap_or(&p["breaker"])),
            cut(&text(&p["rate_limit"]), CELL),
        ]
    });
    table(
        &[
            "NAME",
            "STATE",
            "BUSY/WORKERS",
            "QUEUED H/N/L",
            "SCHEDULED",
            "BREAKER",
            "RATE LIMIT",
        ],
        rows,
    )
}

/// `stats`: uptime, then unfinished jobs, totals since start and queue depths as tables.
pub(super) fn stats(a: &Value) -> String {
    let queues = a["queues"]
        .as_object()
        .map(|m| m.iter().collect::<Vec<_>>())
        .unwrap_or_default();
    let queue_rows = queues.iter().map(|(name, q)| {
        vec![
            name.to_string(),
            text(&q["high"]),
            text(&q["normal"]),
            text(&q["low"]),
        ]
    });
    [
        format!("up {}", uptime(&a["uptime_s"])),
        counts(&a["jobs"], &["pending", "running", "retrying"]),
        counts(
            &a["totals"],
            &[
                "submitted",
                "succeeded",
                "failed",
                "retried",
                "cancelled",
                "requeued",
            ],
        ),
        table(&["QUEUE", "HIGH", "NORMAL", "LOW"], queue_rows),
    ]
    .join("\n\n")
}

/// A one-row table of an object's counts: `known` keys first, any others after them.
fn counts(obj: &Value, known: &[&str]) -> String {
    let Some(fields) = obj.as_object() else {
        return text(obj);
    };
    let extra = fields
        .keys()
        .map(String::as_str)
        .filter(|k| !known.contains(k));
    let keys: Vec<&str> = known.iter().copied().chain(extra).collect();
    let header: Vec<String> = keys.iter().map(|k| k.to_uppercase()).collect();
    let row = keys.iter().map(|k| text(&obj[*k])).collect();
    table(
        &header.iter().map(String::as_str).collect::<Vec<_>>(),
        [row],
    )
}

/// `records`: one row per record, in key order.
pub(super) fn records(a: &Value) -> String {
    let all = list_of(&a["records"]);
    if all.is_empty() {
        return "no records".into();
    }
    let rows = all.iter().map(|r| {
        vec![
            text(&r["key"]),
            text(&r["updated_at"]),
            cut(&text(&r["value"]), CELL),
        ]
    });
    table(&["KEY", "UPDATED", "VALUE"], rows)
}

/// `schedules`: one row per schedule.
pub(super) fn schedules(a: &Value) -> String {
    let all = list_of(&a["schedules"]);
    if all.is_empty() {
        return "no schedules".into();
    }
    let rows = all.iter().map(|s| {
        ["name", "cron", "job", "next_run_at", "last_run_at"]
            .iter()
            .map(|k| text(&s[*k]))
            .collect::<Vec<_>>()
    });
    table(&["NAME", "CRON", "JOB", "NEXT RUN", "LAST RUN"], rows)
}

/// `shutdown`: what the node is doing now.
pub(super) fn shutdown(_: &Value) -> String {
    "the node is shutting down: it takes no new work and exits once running jobs are done".into()
}

/// A borderless table, columns two spaces apart, no trailing spaces.
pub(super) fn table(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING).set_header(header.to_vec());
    for row in rows {
        t.add_row(row);
    }
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    t.trim_fmt()
}

/// A value as a cell: strings bare, null as `-`, anything else as compact JSON.
pub(super) fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn list_of(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// `s` on one line, at most `max` characters (an ellipsis marks the cut).
fn cut(s: &str, max: usize) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let kept: String = one_line.chars().take(max.saturating_sub(1)).collect();
    format!("{kept}…")
}

fn uptime(v: &Value) -> String {
    match v.as_u64() {
        Some(s) => humantime::format_duration(Duration::from_secs(s)).to_string(),
        None => text(v),
    }
}

fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(s).ok()
}

/// `+1.234s`: how long after the first event this one came.
fn since(
    first: Option<chrono::DateTime<chrono::FixedOffset>>,
    at: Option<chrono::DateTime<chrono::FixedOffset>>,
) -> String {
    match (first, at) {
        (Some(f), Some(a)) => format!("+{:.3}s", (a - f).num_milliseconds() as f64 / 1000.0),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Ensures that the tree is drawn with branches, kinds, statuses, restarts and failures.
    /// Ensures that progress reads as done/total with a percentage and the message.
    #[test]
    fn progress_is_readable() {
        let p = |v: Value| progress(&v);
        assert_eq!(
            p(json!({"done": 10, "total": 40, "message": "page 10"})).as_deref(),
            Some("10/40 (25 %) · page 10")
        );
        assert_eq!(p(json!({"done": 3, "total": null})).as_deref(), Some("3"));
        assert_eq!(p(Value::Null), None);
    }

    #[test]
    fn tree_is_drawn_with_branches() {
        let leaf = |name: &str, restarts: u64| json!({"name": name, "path": "", "kind": "worker", "status": "running", "restarts": restarts, "children": []});
        let mut crashed = leaf("worker-2", 3);
        crashed["last_failure"] = json!("panicked: boom");
        let a = json!({"tree": {"name": "root", "path": "root", "kind": "supervisor", "status": "running", "restarts": 0,
        "children": [
            {"name": "pipeline:builtin", "path": "", "kind": "supervisor", "status": "running", "restarts": 0,
             "children": [leaf("worker-1", 0), crashed]},
            leaf("admin", 0),
        ]}});
        let expected = "\
root [supervisor] running · restarts 0
├── pipeline:builtin [supervisor] running · restarts 0
│   ├── worker-1 [worker] running · restarts 0
│   └── worker-2 [worker] running · restarts 3 · last failure: panicked: boom
└── admin [worker] running · restarts 0";
        assert_eq!(tree(&a), expected);
    }

    /// Ensures that job lists are aligned columns with attempts out of the allowed total and
    /// errors cut to one line.
    #[test]
    fn jobs_table_is_aligned() {
        let long = format!("line one\nline two {}", "x".repeat(100));
        let a = json!({"jobs": [
            {"job_id": "a", "name": "builtin.noop", "status": "succeeded", "priority": "normal",
             "attempts": 1, "max_retries": 3, "created_at": "t1", "error": null},
            {"job_id": "b", "name": "builtin.fail_permanent", "status": "failed", "priority": "high",
             "attempts": 1, "max_retries": 0, "created_at": "t2", "error": long},
        ]});
        let out = jobs(&a);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(
            lines[0].starts_with("ID  NAME                    STATUS     PRIORITY  ATTEMPTS"),
            "{out}"
        );
        assert!(lines[1].contains("1/4") && lines[1].ends_with('-'), "{out}");
        assert!(
            lines[2].contains("line one line two x") && lines[2].ends_with('…'),
            "{out}"
        );
        assert_eq!(lines[1].find("succeeded"), lines[2].find("failed"), "{out}");
    }

    /// Ensures that a job prints as aligned key: value lines in protocol order, nulls as `-`.
    #[test]
    fn job_is_key_value_lines() {
        let out = job(
            &json!({"job": {"job_id": "a", "name": "n", "status": "failed", "params": {"x": 1}, "error": null}}),
        );
        assert!(
            out.starts_with("job_id:          a\nname:            n\nstatus:          failed\n"),
            "{out}"
        );
        assert!(out.contains("\nparams:          {\"x\":1}\n"), "{out}");
        assert!(out.contains("\nerror:           -\n"), "{out}");
    }

    /// Ensures that history shows each event with its offset from the first.
    #[test]
    fn history_has_offsets() {
        let a = json!({"events": [
            {"at": "2026-01-01T00:00:00.000Z", "kind": "submitted", "attempt": 0, "detail": null},
            {"at": "2026-01-01T00:00:01.500Z", "kind": "succeeded", "attempt": 1, "detail": "worker-1"},
        ]});
        let out = history(&a);
        assert!(
            out.lines()
                .nth(1)
                .unwrap()
                .contains("+0.000s   submitted  0        -"),
            "{out}"
        );
        assert!(
            out.lines()
                .nth(2)
                .unwrap()
                .ends_with("+1.500s   succeeded  1        worker-1"),
            "{out}"
        );
    }
}
