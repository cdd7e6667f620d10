//! The Rust task API: a program that depends on `warden` runs a node with tasks of its own,
//! without forking Warden.
//!
//! ```no_run
//! use warden::task::{TaskCtx, TaskError, TaskResult};
//!
//! async fn greet(ctx: TaskCtx) -> TaskResult {
//!     let who = ctx.params["who"].as_str().ok_or_else(|| {
//!         TaskError::Permanent("reports.greet: params.who: expected a string".into())
//!     })?;
//!     ctx.records.put(&format!("greetings/{who}"), &serde_json::json!({"hello": who}))?;
//!     Ok(serde_json::json!({"greeted": who}))
//! }
//!
//! # async fn run() -> Result<(), warden::StartError> {
//! let config = warden::config::Config::embedded_default();
//! let node = warden::Node::builder(config).task("reports.greet", greet).start().await?;
//! node.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! A task gets the same [`task::TaskCtx`] as the built-in ones (params, attempt, the
//! cancel and soft-limit signals, the record store, progress) and returns the same error
//! classes. It runs in the pipeline routing sends its name to (`reports.greet` → `reports`),
//! which starts with default settings when the config has no `[pipelines.reports]`.

use std::future::Future;
use std::sync::Arc;

use warden_actors::node::NodeError;
use warden_actors::tasks::{TaskCtx, TaskResult, TaskSet};

use crate::config::{Config, ConfigError, DEFAULT_ORIGIN};

/// What a task implementation sees and returns, re-exported for embedding programs.
pub mod task {
    pub use warden_actors::progress::Progress;
    pub use warden_actors::tasks::{Records, TaskCtx, TaskError, TaskResult};
}

/// Entry point of the embedding API: [`Node::builder`].
pub struct Node;

impl Node {
    /// A builder for a node on `config` (from [`Config::from_file`] or
    /// [`Config::embedded_default`]).
    pub fn builder(config: Config) -> NodeBuilder {
        NodeBuilder {
            config,
            origin: DEFAULT_ORIGIN.to_string(),
            tasks: TaskSet::default(),
        }
    }
}

/// Why a built node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config (with the builder's tasks) does not hold together.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The node itself refused to start (data dir, port, a task defined twice, ...).
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// A node's config plus the Rust tasks it runs; [`NodeBuilder::start`] starts it.
pub struct NodeBuilder {
    config: Config,
    origin: String,
    tasks: TaskSet,
}

impl NodeBuilder {
    /// Names the config's origin in error messages (the file it came from).
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = origin.into();
        self
    }

    /// Adds the task `name` (`<pipeline>.<task>` unless a route says otherwise), run by `f`
    /// once per attempt.
    pub fn task<F, Fut>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(TaskCtx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.tasks = self.tasks.with(name, Arc::new(move |ctx| Box::pin(f(ctx))));
        self
    }

    /// The node's arguments, the environment read through `env` (as [`Config::into_args`]).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key at fault.
    pub fn args(
        self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<warden_actors::args::NodeArgs, ConfigError> {
        self.config.into_args_with(&self.origin, env, self.tasks)
    }

    /// Starts the node with the process environment; run it with
    /// [`warden_actors::node::Node::run`].
    ///
    /// # Errors
    /// [`StartError`] when the config or the node refuses.
    pub async fn start(self) -> Result<warden_actors::node::Node, StartError> {
        let args = self.args(&|var| std::env::var(var).ok())?;
        Ok(warden_actors::node::Node::start(args).await?)
    }
}
