//! The gRPC services. Handlers stay thin: convert the request, run one farm transition
//! through `Shared::apply` (durable before it acts), and answer. Followers answer
//! `Unavailable` with the leader's URL.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use reelfarm_common::pb::sequence_service_server::{SequenceService, SequenceServiceServer};
use reelfarm_common::pb::worker_service_server::{WorkerService, WorkerServiceServer};
use reelfarm_common::{health, keys, limits, pb, spec, trace_context, unix_now_s};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::Error;
use crate::leading::{SchedulerConfig, Shared, lead_until_shutdown, lock};
use crate::uploads;
use reelfarm_core::farm::{Action, FailureClass, StoredObject};
use reelfarm_core::records::{DeviceDoc, WorkerDoc};
use reelfarm_core::{planner, snapshot};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Chunk size of `ReadOutput`.
const OUTPUT_CHUNK_BYTES: usize = 1 << 20;
/// Sequences per ListSequences page unless the caller asks otherwise, and the most it may.
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

fn require_ref(reference: Option<pb::AssignmentRef>) -> Result<pb::AssignmentRef, Error> {
    reference.ok_or_else(|| Error::InvalidArgument("assignment: required".into()))
}

/// Worker ids travel in etcd keys and logs: keep them plain.
fn check_worker_id(id: &str) -> Result<(), Error> {
    let plain = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "worker_id: {id:?} must be 1-128 letters, digits, '-', '_' or '.'"
        )))
    }
}

#[derive(Clone)]
struct Api(Arc<Shared>);

impl Api {
    async fn status(&self, id: &str) -> Result<pb::SequenceStatus, Error> {
        self.0.read(|farm| Ok(snapshot::status(farm, id)?)).await
    }
}

#[tonic::async_trait]
impl SequenceService for Api {
    async fn submit_sequence(
        &self,
        request: Request<pb::SubmitSequenceRequest>,
    ) -> Result<Response<pb::SubmitSequenceResponse>, Status> {
        let incoming = trace_context::from_metadata(request.metadata());
        let request = request.into_inner();
        limits::check_submit(&request).map_err(Error::from)?;
        let key = Some(request.idempotency_key).filter(|key| !key.is_empty());
        if let Some(key) = &key {
            let existing = self
                .0
                .read(|farm| Ok(farm.sequence_for_key(key).cloned()))
                .await?;
            if let Some(existing) = existing {
                let status = self.status(&existing).await?;
                return Ok(Response::new(pb::SubmitSequenceResponse {
                    sequence_id: existing,
                    created: false,
                    status: Some(status),
                }));
            }
        }
        let mut spec = request
            .spec
            .ok_or_else(|| Error::InvalidArgument("spec: required".into()))?;
        let uploads = uploads::resolve(&self.0.store, &mut spec).await?;
        let sequence = spec::sequence_from_pb(spec, &self.0.catalog.ids()).map_err(Error::from)?;
        let model = self
            .0
            .catalog
            .require(&sequence.model)
            .map_err(|unknown| Error::InvalidArgument(format!("model: {unknown}")))?;
        // Refuse early on a follower, before uploading reference images.
        self.0.leadership().await?;
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
        let planning = unix_now_s();
        let plan = planner::plan(&sequence, model);
        let segments = plan.segments.len();
        let span = trace_context::start_span(
            "sequence",
            &incoming,
            Some(planning),
            vec![
                KeyValue::new("reelfarm.sequence_id", id.clone()),
                KeyValue::new("reelfarm.shots", sequence.shots.len() as i64),
                KeyValue::new("reelfarm.segments", segments as i64),
            ],
        );
        let traceparent = trace_context::traceparent_of(&span);
        trace_context::record_span("plan", &traceparent, planning, unix_now_s(), Vec::new());
        let (sequence_id, created) = self
            .0
            .apply(|farm| {
                let (sequence_id, created) = farm.submit(id, key, sequence, plan, unix_now_s());
                if created {
                    farm.set_traceparent(&sequence_id, traceparent.clone());
                }
                Ok(((sequence_id, created), Vec::new()))
            })
            .await?;
        if created {
            // Stored under the sequence now: the uploads served their one submission.
            for key in uploads {
                if let Err(error) = self.0.store.delete(&key).await {
                    warn!(%key, %error, "an upload could not be deleted");
                }
            }
            lock(&self.0.sequence_spans).insert(sequence_id.clone(), span);
            info!(
                sequence = %sequence_id,
                segments,
                trace_id = trace_context::trace_id(&traceparent),
                "sequence accepted"
            );
        }
        let status = self.status(&sequence_id).await?;
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
        let id = request.into_inner().sequence_id;
        limits::check_id("sequence_id", &id).map_err(Error::from)?;
        Ok(Response::new(self.status(&id).await?))
    }

    type WatchSequenceStream = BoxStream<pb::SequenceStatus>;

    async fn watch_sequence(
        &self,
        request: Request<pb::WatchSequenceRequest>,
    ) -> Result<Response<Self::WatchSequenceStream>, Status> {
        let id = request.into_inner().sequence_id;
        limits::check_id("sequence_id", &id).map_err(Error::from)?;
        let permit = self.0.watchers.clone().try_acquire_owned().map_err(|_| {
            Error::ResourceExhausted(format!(
                "{} watches are open on this scheduler, the most it serves; poll GetSequence instead, or retry later",
                limits::MAX_WATCHERS
            ))
        })?;
        let mut changes = self.0.changes.subscribe();
        let mut epoch = self.0.epoch.subscribe();
        let first = self.status(&id).await?;
        let (sender, receiver) = mpsc::channel(16);
        let api = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
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
                        _ = epoch.changed() => {
                            let _ = sender
                                .send(Err(Status::unavailable(
                                    "this scheduler stepped down or is stopping; watch again at the leader",
                                )))
                                .await;
                            return;
                        }
                    }
                }
                match api.status(&id).await {
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
        limits::check_id("sequence_id", &id).map_err(Error::from)?;
        self.0
            .apply(|farm| Ok(((), farm.cancel(&id, unix_now_s())?)))
            .await?;
        info!(sequence = %id, "sequence cancelled");
        Ok(Response::new(self.status(&id).await?))
    }

    async fn delete_sequence(
        &self,
        request: Request<pb::DeleteSequenceRequest>,
    ) -> Result<Response<pb::DeleteSequenceResponse>, Status> {
        let id = request.into_inner().sequence_id;
        limits::check_id("sequence_id", &id).map_err(Error::from)?;
        let objects = self
            .0
            .apply(|farm| {
                let actions = farm.delete_sequence(&id)?;
                let objects = actions
                    .iter()
                    .map(|action| match action {
                        Action::DeleteObjects { keys } => keys.len(),
                        _ => 0,
                    })
                    .sum::<usize>();
                Ok((objects, actions))
            })
            .await?;
        info!(sequence = %id, objects, "sequence deleted");
        Ok(Response::new(pb::DeleteSequenceResponse {
            objects: objects as u32,
        }))
    }

    async fn list_sequences(
        &self,
        request: Request<pb::ListSequencesRequest>,
    ) -> Result<Response<pb::ListSequencesResponse>, Status> {
        let request = request.into_inner();
        limits::check_id("page_token", &request.page_token).map_err(Error::from)?;
        let limit = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size => (size as usize).min(MAX_PAGE_SIZE),
        };
        let (sequences, more, throughput) = self
            .0
            .read(|farm| {
                let (sequences, more) = snapshot::statuses_page(farm, &request.page_token, limit);
                Ok((
                    sequences,
                    more,
                    snapshot::throughput(farm.sequences(), unix_now_s(), 3600.0),
                ))
            })
            .await?;
        let next_page_token = match sequences.last() {
            Some(last) if more => last.sequence_id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListSequencesResponse {
            sequences,
            next_page_token,
            throughput: Some(throughput),
        }))
    }

    async fn drain_worker(
        &self,
        request: Request<pb::DrainWorkerRequest>,
    ) -> Result<Response<pb::DrainWorkerResponse>, Status> {
        let worker = request.into_inner().worker;
        limits::check_id("worker", &worker).map_err(Error::from)?;
        if worker.trim().is_empty() {
            return Err(Error::InvalidArgument("worker: required (a name or an id)".into()).into());
        }
        let workers = self
            .0
            .apply(|farm| {
                let ids = farm.drain_worker(&worker)?;
                let statuses = ids
                    .iter()
                    .filter_map(|id| farm.worker(id))
                    .map(snapshot::worker_status)
                    .collect::<Vec<_>>();
                Ok((statuses, Vec::new()))
            })
            .await?;
        for status in &workers {
            info!(worker = %status.worker_id, "draining: no new work");
        }
        Ok(Response::new(pb::DrainWorkerResponse { workers }))
    }

    async fn list_workers(
        &self,
        _request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let workers = self
            .0
            .read(|farm| Ok(farm.workers().map(snapshot::worker_status).collect()))
            .await?;
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }

    type ReadOutputStream = BoxStream<pb::OutputChunk>;

    async fn read_output(
        &self,
        request: Request<pb::ReadOutputRequest>,
    ) -> Result<Response<Self::ReadOutputStream>, Status> {
        let request = request.into_inner();
        limits::check_id("sequence_id", &request.sequence_id).map_err(Error::from)?;
        let status = self.status(&request.sequence_id).await?;
        if !matches!(
            pb::SequenceState::try_from(status.state),
            Ok(pb::SequenceState::Succeeded)
        ) {
            return Err(Error::FailedPrecondition(format!(
                "sequence {} has no output yet: it is {}",
                request.sequence_id,
                pb::SequenceState::try_from(status.state)
                    .map(|state| state
                        .as_str_name()
                        .trim_start_matches("SEQUENCE_STATE_")
                        .to_lowercase())
                    .unwrap_or_default()
            ))
            .into());
        }
        let key = match pb::OutputKind::try_from(request.kind) {
            Ok(pb::OutputKind::Report) => status.report_key,
            Ok(pb::OutputKind::Timeline) => keys::final_timeline(&request.sequence_id),
            Ok(pb::OutputKind::ContactSheet) => keys::final_contact_sheet(&request.sequence_id),
            Ok(pb::OutputKind::Video | pb::OutputKind::Unspecified) => status.video_key,
            Err(_) => {
                return Err(Error::InvalidArgument(format!(
                    "kind: unknown output kind {}",
                    request.kind
                ))
                .into());
            }
        };
        let crc32c = self
            .0
            .read(|farm| {
                Ok(snapshot::recorded_crc32c(
                    farm.sequence(&request.sequence_id)?,
                    &key,
                ))
            })
            .await?;
        // The first piece now, so a missing object or a bad offset is this call's error.
        let (first, total_bytes) = self
            .0
            .store
            .read_range(&key, request.offset, OUTPUT_CHUNK_BYTES as u64)
            .await
            .map_err(Error::from)?;
        if request.offset > total_bytes {
            return Err(Error::InvalidArgument(format!(
                "offset: {} is past the end of the {total_bytes}-byte output",
                request.offset
            ))
            .into());
        }
        if request.offset > 0 {
            info!(sequence = %request.sequence_id, offset = request.offset, total_bytes, "output read resumes at byte {}", request.offset);
        }
        // Streamed from the store a piece at a time: at most two pieces wait per download,
        // whatever the video's size.
        let (sender, receiver) = mpsc::channel(2);
        let store = self.0.store.clone();
        tokio::spawn(async move {
            let mut offset = request.offset;
            let mut piece = first;
            loop {
                let length = piece.len() as u64;
                if length == 0 {
                    return;
                }
                let chunk = pb::OutputChunk {
                    data: piece.to_vec(),
                    total_bytes,
                    offset,
                    crc32c: crc32c.clone(),
                };
                if sender.send(Ok(chunk)).await.is_err() {
                    return;
                }
                offset += length;
                piece = match store
                    .read_range(&key, offset, OUTPUT_CHUNK_BYTES as u64)
                    .await
                {
                    Ok((piece, _)) => piece,
                    Err(error) => {
                        let _ = sender.send(Err(Status::from(Error::from(error)))).await;
                        return;
                    }
                };
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn upload_reference(
        &self,
        request: Request<tonic::Streaming<pb::ReferenceChunk>>,
    ) -> Result<Response<pb::UploadReferenceResponse>, Status> {
        // Refuse on a follower before reading the image.
        self.0.leadership().await?;
        let uploaded = uploads::receive(&self.0.store, request.into_inner()).await?;
        info!(upload = %uploaded.upload_id, bytes = uploaded.size, "reference image uploaded");
        Ok(Response::new(uploaded))
    }

    async fn get_leader(
        &self,
        _request: Request<pb::GetLeaderRequest>,
    ) -> Result<Response<pb::GetLeaderResponse>, Status> {
        let leader = self.0.lead.lock().await.is_some();
        let leader_url = if leader {
            self.0.url.clone()
        } else {
            self.0.state.leader_url().await?.unwrap_or_default()
        };
        Ok(Response::new(pb::GetLeaderResponse {
            leader,
            leader_url,
            self_url: self.0.url.clone(),
        }))
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
        limits::check_register(&request).map_err(Error::from)?;
        if request.name.trim().is_empty() {
            return Err(Error::InvalidArgument("name: required".into()).into());
        }
        if request.devices.is_empty() {
            return Err(Error::InvalidArgument(
                "devices: a worker needs at least one device".into(),
            )
            .into());
        }
        for (index, device) in request.devices.iter().enumerate() {
            if device.memory_total_bytes == 0 {
                return Err(Error::InvalidArgument(format!(
                    "devices[{index}].memory_total_bytes: must be positive"
                ))
                .into());
            }
        }
        let worker_id = if request.worker_id.is_empty() {
            format!(
                "{}-{}",
                request.name,
                &uuid::Uuid::new_v4().simple().to_string()[..6]
            )
        } else {
            request.worker_id.clone()
        };
        check_worker_id(&worker_id)?;
        self.0.leadership().await?;
        info!(worker = %worker_id, devices = request.devices.len(), running = request.running.len(), "worker registered");
        {
            let mut pending = lock(&self.0.pending_workers);
            if pending.len() >= limits::MAX_PENDING_REGISTRATIONS
                && !pending.contains_key(&worker_id)
            {
                return Err(Error::ResourceExhausted(format!(
                    "{} registrations are waiting for their command streams; open ReceiveCommands after Register, or retry later",
                    limits::MAX_PENDING_REGISTRATIONS
                ))
                .into());
            }
            pending.insert(worker_id.clone(), request);
        }
        Ok(Response::new(pb::RegisterWorkerResponse { worker_id }))
    }

    type ReceiveCommandsStream = BoxStream<pb::WorkerCommand>;

    async fn receive_commands(
        &self,
        request: Request<pb::ReceiveCommandsRequest>,
    ) -> Result<Response<Self::ReceiveCommandsStream>, Status> {
        let worker_id = request.into_inner().worker_id;
        limits::check_id("worker_id", &worker_id).map_err(Error::from)?;
        let registration = lock(&self.0.pending_workers)
            .remove(&worker_id)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "worker {worker_id} is not registered (or already streaming); register first"
                ))
            })?;
        let leadership = self.0.leadership().await?;
        let record = WorkerDoc {
            name: registration.name.clone(),
            models: registration.models.clone(),
            devices: registration.devices.iter().map(DeviceDoc::from).collect(),
        };
        self.0
            .state
            .worker_online(
                &leadership,
                &worker_id,
                serde_json::to_vec(&record).map_err(|error| Error::Internal(error.to_string()))?,
                true,
            )
            .await?;
        let (sender, receiver) = mpsc::unbounded_channel();
        lock(&self.0.worker_streams).insert(worker_id.clone(), sender.clone());
        let id = worker_id.clone();
        self.0
            .apply(move |farm| {
                Ok((
                    (),
                    farm.register_worker(
                        id,
                        registration.name,
                        registration.devices,
                        registration.models,
                        &registration.running,
                        unix_now_s(),
                    ),
                ))
            })
            .await?;
        let shared = self.0.clone();
        tokio::spawn(async move {
            sender.closed().await;
            let still_ours = {
                let mut streams = lock(&shared.worker_streams);
                let ours = streams
                    .get(&worker_id)
                    .is_some_and(|current| current.same_channel(&sender));
                if ours {
                    streams.remove(&worker_id);
                }
                ours
            };
            if !still_ours {
                return;
            }
            info!(worker = %worker_id, "worker stream closed; its work waits for it to reconnect");
            let _ = shared
                .apply(|farm| {
                    farm.worker_disconnected(&worker_id);
                    Ok(((), Vec::new()))
                })
                .await;
            shared.state.worker_offline(&worker_id).await;
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
        limits::check_progress(&request).map_err(Error::from)?;
        let reference = require_ref(request.assignment)?;
        let stop = self
            .0
            .apply(|farm| {
                Ok((
                    farm.report_progress(&reference, request.done, request.total, unix_now_s())?,
                    Vec::new(),
                ))
            })
            .await;
        if let Err(Error::FailedPrecondition(message)) = &stop {
            warn!(assignment = %reference.assignment_id, attempt = reference.attempt, %message, "progress from a fenced-off assignment");
        }
        Ok(Response::new(pb::ReportProgressResponse { stop: stop? }))
    }

    async fn complete_task(
        &self,
        request: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::CompleteTaskResponse>, Status> {
        let request = request.into_inner();
        limits::check_complete(&request).map_err(Error::from)?;
        let reference = require_ref(request.assignment)?;
        let objects: Vec<StoredObject> = request.objects.into_iter().map(Into::into).collect();
        let result = self
            .0
            .apply(|farm| {
                // The scheduler derives every key: a result elsewhere is refused.
                if let Some(expected) = farm.expected_output_key(&reference)
                    && expected != request.output_key
                {
                    return Err(Error::InvalidArgument(format!(
                        "output_key: {:?} is not this assignment's ({expected})",
                        request.output_key
                    )));
                }
                Ok((
                    (),
                    farm.complete(
                        &reference,
                        objects,
                        request.phases,
                        request.peak_memory_bytes,
                        unix_now_s(),
                    )?,
                ))
            })
            .await;
        match &result {
            Err(Error::FailedPrecondition(message)) => {
                warn!(assignment = %reference.assignment_id, attempt = reference.attempt, %message, "completion refused: not the current assignment")
            }
            Err(error) => {
                warn!(assignment = %reference.assignment_id, %error, "completion not recorded")
            }
            Ok(()) => info!(assignment = %reference.assignment_id, "task done"),
        }
        result?;
        Ok(Response::new(pb::CompleteTaskResponse {}))
    }

    async fn fail_task(
        &self,
        request: Request<pb::FailTaskRequest>,
    ) -> Result<Response<pb::FailTaskResponse>, Status> {
        let request = request.into_inner();
        limits::check_fail(&request).map_err(Error::from)?;
        let reference = require_ref(request.assignment)?;
        let class = FailureClass::from_pb(request.reason);
        warn!(assignment = %reference.assignment_id, reason = class.describe(), message = %request.message, "task failed");
        let result = self
            .0
            .apply(|farm| {
                let actions = if class == FailureClass::CorruptInput {
                    farm.input_corrupt(
                        &reference,
                        &request.corrupt_keys,
                        &request.message,
                        unix_now_s(),
                    )?
                } else {
                    farm.fail(&reference, class, &request.message, unix_now_s())?
                };
                Ok(((), actions))
            })
            .await;
        if let Err(Error::FailedPrecondition(message)) = &result {
            warn!(assignment = %reference.assignment_id, attempt = reference.attempt, %message, "failure report refused: not the current assignment");
        }
        result?;
        Ok(Response::new(pb::FailTaskResponse {}))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let request = request.into_inner();
        limits::check_heartbeat(&request).map_err(Error::from)?;
        let known = self
            .0
            .apply(|farm| {
                Ok((
                    farm.heartbeat(&request.worker_id, &request.devices),
                    Vec::new(),
                ))
            })
            .await?;
        if !known {
            return Err(Error::NotFound(format!(
                "worker_id: {} is not registered here; register again",
                request.worker_id
            ))
            .into());
        }
        Ok(Response::new(pb::HeartbeatResponse {}))
    }
}

/// Serves both APIs on `listener` until `shutdown` resolves, leading whenever the state
/// store's election says so.
pub async fn run(
    config: SchedulerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let address = listener
        .local_addr()
        .map_err(|error| Error::Unavailable(error.to_string()))?;
    let url = config
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("http://{address}"));
    let shared = Shared::new(config, url.clone());
    info!(%address, %url, store = %shared.store.describe(), state = %shared.state.describe(), "scheduler listening");
    let (stop, stopping) = watch::channel(false);
    let leader_loop = tokio::spawn(lead_until_shutdown(shared.clone(), stopping));
    let api = Api(shared.clone());
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let close_streams = {
        let shared = shared.clone();
        async move {
            shutdown.await;
            // Open streams would hold graceful shutdown forever: end them first.
            let _ = stop.send(true);
            shared.end_streams();
        }
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    let health_loop = tokio::spawn(report_health(shared.clone(), health));
    let served = tonic::transport::Server::builder()
        // Finds workers whose connection died silently (a pulled cable, a frozen node).
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // A handler that panics answers INTERNAL instead of dropping the connection.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                Status::internal("the scheduler hit a bug handling this request (see its log)")
                    .into_http::<tonic::body::Body>()
            },
        ))
        .add_service(health_service)
        .add_service(
            SequenceServiceServer::new(api.clone())
                .max_decoding_message_size(limits::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(limits::MAX_MESSAGE_BYTES),
        )
        .add_service(
            WorkerServiceServer::new(api)
                .max_decoding_message_size(limits::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(limits::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, close_streams)
        .await
        .map_err(|error| Error::Unavailable(format!("scheduler server on {address}: {error}")));
    let _ = leader_loop.await;
    health_loop.abort();
    if let Err(error) = &served {
        warn!(%error, "scheduler server stopped");
    }
    served
}

/// gRPC health (`grpc.health.v1`): SERVING while the state store and the object store answer,
/// leader or not (followers redirect clients to the leader, so they are ready too).
async fn report_health(
    shared: std::sync::Arc<Shared>,
    reporter: tonic_health::server::HealthReporter,
) {
    let services = [
        "",
        "reelfarm.v1.SequenceService",
        "reelfarm.v1.WorkerService",
    ];
    health::report_forever(reporter, &services, || {
        let shared = shared.clone();
        async move {
            match health::probe("state store", shared.state.leader_url()).await {
                Some(problem) => Some(problem),
                None => health::probe("object store", shared.store.exists("healthz")).await,
            }
        }
    })
    .await;
}
