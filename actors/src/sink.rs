//! The PostgreSQL sink: `sink:postgres`, one actor under the root (with `[sinks.postgres]`)
//! that ships the records the pipelines store into typed PostgreSQL tables.
//!
//! Records are stored in the journal first, as without a sink; the job succeeds on that. Each
//! changed record also gets an outbox entry in the same sled transaction
//! (`store/journal/outbox.rs`). This actor takes the oldest `batch` entries, turns their records
//! into rows (`rows.rs`), writes them in one PostgreSQL transaction of idempotent upserts
//! (`write.rs`, `tables.rs`), and only then removes the entries and advances the cursor. So:
//!
//! - PostgreSQL down, slow or restarting never touches the jobs: records wait in the outbox
//!   (`warden_sink_backlog`), the actor retries with exponential, jittered backoff (200 ms
//!   doubling to `max_backoff`), logging each failure with the server's words and showing it in
//!   `warden sinks` and `tree`; the backlog drains once the server is back.
//! - A `kill -9` of the node between the commit in PostgreSQL and the ack in sled ships the
//!   batch again: the upserts find the same data and change nothing, so nothing is duplicated;
//!   one of PostgreSQL mid-batch rolls the transaction back, and the batch is shipped again.
//! - A failure is never the actor's failure: it handles every error itself, so an outage spends
//!   no restart budget and cannot take the node down. A panic would be restarted by the root.
//! - Rows PostgreSQL refuses (a data error, which `rows.rs` is built to make impossible) are
//!   retried one record at a time; a record still refused is parked (meta key
//!   `sink/postgres/rejected/<key>`, logged, counted as `rejected`) so it cannot block the
//!   records behind it. `warden sinks backfill --prefix <key>` ships it again.
//!
//! The migrations (`migrations/`, run by `postgres::migrate`) run on the first connection of
//! each incarnation.

mod rows;
mod status;
mod tables;
mod write;

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr};
use serde_json::Value;
use tracing::{info, warn};

use crate::args::PostgresSinkArgs;
use crate::backoff::{exponential, random_unit};
use crate::metrics as m;
use crate::store::journal::{Journal, OutboxItem};
use crate::supervisor::{spawn_child, ChildSpec};

use crate::postgres as pg;
pub use crate::postgres::{parse as parse_url, Failure};

/// The sink's schema, in order. Never edit a shipped one: add the next.
pub static MIGRATIONS: crate::postgres::migrate::Migrations =
    crate::postgres::migrate::Migrations {
        owner: "sink",
        steps: &[(
            1,
            "typed tables and records",
            include_str!("sink/migrations/0001_tables.sql"),
        )],
    };

/// Why a node with `[sinks.postgres]` and `[store] kind = "postgres"` refuses to start (the
/// field it names is `sinks.postgres`). The
/// sink's guarantee rests on the outbox entry being written in the same transaction as the
/// record; in cluster mode records are written to PostgreSQL with their job's completion and no
/// journal outbox sees them, and shipping from the `records` table needs a cluster-wide cursor
/// that commit order cannot give from `updated_at` alone. Refusing is better than a sink that
/// silently ships nothing (docs/cluster.md).
pub const REFUSED_IN_CLUSTER: &str =
    "not available in cluster mode ([store] kind = \"postgres\"): \
     records live in the cluster's own `records` table there (read them with `records` or `export` \
     through any node); remove [sinks.postgres] or run the node without [store]";

pub use self::rows::{Row, Rows};
pub use self::tables::{insert_sql, upsert_sql, Table, TableId};
/// The driver, for the benchmark and the tests (the same version the sink uses).
pub use tokio_postgres;

use self::status::Status;

/// The first retry's delay; doubled per failure up to `max_backoff`.
const MIN_BACKOFF: Duration = Duration::from_millis(200);

/// What every incarnation and the admin handle share.
struct Ctx {
    args: PostgresSinkArgs,
    journal: Journal,
    pool: Pool,
    target: pg::Target,
    status: Status,
}

/// The sink's recipe under the root (name `sink:postgres`, kind `sink`), and the handle the
/// admin actor reads.
#[derive(Clone)]
pub struct SinkSpec {
    ctx: Arc<Ctx>,
}

impl SinkSpec {
    /// A sink for `args` over `journal`, whose outbox it turns on. Fails only on a URL that does
    /// not parse (the message never repeats the URL).
    pub fn new(args: PostgresSinkArgs, journal: Journal) -> Result<SinkSpec, String> {
        let (pool, target) = pg::pool(pg::PoolOptions {
            url: &args.url,
            timeout: args.timeout,
            application: "warden-sink",
            // The writer, and one for a backfill or a probe.
            size: 2,
        })
        .map_err(|e| format!("sinks.postgres.url: {e}"))?;
        journal.enable_outbox();
        let status = Status::new(target.shown.clone(), args.schema.clone());
        Ok(SinkSpec {
            ctx: Arc::new(Ctx {
                args,
                journal,
                pool,
                target,
                status,
            }),
        })
    }

    /// What `warden sinks` shows.
    pub fn view(&self) -> Value {
        self.ctx.status.view(&self.ctx.journal)
    }

    /// Enqueues every stored record under `prefix` for shipping; returns how many.
    pub async fn backfill(&self, prefix: String) -> Result<u64, String> {
        let journal = self.ctx.journal.clone();
        tokio::task::spawn_blocking(move || journal.outbox_backfill(&prefix))
            .await
            .map_err(|e| format!("the backfill stopped: {e}"))?
            .map_err(|e| e.to_string())
    }
}

impl ChildSpec for SinkSpec {
    fn name(&self) -> String {
        "sink:postgres".into()
    }
    fn kind(&self) -> &'static str {
        "sink"
    }
    fn spawn(
        &self,
        supervisor: ActorCell,
        _path: String,
    ) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
        spawn_child(Sink, self.ctx.clone(), supervisor)
    }
    fn detail(&self) -> Option<Value> {
        Some(self.view())
    }
}

/// The actor (stateless shell over [`Ctx`]).
struct Sink;

/// The only message: look at the outbox now.
#[derive(Debug)]
enum SinkMsg {
    Flush,
}

/// One incarnation's state.
struct Run {
    ctx: Arc<Ctx>,
    /// Whether this incarnation has checked the schema.
    migrated: bool,
}

/// What the actor does after a successful step.
enum Next {
    /// The batch was full: look again at once.
    More,
    /// The outbox is empty: look again after `flush_every`.
    Idle,
}

impl Actor for Sink {
    type Msg = SinkMsg;
    type State = Run;
    type Arguments = Arc<Ctx>;

    async fn pre_start(
        &self,
        me: ActorRef<SinkMsg>,
        ctx: Arc<Ctx>,
    ) -> Result<Run, ActorProcessingErr> {
        // Every family exists from the start, so dashboards show 0 rather than nothing.
        for table in TableId::ALL {
            metrics::counter!(m::SINK_ROWS, "table" => table.name()).increment(0);
        }
        for kind in ["unavailable", "rejected", "schema", "journal"] {
            metrics::counter!(m::SINK_ERRORS, "kind" => kind).increment(0);
        }
        metrics::gauge!(m::SINK_BACKLOG).set(ctx.journal.outbox_backlog() as f64);
        ctx.status.connecting();
        me.cast(SinkMsg::Flush)?;
        Ok(Run {
            ctx,
            migrated: false,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<SinkMsg>,
        _flush: SinkMsg,
        run: &mut Run,
    ) -> Result<(), ActorProcessingErr> {
        let ctx = run.ctx.clone();
        metrics::gauge!(m::SINK_BACKLOG).set(ctx.journal.outbox_backlog() as f64);
        match run.step().await {
            Ok(next) => {
                let failed_before = ctx.status.succeeded(matches!(next, Next::More));
                if failed_before > 0 {
                    info!(sink = "postgres", server = %ctx.target.shown, failures = failed_before, backlog = ctx.journal.outbox_backlog(), "sink recovered");
                }
                match next {
                    Next::More => me.cast(SinkMsg::Flush)?,
                    Next::Idle => drop(me.send_after(ctx.args.flush_every, || SinkMsg::Flush)),
                }
            }
            Err(failure) => {
                let delay = ctx.retry_delay(ctx.status.failures());
                let failures = ctx.status.failed(&failure, delay);
                metrics::counter!(m::SINK_ERRORS, "kind" => failure.kind()).increment(1);
                warn!(
                    sink = "postgres", server = %ctx.target.shown, kind = failure.kind(),
                    error = %failure.message(), failures, retry_in_ms = delay.as_millis() as u64,
                    backlog = ctx.journal.outbox_backlog(), "sink failed; retrying with backoff"
                );
                drop(me.send_after(delay, || SinkMsg::Flush));
            }
        }
        Ok(())
    }
}

impl Ctx {
    /// The delay before the next try after `failures` failures in a row.
    fn retry_delay(&self, failures: u32) -> Duration {
        exponential(
            MIN_BACKOFF,
            self.args.max_backoff,
            failures,
            0.2,
            random_unit(),
        )
    }

    /// Writes `rows` on `client`, bounded by twice the statement timeout: a connection that
    /// hangs beyond it is taken out of the pool and dropped, not reused mid-transaction.
    async fn write(
        &self,
        mut client: deadpool_postgres::Client,
        rows: &Rows,
    ) -> Result<write::Written, Failure> {
        let bound = self.args.timeout * 2;
        let result =
            tokio::time::timeout(bound, write::write(&mut client, &self.args.schema, rows)).await;
        match result {
            Ok(Ok(written)) => Ok(written),
            Ok(Err(e)) => Err(self.target.failure(&e)),
            Err(_) => {
                drop(deadpool_postgres::Object::take(client));
                Err(Failure::Unavailable(format!(
                    "{}: no answer to a batch within {bound:?}",
                    self.target.shown
                )))
            }
        }
    }

    /// CIK → ticker from SEC's ticker map as the `sec` pipeline cached it; empty when it has
    /// none (the column stays NULL).
    fn sec_tickers(&self) -> std::collections::HashMap<u64, String> {
        self.journal
            .meta_get(crate::sources::sec::TICKERS_META_KEY)
            .ok()
            .flatten()
            .and_then(|bytes| crate::sources::sec::TickerMap::decode(&bytes))
            .map(|map| map.tickers_by_cik())
            .unwrap_or_default()
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, Failure> {
        self.pool
            .get()
            .await
            .map_err(|e| self.target.pool_failure(e))
    }
}

impl Run {
    /// One try: connect (and migrate) if needed, then ship the oldest batch.
    async fn step(&mut self) -> Result<Next, Failure> {
        let ctx = self.ctx.clone();
        if !self.migrated {
            let mut client = ctx.client().await?;
            let version =
                pg::migrate::migrate(&mut client, &ctx.args.schema, &MIGRATIONS, &ctx.target)
                    .await?;
            ctx.status.connected(version);
            self.migrated = true;
            info!(sink = "postgres", server = %ctx.target.shown, schema = %ctx.args.schema, version, "sink connected");
        }
        let items = ctx.journal.outbox_peek(ctx.args.batch)?;
        if items.is_empty() {
            return Ok(Next::Idle);
        }
        let mut rows = Rows::default();
        for record in items.iter().filter_map(|i| i.record.as_ref()) {
            rows.add(record);
        }
        if rows.tables.contains_key(&TableId::SecFilings) {
            let tickers = ctx.sec_tickers();
            rows.fill_tickers(|cik| tickers.get(&cik).cloned());
        }
        let started = Instant::now();
        let written = match ctx.write(ctx.client().await?, &rows).await {
            Err(Failure::Rejected(why)) => self.one_by_one(&items, &why).await?,
            other => other?,
        };
        let seconds = started.elapsed().as_secs_f64();
        let seqs: Vec<u64> = items.iter().map(|i| i.seq).collect();
        ctx.journal.outbox_ack(&seqs)?;
        metrics::histogram!(m::SINK_FLUSH).record(seconds);
        for (table, n) in &written {
            metrics::counter!(m::SINK_ROWS, "table" => table.name()).increment(*n);
        }
        metrics::gauge!(m::SINK_BACKLOG).set(ctx.journal.outbox_backlog() as f64);
        ctx.status.flushed(items.len(), &written, seconds);
        Ok(if items.len() >= ctx.args.batch {
            Next::More
        } else {
            Next::Idle
        })
    }

    /// After PostgreSQL refused a batch's rows: each record alone, parking those it refuses
    /// again. Any other failure stops the round (the batch is shipped again later).
    async fn one_by_one(&self, items: &[OutboxItem], why: &str) -> Result<write::Written, Failure> {
        let ctx = &self.ctx;
        warn!(sink = "postgres", error = %why, records = items.len(), "PostgreSQL refused a batch; shipping its records one by one");
        let mut written = write::Written::new();
        for record in items.iter().filter_map(|i| i.record.as_ref()) {
            let mut rows = Rows::default();
            rows.add(record);
            match ctx.write(ctx.client().await?, &rows).await {
                Ok(w) => w
                    .into_iter()
                    .for_each(|(t, n)| *written.entry(t).or_default() += n),
                Err(Failure::Rejected(why)) => {
                    let parked = serde_json::json!({"error": why, "at": crate::job::now_ms()});
                    ctx.journal.meta_put(
                        &format!("sink/postgres/rejected/{}", record.key),
                        parked.to_string().as_bytes(),
                    )?;
                    ctx.status.rejected();
                    metrics::counter!(m::SINK_ERRORS, "kind" => "rejected").increment(1);
                    warn!(sink = "postgres", key = %record.key, error = %why, "record parked: PostgreSQL refused it");
                }
                Err(other) => return Err(other),
            }
        }
        Ok(written)
    }
}
