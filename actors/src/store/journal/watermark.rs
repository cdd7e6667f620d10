//! The commit watermark: a small file beside sled, `<dir>/watermark`, holding the sequence
//! number of the last group commit known durable, so that a database that recovers to an
//! earlier state (a damaged, truncated or replaced `db` file: sled cuts recovery short at the
//! first bad log entry and carries on silently) is detected instead of absorbed.
//!
//! Each commit stores its sequence number in sled's `meta` tree (key [`COMMIT_SEQ_KEY`]) before
//! the flush + fsync, and writes it to this file after (`fdatasync`'d at most every second and
//! at shutdown, see `WATERMARK_SYNC_EVERY`). So a healthy journal
//! always has sled's sequence ≥ the file's; [`super::Journal::open`] refuses one that has less.
//!
//! The file has two 32-byte slots and commit `n` overwrites slot `n % 2`, so a write torn by a
//! crash damages only one slot and the other still holds `n - 1`. A slot is
//! `MAGIC ++ seq (u64 BE) ++ !seq (u64 BE) ++ 8 zero bytes`: the complement tells a whole slot
//! from a torn one. Reading takes the highest valid slot.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{io_err, JournalError};

/// The file's name in the data dir.
pub(super) const FILE: &str = "watermark";
/// The meta key holding the sequence of the last commit, inside sled.
pub(super) const COMMIT_SEQ_KEY: &str = "commit_seq";
/// Marks a written slot.
const MAGIC: &[u8; 8] = b"WRDNWM01";
const SLOT: usize = 32;

/// The open watermark file.
#[derive(Debug)]
pub(super) struct Watermark {
    file: File,
    path: PathBuf,
}

impl Watermark {
    /// Opens (creating, empty) `<dir>/watermark`.
    pub(super) fn open(dir: &Path) -> Result<Watermark, JournalError> {
        let path = dir.join(FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| io_err(format!("open {}", path.display()), source))?;
        Ok(Watermark { file, path })
    }

    /// Records that commit `seq` is durable: overwrites its slot, and `fdatasync`s if `sync`.
    pub(super) fn store(&self, seq: u64, sync: bool) -> Result<(), JournalError> {
        let mut slot = [0u8; SLOT];
        slot[..8].copy_from_slice(MAGIC);
        slot[8..16].copy_from_slice(&seq.to_be_bytes());
        slot[16..24].copy_from_slice(&(!seq).to_be_bytes());
        let offset = (seq % 2) * SLOT as u64;
        self.file
            .write_all_at(&slot, offset)
            .map_err(|source| io_err(format!("write {}", self.path.display()), source))?;
        if sync {
            self.sync()?;
        }
        Ok(())
    }

    /// `fdatasync`s the file.
    pub(super) fn sync(&self) -> Result<(), JournalError> {
        self.file
            .sync_data()
            .map_err(|source| io_err(format!("fsync {}", self.path.display()), source))
    }
}

/// The sequence in `<dir>/watermark`: `None` when the file is missing or empty (a new data dir
/// or one written before watermarks), an error when it has content but no valid slot.
pub(super) fn read(dir: &Path) -> Result<Option<u64>, JournalError> {
    let path = dir.join(FILE);
    let mut bytes = Vec::new();
    match File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io_err(format!("read {}", path.display()), source)),
    }
    if bytes.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let best = bytes.chunks(SLOT).filter_map(parse_slot).max();
    best.map(Some).ok_or_else(|| JournalError::Corrupt {
        what: path.display().to_string(),
        detail: format!(
            "no valid slot in {} bytes (expected {SLOT}-byte slots starting with {:?})",
            bytes.len(),
            String::from_utf8_lossy(MAGIC)
        ),
    })
}

fn parse_slot(slot: &[u8]) -> Option<u64> {
    if slot.len() < 24 || &slot[..8] != MAGIC {
        return None;
    }
    let seq = u64::from_be_bytes(slot[8..16].try_into().ok()?);
    let check = u64::from_be_bytes(slot[16..24].try_into().ok()?);
    (check == !seq).then_some(seq)
}

/// Decodes sled's stored commit sequence (`[version][u64 BE]`).
pub(super) fn decode_seq(value: &[u8]) -> Result<u64, JournalError> {
    match value {
        [super::FORMAT_VERSION, rest @ ..] if rest.len() == 8 => {
            Ok(u64::from_be_bytes(rest.try_into().unwrap_or([0; 8])))
        }
        _ => Err(JournalError::Corrupt {
            what: format!("meta key {COMMIT_SEQ_KEY:?}"),
            detail: format!(
                "expected a version byte and 8 bytes, got {} bytes",
                value.len()
            ),
        }),
    }
}

/// Encodes a commit sequence for sled's meta tree.
pub(super) fn encode_seq(seq: u64) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[0] = super::FORMAT_VERSION;
    out[1..].copy_from_slice(&seq.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures that the highest whole slot wins and a torn slot falls back to the other one.
    #[test]
    fn highest_valid_slot_wins_and_a_torn_slot_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let w = Watermark::open(dir.path()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        w.store(7, true).unwrap();
        w.store(8, false).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(8));
        // Tear slot 0 (seq 8): the other slot's 7 is what is known durable.
        w.file.write_all_at(&[0xAA; 4], 10).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(7));
        w.file.write_all_at(&[0xAA; 4], SLOT as u64 + 10).unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("watermark"), "{err}");
    }
}
