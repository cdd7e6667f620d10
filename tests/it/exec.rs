//! Exec tasks on a real node, with real processes: small Python scripts written into a temporary
//! dir and run by the `ext` pipeline. Params in, records, progress and a result out; exit codes
//! 75, 65 and crashes; the hard limit and cancel killing the whole process group (checked in
//! `/proc`); protocol errors on garbage; 100 jobs on 4 workers; and the start-time check of
//! commands and paths through the real binary.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warden_actors::args::{ExecTaskArgs, NodeArgs, PipelineArgs, RetryPolicy, TimeLimits};
use warden_actors::exec::check;

use crate::support::{
    eventually, finished, job_ids, poll, req, status, submit, until_running, TestNode,
};

const WAIT: Duration = Duration::from_secs(60);

/// A temporary dir of scripts, and the exec tasks that run them.
struct Scripts {
    dir: tempfile::TempDir,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Writes `body` as `<task>.py` and returns the exec task `ext.<task>` running it.
    fn python(&self, task: &str, body: &str) -> ExecTaskArgs {
        let file = format!("{task}.py");
        let prelude =
            "import json, os, signal, subprocess, sys, time\njob = json.load(sys.stdin)\n\
                       def say(**kw):\n    print(json.dumps(kw), flush=True)\n";
        std::fs::write(self.path(&file), format!("{prelude}{body}\n")).unwrap();
        let args = ExecTaskArgs {
            name: format!("ext.{task}"),
            command: vec![python().into(), file],
            cwd: self.dir.path().to_path_buf(),
            env: Default::default(),
            inherit_env: vec![],
            max_line_bytes: 64 << 10,
            stderr_tail_bytes: 4 << 10,
        };
        let path = std::env::var_os("PATH");
        check::resolve(args, self.dir.path(), path.as_deref()).expect("python3 is installed")
    }
}

/// The Python interpreter itself, not a wrapper in front of it (pyenv's shim is a shell script
/// that adds variables and takes longer to start).
fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is installed");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

/// Adds the `ext` pipeline running `tasks` on `workers` workers, with quick retries.
fn ext(a: &mut NodeArgs, workers: usize, tasks: Vec<ExecTaskArgs>) {
    let mut p: PipelineArgs = a.pipelines[0].clone();
    p.name = "ext".into();
    p.workers = workers;
    p.retry = RetryPolicy {
        max_retries: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    };
    p.exec = tasks;
    a.pipelines.push(p);
}

/// The kinds and details of a job's history.
async fn history(c: &mut warden::client::Client, id: &str) -> Vec<(String, String)> {
    let h = req(c, json!({"cmd": "history", "job_id": id})).await;
    h["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let detail = e["detail"].as_str().unwrap_or_default().to_string();
            (e["kind"].as_str().unwrap().to_string(), detail)
        })
        .collect()
}

/// Asserts that no actor of the tree failed (replacements on purpose are fine).
async fn assert_no_failures(c: &mut warden::client::Client) {
    fn walk(n: &Value, failed: &mut Vec<String>) {
        if !n["last_failure"].is_null() {
            failed.push(format!("{}: {}", n["path"], n["last_failure"]));
        }
        for child in n["children"].as_array().into_iter().flatten() {
            walk(child, failed);
        }
    }
    let t = req(c, json!({"cmd": "tree"})).await;
    let mut failed = Vec::new();
    walk(&t["tree"], &mut failed);
    assert!(failed.is_empty(), "unplanned failures: {failed:?}");
}

/// Whether process `pid` is gone: no `/proc` entry, or a zombie nobody reaped yet.
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Reads the pids a script wrote, one per line, once it wrote `n` of them.
async fn pids(file: &Path, n: usize) -> Vec<u32> {
    eventually("the script's pids", WAIT, || async {
        let text = std::fs::read_to_string(file).ok()?;
        let pids: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        (pids.len() >= n).then_some(pids)
    })
    .await
}

/// Ensures that an exec task gets its job on stdin and its environment, and that its records,
/// progress and result come back: records in the store (a re-run stores nothing new), progress
/// on the job, the last result as the job's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_in_records_progress_and_result_out() {
    let s = Scripts::new();
    let task = s.python(
        "echo",
        r#"n = job["params"]["n"]
say(progress={"done": 1, "total": 2, "message": "reading"})
say(record={"key": f"ext/echo/{n}", "value": {"n": n, "name": job["name"]}})
say(result={"first": True})
say(progress={"done": 2, "total": 2, "message": "done"})
say(result={"n": n, "attempt": job["attempt"], "job_id": job["job_id"],
            "env": {k: os.environ.get(k) for k in ["WARDEN_JOB_ID", "WARDEN_JOB_NAME", "WARDEN_ATTEMPT", "PYTHONUNBUFFERED"]},
            "addr": os.environ["WARDEN_ADDR"], "cwd": os.getcwd(), "keys": sorted(os.environ)})"#,
    );
    let node = TestNode::start_with(|a| ext(a, 2, vec![task])).await;
    let mut c = node.client().await;
    let id = submit(&mut c, "ext.echo", json!({"n": 7})).await;
    let j = finished(&mut c, &id, WAIT).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    let r = &j["result"];
    assert_eq!(
        (r["n"].as_u64(), r["attempt"].as_u64()),
        (Some(7), Some(1)),
        "{r}"
    );
    assert_eq!(r["job_id"], id.as_str());
    assert_eq!(
        r["env"],
        json!({"WARDEN_JOB_ID": id, "WARDEN_JOB_NAME": "ext.echo", "WARDEN_ATTEMPT": "1", "PYTHONUNBUFFERED": "1"})
    );
    assert_eq!(r["addr"], node.addr().to_string());
    assert_eq!(
        Path::new(r["cwd"].as_str().unwrap()),
        s.dir.path().canonicalize().unwrap()
    );
    let keys: Vec<&str> = r["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        keys.iter().all(|k| k.starts_with("WARDEN_")
            || k.starts_with("LC_")
            || [
                "PATH",
                "HOME",
                "USER",
                "LOGNAME",
                "LANG",
                "TZ",
                "TMPDIR",
                "PYTHONUNBUFFERED"
            ]
            .contains(k)),
        "the environment is minimal: {keys:?}"
    );
    let p = &j["progress"];
    assert_eq!(
        (p["done"].as_u64(), p["total"].as_u64()),
        (Some(2), Some(2)),
        "{j}"
    );
    assert_eq!(
        (p["message"].as_str(), p["attempt"].as_u64()),
        (Some("done"), Some(1))
    );

    let recs = req(&mut c, json!({"cmd": "records", "prefix": "ext/echo/"})).await;
    assert_eq!(recs["records"][0]["key"], "ext/echo/7", "{recs}");
    assert_eq!(
        recs["records"][0]["value"],
        json!({"n": 7, "name": "ext.echo"})
    );
    let stamp = recs["records"][0]["updated_at"].clone();
    let again = submit(&mut c, "ext.echo", json!({"n": 7})).await;
    assert_eq!(finished(&mut c, &again, WAIT).await["status"], "succeeded");
    let recs = req(&mut c, json!({"cmd": "records", "prefix": "ext/echo/"})).await;
    assert_eq!(recs["records"].as_array().unwrap().len(), 1, "{recs}");
    assert_eq!(
        recs["records"][0]["updated_at"], stamp,
        "the same value is not stored again"
    );
    assert_no_failures(&mut c).await;
}

/// Ensures that exit 75 is retried with backoff until the task succeeds, and exit 65
/// dead-letters after one attempt with the stderr tail in the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_75_retries_and_exit_65_dead_letters() {
    let s = Scripts::new();
    let flaky = s.python(
        "flaky",
        r#"if job["attempt"] < 3:
    print("upstream busy", file=sys.stderr)
    sys.exit(75)
say(result={"attempt": job["attempt"]})"#,
    );
    let bad = s.python(
        "bad",
        "print('row 7: no date column', file=sys.stderr)\nsys.exit(65)",
    );
    let node = TestNode::start_with(|a| ext(a, 2, vec![flaky, bad])).await;
    let mut c = node.client().await;
    let (f, b) = (
        submit(&mut c, "ext.flaky", json!({})).await,
        submit(&mut c, "ext.bad", json!({})).await,
    );
    let j = finished(&mut c, &f, WAIT).await;
    assert_eq!(
        (j["status"].as_str(), j["attempts"].as_u64()),
        (Some("succeeded"), Some(3)),
        "{j}"
    );
    assert_eq!(j["result"], json!({"attempt": 3}));
    let retries: Vec<String> = history(&mut c, &f)
        .await
        .into_iter()
        .filter(|(k, _)| k == "retrying")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(retries.len(), 2, "{retries:?}");
    assert!(
        retries[0].contains("exited with 75 (EX_TEMPFAIL") && retries[0].contains("upstream busy"),
        "{retries:?}"
    );

    let j = finished(&mut c, &b, WAIT).await;
    assert_eq!(
        (j["status"].as_str(), j["attempts"].as_u64()),
        (Some("failed"), Some(1)),
        "{j}"
    );
    let e = j["error"].as_str().unwrap();
    assert!(e.starts_with("ext.bad: exited with 65 (EX_DATAERR"), "{e}");
    assert!(
        e.ends_with("--- stderr (tail) ---\nrow 7: no date column"),
        "{e}"
    );
    let dlq = req(&mut c, json!({"cmd": "dlq"})).await;
    assert_eq!(dlq["jobs"][0]["job_id"], b.as_str(), "{dlq}");
    assert_no_failures(&mut c).await;
}

/// Ensures that a task killed by SIGSEGV, then by `kill -9`, is retried as a crash each time
/// and then succeeds, the node unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_are_retried() {
    let s = Scripts::new();
    let task = s.python(
        "crashy",
        r#"if job["attempt"] == 1:
    os.kill(os.getpid(), signal.SIGSEGV)
if job["attempt"] == 2:
    subprocess.run(["kill", "-9", str(os.getpid())])
say(result="third time")"#,
    );
    let node = TestNode::start_with(|a| ext(a, 1, vec![task])).await;
    let mut c = node.client().await;
    let id = submit(&mut c, "ext.crashy", json!({})).await;
    let j = finished(&mut c, &id, WAIT).await;
    assert_eq!(
        (j["status"].as_str(), j["attempts"].as_u64()),
        (Some("succeeded"), Some(3)),
        "{j}"
    );
    let details: Vec<String> = history(&mut c, &id)
        .await
        .into_iter()
        .filter(|(k, _)| k == "retrying")
        .map(|(_, d)| d)
        .collect();
    assert!(
        details[0].contains("crashed: killed by signal 11 (SIGSEGV)"),
        "{details:?}"
    );
    assert!(
        details[1].contains("crashed: killed by signal 9 (SIGKILL)"),
        "{details:?}"
    );
    assert_no_failures(&mut c).await;
}

/// Ensures that at its hard time limit a task's whole process group is killed, the grandchild
/// it forked included, and that the soft limit before it sends SIGTERM, which a task may answer
/// by finishing with a result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_limits_signal_and_kill_the_process_group() {
    let s = Scripts::new();
    let pid_file = s.path("pids");
    let stuck = s.python(
        "stuck",
        &format!(
            r#"signal.signal(signal.SIGTERM, signal.SIG_IGN)
kid = subprocess.Popen(["sleep", "300"])
open({pid_file:?}, "w").write(f"{{os.getpid()}}\n{{kid.pid}}\n")
time.sleep(300)"#
        ),
    );
    let polite = s.python(
        "polite",
        r#"signal.signal(signal.SIGTERM, lambda *_: (say(result={"stopped": "soft limit"}), sys.exit(0)))
time.sleep(300)"#,
    );
    let node = TestNode::start_with(|a| {
        ext(a, 2, vec![stuck, polite]);
        // Room for the interpreter to start and install its handlers before the soft limit.
        let limits = TimeLimits {
            soft: Some(Duration::from_millis(1500)),
            hard: Some(Duration::from_millis(4000)),
        };
        let p = a.pipelines.last_mut().unwrap();
        p.task_limits.insert("ext.stuck".into(), limits);
        p.task_limits.insert("ext.polite".into(), limits);
    })
    .await;
    let mut c = node.client().await;
    let a = req(
        &mut c,
        json!({"cmd": "submit", "job": "ext.stuck", "max_retries": 0}),
    )
    .await;
    let stuck_id = a["job_id"].as_str().unwrap().to_string();
    let polite_id = submit(&mut c, "ext.polite", json!({})).await;
    let procs = pids(&pid_file, 2).await;
    assert!(procs.iter().all(|p| !gone(*p)), "both run before the limit");

    let j = finished(&mut c, &stuck_id, WAIT).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert!(
        j["error"].as_str().unwrap().contains("time limit of 4s"),
        "{j}"
    );
    eventually(
        "the task and its grandchild to be gone",
        Duration::from_secs(5),
        || async { procs.iter().all(|p| gone(*p)).then_some(()) },
    )
    .await;

    let j = finished(&mut c, &polite_id, WAIT).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    assert_eq!(j["result"], json!({"stopped": "soft limit"}));
    assert_no_failures(&mut c).await;
}

/// Ensures that cancelling a running exec job that ignores SIGTERM kills its process group
/// once `cancel_grace` is over, and that the job ends cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_task_after_its_grace() {
    let s = Scripts::new();
    let pid_file = s.path("pids");
    let task = s.python(
        "deaf",
        &format!(
            r#"signal.signal(signal.SIGTERM, signal.SIG_IGN)
kid = subprocess.Popen(["sleep", "300"])
open({pid_file:?}, "w").write(f"{{os.getpid()}}\n{{kid.pid}}\n")
time.sleep(300)"#
        ),
    );
    let node = TestNode::start_with(|a| ext(a, 1, vec![task])).await;
    let mut c = node.client().await;
    let id = submit(&mut c, "ext.deaf", json!({})).await;
    until_running(&mut c, &id).await;
    let procs = pids(&pid_file, 2).await;
    let cancelled = Instant::now();
    let a = req(&mut c, json!({"cmd": "cancel", "job_id": id})).await;
    assert_eq!(a["ok"], true, "{a}");
    // cancel_grace is 200 ms in the test arguments.
    eventually(
        "the cancelled task's group to be gone",
        Duration::from_secs(5),
        || async { procs.iter().all(|p| gone(*p)).then_some(()) },
    )
    .await;
    let took = cancelled.elapsed();
    assert!(
        took >= Duration::from_millis(150),
        "SIGTERM was ignored, so only SIGKILL ends it: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "killed soon after the grace: {took:?}"
    );
    assert_eq!(status(&mut c, &id).await["status"], "cancelled");
    assert_no_failures(&mut c).await;
}

/// Ensures that a megabyte of garbage on stdout (one endless line, or many short ones) is a
/// permanent protocol error naming the line and its first bytes, the task is stopped at once,
/// and the node serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_garbage_is_a_protocol_error() {
    let s = Scripts::new();
    let endless = s.python(
        "endless",
        "sys.stdout.write('x' * (1 << 20))\nsys.stdout.flush()\ntime.sleep(300)",
    );
    let chatty = s.python(
        "chatty",
        "say(progress={'done': 1})\nfor i in range(100000):\n    print('hello from print()', i)\ntime.sleep(300)",
    );
    let node = TestNode::start_with(|a| ext(a, 2, vec![endless, chatty])).await;
    let mut c = node.client().await;
    let started = Instant::now();
    let e = submit(&mut c, "ext.endless", json!({})).await;
    let h = submit(&mut c, "ext.chatty", json!({})).await;
    let j = finished(&mut c, &e, WAIT).await;
    assert_eq!(
        (j["status"].as_str(), j["attempts"].as_u64()),
        (Some("failed"), Some(1)),
        "{j}"
    );
    let err = j["error"].as_str().unwrap();
    assert!(err.starts_with("ext.endless: stdout line 1 is longer than max_line_bytes (65536 bytes); it starts with \"xxxx"), "{err}");
    assert!(
        err.len() < 1024,
        "the error shows only the start: {} bytes",
        err.len()
    );
    let j = finished(&mut c, &h, WAIT).await;
    let err = j["error"].as_str().unwrap();
    assert!(
        err.starts_with("ext.chatty: stdout line 2 is not a protocol line"),
        "{err}"
    );
    assert!(
        err.contains("it starts with \"hello from print() 0\""),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "stopped at once, not at sleep's end"
    );
    assert_eq!(req(&mut c, json!({"cmd": "ping"})).await["ok"], true);
    assert_no_failures(&mut c).await;
}

/// Ensures that 100 exec jobs submitted at once on 4 workers all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_jobs_on_four_workers() {
    let s = Scripts::new();
    let task = s.python("square", r#"say(result=job["params"]["n"] ** 2)"#);
    let node = TestNode::start_with(|a| ext(a, 4, vec![task])).await;
    let mut c = node.client().await;
    let jobs: Vec<Value> = (0..100)
        .map(|n| json!({"job": "ext.square", "params": {"n": n}}))
        .collect();
    let a = req(&mut c, json!({"cmd": "submit_batch", "jobs": jobs})).await;
    let ids = job_ids(&a);
    poll(
        &mut c,
        "100 successes",
        WAIT,
        json!({"cmd": "stats"}),
        |s| s["totals"]["succeeded"] == 100,
    )
    .await;
    for (n, id) in ids.iter().enumerate().step_by(9) {
        let j = status(&mut c, id).await;
        assert_eq!(j["result"], json!(n * n), "{j}");
    }
    assert_no_failures(&mut c).await;
}

/// Ensures that `warden node` refuses a config whose exec task cannot run (a missing script, a
/// file that is not executable, a missing cwd) with exit code 2 and a message naming the task
/// and the path, before it listens on anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrunnable_tasks_stop_the_node_at_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plain.sh"), "echo hi\n").unwrap();
    let cases = [
        (
            r#"command = ["python3", "jobs/missing.py"]"#,
            "tasks.\"x.run\".command: the script \"jobs/missing.py\" is not a file",
        ),
        (r#"command = ["./plain.sh"]"#, "plain.sh is not executable"),
        (
            "command = [\"true\"]\ncwd = \"nowhere\"",
            "tasks.\"x.run\".cwd: ",
        ),
    ];
    for (keys, want) in cases {
        let config = dir.path().join("node.toml");
        let text = format!(
            "[node]\ndata_dir = {:?}\n[admin]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [tasks.\"x.run\"]\n{keys}\n",
            dir.path().join("data")
        );
        std::fs::write(&config, text).unwrap();
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["node", "--config"])
            .arg(&config)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(want), "expected {want:?} in {stderr}");
        assert!(
            stderr.contains(&config.display().to_string()),
            "names the file: {stderr}"
        );
    }
}

/// Ensures that `warden submit --wait` on an exec job shows the task's progress while it runs
/// (its live line) and at the end (the job's `progress` row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_wait_shows_progress() {
    let s = Scripts::new();
    let task = s.python(
        "steps",
        "for i in range(1, 4):\n    say(progress={'done': i, 'total': 3, 'message': f'step {i}'})\n    \
         time.sleep(0.3)\nsay(result='ok')",
    );
    let node = TestNode::start_with(|a| ext(a, 1, vec![task])).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args([
            "submit",
            "ext.steps",
            "--wait",
            "--addr",
            &node.addr().to_string(),
        ])
        .env_remove("WARDEN_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("progress:") && stdout.contains("3/3 (100 %) · step 3"),
        "{stdout}"
    );
    assert!(
        stderr.contains("running · attempt 1/4"),
        "the live line: {stderr}"
    );
}

/// Ensures that a node stopping gracefully lets a running exec task go on for
/// `shutdown_timeout`, then kills its whole process group: nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_kills_the_process_group_after_its_timeout() {
    let s = Scripts::new();
    let pid_file = s.path("pids");
    let task = s.python(
        "lingers",
        &format!(
            r#"signal.signal(signal.SIGTERM, signal.SIG_IGN)
kid = subprocess.Popen(["sleep", "300"])
open({pid_file:?}, "w").write(f"{{os.getpid()}}\n{{kid.pid}}\n")
time.sleep(300)"#
        ),
    );
    let node = TestNode::start_with(|a| {
        ext(a, 1, vec![task]);
        a.shutdown_timeout = Duration::from_millis(500);
    })
    .await;
    let mut c = node.client().await;
    let id = submit(&mut c, "ext.lingers", json!({})).await;
    until_running(&mut c, &id).await;
    let procs = pids(&pid_file, 2).await;
    drop(c);
    let stopping = Instant::now();
    node.stop().await.unwrap();
    assert!(
        stopping.elapsed() >= Duration::from_millis(400),
        "it drained first"
    );
    eventually(
        "the task's group to be gone",
        Duration::from_secs(5),
        || async { procs.iter().all(|p| gone(*p)).then_some(()) },
    )
    .await;
}

/// Ensures that a cancelled exec job that stops at once on SIGTERM ends cancelled, and that the
/// worker it freed runs the next jobs to their end (the late "cancelled" of the first one
/// touches none of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polite_cancel_frees_the_worker_for_the_next_jobs() {
    let s = Scripts::new();
    let polite = s.python(
        "polite",
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\nsay(progress={'done': 0})\ntime.sleep(300)",
    );
    let quick = s.python("quick", "time.sleep(0.1)\nsay(result='done')");
    let node = TestNode::start_with(|a| ext(a, 1, vec![polite, quick])).await;
    let mut c = node.client().await;
    for _ in 0..3 {
        let id = submit(&mut c, "ext.polite", json!({})).await;
        poll(
            &mut c,
            "the task to report",
            WAIT,
            json!({"cmd": "status", "job_id": id}),
            |a| a["job"]["progress"].is_object(),
        )
        .await;
        let a = req(&mut c, json!({"cmd": "cancel", "job_id": id})).await;
        assert_eq!(a["ok"], true, "{a}");
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(submit(&mut c, "ext.quick", json!({})).await);
        }
        for q in &ids {
            assert_eq!(finished(&mut c, q, WAIT).await["status"], "succeeded");
        }
        assert_eq!(status(&mut c, &id).await["status"], "cancelled");
    }
    assert_no_failures(&mut c).await;
}
