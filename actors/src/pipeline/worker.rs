//! An ingestion worker. Supervised by its pipeline supervisor; pulls work by telling the
//! dispatcher it is ready (at start, and with every finished job), runs one job at a time in a
//! task of its own so that it stays responsive to `Cancel` and to its time limits, and reports
//! the classified outcome.
//!
//! - A panic in a job is caught in that task and is that job's failure ([`TaskError::Panic`]:
//!   retried with the job's backoff, counted against its `max_retries`, then dead-lettered). The
//!   worker that ran it is replaced at once, without backoff and without spending the restart
//!   budget: one bad job per attempt must not take its pipeline down (a storm of poison jobs
//!   would otherwise spend every worker's budget). The restart budget is for workers that fail
//!   on their own; [`WorkerFault`] is how a task (`builtin.crash`) simulates that, and the
//!   dispatcher (told through [`WorkerSpec::on_down`]) then puts the job back.
//! - At a job's soft time limit the task's `soft_limit` signal is raised; at its hard limit the
//!   task is aborted, the job fails with a transient `timeout`, and the worker is replaced.
//! - With `max_jobs_per_worker`, the worker stops after that many jobs, between jobs, and is
//!   replaced at once (recycling), so no job waits longer than the respawn.
//!
//! Without limits or recycling a finished job is reported straight from its task to the
//! dispatcher, skipping a hop through this actor's mailbox (measured: the hot path of no-op
//! jobs); with them, the report goes through the worker, which must see the end of every job.
//! A cancel also sends the end of its job through the worker (`Route` decides, once, which of
//! the task and the cancel came first).

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, DerivedActorRef, SpawnErr};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, Instrument};

use crate::args::TimeLimits;
use crate::job::JobId;
use crate::link::Incarnation;
use crate::protocol::SubmitSpec;
use crate::supervisor::{spawn_child, ChildSpec, Replacement};
use crate::tasks::{SplitFn, TaskCtx, TaskEnv, TaskError, TaskResult, TaskSet};

/// What a worker tells the dispatcher. The worker owns this type and sees the dispatcher only
/// as something that takes it ([`Reports`], a [`DerivedActorRef`]), so this module knows
/// nothing of the dispatcher: only the dispatcher knows both sides.
pub enum WorkerReport {
    /// The worker is idle.
    Ready {
        /// Its pipeline.
        pipeline: usize,
        /// The worker.
        worker: ActorRef<WorkerMsg>,
    },
    /// The worker finished a job's attempt.
    Done {
        /// Its pipeline.
        pipeline: usize,
        /// The worker.
        worker: ActorRef<WorkerMsg>,
        /// The job.
        job_id: JobId,
        /// The task's outcome.
        outcome: TaskResult,
        /// How long the attempt took.
        elapsed: Duration,
        /// False when the worker is about to be replaced (recycling, a hard time limit): it
        /// gets no next job, its replacement announces itself.
        ready: bool,
    },
    /// A batch job named its children (and the worker is idle again).
    FanOut {
        /// Its pipeline.
        pipeline: usize,
        /// The worker.
        worker: ActorRef<WorkerMsg>,
        /// The parent job.
        job_id: JobId,
        /// The child jobs to create.
        children: Vec<SubmitSpec>,
    },
    /// A worker incarnation is gone (crashed, stopped, or its pipeline went down).
    Down {
        /// Its pipeline.
        pipeline: usize,
        /// The gone incarnation.
        worker: ActorId,
        /// Why.
        reason: String,
    },
}

/// Where a worker reports: the dispatcher incarnation running now, if any (a report to a
/// dispatcher that is down is dropped: its successor rebuilds what it needs, and workers
/// announce themselves again).
#[derive(Clone)]
pub struct Reports(Arc<dyn Fn() -> Option<DerivedActorRef<WorkerReport>> + Send + Sync>);

impl Reports {
    /// Reports go to whatever `current` answers at the time of each report.
    pub fn new(
        current: impl Fn() -> Option<DerivedActorRef<WorkerReport>> + Send + Sync + 'static,
    ) -> Reports {
        Reports(Arc::new(current))
    }

    /// Sends `report` without waiting.
    pub fn send(&self, report: WorkerReport) {
        if let Some(d) = (self.0)() {
            let _ = d.send_message(report);
        }
    }
}

/// One job handed to a worker.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// The job.
    pub job_id: JobId,
    /// `<pipeline>.<task>`.
    pub name: String,
    /// The params as JSON text.
    pub params: String,
    /// The attempt this is, from 1.
    pub attempt: u32,
}

/// Messages a worker accepts.
pub enum WorkerMsg {
    /// Run this job.
    Run(Ticket),
    /// The job's task ended: its result, or how it crashed.
    Finished {
        /// The job.
        job_id: JobId,
        /// The task's outcome, or how it crashed.
        outcome: Result<TaskResult, Crash>,
        /// How long the attempt took.
        elapsed: Duration,
    },
    /// Stop the job now running, if it is this one: its task is aborted after `grace`.
    Cancel {
        /// The job.
        job_id: JobId,
        /// Time left to the job before it is aborted.
        grace: Duration,
    },
    /// The job's soft time limit is reached: tell it.
    SoftLimit(JobId),
    /// The job's hard time limit is reached: abort it and have this worker replaced.
    HardLimit(JobId, Duration),
}

/// A panic payload that means the worker itself is broken, not the job: the worker actor fails
/// and its supervisor restarts it with backoff, spending its restart budget.
/// `std::panic::panic_any(WorkerFault(..))` raises it (see `builtin.crash`).
#[derive(Debug, Clone)]
pub struct WorkerFault(pub String);

/// How a job's task crashed.
#[derive(Debug, Clone)]
pub enum Crash {
    /// The job panicked: its failure, and its worker is replaced.
    JobPanicked(String),
    /// The worker is broken ([`WorkerFault`]): the worker actor fails.
    WorkerFault(String),
}

/// How a pipeline's workers bound their jobs.
#[derive(Debug, Clone, Default)]
pub struct WorkerLimits {
    /// Limits of every job.
    pub limits: TimeLimits,
    /// Per-task overrides.
    pub task_limits: BTreeMap<String, TimeLimits>,
    /// Replace the worker after this many jobs.
    pub max_jobs: Option<u64>,
}

impl WorkerLimits {
    /// Whether the worker must see the end of every job itself.
    fn watched(&self) -> bool {
        self.max_jobs.is_some()
            || !self.limits.is_none()
            || self.task_limits.values().any(|l| !l.is_none())
    }

    fn of(&self, task: &str) -> TimeLimits {
        self.limits.overridden_by(self.task_limits.get(task))
    }
}

/// What a worker starts with.
pub struct WorkerArgs {
    /// Index of its pipeline in the dispatcher.
    pub pipeline: usize,
    /// Its path, for logs.
    pub path: String,
    /// Where to report.
    pub reports: Reports,
    /// The tasks it can run.
    pub tasks: TaskSet,
    /// Time limits and recycling.
    pub limits: Arc<WorkerLimits>,
    /// The record store and progress board its tasks get.
    pub env: TaskEnv,
}

/// The worker actor.
pub struct Worker;

/// The job a worker runs now.
struct Current {
    job_id: JobId,
    _task: AbortOnDrop,
    cancel: CancellationToken,
    soft: CancellationToken,
    route: Arc<Route>,
}

/// Who reports the end of an unwatched job, decided once between its task and a `Cancel`: the
/// task straight to the dispatcher (the hot path), or, once a cancel came first, the worker,
/// which must then see the end so that its synthetic "cancelled" result cannot land after the
/// worker took its next job (it would free that job's slot in the dispatcher and the next
/// `Run` would abort it).
#[derive(Debug, Default)]
struct Route(AtomicU8);

impl Route {
    const OPEN: u8 = 0;
    const DIRECT: u8 = 1;
    const VIA_WORKER: u8 = 2;

    /// The task's side: true when it may report straight to the dispatcher.
    fn take_direct(&self) -> bool {
        self.0
            .compare_exchange(
                Self::OPEN,
                Self::DIRECT,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// The cancel's side: true when the job had not reported yet (it will go via the worker).
    fn take_via_worker(&self) -> bool {
        self.0
            .compare_exchange(
                Self::OPEN,
                Self::VIA_WORKER,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }
}

/// A worker's state.
pub struct WorkerState {
    args: WorkerArgs,
    current: Option<Current>,
    jobs_done: u64,
}

/// Marks the attempt's progress ended when its task finishes or is aborted.
struct AttemptEnd(crate::progress::Progress);

impl Drop for AttemptEnd {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Aborts the job's task when dropped, so a killed worker never leaves its job running.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerState, ActorProcessingErr> {
        Ok(WorkerState {
            args,
            current: None,
            jobs_done: 0,
        })
    }

    async fn post_start(
        &self,
        me: ActorRef<WorkerMsg>,
        st: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        st.args.reports.send(WorkerReport::Ready {
            pipeline: st.args.pipeline,
            worker: me,
        });
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        st: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Run(ticket) => st.run(me, ticket),
            WorkerMsg::Finished {
                job_id,
                outcome,
                elapsed,
            } => {
                if !st.is_running(job_id) {
                    return Ok(()); // a late result of a job already reported (cancelled, timed out)
                }
                match outcome {
                    Ok(outcome) => st.report(&me, job_id, outcome, elapsed),
                    Err(Crash::JobPanicked(panic)) => {
                        let why = format!("job {job_id} panicked: {panic}");
                        info!(worker = %st.args.path, job_id = %job_id, reason = %why, "job panicked; replacing the worker");
                        st.current = None;
                        st.send_done(
                            &me,
                            job_id,
                            Err(TaskError::Panic(why.clone())),
                            elapsed,
                            false,
                        );
                        me.stop(Some(Replacement::JobPanicked(why).stop_reason()));
                    }
                    Err(Crash::WorkerFault(fault)) => {
                        return Err(
                            format!("worker fault while running job {job_id}: {fault}").into()
                        )
                    }
                }
            }
            WorkerMsg::Cancel { job_id, grace } => {
                if let Some(c) = st.current.as_ref().filter(|c| c.job_id == job_id) {
                    if !c.route.take_via_worker() {
                        // It ended and reported already: nothing is left to stop.
                        st.current = None;
                        return Ok(());
                    }
                    // Cooperative first: the job sees its cancel signal and may end on its own
                    // within `grace`; then this synthetic result frees the worker, and dropping
                    // the task's guard aborts whatever is left of it.
                    c.cancel.cancel();
                    me.send_after(grace, move || WorkerMsg::Finished {
                        job_id,
                        outcome: Ok(Err(TaskError::Permanent("cancelled".into()))),
                        elapsed: grace,
                    });
                }
            }
            WorkerMsg::SoftLimit(job_id) => {
                if let Some(c) = st.current.as_ref().filter(|c| c.job_id == job_id) {
                    debug!(worker = %st.args.path, job_id = %job_id, "soft time limit reached");
                    c.soft.cancel();
                }
            }
            WorkerMsg::HardLimit(job_id, limit) => {
                if st.is_running(job_id) {
                    let why = format!(
                        "timeout: the job exceeded its time limit of {}",
                        humantime::format_duration(limit)
                    );
                    info!(worker = %st.args.path, job_id = %job_id, reason = %why, "job aborted at its hard time limit; replacing the worker");
                    st.current = None; // aborts the task
                    st.send_done(&me, job_id, Err(TaskError::Timeout(why)), limit, false);
                    me.stop(Some(Replacement::HardTimeLimit.stop_reason()));
                }
            }
        }
        Ok(())
    }
}

impl WorkerState {
    fn is_running(&self, job_id: JobId) -> bool {
        self.current.as_ref().is_some_and(|c| c.job_id == job_id)
    }

    /// Reports a job's end; recycles the worker when it has done its share.
    fn report(
        &mut self,
        me: &ActorRef<WorkerMsg>,
        job_id: JobId,
        outcome: TaskResult,
        elapsed: Duration,
    ) {
        self.current = None;
        self.jobs_done += 1;
        let recycle = self
            .args
            .limits
            .max_jobs
            .is_some_and(|m| self.jobs_done >= m);
        self.send_done(me, job_id, outcome, elapsed, !recycle);
        if recycle {
            info!(worker = %self.args.path, jobs = self.jobs_done, "recycling after max_jobs_per_worker");
            let jobs = self.jobs_done;
            me.stop(Some(Replacement::Recycled { jobs }.stop_reason()));
        }
    }

    fn send_done(
        &self,
        me: &ActorRef<WorkerMsg>,
        job_id: JobId,
        outcome: TaskResult,
        elapsed: Duration,
        ready: bool,
    ) {
        self.args.reports.send(WorkerReport::Done {
            pipeline: self.args.pipeline,
            worker: me.clone(),
            job_id,
            outcome,
            elapsed,
            ready,
        });
    }

    /// Runs one ticket: a batch job's split right here, any other task as an attempt on a task
    /// of its own, watched by this worker.
    fn run(&mut self, me: ActorRef<WorkerMsg>, t: Ticket) {
        let params = serde_json::from_str(&t.params).unwrap_or(serde_json::Value::Null);
        let (cancel, soft_limit) = (CancellationToken::new(), CancellationToken::new());
        let (cancel_tx, soft_tx) = (cancel.clone(), soft_limit.clone());
        let progress = self.args.env.progress.attempt(t.job_id, t.attempt);
        let ended = AttemptEnd(progress.clone());
        let ctx = TaskCtx {
            job_id: t.job_id,
            name: t.name.clone(),
            params,
            attempt: t.attempt,
            cancel,
            soft_limit,
            records: self.args.env.records.for_attempt(t.job_id),
            progress,
        };
        if let Some(split) = self.args.tasks.split(&t.name) {
            return self.run_split(split, me, &t, &ctx);
        }
        let job_id = t.job_id;
        let limits = self.args.limits.of(&t.name);
        let route = Arc::new(Route::default());
        let task = self.spawn_attempt(&me, t, ctx, ended, route.clone());
        if let Some(soft) = limits.soft {
            me.send_after(soft, move || WorkerMsg::SoftLimit(job_id));
        }
        if let Some(hard) = limits.hard {
            me.send_after(hard, move || WorkerMsg::HardLimit(job_id, hard));
        }
        self.current = Some(Current {
            job_id,
            _task: AbortOnDrop(task.abort_handle()),
            cancel: cancel_tx,
            soft: soft_tx,
            route,
        });
    }

    /// A batch job only names its children: that takes no I/O, so it runs right here and the
    /// worker is free again at once.
    fn run_split(&self, split: &SplitFn, me: ActorRef<WorkerMsg>, t: &Ticket, ctx: &TaskCtx) {
        let started = Instant::now();
        let msg = match split(ctx) {
            Ok(children) => WorkerReport::FanOut {
                pipeline: self.args.pipeline,
                worker: me,
                job_id: t.job_id,
                children,
            },
            Err(e) => WorkerReport::Done {
                pipeline: self.args.pipeline,
                worker: me,
                job_id: t.job_id,
                outcome: Err(e),
                elapsed: started.elapsed(),
                ready: true,
            },
        };
        self.args.reports.send(msg);
    }

    /// Spawns the attempt's task: the body, its panic caught, its outcome reported straight to
    /// the dispatcher on the hot path or through this worker when the worker must decide.
    fn spawn_attempt(
        &self,
        me: &ActorRef<WorkerMsg>,
        t: Ticket,
        ctx: TaskCtx,
        ended: AttemptEnd,
        route: Arc<Route>,
    ) -> tokio::task::JoinHandle<()> {
        let body = self.args.tasks.get(&t.name).cloned();
        // A root span: an attempt is never a child of whatever span is current here, so spans
        // cannot chain from one job to the next however long a backlog is.
        let span = tracing::info_span!(parent: None, "job", job_id = %t.job_id, job_name = %t.name, attempt = t.attempt);
        debug!(parent: &span, worker = %self.args.path, "attempt started");
        let job_id = t.job_id;
        let watched = self.args.limits.watched();
        let (reports, pipeline) = (self.args.reports.clone(), self.args.pipeline);
        let task_me = me.clone();
        tokio::spawn(
            async move {
                let _ended = ended;
                let started = Instant::now();
                let outcome = match body {
                    Some(body) => AssertUnwindSafe(body(ctx))
                        .catch_unwind()
                        .await
                        .map_err(panic_text),
                    None => Ok(Err(TaskError::Permanent(format!(
                        "no task named {} in this pipeline",
                        t.name
                    )))),
                };
                let elapsed = started.elapsed();
                match outcome {
                    // The hot path skips a hop through the worker's mailbox (see the module doc).
                    Ok(outcome) if !watched && route.take_direct() => {
                        reports.send(WorkerReport::Done {
                            pipeline,
                            worker: task_me,
                            job_id,
                            outcome,
                            elapsed,
                            ready: true,
                        })
                    }
                    // A crash is decided by the worker actor (it is replaced or fails), so it
                    // goes through its mailbox.
                    outcome => {
                        let _ = task_me.cast(WorkerMsg::Finished {
                            job_id,
                            outcome,
                            elapsed,
                        });
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// Classifies a caught panic by its payload's type: a [`WorkerFault`] or the job's own panic.
fn panic_text(p: Box<dyn std::any::Any + Send>) -> Crash {
    if let Some(fault) = p.downcast_ref::<WorkerFault>() {
        return Crash::WorkerFault(fault.0.clone());
    }
    Crash::JobPanicked(
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic with a non-text payload".into()),
    )
}

/// The recipe for `worker-N` of a pipeline. Tells the dispatcher when an incarnation is gone so
/// that the job it was running goes back to its queue at once.
pub struct WorkerSpec {
    name: String,
    pipeline: usize,
    reports: Reports,
    tasks: TaskSet,
    limits: Arc<WorkerLimits>,
    env: TaskEnv,
    incarnation: Incarnation<WorkerMsg>,
}

impl WorkerSpec {
    /// A recipe for worker `n` (1-based) of pipeline `pipeline`.
    pub fn new(
        n: usize,
        pipeline: usize,
        reports: Reports,
        tasks: TaskSet,
        limits: Arc<WorkerLimits>,
        env: TaskEnv,
    ) -> Arc<Self> {
        Arc::new(Self {
            name: format!("worker-{n}"),
            pipeline,
            reports,
            tasks,
            limits,
            env,
            incarnation: Incarnation::default(),
        })
    }
}

impl ChildSpec for WorkerSpec {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn kind(&self) -> &'static str {
        "worker"
    }
    fn spawn(
        &self,
        supervisor: ActorCell,
        path: String,
    ) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
        let args = WorkerArgs {
            pipeline: self.pipeline,
            path,
            reports: self.reports.clone(),
            tasks: self.tasks.clone(),
            limits: self.limits.clone(),
            env: self.env.clone(),
        };
        spawn_child(Worker, args, supervisor)
    }
    fn on_up(&self, cell: &ActorCell) {
        self.incarnation.up(cell);
    }
    fn on_down(&self, reason: &str) {
        if let Some(worker) = self.incarnation.down() {
            self.reports.send(WorkerReport::Down {
                pipeline: self.pipeline,
                worker,
                reason: reason.to_string(),
            });
        }
    }
}
