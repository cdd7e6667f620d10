//! The alert webhook over real HTTP on loopback: the alerts actor runs under a tiny root
//! supervisor (no node) and POSTs to an axum receiver that records bodies and answers from a
//! script. What is checked: one POST per alert with the documented fields, retries until the
//! receiver takes it, and a dead webhook that costs callers nothing.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use ractor::{Actor, ActorRef};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use warden_actors::alerts::{Alerter, AlertsSpec};
use warden_actors::args::{AlertsArgs, RestartPolicy};
use warden_actors::job::{now_ms, JobId, JobRecord, JobStatus, Priority};
use warden_actors::supervisor::{ActorState, ChildSpec, Supervisor, SupervisorArgs, SupervisorMsg};

use crate::support::eventually;

const WAIT: Duration = Duration::from_secs(10);

/// What the receiver saw and what it answers next.
#[derive(Default)]
struct Seen {
    bodies: Vec<Value>,
    /// Statuses to answer, in order; 200 once empty.
    script: VecDeque<u16>,
}

/// An axum webhook on 127.0.0.1:0 that records every body POSTed to `/hook`.
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    server: JoinHandle<()>,
}

impl Receiver {
    async fn start(script: impl IntoIterator<Item = u16>) -> Receiver {
        let seen = Arc::new(Mutex::new(Seen {
            bodies: vec![],
            script: script.into_iter().collect(),
        }));
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(seen.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, seen, server }
    }

    /// The webhook URL, with a query secret as real webhooks often carry.
    fn url(&self) -> String {
        format!("http://{}/hook?token=S3CRET", self.addr)
    }

    fn bodies(&self) -> Vec<Value> {
        self.seen.lock().unwrap().bodies.clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn hook(State(seen): State<Arc<Mutex<Seen>>>, Json(body): Json<Value>) -> StatusCode {
    let mut seen = seen.lock().unwrap();
    seen.bodies.push(body);
    let status = seen.script.pop_front().unwrap_or(200);
    StatusCode::from_u16(status).unwrap()
}

/// The alerts actor under a root supervisor with just this child.
struct Alerts {
    spec: Arc<AlertsSpec>,
    root: ActorRef<SupervisorMsg>,
}

impl Alerts {
    async fn start(webhook_url: String, queue: usize, max_attempts: u32) -> Alerts {
        let args = AlertsArgs {
            webhook_url,
            queue,
            max_attempts,
            timeout: Duration::from_secs(2),
        };
        let spec = AlertsSpec::new(args, "node-it".into());
        let root_args = SupervisorArgs {
            path: "root".into(),
            pipeline: "-".into(),
            policy: RestartPolicy {
                min_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(200),
                jitter: 0.1,
                max_restarts: 10,
                within: Duration::from_secs(10),
            },
            children: vec![spec.clone()],
            on_escalate: None,
        };
        let (root, _) = Actor::spawn(None, Supervisor, root_args).await.unwrap();
        Alerts { spec, root }
    }

    fn alerter(&self) -> Alerter {
        self.spec.alerter()
    }

    /// One of the counters shown by `tree` (`sent`, `dropped_failed`, …).
    fn count(&self, key: &str) -> u64 {
        self.spec.detail().unwrap()[key].as_u64().unwrap()
    }

    /// The child's `(status, restarts)` as `tree` shows them.
    async fn status(&self) -> (ActorState, u64) {
        let tree = self
            .root
            .call(SupervisorMsg::Tree, Some(WAIT))
            .await
            .unwrap()
            .unwrap();
        let alerts = &tree.children[0];
        (alerts.status, alerts.restarts)
    }

    async fn stop(self) {
        let _ = self.root.stop_and_wait(None, Some(WAIT)).await;
    }
}

/// A job that gave up after `attempts` attempts.
fn dead_job(name: &str, attempts: u32) -> JobRecord {
    JobRecord {
        id: JobId::new(),
        name: name.into(),
        pipeline: "builtin".into(),
        params: "{}".into(),
        priority: Priority::Normal,
        status: JobStatus::Failed,
        attempts,
        max_retries: attempts.saturating_sub(1),
        unique_key: None,
        created_at: now_ms(),
        started_at: Some(now_ms()),
        completed_at: Some(now_ms()),
        next_attempt_at: None,
        error: Some(format!("{name}: permanent failure")),
        result: None,
        parent_id: None,
        workflow_id: None,
        children: Vec::new(),
        history: vec![],
    }
}

/// Ensures that each dead-lettered job makes exactly one POST, in order, carrying the job's id,
/// name, error and attempts, the node's name and an RFC 3339 time.
#[tokio::test]
async fn each_dead_letter_posts_one_alert_with_its_fields() {
    let receiver = Receiver::start([]).await;
    let alerts = Alerts::start(receiver.url(), 100, 3).await;
    let jobs: Vec<JobRecord> = (1..=5)
        .map(|i| dead_job(&format!("builtin.fail_{i}"), i))
        .collect();
    for job in &jobs {
        alerts.alerter().dead_lettered(job);
    }
    eventually("5 alerts sent", WAIT, || async {
        (alerts.count("sent") == 5).then_some(())
    })
    .await;
    let bodies = receiver.bodies();
    assert_eq!(bodies.len(), 5, "one POST per alert: {bodies:#?}");
    for (body, job) in bodies.iter().zip(&jobs) {
        assert_eq!(body["kind"], "dead_letter");
        assert_eq!(body["node"], "node-it");
        assert_eq!(body["job_id"], job.id.to_string());
        assert_eq!(body["job_name"], job.name.as_str());
        assert_eq!(body["error"], job.error.as_deref().unwrap());
        assert_eq!(body["attempts"], job.attempts);
        let at = body["at"].as_str().unwrap();
        chrono::DateTime::parse_from_rfc3339(at).unwrap_or_else(|e| panic!("{at}: {e}"));
    }
    assert_eq!(alerts.count("dropped_failed"), 0);
    alerts.stop().await;
}

/// Ensures that a breaker that opens makes one POST naming the pipeline, the reason and the
/// retry delay in milliseconds.
#[tokio::test]
async fn breaker_open_posts_one_alert_with_its_fields() {
    let receiver = Receiver::start([]).await;
    let alerts = Alerts::start(receiver.url(), 100, 3).await;
    alerts.alerter().breaker_opened(
        "sec",
        "5 consecutive transient failures",
        Some(Duration::from_secs(30)),
    );
    eventually("the alert sent", WAIT, || async {
        (alerts.count("sent") == 1).then_some(())
    })
    .await;
    let bodies = receiver.bodies();
    assert_eq!(bodies.len(), 1);
    let b = &bodies[0];
    assert_eq!(b["kind"], "breaker_open");
    assert_eq!(b["node"], "node-it");
    assert_eq!(b["pipeline"], "sec");
    assert_eq!(b["reason"], "5 consecutive transient failures");
    assert_eq!(b["retry_after_ms"], 30_000);
    chrono::DateTime::parse_from_rfc3339(b["at"].as_str().unwrap()).unwrap();
    alerts.stop().await;
}

/// Ensures that a receiver answering 500 twice and then 200 gets the alert on the third try,
/// the same body each time, and that the alert counts as sent once.
#[tokio::test]
async fn failed_posts_are_retried_until_the_webhook_takes_them() {
    let receiver = Receiver::start([500, 500]).await;
    let alerts = Alerts::start(receiver.url(), 100, 5).await;
    alerts
        .alerter()
        .dead_lettered(&dead_job("builtin.flaky", 4));
    eventually("the alert sent", WAIT, || async {
        (alerts.count("sent") == 1).then_some(())
    })
    .await;
    let bodies = receiver.bodies();
    assert_eq!(bodies.len(), 3, "two 500s, then the 200");
    assert!(bodies.iter().all(|b| *b == bodies[0]), "{bodies:#?}");
    assert_eq!(alerts.count("dropped_failed"), 0);
    alerts.stop().await;
}

/// Ensures that with the webhook down (a closed port) 1,000 alerts cost their callers almost
/// nothing (a `cast` each; a generous 500 ms for all), that every one of them is accounted for
/// as dropped (queue full or failed after its tries), and that the actor is still running,
/// never restarted.
#[tokio::test]
async fn dead_webhook_never_slows_callers() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let alerts = Alerts::start(format!("http://{closed}/hook?token=S3CRET"), 10, 2).await;
    let alerter = alerts.alerter();
    let jobs: Vec<JobRecord> = (0..1000).map(|_| dead_job("builtin.fail", 1)).collect();
    let started = Instant::now();
    for job in &jobs {
        alerter.dead_lettered(job);
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "1,000 calls took {took:?}"
    );
    let dropped = eventually("every alert accounted for", WAIT, || async {
        let (full, failed) = (
            alerts.count("dropped_queue_full"),
            alerts.count("dropped_failed"),
        );
        (full + failed == 1000).then_some((full, failed))
    })
    .await;
    // The one in flight and the 10 waiting when the burst ended each got their two tries.
    assert_eq!(dropped, (989, 11));
    assert_eq!(alerts.count("sent"), 0);
    assert_eq!(alerts.count("dropped_down"), 0);
    assert_eq!(alerts.status().await, (ActorState::Running, 0));
    alerts.stop().await;
}

/// Ensures that a real node posts exactly one alert per dead-lettered job to its webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_posts_one_alert_per_dead_letter() {
    let rx = Receiver::start([]).await;
    let node = crate::support::TestNode::start_with(|a| {
        a.alerts = Some(warden_actors::args::AlertsArgs {
            webhook_url: rx.url(),
            queue: 100,
            max_attempts: 3,
            timeout: Duration::from_secs(2),
        });
    })
    .await;
    let mut c = node.client().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            crate::support::submit(&mut c, "builtin.fail_permanent", serde_json::json!({})).await,
        );
    }
    crate::support::submit(&mut c, "builtin.noop", serde_json::json!({})).await;
    let deadline = std::time::Instant::now() + WAIT;
    while rx.bodies().len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "alerts: {:?}",
            rx.bodies()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let bodies = rx.bodies();
    assert_eq!(bodies.len(), 3, "{bodies:?}");
    let mut got: Vec<String> = bodies
        .iter()
        .map(|b| b["job_id"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
    assert!(bodies
        .iter()
        .all(|b| b["kind"] == "dead_letter" && b["node"] == "test" && b["attempts"] == 1));
}

/// Ensures that a webhook that is down does not slow the node's jobs: 500 jobs that all
/// dead-letter finish as fast as 500 that succeed would, give or take (a generous bound: this
/// is a property of the non-blocking alerter, not a benchmark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_webhook_does_not_slow_jobs() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let node = crate::support::TestNode::start_with(|a| {
        a.alerts = Some(warden_actors::args::AlertsArgs {
            webhook_url: format!("http://{closed}/hook"),
            queue: 10,
            max_attempts: 5,
            timeout: Duration::from_secs(5),
        });
    })
    .await;
    let mut c = node.client().await;
    let jobs: Vec<Value> = (0..500)
        .map(|_| serde_json::json!({"job": "builtin.fail_permanent"}))
        .collect();
    let started = std::time::Instant::now();
    crate::support::req(
        &mut c,
        serde_json::json!({"cmd": "submit_batch", "jobs": jobs}),
    )
    .await;
    crate::support::poll(
        &mut c,
        "500 dead letters",
        Duration::from_secs(30),
        serde_json::json!({"cmd": "stats"}),
        |s| s["totals"]["failed"] == 500,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}
