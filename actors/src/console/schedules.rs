//! `GET /schedules`: each `[[schedules]]` entry with its cron, job, next and last fire, the last
//! job's outcome, and "run now" (the submit a tick would make).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use maud::html;

use super::layout;
use super::session::Session;
use super::ConsoleCtx;
use crate::job::JobId;
use crate::protocol::ApiError;
use crate::scheduler::ScheduleView;

/// The page.
pub(super) async fn page(
    State(ctx): State<Arc<ConsoleCtx>>,
    Extension(session): Extension<Session>,
) -> Response {
    let rows = match load(&ctx).await {
        Ok(r) => r,
        Err(e) => return layout::error_page(&e),
    };
    let live = html! {
        @if rows.is_empty() {
            p.muted { "No schedule is configured (" code { "[[schedules]]" } ")." }
        } @else {
            table.schedules {
                thead { tr { th { "Schedule" } th { "Cron (UTC)" } th { "Job" } th { "Next fire" } th { "Last fire" } th { "Last outcome" } th {} } }
                tbody {
                    @for (s, outcome) in &rows {
                        tr data-schedule=(s.name) {
                            td { strong { (s.name) } }
                            td { code { (s.cron) } }
                            td { (s.job) }
                            td { (layout::when(s.next_run_at.as_deref())) }
                            td { (layout::when(s.last_run_at.as_deref())) }
                            td {
                                @match (&s.last_job_id, outcome) {
                                    (Some(id), Some(st)) => { (layout::status(*st)) " " (layout::job_link(id)) }
                                    (Some(id), None) => { span.muted { "compacted" } " " (layout::job_link(id)) }
                                    _ => { span.muted { "never fired" } }
                                }
                            }
                            td { (layout::button(&ctx, &session, &format!("/schedules/{}/run", s.name), "Run now", "/schedules", None)) }
                        }
                    }
                }
            }
        }
    };
    layout::page(&ctx, &session, "/schedules", "Schedules", html! {}, live)
}

type Row = (ScheduleView, Option<crate::job::JobStatus>);

async fn load(ctx: &ConsoleCtx) -> Result<Vec<Row>, ApiError> {
    let views = match &ctx.admin.scheduler {
        Some(link) => crate::scheduler::list(link).await?,
        None => Vec::new(),
    };
    let mut rows = Vec::with_capacity(views.len());
    for v in views {
        let last = v
            .last_job_id
            .as_deref()
            .and_then(|id| id.parse::<JobId>().ok());
        let status = match last {
            Some(id) => ctx
                .admin
                .jobs
                .get(id)
                .await
                .map_err(ApiError::storage_unavailable)?
                .map(|r| r.status),
            None => None,
        };
        rows.push((v, status));
    }
    crate::admin::visible(&ctx.admin).await?;
    Ok(rows)
}
