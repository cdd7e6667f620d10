//! What the scheduler journals per schedule (`meta` key `schedule/<name>`), and the intent
//! state machine that makes each tick fire once: before a submit the tick is recorded as
//! pending ([`ScheduleRecord::intend`]); once the dispatcher accepted it, as fired with its job
//! ([`ScheduleRecord::fired`]); a tick let go without a job (skipped, missed, refused for good)
//! only moves the cursor ([`ScheduleRecord::passed`]). A start that finds a pending tick fires it
//! again under the same `unique_key`, so the dispatcher dedups it while its job is unfinished.
//!
//! The encoding is fixed-width, after the journal's own format byte: a version byte, a flags byte
//! saying which optional fields are present, then `last_tick`, `last_run`, `pending` (i64 BE) and
//! the last job id (16 bytes).

use uuid::Uuid;

use crate::job::JobId;

/// The version of this encoding; a record with another one is reported, not misread.
pub const RECORD_VERSION: u8 = 1;

const HAS_LAST_RUN: u8 = 1;
const HAS_LAST_JOB: u8 = 2;
const HAS_PENDING: u8 = 4;
const LEN: usize = 2 + 8 + 8 + 8 + 16;

/// One schedule's durable state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleRecord {
    /// The latest tick dealt with: fired, skipped for overlap, let go by the catch-up policy or
    /// refused for good. Ticks after it are due. A new schedule starts at the instant it was
    /// first seen, so it never catches up on ticks from before it existed.
    pub last_tick_ms: i64,
    /// The latest tick that got a job.
    pub last_run_ms: Option<i64>,
    /// That job, for the overlap check and `schedules`.
    pub last_job: Option<JobId>,
    /// A tick whose submit was decided but not yet answered: fired again (same `unique_key`)
    /// before anything else.
    pub pending_ms: Option<i64>,
}

impl ScheduleRecord {
    /// A schedule seen for the first time at `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        Self {
            last_tick_ms: now_ms,
            last_run_ms: None,
            last_job: None,
            pending_ms: None,
        }
    }

    /// About to submit `tick`: it stays pending until [`Self::fired`] or [`Self::passed`].
    pub fn intend(&mut self, tick: i64) {
        self.pending_ms = Some(tick);
    }

    /// `tick` got `job`.
    pub fn fired(&mut self, tick: i64, job: JobId) {
        self.last_tick_ms = self.last_tick_ms.max(tick);
        self.last_run_ms = Some(self.last_run_ms.map_or(tick, |t| t.max(tick)));
        self.last_job = Some(job);
        self.pending_ms = self.pending_ms.filter(|p| *p != tick);
    }

    /// Every tick up to `tick` was dealt with without a job.
    pub fn passed(&mut self, tick: i64) {
        self.last_tick_ms = self.last_tick_ms.max(tick);
        self.pending_ms = self.pending_ms.filter(|p| *p > tick);
    }

    /// The journal bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut flags = 0;
        let mut flag = |present: bool, bit: u8| {
            if present {
                flags |= bit;
            }
        };
        flag(self.last_run_ms.is_some(), HAS_LAST_RUN);
        flag(self.last_job.is_some(), HAS_LAST_JOB);
        flag(self.pending_ms.is_some(), HAS_PENDING);
        let mut out = Vec::with_capacity(LEN);
        out.push(RECORD_VERSION);
        out.push(flags);
        out.extend_from_slice(&self.last_tick_ms.to_be_bytes());
        out.extend_from_slice(&self.last_run_ms.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&self.pending_ms.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(self.last_job.map(|j| j.0).unwrap_or_default().as_bytes());
        out
    }

    /// Reads [`Self::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        match bytes.first() {
            Some(&RECORD_VERSION) if bytes.len() == LEN => {}
            Some(&RECORD_VERSION) => {
                return Err(format!("expected {LEN} bytes, got {}", bytes.len()))
            }
            Some(v) => {
                return Err(format!(
                    "expected format version {RECORD_VERSION}, got {v} (written by another Warden version?)"
                ))
            }
            None => return Err("empty value".into()),
        }
        let flags = bytes[1];
        let i64_at = |at: usize| {
            let mut b = [0; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            i64::from_be_bytes(b)
        };
        let some_if = |bit: u8, v| (flags & bit != 0).then_some(v);
        let mut id = [0; 16];
        id.copy_from_slice(&bytes[26..42]);
        Ok(Self {
            last_tick_ms: i64_at(2),
            last_run_ms: some_if(HAS_LAST_RUN, i64_at(10)),
            pending_ms: some_if(HAS_PENDING, i64_at(18)),
            last_job: (flags & HAS_LAST_JOB != 0).then_some(JobId(Uuid::from_bytes(id))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures that a tick goes pending → fired with its job, moving the cursor and the last run.
    #[test]
    fn intent_then_fired() {
        let mut r = ScheduleRecord::new(100);
        r.intend(1000);
        assert_eq!(r.pending_ms, Some(1000));
        assert_eq!(r.last_tick_ms, 100, "a pending tick is not dealt with yet");
        let job = JobId::new();
        r.fired(1000, job);
        assert_eq!(
            r,
            ScheduleRecord {
                last_tick_ms: 1000,
                last_run_ms: Some(1000),
                last_job: Some(job),
                pending_ms: None,
            }
        );
    }

    /// Ensures that a tick let go (skipped, refused for good) clears its intent and moves the
    /// cursor, but keeps the previous run and job.
    #[test]
    fn intent_then_passed() {
        let job = JobId::new();
        let mut r = ScheduleRecord::new(0);
        r.fired(1000, job);
        r.intend(2000);
        r.passed(2000);
        assert_eq!(r.pending_ms, None);
        assert_eq!(
            (r.last_tick_ms, r.last_run_ms, r.last_job),
            (2000, Some(1000), Some(job))
        );
        // Missed ticks before a pending one leave it pending.
        r.intend(5000);
        r.passed(4000);
        assert_eq!((r.last_tick_ms, r.pending_ms), (4000, Some(5000)));
    }

    /// Ensures that the cursor never goes back, whatever order the transitions come in.
    #[test]
    fn cursor_only_moves_forward() {
        let mut r = ScheduleRecord::new(5000);
        r.passed(1000);
        r.fired(3000, JobId::new());
        assert_eq!(r.last_tick_ms, 5000);
    }

    /// Ensures that records round-trip with and without their optional fields, including a
    /// pending intent, and that foreign bytes are refused with a reason.
    #[test]
    fn encoding_round_trips() {
        let mut r = ScheduleRecord::new(1_767_225_600_123);
        assert_eq!(ScheduleRecord::decode(&r.encode()), Ok(r));
        r.fired(1_767_225_601_000, JobId::new());
        r.intend(1_767_225_602_000);
        let bytes = r.encode();
        assert_eq!(bytes[0], RECORD_VERSION);
        assert_eq!(ScheduleRecord::decode(&bytes), Ok(r));
        assert!(ScheduleRecord::decode(&bytes[..10])
            .unwrap_err()
            .contains("bytes"));
        let mut other = bytes.clone();
        other[0] = 9;
        assert!(ScheduleRecord::decode(&other)
            .unwrap_err()
            .contains("version"));
        assert!(ScheduleRecord::decode(&[]).is_err());
    }
}
