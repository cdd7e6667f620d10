//! The admin protocol's wire types (docs/protocol.md): request parsing with errors that name the
//! field, what was expected and what came; error codes; the job object. The server, the CLI and
//! the tests all use these, so they cannot drift apart.
//!
//! Parsing goes in two steps: the line becomes a JSON object, `id`, `token` and `cmd` are taken
//! out, and the rest is deserialized into the command's struct with `deny_unknown_fields`, through
//! `serde_path_to_error` so that a nested mistake reads `jobs[3].priority: …`.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::job::{rfc3339_ms, JobId, JobRecord, JobStatus, Priority};

/// Most jobs in one `submit_batch`.
pub const MAX_BATCH: usize = 10_000;
/// Most jobs or records one `list`, `dlq` or `records` returns.
pub const MAX_LIMIT: usize = 1000;
/// The deepest nesting a request may have. Answers embed what a request carried (`params` in
/// `status`, `list`, `workflow`) a few levels further down, and JSON parsers commonly stop at
/// 128 levels (serde_json, the CLI's own): a request near that bound would be accepted but its
/// job could no longer be listed by a client.
pub const MAX_DEPTH: usize = 64;

/// The error codes of docs/protocol.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, a missing, mistyped or unknown field, a bad value.
    BadRequest,
    /// `cmd` names no command.
    UnknownCommand,
    /// The job name matches no pipeline task.
    UnknownJob,
    /// Token missing or wrong.
    Unauthorized,
    /// No job, pipeline or schedule by that id or name.
    NotFound,
    /// The command does not apply in the current state.
    Conflict,
    /// The line is over the limit.
    TooLarge,
    /// Too many connections, or the queue is full.
    Overloaded,
    /// The connection sent no complete line for `[admin] idle_timeout`; it is closed.
    IdleTimeout,
    /// The node is draining.
    ShuttingDown,
    /// The journal refuses writes (the data dir's disk is full or failing): nothing was
    /// accepted; the same request may be sent again once the node accepts writes.
    StorageUnavailable,
    /// A bug or a storage failure.
    Internal,
}

impl ErrorCode {
    /// The snake_case name (metrics label, CLI).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::UnknownJob => "unknown_job",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A failed command: a code for programs and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    /// The code.
    pub code: ErrorCode,
    /// What was wrong and how to fix it.
    pub message: String,
}

impl ApiError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    /// `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    /// `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    /// `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    /// `storage_unavailable`: the store could not be read or written now.
    pub fn storage_unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::StorageUnavailable, message)
    }
}

/// Every command name, for the `unknown_command` message.
pub const COMMANDS: &[&str] = &[
    "ping",
    "submit",
    "submit_batch",
    "status",
    "history",
    "list",
    "cancel",
    "retry",
    "dlq",
    "tree",
    "pipelines",
    "pause",
    "resume",
    "stats",
    "records",
    "schedules",
    "shutdown",
    "why",
    "submit_workflow",
    "workflow",
    "sinks",
    "sink_backfill",
    "nodes",
];

/// One job to submit, as it comes on the wire.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubmitReq {
    /// `<pipeline>.<task>`.
    pub job: String,
    /// Params object (default `{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// Priority; default from routing.
    #[serde(
        default,
        deserialize_with = "de_from_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub priority: Option<Priority>,
    /// Dedup key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_key: Option<String>,
    /// Retries allowed; default from the pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Run after this long (humantime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// Run at this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<String>,
}

/// A submit after validation: what the dispatcher needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SubmitSpec {
    /// `<pipeline>.<task>`.
    pub name: String,
    /// Params object.
    pub params: Value,
    /// Priority if given.
    pub priority: Option<Priority>,
    /// Dedup key.
    pub unique_key: Option<String>,
    /// Retries if given.
    pub max_retries: Option<u32>,
    /// Not before this time (Unix ms).
    pub run_at: Option<i64>,
    /// The schedule tick this job is, when the scheduler submits it. Never on the wire (a
    /// client cannot claim a tick): in cluster mode the store records the tick beside the job,
    /// so that a tick fired by several nodes makes one job.
    pub tick: Option<ScheduleTick>,
}

/// One tick of one schedule: which job fires it is decided once per cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScheduleTick {
    /// The schedule's name.
    pub schedule: String,
    /// The tick's time (Unix ms), as the cron gives it, not when it was fired.
    pub tick_ms: i64,
}

impl SubmitReq {
    /// Checks the values serde could not: params is an object, delay and run_at parse.
    pub fn validate(self, now_ms: i64) -> Result<SubmitSpec, String> {
        let params = match self.params {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(v @ Value::Object(_)) => v,
            Some(other) => {
                return Err(format!(
                    "params: expected an object, got {}",
                    kind_of(&other)
                ))
            }
        };
        if self.job.is_empty() {
            return Err("job: expected a job name like builtin.noop, got \"\"".into());
        }
        let run_at = match (self.delay, self.run_at) {
            (Some(_), Some(_)) => return Err("delay, run_at: give one of them, not both".into()),
            (Some(d), None) => Some(delay_until(now_ms, &d)?),
            (None, Some(t)) => match parse_time("run_at", &t)? {
                ms if ms > MAX_TIME_MS => {
                    return Err(format!(
                        "run_at: expected a time before the year 10000 (UTC), got {t:?}"
                    ))
                }
                ms => Some(ms),
            },
            (None, None) => None,
        };
        Ok(SubmitSpec {
            name: self.job,
            params,
            priority: self.priority,
            unique_key: self.unique_key,
            max_retries: self.max_retries,
            run_at,
            tick: None,
        })
    }
}

/// Parses a humantime duration, naming the field on error.
pub fn parse_duration(field: &str, s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|_| format!("{field}: expected a duration like \"30s\" or \"5m\", got {s:?}"))
}

/// The latest time a job can be due: the end of the year 9999, the last one RFC 3339 can write.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// Parses `delay` and adds it to `now_ms`. A delay that would end past [`MAX_TIME_MS`] is an
/// error: converted blindly it would wrap around (running the job at once) or overflow.
fn delay_until(now_ms: i64, s: &str) -> Result<i64, String> {
    let d = parse_duration("delay", s)?;
    i64::try_from(d.as_millis())
        .ok()
        .and_then(|ms| now_ms.checked_add(ms))
        .filter(|t| *t <= MAX_TIME_MS)
        .ok_or_else(|| {
            format!("delay: expected a duration that ends before the year 10000, got {s:?}")
        })
}

/// Parses an RFC 3339 time into Unix ms, naming the field on error.
pub fn parse_time(field: &str, s: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            format!("{field}: expected an RFC 3339 time like \"2026-11-28T10:00:00Z\", got {s:?}")
        })
}

/// Whether the values of `obj` nest deeper than `max` levels below it.
fn depth_beyond(obj: &Map<String, Value>, max: usize) -> bool {
    fn beyond(v: &Value, left: usize) -> bool {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => return false,
        };
        left == 0 || children.into_iter().any(|c| beyond(c, left - 1))
    }
    obj.values().any(|v| beyond(v, max))
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn de_from_str<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr<Err = String>,
{
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s.parse().map(Some).map_err(serde::de::Error::custom),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a string, got {}",
            kind_of(&other)
        ))),
    }
}

/// `submit_batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBatchReq {
    /// The jobs.
    pub jobs: Vec<SubmitReq>,
}

/// A command that names one job.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobIdReq {
    /// The job.
    #[serde(deserialize_with = "de_job_id")]
    pub job_id: JobId,
}

fn de_job_id<'de, D: Deserializer<'de>>(d: D) -> Result<JobId, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => s.parse().map_err(serde::de::Error::custom),
        other => Err(serde::de::Error::custom(format!(
            "expected a UUID string, got {}",
            kind_of(&other)
        ))),
    }
}

/// `submit_workflow`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitWorkflowReq {
    /// `chain` or `group`.
    pub kind: String,
    /// The steps or members, in order.
    pub jobs: Vec<SubmitReq>,
    /// A group's final job.
    #[serde(default)]
    pub then: Option<SubmitReq>,
    /// A group's `then` starts even when members failed.
    #[serde(default)]
    pub allow_failures: bool,
}

/// `workflow`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowIdReq {
    /// The workflow.
    #[serde(deserialize_with = "de_uuid")]
    pub workflow_id: uuid::Uuid,
}

fn de_uuid<'de, D: Deserializer<'de>>(d: D) -> Result<uuid::Uuid, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => uuid::Uuid::parse_str(&s).map_err(|_| {
            serde::de::Error::custom(format!(
                "expected a UUID like 0193b7f0-3c55-7d2e-9a51-2b0c8f1e6a10, got {s:?}"
            ))
        }),
        other => Err(serde::de::Error::custom(format!(
            "expected a UUID string, got {}",
            kind_of(&other)
        ))),
    }
}

/// `list`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListReq {
    /// Only jobs in this status.
    #[serde(default, deserialize_with = "de_from_str")]
    pub status: Option<JobStatus>,
    /// Exact name or glob.
    #[serde(default)]
    pub name: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Only jobs older than this one.
    #[serde(default, deserialize_with = "de_opt_job_id")]
    pub before: Option<JobId>,
}

fn de_opt_job_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<JobId>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s.parse().map(Some).map_err(serde::de::Error::custom),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a UUID string, got {}",
            kind_of(&other)
        ))),
    }
}

/// `dlq`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitReq {
    /// At most this many.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `pause` / `resume`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineReq {
    /// The pipeline's name.
    pub pipeline: String,
}

/// `records`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsReq {
    /// Key prefix.
    #[serde(default)]
    pub prefix: String,
    /// At most this many.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Only keys after this one.
    #[serde(default)]
    pub after: Option<String>,
}

/// `shutdown`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownReq {
    /// Let running jobs finish first (default true).
    #[serde(default = "yes")]
    pub drain: bool,
}

fn yes() -> bool {
    true
}

/// A command with no fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoFields {}

/// A parsed command.
#[derive(Debug)]
pub enum Command {
    /// `ping`.
    Ping,
    /// `submit`.
    Submit(SubmitReq),
    /// `submit_batch`.
    SubmitBatch(SubmitBatchReq),
    /// `status`.
    Status(JobIdReq),
    /// `history`.
    History(JobIdReq),
    /// `list`.
    List(ListReq),
    /// `cancel`.
    Cancel(JobIdReq),
    /// `retry`.
    Retry(JobIdReq),
    /// `dlq`.
    Dlq(LimitReq),
    /// `tree`.
    Tree,
    /// `pipelines`.
    Pipelines,
    /// `pause`.
    Pause(PipelineReq),
    /// `resume`.
    Resume(PipelineReq),
    /// `stats`.
    Stats,
    /// `records`.
    Records(RecordsReq),
    /// `schedules`.
    Schedules,
    /// `shutdown`.
    Shutdown(ShutdownReq),
    /// `why`.
    Why(JobIdReq),
    /// `submit_workflow`.
    SubmitWorkflow(SubmitWorkflowReq),
    /// `workflow`.
    Workflow(WorkflowIdReq),
    /// `sinks`.
    Sinks,
    /// `sink_backfill`.
    SinkBackfill(SinkBackfillReq),
    /// `nodes`.
    Nodes,
}

/// `sink_backfill`: enqueue the records already stored under `prefix` for the sink.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkBackfillReq {
    /// Key prefix; every record when empty.
    #[serde(default)]
    pub prefix: String,
}

impl Command {
    /// Whether the answer shows job, pipeline or record state that the journal holds: such an
    /// answer is sent only once everything it may show is durable, so that a state a client has
    /// seen never goes back after a crash. The submits wait for durability themselves.
    pub fn shows_journaled_state(&self) -> bool {
        !matches!(
            self,
            Command::Ping
                | Command::Tree
                | Command::Nodes
                | Command::Sinks
                | Command::Schedules
                | Command::Shutdown(_)
                | Command::Submit(_)
                | Command::SubmitBatch(_)
                | Command::SubmitWorkflow(_)
        )
    }
}

/// A request line after parsing: the echoed id, the token and the command (or why not).
#[derive(Debug)]
pub struct Request {
    /// Echoed back unchanged.
    pub id: Option<Value>,
    /// The shared secret, if sent.
    pub token: Option<String>,
    /// The command's name as sent (for metrics); `None` when there was none.
    pub cmd_name: Option<String>,
    /// The command, or the error to answer with.
    pub command: Result<Command, ApiError>,
}

fn fields<T: DeserializeOwned>(rest: Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(Value::Object(rest)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            ApiError::bad_request(inner)
        } else {
            ApiError::bad_request(format!("{path}: {inner}"))
        }
    })
}

/// Parses one request line (without its `\n`; a trailing `\r` is allowed).
pub fn parse_request(line: &[u8]) -> Request {
    let mut req = Request {
        id: None,
        token: None,
        cmd_name: None,
        command: Err(ApiError::bad_request("")),
    };
    let text = match std::str::from_utf8(line) {
        Ok(t) => t,
        Err(e) => {
            req.command = Err(ApiError::bad_request(format!(
                "request: expected UTF-8 text, got an invalid byte at offset {}",
                e.valid_up_to()
            )));
            return req;
        }
    };
    let mut obj = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => m,
        Ok(other) => {
            req.command = Err(ApiError::bad_request(format!(
                "request: expected a JSON object like {{\"cmd\": \"ping\"}}, got {}",
                kind_of(&other)
            )));
            return req;
        }
        Err(e) => {
            req.command = Err(ApiError::bad_request(format!(
                "request: not valid JSON ({e})"
            )));
            return req;
        }
    };
    if depth_beyond(&obj, MAX_DEPTH) {
        req.command = Err(ApiError::bad_request(format!(
            "request: nested deeper than {MAX_DEPTH} levels (answers embedding it could not be parsed)"
        )));
        return req;
    }
    req.id = obj.remove("id");
    req.token = match obj.remove("token") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            req.command = Err(ApiError::bad_request(format!(
                "token: expected a string, got {}",
                kind_of(&other)
            )));
            return req;
        }
    };
    let cmd = match obj.remove("cmd") {
        Some(Value::String(s)) => s,
        None => {
            req.command = Err(ApiError::bad_request(
                "cmd: missing; expected a command name like \"ping\"",
            ));
            return req;
        }
        Some(other) => {
            req.command = Err(ApiError::bad_request(format!(
                "cmd: expected a string, got {}",
                kind_of(&other)
            )));
            return req;
        }
    };
    req.command = parse_command(&cmd, obj);
    req.cmd_name = Some(cmd);
    req
}

fn parse_command(cmd: &str, rest: Map<String, Value>) -> Result<Command, ApiError> {
    Ok(match cmd {
        "ping" => fields::<NoFields>(rest).map(|_| Command::Ping)?,
        "submit" => Command::Submit(fields(rest)?),
        "submit_batch" => {
            let b: SubmitBatchReq = fields(rest)?;
            if b.jobs.len() > MAX_BATCH {
                return Err(ApiError::bad_request(format!(
                    "jobs: expected at most {MAX_BATCH} jobs per batch, got {}",
                    b.jobs.len()
                )));
            }
            Command::SubmitBatch(b)
        }
        "status" => Command::Status(fields(rest)?),
        "history" => Command::History(fields(rest)?),
        "list" => Command::List(fields(rest)?),
        "cancel" => Command::Cancel(fields(rest)?),
        "retry" => Command::Retry(fields(rest)?),
        "dlq" => Command::Dlq(fields(rest)?),
        "tree" => fields::<NoFields>(rest).map(|_| Command::Tree)?,
        "nodes" => fields::<NoFields>(rest).map(|_| Command::Nodes)?,
        "pipelines" => fields::<NoFields>(rest).map(|_| Command::Pipelines)?,
        "pause" => Command::Pause(fields(rest)?),
        "resume" => Command::Resume(fields(rest)?),
        "stats" => fields::<NoFields>(rest).map(|_| Command::Stats)?,
        "records" => Command::Records(fields(rest)?),
        "schedules" => fields::<NoFields>(rest).map(|_| Command::Schedules)?,
        "shutdown" => Command::Shutdown(fields(rest)?),
        "sinks" => fields::<NoFields>(rest).map(|_| Command::Sinks)?,
        "sink_backfill" => Command::SinkBackfill(fields(rest)?),
        "why" => Command::Why(fields(rest)?),
        "submit_workflow" => {
            let w: SubmitWorkflowReq = fields(rest)?;
            if w.jobs.is_empty() || w.jobs.len() > MAX_BATCH {
                return Err(ApiError::bad_request(format!(
                    "jobs: expected 1 to {MAX_BATCH} jobs, got {}",
                    w.jobs.len()
                )));
            }
            Command::SubmitWorkflow(w)
        }
        "workflow" => Command::Workflow(fields(rest)?),
        other => {
            return Err(ApiError::new(
                ErrorCode::UnknownCommand,
                format!(
                    "cmd: unknown command {other:?}; expected one of {}",
                    COMMANDS.join(", ")
                ),
            ))
        }
    })
}

/// Checks a `limit`: default when absent, an error naming the field when out of range.
pub fn limit_or(limit: Option<usize>, default: usize) -> Result<usize, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit: expected 1 to {MAX_LIMIT}, got {n}"
        ))),
    }
}

/// The job object of docs/protocol.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// Id.
    pub job_id: String,
    /// `<pipeline>.<task>`.
    pub name: String,
    /// Params object.
    pub params: Value,
    /// Status.
    pub status: JobStatus,
    /// Priority.
    pub priority: Priority,
    /// Attempts started.
    pub attempts: u32,
    /// Retries allowed.
    pub max_retries: u32,
    /// Dedup key.
    pub unique_key: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub started_at: Option<String>,
    /// RFC 3339.
    pub completed_at: Option<String>,
    /// RFC 3339.
    pub next_attempt_at: Option<String>,
    /// Last error.
    pub error: Option<String>,
    /// Result once succeeded.
    pub result: Option<Value>,
    /// Parent job.
    pub parent_id: Option<String>,
    /// Workflow.
    pub workflow_id: Option<String>,
    /// The latest progress its task reported, when the node knows one (kept in memory only:
    /// absent after a restart until the task reports again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<crate::progress::ProgressView>,
}

impl JobView {
    /// The view with the job's progress from `board`, when there is one.
    pub fn with_progress(mut self, board: &crate::progress::ProgressBoard) -> Self {
        if let Ok(id) = self.job_id.parse() {
            self.progress = board.get(id);
        }
        self
    }
}

impl From<&JobRecord> for JobView {
    fn from(r: &JobRecord) -> Self {
        JobView {
            job_id: r.id.to_string(),
            name: r.name.clone(),
            params: serde_json::from_str(&r.params).unwrap_or(Value::Null),
            status: r.status,
            priority: r.priority,
            attempts: r.attempts,
            max_retries: r.max_retries,
            unique_key: r.unique_key.clone(),
            created_at: rfc3339_ms(r.created_at),
            started_at: r.started_at.map(rfc3339_ms),
            completed_at: r.completed_at.map(rfc3339_ms),
            next_attempt_at: r.next_attempt_at.map(rfc3339_ms),
            error: r.error.clone(),
            result: r
                .result
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok()),
            parent_id: r.parent_id.map(|p| p.to_string()),
            workflow_id: r.workflow_id.map(|w| w.to_string()),
            progress: None,
        }
    }
}

/// A success line: `{"id": …, "ok": true, …fields}`.
pub fn ok_line(id: Option<Value>, fields: Value) -> String {
    let mut m = Map::new();
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    m.insert("ok".into(), Value::Bool(true));
    if let Value::Object(f) = fields {
        m.extend(f);
    }
    Value::Object(m).to_string()
}

/// An error line: `{"id": …, "ok": false, "error": {"code": …, "message": …}}`.
pub fn error_line(id: Option<Value>, err: &ApiError) -> String {
    let mut m = Map::new();
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    m.insert("ok".into(), Value::Bool(false));
    m.insert(
        "error".into(),
        serde_json::json!({ "code": err.code, "message": err.message }),
    );
    Value::Object(m).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of(line: &str) -> ApiError {
        parse_request(line.as_bytes()).command.unwrap_err()
    }

    /// Ensures that params nested up to the bound are taken and one level more is refused
    /// naming the bound, so every answer that embeds params stays parseable.
    #[test]
    fn nesting_is_bounded() {
        let nested = |d: usize| {
            format!(
                r#"{{"cmd":"submit","job":"builtin.noop","params":{{"x":{}1{}}}}}"#,
                "[".repeat(d),
                "]".repeat(d)
            )
        };
        assert!(parse_request(nested(MAX_DEPTH - 1).as_bytes())
            .command
            .is_ok());
        let err = err_of(&nested(MAX_DEPTH));
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(
            err.message.contains("nested deeper than 64 levels"),
            "{}",
            err.message
        );
    }

    /// Ensures that a bad priority names the field, the choices and what came.
    #[test]
    fn bad_priority_message() {
        let e = err_of(r#"{"cmd":"submit","job":"builtin.noop","priority":"urgent"}"#);
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert_eq!(
            e.message,
            "priority: expected one of high, normal, low, got \"urgent\""
        );
    }

    /// Ensures that a nested mistake in a batch names its path.
    #[test]
    fn batch_path_in_message() {
        let e = err_of(r#"{"cmd":"submit_batch","jobs":[{"job":"a.b"},{"job":"a.b","prio":"x"}]}"#);
        assert!(
            e.message
                .starts_with("jobs[1].prio: unknown field `prio`, expected one of `job`"),
            "{}",
            e.message
        );
    }

    /// Ensures that unknown fields, arrays, garbage and unknown commands get the right codes.
    #[test]
    fn codes_for_malformed_lines() {
        assert_eq!(
            err_of(r#"{"cmd":"ping","x":1}"#).code,
            ErrorCode::BadRequest
        );
        assert_eq!(err_of("[1,2]").code, ErrorCode::BadRequest);
        assert_eq!(err_of("{nope").code, ErrorCode::BadRequest);
        assert_eq!(err_of(r#"{"cmd":"fly"}"#).code, ErrorCode::UnknownCommand);
        let bad_utf8 = parse_request(&[b'{', 0xff, b'}']).command.unwrap_err();
        assert!(bad_utf8.message.contains("UTF-8"));
        let e = err_of(r#"{"cmd":"status","job_id":"nope"}"#);
        assert!(
            e.message.starts_with("job_id: expected a UUID"),
            "{}",
            e.message
        );
    }

    /// Ensures that a delay past the year 9999 is refused instead of wrapping around or
    /// overflowing, and that a long but representable one is kept.
    #[test]
    fn huge_delay_is_refused() {
        let now = 1_800_000_000_000;
        for d in ["18446744073709551615s", "9223371036854775s", "100000y"] {
            let e = delay_until(now, d).unwrap_err();
            assert!(e.starts_with("delay: expected a duration that ends before the year 10000"));
        }
        assert_eq!(delay_until(now, "1s"), Ok(now + 1000));
        assert!(delay_until(now, "1000y").is_ok_and(|t| t < MAX_TIME_MS));
        let late = SubmitReq {
            job: "builtin.noop".into(),
            run_at: Some("9999-12-31T23:59:59-01:00".into()),
            ..Default::default()
        };
        assert!(late
            .validate(now)
            .unwrap_err()
            .starts_with("run_at: expected a time before"));
    }

    /// Ensures that the id is echoed even when the command is bad, and durations are checked.
    #[test]
    fn id_kept_and_delay_checked() {
        let r =
            parse_request(br#"{"id":[1,"x"],"cmd":"submit","job":"builtin.noop","delay":"soon"}"#);
        assert_eq!(r.id, Some(serde_json::json!([1, "x"])));
        let Command::Submit(s) = r.command.unwrap() else {
            panic!("expected submit")
        };
        let e = s.validate(0).unwrap_err();
        assert_eq!(
            e,
            "delay: expected a duration like \"30s\" or \"5m\", got \"soon\""
        );
    }
}
