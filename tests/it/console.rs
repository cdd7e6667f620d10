//! The web console over HTTP against a real node: every page with a known workload, the
//! actions (retry a dead letter, cancel a running job, pause a pipeline, retry all, run a
//! schedule now) and their refusals (no CSRF token, no login with `[admin] token`, read-only,
//! a foreign `Host`). `browser.rs` drives the same pages in headless Chromium.

mod browser;
pub(crate) mod web;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{finished, job_ids, poll, req, status, submit, until_running};
use web::{console_node, workload, Web};

const WAIT: Duration = Duration::from_secs(30);

/// Ensures that every page answers 200 with what the workload put there, that filters narrow
/// the jobs, and that a bad filter or path is a 400 or 404 page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_the_workload() {
    let tmp = tempfile::tempdir().unwrap();
    let node = console_node(tmp.path(), |_| {}).await;
    let w = workload(&node).await;
    let mut web = Web::new(&node);

    web.get("/").await.shows(&[
        "Overview",
        "succeeded/s",
        "builtin",
        "ext",
        &w.running,
        "Running now (1)",
    ]);
    web.get("/pipelines")
        .await
        .shows(&["builtin", "ext", "Pause", "running"]);
    let all = web.get("/jobs").await;
    all.shows(&[&w.done, &w.dead, &w.running, &w.steps[0]]);
    let failed = web.get("/jobs?status=failed").await;
    failed.shows(&[&w.dead]);
    assert!(
        !failed.body.contains(&w.done),
        "a succeeded job in the failed list"
    );
    let by_params = web.get("/jobs?q=CHGG").await;
    by_params.shows(&[&w.done]);
    assert!(!by_params.body.contains(&w.dead));
    let by_pipeline = web.get("/jobs?pipeline=ext").await;
    by_pipeline.shows(&[&w.dead]);
    assert!(!by_pipeline.body.contains(&w.done));
    let by_workflow = web.get(&format!("/jobs?workflow={}", w.workflow)).await;
    by_workflow.shows(&[&w.steps[0], &w.steps[1]]);
    assert!(!by_workflow.body.contains(&w.done));

    web.get(&format!("/jobs/{}", w.dead)).await.shows(&[
        "the marker file is missing",
        "dead lettered",
        "submitted",
        "Retry",
        "IBM",
    ]);
    web.get(&format!("/jobs/{}", w.running))
        .await
        .shows(&["Running now: nothing holds it", "Cancel"]);
    web.get(&format!("/jobs/{}", w.steps[1]))
        .await
        .shows(&[&w.workflow, "chain", &w.steps[0]]);
    web.get("/dead")
        .await
        .shows(&[&w.dead, "Retry all that match"]);
    web.get("/schedules")
        .await
        .shows(&["nightly-noop", "0 0 2 * * *", "never fired", "Run now"]);
    web.get("/tree")
        .await
        .shows(&["dispatcher", "pipeline:ext", "worker-1", "console", "admin"]);
    web.get("/records?prefix=test/")
        .await
        .shows(&["test/greeting"]);
    web.get("/records/view?key=test/greeting")
        .await
        .shows(&["hello", "world"]);
    web.get("/assets/console.css").await.shows(&["--accent"]);
    let alone = web.get("/nodes").await;
    alone.shows(&["This node runs alone"]);
    assert!(
        !alone.body.contains("href=\"/nodes\""),
        "a single node's navigation links no nodes page"
    );

    assert_eq!(
        web.get("/jobs?status=bogus").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        web.get("/jobs/not-an-id").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(web.get("/nowhere").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        web.get("/records/view?key=test/none").await.status,
        StatusCode::NOT_FOUND
    );
}

/// Ensures that retry, cancel, pause, resume and run-now act as their admin commands do, each
/// redirecting back with a message, and that a POST without the CSRF token changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_work_and_need_the_csrf_token() {
    let tmp = tempfile::tempdir().unwrap();
    let node = console_node(tmp.path(), |_| {}).await;
    let w = workload(&node).await;
    let mut c = node.client().await;
    let mut web = Web::new(&node);
    let csrf = web.get("/dead").await.csrf();

    // No token, a wrong one: refused, nothing changed.
    for form in [vec![], vec![("csrf", "0123")]] {
        let p = web
            .post(&format!("/jobs/{}/cancel", w.running), &form)
            .await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.body);
    }
    assert_eq!(status(&mut c, &w.running).await["status"], "running");

    // Retry a dead letter: fixed meanwhile, it succeeds.
    std::fs::write(tmp.path().join("ok"), "").unwrap();
    let p = web
        .post(
            &format!("/jobs/{}/retry", w.dead),
            &[("csrf", &csrf), ("back", "/dead")],
        )
        .await;
    assert_eq!(
        (p.status, p.location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/dead"))
    );
    web.get("/dead").await.shows(&["is queued again"]);
    assert_eq!(finished(&mut c, &w.dead, WAIT).await["status"], "succeeded");

    // Cancel the running job.
    let back = format!("/jobs/{}", w.running);
    let p = web
        .post(
            &format!("{back}/cancel"),
            &[("csrf", &csrf), ("back", &back)],
        )
        .await;
    assert_eq!(p.location.as_deref(), Some(back.as_str()));
    assert_eq!(
        finished(&mut c, &w.running, WAIT).await["status"],
        "cancelled"
    );

    // Pause and resume a pipeline; the pipelines page shows it.
    web.post(
        "/pipelines/builtin/pause",
        &[("csrf", &csrf), ("back", "/pipelines")],
    )
    .await;
    let pipelines = req(&mut c, json!({"cmd": "pipelines"})).await;
    let builtin = pipelines["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "builtin")
        .unwrap()
        .clone();
    assert_eq!(builtin["paused"], true);
    web.get("/pipelines")
        .await
        .shows(&["is paused", "paused", "Resume"]);
    web.post(
        "/pipelines/builtin/resume",
        &[("csrf", &csrf), ("back", "/pipelines")],
    )
    .await;
    web.get("/pipelines").await.shows(&["is running again"]);

    // An action the command refuses comes back as a message naming the error code.
    web.post(
        &format!("/jobs/{}/cancel", w.done),
        &[("csrf", &csrf), ("back", "/jobs")],
    )
    .await;
    web.get("/jobs")
        .await
        .shows(&["conflict", "cannot be cancelled"]);

    // Run a schedule now: a job of the schedule's name and params.
    web.post(
        "/schedules/nightly-noop/run",
        &[("csrf", &csrf), ("back", "/schedules")],
    )
    .await;
    let page = web.get("/schedules").await;
    page.shows(&["Schedule nightly-noop ran now: job "]);
    let at = page.body.find("ran now: job ").unwrap() + 13;
    let id = &page.body[at..at + 36];
    let job = finished(&mut c, id, WAIT).await;
    assert_eq!(
        (job["name"].as_str(), &job["params"]),
        (Some("builtin.noop"), &json!({"from": "schedule"}))
    );
}

/// Ensures that "retry all that match" counts the matching dead letters, asks, and retries no
/// more than it counted, leaving the ones the filter excludes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_all_retries_what_the_filter_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let node = console_node(tmp.path(), |_| {}).await;
    let mut c = node.client().await;
    let mut ids = Vec::new();
    for t in ["A", "B", "C"] {
        ids.push(submit(&mut c, "ext.flaky", json!({"ticker": t})).await);
    }
    let other = submit(&mut c, "builtin.fail_permanent", json!({})).await;
    for id in ids.iter().chain([&other]) {
        assert_eq!(finished(&mut c, id, WAIT).await["status"], "failed");
    }
    let mut web = Web::new(&node);
    let confirm = web.get("/dead/retry-all?pipeline=ext").await;
    confirm.shows(&[
        "Retry <strong class=\"count\">3</strong> dead letters",
        "pipeline=ext",
    ]);
    std::fs::write(tmp.path().join("ok"), "").unwrap();
    let csrf = confirm.csrf();
    let p = web
        .post(
            "/dead/retry-all",
            &[
                ("csrf", &csrf),
                ("filters", "pipeline=ext"),
                ("expect", "3"),
            ],
        )
        .await;
    assert_eq!(
        (p.status, p.location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/dead?pipeline=ext"))
    );
    web.get("/dead?pipeline=ext")
        .await
        .shows(&["Retried 3 dead letters."]);
    for id in &ids {
        assert_eq!(finished(&mut c, id, WAIT).await["status"], "succeeded");
    }
    assert_eq!(status(&mut c, &other).await["status"], "failed");
}

/// Ensures that with `[admin] token` every page and action needs a login, a wrong token is
/// refused, and a login with the right one sets an HttpOnly cookie that opens the console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_guards_pages_and_actions() {
    let tmp = tempfile::tempdir().unwrap();
    let node = console_node(tmp.path(), |a| a.admin.token = Some("s3cret".into())).await;
    let mut c = node.client().await;
    let id = submit_with_token(&mut c, "builtin.sleep").await;
    let mut web = Web::new(&node);

    for path in [
        "/",
        "/jobs",
        "/dead",
        &format!("/jobs/{id}"),
        "/tree",
        "/records",
    ] {
        let p = web.get(path).await;
        assert_eq!(p.status, StatusCode::UNAUTHORIZED, "{path}");
        // The login form, and nothing of the node's (the path to return to is all it keeps).
        assert!(
            p.body.contains("name=\"token\"") && !p.body.contains("builtin.sleep"),
            "{path}: {}",
            p.body
        );
    }
    let login = web.get("/").await;
    let csrf = login.csrf();
    let p = web
        .post(&format!("/jobs/{id}/cancel"), &[("csrf", &csrf)])
        .await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);

    let wrong = web
        .post(
            "/login",
            &[("csrf", &csrf), ("token", "guess"), ("next", "/jobs")],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("wrong token"));

    let ok = web
        .post(
            "/login",
            &[("csrf", &csrf), ("token", "s3cret"), ("next", "/jobs")],
        )
        .await;
    assert_eq!(
        (ok.status, ok.location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/jobs"))
    );
    let jobs = web.get("/jobs").await;
    jobs.shows(&[&id, "Log out"]);
    let csrf = jobs.csrf();
    let p = web
        .post(
            &format!("/jobs/{id}/cancel"),
            &[("csrf", &csrf), ("back", "/jobs")],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    let a = poll(
        &mut c,
        "the cancel",
        WAIT,
        json!({"cmd": "status", "job_id": id, "token": "s3cret"}),
        |a| a["job"]["status"] == "cancelled",
    )
    .await;
    assert_eq!(a["ok"], true);

    // The cookie the login set is HttpOnly and SameSite=Strict.
    let raw = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("http://{}", node.console_addr().unwrap());
    let first = raw.get(format!("{base}/")).send().await.unwrap();
    let cookie = first.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
}

async fn submit_with_token(c: &mut warden::client::Client, job: &str) -> String {
    let a = req(
        c,
        json!({"cmd": "submit", "job": job, "params": {"ms": 600_000}, "token": "s3cret"}),
    )
    .await;
    assert_eq!(a["ok"], true, "{a}");
    let id = a["job_id"].as_str().unwrap().to_string();
    poll(
        c,
        "the job to run",
        WAIT,
        json!({"cmd": "status", "job_id": id, "token": "s3cret"}),
        |a| a["job"]["status"] == "running",
    )
    .await;
    id
}

/// Ensures that a read-only console shows no button and refuses every action, even with a
/// good CSRF token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_hides_and_refuses_actions() {
    let tmp = tempfile::tempdir().unwrap();
    let node = console_node(tmp.path(), |a| a.console.as_mut().unwrap().read_only = true).await;
    let mut c = node.client().await;
    let running = submit(&mut c, "builtin.sleep", json!({"ms": 600_000})).await;
    until_running(&mut c, &running).await;
    let mut web = Web::new(&node);
    let page = web.get(&format!("/jobs/{running}")).await;
    page.shows(&["read-only"]);
    assert!(
        !page.body.contains("name=\"csrf\""),
        "a form on a read-only console"
    );
    assert!(!web.get("/pipelines").await.body.contains("Pause</button>"));
    for path in [
        format!("/jobs/{running}/cancel"),
        "/pipelines/builtin/pause".into(),
        "/schedules/nightly-noop/run".into(),
    ] {
        let p = web.post(&path, &[("csrf", "any")]).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{path}");
        assert!(p.body.contains("read-only"), "{}", p.body);
    }
    assert_eq!(status(&mut c, &running).await["status"], "running");
}

/// Ensures that a request naming a host the console does not know (a DNS-rebinding page) is
/// refused, while IP literals and localhost are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_host_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let node = console_node(tmp.path(), |a| {
        a.console.as_mut().unwrap().allowed_hosts = vec!["warden.internal".into()]
    })
    .await;
    let mut web = Web::new(&node);
    assert_eq!(
        web.get_as_host("/", "evil.example:7072").await.status,
        StatusCode::FORBIDDEN
    );
    for host in [
        "localhost:7072",
        "127.0.0.1",
        "[::1]:7072",
        "warden.internal",
    ] {
        assert_eq!(
            web.get_as_host("/", host).await.status,
            StatusCode::OK,
            "{host}"
        );
    }
}

/// Ensures that the jobs list is newest first, 50 a page, and that "Older" continues exactly
/// where the page ended, keeping the filters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_paged_newest_first() {
    let tmp = tempfile::tempdir().unwrap();
    let node = console_node(tmp.path(), |_| {}).await;
    let mut c = node.client().await;
    let jobs: Vec<serde_json::Value> = (0..60)
        .map(|i| json!({"job": "builtin.noop", "params": {"n": i}}))
        .collect();
    let a = req(&mut c, json!({"cmd": "submit_batch", "jobs": jobs})).await;
    let ids = job_ids(&a);
    for id in &ids {
        finished(&mut c, id, WAIT).await;
    }
    let mut web = Web::new(&node);
    let first = web.get("/jobs?name=builtin.noop").await;
    let shown = |body: &str| ids.iter().filter(|id| body.contains(id.as_str())).count();
    assert_eq!(shown(&first.body), 50);
    assert!(
        first.body.find(&ids[59]).unwrap() < first.body.find(&ids[10]).unwrap(),
        "newest first"
    );
    assert!(!first.body.contains(&ids[9]));
    let at = first
        .body
        .find("class=\"older\" href=\"")
        .expect("an Older link")
        + 20;
    let older = first.body[at..]
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    assert!(
        older.contains("name=builtin.noop") && older.contains(&format!("before={}", ids[10])),
        "{older}"
    );
    let second = web.get(&older).await;
    assert_eq!(shown(&second.body), 10);
    assert!(second.body.contains(&ids[0]) && !second.body.contains(&ids[10]));
    assert!(
        !second.body.contains("class=\"older\""),
        "no page after the last"
    );
}

/// Ensures that an upstream pipeline's row shows each rate-limit window with its fill and the
/// breaker's state, once the pipeline has made requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_show_rate_limits_and_breakers() {
    let fake = crate::fakes::FakeUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let node = console_node(tmp.path(), |a| {
        crate::support::add(
            a,
            "sec",
            1,
            1,
            crate::support::upstream(&fake, "5/s, 200/m"),
        )
    })
    .await;
    let mut c = node.client().await;
    let id = submit(&mut c, "sec.filings", json!({"ticker": "IBM"})).await;
    assert_eq!(finished(&mut c, &id, WAIT).await["status"], "succeeded");
    let mut web = Web::new(&node);
    let page = web.get("/pipelines").await;
    page.shows(&["data-pipeline=\"sec\"", " / 5/s", " / 200/m", "closed"]);
}
