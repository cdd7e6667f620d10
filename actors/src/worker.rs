//! An ingestion worker. Supervised by its pipeline supervisor; pulls work by telling the
//! dispatcher it is ready (at start, and with every finished job), runs one job at a time in a
//! task of its own so that it stays responsive to `Cancel`, and reports the classified outcome.
//!
//! A panic in a job is caught in that task and turned into a failure of the worker actor
//! itself, so the supervisor sees a real crash and restarts the worker with backoff, and the
//! dispatcher (told by the supervisor through [`WorkerSpec::on_down`]) puts the job back.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SpawnErr};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, Instrument};

use crate::dispatcher::{DispatcherLink, DispatcherMsg};
use crate::job::JobId;
use crate::supervisor::ChildSpec;
use crate::tasks::{CancelSignal, TaskCtx, TaskError, TaskResult, TaskSet};

/// One job handed to a worker.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// The job.
    pub job_id: JobId,
    /// `<pipeline>.<task>`.
    pub name: String,
    /// The params as JSON text.
    pub params: String,
    /// The attempt this is, from 1.
    pub attempt: u32,
}

/// Messages a worker accepts.
pub enum WorkerMsg {
    /// Run this job.
    Run(Ticket),
    /// The job's task ended: its result, or the panic message.
    Finished {
        /// The job.
        job_id: JobId,
        /// The task's outcome, or `Err(panic message)`.
        outcome: Result<TaskResult, String>,
        /// How long the attempt took.
        elapsed: Duration,
    },
    /// Stop the job now running, if it is this one: its task is aborted after `grace`.
    Cancel {
        /// The job.
        job_id: JobId,
        /// Time left to the job before it is aborted.
        grace: Duration,
    },
}

/// What a worker starts with.
pub struct WorkerArgs {
    /// Index of its pipeline in the dispatcher.
    pub pipeline: usize,
    /// Its path, for logs.
    pub path: String,
    /// Where to report.
    pub dispatcher: DispatcherLink,
    /// The tasks it can run.
    pub tasks: TaskSet,
}

/// The worker actor.
pub struct Worker;

/// A worker's state: the job it runs now, if any.
pub struct WorkerState {
    args: WorkerArgs,
    current: Option<(JobId, AbortOnDrop)>,
    /// Raises the running job's cancel signal.
    cancel: Option<tokio::sync::watch::Sender<bool>>,
}

/// Aborts the job's task when dropped, so a killed worker never leaves its job running.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerState, ActorProcessingErr> {
        Ok(WorkerState {
            args,
            current: None,
            cancel: None,
        })
    }

    async fn post_start(
        &self,
        me: ActorRef<WorkerMsg>,
        st: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        st.args.dispatcher.cast(DispatcherMsg::WorkerReady {
            pipeline: st.args.pipeline,
            worker: me,
        });
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        st: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Run(ticket) => st.run(me, ticket),
            WorkerMsg::Finished {
                job_id,
                outcome,
                elapsed,
            } => {
                if st.current.as_ref().map(|(id, _)| *id) != Some(job_id) {
                    return Ok(()); // a cancelled job's late result
                }
                st.current = None;
                match outcome {
                    Ok(outcome) => {
                        let done = DispatcherMsg::JobDone {
                            pipeline: st.args.pipeline,
                            worker: me,
                            job_id,
                            outcome,
                            elapsed,
                        };
                        st.args.dispatcher.cast(done);
                    }
                    Err(panic) => return Err(format!("job {job_id} panicked: {panic}").into()),
                }
            }
            WorkerMsg::Cancel { job_id, grace } => {
                if st.current.as_ref().map(|(id, _)| *id) == Some(job_id) {
                    // Cooperative first: the job sees its cancel signal and may end on its own
                    // within `grace`; then this synthetic result frees the worker, and dropping
                    // the task's guard aborts whatever is left of it.
                    if let Some(c) = &st.cancel {
                        let _ = c.send(true);
                    }
                    me.send_after(grace, move || WorkerMsg::Finished {
                        job_id,
                        outcome: Ok(Err(TaskError::Permanent("cancelled".into()))),
                        elapsed: grace,
                    });
                }
            }
        }
        Ok(())
    }
}

impl WorkerState {
    fn run(&mut self, me: ActorRef<WorkerMsg>, t: Ticket) {
        let params = serde_json::from_str(&t.params).unwrap_or(serde_json::Value::Null);
        let (cancel_tx, cancel) = CancelSignal::new();
        self.cancel = Some(cancel_tx);
        let ctx = TaskCtx {
            job_id: t.job_id,
            name: t.name.clone(),
            params,
            attempt: t.attempt,
            cancel,
        };
        let body = self.args.tasks.get(&t.name).cloned();
        let span =
            tracing::info_span!("job", job_id = %t.job_id, job_name = %t.name, attempt = t.attempt);
        debug!(parent: &span, worker = %self.args.path, "attempt started");
        let job_id = t.job_id;
        let (dispatcher, pipeline) = (self.args.dispatcher.clone(), self.args.pipeline);
        let task = tokio::spawn(
            async move {
                let started = Instant::now();
                let outcome = match body {
                    Some(body) => AssertUnwindSafe(body(ctx))
                        .catch_unwind()
                        .await
                        .map_err(panic_text),
                    None => Ok(Err(TaskError::Permanent(format!(
                        "no task named {} in this pipeline",
                        t.name
                    )))),
                };
                let elapsed = started.elapsed();
                match outcome {
                    // The common case skips a hop through the worker's mailbox: the dispatcher
                    // sends this worker its next job only after this report, and the worker
                    // learns it is free from that `Run`.
                    Ok(outcome) => dispatcher.cast(DispatcherMsg::JobDone {
                        pipeline,
                        worker: me,
                        job_id,
                        outcome,
                        elapsed,
                    }),
                    // A panic must fail the worker actor itself, so it goes through its mailbox.
                    Err(panic) => {
                        let _ = me.cast(WorkerMsg::Finished {
                            job_id,
                            outcome: Err(panic),
                            elapsed,
                        });
                    }
                }
            }
            .instrument(span),
        );
        self.current = Some((job_id, AbortOnDrop(task.abort_handle())));
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic with a non-text payload".into())
}

/// The recipe for `worker-N` of a pipeline. Tells the dispatcher when an incarnation is gone so
/// that the job it was running goes back to its queue at once.
pub struct WorkerSpec {
    /// `worker-N`.
    pub name: String,
    /// Index of the pipeline in the dispatcher.
    pub pipeline: usize,
    /// Where workers report.
    pub dispatcher: DispatcherLink,
    /// The pipeline's tasks.
    pub tasks: TaskSet,
    current: Mutex<Option<ActorId>>,
}

impl WorkerSpec {
    /// A recipe for worker `n` (1-based) of pipeline `pipeline`.
    pub fn new(n: usize, pipeline: usize, dispatcher: DispatcherLink, tasks: TaskSet) -> Arc<Self> {
        Arc::new(Self {
            name: format!("worker-{n}"),
            pipeline,
            dispatcher,
            tasks,
            current: Mutex::new(None),
        })
    }
}

impl ChildSpec for WorkerSpec {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn kind(&self) -> &'static str {
        "worker"
    }
    fn spawn(
        &self,
        supervisor: ActorCell,
        path: String,
    ) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> {
        let args = WorkerArgs {
            pipeline: self.pipeline,
            path,
            dispatcher: self.dispatcher.clone(),
            tasks: self.tasks.clone(),
        };
        Box::pin(async move {
            let (r, _) = Actor::spawn_linked(None, Worker, args, supervisor).await?;
            Ok(r.get_cell())
        })
    }
    fn on_up(&self, cell: &ActorCell) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(cell.get_id());
    }
    fn on_down(&self, reason: &str) {
        if let Some(worker) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            self.dispatcher.cast(DispatcherMsg::WorkerDown {
                pipeline: self.pipeline,
                worker,
                reason: reason.to_string(),
            });
        }
    }
}
