//! Warden's integration tests, one binary (ripgrep style): each module starts real nodes on port
//! 0 with temporary data dirs and talks to them over TCP.

mod support;

// job life through the admin port: success, retries, dead letters, panics, dedup, delays, bounds
mod jobs;
// durability: kill -9 and replay, graceful stop, the data-dir lock, bad config files
mod durability;
// the `warden` CLI binary against a live node: output and exit codes
mod cli;
