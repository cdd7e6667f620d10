//! Secondary indexes of the `jobs` tree, so that replay and filtered listings read O(unfinished)
//! or O(page) entries instead of every record ever written.
//!
//! Two kinds of keys beside the records, always written in the same [`sled::Batch`] as the
//! record they describe (so a crash never leaves an index out of step with its record):
//!
//! - `b'u' ++ id(16)` → the job's head ([`super::head`]: name, pipeline, priority, status,
//!   attempts, due time, links), while the job is unfinished (pending, running, retrying).
//!   Replay reads only these; a listing of unfinished jobs filters on the name at the start of
//!   the value and reads the record's status byte, decoding only the matches.
//! - `b'f' ++ status ++ len(u16 BE) ++ name ++ id(16)` → empty, while the job is finished in that
//!   status. A listing by status and/or name walks one range per (status, name) and merges them
//!   newest first; a glob is expanded to the names present by skipping from name to name.
//!
//! A job costs one `u` insert at submit, a `u` rewrite (same key) on each move between
//! unfinished states, and a `u` removal plus an `f` insert when it finishes: cheaper than a key
//! per status (a removal and an insert on every transition). Job names never change, so the
//! name in a key is the name in the record.

use std::collections::HashMap;
use std::ops::Bound;

use globset::GlobMatcher;

use super::{sled_err, split_record, JournalError, RECORD_PREFIX};
use crate::job::{EventKind, JobId, JobStatus};

/// Prefix of the unfinished index.
pub(super) const UNFINISHED_PREFIX: u8 = b'u';
/// Prefix of the finished index.
pub(super) const FINISHED_PREFIX: u8 = b'f';
/// The layout version of the indexes, kept in the meta tree under [`INDEX_VERSION_KEY`]; a data
/// dir without it (written before indexes existed) or with an older one (1: `u` values held only
/// the name) gets its indexes rebuilt on open.
pub(super) const INDEX_VERSION: u8 = 2;
/// Meta key holding [`INDEX_VERSION`].
pub(super) const INDEX_VERSION_KEY: &str = "index_version";
/// Index entries per batch while rebuilding.
const REBUILD_BATCH: usize = 10_000;

/// The unfinished index key of job `id`.
pub(super) fn unfinished_key(id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(17);
    key.push(UNFINISHED_PREFIX);
    key.extend_from_slice(id);
    key
}

/// The prefix shared by every finished key of `status` and `name`.
fn finished_prefix(status: JobStatus, name: &str) -> Vec<u8> {
    // Names longer than u16::MAX are cut in the key only; a name that long is not configurable.
    let name = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
    let mut key = Vec::with_capacity(4 + name.len() + 16);
    key.push(FINISHED_PREFIX);
    key.push(status as u8);
    key.extend_from_slice(&(name.len() as u16).to_be_bytes());
    key.extend_from_slice(name);
    key
}

/// The finished index key of job `id`, finished in `status`.
pub(super) fn finished_key(status: JobStatus, name: &str, id: &[u8]) -> Vec<u8> {
    let mut key = finished_prefix(status, name);
    key.extend_from_slice(id);
    key
}

/// What the journal holds of a job before a change, as the change's own event tells it: the
/// writer then needs no read of the stored record (a read per write cost a sled lookup and a
/// copy of the old record on every transition of every job).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Before {
    /// A new job (its last event is `Submitted`): no index key yet.
    Nothing,
    /// Unfinished: every event but `Submitted` and `Retried` happens to an unfinished job
    /// (finished jobs are neither cancelled, started nor requeued).
    Unfinished,
    /// A failed or cancelled job an operator sent back (`Retried`): one of the finished keys.
    Finished,
    /// A record without history (written by tests and tools): read the stored status.
    Unknown,
}

impl Before {
    /// What the journal held before a record whose latest event is `last`.
    pub(super) fn of(last: Option<EventKind>) -> Before {
        match last {
            None => Before::Unknown,
            Some(EventKind::Submitted) => Before::Nothing,
            Some(EventKind::Retried) => Before::Finished,
            Some(_) => Before::Unfinished,
        }
    }

    /// What the journal held, read from the status stored (`None`: no record yet).
    pub(super) fn stored(status: Option<JobStatus>) -> Before {
        match status {
            None => Before::Nothing,
            Some(s) if s.is_finished() => Before::Finished,
            Some(_) => Before::Unfinished,
        }
    }
}

/// What the index keys of one job change derive from.
pub(super) struct Entry<'a> {
    /// The job id's 16 bytes.
    pub(super) id: &'a [u8],
    /// Its name.
    pub(super) name: &'a str,
    /// Its status after the change.
    pub(super) status: JobStatus,
    /// Its `u` value after the change ([`super::head`]; empty when it is finished).
    pub(super) head: &'a [u8],
}

/// Adds to `batch` the index changes of a job whose journal entry was `before` (`Unknown`
/// resolved by [`Before::stored`] first) and is now the entry's. An unfinished job's `u` value
/// is rewritten on every change (its head moved). Every step is idempotent, so writing the same change twice (a batch retried after a
/// failed write) leaves the same keys.
pub(super) fn apply(batch: &mut sled::Batch, entry: &Entry<'_>, before: Before) {
    let (id, name) = (entry.id, entry.name);
    match before {
        Before::Nothing | Before::Unknown => {}
        Before::Unfinished if entry.status.is_finished() => batch.remove(unfinished_key(id)),
        Before::Unfinished => {}
        Before::Finished => {
            for status in JobStatus::ALL.into_iter().filter(|s| s.is_finished()) {
                batch.remove(finished_key(status, name, id));
            }
        }
    }
    add(batch, entry);
}

fn add(batch: &mut sled::Batch, entry: &Entry<'_>) {
    if entry.status.is_finished() {
        batch.insert(finished_key(entry.status, entry.name, entry.id), &[][..]);
    } else {
        batch.insert(unfinished_key(entry.id), entry.head);
    }
}

/// The index keys a record of `status` and `name` must have: used by rebuild and `check`.
pub(super) fn expected_key(status: JobStatus, name: &str, id: &[u8]) -> Vec<u8> {
    if status.is_finished() {
        finished_key(status, name, id)
    } else {
        unfinished_key(id)
    }
}

/// Builds the indexes of a journal written before they existed (or whose build was
/// interrupted): drops any index key, derives them from every record, then records
/// [`INDEX_VERSION`]. O(history), once.
pub(super) fn rebuild(jobs: &sled::Tree) -> Result<usize, JournalError> {
    for prefix in [UNFINISHED_PREFIX, FINISHED_PREFIX] {
        let mut batch = sled::Batch::default();
        for item in jobs.scan_prefix([prefix]).keys() {
            batch.remove(item.map_err(sled_err("dropping stale index keys"))?);
        }
        jobs.apply_batch(batch)
            .map_err(sled_err("dropping stale index keys"))?;
    }
    let mut batch = sled::Batch::default();
    let mut pending = 0;
    let mut total = 0;
    for item in jobs.scan_prefix([RECORD_PREFIX]) {
        let (key, value) = item.map_err(sled_err("scanning records to build indexes"))?;
        let (status, _) = split_record(&key, &value)?;
        let record = super::decode_record(&key, &value)?;
        let head = if status.is_finished() {
            Vec::new()
        } else {
            super::head::encode(&record)?
        };
        let entry = Entry {
            id: &key[1..],
            name: &record.name,
            status,
            head: &head,
        };
        add(&mut batch, &entry);
        pending += 1;
        total += 1;
        if pending == REBUILD_BATCH {
            jobs.apply_batch(std::mem::take(&mut batch))
                .map_err(sled_err("writing rebuilt indexes"))?;
            pending = 0;
        }
    }
    jobs.apply_batch(batch)
        .map_err(sled_err("writing rebuilt indexes"))?;
    Ok(total)
}

/// What a listing wants; see [`super::Journal::list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only jobs in this status.
    pub status: Option<JobStatus>,
    /// Only jobs whose name matches (an exact name is a glob without wildcards).
    pub name: Option<GlobMatcher>,
    /// Only jobs strictly older than this one (paging: the last id of the previous page).
    pub before: Option<JobId>,
    /// At most this many.
    pub limit: usize,
}

impl ListFilter {
    fn name_matches(&self, name: &[u8]) -> bool {
        self.name
            .as_ref()
            .is_none_or(|m| std::str::from_utf8(name).is_ok_and(|name| m.is_match(name)))
    }
}

/// A source of candidate ids, newest first.
type Ids<'a> = Box<dyn Iterator<Item = Result<[u8; 16], JournalError>> + 'a>;

/// The candidate ids of a filtered listing, newest first: the merge of one range per matching
/// (finished status, name) and, when unfinished jobs can match, the unfinished index filtered
/// by name. A candidate from the unfinished index must still have its status checked.
pub(super) fn candidates<'a>(
    jobs: &'a sled::Tree,
    filter: &'a ListFilter,
) -> Result<Merge<'a>, JournalError> {
    let upper = filter.before.map(|id| *id.as_bytes());
    let mut sources: Vec<Ids<'a>> = Vec::new();
    let finished: Vec<JobStatus> = match filter.status {
        Some(s) if s.is_finished() => vec![s],
        Some(_) => Vec::new(),
        None => JobStatus::ALL
            .into_iter()
            .filter(|s| s.is_finished())
            .collect(),
    };
    for status in finished {
        for name in names(jobs, status)? {
            if filter.name_matches(name.as_bytes()) {
                sources.push(id_range(jobs, finished_prefix(status, &name), upper));
            }
        }
    }
    if filter.status.is_none_or(|s| !s.is_finished()) {
        let start = Bound::Included(vec![UNFINISHED_PREFIX]);
        let end = match upper {
            Some(id) => Bound::Excluded(unfinished_key(&id)),
            None => Bound::Excluded(vec![UNFINISHED_PREFIX + 1]),
        };
        let walk = jobs
            .range((start, end))
            .rev()
            .filter_map(move |item| match item {
                Ok((key, head)) => match super::head::name_of(&head) {
                    Some(name) => filter.name_matches(name).then(|| id_of(&key)),
                    None => Some(Err(JournalError::Corrupt {
                        what: super::describe_job_key(&key),
                        detail: "malformed unfinished index entry".into(),
                    })),
                },
                Err(e) => Some(Err(sled_err("walking the unfinished index")(e))),
            });
        sources.push(Box::new(walk));
    }
    Ok(Merge::new(sources))
}

/// Ids under `prefix` (each key is `prefix ++ id`), below `upper` when given, newest first.
fn id_range<'a>(jobs: &'a sled::Tree, prefix: Vec<u8>, upper: Option<[u8; 16]>) -> Ids<'a> {
    let end = match upper {
        Some(id) => {
            let mut end = prefix.clone();
            end.extend_from_slice(&id);
            Bound::Excluded(end)
        }
        None => {
            let mut end = prefix.clone();
            end.extend_from_slice(&[0xff; 17]);
            Bound::Excluded(end)
        }
    };
    let walk = jobs
        .range((Bound::Included(prefix), end))
        .rev()
        .map(|item| {
            let (key, _) = item.map_err(sled_err("walking the finished index"))?;
            id_of(&key)
        });
    Box::new(walk)
}

/// The id that ends an index key.
fn id_of(key: &[u8]) -> Result<[u8; 16], JournalError> {
    key.len()
        .checked_sub(16)
        .and_then(|at| <[u8; 16]>::try_from(&key[at..]).ok())
        .ok_or_else(|| JournalError::Corrupt {
            what: super::describe_job_key(key),
            detail: "index key too short to end in a job id".into(),
        })
}

/// The distinct names with a finished key in `status`, found by skipping from one name to the
/// next: O(names), not O(jobs).
fn names(jobs: &sled::Tree, status: JobStatus) -> Result<Vec<String>, JournalError> {
    let end = Bound::Excluded(vec![FINISHED_PREFIX, status as u8 + 1]);
    let mut start = Bound::Included(vec![FINISHED_PREFIX, status as u8]);
    let mut names = Vec::new();
    loop {
        let next = jobs
            .range((start, end.clone()))
            .keys()
            .next()
            .transpose()
            .map_err(sled_err("listing names in the finished index"))?;
        let Some(key) = next else { return Ok(names) };
        let corrupt = || JournalError::Corrupt {
            what: super::describe_job_key(&key),
            detail: "malformed finished index key".into(),
        };
        let len = key
            .get(2..4)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
            .ok_or_else(corrupt)?;
        let name = key.get(4..4 + len).ok_or_else(corrupt)?;
        names.push(String::from_utf8(name.to_vec()).map_err(|_| corrupt())?);
        let mut after = key[..4 + len].to_vec();
        after.extend_from_slice(&[0xff; 17]);
        start = Bound::Excluded(after);
    }
}

/// A k-way merge of id sources that are each newest first (k is small: statuses × names).
pub(super) struct Merge<'a> {
    /// The next id of each source, once read.
    heads: Vec<Option<[u8; 16]>>,
    /// Sources that have ended, so they are not polled again.
    done: Vec<bool>,
    sources: Vec<Ids<'a>>,
}

impl<'a> Merge<'a> {
    fn new(sources: Vec<Ids<'a>>) -> Merge<'a> {
        Merge {
            heads: vec![None; sources.len()],
            done: vec![false; sources.len()],
            sources,
        }
    }

    /// Fills every empty head; a source that has ended keeps `None`.
    fn refill(&mut self) -> Result<(), JournalError> {
        for (i, source) in self.sources.iter_mut().enumerate() {
            if self.heads[i].is_none() && !self.done[i] {
                self.heads[i] = source.next().transpose()?;
                self.done[i] = self.heads[i].is_none();
            }
        }
        Ok(())
    }
}

impl Iterator for Merge<'_> {
    type Item = Result<[u8; 16], JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Err(e) = self.refill() {
            return Some(Err(e));
        }
        let best = self
            .heads
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.map(|id| (id, i)))
            .max()?;
        self.heads[best.1] = None;
        Some(Ok(best.0))
    }
}

/// The status each key of a batch will have once the batch is applied, for changes that touch
/// one job twice in one batch.
pub(super) type Pending<'a> = HashMap<&'a [u8], JobStatus>;
