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
//! ([`Permits::breaker`]), so that every node's permits are refused until then; a node whose
//! probe succeeds closes it for all. After an open window each node's own breaker decides
//! whether to probe: up to one probe per node, not one for the cluster.

use std::time::Duration;

use super::store::Jobs;
use crate::args::RateWindow;
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
    /// A node's circuit breaker opened on the source, for this much longer.
    BreakerOpen(Duration),
}

/// The cluster's permits, for the limiters of this node.
#[derive(Clone)]
pub struct Permits {
    pub(super) jobs: Jobs,
}

impl std::fmt::Debug for Permits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permits")
            .field("store", &self.jobs.target.shown)
            .field("schema", &self.jobs.schema)
            .finish()
    }
}

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
        let sources = j.t("sources");
        tx.execute(
            &format!("INSERT INTO {sources} (name) VALUES ($1) ON CONFLICT DO NOTHING"),
            &[&source],
        )
        .await
        .map_err(j.pg())?;
        let row = tx
            .query_one(
                &format!(
                    "SELECT coalesce((extract(epoch FROM paused_until - clock_timestamp()) * 1000)::int8, 0),
                            coalesce((extract(epoch FROM breaker_open_until - clock_timestamp()) * 1000)::int8, 0)
                     FROM {sources} WHERE name = $1 FOR UPDATE"
                ),
                &[&source],
            )
            .await
            .map_err(j.pg())?;
        let (paused_ms, open_ms): (i64, i64) = (row.get(0), row.get(1));
        if paused_ms > 0 {
            return Ok(Permit::Paused(Duration::from_millis(paused_ms as u64)));
        }
        if open_ms > 0 {
            return Ok(Permit::BreakerOpen(Duration::from_millis(open_ms as u64)));
        }
        let mut free_in_ms = 0i64;
        for w in windows {
            let span_ms = (w.per + guard).as_millis() as i64;
            let offset = i64::from(w.limit.max(1)) - 1;
            let row = tx
                .query_opt(
                    &format!(
                        "SELECT (extract(epoch FROM at + $2::int8 * interval '1 millisecond' - clock_timestamp()) * 1000)::int8
                         FROM {} WHERE source = $1 AND at > clock_timestamp() - $2::int8 * interval '1 millisecond'
                         ORDER BY at DESC OFFSET $3 LIMIT 1",
                        j.t("grants")
                    ),
                    &[&source, &span_ms, &offset],
                )
                .await
                .map_err(j.pg())?;
            if let Some(r) = row {
                free_in_ms = free_in_ms.max(r.get::<_, i64>(0).max(1));
            }
        }
        if free_in_ms > 0 {
            return Ok(Permit::FreeIn(Duration::from_millis(free_in_ms as u64)));
        }
        let longest_ms = windows
            .iter()
            .map(|w| (w.per + guard).as_millis() as i64)
            .max()
            .unwrap_or(0);
        tx.execute(
            &format!(
                "WITH old AS (DELETE FROM {grants} WHERE source = $1
                     AND at < clock_timestamp() - $3::int8 * interval '1 millisecond')
                 INSERT INTO {grants} (source, at, node) VALUES ($1, clock_timestamp(), $2)",
                grants = j.t("grants")
            ),
            &[&source, &j.node, &longest_ms],
        )
        .await
        .map_err(j.pg())?;
        tx.commit().await.map_err(j.pg())?;
        Ok(Permit::Granted)
    }

    /// Pauses `source` on every node for `pause` (never shortening a pause in force).
    pub async fn pause(&self, source: &str, pause: Duration) -> Result<(), Failure> {
        let j = &self.jobs;
        let client = j.client().await?;
        let ms = pause.as_millis() as i64;
        client
            .execute(
                &format!(
                    "INSERT INTO {} AS s (name, paused_until)
                     VALUES ($1, clock_timestamp() + $2::int8 * interval '1 millisecond')
                     ON CONFLICT (name) DO UPDATE SET paused_until =
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
                     ON CONFLICT (name) DO UPDATE SET breaker_open_until =
                         greatest(s.breaker_open_until, EXCLUDED.breaker_open_until)"
                );
                client.execute(&sql, &[&source, &ms]).await
            }
            None => {
                let sql = format!("UPDATE {sources} SET breaker_open_until = NULL WHERE name = $1");
                client.execute(&sql, &[&source]).await
            }
        }
        .map_err(j.pg())?;
        Ok(())
    }
}
