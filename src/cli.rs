//! The admin CLI: one subcommand per protocol command (docs/protocol.md), over
//! [`crate::client::Client`]. Human output is aligned tables; `--json` prints the raw response
//! lines exactly as the node sent them.
//!
//! Exit codes: 0 on `ok: true`; 1 on an error answer (`warden: <code>: <message>` on stderr), on
//! a bad argument caught before sending, or when a job followed with `submit --wait` did not
//! succeed; 2 when the node cannot be reached (the message names the address tried).
//!
//! The pieces: `request` turns a subcommand into its request object, `session` sends it and
//! sorts the answer into success or `session::Failure`, `render` draws the human output,
//! `follow` implements `submit --wait` and `export` pages through `records`.

mod export;
mod follow;
mod render;
mod request;
mod session;
mod sinks;

use std::process::ExitCode;

use clap::{Args, Subcommand};

use self::session::{Failure, Session};

/// Where and how to talk to the node; accepted by every client subcommand.
#[derive(Args, Debug, Clone)]
pub struct ClientOpts {
    /// The node's admin address.
    #[arg(
        long,
        global = true,
        env = "WARDEN_ADDR",
        default_value_t = default_addr()
    )]
    pub addr: String,
    /// The admin token, when the node requires one.
    #[arg(
        long,
        global = true,
        env = "WARDEN_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print the raw response lines.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The embedded default config's admin address: what `warden node` listens on without --config.
fn default_addr() -> String {
    crate::config::Config::embedded_default()
        .admin
        .listen
        .to_string()
}

/// The client subcommands, one per protocol command (plus `export`).
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Check that the node answers.
    Ping,
    /// Submit a job: `warden submit sec.filings --param ticker=CHGG --priority high`.
    Submit(SubmitArgs),
    /// Show one job.
    Status {
        /// The job's id.
        id: String,
    },
    /// A job's timeline: one line per journal event.
    History {
        /// The job's id.
        id: String,
    },
    /// List jobs, newest first: `warden list --status failed --name 'sec.*'`.
    List(ListArgs),
    /// Cancel a queued or running job.
    Cancel {
        /// The job's id.
        id: String,
    },
    /// Put a failed or cancelled job back in the queue, attempts reset.
    Retry {
        /// The job's id.
        id: String,
    },
    /// What a job waits for now: its queue position, a rate limit, an open breaker, a paused
    /// pipeline, a retry backoff, or its run_at; with an ETA when one is known.
    Why {
        /// The job's id.
        id: String,
    },
    /// The dead-letter queue: failed jobs, newest first.
    Dlq {
        /// At most this many (node default 100, at most 1000).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// The live supervision tree, with status and restart counts.
    Tree,
    /// The nodes of the cluster (cluster mode): heartbeat age, leader, running jobs.
    Nodes,
    /// Pipelines: workers, queues, rate limits, breakers.
    Pipelines,
    /// Stop dispatching a pipeline's jobs (running ones finish).
    Pause {
        /// The pipeline's name, e.g. `builtin`.
        pipeline: String,
    },
    /// Dispatch a paused pipeline's jobs again.
    Resume {
        /// The pipeline's name, e.g. `builtin`.
        pipeline: String,
    },
    /// Counts by status, queue depths, totals since start, uptime.
    Stats,
    /// Stored records under a key prefix, in key order.
    Records(RecordsArgs),
    /// Write every record under a prefix to stdout as JSON lines (`--json`: the raw pages).
    Export {
        /// The key prefix, e.g. `sec/filings/` (default: every record).
        #[arg(long, default_value = "")]
        prefix: String,
        /// `postgres`: ship the records to the node's PostgreSQL sink instead of stdout (the
        /// same as `warden sinks backfill`).
        #[arg(long, value_parser = ["postgres"])]
        to: Option<String>,
    },
    /// Cron schedules and their next runs.
    Schedules,
    /// The sinks (PostgreSQL): state, backlog, rows written, the last error in words.
    Sinks {
        #[command(subcommand)]
        action: Option<SinksAction>,
    },
    /// Ask the node to stop: it drains running jobs, flushes the journal and exits.
    Shutdown {
        /// Stop without letting running jobs finish.
        #[arg(long)]
        no_drain: bool,
    },
}

/// `warden sinks` subcommands.
#[derive(Subcommand, Debug)]
pub enum SinksAction {
    /// Ship the records already stored (for a sink turned on after they were): enqueue every
    /// record under the prefix; `warden sinks` then shows the backlog draining.
    Backfill {
        /// The key prefix, e.g. `sec/` (default: every record).
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

/// `warden submit`'s arguments. Values the node checks (priority, delay, run_at) are passed
/// through as given, so its error names the field and the choices.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The job's name, `<pipeline>.<task>` (e.g. `builtin.noop`).
    pub job: String,
    /// One parameter, KEY=VALUE (repeatable); VALUE is taken as JSON when it parses
    /// (42, true, [1, 2]), else as a string.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub param: Vec<String>,
    /// All parameters as a JSON object; `--param` values override its keys.
    #[arg(long, value_name = "JSON")]
    pub params: Option<String>,
    /// `high`, `normal` or `low` (default: from the node's routing).
    #[arg(long)]
    pub priority: Option<String>,
    /// While an unfinished job has this key, submitting it again returns that job.
    #[arg(long)]
    pub unique_key: Option<String>,
    /// Retries allowed (default: the pipeline's).
    #[arg(long)]
    pub max_retries: Option<u32>,
    /// Run after this long, e.g. `30s` or `5m`.
    #[arg(long)]
    pub delay: Option<String>,
    /// Run at this time (RFC 3339, e.g. `2026-11-28T10:00:00Z`).
    #[arg(long)]
    pub run_at: Option<String>,
    /// Follow the job to its end with a live status line on stderr; exit 0 only if it succeeded.
    #[arg(long)]
    pub wait: bool,
}

/// `warden list`'s filters.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only jobs in this status (pending, running, retrying, succeeded, failed, cancelled).
    #[arg(long)]
    pub status: Option<String>,
    /// Only jobs with this name, or matching this glob (`sec.*`).
    #[arg(long)]
    pub name: Option<String>,
    /// At most this many (node default 100, at most 1000).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Only jobs older than this job id (the last id of the previous page).
    #[arg(long)]
    pub before: Option<String>,
}

/// `warden records`' arguments.
#[derive(Args, Debug)]
pub struct RecordsArgs {
    /// The key prefix, e.g. `sec/filings/1364954/`.
    pub prefix: String,
    /// At most this many (node default 100, at most 1000).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Only keys after this one (the last key of the previous page).
    #[arg(long)]
    pub after: Option<String>,
}

/// Runs one client subcommand and returns the process exit code.
pub async fn run(cmd: ClientCommand, opts: ClientOpts) -> ExitCode {
    match execute(cmd, &opts).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

async fn execute(cmd: ClientCommand, opts: &ClientOpts) -> Result<(), Failure> {
    // Built before connecting: a bad argument is reported the same whether or not a node is up.
    let req = request::build(&cmd)?;
    let mut session = Session::connect(opts).await?;
    match cmd {
        ClientCommand::Submit(args) => follow::submit(&mut session, &req, args.wait).await,
        ClientCommand::Export { to: None, .. } => export::run(&mut session, req).await,
        other => session.show(&req, render::for_command(&other)).await,
    }
}

/// `warden check --data-dir DIR`: verifies a stopped node's data dir offline (see
/// `warden_actors::store::journal::check`), prints the summary; exit 0 when it is sound, 1 on a
/// problem or when it cannot be opened (e.g. a live node holds it).
pub fn check(dir: &std::path::Path) -> ExitCode {
    match warden_actors::store::journal::check::check(dir) {
        Ok(report) => {
            println!("{report}");
            ExitCode::from(if report.ok() { 0 } else { 1 })
        }
        Err(e) => {
            eprintln!("warden check: {e}");
            ExitCode::from(1)
        }
    }
}
