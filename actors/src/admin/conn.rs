//! One admin connection: bounded line framing, idle timeout, in-order answers, and an error line
//! before any close the peer did not ask for (idle, evicted for a newer connection, too large).
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
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, timeout_at, Instant};
use tracing::{debug, error};

use super::commands::execute;
use super::slots::Slot;
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
    reader: &mut BufReader<OwnedReadHalf>,
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

/// What the wait for a request's first byte produced.
enum Wait {
    /// Bytes of a request are here.
    Data,
    /// The peer closed, or the socket failed.
    Gone,
    /// No complete line within `idle_timeout`.
    Idle,
    /// The admin actor is stopping.
    Closing,
    /// The slot went to a newer connection.
    Evicted,
}

/// Serves one connection until the peer closes, it idles out, a line is too large, its slot is
/// handed to a newer connection, or the admin actor stops. Closing for idleness, eviction or a
/// long line first sends one error line saying why.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<AdminCtx>,
    mut closed: watch::Receiver<bool>,
    slot: Arc<Slot>,
) {
    let (rd, wr) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 * 1024, rd);
    let mut writer = BufWriter::with_capacity(64 * 1024, wr);
    let mut line = Vec::with_capacity(1024);
    let idle = ctx.limits.idle_timeout;
    let grace = idle.min(CLOSE_GRACE);
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
        // Idleness counts from the last complete line: a line dribbled in byte by byte does not
        // restart it.
        let deadline = Instant::now() + idle;
        match wait_for_request(&mut reader, deadline, &mut closed, &slot).await {
            Wait::Data if slot.begin() => {}
            Wait::Data | Wait::Evicted => {
                return close_with(writer, reader, evicted(&ctx), grace).await
            }
            Wait::Idle => return close_with(writer, reader, idled(&ctx, peer), grace).await,
            Wait::Gone | Wait::Closing => break,
        }
        let read = tokio::select! {
            r = timeout_at(deadline, read_line(&mut reader, &mut line, ctx.limits.max_line_bytes)) => r,
            _ = closed.changed() => break,
        };
        let answer = match read {
            Err(_) => return close_with(writer, reader, idled(&ctx, peer), grace).await,
            Ok(Err(_)) | Ok(Ok(Read::Eof)) => break,
            Ok(Ok(Read::TooLong)) => {
                return close_with(writer, reader, too_large(&ctx), grace).await
            }
            Ok(Ok(Read::Line)) => {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    end_unless_more(&slot, &reader);
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
        end_unless_more(&slot, &reader);
        if !matches!(wrote, Ok(Ok(()))) {
            break;
        }
    }
    // Bounded: after a write timeout the buffer still holds answers the peer does not read.
    let _ = timeout(grace, async {
        writer.flush().await?;
        writer.shutdown().await
    })
    .await;
}

/// Waits for the first bytes of the next request (already here when pipelined), until
/// `deadline`, the admin actor stopping or the slot being handed over.
async fn wait_for_request(
    reader: &mut BufReader<OwnedReadHalf>,
    deadline: Instant,
    closed: &mut watch::Receiver<bool>,
    slot: &Slot,
) -> Wait {
    tokio::select! {
        r = timeout_at(deadline, reader.fill_buf()) => match r {
            Err(_) => Wait::Idle,
            Ok(Ok(buf)) if !buf.is_empty() => Wait::Data,
            Ok(_) => Wait::Gone,
        },
        _ = closed.changed() => Wait::Closing,
        _ = slot.evicted() => Wait::Evicted,
    }
}

/// Marks the connection idle unless bytes of its next request are already here (pipelined):
/// those are a request in flight too.
fn end_unless_more(slot: &Slot, reader: &BufReader<OwnedReadHalf>) {
    if reader.buffer().is_empty() {
        slot.end();
    }
}

fn idled(ctx: &AdminCtx, peer: SocketAddr) -> ApiError {
    let idle = ctx.limits.idle_timeout;
    debug!(%peer, "admin connection idle, closing");
    ApiError::new(
        ErrorCode::IdleTimeout,
        format!(
            "no complete request line for [admin] idle_timeout = {} (counted from the last \
             complete line); closing",
            humantime::format_duration(idle)
        ),
    )
}

fn evicted(ctx: &AdminCtx) -> ApiError {
    ApiError::new(
        ErrorCode::Overloaded,
        format!(
            "closing this connection, the longest idle, to make room for a new one ([admin] \
             max_connections = {} are open); reconnect to continue",
            ctx.limits.max_connections
        ),
    )
}

fn too_large(ctx: &AdminCtx) -> ApiError {
    ApiError::new(
        ErrorCode::TooLarge,
        format!(
            "request line longer than [admin] max_line_bytes = {} bytes; closing",
            ctx.limits.max_line_bytes
        ),
    )
}

/// Sends what is owed and one error line saying why, and closes, within `grace` twice.
async fn close_with(
    mut writer: BufWriter<OwnedWriteHalf>,
    mut reader: BufReader<OwnedReadHalf>,
    err: ApiError,
    grace: Duration,
) {
    let _ = timeout(grace, async {
        writer.write_all(error_line(None, &err).as_bytes()).await?;
        writer.write_all(b"\n").await?;
        writer.flush().await?;
        writer.shutdown().await
    })
    .await;
    // The peer may still be sending (the rest of a long line, a request crossing our close).
    // Closing with input unread makes the kernel reset the connection, and a reset can cost
    // the peer our line; so read and drop input for a little while (it sees the line, then EOF).
    let _ = timeout(grace, discard(&mut reader)).await;
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
async fn discard(reader: &mut BufReader<OwnedReadHalf>) -> std::io::Result<()> {
    loop {
        let n = reader.fill_buf().await?.len();
        if n == 0 {
            return Ok(());
        }
        reader.consume(n);
    }
}
