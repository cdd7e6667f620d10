//! Unit tests of the dispatcher's state without the dispatcher actor: submit, dedup, the queue
//! bound, a job's run and its outcomes, a worker going down, and `why`. No actor and no runtime:
//! workers are channel stand-ins ([`WorkerPort::Channel`]) that keep what the core sends them,
//! and every decision is driven by calling the state's methods the way the actor's `handle`
//! does, with `flush_journal` at the end of each "message".

use std::time::Duration;

use ractor::ActorId;
use serde_json::json;
use tokio::sync::mpsc;

use super::{DispatcherArgs, DispatcherState, PipelineInfo, WorkerPort};
use crate::args::{JobsArgs, RetryPolicy};
use crate::dispatcher::BlockerKind;
use crate::job::{JobId, JobStatus};
use crate::pipeline::worker::{Ticket, WorkerMsg};
use crate::protocol::{ErrorCode, SubmitSpec};
use crate::routing::Router;
use crate::store::journal::Journal;
use crate::tasks::{TaskError, ThrottledBy};
use crate::upstream::Hold;

/// A worker stand-in: a channel the core's messages land in (no actor).
struct StandIn {
    port: WorkerPort,
    inbox: mpsc::UnboundedReceiver<WorkerMsg>,
}

impl StandIn {
    /// A stand-in with id `n`.
    fn new(n: u64) -> StandIn {
        let (tx, inbox) = mpsc::unbounded_channel();
        StandIn {
            port: WorkerPort::Channel(ActorId::Local(n), tx),
            inbox,
        }
    }

    fn id(&self) -> ActorId {
        self.port.id()
    }

    /// The next ticket the core handed it (every message sent is delivered at once).
    fn ticket(&mut self) -> Ticket {
        match self.inbox.try_recv() {
            Ok(WorkerMsg::Run(t)) => t,
            Ok(_) => panic!("expected a ticket, got another message"),
            Err(e) => panic!("expected a ticket: {e}"),
        }
    }
}

struct Rig {
    st: DispatcherState,
    _dir: tempfile::TempDir,
}

fn rig(max_queued: usize) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let builtin = PipelineInfo {
        name: "builtin".into(),
        retry: RetryPolicy {
            max_retries: 1,
            base_delay: Duration::from_secs(60),
            max_delay: Duration::from_secs(60),
        },
        tasks: vec!["builtin.noop".into(), "builtin.fail".into()],
        limiter_view: None,
        breaker_view: None,
    };
    let mut st = DispatcherState::new(DispatcherArgs {
        journal,
        jobs: JobsArgs {
            max_queued,
            max_wait: Duration::from_secs(300),
            retention: Duration::from_secs(3600),
            cancel_grace: Duration::from_secs(1),
        },
        pipelines: vec![builtin],
        router: Router::new(&[]).unwrap(),
        link: Default::default(),
        alerter: crate::alerts::Alerter::none(),
        tasks: Default::default(),
    });
    st.replay().unwrap();
    Rig { st, _dir: dir }
}

fn spec(name: &str, unique_key: Option<&str>) -> SubmitSpec {
    SubmitSpec {
        name: name.into(),
        params: json!({"n": 7}),
        priority: None,
        unique_key: unique_key.map(String::from),
        max_retries: None,
        run_at: None,
        tick: None,
    }
}

/// Submits one job as the actor would: the decision, then the journal write.
fn submit(st: &mut DispatcherState, s: SubmitSpec) -> JobId {
    let a = st.submit(vec![s]).unwrap();
    st.flush_journal().unwrap();
    a[0].job_id
}

/// A new stand-in worker (id `n`) says it is ready, as a worker does at start: returns it and
/// the first ticket it was given.
fn hand_out(st: &mut DispatcherState, n: u64) -> (StandIn, Ticket) {
    let mut w = StandIn::new(n);
    st.worker_ready(0, w.port.clone());
    st.flush_journal().unwrap();
    let first = w.ticket();
    (w, first)
}

/// Ensures that a submitted job waits in its queue with only its head in memory (its params
/// stay in the journal), and that `why` gives its position.
#[test]
fn submit_queues_the_head_only() {
    let mut r = rig(10);
    let id = submit(&mut r.st, spec("builtin.noop", None));
    let live = &r.st.live[&id];
    assert!(live.full.is_none(), "the whole record was dropped");
    assert_eq!(live.head.status, JobStatus::Pending);
    assert_eq!(r.st.journal.get(id).unwrap().unwrap().params, r#"{"n":7}"#);
    let why = r.st.why(id).unwrap();
    assert_eq!(why.kind, BlockerKind::Queued);
    assert!(why.detail.starts_with("position 0 "), "{}", why.detail);
}

/// Ensures that a second submit with the same unique key gets the first job's id, and that a
/// batch with an unknown job name is refused whole.
#[test]
fn dedup_and_all_or_none() {
    let mut r = rig(10);
    let first = submit(&mut r.st, spec("builtin.noop", Some("k")));
    let again = r.st.submit(vec![spec("builtin.noop", Some("k"))]).unwrap();
    assert_eq!((again[0].job_id, again[0].deduplicated), (first, true));
    let bad =
        r.st.submit(vec![spec("builtin.noop", None), spec("builtin.nope", None)])
            .unwrap_err();
    assert_eq!(bad.code, ErrorCode::UnknownJob);
    assert!(bad.message.starts_with("jobs[1].job:"), "{}", bad.message);
    assert_eq!(r.st.live.len(), 1, "nothing of the refused batch was taken");
}

/// Ensures that the queue bound refuses a submit that would pass `max_queued`.
#[test]
fn the_queue_bound_refuses_with_overloaded() {
    let mut r = rig(2);
    submit(&mut r.st, spec("builtin.noop", None));
    submit(&mut r.st, spec("builtin.noop", None));
    let e = r.st.submit(vec![spec("builtin.noop", None)]).unwrap_err();
    assert_eq!(e.code, ErrorCode::Overloaded);
}

/// Ensures that a workflow meets the same queue bound, refused with the same words as a submit,
/// and that its steps get their pipeline's retries and no delay (the one pending-record
/// constructor).
#[test]
fn a_workflow_meets_the_same_admission_as_a_submit() {
    let mut r = rig(3);
    submit(&mut r.st, spec("builtin.noop", None));
    let workflow = |n: usize| super::workflow::WorkflowSpec {
        kind: crate::job::WorkflowKind::Chain,
        jobs: (0..n).map(|_| spec("builtin.noop", None)).collect(),
        then: None,
        allow_failures: false,
    };
    let refused = r.st.submit_workflow(workflow(3)).unwrap_err();
    let submit_refused =
        r.st.submit(vec![spec("builtin.noop", None); 3])
            .unwrap_err();
    assert_eq!(refused.code, ErrorCode::Overloaded);
    assert_eq!(refused.message, submit_refused.message);
    let (_, ids) = r.st.submit_workflow(workflow(2)).unwrap();
    r.st.flush_journal().unwrap();
    for id in ids {
        let rec = r.st.journal().get(id).unwrap().unwrap();
        assert_eq!(rec.max_retries, 1, "the pipeline's retries");
        assert_eq!(rec.next_attempt_at, None);
        assert!(rec.workflow_id.is_some());
    }
}

/// Ensures that a ready worker gets the job with its params read back from the journal, that a
/// transient failure schedules a retry (`why`: retry_backoff) and that the retry spent makes
/// the next failure a dead letter.
#[test]
fn run_fail_retry_then_dead_letter() {
    let mut r = rig(10);
    let id = submit(&mut r.st, spec("builtin.fail", None));
    let (mut w, t) = hand_out(&mut r.st, 1);
    assert_eq!(
        (t.job_id, t.attempt, t.params.as_str()),
        (id, 1, r#"{"n":7}"#)
    );
    assert_eq!(r.st.live[&id].head.status, JobStatus::Running);

    let failed = Err(TaskError::Transient("boom".into()));
    r.st.job_done(0, w.id(), id, failed, Duration::ZERO);
    r.st.flush_journal().unwrap();
    assert_eq!(r.st.live[&id].head.status, JobStatus::Retrying);
    assert!(r.st.live[&id].full.is_none());
    assert_eq!(r.st.why(id).unwrap().kind, BlockerKind::RetryBackoff);

    // Due now: the timer hands it to the idle worker again.
    let due = r.st.live[&id].due.unwrap();
    r.st.timers.remove(&(due, id));
    r.st.enqueue(id, tokio::time::Instant::now(), false);
    r.st.worker_ready(0, w.port.clone());
    r.st.flush_journal().unwrap();
    assert_eq!(w.ticket().attempt, 2);
    let failed = Err(TaskError::Transient("boom again".into()));
    r.st.job_done(0, w.id(), id, failed, Duration::ZERO);
    r.st.flush_journal().unwrap();
    assert!(!r.st.live.contains_key(&id));
    let rec = r.st.journal.get(id).unwrap().unwrap();
    assert_eq!(rec.status, JobStatus::Failed);
    assert_eq!(
        rec.error.as_deref(),
        Some("boom again (gave up after 2 attempts)")
    );
}

/// Ensures that a job held back by its pipeline's open breaker waits without spending its
/// attempt and that `why` says it is the breaker.
#[test]
fn a_breaker_hold_is_reported_as_breaker_open() {
    let mut r = rig(10);
    let id = submit(&mut r.st, spec("builtin.noop", None));
    let (w, _) = hand_out(&mut r.st, 1);
    let held = Err(TaskError::Throttled {
        message: "held".into(),
        retry_after: Some(Duration::from_secs(30)),
        by: ThrottledBy::Gate(Hold::BreakerOpen),
    });
    r.st.job_done(0, w.id(), id, held, Duration::ZERO);
    r.st.flush_journal().unwrap();
    assert_eq!(r.st.live[&id].head.attempts, 0, "a hold spends no attempt");
    let why = r.st.why(id).unwrap();
    assert_eq!(why.kind, BlockerKind::BreakerOpen);
    assert!(why.eta.is_some());
}

/// Ensures that a job whose worker goes down goes back to the front of its queue with the
/// attempt counted, and that a success finishes it.
#[test]
fn worker_down_requeues_then_success_finishes() {
    let mut r = rig(10);
    let id = submit(&mut r.st, spec("builtin.noop", None));
    let (w, _) = hand_out(&mut r.st, 1);
    r.st.worker_down(0, w.id(), "worker fault");
    r.st.flush_journal().unwrap();
    let head = &r.st.live[&id].head;
    assert_eq!((head.status, head.attempts), (JobStatus::Pending, 1));
    let (w2, t) = hand_out(&mut r.st, 2);
    assert_eq!(t.attempt, 2);
    r.st.job_done(0, w2.id(), id, Ok(json!({"ok": 1})), Duration::ZERO);
    r.st.flush_journal().unwrap();
    assert!(!r.st.live.contains_key(&id));
    let rec = r.st.journal.get(id).unwrap().unwrap();
    assert_eq!(rec.status, JobStatus::Succeeded);
    assert_eq!(rec.result.as_deref(), Some(r#"{"ok":1}"#));
    let kinds: Vec<_> = rec.history.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["submitted", "started", "requeued", "started", "succeeded"]
    );
}

/// Ensures that a dispatcher message does not grow: every job costs several of them, and 200
/// bytes is what the job loop's own `WorkerReport::Done` takes (cluster mode's heartbeat news fits in it).
#[test]
fn messages_stay_small() {
    let size = std::mem::size_of::<super::DispatcherMsg>();
    assert!(size <= 200, "DispatcherMsg is {size} bytes");
}

/// Ensures that cancelling a delayed job clears its `next_attempt_at`: a cancelled job waits
/// for no attempt, so its record must not show one (the cluster store shows none either).
#[test]
fn a_cancelled_delayed_job_shows_no_next_attempt() {
    let mut r = rig(10);
    let later = crate::job::now_ms() + 3_600_000;
    let id = submit(
        &mut r.st,
        SubmitSpec {
            run_at: Some(later),
            ..spec("builtin.noop", None)
        },
    );
    assert_eq!(
        r.st.journal.get(id).unwrap().unwrap().next_attempt_at,
        Some(later)
    );
    let rec = r.st.cancel(id).unwrap();
    r.st.flush_journal().unwrap();
    assert_eq!(rec.status, JobStatus::Cancelled);
    assert_eq!(rec.next_attempt_at, None);
    assert_eq!(r.st.journal.get(id).unwrap().unwrap().next_attempt_at, None);
}
