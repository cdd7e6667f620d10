//! `[sinks.postgres]`: where the records go besides the journal, checked and resolved into the
//! actors' [`PostgresSinkArgs`]. Without the section nothing changes.
//!
//! The URL comes from `url`, or from the environment variable `url_env` names (which wins when
//! it is set and non-empty, like `WARDEN_ADMIN_TOKEN` over `admin.token`), so a password need
//! not sit in a config file. No error message ever repeats the URL or the password.

use std::time::Duration;

use serde::Deserialize;
use warden_actors::args::PostgresSinkArgs;

use super::{duration, Problem};

/// The longest `schema` PostgreSQL takes (NAMEDATALEN - 1).
const MAX_SCHEMA_LEN: usize = 63;
/// The largest `batch`: one transaction of that many records stays well under a second.
const MAX_BATCH: usize = 10_000;
/// `max_backoff` below this would hammer a server that is down.
const MIN_MAX_BACKOFF: Duration = Duration::from_millis(200);

/// `[sinks]`: one optional section per kind of sink.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinksSection {
    /// `[sinks.postgres]`.
    pub postgres: Option<PostgresSinkSection>,
}

/// `[sinks.postgres]`.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkSection {
    /// `postgres://user:password@host:5432/database` or `host=... user=...`.
    #[serde(default)]
    pub url: Option<String>,
    /// The environment variable holding the URL; wins over `url` when set.
    #[serde(default)]
    pub url_env: Option<String>,
    /// The schema of the tables; default `warden`.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// Records per transaction; default 500.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// How often an idle sink looks for new records; default 1 s.
    #[serde(default = "default_flush_every", deserialize_with = "duration")]
    pub flush_every: Duration,
    /// The longest wait between tries while PostgreSQL is unreachable; default 30 s.
    #[serde(default = "default_max_backoff", deserialize_with = "duration")]
    pub max_backoff: Duration,
    /// Connecting and each statement; default 10 s.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

/// Never shows the URL: it may hold the password.
impl std::fmt::Debug for PostgresSinkSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSinkSection")
            .field("url", &self.url.as_ref().map(|_| "***"))
            .field("url_env", &self.url_env)
            .field("schema", &self.schema)
            .field("batch", &self.batch)
            .field("flush_every", &self.flush_every)
            .field("max_backoff", &self.max_backoff)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn default_schema() -> String {
    "warden".into()
}
fn default_batch() -> usize {
    500
}
fn default_flush_every() -> Duration {
    Duration::from_secs(1)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Checks the rules the schema cannot express.
pub(super) fn validate(sinks: &SinksSection) -> Result<(), Problem> {
    let Some(pg) = &sinks.postgres else {
        return Ok(());
    };
    let key = |k: &str| format!("sinks.postgres.{k}");
    check_url_source("sinks.postgres", pg.url.as_deref(), pg.url_env.as_deref())?;
    check_schema(&key("schema"), &pg.schema)?;
    if !(1..=MAX_BATCH).contains(&pg.batch) {
        return Err(Problem::new(
            key("batch"),
            format!("expected 1 ..= {MAX_BATCH}, got {}", pg.batch),
        ));
    }
    for (name, d) in [("flush_every", pg.flush_every), ("timeout", pg.timeout)] {
        if d.is_zero() {
            return Err(Problem::new(
                key(name),
                "expected a duration above zero like \"1s\", got \"0s\"",
            ));
        }
    }
    if pg.max_backoff < MIN_MAX_BACKOFF {
        return Err(Problem::new(
            key("max_backoff"),
            format!(
                "expected at least 200ms, got {}",
                humantime::format_duration(pg.max_backoff)
            ),
        ));
    }
    Ok(())
}

/// Checks that `section` names where its PostgreSQL URL comes from, and that a `url` given
/// parses (shared by `[sinks.postgres]` and `[store]`).
pub(super) fn check_url_source(
    section: &str,
    url: Option<&str>,
    url_env: Option<&str>,
) -> Result<(), Problem> {
    if url.is_none() && url_env.is_none() {
        return Err(Problem::new(
            section,
            "expected url or url_env (the name of an environment variable holding the URL)",
        ));
    }
    if let Some(url) = url {
        warden_actors::sink::parse_url(url).map_err(|e| {
            Problem::new(format!("{section}.url"), format!("expected a PostgreSQL URL like \"postgres://user:password@host:5432/db\" ({e})"))
        })?;
    }
    if url_env == Some("") {
        return Err(Problem::new(
            format!("{section}.url_env"),
            "expected a variable name, got \"\"",
        ));
    }
    Ok(())
}

/// Checks that `s` is a schema name PostgreSQL takes unquoted.
pub(super) fn check_schema(key: &str, s: &str) -> Result<(), Problem> {
    let plain = s.len() <= MAX_SCHEMA_LEN
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !plain {
        return Err(Problem::new(
            key,
            format!("expected a plain identifier (a-z, 0-9, _; at most {MAX_SCHEMA_LEN}, not starting with a digit), got {s:?}"),
        ));
    }
    Ok(())
}

/// The URL of `section`: from the variable `url_env` names when it is set and non-empty, else
/// `url`; checked to parse, never repeated in a message.
pub(super) fn resolve_url(
    section: &str,
    url: Option<String>,
    url_env: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Problem> {
    let from_env = url_env.and_then(|var| env(var).filter(|v| !v.is_empty()).map(|v| (var, v)));
    match (from_env, url) {
        (Some((var, url)), _) => {
            warden_actors::sink::parse_url(&url).map_err(|e| {
                Problem::new(
                    format!("{section}.url_env"),
                    format!("the variable {var} does not hold a PostgreSQL URL ({e})"),
                )
            })?;
            Ok(url)
        }
        (None, Some(url)) => Ok(url),
        (None, None) => Err(Problem::new(
            format!("{section}.url_env"),
            format!(
                "the variable {} is not set (or empty) and no url is given",
                url_env.unwrap_or_default()
            ),
        )),
    }
}

/// The sink's arguments, the URL taken from `url_env` when that variable is set.
pub(super) fn resolve(
    sinks: SinksSection,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<PostgresSinkArgs>, Problem> {
    let Some(pg) = sinks.postgres else {
        return Ok(None);
    };
    let url = resolve_url("sinks.postgres", pg.url, pg.url_env.as_deref(), env)?;
    Ok(Some(PostgresSinkArgs {
        url,
        schema: pg.schema,
        batch: pg.batch,
        flush_every: pg.flush_every,
        max_backoff: pg.max_backoff,
        timeout: pg.timeout,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_str(text, "t.toml").map_err(|e| e.to_string())
    }

    /// Ensures that bad values name their key, and that no message shows the password.
    #[test]
    fn bad_values_name_their_key_and_hide_the_password() {
        let cases = [
            (
                "[sinks.postgres]\nschema = \"x\"",
                "sinks.postgres: expected url or url_env",
            ),
            (
                "[sinks.postgres]\nurl = \"postgres://u:hunter2@h:port/db\"",
                "sinks.postgres.url:",
            ),
            (
                "[sinks.postgres]\nurl = \"postgres://h/db\"\nschema = \"Bad-Name\"",
                "sinks.postgres.schema:",
            ),
            (
                "[sinks.postgres]\nurl = \"postgres://h/db\"\nbatch = 0",
                "sinks.postgres.batch: expected 1 ..= 10000, got 0",
            ),
            (
                "[sinks.postgres]\nurl = \"postgres://h/db\"\nflush_every = \"0s\"",
                "sinks.postgres.flush_every:",
            ),
            (
                "[sinks.postgres]\nurl = \"postgres://h/db\"\nmax_backoff = \"10ms\"",
                "sinks.postgres.max_backoff:",
            ),
            (
                "[sinks.postgres]\nurl = \"postgres://h/db\"\nurl_env = \"\"",
                "sinks.postgres.url_env:",
            ),
            (
                "[sinks.postgres]\nurl = \"postgres://h/db\"\nbogus = 1",
                "bogus",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    /// Ensures that `url_env` wins over `url` when set, `url` serves when it is not, and a
    /// missing variable without a `url` is an error naming the variable.
    #[test]
    fn url_env_wins_when_set() {
        let text = "[sinks.postgres]\nurl = \"postgres://file@h/db\"\nurl_env = \"PG_URL\"\n";
        let env_url = |var: &str| (var == "PG_URL").then(|| "postgres://env@h/db".to_string());
        let args = parse(text).unwrap().into_args("t.toml", &env_url).unwrap();
        assert_eq!(args.sink.unwrap().url, "postgres://env@h/db");
        let args = parse(text).unwrap().into_args("t.toml", &|_| None).unwrap();
        let sink = args.sink.unwrap();
        assert_eq!(
            (sink.url.as_str(), sink.schema.as_str(), sink.batch),
            ("postgres://file@h/db", "warden", 500)
        );
        let only_env = "[sinks.postgres]\nurl_env = \"PG_URL\"\n";
        let err = parse(only_env)
            .unwrap()
            .into_args("t.toml", &|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sinks.postgres.url_env") && err.contains("PG_URL"),
            "{err}"
        );
        let bad = |_: &str| Some("postgres://u:hunter2@h:port/db".to_string());
        let err = parse(only_env)
            .unwrap()
            .into_args("t.toml", &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("PG_URL") && !err.contains("hunter2"), "{err}");
    }

    /// Ensures that a config without `[sinks]` has no sink.
    #[test]
    fn no_section_no_sink() {
        let args = parse("").unwrap().into_args("t.toml", &|_| None).unwrap();
        assert!(args.sink.is_none());
    }
}
