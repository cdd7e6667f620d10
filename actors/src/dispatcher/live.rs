//! What the dispatcher keeps of an unfinished job in memory: only what ordering, dedup and its
//! decisions need ([`JobHead`], about 150 bytes). The params, the result and the history stay in
//! the journal: at a million queued jobs, whole records in memory cost gigabytes.
//!
//! The full [`JobRecord`] is held beside the head only while it is needed: while the job runs on a
//! worker (its end rewrites the record), and from a change until the end of the message that made
//! it (the journal gets the change at the end of every message, see `flush_journal`). After that
//! it is dropped ([`DispatcherState::cool`]) and read back from the journal when the next
//! transition needs it ([`DispatcherState::transition`]).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::error;
use uuid::Uuid;

use super::core::{change, DispatcherState};
use crate::job::{EventKind, JobId, JobRecord, JobStatus, Priority};
use crate::store::journal::UnfinishedHead;

/// The part of an unfinished job's record the dispatcher keeps in memory.
#[derive(Debug, Clone)]
pub(super) struct JobHead {
    pub(super) id: JobId,
    /// Interned: thousands of queued jobs share a handful of names.
    pub(super) name: Arc<str>,
    pub(super) priority: Priority,
    pub(super) status: JobStatus,
    pub(super) attempts: u32,
    pub(super) max_retries: u32,
    pub(super) next_attempt_at: Option<i64>,
    /// What few jobs have, boxed so that the common head stays small (a million heads live in
    /// one hash map).
    links: Option<Box<Links>>,
}

/// A head's rarely set parts.
#[derive(Debug, Clone, Default)]
struct Links {
    unique_key: Option<String>,
    parent_id: Option<JobId>,
    workflow_id: Option<Uuid>,
    /// A batch parent's children.
    children: Vec<JobId>,
}

impl JobHead {
    /// The head of an unfinished job as the journal's index holds it.
    pub(super) fn of_unfinished(h: UnfinishedHead, names: &mut Names) -> JobHead {
        let linked = h.unique_key.is_some() || h.parent_id.is_some() || h.workflow_id.is_some();
        JobHead {
            id: h.id,
            name: names.intern(&h.name),
            priority: h.priority,
            status: h.status,
            attempts: h.attempts,
            max_retries: h.max_retries,
            next_attempt_at: h.next_attempt_at,
            links: linked.then(|| {
                Box::new(Links {
                    unique_key: h.unique_key,
                    parent_id: h.parent_id,
                    workflow_id: h.workflow_id,
                    children: Vec::new(),
                })
            }),
        }
    }

    pub(super) fn of(rec: &JobRecord, names: &mut Names) -> JobHead {
        let linked = rec.unique_key.is_some()
            || rec.parent_id.is_some()
            || rec.workflow_id.is_some()
            || !rec.children.is_empty();
        JobHead {
            id: rec.id,
            name: names.intern(&rec.name),
            priority: rec.priority,
            status: rec.status,
            attempts: rec.attempts,
            max_retries: rec.max_retries,
            next_attempt_at: rec.next_attempt_at,
            links: linked.then(|| {
                Box::new(Links {
                    unique_key: rec.unique_key.clone(),
                    parent_id: rec.parent_id,
                    workflow_id: rec.workflow_id,
                    children: rec.children.clone(),
                })
            }),
        }
    }

    /// Its dedup key.
    pub(super) fn unique_key(&self) -> Option<&String> {
        self.links.as_ref()?.unique_key.as_ref()
    }

    /// Its batch parent.
    pub(super) fn parent_id(&self) -> Option<JobId> {
        self.links.as_ref()?.parent_id
    }

    /// Its workflow.
    pub(super) fn workflow_id(&self) -> Option<Uuid> {
        self.links.as_ref()?.workflow_id
    }

    /// A batch parent's children (empty for every other job).
    pub(super) fn children(&self) -> &[JobId] {
        self.links.as_ref().map_or(&[], |l| l.children.as_slice())
    }
}

/// Job names, interned.
#[derive(Debug, Default)]
pub(super) struct Names(HashMap<String, Arc<str>>);

impl Names {
    pub(super) fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.0.get(name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        self.0.insert(name.to_string(), n.clone());
        n
    }
}

/// Why a job waits on the dispatcher's timer, for `why` (in memory only: after a restart a
/// throttled job is reported as waiting out a backoff).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// The backoff after a failed attempt.
    Backoff,
    /// A rate-limit permit, or the end of a throttle pause.
    RateLimit,
    /// The circuit breaker.
    BreakerOpen,
}

/// An unfinished job in memory.
pub(super) struct Live {
    pub(super) head: JobHead,
    pub(super) lane: usize,
    /// When it is due, while it waits on the timer.
    pub(super) due: Option<Instant>,
    /// The whole record, while it is needed (see the module doc).
    pub(super) full: Option<Box<JobRecord>>,
    /// Why it waits on the timer after an attempt.
    pub(super) wait: Option<Wait>,
}

impl Live {
    /// A job known by its head (the caller keeps its whole record when it is needed).
    pub(super) fn new(head: JobHead, lane: usize) -> Live {
        Live {
            head,
            lane,
            due: None,
            full: None,
            wait: None,
        }
    }
}

impl DispatcherState {
    /// Changes job `id`'s record with `edit`, records `kind` in its history and queues the
    /// record for the journal; the head follows. Reads the record back from the journal when it
    /// is not in memory. Returns the changed record, or `None` when the job is not live or its
    /// record cannot be read (logged).
    pub(super) fn transition(
        &mut self,
        id: JobId,
        kind: EventKind,
        detail: Option<String>,
        edit: impl FnOnce(&mut JobRecord),
    ) -> Option<&JobRecord> {
        self.hydrate(id)?;
        let live = self.live.get_mut(&id)?;
        let rec = live.full.as_deref_mut()?;
        edit(rec);
        self.changes.extend(change(rec, kind, detail));
        live.head = JobHead::of(rec, &mut self.names);
        self.touched.push(id);
        live.full.as_deref()
    }

    /// Makes sure job `id`'s whole record is in memory; `None` if the job is not live or the
    /// journal cannot give its record.
    pub(super) fn hydrate(&mut self, id: JobId) -> Option<()> {
        let live = self.live.get_mut(&id)?;
        if live.full.is_some() {
            return Some(());
        }
        match self.journal.get(id) {
            Ok(Some(rec)) => {
                live.full = Some(Box::new(rec));
                self.touched.push(id);
                Some(())
            }
            Ok(None) => {
                error!(job_id = %id, "an unfinished job's record is missing from the journal");
                None
            }
            Err(e) => {
                error!(job_id = %id, error = %e, "cannot read an unfinished job's record");
                None
            }
        }
    }

    /// Drops the whole records of jobs touched by the message just handled once the journal has
    /// them, except for jobs running on a worker. Called after a successful `flush_journal`.
    pub(super) fn cool(&mut self) {
        for id in self.touched.drain(..) {
            if let Some(live) = self.live.get_mut(&id) {
                if live.head.status != JobStatus::Running {
                    live.full = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures that a head stays small: a million of them live in one hash map, so every byte
    /// here is a megabyte there (twice over, at the map's load factor).
    #[test]
    fn a_live_job_is_small() {
        let size = std::mem::size_of::<Live>();
        assert!(size <= 112, "Live is {size} bytes");
    }

    /// Ensures that interning gives one allocation per distinct name.
    #[test]
    fn names_are_interned() {
        let mut names = Names::default();
        let a = names.intern("builtin.noop");
        let b = names.intern("builtin.noop");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &names.intern("builtin.sleep")));
    }
}
