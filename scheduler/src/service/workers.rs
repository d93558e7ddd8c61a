//! The worker API: register, take commands, report progress, results and failures, and
//! heartbeat. Only workers call it, each only for the worker id its identity registered and
//! the work placed on it.

use reelfarm_common::pb::worker_service_server::WorkerService;
use reelfarm_common::{limits, pb, unix_now_s};
use reelfarm_core::auth::Need;
use reelfarm_core::farm::{Completion, FailureClass, StoredObject};
use reelfarm_core::records::{DeviceDoc, WorkerDoc};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::{Api, BoxStream};
use crate::Error;
use crate::leading::lock;

fn require_ref(reference: Option<pb::AssignmentRef>) -> Result<pb::AssignmentRef, Error> {
    reference.ok_or_else(|| Error::InvalidArgument("assignment: required".into()))
}

/// Worker ids travel in etcd keys and logs: keep them plain.
fn check_worker_id(id: &str) -> Result<(), Error> {
    Ok(reelfarm_core::auth::check_plain("worker_id", id, 128)?)
}

#[tonic::async_trait]
impl WorkerService for Api {
    async fn register(
        &self,
        request: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        let caller = self.caller(&request, Need::Worker, "Register").await?;
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
        let certified = caller.as_ref().and_then(|c| c.certified_worker_id());
        let worker_id = if let Some(certified) = certified {
            // A certified worker is the id its certificate names, and no other.
            if !request.worker_id.is_empty() && request.worker_id != certified {
                return Err(Error::PermissionDenied(format!(
                    "worker_id: {:?} is not {certified:?}, the worker this client certificate names",
                    request.worker_id
                ))
                .into());
            }
            certified.to_string()
        } else if request.worker_id.is_empty() {
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
        // A live worker's id stays with the identity that registered it.
        if let Some(principal) = &caller {
            lock(&self.0.worker_identities).bind(&worker_id, &principal.name)?;
        }
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
        let caller = self
            .caller(&request, Need::Worker, "ReceiveCommands")
            .await?;
        let worker_id = request.into_inner().worker_id;
        limits::check_id("worker_id", &worker_id).map_err(Error::from)?;
        self.acts_for(&caller, &worker_id)?;
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
            identity: caller.map(|principal| principal.name),
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
        let caller = self
            .caller(&request, Need::Worker, "ReportProgress")
            .await?;
        let request = request.into_inner();
        limits::check_progress(&request).map_err(Error::from)?;
        let reference = require_ref(request.assignment)?;
        self.reports_on(&caller, &reference).await?;
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
        let caller = self.caller(&request, Need::Worker, "CompleteTask").await?;
        let request = request.into_inner();
        limits::check_complete(&request).map_err(Error::from)?;
        let reference = require_ref(request.assignment)?;
        self.reports_on(&caller, &reference).await?;
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
                    farm.complete_with(
                        &reference,
                        Completion {
                            objects,
                            phases: request.phases,
                            peak_memory_bytes: request.peak_memory_bytes,
                            resumed_from_step: request.resumed_from_step,
                            seams: request.seams,
                            cost_usd: request.cost_usd,
                        },
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
        let caller = self.caller(&request, Need::Worker, "FailTask").await?;
        let request = request.into_inner();
        limits::check_fail(&request).map_err(Error::from)?;
        let reference = require_ref(request.assignment)?;
        self.reports_on(&caller, &reference).await?;
        let class = FailureClass::from_pb(request.reason);
        warn!(assignment = %reference.assignment_id, reason = class.describe(), message = %request.message, "task failed");
        let result = self
            .0
            .apply(|farm| {
                if request.remote_job_unusable {
                    farm.forget_remote_job(&reference)?;
                }
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

    async fn record_remote_job(
        &self,
        request: Request<pb::RecordRemoteJobRequest>,
    ) -> Result<Response<pb::RecordRemoteJobResponse>, Status> {
        let caller = self
            .caller(&request, Need::Worker, "RecordRemoteJob")
            .await?;
        let request = request.into_inner();
        let reference = require_ref(request.assignment)?;
        self.reports_on(&caller, &reference).await?;
        // `apply` commits the record to the state store before this answers: the worker
        // polls only a job a new leader would also know.
        let result = self
            .0
            .apply(|farm| {
                farm.record_remote_job(&reference, &request.remote_job_id)?;
                Ok(((), Vec::new()))
            })
            .await;
        match &result {
            Ok(()) => {
                info!(assignment = %reference.assignment_id, remote_job = %request.remote_job_id, "remote job recorded")
            }
            Err(error) => {
                warn!(assignment = %reference.assignment_id, %error, "remote job not recorded")
            }
        }
        result?;
        Ok(Response::new(pb::RecordRemoteJobResponse {}))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let caller = self.caller(&request, Need::Worker, "Heartbeat").await?;
        let request = request.into_inner();
        limits::check_heartbeat(&request).map_err(Error::from)?;
        self.acts_for(&caller, &request.worker_id)?;
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

impl Api {
    /// Refuses a report on an assignment placed on a worker of another identity.
    async fn reports_on(
        &self,
        caller: &Option<reelfarm_core::auth::Principal>,
        reference: &pb::AssignmentRef,
    ) -> Result<(), Error> {
        if caller.is_none() {
            return Ok(());
        }
        let worker = self
            .0
            .read(|farm| Ok(farm.assignment_worker(&reference.assignment_id)))
            .await?;
        match worker {
            Some(worker) => self.acts_for(caller, &worker),
            // Not current: the farm's fencing refuses it with the usual answer.
            None => Ok(()),
        }
    }
}
