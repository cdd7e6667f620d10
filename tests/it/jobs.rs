//! A job's life through the admin port: success, retries with backoff, dead letters, worker
//! panics and restarts, dedup, delays, priorities and the queue bound.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{
    builtin_workers, code, finished, poll, req, status, submit, until_running, TestNode,
};

const WAIT: Duration = Duration::from_secs(30);

/// Ensures that 2,000 no-op jobs submitted in batches all succeed, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_noops_all_succeed() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let jobs: Vec<Value> = (0..500).map(|_| json!({"job": "builtin.noop"})).collect();
        let a = req(&mut c, json!({"cmd": "submit_batch", "jobs": jobs})).await;
        assert_eq!(a["ok"], true, "{a}");
        ids.extend(
            a["job_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string()),
        );
    }
    assert_eq!(ids.len(), 2000);
    let stats = poll(
        &mut c,
        "2000 successes",
        WAIT,
        json!({"cmd": "stats"}),
        |s| s["totals"]["succeeded"] == 2000,
    )
    .await;
    assert_eq!(stats["totals"]["submitted"], 2000);
    assert_eq!(
        stats["jobs"],
        json!({"pending": 0, "running": 0, "retrying": 0})
    );
    for id in ids.iter().step_by(97) {
        let j = status(&mut c, id).await;
        assert_eq!(j["status"], "succeeded");
        assert_eq!(j["attempts"], 1);
    }
    let listed = req(
        &mut c,
        json!({"cmd": "list", "status": "succeeded", "limit": 1000}),
    )
    .await;
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1000);
    node.stop().await.unwrap();
}

/// Ensures that a job failing twice with a retryable error succeeds on its third attempt, and
/// its history shows each retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_twice_then_succeed() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let id = submit(&mut c, "builtin.fail", json!({"times": 2})).await;
    let j = finished(&mut c, &id, WAIT).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    assert_eq!(j["attempts"], 3);
    assert_eq!(j["result"], json!({"attempts": 3}));
    let h = req(&mut c, json!({"cmd": "history", "job_id": id})).await;
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
            "retrying",
            "started",
            "retrying",
            "started",
            "succeeded"
        ]
    );
}

/// Ensures that retries are spent and the job is dead-lettered after max_retries + 1 attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_spent_dead_letters() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let a = req(
        &mut c,
        json!({"cmd": "submit", "job": "builtin.fail", "params": {"times": 10}, "max_retries": 2}),
    )
    .await;
    let id = a["job_id"].as_str().unwrap().to_string();
    let j = finished(&mut c, &id, WAIT).await;
    assert_eq!(j["status"], "failed");
    assert_eq!(j["attempts"], 3);
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 attempts"),
        "{j}"
    );
    let dlq = req(&mut c, json!({"cmd": "dlq"})).await;
    assert_eq!(dlq["jobs"][0]["job_id"], id.as_str());
}

/// Ensures that a permanent error dead-letters the job at once, after one attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_is_not_retried() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let id = submit(&mut c, "builtin.fail_permanent", json!({})).await;
    let j = finished(&mut c, &id, WAIT).await;
    assert_eq!(j["status"], "failed");
    assert_eq!(j["attempts"], 1);
    assert_eq!(j["error"], "builtin.fail_permanent: fails on purpose");
}

/// Runs `job` with `{"times": 1}` (it breaks its worker on the first attempt): checks that it
/// succeeds on attempt 2, waits until the one worker that restarted runs again, and returns that
/// worker's tree node and the job's event kinds.
async fn broken_once(job: &str) -> (Value, Vec<String>) {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let id = submit(&mut c, job, json!({"times": 1})).await;
    let j = finished(&mut c, &id, WAIT).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    assert_eq!(j["attempts"], 2);
    let tree = poll(
        &mut c,
        "the restarted worker to run",
        WAIT,
        json!({"cmd": "tree"}),
        |t| {
            restarted_workers(&t["tree"])
                .iter()
                .any(|w| w["status"] == "running")
        },
    )
    .await;
    let restarted = restarted_workers(&tree["tree"]);
    assert_eq!(restarted.len(), 1, "{tree}");
    assert_eq!(restarted[0]["restarts"], 1, "{tree}");
    let h = req(&mut c, json!({"cmd": "history", "job_id": id})).await;
    let kinds = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    (restarted[0].clone(), kinds)
}

/// Ensures that a job that panics is that job's failure: it is retried counted as an attempt and
/// then succeeds, and its worker is replaced at once (the tree shows the replacement and why)
/// without spending the restart budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_replaces_worker_and_job_is_retried() {
    let (worker, kinds) = broken_once("builtin.panic").await;
    assert!(worker["last_failure"].is_null(), "{worker}");
    let why = worker["last_replacement"].as_str().unwrap();
    assert!(why.contains("panicked"), "{worker}");
    assert!(kinds.iter().any(|k| k == "retrying"), "{kinds:?}");
}

/// Ensures that a worker that fails on its own is restarted by its supervisor (the tree shows
/// the restart), its job goes back to the queue counted as an attempt, and then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restarts_worker_and_job_succeeds() {
    let (worker, kinds) = broken_once("builtin.crash").await;
    let why = worker["last_failure"].as_str().unwrap();
    assert!(why.contains("worker fault"), "{worker}");
    assert!(kinds.iter().any(|k| k == "requeued"), "{kinds:?}");
}

fn restarted_workers(tree: &Value) -> Vec<Value> {
    builtin_workers(tree)
        .into_iter()
        .filter(|w| w["restarts"].as_u64() > Some(0))
        .collect()
}

/// Ensures that the tree names the root's children and every worker with its path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_shows_the_supervision_tree() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    // Actors report `running` once their post_start has run, a moment after the node is up.
    let t = poll(
        &mut c,
        "every actor to run",
        WAIT,
        json!({"cmd": "tree"}),
        |t| {
            t["tree"]["children"][1]["children"]
                .as_array()
                .is_some_and(|w| w.iter().all(|w| w["status"] == "running"))
        },
    )
    .await;
    let root = &t["tree"];
    assert_eq!(root["name"], "root");
    let names: Vec<&str> = root["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dispatcher", "pipeline:builtin", "admin"]);
    let workers = root["children"][1]["children"].as_array().unwrap();
    assert_eq!(workers.len(), 4);
    assert_eq!(workers[2]["path"], "root/pipeline:builtin/worker-3");
    assert!(workers
        .iter()
        .all(|w| w["status"] == "running" && w["kind"] == "worker"));
}

/// Ensures that a unique_key dedups while its job is unfinished, within and across batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_key_dedups_unfinished_jobs() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let job =
        json!({"cmd": "submit", "job": "builtin.sleep", "params": {"ms": 300}, "unique_key": "k1"});
    let a = req(&mut c, job.clone()).await;
    let b = req(&mut c, job.clone()).await;
    assert_eq!(a["deduplicated"], false);
    assert_eq!(b["deduplicated"], true);
    assert_eq!(a["job_id"], b["job_id"]);
    let batch = req(
        &mut c,
        json!({"cmd": "submit_batch", "jobs": [
        {"job": "builtin.noop", "unique_key": "k2"}, {"job": "builtin.noop", "unique_key": "k2"}]}),
    )
    .await;
    assert_eq!(batch["job_ids"][0], batch["job_ids"][1]);
    finished(&mut c, a["job_id"].as_str().unwrap(), WAIT).await;
    let again = req(&mut c, job).await;
    assert_eq!(
        again["deduplicated"], false,
        "a finished job no longer holds its key"
    );
}

/// Ensures that a delayed job waits for its delay and then runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_job_waits() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let a = req(
        &mut c,
        json!({"cmd": "submit", "job": "builtin.noop", "delay": "400ms"}),
    )
    .await;
    let id = a["job_id"].as_str().unwrap().to_string();
    let j = status(&mut c, &id).await;
    assert_eq!(j["status"], "pending");
    assert!(j["next_attempt_at"].is_string(), "{j}");
    let started = std::time::Instant::now();
    let j = finished(&mut c, &id, WAIT).await;
    assert_eq!(j["status"], "succeeded");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "ran after {:?}",
        started.elapsed()
    );
}

/// Ensures that with one busy worker, waiting jobs start in priority order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_decide_the_order() {
    let node = TestNode::start_with(|a| a.pipelines[0].workers = 1).await;
    let mut c = node.client().await;
    let blocker = submit(&mut c, "builtin.sleep", json!({"ms": 300})).await;
    until_running(&mut c, &blocker).await;
    let mut ids = Vec::new();
    for p in ["low", "normal", "high"] {
        // 30 ms each, so that start times (ms resolution) tell the order apart
        let a = req(
            &mut c,
            json!({"cmd": "submit", "job": "builtin.sleep", "params": {"ms": 30}, "priority": p}),
        )
        .await;
        ids.push(a["job_id"].as_str().unwrap().to_string());
    }
    let mut started = Vec::new();
    for id in &ids {
        let j = finished(&mut c, id, WAIT).await;
        started.push((
            j["started_at"].as_str().unwrap().to_string(),
            j["priority"].as_str().unwrap().to_string(),
        ));
    }
    started.sort();
    let order: Vec<&str> = started.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(order, ["high", "normal", "low"]);
}

/// Ensures that beyond `[jobs] max_queued` a submit is refused with `overloaded`, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_bound_answers_overloaded() {
    let node = TestNode::start_with(|a| a.jobs.max_queued = 5).await;
    let mut c = node.client().await;
    assert_eq!(
        req(&mut c, json!({"cmd": "pause", "pipeline": "builtin"})).await["ok"],
        true
    );
    let five: Vec<Value> = (0..5).map(|_| json!({"job": "builtin.noop"})).collect();
    assert_eq!(
        req(&mut c, json!({"cmd": "submit_batch", "jobs": five})).await["ok"],
        true
    );
    let a = req(&mut c, json!({"cmd": "submit", "job": "builtin.noop"})).await;
    assert_eq!(code(&a), "overloaded");
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_queued = 5"),
        "{a}"
    );
    let p = req(&mut c, json!({"cmd": "resume", "pipeline": "builtin"})).await;
    assert_eq!(p["pipeline"]["paused"], false, "{p}");
    let (queued, busy) = (
        p["pipeline"]["queue"]["normal"].as_u64().unwrap(),
        p["pipeline"]["workers"]["busy"].as_u64().unwrap(),
    );
    assert!(
        busy >= 1 && queued + busy <= 5,
        "resuming starts the queued jobs: {p}"
    );
    poll(
        &mut c,
        "the queue to drain",
        WAIT,
        json!({"cmd": "stats"}),
        |s| s["totals"]["succeeded"] == 5,
    )
    .await;
}

/// Ensures that an unknown job name is refused with `unknown_job` naming the pipelines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_job_is_refused() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let a = req(&mut c, json!({"cmd": "submit", "job": "sec.filings"})).await;
    assert_eq!(code(&a), "unknown_job");
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .contains("configured: builtin"),
        "{a}"
    );
    let b = req(&mut c, json!({"cmd": "submit", "job": "builtin.nothing"})).await;
    assert_eq!(code(&b), "unknown_job");
}

/// Ensures that a restart budget spent at every level climbs to the root, and that the node then
/// stops with an error naming the reason, as a spent root budget must.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spent_budgets_escalate_to_the_root() {
    let node = TestNode::start_with(|a| {
        a.pipelines[0].workers = 1;
        a.pipelines[0].restart.max_restarts = 1;
        a.restart.max_restarts = 1;
    })
    .await;
    let mut c = node.client().await;
    // Every attempt crashes its worker; each crash spends a restart until the budgets run out.
    let a = req(&mut c, json!({"cmd": "submit", "job": "builtin.crash", "params": {"times": 100}, "max_retries": 100})).await;
    assert_eq!(a["ok"], true, "{a}");
    let err = node
        .ended(WAIT)
        .await
        .expect_err("the node must stop with an error")
        .to_string();
    assert!(
        err.contains("root supervisor escalated") && err.contains("restart budget spent"),
        "{err}"
    );
}

/// Ensures that a storm of poison jobs does not stop a pipeline: 200 jobs that panic on their
/// first attempt run on 4 workers whose restart budget is 2 restarts a minute; every one is
/// retried and succeeds, a high-priority no-op submitted mid-storm succeeds, and no worker ever
/// spends its budget (no supervisor restarts, no escalation: the pipeline stays up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_storm_does_not_stop_the_pipeline() {
    let node = TestNode::start_with(|a| {
        a.pipelines[0].workers = 4;
        a.pipelines[0].restart.max_restarts = 2;
        a.pipelines[0].retry.base_delay = Duration::from_millis(5);
        a.pipelines[0].retry.max_delay = Duration::from_millis(20);
    })
    .await;
    let mut c = node.client().await;
    let jobs: Vec<Value> = (0..200)
        .map(|_| json!({"job": "builtin.panic", "params": {"times": 1}}))
        .collect();
    let a = req(&mut c, json!({"cmd": "submit_batch", "jobs": jobs})).await;
    assert_eq!(a["ok"], true, "{a}");
    let urgent = req(
        &mut c,
        json!({"cmd": "submit", "job": "builtin.noop", "priority": "high"}),
    )
    .await;
    let urgent = urgent["job_id"].as_str().unwrap().to_string();
    assert_eq!(finished(&mut c, &urgent, WAIT).await["status"], "succeeded");
    for id in a["job_ids"].as_array().unwrap() {
        let j = finished(&mut c, id.as_str().unwrap(), WAIT).await;
        assert_eq!(j["status"], "succeeded", "{j}");
        assert_eq!(j["attempts"], 2, "{j}");
    }
    let tree = req(&mut c, json!({"cmd": "tree"})).await;
    let replaced: u64 = builtin_workers(&tree["tree"])
        .iter()
        .map(|w| {
            assert!(w["last_failure"].is_null(), "no worker failed: {tree}");
            w["restarts"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(replaced, 200, "one replacement per panic: {tree}");
    let root = &tree["tree"]["children"];
    let pipeline = root
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "pipeline:builtin")
        .unwrap();
    assert_eq!(
        pipeline["restarts"], 0,
        "the pipeline never restarted: {tree}"
    );
}
