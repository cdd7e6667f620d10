//! Node processes of the real binary, for the tests that kill them: started from a config file,
//! killed and reaped when dropped, so a failing test leaves no node behind.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use warden::client::Client;
use warden::listening::{Listening, NotListening};

/// How long a node process may take to answer its first command.
const ANSWER_WAIT: Duration = Duration::from_secs(60);

/// Where the node process `pid` on `data_dir` listens, once it has bound its ports (the
/// `listening.json` it writes); nodes in tests listen on port 0.
pub async fn listening(data_dir: &Path, pid: u32) -> Listening {
    Listening::wait(data_dir, pid, ANSWER_WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A node process, killed and reaped when dropped.
pub struct NodeChild(pub Child);

impl std::ops::Deref for NodeChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for NodeChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl NodeChild {
    /// Where this node, on `data_dir`, listens once it has bound its ports; a node that exited
    /// instead fails the test with its stderr.
    pub async fn listening(&mut self, data_dir: &Path) -> Listening {
        match Listening::wait(data_dir, self.id(), ANSWER_WAIT).await {
            Ok(l) => l,
            // Its stderr is whole once it exited; a live node's would be read forever.
            Err(e @ NotListening::Exited { .. }) => {
                let mut err = String::new();
                if let Some(mut stderr) = self.stderr.take() {
                    let _ = stderr.read_to_string(&mut err);
                }
                panic!("{e}: {err}")
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// A client of this node on `data_dir`, once it answers.
    pub async fn client(&mut self, data_dir: &Path) -> Client {
        connect(&self.listening(data_dir).await.admin.to_string()).await
    }
}

impl Drop for NodeChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `warden node --config <config>`, its stderr piped.
pub fn spawn_node(config: &Path) -> NodeChild {
    spawn_node_with(config, &[])
}

/// [`spawn_node`] with environment variables set.
pub fn spawn_node_with(config: &Path, env: &[(&str, &str)]) -> NodeChild {
    let child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["node", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn warden node");
    NodeChild(child)
}

/// A client of the node at `addr`, once it answers.
pub async fn connect(addr: &str) -> Client {
    let deadline = std::time::Instant::now() + ANSWER_WAIT;
    loop {
        if let Ok(c) = Client::connect(addr, Duration::from_secs(1)).await {
            return c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node at {addr} never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
