//! `GET /tree`: the live supervision tree, each actor with its state, restart count and the
//! reason of its last failure or replacement.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use maud::{html, Markup};
use ractor::rpc::CallResult;

use super::layout;
use super::session::Session;
use super::ConsoleCtx;
use crate::protocol::ApiError;
use crate::supervisor::{SupervisorMsg, TreeNode};

/// How long the page waits for the root to describe the tree.
const TREE_WAIT: Duration = Duration::from_secs(10);

/// The page.
pub(super) async fn page(
    State(ctx): State<Arc<ConsoleCtx>>,
    Extension(session): Extension<Session>,
) -> Response {
    let tree = match load(&ctx).await {
        Ok(t) => t,
        Err(e) => return layout::error_page(&e),
    };
    let live = html! { ul.tree.root { (node(&tree)) } };
    layout::page(&ctx, &session, "/tree", "Supervision tree", html! {}, live)
}

async fn load(ctx: &ConsoleCtx) -> Result<TreeNode, ApiError> {
    let root = ctx
        .admin
        .root
        .get()
        .ok_or_else(|| ApiError::internal("the root supervisor is not running"))?;
    match root.call(SupervisorMsg::Tree, Some(TREE_WAIT)).await {
        Ok(CallResult::Success(t)) => Ok(t),
        _ => Err(ApiError::internal(
            "the root supervisor did not describe the tree; retry in a moment",
        )),
    }
}

fn node(n: &TreeNode) -> Markup {
    let state = serde_json::to_value(n.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    html! {
        li data-path=(n.path) {
            strong { (n.name) } " " span.kind { (n.kind) } " "
            span class=(format!("badge {state}")) { (state) } " "
            @if n.restarts > 0 { span.badge.restarts { (n.restarts) " restart" (if n.restarts == 1 { "" } else { "s" }) } }
            @if let Some(f) = &n.last_failure { div.fail { "last failure: " (layout::cut(f, 300)) } }
            @if let Some(r) = &n.last_replacement { div.muted { "last replaced: " (layout::cut(r, 300)) } }
            @if !n.children.is_empty() {
                ul.tree { @for c in &n.children { (node(c)) } }
            }
        }
    }
}
