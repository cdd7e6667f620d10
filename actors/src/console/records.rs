//! `GET /records`: the pipelines' records by key prefix, a page at a time in key order, and
//! `GET /records/view`: the JSON of one record.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;
use axum::Extension;
use maud::html;
use serde::Deserialize;

use super::layout;
use super::search::encode;
use super::session::Session;
use super::ConsoleCtx;
use crate::protocol::ApiError;

/// Records per page.
const PAGE: usize = 50;

/// The listing's query.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RecordsQuery {
    prefix: String,
    after: String,
}

/// The listing.
pub(super) async fn page(
    State(ctx): State<Arc<ConsoleCtx>>,
    Extension(session): Extension<Session>,
    Query(q): Query<RecordsQuery>,
) -> Response {
    let after = (!q.after.is_empty()).then_some(q.after.as_str());
    let read = ctx.admin.jobs.records(&q.prefix, after, PAGE + 1).await;
    let mut records = match read {
        Ok(r) => r,
        Err(e) => return layout::error_page(&ApiError::storage_unavailable(e)),
    };
    if let Err(e) = crate::admin::visible(&ctx.admin).await {
        return layout::error_page(&e);
    }
    let more = records.len() > PAGE;
    records.truncate(PAGE);
    let tools = html! {
        form.filters method="get" action="/records" {
            label { "Key prefix" input name="prefix" value=(q.prefix) placeholder="sec/filings/" size="40"; }
            button.primary type="submit" { "Browse" }
        }
    };
    let live = html! {
        @if records.is_empty() {
            p.muted { "No record under this prefix." }
        } @else {
            table.records {
                thead { tr { th { "Key" } th { "Updated" } th { "Value" } } }
                tbody {
                    @for r in &records {
                        tr {
                            td { a href=(format!("/records/view?key={}", encode(&r.key))) { code { (r.key) } } }
                            td { (layout::time(Some(r.updated_at))) }
                            td { code { (layout::cut(&r.value.to_string(), 100)) } }
                        }
                    }
                }
            }
            @if more {
                @let last = records.last().map(|r| r.key.as_str()).unwrap_or("");
                div.pager { a.older href=(format!("/records?prefix={}&after={}", encode(&q.prefix), encode(last))) { "More →" } }
            }
        }
    };
    layout::page(&ctx, &session, "/records", "Records", tools, live)
}

/// The query of one record.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ViewQuery {
    key: String,
}

/// One record's JSON.
pub(super) async fn view(
    State(ctx): State<Arc<ConsoleCtx>>,
    Extension(session): Extension<Session>,
    Query(q): Query<ViewQuery>,
) -> Response {
    // The first key under the prefix `key` is `key` itself when it exists.
    let found = match ctx.admin.jobs.records(&q.key, None, 1).await {
        Ok(r) => r.into_iter().find(|r| r.key == q.key),
        Err(e) => return layout::error_page(&ApiError::storage_unavailable(e)),
    };
    if let Err(e) = crate::admin::visible(&ctx.admin).await {
        return layout::error_page(&e);
    }
    let Some(r) = found else {
        return layout::error_page(&ApiError::not_found(format!(
            "no record with key {:?}",
            q.key
        )));
    };
    let parent = r.key.rsplit_once('/').map_or("", |(p, _)| p);
    let live = html! {
        p { "Updated " (layout::time(Some(r.updated_at))) " · " a href=(format!("/records?prefix={}/", encode(parent))) { "siblings" } }
        (layout::json(&r.value))
    };
    layout::page(&ctx, &session, "/records", &r.key, html! {}, live)
}
