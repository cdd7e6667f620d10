//! One admin connection: bounded line framing, idle timeout, in-order answers.
//!
//! Requests are answered one at a time in arrival order, and answers are flushed before any read
//! that may wait (no whole line buffered), so a client that pipelines many lines gets them back
//! in few writes, and no answer waits behind a blank line or half of the next request.
//! A client that never reads its answers fills its socket buffer; our write then waits (bounded
//! by the idle timeout) and we stop reading, so such a client cannot grow the node's memory.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::timeout;
use tracing::{debug, error};

use super::commands::execute;
use super::AdminCtx;
use crate::protocol::{error_line, parse_request, ApiError, ErrorCode};

/// The most a closing connection spends on its last answer and on a clean close: a peer that
/// never reads must not keep the connection's task (and its slot) alive.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What one read produced.
enum Read {
    /// A whole line (without `\n`) is in the buffer.
    Line,
    /// The line grew past the limit before its `\n`.
    TooLong,
    /// The peer closed.
    Eof,
}

/// Reads one line into `line`, never holding more than `max` bytes of it.
async fn read_line(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Read> {
    line.clear();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if line.is_empty() {
                Read::Eof
            } else {
                Read::Line
            });
        }
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], i + 1),
            None => (buf, buf.len()),
        };
        if line.len() + chunk.len() > max {
            return Ok(Read::TooLong);
        }
        line.extend_from_slice(chunk);
        let found = done > chunk.len();
        reader.consume(done);
        if found {
            return Ok(Read::Line);
        }
    }
}

/// Serves one connection until the peer closes, it idles out, a line is too large, or the
/// admin actor stops.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<AdminCtx>,
    mut closed: watch::Receiver<bool>,
) {
    let (rd, wr) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 * 1024, rd);
    let mut writer = BufWriter::with_capacity(64 * 1024, wr);
    let mut line = Vec::with_capacity(1024);
    let idle = ctx.limits.idle_timeout;
    loop {
        // Answers wait in the buffer only while another whole line is already here to be
        // answered; before a read that may wait for the peer, everything owed goes out (the
        // peer may be waiting for it before it sends more).
        if !writer.buffer().is_empty()
            && !reader.buffer().contains(&b'\n')
            && !matches!(timeout(idle, writer.flush()).await, Ok(Ok(())))
        {
            break;
        }
        let read = tokio::select! {
            r = timeout(idle, read_line(&mut reader, &mut line, ctx.limits.max_line_bytes)) => r,
            _ = closed.changed() => break,
        };
        let answer = match read {
            Err(_) => {
                debug!(%peer, "admin connection idle, closing");
                break;
            }
            Ok(Err(_)) | Ok(Ok(Read::Eof)) => break,
            Ok(Ok(Read::TooLong)) => {
                let err = ApiError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "request line longer than [admin] max_line_bytes = {} bytes; closing",
                        ctx.limits.max_line_bytes
                    ),
                );
                let grace = idle.min(CLOSE_GRACE);
                let _ = timeout(grace, async {
                    writer.write_all(error_line(None, &err).as_bytes()).await?;
                    writer.write_all(b"\n").await?;
                    writer.flush().await?;
                    writer.shutdown().await
                })
                .await;
                // The rest of the line is still coming. Closing with it unread would make the
                // kernel reset the connection, and a reset can cost the peer our answer; so
                // read and drop it for a little while (the peer sees our answer, then EOF).
                let _ = timeout(grace, discard(&mut reader)).await;
                return;
            }
            Ok(Ok(Read::Line)) => {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                answer_guarded(&line, &ctx, peer).await
            }
        };
        // Flushed at the top of the loop, so that pipelined answers go out together.
        let wrote = timeout(idle, async {
            writer.write_all(answer.as_bytes()).await?;
            writer.write_all(b"\n").await
        })
        .await;
        if !matches!(wrote, Ok(Ok(()))) {
            break;
        }
    }
    // Bounded: after a write timeout the buffer still holds answers the peer does not read.
    let _ = timeout(idle.min(CLOSE_GRACE), async {
        writer.flush().await?;
        writer.shutdown().await
    })
    .await;
}

/// Executes one line; a panic while serving it (a bug) becomes an `internal` answer, so that
/// this connection and the answers pipelined on it survive.
async fn answer_guarded(line: &[u8], ctx: &AdminCtx, peer: SocketAddr) -> String {
    match AssertUnwindSafe(execute(line, ctx, peer))
        .catch_unwind()
        .await
    {
        Ok(answer) => answer,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            error!(%peer, panic = %what, "admin request panicked");
            let id = std::panic::catch_unwind(|| parse_request(line).id)
                .ok()
                .flatten();
            let err = ApiError::internal(format!(
                "the node hit a bug serving this request ({what}); it keeps serving, please report it"
            ));
            error_line(id, &err)
        }
    }
}

/// Reads and drops input until the peer closes.
async fn discard(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> std::io::Result<()> {
    loop {
        let n = reader.fill_buf().await?.len();
        if n == 0 {
            return Ok(());
        }
        reader.consume(n);
    }
}
