//! The reelfarm scheduler: plans sequences into segments, keeps their state, places them on
//! workers and serves the public and worker gRPC APIs.

pub mod error;
pub mod farm;
pub mod planner;
pub mod service;
pub mod snapshot;

pub use error::Error;
pub use service::{SchedulerConfig, run};
