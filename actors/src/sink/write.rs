//! Writing one batch of rows: every table's upsert and the fact trims in ONE transaction, so a
//! batch is in PostgreSQL entirely or not at all (a `kill -9` of either side mid-batch leaves
//! nothing half-written; the outbox ships the batch again and the upserts make that a no-op).
//! Statements are prepared once per connection (deadpool's statement cache).

use std::collections::BTreeMap;

use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::rows::{Row, Rows};
use super::tables::{trim_facts_sql, upsert_sql, TableId};

/// Rows inserted or changed per table by one batch (rows that held the same data already are
/// not counted; fact rows removed by a trim count under `sec_facts`).
pub type Written = BTreeMap<TableId, u64>;

/// Writes `rows` into `schema` in one transaction.
pub async fn write(
    client: &mut deadpool_postgres::Client,
    schema: &str,
    rows: &Rows,
) -> Result<Written, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let mut written = Written::new();
    for (table, all) in &rows.tables {
        let sql = upsert_sql(schema, table.table());
        let n = execute_columns(&tx, &sql, &columns(all, table.table().columns.len())).await?;
        *written.entry(*table).or_default() += n;
    }
    if !rows.fact_trims.is_empty() {
        let trims: Vec<Row> = rows
            .fact_trims
            .iter()
            .map(|t| t.iter().cloned().map(Some).collect())
            .collect();
        let n = execute_columns(&tx, &trim_facts_sql(schema), &columns(&trims, 4)).await?;
        *written.entry(TableId::SecFacts).or_default() += n;
    }
    tx.commit().await?;
    Ok(written)
}

/// Rows turned into one array per column (what `unnest` takes).
fn columns(rows: &[Row], width: usize) -> Vec<Vec<Option<&str>>> {
    (0..width)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).and_then(|v| v.as_deref()))
                .collect()
        })
        .collect()
}

async fn execute_columns(
    tx: &Transaction<'_>,
    sql: &str,
    columns: &[Vec<Option<&str>>],
) -> Result<u64, tokio_postgres::Error> {
    let statement = tx.prepare_cached(sql).await?;
    let params: Vec<&(dyn ToSql + Sync)> =
        columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
    tx.execute(&statement, &params).await
}
