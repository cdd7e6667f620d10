//! The seed's chain end to end, on `config/demo.toml` as shipped (its Python jobs in
//! `examples/jobs/`), against the fake SEC on loopback: `sec.filings -> filing.analyze ->
//! report.generate` leaves an analysis and a report record, and `chain.nightly` (what the
//! nightly schedule runs) submits that chain for every ticker it is given.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use warden::config::Config;

use crate::fakes::{company, FakeUpstream};
use crate::support::{finished, poll, req, submit, TestNode};

const WAIT: Duration = Duration::from_secs(90);

/// A node on config/demo.toml, its upstreams pointed at `fake`, on free ports and a temp dir.
async fn demo_node(fake: &FakeUpstream) -> TestNode {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
    let mut config = Config::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.console.listen = "127.0.0.1:0".parse().unwrap();
    for (name, p) in config.pipelines.iter_mut() {
        if ["sec", "yahoo", "alphavantage"].contains(&name.as_str()) {
            p.base_url = Some(fake.base_url());
        }
    }
    config.pipelines.get_mut("sec").unwrap().tickers_url = Some(fake.tickers_url());
    let env = |var: &str| match var {
        "ALPHAVANTAGE_API_KEY" => Some("demo-key".to_string()),
        other => std::env::var(other).ok(),
    };
    let demo = config
        .into_args("config/demo.toml", &env)
        .unwrap_or_else(|e| panic!("{e}"));
    TestNode::start_with(move |a| {
        let (data_dir, free, cache) = (a.data_dir.clone(), a.min_free_space, a.cache_size);
        *a = demo;
        (a.data_dir, a.min_free_space, a.cache_size) = (data_dir, free, cache);
    })
    .await
}

async fn record(c: &mut warden::client::Client, key: &str) -> Option<Value> {
    let r = req(c, json!({"cmd": "records", "prefix": key, "limit": 1})).await;
    r["records"]
        .as_array()
        .and_then(|r| r.first())
        .filter(|r| r["key"] == key)
        .map(|r| r["value"].clone())
}

/// Ensures that the chain sec.filings -> filing.analyze -> report.generate runs to its end on
/// the demo config and stores the analysis and the report of the company.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_analysis_report_chain() {
    let fake = FakeUpstream::start().await;
    let node = demo_node(&fake).await;
    let mut c = node.client().await;
    let a = req(
        &mut c,
        json!({"cmd": "submit_workflow", "kind": "chain", "jobs": [
            {"job": "sec.filings", "params": {"ticker": "CHGG"}},
            {"job": "filing.analyze"},
            {"job": "report.generate"}]}),
    )
    .await;
    assert_eq!(a["ok"], true, "{a}");
    let wf = a["workflow_id"].as_str().unwrap();
    let w = poll(
        &mut c,
        "the chain to end",
        WAIT,
        json!({"cmd": "workflow", "workflow_id": wf}),
        |a| a["workflow"]["status"] != "running",
    )
    .await;
    assert_eq!(w["workflow"]["status"], "succeeded", "{w}");
    let cik = company("CHGG").unwrap().cik;
    let analysis = record(&mut c, &format!("analysis/{cik}"))
        .await
        .expect("analysis record");
    assert_eq!(analysis["cik"], cik);
    assert_eq!(analysis["ticker"], "CHGG");
    assert!(analysis["filings"].as_u64().unwrap() > 0, "{analysis}");
    assert!(
        analysis["latest_10k"].is_string() && analysis["latest_10q"].is_string(),
        "{analysis}"
    );
    let jobs = w["workflow"]["jobs"].as_array().unwrap();
    assert_eq!(
        jobs[1]["progress"]["message"], "analysis stored",
        "{}",
        jobs[1]
    );
    let report = record(&mut c, &format!("report/{cik}"))
        .await
        .expect("report record");
    assert_eq!(report["title"], "Filings report: Chegg, Inc.");
    assert!(
        report["lines"][2]
            .as_str()
            .unwrap()
            .starts_with("latest annual report (10-K): 2"),
        "{report}"
    );
    assert_eq!(jobs[2]["result"]["key"], format!("report/{cik}"));
}

/// Ensures that `chain.nightly`, the job of the nightly schedule, submits the chain for every
/// ticker and that every report is there at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nightly_job_reports_on_every_ticker() {
    let fake = FakeUpstream::start().await;
    let node = demo_node(&fake).await;
    let mut c = node.client().await;
    let tickers = ["IBM", "AAPL", "MSFT"];
    let id = submit(&mut c, "chain.nightly", json!({"tickers": tickers})).await;
    let j = finished(&mut c, &id, WAIT).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    assert_eq!(j["result"]["workflows"].as_array().unwrap().len(), 3, "{j}");
    for t in tickers {
        let key = format!("report/{}", company(t).unwrap().cik);
        poll(
            &mut c,
            &format!("{key} to be stored"),
            WAIT,
            json!({"cmd": "records", "prefix": key, "limit": 1}),
            |r| r["records"].as_array().is_some_and(|r| !r.is_empty()),
        )
        .await;
    }
    let s = req(&mut c, json!({"cmd": "schedules"})).await;
    assert_eq!(s["schedules"][0]["job"], "chain.nightly", "{s}");
}
