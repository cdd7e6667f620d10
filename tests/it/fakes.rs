//! Fake upstreams: one real HTTP server on loopback that answers like SEC EDGAR, Yahoo Finance
//! and Alpha Vantage (the shapes of `docs/upstreams.md`), for tests and for the offline demo.
//!
//! [`FakeUpstream::start`] binds `127.0.0.1:0` and serves, for the companies of [`COMPANIES`]
//! (CHGG, IBM, AAPL, MSFT and twenty more, all data made up but well formed and always the
//! same):
//!
//! - SEC: `/files/company_tickers.json`, `/submissions/CIK##########.json` (six filings: three
//!   10-Q, two 8-K, one 10-K) and `/api/xbrl/companyfacts/CIK##########.json`. Like SEC, it
//!   answers a request without a `User-Agent` with its 403 "Undeclared Automated Tool" page.
//! - Yahoo: `/v8/finance/chart/{ticker}?range=..&interval=..`, every seventh bar `null`.
//! - Alpha Vantage: `/query?function=OVERVIEW|INCOME_STATEMENT&symbol=..&apikey=..`.
//!
//! Unknown tickers get each API's real not-found shape: SEC's 404 `NoSuchKey`, Yahoo's 404 with
//! `chart.error`, Alpha Vantage's `{}`. Every request is recorded on arrival (time, method, path,
//! query, headers: see [`FakeUpstream::requests`]), so a test can check rates and headers from
//! the upstream's side, and the fake can be told to misbehave ([`Failure`]) for the next N
//! requests or until [`FakeUpstream::reset`]:
//!
//! ```ignore
//! let fake = FakeUpstream::start().await;
//! fake.fail_next(3, Failure::Status(500));          // the next 3 requests, any path
//! fake.fail_next_to("/query", 1, Failure::AvNote);  // the next Alpha Vantage request
//! // ... point a pipeline's base_url at fake.base_url() and run jobs ...
//! assert_eq!(fake.requests_to("/submissions/").len(), 2);
//! ```
//!
//! This file depends on nothing but axum, tokio and serde_json, and on no other test module,
//! so that `examples/demo.rs` can include it with `#[path]`.

#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// SEC's ticker → CIK map.
pub const SEC_TICKERS_PATH: &str = "/files/company_tickers.json";
/// Prefix of SEC's submissions (filings) API.
pub const SEC_SUBMISSIONS_PREFIX: &str = "/submissions/";
/// Prefix of SEC's XBRL company facts API.
pub const SEC_FACTS_PREFIX: &str = "/api/xbrl/companyfacts/";
/// Prefix of Yahoo's chart API.
pub const YAHOO_CHART_PREFIX: &str = "/v8/finance/chart/";
/// Alpha Vantage's one endpoint.
pub const AV_QUERY_PATH: &str = "/query";

/// Filings each company has in `/submissions`.
pub const FILINGS_PER_COMPANY: usize = SEC_FILINGS.len();
/// Of which 10-Q.
pub const TEN_Q_PER_COMPANY: usize = 3;
/// Of which filed on or after 2025-06-01.
pub const FILINGS_SINCE_JUNE_2025: usize = 4;
/// Distinct (concept, period end) pairs in each company's facts: Revenues, NetIncomeLoss and
/// Assets at four period ends each, and one share count.
pub const FACT_RECORDS_PER_COMPANY: usize = 13;
/// Of which for `Revenues`.
pub const REVENUE_RECORDS_PER_COMPANY: usize = 4;
/// Bars in a `range=1mo&interval=1d` chart, `null` ones included.
pub const CHART_BARS_1MO: usize = 22;
/// Of which `null` (every seventh, from the fourth).
pub const CHART_NULL_BARS_1MO: usize = 3;
/// Quarterly reports in each income statement.
pub const QUARTERLY_REPORTS: usize = 4;

/// A company the fake knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Company {
    /// Its ticker, upper case.
    pub ticker: &'static str,
    /// Its SEC CIK.
    pub cik: u64,
    /// Its name.
    pub name: &'static str,
}

const fn co(ticker: &'static str, cik: u64, name: &'static str) -> Company {
    Company { ticker, cik, name }
}

/// Every company the fake serves: enough for a batch of twenty tickers.
pub const COMPANIES: &[Company] = &[
    co("CHGG", 1364954, "Chegg, Inc."),
    co("IBM", 51143, "International Business Machines Corp"),
    co("AAPL", 320193, "Apple Inc."),
    co("MSFT", 789019, "Microsoft Corp"),
    co("GOOGL", 1652044, "Alphabet Inc."),
    co("AMZN", 1018724, "Amazon.com, Inc."),
    co("META", 1326801, "Meta Platforms, Inc."),
    co("NVDA", 1045810, "NVIDIA Corp"),
    co("TSLA", 1318605, "Tesla, Inc."),
    co("JPM", 19617, "JPMorgan Chase & Co"),
    co("V", 1403161, "Visa Inc."),
    co("WMT", 104169, "Walmart Inc."),
    co("KO", 21344, "The Coca-Cola Company"),
    co("PEP", 77476, "PepsiCo, Inc."),
    co("INTC", 50863, "Intel Corp"),
    co("CSCO", 858877, "Cisco Systems, Inc."),
    co("ORCL", 1341439, "Oracle Corp"),
    co("NFLX", 1065280, "Netflix, Inc."),
    co("ADBE", 796343, "Adobe Inc."),
    co("CRM", 1108524, "Salesforce, Inc."),
    co("AMD", 2488, "Advanced Micro Devices, Inc."),
    co("QCOM", 804328, "Qualcomm Inc"),
    co("TXN", 97476, "Texas Instruments Inc"),
    co("BA", 12927, "The Boeing Company"),
];

/// The company with this ticker (any case).
pub fn company(ticker: &str) -> Option<&'static Company> {
    COMPANIES
        .iter()
        .find(|c| c.ticker.eq_ignore_ascii_case(ticker))
}

/// The company with this CIK.
pub fn company_by_cik(cik: u64) -> Option<&'static Company> {
    COMPANIES.iter().find(|c| c.cik == cik)
}

/// How the fake misbehaves for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// This HTTP status with a short text body (`Status(500)` for a 5xx burst).
    Status(u16),
    /// The normal answer, after this long (longer than `request_timeout`: a timeout).
    Slow(Duration),
    /// 429 Too Many Requests, with `Retry-After: <seconds>` when given.
    TooMany {
        /// The `Retry-After` header's seconds, if any.
        retry_after: Option<u64>,
    },
    /// SEC's 403 "Request Rate Threshold Exceeded" page.
    SecRateLimited,
    /// Alpha Vantage's per-minute quota: HTTP 200 with `{"Note": ...}`.
    AvNote,
    /// Alpha Vantage's daily quota: HTTP 200 with `{"Information": "... 25 requests per day ..."}`.
    AvDailyLimit,
    /// The normal status and headers (a `Content-Length` for the whole body), then half the
    /// body, then the connection closes.
    Truncated,
    /// HTTP 200 with an HTML error page: not JSON.
    Garbage,
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// When it arrived.
    pub at: Instant,
    /// Its method.
    pub method: Method,
    /// Its path, as sent (percent-encoded).
    pub path: String,
    /// Its query string, if any.
    pub query: Option<String>,
    /// Its headers.
    pub headers: HeaderMap,
}

impl Recorded {
    /// Path and query, as in the request line.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }

    /// The `User-Agent` header, if it was sent as text.
    pub fn user_agent(&self) -> Option<&str> {
        self.headers.get(USER_AGENT)?.to_str().ok()
    }

    /// A query parameter's decoded value.
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_pairs(self.query.as_deref().unwrap_or(""))
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// A failure to inject: for the next `remaining` requests (or all, when `None`) whose path
/// starts with `path_prefix` (or any path).
#[derive(Debug, Clone)]
struct Rule {
    failure: Failure,
    remaining: Option<usize>,
    path_prefix: Option<String>,
}

/// What the server and its handle share.
#[derive(Debug, Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    rules: Mutex<Vec<Rule>>,
}

impl Shared {
    /// The failure for a request to `path`, using up one turn of the first rule that applies.
    fn take_failure(&self, path: &str) -> Option<Failure> {
        let mut rules = lock(&self.rules);
        let index = rules.iter().position(|rule| {
            rule.path_prefix
                .as_deref()
                .is_none_or(|prefix| path.starts_with(prefix))
        })?;
        let failure = rules[index].failure.clone();
        if let Some(remaining) = &mut rules[index].remaining {
            *remaining -= 1;
            if *remaining == 0 {
                rules.remove(index);
            }
        }
        Some(failure)
    }
}

/// Locks a mutex, ignoring poisoning: a test that panicked while holding it has failed
/// anyway, and the data (a list) is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running fake upstream. Dropping it stops accepting connections.
#[derive(Debug)]
pub struct FakeUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeUpstream {
    /// Starts a fake on `127.0.0.1:0`.
    ///
    /// # Panics
    /// When no loopback port can be bound: a test cannot run without one.
    pub async fn start() -> FakeUpstream {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind a loopback port for the fake upstream")
    }

    /// Starts a fake on `addr` (the demo uses a fixed port).
    pub async fn start_at(addr: SocketAddr) -> io::Result<FakeUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .fallback(serve)
            .with_state(shared.clone())
            .into_make_service_with_connect_info::<Conn>();
        let server = tokio::spawn(async move {
            // Only fails if accepting fails for good; the tests then see connection errors.
            let _ = axum::serve(CuttingListener(listener), app).await;
        });
        Ok(FakeUpstream {
            addr,
            shared,
            server,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: every pipeline's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The SEC pipeline's `tickers_url`.
    pub fn tickers_url(&self) -> String {
        format!("{}{SEC_TICKERS_PATH}", self.base_url())
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    /// The requests whose path starts with `path_prefix`, in arrival order.
    pub fn requests_to(&self, path_prefix: &str) -> Vec<Recorded> {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.path.starts_with(path_prefix))
            .cloned()
            .collect()
    }

    /// When the requests whose path starts with `path_prefix` arrived, in order.
    pub fn arrivals_to(&self, path_prefix: &str) -> Vec<Instant> {
        self.requests_to(path_prefix).iter().map(|r| r.at).collect()
    }

    /// Forgets the requests received so far.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Answers the next `n` requests (any path) with `failure`, after failures queued before.
    pub fn fail_next(&self, n: usize, failure: Failure) {
        self.push_rule(failure, Some(n), None);
    }

    /// Answers the next `n` requests whose path starts with `path_prefix` with `failure`.
    pub fn fail_next_to(&self, path_prefix: &str, n: usize, failure: Failure) {
        self.push_rule(failure, Some(n), Some(path_prefix.to_string()));
    }

    /// Answers every request with `failure` until [`reset`](FakeUpstream::reset).
    pub fn fail_always(&self, failure: Failure) {
        self.push_rule(failure, None, None);
    }

    /// Answers every request whose path starts with `path_prefix` with `failure` until
    /// [`reset`](FakeUpstream::reset).
    pub fn fail_always_to(&self, path_prefix: &str, failure: Failure) {
        self.push_rule(failure, None, Some(path_prefix.to_string()));
    }

    /// Drops every queued failure: the fake answers normally again.
    pub fn reset(&self) {
        lock(&self.shared.rules).clear();
    }

    fn push_rule(&self, failure: Failure, remaining: Option<usize>, path_prefix: Option<String>) {
        if remaining == Some(0) {
            return;
        }
        lock(&self.shared.rules).push(Rule {
            failure,
            remaining,
            path_prefix,
        });
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

// ===== Serving =====

/// Every request: record it, apply the failure due, else answer as the real API would.
async fn serve(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    lock(&shared.requests).push(Recorded {
        at: Instant::now(),
        method,
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        headers: headers.clone(),
    });
    let failure = shared.take_failure(uri.path());
    if let Some(Failure::Slow(delay)) = failure {
        tokio::time::sleep(delay).await;
    }
    let normal = answer(uri.path(), uri.query().unwrap_or(""), &headers);
    match failure {
        None | Some(Failure::Slow(_)) => normal.into_response(),
        Some(failure) => fail(failure, normal, &conn),
    }
}

/// A complete answer before any failure is applied.
struct Answer {
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Answer {
    fn json(status: StatusCode, value: &Value) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
        }
    }

    fn text(status: StatusCode, content_type: &'static str, body: &str) -> Answer {
        Answer {
            status,
            content_type,
            body: body.as_bytes().to_vec(),
        }
    }

    fn into_response(self) -> Response {
        (self.status, [(CONTENT_TYPE, self.content_type)], self.body).into_response()
    }
}

/// The answer of the real API at `path`.
fn answer(path: &str, query: &str, headers: &HeaderMap) -> Answer {
    let is_sec = path == SEC_TICKERS_PATH
        || path.starts_with(SEC_SUBMISSIONS_PREFIX)
        || path.starts_with(SEC_FACTS_PREFIX);
    if is_sec && headers.get(USER_AGENT).is_none_or(|ua| ua.is_empty()) {
        return Answer::text(StatusCode::FORBIDDEN, "text/html", SEC_UNDECLARED_PAGE);
    }
    if path == SEC_TICKERS_PATH {
        return Answer::json(StatusCode::OK, &tickers_json());
    }
    if let Some(file) = path.strip_prefix(SEC_SUBMISSIONS_PREFIX) {
        return match cik_in(file).and_then(company_by_cik) {
            Some(c) => Answer::json(StatusCode::OK, &submissions_json(c)),
            None => Answer::text(StatusCode::NOT_FOUND, "application/xml", SEC_NO_SUCH_KEY),
        };
    }
    if let Some(file) = path.strip_prefix(SEC_FACTS_PREFIX) {
        return match cik_in(file).and_then(company_by_cik) {
            Some(c) => Answer::json(StatusCode::OK, &facts_json(c)),
            None => Answer::text(StatusCode::NOT_FOUND, "application/xml", SEC_NO_SUCH_KEY),
        };
    }
    if let Some(ticker) = path.strip_prefix(YAHOO_CHART_PREFIX) {
        let params = query_pairs(query);
        let param = |name: &str, default: &'static str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map_or(default.to_string(), |(_, v)| v.clone())
        };
        return match company(&percent_decode(ticker)) {
            Some(c) => Answer::json(
                StatusCode::OK,
                &chart_json(c, &param("range", "1mo"), &param("interval", "1d")),
            ),
            None => Answer::json(
                StatusCode::NOT_FOUND,
                &json!({"chart": {"result": null, "error": {
                    "code": "Not Found",
                    "description": "No data found, symbol may be delisted"
                }}}),
            ),
        };
    }
    if path == AV_QUERY_PATH {
        return Answer::json(StatusCode::OK, &alphavantage_json(&query_pairs(query)));
    }
    Answer::text(
        StatusCode::NOT_FOUND,
        "text/plain",
        "fake upstream: no such path",
    )
}

/// The answer `failure` makes of the `normal` one, on connection `conn`.
fn fail(failure: Failure, normal: Answer, conn: &Conn) -> Response {
    match failure {
        Failure::Status(code) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [(CONTENT_TYPE, "text/plain")],
            format!("fake upstream: injected HTTP {code}"),
        )
            .into_response(),
        Failure::TooMany { retry_after } => {
            let mut response = (
                StatusCode::TOO_MANY_REQUESTS,
                [(CONTENT_TYPE, "text/plain")],
                "Too Many Requests",
            )
                .into_response();
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(secs));
            }
            response
        }
        Failure::SecRateLimited => {
            Answer::text(StatusCode::FORBIDDEN, "text/html", SEC_RATE_PAGE).into_response()
        }
        Failure::AvNote => {
            Answer::json(StatusCode::OK, &json!({ "Note": AV_NOTE })).into_response()
        }
        Failure::AvDailyLimit => {
            Answer::json(StatusCode::OK, &json!({ "Information": AV_DAILY })).into_response()
        }
        Failure::Truncated => {
            // The whole answer, Content-Length and all, but the connection lets only half the
            // body through and then closes: the client sees a body cut off in the middle.
            conn.cut_after_head(normal.body.len() / 2);
            normal.into_response()
        }
        Failure::Garbage => Answer::text(
            StatusCode::OK,
            "text/html",
            "<html><body><h1>Service Unavailable</h1><p>The gateway is busy.</p></body></html>",
        )
        .into_response(),
        Failure::Slow(_) => normal.into_response(),
    }
}

// ===== Connections that can be cut short =====
//
// hyper writes a response whole or, when the body stream ends early, drops it before sending
// anything, so a body cut in the middle has to be made below HTTP: each connection's stream
// lets a handler say "after the next response head, let N body bytes through, then fail".

/// The fake's listener: loopback TCP whose connections handlers can cut short.
struct CuttingListener(TcpListener);

impl Listener for CuttingListener {
    type Io = CuttableStream;
    type Addr = Conn;

    async fn accept(&mut self) -> (CuttableStream, Conn) {
        loop {
            match self.0.accept().await {
                Ok((inner, _)) => {
                    let conn = Conn::default();
                    let stream = CuttableStream {
                        inner,
                        conn: conn.clone(),
                    };
                    return (stream, conn);
                }
                // Out of file descriptors and the like: wait rather than spin, as axum does.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Conn> {
        self.0.local_addr()?;
        Ok(Conn::default())
    }
}

/// A connection as its handlers see it (through `ConnectInfo`): the switch that cuts it.
#[derive(Debug, Clone, Default)]
struct Conn(Arc<Mutex<Cut>>);

impl Conn {
    /// Lets the next response head through, then `body_bytes` of its body, then fails.
    fn cut_after_head(&self, body_bytes: usize) {
        *lock(&self.0) = Cut::Head {
            body_bytes,
            matched: 0,
        };
    }
}

impl Connected<IncomingStream<'_, CuttingListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, CuttingListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Where a connection is in cutting a response short.
#[derive(Debug, Clone, Copy, Default)]
enum Cut {
    /// Not cutting: everything goes through.
    #[default]
    Off,
    /// Waiting for the end of the head (`matched` bytes of `\r\n\r\n` seen so far).
    Head { body_bytes: usize, matched: usize },
    /// In the body, `left` bytes still allowed.
    Body { left: usize },
    /// Cut: every write fails, so hyper closes the connection.
    Done,
}

/// The end of an HTTP head.
const HEAD_END: &[u8; 4] = b"\r\n\r\n";

/// How many bytes of [`HEAD_END`] are matched after `byte`, `matched` being matched before.
fn match_head_end(matched: usize, byte: u8) -> usize {
    if byte == HEAD_END[matched] {
        matched + 1
    } else if byte == b'\r' {
        1
    } else {
        0
    }
}

impl Cut {
    /// How many bytes of `buf` may be written now; `None` once cut.
    fn allowance(self, buf: &[u8]) -> Option<usize> {
        match self {
            Cut::Off => Some(buf.len()),
            Cut::Done => None,
            Cut::Body { left } => Some(left.min(buf.len())),
            Cut::Head {
                body_bytes,
                mut matched,
            } => {
                for (i, &byte) in buf.iter().enumerate() {
                    matched = match_head_end(matched, byte);
                    if matched == HEAD_END.len() {
                        return Some((i + 1 + body_bytes).min(buf.len()));
                    }
                }
                Some(buf.len())
            }
        }
    }

    /// Moves on past `written`, which was at most the allowance.
    fn advance(&mut self, written: &[u8]) {
        match *self {
            Cut::Head {
                body_bytes,
                mut matched,
            } => {
                for (i, &byte) in written.iter().enumerate() {
                    matched = match_head_end(matched, byte);
                    if matched == HEAD_END.len() {
                        let left = body_bytes.saturating_sub(written.len() - (i + 1));
                        *self = if left == 0 {
                            Cut::Done
                        } else {
                            Cut::Body { left }
                        };
                        return;
                    }
                }
                *self = Cut::Head {
                    body_bytes,
                    matched,
                };
            }
            Cut::Body { left } => {
                let left = left.saturating_sub(written.len());
                *self = if left == 0 {
                    Cut::Done
                } else {
                    Cut::Body { left }
                };
            }
            Cut::Off | Cut::Done => {}
        }
    }
}

/// A TCP stream that obeys its [`Conn`]'s cut. It does not offer vectored writes, so hyper
/// writes through `poll_write` only and every byte is counted.
struct CuttableStream {
    inner: TcpStream,
    conn: Conn,
}

impl AsyncRead for CuttableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CuttableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let cut = *lock(&this.conn.0);
        let Some(allowed) = cut.allowance(buf) else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "fake upstream: response cut short on purpose",
            )));
        };
        let written = match Pin::new(&mut this.inner).poll_write(cx, &buf[..allowed]) {
            Poll::Ready(Ok(written)) => written,
            other => return other,
        };
        lock(&this.conn.0).advance(&buf[..written]);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

// ===== Canned pages =====

/// SEC's throttling page (403).
pub const SEC_RATE_PAGE: &str = "<!DOCTYPE html>
<html lang=\"en\"><head><title>SEC.gov | Request Rate Threshold Exceeded</title></head>
<body><h1>Request Rate Threshold Exceeded</h1>
<p>Your request rate has exceeded the fair access limit of 10 requests per second.
To allow for equitable access to all users, SEC reserves the right to limit requests
originating from undeclared automated tools. Your request has been identified as part of a
network of automated tools outside of the acceptable policy and will be managed until action
is taken to declare your traffic.</p>
<p>Please declare your traffic by updating your user agent to include company specific
information.</p></body></html>";

/// SEC's page for requests without a declared User-Agent (403).
pub const SEC_UNDECLARED_PAGE: &str = "<!DOCTYPE html>
<html lang=\"en\"><head><title>SEC.gov | Your Request Originates from an Undeclared Automated Tool</title></head>
<body><h1>Your Request Originates from an Undeclared Automated Tool</h1>
<p>Please declare your traffic by updating your user agent to include company specific
information.</p></body></html>";

/// SEC's answer for a CIK it does not have (404, from its storage).
pub const SEC_NO_SUCH_KEY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>
<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>";

/// Alpha Vantage's per-minute quota note.
pub const AV_NOTE: &str = "Thank you for using Alpha Vantage! Our standard API call frequency \
    is 5 calls per minute and 25 calls per day. Please visit \
    https://www.alphavantage.co/premium/ if you would like to target a higher API call frequency.";

/// Alpha Vantage's daily quota note.
pub const AV_DAILY: &str = "We have detected your API key as DEMO and our standard API rate \
    limit is 25 requests per day. Please subscribe to any of the premium plans at \
    https://www.alphavantage.co/premium/ to instantly remove all daily rate limits.";

// ===== SEC data =====

/// One filing of every company.
struct Filing {
    form: &'static str,
    filed: &'static str,
    /// The period of report.
    report: &'static str,
}

const fn filing(form: &'static str, filed: &'static str, report: &'static str) -> Filing {
    Filing {
        form,
        filed,
        report,
    }
}

/// Each company's filings, newest first as SEC lists them.
const SEC_FILINGS: [Filing; 6] = [
    filing("10-Q", "2025-11-03", "2025-09-30"),
    filing("8-K", "2025-09-15", "2025-09-15"),
    filing("10-Q", "2025-08-04", "2025-06-30"),
    filing("8-K", "2025-06-20", "2025-06-18"),
    filing("10-Q", "2025-05-05", "2025-03-31"),
    filing("10-K", "2025-02-14", "2024-12-31"),
];

/// The accession number of a company's filing at `index` of [`SEC_FILINGS`].
fn accession(c: &Company, index: usize) -> String {
    format!("{:010}-25-{:06}", c.cik, 100 - index)
}

/// The accession number of the filing a company filed on `filed`.
fn accession_filed(c: &Company, filed: &str) -> String {
    let index = SEC_FILINGS
        .iter()
        .position(|f| f.filed == filed)
        .unwrap_or(0);
    accession(c, index)
}

/// `CIK0001364954.json` → 1364954.
fn cik_in(file: &str) -> Option<u64> {
    file.strip_prefix("CIK")?
        .strip_suffix(".json")?
        .parse()
        .ok()
}

fn tickers_json() -> Value {
    let entries = COMPANIES.iter().enumerate().map(|(i, c)| {
        (
            i.to_string(),
            json!({"cik_str": c.cik, "ticker": c.ticker, "title": c.name}),
        )
    });
    Value::Object(entries.collect())
}

fn submissions_json(c: &Company) -> Value {
    let column = |f: &dyn Fn(usize, &Filing) -> Value| {
        Value::Array(
            SEC_FILINGS
                .iter()
                .enumerate()
                .map(|(i, filing)| f(i, filing))
                .collect(),
        )
    };
    let lower = c.ticker.to_ascii_lowercase();
    json!({
        "cik": c.cik.to_string(),
        "entityType": "operating",
        "name": c.name,
        "tickers": [c.ticker],
        "exchanges": ["Nasdaq"],
        "filings": {
            "recent": {
                "accessionNumber": column(&|i, _| json!(accession(c, i))),
                "filingDate": column(&|_, f| json!(f.filed)),
                "reportDate": column(&|_, f| json!(f.report)),
                "acceptanceDateTime": column(&|_, f| json!(format!("{}T16:05:00.000Z", f.filed))),
                "act": column(&|_, _| json!("34")),
                "form": column(&|_, f| json!(f.form)),
                "items": column(&|_, f| json!(if f.form == "8-K" { "2.02,9.01" } else { "" })),
                "size": column(&|i, _| json!(250_000 + i * 1_000)),
                "isXBRL": column(&|_, _| json!(1)),
                "isInlineXBRL": column(&|_, _| json!(1)),
                "primaryDocument": column(&|_, f| {
                    let kind = if f.form == "8-K" { "8k" } else { "" };
                    json!(format!("{lower}{kind}-{}.htm", f.report.replace('-', "")))
                }),
                "primaryDocDescription": column(&|_, f| json!(f.form)),
            },
            "files": []
        }
    })
}

/// A duration a flow concept (revenue, income) is reported for.
struct Period {
    start: &'static str,
    end: &'static str,
    fp: &'static str,
    form: &'static str,
    filed: &'static str,
    frame: Option<&'static str>,
    /// How many quarters it spans, which scales its value.
    quarters: i64,
}

const fn period(
    start: &'static str,
    end: &'static str,
    fp: &'static str,
    form: &'static str,
    filed: &'static str,
    frame: Option<&'static str>,
    quarters: i64,
) -> Period {
    Period {
        start,
        end,
        fp,
        form,
        filed,
        frame,
        quarters,
    }
}

/// The periods of every flow concept. The year-to-date periods share their end with a
/// quarter, as in real filings, so one (concept, end) record holds both.
#[rustfmt::skip]
const FLOW_PERIODS: [Period; 6] = [
    period("2024-01-01", "2024-12-31", "FY", "10-K", "2025-02-14", Some("CY2024"), 4),
    period("2025-01-01", "2025-03-31", "Q1", "10-Q", "2025-05-05", Some("CY2025Q1"), 1),
    period("2025-04-01", "2025-06-30", "Q2", "10-Q", "2025-08-04", Some("CY2025Q2"), 1),
    period("2025-01-01", "2025-06-30", "Q2", "10-Q", "2025-08-04", None, 2),
    period("2025-07-01", "2025-09-30", "Q3", "10-Q", "2025-11-03", Some("CY2025Q3"), 1),
    period("2025-01-01", "2025-09-30", "Q3", "10-Q", "2025-11-03", None, 3),
];

/// Balance sheet dates: (end, fp, form, filed).
const INSTANTS: [(&str, &str, &str, &str); 4] = [
    ("2024-12-31", "FY", "10-K", "2025-02-14"),
    ("2025-03-31", "Q1", "10-Q", "2025-05-05"),
    ("2025-06-30", "Q2", "10-Q", "2025-08-04"),
    ("2025-09-30", "Q3", "10-Q", "2025-11-03"),
];

/// A size for a company's made-up figures, different per company.
fn scale(c: &Company) -> i64 {
    i64::try_from(c.cik % 97 + 3).unwrap_or(3) * 1_000_000
}

fn facts_json(c: &Company) -> Value {
    let flow = |per_quarter: i64| {
        let facts: Vec<Value> = FLOW_PERIODS
            .iter()
            .map(|p| {
                let mut fact = json!({
                    "start": p.start, "end": p.end, "val": per_quarter * p.quarters,
                    "accn": accession_filed(c, p.filed), "fy": fiscal_year(p.filed), "fp": p.fp,
                    "form": p.form, "filed": p.filed,
                });
                if let Some(frame) = p.frame {
                    fact["frame"] = json!(frame);
                }
                fact
            })
            .collect();
        json!({ "USD": facts })
    };
    let assets: Vec<Value> = INSTANTS
        .iter()
        .enumerate()
        .map(|(i, (end, fp, form, filed))| {
            json!({
                "end": end, "val": scale(c) * (40 + i64::try_from(i).unwrap_or(0)),
                "accn": accession_filed(c, filed), "fy": fiscal_year(filed), "fp": fp,
                "form": form, "filed": filed,
            })
        })
        .collect();
    json!({
        "cik": c.cik,
        "entityName": c.name,
        "facts": {
            "dei": {
                "EntityCommonStockSharesOutstanding": {
                    "label": "Entity Common Stock, Shares Outstanding",
                    "description": "Number of shares of common stock outstanding.",
                    "units": {"shares": [{
                        "end": "2025-10-24", "val": scale(c) / 10,
                        "accn": accession_filed(c, "2025-11-03"), "fy": 2025, "fp": "Q3",
                        "form": "10-Q", "filed": "2025-11-03", "frame": "CY2025Q3I"
                    }]}
                }
            },
            "us-gaap": {
                "Revenues": {
                    "label": "Revenues",
                    "description": "Amount of revenue recognized.",
                    "units": flow(scale(c) * 3)
                },
                "NetIncomeLoss": {
                    "label": "Net Income (Loss) Attributable to Parent",
                    "description": "The portion of profit or loss attributable to the parent.",
                    "units": flow(scale(c) / 2)
                },
                "Assets": {
                    "label": "Assets",
                    "description": "Sum of the carrying amounts of all assets.",
                    "units": {"USD": assets}
                }
            }
        }
    })
}

/// The fiscal year a filing made on `filed` reports on (the 10-K of February covers the
/// year before).
fn fiscal_year(filed: &str) -> i64 {
    if filed < "2025-03-01" {
        2024
    } else {
        2025
    }
}

// ===== Yahoo data =====

/// The last trading day the fake has bars for: Friday 2025-11-28, as days since 1970-01-01.
const LAST_DAY: i64 = 20_420;

/// 09:30 in New York (EST), when Yahoo stamps a daily bar, in seconds after UTC midnight.
const SESSION_OPEN_UTC: i64 = 14 * 3600 + 30 * 60;

/// Bars a range holds, at one per trading day.
fn bars_in(range: &str) -> usize {
    match range {
        "1d" => 1,
        "5d" => 5,
        "1mo" => CHART_BARS_1MO,
        "3mo" => 64,
        "6mo" => 127,
        "ytd" => 229,
        "1y" => 251,
        _ => 502,
    }
}

/// Seconds between bars of an interval other than a day.
fn step_of(interval: &str) -> i64 {
    match interval {
        "1m" => 60,
        "2m" => 120,
        "5m" => 300,
        "15m" => 900,
        "30m" => 1800,
        "60m" | "1h" => 3600,
        "90m" => 5400,
        "5d" => 5 * 86_400,
        "1wk" => 7 * 86_400,
        "1mo" => 30 * 86_400,
        "3mo" => 91 * 86_400,
        _ => 86_400,
    }
}

/// The timestamps of `count` bars ending on [`LAST_DAY`], oldest first: weekdays at the
/// session's open for `1d`, evenly spaced otherwise.
fn bar_times(count: usize, interval: &str) -> Vec<i64> {
    let last = LAST_DAY * 86_400 + SESSION_OPEN_UTC;
    let mut times = Vec::with_capacity(count);
    if interval == "1d" {
        let mut day = LAST_DAY;
        while times.len() < count {
            // 1970-01-01 was a Thursday: day % 7 is 2 on Saturdays and 3 on Sundays.
            if !matches!(day.rem_euclid(7), 2 | 3) {
                times.push(day * 86_400 + SESSION_OPEN_UTC);
            }
            day -= 1;
        }
    } else {
        let step = step_of(interval);
        let mut at = last;
        for _ in 0..count {
            times.push(at);
            at -= step;
        }
    }
    times.reverse();
    times
}

fn chart_json(c: &Company, range: &str, interval: &str) -> Value {
    let times = bar_times(bars_in(range), interval);
    let base_cents = 500 + i64::try_from(c.cik % 500).unwrap_or(0) * 20;
    let price = |i: usize, offset: i64| -> Value {
        if i % 7 == 3 {
            return Value::Null;
        }
        let cents = base_cents + i64::try_from(i).unwrap_or(0) * 10 + offset;
        // Cents as integers, divided once, so every price prints with at most two decimals.
        json!(cents as f64 / 100.0)
    };
    let series =
        |offset: i64| -> Vec<Value> { (0..times.len()).map(|i| price(i, offset)).collect() };
    let volume: Vec<Value> = (0..times.len())
        .map(|i| {
            if i % 7 == 3 {
                Value::Null
            } else {
                json!(1_000_000 + i * 1_000)
            }
        })
        .collect();
    let last_close = series(5).into_iter().rev().find(|v| !v.is_null());
    json!({"chart": {"result": [{
        "meta": {
            "currency": "USD", "symbol": c.ticker, "exchangeName": "NMS",
            "instrumentType": "EQUITY", "gmtoffset": -18000, "timezone": "EST",
            "exchangeTimezoneName": "America/New_York", "regularMarketPrice": last_close,
            "dataGranularity": interval, "range": range
        },
        "timestamp": times,
        "indicators": {
            "quote": [{
                "open": series(0), "high": series(15), "low": series(-10),
                "close": series(5), "volume": volume
            }],
            "adjclose": [{"adjclose": series(5)}]
        }
    }], "error": null}})
}

// ===== Alpha Vantage data =====

/// Quarter ends of the income statements, newest first.
const QUARTERS: [&str; QUARTERLY_REPORTS] =
    ["2025-09-30", "2025-06-30", "2025-03-31", "2024-12-31"];

fn alphavantage_json(params: &[(String, String)]) -> Value {
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    if param("apikey").is_none() {
        return json!({"Error Message": "the parameter apikey is invalid or missing. Please claim \
            your free API key on (https://www.alphavantage.co/support/#api-key). It should take \
            less than 20 seconds."});
    }
    let function = param("function").unwrap_or_default();
    if !matches!(function, "OVERVIEW" | "INCOME_STATEMENT") {
        return json!({"Error Message": format!("This API function ({function}) does not exist.")});
    }
    let Some(symbol) = param("symbol") else {
        return json!({"Error Message": format!("Invalid API call. Please retry or visit the \
            documentation (https://www.alphavantage.co/documentation/) for {function}.")});
    };
    // Alpha Vantage answers an unknown symbol with an empty object.
    let Some(c) = company(symbol) else {
        return json!({});
    };
    let s = scale(c);
    if function == "OVERVIEW" {
        return json!({
            "Symbol": c.ticker, "AssetType": "Common Stock", "Name": c.name,
            "Description": format!("{} is a company whose figures the fake upstream made up.", c.name),
            "CIK": c.cik.to_string(), "Exchange": "NASDAQ", "Currency": "USD", "Country": "USA",
            "Sector": "TECHNOLOGY", "Industry": "SERVICES-PREPACKAGED SOFTWARE",
            "FiscalYearEnd": "December", "LatestQuarter": "2025-09-30",
            "MarketCapitalization": (s * 40).to_string(), "PERatio": "21.5", "EPS": "3.10",
            "DividendYield": "0.012", "52WeekHigh": "48.20", "52WeekLow": "21.75"
        });
    }
    let report = |end: &str, quarters: i64| {
        json!({
            "fiscalDateEnding": end, "reportedCurrency": "USD",
            "totalRevenue": (s * 3 * quarters).to_string(),
            "costOfRevenue": (s * quarters).to_string(),
            "grossProfit": (s * 2 * quarters).to_string(),
            "operatingIncome": (s * quarters * 3 / 4).to_string(),
            "netIncome": (s * quarters / 2).to_string(),
            "ebitda": (s * quarters).to_string()
        })
    };
    json!({
        "symbol": c.ticker,
        "annualReports": [report("2024-12-31", 4), report("2023-12-31", 4)],
        "quarterlyReports": QUARTERS.iter().map(|end| report(end, 1)).collect::<Vec<_>>()
    })
}

// ===== Query strings =====

/// `a=1&b=x%20y` → `[("a", "1"), ("b", "x y")]`.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` (a space in a query).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
