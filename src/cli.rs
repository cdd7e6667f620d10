//! The admin CLI: one subcommand per protocol command, over [`crate::client::Client`].
//! Exit codes: 0 on `ok: true`, 1 on an error answer (message on stderr), 2 when the node cannot
//! be reached.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::client::Client;

/// Where and how to talk to the node; accepted by every client subcommand.
#[derive(Args, Debug, Clone)]
pub struct ClientOpts {
    /// The node's admin address.
    #[arg(long, global = true, env = "WARDEN_ADDR", default_value = "127.0.0.1:7070")]
    pub addr: String,
    /// The admin token, when the node requires one.
    #[arg(long, global = true, env = "WARDEN_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the raw response lines.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The client subcommands.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Check that the node answers.
    Ping,
    /// Counts by status, queue depths, totals.
    Stats,
    /// The live supervision tree.
    Tree,
    /// Ask the node to stop.
    Shutdown,
}

/// Runs one client subcommand and returns the process exit code.
pub async fn run(cmd: ClientCommand, opts: ClientOpts) -> ExitCode {
    let req = match cmd {
        ClientCommand::Ping => json!({"cmd": "ping"}),
        ClientCommand::Stats => json!({"cmd": "stats"}),
        ClientCommand::Tree => json!({"cmd": "tree"}),
        ClientCommand::Shutdown => json!({"cmd": "shutdown"}),
    };
    let mut client = match Client::connect(&opts.addr, Duration::from_secs(5)).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warden: {e}");
            return ExitCode::from(2);
        }
    };
    let mut req = req;
    if let (Some(t), Value::Object(m)) = (&opts.token, &mut req) {
        m.insert("token".into(), Value::String(t.clone()));
    }
    match client.request(&req).await {
        Ok(answer) => {
            println!("{answer}");
            if answer["ok"] == Value::Bool(true) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("warden: {e}");
            ExitCode::from(2)
        }
    }
}
