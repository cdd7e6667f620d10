//! Test support for the web console: a node with the console on a free port and a known
//! workload, and [`Web`], a plain HTTP client that keeps the session cookie by hand and never
//! follows redirects (so a test sees each 303 and where it goes).

use std::path::Path;
use std::time::Duration;

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::json;
use warden_actors::args::{ConsoleArgs, ExecTaskArgs, NodeArgs, ScheduleArgs};
use warden_actors::exec::check;

use crate::support::{finished, job_ids, req, submit, until_running, TestNode};

/// The console's arguments for tests: a free port, a quick refresh.
pub fn console_args(read_only: bool) -> ConsoleArgs {
    ConsoleArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        read_only,
        refresh: Duration::from_millis(500),
        allowed_hosts: vec![],
    }
}

/// Adds the `ext` pipeline with `ext.flaky`: a shell script that fails permanently (exit 65)
/// until a file `ok` exists in `dir`, then succeeds.
pub fn add_flaky(a: &mut NodeArgs, dir: &Path) {
    let script = "cat >/dev/null\n\
                  if [ -e ok ]; then echo '{\"result\":{\"fixed\":true}}'; exit 0; fi\n\
                  echo 'the marker file is missing' >&2\nexit 65\n";
    std::fs::write(dir.join("flaky.sh"), script).unwrap();
    let task = ExecTaskArgs {
        name: "ext.flaky".into(),
        command: vec!["sh".into(), "flaky.sh".into()],
        cwd: dir.to_path_buf(),
        env: Default::default(),
        inherit_env: vec![],
        max_line_bytes: 64 << 10,
        stderr_tail_bytes: 4 << 10,
    };
    let path = std::env::var_os("PATH");
    let task = check::resolve(task, dir, path.as_deref()).expect("sh is installed");
    let mut p = a.pipelines[0].clone();
    p.name = "ext".into();
    p.workers = 2;
    p.exec = vec![task];
    a.pipelines.push(p);
}

/// A nightly schedule of `builtin.noop`.
pub fn nightly() -> ScheduleArgs {
    ScheduleArgs {
        name: "nightly-noop".into(),
        cron: "0 0 2 * * *".into(),
        job: "builtin.noop".into(),
        params: json!({"from": "schedule"}),
        priority: None,
        catch_up: Default::default(),
        overlap: Default::default(),
    }
}

/// The ids of a known workload.
pub struct Workload {
    /// A `builtin.noop` that succeeded.
    pub done: String,
    /// An `ext.flaky` that was dead-lettered.
    pub dead: String,
    /// A long `builtin.sleep`, running.
    pub running: String,
    /// A chain of two noops, and its jobs.
    pub workflow: String,
    /// The chain's jobs.
    pub steps: Vec<String>,
}

/// A node with the console, `ext.flaky`, a schedule and a record `test/greeting`; `tweak`
/// adjusts its arguments last.
pub async fn console_node(tmp: &Path, tweak: impl FnOnce(&mut NodeArgs)) -> TestNode {
    let data = tmp.join("data");
    std::fs::create_dir_all(&data).unwrap();
    {
        let journal = warden_actors::store::journal::Journal::open(&data).unwrap();
        journal
            .put_record("test/greeting", &json!({"hello": "world"}))
            .unwrap();
        journal.sync_now().unwrap();
    }
    TestNode::start_in(&data, |a| {
        a.console = Some(console_args(false));
        a.schedules = vec![nightly()];
        add_flaky(a, tmp);
        tweak(a);
    })
    .await
    .expect("node starts")
}

/// Submits the workload and waits until each job is where it should be.
pub async fn workload(node: &TestNode) -> Workload {
    let mut c = node.client().await;
    let done = submit(&mut c, "builtin.noop", json!({"ticker": "CHGG"})).await;
    let dead = submit(&mut c, "ext.flaky", json!({"ticker": "IBM"})).await;
    let running = submit(&mut c, "builtin.sleep", json!({"ms": 600_000})).await;
    let wf = req(
        &mut c,
        json!({"cmd": "submit_workflow", "kind": "chain", "jobs": [{"job": "builtin.noop"}, {"job": "builtin.noop"}]}),
    )
    .await;
    assert_eq!(wf["ok"], true, "{wf}");
    let wait = Duration::from_secs(30);
    assert_eq!(finished(&mut c, &done, wait).await["status"], "succeeded");
    assert_eq!(finished(&mut c, &dead, wait).await["status"], "failed");
    until_running(&mut c, &running).await;
    let steps = job_ids(&wf);
    for s in &steps {
        finished(&mut c, s, wait).await;
    }
    Workload {
        done,
        dead,
        running,
        workflow: wf["workflow_id"].as_str().unwrap().to_string(),
        steps,
    }
}

/// An HTTP client of one console with the session cookie kept by hand.
pub struct Web {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

/// One answer.
pub struct Page {
    /// The status.
    pub status: StatusCode,
    /// `Location`, on a redirect.
    pub location: Option<String>,
    /// The body.
    pub body: String,
}

impl Page {
    /// The CSRF token the page's forms carry.
    pub fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token")
            + 19;
        self.body[at..].split('"').next().unwrap().to_string()
    }

    /// Asserts a 200 whose body holds every one of `want`.
    pub fn shows(&self, want: &[&str]) -> &Page {
        assert_eq!(self.status, StatusCode::OK, "{}", self.body);
        for w in want {
            assert!(
                self.body.contains(w),
                "expected {w:?} in the page:\n{}",
                self.body
            );
        }
        self
    }
}

impl Web {
    /// A client of `node`'s console.
    pub fn new(node: &TestNode) -> Web {
        Web::at(
            &node
                .console_addr()
                .expect("the node serves a console")
                .to_string(),
        )
    }

    /// A client of the console at `addr` (`host:port`).
    pub fn at(addr: &str) -> Web {
        Web {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: format!("http://{addr}"),
            cookie: None,
        }
    }

    async fn send(&mut self, r: reqwest::RequestBuilder) -> Page {
        let r = match &self.cookie {
            Some(c) => r.header(COOKIE, c),
            None => r,
        };
        let resp = r.send().await.expect("the console answers");
        if let Some(c) = resp.headers().get(SET_COOKIE) {
            let c = c.to_str().unwrap();
            self.cookie = Some(c.split(';').next().unwrap().to_string());
        }
        let status = resp.status();
        let location = resp
            .headers()
            .get(LOCATION)
            .map(|l| l.to_str().unwrap().to_string());
        Page {
            status,
            location,
            body: resp.text().await.unwrap(),
        }
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Page {
        let r = self.http.get(format!("{}{path}", self.base));
        self.send(r).await
    }

    /// `POST path` with form fields.
    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let r = self.http.post(format!("{}{path}", self.base)).form(form);
        self.send(r).await
    }

    /// `GET path` with the `Host` header replaced.
    pub async fn get_as_host(&mut self, path: &str, host: &str) -> Page {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("host", host);
        self.send(r).await
    }
}
