//! Where a running node listens: `<data_dir>/listening.json`, written once its admin, metrics
//! and console ports are bound, and removed when it stops cleanly.
//!
//! A node configured on port 0 (`listen = "127.0.0.1:0"`) takes whatever port the kernel gives
//! it, and this file is how the process that started it (a test, `warden bench`, a supervisor
//! script) learns which. Picking a "free" port first and writing it into the config races with
//! every other bind on the host: another node's port-0 listener can take the port between the
//! check and the bind, and the client then talks to the wrong server. The file names the node's
//! process id, so a file left behind by a killed node is never taken for the new one's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The file's name in the data dir.
pub const FILE: &str = "listening.json";

/// How often [`Listening::wait`] looks for the file.
const POLL: Duration = Duration::from_millis(20);

/// Why [`Listening::wait`] has no addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotListening {
    /// The process ended (or is a zombie not yet reaped) before it wrote the file.
    #[error("the node (pid {pid}) exited before it listened")]
    Exited { pid: u32 },
    /// The process runs but wrote no file in time.
    #[error("the node (pid {pid}) wrote no {} within {after:?}", path.display())]
    TimedOut {
        pid: u32,
        path: PathBuf,
        after: Duration,
    },
}

/// A running node's process id and bound addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listening {
    /// The node's process id.
    pub pid: u32,
    /// The admin port (newline-delimited JSON).
    pub admin: SocketAddr,
    /// The Prometheus endpoint.
    pub metrics: SocketAddr,
    /// The web console, when it is enabled.
    pub console: Option<SocketAddr>,
}

impl Listening {
    /// The file's path under `data_dir`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE)
    }

    /// Writes the file whole (a temporary file renamed over it), so a reader never sees half.
    pub fn write(&self, data_dir: &Path) -> std::io::Result<()> {
        let tmp = data_dir.join(format!("{FILE}.tmp"));
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, Self::path(data_dir))
    }

    /// Removes the file (a node that stopped listens nowhere); a missing file is no error.
    pub fn remove(data_dir: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(Self::path(data_dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The file under `data_dir` when it is the one process `pid` wrote.
    pub fn read(data_dir: &Path, pid: u32) -> Option<Listening> {
        let text = std::fs::read(Self::path(data_dir)).ok()?;
        serde_json::from_slice::<Listening>(&text)
            .ok()
            .filter(|l| l.pid == pid)
    }

    /// Waits up to `timeout` for process `pid`, a node on `data_dir`, to write the file; fails
    /// as soon as the process has exited (or is a zombie not yet reaped).
    pub async fn wait(
        data_dir: &Path,
        pid: u32,
        timeout: Duration,
    ) -> Result<Listening, NotListening> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = Self::read(data_dir, pid) {
                return Ok(l);
            }
            if has_exited(pid) {
                return Err(NotListening::Exited { pid });
            }
            if Instant::now() > deadline {
                return Err(NotListening::TimedOut {
                    pid,
                    path: Self::path(data_dir),
                    after: timeout,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Whether process `pid` is gone or a zombie, from the state field of `/proc/<pid>/stat` (after
/// the command name's closing parenthesis, which the name itself may contain).
fn has_exited(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    matches!(state, None | Some("Z") | Some("X"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn here(pid: u32) -> Listening {
        Listening {
            pid,
            admin: "127.0.0.1:7070".parse().unwrap(),
            metrics: "127.0.0.1:9464".parse().unwrap(),
            console: None,
        }
    }

    /// Ensures that the file reads back as written, and only for the process that wrote it: a
    /// file a killed node left behind is not its successor's.
    #[test]
    fn the_file_is_read_back_only_for_its_own_process() {
        let dir = tempfile::tempdir().unwrap();
        here(41).write(dir.path()).unwrap();
        assert_eq!(Listening::read(dir.path(), 41), Some(here(41)));
        assert_eq!(Listening::read(dir.path(), 42), None);
        Listening::remove(dir.path()).unwrap();
        assert_eq!(Listening::read(dir.path(), 41), None);
        Listening::remove(dir.path()).expect("removing a missing file is no error");
    }

    /// Ensures that waiting for a process that has already exited says it exited, rather than
    /// waiting out the timeout, and that a live process without the file times out.
    #[tokio::test]
    async fn waiting_tells_an_exited_process_from_a_silent_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let patience = Duration::from_secs(5);
        let exited = Listening::wait(dir.path(), pid, patience).await;
        assert_eq!(exited, Err(NotListening::Exited { pid }));
        let me = std::process::id();
        let silent = Listening::wait(dir.path(), me, Duration::ZERO).await;
        assert!(
            matches!(silent, Err(NotListening::TimedOut { pid, .. }) if pid == me),
            "{silent:?}"
        );
    }
}
