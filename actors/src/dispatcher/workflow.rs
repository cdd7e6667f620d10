//! Workflows (`submit_workflow`, docs/protocol.md): a chain runs its steps one by one, each
//! with the previous result as `params.input`, and a failed step cancels the steps after it; a
//! group runs its jobs at once and then its optional `then` job with `params.results` in order
//! (also after failures with `allow_failures`, the errors in place; else `then` is cancelled).
//!
//! The structure is journaled with the jobs in one batch. Steps that must wait are pending but
//! not queued ("held"); after a restart, which steps may run is derived again from the journal,
//! so a workflow continues from where it was.

use serde_json::{json, Map, Value};
use tokio::time::Instant;
use uuid::Uuid;

use super::admission::NewJob;
use super::core::{change, DispatcherState};
use crate::job::{now_ms, EventKind, JobId, JobRecord, JobStatus, WorkflowKind, WorkflowRecord};
use crate::protocol::{ApiError, SubmitSpec};
use crate::store::journal::Change;

/// A workflow as submitted, validated.
#[derive(Debug, Clone)]
pub struct WorkflowSpec {
    /// Chain or group.
    pub kind: WorkflowKind,
    /// Steps or members, in order.
    pub jobs: Vec<SubmitSpec>,
    /// A group's final job.
    pub then: Option<SubmitSpec>,
    /// A group's `then` also runs after failures.
    pub allow_failures: bool,
}

impl DispatcherState {
    /// Accepts a workflow: every job and the structure, journaled as one batch.
    pub fn submit_workflow(&mut self, spec: WorkflowSpec) -> Result<(Uuid, Vec<JobId>), ApiError> {
        self.admission_open()?;
        let all: Vec<(SubmitSpec, String)> = spec
            .jobs
            .into_iter()
            .enumerate()
            .map(|(i, s)| (s, format!("jobs[{i}].job")))
            .chain(spec.then.into_iter().map(|s| (s, "then.job".to_string())))
            .collect();
        let mut routed = Vec::with_capacity(all.len());
        for (s, at) in &all {
            routed.push(self.route(&s.name, at)?);
        }
        self.check_capacity(all.len())?;
        let id = Uuid::now_v7();
        let now_ms = now_ms();
        let has_then = spec_then_present(&all);
        let mut recs: Vec<(JobRecord, usize)> = Vec::with_capacity(all.len());
        for ((s, _), (lane, priority)) in all.into_iter().zip(routed) {
            // A step's dedup key and delay do not apply: the workflow decides when it runs.
            let priority = s.priority.unwrap_or(priority);
            let spec = SubmitSpec {
                unique_key: None,
                run_at: None,
                tick: None,
                ..s
            };
            let new = NewJob {
                lane,
                spec,
                priority,
                parent_id: None,
                workflow_id: Some(id),
            };
            let rec = self.pending_record(new, now_ms);
            recs.push((rec, lane));
        }
        let then = if has_then {
            recs.last().map(|(r, _)| r.id)
        } else {
            None
        };
        let steps: Vec<JobId> = recs
            .iter()
            .map(|(r, _)| r.id)
            .filter(|j| Some(*j) != then)
            .collect();
        let wf = WorkflowRecord {
            id,
            kind: spec.kind,
            jobs: steps,
            then,
            allow_failures: spec.allow_failures,
            created_at: now_ms,
        };
        let mut changes =
            vec![Change::workflow(&wf).map_err(|e| ApiError::internal(e.to_string()))?];
        for (rec, _) in &mut recs {
            let detail = Some(format!("{} workflow {id}", wf.kind.as_str()));
            changes.extend(change(rec, EventKind::Submitted, detail));
        }
        self.flush_journal()
            .and_then(|()| self.journal.write(&changes))
            .map_err(|e| self.storage_refusal(&e, super::core::NOTHING_ACCEPTED))?;
        let ids: Vec<JobId> = recs.iter().map(|(r, _)| r.id).collect();
        for (rec, lane) in recs {
            self.meters.job(&rec.name).submitted.increment(1);
            self.totals.submitted += 1;
            let runnable = match wf.kind {
                WorkflowKind::Chain => rec.id == wf.jobs[0],
                WorkflowKind::Group => Some(rec.id) != wf.then,
            };
            self.admit(rec, lane, runnable);
        }
        self.workflows.insert(id, wf);
        self.pump_all();
        Ok((id, ids))
    }

    fn workflow(&mut self, id: Uuid) -> Option<WorkflowRecord> {
        if let Some(w) = self.workflows.get(&id) {
            return Some(w.clone());
        }
        let w = self.journal.get_workflow(id).ok().flatten()?;
        self.workflows.insert(id, w.clone());
        Some(w)
    }

    /// The final record of `id`: `just` when it is the one that just ended, else the journal's.
    fn ended(&mut self, id: JobId, just: &JobRecord) -> Option<JobRecord> {
        if id == just.id {
            return Some(just.clone());
        }
        if self.live.contains_key(&id) {
            return None;
        }
        // Its end may still be among the job loop's gathered changes: write them first.
        if !self.changes.is_empty() {
            let _ = self.flush_journal();
        }
        self.journal.get(id).ok().flatten()
    }

    /// A workflow job ended: release, or cancel, what waited for it.
    pub(super) fn step_finished(&mut self, wf_id: Uuid, rec: &JobRecord) {
        let Some(wf) = self.workflow(wf_id) else {
            return;
        };
        match wf.kind {
            WorkflowKind::Chain => {
                let Some(k) = wf.jobs.iter().position(|j| *j == rec.id) else {
                    return;
                };
                let Some(&next) = wf.jobs.get(k + 1) else {
                    return self.forget_if_done(&wf);
                };
                if rec.status == JobStatus::Succeeded {
                    let input = result_of(rec);
                    self.release(next, "input", input);
                } else {
                    let why = format!(
                        "step {} of its chain ({}) {}: {}",
                        k + 1,
                        rec.id,
                        rec.status.as_str(),
                        rec.error.as_deref().unwrap_or("no error")
                    );
                    for later in &wf.jobs[k + 1..] {
                        if self.live.contains_key(later) {
                            let _ = self.cancel_with(*later, Some(why.clone()));
                        }
                    }
                }
            }
            WorkflowKind::Group => {
                if Some(rec.id) == wf.then {
                    return self.forget_if_done(&wf);
                }
                let Some(then) = wf.then else {
                    return self.forget_if_done(&wf);
                };
                let ended: Option<Vec<JobRecord>> =
                    wf.jobs.iter().map(|j| self.ended(*j, rec)).collect();
                let Some(ended) = ended else { return }; // members still running
                if !self.live.contains_key(&then) {
                    return;
                }
                let failed = ended
                    .iter()
                    .filter(|r| r.status != JobStatus::Succeeded)
                    .count();
                if failed == 0 || wf.allow_failures {
                    let results: Vec<Value> = ended
                        .iter()
                        .map(|r| match r.status {
                            JobStatus::Succeeded => result_of(r),
                            _ => json!({ "error": r.error.clone().unwrap_or_else(|| r.status.as_str().to_string()) }),
                        })
                        .collect();
                    self.release(then, "results", Value::Array(results));
                } else {
                    let why = format!(
                        "{failed} of the {} jobs of its group did not succeed",
                        ended.len()
                    );
                    let _ = self.cancel_with(then, Some(why));
                }
            }
        }
    }

    /// Puts a held job in its queue with `params[key] = value`.
    fn release(&mut self, id: JobId, key: &str, value: Value) {
        if !self
            .live
            .get(&id)
            .is_some_and(|l| l.head.status == JobStatus::Pending)
        {
            return;
        }
        let released = self.transition(
            id,
            EventKind::Released,
            Some(format!("params.{key} set")),
            |rec| {
                let mut params: Map<String, Value> =
                    serde_json::from_str(&rec.params).unwrap_or_default();
                params.insert(key.to_string(), value);
                rec.params = Value::Object(params).to_string();
            },
        );
        if released.is_none() {
            return;
        }
        self.enqueue(id, Instant::now(), false);
        let lane = self.live[&id].lane;
        self.pump(lane);
    }

    fn forget_if_done(&mut self, wf: &WorkflowRecord) {
        if !wf
            .jobs
            .iter()
            .chain(wf.then.iter())
            .any(|j| self.live.contains_key(j))
        {
            self.workflows.remove(&wf.id);
        }
    }

    /// After replay: decide for every unfinished workflow job whether it may run now. A chain
    /// step may when it is the first or its predecessor succeeded; a group member always; a
    /// group's `then` once every member ended (released again with its params if needed).
    pub(super) fn resume_workflows(&mut self) {
        let held: Vec<(JobId, Uuid)> = self
            .live
            .values()
            .filter(|l| l.due.is_none() && l.head.status == JobStatus::Pending)
            .filter_map(|l| l.head.workflow_id().map(|w| (l.head.id, w)))
            .collect();
        let now = Instant::now();
        for (id, wf_id) in held {
            let Some(wf) = self.workflow(wf_id) else {
                self.enqueue(id, now, false);
                continue;
            };
            match (wf.kind, wf.jobs.iter().position(|j| *j == id)) {
                (WorkflowKind::Chain, Some(0)) | (WorkflowKind::Group, Some(_)) => {
                    self.enqueue(id, now, false)
                }
                (WorkflowKind::Chain, Some(k)) => {
                    let prev = wf.jobs[k - 1];
                    if let Some(p) = self
                        .journal
                        .get(prev)
                        .ok()
                        .flatten()
                        .filter(|p| !self.live.contains_key(&p.id))
                    {
                        // Its predecessor ended before the stop: do what its end would have done.
                        self.step_finished(wf_id, &p);
                        if self.live.get(&id).is_some_and(|l| {
                            l.head.status == JobStatus::Pending && !self.queued(id)
                        }) {
                            self.enqueue(id, now, false);
                        }
                    }
                }
                (_, None) => {
                    // The group's `then`: look at its members as if the last of them just ended.
                    if let Some(last) = wf
                        .jobs
                        .last()
                        .and_then(|j| self.journal.get(*j).ok().flatten())
                    {
                        if !self.live.contains_key(&last.id) {
                            self.step_finished(wf_id, &last);
                        }
                    }
                }
            }
        }
    }

    fn queued(&self, id: JobId) -> bool {
        self.live.get(&id).is_some_and(|l| {
            self.lanes[l.lane]
                .queue
                .position(id, Instant::now())
                .is_some()
        })
    }

    /// For `why`: what a held workflow job waits for.
    pub(super) fn held_by(&self, id: JobId) -> Option<String> {
        let live = self.live.get(&id)?;
        if live.head.status != JobStatus::Pending || live.due.is_some() || self.queued(id) {
            return None;
        }
        let wf = self.workflows.get(&live.head.workflow_id()?)?;
        Some(held_detail(wf, id))
    }
}

/// What held job `id` of `wf` waits for, in words (`why`, in both modes).
pub(crate) fn held_detail(wf: &WorkflowRecord, id: JobId) -> String {
    match wf.jobs.iter().position(|j| *j == id) {
        Some(k) if k > 0 => format!(
            "waits for step {k} of its chain ({}) to succeed",
            wf.jobs[k - 1]
        ),
        _ => format!("waits for the {} jobs of its group to end", wf.jobs.len()),
    }
}

fn spec_then_present(all: &[(SubmitSpec, String)]) -> bool {
    all.last().is_some_and(|(_, at)| at == "then.job")
}

fn result_of(rec: &JobRecord) -> Value {
    rec.result
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or(Value::Null)
}
