//! `[console]`: the web console served by the node (docs/console.md), its checks and its
//! resolution into the actors' [`ConsoleArgs`].

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use warden_actors::args::ConsoleArgs;

use super::{duration, listen_clash, socket_addr, Problem};

/// The shortest `refresh`: faster would only load the node for no one's benefit.
const MIN_REFRESH: Duration = Duration::from_millis(500);

/// `[console]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleSection {
    /// Serve the console; default true.
    pub enabled: bool,
    /// Address to bind; default `127.0.0.1:7072` (loopback: put a proxy with TLS in front to
    /// reach it from elsewhere).
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// Hide and refuse every action; default false.
    pub read_only: bool,
    /// How often pages refresh in place when JavaScript runs; default 3 s, at least 500 ms.
    #[serde(deserialize_with = "duration")]
    pub refresh: Duration,
    /// Host names a request's `Host` may carry besides IP literals and `localhost`; default
    /// none.
    pub allowed_hosts: Vec<String>,
}

impl Default for ConsoleSection {
    fn default() -> Self {
        ConsoleSection {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 7072)),
            read_only: false,
            refresh: Duration::from_secs(3),
            allowed_hosts: Vec::new(),
        }
    }
}

impl ConsoleSection {
    /// Checks the section against the other listeners.
    pub(super) fn validate(&self, admin: SocketAddr, metrics: SocketAddr) -> Result<(), Problem> {
        if !self.enabled {
            return Ok(());
        }
        for (other, key) in [(admin, "admin.listen"), (metrics, "metrics.listen")] {
            if listen_clash(self.listen, other) {
                return Err(Problem::new(
                    "console.listen",
                    format!(
                        "expected an address other than {key}'s, got {} and {key} = {other} \
                         (both ports would be bound)",
                        self.listen
                    ),
                ));
            }
        }
        if self.refresh < MIN_REFRESH {
            return Err(Problem::new(
                "console.refresh",
                format!(
                    "expected at least {}, got {}",
                    humantime::format_duration(MIN_REFRESH),
                    humantime::format_duration(self.refresh)
                ),
            ));
        }
        if let Some(bad) = self
            .allowed_hosts
            .iter()
            .find(|h| h.is_empty() || h.contains([':', '/', ' ']))
        {
            return Err(Problem::new(
                "console.allowed_hosts",
                format!("expected host names like \"warden.internal\" (no port, no scheme), got {bad:?}"),
            ));
        }
        Ok(())
    }

    /// The console's arguments; `None` when it is disabled.
    pub(super) fn into_args(self) -> Option<ConsoleArgs> {
        self.enabled.then_some(ConsoleArgs {
            listen: self.listen,
            read_only: self.read_only,
            refresh: self.refresh,
            allowed_hosts: self.allowed_hosts,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn err(text: &str) -> String {
        Config::from_str(text, "c.toml").unwrap_err().to_string()
    }

    /// Ensures that the console is on by default, off with `enabled = false`, and carries its
    /// keys into the node's arguments.
    #[test]
    fn console_args_follow_the_section() {
        let on = Config::from_str("", "c.toml")
            .unwrap()
            .into_args("c", &|_| None)
            .unwrap();
        let console = on.console.expect("enabled by default");
        assert_eq!(console.listen, "127.0.0.1:7072".parse().unwrap());
        let off = Config::from_str("[console]\nenabled = false\n", "c.toml").unwrap();
        assert!(off.into_args("c", &|_| None).unwrap().console.is_none());
        let ro = "[console]\nread_only = true\nallowed_hosts = [\"warden.internal\"]\n";
        let ro = Config::from_str(ro, "c.toml")
            .unwrap()
            .into_args("c", &|_| None)
            .unwrap();
        let ro = ro.console.unwrap();
        assert!(ro.read_only && ro.allowed_hosts == ["warden.internal"]);
    }

    /// Ensures that a clashing port, a too-quick refresh and a host with a port are named.
    #[test]
    fn bad_console_keys_are_named() {
        let e = err("[console]\nlisten = \"127.0.0.1:7070\"\n");
        assert!(
            e.contains("console.listen") && e.contains("admin.listen"),
            "{e}"
        );
        let e = err("[console]\nlisten = \"0.0.0.0:9464\"\n");
        assert!(
            e.contains("console.listen") && e.contains("metrics.listen"),
            "{e}"
        );
        let e = err("[console]\nrefresh = \"100ms\"\n");
        assert!(
            e.contains("console.refresh") && e.contains("at least 500ms"),
            "{e}"
        );
        let e = err("[console]\nallowed_hosts = [\"warden.internal:7072\"]\n");
        assert!(e.contains("console.allowed_hosts"), "{e}");
        // Disabled, its port clashes with nothing.
        Config::from_str(
            "[console]\nenabled = false\nlisten = \"127.0.0.1:7070\"\n",
            "c.toml",
        )
        .unwrap();
    }
}
