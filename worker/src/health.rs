//! The worker's gRPC health service (for Kubernetes probes): SERVING while its object store
//! answers. The scheduler connection heals itself and is no reason to restart the pod.

use std::sync::Arc;

use reelfarm_common::blob::BlobStore;
use reelfarm_common::health;
use tokio::net::TcpListener;
use tracing::warn;

/// Serves `grpc.health.v1` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, store: Arc<dyn BlobStore>) {
    let (reporter, service) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        health::report_forever(reporter, &[""], || {
            let store = store.clone();
            async move { health::probe("object store", store.exists("healthz")).await }
        })
        .await;
    });
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    if let Err(error) = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(incoming)
        .await
    {
        warn!(%error, "worker health service stopped");
    }
}
