//! Tests of [`super::recovery`]: damage that makes sled's recovery cut the log destroys
//! nothing (every overwritten byte is saved, and the refusal names where), and a torn write
//! after the last durable commit is cut without keeping a copy or refusing the start.

use std::fs;
use std::path::Path;

use super::store_tests::{closed_journal, reopen_err};
use super::*;

/// The saved folder of a refusal, asserting that it is a `RolledBack` naming it.
fn saved_folder(err: &JournalError) -> PathBuf {
    match err {
        JournalError::RolledBack {
            saved: Some(folder),
            ..
        } => {
            assert!(
                err.to_string().contains(&folder.display().to_string()),
                "{err}"
            );
            folder.clone()
        }
        other => panic!("expected RolledBack with saved bytes, got {other:?}"),
    }
}

/// Asserts that `damaged` (the db file before the refused open) can be rebuilt from the db
/// file now and the saved regions: nothing it held was destroyed.
fn assert_nothing_destroyed(damaged: &[u8], db: &Path, folder: &Path) {
    let mut rebuilt = fs::read(db).unwrap();
    rebuilt.resize(rebuilt.len().max(damaged.len()), 0);
    let mut regions = 0;
    for entry in fs::read_dir(folder).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let Some(offset) = name.strip_prefix("db-at-") else {
            continue;
        };
        let offset: usize = offset.parse().unwrap();
        let bytes = fs::read(entry.path()).unwrap();
        rebuilt[offset..offset + bytes.len()].copy_from_slice(&bytes);
        regions += 1;
    }
    assert!(regions > 0, "nothing saved in {}", folder.display());
    let differing = damaged.iter().zip(&rebuilt).filter(|(a, b)| a != b).count();
    assert_eq!(differing, 0, "bytes of the damaged db not recoverable");
}

/// Opens `dir` after `damage` has been done to its cleanly closed db: a refusal naming where
/// the overwritten bytes are, and the damaged db rebuildable from them.
fn refused_without_loss(damage: impl FnOnce(&mut Vec<u8>)) {
    let dir = tempfile::tempdir().unwrap();
    let db = closed_journal(dir.path());
    let mut bytes = fs::read(&db).unwrap();
    damage(&mut bytes);
    fs::write(&db, &bytes).unwrap();
    let err = reopen_err(dir.path());
    let folder = saved_folder(&err);
    assert!(
        folder.starts_with(dir.path().join(recovery::DIR)),
        "{folder:?}"
    );
    assert_nothing_destroyed(&bytes, &db, &folder);
    // A second attempt refuses again and keeps the first copy.
    let again = reopen_err(dir.path());
    assert!(
        matches!(again, JournalError::RolledBack { .. }),
        "{again:?}"
    );
    assert!(folder.exists());
}

/// Ensures that a byte flipped in the middle of a cleanly closed db is refused, and every byte
/// sled's recovery overwrote is saved first and named in the refusal.
#[test]
fn a_flipped_byte_destroys_nothing() {
    refused_without_loss(|bytes| {
        let used = bytes.iter().rposition(|&b| b != 0).unwrap();
        bytes[used / 2] ^= 0x40;
    });
}

/// Ensures the same when 4 KiB in the middle of the db are zeroed.
#[test]
fn four_zeroed_kib_destroy_nothing() {
    refused_without_loss(|bytes| {
        let used = bytes.iter().rposition(|&b| b != 0).unwrap();
        let at = used / 2;
        bytes[at..at + 4096].fill(0);
    });
}

/// Ensures that garbage written after the last durable commit (what a write torn by a crash
/// leaves) is cut by sled's recovery, the copy saved during the open is removed since nothing
/// durable was in it, and every job is still there.
#[test]
fn a_torn_tail_after_the_last_commit_is_cut_and_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let db = closed_journal(dir.path());
    let mut bytes = fs::read(&db).unwrap();
    // The file ends at the log's tip: a torn write is bytes past it.
    bytes.extend([0xA5; 64]);
    fs::write(&db, &bytes).unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    assert_eq!(journal.unfinished().unwrap().len(), 1_000);
    let report = check::check_open(&journal).unwrap();
    assert!(report.ok(), "{report}");
    let saved = dir.path().join(recovery::DIR);
    assert!(saved.exists(), "sled's recovery did not cut the torn write");
    let kept = fs::read_dir(&saved).unwrap().count();
    assert_eq!(kept, 0, "a copy of an unacknowledged torn write was kept");
}

/// Ensures that reopening a cleanly closed journal saves nothing: what sled overwrites after
/// the tip then is zeros.
#[test]
fn a_clean_reopen_saves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    closed_journal(dir.path());
    for _ in 0..2 {
        drop(Journal::open(dir.path()).unwrap());
    }
    assert!(!dir.path().join(recovery::DIR).exists());
}
