//! The jobs table: every statement cluster mode runs on jobs, and the conversions between rows
//! and [`JobRecord`]s. Nothing here keeps state between calls; the dispatcher decides, this
//! module writes what it decided, in as few round trips as the decision allows (a submit is
//! one `INSERT ... SELECT FROM unnest(...)`, the schedule ticks it fires recorded in the same
//! statement, a claim one `UPDATE ... FOR UPDATE SKIP LOCKED`, the completions gathered while
//! a claim was out one `UPDATE ... FROM unnest(...)`, which also upserts the records their
//! attempts stored: `records.rs`).
//!
//! Times that decide anything (`run_at`, `claimed_at`) are the database's clock. Times shown
//! to people are read back as Unix milliseconds, so a record looks the same in both modes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use deadpool_postgres::{Object, Pool};
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;
use uuid::Uuid;

use super::records::{upsert_cte, RecordColumns};
use super::sink_outbox::outbox_cte;
use crate::job::{JobEvent, JobId, JobRecord, JobStatus, Priority};
use crate::postgres::{Failure, Target};
use crate::protocol::ScheduleTick;

/// The unfinished states, as the unique index and the claim name them.
pub const UNFINISHED: &str = "('pending', 'running', 'retrying')";

/// The channel new jobs are announced on (payload: the pipeline).
pub const WAKE: &str = "jobs";
/// The channel a cancel of a running job is announced on (payload: the job id).
pub const CANCEL: &str = "cancel";
/// The channel the leader is nudged on when a batch child or a workflow step ended, so that it
/// moves the parent or the workflow on at once rather than at its next round.
pub const ADVANCE: &str = "advance";

/// Columns of a [`JobRecord`], times as Unix ms.
const RECORD_COLUMNS: &str =
    "id, name, pipeline, priority, state, attempt, max_retries, \
     unique_key, (extract(epoch FROM created_at) * 1000)::int8, \
     (extract(epoch FROM started_at) * 1000)::int8, \
     (extract(epoch FROM completed_at) * 1000)::int8, \
     CASE WHEN state = 'retrying' OR (state = 'pending' AND run_at > now() AND run_at <> 'infinity') \
          THEN (extract(epoch FROM run_at) * 1000)::int8 END, \
     error, result, parent_id, workflow_id, params, history::text";

/// The columns a submit writes (the rest take their defaults).
const JOB_COLUMNS: &str =
    "id, name, pipeline, priority, state, run_at, max_retries, params, unique_key, history";

/// An event appended to `history`, in SQL: `kind` and `detail` are SQL expressions, `attempt`
/// the attempt expression; `at` is the database's now, in ms.
pub(super) fn event(kind: &str, attempt: &str, detail: &str) -> String {
    format!(
        "jsonb_build_array(jsonb_build_object('at', (extract(epoch FROM clock_timestamp()) * 1000)::int8, \
         'kind', {kind}, 'attempt', {attempt}, 'detail', {detail}))"
    )
}

/// A job to insert.
#[derive(Debug, Clone)]
pub struct NewRow {
    /// Its id (UUID v7, made by the node that accepted it).
    pub id: JobId,
    /// `<pipeline>.<task>`.
    pub name: String,
    /// Its pipeline.
    pub pipeline: String,
    /// Its priority.
    pub priority: Priority,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Params, as JSON text.
    pub params: String,
    /// Dedup key.
    pub unique_key: Option<String>,
    /// Not before (Unix ms).
    pub run_at: Option<i64>,
    /// The schedule tick it fires: at most one job per tick is ever inserted.
    pub tick: Option<ScheduleTick>,
}

/// The columns of the rows `todo`, for `unnest`.
struct InsertColumns<'a> {
    ids: Vec<Uuid>,
    names: Vec<&'a str>,
    pipes: Vec<&'a str>,
    prios: Vec<i16>,
    run_at: Vec<Option<i64>>,
    retries: Vec<i32>,
    params: Vec<&'a str>,
    keys: Vec<Option<&'a str>>,
    schedules: Vec<Option<&'a str>>,
    tick_ms: Vec<Option<i64>>,
}

impl<'a> InsertColumns<'a> {
    fn of(rows: &'a [NewRow], todo: &[usize]) -> Self {
        let rows: Vec<&NewRow> = todo.iter().map(|i| &rows[*i]).collect();
        InsertColumns {
            ids: rows.iter().map(|r| r.id.0).collect(),
            names: rows.iter().map(|r| r.name.as_str()).collect(),
            pipes: rows.iter().map(|r| r.pipeline.as_str()).collect(),
            prios: rows.iter().map(|r| priority_no(r.priority)).collect(),
            run_at: rows.iter().map(|r| r.run_at).collect(),
            retries: rows
                .iter()
                .map(|r| i32::try_from(r.max_retries).unwrap_or(i32::MAX))
                .collect(),
            params: rows.iter().map(|r| r.params.as_str()).collect(),
            keys: rows.iter().map(|r| r.unique_key.as_deref()).collect(),
            schedules: rows
                .iter()
                .map(|r| r.tick.as_ref().map(|t| t.schedule.as_str()))
                .collect(),
            tick_ms: rows
                .iter()
                .map(|r| r.tick.as_ref().map(|t| t.tick_ms))
                .collect(),
        }
    }
}

/// A job this node claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The job.
    pub id: JobId,
    /// Its name.
    pub name: String,
    /// Its params.
    pub params: String,
    /// The attempt this claim starts, from 1.
    pub attempt: u32,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The fence of its completion.
    pub claim_no: i64,
}

/// What becomes of a claimed job.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done; its result as JSON text.
    Succeeded(String),
    /// Runs again after `delay_ms`; `counts` is false for a throttled attempt (the upstream
    /// never did the work, so the attempt is given back).
    Retrying {
        /// Delay before the next attempt.
        delay_ms: i64,
        /// Why.
        error: String,
        /// Whether the attempt counts against `max_retries`.
        counts: bool,
    },
    /// Retries spent, or a permanent error.
    DeadLettered(String),
    /// Back to its queue at once (its worker went down; the attempt counts).
    Requeued(String),
    /// Back to its queue at once, the attempt given back (it never started).
    Released(String),
    /// The job was cancelled while this attempt ran: the cancel wrote its end, so only the
    /// records the attempt stored before it stopped are written (as a single node keeps them).
    Cancelled,
}

impl Outcome {
    /// (state, history kind, attempt given back, delay ms, result, error).
    fn columns(
        &self,
    ) -> (
        &'static str,
        &'static str,
        i32,
        i64,
        Option<&str>,
        Option<&str>,
    ) {
        match self {
            Outcome::Succeeded(r) => ("succeeded", "succeeded", 0, 0, Some(r), None),
            Outcome::Retrying {
                delay_ms,
                error,
                counts,
            } => (
                "retrying",
                "retrying",
                i32::from(!counts),
                *delay_ms,
                None,
                Some(error),
            ),
            Outcome::DeadLettered(e) => ("failed", "dead_lettered", 0, 0, None, Some(e)),
            Outcome::Requeued(e) => ("pending", "requeued", 0, 0, None, Some(e)),
            Outcome::Released(e) => ("pending", "released", 1, 0, None, Some(e)),
            Outcome::Cancelled => ("cancelled", "cancelled", 0, 0, None, None),
        }
    }
}

/// A claimed job's end, fenced by the claim.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The job.
    pub id: JobId,
    /// The claim it ends.
    pub claim_no: i64,
    /// What became of it.
    pub outcome: Outcome,
    /// The records its attempt stored (key, value), written with it or not at all.
    pub records: Vec<(String, serde_json::Value)>,
}

/// The jobs table of one schema, reached through a pool.
#[derive(Clone)]
pub struct Jobs {
    pub(super) pool: Pool,
    pub(super) target: Target,
    pub(super) schema: String,
    pub(super) node: String,
    /// Whether the records a completion changes also get a sink outbox row (`sink_outbox.rs`):
    /// on from before anything runs when `[sinks.postgres]` is configured.
    pub(super) outbox: Arc<AtomicBool>,
}

impl Jobs {
    /// A connection from the pool (statements name the schema: see [`Jobs::t`]).
    pub(super) async fn client(&self) -> Result<Object, Failure> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| self.target.pool_failure(e))?;
        Ok(client)
    }

    /// A driver error, classified and naming the server.
    pub(super) fn pg(&self) -> impl Fn(tokio_postgres::Error) -> Failure + '_ {
        move |e| self.target.failure(&e)
    }

    /// The NOTIFY channel `what` of this schema (channels are database-wide; schemas are not).
    pub fn channel(&self, what: &str) -> String {
        format!("{}_{what}", self.schema)
    }

    /// Announces new jobs of `pipeline` to every node.
    pub async fn wake(&self, pipeline: &str) -> Result<(), Failure> {
        let client = self.client().await?;
        client
            .execute(
                "SELECT pg_notify($1, $2)",
                &[&self.channel(WAKE), &pipeline],
            )
            .await
            .map_err(self.pg())?;
        Ok(())
    }

    /// `table` qualified with the schema (a checked identifier).
    pub(super) fn t(&self, table: &str) -> String {
        format!("{}.{table}", self.schema)
    }

    /// Inserts `rows` (their keys and ticks distinct); returns, for each, the id of the job that
    /// holds its place, with whether it was deduplicated: its own; for a schedule tick, the job
    /// that tick got first (on whichever node fired it); else that of the unfinished job already
    /// holding its `unique_key`. One statement per round; a key whose holder finished between
    /// the insert and the look-up is inserted again on the next round.
    pub async fn insert(&self, rows: &[NewRow]) -> Result<Vec<(JobId, bool)>, Failure> {
        let client = self.client().await?;
        let mut answer: Vec<Option<(JobId, bool)>> = vec![None; rows.len()];
        for _round in 0..3 {
            let todo: Vec<usize> = (0..rows.len()).filter(|i| answer[*i].is_none()).collect();
            if todo.is_empty() {
                break;
            }
            self.insert_round(&client, rows, &todo, &mut answer).await?;
        }
        answer
            .into_iter()
            .map(|a| {
                a.ok_or_else(|| {
                    Failure::Unavailable(format!(
                        "{}: a unique_key kept changing hands while it was submitted; retry",
                        self.target.shown
                    ))
                })
            })
            .collect()
    }

    /// Inserts the rows `todo`, then answers those inserted and those whose place is held.
    async fn insert_round(
        &self,
        client: &Object,
        rows: &[NewRow],
        todo: &[usize],
        answer: &mut [Option<(JobId, bool)>],
    ) -> Result<(), Failure> {
        let inserted = self.insert_once(client, rows, todo).await?;
        let mut keyed = Vec::new();
        let mut ticked = Vec::new();
        for &i in todo {
            let row = &rows[i];
            if inserted.contains(&row.id.0) {
                answer[i] = Some((row.id, false));
            } else if let Some(t) = &row.tick {
                ticked.push((i, t.clone()));
            } else if let Some(k) = &row.unique_key {
                keyed.push((i, k.clone()));
            }
        }
        let holders = self.holders(client, &keyed).await?;
        for (i, k) in keyed {
            if let Some(id) = holders.get(&k) {
                answer[i] = Some((*id, true));
            }
        }
        let fired = self.tick_jobs(client, &ticked).await?;
        for (i, t) in ticked {
            if let Some(id) = fired.get(&t) {
                answer[i] = Some((*id, true));
            }
        }
        Ok(())
    }

    /// One statement: the tick rows first, then the jobs, those with a tick only where this
    /// statement recorded the tick. Returns the ids inserted; none when a tick's job lost its
    /// key to a submit committed meanwhile (the statement failed as a whole, the tick included,
    /// and the next round finds that holder).
    async fn insert_once(
        &self,
        client: &Object,
        rows: &[NewRow],
        todo: &[usize],
    ) -> Result<std::collections::HashSet<Uuid>, Failure> {
        let c = InsertColumns::of(rows, todo);
        let values = format!(
            "d.id, d.name, d.pipeline, d.priority, 'pending', \
             coalesce(to_timestamp(d.run_at / 1000.0), now()), d.max_retries, d.params, d.unique_key, {}",
            event("'submitted'", "0", "NULL::text"),
        );
        // A tick whose key an unfinished job holds already (a client's submit) records that
        // job, so the tick row never names a job that was not inserted. The jobs of ticks
        // insert without ON CONFLICT: losing the key to a concurrent submit fails the whole
        // statement rather than leave a tick row pointing at nothing.
        let sql = format!(
            "WITH d AS (
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int2[], $5::int8[], $6::int4[],
                                      $7::text[], $8::text[], $9::text[], $10::int8[])
                 AS d(id, name, pipeline, priority, run_at, max_retries, params, unique_key, schedule, tick_ms)),
             ticks AS (
                 INSERT INTO {ticks} (schedule, tick, job_id, node)
                 SELECT d.schedule, to_timestamp(d.tick_ms / 1000.0),
                        coalesce((SELECT h.id FROM {jobs} h
                                  WHERE h.unique_key = d.unique_key AND h.state IN {UNFINISHED}), d.id),
                        $11
                 FROM d WHERE d.schedule IS NOT NULL
                 ON CONFLICT (schedule, tick) DO NOTHING
                 RETURNING job_id),
             plain AS (
                 INSERT INTO {jobs} ({JOB_COLUMNS}) SELECT {values} FROM d WHERE d.schedule IS NULL
                 ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN {UNFINISHED} DO NOTHING
                 RETURNING id),
             fired AS (
                 INSERT INTO {jobs} ({JOB_COLUMNS}) SELECT {values} FROM d JOIN ticks ON ticks.job_id = d.id
                 RETURNING id)
             SELECT id FROM plain UNION ALL SELECT id FROM fired",
            jobs = self.t("jobs"),
            ticks = self.t("schedule_ticks"),
        );
        let found = client
            .query(
                &sql,
                &[
                    &c.ids,
                    &c.names,
                    &c.pipes,
                    &c.prios,
                    &c.run_at,
                    &c.retries,
                    &c.params,
                    &c.keys,
                    &c.schedules,
                    &c.tick_ms,
                    &self.node,
                ],
            )
            .await;
        match found {
            Ok(found) => Ok(found.iter().map(|r| r.get::<_, Uuid>(0)).collect()),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(Default::default()),
            Err(e) => Err(self.target.failure(&e)),
        }
    }

    /// The unfinished job holding each key.
    async fn holders(
        &self,
        client: &Object,
        keyed: &[(usize, String)],
    ) -> Result<std::collections::HashMap<String, JobId>, Failure> {
        if keyed.is_empty() {
            return Ok(Default::default());
        }
        let keys: Vec<&str> = keyed.iter().map(|(_, k)| k.as_str()).collect();
        let sql = format!(
            "SELECT unique_key, id FROM {} WHERE unique_key = ANY($1) AND state IN {UNFINISHED}",
            self.t("jobs")
        );
        let rows = client.query(&sql, &[&keys]).await.map_err(self.pg())?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), JobId(r.get(1))))
            .collect())
    }

    /// The job each tick got, whichever node recorded it.
    async fn tick_jobs(
        &self,
        client: &Object,
        ticked: &[(usize, ScheduleTick)],
    ) -> Result<std::collections::HashMap<ScheduleTick, JobId>, Failure> {
        if ticked.is_empty() {
            return Ok(Default::default());
        }
        let schedules: Vec<&str> = ticked.iter().map(|(_, t)| t.schedule.as_str()).collect();
        let ms: Vec<i64> = ticked.iter().map(|(_, t)| t.tick_ms).collect();
        let sql = format!(
            "SELECT d.schedule, d.tick_ms, t.job_id
             FROM unnest($1::text[], $2::int8[]) AS d(schedule, tick_ms)
             JOIN {} t ON t.schedule = d.schedule AND t.tick = to_timestamp(d.tick_ms / 1000.0)",
            self.t("schedule_ticks")
        );
        let rows = client
            .query(&sql, &[&schedules, &ms])
            .await
            .map_err(self.pg())?;
        Ok(rows
            .iter()
            .map(|r| {
                let tick = ScheduleTick {
                    schedule: r.get(0),
                    tick_ms: r.get(1),
                };
                (tick, JobId(r.get(2)))
            })
            .collect())
    }

    /// Claims up to `n` runnable jobs of `pipeline` for this node, in run order (priority, then
    /// due time, then id), skipping rows another node is claiming. With `aging` (`[jobs]
    /// max_wait`, given while [`Jobs::aging`] found a job waiting that long) the order is by
    /// effective priority instead, the single node's aging: every `max_wait` a job has been
    /// runnable promotes it one level.
    ///
    /// Ordering the whole backlog by an expression would sort it at every claim, so the aged
    /// claim takes as candidates the oldest runnable jobs of each priority (`CANDIDATES` more
    /// than asked, three index range scans): within one priority the oldest is promoted the
    /// most, so the best `n` are among them, with room to skip rows other nodes hold. It does
    /// more per claim than the plain one (three scans and a sort), hence only while some job
    /// has waited `max_wait`.
    pub async fn claim(
        &self,
        pipeline: &str,
        n: usize,
        aging: Option<std::time::Duration>,
    ) -> Result<Vec<Claimed>, Failure> {
        const CANDIDATES: i64 = 64;
        let client = self.client().await?;
        let jobs = self.t("jobs");
        // A pause holds from its commit, whatever a node's heartbeat last read.
        let unpaused = format!(
            "NOT EXISTS (SELECT 1 FROM {} WHERE pipeline = $1)",
            self.t("paused_pipelines")
        );
        let next = match aging {
            None => format!(
                "next AS (
                 SELECT id FROM {jobs}
                 WHERE pipeline = $1 AND state IN ('pending', 'retrying') AND run_at <= now()
                   AND {unpaused}
                 ORDER BY priority, run_at, id
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED)"
            ),
            Some(_) => format!(
                "cand AS (
                 SELECT c.id, greatest(0, c.priority - floor(
                            extract(epoch FROM now() - c.run_at) * 1000 / $4::float8)::int) AS level,
                        c.run_at
                 FROM unnest(ARRAY[0, 1, 2]::int2[]) AS p(priority),
                      LATERAL (SELECT id, priority, run_at FROM {jobs}
                               WHERE pipeline = $1 AND state IN ('pending', 'retrying')
                                 AND priority = p.priority AND run_at <= now()
                               ORDER BY run_at, id LIMIT $2::int8 + {CANDIDATES}) c
                 WHERE {unpaused}),
             next AS (
                 SELECT j.id FROM {jobs} j JOIN cand ON cand.id = j.id
                 WHERE j.state IN ('pending', 'retrying')
                 ORDER BY cand.level, cand.run_at, j.id
                 LIMIT $2
                 FOR UPDATE OF j SKIP LOCKED)"
            ),
        };
        let sql = format!(
            "WITH {next}
             UPDATE {jobs} j
             SET state = 'running', claimed_by = $3, claimed_at = now(), started_at = now(),
                 attempt = j.attempt + 1, claim_no = j.claim_no + 1, cancel_requested = false,
                 history = j.history || {started}
             FROM next WHERE j.id = next.id
             RETURNING j.id, j.name, j.params, j.attempt, j.max_retries, j.claim_no",
            started = event("'started'", "j.attempt + 1", "$3::text"),
        );
        let limit = i64::try_from(n).unwrap_or(i64::MAX);
        // At least a millisecond: a zero max_wait would divide by zero.
        let max_wait_ms = aging.map(|w| w.as_millis().clamp(1, i64::MAX as u128) as f64);
        let rows = match &max_wait_ms {
            None => client.query(&sql, &[&pipeline, &limit, &self.node]).await,
            Some(ms) => {
                client
                    .query(&sql, &[&pipeline, &limit, &self.node, ms])
                    .await
            }
        }
        .map_err(self.pg())?;
        Ok(rows
            .iter()
            .map(|r| Claimed {
                id: JobId(r.get(0)),
                name: r.get(1),
                params: r.get(2),
                attempt: r.get::<_, i32>(3).max(0) as u32,
                max_retries: r.get::<_, i32>(4).max(0) as u32,
                claim_no: r.get(5),
            })
            .collect())
    }

    /// Of `pipelines`, whether each has a runnable job of normal or low priority that has waited
    /// `max_wait` or more: then its claims must age (see [`Jobs::claim`]). Two index probes per
    /// pipeline, one statement.
    pub async fn aging(
        &self,
        pipelines: &[String],
        max_wait: std::time::Duration,
    ) -> Result<Vec<bool>, Failure> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {} j WHERE j.pipeline = p.name
                 AND j.state IN ('pending', 'retrying') AND j.priority IN (1, 2)
                 AND j.run_at <= now() - $2::int8 * interval '1 millisecond')
             FROM unnest($1::text[]) WITH ORDINALITY AS p(name, n) ORDER BY p.n",
            self.t("jobs")
        );
        let ms = max_wait.as_millis() as i64;
        let rows = client
            .query(&sql, &[&pipelines, &ms])
            .await
            .map_err(self.pg())?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Writes the ends of claimed jobs, and the records their attempts stored (with their sink
    /// outbox rows when the sink is on), in one statement; the same statement nudges the leader
    /// (`ADVANCE`, delivered at its commit) when one of them was a batch child or a workflow
    /// step that ended. The nudge's CTE is read by the final `SELECT` only so that it runs: no
    /// second round trip on the completion path. A completion whose claim is no
    /// longer this node's (rescued by the leader, cancelled) changes nothing and writes none of
    /// its records: the ids written are returned, the others were fenced out. The exception is
    /// [`Outcome::Cancelled`], the attempt of a job cancelled while it ran here: its end is the
    /// cancel's, left as it is, and its records are written as long as the job is still that
    /// cancelled claim.
    pub async fn complete(&self, done: &[Completion]) -> Result<Vec<JobId>, Failure> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let mut cols = CompletionColumns::default();
        for c in done {
            cols.push(c);
        }
        let recs = RecordColumns::of(done);
        let sql = format!(
            "WITH done AS (
             UPDATE {jobs} j
             SET state = d.state,
                 attempt = j.attempt - d.given_back,
                 run_at = CASE WHEN d.state IN ('retrying', 'pending')
                               THEN now() + d.delay_ms * interval '1 millisecond' ELSE j.run_at END,
                 completed_at = CASE WHEN d.state IN ('succeeded', 'failed') THEN now()
                                     WHEN d.state = 'cancelled' THEN j.completed_at END,
                 result = coalesce(d.result, j.result),
                 error = CASE WHEN d.state = 'succeeded' THEN NULL
                              WHEN d.state = 'cancelled' THEN j.error ELSE d.error END,
                 history = CASE WHEN d.state = 'cancelled' THEN j.history
                                ELSE j.history || {ended} END
             FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::int4[], $6::int8[], $7::text[], $8::text[])
                  AS d(id, claim_no, state, kind, given_back, delay_ms, result, error)
             WHERE j.id = d.id AND j.claim_no = d.claim_no AND j.claimed_by = $9
               AND (j.state = 'running' OR (d.state = 'cancelled' AND j.state = 'cancelled'))
             RETURNING j.id, (j.parent_id IS NOT NULL OR j.workflow_id IS NOT NULL)
                 AND j.state IN ('succeeded', 'failed', 'cancelled') AS moves_on),
             {records},
             nudged AS (SELECT pg_notify($13, '') FROM done WHERE moves_on LIMIT 1)
             SELECT id, (SELECT count(*) FROM nudged) FROM done",
            jobs = self.t("jobs"),
            ended = event("d.kind", "j.attempt - d.given_back", "d.error"),
            records = self.records_ctes(10, 11, 12),
        );
        let rows = client
            .query(
                &sql,
                &[
                    &cols.ids,
                    &cols.claims,
                    &cols.states,
                    &cols.kinds,
                    &cols.given_back,
                    &cols.delays,
                    &cols.results,
                    &cols.errors,
                    &self.node,
                    &recs.jobs,
                    &recs.keys,
                    &recs.values,
                    &self.channel(ADVANCE),
                ],
            )
            .await
            .map_err(self.pg())?;
        Ok(rows.iter().map(|r| JobId(r.get(0))).collect())
    }

    /// The CTEs that upsert the records of the jobs the CTE `done` wrote ([`upsert_cte`]; the
    /// parameter numbers of [`RecordColumns`]), and enqueue those changed for the sink when it
    /// is on (`sink_outbox.rs`).
    pub(super) fn records_ctes(&self, jobs: u8, keys: u8, values: u8) -> String {
        let mut ctes = upsert_cte(&self.t("records"), jobs, keys, values);
        if self.outbox.load(Ordering::Acquire) {
            ctes.push_str(&outbox_cte(&self.t("sink_outbox")));
        }
        ctes
    }

    /// [`RECORD_COLUMNS`] and then the ids of the job's children (a batch job's, in id order,
    /// by the `parent_id` index), for a statement on the unaliased jobs table: the columns
    /// [`Jobs::record`] reads.
    pub(super) fn record_columns(&self) -> String {
        format!(
            "{RECORD_COLUMNS}, \
             ARRAY(SELECT c.id FROM {jobs} c WHERE c.parent_id = jobs.id ORDER BY c.id)",
            jobs = self.t("jobs")
        )
    }

    /// The record of `id`.
    pub async fn get(&self, id: JobId) -> Result<Option<JobRecord>, Failure> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM {} WHERE id = $1",
            self.record_columns(),
            self.t("jobs")
        );
        let row = client.query_opt(&sql, &[&id.0]).await.map_err(self.pg())?;
        row.map(|r| self.record(&r)).transpose()
    }

    /// Newest first: jobs in `status` (any when None) whose name is LIKE any of `names` (any
    /// when None), older than `before`, at most `limit`.
    pub async fn list(
        &self,
        status: Option<JobStatus>,
        names: Option<&[String]>,
        before: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<JobRecord>, Failure> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM {} \
             WHERE ($1::text IS NULL OR state = $1) AND ($2::text[] IS NULL OR name LIKE ANY($2)) \
               AND ($3::uuid IS NULL OR id < $3) \
             ORDER BY id DESC LIMIT $4",
            self.record_columns(),
            self.t("jobs")
        );
        let status = status.map(JobStatus::as_str);
        let before = before.map(|b| b.0);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(&sql, &[&status, &names, &before, &limit])
            .await
            .map_err(self.pg())?;
        rows.iter().map(|r| self.record(r)).collect()
    }

    /// A row of [`Jobs::record_columns`] as a record.
    pub(super) fn record(&self, r: &Row) -> Result<JobRecord, Failure> {
        let corrupt = |what: String| {
            Failure::Rejected(format!(
                "{}: job {}: {what}",
                self.target.shown,
                r.get::<_, Uuid>(0)
            ))
        };
        let state: String = r.get(4);
        let status: JobStatus = state.parse().map_err(|e| corrupt(format!("state: {e}")))?;
        let history: String = r.get(17);
        let history: Vec<JobEvent> =
            serde_json::from_str(&history).map_err(|e| corrupt(format!("history: {e}")))?;
        Ok(JobRecord {
            id: JobId(r.get(0)),
            name: r.get(1),
            pipeline: r.get(2),
            priority: priority_of(r.get(3)),
            status,
            attempts: r.get::<_, i32>(5).max(0) as u32,
            max_retries: r.get::<_, i32>(6).max(0) as u32,
            unique_key: r.get(7),
            created_at: r.get(8),
            started_at: r.get(9),
            completed_at: r.get(10),
            next_attempt_at: r.get(11),
            error: r.get(12),
            result: r.get(13),
            parent_id: r.get::<_, Option<Uuid>>(14).map(JobId),
            workflow_id: r.get(15),
            children: r.get::<_, Vec<Uuid>>(18).into_iter().map(JobId).collect(),
            params: r.get(16),
            history,
        })
    }
}

/// The columns of a batch of completions, for `unnest`.
#[derive(Default)]
struct CompletionColumns<'a> {
    ids: Vec<Uuid>,
    claims: Vec<i64>,
    states: Vec<&'static str>,
    kinds: Vec<&'static str>,
    given_back: Vec<i32>,
    delays: Vec<i64>,
    results: Vec<Option<&'a str>>,
    errors: Vec<Option<&'a str>>,
}

impl<'a> CompletionColumns<'a> {
    fn push(&mut self, c: &'a Completion) {
        let (state, kind, given_back, delay, result, error) = c.outcome.columns();
        self.ids.push(c.id.0);
        self.claims.push(c.claim_no);
        self.states.push(state);
        self.kinds.push(kind);
        self.given_back.push(given_back);
        self.delays.push(delay);
        self.results.push(result);
        self.errors.push(error);
    }
}

/// A priority as the table stores it: ascending is the run order.
pub fn priority_no(p: Priority) -> i16 {
    match p {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

fn priority_of(n: i16) -> Priority {
    match n {
        0 => Priority::High,
        2 => Priority::Low,
        _ => Priority::Normal,
    }
}

/// Most `LIKE` patterns one glob's alternatives expand to; a glob with more is filtered by the
/// caller.
const MAX_PATTERNS: usize = 256;

/// A name glob as `LIKE` patterns, any of which matches: `{a,b}` alternatives become one pattern
/// each (the console folds a pipeline's names into one such glob). None when a pattern has a
/// class of more than one character or the glob expands to more than `MAX_PATTERNS`: the
/// caller filters such globs itself.
pub fn like_patterns(glob: &str) -> Option<Vec<String>> {
    let mut globs = Vec::new();
    expand(glob, &mut globs)?;
    globs.iter().map(|g| like_pattern(g)).collect()
}

/// Pushes the brace-free globs `glob` stands for onto `out`; None when it is malformed or
/// expands to too many.
fn expand(glob: &str, out: &mut Vec<String>) -> Option<()> {
    let Some((open, close, commas)) = first_braces(glob)? else {
        out.push(glob.to_string());
        return (out.len() <= MAX_PATTERNS).then_some(());
    };
    let (head, tail) = (&glob[..open], &glob[close + 1..]);
    let mut start = open + 1;
    for end in commas.into_iter().chain([close]) {
        expand(&format!("{head}{}{tail}", &glob[start..end]), out)?;
        start = end + 1;
    }
    Some(())
}

/// The byte offsets of the first top-level `{`, its `}` and the commas between them at its
/// depth; `Some(None)` when there is none, None when the braces or a class do not close.
#[allow(clippy::type_complexity)]
fn first_braces(glob: &str) -> Option<Option<(usize, usize, Vec<usize>)>> {
    let bytes = glob.as_bytes();
    let (mut depth, mut open, mut commas, mut i) = (0usize, 0usize, Vec::new(), 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            // A class: `]` right after `[` (or `[!`) is a member, not its end.
            b'[' => {
                let from = i + 1 + usize::from(bytes.get(i + 1) == Some(&b'!')) + 1;
                i = from + glob.get(from..)?.find(']')?;
            }
            b'{' => {
                depth += 1;
                if depth == 1 {
                    open = i;
                }
            }
            b',' if depth == 1 => commas.push(i),
            b'}' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    return Some(Some((open, i, commas)));
                }
            }
            _ => {}
        }
        i += 1;
    }
    (depth == 0).then_some(None)
}

/// A brace-free name glob as a `LIKE` pattern: `*` and `?` become LIKE's wildcards, an escaped
/// character (`\*`) and a one-character class (`[*]`, as `globset::escape` writes a literal)
/// that character, with LIKE's own wildcards escaped. None for any other class or a brace.
pub fn like_pattern(glob: &str) -> Option<String> {
    let mut out = String::with_capacity(glob.len());
    let mut chars = glob.chars();
    while let Some(c) = chars.next() {
        let literal = match c {
            '*' => {
                out.push('%');
                continue;
            }
            '?' => {
                out.push('_');
                continue;
            }
            '\\' => chars.next()?,
            '[' => {
                let (x, close) = (chars.next()?, chars.next()?);
                if close != ']' || x == '!' {
                    return None;
                }
                x
            }
            ']' | '{' | '}' => return None,
            c => c,
        };
        push_like_literal(&mut out, literal);
    }
    Some(out)
}

/// Pushes `c` onto a `LIKE` pattern as itself: LIKE's wildcards and its escape are escaped.
pub(super) fn push_like_literal(out: &mut String, c: char) {
    if matches!(c, '%' | '_' | '\\') {
        out.push('\\');
    }
    out.push(c);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures that simple globs become LIKE patterns with LIKE's own wildcards escaped, and
    /// that classes and alternatives are left to the caller.
    #[test]
    fn globs_become_like_patterns() {
        assert_eq!(like_pattern("sec.*").as_deref(), Some("sec.%"));
        assert_eq!(like_pattern("a_b?").as_deref(), Some("a\\_b_"));
        assert_eq!(
            like_pattern("builtin.noop").as_deref(),
            Some("builtin.noop")
        );
        assert_eq!(like_pattern("sec.{a,b}"), None);
        assert_eq!(like_pattern("sec.[ab]"), None);
    }

    /// Ensures that alternatives expand to one pattern each (nested ones too), that the
    /// literals `globset::escape` writes become plain characters, and that wider classes and
    /// unclosed braces are left to the caller.
    #[test]
    fn alternatives_become_patterns() {
        let folded = format!(
            "{{{},{}}}",
            globset::escape("sec.filings"),
            globset::escape("sec.we*r_d")
        );
        assert_eq!(
            like_patterns(&folded),
            Some(vec!["sec.filings".into(), "sec.we*r\\_d".into()])
        );
        assert_eq!(
            like_patterns("a.{b,c{d,e}}*"),
            Some(vec!["a.b%".into(), "a.cd%".into(), "a.ce%".into()])
        );
        assert_eq!(like_patterns("[{]x"), Some(vec!["{x".into()]));
        assert_eq!(like_patterns("a.{b,[xy]}"), None);
        assert_eq!(like_patterns("a.{b"), None);
    }

    /// Ensures that priorities keep their order through the table's numbers.
    #[test]
    fn priorities_round_trip_in_order() {
        for p in Priority::ALL {
            assert_eq!(priority_of(priority_no(p)), p);
        }
        assert!(priority_no(Priority::High) < priority_no(Priority::Low));
    }
}
