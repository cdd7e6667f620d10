//! Reading a child's output one bounded line at a time. `read_line` of tokio would grow its
//! buffer to whatever the child writes without a newline (a megabyte of garbage, a binary dump);
//! [`LineReader`] stops at `max` bytes and says so, so the node's memory per pipe is bounded by
//! the reader's buffer plus `max`.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Capacity of the reader's own buffer.
const READ_BUFFER: usize = 16 << 10;

/// What one read returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A whole line (without its newline), or the last bytes before end of file.
    Whole,
    /// `max` bytes of a longer line; the rest is still unread.
    Cut,
    /// End of file, nothing read.
    Eof,
}

/// Bounded line reader over a pipe.
pub struct LineReader<R> {
    inner: BufReader<R>,
    max: usize,
    /// The current line; its capacity never exceeds `max` plus one read buffer.
    pub buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// Lines of at most `max` bytes from `inner`.
    pub fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner: BufReader::with_capacity(READ_BUFFER, inner),
            max,
            buf: Vec::new(),
        }
    }

    /// Reads the next line into `buf`.
    pub async fn next(&mut self) -> std::io::Result<Line> {
        self.buf.clear();
        loop {
            let avail = self.inner.fill_buf().await?;
            if avail.is_empty() {
                return Ok(if self.buf.is_empty() {
                    Line::Eof
                } else {
                    Line::Whole
                });
            }
            let room = self.max - self.buf.len();
            match avail.iter().position(|&b| b == b'\n') {
                Some(i) if i <= room => {
                    self.buf.extend_from_slice(&avail[..i]);
                    self.inner.consume(i + 1);
                    return Ok(Line::Whole);
                }
                _ if avail.len() >= room => {
                    self.buf.extend_from_slice(&avail[..room]);
                    self.inner.consume(room);
                    return Ok(Line::Cut);
                }
                _ => {
                    let n = avail.len();
                    self.buf.extend_from_slice(avail);
                    self.inner.consume(n);
                }
            }
        }
    }
}

/// The first bytes of `line`, for an error message: lossy UTF-8, at most `max` characters.
pub fn shown(line: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(max * 4)]);
    let mut out: String = text.chars().take(max).collect();
    if out.len() < line.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<(Line, Vec<u8>)> {
        let mut r = LineReader::new(input, max);
        let mut out = Vec::new();
        loop {
            let l = r.next().await.unwrap();
            if l == Line::Eof {
                return out;
            }
            out.push((l, r.buf.clone()));
        }
    }

    /// Ensures that lines are split at newlines, and a last line without one is still whole.
    #[tokio::test]
    async fn splits_lines() {
        let got = lines(b"a\n\nbc\nd", 10).await;
        let want: Vec<(Line, Vec<u8>)> = vec![
            (Line::Whole, b"a".to_vec()),
            (Line::Whole, b"".to_vec()),
            (Line::Whole, b"bc".to_vec()),
            (Line::Whole, b"d".to_vec()),
        ];
        assert_eq!(got, want);
    }

    /// Ensures that a line longer than the bound comes in cut pieces of at most `max` bytes,
    /// and that a megabyte without a newline never grows the buffer past the bound.
    #[tokio::test]
    async fn long_lines_are_cut_and_bounded() {
        let got = lines(b"abcdefg\nhi\n", 3).await;
        let pieces: Vec<&[u8]> = got.iter().map(|(_, b)| b.as_slice()).collect();
        assert_eq!(pieces, [&b"abc"[..], b"def", b"g", b"hi"]);
        assert_eq!(got[0].0, Line::Cut);
        assert_eq!(got[2].0, Line::Whole);

        let garbage = vec![b'x'; 1 << 20];
        let mut r = LineReader::new(&garbage[..], 1000);
        assert_eq!(r.next().await.unwrap(), Line::Cut);
        assert_eq!(r.buf.len(), 1000);
        assert!(r.buf.capacity() < 64 << 10, "{}", r.buf.capacity());
    }

    /// Ensures that shown bytes are cut short and marked.
    #[test]
    fn shown_is_short() {
        assert_eq!(shown(b"hello", 10), "hello");
        assert_eq!(shown(b"hello world", 5), "hello…");
        assert_eq!(shown(&[0xff, b'a'], 5), "\u{fffd}a");
    }
}
