//! The sink outbox: which records still have to be shipped to an external store (the PostgreSQL
//! sink, `crate::sink`). It lives in the journal's sled database beside the records, so that a
//! record and its outbox entry are stored in ONE sled transaction: a record the job stored is
//! either shipped eventually or was never stored at all, whatever crashes.
//!
//! - The `outbox` tree maps a sequence number (sled's `generate_id`, monotonic across restarts,
//!   8 bytes big-endian so the tree iterates in order) to the record's key. The value is not
//!   copied: the sink reads the record's current value when it ships, so a key changed five
//!   times while PostgreSQL was down is shipped with its latest value (and once per entry,
//!   which the idempotent upserts absorb).
//! - Entries are written only while the outbox is enabled ([`Journal::enable_outbox`], called
//!   by the node when `[sinks.postgres]` is configured), so a node without a sink writes nothing
//!   more than before. Records stored before the sink was turned on are enqueued by
//!   [`Journal::outbox_backfill`].
//! - The sink takes the oldest entries ([`Journal::outbox_peek`]), ships them, then removes
//!   exactly those entries and advances the cursor (`sink/postgres/cursor` in `meta`: the
//!   highest sequence shipped, and the counts shown by `warden sinks`) in one sled batch
//!   ([`Journal::outbox_ack`]). Removing by exact key rather than "everything below the cursor"
//!   matters: two concurrent `put_record`s may become visible out of sequence order, and an
//!   entry that appears below the cursor must still be shipped.
//! - The ack is not fsync'd on its own: after a crash an entry may be shipped again, which the
//!   sink's upserts turn into a no-op. The record and its entry are as durable as the job that
//!   stored them (they are covered by the commit that acknowledges the job's success).
//!
//! The backlog is counted in memory (counted once at open, O(backlog)), so `warden sinks` and
//! the `warden_sink_backlog` gauge cost nothing per call.

use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::{sled_err, split_stored_record, Journal, JournalError, StoredRecord, FORMAT_VERSION};
use crate::job::now_ms;

/// The sled tree holding the outbox entries.
pub(super) const TREE: &str = "outbox";

/// The meta key of the PostgreSQL sink's cursor.
pub const CURSOR_KEY: &str = "sink/postgres/cursor";

/// Entries written per sled batch by a backfill.
const BACKFILL_CHUNK: usize = 1000;

/// The outbox's tree and in-memory state, part of the journal's shared state.
pub(super) struct Outbox {
    tree: sled::Tree,
    enabled: AtomicBool,
    /// Entries in the tree: counted at open, then kept up to date by every write and ack.
    len: AtomicU64,
}

impl Outbox {
    /// Wraps the opened tree, counting its entries (a backlog left by the last run).
    pub(super) fn new(tree: sled::Tree) -> Outbox {
        let len = tree.len() as u64;
        Outbox {
            tree,
            enabled: AtomicBool::new(false),
            len: AtomicU64::new(len),
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }
}

/// One outbox entry ready to ship: its sequence and the record as stored now.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxItem {
    /// The entry's sequence number.
    pub seq: u64,
    /// The record; `None` when the key no longer holds one (nothing to ship).
    pub record: Option<StoredRecord>,
}

/// The sink's cursor: the highest sequence shipped so far and how many entries were shipped in
/// all (across restarts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The highest sequence acknowledged.
    pub seq: u64,
    /// Entries acknowledged since the data dir was created.
    pub shipped: u64,
}

impl Cursor {
    fn encode(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..].copy_from_slice(&self.shipped.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Cursor> {
        let seq = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let shipped = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
        Some(Cursor { seq, shipped })
    }
}

impl Journal {
    /// From now on every changed record also gets an outbox entry (the node calls this when a
    /// sink is configured, before anything runs).
    pub fn enable_outbox(&self) {
        self.inner.outbox.enabled.store(true, Ordering::Release);
    }

    /// Outbox entries waiting to be shipped.
    pub fn outbox_backlog(&self) -> u64 {
        self.inner.outbox.len.load(Ordering::Relaxed)
    }

    /// [`Journal::put_record`] with the outbox on: the record and its entry in one sled
    /// transaction, so neither exists without the other.
    pub(super) fn put_record_outboxed(&self, key: &str, json: &[u8]) -> Result<bool, JournalError> {
        let sled_error = |source| JournalError::Sled {
            what: format!("storing record {key:?} and its outbox entry"),
            source,
        };
        let seq = self.inner.committer.db.generate_id().map_err(sled_error)?;
        let mut encoded = Vec::with_capacity(9 + json.len());
        encoded.push(FORMAT_VERSION);
        encoded.extend_from_slice(&now_ms().to_be_bytes());
        encoded.extend_from_slice(json);
        let (records, outbox) = (&self.inner.records, &self.inner.outbox.tree);
        let stored = (records, outbox).transaction(|(records, outbox)| {
            if let Some(current) = records.get(key)? {
                let (_, current_json) = split_stored_record(key, &current)
                    .map_err(ConflictableTransactionError::Abort)?;
                if current_json == json {
                    return Ok(false);
                }
            }
            records.insert(key.as_bytes(), encoded.as_slice())?;
            outbox.insert(&seq.to_be_bytes()[..], key.as_bytes())?;
            Ok(true)
        });
        match stored {
            Ok(changed) => {
                if changed {
                    self.inner.outbox.len.fetch_add(1, Ordering::Relaxed);
                }
                Ok(changed)
            }
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(source)) => Err(sled_error(source)),
        }
    }

    /// The oldest `limit` outbox entries, each with its record's current value. A key that
    /// appears in several entries is read once: the later entries carry `None` (the first one
    /// ships the latest value already).
    pub fn outbox_peek(&self, limit: usize) -> Result<Vec<OutboxItem>, JournalError> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(limit.min(4096));
        for item in self.inner.outbox.tree.iter().take(limit) {
            let (seq, key) = item.map_err(sled_err("scanning the outbox"))?;
            let seq = decode_seq(&seq)?;
            let key = String::from_utf8(key.to_vec()).map_err(|_| JournalError::Corrupt {
                what: format!("outbox entry {seq}"),
                detail: "the record key is not UTF-8".into(),
            })?;
            let record = if seen.insert(key.clone()) {
                self.record(&key)?
            } else {
                None
            };
            out.push(OutboxItem { seq, record });
        }
        Ok(out)
    }

    /// Removes the entries `seqs` (shipped) and advances the cursor, in one sled batch.
    pub fn outbox_ack(&self, seqs: &[u64]) -> Result<Cursor, JournalError> {
        let mut cursor = self.outbox_cursor()?;
        let mut batch = sled::Batch::default();
        for seq in seqs {
            batch.remove(seq.to_be_bytes().to_vec());
            cursor.seq = cursor.seq.max(*seq);
        }
        cursor.shipped += seqs.len() as u64;
        let tree = &self.inner.outbox.tree;
        // Count what is really removed, so the in-memory backlog cannot drift from the tree.
        let present = seqs
            .iter()
            .filter(|seq| tree.contains_key(seq.to_be_bytes()).unwrap_or(false))
            .count() as u64;
        tree.apply_batch(batch)
            .map_err(sled_err("removing shipped outbox entries"))?;
        let _ = self
            .inner
            .outbox
            .len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(present))
            });
        self.meta_put(CURSOR_KEY, &cursor.encode())?;
        Ok(cursor)
    }

    /// The sink's cursor (zero before anything was shipped).
    pub fn outbox_cursor(&self) -> Result<Cursor, JournalError> {
        Ok(self
            .meta_get(CURSOR_KEY)?
            .and_then(|bytes| Cursor::decode(&bytes))
            .unwrap_or_default())
    }

    /// Enqueues every stored record whose key starts with `prefix` (a backfill, for a sink
    /// turned on after records were stored), in chunks of sled batches; returns how many.
    /// Records stored meanwhile get entries of their own as usual.
    pub fn outbox_backfill(&self, prefix: &str) -> Result<u64, JournalError> {
        let range = (
            Bound::Included(prefix.as_bytes().to_vec()),
            Bound::<Vec<u8>>::Unbounded,
        );
        let mut batch = sled::Batch::default();
        let (mut in_batch, mut total) = (0usize, 0u64);
        for item in self.inner.records.range(range) {
            let (key, _) = item.map_err(sled_err("scanning records for a backfill"))?;
            if !key.starts_with(prefix.as_bytes()) {
                break;
            }
            let seq = self
                .inner
                .committer
                .db
                .generate_id()
                .map_err(sled_err("numbering a backfilled outbox entry"))?;
            batch.insert(seq.to_be_bytes().to_vec(), key.as_ref());
            in_batch += 1;
            if in_batch == BACKFILL_CHUNK {
                self.apply_backfill(std::mem::take(&mut batch), in_batch)?;
                total += in_batch as u64;
                in_batch = 0;
            }
        }
        self.apply_backfill(batch, in_batch)?;
        Ok(total + in_batch as u64)
    }

    fn apply_backfill(&self, batch: sled::Batch, entries: usize) -> Result<(), JournalError> {
        self.inner
            .outbox
            .tree
            .apply_batch(batch)
            .map_err(sled_err("writing backfilled outbox entries"))?;
        self.inner
            .outbox
            .len
            .fetch_add(entries as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The record stored under `key`, if any.
    fn record(&self, key: &str) -> Result<Option<StoredRecord>, JournalError> {
        let Some(value) = self
            .inner
            .records
            .get(key)
            .map_err(sled_err("reading a record for the outbox"))?
        else {
            return Ok(None);
        };
        let (updated_at, json) = split_stored_record(key, &value)?;
        let value = serde_json::from_slice(json).map_err(|e| JournalError::Corrupt {
            what: format!("records key {key:?}"),
            detail: format!("undecodable JSON: {e}"),
        })?;
        Ok(Some(StoredRecord {
            key: key.to_string(),
            value,
            updated_at,
        }))
    }
}

fn decode_seq(bytes: &[u8]) -> Result<u64, JournalError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| JournalError::Corrupt {
            what: "outbox tree".into(),
            detail: format!("a key of {} bytes, expected 8", bytes.len()),
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Ensures that with the outbox on, a changed record gets one entry and an unchanged one
    /// none; that peek returns the latest value once per key; and that ack removes exactly the
    /// acknowledged entries and advances the cursor.
    #[test]
    fn entries_follow_changes_and_acks() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        assert!(journal.put_record("before/1", &json!(1)).unwrap());
        journal.enable_outbox();
        assert_eq!(
            journal.outbox_backlog(),
            0,
            "records before the sink are not enqueued"
        );
        assert!(journal.put_record("a", &json!(1)).unwrap());
        assert!(!journal.put_record("a", &json!(1)).unwrap());
        assert!(journal.put_record("a", &json!(2)).unwrap());
        assert!(journal.put_record("b", &json!(3)).unwrap());
        assert_eq!(journal.outbox_backlog(), 3);

        let items = journal.outbox_peek(10).unwrap();
        let shown: Vec<_> = items
            .iter()
            .map(|i| i.record.as_ref().map(|r| (r.key.clone(), r.value.clone())))
            .collect();
        assert_eq!(
            shown,
            [
                Some(("a".into(), json!(2))),
                None,
                Some(("b".into(), json!(3)))
            ]
        );
        let first: Vec<u64> = items[..2].iter().map(|i| i.seq).collect();
        let cursor = journal.outbox_ack(&first).unwrap();
        assert_eq!((cursor.seq, cursor.shipped), (items[1].seq, 2));
        assert_eq!(journal.outbox_backlog(), 1);
        assert_eq!(journal.outbox_peek(10).unwrap()[0].seq, items[2].seq);
        assert_eq!(journal.outbox_cursor().unwrap(), cursor);
    }

    /// Ensures that a backfill enqueues every record under its prefix, and that the backlog
    /// is counted again when the journal is reopened.
    #[test]
    fn backfill_enqueues_stored_records_and_backlog_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let journal = Journal::open(dir.path()).unwrap();
            for i in 0..2500 {
                journal.put_record(&format!("x/{i:05}"), &json!(i)).unwrap();
            }
            journal.put_record("y/1", &json!(1)).unwrap();
            assert_eq!(journal.outbox_backfill("x/").unwrap(), 2500);
            assert_eq!(journal.outbox_backlog(), 2500);
            journal.sync_now().unwrap();
        }
        let journal = Journal::open(dir.path()).unwrap();
        assert_eq!(journal.outbox_backlog(), 2500);
        let items = journal.outbox_peek(3).unwrap();
        let keys: Vec<_> = items
            .iter()
            .map(|i| i.record.as_ref().unwrap().key.as_str())
            .collect();
        assert_eq!(keys, ["x/00000", "x/00001", "x/00002"]);
    }
}
