//! `[store]`: where the jobs live. Without the section (or with `kind = "sled"`) they are in the
//! node's own journal, as always; `kind = "postgres"` is cluster mode (docs/cluster.md): the
//! jobs are in PostgreSQL and every node with the same `url` and `schema` shares them.
//!
//! The URL comes from `url`, or from the environment variable `url_env` names (which wins when
//! it is set and non-empty), as for `[sinks.postgres]`; no message repeats it.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use warden_actors::cluster::{ClusterArgs, Timing};

use super::{sinks, Problem};

/// The longest `node_id` (it is shown in `nodes` and written into every claimed job).
const MAX_NODE_ID_LEN: usize = 63;
/// The most connections a node keeps; the dispatcher, the heartbeat, the leader and the admin
/// port's reads share them.
const MAX_POOL_SIZE: usize = 64;

/// Where the jobs live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The node's own sled journal (the default).
    #[default]
    Sled,
    /// A PostgreSQL database shared by the nodes of a cluster.
    Postgres,
}

/// `[store]`.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// `sled` (default) or `postgres`.
    pub kind: StoreKind,
    /// The database URL.
    pub url: Option<String>,
    /// The environment variable holding the URL; wins over `url` when set.
    pub url_env: Option<String>,
    /// The schema of the cluster's tables; default `warden`.
    pub schema: Option<String>,
    /// This node's id in the cluster; default `<hostname>:<admin port>`.
    pub node_id: Option<String>,
    /// Connecting and each statement; default 10 s.
    #[serde(deserialize_with = "super::opt_duration")]
    pub timeout: Option<Duration>,
    /// Connections this node keeps; default 8.
    pub pool_size: Option<usize>,
}

/// Never shows the URL: it may hold the password.
impl std::fmt::Debug for StoreSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSection")
            .field("kind", &self.kind)
            .field("url", &self.url.as_ref().map(|_| "***"))
            .field("url_env", &self.url_env)
            .field("schema", &self.schema)
            .field("node_id", &self.node_id)
            .field("timeout", &self.timeout)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl StoreSection {
    /// Whether this is cluster mode.
    pub fn is_cluster(&self) -> bool {
        self.kind == StoreKind::Postgres
    }
}

/// Checks the rules the schema cannot express.
pub(super) fn validate(store: &StoreSection) -> Result<(), Problem> {
    if !store.is_cluster() {
        let set = [
            ("url", store.url.is_some()),
            ("url_env", store.url_env.is_some()),
            ("schema", store.schema.is_some()),
            ("node_id", store.node_id.is_some()),
            ("timeout", store.timeout.is_some()),
            ("pool_size", store.pool_size.is_some()),
        ];
        if let Some((key, _)) = set.iter().find(|(_, on)| *on) {
            return Err(Problem::new(
                format!("store.{key}"),
                "expected only with kind = \"postgres\" (the sled journal needs no settings here)",
            ));
        }
        return Ok(());
    }
    sinks::check_url_source("store", store.url.as_deref(), store.url_env.as_deref())?;
    if let Some(s) = &store.schema {
        sinks::check_schema("store.schema", s)?;
    }
    if let Some(id) = &store.node_id {
        let fine = !id.is_empty()
            && id.len() <= MAX_NODE_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
        if !fine {
            return Err(Problem::new(
                "store.node_id",
                format!("expected 1 to {MAX_NODE_ID_LEN} of A-Z a-z 0-9 . _ : -, got {id:?}"),
            ));
        }
    }
    if store.timeout.is_some_and(|t| t.is_zero()) {
        return Err(Problem::new(
            "store.timeout",
            "expected a duration above zero like \"10s\", got \"0s\"",
        ));
    }
    if let Some(n) = store.pool_size.filter(|n| !(2..=MAX_POOL_SIZE).contains(n)) {
        return Err(Problem::new(
            "store.pool_size",
            format!("expected 2 ..= {MAX_POOL_SIZE}, got {n}"),
        ));
    }
    Ok(())
}

/// Cluster mode's arguments (None for the sled journal), the URL taken from `url_env` when that
/// variable is set; `admin` names the default node id.
pub(super) fn resolve(
    store: StoreSection,
    admin: SocketAddr,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ClusterArgs>, Problem> {
    if !store.is_cluster() {
        return Ok(None);
    }
    let url = sinks::resolve_url("store", store.url, store.url_env.as_deref(), env)?;
    Ok(Some(ClusterArgs {
        url,
        url_env: store.url_env.unwrap_or_else(|| "store.url".into()),
        schema: store.schema.unwrap_or_else(|| "warden".into()),
        node_id: store
            .node_id
            .unwrap_or_else(|| format!("{}:{}", hostname(), admin.port())),
        timeout: store.timeout.unwrap_or(Duration::from_secs(10)),
        pool_size: store.pool_size.unwrap_or(8),
        timing: Timing::default(),
    }))
}

/// This machine's name, for the default node id.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_str(text, "t.toml").map_err(|e| e.to_string())
    }

    /// Ensures that cluster settings without `kind = "postgres"`, a missing URL source, a bad
    /// schema, node id or pool size are refused naming their key.
    #[test]
    fn bad_store_sections_name_their_key() {
        let cases = [
            ("[store]\nurl_env = \"X\"", "store.url_env"),
            ("[store]\nkind = \"postgres\"", "store"),
            (
                "[store]\nkind = \"postgres\"\nurl_env = \"X\"\nschema = \"Bad-Name\"",
                "store.schema",
            ),
            (
                "[store]\nkind = \"postgres\"\nurl_env = \"X\"\nnode_id = \"a b\"",
                "store.node_id",
            ),
            (
                "[store]\nkind = \"postgres\"\nurl_env = \"X\"\npool_size = 1",
                "store.pool_size",
            ),
            ("[store]\nkind = \"mysql\"", "store.kind"),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    /// Ensures that a node without `[store]` runs on its journal, and that cluster mode takes
    /// its URL from the environment, its schema default and a node id from host and port.
    #[test]
    fn store_resolves() {
        let c = parse("").unwrap();
        let args = c.into_args("t.toml", &|_| None).unwrap();
        assert!(args.store.is_none());
        let c = parse(
            "[admin]\nlisten = \"127.0.0.1:7701\"\n[store]\nkind = \"postgres\"\nurl_env = \"DB\"",
        )
        .unwrap();
        let env = |k: &str| (k == "DB").then(|| "postgres://u:p@h/db".to_string());
        let store = c.into_args("t.toml", &env).unwrap().store.unwrap();
        assert_eq!(store.url, "postgres://u:p@h/db");
        assert_eq!(store.schema, "warden");
        assert!(store.node_id.ends_with(":7701"), "{}", store.node_id);
    }

    /// Ensures that cron schedules are accepted in cluster mode: every node runs them and the
    /// store fires each tick once.
    #[test]
    fn schedules_run_in_cluster_mode() {
        let c = parse(
            "[store]\nkind = \"postgres\"\nurl_env = \"DB\"\n\
             [[schedules]]\nname = \"s\"\ncron = \"* * * * * *\"\njob = \"builtin.noop\"\n",
        )
        .unwrap();
        let env = |k: &str| (k == "DB").then(|| "postgres://u:p@h/db".to_string());
        let args = c.into_args("t.toml", &env).unwrap();
        assert!(args.store.is_some());
        assert_eq!(args.schedules.len(), 1);
    }
}
