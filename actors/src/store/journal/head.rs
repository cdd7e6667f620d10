//! The value of an unfinished job's index entry (`b'u' ++ id`): the part of its record that
//! ordering, dedup and replay need ([`UnfinishedHead`]), rewritten in the same batch as every
//! record change of an unfinished job.
//!
//! A replay of a million pending jobs then reads these small values (tens of bytes each)
//! instead of the records (params and history: hundreds), and decodes the whole record only
//! for the few jobs that need it (interrupted ones, batch parents, workflow steps). Keeping the
//! value current costs one more key in a batch the job's change writes anyway; sled's cost is
//! per batch (each `apply_batch` seals and writes its own log buffer), not per key.
//!
//! Layout: `version(1) ++ name_len(u16 BE) ++ name ++ bincode(Fields)`: the name comes first
//! and raw, so that a listing filtered by name reads it without decoding the rest.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::JournalError;
use crate::job::{JobId, JobRecord, JobStatus, Priority};

/// The layout version of a `u` value.
const VERSION: u8 = 1;

/// What replay needs of an unfinished job, read from its index entry.
#[derive(Debug, Clone, PartialEq)]
pub struct UnfinishedHead {
    /// The job.
    pub id: JobId,
    /// `<pipeline>.<task>`.
    pub name: String,
    /// The pipeline it was routed to.
    pub pipeline: String,
    /// Its priority.
    pub priority: Priority,
    /// Pending, running or retrying.
    pub status: JobStatus,
    /// Attempts made.
    pub attempts: u32,
    /// Retries allowed.
    pub max_retries: u32,
    /// When it may run (Unix ms): its `run_at`, or its next attempt after a backoff.
    pub next_attempt_at: Option<i64>,
    /// Its dedup key.
    pub unique_key: Option<String>,
    /// Its batch parent.
    pub parent_id: Option<JobId>,
    /// Its workflow.
    pub workflow_id: Option<Uuid>,
    /// Whether it is a batch parent (its children are in its record).
    pub has_children: bool,
}

/// The encoded fields after the name, in this order (a change of order is a new [`VERSION`]).
#[derive(Serialize, Deserialize)]
struct Fields {
    pipeline: String,
    priority: Priority,
    status: JobStatus,
    attempts: u32,
    max_retries: u32,
    next_attempt_at: Option<i64>,
    unique_key: Option<String>,
    parent_id: Option<JobId>,
    workflow_id: Option<Uuid>,
    has_children: bool,
}

/// The `u` value of `rec`.
pub(super) fn encode(rec: &JobRecord) -> Result<Vec<u8>, JournalError> {
    let fields = Fields {
        pipeline: rec.pipeline.clone(),
        priority: rec.priority,
        status: rec.status,
        attempts: rec.attempts,
        max_retries: rec.max_retries,
        next_attempt_at: rec.next_attempt_at,
        unique_key: rec.unique_key.clone(),
        parent_id: rec.parent_id,
        workflow_id: rec.workflow_id,
        has_children: !rec.children.is_empty(),
    };
    let name = &rec.name.as_bytes()[..rec.name.len().min(u16::MAX as usize)];
    let mut out = Vec::with_capacity(3 + name.len() + 48);
    out.push(VERSION);
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name);
    bincode::serde::encode_into_std_write(&fields, &mut out, bincode::config::standard()).map_err(
        |e| JournalError::Encode {
            what: format!("the index entry of job {}", rec.id),
            detail: e.to_string(),
        },
    )?;
    Ok(out)
}

/// The job name in a `u` value, without decoding the rest; `None` when malformed.
pub(super) fn name_of(value: &[u8]) -> Option<&[u8]> {
    let (&version, rest) = value.split_first()?;
    if version != VERSION {
        return None;
    }
    let len = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize;
    rest.get(2..2 + len)
}

/// Decodes the `u` value of job `id`; `key` names the entry in errors.
pub(super) fn decode(id: JobId, key: &[u8], value: &[u8]) -> Result<UnfinishedHead, JournalError> {
    let corrupt = |detail: String| JournalError::Corrupt {
        what: super::describe_job_key(key),
        detail,
    };
    let name = name_of(value).ok_or_else(|| corrupt("malformed unfinished index entry".into()))?;
    let body = &value[3 + name.len()..];
    let (f, used): (Fields, usize) =
        bincode::serde::decode_from_slice(body, bincode::config::standard())
            .map_err(|e| corrupt(format!("undecodable unfinished index entry: {e}")))?;
    if used != body.len() {
        return Err(corrupt(
            "trailing bytes in an unfinished index entry".into(),
        ));
    }
    let name = String::from_utf8(name.to_vec())
        .map_err(|_| corrupt("a job name that is not UTF-8 in the unfinished index".into()))?;
    if f.status.is_finished() {
        return Err(corrupt(format!(
            "in the unfinished index but {}",
            f.status.as_str()
        )));
    }
    Ok(UnfinishedHead {
        id,
        name,
        pipeline: f.pipeline,
        priority: f.priority,
        status: f.status,
        attempts: f.attempts,
        max_retries: f.max_retries,
        next_attempt_at: f.next_attempt_at,
        unique_key: f.unique_key,
        parent_id: f.parent_id,
        workflow_id: f.workflow_id,
        has_children: f.has_children,
    })
}
