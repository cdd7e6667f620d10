//! The PostgreSQL sink against a real PostgreSQL (`pg.rs`): the upstream tasks' records land in
//! the typed tables with the right types and a re-run or a replay changes nothing; PostgreSQL
//! stopped while 200 jobs run, then started again; `kill -9` of the node mid-flush; bad
//! credentials and an unreachable server shown in words, never the password.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use warden::bench::process::NodeProcess;
use warden::client::Client;
use warden_actors::args::{ExecTaskArgs, NodeArgs, PostgresSinkArgs};
use warden_actors::exec::check;

use crate::fakes::FakeUpstream;
use crate::pg::{self, PrivatePg, Schema};
use crate::support::{add, finished, job_ids, poll, req, submit, upstream, TestNode};

const WAIT: Duration = Duration::from_secs(60);

/// Sink arguments with test timings: a quick flush, a short backoff.
fn sink_args(url: &str, schema: &str) -> PostgresSinkArgs {
    PostgresSinkArgs {
        url: url.into(),
        schema: schema.into(),
        batch: 100,
        flush_every: Duration::from_millis(20),
        max_backoff: Duration::from_millis(300),
        timeout: Duration::from_secs(5),
    }
}

/// Waits until the sink is connected and its backlog is shipped; returns its view.
async fn drained(c: &mut Client) -> Value {
    let a = poll(
        c,
        "the sink to drain its backlog",
        WAIT,
        json!({"cmd": "sinks"}),
        |a| a["sinks"][0]["backlog"] == 0 && a["sinks"][0]["state"] == "idle",
    )
    .await;
    a["sinks"][0].clone()
}

/// Every record under `prefix`, paged through `records`.
async fn records(c: &mut Client, prefix: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let a = req(
            c,
            json!({"cmd": "records", "prefix": prefix, "limit": 1000, "after": after}),
        )
        .await;
        let page = a["records"].as_array().unwrap().clone();
        for r in &page {
            out.insert(r["key"].as_str().unwrap().to_string(), r["value"].clone());
        }
        if page.len() < 1000 {
            return out;
        }
        after = out.keys().last().cloned();
    }
}

/// Submits each job and waits until it succeeded.
async fn run_all(c: &mut Client, jobs: &[(&str, Value)]) {
    for (job, params) in jobs {
        let id = submit(c, job, params.clone()).await;
        let done = finished(c, &id, WAIT).await;
        assert_eq!(done["status"], "succeeded", "{job}: {done}");
    }
}

/// `max(xmin)` of every table: a row rewritten by an upsert gets a newer transaction id.
async fn versions(s: &Schema) -> Vec<Vec<Option<String>>> {
    let mut out = Vec::new();
    for t in [
        "sec_filings",
        "sec_facts",
        "price_bars",
        "av_overview",
        "av_income_statements",
        "records",
    ] {
        out.extend(
            s.texts(&format!(
                "SELECT '{t}', count(*)::text, max(xmin::text::bigint)::text FROM {{s}}.{t}"
            ))
            .await,
        );
    }
    out
}

/// Ensures that sec.filings, sec.company_facts, yahoo.chart, alphavantage.overview and
/// alphavantage.income_statement land in their typed tables with the right types and values,
/// one row per record (per fact for facts); that a re-run of the jobs ships nothing; and that
/// shipping every record again (a backfill, as after a crash) rewrites no row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_records_land_in_typed_tables_and_a_rerun_changes_nothing() {
    let fake = FakeUpstream::start().await;
    let schema = Schema::fresh("typed").await;
    let node = TestNode::start_with(|a| {
        for p in ["sec", "yahoo", "alphavantage"] {
            add(a, p, 2, 0, upstream(&fake, "100/s"));
        }
        a.sink = Some(sink_args(&pg::test_url(), &schema.name));
    })
    .await;
    let mut c = node.client().await;
    let jobs = [
        ("sec.filings", json!({"ticker": "CHGG"})),
        ("sec.company_facts", json!({"ticker": "CHGG"})),
        ("yahoo.chart", json!({"ticker": "CHGG"})),
        ("alphavantage.overview", json!({"symbol": "IBM"})),
        ("alphavantage.income_statement", json!({"symbol": "IBM"})),
    ];
    run_all(&mut c, &jobs).await;
    let first = drained(&mut c).await;
    assert_eq!(first["schema_version"], 1, "{first}");

    let types = schema.texts(
        "SELECT table_name::text || '.' || column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = '{s}' AND column_name IN ('filing_date', 'value', 'ts', 'volume', 'pe_ratio', 'fiscal_date_ending', 'raw', 'cik') ORDER BY 1",
    ).await;
    let types: BTreeMap<_, _> = types
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
        .collect();
    for (column, expected) in [
        ("sec_filings.filing_date", "date"),
        ("sec_filings.cik", "bigint"),
        ("sec_filings.raw", "jsonb"),
        ("sec_facts.value", "numeric"),
        ("price_bars.ts", "timestamp with time zone"),
        ("price_bars.volume", "bigint"),
        ("av_overview.pe_ratio", "numeric"),
        ("av_income_statements.fiscal_date_ending", "date"),
        ("records.value", "jsonb"),
    ] {
        assert_eq!(
            types.get(column).map(String::as_str),
            Some(expected),
            "{column}"
        );
    }

    // Filings: one row per record, typed from the value.
    let filings = records(&mut c, "sec/filings/").await;
    assert!(!filings.is_empty());
    assert_eq!(schema.count("sec_filings").await, filings.len() as i64);
    let (key, v) = filings.iter().next().unwrap();
    let accession = key.rsplit('/').next().unwrap();
    let row = &schema.texts(&format!("SELECT cik::text, form, filing_date::text, company_name, ticker FROM {{s}}.sec_filings WHERE accession = '{accession}'")).await[0];
    assert_eq!(row[0].as_deref(), Some("1364954"));
    assert_eq!(row[1].as_deref(), v["form"].as_str());
    assert_eq!(row[2].as_deref(), v["filingDate"].as_str());
    assert_eq!(row[3].as_deref(), Some("Chegg, Inc."));
    assert_eq!(
        row[4].as_deref(),
        Some("CHGG"),
        "the ticker from SEC's ticker map"
    );

    // Facts: one row per fact, the value numeric.
    let facts = records(&mut c, "sec/facts/").await;
    let fact_rows: usize = facts
        .values()
        .map(|v| v["facts"].as_array().unwrap().len())
        .sum();
    assert_eq!(schema.count("sec_facts").await, fact_rows as i64);
    let (key, v) = facts.iter().next().unwrap();
    let parts: Vec<&str> = key.split('/').collect();
    let row = &schema.texts(&format!(
        "SELECT value::text, unit FROM {{s}}.sec_facts WHERE cik = {} AND concept = '{}' AND period_end = '{}' AND fact_no = 0",
        parts[2], parts[3], parts[4]
    )).await[0];
    assert_eq!(row[0], Some(v["facts"][0]["val"].to_string()));

    // Bars: numeric prices, a timestamp, a bigint volume.
    let bars = records(&mut c, "yahoo/chart/").await;
    assert_eq!(schema.count("price_bars").await, bars.len() as i64);
    let (key, v) = bars.iter().next().unwrap();
    let period = key.rsplit('/').next().unwrap();
    let row = &schema.texts(&format!("SELECT close::text, volume::text, extract(epoch FROM ts)::bigint::text FROM {{s}}.price_bars WHERE ticker = 'CHGG' AND interval = '1d' AND period = '{period}'")).await[0];
    assert_eq!(row[0], Some(v["close"].to_string()));
    assert_eq!(row[1], Some(v["volume"].to_string()));
    assert_eq!(row[2], Some(v["timestamp"].to_string()));

    // Alpha Vantage: typed numbers from strings, absent fields NULL.
    let row = &schema.texts("SELECT pe_ratio::text, eps::text, cik::text, peg_ratio::text, latest_quarter::text FROM {s}.av_overview WHERE symbol = 'IBM'").await[0];
    assert_eq!(
        row,
        &[
            Some("21.5".into()),
            Some("3.10".into()),
            Some("51143".into()),
            None,
            Some("2025-09-30".into())
        ]
    );
    let income = records(&mut c, "alphavantage/income/IBM/").await;
    assert_eq!(
        schema.count("av_income_statements").await,
        income.len() as i64
    );
    let (key, v) = income.iter().next().unwrap();
    let end = key.rsplit('/').next().unwrap();
    let row = &schema.texts(&format!("SELECT net_income::text, total_revenue::text FROM {{s}}.av_income_statements WHERE symbol = 'IBM' AND fiscal_date_ending = '{end}'")).await[0];
    assert_eq!(row[0].as_deref(), v["netIncome"].as_str());
    assert_eq!(row[1].as_deref(), v["totalRevenue"].as_str());
    assert_eq!(schema.count("records").await, 0, "no exec records here");

    // A re-run stores nothing new, so it ships nothing and no row is rewritten.
    let before = versions(&schema).await;
    run_all(&mut c, &jobs).await;
    let again = drained(&mut c).await;
    assert_eq!(
        again["shipped"], first["shipped"],
        "a re-run enqueued records"
    );
    assert_eq!(again["rows_written_total"], first["rows_written_total"]);
    assert_eq!(versions(&schema).await, before);

    // Shipping everything again (what a crash between commit and ack amounts to) rewrites nothing.
    let all = records(&mut c, "").await.len();
    let a = req(&mut c, json!({"cmd": "sink_backfill", "prefix": ""})).await;
    assert_eq!(a["enqueued"], all as u64, "{a}");
    let replayed = drained(&mut c).await;
    assert_eq!(
        replayed["rows_written_total"], first["rows_written_total"],
        "{replayed}"
    );
    assert_eq!(versions(&schema).await, before);

    node.stop().await.unwrap();
    schema.drop_now().await;
}

/// Writes `gen.sh` into `dir`: one record per job, keyed by the job id.
fn record_task(dir: &Path) -> ExecTaskArgs {
    std::fs::write(
        dir.join("gen.sh"),
        "printf '{\"record\":{\"key\":\"gen/%s\",\"value\":{\"job\":\"%s\"}}}\\n{\"result\":null}\\n' \"$WARDEN_JOB_ID\" \"$WARDEN_JOB_ID\"\n",
    )
    .unwrap();
    let task = ExecTaskArgs {
        name: "gen.record".into(),
        command: vec!["sh".into(), "gen.sh".into()],
        cwd: dir.to_path_buf(),
        env: Default::default(),
        inherit_env: vec![],
        max_line_bytes: 64 << 10,
        stderr_tail_bytes: 4 << 10,
    };
    let path = std::env::var_os("PATH");
    check::resolve(task, dir, path.as_deref()).expect("sh is installed")
}

/// Adds the `gen` pipeline running `task` on 4 workers.
fn gen_pipeline(a: &mut NodeArgs, task: ExecTaskArgs) {
    let mut p = a.pipelines[0].clone();
    p.name = "gen".into();
    p.exec = vec![task];
    a.pipelines.push(p);
}

/// Ensures that with PostgreSQL stopped, 200 jobs storing records all succeed while the backlog
/// grows to 200 and `sinks` shows the error; started again, the backlog drains to 0 and the
/// table holds exactly one row per record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_while_200_jobs_run_then_the_backlog_drains() {
    let pg = PrivatePg::start().await;
    let scripts = tempfile::tempdir().unwrap();
    let task = record_task(scripts.path());
    let node = TestNode::start_with(|a| {
        gen_pipeline(a, task);
        a.sink = Some(sink_args(&pg.url(), "warden"));
    })
    .await;
    let mut c = node.client().await;
    drained(&mut c).await;

    pg.pg_stop();
    let jobs: Vec<Value> = (0..200).map(|_| json!({"job": "gen.record"})).collect();
    let a = req(&mut c, json!({"cmd": "submit_batch", "jobs": jobs})).await;
    assert_eq!(a["ok"], true, "{a}");
    for id in a["job_ids"].as_array().unwrap() {
        let done = finished(&mut c, id.as_str().unwrap(), WAIT).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    let down = poll(
        &mut c,
        "the sink to report the outage",
        WAIT,
        json!({"cmd": "sinks"}),
        |a| a["sinks"][0]["state"] == "retrying" && a["sinks"][0]["backlog"] == 200,
    )
    .await;
    let error = &down["sinks"][0]["last_error"];
    assert_eq!(error["kind"], "unavailable", "{down}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains(&format!("127.0.0.1:{}", pg.port)),
        "{down}"
    );

    pg.pg_start().await;
    let up = drained(&mut c).await;
    assert_eq!(
        up["last_error"]["kind"], "unavailable",
        "the last error stays visible: {up}"
    );
    let stored = records(&mut c, "gen/").await;
    assert_eq!(stored.len(), 200);
    let client = pg::connect(&pg.url()).await.unwrap();
    let rows = client
        .query("SELECT key, value::text FROM warden.records", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 200);
    for r in rows {
        let (key, value): (String, String) = (r.get(0), r.get(1));
        assert_eq!(
            stored.get(&key),
            Some(&serde_json::from_str::<Value>(&value).unwrap()),
            "{key}"
        );
    }
    node.stop().await.unwrap();
}

/// The extra config of a binary node with the `gen` pipeline (each `gen.many` job stores 1,000
/// records) and the sink on `schema`.
fn many_config(dir: &Path, url: &str, schema: &str) -> String {
    std::fs::write(
        dir.join("many.sh"),
        "i=0\nwhile [ $i -lt 1000 ]; do\n  printf '{\"record\":{\"key\":\"many/%s/%04d\",\"value\":{\"i\":%d}}}\\n' \"$WARDEN_JOB_ID\" $i $i\n  i=$((i+1))\ndone\necho '{\"result\":null}'\n",
    )
    .unwrap();
    format!(
        "\n[pipelines.gen]\nworkers = 2\n[tasks.\"gen.many\"]\ncommand = [\"sh\", \"many.sh\"]\ncwd = {cwd:?}\n\
         [sinks.postgres]\nurl = {url:?}\nschema = {schema:?}\nbatch = 50\nflush_every = \"10ms\"\nmax_backoff = \"300ms\"\n",
        cwd = dir.display().to_string(),
    )
}

/// Ensures that `kill -9` of the node while the sink ships a backlog loses no record and
/// duplicates none: after the restart the table equals the stored records, key for key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_flush_loses_and_duplicates_nothing() {
    let schema = Schema::fresh("kill9").await;
    let dir = tempfile::tempdir().unwrap();
    let extra = many_config(dir.path(), &pg::test_url(), &schema.name);
    let exe = Path::new(env!("CARGO_BIN_EXE_warden"));
    let mut node = NodeProcess::spawn_with(exe, dir.path(), &extra).unwrap();
    node.wait_ready(WAIT).await.unwrap();
    let mut c = Client::connect_addr(node.admin().unwrap()).await.unwrap();
    let jobs: Vec<Value> = (0..4).map(|_| json!({"job": "gen.many"})).collect();
    let a = req(&mut c, json!({"cmd": "submit_batch", "jobs": jobs})).await;
    let ids = job_ids(&a);
    poll(
        &mut c,
        "the sink to be mid-backlog",
        WAIT,
        json!({"cmd": "sinks"}),
        |a| {
            let s = &a["sinks"][0];
            s["shipped"].as_u64().unwrap_or(0) > 0 && s["backlog"].as_u64().unwrap_or(0) > 0
        },
    )
    .await;
    node.kill9().unwrap();

    node.restart().unwrap();
    node.wait_ready(WAIT).await.unwrap();
    let mut c = Client::connect_addr(node.admin().unwrap()).await.unwrap();
    for id in &ids {
        let done = finished(&mut c, id, WAIT).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    drained(&mut c).await;
    let stored = records(&mut c, "many/").await;
    assert_eq!(stored.len(), 4000);
    let rows = schema
        .texts("SELECT key, value::text FROM {s}.records ORDER BY key")
        .await;
    assert_eq!(
        rows.len(),
        stored.len(),
        "rows in PostgreSQL vs records stored"
    );
    for r in &rows {
        let key = r[0].clone().unwrap();
        let value: Value = serde_json::from_str(r[1].as_deref().unwrap()).unwrap();
        assert_eq!(stored.get(&key), Some(&value), "{key}");
    }
    node.shutdown(WAIT).await.unwrap();
    schema.drop_now().await;
}

/// Ensures that with bad credentials the node starts and runs jobs, `sinks` (and `warden
/// sinks`) shows the server's refusal in words, `warden export --to postgres` enqueues (here
/// nothing), and the log names the host but never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_shown_in_words_never_the_password() {
    const PASSWORD: &str = "wrong-pw-5f1e9c";
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://warden_test:{PASSWORD}@127.0.0.1:5432/warden_test");
    let extra = format!("\n[sinks.postgres]\nurl = {url:?}\nmax_backoff = \"300ms\"\n");
    let exe = Path::new(env!("CARGO_BIN_EXE_warden"));
    let mut node = NodeProcess::spawn_with(exe, dir.path(), &extra).unwrap();
    node.wait_ready(WAIT).await.unwrap();
    let mut c = Client::connect_addr(node.admin().unwrap()).await.unwrap();
    let id = submit(&mut c, "builtin.noop", json!({})).await;
    assert_eq!(finished(&mut c, &id, WAIT).await["status"], "succeeded");
    let a = poll(
        &mut c,
        "the sink's error",
        WAIT,
        json!({"cmd": "sinks"}),
        |a| {
            a["sinks"][0]["last_error"].is_object()
                && a["sinks"][0]["consecutive_failures"].as_u64() >= Some(2)
        },
    )
    .await;
    let s = &a["sinks"][0];
    assert_eq!(s["state"], "retrying", "{s}");
    let message = s["last_error"]["message"].as_str().unwrap();
    assert!(
        message.contains("127.0.0.1:5432/warden_test as warden_test"),
        "{message}"
    );
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );

    let out = std::process::Command::new(exe)
        .args(["sinks", "--addr", &node.admin().unwrap().to_string()])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("retrying") && shown.contains("password authentication failed"),
        "{shown}"
    );

    let out = std::process::Command::new(exe)
        .args([
            "export",
            "--to",
            "postgres",
            "--addr",
            &node.admin().unwrap().to_string(),
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("0 records enqueued for the sink"),
        "{said}"
    );

    node.shutdown(WAIT).await.unwrap();
    let log = std::fs::read_to_string(dir.path().join("node.log")).unwrap();
    assert!(
        log.contains("sink failed") && log.contains("127.0.0.1:5432/warden_test"),
        "{log}"
    );
    assert!(
        !log.contains(PASSWORD) && !shown.contains(PASSWORD) && !a.to_string().contains(PASSWORD)
    );
}

/// Ensures that an unreachable server (nothing listens on the port) leaves the node running,
/// with `sinks` naming the address and saying the connection failed, and `tree` showing the
/// sink's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_named_and_retried() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let node = TestNode::start_with(|a| {
        a.sink = Some(sink_args(
            &format!("postgres://u:pw@127.0.0.1:{port}/db"),
            "warden",
        ));
    })
    .await;
    let mut c = node.client().await;
    let a = poll(
        &mut c,
        "the sink's error",
        WAIT,
        json!({"cmd": "sinks"}),
        |a| a["sinks"][0]["last_error"].is_object(),
    )
    .await;
    let message = a["sinks"][0]["last_error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains(&format!("127.0.0.1:{port}/db as u")),
        "{message}"
    );
    assert!(message.contains("error connecting"), "{message}");
    let tree = req(&mut c, json!({"cmd": "tree"})).await;
    let sink = tree["tree"]["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "sink:postgres")
        .cloned();
    let sink = sink.unwrap_or_else(|| panic!("no sink:postgres in {tree}"));
    assert_eq!(sink["kind"], "sink");
    assert!(sink.to_string().contains("retrying"), "{sink}");
    node.stop().await.unwrap();
}

/// Ensures that `sinks` without a sink answers an empty list and `sink_backfill` says that no
/// sink is configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_sink_nothing_changes() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let a = req(&mut c, json!({"cmd": "sinks"})).await;
    assert_eq!(a["sinks"], json!([]), "{a}");
    let a = req(&mut c, json!({"cmd": "sink_backfill"})).await;
    assert_eq!(crate::support::code(&a), "not_found");
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[sinks.postgres]"),
        "{a}"
    );
    node.stop().await.unwrap();
}

/// Ensures that a record PostgreSQL refuses (here a CHECK constraint an operator added) is
/// parked and counted without blocking the records around it, which are shipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_is_parked_and_the_rest_ship() {
    let schema = Schema::fresh("refused").await;
    let scripts = tempfile::tempdir().unwrap();
    let task = record_task(scripts.path());
    // The same task, its script replaced: three records, the middle one refused.
    std::fs::write(
        scripts.path().join("gen.sh"),
        "for k in ok1 bad ok2; do printf '{\"record\":{\"key\":\"chk/%s\",\"value\":{\"k\":\"%s\"}}}\\n' $k $k; done\n",
    )
    .unwrap();
    let node = TestNode::start_with(|a| {
        gen_pipeline(a, task);
        a.sink = Some(sink_args(&pg::test_url(), &schema.name));
    })
    .await;
    let mut c = node.client().await;
    drained(&mut c).await;
    schema
        .client
        .batch_execute(&format!(
            "ALTER TABLE {}.records ADD CONSTRAINT no_bad CHECK (key <> 'chk/bad')",
            schema.name
        ))
        .await
        .unwrap();
    run_all(&mut c, &[("gen.record", json!({}))]).await;
    let s = drained(&mut c).await;
    assert_eq!(s["rejected"], 1, "{s}");
    let keys = schema
        .texts("SELECT key FROM {s}.records ORDER BY key")
        .await;
    assert_eq!(keys, [[Some("chk/ok1".into())], [Some("chk/ok2".into())]]);
    node.stop().await.unwrap();
    schema.drop_now().await;
}
