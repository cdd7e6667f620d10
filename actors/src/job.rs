//! The job model: ids, priorities, states, the durable record of a job and the entries of its
//! history. Plain data shared by the dispatcher, the workers, the journal and the protocol.
//!
//! Times are stored as Unix milliseconds (`i64`) so the bincode encoding stays compact and
//! stable; the protocol renders them as RFC 3339 with milliseconds.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A job's identity: a UUID v7, so ids sort by creation time (the journal's key order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub Uuid);

impl JobId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The 16 bytes used as the journal key.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(JobId).map_err(|_| {
            format!("expected a UUID like 0193b7f0-3c55-7d2e-9a51-2b0c8f1e6a10, got {s:?}")
        })
    }
}

/// Strict scheduling class of a job. `High` always runs first; see `queue.rs` for aging.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Runs before everything else.
    High,
    /// The default class.
    #[default]
    Normal,
    /// Runs when nothing else waits (or once it has waited longer than `max_wait`).
    Low,
}

impl Priority {
    /// All priorities, highest first (the queue's index order).
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// Index in [`Priority::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The lowercase name used on the wire and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            other => Err(format!("expected one of high, normal, low, got {other:?}")),
        }
    }
}

/// Where a job is in its life (see docs/architecture.md, "A job's life").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum JobStatus {
    /// Waiting in its queue (or for its `run_at`).
    Pending = 0,
    /// On a worker now.
    Running = 1,
    /// Failed with a retryable error; waits for `next_attempt_at`.
    Retrying = 2,
    /// Finished well.
    Succeeded = 3,
    /// Gave up: permanent error or retries spent. It sits in the dead-letter queue.
    Failed = 4,
    /// Stopped by an operator.
    Cancelled = 5,
}

impl JobStatus {
    /// Every status, in wire order.
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Pending,
        JobStatus::Running,
        JobStatus::Retrying,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    /// True once the job will never run again (unless an operator retries it).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// The lowercase name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Retrying => "retrying",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// The status stored in one byte (the journal keeps it in front of the record so that
    /// replay can skip finished jobs without decoding them).
    pub fn from_byte(b: u8) -> Option<JobStatus> {
        JobStatus::ALL.get(b as usize).copied()
    }
}

impl FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!("expected one of pending, running, retrying, succeeded, failed, cancelled, got {s:?}")
            })
    }
}

/// The durable record of one job: its current state. Each change is journaled together with a
/// [`JobEvent`] describing it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id.
    pub id: JobId,
    /// `<pipeline>.<task>`.
    pub name: String,
    /// The pipeline the job was routed to.
    pub pipeline: String,
    /// The params object as JSON text (bincode cannot carry a `serde_json::Value`).
    pub params: String,
    /// Scheduling class.
    pub priority: Priority,
    /// Current state.
    pub status: JobStatus,
    /// Attempts started so far (a worker crash counts as one).
    pub attempts: u32,
    /// Retries allowed after the first attempt.
    pub max_retries: u32,
    /// Deduplication key: one unfinished job per key.
    pub unique_key: Option<String>,
    /// When it was accepted (Unix ms).
    pub created_at: i64,
    /// When its latest attempt started.
    pub started_at: Option<i64>,
    /// When it finished.
    pub completed_at: Option<i64>,
    /// When it may run next (delayed or retrying jobs).
    pub next_attempt_at: Option<i64>,
    /// The last error, as text for people.
    pub error: Option<String>,
    /// The result as JSON text, once succeeded.
    pub result: Option<String>,
    /// The job that created this one (fan-out).
    pub parent_id: Option<JobId>,
    /// The workflow this job belongs to.
    pub workflow_id: Option<Uuid>,
    /// Jobs it fanned out to (a batch job); it finishes when they all have.
    pub children: Vec<JobId>,
    /// What happened to it, oldest first (the `history` command). Kept inside the record so a
    /// transition is one journal write; capped at [`MAX_HISTORY`] entries.
    pub history: Vec<JobEvent>,
}

/// Most history entries a record keeps: the first (its submission) and the latest ones.
pub const MAX_HISTORY: usize = 64;

impl JobRecord {
    /// Appends an event to the history, dropping the oldest but the first beyond [`MAX_HISTORY`].
    pub fn push_event(&mut self, kind: EventKind, detail: Option<String>) {
        if self.history.len() >= MAX_HISTORY {
            self.history.remove(1);
        }
        self.history.push(JobEvent {
            at: now_ms(),
            kind,
            attempt: self.attempts,
            detail,
        });
    }
}

/// What happened to a job; one entry per transition, shown by `history`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Accepted and journaled.
    Submitted,
    /// An attempt began on a worker.
    Started,
    /// An attempt failed with a retryable error; a retry is scheduled.
    Retrying,
    /// The job finished well.
    Succeeded,
    /// The job gave up and went to the dead-letter queue.
    DeadLettered,
    /// An operator cancelled it.
    Cancelled,
    /// Put back in its queue: its worker crashed, or the node restarted while it was unfinished.
    Requeued,
    /// An operator sent a failed or cancelled job back to its queue.
    Retried,
    /// A batch job split into child jobs and waits for them.
    FannedOut,
    /// Its turn came in a workflow (its predecessors ended).
    Released,
}

impl EventKind {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Submitted => "submitted",
            EventKind::Started => "started",
            EventKind::Retrying => "retrying",
            EventKind::Succeeded => "succeeded",
            EventKind::DeadLettered => "dead_lettered",
            EventKind::Cancelled => "cancelled",
            EventKind::Requeued => "requeued",
            EventKind::Retried => "retried",
            EventKind::FannedOut => "fanned_out",
            EventKind::Released => "released",
        }
    }
}

/// One entry of a job's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    /// When (Unix ms).
    pub at: i64,
    /// What.
    pub kind: EventKind,
    /// The attempt number it concerns.
    pub attempt: u32,
    /// Free text: the error, the worker, the reason.
    pub detail: Option<String>,
}

/// Now, as Unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds (`2026-11-28T10:00:00.123Z`).
pub fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures that priorities parse from their wire names and name the choices otherwise.
    #[test]
    fn priority_parse_names_choices() {
        assert_eq!("low".parse::<Priority>().unwrap(), Priority::Low);
        let err = "urgent".parse::<Priority>().unwrap_err();
        assert_eq!(err, "expected one of high, normal, low, got \"urgent\"");
    }

    /// Ensures that the status byte round-trips for every status.
    #[test]
    fn status_byte_round_trips() {
        for st in JobStatus::ALL {
            assert_eq!(JobStatus::from_byte(st as u8), Some(st));
        }
        assert_eq!(JobStatus::from_byte(42), None);
    }

    /// Ensures that ids made later sort later (the journal relies on it for `list` order).
    #[test]
    fn ids_sort_by_time() {
        let a = JobId::new();
        let b = JobId::new();
        assert!(a < b);
    }
}

/// How a workflow's jobs follow each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkflowKind {
    /// Each step starts when the one before succeeds, with its result as `params.input`.
    Chain,
    /// All at once; the optional `then` job starts when they are done, with `params.results`.
    Group,
}

impl WorkflowKind {
    /// The lowercase name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowKind::Chain => "chain",
            WorkflowKind::Group => "group",
        }
    }
}

impl std::str::FromStr for WorkflowKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "chain" => Ok(WorkflowKind::Chain),
            "group" => Ok(WorkflowKind::Group),
            other => Err(format!("expected chain or group, got {other:?}")),
        }
    }
}

/// A workflow's structure, journaled with its jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowRecord {
    /// Its id (UUID v7).
    pub id: Uuid,
    /// Chain or group.
    pub kind: WorkflowKind,
    /// The steps (chain) or members (group), in order.
    pub jobs: Vec<JobId>,
    /// A group's final job.
    pub then: Option<JobId>,
    /// A group's `then` starts even when members failed.
    pub allow_failures: bool,
    /// When it was accepted (Unix ms).
    pub created_at: i64,
}
