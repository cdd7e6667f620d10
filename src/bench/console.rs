//! `warden bench --console [--jobs N]`: what a console page costs with a large history. It
//! writes N finished jobs (default 1,000,000: nine in ten succeeded, one in ten dead-lettered)
//! straight into a fresh journal, starts `warden node` on it as a child process (the default
//! config, free ports), and times each main page over plain HTTP/1.1 (a new connection per
//! request, as a browser's first load), printing `console_<page>_p50_ms` and `_p99_ms`.
//!
//! The pages read the journal's indexes and a page of records, so their times should not
//! depend on N; compare a run with `--jobs 1000`.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden_actors::job::{now_ms, EventKind, JobEvent, JobId, JobRecord, JobStatus, Priority};
use warden_actors::store::journal::{Change, Journal};

use super::process::NodeProcess;
use super::PHASE_TIMEOUT;

/// Requests per page; the median and the 99th percentile are reported.
const ROUNDS: usize = 40;
/// Jobs per journal write while seeding.
const SEED_BATCH: usize = 10_000;

/// Seeds, starts, times, stops.
pub async fn measure(exe: &Path, dir: &Path, jobs: usize) -> Result<(), String> {
    let node_dir = dir.join("console");
    let data = node_dir.join("data");
    std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    let started = Instant::now();
    let sample = tokio::task::spawn_blocking(move || seed(&data, jobs))
        .await
        .map_err(|e| e.to_string())??;
    println!("console_history_jobs={jobs}");
    println!("console_seed_s={:.1}", started.elapsed().as_secs_f64());
    let mut node = NodeProcess::spawn(exe, &node_dir)?;
    let ready = node.wait_ready(PHASE_TIMEOUT).await?;
    println!("console_start_to_ping_ms={}", ready.as_millis());
    let pages = [
        ("overview", "/".to_string()),
        ("jobs", "/jobs".into()),
        ("jobs_failed", "/jobs?status=failed".into()),
        ("jobs_by_name", "/jobs?name=builtin.noop".into()),
        ("jobs_by_pipeline", "/jobs?pipeline=builtin".into()),
        ("jobs_params_search", "/jobs?q=no-such-text".into()),
        ("dead", "/dead".into()),
        ("job", format!("/jobs/{sample}")),
        ("pipelines", "/pipelines".into()),
        ("tree", "/tree".into()),
    ];
    for (name, path) in pages {
        let (p50, p99) = time_page(node.console()?, &path).await?;
        println!("console_{name}_p50_ms={p50:.2} console_{name}_p99_ms={p99:.2}");
    }
    let status = node.shutdown(PHASE_TIMEOUT).await?;
    println!("console_node_exit_code={}", status.code().unwrap_or(-1));
    Ok(())
}

/// Writes `jobs` finished jobs; returns one dead letter's id (for the job page).
fn seed(data: &Path, jobs: usize) -> Result<JobId, String> {
    let journal = Journal::open(data).map_err(|e| e.to_string())?;
    let mut sample = None;
    let mut batch = Vec::with_capacity(SEED_BATCH);
    for i in 0..jobs {
        let failed = i % 10 == 0;
        let r = record(i, failed);
        if failed {
            sample = Some(r.id);
        }
        batch.push(Change::new(&r).map_err(|e| e.to_string())?);
        if batch.len() == SEED_BATCH {
            journal.write(&batch).map_err(|e| e.to_string())?;
            batch.clear();
        }
    }
    journal.write(&batch).map_err(|e| e.to_string())?;
    journal.sync_now().map_err(|e| e.to_string())?;
    sample.ok_or_else(|| "no job was seeded".to_string())
}

/// A finished job as the dispatcher would have journaled it.
fn record(i: usize, failed: bool) -> JobRecord {
    let at = now_ms();
    let event = |kind, attempt, detail: Option<&str>| JobEvent {
        at,
        kind,
        attempt,
        detail: detail.map(str::to_string),
    };
    let (name, status, end, error) = if failed {
        let e = "builtin.fail_permanent: fails on purpose";
        (
            "builtin.fail_permanent",
            JobStatus::Failed,
            EventKind::DeadLettered,
            Some(e),
        )
    } else {
        (
            "builtin.noop",
            JobStatus::Succeeded,
            EventKind::Succeeded,
            None,
        )
    };
    JobRecord {
        id: JobId::new(),
        name: name.into(),
        pipeline: "builtin".into(),
        params: format!("{{\"ticker\":\"T{}\"}}", i % 5000),
        priority: Priority::Normal,
        status,
        attempts: 1,
        max_retries: 3,
        unique_key: None,
        created_at: at,
        started_at: Some(at),
        completed_at: Some(at),
        next_attempt_at: None,
        error: error.map(str::to_string),
        result: (!failed).then(|| "null".to_string()),
        parent_id: None,
        workflow_id: None,
        children: vec![],
        history: vec![
            event(EventKind::Submitted, 0, None),
            event(EventKind::Started, 1, None),
            event(end, 1, error),
        ],
    }
}

/// The median and 99th percentile of `GET path`, in ms; a non-200 answer is an error.
async fn time_page(addr: std::net::SocketAddr, path: &str) -> Result<(f64, f64), String> {
    let mut took = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t0 = Instant::now();
        let status = get(addr, path).await?;
        took.push(t0.elapsed());
        if status != 200 {
            return Err(format!("GET {path}: status {status}"));
        }
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok((ms(took[ROUNDS / 2]), ms(took[ROUNDS * 99 / 100])))
}

/// One `GET` over a new connection; the status code once the whole body is read.
async fn get(addr: std::net::SocketAddr, path: &str) -> Result<u16, String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("console {addr}: {e}"))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).await.map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&body[..body.len().min(32)]).to_string();
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("GET {path}: not an HTTP answer: {head:?}"))
}
