//! Cluster mode: node processes of the real binary on loopback, sharing one PostgreSQL schema
//! (`[store] kind = "postgres"`). The jobs table is read directly to check what no admin answer
//! could prove alone (who ran a job, how many times it started). `console.rs`: the web console
//! of cluster nodes; `records.rs`: the records tasks store; `sink.rs`: the PostgreSQL sink.

mod batches;
mod console;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warden::client::Client;
use warden::listening::Listening;
use warden_actors::args::RateWindow;
use warden_actors::cluster::{Cluster, ClusterArgs, NewRow, Permit, Timing};
use warden_actors::job::{JobId, Priority};
use warden_actors::protocol::ScheduleTick;
use warden_actors::scheduler::unique_key;

use crate::fakes::{self, Failure, FakeUpstream};
use crate::pg::{self, PrivatePg, Schema};
use crate::process::{connect, listening, spawn_node_with, NodeChild};
use crate::support::{eventually, job_ids, most_in_window, poll, req};

mod records;
mod sink;
mod workflows;

/// The variable the test configs name in `url_env`.
const URL_ENV: &str = "WARDEN_TEST_CLUSTER_URL";

/// One node process of a test cluster, on port 0: where it listens is read from the
/// `listening.json` its process writes.
struct ClusterNode {
    id: String,
    config: PathBuf,
    data: PathBuf,
    url: String,
    child: Option<NodeChild>,
    _dir: tempfile::TempDir,
}

impl ClusterNode {
    /// Starts node `id` on `url`, schema `schema`, with 4 builtin workers.
    fn start(id: &str, url: &str, schema: &str) -> ClusterNode {
        Self::start_with(id, url, schema, "")
    }

    /// [`ClusterNode::start`] with `extra` TOML (whole sections) in its config.
    fn start_with(id: &str, url: &str, schema: &str, extra: &str) -> ClusterNode {
        Self::start_full(id, url, schema, extra, false)
    }

    /// [`ClusterNode::start_with`], serving the web console on a port of its own.
    fn start_with_console(id: &str, url: &str, schema: &str, extra: &str) -> ClusterNode {
        Self::start_full(id, url, schema, extra, true)
    }

    /// A node with `extra` in its config and the console on when `console`; off otherwise (its
    /// default port would be one for every node on this host).
    fn start_full(id: &str, url: &str, schema: &str, extra: &str, console: bool) -> ClusterNode {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let console_section = match console {
            true => "[console]\nlisten = \"127.0.0.1:0\"\n",
            false => "[console]\nenabled = false\n",
        };
        let config = dir.path().join("node.toml");
        let text = format!(
            "[node]\nname = {id:?}\ndata_dir = {data:?}\nshutdown_timeout = \"10s\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\n\
             [pipelines.builtin]\nworkers = 4\nretry = {{ max_retries = 3, base_delay = \"50ms\", max_delay = \"1s\" }}\n\
             [store]\nkind = \"postgres\"\nurl_env = {URL_ENV:?}\nschema = {schema:?}\nnode_id = {id:?}\n\
             {console_section}{extra}",
            data = data.display().to_string(),
        );
        std::fs::write(&config, text).unwrap();
        let mut node = ClusterNode {
            id: id.to_string(),
            config,
            data,
            url: url.to_string(),
            child: None,
            _dir: dir,
        };
        node.restart();
        node
    }

    /// Starts the process again on the same config (on new ports).
    fn restart(&mut self) {
        self.child = Some(spawn_node_with(&self.config, &[(URL_ENV, &self.url)]));
    }

    /// SIGKILL, and reap.
    fn kill_9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Where the running process listens, once it has bound its ports.
    async fn listening(&self) -> Listening {
        let child = self.child.as_ref().expect("the node runs");
        listening(&self.data, child.id()).await
    }

    async fn client(&self) -> Client {
        connect(&self.listening().await.admin.to_string()).await
    }
}

/// `n` nodes `node-0..` on the shared test server, in a fresh schema.
async fn cluster(test: &str, n: usize) -> (Schema, Vec<ClusterNode>) {
    cluster_with(test, n, "").await
}

/// [`cluster`], each node's config with `extra` appended.
async fn cluster_with(test: &str, n: usize, extra: &str) -> (Schema, Vec<ClusterNode>) {
    let schema = Schema::fresh(test).await;
    let url = pg::test_url();
    let nodes = (0..n)
        .map(|i| ClusterNode::start_with(&format!("node-{i}"), &url, &schema.name, extra))
        .collect();
    (schema, nodes)
}

/// How a node that should refuse to start ended, and its stderr; one that started anyway is
/// killed after 30 s rather than waited for forever.
async fn refusal(mut node: ClusterNode) -> (std::process::ExitStatus, String) {
    let mut child = node.child.take().unwrap();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let status = child.wait().unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, err)
    })
    .await
    .unwrap()
}

/// One number from a query on the schema (`{s}` stands for it).
async fn number(schema: &Schema, query: &str) -> i64 {
    let rows = schema.texts(&format!("SELECT ({query})::text")).await;
    rows[0][0].as_deref().unwrap_or("0").parse().unwrap()
}

/// Counts the jobs that succeeded (for [`until_count`]).
const SUCCEEDED: &str = "SELECT count(*) FROM {s}.jobs WHERE state = 'succeeded'";

/// Waits until `query` counts `want`.
async fn until_count(schema: &Schema, what: &str, within: Duration, query: &str, want: i64) {
    eventually(what, within, || async {
        (number(schema, query).await == want).then_some(())
    })
    .await;
}

fn noops(n: usize) -> Value {
    let jobs: Vec<Value> = (0..n).map(|_| json!({"job": "builtin.noop"})).collect();
    json!({"cmd": "submit_batch", "jobs": jobs})
}

/// Ensures that 20,000 jobs submitted through three nodes all succeed exactly once: every job
/// started once (one `started` event, attempt 1), and each node ran some of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_run_each_of_20000_jobs_exactly_once() {
    let (schema, nodes) = cluster("exactly_once", 3).await;
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(n.client().await);
    }
    let mut ids = 0;
    for round in 0..40 {
        let a = req(&mut clients[round % 3], noops(500)).await;
        assert_eq!(a["ok"], true, "{a}");
        ids += job_ids(&a).len();
    }
    assert_eq!(ids, 20_000);
    until_count(
        &schema,
        "every job to succeed",
        Duration::from_secs(240),
        SUCCEEDED,
        20_000,
    )
    .await;
    let twice = "SELECT count(*) FROM {s}.jobs WHERE attempt <> 1 OR \
         jsonb_array_length(jsonb_path_query_array(history, '$[*] ? (@.kind == \"started\")')) <> 1";
    assert_eq!(
        number(&schema, twice).await,
        0,
        "jobs started more than once"
    );
    let ran = schema
        .texts("SELECT claimed_by, count(*)::text FROM {s}.jobs GROUP BY 1 ORDER BY 1")
        .await;
    assert_eq!(ran.len(), 3, "each node runs jobs: {ran:?}");
    let stats = req(&mut clients[1], json!({"cmd": "stats"})).await;
    assert_eq!(
        stats["jobs"],
        json!({"pending": 0, "running": 0, "retrying": 0}),
        "{stats}"
    );
    drop(nodes);
    schema.drop_now().await;
}

/// Ensures that when a node is killed with SIGKILL while its workers run long jobs, those jobs
/// finish on the other nodes within 30 s, their attempt counted and the rescue in their
/// history; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_jobs_finish_on_the_others() {
    let (schema, mut nodes) = cluster("rescue", 3).await;
    let mut c = nodes[0].client().await;
    for n in &nodes[1..] {
        n.client().await;
    }
    let jobs: Vec<Value> = (0..12)
        .map(|_| json!({"job": "builtin.sleep", "params": {"ms": 3000}}))
        .collect();
    let a = req(&mut c, json!({"cmd": "submit_batch", "jobs": jobs})).await;
    assert_eq!(job_ids(&a).len(), 12, "{a}");
    until_count(
        &schema,
        "all 12 jobs to run",
        Duration::from_secs(30),
        "SELECT count(*) FROM {s}.jobs WHERE state = 'running'",
        12,
    )
    .await;
    let victim = schema
        .texts("SELECT claimed_by FROM {s}.jobs WHERE state = 'running' LIMIT 1")
        .await[0][0]
        .clone()
        .unwrap();
    let held = number(
        &schema,
        &format!("SELECT count(*) FROM {{s}}.jobs WHERE claimed_by = '{victim}'"),
    )
    .await;
    let killed = Instant::now();
    nodes.iter_mut().find(|n| n.id == victim).unwrap().kill_9();
    until_count(
        &schema,
        "the killed node's jobs to finish elsewhere",
        Duration::from_secs(30),
        SUCCEEDED,
        12,
    )
    .await;
    eprintln!(
        "rescued {held} jobs of {victim}; all done {:?} after the kill",
        killed.elapsed()
    );
    let rescued = format!(
        "SELECT count(*) FROM {{s}}.jobs WHERE attempt = 2 AND claimed_by <> '{victim}' \
         AND history @> '[{{\"kind\": \"requeued\"}}]'"
    );
    assert_eq!(number(&schema, &rescued).await, held);
    drop(nodes);
    schema.drop_now().await;
}

/// Ensures that the same unique key submitted at once through three nodes makes one job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unique_key_through_three_nodes_is_one_job() {
    let (schema, nodes) = cluster("unique", 3).await;
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(n.client().await);
    }
    for round in 0..20 {
        let key = format!("report-{round}");
        let submit =
            json!({"cmd": "submit", "job": "builtin.noop", "unique_key": key, "delay": "1h"});
        let [a, b, c] = &mut clients[..] else {
            unreachable!()
        };
        let answers = tokio::join!(
            req(a, submit.clone()),
            req(b, submit.clone()),
            req(c, submit.clone())
        );
        let ids = [&answers.0, &answers.1, &answers.2].map(|a| a["job_id"].clone());
        assert!(
            ids.iter().all(|i| *i == ids[0] && i.is_string()),
            "{answers:?}"
        );
        let fresh = [&answers.0, &answers.1, &answers.2]
            .iter()
            .filter(|a| a["deduplicated"] == false)
            .count();
        assert_eq!(fresh, 1, "{answers:?}");
        let q = format!("SELECT count(*) FROM {{s}}.jobs WHERE unique_key = '{key}'");
        assert_eq!(number(&schema, &q).await, 1);
    }
    drop(nodes);
    schema.drop_now().await;
}

/// Ensures that a second process started with a node id in use refuses to start, naming the
/// key, and that a paused pipeline holds on every node until it is resumed on any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ids_are_unique_and_pause_holds_every_node() {
    let (schema, nodes) = cluster("pause", 2).await;
    let mut a = nodes[0].client().await;
    let mut b = nodes[1].client().await;
    // A connect succeeds once the admin port is bound, before the store is opened and the id
    // locked; an answer comes after.
    for c in [&mut a, &mut b] {
        assert_eq!(req(c, json!({"cmd": "ping"})).await["ok"], true);
    }
    let twin = ClusterNode::start("node-0", &pg::test_url(), &schema.name);
    let (status, err) = refusal(twin).await;
    assert!(!status.success() && err.contains("store.node_id"), "{err}");

    let p = req(&mut a, json!({"cmd": "pause", "pipeline": "builtin"})).await;
    assert_eq!(p["ok"], true, "{p}");
    poll(
        &mut b,
        "node-1 to see the pause",
        Duration::from_secs(10),
        json!({"cmd": "pipelines"}),
        |v| v["pipelines"][0]["paused"] == true,
    )
    .await;
    let id = req(&mut b, json!({"cmd": "submit", "job": "builtin.noop"})).await["job_id"].clone();
    let why = req(&mut b, json!({"cmd": "why", "job_id": id})).await;
    assert_eq!(why["blocker"]["kind"], "paused", "{why}");
    let resumed_at = chrono::Utc::now().timestamp_millis();
    req(&mut a, json!({"cmd": "resume", "pipeline": "builtin"})).await;
    poll(
        &mut b,
        "the job to run after the resume",
        Duration::from_secs(10),
        json!({"cmd": "status", "job_id": id}),
        |s| s["job"]["status"] == "succeeded",
    )
    .await;
    let h = req(&mut b, json!({"cmd": "history", "job_id": id})).await;
    let started = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "started")
        .unwrap()["at"]
        .as_str()
        .unwrap()
        .to_string();
    let started = chrono::DateTime::parse_from_rfc3339(&started)
        .unwrap()
        .timestamp_millis();
    assert!(
        started >= resumed_at - 1000,
        "started {started}, resumed {resumed_at}"
    );
    let nodes_answer = req(&mut a, json!({"cmd": "nodes"})).await;
    let listed = nodes_answer["nodes"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{nodes_answer}");
    assert_eq!(
        listed.iter().filter(|n| n["leader"] == true).count(),
        1,
        "{nodes_answer}"
    );
    drop(nodes);
    schema.drop_now().await;
}

/// Ensures that when PostgreSQL is stopped (the way a crash stops it) and started again under
/// load, the nodes reconnect, and every job whose submit was acknowledged runs to success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_loses_no_acknowledged_job() {
    let pg = PrivatePg::start().await;
    let url = pg.url();
    let nodes: Vec<ClusterNode> = (0..2)
        .map(|i| ClusterNode::start(&format!("node-{i}"), &url, "warden"))
        .collect();
    let mut c = nodes[0].client().await;
    let mut c2 = nodes[1].client().await;
    let mut acked: Vec<String> = Vec::new();
    let mut refused = 0;
    for round in 0..30 {
        if round == 10 {
            pg.pg_stop();
        }
        if round == 20 {
            pg.pg_start().await;
        }
        let client = if round % 2 == 0 { &mut c } else { &mut c2 };
        let a = req(client, noops(100)).await;
        if a["ok"] == true {
            acked.extend(job_ids(&a));
        } else {
            assert_eq!(a["error"]["code"], "storage_unavailable", "{a}");
            refused += 1;
        }
    }
    assert!(refused > 0, "the outage must be seen");
    let admin = pg::connect(&url).await.unwrap();
    eventually(
        "every acknowledged job to succeed",
        Duration::from_secs(60),
        || {
            let admin = &admin;
            let ids: Vec<uuid::Uuid> = acked.iter().map(|i| i.parse().unwrap()).collect();
            async move {
                let n: i64 = admin
                .query_one(
                    "SELECT count(*) FROM warden.jobs WHERE id = ANY($1) AND state = 'succeeded'",
                    &[&ids],
                )
                .await
                .ok()?
                .get(0);
                (n == ids.len() as i64).then_some(())
            }
        },
    )
    .await;
    drop(nodes);
}

/// The config section of a `yahoo` pipeline on `fake`, limited to `rate`.
fn yahoo_pipeline(fake: &FakeUpstream, rate: &str) -> String {
    format!(
        "[pipelines.yahoo]\nworkers = 4\nbase_url = {:?}\nrate_limit = {rate:?}\n",
        fake.base_url()
    )
}

/// Three nodes with a `yahoo` pipeline on `fake`, limited to `rate`.
async fn yahoo_cluster(test: &str, fake: &FakeUpstream, rate: &str) -> (Schema, Vec<ClusterNode>) {
    let schema = Schema::fresh(test).await;
    let extra = yahoo_pipeline(fake, rate);
    let nodes: Vec<ClusterNode> = (0..3)
        .map(|i| {
            ClusterNode::start_with(&format!("node-{i}"), &pg::test_url(), &schema.name, &extra)
        })
        .collect();
    for n in &nodes {
        n.client().await;
    }
    (schema, nodes)
}

/// Submits `n` `yahoo.chart` jobs, spread over the nodes.
async fn charts(nodes: &[ClusterNode], n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let mut c = nodes[i % nodes.len()].client().await;
        let a = req(
            &mut c,
            json!({"cmd": "submit", "job": "yahoo.chart", "params": {"ticker": "AAPL"}}),
        )
        .await;
        assert_eq!(a["ok"], true, "{a}");
        ids.push(a["job_id"].as_str().unwrap().to_string());
    }
    ids
}

/// Ensures that a source limited to `5/s, 20/m` across three nodes is never sent more by the
/// cluster: 21 jobs through all nodes, no second at the fake upstream sees more than 5
/// requests, and the 21st waits for the minute window (it retries later, never sent early).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_for_the_whole_cluster() {
    let fake = FakeUpstream::start().await;
    let (schema, nodes) = yahoo_cluster("limit", &fake, "5/s, 20/m").await;
    charts(&nodes, 21).await;
    until_count(
        &schema,
        "20 jobs to succeed within the minute's quota",
        Duration::from_secs(30),
        SUCCEEDED,
        20,
    )
    .await;
    until_count(
        &schema,
        "the 21st job to wait for the minute window",
        Duration::from_secs(10),
        "SELECT count(*) FROM {s}.jobs WHERE state = 'retrying' AND error LIKE '%throttled%'",
        1,
    )
    .await;
    let arrivals = fake.arrivals_to(fakes::YAHOO_CHART_PREFIX);
    assert_eq!(
        arrivals.len(),
        20,
        "the 21st request must wait for the minute"
    );
    let most = most_in_window(&arrivals, Duration::from_secs(1));
    assert!(most <= 5, "{most} requests within one second");
    drop(nodes);
    schema.drop_now().await;
}

/// Ensures that a 429 with Retry-After seen by one node pauses the source on all three: past the
/// requests already granted when it came back, no request reaches the fake upstream from any node
/// until the pause ends, and the jobs then succeed without spending an attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_on_one_node_pauses_every_node() {
    let fake = FakeUpstream::start().await;
    let (schema, nodes) = yahoo_cluster("pause429", &fake, "50/s").await;
    fake.fail_next_to(
        fakes::YAHOO_CHART_PREFIX,
        1,
        Failure::TooMany {
            retry_after: Some(3),
        },
    );
    charts(&nodes, 12).await;
    until_count(
        &schema,
        "every job to succeed after the pause",
        Duration::from_secs(30),
        "SELECT count(*) FROM {s}.jobs WHERE state = 'succeeded' AND attempt = 1",
        12,
    )
    .await;
    let arrivals = fake.arrivals_to(fakes::YAHOO_CHART_PREFIX);
    // A request already granted when the 429 came back still goes (as on a single node); none
    // granted after the pause was recorded may arrive before it ends.
    let first = arrivals[0];
    let during = arrivals[1..]
        .iter()
        .map(|t| t.duration_since(first))
        .filter(|d| *d > Duration::from_millis(500) && *d < Duration::from_millis(2900))
        .count();
    assert_eq!(
        during, 0,
        "requests reached the upstream during the pause: {arrivals:?}"
    );
    drop(nodes);
    schema.drop_now().await;
}

/// A fake upstream whose next `fails` chart requests fail (500), a fresh schema, and the
/// config of a `yahoo` pipeline on it whose breaker opens after 3 failures for `open_for`.
async fn breaker_cluster(
    test: &str,
    fails: usize,
    open_for: Duration,
) -> (FakeUpstream, Schema, String) {
    let fake = FakeUpstream::start().await;
    fake.fail_next_to(fakes::YAHOO_CHART_PREFIX, fails, Failure::Status(500));
    let schema = Schema::fresh(test).await;
    let extra = format!(
        "[pipelines.yahoo]\nworkers = 4\nbase_url = {:?}\nrate_limit = \"50/s\"\n\
         breaker = {{ failure_threshold = 3, open_for = \"{}s\" }}\n\
         retry = {{ max_retries = 5, base_delay = \"100ms\", max_delay = \"1s\" }}\n",
        fake.base_url(),
        open_for.as_secs()
    );
    (fake, schema, extra)
}

/// When each chart request reached `fake` after `opened`, counted from it, up to `within`.
fn charts_within(fake: &FakeUpstream, opened: Instant, within: Duration) -> Vec<Duration> {
    fake.arrivals_to(fakes::YAHOO_CHART_PREFIX)
        .into_iter()
        .filter(|t| *t > opened)
        .map(|t| t.duration_since(opened))
        .filter(|d| *d < within)
        .collect()
}

/// Ensures that a circuit breaker opened on one node holds every node: a node started after
/// node-0's breaker opened claims the waiting jobs, but sends nothing to the upstream until the
/// open window ends; then every job succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_open_on_one_node_holds_every_node() {
    const OPEN_FOR: Duration = Duration::from_secs(12);
    let (fake, schema, extra) = breaker_cluster("breaker", 3, OPEN_FOR).await;
    let url = pg::test_url();
    let first = ClusterNode::start_with("node-0", &url, &schema.name, &extra);
    let mut ids = charts(std::slice::from_ref(&first), 3).await;
    let opened = eventually(
        "node-0's breaker to open",
        Duration::from_secs(20),
        || async {
            let mut c = first.client().await;
            let a = req(&mut c, json!({"cmd": "pipelines"})).await;
            let yahoo = a["pipelines"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == "yahoo")?;
            (yahoo["breaker"]["state"] == "open").then(Instant::now)
        },
    )
    .await;
    let second = ClusterNode::start_with("node-1", &url, &schema.name, &extra);
    ids.extend(charts(std::slice::from_ref(&second), 6).await);
    until_count(
        &schema,
        "node-1 to claim a job while the breaker is open",
        OPEN_FOR - Duration::from_secs(3),
        "SELECT least(count(*), 1) FROM {s}.jobs WHERE claimed_by = 'node-1'",
        1,
    )
    .await;
    until_count(
        &schema,
        "every job to succeed once the breaker closed",
        Duration::from_secs(40),
        SUCCEEDED,
        ids.len() as i64,
    )
    .await;
    let early = charts_within(&fake, opened, OPEN_FOR - Duration::from_secs(1));
    assert!(
        early.is_empty(),
        "requests while the breaker was open: {early:?}"
    );
    drop((first, second));
    schema.drop_now().await;
}

/// Ensures that once a shared breaker's open window ends, one probe goes to the upstream for
/// the whole cluster, not one per node: node-0's breaker opens, node-1 and node-2 hold jobs
/// for the source meanwhile, the window ends, a single request reaches the fake (it fails, so
/// the window opens again, twice as long), and every job succeeds once a later probe does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_shared_breaker_window_one_probe_goes_for_the_cluster() {
    const OPEN_FOR: Duration = Duration::from_secs(6);
    let (fake, schema, extra) = breaker_cluster("probe", 4, OPEN_FOR).await;
    let url = pg::test_url();
    let first = ClusterNode::start_with("node-0", &url, &schema.name, &extra);
    let mut ids = charts(std::slice::from_ref(&first), 3).await;
    until_count(
        &schema,
        "node-0's breaker to open and be shared",
        Duration::from_secs(20),
        "SELECT count(*) FROM {s}.sources WHERE name = 'yahoo' AND breaker_open_until > now()",
        1,
    )
    .await;
    let opened = Instant::now();
    let others: Vec<ClusterNode> = (1..3)
        .map(|i| ClusterNode::start_with(&format!("node-{i}"), &url, &schema.name, &extra))
        .collect();
    ids.extend(charts(&others, 8).await);
    until_count(
        &schema,
        "every job to succeed once a probe did",
        Duration::from_secs(60),
        SUCCEEDED,
        ids.len() as i64,
    )
    .await;
    // From the first window's end to well inside the second (twice as long): the failed probe.
    let probes = charts_within(&fake, opened, OPEN_FOR + OPEN_FOR * 3 / 2);
    assert_eq!(probes.len(), 1, "requests after the window: {probes:?}");
    drop((first, others));
    schema.drop_now().await;
}

/// Ensures that while the cluster's probe of a source is out, another node is refused but told
/// to ask again within a second, not when the probe's two-minute lease ends: the probe usually
/// answers in milliseconds, and the jobs held behind it would otherwise wait out the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_cluster_probe_is_out_other_nodes_ask_again_soon() {
    let (schema, _a, b) = probe_out_on_node_a("probe_out").await;
    b.permits().breaker("yahoo", None).await.unwrap();
    assert_eq!(ask_yahoo(&b).await, Permit::Granted);
    schema.drop_now().await;
}

/// Ensures that the cluster's probe is not held for its two-minute lease when its node is
/// gone: once the node holding it has been silent for `silent_after`, or has started again
/// (a new incarnation), the next node to ask gets the probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_lost_with_its_node_passes_to_the_next_node() {
    let (schema, a, b) = probe_out_on_node_a("probe_lost").await;
    // node-a falls silent (as if killed): its last beat is older than `silent_after`.
    let silent = Timing::default().silent_after.as_secs() + 1;
    schema
        .texts(&format!(
            "UPDATE {{s}}.nodes SET seen_at = now() - interval '{silent} seconds'
             WHERE id = 'node-a' RETURNING id"
        ))
        .await;
    assert_eq!(ask_yahoo(&b).await, Permit::Probe, "node-a's probe is lost");
    // node-b starts again (a new incarnation) before its probe reports: lost too.
    b.jobs
        .heartbeat(uuid::Uuid::now_v7(), "127.0.0.1:2", 0)
        .await
        .unwrap();
    a.jobs
        .heartbeat(uuid::Uuid::now_v7(), "127.0.0.1:1", 0)
        .await
        .unwrap();
    assert_eq!(ask_yahoo(&a).await, Permit::Probe, "node-b's probe is lost");
    assert_asked_again_soon(ask_yahoo(&b).await);
    schema.drop_now().await;
}

/// Two live stores, `node-a` and `node-b`, on a fresh schema: `node-a` holds the cluster's probe
/// of `yahoo`, and `node-b` is checked to be refused meanwhile.
async fn probe_out_on_node_a(test: &str) -> (Schema, Cluster, Cluster) {
    let schema = Schema::fresh(test).await;
    let (a, b) = (
        live_store(&schema, "node-a").await,
        live_store(&schema, "node-b").await,
    );
    probe_taken(&a).await;
    assert_asked_again_soon(ask_yahoo(&b).await);
    (schema, a, b)
}

/// [`store`] for `node`, with a heartbeat of a fresh incarnation (a node's permits are asked
/// only once it beats).
async fn live_store(schema: &Schema, node: &str) -> Cluster {
    let c = store(schema, node).await;
    c.jobs
        .heartbeat(uuid::Uuid::now_v7(), "127.0.0.1:1", 0)
        .await
        .unwrap();
    c
}

/// One permit of `yahoo` (50/s) for `c`.
async fn ask_yahoo(c: &Cluster) -> Permit {
    let windows = [RateWindow {
        limit: 50,
        per: Duration::from_secs(1),
    }];
    c.permits()
        .acquire("yahoo", &windows, Duration::ZERO)
        .await
        .unwrap()
}

/// Opens `yahoo`'s shared breaker for a millisecond and waits until `c` gets the probe.
async fn probe_taken(c: &Cluster) {
    c.permits()
        .breaker("yahoo", Some(Duration::from_millis(1)))
        .await
        .unwrap();
    eventually(
        "the probe to be granted",
        Duration::from_secs(5),
        || async { (ask_yahoo(c).await == Permit::Probe).then_some(()) },
    )
    .await;
}

/// Checks that `p` refuses while another node's probe is out, asking again within a second.
fn assert_asked_again_soon(p: Permit) {
    match p {
        Permit::BreakerOpen(retry) => assert!(
            !retry.is_zero() && retry <= Duration::from_secs(1),
            "{retry:?}"
        ),
        other => panic!("got {other:?} while another node's probe was out"),
    }
}

/// Ensures that the claim ages waiting jobs as a single node does (`[jobs] max_wait`): a low
/// job submitted before 60 high ones, with `max_wait = "1s"`, competes as high after two
/// seconds and, being older, starts before the last of them; without aging it would start
/// after all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_job_is_promoted_as_it_waits() {
    let (schema, nodes) = cluster_with("aging", 1, "[jobs]\nmax_wait = \"1s\"\n").await;
    let sleep = |ms: u64, priority: &str| json!({"job": "builtin.sleep", "params": {"ms": ms}, "priority": priority});
    let mut jobs = vec![sleep(100, "low")];
    jobs.extend((0..60).map(|_| sleep(300, "high")));
    let a = req(
        &mut nodes[0].client().await,
        json!({"cmd": "submit_batch", "jobs": jobs}),
    )
    .await;
    assert_eq!(job_ids(&a).len(), 61, "{a}");
    until_count(
        &schema,
        "all 61 jobs to succeed",
        Duration::from_secs(60),
        SUCCEEDED,
        61,
    )
    .await;
    let before = "SELECT count(*) FROM {s}.jobs h, {s}.jobs l \
                  WHERE l.priority = 2 AND h.priority = 0 AND h.started_at > l.started_at";
    let later_highs = number(&schema, before).await;
    assert!(later_highs > 0, "the low job started after every high one");
    drop(nodes);
    schema.drop_now().await;
}

/// Ensures that a job running on one node and cancelled through another stops on its node
/// (its worker is told at once through NOTIFY), and that its late end does not overwrite the
/// cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_through_another_node_stops_the_job_where_it_runs() {
    let (schema, nodes) = cluster("cancel", 2).await;
    let mut a = nodes[0].client().await;
    let mut b = nodes[1].client().await;
    let id = req(
        &mut a,
        json!({"cmd": "submit", "job": "builtin.sleep", "params": {"ms": 60000}}),
    )
    .await["job_id"]
        .clone();
    let runner = eventually("the job to run", Duration::from_secs(10), || async {
        let q = format!(
            "SELECT claimed_by FROM {{s}}.jobs WHERE id = '{}' AND state = 'running'",
            id.as_str().unwrap()
        );
        schema.texts(&q).await.first().and_then(|r| r[0].clone())
    })
    .await;
    let other = if runner == "node-0" { &mut b } else { &mut a };
    let c = req(other, json!({"cmd": "cancel", "job_id": id})).await;
    assert_eq!(c["job"]["status"], "cancelled", "{c}");
    poll(
        &mut a,
        "the runner's worker to be free again",
        Duration::from_secs(10),
        json!({"cmd": "nodes"}),
        |v| {
            v["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().all(|n| n["running"] == 0))
        },
    )
    .await;
    let s = req(&mut b, json!({"cmd": "status", "job_id": id})).await;
    assert_eq!(s["job"]["status"], "cancelled", "{s}");
    drop(nodes);
    schema.drop_now().await;
}

/// Ensures that a job cancelled while it runs keeps what its attempt stored before the cancel,
/// as a single node does: the record reaches the cluster's `records` table once the attempt
/// has stopped, and the job stays cancelled with the cancel as its last event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_while_running_keeps_the_records_it_stored() {
    let scripts = tempfile::tempdir().unwrap();
    let task = records::exec_task(
        scripts.path(),
        "slow",
        r#"say(record={"key": "ext/slow/kept", "value": {"stored": "before the cancel"}})
say(progress={"done": 1, "message": "stored"})
time.sleep(60)"#,
    );
    let (schema, nodes) = cluster_with("cancel_records", 2, &task).await;
    let submit = json!({"cmd": "submit", "job": "ext.slow"});
    let id = req(&mut nodes[0].client().await, submit).await["job_id"].clone();
    let runner = eventually("the job to run", Duration::from_secs(10), || async {
        let q = format!(
            "SELECT claimed_by FROM {{s}}.jobs WHERE id = '{}' AND state = 'running'",
            id.as_str().unwrap()
        );
        schema.texts(&q).await.first().and_then(|r| r[0].clone())
    })
    .await;
    let (at, other) = if runner == "node-0" { (0, 1) } else { (1, 0) };
    // Progress comes after the record on the task's stdout: once it shows, the record is held.
    poll(
        &mut nodes[at].client().await,
        "the task to store its record",
        Duration::from_secs(10),
        json!({"cmd": "status", "job_id": id}),
        |v| v["job"]["progress"]["done"] == 1,
    )
    .await;
    let mut c = nodes[other].client().await;
    let cancelled = req(&mut c, json!({"cmd": "cancel", "job_id": id})).await;
    assert_eq!(cancelled["job"]["status"], "cancelled", "{cancelled}");
    let kept = "SELECT count(*) FROM {s}.records WHERE key = 'ext/slow/kept'";
    let within = Duration::from_secs(30);
    until_count(&schema, "the stopped attempt's record", within, kept, 1).await;
    let s = req(&mut c, json!({"cmd": "status", "job_id": id})).await;
    assert_eq!(s["job"]["status"], "cancelled", "{s}");
    let h = req(&mut c, json!({"cmd": "history", "job_id": id})).await;
    let last = h["events"].as_array().and_then(|e| e.last()).cloned();
    assert_eq!(
        last.as_ref().map(|e| &e["kind"]),
        Some(&json!("cancelled")),
        "{h}"
    );
    drop(nodes);
    schema.drop_now().await;
}

/// Ensures that a node whose rate limit differs from the one the live cluster recorded refuses
/// to start, naming the key and both values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_disagrees_with_the_cluster_refuses_to_start() {
    let schema = Schema::fresh("settings").await;
    let url = pg::test_url();
    let yahoo = |rate: &str| {
        format!("[pipelines.yahoo]\nworkers = 1\nbase_url = \"http://127.0.0.1:9\"\nrate_limit = {rate:?}\n")
    };
    let first = ClusterNode::start_with("node-0", &url, &schema.name, &yahoo("5/s"));
    // An answer, not just a connection: the node has beaten (its row is live) once it answers.
    let pong = req(&mut first.client().await, json!({"cmd": "ping"})).await;
    assert_eq!(pong["ok"], true, "{pong}");
    let odd = ClusterNode::start_with("node-1", &url, &schema.name, &yahoo("10/s"));
    let (status, err) = refusal(odd).await;
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("pipelines.yahoo.rate_limit")
            && err.contains("\"10/s\"")
            && err.contains("\"5/s\""),
        "{err}"
    );
    drop(first);
    schema.drop_now().await;
}

/// A handle on the cluster store of `schema`, as node `node` holds it (no process).
async fn store(schema: &Schema, node: &str) -> Cluster {
    let c = Cluster::new(ClusterArgs {
        url: pg::test_url(),
        url_env: URL_ENV.into(),
        schema: schema.name.clone(),
        node_id: node.into(),
        timeout: Duration::from_secs(10),
        pool_size: 2,
        timing: Timing::default(),
    })
    .unwrap();
    c.open(&[]).await.unwrap();
    c
}

/// A fresh `builtin.noop` row, due now, with no key and no tick.
fn noop_row() -> NewRow {
    NewRow {
        id: JobId::new(),
        name: "builtin.noop".into(),
        pipeline: "builtin".into(),
        priority: Priority::Normal,
        max_retries: 0,
        params: "{}".into(),
        unique_key: None,
        run_at: None,
        tick: None,
    }
}

/// The row the scheduler's submit of `tick_ms` of schedule `schedule` becomes.
fn tick_row(schedule: &str, tick_ms: i64) -> NewRow {
    NewRow {
        unique_key: Some(unique_key(schedule, tick_ms)),
        tick: Some(ScheduleTick {
            schedule: schedule.into(),
            tick_ms,
        }),
        ..noop_row()
    }
}

/// The job `schedule_ticks` records for a tick of schedule `s`, as text.
async fn tick_job(schema: &Schema, tick_ms: i64) -> Option<String> {
    let q = format!(
        "SELECT job_id::text FROM {{s}}.schedule_ticks \
         WHERE schedule = 's' AND tick = to_timestamp({tick_ms} / 1000.0)"
    );
    schema.texts(&q).await.first().and_then(|r| r[0].clone())
}

/// A client's submit of `key` in a transaction left open: the caller commits it.
async fn racing_submit(schema: &Schema, key: &str) -> warden_actors::sink::tokio_postgres::Client {
    let racing = pg::connect(&pg::test_url()).await.unwrap();
    racing
        .batch_execute(&format!(
            "BEGIN; INSERT INTO {}.jobs (id, name, pipeline, priority, state, max_retries, params, unique_key) \
             VALUES (gen_random_uuid(), 'builtin.noop', 'builtin', 1, 'pending', 0, '{{}}', '{key}')",
            schema.name
        ))
        .await
        .unwrap();
    racing
}

/// Ensures that one schedule tick inserted through three nodes' stores at once is one job,
/// answered to the two others as deduplicated; that firing it again after its job finished
/// (where a unique key no longer dedups) still answers that job; and that a tick whose key a
/// client's unfinished job holds records that job rather than a second one, even when that
/// job commits while the tick is being inserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_inserted_through_every_node_is_one_job() {
    let schema = Schema::fresh("tick_store").await;
    let [a, b, c] = [
        store(&schema, "node-a").await,
        store(&schema, "node-b").await,
        store(&schema, "node-c").await,
    ];
    let t = 1_767_225_600_000;
    let rows = [[tick_row("s", t)], [tick_row("s", t)], [tick_row("s", t)]];
    let (ra, rb, rc) = tokio::join!(
        a.jobs.insert(&rows[0]),
        b.jobs.insert(&rows[1]),
        c.jobs.insert(&rows[2])
    );
    let answers = [ra.unwrap()[0], rb.unwrap()[0], rc.unwrap()[0]];
    let job = answers[0].0;
    assert!(answers.iter().all(|(id, _)| *id == job), "{answers:?}");
    let fresh = answers.iter().filter(|(_, dedup)| !dedup).count();
    assert_eq!(fresh, 1, "{answers:?}");
    assert_eq!(schema.count("jobs").await, 1);
    assert_eq!(tick_job(&schema, t).await, Some(job.to_string()));

    let finish = format!(
        "UPDATE {}.jobs SET state = 'succeeded', completed_at = now()",
        schema.name
    );
    schema.client.batch_execute(&finish).await.unwrap();
    let again = b.jobs.insert(&[tick_row("s", t)]).await.unwrap();
    assert_eq!(again, vec![(job, true)], "a re-fire after the job finished");
    assert_eq!(schema.count("jobs").await, 1);

    let by_hand = NewRow {
        tick: None,
        ..tick_row("s", t + 1000)
    };
    let held = a.jobs.insert(&[by_hand]).await.unwrap()[0];
    assert!(!held.1);
    let fired = c.jobs.insert(&[tick_row("s", t + 1000)]).await.unwrap();
    assert_eq!(
        fired,
        vec![(held.0, true)],
        "the tick takes the client's job"
    );
    assert_eq!(tick_job(&schema, t + 1000).await, Some(held.0.to_string()));
    assert_eq!(schema.count("jobs").await, 2);

    let racing = racing_submit(&schema, &unique_key("s", t + 2000)).await;
    let row = [tick_row("s", t + 2000)];
    let fired = tokio::spawn(async move { c.jobs.insert(&row).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    racing.batch_execute("COMMIT").await.unwrap();
    let fired = fired.await.unwrap();
    let holder = tick_job(&schema, t + 2000).await.unwrap();
    assert_eq!(
        fired[0].0.to_string(),
        holder,
        "the tick takes the racing job"
    );
    assert_eq!(schema.count("jobs").await, 3);
    drop([a, b]);
    schema.drop_now().await;
}

/// A per-second schedule of `builtin.noop` that catches up on every missed tick and never skips
/// one for overlap (a killed node's running job must not hold the next ticks back).
const EVERY_SECOND: &str = "[[schedules]]\nname = \"every-second\"\ncron = \"* * * * * *\"\n\
     job = \"builtin.noop\"\ncatch_up = \"all\"\noverlap = \"allow\"\n";

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The index in `nodes` of the node holding the leader lease, once one does.
async fn leader(nodes: &[ClusterNode]) -> usize {
    let mut c = nodes[0].client().await;
    let is_leader = |n: &&Value| n["leader"] == true;
    let a = poll(
        &mut c,
        "a leader",
        Duration::from_secs(20),
        json!({"cmd": "nodes"}),
        |v| {
            v["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| is_leader(&n)))
        },
    )
    .await;
    let listed = a["nodes"].as_array().unwrap();
    let id = listed.iter().find(is_leader).unwrap()["id"]
        .as_str()
        .unwrap();
    nodes.iter().position(|n| n.id == id).unwrap()
}

/// Ensures that a per-second schedule run by three nodes gets exactly one job per tick, for
/// consecutive ticks with none missing, while the leader is killed with SIGKILL and restarted
/// in the middle: the others fire the ticks it misses, and what it fires after its restart (its
/// catch-up of those ticks, then the current ones) is answered with the jobs already made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tick_fires_once_across_three_nodes_while_the_leader_restarts() {
    let (schema, mut nodes) = cluster_with("ticks", 3, EVERY_SECOND).await;
    let victim = leader(&nodes).await;
    let victim_id = nodes[victim].id.clone();
    tokio::time::sleep(Duration::from_secs(5)).await;
    nodes[victim].kill_9();
    let killed = now_ms();
    tokio::time::sleep(Duration::from_secs(4)).await;
    nodes[victim].restart();
    let restarted = now_ms();
    let mut c = nodes[victim].client().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let s = req(&mut c, json!({"cmd": "schedules"})).await;
    // Every node stopped: the tables are final.
    drop(nodes);
    eprintln!("{victim_id} killed at {killed}, restarted at {restarted}; then {s}");

    assert_one_job_per_consecutive_tick(&schema).await;
    let down = format!(
        "SELECT count(*) FROM {{s}}.schedule_ticks WHERE node <> '{victim_id}' \
         AND tick > to_timestamp({killed} / 1000.0) AND tick < to_timestamp({restarted} / 1000.0)"
    );
    let fired_meanwhile = number(&schema, &down).await;
    assert!(
        fired_meanwhile >= 3,
        "{fired_meanwhile} ticks while {victim_id} was down"
    );
    assert_last_run_is_the_ticks_job(&schema, &s["schedules"][0], restarted).await;
    schema.drop_now().await;
}

/// Checks the jobs table of a finished run of [`EVERY_SECOND`]: each key has one job, every
/// job is a recorded tick's, each recorded tick names the job of its key, and the ticks are
/// every second from the first to the last.
async fn assert_one_job_per_consecutive_tick(schema: &Schema) {
    let repeated = "SELECT count(*) FROM (SELECT unique_key FROM {s}.jobs \
         GROUP BY unique_key HAVING count(*) <> 1) r";
    assert_eq!(number(schema, repeated).await, 0, "a key with several jobs");
    let ticks = number(schema, "SELECT count(*) FROM {s}.schedule_ticks").await;
    let jobs = number(schema, "SELECT count(*) FROM {s}.jobs").await;
    assert_eq!(jobs, ticks, "one job per recorded tick");
    let named = "SELECT count(*) FROM {s}.schedule_ticks t JOIN {s}.jobs j ON j.id = t.job_id \
         AND j.unique_key = 'schedule:every-second:' \
             || to_char(t.tick AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')";
    assert_eq!(
        number(schema, named).await,
        ticks,
        "a tick naming another job"
    );
    let span = "SELECT extract(epoch FROM max(tick) - min(tick))::int8 + 1 FROM {s}.schedule_ticks";
    assert_eq!(number(schema, span).await, ticks, "a tick is missing");
    assert!(ticks >= 14, "{ticks} ticks");
}

/// Checks that the restarted node's last run (`schedules`) is after its restart and is the
/// job recorded for that tick, whichever node made it.
async fn assert_last_run_is_the_ticks_job(schema: &Schema, last: &Value, restarted: i64) {
    let at = last["last_run_at"]
        .as_str()
        .unwrap_or_else(|| panic!("{last}"));
    let at = chrono::DateTime::parse_from_rfc3339(at)
        .unwrap()
        .timestamp_millis();
    assert!(at > restarted, "the restarted node fires: {last}");
    let q = format!(
        "SELECT job_id::text FROM {{s}}.schedule_ticks WHERE tick = to_timestamp({at} / 1000.0)"
    );
    let recorded = schema.texts(&q).await.first().and_then(|r| r[0].clone());
    assert_eq!(recorded.as_deref(), last["last_job_id"].as_str(), "{last}");
}
