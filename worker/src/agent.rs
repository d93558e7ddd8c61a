//! The worker's connection to the scheduler: register the devices, take commands from the
//! stream, run each assignment, and report progress, results and failures with the
//! assignment's fencing token.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reelfarm_common::blob::BlobStore;
use reelfarm_common::pb;
use reelfarm_common::pb::worker_service_client::WorkerServiceClient;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

use crate::Error;
use crate::model::ModelRuntime;
use crate::segment::run_segment;
use crate::stitch::run_stitch;
use crate::task::{Progress, TaskFailure};

pub struct WorkerConfig {
    pub scheduler_url: String,
    pub name: String,
    pub store: Arc<dyn BlobStore>,
    pub models: Vec<Arc<dyn ModelRuntime>>,
    pub devices: Vec<pb::Device>,
    /// How long to keep trying to reach the scheduler at start.
    pub connect_timeout: Duration,
}

type Running = Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>;

/// Connects, with retries until `timeout`, so workers may start before the scheduler.
pub async fn connect(url: &str, timeout: Duration) -> Result<Channel, Error> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|error| Error::InvalidArgument(format!("scheduler url {url:?}: {error}")))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(50);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(error) if tokio::time::Instant::now() + delay > deadline => {
                return Err(Error::Unavailable(format!(
                    "cannot reach the scheduler at {url} within {timeout:?}: {error}"
                )));
            }
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Serves assignments until `shutdown` resolves or the scheduler closes the stream.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let channel = connect(&config.scheduler_url, config.connect_timeout).await?;
    let mut client = WorkerServiceClient::new(channel);
    let registration = pb::RegisterWorkerRequest {
        name: config.name.clone(),
        devices: config.devices.clone(),
        models: config
            .models
            .iter()
            .map(|model| model.id().to_string())
            .collect(),
    };
    let worker_id = client
        .register(registration)
        .await
        .map_err(|status| Error::Unavailable(format!("register: {}", status.message())))?
        .into_inner()
        .worker_id;
    let mut commands = client
        .receive_commands(pb::ReceiveCommandsRequest {
            worker_id: worker_id.clone(),
        })
        .await
        .map_err(|status| Error::Unavailable(format!("command stream: {}", status.message())))?
        .into_inner();
    info!(worker = %worker_id, scheduler = %config.scheduler_url, "worker ready");
    let running: Running = Arc::default();
    let models: Arc<Vec<Arc<dyn ModelRuntime>>> = Arc::new(config.models);
    tokio::pin!(shutdown);
    loop {
        let message = tokio::select! {
            _ = &mut shutdown => break,
            message = commands.message() => message,
        };
        match message {
            Ok(Some(pb::WorkerCommand {
                command: Some(pb::worker_command::Command::Assign(assignment)),
            })) => {
                let context = Context {
                    client: client.clone(),
                    store: config.store.clone(),
                    models: models.clone(),
                    running: running.clone(),
                };
                tokio::spawn(execute(assignment, context));
            }
            Ok(Some(pb::WorkerCommand {
                command: Some(pb::worker_command::Command::Cancel(cancel)),
            })) => {
                let id = cancel
                    .assignment
                    .map(|reference| reference.assignment_id)
                    .unwrap_or_default();
                if let Some(flag) = running
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(&id)
                {
                    info!(assignment = %id, "cancelling");
                    flag.store(true, Ordering::Relaxed);
                }
            }
            Ok(Some(_)) => warn!("ignoring an empty command"),
            Ok(None) => {
                info!(worker = %worker_id, "scheduler closed the command stream");
                break;
            }
            Err(status) => {
                return Err(Error::Unavailable(format!(
                    "command stream broke: {}",
                    status.message()
                )));
            }
        }
    }
    for flag in running
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .values()
    {
        flag.store(true, Ordering::Relaxed);
    }
    Ok(())
}

struct Context {
    client: WorkerServiceClient<Channel>,
    store: Arc<dyn BlobStore>,
    models: Arc<Vec<Arc<dyn ModelRuntime>>>,
    running: Running,
}

async fn execute(assignment: pb::Assignment, context: Context) {
    let Some(reference) = assignment.assignment.clone() else {
        warn!("assignment without a fencing token ignored");
        return;
    };
    let cancel = Arc::new(AtomicBool::new(false));
    context
        .running
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(reference.assignment_id.clone(), cancel.clone());
    let (sender, receiver) = mpsc::unbounded_channel();
    let reporter = tokio::spawn(forward_progress(
        receiver,
        context.client.clone(),
        reference.clone(),
        cancel.clone(),
    ));
    let progress = Progress::new(sender, cancel);

    let result = match assignment.task {
        Some(pb::assignment::Task::Segment(task)) => {
            match context.models.iter().find(|model| model.id() == task.model) {
                Some(model) => run_segment(task, model.clone(), context.store.clone(), progress)
                    .await
                    .map(|done| (done.video_key, done.phases)),
                None => Err(TaskFailure::invalid(format!(
                    "this worker has no model {:?}",
                    task.model
                ))),
            }
        }
        Some(pb::assignment::Task::Stitch(task)) => {
            run_stitch(task, context.store.clone(), progress)
                .await
                .map(|done| (done.video_key, done.phases))
        }
        None => Err(TaskFailure::invalid("assignment without a task")),
    };
    let _ = reporter.await;
    let mut client = context.client;
    let outcome = match result {
        Ok((output_key, phases)) => client
            .complete_task(pb::CompleteTaskRequest {
                assignment: Some(reference.clone()),
                output_key,
                phases: phases.0,
                peak_memory_bytes: 0,
            })
            .await
            .map(|_| ()),
        Err(failure) => {
            warn!(assignment = %reference.assignment_id, reason = ?failure.reason, message = %failure.message, "task failed");
            client
                .fail_task(pb::FailTaskRequest {
                    assignment: Some(reference.clone()),
                    reason: failure.reason as i32,
                    message: failure.message,
                })
                .await
                .map(|_| ())
        }
    };
    if let Err(status) = outcome {
        // A fenced-off result is dropped by design; anything else the scheduler will see as a lost task.
        warn!(assignment = %reference.assignment_id, code = ?status.code(), message = %status.message(), "result not accepted");
    }
    context
        .running
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&reference.assignment_id);
}

/// Sends the newest progress, dropping stale updates; a `stop` answer cancels the task.
async fn forward_progress(
    mut receiver: mpsc::UnboundedReceiver<(u64, u64)>,
    mut client: WorkerServiceClient<Channel>,
    reference: pb::AssignmentRef,
    cancel: Arc<AtomicBool>,
) {
    while let Some(mut latest) = receiver.recv().await {
        while let Ok(newer) = receiver.try_recv() {
            latest = newer;
        }
        let request = pb::ReportProgressRequest {
            assignment: Some(reference.clone()),
            done: latest.0,
            total: latest.1,
        };
        match client.report_progress(request).await {
            Ok(response) if response.get_ref().stop => cancel.store(true, Ordering::Relaxed),
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                cancel.store(true, Ordering::Relaxed)
            }
            _ => {}
        }
    }
}
