//! What an ingestion task needs to talk to its upstream API politely: a [`Gate`] that every
//! request passes (a rate-limit permit first, then the circuit breaker's admission) and that is
//! told each request's [`Verdict`], so that throttle signals pause the whole source and
//! transient failures count towards opening the breaker.
//!
//! The gate of a real pipeline is its limiter and breaker actors (`pipeline/gate.rs`); tests of
//! the HTTP tasks use an always-open gate.

use std::time::Duration;

use futures::future::BoxFuture;

/// How one upstream request ended, as the gate needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The upstream answered usefully (including a definite "no such ticker").
    Ok,
    /// Connect error, timeout, 5xx, truncated or non-JSON body: counts towards the breaker.
    Transient,
    /// The upstream asked us to slow down: the whole source pauses.
    Throttled {
        /// How long it asked for, when it said (`Retry-After`).
        retry_after: Option<Duration>,
        /// A daily quota is spent: wait until the next UTC day.
        until_next_utc_day: bool,
    },
    /// A request that will never work (4xx other than throttling): says nothing about health.
    Permanent,
}

/// What held a request back at the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The circuit breaker is open.
    BreakerOpen,
    /// The circuit breaker is restarting or did not answer.
    BreakerUnavailable,
    /// Every permit of a rate-limit window is taken.
    WindowsFull,
    /// The source is paused after a throttle signal.
    SourcePaused,
    /// The rate limiter is restarting or did not answer.
    LimiterUnavailable,
}

impl Hold {
    /// For a person.
    pub fn describe(self) -> &'static str {
        match self {
            Hold::BreakerOpen => "circuit breaker open",
            Hold::BreakerUnavailable => "circuit breaker restarting or not answering",
            Hold::WindowsFull => "rate limit windows full",
            Hold::SourcePaused => "source paused after a throttle signal",
            Hold::LimiterUnavailable => "rate limiter restarting or not answering",
        }
    }

    /// Whether the circuit breaker holds the request (else the rate limiter does).
    pub fn is_breaker(self) -> bool {
        matches!(self, Hold::BreakerOpen | Hold::BreakerUnavailable)
    }
}

/// Why the gate refused a request right now. The task returns it as a throttled error, so the
/// job waits without spending an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// What blocks.
    pub hold: Hold,
    /// How long until it may be tried again, when known.
    pub retry_after: Option<Duration>,
}

/// The door every upstream request goes through.
pub trait Gate: Send + Sync + 'static {
    /// Waits for a rate-limit permit and the breaker's admission. A permit taken counts as a
    /// request sent (the sliding windows count from when requests leave the node).
    fn acquire(&self) -> BoxFuture<'_, Result<(), Blocked>>;
    /// Reports how the request that was admitted ended.
    fn report(&self, verdict: Verdict);
}

/// A gate that admits everything at once: for tests of the tasks and for pipelines without
/// limits.
pub struct OpenGate;

impl Gate for OpenGate {
    fn acquire(&self) -> BoxFuture<'_, Result<(), Blocked>> {
        Box::pin(async { Ok(()) })
    }
    fn report(&self, _verdict: Verdict) {}
}
