//! What the sink shows operators (`warden sinks`, `tree`): its phase, the last error in words,
//! when it tries again, what it wrote. Shared by every incarnation of the actor and read by the
//! admin actor without a message, so a sink stuck in a slow write still answers.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use super::outbox::Outbox;
use super::write::Written;
use crate::job::{now_ms, rfc3339_ms};
use crate::postgres::Failure;

/// Where the sink is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Not connected yet (start, or a restart of the actor).
    #[default]
    Connecting,
    /// Connected, the backlog shipped.
    Idle,
    /// Connected, shipping a backlog.
    Shipping,
    /// The last try failed; waiting to try again.
    Retrying,
    /// Cluster mode: connected, another node ships (it holds the shipping lock).
    Standby,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Idle => "idle",
            Phase::Shipping => "shipping",
            Phase::Retrying => "retrying",
            Phase::Standby => "standby",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    phase: Phase,
    /// The last failure: its kind, its words, when.
    last_error: Option<(&'static str, String, i64)>,
    /// Failures since the last success.
    failures: u32,
    next_try_at: Option<i64>,
    schema_version: Option<i32>,
    /// Rows inserted or changed per table since the node started.
    rows: BTreeMap<&'static str, u64>,
    /// Records parked because PostgreSQL refused them (`pg::Failure::Rejected`).
    rejected: u64,
    /// The last batch: when, records, rows written, seconds.
    last_flush: Option<(i64, usize, u64, f64)>,
}

/// The shared status.
#[derive(Debug)]
pub struct Status {
    target: String,
    schema: String,
    state: Mutex<State>,
}

impl Status {
    /// A sink about to connect to `target` (as shown) into `schema`.
    pub fn new(target: String, schema: String) -> Status {
        Status {
            target,
            schema,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new incarnation starts over from connecting.
    pub fn connecting(&self) {
        self.lock().phase = Phase::Connecting;
    }

    /// Connected, the schema at `version`.
    pub fn connected(&self, version: i32) {
        self.lock().schema_version = Some(version);
    }

    /// A try failed; the next one in `delay`. Returns the failures in a row.
    pub fn failed(&self, failure: &Failure, delay: Duration) -> u32 {
        let mut s = self.lock();
        s.phase = Phase::Retrying;
        s.failures += 1;
        s.last_error = Some((failure.kind(), failure.message().to_string(), now_ms()));
        s.next_try_at = Some(now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2));
        s.failures
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.lock().failures
    }

    /// A try succeeded, leaving the sink in `phase`; returns how many failed in a row before
    /// it.
    pub fn succeeded(&self, phase: Phase) -> u32 {
        let mut s = self.lock();
        s.phase = phase;
        s.next_try_at = None;
        std::mem::take(&mut s.failures)
    }

    /// A batch of `records` records was written.
    pub fn flushed(&self, records: usize, written: &Written, seconds: f64) {
        let mut s = self.lock();
        let mut rows = 0;
        for (table, n) in written {
            *s.rows.entry(table.name()).or_default() += n;
            rows += n;
        }
        s.last_flush = Some((now_ms(), records, rows, seconds));
    }

    /// A record was parked.
    pub fn rejected(&self) {
        self.lock().rejected += 1;
    }

    /// The view of `warden sinks` and `tree`; backlog and cursor come from the outbox.
    pub fn view(&self, outbox: &Outbox) -> Value {
        let s = self.lock();
        let cursor = outbox.cursor();
        json!({
            "name": "postgres",
            "state": s.phase.as_str(),
            "target": self.target,
            "schema": self.schema,
            "schema_version": s.schema_version,
            "backlog": outbox.backlog(),
            "cursor": cursor.seq,
            "shipped": cursor.shipped,
            "rows_written": s.rows,
            "rows_written_total": s.rows.values().sum::<u64>(),
            "rejected": s.rejected,
            "consecutive_failures": s.failures,
            "next_try_at": s.next_try_at.map(rfc3339_ms),
            "last_error": s.last_error.as_ref().map(|(kind, message, at)| json!({
                "kind": kind, "message": message, "at": rfc3339_ms(*at),
            })),
            "last_flush": s.last_flush.map(|(at, records, rows, seconds)| json!({
                "at": rfc3339_ms(at), "records": records, "rows": rows, "seconds": seconds,
            })),
        })
    }
}
