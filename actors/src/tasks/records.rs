//! Where a task's records go. On a single node a [`Records`] writes each `put` straight into the
//! journal's `records` tree. In cluster mode it writes nothing anywhere: each attempt's puts are
//! kept in a buffer of that attempt ([`Attempts`]), which the cluster dispatcher takes when the
//! attempt ends and writes in the same statement as the job's fenced completion (so an attempt
//! whose completion is fenced out, because the job was rescued or cancelled meanwhile, leaves no
//! record behind; see docs/cluster.md).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::TaskError;
use crate::job::JobId;
use crate::store::journal::Journal;

/// The longest record key cluster mode takes: a longer one could not enter the `records`
/// table's primary key index (about 2.7 KB), and would refuse the whole batch of completions
/// it travels with.
pub const MAX_CLUSTER_KEY_BYTES: usize = 1024;

/// A task's handle on the record store.
#[derive(Clone, Default)]
pub struct Records(Store);

#[derive(Clone, Default)]
enum Store {
    /// Outside a node: every put fails.
    #[default]
    Detached,
    /// A single node: the journal.
    Journal(Journal),
    /// A cluster node's registry of attempt buffers: a worker asks it for its attempt's handle.
    Attempts(Attempts),
    /// One attempt's buffer (cluster mode).
    Attempt(Arc<Buffer>),
}

impl Records {
    /// Records go to `journal`.
    pub fn new(journal: Journal) -> Records {
        Records(Store::Journal(journal))
    }

    /// Records are kept per attempt in `attempts` (cluster mode): see [`Records::for_attempt`].
    pub fn buffered(attempts: Attempts) -> Records {
        Records(Store::Attempts(attempts))
    }

    /// A handle with no store: every `put` fails (a task run outside a node).
    pub fn detached() -> Records {
        Records(Store::Detached)
    }

    /// The handle the attempt of `job` that is starting now stores through: in cluster mode the
    /// buffer the dispatcher opened for it when it handed the job out (a closed one when there
    /// is none: its puts fail); otherwise this same handle.
    pub fn for_attempt(&self, job: JobId) -> Records {
        match &self.0 {
            Store::Attempts(a) => Records(Store::Attempt(a.current(job))),
            _ => self.clone(),
        }
    }

    /// Stores `value` under `key`; true when it was new or changed, false when the same value
    /// was there already (a re-run stores nothing new). A store failure is transient.
    ///
    /// In cluster mode "there already" means "put by this attempt already": whether PostgreSQL
    /// holds that value is known only when the completion writes it, so a re-run there counts
    /// every record it puts once. A put after the attempt ended (a task still running past its
    /// abort) fails as transient and is never written.
    pub fn put(&self, key: &str, value: &Value) -> Result<bool, TaskError> {
        match &self.0 {
            Store::Detached => Err(TaskError::Permanent(format!(
                "record {key:?}: this task runs without a record store"
            ))),
            Store::Journal(journal) => journal
                .put_record(key, value)
                .map_err(|e| TaskError::Transient(format!("storing record {key:?}: {e}"))),
            Store::Attempts(_) => Err(TaskError::Permanent(format!(
                "record {key:?}: stored through the node's handle, not an attempt's (use the task context's records)"
            ))),
            Store::Attempt(_) if key.len() > MAX_CLUSTER_KEY_BYTES => {
                Err(TaskError::Permanent(format!(
                    "record {:?}...: the key is {} bytes; cluster mode stores keys of at most {MAX_CLUSTER_KEY_BYTES} (PostgreSQL's index)",
                    key.chars().take(64).collect::<String>(),
                    key.len()
                )))
            }
            Store::Attempt(buffer) => buffer.put(key, value).ok_or_else(|| {
                TaskError::Transient(format!(
                    "record {key:?}: this attempt has ended; its records are no longer taken"
                ))
            }),
        }
    }
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match &self.0 {
            Store::Detached => "Records(detached)",
            Store::Journal(_) => "Records(journal)",
            Store::Attempts(_) => "Records(attempts)",
            Store::Attempt(_) => "Records(attempt)",
        })
    }
}

/// The records one attempt put, by key (a later put of a key replaces the earlier one); `None`
/// once the attempt ended and the dispatcher took them.
#[derive(Debug, Default)]
pub struct Buffer(Mutex<Option<BTreeMap<String, Value>>>);

impl Buffer {
    fn open() -> Arc<Buffer> {
        Arc::new(Buffer(Mutex::new(Some(BTreeMap::new()))))
    }

    fn closed() -> Arc<Buffer> {
        Arc::new(Buffer(Mutex::new(None)))
    }

    /// Keeps `value` under `key`: Some(true) when new or changed in this attempt, None when the
    /// buffer is closed.
    fn put(&self, key: &str, value: &Value) -> Option<bool> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let kept = kept.as_mut()?;
        if kept.get(key) == Some(value) {
            return Some(false);
        }
        kept.insert(key.to_string(), value.clone());
        Some(true)
    }

    /// Closes the buffer and returns what it kept, in key order.
    fn close(&self) -> Vec<(String, Value)> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kept.take().unwrap_or_default().into_iter().collect()
    }
}

/// The record buffers of the attempts running on a cluster node, by job: the dispatcher opens
/// one when it hands a job to a worker and closes it when the attempt ends; the worker looks up
/// its attempt's buffer when it starts the attempt. A job handed out again while an older
/// attempt of it still winds down gets a new buffer: the older attempt keeps the old one, so
/// the puts of two attempts never mix.
#[derive(Debug, Clone, Default)]
pub struct Attempts(Arc<Mutex<HashMap<JobId, Arc<Buffer>>>>);

impl Attempts {
    /// Opens the buffer of the attempt of `job` about to start.
    pub fn open(&self, job: JobId) -> Arc<Buffer> {
        let buffer = Buffer::open();
        self.lock().insert(job, buffer.clone());
        buffer
    }

    /// Closes `buffer` (an attempt of `job` ended) and returns its records; forgets it unless a
    /// newer attempt of the job replaced it already.
    pub fn close(&self, job: JobId, buffer: &Arc<Buffer>) -> Vec<(String, Value)> {
        let mut map = self.lock();
        if map.get(&job).is_some_and(|b| Arc::ptr_eq(b, buffer)) {
            map.remove(&job);
        }
        drop(map);
        buffer.close()
    }

    /// The buffer of the attempt of `job` handed out last (a closed one when there is none).
    fn current(&self, job: JobId) -> Arc<Buffer> {
        self.lock()
            .get(&job)
            .cloned()
            .unwrap_or_else(Buffer::closed)
    }

    /// Forgets every buffer: a new dispatcher incarnation runs nothing yet, and the attempts
    /// of the one before (their workers restarted with it) are never completed by it.
    pub fn clear(&self) {
        for (_, buffer) in self.lock().drain() {
            buffer.close();
        }
    }

    /// How many attempts have a buffer open (for tests and leak checks).
    pub fn open_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Arc<Buffer>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Ensures that an attempt's puts are kept in its buffer, a repeated value counts as not
    /// new, and the dispatcher takes them once, in key order.
    #[test]
    fn an_attempts_puts_are_kept_until_it_ends() {
        let attempts = Attempts::default();
        let job = JobId::new();
        let buffer = attempts.open(job);
        let records = Records::buffered(attempts.clone()).for_attempt(job);
        assert_eq!(records.put("b", &json!(1)), Ok(true));
        assert_eq!(records.put("a", &json!(2)), Ok(true));
        assert_eq!(records.put("b", &json!(1)), Ok(false));
        assert_eq!(records.put("b", &json!(3)), Ok(true));
        let taken = attempts.close(job, &buffer);
        assert_eq!(
            taken,
            vec![("a".to_string(), json!(2)), ("b".to_string(), json!(3))]
        );
        assert_eq!(attempts.open_count(), 0);
        assert!(attempts.close(job, &buffer).is_empty(), "taken once");
    }

    /// Ensures that a put after the attempt ended fails as transient, that a key too long for
    /// PostgreSQL's index is refused as permanent, naming its length, and that an attempt with
    /// no buffer (none was opened) cannot store anything.
    #[test]
    fn puts_after_the_end_fail() {
        let attempts = Attempts::default();
        let job = JobId::new();
        let buffer = attempts.open(job);
        let records = Records::buffered(attempts.clone()).for_attempt(job);
        attempts.close(job, &buffer);
        assert!(matches!(
            records.put("k", &json!(1)),
            Err(TaskError::Transient(_))
        ));
        let other = JobId::new();
        let _open = attempts.open(other);
        let long = "k".repeat(MAX_CLUSTER_KEY_BYTES + 1);
        let at_other = Records::buffered(attempts.clone()).for_attempt(other);
        assert!(matches!(
            at_other.put(&long, &json!(1)),
            Err(TaskError::Permanent(m)) if m.contains("1025 bytes")
        ));
        let stray = Records::buffered(attempts).for_attempt(JobId::new());
        assert!(matches!(
            stray.put("k", &json!(1)),
            Err(TaskError::Transient(_))
        ));
    }

    /// Ensures that a job handed out again while its older attempt winds down gets a buffer of
    /// its own: closing the older one neither takes nor forgets the newer one's records.
    #[test]
    fn two_attempts_of_one_job_never_mix() {
        let attempts = Attempts::default();
        let job = JobId::new();
        let old = attempts.open(job);
        let old_records = Records::buffered(attempts.clone()).for_attempt(job);
        let new = attempts.open(job);
        let new_records = Records::buffered(attempts.clone()).for_attempt(job);
        old_records.put("old", &json!(1)).unwrap();
        new_records.put("new", &json!(2)).unwrap();
        assert_eq!(attempts.close(job, &old), vec![("old".into(), json!(1))]);
        assert_eq!(attempts.open_count(), 1, "the newer attempt's buffer stays");
        assert_eq!(attempts.close(job, &new), vec![("new".into(), json!(2))]);
    }
}
