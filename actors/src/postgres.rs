//! Reaching PostgreSQL, for the sink and the cluster store alike: the connection pool, how the
//! server is named in logs and answers (host, port, database and user, never the password),
//! what a failure means, and the embedded migrations (`migrate.rs`).
//!
//! The driver is tokio-postgres (the maintained pure-Rust async driver, on the tokio runtime the
//! node already runs) behind a deadpool-postgres pool: the pool replaces a connection that died
//! (PostgreSQL restarted, a network cut) on the next checkout instead of failing forever, and
//! bounds how long a checkout waits. TLS is not offered (`NoTls`): a URL with `sslmode=require`
//! fails with the driver's error.
//!
//! A failure is classified by its type and its SQLSTATE class, never by its message: a data
//! error (class 22, data exception; 23, integrity violation) is about the rows and will happen
//! again on a retry of the same batch ([`Failure::Rejected`]); everything else (no connection,
//! authentication, a restart in progress, a timeout, privileges) is about the server and is
//! retried with backoff ([`Failure::Unavailable`]).

pub mod migrate;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::config::Host;
use tokio_postgres::NoTls;

use crate::store::journal::JournalError;

/// Why a try failed, and so what its caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server could not take the batch now: retried with backoff.
    Unavailable(String),
    /// The server refused the rows themselves: retrying the same batch cannot help.
    Rejected(String),
    /// The server's schema is newer than this build knows: retried with backoff (an upgrade
    /// of the node, or a rollback of the schema, resolves it).
    SchemaTooNew(String),
    /// The node's own journal could not be read or written (the sink's outbox).
    Journal(String),
}

impl Failure {
    /// The `kind` label of `warden_sink_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Unavailable(_) => "unavailable",
            Failure::Rejected(_) => "rejected",
            Failure::SchemaTooNew(_) => "schema",
            Failure::Journal(_) => "journal",
        }
    }

    /// The message, in words.
    pub fn message(&self) -> &str {
        match self {
            Failure::Unavailable(m)
            | Failure::Rejected(m)
            | Failure::SchemaTooNew(m)
            | Failure::Journal(m) => m,
        }
    }
}

impl From<JournalError> for Failure {
    fn from(e: JournalError) -> Self {
        Failure::Journal(e.to_string())
    }
}

/// The server the sink writes to, as people are shown it, and the secret to keep out of words.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port/database as user`.
    pub shown: String,
    password: Option<String>,
}

impl Target {
    /// `message` with the password, should a driver or server ever echo it, replaced.
    pub fn scrub(&self, message: &str) -> String {
        match self.password.as_deref().filter(|p| !p.is_empty()) {
            Some(p) => message.replace(p, "***"),
            None => message.to_string(),
        }
    }

    /// A driver error as it is reported: classified, scrubbed, naming the server.
    pub fn failure(&self, e: &tokio_postgres::Error) -> Failure {
        // A server error's words are in its DbError; the driver's own Display says only "db error".
        let words = match e.as_db_error() {
            Some(db) => format!("{db} (SQLSTATE {})", db.code().code()),
            None => e.to_string(),
        };
        let words = self.scrub(&words);
        let class = e
            .code()
            .map(|c| c.code().get(..2).unwrap_or("").to_string());
        match class.as_deref() {
            Some("22" | "23") => Failure::Rejected(format!("{}: {words}", self.shown)),
            _ => Failure::Unavailable(format!("{}: {words}", self.shown)),
        }
    }

    /// A pool checkout error as it is reported.
    pub fn pool_failure(&self, e: PoolError) -> Failure {
        match e {
            PoolError::Backend(e) => self.failure(&e),
            PoolError::Timeout(_) => {
                Failure::Unavailable(format!("{}: timed out connecting", self.shown))
            }
            other => Failure::Unavailable(format!(
                "{}: {}",
                self.shown,
                self.scrub(&other.to_string())
            )),
        }
    }
}

/// Parses a PostgreSQL URL (a `postgres://` URL or a `key=value` string) into the driver's config
/// and the [`Target`]. The error never repeats the URL, which may hold the password.
pub fn parse(url: &str) -> Result<(tokio_postgres::Config, Target), String> {
    let config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        let password = url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .and_then(|(auth, _)| auth.split_once(':'))
            .map(|(_, p)| p);
        let words = e.to_string();
        match password.filter(|p| !p.is_empty()) {
            Some(p) => words.replace(p, "***"),
            None => words,
        }
    })?;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let host = if hosts.is_empty() {
        "localhost".to_string()
    } else {
        hosts.join(",")
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("(none)");
    let db = config.get_dbname().unwrap_or(user);
    let password = config
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let shown = format!("{host}:{port}/{db} as {user}");
    Ok((config, Target { shown, password }))
}

/// An advisory lock key for `name`, the same in every process (FNV-1a).
pub fn advisory_key(name: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// How a pool connects: its bound, its timeouts, and the name its sessions carry in
/// `pg_stat_activity`.
pub struct PoolOptions<'a> {
    /// The URL (`postgres://` or `key=value`).
    pub url: &'a str,
    /// Connect and statement timeout.
    pub timeout: Duration,
    /// The sessions' `application_name`.
    pub application: &'a str,
    /// Connections the pool keeps at most.
    pub size: usize,
}

/// The pool for `o`: connect and statement timeouts from `o.timeout`.
pub fn pool(o: PoolOptions<'_>) -> Result<(Pool, Target), String> {
    let (mut config, target) = parse(o.url)?;
    let timeout_ms = o.timeout.as_millis();
    config
        .connect_timeout(o.timeout)
        .application_name(o.application)
        .options(format!("-c statement_timeout={timeout_ms}"));
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    // The pool's own bound sits above the driver's, so a slow connect reports the driver's words.
    let wait = Some(o.timeout + Duration::from_secs(1));
    let pool = Pool::builder(manager)
        .max_size(o.size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(wait)
        .create_timeout(wait)
        .recycle_timeout(wait)
        .build()
        .map_err(|e| format!("cannot build the connection pool: {e}"))?;
    Ok((pool, target))
}

/// Text PostgreSQL's `text` can hold: NUL characters replaced by U+FFFD (kept visible rather
/// than dropped, so two keys that differ by a NUL stay apart).
pub(crate) fn pg_text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_string()
    }
}

/// `v` as JSON text that `jsonb` accepts: serde_json writes a NUL as `\u0000`, which jsonb
/// refuses, so strings and keys holding one go through [`pg_text`].
pub(crate) fn jsonb_text(v: &serde_json::Value) -> String {
    let text = v.to_string();
    if !text.contains("\\u0000") {
        return text;
    }
    without_nul(v).to_string()
}

fn without_nul(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(pg_text(s)),
        Value::Array(a) => Value::Array(a.iter().map(without_nul).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (pg_text(k), without_nul(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures that the shown target names host, port, database and user but never the
    /// password, also when the URL cannot be parsed.
    #[test]
    fn the_password_is_never_shown() {
        let (_, t) = parse("postgres://loader:s3cr3t-pw@db.example.com:6543/warehouse").unwrap();
        assert_eq!(t.shown, "db.example.com:6543/warehouse as loader");
        assert_eq!(t.scrub("echo s3cr3t-pw"), "echo ***");
        let (_, t) = parse("host=/var/run/postgresql user=postgres").unwrap();
        assert_eq!(t.shown, "/var/run/postgresql:5432/postgres as postgres");
        let err = parse("postgres://loader:s3cr3t-pw@db.example.com:notaport/x").unwrap_err();
        assert!(!err.contains("s3cr3t-pw"), "{err}");
    }
}
