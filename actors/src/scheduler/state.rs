//! The scheduler's state and what it does at a tick: for each schedule, fire a pending intent,
//! then the due ticks its [`plan`](super::plan::plan) picks, checking overlap, journaling the
//! intent before each submit and the outcome after it; then one timer for the earliest next need.

use std::time::Duration;

use croner::Cron;
use ractor::concurrency::JoinHandle;
use ractor::rpc::CallResult;
use ractor::{ActorId, ActorProcessingErr, ActorRef, MessagingErr};
use tracing::{error, info, warn};

use super::plan::{self, next_tick, MAX_CATCH_UP};
use super::record::ScheduleRecord;
use super::{unique_key, ScheduleView, SchedulerArgs, SchedulerLink, SchedulerMsg};
use crate::args::{Overlap, ScheduleArgs};
use crate::dispatcher::{Accepted, DispatcherLink, DispatcherMsg};
use crate::job::{now_ms, rfc3339_ms, JobId};
use crate::metrics as m;
use crate::protocol::{ApiError, ErrorCode, ScheduleTick, SubmitSpec};
use crate::store::journal::Journal;
use crate::store::JobStore;

/// How long a submit waits for the dispatcher.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry of a tick the dispatcher could not take; doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_secs(1);
/// Cap on the retry delay.
const RETRY_MAX: Duration = Duration::from_secs(60);
/// The timer never sleeps longer, so a wall clock that jumps (NTP, a suspended VM) is noticed
/// within a minute even when the next tick is a day away.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Tracing path of the actor.
const PATH: &str = "root/scheduler";

/// One schedule at run time.
struct Schedule {
    args: ScheduleArgs,
    cron: Cron,
    meta_key: String,
    rec: ScheduleRecord,
    /// `next_tick(last_tick)`, kept because croner can take a while to prove that a cron like
    /// `0 0 0 31 2 *` never matches; refreshed whenever the record changes.
    next: Option<i64>,
    /// When a pending tick is tried again, and how many times it was refused.
    retry: Option<(i64, u32)>,
}

impl Schedule {
    /// When this schedule next needs the actor: its retry, its pending tick (at once), or its
    /// next tick.
    fn due_at(&self) -> Option<i64> {
        match (self.retry, self.rec.pending_ms) {
            (Some((at, _)), _) => Some(at),
            (None, Some(_)) => Some(0),
            (None, None) => self.next,
        }
    }

    /// The submit of `tick`: the same tick always gets the same key and tick.
    fn spec(&self, tick: i64) -> SubmitSpec {
        let a = &self.args;
        SubmitSpec {
            name: a.job.clone(),
            params: match &a.params {
                serde_json::Value::Null => serde_json::json!({}),
                p => p.clone(),
            },
            priority: a.priority,
            unique_key: Some(unique_key(&a.name, tick)),
            max_retries: None,
            run_at: None,
            tick: Some(ScheduleTick {
                schedule: a.name.clone(),
                tick_ms: tick,
            }),
        }
    }

    fn view(&self) -> ScheduleView {
        ScheduleView {
            name: self.args.name.clone(),
            cron: self.args.cron.clone(),
            job: self.args.job.clone(),
            next_run_at: self.rec.pending_ms.or(self.next).map(rfc3339_ms),
            last_run_at: self.rec.last_run_ms.map(rfc3339_ms),
            last_job_id: self.rec.last_job.map(|j| j.to_string()),
        }
    }
}

/// Why a submit did not go through, by what the scheduler does about it.
enum Refusal {
    /// The node is draining: leave the tick pending for the next start.
    Draining(String),
    /// Worth retrying later.
    Transient(String),
    /// Retrying cannot help: let the tick go.
    Permanent(ApiError),
}

/// What the overlap check lets a tick do.
enum Gate {
    /// Fire it.
    Open,
    /// The previous run is unfinished: it was let go.
    Skipped,
    /// The previous run could not be read: it is retried later.
    Unknown,
}

/// The scheduler's mutable state.
pub struct SchedulerState {
    schedules: Vec<Schedule>,
    journal: Journal,
    /// Where the previous runs' jobs are read: the journal, or the cluster's table.
    jobs: JobStore,
    dispatcher: DispatcherLink,
    link: SchedulerLink,
    timer: Option<JoinHandle<Result<(), MessagingErr<SchedulerMsg>>>>,
    /// The dispatcher answered `shutting_down`: fire nothing more in this incarnation.
    draining: bool,
    /// A record was written since the last [`Journal::durable`].
    dirty: bool,
}

fn count(schedule: &str, outcome: &'static str, n: u64) {
    metrics::counter!(m::SCHEDULE_FIRES, "schedule" => schedule.to_string(), "outcome" => outcome)
        .increment(n);
}

impl SchedulerState {
    /// Reads every schedule's record from the journal; a schedule seen for the first time is
    /// recorded as starting now. Points `link` at `me`.
    pub(super) fn load(
        args: SchedulerArgs,
        me: ActorRef<SchedulerMsg>,
    ) -> Result<Self, ActorProcessingErr> {
        let now = now_ms();
        let mut st = SchedulerState {
            schedules: Vec::with_capacity(args.schedules.len()),
            journal: args.journal,
            jobs: args.jobs,
            dispatcher: args.dispatcher,
            link: args.link,
            timer: None,
            draining: false,
            dirty: false,
        };
        for (args, cron) in args.schedules {
            let meta_key = format!("schedule/{}", args.name);
            let stored = st.journal.meta_get(&meta_key)?;
            let (rec, fresh) = match stored.as_deref().map(ScheduleRecord::decode) {
                Some(Ok(rec)) => (rec, false),
                Some(Err(e)) => {
                    error!(actor = PATH, schedule = %args.name, key = %meta_key, error = %e,
                        "unreadable schedule state; starting the schedule afresh from now");
                    (ScheduleRecord::new(now), true)
                }
                None => (ScheduleRecord::new(now), true),
            };
            st.schedules.push(Schedule {
                next: next_tick(&cron, rec.last_tick_ms),
                args,
                cron,
                meta_key,
                rec,
                retry: None,
            });
            if fresh {
                // Recorded at once, so that ticks missed before its first tick are caught up.
                st.persist(st.schedules.len() - 1)?;
            }
        }
        st.link.set(me);
        Ok(st)
    }

    /// Every schedule as `schedules` shows it.
    pub(super) fn views(&self) -> Vec<ScheduleView> {
        self.schedules.iter().map(Schedule::view).collect()
    }

    /// Logs each schedule's next run, once at start.
    pub(super) fn log_armed(&self) {
        for s in &self.schedules {
            info!(actor = PATH, schedule = %s.args.name, cron = %s.args.cron, job = %s.args.job,
                next_run_at = s.view().next_run_at.as_deref().unwrap_or("-"), "schedule armed");
        }
    }

    /// The incarnation `id` stopped: cancel its timer, unpoint the link.
    pub(super) fn stopped(&mut self, id: ActorId) {
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        self.link.clear_if(id);
    }

    fn persist(&mut self, i: usize) -> Result<(), ActorProcessingErr> {
        let s = &mut self.schedules[i];
        s.next = next_tick(&s.cron, s.rec.last_tick_ms);
        self.journal.meta_put(&s.meta_key, &s.rec.encode())?;
        self.dirty = true;
        Ok(())
    }

    /// Fires what is due in every schedule, then makes the records durable. `on_time` is false
    /// only at start, where every due tick was missed while the node was down.
    pub(super) async fn run_due(&mut self, on_time: bool) -> Result<(), ActorProcessingErr> {
        for i in 0..self.schedules.len() {
            if self.draining {
                break;
            }
            self.run_schedule(i, now_ms(), on_time).await?;
        }
        if std::mem::take(&mut self.dirty) {
            self.journal.durable().await?;
        }
        Ok(())
    }

    async fn run_schedule(
        &mut self,
        i: usize,
        now: i64,
        on_time: bool,
    ) -> Result<(), ActorProcessingErr> {
        let s = &self.schedules[i];
        if let Some(tick) = s.rec.pending_ms {
            if s.retry.is_some_and(|(at, _)| at > now) {
                return Ok(());
            }
            if s.retry.is_none() {
                info!(actor = PATH, schedule = %s.args.name, tick = %rfc3339_ms(tick), "firing a tick left pending by the previous run");
            }
            // The intent was decided before: no second overlap check.
            if !self.fire(i, tick, false, now).await? {
                return Ok(());
            }
        }
        let s = &self.schedules[i];
        if s.next.is_none_or(|next| next > now) || s.retry.is_some_and(|(at, _)| at > now) {
            return Ok(());
        }
        let check_overlap = s.args.overlap == Overlap::Skip;
        let plan = plan::plan(&s.cron, s.args.catch_up, s.rec.last_tick_ms, now, on_time);
        if let Some(through) = plan.missed_through {
            warn!(actor = PATH, schedule = %s.args.name, catch_up = ?s.args.catch_up, missed = plan.missed,
                through = %rfc3339_ms(through), "ticks missed; not fired");
            if plan.fire.len() >= MAX_CATCH_UP {
                warn!(actor = PATH, schedule = %s.args.name, max = MAX_CATCH_UP, "catch-up capped: only the latest missed ticks fire");
            }
            count(&s.args.name, "missed", plan.missed as u64);
            self.schedules[i].rec.passed(through);
            self.persist(i)?;
        }
        for tick in plan.fire {
            if !self.fire(i, tick, check_overlap, now).await? {
                break;
            }
        }
        Ok(())
    }

    /// Fires `tick` of schedule `i`. Returns false when the tick is not dealt with yet (it stays
    /// pending, or is retried later): the schedule must not go on to later ticks; true when it
    /// was dealt with.
    async fn fire(
        &mut self,
        i: usize,
        tick: i64,
        check_overlap: bool,
        now: i64,
    ) -> Result<bool, ActorProcessingErr> {
        let name = self.schedules[i].args.name.clone();
        if check_overlap {
            match self.overlap(i, tick, now).await? {
                Gate::Open => {}
                Gate::Skipped => return Ok(true),
                Gate::Unknown => return Ok(false),
            }
        }
        self.schedules[i].rec.intend(tick);
        self.persist(i)?;
        let spec = self.schedules[i].spec(tick);
        let result = self.submit(spec).await;
        let s = &mut self.schedules[i];
        match result {
            Ok(accepted) => {
                info!(actor = PATH, schedule = %name, tick = %rfc3339_ms(tick), job_id = %accepted.job_id,
                    deduplicated = accepted.deduplicated, "tick fired");
                s.rec.fired(tick, accepted.job_id);
                s.retry = None;
                count(&name, "fired", 1);
            }
            Err(Refusal::Draining(why)) => {
                info!(actor = PATH, schedule = %name, tick = %rfc3339_ms(tick), reason = %why,
                    "the node is draining; the tick stays pending for the next start");
                self.draining = true;
                return Ok(false);
            }
            Err(Refusal::Transient(why)) => {
                self.back_off(i, tick, now, &format!("submit failed: {why}"));
                return Ok(false);
            }
            Err(Refusal::Permanent(e)) => {
                error!(actor = PATH, schedule = %name, tick = %rfc3339_ms(tick), job = %s.args.job,
                    code = e.code.as_str(), error = %e.message, "submit refused; the tick is dropped");
                s.rec.passed(tick);
                s.retry = None;
                count(&name, "failed", 1);
            }
        }
        self.persist(i)?;
        Ok(true)
    }

    /// With `overlap = skip`: lets `tick` go when the previous run is unfinished, and retries
    /// it later when the previous run cannot be read (nothing was intended yet, so the retry
    /// decides again).
    async fn overlap(&mut self, i: usize, tick: i64, now: i64) -> Result<Gate, ActorProcessingErr> {
        match self.unfinished_previous(i).await {
            Ok(None) => Ok(Gate::Open),
            Ok(Some(prev)) => {
                let name = &self.schedules[i].args.name;
                info!(actor = PATH, schedule = %name, tick = %rfc3339_ms(tick), previous_job = %prev,
                    "tick skipped: the previous run is unfinished (overlap = skip)");
                count(name, "skipped_overlap", 1);
                self.schedules[i].rec.passed(tick);
                self.schedules[i].retry = None;
                self.persist(i)?;
                Ok(Gate::Skipped)
            }
            Err(why) => {
                let why = format!("the previous run could not be read: {why}");
                self.back_off(i, tick, now, &why);
                Ok(Gate::Unknown)
            }
        }
    }

    /// Schedule `i` tries `tick` again later: 1 s, doubling up to a minute.
    fn back_off(&mut self, i: usize, tick: i64, now: i64, why: &str) {
        let s = &mut self.schedules[i];
        let attempt = s.retry.map_or(0, |(_, n)| n) + 1;
        let delay = RETRY_MIN
            .saturating_mul(1 << (attempt - 1).min(6))
            .min(RETRY_MAX);
        s.retry = Some((now + delay.as_millis() as i64, attempt));
        warn!(actor = PATH, schedule = %s.args.name, tick = %rfc3339_ms(tick), reason = %why, attempt,
            retry_in_ms = delay.as_millis() as u64, "the tick is retried");
    }

    /// The previous run's job when it is still unfinished. In cluster mode that job may have
    /// been fired by another node (this node's submit was answered with it): it is read from
    /// the cluster's table, never from this node's journal.
    async fn unfinished_previous(&self, i: usize) -> Result<Option<JobId>, String> {
        let Some(prev) = self.schedules[i].rec.last_job else {
            return Ok(None);
        };
        // A job compacted away finished long ago.
        let rec = self.jobs.get(prev).await?;
        Ok(rec.filter(|r| !r.status.is_finished()).map(|r| r.id))
    }

    async fn submit(&self, spec: SubmitSpec) -> Result<Accepted, Refusal> {
        let d = self
            .dispatcher
            .get()
            .ok_or_else(|| Refusal::Transient("the dispatcher is restarting".into()))?;
        match d
            .call(
                |p| DispatcherMsg::Submit(vec![spec], p),
                Some(SUBMIT_TIMEOUT),
            )
            .await
        {
            Ok(CallResult::Success(Ok(mut accepted))) => accepted
                .pop()
                .ok_or_else(|| Refusal::Transient("the dispatcher accepted nothing".into())),
            Ok(CallResult::Success(Err(e))) => Err(match e.code {
                ErrorCode::ShuttingDown => Refusal::Draining(e.message),
                // The store may take writes again (a full disk freed, PostgreSQL back).
                ErrorCode::Overloaded | ErrorCode::Internal | ErrorCode::StorageUnavailable => {
                    Refusal::Transient(format!("{}: {}", e.code.as_str(), e.message))
                }
                _ => Refusal::Permanent(e),
            }),
            // A submit that timed out may still be accepted later; the retry's unique_key
            // dedups it.
            Ok(CallResult::Timeout) => Err(Refusal::Transient(format!(
                "the dispatcher did not answer within {SUBMIT_TIMEOUT:?}"
            ))),
            _ => Err(Refusal::Transient(
                "the dispatcher stopped before answering".into(),
            )),
        }
    }

    /// Sets the one timer for the earliest schedule that needs the actor.
    pub(super) fn arm(&mut self, me: &ActorRef<SchedulerMsg>) {
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        if self.draining {
            return;
        }
        let Some(due) = self.schedules.iter().filter_map(Schedule::due_at).min() else {
            return;
        };
        let wait = u64::try_from(due - now_ms()).unwrap_or(0);
        let wait = Duration::from_millis(wait).min(MAX_SLEEP);
        self.timer = Some(me.send_after(wait, || SchedulerMsg::Tick));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::parse_cron;

    /// 2026-01-01T00:00:00Z.
    const T0: i64 = 1_767_225_600_000;

    fn every_second() -> Schedule {
        let args = ScheduleArgs {
            name: "tick".into(),
            cron: "* * * * * *".into(),
            job: "builtin.noop".into(),
            params: serde_json::Value::Null,
            priority: None,
            catch_up: Default::default(),
            overlap: Overlap::Skip,
        };
        Schedule {
            cron: parse_cron(&args.cron).unwrap(),
            meta_key: "schedule/tick".into(),
            rec: ScheduleRecord::new(T0),
            next: Some(T0 + 1000),
            retry: None,
            args,
        }
    }

    /// Ensures that a tick's submit names the tick as a typed value beside its key, so the
    /// cluster store can record it without parsing the key.
    #[test]
    fn a_submit_carries_its_tick() {
        let spec = every_second().spec(T0 + 1000);
        let tick = ScheduleTick {
            schedule: "tick".into(),
            tick_ms: T0 + 1000,
        };
        assert_eq!(spec.tick, Some(tick));
        assert_eq!(spec.unique_key, Some(unique_key("tick", T0 + 1000)));
        assert_eq!(spec.params, serde_json::json!({}));
    }

    /// Ensures that a schedule backing off is due at its retry, also when nothing is pending
    /// (its previous run could not be read), so the timer does not spin on a past tick; a
    /// pending tick without a retry is due at once, and otherwise the next tick.
    #[test]
    fn a_backing_off_schedule_is_due_at_its_retry() {
        let mut s = every_second();
        assert_eq!(s.due_at(), Some(T0 + 1000));
        s.retry = Some((T0 + 5000, 1));
        assert_eq!(s.due_at(), Some(T0 + 5000));
        s.rec.intend(T0 + 1000);
        assert_eq!(s.due_at(), Some(T0 + 5000));
        s.retry = None;
        assert_eq!(s.due_at(), Some(0));
    }
}
