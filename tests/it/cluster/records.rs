//! Records in cluster mode: what tasks store lives in the cluster's `records` table, written
//! with the completion of the attempt that stored it, so `records` (and `export`, which pages
//! through it) answers the same through every node, and an attempt fenced out (its job rescued
//! from a killed node) leaves nothing behind.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use warden_actors::cluster::{Completion, Outcome};

use super::{cluster_with, number, store, until_count, ClusterNode, SUCCEEDED};
use crate::pg::{self, Schema};
use crate::support::{eventually, job_ids, poll, req};

/// An exec task `ext.<task>` running the Python `body` (after a prelude that reads the job and
/// defines `say`), written into `dir`, as config text.
pub(super) fn exec_task(dir: &Path, task: &str, body: &str) -> String {
    let prelude = "import json, os, sys, time\njob = json.load(sys.stdin)\n\
                   attempt = int(os.environ[\"WARDEN_ATTEMPT\"])\n\
                   def say(**kw):\n    print(json.dumps(kw), flush=True)\n";
    std::fs::write(dir.join(format!("{task}.py")), format!("{prelude}{body}\n")).unwrap();
    format!(
        "[tasks.\"ext.{task}\"]\ncommand = [\"python3\", \"{task}.py\"]\ncwd = {:?}\n",
        dir.display().to_string()
    )
}

/// Every record under `prefix` through `node`, paged `page` at a time as `export` pages.
async fn all_records(node: &ClusterNode, prefix: &str, page: usize) -> Vec<Value> {
    let mut c = node.client().await;
    let mut out: Vec<Value> = Vec::new();
    loop {
        let mut r = json!({"cmd": "records", "prefix": prefix, "limit": page});
        if let Some(last) = out.last() {
            r["after"] = last["key"].clone();
        }
        let a = req(&mut c, r).await;
        assert_eq!(a["ok"], true, "{a}");
        let got = a["records"].as_array().unwrap().clone();
        let more = got.len() == page;
        out.extend(got);
        if !more {
            return out;
        }
    }
}

/// Ensures that records an exec task stores on node A are listed, in key order and paged,
/// through node B, a node started after the jobs ran (its journal has never seen them); that
/// each row names the job that stored it; and that a re-run storing the same values leaves
/// their `updated_at` as it was. The other node's console lists them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_stored_on_one_node_are_listed_through_another() {
    let scripts = tempfile::tempdir().unwrap();
    let task = exec_task(
        scripts.path(),
        "rec",
        r#"n = job["params"]["n"]
for i in range(3):
    say(record={"key": f"ext/rec/{n}/{i}", "value": {"n": n, "i": i}})
say(result={"n": n})"#,
    );
    let (schema, mut nodes) = cluster_with("records_listed", 1, &task).await;
    let jobs: Vec<Value> = (0..4)
        .map(|n| json!({"job": "ext.rec", "params": {"n": n}}))
        .collect();
    let a = req(
        &mut nodes[0].client().await,
        json!({"cmd": "submit_batch", "jobs": jobs}),
    )
    .await;
    let ids = job_ids(&a);
    until_count(&schema, "the 4 jobs to succeed", WAIT, SUCCEEDED, 4).await;
    let b = ClusterNode::start_with_console("node-1", &pg::test_url(), &schema.name, &task);
    let listed = all_records(&b, "ext/rec/", 5).await;
    super::console::web(&b)
        .await
        .get("/records?prefix=ext/rec/3/")
        .await
        .shows(&["ext/rec/3/0", "ext/rec/3/2"]);
    let keys: Vec<&str> = listed.iter().map(|r| r["key"].as_str().unwrap()).collect();
    let want: Vec<String> = (0..4)
        .flat_map(|n| (0..3).map(move |i| format!("ext/rec/{n}/{i}")))
        .collect();
    assert_eq!(keys, want, "every record, once, in key order");
    assert_eq!(listed[5]["value"], json!({"n": 1, "i": 2}));
    let by_job = "SELECT count(*) FROM {s}.records r JOIN {s}.jobs j ON j.id = r.job_id \
                  WHERE j.params::jsonb ->> 'n' = split_part(r.key, '/', 3)";
    assert_eq!(number(&schema, by_job).await, 12, "each row names its job");
    assert_eq!(ids.len(), 4);

    let stamps = all_records(&b, "ext/rec/0/", 100).await;
    let again = req(
        &mut b.client().await,
        json!({"cmd": "submit", "job": "ext.rec", "params": {"n": 0}}),
    )
    .await;
    assert_eq!(again["ok"], true, "{again}");
    until_count(&schema, "the re-run to succeed", WAIT, SUCCEEDED, 5).await;
    assert_eq!(
        all_records(&nodes[0], "ext/rec/0/", 100).await,
        stamps,
        "the same values are not stored again"
    );
    nodes.push(b);
    drop(nodes);
    schema.drop_now().await;
}

const WAIT: Duration = Duration::from_secs(60);

/// Ensures that when the node running a job is killed after the job's first attempt stored
/// records (and one key only that attempt stores), the job rescued onto another node leaves
/// exactly the records of its final attempt: each key once, from attempt 2, none from the
/// killed attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescued_jobs_records_are_those_of_its_final_attempt() {
    let scripts = tempfile::tempdir().unwrap();
    let task = exec_task(
        scripts.path(),
        "slow",
        r#"for i in range(3):
    say(record={"key": f"ext/slow/{i}", "value": {"attempt": attempt}})
if attempt == 1:
    say(record={"key": "ext/slow/partial", "value": {"attempt": attempt}})
    say(progress={"done": 1, "total": 2, "message": "stored"})
    parent = os.getppid()
    # Until the node is killed (then this process is reparented): nothing is left running.
    while os.getppid() == parent:
        time.sleep(0.05)
    sys.exit(75)
say(result={"attempt": attempt})"#,
    );
    let (schema, mut nodes) = cluster_with("records_rescued", 2, &task).await;
    for n in &nodes {
        n.client().await;
    }
    let a = req(
        &mut nodes[0].client().await,
        json!({"cmd": "submit", "job": "ext.slow"}),
    )
    .await;
    let id = a["job_id"].as_str().unwrap().to_string();
    let running =
        format!("SELECT claimed_by FROM {{s}}.jobs WHERE id = '{id}' AND state = 'running'");
    let victim = eventually("the job to run", WAIT, || async {
        schema
            .texts(&running)
            .await
            .first()
            .and_then(|r| r[0].clone())
    })
    .await;
    let at = nodes.iter().position(|n| n.id == victim).unwrap();
    let mut c = nodes[at].client().await;
    // Progress comes after the records on the same stdout: once it shows, they were put.
    poll(
        &mut c,
        "attempt 1 to store its records",
        WAIT,
        json!({"cmd": "status", "job_id": id}),
        |a| a["job"]["progress"]["message"] == "stored",
    )
    .await;
    nodes[at].kill_9();
    let done = format!("SELECT count(*) FROM {{s}}.jobs WHERE id = '{id}' AND state = 'succeeded'");
    until_count(&schema, "the job to finish elsewhere", WAIT, &done, 1).await;
    let rows = schema
        .texts(
            "SELECT key, value::text, job_id::text FROM {s}.records \
             WHERE key LIKE 'ext/slow/%' ORDER BY key",
        )
        .await;
    let want: Vec<Vec<Option<String>>> = (0..3)
        .map(|i| {
            vec![
                Some(format!("ext/slow/{i}")),
                Some(r#"{"attempt": 2}"#.to_string()),
                Some(id.clone()),
            ]
        })
        .collect();
    assert_eq!(rows, want, "only the final attempt's records, each once");
    let survivor = &nodes[1 - at];
    assert_eq!(all_records(survivor, "ext/slow/", 10).await.len(), 3);
    drop(nodes);
    schema.drop_now().await;
}

/// A claimed `builtin.noop` of a fresh job, through `jobs`.
pub(super) async fn claimed(
    jobs: &warden_actors::cluster::Jobs,
) -> warden_actors::cluster::Claimed {
    jobs.insert(&[super::noop_row()]).await.unwrap();
    let mut got = jobs.claim("builtin", 1, None).await.unwrap();
    assert_eq!(got.len(), 1);
    got.remove(0)
}

/// The successful end of claim `claim_no` of `c`, storing `records`.
pub(super) fn end(
    c: &warden_actors::cluster::Claimed,
    claim_no: i64,
    records: &[(&str, Value)],
) -> Completion {
    Completion {
        id: c.id,
        claim_no,
        outcome: Outcome::Succeeded("null".into()),
        records: records
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    }
}

/// Ensures that the store writes a completion's records with it and a fenced-out completion's
/// not at all, even in one batch with a written one storing the same key; that of two written
/// completions storing one key the later wins; and that `records` pages them by key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_completion_writes_none_of_its_records() {
    let schema = Schema::fresh("records_fence").await;
    let node = store(&schema, "node-a").await;
    let jobs = &node.jobs;
    let (a, b, c) = (
        claimed(jobs).await,
        claimed(jobs).await,
        claimed(jobs).await,
    );
    let batch = [
        // A stale claim of `a`: the job was rescued and claimed again meanwhile.
        end(
            &a,
            a.claim_no + 1,
            &[("f/fenced", json!(1)), ("f/same", json!("a"))],
        ),
        end(
            &b,
            b.claim_no,
            &[("f/b", json!({"v": 1})), ("f/same", json!("b"))],
        ),
        end(&c, c.claim_no, &[("f/same", json!("c"))]),
    ];
    let written = jobs.complete(&batch).await.unwrap();
    assert_eq!(written, vec![b.id, c.id]);
    let got = jobs.records("f/", None, 10).await.unwrap();
    let keys: Vec<(&str, &Value)> = got.iter().map(|r| (r.key.as_str(), &r.value)).collect();
    assert_eq!(
        keys,
        vec![("f/b", &json!({"v": 1})), ("f/same", &json!("c"))]
    );
    let owner = "SELECT count(*) FROM {s}.records WHERE key = 'f/same' AND job_id = ";
    assert_eq!(number(&schema, &format!("{owner}'{}'", c.id)).await, 1);
    let page = jobs.records("f/", Some("f/b"), 10).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].key, "f/same");
    assert!(
        jobs.records("f/%", None, 10).await.unwrap().is_empty(),
        "a literal prefix"
    );
    // The fenced completion written again, with its right claim, writes its records then.
    let again = jobs
        .complete(&[end(&a, a.claim_no, &[("f/fenced", json!(1))])])
        .await
        .unwrap();
    assert_eq!(again, vec![a.id]);
    assert_eq!(jobs.records("f/fenced", None, 10).await.unwrap().len(), 1);
    schema.drop_now().await;
}
