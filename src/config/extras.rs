//! `[universe]`, `[[schedules]]` and `[alerts]`: the config of recurring ingestion and of the
//! alert webhook, and their resolution into the actors' [`ScheduleArgs`] and [`AlertsArgs`].

use std::time::Duration;

use serde::Deserialize;
use warden_actors::args::{AlertsArgs, CatchUp, Overlap, ScheduleArgs};
use warden_actors::job::Priority;

use super::{duration, priority, Problem};

/// The word in a schedule's params that stands for the universe's tickers.
pub const UNIVERSE_REF: &str = "@universe";

/// `[universe]`: the tickers the platform follows, referenced by schedules as `"@universe"`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UniverseSection {
    /// Ticker symbols.
    pub tickers: Vec<String>,
}

/// One `[[schedules]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSection {
    /// Unique name.
    pub name: String,
    /// Cron expression, UTC, seconds field optional.
    pub cron: String,
    /// Job to submit.
    pub job: String,
    /// Its params; a string `"@universe"` is replaced by the universe's tickers.
    #[serde(default)]
    pub params: Option<toml::Table>,
    /// Its priority.
    #[serde(default, deserialize_with = "priority")]
    pub priority: Option<Priority>,
    /// `none` | `latest` | `all`; default `latest`.
    #[serde(default)]
    pub catch_up: Option<String>,
    /// `skip` | `allow`; default `skip`.
    #[serde(default)]
    pub overlap: Option<String>,
}

/// `[alerts]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSection {
    /// Receives a JSON POST per dead-lettered job and per breaker that opens.
    pub webhook_url: String,
    /// Alerts waiting at most; default 1000.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Tries per alert; default 5.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Timeout of one POST; default 5 s.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

fn default_queue() -> usize {
    1000
}
fn default_attempts() -> u32 {
    5
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Checks the schedules: unique names, a cron croner accepts, known policies.
pub(super) fn validate_schedules(
    schedules: &[ScheduleSection],
    universe: &UniverseSection,
) -> Result<(), Problem> {
    for (i, s) in schedules.iter().enumerate() {
        let key = format!("schedules[{i}]");
        if s.name.is_empty() {
            return Err(Problem::new(
                format!("{key}.name"),
                "expected a name, got \"\"",
            ));
        }
        if schedules[..i].iter().any(|o| o.name == s.name) {
            return Err(Problem::new(
                format!("{key}.name"),
                format!("expected a unique name, got {:?} twice", s.name),
            ));
        }
        warden_actors::scheduler::parse_cron(&s.cron)
            .map_err(|e| Problem::new(format!("{key}.cron"), e))?;
        catch_up(s.catch_up.as_deref()).map_err(|e| Problem::new(format!("{key}.catch_up"), e))?;
        overlap(s.overlap.as_deref()).map_err(|e| Problem::new(format!("{key}.overlap"), e))?;
        let uses_universe = s
            .params
            .iter()
            .flat_map(|p| p.values())
            .any(|v| v.as_str() == Some(UNIVERSE_REF));
        if uses_universe && universe.tickers.is_empty() {
            return Err(Problem::new(
                format!("{key}.params"),
                "uses \"@universe\", but [universe] tickers is empty: expected a list like [\"CHGG\", \"IBM\"]",
            ));
        }
    }
    Ok(())
}

/// Checks the webhook URL.
pub(super) fn validate_alerts(alerts: &AlertsSection) -> Result<(), Problem> {
    let url = &alerts.webhook_url;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Problem::new(
            "alerts.webhook_url",
            format!("expected an http:// or https:// URL, got {url:?}"),
        ));
    }
    if alerts.queue == 0 || alerts.max_attempts == 0 {
        return Err(Problem::new(
            "alerts",
            "expected queue and max_attempts of at least 1",
        ));
    }
    Ok(())
}

fn catch_up(s: Option<&str>) -> Result<CatchUp, String> {
    match s {
        None | Some("latest") => Ok(CatchUp::Latest),
        Some("none") => Ok(CatchUp::None),
        Some("all") => Ok(CatchUp::All),
        Some(other) => Err(format!("expected one of none, latest, all, got {other:?}")),
    }
}

fn overlap(s: Option<&str>) -> Result<Overlap, String> {
    match s {
        None | Some("skip") => Ok(Overlap::Skip),
        Some("allow") => Ok(Overlap::Allow),
        Some(other) => Err(format!("expected one of skip, allow, got {other:?}")),
    }
}

/// The schedules' arguments, with `"@universe"` replaced (validated input only).
pub(super) fn resolve_schedules(
    schedules: Vec<ScheduleSection>,
    universe: &UniverseSection,
) -> Vec<ScheduleArgs> {
    schedules
        .into_iter()
        .map(|s| {
            let mut params = serde_json::to_value(s.params.unwrap_or_default()).unwrap_or_default();
            if let serde_json::Value::Object(m) = &mut params {
                for v in m.values_mut() {
                    if v.as_str() == Some(UNIVERSE_REF) {
                        *v = serde_json::json!(universe.tickers);
                    }
                }
            }
            ScheduleArgs {
                name: s.name,
                cron: s.cron,
                job: s.job,
                params,
                priority: s.priority,
                catch_up: catch_up(s.catch_up.as_deref()).unwrap_or_default(),
                overlap: overlap(s.overlap.as_deref()).unwrap_or_default(),
            }
        })
        .collect()
}

/// The alerts' arguments.
pub(super) fn resolve_alerts(a: AlertsSection) -> AlertsArgs {
    AlertsArgs {
        webhook_url: a.webhook_url,
        queue: a.queue,
        max_attempts: a.max_attempts,
        timeout: a.timeout,
    }
}
