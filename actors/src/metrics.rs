//! The one catalogue of metric names, with their help text. Code records metrics through the
//! `metrics` macros using these constants; the root crate installs the Prometheus recorder and
//! calls [`describe_all`]. Labels stay bounded: pipeline, job name, status, priority, never a
//! job id or a ticker.

/// Job attempts that ended, by `job_name` and `status` (succeeded, failed, retried, cancelled).
pub const JOB_EXECUTIONS: &str = "warden_job_executions_total";
/// Duration of job attempts, by `job_name`.
pub const JOB_DURATION: &str = "warden_job_duration_seconds";
/// Retries scheduled, by `job_name` and `error_type` (transient, throttled, panic, timeout, crash).
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
/// 1 while the journal refuses new writes because free space is below `[node] min_free_space`.
pub const JOURNAL_REFUSING_WRITES: &str = "warden_journal_refusing_writes";
/// Admin connections open now.
pub const ADMIN_CONNECTIONS: &str = "warden_admin_connections";
/// Admin requests, by `cmd` and `outcome` (ok or the error code).
pub const ADMIN_REQUESTS: &str = "warden_admin_requests_total";
/// Schedule ticks, by `schedule` (a configured name) and `outcome` (fired, skipped_overlap,
/// missed, failed).
pub const SCHEDULE_FIRES: &str = "warden_schedule_fires_total";
/// Alerts, by `kind` (dead_letter, breaker_open) and `outcome` (sent, dropped_queue_full,
/// dropped_failed, dropped_down).
pub const ALERTS: &str = "warden_alerts_total";
/// Records waiting in the sink's outbox to be shipped to PostgreSQL.
pub const SINK_BACKLOG: &str = "warden_sink_backlog";
/// Rows the PostgreSQL sink inserted or changed, by `table`.
pub const SINK_ROWS: &str = "warden_sink_rows_total";
/// Failed tries of the PostgreSQL sink, by `kind` (unavailable, rejected, schema, journal).
pub const SINK_ERRORS: &str = "warden_sink_errors_total";
/// Time to write one batch into PostgreSQL (one transaction).
pub const SINK_FLUSH: &str = "warden_sink_flush_seconds";
/// Always 1, labelled with `version`.
pub const BUILD_INFO: &str = "warden_build_info";
/// Seconds since the node started.
pub const UPTIME: &str = "warden_uptime_seconds";

/// Every metric the node exports, in catalogue order: the tests check that each one is
/// described, exported after a workload and the only names the Grafana dashboard uses.
pub const ALL: &[&str] = &[
    JOB_EXECUTIONS,
    JOB_DURATION,
    JOB_RETRIES,
    JOBS_SUBMITTED,
    DEAD_LETTER,
    QUEUE_DEPTH,
    QUEUE_WAIT,
    ACTIVE_WORKERS,
    WORKERS,
    ACTOR_RESTARTS,
    SUPERVISOR_ESCALATIONS,
    CIRCUIT_BREAKER_STATE,
    CIRCUIT_BREAKER_TRANSITIONS,
    RATE_LIMITER_WAIT,
    RATE_LIMITER_PAUSED,
    UPSTREAM_REQUESTS,
    UPSTREAM_DURATION,
    JOURNAL_ENTRIES,
    JOURNAL_FSYNC,
    JOURNAL_BATCH,
    JOURNAL_BYTES,
    JOURNAL_REFUSING_WRITES,
    ADMIN_CONNECTIONS,
    ADMIN_REQUESTS,
    SCHEDULE_FIRES,
    ALERTS,
    SINK_BACKLOG,
    SINK_ROWS,
    SINK_ERRORS,
    SINK_FLUSH,
    BUILD_INFO,
    UPTIME,
];

/// Registers the help text of every metric with the installed recorder (the `# HELP` lines of
/// `/metrics`; a family without one is a `promtool check metrics` complaint).
pub fn describe_all() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        JOB_EXECUTIONS,
        "Job attempts that ended, by job name and status (succeeded, failed, retried, cancelled)."
    );
    describe_histogram!(
        JOB_DURATION,
        Unit::Seconds,
        "Duration of job attempts, by job name."
    );
    describe_counter!(
        JOB_RETRIES,
        "Retries scheduled, by job name and error type (transient, throttled, panic, timeout, crash)."
    );
    describe_counter!(JOBS_SUBMITTED, "Jobs accepted, by job name.");
    describe_counter!(DEAD_LETTER, "Jobs dead-lettered, by job name.");
    describe_gauge!(
        QUEUE_DEPTH,
        "Jobs waiting in a queue, by pipeline and priority."
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time from enqueue to start, by pipeline."
    );
    describe_gauge!(ACTIVE_WORKERS, "Workers running a job, by pipeline.");
    describe_gauge!(WORKERS, "Workers registered, by pipeline.");
    describe_counter!(
        ACTOR_RESTARTS,
        "Actor restarts scheduled by a supervisor, by actor kind and pipeline."
    );
    describe_counter!(
        SUPERVISOR_ESCALATIONS,
        "Supervisors that spent a child's restart budget and failed themselves, by pipeline."
    );
    describe_gauge!(
        CIRCUIT_BREAKER_STATE,
        "Circuit breaker state, by pipeline: 0 closed, 1 half-open, 2 open."
    );
    describe_counter!(
        CIRCUIT_BREAKER_TRANSITIONS,
        "Circuit breaker transitions, by pipeline and target state."
    );
    describe_histogram!(
        RATE_LIMITER_WAIT,
        Unit::Seconds,
        "Time from asking the rate limiter for a permit to getting it, by pipeline."
    );
    describe_gauge!(
        RATE_LIMITER_PAUSED,
        "1 while the source is paused after a throttle signal, by pipeline."
    );
    describe_counter!(
        UPSTREAM_REQUESTS,
        "Upstream requests, by pipeline and outcome (ok, transient, throttled, permanent)."
    );
    describe_histogram!(
        UPSTREAM_DURATION,
        Unit::Seconds,
        "Upstream request durations, by pipeline."
    );
    describe_counter!(JOURNAL_ENTRIES, "Journal entries written.");
    describe_histogram!(
        JOURNAL_FSYNC,
        Unit::Seconds,
        "Duration of one journal group commit (flush + fsync)."
    );
    describe_histogram!(
        JOURNAL_BATCH,
        "Durability waiters answered by one journal group commit."
    );
    describe_gauge!(
        JOURNAL_BYTES,
        Unit::Bytes,
        "Bytes the journal takes on disk."
    );
    describe_gauge!(
        JOURNAL_REFUSING_WRITES,
        "1 while the journal refuses new writes: free space below [node] min_free_space."
    );
    describe_gauge!(ADMIN_CONNECTIONS, "Admin connections open now.");
    describe_counter!(
        ADMIN_REQUESTS,
        "Admin requests, by command and outcome (ok or the error code)."
    );
    describe_counter!(
        SCHEDULE_FIRES,
        "Schedule ticks, by schedule and outcome (fired, skipped_overlap, missed, failed)."
    );
    describe_counter!(
        ALERTS,
        "Alerts, by kind (dead_letter, breaker_open) and outcome \
         (sent, dropped_queue_full, dropped_failed, dropped_down)."
    );
    describe_gauge!(
        SINK_BACKLOG,
        "Records waiting in the sink's outbox to be shipped to PostgreSQL."
    );
    describe_counter!(
        SINK_ROWS,
        "Rows the PostgreSQL sink inserted or changed, by table."
    );
    describe_counter!(
        SINK_ERRORS,
        "Failed tries of the PostgreSQL sink, by kind (unavailable, rejected, schema, journal)."
    );
    describe_histogram!(
        SINK_FLUSH,
        Unit::Seconds,
        "Time to write one batch into PostgreSQL (one transaction)."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version label names the build.");
    describe_gauge!(UPTIME, Unit::Seconds, "Seconds since the node started.");
}

#[cfg(test)]
mod tests {
    use super::ALL;

    /// Ensures that the catalogue names each metric once, in Prometheus style: a `warden_`
    /// prefix and snake case (promtool checks the `_total` suffixes on a live scrape).
    #[test]
    fn names_are_unique_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for name in ALL {
            assert!(seen.insert(name), "{name} is listed twice");
            assert!(name.starts_with("warden_"), "{name}");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
        }
    }
}
