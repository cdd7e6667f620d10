# Convenience recipes (`cargo install just`); each is one command. README's commands and .ci/run
# never need just.

default:
    @just --list

# Run a node on the embedded default config.
run:
    cargo run --release -- node

# Run a node on a config file.
run-config config="config/default.toml":
    cargo run --release -- node --config {{config}}

# Installs what the tests need, gates format and clippy, runs the whole suite (what CI runs).
test:
    scripts/test

# Format check and clippy with warnings as errors (the gates of scripts/test).
lint:
    cargo fmt --all --check
    cargo clippy --all-targets -- -D warnings

# Format the code.
fmt:
    cargo fmt --all

# Throughput, latency, drain and memory of a `warden node` child process against the raw storage ceiling.
bench:
    cargo run --release -- bench

# The offline demo: fake upstreams, a node on config/demo.toml, a batch of jobs, the results, then
# the chain sec.filings -> filing.analyze -> report.generate (Python jobs in examples/jobs/).
demo:
    cargo run --example demo

# Screenshots of the web console's main pages on a demo workload (headless Chromium), into docs/.
screenshots:
    cargo test --test it -- --ignored --exact console::browser::screenshots --nocapture

# The web console's page loads with a million finished jobs in the journal.
bench-console:
    cargo run --release -- bench --console

# The soak test: the release binary at its default config, a million jobs twice across a kill -9.
soak:
    cargo test --release --test soak -- --ignored --nocapture
