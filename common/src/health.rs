//! Readiness for Kubernetes `grpc` probes (`grpc.health.v1`): one loop that runs a process's
//! own check every few seconds, sets its services SERVING or NOT_SERVING, and logs each change.

use std::future::Future;
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

/// How often readiness is checked, and how long one probe of a dependency may take.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs `check` (`None`: ready; `Some(why)`: not) forever, reporting it for `services`
/// (`""` is the whole server).
pub async fn report_forever<F, Fut>(reporter: HealthReporter, services: &[&str], check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<String>>,
{
    let mut last: Option<bool> = None;
    loop {
        let problem = check().await;
        let serving = problem.is_none();
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in services {
            reporter.set_service_status(*service, status).await;
        }
        if last != Some(serving) {
            match &problem {
                None => info!("ready"),
                Some(problem) => warn!(%problem, "not ready"),
            }
            last = Some(serving);
        }
        tokio::time::sleep(HEALTH_INTERVAL).await;
    }
}

/// `None` when `probe` answers Ok within `PROBE_TIMEOUT`, else why not, naming `what`.
pub async fn probe<T, E: std::fmt::Display>(
    what: &str,
    probe: impl Future<Output = Result<T, E>>,
) -> Option<String> {
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(_)) => None,
        Ok(Err(error)) => Some(format!("{what}: {error}")),
        Err(_) => Some(format!(
            "{what} did not answer in {} s",
            PROBE_TIMEOUT.as_secs()
        )),
    }
}
