//! Tasks: what a job name means. A pipeline owns a [`TaskSet`] mapping `<pipeline>.<task>` to an
//! async function; the worker runs it and reports its [`TaskError`] class, which decides the
//! job's fate (docs/architecture.md): transient → retry with backoff, permanent →
//! dead-letter at once, throttled → wait without burning an attempt.
//!
//! The built-in pipeline's tasks live here too: they exist for tests, benchmarks and smoke
//! checks (docs/protocol.md, "Job names").

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{json, Value};

use tokio_util::sync::CancellationToken;

use crate::job::JobId;
use crate::progress::Progress;

mod records;

pub use self::records::{Attempts, Buffer, Records, MAX_CLUSTER_KEY_BYTES};

/// What a task gets to run.
#[derive(Debug, Clone)]
pub struct TaskCtx {
    /// The job.
    pub job_id: JobId,
    /// `<pipeline>.<task>`.
    pub name: String,
    /// The job's params object.
    pub params: Value,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// Cancelled when an operator cancels the job: cancellation is cooperative first (the task
    /// may clean up and return), and the worker aborts the task after `[jobs] cancel_grace`.
    pub cancel: CancellationToken,
    /// Raised at the job's soft time limit: it may clean up and finish.
    pub soft_limit: CancellationToken,
    /// Where the task stores its records: the same store and dedup as the built-in sources.
    pub records: Records,
    /// Where the task reports how far it is (`status` shows the latest report).
    pub progress: Progress,
}

impl TaskCtx {
    /// A context for running a task outside a node (tests, tools): fresh signals, no record
    /// store, progress kept nowhere.
    pub fn detached(name: &str, params: Value, attempt: u32) -> TaskCtx {
        let job_id = JobId::new();
        TaskCtx {
            job_id,
            name: name.to_string(),
            params,
            attempt,
            cancel: CancellationToken::new(),
            soft_limit: CancellationToken::new(),
            records: Records::detached(),
            progress: Progress::detached(job_id),
        }
    }
}

/// What the node gives every task besides its job: the record store and the progress board.
#[derive(Debug, Clone, Default)]
pub struct TaskEnv {
    /// The record store (in cluster mode the registry of attempt buffers: each attempt stores
    /// through [`Records::for_attempt`]).
    pub records: Records,
    /// Where progress reports go.
    pub progress: crate::progress::ProgressBoard,
}

/// Why an attempt failed, classified where it happened.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    /// May work next time (connect error, timeout, 5xx, truncated body): retry with backoff.
    #[error("{0}")]
    Transient(String),
    /// Will never work (bad params, unknown ticker, 4xx): dead-letter at once.
    #[error("{0}")]
    Permanent(String),
    /// The job passed its hard time limit and was aborted: retried like a transient error.
    #[error("{0}")]
    Timeout(String),
    /// The task panicked: retried like a transient error (its worker is replaced).
    #[error("{0}")]
    Panic(String),
    /// The task's process crashed (an exec task killed by a signal or exiting with an
    /// unexpected code): retried like a transient error, counted as a crash.
    #[error("{0}")]
    Crash(String),
    /// The upstream asked us to slow down, or the pipeline's gate held the request back: wait,
    /// and do not count the attempt.
    #[error("{message}")]
    Throttled {
        /// What the upstream said, or what held the request.
        message: String,
        /// How long to wait, when known.
        retry_after: Option<Duration>,
        /// Who asked for the wait.
        by: ThrottledBy,
    },
}

/// Who made a job wait without spending an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottledBy {
    /// The upstream sent a throttle signal (429, SEC's rate page, Alpha Vantage's `Note`).
    Upstream,
    /// The pipeline's own gate held the request back.
    Gate(crate::upstream::Hold),
}

/// The outcome of one attempt: the result JSON or the classified error.
pub type TaskResult = Result<Value, TaskError>;

/// A task's body.
pub type TaskFn = Arc<dyn Fn(TaskCtx) -> BoxFuture<'static, TaskResult> + Send + Sync>;

/// A batch task's body: splits the job into child jobs (one per ticker). The parent then waits
/// for them without holding a worker and finishes with their summary `{total, succeeded,
/// failed, stored}` (see the dispatcher).
pub type SplitFn =
    Arc<dyn Fn(&TaskCtx) -> Result<Vec<crate::protocol::SubmitSpec>, TaskError> + Send + Sync>;

/// The tasks of one pipeline, by full job name.
#[derive(Clone, Default)]
pub struct TaskSet {
    tasks: BTreeMap<String, TaskFn>,
    splits: BTreeMap<String, SplitFn>,
}

impl TaskSet {
    /// Adds a task under `name` (`<pipeline>.<task>`).
    pub fn with(mut self, name: &str, f: TaskFn) -> Self {
        self.tasks.insert(name.to_string(), f);
        self
    }

    /// Adds a batch task under `name`.
    pub fn with_split(mut self, name: &str, f: SplitFn) -> Self {
        self.splits.insert(name.to_string(), f);
        self
    }

    /// The task for a job name.
    pub fn get(&self, name: &str) -> Option<&TaskFn> {
        self.tasks.get(name)
    }

    /// The batch task for a job name.
    pub fn split(&self, name: &str) -> Option<&SplitFn> {
        self.splits.get(name)
    }

    /// Whether this set serves `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tasks.contains_key(name) || self.splits.contains_key(name)
    }

    /// This set and `other` together; a name both serve is an error naming it.
    pub fn merge(mut self, other: TaskSet) -> Result<TaskSet, String> {
        if let Some(dup) = other.names().find(|n| self.contains(n)) {
            return Err(format!("task {dup:?} is defined twice"));
        }
        self.tasks.extend(other.tasks);
        self.splits.extend(other.splits);
        Ok(self)
    }

    /// True when it serves no job name.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.splits.is_empty()
    }

    /// Every job name this set serves.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tasks
            .keys()
            .chain(self.splits.keys())
            .map(String::as_str)
    }
}

impl std::fmt::Debug for TaskSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// Reads an optional non-negative integer param, naming it in the error.
pub fn param_u64(ctx: &TaskCtx, key: &str, default: Option<u64>) -> Result<u64, TaskError> {
    match ctx.params.get(key) {
        None | Some(Value::Null) => default.ok_or_else(|| {
            TaskError::Permanent(format!(
                "{}: params.{key}: expected a whole number, got nothing",
                ctx.name
            ))
        }),
        Some(v) => v.as_u64().ok_or_else(|| {
            TaskError::Permanent(format!(
                "{}: params.{key}: expected a whole number, got {v}",
                ctx.name
            ))
        }),
    }
}

fn task<F, Fut>(f: F) -> TaskFn
where
    F: Fn(TaskCtx) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = TaskResult> + Send + 'static,
{
    Arc::new(move |ctx| Box::pin(f(ctx)))
}

/// Reads a required non-empty list of strings param (`tickers`, `symbols`), naming it.
pub fn param_strings(ctx: &TaskCtx, key: &str) -> Result<Vec<String>, TaskError> {
    let bad = |got: String| {
        TaskError::Permanent(format!(
            "{}: params.{key}: expected a non-empty list of strings like [\"CHGG\", \"IBM\"], got {got}",
            ctx.name
        ))
    };
    let Some(v) = ctx.params.get(key).filter(|v| !v.is_null()) else {
        return Err(bad("nothing".into()));
    };
    let list: Option<Vec<String>> = v
        .as_array()
        .map(|a| a.iter().map(|x| x.as_str().map(String::from)).collect())
        .unwrap_or(None);
    match list {
        Some(l) if !l.is_empty() && l.iter().all(|t| !t.trim().is_empty()) => Ok(l),
        _ => Err(bad(v.to_string())),
    }
}

/// A batch task that fans `list_key` (e.g. `tickers`) out to one `child` job per item, with the
/// item under `item_key` and the params named in `passed` copied from the parent.
pub fn fan_out(
    child: &'static str,
    list_key: &'static str,
    item_key: &'static str,
    passed: &'static [&'static str],
) -> SplitFn {
    Arc::new(move |ctx: &TaskCtx| {
        let items = param_strings(ctx, list_key)?;
        Ok(items
            .into_iter()
            .map(|item| {
                let mut params = serde_json::Map::new();
                params.insert(item_key.to_string(), Value::String(item.clone()));
                for k in passed {
                    if let Some(v) = ctx.params.get(*k).filter(|v| !v.is_null()) {
                        params.insert((*k).to_string(), v.clone());
                    }
                }
                crate::protocol::SubmitSpec {
                    name: child.to_string(),
                    params: Value::Object(params),
                    priority: None,
                    unique_key: None,
                    max_retries: None,
                    run_at: None,
                    tick: None,
                }
            })
            .collect())
    })
}

/// The longest `builtin.sleep` accepted: a day.
const MAX_SLEEP_MS: u64 = 86_400_000;

/// The built-in pipeline: `noop`, `sleep {ms}`, `fail {times}`, `fail_permanent`, `panic {times}`
/// (the job panics: its failure) and `crash {times}` (its worker fails, as a broken worker would:
/// supervision restarts it with backoff and spends its budget).
pub fn builtin() -> TaskSet {
    TaskSet::default()
        .with("builtin.noop", task(|_| async { Ok(Value::Null) }))
        .with(
            "builtin.sleep",
            task(|ctx| async move {
                let ms = param_u64(&ctx, "ms", None)?;
                if ms > MAX_SLEEP_MS {
                    return Err(TaskError::Permanent(format!(
                        "builtin.sleep: params.ms: expected at most {MAX_SLEEP_MS} (a day), got {ms}"
                    )));
                }
                let started = tokio::time::Instant::now();
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(json!({ "slept_ms": ms })),
                    // Told at its soft limit, it stops early and says so: the clean-up a real
                    // task would do there.
                    _ = ctx.soft_limit.cancelled() => Ok(json!({
                        "slept_ms": started.elapsed().as_millis() as u64,
                        "stopped_at_soft_limit": true,
                    })),
                    _ = ctx.cancel.cancelled() => Err(TaskError::Permanent("builtin.sleep: cancelled while sleeping".into())),
                }
            }),
        )
        .with(
            "builtin.fail",
            task(|ctx| async move {
                let times = param_u64(&ctx, "times", Some(1))?;
                if u64::from(ctx.attempt) <= times {
                    Err(TaskError::Transient(format!(
                        "builtin.fail: attempt {} of the {times} that fail on purpose",
                        ctx.attempt
                    )))
                } else {
                    Ok(json!({ "attempts": ctx.attempt }))
                }
            }),
        )
        .with(
            "builtin.fail_permanent",
            task(|_| async { Err(TaskError::Permanent("builtin.fail_permanent: fails on purpose".into())) }),
        )
        .with(
            "builtin.panic",
            task(|ctx| async move {
                let times = param_u64(&ctx, "times", Some(1))?;
                if u64::from(ctx.attempt) <= times {
                    panic!("builtin.panic: attempt {} of the {times} that panic on purpose", ctx.attempt);
                }
                Ok(json!({ "attempts": ctx.attempt }))
            }),
        )
        .with(
            "builtin.crash",
            task(|ctx| async move {
                let times = param_u64(&ctx, "times", Some(1))?;
                if u64::from(ctx.attempt) <= times {
                    std::panic::panic_any(crate::pipeline::worker::WorkerFault(format!(
                        "builtin.crash: attempt {} of the {times} that crash their worker on purpose",
                        ctx.attempt
                    )));
                }
                Ok(json!({ "attempts": ctx.attempt }))
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(name: &str, params: Value, attempt: u32) -> TaskCtx {
        TaskCtx::detached(name, params, attempt)
    }

    /// Ensures that `builtin.fail` fails its first N attempts with a transient error, then succeeds.
    #[tokio::test]
    async fn fail_fails_first_n_attempts() {
        let set = builtin();
        let f = set.get("builtin.fail").unwrap();
        for attempt in 1..=2 {
            let r = f(ctx("builtin.fail", json!({"times": 2}), attempt)).await;
            assert!(matches!(r, Err(TaskError::Transient(_))), "{r:?}");
        }
        assert_eq!(
            f(ctx("builtin.fail", json!({"times": 2}), 3)).await,
            Ok(json!({"attempts": 3}))
        );
    }

    /// Ensures that a cancelled `builtin.sleep` ends early with a permanent error.
    #[tokio::test(start_paused = true)]
    async fn sleep_stops_when_cancelled() {
        let cancel = CancellationToken::new();
        let mut c = ctx("builtin.sleep", json!({"ms": 3_600_000}), 1);
        c.cancel = cancel.clone();
        let run = tokio::spawn(builtin().get("builtin.sleep").unwrap()(c));
        tokio::time::sleep(Duration::from_secs(1)).await;
        cancel.cancel();
        let r = run.await.unwrap();
        assert!(
            matches!(r, Err(TaskError::Permanent(ref m)) if m.contains("cancelled")),
            "{r:?}"
        );
    }

    /// Ensures that a mistyped param is a permanent error naming the param.
    #[tokio::test]
    async fn bad_param_is_permanent_and_named() {
        let set = builtin();
        let r =
            set.get("builtin.sleep").unwrap()(ctx("builtin.sleep", json!({"ms": "soon"}), 1)).await;
        assert_eq!(
            r,
            Err(TaskError::Permanent(
                "builtin.sleep: params.ms: expected a whole number, got \"soon\"".into()
            ))
        );
    }
}
