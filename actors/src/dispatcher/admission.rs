//! How a new job enters: the one constructor of its pending record and the one capacity check,
//! shared by a client's submit, a batch job's children and a workflow's steps, so that their
//! defaults and their refusals cannot drift apart.

use uuid::Uuid;

use super::core::DispatcherState;
use super::PipelineInfo;
use crate::job::{JobId, JobRecord, JobStatus, Priority};
use crate::protocol::{ApiError, ErrorCode, SubmitSpec};
use crate::routing::Router;

/// The lane (index into `pipelines`) and route priority of job `name`, or why none serves
/// it; `at` names the field in the answer (`jobs[3].job` in a batch).
pub fn route<L: AsRef<PipelineInfo>>(
    router: &Router,
    pipelines: &[L],
    name: &str,
    at: &str,
) -> Result<(usize, Priority), ApiError> {
    let route = router.route(name);
    let Some(lane) = pipelines
        .iter()
        .position(|p| p.as_ref().name == route.pipeline)
    else {
        return Err(ApiError::new(
            ErrorCode::UnknownJob,
            format!(
                "{at}: {name:?} matches no pipeline task: pipeline {:?} is not configured (configured: {})",
                route.pipeline,
                configured(pipelines)
            ),
        ));
    };
    let info = pipelines[lane].as_ref();
    if !info.tasks.iter().any(|t| t == name) {
        return Err(ApiError::new(
            ErrorCode::UnknownJob,
            format!(
                "{at}: {name:?} matches no task of pipeline {:?}; its tasks are {}",
                info.name,
                info.tasks.join(", ")
            ),
        ));
    }
    Ok((lane, route.priority))
}

/// `not_found` for a pipeline name no lane has, listing the configured ones.
pub fn no_pipeline<L: AsRef<PipelineInfo>>(name: &str, pipelines: &[L]) -> ApiError {
    ApiError::not_found(format!(
        "pipeline: no pipeline named {name:?}; configured: {}",
        configured(pipelines)
    ))
}

/// The configured pipelines' names, for an answer.
fn configured<L: AsRef<PipelineInfo>>(pipelines: &[L]) -> String {
    let names: Vec<&str> = pipelines.iter().map(|p| p.as_ref().name.as_str()).collect();
    names.join(", ")
}

/// [`route`] for every job of a submit, naming the one at fault.
pub fn route_all<L: AsRef<PipelineInfo>>(
    router: &Router,
    pipelines: &[L],
    specs: &[SubmitSpec],
) -> Result<Vec<(usize, Priority)>, ApiError> {
    let batch = specs.len() > 1;
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let at = if batch {
                format!("jobs[{i}].job")
            } else {
                "job".to_string()
            };
            route(router, pipelines, &spec.name, &at)
        })
        .collect()
}

/// What a new job is made of, its pipeline chosen.
pub(super) struct NewJob {
    /// The lane (pipeline) it was routed to.
    pub(super) lane: usize,
    /// What was asked for.
    pub(super) spec: SubmitSpec,
    /// Its priority (what it asked for, or what its route or parent gives).
    pub(super) priority: Priority,
    /// The batch job it is a child of.
    pub(super) parent_id: Option<JobId>,
    /// The workflow it is a step of.
    pub(super) workflow_id: Option<Uuid>,
}

impl DispatcherState {
    /// The pending record of a new job: its retries default to its pipeline's, and a `run_at`
    /// in the past is no delay.
    pub(super) fn pending_record(&self, job: NewJob, now_ms: i64) -> JobRecord {
        let NewJob {
            lane,
            spec,
            priority,
            parent_id,
            workflow_id,
        } = job;
        let info = &self.lanes[lane].info;
        JobRecord {
            id: JobId::new(),
            pipeline: info.name.clone(),
            params: spec.params.to_string(),
            priority,
            status: JobStatus::Pending,
            attempts: 0,
            max_retries: spec.max_retries.unwrap_or(info.retry.max_retries),
            unique_key: spec.unique_key,
            created_at: now_ms,
            started_at: None,
            completed_at: None,
            next_attempt_at: spec.run_at.filter(|t| *t > now_ms),
            error: None,
            result: None,
            parent_id,
            workflow_id,
            children: Vec::new(),
            name: spec.name,
            history: Vec::new(),
        }
    }

    /// Refuses `more` new jobs when the unfinished ones would pass `[jobs] max_queued`.
    pub(super) fn check_capacity(&self, more: usize) -> Result<(), ApiError> {
        if self.live.len() + more <= self.limits.max_queued {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::Overloaded,
            format!(
                "the queue is full: {} unfinished jobs, {more} more asked, [jobs] max_queued = {}; \
                 retry later",
                self.live.len(),
                self.limits.max_queued
            ),
        ))
    }
}
