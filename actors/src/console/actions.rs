//! The console's POST actions: retry and cancel a job, pause and resume a pipeline, run a
//! schedule now. Each checks the CSRF token and read-only mode, runs the admin command it
//! mirrors through [`crate::admin::perform`] (the admin port's own code path), leaves a message
//! for the next page and redirects back (303).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;
use serde_json::Value;
use tracing::info;

use super::session::{self, Flash, Session};
use super::ConsoleCtx;
use crate::job::JobId;
use crate::protocol::{ApiError, Command, JobIdReq, PipelineReq, SubmitReq};

/// What every action form sends.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct ActionForm {
    /// The session's CSRF token.
    pub csrf: String,
    /// The page to go back to.
    pub back: Option<String>,
}

/// Runs `cmd` for `form` as the admin port would; `done` words the success. `what` names the
/// action in the log line every action leaves (an audit trail of the console's buttons).
async fn act(
    ctx: &ConsoleCtx,
    session: &Session,
    form: &ActionForm,
    what: String,
    cmd: Result<Command, ApiError>,
    done: impl FnOnce(&Value) -> String,
) -> Response {
    if let Some(refused) = session::refuse_action(ctx, session, &form.csrf) {
        return refused;
    }
    let outcome = match cmd {
        Err(e) => Err(e),
        Ok(cmd) => crate::admin::perform(cmd, &ctx.admin).await,
    };
    let code = outcome.as_ref().err().map_or("ok", |e| e.code.as_str());
    info!(actor = "root/console", action = %what, outcome = code, "console action");
    let flash = match outcome {
        Ok(answer) => Flash {
            error: false,
            text: done(&answer),
        },
        Err(e) => failed(&e),
    };
    ctx.sessions.flash(&session.id, flash);
    Redirect::to(&session::local_path(form.back.as_deref())).into_response()
}

fn failed(e: &ApiError) -> Flash {
    Flash {
        error: true,
        text: format!("{}: {}", e.code.as_str(), e.message),
    }
}

fn job_id(id: &str) -> Result<JobId, ApiError> {
    id.parse()
        .map_err(|e: String| ApiError::bad_request(format!("job id: {e}")))
}

/// `POST /jobs/{id}/retry`: the `retry` command.
pub(super) async fn retry(
    State(ctx): State<Arc<ConsoleCtx>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let cmd = job_id(&id).map(|job_id| Command::Retry(JobIdReq { job_id }));
    act(&ctx, &session, &form, format!("retry {id}"), cmd, |_| {
        format!("Job {id} is queued again.")
    })
    .await
}

/// `POST /jobs/{id}/cancel`: the `cancel` command.
pub(super) async fn cancel(
    State(ctx): State<Arc<ConsoleCtx>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let cmd = job_id(&id).map(|job_id| Command::Cancel(JobIdReq { job_id }));
    act(&ctx, &session, &form, format!("cancel {id}"), cmd, |_| {
        format!("Job {id} is cancelled.")
    })
    .await
}

/// `POST /pipelines/{name}/pause`: the `pause` command.
pub(super) async fn pause(
    State(ctx): State<Arc<ConsoleCtx>>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let cmd = Ok(Command::Pause(PipelineReq {
        pipeline: name.clone(),
    }));
    act(&ctx, &session, &form, format!("pause {name}"), cmd, |_| {
        format!("Pipeline {name} is paused: its workers take no new jobs.")
    })
    .await
}

/// `POST /pipelines/{name}/resume`: the `resume` command.
pub(super) async fn resume(
    State(ctx): State<Arc<ConsoleCtx>>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let cmd = Ok(Command::Resume(PipelineReq {
        pipeline: name.clone(),
    }));
    act(&ctx, &session, &form, format!("resume {name}"), cmd, |_| {
        format!("Pipeline {name} is running again.")
    })
    .await
}

/// `POST /schedules/{name}/run`: the `submit` a tick of the schedule would make (its job,
/// params and priority), now; the schedule's own ticks are unchanged.
pub(super) async fn run_schedule(
    State(ctx): State<Arc<ConsoleCtx>>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let cmd = ctx
        .schedules
        .iter()
        .find(|s| s.name == name)
        .map(|s| {
            Command::Submit(SubmitReq {
                job: s.job.clone(),
                params: Some(s.params.clone()),
                priority: s.priority,
                ..Default::default()
            })
        })
        .ok_or_else(|| ApiError::not_found(format!("no schedule named {name:?}")));
    act(
        &ctx,
        &session,
        &form,
        format!("run schedule {name}"),
        cmd,
        |a| {
            let id = a["job_id"].as_str().unwrap_or("?");
            format!("Schedule {name} ran now: job {id}.")
        },
    )
    .await
}
