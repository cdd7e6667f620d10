//! What history costs: the listings an operator runs (`list status=failed limit=10`, `dlq`)
//! timed while the journal holds few finished jobs and again once it holds many, and the time a
//! node takes to answer `ping` after a `kill -9` with all that history plus a backlog of pending
//! jobs. Flat costs mean the journal reads O(page) and O(unfinished), never O(history).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::load::{ok, submit_sequential, wait_succeeded};
use super::process::NodeProcess;
use crate::client::Client;

/// Round trips per listing; the median is reported.
const ROUNDS: usize = 50;
/// Dead letters made before the history grows: what `list status=failed` and `dlq` find.
pub const DEAD_LETTERS: usize = 10;
/// Jobs pending at the restart (target: answering `ping` within 1 s with a large history).
const PENDING_AT_RESTART: usize = 10_000;

/// The median round trip of `list status=failed limit=10` and of `dlq limit=10`, in µs.
pub async fn listing_us(c: &mut Client) -> Result<(u128, u128), String> {
    let list = json!({"cmd": "list", "status": "failed", "limit": 10});
    let dlq = json!({"cmd": "dlq", "limit": 10});
    Ok((median_us(c, &list).await?, median_us(c, &dlq).await?))
}

async fn median_us(c: &mut Client, req: &Value) -> Result<u128, String> {
    let mut took = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t0 = Instant::now();
        ok(c, req).await?;
        took.push(t0.elapsed());
    }
    took.sort();
    Ok(took[ROUNDS / 2].as_micros())
}

/// Makes [`DEAD_LETTERS`] failed jobs (one attempt each) and waits for them, before any history.
pub async fn dead_letters(c: &mut Client) -> Result<(), String> {
    let jobs: Vec<Value> = (0..DEAD_LETTERS)
        .map(|_| json!({"job": "builtin.fail_permanent"}))
        .collect();
    ok(c, &json!({"cmd": "submit_batch", "jobs": jobs})).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = ok(c, &json!({"cmd": "dlq", "limit": 100})).await?;
        if a["jobs"].as_array().map_or(0, Vec::len) >= DEAD_LETTERS {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{DEAD_LETTERS} dead letters did not appear: {a}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Queues `PENDING_AT_RESTART` jobs on a paused `builtin`, kills the node with SIGKILL,
/// restarts it on the same data dir and returns the time from the restart to its first `ping`
/// answer; the backlog then drains (the pause is journaled, so it is resumed here).
pub async fn restart_with_history(node: &mut NodeProcess) -> Result<Duration, String> {
    let mut c = Client::connect_addr(node.admin()?)
        .await
        .map_err(|e| e.to_string())?;
    ok(&mut c, &json!({"cmd": "pause", "pipeline": "builtin"})).await?;
    submit_sequential(&mut c, PENDING_AT_RESTART, 1000).await?;
    drop(c);
    node.kill9()?;
    node.restart()?;
    let ready = node.wait_ready(super::PHASE_TIMEOUT).await?;
    let mut c = Client::connect_addr(node.admin()?)
        .await
        .map_err(|e| e.to_string())?;
    ok(&mut c, &json!({"cmd": "resume", "pipeline": "builtin"})).await?;
    wait_succeeded(&mut c, PENDING_AT_RESTART as u64, super::PHASE_TIMEOUT).await?;
    Ok(ready)
}
