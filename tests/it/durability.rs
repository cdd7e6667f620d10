//! Durability: acknowledged jobs survive `kill -9`, a graceful stop lets running jobs finish,
//! a data dir cannot be opened twice, a bad config stops the node before it starts, and a
//! damaged journal is refused with what sled's recovery cut kept beside it; and a node process
//! on port 0 says where it listens (the file every process test here finds its node by).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::process::spawn_node;
use crate::support::{finished, job_ids, poll, req, status, submit, until_running, TestNode};

const WAIT: Duration = Duration::from_secs(60);

/// Writes a config for the binary (its ports 0) and returns it and the node's data dir.
fn write_config(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let data = dir.join("data");
    let path = dir.join("node.toml");
    let text = format!(
        "[node]\ndata_dir = {:?}\nshutdown_timeout = \"10s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [console]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\n[pipelines.builtin]\nworkers = 4\nretry = {{ max_retries = 3, base_delay = \"50ms\", max_delay = \"1s\" }}\n",
        data.display().to_string()
    );
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    (path, data)
}

/// Ensures that a node killed with SIGKILL while 1,500 acknowledged jobs are queued or running
/// loses none of them: restarted on the same dir it runs every one to `succeeded`; and that
/// `shutdown` then stops it with exit code 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_job() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, data) = write_config(tmp.path());
    let mut child = spawn_node(&config);
    let mut c = child.client(&data).await;
    let mut ids: Vec<String> = Vec::new();
    for _ in 0..3 {
        let jobs: Vec<Value> = (0..500)
            .map(|_| json!({"job": "builtin.sleep", "params": {"ms": 5}}))
            .collect();
        let a = req(&mut c, json!({"cmd": "submit_batch", "jobs": jobs})).await;
        assert_eq!(a["ok"], true, "{a}");
        ids.extend(
            a["job_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string()),
        );
    }
    let before = req(&mut c, json!({"cmd": "stats"})).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done_before = before["totals"]["succeeded"].as_u64().unwrap();
    assert!(
        done_before < 1500,
        "the kill must hit unfinished work, but {done_before} had finished"
    );

    let mut child = spawn_node(&config);
    let mut c = child.client(&data).await;
    poll(
        &mut c,
        "every replayed job to finish",
        WAIT,
        json!({"cmd": "stats"}),
        |s| s["jobs"] == json!({"pending": 0, "running": 0, "retrying": 0}),
    )
    .await;
    for id in &ids {
        let j = status(&mut c, id).await;
        assert_eq!(j["status"], "succeeded", "{j}");
    }
    let a = req(&mut c, json!({"cmd": "shutdown"})).await;
    assert_eq!(a["draining"], true);
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(code.success(), "exit status {code:?}");
}

/// Ensures that a node on port 0 says where it listens: `listening.json` in its data dir names
/// its pid and the ports it took, the admin port answers there, `/metrics` serves Prometheus
/// text there, and a clean stop removes the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_port_0_says_where_it_listens() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, data) = write_config(tmp.path());
    let mut child = spawn_node(&config);
    let at = child.listening(&data).await;
    assert_eq!(at.pid, child.id());
    let console = at.console.expect("the console is on");
    for port in [at.admin.port(), at.metrics.port(), console.port()] {
        assert_ne!(port, 0, "{at:?}");
    }
    let mut c = child.client(&data).await;
    assert_eq!(req(&mut c, json!({"cmd": "ping"})).await["ok"], true);
    let metrics = reqwest::get(format!("http://{}/metrics", at.metrics))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("warden_build_info"), "{text}");
    req(&mut c, json!({"cmd": "shutdown"})).await;
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(code.success(), "exit status {code:?}");
    assert!(
        !warden::listening::Listening::path(&data).exists(),
        "a stopped node listens nowhere"
    );
}

/// Ensures that a bad config file stops the binary before it starts, with a message that names
/// the file and the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_names_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.toml");
    std::fs::write(&path, "[pipelines.builtin]\nwrokers = 4\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["node", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("pipelines.builtin.wrokers"),
        "{err}"
    );
}

/// Ensures that a graceful stop lets a running job finish before the node exits, and that a
/// restart on the same dir finds it succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_finishes_running_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let node = TestNode::start_in(tmp.path(), |_| {}).await.unwrap();
    let mut c = node.client().await;
    let id = submit(&mut c, "builtin.sleep", json!({"ms": 300})).await;
    until_running(&mut c, &id).await;
    node.stop().await.unwrap();
    let node = TestNode::start_in(tmp.path(), |_| {}).await.unwrap();
    let mut c = node.client().await;
    assert_eq!(status(&mut c, &id).await["status"], "succeeded");
}

/// Ensures that a paused pipeline stays paused across a restart (`pipelines` says so, its jobs
/// wait), and that its queued jobs are replayed and run once it is resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_pipeline_and_its_queue_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let node = TestNode::start_in(tmp.path(), |_| {}).await.unwrap();
    let mut c = node.client().await;
    req(&mut c, json!({"cmd": "pause", "pipeline": "builtin"})).await;
    let id = submit(&mut c, "builtin.noop", json!({})).await;
    node.stop().await.unwrap();
    let node = TestNode::start_in(tmp.path(), |_| {}).await.unwrap();
    let mut c = node.client().await;
    let p = req(&mut c, json!({"cmd": "pipelines"})).await;
    let builtin = p["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "builtin")
        .unwrap();
    assert_eq!(builtin["paused"], true, "{p}");
    assert_eq!(builtin["queue"]["normal"], 1, "{p}");
    let w = req(&mut c, json!({"cmd": "why", "job_id": id})).await;
    assert_eq!(w["blocker"]["kind"], "paused", "{w}");
    req(&mut c, json!({"cmd": "resume", "pipeline": "builtin"})).await;
    let j = finished(&mut c, &id, WAIT).await;
    assert_eq!(j["status"], "succeeded");
}

/// Ensures that a second node on a data dir held by a live node fails with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_is_locked_by_a_live_node() {
    let node = TestNode::start().await;
    let second = TestNode::start_in(node.dir(), |_| {}).await;
    let err = second
        .err()
        .expect("the second node must not start")
        .to_string();
    assert!(err.contains("in use by another live node"), "{err}");
}

/// Ensures that the `shutdown` command stops an in-process node cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_command_stops_the_node() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    assert_eq!(
        req(&mut c, json!({"cmd": "shutdown"})).await["draining"],
        true
    );
    node.ended(WAIT).await.unwrap();
}

/// Ensures that SIGTERM stops the binary gracefully: a running job finishes, the journal is
/// flushed, and the exit code is 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_gracefully_with_exit_0() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, data) = write_config(tmp.path());
    let mut child = spawn_node(&config);
    let mut c = child.client(&data).await;
    let id = submit(&mut c, "builtin.sleep", json!({"ms": 300})).await;
    until_running(&mut c, &id).await;
    // The shell's own `kill`, so the test needs no procps.
    let killed = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status()
        .unwrap();
    assert!(killed.success());
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(code.success(), "exit status {code:?}");
    let mut child = spawn_node(&config);
    let mut c = child.client(&data).await;
    assert_eq!(
        status(&mut c, &id).await["status"],
        "succeeded",
        "the running job finished before the exit"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Ensures that a state a client has seen never goes back: 500 no-ops are polled until `list`
/// shows every one `succeeded`, the node is killed with SIGKILL at once and restarted; no job
/// ran again (each history has exactly one `started`). Three rounds, since the race it guards
/// against (a success visible before it is durable) hit 1-4 jobs a round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seen_successes_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, data) = write_config(tmp.path());
    for round in 0..3 {
        let mut child = spawn_node(&config);
        let mut c = child.client(&data).await;
        let jobs: Vec<Value> = (0..500).map(|_| json!({"job": "builtin.noop"})).collect();
        let a = req(&mut c, json!({"cmd": "submit_batch", "jobs": jobs})).await;
        assert_eq!(a["ok"], true, "{a}");
        let ids = job_ids(&a);
        poll(
            &mut c,
            "every job to be seen succeeded",
            WAIT,
            // The 500 newest jobs are this round's.
            json!({"cmd": "list", "limit": 500}),
            |l| {
                l["jobs"]
                    .as_array()
                    .is_some_and(|j| j.iter().all(|j| j["status"] == "succeeded"))
            },
        )
        .await;
        child.kill().unwrap(); // SIGKILL, right after the answer
        child.wait().unwrap();

        let mut child = spawn_node(&config);
        let mut c = child.client(&data).await;
        for id in &ids {
            let h = req(&mut c, json!({"cmd": "history", "job_id": id})).await;
            let started = h["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["kind"] == "started")
                .count();
            assert_eq!(started, 1, "round {round}: job {id} ran again: {h}");
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// A small tmpfs for one test, unmounted on drop; `None` where mounting is not permitted.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            .then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// Fills the file system of `dir` with `dir/filler` until about `leave` bytes are free (`df`).
fn fill_up(dir: &Path, leave: u64) {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let avail: u64 = text.lines().nth(1).unwrap().trim().parse().unwrap();
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..avail.saturating_sub(leave) >> 20 {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
}

/// Ensures that a full disk is survived, not just reported: on a real tmpfs with
/// `min_free_space`, a submit while the disk is (nearly) full is refused with `storage_unavailable`
/// naming the data dir and leaves nothing queued, `stats` says the journal refuses writes, and
/// once the space is back the node accepts work again by itself; every job acknowledged before
/// runs. Skips where a tmpfs cannot be mounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_work_and_recovers_by_itself() {
    let Some(fs) = Tmpfs::mount("64m") else {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    };
    let data = fs.0.path().join("data");
    let node = TestNode::start_in(&data, |a| a.min_free_space = 8 << 20)
        .await
        .unwrap();
    let mut c = node.client().await;
    req(&mut c, json!({"cmd": "pause", "pipeline": "builtin"})).await;
    let before = submit(&mut c, "builtin.noop", json!({})).await;

    // Below `min_free_space`, with room left for what sled writes meanwhile.
    fill_up(fs.0.path(), 4 << 20);
    let refused = poll(
        &mut c,
        "a submit to be refused",
        WAIT,
        json!({"cmd": "submit", "job": "builtin.noop"}),
        |a| a["ok"] == false,
    )
    .await;
    assert_eq!(refused["error"]["code"], "storage_unavailable", "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains(&data.display().to_string()), "{message}");
    let stats = req(&mut c, json!({"cmd": "stats"})).await;
    assert_eq!(stats["journal"]["accepting_writes"], false, "{stats}");
    let pending = stats["jobs"]["pending"].as_u64().unwrap();

    std::fs::remove_file(fs.0.path().join("filler")).unwrap();
    let accepted = poll(
        &mut c,
        "the node to accept work again",
        WAIT,
        json!({"cmd": "submit", "job": "builtin.noop"}),
        |a| a["ok"] == true,
    )
    .await;
    let stats = req(&mut c, json!({"cmd": "stats"})).await;
    assert_eq!(stats["journal"]["accepting_writes"], true, "{stats}");
    assert_eq!(
        stats["jobs"]["pending"].as_u64().unwrap(),
        pending + 1,
        "refused submits left nothing queued: {stats}"
    );
    req(&mut c, json!({"cmd": "resume", "pipeline": "builtin"})).await;
    for id in [before.as_str(), accepted["job_id"].as_str().unwrap()] {
        assert_eq!(finished(&mut c, id, WAIT).await["status"], "succeeded");
    }
    drop(c);
    node.stop().await.unwrap();
}

/// Ensures that the binary refuses a data dir whose `db` was damaged after a clean stop: it
/// exits non-zero saying committed writes were lost and naming the folder where the bytes
/// sled's recovery overwrote were saved, those bytes are there, and `warden check` reports the
/// loss (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_is_refused_and_what_recovery_cut_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let (config, data) = write_config(tmp.path());
    let mut child = spawn_node(&config);
    let mut c = child.client(&data).await;
    req(&mut c, json!({"cmd": "pause", "pipeline": "builtin"})).await;
    for _ in 0..2 {
        let jobs: Vec<Value> = (0..1_000).map(|_| json!({"job": "builtin.noop"})).collect();
        let a = req(&mut c, json!({"cmd": "submit_batch", "jobs": jobs})).await;
        assert_eq!(job_ids(&a).len(), 1_000, "{a}");
    }
    req(&mut c, json!({"cmd": "shutdown"})).await;
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(code.success(), "exit status {code:?}");
    let data = tmp.path().join("data");
    let db = data.join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    let used = bytes.iter().rposition(|&b| b != 0).unwrap();
    bytes[used / 2] ^= 0x40;
    std::fs::write(&db, &bytes).unwrap();

    let mut refused = spawn_node(&config);
    let (status, stderr) = tokio::task::spawn_blocking(move || {
        let mut stderr = String::new();
        let mut pipe = refused.stderr.take().unwrap();
        std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
        (refused.wait().unwrap(), stderr)
    })
    .await
    .unwrap();
    assert!(!status.success(), "a damaged journal was opened: {stderr}");
    assert!(stderr.contains("lost committed writes"), "{stderr}");
    let saved = data.join("recovery");
    assert!(stderr.contains(&saved.display().to_string()), "{stderr}");
    let kept: Vec<_> = std::fs::read_dir(&saved)
        .unwrap()
        .flat_map(|when| std::fs::read_dir(when.unwrap().path()).unwrap())
        .collect();
    assert!(!kept.is_empty(), "nothing saved under {}", saved.display());

    let check = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["check", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{report}");
    assert!(report.contains("committed writes were lost"), "{report}");
}
