//! What an operator's commands do to the jobs table in cluster mode: cancel, retry, pause, and
//! the counts `stats` shows. Each is one statement (a cancel of a running job adds a NOTIFY in
//! the same transaction, so the node that runs it hears at once).

use std::collections::{BTreeMap, HashSet};

use tokio_postgres::error::SqlState;

use super::store::{Jobs, CANCEL, RECORD_COLUMNS, UNFINISHED};
use crate::dispatcher::{QueueDepths, UnfinishedCounts};
use crate::job::{JobId, JobRecord, JobStatus};
use crate::postgres::Failure;
use crate::protocol::{ApiError, ErrorCode};

/// Unfinished jobs across the cluster: by state, and queued by pipeline and priority.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Pending, running, retrying.
    pub jobs: UnfinishedCounts,
    /// Jobs due to run, by pipeline and priority (a single node's queues).
    pub queues: BTreeMap<String, QueueDepths>,
    /// Jobs waiting for a delay or a retry backoff, by pipeline (a single node's timer).
    pub scheduled: BTreeMap<String, usize>,
}

impl Counts {
    /// Unfinished jobs in all.
    pub fn unfinished(&self) -> usize {
        self.jobs.pending + self.jobs.running + self.jobs.retrying
    }
}

/// A store failure as an admin answer.
pub fn unavailable(f: Failure) -> ApiError {
    ApiError::new(ErrorCode::StorageUnavailable, f.message().to_string())
}

impl Jobs {
    /// Cancels an unfinished job. Returns its record and, when it was running, the node that
    /// runs it (told on the `cancel` channel, payload the job id).
    pub async fn cancel(&self, id: JobId) -> Result<(JobRecord, Option<String>), ApiError> {
        let mut client = self.client().await.map_err(unavailable)?;
        let tx = client.transaction().await.map_err(self.refused())?;
        let sql = format!(
            "UPDATE {jobs} SET state = 'cancelled', completed_at = now(),
                 cancel_requested = (state = 'running'),
                 history = history || jsonb_build_array(jsonb_build_object(
                     'at', (extract(epoch FROM clock_timestamp()) * 1000)::int8,
                     'kind', 'cancelled', 'attempt', attempt,
                     'detail', CASE WHEN state = 'running'
                         THEN 'cancelled while running: asked to stop, aborted after [jobs] cancel_grace'
                         ELSE 'cancelled before it ran' END))
             WHERE id = $1 AND state IN {UNFINISHED}
             RETURNING {RECORD_COLUMNS}, cancel_requested, claimed_by",
            jobs = self.t("jobs")
        );
        let row = tx.query_opt(&sql, &[&id.0]).await.map_err(self.refused())?;
        let Some(row) = row else {
            drop(tx);
            return Err(self
                .refusal(id, "cancelled", "only unfinished jobs can be cancelled")
                .await);
        };
        // The two columns after the record's.
        let owner: Option<String> = row.get::<_, bool>(18).then(|| row.get(19));
        let rec = self.record(&row).map_err(unavailable)?;
        if owner.is_some() {
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&self.channel(CANCEL), &id.0.to_string()],
            )
            .await
            .map_err(self.refused())?;
        }
        tx.commit().await.map_err(self.refused())?;
        Ok((rec, owner))
    }

    /// Sends a failed or cancelled job back to its queue with its attempts reset.
    pub async fn retry(&self, id: JobId) -> Result<JobRecord, ApiError> {
        let client = self.client().await.map_err(unavailable)?;
        let sql = format!(
            "UPDATE {jobs} SET state = 'pending', attempt = 0, error = NULL, result = NULL,
                 completed_at = NULL, run_at = now(), cancel_requested = false,
                 history = history || jsonb_build_array(jsonb_build_object(
                     'at', (extract(epoch FROM clock_timestamp()) * 1000)::int8,
                     'kind', 'retried', 'attempt', 0, 'detail', 'sent back by an operator'))
             WHERE id = $1 AND state IN ('failed', 'cancelled')
             RETURNING {RECORD_COLUMNS}",
            jobs = self.t("jobs")
        );
        match client.query_opt(&sql, &[&id.0]).await {
            Ok(Some(row)) => self.record(&row).map_err(unavailable),
            Ok(None) => Err(self
                .refusal(id, "retried", "only failed or cancelled jobs can be retried")
                .await),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(ApiError::new(
                ErrorCode::Conflict,
                format!("job {id}: its unique_key is held by an unfinished job; retry it after that one ends"),
            )),
            Err(e) => Err(unavailable(self.target.failure(&e))),
        }
    }

    /// A driver error as an admin answer.
    fn refused(&self) -> impl Fn(tokio_postgres::Error) -> ApiError + '_ {
        move |e| unavailable(self.target.failure(&e))
    }

    /// Why `id` could not be `verb`: it does not exist, or its state forbids it.
    async fn refusal(&self, id: JobId, verb: &str, rule: &str) -> ApiError {
        match self.get(id).await {
            Ok(Some(rec)) => ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "job {id} is {} and cannot be {verb}; {rule}",
                    rec.status.as_str()
                ),
            ),
            Ok(None) => ApiError::not_found(format!("job_id: no job with id {id}")),
            Err(f) => unavailable(f),
        }
    }

    /// The unfinished jobs of the whole cluster, counted.
    pub async fn counts(&self) -> Result<Counts, Failure> {
        let client = self.client().await?;
        // `later`: not due yet, so waiting for its delay or backoff rather than queued.
        let sql = format!(
            "SELECT pipeline, state, priority, run_at > now() AS later, count(*) FROM {} \
             WHERE state IN {UNFINISHED} GROUP BY 1, 2, 3, 4",
            self.t("jobs")
        );
        let rows = client.query(&sql, &[]).await.map_err(self.pg())?;
        let mut c = Counts::default();
        for r in rows {
            let (pipeline, state): (String, String) = (r.get(0), r.get(1));
            let n = usize::try_from(r.get::<_, i64>(4)).unwrap_or(0);
            match state.parse::<JobStatus>() {
                Ok(JobStatus::Running) => {
                    c.jobs.running += n;
                    continue;
                }
                Ok(JobStatus::Retrying) => c.jobs.retrying += n,
                _ => c.jobs.pending += n,
            }
            if r.get::<_, bool>(3) {
                *c.scheduled.entry(pipeline).or_default() += n;
                continue;
            }
            let q = c.queues.entry(pipeline).or_default();
            match r.get::<_, i16>(2) {
                0 => q.high += n,
                2 => q.low += n,
                _ => q.normal += n,
            }
        }
        Ok(c)
    }

    /// Pauses (true) or resumes (false) `pipeline` on every node.
    pub async fn set_paused(&self, pipeline: &str, paused: bool) -> Result<(), Failure> {
        let client = self.client().await?;
        let table = self.t("paused_pipelines");
        let sql = if paused {
            format!(
                "INSERT INTO {table} (pipeline, by_node) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            )
        } else {
            format!("DELETE FROM {table} WHERE pipeline = $1 AND $2::text IS NOT NULL")
        };
        client
            .execute(&sql, &[&pipeline, &self.node])
            .await
            .map_err(self.pg())?;
        Ok(())
    }

    /// The pipelines paused cluster-wide.
    pub async fn paused(&self) -> Result<HashSet<String>, Failure> {
        let client = self.client().await?;
        let sql = format!("SELECT pipeline FROM {}", self.t("paused_pipelines"));
        let rows = client.query(&sql, &[]).await.map_err(self.pg())?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
