//! One admin connection: bounded line framing, idle timeout, in-order answers.
//!
//! Requests are answered one at a time in arrival order, and answers are flushed only when no
//! more input is buffered, so a client that pipelines many lines gets them back in few writes.
//! A client that never reads its answers fills its socket buffer; our write then waits (bounded
//! by the idle timeout) and we stop reading, so such a client cannot grow the node's memory.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::timeout;
use tracing::debug;

use super::commands::execute;
use super::AdminCtx;
use crate::protocol::{error_line, ApiError, ErrorCode};

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
                let _ = timeout(idle, async {
                    writer.write_all(error_line(None, &err).as_bytes()).await?;
                    writer.write_all(b"\n").await?;
                    writer.flush().await
                })
                .await;
                break;
            }
            Ok(Ok(Read::Line)) => {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                execute(&line, &ctx, peer).await
            }
        };
        let more_buffered = !reader.buffer().is_empty();
        let wrote = timeout(idle, async {
            writer.write_all(answer.as_bytes()).await?;
            writer.write_all(b"\n").await?;
            if !more_buffered {
                writer.flush().await?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        if !matches!(wrote, Ok(Ok(()))) {
            break;
        }
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}
