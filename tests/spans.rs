//! Spans stay shallow and few while a long backlog drains, under the subscriber `warden node`
//! installs. Its own test target because it installs a process-global subscriber.
//!
//! The bug this guards against: with ractor's `message_span_propogation`, a message was handled
//! inside its sender's span, so job N's `JobDone` made the dispatcher start job N+1 inside job N's
//! span, a chain as long as the backlog. Closing it overflowed the stack (about 150,000 jobs) and
//! it held every span's memory until then.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};
use warden::client::Client;
use warden::config::{Config, LogFormat};
use warden_actors::node::Node;

const JOBS: usize = 50_000;
const BATCH: usize = 1_000;
/// Deepest parent chain allowed: a job span is a root, so anything deeper is a chain.
const MAX_DEPTH: usize = 8;
/// Live spans allowed at once: a few per worker and connection, nowhere near one per job.
const MAX_LIVE: usize = 300;

/// What the probe has seen: spans alive now, the most alive at once, the deepest parent chain.
#[derive(Default)]
struct Seen {
    live: AtomicUsize,
    max_live: AtomicUsize,
    max_depth: AtomicUsize,
}

/// A span's distance from its root (1 for a root), kept in the span's extensions so a new span's
/// depth is its parent's plus one, without walking the chain.
struct Depth(usize);

/// A layer that counts spans as the registry creates and closes them.
struct Probe(Arc<Seen>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Probe {
    fn on_new_span(&self, _: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let parent = span
            .parent()
            .and_then(|p| p.extensions().get::<Depth>().map(|d| d.0));
        let depth = parent.unwrap_or(0) + 1;
        span.extensions_mut().insert(Depth(depth));
        self.0.max_depth.fetch_max(depth, Ordering::Relaxed);
        let live = self.0.live.fetch_add(1, Ordering::Relaxed) + 1;
        self.0.max_live.fetch_max(live, Ordering::Relaxed);
    }

    fn on_close(&self, _: Id, _: Context<'_, S>) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The embedded default config on a temp dir with free ports: what a user runs.
fn default_node_args(dir: &std::path::Path) -> warden_actors::args::NodeArgs {
    let mut cfg = Config::embedded_default();
    cfg.node.data_dir = dir.to_path_buf();
    cfg.admin.listen = "127.0.0.1:0".parse().expect("literal address");
    cfg.console.listen = "127.0.0.1:0".parse().expect("literal address");
    cfg.into_args("spans test", &|_| None)
        .expect("default config")
}

async fn request(c: &mut Client, req: Value) -> Value {
    let a = c.request(&req).await.expect("admin request");
    assert_eq!(a["ok"], true, "{req} answered {a}");
    a
}

/// Fails as soon as the chain grows past the bound, before closing it could overflow the stack.
fn assert_bounded(seen: &Seen) {
    let depth = seen.max_depth.load(Ordering::Relaxed);
    let live = seen.max_live.load(Ordering::Relaxed);
    assert!(
        depth <= MAX_DEPTH,
        "a span chain {depth} deep (at most {MAX_DEPTH})"
    );
    assert!(
        live <= MAX_LIVE,
        "{live} spans alive at once (at most {MAX_LIVE})"
    );
}

/// Ensures that draining a backlog of 50,000 `builtin.noop` jobs under `warden node`'s own
/// subscriber (level info) keeps spans shallow (no job's span is another job's child) and few
/// (they close as their jobs end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_backlog_keeps_spans_shallow_and_few() {
    let seen = Arc::new(Seen::default());
    tracing_subscriber::registry()
        .with(warden::telemetry::log_layer(
            LogFormat::Pretty,
            EnvFilter::new("info"),
            std::io::sink,
        ))
        .with(Probe(seen.clone()))
        .try_init()
        .expect("the only subscriber in this test binary");

    let tmp = tempfile::tempdir().expect("temp dir");
    let node = Node::start(default_node_args(tmp.path()))
        .await
        .expect("node starts");
    let mut c = Client::connect_addr(node.admin_addr())
        .await
        .expect("connect");
    request(&mut c, json!({"cmd": "pause", "pipeline": "builtin"})).await;
    let batch = vec![json!({"job": "builtin.noop"}); BATCH];
    for _ in 0..JOBS / BATCH {
        request(&mut c, json!({"cmd": "submit_batch", "jobs": batch})).await;
    }
    request(&mut c, json!({"cmd": "resume", "pipeline": "builtin"})).await;

    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert_bounded(&seen);
        let s = request(&mut c, json!({"cmd": "stats"})).await;
        let done = s["totals"]["succeeded"].as_u64().unwrap_or(0);
        if done >= JOBS as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {JOBS} succeeded in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_bounded(&seen);
    drop(c);
    node.stop(false).await.expect("node stops");
    eprintln!(
        "max_depth={} max_live={} live_after={}",
        seen.max_depth.load(Ordering::Relaxed),
        seen.max_live.load(Ordering::Relaxed),
        seen.live.load(Ordering::Relaxed)
    );
}
