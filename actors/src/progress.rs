//! Job progress: what a running task last said about how far it is (`{done, total, message}`),
//! shown by `status`, `list` and the CLI's `--wait`.
//!
//! Progress is held in memory on the node, not journaled: a task may report it many times a
//! second, and one journal write per report would cost more than the job. So it lives on a
//! [`ProgressBoard`] shared by the workers (writers, through a per-attempt [`Progress`] handle)
//! and the admin actor (reader). An attempt's start clears the job's entry, its end keeps the
//! last report readable, and only the [`KEPT_FINISHED`] most recently ended entries are kept, so
//! the board's memory is bounded whatever the history. After a restart a job has no progress until
//! its task reports again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::job::{now_ms, rfc3339_ms, JobId};

/// Ended attempts whose last progress stays readable.
pub const KEPT_FINISHED: usize = 10_000;

/// Longest progress message kept, in bytes; a longer one is cut at a character boundary.
pub const MAX_MESSAGE_BYTES: usize = 512;

/// One progress report as the protocol shows it (docs/protocol.md, the job object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressView {
    /// Units done so far.
    pub done: u64,
    /// Units in all, when known.
    pub total: Option<u64>,
    /// A short text for people.
    pub message: Option<String>,
    /// The attempt that reported it.
    pub attempt: u32,
    /// When it was reported (RFC 3339).
    pub updated_at: String,
}

#[derive(Debug, Clone)]
struct Entry {
    done: u64,
    total: Option<u64>,
    message: Option<String>,
    attempt: u32,
    at_ms: i64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<JobId, Entry>,
    /// Jobs whose attempt ended, oldest first; trimmed to [`KEPT_FINISHED`].
    ended: VecDeque<JobId>,
}

/// Every job's latest progress on this node.
#[derive(Debug, Clone, Default)]
pub struct ProgressBoard(Arc<Mutex<Inner>>);

impl ProgressBoard {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind: still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The handle an attempt reports through; the job's earlier progress is forgotten.
    pub fn attempt(&self, job_id: JobId, attempt: u32) -> Progress {
        self.lock().entries.remove(&job_id);
        Progress {
            board: Some(self.clone()),
            job_id,
            attempt,
        }
    }

    /// The job's latest progress, if any is known.
    pub fn get(&self, job_id: JobId) -> Option<ProgressView> {
        self.lock().entries.get(&job_id).map(|e| ProgressView {
            done: e.done,
            total: e.total,
            message: e.message.clone(),
            attempt: e.attempt,
            updated_at: rfc3339_ms(e.at_ms),
        })
    }

    /// Entries held now (tests check the bound).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when no job has progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn ended(&self, job_id: JobId) {
        let mut inner = self.lock();
        if !inner.entries.contains_key(&job_id) {
            return;
        }
        inner.ended.push_back(job_id);
        while inner.ended.len() > KEPT_FINISHED {
            if let Some(old) = inner.ended.pop_front() {
                inner.entries.remove(&old);
            }
        }
    }
}

/// One attempt's progress handle, in every task's context ([`crate::tasks::TaskCtx`]).
#[derive(Debug, Clone)]
pub struct Progress {
    board: Option<ProgressBoard>,
    job_id: JobId,
    attempt: u32,
}

impl Progress {
    /// A handle that keeps nothing (a task run outside a node, in tests).
    pub fn detached(job_id: JobId) -> Progress {
        Progress {
            board: None,
            job_id,
            attempt: 0,
        }
    }

    /// Reports how far the attempt is: `done` of `total` units, with an optional message.
    pub fn report(&self, done: u64, total: Option<u64>, message: Option<&str>) {
        let Some(board) = &self.board else {
            return;
        };
        let entry = Entry {
            done,
            total,
            message: message.map(|m| cut(m, MAX_MESSAGE_BYTES).to_string()),
            attempt: self.attempt,
            at_ms: now_ms(),
        };
        board.lock().entries.insert(self.job_id, entry);
    }

    /// Marks the attempt ended: its last report stays readable, among the bounded ended ones.
    pub fn end(&self) {
        if let Some(board) = &self.board {
            board.ended(self.job_id);
        }
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures that the latest report wins and a new attempt starts with no progress.
    #[test]
    fn latest_report_wins_and_attempts_reset() {
        let board = ProgressBoard::default();
        let id = JobId::new();
        let p = board.attempt(id, 1);
        p.report(1, Some(10), Some("first"));
        p.report(4, Some(10), Some("fourth"));
        let v = board.get(id).unwrap();
        assert_eq!((v.done, v.total, v.attempt), (4, Some(10), 1));
        assert_eq!(v.message.as_deref(), Some("fourth"));
        board.attempt(id, 2);
        assert_eq!(board.get(id), None);
    }

    /// Ensures that ended attempts keep their last report, but only the most recent
    /// KEPT_FINISHED of them, so the board stays bounded.
    #[test]
    fn ended_entries_are_bounded() {
        let board = ProgressBoard::default();
        let first = JobId::new();
        for i in 0..KEPT_FINISHED + 5 {
            let id = if i == 0 { first } else { JobId::new() };
            let p = board.attempt(id, 1);
            p.report(i as u64, None, None);
            p.end();
        }
        assert_eq!(board.len(), KEPT_FINISHED);
        assert_eq!(board.get(first), None, "the oldest ended entry is dropped");
    }

    /// Ensures that a long message is cut at a character boundary.
    #[test]
    fn long_messages_are_cut() {
        let board = ProgressBoard::default();
        let id = JobId::new();
        board
            .attempt(id, 1)
            .report(0, None, Some(&"é".repeat(MAX_MESSAGE_BYTES)));
        let m = board.get(id).unwrap().message.unwrap();
        assert!(m.len() <= MAX_MESSAGE_BYTES && m.chars().all(|c| c == 'é'));
    }
}
