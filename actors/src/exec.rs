//! Exec tasks: a job served by a program in any language, declared in the config
//! (`[tasks."<name>"]`) and run once per attempt under the same supervision, limits, retries,
//! journal and metrics as the built-in tasks. docs/tasks.md is the contract:
//!
//! - stdin: one JSON object, `{job_id, attempt, name, params}`, then end of file;
//! - stdout: JSON lines, `record`, `progress` or `result` ([`protocol`]), read with a bounded
//!   line length ([`lines`]);
//! - stderr: logged line by line at info, its tail kept for the job's error ([`stderr`]);
//! - exit: 0 succeeded, 75 transient, 65 permanent, anything else or a signal a crash
//!   (retried like a transient error), see [`run`];
//! - signals: SIGTERM to the process group at the soft limit and on cancel, SIGKILL to the
//!   group when the attempt is aborted or ends ([`group`]);
//! - paths are checked before the node starts ([`check`]).
//!
//! The environment is minimal on purpose, so a task does not depend on whatever the node was
//! started with: the variables of [`INHERITED`] when the node has them, the task's
//! `inherit_env`, `WARDEN_*` describing the job and the node's admin port, `PYTHONUNBUFFERED=1`
//! (so a Python task's progress is not held in a pipe buffer), then the task's `env`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::args::ExecTaskArgs;
use crate::tasks::{TaskCtx, TaskFn};

pub mod check;
pub mod group;
pub mod lines;
pub mod protocol;
pub mod run;
pub mod stderr;

/// Variables passed from the node's environment to every exec task, when set.
pub const INHERITED: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
];

/// What the node tells every exec task about itself.
#[derive(Debug, Clone)]
pub struct NodeEnv {
    /// The admin port, as `WARDEN_ADDR` (the CLI's variable, so `warden` works inside a task).
    pub admin_addr: SocketAddr,
    /// The admin token, as `WARDEN_ADMIN_TOKEN`, when the node has one.
    pub admin_token: Option<String>,
    /// The node's own environment, read once at start: the source of inherited variables.
    pub inherited: BTreeMap<String, String>,
}

impl NodeEnv {
    /// The node's facts, with its inheritable variables read from the process environment.
    pub fn from_process(admin_addr: SocketAddr, admin_token: Option<String>) -> NodeEnv {
        NodeEnv {
            admin_addr,
            admin_token,
            inherited: std::env::vars().collect(),
        }
    }

    /// The environment of one attempt, in increasing precedence.
    pub fn for_attempt(&self, task: &ExecTaskArgs, ctx: &TaskCtx) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = INHERITED
            .iter()
            .copied()
            .chain(task.inherit_env.iter().map(String::as_str))
            .filter_map(|k| self.inherited.get(k).map(|v| (k.to_string(), v.clone())))
            .collect();
        env.entry("PATH".into())
            .or_insert_with(|| check::DEFAULT_PATH.into());
        env.insert("PYTHONUNBUFFERED".into(), "1".into());
        env.insert("WARDEN_ADDR".into(), self.admin_addr.to_string());
        if let Some(token) = &self.admin_token {
            env.insert("WARDEN_ADMIN_TOKEN".into(), token.clone());
        }
        env.insert("WARDEN_JOB_ID".into(), ctx.job_id.to_string());
        env.insert("WARDEN_JOB_NAME".into(), ctx.name.clone());
        env.insert("WARDEN_ATTEMPT".into(), ctx.attempt.to_string());
        env.extend(task.env.clone());
        env
    }
}

/// One exec task with what every attempt needs.
#[derive(Debug)]
pub struct ExecSpec {
    /// The task as configured, paths resolved.
    pub args: ExecTaskArgs,
    /// The node's facts for the environment.
    pub env: NodeEnv,
}

/// The task body that runs `args` once per attempt.
pub fn task(args: ExecTaskArgs, env: NodeEnv) -> TaskFn {
    let spec = Arc::new(ExecSpec { args, env });
    Arc::new(move |ctx| {
        let spec = spec.clone();
        Box::pin(async move { run::attempt(&spec, ctx).await })
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Ensures that an attempt's environment holds the inherited variables the node has, the
    /// task's `inherit_env`, the job's `WARDEN_*` and the task's `env` last, and nothing else.
    #[test]
    fn the_environment_is_minimal_and_ordered() {
        let node = NodeEnv {
            admin_addr: "127.0.0.1:7070".parse().unwrap(),
            admin_token: Some("s3cret".into()),
            inherited: [
                ("HOME", "/root"),
                ("AWS_PROFILE", "prod"),
                ("SECRET", "no"),
                ("LANG", "C"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        };
        let task = ExecTaskArgs {
            name: "t.x".into(),
            command: vec!["/bin/true".into()],
            cwd: "/".into(),
            env: [("LANG".to_string(), "de_DE.UTF-8".to_string())].into(),
            inherit_env: vec!["AWS_PROFILE".into(), "MISSING".into()],
            max_line_bytes: 1024,
            stderr_tail_bytes: 1024,
        };
        let ctx = TaskCtx::detached("t.x", json!({}), 2);
        let env = node.for_attempt(&task, &ctx);
        let keys: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "AWS_PROFILE",
                "HOME",
                "LANG",
                "PATH",
                "PYTHONUNBUFFERED",
                "WARDEN_ADDR",
                "WARDEN_ADMIN_TOKEN",
                "WARDEN_ATTEMPT",
                "WARDEN_JOB_ID",
                "WARDEN_JOB_NAME"
            ]
        );
        assert_eq!(env["LANG"], "de_DE.UTF-8", "the task's env wins");
        assert_eq!(
            env["PATH"],
            check::DEFAULT_PATH,
            "a PATH even when the node has none"
        );
        assert_eq!(
            (env["WARDEN_ATTEMPT"].as_str(), env["WARDEN_ADDR"].as_str()),
            ("2", "127.0.0.1:7070")
        );
    }
}
