//! The process-global installs, called only from `main.rs`: the tracing subscriber (pretty or
//! JSON, level from the config unless `RUST_LOG` is set), the Prometheus recorder with its
//! HTTP endpoint and its histogram buckets, and the node-wide gauges (`warden_uptime_seconds`,
//! `warden_journal_bytes`) refreshed every second.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinHandle;
use tracing::Subscriber;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};
use warden_actors::metrics as m;
use warden_actors::store::journal::Journal;

use crate::config::LogFormat;

/// Installs the tracing subscriber: [`log_layer`] on stderr. `RUST_LOG` wins over the config's
/// level.
pub fn init_tracing(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    if format == LogFormat::Json {
        // The default hook would print plain text lines amid the JSON ones.
        std::panic::set_hook(Box::new(log_panic));
    }
    let _ = tracing_subscriber::registry()
        .with(log_layer(format, filter, std::io::stderr))
        .try_init();
}

/// The layer `warden node` logs through, writing to `writer`: `filter` decides which spans and
/// events exist at all (a global filter, so a disabled span is never created), ractor's own
/// spans are dropped, and the rest is formatted pretty or as JSON. Public so that tests can
/// install exactly this stack with a sink and a probe layer of their own.
pub fn log_layer<S, W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // ractor wraps every actor's start and message loop in an `Actor{id=…}` span: an internal id
    // that names nothing a user knows, prefixed to every line; the `actor` field says where a
    // line comes from.
    let no_ractor_spans =
        filter_fn(|meta| !(meta.is_span() && meta.target().starts_with("ractor")));
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = match format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
        LogFormat::Pretty => fmt.boxed(),
    };
    filter.and_then(no_ractor_spans).and_then(fmt).boxed()
}

/// A panic hook that reports the panic as one `error` event (message, location, thread, and a
/// backtrace when `RUST_BACKTRACE` asks for one), so JSON logs stay one object per line.
fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into());
    let location = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_default();
    let thread = std::thread::current();
    let thread = thread.name().unwrap_or("unnamed");
    let backtrace = std::backtrace::Backtrace::capture();
    if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
        tracing::error!(panic = %message, %location, thread, %backtrace, "panicked");
    } else {
        tracing::error!(panic = %message, %location, thread, "panicked");
    }
}

/// Job durations run from a millisecond to an hour: 1 … 3600 s plus sub-second ones.
/// Also the default for any histogram without buckets of its own.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
];

/// Rate-limit permit waits: none at all up to the limiter's 30 s cap (`MAX_PERMIT_WAIT`).
const LIMITER_WAIT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
];

/// Upstream requests: a fast API answer to the 30 s default `request_timeout` and beyond.
const UPSTREAM_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// One group commit (flush + fsync): tenths of a millisecond on NVMe to a second on a sick disk.
const FSYNC_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Waiters answered by one group commit: one submit at a time to a 10,000-job batch.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

/// How often the recorder drains its histograms' buckets (the exporter's own listener's pace).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder, serves its text on `listen` and describes every metric;
/// returns the bound address (the port the kernel chose, for port 0).
///
/// The exporter's own HTTP listener binds inside its builder and never says which port it got,
/// so the node binds the port itself and serves the recorder's text with axum (already the
/// console's server): every path answers it, as the exporter's listener did.
pub fn install_metrics(listen: SocketAddr) -> Result<SocketAddr, String> {
    let bind_failed = |e: std::io::Error| format!("[metrics] listen: cannot bind {listen}: {e}");
    let listener = std::net::TcpListener::bind(listen).map_err(bind_failed)?;
    let bound = listener.local_addr().map_err(bind_failed)?;
    listener.set_nonblocking(true).map_err(bind_failed)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(bind_failed)?;
    let mut builder = PrometheusBuilder::new()
        .set_buckets(DURATION_BUCKETS)
        .map_err(|e| e.to_string())?;
    for (name, buckets) in [
        (m::JOB_DURATION, DURATION_BUCKETS),
        // Queue waits span the same range: an idle pipeline's instant start to hours of backlog.
        (m::QUEUE_WAIT, DURATION_BUCKETS),
        (m::RATE_LIMITER_WAIT, LIMITER_WAIT_BUCKETS),
        (m::UPSTREAM_DURATION, UPSTREAM_BUCKETS),
        // A batch into PostgreSQL: a few milliseconds to the statement timeout.
        (m::SINK_FLUSH, UPSTREAM_BUCKETS),
        (m::JOURNAL_FSYNC, FSYNC_BUCKETS),
        (m::JOURNAL_BATCH, BATCH_BUCKETS),
    ] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
            .map_err(|e| e.to_string())?;
    }
    let handle = builder
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    tokio::spawn(serve_metrics(listener, handle));
    m::describe_all();
    metrics::gauge!(m::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::gauge!(m::UPTIME).set(0.0);
    Ok(bound)
}

/// Serves `handle`'s text on `listener` for as long as the process runs, and runs the
/// recorder's upkeep (which a recorder installed without the exporter's listener needs).
async fn serve_metrics(listener: tokio::net::TcpListener, handle: PrometheusHandle) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let render = move || {
        let handle = handle.clone();
        // Rendering walks every series: off the runtime's workers, as the exporter did.
        async move {
            tokio::task::spawn_blocking(move || handle.render())
                .await
                .unwrap_or_default()
        }
    };
    let app = axum::Router::new().fallback(render);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the metrics endpoint stopped");
    }
}

/// Refreshes `warden_uptime_seconds` (since `started`) and `warden_journal_bytes` every second
/// until the returned task is aborted. Sizing the journal reads the file system, so it runs on
/// the blocking pool.
pub fn spawn_node_gauges(started: Instant, journal: Journal) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            metrics::gauge!(m::UPTIME).set(started.elapsed().as_secs_f64());
            let j = journal.clone();
            if let Ok(bytes) = tokio::task::spawn_blocking(move || j.size_on_disk()).await {
                metrics::gauge!(m::JOURNAL_BYTES).set(bytes as f64);
            }
        }
    })
}
