//! The records tasks store, in cluster mode (`records` table, migration 6). They are never
//! written on their own: an attempt's records travel with its completion, and `complete`
//! (`store.rs`) upserts them in the same statement as the fenced UPDATE, joined to the rows that
//! UPDATE returned, so a completion fenced out writes none of its records and a written one
//! writes all of them. Reads page by key, bytewise, as a single node's journal does.

use crate::postgres::{jsonb_text, pg_text};
use uuid::Uuid;

use super::store::{Completion, Jobs};
use crate::job::JobId;
use crate::postgres::Failure;
use crate::store::journal::StoredRecord;

/// The records of a batch of completions, for `unnest`: the job of each, its key, its value as
/// JSON text. PostgreSQL's `text` and `jsonb` cannot hold NUL characters, so they are dropped
/// (as the sink does), rather than let one record refuse every completion of the batch.
#[derive(Default)]
pub(super) struct RecordColumns {
    pub(super) jobs: Vec<Uuid>,
    pub(super) keys: Vec<String>,
    pub(super) values: Vec<String>,
}

impl RecordColumns {
    pub(super) fn of(done: &[Completion]) -> RecordColumns {
        let mut cols = RecordColumns::default();
        for c in done {
            cols.push(c.id, &c.records);
        }
        cols
    }

    /// Adds the records `job`'s attempt stored.
    pub(super) fn push(&mut self, job: JobId, records: &[(String, serde_json::Value)]) {
        for (key, value) in records {
            self.jobs.push(job.0);
            self.keys.push(pg_text(key));
            self.values.push(jsonb_text(value));
        }
    }
}

/// The data-modifying CTE of `complete` that upserts the records of the completions the CTE
/// `done` wrote (`done` returns `id`); `$jobs`, `$keys`, `$values` are the parameter numbers of
/// [`RecordColumns`]. Within one batch a key two jobs stored takes the later completion's value
/// (`DISTINCT ON` over the input order), since one statement cannot update a row twice; the rows
/// go in key order, so two nodes' batches lock shared keys in the same order. Storing the same
/// value again changes nothing, not even `updated_at`. It returns the keys it changed (what the
/// sink's outbox enqueues).
pub(super) fn upsert_cte(table: &str, jobs: u8, keys: u8, values: u8) -> String {
    format!(
        "written_records AS (
             INSERT INTO {table} AS t (key, value, job_id, updated_at)
             SELECT DISTINCT ON (r.key) r.key, r.value::jsonb, r.job_id, now()
             FROM unnest(${jobs}::uuid[], ${keys}::text[], ${values}::text[]) WITH ORDINALITY
                  AS r(job_id, key, value, n)
             JOIN done ON done.id = r.job_id
             ORDER BY r.key, r.n DESC
             ON CONFLICT (key) DO UPDATE
             SET value = excluded.value, job_id = excluded.job_id, updated_at = excluded.updated_at
             WHERE t.value IS DISTINCT FROM excluded.value
             RETURNING t.key)"
    )
}

/// `prefix` as a `LIKE` pattern matching the keys that start with it.
pub(super) fn prefix_pattern(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        super::store::push_like_literal(&mut out, c);
    }
    out.push('%');
    out
}

impl Jobs {
    /// Up to `limit` records whose key starts with `prefix`, in key order, with keys strictly
    /// after `after` when it is given: the journal's `records`, for the whole cluster.
    pub async fn records(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, Failure> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let sql = format!(
            "SELECT key, value::text, (extract(epoch FROM updated_at) * 1000)::int8 FROM {}
             WHERE key >= $1 AND key LIKE $2 AND ($3::text IS NULL OR key > $3)
             ORDER BY key LIMIT $4",
            self.t("records")
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(&sql, &[&prefix, &prefix_pattern(prefix), &after, &limit])
            .await
            .map_err(self.pg())?;
        rows.iter()
            .map(|r| {
                let key: String = r.get(0);
                let text: String = r.get(1);
                let value = serde_json::from_str(&text).map_err(|e| {
                    Failure::Rejected(format!(
                        "{}: record {key:?}: undecodable value: {e}",
                        self.target.shown
                    ))
                })?;
                Ok(StoredRecord {
                    key,
                    value,
                    updated_at: r.get(2),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Outcome;
    use crate::job::JobId;
    use serde_json::json;

    /// Ensures that a prefix matches itself literally: LIKE's wildcards in it are escaped.
    #[test]
    fn prefixes_become_literal_like_patterns() {
        assert_eq!(prefix_pattern("yahoo/chart/"), "yahoo/chart/%");
        assert_eq!(prefix_pattern("a_b%c\\"), "a\\_b\\%c\\\\%");
        assert_eq!(prefix_pattern(""), "%");
    }

    /// Ensures that the records of a batch keep their job, in completion order, and that NUL
    /// characters, which PostgreSQL refuses, are replaced (U+FFFD) in keys and values.
    #[test]
    fn columns_keep_each_records_job_and_replace_nuls() {
        let (a, b) = (JobId::new(), JobId::new());
        let done = [
            Completion {
                id: a,
                claim_no: 1,
                outcome: Outcome::Succeeded("null".into()),
                records: vec![("k\0ey".into(), json!({"t\0": ["x\0y", 1]}))],
            },
            Completion {
                id: b,
                claim_no: 1,
                outcome: Outcome::Succeeded("null".into()),
                records: vec![("k".into(), json!(2))],
            },
        ];
        let cols = RecordColumns::of(&done);
        assert_eq!(cols.jobs, vec![a.0, b.0]);
        assert_eq!(cols.keys, vec!["k\u{FFFD}ey", "k"]);
        assert_eq!(cols.values, vec!["{\"t\u{FFFD}\":[\"x\u{FFFD}y\",1]}", "2"]);
    }
}
