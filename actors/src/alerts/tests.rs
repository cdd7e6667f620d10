//! Unit tests of the alerts module: the pure verdicts, bodies and outbox, then the actor on
//! paused time with a scripted transport (no sockets; `tests/it/alerts.rs` has those).

use std::collections::VecDeque;
use std::sync::Mutex as StdMutex;

use tokio::time::Instant;

use super::outbox::{retry_delay, verdict, Verdict, RETRY_MAX};
use super::*;
use crate::args::RestartPolicy;
use crate::job::{JobId, JobStatus, Priority};
use crate::supervisor::{Supervisor, SupervisorArgs, SupervisorMsg};

const URL: &str = "http://hooks.test/alert?token=S3CRET";

/// A job that gave up.
fn job(name: &str) -> JobRecord {
    JobRecord {
        id: JobId::new(),
        name: name.into(),
        pipeline: "builtin".into(),
        params: "{}".into(),
        priority: Priority::Normal,
        status: JobStatus::Failed,
        attempts: 4,
        max_retries: 3,
        unique_key: None,
        created_at: now_ms(),
        started_at: None,
        completed_at: Some(now_ms()),
        next_attempt_at: None,
        error: Some("boom".into()),
        result: None,
        parent_id: None,
        workflow_id: None,
        children: Vec::new(),
        history: Vec::new(),
    }
}

fn dead(name: &str) -> Alert {
    Alert::DeadLetter {
        job_id: JobId::new(),
        job_name: name.into(),
        error: None,
        attempts: 1,
        at: 0,
    }
}

/// How the fake webhook answers one try.
#[derive(Clone)]
enum Reply {
    Now(Delivery),
    After(Duration, Delivery),
    Never,
}

/// A scripted webhook: answers from `script`, then `Status(200)`; records each try.
#[derive(Default)]
struct Fake {
    script: StdMutex<VecDeque<Reply>>,
    tries: StdMutex<Vec<(Instant, Value)>>,
}

impl Fake {
    fn new(script: impl IntoIterator<Item = Reply>) -> Arc<Fake> {
        Arc::new(Fake {
            script: StdMutex::new(script.into_iter().collect()),
            tries: StdMutex::default(),
        })
    }

    fn transport(self: &Arc<Self>) -> Transport {
        let fake = self.clone();
        Arc::new(move |body| {
            fake.tries.lock().unwrap().push((Instant::now(), body));
            let reply = fake.script.lock().unwrap().pop_front();
            Box::pin(async move {
                match reply.unwrap_or(Reply::Now(Delivery::Status(200))) {
                    Reply::Now(d) => d,
                    Reply::After(wait, d) => {
                        tokio::time::sleep(wait).await;
                        d
                    }
                    Reply::Never => futures::future::pending().await,
                }
            })
        })
    }

    /// Job names of the tries, in order.
    fn names(&self) -> Vec<String> {
        let tries = self.tries.lock().unwrap();
        tries
            .iter()
            .map(|(_, b)| b["job_name"].as_str().unwrap().to_string())
            .collect()
    }

    /// Milliseconds between consecutive tries.
    fn gaps_ms(&self) -> Vec<u128> {
        let tries = self.tries.lock().unwrap();
        tries
            .windows(2)
            .map(|w| (w[1].0 - w[0].0).as_millis())
            .collect()
    }
}

fn args(queue: usize, max_attempts: u32, timeout: Duration) -> AlertsArgs {
    AlertsArgs {
        webhook_url: URL.into(),
        queue,
        max_attempts,
        timeout,
    }
}

/// Starts the actor alone (no supervisor) behind a spec's link.
async fn start(fake: &Arc<Fake>, a: AlertsArgs) -> (Arc<AlertsSpec>, Alerter) {
    let spec = AlertsSpec::with_transport(a, "node-a".into(), fake.transport());
    let start = AlertsStart {
        path: "root/alerts".into(),
        ctx: spec.ctx.clone(),
        queue: spec.queue,
        max_attempts: spec.max_attempts,
    };
    let (actor, _) = Actor::spawn(None, Alerts, start).await.unwrap();
    spec.on_up(&actor.get_cell());
    let alerter = spec.alerter();
    (spec, alerter)
}

/// `[sent, dropped_queue_full, dropped_failed, dropped_down, queued]`.
fn counts(spec: &AlertsSpec) -> [u64; 5] {
    let d = spec.detail().unwrap();
    [
        "sent",
        "dropped_queue_full",
        "dropped_failed",
        "dropped_down",
        "queued",
    ]
    .map(|k| d[k].as_u64().unwrap())
}

/// Ensures that only 2xx counts as delivered, that 429, 5xx, 3xx and no answer are retried, and
/// that other 4xx and an unusable URL are given up at once.
#[test]
fn verdicts_retry_only_what_may_pass_later() {
    for s in [200, 201, 204] {
        assert_eq!(verdict(&Delivery::Status(s)), Verdict::Delivered, "{s}");
    }
    for s in [429, 500, 502, 503, 302] {
        assert_eq!(verdict(&Delivery::Status(s)), Verdict::Retry, "{s}");
    }
    for s in [400, 401, 403, 404, 410, 422] {
        assert_eq!(verdict(&Delivery::Status(s)), Verdict::GiveUp, "{s}");
    }
    let refused = Delivery::Unreachable("connection refused".into());
    assert_eq!(verdict(&refused), Verdict::Retry);
    assert_eq!(
        verdict(&Delivery::Invalid("bad url".into())),
        Verdict::GiveUp
    );
}

/// Ensures that the two bodies carry exactly the documented fields, with `at` in RFC 3339.
#[test]
fn bodies_carry_the_documented_fields() {
    let id = JobId::new();
    let d = Alert::DeadLetter {
        job_id: id,
        job_name: "sec.filings".into(),
        error: Some("HTTP 404".into()),
        attempts: 3,
        at: 1_795_910_400_000,
    };
    assert_eq!(
        d.body("node-a"),
        json!({"kind": "dead_letter", "node": "node-a", "job_id": id.to_string(),
               "job_name": "sec.filings", "error": "HTTP 404", "attempts": 3,
               "at": "2026-11-29T00:00:00.000Z"})
    );
    let b = Alert::BreakerOpen {
        pipeline: "sec".into(),
        reason: "5 consecutive transient failures".into(),
        retry_after: Some(Duration::from_secs(30)),
        at: 1_795_910_400_000,
    };
    assert_eq!(
        b.body("node-a"),
        json!({"kind": "breaker_open", "node": "node-a", "pipeline": "sec",
               "reason": "5 consecutive transient failures", "retry_after_ms": 30000,
               "at": "2026-11-29T00:00:00.000Z"})
    );
}

/// Ensures that the URL shown in logs has no query, fragment or credentials.
#[test]
fn logged_url_has_no_secrets() {
    assert_eq!(
        shown_url("https://bot:pw@hooks.example.com/a/b?token=S3CRET#x"),
        "https://hooks.example.com/a/b"
    );
    assert_eq!(shown_url("http://h:8080/hook"), "http://h:8080/hook");
    assert_eq!(shown_url("not a url?token=S3CRET"), "not a url");
}

/// Ensures that a full outbox pushes out its oldest waiting alert, never the one being sent,
/// and that retry delays double from 200 ms up to the 10 s cap.
#[test]
fn outbox_drops_oldest_waiting_and_backs_off() {
    let mut o = Outbox::new(2, 3);
    assert_eq!(o.push(dead("a")), None);
    assert!(
        matches!(o.begin_try(), Some((Alert::DeadLetter { job_name, .. }, 1)) if job_name == "a")
    );
    assert_eq!(o.push(dead("b")), None);
    assert_eq!(o.push(dead("c")), None);
    let out = o.push(dead("d"));
    assert!(matches!(out, Some(Alert::DeadLetter { job_name, .. }) if job_name == "b"));
    assert_eq!(o.len(), 3, "a (sending), c, d");
    let down = Delivery::Status(503);
    assert_eq!(
        o.report(&down, 0.0),
        Some(Step::RetryIn(Duration::from_millis(200)))
    );
    o.begin_try();
    assert_eq!(
        o.report(&down, 0.0),
        Some(Step::RetryIn(Duration::from_millis(400)))
    );
    o.begin_try();
    let Some(Step::Dropped { reason, .. }) = o.report(&down, 0.0) else {
        panic!("expected a drop after 3 tries")
    };
    assert_eq!(reason, "gave up after 3 tries, last: HTTP 503");
    assert_eq!(retry_delay(20, 0.0), RETRY_MAX);
    assert_eq!(o.report(&down, 0.0), None, "no try in progress");
}

/// Ensures that beyond `queue` waiting alerts the OLDEST is dropped and counted, while the
/// alert in flight and the newer ones are delivered in order.
#[tokio::test(start_paused = true)]
async fn queue_bound_drops_the_oldest() {
    // The first try takes a second, so the next four alerts pile up behind it.
    let fake = Fake::new([Reply::After(Duration::from_secs(1), Delivery::Status(200))]);
    let (spec, alerter) = start(&fake, args(2, 3, Duration::from_secs(5))).await;
    for name in ["j1", "j2", "j3", "j4", "j5"] {
        alerter.dead_lettered(&job(name));
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(counts(&spec), [0, 2, 0, 0, 3], "j2 and j3 pushed out");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(fake.names(), ["j1", "j4", "j5"]);
    assert_eq!(counts(&spec), [3, 2, 0, 0, 0]);
}

/// Ensures that a failing webhook gets `max_attempts` tries per alert, spaced by a doubling,
/// jittered backoff from 200 ms, after which the alert is dropped and counted and the next
/// alert is tried.
#[tokio::test(start_paused = true)]
async fn retries_with_backoff_then_drops_after_max_attempts() {
    let fake = Fake::new(std::iter::repeat_n(Reply::Now(Delivery::Status(503)), 8));
    let (spec, alerter) = start(&fake, args(10, 4, Duration::from_secs(5))).await;
    alerter.dead_lettered(&job("first"));
    alerter.dead_lettered(&job("second"));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        fake.names(),
        ["first", "first", "first", "first", "second", "second", "second", "second"]
    );
    let gaps = fake.gaps_ms();
    for (i, base) in [(0, 200), (1, 400), (2, 800), (4, 200), (5, 400), (6, 800)] {
        let (lo, hi) = (base * 8 / 10, base * 12 / 10);
        assert!(
            (lo..=hi).contains(&gaps[i]),
            "gap {i} = {} ms, expected {lo}..={hi}",
            gaps[i]
        );
    }
    assert_eq!(
        gaps[3], 0,
        "the next alert goes out as soon as one is dropped"
    );
    assert_eq!(counts(&spec), [0, 0, 2, 0, 0]);
}

/// Ensures that a 4xx other than 429 is not retried (dropped after one try), that a 429 is, and
/// that the actor carries on with the next alert either way.
#[tokio::test(start_paused = true)]
async fn client_errors_are_not_retried_but_429_is() {
    let fake = Fake::new([
        Reply::Now(Delivery::Status(404)),
        Reply::Now(Delivery::Status(429)),
        Reply::Now(Delivery::Status(200)),
    ]);
    let (spec, alerter) = start(&fake, args(10, 5, Duration::from_secs(5))).await;
    alerter.dead_lettered(&job("gone"));
    alerter.dead_lettered(&job("throttled"));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(fake.names(), ["gone", "throttled", "throttled"]);
    assert_eq!(counts(&spec), [1, 0, 1, 0, 0]);
}

/// Ensures that a try the webhook never answers ends at `timeout` and counts as a failed try.
#[tokio::test(start_paused = true)]
async fn a_try_without_answer_times_out_and_is_retried() {
    let fake = Fake::new([Reply::Never]);
    let (spec, alerter) = start(&fake, args(10, 3, Duration::from_secs(2))).await;
    alerter.breaker_opened("sec", "5 consecutive transient failures", None);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let gaps = fake.gaps_ms();
    assert_eq!(gaps.len(), 1, "one retry, then delivered");
    assert!((2160..=2240).contains(&gaps[0]), "{gaps:?}");
    assert_eq!(counts(&spec), [1, 0, 0, 0, 0]);
    let tries = fake.tries.lock().unwrap();
    assert_eq!(tries[1].1["kind"], "breaker_open");
    assert_eq!(tries[1].1["retry_after_ms"], Value::Null);
}

/// Ensures that alerts sent while the actor is down are dropped and counted, and that the same
/// `Alerter` reaches the incarnation the supervisor starts next.
#[tokio::test(start_paused = true)]
async fn alerter_survives_a_restart_of_the_actor() {
    let fake = Fake::new([]);
    let spec = AlertsSpec::with_transport(
        args(10, 3, Duration::from_secs(5)),
        "node-a".into(),
        fake.transport(),
    );
    let alerter = spec.alerter();
    let policy = RestartPolicy {
        min_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(1),
        jitter: 0.0,
        max_restarts: 5,
        within: Duration::from_secs(60),
    };
    let sup_args = SupervisorArgs {
        path: "root".into(),
        pipeline: "-".into(),
        policy,
        children: vec![spec.clone()],
        on_escalate: None,
    };
    let (sup, _) = Actor::spawn(None, Supervisor, sup_args).await.unwrap();
    let status = || async {
        let tree = sup.call(SupervisorMsg::Tree, None).await.unwrap().unwrap();
        tree.children[0].status
    };
    alerter.dead_lettered(&job("before"));
    // Let it be delivered first: a kill cuts in ahead of queued messages.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(fake.names(), ["before"]);
    spec.incarnation.link().get().unwrap().kill();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(status().await, crate::supervisor::ActorState::Restarting);
    alerter.dead_lettered(&job("while-down"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(status().await, crate::supervisor::ActorState::Running);
    alerter.dead_lettered(&job("after"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.names(), ["before", "after"]);
    assert_eq!(counts(&spec), [2, 0, 0, 1, 0]);
    sup.stop_and_wait(None, None).await.unwrap();
}
