//! PostgreSQL for the sink's tests, never a mock: a schema of its own per test on the shared
//! cluster ([`Schema`]: `WARDEN_TEST_PG`, default the `warden_test` role and database that
//! `scripts/test` creates), and a private server for a test that stops and starts PostgreSQL
//! ([`PrivatePg`]: `initdb` into a temporary dir, `pg_ctl` on a free port below the ephemeral
//! range, run as the `postgres` user when the tests run as root, since PostgreSQL refuses to
//! run as root).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use warden_actors::sink::tokio_postgres::{self, Client, NoTls};

use crate::support::eventually;

/// Where private servers' ports are looked for: above the well-known services.
const PRIVATE_PORTS_FROM: u16 = 10_000;

/// A port for a private server, free now and below the kernel's ephemeral range
/// (`ip_local_port_range`). PostgreSQL cannot listen on port 0 and must keep its port across a
/// stop and a start; a port from the ephemeral range could meanwhile be handed to any port-0
/// bind or outgoing connection on the host (another test's node), one below it never is.
fn private_port() -> u16 {
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let span = u64::from(ephemeral_from.saturating_sub(PRIVATE_PORTS_FROM).max(1));
    // Start each process (and each call) somewhere else, so concurrent runs rarely probe alike.
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let seed = u64::from(std::process::id()) * 7_919
        + u64::from(CALLS.fetch_add(1, Ordering::Relaxed)) * 104_729;
    (0..span)
        .map(|i| PRIVATE_PORTS_FROM + ((seed + i) % span) as u16)
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// The shared cluster's URL for tests.
pub fn test_url() -> String {
    std::env::var("WARDEN_TEST_PG")
        .unwrap_or_else(|_| "postgres://warden_test:warden_test@127.0.0.1:5432/warden_test".into())
}

/// A client on `url`, its connection driven by a task of its own.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A schema of this test's own on the shared cluster, dropped (with its tables) by
/// [`Schema::drop_now`]; a name left over by a crashed run is dropped before use.
pub struct Schema {
    /// Its name.
    pub name: String,
    /// A client on the shared cluster.
    pub client: Client,
}

impl Schema {
    /// A fresh schema name for `test` (not created: the sink's migrations create it).
    pub async fn fresh(test: &str) -> Schema {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t_{test}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let client = connect(&test_url()).await.unwrap_or_else(|e| {
            panic!(
                "cannot reach the test PostgreSQL at {} ({e}); run scripts/test (it starts the \
                 cluster and creates the warden_test role) or set WARDEN_TEST_PG",
                test_url()
            )
        });
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
            .await
            .unwrap();
        Schema { name, client }
    }

    /// `SELECT count(*) FROM <schema>.<table>`.
    pub async fn count(&self, table: &str) -> i64 {
        self.client
            .query_one(&format!("SELECT count(*) FROM {}.{table}", self.name), &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Every row of `query` (with `{s}` standing for the schema), each column as text.
    pub async fn texts(&self, query: &str) -> Vec<Vec<Option<String>>> {
        let rows = self
            .client
            .query(&query.replace("{s}", &self.name), &[])
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.get::<_, Option<String>>(i))
                    .collect()
            })
            .collect()
    }

    /// Drops the schema and its tables.
    pub async fn drop_now(self) {
        self.client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
            .await
            .unwrap();
    }
}

/// A PostgreSQL server of one test's own, on a free port; stopped (immediately) when dropped.
pub struct PrivatePg {
    dir: tempfile::TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// Runs a PostgreSQL program as the `postgres` user when we are root (PostgreSQL refuses
/// root), as ourselves otherwise.
fn pg_command(program: &str) -> Command {
    let path = Path::new(BIN).join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn run(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PrivatePg {
    /// `initdb` (trust authentication, user `postgres`) and start on a free port.
    pub async fn start() -> PrivatePg {
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(dir.path());
                    c
                },
                "chown the private cluster's dir",
            );
        }
        let mut init = pg_command("initdb");
        init.args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(dir.path().join("data"));
        run(init, "initdb");
        let pg = PrivatePg {
            dir,
            port: private_port(),
        };
        pg.pg_start().await;
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Its URL (user `postgres`, trust: no password).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits until it takes connections.
    pub async fn pg_start(&self) {
        let mut c = pg_command("pg_ctl");
        c.args(["-w", "-t", "60", "-D"])
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.path().display()
            ))
            .arg("start");
        run(c, "pg_ctl start");
        let url = self.url();
        eventually(
            "the private PostgreSQL to take connections",
            Duration::from_secs(60),
            || {
                let url = url.clone();
                async move { connect(&url).await.ok().map(|_| ()) }
            },
        )
        .await;
    }

    /// Stops the server at once (`-m immediate`: the way a crash stops it).
    pub fn pg_stop(&self) {
        let mut c = pg_command("pg_ctl");
        c.args(["-w", "-D"])
            .arg(self.data())
            .args(["-m", "immediate", "stop"]);
        run(c, "pg_ctl stop");
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let mut c = pg_command("pg_ctl");
        c.args(["-D"])
            .arg(self.data())
            .args(["-m", "immediate", "stop"]);
        let _ = c.output();
    }
}
