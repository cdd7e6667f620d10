//! `GET /nodes`: the nodes of the cluster, from the data of the admin `nodes` command: each
//! node's id, admin address, heartbeat age, whether it leads, and the jobs it runs. A node
//! silent for longer than `silent_after` is marked: the leader rescues its jobs. A single node
//! says that it runs alone.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use maud::{html, Markup};

use super::layout;
use super::session::Session;
use super::ConsoleCtx;
use crate::cluster::NodeView;

/// The page.
pub(super) async fn page(
    State(ctx): State<Arc<ConsoleCtx>>,
    Extension(session): Extension<Session>,
) -> Response {
    let live = match &ctx.admin.cluster {
        None => html! {
            p.alone { "This node runs alone: it is not part of a cluster (" code { "[store] kind = \"postgres\"" } ")." }
        },
        Some(c) => match crate::admin::node_views(&ctx.admin).await {
            Ok(nodes) => table(
                &nodes,
                &c.args.node_id,
                c.args.timing.silent_after.as_millis(),
            ),
            Err(e) => return layout::error_page(&e),
        },
    };
    layout::page(&ctx, &session, "/nodes", "Nodes", html! {}, live)
}

fn table(nodes: &[NodeView], me: &str, silent_ms: u128) -> Markup {
    html! {
        p.muted { (nodes.len()) " node" (if nodes.len() == 1 { "" } else { "s" })
            " have beaten. A node silent for more than " (silent_ms / 1000) " s is presumed dead: the leader rescues its jobs." }
        table.nodes {
            thead { tr {
                th { "Node" } th { "Admin address" } th { "Heartbeat" } th { "Leader" } th.num { "Running" } th { "Started" }
            } }
            tbody {
                @for n in nodes {
                    @let silent = u128::try_from(n.heartbeat_age_ms).unwrap_or(0) > silent_ms;
                    tr data-node=(n.id) class=[silent.then_some("silent")] {
                        td { strong { (n.id) } @if n.id == me { " " span.muted { "(this node)" } } }
                        td { code { (n.admin) } }
                        td data-age-ms=(n.heartbeat_age_ms) {
                            (age(n.heartbeat_age_ms)) " ago"
                            @if silent { " " span.badge.silent { "silent" } }
                        }
                        td { @if n.leader { span.badge.leader { "leader" } } }
                        td.num { (n.running) }
                        td { (layout::when(Some(n.started_at.as_str()))) }
                    }
                }
            }
        }
    }
}

/// A heartbeat's age in words: tenths of a second under a minute, then whole minutes.
fn age(ms: i64) -> String {
    match ms.max(0) {
        ms if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        ms => format!("{} min", ms / 60_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures that heartbeat ages read as seconds, then minutes, and never negative.
    #[test]
    fn ages_read_in_words() {
        assert_eq!(age(1_234), "1.2 s");
        assert_eq!(age(-5), "0.0 s");
        assert_eq!(age(125_000), "2 min");
    }
}
