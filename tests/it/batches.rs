//! Batch jobs that fan out one child per ticker: the parent waits holding no worker, finishes
//! with the summary, and cancelling it cancels the unfinished children, also across a restart.

use std::time::Duration;

use serde_json::{json, Value};
use warden_actors::args::NodeArgs;

use crate::fakes::{self, FakeUpstream, COMPANIES};
use crate::support::{add, finished, poll, req, status, upstream, TestNode};

const WAIT: Duration = Duration::from_secs(60);

/// Ensures that `sec.batch_filings` over 20 tickers (one unknown) creates 20 children with
/// `parent_id` set, that the parent waits for them (`why` says children), and that it finishes
/// with the summary `{total, succeeded, failed, stored}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_over_twenty_tickers_summarizes() {
    let fake = FakeUpstream::start().await;
    let node = TestNode::start_with(|a| add(a, "sec", 2, 2, upstream(&fake, "20/s"))).await;
    let mut c = node.client().await;
    let mut tickers: Vec<&str> = COMPANIES.iter().take(19).map(|c| c.ticker).collect();
    tickers.push("NOPE");
    let a = req(
        &mut c,
        json!({"cmd": "submit", "job": "sec.batch_filings", "params": {"tickers": tickers}}),
    )
    .await;
    let parent = a["job_id"].as_str().unwrap().to_string();
    let w = poll(
        &mut c,
        "the parent to wait for its children",
        WAIT,
        json!({"cmd": "why", "job_id": parent}),
        |w| w["blocker"]["kind"] == "children" || status_is_done(w),
    )
    .await;
    let _ = w;
    let j = finished(&mut c, &parent, WAIT).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    let expected_stored = 19 * fakes::FILINGS_PER_COMPANY;
    assert_eq!(
        j["result"],
        json!({"total": 20, "succeeded": 19, "failed": 1, "stored": expected_stored}),
        "{j}"
    );
    let kids = req(
        &mut c,
        json!({"cmd": "list", "name": "sec.filings", "limit": 100}),
    )
    .await;
    let kids = kids["jobs"].as_array().unwrap();
    assert_eq!(kids.len(), 20);
    assert!(
        kids.iter().all(|k| k["parent_id"] == parent.as_str()),
        "every child names its parent"
    );
}

fn status_is_done(w: &Value) -> bool {
    w["blocker"]["kind"] == "none"
}

/// Ensures that cancelling a batch parent cancels its unfinished children, that nothing more
/// reaches the upstream, and that all of it stays cancelled across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_parent_cancels_children_across_a_restart() {
    let fake = FakeUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let setup = |a: &mut NodeArgs| add(a, "yahoo", 1, 2, upstream(&fake, "2/s"));
    let node = TestNode::start_in(tmp.path(), setup).await.unwrap();
    let mut c = node.client().await;
    let tickers: Vec<&str> = COMPANIES.iter().take(10).map(|c| c.ticker).collect();
    let a = req(
        &mut c,
        json!({"cmd": "submit", "job": "yahoo.batch_chart", "params": {"tickers": tickers}}),
    )
    .await;
    let parent = a["job_id"].as_str().unwrap().to_string();
    poll(
        &mut c,
        "two children done",
        WAIT,
        json!({"cmd": "list", "name": "yahoo.chart", "status": "succeeded"}),
        |l| l["jobs"].as_array().is_some_and(|j| j.len() >= 2),
    )
    .await;
    let cancelled = req(&mut c, json!({"cmd": "cancel", "job_id": parent})).await;
    assert_eq!(cancelled["job"]["status"], "cancelled", "{cancelled}");
    let kids = req(
        &mut c,
        json!({"cmd": "list", "name": "yahoo.chart", "limit": 100}),
    )
    .await;
    let kids: Vec<Value> = kids["jobs"].as_array().unwrap().clone();
    assert_eq!(kids.len(), 10);
    let unfinished_before: Vec<String> = kids
        .iter()
        .filter(|k| k["status"] == "cancelled")
        .map(|k| k["job_id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !unfinished_before.is_empty(),
        "some children were still waiting: {kids:?}"
    );
    assert!(
        kids.iter()
            .all(|k| matches!(k["status"].as_str(), Some("succeeded" | "cancelled"))),
        "{kids:?}"
    );
    node.stop().await.unwrap();
    let seen = fake.requests().len();

    let node = TestNode::start_in(tmp.path(), setup).await.unwrap();
    let mut c = node.client().await;
    assert_eq!(status(&mut c, &parent).await["status"], "cancelled");
    for id in &unfinished_before {
        assert_eq!(status(&mut c, id).await["status"], "cancelled");
    }
    let s = req(&mut c, json!({"cmd": "stats"})).await;
    assert_eq!(
        s["jobs"],
        json!({"pending": 0, "running": 0, "retrying": 0}),
        "{s}"
    );
    assert!(
        fake.requests().len() <= seen + 1,
        "nothing more reached the upstream"
    );
}
