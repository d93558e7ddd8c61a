//! Shared by every reelfarm crate: the generated gRPC code, the sequence spec and its
//! validation, the object store and telemetry setup.

pub mod blob;
pub mod error;
pub mod gpu_class;
pub mod health;
pub mod keys;
pub mod leader;
pub mod metrics;
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

/// Wall seconds a task's phases span: from its first phase's start to its last one's end
/// (what the farm counts as the device seconds of a finished segment).
pub fn busy_seconds(phases: &[pb::TimedPhase]) -> f64 {
    let start = phases
        .iter()
        .map(|p| p.start_unix_s)
        .fold(f64::INFINITY, f64::min);
    let end = phases
        .iter()
        .map(|p| p.end_unix_s)
        .fold(f64::NEG_INFINITY, f64::max);
    if end > start { end - start } else { 0.0 }
}
