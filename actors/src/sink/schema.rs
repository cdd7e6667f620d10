//! Embedded, versioned migrations of the sink's schema, applied when the sink connects.
//!
//! A small `schema_migrations` table of our own rather than `refinery`: the sink's schema name
//! is configured, so every migration runs under `SET LOCAL search_path` to it (refinery keeps
//! one history table per connection's default schema and would need a connection per schema);
//! two nodes starting against one database must not both migrate, which one transaction-scoped
//! advisory lock settles; and a database migrated by a NEWER Warden must be refused rather than
//! written with an older idea of the tables. That is about forty lines, against a dependency
//! with its own driver glue. Each migration runs in the same transaction as its history row,
//! so a crash leaves it applied with its row or not at all.

use tokio_postgres::Client;

use super::pg::{Failure, Target};

/// The migrations, in order: (version, name, SQL). Never edit a shipped one: add the next.
const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "typed tables and records",
    include_str!("migrations/0001_tables.sql"),
)];

/// The schema version this build writes.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// The advisory lock key of migrations into `schema`: stable across processes (FNV-1a).
fn lock_key(schema: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "warden.sink.migrations.".bytes().chain(schema.bytes()) {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// Creates `schema` when missing and applies the migrations it lacks; returns the version it
/// is at now. `schema` is a checked plain identifier (config).
pub async fn migrate(client: &mut Client, schema: &str, target: &Target) -> Result<i32, Failure> {
    let pg = |e: tokio_postgres::Error| target.failure(&e);
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key(schema)])
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
    if current > latest() {
        return Err(Failure::SchemaTooNew(format!(
            "{}: schema {schema} is at version {current}, this Warden knows up to {}: upgrade \
             the node (nothing is written meanwhile)",
            target.shown,
            latest()
        )));
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
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
            sink = "postgres",
            schema,
            version,
            name,
            "migration applied"
        );
    }
    tx.commit().await.map_err(pg)?;
    Ok(latest())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures that versions increase one by one from 1, and lock keys differ per schema.
    #[test]
    fn versions_are_dense_and_locks_distinct() {
        for (i, (version, _, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version as usize, i + 1);
        }
        assert_ne!(lock_key("warden"), lock_key("warden2"));
        assert_eq!(lock_key("warden"), lock_key("warden"));
    }
}
