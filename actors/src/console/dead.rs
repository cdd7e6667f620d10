//! `GET /dead`: the dead-letter queue (failed jobs), with the jobs page's filters, a retry
//! button per job, and "retry all that match": a confirmation page with the count
//! (`GET /dead/retry-all`), then the retries (`POST /dead/retry-all`), each the admin `retry`
//! command, at most [`RETRY_ALL_MAX`] per confirmation.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use futures::StreamExt;
use maud::html;
use serde::Deserialize;
use tracing::info;

use super::layout;
use super::search::{self, FilterQuery};
use super::session::{self, Flash, Session};
use super::ConsoleCtx;
use crate::job::{JobId, JobStatus};
use crate::protocol::{ApiError, Command, ErrorCode, JobIdReq};

/// Dead letters one confirmation retries at most.
pub const RETRY_ALL_MAX: usize = 10_000;
/// Candidates one count or retry-all examines at most (a params filter reads records).
const RETRY_ALL_EXAMINE: usize = 100_000;
/// Retries in flight at once, so their journal commits are shared.
const IN_FLIGHT: usize = 16;

/// The filters with the status fixed to failed.
fn dead(mut q: FilterQuery) -> FilterQuery {
    q.status = JobStatus::Failed.as_str().into();
    q
}

/// The page.
pub(super) async fn page(
    State(ctx): State<Arc<ConsoleCtx>>,
    Extension(session): Extension<Session>,
    Query(query): Query<FilterQuery>,
) -> Response {
    let found = match super::jobs::find(&ctx, &dead(query.clone())).await {
        Ok(f) => f,
        Err(e) => return layout::error_page(&e),
    };
    let filters = query.without_paging();
    let back = format!("/dead?{filters}");
    let tools = html! {
        (super::jobs::filters(&ctx, "/dead", &query, false))
        @if !ctx.args.read_only && !found.jobs.is_empty() {
            p { a.retry-all href=(format!("/dead/retry-all?{filters}")) { "Retry all that match…" } }
        }
    };
    let live = html! {
        (super::jobs::table(&ctx, &session, &found.jobs, &back, true))
        (super::jobs::pager("/dead", &query, &found))
    };
    layout::page(&ctx, &session, "/dead", "Dead letters", tools, live)
}

/// The ids of the dead letters matching `query`, newest first, at most `max`; true when the
/// search saw every candidate.
async fn matching(
    ctx: &ConsoleCtx,
    query: &FilterQuery,
    max: usize,
) -> Result<(Vec<JobId>, bool), ApiError> {
    let mut q = dead(query.clone());
    q.before.clear();
    let filter = q.check(ctx)?;
    let found = search::search(ctx, &filter, max, RETRY_ALL_EXAMINE).await?;
    Ok((
        found.jobs.iter().map(|j| j.id).collect(),
        found.next.is_none(),
    ))
}

/// `GET /dead/retry-all`: how many would be retried, and the button that does it.
pub(super) async fn confirm(
    State(ctx): State<Arc<ConsoleCtx>>,
    Extension(session): Extension<Session>,
    Query(query): Query<FilterQuery>,
) -> Response {
    let (ids, complete) = match matching(&ctx, &query, RETRY_ALL_MAX).await {
        Ok(m) => m,
        Err(e) => return layout::error_page(&e),
    };
    let filters = query.without_paging();
    let count = ids.len();
    let live = html! {
        @if count == 0 {
            p { "No dead letter matches these filters. " a href=(format!("/dead?{filters}")) { "Back" } }
        } @else {
            p.confirm {
                "Retry " strong.count { (count) } " dead letter" (if count == 1 { "" } else { "s" })
                @if !complete { " (the newest " (count) "; more match: run it again for the rest)" }
                " matching " code { (if filters.is_empty() { "everything".to_string() } else { filters.clone() }) } "?"
            }
            @if ctx.args.read_only {
                p.muted { "This console is read-only." }
            } @else {
                form method="post" action="/dead/retry-all" {
                    input type="hidden" name="csrf" value=(session.csrf);
                    input type="hidden" name="filters" value=(filters);
                    input type="hidden" name="expect" value=(count);
                    button.danger type="submit" { "Retry " (count) }
                    " " a href=(format!("/dead?{filters}")) { "Cancel" }
                }
            }
        }
    };
    layout::page(
        &ctx,
        &session,
        "/dead",
        "Retry dead letters",
        html! {},
        live,
    )
}

/// The confirmation form's fields.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RetryAllForm {
    csrf: String,
    /// The filters as a query string.
    filters: String,
    /// How many the person confirmed: never more are retried.
    expect: usize,
}

/// `POST /dead/retry-all`: retries the matching dead letters (no more than confirmed).
pub(super) async fn retry_all(
    State(ctx): State<Arc<ConsoleCtx>>,
    Extension(session): Extension<Session>,
    Form(form): Form<RetryAllForm>,
) -> Response {
    if let Some(refused) = session::refuse_action(&ctx, &session, &form.csrf) {
        return refused;
    }
    let back = format!("/dead?{}", form.filters);
    let flash = run(&ctx, &form).await.unwrap_or_else(|e| Flash {
        error: true,
        text: format!("{}: {}", e.code.as_str(), e.message),
    });
    info!(actor = "root/console", action = "retry all", filters = %form.filters, outcome = %flash.text, "console action");
    ctx.sessions.flash(&session.id, flash);
    Redirect::to(&back).into_response()
}

async fn run(ctx: &ConsoleCtx, form: &RetryAllForm) -> Result<Flash, ApiError> {
    let query: FilterQuery = serde_urlencoded::from_str(&form.filters)
        .map_err(|e| ApiError::bad_request(format!("filters: {e}")))?;
    let (ids, _) = matching(ctx, &query, form.expect.min(RETRY_ALL_MAX)).await?;
    let outcomes: Vec<Result<serde_json::Value, ApiError>> = futures::stream::iter(ids)
        .map(|job_id| crate::admin::perform(Command::Retry(JobIdReq { job_id }), &ctx.admin))
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let retried = outcomes.iter().filter(|o| o.is_ok()).count();
    // A job retried meanwhile by someone else is no failure of this action.
    let moved = outcomes
        .iter()
        .filter(|o| matches!(o, Err(e) if e.code == ErrorCode::Conflict))
        .count();
    let failed: Vec<&ApiError> = outcomes
        .iter()
        .filter_map(|o| o.as_ref().err())
        .filter(|e| e.code != ErrorCode::Conflict)
        .collect();
    let mut text = format!(
        "Retried {retried} dead letter{}.",
        if retried == 1 { "" } else { "s" }
    );
    if moved > 0 {
        text.push_str(&format!(" {moved} had left the dead-letter queue already."));
    }
    if let Some(e) = failed.first() {
        text.push_str(&format!(
            " {} failed, the first with {}: {}",
            failed.len(),
            e.code.as_str(),
            e.message
        ));
    }
    Ok(Flash {
        error: !failed.is_empty(),
        text,
    })
}
