//! The PostgreSQL sink in cluster mode: every node enqueues the records its completions change
//! in the cluster's `sink_outbox`, one node at a time ships them into the typed tables, another
//! takes over when it dies, and an outage of the sink's database leaves them waiting there.
//! The typed tables are compared with the cluster's `records` table, row for row.

use std::time::Duration;

use serde_json::{json, Value};

use super::records::exec_task;
use super::{cluster_with, number, refusal, until_count, ClusterNode, SUCCEEDED, URL_ENV};
use crate::pg::{self, PrivatePg, Schema};
use crate::support::{eventually, job_ids, poll, req};

const WAIT: Duration = Duration::from_secs(60);

/// An exec task `ext.put` storing `ext/sink/0..5` with the job's `v` (keys every job changes)
/// and `ext/sink/job/<v>` (one of its own).
fn put_task(dir: &std::path::Path) -> String {
    exec_task(
        dir,
        "put",
        r#"v = job["params"]["v"]
for i in range(5):
    say(record={"key": f"ext/sink/{i}", "value": {"v": v}})
say(record={"key": f"ext/sink/job/{v:04}", "value": {"v": v}})
say(result={"v": v})"#,
    )
}

/// `[sinks.postgres]` with test timings: `url` (or the cluster's URL when None) into `schema`.
fn sink_section(url: Option<&str>, schema: &str) -> String {
    let url = match url {
        Some(url) => format!("url = {url:?}"),
        None => format!("url_env = {URL_ENV:?}"),
    };
    format!(
        "[sinks.postgres]\n{url}\nschema = {schema:?}\nbatch = 7\nflush_every = \"20ms\"\n\
         max_backoff = \"300ms\"\n"
    )
}

/// Submits a job of `ext.put` for each of `vs` through `node`; waits until `total` jobs of the
/// cluster succeeded.
async fn put(node: &ClusterNode, cluster: &Schema, vs: std::ops::Range<i64>, total: i64) {
    let jobs: Vec<Value> = vs
        .map(|v| json!({"job": "ext.put", "params": {"v": v}}))
        .collect();
    let a = req(
        &mut node.client().await,
        json!({"cmd": "submit_batch", "jobs": jobs}),
    )
    .await;
    assert!(!job_ids(&a).is_empty(), "{a}");
    until_count(cluster, "the jobs to succeed", WAIT, SUCCEEDED, total).await;
}

/// The cluster's records under `ext/sink/`, (key, value) in key order.
async fn cluster_records(cluster: &Schema) -> Vec<Vec<Option<String>>> {
    cluster
        .texts("SELECT key, value::text FROM {s}.records WHERE key LIKE 'ext/sink/%' ORDER BY key")
        .await
}

/// Waits until the cluster's outbox is empty.
async fn shipped(cluster: &Schema) {
    let backlog = "SELECT count(*) FROM {s}.sink_outbox";
    until_count(cluster, "the outbox to be shipped", WAIT, backlog, 0).await;
}

/// `warden sinks`' view of the sink on `node`.
async fn view(node: &ClusterNode) -> Value {
    let a = req(&mut node.client().await, json!({"cmd": "sinks"})).await;
    a["sinks"][0].clone()
}

/// Waits until the sink of every node in `nodes` is connected and one of them ships (`idle`)
/// while the others wait (`standby`); returns the index of the shipper.
async fn one_shipper(nodes: &[&ClusterNode]) -> usize {
    eventually("one node to ship, the others to stand by", WAIT, || async {
        let mut states = Vec::new();
        for n in nodes {
            states.push(view(n).await["state"].as_str().unwrap_or("").to_string());
        }
        let shippers: Vec<usize> = (0..states.len()).filter(|i| states[*i] == "idle").collect();
        let standing_by = states.iter().filter(|s| *s == "standby").count();
        (shippers.len() == 1 && standing_by == nodes.len() - 1).then(|| shippers[0])
    })
    .await
}

/// Ensures that with the sink on two cluster nodes, the records of jobs run on both land in the
/// typed tables once each, with the latest value the cluster holds, shipped by one node while
/// the other stands by; that when the shipper is killed in the middle of a batch the other
/// takes over and ships the rest; that a backfill ships everything again without rewriting a row; and that a node
/// without the sink cannot join the cluster while these run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_ship_each_record_once_with_its_latest_value() {
    let scripts = tempfile::tempdir().unwrap();
    let task = put_task(scripts.path());
    let sink = Schema::fresh("csink_typed").await;
    let extra = format!("{task}{}", sink_section(None, &sink.name));
    let (cluster, mut nodes) = cluster_with("csink", 2, &extra).await;
    let shipper = one_shipper(&[&nodes[0], &nodes[1]]).await;
    put(&nodes[0], &cluster, 0..30, 30).await;
    shipped(&cluster).await;
    let want = cluster_records(&cluster).await;
    assert_eq!(want.len(), 35, "5 shared keys and one per job");
    let sunk = "SELECT key, value::text FROM {s}.records ORDER BY key";
    assert_eq!(
        sink.texts(sunk).await,
        want,
        "each record once, its latest value"
    );
    let (a, b) = (view(&nodes[shipper]).await, view(&nodes[1 - shipper]).await);
    assert!(a["shipped"].as_u64().unwrap() >= 35, "{a}");
    assert_eq!(b["shipped"], 0, "the standby ships nothing: {b}");

    let stranger = ClusterNode::start_with("node-2", &pg::test_url(), &cluster.name, &task);
    let (status, err) = refusal(stranger).await;
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("sinks.postgres: this node has none") && err.contains(&sink.name),
        "{err}"
    );

    // The shipper killed mid-batch: its write waits on a lock the test holds on the table.
    let blocker = pg::connect(&pg::test_url()).await.unwrap();
    let table = format!("{}.records", sink.name);
    blocker
        .batch_execute(&format!("BEGIN; LOCK TABLE {table} IN EXCLUSIVE MODE"))
        .await
        .unwrap();
    let survivor = 1 - shipper;
    put(&nodes[survivor], &cluster, 100..110, 40).await;
    let waiting = format!(
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = '{table}'::regclass"
    );
    until_count(&sink, "the shipper to wait mid-batch", WAIT, &waiting, 1).await;
    nodes[shipper].kill_9();
    blocker.batch_execute("COMMIT").await.unwrap();
    shipped(&cluster).await;
    let want = cluster_records(&cluster).await;
    assert_eq!(want.len(), 45);
    assert_eq!(sink.texts(sunk).await, want, "the survivor took over");
    let took_over = view(&nodes[survivor]).await;
    assert!(took_over["shipped"].as_u64().unwrap() > 0, "{took_over}");
    let survivor = &nodes[survivor];

    let versions = "SELECT count(*)::text, max(xmin::text::bigint)::text FROM {s}.records";
    let before = sink.texts(versions).await;
    let a = req(
        &mut survivor.client().await,
        json!({"cmd": "sink_backfill", "prefix": "ext/sink/job/"}),
    )
    .await;
    assert_eq!(a["enqueued"], 40, "{a}");
    shipped(&cluster).await;
    assert_eq!(sink.texts(versions).await, before, "no row rewritten");
    drop(nodes);
    cluster.drop_now().await;
    sink.drop_now().await;
}

/// Ensures that while the sink's database is down, jobs on every node still succeed, their
/// records wait in the cluster's outbox (one row each) and the nodes show the outage; started
/// again, the outbox drains and the typed tables equal the cluster's records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_outage_leaves_records_in_the_outbox_until_it_returns() {
    let private = PrivatePg::start().await;
    let scripts = tempfile::tempdir().unwrap();
    let task = put_task(scripts.path());
    let extra = format!("{task}{}", sink_section(Some(&private.url()), "warden"));
    let (cluster, nodes) = cluster_with("csink_outage", 2, &extra).await;
    one_shipper(&[&nodes[0], &nodes[1]]).await;

    private.pg_stop();
    put(&nodes[1], &cluster, 0..20, 20).await;
    let backlog = "SELECT count(*) FROM {s}.sink_outbox";
    assert!(number(&cluster, backlog).await >= 20, "nothing shipped");
    for node in &nodes {
        let down = poll(
            &mut node.client().await,
            "the sink to report the outage",
            WAIT,
            json!({"cmd": "sinks"}),
            |a| {
                a["sinks"][0]["state"] == "retrying"
                    && a["sinks"][0]["backlog"].as_u64() >= Some(20)
            },
        )
        .await;
        assert_eq!(
            down["sinks"][0]["last_error"]["kind"], "unavailable",
            "{down}"
        );
    }

    private.pg_start().await;
    shipped(&cluster).await;
    let want = cluster_records(&cluster).await;
    assert_eq!(want.len(), 25);
    let client = pg::connect(&private.url()).await.unwrap();
    let rows = client
        .query(
            "SELECT key, value::text FROM warden.records ORDER BY key",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<Vec<Option<String>>> = rows.iter().map(|r| vec![r.get(0), r.get(1)]).collect();
    assert_eq!(got, want);
    drop(nodes);
    cluster.drop_now().await;
}
