//! The store: the durable record of every job (its state changes and history), the pipelines'
//! output records and the little node state that must survive a restart.
//!
//! On a single node that is the sled [`journal`], one embedded database under the node's data
//! dir. In cluster mode the jobs live in PostgreSQL (`crate::cluster`); the journal keeps what is
//! the node's own, and the records tasks store are in PostgreSQL too. [`JobStore`] is what
//! readers of job records and stored records (the admin port) hold, so they read the same way
//! in both modes; decisions go through the dispatcher, which each mode has its own of.

pub mod journal;

use crate::job::{JobId, JobRecord};
use journal::{Journal, ListFilter, StoredRecord};

/// Most rows a listing with a glob PostgreSQL cannot match (`{a,b}`, `[ab]`) scans to fill one
/// page: the rest is left for the next page's `before`.
const GLOB_SCAN_LIMIT: usize = 10_000;

/// Where job records, and the records tasks store, are read from.
#[derive(Clone)]
pub enum JobStore {
    /// The node's own journal.
    Journal(Journal),
    /// The cluster's jobs table.
    Cluster(crate::cluster::Jobs),
}

impl JobStore {
    /// The record of `id`.
    pub async fn get(&self, id: JobId) -> Result<Option<JobRecord>, String> {
        match self {
            JobStore::Journal(j) => j.get(id).map_err(|e| format!("journal read failed: {e}")),
            JobStore::Cluster(c) => c.get(id).await.map_err(|e| e.message().to_string()),
        }
    }

    /// Up to `limit` stored records whose key starts with `prefix`, in key order (bytewise),
    /// with keys strictly after `after` when it is given.
    pub async fn records(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, String> {
        match self {
            JobStore::Journal(j) => j
                .records(prefix, after, limit)
                .map_err(|e| format!("journal read failed: {e}")),
            JobStore::Cluster(c) => c
                .records(prefix, after, limit)
                .await
                .map_err(|e| e.message().to_string()),
        }
    }

    /// Newest first, as `filter` says.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<JobRecord>, String> {
        let c = match self {
            JobStore::Journal(j) => {
                return j
                    .list(filter)
                    .map_err(|e| format!("journal read failed: {e}"))
            }
            JobStore::Cluster(c) => c,
        };
        let glob = filter.name.as_ref().map(|m| m.glob().glob());
        let like = glob.map(crate::cluster::like_pattern);
        let fail = |e: crate::postgres::Failure| e.message().to_string();
        match like {
            None => c
                .list(filter.status, None, filter.before, filter.limit)
                .await
                .map_err(fail),
            Some(Some(pattern)) => c
                .list(filter.status, Some(&pattern), filter.before, filter.limit)
                .await
                .map_err(fail),
            // A glob LIKE cannot say: scan pages and match here.
            Some(None) => {
                let scan = c
                    .list(filter.status, None, filter.before, GLOB_SCAN_LIMIT)
                    .await
                    .map_err(fail)?;
                Ok(scan
                    .into_iter()
                    .filter(|r| filter.name.as_ref().is_none_or(|m| m.is_match(&r.name)))
                    .take(filter.limit)
                    .collect())
            }
        }
    }
}
