//! What an operator's commands do to the jobs table in cluster mode: cancel, retry, pause, and
//! the counts `stats` shows. Each is one statement (a cancel of a running job adds a NOTIFY in
//! the same transaction, so the node that runs it hears at once).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::store::{Jobs, CANCEL, UNFINISHED};
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

/// One group of unfinished jobs as counted (and as the leader publishes it, in JSON).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Group {
    pipeline: String,
    state: String,
    /// 0 high, 1 normal, 2 low.
    priority: i16,
    /// Not due yet: waiting for a delay or a retry backoff.
    later: bool,
    n: usize,
}

impl Counts {
    /// Counts from groups.
    fn of(groups: impl IntoIterator<Item = Group>) -> Counts {
        let mut c = Counts::default();
        for g in groups {
            match g.state.parse::<JobStatus>() {
                Ok(JobStatus::Running) => {
                    c.jobs.running += g.n;
                    continue;
                }
                Ok(JobStatus::Retrying) => c.jobs.retrying += g.n,
                _ => c.jobs.pending += g.n,
            }
            if g.later {
                *c.scheduled.entry(g.pipeline).or_default() += g.n;
                continue;
            }
            let q = c.queues.entry(g.pipeline).or_default();
            match g.priority {
                0 => q.high += g.n,
                2 => q.low += g.n,
                _ => q.normal += g.n,
            }
        }
        c
    }

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
    /// Cancels an unfinished job, and the unfinished children of a batch job (`fanout.rs`), as
    /// a single node does. Returns its record and, when it was running, the node that runs it;
    /// each job cancelled while running is told on the `cancel` channel (payload its id).
    pub async fn cancel(&self, id: JobId) -> Result<(JobRecord, Option<String>), ApiError> {
        let mut client = self.client().await.map_err(unavailable)?;
        let tx = client.transaction().await.map_err(self.refused())?;
        let sql = self.cancel_sql("id = $1", &self.record_columns());
        let row = tx.query_opt(&sql, &[&id.0]).await.map_err(self.refused())?;
        let Some(row) = row else {
            drop(tx);
            return Err(self
                .refusal(id, "cancelled", "only unfinished jobs can be cancelled")
                .await);
        };
        // The two columns after the record's.
        // A waiting batch job is running but claimed by no node (`fanout.rs`).
        let owner: Option<String> = row
            .get::<_, bool>(19)
            .then(|| row.get::<_, Option<String>>(20))
            .flatten();
        let rec = self.record(&row).map_err(unavailable)?;
        let children = self.cancel_sql("parent_id = $1", "id");
        let kids = tx
            .query(&children, &[&id.0])
            .await
            .map_err(self.refused())?;
        let mut told: Vec<Uuid> = kids
            .iter()
            .filter(|k| k.get::<_, bool>(1))
            .map(|k| k.get(0))
            .collect();
        if owner.is_some() {
            told.push(id.0);
        }
        for running in told {
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&self.channel(CANCEL), &running.to_string()],
            )
            .await
            .map_err(self.refused())?;
        }
        tx.commit().await.map_err(self.refused())?;
        Ok((rec, owner))
    }

    /// The cancel of the unfinished jobs `which` selects, returning `columns`, then whether
    /// each was running and the node that ran it.
    fn cancel_sql(&self, which: &str, columns: &str) -> String {
        format!(
            "UPDATE {jobs} SET state = 'cancelled', completed_at = now(),
                 cancel_requested = (state = 'running' AND claimed_by IS NOT NULL),
                 history = history || jsonb_build_array(jsonb_build_object(
                     'at', (extract(epoch FROM clock_timestamp()) * 1000)::int8,
                     'kind', 'cancelled', 'attempt', attempt,
                     'detail', CASE WHEN state = 'running' AND claimed_by IS NULL
                         THEN 'cancelled while waiting for its children'
                         WHEN state = 'running'
                         THEN 'cancelled while running: asked to stop, aborted after [jobs] cancel_grace'
                         ELSE 'cancelled before it ran' END))
             WHERE {which} AND state IN {UNFINISHED}
             RETURNING {columns}, cancel_requested, claimed_by",
            jobs = self.t("jobs")
        )
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
             RETURNING {columns}",
            jobs = self.t("jobs"),
            columns = self.record_columns(),
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
        let sql = format!(
            "SELECT pipeline, state, priority, later, n FROM ({}) g",
            self.count_groups()
        );
        let rows = client.query(&sql, &[]).await.map_err(self.pg())?;
        Ok(Counts::of(rows.iter().map(|r| Group {
            pipeline: r.get(0),
            state: r.get(1),
            priority: r.get(2),
            later: r.get(3),
            n: usize::try_from(r.get::<_, i64>(4)).unwrap_or(0),
        })))
    }

    /// The leader's part: counts the unfinished jobs once and publishes the counts for every
    /// node (see [`Jobs::published_counts`]).
    pub async fn publish_counts(&self) -> Result<(), Failure> {
        let client = self.client().await?;
        let sql = format!(
            "INSERT INTO {counts} (id, groups, counted_at) \
             SELECT 1, coalesce(jsonb_agg(jsonb_build_object('pipeline', pipeline, 'state', state, 'priority', priority, 'later', later, 'n', n)), '[]'), now() \
             FROM ({groups}) g \
             ON CONFLICT (id) DO UPDATE SET groups = EXCLUDED.groups, counted_at = EXCLUDED.counted_at",
            counts = self.t("counts"),
            groups = self.count_groups()
        );
        client.execute(&sql, &[]).await.map_err(self.pg())?;
        Ok(())
    }

    /// The counts the leader published, when they are younger than `max_age`; None when there
    /// are none that fresh (no leader yet, or a leader that stopped publishing).
    pub async fn published_counts(&self, max_age: Duration) -> Result<Option<Counts>, Failure> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT groups FROM {} WHERE counted_at > now() - $1::int8 * interval '1 millisecond'",
            self.t("counts")
        );
        let ms = max_age.as_millis() as i64;
        let row = client.query_opt(&sql, &[&ms]).await.map_err(self.pg())?;
        let Some(row) = row else { return Ok(None) };
        let groups: Vec<Group> = serde_json::from_value(row.get::<_, serde_json::Value>(0))
            .map_err(|e| Failure::Rejected(format!("the published counts do not parse: {e}")))?;
        Ok(Some(Counts::of(groups)))
    }

    /// The unfinished jobs grouped by pipeline, state, priority and `later` (not due yet, so
    /// waiting for its delay or backoff rather than queued), as SQL.
    fn count_groups(&self) -> String {
        format!(
            "SELECT pipeline, state, priority, run_at > now() AS later, count(*) AS n FROM {} \
             WHERE state IN {UNFINISHED} GROUP BY 1, 2, 3, 4",
            self.t("jobs")
        )
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

#[cfg(test)]
mod tests {
    use super::{Counts, Group};

    /// Ensures that counted groups add up by state, that running jobs count in no queue, and
    /// that jobs not due yet are scheduled rather than queued.
    #[test]
    fn groups_add_up_by_state_and_queue() {
        let g = |p: &str, s: &str, priority: i16, later: bool, n: usize| Group {
            pipeline: p.into(),
            state: s.into(),
            priority,
            later,
            n,
        };
        let c = Counts::of([
            g("sec", "pending", 0, false, 2),
            g("sec", "retrying", 2, false, 3),
            g("sec", "retrying", 1, true, 6),
            g("sec", "running", 1, false, 4),
            g("yahoo", "pending", 1, false, 5),
        ]);
        assert_eq!((c.jobs.pending, c.jobs.retrying, c.jobs.running), (7, 9, 4));
        assert_eq!(c.unfinished(), 20);
        let sec = &c.queues["sec"];
        assert_eq!((sec.high, sec.normal, sec.low), (2, 0, 3));
        assert_eq!(c.scheduled["sec"], 6);
        assert_eq!(c.queues["yahoo"].normal, 5);
    }
}
