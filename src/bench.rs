//! `warden bench`: measures an in-process node (the same `Node::start` the binary uses) through
//! its real admin TCP port, and the raw storage ceiling on the same machine in the same run, and
//! prints `name=value` lines:
//!
//! - `ceiling_entries_per_s`: sled inserts of job-sized values with an fsync every 512;
//! - `throughput_jobs_per_s`: durable no-op jobs submitted in batches over TCP, counted from the
//!   first submit until every one has succeeded; `throughput_ratio_to_ceiling` compares it with
//!   the ceiling (a job costs three journal entries: submitted, started, succeeded);
//! - `latency_submit_p50_us` / `_p99_us`: a durable `submit` round trip, sequentially;
//!   `latency_done_p50_us` / `_p99_us`: submit until `status` says succeeded, sequentially;
//! - `rss_bytes_per_queued_job`: peak RSS growth with jobs queued on a paused pipeline.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use warden_actors::args::{
    AdminArgs, JobsArgs, NodeArgs, PipelineArgs, RestartPolicy, RetryPolicy,
};
use warden_actors::node::Node;

use crate::client::Client;

/// What to measure, and how much.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// No-op jobs for the throughput run.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Jobs per submit_batch.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Concurrent admin connections submitting batches.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Sequential round trips for the latency run.
    #[arg(long, default_value_t = 2000)]
    pub sequential: usize,
    /// Jobs held on a paused pipeline for the memory run.
    #[arg(long, default_value_t = 100_000)]
    pub queued: usize,
    /// Entries for the raw storage ceiling.
    #[arg(long, default_value_t = 200_000)]
    pub ceiling_entries: usize,
    /// Workers of the built-in pipeline.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: BenchArgs) -> ExitCode {
    match measure(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warden bench: {e}");
            ExitCode::from(1)
        }
    }
}

fn node_args(dir: &std::path::Path, workers: usize) -> NodeArgs {
    NodeArgs {
        name: "bench".into(),
        data_dir: dir.to_path_buf(),
        shutdown_timeout: Duration::from_secs(30),
        min_free_space: 0,
        admin: AdminArgs {
            listen: "127.0.0.1:0".parse().expect("literal address"),
            max_connections: 64,
            max_line_bytes: 64 << 20,
            idle_timeout: Duration::from_secs(300),
            token: None,
        },
        jobs: JobsArgs {
            max_queued: 10_000_000,
            max_wait: Duration::from_secs(300),
            retention: Duration::from_secs(7 * 86400),
            cancel_grace: Duration::from_secs(10),
        },
        restart: RestartPolicy::DEFAULT,
        pipelines: vec![PipelineArgs {
            name: "builtin".into(),
            workers,
            retry: RetryPolicy::DEFAULT,
            restart: RestartPolicy::DEFAULT,
            upstream: None,
            limits: Default::default(),
            task_limits: Default::default(),
            max_jobs_per_worker: None,
        }],
        routes: vec![],
        schedules: vec![],
        alerts: None,
    }
}

async fn measure(args: BenchArgs) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    println!(
        "machine_cores={}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    let dir = tempfile::tempdir().map_err(|x| e(&x))?;
    let ceiling_dir = dir.path().join("ceiling");
    std::fs::create_dir_all(&ceiling_dir).map_err(|x| e(&x))?;
    let entries = args.ceiling_entries;
    let ceiling = tokio::task::spawn_blocking(move || {
        warden_actors::journal::measure_ceiling(&ceiling_dir, entries)
    })
    .await
    .map_err(|x| e(&x))?
    .map_err(|x| e(&x))?;
    println!("ceiling_entries_per_s={ceiling:.0}");
    println!("ceiling_jobs_per_s={:.0}", ceiling / 3.0);

    let node = Node::start(node_args(&dir.path().join("node"), args.workers))
        .await
        .map_err(|x| e(&x))?;
    let addr = node.admin_addr();

    // Throughput: batches over several connections, each pipelining its batches.
    let per_conn = args.jobs / args.connections.max(1);
    let batch = args.batch.clamp(1, 10_000);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.connections.max(1) {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect_addr(addr)
                .await
                .map_err(|x| x.to_string())?;
            let line =
                json!({"cmd": "submit_batch", "jobs": vec![json!({"job": "builtin.noop"}); batch]})
                    .to_string();
            let rounds = per_conn.div_ceil(batch);
            let window = 4; // batches in flight per connection
            let mut sent = 0;
            let mut got = 0;
            while got < rounds {
                while sent < rounds && sent - got < window {
                    c.send_raw(line.as_bytes())
                        .await
                        .map_err(|x| x.to_string())?;
                    sent += 1;
                }
                let a = c.recv().await.map_err(|x| x.to_string())?;
                if a["ok"] != true {
                    return Err(format!("submit_batch failed: {a}"));
                }
                got += 1;
            }
            Ok::<usize, String>(rounds * batch)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.map_err(|x| e(&x))??;
    }
    let submitted_at = start.elapsed();
    let mut c = Client::connect_addr(addr).await.map_err(|x| e(&x))?;
    wait_succeeded(&mut c, total as u64).await?;
    let elapsed = start.elapsed();
    let tput = total as f64 / elapsed.as_secs_f64();
    println!("throughput_jobs={total}");
    println!(
        "throughput_submit_only_jobs_per_s={:.0}",
        total as f64 / submitted_at.as_secs_f64()
    );
    println!("throughput_jobs_per_s={tput:.0}");
    println!(
        "throughput_ratio_to_ceiling_jobs={:.3}",
        tput / (ceiling / 3.0)
    );

    // Latency: sequential round trips.
    let mut ack = Vec::with_capacity(args.sequential);
    let mut done = Vec::with_capacity(args.sequential);
    for _ in 0..args.sequential {
        let t0 = Instant::now();
        let a = c
            .request(&json!({"cmd": "submit", "job": "builtin.noop"}))
            .await
            .map_err(|x| e(&x))?;
        ack.push(t0.elapsed());
        let id = a["job_id"].clone();
        loop {
            let s = c
                .request(&json!({"cmd": "status", "job_id": id}))
                .await
                .map_err(|x| e(&x))?;
            if s["job"]["status"] == "succeeded" {
                break;
            }
        }
        done.push(t0.elapsed());
    }
    let (a50, a99) = percentiles(&mut ack);
    let (d50, d99) = percentiles(&mut done);
    println!("latency_submit_p50_us={a50}");
    println!("latency_submit_p99_us={a99}");
    println!("latency_done_p50_us={d50}");
    println!("latency_done_p99_us={d99}");

    // Memory: jobs held on a paused pipeline.
    let p = c
        .request(&json!({"cmd": "pause", "pipeline": "builtin"}))
        .await
        .map_err(|x| e(&x))?;
    if p["ok"] != true {
        return Err(format!("pause failed: {p}"));
    }
    let before = rss_bytes().unwrap_or(0);
    let mut left = args.queued;
    while left > 0 {
        let n = left.min(10_000);
        let a = c
            .request(&json!({"cmd": "submit_batch", "jobs": vec![json!({"job": "builtin.noop", "params": {"n": 1}}); n]}))
            .await
            .map_err(|x| e(&x))?;
        if a["ok"] != true {
            return Err(format!("submit_batch failed: {a}"));
        }
        left -= n;
    }
    let peak = peak_rss_bytes().unwrap_or(0);
    let after = rss_bytes().unwrap_or(0);
    println!("rss_before_queue_bytes={before}");
    println!("rss_with_queue_bytes={after}");
    println!("rss_peak_bytes={peak}");
    println!(
        "rss_bytes_per_queued_job={:.0}",
        after.saturating_sub(before) as f64 / args.queued.max(1) as f64
    );
    let _ = c
        .request(&json!({"cmd": "resume", "pipeline": "builtin"}))
        .await;
    node.stop(false).await.map_err(|x| e(&x))?;
    Ok(())
}

async fn wait_succeeded(c: &mut Client, n: u64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let s = c
            .request(&json!({"cmd": "stats"}))
            .await
            .map_err(|x| x.to_string())?;
        let ok = s["totals"]["succeeded"].as_u64().unwrap_or(0);
        if ok >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("only {ok} of {n} jobs succeeded within 10 minutes"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentiles(v: &mut [Duration]) -> (u128, u128) {
    if v.is_empty() {
        return (0, 0);
    }
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_micros();
    (at(0.50), at(0.99))
}

fn status_field(name: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(name))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn rss_bytes() -> Option<u64> {
    status_field("VmRSS:")
}

fn peak_rss_bytes() -> Option<u64> {
    status_field("VmHWM:")
}
