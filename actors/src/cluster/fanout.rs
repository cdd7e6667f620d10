//! Batch jobs that fan out, in cluster mode: a parent names its children on a worker, which is
//! free again at once; the parent then waits for them holding no worker on any node, and
//! finishes with their summary `{total, succeeded, failed, stored}`, as on a single node.
//!
//! - The node that ran the parent writes the fan-out in one statement, fenced by its claim: the
//!   children (pending, `parent_id` set, at the parent's priority), the `fanned_out` event, the
//!   records the parent's attempt stored (with their sink outbox rows when the sink is on), and
//!   `claimed_by = NULL` on the parent. A waiting parent
//!   is thus a `running` row that no node claims: the rescue of silent nodes' jobs passes it by
//!   (a node that dies after the fan-out leaves nothing to redo), and no completion can reach it.
//! - The leader finishes the waiting parents whose children have all ended, at each of its
//!   rounds ([`Jobs::finish_parents`]): a parent ends up to one round (a second) after its last
//!   child, whichever node ran that child, and after a child an operator cancelled or the rescue
//!   dead-lettered. One finisher means no two nodes race over a parent's last two children.
//! - Cancelling a parent cancels its unfinished children (`operator.rs`).

use serde_json::Value;
use uuid::Uuid;

use super::records::RecordColumns;
use super::store::{event, Jobs, NewRow, UNFINISHED};
use crate::dispatcher::Tally;
use crate::job::{JobId, JobStatus};
use crate::postgres::Failure;

/// Waiting parents finished per round of the leader (the rest wait for the next round).
const PARENTS_PER_ROUND: i64 = 100;

/// A parent's fan-out, to write.
#[derive(Debug, Clone)]
pub struct FanOut {
    /// The parent job.
    pub parent: JobId,
    /// The parent's claim: the fence of the write.
    pub claim_no: i64,
    /// The children (their priority is the parent's; `unique_key`, `run_at` and `tick` unset).
    pub children: Vec<NewRow>,
    /// The records the parent's attempt stored.
    pub records: Vec<(String, Value)>,
}

impl Jobs {
    /// Writes `f`: the children, the parent's `fanned_out` event and its records, and the
    /// parent left unclaimed to wait. `false` when the parent's claim is no longer this node's
    /// (rescued or cancelled meanwhile): then nothing is written.
    pub async fn fan_out(&self, f: &FanOut) -> Result<bool, Failure> {
        let client = self.client().await?;
        let kids = &f.children;
        let ids: Vec<Uuid> = kids.iter().map(|k| k.id.0).collect();
        let names: Vec<&str> = kids.iter().map(|k| k.name.as_str()).collect();
        let pipes: Vec<&str> = kids.iter().map(|k| k.pipeline.as_str()).collect();
        let retries: Vec<i32> = kids
            .iter()
            .map(|k| i32::try_from(k.max_retries).unwrap_or(i32::MAX))
            .collect();
        let params: Vec<&str> = kids.iter().map(|k| k.params.as_str()).collect();
        let mut recs = RecordColumns::default();
        recs.push(f.parent, &f.records);
        let n = kids.len().to_string();
        let sql = format!(
            "WITH done AS (
                 UPDATE {jobs} j SET claimed_by = NULL,
                     history = j.history || {fanned}
                 WHERE j.id = $1 AND j.claim_no = $2 AND j.claimed_by = $3 AND j.state = 'running'
                 RETURNING j.id, j.priority),
             kids AS (
                 INSERT INTO {jobs} (id, name, pipeline, priority, state, run_at, max_retries, params,
                                     parent_id, history)
                 SELECT d.id, d.name, d.pipeline, done.priority, 'pending', now(), d.max_retries,
                        d.params, done.id, {submitted}
                 FROM unnest($4::uuid[], $5::text[], $6::text[], $7::int4[], $8::text[])
                      AS d(id, name, pipeline, max_retries, params), done
                 RETURNING id),
             {records}
             SELECT count(*) FROM done",
            jobs = self.t("jobs"),
            fanned = event("'fanned_out'", "j.attempt", &format!("'{n} children'")),
            submitted = event("'submitted'", "0", "'child of ' || done.id::text"),
            records = self.records_ctes(9, 10, 11),
        );
        let row = client
            .query_one(
                &sql,
                &[
                    &f.parent.0,
                    &f.claim_no,
                    &self.node,
                    &ids,
                    &names,
                    &pipes,
                    &retries,
                    &params,
                    &recs.jobs,
                    &recs.keys,
                    &recs.values,
                ],
            )
            .await
            .map_err(self.pg())?;
        Ok(row.get::<_, i64>(0) == 1)
    }

    /// The leader's round: finishes up to `PARENTS_PER_ROUND` waiting parents whose children
    /// have all ended, each with its children's summary. Returns the names of those it finished
    /// (the leader counts their success, as a single node counts its own).
    pub async fn finish_parents(&self) -> Result<Vec<String>, Failure> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(self.pg())?;
        let jobs = self.t("jobs");
        let ready = format!(
            "SELECT p.id FROM {jobs} p
             WHERE p.state = 'running' AND p.claimed_by IS NULL
               AND NOT EXISTS (SELECT 1 FROM {jobs} c
                               WHERE c.parent_id = p.id AND c.state IN {UNFINISHED})
             ORDER BY p.id LIMIT $1 FOR UPDATE SKIP LOCKED"
        );
        let rows = tx
            .query(&ready, &[&PARENTS_PER_ROUND])
            .await
            .map_err(self.pg())?;
        let parents: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
        if parents.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, results) = self.summaries(&tx, &parents).await?;
        let finish = format!(
            "UPDATE {jobs} j SET state = 'succeeded', completed_at = now(), error = NULL,
                 result = d.result, history = j.history || {succeeded}
             FROM unnest($1::uuid[], $2::text[]) AS d(id, result)
             WHERE j.id = d.id AND j.state = 'running' AND j.claimed_by IS NULL
             RETURNING j.name",
            succeeded = event("'succeeded'", "j.attempt", "NULL::text"),
        );
        let finished = tx
            .query(&finish, &[&ids, &results])
            .await
            .map_err(self.pg())?;
        tx.commit().await.map_err(self.pg())?;
        Ok(finished.iter().map(|r| r.get(0)).collect())
    }

    /// How many of `parent`'s children are unfinished, and how many it has (0 for a job that
    /// did not fan out): what `why` says of a waiting batch job.
    pub async fn children_waiting(&self, parent: JobId) -> Result<(u64, u64), Failure> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT count(*) FILTER (WHERE state IN {UNFINISHED}), count(*) FROM {} WHERE parent_id = $1",
            self.t("jobs")
        );
        let row = client
            .query_one(&sql, &[&parent.0])
            .await
            .map_err(self.pg())?;
        Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
    }

    /// Each of `parents`' summary of its children, as (ids, result texts) for `unnest`.
    async fn summaries(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        parents: &[Uuid],
    ) -> Result<(Vec<Uuid>, Vec<String>), Failure> {
        let sql = format!(
            "SELECT parent_id, state, result FROM {} WHERE parent_id = ANY($1)",
            self.t("jobs")
        );
        let rows = tx.query(&sql, &[&parents]).await.map_err(self.pg())?;
        let mut tallies: std::collections::HashMap<Uuid, (usize, Tally)> =
            parents.iter().map(|p| (*p, Default::default())).collect();
        for r in &rows {
            let state: String = r.get(1);
            // A state this code does not know counts as a failed child, not a stuck parent.
            let status = state.parse().unwrap_or(JobStatus::Failed);
            if let Some((total, t)) = tallies.get_mut(&r.get::<_, Uuid>(0)) {
                *total += 1;
                t.count_end(status, r.get::<_, Option<&str>>(2));
            }
        }
        Ok(tallies
            .into_iter()
            .map(|(id, (total, t))| (id, t.summary(total).to_string()))
            .unzip())
    }
}
