//! The per-source rate limits of cluster mode: every node's limiter asks here before it grants a
//! permit, so a source limited to `5/s, 20/m` sees no more than that from the whole cluster.
//!
//! A permit is one short transaction: lock the source's row (`FOR UPDATE`: nodes asking for the
//! same source queue on it), refuse while the source is paused or its breaker open, find for each window the grant
//! that would be one too many (`OFFSET limit - 1` on the newest grants inside the window), and
//! either insert a grant or say when the next one frees. The windows are the single node's
//! sliding windows, on the database's clock, with the same send guard added to each. A node
//! that crashes after its grant and before its request wastes that permit; nothing can make the
//! cluster exceed a window.
//!
//! The source's row also carries its circuit breaker's open window: each node keeps its own
//! breaker (it counts the failures it sees), and a node whose breaker opens records until when
//! ([`Permits::breaker`]), so that every node's permits are refused until then. Once the window
//! has passed, and until a probe closes it, the source is half-open for the whole cluster: the
//! first permit asked is [`Permit::Probe`], leased for [`PROBE_LEASE`] (`probe_until`), and
//! every other node is refused meanwhile, told to ask again after [`PROBE_PENDING_RETRY`] (the
//! lease only bounds a probe that never reports). A probe is void before its lease ends when
//! the node holding it has gone silent (for 15 s, when the leader rescues its jobs too) or
//! started again since the grant (`probe_node`, `probe_at`): the probe died with it, and the
//! next node to ask probes instead. The node holding it makes its own breaker take that request
//! as its probe, so the probe's outcome closes the window for every node or opens it again
//! (through [`Permits::breaker`], as any transition of that breaker).

use std::time::Duration;

use tracing::warn;

use super::store::Jobs;
use crate::args::RateWindow;
use crate::pipeline::breaker::PROBE_PENDING_RETRY;
use crate::postgres::Failure;

/// What the store answered for one permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Granted now: the request may leave.
    Granted,
    /// Every window is full; the next permit frees after this.
    FreeIn(Duration),
    /// The source is paused (a throttle signal) for this much longer.
    Paused(Duration),
    /// A node's circuit breaker opened on the source, for this much longer (or another node's
    /// probe is out: ask again after [`PROBE_PENDING_RETRY`]).
    BreakerOpen(Duration),
    /// Granted as the cluster's one probe of a source whose breaker window has passed.
    Probe,
}

/// How long the cluster's probe may be out before another node may probe instead: the
/// breaker's own patience with a probe.
pub const PROBE_LEASE: Duration = crate::pipeline::breaker::PROBE_TIMEOUT;

/// The cluster's permits, for the limiters of this node.
#[derive(Clone)]
pub struct Permits {
    pub(super) jobs: Jobs,
    /// How long a node may be silent before its probe (like its jobs) is taken as lost.
    pub(super) silent_after: Duration,
}

impl std::fmt::Debug for Permits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permits")
            .field("store", &self.jobs.target.shown)
            .field("schema", &self.jobs.schema)
            .finish()
    }
}

/// A source's row, as a permit reads it (locked until the permit's transaction ends).
struct SourceRow {
    /// How much longer a throttle pause holds (zero: none).
    paused: Duration,
    /// How much longer a node's open breaker holds (zero: none, or passed).
    open: Duration,
    /// A breaker window was recorded and no probe has closed it since.
    half_open: bool,
    /// How much longer the last probe granted may be out (zero: none, or lost with its node).
    probe_out: Duration,
    /// The node whose probe was lost: silent, or started again, while its lease ran.
    probe_lost_by: Option<String>,
}

type Tx<'a> = deadpool_postgres::Transaction<'a>;

impl Permits {
    /// Asks for one permit of `source` under `windows` (each widened by `guard`).
    pub async fn acquire(
        &self,
        source: &str,
        windows: &[RateWindow],
        guard: Duration,
    ) -> Result<Permit, Failure> {
        let j = &self.jobs;
        let mut client = j.client().await?;
        let tx = client.transaction().await.map_err(j.pg())?;
        let row = self.lock_source(&tx, source).await?;
        if !row.paused.is_zero() {
            return Ok(Permit::Paused(row.paused));
        }
        if !row.open.is_zero() {
            return Ok(Permit::BreakerOpen(row.open));
        }
        if row.half_open && !row.probe_out.is_zero() {
            // The lease only bounds a probe that never reports; one that does answers within
            // a request's time, so ask again soon rather than when the lease ends.
            return Ok(Permit::BreakerOpen(row.probe_out.min(PROBE_PENDING_RETRY)));
        }
        let free_in = self.free_in(&tx, source, windows, guard).await?;
        if !free_in.is_zero() {
            return Ok(Permit::FreeIn(free_in));
        }
        self.grant(&tx, source, windows, guard, row.half_open)
            .await?;
        tx.commit().await.map_err(j.pg())?;
        if !row.half_open {
            return Ok(Permit::Granted);
        }
        if let Some(node) = &row.probe_lost_by {
            warn!(source, lost_with = %node, "the cluster's probe was lost with its node: this node probes instead");
        }
        Ok(Permit::Probe)
    }

    /// Locks `source`'s row (creating it) and reads it.
    async fn lock_source(&self, tx: &Tx<'_>, source: &str) -> Result<SourceRow, Failure> {
        let j = &self.jobs;
        let sources = j.t("sources");
        tx.execute(
            &format!("INSERT INTO {sources} (name) VALUES ($1) ON CONFLICT DO NOTHING"),
            &[&source],
        )
        .await
        .map_err(j.pg())?;
        let left = |column: &str| {
            format!("coalesce((extract(epoch FROM {column} - clock_timestamp()) * 1000)::int8, 0)")
        };
        // A probe of a node that is silent, or started again since the grant, is lost.
        let lost = format!(
            "probe_node IS NOT NULL AND probe_until > clock_timestamp() AND NOT EXISTS (
                 SELECT 1 FROM {nodes} n WHERE n.id = s.probe_node AND n.started_at <= s.probe_at
                     AND n.seen_at > clock_timestamp() - $2::int8 * interval '1 millisecond')",
            nodes = j.t("nodes")
        );
        let sql = format!(
            "SELECT {}, {}, breaker_open_until IS NOT NULL, {}, CASE WHEN {lost} THEN probe_node END
             FROM {sources} s WHERE name = $1 FOR UPDATE",
            left("paused_until"),
            left("breaker_open_until"),
            left("probe_until"),
        );
        let silent_ms = self.silent_after.as_millis() as i64;
        let row = tx
            .query_one(&sql, &[&source, &silent_ms])
            .await
            .map_err(j.pg())?;
        let ms = |i: usize| Duration::from_millis(row.get::<_, i64>(i).max(0) as u64);
        let probe_lost_by: Option<String> = row.get(4);
        Ok(SourceRow {
            paused: ms(0),
            open: ms(1),
            half_open: row.get(2),
            probe_out: if probe_lost_by.is_some() {
                Duration::ZERO
            } else {
                ms(3)
            },
            probe_lost_by,
        })
    }

    /// When the next permit frees: zero when every window has room, else when the grant that
    /// fills the fullest window leaves it.
    async fn free_in(
        &self,
        tx: &Tx<'_>,
        source: &str,
        windows: &[RateWindow],
        guard: Duration,
    ) -> Result<Duration, Failure> {
        let j = &self.jobs;
        let sql = format!(
            "SELECT (extract(epoch FROM at + $2::int8 * interval '1 millisecond' - clock_timestamp()) * 1000)::int8
             FROM {} WHERE source = $1 AND at > clock_timestamp() - $2::int8 * interval '1 millisecond'
             ORDER BY at DESC OFFSET $3 LIMIT 1",
            j.t("grants")
        );
        let mut free_in_ms = 0i64;
        for w in windows {
            let span_ms = (w.per + guard).as_millis() as i64;
            let offset = i64::from(w.limit.max(1)) - 1;
            let row = tx
                .query_opt(&sql, &[&source, &span_ms, &offset])
                .await
                .map_err(j.pg())?;
            if let Some(r) = row {
                free_in_ms = free_in_ms.max(r.get::<_, i64>(0).max(1));
            }
        }
        Ok(Duration::from_millis(free_in_ms as u64))
    }

    /// Records a grant (dropping grants older than the longest window) and, for the cluster's
    /// probe, its lease.
    async fn grant(
        &self,
        tx: &Tx<'_>,
        source: &str,
        windows: &[RateWindow],
        guard: Duration,
        probe: bool,
    ) -> Result<(), Failure> {
        let j = &self.jobs;
        let longest_ms = windows
            .iter()
            .map(|w| (w.per + guard).as_millis() as i64)
            .max()
            .unwrap_or(0);
        let sql = format!(
            "WITH old AS (DELETE FROM {grants} WHERE source = $1
                 AND at < clock_timestamp() - $3::int8 * interval '1 millisecond')
             INSERT INTO {grants} (source, at, node) VALUES ($1, clock_timestamp(), $2)",
            grants = j.t("grants")
        );
        tx.execute(&sql, &[&source, &j.node, &longest_ms])
            .await
            .map_err(j.pg())?;
        if probe {
            let lease = PROBE_LEASE.as_millis() as i64;
            let sql = format!(
                "UPDATE {} SET probe_until = clock_timestamp() + $2::int8 * interval '1 millisecond',
                     probe_node = $3, probe_at = clock_timestamp()
                 WHERE name = $1",
                j.t("sources")
            );
            tx.execute(&sql, &[&source, &lease, &j.node])
                .await
                .map_err(j.pg())?;
        }
        Ok(())
    }

    /// Pauses `source` on every node for `pause` (never shortening a pause in force). A probe
    /// lease ends with it: the probe was answered (throttled), and the pause holds every node.
    pub async fn pause(&self, source: &str, pause: Duration) -> Result<(), Failure> {
        let j = &self.jobs;
        let client = j.client().await?;
        let ms = pause.as_millis() as i64;
        client
            .execute(
                &format!(
                    "INSERT INTO {} AS s (name, paused_until)
                     VALUES ($1, clock_timestamp() + $2::int8 * interval '1 millisecond')
                     ON CONFLICT (name) DO UPDATE SET probe_until = NULL, paused_until =
                         greatest(s.paused_until, EXCLUDED.paused_until)",
                    j.t("sources")
                ),
                &[&source, &ms],
            )
            .await
            .map_err(j.pg())?;
        Ok(())
    }

    /// Records `source`'s breaker as open for every node for `open_for` (never shortening an
    /// open window in force), or, with `None` (a probe succeeded), closes it for every node.
    pub async fn breaker(&self, source: &str, open_for: Option<Duration>) -> Result<(), Failure> {
        let j = &self.jobs;
        let client = j.client().await?;
        let sources = j.t("sources");
        match open_for {
            Some(open_for) => {
                let ms = open_for.as_millis() as i64;
                let sql = format!(
                    "INSERT INTO {sources} AS s (name, breaker_open_until)
                     VALUES ($1, clock_timestamp() + $2::int8 * interval '1 millisecond')
                     ON CONFLICT (name) DO UPDATE SET probe_until = NULL, breaker_open_until =
                         greatest(s.breaker_open_until, EXCLUDED.breaker_open_until)"
                );
                client.execute(&sql, &[&source, &ms]).await
            }
            None => {
                let sql = format!(
                    "UPDATE {sources} SET breaker_open_until = NULL, probe_until = NULL WHERE name = $1"
                );
                client.execute(&sql, &[&source]).await
            }
        }
        .map_err(j.pg())?;
        Ok(())
    }
}
