//! `warden bench-sink --url URL`: how fast the PostgreSQL sink ships a backlog, beside what
//! PostgreSQL takes at most for the same rows, measured in the same run:
//!
//! - `sink_rows_per_s`: a data dir holding `--records` records (a mix of SEC filings, price
//!   bars, income statements and exec-task records, as the pipelines store them) is handed to
//!   a `warden node` child process (this executable) with `[sinks.postgres]`; once the sink is
//!   connected, `sink_backfill` enqueues every record and the clock runs until `sinks` says the
//!   backlog is 0 (polled every 20 ms): enqueue, peek, mapping, upserts, acks;
//! - `ceiling_insert_rows_per_s`: the same rows (the sink's own mapping) as plain multi-row
//!   `INSERT … SELECT … FROM unnest(…)` statements of `--batch` rows, one transaction each,
//!   into empty copies of the tables: the sink's statement without `ON CONFLICT` and without
//!   anything around it;
//! - `ceiling_copy_rows_per_s`: the same rows by `COPY … FROM STDIN` (text format), one COPY
//!   per table: PostgreSQL's fastest way in.
//!
//! It needs a database where the URL's role may create schemas; it creates `bench_sink_<pid>`
//! and `bench_raw_<pid>` and drops both at the end. Figures print as `name=value` lines.

use std::collections::VecDeque;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use futures::SinkExt;
use serde_json::{json, Value};
use warden_actors::sink::tokio_postgres::{self, Client, NoTls};
use warden_actors::sink::{Rows, TableId};
use warden_actors::store::journal::{Journal, StoredRecord};

use super::load::ok;
use super::process::NodeProcess;
use super::PHASE_TIMEOUT;
use crate::client::Client as Admin;

/// What to measure.
#[derive(Args, Debug, Clone)]
pub struct SinkBenchArgs {
    /// PostgreSQL URL of a database where the role may create schemas.
    #[arg(long, env = "WARDEN_BENCH_PG", hide_env_values = true)]
    pub url: String,
    /// Records in the backlog.
    #[arg(long, default_value_t = 100_000)]
    pub records: usize,
    /// The sink's `batch` (records per transaction), also the ceiling's INSERT size.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: SinkBenchArgs) -> ExitCode {
    match measure(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warden bench-sink: {e}");
            ExitCode::from(1)
        }
    }
}

async fn measure(args: &SinkBenchArgs) -> Result<(), String> {
    let pid = std::process::id();
    let (sink_schema, raw_schema) = (format!("bench_sink_{pid}"), format!("bench_raw_{pid}"));
    let db = connect(&args.url).await?;
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let records = backlog(args.records);
    let mut rows = Rows::default();
    records.iter().for_each(|r| rows.add(r));
    println!("sink_records={}", records.len());
    println!("sink_rows={}", rows.len());
    store(&dir.path().join("data"), &records)?;

    let measured = async {
        sink(args, dir.path(), &sink_schema, rows.len()).await?;
        ceilings(&db, &sink_schema, &raw_schema, &rows, args.batch).await
    }
    .await;
    for schema in [&sink_schema, &raw_schema] {
        let _ = db
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await;
    }
    measured
}

/// A client on `url`, its connection driven by a task of its own.
pub(super) async fn connect(url: &str) -> Result<Client, String> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// `n` records shaped like the pipelines' (40 % price bars, 30 % filings, 10 % income
/// statements, 20 % exec-task records), in a stable order.
fn backlog(n: usize) -> Vec<StoredRecord> {
    let at = warden_actors::job::now_ms();
    (0..n)
        .map(|i| {
            let day = format!("20{:02}-{:02}-{:02}", 10 + i % 15, 1 + i % 12, 1 + i % 28);
            let (key, value) = match i % 10 {
                0..=3 => (
                    format!("yahoo/chart/T{}/1d/{day}", i % 997),
                    json!({"ticker": format!("T{}", i % 997), "interval": "1d", "date": day,
                           "timestamp": 1_700_000_000 + i as i64, "open": 10.5, "high": 11.25,
                           "low": 10.0, "close": 11.0, "volume": 1_000_000 + i, "currency": "USD", "adjclose": 11.0}),
                ),
                4..=6 => (
                    format!("sec/filings/{}/0000{:06}-25-{:06}", 1000 + i % 500, i % 500, i),
                    json!({"accessionNumber": i.to_string(), "form": "10-Q", "filingDate": day,
                           "reportDate": day, "acceptanceDateTime": "2025-02-14T16:05:00.000Z",
                           "primaryDocument": "doc.htm", "primaryDocDescription": "10-Q",
                           "items": "", "size": 250_000 + i, "isXBRL": 1, "cik": 1000 + i % 500, "name": "Example Inc."}),
                ),
                7 => (
                    format!("alphavantage/income/S{i}/{day}"),
                    json!({"fiscalDateEnding": day, "reportedCurrency": "USD", "totalRevenue": "123456789",
                           "grossProfit": "23456789", "netIncome": "3456789", "ebitda": "None", "symbol": format!("S{i}")}),
                ),
                _ => (format!("analysis/{i}"), json!({"i": i, "forms": {"10-K": 3, "10-Q": 9}, "latest": day})),
            };
            StoredRecord { key, value, updated_at: at }
        })
        .collect()
}

/// Stores `records` in a new journal at `data` (without an outbox: a sink turned on later).
fn store(data: &Path, records: &[StoredRecord]) -> Result<(), String> {
    let journal = Journal::open(data).map_err(|e| e.to_string())?;
    for r in records {
        journal
            .put_record(&r.key, &r.value)
            .map_err(|e| e.to_string())?;
    }
    journal.sync_now().map_err(|e| e.to_string())
}

/// The sink's figures: a node on the stored data dir, its backlog enqueued and drained.
async fn sink(args: &SinkBenchArgs, dir: &Path, schema: &str, rows: usize) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("this executable: {e}"))?;
    let extra = format!(
        "\n[sinks.postgres]\nurl = {:?}\nschema = {schema:?}\nbatch = {}\nflush_every = \"50ms\"\n",
        args.url, args.batch
    );
    let mut node = NodeProcess::spawn_with(&exe, dir, &extra)?;
    node.wait_ready(PHASE_TIMEOUT).await?;
    let mut c = Admin::connect_addr(node.admin()?)
        .await
        .map_err(|e| e.to_string())?;
    wait_sink(&mut c, "the sink to connect", |s| s["state"] == "idle").await?;
    let started = Instant::now();
    let a = ok(&mut c, &json!({"cmd": "sink_backfill", "prefix": ""})).await?;
    let enqueued = started.elapsed();
    println!("sink_backfill_enqueue_ms={}", enqueued.as_millis());
    println!("sink_enqueued={}", a["enqueued"]);
    let shipped_meanwhile = ok(&mut c, &json!({"cmd": "sinks"})).await?["sinks"][0]
        ["rows_written_total"]
        .as_u64()
        .unwrap_or(0);
    let s = wait_sink(&mut c, "the backlog to drain", |s| s["backlog"] == 0).await?;
    let took = started.elapsed().as_secs_f64();
    println!("sink_seconds={took:.2}");
    println!("sink_rows_written={}", s["rows_written_total"]);
    println!("sink_rows_per_s={:.0}", rows as f64 / took);
    // The drain alone: rows still to write once the enqueue was done, over the time that took.
    let after = (rows as u64).saturating_sub(shipped_meanwhile) as f64;
    println!(
        "sink_drain_rows_per_s={:.0}",
        after / (took - enqueued.as_secs_f64())
    );
    drop(c);
    let status = node.shutdown(PHASE_TIMEOUT).await?;
    println!("node_exit_code={}", status.code().unwrap_or(-1));
    Ok(())
}

/// Polls `sinks` every 20 ms until `done` holds for the sink; returns it.
async fn wait_sink(
    c: &mut Admin,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Result<Value, String> {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let a = ok(c, &json!({"cmd": "sinks"})).await?;
        let s = &a["sinks"][0];
        if done(s) {
            return Ok(s.clone());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}: {s}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The two ceilings, into fresh copies of the sink's tables in `raw`.
async fn ceilings(
    db: &Client,
    sink: &str,
    raw: &str,
    rows: &Rows,
    batch: usize,
) -> Result<(), String> {
    let pg = |e: tokio_postgres::Error| format!("ceiling: {e}");
    let fresh = || async {
        let mut sql = format!("DROP SCHEMA IF EXISTS {raw} CASCADE; CREATE SCHEMA {raw};");
        for t in rows.tables.keys() {
            let name = t.name();
            sql.push_str(&format!(
                "CREATE TABLE {raw}.{name} (LIKE {sink}.{name} INCLUDING ALL);"
            ));
        }
        db.batch_execute(&sql).await
    };
    fresh().await.map_err(pg)?;
    let started = Instant::now();
    for (table, all) in &rows.tables {
        for chunk in all.chunks(batch.max(1)) {
            insert(db, raw, *table, chunk).await.map_err(pg)?;
        }
    }
    let insert_rate = rows.len() as f64 / started.elapsed().as_secs_f64();
    println!("ceiling_insert_rows_per_s={insert_rate:.0}");

    fresh().await.map_err(pg)?;
    let started = Instant::now();
    for (table, all) in &rows.tables {
        copy(db, raw, *table, all).await.map_err(pg)?;
    }
    let copy_rate = rows.len() as f64 / started.elapsed().as_secs_f64();
    println!("ceiling_copy_rows_per_s={copy_rate:.0}");
    Ok(())
}

/// One multi-row INSERT of `rows` in its own transaction.
async fn insert(
    db: &Client,
    schema: &str,
    table: TableId,
    rows: &[Vec<Option<String>>],
) -> Result<(), tokio_postgres::Error> {
    let t = table.table();
    let sql = warden_actors::sink::insert_sql(schema, t);
    let columns: Vec<Vec<Option<&str>>> = (0..t.columns.len())
        .map(|c| rows.iter().map(|r| r[c].as_deref()).collect())
        .collect();
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = columns
        .iter()
        .map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    db.batch_execute("BEGIN").await?;
    db.execute(&sql, &params).await?;
    db.batch_execute("COMMIT").await
}

/// One `COPY … FROM STDIN` of `rows` (text format).
async fn copy(
    db: &Client,
    schema: &str,
    table: TableId,
    rows: &[Vec<Option<String>>],
) -> Result<(), tokio_postgres::Error> {
    let t = table.table();
    let columns: Vec<String> = t.columns.iter().map(|(c, _)| format!("\"{c}\"")).collect();
    let sql = format!(
        "COPY {schema}.{} ({}) FROM STDIN",
        t.name,
        columns.join(", ")
    );
    let sink = db.copy_in::<str, VecDeque<u8>>(sql.as_str()).await?;
    futures::pin_mut!(sink);
    let mut buf = VecDeque::with_capacity(1 << 20);
    for row in rows {
        for (i, value) in row.iter().enumerate() {
            if i > 0 {
                buf.push_back(b'\t');
            }
            match value {
                None => buf.extend(b"\\N"),
                Some(v) => escape_into(v, &mut buf),
            }
        }
        buf.push_back(b'\n');
        if buf.len() > (1 << 20) {
            sink.send(std::mem::take(&mut buf)).await?;
        }
    }
    sink.send(buf).await?;
    sink.as_mut().finish().await.map(|_| ())
}

/// COPY's text format: backslash, tab, newline and carriage return escaped.
fn escape_into(v: &str, buf: &mut VecDeque<u8>) {
    for b in v.bytes() {
        match b {
            b'\\' => buf.extend(b"\\\\"),
            b'\t' => buf.extend(b"\\t"),
            b'\n' => buf.extend(b"\\n"),
            b'\r' => buf.extend(b"\\r"),
            other => buf.push_back(other),
        }
    }
}
