//! Batch jobs in cluster mode: a parent fans out to children that any node may run, waits for
//! them holding no worker, and is finished by the leader with their summary; cancelling it
//! cancels its unfinished children wherever they wait.

use std::time::Duration;

use serde_json::json;

use warden_actors::metrics::JOB_EXECUTIONS;

use super::{number, until_count, yahoo_cluster, yahoo_pipeline, ClusterNode};
use crate::fakes::{FakeUpstream, COMPANIES, YAHOO_CHART_PREFIX};
use crate::observability::samples;
use crate::pg::{self, Schema};
use crate::support::{eventually, poll, req};

const WAIT: Duration = Duration::from_secs(60);

/// Submits a `yahoo.batch_chart` over the first `n` tickers through `node`; its id.
async fn batch(node: &super::ClusterNode, n: usize) -> String {
    let tickers: Vec<&str> = COMPANIES.iter().take(n).map(|c| c.ticker).collect();
    let submit =
        json!({"cmd": "submit", "job": "yahoo.batch_chart", "params": {"tickers": tickers}});
    let a = req(&mut node.client().await, submit).await;
    assert_eq!(a["ok"], true, "{a}");
    a["job_id"].as_str().unwrap().to_string()
}

/// Ensures that a batch job submitted through one node fans out to one child per ticker, that
/// each child runs exactly once (one request each at the fake upstream), that the parent, read
/// through another node, succeeds with its children's summary and shows its fan-out, that the
/// cluster counts its success once in its metrics, and that its page on any node's console
/// lists its children.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_fans_out_over_the_cluster_and_ends_with_its_summary() {
    let fake = FakeUpstream::start().await;
    let (schema, nodes) = yahoo_cluster("fanout", &fake, "50/s").await;
    let n = COMPANIES.len().min(10);
    let parent = batch(&nodes[0], n).await;
    let done = poll(
        &mut nodes[2].client().await,
        "the batch to succeed",
        WAIT,
        json!({"cmd": "status", "job_id": parent}),
        |s| s["job"]["status"] == "succeeded",
    )
    .await;
    let result = &done["job"]["result"];
    assert_eq!(result["total"], n, "{done}");
    assert_eq!(result["succeeded"], n, "{done}");
    assert_eq!(result["failed"], 0, "{done}");
    let kids = format!(
        "SELECT count(*) FROM {{s}}.jobs WHERE parent_id = '{parent}' AND state = 'succeeded'"
    );
    assert_eq!(number(&schema, &kids).await, n as i64);
    assert_eq!(fake.requests_to(YAHOO_CHART_PREFIX).len(), n);
    let h = req(
        &mut nodes[1].client().await,
        json!({"cmd": "history", "job_id": parent}),
    )
    .await;
    let kinds: Vec<&str> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"fanned_out"), "{h}");
    assert_eq!(kinds.last(), Some(&"succeeded"), "{h}");
    eventually("the batch's success counted", WAIT, || async {
        (succeeded_on(&nodes, "yahoo.batch_chart").await == 1).then_some(())
    })
    .await;
    children_on_the_console(&schema, &fake, &parent, n).await;
    // Seconds and several leader rounds later, still counted once.
    assert_eq!(succeeded_on(&nodes, "yahoo.batch_chart").await, 1);
    drop(nodes);
    schema.drop_now().await;
}

/// How many `job` jobs `warden_job_executions_total` counts as succeeded, summed over the
/// `/metrics` of `nodes`.
async fn succeeded_on(nodes: &[ClusterNode], job: &str) -> u64 {
    let mut sum = 0;
    for node in nodes {
        let url = format!("http://{}/metrics", node.listening().await.metrics);
        let text = reqwest::get(url).await.unwrap().text().await.unwrap();
        let series = [("job_name", job), ("status", "succeeded")];
        sum += samples(&text)
            .iter()
            .filter(|s| s.is(JOB_EXECUTIONS, &series))
            .map(|s| s.value.parse::<u64>().expect("a count"))
            .sum::<u64>();
    }
    sum
}

/// Checks, on the console of a node started afterwards, that the batch `parent` lists its `n`
/// children on its page and that the jobs search by parent finds each of them.
async fn children_on_the_console(schema: &Schema, fake: &FakeUpstream, parent: &str, n: usize) {
    let extra = yahoo_pipeline(fake, "50/s");
    let viewer = ClusterNode::start_with_console("viewer", &pg::test_url(), &schema.name, &extra);
    let ids: Vec<String> = schema
        .texts(&format!(
            "SELECT id::text FROM {{s}}.jobs WHERE parent_id = '{parent}' ORDER BY id"
        ))
        .await
        .into_iter()
        .map(|row| row[0].clone().unwrap())
        .collect();
    assert_eq!(ids.len(), n);
    let mut web = super::console::web(&viewer).await;
    let heading = format!("Children ({n})");
    web.get(&format!("/jobs/{parent}")).await.shows(&[&heading]);
    let search = web.get(&format!("/jobs?parent={parent}")).await;
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    search.shows(&ids);
}

/// Ensures that cancelling a waiting batch job through another node cancels its children that
/// had not run, leaves those that had, and that the leader never finishes the cancelled parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_waiting_batch_cancels_its_children() {
    let fake = FakeUpstream::start().await;
    let (schema, nodes) = yahoo_cluster("fanout_cancel", &fake, "2/s").await;
    let n = COMPANIES.len().min(10);
    let parent = batch(&nodes[0], n).await;
    let succeeded = format!(
        "SELECT count(*) FROM {{s}}.jobs WHERE parent_id = '{parent}' AND state = 'succeeded'"
    );
    until_count(&schema, "two children to succeed", WAIT, &succeeded, 2).await;
    let mut c = nodes[1].client().await;
    let why = req(&mut c, json!({"cmd": "why", "job_id": parent})).await;
    assert_eq!(why["blocker"]["kind"], "children", "{why}");
    let cancelled = req(&mut c, json!({"cmd": "cancel", "job_id": parent})).await;
    assert_eq!(cancelled["job"]["status"], "cancelled", "{cancelled}");
    let unfinished = format!(
        "SELECT count(*) FROM {{s}}.jobs WHERE parent_id = '{parent}'
         AND state NOT IN ('succeeded', 'cancelled')"
    );
    until_count(&schema, "every child to be final", WAIT, &unfinished, 0).await;
    let cancelled_kids = format!(
        "SELECT count(*) FROM {{s}}.jobs WHERE parent_id = '{parent}' AND state = 'cancelled'"
    );
    assert!(
        number(&schema, &cancelled_kids).await > 0,
        "no child was cancelled"
    );
    // The leader's rounds pass a cancelled parent by: it stays cancelled.
    let s = req(&mut c, json!({"cmd": "status", "job_id": parent})).await;
    assert_eq!(s["job"]["status"], "cancelled", "{s}");
    drop(nodes);
    schema.drop_now().await;
}

/// Ensures that a batch job whose node is killed with SIGKILL after the fan-out is not run
/// again: its children finish on the other nodes (the killed node's running ones rescued), the
/// leader finishes the parent, and there is one fan-out with one set of children.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_outlives_the_node_that_fanned_it_out() {
    let fake = FakeUpstream::start().await;
    let (schema, mut nodes) = yahoo_cluster("fanout_kill", &fake, "4/s").await;
    let n = COMPANIES.len().min(10);
    let parent = batch(&nodes[0], n).await;
    let fanned = format!(
        "SELECT count(*) FROM {{s}}.jobs WHERE id = '{parent}' AND claimed_by IS NULL \
         AND history @> '[{{\"kind\": \"fanned_out\"}}]'"
    );
    until_count(&schema, "the batch to fan out", WAIT, &fanned, 1).await;
    let who = format!(
        "SELECT e->>'detail' FROM {{s}}.jobs, jsonb_array_elements(history) e \
         WHERE id = '{parent}' AND e->>'kind' = 'started'"
    );
    let victim = schema.texts(&who).await[0][0].clone().unwrap();
    nodes.iter_mut().find(|n| n.id == victim).unwrap().kill_9();
    let done =
        format!("SELECT count(*) FROM {{s}}.jobs WHERE id = '{parent}' AND state = 'succeeded'");
    until_count(
        &schema,
        "the batch to finish without its node",
        WAIT,
        &done,
        1,
    )
    .await;
    let kids = format!("SELECT count(*) FROM {{s}}.jobs WHERE parent_id = '{parent}'");
    assert_eq!(
        number(&schema, &kids).await,
        n as i64,
        "one set of children"
    );
    let fan_outs = format!(
        "SELECT count(*) FROM {{s}}.jobs, jsonb_array_elements(history) e \
         WHERE id = '{parent}' AND e->>'kind' = 'fanned_out'"
    );
    assert_eq!(number(&schema, &fan_outs).await, 1, "one fan-out");
    drop(nodes);
    schema.drop_now().await;
}
