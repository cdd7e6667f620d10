//! The one supervisor actor Warden uses at every level: the root (dispatcher, pipelines, admin)
//! and each pipeline (its workers). Core ractor has no restart strategies, so this is
//! ours: children are built from [`ChildSpec`] recipes, a failed child is
//! restarted after an exponential, jittered backoff within a per-child [`RestartBudget`], and a
//! spent budget fails the supervisor itself so the failure climbs the tree (OTP's restart
//! intensity). A child whose spec says [`ChildSpec::restarts_later_siblings`] takes the children
//! started after it down with it and they start again after it, which is how the root keeps workers from holding on to a dead dispatcher.
//!
//! Every supervision event is logged once with the child's path (`root/pipeline:builtin/worker-3`),
//! the cause and the backoff chosen.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::concurrency::JoinHandle;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, ActorStatus, MessagingErr,
    RpcReplyPort, SpawnErr, SupervisionEvent,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::args::RestartPolicy;
use crate::backoff::{random_unit, RestartBudget, RestartDecision};
use crate::metrics as m;

/// Why a child asks to be replaced at once. It is started again without backoff and without
/// spending the restart budget (it did not fail), and the replacement is counted in the tree's
/// `restarts`. ractor carries a stop reason only as a string, so the request travels as one
/// written by [`Replacement::stop_reason`] and read only by [`Replacement::described_in`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replacement {
    /// Recycled after `max_jobs_per_worker` jobs.
    Recycled {
        /// Jobs it ran.
        jobs: u64,
    },
    /// Its job hit its hard time limit: the task was aborted, its state may be anything.
    HardTimeLimit,
    /// Its job panicked (the description names the job and the panic).
    JobPanicked(String),
}

impl Replacement {
    /// What a stop reason carrying a replacement request starts with.
    const TAG: &'static str = "replace:";

    /// The stop reason that asks the supervisor for this replacement.
    pub fn stop_reason(&self) -> String {
        format!("{} {self}", Self::TAG)
    }

    /// The description of the replacement a stop reason asks for; `None` for any other stop.
    pub fn described_in(reason: &str) -> Option<&str> {
        reason.strip_prefix(Self::TAG).map(str::trim)
    }
}

impl std::fmt::Display for Replacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Replacement::Recycled { jobs } => write!(f, "recycled after {jobs} jobs"),
            Replacement::HardTimeLimit => f.write_str("a job hit its hard time limit"),
            Replacement::JobPanicked(why) => f.write_str(why),
        }
    }
}

/// How long a supervisor waits for a child supervisor's subtree when drawing the tree.
const TREE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a stopping supervisor waits for its children.
const STOP_CHILDREN_TIMEOUT: Duration = Duration::from_secs(30);

/// A recipe for (re)building one child. `Arguments` are consumed by `pre_start`, so a supervisor
/// keeps the recipe, not the arguments.
pub trait ChildSpec: Send + Sync + 'static {
    /// The child's name within its parent (`dispatcher`, `pipeline:sec`, `worker-2`).
    fn name(&self) -> String;
    /// What kind of actor it is, as shown by `tree` (`supervisor`, `worker`, `dispatcher`, …).
    fn kind(&self) -> &'static str;
    /// Spawns a new incarnation linked to `supervisor`; `path` is the child's full path.
    fn spawn(
        &self,
        supervisor: ActorCell,
        path: String,
    ) -> BoxFuture<'static, Result<ActorCell, SpawnErr>>;
    /// Called when an incarnation is gone (failed, stopped or killed), before any restart.
    fn on_down(&self, _reason: &str) {}
    /// Called after a new incarnation started.
    fn on_up(&self, _cell: &ActorCell) {}
    /// The child's own subtree, for children that are supervisors themselves.
    fn is_supervisor(&self) -> bool {
        false
    }
    /// True when the children started after this one depend on it: they are stopped when it
    /// fails and started again after it (OTP's rest-for-one, per child). The dispatcher is one.
    fn restarts_later_siblings(&self) -> bool {
        false
    }
    /// Extra state shown in `tree` (limiter, breaker); `None` for most children.
    fn detail(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Told the reason when a supervisor escalates.
pub type EscalateHook = Box<dyn Fn(String) + Send + Sync>;

/// What a supervisor starts with.
pub struct SupervisorArgs {
    /// This supervisor's path (`root`, `root/pipeline:sec`).
    pub path: String,
    /// Pipeline label for logs and metrics (`-` for the root).
    pub pipeline: String,
    /// Restart policy for every child.
    pub policy: RestartPolicy,
    /// The children, started in order, stopped in reverse.
    pub children: Vec<Arc<dyn ChildSpec>>,
    /// Told the reason when this supervisor escalates (the root's is how the node learns it
    /// must exit non-zero).
    pub on_escalate: Option<EscalateHook>,
}

/// Messages a supervisor accepts. Work never goes through a supervisor.
pub enum SupervisorMsg {
    /// A backoff timer ran out: start child `index` again (and, with rest-for-one, those after it).
    Restart(usize),
    /// Draw the live subtree.
    Tree(RpcReplyPort<TreeNode>),
}

/// One node of the live supervision tree (the admin `tree` command).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct TreeNode {
    /// Name within the parent.
    pub name: String,
    /// The full path.
    pub path: String,
    /// `supervisor`, `dispatcher`, `admin`, `worker`, …
    pub kind: String,
    /// Whether it runs now.
    pub status: ActorState,
    /// Restarts since the node started.
    pub restarts: u64,
    /// The last failure's cause.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_failure: Option<String>,
    /// Why the last incarnation asked to be replaced (recycling, a hard time limit, a job that
    /// panicked).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_replacement: Option<String>,
    /// Child-specific state (limiter windows, breaker state).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<serde_json::Value>,
    /// Children, in start order.
    pub children: Vec<TreeNode>,
}

/// Where an actor of the tree is, for `tree`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorState {
    /// Up.
    Running,
    /// Asked to stop; not gone yet.
    Stopping,
    /// Waiting out a backoff (or an earlier sibling's restart) before it starts again.
    Restarting,
    /// Gone, and not coming back.
    Stopped,
}

/// The supervisor actor (stateless shell; see [`SupervisorState`]).
pub struct Supervisor;

struct Child {
    spec: Arc<dyn ChildSpec>,
    cell: Option<ActorCell>,
    budget: RestartBudget,
    last_failure: Option<String>,
    /// Stopped on purpose (rest-for-one): its exit is not a failure.
    expected_exit: Option<ActorId>,
    /// Waits for this earlier sibling's restart before it starts again.
    waiting_on: Option<usize>,
    /// Incarnations replaced on their own request (see [`Replacement`]).
    replaced: u64,
    /// Why the last one asked to be replaced.
    last_replacement: Option<String>,
    timer: Option<JoinHandle<Result<(), MessagingErr<SupervisorMsg>>>>,
}

/// A supervisor's mutable state.
pub struct SupervisorState {
    path: String,
    pipeline: String,
    children: Vec<Child>,
    on_escalate: Option<EscalateHook>,
}

impl SupervisorState {
    fn child_path(&self, i: usize) -> String {
        format!("{}/{}", self.path, self.children[i].spec.name())
    }

    /// Starts child `i`; a failed start counts as a failure of the child.
    async fn start(
        &mut self,
        me: &ActorRef<SupervisorMsg>,
        i: usize,
    ) -> Result<(), ActorProcessingErr> {
        let path = self.child_path(i);
        let spec = self.children[i].spec.clone();
        match spec.spawn(me.get_cell(), path.clone()).await {
            Ok(cell) => {
                let restarts = self.children[i].budget.total() + self.children[i].replaced;
                let reason = if restarts == 0 {
                    "first start"
                } else {
                    "restarted"
                };
                info!(actor = %path, pipeline = %self.pipeline, restarts, backoff_ms = 0u64, reason, "started");
                spec.on_up(&cell);
                self.children[i].cell = Some(cell);
                Ok(())
            }
            Err(e) => self.failed(me, i, format!("start failed: {e}")),
        }
    }

    /// Handles the failure of child `i`: schedule a restart or escalate.
    fn failed(
        &mut self,
        me: &ActorRef<SupervisorMsg>,
        i: usize,
        reason: String,
    ) -> Result<(), ActorProcessingErr> {
        let path = self.child_path(i);
        let child = &mut self.children[i];
        child.cell = None;
        child.spec.on_down(&reason);
        child.last_failure = Some(reason.clone());
        warn!(actor = %path, pipeline = %self.pipeline, restarts = child.budget.total(), backoff_ms = 0u64, reason = %reason, "failed");
        match child.budget.on_failure(Instant::now(), random_unit()) {
            RestartDecision::Restart {
                backoff,
                restarts_in_window,
            } => {
                let backoff_ms = backoff.as_millis() as u64;
                info!(actor = %path, pipeline = %self.pipeline, restarts = child.budget.total(), restarts_in_window, backoff_ms, reason = %reason, "restart scheduled");
                metrics::counter!(m::ACTOR_RESTARTS, "actor_kind" => child.spec.kind(), "pipeline" => self.pipeline.clone()).increment(1);
                if let Some(t) = child.timer.take() {
                    t.abort();
                }
                child.timer = Some(me.send_after(backoff, move || SupervisorMsg::Restart(i)));
                if child.spec.restarts_later_siblings() {
                    self.stop_later_children(i);
                }
                Ok(())
            }
            RestartDecision::Escalate { restarts_in_window } => {
                let why = format!("{path}: restart budget spent ({restarts_in_window} restarts within the window), last failure: {reason}");
                error!(actor = %path, supervisor = %self.path, pipeline = %self.pipeline, restarts = child.budget.total(), backoff_ms = 0u64, reason = %why, "budget spent, escalating");
                metrics::counter!(m::SUPERVISOR_ESCALATIONS, "pipeline" => self.pipeline.clone())
                    .increment(1);
                if let Some(tell) = &self.on_escalate {
                    tell(why.clone());
                }
                Err(why.into())
            }
        }
    }

    /// Starts child `i` again at once: it stopped asking to be replaced (see [`Replacement`]).
    async fn replace(
        &mut self,
        me: &ActorRef<SupervisorMsg>,
        i: usize,
        why: &str,
    ) -> Result<(), ActorProcessingErr> {
        let path = self.child_path(i);
        let child = &mut self.children[i];
        child.cell = None;
        child.replaced += 1;
        child.last_replacement = Some(why.to_string());
        child.spec.on_down(why);
        info!(actor = %path, pipeline = %self.pipeline, restarts = child.budget.total() + child.replaced, backoff_ms = 0u64, reason = %why, "replaced");
        metrics::counter!(m::ACTOR_RESTARTS, "actor_kind" => child.spec.kind(), "pipeline" => self.pipeline.clone()).increment(1);
        self.start(me, i).await
    }

    /// Rest-for-one: stop every running child after `i`; they start again with it.
    fn stop_later_children(&mut self, i: usize) {
        for later in (i + 1..self.children.len()).rev() {
            let path = self.child_path(later);
            let child = &mut self.children[later];
            if let Some(cell) = child.cell.take() {
                info!(actor = %path, pipeline = %self.pipeline, restarts = child.budget.total(), backoff_ms = 0u64, reason = "an earlier sibling failed", "stopping for restart");
                child.expected_exit = Some(cell.get_id());
                child.waiting_on = Some(i);
                child.spec.on_down("stopped: an earlier sibling failed");
                cell.stop(Some("rest_for_one".into()));
            }
        }
    }

    fn index_of(&self, id: ActorId) -> Option<usize> {
        self.children
            .iter()
            .position(|c| c.cell.as_ref().map(|c| c.get_id()) == Some(id))
    }

    async fn tree(&self) -> TreeNode {
        let mut children = Vec::with_capacity(self.children.len());
        for (i, c) in self.children.iter().enumerate() {
            let status = match &c.cell {
                Some(cell) if cell.get_status() == ActorStatus::Running => ActorState::Running,
                Some(_) => ActorState::Stopping,
                None if c.timer.is_some() || c.waiting_on.is_some() => ActorState::Restarting,
                None => ActorState::Stopped,
            };
            let mut node = TreeNode {
                name: c.spec.name(),
                path: self.child_path(i),
                kind: c.spec.kind().to_string(),
                status,
                restarts: c.budget.total() + c.replaced,
                last_failure: c.last_failure.clone(),
                last_replacement: c.last_replacement.clone(),
                detail: c.spec.detail(),
                children: vec![],
            };
            if let (true, Some(cell)) = (c.spec.is_supervisor(), &c.cell) {
                let sub: ActorRef<SupervisorMsg> = cell.clone().into();
                if let Ok(ractor::rpc::CallResult::Success(t)) =
                    sub.call(SupervisorMsg::Tree, Some(TREE_TIMEOUT)).await
                {
                    node.children = t.children;
                }
            }
            children.push(node);
        }
        TreeNode {
            name: self
                .path
                .rsplit('/')
                .next()
                .unwrap_or(&self.path)
                .to_string(),
            path: self.path.clone(),
            kind: "supervisor".into(),
            status: ActorState::Running,
            restarts: 0,
            last_failure: None,
            last_replacement: None,
            detail: None,
            children,
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        me: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut st = SupervisorState {
            path: args.path,
            pipeline: args.pipeline,
            children: args
                .children
                .into_iter()
                .map(|spec| Child {
                    spec,
                    cell: None,
                    budget: RestartBudget::new(args.policy),
                    last_failure: None,
                    expected_exit: None,
                    waiting_on: None,
                    replaced: 0,
                    last_replacement: None,
                    timer: None,
                })
                .collect(),
            on_escalate: args.on_escalate,
        };
        for i in 0..st.children.len() {
            st.start(&me, i).await?;
        }
        Ok(st)
    }

    async fn handle(
        &self,
        me: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Restart(i) => {
                st.children[i].timer = None;
                if st.children[i].cell.is_none() {
                    st.start(&me, i).await?;
                }
                for j in i + 1..st.children.len() {
                    if st.children[j].waiting_on == Some(i) {
                        st.children[j].waiting_on = None;
                        st.start(&me, j).await?;
                    }
                }
            }
            SupervisorMsg::Tree(reply) => {
                let _ = reply.send(st.tree().await);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<SupervisorMsg>,
        evt: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (id, reason) = match &evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell.get_id(), err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let id = cell.get_id();
                if let Some(c) = st.children.iter_mut().find(|c| c.expected_exit == Some(id)) {
                    c.expected_exit = None;
                    return Ok(());
                }
                if let (Some(why), Some(i)) = (
                    reason.as_deref().and_then(Replacement::described_in),
                    st.index_of(id),
                ) {
                    return st.replace(&me, i, why).await;
                }
                (
                    id,
                    format!(
                        "stopped unexpectedly: {}",
                        reason.as_deref().unwrap_or("no reason")
                    ),
                )
            }
            _ => return Ok(()),
        };
        // Events about an incarnation we no longer track (already replaced) are ignored.
        let Some(i) = st.index_of(id) else {
            return Ok(());
        };
        st.failed(&me, i, reason)
    }

    async fn post_stop(
        &self,
        me: ActorRef<SupervisorMsg>,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        for c in &mut st.children {
            if let Some(t) = c.timer.take() {
                t.abort();
            }
        }
        // Stop children in reverse start order so that dependents go first, and wait for them:
        // ractor would otherwise kill them without running their post_stop.
        for i in (0..st.children.len()).rev() {
            if let Some(cell) = st.children[i].cell.take() {
                st.children[i].expected_exit = Some(cell.get_id());
                let _ = cell
                    .stop_and_wait(Some("shutdown".into()), Some(STOP_CHILDREN_TIMEOUT))
                    .await;
                st.children[i].spec.on_down("shutdown");
            }
        }
        info!(actor = %st.path, pipeline = %st.pipeline, restarts = 0u64, backoff_ms = 0u64, reason = "shutdown", "stopped");
        let _ = me;
        Ok(())
    }
}

/// Spawns `actor` linked to `supervisor` and hands back its cell: what every recipe's
/// [`ChildSpec::spawn`] does once it has built fresh arguments.
pub fn spawn_child<A: Actor>(
    actor: A,
    args: A::Arguments,
    supervisor: ActorCell,
) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
    Box::pin(async move {
        let (r, _) = Actor::spawn_linked(None, actor, args, supervisor).await?;
        Ok(r.get_cell())
    })
}

/// A hook told why a child went down.
pub type DownHook = Box<dyn Fn(&str) + Send + Sync>;

/// A [`ChildSpec`] for a nested supervisor (a pipeline under the root).
pub struct SupervisorSpec {
    /// Name within the parent.
    pub name: String,
    /// Builds the nested supervisor's arguments for each incarnation.
    pub build: Box<dyn Fn(String) -> SupervisorArgs + Send + Sync>,
    /// Called when an incarnation is gone.
    pub on_down: Option<DownHook>,
}

impl ChildSpec for SupervisorSpec {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn kind(&self) -> &'static str {
        "supervisor"
    }
    fn spawn(
        &self,
        supervisor: ActorCell,
        path: String,
    ) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
        let args = (self.build)(path);
        spawn_child(Supervisor, args, supervisor)
    }
    fn on_down(&self, reason: &str) {
        if let Some(f) = &self.on_down {
            f(reason);
        }
    }
    fn is_supervisor(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;

    /// A child that fails when it gets `true`.
    struct Flaky;

    impl Actor for Flaky {
        type Msg = bool;
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<bool>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
        async fn handle(
            &self,
            _: ActorRef<bool>,
            fail: bool,
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            if fail {
                return Err("asked to fail".into());
            }
            Ok(())
        }
    }

    /// Spawns `Flaky` and remembers the current incarnation.
    struct FlakySpec {
        current: Mutex<Option<ActorRef<bool>>>,
        downs: AtomicUsize,
    }

    impl ChildSpec for FlakySpec {
        fn name(&self) -> String {
            "flaky".into()
        }
        fn kind(&self) -> &'static str {
            "worker"
        }
        fn spawn(
            &self,
            sup: ActorCell,
            _path: String,
        ) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
            Box::pin(async move {
                Ok(Actor::spawn_linked(None, Flaky, (), sup)
                    .await?
                    .0
                    .get_cell())
            })
        }
        fn on_up(&self, cell: &ActorCell) {
            *self.current.lock().unwrap() = Some(cell.clone().into());
        }
        fn on_down(&self, _reason: &str) {
            self.downs.fetch_add(1, Ordering::SeqCst);
        }
    }

    const POLICY: RestartPolicy = RestartPolicy {
        min_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(10),
        jitter: 0.0,
        max_restarts: 2,
        within: Duration::from_secs(60),
    };

    async fn status_of(sup: &ActorRef<SupervisorMsg>) -> TreeNode {
        sup.call(SupervisorMsg::Tree, None)
            .await
            .unwrap()
            .unwrap()
            .children
            .remove(0)
    }

    /// Ensures that a failed child waits out its backoff (100 ms, then 200 ms), is restarted, and
    /// that the third failure within the window spends the budget and fails the supervisor.
    #[tokio::test(start_paused = true)]
    async fn restarts_with_backoff_then_escalates() {
        let spec = Arc::new(FlakySpec {
            current: Mutex::new(None),
            downs: AtomicUsize::new(0),
        });
        let escalated = Arc::new(Mutex::new(None));
        let seen = escalated.clone();
        let args = SupervisorArgs {
            path: "root".into(),
            pipeline: "-".into(),
            policy: POLICY,
            children: vec![spec.clone()],
            on_escalate: Some(Box::new(move |why| *seen.lock().unwrap() = Some(why))),
        };
        let (sup, done) = Actor::spawn(None, Supervisor, args).await.unwrap();
        for (round, backoff_ms) in [(1u64, 100u64), (2, 200)] {
            let child = spec.current.lock().unwrap().clone().unwrap();
            child.cast(true).unwrap();
            tokio::time::sleep(Duration::from_millis(backoff_ms - 10)).await;
            let t = status_of(&sup).await;
            assert_eq!((t.status, t.restarts), (ActorState::Restarting, round));
            tokio::time::sleep(Duration::from_millis(20)).await;
            let t = status_of(&sup).await;
            assert_eq!(
                t.status,
                ActorState::Running,
                "restarted after {backoff_ms} ms"
            );
            assert_eq!(t.last_failure.as_deref(), Some("asked to fail"));
        }
        spec.current
            .lock()
            .unwrap()
            .clone()
            .unwrap()
            .cast(true)
            .unwrap();
        done.await.unwrap();
        let why = escalated.lock().unwrap().clone().unwrap();
        assert!(why.contains("root/flaky: restart budget spent"), "{why}");
        assert_eq!(spec.downs.load(Ordering::SeqCst), 3);
    }
}
