//! The web console in cluster mode: two node processes on one PostgreSQL schema, each serving
//! its console; what one node ran and holds is seen and acted on through the other's pages.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::ClusterNode;
use crate::console::web::{Page, Web};
use crate::pg::{self, Schema};
use crate::support::{eventually, finished, poll, submit};

const WAIT: Duration = Duration::from_secs(30);

/// Two nodes, `node-0` and `node-1`, each serving its console.
async fn console_pair(test: &str) -> (Schema, Vec<ClusterNode>) {
    let schema = Schema::fresh(test).await;
    let url = pg::test_url();
    let nodes: Vec<ClusterNode> = (0..2)
        .map(|i| ClusterNode::start_with_console(&format!("node-{i}"), &url, &schema.name, ""))
        .collect();
    for n in &nodes {
        n.client().await;
    }
    (schema, nodes)
}

/// A client of `node`'s console.
pub(super) async fn web(node: &ClusterNode) -> Web {
    let console = node.listening().await.console;
    Web::at(&console.expect("the node serves a console").to_string())
}

/// How many times an event of `kind` is in a `history` answer.
fn events(history: &Value, kind: &str) -> usize {
    history["events"]
        .as_array()
        .map_or(0, |e| e.iter().filter(|e| e["kind"] == kind).count())
}

/// Waits until job `id` has started `n` times and is dead-lettered again.
async fn until_dead_after_starts(c: &mut warden::client::Client, id: &str, n: usize) {
    poll(
        c,
        &format!("job {id} to start {n} times and fail"),
        WAIT,
        json!({"cmd": "history", "job_id": id}),
        |h| events(h, "started") == n && events(h, "dead_lettered") == n,
    )
    .await;
}

/// Ensures that a job run through node-0 shows on node-1's console (its page, the jobs search
/// by status, name glob, a glob PostgreSQL cannot match, pipeline and params, the dead
/// letters), and that an unknown id is a 404 page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_run_on_one_node_shows_on_the_others_console() {
    let (schema, nodes) = console_pair("console_jobs").await;
    let mut a = nodes[0].client().await;
    let done = submit(&mut a, "builtin.noop", json!({"ticker": "CHGG"})).await;
    let dead = submit(&mut a, "builtin.fail_permanent", json!({"ticker": "IBM"})).await;
    assert_eq!(finished(&mut a, &done, WAIT).await["status"], "succeeded");
    assert_eq!(finished(&mut a, &dead, WAIT).await["status"], "failed");

    let mut b = web(&nodes[1]).await;
    b.get(&format!("/jobs/{done}")).await.shows(&[
        &done,
        "builtin.noop",
        "succeeded",
        "CHGG",
        "Timeline",
    ]);
    b.get("/jobs").await.shows(&[&done, &dead]);
    let only = |page: &Page, shown: &str, hidden: &str| {
        page.shows(&[shown]);
        assert!(!page.body.contains(hidden), "{hidden} in:\n{}", page.body);
    };
    only(&b.get("/jobs?status=succeeded").await, &done, &dead);
    only(&b.get("/jobs?name=builtin.no*").await, &done, &dead);
    only(&b.get("/jobs?name=builtin.[mn]oop").await, &done, &dead);
    only(&b.get("/jobs?q=CHGG").await, &done, &dead);
    b.get("/jobs?pipeline=builtin").await.shows(&[&done, &dead]);
    only(&b.get("/dead").await, &dead, &done);
    let missing = b.get("/jobs/0190f5a0-0000-7000-8000-000000000000").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.body);
    drop(nodes);
    schema.drop_now().await;
}

/// Ensures that a dead job retried from node-1's console (its button, then "retry all") runs
/// again, whichever node claims it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_job_retried_from_the_other_nodes_console_runs_again() {
    let (schema, nodes) = console_pair("console_retry").await;
    let mut a = nodes[0].client().await;
    let dead = submit(&mut a, "builtin.fail_permanent", json!({})).await;
    until_dead_after_starts(&mut a, &dead, 1).await;

    let mut b = web(&nodes[1]).await;
    let csrf = b.get(&format!("/jobs/{dead}")).await.csrf();
    let back = format!("/jobs/{dead}");
    let p = b
        .post(
            &format!("/jobs/{dead}/retry"),
            &[("csrf", &csrf), ("back", &back)],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    until_dead_after_starts(&mut a, &dead, 2).await;
    b.get(&back)
        .await
        .shows(&["retried", "sent back by an operator"]);

    b.get("/dead/retry-all")
        .await
        .shows(&["Retry ", "1</strong> dead letter"]);
    let p = b
        .post(
            "/dead/retry-all",
            &[("csrf", &csrf), ("filters", ""), ("expect", "1")],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    b.get("/dead").await.shows(&["Retried 1 dead letter."]);
    until_dead_after_starts(&mut a, &dead, 3).await;
    drop(nodes);
    schema.drop_now().await;
}

/// Ensures that `/nodes` on either node lists both nodes, their admin addresses and exactly one
/// leader, that the navigation links it in cluster mode, and that the overview says whose
/// running jobs it lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_page_lists_every_node_and_the_leader() {
    let (schema, nodes) = console_pair("console_nodes").await;
    let admins = [
        nodes[0].listening().await.admin.to_string(),
        nodes[1].listening().await.admin.to_string(),
    ];
    for (i, node) in nodes.iter().enumerate() {
        let mut w = web(node).await;
        // Both nodes beat before they answer; a leader is elected within a lease renewal.
        let page = eventually("both nodes and a leader on the page", WAIT, || async {
            let page = web(node).await.get("/nodes").await;
            let listed = [
                "badge leader",
                "data-node=\"node-0\"",
                "data-node=\"node-1\"",
            ];
            listed.iter().all(|w| page.body.contains(w)).then_some(page)
        })
        .await;
        page.shows(&[
            &admins[0],
            &admins[1],
            "(this node)",
            "href=\"/nodes\" class=\"active\"",
        ]);
        assert_eq!(
            page.body.matches("badge leader").count(),
            1,
            "{}",
            page.body
        );
        let me = format!("<strong>node-{i}</strong> <span class=\"muted\">(this node)");
        assert!(page.body.contains(&me), "{}", page.body);
        w.get("/")
            .await
            .shows(&["href=\"/nodes\"", "Running on this node now (0)"]);
    }
    drop(nodes);
    schema.drop_now().await;
}
