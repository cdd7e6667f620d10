//! One CLI run's connection: adds the token to each request, waits a bounded time for the
//! answer, and sorts it into success or a [`Failure`] that knows its exit code and message.

use std::io::{ErrorKind, Write};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use super::ClientOpts;
use crate::client::{Client, ClientError};

/// How long to wait for the TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for one answer; every command answers at once, so longer means stuck.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a command did not succeed.
#[derive(Debug)]
pub(super) enum Failure {
    /// The node answered `ok: false`.
    Answer {
        /// The error code.
        code: String,
        /// The node's explanation.
        message: String,
    },
    /// An argument was wrong; nothing was sent.
    Usage(String),
    /// The node could not be reached, or the connection broke.
    Link(ClientError),
    /// The node took longer than [`ANSWER_TIMEOUT`] to answer.
    Silent {
        /// The node.
        addr: String,
    },
    /// Writing to stdout failed.
    Output(std::io::Error),
    /// A followed job ended without succeeding (the job was already printed).
    JobEnded {
        /// The job.
        id: String,
        /// `failed` or `cancelled`.
        status: String,
        /// Its last error.
        error: Option<String>,
    },
}

impl Failure {
    /// Prints the message on stderr and returns the exit code.
    pub(super) fn report(self) -> ExitCode {
        let (code, message) = match self {
            Failure::Answer { code, message } => (1, answer_message(&code, &message)),
            Failure::Usage(message) => (1, message),
            Failure::Link(e) => (2, e.to_string()),
            Failure::Silent { addr } => (
                2,
                format!(
                    "the node at {addr} did not answer within {}s",
                    ANSWER_TIMEOUT.as_secs()
                ),
            ),
            // The reader went away (`warden list | head`): nothing left to say to anyone.
            Failure::Output(e) if e.kind() == ErrorKind::BrokenPipe => return ExitCode::SUCCESS,
            Failure::Output(e) => (1, format!("cannot write to stdout: {e}")),
            Failure::JobEnded { id, status, error } => (1, job_ended_message(&id, &status, error)),
        };
        eprintln!("warden: {message}");
        ExitCode::from(code)
    }
}

fn answer_message(code: &str, message: &str) -> String {
    if code == "unauthorized" {
        return format!("{code}: {message} (pass --token or set WARDEN_ADMIN_TOKEN)");
    }
    format!("{code}: {message}")
}

fn job_ended_message(id: &str, status: &str, error: Option<String>) -> String {
    match error {
        Some(e) => format!("job {id} {status}: {e}"),
        None => format!("job {id} {status}"),
    }
}

/// An `ok: true` answer: the line as received and its parsed form.
pub(super) struct Answer {
    /// The line exactly as the node sent it (for `--json`).
    pub raw: String,
    /// The parsed answer.
    pub value: Value,
}

/// How a successful answer is drawn for people.
pub(super) type Render = fn(&Value) -> String;

/// A connection plus the options that shape every request and every output.
pub(super) struct Session {
    client: Client,
    addr: String,
    token: Option<String>,
    /// Print raw answer lines instead of human output.
    pub json: bool,
}

impl Session {
    /// Connects to `opts.addr`.
    pub(super) async fn connect(opts: &ClientOpts) -> Result<Session, Failure> {
        let client = Client::connect(&opts.addr, CONNECT_TIMEOUT)
            .await
            .map_err(Failure::Link)?;
        Ok(Session {
            client,
            addr: opts.addr.clone(),
            token: opts.token.clone(),
            json: opts.json,
        })
    }

    /// Sends `req` and returns the answer if it is `ok: true`. An error answer is printed raw
    /// first under `--json`, since scripts read stdout.
    pub(super) async fn call(&mut self, req: &Value) -> Result<Answer, Failure> {
        let raw = self.exchange(req).await?;
        let value: Value = serde_json::from_str(&raw).map_err(|_| {
            Failure::Link(ClientError::BadAnswer {
                addr: self.addr.clone(),
                line: raw.clone(),
            })
        })?;
        if value["ok"] == Value::Bool(true) {
            return Ok(Answer { raw, value });
        }
        if self.json {
            emit(&raw)?;
        }
        let text = |field: &str| {
            value["error"][field]
                .as_str()
                .unwrap_or("(none)")
                .to_string()
        };
        Err(Failure::Answer {
            code: text("code"),
            message: text("message"),
        })
    }

    /// Sends `req` and prints the answer: raw under `--json`, else through `render`.
    pub(super) async fn show(&mut self, req: &Value, render: Render) -> Result<(), Failure> {
        let answer = self.call(req).await?;
        self.print(&answer, render)
    }

    /// Prints an answer: raw under `--json`, else through `render`.
    pub(super) fn print(&self, answer: &Answer, render: Render) -> Result<(), Failure> {
        if self.json {
            emit(&answer.raw)
        } else {
            emit(&render(&answer.value))
        }
    }

    /// One request line out, one answer line back.
    async fn exchange(&mut self, req: &Value) -> Result<String, Failure> {
        let mut req = req.clone();
        if let (Some(token), Value::Object(fields)) = (&self.token, &mut req) {
            fields.insert("token".into(), Value::String(token.clone()));
        }
        self.client.send(&req).await.map_err(Failure::Link)?;
        let line = tokio::time::timeout(ANSWER_TIMEOUT, self.client.recv_raw())
            .await
            .map_err(|_| Failure::Silent {
                addr: self.addr.clone(),
            })?
            .map_err(Failure::Link)?;
        line.ok_or_else(|| {
            Failure::Link(ClientError::Closed {
                addr: self.addr.clone(),
            })
        })
    }
}

/// Writes `text` and a newline to stdout (nothing for empty text), reporting write errors
/// instead of panicking like `println!` does on a closed pipe.
pub(super) fn emit(text: &str) -> Result<(), Failure> {
    if text.is_empty() {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(Failure::Output)
}
