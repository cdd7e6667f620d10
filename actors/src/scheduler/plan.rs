//! The scheduler's pure core: which ticks of a cron expression fall between two instants, and
//! which of the ticks that came due get a job under a [`CatchUp`] policy. Times are Unix
//! milliseconds, UTC; nothing here reads a clock, so tests give the instants.

use chrono::{DateTime, Utc};
use croner::Cron;

use crate::args::CatchUp;

/// At most this many missed ticks are fired by `catch_up = "all"` (the latest ones); the
/// older ones are let go with a warning. A second-level cron down for a day would otherwise
/// flood the queue with 86,400 jobs.
pub const MAX_CATCH_UP: usize = 1000;

/// Missed ticks are counted (for the log and the metric) up to this many: counting walks the
/// cron one tick at a time, and a second-level cron down for a week has 600,000 of them.
pub const COUNT_CAP: usize = 10_000;

fn utc(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

/// The first tick strictly after `after_ms`, or `None` when the cron never matches again.
pub fn next_tick(cron: &Cron, after_ms: i64) -> Option<i64> {
    let t = cron.find_next_occurrence(&utc(after_ms)?, false).ok()?;
    // croner works in whole seconds; never hand back a tick that is not strictly later.
    Some(t.timestamp_millis()).filter(|t| *t > after_ms)
}

/// The latest tick at or before `at_ms`, or `None` when the cron never matched before.
pub fn prev_tick(cron: &Cron, at_ms: i64) -> Option<i64> {
    let t = cron.find_previous_occurrence(&utc(at_ms)?, true).ok()?;
    Some(t.timestamp_millis()).filter(|t| *t <= at_ms)
}

/// The ticks in `(after_ms, until_ms]`, oldest first, at most `limit` (the oldest ones).
pub fn ticks_between(cron: &Cron, after_ms: i64, until_ms: i64, limit: usize) -> Vec<i64> {
    let mut out = Vec::new();
    let mut cursor = after_ms;
    while out.len() < limit {
        match next_tick(cron, cursor) {
            Some(t) if t <= until_ms => {
                out.push(t);
                cursor = t;
            }
            _ => break,
        }
    }
    out
}

/// The latest `limit` ticks in `(after_ms, until_ms]`, oldest first. Walks backwards, so its
/// cost is `limit`, however long the interval.
pub fn latest_ticks(cron: &Cron, after_ms: i64, until_ms: i64, limit: usize) -> Vec<i64> {
    let mut out = Vec::new();
    let mut cursor = until_ms;
    while out.len() < limit {
        match prev_tick(cron, cursor) {
            Some(t) if t > after_ms => {
                out.push(t);
                cursor = t - 1;
            }
            _ => break,
        }
    }
    out.reverse();
    out
}

/// What to do with the ticks due in `(last_tick, now]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Ticks that get a job, oldest first. They are always the latest due ticks.
    pub fire: Vec<i64>,
    /// The latest tick let go without a job (by the policy or the cap); every missed tick is at
    /// or before it and before the first of `fire`.
    pub missed_through: Option<i64>,
    /// How many ticks were let go, counted up to [`COUNT_CAP`].
    pub missed: usize,
}

/// Decides which due ticks get a job.
///
/// `on_time` is the running node's view: its timer went off for the latest due tick, so that
/// one fires whatever the policy, and only the ticks before it (the actor fell behind: a long
/// pause, a pending tick the dispatcher kept refusing) are missed ones. At start (`on_time`
/// false) every due tick was missed while the node was down: `none` fires none of them,
/// `latest` the latest, `all` each of them (the latest [`MAX_CATCH_UP`]).
pub fn plan(cron: &Cron, catch_up: CatchUp, last_tick: i64, now: i64, on_time: bool) -> Plan {
    let Some(latest) = prev_tick(cron, now).filter(|t| *t > last_tick) else {
        return Plan::default();
    };
    // The missed ticks lie in (last_tick, missed_until].
    let missed_until = if on_time { latest - 1 } else { latest };
    let take = match catch_up {
        CatchUp::All => MAX_CATCH_UP - usize::from(on_time),
        CatchUp::Latest if !on_time => 1,
        CatchUp::Latest | CatchUp::None => 0,
    };
    let mut fire = latest_ticks(cron, last_tick, missed_until, take);
    let caught_up = fire.len();
    let missed_count = ticks_between(cron, last_tick, missed_until, COUNT_CAP).len();
    let missed_through = match fire.first() {
        Some(&first) => prev_tick(cron, first - 1).filter(|t| *t > last_tick),
        None => prev_tick(cron, missed_until).filter(|t| *t > last_tick),
    };
    if on_time {
        fire.push(latest);
    }
    Plan {
        fire,
        missed_through,
        missed: missed_count.saturating_sub(caught_up),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::parse_cron;

    /// 2026-01-01T00:00:00Z.
    const T0: i64 = 1_767_225_600_000;
    const S: i64 = 1000;

    fn every(secs: u32) -> Cron {
        parse_cron(&format!("*/{secs} * * * * *")).unwrap()
    }

    /// Ensures that the next tick is strictly later, also from a tick itself or mid-second, and
    /// that a five-field cron ticks on whole minutes.
    #[test]
    fn next_tick_is_strictly_later() {
        let c = every(1);
        assert_eq!(next_tick(&c, T0), Some(T0 + S));
        assert_eq!(next_tick(&c, T0 + 500), Some(T0 + S));
        assert_eq!(next_tick(&c, T0 - 1), Some(T0));
        let minutely = parse_cron("* * * * *").unwrap();
        assert_eq!(next_tick(&minutely, T0 + 1), Some(T0 + 60 * S));
        let daily = parse_cron("0 0 2 * * *").unwrap();
        assert_eq!(next_tick(&daily, T0), Some(T0 + 2 * 3600 * S));
    }

    /// Ensures that the previous tick includes `at` itself and ignores sub-second parts.
    #[test]
    fn prev_tick_includes_the_instant() {
        let c = every(3);
        assert_eq!(prev_tick(&c, T0), Some(T0));
        assert_eq!(prev_tick(&c, T0 + 2999), Some(T0));
        assert_eq!(prev_tick(&c, T0 + 3000), Some(T0 + 3 * S));
        assert_eq!(prev_tick(&c, T0 - 1), Some(T0 - 3 * S));
    }

    /// Ensures that the ticks between two instants exclude the start, include the end, keep the
    /// oldest under a limit, and that the latest ones are the same ticks counted from the end.
    #[test]
    fn ticks_between_two_instants() {
        let c = every(2);
        assert_eq!(
            ticks_between(&c, T0, T0 + 6 * S, 100),
            [T0 + 2 * S, T0 + 4 * S, T0 + 6 * S]
        );
        assert_eq!(
            ticks_between(&c, T0, T0 + 6 * S, 2),
            [T0 + 2 * S, T0 + 4 * S]
        );
        assert_eq!(ticks_between(&c, T0, T0 + 1999, 100), Vec::<i64>::new());
        assert_eq!(
            latest_ticks(&c, T0, T0 + 6 * S, 2),
            [T0 + 4 * S, T0 + 6 * S]
        );
        assert_eq!(
            latest_ticks(&c, T0, T0 + 6 * S + 999, 100),
            ticks_between(&c, T0, T0 + 6 * S + 999, 100)
        );
        assert_eq!(latest_ticks(&c, T0, T0 + 1999, 100), Vec::<i64>::new());
    }

    /// Ensures that nothing is due before the next tick, and that on time exactly the current
    /// tick fires under every policy.
    #[test]
    fn on_time_fires_the_current_tick() {
        let c = every(1);
        for policy in [CatchUp::None, CatchUp::Latest, CatchUp::All] {
            assert_eq!(plan(&c, policy, T0, T0 + 999, true), Plan::default());
            let p = plan(&c, policy, T0, T0 + S + 3, true);
            assert_eq!(p.fire, [T0 + S], "{policy:?}");
            assert_eq!((p.missed, p.missed_through), (0, None), "{policy:?}");
        }
    }

    /// Ensures that at start the ticks missed while the node was down follow the policy: none
    /// fires nothing and counts them all, latest fires the latest, all fires each one.
    #[test]
    fn catch_up_selection_at_start() {
        let c = every(3);
        // Down from just after T0 to T0 + 10 s: ticks T0+3, +6, +9 were missed.
        let (last, now) = (T0, T0 + 10 * S);
        let none = plan(&c, CatchUp::None, last, now, false);
        assert_eq!(none.fire, Vec::<i64>::new());
        assert_eq!((none.missed, none.missed_through), (3, Some(T0 + 9 * S)));
        let latest = plan(&c, CatchUp::Latest, last, now, false);
        assert_eq!(latest.fire, [T0 + 9 * S]);
        assert_eq!(
            (latest.missed, latest.missed_through),
            (2, Some(T0 + 6 * S))
        );
        let all = plan(&c, CatchUp::All, last, now, false);
        assert_eq!(all.fire, [T0 + 3 * S, T0 + 6 * S, T0 + 9 * S]);
        assert_eq!((all.missed, all.missed_through), (0, None));
    }

    /// Ensures that a running scheduler that fell behind fires the current tick and treats the
    /// earlier ones as missed: all fires them too, latest and none let them go.
    #[test]
    fn catch_up_selection_when_behind() {
        let c = every(1);
        let (last, now) = (T0, T0 + 3 * S + 10);
        let latest = plan(&c, CatchUp::Latest, last, now, true);
        assert_eq!(latest.fire, [T0 + 3 * S]);
        assert_eq!(
            (latest.missed, latest.missed_through),
            (2, Some(T0 + 2 * S))
        );
        let none = plan(&c, CatchUp::None, last, now, true);
        assert_eq!(none, latest);
        let all = plan(&c, CatchUp::All, last, now, true);
        assert_eq!(all.fire, [T0 + S, T0 + 2 * S, T0 + 3 * S]);
        assert_eq!(all.missed, 0);
    }

    /// Ensures that `all` fires at most [`MAX_CATCH_UP`] ticks, the latest ones, and counts the
    /// rest as missed; a long outage is counted only up to [`COUNT_CAP`].
    #[test]
    fn catch_up_all_is_capped() {
        let c = every(1);
        let now = T0 + 1500 * S;
        let p = plan(&c, CatchUp::All, T0, now, false);
        assert_eq!(p.fire.len(), MAX_CATCH_UP);
        assert_eq!(p.fire.first(), Some(&(T0 + 501 * S)));
        assert_eq!(p.fire.last(), Some(&now));
        assert_eq!((p.missed, p.missed_through), (500, Some(T0 + 500 * S)));
        let week = plan(&c, CatchUp::Latest, T0, T0 + 7 * 86_400 * S, false);
        assert_eq!(week.fire, [T0 + 7 * 86_400 * S]);
        assert_eq!(week.missed, COUNT_CAP - 1);
    }
}
