//! The page shell every console page shares (head, navigation, the message an action left, the
//! `#live` region the script refreshes), the login page, and small renderers: times, statuses,
//! JSON, and the POST button forms with their CSRF token.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use super::session::Session;
use super::ConsoleCtx;
use crate::job::{rfc3339_ms, JobStatus};
use crate::protocol::ApiError;

/// The sections of the navigation, by path.
const NAV: [(&str, &str); 7] = [
    ("/", "Overview"),
    ("/pipelines", "Pipelines"),
    ("/jobs", "Jobs"),
    ("/dead", "Dead letters"),
    ("/schedules", "Schedules"),
    ("/tree", "Supervision"),
    ("/records", "Records"),
];

/// A whole page: `tools` sits above the refreshed region (forms a person types into), `live`
/// is what the script replaces in place every `[console] refresh`.
pub(super) fn page(
    ctx: &ConsoleCtx,
    session: &Session,
    active: &str,
    title: &str,
    tools: Markup,
    live: Markup,
) -> Response {
    let flash = ctx.sessions.take_flash(&session.id);
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body data-refresh-ms=(ctx.args.refresh.as_millis()) {
                header.top {
                    a.brand href="/" { "Warden" }
                    span.node { (ctx.admin.node_name) " · v" (env!("CARGO_PKG_VERSION")) }
                    nav {
                        @for (href, label) in NAV {
                            a href=(href) class=[(href == active).then_some("active")] { (label) }
                        }
                        // A single node has no other nodes to show (`/nodes` still answers).
                        @if ctx.admin.cluster.is_some() {
                            a href="/nodes" class=[("/nodes" == active).then_some("active")] { "Nodes" }
                        }
                    }
                    @if ctx.args.read_only { span.badge.ro title="[console] read_only = true" { "read-only" } }
                    @if ctx.needs_login() {
                        form.inline method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            button.link type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    @if let Some(f) = flash {
                        p class=(if f.error { "flash error" } else { "flash ok" }) role="status" { (f.text) }
                    }
                    (tools)
                    div #live { (live) }
                }
                script src="/assets/console.js" defer {}
            }
        }
    };
    Html(body.into_string()).into_response()
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Warden" }
            link rel="stylesheet" href="/assets/console.css";
        }
    }
}

/// The login page (`[admin] token` set, no session yet), with `status`.
pub(super) fn login(
    ctx: &ConsoleCtx,
    session: &Session,
    next: Option<&str>,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            (head("Log in"))
            body {
                main.login {
                    h1 { "Warden · " (ctx.admin.node_name) }
                    p { "This node needs its admin token (" code { "[admin] token" } " or "
                        code { "WARDEN_ADMIN_TOKEN" } ")." }
                    @if let Some(e) = error { p.flash.error role="alert" { (e) } }
                    form method="post" action="/login" {
                        input type="hidden" name="csrf" value=(session.csrf);
                        input type="hidden" name="next" value=(next.unwrap_or("/"));
                        label { "Admin token " input type="password" name="token" autofocus required; }
                        button type="submit" { "Log in" }
                    }
                }
            }
        }
    };
    (status, Html(body.into_string())).into_response()
}

/// A page for a failed read: the API error's code decides the status.
pub(super) fn error_page(e: &ApiError) -> Response {
    use crate::protocol::ErrorCode as C;
    let status = match e.code {
        C::NotFound => StatusCode::NOT_FOUND,
        C::BadRequest => StatusCode::BAD_REQUEST,
        C::Unauthorized => StatusCode::UNAUTHORIZED,
        C::Conflict => StatusCode::CONFLICT,
        C::Overloaded | C::ShuttingDown | C::StorageUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            (head("Error"))
            body { main {
                h1 { "Error" }
                p.flash.error { code { (e.code.as_str()) } ": " (e.message) }
                p { a href="/" { "Back to the overview" } }
            } }
        }
    };
    (status, Html(body.into_string())).into_response()
}

/// Any path the console does not serve.
pub(super) async fn not_found() -> Response {
    error_page(&ApiError::not_found("no such page on this console"))
}

/// A POST button: a one-button form with the CSRF token and the page to come back to. Read-only
/// consoles render nothing.
pub(super) fn button(
    ctx: &ConsoleCtx,
    session: &Session,
    action: &str,
    label: &str,
    back: &str,
    confirm: Option<&str>,
) -> Markup {
    if ctx.args.read_only {
        return html! {};
    }
    html! {
        form.inline method="post" action=(action) data-confirm=[confirm] {
            input type="hidden" name="csrf" value=(session.csrf);
            input type="hidden" name="back" value=(back);
            button type="submit" class=(format!("act {}", label.to_lowercase().replace(' ', "-"))) { (label) }
        }
    }
}

/// A status as a colored badge.
pub(super) fn status(s: JobStatus) -> Markup {
    html! { span class=(format!("status {}", s.as_str())) { (s.as_str()) } }
}

/// Unix milliseconds as a UTC time, with the full RFC 3339 text on hover.
pub(super) fn time(ms: Option<i64>) -> Markup {
    match ms {
        None => html! { span.muted { "—" } },
        Some(ms) => {
            let full = rfc3339_ms(ms);
            let short = full.get(5..19).unwrap_or(&full).replace('T', " ");
            html! { time datetime=(full) title=(full) { (short) } }
        }
    }
}

/// An RFC 3339 time (as the views carry it) with how far it is from now.
pub(super) fn when(rfc3339: Option<&str>) -> Markup {
    let Some(t) = rfc3339 else {
        return html! { span.muted { "—" } };
    };
    let Ok(at) = chrono::DateTime::parse_from_rfc3339(t) else {
        return html! { (t) };
    };
    let secs = (at.timestamp_millis() - crate::job::now_ms()) / 1000;
    html! { time datetime=(t) title=(t) { (t.get(5..19).unwrap_or(t).replace('T', " ")) " " span.muted { "(" (relative(secs)) ")" } } }
}

/// Seconds from now in words: "in 5 s", "3 min ago".
pub(super) fn relative(secs: i64) -> String {
    let a = secs.unsigned_abs();
    let amount = match a {
        0..=89 => format!("{a} s"),
        90..=5399 => format!("{} min", (a + 30) / 60),
        5400..=172_799 => format!("{} h", (a + 1800) / 3600),
        _ => format!("{} days", (a + 43_200) / 86_400),
    };
    if secs >= 0 {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// Seconds as an uptime: "2 d 3 h", "4 h 12 min", "35 s".
pub(super) fn uptime(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min {} s", secs / 60, secs % 60),
        3600..=86_399 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// JSON text pretty-printed in a `<pre>`.
pub(super) fn json(value: &serde_json::Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    html! { pre.json { (text) } }
}

/// A job id, shortened to its random tail for tables, linking to the job.
pub(super) fn job_link(id: &str) -> Markup {
    let short = id.get(id.len().saturating_sub(12)..).unwrap_or(id);
    html! { a.id href=(format!("/jobs/{id}")) title=(id) { "…" (short) } }
}

/// Text cut to `max` characters for a table cell, the whole on hover.
pub(super) fn cut(text: &str, max: usize) -> Markup {
    if text.chars().count() <= max {
        return html! { (text) };
    }
    let short: String = text.chars().take(max).collect();
    html! { span title=(text) { (short) "…" } }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures that relative times read naturally on both sides of now.
    #[test]
    fn relative_times_read_naturally() {
        assert_eq!(relative(5), "in 5 s");
        assert_eq!(relative(-120), "2 min ago");
        assert_eq!(relative(7200), "in 2 h");
        assert_eq!(relative(-3 * 86_400), "3 days ago");
        assert_eq!(uptime(3725), "1 h 2 min");
    }
}
