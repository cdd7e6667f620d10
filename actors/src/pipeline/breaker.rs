//! The circuit breaker: one actor per upstream pipeline that stops requests to an upstream that
//! keeps failing. Supervised by the pipeline supervisor through [`BreakerSpec`]; asked by the
//! pipeline's gate (`gate.rs`) before every request ([`CircuitBreakerMsg::Admit`]) and told how
//! each admitted request ended ([`CircuitBreakerMsg::Record`]).
//!
//! The vocabulary is apalis's (`CircuitState::{Closed, Open, HalfOpen}`); the transitions live in
//! the pure [`Breaker`] core, whose methods take `now`:
//!
//! - closed → open after `failure_threshold` consecutive transient failures;
//! - open → half-open once `open_for` has passed (a timer in the actor, or lazily on `Admit`);
//! - half-open admits exactly one probe; everyone else is refused until it reports;
//! - probe success → closed (count reset, `open_for` back to its configured value);
//! - probe failure → open again, `open_for` doubled up to `max_open_for`.
//!
//! How verdicts count: [`Verdict::Ok`] is a success. [`Verdict::Permanent`] also counts as a
//! success for health: the upstream answered, definitely, so it is up (an unknown ticker must not
//! open the breaker, and it resets a run of transient failures). [`Verdict::Throttled`] is
//! neutral: throttling is the limiter's business, so it neither counts nor resets; a throttled
//! probe gives the probe slot back without deciding anything. Results of requests that were not
//! the probe are ignored while open or half-open (they were admitted before the breaker opened).
//!
//! Every transition logs one event, moves the state gauge, counts a transition and calls the
//! `on_change` hook (the dispatcher stops handing the pipeline's workers jobs while open).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::concurrency::JoinHandle;
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, MessagingErr, RpcReplyPort, SpawnErr,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::args::BreakerArgs;
use crate::job::{now_ms, rfc3339_ms};
use crate::link::{Incarnation, Link};
use crate::pipeline::limiter::{wall_ms, SharedView};
use crate::supervisor::{spawn_child, ChildSpec};
use crate::upstream::Verdict;

/// Gauge: 0 closed, 1 half-open, 2 open, by `pipeline`.
pub const CIRCUIT_BREAKER_STATE: &str = crate::metrics::CIRCUIT_BREAKER_STATE;
/// Counter: transitions, by `pipeline` and `to`.
pub const CIRCUIT_BREAKER_TRANSITIONS: &str = crate::metrics::CIRCUIT_BREAKER_TRANSITIONS;

/// While the probe is out, other callers are refused and asked to come back after this.
pub const PROBE_PENDING_RETRY: Duration = Duration::from_secs(1);
/// A probe that never reports (its job was cancelled or its worker died) is given up after
/// this, and the next caller becomes the probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(120);

// ===== Pure core =====

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Requests flow; transient failures are counted.
    Closed,
    /// No request goes out until `open_for` has passed.
    Open,
    /// One probe request decides whether to close or open again.
    HalfOpen,
}

impl CircuitState {
    /// `closed`, `open`, `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    /// The value of [`CIRCUIT_BREAKER_STATE`]: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        }
    }
}

/// The breaker's answer to "may I send a request?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Go,
    /// Half-open: go ahead, and this request is the probe; report it as such.
    Probe,
    /// Open, or half-open with the probe out: come back later.
    Refused {
        /// When to come back.
        retry_after: Duration,
    },
}

/// One change of state, as the core reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: CircuitState,
    /// The state after.
    pub to: CircuitState,
    /// Why, for the log (`10 consecutive transient failures`, `probe failed`).
    pub reason: String,
}

/// The breaker's core: pure transitions over `now`, no actors, no locks.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerArgs,
    state: CircuitState,
    consecutive_failures: u32,
    /// The current open period: the configured one, doubled after each failed probe.
    open_for: Duration,
    /// When the current open period began (open and half-open only).
    opened_at: Option<Instant>,
    /// When the current open period ends (open only).
    open_until: Option<Instant>,
    /// When the probe was admitted, while it is out (half-open only).
    probe_since: Option<Instant>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerArgs) -> Self {
        Self {
            config,
            state: CircuitState::Closed,
            consecutive_failures: 0,
            open_for: config.open_for,
            opened_at: None,
            open_until: None,
            probe_since: None,
        }
    }

    /// The state (as of the last call that took `now`).
    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// Transient failures in a row while closed.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// The current open period (doubles after each failed probe).
    pub fn open_for(&self) -> Duration {
        self.open_for
    }

    /// When the breaker last opened, while open or half-open.
    pub fn opened_at(&self) -> Option<Instant> {
        self.opened_at
    }

    /// When the open period ends, while open.
    pub fn open_until(&self) -> Option<Instant> {
        self.open_until
    }

    /// Moves open → half-open once the open period is over.
    pub fn poll(&mut self, now: Instant) -> Option<Transition> {
        match self.open_until {
            Some(until) if self.state == CircuitState::Open && now >= until => {
                self.state = CircuitState::HalfOpen;
                self.open_until = None;
                self.probe_since = None;
                Some(Transition {
                    from: CircuitState::Open,
                    to: CircuitState::HalfOpen,
                    reason: format!(
                        "open for {}, letting one probe through",
                        humantime::format_duration(self.open_for)
                    ),
                })
            }
            _ => None,
        }
    }

    /// Whether a request may go now (and whether it is the probe), with the transition that
    /// deciding it caused, if any (open → half-open).
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        let moved = self.poll(now);
        let admission = match self.state {
            CircuitState::Closed => Admission::Go,
            CircuitState::Open => Admission::Refused {
                retry_after: self.open_until.map_or(Duration::ZERO, |u| u - now),
            },
            CircuitState::HalfOpen => match self.probe_since {
                Some(since) if now < since + PROBE_TIMEOUT => Admission::Refused {
                    retry_after: PROBE_PENDING_RETRY,
                },
                _ => {
                    self.probe_since = Some(now);
                    Admission::Probe
                }
            },
        };
        (admission, moved)
    }

    /// Records how an admitted request ended; `was_probe` is true for the request admitted as
    /// [`Admission::Probe`]. Returns the transition it caused, if any.
    pub fn record(
        &mut self,
        verdict: Verdict,
        was_probe: bool,
        now: Instant,
    ) -> Option<Transition> {
        let healthy = match verdict {
            Verdict::Ok | Verdict::Permanent => true,
            Verdict::Transient => false,
            Verdict::Throttled { .. } => {
                if was_probe && self.state == CircuitState::HalfOpen {
                    self.probe_since = None; // neutral: the next caller probes instead
                }
                return None;
            }
        };
        match self.state {
            CircuitState::Closed if healthy => {
                self.consecutive_failures = 0;
                None
            }
            CircuitState::Closed => {
                self.consecutive_failures += 1;
                let threshold = self.config.failure_threshold.max(1);
                (self.consecutive_failures >= threshold).then(|| {
                    self.open(now);
                    Transition {
                        from: CircuitState::Closed,
                        to: CircuitState::Open,
                        reason: format!(
                            "{} consecutive transient failures",
                            self.consecutive_failures
                        ),
                    }
                })
            }
            CircuitState::HalfOpen if was_probe && self.probe_since.is_some() => {
                if healthy {
                    self.state = CircuitState::Closed;
                    self.consecutive_failures = 0;
                    self.open_for = self.config.open_for;
                    self.opened_at = None;
                    self.probe_since = None;
                    Some(Transition {
                        from: CircuitState::HalfOpen,
                        to: CircuitState::Closed,
                        reason: "probe succeeded".into(),
                    })
                } else {
                    let cap = self.config.max_open_for.max(self.config.open_for);
                    self.open_for = self.open_for.saturating_mul(2).min(cap);
                    self.open(now);
                    Some(Transition {
                        from: CircuitState::HalfOpen,
                        to: CircuitState::Open,
                        reason: format!(
                            "probe failed, open for {}",
                            humantime::format_duration(self.open_for)
                        ),
                    })
                }
            }
            // Open, or a late result of a request admitted before the breaker opened.
            CircuitState::HalfOpen | CircuitState::Open => None,
        }
    }

    /// Takes a request already admitted as the probe: the cluster granted it as its one probe
    /// of a source another node's breaker opened on (`cluster/permits.rs`). A breaker whose own
    /// probe is out keeps it; otherwise it goes half-open with this probe out, so the probe's
    /// outcome closes it or opens it, and that transition reaches the cluster.
    pub fn adopt_probe(&mut self, now: Instant) -> Option<Transition> {
        if self.state == CircuitState::HalfOpen && self.probe_since.is_some() {
            return None;
        }
        let from = self.state;
        self.state = CircuitState::HalfOpen;
        self.open_until = None;
        self.opened_at.get_or_insert(now);
        self.probe_since = Some(now);
        (from != CircuitState::HalfOpen).then(|| Transition {
            from,
            to: CircuitState::HalfOpen,
            reason: "probing for the cluster: another node's breaker opened on this source".into(),
        })
    }

    /// The probe will not be sent after all (the limiter refused it): the next caller probes.
    pub fn abandon_probe(&mut self) {
        if self.state == CircuitState::HalfOpen {
            self.probe_since = None;
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = CircuitState::Open;
        self.opened_at = Some(now);
        self.open_until = Some(now + self.open_for);
        self.probe_since = None;
    }
}

// ===== Actor =====

/// Told every state change of a breaker.
pub type BreakerHook = Box<dyn Fn(BreakerStateChange) + Send + Sync>;

/// One state change, as [`CircuitBreakerArgs::on_change`] is told it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerStateChange {
    /// The pipeline.
    pub pipeline: String,
    /// The state before.
    pub from: CircuitState,
    /// The state after.
    pub to: CircuitState,
    /// Why.
    pub reason: String,
    /// When `to` is open: how long until the probe may go.
    pub retry_after: Option<Duration>,
}

/// The circuit breaker actor (stateless shell; see [`CircuitBreakerState`]).
pub struct CircuitBreaker;

/// What a circuit breaker starts with.
pub struct CircuitBreakerArgs {
    /// The pipeline (`sec`), for logs, metrics and [`BreakerStateChange`].
    pub pipeline: String,
    /// Threshold and open periods.
    pub breaker: BreakerArgs,
    /// Called on every transition (and, on start, if the previous incarnation was not closed).
    pub on_change: Option<BreakerHook>,
    /// Where the actor publishes its [`BreakerView`] as JSON after every change (for
    /// [`ChildSpec::detail`]); pass `SharedView::default()` when nobody reads it. A restarted
    /// breaker starts closed and reads the previous view to tell `on_change` so.
    pub view: SharedView,
}

/// Messages a circuit breaker accepts.
pub enum CircuitBreakerMsg {
    /// May a request go now?
    Admit(RpcReplyPort<Admission>),
    /// How an admitted request ended, and whether it was the probe.
    Record(Verdict, bool),
    /// The probe admitted will not be sent after all (the limiter refused it).
    ProbeAbandoned,
    /// Cluster mode: a request this breaker admitted is the cluster's probe of the source
    /// (another node's breaker opened on it): take it as this breaker's probe.
    AdoptProbe,
    /// The state, for the admin `pipelines` command.
    State(RpcReplyPort<BreakerView>),
    /// Internal: the open period is over.
    Tick,
}

/// The breaker as the admin `pipelines` command shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerView {
    /// `closed`, `half_open` or `open`.
    pub state: CircuitState,
    /// Transient failures in a row while closed.
    pub consecutive_failures: u32,
    /// When it last opened (RFC 3339), while open or half-open.
    pub opened_at: Option<String>,
    /// When the open period ends (RFC 3339), while open.
    pub open_until: Option<String>,
}

/// A circuit breaker's mutable state.
pub struct CircuitBreakerState {
    pipeline: String,
    /// `root/pipeline:<name>/breaker`, for logs.
    path: String,
    core: Breaker,
    on_change: Option<BreakerHook>,
    view: SharedView,
    /// Fires when the open period is over.
    timer: Option<JoinHandle<Result<(), MessagingErr<CircuitBreakerMsg>>>>,
}

impl CircuitBreakerState {
    fn admit(&mut self, me: &ActorRef<CircuitBreakerMsg>, reply: RpcReplyPort<Admission>) {
        let (admission, moved) = self.core.admit(Instant::now());
        self.apply(me, moved);
        let _ = reply.send(admission);
    }

    fn record(&mut self, me: &ActorRef<CircuitBreakerMsg>, verdict: Verdict, was_probe: bool) {
        let moved = self.core.record(verdict, was_probe, Instant::now());
        self.apply(me, moved);
    }

    fn tick(&mut self, me: &ActorRef<CircuitBreakerMsg>) {
        self.timer = None;
        let moved = self.core.poll(Instant::now());
        self.apply(me, moved);
    }

    /// Tells the world about a transition: log, metrics, hook, and the half-open timer.
    fn apply(&mut self, me: &ActorRef<CircuitBreakerMsg>, moved: Option<Transition>) {
        let Some(t) = moved else { return };
        let now = Instant::now();
        if let Some(old) = self.timer.take() {
            old.abort();
        }
        let retry_after = self
            .core
            .open_until()
            .map(|u| u.saturating_duration_since(now));
        if let Some(wait) = retry_after {
            self.timer = Some(me.send_after(wait, || CircuitBreakerMsg::Tick));
        }
        if t.to == CircuitState::Open {
            warn!(actor = %self.path, pipeline = %self.pipeline, from = t.from.as_str(), to = t.to.as_str(), reason = %t.reason, "circuit breaker state changed");
        } else {
            info!(actor = %self.path, pipeline = %self.pipeline, from = t.from.as_str(), to = t.to.as_str(), reason = %t.reason, "circuit breaker state changed");
        }
        metrics::gauge!(CIRCUIT_BREAKER_STATE, "pipeline" => self.pipeline.clone())
            .set(t.to.gauge());
        metrics::counter!(CIRCUIT_BREAKER_TRANSITIONS, "pipeline" => self.pipeline.clone(), "to" => t.to.as_str())
            .increment(1);
        if let Some(tell) = &self.on_change {
            tell(BreakerStateChange {
                pipeline: self.pipeline.clone(),
                from: t.from,
                to: t.to,
                reason: t.reason,
                retry_after,
            });
        }
    }

    /// The view for `pipelines`.
    fn view(&self) -> BreakerView {
        let (now, wall) = (Instant::now(), now_ms());
        let rfc = |at: Instant| rfc3339_ms(wall_ms(at, now, wall));
        BreakerView {
            state: self.core.state(),
            consecutive_failures: self.core.consecutive_failures(),
            opened_at: self.core.opened_at().map(rfc),
            open_until: self.core.open_until().map(rfc),
        }
    }

    fn publish(&self) {
        let view = serde_json::to_value(self.view()).ok();
        *self.view.lock().unwrap_or_else(|e| e.into_inner()) = view;
    }
}

impl Actor for CircuitBreaker {
    type Msg = CircuitBreakerMsg;
    type State = CircuitBreakerState;
    type Arguments = CircuitBreakerArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<CircuitBreakerMsg>,
        args: CircuitBreakerArgs,
    ) -> Result<CircuitBreakerState, ActorProcessingErr> {
        let path = format!("root/pipeline:{}/breaker", args.pipeline);
        metrics::gauge!(CIRCUIT_BREAKER_STATE, "pipeline" => args.pipeline.clone())
            .set(CircuitState::Closed.gauge());
        // The previous incarnation may have left the dispatcher believing the breaker open.
        let before = args
            .view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .and_then(|v| serde_json::from_value::<BreakerView>(v).ok())
            .map(|v| v.state)
            .filter(|s| *s != CircuitState::Closed);
        if let Some(from) = before {
            info!(actor = %path, pipeline = %args.pipeline, from = from.as_str(), to = "closed", reason = "breaker restarted", "circuit breaker state changed");
            if let Some(tell) = &args.on_change {
                tell(BreakerStateChange {
                    pipeline: args.pipeline.clone(),
                    from,
                    to: CircuitState::Closed,
                    reason: "breaker restarted".into(),
                    retry_after: None,
                });
            }
        }
        let st = CircuitBreakerState {
            pipeline: args.pipeline,
            path,
            core: Breaker::new(args.breaker),
            on_change: args.on_change,
            view: args.view,
            timer: None,
        };
        st.publish();
        Ok(st)
    }

    async fn handle(
        &self,
        me: ActorRef<CircuitBreakerMsg>,
        msg: CircuitBreakerMsg,
        st: &mut CircuitBreakerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CircuitBreakerMsg::Admit(reply) => st.admit(&me, reply),
            CircuitBreakerMsg::Record(verdict, was_probe) => st.record(&me, verdict, was_probe),
            CircuitBreakerMsg::ProbeAbandoned => st.core.abandon_probe(),
            CircuitBreakerMsg::AdoptProbe => {
                let moved = st.core.adopt_probe(Instant::now());
                st.apply(&me, moved);
            }
            CircuitBreakerMsg::State(reply) => {
                // The timer may be due but not yet processed: show the state as of now.
                let moved = st.core.poll(Instant::now());
                st.apply(&me, moved);
                let _ = reply.send(st.view());
            }
            CircuitBreakerMsg::Tick => st.tick(&me),
        }
        st.publish();
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<CircuitBreakerMsg>,
        st: &mut CircuitBreakerState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = st.timer.take() {
            t.abort();
        }
        Ok(())
    }
}

// ===== Recipe =====

/// The recipe for a pipeline's `breaker` child. Keeps the [`Link`] the gate uses pointed at the
/// current incarnation and the last view for `tree`.
pub struct BreakerSpec {
    pipeline: String,
    breaker: BreakerArgs,
    on_change: Option<Arc<dyn Fn(BreakerStateChange) + Send + Sync>>,
    incarnation: Incarnation<CircuitBreakerMsg>,
    view: SharedView,
}

impl BreakerSpec {
    /// A recipe for the breaker of `pipeline`; `on_change` is told every transition of every
    /// incarnation.
    pub fn new(
        pipeline: impl Into<String>,
        breaker: BreakerArgs,
        on_change: Option<Arc<dyn Fn(BreakerStateChange) + Send + Sync>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            pipeline: pipeline.into(),
            breaker,
            on_change,
            incarnation: Incarnation::default(),
            view: SharedView::default(),
        })
    }

    /// The link to the current incarnation (empty while it restarts).
    pub fn link(&self) -> Link<CircuitBreakerMsg> {
        self.incarnation.link()
    }
}

impl ChildSpec for BreakerSpec {
    fn name(&self) -> String {
        "breaker".into()
    }
    fn kind(&self) -> &'static str {
        "breaker"
    }
    fn spawn(
        &self,
        supervisor: ActorCell,
        _path: String,
    ) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
        let args = CircuitBreakerArgs {
            pipeline: self.pipeline.clone(),
            breaker: self.breaker,
            on_change: self.on_change.clone().map(|f| {
                let hook: BreakerHook = Box::new(move |change| f(change));
                hook
            }),
            view: self.view.clone(),
        };
        spawn_child(CircuitBreaker, args, supervisor)
    }
    fn on_up(&self, cell: &ActorCell) {
        self.incarnation.up(cell);
    }
    fn on_down(&self, _reason: &str) {
        self.incarnation.down();
    }
    fn detail(&self) -> Option<serde_json::Value> {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: BreakerArgs = BreakerArgs {
        failure_threshold: 3,
        open_for: Duration::from_secs(10),
        max_open_for: Duration::from_secs(25),
    };

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn to(t: Option<Transition>) -> Option<CircuitState> {
        t.map(|t| t.to)
    }

    /// Ensures that a closed breaker adopts the cluster's probe (half-open, the probe out, so
    /// its own callers wait), that the probe's success closes it and its failure opens it for
    /// twice the open period, and that a breaker whose own probe is out keeps that one.
    #[test]
    fn an_adopted_probe_moves_the_breaker_as_its_own_would() {
        let t0 = Instant::now();
        let mut b = Breaker::new(CONFIG);
        assert_eq!(to(b.adopt_probe(t0)), Some(CircuitState::HalfOpen));
        assert!(matches!(b.admit(t0).0, Admission::Refused { .. }));
        assert_eq!(
            to(b.record(Verdict::Ok, true, t0)),
            Some(CircuitState::Closed)
        );
        b.adopt_probe(t0);
        let failed = b.record(Verdict::Transient, true, t0);
        assert_eq!(to(failed), Some(CircuitState::Open));
        assert_eq!(b.open_for(), secs(20));
        let half = b.poll(t0 + secs(20));
        assert_eq!(to(half), Some(CircuitState::HalfOpen));
        assert_eq!(b.admit(t0 + secs(20)).0, Admission::Probe);
        assert_eq!(b.adopt_probe(t0 + secs(20)).map(|t| t.to), None);
    }

    /// Ensures that the breaker opens after `failure_threshold` CONSECUTIVE transient failures:
    /// a success or a permanent error in between resets the count, a throttle does neither.
    #[test]
    fn threshold_of_consecutive_failures_opens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(CONFIG);
        for v in [Verdict::Transient, Verdict::Transient, Verdict::Ok] {
            assert_eq!(b.record(v, false, t0), None);
        }
        assert_eq!(b.consecutive_failures(), 0, "a success resets");
        b.record(Verdict::Transient, false, t0);
        b.record(Verdict::Transient, false, t0);
        b.record(Verdict::Permanent, false, t0);
        assert_eq!(
            b.consecutive_failures(),
            0,
            "a permanent error is an answer: resets"
        );
        b.record(Verdict::Transient, false, t0);
        b.record(Verdict::Transient, false, t0);
        let throttled = Verdict::Throttled {
            retry_after: None,
            until_next_utc_day: false,
        };
        assert_eq!(b.record(throttled, false, t0), None);
        assert_eq!(b.consecutive_failures(), 2, "a throttle is neutral");
        let opened = b.record(Verdict::Transient, false, t0).unwrap();
        assert_eq!(
            (opened.from, opened.to),
            (CircuitState::Closed, CircuitState::Open)
        );
        assert_eq!(opened.reason, "3 consecutive transient failures");
        assert_eq!(b.opened_at(), Some(t0));
        assert_eq!(
            b.admit(t0 + secs(4)).0,
            Admission::Refused {
                retry_after: secs(6)
            }
        );
    }

    /// Ensures that an open breaker becomes half-open after `open_for`, admits exactly one
    /// probe, and that a successful probe closes it with `open_for` back to its configured value.
    #[test]
    fn half_open_admits_one_probe_and_success_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(CONFIG);
        for _ in 0..3 {
            b.record(Verdict::Transient, false, t0);
        }
        assert_eq!(b.poll(t0 + secs(10) - Duration::from_millis(1)), None);
        let (first, moved) = b.admit(t0 + secs(10));
        assert_eq!(
            (first, to(moved)),
            (Admission::Probe, Some(CircuitState::HalfOpen))
        );
        for _ in 0..3 {
            assert_eq!(
                b.admit(t0 + secs(11)).0,
                Admission::Refused {
                    retry_after: PROBE_PENDING_RETRY
                },
                "only one probe"
            );
        }
        // A late result of a request admitted before the breaker opened decides nothing.
        assert_eq!(b.record(Verdict::Ok, false, t0 + secs(11)), None);
        let closed = b.record(Verdict::Ok, true, t0 + secs(12));
        assert_eq!(to(closed), Some(CircuitState::Closed));
        assert_eq!((b.consecutive_failures(), b.open_for()), (0, secs(10)));
        assert_eq!(b.admit(t0 + secs(12)).0, Admission::Go);
    }

    /// Ensures that a failed probe reopens the breaker with `open_for` doubled, capped at
    /// `max_open_for`, and that a success after that restores the configured `open_for`.
    #[test]
    fn failed_probe_reopens_with_doubled_capped_open_for() {
        let mut now = Instant::now();
        let mut b = Breaker::new(CONFIG);
        for _ in 0..3 {
            b.record(Verdict::Transient, false, now);
        }
        for expect in [20, 25, 25] {
            now += b.open_for();
            assert_eq!(b.admit(now).0, Admission::Probe);
            let t = b.record(Verdict::Transient, true, now).unwrap();
            assert_eq!((t.from, t.to), (CircuitState::HalfOpen, CircuitState::Open));
            assert_eq!(b.open_for(), secs(expect));
            assert_eq!(b.open_until(), Some(now + secs(expect)));
            assert_eq!(
                b.admit(now + secs(expect) - Duration::from_millis(1)).0,
                Admission::Refused {
                    retry_after: Duration::from_millis(1)
                }
            );
        }
        now += b.open_for();
        assert_eq!(b.admit(now).0, Admission::Probe);
        assert_eq!(
            to(b.record(Verdict::Permanent, true, now)),
            Some(CircuitState::Closed)
        );
        assert_eq!(b.open_for(), secs(10));
    }

    /// Ensures that a probe that is not sent after all (abandoned, throttled, or never
    /// reported within PROBE_TIMEOUT) hands the probe to the next caller without deciding.
    #[test]
    fn lost_probes_are_handed_on() {
        let t0 = Instant::now();
        let mut b = Breaker::new(CONFIG);
        for _ in 0..3 {
            b.record(Verdict::Transient, false, t0);
        }
        let t = t0 + secs(10);
        assert_eq!(b.admit(t).0, Admission::Probe);
        b.abandon_probe();
        assert_eq!(b.admit(t).0, Admission::Probe);
        let throttled = Verdict::Throttled {
            retry_after: Some(secs(1)),
            until_next_utc_day: false,
        };
        assert_eq!(b.record(throttled, true, t), None);
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(b.admit(t).0, Admission::Probe);
        assert!(matches!(
            b.admit(t + PROBE_TIMEOUT - secs(1)).0,
            Admission::Refused { .. }
        ));
        assert_eq!(b.admit(t + PROBE_TIMEOUT).0, Admission::Probe);
    }

    // ===== Actor tests (paused clock) =====

    /// Ensures that the actor calls `on_change` on open (with the time to wait), on half-open
    /// (by its own timer, after `open_for`) and on closed (after a successful probe), and that
    /// its view follows.
    #[tokio::test(start_paused = true)]
    async fn actor_reports_every_transition() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let args = CircuitBreakerArgs {
            pipeline: "test".into(),
            breaker: BreakerArgs {
                failure_threshold: 2,
                open_for: secs(5),
                max_open_for: secs(60),
            },
            on_change: Some(Box::new(move |c| tx.send((Instant::now(), c)).unwrap())),
            view: SharedView::default(),
        };
        let view = args.view.clone();
        let (b, _) = Actor::spawn(None, CircuitBreaker, args).await.unwrap();
        let t0 = Instant::now();
        b.cast(CircuitBreakerMsg::Record(Verdict::Transient, false))
            .unwrap();
        b.cast(CircuitBreakerMsg::Record(Verdict::Transient, false))
            .unwrap();
        let (at, open) = rx.recv().await.unwrap();
        assert_eq!(
            (open.from, open.to),
            (CircuitState::Closed, CircuitState::Open)
        );
        assert_eq!((open.retry_after, at), (Some(secs(5)), t0));
        assert_eq!(open.pipeline, "test");
        let shown: BreakerView = ractor::call!(b, CircuitBreakerMsg::State).unwrap();
        assert_eq!(shown.state, CircuitState::Open);
        assert!(shown.opened_at.is_some() && shown.open_until.is_some());
        assert_eq!(
            ractor::call!(b, CircuitBreakerMsg::Admit).unwrap(),
            Admission::Refused {
                retry_after: secs(5)
            }
        );

        let (at, half) = rx.recv().await.unwrap();
        assert_eq!(
            (half.from, half.to),
            (CircuitState::Open, CircuitState::HalfOpen)
        );
        assert!(
            at >= t0 + secs(5) && at < t0 + secs(5) + Duration::from_millis(10),
            "{:?}",
            at - t0
        );
        assert_eq!(
            ractor::call!(b, CircuitBreakerMsg::Admit).unwrap(),
            Admission::Probe
        );
        b.cast(CircuitBreakerMsg::Record(Verdict::Ok, true))
            .unwrap();
        let (_, closed) = rx.recv().await.unwrap();
        assert_eq!(
            (closed.from, closed.to, closed.reason.as_str()),
            (
                CircuitState::HalfOpen,
                CircuitState::Closed,
                "probe succeeded"
            )
        );
        let detail = view.lock().unwrap().clone().unwrap();
        assert_eq!(detail["state"], "closed");
        assert_eq!(detail["consecutive_failures"], 0);
        b.stop_and_wait(None, None).await.unwrap();
        assert!(rx.try_recv().is_err(), "one call per transition");
    }

    /// Ensures that a breaker restarted while its predecessor was open starts closed and tells
    /// `on_change` so (the dispatcher would otherwise keep the pipeline blocked).
    #[tokio::test(start_paused = true)]
    async fn restart_after_open_announces_closed() {
        let spec_calls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = spec_calls.clone();
        let spec = BreakerSpec::new(
            "test",
            BreakerArgs {
                failure_threshold: 1,
                open_for: secs(60),
                max_open_for: secs(60),
            },
            Some(Arc::new(move |c: BreakerStateChange| {
                seen.lock().unwrap().push((c.from, c.to))
            })),
        );
        let (sup, _) = Actor::spawn(
            None,
            crate::supervisor::Supervisor,
            crate::supervisor::SupervisorArgs {
                path: "root/pipeline:test".into(),
                pipeline: "test".into(),
                policy: crate::args::RestartPolicy::DEFAULT,
                children: vec![spec.clone()],
                on_escalate: None,
            },
        )
        .await
        .unwrap();
        let first = spec.link().get().unwrap();
        first
            .cast(CircuitBreakerMsg::Record(Verdict::Transient, false))
            .unwrap();
        let shown: BreakerView = ractor::call!(first, CircuitBreakerMsg::State).unwrap();
        assert_eq!(shown.state, CircuitState::Open);
        assert_eq!(spec.detail().unwrap()["state"], "open");
        first.kill();
        // The supervisor restarts it after its backoff (100 ms ± jitter).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let second = spec.link().get().expect("restarted");
        assert_ne!(first.get_id(), second.get_id());
        assert_eq!(
            *spec_calls.lock().unwrap(),
            vec![
                (CircuitState::Closed, CircuitState::Open),
                (CircuitState::Open, CircuitState::Closed)
            ]
        );
        assert_eq!(spec.detail().unwrap()["state"], "closed");
        sup.stop_and_wait(None, None).await.unwrap();
    }
}
