//! Executes one parsed admin request and renders its answer line. Reads (`status`, `list`,
//! `history`, `dlq`, `records`) go to the store (the journal, or PostgreSQL in cluster mode);
//! decisions go to the dispatcher; `tree` asks the root supervisor; `shutdown` tells the node.

use std::net::SocketAddr;
use std::time::Duration;

use globset::Glob;
use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tracing::warn;

use super::AdminCtx;
use crate::dispatcher::{DispatcherMsg, PipelineView};
use crate::job::{now_ms, rfc3339_ms, JobId, JobRecord, JobStatus};
use crate::metrics as m;
use crate::protocol::{
    error_line, limit_or, ok_line, parse_request, ApiError, Command, JobView, ListReq, SubmitReq,
    SubmitSpec,
};
use crate::supervisor::SupervisorMsg;

/// How long a command waits for the dispatcher or the root.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What `shutdown` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownRequest {
    /// Let running jobs finish first.
    pub drain: bool,
}

/// Parses, authorizes and executes one line; returns the answer line (without `\n`).
pub async fn execute(line: &[u8], ctx: &AdminCtx, peer: SocketAddr) -> String {
    let req = parse_request(line);
    let cmd_name = req.cmd_name.clone().unwrap_or_else(|| "-".into());
    let result = match req.command {
        Err(e) => Err(e),
        Ok(cmd) => match authorize(&cmd, req.token.as_deref(), ctx, peer, &cmd_name) {
            Err(e) => Err(e),
            Ok(()) => perform(cmd, ctx).await,
        },
    };
    let label = if crate::protocol::COMMANDS.contains(&cmd_name.as_str()) {
        cmd_name
    } else {
        "-".into()
    };
    match result {
        Ok(fields) => {
            metrics::counter!(m::ADMIN_REQUESTS, "cmd" => label, "outcome" => "ok").increment(1);
            ok_line(req.id, fields)
        }
        Err(e) => {
            metrics::counter!(m::ADMIN_REQUESTS, "cmd" => label, "outcome" => e.code.as_str())
                .increment(1);
            error_line(req.id, &e)
        }
    }
}

/// Executes an authorized command and answers its fields: what the admin port does for a line
/// once it is parsed and its token checked. The web console calls this for every action it
/// offers, so that a button and the command it mirrors share one code path.
pub async fn perform(cmd: Command, ctx: &AdminCtx) -> Result<Value, ApiError> {
    let durable_first = cmd.shows_journaled_state();
    let answer = run(cmd, ctx).await;
    match answer {
        // Read first, then wait: every write the answer may show was made before this call, so
        // the commit it waits for covers it.
        Ok(_) if durable_first => visible(ctx).await.and(answer),
        _ => answer,
    }
}

/// Waits until everything written so far is durable.
pub(crate) async fn visible(ctx: &AdminCtx) -> Result<(), ApiError> {
    ctx.journal.durable().await.map_err(|e| {
        ApiError::new(
            crate::protocol::ErrorCode::StorageUnavailable,
            format!(
                "the answer would show state that is not durable yet, and the journal in data dir {} cannot make it durable: {e}",
                ctx.journal.dir().display()
            ),
        )
    })
}

fn authorize(
    cmd: &Command,
    token: Option<&str>,
    ctx: &AdminCtx,
    peer: SocketAddr,
    name: &str,
) -> Result<(), ApiError> {
    let Some(expected) = ctx.limits.token.as_deref() else {
        return Ok(());
    };
    if matches!(cmd, Command::Ping) {
        return Ok(());
    }
    let good = token.is_some_and(|t| bool::from(t.as_bytes().ct_eq(expected.as_bytes())));
    if good {
        return Ok(());
    }
    let what = if token.is_some() {
        "wrong token"
    } else {
        "missing token"
    };
    warn!(%peer, cmd = %name, reason = what, "admin request rejected");
    Err(ApiError::new(
        crate::protocol::ErrorCode::Unauthorized,
        format!("{what}: this node requires \"token\" on every command but ping"),
    ))
}

pub(crate) async fn call<T: Send + 'static>(
    ctx: &AdminCtx,
    build: impl FnOnce(RpcReplyPort<T>) -> DispatcherMsg,
) -> Result<T, ApiError> {
    let d = ctx
        .dispatcher
        .get()
        .ok_or_else(|| ApiError::internal("the dispatcher is restarting; retry in a moment"))?;
    settle(d.call(build, Some(CALL_TIMEOUT)).await, "dispatcher")
}

fn settle<T, M>(
    r: Result<CallResult<T>, ractor::MessagingErr<M>>,
    who: &str,
) -> Result<T, ApiError> {
    match r {
        Ok(CallResult::Success(v)) => Ok(v),
        Ok(CallResult::Timeout) => Err(ApiError::internal(format!(
            "the {who} did not answer within {CALL_TIMEOUT:?}"
        ))),
        _ => Err(ApiError::internal(format!(
            "the {who} stopped before answering; retry in a moment"
        ))),
    }
}

fn to_value<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

async fn submit(
    ctx: &AdminCtx,
    reqs: Vec<SubmitReq>,
    batch: bool,
) -> Result<Vec<crate::dispatcher::Accepted>, ApiError> {
    let now = now_ms();
    let specs = reqs
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.validate(now).map_err(|e| {
                ApiError::bad_request(if batch { format!("jobs[{i}].{e}") } else { e })
            })
        })
        .collect::<Result<Vec<SubmitSpec>, _>>()?;
    let accepted = call(ctx, |p| DispatcherMsg::Submit(specs, p)).await??;
    if let Err(e) = ctx.journal.durable().await {
        // The client is told the submit failed, so the jobs must never run: withdrawn, they are
        // cancelled (journaled after their submit, so a restart sees both or neither).
        let ids = accepted
            .iter()
            .filter(|a| !a.deduplicated)
            .map(|a| a.job_id)
            .collect();
        if let Some(d) = ctx.dispatcher.get() {
            let _ = d.cast(DispatcherMsg::Withdraw(ids));
        }
        return Err(ApiError::new(
            crate::protocol::ErrorCode::StorageUnavailable,
            format!(
                "the journal in data dir {} could not make the submit durable ({e}); nothing was accepted; retry later",
                ctx.journal.dir().display()
            ),
        ));
    }
    Ok(accepted)
}

async fn run(cmd: Command, ctx: &AdminCtx) -> Result<Value, ApiError> {
    match cmd {
        Command::Ping => Ok(ping(ctx)),
        Command::Submit(req) => {
            let a = submit(ctx, vec![req], false).await?;
            Ok(json!({ "job_id": a[0].job_id, "deduplicated": a[0].deduplicated }))
        }
        Command::SubmitBatch(b) => {
            let a = submit(ctx, b.jobs, true).await?;
            Ok(json!({ "job_ids": a.iter().map(|a| a.job_id).collect::<Vec<_>>() }))
        }
        Command::Status(r) => status(ctx, r.job_id).await,
        Command::History(r) => history(ctx, r.job_id).await,
        Command::List(r) => Ok(json!({ "jobs": list(ctx, r).await? })),
        Command::Dlq(r) => dlq(ctx, r.limit).await,
        Command::Nodes => nodes(ctx).await,
        Command::Cancel(r) => job_answer(call(ctx, |p| DispatcherMsg::Cancel(r.job_id, p)).await?),
        Command::Retry(r) => job_answer(call(ctx, |p| DispatcherMsg::Retry(r.job_id, p)).await?),
        Command::Tree => tree(ctx).await,
        Command::Pipelines => {
            Ok(json!({ "pipelines": to_value(call(ctx, DispatcherMsg::Pipelines).await?) }))
        }
        Command::Pause(r) => set_paused(ctx, r.pipeline, true).await,
        Command::Resume(r) => set_paused(ctx, r.pipeline, false).await,
        Command::Stats => stats(ctx).await,
        Command::Records(r) => records(ctx, r).await,
        Command::SubmitWorkflow(w) => submit_workflow(ctx, w).await,
        Command::Workflow(r) => workflow(ctx, r.workflow_id).await,
        Command::Why(r) => {
            let b = call(ctx, |p| DispatcherMsg::Why(r.job_id, p)).await??;
            Ok(json!({ "blocker": to_value(b) }))
        }
        Command::Schedules => schedules(ctx).await,
        Command::Sinks => Ok(sinks(ctx)),
        Command::SinkBackfill(r) => sink_backfill(ctx, r.prefix).await,
        Command::Shutdown(r) => {
            let _ = ctx
                .shutdown
                .send(Some(super::ShutdownRequest { drain: r.drain }));
            Ok(json!({ "draining": true }))
        }
    }
}

/// `ping`: the node's name, version and uptime.
fn ping(ctx: &AdminCtx) -> Value {
    json!({
        "pong": true,
        "version": env!("CARGO_PKG_VERSION"),
        "node": ctx.node_name,
        "uptime_s": ctx.started.elapsed().as_secs(),
    })
}

/// The stored record of `id`, or `not_found`.
async fn record_of(ctx: &AdminCtx, id: JobId) -> Result<JobRecord, ApiError> {
    ctx.jobs
        .get(id)
        .await
        .map_err(ApiError::storage_unavailable)?
        .ok_or_else(|| no_job(id))
}

/// `nodes`: the nodes of the cluster, with their heartbeat's age and the leader; a single
/// node lists itself.
async fn nodes(ctx: &AdminCtx) -> Result<Value, ApiError> {
    let nodes = node_views(ctx).await?;
    Ok(match &ctx.cluster {
        None => json!({ "cluster": false, "nodes": nodes }),
        Some(c) => json!({ "cluster": true, "node_id": c.args.node_id, "nodes": nodes }),
    })
}

/// The nodes `nodes` shows (and the console's nodes page): every node that ever beat, from the
/// cluster's table; on a single node, itself, leading alone.
pub(crate) async fn node_views(ctx: &AdminCtx) -> Result<Vec<crate::cluster::NodeView>, ApiError> {
    let Some(cluster) = &ctx.cluster else {
        let running = call(ctx, DispatcherMsg::Running).await?.len();
        return Ok(vec![crate::cluster::NodeView {
            id: ctx.node_name.clone(),
            admin: ctx.limits.listen.to_string(),
            heartbeat_age_ms: 0,
            leader: true,
            running: running as i64,
            started_at: String::new(),
        }]);
    };
    cluster
        .jobs
        .nodes()
        .await
        .map_err(|e| ApiError::storage_unavailable(e.message().to_string()))
}

/// `status`: the job with its progress.
async fn status(ctx: &AdminCtx, id: JobId) -> Result<Value, ApiError> {
    let rec = record_of(ctx, id).await?;
    Ok(json!({ "job": JobView::from(&rec).with_progress(&ctx.progress) }))
}

/// `history`: the job's events, oldest first, from one read of its record.
async fn history(ctx: &AdminCtx, id: JobId) -> Result<Value, ApiError> {
    let events: Vec<Value> = record_of(ctx, id)
        .await?
        .history
        .into_iter()
        .map(|e| json!({ "at": rfc3339_ms(e.at), "kind": e.kind.as_str(), "attempt": e.attempt, "detail": e.detail }))
        .collect();
    Ok(json!({ "events": events }))
}

/// `dlq`: the newest failed jobs.
async fn dlq(ctx: &AdminCtx, limit: Option<usize>) -> Result<Value, ApiError> {
    let req = ListReq {
        status: Some(JobStatus::Failed),
        limit,
        ..Default::default()
    };
    Ok(json!({ "jobs": list(ctx, req).await? }))
}

/// The answer of `cancel` and `retry`: the job as the dispatcher left it.
fn job_answer(answer: Result<JobRecord, ApiError>) -> Result<Value, ApiError> {
    Ok(json!({ "job": JobView::from(&answer?) }))
}

/// `tree`: the supervision tree, from the root supervisor.
async fn tree(ctx: &AdminCtx) -> Result<Value, ApiError> {
    let root: ActorRef<SupervisorMsg> = ctx
        .root
        .get()
        .ok_or_else(|| ApiError::internal("the root supervisor is not running"))?;
    let tree = settle(
        root.call(SupervisorMsg::Tree, Some(CALL_TIMEOUT)).await,
        "root supervisor",
    )?;
    Ok(json!({ "tree": to_value(tree) }))
}

/// `pause` and `resume`.
async fn set_paused(ctx: &AdminCtx, name: String, paused: bool) -> Result<Value, ApiError> {
    Ok(pipeline(
        call(ctx, |p| DispatcherMsg::SetPaused(name, paused, p)).await??,
    ))
}

/// `stats`: the dispatcher's counts, and whether the journal takes new work (and why not).
async fn stats(ctx: &AdminCtx) -> Result<Value, ApiError> {
    let s = call(ctx, DispatcherMsg::Stats).await?;
    let queues: serde_json::Map<String, Value> = s
        .queues
        .iter()
        .map(|(n, q)| (n.clone(), to_value(q)))
        .collect();
    let journal = match ctx.journal.admit_writes() {
        Ok(()) => json!({ "accepting_writes": true }),
        Err(e) => json!({ "accepting_writes": false, "problem": e.to_string() }),
    };
    Ok(
        json!({ "jobs": s.jobs, "totals": s.totals, "queues": queues, "journal": journal, "uptime_s": ctx.started.elapsed().as_secs() }),
    )
}

/// `records`: stored pipeline records by key prefix, paged by key (the node's journal, or the
/// cluster's `records` table).
async fn records(ctx: &AdminCtx, r: crate::protocol::RecordsReq) -> Result<Value, ApiError> {
    let limit = limit_or(r.limit, 100)?;
    let records: Vec<Value> = ctx
        .jobs
        .records(&r.prefix, r.after.as_deref(), limit)
        .await
        .map_err(ApiError::storage_unavailable)?
        .into_iter()
        .map(|s| json!({ "key": s.key, "value": s.value, "updated_at": rfc3339_ms(s.updated_at) }))
        .collect();
    Ok(json!({ "records": records }))
}

/// `submit_workflow`: accepted once durable; withdrawn when it could not be made durable.
async fn submit_workflow(
    ctx: &AdminCtx,
    w: crate::protocol::SubmitWorkflowReq,
) -> Result<Value, ApiError> {
    let spec = workflow_spec(w)?;
    let (id, ids) = call(ctx, |p| DispatcherMsg::SubmitWorkflow(spec, p)).await??;
    if let Err(e) = visible(ctx).await {
        if let Some(d) = ctx.dispatcher.get() {
            let _ = d.cast(DispatcherMsg::Withdraw(ids));
        }
        return Err(e);
    }
    Ok(json!({ "workflow_id": id, "job_ids": ids }))
}

/// `workflow`: its structure, its jobs and its status, from the store (either mode).
async fn workflow(ctx: &AdminCtx, id: uuid::Uuid) -> Result<Value, ApiError> {
    let read = ApiError::storage_unavailable;
    let wf = ctx
        .jobs
        .workflow(id)
        .await
        .map_err(read)?
        .ok_or_else(|| ApiError::not_found(format!("workflow_id: no workflow with id {id}")))?;
    let mut jobs = Vec::new();
    for job in wf.jobs.iter().chain(wf.then.iter()) {
        jobs.extend(ctx.jobs.get(*job).await.map_err(read)?);
    }
    let status = workflow_status(&jobs);
    let views: Vec<JobView> = jobs
        .iter()
        .map(|j| JobView::from(j).with_progress(&ctx.progress))
        .collect();
    Ok(
        json!({ "workflow": { "workflow_id": wf.id, "kind": wf.kind.as_str(), "status": status, "jobs": views } }),
    )
}

/// `schedules`: each schedule's next and last fire.
async fn schedules(ctx: &AdminCtx) -> Result<Value, ApiError> {
    Ok(match &ctx.scheduler {
        Some(link) => json!({ "schedules": to_value(crate::scheduler::list(link).await?) }),
        None => json!({ "schedules": [] }),
    })
}

/// `sinks`: each configured sink's view (none without `[sinks.postgres]`).
fn sinks(ctx: &AdminCtx) -> Value {
    json!({ "sinks": ctx.sink.iter().map(|s| s.view()).collect::<Vec<_>>() })
}

/// `sink_backfill`: enqueues the stored records under `prefix` for the sink.
async fn sink_backfill(ctx: &AdminCtx, prefix: String) -> Result<Value, ApiError> {
    let sink = ctx
        .sink
        .as_ref()
        .ok_or_else(|| ApiError::not_found("sink: no sink is configured (add [sinks.postgres])"))?;
    let enqueued = sink.backfill(prefix).await.map_err(ApiError::internal)?;
    Ok(json!({ "enqueued": enqueued, "backlog": ctx.journal.outbox_backlog() }))
}

/// Validates a `submit_workflow` request into the dispatcher's spec, naming the field at fault.
fn workflow_spec(
    w: crate::protocol::SubmitWorkflowReq,
) -> Result<crate::dispatcher::WorkflowSpec, ApiError> {
    use crate::job::WorkflowKind;
    let kind = match w.kind.as_str() {
        "chain" => WorkflowKind::Chain,
        "group" => WorkflowKind::Group,
        other => {
            return Err(ApiError::bad_request(format!(
                "kind: expected one of chain, group, got {other:?}"
            )))
        }
    };
    if kind == WorkflowKind::Chain && (w.then.is_some() || w.allow_failures) {
        return Err(ApiError::bad_request(
            "then, allow_failures: only a group takes them; a chain passes each result on",
        ));
    }
    let now = now_ms();
    let jobs = w
        .jobs
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.validate(now)
                .map_err(|e| ApiError::bad_request(format!("jobs[{i}].{e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let then = w
        .then
        .map(|r| {
            r.validate(now)
                .map_err(|e| ApiError::bad_request(format!("then.{e}")))
        })
        .transpose()?;
    Ok(crate::dispatcher::WorkflowSpec {
        kind,
        jobs,
        then,
        allow_failures: w.allow_failures,
    })
}

/// A workflow's status from its jobs: running while any is unfinished, then succeeded when all
/// did, failed when any failed, else cancelled.
fn workflow_status(jobs: &[crate::job::JobRecord]) -> &'static str {
    if jobs.iter().any(|j| !j.status.is_finished()) {
        "running"
    } else if jobs.iter().all(|j| j.status == JobStatus::Succeeded) {
        "succeeded"
    } else if jobs.iter().any(|j| j.status == JobStatus::Failed) {
        "failed"
    } else {
        "cancelled"
    }
}

fn pipeline(v: PipelineView) -> Value {
    json!({ "pipeline": to_value(v) })
}

fn no_job(id: crate::job::JobId) -> ApiError {
    ApiError::not_found(format!("job_id: no job with id {id}"))
}

async fn list(ctx: &AdminCtx, r: ListReq) -> Result<Vec<JobView>, ApiError> {
    let limit = limit_or(r.limit, 100)?;
    let matcher = match &r.name {
        Some(n) => Some(
            Glob::new(n)
                .map_err(|e| {
                    ApiError::bad_request(format!(
                        "name: expected a job name or a glob like \"sec.*\", got {n:?} ({e})"
                    ))
                })?
                .compile_matcher(),
        ),
        None => None,
    };
    let filter = crate::store::journal::ListFilter {
        status: r.status,
        name: matcher,
        before: r.before,
        limit,
    };
    let recs = ctx
        .jobs
        .list(&filter)
        .await
        .map_err(ApiError::storage_unavailable)?;
    Ok(recs
        .iter()
        .map(|r| JobView::from(r).with_progress(&ctx.progress))
        .collect())
}
