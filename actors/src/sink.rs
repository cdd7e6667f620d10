//! The PostgreSQL sink: `sink:postgres`, one actor under the root (with `[sinks.postgres]`)
//! that ships the records the pipelines store into typed PostgreSQL tables.
//!
//! On a single node records are stored in the journal first, as without a sink; the job
//! succeeds on that. Each changed record also gets an outbox entry in the same sled
//! transaction (`store/journal/outbox.rs`). This actor takes the oldest `batch` entries, turns
//! their records into rows (`rows.rs`), writes them in one PostgreSQL transaction of idempotent
//! upserts (`write.rs`, `tables.rs`), and only then removes the entries and advances the cursor.
//! So:
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
//!   `sink/postgres/rejected/<key>`, in cluster mode the cluster's `sink_rejected` table;
//!   logged, counted as `rejected`) so it cannot block the
//!   records behind it. `warden sinks backfill --prefix <key>` ships it again.
//!
//! In cluster mode (`[store] kind = "postgres"`) the outbox is the cluster's `sink_outbox` table
//! (`cluster/sink_outbox.rs`), written in the same statement as the records of a completion
//! (`outbox.rs` hides which outbox the actor talks to). Every node runs this actor, but only one
//! ships at a time: the one whose connection to the sink's database holds a session advisory
//! lock (`pg_try_advisory_lock`). It writes every batch through that same connection (the
//! `Lease`), and peeks the outbox only once it holds the lock, so the batches of two nodes
//! never interleave: a node that loses its connection loses the lock with it, and no write of
//! its can land after the next holder's. The others show `standby` and try the lock again every
//! `flush_every`; a dead node's connection closes, and with it its lock.
//!
//! The migrations (`migrations/`, run by `postgres::migrate`) run on the first connection of
//! each incarnation.

mod outbox;
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
use crate::store::journal::OutboxItem;
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

pub use self::outbox::Outbox;
pub use self::rows::{Row, Rows};
pub use self::tables::{insert_sql, upsert_sql, Table, TableId};
/// The driver, for the benchmark and the tests (the same version the sink uses).
pub use tokio_postgres;

use self::status::{Phase, Status};

/// The first retry's delay; doubled per failure up to `max_backoff`.
const MIN_BACKOFF: Duration = Duration::from_millis(200);

/// What every incarnation and the admin handle share.
struct Ctx {
    args: PostgresSinkArgs,
    outbox: Outbox,
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
    /// A sink for `args` shipping from `outbox`, which it turns on. Fails only on a URL that
    /// does not parse (the message never repeats the URL).
    pub fn new(args: PostgresSinkArgs, outbox: Outbox) -> Result<SinkSpec, String> {
        let (pool, target) = pg::pool(pg::PoolOptions {
            url: &args.url,
            timeout: args.timeout,
            application: "warden-sink",
            // The writer (in cluster mode the lease), and one for a probe or the lock.
            size: 2,
        })
        .map_err(|e| format!("sinks.postgres.url: {e}"))?;
        outbox.enable();
        let status = Status::new(target.shown.clone(), args.schema.clone());
        Ok(SinkSpec {
            ctx: Arc::new(Ctx {
                args,
                outbox,
                pool,
                target,
                status,
            }),
        })
    }

    /// What `warden sinks` shows.
    pub fn view(&self) -> Value {
        self.ctx.status.view(&self.ctx.outbox)
    }

    /// Enqueues every stored record under `prefix` for shipping; returns how many.
    pub async fn backfill(&self, prefix: String) -> Result<u64, String> {
        self.ctx.outbox.backfill(prefix).await
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
    /// Cluster mode: the connection holding the shipping lock, while this node ships.
    lease: Lease,
}

/// The connection a cluster's shipper holds the shipping lock on and writes every batch
/// through. It never goes back to the pool (a pooled connection keeping the lock would keep it
/// from this node's next incarnation too): releasing or dropping it closes it, and the server
/// releases the lock with the session.
#[derive(Default)]
struct Lease(Option<deadpool_postgres::Client>);

impl Lease {
    fn release(&mut self) {
        if let Some(client) = self.0.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release();
    }
}

/// What the actor does after a successful step.
enum Next {
    /// The batch was full: look again at once.
    More,
    /// The outbox is empty: look again after `flush_every`.
    Idle,
    /// Cluster mode: another node ships; try the lock again after `flush_every`.
    Standby,
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
        metrics::gauge!(m::SINK_BACKLOG).set(ctx.outbox.count().await as f64);
        ctx.status.connecting();
        me.cast(SinkMsg::Flush)?;
        Ok(Run {
            ctx,
            migrated: false,
            lease: Lease::default(),
        })
    }

    async fn handle(
        &self,
        me: ActorRef<SinkMsg>,
        _flush: SinkMsg,
        run: &mut Run,
    ) -> Result<(), ActorProcessingErr> {
        let ctx = run.ctx.clone();
        metrics::gauge!(m::SINK_BACKLOG).set(ctx.outbox.count().await as f64);
        match run.step().await {
            Ok(next) => {
                let failed_before = ctx.status.succeeded(match next {
                    Next::More => Phase::Shipping,
                    Next::Idle => Phase::Idle,
                    Next::Standby => Phase::Standby,
                });
                if failed_before > 0 {
                    info!(sink = "postgres", server = %ctx.target.shown, failures = failed_before, backlog = ctx.outbox.backlog(), "sink recovered");
                }
                match next {
                    Next::More => me.cast(SinkMsg::Flush)?,
                    Next::Idle | Next::Standby => {
                        drop(me.send_after(ctx.args.flush_every, || SinkMsg::Flush))
                    }
                }
            }
            Err(failure) => {
                let delay = ctx.retry_delay(ctx.status.failures());
                let failures = ctx.status.failed(&failure, delay);
                metrics::counter!(m::SINK_ERRORS, "kind" => failure.kind()).increment(1);
                warn!(
                    sink = "postgres", server = %ctx.target.shown, kind = failure.kind(),
                    error = %failure.message(), failures, retry_in_ms = delay.as_millis() as u64,
                    backlog = ctx.outbox.backlog(), "sink failed; retrying with backoff"
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
                Err(self.hung(bound))
            }
        }
    }

    /// [`Ctx::write`] through the lease: a failure other than refused rows, or no answer,
    /// releases it (and so the shipping lock), since the connection may be broken or still
    /// busy; the next step takes the lock again on a fresh one.
    async fn write_leased(
        &self,
        lease: &mut Lease,
        rows: &Rows,
    ) -> Result<write::Written, Failure> {
        let Some(client) = lease.0.as_mut() else {
            return Err(Failure::Unavailable(format!(
                "{}: the connection holding the shipping lock is gone",
                self.target.shown
            )));
        };
        let bound = self.args.timeout * 2;
        let result =
            tokio::time::timeout(bound, write::write(client, &self.args.schema, rows)).await;
        let (failure, healthy) = match result {
            Ok(Ok(written)) => return Ok(written),
            Ok(Err(e)) => {
                let failure = self.target.failure(&e);
                // Refused rows roll a transaction back on a healthy connection: it keeps the lock.
                let healthy = matches!(failure, Failure::Rejected(_));
                (failure, healthy)
            }
            Err(_) => (self.hung(bound), false),
        };
        if !healthy {
            lease.release();
        }
        Err(failure)
    }

    fn hung(&self, bound: Duration) -> Failure {
        Failure::Unavailable(format!(
            "{}: no answer to a batch within {bound:?}",
            self.target.shown
        ))
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, Failure> {
        self.pool
            .get()
            .await
            .map_err(|e| self.target.pool_failure(e))
    }
}

impl Run {
    /// One try: connect (and migrate) if needed, then, in cluster mode only while this node
    /// holds the shipping lock, ship the oldest batch.
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
        if let Some(key) = ctx.outbox.lock_key() {
            if !self.lead(key).await? {
                return Ok(Next::Standby);
            }
        }
        // Peeked only now: a value read under the lock is never older than one the previous
        // holder wrote.
        let items = ctx.outbox.peek(ctx.args.batch).await?;
        if items.is_empty() {
            return Ok(Next::Idle);
        }
        let mut rows = Rows::default();
        for record in items.iter().filter_map(|i| i.record.as_ref()) {
            rows.add(record);
        }
        if rows.tables.contains_key(&TableId::SecFilings) {
            let tickers = ctx.outbox.sec_tickers();
            rows.fill_tickers(|cik| tickers.get(&cik).cloned());
        }
        let started = Instant::now();
        let written = match self.write(&rows).await {
            Err(Failure::Rejected(why)) => self.one_by_one(&items, &why).await?,
            other => other?,
        };
        let seconds = started.elapsed().as_secs_f64();
        let seqs: Vec<u64> = items.iter().map(|i| i.seq).collect();
        ctx.outbox.ack(&seqs).await?;
        metrics::histogram!(m::SINK_FLUSH).record(seconds);
        for (table, n) in &written {
            metrics::counter!(m::SINK_ROWS, "table" => table.name()).increment(*n);
        }
        metrics::gauge!(m::SINK_BACKLOG).set(ctx.outbox.count().await as f64);
        ctx.status.flushed(items.len(), &written, seconds);
        Ok(if items.len() >= ctx.args.batch {
            Next::More
        } else {
            Next::Idle
        })
    }

    /// Cluster mode: whether this node ships now. It does while the connection it took the
    /// lock on is open; without one it tries to take the lock on a fresh connection, which
    /// fails while another node's session holds it.
    async fn lead(&mut self, key: i64) -> Result<bool, Failure> {
        if self.lease.0.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(true);
        }
        self.lease.release();
        let ctx = self.ctx.clone();
        let client = ctx.client().await?;
        let taken = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await;
        match taken {
            Ok(row) if row.get::<_, bool>(0) => {
                info!(sink = "postgres", server = %ctx.target.shown, "this node ships the cluster's records now");
                self.lease.0 = Some(client);
                Ok(true)
            }
            // Not taken: the connection holds no lock and goes back to the pool.
            Ok(_) => Ok(false),
            // Whether the lock was taken is unknown: the connection must not be reused.
            Err(e) => {
                drop(deadpool_postgres::Object::take(client));
                Err(ctx.target.failure(&e))
            }
        }
    }

    /// Writes `rows` through the lease in cluster mode, a pooled connection otherwise.
    async fn write(&mut self, rows: &Rows) -> Result<write::Written, Failure> {
        let ctx = self.ctx.clone();
        if ctx.outbox.lock_key().is_some() {
            ctx.write_leased(&mut self.lease, rows).await
        } else {
            ctx.write(ctx.client().await?, rows).await
        }
    }

    /// After PostgreSQL refused a batch's rows: each record alone, parking those it refuses
    /// again. Any other failure stops the round (the batch is shipped again later).
    async fn one_by_one(
        &mut self,
        items: &[OutboxItem],
        why: &str,
    ) -> Result<write::Written, Failure> {
        let ctx = self.ctx.clone();
        warn!(sink = "postgres", error = %why, records = items.len(), "PostgreSQL refused a batch; shipping its records one by one");
        let mut written = write::Written::new();
        for record in items.iter().filter_map(|i| i.record.as_ref()) {
            let mut rows = Rows::default();
            rows.add(record);
            match self.write(&rows).await {
                Ok(w) => w
                    .into_iter()
                    .for_each(|(t, n)| *written.entry(t).or_default() += n),
                Err(Failure::Rejected(why)) => {
                    ctx.outbox.park(&record.key, &why).await?;
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
