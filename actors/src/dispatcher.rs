//! The dispatcher: the node's single owner of job state. It journals every transition, routes
//! submitted jobs to their pipeline's [`RunQueue`](crate::queue::RunQueue), hands the next job to a worker that said it
//! is ready (workers pull; nothing is prefetched), holds delayed and retrying jobs on one timer,
//! and decides each outcome: success, retry with backoff, dead-letter.
//!
//! One actor owns all of this so that dedup, the queue bound and every transition are decided in
//! one place without locks. Reads that need no decision (`status`, `list`, `history`) go to the
//! journal directly, which is always current because the dispatcher writes before it answers.
//!
//! On start (the node's boot, or a restart by the root supervisor) it replays the journal:
//! pending, retrying and running jobs go back to their queues.

mod admission;
mod core;
mod fanout;
mod live;
mod meters;
pub(crate) use self::fanout::Tally;
pub(crate) use self::meters::Meters;
mod verdict;
mod views;
mod workflow;

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use crate::args::{JobsArgs, RetryPolicy};
use crate::job::{JobId, JobRecord};
use crate::pipeline::worker::{Reports, WorkerMsg, WorkerReport};
use crate::protocol::{ApiError, SubmitSpec};
use crate::routing::Router;
use crate::store::journal::Journal;

pub use self::admission::{no_pipeline, route, route_all};
pub use self::core::DispatcherState;
pub use self::verdict::{retry_or_give_up, verdict, ThrottleCause, Verdict};
pub use self::views::{
    Accepted, Blocker, BlockerKind, PipelineView, QueueDepths, Stats, Totals, UnfinishedCounts,
    WorkersView,
};
pub(crate) use self::workflow::held_detail;
pub use self::workflow::WorkflowSpec;

/// How often the queue and worker gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_millis(250);
/// How often finished jobs past their retention are compacted away.
const COMPACT_EVERY: Duration = Duration::from_secs(3600);

/// Where workers and the admin actor find the current dispatcher.
pub type DispatcherLink = crate::link::Link<DispatcherMsg>;

/// Reads the last known state of a limiter or breaker, for `pipelines`.
pub type StateView = Arc<dyn Fn() -> Option<serde_json::Value> + Send + Sync>;

/// One pipeline as the dispatcher sees it.
#[derive(Clone)]
pub struct PipelineInfo {
    /// Its name.
    pub name: String,
    /// Retry policy for its jobs.
    pub retry: RetryPolicy,
    /// The job names it serves.
    pub tasks: Vec<String>,
    /// Its rate limiter's state, for pipelines with an upstream.
    pub limiter_view: Option<StateView>,
    /// Its circuit breaker's state, for pipelines with an upstream.
    pub breaker_view: Option<StateView>,
}

/// What the dispatcher starts with.
#[derive(Clone)]
pub struct DispatcherArgs {
    /// The journal.
    pub journal: Journal,
    /// Limits.
    pub jobs: JobsArgs,
    /// The pipelines, by index.
    pub pipelines: Vec<PipelineInfo>,
    /// Routing rules.
    pub router: Router,
    /// Set to this incarnation in `pre_start`.
    pub link: DispatcherLink,
    /// Told of every dead-lettered job.
    pub alerter: crate::alerts::Alerter,
    /// Tracks compactions, so the node's stop awaits them.
    pub tasks: tokio_util::task::TaskTracker,
}

/// Messages the dispatcher accepts.
pub enum DispatcherMsg {
    /// Accept jobs: validated, routed, journaled (not yet fsync'd: the caller awaits
    /// [`Journal::durable`] before it answers the client). All or none.
    Submit(
        Vec<SubmitSpec>,
        RpcReplyPort<Result<Vec<Accepted>, ApiError>>,
    ),
    /// News from a worker: ready, an attempt's end, a batch job's children, gone.
    Worker(WorkerReport),
    /// A delayed or retrying job may be due.
    Tick,
    /// Remove finished jobs past their retention.
    Compact,
    /// Publish the queue and worker gauges.
    Gauges,
    /// Counts for `stats`.
    Stats(RpcReplyPort<Stats>),
    /// The transitions counted since start, alone: O(1), where `Stats` walks every live job
    /// (the console samples it every second for its chart).
    Totals(RpcReplyPort<Totals>),
    /// The jobs on a worker now, by pipeline: O(workers), where a listing of running jobs
    /// would walk the unfinished index (the console's overview).
    Running(RpcReplyPort<Vec<(String, JobId)>>),
    /// Every pipeline's state.
    Pipelines(RpcReplyPort<Vec<PipelineView>>),
    /// Pause (true) or resume (false) a pipeline.
    SetPaused(String, bool, RpcReplyPort<Result<PipelineView, ApiError>>),
    /// Cancel a job.
    Cancel(JobId, RpcReplyPort<Result<JobRecord, ApiError>>),
    /// Send a failed or cancelled job back to its queue.
    Retry(JobId, RpcReplyPort<Result<JobRecord, ApiError>>),
    /// Stop taking work; answer once no job runs.
    Drain(RpcReplyPort<()>),
    /// What a job waits for now.
    Why(JobId, RpcReplyPort<Result<Blocker, ApiError>>),
    /// Accept a workflow: its id and its jobs' ids (the `then` job last).
    SubmitWorkflow(
        WorkflowSpec,
        RpcReplyPort<Result<(uuid::Uuid, Vec<JobId>), ApiError>>,
    ),
    /// Cancel these just-submitted jobs: their submit could not be made durable and the client
    /// was told it failed.
    Withdraw(Vec<JobId>),
    /// Write the job loop's changes gathered since the last write (see `is_job_loop`).
    Flush,
    /// A pipeline's circuit breaker opened (true) or let traffic through again (false): while
    /// it is open the pipeline's workers get no jobs.
    BreakerOpen(usize, bool),
    /// News from the cluster store's loops (cluster mode only; the single node's dispatcher
    /// never receives one).
    Cluster(crate::cluster::Event),
}

impl DispatcherMsg {
    /// Whether this message is part of the job loop, whose writes are gathered.
    ///
    /// Each sled `apply_batch` seals and writes a log buffer of its own (a `pwrite` and a
    /// `sync_file_range`; measured: two of each per job when every message wrote its own
    /// batch), so the job loop (a job done, a worker ready, the timer) does not write at the end
    /// of each message: it casts itself a `Flush`, which lands behind the messages already
    /// queued, and the changes of all of them go out in one batch. Every other message (a
    /// request from the admin port, the gauges, the `Flush`) first writes what is gathered, so
    /// that what it answers, and the commit a client then waits for, cover every change made
    /// before it. Until the write the changed records stay in memory (`cool` runs after it), and
    /// none of these changes has been acknowledged: a crash before the write replays the jobs as
    /// they were, as a crash before sled wrote its buffer would.
    fn is_job_loop(&self) -> bool {
        matches!(self, DispatcherMsg::Worker(_) | DispatcherMsg::Tick)
    }
}

impl From<WorkerReport> for DispatcherMsg {
    fn from(r: WorkerReport) -> Self {
        DispatcherMsg::Worker(r)
    }
}

/// The way back, which ractor needs to hand an undelivered report to its sender.
impl TryFrom<DispatcherMsg> for WorkerReport {
    type Error = DispatcherMsg;
    fn try_from(m: DispatcherMsg) -> Result<Self, DispatcherMsg> {
        match m {
            DispatcherMsg::Worker(r) => Ok(r),
            other => Err(other),
        }
    }
}

/// What a dispatcher does with each kind of [`WorkerReport`]; [`route_report`] routes them the
/// same way in both dispatchers (the single node's, cluster mode's).
pub(crate) trait Reported {
    /// A worker is idle.
    fn on_ready(&mut self, lane: usize, worker: ActorRef<WorkerMsg>);
    /// A job's attempt on `worker` ended.
    fn on_done(
        &mut self,
        lane: usize,
        worker: ActorId,
        job: JobId,
        outcome: crate::tasks::TaskResult,
        elapsed: Duration,
    );
    /// Batch job `job` named its children.
    fn on_fan_out(&mut self, lane: usize, worker: ActorId, job: JobId, children: Vec<SubmitSpec>);
    /// A worker incarnation is gone.
    fn on_down(&mut self, lane: usize, worker: ActorId, reason: &str);
}

/// Hands `report` to `d`; a worker that finished (and stays) or fanned out is idle again.
pub(crate) fn route_report(d: &mut impl Reported, report: WorkerReport) {
    match report {
        WorkerReport::Ready { pipeline, worker } => d.on_ready(pipeline, worker),
        WorkerReport::FanOut {
            pipeline,
            worker,
            job_id,
            children,
        } => {
            d.on_fan_out(pipeline, worker.get_id(), job_id, children);
            d.on_ready(pipeline, worker);
        }
        WorkerReport::Done {
            pipeline,
            worker,
            job_id,
            outcome,
            elapsed,
            ready,
        } => {
            d.on_done(pipeline, worker.get_id(), job_id, outcome, elapsed);
            if ready {
                d.on_ready(pipeline, worker);
            }
        }
        WorkerReport::Down {
            pipeline,
            worker,
            reason,
        } => d.on_down(pipeline, worker, &reason),
    }
}

/// Where the workers report: whichever dispatcher incarnation `link` points at, seen by them
/// only as something that takes a [`WorkerReport`].
pub fn reports(link: &DispatcherLink) -> Reports {
    let link = link.clone();
    Reports::new(move || link.get().map(|d| d.get_derived()))
}

/// How the dispatcher reaches one worker: its id and a way to hand it a job or a cancel. A
/// worker actor in the node; in the core's unit tests, a channel (so the core is tested without
/// any actor).
#[derive(Clone)]
pub enum WorkerPort {
    /// A worker actor.
    Actor(ActorRef<WorkerMsg>),
    /// A stand-in: what the core sends lands in the channel.
    #[cfg(test)]
    Channel(ActorId, tokio::sync::mpsc::UnboundedSender<WorkerMsg>),
}

impl WorkerPort {
    /// The worker's id (its incarnation's, for an actor).
    pub fn id(&self) -> ActorId {
        match self {
            WorkerPort::Actor(a) => a.get_id(),
            #[cfg(test)]
            WorkerPort::Channel(id, _) => *id,
        }
    }

    /// Hands `msg` to the worker; false when it is gone.
    pub fn send(&self, msg: WorkerMsg) -> bool {
        match self {
            WorkerPort::Actor(a) => a.cast(msg).is_ok(),
            #[cfg(test)]
            WorkerPort::Channel(_, tx) => tx.send(msg).is_ok(),
        }
    }
}

impl From<ActorRef<WorkerMsg>> for WorkerPort {
    fn from(a: ActorRef<WorkerMsg>) -> Self {
        WorkerPort::Actor(a)
    }
}

/// Counts `worker` (id `wid`) among a lane's workers and its idle ones (once, however often it
/// says it is ready): the same bookkeeping in both dispatchers.
pub fn enlist<W: Clone>(
    workers: &mut std::collections::HashMap<ActorId, W>,
    idle: &mut Vec<W>,
    worker: W,
    wid: ActorId,
    id_of: impl Fn(&W) -> ActorId,
) {
    workers.insert(wid, worker.clone());
    if !idle.iter().any(|w| id_of(w) == wid) {
        idle.push(worker);
    }
}

/// The dispatcher actor.
#[derive(Clone, Copy)]
pub struct Dispatcher;

impl Actor for Dispatcher {
    type Msg = DispatcherMsg;
    type State = DispatcherState;
    type Arguments = DispatcherArgs;

    async fn pre_start(
        &self,
        me: ActorRef<DispatcherMsg>,
        args: DispatcherArgs,
    ) -> Result<DispatcherState, ActorProcessingErr> {
        let link = args.link.clone();
        let mut st = DispatcherState::new(args);
        let replaying = std::time::Instant::now();
        let replayed = st.replay()?;
        let took_ms = replaying.elapsed().as_millis() as u64;
        info!(
            actor = "root/dispatcher",
            replayed, took_ms, "journal replayed"
        );
        link.set(me.clone());
        st.arm_timer(&me);
        me.send_interval(COMPACT_EVERY, || DispatcherMsg::Compact);
        // Gauges are published on a timer rather than per message: a handful of registry
        // look-ups per job is measurable at 30k jobs/s, and a scrape is seconds apart anyway.
        me.send_interval(GAUGES_EVERY, || DispatcherMsg::Gauges);
        st.publish_gauges(st.journal().admit_writes().is_err());
        let _ = me.cast(DispatcherMsg::Compact);
        Ok(st)
    }

    async fn handle(
        &self,
        me: ActorRef<DispatcherMsg>,
        msg: DispatcherMsg,
        st: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        let job_loop = msg.is_job_loop();
        if !job_loop {
            // Whatever answers or reads next sees every change made before it.
            let _ = st.flush_journal();
        }
        match msg {
            DispatcherMsg::Flush => st.flush_scheduled = false,
            DispatcherMsg::Submit(specs, reply) => {
                let _ = reply.send(st.submit(specs));
            }
            DispatcherMsg::Worker(report) => route_report(st, report),
            DispatcherMsg::Tick => st.tick(),
            DispatcherMsg::Compact => st.compact(),
            DispatcherMsg::Gauges => st.gauges()?,
            DispatcherMsg::Stats(reply) => {
                let _ = reply.send(st.stats());
            }
            DispatcherMsg::Totals(reply) => {
                let _ = reply.send(st.totals);
            }
            DispatcherMsg::Running(reply) => {
                let _ = reply.send(st.running_jobs());
            }
            DispatcherMsg::Pipelines(reply) => {
                let _ = reply.send(st.pipeline_views());
            }
            DispatcherMsg::SetPaused(name, paused, reply) => {
                let _ = reply.send(st.set_paused(&name, paused));
            }
            // Answers that change a job are sent after the journal write, so that a `status`
            // pipelined right behind them (read from the journal) sees the change.
            DispatcherMsg::Cancel(id, reply) => {
                let r = st.cancel(id);
                let _ = reply.send(st.written(r));
            }
            DispatcherMsg::Retry(id, reply) => {
                let r = st.retry(id);
                let _ = reply.send(st.written(r));
            }
            DispatcherMsg::Drain(reply) => st.drain(reply),
            DispatcherMsg::Why(id, reply) => {
                let _ = reply.send(st.why(id));
            }
            DispatcherMsg::SubmitWorkflow(spec, reply) => {
                let _ = reply.send(st.submit_workflow(spec));
            }
            DispatcherMsg::BreakerOpen(lane, open) => st.set_breaker_open(lane, open),
            DispatcherMsg::Withdraw(ids) => st.withdraw(ids),
            DispatcherMsg::Cluster(_) => {}
        }
        st.write_or_gather(&me, job_loop);
        st.arm_timer(&me);
        Ok(())
    }

    async fn post_stop(
        &self,
        me: ActorRef<DispatcherMsg>,
        st: &mut DispatcherState,
    ) -> Result<(), ActorProcessingErr> {
        let _ = st.flush_journal();
        st.unlink(me.get_id());
        if let Err(e) = st.journal().sync_now() {
            warn!(actor = "root/dispatcher", error = %e, "final journal sync failed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
