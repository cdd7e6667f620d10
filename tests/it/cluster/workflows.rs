//! Workflows in cluster mode: any node accepts one, its steps run on whichever nodes claim
//! them, and the leader releases each held step with its input or cancels what follows a
//! failed step, as a single node does.

use std::time::Duration;

use serde_json::{json, Value};

use warden_actors::sink::tokio_postgres::{self, AsyncMessage, NoTls};

use super::records::{claimed, end, exec_task};
use super::{cluster_with, number, store, ClusterNode};
use crate::pg::{self, Schema};
use crate::support::{poll, req};

const WAIT: Duration = Duration::from_secs(60);

/// An exec task `ext.inc` returning `{"n": input.n + 1}` (0 without input).
fn inc(dir: &std::path::Path) -> String {
    exec_task(
        dir,
        "inc",
        r#"prev = job["params"].get("input") or {}
say(result={"n": prev.get("n", 0) + 1})"#,
    )
}

/// The `workflow` answer through `node` once every job of workflow `id` has ended.
async fn ended(node: &ClusterNode, id: &Value) -> Value {
    let q = json!({"cmd": "workflow", "workflow_id": id});
    let done = |w: &Value| w["workflow"]["status"] != "running";
    poll(
        &mut node.client().await,
        "the workflow to end",
        WAIT,
        q,
        done,
    )
    .await["workflow"]
        .clone()
}

/// Ensures that a chain submitted through one node runs its three steps in turn across the
/// cluster, each on the previous result as `params.input`, and that another node reads it
/// succeeded with the last step's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_passes_each_result_on_across_the_cluster() {
    let scripts = tempfile::tempdir().unwrap();
    let (schema, nodes) = cluster_with("wf_chain", 3, &inc(scripts.path())).await;
    let step = json!({"job": "ext.inc"});
    let submit = json!({"cmd": "submit_workflow", "kind": "chain", "jobs": [step, step, step]});
    let a = req(&mut nodes[0].client().await, submit).await;
    assert_eq!(a["ok"], true, "{a}");
    let wf = ended(&nodes[2], &a["workflow_id"]).await;
    assert_eq!(wf["status"], "succeeded", "{wf}");
    assert_eq!(wf["jobs"][2]["params"]["input"], json!({"n": 2}), "{wf}");
    assert_eq!(wf["jobs"][2]["result"], json!({"n": 3}), "{wf}");
    drop(nodes);
    schema.drop_now().await;
}

/// Ensures that a held step says what it waits for, and that a failed step cancels the steps
/// after it, naming the step, while the workflow ends `failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_cancels_the_rest_of_its_chain() {
    let scripts = tempfile::tempdir().unwrap();
    let (schema, nodes) = cluster_with("wf_fail", 2, &inc(scripts.path())).await;
    let mut c = nodes[1].client().await;
    let slow = json!({"job": "builtin.sleep", "params": {"ms": 1500}});
    let jobs = json!([slow, {"job": "builtin.fail_permanent"}, {"job": "ext.inc"}]);
    let submit = json!({"cmd": "submit_workflow", "kind": "chain", "jobs": jobs});
    let a = req(&mut nodes[0].client().await, submit).await;
    assert_eq!(a["ok"], true, "{a}");
    let last = a["job_ids"][2].clone();
    let why = req(&mut c, json!({"cmd": "why", "job_id": last})).await;
    assert_eq!(why["blocker"]["kind"], "scheduled", "{why}");
    let detail = why["blocker"]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("step 2 of its chain"), "{why}");
    let wf = ended(&nodes[1], &a["workflow_id"]).await;
    assert_eq!(wf["status"], "failed", "{wf}");
    assert_eq!(wf["jobs"][2]["status"], "cancelled", "{wf}");
    let h = req(&mut c, json!({"cmd": "history", "job_id": last})).await;
    let cancel = h["events"].as_array().and_then(|e| e.last()).cloned();
    let detail = cancel
        .as_ref()
        .and_then(|e| e["detail"].as_str())
        .unwrap_or_default();
    assert!(detail.starts_with("step 2 of its chain"), "{h}");
    let ran = format!(
        "SELECT count(*) FROM {{s}}.jobs WHERE id = '{}' AND started_at IS NOT NULL",
        last.as_str().unwrap()
    );
    assert_eq!(number(&schema, &ran).await, 0, "a cancelled step ran");
    drop(nodes);
    schema.drop_now().await;
}

/// Ensures that a workflow step's end nudges the leader on the schema's `advance` channel, so
/// that the next step starts without waiting for the leader's round, and that the end of a job
/// in no workflow or batch does not: a marker sent between the two ends arrives first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steps_end_nudges_the_leader_and_a_plain_jobs_does_not() {
    let schema = Schema::fresh("nudge").await;
    let node = store(&schema, "node-a").await;
    let jobs = &node.jobs;
    let channel = format!("{}_advance", schema.name);
    let (listener, mut heard) = listen(&channel).await;
    let plain = claimed(jobs).await;
    assert_eq!(
        jobs.complete(&[end(&plain, plain.claim_no, &[])])
            .await
            .unwrap()
            .len(),
        1
    );
    listener
        .execute("SELECT pg_notify($1, 'marker')", &[&channel])
        .await
        .unwrap();
    let step = claimed(jobs).await;
    schema
        .texts(&format!(
            "UPDATE {{s}}.jobs SET workflow_id = gen_random_uuid() WHERE id = '{}' RETURNING id::text",
            step.id
        ))
        .await;
    assert_eq!(
        jobs.complete(&[end(&step, step.claim_no, &[])])
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        next(&mut heard).await,
        "marker",
        "the plain job's end nudged no one"
    );
    assert_eq!(
        next(&mut heard).await,
        "",
        "the step's end nudges the leader"
    );
    drop(listener);
    schema.drop_now().await;
}

/// The next payload `heard`, within [`WAIT`].
async fn next(heard: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(WAIT, heard.recv())
        .await
        .expect("a notification")
        .expect("the listener is up")
}

/// A connection of its own LISTENing on `channel`, and the payloads heard there.
async fn listen(
    channel: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (client, mut conn) = tokio_postgres::connect(&pg::test_url(), NoTls)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = futures::StreamExt::next(&mut messages).await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .unwrap();
    (client, rx)
}
