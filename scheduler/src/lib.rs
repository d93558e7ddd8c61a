//! The reelfarm scheduler: plans sequences into segments, keeps their state, places them on
//! workers and serves the public and worker gRPC APIs.

pub mod error;
pub mod estimator;
pub mod farm;
mod farm_telemetry;
mod leading;
pub mod placement;
pub mod planner;
mod ready_queue;
pub mod records;
pub mod service;
pub mod sim;
pub mod snapshot;
pub mod state;

pub use error::Error;
pub use leading::SchedulerConfig;
pub use service::run;
