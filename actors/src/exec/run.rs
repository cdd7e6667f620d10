//! One attempt of an exec task: spawn the program in a process group of its own, write the job
//! to its stdin, read its stdout protocol and its stderr while it runs, pass the cancel and soft
//! limit signals on as SIGTERM, and classify how it ended.
//!
//! Everything runs inside the attempt's own future (no spawned helpers), so when the worker
//! aborts the attempt (hard limit, cancel grace, node stop) the pipes, the child handle and the
//! [`ProcessGroup`] guard are dropped together and the whole group gets SIGKILL.

use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tracing::debug;

use super::group::{ProcessGroup, Sig};
use super::lines::{Line, LineReader};
use super::protocol::{self, Message, ProtocolError};
use super::stderr::{self, Tail, Writer};
use super::ExecSpec;
use crate::tasks::{TaskCtx, TaskError, TaskResult};

/// Exit code that asks for a retry (sysexits' EX_TEMPFAIL).
pub const EXIT_TEMPFAIL: i32 = 75;
/// Exit code that dead-letters at once (sysexits' EX_DATAERR).
pub const EXIT_DATAERR: i32 = 65;

/// How long the pipes may stay open after the process exited and its group was killed. Only a
/// process that left the group on purpose (`setsid`) can hold them longer.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// What stdout said, read so far.
#[derive(Debug, Default)]
struct Said {
    result: Option<Value>,
    records: u64,
    stored: u64,
}

/// Why the stdout reader stopped early.
#[derive(Debug)]
enum Broke {
    /// A line broke the protocol: permanent.
    Protocol(ProtocolError),
    /// A record could not be stored: as the store says (transient).
    Store(TaskError),
}

/// Why the process was asked to stop, for the error when it dies of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Cancel,
    SoftLimit,
}

/// Runs one attempt of `spec` for the job in `ctx`.
pub async fn attempt(spec: &ExecSpec, ctx: TaskCtx) -> TaskResult {
    let mut child = command(spec, &ctx).spawn().map_err(|e| {
        // Checked at start, so this is the system refusing now (no processes left, a file
        // replaced under us): worth another try.
        TaskError::Transient(format!(
            "{}: cannot start {:?}: {e}",
            ctx.name, spec.args.command[0]
        ))
    })?;
    let group = ProcessGroup::led_by(child.id());
    debug!(job_id = %ctx.job_id, job_name = %ctx.name, attempt = ctx.attempt, pid = child.id(), "task process started");
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let (Some(stdin), Some(stdout), Some(stderr)) = (stdin, stdout, stderr) else {
        let why = format!("{}: the child's pipes are missing", ctx.name);
        return Err(TaskError::Transient(why));
    };
    let job = json!({"job_id": ctx.job_id, "attempt": ctx.attempt, "name": ctx.name, "params": ctx.params});
    let id = ctx.job_id.to_string();
    let who = Writer {
        job_id: &id,
        job_name: &ctx.name,
        attempt: ctx.attempt,
    };
    let (mut said, mut tail) = (Said::default(), Tail::new(spec.args.stderr_tail_bytes));
    let mut io = Streams {
        out: Box::pin(read_stdout(
            stdout,
            spec.args.max_line_bytes,
            &ctx,
            &mut said,
        )),
        err: Box::pin(stderr::drain(stderr, who, &mut tail)),
        feed: Box::pin(feed_stdin(stdin, job)),
        out_end: None,
        err_done: false,
        fed: false,
    };
    let (status, asked) = io.until_exit(&mut child, &group, &ctx).await;
    // The leader is gone: whatever it left behind in its group goes too, which also closes
    // the pipes those processes held.
    group.signal(Sig::Kill);
    let pipes_held = !io.drain().await;
    let out_end = io.out_end.take();
    drop(io);
    let status = status.map_err(|e| {
        TaskError::Transient(format!("{}: waiting for the process failed: {e}", ctx.name))
    })?;
    debug!(job_id = %ctx.job_id, job_name = %ctx.name, attempt = ctx.attempt, %status, records = said.records, stored = said.stored, "task process ended");
    let end = Ending {
        name: &ctx.name,
        status,
        asked,
        tail: tail.text(),
        pipes_held,
    };
    end.classify(out_end, said)
}

/// A boxed future borrowing the attempt's state.
type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The three pipes of a running attempt, each served by its own future, polled together.
struct Streams<'a> {
    out: Fut<'a, Result<(), Broke>>,
    err: Fut<'a, ()>,
    feed: Fut<'a, ()>,
    out_end: Option<Result<(), Broke>>,
    err_done: bool,
    fed: bool,
}

impl Streams<'_> {
    /// Serves the pipes until the leader exits, passing the cancel and the soft limit on as
    /// SIGTERM; a protocol error kills the group at once.
    async fn until_exit(
        &mut self,
        child: &mut Child,
        group: &ProcessGroup,
        ctx: &TaskCtx,
    ) -> (std::io::Result<ExitStatus>, Option<Asked>) {
        let mut asked = None;
        loop {
            tokio::select! {
                r = &mut self.out, if self.out_end.is_none() => {
                    if r.is_err() {
                        // Nothing it says next can be trusted: stop it now, read no more.
                        group.signal(Sig::Kill);
                    }
                    self.out_end = Some(r);
                }
                () = &mut self.err, if !self.err_done => self.err_done = true,
                () = &mut self.feed, if !self.fed => self.fed = true,
                s = child.wait() => return (s, asked),
                () = ctx.cancel.cancelled(), if asked.is_none() => {
                    asked = Some(Asked::Cancel);
                    group.signal(Sig::Term);
                }
                () = ctx.soft_limit.cancelled(), if asked.is_none() => {
                    asked = Some(Asked::SoftLimit);
                    group.signal(Sig::Term);
                }
            }
        }
    }

    /// Reads what is left in stdout and stderr, for at most [`DRAIN_AFTER_EXIT`]; false when
    /// they stayed open (a process outside the group holds them).
    async fn drain(&mut self) -> bool {
        tokio::time::timeout(DRAIN_AFTER_EXIT, async {
            if self.out_end.is_none() {
                self.out_end = Some((&mut self.out).await);
            }
            if !self.err_done {
                (&mut self.err).await;
            }
        })
        .await
        .is_ok()
    }
}

/// The command line, environment and pipes of an attempt.
fn command(spec: &ExecSpec, ctx: &TaskCtx) -> Command {
    let a = &spec.args;
    let mut cmd = Command::new(&a.command[0]);
    cmd.args(&a.command[1..])
        .current_dir(&a.cwd)
        .env_clear()
        .envs(spec.env.for_attempt(a, ctx))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // A backstop for the leader; the group guard reaches the rest.
        .kill_on_drop(true);
    cmd
}

/// Writes the job object and closes stdin. A task that does not read it is fine.
async fn feed_stdin(mut stdin: ChildStdin, job: Value) {
    let mut line = job.to_string().into_bytes();
    line.push(b'\n');
    let _ = stdin.write_all(&line).await;
    let _ = stdin.shutdown().await;
}

/// Reads protocol lines until end of file: records are stored, progress is reported, the last
/// result is kept in `said`.
async fn read_stdout(
    pipe: impl AsyncRead + Unpin,
    max: usize,
    ctx: &TaskCtx,
    said: &mut Said,
) -> Result<(), Broke> {
    let mut reader = LineReader::new(pipe, max);
    let mut n = 0u64;
    loop {
        n += 1;
        match reader.next().await {
            Ok(Line::Eof) | Err(_) => return Ok(()),
            Ok(Line::Cut) => return Err(Broke::Protocol(protocol::too_long(n, &reader.buf, max))),
            Ok(Line::Whole) => {}
        }
        match protocol::parse(n, &reader.buf).map_err(Broke::Protocol)? {
            None => {}
            Some(Message::Record(r)) => {
                said.records += 1;
                if ctx.records.put(&r.key, &r.value).map_err(Broke::Store)? {
                    said.stored += 1;
                }
            }
            Some(Message::Progress(p)) => {
                ctx.progress.report(p.done, p.total, p.message.as_deref());
            }
            Some(Message::Result(v)) => said.result = Some(v),
        }
    }
}

/// How an attempt ended, to classify.
struct Ending<'a> {
    name: &'a str,
    status: ExitStatus,
    asked: Option<Asked>,
    tail: Option<String>,
    pipes_held: bool,
}

impl Ending<'_> {
    /// The attempt's outcome: a protocol error first (whatever the exit), then the exit status.
    fn classify(self, out: Option<Result<(), Broke>>, said: Said) -> TaskResult {
        match out {
            Some(Err(Broke::Protocol(p))) => {
                return Err(TaskError::Permanent(self.explain(&p.0)));
            }
            Some(Err(Broke::Store(e))) => return Err(e),
            _ => {}
        }
        match (self.status.code(), self.status.signal()) {
            (Some(0), _) if self.pipes_held => Err(TaskError::Transient(self.explain(
                "exited 0, but a process it started outside its process group kept stdout open",
            ))),
            (Some(0), _) => Ok(said.result.unwrap_or(Value::Null)),
            (Some(EXIT_TEMPFAIL), _) => Err(TaskError::Transient(
                self.explain("exited with 75 (EX_TEMPFAIL: retried)"),
            )),
            (Some(EXIT_DATAERR), _) => Err(TaskError::Permanent(
                self.explain("exited with 65 (EX_DATAERR: not retried)"),
            )),
            (Some(code), _) => Err(TaskError::Crash(
                self.explain(&format!("crashed: exited with code {code}")),
            )),
            (None, sig) => {
                let sig = sig.unwrap_or(0);
                let why = match self.asked {
                    Some(Asked::SoftLimit) => " after its soft time limit",
                    Some(Asked::Cancel) => " after it was cancelled",
                    None => "",
                };
                Err(TaskError::Crash(self.explain(&format!(
                    "crashed: killed by signal {sig} ({}){why}",
                    signal_name(sig)
                ))))
            }
        }
    }

    /// `<name>: <what>`, with the stderr tail when there is one.
    fn explain(&self, what: &str) -> String {
        match &self.tail {
            Some(tail) => format!("{}: {what}\n--- stderr (tail) ---\n{tail}", self.name),
            None => format!("{}: {what}", self.name),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => "a signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(raw: i32, asked: Option<Asked>, tail: Option<&str>) -> Ending<'static> {
        Ending {
            name: "t.x",
            status: ExitStatus::from_raw(raw),
            asked,
            tail: tail.map(String::from),
            pipes_held: false,
        }
    }

    fn said(result: Option<Value>) -> Said {
        Said {
            result,
            ..Said::default()
        }
    }

    /// Ensures that each exit status maps to its error class, with the stderr tail appended.
    #[test]
    fn exit_statuses_are_classified() {
        let ok = end(0, None, None).classify(Some(Ok(())), said(Some(json!(1))));
        assert_eq!(ok, Ok(json!(1)));
        assert_eq!(
            end(0, None, None).classify(Some(Ok(())), said(None)),
            Ok(Value::Null)
        );
        let r = end(75 << 8, None, Some("busy")).classify(Some(Ok(())), said(None));
        assert_eq!(
            r,
            Err(TaskError::Transient(
                "t.x: exited with 75 (EX_TEMPFAIL: retried)\n--- stderr (tail) ---\nbusy".into()
            ))
        );
        let r = end(65 << 8, None, None).classify(Some(Ok(())), said(None));
        assert!(
            matches!(r, Err(TaskError::Permanent(ref m)) if m.contains("EX_DATAERR")),
            "{r:?}"
        );
        let r = end(3 << 8, None, None).classify(Some(Ok(())), said(Some(json!(1))));
        assert_eq!(
            r,
            Err(TaskError::Crash("t.x: crashed: exited with code 3".into()))
        );
        let r = end(15, Some(Asked::SoftLimit), None).classify(Some(Ok(())), said(None));
        assert_eq!(
            r,
            Err(TaskError::Crash(
                "t.x: crashed: killed by signal 15 (SIGTERM) after its soft time limit".into()
            ))
        );
    }

    /// Ensures that a protocol error wins over a clean exit, and a store error stays transient.
    #[test]
    fn protocol_and_store_errors_win() {
        let broke = Broke::Protocol(ProtocolError("stdout line 1 is bad".into()));
        let r = end(0, None, None).classify(Some(Err(broke)), said(Some(json!(1))));
        assert_eq!(
            r,
            Err(TaskError::Permanent("t.x: stdout line 1 is bad".into()))
        );
        let store = Broke::Store(TaskError::Transient("disk".into()));
        let r = end(0, None, None).classify(Some(Err(store)), said(None));
        assert_eq!(r, Err(TaskError::Transient("disk".into())));
    }
}
