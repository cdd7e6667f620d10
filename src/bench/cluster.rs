//! `warden bench-cluster --url URL`: durable no-op jobs per second with 1, 2 and 3 `warden node`
//! child processes (this executable, the embedded default config plus `[store] kind =
//! "postgres"`) sharing one PostgreSQL, beside the sled single node and a ceiling, all measured
//! in the same run:
//!
//! - `sled_jobs_per_s`: one node on its journal (the default config as it ships);
//! - `cluster_<n>_nodes_jobs_per_s`: `--jobs` no-ops submitted in batches through every node at
//!   once (two connections each), counted from the first submit until the jobs table says every
//!   one succeeded (polled every 20 ms); each `n` gets a schema of its own;
//! - `sled_chain_ms_per_step`, `cluster_<n>_nodes_chain_ms_per_step`: a chain of
//!   `chain_steps` no-ops submitted after the throughput run, from its submit until the whole
//!   chain succeeded, per step (how long a step waits for the one before it);
//! - `ceiling_jobs_per_s`: what PostgreSQL takes at most for the same work from one connection
//!   with nothing around it: per batch, the insert, the claim and the completion statements of
//!   the store (a job costs those three writes in any mode), on a schema of its own;
//!   `cluster_<n>_nodes_ratio_to_ceiling` compares each run with it.
//!
//! The role of the URL must be allowed to create schemas; every schema is `bench_cluster_<pid>_*`
//! and dropped at the end. On this benchmark's machine the database, the nodes and the load
//! share the same cores: the figures say what one machine does, not how a cluster scales.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use warden_actors::cluster::{Cluster, ClusterArgs, Completion, NewRow, Outcome, Timing};
use warden_actors::job::{JobId, Priority};
use warden_actors::sink::tokio_postgres::Client;

use super::load::{chain_ms_per_step, submit_parallel, CHAIN_STEPS};
use super::process::NodeProcess;
use super::sink::connect;
use super::PHASE_TIMEOUT;

/// What to measure.
#[derive(Args, Debug, Clone)]
pub struct ClusterBenchArgs {
    /// PostgreSQL URL of a database where the role may create schemas.
    #[arg(long, env = "WARDEN_BENCH_PG", hide_env_values = true)]
    pub url: String,
    /// No-op jobs per run.
    #[arg(long, default_value_t = 50_000)]
    pub jobs: usize,
    /// The most nodes (runs go from 1 to this).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Jobs per submit_batch.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// `builtin`'s workers on every node (default: the default config's). A node claims at most
    /// its idle workers at a time, so this sets how many jobs one round trip moves.
    #[arg(long)]
    pub workers: Option<usize>,
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: ClusterBenchArgs) -> ExitCode {
    match measure(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warden bench-cluster: {e}");
            ExitCode::from(1)
        }
    }
}

async fn measure(args: &ClusterBenchArgs) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("this executable: {e}"))?;
    let db = connect(&args.url).await?;
    let prefix = format!("bench_cluster_{}", std::process::id());
    println!("jobs={}", args.jobs);
    if let Some(w) = args.workers {
        println!("builtin_workers_per_node={w}");
    }
    let measured = async {
        let ceiling = ceiling(args, &format!("{prefix}_raw")).await?;
        println!("ceiling_jobs_per_s={ceiling:.0}");
        let (sled, sled_chain) = sled(&exe, args).await?;
        println!("sled_jobs_per_s={sled:.0}");
        println!("chain_steps={CHAIN_STEPS}");
        println!("sled_chain_ms_per_step={sled_chain:.1}");
        for n in 1..=args.nodes {
            let (rate, chain) = cluster_run(&exe, args, &db, &format!("{prefix}_{n}"), n).await?;
            println!("cluster_{n}_nodes_jobs_per_s={rate:.0}");
            println!("cluster_{n}_nodes_ratio_to_ceiling={:.3}", rate / ceiling);
            println!("cluster_{n}_nodes_chain_ms_per_step={chain:.1}");
        }
        Ok(())
    }
    .await;
    let schemas = db
        .query(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1",
            &[&format!("{prefix}%")],
        )
        .await
        .map_err(|e| e.to_string())?;
    for s in schemas {
        let name: String = s.get(0);
        let _ = db
            .batch_execute(&format!("DROP SCHEMA {name} CASCADE"))
            .await;
    }
    measured
}

/// The store's own statements, one batch at a time from one connection: insert, claim,
/// complete.
async fn ceiling(args: &ClusterBenchArgs, schema: &str) -> Result<f64, String> {
    let cluster = Cluster::new(ClusterArgs {
        url: args.url.clone(),
        url_env: "--url".into(),
        schema: schema.into(),
        node_id: "bench-ceiling".into(),
        timeout: Duration::from_secs(30),
        pool_size: 2,
        timing: Timing::default(),
    })?;
    cluster
        .open(&[])
        .await
        .map_err(|e| e.message().to_string())?;
    let jobs = &cluster.jobs;
    let started = Instant::now();
    let mut done = 0;
    while done < args.jobs {
        let n = args.batch.min(args.jobs - done);
        let rows: Vec<NewRow> = (0..n).map(|_| noop_row()).collect();
        jobs.insert(&rows)
            .await
            .map_err(|e| e.message().to_string())?;
        let claimed = jobs
            .claim("builtin", n, None)
            .await
            .map_err(|e| e.message().to_string())?;
        let ends: Vec<Completion> = claimed
            .into_iter()
            .map(|c| Completion {
                id: c.id,
                claim_no: c.claim_no,
                outcome: Outcome::Succeeded("null".into()),
                records: Vec::new(),
            })
            .collect();
        jobs.complete(&ends)
            .await
            .map_err(|e| e.message().to_string())?;
        done += n;
    }
    Ok(args.jobs as f64 / started.elapsed().as_secs_f64())
}

fn noop_row() -> NewRow {
    NewRow {
        id: JobId::new(),
        name: "builtin.noop".into(),
        pipeline: "builtin".into(),
        priority: Priority::Normal,
        max_retries: 3,
        params: "{}".into(),
        unique_key: None,
        run_at: None,
        tick: None,
    }
}

/// One node on its journal, the default config: its jobs/s, then its chain's ms per step.
async fn sled(exe: &Path, args: &ClusterBenchArgs) -> Result<(f64, f64), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let mut node = NodeProcess::spawn_workers(exe, dir.path(), "", args.workers)?;
    node.wait_ready(PHASE_TIMEOUT).await?;
    let started = Instant::now();
    submit_parallel(node.admin()?, args.jobs, args.batch, 2).await?;
    let mut c = crate::client::Client::connect_addr(node.admin()?)
        .await
        .map_err(|e| e.to_string())?;
    super::load::wait_succeeded(&mut c, args.jobs as u64, PHASE_TIMEOUT).await?;
    let rate = args.jobs as f64 / started.elapsed().as_secs_f64();
    let chain = chain_ms_per_step(node.admin()?, PHASE_TIMEOUT).await?;
    node.shutdown(PHASE_TIMEOUT).await?;
    Ok((rate, chain))
}

/// `n` nodes on schema `schema`: the jobs submitted through all of them at once (jobs/s), then
/// a chain submitted through the first (its ms per step; its steps run on any node).
async fn cluster_run(
    exe: &Path,
    args: &ClusterBenchArgs,
    db: &Client,
    schema: &str,
    n: usize,
) -> Result<(f64, f64), String> {
    let dirs: Vec<tempfile::TempDir> = (0..n)
        .map(|_| tempfile::tempdir().map_err(|e| format!("temp dir: {e}")))
        .collect::<Result<_, _>>()?;
    let mut nodes = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let store = format!(
            "\n[store]\nkind = \"postgres\"\nurl = {:?}\nschema = {schema:?}\nnode_id = \"bench-{i}\"\n",
            args.url
        );
        nodes.push(NodeProcess::spawn_workers(
            exe,
            d.path(),
            &store,
            args.workers,
        )?);
    }
    for node in &mut nodes {
        node.wait_ready(PHASE_TIMEOUT).await?;
    }
    let per_node = args.jobs / n;
    let started = Instant::now();
    let mut submits = Vec::new();
    for node in &nodes {
        submits.push(tokio::spawn(submit_parallel(
            node.admin()?,
            per_node,
            args.batch,
            2,
        )));
    }
    let mut total = 0;
    for s in submits {
        total += s.await.map_err(|e| e.to_string())??;
    }
    wait_table(db, schema, total as i64).await?;
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let chain = chain_ms_per_step(nodes[0].admin()?, PHASE_TIMEOUT).await?;
    for node in nodes {
        node.shutdown(PHASE_TIMEOUT).await?;
    }
    Ok((rate, chain))
}

/// Waits until `n` jobs of `schema` succeeded.
async fn wait_table(db: &Client, schema: &str, n: i64) -> Result<(), String> {
    let q = format!("SELECT count(*) FROM {schema}.jobs WHERE state = 'succeeded'");
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let done: i64 = db
            .query_one(&q, &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if done >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {done} of {n} jobs succeeded within {PHASE_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
