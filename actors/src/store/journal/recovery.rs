//! What sled's recovery destroys is saved first.
//!
//! sled 0.34 recovers a log by cutting it at the first entry it cannot read, then overwriting
//! the rest of that segment and every later segment, and removing blob files past the cut, all
//! inside its `open`, before the journal can compare what came back with the watermark. After a
//! crash the cut only drops a torn write nobody was told about; after damage (a flipped byte in
//! the middle of `db`) it destroys committed jobs. sled has no hook for this, so Warden builds a
//! patched sled (`vendor/sled`, see its `WARDEN.md`) that calls [`guard`] before each such write.
//!
//! The guard copies the bytes about to be overwritten (unless they are all zero, which is what
//! sled writes: nothing to lose) to `<dir>/recovery/<when>/db-at-<offset>` and hard-links a blob
//! about to be removed there, each fsync'd before sled goes on; if saving fails, the open fails
//! and nothing is destroyed. [`super::open_checked`] then keeps the copies when the database
//! came back short of the watermark, and names them in [`super::JournalError::RolledBack`], or
//! removes them when every durable commit was recovered (the cut held only an unacknowledged
//! torn write).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, Once};

use sled::recovery_guard::Loss;

/// The folder, inside the data dir, where saved bytes go.
pub(super) const DIR: &str = "recovery";

/// What one open saved: its folder, and how many bytes it holds.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Saved {
    /// `<dir>/recovery/<when>`, once something was saved.
    pub(super) folder: Option<PathBuf>,
    /// Bytes saved (log bytes and blob files).
    pub(super) bytes: u64,
}

/// An open in progress: its data dir, when it began (naming its folder) and what it saved.
struct Open {
    dir: PathBuf,
    began: String,
    saved: Saved,
}

impl Open {
    fn new(dir: &Path) -> Open {
        Open {
            dir: dir.to_path_buf(),
            began: stamp(),
            saved: Saved::default(),
        }
    }
}

/// The opens in progress in this process. The guard is a plain `fn` (sled keeps one per
/// process), so this is how it knows which open it serves.
static OPENS: Mutex<Vec<Open>> = Mutex::new(Vec::new());

/// Installs [`guard`] as sled's recovery guard (once per process) and registers an open of
/// `dir` beginning now. Pair with [`finish`].
pub(super) fn begin(dir: &Path) {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        sled::recovery_guard::set_recovery_guard(guard);
    });
    let mut opens = opens();
    opens.retain(|open| open.dir != dir);
    opens.push(Open::new(dir));
}

/// Ends the open of `dir` registered by [`begin`]: what it saved.
pub(super) fn finish(dir: &Path) -> Saved {
    let mut opens = opens();
    let at = opens.iter().position(|open| open.dir == dir);
    at.map(|at| opens.swap_remove(at).saved).unwrap_or_default()
}

/// Removes what an open saved, once the journal knows nothing durable was in it.
pub(super) fn discard(saved: &Saved) -> io::Result<()> {
    match &saved.folder {
        Some(folder) => fs::remove_dir_all(folder),
        None => Ok(()),
    }
}

fn opens() -> MutexGuard<'static, Vec<Open>> {
    // Every change under the lock is one push, remove or field update, so a lock poisoned by a
    // panic elsewhere still holds a consistent list.
    OPENS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The open of `dir` in progress; an open this process did not register (the benchmark's
/// bare sled) is registered now.
fn open_of<'a>(opens: &'a mut Vec<Open>, dir: &Path) -> &'a mut Open {
    match opens.iter().position(|open| open.dir == dir) {
        Some(at) => &mut opens[at],
        None => {
            opens.push(Open::new(dir));
            opens.last_mut().expect("just pushed")
        }
    }
}

/// sled's recovery guard: saves what `loss` is about to destroy in `dir`.
fn guard(dir: &Path, loss: Loss<'_>) -> io::Result<()> {
    let saved = match loss {
        Loss::Overwrite { file, offset, len } => {
            let bytes = read_at(file, offset, len)?;
            if bytes.iter().all(|&b| b == 0) {
                return Ok(());
            }
            let folder = folder(dir)?;
            write_synced(&folder.join(format!("db-at-{offset}")), &bytes)?;
            len
        }
        Loss::RemoveBlob { path } => {
            let folder = folder(dir)?;
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let copy = folder.join(format!("blob-{name}"));
            fs::hard_link(path, &copy).map_err(|e| context(e, "link", &copy))?;
            File::open(&copy)?.sync_all()?;
            File::open(&folder)?.sync_all()?;
            fs::metadata(path)?.len()
        }
    };
    open_of(&mut opens(), dir).saved.bytes += saved;
    Ok(())
}

/// The folder of the open of `dir` in progress, created (and made durable) on first use.
fn folder(dir: &Path) -> io::Result<PathBuf> {
    let mut opens = opens();
    let open = open_of(&mut opens, dir);
    if let Some(folder) = &open.saved.folder {
        return Ok(folder.clone());
    }
    let folder = dir.join(DIR).join(&open.began);
    fs::create_dir_all(&folder).map_err(|e| context(e, "create", &folder))?;
    for synced in [dir.join(DIR), dir.to_path_buf()] {
        File::open(&synced)?.sync_all()?;
    }
    open.saved.folder = Some(folder.clone());
    Ok(folder)
}

/// When an open began, as its folder's name (UTC, sortable).
fn stamp() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string()
}

fn read_at(file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(io::Error::other)?;
    let mut bytes = vec![0; len];
    let mut filled = 0;
    // The region may run past the end of the file (sled extends it as it writes).
    while filled < len {
        match file.read_at(&mut bytes[filled..], offset + filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    bytes.truncate(filled);
    Ok(bytes)
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| context(e, "create", path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| context(e, "write", path))?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// An io error naming what the guard was doing, so a refused open says why.
fn context(error: io::Error, doing: &str, path: &Path) -> io::Error {
    io::Error::new(
        error.kind(),
        format!(
            "could not {doing} {} to save what sled's recovery is about to overwrite: {error}",
            path.display()
        ),
    )
}
