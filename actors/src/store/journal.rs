//! The journal: every job state change, the pipelines' output records and a little node state,
//! stored in one sled database under the node's data dir.
//!
//! # Layout
//!
//! One [`sled::Db`] in the data dir with four trees:
//!
//! - `jobs` holds one entry per job: `b'j' ++ id(16)` → `[version][status byte][bincode(JobRecord)]`.
//!   The record carries its own history (`JobRecord::history`), so one transition is one record
//!   insert: measured, a separate key per event doubled sled's write volume and halved job
//!   throughput. Beside the records, the `u` (unfinished) and `f` (finished, by status and name)
//!   index keys of `index`, written in the same [`sled::Batch`] as their record, so replay
//!   and filtered listings cost O(unfinished) or O(page), not O(history). A batch of changes
//!   (a whole `submit_batch`) is one atomic batch. Workflows live here too (`b'w' ++ id`).
//! - `records` holds pipeline output: `key` → `[version][updated_at i64 BE][JSON text]`.
//! - `meta` holds small node state: `key` → `[version][bytes]`, among them the journal's own
//!   `index_version` and `commit_seq`.
//! - `outbox` holds the records still to ship to a sink: `seq(8, BE)` → record key, written in
//!   the same sled transaction as the record while a sink is configured (`outbox`).
//!
//! Every value starts with `FORMAT_VERSION`; an unknown version is reported as
//! [`JournalError::Corrupt`] naming the key rather than being misread. Job ids are UUID v7, so
//! key order is creation order: `list` walks keys backwards for newest first and `compact`
//! walks the records forwards and stops at the first job too young to be compacted.
//!
//! # Damage is detected, not absorbed, and destroys nothing
//!
//! sled recovers a damaged log by cutting it at the first bad entry, overwriting the rest of
//! that segment and every later one, and opening without complaint. `watermark` keeps a
//! commit sequence both inside sled and in a file beside it; [`Journal::open`] refuses a
//! database that recovered to an earlier commit ([`JournalError::RolledBack`]) before writing
//! anything, and [`check`] verifies a data dir offline (`warden check`). Because sled cuts
//! inside its own `open`, Warden builds a patched sled whose recovery calls `recovery`'s guard
//! first: the bytes about to be overwritten are saved under `<dir>/recovery/`, kept and named
//! when the open is refused, removed when every durable commit came back.
//!
//! # A full disk
//!
//! After one failed write (`ENOSPC`), sled 0.34 fails every later write with the same error,
//! even once space is back (measured on a tmpfs): only reopening recovers. So the journal
//! refuses new work below `[node] min_free_space` ([`Journal::admit_writes`], see `space`),
//! turns a failed commit into [`JournalError::Failed`] (restart needed), and bounds
//! [`Journal::durable`] in real time ([`JournalError::CommitTimeout`]).
//!
//! # Durability, and why fsync is explicit
//!
//! A submit is acknowledged only once its entry is durable, i.e. fsync'd. sled 0.34.7's
//! [`sled::Tree::flush`] is not that: it writes the log buffers and ends in `sync_file_range(2)`
//! (`pagecache/iobuf.rs`), which neither flushes the disk's volatile write cache nor persists
//! file metadata such as the file's size, and sled never fsyncs the blob files it writes for
//! large values (`pagecache/blob_io.rs`, under `<dir>/blobs/`). A power loss could therefore
//! drop entries that `flush` reported as written. So the journal keeps its own handle on
//! `<dir>/db` and a commit is: `flush()`, then fsync every blob file not synced before (and the
//! blobs dir when it gained files), then `fdatasync` of `<dir>/db`. Blobs go before the log so
//! that a durable log never points at a blob that is not.
//!
//! # Group commit
//!
//! An fsync costs milliseconds, so one per entry would cap throughput at a few hundred entries
//! a second. [`Journal::write`] therefore only applies the batch (fast, not durable), and
//! [`Journal::durable`] queues a waiter for a dedicated thread (`warden-journal-commit`). The
//! thread blocks for the first waiter, drains every waiter queued by then, performs ONE commit
//! and answers them all; waiters that arrive during that commit are served by the next one. A
//! waiter is queued only after its writes were applied, and `flush` covers everything applied
//! before it starts, so every write made before a `durable()` call is covered when it resolves.
//! A failed commit is reported to every waiter of that round; the thread keeps serving. After
//! each commit the sequence is written to the watermark file (one more small write + fdatasync
//! per group commit, shared by all its waiters).
//!
//! # Exclusive use
//!
//! Two nodes on one data dir would corrupt each other's view of the queues, so [`Journal::open`]
//! first takes an exclusive lock on `<dir>/warden.lock` (released by the OS when the process
//! dies, so a `kill -9` never leaves a stale lock) and holds it as long as the journal lives.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::job::{now_ms, JobEvent, JobId, JobRecord, JobStatus, WorkflowRecord};

pub use self::outbox::{Cursor as OutboxCursor, OutboxItem};

pub mod check;
mod head;
mod index;
mod outbox;
mod recovery;
#[cfg(test)]
mod recovery_tests;
mod space;
#[cfg(test)]
mod store_tests;
mod watermark;

pub use head::UnfinishedHead;
pub use index::ListFilter;

/// The first byte of every stored value; bump it when an encoding changes.
const FORMAT_VERSION: u8 = 1;

/// Prefix of job record keys in the `jobs` tree.
const RECORD_PREFIX: u8 = b'j';
/// Prefix of workflow keys in the `jobs` tree.
const WORKFLOW_PREFIX: u8 = b'w';

/// The lock file that marks a data dir as in use by a live node.
const LOCK_FILE: &str = "warden.lock";

/// The watermark file is fsync'd at most this often by group commits (always by `sync_now`
/// and on close). It never claims more than sled has (it is written after sled's fsync), so
/// the lag only narrows detection: after a power loss, damage to the last second of commits
/// may go unnoticed. A process crash loses nothing: the page cache still writes it back.
const WATERMARK_SYNC_EVERY: Duration = Duration::from_secs(1);

/// Records per chunk handed from the replay walker to the replaying thread, and how many chunks
/// may wait between them (a bound on the memory a replay holds beyond what it keeps).
const REPLAY_CHUNK: usize = 1024;
const REPLAY_CHUNKS_AHEAD: usize = 4;

/// How often `measure_ceiling` commits, in entries.
const CEILING_COMMIT_EVERY: usize = 512;

/// How long `durable` waits for the commit covering it before reporting
/// [`JournalError::CommitTimeout`], by default.
pub const DEFAULT_COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default of `[node] min_free_space`: 64 MiB, room for sled to write a few segments.
pub const DEFAULT_MIN_FREE_SPACE: u64 = 64 << 20;

/// How the journal runs; [`Journal::open`] uses the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalOptions {
    /// [`Journal::admit_writes`] refuses while the data dir's file system has less free; 0 never
    /// refuses.
    pub min_free_space: u64,
    /// How long [`Journal::durable`] waits (real time) for its commit.
    pub commit_timeout: Duration,
    /// sled's page cache bound in bytes (`[node] cache_size`).
    pub cache_bytes: u64,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            min_free_space: DEFAULT_MIN_FREE_SPACE,
            commit_timeout: DEFAULT_COMMIT_TIMEOUT,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// Why a commit did not confirm a waiter.
#[derive(Debug, Clone)]
enum CommitFailure {
    /// The commit failed with this message.
    Failed(String),
    /// The commit took longer than the timeout; it may still be running.
    TimedOut(Duration),
}

/// A waiter of the commit thread: answered with the outcome of the commit that covered it.
type Waiter = oneshot::Sender<Result<(), CommitFailure>>;

/// What can go wrong in the journal. Messages are lowercase and name what failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another live process holds the data dir's lock file.
    #[error(
        "data dir {dir} is in use by another live node (lock file {dir}/warden.lock is held)",
        dir = .dir.display()
    )]
    Locked {
        /// The data dir.
        dir: PathBuf,
    },
    /// A file system operation failed.
    #[error("could not {what}: {source}")]
    Io {
        /// The operation and its path, e.g. `fsync /var/lib/warden/db`.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// sled reported an error.
    #[error("sled failed while {what}: {source}")]
    Sled {
        /// What the journal was doing, naming the key or path.
        what: String,
        /// The underlying error.
        source: sled::Error,
    },
    /// A stored value could not be read: unknown version byte, bad status byte or undecodable.
    #[error("corrupt journal value at {what}: {detail}")]
    Corrupt {
        /// The tree and key of the value.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A value could not be encoded.
    #[error("could not encode {what}: {detail}")]
    Encode {
        /// The value, naming its key.
        what: String,
        /// The encoder's message.
        detail: String,
    },
    /// A group commit (flush + fsync) failed; every waiter of that commit gets this.
    #[error("journal commit (flush + fsync) failed: {detail}")]
    Commit {
        /// The commit's error message.
        detail: String,
    },
    /// The commit thread is gone, so durability can no longer be confirmed.
    #[error("the journal is closed (its commit thread has stopped)")]
    Closed,
    /// The data dir's file system has less free space than `[node] min_free_space`.
    #[error(
        "data dir {dir} has {free} bytes free, less than [node] min_free_space = {needed}: \
         new writes are refused until space is freed",
        dir = .dir.display()
    )]
    Full {
        /// The data dir.
        dir: PathBuf,
        /// Bytes free now.
        free: u64,
        /// Bytes required (`min_free_space`).
        needed: u64,
    },
    /// The commit covering a `durable` call did not finish in time (a stalled or failing disk).
    #[error(
        "journal commit in {dir} did not finish within {}ms (disk stalled or failing)",
        waited.as_millis(),
        dir = .dir.display()
    )]
    CommitTimeout {
        /// The data dir.
        dir: PathBuf,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The journal failed a write or commit and cannot write again in this process: sled 0.34
    /// keeps an IO error (e.g. `ENOSPC`) as a global error and fails every later write with it,
    /// even once the cause is gone. Reads still work.
    #[error(
        "journal in {dir} can no longer write after: {detail}; sled keeps failing every write \
         after an IO error, so restart the node once the cause (e.g. a full disk) is fixed",
        dir = .dir.display()
    )]
    Failed {
        /// The data dir.
        dir: PathBuf,
        /// The first error.
        detail: String,
    },
    /// The database recovered to an earlier state than the watermark file says was durable:
    /// committed writes are lost (a damaged, truncated or replaced `db` file).
    #[error(
        "journal in {dir} lost committed writes: {dir}/watermark says commit {expected} was \
         durable but the database recovered only up to commit {found} (its db file was \
         damaged, truncated or replaced). {saved_note}Refusing to use it so that nothing more \
         is overwritten: restore the data dir from a backup, or inspect it with `warden check \
         --data-dir {dir}`; to accept the loss, delete {dir}/watermark",
        dir = .dir.display(),
        saved_note = saved_note(.saved.as_deref()),
    )]
    RolledBack {
        /// The data dir.
        dir: PathBuf,
        /// The sequence of the last commit known durable (the watermark file's).
        expected: u64,
        /// The sequence sled recovered.
        found: u64,
        /// Where the bytes sled's recovery overwrote were saved, if it overwrote any.
        saved: Option<PathBuf>,
    },
}

/// The part of [`JournalError::RolledBack`]'s message that says where the cut bytes are.
fn saved_note(saved: Option<&Path>) -> String {
    saved.map_or_else(String::new, |folder| {
        format!(
            "The log bytes sled's recovery overwrote are saved in {} (one file per region, named \
             by its offset in db). ",
            folder.display()
        )
    })
}

/// One state change: the job's record after the change (its history already holding the event
/// that describes it), encoded at once so that the caller keeps its record without cloning it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    key: Vec<u8>,
    bytes: Vec<u8>,
    /// The job's name, for the indexes; `None` for a workflow.
    name: Option<String>,
    /// What the journal held of the job before, for the indexes.
    before: index::Before,
    /// Its unfinished index value ([`head`]); empty for a finished job or a workflow.
    head: Vec<u8>,
}

impl Change {
    /// Encodes `record` as it is now.
    pub fn new(record: &JobRecord) -> Result<Change, JournalError> {
        Ok(Change {
            key: record_key(record.id).to_vec(),
            bytes: encode_record(record)?,
            name: Some(record.name.clone()),
            before: index::Before::of(record.history.last().map(|e| e.kind)),
            head: if record.status.is_finished() {
                Vec::new()
            } else {
                head::encode(record)?
            },
        })
    }

    /// Encodes a workflow's structure, to be written in the same batch as its jobs.
    pub fn workflow(w: &WorkflowRecord) -> Result<Change, JournalError> {
        let mut bytes = vec![FORMAT_VERSION];
        let body = bincode::serde::encode_to_vec(w, bincode::config::standard()).map_err(|e| {
            JournalError::Encode {
                what: format!("workflow {}", w.id),
                detail: e.to_string(),
            }
        })?;
        bytes.extend_from_slice(&body);
        Ok(Change {
            key: workflow_key(w.id),
            bytes,
            name: None,
            before: index::Before::Unknown,
            head: Vec::new(),
        })
    }
}

/// One pipeline output record as stored in the `records` tree.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    /// The record's key.
    pub key: String,
    /// The record's value.
    pub value: serde_json::Value,
    /// When the value last changed (Unix ms).
    pub updated_at: i64,
}

/// The node's journal. Cloning is cheap (an `Arc`); the last clone to drop stops the commit
/// thread, closes sled and releases the data dir's lock.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// Shared state behind every clone of a [`Journal`].
struct Inner {
    dir: PathBuf,
    jobs: sled::Tree,
    records: sled::Tree,
    meta: sled::Tree,
    /// Records still to ship to a sink (`outbox.rs`).
    outbox: outbox::Outbox,
    committer: Arc<Committer>,
    /// Waiters for the commit thread, also watched by the watchdog thread.
    queue: Arc<Queue>,
    commit_thread: Option<JoinHandle<()>>,
    watchdog_thread: Option<JoinHandle<()>>,
    space: space::SpaceGuard,
    /// Waiters queued so far, so a test can tell when its callers are all waiting.
    #[cfg(test)]
    queued: std::sync::atomic::AtomicUsize,
    /// Records decoded by `list`, so a test can prove a listing reads O(page) records.
    #[cfg(test)]
    decoded: std::sync::atomic::AtomicUsize,
    /// Declared last so it is dropped last: the lock is released only once sled is closed.
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.queue.close();
        // Join so that sled is really closed (its own lock on `db` released) once the last
        // `Journal` is gone; the threads exit as soon as they see the queue closed, the commit
        // thread after at most the commit it is running.
        for handle in [self.commit_thread.take(), self.watchdog_thread.take()]
            .into_iter()
            .flatten()
        {
            if handle.thread().id() != thread::current().id() && handle.join().is_err() {
                tracing::error!(dir = %self.dir.display(), "journal thread panicked");
            }
        }
        if let Some(seal) = &self.committer.seal {
            if let Err(error) = seal.watermark.sync() {
                tracing::warn!(dir = %self.dir.display(), %error, "cannot fsync the watermark");
            }
        }
    }
}

/// The commit thread's queue of waiters. A watchdog answers waiters that waited longer than
/// the commit timeout, so `durable` is bounded in real time even when a commit hangs (a full
/// or dying disk) and even under a paused tokio clock (tests), which a tokio timer is not.
struct Queue {
    state: Mutex<QueueState>,
    /// Wakes the commit thread: a waiter arrived, or the queue closed.
    work: Condvar,
    /// Wakes the watchdog early: the queue closed.
    stop: Condvar,
    timeout: Duration,
}

#[derive(Default)]
struct QueueState {
    /// Waiters for the next commit, with when they arrived.
    waiting: Vec<(Instant, Waiter)>,
    /// Waiters of the commit running now.
    in_flight: Vec<(Instant, Waiter)>,
    /// When the running commit started.
    commit_started: Option<Instant>,
    /// The first failed write or commit: the journal cannot write again (see `Failed`).
    failed: Option<String>,
    closed: bool,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close(&self) {
        self.lock().closed = true;
        self.work.notify_all();
        self.stop.notify_all();
    }

    /// Records the first failure that leaves sled unable to write.
    fn fail(&self, detail: String) {
        let mut state = self.lock();
        if state.failed.is_none() {
            tracing::error!(%detail, "journal can no longer write until the node restarts");
            state.failed = Some(detail);
        }
    }
}

/// Performs commits: flush + fsync of the log and of new blob files. Shared by the commit thread,
/// `sync_now` and `measure_ceiling`.
struct Committer {
    db: sled::Db,
    /// Our own handle on sled's log file, for the fsync sled does not do.
    db_file: File,
    db_path: PathBuf,
    blobs_dir: PathBuf,
    /// Blob files fsync'd so far (pruned to those still present at each commit). The mutex also
    /// keeps two concurrent commits from syncing the same files twice.
    synced_blobs: Mutex<HashSet<OsString>>,
    /// Commits performed (by the thread or `sync_now`).
    commits: AtomicU64,
    /// The commit sequence and watermark; `None` for `measure_ceiling`'s raw database.
    seal: Option<Seal>,
    /// Held by a test to stall commits while waiters pile up.
    #[cfg(test)]
    gate: Mutex<()>,
}

/// What ties sled's state to the watermark file (see [`watermark`]).
struct Seal {
    meta: sled::Tree,
    watermark: watermark::Watermark,
    /// The sequence the next commit gets and when the watermark was last fsync'd; the mutex
    /// also serialises commits.
    state: Mutex<SealState>,
}

struct SealState {
    next: u64,
    synced_at: Instant,
}

impl Committer {
    fn new(db: sled::Db, dir: &Path) -> Result<Committer, JournalError> {
        let db_path = dir.join("db");
        // Write access: some platforms refuse to fsync a read-only handle.
        let db_file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&db_path)
            .map_err(|source| io_err(format!("open {}", db_path.display()), source))?;
        Ok(Committer {
            db,
            db_file,
            db_path,
            blobs_dir: dir.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
            commits: AtomicU64::new(0),
            seal: None,
            #[cfg(test)]
            gate: Mutex::new(()),
        })
    }

    /// Makes everything written so far durable: stamp the next commit sequence into sled,
    /// flush, fsync new blobs, fsync the log, then record the sequence in the watermark file.
    /// The watermark is fsync'd when `sync_watermark` is set or [`WATERMARK_SYNC_EVERY`] has
    /// passed since it last was: an fsync per commit cost throughput (see the module doc).
    fn commit(&self, sync_watermark: bool) -> Result<(), JournalError> {
        #[cfg(test)]
        let _gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        // One commit at a time, so sequences reach the watermark in order.
        let mut seal_state = self
            .seal
            .as_ref()
            .map(|s| s.state.lock().unwrap_or_else(|e| e.into_inner()));
        if let (Some(seal), Some(state)) = (&self.seal, seal_state.as_deref()) {
            seal.meta
                .insert(
                    watermark::COMMIT_SEQ_KEY,
                    &watermark::encode_seq(state.next)[..],
                )
                .map_err(sled_err("stamping the commit sequence"))?;
        }
        self.db.flush().map_err(|source| JournalError::Sled {
            what: format!("flushing {}", self.db_path.display()),
            source,
        })?;
        self.sync_blobs()?;
        self.db_file
            .sync_data()
            .map_err(|source| io_err(format!("fsync {}", self.db_path.display()), source))?;
        if let (Some(seal), Some(state)) = (&self.seal, seal_state.as_deref_mut()) {
            let sync = sync_watermark || state.synced_at.elapsed() >= WATERMARK_SYNC_EVERY;
            seal.watermark.store(state.next, sync)?;
            if sync {
                state.synced_at = Instant::now();
            }
            state.next += 1;
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// `commit`, timed into `warden_journal_fsync_seconds`.
    fn timed_commit(&self, sync_watermark: bool) -> Result<(), JournalError> {
        let started = Instant::now();
        let result = self.commit(sync_watermark);
        metrics::histogram!(crate::metrics::JOURNAL_FSYNC).record(started.elapsed().as_secs_f64());
        result
    }

    /// Fsyncs blob files not synced before, then the blobs dir if it gained any. sled writes a
    /// blob when the value is reserved, so after `flush` every blob of a covered write exists.
    fn sync_blobs(&self) -> Result<(), JournalError> {
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|e| e.into_inner());
        let entries = match fs::read_dir(&self.blobs_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(io_err(
                    format!("read dir {}", self.blobs_dir.display()),
                    source,
                ))
            }
        };
        let mut present = HashSet::with_capacity(synced.len());
        let mut added = false;
        for entry in entries {
            let entry = entry.map_err(|source| {
                io_err(format!("read dir {}", self.blobs_dir.display()), source)
            })?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                let path = entry.path();
                match File::open(&path).and_then(|f| f.sync_all()) {
                    Ok(()) => added = true,
                    // sled removes blobs of overwritten values in the background.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => return Err(io_err(format!("fsync {}", path.display()), source)),
                }
            }
            present.insert(name);
        }
        if added {
            sync_dir(&self.blobs_dir)?;
        }
        // Forget blobs sled has deleted, so the set does not grow forever.
        *synced = present;
        Ok(())
    }
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir` with the default [`JournalOptions`].
    pub fn open(dir: &Path) -> Result<Journal, JournalError> {
        Journal::open_with(dir, JournalOptions::default())
    }

    /// Opens (creating if needed) the journal in `dir`: takes the data dir's lock, opens sled,
    /// checks it against the watermark (failing with [`JournalError::RolledBack`] before
    /// writing anything when committed writes are lost), builds missing indexes and starts the
    /// commit and watchdog threads. Fails with [`JournalError::Locked`] if another live process
    /// holds the lock.
    pub fn open_with(dir: &Path, options: JournalOptions) -> Result<Journal, JournalError> {
        let Opened {
            lock,
            db,
            jobs,
            records,
            meta,
            outbox,
            seq,
        } = open_checked(dir, options.cache_bytes)?;
        ensure_indexes(dir, &jobs, &meta)?;

        let mut committer = Committer::new(db, dir)?;
        let watermark = watermark::Watermark::open(dir)?;
        sync_dir(dir)?;
        committer.seal = Some(Seal {
            meta: meta.clone(),
            watermark,
            state: Mutex::new(SealState {
                next: seq + 1,
                synced_at: Instant::now(),
            }),
        });
        let committer = Arc::new(committer);
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            work: Condvar::new(),
            stop: Condvar::new(),
            timeout: options.commit_timeout,
        });
        let spawn = |name: &str, run: Box<dyn FnOnce() + Send>| {
            thread::Builder::new()
                .name(name.into())
                .spawn(run)
                .map_err(|source| io_err(format!("spawn the {name} thread"), source))
        };
        let (c, q) = (Arc::clone(&committer), Arc::clone(&queue));
        let commit_thread = spawn(
            "warden-journal-commit",
            Box::new(move || commit_loop(&c, &q)),
        )?;
        let q = Arc::clone(&queue);
        let watchdog_thread = spawn(
            "warden-journal-watchdog",
            Box::new(move || watchdog_loop(&q)),
        )?;
        Ok(Journal {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                jobs,
                records,
                meta,
                outbox: outbox::Outbox::new(outbox),
                committer,
                queue,
                commit_thread: Some(commit_thread),
                watchdog_thread: Some(watchdog_thread),
                space: space::SpaceGuard::new(dir, options.min_free_space),
                #[cfg(test)]
                queued: std::sync::atomic::AtomicUsize::new(0),
                #[cfg(test)]
                decoded: std::sync::atomic::AtomicUsize::new(0),
                _lock: lock,
            }),
        })
    }

    /// Whether new work may be written now: `Failed` once a write or commit failed (sled cannot
    /// write again in this process), `CommitTimeout` while a commit has been running longer
    /// than the commit timeout, `Full` while free space is below `min_free_space` (measured at
    /// most every 100 ms). The dispatcher asks before accepting submits; writes of work already
    /// accepted are not refused here.
    pub fn admit_writes(&self) -> Result<(), JournalError> {
        {
            let state = self.inner.queue.lock();
            if let Some(detail) = &state.failed {
                return Err(JournalError::Failed {
                    dir: self.inner.dir.clone(),
                    detail: detail.clone(),
                });
            }
            if let Some(waited) = state.commit_started.map(|at| at.elapsed()) {
                if waited >= self.inner.queue.timeout {
                    return Err(JournalError::CommitTimeout {
                        dir: self.inner.dir.clone(),
                        waited,
                    });
                }
            }
        }
        self.inner.space.check()
    }

    /// Applies `changes` as ONE atomic sled batch: one insert per change plus its index changes
    /// (see `index`), derived from what the change's own event says the journal held before
    /// (`index::Before`), or, for a record without history, from the status stored now (read
    /// here: the dispatcher is the only writer of job records). Not durable yet: await [`Journal::durable`] before
    /// acknowledging.
    pub fn write(&self, changes: &[Change]) -> Result<(), JournalError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        // Only a change without history makes us read what is stored, and then an earlier
        // change of the same job in this batch is what counts.
        let reads = changes.iter().any(|c| c.before == index::Before::Unknown);
        let mut pending = index::Pending::new();
        for change in changes {
            batch.insert(change.key.as_slice(), change.bytes.as_slice());
            let Some(name) = &change.name else { continue };
            let (new, _) = split_record(&change.key, &change.bytes)?;
            let before = match change.before {
                index::Before::Unknown => {
                    index::Before::stored(match pending.get(change.key.as_slice()) {
                        Some(&status) => Some(status),
                        None => self.current_status(&change.key)?,
                    })
                }
                known => known,
            };
            let entry = index::Entry {
                id: &change.key[1..],
                name,
                status: new,
                head: &change.head,
            };
            index::apply(&mut batch, &entry, before);
            if reads {
                pending.insert(&change.key, new);
            }
        }
        self.inner.jobs.apply_batch(batch).map_err(|source| {
            let e = JournalError::Sled {
                what: format!("applying a batch of {} job changes", changes.len()),
                source,
            };
            self.inner.queue.fail(e.to_string());
            e
        })?;
        metrics::counter!(crate::metrics::JOURNAL_ENTRIES).increment(changes.len() as u64);
        Ok(())
    }

    /// The status byte of the stored record under `key`, without decoding it.
    fn current_status(&self, key: &[u8]) -> Result<Option<JobStatus>, JournalError> {
        let stored = self
            .inner
            .jobs
            .get(key)
            .map_err(sled_err("reading a job's status before a write"))?;
        stored
            .map(|v| split_record(key, &v).map(|(status, _)| status))
            .transpose()
    }

    /// Resolves once every write made before this call is fsync'd. Concurrent callers share one
    /// flush + fsync (group commit).
    /// Bounded in real time: after the commit timeout (default 10 s) it fails with
    /// [`JournalError::CommitTimeout`] even if the commit never returns.
    pub async fn durable(&self) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.inner.queue.lock();
            if state.closed {
                return Err(JournalError::Closed);
            }
            state.waiting.push((Instant::now(), tx));
        }
        self.inner.queue.work.notify_one();
        #[cfg(test)]
        self.inner.queued.fetch_add(1, Ordering::SeqCst);
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(CommitFailure::Failed(detail))) => Err(JournalError::Commit { detail }),
            Ok(Err(CommitFailure::TimedOut(waited))) => Err(JournalError::CommitTimeout {
                dir: self.inner.dir.clone(),
                waited,
            }),
            Err(_) => Err(JournalError::Closed),
        }
    }

    /// Flushes and fsyncs now, on the calling thread, independently of the commit thread (used at
    /// shutdown). Blocking.
    pub fn sync_now(&self) -> Result<(), JournalError> {
        self.inner.committer.timed_commit(true)
    }

    /// The current record of job `id`, if the journal has it.
    pub fn get(&self, id: JobId) -> Result<Option<JobRecord>, JournalError> {
        let key = record_key(id);
        let value = self
            .inner
            .jobs
            .get(key)
            .map_err(|source| JournalError::Sled {
                what: format!("reading the record of job {id}"),
                source,
            })?;
        value.map(|v| decode_record(&key, &v)).transpose()
    }

    /// The structure of workflow `id`, if the journal has it.
    pub fn get_workflow(&self, id: uuid::Uuid) -> Result<Option<WorkflowRecord>, JournalError> {
        let key = workflow_key(id);
        let value = self
            .inner
            .jobs
            .get(&key)
            .map_err(|source| JournalError::Sled {
                what: format!("reading workflow {id}"),
                source,
            })?;
        value
            .map(|v| strip_version(&key, &v).and_then(|body| decode_bincode(&key, body)))
            .transpose()
    }

    /// The history of job `id`, oldest first.
    pub fn events(&self, id: JobId) -> Result<Vec<JobEvent>, JournalError> {
        Ok(self.get(id)?.map(|r| r.history).unwrap_or_default())
    }

    /// Every job that must be resumed after a restart (pending, running, retrying), oldest
    /// first: a walk of the unfinished index, O(unfinished) whatever the history. Records are
    /// read with a cursor that follows the index while the two run in step (dense unfinished
    /// jobs: a sequential scan) and seeks when they do not (sparse ones: one lookup each).
    pub fn unfinished(&self) -> Result<Vec<JobRecord>, JournalError> {
        let mut heads = Vec::new();
        self.for_each_unfinished(|head| heads.push(head))?;
        heads
            .into_iter()
            .map(|head| {
                self.get(head.id)?.ok_or_else(|| JournalError::Corrupt {
                    what: format!("job {}", head.id),
                    detail: "the unfinished index names a job that has no record".into(),
                })
            })
            .collect()
    }

    /// The head of every unfinished job, oldest first, read from the unfinished index alone
    /// (`head`): a replay of a million pending jobs reads neither their params nor their
    /// histories. Returns how many there were.
    ///
    /// The walk and the decoding run on a thread of their own, handing heads over in chunks,
    /// while `each` runs on the caller's: at a million pending jobs the two halves cost about
    /// the same, and a restart is the time both take.
    pub fn for_each_unfinished(
        &self,
        mut each: impl FnMut(UnfinishedHead),
    ) -> Result<usize, JournalError> {
        let (send, receive) =
            std::sync::mpsc::sync_channel::<Vec<UnfinishedHead>>(REPLAY_CHUNKS_AHEAD);
        std::thread::scope(|scope| {
            let walker = std::thread::Builder::new()
                .name("warden-replay".into())
                .spawn_scoped(scope, || {
                    let mut chunk = Vec::with_capacity(REPLAY_CHUNK);
                    let count = self.walk_unfinished(|rec| {
                        chunk.push(rec);
                        if chunk.len() == REPLAY_CHUNK {
                            // A closed channel means the caller stopped; the walk ends with it.
                            let _ = send.send(std::mem::replace(
                                &mut chunk,
                                Vec::with_capacity(REPLAY_CHUNK),
                            ));
                        }
                    })?;
                    let _ = send.send(chunk);
                    drop(send);
                    Ok::<usize, JournalError>(count)
                })
                .map_err(|e| io_err("starting the replay thread".into(), e))?;
            for chunk in receive {
                chunk.into_iter().for_each(&mut each);
            }
            walker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Walks the unfinished index in id order, decoding each head.
    fn walk_unfinished(&self, mut each: impl FnMut(UnfinishedHead)) -> Result<usize, JournalError> {
        let mut count = 0;
        for item in self.inner.jobs.scan_prefix([index::UNFINISHED_PREFIX]) {
            let (key, value) = item.map_err(sled_err("walking the unfinished index for replay"))?;
            let id = key
                .get(1..)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .map(|b| JobId(uuid::Uuid::from_bytes(b)))
                .ok_or_else(|| JournalError::Corrupt {
                    what: describe_job_key(&key),
                    detail: "malformed unfinished index key".into(),
                })?;
            each(head::decode(id, &key, &value)?);
            count += 1;
        }
        Ok(count)
    }

    /// Up to `filter.limit` records matching `filter`, newest first; only jobs strictly older
    /// than `filter.before` when it is given. Without a status or name this walks the records
    /// themselves; otherwise the indexes (see `index`): finished jobs cost O(page + names),
    /// unfinished ones at most O(unfinished), never O(history).
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<JobRecord>, JournalError> {
        let mut out = Vec::new();
        if filter.limit == 0 {
            return Ok(out);
        }
        if filter.status.is_none() && filter.name.is_none() {
            let end = match filter.before {
                Some(id) => Bound::Excluded(record_key(id).to_vec()),
                // Record keys all start with `j`, so every one is below `k`.
                None => Bound::Excluded(vec![RECORD_PREFIX + 1]),
            };
            let range = (Bound::Included(vec![RECORD_PREFIX]), end);
            for item in self.inner.jobs.range(range).rev().take(filter.limit) {
                let (key, value) = item.map_err(sled_err("scanning job records for a listing"))?;
                out.push(self.decode_listed(&key, &value)?);
            }
            return Ok(out);
        }
        for id in index::candidates(&self.inner.jobs, filter)? {
            let key = record_key(JobId(uuid::Uuid::from_bytes(id?)));
            let Some(value) = self
                .inner
                .jobs
                .get(key)
                .map_err(sled_err("reading a job record for a listing"))?
            else {
                // Compacted between the index read and this one.
                continue;
            };
            let (status, _) = split_record(&key, &value)?;
            if filter.status.is_some_and(|s| s != status) {
                continue;
            }
            out.push(self.decode_listed(&key, &value)?);
            if out.len() >= filter.limit {
                break;
            }
        }
        Ok(out)
    }

    /// Decodes a record for `list`, counted in tests to prove listings are O(page).
    fn decode_listed(&self, key: &[u8], value: &[u8]) -> Result<JobRecord, JournalError> {
        #[cfg(test)]
        self.inner.decoded.fetch_add(1, Ordering::Relaxed);
        decode_record(key, value)
    }

    /// Deletes finished jobs (their records, history included) that completed before `cutoff_ms`. Scans
    /// from the oldest id and stops at the first job created at or after the cutoff: ids are
    /// time-ordered, so nothing past it can be old enough. Returns how many jobs were removed.
    pub fn compact(&self, cutoff_ms: i64) -> Result<usize, JournalError> {
        let jobs = &self.inner.jobs;
        let mut removed = 0;
        for item in jobs.scan_prefix([RECORD_PREFIX]) {
            let (key, value) = item.map_err(|source| JournalError::Sled {
                what: "scanning job records for compaction".into(),
                source,
            })?;
            let (status, body) = split_record(&key, &value)?;
            let record: JobRecord = decode_bincode(&key, body)?;
            if record.created_at >= cutoff_ms {
                break;
            }
            let old_enough = record.completed_at.is_some_and(|at| at < cutoff_ms);
            if !status.is_finished() || !old_enough {
                continue;
            }

            // Remove only if the record is still the one read above: an operator may have just
            // retried the job, and deleting it then would lose an acknowledged job. Its index
            // key goes in the same transaction.
            let index_key = index::finished_key(status, &record.name, &key[1..]);
            let outcome = jobs.transaction(|tx| {
                if tx.get(&key)?.as_ref() != Some(&value) {
                    return Ok(false);
                }
                tx.remove(&key)?;
                tx.remove(index_key.as_slice())?;
                Ok(true)
            });
            match outcome {
                Ok(true) => removed += 1,
                Ok(false) | Err(sled::transaction::TransactionError::Abort(())) => {}
                Err(sled::transaction::TransactionError::Storage(source)) => {
                    return Err(JournalError::Sled {
                        what: format!("removing job {} during compaction", record.id),
                        source,
                    })
                }
            }
        }
        Ok(removed)
    }

    /// Stores a pipeline output record under `key` in the `records` tree. Returns true when the
    /// value was new or different; storing an identical value again changes nothing (not even
    /// `updated_at`) and returns false, so re-running a pipeline over the same data is a no-op.
    pub fn put_record(&self, key: &str, value: &serde_json::Value) -> Result<bool, JournalError> {
        let json = serde_json::to_vec(value).map_err(|e| JournalError::Encode {
            what: format!("record {key:?}"),
            detail: e.to_string(),
        })?;
        if self.inner.outbox.enabled() {
            return self.put_record_outboxed(key, &json);
        }
        let sled_err = |source| JournalError::Sled {
            what: format!("storing record {key:?}"),
            source,
        };
        let mut current = self.inner.records.get(key).map_err(sled_err)?;
        loop {
            if let Some(stored) = &current {
                let (_, stored_json) = split_stored_record(key, stored)?;
                if stored_json == json.as_slice() {
                    return Ok(false);
                }
            }
            let mut encoded = Vec::with_capacity(9 + json.len());
            encoded.push(FORMAT_VERSION);
            encoded.extend_from_slice(&now_ms().to_be_bytes());
            encoded.extend_from_slice(&json);
            // Compare-and-swap so that concurrent writers of one key cannot both claim "new".
            match self
                .inner
                .records
                .compare_and_swap(key, current.as_ref(), Some(encoded))
                .map_err(sled_err)?
            {
                Ok(()) => return Ok(true),
                Err(conflict) => current = conflict.current,
            }
        }
    }

    /// Up to `limit` records whose key starts with `prefix`, in key order, with keys strictly
    /// after `after` when it is given.
    pub fn records(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, JournalError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after.as_bytes().to_vec()),
            _ => Bound::Included(prefix.as_bytes().to_vec()),
        };
        let range = (start, Bound::<Vec<u8>>::Unbounded);
        for item in self.inner.records.range(range) {
            let (key, value) = item.map_err(|source| JournalError::Sled {
                what: format!("scanning records with prefix {prefix:?}"),
                source,
            })?;
            if !key.starts_with(prefix.as_bytes()) {
                break;
            }
            let key = String::from_utf8(key.to_vec()).map_err(|_| JournalError::Corrupt {
                what: format!("records key {}", String::from_utf8_lossy(&key)),
                detail: "the key is not UTF-8".into(),
            })?;
            let (updated_at, json) = split_stored_record(&key, &value)?;
            let value = serde_json::from_slice(json).map_err(|e| JournalError::Corrupt {
                what: format!("records key {key:?}"),
                detail: format!("undecodable JSON: {e}"),
            })?;
            out.push(StoredRecord {
                key,
                value,
                updated_at,
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The node state stored under `key` in the `meta` tree.
    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, JournalError> {
        let value = self
            .inner
            .meta
            .get(key)
            .map_err(|source| JournalError::Sled {
                what: format!("reading meta key {key:?}"),
                source,
            })?;
        let Some(value) = value else { return Ok(None) };
        match value.split_first() {
            Some((&FORMAT_VERSION, body)) => Ok(Some(body.to_vec())),
            Some((version, _)) => Err(JournalError::Corrupt {
                what: format!("meta key {key:?}"),
                detail: bad_version(*version),
            }),
            None => Err(JournalError::Corrupt {
                what: format!("meta key {key:?}"),
                detail: "empty value".into(),
            }),
        }
    }

    /// Stores node state under `key` in the `meta` tree (durable with the next commit).
    pub fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), JournalError> {
        let mut encoded = Vec::with_capacity(1 + value.len());
        encoded.push(FORMAT_VERSION);
        encoded.extend_from_slice(value);
        self.inner
            .meta
            .insert(key, encoded)
            .map_err(|source| JournalError::Sled {
                what: format!("storing meta key {key:?}"),
                source,
            })?;
        Ok(())
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Bytes the database occupies on disk (log and blobs); 0 if it cannot be determined.
    pub fn size_on_disk(&self) -> u64 {
        match self.inner.committer.db.size_on_disk() {
            Ok(size) => size,
            Err(error) => {
                tracing::warn!(dir = %self.inner.dir.display(), %error, "cannot size the journal");
                0
            }
        }
    }

    /// Commits performed so far (by the commit thread or `sync_now`).
    #[cfg(test)]
    fn commit_count(&self) -> u64 {
        self.inner.committer.commits.load(Ordering::Relaxed)
    }
}

/// The raw storage ceiling for the benchmark: insert `entries` small values (about the size of a
/// JobRecord, ~200 bytes) into a fresh sled db in `dir`, fsync (the same flush+fsync path as the
/// journal) every 512 entries, return entries per second.
pub fn measure_ceiling(dir: &Path, entries: usize) -> Result<f64, JournalError> {
    fs::create_dir_all(dir)
        .map_err(|source| io_err(format!("create dir {}", dir.display()), source))?;
    let db = sled_config(dir, DEFAULT_CACHE_BYTES)
        .open()
        .map_err(|source| JournalError::Sled {
            what: format!("opening the benchmark database in {}", dir.display()),
            source,
        })?;
    let committer = Committer::new(db, dir)?;
    let value = [0x5au8; 200];
    let started = Instant::now();
    for i in 0..entries {
        committer
            .db
            .insert((i as u64).to_be_bytes(), &value[..])
            .map_err(|source| JournalError::Sled {
                what: format!("inserting benchmark entry {i}"),
                source,
            })?;
        if (i + 1) % CEILING_COMMIT_EVERY == 0 {
            committer.commit(false)?;
        }
    }
    if !entries.is_multiple_of(CEILING_COMMIT_EVERY) {
        committer.commit(false)?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(if secs > 0.0 {
        entries as f64 / secs
    } else {
        0.0
    })
}

/// The commit thread: one commit per round for every waiter queued when the round starts.
/// A failed commit marks the journal failed (sled will not write again in this process).
fn commit_loop(committer: &Committer, queue: &Queue) {
    loop {
        let mut state = queue.lock();
        while state.waiting.is_empty() && !state.closed {
            state = queue.work.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if state.waiting.is_empty() {
            return; // closed: the last `Journal` was dropped
        }
        state.in_flight = std::mem::take(&mut state.waiting);
        state.commit_started = Some(Instant::now());
        drop(state);

        let result = committer.timed_commit(false).map_err(|e| {
            tracing::error!(error = %e, "journal commit failed");
            e.to_string()
        });
        if let Err(detail) = &result {
            queue.fail(detail.clone());
        }
        let mut state = queue.lock();
        state.commit_started = None;
        // The watchdog may have answered some of them already.
        let round = std::mem::take(&mut state.in_flight);
        drop(state);
        metrics::histogram!(crate::metrics::JOURNAL_BATCH).record(round.len() as f64);
        for (_, waiter) in round {
            // A waiter whose caller gave up (dropped future) is simply skipped.
            let _ = waiter.send(result.clone().map_err(CommitFailure::Failed));
        }
    }
}

/// The watchdog thread: answers with `TimedOut` every waiter, queued or in a running commit,
/// that has waited longer than the commit timeout. Checks a few times per timeout.
fn watchdog_loop(queue: &Queue) {
    let tick = (queue.timeout / 8).clamp(Duration::from_millis(1), Duration::from_millis(250));
    let mut state = queue.lock();
    loop {
        state = queue
            .stop
            .wait_timeout(state, tick)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        if state.closed {
            return;
        }
        let now = Instant::now();
        let QueueState {
            waiting, in_flight, ..
        } = &mut *state;
        for list in [waiting, in_flight] {
            let (expired, kept) = std::mem::take(list)
                .into_iter()
                .partition(|(at, _)| now.duration_since(*at) >= queue.timeout);
            *list = kept;
            let expired: Vec<(Instant, Waiter)> = expired;
            if !expired.is_empty() {
                tracing::warn!(
                    waiters = expired.len(),
                    timeout_ms = queue.timeout.as_millis() as u64,
                    "journal commit too slow: durability waiters answered with a timeout"
                );
            }
            for (at, waiter) in expired {
                let _ = waiter.send(Err(CommitFailure::TimedOut(now.duration_since(at))));
            }
        }
    }
}

/// How long a held `warden.lock` is retried before the open fails with `Locked`. A child
/// process forked by this process (an exec task) holds a copy of every descriptor from its fork
/// until its `exec` closes them, so a lock just released may look held for that moment; a live
/// node holds it far longer.
const LOCK_RETRY_FOR: Duration = Duration::from_millis(500);

/// Creates/opens `dir/warden.lock`, locks it exclusively and writes our pid into it.
fn take_lock(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join(LOCK_FILE);
    // No truncation before the lock is ours: the file may hold a live node's pid.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| io_err(format!("open lock file {}", path.display()), source))?;
    let deadline = Instant::now() + LOCK_RETRY_FOR;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(JournalError::Locked {
                    dir: dir.to_path_buf(),
                })
            }
            Err(TryLockError::Error(source)) => {
                return Err(io_err(format!("lock {}", path.display()), source))
            }
        }
    }
    file.set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(|source| io_err(format!("write pid to {}", path.display()), source))?;
    Ok(file)
}

/// Fsyncs a directory so that entries created in it survive a crash.
fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| io_err(format!("fsync dir {}", dir.display()), source))
}

/// A journal's database, opened and verified against its watermark, nothing written by us yet.
struct Opened {
    lock: File,
    db: sled::Db,
    jobs: sled::Tree,
    records: sled::Tree,
    meta: sled::Tree,
    outbox: sled::Tree,
    /// The sequence of the last commit, as far as both sled and the watermark know.
    seq: u64,
}

/// A data dir's database just opened: its lock held, sled open, its commit sequence read.
struct DbOpened {
    lock: File,
    db: sled::Db,
    dir: PathBuf,
    /// The commit sequence sled recovered (0 when it has none, or when it cannot be read).
    found: u64,
    /// Why the commit sequence could not be read, if it could not.
    seq_error: Option<JournalError>,
    /// What sled's recovery overwrote in this open, saved first ([`recovery`]).
    saved: recovery::Saved,
}

impl DbOpened {
    fn tree(&self, name: &str) -> Result<sled::Tree, JournalError> {
        self.db
            .open_tree(name)
            .map_err(|source| JournalError::Sled {
                what: format!("opening tree {name} in {}", self.dir.display()),
                source,
            })
    }
}

/// Takes the data dir's lock, opens sled and reads its commit sequence.
fn open_db(dir: &Path, cache_bytes: u64) -> Result<DbOpened, JournalError> {
    fs::create_dir_all(dir)
        .map_err(|source| io_err(format!("create data dir {}", dir.display()), source))?;
    let lock = take_lock(dir)?;
    recovery::begin(dir);
    let db = open_sled(dir, cache_bytes);
    let saved = recovery::finish(dir);
    let mut opened = DbOpened {
        lock,
        // On failure what was saved stays in `<dir>/recovery` (nothing is discarded).
        db: db?,
        dir: dir.to_path_buf(),
        found: 0,
        seq_error: None,
        saved,
    };
    let seq = opened
        .tree("meta")?
        .get(watermark::COMMIT_SEQ_KEY)
        .map_err(sled_err("reading meta key commit_seq"))
        .and_then(|v| v.map(|v| watermark::decode_seq(&v)).transpose());
    match seq {
        Ok(found) => opened.found = found.unwrap_or(0),
        Err(e) => opened.seq_error = Some(e),
    }
    Ok(opened)
}

/// [`open_db`], then compares sled's commit sequence with the watermark file:
/// [`JournalError::RolledBack`] when sled is behind. sled has already overwritten the log after
/// the point where its recovery stopped by then (it does so inside its `open`), with the bytes
/// saved first ([`recovery`]); failing here keeps anything more from being written over the
/// damaged log.
fn open_checked(dir: &Path, cache_bytes: u64) -> Result<Opened, JournalError> {
    let mut opened = open_db(dir, cache_bytes)?;
    if let Some(e) = opened.seq_error.take() {
        return Err(e);
    }
    let expected = watermark::read(dir)?.unwrap_or(0);
    if expected > opened.found {
        return Err(JournalError::RolledBack {
            dir: dir.to_path_buf(),
            expected,
            found: opened.found,
            saved: opened.saved.folder,
        });
    }
    discard_torn_tail(dir, &opened.saved)?;
    let meta = opened.tree("meta")?;
    let jobs = opened.tree("jobs")?;
    let records = opened.tree("records")?;
    let outbox = opened.tree(outbox::TREE)?;
    // sled may just have created `db`, `blobs/` and `conf`: make their entries durable.
    sync_dir(dir)?;
    Ok(Opened {
        seq: opened.found.max(expected),
        lock: opened.lock,
        db: opened.db,
        jobs,
        records,
        meta,
        outbox,
    })
}

/// Removes what sled's recovery saved in an open that recovered every durable commit: it
/// overwrote only a torn write that nobody was told about (a crash in the middle of a commit).
fn discard_torn_tail(dir: &Path, saved: &recovery::Saved) -> Result<(), JournalError> {
    let Some(folder) = &saved.folder else {
        return Ok(());
    };
    tracing::warn!(
        dir = %dir.display(), bytes = saved.bytes,
        "sled's recovery cut the log after the last durable commit (a write torn by a crash); \
         nothing acknowledged was in the cut"
    );
    recovery::discard(saved)
        .map_err(|source| io_err(format!("remove {}", folder.display()), source))
}

/// Builds the indexes when the data dir lacks them (written by a version without indexes, or
/// a build interrupted by a crash): O(history), once; afterwards `write` keeps them.
fn ensure_indexes(dir: &Path, jobs: &sled::Tree, meta: &sled::Tree) -> Result<(), JournalError> {
    let key = index::INDEX_VERSION_KEY;
    let stored = meta
        .get(key)
        .map_err(sled_err("reading meta key index_version"))?;
    if stored.as_deref() == Some(&[FORMAT_VERSION, index::INDEX_VERSION][..]) {
        return Ok(());
    }
    let started = Instant::now();
    let records = index::rebuild(jobs)?;
    meta.insert(key, &[FORMAT_VERSION, index::INDEX_VERSION][..])
        .map_err(sled_err("storing meta key index_version"))?;
    tracing::info!(
        dir = %dir.display(), records, elapsed_ms = started.elapsed().as_millis() as u64,
        "journal indexes built"
    );
    Ok(())
}

/// Maps a sled error to [`JournalError::Sled`] saying what the journal was doing.
fn sled_err(what: &'static str) -> impl Fn(sled::Error) -> JournalError {
    move |source| JournalError::Sled {
        what: what.into(),
        source,
    }
}

fn io_err(what: String, source: io::Error) -> JournalError {
    JournalError::Io { what, source }
}

fn bad_version(version: u8) -> String {
    format!("unknown format version {version} (expected {FORMAT_VERSION})")
}

/// The sled settings of the journal, shared with `measure_ceiling` so that the ceiling is
/// measured on the same engine configuration. 4 MiB segments (sled's default is 512 KiB) mean
/// fewer sealed log buffers, each written with its own `sync_file_range`, which `warden bench`
/// showed as a clear gain in no-op throughput (README's Benchmark has the current figures). The
/// page cache is bounded by `[node] cache_size` (256 MiB by default; sled's own default is
/// 1 GiB) so that a node's memory is the operator's choice: see [`SLED_CACHE_SHARE`].
fn sled_config(dir: &Path, cache_bytes: u64) -> sled::Config {
    sled::Config::new()
        .path(dir)
        .mode(sled::Mode::HighThroughput)
        .segment_size(SEGMENT_SIZE)
        .cache_capacity(cache_bytes / SLED_CACHE_SHARE)
}

/// sled 0.34 counts a cached page by its serialized size, but holds it in memory as a tree node
/// of several allocations: with a million jobs drained, the node's RSS after the drain stood at
/// about 2.3 times sled's `cache_capacity` above the rest (674 MB at 256 MiB, 224 MB at 64 MiB).
/// Beside the cache sled keeps metadata for every page of the journal, cached or not, which
/// grows with the journal (measured: 291 MB after a million-job drain at a third, 391 MB when
/// another million finished jobs were in the journal). So `[node] cache_size` is the memory the
/// cache may take, and sled is given a fifth of it as its own (serialized) bound. An eighth was
/// tried (two soak runs, quiet machine): RSS after the drain 289 and 295 MB instead of 326-342,
/// drains 15.7-16.3k jobs/s instead of 13.3-14.2k, but a restart with a million finished and a
/// million pending jobs took 3.2-3.3 s to `ping` (journal open 1.4-1.5 s) instead of 2.4-3.5 s
/// (1.1-1.2 s): the restart target is 3 s, so a fifth stays.
pub const SLED_CACHE_SHARE: u64 = 5;

/// Opens sled in `dir`, whose `warden.lock` we hold. sled takes its own lock on `db`, and a
/// journal dropped a moment ago in this process may still hold it: sled's IO threads release
/// their handles on the file only when their last write ends. Since `warden.lock` rules out
/// another live node, that lock can only be such a predecessor's, so we wait for it first
/// ([`await_sled_lock`]): sled reports a held lock only as text.
fn open_sled(dir: &Path, cache_bytes: u64) -> Result<sled::Db, JournalError> {
    await_sled_lock(&dir.join("db"), Instant::now() + Duration::from_secs(5))?;
    sled_config(dir, cache_bytes).open().map_err(|e| match e {
        sled::Error::Corruption { .. } => JournalError::Corrupt {
            what: format!("the database {}", dir.join("db").display()),
            detail: format!(
                "sled found corrupted data while recovering it; restore the data dir \
                 from a backup (`warden check --data-dir {}` tells what is readable)",
                dir.display()
            ),
        },
        source => JournalError::Sled {
            what: format!("opening the database in {}", dir.display()),
            source,
        },
    })
}

/// Waits until no open file description holds a lock on sled's `db` file (sled takes an
/// exclusive `flock` on it), or until `deadline`, after which sled's own open reports it.
fn await_sled_lock(db: &Path, deadline: Instant) -> Result<(), JournalError> {
    loop {
        let file = match OpenOptions::new().read(true).write(true).open(db) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(format!("opening {}", db.display()), e)),
        };
        match file.try_lock() {
            Ok(()) => return Ok(()), // released when `file` drops
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(TryLockError::WouldBlock) => return Ok(()),
            Err(TryLockError::Error(e)) => {
                return Err(io_err(format!("locking {}", db.display()), e))
            }
        }
    }
}

/// sled log segment size (see `sled_config`).
const SEGMENT_SIZE: usize = 4 << 20;
/// sled's page cache bound by default (see `sled_config`).
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

/// Workflows live in the `jobs` tree too (so a workflow and its jobs are one atomic batch),
/// under their own prefix, outside the range that job scans walk.
fn workflow_key(id: uuid::Uuid) -> Vec<u8> {
    let mut key = vec![WORKFLOW_PREFIX];
    key.extend_from_slice(id.as_bytes());
    key
}

fn record_key(id: JobId) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = RECORD_PREFIX;
    key[1..].copy_from_slice(id.as_bytes());
    key
}

/// A readable name for a key of the `jobs` tree, for error messages.
fn describe_job_key(key: &[u8]) -> String {
    let id = |bytes: &[u8]| {
        <[u8; 16]>::try_from(bytes)
            .map(|b| uuid::Uuid::from_bytes(b).to_string())
            .ok()
    };
    match key {
        [RECORD_PREFIX, rest @ ..] if rest.len() == 16 => {
            if let Some(id) = id(rest) {
                return format!("jobs key of the record of job {id}");
            }
        }
        [index::UNFINISHED_PREFIX, rest @ ..] if rest.len() == 16 => {
            if let Some(id) = id(rest) {
                return format!("jobs key of the unfinished index entry of job {id}");
            }
        }
        [index::FINISHED_PREFIX, ..] if key.len() > 20 => {
            if let Some(id) = id(&key[key.len() - 16..]) {
                return format!("jobs key of the finished index entry of job {id}");
            }
        }
        _ => {}
    }
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("jobs key 0x{hex}")
}

fn encode_record(record: &JobRecord) -> Result<Vec<u8>, JournalError> {
    let mut out = vec![FORMAT_VERSION, record.status as u8];
    let body = bincode::serde::encode_to_vec(record, bincode::config::standard()).map_err(|e| {
        JournalError::Encode {
            what: format!("the record of job {}", record.id),
            detail: e.to_string(),
        }
    })?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Checks the version byte of a `jobs` value and returns what follows it.
fn strip_version<'a>(key: &[u8], value: &'a [u8]) -> Result<&'a [u8], JournalError> {
    match value.split_first() {
        Some((&FORMAT_VERSION, body)) => Ok(body),
        Some((version, _)) => Err(JournalError::Corrupt {
            what: describe_job_key(key),
            detail: bad_version(*version),
        }),
        None => Err(JournalError::Corrupt {
            what: describe_job_key(key),
            detail: "empty value".into(),
        }),
    }
}

/// Splits a stored record into its status and its bincode body, without decoding the body.
fn split_record<'a>(key: &[u8], value: &'a [u8]) -> Result<(JobStatus, &'a [u8]), JournalError> {
    let body = strip_version(key, value)?;
    let (&status, body) = body.split_first().ok_or_else(|| JournalError::Corrupt {
        what: describe_job_key(key),
        detail: "missing status byte".into(),
    })?;
    let status = JobStatus::from_byte(status).ok_or_else(|| JournalError::Corrupt {
        what: describe_job_key(key),
        detail: format!("unknown status byte {status}"),
    })?;
    Ok((status, body))
}

fn decode_record(key: &[u8], value: &[u8]) -> Result<JobRecord, JournalError> {
    let (_, body) = split_record(key, value)?;
    decode_bincode(key, body)
}

/// Decodes a whole bincode body; trailing bytes mean the value is not what we wrote.
fn decode_bincode<T: serde::de::DeserializeOwned>(
    key: &[u8],
    body: &[u8],
) -> Result<T, JournalError> {
    let (value, used) = bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map_err(|e| JournalError::Corrupt {
            what: describe_job_key(key),
            detail: format!("undecodable: {e}"),
        })?;
    if used != body.len() {
        return Err(JournalError::Corrupt {
            what: describe_job_key(key),
            detail: format!(
                "{} trailing bytes after the encoded value",
                body.len() - used
            ),
        });
    }
    Ok(value)
}

/// Splits a `records` value into its `updated_at` and its JSON text.
fn split_stored_record<'a>(key: &str, value: &'a [u8]) -> Result<(i64, &'a [u8]), JournalError> {
    let corrupt = |detail: String| JournalError::Corrupt {
        what: format!("records key {key:?}"),
        detail,
    };
    let (&version, rest) = value
        .split_first()
        .ok_or_else(|| corrupt("empty value".into()))?;
    if version != FORMAT_VERSION {
        return Err(corrupt(bad_version(version)));
    }
    let (at, json) = rest
        .split_at_checked(8)
        .ok_or_else(|| corrupt("truncated timestamp".into()))?;
    let at = <[u8; 8]>::try_from(at).map_err(|_| corrupt("truncated timestamp".into()))?;
    Ok((i64::from_be_bytes(at), json))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{EventKind, Priority};

    pub(super) fn record(status: JobStatus) -> JobRecord {
        let now = now_ms();
        JobRecord {
            id: JobId::new(),
            name: "ingest.fetch".into(),
            pipeline: "ingest".into(),
            params: r#"{"url":"https://example.com"}"#.into(),
            priority: Priority::Normal,
            status,
            attempts: 0,
            max_retries: 3,
            unique_key: None,
            created_at: now,
            started_at: None,
            completed_at: status.is_finished().then_some(now),
            next_attempt_at: None,
            error: None,
            result: None,
            parent_id: None,
            workflow_id: None,
            children: Vec::new(),
            history: Vec::new(),
        }
    }

    pub(super) fn change(record: &mut JobRecord, kind: EventKind) -> Change {
        record.history.push(JobEvent {
            at: now_ms(),
            kind,
            attempt: record.attempts,
            detail: None,
        });
        Change::new(record).unwrap()
    }

    /// Submits a job with the given status (one `Submitted` change).
    pub(super) fn submit(journal: &Journal, status: JobStatus) -> JobRecord {
        let mut rec = record(status);
        journal
            .write(&[change(&mut rec, EventKind::Submitted)])
            .unwrap();
        rec
    }

    /// Ensures that a written change reads back after `durable`, and events come oldest first.
    #[tokio::test]
    async fn write_durable_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let mut rec = record(JobStatus::Pending);
        journal
            .write(&[change(&mut rec, EventKind::Submitted)])
            .unwrap();
        rec.status = JobStatus::Running;
        rec.attempts = 1;
        journal
            .write(&[change(&mut rec, EventKind::Started)])
            .unwrap();
        rec.status = JobStatus::Succeeded;
        rec.completed_at = Some(now_ms());
        rec.result = Some("{}".into());
        journal
            .write(&[change(&mut rec, EventKind::Succeeded)])
            .unwrap();
        journal.durable().await.unwrap();

        assert_eq!(journal.get(rec.id).unwrap(), Some(rec.clone()));
        let kinds: Vec<_> = journal
            .events(rec.id)
            .unwrap()
            .iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                EventKind::Submitted,
                EventKind::Started,
                EventKind::Succeeded
            ]
        );
        assert_eq!(journal.get(JobId::new()).unwrap(), None);
        assert!(journal.events(JobId::new()).unwrap().is_empty());
        journal.sync_now().unwrap();
        assert!(journal.size_on_disk() > 0);
    }

    /// Ensures that a second open of a live data dir fails with `Locked`, and succeeds once the
    /// first journal is dropped.
    #[test]
    fn second_open_is_locked_until_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = Journal::open(dir.path()).unwrap();
        let clone = first.clone();
        let err = Journal::open(dir.path()).unwrap_err();
        assert!(matches!(err, JournalError::Locked { .. }), "{err}");
        let shown = dir.path().display().to_string();
        assert_eq!(
            err.to_string(),
            format!(
                "data dir {shown} is in use by another live node (lock file {shown}/warden.lock is held)"
            )
        );
        drop(first);
        assert!(matches!(
            Journal::open(dir.path()),
            Err(JournalError::Locked { .. })
        ));
        drop(clone);
        let again = Journal::open(dir.path()).unwrap();
        let pid = fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        drop(again);
    }

    /// Ensures that after a reopen `unfinished` returns exactly the pending, running and
    /// retrying jobs, oldest first.
    #[test]
    fn reopen_replays_unfinished_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut expected = Vec::new();
        {
            let journal = Journal::open(dir.path()).unwrap();
            for status in JobStatus::ALL {
                let rec = submit(&journal, status);
                if !status.is_finished() {
                    expected.push(rec);
                }
            }
            journal.sync_now().unwrap();
        }
        let journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.unfinished().unwrap(), expected);
    }

    /// Ensures that `list` is newest first, pages with `before`, and applies the filter.
    #[test]
    fn list_newest_first_pages_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let statuses = [
            JobStatus::Pending,
            JobStatus::Failed,
            JobStatus::Pending,
            JobStatus::Succeeded,
            JobStatus::Failed,
        ];
        let ids: Vec<JobId> = statuses.iter().map(|&s| submit(&journal, s).id).collect();
        let newest_first: Vec<JobId> = ids.iter().rev().copied().collect();
        let list = |status: Option<JobStatus>, before: Option<JobId>, limit: usize| -> Vec<JobId> {
            let filter = ListFilter {
                status,
                name: None,
                before,
                limit,
            };
            journal
                .list(&filter)
                .unwrap()
                .iter()
                .map(|r| r.id)
                .collect()
        };

        assert_eq!(list(None, None, 10), newest_first);
        let page1 = list(None, None, 2);
        assert_eq!(page1, newest_first[..2]);
        let page2 = list(None, Some(page1[1]), 2);
        assert_eq!(page2, newest_first[2..4]);
        let page3 = list(None, Some(page2[1]), 2);
        assert_eq!(page3, newest_first[4..]);
        assert!(list(None, Some(ids[0]), 2).is_empty());
        assert!(list(None, None, 0).is_empty());

        assert_eq!(list(Some(JobStatus::Failed), None, 10), [ids[4], ids[1]]);
        assert_eq!(list(Some(JobStatus::Failed), None, 1), [ids[4]]);
        assert_eq!(list(Some(JobStatus::Failed), Some(ids[4]), 10), [ids[1]]);
        assert_eq!(list(Some(JobStatus::Pending), None, 10), [ids[2], ids[0]]);
        assert_eq!(list(Some(JobStatus::Pending), Some(ids[2]), 10), [ids[0]]);
        assert!(list(Some(JobStatus::Running), None, 10).is_empty());
    }

    /// Ensures that `compact` removes old finished jobs with their events, keeps unfinished and
    /// recent ones, and stops at the first job created after the cutoff.
    #[test]
    fn compact_removes_old_finished_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let cutoff = 10_000;
        let at = |status: JobStatus, created: i64, completed: Option<i64>| {
            let mut rec = record(status);
            rec.created_at = created;
            rec.completed_at = completed;
            journal
                .write(&[change(&mut rec, EventKind::Submitted)])
                .unwrap();
            journal
                .write(&[change(&mut rec, EventKind::Succeeded)])
                .unwrap();
            rec
        };
        let old_done = at(JobStatus::Succeeded, 1_000, Some(2_000));
        let old_pending = at(JobStatus::Pending, 1_000, None);
        let recently_done = at(JobStatus::Failed, 1_000, Some(cutoff + 1));
        let young = at(JobStatus::Succeeded, cutoff, Some(cutoff + 5));
        // Old, but after the first young job: the scan never gets here.
        let behind_young = at(JobStatus::Cancelled, 1_000, Some(2_000));

        assert_eq!(journal.compact(cutoff).unwrap(), 1);
        assert_eq!(journal.get(old_done.id).unwrap(), None);
        assert!(journal.events(old_done.id).unwrap().is_empty());
        for kept in [&old_pending, &recently_done, &young, &behind_young] {
            assert_eq!(journal.get(kept.id).unwrap().as_ref(), Some(kept));
            assert_eq!(journal.events(kept.id).unwrap().len(), 2);
        }
        assert_eq!(journal.compact(cutoff).unwrap(), 0);
    }

    /// Ensures that `put_record` reports new and changed values but not identical re-runs, and
    /// that `records` honours prefix, `after` and `limit`.
    #[test]
    fn put_record_dedups_and_records_pages() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let v1 = serde_json::json!({"title": "a", "n": 1});
        assert!(journal.put_record("feed/1", &v1).unwrap());
        let stored_at = journal.records("feed/1", None, 1).unwrap()[0].updated_at;
        assert!(!journal.put_record("feed/1", &v1).unwrap());
        assert_eq!(
            journal.records("feed/1", None, 1).unwrap()[0].updated_at,
            stored_at
        );
        let v2 = serde_json::json!({"title": "b", "n": 1});
        assert!(journal.put_record("feed/1", &v2).unwrap());

        for key in ["feed/2", "feed/3", "other/1", "fee"] {
            assert!(journal.put_record(key, &serde_json::json!(key)).unwrap());
        }
        let keys = |after: Option<&str>, limit: usize| -> Vec<String> {
            journal
                .records("feed/", after, limit)
                .unwrap()
                .into_iter()
                .map(|r| r.key)
                .collect()
        };
        assert_eq!(keys(None, 10), ["feed/1", "feed/2", "feed/3"]);
        assert_eq!(keys(None, 2), ["feed/1", "feed/2"]);
        assert_eq!(keys(Some("feed/2"), 10), ["feed/3"]);
        assert_eq!(keys(Some("a"), 1), ["feed/1"]);
        assert!(keys(Some("feed/3"), 10).is_empty());
        assert_eq!(journal.records("feed/1", None, 1).unwrap()[0].value, v2);
    }

    /// Ensures that meta values round-trip and a missing key reads as `None`.
    #[test]
    fn meta_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.meta_get("limiter").unwrap(), None);
        journal.meta_put("limiter", b"\x00\x01window").unwrap();
        assert_eq!(
            journal.meta_get("limiter").unwrap().as_deref(),
            Some(&b"\x00\x01window"[..])
        );
        journal.meta_put("empty", b"").unwrap();
        assert_eq!(journal.meta_get("empty").unwrap(), Some(Vec::new()));
    }

    /// Ensures that a value with a wrong version byte gives a `Corrupt` error naming the key,
    /// in every reader, instead of a panic.
    #[test]
    fn wrong_version_is_corrupt_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let rec = submit(&journal, JobStatus::Pending);
        journal
            .inner
            .jobs
            .insert(record_key(rec.id), vec![9, 0, 1, 2])
            .unwrap();

        let err = journal.get(rec.id).unwrap_err();
        assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&rec.id.to_string()), "{msg}");
        assert!(msg.contains("unknown format version 9"), "{msg}");
        assert!(matches!(
            journal.unfinished(),
            Err(JournalError::Corrupt { .. })
        ));
        let all = ListFilter {
            limit: 10,
            ..ListFilter::default()
        };
        assert!(matches!(
            journal.list(&all),
            Err(JournalError::Corrupt { .. })
        ));

        journal
            .inner
            .jobs
            .insert(record_key(rec.id), vec![FORMAT_VERSION, 0, 0xff])
            .unwrap();
        assert!(matches!(
            journal.get(rec.id),
            Err(JournalError::Corrupt { .. })
        ));

        journal.inner.records.insert("feed/x", vec![7, 0]).unwrap();
        let err = journal.records("feed/", None, 10).unwrap_err();
        assert!(err.to_string().contains("feed/x"), "{err}");
        assert!(matches!(
            journal.put_record("feed/x", &serde_json::json!(1)),
            Err(JournalError::Corrupt { .. })
        ));

        journal.inner.meta.insert("state", vec![3]).unwrap();
        let err = journal.meta_get("state").unwrap_err();
        assert!(err.to_string().contains("state"), "{err}");
    }

    /// Ensures that many concurrent `durable` callers all resolve and share commits: with the
    /// commit thread stalled while they queue up, 200 callers need at most 2 commits.
    #[test]
    fn concurrent_durable_callers_share_commits() {
        const CALLERS: usize = 200;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let before = journal.commit_count();

        let gate = journal.inner.committer.gate.lock().unwrap();
        let tasks: Vec<_> = (0..CALLERS)
            .map(|_| {
                let journal = journal.clone();
                rt.spawn(async move {
                    let rec = submit(&journal, JobStatus::Pending);
                    journal.durable().await.map(|()| rec.id)
                })
            })
            .collect();
        while journal.inner.queued.load(Ordering::SeqCst) < CALLERS {
            thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(gate);

        let ids = rt.block_on(async {
            let mut ids = Vec::new();
            for task in tasks {
                ids.push(task.await.unwrap().unwrap());
            }
            ids
        });
        for id in ids {
            assert!(journal.get(id).unwrap().is_some());
        }
        let commits = journal.commit_count() - before;
        assert!(
            (1..=2).contains(&commits),
            "{commits} commits for {CALLERS} callers"
        );
        assert!((commits as usize) < CALLERS);
    }

    /// Ensures that values large enough to become sled blob files are committed and read back.
    #[tokio::test]
    async fn large_values_are_committed() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let mut rec = record(JobStatus::Succeeded);
        // over a quarter of a segment, sled's blob threshold
        rec.result = Some("x".repeat(SEGMENT_SIZE / 4 + 1024));
        journal
            .write(&[change(&mut rec, EventKind::Succeeded)])
            .unwrap();
        journal.durable().await.unwrap();
        let synced = journal.inner.committer.synced_blobs.lock().unwrap().len();
        assert!(synced > 0, "the blob file was not fsync'd");
        journal.durable().await.unwrap();
        assert_eq!(journal.get(rec.id).unwrap(), Some(rec));
    }

    /// Ensures that the storage ceiling measurement runs and reports a positive rate.
    #[test]
    fn measure_ceiling_reports_a_rate() {
        let dir = tempfile::tempdir().unwrap();
        let rate = measure_ceiling(dir.path(), 1_100).unwrap();
        assert!(rate > 0.0, "{rate}");
    }
}
