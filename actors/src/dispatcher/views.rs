//! What the dispatcher reports: submit answers, `pipelines` and `stats` objects, serialized
//! as docs/protocol.md shows them.

use serde::{Deserialize, Serialize};

use crate::job::JobId;

/// One accepted submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The job's id (the existing one when deduplicated).
    pub job_id: JobId,
    /// True when an unfinished job with the same `unique_key` was returned instead.
    pub deduplicated: bool,
}

/// Jobs waiting per priority.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDepths {
    /// High.
    pub high: usize,
    /// Normal.
    pub normal: usize,
    /// Low.
    pub low: usize,
}

/// Workers of a pipeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkersView {
    /// Registered workers.
    pub total: usize,
    /// Workers running a job.
    pub busy: usize,
}

/// One pipeline in `pipelines`, `pause` and `resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineView {
    /// Its name.
    pub name: String,
    /// Paused by an operator.
    pub paused: bool,
    /// Workers.
    pub workers: WorkersView,
    /// Waiting jobs.
    pub queue: QueueDepths,
    /// Jobs waiting for a delay or a retry backoff.
    pub scheduled: usize,
    /// The rate limiter's state; `null` for a pipeline without an upstream.
    pub rate_limit: Option<serde_json::Value>,
    /// The breaker's state; `null` for a pipeline without an upstream.
    pub breaker: Option<serde_json::Value>,
}

impl PipelineView {
    /// The view of pipeline `info` with these run-state figures (either dispatcher's).
    pub fn of(
        info: &super::PipelineInfo,
        paused: bool,
        workers: WorkersView,
        queue: QueueDepths,
        scheduled: usize,
    ) -> PipelineView {
        PipelineView {
            name: info.name.clone(),
            paused,
            workers,
            queue,
            scheduled,
            rate_limit: info.limiter_view.as_ref().and_then(|v| v()),
            breaker: info.breaker_view.as_ref().and_then(|v| v()),
        }
    }
}

/// Counts for `stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Unfinished jobs by status.
    pub jobs: UnfinishedCounts,
    /// Transitions since this dispatcher started.
    pub totals: Totals,
    /// Waiting jobs per pipeline.
    pub queues: Vec<(String, QueueDepths)>,
    /// Seconds since the dispatcher started.
    pub uptime_s: u64,
}

/// Unfinished jobs by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnfinishedCounts {
    /// Waiting to run.
    pub pending: usize,
    /// On a worker.
    pub running: usize,
    /// Waiting for a retry.
    pub retrying: usize,
}

/// Transitions counted since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Jobs accepted (not deduplicated ones).
    pub submitted: u64,
    /// Jobs that succeeded.
    pub succeeded: u64,
    /// Jobs dead-lettered.
    pub failed: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Jobs cancelled.
    pub cancelled: u64,
    /// Jobs put back after a worker crash or a node restart.
    pub requeued: u64,
}

/// The one thing a job waits for (`why`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockerKind {
    /// Its turn in its pipeline's queue.
    Queued,
    /// A permit of its pipeline's rate limiter, or the end of a throttle pause.
    RateLimit,
    /// Its pipeline's circuit breaker to let traffic through again.
    BreakerOpen,
    /// Its pipeline to be resumed.
    Paused,
    /// The backoff before its next attempt.
    RetryBackoff,
    /// Its child jobs (a batch job).
    Children,
    /// Its `run_at`, or its turn in a workflow.
    Scheduled,
    /// Nothing: it runs, or it is finished.
    None,
}

/// What a job waits for now (`why`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Blocker {
    /// What it waits for.
    pub kind: BlockerKind,
    /// For a person: the position, the pipeline, the error waited out.
    pub detail: String,
    /// When it is expected to end (RFC 3339), when known.
    pub eta: Option<String>,
}

impl Blocker {
    /// A blocker of this kind.
    pub fn new(kind: BlockerKind, detail: String, eta: Option<String>) -> Self {
        Self { kind, detail, eta }
    }
}
