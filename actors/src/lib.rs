//! `warden-actors`: the job model, the journal, the admin protocol and every actor of a Warden
//! node. Nothing here reads TOML or installs process-global state; the root crate does that and
//! hands plain typed arguments ([`args::NodeArgs`]) to [`node::Node::start`].
#![warn(missing_docs)]

pub mod admin;
pub mod alerts;
pub mod args;
pub mod backoff;
pub mod cluster;
pub mod console;
pub mod dispatcher;
pub mod exec;
pub mod job;
pub mod link;
pub mod metrics;
pub mod node;
pub mod pipeline;
pub mod postgres;
pub mod progress;
pub mod protocol;
pub mod queue;
pub mod routing;
pub mod scheduler;
pub mod sink;
pub mod sources;
pub mod store;
pub mod supervisor;
pub mod tasks;
pub mod upstream;
