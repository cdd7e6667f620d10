//! One conformance suite over both job stores: every scenario is written once, as a function of
//! the [`Store`], and [`both_stores!`] makes one test per scenario and store
//! (`conformance::sled::<scenario>`, `conformance::postgres::<scenario>`), so a failure names
//! both. Each test starts a real node process, on its own journal or in cluster mode on a fresh
//! schema of the local PostgreSQL, and talks to it only through the admin port: what is compared
//! is the JSON a client sees. Answers are checked against one literal per scenario after
//! [`shape`] replaced what differs between any two runs (ids, times), so the two stores are held
//! to the same answer, not merely to similar ones.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use warden::client::Client;

use crate::pg::{self, Schema};
use crate::process::{spawn_node_with, NodeChild};
use crate::support::{code, finished, job_ids, poll, req, status, submit, until_running};

/// The variable the cluster config names in `url_env`.
const URL_ENV: &str = "WARDEN_TEST_CONFORMANCE_URL";

/// How long a job of these scenarios may take to finish (they take milliseconds).
const FINISH: Duration = Duration::from_secs(20);

/// Which store a node keeps its jobs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// The embedded sled journal, the default.
    Sled,
    /// Cluster mode: the shared PostgreSQL jobs table.
    Postgres,
}

/// A node process of one scenario, with the schema it owns in cluster mode.
struct StoreNode {
    data: PathBuf,
    child: Option<NodeChild>,
    schema: Option<Schema>,
    _dir: tempfile::TempDir,
}

impl StoreNode {
    /// Starts a node on `store` with 4 builtin workers and quick retries (50 ms, at most 3);
    /// `test` names its schema in cluster mode.
    async fn start(store: Store, test: &str) -> StoreNode {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let schema = match store {
            Store::Sled => None,
            Store::Postgres => Some(Schema::fresh(&format!("conf_{test}")).await),
        };
        let store_section = schema.as_ref().map_or(String::new(), |s| {
            format!(
                "[store]\nkind = \"postgres\"\nurl_env = {URL_ENV:?}\nschema = {:?}\nnode_id = \"node-0\"\n",
                s.name
            )
        });
        let config: PathBuf = dir.path().join("node.toml");
        let text = format!(
            "[node]\nname = \"conformance\"\ndata_dir = {data:?}\nshutdown_timeout = \"10s\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\n[console]\nenabled = false\n\
             [pipelines.builtin]\nworkers = 4\nretry = {{ max_retries = 3, base_delay = \"50ms\", max_delay = \"1s\" }}\n\
             {store_section}",
            data = data.display().to_string(),
        );
        std::fs::write(&config, text).unwrap();
        let url = pg::test_url();
        let child = spawn_node_with(&config, &[(URL_ENV, url.as_str())]);
        StoreNode {
            data,
            child: Some(child),
            schema,
            _dir: dir,
        }
    }

    /// A client, once the node answers; a node that exited instead fails the test with its
    /// stderr.
    async fn client(&mut self) -> Client {
        self.child.as_mut().unwrap().client(&self.data).await
    }

    /// Kills the node, then drops its schema (the node must not write to a dropped schema).
    async fn finish(mut self) {
        drop(self.child.take());
        if let Some(s) = self.schema.take() {
            s.drop_now().await;
        }
    }
}

/// A node on `store` for scenario `test`, and a client of it.
async fn node(store: Store, test: &str) -> (StoreNode, Client) {
    let mut n = StoreNode::start(store, test).await;
    let c = n.client().await;
    (n, c)
}

/// `v` with ids and times replaced by `"<id>"` and `"<time>"` (each checked to be one first),
/// recursively, so that two answers compare whole.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| (k.clone(), shape_field(k, v)))
            .collect(),
        Value::Array(a) => a.iter().map(shape).collect(),
        other => other.clone(),
    }
}

/// One field of [`shape`]: ids and times by their key, anything else recursively.
fn shape_field(key: &str, v: &Value) -> Value {
    if let (Some(ids), "job_ids") = (v.as_array(), key) {
        return ids.iter().map(|id| shape_field("job_id", id)).collect();
    }
    let Some(text) = v.as_str() else {
        return shape(v);
    };
    if matches!(key, "job_id" | "parent_id" | "workflow_id") {
        assert!(text.parse::<uuid::Uuid>().is_ok(), "{key}: {text}");
        return json!("<id>");
    }
    if key == "at" || key == "eta" || key.ends_with("_at") {
        assert!(
            chrono::DateTime::parse_from_rfc3339(text).is_ok(),
            "{key}: {text}"
        );
        return json!("<time>");
    }
    v.clone()
}

/// The job object every scenario starts from: a `builtin.noop` just submitted, shaped.
fn pending_noop() -> Value {
    json!({
        "attempts": 0, "completed_at": null, "created_at": "<time>", "error": null,
        "job_id": "<id>", "max_retries": 3, "name": "builtin.noop", "next_attempt_at": null,
        "params": {}, "parent_id": null, "priority": "normal", "result": null,
        "started_at": null, "status": "pending", "unique_key": null, "workflow_id": null
    })
}

/// `base` with the fields of `changes` set.
fn with(base: Value, changes: Value) -> Value {
    let mut v = base;
    for (k, x) in changes.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// The `history` of `id`, its times checked to be in order, then shaped.
async fn history(c: &mut Client, id: &str) -> Value {
    let a = req(c, json!({"cmd": "history", "job_id": id})).await;
    assert_eq!(a["ok"], true, "{a}");
    let times: Vec<_> = a["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| chrono::DateTime::parse_from_rfc3339(e["at"].as_str().unwrap()).unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{a}");
    shape(&a["events"])
}

/// A history event, shaped.
fn event(kind: &str, attempt: u32, detail: Value) -> Value {
    json!({"at": "<time>", "kind": kind, "attempt": attempt, "detail": detail})
}

/// The detail of a `started` event: none on a single node; in cluster mode the node that
/// claimed the attempt (docs/protocol.md, `history`).
fn started(store: Store) -> Value {
    match store {
        Store::Sled => Value::Null,
        Store::Postgres => json!("node-0"),
    }
}

/// The event kinds of a shaped history.
fn kinds(events: &Value) -> Vec<&str> {
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect()
}

/// Ensures that a submitted `builtin.noop` runs to `succeeded`, its job object and its history
/// (submitted, started, succeeded, in order) the same in both stores.
async fn submit_runs_to_success_with_history_in_order(store: Store) {
    let (n, mut c) = node(store, "success").await;
    let a = req(&mut c, json!({"cmd": "submit", "job": "builtin.noop"})).await;
    assert_eq!(
        shape(&a),
        json!({"ok": true, "job_id": "<id>", "deduplicated": false})
    );
    let id = a["job_id"].as_str().unwrap();
    let done = finished(&mut c, id, FINISH).await;
    let want = with(
        pending_noop(),
        json!({"status": "succeeded", "attempts": 1, "started_at": "<time>", "completed_at": "<time>"}),
    );
    assert_eq!(shape(&done), want, "{done}");
    assert_eq!(done["job_id"], id);
    let events = history(&mut c, id).await;
    let want = json!([
        event("submitted", 0, Value::Null),
        event("started", 1, started(store)),
        event("succeeded", 1, Value::Null),
    ]);
    assert_eq!(events, want);
    n.finish().await;
}

/// Ensures that `submit_batch` answers the ids in the order of its jobs, each job as it was
/// asked (name, params, priority), and that one bad job refuses the whole batch naming it.
async fn submit_batch_answers_ids_in_order(store: Store) {
    let (n, mut c) = node(store, "batch").await;
    let batch = json!({"cmd": "submit_batch", "jobs": [
        {"job": "builtin.noop"},
        {"job": "builtin.sleep", "params": {"ms": 1}, "priority": "low"},
        {"job": "builtin.noop", "priority": "high", "max_retries": 0},
    ]});
    let a = req(&mut c, batch).await;
    assert_eq!(
        shape(&a),
        json!({"ok": true, "job_ids": ["<id>", "<id>", "<id>"]})
    );
    let ids = job_ids(&a);
    let mut seen = Vec::new();
    for id in &ids {
        let j = finished(&mut c, id, FINISH).await;
        assert_eq!(j["job_id"], json!(id));
        seen.push(json!([
            j["name"],
            j["params"],
            j["priority"],
            j["max_retries"],
            j["result"]
        ]));
    }
    let want = json!([
        ["builtin.noop", {}, "normal", 3, null],
        ["builtin.sleep", {"ms": 1}, "low", 3, {"slept_ms": 1}],
        ["builtin.noop", {}, "high", 0, null],
    ]);
    assert_eq!(json!(seen), want);
    let bad = json!({"cmd": "submit_batch", "jobs": [
        {"job": "builtin.noop"}, {"job": "builtin.noop", "priority": "urgent"},
    ]});
    let refused = req(&mut c, bad).await;
    assert_eq!(code(&refused), "bad_request");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("jobs[1].priority"), "{refused}");
    let listed = req(&mut c, json!({"cmd": "list"})).await;
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 3, "{listed}");
    n.finish().await;
}

/// Ensures that a second submit with the `unique_key` of an unfinished job answers the first
/// job's id, `deduplicated: true`, also within one batch, and that a finished job's key no
/// longer dedups.
async fn unique_key_answers_the_first_jobs_id(store: Store) {
    let (n, mut c) = node(store, "unique").await;
    let ask = json!({"cmd": "submit", "job": "builtin.noop", "unique_key": "k1", "delay": "1h"});
    let first = req(&mut c, ask.clone()).await;
    assert_eq!(
        shape(&first),
        json!({"ok": true, "job_id": "<id>", "deduplicated": false})
    );
    let again = req(&mut c, ask.clone()).await;
    let want = json!({"ok": true, "job_id": first["job_id"], "deduplicated": true});
    assert_eq!(again, want);
    let held = json!({"job": "builtin.noop", "unique_key": "k2", "delay": "1h"});
    let batch = json!({"cmd": "submit_batch", "jobs": [
        held, held, {"job": "builtin.noop", "unique_key": "k1"},
    ]});
    let ids = job_ids(&req(&mut c, batch).await);
    assert_eq!(ids[0], ids[1], "a key repeated inside one batch");
    assert_eq!(json!(ids[2]), first["job_id"]);
    let cancel = json!({"cmd": "cancel", "job_id": first["job_id"]});
    assert_eq!(req(&mut c, cancel).await["ok"], true);
    let fresh = req(&mut c, ask).await;
    assert_eq!(fresh["deduplicated"], false, "{fresh}");
    assert_ne!(fresh["job_id"], first["job_id"]);
    let listed = req(&mut c, json!({"cmd": "list"})).await;
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 3, "{listed}");
    n.finish().await;
}

/// Ensures that a permanent failure ends `failed` after one attempt and shows in `dlq`, that
/// `retry` brings it back to `pending` with its attempts reset and its error cleared (it then
/// fails again), and that `retry` of a succeeded job and `cancel` of a finished one are
/// `conflict`s.
async fn a_permanent_failure_is_dead_lettered_and_retry_brings_it_back(store: Store) {
    let (n, mut c) = node(store, "dlq").await;
    let id = submit(&mut c, "builtin.fail_permanent", json!({})).await;
    let dead = finished(&mut c, &id, FINISH).await;
    let failed = with(
        pending_noop(),
        json!({"name": "builtin.fail_permanent", "status": "failed", "attempts": 1,
               "started_at": "<time>", "completed_at": "<time>",
               "error": "builtin.fail_permanent: fails on purpose"}),
    );
    assert_eq!(shape(&dead), failed, "{dead}");
    let dlq = req(&mut c, json!({"cmd": "dlq", "limit": 10})).await;
    assert_eq!(shape(&dlq), json!({"ok": true, "jobs": [failed]}));
    let back = req(&mut c, json!({"cmd": "retry", "job_id": id})).await;
    let pending = with(
        pending_noop(),
        json!({"name": "builtin.fail_permanent", "started_at": "<time>"}),
    );
    assert_eq!(shape(&back), json!({"ok": true, "job": pending}));
    poll(
        &mut c,
        "the retried job to fail again",
        FINISH,
        json!({"cmd": "status", "job_id": id}),
        |a| a["job"]["status"] == "failed",
    )
    .await;
    let events = history(&mut c, &id).await;
    let want = [
        "submitted",
        "started",
        "dead_lettered",
        "retried",
        "started",
        "dead_lettered",
    ];
    assert_eq!(kinds(&events), want, "{events}");
    let ok = submit(&mut c, "builtin.noop", json!({})).await;
    finished(&mut c, &ok, FINISH).await;
    let retry = req(&mut c, json!({"cmd": "retry", "job_id": ok})).await;
    assert_eq!(code(&retry), "conflict");
    let cancel = req(&mut c, json!({"cmd": "cancel", "job_id": ok})).await;
    assert_eq!(code(&cancel), "conflict");
    n.finish().await;
}

/// Ensures that a transient failure is retried up to `max_retries` and then dead-lettered, each
/// attempt's error in the history, and that one that stops failing in time succeeds.
async fn a_transient_failure_is_retried_then_dead(store: Store) {
    let (n, mut c) = node(store, "transient").await;
    let ask =
        json!({"cmd": "submit", "job": "builtin.fail", "params": {"times": 5}, "max_retries": 2});
    let id = req(&mut c, ask).await["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let dead = finished(&mut c, &id, FINISH).await;
    let gave_up =
        "builtin.fail: attempt 3 of the 5 that fail on purpose (gave up after 3 attempts)";
    let want = with(
        pending_noop(),
        json!({"name": "builtin.fail", "params": {"times": 5}, "max_retries": 2,
               "status": "failed", "attempts": 3, "started_at": "<time>",
               "completed_at": "<time>", "error": gave_up}),
    );
    assert_eq!(shape(&dead), want, "{dead}");
    let attempt = |i: u32| {
        json!(format!(
            "builtin.fail: attempt {i} of the 5 that fail on purpose"
        ))
    };
    let want = json!([
        event("submitted", 0, Value::Null),
        event("started", 1, started(store)),
        event("retrying", 1, attempt(1)),
        event("started", 2, started(store)),
        event("retrying", 2, attempt(2)),
        event("started", 3, started(store)),
        event("dead_lettered", 3, json!(gave_up)),
    ]);
    assert_eq!(history(&mut c, &id).await, want);
    let once = req(
        &mut c,
        json!({"cmd": "submit", "job": "builtin.fail", "params": {"times": 1}}),
    )
    .await;
    let healed = finished(&mut c, once["job_id"].as_str().unwrap(), FINISH).await;
    assert_eq!(
        json!([healed["status"], healed["attempts"], healed["error"]]),
        json!(["succeeded", 2, null]),
        "{healed}"
    );
    n.finish().await;
}

/// Ensures that a pending job (delayed, or queued behind a paused pipeline) is cancelled at
/// once, `cancelled` with its history ending in `cancelled`, and that it stays so after a
/// resume; a second cancel is a `conflict`.
async fn cancel_of_a_pending_job(store: Store) {
    let (n, mut c) = node(store, "cancel").await;
    let ask = json!({"cmd": "submit", "job": "builtin.noop", "delay": "1h"});
    let delayed = req(&mut c, ask).await["job_id"].clone();
    let s = status(&mut c, delayed.as_str().unwrap()).await;
    let want = with(pending_noop(), json!({"next_attempt_at": "<time>"}));
    assert_eq!(shape(&s), want, "{s}");
    let a = req(&mut c, json!({"cmd": "cancel", "job_id": delayed})).await;
    let cancelled = with(
        pending_noop(),
        json!({"status": "cancelled", "completed_at": "<time>"}),
    );
    assert_eq!(shape(&a), json!({"ok": true, "job": cancelled}));
    let events = history(&mut c, delayed.as_str().unwrap()).await;
    assert_eq!(kinds(&events), ["submitted", "cancelled"], "{events}");
    let again = req(&mut c, json!({"cmd": "cancel", "job_id": delayed})).await;
    assert_eq!(code(&again), "conflict");

    req(&mut c, json!({"cmd": "pause", "pipeline": "builtin"})).await;
    let queued = submit(&mut c, "builtin.noop", json!({})).await;
    let a = req(&mut c, json!({"cmd": "cancel", "job_id": queued})).await;
    assert_eq!(shape(&a), json!({"ok": true, "job": cancelled}));
    req(&mut c, json!({"cmd": "resume", "pipeline": "builtin"})).await;
    // A noop submitted after the resume has run once the workers took new work.
    let after = submit(&mut c, "builtin.noop", json!({})).await;
    finished(&mut c, &after, FINISH).await;
    assert_eq!(status(&mut c, &queued).await["status"], "cancelled");
    n.finish().await;
}

/// The `pipelines` object of `builtin` with `paused` and `normal` jobs queued, as both stores
/// answer it.
fn builtin_view(paused: bool, normal: usize) -> Value {
    json!({"breaker": null, "name": "builtin", "paused": paused,
           "queue": {"high": 0, "low": 0, "normal": normal}, "rate_limit": null,
           "scheduled": 0, "workers": {"busy": 0, "total": 4}})
}

/// Waits until `pipelines` answers `builtin` alone, as `view` (its workers register with the
/// dispatcher after the admin port answers, and cluster counts follow the heartbeat).
async fn pipelines_until(c: &mut Client, view: Value) {
    let want = json!({"ok": true, "pipelines": [view]});
    let what = format!("pipelines to answer {want}");
    poll(c, &what, FINISH, json!({"cmd": "pipelines"}), |a| {
        *a == want
    })
    .await;
}

/// Ensures that `pause` holds a pipeline's jobs in its queue, `pipelines` showing it paused with
/// its queue, and `resume` lets them run; an unknown pipeline is `not_found`.
async fn pause_and_resume_show_in_pipelines(store: Store) {
    let (n, mut c) = node(store, "pause").await;
    pipelines_until(&mut c, builtin_view(false, 0)).await;
    let a = req(&mut c, json!({"cmd": "pause", "pipeline": "builtin"})).await;
    assert_eq!(a, json!({"ok": true, "pipeline": builtin_view(true, 0)}));
    let batch =
        json!({"cmd": "submit_batch", "jobs": [{"job": "builtin.noop"}, {"job": "builtin.noop"}]});
    let ids = job_ids(&req(&mut c, batch).await);
    pipelines_until(&mut c, builtin_view(true, 2)).await;
    assert_eq!(status(&mut c, &ids[0]).await["status"], "pending");
    let a = req(&mut c, json!({"cmd": "resume", "pipeline": "builtin"})).await;
    assert_eq!(a["pipeline"]["paused"], false, "{a}");
    for id in &ids {
        assert_eq!(finished(&mut c, id, FINISH).await["status"], "succeeded");
    }
    pipelines_until(&mut c, builtin_view(false, 0)).await;
    let a = req(&mut c, json!({"cmd": "pause", "pipeline": "sec"})).await;
    assert_eq!(code(&a), "not_found");
    n.finish().await;
}

/// Ensures that `why` names the pause for a job queued behind a paused pipeline, and nothing
/// for a finished job.
async fn why_names_the_pause(store: Store) {
    let (n, mut c) = node(store, "why").await;
    req(&mut c, json!({"cmd": "pause", "pipeline": "builtin"})).await;
    let id = submit(&mut c, "builtin.noop", json!({})).await;
    let a = req(&mut c, json!({"cmd": "why", "job_id": id})).await;
    assert_eq!(
        json!([a["ok"], a["blocker"]["kind"], a["blocker"]["eta"]]),
        json!([true, "paused", null]),
        "{a}"
    );
    assert!(
        a["blocker"]["detail"]
            .as_str()
            .unwrap()
            .contains("`resume`"),
        "{a}"
    );
    req(&mut c, json!({"cmd": "resume", "pipeline": "builtin"})).await;
    finished(&mut c, &id, FINISH).await;
    let a = req(&mut c, json!({"cmd": "why", "job_id": id})).await;
    assert_eq!(a["blocker"]["kind"], "none", "{a}");
    n.finish().await;
}

/// The ids of a `list` or `dlq` answer, in its order.
fn listed(a: &Value) -> Vec<String> {
    a["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no jobs in {a}"))
        .iter()
        .map(|j| j["job_id"].as_str().unwrap().to_string())
        .collect()
}

/// Ensures that `list` filters by status and by name (exact, a `*` glob, a `{a,b}` glob), pages
/// with `limit` and `before`, newest first, and refuses a limit out of range.
async fn list_filters_newest_first(store: Store) {
    let (n, mut c) = node(store, "list").await;
    let batch = json!({"cmd": "submit_batch", "jobs": [
        {"job": "builtin.noop"}, {"job": "builtin.noop"}, {"job": "builtin.sleep", "params": {"ms": 1}},
        {"job": "builtin.noop"}, {"job": "builtin.fail_permanent"},
    ]});
    let ids = job_ids(&req(&mut c, batch).await);
    for id in &ids {
        finished(&mut c, id, FINISH).await;
    }
    let pick = |at: &[usize]| at.iter().map(|i| ids[*i].clone()).collect::<Vec<_>>();
    let cases = [
        (
            json!({"status": "succeeded", "name": "builtin.noop", "limit": 2}),
            pick(&[3, 1]),
        ),
        (json!({"name": "builtin.*"}), pick(&[4, 3, 2, 1, 0])),
        (json!({"name": "builtin.s*"}), pick(&[2])),
        (
            json!({"name": "builtin.{sleep,fail_permanent}"}),
            pick(&[4, 2]),
        ),
        (json!({"status": "failed"}), pick(&[4])),
        (json!({"before": ids[3], "limit": 2}), pick(&[2, 1])),
        (json!({"status": "running"}), vec![]),
    ];
    for (filter, want) in cases {
        let mut ask = filter.clone();
        ask["cmd"] = json!("list");
        let a = req(&mut c, ask).await;
        assert_eq!(listed(&a), want, "list {filter}: {a}");
    }
    let a = req(&mut c, json!({"cmd": "list", "limit": 5000})).await;
    assert_eq!(code(&a), "bad_request");
    n.finish().await;
}

/// Waits until `stats` counts `jobs` unfinished and returns that answer.
async fn stats_until(c: &mut Client, jobs: Value) -> Value {
    poll(
        c,
        &format!("stats to count {jobs}"),
        FINISH,
        json!({"cmd": "stats"}),
        |a| a["jobs"] == jobs,
    )
    .await
}

/// Ensures that `stats` counts unfinished jobs by status and queue, and the transitions since
/// the node started, the same way in both stores.
async fn stats_counts(store: Store) {
    let (n, mut c) = node(store, "stats").await;
    let zero = json!({"pending": 0, "running": 0, "retrying": 0});
    let a = stats_until(&mut c, zero.clone()).await;
    let keys: Vec<&String> = a.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["jobs", "journal", "ok", "queues", "totals", "uptime_s"],
        "{a}"
    );
    let long = submit(&mut c, "builtin.sleep", json!({"ms": 60000})).await;
    until_running(&mut c, &long).await;
    let batch = json!({"cmd": "submit_batch", "jobs": [
        {"job": "builtin.noop", "delay": "1h"}, {"job": "builtin.noop", "delay": "1h", "priority": "low"},
    ]});
    let delayed = job_ids(&req(&mut c, batch).await);
    let a = stats_until(&mut c, json!({"pending": 2, "running": 1, "retrying": 0})).await;
    assert_eq!(
        a["queues"],
        json!({"builtin": {"high": 0, "normal": 0, "low": 0}}),
        "{a}"
    );
    // Delayed jobs are scheduled, not queued; the sleeping one keeps a worker busy.
    let mut view = builtin_view(false, 0);
    view["scheduled"] = json!(2);
    view["workers"]["busy"] = json!(1);
    pipelines_until(&mut c, view).await;
    for id in delayed.iter().chain([&long]) {
        let a = req(&mut c, json!({"cmd": "cancel", "job_id": id})).await;
        assert_eq!(a["ok"], true, "{a}");
    }
    for job in ["builtin.noop", "builtin.fail_permanent"] {
        let id = submit(&mut c, job, json!({})).await;
        finished(&mut c, &id, FINISH).await;
    }
    let a = stats_until(&mut c, zero).await;
    let totals = json!({"submitted": 5, "succeeded": 1, "failed": 1, "retried": 0,
                        "cancelled": 3, "requeued": 0});
    assert_eq!(a["totals"], totals, "{a}");
    n.finish().await;
}

/// Ensures that an unknown job name is `unknown_job` (alone or inside a batch, naming
/// `jobs[i]`) and an unknown job id `not_found` for every command that takes one; nothing is
/// accepted.
async fn unknown_names_and_ids_carry_the_same_codes(store: Store) {
    let (n, mut c) = node(store, "unknown").await;
    for job in ["builtin.nope", "nosuch.job"] {
        let a = req(&mut c, json!({"cmd": "submit", "job": job})).await;
        assert_eq!(code(&a), "unknown_job", "{job}");
    }
    let batch =
        json!({"cmd": "submit_batch", "jobs": [{"job": "builtin.noop"}, {"job": "builtin.nope"}]});
    let a = req(&mut c, batch).await;
    assert_eq!(code(&a), "unknown_job");
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("jobs[1]"),
        "{a}"
    );
    let nobody = "01a227e2-0000-7000-8000-000000000000";
    for cmd in ["status", "history", "cancel", "retry", "why"] {
        let a = req(&mut c, json!({"cmd": cmd, "job_id": nobody})).await;
        assert_eq!(code(&a), "not_found", "{cmd}: {a}");
    }
    let a = req(&mut c, json!({"cmd": "list"})).await;
    assert_eq!(a, json!({"ok": true, "jobs": []}));
    n.finish().await;
}

/// Ensures that workflows behave the same in both modes: a chain runs its steps in turn, the
/// second on the first's result as `params.input`; a group's `then` runs after its members (one
/// failed, `allow_failures`) on `params.results` with the error in place; `workflow` answers
/// the same shape. And that `nodes` says whether the node runs in a cluster.
async fn workflows_and_nodes(store: Store) {
    let (n, mut c) = node(store, "workflows").await;
    let noop = json!({"job": "builtin.noop"});
    let chain = json!({"cmd": "submit_workflow", "kind": "chain", "jobs": [noop, noop]});
    let a = req(&mut c, chain).await;
    assert_eq!(
        shape(&a),
        json!({"ok": true, "workflow_id": "<id>", "job_ids": ["<id>", "<id>"]})
    );
    let done = workflow_done(&mut c, &a["workflow_id"]).await;
    assert_eq!(done["kind"], "chain", "{done}");
    assert_eq!(done["jobs"][1]["params"], json!({"input": null}), "{done}");
    let group = json!({"cmd": "submit_workflow", "kind": "group",
        "jobs": [noop, {"job": "builtin.fail_permanent"}], "then": noop, "allow_failures": true});
    let a = req(&mut c, group).await;
    assert_eq!(a["ok"], true, "{a}");
    let done = workflow_done(&mut c, &a["workflow_id"]).await;
    let results = &done["jobs"][2]["params"]["results"];
    assert_eq!(results[0], Value::Null, "{done}");
    assert!(results[1]["error"].is_string(), "{done}");
    let nodes = req(&mut c, json!({"cmd": "nodes"})).await;
    assert_eq!(nodes["cluster"], store == Store::Postgres, "{nodes}");
    n.finish().await;
}

/// The `workflow` answer once every job of workflow `id` ended, its status `succeeded` or
/// `failed`.
async fn workflow_done(c: &mut Client, id: &Value) -> Value {
    let ended = |w: &Value| {
        matches!(
            w["workflow"]["status"].as_str(),
            Some("succeeded" | "failed")
        )
    };
    let q = json!({"cmd": "workflow", "workflow_id": id});
    poll(c, "the workflow to end", FINISH, q, ended).await["workflow"].clone()
}

/// The scenarios, each a test per store.
macro_rules! both_stores {
    ($($scenario:ident),* $(,)?) => {
        /// The scenarios on the node's own sled journal (the default store).
        mod sled {
            $(
                /// Ensures that the scenario of this name holds on the sled journal.
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Store::Sled).await
                }
            )*
        }
        /// The scenarios in cluster mode, on the shared PostgreSQL jobs table.
        mod postgres {
            $(
                /// Ensures that the scenario of this name holds in cluster mode.
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Store::Postgres).await
                }
            )*
        }
    };
}

both_stores!(
    submit_runs_to_success_with_history_in_order,
    submit_batch_answers_ids_in_order,
    unique_key_answers_the_first_jobs_id,
    a_permanent_failure_is_dead_lettered_and_retry_brings_it_back,
    a_transient_failure_is_retried_then_dead,
    cancel_of_a_pending_job,
    pause_and_resume_show_in_pipelines,
    why_names_the_pause,
    list_filters_newest_first,
    stats_counts,
    unknown_names_and_ids_carry_the_same_codes,
    workflows_and_nodes,
);
