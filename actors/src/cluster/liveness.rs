//! Which nodes are alive, and who leads: the heartbeat each node upserts, the leader's lease,
//! and what the leader does with it (rescue the jobs of silent nodes, compact finished jobs).
//!
//! A node's heartbeat is a row in `nodes` whose `seen_at` is the database's clock, so no two
//! nodes' clocks are ever compared. The lease is one row in `leases`, taken when it expired and
//! renewed by its holder; a leader that dies is replaced once its lease runs out.

use std::time::Duration;

use uuid::Uuid;

use super::store::Jobs;
use crate::job::JobId;
use crate::postgres::Failure;

/// One node as `warden nodes` shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct NodeView {
    /// Its `node_id`.
    pub id: String,
    /// Its admin address.
    pub admin: String,
    /// Milliseconds since its last heartbeat (database clock).
    pub heartbeat_age_ms: i64,
    /// Whether it holds the leader lease now.
    pub leader: bool,
    /// Jobs it runs, as of its last heartbeat.
    pub running: i64,
    /// When this incarnation started (RFC 3339).
    pub started_at: String,
}

/// What a rescue did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rescued {
    /// Jobs sent back to their queue.
    pub requeued: u64,
    /// Jobs whose retries were spent: dead-lettered.
    pub dead: u64,
}

impl Jobs {
    /// Upserts this node's heartbeat row.
    pub async fn heartbeat(
        &self,
        incarnation: Uuid,
        admin: &str,
        running: usize,
    ) -> Result<(), Failure> {
        let client = self.client().await?;
        let sql = format!(
            "INSERT INTO {} AS n (id, incarnation, admin, started_at, seen_at, running)
             VALUES ($1, $2, $3, now(), now(), $4)
             ON CONFLICT (id) DO UPDATE SET
                 incarnation = EXCLUDED.incarnation, admin = EXCLUDED.admin, seen_at = now(),
                 running = EXCLUDED.running,
                 started_at = CASE WHEN n.incarnation = EXCLUDED.incarnation
                                   THEN n.started_at ELSE now() END",
            self.t("nodes")
        );
        let running = i32::try_from(running).unwrap_or(i32::MAX);
        client
            .execute(&sql, &[&self.node, &incarnation, &admin, &running])
            .await
            .map_err(self.pg())?;
        Ok(())
    }

    /// Every node that ever beat, newest first, with the leader marked.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, Failure> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT n.id, n.admin, (extract(epoch FROM now() - n.seen_at) * 1000)::int8, n.running,
                    coalesce(l.holder = n.id AND l.expires_at > now(), false),
                    (extract(epoch FROM n.started_at) * 1000)::int8
             FROM {nodes} n LEFT JOIN {leases} l ON l.name = 'leader'
             ORDER BY n.id",
            nodes = self.t("nodes"),
            leases = self.t("leases"),
        );
        let rows = client.query(&sql, &[]).await.map_err(self.pg())?;
        Ok(rows
            .iter()
            .map(|r| NodeView {
                id: r.get(0),
                admin: r.get(1),
                heartbeat_age_ms: r.get(2),
                running: i64::from(r.get::<_, i32>(3)),
                leader: r.get(4),
                started_at: crate::job::rfc3339_ms(r.get(5)),
            })
            .collect())
    }

    /// Takes the leader lease when it is free or expired, or renews it when this node holds
    /// it; true when this node leads for `ttl` from now.
    pub async fn lead(&self, ttl: Duration) -> Result<bool, Failure> {
        let client = self.client().await?;
        let sql = format!(
            "INSERT INTO {} AS l (name, holder, expires_at)
             VALUES ('leader', $1, now() + $2::int8 * interval '1 millisecond')
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
             WHERE l.holder = EXCLUDED.holder OR l.expires_at < now()
             RETURNING holder",
            self.t("leases")
        );
        let ttl_ms = ttl.as_millis() as i64;
        let row = client
            .query_opt(&sql, &[&self.node, &ttl_ms])
            .await
            .map_err(self.pg())?;
        Ok(row.is_some())
    }

    /// Jobs left running by nodes silent for more than `silent`, or by this node's previous
    /// incarnation (`own`): back to their queue (the attempt counts), or dead-lettered when
    /// their retries are spent.
    pub async fn rescue(&self, silent: Duration, own: bool) -> Result<Rescued, Failure> {
        let client = self.client().await?;
        let whose = if own {
            // $1 is unused here, but typed all the same.
            "j.claimed_by = $2 AND $1::int8 IS NOT NULL".to_string()
        } else {
            format!(
                // A running job no node claims is a parent waiting for its children (`fanout.rs`).
                "j.claimed_by IS NOT NULL AND j.claimed_by <> $2 AND NOT EXISTS (SELECT 1 FROM {} n
                     WHERE n.id = j.claimed_by AND n.seen_at > now() - $1::int8 * interval '1 millisecond')",
                self.t("nodes")
            )
        };
        let spent = "j.attempt > j.max_retries";
        let sql = format!(
            "UPDATE {jobs} j SET
                 state = CASE WHEN {spent} THEN 'failed' ELSE 'pending' END,
                 completed_at = CASE WHEN {spent} THEN now() END,
                 run_at = now(),
                 error = 'node ' || j.claimed_by || ' stopped while running it',
                 history = j.history || jsonb_build_array(jsonb_build_object(
                     'at', (extract(epoch FROM clock_timestamp()) * 1000)::int8,
                     'kind', CASE WHEN {spent} THEN 'dead_lettered' ELSE 'requeued' END,
                     'attempt', j.attempt,
                     'detail', 'node ' || j.claimed_by || ' stopped while running it (rescued by ' || $2 || ')'))
             WHERE j.state = 'running' AND {whose}
             RETURNING j.state",
            jobs = self.t("jobs"),
        );
        let silent_ms = silent.as_millis() as i64;
        let rows = client
            .query(&sql, &[&silent_ms, &self.node])
            .await
            .map_err(self.pg())?;
        let dead = rows
            .iter()
            .filter(|r| r.get::<_, &str>(0) == "failed")
            .count() as u64;
        Ok(Rescued {
            requeued: rows.len() as u64 - dead,
            dead,
        })
    }

    /// Deletes up to `batch` finished jobs (and schedule ticks and closed workflows) older than
    /// `retention`; returns how many jobs went.
    pub async fn compact(&self, retention: Duration, batch: i64) -> Result<u64, Failure> {
        let client = self.client().await?;
        let sql = format!(
            "WITH old AS (SELECT id FROM {jobs}
                 WHERE completed_at < now() - $1::int8 * interval '1 millisecond'
                   AND state IN ('succeeded', 'failed', 'cancelled')
                 LIMIT $2)
             DELETE FROM {jobs} j USING old WHERE j.id = old.id",
            jobs = self.t("jobs")
        );
        let ms = retention.as_millis() as i64;
        let n = client
            .execute(&sql, &[&ms, &batch])
            .await
            .map_err(self.pg())?;
        let ticks = format!(
            "DELETE FROM {} WHERE tick < now() - $1::int8 * interval '1 millisecond'",
            self.t("schedule_ticks")
        );
        client.execute(&ticks, &[&ms]).await.map_err(self.pg())?;
        let workflows = format!(
            "DELETE FROM {} WHERE finished_at < now() - $1::int8 * interval '1 millisecond'",
            self.t("workflows")
        );
        client
            .execute(&workflows, &[&ms])
            .await
            .map_err(self.pg())?;
        Ok(n)
    }

    /// Of `ids` (jobs this node runs), those cancelled meanwhile.
    pub async fn cancelled_among(&self, ids: &[JobId]) -> Result<Vec<JobId>, Failure> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let sql = format!(
            "SELECT id FROM {} WHERE id = ANY($1) AND state = 'cancelled'",
            self.t("jobs")
        );
        let ids: Vec<Uuid> = ids.iter().map(|i| i.0).collect();
        let rows = client.query(&sql, &[&ids]).await.map_err(self.pg())?;
        Ok(rows.iter().map(|r| JobId(r.get(0))).collect())
    }
}
