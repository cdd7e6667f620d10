//! The web console: server-rendered HTML pages served by the node on `[console] listen`, for a
//! person on call who wants to see what is stuck and why and act on it without composing JSON
//! (docs/console.md).
//!
//! It is a client of the node like the CLI: every read of jobs goes to the node's
//! [`crate::store::JobStore`] (the journal's indexes, or the cluster's PostgreSQL table, so the
//! pages are the same in both modes) or the dispatcher, and every action runs the admin command
//! it mirrors through [`crate::admin::perform`], the code path of the admin port, so a button
//! can never do what the command would not. The actor (`root/console`, started last) owns the HTTP server and the
//! sampler of the overview's chart; what must outlive one incarnation (sessions, the chart's
//! ring) lives in [`ConsoleCtx`].
//!
//! HTML is rendered with maud (escaped by default, checked at compile time); the CSS and the
//! small script that refreshes pages in place are compiled into the binary (`assets/console/`).

mod actions;
mod assets;
mod dead;
mod job;
mod jobs;
mod layout;
mod nodes;
mod overview;
mod pipelines;
mod rate;
mod records;
mod schedules;
mod search;
mod session;
mod tree;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::admin::AdminCtx;
use crate::args::{ConsoleArgs, ScheduleArgs};
use crate::node::NodeError;
use crate::supervisor::ChildSpec;

pub use self::rate::Throughput;

/// What every request of the console needs; shared by the console's incarnations.
pub struct ConsoleCtx {
    /// The admin port's context: the job store, the dispatcher, the root, the scheduler. Actions
    /// run through [`crate::admin::perform`] with it.
    pub admin: Arc<AdminCtx>,
    /// `[console]`.
    pub args: ConsoleArgs,
    /// Each pipeline's name and the job names it serves, for the jobs page's pipeline filter.
    pub pipelines: Vec<(String, Vec<String>)>,
    /// The configured schedules, for "run now" (the job, params and priority a tick submits).
    pub schedules: Vec<ScheduleArgs>,
    /// Jobs succeeded and failed per second, for the overview's chart.
    pub rate: Throughput,
    /// Logged-in browsers and their CSRF tokens.
    sessions: session::Sessions,
}

impl ConsoleCtx {
    /// The context of a node's console.
    pub fn new(
        admin: Arc<AdminCtx>,
        args: ConsoleArgs,
        pipelines: Vec<(String, Vec<String>)>,
        schedules: Vec<ScheduleArgs>,
    ) -> ConsoleCtx {
        ConsoleCtx {
            admin,
            args,
            pipelines,
            schedules,
            rate: Throughput::default(),
            sessions: session::Sessions::default(),
        }
    }

    /// Whether the console asks for `[admin] token` before it shows anything.
    fn needs_login(&self) -> bool {
        self.admin.limits.token.is_some()
    }
}

/// Binds the console's port when it is enabled, before the tree starts (so a taken port stops
/// the node with a clear error instead of failing an actor later).
pub fn bind(
    args: Option<&ConsoleArgs>,
) -> Result<Option<(Arc<std::net::TcpListener>, SocketAddr)>, NodeError> {
    let Some(args) = args else { return Ok(None) };
    let err = |source| NodeError::ConsoleBind {
        addr: args.listen,
        source,
    };
    let listener = std::net::TcpListener::bind(args.listen).map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(Some((Arc::new(listener), addr)))
}

/// Every route of the console.
fn router(ctx: Arc<ConsoleCtx>) -> Router {
    Router::new()
        .route("/", get(overview::page))
        .route("/pipelines", get(pipelines::page))
        .route("/pipelines/{name}/pause", post(actions::pause))
        .route("/pipelines/{name}/resume", post(actions::resume))
        .route("/jobs", get(jobs::page))
        .route("/jobs/{id}", get(job::page))
        .route("/jobs/{id}/retry", post(actions::retry))
        .route("/jobs/{id}/cancel", post(actions::cancel))
        .route("/dead", get(dead::page))
        .route("/dead/retry-all", get(dead::confirm).post(dead::retry_all))
        .route("/schedules", get(schedules::page))
        .route("/schedules/{name}/run", post(actions::run_schedule))
        .route("/tree", get(tree::page))
        .route("/nodes", get(nodes::page))
        .route("/records", get(records::page))
        .route("/records/view", get(records::view))
        .route("/login", post(session::login))
        .route("/logout", post(session::logout))
        .route("/assets/{file}", get(assets::serve))
        .fallback(layout::not_found)
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            session::guard,
        ))
        .with_state(ctx)
}

/// The console actor: a shell around the HTTP server task and the chart's sampler.
struct Console;

/// What a console incarnation starts with.
struct ConsoleStart {
    listener: Arc<std::net::TcpListener>,
    ctx: Arc<ConsoleCtx>,
}

/// The console's running tasks and the signal that lets the server close gracefully.
struct ConsoleState {
    sampler: JoinHandle<()>,
    closing: watch::Sender<bool>,
}

impl Actor for Console {
    type Msg = ();
    type State = ConsoleState;
    type Arguments = ConsoleStart;

    async fn pre_start(
        &self,
        _me: ActorRef<()>,
        start: ConsoleStart,
    ) -> Result<ConsoleState, ActorProcessingErr> {
        let listener = tokio::net::TcpListener::from_std(start.listener.try_clone()?)?;
        let (closing, mut closed) = watch::channel(false);
        let app = router(start.ctx.clone());
        // Tracked with the admin connections, so the node's stop waits for open requests
        // (which hold the journal) before it releases the data dir.
        start.ctx.admin.tasks.spawn(async move {
            let stop = async move {
                let _ = closed.wait_for(|c| *c).await;
            };
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                warn!(actor = "root/console", error = %e, "console server failed");
            }
        });
        let sampler = tokio::spawn(rate::sample(start.ctx.clone()));
        Ok(ConsoleState { sampler, closing })
    }

    async fn post_stop(
        &self,
        _me: ActorRef<()>,
        st: &mut ConsoleState,
    ) -> Result<(), ActorProcessingErr> {
        st.sampler.abort();
        let _ = st.closing.send(true);
        Ok(())
    }
}

/// The recipe for the console actor under the root.
pub struct ConsoleSpec {
    listener: Arc<std::net::TcpListener>,
    ctx: Arc<ConsoleCtx>,
}

impl ConsoleSpec {
    /// The console on `listener` (from [`bind`]).
    pub fn new(listener: Arc<std::net::TcpListener>, ctx: ConsoleCtx) -> ConsoleSpec {
        ConsoleSpec {
            listener,
            ctx: Arc::new(ctx),
        }
    }
}

impl ChildSpec for ConsoleSpec {
    fn name(&self) -> String {
        "console".into()
    }
    fn kind(&self) -> &'static str {
        "console"
    }
    fn spawn(
        &self,
        supervisor: ActorCell,
        _path: String,
    ) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
        let start = ConsoleStart {
            listener: self.listener.clone(),
            ctx: self.ctx.clone(),
        };
        Box::pin(async move {
            let addr = start.listener.local_addr().ok();
            let (r, _) = Actor::spawn_linked(None, Console, start, supervisor).await?;
            info!(actor = "root/console", addr = ?addr, "web console open");
            Ok(r.get_cell())
        })
    }
}
