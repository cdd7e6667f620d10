//! [`PipelineGate`]: the [`Gate`] of a real upstream pipeline, made of its circuit breaker and
//! rate limiter actors (reached through [`Link`]s, so a restarted actor is found at once).
//!
//! `acquire` asks the breaker first (an open breaker refuses without using a permit), then waits
//! for a limiter permit. Nothing here waits long: a paused source, full windows, an open
//! breaker or an actor that is restarting all come back at once as [`Blocked`] with a time to
//! come back, and the task turns that into a throttled error, so the job waits in the dispatcher
//! without spending an attempt.
//!
//! In cluster mode the limiter may grant the cluster's one probe of a source whose shared
//! breaker window has passed ([`Grant::ClusterProbe`]); when this node's breaker did not admit
//! the request as its own probe, the gate has it adopt the request as one, so that the probe's
//! outcome moves this breaker, and through it the cluster's window (`cluster/permits.rs`).
//!
//! # Knowing which request was the probe
//!
//! [`Gate::report`] carries no request token, so the gate remembers which caller holds the
//! half-open probe by the tokio task it runs in (each job runs in a task of its own, and a task
//! acquires and reports in turn). At most one probe is out at a time, so this is a single slot:
//! a report from the task holding it is the probe's; any other report is not. A task that drops
//! its request between `acquire` and `report` leaves the slot held; the breaker gives up on
//! such a probe after [`crate::pipeline::breaker::PROBE_TIMEOUT`] and the next probe takes the
//! slot over.

use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::rpc::CallResult;

use crate::link::Link;
use crate::pipeline::breaker::{Admission, CircuitBreakerMsg};
use crate::pipeline::limiter::{Grant, RateLimiterMsg, Refusal};
use crate::upstream::{Blocked, Gate, Hold, Verdict};

/// How long `acquire` waits for the breaker's answer (it answers at once unless it is stuck).
pub const ADMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `acquire` waits for a permit. The limiter refuses waits longer than
/// [`crate::pipeline::limiter::MAX_PERMIT_WAIT`], so this is only reached if it is stuck.
pub const PERMIT_TIMEOUT: Duration = Duration::from_secs(60);
/// When to come back if the limiter or breaker is restarting.
pub const RESTART_RETRY: Duration = Duration::from_secs(1);

/// Who is asking: the tokio task (`None` outside one, e.g. a test's `block_on`).
type Caller = Option<tokio::task::Id>;

/// The gate of one upstream pipeline. Cheap to share: one per pipeline, used by all its workers.
pub struct PipelineGate {
    limiter: Link<RateLimiterMsg>,
    breaker: Link<CircuitBreakerMsg>,
    /// The caller that holds the half-open probe, if any.
    probe: Mutex<Option<Caller>>,
}

impl PipelineGate {
    /// A gate over the pipeline's limiter and breaker (from
    /// [`crate::pipeline::limiter::LimiterSpec::link`] and
    /// [`crate::pipeline::breaker::BreakerSpec::link`]).
    pub fn new(limiter: Link<RateLimiterMsg>, breaker: Link<CircuitBreakerMsg>) -> Self {
        Self {
            limiter,
            breaker,
            probe: Mutex::new(None),
        }
    }

    fn probe_slot(&self) -> std::sync::MutexGuard<'_, Option<Caller>> {
        self.probe.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The breaker's admission, or why there is none.
    async fn admit(&self) -> Result<Admission, Blocked> {
        let restarting = || blocked(Hold::BreakerUnavailable, Some(RESTART_RETRY));
        let breaker = self.breaker.get().ok_or_else(restarting)?;
        match breaker
            .call(CircuitBreakerMsg::Admit, Some(ADMIT_TIMEOUT))
            .await
        {
            Ok(CallResult::Success(Admission::Refused { retry_after })) => {
                Err(blocked(Hold::BreakerOpen, Some(retry_after)))
            }
            Ok(CallResult::Success(admission)) => Ok(admission),
            Ok(CallResult::Timeout) => Err(blocked(Hold::BreakerUnavailable, Some(RESTART_RETRY))),
            Ok(CallResult::SenderError) | Err(_) => Err(restarting()),
        }
    }

    /// A limiter permit, or why there is none.
    async fn permit(&self) -> Result<Grant, Blocked> {
        let restarting = || blocked(Hold::LimiterUnavailable, Some(RESTART_RETRY));
        let limiter = self.limiter.get().ok_or_else(restarting)?;
        match limiter
            .call(RateLimiterMsg::Acquire, Some(PERMIT_TIMEOUT))
            .await
        {
            Ok(CallResult::Success(Ok(grant))) => Ok(grant),
            Ok(CallResult::Success(Err(Refusal::Paused { remaining }))) => {
                Err(blocked(Hold::SourcePaused, Some(remaining)))
            }
            Ok(CallResult::Success(Err(Refusal::BreakerOpen { remaining }))) => {
                Err(blocked(Hold::BreakerOpen, Some(remaining)))
            }
            Ok(CallResult::Success(Err(Refusal::WindowsFull { free_in }))) => {
                Err(blocked(Hold::WindowsFull, Some(free_in)))
            }
            Ok(CallResult::Timeout) => Err(blocked(Hold::LimiterUnavailable, Some(RESTART_RETRY))),
            Ok(CallResult::SenderError) | Err(_) => Err(restarting()),
        }
    }
}

fn blocked(hold: Hold, retry_after: Option<Duration>) -> Blocked {
    Blocked { hold, retry_after }
}

impl Gate for PipelineGate {
    fn acquire(&self) -> BoxFuture<'_, Result<(), Blocked>> {
        Box::pin(async move {
            let probe = self.admit().await? == Admission::Probe;
            let grant = match self.permit().await {
                Ok(grant) => grant,
                Err(why) => {
                    if probe {
                        self.breaker.cast(CircuitBreakerMsg::ProbeAbandoned);
                    }
                    return Err(why);
                }
            };
            let cluster_probe = grant == Grant::ClusterProbe && !probe;
            if cluster_probe {
                // Sent before this caller's report, so the breaker has adopted it by then.
                self.breaker.cast(CircuitBreakerMsg::AdoptProbe);
            }
            if probe || cluster_probe {
                *self.probe_slot() = Some(tokio::task::try_id());
            }
            Ok(())
        })
    }

    fn report(&self, verdict: Verdict) {
        let was_probe = {
            let mut slot = self.probe_slot();
            let mine = *slot == Some(tokio::task::try_id());
            if mine {
                *slot = None;
            }
            mine
        };
        self.breaker
            .cast(CircuitBreakerMsg::Record(verdict, was_probe));
        if let Verdict::Throttled {
            retry_after,
            until_next_utc_day,
        } = verdict
        {
            self.limiter.cast(RateLimiterMsg::Throttle {
                retry_after,
                until_next_utc_day,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ractor::Actor;
    use tokio::time::Instant;

    use super::*;
    use crate::args::{BreakerArgs, RateWindow};
    use crate::pipeline::breaker::{BreakerView, CircuitBreaker, CircuitBreakerArgs, CircuitState};
    use crate::pipeline::limiter::{RateLimiter, RateLimiterArgs, SharedView};
    use crate::store::journal::Journal;

    struct Rig {
        gate: Arc<PipelineGate>,
        limiter: Link<RateLimiterMsg>,
        breaker: Link<CircuitBreakerMsg>,
        _journal: Journal,
        _dir: tempfile::TempDir,
    }

    /// Both actors for a pipeline `gate-test` at `per_second`, breaker opening after
    /// `threshold` failures for 1 s.
    async fn rig(per_second: u32, threshold: u32) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let (l, _) = Actor::spawn(
            None,
            RateLimiter,
            RateLimiterArgs {
                pipeline: "gate-test".into(),
                windows: vec![RateWindow {
                    limit: per_second,
                    per: Duration::from_secs(1),
                }],
                journal: journal.clone(),
                throttle_cooldown: Duration::from_secs(45),
                view: SharedView::default(),
                shared: None,
            },
        )
        .await
        .unwrap();
        let (b, _) = Actor::spawn(
            None,
            CircuitBreaker,
            CircuitBreakerArgs {
                pipeline: "gate-test".into(),
                breaker: BreakerArgs {
                    failure_threshold: threshold,
                    open_for: Duration::from_secs(1),
                    max_open_for: Duration::from_secs(60),
                },
                on_change: None,
                view: SharedView::default(),
            },
        )
        .await
        .unwrap();
        let (limiter, breaker) = (Link::default(), Link::default());
        limiter.set(l);
        breaker.set(b);
        Rig {
            gate: Arc::new(PipelineGate::new(limiter.clone(), breaker.clone())),
            limiter,
            breaker,
            _journal: journal,
            _dir: dir,
        }
    }

    async fn breaker_state(r: &Rig) -> CircuitState {
        let view: BreakerView =
            ractor::call!(r.breaker.get().unwrap(), CircuitBreakerMsg::State).unwrap();
        view.state
    }

    /// Ensures that a burst of 10 acquires from concurrent callers at 5/s completes in 1 s of
    /// paused time (5 at once, 5 one second later): the limit is used, not exceeded.
    #[tokio::test(start_paused = true)]
    async fn burst_of_ten_at_five_per_second_takes_one_second() {
        let r = rig(5, 3).await;
        let t0 = Instant::now();
        let callers: Vec<_> = (0..10)
            .map(|_| {
                let gate = r.gate.clone();
                tokio::spawn(async move {
                    gate.acquire().await.unwrap();
                    Instant::now() - t0
                })
            })
            .collect();
        let mut times = Vec::new();
        for c in callers {
            times.push(c.await.unwrap());
        }
        times.sort();
        assert!(
            times[..5].iter().all(|t| *t < Duration::from_millis(10)),
            "{times:?}"
        );
        assert!(
            times[5..]
                .iter()
                .all(|t| *t >= Duration::from_secs(1) && *t < Duration::from_millis(1_040)),
            "{times:?}"
        );
    }

    /// Ensures that an open breaker blocks at once, naming the breaker and when to come back,
    /// without using a permit.
    #[tokio::test(start_paused = true)]
    async fn open_breaker_blocks() {
        let r = rig(1, 1).await;
        r.gate.acquire().await.unwrap();
        r.gate.report(Verdict::Transient);
        let blocked = r.gate.acquire().await.unwrap_err();
        assert_eq!(blocked.hold, Hold::BreakerOpen);
        assert_eq!(blocked.retry_after, Some(Duration::from_secs(1)));
        let view = ractor::call!(r.limiter.get().unwrap(), RateLimiterMsg::State).unwrap();
        assert_eq!(view.in_window, vec![1], "no permit used while open");
    }

    /// Ensures that a throttled report pauses the source and that the next acquire is blocked
    /// with the time left instead of waiting.
    #[tokio::test(start_paused = true)]
    async fn throttle_report_pauses_the_source() {
        let r = rig(5, 3).await;
        r.gate.acquire().await.unwrap();
        r.gate.report(Verdict::Throttled {
            retry_after: Some(Duration::from_secs(30)),
            until_next_utc_day: false,
        });
        let blocked = r.gate.acquire().await.unwrap_err();
        assert_eq!(
            blocked,
            Blocked {
                hold: Hold::SourcePaused,
                retry_after: Some(Duration::from_secs(30)),
            }
        );
        assert_eq!(
            breaker_state(&r).await,
            CircuitState::Closed,
            "throttles are not failures"
        );
    }

    /// Ensures that in half-open exactly one of several concurrent callers gets through as the
    /// probe, and that only that caller's report decides (here: a failure reopens the breaker).
    #[tokio::test(start_paused = true)]
    async fn only_the_probe_callers_report_decides() {
        let r = rig(5, 1).await;
        r.gate.acquire().await.unwrap();
        r.gate.report(Verdict::Transient);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(breaker_state(&r).await, CircuitState::HalfOpen);

        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<Verdict>();
        let probe = {
            let gate = r.gate.clone();
            tokio::spawn(async move {
                gate.acquire().await.unwrap();
                let verdict = go_rx.await.unwrap();
                gate.report(verdict);
            })
        };
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        let other = {
            let gate = r.gate.clone();
            tokio::spawn(async move {
                let refused = gate.acquire().await.unwrap_err();
                // A report from a caller that is not the probe decides nothing.
                gate.report(Verdict::Ok);
                refused
            })
        };
        let refused = other.await.unwrap();
        assert_eq!(refused.hold, Hold::BreakerOpen);
        assert_eq!(
            refused.retry_after,
            Some(crate::pipeline::breaker::PROBE_PENDING_RETRY)
        );
        assert_eq!(breaker_state(&r).await, CircuitState::HalfOpen);
        go_tx.send(Verdict::Transient).unwrap();
        probe.await.unwrap();
        assert_eq!(
            breaker_state(&r).await,
            CircuitState::Open,
            "the probe failed"
        );
    }

    /// Ensures that a missing limiter (restarting) blocks with a short retry, and that a probe
    /// admitted before that is handed back to the breaker.
    #[tokio::test(start_paused = true)]
    async fn missing_limiter_blocks_and_gives_the_probe_back() {
        let r = rig(5, 1).await;
        let gate = PipelineGate::new(Link::default(), r.breaker.clone());
        assert_eq!(
            gate.acquire().await.unwrap_err(),
            Blocked {
                hold: Hold::LimiterUnavailable,
                retry_after: Some(RESTART_RETRY),
            }
        );
        r.gate.acquire().await.unwrap();
        r.gate.report(Verdict::Transient);
        tokio::time::sleep(Duration::from_secs(1)).await;
        gate.acquire().await.unwrap_err(); // took the probe, then found no limiter
        r.gate.acquire().await.unwrap(); // so the probe is free for the next caller
        r.gate.report(Verdict::Ok);
        assert_eq!(breaker_state(&r).await, CircuitState::Closed);

        let none = PipelineGate::new(r.limiter.clone(), Link::default());
        assert_eq!(
            none.acquire().await.unwrap_err().hold,
            Hold::BreakerUnavailable
        );
    }
}
