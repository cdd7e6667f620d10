//! The `warden` package: the node binary's glue. It reads the TOML config into the actors'
//! typed arguments, installs the process-global pieces (tracing, Prometheus) and hosts the CLI.

pub mod config;
