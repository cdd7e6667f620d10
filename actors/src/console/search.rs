//! The job filters of the jobs and dead-letter pages, and the bounded search behind them.
//!
//! Every read goes through the node's [`crate::store::JobStore`], so the pages work the same on
//! a single node (the journal) and in cluster mode (PostgreSQL). Status and name go to the
//! store's indexes (`JobStore::list`, paged by `before`); a pipeline becomes the names it serves,
//! folded into the name glob, so it uses the same indexes. A parent or a workflow names its
//! jobs itself (the parent's `children`, the workflow's record), so those walk only that list.
//! A params substring can use no index (nor, in cluster mode, a name glob with a class like
//! `[ab]`): candidates are read a chunk at a time and at most [`EXAMINE_BUDGET`] per request,
//! and a page that ran out of budget says where it stopped, so the next request goes on from
//! there. No request reads all history.

use globset::{Glob, GlobMatcher};
use serde::Deserialize;

use super::ConsoleCtx;
use crate::job::{JobId, JobRecord, JobStatus};
use crate::protocol::ApiError;
use crate::store::journal::ListFilter;

/// Records one request examines at most when a filter needs reading them (params substring).
pub const EXAMINE_BUDGET: usize = 2_000;
/// Candidates read from the index per call while filtering.
const CHUNK: usize = 500;
/// Jobs per page.
pub const PAGE: usize = 50;

/// The filters as the query string has them (empty fields are unset).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct FilterQuery {
    /// A status name.
    pub status: String,
    /// An exact name or a glob.
    pub name: String,
    /// A pipeline's name.
    pub pipeline: String,
    /// A batch parent's id.
    pub parent: String,
    /// A workflow's id.
    pub workflow: String,
    /// A substring of the params' JSON text.
    pub q: String,
    /// Paging: only jobs older than this id.
    pub before: String,
}

/// The filters, checked.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this status.
    pub status: Option<JobStatus>,
    /// Only names matching (the name glob and the pipeline's names, folded into one).
    pub names: Option<GlobMatcher>,
    /// A pipeline was asked for and serves no name the glob allows: nothing matches.
    pub empty: bool,
    /// Only this parent's children.
    pub parent: Option<JobId>,
    /// Only this workflow's jobs.
    pub workflow: Option<uuid::Uuid>,
    /// Only params containing this text.
    pub q: Option<String>,
    /// Only older than this.
    pub before: Option<JobId>,
}

fn set(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

impl FilterQuery {
    /// The query without its paging, as a query string (for links to other pages).
    pub fn without_paging(&self) -> String {
        let pairs = [
            ("status", &self.status),
            ("name", &self.name),
            ("pipeline", &self.pipeline),
            ("parent", &self.parent),
            ("workflow", &self.workflow),
            ("q", &self.q),
        ];
        pairs
            .iter()
            .filter(|(_, v)| set(v).is_some())
            .map(|(k, v)| format!("{k}={}", encode(v.trim())))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// Checks the fields; the error names the field at fault.
    pub fn check(&self, ctx: &ConsoleCtx) -> Result<Filter, ApiError> {
        let bad = |field: &str, e: String| ApiError::bad_request(format!("{field}: {e}"));
        let mut f = Filter {
            status: set(&self.status)
                .map(str::parse)
                .transpose()
                .map_err(|e| bad("status", e))?,
            parent: set(&self.parent)
                .map(str::parse)
                .transpose()
                .map_err(|e| bad("parent", e))?,
            before: set(&self.before)
                .map(str::parse)
                .transpose()
                .map_err(|e| bad("before", e))?,
            workflow: set(&self.workflow)
                .map(|w| {
                    uuid::Uuid::parse_str(w).map_err(|_| format!("expected a UUID, got {w:?}"))
                })
                .transpose()
                .map_err(|e| bad("workflow", e))?,
            q: set(&self.q).map(str::to_string),
            ..Default::default()
        };
        let glob = set(&self.name)
            .map(|n| {
                Glob::new(n).map(|g| g.compile_matcher()).map_err(|e| {
                    bad(
                        "name",
                        format!("expected a job name or a glob like \"sec.*\", got {n:?} ({e})"),
                    )
                })
            })
            .transpose()?;
        f.names = glob.clone();
        if let Some(p) = set(&self.pipeline) {
            let served = ctx
                .pipelines
                .iter()
                .find(|(name, _)| name == p)
                .map(|(_, tasks)| tasks)
                .ok_or_else(|| bad("pipeline", format!("no pipeline named {p:?}")))?;
            let names: Vec<&String> = served
                .iter()
                .filter(|n| glob.as_ref().is_none_or(|g| g.is_match(n.as_str())))
                .collect();
            f.empty = names.is_empty();
            f.names = fold(&names);
        }
        Ok(f)
    }
}

/// Exact names as one glob (`{a,b}`), so the pipeline filter uses the name index.
fn fold(names: &[&String]) -> Option<GlobMatcher> {
    let alts: Vec<String> = names.iter().map(|n| globset::escape(n)).collect();
    let text = match alts.len() {
        0 => return None,
        1 => alts[0].clone(),
        _ => format!("{{{}}}", alts.join(",")),
    };
    Glob::new(&text).ok().map(|g| g.compile_matcher())
}

/// Percent-encodes a query value.
pub fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'*' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One page of a search.
#[derive(Debug, Default)]
pub struct Found {
    /// The matches, newest first.
    pub jobs: Vec<JobRecord>,
    /// Where the next (older) page starts, when there may be one.
    pub next: Option<JobId>,
    /// The search stopped at its budget before the page was full.
    pub budget_spent: bool,
}

impl Filter {
    fn matches(&self, r: &JobRecord) -> bool {
        self.status.is_none_or(|s| s == r.status)
            && self.names.as_ref().is_none_or(|m| m.is_match(&r.name))
            && self
                .q
                .as_ref()
                .is_none_or(|q| r.params.contains(q.as_str()))
            && self.parent.is_none_or(|p| r.parent_id == Some(p))
            && self.workflow.is_none_or(|w| r.workflow_id == Some(w))
    }
}

/// Up to `limit` jobs matching `f`, newest first, examining at most `budget` candidates.
pub async fn search(
    ctx: &ConsoleCtx,
    f: &Filter,
    limit: usize,
    budget: usize,
) -> Result<Found, ApiError> {
    if f.empty {
        return Ok(Found::default());
    }
    let jobs = &ctx.admin.jobs;
    match (f.parent, f.workflow) {
        (Some(parent), _) => {
            let parent = jobs
                .get(parent)
                .await
                .map_err(ApiError::storage_unavailable)?;
            let ids = parent.map(|p| p.children).unwrap_or_default();
            from_ids(ctx, f, ids, limit).await
        }
        (None, Some(w)) => {
            let ids = jobs
                .workflow(w)
                .await
                .map_err(ApiError::storage_unavailable)?
                .map(|w| w.jobs.into_iter().chain(w.then).collect())
                .unwrap_or_default();
            from_ids(ctx, f, ids, limit).await
        }
        (None, None) => from_index(ctx, f, limit, budget).await,
    }
}

/// A page out of a known list of ids (a parent's children, a workflow's jobs): bounded by the
/// list, at most a batch's 10,000.
async fn from_ids(
    ctx: &ConsoleCtx,
    f: &Filter,
    mut ids: Vec<JobId>,
    limit: usize,
) -> Result<Found, ApiError> {
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let mut found = Found::default();
    for id in ids
        .into_iter()
        .filter(|id| f.before.is_none_or(|b| *id < b))
    {
        let Some(r) = ctx
            .admin
            .jobs
            .get(id)
            .await
            .map_err(ApiError::storage_unavailable)?
        else {
            continue;
        };
        if !f.matches(&r) {
            continue;
        }
        if found.jobs.len() == limit {
            found.next = found.jobs.last().map(|j| j.id);
            break;
        }
        found.jobs.push(r);
    }
    Ok(found)
}

/// A page from the store's indexes, reading chunks while a filter needs the records.
async fn from_index(
    ctx: &ConsoleCtx,
    f: &Filter,
    limit: usize,
    budget: usize,
) -> Result<Found, ApiError> {
    let mut found = Found::default();
    let mut before = f.before;
    let mut examined = 0;
    // A name glob the store cannot select (a class, in cluster mode) is matched here, on
    // records read against the budget, so paging never skips what a long scan left out.
    let names = f.names.clone().filter(|n| ctx.admin.jobs.selects_names(n));
    let reads_records = f.q.is_some() || (names.is_none() && f.names.is_some());
    let chunk = if reads_records { CHUNK } else { limit + 1 };
    loop {
        let filter = ListFilter {
            status: f.status,
            name: names.clone(),
            before,
            limit: chunk,
        };
        let got = ctx
            .admin
            .jobs
            .list(&filter)
            .await
            .map_err(ApiError::storage_unavailable)?;
        let ended = got.len() < chunk;
        examined += got.len();
        before = got.last().map(|r| r.id);
        for r in got {
            if !f.matches(&r) {
                continue;
            }
            if found.jobs.len() == limit {
                found.next = found.jobs.last().map(|j| j.id);
                return Ok(found);
            }
            found.jobs.push(r);
        }
        if ended {
            return Ok(found);
        }
        if examined >= budget {
            found.budget_spent = true;
            found.next = before;
            return Ok(found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures that exact names fold into one glob that matches them and nothing else, even
    /// with glob characters in a name.
    #[test]
    fn names_fold_into_one_glob() {
        let (a, b) = ("sec.filings".to_string(), "sec.we*rd".to_string());
        let m = fold(&[&a, &b]).unwrap();
        assert!(m.is_match("sec.filings") && m.is_match("sec.we*rd"));
        assert!(!m.is_match("sec.weird") && !m.is_match("sec.facts"));
        assert!(fold(&[]).is_none());
    }

    /// Ensures that query values are percent-encoded.
    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("sec.* &x=1"), "sec.*%20%26x%3D1");
    }
}
