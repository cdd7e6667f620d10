//! The offline demo: starts fake SEC, Yahoo and Alpha Vantage servers on loopback, a node on
//! `config/demo.toml` (the same `Node::start` the binary uses), submits a batch of ingestion jobs
//! for a handful of tickers, waits for them and shows the results, the records and the tree;
//! then runs the chain `sec.filings -> filing.analyze -> report.generate` (the last two are the
//! Python jobs of `examples/jobs/`) for each ticker and prints the reports.
//!
//! Run with `cargo run --example demo` (or `just demo`). While it runs, the node also answers
//! `warden --addr 127.0.0.1:7171 <command>` from another terminal.

#[path = "../tests/it/fakes.rs"]
mod fakes;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warden::client::Client;
use warden::config::Config;
use warden_actors::node::Node;

const FAKES_AT: &str = "127.0.0.1:18380";
const TICKERS: &[&str] = &["CHGG", "IBM", "AAPL", "MSFT", "GOOGL"];

#[tokio::main]
async fn main() -> Result<(), String> {
    let fake = fakes::FakeUpstream::start_at(FAKES_AT.parse().expect("literal address"))
        .await
        .map_err(|e| format!("cannot start the fake upstreams on {FAKES_AT}: {e}"))?;
    println!("fake upstreams on {}", fake.base_url());

    let config =
        Config::from_file(std::path::Path::new("config/demo.toml")).map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut config = config;
    config.node.data_dir = dir.path().to_path_buf();
    let env = |var: &str| {
        std::env::var(var)
            .ok()
            .or_else(|| (var == "ALPHAVANTAGE_API_KEY").then(|| "demo-key".into()))
    };
    let args = config
        .into_args("config/demo.toml", &env)
        .map_err(|e| e.to_string())?;
    let node = Node::start(args).await.map_err(|e| e.to_string())?;
    println!(
        "node {} on {} (data in {})\n",
        node.name(),
        node.admin_addr(),
        dir.path().display()
    );

    let mut c = Client::connect_addr(node.admin_addr())
        .await
        .map_err(|e| e.to_string())?;
    let mut jobs = Vec::new();
    for t in TICKERS {
        jobs.push(
            json!({"job": "sec.filings", "params": {"ticker": t, "forms": ["10-K", "10-Q"]}}),
        );
        jobs.push(json!({"job": "sec.company_facts", "params": {"ticker": t}}));
        jobs.push(json!({"job": "yahoo.chart", "params": {"ticker": t}}));
        jobs.push(json!({"job": "alphavantage.overview", "params": {"symbol": t}}));
    }
    jobs.push(json!({"job": "yahoo.chart", "params": {"ticker": "NOPE"}}));
    let started = Instant::now();
    let a = c
        .request(&json!({"cmd": "submit_batch", "jobs": jobs}))
        .await
        .map_err(|e| e.to_string())?;
    let ids: Vec<String> = a["job_ids"]
        .as_array()
        .ok_or(format!("submit failed: {a}"))?
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    println!("submitted {} jobs for {}", ids.len(), TICKERS.join(", "));

    let mut done = Vec::new();
    for id in &ids {
        loop {
            let s = c
                .request(&json!({"cmd": "status", "job_id": id}))
                .await
                .map_err(|e| e.to_string())?;
            let job = s["job"].clone();
            if matches!(
                job["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                done.push(job);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!("all finished in {:.1?}\n", started.elapsed());
    println!(
        "{:<24} {:<28} {:<10} {:>8}  result / error",
        "job", "params", "status", "attempts"
    );
    for j in &done {
        let outcome = if j["status"] == "succeeded" {
            j["result"].to_string()
        } else {
            j["error"].as_str().unwrap_or("").chars().take(70).collect()
        };
        println!(
            "{:<24} {:<28} {:<10} {:>8}  {}",
            j["name"].as_str().unwrap_or(""),
            j["params"].to_string(),
            j["status"].as_str().unwrap_or(""),
            j["attempts"],
            outcome
        );
    }
    for prefix in [
        "sec/filings/",
        "sec/facts/",
        "yahoo/chart/",
        "alphavantage/overview/",
    ] {
        let r = c
            .request(&json!({"cmd": "records", "prefix": prefix, "limit": 1000}))
            .await
            .map_err(|e| e.to_string())?;
        let n = r["records"].as_array().map_or(0, Vec::len);
        println!("records under {prefix:<24} {n}");
    }
    println!(
        "upstream requests seen by the fakes: {}",
        fake.requests().len()
    );
    let t = c
        .request(&json!({"cmd": "pipelines"}))
        .await
        .map_err(|e| e.to_string())?;
    for p in t["pipelines"].as_array().into_iter().flatten() {
        println!(
            "pipeline {:<13} rate_limit {}  breaker {}",
            p["name"].as_str().unwrap_or(""),
            compact(&p["rate_limit"]),
            compact(&p["breaker"])
        );
    }
    chains(&mut c).await?;
    node.stop(true).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Runs the ingest -> analysis -> report chain for every ticker and prints the reports.
async fn chains(c: &mut Client) -> Result<(), String> {
    println!("\nchains sec.filings -> filing.analyze -> report.generate (examples/jobs/*.py):");
    let started = Instant::now();
    let mut workflows = Vec::new();
    for t in TICKERS {
        let a = c
            .request(&json!({"cmd": "submit_workflow", "kind": "chain", "jobs": [
                {"job": "sec.filings", "params": {"ticker": t}},
                {"job": "filing.analyze"},
                {"job": "report.generate"}]}))
            .await
            .map_err(|e| e.to_string())?;
        let id = a["workflow_id"]
            .as_str()
            .ok_or(format!("submit failed: {a}"))?;
        workflows.push(id.to_string());
    }
    for id in &workflows {
        let w = loop {
            let w = c
                .request(&json!({"cmd": "workflow", "workflow_id": id}))
                .await
                .map_err(|e| e.to_string())?;
            if w["workflow"]["status"] != "running" {
                break w["workflow"].clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let last = &w["jobs"][2];
        println!(
            "  chain {} {}",
            w["status"].as_str().unwrap_or(""),
            last["result"]["key"]
        );
        if let Some(key) = last["result"]["key"].as_str() {
            let r = c
                .request(&json!({"cmd": "records", "prefix": key, "limit": 1}))
                .await
                .map_err(|e| e.to_string())?;
            for line in r["records"][0]["value"]["lines"]
                .as_array()
                .into_iter()
                .flatten()
            {
                println!("    {}", line.as_str().unwrap_or(""));
            }
        } else {
            println!("    {}", last["error"].as_str().unwrap_or("(no report)"));
        }
    }
    println!("chains finished in {:.1?}", started.elapsed());
    Ok(())
}

fn compact(v: &Value) -> String {
    if v.is_null() {
        "-".into()
    } else {
        v.to_string()
    }
}
