//! The reelfarm scheduler: the farm core (`reelfarm-core`: planner, placement, the farm's
//! state machine) wrapped in what a process needs around it — the public and worker gRPC
//! services, leader election, the durable state store (etcd, or memory for one process) and
//! the farm's telemetry. Decisions live in the core; this crate carries them out.

mod authn;
pub mod error;
mod farm_telemetry;
mod leading;
mod segment_cache;
pub mod service;
pub mod state;
pub mod throttle;
mod uploads;

pub use authn::{AuthConfig, draw_token};
pub use error::Error;
pub use leading::SchedulerConfig;
pub use service::run;
