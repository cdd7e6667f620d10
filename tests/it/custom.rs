//! The Rust task API: `examples/custom_task.rs` (compiled in here as it is) registers
//! `reports.word_count` through `warden::Node::builder`; on a real node the task stores its
//! records, reports progress, returns its result, and its bad params dead-letter.

use std::time::Duration;

use serde_json::json;
use warden::config::Config;

use crate::support::{finished, req, submit, TestNode};

#[allow(dead_code)]
#[path = "../../examples/custom_task.rs"]
mod custom_task;

const WAIT: Duration = Duration::from_secs(30);

/// Ensures that the example's task runs on a node built with the builder: its own pipeline is
/// started, records and progress come back, and a bad param is a permanent failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_task_runs_on_a_built_node() {
    let args = custom_task::builder(Config::embedded_default())
        .args(&|_| None)
        .expect("the builder's config holds together");
    assert!(
        args.pipelines
            .iter()
            .any(|p| p.name == "reports" && p.custom.contains("reports.word_count")),
        "{:?}",
        args.pipelines
    );
    let node = TestNode::start_with(move |a| {
        let builtin = a.pipelines[0].clone();
        a.pipelines = args.pipelines;
        // The embedded default's workers, with the tests' quick retries and backoff.
        for p in &mut a.pipelines {
            (p.retry, p.restart) = (builtin.retry, builtin.restart);
        }
    })
    .await;
    let mut c = node.client().await;
    let id = submit(
        &mut c,
        "reports.word_count",
        json!({"text": "To be or not to be"}),
    )
    .await;
    let j = finished(&mut c, &id, WAIT).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    assert_eq!(
        j["result"]["counts"],
        json!({"be": 2, "not": 1, "or": 1, "to": 2})
    );
    assert_eq!(
        (
            j["progress"]["done"].as_u64(),
            j["progress"]["total"].as_u64()
        ),
        (Some(4), Some(4)),
        "{j}"
    );
    let r = req(&mut c, json!({"cmd": "records", "prefix": "words/"})).await;
    let keys: Vec<&str> = r["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["key"].as_str())
        .collect();
    assert_eq!(keys, ["words/be", "words/not", "words/or", "words/to"]);
    assert_eq!(r["records"][0]["value"], json!({"count": 2}));

    let bad = submit(&mut c, "reports.word_count", json!({"text": 42})).await;
    let j = finished(&mut c, &bad, WAIT).await;
    assert_eq!(
        (j["status"].as_str(), j["attempts"].as_u64()),
        (Some("failed"), Some(1)),
        "{j}"
    );
    assert_eq!(
        j["error"],
        "reports.word_count: params.text: expected a string, got 42"
    );
}

/// Ensures that a builder task named like an exec task of the config is refused before start.
#[test]
fn a_task_defined_twice_is_refused() {
    let config = Config::from_str(
        "[tasks.\"reports.word_count\"]\ncommand = [\"true\"]\n",
        "t.toml",
    )
    .unwrap();
    let err = custom_task::builder(config)
        .args(&|_| None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("task \"reports.word_count\" of the node builder: also declared in [tasks]"),
        "{err}"
    );
}
