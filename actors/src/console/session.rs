//! Who may see the console and act through it: the `Host` check (against DNS rebinding), the
//! session cookie with its CSRF token, the login form when `[admin] token` is set, and the
//! one-shot messages an action leaves for the page it redirects to.
//!
//! Sessions live in memory (a restart logs everyone out): a random id in an `HttpOnly`,
//! `SameSite=Strict` cookie names one, and each holds its own CSRF token, which every form
//! carries and every POST must send back. The token itself never goes into a cookie.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tracing::warn;

use super::{layout, ConsoleCtx};

/// The session cookie's name.
const COOKIE: &str = "warden_console";
/// Sessions kept at most; beyond it the one idle the longest is dropped.
const MAX_SESSIONS: usize = 4096;
/// A session unused this long is forgotten (its browser logs in again).
const IDLE_LIMIT: Duration = Duration::from_secs(12 * 3600);

/// A message for the next page a browser sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    /// Whether it reports a failure.
    pub error: bool,
    /// What to say.
    pub text: String,
}

/// The session of one request, as handlers see it.
#[derive(Debug, Clone)]
pub struct Session {
    /// Its id (the cookie's value).
    pub id: String,
    /// The token forms carry.
    pub csrf: String,
    /// Logged in (always true without `[admin] token`).
    pub authed: bool,
}

#[derive(Debug)]
struct Entry {
    csrf: String,
    authed: bool,
    seen: Instant,
    flash: Option<Flash>,
}

/// Every session of the console.
#[derive(Default)]
pub(super) struct Sessions(Mutex<HashMap<String, Entry>>);

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live session `id`, touched.
    fn get(&self, id: &str) -> Option<Session> {
        let mut map = self.lock();
        let e = map.get_mut(id)?;
        if e.seen.elapsed() > IDLE_LIMIT {
            map.remove(id);
            return None;
        }
        e.seen = Instant::now();
        Some(Session {
            id: id.to_string(),
            csrf: e.csrf.clone(),
            authed: e.authed,
        })
    }

    /// A new session, dropping the one idle the longest when full.
    fn create(&self, authed: bool) -> Session {
        let mut map = self.lock();
        if map.len() >= MAX_SESSIONS {
            // Anonymous sessions go first, so that a flood of cookie-less requests cannot log
            // an operator out.
            let victim = map
                .iter()
                .min_by_key(|(_, e)| (e.authed, e.seen))
                .map(|(k, _)| k.clone());
            if let Some(k) = victim {
                map.remove(&k);
            }
        }
        let s = Session {
            id: random_hex(),
            csrf: random_hex(),
            authed,
        };
        map.insert(
            s.id.clone(),
            Entry {
                csrf: s.csrf.clone(),
                authed,
                seen: Instant::now(),
                flash: None,
            },
        );
        s
    }

    fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Leaves `flash` for the session's next page.
    pub(super) fn flash(&self, id: &str, flash: Flash) {
        if let Some(e) = self.lock().get_mut(id) {
            e.flash = Some(flash);
        }
    }

    /// Takes the session's message, if any.
    pub(super) fn take_flash(&self, id: &str) -> Option<Flash> {
        self.lock().get_mut(id).and_then(|e| e.flash.take())
    }
}

/// 128 random bits as hex.
fn random_hex() -> String {
    rand::random::<[u8; 16]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(resp: &mut Response, id: &str) {
    let value = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict");
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Whether the request's `Host` names this console: an IP literal, `localhost`, or one of
/// `[console] allowed_hosts`. A name a DNS-rebinding page made resolve to loopback is none.
fn host_allowed(allowed_hosts: &[String], headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.parse::<IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether a browser says the request came from another site (`Sec-Fetch-Site`); requests
/// without the header (scripts, old browsers) rely on the CSRF token alone.
fn cross_site(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !matches!(v, "same-origin" | "none"))
}

/// The middleware in front of every route: the `Host` check, the session (created on first
/// sight), the login gate, and cross-site POSTs refused.
pub(super) async fn guard(
    State(ctx): State<Arc<ConsoleCtx>>,
    mut req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    if !host_allowed(&ctx.args.allowed_hosts, headers) {
        return (
            StatusCode::FORBIDDEN,
            "this Host is not allowed: add it to [console] allowed_hosts",
        )
            .into_response();
    }
    if req.method() == Method::POST && cross_site(headers) {
        return (StatusCode::FORBIDDEN, "cross-site request refused").into_response();
    }
    let known = cookie(headers, COOKIE).and_then(|id| ctx.sessions.get(id));
    let fresh = known.is_none();
    let session = known.unwrap_or_else(|| ctx.sessions.create(!ctx.needs_login()));
    let path = req.uri().path().to_string();
    let open = path == "/login" || path.starts_with("/assets/");
    let mut resp = if session.authed || open {
        req.extensions_mut().insert(session.clone());
        next.run(req).await
    } else if req.method() == Method::GET {
        let target = req.uri().path_and_query().map(|p| p.to_string());
        layout::login(
            &ctx,
            &session,
            target.as_deref(),
            None,
            StatusCode::UNAUTHORIZED,
        )
    } else {
        (
            StatusCode::UNAUTHORIZED,
            "log in first: this console needs the admin token",
        )
            .into_response()
    };
    if fresh && !resp.headers().contains_key(header::SET_COOKIE) {
        set_cookie(&mut resp, &session.id);
    }
    resp
}

/// Why a POST may not act.
pub(super) fn refuse_action(ctx: &ConsoleCtx, session: &Session, csrf: &str) -> Option<Response> {
    if ctx.args.read_only {
        return Some(
            (
                StatusCode::FORBIDDEN,
                "this console is read-only ([console] read_only = true)",
            )
                .into_response(),
        );
    }
    if !csrf_matches(session, csrf) {
        return Some(
            (
                StatusCode::FORBIDDEN,
                "missing or stale form token (CSRF): reload the page and try again",
            )
                .into_response(),
        );
    }
    None
}

fn csrf_matches(session: &Session, csrf: &str) -> bool {
    !csrf.is_empty() && bool::from(csrf.as_bytes().ct_eq(session.csrf.as_bytes()))
}

/// A path on this console to go back to: relative, so a form cannot redirect elsewhere.
pub(super) fn local_path(back: Option<&str>) -> String {
    match back {
        Some(p) if p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') => p.into(),
        _ => "/".into(),
    }
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: Option<String>,
}

/// `POST /login`: checks the admin token; a good one gets a fresh, logged-in session.
pub(super) async fn login(
    State(ctx): State<Arc<ConsoleCtx>>,
    Extension(session): Extension<Session>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = local_path(form.next.as_deref());
    let Some(expected) = ctx.admin.limits.token.as_deref() else {
        return Redirect::to(&next).into_response();
    };
    if !csrf_matches(&session, &form.csrf) {
        let msg = "the form was stale; try again";
        return layout::login(
            &ctx,
            &session,
            Some(&next),
            Some(msg),
            StatusCode::FORBIDDEN,
        );
    }
    if !bool::from(form.token.as_bytes().ct_eq(expected.as_bytes())) {
        warn!(%peer, reason = "wrong token", "console login rejected");
        let msg = "wrong token";
        return layout::login(
            &ctx,
            &session,
            Some(&next),
            Some(msg),
            StatusCode::UNAUTHORIZED,
        );
    }
    // A new id on login, so a session id planted before it is worth nothing after.
    ctx.sessions.remove(&session.id);
    let fresh = ctx.sessions.create(true);
    let mut resp = Redirect::to(&next).into_response();
    set_cookie(&mut resp, &fresh.id);
    resp
}

/// The logout form's fields.
#[derive(Debug, Deserialize)]
pub(super) struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /logout`: forgets the session.
pub(super) async fn logout(
    State(ctx): State<Arc<ConsoleCtx>>,
    Extension(session): Extension<Session>,
    Form(form): Form<LogoutForm>,
) -> Response {
    if !csrf_matches(&session, &form.csrf) {
        return (StatusCode::FORBIDDEN, "missing or stale form token (CSRF)").into_response();
    }
    ctx.sessions.remove(&session.id);
    Redirect::to("/").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures that only relative paths on this console are redirect targets.
    #[test]
    fn back_paths_stay_local() {
        assert_eq!(
            local_path(Some("/jobs?status=failed")),
            "/jobs?status=failed"
        );
        assert_eq!(local_path(Some("//evil.example/")), "/");
        assert_eq!(local_path(Some("https://evil.example/")), "/");
        assert_eq!(local_path(Some("/\\evil.example")), "/");
        assert_eq!(local_path(None), "/");
    }

    /// Ensures that the cookie parser finds the console's cookie among others.
    #[test]
    fn cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; warden_console=abc; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
    }

    /// Ensures that the Host check takes IP literals, localhost and the listed names, with or
    /// without a port, and nothing else.
    #[test]
    fn host_check_takes_literals_and_listed_names() {
        let listed = vec!["Warden.Internal".to_string()];
        let with = |host: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static(host));
            host_allowed(&listed, &h)
        };
        for ok in [
            "127.0.0.1:7072",
            "[::1]:7072",
            "localhost",
            "warden.internal:80",
            "10.0.0.5",
        ] {
            assert!(with(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "127.0.0.1.evil.example:7072",
            "localhost.evil",
        ] {
            assert!(!with(bad), "{bad}");
        }
        assert!(!host_allowed(&listed, &HeaderMap::new()), "no Host at all");
    }

    /// Ensures that a full store drops an anonymous session before a logged-in one.
    #[test]
    fn full_store_drops_anonymous_sessions_first() {
        let s = Sessions::default();
        let operator = s.create(true);
        for _ in 0..MAX_SESSIONS + 10 {
            s.create(false);
        }
        assert!(s.get(&operator.id).is_some());
        assert!(s.lock().len() <= MAX_SESSIONS);
    }
}
