//! What the sink ships from, whichever store the node has: the journal's outbox on a single
//! node (`store/journal/outbox.rs`), the cluster's `sink_outbox` table in cluster mode
//! (`cluster/sink_outbox.rs`). Both write an outbox entry in the same transaction as the record
//! it names and hand out the record's current value at peek, so the actor (`sink.rs`) does not
//! know which one it talks to, except that the cluster's is shared: there only the node holding
//! the shipping lock ships ([`Outbox::lock_key`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::cluster::Jobs;
use crate::postgres::Failure;
use crate::store::journal::{Journal, OutboxCursor as Cursor, OutboxItem};

/// The outbox of the node's store.
#[derive(Clone)]
pub enum Outbox {
    /// A single node: the journal's outbox tree.
    Journal(Journal),
    /// Cluster mode: the cluster's table, shipped by one node at a time.
    Cluster(ClusterOutbox),
}

/// The cluster's outbox as this node sees it.
#[derive(Clone)]
pub struct ClusterOutbox {
    jobs: Jobs,
    /// This node's journal: what the node caches for itself (SEC's ticker map).
    journal: Journal,
    /// The advisory lock, in the sink's database, that the shipping node holds.
    lock_key: i64,
    /// What `warden sinks` shows without a query: the backlog as last counted, and what this
    /// node shipped since it started.
    backlog: Arc<AtomicU64>,
    cursor: Arc<std::sync::Mutex<Cursor>>,
}

impl Outbox {
    /// The cluster's outbox, shipped into `sink_schema` (part of the lock's name, with the
    /// cluster's schema: one shipper per pair, whatever else shares the sink's database).
    pub fn cluster(jobs: Jobs, journal: Journal, cluster_schema: &str, sink_schema: &str) -> Self {
        let lock_key =
            crate::postgres::advisory_key(&format!("warden.sink.{cluster_schema}.{sink_schema}"));
        Outbox::Cluster(ClusterOutbox {
            jobs,
            journal,
            lock_key,
            backlog: Arc::default(),
            cursor: Arc::default(),
        })
    }

    /// Turns the outbox on: from now on every changed record gets an entry.
    pub fn enable(&self) {
        match self {
            Outbox::Journal(j) => j.enable_outbox(),
            Outbox::Cluster(c) => c.jobs.enable_outbox(),
        }
    }

    /// The lock a node must hold, on the connection it writes through, to ship; None when the
    /// outbox is this node's alone.
    pub fn lock_key(&self) -> Option<i64> {
        match self {
            Outbox::Journal(_) => None,
            Outbox::Cluster(c) => Some(c.lock_key),
        }
    }

    /// The oldest `limit` entries with their records' current values.
    pub async fn peek(&self, limit: usize) -> Result<Vec<OutboxItem>, Failure> {
        match self {
            Outbox::Journal(j) => Ok(j.outbox_peek(limit)?),
            Outbox::Cluster(c) => c.jobs.outbox_peek(limit).await,
        }
    }

    /// Removes the shipped entries `seqs`.
    pub async fn ack(&self, seqs: &[u64]) -> Result<(), Failure> {
        match self {
            Outbox::Journal(j) => {
                j.outbox_ack(seqs)?;
            }
            Outbox::Cluster(c) => {
                c.jobs.outbox_ack(seqs).await?;
                let mut cursor = c.cursor.lock().unwrap_or_else(|e| e.into_inner());
                cursor.seq = seqs.iter().copied().fold(cursor.seq, u64::max);
                cursor.shipped += seqs.len() as u64;
            }
        }
        Ok(())
    }

    /// Entries waiting, as last known (the journal counts in memory; the cluster's count is the
    /// one [`Outbox::count`] took last).
    pub fn backlog(&self) -> u64 {
        match self {
            Outbox::Journal(j) => j.outbox_backlog(),
            Outbox::Cluster(c) => c.backlog.load(Ordering::Relaxed),
        }
    }

    /// Counts the entries waiting now (a query in cluster mode; the last count when it fails,
    /// since a count is only shown, never decided on).
    pub async fn count(&self) -> u64 {
        if let Outbox::Cluster(c) = self {
            if let Ok(n) = c.jobs.outbox_backlog().await {
                c.backlog.store(n, Ordering::Relaxed);
            }
        }
        self.backlog()
    }

    /// The highest entry shipped and how many were: the journal's, across restarts; in
    /// cluster mode this node's since it started.
    pub fn cursor(&self) -> Cursor {
        match self {
            Outbox::Journal(j) => j.outbox_cursor().unwrap_or_default(),
            Outbox::Cluster(c) => *c.cursor.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Parks `key`, refused by the sink's database with `why`, so it cannot block the others.
    pub async fn park(&self, key: &str, why: &str) -> Result<(), Failure> {
        match self {
            Outbox::Journal(j) => {
                let parked = serde_json::json!({"error": why, "at": crate::job::now_ms()});
                j.meta_put(
                    &format!("sink/postgres/rejected/{key}"),
                    parked.to_string().as_bytes(),
                )?;
            }
            Outbox::Cluster(c) => c.jobs.outbox_park(key, why).await?,
        }
        Ok(())
    }

    /// Enqueues every stored record under `prefix`; returns how many.
    pub async fn backfill(&self, prefix: String) -> Result<u64, String> {
        match self {
            Outbox::Journal(j) => {
                let journal = j.clone();
                tokio::task::spawn_blocking(move || journal.outbox_backfill(&prefix))
                    .await
                    .map_err(|e| format!("the backfill stopped: {e}"))?
                    .map_err(|e| e.to_string())
            }
            Outbox::Cluster(c) => c
                .jobs
                .outbox_backfill(&prefix)
                .await
                .map_err(|e| e.message().to_string()),
        }
    }

    /// CIK → ticker from SEC's ticker map as this node's `sec` pipeline cached it; empty when
    /// it has none (the column stays NULL).
    pub fn sec_tickers(&self) -> HashMap<u64, String> {
        let journal = match self {
            Outbox::Journal(j) => j,
            Outbox::Cluster(c) => &c.journal,
        };
        journal
            .meta_get(crate::sources::sec::TICKERS_META_KEY)
            .ok()
            .flatten()
            .and_then(|bytes| crate::sources::sec::TickerMap::decode(&bytes))
            .map(|map| map.tickers_by_cik())
            .unwrap_or_default()
    }
}
