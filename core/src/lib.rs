//! The farm core: everything the scheduler decides, as pure code — no async, no I/O, no
//! clock reads (`now` is passed in), deterministic iteration. The scheduler crate wraps it in
//! gRPC services, leadership and the etcd store; the simulator drives the same code.
//!
//! - `auth`: principals, roles and tokens (stored hashed), and who may do what.
//! - `cache`: segment cache keys (a hash of what decides a segment's pixels) and entries.
//! - `planner`: a sequence → render segments and a stitch task (a DAG of continuity chains),
//!   sized by the model catalog's one estimator.
//! - `placement`: which ready segment goes on which GPU (policies, the ready queue, the
//!   algorithm described in `placement/README.md`).
//! - `estimator`: the catalog's memory estimates corrected by measured peaks and OOMs.
//! - `farm`: the state machine — submit, dispatch, fencing, retries, the OOM ladder, cancel,
//!   worker registry — emitting `Action`s for an executor to carry out.
//! - `records`: the farm as durable records and back, and the writes each transition makes.
//! - `snapshot`: farm records → protocol messages (status, assignments).
//! - `revise`: a new version of a sequence with one change (`rerender`, `promote`).
//! - `sim`: a discrete-event GPU pool that runs traces through all of the above.
//!
//! Uses `reelfarm-common` without its `io` feature (messages and the spec, no tonic, tokio or
//! object store) and `reelfarm-models` without its runtime (the catalog only).

pub mod auth;
pub mod cache;
pub mod error;
pub mod estimator;
pub mod farm;
pub mod placement;
pub mod planner;
pub mod records;
pub mod revise;
pub mod sim;
pub mod snapshot;
#[cfg(test)]
mod test_catalogs;

pub use error::Error;
