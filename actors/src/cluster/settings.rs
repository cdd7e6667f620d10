//! The settings the nodes of a cluster must agree on: each pipeline's rate limit (the windows
//! are enforced for the cluster, so two nodes with different windows would each believe the
//! other wrong) and retry policy (a job retried by whichever node ran its last attempt must not
//! change its policy with the node).
//!
//! The rule, chosen so that a mistake cannot go unnoticed and a change needs no SQL: while any
//! other node of the cluster is live, a node whose value differs from the recorded one refuses to
//! start, naming the key, both values and the node that recorded it; when no other node is live
//! (the whole cluster restarted with a new config), the starting node's values replace the
//! recorded ones, each change logged.

use tracing::warn;

use super::store::Jobs;
use crate::args::PipelineArgs;
use crate::postgres::Failure;

/// The settings of `pipelines` as (config key, value) pairs, values in the config's words.
pub fn of_pipelines(pipelines: &[PipelineArgs]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in pipelines {
        let r = &p.retry;
        out.push((
            format!("pipelines.{}.retry", p.name),
            format!(
                "{{ max_retries = {}, base_delay = \"{}\", max_delay = \"{}\" }}",
                r.max_retries,
                humantime::format_duration(r.base_delay),
                humantime::format_duration(r.max_delay)
            ),
        ));
        if let Some(up) = &p.upstream {
            let windows: Vec<String> = up
                .rate_limit
                .iter()
                .map(crate::pipeline::limiter::format_window)
                .collect();
            out.push((
                format!("pipelines.{}.rate_limit", p.name),
                format!("\"{}\"", windows.join(", ")),
            ));
        }
    }
    out
}

impl Jobs {
    /// Checks (or, with no other node live, records) `settings`; see the module doc.
    pub async fn agree(
        &self,
        settings: &[(String, String)],
        silent: std::time::Duration,
    ) -> Result<(), Failure> {
        let client = self.client().await?;
        let silent_ms = silent.as_millis() as i64;
        let others: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE id <> $1 \
                     AND seen_at > now() - $2::int8 * interval '1 millisecond'",
                    self.t("nodes")
                ),
                &[&self.node, &silent_ms],
            )
            .await
            .map_err(self.pg())?
            .get(0);
        let table = self.t("settings");
        for (key, value) in settings {
            let row = client
                .query_opt(
                    &format!("SELECT value, by_node FROM {table} WHERE key = $1"),
                    &[key],
                )
                .await
                .map_err(self.pg())?;
            match row.map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))) {
                Some((recorded, _)) if &recorded == value => continue,
                Some((recorded, by)) if others > 0 => {
                    return Err(Failure::Rejected(format!(
                        "{key}: this node has {value}, the cluster (schema {}) has {recorded}, \
                         recorded by node {by}, and {others} other node(s) are live; give every \
                         node the same value (a value changes when the whole cluster restarts with it)",
                        self.schema
                    )));
                }
                Some((recorded, by)) => {
                    warn!(key, was = %recorded, by_node = %by, now = %value,
                        "cluster setting changed: no other node is live, this node's value is recorded");
                }
                None => {}
            }
            client
                .execute(
                    &format!(
                        "INSERT INTO {table} (key, value, by_node) VALUES ($1, $2, $3)
                         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value,
                             by_node = EXCLUDED.by_node, recorded_at = now()"
                    ),
                    &[key, value, &self.node],
                )
                .await
                .map_err(self.pg())?;
        }
        Ok(())
    }
}
