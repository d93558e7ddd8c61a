//! The `reelfarm` command's building blocks, as a library so tests drive the same code.

//!
//! Features: `worker` (on by default) brings everything that renders — the embedded farm
//! (`render`), the worker process, model runtimes, codecs and the stitch; `train` (on by
//! default) adds reelfarm-tiny's trainer and evaluator. A scheduler image builds without
//! both, a worker image without `train`.

#[cfg(feature = "worker")]
pub mod bench_cache;
#[cfg(feature = "worker")]
pub mod bench_stitch;
pub mod cache_prune;
pub mod client;
pub mod config;
#[cfg(feature = "worker")]
pub mod embedded;
pub mod input;
pub mod outputs;
pub mod progress;
#[cfg(feature = "worker")]
pub mod render;
pub mod report;
pub mod serve;
pub mod sim;
#[cfg(feature = "worker")]
pub mod tiny;
#[cfg(feature = "train")]
pub mod train;
pub mod validate;
#[cfg(feature = "worker")]
pub mod wan;
