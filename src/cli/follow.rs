//! `warden submit`, and with `--wait` following the job to its end: `status` is polled every
//! [`POLL`] while a live line on stderr shows status, attempts, elapsed time and the task's
//! progress.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::render;
use super::session::{Answer, Failure, Session};

/// Time between two `status` polls.
const POLL: Duration = Duration::from_millis(200);

/// Submits `req`, prints the answer and, when `wait`, follows the job until it ends: `Ok` if it
/// succeeded, [`Failure::JobEnded`] if it failed or was cancelled.
pub(super) async fn submit(session: &mut Session, req: &Value, wait: bool) -> Result<(), Failure> {
    let answer = session.call(req).await?;
    session.print(&answer, render::submitted)?;
    if !wait {
        return Ok(());
    }
    let id = answer.value["job_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let last = follow(session, &id).await?;
    session.print(&last, render::job)?;
    let job = &last.value["job"];
    match job["status"].as_str().unwrap_or_default() {
        "succeeded" => Ok(()),
        status => Err(Failure::JobEnded {
            id,
            status: status.to_string(),
            error: job["error"].as_str().map(str::to_string),
        }),
    }
}

/// Polls `status` until the job is finished and returns that last answer.
async fn follow(session: &mut Session, id: &str) -> Result<Answer, Failure> {
    let started = Instant::now();
    let req = json!({"cmd": "status", "job_id": id});
    let mut line = LiveLine::new();
    loop {
        let answer = match session.call(&req).await {
            Ok(a) => a,
            Err(e) => {
                line.finish();
                return Err(e);
            }
        };
        let job = &answer.value["job"];
        line.show(job, started.elapsed());
        if matches!(
            job["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            line.finish();
            return Ok(answer);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The status line on stderr: redrawn in place with `\r` on a terminal; elsewhere (a log file,
/// a CI job) one line per change of status or attempts, so the log stays readable.
struct LiveLine {
    tty: bool,
    width: usize,
    last: Option<(String, u64)>,
}

impl LiveLine {
    fn new() -> Self {
        LiveLine {
            tty: std::io::stderr().is_terminal(),
            width: 0,
            last: None,
        }
    }

    fn show(&mut self, job: &Value, elapsed: Duration) {
        let status = job["status"].as_str().unwrap_or("?").to_string();
        let attempts = job["attempts"].as_u64().unwrap_or(0);
        let mut text = format!(
            "{status} · attempt {attempts}/{} · {:.1}s",
            job["max_retries"].as_u64().unwrap_or(0) + 1,
            elapsed.as_secs_f64()
        );
        // The task's own report of how far it is, when it gives one (exec and Rust tasks).
        if let Some(p) = render::progress(&job["progress"]) {
            text.push_str(" · ");
            text.push_str(&p);
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            // Padding to the widest line so far wipes what a longer earlier line left behind.
            self.width = self.width.max(text.chars().count());
            let _ = write!(err, "\r{text:<width$}", width = self.width);
            let _ = err.flush();
        } else if self.last.as_ref() != Some(&(status.clone(), attempts)) {
            let _ = writeln!(err, "{text}");
        }
        self.last = Some((status, attempts));
    }

    /// Ends the redrawn line so that what follows starts on a fresh one.
    fn finish(&mut self) {
        if self.tty && self.width > 0 {
            eprintln!();
            self.width = 0;
        }
    }
}
