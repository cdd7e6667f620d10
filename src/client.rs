//! The admin client: one TCP connection speaking docs/protocol.md, used by the CLI subcommands, the
//! benchmark and the integration tests. Requests can be pipelined: `send` several, then `recv`
//! their answers in order.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node could not be reached.
    #[error("cannot reach a warden node at {addr}: {source}")]
    Connect {
        /// Where we tried.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The connection broke.
    #[error("connection to {addr} failed: {source}")]
    Io {
        /// The node.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The node closed the connection before answering.
    #[error("the node at {addr} closed the connection")]
    Closed {
        /// The node.
        addr: String,
    },
    /// The answer was not JSON.
    #[error("the node at {addr} answered with something that is not JSON: {line:?}")]
    BadAnswer {
        /// The node.
        addr: String,
        /// What came.
        line: String,
    },
}

/// One admin connection.
pub struct Client {
    addr: String,
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    line: String,
}

impl Client {
    /// Connects to `addr` (`host:port`), giving up after `timeout`.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Client, ClientError> {
        let err = |source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        };
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                ))
            })?
            .map_err(err)?;
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        Ok(Client {
            addr: addr.to_string(),
            reader: BufReader::with_capacity(256 * 1024, r),
            writer: BufWriter::with_capacity(256 * 1024, w),
            line: String::new(),
        })
    }

    /// Connects to a socket address.
    pub async fn connect_addr(addr: SocketAddr) -> Result<Client, ClientError> {
        Self::connect(&addr.to_string(), Duration::from_secs(10)).await
    }

    /// The address this client talks to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn io(&self, source: std::io::Error) -> ClientError {
        ClientError::Io {
            addr: self.addr.clone(),
            source,
        }
    }

    /// Queues a raw line (a `\n` is added) without flushing.
    pub async fn send_raw(&mut self, line: &[u8]) -> Result<(), ClientError> {
        let r = async {
            self.writer.write_all(line).await?;
            self.writer.write_all(b"\n").await
        }
        .await;
        r.map_err(|e| self.io(e))
    }

    /// Queues a request without flushing.
    pub async fn send(&mut self, req: &Value) -> Result<(), ClientError> {
        self.send_raw(req.to_string().as_bytes()).await
    }

    /// Sends what is queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        let r = self.writer.flush().await;
        r.map_err(|e| self.io(e))
    }

    /// Reads the next answer line as it came (without `\n`); `None` when the node closed.
    pub async fn recv_raw(&mut self) -> Result<Option<String>, ClientError> {
        self.flush().await?;
        self.line.clear();
        let n = self.reader.read_line(&mut self.line).await;
        match n.map_err(|e| self.io(e))? {
            0 => Ok(None),
            _ => Ok(Some(self.line.trim_end_matches(['\n', '\r']).to_string())),
        }
    }

    /// Reads the next answer.
    pub async fn recv(&mut self) -> Result<Value, ClientError> {
        let line = self.recv_raw().await?.ok_or_else(|| ClientError::Closed {
            addr: self.addr.clone(),
        })?;
        serde_json::from_str(&line).map_err(|_| ClientError::BadAnswer {
            addr: self.addr.clone(),
            line,
        })
    }

    /// Sends one request and waits for its answer.
    pub async fn request(&mut self, req: &Value) -> Result<Value, ClientError> {
        self.send(req).await?;
        self.recv().await
    }
}
