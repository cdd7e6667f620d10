//! Embedded, versioned migrations of a schema of ours (the sink's, the cluster store's), applied
//! when the first connection is made.
//!
//! A small `schema_migrations` table of our own rather than `refinery`: the schema name
//! is configured, so every migration runs under `SET LOCAL search_path` to it (refinery keeps
//! one history table per connection's default schema and would need a connection per schema);
//! two nodes starting against one database must not both migrate, which one transaction-scoped
//! advisory lock settles; and a database migrated by a NEWER Warden must be refused rather than
//! written with an older idea of the tables. That is about forty lines, against a dependency
//! with its own driver glue. Each migration runs in the same transaction as its history row,
//! so a crash leaves it applied with its row or not at all.

use tokio_postgres::Client;

use super::{Failure, Target};

/// One schema's migrations.
pub struct Migrations {
    /// Whose they are (`sink`, `cluster`): names the lock and the log lines.
    pub owner: &'static str,
    /// In order: (version, name, SQL). Never edit a shipped one: add the next.
    pub steps: &'static [(i32, &'static str, &'static str)],
}

impl Migrations {
    /// The schema version this build writes.
    pub fn latest(&self) -> i32 {
        self.steps.last().map_or(0, |m| m.0)
    }
}

/// The advisory lock key of `owner`'s migrations into `schema`.
fn lock_key(owner: &str, schema: &str) -> i64 {
    super::advisory_key(&format!("warden.{owner}.migrations.{schema}"))
}

/// Creates `schema` when missing and applies the migrations it lacks; returns the version it
/// is at now. `schema` is a checked plain identifier (config).
pub async fn migrate(
    client: &mut Client,
    schema: &str,
    set: &Migrations,
    target: &Target,
) -> Result<i32, Failure> {
    let pg = |e: tokio_postgres::Error| target.failure(&e);
    let latest = set.latest();
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&lock_key(set.owner, schema)],
    )
    .await
    .map_err(pg)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
             version integer PRIMARY KEY, name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await
    .map_err(pg)?;
    let row = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations"),
            &[],
        )
        .await
        .map_err(pg)?;
    let current: i32 = row.get(0);
    if current > latest {
        return Err(Failure::SchemaTooNew(format!(
            "{}: schema {schema} is at version {current}, this Warden knows up to {}: upgrade \
             the node (nothing is written meanwhile)",
            target.shown, latest
        )));
    }
    for (version, name, sql) in set.steps.iter().filter(|m| m.0 > current) {
        tx.batch_execute(&format!("SET LOCAL search_path TO {schema}; {sql}"))
            .await
            .map_err(pg)?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [version, name];
        tx.execute(
            &format!("INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)"),
            &params,
        )
        .await
        .map_err(pg)?;
        tracing::info!(
            owner = set.owner,
            schema,
            version,
            name,
            "migration applied"
        );
    }
    tx.commit().await.map_err(pg)?;
    Ok(latest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures that every shipped set's versions increase one by one from 1, and lock keys
    /// differ per owner and per schema.
    #[test]
    fn versions_are_dense_and_locks_distinct() {
        for set in [&crate::sink::MIGRATIONS, &crate::cluster::MIGRATIONS] {
            for (i, (version, _, _)) in set.steps.iter().enumerate() {
                assert_eq!(*version as usize, i + 1, "{}", set.owner);
            }
        }
        assert_ne!(lock_key("sink", "warden"), lock_key("sink", "warden2"));
        assert_ne!(lock_key("sink", "warden"), lock_key("cluster", "warden"));
        assert_eq!(lock_key("sink", "warden"), lock_key("sink", "warden"));
    }
}
