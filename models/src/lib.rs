//! Models as the farm sees them: the **catalog** (one entry per model: backend, window,
//! temporal stride, steps, guidance, weights location) with the **one memory estimator**
//! every layer uses, and, behind the default `runtime` feature, the **seam** a model runtime
//! implements (request, errors, the `ModelRuntime` trait, clips decoded frame by frame).
//!
//! The farm core takes this crate with `default-features = false`: the catalog and the
//! estimator only, no media and no tensors. Runtimes live in their own crates (`reelfarm-tiny`).

pub mod catalog;
#[cfg(feature = "runtime")]
pub mod checkpoint;
pub mod memory;
pub mod retime;
#[cfg(feature = "runtime")]
pub mod runtime;

pub use catalog::{
    Backend, Catalog, CatalogError, HostedAuth, HostedSpec, KeySource, ModelEntry, REELFARM_TINY,
    UnknownModel, WAN_2_1_T2V_1_3B,
};
#[cfg(feature = "runtime")]
pub use checkpoint::{Checkpoints, SamplingState, StateTensor};
pub use memory::{MemoryModel, SegmentShape};
#[cfg(feature = "runtime")]
pub use runtime::{ClipDecoder, GenerateRequest, GeneratedClip, ModelError, ModelRuntime};
