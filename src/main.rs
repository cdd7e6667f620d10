//! The `warden` binary: `warden node` runs a node, `warden bench` measures one, `warden check`
//! verifies a data dir offline, and every other subcommand is the admin CLI (see `cli.rs`).
//! Only this file installs process-global things: the tracing subscriber, the Prometheus
//! recorder and the signal handlers; and it writes where the node listens (`listening.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use warden::cli::{ClientCommand, ClientOpts};
use warden::config::Config;
use warden::listening::Listening;
use warden::{bench, telemetry};
use warden_actors::node::Node;

/// jemalloc instead of glibc's malloc: after a backlog of a million jobs drains, glibc keeps the
/// freed memory in its per-thread arenas (measured: several hundred MiB of RSS that never came
/// back), while jemalloc's decay returns unused pages to the OS within seconds.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Warden: a supervised job runtime for data ingestion.
#[derive(Parser)]
#[command(name = "warden", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (on the embedded default config unless --config is given).
    Node {
        /// A TOML config file (see config/default.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Measure throughput, latency, drain speed and memory of a `warden node` child process
    /// (default config, temp dir) against the raw storage ceiling.
    Bench(bench::BenchArgs),
    /// Measure the PostgreSQL sink: rows/s shipping a backlog of records from a `warden node`
    /// child process, beside multi-row INSERT and COPY of the same rows (the ceiling).
    BenchSink(bench::sink::SinkBenchArgs),
    /// Measure cluster mode: durable no-op jobs/s with 1, 2 and 3 `warden node` child processes
    /// on one PostgreSQL, beside the sled single node and the store's own statements (the
    /// ceiling).
    BenchCluster(bench::cluster::ClusterBenchArgs),
    /// Verify a stopped node's data dir offline: watermark, every record, the indexes. Exits 1
    /// on any problem.
    Check {
        /// The data dir (the node's `[node] data_dir`).
        #[arg(long)]
        data_dir: PathBuf,
    },
    #[command(flatten)]
    Client(ClientCommand),
}

fn main() -> ExitCode {
    // Usage errors exit 64 (EX_USAGE), not clap's 2: for the CLI, 2 means "node unreachable".
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warden: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Node { config } => rt.block_on(run_node(config)),
        Command::Bench(args) => rt.block_on(bench::run(args)),
        Command::BenchSink(args) => rt.block_on(bench::sink::run(args)),
        Command::BenchCluster(args) => rt.block_on(bench::cluster::run(args)),
        Command::Check { data_dir } => warden::cli::check(&data_dir),
        Command::Client(cmd) => rt.block_on(warden::cli::run(cmd, cli.client)),
    }
}

async fn run_node(config: Option<PathBuf>) -> ExitCode {
    let started = std::time::Instant::now();
    let cfg = match &config {
        Some(path) => Config::from_file(path),
        None => Ok(Config::embedded_default()),
    };
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warden: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_tracing(cfg.log.format, &cfg.log.level);
    let metrics = match telemetry::install_metrics(cfg.metrics.listen) {
        Ok(bound) => bound,
        Err(e) => {
            eprintln!("warden: {e}");
            return ExitCode::from(2);
        }
    };
    let origin = config
        .as_ref()
        .map_or(warden::config::DEFAULT_ORIGIN.to_string(), |p| {
            p.display().to_string()
        });
    let args = match cfg.into_args(&origin, &|var| std::env::var(var).ok()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("warden: {e}");
            return ExitCode::from(2);
        }
    };
    let data_dir = args.data_dir.clone();
    let node = match Node::start(args).await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "node did not start");
            eprintln!("warden: {e}");
            return ExitCode::from(1);
        }
    };
    announce(&node, metrics, &data_dir);
    let gauges = telemetry::spawn_node_gauges(started, node.journal().clone());
    let ended = node.run(shutdown_signal()).await;
    gauges.abort();
    let _ = gauges.await;
    if let Err(e) = Listening::remove(&data_dir) {
        tracing::warn!(error = %e, "could not remove {}", Listening::path(&data_dir).display());
    }
    match ended {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warden: {e}");
            ExitCode::from(1)
        }
    }
}

/// Logs where the node listens and writes it to `<data_dir>/listening.json`, for whoever
/// started it on port 0. A file that cannot be written is a warning: the node serves anyway.
fn announce(node: &Node, metrics: SocketAddr, data_dir: &Path) {
    let listening = Listening {
        pid: std::process::id(),
        admin: node.admin_addr(),
        metrics,
        console: node.console_addr(),
    };
    let console = listening
        .console
        .map_or("off".to_string(), |a| a.to_string());
    tracing::info!(admin = %listening.admin, metrics = %metrics, console, "listening");
    if let Err(e) = listening.write(data_dir) {
        tracing::warn!(error = %e, "could not write {}", Listening::path(data_dir).display());
    }
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits at once (the journal replays
/// whatever was in flight on the next start).
async fn shutdown_signal() {
    wait_signal().await;
    tracing::info!("signal received: stopping gracefully (send another to exit at once)");
    tokio::spawn(async {
        wait_signal().await;
        eprintln!("warden: second signal, exiting now");
        std::process::exit(130);
    });
}

async fn wait_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
