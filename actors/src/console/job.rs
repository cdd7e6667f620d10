//! `GET /jobs/{id}`: one job: its fields, params, result, error and progress, `why` in words
//! with its ETA, the timeline of its history, a batch's children and its workflow, with retry
//! and cancel buttons.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use axum::Extension;
use maud::{html, Markup};

use super::layout;
use super::session::Session;
use super::ConsoleCtx;
use crate::dispatcher::{Blocker, BlockerKind, DispatcherMsg};
use crate::job::{JobId, JobRecord, WorkflowRecord};
use crate::progress::ProgressView;
use crate::protocol::ApiError;

/// Children and workflow jobs shown at most; the rest are a link to the filtered list.
const SHOWN: usize = 50;

/// Everything the page shows.
struct Detail {
    job: JobRecord,
    why: Option<Blocker>,
    progress: Option<ProgressView>,
    children: Vec<JobRecord>,
    workflow: Option<(WorkflowRecord, Vec<JobRecord>)>,
}

/// The page.
pub(super) async fn page(
    State(ctx): State<Arc<ConsoleCtx>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let d = match load(&ctx, &id).await {
        Ok(d) => d,
        Err(e) => return layout::error_page(&e),
    };
    let back = format!("/jobs/{}", d.job.id);
    let title = format!("Job {}", d.job.name);
    layout::page(
        &ctx,
        &session,
        "/jobs",
        &title,
        html! {},
        body(&ctx, &session, &d, &back),
    )
}

async fn load(ctx: &ConsoleCtx, id: &str) -> Result<Detail, ApiError> {
    let id: JobId = id
        .parse()
        .map_err(|e: String| ApiError::bad_request(format!("job id: {e}")))?;
    let (jobs, read) = (&ctx.admin.jobs, ApiError::storage_unavailable);
    let job = jobs
        .get(id)
        .await
        .map_err(read)?
        .ok_or_else(|| ApiError::not_found(format!("no job with id {id}")))?;
    let why = if job.status.is_finished() {
        None
    } else {
        crate::admin::call(&ctx.admin, |p| DispatcherMsg::Why(id, p))
            .await?
            .ok()
    };
    let mut children = Vec::new();
    for c in job.children.iter().take(SHOWN) {
        children.extend(jobs.get(*c).await.map_err(read)?);
    }
    let workflow = match job.workflow_id {
        Some(w) => workflow(ctx, w).await?,
        None => None,
    };
    crate::admin::visible(&ctx.admin).await?;
    Ok(Detail {
        progress: ctx.admin.progress.get(id),
        job,
        why,
        children,
        workflow,
    })
}

/// The job's workflow and its first jobs.
async fn workflow(
    ctx: &ConsoleCtx,
    id: uuid::Uuid,
) -> Result<Option<(WorkflowRecord, Vec<JobRecord>)>, ApiError> {
    let read = ApiError::storage_unavailable;
    let Some(wf) = ctx.admin.jobs.workflow(id).await.map_err(read)? else {
        return Ok(None);
    };
    let mut members = Vec::new();
    for j in wf.jobs.iter().chain(wf.then.iter()).take(SHOWN) {
        members.extend(ctx.admin.jobs.get(*j).await.map_err(read)?);
    }
    Ok(Some((wf, members)))
}

fn body(ctx: &ConsoleCtx, session: &Session, d: &Detail, back: &str) -> Markup {
    let j = &d.job;
    html! {
        div.actions { (super::jobs::row_actions(ctx, session, j, back)) }
        @if let Some(b) = &d.why { (why(b)) }
        dl.kv {
            dt { "Id" } dd { code { (j.id) } }
            dt { "Status" } dd { (layout::status(j.status)) }
            dt { "Pipeline" } dd { (j.pipeline) }
            dt { "Priority" } dd { (j.priority.as_str()) }
            dt { "Attempts" } dd { (j.attempts) " of " (j.max_retries + 1) }
            dt { "Created" } dd { (layout::time(Some(j.created_at))) }
            dt { "Started" } dd { (layout::time(j.started_at)) }
            dt { "Finished" } dd { (layout::time(j.completed_at)) }
            @if j.next_attempt_at.is_some() { dt { "Next attempt" } dd { (layout::time(j.next_attempt_at)) } }
            @if let Some(k) = &j.unique_key { dt { "Unique key" } dd { code { (k) } } }
            @if let Some(p) = j.parent_id { dt { "Parent" } dd { (layout::job_link(&p.to_string())) } }
        }
        @if let Some(p) = &d.progress { (progress(p)) }
        @if let Some(e) = &j.error { h2 { "Error" } pre.text { (e) } }
        h2 { "Params" } (layout::json(&parse(&j.params)))
        @if let Some(r) = &j.result { h2 { "Result" } (layout::json(&parse(r))) }
        h2 { "Timeline" }
        (timeline(j))
        @if !j.children.is_empty() {
            h2 { "Children (" (j.children.len()) ")" }
            (super::jobs::table(ctx, session, &d.children, back, false))
            @if j.children.len() > SHOWN { p { a href=(format!("/jobs?parent={}", j.id)) { "All " (j.children.len()) " children →" } } }
        }
        @if let Some((wf, jobs)) = &d.workflow {
            h2 { "Workflow " code { (wf.id) } " (" (wf.kind.as_str()) ")" }
            (super::jobs::table(ctx, session, jobs, back, false))
            p { a href=(format!("/jobs?workflow={}", wf.id)) { "The workflow's jobs in the list →" } }
        }
    }
}

fn parse(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

/// `why` in words: what the job waits for, the detail, and when it should end.
fn why(b: &Blocker) -> Markup {
    let headline = match b.kind {
        BlockerKind::Queued => "Waiting for its turn in its pipeline's queue",
        BlockerKind::RateLimit => "Waiting for a rate-limit permit of its upstream",
        BlockerKind::BreakerOpen => "Waiting for its pipeline's circuit breaker to close",
        BlockerKind::Paused => "Waiting for its pipeline to be resumed",
        BlockerKind::RetryBackoff => "Waiting out the backoff before its next attempt",
        BlockerKind::Children => "Waiting for its child jobs to finish",
        BlockerKind::Scheduled => "Waiting for its scheduled time or its turn in a workflow",
        BlockerKind::None => "Running now: nothing holds it",
    };
    html! {
        div.why {
            strong { (headline) }
            @if !b.detail.is_empty() { " — " (b.detail) }
            @if b.eta.is_some() { br; "Expected: " (layout::when(b.eta.as_deref())) }
        }
    }
}

fn progress(p: &ProgressView) -> Markup {
    let pct = p
        .total
        .filter(|t| *t > 0)
        .map(|t| (p.done * 100 / t).min(100));
    html! {
        h2 { "Progress" }
        p {
            @if let Some(pct) = pct { span.bar { i style=(format!("width:{pct}%")) {} } (pct) " % · " }
            (p.done) @if let Some(t) = p.total { " of " (t) }
            @if let Some(m) = &p.message { " · " (m) }
            " " span.muted { "(attempt " (p.attempt) ", " (layout::when(Some(&p.updated_at))) ")" }
        }
    }
}

fn timeline(j: &JobRecord) -> Markup {
    html! {
        table.timeline {
            thead { tr { th { "When" } th { "Event" } th.num { "Attempt" } th { "Detail" } } }
            tbody {
                @for e in &j.history {
                    tr {
                        td { (layout::time(Some(e.at))) }
                        td { span class=(format!("event {}", e.kind.as_str())) { (e.kind.as_str().replace('_', " ")) } }
                        td.num { (e.attempt) }
                        td { @if let Some(d) = &e.detail { (layout::cut(d, 200)) } }
                    }
                }
            }
        }
    }
}
