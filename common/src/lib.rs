//! Shared by every reelfarm crate: the protocol's messages, the sequence spec and its
//! validation. With the `io` feature (processes, not the pure farm core): the gRPC services,
//! the object store (local and S3), leader discovery, health, metrics and traces.

#[cfg(feature = "io")]
pub mod blob;
pub mod error;
pub mod gpu_class;
#[cfg(feature = "io")]
pub mod health;
pub mod keys;
#[cfg(feature = "io")]
pub mod leader;
pub mod limits;
#[cfg(feature = "io")]
pub mod metrics;
#[cfg(feature = "io")]
pub mod s3;
pub mod sequence;
pub mod spec;
#[cfg(feature = "io")]
pub mod telemetry;
#[cfg(feature = "io")]
pub mod tls;
#[cfg(feature = "io")]
pub mod trace_context;

pub use error::Error;

/// Code generated from `proto/reelfarm/v1`: messages, and with `io` the gRPC services.
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/reelfarm.v1.rs"));
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
