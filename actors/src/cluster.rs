//! Cluster mode: several nodes share one PostgreSQL database (`[store] kind = "postgres"`),
//! used the way River, Oban and solid_queue use it. The jobs live in one table; each node's
//! dispatcher claims what its idle workers can take (`FOR UPDATE SKIP LOCKED`) and writes the
//! ends of its jobs fenced by the claim, so a job the leader rescued from a node it presumed
//! dead is never completed twice.
//!
//! - `store.rs`: the jobs table (insert with dedup, claim, fenced completions, reads).
//! - `records.rs`: the records tasks store, written with their attempt's completion, and read.
//! - `sink_outbox.rs`: the PostgreSQL sink's outbox, written with those records.
//! - `fanout.rs`: batch jobs that fan out: the children written with the parent's fan-out, the
//!   parent finished by the leader once they have all ended.
//! - `workflows.rs`: chains and groups: held steps the leader releases or cancels.
//! - `operator.rs`: cancel, retry, pause and the counts of `stats`.
//! - `liveness.rs`: heartbeats, the leader lease, the rescue of silent nodes' jobs, compaction.
//! - `settings.rs`: the settings every node must agree on (rate limits, retry policies).
//! - `permits.rs`: the per-source rate limits and throttle pauses every node shares.
//! - `background.rs`: the loops that drive those, and LISTEN for wake-ups and cancels.
//! - `dispatcher.rs`: the dispatcher actor of cluster mode. It takes the same messages as the
//!   single node's, so workers, the admin port and the supervision tree do not know which mode
//!   they run in.
//!
//! The sled journal stays: it holds what is this node's own (schedule state); the jobs and the
//! records tasks store are in PostgreSQL. See docs/cluster.md.

mod background;
mod dispatcher;
mod fanout;
mod liveness;
mod operator;
mod permits;
mod records;
mod settings;
mod sink_outbox;
mod store;
mod workflows;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::postgres::{self, migrate::Migrations, Failure, Target};

pub(crate) use self::background::Session;

pub use self::dispatcher::{ClusterDispatcher, ClusterDispatcherArgs, Event};
pub use self::liveness::{NodeView, Rescued};
pub use self::operator::Counts;
pub use self::permits::{Permit, Permits};
pub use self::settings::of_pipelines as settings_of;
pub use self::sink_outbox::sink_setting;
pub use self::store::{like_pattern, like_patterns, Claimed, Completion, Jobs, NewRow, Outcome};

/// The cluster store's schema, in order. Never edit a shipped one: add the next.
pub static MIGRATIONS: Migrations = Migrations {
    owner: "cluster",
    steps: &[
        (
            1,
            "jobs, nodes, leases, schedule ticks",
            include_str!("cluster/migrations/0001_cluster.sql"),
        ),
        (
            2,
            "per-source rate limits",
            include_str!("cluster/migrations/0002_limits.sql"),
        ),
        (
            3,
            "settings the nodes agree on",
            include_str!("cluster/migrations/0003_settings.sql"),
        ),
        (
            4,
            "circuit breakers every node obeys",
            include_str!("cluster/migrations/0004_breaker.sql"),
        ),
        (
            5,
            "counts the leader publishes",
            include_str!("cluster/migrations/0005_counts.sql"),
        ),
        (
            6,
            "the records tasks store",
            include_str!("cluster/migrations/0006_records.sql"),
        ),
        (
            7,
            "children of batch jobs",
            include_str!("cluster/migrations/0007_children.sql"),
        ),
        (
            8,
            "workflows",
            include_str!("cluster/migrations/0008_workflows.sql"),
        ),
        (
            9,
            "the PostgreSQL sink's outbox",
            include_str!("cluster/migrations/0009_sink_outbox.sql"),
        ),
        (
            10,
            "one probe for the cluster",
            include_str!("cluster/migrations/0010_probe.sql"),
        ),
        (
            11,
            "the node that holds the cluster's probe",
            include_str!("cluster/migrations/0011_probe_node.sql"),
        ),
    ],
};

/// The intervals of cluster mode (the defaults are the documented ones; tests shorten none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// How often a node upserts its heartbeat.
    pub heartbeat: Duration,
    /// A node silent for longer is presumed dead: the leader rescues its jobs.
    pub silent_after: Duration,
    /// How long a lease lasts without renewal.
    pub lease_ttl: Duration,
    /// How often the leader renews its lease (and others try to take it).
    pub lease_renew: Duration,
    /// How often the leader looks for silent nodes' jobs.
    pub rescue_every: Duration,
    /// How often a node claims without a wake-up (the fallback when a NOTIFY is missed).
    pub poll: Duration,
    /// At most one NOTIFY per pipeline per this.
    pub notify_every: Duration,
    /// A node that could not beat for this long stops claiming.
    pub stop_claiming_after: Duration,
    /// How often the leader compacts finished jobs past their retention.
    pub compact_every: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat: Duration::from_secs(2),
            silent_after: Duration::from_secs(15),
            lease_ttl: Duration::from_secs(15),
            lease_renew: Duration::from_secs(5),
            rescue_every: Duration::from_secs(1),
            poll: Duration::from_secs(1),
            notify_every: Duration::from_millis(100),
            stop_claiming_after: Duration::from_secs(10),
            compact_every: Duration::from_secs(3600),
        }
    }
}

/// `[store]` with `kind = "postgres"`, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterArgs {
    /// The database URL (read from the environment variable the config names).
    pub url: String,
    /// That variable's name, for messages.
    pub url_env: String,
    /// The schema of the cluster's tables (a plain identifier).
    pub schema: String,
    /// This node's identity in the cluster: unique among the nodes.
    pub node_id: String,
    /// Connect and statement timeout.
    pub timeout: Duration,
    /// Connections this node keeps.
    pub pool_size: usize,
    /// The intervals.
    pub timing: Timing,
}

/// A node's handle on the cluster store.
#[derive(Clone)]
pub struct Cluster {
    /// The jobs table and everything beside it.
    pub jobs: Jobs,
    /// How this node reaches the server.
    pub config: tokio_postgres::Config,
    /// The configuration it was made from.
    pub args: ClusterArgs,
    /// The session `open` took this node's id lock on, until the listener takes it over (so the
    /// lock is held without a gap from the check at start).
    session: Arc<Mutex<Option<Session>>>,
}

impl Cluster {
    /// A handle for `args`: nothing is connected yet. Fails on a URL that does not parse (the
    /// message never repeats the URL).
    pub fn new(args: ClusterArgs) -> Result<Cluster, String> {
        let (pool, target) = postgres::pool(postgres::PoolOptions {
            url: &args.url,
            timeout: args.timeout,
            application: "warden-node",
            size: args.pool_size,
        })
        .map_err(|e| format!("store.url_env: {}: {e}", args.url_env))?;
        let (mut config, _) = postgres::parse(&args.url)
            .map_err(|e| format!("store.url_env: {}: {e}", args.url_env))?;
        config
            .connect_timeout(args.timeout)
            .application_name("warden-node-listen");
        Ok(Cluster {
            jobs: Jobs {
                pool,
                target,
                schema: args.schema.clone(),
                node: args.node_id.clone(),
                outbox: Arc::default(),
            },
            config,
            args,
            session: Arc::default(),
        })
    }

    /// The rate-limit permits of this cluster.
    pub fn permits(&self) -> Permits {
        Permits {
            jobs: self.jobs.clone(),
            silent_after: self.args.timing.silent_after,
        }
    }

    /// The server as people are shown it.
    pub fn target(&self) -> &Target {
        &self.jobs.target
    }

    /// Connects, applies the migrations this schema lacks, checks that no live process
    /// already runs as this `node_id` (each node holds a session lock on its id while it
    /// listens) and that `settings` agree with the cluster's (`settings.rs`). The node refuses
    /// to start on any of these failing.
    pub async fn open(&self, settings: &[(String, String)]) -> Result<i32, Failure> {
        let mut client = self.jobs.client().await?;
        let version = postgres::migrate::migrate(
            &mut client,
            &self.args.schema,
            &MIGRATIONS,
            &self.jobs.target,
        )
        .await?;
        let session = Session::connect(&self.config)
            .await
            .map_err(|e| Failure::Unavailable(format!("{}: {e}", self.jobs.target.shown)))?;
        let held = session
            .lock(self.node_lock_key())
            .await
            .map_err(|e| self.jobs.target.failure(&e))?;
        if !held {
            return Err(Failure::Rejected(format!(
                "store.node_id: {:?} is in use by a running node of schema {} on {}; give each node its own node_id",
                self.args.node_id, self.args.schema, self.jobs.target.shown
            )));
        }
        self.jobs
            .agree(settings, self.args.timing.silent_after)
            .await?;
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(session);
        Ok(version)
    }

    /// The session `open` locked this node's id on, once (the listener's first).
    pub(crate) fn take_session(&self) -> Option<Session> {
        self.session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The session lock a live node holds on its id.
    pub fn node_lock_key(&self) -> i64 {
        postgres::advisory_key(&format!(
            "warden.node.{}.{}",
            self.args.schema, self.args.node_id
        ))
    }
}
