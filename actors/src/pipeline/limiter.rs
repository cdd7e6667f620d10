//! The rate limiter: one actor per upstream pipeline, shared by all of its workers, that hands
//! out one permit per upstream request (not per job). Supervised by the pipeline supervisor
//! through [`LimiterSpec`]; reached through a [`Link`] by the pipeline's gate (`gate.rs`).
//! It accepts [`RateLimiterMsg::Acquire`] (answered when the caller may send),
//! [`RateLimiterMsg::Throttle`] (the upstream asked us to slow down: pause the whole source) and
//! [`RateLimiterMsg::State`] (the admin `pipelines` view).
//!
//! # Meaning of a rate limit
//!
//! `rate_limit = "5/m, 25/d"` is strict: no sliding window of one minute ever holds more than 5
//! permits, and no window of one day more than 25, counted at grant time (which is when the
//! request leaves the node). The core, [`SlidingWindows`], keeps a log of grant times and grants
//! the next permit at the earliest instant that keeps every window at or under its limit.
//!
//! # Why this is hand-written
//!
//! No crate does a strict multi-window sliding log with persisted state. `governor` is a GCRA
//! token bucket: it allows a full burst at a window boundary right after a full window (so a
//! fake upstream counting "no more than 5 in any second" sees 10), it has one quota per limiter,
//! and it keeps no state across restarts, so a restarted node would hand out a fresh daily quota.
//! ractor's factory rate limiter discards work instead of delaying it. The log needed here is
//! tiny (at most the largest limit entries), so a plain `VecDeque` does.
//!
//! # Persistence
//!
//! The send times (Unix ms) and the pause-until (Unix ms) are stored in the journal's `meta`
//! tree under `limiter/<pipeline>` whenever they change, at most every [`SAVE_EVERY`], and at
//! once on a pause; `pre_start` loads them back, converting wall-clock ms to [`Instant`]s. So a
//! node restart cannot break a daily quota nor end a throttle pause early.
//!
//! # The actor never sleeps
//!
//! Waiters are kept in a FIFO queue and one timer (`send_after`) fires at the next grant time.
//! A waiter whose caller has given up (call timeout) is skipped without using a permit. A waiter
//! that would wait longer than [`MAX_PERMIT_WAIT`], or any waiter while the source is paused, is
//! refused with how long to wait instead, so the job waits in the dispatcher (without spending
//! an attempt) rather than holding a worker.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::concurrency::JoinHandle;
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, MessagingErr, RpcReplyPort, SpawnErr,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::args::RateWindow;
use crate::job::{now_ms, rfc3339_ms};
use crate::link::{Incarnation, Link};
use crate::store::journal::Journal;
use crate::supervisor::{spawn_child, ChildSpec};

/// Histogram: seconds from `Acquire` to grant, by `pipeline`.
pub const RATE_LIMITER_WAIT: &str = crate::metrics::RATE_LIMITER_WAIT;
/// Gauge: 1 while the pipeline's source is paused after a throttle signal, by `pipeline`.
pub const RATE_LIMITER_PAUSED: &str = crate::metrics::RATE_LIMITER_PAUSED;

/// The persisted state is written at most this often (plus at once on every pause).
pub const SAVE_EVERY: Duration = Duration::from_millis(100);
/// A permit further away than this is refused with its wait instead of queued, so that a call
/// never comes near the gate's timeout and a worker is never held for a long quota wait.
pub const MAX_PERMIT_WAIT: Duration = Duration::from_secs(30);
/// Jitter allowance between a permit and the request's arrival at the upstream (see
/// [`SlidingWindows::with_guard`]): measured arrivals on this 2-core machine drifted by a few
/// milliseconds under load, so 25 ms keeps the upstream's view within the limit.
pub const SEND_GUARD: Duration = Duration::from_millis(25);

/// First byte of the persisted limiter state; bump it when the encoding changes.
const STATE_VERSION: u8 = 1;
/// [`SEND_GUARD`] in cluster mode. A grant is timed by the database when it commits; the request
/// leaves after the commit's answer crossed back to the node, the limiter and the worker, and on
/// a loaded machine that path varies by far more than in one process: 25 ms let 6 requests into
/// one second of a `5/s` source in a full test run (three nodes, their database and the other
/// tests on two cores). 250 ms costs a `5/s` source a fifth of its rate and keeps it strict.
pub const CLUSTER_SEND_GUARD: Duration = Duration::from_millis(250);
/// How long a job waits when the cluster store cannot be asked for a permit.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// One UTC day in milliseconds.
const DAY_MS: i64 = 86_400_000;

/// What the example in every parse error shows.
const EXPECTED: &str = r#"expected windows like "10/s" or "5/m, 25/d""#;

/// Parses a `rate_limit` value: one or more comma-separated windows `<limit>/<length>`, where
/// the length is a unit (`s`, `m`, `h`, `d`) or a humantime length (`"2/10s"`). The limit must
/// be at least 1. Errors say what was expected and what came.
pub fn parse_rate_limit(s: &str) -> Result<Vec<RateWindow>, String> {
    if s.trim().is_empty() {
        return Err(format!("{EXPECTED}, got {s:?}"));
    }
    let several = s.contains(',');
    let context = |item: &str| {
        if several {
            format!("{item:?} in {s:?}")
        } else {
            format!("{item:?}")
        }
    };
    s.split(',')
        .map(|item| {
            let item = item.trim();
            let Some((limit, per)) = item.split_once('/') else {
                return Err(format!("{EXPECTED}, got {}", context(item)));
            };
            let (limit, per) = (limit.trim(), per.trim());
            let limit = match limit.parse::<u32>() {
                Ok(n) if n >= 1 => n,
                Ok(_) => {
                    return Err(format!(
                        "expected a limit of at least 1 before the slash, got {}",
                        context(item)
                    ))
                }
                Err(_) => {
                    return Err(format!(
                        "expected a whole number of requests before the slash, got {limit:?} in {}",
                        context(item)
                    ))
                }
            };
            // A bare unit ("s", "min", "day") means one of it; anything starting with a digit
            // is a humantime length ("10s", "1h30m").
            let spelled = if per.starts_with(|c: char| c.is_ascii_digit()) {
                per.to_string()
            } else {
                format!("1{per}")
            };
            match humantime::parse_duration(&spelled) {
                Ok(per) if !per.is_zero() => Ok(RateWindow { limit, per }),
                _ => Err(format!(
                    "expected a window length after the slash (s, m, h, d or a length like 10s), got {per:?} in {}",
                    context(item)
                )),
            }
        })
        .collect()
}

/// A window as written in config and shown by `pipelines`: `"5/m"`, `"25/d"`, `"2/10s"`.
pub fn format_window(w: &RateWindow) -> String {
    let unit = match w.per.as_millis() {
        1_000 => "s".to_string(),
        60_000 => "m".to_string(),
        3_600_000 => "h".to_string(),
        86_400_000 => "d".to_string(),
        _ => humantime::format_duration(w.per).to_string(),
    };
    format!("{}/{unit}", w.limit)
}

/// The next UTC midnight strictly after `now_ms` (Unix ms), as Unix ms: when a daily quota
/// (Alpha Vantage's) comes back.
pub fn next_utc_midnight(now_ms: i64) -> i64 {
    (now_ms.div_euclid(DAY_MS) + 1) * DAY_MS
}

/// `at` as Unix ms, given that `now` is `now_ms`. Rounds towards later (conservative both for
/// send times, which then stay in their windows a little longer, and for pause ends).
pub(crate) fn wall_ms(at: Instant, now: Instant, now_ms: i64) -> i64 {
    if at <= now {
        now_ms - (now - at).as_millis() as i64
    } else {
        let ahead = at - now;
        now_ms
            + ahead.as_millis() as i64
            + i64::from(!ahead.subsec_nanos().is_multiple_of(1_000_000))
    }
}

/// Unix ms `ms` as an [`Instant`], given that `now` is `now_ms`; `None` if it cannot be
/// represented (further in the past than the monotonic clock reaches).
fn instant_at(ms: i64, now: Instant, now_ms: i64) -> Option<Instant> {
    if ms >= now_ms {
        Some(now + Duration::from_millis((ms - now_ms) as u64))
    } else {
        now.checked_sub(Duration::from_millis((now_ms - ms) as u64))
    }
}

// ===== Pure core =====

/// The limiter's core: a log of recent grant times checked against every window, and the
/// throttle pause. No actors, no locks; every method takes `now`.
#[derive(Debug, Clone)]
pub struct SlidingWindows {
    windows: Vec<RateWindow>,
    /// Grant times, oldest first; only the last `cap` within the longest window are kept.
    log: VecDeque<Instant>,
    /// The source is paused until then (after a throttle signal).
    pause_until: Option<Instant>,
    /// The largest limit: older entries can never decide a grant.
    cap: usize,
    /// Added to every window when deciding grants (see [`SlidingWindows::with_guard`]).
    guard: Duration,
    /// The longest window: entries older than it can never decide a grant.
    longest: Duration,
}

/// The persisted form of [`SlidingWindows`]: wall-clock Unix ms, so it means the same after a
/// restart.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PersistedWindows {
    /// Grant times, oldest first.
    pub sends_ms: Vec<i64>,
    /// End of the throttle pause.
    pub pause_until_ms: Option<i64>,
}

impl SlidingWindows {
    /// An empty log for these windows (none: no limit).
    pub fn new(windows: Vec<RateWindow>) -> Self {
        let cap = windows.iter().map(|w| w.limit as usize).max().unwrap_or(0);
        let longest = windows.iter().map(|w| w.per).max().unwrap_or_default();
        Self {
            windows,
            log: VecDeque::with_capacity(cap),
            pause_until: None,
            cap,
            longest,
            guard: Duration::ZERO,
        }
    }

    /// Widens every window by `guard` when deciding grants. A permit is counted when the request
    /// leaves the node, but two requests sent a window apart can arrive closer than that (one
    /// waited longer for a connection or a thread); the guard absorbs that jitter, so the
    /// upstream itself never sees more than the limit in any window. It costs `guard / per` of
    /// the allowed rate (1 % at 10 ms per second).
    pub fn with_guard(mut self, guard: Duration) -> Self {
        self.guard = guard;
        self
    }

    /// The windows enforced.
    pub fn windows(&self) -> &[RateWindow] {
        &self.windows
    }

    /// The earliest instant, not before `now`, at which taking a permit keeps every window at
    /// or under its limit: for a window of `limit` per `per`, the `limit`-th most recent grant
    /// must be at least `per` old. (The pause is separate: see [`SlidingWindows::paused`].)
    pub fn next_free(&self, now: Instant) -> Instant {
        let len = self.log.len();
        self.windows
            .iter()
            .filter(|w| len >= w.limit as usize)
            .map(|w| self.log[len - w.limit as usize] + w.per + self.guard)
            .fold(now, Instant::max)
    }

    /// Records a permit granted at `now` (which must not be before [`Self::next_free`]).
    pub fn take(&mut self, now: Instant) {
        debug_assert!(
            now >= self.next_free(now),
            "permit taken before it was free"
        );
        if self.cap == 0 {
            return;
        }
        self.log.push_back(now);
        self.prune(now);
    }

    /// Drops entries that can no longer decide a grant.
    fn prune(&mut self, now: Instant) {
        while self.log.len() > self.cap
            || self
                .log
                .front()
                .is_some_and(|&g| g + self.longest + self.guard <= now)
        {
            self.log.pop_front();
        }
    }

    /// Permits counted in each window at `now`, in the order of [`Self::windows`].
    pub fn in_window(&self, now: Instant) -> Vec<u32> {
        self.windows
            .iter()
            .map(|w| {
                self.log
                    .iter()
                    .rev()
                    .take_while(|&&g| g + w.per > now)
                    .count() as u32
            })
            .collect()
    }

    /// Pauses the source until `until`; a later pause never shortens an earlier one. True if
    /// the pause was extended.
    pub fn pause(&mut self, until: Instant) -> bool {
        if self.pause_until.is_some_and(|p| p >= until) {
            return false;
        }
        self.pause_until = Some(until);
        true
    }

    /// The end of the pause, if the source is paused at `now`.
    pub fn paused(&self, now: Instant) -> Option<Instant> {
        self.pause_until.filter(|&p| p > now)
    }

    /// The state in wall-clock terms, given that `now` is `now_ms`.
    pub fn to_persisted(&self, now: Instant, now_ms: i64) -> PersistedWindows {
        PersistedWindows {
            sends_ms: self.log.iter().map(|&g| wall_ms(g, now, now_ms)).collect(),
            pause_until_ms: self.paused(now).map(|p| wall_ms(p, now, now_ms)),
        }
    }

    /// Restores persisted state, given that `now` is `now_ms`. Entries too old to matter are
    /// dropped; send times in the future (the wall clock stepped back) are taken as `now`.
    pub fn restore(&mut self, state: &PersistedWindows, now: Instant, now_ms: i64) {
        let longest_ms = self.longest.as_millis() as i64;
        let mut sends: Vec<Instant> = state
            .sends_ms
            .iter()
            .filter(|&&ms| ms + longest_ms > now_ms)
            .filter_map(|&ms| instant_at(ms.min(now_ms), now, now_ms))
            .collect();
        sends.sort();
        self.log = sends.into();
        self.prune(now);
        if let Some(p) = state
            .pause_until_ms
            .filter(|&ms| ms > now_ms)
            .and_then(|ms| instant_at(ms, now, now_ms))
        {
            self.pause(p);
        }
    }
}

impl PersistedWindows {
    /// `[version][has pause u8][pause i64 BE][count u32 BE][count × i64 BE]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(14 + 8 * self.sends_ms.len());
        out.push(STATE_VERSION);
        out.push(u8::from(self.pause_until_ms.is_some()));
        out.extend_from_slice(&self.pause_until_ms.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&(self.sends_ms.len() as u32).to_be_bytes());
        for ms in &self.sends_ms {
            out.extend_from_slice(&ms.to_be_bytes());
        }
        out
    }

    /// Decodes [`Self::encode`]'s output; the error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let (&version, rest) = bytes.split_first().ok_or("empty limiter state")?;
        if version != STATE_VERSION {
            return Err(format!(
                "limiter state version {version}, this build reads {STATE_VERSION}"
            ));
        }
        let (head, sends) = rest
            .split_at_checked(13)
            .ok_or("limiter state shorter than its header")?;
        let pause = i64::from_be_bytes(head[1..9].try_into().expect("8 bytes"));
        let count = u32::from_be_bytes(head[9..13].try_into().expect("4 bytes")) as usize;
        if sends.len() != count * 8 {
            return Err(format!(
                "limiter state says {count} send times but holds {} bytes of them",
                sends.len()
            ));
        }
        Ok(Self {
            sends_ms: sends
                .chunks_exact(8)
                .map(|c| i64::from_be_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            pause_until_ms: (head[0] != 0).then_some(pause),
        })
    }
}

// ===== Actor =====

/// The state shown in `tree` and `pipelines`, shared between an actor and its [`ChildSpec`].
pub type SharedView = Arc<Mutex<Option<serde_json::Value>>>;

/// The rate limiter actor (stateless shell; see [`RateLimiterState`]).
pub struct RateLimiter;

/// What a rate limiter starts with.
pub struct RateLimiterArgs {
    /// The pipeline (`sec`): labels, logs and the journal key `limiter/<pipeline>`.
    pub pipeline: String,
    /// Every window enforced at once.
    pub windows: Vec<RateWindow>,
    /// Where the state is persisted.
    pub journal: Journal,
    /// How long the source pauses after a throttle signal that named no time.
    pub throttle_cooldown: Duration,
    /// Where the actor publishes its [`LimiterView`] as JSON after every change (for
    /// [`ChildSpec::detail`]); pass `SharedView::default()` when nobody reads it.
    pub view: SharedView,
    /// Cluster mode: every permit and pause goes through the cluster's store, so the windows
    /// hold for all nodes together (`cluster/permits.rs`). None: this node alone.
    pub shared: Option<crate::cluster::Permits>,
}

/// What a granted permit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// An ordinary permit.
    Permit,
    /// Cluster mode: the one request the whole cluster lets through once a shared breaker's
    /// open window has passed. Its node's breaker takes it as its probe, so its outcome closes
    /// the window for every node or opens it again (`cluster/permits.rs`).
    ClusterProbe,
}

/// Why a permit was not granted: the caller should come back later (the job waits without
/// spending an attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The source is paused after a throttle signal, for this much longer.
    Paused {
        /// Time left in the pause.
        remaining: Duration,
    },
    /// Cluster mode: a node's circuit breaker opened on the source, for this much longer.
    BreakerOpen {
        /// Time left in the open window.
        remaining: Duration,
    },
    /// Every permit for longer than [`MAX_PERMIT_WAIT`] is spoken for (a spent daily quota).
    WindowsFull {
        /// When this caller's permit would have been free, from now.
        free_in: Duration,
    },
}

/// Messages a rate limiter accepts.
pub enum RateLimiterMsg {
    /// Answered `Ok` when the caller may send (FIFO among waiters; the permit is counted at
    /// that moment), or at once with a [`Refusal`].
    Acquire(RpcReplyPort<Result<Grant, Refusal>>),
    /// The upstream asked us to slow down: pause the whole source (never shortening a pause).
    Throttle {
        /// How long it asked for (`Retry-After`); wins when given.
        retry_after: Option<Duration>,
        /// A daily quota is spent: pause until the next UTC midnight.
        until_next_utc_day: bool,
    },
    /// The state, for the admin `pipelines` command.
    State(RpcReplyPort<LimiterView>),
    /// Internal: the grant timer fired.
    Tick,
    /// Internal: the save timer fired.
    Flush,
}

/// The limiter as the admin `pipelines` command shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimiterView {
    /// The windows, as written in config (`"5/m"`).
    pub windows: Vec<String>,
    /// Permits counted in each window now.
    pub in_window: Vec<u32>,
    /// End of the throttle pause (RFC 3339), when paused.
    pub paused_until: Option<String>,
    /// Callers waiting for a permit.
    pub waiting: usize,
}

/// A caller waiting for a permit.
struct Waiter {
    reply: RpcReplyPort<Result<Grant, Refusal>>,
    since: Instant,
}

/// A pending timer and when it fires.
type Timer = (
    Instant,
    JoinHandle<Result<(), MessagingErr<RateLimiterMsg>>>,
);

/// A rate limiter's mutable state.
pub struct RateLimiterState {
    pipeline: String,
    /// `root/pipeline:<name>/limiter`, for logs.
    path: String,
    /// `limiter/<pipeline>`.
    key: String,
    core: SlidingWindows,
    journal: Journal,
    cooldown: Duration,
    waiters: VecDeque<Waiter>,
    /// The one grant (or pause-end) timer.
    timer: Option<Timer>,
    /// State changed since it was last saved.
    dirty: bool,
    last_save: Option<Instant>,
    save_timer: Option<JoinHandle<Result<(), MessagingErr<RateLimiterMsg>>>>,
    view: SharedView,
    /// What the paused gauge says now.
    gauge_paused: bool,
    /// Cluster mode's shared permits (see [`RateLimiterArgs::shared`]).
    shared: Option<crate::cluster::Permits>,
}

impl RateLimiterState {
    /// Answers `Acquire`: queue the caller, or refuse at once.
    fn acquire(
        &mut self,
        me: &ActorRef<RateLimiterMsg>,
        reply: RpcReplyPort<Result<Grant, Refusal>>,
    ) {
        let now = Instant::now();
        if let Some(until) = self.core.paused(now) {
            let _ = reply.send(Err(Refusal::Paused {
                remaining: until - now,
            }));
            return;
        }
        let free_at = self.grant_time_after_queue(now);
        if free_at > now + MAX_PERMIT_WAIT {
            let _ = reply.send(Err(Refusal::WindowsFull {
                free_in: free_at - now,
            }));
            return;
        }
        self.waiters.push_back(Waiter { reply, since: now });
        self.pump(me);
    }

    /// When a caller joining the queue now would be granted, if every waiter ahead takes its
    /// permit as soon as it is free.
    fn grant_time_after_queue(&self, now: Instant) -> Instant {
        if self.waiters.is_empty() {
            return self.core.next_free(now);
        }
        let mut sim = self.core.clone();
        let mut t = now;
        for _ in &self.waiters {
            t = sim.next_free(t);
            sim.take(t);
        }
        sim.next_free(t)
    }

    /// Grants every waiter whose permit is free now and arms the timer for the next one.
    fn pump(&mut self, me: &ActorRef<RateLimiterMsg>) {
        let now = Instant::now();
        if let Some(until) = self.core.paused(now) {
            for w in self.waiters.drain(..) {
                let _ = w.reply.send(Err(Refusal::Paused {
                    remaining: until - now,
                }));
            }
            self.arm(me, until, now);
            return;
        }
        let mut granted = false;
        while let Some(w) = self.waiters.front() {
            if w.reply.is_closed() {
                // The caller gave up (call timeout): no request leaves, so no permit is used.
                self.waiters.pop_front();
                continue;
            }
            let at = self.core.next_free(now);
            if at > now {
                self.arm(me, at, now);
                break;
            }
            let w = self.waiters.pop_front().expect("front exists");
            if w.reply.send(Ok(Grant::Permit)).is_ok() {
                self.core.take(now);
                granted = true;
                metrics::histogram!(RATE_LIMITER_WAIT, "pipeline" => self.pipeline.clone())
                    .record((now - w.since).as_secs_f64());
            }
        }
        if self.waiters.is_empty() {
            self.disarm();
        }
        if granted {
            self.changed(me, now);
        }
    }

    /// Makes sure the one timer fires at `at`.
    fn arm(&mut self, me: &ActorRef<RateLimiterMsg>, at: Instant, now: Instant) {
        if self.timer.as_ref().is_some_and(|(t, _)| *t == at) {
            return;
        }
        self.disarm();
        let handle = me.send_after(at - now, || RateLimiterMsg::Tick);
        self.timer = Some((at, handle));
    }

    fn disarm(&mut self) {
        if let Some((_, handle)) = self.timer.take() {
            handle.abort();
        }
    }

    /// The grant timer fired: the pause may be over, a permit may be free.
    async fn tick(&mut self, me: &ActorRef<RateLimiterMsg>) {
        self.timer = None;
        self.pump_any(me).await;
    }

    /// Answers `Throttle`: pause the source and persist the pause at once (in cluster mode,
    /// for every node).
    async fn throttle(
        &mut self,
        me: &ActorRef<RateLimiterMsg>,
        retry_after: Option<Duration>,
        until_next_utc_day: bool,
    ) {
        let (now, wall) = (Instant::now(), now_ms());
        let (until, why) = match (retry_after, until_next_utc_day) {
            (Some(d), _) => (now + d, "retry-after"),
            (None, true) => (
                now + Duration::from_millis((next_utc_midnight(wall) - wall) as u64),
                "daily quota spent",
            ),
            (None, false) => (now + self.cooldown, "cool-down"),
        };
        if self.core.pause(until) {
            let until_ms = wall_ms(until, now, wall);
            info!(actor = %self.path, pipeline = %self.pipeline, until = %rfc3339_ms(until_ms), reason = why, "source paused after a throttle signal");
        }
        self.dirty = true;
        self.save(now);
        if let Some(p) = self.shared.clone() {
            if let Err(e) = p.pause(&self.pipeline, until - now).await {
                warn!(actor = %self.path, pipeline = %self.pipeline, error = %e.message(),
                    "the pause could not be shared with the other nodes; it holds on this one");
            }
        }
        self.pump_any(me).await;
    }

    /// Grants what may be granted: through the cluster's store in cluster mode, else from this
    /// node's windows.
    async fn pump_any(&mut self, me: &ActorRef<RateLimiterMsg>) {
        match self.shared.clone() {
            Some(p) => self.pump_shared(me, &p).await,
            None => self.pump(me),
        }
    }

    /// [`RateLimiterState::pump`] in cluster mode: each permit is asked of the store, which
    /// counts every node's grants; this node's windows only mirror its own, for the view.
    async fn pump_shared(&mut self, me: &ActorRef<RateLimiterMsg>, p: &crate::cluster::Permits) {
        use crate::cluster::Permit;
        let now = Instant::now();
        if let Some(until) = self.core.paused(now) {
            self.refuse_all(Refusal::Paused {
                remaining: until - now,
            });
            self.arm(me, until, now);
            return;
        }
        while let Some(w) = self.waiters.front() {
            if w.reply.is_closed() {
                self.waiters.pop_front();
                continue;
            }
            let asked = p
                .acquire(&self.pipeline, self.core.windows(), CLUSTER_SEND_GUARD)
                .await;
            let now = Instant::now();
            let grant = match asked {
                Ok(Permit::Granted) => Grant::Permit,
                Ok(Permit::Probe) => Grant::ClusterProbe,
                other => return self.refused_shared(me, other, now),
            };
            let w = self.waiters.pop_front().expect("front exists");
            metrics::histogram!(RATE_LIMITER_WAIT, "pipeline" => self.pipeline.clone())
                .record((now - w.since).as_secs_f64());
            // A caller that gave up meanwhile wastes this permit: never more than the windows
            // allow, at worst fewer (and a wasted probe lease ends with its lease).
            if w.reply.send(Ok(grant)).is_ok() {
                self.core.take(now);
            }
        }
        self.disarm();
    }

    /// What the store's refusal (or failure) means for this node's waiters: wait for a permit
    /// that frees soon, else refuse them all, saying for how long.
    fn refused_shared(
        &mut self,
        me: &ActorRef<RateLimiterMsg>,
        asked: Result<crate::cluster::Permit, crate::postgres::Failure>,
        now: Instant,
    ) {
        use crate::cluster::Permit;
        let why = match asked {
            Ok(Permit::Granted | Permit::Probe) => return,
            Ok(Permit::FreeIn(free_in)) if free_in <= MAX_PERMIT_WAIT => {
                return self.arm(me, now + free_in, now);
            }
            Ok(Permit::FreeIn(free_in)) => Refusal::WindowsFull { free_in },
            // Not a throttle: this node's windows and pause stay as they are.
            Ok(Permit::BreakerOpen(remaining)) => Refusal::BreakerOpen { remaining },
            Ok(Permit::Paused(remaining)) => {
                self.core.pause(now + remaining);
                self.refuse_all(Refusal::Paused { remaining });
                return self.arm(me, now + remaining, now);
            }
            Err(e) => {
                warn!(actor = %self.path, pipeline = %self.pipeline, error = %e.message(),
                    "no permit: the cluster store cannot be asked; the jobs wait");
                Refusal::WindowsFull {
                    free_in: STORE_RETRY,
                }
            }
        };
        self.refuse_all(why);
        self.disarm();
    }

    /// Refuses every waiter with `why`.
    fn refuse_all(&mut self, why: Refusal) {
        for w in self.waiters.drain(..) {
            let _ = w.reply.send(Err(why));
        }
    }

    /// Notes a change of the persisted state and saves it, at most every [`SAVE_EVERY`].
    fn changed(&mut self, me: &ActorRef<RateLimiterMsg>, now: Instant) {
        self.dirty = true;
        match self.last_save {
            Some(last) if now < last + SAVE_EVERY => {
                if self.save_timer.is_none() {
                    let wait = last + SAVE_EVERY - now;
                    self.save_timer = Some(me.send_after(wait, || RateLimiterMsg::Flush));
                }
            }
            _ => self.save(now),
        }
    }

    /// Writes the state to the journal if it changed. A failure is logged, not fatal: the
    /// limiter keeps limiting from memory, and a restart would only lose the latest entries.
    fn save(&mut self, now: Instant) {
        if let Some(t) = self.save_timer.take() {
            t.abort();
        }
        if !self.dirty {
            return;
        }
        let bytes = self.core.to_persisted(now, now_ms()).encode();
        match self.journal.meta_put(&self.key, &bytes) {
            Ok(()) => {
                // Ask for durability without waiting for it: the handler never blocks on disk.
                let journal = self.journal.clone();
                let (path, pipeline) = (self.path.clone(), self.pipeline.clone());
                tokio::spawn(async move {
                    if let Err(error) = journal.durable().await {
                        warn!(actor = %path, %pipeline, %error, "limiter state not made durable");
                    }
                });
            }
            Err(error) => {
                warn!(actor = %self.path, pipeline = %self.pipeline, %error, "could not save the limiter state")
            }
        }
        self.dirty = false;
        self.last_save = Some(now);
    }

    /// The view for `pipelines`.
    fn view(&self) -> LimiterView {
        let (now, wall) = (Instant::now(), now_ms());
        LimiterView {
            windows: self.core.windows().iter().map(format_window).collect(),
            in_window: self.core.in_window(now),
            paused_until: self
                .core
                .paused(now)
                .map(|p| rfc3339_ms(wall_ms(p, now, wall))),
            waiting: self.waiters.len(),
        }
    }

    /// Publishes the view and the paused gauge.
    fn publish(&mut self) {
        let paused = self.core.paused(Instant::now()).is_some();
        if paused != self.gauge_paused {
            self.gauge_paused = paused;
            metrics::gauge!(RATE_LIMITER_PAUSED, "pipeline" => self.pipeline.clone())
                .set(f64::from(u8::from(paused)));
        }
        let view = serde_json::to_value(self.view()).ok();
        *self.view.lock().unwrap_or_else(|e| e.into_inner()) = view;
    }
}

impl Actor for RateLimiter {
    type Msg = RateLimiterMsg;
    type State = RateLimiterState;
    type Arguments = RateLimiterArgs;

    async fn pre_start(
        &self,
        me: ActorRef<RateLimiterMsg>,
        args: RateLimiterArgs,
    ) -> Result<RateLimiterState, ActorProcessingErr> {
        let key = format!("limiter/{}", args.pipeline);
        let path = format!("root/pipeline:{}/limiter", args.pipeline);
        let mut core = SlidingWindows::new(args.windows).with_guard(SEND_GUARD);
        // A journal that cannot be read fails the start (the supervisor retries); a value that
        // cannot be decoded is logged and dropped, since nothing better can be made of it.
        if let Some(bytes) = args.journal.meta_get(&key)? {
            match PersistedWindows::decode(&bytes) {
                Ok(saved) => core.restore(&saved, Instant::now(), now_ms()),
                Err(error) => {
                    warn!(actor = %path, pipeline = %args.pipeline, %error, "ignoring unreadable limiter state")
                }
            }
        }
        metrics::gauge!(RATE_LIMITER_PAUSED, "pipeline" => args.pipeline.clone()).set(0.0);
        let mut st = RateLimiterState {
            pipeline: args.pipeline,
            path,
            key,
            core,
            journal: args.journal,
            cooldown: args.throttle_cooldown,
            waiters: VecDeque::new(),
            timer: None,
            dirty: false,
            last_save: None,
            save_timer: None,
            view: args.view,
            gauge_paused: false,
            shared: args.shared,
        };
        // A pause carried over a restart needs its end timer (for the gauge and the view).
        st.pump(&me);
        st.publish();
        Ok(st)
    }

    async fn handle(
        &self,
        me: ActorRef<RateLimiterMsg>,
        msg: RateLimiterMsg,
        st: &mut RateLimiterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RateLimiterMsg::Acquire(reply) if st.shared.is_some() => {
                st.waiters.push_back(Waiter {
                    reply,
                    since: Instant::now(),
                });
                st.pump_any(&me).await;
            }
            RateLimiterMsg::Acquire(reply) => st.acquire(&me, reply),
            RateLimiterMsg::Throttle {
                retry_after,
                until_next_utc_day,
            } => st.throttle(&me, retry_after, until_next_utc_day).await,
            RateLimiterMsg::State(reply) => {
                let _ = reply.send(st.view());
            }
            RateLimiterMsg::Tick => st.tick(&me).await,
            RateLimiterMsg::Flush => st.save(Instant::now()),
        }
        st.publish();
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<RateLimiterMsg>,
        st: &mut RateLimiterState,
    ) -> Result<(), ActorProcessingErr> {
        st.disarm();
        st.save(Instant::now());
        Ok(())
    }
}

// ===== Recipe =====

/// The recipe for a pipeline's `limiter` child. Keeps the [`Link`] the gate uses pointed at the
/// current incarnation and the last view for `tree`.
pub struct LimiterSpec {
    pipeline: String,
    windows: Vec<RateWindow>,
    journal: Journal,
    throttle_cooldown: Duration,
    incarnation: Incarnation<RateLimiterMsg>,
    view: SharedView,
    shared: Option<crate::cluster::Permits>,
}

impl LimiterSpec {
    /// A recipe for the limiter of `pipeline`; `shared` in cluster mode.
    pub fn new(
        pipeline: impl Into<String>,
        windows: Vec<RateWindow>,
        throttle_cooldown: Duration,
        journal: Journal,
        shared: Option<crate::cluster::Permits>,
    ) -> Arc<Self> {
        Arc::new(Self {
            pipeline: pipeline.into(),
            windows,
            journal,
            throttle_cooldown,
            incarnation: Incarnation::default(),
            view: SharedView::default(),
            shared,
        })
    }

    /// The link to the current incarnation (empty while it restarts).
    pub fn link(&self) -> Link<RateLimiterMsg> {
        self.incarnation.link()
    }
}

impl ChildSpec for LimiterSpec {
    fn name(&self) -> String {
        "limiter".into()
    }
    fn kind(&self) -> &'static str {
        "limiter"
    }
    fn spawn(
        &self,
        supervisor: ActorCell,
        _path: String,
    ) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
        let args = RateLimiterArgs {
            pipeline: self.pipeline.clone(),
            windows: self.windows.clone(),
            journal: self.journal.clone(),
            throttle_cooldown: self.throttle_cooldown,
            view: self.view.clone(),
            shared: self.shared.clone(),
        };
        spawn_child(RateLimiter, args, supervisor)
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
    use rand::{Rng, SeedableRng};

    use super::*;

    fn w(limit: u32, secs: u64) -> RateWindow {
        RateWindow {
            limit,
            per: Duration::from_secs(secs),
        }
    }

    /// Ensures that every documented spelling of a rate limit parses to its windows.
    #[test]
    fn parses_good_rate_limits() {
        assert_eq!(parse_rate_limit("10/s"), Ok(vec![w(10, 1)]));
        assert_eq!(
            parse_rate_limit("5/m, 25/d"),
            Ok(vec![w(5, 60), w(25, 86_400)])
        );
        assert_eq!(parse_rate_limit("100/h"), Ok(vec![w(100, 3_600)]));
        assert_eq!(parse_rate_limit("2/10s"), Ok(vec![w(2, 10)]));
        assert_eq!(
            parse_rate_limit(" 3 / min ,1/1h30m"),
            Ok(vec![w(3, 60), w(1, 5_400)])
        );
        for text in ["10/s", "5/m", "25/d", "100/h", "2/10s"] {
            let parsed = parse_rate_limit(text).unwrap();
            assert_eq!(format_window(&parsed[0]), text);
        }
    }

    /// Ensures that bad rate limits are refused with a message naming what was expected and
    /// what came.
    #[test]
    fn refuses_bad_rate_limits_saying_why() {
        let err = |s: &str| parse_rate_limit(s).unwrap_err();
        assert_eq!(
            err("ten"),
            r#"expected windows like "10/s" or "5/m, 25/d", got "ten""#
        );
        assert_eq!(
            err(""),
            r#"expected windows like "10/s" or "5/m, 25/d", got """#
        );
        assert_eq!(
            err("5/m, ten"),
            r#"expected windows like "10/s" or "5/m, 25/d", got "ten" in "5/m, ten""#
        );
        assert_eq!(
            err("0/s"),
            r#"expected a limit of at least 1 before the slash, got "0/s""#
        );
        assert_eq!(
            err("x/s"),
            r#"expected a whole number of requests before the slash, got "x" in "x/s""#
        );
        assert_eq!(
            err("-1/s"),
            r#"expected a whole number of requests before the slash, got "-1" in "-1/s""#
        );
        assert_eq!(
            err("5/fortnight"),
            r#"expected a window length after the slash (s, m, h, d or a length like 10s), got "fortnight" in "5/fortnight""#
        );
        assert!(err("5/").contains(r#"got "" in "5/""#), "{}", err("5/"));
        assert!(err("5/0s").contains("window length"));
        assert!(err("5/s,").contains(r#"got "" in "5/s,""#));
    }

    /// Ensures that the (limit)-th grant after a full burst comes exactly one window after the
    /// burst's first grant, and that the slower window takes over once it is full.
    #[test]
    fn burst_waits_exactly_one_window() {
        let t0 = Instant::now();
        let mut sw = SlidingWindows::new(vec![w(5, 1), w(12, 60)]);
        for _ in 0..5 {
            assert_eq!(sw.next_free(t0), t0);
            sw.take(t0);
        }
        assert_eq!(sw.next_free(t0), t0 + Duration::from_secs(1), "6th request");
        assert_eq!(sw.in_window(t0), vec![5, 5]);
        let mut t = t0;
        for _ in 5..12 {
            t = sw.next_free(t);
            sw.take(t);
        }
        // 12 within the minute (at 0 s ×5, 1 s ×5, 2 s ×2): the 13th waits for the first to age.
        assert_eq!(t, t0 + Duration::from_secs(2));
        assert_eq!(sw.next_free(t), t0 + Duration::from_secs(60));
        assert_eq!(sw.in_window(t0 + Duration::from_secs(59)), vec![0, 12]);
    }

    /// Ensures that under random bursts of demand over a long simulated period, greedy grants at
    /// `next_free` never put more than its limit into ANY sliding window of each length (checked
    /// by brute force over the grant log), that no grant is later than necessary, and that the
    /// log stays bounded by the largest limit.
    #[test]
    fn sliding_windows_hold_under_random_bursts() {
        let windows = vec![w(5, 1), w(12, 60), w(40, 600)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let t0 = Instant::now();
        // Demand: bursts of 1..=15 requests at random ms offsets over six simulated hours.
        let mut arrivals = Vec::new();
        let mut at_ms = 0u64;
        while at_ms < 6 * 3_600_000 {
            at_ms += rng.random_range(0..120_000);
            for _ in 0..rng.random_range(1..=15) {
                arrivals.push(at_ms + rng.random_range(0..500));
            }
        }
        arrivals.sort();
        let mut sw = SlidingWindows::new(windows.clone());
        let mut grants: Vec<u64> = Vec::with_capacity(arrivals.len());
        let mut last = t0;
        for &a in &arrivals {
            let ready = last.max(t0 + Duration::from_millis(a));
            let t = sw.next_free(ready);
            sw.take(t);
            assert!(sw.log.len() <= 40, "log bounded by the largest limit");
            last = t;
            grants.push((t - t0).as_millis() as u64);
        }
        assert!(grants.len() > 1_000, "a real workload: {}", grants.len());
        for win in &windows {
            let per = win.per.as_millis() as u64;
            // The fullest half-open window [s, s + per) starts at a grant.
            for (i, &start) in grants.iter().enumerate() {
                let inside = grants[i..].iter().take_while(|&&g| g < start + per).count();
                assert!(
                    inside <= win.limit as usize,
                    "{} grants in the {} window starting at {start} ms",
                    inside,
                    format_window(win)
                );
            }
        }
        // Not slower than necessary: a grant later than its arrival (and than the previous
        // grant) would have broken some window one millisecond earlier.
        for i in 0..grants.len() {
            let earliest = arrivals[i].max(if i == 0 { 0 } else { grants[i - 1] });
            if grants[i] == earliest {
                continue;
            }
            let probe = grants[i] - 1;
            let blocked = windows.iter().any(|win| {
                let per = win.per.as_millis() as u64;
                grants[..i].iter().filter(|&&g| g + per > probe).count() >= win.limit as usize
            });
            assert!(
                blocked,
                "grant {i} at {} ms could have gone at {probe} ms",
                grants[i]
            );
        }
    }

    /// Ensures that a pause never shortens an earlier, longer one.
    #[test]
    fn pause_only_extends() {
        let t0 = Instant::now();
        let mut sw = SlidingWindows::new(vec![w(1, 1)]);
        assert!(sw.pause(t0 + Duration::from_secs(60)));
        assert!(!sw.pause(t0 + Duration::from_secs(10)));
        assert_eq!(sw.paused(t0), Some(t0 + Duration::from_secs(60)));
        assert!(sw.pause(t0 + Duration::from_secs(90)));
        assert_eq!(sw.paused(t0 + Duration::from_secs(90)), None);
    }

    /// Ensures that the next UTC midnight is computed from fixed timestamps, including exactly
    /// at midnight and before 1970.
    #[test]
    fn next_utc_midnight_from_fixed_timestamps() {
        // 2026-11-28T10:00:00.123Z → 2026-11-29T00:00:00Z
        assert_eq!(next_utc_midnight(1_795_860_000_123), 1_795_910_400_000);
        assert_eq!(rfc3339_ms(1_795_910_400_000), "2026-11-29T00:00:00.000Z");
        // Exactly midnight → the next one.
        assert_eq!(next_utc_midnight(1_795_910_400_000), 1_795_996_800_000);
        // One ms before midnight.
        assert_eq!(next_utc_midnight(1_795_910_399_999), 1_795_910_400_000);
        assert_eq!(next_utc_midnight(-1), 0);
    }

    /// Ensures that the persisted state round-trips through its encoding and, restored in
    /// another "process" (another Instant base) ten wall-clock seconds later, keeps the window
    /// counts, the grant times and the pause.
    #[test]
    fn persisted_state_round_trips_across_clocks() {
        let windows = vec![w(5, 60), w(25, 86_400)];
        let base_ms = 1_795_860_000_000;
        let t0 = Instant::now();
        let mut sw = SlidingWindows::new(windows.clone());
        for s in [0, 10, 20] {
            sw.take(t0 + Duration::from_secs(s));
        }
        sw.pause(t0 + Duration::from_secs(90));
        let saved = sw.to_persisted(t0 + Duration::from_secs(30), base_ms + 30_000);
        assert_eq!(
            saved,
            PersistedWindows {
                sends_ms: vec![base_ms, base_ms + 10_000, base_ms + 20_000],
                pause_until_ms: Some(base_ms + 90_000),
            }
        );
        let bytes = saved.encode();
        assert_eq!(PersistedWindows::decode(&bytes), Ok(saved.clone()));

        let t1 = Instant::now() + Duration::from_secs(1_000); // unrelated monotonic base
        let now_ms = base_ms + 40_000;
        let mut back = SlidingWindows::new(windows);
        back.restore(&PersistedWindows::decode(&bytes).unwrap(), t1, now_ms);
        assert_eq!(back.in_window(t1), vec![3, 3]);
        assert_eq!(back.paused(t1), Some(t1 + Duration::from_secs(50)));
        // The first grant (40 s ago) leaves the minute window in 20 s.
        for _ in 0..2 {
            back.take(t1);
        }
        assert_eq!(back.next_free(t1), t1 + Duration::from_secs(20));

        // Old entries are dropped, an expired pause is forgotten.
        let mut later = SlidingWindows::new(vec![w(5, 60)]);
        later.restore(&saved, t1, base_ms + 3_600_000);
        assert_eq!((later.in_window(t1), later.paused(t1)), (vec![0], None));
    }

    /// Ensures that an unreadable persisted state is refused with a reason.
    #[test]
    fn corrupt_state_is_refused() {
        let good = PersistedWindows {
            sends_ms: vec![1, 2],
            pause_until_ms: None,
        }
        .encode();
        assert!(PersistedWindows::decode(&[]).is_err());
        assert!(PersistedWindows::decode(&[9])
            .unwrap_err()
            .contains("version 9"));
        assert!(PersistedWindows::decode(&good[..good.len() - 1])
            .unwrap_err()
            .contains("says 2 send times"));
        assert!(PersistedWindows::decode(&good[..5]).is_err());
    }

    // ===== Actor tests (paused clock) =====

    struct Rig {
        _dir: tempfile::TempDir,
        journal: Journal,
    }

    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        Rig { _dir: dir, journal }
    }

    async fn spawn(journal: &Journal, windows: Vec<RateWindow>) -> ActorRef<RateLimiterMsg> {
        let args = RateLimiterArgs {
            pipeline: "test".into(),
            windows,
            journal: journal.clone(),
            throttle_cooldown: Duration::from_secs(45),
            view: SharedView::default(),
            shared: None,
        };
        Actor::spawn(None, RateLimiter, args).await.unwrap().0
    }

    async fn acquire(l: &ActorRef<RateLimiterMsg>) -> Result<Grant, Refusal> {
        ractor::call!(l, RateLimiterMsg::Acquire).unwrap()
    }

    async fn state(l: &ActorRef<RateLimiterMsg>) -> LimiterView {
        ractor::call!(l, RateLimiterMsg::State).unwrap()
    }

    fn throttle(retry_after: Option<Duration>, until_next_utc_day: bool) -> RateLimiterMsg {
        RateLimiterMsg::Throttle {
            retry_after,
            until_next_utc_day,
        }
    }

    fn remaining(r: Result<Grant, Refusal>) -> Duration {
        match r {
            Err(Refusal::Paused { remaining }) => remaining,
            other => panic!("expected a pause, got {other:?}"),
        }
    }

    /// Ensures that the actor grants queued waiters in order at the right paused-clock instants
    /// (2 per second: 0, 0, 1, 1, 2 s, each window widened by the send guard) without blocking: `State` is answered while they wait.
    #[tokio::test(start_paused = true)]
    async fn grants_waiters_on_time() {
        let rig = rig();
        let l = spawn(&rig.journal, vec![w(2, 1)]).await;
        let t0 = Instant::now();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..5 {
            let (l, tx) = (l.clone(), tx.clone());
            tokio::spawn(async move {
                acquire(&l).await.unwrap();
                tx.send((i, Instant::now() - t0)).unwrap();
            });
        }
        tokio::task::yield_now().await;
        let view = state(&l).await;
        assert_eq!((view.waiting, view.in_window.clone()), (3, vec![2]));
        assert_eq!(view.windows, vec!["2/s".to_string()]);
        // Each window is widened by SEND_GUARD (25 ms) in the actor.
        for (expect_i, expect_ms) in [(0, 0), (1, 0), (2, 1025), (3, 1025), (4, 2050)] {
            let (i, at) = rx.recv().await.unwrap();
            assert_eq!(i, expect_i, "FIFO");
            let want = Duration::from_millis(expect_ms);
            assert!(
                at >= want && at < want + Duration::from_millis(10),
                "waiter {i} at {at:?}"
            );
        }
        l.stop_and_wait(None, None).await.unwrap();
    }

    /// Ensures that a caller that gave up waiting uses no permit, and that a wait longer than
    /// MAX_PERMIT_WAIT is refused with its length instead of queued.
    #[tokio::test(start_paused = true)]
    async fn skips_abandoned_waiters_and_refuses_long_waits() {
        let rig = rig();
        let l = spawn(&rig.journal, vec![w(1, 1)]).await;
        let t0 = Instant::now();
        acquire(&l).await.unwrap();
        let gave_up = l
            .call(RateLimiterMsg::Acquire, Some(Duration::from_millis(100)))
            .await
            .unwrap();
        assert!(matches!(gave_up, ractor::rpc::CallResult::Timeout));
        acquire(&l).await.unwrap();
        let at = Instant::now() - t0;
        assert!(
            at >= Duration::from_millis(1_025) && at < Duration::from_millis(1_035),
            "{at:?}"
        );
        l.stop_and_wait(None, None).await.unwrap();

        let l = spawn(&rig.journal, vec![w(1, 60)]).await;
        // The previous incarnation's last grant (just now, loaded back from the journal) fills
        // this minute window: the next permit is about a minute away, more than MAX_PERMIT_WAIT.
        match acquire(&l).await {
            Err(Refusal::WindowsFull { free_in }) => assert!(
                free_in > Duration::from_secs(59)
                    && free_in <= Duration::from_secs(60) + SEND_GUARD,
                "{free_in:?}"
            ),
            other => panic!("expected a refusal, got {other:?}"),
        }
        l.stop_and_wait(None, None).await.unwrap();
    }

    /// Ensures that a throttle signal pauses the source for its Retry-After, then for the
    /// default cool-down when it names no time, that a shorter later pause does not shorten it,
    /// that waiters are answered with the pause at once, and that the source resumes after it.
    #[tokio::test(start_paused = true)]
    async fn throttle_pauses_for_retry_after_then_cooldown() {
        let rig = rig();
        let l = spawn(&rig.journal, vec![w(1, 1)]).await;
        acquire(&l).await.unwrap();
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { acquire(&l).await })
        };
        tokio::task::yield_now().await;
        l.cast(throttle(Some(Duration::from_secs(30)), false))
            .unwrap();
        assert_eq!(remaining(waiter.await.unwrap()), Duration::from_secs(30));
        assert!(state(&l).await.paused_until.is_some());
        l.cast(throttle(Some(Duration::from_secs(5)), false))
            .unwrap();
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(remaining(acquire(&l).await), Duration::from_secs(1));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(acquire(&l).await, Ok(Grant::Permit));
        assert_eq!(state(&l).await.paused_until, None);

        l.cast(throttle(None, false)).unwrap();
        assert_eq!(
            remaining(acquire(&l).await),
            Duration::from_secs(45),
            "cool-down"
        );

        let before = now_ms();
        l.cast(throttle(None, true)).unwrap();
        let left = remaining(acquire(&l).await);
        let after = now_ms();
        // The wall clock runs on while the paused one does not: the wait to midnight was taken
        // somewhere between `before` and `after`. The longer of it and the cool-down wins.
        let to_midnight = |wall: i64| {
            let ms = (next_utc_midnight(before) - wall) as u64;
            Duration::from_millis(ms).max(Duration::from_secs(45))
        };
        assert!(
            left <= to_midnight(before) && left >= to_midnight(after),
            "{left:?} vs {:?}",
            to_midnight(before)
        );
        l.stop_and_wait(None, None).await.unwrap();
    }

    /// Ensures that the limiter's state survives a restart on the same journal: the window
    /// counts and the pause are loaded back, so the restarted limiter is still paused.
    #[tokio::test(start_paused = true)]
    async fn state_survives_a_restart() {
        let rig = rig();
        let windows = vec![w(5, 60), w(25, 86_400)];
        let l = spawn(&rig.journal, windows.clone()).await;
        for _ in 0..3 {
            acquire(&l).await.unwrap();
        }
        l.cast(throttle(Some(Duration::from_secs(120)), false))
            .unwrap();
        assert!(state(&l).await.paused_until.is_some());
        // The pause was written at once, without waiting for the 100 ms save interval.
        let saved =
            PersistedWindows::decode(&rig.journal.meta_get("limiter/test").unwrap().unwrap())
                .unwrap();
        assert_eq!(saved.sends_ms.len(), 3);
        assert!(saved.pause_until_ms.is_some());
        l.stop_and_wait(None, None).await.unwrap();

        let again = spawn(&rig.journal, windows).await;
        let view = state(&again).await;
        assert_eq!(view.in_window, vec![3, 3]);
        assert!(view.paused_until.is_some());
        let left = remaining(acquire(&again).await);
        assert!(
            left > Duration::from_secs(118) && left <= Duration::from_secs(120),
            "{left:?}"
        );
        again.stop_and_wait(None, None).await.unwrap();
    }

    /// Ensures that the recipe publishes the limiter's view for `tree` and points its link at
    /// the running incarnation, clearing it when that one goes down.
    #[tokio::test(start_paused = true)]
    async fn spec_links_and_publishes_detail() {
        let rig = rig();
        let spec = LimiterSpec::new(
            "test",
            vec![w(5, 60)],
            Duration::from_secs(45),
            rig.journal.clone(),
            None,
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
        let l = spec.link().get().expect("linked after start");
        acquire(&l).await.unwrap();
        assert_eq!(spec.name(), "limiter");
        let detail = spec.detail().unwrap();
        assert_eq!(detail["windows"], serde_json::json!(["5/m"]));
        assert_eq!(detail["in_window"], serde_json::json!([1]));
        sup.stop_and_wait(None, None).await.unwrap();
        assert!(spec.link().get().is_none());
    }
}
