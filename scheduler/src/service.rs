//! The gRPC services and the executor of farm actions. Handlers stay thin: convert the
//! request, run one farm transition under the lock, then carry out the resulting actions
//! (worker commands) and wake watchers, outside the lock.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use reelfarm_common::blob::BlobStore;
use reelfarm_common::pb::sequence_service_server::{SequenceService, SequenceServiceServer};
use reelfarm_common::pb::worker_service_server::{WorkerService, WorkerServiceServer};
use reelfarm_common::{keys, models, pb, spec, unix_now_s};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::Error;
use crate::farm::{Action, FailureClass, Farm, SequenceId, WorkerId};
use crate::{planner, snapshot};

pub struct SchedulerConfig {
    /// Where reference images go and where workers find segments.
    pub store: Arc<dyn BlobStore>,
    pub max_attempts: u32,
}

impl SchedulerConfig {
    pub fn new(store: Arc<dyn BlobStore>) -> Self {
        SchedulerConfig {
            store,
            max_attempts: crate::farm::DEFAULT_MAX_ATTEMPTS,
        }
    }
}

type CommandSender = mpsc::UnboundedSender<Result<pb::WorkerCommand, Status>>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

struct Shared {
    farm: Mutex<Farm>,
    /// Registered but not yet streaming: a worker gets work only once it can receive it.
    pending_workers: Mutex<HashMap<WorkerId, pb::RegisterWorkerRequest>>,
    worker_streams: Mutex<HashMap<WorkerId, CommandSender>>,
    changes: broadcast::Sender<SequenceId>,
    closing: watch::Sender<bool>,
    store: Arc<dyn BlobStore>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic under the lock already failed that request; the state itself stays usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Runs one transition, then dispatch, then executes the actions and wakes watchers.
    fn apply<T>(
        &self,
        transition: impl FnOnce(&mut Farm) -> Result<(T, Vec<Action>), Error>,
    ) -> Result<T, Error> {
        let (value, actions, changed) = {
            let mut farm = lock(&self.farm);
            let (value, mut actions) = transition(&mut farm)?;
            actions.extend(farm.dispatch());
            (value, actions, farm.take_changed())
        };
        for id in changed {
            let _no_watchers = self.changes.send(id);
        }
        let mut unreachable = Vec::new();
        {
            let streams = lock(&self.worker_streams);
            for action in actions {
                let (worker, command) = match action {
                    Action::Assign { worker, assignment } => {
                        info!(worker = %worker, assignment = %assignment.assignment.as_ref().map(|a| a.assignment_id.as_str()).unwrap_or(""), "assigned");
                        (worker, pb::worker_command::Command::Assign(*assignment))
                    }
                    Action::Cancel { worker, assignment } => {
                        info!(worker = %worker, assignment = %assignment.assignment_id, "cancel sent");
                        (
                            worker,
                            pb::worker_command::Command::Cancel(pb::CancelAssignment {
                                assignment: Some(assignment),
                            }),
                        )
                    }
                };
                let sent = streams.get(&worker).is_some_and(|stream| {
                    stream
                        .send(Ok(pb::WorkerCommand {
                            command: Some(command),
                        }))
                        .is_ok()
                });
                if !sent {
                    unreachable.push(worker);
                }
            }
        }
        for worker in unreachable {
            self.lose_worker(&worker);
        }
        Ok(value)
    }

    fn lose_worker(&self, worker: &str) {
        lock(&self.worker_streams).remove(worker);
        let running = lock(&self.farm).running_assignments(worker);
        if running > 0 {
            warn!(worker = %worker, running, "worker lost; its running tasks go back to the queue");
        } else {
            info!(worker = %worker, "worker disconnected");
        }
        let _ = self.apply(|farm| Ok(((), farm.worker_lost(worker, unix_now_s()))));
    }

    fn status(&self, id: &str) -> Result<pb::SequenceStatus, Error> {
        let farm = lock(&self.farm);
        Ok(snapshot::sequence_status(farm.sequence(id)?))
    }
}

fn require_ref(reference: Option<pb::AssignmentRef>) -> Result<pb::AssignmentRef, Error> {
    reference.ok_or_else(|| Error::InvalidArgument("assignment: required".into()))
}

#[derive(Clone)]
struct Api(Arc<Shared>);

#[tonic::async_trait]
impl SequenceService for Api {
    async fn submit_sequence(
        &self,
        request: Request<pb::SubmitSequenceRequest>,
    ) -> Result<Response<pb::SubmitSequenceResponse>, Status> {
        let request = request.into_inner();
        let key = Some(request.idempotency_key).filter(|key| !key.is_empty());
        if let Some(existing) = key
            .as_ref()
            .and_then(|key| lock(&self.0.farm).sequence_for_key(key).cloned())
        {
            let status = self.0.status(&existing)?;
            return Ok(Response::new(pb::SubmitSequenceResponse {
                sequence_id: existing,
                created: false,
                status: Some(status),
            }));
        }
        let spec = request
            .spec
            .ok_or_else(|| Error::InvalidArgument("spec: required".into()))?;
        let sequence = spec::sequence_from_pb(spec).map_err(Error::from)?;
        let model = models::find_model(&sequence.model).ok_or_else(|| {
            Error::InvalidArgument(format!("model: unknown model {:?}", sequence.model))
        })?;
        let id = format!("seq-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        for (index, shot) in sequence.shots.iter().enumerate() {
            if let Some(reference) = &shot.reference {
                self.0
                    .store
                    .put(
                        &keys::reference_image(&id, index as u32),
                        reference.png.clone().into(),
                    )
                    .await
                    .map_err(Error::from)?;
            }
        }
        let plan = planner::plan(&sequence, model);
        let segments = plan.segments.len();
        let (sequence_id, created) = self.0.apply(|farm| {
            Ok((
                farm.submit(id, key, sequence, plan, unix_now_s()),
                Vec::new(),
            ))
        })?;
        if created {
            info!(sequence = %sequence_id, segments, "sequence accepted");
        }
        let status = self.0.status(&sequence_id)?;
        Ok(Response::new(pb::SubmitSequenceResponse {
            sequence_id,
            created,
            status: Some(status),
        }))
    }

    async fn get_sequence(
        &self,
        request: Request<pb::GetSequenceRequest>,
    ) -> Result<Response<pb::SequenceStatus>, Status> {
        Ok(Response::new(
            self.0.status(&request.into_inner().sequence_id)?,
        ))
    }

    type WatchSequenceStream = BoxStream<pb::SequenceStatus>;

    async fn watch_sequence(
        &self,
        request: Request<pb::WatchSequenceRequest>,
    ) -> Result<Response<Self::WatchSequenceStream>, Status> {
        let id = request.into_inner().sequence_id;
        let mut changes = self.0.changes.subscribe();
        let mut closing = self.0.closing.subscribe();
        let first = self.0.status(&id)?;
        let (sender, receiver) = mpsc::channel(16);
        let shared = self.0.clone();
        tokio::spawn(async move {
            let mut status = first;
            loop {
                let terminal = is_terminal(&status);
                if sender.send(Ok(status)).await.is_err() || terminal {
                    return;
                }
                loop {
                    tokio::select! {
                        change = changes.recv() => match change {
                            Ok(changed) if changed != id => continue,
                            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                            Err(broadcast::error::RecvError::Closed) => return,
                        },
                        _ = closing.changed() => return,
                    }
                }
                match shared.status(&id) {
                    Ok(next) => status = next,
                    Err(error) => {
                        let _ = sender.send(Err(error.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn cancel_sequence(
        &self,
        request: Request<pb::CancelSequenceRequest>,
    ) -> Result<Response<pb::SequenceStatus>, Status> {
        let id = request.into_inner().sequence_id;
        self.0
            .apply(|farm| Ok(((), farm.cancel(&id, unix_now_s())?)))?;
        info!(sequence = %id, "sequence cancelled");
        Ok(Response::new(self.0.status(&id)?))
    }

    async fn list_sequences(
        &self,
        _request: Request<pb::ListSequencesRequest>,
    ) -> Result<Response<pb::ListSequencesResponse>, Status> {
        let farm = lock(&self.0.farm);
        let sequences = farm.sequences().map(snapshot::sequence_status).collect();
        Ok(Response::new(pb::ListSequencesResponse { sequences }))
    }
}

fn is_terminal(status: &pb::SequenceStatus) -> bool {
    matches!(
        pb::SequenceState::try_from(status.state),
        Ok(pb::SequenceState::Succeeded | pb::SequenceState::Failed | pb::SequenceState::Cancelled)
    )
}

#[tonic::async_trait]
impl WorkerService for Api {
    async fn register(
        &self,
        request: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        let request = request.into_inner();
        if request.name.trim().is_empty() {
            return Err(Error::InvalidArgument("name: required".into()).into());
        }
        if request.devices.is_empty() {
            return Err(Error::InvalidArgument(
                "devices: a worker needs at least one device".into(),
            )
            .into());
        }
        let worker_id = format!(
            "{}-{}",
            request.name,
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        info!(worker = %worker_id, devices = request.devices.len(), "worker registered");
        lock(&self.0.pending_workers).insert(worker_id.clone(), request);
        Ok(Response::new(pb::RegisterWorkerResponse { worker_id }))
    }

    type ReceiveCommandsStream = BoxStream<pb::WorkerCommand>;

    async fn receive_commands(
        &self,
        request: Request<pb::ReceiveCommandsRequest>,
    ) -> Result<Response<Self::ReceiveCommandsStream>, Status> {
        let worker_id = request.into_inner().worker_id;
        let registration = lock(&self.0.pending_workers)
            .remove(&worker_id)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "worker {worker_id} is not registered (or already streaming); register first"
                ))
            })?;
        let (sender, receiver) = mpsc::unbounded_channel();
        lock(&self.0.worker_streams).insert(worker_id.clone(), sender.clone());
        let id = worker_id.clone();
        self.0.apply(move |farm| {
            farm.register_worker(
                id,
                registration.name,
                registration.devices,
                registration.models,
            );
            Ok(((), Vec::new()))
        })?;
        let shared = self.0.clone();
        tokio::spawn(async move {
            sender.closed().await;
            let still_ours = lock(&shared.worker_streams)
                .get(&worker_id)
                .is_some_and(|current| current.same_channel(&sender));
            if still_ours
                || lock(&shared.farm)
                    .workers()
                    .any(|worker| worker.id == worker_id)
            {
                shared.lose_worker(&worker_id);
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(
            receiver,
        ))))
    }

    async fn report_progress(
        &self,
        request: Request<pb::ReportProgressRequest>,
    ) -> Result<Response<pb::ReportProgressResponse>, Status> {
        let request = request.into_inner();
        let reference = require_ref(request.assignment)?;
        let stop = self.0.apply(|farm| {
            Ok((
                farm.report_progress(&reference, request.done, request.total)?,
                Vec::new(),
            ))
        })?;
        Ok(Response::new(pb::ReportProgressResponse { stop }))
    }

    async fn complete_task(
        &self,
        request: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::CompleteTaskResponse>, Status> {
        let request = request.into_inner();
        let reference = require_ref(request.assignment)?;
        let result = self.0.apply(|farm| {
            Ok((
                (),
                farm.complete(
                    &reference,
                    request.output_key,
                    request.phases,
                    request.peak_memory_bytes,
                    unix_now_s(),
                )?,
            ))
        });
        if let Err(error) = &result {
            warn!(assignment = %reference.assignment_id, attempt = reference.attempt, %error, "completion refused");
        } else {
            info!(assignment = %reference.assignment_id, "task done");
        }
        result?;
        Ok(Response::new(pb::CompleteTaskResponse {}))
    }

    async fn fail_task(
        &self,
        request: Request<pb::FailTaskRequest>,
    ) -> Result<Response<pb::FailTaskResponse>, Status> {
        let request = request.into_inner();
        let reference = require_ref(request.assignment)?;
        let class = FailureClass::from_pb(request.reason);
        warn!(assignment = %reference.assignment_id, reason = class.describe(), message = %request.message, "task failed");
        self.0.apply(|farm| {
            Ok((
                (),
                farm.fail(&reference, class, &request.message, unix_now_s())?,
            ))
        })?;
        Ok(Response::new(pb::FailTaskResponse {}))
    }
}

/// Serves both APIs on `listener` until `shutdown` resolves.
pub async fn run(
    config: SchedulerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let (changes, _) = broadcast::channel(1024);
    let (closing, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        farm: Mutex::new(Farm::new(config.max_attempts)),
        pending_workers: Mutex::new(HashMap::new()),
        worker_streams: Mutex::new(HashMap::new()),
        changes,
        closing,
        store: config.store,
    });
    let address = listener
        .local_addr()
        .map_err(|error| Error::Unavailable(error.to_string()))?;
    info!(%address, store = %shared.store.describe(), "scheduler listening");
    let api = Api(shared.clone());
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let close_streams = {
        let shared = shared.clone();
        async move {
            shutdown.await;
            // Open streams would hold graceful shutdown forever: end them first.
            let _ = shared.closing.send(true);
            lock(&shared.worker_streams).clear();
        }
    };
    tonic::transport::Server::builder()
        .add_service(SequenceServiceServer::new(api.clone()))
        .add_service(WorkerServiceServer::new(api))
        .serve_with_incoming_shutdown(incoming, close_streams)
        .await
        .map_err(|error| Error::Unavailable(format!("scheduler server on {address}: {error}")))
}
