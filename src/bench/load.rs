//! The load `warden bench` puts on a node over its admin TCP port: no-op jobs in pipelined
//! batches over several connections, sequential round trips, a backlog on a paused pipeline,
//! and the wait for a number of jobs to have succeeded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::Client;

/// Batches in flight per connection.
const WINDOW: usize = 4;

/// Sends `req` and fails unless the answer is `ok`.
pub async fn ok(c: &mut Client, req: &Value) -> Result<Value, String> {
    let a = c.request(req).await.map_err(|e| e.to_string())?;
    if a["ok"] != true {
        return Err(format!("{} failed: {a}", req["cmd"]));
    }
    Ok(a)
}

/// Submits about `jobs` no-op jobs in batches of `batch` over `connections` connections, each
/// pipelining `WINDOW` batches; returns how many were acknowledged.
pub async fn submit_parallel(
    addr: SocketAddr,
    jobs: usize,
    batch: usize,
    connections: usize,
) -> Result<usize, String> {
    let connections = connections.max(1);
    let per_conn = jobs / connections;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        tasks.push(tokio::spawn(submit_pipelined(addr, per_conn, batch)));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.map_err(|e| e.to_string())??;
    }
    Ok(total)
}

async fn submit_pipelined(addr: SocketAddr, jobs: usize, batch: usize) -> Result<usize, String> {
    let mut c = Client::connect_addr(addr)
        .await
        .map_err(|e| e.to_string())?;
    let line = batch_line(batch);
    let rounds = jobs.div_ceil(batch);
    let (mut sent, mut got) = (0, 0);
    while got < rounds {
        while sent < rounds && sent - got < WINDOW {
            c.send_raw(line.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            sent += 1;
        }
        let a = c.recv().await.map_err(|e| e.to_string())?;
        if a["ok"] != true {
            return Err(format!("submit_batch failed: {a}"));
        }
        got += 1;
    }
    Ok(rounds * batch)
}

/// A `submit_batch` request line of `n` no-op jobs.
pub fn batch_line(n: usize) -> String {
    json!({"cmd": "submit_batch", "jobs": vec![json!({"job": "builtin.noop"}); n]}).to_string()
}

/// Submits `jobs` no-op jobs in batches of `batch`, one batch at a time.
pub async fn submit_sequential(c: &mut Client, jobs: usize, batch: usize) -> Result<(), String> {
    let mut left = jobs;
    while left > 0 {
        let n = left.min(batch);
        let a = c.send_raw(batch_line(n).as_bytes()).await;
        a.map_err(|e| e.to_string())?;
        let a = c.recv().await.map_err(|e| e.to_string())?;
        if a["ok"] != true {
            return Err(format!("submit_batch failed: {a}"));
        }
        left -= n;
    }
    Ok(())
}

/// Jobs that have succeeded since the node started (`stats`' totals).
pub async fn succeeded(c: &mut Client) -> Result<u64, String> {
    let s = ok(c, &json!({"cmd": "stats"})).await?;
    Ok(s["totals"]["succeeded"].as_u64().unwrap_or(0))
}

/// Unfinished jobs (pending, running and retrying) per `stats`.
pub async fn unfinished(c: &mut Client) -> Result<u64, String> {
    let s = ok(c, &json!({"cmd": "stats"})).await?;
    let count = |k: &str| s["jobs"][k].as_u64().unwrap_or(0);
    Ok(count("pending") + count("running") + count("retrying"))
}

/// Waits until at least `n` jobs have succeeded in all, up to `timeout`.
pub async fn wait_succeeded(c: &mut Client, n: u64, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let done = succeeded(c).await?;
        if done >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {done} of {n} jobs succeeded within {timeout:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `rounds` sequential `submit` round trips, each followed by `status` polls until the job
/// succeeded: the submit times and the submit-to-succeeded times.
pub async fn latencies(
    c: &mut Client,
    rounds: usize,
) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    let (mut ack, mut done) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds {
        let t0 = Instant::now();
        let a = ok(c, &json!({"cmd": "submit", "job": "builtin.noop"})).await?;
        ack.push(t0.elapsed());
        let id = a["job_id"].clone();
        loop {
            let s = ok(c, &json!({"cmd": "status", "job_id": id})).await?;
            if s["job"]["status"] == "succeeded" {
                break;
            }
        }
        done.push(t0.elapsed());
    }
    Ok((ack, done))
}

/// The 50th and 99th percentiles in microseconds.
pub fn percentiles(v: &mut [Duration]) -> (u128, u128) {
    if v.is_empty() {
        return (0, 0);
    }
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_micros();
    (at(0.50), at(0.99))
}

/// Steps of the chain whose latency [`chain_ms_per_step`] measures.
pub const CHAIN_STEPS: usize = 20;

/// The time from a step's end to the next step's, per step: a chain of [`CHAIN_STEPS`] no-ops
/// submitted through the node at `addr`, from the submit until its `workflow` answer is no
/// longer `running` (polled every 5 ms), divided by the steps.
pub async fn chain_ms_per_step(addr: SocketAddr, timeout: Duration) -> Result<f64, String> {
    let mut c = Client::connect_addr(addr)
        .await
        .map_err(|e| e.to_string())?;
    let steps: Vec<Value> = (0..CHAIN_STEPS)
        .map(|_| json!({"job": "builtin.noop"}))
        .collect();
    let started = Instant::now();
    let submit = json!({"cmd": "submit_workflow", "kind": "chain", "jobs": steps});
    let id = ok(&mut c, &submit).await?["workflow_id"].clone();
    let ask = json!({"cmd": "workflow", "workflow_id": id});
    loop {
        let status = ok(&mut c, &ask).await?["workflow"]["status"].clone();
        if status == "succeeded" {
            return Ok(started.elapsed().as_secs_f64() * 1000.0 / CHAIN_STEPS as f64);
        }
        if status != "running" {
            return Err(format!("the benchmark's chain ended {status}"));
        }
        if started.elapsed() > timeout {
            return Err(format!("the benchmark's chain still ran after {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
