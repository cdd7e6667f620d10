//! The one catalogue of metric names, with their help text. Code records metrics through the
//! `metrics` macros using these constants; the root crate installs the Prometheus recorder and
//! calls [`describe_all`]. Labels stay bounded: pipeline, job name, status, priority, never a
//! job id or a ticker.

/// Job attempts that ended, by `job_name` and `status` (succeeded, failed, retried, cancelled).
pub const JOB_EXECUTIONS: &str = "warden_job_executions_total";
/// Duration of job attempts, by `job_name`.
pub const JOB_DURATION: &str = "warden_job_duration_seconds";
/// Retries scheduled, by `job_name` and `error_type` (transient, throttled, panic, timeout).
pub const JOB_RETRIES: &str = "warden_job_retries_total";
/// Jobs accepted, by `job_name`.
pub const JOBS_SUBMITTED: &str = "warden_jobs_submitted_total";
/// Jobs dead-lettered, by `job_name`.
pub const DEAD_LETTER: &str = "warden_dead_letter_total";
/// Jobs waiting, by `pipeline` and `priority`.
pub const QUEUE_DEPTH: &str = "warden_queue_depth";
/// Time from enqueue to start, by `pipeline`.
pub const QUEUE_WAIT: &str = "warden_queue_wait_seconds";
/// Workers running a job, by `pipeline`.
pub const ACTIVE_WORKERS: &str = "warden_active_workers";
/// Workers registered, by `pipeline`.
pub const WORKERS: &str = "warden_workers";
/// Actor restarts, by `actor_kind` and `pipeline`.
pub const ACTOR_RESTARTS: &str = "warden_actor_restarts_total";
/// Supervisors that spent their restart budget, by `pipeline`.
pub const SUPERVISOR_ESCALATIONS: &str = "warden_supervisor_escalations_total";
/// Circuit breaker state, by `pipeline`: 0 closed, 1 half-open, 2 open.
pub const CIRCUIT_BREAKER_STATE: &str = "warden_circuit_breaker_state";
/// Breaker transitions, by `pipeline` and `to`.
pub const CIRCUIT_BREAKER_TRANSITIONS: &str = "warden_circuit_breaker_transitions_total";
/// Time from asking the rate limiter for a permit to getting it, by `pipeline`.
pub const RATE_LIMITER_WAIT: &str = "warden_rate_limiter_wait_seconds";
/// 1 while the source is paused after a throttle signal, by `pipeline`.
pub const RATE_LIMITER_PAUSED: &str = "warden_rate_limiter_paused";
/// Upstream requests, by `pipeline` and `outcome` (ok, transient, throttled, permanent).
pub const UPSTREAM_REQUESTS: &str = "warden_upstream_requests_total";
/// Upstream request durations, by `pipeline`.
pub const UPSTREAM_DURATION: &str = "warden_upstream_request_duration_seconds";
/// Journal entries written.
pub const JOURNAL_ENTRIES: &str = "warden_journal_entries_total";
/// Duration of one group commit (flush + fsync).
pub const JOURNAL_FSYNC: &str = "warden_journal_fsync_seconds";
/// Durability waiters answered by one group commit.
pub const JOURNAL_BATCH: &str = "warden_journal_batch_size";
/// Bytes the journal takes on disk.
pub const JOURNAL_BYTES: &str = "warden_journal_bytes";
/// Admin connections open now.
pub const ADMIN_CONNECTIONS: &str = "warden_admin_connections";
/// Admin requests, by `cmd` and `outcome` (ok or the error code).
pub const ADMIN_REQUESTS: &str = "warden_admin_requests_total";
/// Always 1, labelled with `version`.
pub const BUILD_INFO: &str = "warden_build_info";
/// Seconds since the node started.
pub const UPTIME: &str = "warden_uptime_seconds";

/// Registers the help text of every metric with the installed recorder.
pub fn describe_all() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        JOB_EXECUTIONS,
        "Job attempts that ended, by job name and status."
    );
    describe_histogram!(JOB_DURATION, Unit::Seconds, "Duration of job attempts.");
    describe_counter!(
        JOB_RETRIES,
        "Retries scheduled, by job name and error type."
    );
    describe_counter!(JOBS_SUBMITTED, "Jobs accepted, by job name.");
    describe_counter!(DEAD_LETTER, "Jobs dead-lettered, by job name.");
    describe_gauge!(QUEUE_DEPTH, "Jobs waiting, by pipeline and priority.");
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time jobs waited in their queue before starting."
    );
    describe_gauge!(ACTIVE_WORKERS, "Workers running a job, by pipeline.");
    describe_gauge!(WORKERS, "Workers registered, by pipeline.");
    describe_counter!(
        ACTOR_RESTARTS,
        "Actor restarts, by actor kind and pipeline."
    );
    describe_counter!(
        SUPERVISOR_ESCALATIONS,
        "Supervisors that spent their restart budget."
    );
    describe_gauge!(
        CIRCUIT_BREAKER_STATE,
        "Circuit breaker state: 0 closed, 1 half-open, 2 open."
    );
    describe_counter!(
        CIRCUIT_BREAKER_TRANSITIONS,
        "Circuit breaker transitions, by target state."
    );
    describe_histogram!(
        RATE_LIMITER_WAIT,
        Unit::Seconds,
        "Time waited for a rate-limit permit."
    );
    describe_gauge!(
        RATE_LIMITER_PAUSED,
        "1 while the source is paused after a throttle signal."
    );
    describe_counter!(UPSTREAM_REQUESTS, "Upstream requests, by outcome.");
    describe_histogram!(
        UPSTREAM_DURATION,
        Unit::Seconds,
        "Upstream request durations."
    );
    describe_counter!(JOURNAL_ENTRIES, "Journal entries written.");
    describe_histogram!(
        JOURNAL_FSYNC,
        Unit::Seconds,
        "Duration of one group commit (flush + fsync)."
    );
    describe_histogram!(
        JOURNAL_BATCH,
        "Durability waiters answered by one group commit."
    );
    describe_gauge!(
        JOURNAL_BYTES,
        Unit::Bytes,
        "Bytes the journal takes on disk."
    );
    describe_gauge!(ADMIN_CONNECTIONS, "Admin connections open now.");
    describe_counter!(ADMIN_REQUESTS, "Admin requests, by command and outcome.");
    describe_gauge!(BUILD_INFO, "Always 1; the version label tells the build.");
    describe_gauge!(UPTIME, Unit::Seconds, "Seconds since the node started.");
}
