//! The `warden` CLI as people and scripts use it: the built binary run against a live node over
//! TCP, checking what it prints and the exit codes (0 ok, 1 error answer or failed job, 2
//! unreachable).

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{finished, status, submit, TestNode};

const WAIT: Duration = Duration::from_secs(30);

/// What one run of the binary left behind.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `warden ARGS --addr ADDR` with no `WARDEN_*` variables from the environment, failing
/// the test if it takes longer than [`WAIT`].
async fn warden(addr: &str, args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_warden"));
    cmd.args(args)
        .args(["--addr", addr])
        .env_remove("WARDEN_ADDR")
        .env_remove("WARDEN_ADMIN_TOKEN")
        .kill_on_drop(true);
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("warden {args:?} did not finish within {WAIT:?}"))
        .expect("the warden binary runs");
    Run {
        code: out.status.code().expect("an exit code, not a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Run {
    /// Asserts the exit code, showing both streams when it differs.
    fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit code; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Ensures that `ping` exits 0 and says which node answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_exits_0_and_names_the_node() {
    let node = TestNode::start().await;
    let run = warden(&node.addr().to_string(), &["ping"]).await;
    run.expect_code(0);
    assert!(
        run.stdout.starts_with("pong from test (warden "),
        "{}",
        run.stdout
    );
    assert!(run.stderr.is_empty(), "{}", run.stderr);
}

/// Ensures that `submit --wait` follows a no-op job to its end, prints it as succeeded and
/// exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_noop_exits_0_and_shows_succeeded() {
    let node = TestNode::start().await;
    let run = warden(
        &node.addr().to_string(),
        &["submit", "builtin.noop", "--wait"],
    )
    .await;
    run.expect_code(0);
    assert!(run.stdout.starts_with("submitted "), "{}", run.stdout);
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("status:") && l.ends_with(" succeeded")),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("succeeded · attempt 1/"),
        "live status line: {}",
        run.stderr
    );
}

/// Ensures that `submit --wait` of a job that fails for good exits 1, shows it as failed and
/// says why on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_fail_permanent_exits_1() {
    let node = TestNode::start().await;
    let run = warden(
        &node.addr().to_string(),
        &["submit", "builtin.fail_permanent", "--wait"],
    )
    .await;
    run.expect_code(1);
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("status:") && l.ends_with(" failed")),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("warden: job ") && run.stderr.contains(" failed: "),
        "{}",
        run.stderr
    );
}

/// Ensures that a bad priority exits 1 with the node's message, naming `priority`, on stderr and
/// nothing on stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_priority_exits_1_naming_the_field() {
    let node = TestNode::start().await;
    let run = warden(
        &node.addr().to_string(),
        &["submit", "builtin.noop", "--priority", "urgent"],
    )
    .await;
    run.expect_code(1);
    assert_eq!(
        run.stderr.trim_end(),
        r#"warden: bad_request: priority: expected one of high, normal, low, got "urgent""#
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}

/// Ensures that an address nobody listens on exits 2 and names the address tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_node_exits_2_naming_the_address() {
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let run = warden(&free, &["stats"]).await;
    run.expect_code(2);
    assert!(
        run.stderr
            .contains(&format!("cannot reach a warden node at {free}")),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}

/// Ensures that `list --json` prints the raw answer: JSON lines, nothing else, with the jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_json_prints_parseable_lines() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    for _ in 0..3 {
        let id = submit(&mut c, "builtin.noop", json!({})).await;
        finished(&mut c, &id, WAIT).await;
    }
    let run = warden(
        &node.addr().to_string(),
        &["list", "--json", "--status", "succeeded"],
    )
    .await;
    run.expect_code(0);
    let answers: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(answers.len(), 1, "{}", run.stdout);
    assert_eq!(answers[0]["ok"], true);
    assert_eq!(
        answers[0]["jobs"].as_array().unwrap().len(),
        3,
        "{}",
        run.stdout
    );
}

/// Ensures that `tree` draws the supervision tree with the pipeline supervisor, its workers and
/// restart counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_draws_pipeline_and_workers() {
    let node = TestNode::start().await;
    let run = warden(&node.addr().to_string(), &["tree"]).await;
    run.expect_code(0);
    let line = |needle: &str| {
        run.stdout
            .lines()
            .find(|l| l.contains(needle))
            .map(str::to_string)
    };
    let pipeline = line("pipeline:builtin")
        .unwrap_or_else(|| panic!("no pipeline:builtin in\n{}", run.stdout));
    let worker = line("worker-1 ").unwrap_or_else(|| panic!("no worker-1 in\n{}", run.stdout));
    assert!(
        pipeline.contains("── pipeline:builtin [supervisor] running · restarts 0"),
        "{}",
        run.stdout
    );
    assert!(
        worker.contains("├── worker-1 [worker] running · restarts "),
        "{}",
        run.stdout
    );
    // A worker hangs one level (four columns) below its pipeline supervisor.
    let column = |line: &str, name: &str| line[..line.find(name).unwrap()].chars().count();
    assert_eq!(
        column(&worker, "worker-1"),
        column(&pipeline, "pipeline:builtin") + 4,
        "{}",
        run.stdout
    );
}

/// Ensures that `history` prints a job's timeline from `submitted` to `succeeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_shows_submitted_and_succeeded() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let id = submit(&mut c, "builtin.noop", json!({})).await;
    finished(&mut c, &id, WAIT).await;
    let run = warden(&node.addr().to_string(), &["history", &id]).await;
    run.expect_code(0);
    let kinds: Vec<&str> = run
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(
        kinds,
        ["submitted", "started", "succeeded"],
        "{}",
        run.stdout
    );
}

/// Ensures that `export` of a prefix with no records prints nothing and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_of_empty_prefix_prints_nothing() {
    let node = TestNode::start().await;
    let run = warden(
        &node.addr().to_string(),
        &["export", "--prefix", "nothing/here/"],
    )
    .await;
    run.expect_code(0);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
}

/// Ensures that `--param` values are JSON when they parse, strings otherwise, and override the
/// keys of `--params`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_params_are_merged_and_typed() {
    let node = TestNode::start().await;
    let args = [
        "submit",
        "builtin.sleep",
        "--params",
        r#"{"ms": 500, "note": "a"}"#,
        "--param",
        "ms=1",
    ];
    let run = warden(
        &node.addr().to_string(),
        &[&args[..], &["--param", "tag=CHGG", "--json"]].concat(),
    )
    .await;
    run.expect_code(0);
    let answer: Value = serde_json::from_str(run.stdout.trim_end()).expect("one JSON line");
    let mut c = node.client().await;
    let job = status(&mut c, answer["job_id"].as_str().unwrap()).await;
    assert_eq!(job["params"], json!({"ms": 1, "note": "a", "tag": "CHGG"}));
}

/// Ensures that on a node with a token, a command without it exits 1 saying `unauthorized`, and
/// with `--token` it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_sent_when_given() {
    let node = TestNode::start_with(|a| a.admin.token = Some("s3cret".into())).await;
    let addr = node.addr().to_string();
    let denied = warden(&addr, &["stats"]).await;
    denied.expect_code(1);
    assert!(
        denied.stderr.starts_with("warden: unauthorized: "),
        "{}",
        denied.stderr
    );
    let allowed = warden(&addr, &["stats", "--token", "s3cret"]).await;
    allowed.expect_code(0);
    assert!(allowed.stdout.contains("SUBMITTED"), "{}", allowed.stdout);
}

/// Ensures that an error answer for an unknown job exits 1 with `not_found`, and that under
/// `--json` the raw error line still reaches stdout for scripts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_job_exits_1_with_raw_line_under_json() {
    let node = TestNode::start().await;
    let run = warden(
        &node.addr().to_string(),
        &["status", "0193b7f0-3c55-7d2e-9a51-2b0c8f1e6a10", "--json"],
    )
    .await;
    run.expect_code(1);
    let answer: Value = serde_json::from_str(run.stdout.trim_end()).expect("one JSON line");
    assert_eq!(answer["error"]["code"], "not_found");
    assert!(
        run.stderr.starts_with("warden: not_found: job_id: "),
        "{}",
        run.stderr
    );
}
