//! Pure timing rules, kept free of actors and clocks so they can be tested on their own:
//! the delay before a job's next attempt and a supervisor's restart budget with backoff.
//!
//! Both take `now` as an argument (tokio's `Instant`, so paused-time tests drive them) and a
//! random source only through a `jitter` factor in `[-1, 1]` chosen by the caller.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::args::{RestartPolicy, RetryPolicy};

/// Job retries jitter by ±10 % (docs/architecture.md, "A job's life").
pub const RETRY_JITTER: f64 = 0.1;

/// `base · 2^n`, capped at `max`, then moved by `jitter_unit · jitter · delay` where
/// `jitter_unit` is in `[-1, 1]`. Saturates instead of overflowing for large `n`.
pub fn exponential(
    base: Duration,
    max: Duration,
    n: u32,
    jitter: f64,
    jitter_unit: f64,
) -> Duration {
    let factor = 2f64.powi(n.min(62) as i32);
    let raw = (base.as_secs_f64() * factor).min(max.as_secs_f64());
    let moved = raw * (1.0 + jitter * jitter_unit.clamp(-1.0, 1.0));
    Duration::from_secs_f64(moved.max(0.0))
}

/// A uniformly random jitter unit in `[-1, 1]`.
pub fn random_unit() -> f64 {
    rand::random_range(-1.0..=1.0)
}

/// The delay before retry number `retry` (1-based: the first retry waits about `base_delay`).
pub fn retry_delay(policy: &RetryPolicy, retry: u32, jitter_unit: f64) -> Duration {
    exponential(
        policy.base_delay,
        policy.max_delay,
        retry.saturating_sub(1),
        RETRY_JITTER,
        jitter_unit,
    )
}

/// What a supervisor does about a failed child.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RestartDecision {
    /// Restart it after this backoff.
    Restart {
        /// How long to wait before the restart.
        backoff: Duration,
        /// Restarts counted in the current window, this one included.
        restarts_in_window: u32,
    },
    /// The budget is spent: the supervisor must fail itself so the failure climbs.
    Escalate {
        /// Restarts that were counted in the window.
        restarts_in_window: u32,
    },
}

/// A restart budget for one child: at most `max_restarts` within `within`, each restart waiting
/// `min_backoff · 2^k` (k = restarts already in the window), capped at `max_backoff`, jittered.
/// A child that stays up longer than `within` starts again from `min_backoff`, because old
/// restarts fall out of the window.
#[derive(Debug, Clone)]
pub struct RestartBudget {
    policy: RestartPolicy,
    restarts: VecDeque<Instant>,
    total: u64,
}

impl RestartBudget {
    /// A fresh budget.
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            restarts: VecDeque::new(),
            total: 0,
        }
    }

    /// Records a failure at `now` and decides.
    pub fn on_failure(&mut self, now: Instant, jitter_unit: f64) -> RestartDecision {
        while let Some(first) = self.restarts.front() {
            if now.duration_since(*first) >= self.policy.within {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        let already = self.restarts.len() as u32;
        if already >= self.policy.max_restarts {
            return RestartDecision::Escalate {
                restarts_in_window: already,
            };
        }
        self.restarts.push_back(now);
        self.total += 1;
        let backoff = exponential(
            self.policy.min_backoff,
            self.policy.max_backoff,
            already,
            self.policy.jitter,
            jitter_unit,
        );
        RestartDecision::Restart {
            backoff,
            restarts_in_window: already + 1,
        }
    }

    /// Restarts since the child was first started.
    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RestartPolicy = RestartPolicy {
        min_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        jitter: 0.2,
        max_restarts: 3,
        within: Duration::from_secs(10),
    };

    /// Ensures that retry delays double from the base, stop at the cap, and stay within ±10 %.
    #[test]
    fn retry_delay_doubles_caps_and_jitters() {
        let p = RetryPolicy {
            max_retries: 10,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
        };
        assert_eq!(retry_delay(&p, 1, 0.0), Duration::from_millis(50));
        assert_eq!(retry_delay(&p, 2, 0.0), Duration::from_millis(100));
        assert_eq!(retry_delay(&p, 3, 0.0), Duration::from_millis(200));
        assert_eq!(retry_delay(&p, 10, 0.0), Duration::from_secs(1));
        assert_eq!(retry_delay(&p, 1000, 0.0), Duration::from_secs(1));
        let hi = retry_delay(&p, 2, 1.0).as_secs_f64();
        let lo = retry_delay(&p, 2, -1.0).as_secs_f64();
        assert!(
            (hi - 0.110).abs() < 1e-9 && (lo - 0.090).abs() < 1e-9,
            "{lo} {hi}"
        );
        for _ in 0..1000 {
            let d = retry_delay(&p, 3, random_unit()).as_secs_f64();
            assert!((0.18..=0.22).contains(&d), "{d}");
        }
    }

    /// Ensures that restarts back off exponentially and the budget escalates once spent.
    #[tokio::test(start_paused = true)]
    async fn budget_backs_off_then_escalates() {
        let mut b = RestartBudget::new(POLICY);
        let now = Instant::now();
        let delays: Vec<_> = (0..3)
            .map(|_| match b.on_failure(now, 0.0) {
                RestartDecision::Restart { backoff, .. } => backoff,
                other => panic!("expected a restart, got {other:?}"),
            })
            .collect();
        assert_eq!(delays, [100, 200, 400].map(Duration::from_millis));
        assert_eq!(
            b.on_failure(now, 0.0),
            RestartDecision::Escalate {
                restarts_in_window: 3
            }
        );
        assert_eq!(b.total(), 3);
    }

    /// Ensures that restarts older than the window no longer count, so a child that has been
    /// healthy for a while gets the minimum backoff again and a fresh budget.
    #[tokio::test(start_paused = true)]
    async fn budget_window_slides() {
        let mut b = RestartBudget::new(POLICY);
        for _ in 0..3 {
            b.on_failure(Instant::now(), 0.0);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        tokio::time::advance(Duration::from_secs(8)).await;
        // now t=11: the restarts at t=0 and t=1 are 10 s old or more, the one at t=2 is not
        assert_eq!(
            b.on_failure(Instant::now(), 0.0),
            RestartDecision::Restart {
                backoff: Duration::from_millis(200),
                restarts_in_window: 2
            }
        );
    }

    /// Ensures that the jitter moves a restart backoff by at most the configured fraction.
    #[tokio::test(start_paused = true)]
    async fn budget_jitter_is_bounded() {
        for unit in [-1.0, -0.5, 0.0, 0.5, 1.0] {
            let mut b = RestartBudget::new(POLICY);
            let RestartDecision::Restart { backoff, .. } = b.on_failure(Instant::now(), unit)
            else {
                panic!("expected a restart")
            };
            let ms = backoff.as_secs_f64() * 1000.0;
            assert!((80.0..=120.0).contains(&ms), "{ms}");
        }
    }
}
