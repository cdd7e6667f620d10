//! Time limits and worker recycling: a job past its hard limit is aborted, counted as a
//! transient timeout and retried on a new worker; a job past its soft limit is told and may
//! finish; a worker is replaced after `max_jobs_per_worker` jobs without losing any.

use std::time::Duration;

use serde_json::{json, Value};
use warden_actors::args::TimeLimits;

use crate::support::{builtin_workers, finished, poll, req, submit, TestNode};

const WAIT: Duration = Duration::from_secs(30);

fn worker(tree: &Value, name: &str) -> Value {
    let workers = builtin_workers(&tree["tree"]);
    workers
        .into_iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {tree}"))
}

/// Ensures that a `builtin.sleep` past its hard limit is aborted, counted as a transient
/// `timeout` (retried while retries last, then dead-lettered), and that its worker is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_limit_aborts_retries_and_replaces_the_worker() {
    let node = TestNode::start_with(|a| {
        a.pipelines[0].workers = 1;
        a.pipelines[0].task_limits.insert(
            "builtin.sleep".into(),
            TimeLimits {
                soft: None,
                hard: Some(Duration::from_millis(200)),
            },
        );
    })
    .await;
    let mut c = node.client().await;
    let a = req(
        &mut c,
        json!({"cmd": "submit", "job": "builtin.sleep", "params": {"ms": 5000}, "max_retries": 1}),
    )
    .await;
    let id = a["job_id"].as_str().unwrap().to_string();
    let j = finished(&mut c, &id, WAIT).await;
    assert_eq!(
        (j["status"].as_str(), j["attempts"].as_u64()),
        (Some("failed"), Some(2)),
        "{j}"
    );
    assert!(
        j["error"].as_str().unwrap().contains("time limit of 200ms"),
        "{j}"
    );
    let h = req(&mut c, json!({"cmd": "history", "job_id": id})).await;
    let retrying = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "retrying")
        .count();
    assert_eq!(retrying, 1, "{h}");
    let t = poll(
        &mut c,
        "the replaced worker",
        WAIT,
        json!({"cmd": "tree"}),
        |t| worker(t, "worker-1")["status"] == "running",
    )
    .await;
    assert_eq!(
        worker(&t, "worker-1")["restarts"],
        2,
        "one replacement per aborted attempt: {t}"
    );
    // The replacement works.
    let ok = submit(&mut c, "builtin.noop", json!({})).await;
    assert_eq!(finished(&mut c, &ok, WAIT).await["status"], "succeeded");
}

/// Ensures that a job past its soft limit is told and may finish on its own terms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_limit_tells_the_job() {
    let node = TestNode::start_with(|a| {
        a.pipelines[0].limits = TimeLimits {
            soft: Some(Duration::from_millis(150)),
            hard: Some(Duration::from_secs(20)),
        };
    })
    .await;
    let mut c = node.client().await;
    let id = submit(&mut c, "builtin.sleep", json!({"ms": 10_000})).await;
    let j = finished(&mut c, &id, WAIT).await;
    assert_eq!(
        (j["status"].as_str(), j["attempts"].as_u64()),
        (Some("succeeded"), Some(1)),
        "{j}"
    );
    assert_eq!(j["result"]["stopped_at_soft_limit"], true, "{j}");
    assert!(j["result"]["slept_ms"].as_u64().unwrap() < 5_000, "{j}");
}

/// Ensures that with `max_jobs_per_worker = 3` a single worker runs 9 jobs in 3 incarnations,
/// replaced between jobs, and that no job is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycling_replaces_workers_between_jobs() {
    let node = TestNode::start_with(|a| {
        a.pipelines[0].workers = 1;
        a.pipelines[0].max_jobs_per_worker = Some(3);
    })
    .await;
    let mut c = node.client().await;
    let jobs: Vec<Value> = (0..9).map(|_| json!({"job": "builtin.noop"})).collect();
    req(&mut c, json!({"cmd": "submit_batch", "jobs": jobs})).await;
    poll(&mut c, "9 jobs", WAIT, json!({"cmd": "stats"}), |s| {
        s["totals"]["succeeded"] == 9
    })
    .await;
    let t = poll(
        &mut c,
        "the third replacement",
        WAIT,
        json!({"cmd": "tree"}),
        |t| {
            let w = worker(t, "worker-1");
            w["restarts"] == 3 && w["status"] == "running"
        },
    )
    .await;
    let w = worker(&t, "worker-1");
    assert!(
        w["last_failure"].is_null(),
        "recycling is not a failure: {w}"
    );
    let s = req(&mut c, json!({"cmd": "stats"})).await;
    assert_eq!(
        s["totals"]["requeued"], 0,
        "no job went back to its queue: {s}"
    );
}
