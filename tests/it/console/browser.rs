//! The web console in a real browser: headless Chromium driven over WebDriver (fantoccini
//! against a chromedriver each test starts on port 0). scripts/test installs Debian's
//! `chromium` and `chromium-driver`; without them these tests fail saying so.
//!
//! Also the screenshot recipe (`just screenshots`, an ignored test): the main pages on a demo
//! workload, written to `docs/console-*.png` for README.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use super::web::{console_node, workload};
use crate::fakes::{FakeUpstream, COMPANIES};
use crate::support::{add, eventually, finished, req, submit, upstream, TestNode};

const WAIT: Duration = Duration::from_secs(30);

/// A chromedriver process, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port chromedriver says it took ("… started successfully on port N."); its stdout is
/// read to the end on a thread of its own, so the pipe never fills and blocks it.
async fn announced_port(stdout: std::process::ChildStdout) -> u16 {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let port = line
                .strip_prefix("ChromeDriver was started successfully on port ")
                .and_then(|rest| rest.trim_end_matches('.').parse::<u16>().ok());
            if let Some(port) = port {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(port);
                }
            }
        }
    });
    tokio::time::timeout(WAIT, rx)
        .await
        .expect("chromedriver says its port")
        .expect("chromedriver says its port before its stdout ends")
}

impl Driver {
    /// Starts chromedriver on port 0 and waits until it takes sessions.
    async fn start() -> Driver {
        let mut child = Command::new("chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (scripts/test installs Debian's chromium-driver)");
        let port = announced_port(child.stdout.take().unwrap()).await;
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let status = format!("{}/status", driver.url);
        eventually("chromedriver to answer", WAIT, || async {
            let r = reqwest::get(&status).await.ok()?;
            let v: serde_json::Value = r.json().await.ok()?;
            (v["value"]["ready"] == true).then_some(())
        })
        .await;
        driver
    }

    /// A headless Chromium session (`--no-sandbox`: the tests may run as root).
    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        let mut options = json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--window-size=1280,860", "--hide-scrollbars"]});
        if let Some(bin) = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|b| std::path::Path::new(b).exists())
        {
            options["binary"] = json!(bin);
        }
        caps.insert("goog:chromeOptions".into(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a headless Chromium session")
    }
}

fn base(node: &TestNode) -> String {
    format!("http://{}", node.console_addr().unwrap())
}

/// The text of the first element matching `css`, once there is one.
async fn text(b: &Client, css: &str) -> Option<String> {
    b.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

/// Ensures that a person can open the overview, click through to a dead job, press retry and
/// watch it succeed (the job page refreshing in place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn click_through_to_a_dead_job_and_retry_it() {
    let driver = Driver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let node = console_node(tmp.path(), |_| {}).await;
    let w = workload(&node).await;
    let b = driver.browser().await;

    b.goto(&base(&node)).await.unwrap();
    assert_eq!(b.title().await.unwrap(), "Overview · Warden");
    b.find(Locator::LinkText("Dead letters"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let row = format!("tr[data-job='{}'] a.id", w.dead);
    eventually("the dead job's link to be followed", WAIT, || async {
        let link = b.find(Locator::Css(&row)).await.ok()?;
        link.click().await.ok()
    })
    .await;
    let status = "dl.kv .status";
    assert_eq!(text(&b, status).await.as_deref(), Some("failed"));

    std::fs::write(tmp.path().join("ok"), "").unwrap();
    // The region refreshes in place, so an element found may be replaced before the click.
    eventually("the retry button to be pressed", WAIT, || async {
        let button = b.find(Locator::Css("button.act.retry")).await.ok()?;
        button.click().await.ok()
    })
    .await;
    b.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("p.flash.ok"))
        .await
        .unwrap();
    // No reload from here on: the page's script refreshes the job in place.
    b.execute("window.__same_page = true; return null;", vec![])
        .await
        .unwrap();
    eventually("the retried job to show succeeded", WAIT, || async {
        (text(&b, status).await.as_deref() == Some("succeeded")).then_some(())
    })
    .await;
    let same = b
        .execute("return window.__same_page === true;", vec![])
        .await
        .unwrap();
    assert_eq!(
        same,
        json!(true),
        "the page was reloaded instead of refreshed in place"
    );
    assert!(
        b.source().await.unwrap().contains("fixed"),
        "the result is shown"
    );
    b.close().await.unwrap();
}

/// Ensures that the overview's numbers update without a reload while jobs finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_numbers_update_in_place() {
    let driver = Driver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let node = console_node(tmp.path(), |_| {}).await;
    let b = driver.browser().await;
    b.goto(&base(&node)).await.unwrap();
    let card = "div.card[data-metric='succeeded'] .n";
    assert_eq!(text(&b, card).await.as_deref(), Some("0"));
    b.execute("window.__same_page = true; return null;", vec![])
        .await
        .unwrap();

    let mut c = node.client().await;
    for _ in 0..5 {
        let id = submit(&mut c, "builtin.noop", json!({})).await;
        finished(&mut c, &id, WAIT).await;
    }
    eventually("the overview to count 5 succeeded jobs", WAIT, || async {
        (text(&b, card).await.as_deref() == Some("5")).then_some(())
    })
    .await;
    let same = b
        .execute("return window.__same_page === true;", vec![])
        .await
        .unwrap();
    assert_eq!(
        same,
        json!(true),
        "the overview was reloaded instead of refreshed in place"
    );
    b.close().await.unwrap();
}

/// The screenshot recipe (`just screenshots`): the main pages on a demo workload, as PNGs in
/// `docs/` (or `$WARDEN_SCREENSHOTS`). Ignored: it writes into the repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/console-*.png: run with `just screenshots`"]
async fn screenshots() {
    let out = std::env::var_os("WARDEN_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs"));
    let driver = Driver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeUpstream::start().await;
    let node = console_node(tmp.path(), |a| {
        add(a, "sec", 2, 2, upstream(&fake, "5/s, 200/m"))
    })
    .await;
    let w = workload(&node).await;
    let mut c = node.client().await;
    let tickers: Vec<&str> = COMPANIES.iter().take(12).map(|c| c.ticker).collect();
    let batch =
        json!({"cmd": "submit", "job": "sec.batch_filings", "params": {"tickers": tickers}});
    assert_eq!(req(&mut c, batch).await["ok"], true);
    demo_traffic(&node).await;
    let b = driver.browser().await;
    let pages = [
        ("overview", "/".to_string()),
        ("pipelines", "/pipelines".into()),
        ("jobs", "/jobs".into()),
        ("job", format!("/jobs/{}", w.dead)),
        ("dead", "/dead".into()),
        ("tree", "/tree".into()),
    ];
    for (name, path) in pages {
        b.goto(&format!("{}{path}", base(&node))).await.unwrap();
        let png = b.screenshot().await.unwrap();
        let file = out.join(format!("console-{name}.png"));
        std::fs::write(&file, png).unwrap();
        println!("wrote {}", file.display());
    }
    b.close().await.unwrap();
}

/// A minute's worth of jobs in a few seconds, some failing, so the chart and the lists have
/// something to show.
async fn demo_traffic(node: &TestNode) {
    let mut c = node.client().await;
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(8) {
        let job = if n.is_multiple_of(9) {
            "builtin.fail_permanent"
        } else {
            "builtin.noop"
        };
        let ticker = ["AAPL", "IBM", "CHGG", "MSFT"][n as usize % 4];
        let id = submit(&mut c, job, json!({ "ticker": ticker })).await;
        if n.is_multiple_of(25) {
            finished(&mut c, &id, WAIT).await;
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(40 + (n % 7) * 10)).await;
    }
}
