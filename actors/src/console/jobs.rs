//! `GET /jobs`: jobs newest first, filtered by status, name, pipeline, parent, workflow and a
//! params substring, a page at a time (see `search.rs` for what each filter costs).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;
use axum::Extension;
use maud::{html, Markup};

use super::layout;
use super::search::{self, FilterQuery, Found};
use super::session::Session;
use super::ConsoleCtx;
use crate::job::{JobRecord, JobStatus};
use crate::protocol::ApiError;

/// The page.
pub(super) async fn page(
    State(ctx): State<Arc<ConsoleCtx>>,
    Extension(session): Extension<Session>,
    Query(query): Query<FilterQuery>,
) -> Response {
    let found = match find(&ctx, &query).await {
        Ok(f) => f,
        Err(e) => return layout::error_page(&e),
    };
    let back = format!("/jobs?{}", query.without_paging());
    let live = html! {
        (table(&ctx, &session, &found.jobs, &back, false))
        (pager("/jobs", &query, &found))
    };
    layout::page(
        &ctx,
        &session,
        "/jobs",
        "Jobs",
        filters(&ctx, "/jobs", &query, true),
        live,
    )
}

/// Runs the search for a page, then waits until what it shows is durable (as the admin
/// commands do), so a state seen here never goes back after a crash.
pub(super) async fn find(ctx: &ConsoleCtx, query: &FilterQuery) -> Result<Found, ApiError> {
    let filter = query.check(ctx)?;
    let found = search::search(ctx, &filter, search::PAGE, search::EXAMINE_BUDGET).await?;
    crate::admin::visible(&ctx.admin).await?;
    Ok(found)
}

/// The filter form (GET, so a filtered view is a link one can share).
pub(super) fn filters(
    ctx: &ConsoleCtx,
    action: &str,
    q: &FilterQuery,
    with_status: bool,
) -> Markup {
    html! {
        form.filters method="get" action=(action) {
            @if with_status {
                label { "Status"
                    select name="status" {
                        option value="" { "any" }
                        @for s in JobStatus::ALL {
                            option value=(s.as_str()) selected[q.status == s.as_str()] { (s.as_str()) }
                        }
                    }
                }
            }
            label { "Name (glob)" input name="name" value=(q.name) placeholder="sec.*"; }
            label { "Pipeline"
                select name="pipeline" {
                    option value="" { "any" }
                    @for (p, _) in &ctx.pipelines {
                        option value=(p) selected[&q.pipeline == p] { (p) }
                    }
                }
            }
            label { "Parent" input name="parent" value=(q.parent) placeholder="batch job id" size="14"; }
            label { "Workflow" input name="workflow" value=(q.workflow) placeholder="workflow id" size="14"; }
            label { "Params contain" input name="q" value=(q.q) placeholder="CHGG"; }
            button.primary type="submit" { "Filter" }
            a href=(action) { "Clear" }
        }
    }
}

/// The jobs as a table, with their buttons.
pub(super) fn table(
    ctx: &ConsoleCtx,
    session: &Session,
    jobs: &[JobRecord],
    back: &str,
    dead: bool,
) -> Markup {
    html! {
        @if jobs.is_empty() {
            p.muted { "No job matches." }
        } @else {
            table.jobs {
                thead { tr {
                    th { "Job" } th { "Name" } th { "Status" } th.num { "Attempts" }
                    th { "Created" } th { "Finished" } th { (if dead { "Error" } else { "Params" }) } th {}
                } }
                tbody {
                    @for j in jobs {
                        tr data-job=(j.id) {
                            td { (layout::job_link(&j.id.to_string())) }
                            td { (j.name) }
                            td { (layout::status(j.status)) }
                            td.num { (j.attempts) "/" (j.max_retries + 1) }
                            td { (layout::time(Some(j.created_at))) }
                            td { (layout::time(j.completed_at)) }
                            td { @if dead { (layout::cut(j.error.as_deref().unwrap_or(""), 90)) } @else { code { (layout::cut(&j.params, 60)) } } }
                            td { (row_actions(ctx, session, j, back)) }
                        }
                    }
                }
            }
        }
    }
}

/// Retry for failed and cancelled jobs, cancel for unfinished ones.
pub(super) fn row_actions(
    ctx: &ConsoleCtx,
    session: &Session,
    j: &JobRecord,
    back: &str,
) -> Markup {
    let id = j.id;
    html! {
        @match j.status {
            JobStatus::Failed | JobStatus::Cancelled => {
                (layout::button(ctx, session, &format!("/jobs/{id}/retry"), "Retry", back, None))
            }
            JobStatus::Pending | JobStatus::Running | JobStatus::Retrying => {
                (layout::button(ctx, session, &format!("/jobs/{id}/cancel"), "Cancel", back, Some("Cancel this job?")))
            }
            JobStatus::Succeeded => {}
        }
    }
}

/// Newest and older links; says so when the search stopped at its budget.
pub(super) fn pager(path: &str, q: &FilterQuery, found: &Found) -> Markup {
    let base = q.without_paging();
    let sep = if base.is_empty() { "" } else { "&" };
    html! {
        div.pager {
            @if !q.before.is_empty() { a href=(format!("{path}?{base}")) { "⇤ Newest" } }
            @if let Some(next) = found.next {
                a.older href=(format!("{path}?{base}{sep}before={next}")) {
                    (if found.budget_spent { "Search older jobs →" } else { "Older →" })
                }
            }
            @if found.budget_spent {
                span.muted { "Searched " (search::EXAMINE_BUDGET) " jobs for this page (params are not indexed); older ones are searched on the next." }
            }
        }
    }
}
