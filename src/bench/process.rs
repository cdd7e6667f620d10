//! A `warden node` child process as users run it: the embedded default config with only the
//! data dir changed and its ports on loopback port 0 (read back from `listening.json`), its log
//! (stderr, the default `info` level) appended to a file, and its resource figures read from
//! `/proc`. Used by `warden bench` and by the soak test.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::Client;
use crate::config::DEFAULT_TOML;
use crate::listening::{Listening, NotListening};

/// Where the child's ports go: port 0 on loopback, the kernel's choice, read back from the
/// `listening.json` the node writes.
const ANY_LOOPBACK_PORT: &str = "127.0.0.1:0";

/// The embedded default config with `node.data_dir` replaced and `admin`, `metrics` and
/// `console` listening on port 0 of loopback.
pub fn default_config_on(data_dir: &Path) -> Result<String, String> {
    let mut doc: toml::Table = DEFAULT_TOML
        .parse()
        .map_err(|e| format!("the embedded default config: {e}"))?;
    let mut set = |section: &str, key: &str, value: &str| {
        let table = doc
            .get_mut(section)
            .and_then(toml::Value::as_table_mut)
            .ok_or_else(|| format!("the embedded default config has no [{section}]"))?;
        table.insert(key.into(), toml::Value::String(value.to_string()));
        Ok::<(), String>(())
    };
    set("node", "data_dir", &data_dir.display().to_string())?;
    for section in ["admin", "metrics", "console"] {
        set(section, "listen", ANY_LOOPBACK_PORT)?;
    }
    toml::to_string(&doc).map_err(|e| format!("writing the config: {e}"))
}

/// `config` with `[pipelines.builtin] workers` set to `n`.
fn with_builtin_workers(config: &str, n: usize) -> Result<String, String> {
    let mut doc: toml::Table = config.parse().map_err(|e| format!("the config: {e}"))?;
    let builtin = doc
        .get_mut("pipelines")
        .and_then(|p| p.get_mut("builtin"))
        .and_then(toml::Value::as_table_mut)
        .ok_or("the embedded default config has no [pipelines.builtin]")?;
    builtin.insert("workers".into(), toml::Value::Integer(n as i64));
    toml::to_string(&doc).map_err(|e| format!("writing the config: {e}"))
}

/// Resource figures of a live process, from `/proc/<pid>/status` and `/proc/<pid>/fd`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Resident set size (`VmRSS`).
    pub rss_bytes: u64,
    /// Peak resident set size so far (`VmHWM`).
    pub peak_rss_bytes: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// OS threads (`Threads`).
    pub threads: u64,
}

/// Reads [`Sample`] for `pid`; `None` once the process is gone.
pub fn sample(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Sample {
        rss_bytes: field("VmRSS:")? * 1024,
        peak_rss_bytes: field("VmHWM:")? * 1024,
        fds,
        threads: field("Threads:")?,
    })
}

/// A running `warden node` child; killed (SIGKILL) when dropped while still running.
pub struct NodeProcess {
    exe: PathBuf,
    config: PathBuf,
    log: PathBuf,
    data: PathBuf,
    child: Child,
    /// Where the running child listens, once [`NodeProcess::wait_ready`] has read it.
    listening: Option<Listening>,
}

impl NodeProcess {
    /// Writes `<dir>/node.toml` (the default config on `<dir>/data` and free ports) and starts
    /// `exe node --config` on it, its stderr appended to `<dir>/node.log`.
    pub fn spawn(exe: &Path, dir: &Path) -> Result<NodeProcess, String> {
        Self::spawn_with(exe, dir, "")
    }

    /// [`NodeProcess::spawn`] with `extra` TOML (new sections only) appended to the config.
    pub fn spawn_with(exe: &Path, dir: &Path, extra: &str) -> Result<NodeProcess, String> {
        Self::spawn_workers(exe, dir, extra, None)
    }

    /// [`NodeProcess::spawn_with`], `builtin`'s workers set to `workers` when given.
    pub fn spawn_workers(
        exe: &Path,
        dir: &Path,
        extra: &str,
        workers: Option<usize>,
    ) -> Result<NodeProcess, String> {
        let config = dir.join("node.toml");
        let data = dir.join("data");
        let mut text = default_config_on(&data)?;
        if let Some(n) = workers {
            text = with_builtin_workers(&text, n)?;
        }
        let text = text + extra;
        std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
        let log = dir.join("node.log");
        let child = start(exe, &config, &log)?;
        Ok(NodeProcess {
            exe: exe.to_owned(),
            config,
            log,
            data,
            child,
            listening: None,
        })
    }

    /// Starts the node again on the same config and data dir (after [`NodeProcess::kill9`]).
    pub fn restart(&mut self) -> Result<(), String> {
        self.child = start(&self.exe, &self.config, &self.log)?;
        self.listening = None;
        Ok(())
    }

    /// Where the running child listens; known once [`NodeProcess::wait_ready`] succeeded.
    fn listening(&self) -> Result<Listening, String> {
        self.listening
            .ok_or_else(|| "the node's addresses are known once it is ready".to_string())
    }

    /// The admin port (after [`NodeProcess::wait_ready`]).
    pub fn admin(&self) -> Result<SocketAddr, String> {
        Ok(self.listening()?.admin)
    }

    /// The web console (after [`NodeProcess::wait_ready`]).
    pub fn console(&self) -> Result<SocketAddr, String> {
        self.listening()?
            .console
            .ok_or_else(|| "the node serves no console".to_string())
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file (the node's stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The child's resource figures now; `None` once it is gone.
    pub fn sample(&self) -> Option<Sample> {
        sample(self.pid())
    }

    /// The exit status if the child has ended.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>, String> {
        self.child
            .try_wait()
            .map_err(|e| format!("waiting for the node: {e}"))
    }

    /// Kills the child with SIGKILL and reaps it.
    pub fn kill9(&mut self) -> Result<(), String> {
        self.child
            .kill()
            .map_err(|e| format!("killing the node: {e}"))?;
        self.child
            .wait()
            .map_err(|e| format!("reaping the node: {e}"))?;
        Ok(())
    }

    /// Waits until the node answers `ping`, up to `timeout`; returns how long that took.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let listening = match Listening::wait(&self.data, self.pid(), timeout).await {
            Ok(l) => l,
            Err(NotListening::Exited { .. }) => {
                let status = self
                    .child
                    .wait()
                    .map_err(|e| format!("reaping the node: {e}"))?;
                return Err(self.ended_early(status));
            }
            Err(timed_out) => return Err(timed_out.to_string()),
        };
        self.listening = Some(listening);
        loop {
            if let Ok(mut c) = Client::connect_addr(listening.admin).await {
                if let Ok(a) = c.request(&json!({"cmd": "ping"})).await {
                    if a["ok"] == true {
                        return Ok(started.elapsed());
                    }
                }
            }
            if let Some(status) = self.exited()? {
                return Err(self.ended_early(status));
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "the node did not answer ping on {} within {timeout:?}",
                    listening.admin
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks the node to `shutdown` and waits for it to exit, up to `timeout`.
    pub async fn shutdown(mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let mut c = Client::connect_addr(self.admin()?)
            .await
            .map_err(|e| e.to_string())?;
        let _ = c.request(&json!({"cmd": "shutdown"})).await;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the node did not exit within {timeout:?} of shutdown"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Describes an unexpected exit, with the end of the log.
    pub fn ended_early(&self, status: ExitStatus) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "the node exited ({status}); the end of {}:\n{}",
            self.log.display(),
            tail.join("\n")
        )
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `exe node --config config` with stderr appended to `log`.
fn start(exe: &Path, config: &Path, log: &Path) -> Result<Child, String> {
    let file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    Command::new(exe)
        .args(["node", "--config"])
        .arg(config)
        // The default config's level, whatever the caller's environment says.
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .map_err(|e| format!("starting {} node: {e}", exe.display()))
}
