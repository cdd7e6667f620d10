//! Batch jobs that fan out: a parent job splits into one child job per ticker (on a worker, which
//! is free again at once), waits for them holding no worker, and finishes with their summary
//! `{total, succeeded, failed, stored}`. Children carry `parent_id`;
//! the parent's record lists them, so a restart rebuilds the count from the journal; cancelling
//! the parent cancels its unfinished children.

use std::collections::HashMap;

use ractor::ActorId;
use serde_json::{json, Value};
use tracing::info;

use super::admission::NewJob;
use super::core::{change, DispatcherState};
use crate::job::{now_ms, EventKind, JobId, JobRecord, JobStatus};
use crate::metrics as m;
use crate::protocol::SubmitSpec;

/// A waiting parent's count of its children.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    waiting: usize,
    succeeded: usize,
    failed: usize,
    stored: u64,
}

impl Tally {
    fn count(&mut self, child: &JobRecord) {
        self.count_end(child.status, child.result.as_deref());
    }

    /// Counts a child that ended in `status` with `result` (cluster mode reads only these).
    pub(crate) fn count_end(&mut self, status: JobStatus, result: Option<&str>) {
        match status {
            JobStatus::Succeeded => {
                self.succeeded += 1;
                self.stored += stored_in(result);
            }
            _ => self.failed += 1,
        }
    }

    /// The parent's result once its `total` children have ended.
    pub(crate) fn summary(&self, total: usize) -> Value {
        json!({ "total": total, "succeeded": self.succeeded, "failed": self.failed, "stored": self.stored })
    }
}

/// The records a child stored: the sum of its result's numeric fields named `*stored`
/// (`stored`, `filings_stored`, `facts_stored`).
fn stored_in(result: Option<&str>) -> u64 {
    let Some(Value::Object(m)) = result.and_then(|r| serde_json::from_str(r).ok()) else {
        return 0;
    };
    m.iter()
        .filter(|(k, _)| k.ends_with("stored"))
        .filter_map(|(_, v)| v.as_u64())
        .sum()
}

impl DispatcherState {
    /// A batch job split itself: create its children (journaled with the parent, atomically)
    /// and let the parent wait for them.
    pub fn fan_out(&mut self, lane: usize, worker: ActorId, parent: JobId, specs: Vec<SubmitSpec>) {
        if let Some(l) = self.lanes.get_mut(lane) {
            l.running.remove(&worker);
        }
        if !self
            .live
            .get(&parent)
            .is_some_and(|l| l.head.status == JobStatus::Running)
        {
            return; // cancelled meanwhile
        }
        let mut routed = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            match self.route(&spec.name, &format!("child {i}")) {
                Ok(r) => routed.push(r),
                Err(e) => {
                    return self.dead_letter(parent, format!("cannot fan out: {}", e.message))
                }
            }
        }
        let now_ms = now_ms();
        let priority = self.live[&parent].head.priority;
        let mut kids = Vec::with_capacity(specs.len());
        for (spec, (kid_lane, _)) in specs.into_iter().zip(routed) {
            // A child runs at its parent's priority with its pipeline's retries.
            let spec = SubmitSpec {
                priority: None,
                max_retries: None,
                unique_key: None,
                run_at: None,
                tick: None,
                ..spec
            };
            let new = NewJob {
                lane: kid_lane,
                spec,
                priority,
                parent_id: Some(parent),
                workflow_id: None,
            };
            let mut rec = self.pending_record(new, now_ms);
            self.changes.extend(change(
                &mut rec,
                EventKind::Submitted,
                Some(format!("child of {parent}")),
            ));
            self.meters.job(&rec.name).submitted.increment(1);
            kids.push((rec, kid_lane));
        }
        let n = kids.len();
        let ids: Vec<JobId> = kids.iter().map(|(r, _)| r.id).collect();
        self.transition(
            parent,
            EventKind::FannedOut,
            Some(format!("{n} children")),
            |p| p.children = ids,
        );
        info!(job_id = %parent, children = n, "fanned out");
        if n == 0 {
            return self.complete_parent(parent, Tally::default());
        }
        self.tallies.insert(
            parent,
            Tally {
                waiting: n,
                ..Tally::default()
            },
        );
        for (rec, kid_lane) in kids {
            self.totals.submitted += 1;
            self.admit(rec, kid_lane, true);
        }
        self.pump_all();
    }

    /// A child ended: count it, and finish its parent once the last one has.
    pub(super) fn child_finished(&mut self, parent: JobId, child: &JobRecord) {
        let Some(t) = self.tallies.get_mut(&parent) else {
            return;
        };
        t.waiting = t.waiting.saturating_sub(1);
        t.count(child);
        if t.waiting == 0 {
            let t = self.tallies.remove(&parent).unwrap_or_default();
            self.complete_parent(parent, t);
        }
    }

    fn complete_parent(&mut self, parent: JobId, t: Tally) {
        let Some(head) = self
            .live
            .get(&parent)
            .map(|l| &l.head)
            .filter(|h| h.status == JobStatus::Running)
        else {
            return;
        };
        let summary = t.summary(head.children().len());
        metrics::counter!(m::JOB_EXECUTIONS, "job_name" => head.name.to_string(), "status" => "succeeded").increment(1);
        self.totals.succeeded += 1;
        let done = now_ms();
        self.transition(parent, EventKind::Succeeded, None, |rec| {
            rec.status = JobStatus::Succeeded;
            rec.completed_at = Some(done);
            rec.error = None;
            rec.result = Some(summary.to_string());
        });
        self.finish(parent);
    }

    /// Cancelling a parent first forgets its count (so the cancelled children cannot complete
    /// it), then cancels every unfinished child.
    pub(super) fn cancel_children(&mut self, parent: JobId) {
        let kids = match self.live.get(&parent) {
            Some(l) if !l.head.children().is_empty() => l.head.children().to_vec(),
            _ => return,
        };
        self.tallies.remove(&parent);
        for k in kids {
            if self.live.contains_key(&k) {
                let _ = self.cancel(k);
            }
        }
    }

    /// After replay: rebuild each waiting parent's count from its children (unfinished ones are
    /// in memory, finished ones in the journal) and finish those whose children all ended.
    pub(super) fn rebuild_tallies(&mut self) {
        let parents: Vec<(JobId, Vec<JobId>)> = self
            .live
            .values()
            .filter(|l| l.head.status == JobStatus::Running && !l.head.children().is_empty())
            .map(|l| (l.head.id, l.head.children().to_vec()))
            .collect();
        let mut done: HashMap<JobId, Tally> = HashMap::new();
        for (parent, kids) in parents {
            let mut t = Tally::default();
            for k in kids {
                if self.live.contains_key(&k) {
                    t.waiting += 1;
                } else if let Ok(Some(rec)) = self.journal.get(k) {
                    t.count(&rec);
                }
            }
            if t.waiting == 0 {
                done.insert(parent, t);
            } else {
                self.tallies.insert(parent, t);
            }
        }
        for (parent, t) in done {
            self.complete_parent(parent, t);
        }
    }

    /// For `why`: how many children a waiting parent still waits for.
    pub(super) fn children_waiting(&self, parent: JobId) -> Option<(usize, usize)> {
        let t = self.tallies.get(&parent)?;
        let total = self
            .live
            .get(&parent)
            .map_or(0, |l| l.head.children().len());
        Some((t.waiting, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures that a child's stored count is read from any `*stored` field of its result.
    #[test]
    fn stored_sums_stored_fields() {
        assert_eq!(
            stored_in(Some(
                r#"{"ticker":"X","filings_found":6,"filings_stored":4}"#
            )),
            4
        );
        assert_eq!(stored_in(Some(r#"{"stored":19,"bars":22}"#)), 19);
        assert_eq!(stored_in(Some("null")), 0);
        assert_eq!(stored_in(None), 0);
    }
}
