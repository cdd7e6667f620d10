//! The overview chart's numbers: jobs succeeded and failed in each of the last
//! [`KEPT_SECONDS`] seconds, in a ring in memory.
//!
//! Once a second the console's sampler asks the dispatcher for its totals (an O(1) message,
//! `DispatcherMsg::Totals`) and keeps the difference from the previous sample, so the chart
//! costs neither a journal scan nor anything on the job loop. Totals restart from zero with a
//! restarted dispatcher; a sample below the previous one counts from zero.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::dispatcher::{DispatcherMsg, Totals};

use super::ConsoleCtx;

/// Seconds kept: ten minutes.
pub const KEPT_SECONDS: usize = 600;

/// One second of the ring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Second {
    /// Unix time of the second.
    pub at: i64,
    /// Jobs that succeeded in it.
    pub succeeded: u64,
    /// Jobs dead-lettered in it.
    pub failed: u64,
}

#[derive(Debug, Default)]
struct Ring {
    seconds: VecDeque<Second>,
    last: Option<Totals>,
}

/// Jobs succeeded and failed per second, newest last.
#[derive(Debug, Clone, Default)]
pub struct Throughput(Arc<Mutex<Ring>>);

impl Throughput {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the dispatcher's totals as sampled at Unix second `at`.
    pub fn record(&self, at: i64, now: Totals) {
        let mut ring = self.lock();
        let since = |new: u64, old: Option<u64>| match old {
            Some(old) if new >= old => new - old,
            // A restarted dispatcher counts from zero again.
            Some(_) => new,
            // The first sample only sets the base.
            None => 0,
        };
        let second = Second {
            at,
            succeeded: since(now.succeeded, ring.last.map(|t| t.succeeded)),
            failed: since(now.failed, ring.last.map(|t| t.failed)),
        };
        ring.last = Some(now);
        match ring.seconds.back_mut() {
            // Two samples in one second (a late tick): one bar.
            Some(b) if b.at == at => {
                b.succeeded += second.succeeded;
                b.failed += second.failed;
            }
            _ => ring.seconds.push_back(second),
        }
        while ring.seconds.len() > KEPT_SECONDS {
            ring.seconds.pop_front();
        }
    }

    /// Seconds from the first sample to Unix second `now` (0 before any).
    pub fn sampled(&self, now: i64) -> usize {
        let ring = self.lock();
        ring.seconds
            .front()
            .map_or(0, |s| (now - s.at + 1).max(0) as usize)
    }

    /// The last `n` seconds up to Unix second `now`, oldest first, zero where nothing was
    /// sampled.
    pub fn last(&self, n: usize, now: i64) -> Vec<Second> {
        let ring = self.lock();
        let from = now - n as i64 + 1;
        let mut out: Vec<Second> = (from..=now)
            .map(|at| Second {
                at,
                ..Default::default()
            })
            .collect();
        for s in ring.seconds.iter().filter(|s| s.at >= from && s.at <= now) {
            out[(s.at - from) as usize] = *s;
        }
        out
    }
}

/// Samples the dispatcher's totals once a second into the context's ring, until aborted.
pub(super) async fn sample(ctx: Arc<ConsoleCtx>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        // A restarting dispatcher is simply not sampled this second.
        if let Ok(totals) = crate::admin::call(&ctx.admin, DispatcherMsg::Totals).await {
            ctx.rate.record(chrono::Utc::now().timestamp(), totals);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(succeeded: u64, failed: u64) -> Totals {
        Totals {
            succeeded,
            failed,
            ..Default::default()
        }
    }

    /// Ensures that the ring keeps per-second differences, fills gaps with zeros and counts a
    /// restarted dispatcher's totals from zero.
    #[test]
    fn ring_keeps_differences() {
        let t = Throughput::default();
        t.record(100, totals(10, 1));
        t.record(101, totals(15, 1));
        t.record(103, totals(15, 4));
        t.record(104, totals(2, 0));
        let last = t.last(5, 104);
        let got: Vec<(i64, u64, u64)> =
            last.iter().map(|s| (s.at, s.succeeded, s.failed)).collect();
        assert_eq!(
            got,
            vec![
                (100, 0, 0),
                (101, 5, 0),
                (102, 0, 0),
                (103, 0, 3),
                (104, 2, 0)
            ]
        );
    }

    /// Ensures that the ring never holds more than [`KEPT_SECONDS`].
    #[test]
    fn ring_is_bounded() {
        let t = Throughput::default();
        for s in 0..(KEPT_SECONDS as i64 + 50) {
            t.record(s, totals(s as u64, 0));
        }
        assert_eq!(t.lock().seconds.len(), KEPT_SECONDS);
    }
}
