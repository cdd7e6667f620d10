//! The scheduler: one actor for every cron schedule (`[[schedules]]`), supervised by the root
//! as its last child (`root/scheduler`). It keeps one timer, for the earliest next tick, and at
//! each tick submits the schedule's job through the dispatcher. It accepts [`SchedulerMsg::Tick`]
//! (its own timer) and [`SchedulerMsg::List`] (the admin `schedules` command).
//!
//! # Each tick fires once
//!
//! Per schedule the journal's `meta` tree holds a [`ScheduleRecord`] under `schedule/<name>`.
//! Firing tick T is: record T as pending (the intent), submit with
//! `unique_key = "schedule:<name>:<T as RFC 3339>"`, record T as fired with its job id, await
//! [`Journal::durable`]. The journal's log is applied in order, so a durable job implies a
//! durable intent. A start that finds a pending intent fires it again first, under the same key:
//! the dispatcher dedups it while the first job is unfinished. The one gap left is a job that
//! was accepted *and* finished before its tick was recorded as fired, then a crash: that tick
//! runs twice (at-least-once, like a job running at a crash).
//!
//! Ticks missed while the node was down (or while the actor was restarting) follow the
//! schedule's `catch_up`; a schedule seen for the first time starts from that instant. A tick
//! whose previous run is unfinished follows `overlap`. The choices live in [`plan`]; the
//! state machine in [`record`].
//!
//! # Refused submits
//!
//! - `shutting_down`: the node is draining. The tick stays pending for the next start and the
//!   scheduler fires nothing more in this incarnation (retrying would only spin until the stop).
//! - `overloaded`, `internal`, a dispatcher that is restarting or does not answer: the tick
//!   stays pending and is retried with backoff (1 s doubling to 1 min); ticks that come due
//!   meanwhile are missed ones once it goes through (see [`plan::plan`]).
//! - Anything else (`unknown_job`, `bad_request`, …) will not get better by retrying: the tick is
//!   logged with the schedule's name, counted as `failed` and let go; the next tick tries again.

mod plan;
mod record;

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use futures::future::BoxFuture;
use ractor::concurrency::JoinHandle;
use ractor::rpc::CallResult;
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, MessagingErr, RpcReplyPort, SpawnErr,
};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::args::{Overlap, ScheduleArgs};
use crate::dispatcher::{Accepted, DispatcherLink, DispatcherMsg};
use crate::job::{now_ms, rfc3339_ms, JobId};
use crate::journal::Journal;
use crate::protocol::{ApiError, ErrorCode, SubmitSpec};
use crate::supervisor::ChildSpec;

pub use self::plan::{
    latest_ticks, next_tick, prev_tick, ticks_between, Plan, COUNT_CAP, MAX_CATCH_UP,
};
pub use self::record::ScheduleRecord;

/// Schedule ticks, by `schedule` and `outcome`: `fired`, `skipped_overlap` (the previous run was
/// unfinished), `missed` (let go by the catch-up policy), `failed` (refused for good). Not yet in
/// the [`crate::metrics`] catalogue.
pub const SCHEDULE_FIRES: &str = crate::metrics::SCHEDULE_FIRES;

/// How long a submit waits for the dispatcher.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `schedules` waits for the scheduler.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry of a tick the dispatcher could not take; doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_secs(1);
/// Cap on the retry delay.
const RETRY_MAX: Duration = Duration::from_secs(60);
/// The timer never sleeps longer, so a wall clock that jumps (NTP, a suspended VM) is noticed
/// within a minute even when the next tick is a day away.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Tracing path of the actor.
const PATH: &str = "root/scheduler";

/// Parses a cron expression: five fields, or six with seconds first; no year field.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| format!("expected a cron expression like \"0 0 2 * * *\" or \"*/5 * * * *\", got {expr:?} ({e})"))
}

/// The `unique_key` of a schedule's job for `tick`: the same tick always gets the same key.
pub fn unique_key(schedule: &str, tick_ms: i64) -> String {
    let at = DateTime::<Utc>::from_timestamp_millis(tick_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    format!("schedule:{schedule}:{at}")
}

/// Where the admin finds the current scheduler.
pub type SchedulerLink = crate::link::Link<SchedulerMsg>;

/// Messages the scheduler accepts.
pub enum SchedulerMsg {
    /// The timer: fire whatever is due.
    Tick,
    /// Every schedule with its next and last run.
    List(RpcReplyPort<Vec<ScheduleView>>),
}

/// One schedule in `schedules`. Times are RFC 3339 UTC with milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleView {
    /// Its name.
    pub name: String,
    /// Its cron expression.
    pub cron: String,
    /// The job it submits.
    pub job: String,
    /// The next tick (a pending one when a submit is being retried); `null` when the cron never
    /// matches again.
    pub next_run_at: Option<String>,
    /// The latest tick that got a job (the tick's time, not the submit's).
    pub last_run_at: Option<String>,
    /// That job.
    pub last_job_id: Option<String>,
}

/// Asks the scheduler for its schedules, with a timeout, mapping failures to API errors.
pub async fn list(link: &SchedulerLink) -> Result<Vec<ScheduleView>, ApiError> {
    let s = link
        .get()
        .ok_or_else(|| ApiError::internal("the scheduler is restarting; retry in a moment"))?;
    match s.call(SchedulerMsg::List, Some(LIST_TIMEOUT)).await {
        Ok(CallResult::Success(v)) => Ok(v),
        Ok(CallResult::Timeout) => Err(ApiError::internal(format!(
            "the scheduler did not answer within {LIST_TIMEOUT:?}"
        ))),
        _ => Err(ApiError::internal(
            "the scheduler stopped before answering; retry in a moment",
        )),
    }
}

/// What the scheduler starts with (see [`SchedulerSpec::new`]).
#[derive(Clone)]
pub struct SchedulerArgs {
    schedules: Vec<(ScheduleArgs, Cron)>,
    journal: Journal,
    dispatcher: DispatcherLink,
    link: SchedulerLink,
}

/// The scheduler actor (stateless shell; see [`SchedulerState`]).
pub struct Scheduler;

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
    /// When this schedule next needs the actor: its retry, or its next tick.
    fn due_at(&self) -> Option<i64> {
        match self.rec.pending_ms {
            Some(_) => Some(self.retry.map_or(0, |(at, _)| at)),
            None => self.next,
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

/// The scheduler's mutable state.
pub struct SchedulerState {
    schedules: Vec<Schedule>,
    journal: Journal,
    dispatcher: DispatcherLink,
    link: SchedulerLink,
    timer: Option<JoinHandle<Result<(), MessagingErr<SchedulerMsg>>>>,
    /// The dispatcher answered `shutting_down`: fire nothing more in this incarnation.
    draining: bool,
    /// A record was written since the last [`Journal::durable`].
    dirty: bool,
}

fn count(schedule: &str, outcome: &'static str, n: u64) {
    metrics::counter!(SCHEDULE_FIRES, "schedule" => schedule.to_string(), "outcome" => outcome)
        .increment(n);
}

impl SchedulerState {
    fn persist(&mut self, i: usize) -> Result<(), ActorProcessingErr> {
        let s = &mut self.schedules[i];
        s.next = next_tick(&s.cron, s.rec.last_tick_ms);
        self.journal.meta_put(&s.meta_key, &s.rec.encode())?;
        self.dirty = true;
        Ok(())
    }

    /// Fires what is due in every schedule, then makes the records durable. `on_time` is false
    /// only at start, where every due tick was missed while the node was down.
    async fn run_due(&mut self, on_time: bool) -> Result<(), ActorProcessingErr> {
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
        if s.next.is_none_or(|next| next > now) {
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

    /// Fires `tick` of schedule `i`. Returns false when the tick stays pending (the schedule
    /// must not go on to later ticks), true when it was dealt with.
    async fn fire(
        &mut self,
        i: usize,
        tick: i64,
        check_overlap: bool,
        now: i64,
    ) -> Result<bool, ActorProcessingErr> {
        let name = self.schedules[i].args.name.clone();
        if check_overlap {
            if let Some(prev) = self.unfinished_previous(i)? {
                info!(actor = PATH, schedule = %name, tick = %rfc3339_ms(tick), previous_job = %prev,
                    "tick skipped: the previous run is unfinished (overlap = skip)");
                count(&name, "skipped_overlap", 1);
                self.schedules[i].rec.passed(tick);
                self.persist(i)?;
                return Ok(true);
            }
        }
        self.schedules[i].rec.intend(tick);
        self.persist(i)?;
        let a = &self.schedules[i].args;
        let spec = SubmitSpec {
            name: a.job.clone(),
            params: match &a.params {
                serde_json::Value::Null => serde_json::json!({}),
                p => p.clone(),
            },
            priority: a.priority,
            unique_key: Some(unique_key(&name, tick)),
            max_retries: None,
            run_at: None,
        };
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
                let attempt = s.retry.map_or(0, |(_, n)| n) + 1;
                let delay = RETRY_MIN
                    .saturating_mul(1 << (attempt - 1).min(6))
                    .min(RETRY_MAX);
                s.retry = Some((now + delay.as_millis() as i64, attempt));
                warn!(actor = PATH, schedule = %name, tick = %rfc3339_ms(tick), reason = %why, attempt,
                    retry_in_ms = delay.as_millis() as u64, "submit failed; the tick stays pending and is retried");
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

    /// The previous run's job when it is still unfinished.
    fn unfinished_previous(&self, i: usize) -> Result<Option<JobId>, ActorProcessingErr> {
        let Some(prev) = self.schedules[i].rec.last_job else {
            return Ok(None);
        };
        // A job compacted away finished long ago.
        let rec = self.journal.get(prev)?;
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
                ErrorCode::Overloaded | ErrorCode::Internal => {
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
    fn arm(&mut self, me: &ActorRef<SchedulerMsg>) {
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

impl Actor for Scheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        me: ActorRef<SchedulerMsg>,
        args: SchedulerArgs,
    ) -> Result<SchedulerState, ActorProcessingErr> {
        let now = now_ms();
        let mut st = SchedulerState {
            schedules: Vec::with_capacity(args.schedules.len()),
            journal: args.journal,
            dispatcher: args.dispatcher,
            link: args.link,
            timer: None,
            draining: false,
            dirty: false,
        };
        for (args, cron) in args.schedules {
            let meta_key = format!("schedule/{}", args.name);
            let stored = st.journal.meta_get(&meta_key)?;
            let rec = match stored.as_deref().map(ScheduleRecord::decode) {
                Some(Ok(rec)) => rec,
                Some(Err(e)) => {
                    error!(actor = PATH, schedule = %args.name, key = %meta_key, error = %e,
                        "unreadable schedule state; starting the schedule afresh from now");
                    ScheduleRecord::new(now)
                }
                None => ScheduleRecord::new(now),
            };
            let fresh = stored.is_none();
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

    async fn post_start(
        &self,
        me: ActorRef<SchedulerMsg>,
        st: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        st.run_due(false).await?;
        for s in &st.schedules {
            info!(actor = PATH, schedule = %s.args.name, cron = %s.args.cron, job = %s.args.job,
                next_run_at = s.view().next_run_at.as_deref().unwrap_or("-"), "schedule armed");
        }
        st.arm(&me);
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<SchedulerMsg>,
        msg: SchedulerMsg,
        st: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SchedulerMsg::Tick => {
                st.run_due(true).await?;
                st.arm(&me);
            }
            SchedulerMsg::List(reply) => {
                let _ = reply.send(st.schedules.iter().map(Schedule::view).collect());
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        me: ActorRef<SchedulerMsg>,
        st: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = st.timer.take() {
            t.abort();
        }
        st.link.clear_if(me.get_id());
        Ok(())
    }
}

/// The scheduler's recipe under the root.
pub struct SchedulerSpec(SchedulerArgs);

impl SchedulerSpec {
    /// Checks the schedules (names unique, crons parse) and keeps what each incarnation needs.
    pub fn new(
        schedules: &[ScheduleArgs],
        journal: Journal,
        dispatcher: DispatcherLink,
        link: SchedulerLink,
    ) -> Result<Self, String> {
        let mut parsed: Vec<(ScheduleArgs, Cron)> = Vec::with_capacity(schedules.len());
        for (i, s) in schedules.iter().enumerate() {
            if parsed.iter().any(|(p, _)| p.name == s.name) {
                return Err(format!(
                    "schedules[{i}].name: expected a unique name, got {:?} twice",
                    s.name
                ));
            }
            let cron = parse_cron(&s.cron).map_err(|e| format!("schedules[{i}].cron: {e}"))?;
            parsed.push((s.clone(), cron));
        }
        Ok(Self(SchedulerArgs {
            schedules: parsed,
            journal,
            dispatcher,
            link,
        }))
    }
}

impl ChildSpec for SchedulerSpec {
    fn name(&self) -> String {
        "scheduler".into()
    }
    fn kind(&self) -> &'static str {
        "scheduler"
    }
    fn spawn(
        &self,
        supervisor: ActorCell,
        _path: String,
    ) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
        let args = self.0.clone();
        Box::pin(async move {
            let (r, _) = Actor::spawn_linked(None, Scheduler, args, supervisor).await?;
            Ok(r.get_cell())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures that a tick's unique key names the schedule and the tick to the second, so a
    /// re-fire of the same tick collides and the next tick does not.
    #[test]
    fn unique_key_per_tick() {
        let t = 1_767_225_600_000;
        assert_eq!(
            unique_key("daily", t),
            "schedule:daily:2026-01-01T00:00:00Z"
        );
        assert_eq!(unique_key("daily", t), unique_key("daily", t));
        assert_ne!(unique_key("daily", t), unique_key("daily", t + 1000));
    }

    /// Ensures that a node refuses duplicate schedule names and bad crons before it starts.
    #[test]
    fn spec_checks_names_and_crons() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let s = ScheduleArgs {
            name: "a".into(),
            cron: "*/5 * * * *".into(),
            job: "builtin.noop".into(),
            params: serde_json::Value::Null,
            priority: None,
            catch_up: Default::default(),
            overlap: Default::default(),
        };
        let new = |v: &[ScheduleArgs]| {
            SchedulerSpec::new(v, journal.clone(), Default::default(), Default::default())
                .map(|_| ())
        };
        assert_eq!(new(std::slice::from_ref(&s)), Ok(()));
        assert!(new(&[s.clone(), s.clone()]).unwrap_err().contains("unique"));
        let bad = ScheduleArgs {
            cron: "every day".into(),
            ..s
        };
        assert!(new(&[bad]).unwrap_err().starts_with("schedules[0].cron"));
    }
}
