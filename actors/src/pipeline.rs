//! Assembling one pipeline: its tasks, and the recipe of its supervisor's subtree. A pipeline
//! with an upstream gets, before its workers, a rate-limiter and a circuit-breaker actor, and one
//! [`PipelineGate`] over both that every upstream request of its workers goes through:
//!
//! ```text
//! pipeline:<name> (Supervisor)
//! ├── limiter      (upstream pipelines only)
//! ├── breaker      (upstream pipelines only; while open, the dispatcher gives the workers no jobs)
//! └── worker-1..N
//! ```

pub mod breaker;
pub mod gate;
pub mod limiter;
pub mod worker;

use std::sync::Arc;

use crate::alerts::Alerter;
use crate::args::PipelineArgs;
use crate::dispatcher::{DispatcherLink, DispatcherMsg, PipelineInfo, StateView};
use crate::exec::{self, NodeEnv};
use crate::pipeline::breaker::{BreakerSpec, BreakerStateChange, CircuitState};
use crate::pipeline::gate::PipelineGate;
use crate::pipeline::limiter::LimiterSpec;
use crate::pipeline::worker::{WorkerLimits, WorkerSpec};
use crate::sources::{self, Source};
use crate::store::journal::Journal;
use crate::supervisor::{ChildSpec, SupervisorArgs, SupervisorSpec};
use crate::tasks::{self, TaskEnv, TaskSet};

/// What the node needs of one pipeline: how the dispatcher sees it and its supervisor's recipe.
pub struct Assembled {
    /// The dispatcher's view.
    pub info: PipelineInfo,
    /// The pipeline supervisor's recipe, for the root.
    pub spec: Arc<dyn ChildSpec>,
}

/// What every pipeline's tasks share: the node's facts for exec tasks, the record store and the
/// progress board.
#[derive(Debug, Clone)]
pub struct Shared {
    /// For exec tasks' environment.
    pub node: NodeEnv,
    /// For every task's context.
    pub tasks: TaskEnv,
    /// Cluster mode: the rate limits every node shares.
    pub permits: Option<crate::cluster::Permits>,
}

/// Builds pipeline number `index` (its place in the dispatcher). Errors name the pipeline and
/// what is missing (a pipeline this build does not have, a source that cannot be configured, an
/// exec task whose paths do not check, a pipeline with no task at all).
pub fn assemble(
    index: usize,
    p: &PipelineArgs,
    journal: &Journal,
    dispatcher: &DispatcherLink,
    alerter: &Alerter,
    shared: &Shared,
) -> Result<Assembled, String> {
    let mut front: Vec<Arc<dyn ChildSpec>> = Vec::new();
    let (mut limiter_view, mut breaker_view): (Option<StateView>, Option<StateView>) = (None, None);
    let tasks: TaskSet = match &p.upstream {
        None if p.name == "builtin" => tasks::builtin(),
        None => TaskSet::default(),
        Some(up) => {
            let limiter = LimiterSpec::new(
                p.name.clone(),
                up.rate_limit.clone(),
                up.throttle_cooldown,
                journal.clone(),
                shared.permits.clone(),
            );
            let (link, alerter) = (dispatcher.clone(), alerter.clone());
            let permits = shared.permits.clone();
            let on_change = Arc::new(move |c: BreakerStateChange| {
                let open = c.to == CircuitState::Open;
                link.cast(DispatcherMsg::BreakerOpen(index, open));
                if open {
                    alerter.breaker_opened(&c.pipeline, &c.reason, c.retry_after);
                }
                if let Some(p) = &permits {
                    share_breaker(p, &c);
                }
            });
            let breaker = BreakerSpec::new(p.name.clone(), up.breaker, Some(on_change));
            let gate = Arc::new(PipelineGate::new(limiter.link(), breaker.link()));
            let source = Source::new(&p.name, up.clone(), gate, journal.clone())
                .map_err(|e| e.to_string())?;
            let tasks = sources::task_set(&p.name, Arc::new(source))
                .ok_or_else(|| format!("pipelines.{}: no such pipeline in this build", p.name))?;
            let (l, b) = (limiter.clone(), breaker.clone());
            limiter_view = Some(Arc::new(move || l.detail()));
            breaker_view = Some(Arc::new(move || b.detail()));
            front.push(limiter);
            front.push(breaker);
            tasks
        }
    };
    let tasks = own_tasks(p, shared)
        .and_then(|own| tasks.merge(own))
        .map_err(|e| format!("pipelines.{}: {e}", p.name))?;
    let info = PipelineInfo {
        name: p.name.clone(),
        retry: p.retry,
        tasks: tasks.names().map(String::from).collect(),
        limiter_view,
        breaker_view,
    };
    Ok(Assembled {
        info,
        spec: supervisor_spec(
            index,
            p,
            tasks,
            front,
            dispatcher.clone(),
            shared.tasks.clone(),
        ),
    })
}

/// Cluster mode: tells every node of a breaker that opened (for as long as it is open here) or
/// closed after a probe succeeded (see `cluster/permits.rs`). Off the breaker's thread; a
/// failure is logged and the breaker stays this node's own until its next transition.
fn share_breaker(permits: &crate::cluster::Permits, change: &BreakerStateChange) {
    let open_for = match change.to {
        CircuitState::Open => Some(change.retry_after.unwrap_or_default()),
        // Only a probe that succeeded says the upstream is back (a restarted breaker also
        // starts closed, knowing nothing).
        CircuitState::Closed if change.from == CircuitState::HalfOpen => None,
        CircuitState::Closed | CircuitState::HalfOpen => return,
    };
    let (permits, source) = (permits.clone(), change.pipeline.clone());
    tokio::spawn(async move {
        if let Err(e) = permits.breaker(&source, open_for).await {
            tracing::warn!(pipeline = %source, error = %e.message(),
                "the breaker's state could not be shared with the cluster; it holds this node only");
        }
    });
}

/// The pipeline's exec tasks (paths checked again: the arguments may not come from a config
/// file) and the embedding program's Rust tasks. A pipeline without upstream, built-in or own
/// tasks would accept nothing: an error, most likely a misspelt pipeline name.
fn own_tasks(p: &PipelineArgs, shared: &Shared) -> Result<TaskSet, String> {
    let mut own = p.custom.clone();
    for t in &p.exec {
        exec::check::verify(t).map_err(|e| e.to_string())?;
        let one = TaskSet::default().with(&t.name, exec::task(t.clone(), shared.node.clone()));
        own = own.merge(one)?;
    }
    if own.is_empty() && p.upstream.is_none() && p.name != "builtin" {
        return Err(format!(
            "no tasks: an upstream pipeline is one of sec, yahoo, alphavantage; any other \
             pipeline needs at least one task ([tasks.\"<name>\"] with pipeline = {:?}, or a \
             Rust task registered with warden::Node::builder)",
            p.name
        ));
    }
    Ok(own)
}

fn supervisor_spec(
    index: usize,
    p: &PipelineArgs,
    tasks: TaskSet,
    front: Vec<Arc<dyn ChildSpec>>,
    dispatcher: DispatcherLink,
    env: TaskEnv,
) -> Arc<dyn ChildSpec> {
    let limits = Arc::new(WorkerLimits {
        limits: p.limits,
        task_limits: p.task_limits.clone(),
        max_jobs: p.max_jobs_per_worker,
    });
    let reports = crate::dispatcher::reports(&dispatcher);
    let workers: Vec<Arc<WorkerSpec>> = (1..=p.workers)
        .map(|n| {
            let (r, l) = (reports.clone(), limits.clone());
            WorkerSpec::new(n, index, r, tasks.clone(), l, env.clone())
        })
        .collect();
    let down = workers.clone();
    let mut children = front;
    children.extend(workers.iter().map(|w| w.clone() as Arc<dyn ChildSpec>));
    let (name, policy) = (p.name.clone(), p.restart);
    Arc::new(SupervisorSpec {
        name: format!("pipeline:{}", p.name),
        build: Box::new(move |path| SupervisorArgs {
            path,
            pipeline: name.clone(),
            policy,
            children: children.clone(),
            on_escalate: None,
        }),
        // A pipeline supervisor that fails takes its workers with it without telling them
        // apart: tell the dispatcher for each, so their jobs go back to the queue.
        on_down: Some(Box::new(move |reason| {
            for w in &down {
                w.on_down(&format!("pipeline supervisor down: {reason}"));
            }
        })),
    })
}
