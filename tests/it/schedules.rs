//! Cron schedules in a real node, on second-level crons and the wall clock: each tick fires
//! once, a node stopped across ticks catches up by its policy, a pending intent is fired again
//! (and dedups against its job), overlap skip waits for the previous run, a job that cannot be
//! submitted does not wedge the schedule, and `schedules` shows next and last runs.
//!
//! Ticks are read back from the jobs' `unique_key` (`schedule:<name>:<tick>`), so every check
//! is about which ticks got a job, measured from timestamps rather than assumed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use warden::client::Client;
use warden_actors::args::{CatchUp, NodeArgs, Overlap, ScheduleArgs};
use warden_actors::scheduler::{
    next_tick, parse_cron, prev_tick, ticks_between, unique_key, ScheduleRecord,
};
use warden_actors::store::journal::Journal;

use crate::support::{poll, req, TestNode};

/// Bound on every wait; the waits themselves are for wall-clock ticks.
const WAIT: Duration = Duration::from_secs(20);

fn schedule(name: &str, cron: &str, job: &str, params: Value) -> ScheduleArgs {
    ScheduleArgs {
        name: name.into(),
        cron: cron.into(),
        job: job.into(),
        params,
        priority: None,
        catch_up: CatchUp::Latest,
        overlap: Overlap::Allow,
    }
}

fn with(s: &ScheduleArgs) -> impl FnOnce(&mut NodeArgs) {
    let s = s.clone();
    move |a| a.schedules = vec![s]
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn ms(rfc3339: &str) -> i64 {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339:?}: {e}"))
        .timestamp_millis()
}

/// Sleeps until the wall clock reaches `at_ms`: the one kind of wait these tests need.
async fn wall_clock(at_ms: i64) {
    let wait = u64::try_from(at_ms - now_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

/// The jobs schedule `name` submitted, by tick (Unix ms), oldest first.
async fn runs(c: &mut Client, name: &str) -> BTreeMap<i64, Vec<Value>> {
    let a = req(c, json!({"cmd": "list", "limit": 1000})).await;
    assert_eq!(a["ok"], true, "{a}");
    let prefix = format!("schedule:{name}:");
    let mut by_tick: BTreeMap<i64, Vec<Value>> = BTreeMap::new();
    for job in a["jobs"].as_array().unwrap() {
        if let Some(tick) = job["unique_key"]
            .as_str()
            .and_then(|k| k.strip_prefix(&prefix))
        {
            by_tick.entry(ms(tick)).or_default().push(job.clone());
        }
    }
    by_tick
}

/// Waits until the runs of schedule `name` satisfy `done`.
async fn until(
    c: &mut Client,
    name: &str,
    done: impl Fn(&BTreeMap<i64, Vec<Value>>) -> bool,
) -> BTreeMap<i64, Vec<Value>> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = runs(c, name).await;
        if done(&r) {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for runs of {name}; have {:?}",
            r.keys().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until schedule `name` has a job for at least `n` ticks.
async fn until_runs(c: &mut Client, name: &str, n: usize) -> BTreeMap<i64, Vec<Value>> {
    until(c, name, |r| r.len() >= n).await
}

fn assert_once_per_tick(r: &BTreeMap<i64, Vec<Value>>) {
    for (tick, jobs) in r {
        assert_eq!(
            jobs.len(),
            1,
            "tick {tick} got {} jobs: {jobs:?}",
            jobs.len()
        );
    }
}

/// Ensures that an every-second schedule submits one job per tick, for consecutive ticks with
/// no gap and no duplicate, each created at or after its tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fires_once_per_tick() {
    let s = schedule("every-second", "* * * * * *", "builtin.noop", json!({}));
    let node = TestNode::start_with(with(&s)).await;
    let mut c = node.client().await;
    let r = until_runs(&mut c, "every-second", 4).await;
    assert_once_per_tick(&r);
    let ticks: Vec<i64> = r.keys().copied().collect();
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            1000,
            "consecutive ticks, none lost: {ticks:?}"
        );
    }
    for (tick, jobs) in &r {
        assert_eq!(tick % 1000, 0, "ticks are whole seconds");
        let created = ms(jobs[0]["created_at"].as_str().unwrap());
        assert!(
            created >= *tick,
            "job for tick {tick} created early, at {created}"
        );
        assert_eq!(jobs[0]["name"], "builtin.noop");
    }
    node.stop().await.unwrap();
}

/// Runs `s` (every 3 s) on a node, stops it across two ticks, restarts it on the same dir and
/// returns the ticks missed while it was down and the ticks run before the first on-time tick
/// after the restart (which it waits for). Asserts no tick ran twice.
async fn stop_across_two_ticks(s: &ScheduleArgs) -> (Vec<i64>, Vec<i64>) {
    let cron = parse_cron(&s.cron).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let node = TestNode::start_in(tmp.path(), with(s)).await.unwrap();
    let mut c = node.client().await;
    until_runs(&mut c, &s.name, 1).await;
    drop(c);
    node.stop().await.unwrap();
    let stopped = now_ms();
    // Restart a little after the second tick since the stop, well before the third.
    let second = next_tick(&cron, next_tick(&cron, stopped).unwrap()).unwrap();
    wall_clock(second + 400).await;
    let restarted = now_ms();
    let node = TestNode::start_in(tmp.path(), with(s)).await.unwrap();
    let mut c = node.client().await;
    let on_time = next_tick(&cron, restarted).unwrap();
    let r = until(&mut c, &s.name, |r| r.contains_key(&on_time)).await;
    assert_once_per_tick(&r);
    let missed = ticks_between(&cron, stopped, restarted, 100);
    assert!(
        missed.len() >= 2,
        "the node was down across two ticks: {missed:?}"
    );
    let caught_up = r.range(stopped + 1..on_time).map(|(t, _)| *t).collect();
    node.stop().await.unwrap();
    (missed, caught_up)
}

/// Ensures that with `catch_up = "none"` a node restarted after missing two ticks runs none of
/// them, and goes on with the next tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_none_skips_missed_ticks() {
    let mut s = schedule("catch-none", "*/3 * * * * *", "builtin.noop", json!({}));
    s.catch_up = CatchUp::None;
    let (missed, caught_up) = stop_across_two_ticks(&s).await;
    assert_eq!(caught_up, Vec::<i64>::new(), "missed {missed:?}");
}

/// Ensures that with `catch_up = "latest"` a node restarted after missing two ticks runs
/// exactly one job, for the latest of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_latest_fires_once() {
    let mut s = schedule("catch-latest", "*/3 * * * * *", "builtin.noop", json!({}));
    s.catch_up = CatchUp::Latest;
    let (missed, caught_up) = stop_across_two_ticks(&s).await;
    assert_eq!(caught_up, [*missed.last().unwrap()], "missed {missed:?}");
}

/// Ensures that with `catch_up = "all"` a node restarted after missing two ticks runs one job
/// per missed tick. (Overlap is `allow`: with `skip` the catch-up runs would skip one another.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_all_fires_each_missed_tick() {
    let mut s = schedule("catch-all", "*/3 * * * * *", "builtin.noop", json!({}));
    s.catch_up = CatchUp::All;
    let (missed, caught_up) = stop_across_two_ticks(&s).await;
    assert_eq!(caught_up, missed);
}

/// Writes a pending intent for `tick` into the schedule state of a stopped node's dir, as a
/// crash between the intent and the submit's answer leaves it.
async fn leave_pending(dir: &Path, name: &str, tick: i64) {
    // `TestNode::stop` returns once the node has released its data dir.
    let journal = Journal::open(dir).expect("the stopped node released its data dir");
    let key = format!("schedule/{name}");
    let mut rec = ScheduleRecord::decode(&journal.meta_get(&key).unwrap().unwrap()).unwrap();
    rec.intend(tick);
    journal.meta_put(&key, &rec.encode()).unwrap();
    journal.sync_now().unwrap();
}

/// Ensures that a pending intent left by a crash is fired at the next start, also under
/// `catch_up = "none"`, under the tick's unique key; and that when the tick's job was already
/// accepted and is unfinished, the re-fire dedups to that job instead of submitting another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_intent_fires_again_and_dedups() {
    // An hourly cron: no tick of its own comes due during the test.
    let mut s = schedule("hourly", "0 0 * * * *", "builtin.noop", json!({}));
    s.catch_up = CatchUp::None;
    let tmp = tempfile::tempdir().unwrap();
    let cron = parse_cron(&s.cron).unwrap();
    // Two past ticks: one whose submit never got an answer, one whose job was accepted.
    let lost_tick = prev_tick(&cron, now_ms() - 3 * 3_600_000).unwrap();
    let accepted_tick = next_tick(&cron, lost_tick).unwrap();

    let node = TestNode::start_in(tmp.path(), with(&s)).await.unwrap();
    node.stop().await.unwrap();
    leave_pending(tmp.path(), "hourly", lost_tick).await;
    let node = TestNode::start_in(tmp.path(), with(&s)).await.unwrap();
    let mut c = node.client().await;
    let r = until_runs(&mut c, "hourly", 1).await;
    assert_eq!(r.keys().copied().collect::<Vec<_>>(), [lost_tick]);

    // The job of the second tick waits an hour, so it is unfinished when the intent re-fires.
    let a = req(
        &mut c,
        json!({"cmd": "submit", "job": "builtin.noop", "delay": "1h",
               "unique_key": unique_key("hourly", accepted_tick)}),
    )
    .await;
    let job_id = a["job_id"].as_str().unwrap().to_string();
    drop(c);
    node.stop().await.unwrap();
    leave_pending(tmp.path(), "hourly", accepted_tick).await;
    let node = TestNode::start_in(tmp.path(), with(&s)).await.unwrap();
    let mut c = node.client().await;
    let a = poll(
        &mut c,
        "the re-fired tick to be recorded",
        WAIT,
        json!({"cmd": "schedules"}),
        |a| a["schedules"][0]["last_job_id"] == job_id.as_str(),
    )
    .await;
    assert_eq!(
        ms(a["schedules"][0]["last_run_at"].as_str().unwrap()),
        accepted_tick
    );
    let r = runs(&mut c, "hourly").await;
    assert_once_per_tick(&r);
    assert_eq!(
        r.keys().copied().collect::<Vec<_>>(),
        [lost_tick, accepted_tick]
    );
    node.stop().await.unwrap();
}

/// Ensures that with `overlap = "skip"` a 2.5 s job scheduled every second fires about every
/// 3 s: the ticks while it runs are skipped, and no two runs overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_skip_waits_for_the_previous_run() {
    let mut s = schedule("slow", "* * * * * *", "builtin.sleep", json!({"ms": 2500}));
    s.overlap = Overlap::Skip;
    let node = TestNode::start_with(with(&s)).await;
    let mut c = node.client().await;
    let r = until_runs(&mut c, "slow", 3).await;
    assert_once_per_tick(&r);
    let ticks: Vec<i64> = r.keys().copied().collect();
    for pair in ticks.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            (3000..=4000).contains(&gap),
            "runs 3 s apart (two ticks skipped each time): {ticks:?}"
        );
    }
    let jobs: Vec<&Value> = r.values().map(|j| &j[0]).collect();
    for pair in jobs.windows(2) {
        let done = ms(pair[0]["completed_at"]
            .as_str()
            .expect("the previous run finished"));
        let started = ms(pair[1]["created_at"].as_str().unwrap());
        assert!(
            started >= done,
            "a run started before the previous one finished: {pair:?}"
        );
    }
    node.stop().await.unwrap();
}

/// Ensures that a schedule whose job does not exist is refused for good at each tick without
/// wedging: no job is created, and its next run keeps moving forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_job_does_not_wedge_the_schedule() {
    let s = schedule("broken", "* * * * * *", "nope.nothing", json!({}));
    let node = TestNode::start_with(with(&s)).await;
    let mut c = node.client().await;
    let next = |a: &Value| ms(a["schedules"][0]["next_run_at"].as_str().unwrap());
    let first = next(&req(&mut c, json!({"cmd": "schedules"})).await);
    let a = poll(
        &mut c,
        "two refused ticks to pass",
        WAIT,
        json!({"cmd": "schedules"}),
        |a| next(a) >= first + 2000,
    )
    .await;
    assert_eq!(a["schedules"][0]["last_run_at"], Value::Null);
    assert!(runs(&mut c, "broken").await.is_empty());
    node.stop().await.unwrap();
}

/// Ensures that `schedules` lists each schedule with its cron and job, the next run (RFC 3339
/// UTC, ms) and, once it fired, the last run and its job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_shows_next_and_last_run() {
    let tick = schedule("tick", "* * * * * *", "builtin.noop", json!({}));
    let nightly = schedule("nightly", "0 0 2 * * *", "builtin.noop", json!({"n": 1}));
    let node = TestNode::start_with(|a| a.schedules = vec![tick, nightly]).await;
    let mut c = node.client().await;
    let a = poll(
        &mut c,
        "the first run of `tick`",
        WAIT,
        json!({"cmd": "schedules"}),
        |a| a["schedules"][0]["last_run_at"].is_string(),
    )
    .await;
    let list = a["schedules"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{a}");

    let t = &list[0];
    assert_eq!(
        (t["name"].as_str(), t["cron"].as_str(), t["job"].as_str()),
        (Some("tick"), Some("* * * * * *"), Some("builtin.noop"))
    );
    let last = t["last_run_at"].as_str().unwrap();
    assert!(last.ends_with(".000Z"), "RFC 3339 UTC with ms: {last}");
    assert!(ms(t["next_run_at"].as_str().unwrap()) > ms(last));
    let job = req(&mut c, json!({"cmd": "status", "job_id": t["last_job_id"]})).await;
    assert_eq!(
        job["job"]["unique_key"],
        unique_key("tick", ms(last)),
        "{job}"
    );

    let n = &list[1];
    assert_eq!(n["name"], "nightly");
    assert_eq!(
        (n["last_run_at"].clone(), n["last_job_id"].clone()),
        (Value::Null, Value::Null)
    );
    let next = ms(n["next_run_at"].as_str().unwrap());
    let expected = next_tick(&parse_cron("0 0 2 * * *").unwrap(), now_ms()).unwrap();
    assert_eq!(next, expected, "the next 02:00 UTC");
    assert!(n["next_run_at"]
        .as_str()
        .unwrap()
        .ends_with("T02:00:00.000Z"));
    node.stop().await.unwrap();
}
