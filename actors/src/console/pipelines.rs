//! `GET /pipelines`: each pipeline's workers busy and total, queue depth, delayed jobs, rate
//! limiter windows and their fill, a throttled source's pause, breaker state with its next
//! probe time, and pause/resume buttons.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use maud::{html, Markup};

use super::layout;
use super::session::Session;
use super::ConsoleCtx;
use crate::dispatcher::{DispatcherMsg, PipelineView};
use crate::pipeline::breaker::BreakerView;
use crate::pipeline::limiter::LimiterView;

/// The page.
pub(super) async fn page(
    State(ctx): State<Arc<ConsoleCtx>>,
    Extension(session): Extension<Session>,
) -> Response {
    let views = match crate::admin::call(&ctx.admin, DispatcherMsg::Pipelines).await {
        Ok(v) => v,
        Err(e) => return layout::error_page(&e),
    };
    if let Err(e) = crate::admin::visible(&ctx.admin).await {
        return layout::error_page(&e);
    }
    let live = html! {
        table.pipelines {
            thead { tr {
                th { "Pipeline" } th { "State" } th { "Workers busy" } th.num { "High" } th.num { "Normal" }
                th.num { "Low" } th.num { "Delayed" } th { "Rate limit" } th { "Breaker" } th {}
            } }
            tbody { @for p in &views { (row(&ctx, &session, p)) } }
        }
    };
    layout::page(&ctx, &session, "/pipelines", "Pipelines", html! {}, live)
}

fn row(ctx: &ConsoleCtx, session: &Session, p: &PipelineView) -> Markup {
    let busy_pct = (p.workers.busy * 100)
        .checked_div(p.workers.total)
        .unwrap_or(0);
    let (path, label) = if p.paused {
        (format!("/pipelines/{}/resume", p.name), "Resume")
    } else {
        (format!("/pipelines/{}/pause", p.name), "Pause")
    };
    html! {
        tr data-pipeline=(p.name) {
            td { a href=(format!("/jobs?pipeline={}", p.name)) { strong { (p.name) } } }
            td { @if p.paused { span.badge.paused { "paused" } } @else { span.badge.running { "running" } } }
            td { span.bar { i style=(format!("width:{busy_pct}%")) {} } (p.workers.busy) " / " (p.workers.total) }
            td.num { (p.queue.high) } td.num { (p.queue.normal) } td.num { (p.queue.low) }
            td.num { (p.scheduled) }
            td { (limiter(p.rate_limit.as_ref())) }
            td { (breaker(p.breaker.as_ref())) }
            td { (layout::button(ctx, session, &path, label, "/pipelines", None)) }
        }
    }
}

/// The limiter's windows with their fill, its throttle pause and its waiters.
fn limiter(view: Option<&serde_json::Value>) -> Markup {
    let Some(v) = view else {
        return html! { span.muted { "—" } };
    };
    let Ok(l) = serde_json::from_value::<LimiterView>(v.clone()) else {
        return html! { span.muted { "unknown" } };
    };
    html! {
        @for (w, used) in l.windows.iter().zip(&l.in_window) {
            @let cap = w.split('/').next().and_then(|n| n.parse::<u32>().ok()).unwrap_or(0);
            @let pct = (used * 100).checked_div(cap).unwrap_or(0).min(100);
            div { span class=(if pct >= 90 { "bar hot" } else { "bar" }) { i style=(format!("width:{pct}%")) {} }
                  (used) " / " (w) }
        }
        @if l.paused_until.is_some() { div { span.badge.paused { "throttled" } " until " (layout::when(l.paused_until.as_deref())) } }
        @if l.waiting > 0 { div.muted { (l.waiting) " waiting for a permit" } }
    }
}

/// The breaker's state, failures in a row, and when it lets a probe through.
fn breaker(view: Option<&serde_json::Value>) -> Markup {
    let Some(v) = view else {
        return html! { span.muted { "—" } };
    };
    let Ok(b) = serde_json::from_value::<BreakerView>(v.clone()) else {
        return html! { span.muted { "unknown" } };
    };
    let state = b.state.as_str();
    html! {
        span class=(format!("badge {state}")) { (state.replace('_', "-")) }
        @if b.consecutive_failures > 0 { " " span.muted { (b.consecutive_failures) " failures in a row" } }
        @if b.open_until.is_some() { div { "next probe " (layout::when(b.open_until.as_deref())) } }
    }
}
