//! Workflows in cluster mode (`submit_workflow`, docs/protocol.md), with the single node's
//! semantics: a chain runs its steps one by one, each with the previous result as
//! `params.input`, and a failed step cancels the steps after it; a group runs its members at
//! once and then its optional `then` job with `params.results` in order (also after failures
//! with `allow_failures`, the errors in place; else `then` is cancelled).
//!
//! - Any node accepts a workflow: its row in `workflows` and all its jobs in one statement. A
//!   step that must wait is *held*: a pending job whose `run_at` is `'infinity'`, so no claim
//!   reaches it, and it is unfinished and cancellable like any pending job.
//! - The leader moves workflows on at each of its rounds ([`Jobs::advance_workflows`]): it
//!   takes the open workflows with no job runnable or running (so one whose last step just
//!   ended, whichever node ran it), decides as the single node does ([`next_moves`]), and
//!   releases (`params` set, `run_at = now()`), cancels, or closes them. A step starts up to a
//!   round (a second) after the one it waits for. One mover means no two nodes race over a
//!   workflow; every write is conditional, so a second leader during a hand-over changes
//!   nothing twice.

use std::collections::HashMap;

use serde_json::{json, Value};
use uuid::Uuid;

use super::store::{event, Jobs, NewRow, UNFINISHED};
use crate::job::{JobId, JobStatus, WorkflowKind, WorkflowRecord};
use crate::postgres::{jsonb_text, Failure};

/// Open workflows moved on per round of the leader (the rest wait for the next round).
const WORKFLOWS_PER_ROUND: i64 = 100;

/// A workflow to insert: its structure and its jobs (steps or members in order, then `then`).
#[derive(Debug, Clone)]
pub struct NewWorkflow {
    /// Its id.
    pub id: Uuid,
    /// Chain or group.
    pub kind: WorkflowKind,
    /// Its jobs, `then` last when there is one.
    pub rows: Vec<NewRow>,
    /// Whether the last row is the group's `then`.
    pub has_then: bool,
    /// A group's `then` also runs after failures.
    pub allow_failures: bool,
}

impl NewWorkflow {
    /// Whether the job at `i` waits to be released: a chain step after the first, a `then`.
    fn held(&self, i: usize) -> bool {
        match self.kind {
            WorkflowKind::Chain => i > 0,
            WorkflowKind::Group => self.has_then && i + 1 == self.rows.len(),
        }
    }
}

/// A workflow job as the leader sees it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Step {
    pub(super) status: JobStatus,
    /// Pending and waiting to be released.
    pub(super) held: bool,
    pub(super) result: Option<String>,
    pub(super) error: Option<String>,
}

/// What the leader does to one workflow in a round.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Moves {
    /// Held jobs to release with `params[key] = value`.
    pub(super) release: Vec<(JobId, &'static str, Value)>,
    /// Held jobs to cancel, with why.
    pub(super) cancel: Vec<(JobId, String)>,
    /// Nothing will be left to release or cancel: close the workflow.
    pub(super) close: bool,
}

impl Jobs {
    /// Inserts `wf`: its row and its jobs, in one statement.
    pub async fn submit_workflow(&self, wf: &NewWorkflow) -> Result<(), Failure> {
        let client = self.client().await?;
        let rows = &wf.rows;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id.0).collect();
        let then = wf.has_then.then(|| ids[ids.len() - 1]);
        let steps: Vec<Uuid> = ids.iter().copied().filter(|i| Some(*i) != then).collect();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        let pipes: Vec<&str> = rows.iter().map(|r| r.pipeline.as_str()).collect();
        let prios: Vec<i16> = rows
            .iter()
            .map(|r| super::store::priority_no(r.priority))
            .collect();
        let retries: Vec<i32> = rows
            .iter()
            .map(|r| i32::try_from(r.max_retries).unwrap_or(i32::MAX))
            .collect();
        let params: Vec<&str> = rows.iter().map(|r| r.params.as_str()).collect();
        let held: Vec<bool> = (0..rows.len()).map(|i| wf.held(i)).collect();
        let sql = format!(
            "WITH wf AS (
                 INSERT INTO {workflows} (id, kind, steps, then_id, allow_failures)
                 VALUES ($1, $2, $3, $4, $5) RETURNING id)
             INSERT INTO {jobs} (id, name, pipeline, priority, state, run_at, max_retries, params,
                                 workflow_id, history)
             SELECT d.id, d.name, d.pipeline, d.priority, 'pending',
                    CASE WHEN d.held THEN 'infinity'::timestamptz ELSE now() END,
                    d.max_retries, d.params, wf.id, {submitted}
             FROM unnest($6::uuid[], $7::text[], $8::text[], $9::int2[], $10::int4[], $11::text[],
                         $12::bool[]) AS d(id, name, pipeline, priority, max_retries, params, held),
                  wf",
            workflows = self.t("workflows"),
            jobs = self.t("jobs"),
            submitted = event("'submitted'", "0", "$2 || ' workflow ' || wf.id::text"),
        );
        client
            .execute(
                &sql,
                &[
                    &wf.id,
                    &wf.kind.as_str(),
                    &steps,
                    &then,
                    &wf.allow_failures,
                    &ids,
                    &names,
                    &pipes,
                    &prios,
                    &retries,
                    &params,
                    &held,
                ],
            )
            .await
            .map_err(self.pg())?;
        Ok(())
    }

    /// The structure of workflow `id`.
    pub async fn workflow(&self, id: Uuid) -> Result<Option<WorkflowRecord>, Failure> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT kind, steps, then_id, allow_failures, (extract(epoch FROM created_at) * 1000)::int8
             FROM {} WHERE id = $1",
            self.t("workflows")
        );
        let row = client.query_opt(&sql, &[&id]).await.map_err(self.pg())?;
        row.map(|r| {
            let kind: String = r.get(0);
            Ok(WorkflowRecord {
                id,
                kind: kind.parse().map_err(|e| {
                    Failure::Rejected(format!("{}: workflow {id}: kind: {e}", self.target.shown))
                })?,
                jobs: r.get::<_, Vec<Uuid>>(1).into_iter().map(JobId).collect(),
                then: r.get::<_, Option<Uuid>>(2).map(JobId),
                allow_failures: r.get(3),
                created_at: r.get(4),
            })
        })
        .transpose()
    }

    /// Whether `job` is a held workflow step.
    pub async fn is_held(&self, job: JobId) -> Result<bool, Failure> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT count(*) FROM {} WHERE id = $1 AND state = 'pending' AND run_at = 'infinity'",
            self.t("jobs")
        );
        let row = client.query_one(&sql, &[&job.0]).await.map_err(self.pg())?;
        Ok(row.get::<_, i64>(0) == 1)
    }

    /// The leader's round: moves on up to `WORKFLOWS_PER_ROUND` open workflows that have no
    /// job runnable or running. Returns the pipelines of the jobs it released (to wake them).
    pub async fn advance_workflows(&self) -> Result<Vec<String>, Failure> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(self.pg())?;
        let ready = format!(
            "SELECT w.id, w.kind, w.steps, w.then_id, w.allow_failures FROM {workflows} w
             WHERE w.finished_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM {jobs} j WHERE j.workflow_id = w.id
                               AND j.state IN {UNFINISHED} AND j.run_at <> 'infinity')
             ORDER BY w.id LIMIT $1 FOR UPDATE SKIP LOCKED",
            workflows = self.t("workflows"),
            jobs = self.t("jobs"),
        );
        let rows = tx
            .query(&ready, &[&WORKFLOWS_PER_ROUND])
            .await
            .map_err(self.pg())?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let wfs: Vec<WorkflowRecord> = rows
            .iter()
            .map(|r| WorkflowRecord {
                id: r.get(0),
                kind: r.get::<_, String>(1).parse().unwrap_or(WorkflowKind::Chain),
                jobs: r.get::<_, Vec<Uuid>>(2).into_iter().map(JobId).collect(),
                then: r.get::<_, Option<Uuid>>(3).map(JobId),
                allow_failures: r.get(4),
                created_at: 0,
            })
            .collect();
        let ids: Vec<Uuid> = wfs.iter().map(|w| w.id).collect();
        let steps = self.steps(&tx, &ids).await?;
        let mut all = Moves::default();
        let mut closed = Vec::new();
        for wf in &wfs {
            let m = next_moves(wf, &steps);
            if m.close {
                closed.push(wf.id);
            }
            all.release.extend(m.release);
            all.cancel.extend(m.cancel);
        }
        let woken = self.apply(&tx, &all, &closed).await?;
        tx.commit().await.map_err(self.pg())?;
        Ok(woken)
    }

    /// Every job of the workflows `ids`, by id.
    async fn steps(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        ids: &[Uuid],
    ) -> Result<HashMap<JobId, Step>, Failure> {
        let sql = format!(
            "SELECT id, state, run_at = 'infinity', result, error FROM {} WHERE workflow_id = ANY($1)",
            self.t("jobs")
        );
        let rows = tx.query(&sql, &[&ids]).await.map_err(self.pg())?;
        Ok(rows
            .iter()
            .map(|r| {
                // A state this code does not know counts as failed: the workflow moves on.
                let status = r.get::<_, &str>(1).parse().unwrap_or(JobStatus::Failed);
                let step = Step {
                    status,
                    held: status == JobStatus::Pending && r.get::<_, bool>(2),
                    result: r.get(3),
                    error: r.get(4),
                };
                (JobId(r.get(0)), step)
            })
            .collect())
    }

    /// Writes a round's moves; returns the released jobs' pipelines.
    async fn apply(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        moves: &Moves,
        closed: &[Uuid],
    ) -> Result<Vec<String>, Failure> {
        let jobs = self.t("jobs");
        let ids: Vec<Uuid> = moves.release.iter().map(|(j, _, _)| j.0).collect();
        let keys: Vec<&str> = moves.release.iter().map(|(_, k, _)| *k).collect();
        let values: Vec<String> = moves
            .release
            .iter()
            .map(|(_, _, v)| jsonb_text(v))
            .collect();
        let release = format!(
            "UPDATE {jobs} j SET run_at = now(),
                 params = ((CASE WHEN jsonb_typeof(j.params::jsonb) = 'object' THEN j.params::jsonb
                                 ELSE '{{}}'::jsonb END)
                           || jsonb_build_object(d.key, d.value::jsonb))::text,
                 history = j.history || {released}
             FROM unnest($1::uuid[], $2::text[], $3::text[]) AS d(id, key, value)
             WHERE j.id = d.id AND j.state = 'pending' AND j.run_at = 'infinity'
             RETURNING j.pipeline",
            released = event("'released'", "j.attempt", "'params.' || d.key || ' set'"),
        );
        let woken = tx
            .query(&release, &[&ids, &keys, &values])
            .await
            .map_err(self.pg())?;
        let ids: Vec<Uuid> = moves.cancel.iter().map(|(j, _)| j.0).collect();
        let whys: Vec<&str> = moves.cancel.iter().map(|(_, w)| w.as_str()).collect();
        let cancel = format!(
            "UPDATE {jobs} j SET state = 'cancelled', completed_at = now(),
                 history = j.history || {cancelled}
             FROM unnest($1::uuid[], $2::text[]) AS d(id, why)
             WHERE j.id = d.id AND j.state = 'pending'",
            cancelled = event("'cancelled'", "j.attempt", "d.why"),
        );
        tx.execute(&cancel, &[&ids, &whys])
            .await
            .map_err(self.pg())?;
        let close = format!(
            "UPDATE {} SET finished_at = now() WHERE id = ANY($1)",
            self.t("workflows")
        );
        tx.execute(&close, &[&closed]).await.map_err(self.pg())?;
        Ok(woken.iter().map(|r| r.get(0)).collect())
    }
}

/// What the leader does to `wf`, whose jobs are in `steps`, when none of them is runnable or
/// running: the single node's decisions (`dispatcher/workflow.rs`).
pub(super) fn next_moves(wf: &WorkflowRecord, steps: &HashMap<JobId, Step>) -> Moves {
    match wf.kind {
        WorkflowKind::Chain => chain_moves(wf, steps),
        WorkflowKind::Group => group_moves(wf, steps),
    }
}

fn chain_moves(wf: &WorkflowRecord, steps: &HashMap<JobId, Step>) -> Moves {
    let mut m = Moves::default();
    let pending = wf.jobs.iter().enumerate().find(|(_, j)| {
        steps
            .get(j)
            .is_some_and(|s| s.status != JobStatus::Succeeded)
    });
    let Some((k, &id)) = pending else {
        m.close = true;
        return m;
    };
    let step = &steps[&id];
    if step.held {
        // Everything before it succeeded: it runs on its predecessor's result.
        let input = k
            .checked_sub(1)
            .and_then(|p| steps.get(&wf.jobs[p]))
            .map_or(Value::Null, result_of);
        m.release.push((id, "input", input));
    } else if step.status.is_finished() {
        let why = format!(
            "step {} of its chain ({id}) {}: {}",
            k + 1,
            step.status.as_str(),
            step.error.as_deref().unwrap_or("no error")
        );
        for later in &wf.jobs[k + 1..] {
            if steps.get(later).is_some_and(|s| s.held) {
                m.cancel.push((*later, why.clone()));
            }
        }
        m.close = true;
    }
    m
}

fn group_moves(wf: &WorkflowRecord, steps: &HashMap<JobId, Step>) -> Moves {
    let mut m = Moves::default();
    let ended: Vec<&Step> = wf.jobs.iter().filter_map(|j| steps.get(j)).collect();
    if ended.iter().any(|s| !s.status.is_finished()) {
        return m;
    }
    let Some(then) = wf.then.and_then(|t| steps.get(&t).map(|s| (t, s))) else {
        m.close = true;
        return m;
    };
    match then {
        (id, s) if s.held => {
            let failed = ended
                .iter()
                .filter(|s| s.status != JobStatus::Succeeded)
                .count();
            if failed == 0 || wf.allow_failures {
                let results = ended.iter().map(|s| member_result(s)).collect();
                m.release.push((id, "results", Value::Array(results)));
            } else {
                let why = format!(
                    "{failed} of the {} jobs of its group did not succeed",
                    ended.len()
                );
                m.cancel.push((id, why));
                m.close = true;
            }
        }
        (_, s) => m.close = s.status.is_finished(),
    }
    m
}

fn result_of(step: &Step) -> Value {
    step.result
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or(Value::Null)
}

/// A member's entry in its group's `params.results`: its result, or its error in place.
fn member_result(step: &Step) -> Value {
    match step.status {
        JobStatus::Succeeded => result_of(step),
        other => {
            json!({ "error": step.error.clone().unwrap_or_else(|| other.as_str().to_string()) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(status: JobStatus, held: bool, result: Option<&str>) -> Step {
        Step {
            status,
            held,
            result: result.map(String::from),
            error: (status == JobStatus::Failed).then(|| "boom".to_string()),
        }
    }

    fn wf(kind: WorkflowKind, jobs: &[JobId], then: Option<JobId>) -> WorkflowRecord {
        WorkflowRecord {
            id: Uuid::now_v7(),
            kind,
            jobs: jobs.to_vec(),
            then,
            allow_failures: false,
            created_at: 0,
        }
    }

    /// Ensures that a chain releases its first held step on the result before it, and that a
    /// failed step cancels the held steps after it and closes the chain.
    #[test]
    fn a_chain_releases_the_next_step_or_cancels_the_rest() {
        let ids: Vec<JobId> = (0..3).map(|_| JobId::new()).collect();
        let chain = wf(WorkflowKind::Chain, &ids, None);
        let mut steps = HashMap::from([
            (
                ids[0],
                step(JobStatus::Succeeded, false, Some(r#"{"n":1}"#)),
            ),
            (ids[1], step(JobStatus::Pending, true, None)),
            (ids[2], step(JobStatus::Pending, true, None)),
        ]);
        let m = next_moves(&chain, &steps);
        assert_eq!(m.release, vec![(ids[1], "input", json!({"n": 1}))]);
        assert!(m.cancel.is_empty() && !m.close);
        steps.insert(ids[1], step(JobStatus::Failed, false, None));
        let m = next_moves(&chain, &steps);
        assert!(m.release.is_empty());
        assert_eq!(m.cancel.len(), 1);
        assert_eq!(m.cancel[0].0, ids[2]);
        assert!(
            m.cancel[0].1.starts_with("step 2 of its chain"),
            "{:?}",
            m.cancel
        );
        assert!(m.close);
    }

    /// Ensures that a group's `then` is released on the results in order, the error in place,
    /// with `allow_failures`, cancelled without it, and that the group closes once `then` ended.
    #[test]
    fn a_group_releases_or_cancels_its_then() {
        let ids: Vec<JobId> = (0..2).map(|_| JobId::new()).collect();
        let then = JobId::new();
        let mut group = wf(WorkflowKind::Group, &ids, Some(then));
        let mut steps = HashMap::from([
            (ids[0], step(JobStatus::Succeeded, false, Some("7"))),
            (ids[1], step(JobStatus::Failed, false, None)),
            (then, step(JobStatus::Pending, true, None)),
        ]);
        let m = next_moves(&group, &steps);
        assert_eq!(m.cancel.len(), 1);
        assert!(m.close);
        group.allow_failures = true;
        let m = next_moves(&group, &steps);
        let results = json!([7, {"error": "boom"}]);
        assert_eq!(m.release, vec![(then, "results", results)]);
        assert!(!m.close);
        steps.insert(then, step(JobStatus::Succeeded, false, None));
        assert!(next_moves(&group, &steps).close);
    }
}
