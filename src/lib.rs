//! The `warden` package: the node binary's glue. It reads the TOML config into the actors'
//! typed arguments (`config`), installs the process-global pieces (`telemetry`), hosts the
//! admin CLI (`cli`, over `client`) and the benchmark (`bench`), and says where a running node
//! listens (`listening`). The actors themselves live in the `warden-actors` crate. A program
//! that runs a node with Rust tasks of its own starts at [`Node::builder`] (`builder`).

pub mod bench;
pub mod builder;
pub mod cli;
pub mod client;
pub mod config;
pub mod listening;
pub mod telemetry;

pub use builder::{task, Node, NodeBuilder, StartError};
