//! Starting and stopping a node: the one code path used by the binary, the tests and the
//! benchmark. [`Node::start`] opens the journal, binds the admin port and spawns the tree;
//! [`Node::run`] waits for a stop request (a signal future, the admin `shutdown` command) or for
//! the root supervisor to escalate, then stops gracefully:
//!
//! 1. the dispatcher stops taking work and waits for running jobs (up to `shutdown_timeout`);
//! 2. the root stops its children in reverse start order and waits for them;
//! 3. the journal is flushed and fsync'd.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorCell, ActorRef, SpawnErr};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::admin::{AdminCtx, AdminSpec, ShutdownRequest};
use crate::alerts::{Alerter, AlertsSpec};
use crate::args::NodeArgs;
use crate::cluster::{Cluster, ClusterArgs, ClusterDispatcher, ClusterDispatcherArgs};
use crate::console::{ConsoleCtx, ConsoleSpec};
use crate::dispatcher::{Dispatcher, DispatcherArgs, DispatcherLink, DispatcherMsg, PipelineInfo};
use crate::exec::NodeEnv;
use crate::link::Link;
use crate::progress::ProgressBoard;
use crate::routing::Router;
use crate::scheduler::{SchedulerLink, SchedulerSpec};
use crate::sink::{Outbox, SinkSpec};
use crate::store::journal::{Journal, JournalError};
use crate::supervisor::{spawn_child, ChildSpec, Supervisor, SupervisorArgs, SupervisorMsg};
use crate::tasks::{Attempts, Records, TaskEnv};
use tokio_util::task::TaskTracker;

/// How long `stop` waits for the tasks that outlive their actors (admin connections, a
/// compaction) to end.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// Extra time the root gets to stop its children after the drain.
const STOP_SLACK: Duration = Duration::from_secs(30);

/// Why a node could not start, or why it stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data dir could not be created.
    #[error("cannot create data dir {dir}: {source}")]
    DataDir {
        /// The dir.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The journal could not be opened.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The admin port could not be bound.
    #[error("cannot listen on admin address {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The console's port could not be bound.
    #[error("cannot listen on console address {addr}: {source}")]
    ConsoleBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The arguments are inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// The cluster store could not be opened (unreachable, a newer schema, a node id in use).
    #[error("cluster store: {0}")]
    Store(String),
    /// The tree could not be spawned.
    #[error("cannot start the supervision tree: {0}")]
    Spawn(String),
    /// The root supervisor spent its restart budget.
    #[error("the root supervisor escalated: {0}")]
    Escalated(String),
}

/// A running node.
pub struct Node {
    admin_addr: SocketAddr,
    console_addr: Option<SocketAddr>,
    name: String,
    root: ActorRef<SupervisorMsg>,
    root_done: JoinHandle<()>,
    journal: Journal,
    dispatcher: DispatcherLink,
    /// Kept so that `run` never sees the shutdown channel close while the admin actor restarts.
    _shutdown_tx: watch::Sender<Option<ShutdownRequest>>,
    shutdown_rx: watch::Receiver<Option<ShutdownRequest>>,
    fatal: Arc<Mutex<Option<String>>>,
    shutdown_timeout: Duration,
    /// Tasks that hold the journal outside any actor: admin connections, compactions.
    tasks: TaskTracker,
}

impl Node {
    /// Opens the journal, binds the admin port, spawns the tree and replays the journal.
    pub async fn start(args: NodeArgs) -> Result<Node, NodeError> {
        let journal = open_journal(&args)?;
        let router = Router::new(&args.routes).map_err(NodeError::Invalid)?;
        let (listener, admin_addr) = bind_admin(args.admin.listen)?;
        let console_listener = crate::console::bind(args.console.as_ref())?;
        let cluster = match args.store.clone() {
            Some(c) => Some(open_cluster(c, &args).await?),
            None => None,
        };
        let links = Links::new(&args);
        let sink = sink_spec(&args, &journal, cluster.as_ref())?;
        let progress = ProgressBoard::default();
        // In cluster mode each attempt's records wait in a buffer for its completion.
        let attempts = Attempts::default();
        let records = match &cluster {
            Some(_) => Records::buffered(attempts.clone()),
            None => Records::new(journal.clone()),
        };
        let shared = shared_env(&args, admin_addr, records, &progress, cluster.as_ref());
        let (infos, pipelines) = assemble_pipelines(&args, &journal, &links, &shared)?;
        let served: Vec<(String, Vec<String>)> = infos
            .iter()
            .map(|i| (i.name.clone(), i.tasks.clone()))
            .collect();
        let jobs = job_store(cluster.as_ref(), &journal);
        let admin_ctx = links.admin_ctx(
            &args,
            &journal,
            jobs.clone(),
            cluster.clone(),
            progress,
            sink.clone(),
        );
        let dispatcher = dispatcher_spec(
            cluster.map(|c| (c, attempts)),
            DispatcherArgs {
                journal: journal.clone(),
                jobs: args.jobs.clone(),
                pipelines: infos,
                router,
                link: links.dispatcher.clone(),
                alerter: links.alerter.clone(),
                tasks: links.tasks.clone(),
            },
            admin_addr,
        );
        let console = console_spec(console_listener, &args, &admin_ctx, served);
        let children = Children {
            alerts: links.alerts.clone(),
            sink: sink.map(|s| Arc::new(s) as Spec),
            dispatcher,
            pipelines,
            scheduler: scheduler_spec(&args, &journal, jobs, &links)?,
            admin: Arc::new(AdminSpec {
                listener: Arc::new(listener),
                ctx: admin_ctx,
            }),
            console: console.as_ref().map(|(spec, _)| spec.clone()),
        };
        let (root, root_done) =
            spawn_root(args.restart, children.in_start_order(), links.fatal.clone()).await?;
        links.root.set(root.clone());
        info!(admin = %admin_addr, data_dir = %args.data_dir.display(), node = %args.name, "node started");
        Ok(Node {
            admin_addr,
            console_addr: console.map(|(_, addr)| addr),
            name: args.name,
            root,
            root_done,
            journal,
            dispatcher: links.dispatcher,
            _shutdown_tx: links.shutdown_tx,
            shutdown_rx: links.shutdown_rx,
            fatal: links.fatal,
            shutdown_timeout: args.shutdown_timeout,
            tasks: links.tasks,
        })
    }

    /// The admin port's address (useful with port 0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The web console's address, when it is enabled (useful with port 0).
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console_addr
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The journal (the benchmark and tests read it).
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Runs until `stop` resolves, `shutdown` arrives, or the root escalates; then stops.
    pub async fn run(mut self, stop: impl Future<Output = ()>) -> Result<(), NodeError> {
        tokio::pin!(stop);
        let drain = tokio::select! {
            _ = &mut stop => true,
            r = self.shutdown_rx.wait_for(Option::is_some) => r.map(|r| r.is_some_and(|r| r.drain)).unwrap_or(true),
            _ = &mut self.root_done => {
                let why = self.fatal.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_else(|| "the root supervisor stopped".into());
                error!(reason = %why, "node stopping: supervision failure reached the root");
                let _ = self.journal.sync_now();
                return Err(NodeError::Escalated(why));
            }
        };
        self.stop(drain).await
    }

    /// Stops the node: drain (when asked), stop the tree, sync the journal.
    pub async fn stop(self, drain: bool) -> Result<(), NodeError> {
        info!(drain, "node stopping");
        if drain {
            if let Some(d) = self.dispatcher.get() {
                match d
                    .call(DispatcherMsg::Drain, Some(self.shutdown_timeout))
                    .await
                {
                    Ok(ractor::rpc::CallResult::Success(())) => info!("running jobs finished"),
                    _ => {
                        warn!(timeout = ?self.shutdown_timeout, "jobs still running at shutdown_timeout; they will run again after a restart")
                    }
                }
            }
        }
        let _ = self
            .root
            .stop_and_wait(
                Some("shutdown".into()),
                Some(self.shutdown_timeout + STOP_SLACK),
            )
            .await;
        let _ = self.root_done.await;
        self.journal.sync_now()?;
        // Admin connections and a compaction may still hold the journal for a moment after
        // their actors stopped; wait for them (bounded), so that when `stop` returns the data dir
        // is free for the next node.
        self.tasks.close();
        if tokio::time::timeout(RELEASE_WAIT, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                tasks = self.tasks.len(),
                "tasks still running after {RELEASE_WAIT:?} at stop"
            );
        }
        info!("node stopped");
        Ok(())
    }
}

/// A child's recipe under the root.
type Spec = Arc<dyn ChildSpec>;

/// The handles the parts of the tree are wired with before any actor runs: links filled in
/// once their actor exists, the node-wide task tracker, the shutdown channel, the alerter.
struct Links {
    dispatcher: DispatcherLink,
    scheduler: SchedulerLink,
    root: Link<SupervisorMsg>,
    tasks: TaskTracker,
    shutdown_tx: watch::Sender<Option<ShutdownRequest>>,
    shutdown_rx: watch::Receiver<Option<ShutdownRequest>>,
    /// Why the root escalated, once it has.
    fatal: Arc<Mutex<Option<String>>>,
    /// A cheap handle that casts to the webhook actor (or drops, with no `[alerts]`).
    alerter: Alerter,
    /// The webhook actor's recipe, when `[alerts]` is configured.
    alerts: Option<Spec>,
}

impl Links {
    fn new(args: &NodeArgs) -> Links {
        let (shutdown_tx, shutdown_rx) = watch::channel(None);
        let alerts = args
            .alerts
            .clone()
            .map(|a| AlertsSpec::new(a, args.name.clone()));
        Links {
            dispatcher: DispatcherLink::default(),
            scheduler: SchedulerLink::default(),
            root: Link::default(),
            tasks: TaskTracker::new(),
            shutdown_tx,
            shutdown_rx,
            fatal: Arc::new(Mutex::new(None)),
            alerter: alerts.as_ref().map_or_else(Alerter::none, |s| s.alerter()),
            alerts: alerts.map(|s| s as Spec),
        }
    }

    /// What every admin command (and the console) works with.
    fn admin_ctx(
        &self,
        args: &NodeArgs,
        journal: &Journal,
        jobs: crate::store::JobStore,
        cluster: Option<Cluster>,
        progress: ProgressBoard,
        sink: Option<SinkSpec>,
    ) -> Arc<AdminCtx> {
        Arc::new(AdminCtx {
            limits: args.admin.clone(),
            journal: journal.clone(),
            jobs,
            cluster,
            dispatcher: self.dispatcher.clone(),
            root: self.root.clone(),
            scheduler: (!args.schedules.is_empty()).then(|| self.scheduler.clone()),
            node_name: args.name.clone(),
            started: std::time::Instant::now(),
            shutdown: self.shutdown_tx.clone(),
            tasks: self.tasks.clone(),
            progress,
            sink,
        })
    }
}

/// What every task and worker shares: the node's env for exec tasks, the record store, the
/// progress board, cluster mode's shared rate limits.
fn shared_env(
    args: &NodeArgs,
    admin: SocketAddr,
    records: Records,
    progress: &ProgressBoard,
    cluster: Option<&Cluster>,
) -> crate::pipeline::Shared {
    crate::pipeline::Shared {
        node: NodeEnv::from_process(admin, args.admin.token.clone()),
        tasks: TaskEnv {
            records,
            progress: progress.clone(),
        },
        permits: cluster.map(Cluster::permits),
    }
}

/// Where job records are read, the same way in both modes (the admin, the scheduler).
fn job_store(cluster: Option<&Cluster>, journal: &Journal) -> crate::store::JobStore {
    match cluster {
        Some(c) => crate::store::JobStore::Cluster(c.jobs.clone()),
        None => crate::store::JobStore::Journal(journal.clone()),
    }
}

/// The console's recipe and address, when `[console]` is configured (`served`: each pipeline's
/// name and tasks).
fn console_spec(
    bound: Option<(Arc<std::net::TcpListener>, SocketAddr)>,
    args: &NodeArgs,
    admin: &Arc<AdminCtx>,
    served: Vec<(String, Vec<String>)>,
) -> Option<(Spec, SocketAddr)> {
    let ((listener, addr), console) = bound.zip(args.console.as_ref())?;
    let ctx = ConsoleCtx::new(
        admin.clone(),
        console.clone(),
        served,
        args.schedules.clone(),
    );
    Some((Arc::new(ConsoleSpec::new(listener, ctx)), addr))
}

/// Every pipeline's place in the dispatcher and its supervisor's recipe, in config order.
fn assemble_pipelines(
    args: &NodeArgs,
    journal: &Journal,
    links: &Links,
    shared: &crate::pipeline::Shared,
) -> Result<(Vec<PipelineInfo>, Vec<Spec>), NodeError> {
    let mut infos = Vec::with_capacity(args.pipelines.len());
    let mut specs = Vec::with_capacity(args.pipelines.len());
    for (i, p) in args.pipelines.iter().enumerate() {
        let a = crate::pipeline::assemble(i, p, journal, &links.dispatcher, &links.alerter, shared)
            .map_err(NodeError::Invalid)?;
        infos.push(a.info);
        specs.push(a.spec);
    }
    Ok((infos, specs))
}

/// The scheduler's recipe; a node without schedules runs none.
fn scheduler_spec(
    args: &NodeArgs,
    journal: &Journal,
    jobs: crate::store::JobStore,
    links: &Links,
) -> Result<Option<Spec>, NodeError> {
    if args.schedules.is_empty() {
        return Ok(None);
    }
    let spec = SchedulerSpec::new(
        &args.schedules,
        journal.clone(),
        jobs,
        links.dispatcher.clone(),
        links.scheduler.clone(),
    )
    .map_err(NodeError::Invalid)?;
    Ok(Some(Arc::new(spec)))
}

/// The root's children, each in its place in [`Children::in_start_order`].
struct Children {
    alerts: Option<Spec>,
    sink: Option<Spec>,
    dispatcher: Spec,
    pipelines: Vec<Spec>,
    scheduler: Option<Spec>,
    admin: Spec,
    console: Option<Spec>,
}

impl Children {
    /// Order matters. The alerts and the sink come before the dispatcher, so that a dispatcher
    /// restart (rest-for-one) leaves them running. The dispatcher restarts every child after it
    /// (the pipelines), so that no worker keeps waiting on a dead dispatcher. The scheduler
    /// submits through the dispatcher, so it follows the pipelines. The admin actor (then the
    /// console, a client of the admin commands like any other) starts last, so a command never
    /// finds the dispatcher missing (the port is bound already: early clients wait in the
    /// listen backlog).
    fn in_start_order(self) -> Vec<Spec> {
        let mut children: Vec<Spec> = Vec::new();
        children.extend(self.alerts);
        children.extend(self.sink);
        children.push(self.dispatcher);
        children.extend(self.pipelines);
        children.extend(self.scheduler);
        children.push(self.admin);
        children.extend(self.console);
        children
    }
}

/// Creates the data dir and opens the journal in it.
fn open_journal(args: &NodeArgs) -> Result<Journal, NodeError> {
    std::fs::create_dir_all(&args.data_dir).map_err(|source| NodeError::DataDir {
        dir: args.data_dir.clone(),
        source,
    })?;
    let opening = std::time::Instant::now();
    let journal = Journal::open_with(
        &args.data_dir,
        crate::store::journal::JournalOptions {
            min_free_space: args.min_free_space,
            cache_bytes: args.cache_size,
            ..Default::default()
        },
    )?;
    info!(data_dir = %args.data_dir.display(), took_ms = opening.elapsed().as_millis() as u64, "journal opened");
    Ok(journal)
}

/// Binds the admin port (before anything runs: early clients wait in the listen backlog).
fn bind_admin(addr: SocketAddr) -> Result<(std::net::TcpListener, SocketAddr), NodeError> {
    let bind = |source| NodeError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind)?;
    let bound = listener.local_addr().map_err(bind)?;
    Ok((listener, bound))
}

/// The dispatcher's recipe: cluster mode's on `cluster` (with the buffers its attempts' records
/// wait in), else the single node's on `args`.
fn dispatcher_spec(
    cluster: Option<(Cluster, Attempts)>,
    args: DispatcherArgs,
    admin: SocketAddr,
) -> Spec {
    match cluster {
        Some((cluster, attempts)) => Arc::new(DispatcherSpec(
            ClusterDispatcher,
            ClusterDispatcherArgs {
                cluster,
                attempts,
                jobs: args.jobs,
                pipelines: args.pipelines,
                router: args.router,
                link: args.link,
                alerter: args.alerter,
                admin: admin.to_string(),
            },
        )),
        None => Arc::new(DispatcherSpec(Dispatcher, args)),
    }
}

/// Spawns the root supervisor over `children`; an escalation's reason lands in `fatal`.
async fn spawn_root(
    policy: crate::args::RestartPolicy,
    children: Vec<Spec>,
    fatal: Arc<Mutex<Option<String>>>,
) -> Result<(ActorRef<SupervisorMsg>, JoinHandle<()>), NodeError> {
    let root_args = SupervisorArgs {
        path: "root".into(),
        pipeline: "-".into(),
        policy,
        children,
        on_escalate: Some(Box::new(move |why| {
            *fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        })),
    };
    Actor::spawn(None, Supervisor, root_args)
        .await
        .map_err(|e| NodeError::Spawn(e.to_string()))
}

/// The sink's recipe, built before anything runs so that no record is stored without its
/// outbox entry: the journal's on a single node, the cluster's in cluster mode.
fn sink_spec(
    args: &NodeArgs,
    journal: &Journal,
    cluster: Option<&Cluster>,
) -> Result<Option<SinkSpec>, NodeError> {
    let Some(sink) = args.sink.clone() else {
        return Ok(None);
    };
    let outbox = match cluster {
        None => Outbox::Journal(journal.clone()),
        Some(c) => Outbox::cluster(
            c.jobs.clone(),
            journal.clone(),
            &c.args.schema,
            &sink.schema,
        ),
    };
    SinkSpec::new(sink, outbox)
        .map(Some)
        .map_err(NodeError::Invalid)
}

/// Opens the cluster store: connects, migrates, and makes sure no live node has this id and
/// every live node agrees with this one's settings (the sink's among them: with it, every
/// node's completions enqueue their records for it).
async fn open_cluster(args: ClusterArgs, node: &NodeArgs) -> Result<Cluster, NodeError> {
    let cluster = Cluster::new(args).map_err(NodeError::Invalid)?;
    let mut settings = crate::cluster::settings_of(&node.pipelines);
    settings.push(crate::cluster::sink_setting(node.sink.as_ref()));
    let version = cluster
        .open(&settings)
        .await
        .map_err(|e| NodeError::Store(e.message().to_string()))?;
    info!(store = %cluster.target().shown, schema = %cluster.args.schema,
        node_id = %cluster.args.node_id, version, "cluster store opened");
    Ok(cluster)
}

/// The dispatcher's recipe under the root: the single node's or cluster mode's actor (both take
/// the same messages), restarting every child after it.
struct DispatcherSpec<A: Actor>(A, A::Arguments);

impl<A> ChildSpec for DispatcherSpec<A>
where
    A: Actor<Msg = DispatcherMsg> + Clone,
    A::Arguments: Clone + Sync,
{
    fn name(&self) -> String {
        "dispatcher".into()
    }
    fn kind(&self) -> &'static str {
        "dispatcher"
    }
    fn spawn(
        &self,
        supervisor: ActorCell,
        _path: String,
    ) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
        spawn_child(self.0.clone(), self.1.clone(), supervisor)
    }
    fn restarts_later_siblings(&self) -> bool {
        true
    }
}
