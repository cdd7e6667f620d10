//! The dispatcher's state and every decision it makes; the actor in `dispatcher.rs` only routes
//! messages here. Changes made while handling one message are collected and written to the
//! journal as one sled batch at the end of that message (`flush_journal`), so a finished job and
//! the start of the next one cost one write.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use ractor::{ActorId, ActorRef, RpcReplyPort};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::admission::NewJob;
use super::live::{JobHead, Live, Names, Wait};
use super::verdict::{verdict, ThrottleCause, Verdict};
use super::views::{
    Accepted, Blocker, BlockerKind, PipelineView, QueueDepths, Stats, Totals, UnfinishedCounts,
    WorkersView,
};
use super::{DispatcherArgs, DispatcherLink, DispatcherMsg, PipelineInfo, WorkerPort};
use crate::args::JobsArgs;
use crate::job::{now_ms, rfc3339_ms, EventKind, JobId, JobRecord, JobStatus, Priority};
use crate::metrics as m;
use crate::pipeline::worker::{Ticket, WorkerMsg};
use crate::protocol::{ApiError, ErrorCode, SubmitSpec};
use crate::queue::RunQueue;
use crate::routing::Router;
use crate::store::journal::{Change, Journal, UnfinishedHead};
use crate::tasks::TaskResult;

/// Requeues written per slice during a replay.
const REPLAY_FLUSH_EVERY: usize = 10_000;

/// What a refused submit tells the client.
pub(super) const NOTHING_ACCEPTED: &str = "nothing was accepted; retry later";

/// One pipeline's run state.
pub(super) struct Lane {
    pub(super) info: PipelineInfo,
    pub(super) queue: RunQueue,
    pub(super) idle: Vec<WorkerPort>,
    pub(super) workers: HashMap<ActorId, WorkerPort>,
    /// Worker → the job it runs.
    pub(super) running: HashMap<ActorId, JobId>,
    pub(super) paused: bool,
    /// Its circuit breaker is open: no jobs go to its workers.
    pub(super) breaker_open: bool,
    /// `warden_queue_wait_seconds{pipeline}`, registered once.
    pub(super) queue_wait: metrics::Histogram,
}

impl AsRef<PipelineInfo> for Lane {
    fn as_ref(&self) -> &PipelineInfo {
        &self.info
    }
}

/// Everything the dispatcher knows.
pub struct DispatcherState {
    pub(super) journal: Journal,
    pub(super) limits: JobsArgs,
    pub(super) router: Router,
    pub(super) link: DispatcherLink,
    pub(super) lanes: Vec<Lane>,
    pub(super) lane_by_name: HashMap<String, usize>,
    /// Keyed with a fast hash: ids are made here (UUID v7), never chosen by a client, and this
    /// map takes a million inserts in a replay.
    pub(super) live: HashMap<JobId, Live, foldhash::fast::RandomState>,
    pub(super) unique: HashMap<String, JobId>,
    pub(super) timers: BTreeSet<(Instant, JobId)>,
    pub(super) armed: Option<Instant>,
    pub(super) changes: Vec<Change>,
    pub(super) draining: bool,
    pub(super) drain_waiters: Vec<RpcReplyPort<()>>,
    pub(super) totals: Totals,
    pub(super) started: Instant,
    /// Told of every dead-lettered job.
    pub(super) alerter: crate::alerts::Alerter,
    /// Waiting batch parents and the count of their children.
    pub(super) tallies: HashMap<JobId, super::fanout::Tally>,
    /// Metric handles of the job loop.
    pub(super) meters: super::meters::Meters,
    /// Workflows with unfinished jobs.
    pub(super) workflows: HashMap<uuid::Uuid, crate::job::WorkflowRecord>,
    /// Job names, interned for the heads of live jobs.
    pub(super) names: Names,
    /// Jobs whose whole record was loaded or changed by the message being handled (see
    /// `live.rs`).
    pub(super) touched: Vec<JobId>,
    /// A `Flush` is in the mailbox (see `DispatcherMsg::is_job_loop`).
    pub(super) flush_scheduled: bool,
    /// Tracks compactions (see `DispatcherArgs::tasks`).
    pub(super) tasks: tokio_util::task::TaskTracker,
}

impl DispatcherState {
    /// Fresh state; call [`DispatcherState::replay`] next.
    pub fn new(args: DispatcherArgs) -> Self {
        let lanes: Vec<Lane> = args
            .pipelines
            .into_iter()
            .map(|info| Lane {
                queue_wait: metrics::histogram!(m::QUEUE_WAIT, "pipeline" => info.name.clone()),
                info,
                queue: RunQueue::new(args.jobs.max_wait),
                idle: Vec::new(),
                workers: HashMap::new(),
                running: HashMap::new(),
                paused: false,
                breaker_open: false,
            })
            .collect();
        let lane_by_name = lanes
            .iter()
            .enumerate()
            .map(|(i, l)| (l.info.name.clone(), i))
            .collect();
        Self {
            journal: args.journal,
            limits: args.jobs,
            router: args.router,
            link: args.link,
            lanes,
            lane_by_name,
            live: HashMap::default(),
            unique: HashMap::new(),
            timers: BTreeSet::new(),
            armed: None,
            changes: Vec::new(),
            draining: false,
            drain_waiters: Vec::new(),
            totals: Totals::default(),
            started: Instant::now(),
            tallies: HashMap::new(),
            workflows: HashMap::new(),
            meters: Default::default(),
            alerter: args.alerter,
            names: Names::default(),
            touched: Vec::new(),
            flush_scheduled: false,
            tasks: args.tasks,
        }
    }

    /// The journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Clears the shared link if it still points at `me`.
    pub fn unlink(&self, me: ActorId) {
        self.link.clear_if(me);
    }

    /// Puts every unfinished job of the journal back in memory: running ones were interrupted
    /// (the node stopped or this actor restarted) and go back to their queue.
    pub fn replay(&mut self) -> Result<usize, crate::store::journal::JournalError> {
        for lane in &mut self.lanes {
            let stored = self.journal.meta_get(&paused_key(&lane.info.name))?;
            lane.paused = stored.is_some_and(|v| v.first() == Some(&1));
            if lane.paused {
                info!(pipeline = %lane.info.name, "pipeline paused before the restart; it stays paused until `resume`");
            }
        }
        let journal = self.journal.clone();
        let mut count = 0;
        let mut failed = Ok(());
        journal.for_each_unfinished(|head| {
            if failed.is_err() {
                return;
            }
            match self.replay_one(head) {
                Ok(replayed) => count += usize::from(replayed),
                Err(e) => failed = Err(e),
            }
            // A replay of a million interrupted jobs writes its requeues in slices.
            if self.changes.len() >= REPLAY_FLUSH_EVERY && failed.is_ok() {
                failed = self.flush_journal();
            }
        })?;
        failed?;
        self.rebuild_tallies();
        self.resume_workflows();
        self.flush_journal()?;
        Ok(count)
    }

    /// Takes one unfinished job back into memory from its head; false when its pipeline is not
    /// configured. Only a job that was running, a batch parent or a workflow step has its whole
    /// record read: the rest of a million-job backlog is admitted from the index alone.
    fn replay_one(
        &mut self,
        head: UnfinishedHead,
    ) -> Result<bool, crate::store::journal::JournalError> {
        let Some(&lane) = self.lane_by_name.get(&head.pipeline) else {
            warn!(job_id = %head.id, pipeline = %head.pipeline, "unfinished job of a pipeline that is not configured; it waits in the journal");
            return Ok(false);
        };
        let needs_record =
            head.status == JobStatus::Running || head.has_children || head.workflow_id.is_some();
        if !needs_record {
            let head = JobHead::of_unfinished(head, &mut self.names);
            self.admit_cold(head, lane, true);
            return Ok(true);
        }
        let id = head.id;
        let rec =
            self.journal
                .get(id)?
                .ok_or_else(|| crate::store::journal::JournalError::Corrupt {
                    what: format!("job {id}"),
                    detail: "the unfinished index names a job that has no record".into(),
                })?;
        self.replay_record(rec, lane);
        Ok(true)
    }

    /// Takes back a job whose whole record replay needs (see [`DispatcherState::replay_one`]).
    fn replay_record(&mut self, mut rec: JobRecord, lane: usize) {
        // A batch parent waiting for its children stays waiting (its count is rebuilt later).
        let waiting_parent = rec.status == JobStatus::Running && !rec.children.is_empty();
        let workflow_step = rec.workflow_id.is_some();
        let interrupted = rec.status == JobStatus::Running && !waiting_parent;
        if interrupted {
            rec.status = JobStatus::Pending;
            self.totals.requeued += 1;
            self.changes.extend(change(
                &mut rec,
                EventKind::Requeued,
                Some("the node stopped while it ran".into()),
            ));
        }
        // A waiting batch parent and a workflow step are decided once every job is loaded.
        let may_run = !waiting_parent && !workflow_step;
        if interrupted {
            self.admit(rec, lane, may_run);
        } else {
            // Unchanged: the journal has it, so only its head stays in memory.
            let head = JobHead::of(&rec, &mut self.names);
            self.admit_cold(head, lane, may_run);
        }
    }

    /// Validates, routes, dedups and journals a batch of submits; all or none.
    pub fn submit(&mut self, specs: Vec<SubmitSpec>) -> Result<Vec<Accepted>, ApiError> {
        self.admission_open()?;
        let routed = self.route_submits(&specs)?;
        let fresh = specs
            .iter()
            .filter(|s| {
                s.unique_key
                    .as_ref()
                    .is_none_or(|k| !self.unique.contains_key(k))
            })
            .count();
        self.check_capacity(fresh)?;
        let now_ms = now_ms();
        let mut accepted = Vec::with_capacity(specs.len());
        let mut changes = Vec::with_capacity(specs.len());
        let mut recs = Vec::with_capacity(specs.len());
        let mut batch_keys: HashMap<String, JobId> = HashMap::new();
        for (spec, (lane, priority)) in specs.into_iter().zip(routed) {
            let known = spec
                .unique_key
                .as_ref()
                .and_then(|k| self.unique.get(k).or_else(|| batch_keys.get(k)).copied());
            if let Some(job_id) = known {
                accepted.push(Accepted {
                    job_id,
                    deduplicated: true,
                });
                continue;
            }
            let priority = spec.priority.unwrap_or(priority);
            let new = NewJob {
                lane,
                spec,
                priority,
                parent_id: None,
                workflow_id: None,
            };
            let mut rec = self.pending_record(new, now_ms);
            let job_id = rec.id;
            if let Some(k) = &rec.unique_key {
                batch_keys.insert(k.clone(), job_id);
            }
            changes.push(change(&mut rec, EventKind::Submitted, None).ok_or_else(|| {
                ApiError::internal(format!("cannot encode job {job_id}; nothing was accepted"))
            })?);
            recs.push(rec);
            accepted.push(Accepted {
                job_id,
                deduplicated: false,
            });
        }
        self.accept(changes, recs)?;
        Ok(accepted)
    }

    /// The lane and route priority of each submit, naming the one at fault.
    fn route_submits(&self, specs: &[SubmitSpec]) -> Result<Vec<(usize, Priority)>, ApiError> {
        super::admission::route_all(&self.router, &self.lanes, specs)
    }

    /// Journals new jobs' records, then takes them into their queues.
    fn accept(&mut self, changes: Vec<Change>, recs: Vec<JobRecord>) -> Result<(), ApiError> {
        // Earlier changes (kept after a failed write) must precede the submit in the journal.
        self.flush_journal()
            .and_then(|()| self.journal.write(&changes))
            .map_err(|e| self.storage_refusal(&e, NOTHING_ACCEPTED))?;
        for rec in recs {
            let lane = self.lane_by_name[&rec.pipeline];
            self.meters.job(&rec.name).submitted.increment(1);
            self.totals.submitted += 1;
            self.admit(rec, lane, true);
        }
        self.pump_all();
        Ok(())
    }

    /// Whether new work may come in: not while draining, nor while the journal refuses writes.
    pub(super) fn admission_open(&self) -> Result<(), ApiError> {
        if self.draining {
            return Err(ApiError::new(
                ErrorCode::ShuttingDown,
                "the node is draining and accepts no new work",
            ));
        }
        self.journal
            .admit_writes()
            .map_err(|e| self.storage_refusal(&e, NOTHING_ACCEPTED))
    }

    /// `answer`, once its changes are written to the journal; a refusal when they cannot be.
    pub fn written<T>(&mut self, answer: Result<T, ApiError>) -> Result<T, ApiError> {
        let answer = answer?;
        self.flush_journal().map_err(|e| {
            self.storage_refusal(
                &e,
                "the change is kept in memory and written once the journal takes writes again",
            )
        })?;
        Ok(answer)
    }

    /// The answer to a request refused because the journal cannot take writes.
    pub(super) fn storage_refusal(
        &self,
        e: &crate::store::journal::JournalError,
        consequence: &str,
    ) -> ApiError {
        ApiError::new(
            ErrorCode::StorageUnavailable,
            format!(
                "the journal in data dir {} refuses writes ({e}); {consequence}",
                self.journal.dir().display()
            ),
        )
    }

    /// The lane and route priority of job `name` (see `admission::route`).
    pub(super) fn route(&self, name: &str, at: &str) -> Result<(usize, Priority), ApiError> {
        super::admission::route(&self.router, &self.lanes, name, at)
    }

    /// Takes an unfinished job into memory: onto the timer while its `next_attempt_at` is in
    /// the future, else into its queue when `may_run` (a held job waits for something else: its
    /// turn in a workflow, or, for a batch parent, its children).
    pub(super) fn admit(&mut self, rec: JobRecord, lane: usize, may_run: bool) {
        let live = Live::new(JobHead::of(&rec, &mut self.names), lane);
        self.admit_live(live, Some(rec), may_run);
    }

    /// [`DispatcherState::admit`] of a job whose record the journal already has as it is (a
    /// replayed job): only its head is kept.
    fn admit_cold(&mut self, head: JobHead, lane: usize, may_run: bool) {
        self.admit_live(Live::new(head, lane), None, may_run);
    }

    fn admit_live(&mut self, mut live: Live, full: Option<JobRecord>, may_run: bool) {
        let (now, now_ms) = (Instant::now(), now_ms());
        let id = live.head.id;
        if let Some(k) = live.head.unique_key() {
            self.unique.insert(k.clone(), id);
        }
        let due = live
            .head
            .next_attempt_at
            .filter(|t| *t > now_ms)
            .map(|t| now + Duration::from_millis((t - now_ms) as u64));
        if let Some(rec) = full {
            live.full = Some(Box::new(rec));
            self.touched.push(id);
        }
        self.live.insert(id, live);
        match due {
            Some(due) => self.schedule(id, due),
            None if may_run => self.enqueue(id, now, false),
            None => {}
        }
    }

    pub(super) fn enqueue(&mut self, id: JobId, now: Instant, front: bool) {
        let Some(live) = self.live.get_mut(&id) else {
            return;
        };
        live.due = None;
        let q = &mut self.lanes[live.lane].queue;
        if front {
            q.push_front(id, live.head.priority, now);
        } else {
            q.push(id, live.head.priority, now);
        }
    }

    /// Puts a job on the timer after an attempt, remembering why for `why`.
    fn wait_on_timer(&mut self, id: JobId, due: Instant, cause: Wait) {
        if let Some(live) = self.live.get_mut(&id) {
            live.wait = Some(cause);
        }
        self.schedule(id, due);
    }

    fn schedule(&mut self, id: JobId, due: Instant) {
        if let Some(live) = self.live.get_mut(&id) {
            live.due = Some(due);
            self.timers.insert((due, id));
        }
    }

    /// A worker is idle: give it the next job, or keep it.
    pub fn worker_ready(&mut self, lane: usize, worker: impl Into<WorkerPort>) {
        let worker = worker.into();
        let Some(l) = self.lanes.get_mut(lane) else {
            return;
        };
        let wid = worker.id();
        super::enlist(&mut l.workers, &mut l.idle, worker, wid, WorkerPort::id);
        self.pump(lane);
    }

    pub(super) fn pump_all(&mut self) {
        for lane in 0..self.lanes.len() {
            self.pump(lane);
        }
    }

    /// Starts jobs on idle workers while both exist.
    pub(super) fn pump(&mut self, lane: usize) {
        let l = &self.lanes[lane];
        if self.draining || l.paused || l.breaker_open {
            return;
        }
        let now = Instant::now();
        loop {
            let l = &mut self.lanes[lane];
            if l.idle.is_empty() {
                return;
            }
            let Some((q, _)) = l.queue.pop(now) else {
                return;
            };
            let runnable = self
                .live
                .get(&q.id)
                .is_some_and(|j| matches!(j.head.status, JobStatus::Pending | JobStatus::Retrying));
            // A job whose record cannot be read stays out of the queue (logged by `hydrate`).
            if !runnable || self.hydrate(q.id).is_none() {
                continue;
            }
            let live = &self.live[&q.id];
            let l = &mut self.lanes[lane];
            let Some(worker) = l.idle.pop() else { return };
            let rec = live.full.as_deref().expect("hydrated above");
            let ticket = Ticket {
                job_id: rec.id,
                name: rec.name.clone(),
                params: rec.params.clone(),
                attempt: rec.attempts + 1,
            };
            if !worker.send(WorkerMsg::Run(ticket)) {
                // That worker is gone; its `WorkerReport::Down` may still be on the way.
                l.workers.remove(&worker.id());
                l.queue.push_front(q.id, live.head.priority, q.since);
                continue;
            }
            l.running.insert(worker.id(), q.id);
            l.queue_wait
                .record(now.saturating_duration_since(q.since).as_secs_f64());
            let started = now_ms();
            self.transition(q.id, EventKind::Started, None, |rec| {
                rec.attempts += 1;
                rec.status = JobStatus::Running;
                rec.started_at = Some(started);
                rec.next_attempt_at = None;
            });
        }
    }

    /// A job's attempt ended.
    pub fn job_done(
        &mut self,
        lane: usize,
        worker: ActorId,
        id: JobId,
        outcome: TaskResult,
        elapsed: Duration,
    ) {
        if let Some(l) = self.lanes.get_mut(lane) {
            l.running.remove(&worker);
        }
        // Not live: cancelled while it ran.
        let Some(live) = self
            .live
            .get(&id)
            .filter(|j| j.head.status == JobStatus::Running)
        else {
            self.check_drained();
            return;
        };
        let name = live.head.name.clone();
        let (attempts, max_retries) = (live.head.attempts, live.head.max_retries);
        let policy = self.lanes[live.lane].info.retry;
        self.meters
            .job(&name)
            .duration
            .record(elapsed.as_secs_f64());
        match verdict(outcome, attempts, max_retries, &policy) {
            Verdict::Succeed(value) => self.succeed(id, &name, value),
            Verdict::Retry {
                delay,
                error,
                error_type,
            } => self.retry_after(id, delay, error, error_type),
            Verdict::Throttled {
                wait,
                message,
                cause,
            } => {
                let cause = match cause {
                    ThrottleCause::Breaker => Wait::BreakerOpen,
                    ThrottleCause::RateLimit => Wait::RateLimit,
                };
                self.throttled(id, &name, message, wait, cause)
            }
            Verdict::DeadLetter(msg) => self.dead_letter(id, msg),
        }
        self.check_drained();
    }

    fn succeed(&mut self, id: JobId, name: &str, value: serde_json::Value) {
        self.meters.job(name).succeeded.increment(1);
        self.totals.succeeded += 1;
        let (done, result) = (now_ms(), value.to_string());
        let rec = self.transition(id, EventKind::Succeeded, None, |rec| {
            rec.status = JobStatus::Succeeded;
            rec.completed_at = Some(done);
            rec.error = None;
            rec.result = Some(result);
        });
        if let Some(rec) = rec {
            debug!(job_id = %id, job_name = %rec.name, attempt = rec.attempts, "succeeded");
        }
        self.finish(id);
    }

    /// A throttled attempt does not count: the upstream never did the work.
    fn throttled(&mut self, id: JobId, name: &str, message: String, wait: Duration, cause: Wait) {
        let at = now_ms() + wait.as_millis() as i64;
        metrics::counter!(m::JOB_RETRIES, "job_name" => name.to_string(), "error_type" => "throttled")
            .increment(1);
        let detail = format!("throttled: {message}");
        self.transition(id, EventKind::Retrying, Some(detail), |rec| {
            rec.attempts = rec.attempts.saturating_sub(1);
            rec.status = JobStatus::Retrying;
            rec.next_attempt_at = Some(at);
            rec.error = Some(message);
        });
        self.wait_on_timer(id, Instant::now() + wait, cause);
    }

    /// Schedules the next attempt of `id` after `delay` (the verdict was to retry).
    fn retry_after(&mut self, id: JobId, delay: Duration, msg: String, error_type: &'static str) {
        let Some(live) = self.live.get(&id) else {
            return;
        };
        let (attempts, name) = (live.head.attempts, live.head.name.to_string());
        debug!(job_id = %id, job_name = %name, attempt = attempts, delay_ms = delay.as_millis() as u64, "retry scheduled");
        metrics::counter!(m::JOB_RETRIES, "job_name" => name.clone(), "error_type" => error_type)
            .increment(1);
        metrics::counter!(m::JOB_EXECUTIONS, "job_name" => name, "status" => "retried")
            .increment(1);
        self.totals.retried += 1;
        let at = now_ms() + delay.as_millis() as i64;
        self.transition(id, EventKind::Retrying, Some(msg.clone()), |rec| {
            rec.status = JobStatus::Retrying;
            rec.next_attempt_at = Some(at);
            rec.error = Some(msg);
        });
        self.wait_on_timer(id, Instant::now() + delay, Wait::Backoff);
    }

    pub(super) fn dead_letter(&mut self, id: JobId, msg: String) {
        let done = now_ms();
        let why = msg.clone();
        let rec = self.transition(id, EventKind::DeadLettered, Some(msg), |rec| {
            rec.status = JobStatus::Failed;
            rec.completed_at = Some(done);
            rec.error = Some(why);
        });
        let Some(rec) = rec.cloned() else {
            return;
        };
        info!(job_id = %id, job_name = %rec.name, attempt = rec.attempts, error = rec.error.as_deref().unwrap_or(""), "dead-lettered");
        metrics::counter!(m::JOB_EXECUTIONS, "job_name" => rec.name.clone(), "status" => "failed")
            .increment(1);
        metrics::counter!(m::DEAD_LETTER, "job_name" => rec.name.clone()).increment(1);
        self.totals.failed += 1;
        self.alerter.dead_lettered(&rec);
        self.finish(id);
    }

    /// Forgets a job that just finished: its unique key, its timer; tells its batch parent or
    /// its workflow.
    pub(super) fn finish(&mut self, id: JobId) {
        let Some(live) = self.live.remove(&id) else {
            return;
        };
        let head = &live.head;
        if let Some(k) = head.unique_key() {
            if self.unique.get(k) == Some(&id) {
                self.unique.remove(k);
            }
        }
        if let Some(due) = live.due {
            self.timers.remove(&(due, id));
        }
        if head.parent_id().is_none() && head.workflow_id().is_none() {
            return;
        }
        // Every finish follows a transition, so the whole record is in memory.
        let Some(rec) = live.full else {
            return;
        };
        if let Some(parent) = rec.parent_id {
            self.child_finished(parent, &rec);
        }
        if let Some(wf) = rec.workflow_id {
            self.step_finished(wf, &rec);
        }
    }

    /// A worker incarnation is gone: the job it ran goes back to its queue at once (the attempt
    /// counts), or to the dead-letter queue when its retries are spent.
    pub fn worker_down(&mut self, lane: usize, worker: ActorId, reason: &str) {
        let Some(l) = self.lanes.get_mut(lane) else {
            return;
        };
        l.workers.remove(&worker);
        l.idle.retain(|w| w.id() != worker);
        if let Some(id) = l.running.remove(&worker) {
            self.requeue_crashed(id, reason);
        }
        self.pump(lane);
        self.check_drained();
    }

    /// The worker running job `id` failed on its own, or went down with its pipeline (a job's
    /// own panic is a `TaskError::Panic`, never a worker down).
    fn requeue_crashed(&mut self, id: JobId, reason: &str) {
        let Some(head) = self
            .live
            .get(&id)
            .map(|j| &j.head)
            .filter(|h| h.status == JobStatus::Running)
        else {
            return;
        };
        let (attempts, name) = (head.attempts, head.name.to_string());
        let why = format!("worker crashed: {reason}");
        if attempts > head.max_retries {
            return self.dead_letter(id, format!("{why} (gave up after {attempts} attempts)"));
        }
        metrics::counter!(m::JOB_RETRIES, "job_name" => name.clone(), "error_type" => "crash")
            .increment(1);
        metrics::counter!(m::JOB_EXECUTIONS, "job_name" => name, "status" => "retried")
            .increment(1);
        self.totals.requeued += 1;
        let error = why.clone();
        self.transition(id, EventKind::Requeued, Some(why), |rec| {
            rec.status = JobStatus::Pending;
            rec.error = Some(error);
        });
        self.enqueue(id, Instant::now(), true);
    }

    /// Moves due jobs from the timer to their queues.
    pub fn tick(&mut self) {
        self.armed = None;
        let now = Instant::now();
        while let Some(&(due, id)) = self.timers.first() {
            if due > now {
                break;
            }
            self.timers.pop_first();
            if self.live.get(&id).is_some_and(|l| l.due == Some(due)) {
                self.enqueue(id, now, false);
            }
        }
        self.pump_all();
    }

    /// Makes sure a `Tick` arrives when the earliest timer is due.
    pub fn arm_timer(&mut self, me: &ActorRef<DispatcherMsg>) {
        if let Some(&(due, _)) = self.timers.first() {
            if self.armed.is_none_or(|a| due < a) {
                self.armed = Some(due);
                me.send_after(due.saturating_duration_since(Instant::now()), || {
                    DispatcherMsg::Tick
                });
            }
        }
    }

    /// Gives memory back once a backlog has drained (maps and queues keep their capacity).
    pub fn shrink(&mut self) {
        fn shrink_map<K: std::hash::Hash + Eq, V, S: std::hash::BuildHasher>(
            m: &mut HashMap<K, V, S>,
        ) {
            if m.capacity() > 4 * m.len() + crate::queue::SHRINK_SLACK {
                m.shrink_to(2 * m.len());
            }
        }
        shrink_map(&mut self.live);
        shrink_map(&mut self.unique);
        shrink_map(&mut self.tallies);
        for l in &mut self.lanes {
            l.queue.shrink();
        }
        if self.touched.capacity() > crate::queue::SHRINK_SLACK {
            self.touched.shrink_to(crate::queue::SHRINK_SLACK);
        }
        if self.changes.capacity() > crate::queue::SHRINK_SLACK {
            self.changes.shrink_to(crate::queue::SHRINK_SLACK);
        }
    }

    /// Sets the queue depth and worker gauges, and whether the journal refuses new work (the one
    /// writer of that gauge).
    pub fn publish_gauges(&self, refusing: bool) {
        metrics::gauge!(m::JOURNAL_REFUSING_WRITES).set(f64::from(u8::from(refusing)));
        for l in &self.lanes {
            for p in Priority::ALL {
                metrics::gauge!(m::QUEUE_DEPTH, "pipeline" => l.info.name.clone(), "priority" => p.as_str())
                    .set(l.queue.depth(p) as f64);
            }
            metrics::gauge!(m::ACTIVE_WORKERS, "pipeline" => l.info.name.clone())
                .set(l.running.len() as f64);
            metrics::gauge!(m::WORKERS, "pipeline" => l.info.name.clone())
                .set(l.workers.len() as f64);
        }
    }

    /// Writes the changes collected while handling the current message, as one batch. A failed
    /// write keeps them (and the whole records they describe) in memory, to be written with the
    /// next batch: memory and journal never drift apart for good, and the failure is reported
    /// to the caller (a submit is refused while it lasts).
    pub fn flush_journal(&mut self) -> Result<(), crate::store::journal::JournalError> {
        if !self.changes.is_empty() {
            if let Err(e) = self.journal.write(&self.changes) {
                error!(error = %e, entries = self.changes.len(), "journal write failed; the changes are kept and written with the next batch");
                return Err(e);
            }
            self.changes.clear();
        }
        self.cool();
        Ok(())
    }

    /// After a message: a job-loop message's changes are gathered behind one self-cast `Flush`
    /// (one sled batch for many jobs); anything else, or a gather that could not be scheduled,
    /// writes now. A failed write is logged and its changes kept for the next one (see
    /// [`DispatcherState::flush_journal`]).
    pub fn write_or_gather(&mut self, me: &ActorRef<DispatcherMsg>, job_loop: bool) {
        let gather = job_loop && !self.changes.is_empty();
        if gather && !self.flush_scheduled {
            self.flush_scheduled = me.cast(DispatcherMsg::Flush).is_ok();
        }
        if !(gather && self.flush_scheduled) {
            let _ = self.flush_journal();
        }
    }

    /// The gauges' timer: publishes them, gives back memory, and checks the journal's health.
    /// sled cannot write again in this process after an I/O error: that fails the actor, so
    /// that supervision restarts the dispatcher (and, if that keeps failing, stops the node with
    /// the reason) rather than keep a node that accepts nothing. Checked on this timer, not per
    /// message: the job loop need not ask.
    pub fn gauges(&mut self) -> Result<(), crate::store::journal::JournalError> {
        let health = self.journal.admit_writes();
        self.publish_gauges(health.is_err());
        self.shrink();
        match health {
            Err(e @ crate::store::journal::JournalError::Failed { .. }) => Err(e),
            _ => Ok(()),
        }
    }

    /// Starts a compaction of finished jobs past their retention, off the actor's thread.
    pub fn compact(&self) {
        let journal = self.journal.clone();
        let cutoff = now_ms() - self.limits.retention.as_millis() as i64;
        self.tasks
            .spawn_blocking(move || match journal.compact(cutoff) {
                Ok(0) => {}
                Ok(n) => info!(removed = n, "compacted finished jobs past their retention"),
                Err(e) => error!(error = %e, "journal compaction failed"),
            });
    }

    /// Counts for `stats`.
    pub fn stats(&self) -> Stats {
        let mut jobs = UnfinishedCounts::default();
        for l in self.live.values() {
            match l.head.status {
                JobStatus::Pending => jobs.pending += 1,
                JobStatus::Running => jobs.running += 1,
                JobStatus::Retrying => jobs.retrying += 1,
                _ => {}
            }
        }
        Stats {
            jobs,
            totals: self.totals,
            queues: self
                .lanes
                .iter()
                .map(|l| (l.info.name.clone(), depths(&l.queue)))
                .collect(),
            uptime_s: self.started.elapsed().as_secs(),
        }
    }

    /// The jobs on a worker now, with their pipeline's name.
    pub fn running_jobs(&self) -> Vec<(String, JobId)> {
        self.lanes
            .iter()
            .flat_map(|l| l.running.values().map(|id| (l.info.name.clone(), *id)))
            .collect()
    }

    /// Every pipeline's state.
    pub fn pipeline_views(&self) -> Vec<PipelineView> {
        (0..self.lanes.len()).map(|i| self.view(i)).collect()
    }

    fn view(&self, lane: usize) -> PipelineView {
        let l = &self.lanes[lane];
        let workers = WorkersView {
            total: l.workers.len(),
            busy: l.running.len(),
        };
        let scheduled = self
            .live
            .values()
            .filter(|j| j.lane == lane && j.due.is_some())
            .count();
        PipelineView::of(&l.info, l.paused, workers, depths(&l.queue), scheduled)
    }

    fn lane_named(&self, name: &str) -> Result<usize, ApiError> {
        self.lane_by_name
            .get(name)
            .copied()
            .ok_or_else(|| super::admission::no_pipeline(name, &self.lanes))
    }

    /// Records a breaker transition; jobs flow again once it is no longer open.
    pub fn set_breaker_open(&mut self, lane: usize, open: bool) {
        let Some(l) = self.lanes.get_mut(lane) else {
            return;
        };
        l.breaker_open = open;
        if !open {
            self.pump(lane);
        }
    }

    /// Pauses or resumes a pipeline: paused, its workers take no new jobs.
    /// The pause is journaled (durable with the next commit, which the admin command awaits),
    /// so a paused pipeline stays paused across a restart.
    pub fn set_paused(&mut self, name: &str, paused: bool) -> Result<PipelineView, ApiError> {
        let lane = self.lane_named(name)?;
        self.journal
            .meta_put(&paused_key(name), &[u8::from(paused)])
            .map_err(|e| {
                self.storage_refusal(&e, "the pipeline's state is unchanged; retry later")
            })?;
        self.lanes[lane].paused = paused;
        info!(pipeline = %name, paused, "pipeline {}", if paused { "paused" } else { "resumed" });
        self.pump(lane);
        Ok(self.view(lane))
    }

    /// Cancels an unfinished job; a running one is asked to stop and aborted after the grace.
    pub fn cancel(&mut self, id: JobId) -> Result<JobRecord, ApiError> {
        self.cancel_with(id, None)
    }

    /// [`DispatcherState::cancel`], with the reason recorded in the job's history and error
    /// (a workflow cancels the steps after a failed one, saying why).
    pub(super) fn cancel_with(
        &mut self,
        id: JobId,
        reason: Option<String>,
    ) -> Result<JobRecord, ApiError> {
        self.cancel_children(id);
        let Some(live) = self.live.get(&id) else {
            return Err(self.not_live(id, "cancelled", "only unfinished jobs can be cancelled"));
        };
        let (lane, name) = (live.lane, live.head.name.to_string());
        let detail = match live.head.status {
            JobStatus::Running => {
                let l = &self.lanes[lane];
                if let Some(w) = l
                    .running
                    .iter()
                    .find(|(_, j)| **j == id)
                    .and_then(|(w, _)| l.workers.get(w))
                {
                    w.send(WorkerMsg::Cancel {
                        job_id: id,
                        grace: self.limits.cancel_grace,
                    });
                }
                "cancelled while running: asked to stop, aborted after [jobs] cancel_grace"
            }
            _ => {
                self.lanes[lane].queue.remove(id);
                "cancelled before it ran"
            }
        };
        metrics::counter!(m::JOB_EXECUTIONS, "job_name" => name, "status" => "cancelled")
            .increment(1);
        self.totals.cancelled += 1;
        let detail = match &reason {
            Some(r) => format!("{detail}: {r}"),
            None => detail.to_string(),
        };
        let done = now_ms();
        let out = self
            .transition(id, EventKind::Cancelled, Some(detail), |rec| {
                rec.status = JobStatus::Cancelled;
                rec.completed_at = Some(done);
                // A cancelled job waits for no attempt (a delayed or retrying one had one).
                rec.next_attempt_at = None;
                if reason.is_some() {
                    rec.error = reason;
                }
            })
            .cloned()
            .ok_or_else(|| ApiError::internal(format!("job {id}: its record could not be read")))?;
        self.finish(id);
        Ok(out)
    }

    /// Cancels jobs whose submit could not be made durable (the client was told it failed).
    pub fn withdraw(&mut self, ids: Vec<JobId>) {
        for id in ids {
            if self.live.contains_key(&id) {
                let why = "withdrawn: its submit could not be made durable and the client was told it failed";
                let _ = self.cancel_with(id, Some(why.into()));
            }
        }
    }

    /// Sends a failed or cancelled job back to its queue with its attempts reset.
    pub fn retry(&mut self, id: JobId) -> Result<JobRecord, ApiError> {
        if let Some(live) = self.live.get(&id) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "job {id} is {}; only failed or cancelled jobs can be retried",
                    live.head.status.as_str()
                ),
            ));
        }
        let mut rec = self.load(id)?;
        if !matches!(rec.status, JobStatus::Failed | JobStatus::Cancelled) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "job {id} is {}; only failed or cancelled jobs can be retried",
                    rec.status.as_str()
                ),
            ));
        }
        let lane = self.lane_named(&rec.pipeline)?;
        if let Some(k) = &rec.unique_key {
            if let Some(other) = self.unique.get(k) {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("unique_key {k:?} is held by unfinished job {other}; retry it after that one ends"),
                ));
            }
            self.unique.insert(k.clone(), id);
        }
        rec.status = JobStatus::Pending;
        rec.children.clear();
        rec.attempts = 0;
        rec.error = None;
        rec.result = None;
        rec.completed_at = None;
        rec.next_attempt_at = None;
        self.changes.extend(change(
            &mut rec,
            EventKind::Retried,
            Some("sent back by an operator".into()),
        ));
        let out = rec.clone();
        self.admit(rec, lane, true);
        self.pump(lane);
        Ok(out)
    }

    fn load(&self, id: JobId) -> Result<JobRecord, ApiError> {
        self.journal
            .get(id)
            .map_err(|e| ApiError::internal(format!("journal read failed: {e}")))?
            .ok_or_else(|| ApiError::not_found(format!("job_id: no job with id {id}")))
    }

    fn not_live(&self, id: JobId, verb: &str, rule: &str) -> ApiError {
        match self.load(id) {
            Ok(rec) => ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "job {id} is already {}; it cannot be {verb}: {rule}",
                    rec.status.as_str()
                ),
            ),
            Err(e) => e,
        }
    }

    /// What a job waits for now (the `why` command): the one blocker, with an ETA when known.
    pub fn why(&self, id: JobId) -> Result<Blocker, ApiError> {
        let Some(live) = self.live.get(&id) else {
            let rec = self.load(id)?;
            let detail = format!("the job is {}", rec.status.as_str());
            return Ok(Blocker::new(BlockerKind::None, detail, None));
        };
        let l = &self.lanes[live.lane];
        if let Some((waiting, total)) = self.children_waiting(id) {
            let detail = format!("{waiting} of its {total} child jobs are unfinished");
            return Ok(Blocker::new(BlockerKind::Children, detail, None));
        }
        if let Some(detail) = self.held_by(id) {
            return Ok(Blocker::new(BlockerKind::Scheduled, detail, None));
        }
        if live.head.status == JobStatus::Running {
            let detail = "the job is running on a worker".to_string();
            return Ok(Blocker::new(BlockerKind::None, detail, None));
        }
        if live.due.is_some() {
            return self.why_timer(live);
        }
        let name = &l.info.name;
        if l.paused {
            let detail = format!("pipeline {name} is paused; `resume` it");
            return Ok(Blocker::new(BlockerKind::Paused, detail, None));
        }
        if l.breaker_open {
            let until = l
                .info
                .breaker_view
                .as_ref()
                .and_then(|v| v())
                .and_then(|v| v["open_until"].as_str().map(String::from));
            let detail = format!("pipeline {name}'s circuit breaker is open");
            return Ok(Blocker::new(BlockerKind::BreakerOpen, detail, until));
        }
        let position = l.queue.position(id, Instant::now()).unwrap_or(0);
        let detail = format!(
            "position {position} in pipeline {name}'s queue ({} waiting, {} workers busy)",
            l.queue.len(),
            l.running.len()
        );
        Ok(Blocker::new(BlockerKind::Queued, detail, None))
    }

    /// `why` for a job on the timer: a delay, a backoff, or a wait its gate asked for.
    fn why_timer(&self, live: &Live) -> Result<Blocker, ApiError> {
        let eta = live.head.next_attempt_at.map(rfc3339_ms);
        if live.head.status != JobStatus::Retrying {
            let detail = "delayed until its run_at".to_string();
            return Ok(Blocker::new(BlockerKind::Scheduled, detail, eta));
        }
        // The error stays in the journal; `why` explains one job.
        let rec = self.load(live.head.id)?;
        let error = rec.error.as_deref().unwrap_or("");
        let name = &self.lanes[live.lane].info.name;
        Ok(match live.wait.unwrap_or(Wait::Backoff) {
            Wait::BreakerOpen => Blocker::new(
                BlockerKind::BreakerOpen,
                format!("pipeline {name}'s circuit breaker is open: {error}"),
                eta,
            ),
            Wait::RateLimit => Blocker::new(
                BlockerKind::RateLimit,
                format!("waiting for a rate-limit permit of pipeline {name}: {error}"),
                eta,
            ),
            Wait::Backoff => Blocker::new(
                BlockerKind::RetryBackoff,
                format!("retry {} after: {error}", rec.attempts + 1),
                eta,
            ),
        })
    }

    /// Stops taking work; `reply` is answered once no job runs.
    pub fn drain(&mut self, reply: RpcReplyPort<()>) {
        self.draining = true;
        self.drain_waiters.push(reply);
        self.check_drained();
    }

    fn check_drained(&mut self) {
        if self.draining && self.lanes.iter().all(|l| l.running.is_empty()) {
            for w in self.drain_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }
}

/// The meta key that remembers whether a pipeline is paused.
fn paused_key(pipeline: &str) -> String {
    format!("paused:{pipeline}")
}

fn depths(q: &RunQueue) -> QueueDepths {
    QueueDepths {
        high: q.depth(Priority::High),
        normal: q.depth(Priority::Normal),
        low: q.depth(Priority::Low),
    }
}

/// Records the event in the job's history and encodes the record for the journal.
pub(super) fn change(
    rec: &mut JobRecord,
    kind: EventKind,
    detail: Option<String>,
) -> Option<Change> {
    rec.push_event(kind, detail);
    Change::new(rec)
        .inspect_err(|e| error!(job_id = %rec.id, error = %e, "cannot encode a job record"))
        .ok()
}

impl super::Reported for DispatcherState {
    fn on_ready(&mut self, lane: usize, worker: ActorRef<WorkerMsg>) {
        self.worker_ready(lane, worker);
    }
    fn on_done(
        &mut self,
        lane: usize,
        worker: ActorId,
        job: JobId,
        outcome: TaskResult,
        elapsed: Duration,
    ) {
        self.job_done(lane, worker, job, outcome, elapsed);
    }
    fn on_fan_out(&mut self, lane: usize, worker: ActorId, job: JobId, children: Vec<SubmitSpec>) {
        self.fan_out(lane, worker, job, children);
    }
    fn on_down(&mut self, lane: usize, worker: ActorId, reason: &str) {
        self.worker_down(lane, worker, reason);
    }
}
