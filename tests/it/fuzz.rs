//! Fuzz-style test of the admin port: thousands of random and mutated lines from a fixed seed
//! (random bytes with invalid UTF-8 and NULs, truncated and bit-flipped requests, deep nesting,
//! huge numbers, random field names, valid commands with random values) over several
//! connections at once. Every line must get exactly one JSON answer with `"ok"`, or (only for a
//! line over the limit) one `too_large` answer and a clean close; no read may hang; and at the
//! end the node still serves a fresh client and runs its job.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::support::{finished, req, submit, TestNode};

/// The fixed seed: a failure replays exactly.
const SEED: u64 = 0x5eed_f00d_2026_0001;
/// Concurrent connections, each with its own stream of lines.
const CONNECTIONS: usize = 4;
/// Lines per connection.
const LINES: usize = 1250;
/// The node's line limit in this test, so that over-long lines stay cheap to send.
const MAX_LINE: usize = 64 * 1024;
/// Bound on every read and write: a hang is a failure.
const IO: Duration = Duration::from_secs(5);

/// xorshift64*: tiny, deterministic, good enough to pick bytes.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Commands the generator uses: every command of the protocol but `shutdown`, which would stop
/// the node in the middle of the test. `pause` is in; the pipeline is resumed before the final
/// check.
fn commands() -> Vec<&'static str> {
    warden_actors::protocol::COMMANDS
        .iter()
        .copied()
        .filter(|c| *c != "shutdown")
        .collect()
}

const FIELDS: &[&str] = &[
    "id",
    "cmd",
    "token",
    "job",
    "params",
    "priority",
    "unique_key",
    "max_retries",
    "delay",
    "run_at",
    "jobs",
    "job_id",
    "status",
    "name",
    "limit",
    "before",
    "pipeline",
    "prefix",
    "after",
    "drain",
];

/// A random JSON value, at most `depth` deep.
fn random_value(r: &mut Rng, depth: usize) -> Value {
    match r.below(if depth == 0 { 7 } else { 9 }) {
        0 => Value::Null,
        1 => json!(r.chance(50)),
        2 => json!(r.below(2000) as i64 - 1000),
        3 => r
            .pick(&[
                json!(u64::MAX),
                json!(i64::MIN),
                json!(0),
                json!(-0.0),
                json!(1.5),
                json!(1e308),
                json!(-1e-308),
                json!(4_294_967_296u64),
                json!(1001),
            ])
            .clone(),
        4 => json!(random_text(r)),
        5 => r
            .pick(&[
                json!("high"),
                json!("low"),
                json!("normal"),
                json!("urgent"),
                json!("failed"),
                json!("pending"),
                json!("builtin"),
                json!("builtin.*"),
                json!("[z-a]"),
                json!("30s"),
                json!("1000h"),
                json!("18446744073709551615s"),
                json!("2026-11-28T10:00:00Z"),
                json!("9999-12-31T23:59:59.999Z"),
                json!("0193b7f0-3c55-7d2e-9a51-2b0c8f1e6a10"),
                json!(""),
            ])
            .clone(),
        6 => json!(uuid::Uuid::from_u64_pair(r.next(), r.next()).to_string()),
        7 => Value::Array(
            (0..r.below(4))
                .map(|_| random_value(r, depth - 1))
                .collect(),
        ),
        _ => {
            let mut m = serde_json::Map::new();
            for _ in 0..r.below(4) {
                let k = if r.chance(50) {
                    r.pick(FIELDS).to_string()
                } else {
                    random_text(r)
                };
                m.insert(k, random_value(r, depth - 1));
            }
            Value::Object(m)
        }
    }
}

fn random_text(r: &mut Rng) -> String {
    const PARTS: &[&str] = &[
        "a", "Z", "0", " ", "\"", "\\", "\u{0}", "\u{1f}", "\n", "\r", "\t", "é", "€", "𝄞", "{",
        "}", "[", "]", ":", ",", "*", "?", ".", "/", "\u{feff}", "\u{2028}",
    ];
    (0..r.below(12)).map(|_| *r.pick(PARTS)).collect()
}

/// A plausible value for `field` most of the time, a random one otherwise.
fn field_value(r: &mut Rng, field: &str, ids: &[String]) -> Value {
    if r.chance(25) {
        return random_value(r, 2);
    }
    match field {
        "job" => json!(r.pick(&[
            "builtin.noop",
            "builtin.sleep",
            "builtin.fail",
            "builtin.fail_permanent",
            "builtin.nothing",
            "sec.filings",
        ])),
        // small values only: a long sleep or endless failures would hold the workers
        "params" => match r.below(4) {
            0 => json!({}),
            1 => json!({"ms": r.below(30)}),
            2 => json!({"times": r.below(3)}),
            _ => json!({"ms": "soon", "times": -1}),
        },
        "priority" => json!(r.pick(&["high", "normal", "low", "urgent"])),
        "unique_key" => json!(format!("k{}", r.below(20))),
        "max_retries" => json!(r.below(4)),
        "delay" => json!(r.pick(&["1ms", "20ms", "1000h", "soon", "-1s", "9223371036854775s",])),
        "run_at" => json!(r.pick(&["2020-01-01T00:00:00Z", "2999-01-01T00:00:00Z", "now"])),
        "job_id" | "before" if !ids.is_empty() && r.chance(80) => json!(r.pick(ids)),
        "status" => json!(r.pick(&["pending", "running", "succeeded", "failed", "done"])),
        "name" => json!(r.pick(&["builtin.*", "builtin.noop", "sec.*", "[", "**"])),
        "limit" => json!(r.pick(&[0, 1, 5, 100, 1000, 1001])),
        "pipeline" => json!(r.pick(&["builtin", "nope", ""])),
        "prefix" | "after" => json!(r.pick(&["", "sec/", "sec/filings/1364954/"])),
        _ => random_value(r, 2),
    }
}

/// The fields each command takes.
fn fields_of(cmd: &str) -> &'static [&'static str] {
    match cmd {
        "submit" => &[
            "job",
            "params",
            "priority",
            "unique_key",
            "max_retries",
            "delay",
            "run_at",
        ],
        "submit_batch" => &["jobs"],
        "status" | "history" | "cancel" | "retry" => &["job_id"],
        "list" => &["status", "name", "limit", "before"],
        "dlq" => &["limit"],
        "pause" | "resume" => &["pipeline"],
        "records" => &["prefix", "limit", "after"],
        _ => &[],
    }
}

fn submit_object(r: &mut Rng, ids: &[String]) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("job".into(), field_value(r, "job", ids));
    for f in fields_of("submit").iter().skip(1) {
        if r.chance(30) {
            m.insert(f.to_string(), field_value(r, f, ids));
        }
    }
    Value::Object(m)
}

/// A command that is valid or nearly so, with random values.
fn valid_ish(r: &mut Rng, ids: &[String]) -> Value {
    let cmd = *r.pick(&commands());
    let mut m = serde_json::Map::new();
    m.insert("cmd".into(), json!(cmd));
    if r.chance(40) {
        m.insert("id".into(), random_value(r, 2));
    }
    for f in fields_of(cmd) {
        if r.chance(70) {
            let v = if *f == "jobs" {
                Value::Array((0..r.below(5)).map(|_| submit_object(r, ids)).collect())
            } else {
                field_value(r, f, ids)
            };
            m.insert(f.to_string(), v);
        }
    }
    if r.chance(10) {
        let f = if r.chance(50) {
            r.pick(FIELDS).to_string()
        } else {
            random_text(r)
        };
        m.insert(f, random_value(r, 2));
    }
    Value::Object(m)
}

/// Flips, replaces, drops, inserts, truncates or duplicates bytes of `line`.
fn mutate(r: &mut Rng, mut line: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + r.below(4) {
        let n = line.len().max(1);
        let at = r.below(n).min(line.len());
        match r.below(6) {
            0 if at < line.len() => line[at] ^= 1 << r.below(8),
            1 if at < line.len() => line[at] = r.next() as u8,
            2 => {
                let end = (at + r.below(8)).min(line.len());
                line.drain(at..end);
            }
            3 => {
                let len = 1 + r.below(4);
                let extra = r.bytes(len);
                line.splice(at..at, extra);
            }
            4 => line.truncate(at),
            _ => {
                let end = (at + r.below(16)).min(line.len());
                let copy = line[at..end].to_vec();
                line.splice(at..at, copy);
            }
        }
    }
    line
}

/// One fuzz line (without its final `\n`; it may hold more `\n`s).
fn fuzz_line(r: &mut Rng, ids: &[String]) -> Vec<u8> {
    match r.below(20) {
        // random bytes: invalid UTF-8, NULs, control characters
        0..=2 => {
            let n = r.below(200);
            r.bytes(n)
        }
        // random printable ASCII with JSON punctuation
        3 => {
            const ALPHABET: &[u8] = b"{}[]\":,0123456789.eE+-truefalsnl \\abcdxyz";
            (0..r.below(120)).map(|_| *r.pick(ALPHABET)).collect()
        }
        // truncations and byte flips of valid requests
        4..=7 => {
            let valid = valid_ish(r, ids).to_string().into_bytes();
            mutate(r, valid)
        }
        // deep nesting
        8 => {
            let depth = *r.pick(&[129, 1000, 10_000, 50_000]);
            match r.below(4) {
                0 => vec![b'['; depth],
                1 => {
                    let mut v = vec![b'['; depth];
                    v.extend(vec![b']'; depth]);
                    v
                }
                2 => "{\"a\":".repeat(depth / 5).into_bytes(),
                _ => {
                    let d = r.below(140);
                    format!(
                        r#"{{"cmd":"submit","job":"builtin.noop","params":{{"x":{}1{}}}}}"#,
                        "[".repeat(d),
                        "]".repeat(d)
                    )
                    .into_bytes()
                }
            }
        }
        // huge numbers
        9 => {
            let n = *r.pick(&[
                "1e400",
                "-1e400",
                "18446744073709551616",
                "99999999999999999999999999999999999999",
                "-9223372036854775809",
                "1.0e-400",
                "0.0000000000000000000000000000001",
                "4294967296",
                "1e19",
            ]);
            let field = *r.pick(&["limit", "max_retries", "id", "job_id", "drain"]);
            let cmd = *r.pick(&["list", "submit", "dlq", "records", "ping", "status"]);
            format!(r#"{{"cmd":"{cmd}","job":"builtin.sleep","{field}":{n}}}"#).into_bytes()
        }
        // random field names
        10 => {
            let mut m = serde_json::Map::new();
            m.insert("cmd".into(), json!(r.pick(&commands())));
            for _ in 0..1 + r.below(3) {
                m.insert(random_text(r), random_value(r, 1));
            }
            Value::Object(m).to_string().into_bytes()
        }
        // several lines in one, blank lines, CRLF
        11 => {
            let mut v = valid_ish(r, ids).to_string().into_bytes();
            let seps: [&[u8]; 4] = [b"\n", b"\r\n", b"\n\n", b"\n \n"];
            let sep = r.pick(&seps);
            v.extend_from_slice(sep);
            v.extend(valid_ish(r, ids).to_string().into_bytes());
            if r.chance(50) {
                v.push(b'\r');
            }
            v
        }
        // over the limit: answered with too_large, then closed
        12 if r.chance(15) => {
            let mut v = br#"{"cmd":"submit","job":"builtin.noop","params":{"pad":""#.to_vec();
            v.resize(MAX_LINE + 1 + r.below(MAX_LINE), b'x');
            v
        }
        // valid commands with random values
        _ => valid_ish(r, ids).to_string().into_bytes(),
    }
}

/// Whether `bytes` (one line, possibly with `\n`s inside) holds a valid-looking shutdown request.
fn mentions_shutdown(bytes: &[u8]) -> bool {
    bytes
        .windows(8)
        .any(|w| w.eq_ignore_ascii_case(b"shutdown"))
}

/// How many answers a line should get: one per segment between `\n`s that is not blank.
fn expected_answers(line: &[u8]) -> (usize, bool) {
    let mut n = 0;
    let mut too_large = false;
    for seg in line.split(|b| *b == b'\n') {
        if too_large {
            break;
        }
        if seg.len() > MAX_LINE {
            too_large = true;
            n += 1;
        } else if !seg.iter().all(u8::is_ascii_whitespace) {
            n += 1;
        }
    }
    (n, too_large)
}

struct Conn {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

async fn connect(addr: SocketAddr) -> Conn {
    let s = timeout(IO, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let (rd, wr) = s.into_split();
    Conn {
        rd: BufReader::new(rd),
        wr,
    }
}

/// What happened to one line.
#[derive(Default, Debug)]
struct Tally {
    answers: usize,
    errors: usize,
    closes: usize,
}

/// Sends `LINES` lines from `seed` on one connection (reconnecting after each close), each
/// followed by a `ping` whose answer marks the end of that line's answers.
async fn run_lines(addr: SocketAddr, seed: u64, conn_no: usize) -> Tally {
    let mut r = Rng::new(seed);
    let mut ids: Vec<String> = Vec::new();
    let mut tally = Tally::default();
    let mut c = connect(addr).await;
    let mut n = 0;
    while n < LINES {
        let line = fuzz_line(&mut r, &ids);
        if mentions_shutdown(&line) {
            continue; // a shutdown would stop the node under test
        }
        n += 1;
        let (want, too_large) = expected_answers(&line);
        let sync = format!("sync-{conn_no}-{n}");
        let shown = String::from_utf8_lossy(&line[..line.len().min(300)]).into_owned();
        let mut out = line.clone();
        out.push(b'\n');
        out.extend_from_slice(json!({"id": sync, "cmd": "ping"}).to_string().as_bytes());
        out.push(b'\n');
        // The node may close mid-write after a too_large answer; a failed write is then fine.
        let wrote = timeout(IO, c.wr.write_all(&out)).await;
        assert!(
            wrote.is_ok(),
            "write hung on line {n} (seed {seed:#x}): {shown:?}"
        );

        let mut got = 0;
        loop {
            let mut answer = Vec::new();
            let read = timeout(IO, c.rd.read_until(b'\n', &mut answer))
                .await
                .unwrap_or_else(|_| {
                    panic!("no answer within {IO:?} to line {n} (seed {seed:#x}): {shown:?}")
                });
            let closed = match read {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => {
                    panic!(
                        "connection broke instead of closing cleanly on line {n}: {e}: {shown:?}"
                    )
                }
            };
            if closed {
                assert!(
                    too_large && got == want,
                    "closed after {got} of {want} answers to line {n} (seed {seed:#x}): {shown:?}"
                );
                tally.closes += 1;
                c = connect(addr).await;
                break;
            }
            let a: Value = serde_json::from_slice(&answer).unwrap_or_else(|e| {
                panic!(
                    "answer to line {n} is not JSON ({e}): {:?}; line: {shown:?}",
                    String::from_utf8_lossy(&answer)
                )
            });
            let ok = a["ok"].as_bool().unwrap_or_else(|| {
                panic!("answer without a boolean ok to line {n}: {a}; line: {shown:?}")
            });
            if a["id"] == sync.as_str() {
                assert!(ok, "{a}");
                assert_eq!(
                    got, want,
                    "answers to line {n} (seed {seed:#x}) before the sync ping: {shown:?}"
                );
                assert!(!too_large, "not closed after too_large on line {n}");
                break;
            }
            got += 1;
            tally.answers += 1;
            if ok {
                for id in a["job_ids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain(a.get("job_id"))
                {
                    if let Some(id) = id.as_str() {
                        ids.push(id.to_string());
                    }
                }
            } else {
                tally.errors += 1;
                let code = a["error"]["code"].as_str().expect("an error code");
                assert!(
                    a["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty()),
                    "{a}"
                );
                assert_ne!(code, "internal", "line {n}: {a}; line: {shown:?}");
                if code == "too_large" {
                    assert!(too_large, "too_large for a short line {n}: {shown:?}");
                }
            }
            assert!(
                got <= want,
                "more answers than lines for line {n} (seed {seed:#x}): {a}; line: {shown:?}"
            );
        }
    }
    tally
}

/// Ensures that 5,000 random and mutated lines over 4 concurrent connections each get one JSON
/// answer with `ok` (or, over the line limit, `too_large` and a clean close), that no read
/// hangs, and that afterwards a fresh client can ping, submit a job and see it succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_lines_never_break_the_node() {
    let started = Instant::now();
    let node = TestNode::start_with(|a| {
        a.admin.max_line_bytes = MAX_LINE;
        a.admin.max_connections = 2 * CONNECTIONS;
    })
    .await;
    let runs: Vec<_> = (0..CONNECTIONS)
        .map(|i| tokio::spawn(run_lines(node.addr(), SEED ^ (i as u64 * 0x9e37), i)))
        .collect();
    let mut totals = Vec::new();
    for run in runs {
        totals.push(run.await.expect("a fuzz connection failed"));
    }
    eprintln!("fuzz tallies: {totals:?}");
    let answers: usize = totals.iter().map(|t| t.answers).sum();
    let errors: usize = totals.iter().map(|t| t.errors).sum();
    let closes: usize = totals.iter().map(|t| t.closes).sum();
    assert!(answers >= CONNECTIONS * LINES * 9 / 10, "{totals:?}");
    assert!(errors > answers / 3, "mostly bad lines: {totals:?}");
    assert!(answers - errors > 200, "many valid ones too: {totals:?}");
    assert!(closes >= 1, "some lines were over the limit: {totals:?}");

    // The fuzz may have paused the pipeline: resume it, then a fresh client must be served.
    let mut admin = node.client().await;
    let a = req(&mut admin, json!({"cmd": "resume", "pipeline": "builtin"})).await;
    assert_eq!(a["ok"], true, "{a}");
    let mut c = node.client().await;
    let a = req(&mut c, json!({"cmd": "ping"})).await;
    assert_eq!(a["pong"], true, "{a}");
    let id = submit(&mut c, "builtin.noop", json!({})).await;
    let j = finished(&mut c, &id, Duration::from_secs(30)).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    node.stop()
        .await
        .expect("the node stops cleanly after the fuzz");
}
