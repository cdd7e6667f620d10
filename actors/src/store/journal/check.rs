//! `warden check`: an offline verification of a data dir, without a node. It opens the journal's
//! database (taking the data dir's lock, so never beside a live node), compares sled's commit
//! sequence with the watermark file, decodes every job record, workflow, pipeline record and
//! meta value, and checks that the indexes and the records agree both ways. It writes nothing
//! itself; sled's own recovery may cut the log while opening, as at any start, and what it
//! overwrites is saved first under `<dir>/recovery/` (`super::recovery`) and reported.

use std::fmt;
use std::path::{Path, PathBuf};

use super::index::{self, FINISHED_PREFIX, UNFINISHED_PREFIX};
use super::{
    decode_bincode, decode_record, split_record, split_stored_record, strip_version, watermark,
    JournalError, FORMAT_VERSION, RECORD_PREFIX, WORKFLOW_PREFIX,
};
use crate::job::WorkflowRecord;

/// Problems listed in full; past that they are only counted.
const SHOWN_PROBLEMS: usize = 20;

/// What `check` found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The data dir.
    pub dir: PathBuf,
    /// The commit sequence sled recovered (0: none recorded).
    pub commit_seq: u64,
    /// The watermark file's sequence (`None`: no watermark file).
    pub watermark: Option<u64>,
    /// Job records, and how many of them are unfinished.
    pub jobs: u64,
    /// Unfinished job records.
    pub unfinished: u64,
    /// Workflow records.
    pub workflows: u64,
    /// Pipeline output records.
    pub records: u64,
    /// Index entries (unfinished + finished).
    pub index_entries: u64,
    /// Whether the indexes were built (false: an old layout, built at the next start).
    pub indexed: bool,
    /// Where the bytes sled's recovery overwrote while opening were saved, if it overwrote any.
    pub recovery_saved: Option<PathBuf>,
    /// Every problem found, the first `SHOWN_PROBLEMS` described.
    pub problems: Vec<String>,
    /// Problems found in all.
    pub problem_count: u64,
}

impl CheckReport {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problem_count == 0
    }

    fn problem(&mut self, what: String) {
        self.problem_count += 1;
        if self.problems.len() < SHOWN_PROBLEMS {
            self.problems.push(what);
        }
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "data dir: {}", self.dir.display())?;
        let watermark = self
            .watermark
            .map_or_else(|| "none".to_string(), |w| w.to_string());
        writeln!(
            f,
            "commit sequence: {} (watermark {watermark})",
            self.commit_seq
        )?;
        writeln!(
            f,
            "jobs: {} ({} unfinished), workflows: {}, records: {}",
            self.jobs, self.unfinished, self.workflows, self.records
        )?;
        if self.indexed {
            writeln!(f, "index entries: {}", self.index_entries)?;
        } else {
            writeln!(
                f,
                "indexes: not built yet (older layout; built at the next start)"
            )?;
        }
        if let Some(folder) = &self.recovery_saved {
            writeln!(
                f,
                "recovery: sled cut the log while opening it; the bytes it overwrote are saved \
                 in {}",
                folder.display()
            )?;
        }
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        if self.problem_count > self.problems.len() as u64 {
            writeln!(
                f,
                "... and {} more problems",
                self.problem_count - self.problems.len() as u64
            )?;
        }
        if self.ok() {
            write!(f, "ok")
        } else {
            write!(f, "{} problems", self.problem_count)
        }
    }
}

/// Verifies the journal in `dir`. `Err` only when it cannot be opened at all (missing dir, held
/// by a live node, sled refusing it); everything found wrong inside is in the report.
pub fn check(dir: &Path) -> Result<CheckReport, JournalError> {
    if !dir.join("db").exists() {
        return Err(JournalError::Io {
            what: format!("find a journal in {}", dir.display()),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no db file"),
        });
    }
    let opened = super::open_db(dir, super::DEFAULT_CACHE_BYTES)?;
    let trees = Trees {
        jobs: opened.tree("jobs")?,
        records: opened.tree("records")?,
        meta: opened.tree("meta")?,
    };
    let mut report = inspect(dir, opened.found, opened.seq_error.as_ref(), &trees)?;
    report.recovery_saved = opened.saved.folder.clone();
    Ok(report)
}

/// The same verification on a journal this process has open (its lock is ours already).
pub fn check_open(journal: &super::Journal) -> Result<CheckReport, JournalError> {
    let inner = &journal.inner;
    let (found, seq_error) = match inner
        .meta
        .get(watermark::COMMIT_SEQ_KEY)
        .map_err(super::sled_err("reading meta key commit_seq"))
        .and_then(|v| v.map(|v| watermark::decode_seq(&v)).transpose())
    {
        Ok(found) => (found.unwrap_or(0), None),
        Err(e) => (0, Some(e)),
    };
    let trees = Trees {
        jobs: inner.jobs.clone(),
        records: inner.records.clone(),
        meta: inner.meta.clone(),
    };
    inspect(&inner.dir, found, seq_error.as_ref(), &trees)
}

struct Trees {
    jobs: sled::Tree,
    records: sled::Tree,
    meta: sled::Tree,
}

fn inspect(
    dir: &Path,
    found: u64,
    seq_error: Option<&JournalError>,
    trees: &Trees,
) -> Result<CheckReport, JournalError> {
    let mut report = CheckReport {
        dir: dir.to_path_buf(),
        commit_seq: found,
        ..CheckReport::default()
    };
    match watermark::read(dir) {
        Ok(w) => report.watermark = w,
        Err(e) => report.problem(e.to_string()),
    }
    if let Some(w) = report.watermark.filter(|&w| w > found) {
        report.problem(format!(
            "the database recovered up to commit {found} but the watermark says commit {w} \
             was durable: committed writes were lost (restore the data dir from a backup)"
        ));
    }
    if let Some(e) = seq_error {
        report.problem(e.to_string());
    }
    let Trees {
        jobs,
        records,
        meta,
    } = trees;
    report.indexed = meta
        .get(index::INDEX_VERSION_KEY)
        .ok()
        .flatten()
        .is_some_and(|v| v.as_ref() == [FORMAT_VERSION, index::INDEX_VERSION]);
    check_jobs(jobs, &mut report)?;
    if report.indexed {
        check_index(jobs, &mut report)?;
    }
    check_records(records, &mut report)?;
    for item in meta.iter() {
        let (key, value) = item.map_err(super::sled_err("scanning the meta tree"))?;
        if value.first() != Some(&FORMAT_VERSION) {
            let key = String::from_utf8_lossy(&key);
            report.problem(format!("meta key {key:?}: unknown format version"));
        }
    }
    Ok(report)
}

/// Decodes every job record and workflow; checks each record's index key exists.
fn check_jobs(jobs: &sled::Tree, report: &mut CheckReport) -> Result<(), JournalError> {
    for item in jobs.scan_prefix([RECORD_PREFIX]) {
        let (key, value) = item.map_err(super::sled_err("scanning job records"))?;
        report.jobs += 1;
        let (status, record) = match split_record(&key, &value)
            .and_then(|(status, _)| decode_record(&key, &value).map(|r| (status, r)))
        {
            Ok(decoded) => decoded,
            Err(e) => {
                report.problem(e.to_string());
                continue;
            }
        };
        if !status.is_finished() {
            report.unfinished += 1;
        }
        if report.indexed {
            let expected = index::expected_key(status, &record.name, &key[1..]);
            if !jobs.contains_key(&expected).unwrap_or(false) {
                report.problem(format!(
                    "job {} ({}, {}) has no index entry",
                    record.id,
                    status.as_str(),
                    record.name
                ));
            }
        }
    }
    for item in jobs.scan_prefix([WORKFLOW_PREFIX]) {
        let (key, value) = item.map_err(super::sled_err("scanning workflows"))?;
        report.workflows += 1;
        let decoded = strip_version(&key, &value)
            .and_then(|body| decode_bincode::<WorkflowRecord>(&key, body));
        if let Err(e) = decoded {
            report.problem(e.to_string());
        }
    }
    Ok(())
}

/// Checks that every index entry points at a record in the state it claims, and that an
/// unfinished entry holds that record's head as it is.
fn check_index(jobs: &sled::Tree, report: &mut CheckReport) -> Result<(), JournalError> {
    for prefix in [UNFINISHED_PREFIX, FINISHED_PREFIX] {
        for item in jobs.scan_prefix([prefix]) {
            let (key, head) = item.map_err(super::sled_err("scanning the indexes"))?;
            report.index_entries += 1;
            let Some(id) = key.len().checked_sub(16).map(|at| &key[at..]) else {
                report.problem(format!("{}: too short", super::describe_job_key(&key)));
                continue;
            };
            let record_key = [&[RECORD_PREFIX][..], id].concat();
            let stored = jobs
                .get(&record_key)
                .map_err(super::sled_err("reading a record named by an index"))?;
            let matches = stored.as_deref().is_some_and(|value| {
                decode_record(&record_key, value).is_ok_and(|record| {
                    index::expected_key(record.status, &record.name, id) == key.as_ref()
                        && (record.status.is_finished()
                            || super::head::encode(&record).is_ok_and(|h| h == head.as_ref()))
                })
            });
            if !matches {
                report.problem(format!(
                    "{} does not match its record",
                    super::describe_job_key(&key)
                ));
            }
        }
    }
    Ok(())
}

/// Decodes every pipeline output record.
fn check_records(records: &sled::Tree, report: &mut CheckReport) -> Result<(), JournalError> {
    for item in records.iter() {
        let (key, value) = item.map_err(super::sled_err("scanning pipeline records"))?;
        report.records += 1;
        let key = String::from_utf8_lossy(&key).into_owned();
        let decoded = split_stored_record(&key, &value).and_then(|(_, json)| {
            serde_json::from_slice::<serde_json::Value>(json).map_err(|e| JournalError::Corrupt {
                what: format!("records key {key:?}"),
                detail: format!("undecodable JSON: {e}"),
            })
        });
        if let Err(e) = decoded {
            report.problem(e.to_string());
        }
    }
    Ok(())
}
