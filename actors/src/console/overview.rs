//! `GET /`: the node at a glance: jobs succeeded and failed per second over the last minutes
//! (an inline SVG chart from the in-memory ring, `rate.rs`), the totals since start, unfinished
//! jobs, queue depth per pipeline and priority, the running jobs, uptime and version.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use maud::{html, Markup};

use super::layout;
use super::rate::Second;
use super::session::Session;
use super::ConsoleCtx;
use crate::dispatcher::{DispatcherMsg, Stats};
use crate::job::JobRecord;
use crate::protocol::ApiError;

/// Seconds the chart shows at most, and at least (a node up for less shows what it has).
const CHART_SECONDS: usize = 300;
const CHART_MIN_SECONDS: usize = 60;
/// Running jobs listed at most.
const RUNNING_SHOWN: usize = 50;

struct Snapshot {
    stats: Stats,
    running: Vec<JobRecord>,
    running_total: usize,
    accepting: Result<(), String>,
}

/// The page.
pub(super) async fn page(
    State(ctx): State<Arc<ConsoleCtx>>,
    Extension(session): Extension<Session>,
) -> Response {
    let snap = match load(&ctx).await {
        Ok(s) => s,
        Err(e) => return layout::error_page(&e),
    };
    let now = chrono::Utc::now().timestamp();
    let span = ctx
        .rate
        .sampled(now)
        .clamp(CHART_MIN_SECONDS, CHART_SECONDS);
    let seconds = ctx.rate.last(span, now);
    let live = html! {
        (cards(&ctx, &snap, &seconds))
        (chart(&seconds))
        (queues(&snap.stats))
        (running(&ctx, &session, &snap))
    };
    layout::page(&ctx, &session, "/", "Overview", html! {}, live)
}

async fn load(ctx: &ConsoleCtx) -> Result<Snapshot, ApiError> {
    let stats = crate::admin::call(&ctx.admin, DispatcherMsg::Stats).await?;
    let ids = crate::admin::call(&ctx.admin, DispatcherMsg::Running).await?;
    // The dispatcher knows what runs on this node without a scan of the store; the records
    // come from the store, as every page's do.
    let mut running = Vec::new();
    for (_, id) in ids.iter().take(RUNNING_SHOWN) {
        let rec = ctx.admin.jobs.get(*id).await;
        running.extend(rec.map_err(ApiError::storage_unavailable)?);
    }
    running.sort_by_key(|r| r.started_at);
    crate::admin::visible(&ctx.admin).await?;
    Ok(Snapshot {
        stats,
        running,
        running_total: ids.len(),
        accepting: ctx.admin.journal.admit_writes().map_err(|e| e.to_string()),
    })
}

/// Jobs per second over the last `n` seconds of `seconds`.
fn per_second(seconds: &[Second], n: usize, pick: fn(&Second) -> u64) -> f64 {
    let tail = &seconds[seconds.len().saturating_sub(n)..];
    tail.iter().map(pick).sum::<u64>() as f64 / n.max(1) as f64
}

fn card(class: &str, n: impl std::fmt::Display, label: &str) -> Markup {
    html! { div class=(format!("card {class}")) data-metric=(label) { div.n { (n) } div.l { (label) } } }
}

fn cards(ctx: &ConsoleCtx, s: &Snapshot, seconds: &[Second]) -> Markup {
    let t = &s.stats.totals;
    let j = &s.stats.jobs;
    html! {
        div.cards {
            (card("ok", format!("{:.1}", per_second(seconds, 10, |s| s.succeeded)), "succeeded/s (10 s)"))
            (card("bad", format!("{:.1}", per_second(seconds, 10, |s| s.failed)), "failed/s (10 s)"))
            (card("", j.pending, "pending"))
            (card("", j.running, "running"))
            (card("", j.retrying, "retrying"))
            (card("", t.submitted, "submitted"))
            (card("ok", t.succeeded, "succeeded"))
            (card("bad", t.failed, "dead-lettered"))
            (card("", t.retried, "retries"))
            (card("", t.cancelled, "cancelled"))
        }
        p.muted {
            "Totals since the dispatcher started · up " (layout::uptime(ctx.admin.started.elapsed().as_secs()))
            " · Warden " (env!("CARGO_PKG_VERSION")) " · node " (ctx.admin.node_name) " · journal: "
            @match &s.accepting {
                Ok(()) => { "accepting writes" }
                Err(e) => { strong.bad { "refusing writes: " (e) } }
            }
        }
    }
}

/// Succeeded (green) and failed (red) per second as two polylines over a fixed grid.
fn chart(seconds: &[Second]) -> Markup {
    let (w, h) = (600.0_f64, 120.0_f64);
    let top = seconds
        .iter()
        .map(|s| s.succeeded.max(s.failed))
        .max()
        .unwrap_or(0)
        .max(1);
    let step = w / (seconds.len().max(2) - 1) as f64;
    let line = |pick: fn(&Second) -> u64| -> String {
        seconds
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!(
                    "{:.1},{:.1}",
                    i as f64 * step,
                    h - pick(s) as f64 / top as f64 * (h - 4.0)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let span = match seconds.len() {
        n if n < 120 => format!("{n} seconds"),
        n => format!("{} minutes", n / 60),
    };
    html! {
        h2 { "Jobs per second, last " (span) }
        div.chart {
            svg viewBox=(format!("0 0 {w} {h}")) preserveAspectRatio="none" role="img" aria-label="jobs succeeded and failed per second" {
                line x1="0" y1=(h - 0.5) x2=(w) y2=(h - 0.5) stroke="#dde1e8" {}
                line x1="0" y1="4" x2=(w) y2="4" stroke="#eef1f6" stroke-dasharray="4 4" {}
                polyline.succeeded fill="none" stroke="#1f8a4c" stroke-width="1.5" vector-effect="non-scaling-stroke" points=(line(|s| s.succeeded)) {}
                polyline.failed fill="none" stroke="#c23b3b" stroke-width="1.5" vector-effect="non-scaling-stroke" points=(line(|s| s.failed)) {}
            }
            div.legend {
                span.ok { "■ succeeded" } " " span.bad { "■ failed" }
                " · peak " (top) "/s · sampled once a second in memory; the chart starts when the node does"
            }
        }
    }
}

fn queues(stats: &Stats) -> Markup {
    html! {
        h2 { "Queues" }
        table.queues {
            thead { tr { th { "Pipeline" } th.num { "High" } th.num { "Normal" } th.num { "Low" } th.num { "Total" } } }
            tbody {
                @for (name, q) in &stats.queues {
                    tr data-pipeline=(name) {
                        td { a href=(format!("/jobs?pipeline={name}&status=pending")) { (name) } }
                        td.num { (q.high) } td.num { (q.normal) } td.num { (q.low) }
                        td.num { strong { (q.high + q.normal + q.low) } }
                    }
                }
            }
        }
    }
}

fn running(ctx: &ConsoleCtx, session: &Session, s: &Snapshot) -> Markup {
    html! {
        h2 { (if ctx.admin.cluster.is_some() { "Running on this node now (" } else { "Running now (" }) (s.running_total) ")" }
        @if ctx.admin.cluster.is_some() { p.muted { "Every node's: " a href="/jobs?status=running" { "running jobs" } " · " a href="/nodes" { "nodes" } } }
        @if s.running_total > s.running.len() { p.muted { "The " (s.running.len()) " that started first." } }
        @if s.running.is_empty() {
            p.muted { "No job runs." }
        } @else {
            table.running {
                thead { tr { th { "Job" } th { "Name" } th { "Pipeline" } th { "Started" } th.num { "Attempt" } th { "Progress" } th {} } }
                tbody {
                    @for j in &s.running {
                        tr {
                            td { (layout::job_link(&j.id.to_string())) }
                            td { (j.name) } td { (j.pipeline) }
                            td { (layout::time(j.started_at)) }
                            td.num { (j.attempts) }
                            td { @if let Some(p) = ctx.admin.progress.get(j.id) {
                                (p.done) @if let Some(t) = p.total { " / " (t) }
                                @if let Some(m) = &p.message { " · " (layout::cut(m, 40)) }
                            } }
                            td { (super::jobs::row_actions(ctx, session, j, "/")) }
                        }
                    }
                }
            }
        }
    }
}
