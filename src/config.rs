//! The node's TOML config: what a user may write, how it is checked, and how it becomes the
//! actors' typed arguments ([`NodeArgs`]).
//!
//! Every section and every key is optional and takes the default spelled out in
//! `config/default.toml` (embedded as [`DEFAULT_TOML`]); unknown keys are errors. Parsing and
//! validation happen in [`Config::from_str`], file IO in [`Config::from_file`], so every error
//! names the file, the key path and what was expected:
//!
//! ```text
//! config/x.toml: jobs.retention: invalid value: expected a duration like "30s" or "7days", got "soon" (line 14, column 13)
//! config/x.toml: pipelines.builtin.workers: expected 1 ..= 1024, got 0
//! ```
//!
//! Durations are humantime strings (`"250ms"`, `"30s"`, `"7days"`). The `builtin` pipeline is
//! always started; other pipelines only when they have a `[pipelines.<name>]` section.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use warden_actors::args::{
    AdminArgs, JobsArgs, NodeArgs, PipelineArgs, RestartPolicy, RetryPolicy, RouteArgs, TimeLimits,
};
use warden_actors::job::Priority;
use warden_actors::tasks::TaskSet;

mod console;
#[cfg(test)]
mod defaults_test;
mod extras;
mod sinks;
mod store;
mod tasks;
mod upstream;

pub use self::console::ConsoleSection;
pub use self::extras::{AlertsSection, ScheduleSection, UniverseSection};
pub use self::sinks::{PostgresSinkSection, SinksSection};
pub use self::store::{StoreKind, StoreSection};
pub use self::tasks::TaskSection;
pub use self::upstream::BreakerSection;
use self::upstream::UpstreamKeys;

/// The default config, every key with its default value; used when `--config` isn't given.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The origin named in errors about [`DEFAULT_TOML`].
pub const DEFAULT_ORIGIN: &str = "<embedded default>";

/// Environment variable whose value, when set and non-empty, replaces `admin.token`.
pub const TOKEN_ENV: &str = "WARDEN_ADMIN_TOKEN";

/// The pipeline every node runs, configured or not.
pub const BUILTIN_PIPELINE: &str = "builtin";

/// Pipelines built into this build: the built-in one and the three upstream sources of
/// docs/upstreams.md. Any other pipeline runs exec or Rust tasks (`config/tasks.rs`) and is an
/// error when none names it, not silently started empty.
pub const KNOWN_PIPELINES: &[&str] = &[BUILTIN_PIPELINE, "sec", "yahoo", "alphavantage"];

/// Upper bound on `workers`: more than this is a typo, not a plan.
const MAX_WORKERS: usize = 1024;

/// Lower bound on `admin.max_line_bytes`: a smaller limit would reject ordinary commands.
const MIN_LINE_BYTES: usize = 1024;
/// The smallest `[node] cache_size` accepted: sled needs room for its working set.
const MIN_CACHE_BYTES: u64 = 8 << 20;

/// A whole node config, as parsed and validated by [`Config::from_str`], defaults filled in.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[node]`: identity, data directory, shutdown grace.
    #[serde(default)]
    pub node: NodeSection,
    /// `[admin]`: the admin port.
    #[serde(default)]
    pub admin: AdminSection,
    /// `[metrics]`: the Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// `[log]`: log format and filter.
    #[serde(default)]
    pub log: LogSection,
    /// `[console]`: the web console.
    #[serde(default)]
    pub console: ConsoleSection,
    /// `[jobs]`: queueing, retention and cancellation limits.
    #[serde(default)]
    pub jobs: JobsSection,
    /// `[supervisor]`: the root supervisor's restart policy.
    #[serde(default)]
    pub supervisor: SupervisorSection,
    /// `[universe]`: the tickers schedules may reference as `"@universe"`.
    #[serde(default)]
    pub universe: UniverseSection,
    /// `[[schedules]]`: cron schedules.
    #[serde(default)]
    pub schedules: Vec<ScheduleSection>,
    /// `[alerts]`: the alert webhook, when set.
    #[serde(default)]
    pub alerts: Option<AlertsSection>,
    /// `[sinks.postgres]`: records shipped to PostgreSQL, when set.
    #[serde(default)]
    pub sinks: SinksSection,
    /// `[store]`: where the jobs live (the journal, or PostgreSQL in cluster mode).
    #[serde(default)]
    pub store: StoreSection,
    /// `[pipelines.<name>]`: the pipelines to start; always holds `builtin` after parsing.
    #[serde(default)]
    pub pipelines: BTreeMap<String, PipelineSection>,
    /// `[[routes]]`: routing rules, first match wins.
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    /// `[tasks."<name>"]`: exec tasks (docs/tasks.md).
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskSection>,
    /// The directory relative paths of `[tasks]` start from: the config file's, set by
    /// [`Config::from_file`]; `None` (the working directory) for a config from text.
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// The node's name, reported by `ping` and in alerts; default `"warden"`.
    pub name: String,
    /// Where the journal lives; default `"data"` (relative to the working directory).
    pub data_dir: PathBuf,
    /// How long a graceful stop waits for running jobs; default 30 s.
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// Bytes that must stay free on the data dir's file system for new submits to be accepted;
    /// default 64 MiB, 0 disables the check.
    pub min_free_space: u64,
    /// Memory the journal's page cache may take (sled gets a fifth of it, see
    /// `journal::SLED_CACHE_SHARE`); default 256 MiB, at least 8 MiB.
    pub cache_size: u64,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSection {
    /// Address to bind; default `127.0.0.1:7070`.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// Connections served at once; default 256.
    pub max_connections: usize,
    /// Longest request line in bytes; default 1 MiB, at least 1024.
    pub max_line_bytes: usize,
    /// A connection idle this long is closed; default 5 min.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Shared secret for every command but `ping`; `None` disables auth. [`TOKEN_ENV`] overrides
    /// it in [`Config::into_args`].
    pub token: Option<String>,
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// Address of the Prometheus endpoint; default `127.0.0.1:9464`.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
}

/// `[log]`. Read by `main.rs` when it installs the tracing subscriber.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// Human or JSON lines; default pretty.
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `"info"` or `"warden=debug,info"`; `RUST_LOG` overrides
    /// it at runtime. Default `"info"`.
    pub level: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, for terminals.
    #[default]
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `[jobs]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsSection {
    /// Unfinished jobs held at most; default 1 000 000.
    pub max_queued: usize,
    /// Wait after which a normal or low job is promoted one level; default 5 min.
    #[serde(deserialize_with = "duration")]
    pub max_wait: Duration,
    /// How long finished jobs are kept; default 7 days.
    #[serde(deserialize_with = "duration")]
    pub retention: Duration,
    /// How long a cancelled running job may take to stop; default 10 s.
    #[serde(deserialize_with = "duration")]
    pub cancel_grace: Duration,
}

/// `[supervisor]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisorSection {
    /// The root supervisor's restart policy; default [`RestartPolicy::DEFAULT`].
    pub restart: RestartSection,
}

/// A restart policy as written in the config ([`RestartPolicy`]); missing keys take
/// [`RestartPolicy::DEFAULT`]'s values.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestartSection {
    /// Backoff before the first restart; at most `max_backoff`.
    #[serde(deserialize_with = "duration")]
    pub min_backoff: Duration,
    /// Cap on the backoff.
    #[serde(deserialize_with = "duration")]
    pub max_backoff: Duration,
    /// Relative jitter, 0.0 ..= 1.0.
    pub jitter: f64,
    /// Restarts allowed within `within`; at least 1.
    pub max_restarts: u32,
    /// The restart window; above zero.
    #[serde(deserialize_with = "duration")]
    pub within: Duration,
}

/// A retry policy as written in the config ([`RetryPolicy`]); missing keys take
/// [`RetryPolicy::DEFAULT`]'s values.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySection {
    /// Retries after the first attempt; 0 means none.
    pub max_retries: u32,
    /// Delay before the first retry, doubling each time; at most `max_delay`.
    #[serde(deserialize_with = "duration")]
    pub base_delay: Duration,
    /// Cap on the delay.
    #[serde(deserialize_with = "duration")]
    pub max_delay: Duration,
}

/// `[pipelines.<name>]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineSection {
    /// Ingestion workers, 1 ..= 1024; default 4.
    pub workers: usize,
    /// Job retry policy; default [`RetryPolicy::DEFAULT`].
    pub retry: RetrySection,
    /// How the pipeline supervisor restarts its workers; default [`RestartPolicy::DEFAULT`].
    pub restart: RestartSection,
    /// The upstream API's base URL; default the real host (docs/upstreams.md). Not for `builtin`.
    pub base_url: Option<String>,
    /// `sec` only: the ticker → CIK map's URL.
    pub tickers_url: Option<String>,
    /// Sent as `User-Agent`; required for `sec`.
    pub user_agent: Option<String>,
    /// Windows such as `"10/s"` or `"5/m, 25/d"`; default the source's published limits.
    pub rate_limit: Option<String>,
    /// Requests taking longer fail as transient; default 30 s.
    #[serde(deserialize_with = "opt_duration")]
    pub request_timeout: Option<Duration>,
    /// The circuit breaker.
    pub breaker: Option<BreakerSection>,
    /// `alphavantage` only: the environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// How long the source pauses after a throttle signal that names no time.
    #[serde(deserialize_with = "opt_duration")]
    pub throttle_cooldown: Option<Duration>,
    /// Hard time limit of every job: aborted, counted as a transient `timeout`, worker replaced.
    #[serde(deserialize_with = "opt_duration")]
    pub time_limit: Option<Duration>,
    /// Soft time limit of every job: the job is told and may clean up and finish.
    #[serde(deserialize_with = "opt_duration")]
    pub soft_time_limit: Option<Duration>,
    /// A worker is replaced after this many jobs, between jobs.
    pub max_jobs_per_worker: Option<u64>,
    /// Per-task time limits: `tasks = { "builtin.sleep" = { time_limit = "2s" } }`.
    pub tasks: BTreeMap<String, TaskLimitsSection>,
}

/// One task's time limits, overriding the pipeline's key by key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskLimitsSection {
    /// Hard limit.
    #[serde(deserialize_with = "opt_duration")]
    pub time_limit: Option<Duration>,
    /// Soft limit.
    #[serde(deserialize_with = "opt_duration")]
    pub soft_time_limit: Option<Duration>,
}

impl From<TaskLimitsSection> for TimeLimits {
    fn from(t: TaskLimitsSection) -> Self {
        TimeLimits {
            soft: t.soft_time_limit,
            hard: t.time_limit,
        }
    }
}

impl PipelineSection {
    /// The pipeline `name` as the node takes it: its upstream resolved (secrets from `env`),
    /// with the exec and custom tasks (and their time limits) `own` places on it.
    fn into_args(
        self,
        name: String,
        own: Option<&tasks::Own>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<PipelineArgs, Problem> {
        let key = format!("pipelines.{name}");
        let upstream = upstream::resolve(&name, &self.upstream_keys(), &key, env)?;
        let mut task_limits: BTreeMap<String, TimeLimits> = self
            .tasks
            .iter()
            .map(|(k, v)| (k.clone(), (*v).into()))
            .collect();
        let (exec, custom) = own
            .map(|m| (m.exec.clone(), m.custom.clone()))
            .unwrap_or_default();
        for (task, limits) in own.map(|m| m.limits.clone()).unwrap_or_default() {
            task_limits.insert(task, limits);
        }
        Ok(PipelineArgs {
            name,
            workers: self.workers,
            retry: self.retry.into(),
            restart: self.restart.into(),
            upstream,
            limits: TimeLimits {
                soft: self.soft_time_limit,
                hard: self.time_limit,
            },
            task_limits,
            max_jobs_per_worker: self.max_jobs_per_worker,
            exec,
            custom,
        })
    }

    fn upstream_keys(&self) -> UpstreamKeys<'_> {
        UpstreamKeys {
            base_url: self.base_url.as_deref(),
            tickers_url: self.tickers_url.as_deref(),
            user_agent: self.user_agent.as_deref(),
            rate_limit: self.rate_limit.as_deref(),
            request_timeout: self.request_timeout,
            breaker: self.breaker,
            api_key_env: self.api_key_env.as_deref(),
            throttle_cooldown: self.throttle_cooldown,
        }
    }
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// `match`: a glob over job names such as `"sec.*"`. Only its shape is checked here (not
    /// empty, brackets and braces closed, no dangling `\`); the actors crate compiles it with
    /// globset and reports anything finer, such as a reversed range `[z-a]`.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Pipeline for matching jobs; must be a configured one.
    #[serde(default)]
    pub pipeline: Option<String>,
    /// Priority for matching jobs when the submit gives none.
    #[serde(default, deserialize_with = "priority")]
    pub priority: Option<Priority>,
}

/// Why a config could not be loaded. Each variant names the file (or [`DEFAULT_ORIGIN`]).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read; the IO error is the source.
    #[error("{}: cannot read the config file: {source}", path.display())]
    Read {
        /// The file asked for.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The text is not TOML, or does not fit the schema (unknown key, wrong type, bad value).
    #[error("{origin}: {message}")]
    Parse {
        /// The file path or [`DEFAULT_ORIGIN`].
        origin: String,
        /// The key path, what was expected and what came, and the line and column.
        message: String,
    },
    /// The config fits the schema but breaks a rule (a bound, an unknown pipeline, ...).
    #[error("{origin}: {key}: {message}")]
    Invalid {
        /// The file path or [`DEFAULT_ORIGIN`].
        origin: String,
        /// The key path, such as `pipelines.builtin.workers` or `routes[0].pipeline`.
        key: String,
        /// What was expected and what came.
        message: String,
    },
}

/// Whether two listen addresses would bind the same port: equal nonzero ports on the same IP,
/// or on any IP when either is the unspecified address (it takes the port on every interface).
/// Port 0 means "a free one", so two port-0 addresses never clash.
fn listen_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl Config {
    /// Parses and validates `text`; `origin` (the file path or [`DEFAULT_ORIGIN`]) prefixes every
    /// error. Adds the `builtin` pipeline with its defaults when the text has none.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] when the text isn't TOML or doesn't fit the schema,
    /// [`ConfigError::Invalid`] when a value breaks a rule.
    pub fn from_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            origin: origin.to_owned(),
            message,
        };
        let deserializer = toml::Deserializer::parse(text).map_err(|err| {
            parse_error(format!(
                "invalid TOML: {}{}",
                err.message(),
                location(text, err.span())
            ))
        })?;
        let mut config: Config = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let key = err.path().to_string();
            let err = err.into_inner();
            let key = if key == "." {
                String::new()
            } else {
                key + ": "
            };
            parse_error(format!(
                "{key}{}{}",
                err.message(),
                location(text, err.span())
            ))
        })?;
        ensure_builtin(&mut config.pipelines);
        config
            .validate()
            .map_err(|Problem { key, message }| ConfigError::Invalid {
                origin: origin.to_owned(),
                key,
                message,
            })?;
        Ok(config)
    }

    /// Reads `path` and parses it with [`Config::from_str`], naming the path in every error.
    ///
    /// # Errors
    /// [`ConfigError::Read`] when the file can't be read, else those of [`Config::from_str`].
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::from_str(&text, &path.display().to_string())?;
        config.base_dir = Some(path.parent().unwrap_or(Path::new(".")).to_path_buf());
        Ok(config)
    }

    /// The embedded [`DEFAULT_TOML`], parsed.
    ///
    /// # Panics
    /// Only if the embedded file is broken, which `embedded_default_parses` rules out.
    pub fn embedded_default() -> Config {
        Config::from_str(DEFAULT_TOML, DEFAULT_ORIGIN)
            .unwrap_or_else(|err| panic!("the embedded default config is broken: {err}"))
    }

    /// The actors' arguments, everything filled in. `env` reads an environment variable (the
    /// caller passes `std::env::var`, tests pass a map): [`TOKEN_ENV`], when set and non-empty,
    /// replaces `admin.token`, and each Alpha Vantage pipeline reads its key from its
    /// `api_key_env`. `metrics` and `log` are not part of [`NodeArgs`]: `main.rs` reads them
    /// before calling this.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `origin` and the key when an environment variable a
    /// pipeline needs is not set.
    pub fn into_args(
        self,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<NodeArgs, ConfigError> {
        self.into_args_with(origin, env, TaskSet::default())
    }

    /// [`Config::into_args`] with Rust tasks of an embedding program (`warden::Node::builder`)
    /// placed into their pipelines beside the exec tasks of `[tasks]`; each task goes to the
    /// pipeline routing sends its name to, started with defaults when it has no section. A
    /// pipeline left with no task at all (not `builtin`, no upstream) is an error: most likely a
    /// misspelt name.
    ///
    /// # Errors
    /// Those of [`Config::into_args`], and [`ConfigError::Invalid`] for an exec task whose
    /// paths do not check (naming the task and the path) or a pipeline without tasks.
    pub fn into_args_with(
        mut self,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
        custom: TaskSet,
    ) -> Result<NodeArgs, ConfigError> {
        ensure_builtin(&mut self.pipelines);
        let invalid = |Problem { key, message }| ConfigError::Invalid {
            origin: origin.to_owned(),
            key,
            message,
        };
        let own = self.own_tasks(env, custom).map_err(invalid)?;
        let token = env(TOKEN_ENV)
            .filter(|t| !t.is_empty())
            .or(self.admin.token);
        let mut pipelines = Vec::with_capacity(self.pipelines.len());
        for (name, p) in self.pipelines {
            let mine = own.pipelines.get(&name);
            pipelines.push(p.into_args(name, mine, env).map_err(invalid)?);
        }
        let routes = own
            .routes
            .into_iter()
            .chain(self.routes.into_iter().map(|r| RouteArgs {
                pattern: r.pattern,
                pipeline: r.pipeline,
                priority: r.priority,
            }));
        Ok(NodeArgs {
            name: self.node.name,
            data_dir: self.node.data_dir,
            shutdown_timeout: self.node.shutdown_timeout,
            min_free_space: self.node.min_free_space,
            cache_size: self.node.cache_size,
            admin: AdminArgs {
                listen: self.admin.listen,
                max_connections: self.admin.max_connections,
                max_line_bytes: self.admin.max_line_bytes,
                idle_timeout: self.admin.idle_timeout,
                token,
            },
            jobs: JobsArgs {
                max_queued: self.jobs.max_queued,
                max_wait: self.jobs.max_wait,
                retention: self.jobs.retention,
                cancel_grace: self.jobs.cancel_grace,
            },
            restart: self.supervisor.restart.into(),
            pipelines,
            routes: routes.collect(),
            schedules: extras::resolve_schedules(self.schedules, &self.universe),
            alerts: self.alerts.map(extras::resolve_alerts),
            console: self.console.into_args(),
            sink: sinks::resolve(self.sinks, env).map_err(invalid)?,
            store: store::resolve(self.store, self.admin.listen, env).map_err(invalid)?,
        })
    }

    /// Checks the rules the schema can't express; the first broken one is reported.
    fn validate(&self) -> Result<(), Problem> {
        self.validate_node()?;
        self.validate_admin()?;
        self.console
            .validate(self.admin.listen, self.metrics.listen)?;
        validate_log_level(&self.log.level)?;
        at_least("jobs.max_queued", self.jobs.max_queued, 1)?;
        self.supervisor.restart.validate("supervisor.restart")?;
        for (name, pipeline) in &self.pipelines {
            if let Some(why) = pipeline_name_problem(name) {
                return Err(Problem::new(format!("pipelines.{name}"), why));
            }
            pipeline.validate(&format!("pipelines.{name}"))?;
            upstream::validate(
                name,
                &pipeline.upstream_keys(),
                &format!("pipelines.{name}"),
            )?;
        }
        for (name, task) in &self.tasks {
            tasks::validate(name, task, &self.routes)?;
        }
        extras::validate_schedules(&self.schedules, &self.universe)?;
        if let Some(alerts) = &self.alerts {
            extras::validate_alerts(alerts)?;
        }
        sinks::validate(&self.sinks)?;
        store::validate(&self.store)?;
        self.validate_routes()
    }

    /// `[node]`: a name, a data dir, a cache the journal can work with.
    fn validate_node(&self) -> Result<(), Problem> {
        let node = &self.node;
        if node.name.is_empty() {
            return Err(Problem::new(
                "node.name",
                "expected a non-empty name, got \"\"",
            ));
        }
        if node.data_dir.as_os_str().is_empty() {
            return Err(Problem::new(
                "node.data_dir",
                "expected a directory path, got \"\"",
            ));
        }
        at_least("node.cache_size", node.cache_size, MIN_CACHE_BYTES)
    }

    /// `[admin]`: limits above zero, a non-empty token, a port of its own.
    fn validate_admin(&self) -> Result<(), Problem> {
        let admin = &self.admin;
        at_least("admin.max_connections", admin.max_connections, 1)?;
        at_least("admin.max_line_bytes", admin.max_line_bytes, MIN_LINE_BYTES)?;
        if admin.token.as_deref() == Some("") {
            return Err(Problem::new(
                "admin.token",
                "expected a non-empty secret (leave the key out to disable auth), got \"\"",
            ));
        }
        if admin.idle_timeout.is_zero() {
            return Err(Problem::new(
                "admin.idle_timeout",
                "expected a duration above zero like \"5m\" (0 would close every connection at \
                 once), got \"0s\"",
            ));
        }
        if listen_clash(admin.listen, self.metrics.listen) {
            return Err(Problem::new(
                "admin.listen",
                format!(
                    "expected an address other than metrics.listen's, got {} and metrics.listen = \
                     {} (both ports would be bound)",
                    admin.listen, self.metrics.listen
                ),
            ));
        }
        Ok(())
    }

    /// `[[routes]]`: each pattern a glob, each target a configured pipeline.
    fn validate_routes(&self) -> Result<(), Problem> {
        for (i, route) in self.routes.iter().enumerate() {
            if let Some(why) = glob_problem(&route.pattern) {
                return Err(Problem::new(
                    format!("routes[{i}].match"),
                    format!(
                        "expected a glob over job names like \"sec.*\", got {:?} ({why})",
                        route.pattern
                    ),
                ));
            }
            let Some(target) = &route.pipeline else {
                continue;
            };
            if !self.pipelines.contains_key(target) {
                let configured: Vec<&str> = self.pipelines.keys().map(String::as_str).collect();
                return Err(Problem::new(
                    format!("routes[{i}].pipeline"),
                    format!(
                        "expected a configured pipeline (one of {}), got {target:?}",
                        configured.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `[log] level`, checked here so a typo is reported with its file and key, not when main.rs
/// installs the subscriber.
fn validate_log_level(level: &str) -> Result<(), Problem> {
    tracing_subscriber::EnvFilter::try_new(level)
        .map(drop)
        .map_err(|err| {
            Problem::new(
                "log.level",
                format!(
                    "expected an EnvFilter directive like \"info\" or \"warden=debug,info\", \
                 got {level:?} ({err})"
                ),
            )
        })
}

impl PipelineSection {
    fn validate(&self, key: &str) -> Result<(), Problem> {
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return Err(Problem::new(
                format!("{key}.workers"),
                format!("expected 1 ..= {MAX_WORKERS}, got {}", self.workers),
            ));
        }
        self.retry.validate(&format!("{key}.retry"))?;
        if self.max_jobs_per_worker == Some(0) {
            return Err(Problem::new(
                format!("{key}.max_jobs_per_worker"),
                "expected at least 1, got 0",
            ));
        }
        let limits = std::iter::once((key.to_string(), self.soft_time_limit, self.time_limit))
            .chain(self.tasks.iter().map(|(t, l)| {
                (
                    format!("{key}.tasks.{t:?}"),
                    l.soft_time_limit,
                    l.time_limit,
                )
            }));
        for (at, soft, hard) in limits {
            if let (Some(soft), Some(hard)) = (soft, hard) {
                if soft >= hard {
                    return Err(Problem::new(
                        format!("{at}.soft_time_limit"),
                        format!(
                            "expected less than time_limit ({}), got {}",
                            humantime::format_duration(hard),
                            humantime::format_duration(soft)
                        ),
                    ));
                }
            }
        }
        self.restart.validate(&format!("{key}.restart"))
    }
}

impl RetrySection {
    fn validate(&self, key: &str) -> Result<(), Problem> {
        if self.base_delay > self.max_delay {
            return Err(Problem::new(
                format!("{key}.base_delay"),
                format!(
                    "expected at most max_delay ({}), got {}",
                    humantime::format_duration(self.max_delay),
                    humantime::format_duration(self.base_delay)
                ),
            ));
        }
        Ok(())
    }
}

impl RestartSection {
    fn validate(&self, key: &str) -> Result<(), Problem> {
        if self.min_backoff > self.max_backoff {
            return Err(Problem::new(
                format!("{key}.min_backoff"),
                format!(
                    "expected at most max_backoff ({}), got {}",
                    humantime::format_duration(self.max_backoff),
                    humantime::format_duration(self.min_backoff)
                ),
            ));
        }
        // Written so that NaN fails too.
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Problem::new(
                format!("{key}.jitter"),
                format!("expected 0.0 ..= 1.0, got {}", self.jitter),
            ));
        }
        at_least(&format!("{key}.max_restarts"), self.max_restarts, 1)?;
        if self.within.is_zero() {
            return Err(Problem::new(
                format!("{key}.within"),
                "expected a duration above zero, got 0s",
            ));
        }
        Ok(())
    }
}

impl From<RestartSection> for RestartPolicy {
    fn from(s: RestartSection) -> Self {
        RestartPolicy {
            min_backoff: s.min_backoff,
            max_backoff: s.max_backoff,
            jitter: s.jitter,
            max_restarts: s.max_restarts,
            within: s.within,
        }
    }
}

impl From<RetrySection> for RetryPolicy {
    fn from(s: RetrySection) -> Self {
        RetryPolicy {
            max_retries: s.max_retries,
            base_delay: s.base_delay,
            max_delay: s.max_delay,
        }
    }
}

// ===== Defaults (config/default.toml spells out the same values) =====

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            name: "warden".to_owned(),
            data_dir: PathBuf::from("data"),
            shutdown_timeout: Duration::from_secs(30),
            min_free_space: warden_actors::store::journal::DEFAULT_MIN_FREE_SPACE,
            cache_size: warden_actors::store::journal::DEFAULT_CACHE_BYTES,
        }
    }
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            max_connections: 256,
            max_line_bytes: 1024 * 1024,
            idle_timeout: Duration::from_secs(5 * 60),
            token: None,
        }
    }
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Pretty,
            level: "info".to_owned(),
        }
    }
}

impl Default for JobsSection {
    fn default() -> Self {
        JobsSection {
            max_queued: 1_000_000,
            max_wait: Duration::from_secs(5 * 60),
            retention: Duration::from_secs(7 * 24 * 60 * 60),
            cancel_grace: Duration::from_secs(10),
        }
    }
}

impl Default for RestartSection {
    fn default() -> Self {
        let p = RestartPolicy::DEFAULT;
        RestartSection {
            min_backoff: p.min_backoff,
            max_backoff: p.max_backoff,
            jitter: p.jitter,
            max_restarts: p.max_restarts,
            within: p.within,
        }
    }
}

impl Default for RetrySection {
    fn default() -> Self {
        let p = RetryPolicy::DEFAULT;
        RetrySection {
            max_retries: p.max_retries,
            base_delay: p.base_delay,
            max_delay: p.max_delay,
        }
    }
}

impl Default for PipelineSection {
    fn default() -> Self {
        PipelineSection {
            workers: 4,
            retry: RetrySection::default(),
            restart: RestartSection::default(),
            base_url: None,
            tickers_url: None,
            user_agent: None,
            rate_limit: None,
            request_timeout: None,
            breaker: None,
            api_key_env: None,
            throttle_cooldown: None,
            time_limit: None,
            soft_time_limit: None,
            max_jobs_per_worker: None,
            tasks: BTreeMap::new(),
        }
    }
}

// ===== Helpers =====

/// A broken rule: the key path and what was expected and what came.
#[derive(Debug)]
struct Problem {
    key: String,
    message: String,
}

impl Problem {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }
}

fn at_least<T: Copy + PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    min: T,
) -> Result<(), Problem> {
    if value < min {
        return Err(Problem::new(
            key,
            format!("expected at least {min}, got {value}"),
        ));
    }
    Ok(())
}

/// Why `name` cannot name a pipeline, if it cannot: lowercase letters, digits, `_` and `-`.
fn pipeline_name_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'));
    (!ok).then(|| {
        format!(
            "expected a pipeline name of lowercase letters, digits, '_' and '-' like \"analysis\", \
             got {name:?}"
        )
    })
}

fn ensure_builtin(pipelines: &mut BTreeMap<String, PipelineSection>) {
    pipelines.entry(BUILTIN_PIPELINE.to_owned()).or_default();
}

/// `" (line L, column C)"` for a byte span of `text`, both 1-based; empty without a span.
fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let offset = span.start.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    format!(" (line {line}, column {column})")
}

/// Why `pattern` is not a glob over job names, in the words of globset (which the router compiles
/// it with), or `None` when it is one.
fn glob_problem(pattern: &str) -> Option<String> {
    if pattern.is_empty() {
        return Some("it is empty".into());
    }
    globset::Glob::new(pattern)
        .err()
        .map(|e| e.kind().to_string())
}

/// Deserializes a humantime duration (`"250ms"`, `"30s"`, `"7days"`), saying what was expected.
/// Not `humantime_serde`: its error (`string "soon", expected a duration`) gives no example.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct HumanDuration;

    impl Visitor<'_> for HumanDuration {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration like \"30s\" or \"7days\"")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            humantime::parse_duration(v).map_err(|_| {
                E::custom(format!(
                    "invalid value: expected a duration like \"30s\" or \"7days\", got {v:?}"
                ))
            })
        }
    }

    deserializer.deserialize_str(HumanDuration)
}

/// [`duration`] for optional keys (a missing key is `None` through the struct's default).
fn opt_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}

/// Deserializes an `ip:port` address, saying what was expected (names are not resolved).
fn socket_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        de::Error::custom(format!(
            "invalid value: expected an address like \"127.0.0.1:7070\", got {text:?}"
        ))
    })
}

/// Deserializes a priority through [`Priority`]'s `FromStr`, so the error lists the choices.
fn priority<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Priority>, D::Error> {
    let name = String::deserialize(deserializer)?;
    name.parse().map(Some).map_err(de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_str(text, "config/test.toml")
    }

    fn parse_err(text: &str) -> String {
        parse(text)
            .expect_err("config should be rejected")
            .to_string()
    }

    const MINIMAL: &str = r#"
        [node]
        data_dir = "/some/dir"
        [admin]
        listen = "127.0.0.1:7070"
        [metrics]
        listen = "127.0.0.1:9464"
        [pipelines.builtin]
        workers = 4
        retry = { max_retries = 3, base_delay = "50ms", max_delay = "1s" }
    "#;

    /// Ensures that every file shipped in `config/` parses and validates.
    #[test]
    fn every_shipped_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("config/ is readable") {
            let path = entry.expect("config/ entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                if let Err(err) = Config::from_file(&path) {
                    panic!("{err}");
                }
                seen += 1;
            }
        }
        assert!(
            seen >= 2,
            "expected default.toml and minimal.toml in {}",
            dir.display()
        );
    }

    /// Ensures that the embedded default parses and spells out exactly the built-in defaults,
    /// so default.toml and the `Default` impls can't drift apart.
    #[test]
    fn embedded_default_parses() {
        let config = Config::embedded_default();
        assert_eq!(config, parse("").unwrap());
        assert_eq!(config.node.data_dir, PathBuf::from("data"));
        assert_eq!(config.jobs.retention, Duration::from_secs(7 * 24 * 3600));
    }

    /// Ensures that the minimal config works and starts `builtin` with what it says.
    #[test]
    fn minimal_config_starts_builtin() {
        let args = parse(MINIMAL).unwrap().into_args("t", &|_| None).unwrap();
        assert_eq!(args.data_dir, PathBuf::from("/some/dir"));
        assert_eq!(args.name, "warden");
        assert_eq!(args.admin.listen, "127.0.0.1:7070".parse().unwrap());
        assert_eq!(args.admin.token, None);
        assert_eq!(args.restart, RestartPolicy::DEFAULT);
        assert_eq!(args.pipelines.len(), 1);
        let builtin = &args.pipelines[0];
        assert_eq!(builtin.name, "builtin");
        assert_eq!(builtin.workers, 4);
        let retry = RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
        };
        assert_eq!(builtin.retry, retry);
        assert_eq!(builtin.restart, RestartPolicy::DEFAULT);
    }

    /// Ensures that a config without `[pipelines.builtin]` still starts `builtin`, with defaults.
    #[test]
    fn builtin_is_always_started() {
        let args = parse("[node]\nname = \"n1\"\n")
            .unwrap()
            .into_args("t", &|_| None)
            .unwrap();
        assert_eq!(args.pipelines.len(), 1);
        let builtin = &args.pipelines[0];
        assert_eq!(builtin.name, "builtin");
        assert_eq!(builtin.workers, 4);
        assert_eq!(builtin.retry, RetryPolicy::DEFAULT);
        assert_eq!(builtin.restart, RestartPolicy::DEFAULT);
    }

    /// Ensures that an unknown top-level key fails, naming the file, the key and the line.
    #[test]
    fn unknown_top_level_key_is_named() {
        let err = parse_err("[node]\nname = \"n1\"\n\n[nodes]\nname = \"n2\"\n");
        assert!(
            err.starts_with("config/test.toml: nodes: unknown field `nodes`"),
            "{err}"
        );
        assert!(err.contains("(line 4, column 2)"), "{err}");
    }

    /// Ensures that an unknown nested key fails with its full path and the keys it could be.
    #[test]
    fn unknown_nested_key_is_named() {
        let err = parse_err("[pipelines.builtin]\nwrokers = 4\n");
        assert!(
            err.starts_with(
                "config/test.toml: pipelines.builtin.wrokers: unknown field `wrokers`, \
                 expected one of `workers`, `retry`, `restart`"
            ),
            "{err}"
        );
        assert!(err.contains("line 2, column 1"), "{err}");
    }

    /// Ensures that a bad duration names its key, the expected form and the value.
    #[test]
    fn bad_duration_names_the_key() {
        let err = parse_err("[jobs]\nretention = \"soon\"\n");
        assert!(
            err.starts_with(
                "config/test.toml: jobs.retention: invalid value: \
                 expected a duration like \"30s\" or \"7days\", got \"soon\""
            ),
            "{err}"
        );
        let err = parse_err("[supervisor]\nrestart = { within = 60 }\n");
        assert!(
            err.contains("supervisor.restart.within: invalid type: integer `60`"),
            "{err}"
        );
    }

    /// Ensures that a bad route priority is reported through `Priority`'s own message.
    #[test]
    fn bad_route_priority_lists_choices() {
        let err = parse_err("[[routes]]\nmatch = \"builtin.*\"\npriority = \"urgent\"\n");
        assert!(
            err.starts_with(
                "config/test.toml: routes[0].priority: \
                 expected one of high, normal, low, got \"urgent\""
            ),
            "{err}"
        );
    }

    /// Ensures that routes carry their glob, pipeline and priority into the arguments.
    #[test]
    fn routes_reach_the_args() {
        let text = "[[routes]]\nmatch = \"builtin.report.*\"\npipeline = \"builtin\"\n\
                    priority = \"low\"\n\n[[routes]]\nmatch = \"*\"\n";
        let args = parse(text).unwrap().into_args("t", &|_| None).unwrap();
        assert_eq!(args.routes.len(), 2);
        assert_eq!(args.routes[0].pattern, "builtin.report.*");
        assert_eq!(args.routes[0].pipeline.as_deref(), Some("builtin"));
        assert_eq!(args.routes[0].priority, Some(Priority::Low));
        assert_eq!(args.routes[1].pipeline, None);
        assert_eq!(args.routes[1].priority, None);
    }

    /// Ensures that a route to a pipeline that isn't configured, or with a broken glob, fails.
    #[test]
    fn bad_routes_are_named() {
        let err = parse_err("[[routes]]\nmatch = \"sec.*\"\npipeline = \"sec\"\n");
        assert_eq!(
            err,
            "config/test.toml: routes[0].pipeline: \
             expected a configured pipeline (one of builtin), got \"sec\""
        );
        let err = parse_err("[[routes]]\nmatch = \"*\"\n[[routes]]\nmatch = \"sec.[a\"\n");
        assert!(
            err.starts_with("config/test.toml: routes[1].match: "),
            "{err}"
        );
        assert!(err.contains("unclosed character class"), "{err}");
        for ok in ["sec.*", "{sec,yahoo}.*", "[]a].x", "a\\*b", "**"] {
            assert_eq!(glob_problem(ok), None, "{ok}");
        }
        for bad in ["", "a{b", "a}b", "[!", "a\\"] {
            assert!(glob_problem(bad).is_some(), "{bad}");
        }
    }

    /// Ensures that `workers = 0` fails, naming `pipelines.builtin.workers` and the bounds.
    #[test]
    fn zero_workers_is_rejected() {
        let err = parse_err("[pipelines.builtin]\nworkers = 0\n");
        assert_eq!(
            err,
            "config/test.toml: pipelines.builtin.workers: expected 1 ..= 1024, got 0"
        );
        match parse("[pipelines.builtin]\nworkers = 1025\n") {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "pipelines.builtin.workers"),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    /// Ensures that the other bounds are checked, each naming its key.
    #[test]
    fn bounds_are_checked() {
        let cases = [
            (
                "[supervisor]\nrestart = { jitter = 1.5 }",
                "supervisor.restart.jitter",
            ),
            (
                "[supervisor]\nrestart = { min_backoff = \"20s\" }",
                "supervisor.restart.min_backoff",
            ),
            (
                "[supervisor]\nrestart = { max_restarts = 0 }",
                "supervisor.restart.max_restarts",
            ),
            (
                "[supervisor]\nrestart = { within = \"0s\" }",
                "supervisor.restart.within",
            ),
            (
                "[pipelines.builtin]\nretry = { base_delay = \"2s\", max_delay = \"1s\" }",
                "pipelines.builtin.retry.base_delay",
            ),
            (
                "[pipelines.builtin]\nrestart = { jitter = -0.1 }",
                "pipelines.builtin.restart.jitter",
            ),
            ("[admin]\nmax_connections = 0", "admin.max_connections"),
            ("[admin]\nmax_line_bytes = 1023", "admin.max_line_bytes"),
            ("[admin]\ntoken = \"\"", "admin.token"),
            ("[jobs]\nmax_queued = 0", "jobs.max_queued"),
            ("[log]\nlevel = \"warden=loud\"", "log.level"),
            ("[node]\nname = \"\"", "node.name"),
            ("[node]\ndata_dir = \"\"", "node.data_dir"),
        ];
        for (text, want) in cases {
            match parse(text) {
                Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, want, "{text}"),
                other => panic!("{text}: expected Invalid at {want}, got {other:?}"),
            }
        }
        // Zero retries is allowed: the job fails on its first error.
        let config = parse("[pipelines.builtin]\nretry = { max_retries = 0 }\n").unwrap();
        assert_eq!(config.pipelines["builtin"].retry.max_retries, 0);
    }

    /// Ensures that a listen address that isn't `ip:port` fails, naming the key and the value.
    #[test]
    fn bad_listen_address_is_named() {
        let err = parse_err("[metrics]\nlisten = \"localhost:9464\"\n");
        assert!(
            err.starts_with(
                "config/test.toml: metrics.listen: invalid value: \
                 expected an address like \"127.0.0.1:7070\", got \"localhost:9464\""
            ),
            "{err}"
        );
    }

    /// Ensures that the admin and metrics ports cannot be the same one (also through 0.0.0.0):
    /// the error names both keys and the addresses, instead of "Address already in use" at start;
    /// and that port 0 on both (a free port each) is allowed.
    #[test]
    fn admin_and_metrics_need_their_own_ports() {
        for (admin, metrics) in [
            ("127.0.0.1:7070", "127.0.0.1:7070"),
            ("0.0.0.0:7070", "127.0.0.1:7070"),
        ] {
            let err = parse_err(&format!(
                "[admin]\nlisten = \"{admin}\"\n[metrics]\nlisten = \"{metrics}\"\n"
            ));
            assert!(err.starts_with("config/test.toml: admin.listen: "), "{err}");
            assert!(
                err.contains(&format!("metrics.listen = {metrics}")),
                "{err}"
            );
            assert!(err.contains(admin), "{err}");
        }
        parse("[admin]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n").unwrap();
        parse("[admin]\nlisten = \"127.0.0.1:7070\"\n[metrics]\nlisten = \"127.0.0.2:7070\"\n")
            .unwrap();
    }

    /// Ensures that a zero idle timeout is refused, naming the key and why.
    #[test]
    fn zero_idle_timeout_is_refused() {
        let err = parse_err("[admin]\nidle_timeout = \"0s\"\n");
        assert!(
            err.starts_with("config/test.toml: admin.idle_timeout: expected a duration above zero"),
            "{err}"
        );
    }

    /// Ensures that a bad log format is a parse error naming `log.format` and the choices.
    #[test]
    fn bad_log_format_lists_choices() {
        let err = parse_err("[log]\nformat = \"xml\"\n");
        assert!(err.contains("log.format: unknown variant `xml`"), "{err}");
        assert!(err.contains("`pretty`") && err.contains("`json`"), "{err}");
        let config = parse("[log]\nformat = \"json\"\n").unwrap();
        assert_eq!(config.log.format, LogFormat::Json);
    }

    /// Ensures that a pipeline no task runs on (a misspelt name) fails, naming it and listing
    /// the built-in ones, and that a malformed pipeline name is refused as it is parsed.
    #[test]
    fn unknown_pipeline_is_named() {
        let err = parse("[pipelines.edgar]\nworkers = 2\n")
            .unwrap()
            .into_args("config/test.toml", &|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "config/test.toml: pipelines.edgar: no tasks run on it: expected one of the \
                 built-in pipelines (builtin, sec, yahoo, alphavantage)"
            ),
            "{err}"
        );
        let err = parse_err("[pipelines.\"Ed gar\"]\nworkers = 2\n");
        assert!(
            err.starts_with("config/test.toml: pipelines.Ed gar: expected a pipeline name"),
            "{err}"
        );
    }

    /// Ensures that a sec pipeline without a User-Agent is refused, saying why.
    #[test]
    fn sec_needs_a_user_agent() {
        let err = parse_err("[pipelines.sec]\nworkers = 2\n");
        assert!(
            err.starts_with("config/test.toml: pipelines.sec.user_agent: SEC rejects requests"),
            "{err}"
        );
    }

    /// Ensures that upstream keys get the source's defaults and a bad rate limit is named.
    #[test]
    fn upstream_defaults_and_rate_limit() {
        let text =
            "[pipelines.sec]\nuser_agent = \"Ex a@b.c\"\n[pipelines.yahoo]\nrate_limit = \"1/s\"\n";
        let args = parse(text).unwrap().into_args("t", &|_| None).unwrap();
        let sec = args
            .pipelines
            .iter()
            .find(|p| p.name == "sec")
            .unwrap()
            .upstream
            .clone()
            .unwrap();
        assert_eq!(sec.base_url, "https://data.sec.gov");
        assert_eq!(sec.rate_limit.len(), 1);
        assert_eq!(sec.rate_limit[0].limit, 10);
        let err = parse_err("[pipelines.yahoo]\nrate_limit = \"ten\"\n");
        assert!(err.contains("pipelines.yahoo.rate_limit:"), "{err}");
        let err = parse_err("[pipelines.builtin]\nbase_url = \"http://x\"\n");
        assert!(
            err.contains("pipelines.builtin.base_url: the builtin pipeline has no upstream"),
            "{err}"
        );
    }

    /// Ensures that `"@universe"` in a schedule's params becomes the universe's tickers, and that
    /// a bad cron or policy is named.
    #[test]
    fn schedules_resolve_the_universe() {
        let text = "[universe]\ntickers = [\"CHGG\", \"IBM\"]\n[[schedules]]\nname = \"daily\"\ncron = \"0 0 2 * * *\"\n\
                    job = \"builtin.noop\"\nparams = { tickers = \"@universe\", forms = [\"10-K\"] }\ncatch_up = \"all\"\n";
        let args = parse(text).unwrap().into_args("t", &|_| None).unwrap();
        let s = &args.schedules[0];
        assert_eq!(
            s.params,
            serde_json::json!({"tickers": ["CHGG", "IBM"], "forms": ["10-K"]})
        );
        assert_eq!(s.catch_up, warden_actors::args::CatchUp::All);
        let err = parse_err(
            "[[schedules]]\nname = \"x\"\ncron = \"every day\"\njob = \"builtin.noop\"\n",
        );
        assert!(
            err.contains("schedules[0].cron: expected a cron expression"),
            "{err}"
        );
        let err = parse_err("[[schedules]]\nname = \"x\"\ncron = \"* * * * *\"\njob = \"builtin.noop\"\noverlap = \"never\"\n");
        assert!(
            err.contains("schedules[0].overlap: expected one of skip, allow, got \"never\""),
            "{err}"
        );
        let err = parse_err("[[schedules]]\nname = \"x\"\ncron = \"* * * * *\"\njob = \"a.b\"\nparams = { tickers = \"@universe\" }\n");
        assert!(err.contains("[universe] tickers is empty"), "{err}");
    }

    /// Ensures that an Alpha Vantage pipeline without its key variable is a startup error naming
    /// the variable, and that the key is read from it otherwise.
    #[test]
    fn alphavantage_key_from_env() {
        let config = parse("[pipelines.alphavantage]\napi_key_env = \"AV_KEY\"\n").unwrap();
        let err = config
            .clone()
            .into_args("t", &|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pipelines.alphavantage.api_key_env") && err.contains("AV_KEY"),
            "{err}"
        );
        let args = config
            .into_args("t", &|v| (v == "AV_KEY").then(|| "k3y".to_owned()))
            .unwrap();
        let av = args
            .pipelines
            .iter()
            .find(|p| p.name == "alphavantage")
            .unwrap();
        assert_eq!(
            av.upstream.as_ref().unwrap().api_key.as_deref(),
            Some("k3y")
        );
    }

    /// Ensures that text that isn't TOML fails with the file, line and column.
    #[test]
    fn broken_toml_is_located() {
        let err = parse_err("[node]\nname = \n");
        assert!(err.starts_with("config/test.toml: invalid TOML: "), "{err}");
        assert!(err.contains("(line 2, column"), "{err}");
    }

    /// Ensures that `from_file` on a missing file names the path.
    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        let err = Config::from_file(&path).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    }

    /// Ensures that a file's errors carry its path as the origin.
    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[pipelines.builtin]\nwrokers = 4\n").unwrap();
        let err = Config::from_file(&path).unwrap_err().to_string();
        let want = format!("{}: pipelines.builtin.wrokers: ", path.display());
        assert!(err.starts_with(&want), "{err}");
    }

    /// Ensures that the token from the environment overrides the file's, and that an empty
    /// value counts as unset.
    #[test]
    fn token_env_overrides() {
        let config = parse("[admin]\ntoken = \"from-file\"\n").unwrap();
        let args = config
            .clone()
            .into_args("t", &|_| Some("from-env".to_owned()))
            .unwrap();
        assert_eq!(args.admin.token.as_deref(), Some("from-env"));
        let args = config
            .clone()
            .into_args("t", &|_| Some(String::new()))
            .unwrap();
        assert_eq!(args.admin.token.as_deref(), Some("from-file"));
        let args = config.into_args("t", &|_| None).unwrap();
        assert_eq!(args.admin.token.as_deref(), Some("from-file"));
        let args = parse("")
            .unwrap()
            .into_args("t", &|_| Some("only-env".to_owned()))
            .unwrap();
        assert_eq!(args.admin.token.as_deref(), Some("only-env"));
    }
}
