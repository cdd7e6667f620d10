//! Metric handles for the job loop. The `metrics` macros look a series up in the recorder's
//! registry on every call, hashing its labels; on the path every job takes (submitted, started,
//! succeeded) each dispatcher (the single node's, cluster mode's) instead keeps one handle per job
//! name, registered once.

use std::collections::HashMap;

use metrics::{Counter, Histogram};

use crate::metrics as m;

/// The handles of one job name.
pub(crate) struct JobMeters {
    /// `warden_jobs_submitted_total{job_name}`.
    pub submitted: Counter,
    /// `warden_job_executions_total{job_name, status="succeeded"}`.
    pub succeeded: Counter,
    /// `warden_job_duration_seconds{job_name}`.
    pub duration: Histogram,
}

/// Handles by job name (job names are bounded: they must name a task).
#[derive(Default)]
pub(crate) struct Meters {
    by_name: HashMap<String, JobMeters>,
}

impl Meters {
    /// The handles of `name`, registered on first use.
    pub fn job(&mut self, name: &str) -> &JobMeters {
        if !self.by_name.contains_key(name) {
            let meters = JobMeters {
                submitted: metrics::counter!(m::JOBS_SUBMITTED, "job_name" => name.to_string()),
                succeeded: metrics::counter!(m::JOB_EXECUTIONS, "job_name" => name.to_string(), "status" => "succeeded"),
                duration: metrics::histogram!(m::JOB_DURATION, "job_name" => name.to_string()),
            };
            self.by_name.insert(name.to_string(), meters);
        }
        &self.by_name[name]
    }
}
