//! The PostgreSQL sink's outbox in cluster mode (`sink_outbox`, migration 9): the cluster's
//! counterpart of the journal's outbox (`store/journal/outbox.rs`), with the same guarantee.
//!
//! - A row per record a completion changed, written by `complete` (`store.rs`) in the same
//!   statement as the record (the CTE of [`outbox_cte`] over the keys the records' upsert
//!   returns), so a record is either shipped eventually or was never written. Only while the
//!   outbox is on ([`Jobs::enable_outbox`], when `[sinks.postgres]` is configured); every node
//!   must then have the sink, which [`sink_setting`] makes a setting the nodes agree on.
//! - [`Jobs::outbox_peek`] reads the oldest rows and the current value of their records in ONE
//!   statement, so a row it sees comes with its record's value as that row's own commit left
//!   it or newer. Which node ships, and why two never ship out of order, is the sink's affair
//!   (`sink.rs`: one session lock in the sink's database, held by the connection that writes).
//! - [`Jobs::outbox_ack`] deletes exactly the rows shipped: rows committed meanwhile, even with
//!   a lower `seq` (sequences are taken before commit), stay for the next round.

use crate::args::PostgresSinkArgs;
use crate::postgres::{pg_text, Failure};
use crate::store::journal::{OutboxItem, StoredRecord};

use super::records::prefix_pattern;
use super::store::Jobs;

/// The CTE appended to `complete`'s that enqueues every key the records' upsert
/// (`written_records`) changed, into `table`.
pub(super) fn outbox_cte(table: &str) -> String {
    format!(
        ",
             outboxed AS (
                 INSERT INTO {table} (key) SELECT key FROM written_records ORDER BY key)"
    )
}

/// The cluster setting of the sink (`settings.rs`): whether completions write outbox rows is a
/// property of the statement every node runs, so a node with the sink and one without cannot
/// run side by side (records completed by the second would never ship). The schema is part of
/// it: the nodes' shippers take turns, and must take them writing into the same tables.
pub fn sink_setting(sink: Option<&PostgresSinkArgs>) -> (String, String) {
    let value = match sink {
        Some(s) => format!("{{ schema = {:?} }}", s.schema),
        None => "none".to_string(),
    };
    ("sinks.postgres".to_string(), value)
}

/// The rows of a peek, in `seq` order, as outbox items: a key that appears again is read once
/// (its later rows carry `None`: the first ships the latest value already), as the journal's
/// outbox does.
fn items(rows: Vec<(i64, String, Option<StoredRecord>)>) -> Vec<OutboxItem> {
    let mut seen = std::collections::HashSet::new();
    rows.into_iter()
        .map(|(seq, key, record)| OutboxItem {
            seq: u64::try_from(seq).unwrap_or_default(),
            record: if seen.insert(key) { record } else { None },
        })
        .collect()
}

impl Jobs {
    /// From now on the records a completion changes also get an outbox row (the node calls
    /// this when the sink is configured, before anything runs).
    pub fn enable_outbox(&self) {
        self.outbox
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The oldest `limit` outbox rows, each with its record's current value (`None` when the
    /// key holds no record, or is repeated).
    pub async fn outbox_peek(&self, limit: usize) -> Result<Vec<OutboxItem>, Failure> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT o.seq, o.key, r.value::text, (extract(epoch FROM r.updated_at) * 1000)::int8
             FROM {outbox} o LEFT JOIN {records} r ON r.key = o.key
             ORDER BY o.seq LIMIT $1",
            outbox = self.t("sink_outbox"),
            records = self.t("records"),
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client.query(&sql, &[&limit]).await.map_err(self.pg())?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let (seq, key): (i64, String) = (r.get(0), r.get(1));
            let record = match r.get::<_, Option<String>>(2) {
                None => None,
                Some(text) => Some(StoredRecord {
                    value: serde_json::from_str(&text).map_err(|e| {
                        Failure::Rejected(format!(
                            "{}: record {key:?}: undecodable value: {e}",
                            self.target.shown
                        ))
                    })?,
                    key: key.clone(),
                    updated_at: r.get(3),
                }),
            };
            out.push((seq, key, record));
        }
        Ok(items(out))
    }

    /// Deletes the shipped rows `seqs`; returns how many were still there.
    pub async fn outbox_ack(&self, seqs: &[u64]) -> Result<u64, Failure> {
        let client = self.client().await?;
        let seqs: Vec<i64> = seqs.iter().filter_map(|s| i64::try_from(*s).ok()).collect();
        let sql = format!(
            "DELETE FROM {} WHERE seq = ANY($1::int8[])",
            self.t("sink_outbox")
        );
        client.execute(&sql, &[&seqs]).await.map_err(self.pg())
    }

    /// Outbox rows waiting to be shipped, for the whole cluster.
    pub async fn outbox_backlog(&self) -> Result<u64, Failure> {
        let client = self.client().await?;
        let sql = format!("SELECT count(*) FROM {}", self.t("sink_outbox"));
        let n: i64 = client.query_one(&sql, &[]).await.map_err(self.pg())?.get(0);
        Ok(n.max(0) as u64)
    }

    /// Enqueues every record whose key starts with `prefix` (a backfill), in one statement;
    /// returns how many.
    pub async fn outbox_backfill(&self, prefix: &str) -> Result<u64, Failure> {
        let client = self.client().await?;
        let sql = format!(
            "INSERT INTO {outbox} (key)
             SELECT key FROM {records} WHERE key >= $1 AND key LIKE $2 ORDER BY key",
            outbox = self.t("sink_outbox"),
            records = self.t("records"),
        );
        client
            .execute(&sql, &[&prefix, &prefix_pattern(prefix)])
            .await
            .map_err(self.pg())
    }

    /// Parks `key`, which the sink's database refused with `error`.
    pub async fn outbox_park(&self, key: &str, error: &str) -> Result<(), Failure> {
        let client = self.client().await?;
        let sql = format!(
            "INSERT INTO {} (key, error) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET error = excluded.error, parked_at = now()",
            self.t("sink_rejected")
        );
        client
            .execute(&sql, &[&pg_text(key), &pg_text(error)])
            .await
            .map_err(self.pg())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(key: &str, v: i64) -> Option<StoredRecord> {
        Some(StoredRecord {
            key: key.into(),
            value: json!(v),
            updated_at: 0,
        })
    }

    /// Ensures that a key repeated in a peek carries its record once, on its first row, and
    /// that a row whose key holds no record carries none.
    #[test]
    fn a_repeated_key_is_shipped_once_per_peek() {
        let got = items(vec![
            (1, "a".into(), record("a", 2)),
            (2, "gone".into(), None),
            (3, "a".into(), record("a", 2)),
            (4, "b".into(), record("b", 3)),
        ]);
        let shown: Vec<_> = got
            .iter()
            .map(|i| (i.seq, i.record.as_ref().map(|r| r.key.as_str())))
            .collect();
        assert_eq!(
            shown,
            [(1, Some("a")), (2, None), (3, None), (4, Some("b"))]
        );
    }

    /// Ensures that the setting names `sinks.postgres` and tells a sink's schema apart from
    /// no sink at all.
    #[test]
    fn the_setting_names_the_sink_and_its_schema() {
        assert_eq!(sink_setting(None), ("sinks.postgres".into(), "none".into()));
        let args = PostgresSinkArgs {
            url: "postgres://u:secret@h/db".into(),
            schema: "typed".into(),
            batch: 1,
            flush_every: std::time::Duration::from_secs(1),
            max_backoff: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_secs(1),
        };
        let (_, value) = sink_setting(Some(&args));
        assert_eq!(value, "{ schema = \"typed\" }");
        assert!(!value.contains("secret"));
    }
}
