//! Observability, checked with the tools operators use: the built `warden` binary (the
//! Prometheus recorder and the tracing subscriber are process-global, so every test here runs
//! the node as a child process) is scraped after a workload that touches every metric family
//! and its `/metrics` is fed to `promtool check metrics`; a real `prometheus` server scrapes a
//! live node and is read back through its HTTP query API; the queue depth gauge is right after
//! a kill and restart; the Grafana dashboard's queries use only exported names and parse as
//! PromQL; and JSON logs carry the supervision fields and no secret.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;
use warden::client::Client;
use warden::listening::Listening;
use warden_actors::metrics as m;

use crate::fakes::{self, Failure, FakeUpstream};
use crate::support::{finished, poll, req, submit, until_running};

/// The bound on every wait in this module.
const WAIT: Duration = Duration::from_secs(60);

/// The Alpha Vantage key handed to nodes through their environment: it must never be logged.
const AV_KEY: &str = "av-key-9f8e7d6c5b4a";
/// The environment variable that carries it (`api_key_env`).
const AV_KEY_ENV: &str = "WARDEN_TEST_AV_KEY";

// ===== A node as a child process =====

/// A `warden node` child process on free loopback ports, its stderr collected line by line.
/// Dropping it kills the process (SIGKILL).
struct NodeProcess {
    child: Child,
    admin: String,
    metrics: String,
    logs: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    dir: Arc<tempfile::TempDir>,
    spec: Arc<NodeSpec>,
}

/// What a node's config and environment are made of, besides its data dir and ports.
struct NodeSpec {
    token: Option<String>,
    sections: String,
    env: Vec<(String, String)>,
}

impl NodeProcess {
    /// Starts the binary on a config made of `[node]`, `[admin]` (its listen address and
    /// `token`, if any), `[metrics]` and then `sections`, with `env` set, and waits until it
    /// takes commands.
    async fn start(token: Option<&str>, sections: &str, env: &[(&str, &str)]) -> NodeProcess {
        let spec = NodeSpec {
            token: token.map(String::from),
            sections: sections.into(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        Self::spawn(Arc::new(tempfile::tempdir().unwrap()), Arc::new(spec)).await
    }

    /// Kills the node and starts it again on the same data dir, on new ports.
    async fn restart(self) -> NodeProcess {
        let (dir, spec) = (self.dir.clone(), self.spec.clone());
        drop(self);
        Self::spawn(dir, spec).await
    }

    async fn spawn(dir: Arc<tempfile::TempDir>, spec: Arc<NodeSpec>) -> NodeProcess {
        let data = dir.path().join("data");
        let config = format!(
            "[node]\ndata_dir = {:?}\nshutdown_timeout = \"5s\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n{}\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n[console]\nlisten = \"127.0.0.1:0\"\n{}",
            data.display().to_string(),
            spec.token
                .as_ref()
                .map(|t| format!("token = {t:?}"))
                .unwrap_or_default(),
            spec.sections,
        );
        let path = dir.path().join("node.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden"));
        cmd.args(["node", "--config"])
            .arg(&path)
            .env_remove("RUST_LOG")
            .env_remove("WARDEN_ADMIN_TOKEN")
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn warden node");
        // Read stderr as it comes, so that the pipe never fills and blocks the node.
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let listening = match Listening::wait(&data, child.id(), WAIT).await {
            Ok(l) => l,
            Err(e) => panic!("{e}: {:?}", logs.lock().unwrap()),
        };
        let mut node = NodeProcess {
            child,
            admin: listening.admin.to_string(),
            metrics: listening.metrics.to_string(),
            logs,
            reader: Some(reader),
            dir,
            spec,
        };
        // The admin port opens before the dispatcher is up: wait for a command that needs it.
        let mut c = node.client().await;
        let mut stats = json!({"cmd": "stats"});
        if let Some(t) = &node.spec.token {
            stats["token"] = json!(t);
        }
        poll(&mut c, "the node to take commands", WAIT, stats, |a| {
            a["ok"] == true
        })
        .await;
        node
    }

    /// A new admin connection, retried until the node answers.
    async fn client(&mut self) -> Client {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(c) = Client::connect(&self.admin, Duration::from_secs(1)).await {
                return c;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the node exited with {status}: {:?}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "node at {} never answered",
                self.admin
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every stderr line so far.
    fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// `GET /metrics`, retried until it answers 200.
    async fn scrape(&self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match http_get(&self.metrics, "/metrics").await {
                Ok((200, body)) => return body,
                other => assert!(
                    Instant::now() < deadline,
                    "no scrape from {}: {other:?}",
                    self.metrics
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `shutdown` (with `token` if any), waits for the exit and for stderr's end, and
    /// returns the exit status and every log line.
    async fn shutdown(mut self, token: Option<&str>) -> (ExitStatus, Vec<String>) {
        let mut c = self.client().await;
        let mut r = json!({"cmd": "shutdown"});
        if let Some(t) = token {
            r["token"] = json!(t);
        }
        let a = req(&mut c, r).await;
        assert_eq!(a["ok"], true, "{a}");
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the node did not stop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if let Some(reader) = self.reader.take() {
            tokio::task::spawn_blocking(move || reader.join())
                .await
                .unwrap()
                .unwrap();
        }
        (status, self.logs())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ===== HTTP without a client library =====

/// `GET target` on `addr` over HTTP/1.1 with `Connection: close`; returns the status and the
/// body (de-chunked when needed).
async fn http_get(addr: &str, target: &str) -> std::io::Result<(u16, String)> {
    let timed_out = |_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(timed_out)??;
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .map_err(timed_out)??;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let mut body = raw[split + 4..].to_vec();
    if head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"))
    {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// Percent-encodes a query parameter's value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

// ===== Reading an exposition =====

/// One sample line of a Prometheus text exposition.
#[derive(Debug)]
pub struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    /// The value, as written.
    pub value: String,
}

impl Sample {
    /// True when the sample is of `name` and carries every label of `labels`.
    pub fn is(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name == name
            && labels
                .iter()
                .all(|(k, v)| self.labels.iter().any(|(lk, lv)| lk == k && lv == v))
    }
}

/// The sample lines of a Prometheus text exposition.
pub fn samples(scrape: &str) -> Vec<Sample> {
    scrape
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, vec![]),
            };
            Sample {
                name: name.to_string(),
                labels,
                value: value.to_string(),
            }
        })
        .collect()
}

/// `a="x",b="y\"z"` → `[(a, x), (b, y"z)]`.
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, ch)) = chars.next() {
            match ch {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                _ => value.push(ch),
            }
        }
        out.push((name.trim_start_matches(',').to_string(), value));
        rest = &after[end..];
    }
    out
}

/// True when the scrape has a sample of `name` carrying every label of `labels`.
fn has_series(scrape: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    samples(scrape).iter().any(|s| s.is(name, labels))
}

/// Catalogue families the workload cannot produce yet, each with the reason. Keep it short:
/// remove a name as soon as a node can record it.
const NOT_YET_RECORDED: &[(&str, &str)] = &[];

/// Catalogue names without a `# TYPE` line in the scrape (save [`NOT_YET_RECORDED`]).
fn missing_families(scrape: &str) -> Vec<&'static str> {
    m::ALL
        .iter()
        .copied()
        .filter(|name| NOT_YET_RECORDED.iter().all(|(n, _)| n != name))
        .filter(|name| !scrape.contains(&format!("# TYPE {name} ")))
        .collect()
}

// ===== The workload that touches every family =====

/// The `/metrics` text of a node that ran the full workload, run once for the tests that
/// need it (the text outlives the node and the fake).
static WORKLOAD_SCRAPE: OnceCell<String> = OnceCell::const_new();

async fn workload_scrape() -> &'static str {
    WORKLOAD_SCRAPE.get_or_init(run_workload).await
}

/// Starts a node with builtin, the three upstream pipelines on a fake upstream, the PostgreSQL
/// sink (a schema of its own on the test cluster, dropped after) and a schedule
/// firing every second, and runs:
/// noop, fail (a transient retry), fail_permanent (a dead letter), sleep then cancel, SEC jobs
/// behind a 5xx burst that opens the breaker (threshold 2), a Yahoo job behind a 429 with
/// `Retry-After` (a throttled retry and a paused limiter), an Alpha Vantage job, an unknown
/// ticker, and a panic that spends a worker's restart budget (a restart and an escalation).
/// Returns the scrape once every catalogue family is in it.
async fn run_workload() -> String {
    let fake = FakeUpstream::start().await;
    let (base, tickers) = (fake.base_url(), fake.tickers_url());
    // The PostgreSQL sink ships the SEC, Yahoo and Alpha Vantage records (its families).
    let sink_schema = crate::pg::Schema::fresh("obs").await;
    let (pg_url, pg_schema) = (crate::pg::test_url(), sink_schema.name.clone());
    let sections = format!(
        r#"
[log]
level = "warn"
[jobs]
cancel_grace = "200ms"
[supervisor]
restart = {{ min_backoff = "20ms", max_backoff = "200ms", jitter = 0.1, max_restarts = 10, within = "60s" }}
[pipelines.builtin]
workers = 2
retry = {{ max_retries = 5, base_delay = "20ms", max_delay = "100ms" }}
restart = {{ min_backoff = "20ms", max_backoff = "100ms", jitter = 0.1, max_restarts = 1, within = "60s" }}
[pipelines.sec]
workers = 1
base_url = "{base}"
tickers_url = "{tickers}"
user_agent = "Warden tests tests@example.com"
rate_limit = "50/s"
request_timeout = "5s"
breaker = {{ failure_threshold = 2, open_for = "300ms", max_open_for = "1s" }}
throttle_cooldown = "1s"
retry = {{ max_retries = 10, base_delay = "20ms", max_delay = "100ms" }}
[pipelines.yahoo]
workers = 1
base_url = "{base}"
rate_limit = "50/s"
throttle_cooldown = "1s"
retry = {{ max_retries = 3, base_delay = "20ms", max_delay = "100ms" }}
[pipelines.alphavantage]
workers = 1
base_url = "{base}"
api_key_env = "{AV_KEY_ENV}"
rate_limit = "50/s"
retry = {{ max_retries = 3, base_delay = "20ms", max_delay = "100ms" }}
[[schedules]]
name = "tick"
cron = "* * * * * *"
job = "builtin.noop"
[alerts]
webhook_url = "http://127.0.0.1:9/hook"
max_attempts = 1
[sinks.postgres]
url = "{pg_url}"
schema = "{pg_schema}"
flush_every = "50ms"
"#
    );
    let mut node = NodeProcess::start(None, &sections, &[(AV_KEY_ENV, AV_KEY)]).await;
    let mut c = node.client().await;

    fake.fail_next_to(fakes::SEC_SUBMISSIONS_PREFIX, 2, Failure::Status(503));
    fake.fail_next_to(
        fakes::YAHOO_CHART_PREFIX,
        1,
        Failure::TooMany {
            retry_after: Some(1),
        },
    );
    let expected = [
        ("sec.filings", json!({"ticker": "CHGG"}), "succeeded"),
        ("sec.filings", json!({"ticker": "NOPE"}), "failed"),
        ("yahoo.chart", json!({"ticker": "AAPL"}), "succeeded"),
        (
            "alphavantage.overview",
            json!({"symbol": "IBM"}),
            "succeeded",
        ),
        ("builtin.noop", json!({}), "succeeded"),
        ("builtin.noop", json!({}), "succeeded"),
        ("builtin.fail", json!({"times": 1}), "succeeded"),
        ("builtin.fail_permanent", json!({}), "failed"),
    ];
    let mut jobs = Vec::new();
    for (job, params, status) in expected {
        jobs.push((submit(&mut c, job, params).await, job, status));
    }
    let sleeper = submit(&mut c, "builtin.sleep", json!({"ms": 30_000})).await;
    until_running(&mut c, &sleeper).await;
    let a = req(&mut c, json!({"cmd": "cancel", "job_id": sleeper})).await;
    assert_eq!(a["ok"], true, "{a}");
    jobs.push((sleeper, "builtin.sleep", "cancelled"));
    for (id, job, status) in &jobs {
        let j = finished(&mut c, id, WAIT).await;
        assert_eq!(j["status"], *status, "{job}: {j}");
    }
    // Two workers with one restart each: the third worker crash spends a budget, so the
    // pipeline supervisor escalates and the root starts it again; the fourth attempt succeeds.
    let crashy = submit(&mut c, "builtin.crash", json!({"times": 3})).await;
    let j = finished(&mut c, &crashy, WAIT).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    // A job that panics is that job's failure: retried (error_type panic), then it succeeds.
    let panicky = submit(&mut c, "builtin.panic", json!({"times": 1})).await;
    let j = finished(&mut c, &panicky, WAIT).await;
    assert_eq!(j["status"], "succeeded", "{j}");

    let deadline = Instant::now() + WAIT;
    let scrape = loop {
        let scrape = node.scrape().await;
        if missing_families(&scrape).is_empty() || Instant::now() > deadline {
            break scrape;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(c);
    drop(node);
    sink_schema.drop_now().await;
    scrape
}

/// Ensures that after a workload touching every metric family, the node's `/metrics` passes
/// `promtool check metrics` without a single complaint, that every family of the catalogue is
/// exported with its help text, that the workload's events show up as the series they should
/// be, and that labels stay bounded: only the catalogue's label names, never a job id or a
/// ticker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_after_a_full_workload() {
    let scrape = workload_scrape().await;

    // Every family is there (save NOT_YET_RECORDED), described.
    // (`warden_job_retries_total{error_type="timeout"}` needs time limits, which do not exist
    // yet; the family itself is exported.)
    assert_eq!(
        missing_families(scrape),
        Vec::<&str>::new(),
        "families absent after the workload:\n{scrape}"
    );
    for name in m::ALL
        .iter()
        .filter(|name| NOT_YET_RECORDED.iter().all(|(n, _)| n != *name))
    {
        assert!(
            scrape.contains(&format!("# HELP {name} ")),
            "{name} has no help text"
        );
    }

    let scrape_owned = scrape.to_string();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian's `prometheus` package) must be installed");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(scrape_owned.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "promtool check metrics ({}):\n{complaints}",
        out.status
    );

    // The workload's events, as series.
    let expect = [
        (
            m::JOB_EXECUTIONS,
            vec![("job_name", "builtin.noop"), ("status", "succeeded")],
        ),
        (
            m::JOB_EXECUTIONS,
            vec![("job_name", "builtin.fail"), ("status", "retried")],
        ),
        (
            m::JOB_EXECUTIONS,
            vec![("job_name", "builtin.fail_permanent"), ("status", "failed")],
        ),
        (
            m::JOB_EXECUTIONS,
            vec![("job_name", "builtin.sleep"), ("status", "cancelled")],
        ),
        (
            m::JOB_RETRIES,
            vec![("job_name", "builtin.fail"), ("error_type", "transient")],
        ),
        (
            m::JOB_RETRIES,
            vec![("job_name", "builtin.panic"), ("error_type", "panic")],
        ),
        (
            m::JOB_RETRIES,
            vec![("job_name", "yahoo.chart"), ("error_type", "throttled")],
        ),
        (m::DEAD_LETTER, vec![("job_name", "builtin.fail_permanent")]),
        (
            m::QUEUE_DEPTH,
            vec![("pipeline", "sec"), ("priority", "low")],
        ),
        (
            m::ACTOR_RESTARTS,
            vec![("actor_kind", "worker"), ("pipeline", "builtin")],
        ),
        (
            m::ACTOR_RESTARTS,
            vec![("actor_kind", "supervisor"), ("pipeline", "-")],
        ),
        (m::SUPERVISOR_ESCALATIONS, vec![("pipeline", "builtin")]),
        (m::CIRCUIT_BREAKER_STATE, vec![("pipeline", "sec")]),
        (
            m::CIRCUIT_BREAKER_TRANSITIONS,
            vec![("pipeline", "sec"), ("to", "open")],
        ),
        (
            m::CIRCUIT_BREAKER_TRANSITIONS,
            vec![("pipeline", "sec"), ("to", "half_open")],
        ),
        (
            m::CIRCUIT_BREAKER_TRANSITIONS,
            vec![("pipeline", "sec"), ("to", "closed")],
        ),
        (m::RATE_LIMITER_PAUSED, vec![("pipeline", "yahoo")]),
        (
            m::UPSTREAM_REQUESTS,
            vec![("pipeline", "sec"), ("outcome", "transient")],
        ),
        (
            m::UPSTREAM_REQUESTS,
            vec![("pipeline", "yahoo"), ("outcome", "throttled")],
        ),
        (
            m::UPSTREAM_REQUESTS,
            vec![("pipeline", "alphavantage"), ("outcome", "ok")],
        ),
        (
            m::SCHEDULE_FIRES,
            vec![("schedule", "tick"), ("outcome", "fired")],
        ),
        (m::BUILD_INFO, vec![("version", env!("CARGO_PKG_VERSION"))]),
    ];
    for (name, labels) in &expect {
        assert!(
            has_series(scrape, name, labels),
            "no {name} series with {labels:?}:\n{scrape}"
        );
    }
    for (name, labels) in [
        (format!("{}_bucket", m::JOB_DURATION), vec![("le", "0.001")]),
        (format!("{}_bucket", m::JOB_DURATION), vec![("le", "3600")]),
        (
            format!("{}_bucket", m::JOURNAL_BATCH),
            vec![("le", "10000")],
        ),
        (
            format!("{}_bucket", m::JOURNAL_FSYNC),
            vec![("le", "0.0001")],
        ),
    ] {
        assert!(
            has_series(scrape, &name, &labels),
            "no {name} series with {labels:?}: the buckets are not the configured ones"
        );
    }

    let allowed = [
        "job_name",
        "status",
        "error_type",
        "pipeline",
        "priority",
        "actor_kind",
        "to",
        "outcome",
        "cmd",
        "schedule",
        "kind",
        "table",
        "version",
        "le",
    ];
    let tickers = ["CHGG", "NOPE", "AAPL", "IBM"];
    for Sample {
        name,
        labels,
        value,
    } in samples(scrape)
    {
        assert!(name.starts_with("warden_"), "a foreign metric: {name}");
        assert!(value.parse::<f64>().is_ok(), "{name}: {value}");
        for (k, v) in labels {
            assert!(allowed.contains(&k.as_str()), "{name} has label {k}={v:?}");
            assert!(
                !tickers.iter().any(|t| v.contains(t)) && !looks_like_uuid(&v),
                "{name} has an unbounded label value {k}={v:?}"
            );
        }
    }
    let build = samples(scrape)
        .into_iter()
        .find(|s| s.name == m::BUILD_INFO)
        .unwrap();
    assert_eq!(build.value, "1", "{build:?}");
}

fn looks_like_uuid(v: &str) -> bool {
    v.len() == 36
        && v.bytes().filter(|b| *b == b'-').count() == 4
        && v.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit())
}

// ===== A real Prometheus server =====

/// A `prometheus` child process, killed when dropped (also when the test fails).
struct Prometheus {
    child: Child,
    log: PathBuf,
}

impl Prometheus {
    /// Starts `prometheus` on port 0 of loopback with a 1 s scrape of `target` as job
    /// `warden`, its config, storage and log in `dir`.
    fn start(dir: &Path, target: &str) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: warden\n    scrape_interval: 1s\n    \
                 scrape_timeout: 1s\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("prometheus (Debian's `prometheus` package) must be installed");
        Prometheus { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address it took, from its log's `msg="Listening on" address=…` line (the port the
    /// kernel gave it; the line before that one repeats the flag's port 0).
    fn addr(&self) -> Option<String> {
        let log = self.log();
        let line = log.lines().find(|l| l.contains("msg=\"Listening on\""))?;
        let addr = line.split("address=").nth(1)?.split_whitespace().next()?;
        Some(addr.to_string())
    }

    /// Runs an instant query; returns the first result's value, if any.
    async fn query(&self, promql: &str) -> Option<String> {
        let target = format!("/api/v1/query?query={}", encode(promql));
        let (status, body) = http_get(&self.addr()?, &target).await.ok()?;
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1]
            .as_str()
            .map(String::from)
    }

    /// Polls `promql` until its value is `want`, at most [`WAIT`].
    async fn wait_for(&mut self, promql: &str, want: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.query(promql).await;
            if got.as_deref() == Some(want) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "`{promql}` is {got:?}, not {want}, after {WAIT:?}; prometheus log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ensures that a real Prometheus server scraping a live node every second reads back, through
/// its HTTP query API, exactly the number of jobs that succeeded, and sees the target up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_live_node() {
    const JOBS: usize = 25;
    let mut node = NodeProcess::start(
        None,
        "[log]\nlevel = \"warn\"\n[pipelines.builtin]\nworkers = 4\n",
        &[],
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let mut prometheus = Prometheus::start(tmp.path(), &node.metrics);
    let mut c = node.client().await;
    let jobs: Vec<Value> = (0..JOBS).map(|_| json!({"job": "builtin.noop"})).collect();
    let a = req(&mut c, json!({"cmd": "submit_batch", "jobs": jobs})).await;
    assert_eq!(a["ok"], true, "{a}");
    poll(
        &mut c,
        "every job to succeed",
        WAIT,
        json!({"cmd": "stats"}),
        |s| s["totals"]["succeeded"] == JOBS,
    )
    .await;
    prometheus.wait_for(r#"up{job="warden"}"#, "1").await;
    prometheus
        .wait_for(
            r#"sum(warden_job_executions_total{job="warden",status="succeeded"})"#,
            &JOBS.to_string(),
        )
        .await;
    prometheus
        .wait_for(r#"warden_build_info{job="warden"}"#, "1")
        .await;
    let uptime = prometheus
        .query(r#"warden_uptime_seconds{job="warden"}"#)
        .await
        .and_then(|v| v.parse::<f64>().ok());
    assert!(uptime.is_some_and(|u| u >= 0.0), "uptime {uptime:?}");
}

/// The value of the `warden_queue_depth` series of `pipeline` and `priority`, if exported.
fn queue_depth(scrape: &str, pipeline: &str, priority: &str) -> Option<f64> {
    samples(scrape)
        .into_iter()
        .find(|s| {
            s.is(
                m::QUEUE_DEPTH,
                &[("pipeline", pipeline), ("priority", priority)],
            )
        })
        .and_then(|s| s.value.parse().ok())
}

/// Ensures that `warden_queue_depth` is right after the node is killed and started again:
/// a fresh process knows nothing but its journal, and its gauge shows the replayed jobs still
/// waiting, by pipeline and priority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depth_is_rebuilt_after_a_restart() {
    let mut node = NodeProcess::start(
        None,
        "[log]\nlevel = \"warn\"\n[pipelines.builtin]\nworkers = 1\n",
        &[],
    )
    .await;
    let mut c = node.client().await;
    // One worker busy for 30 s, so everything submitted after it waits.
    let sleeper = submit(&mut c, "builtin.sleep", json!({"ms": 30_000})).await;
    until_running(&mut c, &sleeper).await;
    for priority in ["normal", "normal", "normal", "high", "high"] {
        let a = req(
            &mut c,
            json!({"cmd": "submit", "job": "builtin.noop", "priority": priority}),
        )
        .await;
        assert_eq!(a["ok"], true, "{a}");
    }
    let wait_depth = |node: &NodeProcess, normal: f64, high: f64| {
        let (metrics, what) = (
            node.metrics.clone(),
            format!("{normal} normal, {high} high"),
        );
        async move {
            let deadline = Instant::now() + WAIT;
            loop {
                let scrape = match http_get(&metrics, "/metrics").await {
                    Ok((200, body)) => body,
                    _ => String::new(),
                };
                let got = (
                    queue_depth(&scrape, "builtin", "normal"),
                    queue_depth(&scrape, "builtin", "high"),
                    queue_depth(&scrape, "builtin", "low"),
                );
                if got == (Some(normal), Some(high), Some(0.0)) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "queue depth {got:?}, expected {what}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_depth(&node, 3.0, 2.0).await;
    drop(c);

    // After the kill, the sleep job (running at the crash) goes back to its queue with the
    // others; the two high ones run first, then the sleep job again, and three normal ones wait.
    let node = node.restart().await;
    wait_depth(&node, 3.0, 0.0).await;
}

// ===== The Grafana dashboard =====

/// Every string in a JSON document, depth first.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// The `warden_…` names in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("warden_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        // Only a name's start counts: `xwarden_` is not one.
        let before = rest[..at].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            names.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// The panels of the dashboard, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p.clone());
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested.iter().cloned());
        }
    }
    out
}

/// Ensures that `dashboards/warden.json` is an importable Grafana dashboard of the current
/// schema (a Prometheus datasource variable, timeseries/stat/gauge panels with PromQL
/// targets), that it has the panels operators need, that every metric name it uses is in the
/// catalogue and in a live node's scrape, and that every query parses (`promtool check rules`
/// on the queries with Grafana's variables filled in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_uses_only_exported_metrics() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/warden.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();

    assert!(
        dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion {}",
        dash["schemaVersion"]
    );
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    let vars = dash["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter().any(|v| v["type"] == "datasource"
            && v["query"] == "prometheus"
            && v["name"] == "datasource"),
        "no Prometheus datasource variable"
    );

    let mut exprs = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for p in panels(&dash) {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        for key in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][key].is_u64(), "panel {id}: gridPos.{key}");
        }
        let kind = p["type"].as_str().unwrap();
        if kind == "row" {
            continue;
        }
        assert!(
            ["timeseries", "stat", "gauge"].contains(&kind),
            "panel {id}: type {kind}"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {id}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {id} has no query");
        for t in targets {
            assert!(t["refId"].is_string(), "panel {id}: refId");
            let expr = t["expr"].as_str().expect("expr");
            assert!(expr.contains("warden_"), "panel {id}: {expr}");
            exprs.push(expr.to_string());
        }
    }

    // What the issue asks to see.
    let uses = |what: &str, pred: &dyn Fn(&str) -> bool| {
        assert!(exprs.iter().any(|e| pred(e)), "no panel for {what}");
    };
    uses("execution rate", &|e| {
        e.contains(m::JOB_EXECUTIONS) && e.contains("rate(")
    });
    uses("success ratio", &|e| {
        e.contains(m::JOB_EXECUTIONS) && e.contains("succeeded") && e.contains(" / ")
    });
    uses("p95 duration", &|e| {
        e.contains("histogram_quantile(0.95") && e.contains(&format!("{}_bucket", m::JOB_DURATION))
    });
    uses("queue depth by pipeline and priority", &|e| {
        e.contains(m::QUEUE_DEPTH) && e.contains("pipeline, priority")
    });
    uses("retries by error type", &|e| {
        e.contains(m::JOB_RETRIES) && e.contains("error_type")
    });
    uses("breaker state", &|e| e.contains(m::CIRCUIT_BREAKER_STATE));
    uses("limiter waits", &|e| e.contains(m::RATE_LIMITER_WAIT));
    uses("limiter pauses", &|e| e.contains(m::RATE_LIMITER_PAUSED));
    uses("restarts", &|e| e.contains(m::ACTOR_RESTARTS));
    uses("journal fsync latency", &|e| {
        e.contains(&format!("{}_bucket", m::JOURNAL_FSYNC))
    });

    // Every name anywhere in the dashboard (queries, variables, descriptions) is exported.
    let mut all = Vec::new();
    strings(&dash, &mut all);
    let mut names: Vec<String> = all.iter().flat_map(|s| metric_names(s)).collect();
    names.sort();
    names.dedup();
    assert!(!names.is_empty());
    let scrape = workload_scrape().await;
    for name in &names {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| m::ALL.contains(base))
            })
            .unwrap_or(name);
        assert!(
            m::ALL.contains(&family),
            "the dashboard uses {name}, which is not in the catalogue"
        );
        let exported = scrape.contains(&format!("# TYPE {family} "))
            && (name == family
                || scrape.lines().any(|l| {
                    l.strip_prefix(name.as_str())
                        .is_some_and(|rest| rest.starts_with(['{', ' ']))
                }));
        assert!(
            exported,
            "the dashboard uses {name}, which a live node does not export"
        );
    }

    // Every query parses as PromQL: promtool checks them as recording rules.
    let tmp = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let filled = e
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h")
            .replace("$instance", ".*")
            .replace("$pipeline", ".*");
        assert!(!filled.contains('$'), "an unknown variable in {e}");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&filled).unwrap()
        ));
    }
    let file = tmp.path().join("dashboard-rules.yml");
    std::fs::write(&file, rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool must be installed");
    assert!(
        out.status.success(),
        "dashboard queries do not parse:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ===== JSON logs =====

/// Submits `job` with `token`, waits for it to succeed and returns its id.
async fn run_with_token(c: &mut Client, token: &str, job: &str, params: Value) -> String {
    let a = req(
        c,
        json!({"cmd": "submit", "job": job, "params": params, "token": token}),
    )
    .await;
    assert_eq!(a["ok"], true, "{a}");
    let id = a["job_id"].as_str().unwrap().to_string();
    let s = poll(
        c,
        &format!("{job} to finish"),
        WAIT,
        json!({"cmd": "status", "job_id": id, "token": token}),
        |s| matches!(s["job"]["status"].as_str(), Some("succeeded" | "failed")),
    )
    .await;
    assert_eq!(s["job"]["status"], "succeeded", "{job}: {s}");
    id
}

/// Ensures that with `[log] format = "json"` every log line is one JSON object; that a
/// `builtin.crash` job (its worker fails) produces a "restart scheduled" event whose `actor` is the worker's path
/// and whose `backoff_ms` is within the pipeline's configured restart bounds (jitter included),
/// with `pipeline`, `restarts` and `reason`; that job events carry `job_id`, `job_name` and
/// `attempt`, and an upstream request's line names its job through the attempt's span; and
/// that neither the admin token, nor a wrong token sent by a client, nor the Alpha Vantage key
/// appears anywhere in the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_supervision_fields_and_no_secrets() {
    const TOKEN: &str = "admin-token-5a4b3c2d1e";
    const WRONG: &str = "wrong-token-0f1e2d3c";
    const WORKERS: u64 = 2;
    // [pipelines.builtin] restart: 50 ms .. 400 ms, ±20 %.
    let (min_ms, max_ms, jitter): (f64, f64, f64) = (50.0, 400.0, 0.2);
    let fake = FakeUpstream::start().await;
    let sections = format!(
        r#"
[log]
format = "json"
level = "info,warden=debug,warden_actors=debug"
[pipelines.builtin]
workers = {WORKERS}
retry = {{ max_retries = 3, base_delay = "20ms", max_delay = "100ms" }}
restart = {{ min_backoff = "50ms", max_backoff = "400ms", jitter = 0.2, max_restarts = 10, within = "60s" }}
[pipelines.alphavantage]
workers = 1
base_url = "{}"
api_key_env = "{AV_KEY_ENV}"
rate_limit = "50/s"
"#,
        fake.base_url()
    );
    let mut node = NodeProcess::start(Some(TOKEN), &sections, &[(AV_KEY_ENV, AV_KEY)]).await;
    let mut c = node.client().await;
    let a = req(
        &mut c,
        json!({"cmd": "submit", "job": "builtin.noop", "token": WRONG}),
    )
    .await;
    assert_eq!(a["error"]["code"], "unauthorized", "{a}");
    let panicked = run_with_token(&mut c, TOKEN, "builtin.crash", json!({"times": 1})).await;
    let fetched = run_with_token(
        &mut c,
        TOKEN,
        "alphavantage.overview",
        json!({"symbol": "IBM"}),
    )
    .await;
    // Stop only once the panicked worker runs again, so its restart is in the logs too.
    poll(
        &mut c,
        "the panicked worker to be restarted",
        WAIT,
        json!({"cmd": "tree", "token": TOKEN}),
        |t| {
            let mut nodes = vec![&t["tree"]];
            while let Some(n) = nodes.pop() {
                if n["kind"] == "worker"
                    && n["path"]
                        .as_str()
                        .is_some_and(|p| p.starts_with("root/pipeline:builtin/"))
                    && n["status"] == "running"
                    && n["restarts"].as_u64().is_some_and(|r| r >= 1)
                {
                    return true;
                }
                nodes.extend(n["children"].as_array().into_iter().flatten());
            }
            false
        },
    )
    .await;
    drop(c);
    let (status, lines) = node.shutdown(Some(TOKEN)).await;
    assert!(status.success(), "exit {status}");
    drop(fake);

    let events: Vec<Value> = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l}"));
            assert!(v.is_object(), "{l}");
            v
        })
        .collect();
    let all = lines.join("\n");
    for secret in [TOKEN, WRONG, AV_KEY] {
        assert!(!all.contains(secret), "{secret} is in the logs");
    }

    let restart = events
        .iter()
        .find(|e| e["message"] == "restart scheduled" && e["pipeline"] == "builtin")
        .unwrap_or_else(|| panic!("no restart event in:\n{all}"));
    let actor = restart["actor"].as_str().expect("actor");
    let n: u64 = actor
        .strip_prefix("root/pipeline:builtin/worker-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("actor {actor} is not a builtin worker's path"));
    assert!((1..=WORKERS).contains(&n), "{actor}");
    let backoff = restart["backoff_ms"].as_f64().expect("backoff_ms");
    assert!(
        backoff >= (min_ms * (1.0 - jitter)).floor() && backoff <= (max_ms * (1.0 + jitter)).ceil(),
        "backoff_ms {backoff} outside {min_ms} .. {max_ms} ms ± {jitter}: {restart}"
    );
    assert!(
        restart["restarts"].as_u64().is_some_and(|r| r >= 1),
        "{restart}"
    );
    assert!(
        restart["reason"]
            .as_str()
            .is_some_and(|r| r.contains("worker fault")),
        "{restart}"
    );
    assert_eq!(restart["level"], "INFO", "{restart}");
    // The failure before it and the new incarnation after it name the same actor.
    assert!(
        events.iter().any(|e| e["message"] == "failed"
            && e["actor"] == actor
            && e["pipeline"] == "builtin"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("worker fault"))),
        "no \"failed\" event with the worker fault as reason for {actor}"
    );
    assert!(
        events.iter().any(|e| e["message"] == "started"
            && e["actor"] == actor
            && e["pipeline"] == "builtin"
            && e["restarts"].as_u64().is_some_and(|r| r >= 1)),
        "no \"started\" event with restarts >= 1 for {actor}"
    );

    // Job lifecycle events name the job; the upstream request's line names it through the span.
    assert!(
        events.iter().any(|e| e["job_id"] == panicked.as_str()
            && e["job_name"] == "builtin.crash"
            && e["attempt"].is_u64()),
        "no lifecycle event with job_id, job_name and attempt for {panicked}"
    );
    assert!(
        events.iter().any(|e| e["message"] == "upstream answered"
            && e["span"]["job_id"] == fetched.as_str()
            && e["span"]["job_name"] == "alphavantage.overview"),
        "no upstream line naming job {fetched}"
    );
}
