//! The gRPC services. Handlers stay thin: authenticate the caller, convert the request, run
//! one farm transition through `Shared::apply` (durable before it acts), and answer.
//! Followers answer `Unavailable` with the leader's URL. `sequences` serves clients,
//! `workers` the workers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reelfarm_common::pb::sequence_service_server::SequenceServiceServer;
use reelfarm_common::pb::worker_service_server::WorkerServiceServer;
use reelfarm_common::{health, limits, pb};
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Status};
use tracing::{info, warn};

use crate::leading::{SchedulerConfig, Shared, lead_until_shutdown, lock};
use crate::throttle::StreamSlot;
use crate::{Error, authn};
use reelfarm_core::auth::{Need, Principal, Role};
use reelfarm_core::snapshot;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

mod sequences;
mod workers;

#[derive(Clone)]
struct Api(Arc<Shared>);

impl Api {
    async fn status(&self, id: &str) -> Result<pb::SequenceStatus, Error> {
        self.0.read(|farm| Ok(snapshot::status(farm, id)?)).await
    }

    /// The caller of `call`, refused unless its role allows `need`; `None` when this farm
    /// does not authenticate (every caller may do anything).
    async fn caller<T>(
        &self,
        request: &Request<T>,
        need: Need,
        call: &str,
    ) -> Result<Option<Principal>, Error> {
        // A verified client certificate is a worker's whole identity, tokens on or off.
        if let Some(worker) = authn::certified_worker(request)? {
            worker.may(need, call)?;
            return Ok(Some(worker));
        }
        if !self.0.auth.required {
            if let Some(who) = throttled_as(&None, request) {
                self.0.throttle.call(&who, Instant::now())?;
            }
            return Ok(None);
        }
        let token = authn::bearer(request)?.to_string();
        let principal = match self.0.auth.bootstrap_principal(&token) {
            Some(principal) => principal,
            None => {
                self.0
                    .read(move |farm| Ok(farm.authenticate(&token)?))
                    .await?
            }
        };
        principal.may(need, call)?;
        let principal = Some(principal);
        if let Some(who) = throttled_as(&principal, request) {
            self.0.throttle.call(&who, Instant::now())?;
        }
        Ok(principal)
    }

    /// One of the caller's streams (watch, upload, download), refused past its share.
    fn stream_slot<T>(
        &self,
        caller: &Option<Principal>,
        request: &Request<T>,
    ) -> Result<Option<StreamSlot>, Error> {
        throttled_as(caller, request)
            .map(|who| self.0.throttle.open_stream(&who, Instant::now()))
            .transpose()
    }

    /// Refuses a sequence the caller may not see exactly as a missing one is refused, so a
    /// tenant learns nothing of another's ids.
    async fn visible(&self, caller: &Option<Principal>, id: &str) -> Result<(), Error> {
        let Some(principal) = caller else {
            return Ok(());
        };
        let owner = self
            .0
            .read(|farm| {
                Ok(farm
                    .sequence(id)
                    .ok()
                    .map(|record| record.sequence.owner.clone()))
            })
            .await?;
        let seen = match owner {
            Some(owner) => principal.sees(owner.as_deref()),
            // Missing or quarantined: operators get the real answer from the handler.
            None => principal.sees(None),
        };
        if seen {
            Ok(())
        } else {
            Err(Error::NotFound(format!("sequence {id} not found")))
        }
    }

    /// Refuses a caller acting for a worker id another identity registered.
    fn acts_for(&self, caller: &Option<Principal>, worker: &str) -> Result<(), Error> {
        match caller {
            Some(principal) => {
                principal.may_act_as(worker)?;
                lock(&self.0.worker_identities).check(worker, &principal.name)
            }
            None => Ok(()),
        }
    }
}

/// Whom a call counts against in the per-principal limits: the token's tenant and name, or,
/// on a farm without tokens, the caller's address. Workers are not throttled.
fn throttled_as<T>(caller: &Option<Principal>, request: &Request<T>) -> Option<String> {
    match caller {
        Some(principal) if principal.role == Role::Worker => None,
        Some(principal) => Some(format!("{}/{}", principal.tenant, principal.name)),
        None => Some(match request.remote_addr() {
            Some(address) => format!("anonymous@{}", address.ip()),
            None => "anonymous".into(),
        }),
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
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = config
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{address}"));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls.config.clone()).map_err(|error| {
            Error::InvalidArgument(format!(
                "--tls-cert-file/--tls-key-file/--tls-client-ca-file: {error}"
            ))
        })?;
    }
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
    let served = builder
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
                .max_decoding_message_size(limits::MAX_REQUEST_BYTES)
                .max_encoding_message_size(limits::MAX_MESSAGE_BYTES),
        )
        .add_service(
            WorkerServiceServer::new(api)
                .max_decoding_message_size(limits::MAX_REQUEST_BYTES)
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
