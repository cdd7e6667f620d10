//! The typed arguments a node runs with. The root crate turns the TOML config into these once,
//! with every default filled in, so actors never see an `Option` that means "use the default".

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::job::Priority;

/// Everything [`crate::node::Node::start`] needs.
#[derive(Debug, Clone)]
pub struct NodeArgs {
    /// The node's name, reported by `ping` and in alerts.
    pub name: String,
    /// Where the journal (sled) lives; created if missing.
    pub data_dir: PathBuf,
    /// How long a graceful stop waits for running jobs.
    pub shutdown_timeout: Duration,
    /// Bytes that must stay free on the data dir's file system for new writes to be admitted
    /// (see `Journal::admit_writes`); 0 disables the check.
    pub min_free_space: u64,
    /// sled's page cache bound in bytes.
    pub cache_size: u64,
    /// The admin port.
    pub admin: AdminArgs,
    /// Queueing, retention and cancellation limits.
    pub jobs: JobsArgs,
    /// Restart policy of the root supervisor (for the dispatcher, admin and pipeline supervisors).
    pub restart: RestartPolicy,
    /// The pipelines to start; `builtin` is always among them.
    pub pipelines: Vec<PipelineArgs>,
    /// Routing rules, first match wins.
    pub routes: Vec<RouteArgs>,
    /// Cron schedules that submit jobs.
    pub schedules: Vec<ScheduleArgs>,
    /// Where alerts go, when configured.
    pub alerts: Option<AlertsArgs>,
    /// The web console, when enabled.
    pub console: Option<ConsoleArgs>,
    /// Where records are shipped besides the journal (`[sinks.postgres]`), when configured.
    pub sink: Option<PostgresSinkArgs>,
    /// Cluster mode (`[store] kind = "postgres"`): the jobs live in PostgreSQL. None: in the
    /// journal.
    pub store: Option<crate::cluster::ClusterArgs>,
}

/// The web console (`[console]`, docs/console.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleArgs {
    /// Address to bind; port 0 picks a free one (tests).
    pub listen: SocketAddr,
    /// Hide and refuse every action: the console only shows.
    pub read_only: bool,
    /// How often pages refresh in place when JavaScript runs.
    pub refresh: Duration,
    /// Host names (besides IP literals and `localhost`) a request may name in its `Host`
    /// header; any other is refused, so a DNS-rebinding page cannot reach the console.
    pub allowed_hosts: Vec<String>,
}

/// `[sinks.postgres]`: the PostgreSQL sink (`crate::sink`). `Debug` never shows the URL, which
/// may hold a password.
#[derive(Clone, PartialEq)]
pub struct PostgresSinkArgs {
    /// The connection URL or key=value string (`postgres://user:pass@host:5432/db`).
    pub url: String,
    /// The schema the tables live in, created when missing; a plain lower-case identifier.
    pub schema: String,
    /// Outbox entries shipped per transaction.
    pub batch: usize,
    /// How often an idle sink looks for new records (the longest a record waits when
    /// PostgreSQL is up and the backlog is small).
    pub flush_every: Duration,
    /// The longest wait between two tries while PostgreSQL is unreachable.
    pub max_backoff: Duration,
    /// Connecting, and any one statement, may take this long before the try fails.
    pub timeout: Duration,
}

impl std::fmt::Debug for PostgresSinkArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSinkArgs")
            .field("url", &"***")
            .field("schema", &self.schema)
            .field("batch", &self.batch)
            .field("flush_every", &self.flush_every)
            .field("max_backoff", &self.max_backoff)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What a schedule does about ticks missed while the node was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatchUp {
    /// Skip them.
    None,
    /// Fire once for the latest missed tick.
    #[default]
    Latest,
    /// Fire once for every missed tick.
    All,
}

/// What a schedule does when its previous run is still unfinished at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overlap {
    /// Skip the tick.
    #[default]
    Skip,
    /// Submit anyway.
    Allow,
}

/// One cron schedule (`[[schedules]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleArgs {
    /// Its name, unique.
    pub name: String,
    /// The cron expression, UTC; the seconds field is optional (`"0 0 2 * * *"`, `"*/5 * * * *"`).
    pub cron: String,
    /// The job to submit at each tick.
    pub job: String,
    /// The job's params (`"@universe"` already replaced by the universe's tickers).
    pub params: serde_json::Value,
    /// The job's priority; default from routing.
    pub priority: Option<Priority>,
    /// Ticks missed while the node was down.
    pub catch_up: CatchUp,
    /// A tick while the previous run is unfinished.
    pub overlap: Overlap,
}

/// The alert webhook (`[alerts]`).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertsArgs {
    /// Receives a JSON POST per alert.
    pub webhook_url: String,
    /// Alerts waiting to be sent at most; beyond it the oldest are dropped (and counted).
    pub queue: usize,
    /// Tries per alert before it is dropped (and counted).
    pub max_attempts: u32,
    /// Timeout of one POST.
    pub timeout: Duration,
}

/// The admin actor's listener and limits (docs/protocol.md, "Framing and limits").
#[derive(Debug, Clone)]
pub struct AdminArgs {
    /// Address to bind; port 0 picks a free one (tests).
    pub listen: SocketAddr,
    /// Connections served at once; the next gets `overloaded`.
    pub max_connections: usize,
    /// Longest request line; longer gets `too_large` and the connection is closed.
    pub max_line_bytes: usize,
    /// A connection idle this long is closed.
    pub idle_timeout: Duration,
    /// Shared secret required by every command but `ping`, when set.
    pub token: Option<String>,
}

/// Limits on jobs as a whole.
#[derive(Debug, Clone)]
pub struct JobsArgs {
    /// Unfinished jobs the node holds at most; beyond it a submit gets `overloaded`.
    pub max_queued: usize,
    /// A normal or low job waiting longer than this is promoted one level (anti-starvation).
    pub max_wait: Duration,
    /// Finished jobs are kept this long, then compacted away.
    pub retention: Duration,
    /// How long a cancelled running job may take to stop before it is aborted.
    pub cancel_grace: Duration,
}

/// When and how often a failed job is retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Delay before the first retry; doubles each time.
    pub base_delay: Duration,
    /// Cap on the delay.
    pub max_delay: Duration,
}

/// How a supervisor restarts its children (OTP's restart intensity, with backoff).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    /// Backoff before the first restart of a child.
    pub min_backoff: Duration,
    /// Cap on the backoff.
    pub max_backoff: Duration,
    /// Relative jitter applied to each backoff, 0.0 ..= 1.0.
    pub jitter: f64,
    /// At most this many restarts ...
    pub max_restarts: u32,
    /// ... within this window; one more and the supervisor fails itself (escalation).
    pub within: Duration,
}

/// One pipeline: its supervisor, workers and (for upstream pipelines) limiter and breaker.
#[derive(Debug, Clone)]
pub struct PipelineArgs {
    /// `builtin`, `sec`, `yahoo`, `alphavantage`.
    pub name: String,
    /// Ingestion workers.
    pub workers: usize,
    /// Job retry policy.
    pub retry: RetryPolicy,
    /// How the pipeline supervisor restarts its workers.
    pub restart: RestartPolicy,
    /// The upstream API, for pipelines that have one (all but `builtin`).
    pub upstream: Option<UpstreamArgs>,
    /// Time limits of every job of the pipeline.
    pub limits: TimeLimits,
    /// Time limits of particular tasks, overriding `limits` key by key.
    pub task_limits: std::collections::BTreeMap<String, TimeLimits>,
    /// A worker is replaced after this many jobs (between jobs), when set.
    pub max_jobs_per_worker: Option<u64>,
    /// Exec tasks this pipeline runs (`[tasks."<name>"]` of the config).
    pub exec: Vec<ExecTaskArgs>,
    /// Tasks written in Rust and registered by an embedding program (`warden::Node::builder`).
    pub custom: crate::tasks::TaskSet,
}

/// One exec task: a program run once per attempt, speaking JSON lines (docs/tasks.md). The root
/// crate resolves and checks every path before the node starts ([`crate::exec::check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecTaskArgs {
    /// The job name it serves, `filing.analyze`.
    pub name: String,
    /// The program and its arguments; no shell. The program is an absolute path once resolved.
    pub command: Vec<String>,
    /// The working directory, absolute once resolved.
    pub cwd: PathBuf,
    /// Variables added to the minimal environment the process gets.
    pub env: std::collections::BTreeMap<String, String>,
    /// Variables passed through from the node's own environment when set there.
    pub inherit_env: Vec<String>,
    /// Longest stdout line accepted, in bytes; a longer one is a protocol error.
    pub max_line_bytes: usize,
    /// Bytes of stderr kept per attempt (its tail), put in the job's error when it fails.
    pub stderr_tail_bytes: usize,
}

impl ExecTaskArgs {
    /// Default of `max_line_bytes`: 1 MiB, room for a large record.
    pub const DEFAULT_MAX_LINE_BYTES: usize = 1 << 20;
    /// Default of `stderr_tail_bytes`: 64 KiB.
    pub const DEFAULT_STDERR_TAIL_BYTES: usize = 64 << 10;
}

/// How long a job may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeLimits {
    /// At this point the job is told (it may clean up and finish).
    pub soft: Option<Duration>,
    /// At this point the job is aborted (a transient `timeout` failure) and its worker replaced.
    pub hard: Option<Duration>,
}

impl TimeLimits {
    /// `self`, with the keys `over` sets replacing its own.
    pub fn overridden_by(self, over: Option<&TimeLimits>) -> TimeLimits {
        match over {
            None => self,
            Some(o) => TimeLimits {
                soft: o.soft.or(self.soft),
                hard: o.hard.or(self.hard),
            },
        }
    }

    /// True when neither limit is set.
    pub fn is_none(&self) -> bool {
        self.soft.is_none() && self.hard.is_none()
    }
}

/// How a pipeline reaches its upstream API (docs/upstreams.md, "Configuration"). Its `Debug`
/// hides the API key, so logging the arguments never leaks it.
#[derive(Clone)]
pub struct UpstreamArgs {
    /// The API's base URL (a fake on loopback in tests).
    pub base_url: String,
    /// SEC only: the ticker → CIK map's URL.
    pub tickers_url: Option<String>,
    /// Sent as `User-Agent` on every request (SEC requires a declared one).
    pub user_agent: Option<String>,
    /// Alpha Vantage only: the API key, read from the variable named by `api_key_env`.
    pub api_key: Option<String>,
    /// Every window the upstream allows, all enforced at once (`"5/m, 25/d"`).
    pub rate_limit: Vec<RateWindow>,
    /// A request that takes longer fails as transient.
    pub request_timeout: Duration,
    /// The circuit breaker.
    pub breaker: BreakerArgs,
    /// How long the whole source pauses after a throttle signal that named no time.
    pub throttle_cooldown: Duration,
}

impl std::fmt::Debug for UpstreamArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamArgs")
            .field("base_url", &self.base_url)
            .field("tickers_url", &self.tickers_url)
            .field("user_agent", &self.user_agent)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("rate_limit", &self.rate_limit)
            .field("request_timeout", &self.request_timeout)
            .field("breaker", &self.breaker)
            .field("throttle_cooldown", &self.throttle_cooldown)
            .finish()
    }
}

/// At most `limit` requests in any sliding window of length `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateWindow {
    /// Requests allowed per window.
    pub limit: u32,
    /// The window's length.
    pub per: Duration,
}

/// Circuit breaker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerArgs {
    /// Consecutive transient failures that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before one probe is let through.
    pub open_for: Duration,
    /// Cap on `open_for`, which doubles after each failed probe.
    pub max_open_for: Duration,
}

/// Routes job names matching `pattern` (a glob such as `sec.*`) to a pipeline and priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteArgs {
    /// Glob over job names.
    pub pattern: String,
    /// Pipeline override; by default a job goes to the pipeline named before its first dot.
    pub pipeline: Option<String>,
    /// Default priority for matching jobs when the submit gives none.
    pub priority: Option<Priority>,
}

impl RestartPolicy {
    /// Defaults used when the config says nothing: 100 ms .. 10 s, 10 % jitter, 10 in 60 s.
    pub const DEFAULT: RestartPolicy = RestartPolicy {
        min_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(10),
        jitter: 0.1,
        max_restarts: 10,
        within: Duration::from_secs(60),
    };
}

impl RetryPolicy {
    /// Defaults: 3 retries, 2 s doubling to 10 min (config/default.toml).
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        max_retries: 3,
        base_delay: Duration::from_secs(2),
        max_delay: Duration::from_secs(600),
    };
}
