//! Shared by every reelfarm crate: the generated gRPC code, the sequence spec and its
//! validation, the model catalog, the object store and telemetry setup.

pub mod blob;
pub mod error;
pub mod gpu_class;
pub mod keys;
pub mod leader;
pub mod metrics;
pub mod models;
pub mod s3;
pub mod sequence;
pub mod spec;
pub mod telemetry;
pub mod trace_context;

pub use error::Error;

/// Code generated from `proto/reelfarm/v1`.
pub mod pb {
    tonic::include_proto!("reelfarm.v1");
}

/// Seconds since the Unix epoch as a float, the unit every timing in the protocol uses.
pub fn unix_now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64())
        .unwrap_or(0.0)
}
