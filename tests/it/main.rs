//! Warden's integration tests, one binary (ripgrep style): each module starts real nodes on port
//! 0 with temporary data dirs and talks to them over TCP.

mod support;
// node processes of the real binary, killed and reaped when dropped
mod process;

// job life through the admin port: success, retries, dead letters, panics, dedup, delays, bounds
mod jobs;
// durability: kill -9 and replay, graceful stop, the data-dir lock, bad config files
mod durability;
// the `warden` CLI binary against a live node: output and exit codes
mod cli;
// the admin protocol over TCP: one test per command and per error code, framing and limits
mod protocol;
// fuzz-style: thousands of random and mutated lines; the node answers or closes, never hangs
mod fuzz;
// fake SEC, Yahoo and Alpha Vantage servers on loopback (test support, also used by the demo)
mod fakes;
// the upstream tasks run directly against the fakes: records, classification, redaction
mod sources;
// the upstream pipelines inside a real node: rate limit, throttling, breaker, restarts
mod pipelines;
// observability: promtool on a live scrape, a real Prometheus, the Grafana dashboard, JSON logs
mod observability;
// time limits (soft, hard) and worker recycling
mod limits;
// `why`: what a job waits for
mod why;
// cron schedules on a real node: once per tick, catch-up across a restart, overlap, `schedules`
mod schedules;
// batch jobs fanning out one child per ticker: summary, cancel cascade, restart
mod batches;
// the alert webhook against an axum receiver on loopback: one POST per alert, retries, a dead webhook
mod alerts;
// workflows: chains and groups with `then`, durable across a restart
mod workflows;
// exec tasks with real processes: protocol, exit codes, crashes, limits and cancel killing the
// process group, garbage on stdout, 100 jobs, the start-time check through the binary
mod exec;
// the seed's chain on config/demo.toml: sec.filings -> filing.analyze -> report.generate (Python)
mod chain;
// the Rust task API: examples/custom_task.rs on a node built with warden::Node::builder
mod custom;
// the web console over HTTP (pages, actions, CSRF, login, read-only) and in headless Chromium
mod console;
// PostgreSQL for the sink's tests: a schema per test on the shared cluster, a private server
mod pg;
// the PostgreSQL sink against a real PostgreSQL: typed tables, outage, kill -9, bad credentials
mod sink;
// cluster mode: node processes sharing one PostgreSQL: exactly once, rescue, unique keys, pause,
// a PostgreSQL restart
mod cluster;
// one conformance suite over both stores: each scenario against a node on its sled journal and
// a node in cluster mode, compared by the JSON a client sees
mod conformance;
