//! `warden bench`: measures the real binary as users run it. It starts `warden node` (this same
//! executable) as a child process on the embedded default config (info logs, to a file in a
//! temporary dir; free loopback ports), talks to it over its admin TCP port, measures the raw
//! storage ceiling on the same machine in the same run, and prints `name=value` lines:
//!
//! - `ceiling_entries_per_s`: sled inserts of job-sized values with an fsync every 512;
//! - `throughput_jobs_per_s`: durable no-op jobs submitted in batches over TCP, counted from the
//!   first submit until every one has succeeded; `throughput_ratio_to_ceiling` compares it with
//!   the ceiling (a job costs three journal entries: submitted, started, succeeded);
//! - `latency_submit_p50_us` / `_p99_us`: a durable `submit` round trip, sequentially;
//!   `latency_done_p50_us` / `_p99_us`: submit until `status` says succeeded, sequentially;
//! - `drain_jobs_per_s`: N jobs queued on a paused `builtin`, then `resume` until all succeeded;
//! - the node's RSS at start, with N queued and after the drain (`rss_bytes_per_queued_job`),
//!   its peak, and its open file descriptors and threads at start and at the end;
//! - `list_failed_us` / `dlq_us` with a handful of finished jobs and again with 2N + more
//!   (`history_cost_ratio`), and `restart_with_history_ms`: `kill -9` with all that history
//!   plus 10,000 pending jobs, until the restarted node answers `ping` (see `history.rs`);
//! - `exec_*_jobs_per_s`: trivial exec tasks on a node of their own (see `exec.rs`).

pub mod cluster;
pub mod console;
pub mod exec;
pub mod history;
pub mod load;
pub mod process;
pub mod sink;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use crate::client::Client;
use load::{ok, percentiles, wait_succeeded};
use process::{NodeProcess, Sample};

/// The longest wait for any one phase (all jobs done, the node ready or stopped).
pub const PHASE_TIMEOUT: Duration = Duration::from_secs(600);

/// What to measure, and how much.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// No-op jobs for the throughput run, and jobs queued on the paused pipeline for the drain.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Only the web console's page loads, with this many finished jobs in the journal
    /// (default 1,000,000); see `bench/console.rs`.
    #[arg(long, value_name = "JOBS", num_args = 0..=1, default_missing_value = "1000000")]
    pub console: Option<usize>,
    /// Jobs per submit_batch.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Concurrent admin connections submitting batches.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Sequential round trips for the latency run.
    #[arg(long, default_value_t = 2000)]
    pub sequential: usize,
    /// Entries for the raw storage ceiling.
    #[arg(long, default_value_t = 200_000)]
    pub ceiling_entries: usize,
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: BenchArgs) -> ExitCode {
    let outcome = match args.console {
        Some(jobs) => console_only(jobs).await,
        None => measure(args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warden bench: {e}");
            ExitCode::from(1)
        }
    }
}

/// The listings' medians early and late, with the finished jobs the late ones ran against.
fn print_history_costs(early: (u128, u128), late: (u128, u128), finished: usize) {
    println!("history_finished_jobs_early={}", history::DEAD_LETTERS);
    println!("history_finished_jobs_late={finished}");
    println!("list_failed_early_us={}", early.0);
    println!("list_failed_late_us={}", late.0);
    println!("dlq_early_us={}", early.1);
    println!("dlq_late_us={}", late.1);
    let ratio = |a: u128, b: u128| b as f64 / a.max(1) as f64;
    println!(
        "history_cost_ratio_list={:.2} history_cost_ratio_dlq={:.2}",
        ratio(early.0, late.0),
        ratio(early.1, late.1)
    );
}

fn print_sample(when: &str, s: &Sample) {
    println!("rss_{when}_bytes={}", s.rss_bytes);
    println!("fds_{when}={}", s.fds);
    println!("threads_{when}={}", s.threads);
}

/// The raw storage ceiling in entries/s, in `dir`.
/// `--console`: the console's page loads alone.
async fn console_only(jobs: usize) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("this executable: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    console::measure(&exe, dir.path(), jobs).await
}

async fn ceiling(dir: &Path, entries: usize) -> Result<f64, String> {
    let dir = dir.to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    tokio::task::spawn_blocking(move || {
        warden_actors::store::journal::measure_ceiling(&dir, entries)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

async fn measure(args: BenchArgs) -> Result<(), String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("machine_cores={cores}");
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let ceiling = ceiling(&dir.path().join("ceiling"), args.ceiling_entries).await?;
    println!("ceiling_entries_per_s={ceiling:.0}");
    println!("ceiling_jobs_per_s={:.0}", ceiling / 3.0);

    let exe = std::env::current_exe().map_err(|e| format!("this executable: {e}"))?;
    let node_dir = dir.path().join("node");
    std::fs::create_dir_all(&node_dir).map_err(|e| format!("{}: {e}", node_dir.display()))?;
    let mut node = NodeProcess::spawn(&exe, &node_dir)?;
    let ready = node.wait_ready(PHASE_TIMEOUT).await?;
    println!("start_to_ping_ms={}", ready.as_millis());
    let start = node.sample().ok_or("the node is gone")?;
    print_sample("start", &start);

    let mut c = Client::connect_addr(node.admin()?)
        .await
        .map_err(|e| e.to_string())?;
    history::dead_letters(&mut c).await?;
    let early = history::listing_us(&mut c).await?;
    throughput(&node, &args, ceiling).await?;
    latency(&mut c, args.sequential).await?;
    drain(&node, &mut c, &args, start).await?;
    let late = history::listing_us(&mut c).await?;
    print_history_costs(early, late, 2 * args.jobs + args.sequential);
    drop(c);
    let restart = history::restart_with_history(&mut node).await?;
    println!("restart_with_history_ms={}", restart.as_millis());
    let c = Client::connect_addr(node.admin()?)
        .await
        .map_err(|e| e.to_string())?;

    let end = node.sample().ok_or("the node is gone")?;
    print_sample("end", &end);
    println!("rss_peak_bytes={}", end.peak_rss_bytes);
    drop(c);
    let status = node.shutdown(PHASE_TIMEOUT).await?;
    println!("node_exit_code={}", status.code().unwrap_or(-1));
    exec::measure(&exe, dir.path()).await
}

/// Batches over several connections, from the first submit until every job succeeded.
async fn throughput(node: &NodeProcess, args: &BenchArgs, ceiling: f64) -> Result<(), String> {
    let mut c = Client::connect_addr(node.admin()?)
        .await
        .map_err(|e| e.to_string())?;
    let before = load::succeeded(&mut c).await?;
    let batch = args.batch.clamp(1, 10_000);
    let started = Instant::now();
    let total = load::submit_parallel(node.admin()?, args.jobs, batch, args.connections).await?;
    let submitted = started.elapsed();
    wait_succeeded(&mut c, before + total as u64, PHASE_TIMEOUT).await?;
    let tput = total as f64 / started.elapsed().as_secs_f64();
    println!("throughput_jobs={total}");
    let submit_only = total as f64 / submitted.as_secs_f64();
    println!("throughput_submit_only_jobs_per_s={submit_only:.0}");
    println!("throughput_jobs_per_s={tput:.0}");
    println!(
        "throughput_ratio_to_ceiling_jobs={:.3}",
        tput / (ceiling / 3.0)
    );
    Ok(())
}

/// Sequential round trips.
async fn latency(c: &mut Client, rounds: usize) -> Result<(), String> {
    let (mut ack, mut done) = load::latencies(c, rounds).await?;
    let (a50, a99) = percentiles(&mut ack);
    let (d50, d99) = percentiles(&mut done);
    println!("latency_submit_p50_us={a50}");
    println!("latency_submit_p99_us={a99}");
    println!("latency_done_p50_us={d50}");
    println!("latency_done_p99_us={d99}");
    Ok(())
}

/// `args.jobs` jobs queued on a paused `builtin`, then resumed: RSS with the backlog and after,
/// and how fast the backlog drains.
async fn drain(
    node: &NodeProcess,
    c: &mut Client,
    args: &BenchArgs,
    start: Sample,
) -> Result<(), String> {
    let before = load::succeeded(c).await?;
    ok(c, &json!({"cmd": "pause", "pipeline": "builtin"})).await?;
    load::submit_sequential(c, args.jobs, args.batch.clamp(1, 10_000)).await?;
    let queued = node.sample().ok_or("the node is gone")?;
    println!("rss_queued_bytes={}", queued.rss_bytes);
    let per_job = queued.rss_bytes.saturating_sub(start.rss_bytes) as f64 / args.jobs.max(1) as f64;
    println!("rss_bytes_per_queued_job={per_job:.0}");
    let started = Instant::now();
    ok(c, &json!({"cmd": "resume", "pipeline": "builtin"})).await?;
    wait_succeeded(c, before + args.jobs as u64, PHASE_TIMEOUT).await?;
    let took = started.elapsed();
    println!("drain_jobs={}", args.jobs);
    println!("drain_seconds={:.2}", took.as_secs_f64());
    println!(
        "drain_jobs_per_s={:.0}",
        args.jobs as f64 / took.as_secs_f64()
    );
    let after = node.sample().ok_or("the node is gone")?;
    println!("rss_after_drain_bytes={}", after.rss_bytes);
    Ok(())
}
