//! The admin protocol from outside, as docs/protocol.md writes it: one test per command and per
//! error code over real TCP, plus framing (ids, blank lines, pipelining, `\r`, limits, idle
//! timeout). After every error on a connection that stays open, `ping` on that same connection
//! must still work.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;
use warden::client::Client;

use crate::support::{
    code, eventually, finished, poll, req, status, submit, until_running, TestNode,
};

const WAIT: Duration = Duration::from_secs(30);
/// Bound on every single read: a hang is a failure, not a stuck test.
const READ: Duration = Duration::from_secs(10);

/// The next answer, within [`READ`].
async fn answer(c: &mut Client) -> Value {
    timeout(READ, c.recv())
        .await
        .expect("an answer within the read bound")
        .expect("an answer")
}

/// Sends one raw line (the client adds `\n`) and returns its answer.
async fn ask_raw(c: &mut Client, line: &[u8]) -> Value {
    c.send_raw(line).await.expect("send");
    answer(c).await
}

/// Asserts that `ping` on this same connection still succeeds.
async fn still_serves(c: &mut Client) {
    let a = req(c, json!({"cmd": "ping", "id": "after"})).await;
    assert_eq!(a["ok"], true, "ping after an error failed: {a}");
    assert_eq!(a["pong"], true, "{a}");
    assert_eq!(a["id"], "after", "{a}");
}

/// Asserts that the node closes the connection within `within`: the next read is EOF.
async fn closed_within(c: &mut Client, within: Duration) {
    match timeout(within, c.recv_raw()).await {
        Ok(Ok(None)) => {}
        other => panic!("expected EOF within {within:?}, got {other:?}"),
    }
}

/// The error message of an error answer with `want` as its code.
fn error_of<'a>(a: &'a Value, want: &str) -> &'a str {
    assert_eq!(code(a), want, "{a}");
    let keys: Vec<&String> = a["error"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["code", "message"], "{a}");
    let m = a["error"]["message"].as_str().expect("a message");
    assert!(!m.is_empty(), "{a}");
    m
}

fn ids_of(a: &Value, field: &str) -> Vec<String> {
    a[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} is not an array: {a}"))
        .iter()
        .map(|j| {
            j.get("job_id")
                .unwrap_or(j)
                .as_str()
                .expect("an id string")
                .to_string()
        })
        .collect()
}

/// Ids of every job the node lists, newest first.
async fn all_ids(c: &mut Client) -> Vec<String> {
    let a = req(c, json!({"cmd": "list", "limit": 1000})).await;
    assert_eq!(a["ok"], true, "{a}");
    ids_of(&a, "jobs")
}

async fn ok(c: &mut Client, r: Value) -> Value {
    let a = req(c, r.clone()).await;
    assert_eq!(a["ok"], true, "{r} failed: {a}");
    a
}

/// Submits one job with extra fields and returns its id.
async fn submit_with(c: &mut Client, fields: Value) -> String {
    let mut r = json!({"cmd": "submit"});
    r.as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    let a = ok(c, r).await;
    a["job_id"].as_str().unwrap().to_string()
}

fn is_rfc3339_ms(s: &Value) -> bool {
    let Some(s) = s.as_str() else { return false };
    chrono::DateTime::parse_from_rfc3339(s).is_ok()
        && s.len() == "2026-11-28T10:00:00.123Z".len()
        && s.ends_with('Z')
        && s.as_bytes()[19] == b'.'
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// Ensures that `ping` answers `pong: true` with the version, the node's name and its uptime, and
/// no `id` when none was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_answers_pong() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let a = req(&mut c, json!({"cmd": "ping"})).await;
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(a["pong"], true);
    assert_eq!(a["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(a["node"], "test");
    assert!(a["uptime_s"].as_u64().is_some_and(|u| u < 60), "{a}");
    assert!(a.get("id").is_none(), "{a}");
    let fields: Vec<&String> = a.as_object().unwrap().keys().collect();
    assert_eq!(fields.len(), 5, "ok, pong, version, node, uptime_s: {a}");
}

/// Ensures that `submit` answers a fresh job_id with `deduplicated: false`, fills the defaults
/// (params `{}`, priority from routing, the pipeline's max_retries), keeps the given fields,
/// dedups on `unique_key`, and that the job runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_answers_job_id_with_defaults() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let a = ok(&mut c, json!({"cmd": "submit", "job": "builtin.noop"})).await;
    assert_eq!(a["deduplicated"], false, "{a}");
    let id = a["job_id"].as_str().unwrap().to_string();
    let uuid = uuid::Uuid::parse_str(&id).expect("a UUID");
    assert_eq!(uuid.get_version_num(), 7, "time-ordered ids");
    let j = finished(&mut c, &id, WAIT).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    assert_eq!(j["name"], "builtin.noop");
    assert_eq!(j["params"], json!({}));
    assert_eq!(j["priority"], "normal");
    assert_eq!(j["max_retries"], 3, "the pipeline's retry policy");
    assert_eq!(j["unique_key"], Value::Null);
    assert_eq!(j["attempts"], 1);

    // paused, so the first job is surely unfinished when the second submit comes
    ok(&mut c, json!({"cmd": "pause", "pipeline": "builtin"})).await;
    let given = json!({"cmd": "submit", "job": "builtin.sleep", "params": {"ms": 1},
        "priority": "low", "max_retries": 5, "unique_key": "u-1"});
    let a = ok(&mut c, given.clone()).await;
    let b = ok(&mut c, given).await;
    assert_eq!(a["deduplicated"], false);
    assert_eq!(b["deduplicated"], true, "{b}");
    assert_eq!(a["job_id"], b["job_id"]);
    let j = status(&mut c, a["job_id"].as_str().unwrap()).await;
    assert_eq!(j["params"], json!({"ms": 1}));
    assert_eq!(j["priority"], "low");
    assert_eq!(j["max_retries"], 5);
    assert_eq!(j["unique_key"], "u-1");
    assert_eq!(all_ids(&mut c).await.len(), 2, "the dedup created nothing");
    ok(&mut c, json!({"cmd": "resume", "pipeline": "builtin"})).await;
    let j = finished(&mut c, a["job_id"].as_str().unwrap(), WAIT).await;
    assert_eq!(j["status"], "succeeded", "{j}");
}

/// Ensures that `submit_batch` answers the job_ids in request order, and that a bad job anywhere
/// in a batch (unknown name, bad priority, bad duration, too many jobs) rejects the whole batch
/// with an error naming its index, and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_batch_is_ordered_and_all_or_nothing() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let jobs = json!([
        {"job": "builtin.sleep", "params": {"ms": 1}},
        {"job": "builtin.noop", "priority": "high"},
        {"job": "builtin.fail", "params": {"times": 0}},
    ]);
    let a = ok(&mut c, json!({"cmd": "submit_batch", "jobs": jobs})).await;
    let ids = ids_of(&a, "job_ids");
    assert_eq!(ids.len(), 3);
    let names = ["builtin.sleep", "builtin.noop", "builtin.fail"];
    for (id, name) in ids.iter().zip(names) {
        let j = finished(&mut c, id, WAIT).await;
        assert_eq!(j["name"], name, "job_ids in request order: {j}");
        assert_eq!(j["status"], "succeeded", "{j}");
    }
    let before = all_ids(&mut c).await;
    assert_eq!(before.len(), 3);

    let noop = json!({"job": "builtin.noop"});
    let bad = [
        (
            json!([noop, noop, {"job": "builtin.nothing"}]),
            "unknown_job",
            "jobs[2].job",
        ),
        (
            json!([noop, {"job": "builtin.noop", "priority": "urgent"}, noop]),
            "bad_request",
            "jobs[1].priority",
        ),
        (
            json!([{"job": "builtin.noop", "delay": "soon"}, noop]),
            "bad_request",
            "jobs[0].delay",
        ),
        (
            json!([noop, {"job": "builtin.noop", "params": [1]}]),
            "bad_request",
            "jobs[1].params",
        ),
        (
            json!([noop, {"job": "builtin.noop", "prio": "high"}]),
            "bad_request",
            "jobs[1].prio",
        ),
        (
            Value::Array(vec![noop.clone(); 10_001]),
            "bad_request",
            "at most 10000",
        ),
    ];
    for (jobs, want, names) in bad {
        let a = req(&mut c, json!({"cmd": "submit_batch", "jobs": jobs})).await;
        let m = error_of(&a, want);
        assert!(m.contains(names), "{m:?} should name {names:?}");
        still_serves(&mut c).await;
    }
    assert_eq!(
        all_ids(&mut c).await,
        before,
        "no rejected batch created a job"
    );
    let s = ok(&mut c, json!({"cmd": "stats"})).await;
    assert_eq!(s["totals"]["submitted"], 3, "{s}");
}

/// Ensures that `status` returns the job object with exactly the fields of docs/protocol.md,
/// times in RFC 3339 UTC with milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_returns_the_job_object() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let id = submit(&mut c, "builtin.sleep", json!({"ms": 5})).await;
    let j = finished(&mut c, &id, WAIT).await;
    let mut keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = [
        "job_id",
        "name",
        "params",
        "status",
        "priority",
        "attempts",
        "max_retries",
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
    want.sort_unstable();
    assert_eq!(keys, want, "{j}");
    assert_eq!(j["job_id"], id.as_str());
    assert_eq!(j["status"], "succeeded");
    for t in ["created_at", "started_at", "completed_at"] {
        assert!(is_rfc3339_ms(&j[t]), "{t}: {j}");
    }
    assert!(j["created_at"].as_str() <= j["started_at"].as_str());
    assert!(j["started_at"].as_str() <= j["completed_at"].as_str());
    assert_eq!(j["next_attempt_at"], Value::Null);
    assert_eq!(j["error"], Value::Null);
    assert_eq!(j["result"], json!({"slept_ms": 5}));
    assert_eq!(j["parent_id"], Value::Null);
    assert_eq!(j["workflow_id"], Value::Null);
}

/// Ensures that `history` lists a job's journal entries oldest first, each with exactly `at`,
/// `kind`, `attempt` and `detail`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_oldest_first() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let id = submit(&mut c, "builtin.fail", json!({"times": 1})).await;
    assert_eq!(finished(&mut c, &id, WAIT).await["status"], "succeeded");
    let h = ok(&mut c, json!({"cmd": "history", "job_id": id})).await;
    let events = h["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["submitted", "started", "retrying", "started", "succeeded"]
    );
    for e in events {
        let mut keys: Vec<&String> = e.as_object().unwrap().keys().collect();
        keys.sort_unstable();
        assert_eq!(keys, ["at", "attempt", "detail", "kind"], "{e}");
        assert!(is_rfc3339_ms(&e["at"]), "{e}");
        assert!(e["attempt"].is_u64(), "{e}");
    }
    let ats: Vec<&str> = events.iter().map(|e| e["at"].as_str().unwrap()).collect();
    assert!(
        ats.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {ats:?}"
    );
    let attempts: Vec<u64> = events
        .iter()
        .map(|e| e["attempt"].as_u64().unwrap())
        .collect();
    assert!(attempts.windows(2).all(|w| w[0] <= w[1]), "{attempts:?}");
    assert_eq!(attempts.last(), Some(&2));
    assert!(
        events[2]["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "a retry says why: {h}"
    );
}

/// Ensures that `list` filters by status and by exact or glob name, honours `limit`, answers
/// newest first, and pages with `before` without overlap or gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_and_pages() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let failed = submit(&mut c, "builtin.fail_permanent", json!({})).await;
    let done = submit(&mut c, "builtin.noop", json!({})).await;
    finished(&mut c, &failed, WAIT).await;
    finished(&mut c, &done, WAIT).await;
    ok(&mut c, json!({"cmd": "pause", "pipeline": "builtin"})).await;
    let mut pending = Vec::new();
    for _ in 0..5 {
        pending.push(submit(&mut c, "builtin.noop", json!({})).await);
    }
    let mut all: Vec<String> = [failed.clone(), done.clone()]
        .into_iter()
        .chain(pending.iter().cloned())
        .collect();
    all.reverse(); // newest first
    let newest_pending: Vec<String> = pending.iter().rev().cloned().collect();

    let list = |filter: Value| {
        let mut r = json!({"cmd": "list"});
        r.as_object_mut()
            .unwrap()
            .extend(filter.as_object().unwrap().clone());
        r
    };
    let cases = [
        (json!({}), all.clone()),
        (json!({"status": "pending"}), newest_pending.clone()),
        (json!({"status": "failed"}), vec![failed.clone()]),
        (json!({"status": "succeeded"}), vec![done.clone()]),
        (json!({"status": "running"}), vec![]),
        (json!({"name": "builtin.*"}), all.clone()),
        (json!({"name": "builtin.fail*"}), vec![failed.clone()]),
        (
            json!({"name": "builtin.noop"}),
            all.iter().filter(|i| **i != failed).cloned().collect(),
        ),
        (json!({"name": "sec.*"}), vec![]),
        (json!({"limit": 2}), all[..2].to_vec()),
        (
            json!({"status": "pending", "name": "builtin.noop", "limit": 3}),
            newest_pending[..3].to_vec(),
        ),
    ];
    for (filter, want) in cases {
        let a = ok(&mut c, list(filter.clone())).await;
        assert_eq!(ids_of(&a, "jobs"), want, "list {filter}");
        for j in a["jobs"].as_array().unwrap() {
            assert!(
                j["status"].is_string() && j["created_at"].is_string(),
                "{j}"
            );
        }
    }

    // paging: three pages of at most 3, newest first, no overlap, nothing skipped
    let mut paged = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..4 {
        let mut r = json!({"cmd": "list", "limit": 3});
        if let Some(b) = &before {
            r["before"] = json!(b);
        }
        let page = ids_of(&ok(&mut c, r).await, "jobs");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        before = page.last().cloned();
        paged.extend(page);
    }
    assert_eq!(paged, all, "the pages, joined, are the whole list");
    let page = ids_of(
        &ok(
            &mut c,
            json!({"cmd": "list", "status": "pending", "before": newest_pending[1]}),
        )
        .await,
        "jobs",
    );
    assert_eq!(page, newest_pending[2..], "before combines with a filter");

    for (bad, field) in [
        (json!({"limit": 0}), "limit"),
        (json!({"limit": 1001}), "limit"),
        (json!({"limit": -1}), "limit"),
        (json!({"status": "done"}), "status"),
        (json!({"before": "yesterday"}), "before"),
        (json!({"name": "builtin.[z-a]"}), "name"),
    ] {
        let a = req(&mut c, list(bad.clone())).await;
        let m = error_of(&a, "bad_request");
        assert!(m.starts_with(&format!("{field}: ")), "list {bad}: {m}");
        still_serves(&mut c).await;
    }
    let a = ok(&mut c, json!({"cmd": "list", "limit": 1000})).await;
    assert_eq!(a["jobs"].as_array().unwrap().len(), 7);
}

/// Ensures that `cancel` cancels a queued job on a paused pipeline and a running
/// `builtin.sleep {ms: 60000}` (its worker then runs the next job at once), and that
/// cancelling a finished job is a `conflict`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_queued_and_running_jobs() {
    let node = TestNode::start_with(|a| a.pipelines[0].workers = 1).await;
    let mut c = node.client().await;

    ok(&mut c, json!({"cmd": "pause", "pipeline": "builtin"})).await;
    let queued = submit(&mut c, "builtin.noop", json!({})).await;
    let a = ok(&mut c, json!({"cmd": "cancel", "job_id": queued})).await;
    assert_eq!(a["job"]["job_id"], queued.as_str());
    assert_eq!(a["job"]["status"], "cancelled", "{a}");
    assert!(is_rfc3339_ms(&a["job"]["completed_at"]), "{a}");
    ok(&mut c, json!({"cmd": "resume", "pipeline": "builtin"})).await;
    assert_eq!(status(&mut c, &queued).await["status"], "cancelled");
    assert_eq!(status(&mut c, &queued).await["attempts"], 0, "it never ran");

    let started = Instant::now();
    let sleeper = submit(&mut c, "builtin.sleep", json!({"ms": 60000})).await;
    until_running(&mut c, &sleeper).await;
    let a = ok(&mut c, json!({"cmd": "cancel", "job_id": sleeper})).await;
    assert_eq!(a["job"]["status"], "cancelled", "{a}");
    let next = submit(&mut c, "builtin.noop", json!({})).await;
    let j = finished(&mut c, &next, WAIT).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the single worker was freed, not held for the 60 s sleep"
    );
    assert_eq!(status(&mut c, &sleeper).await["status"], "cancelled");
    let h = ok(&mut c, json!({"cmd": "history", "job_id": sleeper})).await;
    let kinds: Vec<&str> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.last(), Some(&"cancelled"), "{h}");
    poll(
        &mut c,
        "the worker to be idle",
        WAIT,
        json!({"cmd": "pipelines"}),
        |p| p["pipelines"][0]["workers"]["busy"] == 0,
    )
    .await;

    let a = req(&mut c, json!({"cmd": "cancel", "job_id": next})).await;
    let m = error_of(&a, "conflict");
    assert!(m.contains("succeeded"), "{m}");
    still_serves(&mut c).await;
}

/// Ensures that `retry` sends a failed job back to `pending` with its attempts reset (it then runs
/// from attempt 1 again), that a retried cancelled job runs and succeeds, and that retrying a
/// pending, running or succeeded job is a `conflict`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_and_cancelled_jobs() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    // fails once (`times: 1`) with no retries allowed: dead-lettered after one attempt
    let id = submit_with(
        &mut c,
        json!({"job": "builtin.fail", "params": {"times": 1}, "max_retries": 0}),
    )
    .await;
    let j = finished(&mut c, &id, WAIT).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert_eq!(j["attempts"], 1);

    ok(&mut c, json!({"cmd": "pause", "pipeline": "builtin"})).await;
    let a = ok(&mut c, json!({"cmd": "retry", "job_id": id})).await;
    assert_eq!(a["job"]["job_id"], id.as_str());
    assert_eq!(a["job"]["status"], "pending", "{a}");
    assert_eq!(a["job"]["attempts"], 0, "attempts reset: {a}");
    assert_eq!(a["job"]["error"], Value::Null, "{a}");
    assert_eq!(a["job"]["completed_at"], Value::Null, "{a}");
    let dlq = ok(&mut c, json!({"cmd": "dlq"})).await;
    assert!(ids_of(&dlq, "jobs").is_empty(), "out of the DLQ: {dlq}");
    assert_eq!(status(&mut c, &id).await["status"], "pending");
    ok(&mut c, json!({"cmd": "resume", "pipeline": "builtin"})).await;
    // With its attempts reset, the job's next attempt is attempt 1 again: the one that
    // `times: 1` fails. So it runs once more and is dead-lettered again after one attempt.
    let j = finished(&mut c, &id, WAIT).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert_eq!(j["attempts"], 1, "counted from the reset: {j}");
    let h = ok(&mut c, json!({"cmd": "history", "job_id": id})).await;
    let kinds: Vec<&str> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "submitted",
            "started",
            "dead_lettered",
            "retried",
            "started",
            "dead_lettered"
        ],
        "{h}"
    );

    // a cancelled job, retried, runs to success
    ok(&mut c, json!({"cmd": "pause", "pipeline": "builtin"})).await;
    let cancelled = submit(&mut c, "builtin.noop", json!({})).await;
    ok(&mut c, json!({"cmd": "cancel", "job_id": cancelled})).await;
    let a = ok(&mut c, json!({"cmd": "retry", "job_id": cancelled})).await;
    assert_eq!(a["job"]["status"], "pending", "{a}");
    let a = req(&mut c, json!({"cmd": "retry", "job_id": cancelled})).await;
    assert!(error_of(&a, "conflict").contains("pending"), "{a}");
    still_serves(&mut c).await;
    ok(&mut c, json!({"cmd": "resume", "pipeline": "builtin"})).await;
    let j = finished(&mut c, &cancelled, WAIT).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    assert_eq!(j["attempts"], 1, "{j}");

    let a = req(&mut c, json!({"cmd": "retry", "job_id": cancelled})).await;
    assert!(error_of(&a, "conflict").contains("succeeded"), "{a}");
    still_serves(&mut c).await;
    let sleeper = submit(&mut c, "builtin.sleep", json!({"ms": 60000})).await;
    until_running(&mut c, &sleeper).await;
    let a = req(&mut c, json!({"cmd": "retry", "job_id": sleeper})).await;
    assert!(error_of(&a, "conflict").contains("running"), "{a}");
    still_serves(&mut c).await;
    ok(&mut c, json!({"cmd": "cancel", "job_id": sleeper})).await;
}

/// Ensures that `dlq` lists exactly the failed jobs, newest first, and honours `limit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_lists_failed_jobs() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let a = ok(&mut c, json!({"cmd": "dlq"})).await;
    assert_eq!(a["jobs"], json!([]));
    let f1 = submit(&mut c, "builtin.fail_permanent", json!({})).await;
    let fine = submit(&mut c, "builtin.noop", json!({})).await;
    let f2 = submit(&mut c, "builtin.fail_permanent", json!({})).await;
    for id in [&f1, &fine, &f2] {
        finished(&mut c, id, WAIT).await;
    }
    let a = ok(&mut c, json!({"cmd": "dlq"})).await;
    assert_eq!(ids_of(&a, "jobs"), [f2.clone(), f1.clone()]);
    assert!(a["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|j| j["status"] == "failed" && j["error"].is_string()));
    let a = ok(&mut c, json!({"cmd": "dlq", "limit": 1})).await;
    assert_eq!(ids_of(&a, "jobs"), [f2]);
    let a = req(&mut c, json!({"cmd": "dlq", "limit": 0})).await;
    assert!(error_of(&a, "bad_request").starts_with("limit: "), "{a}");
    still_serves(&mut c).await;
}

/// Ensures that `tree` shows the live supervision tree, each node with `name`, `kind`, `status`,
/// `restarts` and `children`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_has_the_documented_shape() {
    fn check(n: &Value, count: &mut usize) {
        *count += 1;
        assert!(n["name"].is_string(), "{n}");
        assert!(n["kind"].is_string(), "{n}");
        assert!(n["status"].is_string(), "{n}");
        assert!(n["restarts"].is_u64(), "{n}");
        for child in n["children"].as_array().expect("children") {
            check(child, count);
        }
    }
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let a = ok(&mut c, json!({"cmd": "tree"})).await;
    let root = &a["tree"];
    assert_eq!(root["name"], "root");
    assert_eq!(root["status"], "running");
    let mut count = 0;
    check(root, &mut count);
    assert_eq!(
        count,
        1 + 3 + 4,
        "root, admin, dispatcher, pipeline, 4 workers"
    );
}

/// Ensures that `pipelines` gives each pipeline's name, paused flag, workers {total, busy}, queue
/// depths {high, normal, low}, rate_limit and breaker, and that the counts follow the jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_show_workers_and_queues() {
    let node = TestNode::start_with(|a| a.pipelines[0].workers = 2).await;
    let mut c = node.client().await;
    // Workers announce themselves to the dispatcher a moment after the node is up.
    let a = crate::support::poll(
        &mut c,
        "both workers",
        Duration::from_secs(10),
        json!({"cmd": "pipelines"}),
        |a| a["pipelines"][0]["workers"]["total"] == 2,
    )
    .await;
    let ps = a["pipelines"].as_array().unwrap();
    assert_eq!(ps.len(), 1, "{a}");
    let p = &ps[0];
    assert_eq!(p["name"], "builtin");
    assert_eq!(p["paused"], false);
    assert_eq!(p["workers"], json!({"total": 2, "busy": 0}));
    assert_eq!(p["queue"], json!({"high": 0, "normal": 0, "low": 0}));
    let o = p.as_object().unwrap();
    assert!(
        o.contains_key("rate_limit") && o.contains_key("breaker"),
        "{p}"
    );

    let sleeper = submit(&mut c, "builtin.sleep", json!({"ms": 60000})).await;
    until_running(&mut c, &sleeper).await;
    ok(&mut c, json!({"cmd": "pause", "pipeline": "builtin"})).await;
    for prio in ["high", "normal", "normal", "low"] {
        submit_with(&mut c, json!({"job": "builtin.noop", "priority": prio})).await;
    }
    let a = ok(&mut c, json!({"cmd": "pipelines"})).await;
    let p = &a["pipelines"][0];
    assert_eq!(p["paused"], true);
    assert_eq!(p["workers"], json!({"total": 2, "busy": 1}), "{p}");
    assert_eq!(p["queue"], json!({"high": 1, "normal": 2, "low": 1}), "{p}");
    ok(&mut c, json!({"cmd": "cancel", "job_id": sleeper})).await;
}

/// Ensures that `pause` keeps a pipeline's jobs waiting and `resume` starts them, both answering
/// the pipeline object, and that an unknown pipeline is `not_found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let a = ok(&mut c, json!({"cmd": "pause", "pipeline": "builtin"})).await;
    assert_eq!(a["pipeline"]["name"], "builtin");
    assert_eq!(a["pipeline"]["paused"], true);
    assert!(a["pipeline"]["workers"]["total"].is_u64(), "{a}");
    assert!(a["pipeline"]["queue"]["normal"].is_u64(), "{a}");
    let id = submit(&mut c, "builtin.noop", json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status(&mut c, &id).await["status"], "pending", "paused");
    let a = ok(&mut c, json!({"cmd": "resume", "pipeline": "builtin"})).await;
    assert_eq!(a["pipeline"]["paused"], false);
    assert_eq!(finished(&mut c, &id, WAIT).await["status"], "succeeded");

    for cmd in ["pause", "resume"] {
        let a = req(&mut c, json!({"cmd": cmd, "pipeline": "nope"})).await;
        let m = error_of(&a, "not_found");
        assert!(m.contains("\"nope\"") && m.contains("builtin"), "{m}");
        still_serves(&mut c).await;
        let a = req(&mut c, json!({"cmd": cmd})).await;
        assert!(error_of(&a, "bad_request").contains("pipeline"), "{a}");
        still_serves(&mut c).await;
    }
}

/// Ensures that `stats` gives unfinished counts by status, totals since start, queue depths per
/// pipeline and the uptime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_counts() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let a = ok(&mut c, json!({"cmd": "stats"})).await;
    assert_eq!(
        a["jobs"],
        json!({"pending": 0, "running": 0, "retrying": 0})
    );
    assert_eq!(a["totals"]["submitted"], 0);
    assert_eq!(
        a["queues"]["builtin"],
        json!({"high": 0, "normal": 0, "low": 0})
    );
    assert!(a["uptime_s"].is_u64(), "{a}");
    for job in ["builtin.noop", "builtin.noop", "builtin.fail_permanent"] {
        submit(&mut c, job, json!({})).await;
    }
    let s = poll(
        &mut c,
        "3 finished jobs",
        WAIT,
        json!({"cmd": "stats"}),
        |s| s["totals"]["succeeded"] == 2 && s["totals"]["failed"] == 1,
    )
    .await;
    assert_eq!(s["totals"]["submitted"], 3, "{s}");
    assert_eq!(
        s["jobs"],
        json!({"pending": 0, "running": 0, "retrying": 0})
    );
    ok(&mut c, json!({"cmd": "pause", "pipeline": "builtin"})).await;
    submit_with(&mut c, json!({"job": "builtin.noop", "priority": "high"})).await;
    let s = ok(&mut c, json!({"cmd": "stats"})).await;
    assert_eq!(s["jobs"]["pending"], 1, "{s}");
    assert_eq!(s["queues"]["builtin"]["high"], 1, "{s}");
}

/// Ensures that `records` answers an empty list (no pipeline writes records yet), honours
/// `prefix`/`after`, and checks `limit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_is_empty_and_checks_limit() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    for r in [
        json!({"cmd": "records"}),
        json!({"cmd": "records", "prefix": "sec/filings/1364954/", "limit": 1000}),
        json!({"cmd": "records", "after": "sec/", "limit": 1}),
    ] {
        let a = ok(&mut c, r).await;
        assert_eq!(a["records"], json!([]), "{a}");
    }
    for limit in [json!(0), json!(1001), json!("ten")] {
        let a = req(&mut c, json!({"cmd": "records", "limit": limit})).await;
        assert!(error_of(&a, "bad_request").starts_with("limit: "), "{a}");
        still_serves(&mut c).await;
    }
}

/// Ensures that `schedules` answers an empty list (no schedules exist yet), not
/// `unknown_command`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_is_empty() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let a = ok(&mut c, json!({"cmd": "schedules"})).await;
    assert_eq!(a["schedules"], json!([]));
}

/// Ensures that `shutdown` answers `draining: true` and the node then ends by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_and_ends_the_node() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let a = ok(&mut c, json!({"cmd": "shutdown", "id": 1})).await;
    assert_eq!(a["draining"], true, "{a}");
    assert_eq!(a["id"], 1);
    node.ended(WAIT).await.expect("a clean stop");
}

/// Ensures that `shutdown` with `drain: false` answers `draining: true` and ends the node without
/// waiting for a running job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_without_drain_does_not_wait() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let sleeper = submit(&mut c, "builtin.sleep", json!({"ms": 60000})).await;
    until_running(&mut c, &sleeper).await;
    let started = Instant::now();
    let a = ok(&mut c, json!({"cmd": "shutdown", "drain": false})).await;
    assert_eq!(a["draining"], true, "{a}");
    node.ended(WAIT).await.expect("a clean stop");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "ended after {:?}, as if it waited for the job",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Ensures that a line that is not JSON is a `bad_request` saying so, and the connection stays
/// usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_bad_request() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    for line in [
        &br#"{"cmd": "ping""#[..],
        b"ping",
        b"{'cmd': 'ping'}",
        b"{\"cmd\": \"ping\"} trailing",
    ] {
        let a = ask_raw(&mut c, line).await;
        let m = error_of(&a, "bad_request");
        assert!(m.contains("not valid JSON"), "{m}");
        still_serves(&mut c).await;
    }
    let a = ask_raw(&mut c, &[b'{', 0xff, 0xfe, b'}']).await;
    assert!(error_of(&a, "bad_request").contains("UTF-8"), "{a}");
    still_serves(&mut c).await;
}

/// Ensures that a JSON value that is not an object (an array, a string, a number) is a
/// `bad_request` naming what came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_array_is_bad_request() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    for (line, kind) in [
        (r#"[{"cmd": "ping"}]"#, "an array"),
        (r#""ping""#, "a string"),
        ("42", "a number"),
        ("null", "null"),
    ] {
        let a = ask_raw(&mut c, line.as_bytes()).await;
        let m = error_of(&a, "bad_request");
        assert!(m.contains("JSON object") && m.contains(kind), "{m}");
        assert!(a.get("id").is_none(), "{a}");
        still_serves(&mut c).await;
    }
}

/// Ensures that an unknown field is a `bad_request` naming it, on every kind of command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_field_is_bad_request() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    for (r, field) in [
        (json!({"cmd": "ping", "verbose": true}), "verbose"),
        (
            json!({"cmd": "submit", "job": "builtin.noop", "prio": "high"}),
            "prio",
        ),
        (json!({"cmd": "stats", "all": 1}), "all"),
        (json!({"cmd": "list", "state": "failed"}), "state"),
        (json!({"cmd": "shutdown", "now": true}), "now"),
    ] {
        let a = req(&mut c, r.clone()).await;
        let m = error_of(&a, "bad_request");
        assert!(m.contains(&format!("`{field}`")), "{r}: {m}");
        still_serves(&mut c).await;
    }
    assert!(all_ids(&mut c).await.is_empty(), "nothing was submitted");
}

/// Ensures that a mistyped field is a `bad_request` naming the field and what came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_type_is_bad_request() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    for (r, field, came) in [
        (
            json!({"cmd": "submit", "job": "builtin.noop", "max_retries": "three"}),
            "max_retries: ",
            "\"three\"",
        ),
        (
            json!({"cmd": "submit", "job": "builtin.noop", "params": 5}),
            "params: ",
            "a number",
        ),
        (json!({"cmd": "submit", "job": 5}), "job: ", "5"),
        (json!({"cmd": "submit_batch", "jobs": {}}), "jobs: ", "map"),
        (json!({"cmd": 7}), "cmd: ", "a number"),
        (json!({"cmd": "stats", "token": 7}), "token: ", "a number"),
        (
            json!({"cmd": "shutdown", "drain": "yes"}),
            "drain: ",
            "\"yes\"",
        ),
        (
            json!({"cmd": "status", "job_id": 12}),
            "job_id: ",
            "a number",
        ),
    ] {
        let a = req(&mut c, r.clone()).await;
        let m = error_of(&a, "bad_request");
        assert!(m.starts_with(field) && m.contains(came), "{r}: {m}");
        still_serves(&mut c).await;
    }
    let a = req(&mut c, json!({"id": 1})).await;
    assert!(
        error_of(&a, "bad_request").starts_with("cmd: missing"),
        "{a}"
    );
    assert_eq!(a["id"], 1);
    still_serves(&mut c).await;
    assert!(all_ids(&mut c).await.is_empty(), "nothing was submitted");
}

/// Ensures that an unknown command is `unknown_command`, naming it and the known ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_command_is_refused() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    for cmd in ["fly", "PING", "", "submit_workflow "] {
        let a = req(&mut c, json!({"cmd": cmd, "id": "x"})).await;
        let m = error_of(&a, "unknown_command");
        assert!(m.contains(&format!("{cmd:?}")) && m.contains("ping"), "{m}");
        assert_eq!(a["id"], "x");
        still_serves(&mut c).await;
    }
}

/// Ensures that a bad priority is a `bad_request` with exactly the documented message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_priority_message_is_exact() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let a = req(
        &mut c,
        json!({"cmd": "submit", "job": "builtin.noop", "priority": "urgent"}),
    )
    .await;
    assert_eq!(
        error_of(&a, "bad_request"),
        r#"priority: expected one of high, normal, low, got "urgent""#
    );
    still_serves(&mut c).await;
    let a = req(
        &mut c,
        json!({"cmd": "submit", "job": "builtin.noop", "priority": 1}),
    )
    .await;
    assert!(error_of(&a, "bad_request").starts_with("priority: "), "{a}");
    still_serves(&mut c).await;
    assert!(all_ids(&mut c).await.is_empty(), "nothing was submitted");
}

/// Ensures that a bad duration or time is a `bad_request` naming the field, and nothing is
/// submitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_duration_is_bad_request() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let a = req(
        &mut c,
        json!({"cmd": "submit", "job": "builtin.noop", "delay": "soon"}),
    )
    .await;
    assert_eq!(
        error_of(&a, "bad_request"),
        r#"delay: expected a duration like "30s" or "5m", got "soon""#
    );
    still_serves(&mut c).await;
    for (r, field) in [
        (
            json!({"cmd": "submit", "job": "builtin.noop", "run_at": "tomorrow"}),
            "run_at: ",
        ),
        (
            json!({"cmd": "submit", "job": "builtin.noop", "delay": "1s", "run_at": "2030-01-01T00:00:00Z"}),
            "delay, run_at: ",
        ),
        (
            json!({"cmd": "submit", "job": "builtin.noop", "delay": 30}),
            "delay: ",
        ),
    ] {
        let a = req(&mut c, r.clone()).await;
        assert!(error_of(&a, "bad_request").starts_with(field), "{r}: {a}");
        still_serves(&mut c).await;
    }
    assert!(all_ids(&mut c).await.is_empty(), "nothing was submitted");
}

/// Ensures that a delay or run_at past the year 9999 (or past what a millisecond clock holds) is
/// a `bad_request`, not a wrapped-around time that runs the job at once nor a dropped connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_delay_is_bad_request() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    for delay in [
        "18446744073709551615s",
        "9223371036854775s",
        "10000000000000000s",
        "100000y",
    ] {
        let r = json!({"cmd": "submit", "job": "builtin.noop", "delay": delay});
        let a = req(&mut c, r).await;
        let m = error_of(&a, "bad_request");
        assert!(
            m.starts_with("delay: ") && m.contains(&format!("{delay:?}")),
            "{m}"
        );
        still_serves(&mut c).await;
    }
    let r = json!({"cmd": "submit", "job": "builtin.noop", "run_at": "9999-12-31T23:59:59-01:00"});
    let a = req(&mut c, r).await;
    assert!(error_of(&a, "bad_request").starts_with("run_at: "), "{a}");
    still_serves(&mut c).await;
    assert!(all_ids(&mut c).await.is_empty(), "nothing was submitted");
    // a long but representable delay is fine: the job waits
    let id = submit_with(&mut c, json!({"job": "builtin.noop", "delay": "1000years"})).await;
    let j = status(&mut c, &id).await;
    assert_eq!(j["status"], "pending");
    assert!(
        j["next_attempt_at"].as_str().is_some_and(|t| t > "3000"),
        "{j}"
    );
}

/// Ensures that a job_id that is not a UUID is a `bad_request` on every command that takes one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uuid_is_bad_request() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    for cmd in ["status", "history", "cancel", "retry"] {
        let a = req(&mut c, json!({"cmd": cmd, "job_id": "nope"})).await;
        let m = error_of(&a, "bad_request");
        assert!(
            m.starts_with("job_id: expected a UUID") && m.contains("\"nope\""),
            "{m}"
        );
        still_serves(&mut c).await;
        let a = req(&mut c, json!({"cmd": cmd})).await;
        assert!(error_of(&a, "bad_request").contains("job_id"), "{a}");
        still_serves(&mut c).await;
    }
}

/// Ensures that a well-formed job_id that names no job is `not_found` on every command that
/// takes one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_job_id_is_not_found() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let ghost = uuid::Uuid::now_v7().to_string();
    for cmd in ["status", "history", "cancel", "retry"] {
        let a = req(&mut c, json!({"cmd": cmd, "job_id": ghost})).await;
        let m = error_of(&a, "not_found");
        assert!(m.contains(&ghost), "{cmd}: {m}");
        still_serves(&mut c).await;
    }
}

/// Ensures that a job name that matches no pipeline task is `unknown_job`, and nothing is
/// submitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_job_name_is_refused() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    for job in ["builtin.nothing", "sec.filings", "nodot"] {
        let a = req(&mut c, json!({"cmd": "submit", "job": job})).await;
        let m = error_of(&a, "unknown_job");
        assert!(m.contains(&format!("{job:?}")), "{m}");
        still_serves(&mut c).await;
    }
    let a = req(&mut c, json!({"cmd": "submit", "job": ""})).await;
    assert!(error_of(&a, "bad_request").starts_with("job: "), "{a}");
    still_serves(&mut c).await;
    assert!(all_ids(&mut c).await.is_empty(), "nothing was submitted");
}

/// Ensures that cancelling a finished job (succeeded, failed or cancelled) is a `conflict`
/// naming its state, and leaves it as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_finished_job_is_conflict() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let done = submit(&mut c, "builtin.noop", json!({})).await;
    let failed = submit(&mut c, "builtin.fail_permanent", json!({})).await;
    finished(&mut c, &done, WAIT).await;
    finished(&mut c, &failed, WAIT).await;
    ok(&mut c, json!({"cmd": "pause", "pipeline": "builtin"})).await;
    let cancelled = submit(&mut c, "builtin.noop", json!({})).await;
    ok(&mut c, json!({"cmd": "cancel", "job_id": cancelled})).await;
    for (id, state) in [
        (&done, "succeeded"),
        (&failed, "failed"),
        (&cancelled, "cancelled"),
    ] {
        let a = req(&mut c, json!({"cmd": "cancel", "job_id": id, "id": 9})).await;
        let m = error_of(&a, "conflict");
        assert!(m.contains(state), "{m}");
        assert_eq!(a["id"], 9);
        still_serves(&mut c).await;
        assert_eq!(status(&mut c, id).await["status"], state);
    }
}

/// Ensures that a 2 MiB line gets `too_large`, is not acted on, and the connection is then
/// closed (the next read is EOF).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mib_line_is_too_large_and_closes() {
    let node = TestNode::start().await;
    let stream = TcpStream::connect(node.addr()).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    // A valid submit, padded to 2 MiB: nothing of it may be acted on.
    let mut line = br#"{"cmd": "submit", "job": "builtin.noop", "params": {"pad": ""#.to_vec();
    line.resize(2 << 20, b'a');
    line.extend_from_slice(b"\"}}\n");
    // The node stops reading mid-line, so the write may fail; it runs on its own.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&line).await;
        wr
    });
    let mut rd = BufReader::new(rd);
    let mut got = String::new();
    timeout(READ, rd.read_line(&mut got))
        .await
        .expect("an answer in time")
        .expect("the too_large answer, not a reset");
    let a: Value = serde_json::from_str(&got).expect("a JSON line");
    let m = error_of(&a, "too_large");
    assert!(m.contains("max_line_bytes"), "{m}");
    got.clear();
    let n = timeout(READ, rd.read_line(&mut got))
        .await
        .expect("EOF in time")
        .expect("a clean EOF, not a reset");
    assert_eq!(n, 0, "closed after too_large, got {got:?}");
    let _ = writer.await;

    let mut c = node.client().await;
    still_serves(&mut c).await;
    assert!(
        all_ids(&mut c).await.is_empty(),
        "the line was not acted on"
    );
}

/// A connection that sent a whole `ping` and half of the next one in one write, and read the
/// first answer: it has a request in flight (the half is in the node's buffer).
async fn mid_request(node: &TestNode) -> BufReader<TcpStream> {
    let mut s = BufReader::new(TcpStream::connect(node.addr()).await.unwrap());
    let lines = b"{\"cmd\":\"ping\",\"id\":1}\n{\"cmd\":\"ping\",\"id\":";
    s.get_mut().write_all(lines).await.unwrap();
    let a = raw_answer(&mut s).await;
    assert_eq!(
        (a["ok"].clone(), a["id"].clone()),
        (json!(true), json!(1)),
        "{a}"
    );
    s
}

/// The next line read from a raw connection, as JSON.
async fn raw_answer(s: &mut BufReader<TcpStream>) -> Value {
    let mut line = String::new();
    let n = timeout(READ, s.read_line(&mut line))
        .await
        .expect("a line")
        .unwrap();
    assert!(n > 0, "EOF instead of an answer");
    serde_json::from_str(&line).unwrap()
}

/// Ensures that with `max_connections = 2`, both with a request in flight, a third connection
/// gets one `overloaded` line and is closed, and that the requests in flight are not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_answers_overloaded() {
    let node = TestNode::start_with(|a| a.admin.max_connections = 2).await;
    let mut c1 = mid_request(&node).await;
    let mut c2 = mid_request(&node).await;
    let mut c3 = node.client().await;
    let a = answer(&mut c3).await;
    let m = error_of(&a, "overloaded");
    assert!(m.contains("at most 2"), "{m}");
    assert!(a.get("id").is_none(), "{a}");
    closed_within(&mut c3, READ).await;
    // a client that sends its request at once (as `nc` or the CLI do) reads the same
    for _ in 0..20 {
        let mut c = node.client().await;
        c.send(&json!({"cmd": "ping", "id": 1})).await.unwrap();
        let a = answer(&mut c).await;
        error_of(&a, "overloaded");
        closed_within(&mut c, READ).await;
    }
    for c in [&mut c1, &mut c2] {
        c.get_mut().write_all(b"2}\n").await.unwrap();
        let a = raw_answer(c).await;
        assert_eq!(
            (a["ok"].clone(), a["id"].clone()),
            (json!(true), json!(2)),
            "{a}"
        );
    }
}

/// Ensures that idle connections cannot lock others out: with `max_connections = 2` taken by
/// idle connections, a new one is served and the longest-idle one is closed with an
/// `overloaded` line saying why; the other keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_make_room() {
    let node = TestNode::start_with(|a| a.admin.max_connections = 2).await;
    let mut c1 = node.client().await;
    still_serves(&mut c1).await;
    let mut c2 = node.client().await;
    still_serves(&mut c2).await;
    let mut c3 = node.client().await;
    still_serves(&mut c3).await;
    let a = answer(&mut c1).await;
    let m = error_of(&a, "overloaded");
    assert!(
        m.contains("make room") && m.contains("max_connections = 2"),
        "{m}"
    );
    closed_within(&mut c1, READ).await;
    // c3 is now the one idle the longest
    still_serves(&mut c2).await;
    let mut c4 = node.client().await;
    still_serves(&mut c4).await;
    error_of(&answer(&mut c3).await, "overloaded");
    closed_within(&mut c3, READ).await;
    still_serves(&mut c2).await;
}

/// Ensures that with a token set, `ping` needs none, any other command without it or with a
/// wrong one is `unauthorized` (and not acted on), and the right one works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_required_but_for_ping() {
    let node = TestNode::start_with(|a| a.admin.token = Some("s3cret".into())).await;
    let mut c = node.client().await;
    still_serves(&mut c).await;
    let a = ok(&mut c, json!({"cmd": "ping", "token": "wrong"})).await;
    assert_eq!(a["pong"], true);

    for (token, why) in [
        (None, "missing token"),
        (Some("wrong"), "wrong token"),
        (Some("s3cre"), "wrong token"),
        (Some("s3cret "), "wrong token"),
        (Some(""), "wrong token"),
    ] {
        for r in [
            json!({"cmd": "stats", "id": 3}),
            json!({"cmd": "submit", "job": "builtin.noop", "id": 3}),
            json!({"cmd": "shutdown", "id": 3}),
        ] {
            let mut r = r;
            if let Some(t) = token {
                r["token"] = json!(t);
            }
            let a = req(&mut c, r.clone()).await;
            let m = error_of(&a, "unauthorized");
            assert!(m.contains(why), "{r}: {m}");
            assert!(
                !m.contains("s3cret"),
                "the message never shows the token: {m}"
            );
            assert_eq!(a["id"], 3);
            still_serves(&mut c).await;
        }
    }
    let a = ok(&mut c, json!({"cmd": "stats", "token": "s3cret"})).await;
    assert_eq!(
        a["totals"]["submitted"], 0,
        "no unauthorized submit was acted on"
    );
    let a = ok(&mut c, json!({"cmd": "list", "token": "s3cret"})).await;
    assert_eq!(a["jobs"], json!([]));
    let a = ok(
        &mut c,
        json!({"cmd": "submit", "job": "builtin.noop", "token": "s3cret"}),
    )
    .await;
    assert_eq!(a["deduplicated"], false);
}

/// Ensures that a submit after a drain started is refused with `shutting_down`, on another
/// connection that stays usable, and the node then ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_while_draining_is_shutting_down() {
    let node = TestNode::start().await;
    let mut c1 = node.client().await;
    let mut c2 = node.client().await;
    let sleeper = submit(&mut c1, "builtin.sleep", json!({"ms": 2000})).await;
    until_running(&mut c1, &sleeper).await;
    let a = ok(&mut c1, json!({"cmd": "shutdown"})).await;
    assert_eq!(a["draining"], true);
    let a = poll(
        &mut c2,
        "the drain to start",
        Duration::from_secs(2),
        json!({"cmd": "submit", "job": "builtin.noop"}),
        |a| a["ok"] == false,
    )
    .await;
    let m = error_of(&a, "shutting_down");
    assert!(m.contains("draining"), "{m}");
    still_serves(&mut c2).await;
    let a = req(
        &mut c2,
        json!({"cmd": "submit_batch", "jobs": [{"job": "builtin.noop"}]}),
    )
    .await;
    error_of(&a, "shutting_down");
    node.ended(WAIT).await.expect("a clean stop");
}

// ---------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------

/// Ensures that `id` is echoed exactly (number, string, object, array, null), on successes and
/// errors alike, and is absent when the request had none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_is_echoed_exactly() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    for id in [
        json!(7),
        json!(-1),
        json!(1.5),
        json!(18446744073709551615u64),
        json!("abc"),
        json!(""),
        json!({"a": [1, {"b": null}], "c": "d"}),
        json!([1, "x"]),
        json!(true),
        Value::Null,
    ] {
        for cmd in ["ping", "fly"] {
            let a = req(&mut c, json!({"cmd": cmd, "id": id})).await;
            assert_eq!(a.get("id"), Some(&id), "{a}");
        }
        let a = req(&mut c, json!({"cmd": "status", "id": id, "job_id": "x"})).await;
        assert_eq!(a.get("id"), Some(&id), "{a}");
    }
    let a = req(&mut c, json!({"cmd": "ping"})).await;
    assert!(a.get("id").is_none(), "{a}");
    let a = req(&mut c, json!({"cmd": "fly"})).await;
    assert!(a.get("id").is_none(), "{a}");
    // byte for byte: the id's text comes back as it went
    let a = ask_raw(&mut c, br#"{"id":{"z":1,"a":[2,3]},"cmd":"ping"}"#).await;
    assert_eq!(a["id"], json!({"z": 1, "a": [2, 3]}));
}

/// Ensures that a blank line gets no answer: after `\n` (and whitespace-only lines) the first
/// answer is the following ping's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blank_line_gets_no_answer() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    c.send_raw(b"").await.unwrap();
    c.send_raw(b"   ").await.unwrap();
    c.send_raw(b"\r").await.unwrap();
    c.send_raw(b"\t ").await.unwrap();
    let a = req(&mut c, json!({"cmd": "ping", "id": "first"})).await;
    assert_eq!(a["id"], "first", "{a}");
    assert_eq!(a["ok"], true);
    c.send_raw(b"").await.unwrap();
    let a = req(&mut c, json!({"cmd": "ping", "id": "second"})).await;
    assert_eq!(a["id"], "second", "{a}");
}

/// Ensures that an answer is not held back behind what follows its request in the same write:
/// a blank line, or the first part of the next request (a client may wait for the answer before
/// it sends the rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_is_not_held_behind_a_partial_line() {
    let node = TestNode::start().await;
    let stream = TcpStream::connect(node.addr()).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let writes: [&[u8]; 4] = [
        b"{\"cmd\": \"ping\", \"id\": 1}\n\n",
        b"{\"cmd\": \"ping\", \"id\": 2}\r\n\r\n  \n",
        b"{\"cmd\": \"ping\", \"id\": 3}\n{\"cmd\": \"pi",
        b"ng\", \"id\": 4}\n",
    ];
    for (i, w) in writes.iter().enumerate() {
        wr.write_all(w).await.unwrap();
        let mut line = String::new();
        timeout(READ, rd.read_line(&mut line))
            .await
            .unwrap_or_else(|_| panic!("the answer to write {i} was held back"))
            .unwrap();
        let a: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(a["id"], i + 1, "{a}");
        assert_eq!(a["pong"], true, "{a}");
    }
}

/// Ensures that 100 requests sent in one write get 100 answers in order, errors included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_answer_in_order() {
    let node = TestNode::start().await;
    let stream = TcpStream::connect(node.addr()).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    let mut batch = Vec::new();
    for i in 0..100 {
        let r = match i % 5 {
            0 => json!({"id": i, "cmd": "ping"}),
            1 => json!({"id": i, "cmd": "submit", "job": "builtin.noop"}),
            2 => json!({"id": i, "cmd": "fly"}),
            3 => json!({"id": i, "cmd": "stats"}),
            _ => json!({"id": i, "cmd": "list", "limit": 1}),
        };
        batch.extend_from_slice(r.to_string().as_bytes());
        batch.push(b'\n');
    }
    wr.write_all(&batch).await.unwrap(); // one write
    let mut rd = BufReader::new(rd);
    let mut submitted = Vec::new();
    for i in 0..100 {
        let mut line = String::new();
        let n = timeout(READ, rd.read_line(&mut line))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed after {i} answers");
        let a: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(a["id"], i, "answers in request order: {a}");
        assert_eq!(a["ok"], i % 5 != 2, "{a}");
        if i % 5 == 1 {
            submitted.push(a["job_id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(submitted.len(), 20);
    let mut c = node.client().await;
    let mut listed = all_ids(&mut c).await;
    listed.reverse();
    assert_eq!(listed, submitted, "submitted in request order");
}

/// Ensures that a trailing `\r` (a CRLF line ending) is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_cr_is_accepted() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let a = ask_raw(&mut c, b"{\"cmd\": \"ping\", \"id\": 3}\r").await;
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(a["id"], 3);
    let a = ask_raw(
        &mut c,
        b"{\"cmd\": \"submit\", \"job\": \"builtin.noop\"}\r",
    )
    .await;
    assert_eq!(a["ok"], true, "{a}");
}

/// Ensures that a client that sends without ever reading is held back (the node stops reading
/// once its answers back up, so the client's writes stall instead of the node's memory growing),
/// and that such a connection is dropped after `idle_timeout`, freeing its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_is_held_back_and_dropped() {
    let node = TestNode::start_with(|a| {
        a.admin.max_connections = 1;
        a.admin.idle_timeout = Duration::from_millis(500);
    })
    .await;
    let stream = TcpStream::connect(node.addr()).await.unwrap();
    let (_rd, mut wr) = stream.into_split(); // never read
                                             // small requests with large answers (the whole tree)
    let line = format!("{}\n", json!({"cmd": "tree"}));
    let chunk = line.repeat(1000);
    let mut sent = 0usize;
    loop {
        match timeout(Duration::from_secs(2), wr.write_all(chunk.as_bytes())).await {
            // stalled (the node stopped reading) or dropped by the node: both bound its memory
            Err(_) | Ok(Err(_)) => break,
            Ok(Ok(())) => sent += chunk.len(),
        }
        assert!(
            sent < 256 << 20,
            "the node read {sent} bytes of requests whose answers nobody read"
        );
    }
    // Either way the node must let go of the connection and serve the next one.
    let mut c = eventually("the slot of the stuck client", WAIT, || async {
        let mut c = node.client().await;
        c.send(&json!({"cmd": "ping"})).await.ok()?;
        let a = timeout(READ, c.recv()).await.ok()?.ok()?;
        (a["ok"] == true).then_some(c)
    })
    .await;
    still_serves(&mut c).await;
    drop(wr);
}

/// Ensures that a connection idle for `idle_timeout` gets an `idle_timeout` error line naming the
/// timeout and is closed, and one in use is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_is_closed() {
    let node = TestNode::start_with(|a| a.admin.idle_timeout = Duration::from_millis(300)).await;
    let mut c = node.client().await;
    for _ in 0..6 {
        // in use for 6 x 100 ms, twice the timeout: stays open
        tokio::time::sleep(Duration::from_millis(100)).await;
        still_serves(&mut c).await;
    }
    let idle_since = Instant::now();
    let a = answer(&mut c).await;
    let waited = idle_since.elapsed();
    let m = error_of(&a, "idle_timeout");
    assert!(m.contains("idle_timeout = 300ms"), "{m}");
    closed_within(&mut c, Duration::from_secs(5)).await;
    assert!(
        waited >= Duration::from_millis(150),
        "closed after {waited:?}, before the timeout"
    );
    let mut fresh = node.client().await;
    still_serves(&mut fresh).await;
}

/// Ensures that `idle_timeout` counts from the last complete line: a line dribbled in a byte
/// at a time does not keep the connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dribbled_line_does_not_reset_the_idle_timeout() {
    let node = TestNode::start_with(|a| a.admin.idle_timeout = Duration::from_millis(300)).await;
    let (rd, mut wr) = TcpStream::connect(node.addr()).await.unwrap().into_split();
    let dribble = tokio::spawn(async move {
        for b in br#"{"cmd":"ping","id":"#.iter().cycle() {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let started = Instant::now();
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    timeout(READ, rd.read_line(&mut line))
        .await
        .expect("closed within the read bound")
        .unwrap();
    let a: Value = serde_json::from_str(&line).unwrap();
    error_of(&a, "idle_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    dribble.abort();
}

/// Ensures read-your-writes on one connection: a `status` pipelined right behind a `cancel` or a
/// `retry` sees the state that command answered (`cancelled`, then `pending`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_status_sees_cancel_and_retry() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    ok(&mut c, json!({"cmd": "pause", "pipeline": "builtin"})).await;
    let jobs: Vec<Value> = (0..1000).map(|_| json!({"job": "builtin.noop"})).collect();
    let a = ok(&mut c, json!({"cmd": "submit_batch", "jobs": jobs})).await;
    let mut stale = Vec::new();
    for id in ids_of(&a, "job_ids") {
        for r in [
            json!({"cmd": "cancel", "job_id": id}),
            json!({"cmd": "status", "job_id": id}),
            json!({"cmd": "retry", "job_id": id}),
            json!({"cmd": "status", "job_id": id}),
        ] {
            c.send(&r).await.unwrap();
        }
        let mut a = Vec::new();
        for _ in 0..4 {
            a.push(answer(&mut c).await);
        }
        assert_eq!(a[0]["job"]["status"], "cancelled", "{}", a[0]);
        assert_eq!(a[2]["job"]["status"], "pending", "{}", a[2]);
        for (i, want) in [(1, "cancelled"), (3, "pending")] {
            if a[i]["job"]["status"] != want {
                stale.push(format!(
                    "{want} answered, then read {}",
                    a[i]["job"]["status"]
                ));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "{} of 2000 reads were stale, e.g. {:?}",
        stale.len(),
        stale.first()
    );
}
