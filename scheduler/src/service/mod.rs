//! The gRPC services. Handlers stay thin: authenticate the caller, convert the request, run
//! one farm transition through `Shared::apply` (durable before it acts), and answer.
//! Followers answer `Unavailable` with the leader's URL. `sequences` serves clients,
//! `workers` the workers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use reelfarm_common::pb::sequence_service_server::SequenceServiceServer;
use reelfarm_common::pb::worker_service_server::WorkerServiceServer;
use reelfarm_common::{health, limits, pb};
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Status};
use tracing::{info, warn};

use crate::leading::{SchedulerConfig, Shared, lead_until_shutdown, lock};
use crate::{Error, authn};
use reelfarm_core::auth::{Need, Principal};
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
        if !self.0.auth.required {
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
        Ok(Some(principal))
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
            Some(principal) => lock(&self.0.worker_identities).check(worker, &principal.name),
            None => Ok(()),
        }
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
