//! Tests of the journal under load and damage: index maintenance and cost, the rebuild of an
//! old layout, the watermark against a damaged `db`, bounded `durable`, admission and `check`.

use std::fs::{self, OpenOptions};
use std::sync::atomic::Ordering;
use std::time::Duration;

use globset::Glob;

use super::tests::{change, record, submit};
use super::*;
use crate::job::EventKind;

/// A filter on `status` and `name` (a glob), newest first.
fn filter(status: Option<JobStatus>, name: Option<&str>, limit: usize) -> ListFilter {
    ListFilter {
        status,
        name: name.map(|n| Glob::new(n).unwrap().compile_matcher()),
        before: None,
        limit,
    }
}

fn ids(journal: &Journal, f: &ListFilter) -> Vec<JobId> {
    journal.list(f).unwrap().iter().map(|r| r.id).collect()
}

/// Index keys of the `jobs` tree under `prefix`.
fn keys(journal: &Journal, prefix: u8) -> Vec<Vec<u8>> {
    journal
        .inner
        .jobs
        .scan_prefix([prefix])
        .keys()
        .map(|k| k.unwrap().to_vec())
        .collect()
}

/// Writes `n` jobs named `name` in `status`, in batches of 1000, as one submit each.
fn bulk(journal: &Journal, name: &str, status: JobStatus, n: usize) -> Vec<JobId> {
    let mut out = Vec::with_capacity(n);
    let mut batch = Vec::new();
    for _ in 0..n {
        let mut rec = record(status);
        rec.name = name.into();
        batch.push(change(&mut rec, EventKind::Submitted));
        out.push(rec.id);
        if batch.len() == 1000 {
            journal.write(&std::mem::take(&mut batch)).unwrap();
        }
    }
    journal.write(&batch).unwrap();
    out
}

/// Ensures that a job has exactly one index key at every step of its life, told by the event
/// each change records: the unfinished key (holding the job's current head) from submit through
/// running and retrying, then the finished key of its final status, moved back to the
/// unfinished index when an operator retries it.
#[test]
fn each_transition_keeps_exactly_one_index_key() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let mut rec = record(JobStatus::Pending);
    let id = rec.id.as_bytes().to_vec();
    let step = |rec: &mut JobRecord, status: JobStatus, kind: EventKind| {
        rec.status = status;
        journal.write(&[change(rec, kind)]).unwrap();
        (keys(&journal, b'u'), keys(&journal, b'f'))
    };
    let unfinished = |_: ()| (vec![index::unfinished_key(&id)], Vec::<Vec<u8>>::new());
    let life = [
        (JobStatus::Pending, EventKind::Submitted),
        (JobStatus::Running, EventKind::Started),
        (JobStatus::Retrying, EventKind::Retrying),
        (JobStatus::Running, EventKind::Started),
    ];
    for (status, kind) in life {
        assert_eq!(step(&mut rec, status, kind), unfinished(()), "{status:?}");
        let stored = journal.unfinished().unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(
            (stored[0].status, stored[0].attempts),
            (status, rec.attempts)
        );
    }
    let failed = index::finished_key(JobStatus::Failed, &rec.name, &id);
    assert_eq!(
        step(&mut rec, JobStatus::Failed, EventKind::DeadLettered),
        (vec![], vec![failed])
    );
    assert_eq!(
        step(&mut rec, JobStatus::Pending, EventKind::Retried),
        unfinished(())
    );
    let cancelled = index::finished_key(JobStatus::Cancelled, &rec.name, &id);
    assert_eq!(
        step(&mut rec, JobStatus::Cancelled, EventKind::Cancelled),
        (vec![], vec![cancelled])
    );
    assert_eq!(
        step(&mut rec, JobStatus::Pending, EventKind::Retried),
        unfinished(())
    );
    assert!(check::check_open(&journal).unwrap().ok());
}

/// Ensures that a record written without history (by a tool or a test) still gets its index
/// from the status stored before it, read back: a finished record moved to another finished
/// status keeps one key.
#[test]
fn a_change_without_history_reads_the_stored_status() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let mut rec = record(JobStatus::Failed);
    let id = rec.id.as_bytes().to_vec();
    journal.write(&[Change::new(&rec).unwrap()]).unwrap();
    rec.status = JobStatus::Cancelled;
    journal.write(&[Change::new(&rec).unwrap()]).unwrap();
    assert!(keys(&journal, b'u').is_empty());
    assert_eq!(
        keys(&journal, b'f'),
        [index::finished_key(JobStatus::Cancelled, &rec.name, &id)]
    );
}

/// Ensures that two changes of one job in one batch leave the index of the last one, and that
/// workflows get no index key.
#[test]
fn one_batch_with_two_changes_of_a_job_indexes_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let mut rec = record(JobStatus::Pending);
    let submitted = change(&mut rec, EventKind::Submitted);
    rec.status = JobStatus::Succeeded;
    let done = change(&mut rec, EventKind::Succeeded);
    let workflow = WorkflowRecord {
        id: uuid::Uuid::now_v7(),
        kind: crate::job::WorkflowKind::Chain,
        jobs: vec![rec.id],
        then: None,
        allow_failures: false,
        created_at: 0,
    };
    journal
        .write(&[submitted, done, Change::workflow(&workflow).unwrap()])
        .unwrap();
    assert!(keys(&journal, b'u').is_empty());
    assert_eq!(
        keys(&journal, b'f'),
        [index::finished_key(
            JobStatus::Succeeded,
            &rec.name,
            rec.id.as_bytes()
        )]
    );
    assert_eq!(journal.unfinished().unwrap(), []);
}

/// Ensures that listings by exact name, glob, status and both merge the matching jobs newest
/// first across names and statuses, unfinished and finished alike.
#[test]
fn list_by_name_glob_and_status_merges_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let mut made = Vec::new();
    for (name, status) in [
        ("sec.fetch", JobStatus::Failed),
        ("sec.parse", JobStatus::Pending),
        ("yahoo.fetch", JobStatus::Failed),
        ("sec.fetch", JobStatus::Succeeded),
        ("sec.parse", JobStatus::Failed),
        ("sec.fetch", JobStatus::Running),
    ] {
        made.push(bulk(&journal, name, status, 1)[0]);
    }
    let newest = |idx: &[usize]| idx.iter().rev().map(|&i| made[i]).collect::<Vec<_>>();
    let f = |status, name, limit| ids(&journal, &filter(status, name, limit));
    assert_eq!(f(None, Some("sec.fetch"), 10), newest(&[0, 3, 5]));
    assert_eq!(f(None, Some("sec.*"), 10), newest(&[0, 1, 3, 4, 5]));
    assert_eq!(f(None, Some("sec.*"), 2), newest(&[4, 5]));
    assert_eq!(f(Some(JobStatus::Failed), None, 10), newest(&[0, 2, 4]));
    assert_eq!(
        f(Some(JobStatus::Failed), Some("sec.*"), 10),
        newest(&[0, 4])
    );
    assert_eq!(f(Some(JobStatus::Pending), Some("sec.*"), 10), newest(&[1]));
    assert_eq!(
        f(Some(JobStatus::Running), Some("yahoo.*"), 10),
        newest(&[])
    );
    assert_eq!(f(None, Some("nothing"), 10), newest(&[]));
    let page = ListFilter {
        before: Some(made[4]),
        ..filter(None, Some("sec.*"), 2)
    };
    assert_eq!(ids(&journal, &page), newest(&[1, 3]));
}

/// Ensures that a filtered listing decodes only the records it returns and replay only the
/// unfinished ones, whatever the history: the same counts at 1,000 and 20,000 finished jobs.
#[test]
fn listing_and_replay_cost_do_not_grow_with_history() {
    let mut decoded_per_size = Vec::new();
    for finished in [1_000, 20_000] {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        bulk(&journal, "ingest.fetch", JobStatus::Failed, finished / 2);
        bulk(&journal, "ingest.parse", JobStatus::Succeeded, finished / 2);
        bulk(&journal, "ingest.parse", JobStatus::Pending, 5);

        let decoded = || journal.inner.decoded.swap(0, Ordering::Relaxed);
        decoded();
        let dlq = journal
            .list(&filter(Some(JobStatus::Failed), None, 10))
            .unwrap();
        assert_eq!(dlq.len(), 10);
        assert!(dlq.iter().all(|r| r.status == JobStatus::Failed));
        let by_name = journal.list(&filter(None, Some("ingest.f*"), 10)).unwrap();
        assert_eq!(by_name.len(), 10);
        let pending = journal
            .list(&filter(Some(JobStatus::Pending), None, 10))
            .unwrap();
        assert_eq!(pending.len(), 5);
        decoded_per_size.push(decoded());
        assert_eq!(journal.unfinished().unwrap().len(), 5);
    }
    assert_eq!(decoded_per_size, [25, 25]);
}

/// Ensures that compaction removes a job's index key with its record.
#[test]
fn compact_removes_the_index_key() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let mut rec = record(JobStatus::Succeeded);
    rec.created_at = 1_000;
    rec.completed_at = Some(2_000);
    journal
        .write(&[change(&mut rec, EventKind::Succeeded)])
        .unwrap();
    assert_eq!(keys(&journal, b'f').len(), 1);
    assert_eq!(journal.compact(10_000).unwrap(), 1);
    assert!(keys(&journal, b'f').is_empty());
    assert!(check::check_open(&journal).unwrap().ok());
}

/// Ensures that a data dir without indexes (the layout before them, or a build cut short) gets
/// them built on open, so listings and replay see every job.
#[test]
fn open_builds_missing_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let (pending, failed) = {
        let journal = Journal::open(dir.path()).unwrap();
        let pending = bulk(&journal, "a", JobStatus::Pending, 3);
        let failed = bulk(&journal, "b", JobStatus::Failed, 4);
        // Back to the old layout: no index keys, no index_version; plus a stray key.
        for prefix in [b'u', b'f'] {
            for key in keys(&journal, prefix) {
                journal.inner.jobs.remove(key).unwrap();
            }
        }
        journal
            .inner
            .jobs
            .insert(index::unfinished_key(&[7; 16]), b"x".to_vec())
            .unwrap();
        journal.inner.meta.remove(index::INDEX_VERSION_KEY).unwrap();
        journal.sync_now().unwrap();
        (pending, failed)
    };
    let journal = Journal::open(dir.path()).unwrap();
    let replayed: Vec<JobId> = journal.unfinished().unwrap().iter().map(|r| r.id).collect();
    assert_eq!(replayed, pending);
    let dlq = ids(&journal, &filter(Some(JobStatus::Failed), None, 10));
    assert_eq!(dlq, failed.iter().rev().copied().collect::<Vec<_>>());
    assert!(check::check_open(&journal).unwrap().ok());
}

/// Writes 1,000 finished and 1,000 pending jobs, closes cleanly, and returns the db path.
pub(super) fn closed_journal(dir: &Path) -> PathBuf {
    let journal = Journal::open(dir).unwrap();
    for _ in 0..4 {
        bulk(&journal, "a", JobStatus::Succeeded, 250);
        bulk(&journal, "b", JobStatus::Pending, 250);
        journal.sync_now().unwrap();
    }
    drop(journal);
    dir.join("db")
}

/// The error of reopening a damaged data dir: a typed refusal, never a silent success.
pub(super) fn reopen_err(dir: &Path) -> JournalError {
    match Journal::open(dir) {
        Ok(j) => panic!(
            "a damaged journal opened silently with {} unfinished jobs",
            j.unfinished().map(|u| u.len()).unwrap_or(0)
        ),
        Err(e) => e,
    }
}

/// Ensures that a clean close reopens fine, and a byte flipped in the middle of what `db`
/// holds (sled preallocates a zeroed tail) makes the next open fail with a typed error naming
/// the data dir, not lose jobs silently; `check` reports it too.
#[test]
fn a_flipped_byte_in_db_is_detected_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = closed_journal(dir.path());
    let mut bytes = fs::read(&db).unwrap();
    let used = bytes.iter().rposition(|&b| b != 0).unwrap();
    bytes[used / 2] ^= 0x40;
    fs::write(&db, bytes).unwrap();
    let err = reopen_err(dir.path());
    assert!(matches!(err, JournalError::RolledBack { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
    let report = check::check(dir.path()).unwrap();
    assert!(!report.ok(), "{report}");
    assert!(
        report.to_string().contains("committed writes were lost"),
        "{report}"
    );
}

/// Ensures that wherever one byte of `db` is flipped, before or after a restart (which gives
/// sled a snapshot and a preallocated segment), the outcome is a typed error or a journal that
/// lost nothing: 2,000 jobs, 1,000 unfinished, `check` clean. Never a silent loss.
#[test]
fn a_flipped_byte_anywhere_is_an_error_or_harmless() {
    for restarted in [false, true] {
        let base = tempfile::tempdir().unwrap();
        let db = closed_journal(base.path());
        if restarted {
            drop(Journal::open(base.path()).unwrap());
        }
        let pristine = fs::read(&db).unwrap();
        for tenth in 1..10 {
            let dir = tempfile::tempdir().unwrap();
            for entry in fs::read_dir(base.path()).unwrap() {
                let entry = entry.unwrap();
                if entry.file_type().unwrap().is_file() {
                    fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
                }
            }
            let mut bytes = pristine.clone();
            let at = bytes.len() * tenth / 10;
            bytes[at] ^= 0x40;
            fs::write(dir.path().join("db"), &bytes).unwrap();
            let at = format!("restarted {restarted}, flip at {tenth}/10");
            match Journal::open(dir.path()) {
                Ok(journal) => {
                    let report = check::check_open(&journal).unwrap();
                    assert!(report.ok(), "{at}: {report}");
                    assert_eq!((report.jobs, report.unfinished), (2_000, 1_000), "{at}");
                    assert_eq!(journal.unfinished().unwrap().len(), 1_000, "{at}");
                }
                Err(e) => assert!(
                    matches!(
                        e,
                        JournalError::RolledBack { .. } | JournalError::Corrupt { .. }
                    ),
                    "{at}: {e:?}"
                ),
            }
        }
    }
}

/// Ensures that a `db` truncated to half its size is refused on open with `RolledBack`.
#[test]
fn a_truncated_db_is_detected_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = closed_journal(dir.path());
    let len = fs::metadata(&db).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let err = reopen_err(dir.path());
    assert!(matches!(err, JournalError::RolledBack { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("warden check --data-dir"), "{msg}");
}

/// Ensures that the watermark follows commits and a journal without one (older layout) opens.
#[test]
fn watermark_follows_commits_and_may_be_missing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let journal = Journal::open(dir.path()).unwrap();
        submit(&journal, JobStatus::Pending);
        journal.sync_now().unwrap();
        journal.sync_now().unwrap();
        let seq = watermark::read(dir.path()).unwrap().unwrap();
        assert!(seq >= 2, "{seq}");
    }
    fs::remove_file(dir.path().join(watermark::FILE)).unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    assert_eq!(journal.unfinished().unwrap().len(), 1);
    let report = check::check_open(&journal).unwrap();
    assert!(report.ok(), "{report}");
}

/// Ensures that `durable` resolves with `CommitTimeout` when its commit hangs, in real time,
/// and that admission refuses while the commit is stalled.
#[test]
fn durable_times_out_when_the_commit_hangs() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        min_free_space: 0,
        commit_timeout: Duration::from_millis(300),
        ..JournalOptions::default()
    };
    let journal = Journal::open_with(dir.path(), options).unwrap();
    let gate = journal.inner.committer.gate.lock().unwrap();
    let err = rt.block_on(journal.durable()).unwrap_err();
    assert!(matches!(err, JournalError::CommitTimeout { .. }), "{err}");
    assert!(err.to_string().contains(&dir.path().display().to_string()));
    let err = journal.admit_writes().unwrap_err();
    assert!(matches!(err, JournalError::CommitTimeout { .. }), "{err}");
    drop(gate);
    rt.block_on(journal.durable()).unwrap();
    journal.admit_writes().unwrap();
}

/// Ensures that admission refuses with `Full` when the minimum free space is not available.
#[test]
fn admission_refuses_below_min_free_space() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        min_free_space: u64::MAX,
        ..JournalOptions::default()
    };
    let journal = Journal::open_with(dir.path(), options).unwrap();
    let err = journal.admit_writes().unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::Full {
                needed: u64::MAX,
                ..
            }
        ),
        "{err}"
    );
    drop(journal);
    let journal = Journal::open_with(
        dir.path(),
        JournalOptions {
            min_free_space: 1,
            ..options
        },
    )
    .unwrap();
    journal.admit_writes().unwrap();
}

/// Ensures that `check` passes a healthy journal and reports an index entry that disagrees
/// with its record and an undecodable record.
#[test]
fn check_reports_index_mismatches_and_bad_records() {
    let dir = tempfile::tempdir().unwrap();
    {
        let journal = Journal::open(dir.path()).unwrap();
        let rec = submit(&journal, JobStatus::Pending);
        bulk(&journal, "n", JobStatus::Failed, 3);
        journal
            .put_record("feed/1", &serde_json::json!({"a": 1}))
            .unwrap();
        let report = check::check_open(&journal).unwrap();
        assert!(report.ok(), "{report}");
        assert_eq!((report.jobs, report.unfinished, report.records), (4, 1, 1));
        assert_eq!(report.index_entries, 4);
        journal
            .inner
            .jobs
            .insert(
                index::finished_key(JobStatus::Failed, "n", rec.id.as_bytes()),
                &[][..],
            )
            .unwrap();
        journal.inner.records.insert("feed/2", vec![9]).unwrap();
        journal.sync_now().unwrap();
    }
    let report = check::check(dir.path()).unwrap();
    assert_eq!(report.problem_count, 2, "{report}");
    assert!(report.to_string().ends_with("2 problems"), "{report}");
}

/// A small tmpfs mounted for one test, unmounted on drop; `None` where mounting is not
/// permitted (not root, no CAP_SYS_ADMIN), so the test skips.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// A tmpfs of `size` and a runtime to await commits on; `None` (the test skips, saying so) where
/// a tmpfs cannot be mounted.
fn tmpfs_and_runtime(size: &str) -> Option<(Tmpfs, tokio::runtime::Runtime)> {
    let Some(fs) = Tmpfs::mount(size) else {
        eprintln!("skipped: cannot mount a tmpfs here");
        return None;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Some((fs, rt))
}

/// Submits batches of 100 jobs, each made durable, until a write or commit fails; returns the
/// jobs acknowledged (durable) and the error.
fn fill(journal: &Journal, rt: &tokio::runtime::Runtime) -> (Vec<JobId>, JournalError) {
    let mut acked = Vec::new();
    loop {
        let batch: Vec<JobRecord> = (0..100).map(|_| record(JobStatus::Pending)).collect();
        let changes: Vec<Change> = batch.iter().map(|r| Change::new(r).unwrap()).collect();
        let outcome = journal
            .write(&changes)
            .and_then(|()| rt.block_on(journal.durable()));
        match outcome {
            Ok(()) => acked.extend(batch.iter().map(|r| r.id)),
            Err(e) => return (acked, e),
        }
        assert!(acked.len() < 1_000_000, "the tmpfs never filled up");
    }
}

/// Ensures, on a real 16 MiB tmpfs, what a full disk does: the failing write or commit answers
/// (no hang), the journal then reports `Failed` (sled 0.34 keeps failing every write even after
/// space is back), a restart recovers, and every acknowledged job survives. Skips where tmpfs
/// cannot be mounted.
#[test]
fn a_full_disk_fails_typed_and_a_restart_recovers() {
    let Some((fs, rt)) = tmpfs_and_runtime("16m") else {
        return;
    };
    let dir = fs.dir.path().join("data");
    let options = JournalOptions {
        min_free_space: 0,
        commit_timeout: Duration::from_secs(10),
        ..JournalOptions::default()
    };
    let journal = Journal::open_with(&dir, options).unwrap();
    let (acked, err) = fill(&journal, &rt);
    assert!(!acked.is_empty());
    assert!(
        matches!(err, JournalError::Sled { .. } | JournalError::Commit { .. }),
        "{err:?}"
    );
    assert!(matches!(
        journal.admit_writes(),
        Err(JournalError::Failed { .. })
    ));

    fs.resize("64m");
    // sled still refuses every write although there is room now.
    let rec = record(JobStatus::Pending);
    assert!(journal.write(&[Change::new(&rec).unwrap()]).is_err());
    let err = journal.admit_writes().unwrap_err();
    assert!(matches!(err, JournalError::Failed { .. }), "{err}");
    assert!(err.to_string().contains("restart the node"), "{err}");
    drop(journal);

    let journal = Journal::open_with(&dir, options).unwrap();
    journal.admit_writes().unwrap();
    let replayed: HashSet<JobId> = journal.unfinished().unwrap().iter().map(|r| r.id).collect();
    assert!(
        acked.iter().all(|id| replayed.contains(id)),
        "an acknowledged job was lost"
    );
    journal.write(&[Change::new(&rec).unwrap()]).unwrap();
    rt.block_on(journal.durable()).unwrap();
}

/// Ensures, on a real 32 MiB tmpfs, that `min_free_space` refuses admission while sled can still
/// write: jobs are admitted until free space drops below 12 MiB, and no write failed by then.
#[test]
fn min_free_space_refuses_before_the_disk_is_full() {
    let Some((fs, rt)) = tmpfs_and_runtime("32m") else {
        return;
    };
    let options = JournalOptions {
        min_free_space: 12 << 20,
        ..JournalOptions::default()
    };
    let journal = Journal::open_with(&fs.dir.path().join("data"), options).unwrap();
    let mut admitted = 0;
    let refusal = loop {
        // The guard measures at most every 100 ms: make each round measure.
        journal.inner.space.forget();
        if let Err(e) = journal.admit_writes() {
            break e;
        }
        let batch: Vec<Change> = (0..500)
            .map(|_| Change::new(&record(JobStatus::Pending)).unwrap())
            .collect();
        journal.write(&batch).unwrap();
        rt.block_on(journal.durable()).unwrap();
        admitted += batch.len();
    };
    assert!(admitted > 0);
    assert!(matches!(refusal, JournalError::Full { .. }), "{refusal}");
    assert!(journal.admit_writes().is_err());
    // Work already admitted can still be written.
    journal
        .write(&[Change::new(&record(JobStatus::Pending)).unwrap()])
        .unwrap();
    rt.block_on(journal.durable()).unwrap();
}
