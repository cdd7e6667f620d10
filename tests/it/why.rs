//! `why`: for a job that is not running, the one thing it waits for now.

use std::time::Duration;

use serde_json::{json, Value};
use warden_actors::args::RetryPolicy;

use crate::support::{finished, poll, req, submit, until_running, TestNode};

const WAIT: Duration = Duration::from_secs(30);

async fn why(c: &mut warden::client::Client, id: &str) -> Value {
    let a = req(c, json!({"cmd": "why", "job_id": id})).await;
    assert_eq!(a["ok"], true, "{a}");
    a["blocker"].clone()
}

/// Ensures that `why` names the queue position, a paused pipeline, a delay, a retry backoff,
/// and `none` for running and finished jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn why_names_each_blocker() {
    let node = TestNode::start_with(|a| {
        a.pipelines[0].workers = 1;
        a.pipelines[0].retry = RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_secs(60),
            max_delay: Duration::from_secs(60),
        };
    })
    .await;
    let mut c = node.client().await;
    let busy = submit(&mut c, "builtin.sleep", json!({"ms": 3000})).await;
    until_running(&mut c, &busy).await;
    assert_eq!(why(&mut c, &busy).await["kind"], "none");
    let first = submit(&mut c, "builtin.noop", json!({})).await;
    let second = submit(&mut c, "builtin.noop", json!({})).await;
    let b = why(&mut c, &second).await;
    assert_eq!(b["kind"], "queued", "{b}");
    assert!(
        b["detail"].as_str().unwrap().starts_with("position 1 "),
        "{b}"
    );
    assert!(why(&mut c, &first).await["detail"]
        .as_str()
        .unwrap()
        .starts_with("position 0 "));

    req(&mut c, json!({"cmd": "pause", "pipeline": "builtin"})).await;
    assert_eq!(why(&mut c, &first).await["kind"], "paused");
    req(&mut c, json!({"cmd": "resume", "pipeline": "builtin"})).await;

    let later = req(
        &mut c,
        json!({"cmd": "submit", "job": "builtin.noop", "delay": "1h"}),
    )
    .await;
    let b = why(&mut c, later["job_id"].as_str().unwrap()).await;
    assert_eq!(b["kind"], "scheduled", "{b}");
    assert!(b["eta"].is_string(), "{b}");

    let flaky = submit(&mut c, "builtin.fail", json!({"times": 1})).await;
    let b = poll(
        &mut c,
        "the retry backoff",
        WAIT,
        json!({"cmd": "why", "job_id": flaky}),
        |a| a["blocker"]["kind"] == "retry_backoff",
    )
    .await;
    assert!(b["blocker"]["eta"].is_string(), "{b}");
    assert!(
        b["blocker"]["detail"].as_str().unwrap().contains("fail"),
        "{b}"
    );

    let done = finished(&mut c, &first, WAIT).await;
    assert_eq!(done["status"], "succeeded");
    let b = why(&mut c, &first).await;
    assert_eq!(
        (b["kind"].as_str(), b["detail"].as_str()),
        (Some("none"), Some("the job is succeeded"))
    );
    let unknown = req(
        &mut c,
        json!({"cmd": "why", "job_id": "0193b7f0-3c55-7d2e-9a51-2b0c8f1e6a10"}),
    )
    .await;
    assert_eq!(unknown["error"]["code"], "not_found");
}

/// Ensures that `why` names a rate-limit wait and an open breaker on an upstream pipeline, and
/// the children a batch job waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn why_names_upstream_blockers() {
    let fake = crate::fakes::FakeUpstream::start().await;
    // Open for a minute once open, and a minute's cool-down: the blockers stay put while asked.
    let up = |rate: &str, threshold: u32| {
        let mut u = crate::support::upstream(&fake, rate);
        u.breaker.failure_threshold = threshold;
        u.breaker.open_for = Duration::from_secs(60);
        u.breaker.max_open_for = Duration::from_secs(60);
        u.throttle_cooldown = Duration::from_secs(60);
        u
    };
    let node = TestNode::start_with(|a| {
        crate::support::add(a, "yahoo", 1, 5, up("1/h", 50));
        crate::support::add(a, "alphavantage", 1, 5, up("100/s", 1));
    })
    .await;
    let mut c = node.client().await;
    // The hourly permit goes to the first job; the second waits for the window.
    submit(&mut c, "yahoo.chart", json!({"ticker": "IBM"})).await;
    let second = submit(&mut c, "yahoo.chart", json!({"ticker": "AAPL"})).await;
    let b = poll(
        &mut c,
        "a rate-limit wait",
        WAIT,
        json!({"cmd": "why", "job_id": second}),
        |a| a["blocker"]["kind"] == "rate_limit",
    )
    .await;
    assert!(b["blocker"]["eta"].is_string(), "{b}");

    // One failure opens the breaker; a job submitted then waits for it.
    fake.fail_next_to(
        crate::fakes::AV_QUERY_PATH,
        1,
        crate::fakes::Failure::Status(500),
    );
    submit(&mut c, "alphavantage.overview", json!({"symbol": "IBM"})).await;
    poll(
        &mut c,
        "the breaker to open",
        WAIT,
        json!({"cmd": "pipelines"}),
        |p| {
            p["pipelines"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "alphavantage" && p["breaker"]["state"] == "open")
        },
    )
    .await;
    let waiting = submit(&mut c, "alphavantage.overview", json!({"symbol": "MSFT"})).await;
    let b = why(&mut c, &waiting).await;
    assert_eq!(b["kind"], "breaker_open", "{b}");

    // A batch parent waits for its children (held back by the hourly window above).
    let parent = submit(
        &mut c,
        "yahoo.batch_chart",
        json!({"tickers": ["MSFT", "CHGG"]}),
    )
    .await;
    let b = poll(
        &mut c,
        "the batch to wait",
        WAIT,
        json!({"cmd": "why", "job_id": parent}),
        |a| a["blocker"]["kind"] == "children",
    )
    .await;
    assert!(
        b["blocker"]["detail"]
            .as_str()
            .unwrap()
            .contains("of its 2 child jobs"),
        "{b}"
    );
}
