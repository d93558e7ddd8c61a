//! The reelfarm worker: runs render segments with a candle model and stitches sequences,
//! taking assignments from the scheduler over gRPC and writing results to the object store.

pub mod agent;
pub mod health;
pub mod inventory;
pub mod memory_meter;
pub mod model;
pub mod scenes;
pub mod segment;
pub mod stitch_task;
pub mod task;
mod worker_metrics;

pub use agent::{WorkerConfig, run};

/// The worker's error cases, mapped once to gRPC status codes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            Error::Unavailable(_) => tonic::Status::unavailable(message),
            Error::Internal(_) => tonic::Status::internal(message),
        }
    }
}
