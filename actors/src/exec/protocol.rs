//! The stdout protocol of exec tasks (docs/tasks.md): one JSON object per line, each exactly one
//! of `{"record": {"key": "...", "value": ...}}`, `{"progress": {"done": 10, "total": 27,
//! "message": "..."}}` or `{"result": ...}`. Blank lines are skipped; anything else is a
//! protocol error naming the line number and its first bytes, which fails the job permanently
//! (a broken task does not mend itself on a retry).

use serde::Deserialize;
use serde_json::Value;

use super::lines::shown;

/// Longest record key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// Characters of a bad line shown in the error.
const SHOWN_CHARS: usize = 80;

/// One protocol line.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Message {
    /// Store a record.
    Record(RecordLine),
    /// Report progress.
    Progress(ProgressLine),
    /// The job's result; the last one wins.
    Result(Value),
}

/// `{"record": {...}}`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordLine {
    /// The record's key, such as `analysis/1364954`.
    pub key: String,
    /// Its value.
    pub value: Value,
}

/// `{"progress": {...}}`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressLine {
    /// Units done; default 0 (a message alone is fine).
    #[serde(default)]
    pub done: u64,
    /// Units in all, when known.
    #[serde(default)]
    pub total: Option<u64>,
    /// A short text.
    #[serde(default)]
    pub message: Option<String>,
}

/// Why a stdout line was refused: for people, it names the line and shows its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// Parses line number `n` (from 1); `Ok(None)` for a blank line.
pub fn parse(n: u64, line: &[u8]) -> Result<Option<Message>, ProtocolError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let bad = |why: String| {
        ProtocolError(format!(
            "stdout line {n} is not a protocol line ({{\"record\": …}}, {{\"progress\": …}} or \
             {{\"result\": …}}): {why}; it starts with {:?}",
            shown(line, SHOWN_CHARS)
        ))
    };
    let msg: Message = serde_json::from_slice(line).map_err(|e| bad(e.to_string()))?;
    if let Message::Record(r) = &msg {
        if let Some(why) = key_problem(&r.key) {
            return Err(bad(format!(
                "record key {:?} {why}",
                shown(r.key.as_bytes(), 40)
            )));
        }
    }
    Ok(Some(msg))
}

/// The error for a line longer than the task's `max_line_bytes`.
pub fn too_long(n: u64, start: &[u8], max: usize) -> ProtocolError {
    ProtocolError(format!(
        "stdout line {n} is longer than max_line_bytes ({max} bytes); it starts with {:?}",
        shown(start, SHOWN_CHARS)
    ))
}

/// Why `key` cannot name a record, if it cannot.
fn key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        Some("is empty")
    } else if key.len() > MAX_KEY_BYTES {
        Some("is longer than 512 bytes")
    } else if key.chars().any(char::is_control) {
        Some("holds a control character")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Ensures that the three message kinds parse and blank lines are skipped.
    #[test]
    fn parses_the_three_kinds() {
        let r = parse(1, br#"{"record": {"key": "a/1", "value": {"x": 1}}}"#).unwrap();
        assert_eq!(
            r,
            Some(Message::Record(RecordLine {
                key: "a/1".into(),
                value: json!({"x": 1})
            }))
        );
        let p = parse(2, br#"{"progress": {"done": 3, "total": 9}}"#).unwrap();
        assert!(
            matches!(
                p,
                Some(Message::Progress(ProgressLine {
                    done: 3,
                    total: Some(9),
                    message: None
                }))
            ),
            "{p:?}"
        );
        let m = parse(3, br#"{"progress": {"message": "loading"}}"#).unwrap();
        assert!(matches!(
            m,
            Some(Message::Progress(ProgressLine { done: 0, .. }))
        ));
        assert_eq!(
            parse(4, br#"{"result": [1, 2]}"#).unwrap(),
            Some(Message::Result(json!([1, 2])))
        );
        assert_eq!(parse(5, b"   ").unwrap(), None);
    }

    /// Ensures that anything else is an error naming the line number and showing its start.
    #[test]
    fn other_lines_are_named() {
        let e = parse(7, b"hello from print()").unwrap_err().0;
        assert!(e.starts_with("stdout line 7 is not a protocol line"), "{e}");
        assert!(e.contains("\"hello from print()\""), "{e}");
        for line in [
            &br#"{"record": {"key": "a"}}"#[..],
            br#"{"result": 1, "progress": {}}"#,
            br#"{"status": "ok"}"#,
            br#"[1, 2]"#,
            br#"{"record": {"key": "", "value": 1}}"#,
            br#"{"progress": {"done": -1}}"#,
        ] {
            assert!(parse(1, line).is_err(), "{}", String::from_utf8_lossy(line));
        }
        let e = too_long(3, &[b'x'; 100], 64).0;
        assert!(
            e.contains("line 3 is longer than max_line_bytes (64 bytes)"),
            "{e}"
        );
        assert!(e.contains('…'), "{e}");
    }
}
