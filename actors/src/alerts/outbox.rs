//! The pure core of the alerts actor: what an alert says ([`Alert`] and its JSON body), how a
//! try's result is judged ([`verdict`]), the backoff between tries ([`retry_delay`]) and the
//! bounded outbox ([`Outbox`]). No clock, no I/O: the actor shell in `alerts.rs` feeds it.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use serde_json::{json, Value};

use crate::backoff::exponential;
use crate::job::{rfc3339_ms, JobId};

/// The first retry waits about this long; each further one twice as long.
pub(super) const RETRY_BASE: Duration = Duration::from_millis(200);
/// No retry waits longer than this.
pub(super) const RETRY_MAX: Duration = Duration::from_secs(10);
/// Retries move by up to ±20 %, so that several nodes alerting one receiver spread out.
pub(super) const RETRY_JITTER: f64 = 0.2;

/// One alert, captured when it happened (`at`, Unix ms) and rendered when it is sent.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Alert {
    /// A job gave up: permanent error or retries spent.
    DeadLetter {
        job_id: JobId,
        job_name: String,
        error: Option<String>,
        attempts: u32,
        at: i64,
    },
    /// A pipeline's circuit breaker opened.
    BreakerOpen {
        pipeline: String,
        reason: String,
        retry_after: Option<Duration>,
        at: i64,
    },
}

impl Alert {
    /// The `kind` field and metric label.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Alert::DeadLetter { .. } => "dead_letter",
            Alert::BreakerOpen { .. } => "breaker_open",
        }
    }

    /// What it is about, for logs.
    pub(super) fn subject(&self) -> String {
        match self {
            Alert::DeadLetter { job_id, .. } => format!("job {job_id}"),
            Alert::BreakerOpen { pipeline, .. } => format!("pipeline {pipeline}"),
        }
    }

    /// The JSON body POSTed to the webhook.
    pub(super) fn body(&self, node: &str) -> Value {
        match self {
            Alert::DeadLetter {
                job_id,
                job_name,
                error,
                attempts,
                at,
            } => json!({
                "kind": self.kind(),
                "node": node,
                "job_id": job_id.to_string(),
                "job_name": job_name,
                "error": error,
                "attempts": attempts,
                "at": rfc3339_ms(*at),
            }),
            Alert::BreakerOpen {
                pipeline,
                reason,
                retry_after,
                at,
            } => json!({
                "kind": self.kind(),
                "node": node,
                "pipeline": pipeline,
                "reason": reason,
                "retry_after_ms": retry_after.map(|d| d.as_millis() as u64),
                "at": rfc3339_ms(*at),
            }),
        }
    }
}

/// What finally happened to an alert (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Sent,
    DroppedQueueFull,
    DroppedFailed,
    DroppedDown,
}

impl Outcome {
    /// The label value.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::DroppedQueueFull => "dropped_queue_full",
            Outcome::DroppedFailed => "dropped_failed",
            Outcome::DroppedDown => "dropped_down",
        }
    }
}

/// How one try ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Delivery {
    /// The webhook answered with this HTTP status.
    Status(u16),
    /// No answer: refused, reset, DNS, timeout. Worth another try.
    Unreachable(String),
    /// The request cannot be made at all (a malformed URL): another try cannot help.
    Invalid(String),
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Delivery::Status(s) => write!(f, "HTTP {s}"),
            Delivery::Unreachable(e) | Delivery::Invalid(e) => f.write_str(e),
        }
    }
}

/// What a try's result means for the alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Delivered,
    Retry,
    GiveUp,
}

/// Judges one try: only a 2xx is delivered; a 4xx other than 429 is final.
pub(super) fn verdict(d: &Delivery) -> Verdict {
    match d {
        Delivery::Status(s) if (200..300).contains(s) => Verdict::Delivered,
        // Too many requests: the receiver will take it later.
        Delivery::Status(429) => Verdict::Retry,
        // The receiver understood and refused this body (bad auth, gone, malformed): the same
        // body will be refused again.
        Delivery::Status(s) if (400..500).contains(s) => Verdict::GiveUp,
        Delivery::Status(_) | Delivery::Unreachable(_) => Verdict::Retry,
        Delivery::Invalid(_) => Verdict::GiveUp,
    }
}

/// The wait before try `tries + 1`, given that `tries` (≥ 1) have failed.
pub(super) fn retry_delay(tries: u32, jitter_unit: f64) -> Duration {
    exponential(
        RETRY_BASE,
        RETRY_MAX,
        tries.saturating_sub(1),
        RETRY_JITTER,
        jitter_unit,
    )
}

/// The alert being sent and how many tries it has had.
#[derive(Debug)]
struct Current {
    alert: Alert,
    tries: u32,
}

/// What the shell does after a try.
#[derive(Debug, PartialEq)]
pub(super) enum Step {
    /// Delivered on try `tries`.
    Sent { alert: Alert, tries: u32 },
    /// Try the current alert again after this wait.
    RetryIn(Duration),
    /// Given up, for this reason.
    Dropped { alert: Alert, reason: String },
}

/// A bounded FIFO of alerts plus the one being sent. No clock, no I/O.
#[derive(Debug)]
pub(super) struct Outbox {
    waiting: VecDeque<Alert>,
    cap: usize,
    max_attempts: u32,
    current: Option<Current>,
}

impl Outbox {
    pub(super) fn new(cap: usize, max_attempts: u32) -> Self {
        Self {
            waiting: VecDeque::new(),
            cap,
            max_attempts: max_attempts.max(1),
            current: None,
        }
    }

    /// Queues `alert`; returns the oldest waiting alert when the queue was full. The one being
    /// sent is not waiting: it stays, so a try in flight is never wasted.
    pub(super) fn push(&mut self, alert: Alert) -> Option<Alert> {
        self.waiting.push_back(alert);
        (self.waiting.len() > self.cap)
            .then(|| self.waiting.pop_front())
            .flatten()
    }

    /// Starts a try: of the current alert again, or else of the oldest waiting one. Returns it
    /// with its try number, or `None` when there is nothing to send.
    pub(super) fn begin_try(&mut self) -> Option<(&Alert, u32)> {
        if self.current.is_none() {
            let alert = self.waiting.pop_front()?;
            self.current = Some(Current { alert, tries: 0 });
        }
        let c = self.current.as_mut()?;
        c.tries += 1;
        Some((&c.alert, c.tries))
    }

    /// Takes the result of the current try; `None` if no try was started.
    pub(super) fn report(&mut self, d: &Delivery, jitter_unit: f64) -> Option<Step> {
        let tries = self.current.as_ref()?.tries;
        let reason = match verdict(d) {
            Verdict::Delivered => None,
            Verdict::Retry if tries < self.max_attempts => {
                return Some(Step::RetryIn(retry_delay(tries, jitter_unit)))
            }
            Verdict::Retry => Some(format!("gave up after {tries} tries, last: {d}")),
            Verdict::GiveUp => Some(format!("not retried: {d}")),
        };
        let alert = self.current.take()?.alert;
        Some(match reason {
            None => Step::Sent { alert, tries },
            Some(reason) => Step::Dropped { alert, reason },
        })
    }

    /// Alerts not finished yet (waiting or being sent).
    pub(super) fn len(&self) -> usize {
        self.waiting.len() + usize::from(self.current.is_some())
    }

    /// Empties the outbox (the actor is stopping).
    pub(super) fn drain(&mut self) -> Vec<Alert> {
        let mut all: Vec<Alert> = self.current.take().map(|c| c.alert).into_iter().collect();
        all.extend(self.waiting.drain(..));
        all
    }
}

/// `url` as it may appear in logs: no query, fragment, user or password (webhook tokens live
/// there).
pub(super) fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.to_string()
        }
        Err(_) => url
            .split(['?', '#'])
            .next()
            .unwrap_or_default()
            .rsplit('@')
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}
