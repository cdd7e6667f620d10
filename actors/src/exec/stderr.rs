//! An exec attempt's stderr: every line goes to the node's log at info, with the job's id, name
//! and attempt, and the last `stderr_tail_bytes` of it are kept to explain a failure (they end
//! up in the job's error).

use std::collections::VecDeque;

use tokio::io::AsyncRead;
use tracing::info;

use super::lines::{Line, LineReader};

/// Longest stderr line logged as one; a longer one is logged in pieces of this size.
const LOG_LINE_BYTES: usize = 16 << 10;

/// The last bytes of a stream, at most `cap` of them.
#[derive(Debug)]
pub struct Tail {
    cap: usize,
    bytes: VecDeque<u8>,
    dropped: u64,
}

impl Tail {
    /// An empty tail keeping at most `cap` bytes.
    pub fn new(cap: usize) -> Tail {
        Tail {
            cap,
            bytes: VecDeque::new(),
            dropped: 0,
        }
    }

    /// Appends `line` and a newline, dropping the oldest bytes beyond the cap.
    pub fn push_line(&mut self, line: &[u8]) {
        self.bytes.extend(line);
        self.bytes.push_back(b'\n');
        let over = self.bytes.len().saturating_sub(self.cap);
        if over > 0 {
            self.bytes.drain(..over);
            self.dropped += over as u64;
        }
    }

    /// The kept text (lossy UTF-8), or `None` when nothing was written.
    pub fn text(&self) -> Option<String> {
        if self.bytes.is_empty() {
            return None;
        }
        let (a, b) = self.bytes.as_slices();
        let text = String::from_utf8_lossy(&[a, b].concat())
            .trim_matches('\n')
            .to_string();
        Some(if self.dropped > 0 {
            format!("[{} earlier bytes dropped]\n{text}", self.dropped)
        } else {
            text
        })
    }
}

/// Who wrote the lines, for the log.
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    /// The job's id.
    pub job_id: &'a str,
    /// The job's name.
    pub job_name: &'a str,
    /// The attempt.
    pub attempt: u32,
}

/// Logs every line of `pipe` and keeps its tail in `tail`, until end of file.
pub async fn drain(pipe: impl AsyncRead + Unpin, who: Writer<'_>, tail: &mut Tail) {
    let mut reader = LineReader::new(pipe, LOG_LINE_BYTES);
    // A read error on a pipe means the other end is gone: the same as its end.
    while let Ok(Line::Whole | Line::Cut) = reader.next().await {
        let text = String::from_utf8_lossy(&reader.buf);
        info!(job_id = who.job_id, job_name = who.job_name, attempt = who.attempt, stderr = %text, "task stderr");
        tail.push_line(&reader.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures that the tail keeps only the last bytes and says how many it dropped.
    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::new(8);
        assert_eq!(t.text(), None);
        t.push_line(b"first");
        t.push_line(b"second");
        assert_eq!(t.text().unwrap(), "[5 earlier bytes dropped]\nsecond");
    }

    /// Ensures that a stream is read to its end and its tail kept.
    #[tokio::test]
    async fn drain_keeps_the_tail() {
        let mut t = Tail::new(1024);
        let who = Writer {
            job_id: "j",
            job_name: "x.y",
            attempt: 1,
        };
        drain(&b"one\ntwo\n"[..], who, &mut t).await;
        assert_eq!(t.text().unwrap(), "one\ntwo");
    }
}
