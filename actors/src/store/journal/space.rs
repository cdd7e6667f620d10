//! Free space of the data dir's file system, checked before new work is admitted: sled 0.34
//! keeps failing every write after a single `ENOSPC`, even once space is back (see
//! [`super::JournalError::Failed`]), so the journal refuses new submits while free space is
//! below `[node] min_free_space` instead of running into the wall.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::JournalError;

/// How long one measurement stands: admission asks on every submit, statvfs need not run that
/// often.
const RECHECK: Duration = Duration::from_millis(100);

/// The free-space guard of one data dir.
#[derive(Debug)]
pub(super) struct SpaceGuard {
    dir: PathBuf,
    min_free: u64,
    /// When it last measured, and the free bytes it found.
    last: Mutex<Option<(Instant, u64)>>,
}

impl SpaceGuard {
    pub(super) fn new(dir: &Path, min_free: u64) -> SpaceGuard {
        SpaceGuard {
            dir: dir.to_path_buf(),
            min_free,
            last: Mutex::new(None),
        }
    }

    /// `Full` when the file system has less than the minimum free, measured at most every
    /// [`RECHECK`]. A failed measurement is an error naming the dir, not a refusal.
    pub(super) fn check(&self) -> Result<(), JournalError> {
        if self.min_free == 0 {
            return Ok(());
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let free = match *last {
            Some((at, free)) if at.elapsed() < RECHECK => free,
            _ => {
                let free = free_bytes(&self.dir)?;
                let refusing = free < self.min_free;
                if refusing && last.is_none_or(|(_, before)| before >= self.min_free) {
                    tracing::warn!(
                        dir = %self.dir.display(), free, needed = self.min_free,
                        "journal refuses new writes: free space below [node] min_free_space"
                    );
                }
                *last = Some((Instant::now(), free));
                free
            }
        };
        if free < self.min_free {
            return Err(JournalError::Full {
                dir: self.dir.clone(),
                free,
                needed: self.min_free,
            });
        }
        Ok(())
    }

    /// Drops the last measurement, so the next check measures.
    #[cfg(test)]
    pub(super) fn forget(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Bytes available to an unprivileged writer on the file system holding `dir`.
pub(super) fn free_bytes(dir: &Path) -> Result<u64, JournalError> {
    let stat = rustix::fs::statvfs(dir).map_err(|e| JournalError::Io {
        what: format!("statvfs {}", dir.display()),
        source: e.into(),
    })?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ensures that a minimum above the free space refuses with `Full` naming the dir, and a
    /// zero minimum never measures.
    #[test]
    fn refuses_below_minimum() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        assert!(SpaceGuard::new(dir.path(), 1).check().is_ok());
        assert!(SpaceGuard::new(Path::new("/nonexistent/dir"), 0)
            .check()
            .is_ok());
        let err = SpaceGuard::new(dir.path(), u64::MAX).check().unwrap_err();
        match &err {
            JournalError::Full {
                dir: d,
                free: f,
                needed,
            } => {
                assert_eq!(d, dir.path());
                assert!(*f > 0);
                assert_eq!(*needed, u64::MAX);
            }
            other => panic!("expected Full, got {other}"),
        }
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }
}
