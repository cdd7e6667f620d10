//! The exec figure of `warden bench`: how many exec jobs a node runs per second when the task is
//! trivial, which is the cost of a process per attempt (spawn, pipes, the stdin/stdout protocol,
//! the process group, reaping), beside the in-process no-op figures. It runs its own `warden
//! node` child (the default config plus one exec pipeline), after the main figures, so it does
//! not disturb them:
//!
//! - `exec_sh_jobs_per_s`: `sh trivial.sh` (`exit 0`), the spawn cost of a small script;
//! - `exec_python_jobs_per_s`: a Python script that reads its job and prints a result (the
//!   interpreter itself, resolved once; skipped without `python3`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use super::load::{ok, succeeded, wait_succeeded};
use super::process::NodeProcess;
use super::PHASE_TIMEOUT;
use crate::client::Client;

/// Jobs per figure.
const JOBS: usize = 2000;
/// Jobs per `submit_batch`.
const BATCH: usize = 500;

/// Runs the exec node and prints its figures.
pub async fn measure(exe: &Path, dir: &Path) -> Result<(), String> {
    let jobs = dir.join("jobs");
    std::fs::create_dir_all(&jobs).map_err(|e| format!("{}: {e}", jobs.display()))?;
    let write = |name: &str, text: &str| {
        let path = jobs.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    write("trivial.sh", "exit 0\n")?;
    write(
        "trivial.py",
        "import json, sys\njob = json.load(sys.stdin)\nprint(json.dumps({'result': job['attempt']}))\n",
    )?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = (2 * cores).max(4);
    let python = python();
    let mut extra = format!(
        "\n[pipelines.bench]\nworkers = {workers}\n\n[tasks.\"bench.sh\"]\ncommand = [\"sh\", \"trivial.sh\"]\ncwd = {:?}\n",
        jobs.display().to_string()
    );
    if let Some(py) = &python {
        extra += &format!(
            "\n[tasks.\"bench.python\"]\ncommand = [{:?}, \"trivial.py\"]\ncwd = {:?}\n",
            py.display().to_string(),
            jobs.display().to_string()
        );
    }
    let node_dir = dir.join("exec-node");
    std::fs::create_dir_all(&node_dir).map_err(|e| format!("{}: {e}", node_dir.display()))?;
    let mut node = NodeProcess::spawn_with(exe, &node_dir, &extra)?;
    node.wait_ready(PHASE_TIMEOUT).await?;
    let mut c = Client::connect_addr(node.admin()?)
        .await
        .map_err(|e| e.to_string())?;
    println!("exec_workers={workers}");
    println!("exec_jobs={JOBS}");
    let rate = run(&mut c, "bench.sh").await?;
    println!("exec_sh_jobs_per_s={rate:.0}");
    if python.is_some() {
        let rate = run(&mut c, "bench.python").await?;
        println!("exec_python_jobs_per_s={rate:.0}");
    }
    drop(c);
    node.shutdown(PHASE_TIMEOUT).await?;
    Ok(())
}

/// [`JOBS`] jobs of `job`, from the first submit until every one succeeded, in jobs/s.
async fn run(c: &mut Client, job: &str) -> Result<f64, String> {
    let before = succeeded(c).await?;
    let started = Instant::now();
    for _ in 0..JOBS / BATCH {
        let jobs: Vec<Value> = (0..BATCH).map(|_| json!({ "job": job })).collect();
        ok(c, &json!({"cmd": "submit_batch", "jobs": jobs})).await?;
    }
    wait_succeeded(c, before + (JOBS / BATCH * BATCH) as u64, PHASE_TIMEOUT).await?;
    Ok((JOBS / BATCH * BATCH) as f64 / started.elapsed().as_secs_f64())
}

/// The Python interpreter itself (not a wrapper script in front of it), when there is one.
fn python() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    path.is_absolute().then_some(path)
}
