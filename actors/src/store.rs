//! The store: the durable record of every job (its state changes and history), the pipelines'
//! output records and the little node state that must survive a restart.
//!
//! On a single node that is the sled [`journal`], one embedded database under the node's data
//! dir. In cluster mode the jobs live in PostgreSQL (`crate::cluster`); the journal keeps what is
//! the node's own, and the records tasks store are in PostgreSQL too. [`JobStore`] is what
//! readers of job records and stored records (the admin port, the web console) hold, so they
//! read the same way in both modes; decisions go through the dispatcher, which each mode has
//! its own of.

pub mod journal;

use globset::GlobMatcher;

use crate::job::{JobId, JobRecord, WorkflowRecord};
use journal::{Journal, ListFilter, StoredRecord};

/// Most rows a listing with a glob PostgreSQL cannot match (`[ab]`) scans to fill one
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
            JobStore::Journal(j) => j.get(id).map_err(journal_failed),
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
            JobStore::Journal(j) => j.records(prefix, after, limit).map_err(journal_failed),
            JobStore::Cluster(c) => c
                .records(prefix, after, limit)
                .await
                .map_err(|e| e.message().to_string()),
        }
    }

    /// The workflow `id` (its structure; its jobs are read with [`JobStore::get`]).
    pub async fn workflow(&self, id: uuid::Uuid) -> Result<Option<WorkflowRecord>, String> {
        match self {
            JobStore::Journal(j) => j.get_workflow(id).map_err(journal_failed),
            JobStore::Cluster(c) => c.workflow(id).await.map_err(|e| e.message().to_string()),
        }
    }

    /// Whether [`JobStore::list`] selects names matching `names` in the store itself (the
    /// journal's name index, PostgreSQL's `LIKE`), so a page of matches costs a page of reads.
    /// When not, a caller with a read budget passes no name and matches the records itself.
    pub fn selects_names(&self, names: &GlobMatcher) -> bool {
        match self {
            JobStore::Journal(_) => true,
            JobStore::Cluster(_) => crate::cluster::like_patterns(names.glob().glob()).is_some(),
        }
    }

    /// Newest first, as `filter` says.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<JobRecord>, String> {
        let c = match self {
            JobStore::Journal(j) => return j.list(filter).map_err(journal_failed),
            JobStore::Cluster(c) => c,
        };
        let glob = filter.name.as_ref().map(|m| m.glob().glob());
        let like = glob.map(crate::cluster::like_patterns);
        let fail = |e: crate::postgres::Failure| e.message().to_string();
        match like {
            None => c
                .list(filter.status, None, filter.before, filter.limit)
                .await
                .map_err(fail),
            Some(Some(patterns)) => c
                .list(filter.status, Some(&patterns), filter.before, filter.limit)
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

/// A failed journal read, in the words every reader answers with.
fn journal_failed(e: journal::JournalError) -> String {
    format!("journal read failed: {e}")
}
