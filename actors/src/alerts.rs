//! The alert webhook: one actor under the root that POSTs a JSON body to `[alerts] webhook_url`
//! for each dead-lettered job and each circuit breaker that opens. Supervised by the root
//! through [`AlertsSpec`]; fed by [`Alerter`] handles that the dispatcher and the pipelines hold.
//!
//! A dead webhook must never slow jobs down, so every step that could wait is kept off the
//! callers' path and out of the actor's handlers:
//!
//! - [`Alerter::dead_lettered`] and [`Alerter::breaker_opened`] only `cast` (no await, no
//!   lock held beyond reading the link); while the actor is down the alert is dropped and
//!   counted (`dropped_down`);
//! - the actor keeps a bounded FIFO ([`AlertsArgs::queue`]); a new alert beyond it pushes the
//!   OLDEST one out (`dropped_queue_full`): the latest alerts say most about the present;
//! - it sends one alert at a time, each try in a task it owns that reports back with a message,
//!   bounded by [`AlertsArgs::timeout`];
//! - a 2xx is delivered (`sent`); any other 4xx than 429 is the receiver refusing this body, so
//!   it is not retried; anything else (5xx, 429, 3xx, no answer) is retried after an
//!   exponential, jittered backoff (200 ms doubling, capped at 10 s) up to
//!   [`AlertsArgs::max_attempts`] tries, then dropped (`dropped_failed`).
//!
//! Each dropped alert logs one warning with the webhook URL stripped of its query, fragment and
//! credentials (where secrets live). A failed POST never fails the actor.
//!
//! The outbox logic (bound, tries, verdicts, backoff) and the bodies are a pure core in
//! `alerts/outbox.rs`; this file is the thin shell that feeds it messages and owns the task and
//! the timer, plus the handle and the child spec.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, MessagingErr, SpawnErr};
use serde_json::{json, Value};
use tracing::{debug, warn};

use crate::args::AlertsArgs;
use crate::backoff::random_unit;
use crate::job::{now_ms, JobRecord};
use crate::link::{Incarnation, Link};
use crate::sources::http::chain;
use crate::supervisor::{spawn_child, ChildSpec};

use self::outbox::{shown_url, Alert, Delivery, Outbox, Outcome, Step};

mod outbox;
#[cfg(test)]
mod tests;

/// Counter: alerts by `kind` (`dead_letter`, `breaker_open`) and `outcome` (`sent`,
/// `dropped_queue_full`, `dropped_failed`, `dropped_down`).
pub const ALERTS_TOTAL: &str = crate::metrics::ALERTS;

// ===== Delivery over HTTP =====

/// Makes one try with a rendered body. The real one POSTs with reqwest; tests script answers.
type Transport = Arc<dyn Fn(Value) -> BoxFuture<'static, Delivery> + Send + Sync>;

/// POSTs to `url` with one client kept for the spec's life (its connection pool survives
/// restarts of the actor).
fn http_transport(url: &str) -> Transport {
    // A redirected POST would come back as a GET and "succeed" while the alert is lost: a 3xx
    // is an answer to retry and then report, not to follow.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build();
    let broken = |why: String| -> Transport {
        Arc::new(move |_| {
            let why = why.clone();
            Box::pin(async move { Delivery::Invalid(why) })
        })
    };
    match (reqwest::Url::parse(url), client) {
        (Ok(url), Ok(client)) => Arc::new(move |body| {
            let request = client.post(url.clone()).json(&body);
            Box::pin(async move {
                match request.send().await {
                    Ok(response) => Delivery::Status(response.status().as_u16()),
                    Err(e) => Delivery::Unreachable(chain(e)),
                }
            })
        }),
        (Err(e), _) => broken(format!("invalid webhook URL: {e}")),
        // Only when rustls cannot initialise; alerts then fail and are counted, never fatal.
        (_, Err(e)) => broken(format!("cannot build the HTTP client: {}", chain(e))),
    }
}

// ===== Shared by the spec, the handles and the actor =====

/// Alerts finished per outcome, and those not finished yet (shown by `tree`).
#[derive(Debug, Default)]
struct Counts {
    sent: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_failed: AtomicU64,
    dropped_down: AtomicU64,
    queued: AtomicU64,
}

/// What every incarnation and every [`Alerter`] share.
struct Ctx {
    node: String,
    /// The webhook URL as logs show it.
    url: String,
    timeout: Duration,
    transport: Transport,
    counts: Counts,
}

impl Ctx {
    /// Counts an alert's outcome, locally (for `tree`) and in the metric.
    fn count(&self, alert: &Alert, outcome: Outcome) {
        let c = &self.counts;
        let n = match outcome {
            Outcome::Sent => &c.sent,
            Outcome::DroppedQueueFull => &c.dropped_queue_full,
            Outcome::DroppedFailed => &c.dropped_failed,
            Outcome::DroppedDown => &c.dropped_down,
        };
        n.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(ALERTS_TOTAL, "kind" => alert.kind(), "outcome" => outcome.as_str())
            .increment(1);
    }

    /// Counts and logs an alert that will never be delivered: the one log line per alert.
    fn dropped(&self, alert: &Alert, outcome: Outcome, reason: &str) {
        self.count(alert, outcome);
        warn!(
            kind = alert.kind(),
            subject = %alert.subject(),
            url = %self.url,
            outcome = outcome.as_str(),
            reason,
            "alert dropped"
        );
    }

    fn detail(&self) -> Value {
        let c = &self.counts;
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        json!({
            "webhook": self.url,
            "queued": get(&c.queued),
            "sent": get(&c.sent),
            "dropped_queue_full": get(&c.dropped_queue_full),
            "dropped_failed": get(&c.dropped_failed),
            "dropped_down": get(&c.dropped_down),
        })
    }
}

// ===== The handle =====

/// Cheap to clone; what the dispatcher and pipelines hold. A node without `[alerts]` holds
/// [`Alerter::none()`]. Calls never block and never fail: they only cast to the alerts actor
/// (through a link, so they reach whichever incarnation runs now).
#[derive(Clone, Default)]
pub struct Alerter(Option<(Link<AlertsMsg>, Arc<Ctx>)>);

impl Alerter {
    /// An alerter that alerts nobody.
    pub fn none() -> Alerter {
        Alerter(None)
    }

    /// Alerts that `job` was dead-lettered: its id, name, last error and attempts.
    pub fn dead_lettered(&self, job: &JobRecord) {
        self.send(|| Alert::DeadLetter {
            job_id: job.id,
            job_name: job.name.clone(),
            error: job.error.clone(),
            attempts: job.attempts,
            at: now_ms(),
        });
    }

    /// Alerts that `pipeline`'s circuit breaker opened, why, and when it will try again.
    pub fn breaker_opened(&self, pipeline: &str, reason: &str, retry_after: Option<Duration>) {
        self.send(|| Alert::BreakerOpen {
            pipeline: pipeline.to_string(),
            reason: reason.to_string(),
            retry_after,
            at: now_ms(),
        });
    }

    fn send(&self, alert: impl FnOnce() -> Alert) {
        let Some((link, ctx)) = &self.0 else {
            return;
        };
        let alert = alert();
        let rejected = match link.get() {
            None => Some(alert),
            Some(actor) => match actor.cast(AlertsMsg::Alert(alert)) {
                Ok(()) => None,
                Err(MessagingErr::SendErr(AlertsMsg::Alert(alert))) => Some(alert),
                // Only `SendErr` can happen to a typed ref, and it hands the message back.
                Err(_) => None,
            },
        };
        if let Some(alert) = rejected {
            ctx.dropped(&alert, Outcome::DroppedDown, "the alerts actor is down");
        }
    }
}

impl fmt::Debug for Alerter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some((_, ctx)) => write!(f, "Alerter({})", ctx.url),
            None => f.write_str("Alerter(none)"),
        }
    }
}

// ===== The actor =====

/// The alerts actor (stateless shell; see [`AlertsState`]).
struct Alerts;

/// What an incarnation starts with.
struct AlertsStart {
    path: String,
    ctx: Arc<Ctx>,
    queue: usize,
    max_attempts: u32,
}

/// Messages the alerts actor accepts.
enum AlertsMsg {
    /// Queue an alert (from an [`Alerter`]).
    Alert(Alert),
    /// The try in flight ended (from the actor's own send task).
    Tried(Delivery),
    /// The backoff ran out: try the current alert again.
    Retry,
}

/// An incarnation's mutable state.
struct AlertsState {
    path: String,
    ctx: Arc<Ctx>,
    outbox: Outbox,
    /// The try in flight.
    sending: Option<tokio::task::JoinHandle<()>>,
    /// The backoff before the next try of the current alert.
    backoff: Option<JoinHandle<Result<(), MessagingErr<AlertsMsg>>>>,
}

impl AlertsState {
    fn enqueue(&mut self, alert: Alert) {
        if let Some(oldest) = self.outbox.push(alert) {
            self.ctx.dropped(
                &oldest,
                Outcome::DroppedQueueFull,
                "the alert queue is full",
            );
        }
    }

    fn tried(&mut self, me: &ActorRef<AlertsMsg>, d: Delivery) {
        self.sending = None;
        match self.outbox.report(&d, random_unit()) {
            Some(Step::Sent { alert, tries }) => {
                self.ctx.count(&alert, Outcome::Sent);
                debug!(
                    actor = %self.path,
                    kind = alert.kind(),
                    subject = %alert.subject(),
                    tries,
                    "alert sent"
                );
            }
            Some(Step::RetryIn(delay)) => {
                debug!(
                    actor = %self.path,
                    url = %self.ctx.url,
                    result = %d,
                    retry_in_ms = delay.as_millis() as u64,
                    "alert try failed"
                );
                self.backoff = Some(me.send_after(delay, || AlertsMsg::Retry));
            }
            Some(Step::Dropped { alert, reason }) => {
                self.ctx.dropped(&alert, Outcome::DroppedFailed, &reason);
            }
            None => {}
        }
    }

    /// Starts the next try unless one is in flight or waiting out its backoff.
    fn pump(&mut self, me: &ActorRef<AlertsMsg>) {
        if self.sending.is_none() && self.backoff.is_none() {
            if let Some((alert, _)) = self.outbox.begin_try() {
                let body = alert.body(&self.ctx.node);
                let ctx = self.ctx.clone();
                let me = me.clone();
                // The POST runs here, never in a handler: a slow webhook must not hold up the
                // mailbox (new alerts, stop).
                self.sending = Some(tokio::spawn(async move {
                    let d = match tokio::time::timeout(ctx.timeout, (ctx.transport)(body)).await {
                        Ok(d) => d,
                        Err(_) => Delivery::Unreachable(format!(
                            "no answer within {}",
                            humantime::format_duration(ctx.timeout)
                        )),
                    };
                    let _ = me.cast(AlertsMsg::Tried(d));
                }));
            }
        }
        self.ctx
            .counts
            .queued
            .store(self.outbox.len() as u64, Ordering::Relaxed);
    }
}

impl Actor for Alerts {
    type Msg = AlertsMsg;
    type State = AlertsState;
    type Arguments = AlertsStart;

    async fn pre_start(
        &self,
        _me: ActorRef<AlertsMsg>,
        args: AlertsStart,
    ) -> Result<AlertsState, ActorProcessingErr> {
        Ok(AlertsState {
            path: args.path,
            ctx: args.ctx,
            outbox: Outbox::new(args.queue, args.max_attempts),
            sending: None,
            backoff: None,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<AlertsMsg>,
        msg: AlertsMsg,
        st: &mut AlertsState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AlertsMsg::Alert(alert) => st.enqueue(alert),
            AlertsMsg::Tried(d) => st.tried(&me, d),
            AlertsMsg::Retry => st.backoff = None,
        }
        st.pump(&me);
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<AlertsMsg>,
        st: &mut AlertsState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = st.sending.take() {
            t.abort();
        }
        if let Some(t) = st.backoff.take() {
            t.abort();
        }
        // The outbox lives in memory only: what is left is gone with this incarnation.
        for alert in st.outbox.drain() {
            st.ctx
                .dropped(&alert, Outcome::DroppedDown, "the alerts actor stopped");
        }
        st.ctx.counts.queued.store(0, Ordering::Relaxed);
        Ok(())
    }
}

// ===== The child spec =====

/// The alerts actor's recipe under the root: name `alerts`, kind `alerts`. Keeps the link that
/// every [`Alerter`] it hands out sends through.
pub struct AlertsSpec {
    ctx: Arc<Ctx>,
    queue: usize,
    max_attempts: u32,
    incarnation: Incarnation<AlertsMsg>,
}

impl AlertsSpec {
    /// A spec POSTing to `args.webhook_url`; `node` is the node's name, sent in every alert.
    pub fn new(args: AlertsArgs, node: String) -> Arc<Self> {
        let transport = http_transport(&args.webhook_url);
        Self::with_transport(args, node, transport)
    }

    fn with_transport(args: AlertsArgs, node: String, transport: Transport) -> Arc<Self> {
        Arc::new(Self {
            ctx: Arc::new(Ctx {
                node,
                url: shown_url(&args.webhook_url),
                timeout: args.timeout,
                transport,
                counts: Counts::default(),
            }),
            queue: args.queue,
            max_attempts: args.max_attempts,
            incarnation: Incarnation::default(),
        })
    }

    /// A handle for the dispatcher and the pipelines.
    pub fn alerter(&self) -> Alerter {
        Alerter(Some((self.incarnation.link(), self.ctx.clone())))
    }
}

impl ChildSpec for AlertsSpec {
    fn name(&self) -> String {
        "alerts".into()
    }
    fn kind(&self) -> &'static str {
        "alerts"
    }
    fn spawn(
        &self,
        supervisor: ActorCell,
        path: String,
    ) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
        let args = AlertsStart {
            path,
            ctx: self.ctx.clone(),
            queue: self.queue,
            max_attempts: self.max_attempts,
        };
        spawn_child(Alerts, args, supervisor)
    }
    fn on_up(&self, cell: &ActorCell) {
        self.incarnation.up(cell);
    }
    fn on_down(&self, _reason: &str) {
        self.incarnation.down();
    }
    fn detail(&self) -> Option<Value> {
        Some(self.ctx.detail())
    }
}
