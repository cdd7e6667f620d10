//! Test support: [`TestNode`] (a real node on 127.0.0.1:0 with a temporary data dir and short
//! timings, the same `Node::start` the binary uses), client helpers, and [`eventually`], the
//! bounded poll that replaces sleeping.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warden::client::Client;
use warden_actors::args::{
    AdminArgs, BreakerArgs, JobsArgs, NodeArgs, PipelineArgs, RestartPolicy, RetryPolicy,
    UpstreamArgs,
};
use warden_actors::node::{Node, NodeError};
use warden_actors::pipeline::limiter::parse_rate_limit;

use crate::fakes::FakeUpstream;

/// Short timings so retries and restarts take milliseconds.
pub fn test_args(dir: &Path) -> NodeArgs {
    let restart = RestartPolicy {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        jitter: 0.1,
        max_restarts: 10,
        within: Duration::from_secs(10),
    };
    NodeArgs {
        name: "test".into(),
        data_dir: dir.to_path_buf(),
        shutdown_timeout: Duration::from_secs(10),
        min_free_space: 0,
        cache_size: 64 << 20,
        admin: AdminArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            max_connections: 32,
            max_line_bytes: 1 << 20,
            idle_timeout: Duration::from_secs(60),
            token: None,
        },
        jobs: JobsArgs {
            max_queued: 100_000,
            max_wait: Duration::from_secs(60),
            retention: Duration::from_secs(86400),
            cancel_grace: Duration::from_millis(200),
        },
        restart,
        pipelines: vec![PipelineArgs {
            name: "builtin".into(),
            workers: 4,
            retry: RetryPolicy {
                max_retries: 3,
                base_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(100),
            },
            restart,
            upstream: None,
            limits: Default::default(),
            task_limits: Default::default(),
            max_jobs_per_worker: None,
            exec: vec![],
            custom: Default::default(),
        }],
        routes: vec![],
        schedules: vec![],
        alerts: None,
        console: None,
        sink: None,
        store: None,
    }
}

/// Upstream arguments pointing at `fake`, with test-sized timings.
pub fn upstream(fake: &FakeUpstream, rate: &str) -> UpstreamArgs {
    UpstreamArgs {
        base_url: fake.base_url(),
        tickers_url: Some(fake.tickers_url()),
        user_agent: Some("Warden tests tests@example.com".into()),
        api_key: Some("test-key-123".into()),
        rate_limit: parse_rate_limit(rate).unwrap(),
        request_timeout: Duration::from_secs(5),
        breaker: BreakerArgs {
            failure_threshold: 10,
            open_for: Duration::from_secs(1),
            max_open_for: Duration::from_secs(4),
        },
        throttle_cooldown: Duration::from_secs(1),
    }
}

/// Adds pipeline `name` with `workers` workers on `up`.
pub fn add(a: &mut NodeArgs, name: &str, workers: usize, max_retries: u32, up: UpstreamArgs) {
    a.pipelines.push(PipelineArgs {
        name: name.into(),
        workers,
        retry: RetryPolicy {
            max_retries,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        },
        restart: RestartPolicy::DEFAULT,
        upstream: Some(up),
        limits: Default::default(),
        task_limits: Default::default(),
        max_jobs_per_worker: None,
        exec: vec![],
        custom: Default::default(),
    });
}

/// A node running in this process.
pub struct TestNode {
    addr: SocketAddr,
    console: Option<SocketAddr>,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    run: Option<JoinHandle<Result<(), NodeError>>>,
}

impl TestNode {
    /// A node with [`test_args`] on a fresh temporary dir.
    pub async fn start() -> TestNode {
        Self::start_with(|_| {}).await
    }

    /// A node on a fresh temporary dir, with `tweak` applied to its arguments.
    pub async fn start_with(tweak: impl FnOnce(&mut NodeArgs)) -> TestNode {
        let tmp = tempfile::tempdir().unwrap();
        let mut node = Self::start_in(tmp.path(), tweak)
            .await
            .expect("node starts");
        node._tmp = Some(tmp);
        node
    }

    /// A node on `dir` (kept after the node stops, for restart tests).
    pub async fn start_in(
        dir: &Path,
        tweak: impl FnOnce(&mut NodeArgs),
    ) -> Result<TestNode, NodeError> {
        let mut args = test_args(dir);
        tweak(&mut args);
        let node = Node::start(args).await?;
        let addr = node.admin_addr();
        let console = node.console_addr();
        let (tx, rx) = oneshot::channel();
        let run = tokio::spawn(node.run(async {
            let _ = rx.await;
        }));
        Ok(TestNode {
            addr,
            console,
            dir: dir.to_path_buf(),
            _tmp: None,
            stop: Some(tx),
            run: Some(run),
        })
    }

    /// The admin address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The web console's address, when the node serves one.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new admin connection.
    pub async fn client(&self) -> Client {
        Client::connect_addr(self.addr)
            .await
            .expect("connect to the test node")
    }

    /// Stops gracefully and returns how `run` ended.
    pub async fn stop(mut self) -> Result<(), NodeError> {
        let _ = self.stop.take().map(|s| s.send(()));
        self.run.take().unwrap().await.expect("node task")
    }

    /// Waits for the node to end by itself (the `shutdown` command, an escalation).
    pub async fn ended(mut self, within: Duration) -> Result<(), NodeError> {
        tokio::time::timeout(within, self.run.take().unwrap())
            .await
            .expect("node ended in time")
            .expect("node task")
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
    }
}

/// Polls `check` until it yields `Some`, at most `within`; panics naming `what` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The job ids of a `submit_batch` or `submit_workflow` answer, in order.
pub fn job_ids(answer: &Value) -> Vec<String> {
    answer["job_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no job_ids in {answer}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Sends one request and returns the answer.
pub async fn req(c: &mut Client, r: Value) -> Value {
    // Bounded: a node that never answers is a failure, not a stuck test.
    tokio::time::timeout(Duration::from_secs(10), c.request(&r))
        .await
        .expect("an answer within 10 s")
        .expect("an answer")
}

/// Submits one job and returns its id.
pub async fn submit(c: &mut Client, job: &str, params: Value) -> String {
    let a = req(c, json!({"cmd": "submit", "job": job, "params": params})).await;
    assert_eq!(a["ok"], true, "submit failed: {a}");
    a["job_id"].as_str().unwrap().to_string()
}

/// The job object of `id`.
pub async fn status(c: &mut Client, id: &str) -> Value {
    let a = req(c, json!({"cmd": "status", "job_id": id})).await;
    assert_eq!(a["ok"], true, "status failed: {a}");
    a["job"].clone()
}

/// Sends `request` until `done` holds for the answer, at most `within`; returns that answer.
pub async fn poll(
    c: &mut Client,
    what: &str,
    within: Duration,
    request: Value,
    mut done: impl FnMut(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let a = req(c, request.clone()).await;
        if done(&a) {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}; last answer: {a}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until job `id` is running on a worker.
pub async fn until_running(c: &mut Client, id: &str) {
    poll(
        c,
        &format!("job {id} to run"),
        Duration::from_secs(60),
        json!({"cmd": "status", "job_id": id}),
        |a| a["job"]["status"] == "running",
    )
    .await;
}

/// Waits until job `id` is finished (succeeded, failed or cancelled) and returns it.
pub async fn finished(c: &mut Client, id: &str, within: Duration) -> Value {
    let a = poll(
        c,
        &format!("job {id} to finish"),
        within,
        json!({"cmd": "status", "job_id": id}),
        |a| {
            matches!(
                a["job"]["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
        },
    )
    .await;
    a["job"].clone()
}

/// The workers of the built-in pipeline in a `tree` answer's `tree` object.
pub fn builtin_workers(tree: &Value) -> Vec<Value> {
    let pipeline = tree["children"]
        .as_array()
        .and_then(|c| c.iter().find(|n| n["name"] == "pipeline:builtin"))
        .unwrap_or_else(|| panic!("no pipeline:builtin in {tree}"));
    pipeline["children"].as_array().cloned().unwrap_or_default()
}

/// The error code of an answer, asserting that it is an error.
pub fn code(a: &Value) -> &str {
    assert_eq!(a["ok"], false, "expected an error, got {a}");
    a["error"]["code"].as_str().unwrap()
}

/// The most arrivals inside any window of `span` starting at an arrival.
pub fn most_in_window(arrivals: &[Instant], span: Duration) -> usize {
    (0..arrivals.len())
        .map(|i| {
            arrivals[i..]
                .iter()
                .take_while(|u| u.duration_since(arrivals[i]) < span)
                .count()
        })
        .max()
        .unwrap_or(0)
}
