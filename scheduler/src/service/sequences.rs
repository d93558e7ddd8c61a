//! The client API: submit, follow, cancel, delete and download sequences, list them and the
//! workers, drain workers, and (for admins) manage tokens. Each call first learns its caller;
//! a submitter sees and touches only its own tenant's sequences.

use opentelemetry::KeyValue;
use reelfarm_common::pb::sequence_service_server::SequenceService;
use reelfarm_common::sequence::Pass;
use reelfarm_common::{keys, limits, pb, spec, trace_context, unix_now_s};
use reelfarm_core::auth::{Need, Role, TokenRecord, token_text};
use reelfarm_core::farm::{Action, Revision};
use reelfarm_core::revise;
use reelfarm_core::{planner, snapshot};
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::{Api, BoxStream};
use crate::leading::lock;
use crate::{Error, uploads};

/// Chunk size of `ReadOutput`.
const OUTPUT_CHUNK_BYTES: usize = 1 << 20;
/// Sequences per ListSequences page unless the caller asks otherwise, and the most it may.
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

fn is_terminal(status: &pb::SequenceStatus) -> bool {
    matches!(
        pb::SequenceState::try_from(status.state),
        Ok(pb::SequenceState::Succeeded | pb::SequenceState::Failed | pb::SequenceState::Cancelled)
    )
}

#[tonic::async_trait]
impl SequenceService for Api {
    async fn submit_sequence(
        &self,
        request: Request<pb::SubmitSequenceRequest>,
    ) -> Result<Response<pb::SubmitSequenceResponse>, Status> {
        let caller = self
            .caller(&request, Need::Client, "SubmitSequence")
            .await?;
        let incoming = trace_context::from_metadata(request.metadata());
        let request = request.into_inner();
        limits::check_submit(&request).map_err(Error::from)?;
        let mut spec = request
            .spec
            .ok_or_else(|| Error::InvalidArgument("spec: required".into()))?;
        // The owner is the caller's tenant, and idempotency keys are per tenant: another
        // tenant's key finds nothing of it.
        let mut key = Some(request.idempotency_key).filter(|key| !key.is_empty());
        if let Some(principal) = &caller {
            let owner = principal
                .owner_for(spec.owner.as_deref())
                .map_err(Error::from)?;
            key = key.map(|key| format!("{owner}/{key}"));
            spec.owner = Some(owner);
        }
        if let Some(earlier) = self.earlier_submission(key.as_deref()).await? {
            return Ok(Response::new(earlier));
        }
        let uploads = uploads::resolve(&self.0.store, &mut spec).await?;
        let sequence = spec::sequence_from_pb(spec, &self.0.catalog.ids()).map_err(Error::from)?;
        let (sequence_id, created) = self
            .accept(
                sequence,
                key,
                request.no_cache,
                &incoming,
                None,
                request.max_cost_usd,
            )
            .await?;
        if created {
            // Stored under the sequence now: the uploads served their one submission.
            for key in uploads {
                if let Err(error) = self.0.store.delete(&key).await {
                    warn!(%key, %error, "an upload could not be deleted");
                }
            }
        }
        let status = self.status(&sequence_id).await?;
        Ok(Response::new(pb::SubmitSequenceResponse {
            sequence_id,
            created,
            status: Some(status),
        }))
    }

    async fn revise_sequence(
        &self,
        request: Request<pb::ReviseSequenceRequest>,
    ) -> Result<Response<pb::SubmitSequenceResponse>, Status> {
        let caller = self
            .caller(&request, Need::Client, "ReviseSequence")
            .await?;
        let incoming = trace_context::from_metadata(request.metadata());
        let request = request.into_inner();
        limits::check_revise(&request).map_err(Error::from)?;
        let id = request.sequence_id.clone();
        self.visible(&caller, &id).await?;
        let mut key = Some(request.idempotency_key.clone()).filter(|key| !key.is_empty());
        if let Some(principal) = &caller {
            let owner = principal.owner_for(None).map_err(Error::from)?;
            key = key.map(|key| format!("{owner}/{key}"));
        }
        if let Some(earlier) = self.earlier_submission(key.as_deref()).await? {
            return Ok(Response::new(earlier));
        }
        let (mut sequence, lineage, version) = self
            .0
            .read(|farm| {
                let record = farm.sequence(&id)?;
                let lineage = record
                    .revision
                    .as_ref()
                    .map_or_else(|| record.id.clone(), |revision| revision.lineage.clone());
                let version = farm.next_version(&lineage);
                Ok((record.sequence.clone(), lineage, version))
            })
            .await?;
        // A restored record keeps only the names of its reference images: read them back.
        for (index, shot) in sequence.shots.iter_mut().enumerate() {
            if let Some(reference) = shot.reference.as_mut().filter(|r| r.png.is_empty()) {
                reference.png = self
                    .0
                    .store
                    .get(&keys::reference_image(&id, index as u32))
                    .await
                    .map_err(Error::from)?
                    .to_vec();
            }
        }
        let seed = match (request.seed, request.new_seed) {
            (Some(_), true) => {
                return Err(Error::InvalidArgument(
                    "seed: give a seed or ask for a new one, not both".into(),
                )
                .into());
            }
            (Some(seed), false) => Some(seed),
            (None, true) => Some(u64::from(uuid::Uuid::new_v4().as_u128() as u32)),
            (None, false) => None,
        };
        let pass = match request.pass.as_str() {
            "" => None,
            "final" => Some(Pass::Final),
            "draft" => Some(Pass::Draft),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "pass: {other:?} is not a pass; use draft or final"
                ))
                .into());
            }
        };
        let edit = revise::Edit {
            shot: Some(request.shot.clone()).filter(|shot| !shot.is_empty()),
            prompt: request.prompt.clone(),
            seed,
            pass,
            take: request.take,
        };
        let (revised, change) = revise::revise(&sequence, &edit).map_err(Error::from)?;
        // Checked as any submitted spec is (a new prompt's length, say).
        let revised = spec::sequence_from_pb(spec::sequence_to_pb(&revised), &self.0.catalog.ids())
            .map_err(Error::from)?;
        let revision = Revision {
            of: id.clone(),
            lineage,
            version,
            change,
        };
        let (sequence_id, created) = self
            .accept(
                revised,
                key,
                request.no_cache,
                &incoming,
                Some(revision),
                None,
            )
            .await?;
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
        let caller = self.caller(&request, Need::Client, "GetSequence").await?;
        let id = request.into_inner().sequence_id;
        limits::check_id("sequence_id", &id).map_err(Error::from)?;
        self.visible(&caller, &id).await?;
        Ok(Response::new(self.status(&id).await?))
    }

    type WatchSequenceStream = BoxStream<pb::SequenceStatus>;

    async fn watch_sequence(
        &self,
        request: Request<pb::WatchSequenceRequest>,
    ) -> Result<Response<Self::WatchSequenceStream>, Status> {
        let caller = self.caller(&request, Need::Client, "WatchSequence").await?;
        let slot = self.stream_slot(&caller, &request)?;
        let id = request.into_inner().sequence_id;
        limits::check_id("sequence_id", &id).map_err(Error::from)?;
        self.visible(&caller, &id).await?;
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
            let _permit = (permit, slot);
            let mut status = first;
            loop {
                let terminal = is_terminal(&status);
                if sender.send(Ok(status)).await.is_err() || terminal {
                    return;
                }
                loop {
                    tokio::select! {
                        // The watcher hung up: free its slots now, not at the next change.
                        () = sender.closed() => return,
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
        let caller = self
            .caller(&request, Need::Client, "CancelSequence")
            .await?;
        let id = request.into_inner().sequence_id;
        limits::check_id("sequence_id", &id).map_err(Error::from)?;
        self.visible(&caller, &id).await?;
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
        let caller = self
            .caller(&request, Need::Client, "DeleteSequence")
            .await?;
        let id = request.into_inner().sequence_id;
        limits::check_id("sequence_id", &id).map_err(Error::from)?;
        self.visible(&caller, &id).await?;
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
        let caller = self.caller(&request, Need::Client, "ListSequences").await?;
        // A submitter lists its own tenant's sequences; operators and admins everyone's.
        let only_owner = caller
            .filter(|principal| !principal.sees(None))
            .map(|principal| principal.tenant);
        let request = request.into_inner();
        limits::check_id("page_token", &request.page_token).map_err(Error::from)?;
        let limit = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size => (size as usize).min(MAX_PAGE_SIZE),
        };
        let (sequences, more, throughput) = self
            .0
            .read(|farm| {
                let (sequences, more) = snapshot::statuses_page(
                    farm,
                    &request.page_token,
                    limit,
                    only_owner.as_deref(),
                );
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
        Ok(Response::new(self.set_draining(request, true).await?))
    }

    async fn undrain_worker(
        &self,
        request: Request<pb::DrainWorkerRequest>,
    ) -> Result<Response<pb::DrainWorkerResponse>, Status> {
        Ok(Response::new(self.set_draining(request, false).await?))
    }

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        self.caller(&request, Need::Operator, "ListWorkers").await?;
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
        let caller = self.caller(&request, Need::Client, "ReadOutput").await?;
        let slot = self.stream_slot(&caller, &request)?;
        let request = request.into_inner();
        limits::check_id("sequence_id", &request.sequence_id).map_err(Error::from)?;
        self.visible(&caller, &request.sequence_id).await?;
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
            let _slot = slot;
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
        let caller = self
            .caller(&request, Need::Client, "UploadReference")
            .await?;
        let _slot = self.stream_slot(&caller, &request)?;
        // Refuse on a follower before reading the image.
        self.0.leadership().await?;
        let uploaded = uploads::receive(&self.0.store, request.into_inner()).await?;
        info!(upload = %uploaded.upload_id, bytes = uploaded.size, "reference image uploaded");
        Ok(Response::new(uploaded))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let caller = self.caller(&request, Need::Admin, "CreateToken").await?;
        let request = request.into_inner();
        limits::check_id("name", &request.name).map_err(Error::from)?;
        limits::check_id("tenant", &request.tenant).map_err(Error::from)?;
        let role = Role::parse(&request.role).map_err(Error::from)?;
        let (id, secret) = crate::authn::draw_token();
        let record = TokenRecord {
            id: id.clone(),
            name: request.name,
            tenant: request.tenant,
            role,
            secret_sha256: reelfarm_core::auth::sha256_hex(&secret),
            created_unix_s: unix_now_s(),
        };
        let info = token_info(&record);
        self.0
            .apply(|farm| Ok((farm.create_token(record)?, Vec::new())))
            .await?;
        info!(token = %info.id, name = %info.name, tenant = %info.tenant, role = %info.role, by = ?caller.map(|p| p.name), "token created");
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(info),
            secret_token: token_text(&id, &secret),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.caller(&request, Need::Admin, "ListTokens").await?;
        let tokens = self
            .0
            .read(|farm| Ok(farm.tokens().map(token_info).collect()))
            .await?;
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        self.caller(&request, Need::Admin, "RevokeToken").await?;
        let token = request.into_inner().token;
        limits::check_id("token", &token).map_err(Error::from)?;
        let revoked = self
            .0
            .apply(|farm| Ok((farm.revoke_token(&token)?, Vec::new())))
            .await?;
        info!(token = %revoked.id, name = %revoked.name, "token revoked");
        Ok(Response::new(pb::RevokeTokenResponse {
            token: Some(token_info(&revoked)),
        }))
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

impl Api {
    /// Drains or undrains workers: operators any worker, a worker itself (its pod's preStop
    /// hook) only under the id its identity registered.
    async fn set_draining(
        &self,
        request: Request<pb::DrainWorkerRequest>,
        draining: bool,
    ) -> Result<pb::DrainWorkerResponse, Error> {
        let call = if draining {
            "DrainWorker"
        } else {
            "UndrainWorker"
        };
        let caller = self.caller(&request, Need::Any, call).await?;
        let worker = request.into_inner().worker;
        limits::check_id("worker", &worker)?;
        if worker.trim().is_empty() {
            return Err(Error::InvalidArgument(
                "worker: required (a name or an id)".into(),
            ));
        }
        if let Some(principal) = &caller {
            if principal.role == Role::Worker && draining {
                self.acts_for(&caller, &worker)?;
                if self
                    .0
                    .read(|farm| Ok(farm.worker(&worker).is_none()))
                    .await?
                {
                    return Err(Error::PermissionDenied(format!(
                        "{call}: a worker drains only itself, by its id ({worker:?} is not one)"
                    )));
                }
            } else {
                principal.may(Need::Operator, call)?;
            }
        }
        let workers = self
            .0
            .apply(|farm| {
                let ids = if draining {
                    farm.drain_worker(&worker)?
                } else {
                    farm.undrain_worker(&worker)?
                };
                let statuses = ids
                    .iter()
                    .filter_map(|id| farm.worker(id))
                    .map(snapshot::worker_status)
                    .collect::<Vec<_>>();
                Ok((statuses, Vec::new()))
            })
            .await?;
        for status in &workers {
            if draining {
                info!(worker = %status.worker_id, "draining: no new work");
            } else {
                info!(worker = %status.worker_id, "undrained: takes new work again");
            }
        }
        Ok(pb::DrainWorkerResponse { workers })
    }
}

fn token_info(record: &TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        id: record.id.clone(),
        name: record.name.clone(),
        tenant: record.tenant.clone(),
        role: record.role.name().to_string(),
        created_unix_s: record.created_unix_s,
    }
}

impl Api {
    /// The sequence an idempotency key already made, answered as its submission was.
    async fn earlier_submission(
        &self,
        key: Option<&str>,
    ) -> Result<Option<pb::SubmitSequenceResponse>, Status> {
        let Some(key) = key else {
            return Ok(None);
        };
        let existing = self
            .0
            .read(|farm| Ok(farm.sequence_for_key(key).cloned()))
            .await?;
        let Some(existing) = existing else {
            return Ok(None);
        };
        let status = self.status(&existing).await?;
        Ok(Some(pb::SubmitSequenceResponse {
            sequence_id: existing,
            created: false,
            status: Some(status),
        }))
    }

    /// Plans a validated sequence, stores its reference images, looks its segments up in
    /// the segment cache and adds it to the farm (submit and revise alike); a sequence whose
    /// hosted clips are estimated above `budget_usd` is refused.
    async fn accept(
        &self,
        sequence: reelfarm_common::sequence::Sequence,
        key: Option<String>,
        no_cache: bool,
        incoming: &str,
        revision: Option<Revision>,
        budget_usd: Option<f64>,
    ) -> Result<(String, bool), Status> {
        let plan = planner::plan_with(&sequence, &self.0.catalog)
            .map_err(|unknown| Error::InvalidArgument(format!("model: {unknown}")))?;
        let problems = planner::check_models(&sequence, &self.0.catalog);
        if !problems.is_empty() {
            let lines: Vec<String> = problems
                .iter()
                .map(|(path, reason)| format!("{path}: {reason}"))
                .collect();
            return Err(Error::InvalidArgument(lines.join("\n")).into());
        }
        if let Some(budget) = budget_usd {
            check_budget(plan.estimated_cost_usd(), budget)?;
        }
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
        let segments = plan.segments.len();
        let cached =
            crate::segment_cache::look_up(self.0.store.as_ref(), &sequence, &plan, !no_cache).await;
        let reused = cached.hits.iter().flatten().count();
        let span = trace_context::start_span(
            "sequence",
            incoming,
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
                let (sequence_id, created) =
                    farm.submit_cached(id, key, sequence, plan, cached, unix_now_s());
                if created {
                    farm.set_traceparent(&sequence_id, traceparent.clone());
                    if let Some(revision) = revision {
                        farm.set_revision(&sequence_id, revision);
                    }
                }
                Ok(((sequence_id, created), Vec::new()))
            })
            .await?;
        if created {
            lock(&self.0.sequence_spans).insert(sequence_id.clone(), span);
            info!(
                sequence = %sequence_id,
                segments,
                reused,
                trace_id = trace_context::trace_id(&traceparent),
                "sequence accepted"
            );
        }
        Ok((sequence_id, created))
    }
}

/// `--max-cost`: a sequence whose hosted clips are estimated above the budget is refused,
/// with both figures.
fn check_budget(estimated: f64, budget: f64) -> Result<(), Error> {
    if !budget.is_finite() || budget < 0.0 {
        return Err(Error::InvalidArgument(format!(
            "max_cost_usd: {budget} must be a non-negative number of dollars"
        )));
    }
    if estimated > budget + 1e-9 {
        return Err(Error::InvalidArgument(format!(
            "max_cost_usd: the hosted clips are estimated at ${estimated:.2}, above the budget of \
             ${budget:.2}; raise --max-cost, shorten the sequence or move shots to a local model"
        )));
    }
    Ok(())
}
