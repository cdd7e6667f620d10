//! The dispatcher of cluster mode. It takes the single node's [`DispatcherMsg`]s, so workers, the
//! admin port and the root supervisor talk to it unchanged, but it keeps no queue: the jobs
//! table is the queue. It remembers only what runs on this node (worker → job and claim).
//!
//! The job loop: a worker that is ready or done casts its message; the dispatcher gathers the
//! ends of jobs, each with the records its attempt stored (the attempt's buffer, opened when the
//! job was handed out: `tasks/records.rs`), and casts itself a `Flush`, which writes them in one
//! fenced statement, then
//! claims as many jobs as it has idle workers, per pipeline, in one statement each. Jobs are
//! claimed when a worker is idle and the pipeline may have work: after a submit here, a NOTIFY
//! from another node, or the poll (every second, the fallback when a NOTIFY is lost).
//!
//! It never blocks on the store for long: every statement has the store's timeout, and a
//! failed write keeps the completions to be written by the next flush (they are fenced, so a
//! write repeated after a lost answer changes nothing).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::background::Loops;
use super::fanout::FanOut;
use super::operator::{unavailable, Counts};
use super::store::{Claimed, Completion, NewRow, Outcome};
use super::workflows::NewWorkflow;
use super::Cluster;
use crate::alerts::Alerter;
use crate::args::JobsArgs;
use crate::dispatcher::{
    no_pipeline, retry_or_give_up, route, route_all, verdict, Accepted, Blocker, BlockerKind,
    DispatcherLink, DispatcherMsg, PipelineInfo, PipelineView, QueueDepths, Stats, Totals, Verdict,
    WorkersView, WorkflowSpec,
};
use crate::job::{now_ms, rfc3339_ms, JobId, JobRecord, JobStatus};
use crate::metrics as m;
use crate::pipeline::worker::{Ticket, WorkerMsg};
use crate::protocol::{ApiError, ErrorCode, SubmitSpec};
use crate::routing::Router;
use crate::tasks::{Attempts, Buffer, TaskResult};

/// How often the queue and worker gauges are refreshed.
const GAUGES_EVERY: Duration = Duration::from_millis(250);

/// News from the loops of `background.rs`.
#[derive(Debug)]
pub enum Event {
    /// New jobs in this pipeline (None: maybe in any).
    Wake(Option<String>),
    /// These jobs were cancelled; stop them if they run here.
    Cancelled(Vec<JobId>),
    /// A heartbeat was attempted.
    Beat {
        /// A beat succeeded within `stop_claiming_after`.
        healthy: bool,
        /// The pipelines paused cluster-wide, when they could be read, and when that read
        /// began: a read that began before this node's own last `pause` or `resume` may not
        /// see it, and must not undo it.
        paused: Option<(Instant, HashSet<String>)>,
        /// The unfinished jobs, when they could be counted.
        counts: Option<Counts>,
    },
}

/// What the cluster dispatcher starts with.
#[derive(Clone)]
pub struct ClusterDispatcherArgs {
    /// The store.
    pub cluster: Cluster,
    /// Limits.
    pub jobs: JobsArgs,
    /// The pipelines, by index.
    pub pipelines: Vec<PipelineInfo>,
    /// Routing rules.
    pub router: Router,
    /// Set to this incarnation in `pre_start`.
    pub link: DispatcherLink,
    /// Told of every dead-lettered job.
    pub alerter: Alerter,
    /// This node's admin address, shown by `nodes`.
    pub admin: String,
    /// The record buffers of the attempts running here (the workers' tasks store into them).
    pub attempts: Attempts,
}

/// A job running on this node.
struct Running {
    claim: Claimed,
    /// The records its attempt stores, written with its completion.
    records: Arc<Buffer>,
    /// Cancelled while it ran: its row is final already, so its end is not counted and only
    /// the records its attempt stored are written (`Outcome::Cancelled`).
    cancelled: bool,
}

/// One pipeline on this node.
struct Lane {
    info: PipelineInfo,
    idle: Vec<ActorRef<WorkerMsg>>,
    workers: HashMap<ActorId, ActorRef<WorkerMsg>>,
    running: HashMap<ActorId, Running>,
    paused: bool,
    breaker_open: bool,
    /// Jobs may be waiting: claim when a worker is idle.
    maybe_work: bool,
    /// A job of this pipeline has waited `[jobs] max_wait`: claims age (`Jobs::claim`).
    aging: bool,
}

impl AsRef<PipelineInfo> for Lane {
    fn as_ref(&self) -> &PipelineInfo {
        &self.info
    }
}

impl Lane {
    /// Whether a claim for this lane may find work and has a worker for it.
    fn claimable(&self) -> bool {
        self.maybe_work && !self.idle.is_empty() && !self.paused && !self.breaker_open
    }
}

/// Everything the cluster dispatcher knows.
pub struct State {
    cluster: Cluster,
    limits: JobsArgs,
    router: Router,
    link: DispatcherLink,
    alerter: Alerter,
    attempts: Attempts,
    lanes: Vec<Lane>,
    /// Metric handles of the job loop.
    meters: crate::dispatcher::Meters,
    /// Ends of jobs not written yet.
    done: Vec<Completion>,
    /// Fan-outs of batch jobs not written yet.
    fan_outs: Vec<FanOut>,
    /// The dead-lettered among them, for the alert webhook once written.
    dead: Vec<JobId>,
    flush_scheduled: bool,
    /// A heartbeat succeeded lately: claims are allowed.
    healthy: bool,
    /// This node's previous incarnation's running jobs were sent back.
    own_rescued: bool,
    /// The last write or claim failed: the job loop waits for the next tick (the poll) to try
    /// again, rather than spin on a server that is down.
    store_down: bool,
    /// The current outage was logged.
    down_logged: bool,
    /// When this node's own last `pause` or `resume` was committed.
    paused_set_at: Option<Instant>,
    /// The latest counts of the whole cluster.
    counts: Counts,
    totals: Totals,
    draining: bool,
    drain_waiters: Vec<RpcReplyPort<()>>,
    /// Jobs running here, for the heartbeat.
    running: Arc<AtomicUsize>,
    /// Pipelines with new jobs not announced yet, and when each was last announced.
    owed: HashSet<String>,
    announced: HashMap<String, Instant>,
    /// Stops the background loops with this incarnation.
    token: CancellationToken,
    started: Instant,
}

/// The dispatcher actor of cluster mode.
#[derive(Clone, Copy)]
pub struct ClusterDispatcher;

impl Actor for ClusterDispatcher {
    type Msg = DispatcherMsg;
    type State = State;
    type Arguments = ClusterDispatcherArgs;

    async fn pre_start(
        &self,
        me: ActorRef<DispatcherMsg>,
        args: ClusterDispatcherArgs,
    ) -> Result<State, ActorProcessingErr> {
        let mut st = State::new(&args);
        args.attempts.clear();
        // The node's row first: the leader rescues the running jobs of any node without a
        // recent heartbeat, so a node claims nothing before its first beat is stored.
        let incarnation = uuid::Uuid::now_v7();
        st.healthy = match st.cluster.jobs.heartbeat(incarnation, &args.admin, 0).await {
            Ok(()) => true,
            Err(e) => {
                warn!(actor = "root/dispatcher", error = %e.message(), "first heartbeat failed; claiming waits for one");
                false
            }
        };
        st.rescue_own().await;
        args.link.set(me.clone());
        Loops {
            cluster: args.cluster.clone(),
            me: me.clone(),
            running: st.running.clone(),
            admin: args.admin,
            incarnation,
            retention: args.jobs.retention,
            token: st.token.clone(),
            advance: Default::default(),
        }
        .spawn();
        let poll = args.cluster.args.timing.poll;
        me.send_interval(poll, || DispatcherMsg::Tick);
        me.send_interval(GAUGES_EVERY, || DispatcherMsg::Gauges);
        info!(actor = "root/dispatcher", node = %args.cluster.args.node_id,
            store = %args.cluster.target().shown, schema = %args.cluster.args.schema, "cluster dispatcher started");
        Ok(st)
    }

    async fn handle(
        &self,
        me: ActorRef<DispatcherMsg>,
        msg: DispatcherMsg,
        st: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        st.handle(msg).await;
        if st.wants_flush() && !st.flush_scheduled {
            st.flush_scheduled = me.cast(DispatcherMsg::Flush).is_ok();
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        me: ActorRef<DispatcherMsg>,
        st: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        st.write_done().await;
        st.token.cancel();
        st.link.clear_if(me.get_id());
        Ok(())
    }
}

impl State {
    fn new(args: &ClusterDispatcherArgs) -> State {
        let lanes = args
            .pipelines
            .iter()
            .map(|info| Lane {
                info: info.clone(),
                idle: Vec::new(),
                workers: HashMap::new(),
                running: HashMap::new(),
                paused: false,
                breaker_open: false,
                maybe_work: true,
                aging: false,
            })
            .collect();
        State {
            cluster: args.cluster.clone(),
            limits: args.jobs.clone(),
            router: args.router.clone(),
            link: args.link.clone(),
            alerter: args.alerter.clone(),
            attempts: args.attempts.clone(),
            lanes,
            meters: Default::default(),
            done: Vec::new(),
            fan_outs: Vec::new(),
            dead: Vec::new(),
            flush_scheduled: false,
            healthy: true,
            own_rescued: false,
            store_down: false,
            down_logged: false,
            paused_set_at: None,
            counts: Counts::default(),
            totals: Totals::default(),
            draining: false,
            drain_waiters: Vec::new(),
            running: Arc::new(AtomicUsize::new(0)),
            owed: HashSet::new(),
            announced: HashMap::new(),
            token: CancellationToken::new(),
            started: Instant::now(),
        }
    }

    async fn handle(&mut self, msg: DispatcherMsg) {
        match msg {
            DispatcherMsg::Flush => self.flush().await,
            DispatcherMsg::Worker(report) => crate::dispatcher::route_report(self, report),
            DispatcherMsg::Tick => self.tick().await,
            DispatcherMsg::Compact => {}
            DispatcherMsg::Gauges => self.publish_gauges(),
            DispatcherMsg::Submit(specs, reply) => {
                let _ = reply.send(self.submit(specs).await);
            }
            DispatcherMsg::Stats(reply) => {
                let _ = reply.send(self.stats().await);
            }
            DispatcherMsg::Totals(reply) => {
                let _ = reply.send(self.totals);
            }
            DispatcherMsg::Running(reply) => {
                let _ = reply.send(self.running_jobs());
            }
            DispatcherMsg::Pipelines(reply) => {
                let _ = reply.send((0..self.lanes.len()).map(|i| self.view(i)).collect());
            }
            DispatcherMsg::SetPaused(name, paused, reply) => {
                let _ = reply.send(self.set_paused(&name, paused).await);
            }
            DispatcherMsg::Cancel(id, reply) => {
                let _ = reply.send(self.cancel(id).await);
            }
            DispatcherMsg::Retry(id, reply) => {
                let _ = reply.send(self.retry(id).await);
            }
            DispatcherMsg::Drain(reply) => {
                self.draining = true;
                self.drain_waiters.push(reply);
                self.check_drained();
            }
            DispatcherMsg::Why(id, reply) => {
                let _ = reply.send(self.why(id).await);
            }
            DispatcherMsg::SubmitWorkflow(spec, reply) => {
                let _ = reply.send(self.submit_workflow(spec).await);
            }
            DispatcherMsg::Withdraw(ids) => {
                for id in ids {
                    let _ = self.cluster.jobs.cancel(id).await;
                }
            }
            DispatcherMsg::BreakerOpen(lane, open) => {
                if let Some(l) = self.lanes.get_mut(lane) {
                    l.breaker_open = open;
                    l.maybe_work |= !open;
                }
            }
            DispatcherMsg::Cluster(event) => self.event(event).await,
        }
    }

    /// Whether a flush has work: ends to write, or idle workers where jobs may wait.
    fn wants_flush(&self) -> bool {
        if self.store_down {
            return false;
        }
        !self.done.is_empty()
            || !self.fan_outs.is_empty()
            || (self.may_claim() && self.lanes.iter().any(Lane::claimable))
    }

    fn may_claim(&self) -> bool {
        !self.draining && self.healthy && self.own_rescued
    }

    async fn event(&mut self, event: Event) {
        match event {
            Event::Wake(None) => self.lanes.iter_mut().for_each(|l| l.maybe_work = true),
            Event::Wake(Some(p)) => {
                if let Some(l) = self.lanes.iter_mut().find(|l| l.info.name == p) {
                    l.maybe_work = true;
                }
            }
            Event::Cancelled(ids) => self.stop_cancelled(&ids),
            Event::Beat {
                healthy,
                paused,
                counts,
            } => {
                if healthy != self.healthy {
                    warn!(
                        actor = "root/dispatcher",
                        healthy,
                        "claiming {}",
                        if healthy {
                            "resumed: the heartbeat is back"
                        } else {
                            "stopped: no heartbeat reached the store lately"
                        }
                    );
                }
                self.healthy = healthy;
                let fresh = |(read_at, _): &(Instant, _)| {
                    self.paused_set_at.is_none_or(|set| *read_at > set)
                };
                if let Some((_, paused)) = paused.filter(fresh) {
                    for l in &mut self.lanes {
                        l.paused = paused.contains(&l.info.name);
                    }
                }
                if let Some(c) = counts {
                    self.counts = c;
                }
                self.recheck_cancels().await;
            }
        }
    }

    /// This node's previous incarnation left jobs running: back to their queues at once (no
    /// other node would rescue them, since this node beats again).
    async fn rescue_own(&mut self) {
        let silent = self.cluster.args.timing.silent_after;
        match self.cluster.jobs.rescue(silent, true).await {
            Ok(r) => {
                if r.requeued + r.dead > 0 {
                    warn!(
                        actor = "root/dispatcher",
                        requeued = r.requeued,
                        dead_lettered = r.dead,
                        "jobs this node ran when it stopped were sent back"
                    );
                }
                self.own_rescued = true;
            }
            Err(e) => warn!(actor = "root/dispatcher", error = %e.message(),
                "cannot send back the jobs this node ran when it stopped; claiming waits until it can"),
        }
    }

    async fn tick(&mut self) {
        self.store_down = false;
        if !self.own_rescued {
            self.rescue_own().await;
        }
        self.lanes.iter_mut().for_each(|l| l.maybe_work = true);
        self.check_aging().await;
        self.announce().await;
    }

    /// Whether each pipeline's claims must age now: some job has waited `[jobs] max_wait`.
    async fn check_aging(&mut self) {
        let names: Vec<String> = self.lanes.iter().map(|l| l.info.name.clone()).collect();
        match self.cluster.jobs.aging(&names, self.limits.max_wait).await {
            Ok(aging) => {
                for (l, aging) in self.lanes.iter_mut().zip(aging) {
                    l.aging = aging;
                }
            }
            Err(e) => debug!(error = %e.message(), "aging not checked; claims keep their order"),
        }
    }

    /// Writes the gathered ends and claims for idle workers, both at once on two connections:
    /// they touch different rows (running jobs, runnable jobs), and overlapping the two round
    /// trips and their commits is what a worker waits for between two jobs.
    async fn flush(&mut self) {
        self.flush_scheduled = false;
        let done = std::mem::take(&mut self.done);
        let max_wait = self.limits.max_wait;
        let asks: Vec<(usize, String, usize, Option<Duration>)> = if self.may_claim() {
            self.lanes
                .iter()
                .enumerate()
                .filter(|(_, l)| l.claimable())
                .map(|(i, l)| {
                    (
                        i,
                        l.info.name.clone(),
                        l.idle.len(),
                        l.aging.then_some(max_wait),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let fan_outs = std::mem::take(&mut self.fan_outs);
        let jobs = self.cluster.jobs.clone();
        let write = async {
            let fanned = write_fan_outs(&jobs, &fan_outs).await;
            let ended = if done.is_empty() {
                Ok(Vec::new())
            } else {
                jobs.complete(&done).await
            };
            (fanned, ended)
        };
        let claims = async {
            let mut out = Vec::with_capacity(asks.len());
            for (lane, name, want, aging) in &asks {
                out.push((*lane, *want, jobs.claim(name, *want, *aging).await));
            }
            out
        };
        let ((fanned, written), claimed) = tokio::join!(write, claims);
        self.fans_written(fan_outs, fanned).await;
        self.written(done, written).await;
        for (lane, want, got) in claimed {
            match got {
                Ok(c) => {
                    self.store_up();
                    self.lanes[lane].maybe_work = c.len() == want;
                    c.into_iter().for_each(|c| self.start(lane, c));
                }
                Err(e) => self.store_failed(&e, "claim failed; trying again at the next poll"),
            }
        }
        self.check_drained();
    }

    /// Writes the gathered fan-outs and ends alone (at stop).
    async fn write_done(&mut self) {
        if !self.fan_outs.is_empty() {
            let fan_outs = std::mem::take(&mut self.fan_outs);
            let fanned = write_fan_outs(&self.cluster.jobs, &fan_outs).await;
            self.fans_written(fan_outs, fanned).await;
        }
        if !self.done.is_empty() {
            let done = std::mem::take(&mut self.done);
            let written = self.cluster.jobs.complete(&done).await;
            self.written(done, written).await;
        }
    }

    /// Takes the answer to writing `done`: a refused write keeps them, ahead of the ends
    /// gathered since, for the next try.
    async fn written(
        &mut self,
        mut done: Vec<Completion>,
        answer: Result<Vec<JobId>, crate::postgres::Failure>,
    ) {
        match answer {
            Ok(written) => {
                let fenced = done.len() - written.len();
                if fenced > 0 {
                    warn!(
                        actor = "root/dispatcher",
                        fenced,
                        "job ends not written: those jobs were rescued or cancelled meanwhile"
                    );
                }
                if !self.dead.is_empty() {
                    self.alert(&written).await;
                }
                if !done.is_empty() {
                    self.store_up();
                }
            }
            Err(e) => {
                done.append(&mut self.done);
                self.done = done;
                self.store_failed(&e, "cannot write job ends; kept for the next try");
            }
        }
    }

    /// Takes the answers to writing `fan_outs`, in order: a refused write keeps that fan-out and
    /// those after it for the next try; the children of those written may be claimed anywhere.
    async fn fans_written(
        &mut self,
        fan_outs: Vec<FanOut>,
        answers: Vec<Result<bool, crate::postgres::Failure>>,
    ) {
        let mut fan_outs = fan_outs.into_iter();
        for (f, answer) in fan_outs.by_ref().zip(answers) {
            match answer {
                Ok(true) => self.children_added(&f),
                Ok(false) => warn!(actor = "root/dispatcher", job_id = %f.parent,
                    "fan-out not written: the job was rescued or cancelled meanwhile"),
                Err(e) => {
                    self.fan_outs.push(f);
                    self.store_failed(&e, "cannot write a fan-out; kept for the next try");
                }
            }
        }
        // Those after a refused write were not tried.
        self.fan_outs.extend(fan_outs);
        self.announce().await;
    }

    /// A fan-out was written: its children count as submitted and their pipelines are woken.
    fn children_added(&mut self, f: &FanOut) {
        self.store_up();
        info!(actor = "root/dispatcher", job_id = %f.parent, children = f.children.len(), "fanned out");
        for row in &f.children {
            self.added(row);
        }
    }

    /// A new job is in the table: counted as submitted, its pipeline owed a wake-up.
    fn added(&mut self, row: &NewRow) {
        self.totals.submitted += 1;
        self.meters.job(&row.name).submitted.increment(1);
        self.owed.insert(row.pipeline.clone());
        if let Some(l) = self.lanes.iter_mut().find(|l| l.info.name == row.pipeline) {
            l.maybe_work = true;
        }
    }

    /// Accepts a workflow on any node: its structure and all its jobs in one statement, the
    /// steps that wait held until the leader releases them (`workflows.rs`).
    async fn submit_workflow(
        &mut self,
        spec: WorkflowSpec,
    ) -> Result<(uuid::Uuid, Vec<JobId>), ApiError> {
        let has_then = spec.then.is_some();
        let all: Vec<(SubmitSpec, String)> = spec
            .jobs
            .into_iter()
            .enumerate()
            .map(|(i, s)| (s, format!("jobs[{i}].job")))
            .chain(spec.then.map(|s| (s, "then.job".to_string())))
            .collect();
        let mut rows = Vec::with_capacity(all.len());
        for (s, at) in all {
            let (lane, priority) = route(&self.router, &self.lanes, &s.name, &at)?;
            let info = &self.lanes[lane].info;
            // A step's dedup key and delay do not apply: the workflow decides when it runs.
            rows.push(NewRow {
                id: JobId::new(),
                pipeline: info.name.clone(),
                params: s.params.to_string(),
                priority: s.priority.unwrap_or(priority),
                max_retries: s.max_retries.unwrap_or(info.retry.max_retries),
                unique_key: None,
                run_at: None,
                tick: None,
                name: s.name,
            });
        }
        self.admit(rows.len())?;
        let wf = NewWorkflow {
            id: uuid::Uuid::now_v7(),
            kind: spec.kind,
            rows,
            has_then,
            allow_failures: spec.allow_failures,
        };
        let jobs = self.cluster.jobs.clone();
        jobs.submit_workflow(&wf).await.map_err(nothing_accepted)?;
        for row in &wf.rows {
            self.added(row);
        }
        self.announce().await;
        Ok((wf.id, wf.rows.iter().map(|r| r.id).collect()))
    }

    /// A batch job on `worker` named its children: write them with the parent left waiting
    /// (`fanout.rs`), or end it at once when it has none or one cannot be routed.
    fn fanned_out(&mut self, lane: usize, worker: ActorId, job: JobId, specs: Vec<SubmitSpec>) {
        if let Some((r, records)) = self.ended_attempt(lane, worker, job) {
            match self.children(&specs) {
                Err(e) => {
                    let why = format!("cannot fan out: {}", e.message);
                    self.record(r.claim, Verdict::DeadLetter(why), records);
                }
                Ok(children) if children.is_empty() => {
                    let summary = crate::dispatcher::Tally::default().summary(0);
                    self.record(r.claim, Verdict::Succeed(summary), records);
                }
                Ok(children) => self.fan_outs.push(FanOut {
                    parent: r.claim.id,
                    claim_no: r.claim.claim_no,
                    children,
                    records,
                }),
            }
        }
        self.check_drained();
    }

    /// The rows of a batch job's children: each in its task's pipeline with that pipeline's
    /// retries (the parent's priority is taken in the write).
    fn children(&self, specs: &[SubmitSpec]) -> Result<Vec<NewRow>, ApiError> {
        let routed = route_all(&self.router, &self.lanes, specs)?;
        Ok(specs
            .iter()
            .zip(routed)
            .map(|(spec, (lane, priority))| {
                let info = &self.lanes[lane].info;
                NewRow {
                    id: JobId::new(),
                    name: spec.name.clone(),
                    pipeline: info.name.clone(),
                    priority,
                    max_retries: info.retry.max_retries,
                    params: spec.params.to_string(),
                    unique_key: None,
                    run_at: None,
                    tick: None,
                }
            })
            .collect())
    }

    /// A write or claim failed: logged once per outage; the loop rests until the next poll.
    fn store_failed(&mut self, e: &crate::postgres::Failure, what: &str) {
        if !self.down_logged {
            warn!(actor = "root/dispatcher", error = %e.message(), kept = self.done.len(), "{what}");
            self.down_logged = true;
        }
        self.store_down = true;
    }

    /// A write or claim succeeded.
    fn store_up(&mut self) {
        if std::mem::take(&mut self.down_logged) {
            info!(actor = "root/dispatcher", "the cluster store answers again");
        }
    }

    /// Hands a claimed job to an idle worker.
    fn start(&mut self, lane: usize, c: Claimed) {
        let l = &mut self.lanes[lane];
        let ticket = Ticket {
            job_id: c.id,
            name: c.name.clone(),
            params: c.params.clone(),
            attempt: c.attempt,
        };
        // Open before the worker hears of it: the attempt looks its buffer up when it starts.
        let records = self.attempts.open(c.id);
        while let Some(worker) = l.idle.pop() {
            if worker.cast(WorkerMsg::Run(ticket.clone())).is_ok() {
                l.running.insert(
                    worker.get_id(),
                    Running {
                        claim: c,
                        records,
                        cancelled: false,
                    },
                );
                self.running.fetch_add(1, Ordering::Relaxed);
                return;
            }
            l.workers.remove(&worker.get_id());
        }
        // No worker took it: give it back, the attempt uncounted.
        self.attempts.close(c.id, &records);
        self.done.push(Completion {
            id: c.id,
            claim_no: c.claim_no,
            outcome: Outcome::Released("no worker of this node could take it".into()),
            records: Vec::new(),
        });
    }

    fn worker_ready(&mut self, lane: usize, worker: ActorRef<WorkerMsg>) {
        if let Some(l) = self.lanes.get_mut(lane) {
            let wid = worker.get_id();
            crate::dispatcher::enlist(&mut l.workers, &mut l.idle, worker, wid, |w| w.get_id());
        }
    }

    /// The job a worker ran, no longer running there, with the records its attempt stored
    /// (its buffer closed: a put after this fails).
    fn take_running(
        &mut self,
        lane: usize,
        worker: ActorId,
    ) -> Option<(Running, Vec<(String, serde_json::Value)>)> {
        let r = self.lanes.get_mut(lane)?.running.remove(&worker)?;
        self.running.fetch_sub(1, Ordering::Relaxed);
        let records = self.attempts.close(r.claim.id, &r.records);
        Some((r, records))
    }

    /// The attempt of job `id` on `worker` ended: the job and its attempt's records, unless
    /// the job was cancelled meanwhile (then only those records are left to write) or the
    /// worker was not running it.
    fn ended_attempt(
        &mut self,
        lane: usize,
        worker: ActorId,
        id: JobId,
    ) -> Option<(Running, Vec<(String, serde_json::Value)>)> {
        let (r, records) = self
            .take_running(lane, worker)
            .filter(|(r, _)| r.claim.id == id)?;
        if r.cancelled {
            self.keep_cancelled(r.claim, records);
            return None;
        }
        Some((r, records))
    }

    /// Job `id`'s attempt on `worker` ended after `elapsed` (measured by the worker).
    fn job_done(
        &mut self,
        lane: usize,
        worker: ActorId,
        id: JobId,
        outcome: TaskResult,
        elapsed: Duration,
    ) {
        let Some((r, records)) = self.ended_attempt(lane, worker, id) else {
            return self.check_drained();
        };
        let c = &r.claim;
        self.meters
            .job(&c.name)
            .duration
            .record(elapsed.as_secs_f64());
        let policy = self.lanes[lane].info.retry;
        let v = verdict(outcome, c.attempt, c.max_retries, &policy);
        self.record(r.claim, v, records);
        self.check_drained();
    }

    /// A worker is gone: its job goes back to its queue (the attempt counts), or to the
    /// dead-letter queue when its retries are spent.
    fn worker_down(&mut self, lane: usize, worker: ActorId, reason: &str) {
        if let Some(l) = self.lanes.get_mut(lane) {
            l.workers.remove(&worker);
            l.idle.retain(|w| w.get_id() != worker);
        }
        match self.take_running(lane, worker) {
            Some((r, records)) if r.cancelled => self.keep_cancelled(r.claim, records),
            Some((r, records)) => self.crashed(lane, r.claim, records, reason),
            None => {}
        }
        self.check_drained();
    }

    /// The end of an attempt whose worker crashed: retried at once (the attempt counts), or
    /// dead-lettered when its retries are spent.
    fn crashed(
        &mut self,
        lane: usize,
        c: Claimed,
        records: Vec<(String, serde_json::Value)>,
        reason: &str,
    ) {
        let why = format!("worker crashed: {reason}");
        let policy = &self.lanes[lane].info.retry;
        match retry_or_give_up(why.clone(), "crash", c.attempt, c.max_retries, policy) {
            Verdict::Retry { .. } => {
                self.totals.requeued += 1;
                self.done.push(Completion {
                    id: c.id,
                    claim_no: c.claim_no,
                    outcome: Outcome::Requeued(why),
                    records,
                });
            }
            v => self.record(c, v, records),
        }
    }

    /// The attempt of a job cancelled while it ran here has stopped: the cancel wrote the
    /// job's end already, so only what the attempt stored before it stopped is left to write.
    fn keep_cancelled(&mut self, c: Claimed, records: Vec<(String, serde_json::Value)>) {
        if records.is_empty() {
            return;
        }
        self.done.push(Completion {
            id: c.id,
            claim_no: c.claim_no,
            outcome: Outcome::Cancelled,
            records,
        });
    }

    /// Gathers the end `v` of a claimed job, counting it, with the records its attempt stored:
    /// written whatever the outcome, as a single node keeps what a failed attempt stored before
    /// it failed (records are keyed by what they describe, so they are true data however the
    /// attempt ended, and a retry stores the same keys again).
    fn record(&mut self, c: Claimed, v: Verdict, records: Vec<(String, serde_json::Value)>) {
        let name = c.name.clone();
        let outcome = match v {
            Verdict::Succeed(value) => {
                self.totals.succeeded += 1;
                self.meters.job(&name).succeeded.increment(1);
                Outcome::Succeeded(value.to_string())
            }
            Verdict::Retry {
                delay,
                error,
                error_type,
            } => {
                self.totals.retried += 1;
                metrics::counter!(m::JOB_RETRIES, "job_name" => name.clone(), "error_type" => error_type).increment(1);
                metrics::counter!(m::JOB_EXECUTIONS, "job_name" => name, "status" => "retried")
                    .increment(1);
                Outcome::Retrying {
                    delay_ms: delay.as_millis() as i64,
                    error,
                    counts: true,
                }
            }
            Verdict::Throttled { wait, message, .. } => {
                metrics::counter!(m::JOB_RETRIES, "job_name" => name, "error_type" => "throttled")
                    .increment(1);
                Outcome::Retrying {
                    delay_ms: wait.as_millis() as i64,
                    error: format!("throttled: {message}"),
                    counts: false,
                }
            }
            Verdict::DeadLetter(error) => {
                self.totals.failed += 1;
                info!(job_id = %c.id, job_name = %c.name, attempt = c.attempt, error = %error, "dead-lettered");
                metrics::counter!(m::JOB_EXECUTIONS, "job_name" => name.clone(), "status" => "failed").increment(1);
                metrics::counter!(m::DEAD_LETTER, "job_name" => name).increment(1);
                self.dead.push(c.id);
                Outcome::DeadLettered(error)
            }
        };
        debug!(job_id = %c.id, attempt = c.attempt, ?outcome, records = records.len(), "job ended");
        self.done.push(Completion {
            id: c.id,
            claim_no: c.claim_no,
            outcome,
            records,
        });
    }

    /// Tells the alert webhook of the jobs dead-lettered by the ends just written.
    async fn alert(&mut self, written: &[JobId]) {
        for id in std::mem::take(&mut self.dead) {
            if !written.contains(&id) {
                continue;
            }
            if let Ok(Some(rec)) = self.cluster.jobs.get(id).await {
                self.alerter.dead_lettered(&rec);
            }
        }
    }

    fn check_drained(&mut self) {
        if self.draining && self.lanes.iter().all(|l| l.running.is_empty()) {
            for w in self.drain_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    /// Stops the workers running any of `ids` here.
    fn stop_cancelled(&mut self, ids: &[JobId]) {
        for l in &mut self.lanes {
            for (wid, r) in &mut l.running {
                if ids.contains(&r.claim.id) {
                    r.cancelled = true;
                    if let Some(w) = l.workers.get(wid) {
                        let _ = w.cast(WorkerMsg::Cancel {
                            job_id: r.claim.id,
                            grace: self.limits.cancel_grace,
                        });
                    }
                }
            }
        }
    }

    /// At each heartbeat: the jobs running here that were cancelled (a NOTIFY can be lost).
    async fn recheck_cancels(&mut self) {
        let ids: Vec<JobId> = self
            .lanes
            .iter()
            .flat_map(|l| l.running.values().map(|r| r.claim.id))
            .collect();
        if let Ok(cancelled) = self.cluster.jobs.cancelled_among(&ids).await {
            self.stop_cancelled(&cancelled);
        }
    }

    /// Refuses new work while draining, or when `n` more jobs would pass `[jobs] max_queued`.
    fn admit(&self, n: usize) -> Result<(), ApiError> {
        if self.draining {
            return Err(ApiError::new(
                ErrorCode::ShuttingDown,
                "the node is draining; submit to another node",
            ));
        }
        let unfinished = self.counts.unfinished();
        if unfinished + n > self.limits.max_queued {
            return Err(ApiError::new(
                ErrorCode::Overloaded,
                format!(
                    "the queue is full: {unfinished} unfinished jobs in the cluster, {n} more asked, [jobs] max_queued = {}; retry later",
                    self.limits.max_queued
                ),
            ));
        }
        Ok(())
    }

    async fn submit(&mut self, specs: Vec<SubmitSpec>) -> Result<Vec<Accepted>, ApiError> {
        let routed = route_all(&self.router, &self.lanes, &specs)?;
        self.admit(specs.len())?;
        let now = now_ms();
        let mut rows: Vec<NewRow> = Vec::with_capacity(specs.len());
        // Each submit's row, and whether it repeats a key met earlier in the batch.
        let mut slot: Vec<(usize, bool)> = Vec::with_capacity(specs.len());
        let mut keys: HashMap<String, usize> = HashMap::new();
        for (spec, (lane, priority)) in specs.into_iter().zip(routed) {
            if let Some(&at) = spec.unique_key.as_ref().and_then(|k| keys.get(k)) {
                slot.push((at, true));
                continue;
            }
            let info = &self.lanes[lane].info;
            if let Some(k) = &spec.unique_key {
                keys.insert(k.clone(), rows.len());
            }
            slot.push((rows.len(), false));
            rows.push(NewRow {
                id: JobId::new(),
                pipeline: info.name.clone(),
                params: spec.params.to_string(),
                priority: spec.priority.unwrap_or(priority),
                max_retries: spec.max_retries.unwrap_or(info.retry.max_retries),
                unique_key: spec.unique_key,
                run_at: spec.run_at.filter(|t| *t > now),
                tick: spec.tick,
                name: spec.name,
            });
        }
        let placed = self
            .cluster
            .jobs
            .insert(&rows)
            .await
            .map_err(nothing_accepted)?;
        for (row, (_, dedup)) in rows.iter().zip(&placed) {
            if !dedup {
                self.added(row);
            }
        }
        self.announce().await;
        Ok(slot
            .into_iter()
            .map(|(at, copy)| Accepted {
                job_id: placed[at].0,
                deduplicated: copy || placed[at].1,
            })
            .collect())
    }

    /// NOTIFYs the pipelines with new jobs, at most one per pipeline per `notify_every`
    /// (a NOTIFY per job would serialise commits); the rest wait for the next tick.
    async fn announce(&mut self) {
        let every = self.cluster.args.timing.notify_every;
        let due: Vec<String> = self
            .owed
            .iter()
            .filter(|p| self.announced.get(*p).is_none_or(|t| t.elapsed() >= every))
            .cloned()
            .collect();
        for p in due {
            if self.cluster.jobs.wake(&p).await.is_ok() {
                self.owed.remove(&p);
                self.announced.insert(p, Instant::now());
            }
        }
    }

    async fn stats(&mut self) -> Stats {
        if let Ok(c) = self.cluster.jobs.counts().await {
            self.counts = c;
        }
        Stats {
            jobs: self.counts.jobs,
            totals: self.totals,
            queues: self
                .lanes
                .iter()
                .map(|l| (l.info.name.clone(), self.depths(&l.info.name)))
                .collect(),
            uptime_s: self.started.elapsed().as_secs(),
        }
    }

    fn depths(&self, pipeline: &str) -> QueueDepths {
        self.counts
            .queues
            .get(pipeline)
            .copied()
            .unwrap_or_default()
    }

    fn running_jobs(&self) -> Vec<(String, JobId)> {
        self.lanes
            .iter()
            .flat_map(|l| {
                l.running
                    .values()
                    .map(|r| (l.info.name.clone(), r.claim.id))
            })
            .collect()
    }

    fn view(&self, lane: usize) -> PipelineView {
        let l = &self.lanes[lane];
        let workers = WorkersView {
            total: l.workers.len(),
            busy: l.running.len(),
        };
        let scheduled = self.counts.scheduled.get(&l.info.name).copied();
        let depths = self.depths(&l.info.name);
        PipelineView::of(&l.info, l.paused, workers, depths, scheduled.unwrap_or(0))
    }

    fn lane_named(&self, name: &str) -> Result<usize, ApiError> {
        self.lanes
            .iter()
            .position(|l| l.info.name == name)
            .ok_or_else(|| no_pipeline(name, &self.lanes))
    }

    async fn set_paused(&mut self, name: &str, paused: bool) -> Result<PipelineView, ApiError> {
        let lane = self.lane_named(name)?;
        self.cluster
            .jobs
            .set_paused(name, paused)
            .await
            .map_err(unavailable)?;
        self.paused_set_at = Some(Instant::now());
        let l = &mut self.lanes[lane];
        l.paused = paused;
        l.maybe_work |= !paused;
        info!(actor = "root/dispatcher", pipeline = %name, paused, "pipeline {} for every node", if paused { "paused" } else { "resumed" });
        Ok(self.view(lane))
    }

    async fn cancel(&mut self, id: JobId) -> Result<JobRecord, ApiError> {
        let (rec, owner) = self.cluster.jobs.cancel(id).await?;
        if owner.as_deref() == Some(self.cluster.args.node_id.as_str()) {
            self.stop_cancelled(&[id]);
        }
        self.totals.cancelled += 1;
        metrics::counter!(m::JOB_EXECUTIONS, "job_name" => rec.name.clone(), "status" => "cancelled").increment(1);
        Ok(rec)
    }

    async fn retry(&mut self, id: JobId) -> Result<JobRecord, ApiError> {
        let rec = self.cluster.jobs.retry(id).await?;
        self.owed.insert(rec.pipeline.clone());
        if let Ok(lane) = self.lane_named(&rec.pipeline) {
            self.lanes[lane].maybe_work = true;
        }
        self.announce().await;
        Ok(rec)
    }

    async fn why(&self, id: JobId) -> Result<Blocker, ApiError> {
        let rec = self
            .cluster
            .jobs
            .get(id)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| ApiError::not_found(format!("job_id: no job with id {id}")))?;
        if let Some(detail) = self.held_detail(&rec).await {
            return Ok(Blocker::new(BlockerKind::Scheduled, detail, None));
        }
        let eta = rec.next_attempt_at.map(rfc3339_ms);
        let lane = self.lanes.iter().find(|l| l.info.name == rec.pipeline);
        let (kind, detail) = match rec.status {
            JobStatus::Retrying => (
                BlockerKind::RetryBackoff,
                format!(
                    "retry {} after: {}",
                    rec.attempts + 1,
                    rec.error.as_deref().unwrap_or("")
                ),
            ),
            JobStatus::Pending if eta.is_some() => {
                (BlockerKind::Scheduled, "delayed until its run_at".into())
            }
            JobStatus::Pending if lane.is_some_and(|l| l.paused) => (
                BlockerKind::Paused,
                format!(
                    "pipeline {} is paused on every node; `resume` it",
                    rec.pipeline
                ),
            ),
            JobStatus::Pending => (
                BlockerKind::Queued,
                format!(
                    "queued in pipeline {} ({} waiting in the cluster)",
                    rec.pipeline,
                    self.counts
                        .queues
                        .get(&rec.pipeline)
                        .map_or(0, |q| q.high + q.normal + q.low)
                ),
            ),
            JobStatus::Running => match self.cluster.jobs.children_waiting(id).await {
                Ok((waiting, total)) if total > 0 => (
                    BlockerKind::Children,
                    format!("{waiting} of its {total} child jobs are unfinished"),
                ),
                _ => (
                    BlockerKind::None,
                    "the job is running on a worker of a node".into(),
                ),
            },
            other => (BlockerKind::None, format!("the job is {}", other.as_str())),
        };
        Ok(Blocker::new(kind, detail, eta))
    }

    /// What `rec` waits for when it is a held workflow step (`workflows.rs`).
    async fn held_detail(&self, rec: &JobRecord) -> Option<String> {
        let wf_id = rec
            .workflow_id
            .filter(|_| rec.status == JobStatus::Pending)?;
        let jobs = &self.cluster.jobs;
        if !jobs.is_held(rec.id).await.ok()? {
            return None;
        }
        let wf = jobs.workflow(wf_id).await.ok()??;
        Some(crate::dispatcher::held_detail(&wf, rec.id))
    }

    fn publish_gauges(&self) {
        for l in &self.lanes {
            let q = self.depths(&l.info.name);
            for (p, n) in [("high", q.high), ("normal", q.normal), ("low", q.low)] {
                metrics::gauge!(m::QUEUE_DEPTH, "pipeline" => l.info.name.clone(), "priority" => p)
                    .set(n as f64);
            }
            metrics::gauge!(m::ACTIVE_WORKERS, "pipeline" => l.info.name.clone())
                .set(l.running.len() as f64);
            metrics::gauge!(m::WORKERS, "pipeline" => l.info.name.clone())
                .set(l.workers.len() as f64);
        }
    }
}

/// A store failure as the answer to a submit: nothing of it was accepted.
fn nothing_accepted(e: crate::postgres::Failure) -> ApiError {
    ApiError::new(
        ErrorCode::StorageUnavailable,
        format!("{}; nothing was accepted; retry later", e.message()),
    )
}

/// Writes `fan_outs` one by one, stopping at the first refused write (the rest are kept).
async fn write_fan_outs(
    jobs: &super::store::Jobs,
    fan_outs: &[FanOut],
) -> Vec<Result<bool, crate::postgres::Failure>> {
    let mut answers = Vec::with_capacity(fan_outs.len());
    for f in fan_outs {
        let answer = jobs.fan_out(f).await;
        let refused = answer.is_err();
        answers.push(answer);
        if refused {
            break;
        }
    }
    answers
}

impl crate::dispatcher::Reported for State {
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
    fn on_fan_out(&mut self, lane: usize, worker: ActorId, job: JobId, specs: Vec<SubmitSpec>) {
        self.fanned_out(lane, worker, job, specs);
    }
    fn on_down(&mut self, lane: usize, worker: ActorId, reason: &str) {
        self.worker_down(lane, worker, reason);
    }
}
