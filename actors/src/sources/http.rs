//! The HTTP side every source shares: [`Source`] sends one GET through the pipeline's gate,
//! [`Judgement`] classifies what came back, and the helpers here turn both into error messages
//! that name the task, the request (with the API key replaced by `***`) and the answer.
//!
//! The order of one request is fixed: the gate first (a rate-limit permit and the breaker's
//! admission; a refusal becomes [`TaskError::Throttled`] and nothing is sent), then the exchange
//! bounded by `request_timeout` (connect errors, timeouts and cut-off bodies are transient and
//! reported to the gate at once), then the source's classifier, whose verdict
//! [`Source::settle`] reports. [`Source::fetch`] does all three, so a task cannot forget the
//! verdict.

use std::error::Error as _;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveTime, Utc};
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use crate::args::UpstreamArgs;
use crate::store::journal::Journal;
use tokio_util::sync::CancellationToken;

use crate::tasks::{Records, TaskError, ThrottledBy};
use crate::upstream::{Gate, Verdict};

/// The largest body read. SEC's company facts for the biggest filers are a few MiB; anything
/// far beyond that is not an answer we can use, and reading it would only cost memory.
pub const MAX_BODY_BYTES: usize = 64 << 20;

/// How much of a body an error message shows.
const EXCERPT_CHARS: usize = 160;

/// The longest `Retry-After` honoured. A larger value is more likely a broken header than a
/// real request to wait for days, and a bounded wait cannot overflow the gate's clock.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// Why a [`Source`] cannot be built: the pipeline cannot start, and the message says why.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A config value the source cannot work without is missing or malformed.
    #[error("pipeline {pipeline}: {problem}")]
    Config {
        /// The pipeline's name.
        pipeline: String,
        /// What is missing or wrong, naming the config key.
        problem: String,
    },
    /// reqwest could not build its client (its TLS backend failed to initialise).
    #[error("pipeline {pipeline}: cannot build its HTTP client: {source}")]
    Client {
        /// The pipeline's name.
        pipeline: String,
        /// reqwest's error.
        source: reqwest::Error,
    },
}

/// One upstream API as a pipeline's tasks see it: the HTTP client, the gate every request
/// passes, the pipeline's upstream arguments and the node's journal (what a source keeps between
/// jobs).
/// Shared (in an `Arc`) by every worker of the pipeline.
pub struct Source {
    name: String,
    client: reqwest::Client,
    base: Url,
    gate: Arc<dyn Gate>,
    args: UpstreamArgs,
    journal: Journal,
}

impl fmt::Debug for Source {
    // By hand, because `UpstreamArgs`' derived Debug would print the API key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("name", &self.name)
            .field("base_url", &redact_url(self.base.as_str()))
            .finish_non_exhaustive()
    }
}

/// A response as it came back, before its source judges it.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// `GET <url>` with any API key replaced by `***`: what error messages show.
    pub request: String,
    /// The HTTP status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Fetched {
    /// What came back, for an error message: `answered HTTP 404 Not Found: "<excerpt>"`.
    pub fn came_back(&self) -> String {
        let excerpt = excerpt(&self.body);
        if excerpt.is_empty() {
            format!("answered HTTP {} with an empty body", self.status)
        } else {
            format!("answered HTTP {}: {excerpt:?}", self.status)
        }
    }
}

/// A source's reading of one response: the useful answer, or why there is none, in the error
/// class that decides the job's fate. The `String`s say what is wrong; [`Source::settle`] adds
/// the task, the request and the answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement<T> {
    /// The upstream answered usefully.
    Answer(T),
    /// The upstream said definitely that what was asked for does not exist (an unknown
    /// ticker, CIK or symbol): the job fails for good, but the upstream is healthy.
    NotFound(String),
    /// The request will never work (another 4xx, an answer of an unexpected shape).
    Permanent(String),
    /// It may work next time (5xx, a truncated or non-JSON body).
    Transient(String),
    /// The upstream asked us to slow down; the whole source pauses.
    Throttled {
        /// What the upstream said.
        problem: String,
        /// How long it asked us to wait, when it said.
        retry_after: Option<Duration>,
        /// A daily quota is spent: wait until the next UTC day.
        until_next_utc_day: bool,
    },
}

impl<T> Judgement<T> {
    /// What the gate is told.
    pub fn verdict(&self) -> Verdict {
        match self {
            Judgement::Answer(_) | Judgement::NotFound(_) => Verdict::Ok,
            Judgement::Permanent(_) => Verdict::Permanent,
            Judgement::Transient(_) => Verdict::Transient,
            Judgement::Throttled {
                retry_after,
                until_next_utc_day,
                ..
            } => Verdict::Throttled {
                retry_after: *retry_after,
                until_next_utc_day: *until_next_utc_day,
            },
        }
    }

    /// An answer read for its shape: what was wanted, or a permanent judgement saying what
    /// is missing (the same request would get the same answer).
    pub fn shaped(read: Result<T, String>) -> Judgement<T> {
        match read {
            Ok(value) => Judgement::Answer(value),
            Err(problem) => Judgement::Permanent(problem),
        }
    }

    /// Reads a useful answer further (its shape, its records); any other judgement stays.
    pub fn and_then<U>(self, f: impl FnOnce(T) -> Judgement<U>) -> Judgement<U> {
        match self {
            Judgement::Answer(value) => f(value),
            Judgement::NotFound(p) => Judgement::NotFound(p),
            Judgement::Permanent(p) => Judgement::Permanent(p),
            Judgement::Transient(p) => Judgement::Transient(p),
            Judgement::Throttled {
                problem,
                retry_after,
                until_next_utc_day,
            } => Judgement::Throttled {
                problem,
                retry_after,
                until_next_utc_day,
            },
        }
    }
}

/// How an exchange failed before its response could be judged.
enum ExchangeError {
    /// No response: connect error, timeout, bad request.
    Send(reqwest::Error),
    /// A response whose body broke off or timed out.
    Body {
        status: StatusCode,
        error: reqwest::Error,
    },
    /// A response whose body exceeds [`MAX_BODY_BYTES`].
    TooLarge { status: StatusCode },
}

impl Source {
    /// A source for the pipeline `name`, checking what the upstream cannot work without: a
    /// `sec` pipeline needs a declared `user_agent` (SEC rejects undeclared tools) and a
    /// `tickers_url`, an `alphavantage` pipeline needs its API key.
    pub fn new(
        name: &str,
        args: UpstreamArgs,
        gate: Arc<dyn Gate>,
        journal: Journal,
    ) -> Result<Source, SourceError> {
        let config = |problem: String| SourceError::Config {
            pipeline: name.to_string(),
            problem,
        };
        let base = parse_http_url(&args.base_url).map_err(|problem| {
            config(format!(
                "base_url {:?}: {problem}",
                redact_url(&args.base_url)
            ))
        })?;
        if let Some(ua) = &args.user_agent {
            if HeaderValue::from_str(ua).is_err() {
                return Err(config(format!(
                    "user_agent {ua:?} cannot be sent as an HTTP header (printable ASCII only)"
                )));
            }
        }
        match name {
            "sec" => {
                if args
                    .user_agent
                    .as_deref()
                    .is_none_or(|ua| ua.trim().is_empty())
                {
                    return Err(config(
                        "user_agent is required: SEC refuses requests without a declared \
                         User-Agent such as \"Example Corp data-team@example.com\""
                            .into(),
                    ));
                }
                let tickers = args
                    .tickers_url
                    .as_deref()
                    .ok_or_else(|| config("tickers_url is required".into()))?;
                parse_http_url(tickers)
                    .map_err(|problem| config(format!("tickers_url {tickers:?}: {problem}")))?;
            }
            "alphavantage" if args.api_key.as_deref().is_none_or(str::is_empty) => {
                return Err(config(
                    "no API key: set the environment variable named by api_key_env".into(),
                ));
            }
            _ => {}
        }
        let mut builder = reqwest::Client::builder();
        if let Some(ua) = &args.user_agent {
            builder = builder.user_agent(ua.clone());
        }
        let client = builder.build().map_err(|source| SourceError::Client {
            pipeline: name.to_string(),
            source,
        })?;
        Ok(Source {
            name: name.to_string(),
            client,
            base,
            gate,
            args,
            journal,
        })
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pipeline's upstream arguments.
    pub fn args(&self) -> &UpstreamArgs {
        &self.args
    }

    /// The node's journal (what a source keeps between jobs, like SEC's ticker map).
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// `base_url` with `segments` appended to its path (each percent-encoded as needed) and
    /// `query` appended to its query.
    pub fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        endpoint(&self.base, segments, query)
    }

    /// Sends `GET url` once the gate admits it, and reads the whole response. Connect errors,
    /// timeouts and cut-off bodies are reported to the gate as transient and returned as
    /// [`TaskError::Transient`]; a response is returned for the source to judge, and the
    /// caller must then [`settle`](Source::settle) it so the gate learns the verdict.
    /// `task` names the job's task in errors and logs.
    pub async fn get(
        &self,
        task: &str,
        url: &Url,
        cancel: &CancellationToken,
    ) -> Result<Fetched, TaskError> {
        let request = format!("GET {}", redact_url(url.as_str()));
        if cancel.is_cancelled() {
            return Err(TaskError::Permanent(format!(
                "{task}: cancelled before {request}"
            )));
        }
        // Only the wait for admission races the cancel signal: once admitted, the request runs
        // to its end (bounded by request_timeout) so that the gate always gets a verdict.
        let admitted = tokio::select! {
            biased;
            () = cancel.cancelled() => {
                return Err(TaskError::Permanent(format!(
                    "{task}: cancelled while waiting to send {request}"
                )));
            }
            admitted = self.gate.acquire() => admitted,
        };
        if let Err(blocked) = admitted {
            return Err(TaskError::Throttled {
                message: self.scrub(&format!(
                    "{task}: {request} held back by the {} pipeline's gate: {}",
                    self.name,
                    blocked.hold.describe()
                )),
                retry_after: blocked.retry_after,
                by: ThrottledBy::Gate(blocked.hold),
            });
        }
        let started = Instant::now();
        let result = self.exchange(url).await;
        let elapsed = started.elapsed();
        metrics::histogram!(crate::metrics::UPSTREAM_DURATION, "pipeline" => self.name.clone())
            .record(elapsed.as_secs_f64());
        let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        match result {
            Ok((status, headers, body)) => {
                tracing::debug!(
                    source = %self.name,
                    task,
                    %request,
                    status = status.as_u16(),
                    bytes = body.len(),
                    elapsed_ms,
                    "upstream answered"
                );
                Ok(Fetched {
                    request,
                    status,
                    headers,
                    body,
                })
            }
            Err(failure) => {
                let (verdict, error) = self.failed_exchange(task, &request, failure);
                self.report(verdict);
                tracing::debug!(source = %self.name, task, %error, elapsed_ms, "upstream request failed");
                Err(error)
            }
        }
    }

    /// Tells the gate how a request ended, and counts it by outcome.
    fn report(&self, verdict: Verdict) {
        let outcome = match verdict {
            Verdict::Ok => "ok",
            Verdict::Transient => "transient",
            Verdict::Throttled { .. } => "throttled",
            Verdict::Permanent => "permanent",
        };
        metrics::counter!(crate::metrics::UPSTREAM_REQUESTS, "pipeline" => self.name.clone(), "outcome" => outcome)
            .increment(1);
        self.gate.report(verdict);
    }

    /// Reports `judgement`'s verdict to the gate and turns it into the task's answer or error,
    /// the error naming the task, the request and what came back.
    pub fn settle<T>(
        &self,
        task: &str,
        fetched: &Fetched,
        judgement: Judgement<T>,
    ) -> Result<T, TaskError> {
        self.report(judgement.verdict());
        let message = |problem: &str| {
            self.scrub(&format!(
                "{task}: {problem}: {} {}",
                fetched.request,
                fetched.came_back()
            ))
        };
        let error = match judgement {
            Judgement::Answer(value) => return Ok(value),
            Judgement::NotFound(problem) | Judgement::Permanent(problem) => {
                TaskError::Permanent(message(&problem))
            }
            Judgement::Transient(problem) => TaskError::Transient(message(&problem)),
            Judgement::Throttled {
                problem,
                retry_after,
                until_next_utc_day: daily,
            } => TaskError::Throttled {
                message: message(&problem),
                retry_after: if daily {
                    Some(until_next_utc_day(Utc::now()))
                } else {
                    retry_after
                },
                by: ThrottledBy::Upstream,
            },
        };
        tracing::debug!(source = %self.name, task, %error, "upstream answer judged a failure");
        Err(error)
    }

    /// [`get`](Source::get), then `judge` the response, then [`settle`](Source::settle).
    pub async fn fetch<T>(
        &self,
        task: &str,
        url: &Url,
        cancel: &CancellationToken,
        judge: impl FnOnce(&Fetched) -> Judgement<T>,
    ) -> Result<T, TaskError> {
        let fetched = self.get(task, url, cancel).await?;
        let judgement = judge(&fetched);
        self.settle(task, &fetched, judgement)
    }

    /// Stores `records` (key, value) through the attempt's handle `to` (the journal on a single
    /// node, the attempt's buffer in cluster mode) and counts those that were new or changed,
    /// so a re-run over the same data counts 0 on a single node. Off the async threads: a
    /// company's facts can be thousands of records.
    pub async fn store(
        &self,
        to: &Records,
        task: &str,
        records: Vec<(String, Value)>,
    ) -> Result<usize, TaskError> {
        let to = to.clone();
        let name = task.to_string();
        tokio::task::spawn_blocking(move || {
            let mut stored = 0;
            for (key, value) in &records {
                let changed = to.put(key, value).map_err(|e| match e {
                    TaskError::Transient(m) => TaskError::Transient(format!("{name}: {m}")),
                    other => other,
                })?;
                stored += usize::from(changed);
            }
            Ok(stored)
        })
        .await
        .unwrap_or_else(|e| {
            Err(TaskError::Transient(format!(
                "{task}: storing records failed: {e}"
            )))
        })
    }

    /// `text` with the API key's literal value replaced by `***`: every message passes here, in
    /// case an upstream or a library echoes the key outside a URL.
    pub fn scrub(&self, text: &str) -> String {
        match self.args.api_key.as_deref() {
            Some(key) if !key.is_empty() => text.replace(key, "***"),
            _ => text.to_string(),
        }
    }

    /// Sends the request and reads the whole body, bounded by `request_timeout` (reqwest's
    /// per-request timeout covers the body too).
    async fn exchange(&self, url: &Url) -> Result<(StatusCode, HeaderMap, Vec<u8>), ExchangeError> {
        let mut response = self
            .client
            .get(url.clone())
            .timeout(self.args.request_timeout)
            .send()
            .await
            .map_err(ExchangeError::Send)?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| ExchangeError::Body { status, error })?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(ExchangeError::TooLarge { status });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, headers, body))
    }

    /// The verdict and error of an exchange that produced no judgeable response.
    fn failed_exchange(
        &self,
        task: &str,
        request: &str,
        failure: ExchangeError,
    ) -> (Verdict, TaskError) {
        let timeout = humantime::format_duration(self.args.request_timeout);
        let transient = |m: String| (Verdict::Transient, TaskError::Transient(self.scrub(&m)));
        let permanent = |m: String| (Verdict::Permanent, TaskError::Permanent(self.scrub(&m)));
        match failure {
            ExchangeError::Send(e) if e.is_timeout() => transient(format!(
                "{task}: no answer within the request_timeout of {timeout}: {request}"
            )),
            ExchangeError::Send(e) if e.is_connect() => transient(format!(
                "{task}: could not connect ({}): {request}",
                chain(e)
            )),
            ExchangeError::Send(e) if e.is_builder() => permanent(format!(
                "{task}: could not build the request ({}): {request}",
                chain(e)
            )),
            ExchangeError::Send(e) if e.is_redirect() => permanent(format!(
                "{task}: the redirect failed ({}): {request}",
                chain(e)
            )),
            ExchangeError::Send(e) => transient(format!(
                "{task}: the request failed ({}): {request}",
                chain(e)
            )),
            ExchangeError::Body { status, error } if error.is_timeout() => transient(format!(
                "{task}: the body did not arrive within the request_timeout of {timeout}: \
                 {request} answered HTTP {status}"
            )),
            ExchangeError::Body { status, error } => transient(format!(
                "{task}: the body was cut off ({}): {request} answered HTTP {status}",
                chain(error)
            )),
            ExchangeError::TooLarge { status } => permanent(format!(
                "{task}: the body is larger than {} MiB: {request} answered HTTP {status}",
                MAX_BODY_BYTES >> 20
            )),
        }
    }
}

/// The judgement every source starts from: 2xx is parsed as JSON (a truncated or non-JSON
/// body is transient), 429 is throttled (honouring `Retry-After`), 5xx is transient, 404 is
/// not found and any other 4xx is permanent.
pub(crate) fn judge_json(fetched: &Fetched) -> Judgement<Value> {
    let status = fetched.status;
    if status.is_success() {
        return parse_json(&fetched.body);
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = retry_after(&fetched.headers, Utc::now());
        let problem = match retry_after {
            Some(wait) => format!(
                "throttled, asked to retry after {}",
                humantime::format_duration(wait)
            ),
            None => "throttled without Retry-After".to_string(),
        };
        return Judgement::Throttled {
            problem,
            retry_after,
            until_next_utc_day: false,
        };
    }
    if status.is_server_error() {
        return Judgement::Transient("upstream server error".into());
    }
    if status == StatusCode::NOT_FOUND {
        return Judgement::NotFound("not found".into());
    }
    if status.is_client_error() {
        return Judgement::Permanent("the upstream refused the request".into());
    }
    Judgement::Transient("unexpected HTTP status".into())
}

/// A body parsed as JSON; a body that is not (cut short, an HTML error page) is transient, as
/// it is usually a proxy's or an overloaded server's and may be right next time.
pub(crate) fn parse_json(body: &[u8]) -> Judgement<Value> {
    match serde_json::from_slice(body) {
        Ok(value) => Judgement::Answer(value),
        Err(e) if e.is_eof() => Judgement::Transient(format!("the body is truncated JSON ({e})")),
        Err(e) => Judgement::Transient(format!("the body is not JSON ({e})")),
    }
}

/// The wait a `Retry-After` header asks for: delay-seconds or an HTTP date (relative to
/// `now`), capped at a day; `None` when absent or unreadable.
pub(crate) fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let when = DateTime::parse_from_rfc2822(value).ok()?;
            (when.with_timezone(&Utc) - now)
                .to_std()
                .unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// How long until the next UTC midnight, when a daily quota resets.
pub(crate) fn until_next_utc_day(now: DateTime<Utc>) -> Duration {
    let Some(tomorrow) = now.date_naive().succ_opt() else {
        return MAX_RETRY_AFTER;
    };
    (tomorrow.and_time(NaiveTime::MIN).and_utc() - now)
        .to_std()
        .unwrap_or(Duration::ZERO)
}

/// `url` with the value of every `apikey` (or `api_key`) query parameter replaced by `***`:
/// the only form in which a request appears in errors and logs.
pub fn redact_url(url: &str) -> String {
    let Some((head, rest)) = url.split_once('?') else {
        return url.to_string();
    };
    let (query, fragment) = match rest.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (rest, None),
    };
    let query = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret_param(key) => format!("{key}=***"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&");
    match fragment {
        Some(fragment) => format!("{head}?{query}#{fragment}"),
        None => format!("{head}?{query}"),
    }
}

/// Whether a query parameter carries a secret.
fn is_secret_param(key: &str) -> bool {
    key.eq_ignore_ascii_case("apikey") || key.eq_ignore_ascii_case("api_key")
}

/// The start of a body as one line of text for an error message: tags stripped from HTML
/// (SEC's rate page says what it is in its title and heading), whitespace collapsed, cut at
/// [`EXCERPT_CHARS`].
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(8192)]);
    let text = if text.trim_start().starts_with('<') {
        strip_tags(&text)
    } else {
        text.into_owned()
    };
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// `html` without its tags (each becomes a space so words stay apart).
fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' if in_tag => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

/// `base` with `segments` appended to its path and `query` to its query.
pub(crate) fn endpoint(base: &Url, segments: &[&str], query: &[(&str, &str)]) -> Url {
    let mut url = base.clone();
    // Only URLs that cannot be a base (`mailto:`) refuse path segments; `parse_http_url` let
    // none of those through.
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    url
}

/// `text` as an absolute http(s) URL with a host.
pub(crate) fn parse_http_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("expected an http:// or https:// URL with a host".into());
    }
    Ok(url)
}

/// A reqwest error and its causes on one line, without the URL (which may hold a key or a
/// token). Shared with the alert webhook.
pub(crate) fn chain(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use futures::future::BoxFuture;
    use reqwest::header::HeaderName;
    use serde_json::json;

    use super::*;
    use crate::args::BreakerArgs;
    use crate::upstream::{Blocked, OpenGate};

    /// A response for the classifiers' tests.
    pub(crate) fn fetched(status: u16, headers: &[(&str, &str)], body: &str) -> Fetched {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        Fetched {
            request: "GET http://upstream.test/x".into(),
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: body.as_bytes().to_vec(),
        }
    }

    /// Upstream arguments pointing at `base_url`, with no limits.
    pub(crate) fn args(base_url: &str) -> UpstreamArgs {
        UpstreamArgs {
            base_url: base_url.into(),
            tickers_url: None,
            user_agent: None,
            api_key: None,
            rate_limit: vec![],
            request_timeout: Duration::from_secs(5),
            breaker: BreakerArgs {
                failure_threshold: 5,
                open_for: Duration::from_secs(60),
                max_open_for: Duration::from_secs(600),
            },
            throttle_cooldown: Duration::from_secs(60),
        }
    }

    /// A gate that remembers the verdicts it was told.
    #[derive(Default)]
    struct RecordingGate(Mutex<Vec<Verdict>>);

    impl Gate for RecordingGate {
        fn acquire(&self) -> BoxFuture<'_, Result<(), Blocked>> {
            Box::pin(async { Ok(()) })
        }
        fn report(&self, verdict: Verdict) {
            self.0.lock().unwrap().push(verdict);
        }
    }

    /// Ensures that only the values of key parameters are hidden, wherever they sit.
    #[test]
    fn redact_url_hides_only_keys() {
        assert_eq!(
            redact_url("https://av.test/query?function=OVERVIEW&symbol=IBM&apikey=S3CRET"),
            "https://av.test/query?function=OVERVIEW&symbol=IBM&apikey=***"
        );
        assert_eq!(
            redact_url("http://h/q?APIKEY=a%2Fb&x=1#frag"),
            "http://h/q?APIKEY=***&x=1#frag"
        );
        assert_eq!(redact_url("http://h/q?api_key=k"), "http://h/q?api_key=***");
        assert_eq!(
            redact_url("http://h/chart/CHGG?range=1mo"),
            "http://h/chart/CHGG?range=1mo"
        );
        assert_eq!(redact_url("http://h/no-query"), "http://h/no-query");
    }

    /// Ensures that an excerpt is one short line and that HTML loses its tags.
    #[test]
    fn excerpts_are_short_readable_lines() {
        let page = "<html><head><title>SEC.gov | Request Rate Threshold Exceeded</title></head>\n<body><h1>Slow down</h1></body></html>";
        assert_eq!(
            excerpt(page.as_bytes()),
            "SEC.gov | Request Rate Threshold Exceeded Slow down"
        );
        let long = "x".repeat(1000);
        let cut = excerpt(long.as_bytes());
        assert_eq!(cut.chars().count(), EXCERPT_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(excerpt(b"  {\"a\":\n 1}  "), "{\"a\": 1}");
        assert_eq!(excerpt(b""), "");
    }

    /// Ensures that Retry-After is read as seconds or as an HTTP date, and capped.
    #[test]
    fn retry_after_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2025-11-03T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let of = |v: &str| retry_after(&fetched(429, &[("retry-after", v)], "").headers, now);
        assert_eq!(of("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            of("Mon, 03 Nov 2025 12:00:30 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(of("Mon, 03 Nov 2025 11:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(of("99999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(of("soon"), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    /// Ensures that the shared judgement classifies statuses and bodies as docs/upstreams.md says.
    #[test]
    fn shared_judgement_of_status_and_body() {
        assert_eq!(
            judge_json(&fetched(200, &[], "{\"a\": 1}")),
            Judgement::Answer(json!({"a": 1}))
        );
        assert!(matches!(
            judge_json(&fetched(200, &[], "{\"a\": [1, 2")),
            Judgement::Transient(p) if p.contains("truncated")
        ));
        assert!(matches!(
            judge_json(&fetched(200, &[], "<html>oops</html>")),
            Judgement::Transient(p) if p.contains("not JSON")
        ));
        assert_eq!(
            judge_json(&fetched(429, &[("retry-after", "7")], "")).verdict(),
            Verdict::Throttled {
                retry_after: Some(Duration::from_secs(7)),
                until_next_utc_day: false
            }
        );
        assert_eq!(
            judge_json(&fetched(429, &[], "")).verdict(),
            Verdict::Throttled {
                retry_after: None,
                until_next_utc_day: false
            }
        );
        assert_eq!(
            judge_json(&fetched(500, &[], "")).verdict(),
            Verdict::Transient
        );
        assert_eq!(
            judge_json(&fetched(503, &[], "")).verdict(),
            Verdict::Transient
        );
        assert!(matches!(
            judge_json(&fetched(404, &[], "")),
            Judgement::NotFound(_)
        ));
        assert_eq!(judge_json(&fetched(404, &[], "")).verdict(), Verdict::Ok);
        assert_eq!(
            judge_json(&fetched(400, &[], "")).verdict(),
            Verdict::Permanent
        );
        assert_eq!(
            judge_json(&fetched(401, &[], "")).verdict(),
            Verdict::Permanent
        );
    }

    /// Ensures that a daily quota waits until the next UTC midnight.
    #[test]
    fn next_utc_day() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(
            until_next_utc_day(at("2025-11-03T23:59:00Z")),
            Duration::from_secs(60)
        );
        assert_eq!(
            until_next_utc_day(at("2025-12-31T00:00:00Z")),
            Duration::from_secs(86_400)
        );
    }

    /// Ensures that endpoints append encoded path segments and query pairs to the base URL.
    #[test]
    fn endpoints_extend_the_base() {
        let base = parse_http_url("http://127.0.0.1:9/").unwrap();
        assert_eq!(
            endpoint(
                &base,
                &["v8", "chart", "a/b c"],
                &[("range", "1mo"), ("k", "x&y")]
            )
            .as_str(),
            "http://127.0.0.1:9/v8/chart/a%2Fb%20c?range=1mo&k=x%26y"
        );
        let prefixed = parse_http_url("http://h/api/").unwrap();
        assert_eq!(
            endpoint(&prefixed, &["query"], &[]).as_str(),
            "http://h/api/query"
        );
        assert!(parse_http_url("ftp://h/").is_err());
        assert!(parse_http_url("not a url").is_err());
    }

    /// Ensures that a source without what its upstream requires refuses to be built, saying why.
    #[test]
    fn sources_check_their_requirements() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let build = |name: &str, args: UpstreamArgs| {
            Source::new(name, args, Arc::new(OpenGate), journal.clone())
        };
        let mut sec = args("https://data.sec.gov");
        sec.tickers_url = Some("https://www.sec.gov/files/company_tickers.json".into());
        let err = build("sec", sec.clone()).unwrap_err().to_string();
        assert!(err.contains("user_agent is required"), "{err}");
        sec.user_agent = Some("Example Corp data-team@example.com".into());
        assert!(build("sec", sec).is_ok());
        let err = build("alphavantage", args("https://www.alphavantage.co"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("api_key_env"), "{err}");
        let err = build("yahoo", args("query1.finance.yahoo.com"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("base_url"), "{err}");
    }

    /// Ensures that settling reports the verdict and that errors name task, request and answer
    /// without the key.
    #[test]
    fn settle_reports_and_describes() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let gate = Arc::new(RecordingGate::default());
        let mut av = args("http://av.test");
        av.api_key = Some("K3Y".into());
        let src = Source::new("alphavantage", av, gate.clone(), journal).unwrap();
        let mut answer = fetched(500, &[], "oops K3Y");
        answer.request = format!(
            "GET {}",
            redact_url("http://av.test/query?symbol=IBM&apikey=K3Y")
        );
        let err = src
            .settle("alphavantage.overview", &answer, judge_json(&answer))
            .unwrap_err();
        assert_eq!(
            err,
            TaskError::Transient(
                "alphavantage.overview: upstream server error: GET http://av.test/query?symbol=IBM&apikey=*** \
                 answered HTTP 500 Internal Server Error: \"oops ***\""
                    .into()
            )
        );
        let daily = Judgement::<()>::Throttled {
            problem: "quota".into(),
            retry_after: None,
            until_next_utc_day: true,
        };
        let err = src
            .settle("alphavantage.overview", &answer, daily)
            .unwrap_err();
        assert!(
            matches!(err, TaskError::Throttled { retry_after: Some(d), .. } if d <= Duration::from_secs(86_400)),
            "{err:?}"
        );
        assert_eq!(
            *gate.0.lock().unwrap(),
            vec![
                Verdict::Transient,
                Verdict::Throttled {
                    retry_after: None,
                    until_next_utc_day: true
                }
            ]
        );
    }
}
