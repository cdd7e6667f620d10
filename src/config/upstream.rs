//! The upstream keys of `[pipelines.<name>]` (docs/upstreams.md, "Configuration"): their
//! per-source defaults (the real hosts and their published limits), their checks, and their
//! resolution into [`UpstreamArgs`], which reads the Alpha Vantage key from the environment.

use std::time::Duration;

use serde::Deserialize;
use warden_actors::args::{BreakerArgs, UpstreamArgs};
use warden_actors::pipeline::limiter::parse_rate_limit;

use super::{duration, Problem};

/// `breaker = { failure_threshold = 5, open_for = "60s", max_open_for = "10m" }`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSection {
    /// Consecutive transient failures that open the breaker; default 5.
    pub failure_threshold: u32,
    /// How long it stays open before one probe; default 60 s.
    #[serde(deserialize_with = "duration")]
    pub open_for: Duration,
    /// Cap on `open_for`, which doubles after each failed probe; default 10 min.
    #[serde(deserialize_with = "duration")]
    pub max_open_for: Duration,
}

impl Default for BreakerSection {
    fn default() -> Self {
        BreakerSection {
            failure_threshold: 5,
            open_for: Duration::from_secs(60),
            max_open_for: Duration::from_secs(600),
        }
    }
}

/// What each source defaults to when its section leaves a key out.
struct Defaults {
    base_url: &'static str,
    tickers_url: Option<&'static str>,
    rate_limit: &'static str,
    needs_user_agent: bool,
    api_key_env: Option<&'static str>,
    throttle_cooldown: Duration,
}

/// The defaults of a source; `None` for `builtin`, which has no upstream.
fn defaults(pipeline: &str) -> Option<Defaults> {
    Some(match pipeline {
        "sec" => Defaults {
            base_url: "https://data.sec.gov",
            tickers_url: Some("https://www.sec.gov/files/company_tickers.json"),
            // SEC fair access: at most 10 requests/s per user.
            rate_limit: "10/s",
            needs_user_agent: true,
            api_key_env: None,
            // SEC blocks an over-eager client for about ten minutes.
            throttle_cooldown: Duration::from_secs(600),
        },
        "yahoo" => Defaults {
            base_url: "https://query1.finance.yahoo.com",
            tickers_url: None,
            // Unofficial API: stay well under what gets 429s.
            rate_limit: "2/s, 60/m",
            needs_user_agent: false,
            api_key_env: None,
            throttle_cooldown: Duration::from_secs(60),
        },
        "alphavantage" => Defaults {
            base_url: "https://www.alphavantage.co",
            tickers_url: None,
            // The free key: 25 requests a day, bursts of about 5 a minute.
            rate_limit: "5/m, 25/d",
            needs_user_agent: false,
            api_key_env: Some("ALPHAVANTAGE_API_KEY"),
            // The per-minute quota; a spent daily one waits for the next UTC day instead.
            throttle_cooldown: Duration::from_secs(60),
        },
        _ => return None,
    })
}

/// The upstream keys as written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpstreamKeys<'a> {
    /// `base_url`.
    pub base_url: Option<&'a str>,
    /// `tickers_url`.
    pub tickers_url: Option<&'a str>,
    /// `user_agent`.
    pub user_agent: Option<&'a str>,
    /// `rate_limit`.
    pub rate_limit: Option<&'a str>,
    /// `request_timeout`.
    pub request_timeout: Option<Duration>,
    /// `breaker`.
    pub breaker: Option<BreakerSection>,
    /// `api_key_env`.
    pub api_key_env: Option<&'a str>,
    /// `throttle_cooldown`.
    pub throttle_cooldown: Option<Duration>,
}

impl UpstreamKeys<'_> {
    fn any(&self) -> Option<&'static str> {
        [
            (self.base_url.is_some(), "base_url"),
            (self.tickers_url.is_some(), "tickers_url"),
            (self.user_agent.is_some(), "user_agent"),
            (self.rate_limit.is_some(), "rate_limit"),
            (self.request_timeout.is_some(), "request_timeout"),
            (self.breaker.is_some(), "breaker"),
            (self.api_key_env.is_some(), "api_key_env"),
            (self.throttle_cooldown.is_some(), "throttle_cooldown"),
        ]
        .into_iter()
        .find_map(|(set, name)| set.then_some(name))
    }
}

/// Checks a pipeline's upstream keys; `key` is `pipelines.<name>`.
pub(super) fn validate(pipeline: &str, keys: &UpstreamKeys, key: &str) -> Result<(), Problem> {
    let Some(d) = defaults(pipeline) else {
        return match keys.any() {
            Some(name) => Err(Problem::new(
                format!("{key}.{name}"),
                format!("the {pipeline} pipeline has no upstream, so it takes no {name}"),
            )),
            None => Ok(()),
        };
    };
    for (name, url) in [
        ("base_url", keys.base_url),
        ("tickers_url", keys.tickers_url),
    ] {
        if let Some(url) = url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Problem::new(
                    format!("{key}.{name}"),
                    format!("expected an http:// or https:// URL, got {url:?}"),
                ));
            }
        }
    }
    if keys.tickers_url.is_some() && d.tickers_url.is_none() {
        return Err(Problem::new(
            format!("{key}.tickers_url"),
            format!("only the sec pipeline takes a tickers_url, not {pipeline}"),
        ));
    }
    if d.needs_user_agent && keys.user_agent.is_none_or(|ua| ua.trim().is_empty()) {
        return Err(Problem::new(
            format!("{key}.user_agent"),
            "SEC rejects requests without a declared User-Agent: expected one like \
             \"Example Corp data-team@example.com\", got nothing",
        ));
    }
    if let Some(rl) = keys.rate_limit {
        parse_rate_limit(rl).map_err(|e| Problem::new(format!("{key}.rate_limit"), e))?;
    }
    if keys.api_key_env.is_some() && d.api_key_env.is_none() {
        return Err(Problem::new(
            format!("{key}.api_key_env"),
            format!("only the alphavantage pipeline takes an api_key_env, not {pipeline}"),
        ));
    }
    if let Some(b) = keys.breaker {
        if b.failure_threshold == 0 {
            return Err(Problem::new(
                format!("{key}.breaker.failure_threshold"),
                "expected at least 1, got 0",
            ));
        }
        if b.open_for.is_zero() || b.open_for > b.max_open_for {
            return Err(Problem::new(
                format!("{key}.breaker.open_for"),
                format!(
                    "expected more than 0 and at most max_open_for ({}), got {}",
                    humantime::format_duration(b.max_open_for),
                    humantime::format_duration(b.open_for)
                ),
            ));
        }
    }
    if keys.request_timeout.is_some_and(|t| t.is_zero()) {
        return Err(Problem::new(
            format!("{key}.request_timeout"),
            "expected more than 0, got 0s",
        ));
    }
    Ok(())
}

/// The upstream arguments of a validated pipeline; `env` reads an environment variable (the
/// Alpha Vantage key). A missing key is an error for that pipeline.
pub(super) fn resolve(
    pipeline: &str,
    keys: &UpstreamKeys,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<UpstreamArgs>, Problem> {
    let Some(d) = defaults(pipeline) else {
        return Ok(None);
    };
    let rate = keys.rate_limit.unwrap_or(d.rate_limit);
    let api_key = match keys.api_key_env.or(d.api_key_env) {
        None => None,
        Some(var) => match env(var).filter(|v| !v.is_empty()) {
            Some(v) => Some(v),
            None => {
                return Err(Problem::new(
                    format!("{key}.api_key_env"),
                    format!(
                        "the API key is read from the environment variable {var}, which is not set"
                    ),
                ))
            }
        },
    };
    let breaker = keys.breaker.unwrap_or_default();
    Ok(Some(UpstreamArgs {
        base_url: keys
            .base_url
            .unwrap_or(d.base_url)
            .trim_end_matches('/')
            .to_owned(),
        tickers_url: keys.tickers_url.or(d.tickers_url).map(str::to_owned),
        user_agent: keys.user_agent.map(str::to_owned),
        api_key,
        rate_limit: parse_rate_limit(rate)
            .map_err(|e| Problem::new(format!("{key}.rate_limit"), e))?,
        request_timeout: keys.request_timeout.unwrap_or(Duration::from_secs(30)),
        breaker: BreakerArgs {
            failure_threshold: breaker.failure_threshold,
            open_for: breaker.open_for,
            max_open_for: breaker.max_open_for,
        },
        throttle_cooldown: keys.throttle_cooldown.unwrap_or(d.throttle_cooldown),
    }))
}
