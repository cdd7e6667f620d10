//! Warden's patch to sled 0.34.7: a guard that sees every write by which
//! recovery destroys bytes of the log, before it happens.
//!
//! sled's recovery (`pagecache/snapshot.rs`) cuts the log at the first entry
//! it cannot read, overwrites the rest of that segment and every later segment
//! with `MessageKind::Corrupted`, and removes blob files past the cut. When the
//! cut comes from damage rather than from a torn write of a crash, those bytes
//! hold committed data, and sled gives no way to keep them. The guard is called
//! first with what is about to be lost; an error from it aborts the open with
//! nothing destroyed, and a guard that copies the bytes away keeps them.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::OnceLock;

/// Something recovery is about to destroy.
#[derive(Debug, Clone, Copy)]
pub enum Loss<'a> {
    /// `len` bytes of the log file `file` at `offset` are about to be
    /// overwritten.
    Overwrite {
        /// The log file (`<db dir>/db`), open for reading.
        file: &'a File,
        /// Where the overwrite starts.
        offset: u64,
        /// How many bytes it covers.
        len: u64,
    },
    /// The blob file at `path` is about to be removed.
    RemoveBlob {
        /// The blob's path.
        path: &'a Path,
    },
}

/// A guard: the database's directory and what is about to be lost there.
pub type Guard = fn(&Path, Loss<'_>) -> io::Result<()>;

static GUARD: OnceLock<Guard> = OnceLock::new();

/// Installs the process's recovery guard. Only the first call installs one;
/// it returns whether this call did.
pub fn set_recovery_guard(guard: Guard) -> bool {
    GUARD.set(guard).is_ok()
}

/// Calls the guard, if one is installed, before `loss` happens in `dir`.
pub(crate) fn before_loss(dir: &Path, loss: Loss<'_>) -> io::Result<()> {
    match GUARD.get() {
        Some(guard) => guard(dir, loss),
        None => Ok(()),
    }
}
