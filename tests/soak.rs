//! The soak test (`just soak`, ignored by `cargo test`): the real `warden` binary at its default
//! config (only the data dir and ports changed) under a million jobs twice: (a) submitted
//! continuously while they run, (b) queued on a paused pipeline, `kill -9`, restarted on the same
//! data dir and drained. A sampler reads the node's RSS, open fds and threads every second. It
//! asserts the node never dies on its own, answers every `stats`, RSS after the drain stays within
//! the start plus sled's page cache plus 64 MiB, and fds and threads do not grow; it prints the
//! figures.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use warden::bench::load::{ok, submit_parallel, submit_sequential, succeeded, unfinished};
use warden::bench::process::{sample, NodeProcess, Sample};
use warden::client::Client;

const JOBS: usize = 1_000_000;
const BATCH: usize = 1_000;
const PHASE: Duration = Duration::from_secs(1800);
/// sled's page cache bound at the default config (`[node] cache_size`).
const SLED_CACHE_BYTES: u64 = warden_actors::store::journal::DEFAULT_CACHE_BYTES;
const RSS_SLACK_BYTES: u64 = 64 << 20;
/// How long the RSS after the drain may take to settle (see [`settled`]).
const SETTLE_FOR: Duration = Duration::from_secs(30);
/// Allowed drift in fds: a few connections may still be closing.
const FD_SLACK: u64 = 8;
/// Allowed drift in threads: the journal's `spawn_blocking` threads linger 10 s after a burst
/// (tokio's keep-alive); a leak grows past this.
const THREAD_SLACK: u64 = 16;

/// Every sample the sampler took, and the pid it samples (0: none).
#[derive(Default)]
struct Samples {
    pid: AtomicU32,
    taken: Mutex<Vec<Sample>>,
}

/// Samples the current pid every second until the test ends.
fn spawn_sampler(samples: Arc<Samples>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            let pid = samples.pid.load(Ordering::Relaxed);
            if let Some(s) = (pid != 0).then(|| sample(pid)).flatten() {
                samples.taken.lock().expect("sampler lock").push(s);
            }
        }
    })
}

/// The allocator gives freed pages back to the OS over seconds (jemalloc's decay), so steady
/// state is read by sampling once a second until RSS is within `bound` or stops falling, for at
/// most `SETTLE_FOR`; returns the last sample.
async fn settled(node: &NodeProcess, bound: u64) -> Sample {
    let until = Instant::now() + SETTLE_FOR;
    let mut last = now(node);
    while last.rss_bytes > bound && Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let next = now(node);
        let falling = next.rss_bytes < last.rss_bytes;
        last = next;
        if !falling {
            break;
        }
    }
    last
}

fn now(node: &NodeProcess) -> Sample {
    node.sample().expect("the node is alive")
}

/// Fails with the log's tail if the node has exited.
fn assert_alive(node: &mut NodeProcess) {
    if let Some(status) = node.exited().expect("try_wait") {
        panic!("{}", node.ended_early(status));
    }
}

/// Waits until no job is unfinished, checking every few seconds that the node is alive. A
/// `stats` the node fails to answer (the dispatcher too busy) is counted in `stalls`, not fatal,
/// so that the run still yields its figures.
async fn drain(node: &mut NodeProcess, c: &mut Client, stalls: &mut Vec<String>) {
    let deadline = Instant::now() + PHASE;
    loop {
        match unfinished(c).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => stalls.push(e),
        }
        assert_alive(node);
        assert!(
            Instant::now() < deadline,
            "jobs still unfinished after {PHASE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (a): a million jobs submitted over 2 connections while the workers run them; jobs/s.
async fn continuous(node: &mut NodeProcess, c: &mut Client, stalls: &mut Vec<String>) -> f64 {
    let before = succeeded(c).await.expect("stats");
    let started = Instant::now();
    let sent = submit_parallel(node.admin().expect("ready"), JOBS, BATCH, 2)
        .await
        .expect("submits");
    drain(node, c, stalls).await;
    let done = succeeded(c).await.expect("stats") - before;
    assert_eq!(done, sent as u64, "every job succeeded");
    let rate = sent as f64 / started.elapsed().as_secs_f64();
    println!("continuous_jobs={sent} continuous_jobs_per_s={rate:.0}");
    rate
}

/// (b): a million queued on a paused `builtin`, `kill -9`, a restart on the same data dir, then
/// the drain. Pausing may not survive a restart, so `pause` is sent again as soon as the node
/// answers; jobs that started before it are counted.
async fn backlog_across_kill(
    node: &mut NodeProcess,
    samples: &Samples,
    stalls: &mut Vec<String>,
) -> Client {
    let mut c = Client::connect_addr(node.admin().expect("ready"))
        .await
        .expect("connect");
    ok(&mut c, &json!({"cmd": "pause", "pipeline": "builtin"}))
        .await
        .expect("pause");
    submit_sequential(&mut c, JOBS, BATCH).await.expect("queue");
    println!("queued_rss_bytes={}", now(node).rss_bytes);
    drop(c);
    node.kill9().expect("kill -9");
    samples.pid.store(0, Ordering::Relaxed);
    let killed = Instant::now();
    node.restart().expect("restart");
    samples.pid.store(node.pid(), Ordering::Relaxed);
    node.wait_ready(PHASE).await.expect("ready after restart");
    let restart_to_ping = killed.elapsed();
    let mut c = Client::connect_addr(node.admin().expect("ready"))
        .await
        .expect("connect");
    // The pause is journaled: nothing ran before `resume` (`stats` totals count from this start).
    let ran_early = succeeded(&mut c).await.expect("stats");
    assert_eq!(ran_early, 0, "the pause survived the restart");
    println!("restart_to_ping_ms={}", restart_to_ping.as_millis());
    let log = std::fs::read_to_string(node.log_path()).unwrap_or_default();
    println!(
        "restart_journal_open_ms={} restart_replay_ms={}",
        last_took_ms(&log, "journal opened"),
        last_took_ms(&log, "journal replayed")
    );
    println!(
        "restarted_rss_bytes={} ran_before_pause={ran_early}",
        now(node).rss_bytes
    );
    let started = Instant::now();
    ok(&mut c, &json!({"cmd": "resume", "pipeline": "builtin"}))
        .await
        .expect("resume");
    drain(node, &mut c, stalls).await;
    let took = started.elapsed().as_secs_f64();
    let done = succeeded(&mut c).await.expect("stats");
    assert_eq!(
        done, JOBS as u64,
        "every queued job succeeded after the restart"
    );
    let rate = (done - ran_early) as f64 / took;
    println!("drain_seconds={took:.1} drain_jobs_per_s={rate:.0}");
    c
}

/// Ensures that the real binary at its default config runs a million jobs submitted while they
/// run, then drains a million queued across a `kill -9` and a restart, without dying, answering
/// every `stats` meanwhile, with RSS
/// back within start + sled's page cache + 64 MiB after the drain, and without growing its open
/// file descriptors or threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: run with `just soak`"]
async fn a_million_jobs_twice_across_a_kill() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_warden"));
    let mut node = NodeProcess::spawn(exe, tmp.path()).expect("spawn");
    node.wait_ready(PHASE).await.expect("ready");
    let samples = Arc::new(Samples::default());
    samples.pid.store(node.pid(), Ordering::Relaxed);
    let sampler = spawn_sampler(samples.clone());
    let mut c = Client::connect_addr(node.admin().expect("ready"))
        .await
        .expect("connect");
    let start = now(&node);
    println!(
        "start_rss_bytes={} start_fds={} start_threads={}",
        start.rss_bytes, start.fds, start.threads
    );

    let mut stalls = Vec::new();
    continuous(&mut node, &mut c, &mut stalls).await;
    println!("after_continuous_rss_bytes={}", now(&node).rss_bytes);
    drop(c);
    let c = backlog_across_kill(&mut node, &samples, &mut stalls).await;
    let bound = start.rss_bytes + SLED_CACHE_BYTES + RSS_SLACK_BYTES;
    println!("drained_rss_bytes={}", now(&node).rss_bytes);
    let end = settled(&node, bound).await;
    sampler.abort();
    let taken = std::mem::take(&mut *samples.taken.lock().expect("sampler lock"));
    let peak = taken.iter().map(|s| s.rss_bytes).max().unwrap_or(0);
    let max_fds = taken.iter().map(|s| s.fds).max().unwrap_or(0);
    let max_threads = taken.iter().map(|s| s.threads).max().unwrap_or(0);
    println!(
        "end_rss_bytes={} end_fds={} end_threads={}",
        end.rss_bytes, end.fds, end.threads
    );
    println!(
        "peak_rss_bytes={peak} max_fds={max_fds} max_threads={max_threads} samples={}",
        taken.len()
    );
    println!("stats_unanswered={}", stalls.len());
    drop(c);
    node.shutdown(PHASE).await.expect("shutdown");

    assert!(
        stalls.is_empty(),
        "the node failed {} stats requests: {stalls:?}",
        stalls.len()
    );
    assert!(
        end.fds <= start.fds + FD_SLACK,
        "fds grew: {} -> {}",
        start.fds,
        end.fds
    );
    assert!(
        end.threads <= start.threads + THREAD_SLACK,
        "threads grew: {} -> {}",
        start.threads,
        end.threads
    );
    assert!(
        end.rss_bytes <= bound,
        "RSS after the drain {} > start {} + sled cache {SLED_CACHE_BYTES} + {RSS_SLACK_BYTES}",
        end.rss_bytes,
        start.rss_bytes
    );
}

/// The `took_ms` field of the last log line with `message` ("?" when absent); the log may carry
/// ANSI colour codes between a field's name and its value.
fn last_took_ms(log: &str, message: &str) -> String {
    let Some(line) = log.lines().rev().find(|l| l.contains(message)) else {
        return "?".into();
    };
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
        .split("took_ms=")
        .nth(1)
        .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect())
        .unwrap_or_else(|| "?".into())
}
