//! What an attempt's outcome means for its job: the one rule both dispatchers (the single
//! node's and cluster mode's) follow, as a pure function of the outcome, the attempts made and
//! the pipeline's retry policy.

use std::time::Duration;

use crate::args::RetryPolicy;
use crate::backoff::{random_unit, retry_delay};
use crate::tasks::{TaskError, TaskResult, ThrottledBy};

/// Wait after a throttle signal that gave no Retry-After.
pub const DEFAULT_THROTTLE_WAIT: Duration = Duration::from_secs(1);

/// What holds a throttled job back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleCause {
    /// The pipeline's circuit breaker.
    Breaker,
    /// A rate limit (the pipeline's own, or the upstream's signal).
    RateLimit,
}

/// The decision on a job whose attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// It succeeded with this result.
    Succeed(serde_json::Value),
    /// It runs again after `delay` (the attempt counts).
    Retry {
        /// Backoff before the next attempt.
        delay: Duration,
        /// The error.
        error: String,
        /// The `error_type` label of `warden_job_retries_total`.
        error_type: &'static str,
    },
    /// It runs again after `wait`; the attempt is given back (the upstream never did the
    /// work).
    Throttled {
        /// How long to wait.
        wait: Duration,
        /// The signal.
        message: String,
        /// What holds it.
        cause: ThrottleCause,
    },
    /// Its retries are spent, or the error is permanent.
    DeadLetter(String),
}

/// The verdict on an attempt that ended with `outcome`, the job having made `attempts`
/// (this one included) of at most `max_retries + 1`.
pub fn verdict(
    outcome: TaskResult,
    attempts: u32,
    max_retries: u32,
    policy: &RetryPolicy,
) -> Verdict {
    let (error, error_type) = match outcome {
        Ok(value) => return Verdict::Succeed(value),
        Err(TaskError::Permanent(msg)) => return Verdict::DeadLetter(msg),
        Err(TaskError::Throttled {
            message,
            retry_after,
            by,
        }) => {
            let cause = match by {
                ThrottledBy::Gate(hold) if hold.is_breaker() => ThrottleCause::Breaker,
                _ => ThrottleCause::RateLimit,
            };
            let wait = retry_after.unwrap_or(DEFAULT_THROTTLE_WAIT);
            return Verdict::Throttled {
                wait,
                message,
                cause,
            };
        }
        Err(TaskError::Transient(msg)) => (msg, "transient"),
        Err(TaskError::Timeout(msg)) => (msg, "timeout"),
        Err(TaskError::Panic(msg)) => (msg, "panic"),
        Err(TaskError::Crash(msg)) => (msg, "crash"),
    };
    retry_or_give_up(error, error_type, attempts, max_retries, policy)
}

/// A retry with the policy's backoff, or, once `attempts` passed `max_retries`, a dead letter
/// that says so. Also the rule for a job whose worker went down.
pub fn retry_or_give_up(
    error: String,
    error_type: &'static str,
    attempts: u32,
    max_retries: u32,
    policy: &RetryPolicy,
) -> Verdict {
    if attempts > max_retries {
        return Verdict::DeadLetter(format!("{error} (gave up after {attempts} attempts)"));
    }
    Verdict::Retry {
        delay: retry_delay(policy, attempts, random_unit()),
        error,
        error_type,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 2,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        }
    }

    /// Ensures that a transient error retries until the attempts pass max_retries, then
    /// dead-letters saying how many attempts were made.
    #[test]
    fn transient_errors_retry_then_give_up() {
        let err = || Err(TaskError::Transient("503".into()));
        assert!(matches!(
            verdict(err(), 1, 2, &policy()),
            Verdict::Retry {
                error_type: "transient",
                ..
            }
        ));
        assert!(matches!(verdict(err(), 3, 2, &policy()),
            Verdict::DeadLetter(m) if m == "503 (gave up after 3 attempts)"));
    }

    /// Ensures that a permanent error dead-letters at once, and a throttle never counts
    /// against the retries, whatever the attempts.
    #[test]
    fn permanent_and_throttled() {
        let v = verdict(Err(TaskError::Permanent("404".into())), 1, 5, &policy());
        assert_eq!(v, Verdict::DeadLetter("404".into()));
        let throttled = Err(TaskError::Throttled {
            message: "429".into(),
            retry_after: None,
            by: ThrottledBy::Upstream,
        });
        assert_eq!(
            verdict(throttled, 9, 2, &policy()),
            Verdict::Throttled {
                wait: DEFAULT_THROTTLE_WAIT,
                message: "429".into(),
                cause: ThrottleCause::RateLimit
            }
        );
    }
}
