//! The admin actor: owns the accept loop on the node's pre-bound admin listener and one task per
//! connection, speaking docs/protocol.md (newline-delimited JSON). Supervised by the root.
//!
//! The accept loop runs in a task the actor owns (aborted in `post_stop`), never inside a
//! handler, because a handler blocked on `accept()` could not be stopped (ractor runs one
//! handler at a time). Connections are bounded by `max_connections` slots (`slots.rs`: when all
//! are taken, the longest-idle connection is closed to make room; when every connection has a
//! request in flight, the next one gets one `overloaded` line), lines by `max_line_bytes`,
//! idleness by `idle_timeout` (from the last complete line).

mod commands;
mod conn;
mod slots;

use std::sync::Arc;

use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::args::AdminArgs;
use crate::dispatcher::DispatcherLink;
use crate::link::Link;
use crate::metrics as m;
use crate::protocol::{error_line, ApiError, ErrorCode};
use crate::store::journal::Journal;
use crate::supervisor::{ChildSpec, SupervisorMsg};

use self::slots::Slots;

pub(crate) use self::commands::{call, node_views, visible};
pub use self::commands::{perform, ShutdownRequest};

/// What every connection needs to serve commands.
pub struct AdminCtx {
    /// Limits and token.
    pub limits: AdminArgs,
    /// The node's journal (its durability, its records, its workflows).
    pub journal: Journal,
    /// Where job records are read: the journal, or the cluster's table.
    pub jobs: crate::store::JobStore,
    /// Cluster mode's store, for `nodes`; `None` on a single node.
    pub cluster: Option<crate::cluster::Cluster>,
    /// Decisions.
    pub dispatcher: DispatcherLink,
    /// The root supervisor, for `tree`.
    pub root: Link<SupervisorMsg>,
    /// The scheduler, for `schedules`; `None` when no schedule is configured.
    pub scheduler: Option<crate::scheduler::SchedulerLink>,
    /// The node's name for `ping`.
    pub node_name: String,
    /// When the node started.
    pub started: std::time::Instant,
    /// Where `shutdown` asks the node to stop.
    pub shutdown: watch::Sender<Option<ShutdownRequest>>,
    /// Tracks the accept loop and the connection tasks, so the node's stop awaits them.
    pub tasks: tokio_util::task::TaskTracker,
    /// Running and recently ended jobs' progress, shown in job objects.
    pub progress: crate::progress::ProgressBoard,
    /// The PostgreSQL sink, for `sinks` and `sink_backfill`; `None` when not configured.
    pub sink: Option<crate::sink::SinkSpec>,
}

/// The admin actor (stateless shell).
pub struct Admin;

/// What an admin incarnation starts with.
pub struct AdminStart {
    /// The bound listener (std, so each incarnation can take a clone).
    pub listener: Arc<std::net::TcpListener>,
    /// Shared context.
    pub ctx: Arc<AdminCtx>,
}

/// The admin actor's state: its accept task and the signal that closes its connections.
pub struct AdminState {
    accept: JoinHandle<()>,
    closing: watch::Sender<bool>,
}

impl Actor for Admin {
    type Msg = ();
    type State = AdminState;
    type Arguments = AdminStart;

    async fn pre_start(
        &self,
        _me: ActorRef<()>,
        start: AdminStart,
    ) -> Result<AdminState, ActorProcessingErr> {
        let std_listener = start.listener.try_clone()?;
        std_listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std_listener)?;
        let (closing, closed) = watch::channel(false);
        let tasks = start.ctx.tasks.clone();
        let accept = tasks.spawn(accept_loop(listener, start.ctx, closed));
        Ok(AdminState { accept, closing })
    }

    async fn post_stop(
        &self,
        _me: ActorRef<()>,
        st: &mut AdminState,
    ) -> Result<(), ActorProcessingErr> {
        st.accept.abort();
        let _ = st.closing.send(true);
        Ok(())
    }
}

async fn accept_loop(listener: TcpListener, ctx: Arc<AdminCtx>, closed: watch::Receiver<bool>) {
    let slots = Slots::new(ctx.limits.max_connections);
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: keep serving the connections we have.
                warn!(actor = "root/admin", error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(slot) = slots.claim() else {
            let err = ApiError::new(
                ErrorCode::Overloaded,
                format!(
                    "too many admin connections (at most {}, each with a request in flight); \
                     try again later",
                    ctx.limits.max_connections
                ),
            );
            metrics::counter!(m::ADMIN_REQUESTS, "cmd" => "connect", "outcome" => "overloaded")
                .increment(1);
            tokio::spawn(async move {
                let _ = stream
                    .write_all(format!("{}\n", error_line(None, &err)).as_bytes())
                    .await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        let ctx = ctx.clone();
        let closed = closed.clone();
        let tasks = ctx.tasks.clone();
        tasks.spawn(async move {
            metrics::gauge!(m::ADMIN_CONNECTIONS).increment(1.0);
            conn::serve(stream, peer, ctx, closed, slot).await;
            metrics::gauge!(m::ADMIN_CONNECTIONS).decrement(1.0);
        });
    }
}

/// The recipe for the admin actor under the root.
pub struct AdminSpec {
    /// The bound listener.
    pub listener: Arc<std::net::TcpListener>,
    /// Shared context.
    pub ctx: Arc<AdminCtx>,
}

impl ChildSpec for AdminSpec {
    fn name(&self) -> String {
        "admin".into()
    }
    fn kind(&self) -> &'static str {
        "admin"
    }
    fn spawn(
        &self,
        supervisor: ActorCell,
        _path: String,
    ) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
        let start = AdminStart {
            listener: self.listener.clone(),
            ctx: self.ctx.clone(),
        };
        Box::pin(async move {
            let (r, _) = Actor::spawn_linked(None, Admin, start, supervisor).await?;
            info!(actor = "root/admin", "admin port open");
            Ok(r.get_cell())
        })
    }
}
