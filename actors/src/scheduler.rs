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
//! whose previous run is unfinished follows `overlap`. The choices are pure functions
//! (`scheduler/plan.rs`, [`Plan`]); the intent state machine is [`ScheduleRecord`]. With
//! `catch_up = "all"` and `overlap = "skip"` the missed ticks fire in one go, so each one after
//! the first finds its predecessor unfinished and is skipped: use `overlap = "allow"` to get
//! one run per missed tick. A node without schedules runs no scheduler.
//!
//! # Cluster mode
//!
//! Every node runs the same schedules, each keeping its own record in its own journal, and
//! fires every tick it sees due. The submit carries the tick
//! ([`ScheduleTick`](crate::protocol::ScheduleTick)): the cluster store records
//! `(schedule, tick)` in `schedule_ticks` in the statement that inserts the job, so the first
//! node to fire a tick makes its one job, and every other node (or a re-fire of a pending
//! intent, even after that job finished) is answered that job as deduplicated. A tick gets its
//! job as long as one node is up when it comes due. The leader forgets ticks older than
//! `[jobs] retention` with the jobs: a node down for longer that catches up with
//! `catch_up = "all"` fires such old ticks again.
//!
//! The overlap check reads the previous run through [`JobStore`], the cluster's table, since
//! that job may have been made by another node. A node that skips a tick for overlap records
//! nothing shared, so a node that sees the previous run finished may still fire that tick.
//!
//! # Refused submits
//!
//! - `shutting_down`: the node is draining. The tick stays pending for the next start and the
//!   scheduler fires nothing more in this incarnation (retrying would only spin until the stop).
//! - `overloaded`, `internal`, `storage_unavailable`, a dispatcher that is restarting or does
//!   not answer: the tick stays pending and is retried with backoff (1 s doubling to 1 min);
//!   ticks that come due meanwhile are missed ones once it goes through (see [`Plan`]). A
//!   previous run that cannot be read for the overlap check backs off the same way, before
//!   anything is intended.
//! - Anything else (`unknown_job`, `bad_request`, …) will not get better by retrying: the tick is
//!   logged with the schedule's name, counted as `failed` and let go; the next tick tries again.

mod plan;
mod record;
mod state;

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use futures::future::BoxFuture;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr};
use serde::{Deserialize, Serialize};

use crate::args::ScheduleArgs;
use crate::dispatcher::DispatcherLink;
use crate::protocol::ApiError;
use crate::store::journal::Journal;
use crate::store::JobStore;
use crate::supervisor::{spawn_child, ChildSpec};

pub use self::plan::{
    latest_ticks, next_tick, prev_tick, ticks_between, Plan, COUNT_CAP, MAX_CATCH_UP,
};
pub use self::record::ScheduleRecord;
pub use self::state::SchedulerState;

/// How long `schedules` waits for the scheduler.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

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
    jobs: JobStore,
    dispatcher: DispatcherLink,
    link: SchedulerLink,
}

/// The scheduler actor (stateless shell; see [`SchedulerState`]).
pub struct Scheduler;

impl Actor for Scheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        me: ActorRef<SchedulerMsg>,
        args: SchedulerArgs,
    ) -> Result<SchedulerState, ActorProcessingErr> {
        SchedulerState::load(args, me)
    }

    async fn post_start(
        &self,
        me: ActorRef<SchedulerMsg>,
        st: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        st.run_due(false).await?;
        st.log_armed();
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
                let _ = reply.send(st.views());
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        me: ActorRef<SchedulerMsg>,
        st: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        st.stopped(me.get_id());
        Ok(())
    }
}

/// The scheduler's recipe under the root.
pub struct SchedulerSpec(SchedulerArgs);

impl SchedulerSpec {
    /// Checks the schedules (names unique, crons parse) and keeps what each incarnation needs:
    /// the journal for the schedules' own state, `jobs` to read their previous runs.
    pub fn new(
        schedules: &[ScheduleArgs],
        journal: Journal,
        jobs: JobStore,
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
            jobs,
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
        spawn_child(Scheduler, args, supervisor)
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
            let jobs = JobStore::Journal(journal.clone());
            SchedulerSpec::new(
                v,
                journal.clone(),
                jobs,
                Default::default(),
                Default::default(),
            )
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
