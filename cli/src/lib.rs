//! The `reelfarm` command's building blocks, as a library so tests drive the same code.

pub mod bench_stitch;
pub mod client;
pub mod config;
pub mod embedded;
pub mod outputs;
pub mod progress;
pub mod render;
pub mod report;
pub mod serve;
pub mod sim;
pub mod tiny;
pub mod validate;
