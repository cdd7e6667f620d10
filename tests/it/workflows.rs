//! Workflows over the admin port: a chain passes results along and a failed step cancels the
//! rest; a group's `then` receives every result in order; a restart in the middle of either
//! continues it from where it was.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{poll, req, until_running, TestNode};

const WAIT: Duration = Duration::from_secs(30);

async fn submit_workflow(c: &mut warden::client::Client, body: Value) -> (String, Vec<String>) {
    let mut r = body;
    r["cmd"] = json!("submit_workflow");
    let a = req(c, r).await;
    assert_eq!(a["ok"], true, "{a}");
    let ids = a["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    (a["workflow_id"].as_str().unwrap().to_string(), ids)
}

async fn ended(c: &mut warden::client::Client, wf: &str) -> Value {
    let a = poll(
        c,
        "the workflow to end",
        WAIT,
        json!({"cmd": "workflow", "workflow_id": wf}),
        |a| {
            a["workflow"]["status"]
                .as_str()
                .is_some_and(|s| s != "running")
        },
    )
    .await;
    a["workflow"].clone()
}

/// Ensures that a chain of three runs in order, each step getting the previous result as
/// `params.input`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_passes_results_along() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let (wf, ids) = submit_workflow(
        &mut c,
        json!({"kind": "chain", "jobs": [
        {"job": "builtin.sleep", "params": {"ms": 10}},
        {"job": "builtin.fail", "params": {"times": 0}},
        {"job": "builtin.noop"}]}),
    )
    .await;
    let w = ended(&mut c, &wf).await;
    assert_eq!(
        (w["kind"].as_str(), w["status"].as_str()),
        (Some("chain"), Some("succeeded")),
        "{w}"
    );
    let jobs = w["jobs"].as_array().unwrap();
    assert_eq!(
        jobs.iter()
            .map(|j| j["job_id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
        ids
    );
    assert_eq!(jobs[1]["params"]["input"], json!({"slept_ms": 10}), "{w}");
    assert_eq!(jobs[2]["params"]["input"], json!({"attempts": 1}), "{w}");
    assert!(jobs[0]["completed_at"].as_str() <= jobs[1]["started_at"].as_str());
}

/// Ensures that a failing middle step cancels the last one, naming why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_step_cancels_the_rest() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let (wf, _) = submit_workflow(
        &mut c,
        json!({"kind": "chain", "jobs": [
        {"job": "builtin.noop"}, {"job": "builtin.fail_permanent"}, {"job": "builtin.noop"}]}),
    )
    .await;
    let w = ended(&mut c, &wf).await;
    assert_eq!(w["status"], "failed", "{w}");
    let jobs = w["jobs"].as_array().unwrap();
    let statuses: Vec<&str> = jobs.iter().map(|j| j["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["succeeded", "failed", "cancelled"]);
    assert!(
        jobs[2]["error"]
            .as_str()
            .unwrap()
            .contains("step 2 of its chain"),
        "{w}"
    );
    assert_eq!(jobs[2]["attempts"], 0, "the last step never ran");
}

/// Ensures that a group's `then` job starts after all members, with their results in order;
/// and with `allow_failures`, with the errors in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_then_receives_results_in_order() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let (wf, ids) = submit_workflow(
        &mut c,
        json!({"kind": "group", "jobs": [
        {"job": "builtin.sleep", "params": {"ms": 60}},
        {"job": "builtin.sleep", "params": {"ms": 1}},
        {"job": "builtin.sleep", "params": {"ms": 30}}],
        "then": {"job": "builtin.noop"}}),
    )
    .await;
    assert_eq!(ids.len(), 4);
    let w = ended(&mut c, &wf).await;
    assert_eq!(w["status"], "succeeded", "{w}");
    let then = &w["jobs"][3];
    assert_eq!(
        then["params"]["results"],
        json!([{"slept_ms": 60}, {"slept_ms": 1}, {"slept_ms": 30}]),
        "{w}"
    );

    let (wf, _) = submit_workflow(&mut c, json!({"kind": "group", "allow_failures": true, "jobs": [
        {"job": "builtin.noop"}, {"job": "builtin.fail_permanent"}], "then": {"job": "builtin.noop"}}))
    .await;
    let w = ended(&mut c, &wf).await;
    let results = &w["jobs"][2]["params"]["results"];
    assert_eq!(results[0], Value::Null);
    assert_eq!(
        results[1]["error"], "builtin.fail_permanent: fails on purpose",
        "{w}"
    );
    assert_eq!(w["jobs"][2]["status"], "succeeded");
}

/// Ensures that a restart in the middle of a chain and of a group continues each from where it
/// was: finished steps do not run again, waiting ones run once their turn comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_continue_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let node = TestNode::start_in(tmp.path(), |_| {}).await.unwrap();
    let mut c = node.client().await;
    let (chain, chain_ids) = submit_workflow(&mut c, json!({"kind": "chain", "jobs": [
        {"job": "builtin.noop"}, {"job": "builtin.sleep", "params": {"ms": 400}}, {"job": "builtin.noop"}]}))
    .await;
    let (group, _) = submit_workflow(&mut c, json!({"kind": "group", "jobs": [
        {"job": "builtin.noop"}, {"job": "builtin.sleep", "params": {"ms": 400}}], "then": {"job": "builtin.noop"}}))
    .await;
    until_running(&mut c, &chain_ids[1]).await;
    node.stop().await.unwrap();

    let node = TestNode::start_in(tmp.path(), |_| {}).await.unwrap();
    let mut c = node.client().await;
    let w = ended(&mut c, &chain).await;
    assert_eq!(w["status"], "succeeded", "{w}");
    assert_eq!(w["jobs"][0]["attempts"], 1, "the first step ran once: {w}");
    assert_eq!(
        w["jobs"][2]["params"]["input"],
        json!({"slept_ms": 400}),
        "{w}"
    );
    let g = ended(&mut c, &group).await;
    assert_eq!(g["status"], "succeeded", "{g}");
    assert_eq!(
        g["jobs"][2]["params"]["results"],
        json!([null, {"slept_ms": 400}]),
        "{g}"
    );
}

/// Ensures that bad workflows are refused with messages naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_workflows_are_refused() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let a = req(
        &mut c,
        json!({"cmd": "submit_workflow", "kind": "pipeline", "jobs": [{"job": "builtin.noop"}]}),
    )
    .await;
    assert_eq!(
        a["error"]["message"],
        "kind: expected one of chain, group, got \"pipeline\""
    );
    let a = req(&mut c, json!({"cmd": "submit_workflow", "kind": "chain", "jobs": [{"job": "builtin.noop"}, {"job": "nope.x"}]})).await;
    assert_eq!(a["error"]["code"], "unknown_job");
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("jobs[1].job"),
        "{a}"
    );
    let a = req(
        &mut c,
        json!({"cmd": "workflow", "workflow_id": "0193b7f0-3c55-7d2e-9a51-2b0c8f1e6a10"}),
    )
    .await;
    assert_eq!(a["error"]["code"], "not_found");
}
