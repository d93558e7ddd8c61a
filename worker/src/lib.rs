//! The reelfarm worker: takes assignments from the leading scheduler over gRPC, renders
//! segments with a model runtime (`reelfarm-models`' seam; `reelfarm-tiny` built in) and
//! stitches sequences (`reelfarm-stitch`), reading and writing the object store. Owns the
//! agent, segment and stitch execution, the GPU inventory and the memory meter; never the
//! farm's decisions.

pub mod agent;
pub mod health;
pub mod hosted;
pub mod inventory;
pub mod memory_meter;
pub mod runtimes;
pub mod segment;
pub mod stitch_task;
pub mod task;
pub mod weights_cache;
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
