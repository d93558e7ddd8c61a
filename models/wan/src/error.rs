//! One error type for the crate, mapped once onto the model seam's `ModelError`.

use std::path::PathBuf;

use reelfarm_models::runtime::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum WanError {
    /// A file of the checkpoint layout is absent; `expected` describes the layout.
    #[error("{path}: missing; {expected}")]
    MissingFile { path: PathBuf, expected: String },
    #[error("{path}: {reason}")]
    InvalidFile { path: PathBuf, reason: String },
    /// A tensor is absent or has the wrong shape.
    #[error("weights: {0}")]
    InvalidWeights(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("cancelled")]
    Cancelled,
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl From<WanError> for ModelError {
    fn from(error: WanError) -> Self {
        match error {
            WanError::Cancelled => ModelError::Cancelled,
            WanError::InvalidRequest(message) => ModelError::InvalidRequest(message),
            WanError::MissingFile { .. }
            | WanError::InvalidFile { .. }
            | WanError::InvalidWeights(_) => ModelError::InvalidWeights(error.to_string()),
            WanError::Tensor(error) => {
                let message = error.to_string();
                let lower = message.to_ascii_lowercase();
                if [
                    "out of memory",
                    "out_of_memory",
                    "alloc_failed",
                    "cannot allocate",
                ]
                .iter()
                .any(|sign| lower.contains(sign))
                {
                    ModelError::OutOfMemory(message)
                } else {
                    ModelError::Internal(format!("tensor operation failed: {message}"))
                }
            }
        }
    }
}

pub type Result<T, E = WanError> = std::result::Result<T, E>;

/// A tensor error while building `component` from a checkpoint (a tensor missing or of the
/// wrong shape) is the checkpoint's fault: said as such, naming the component.
pub fn weights_error(component: &'static str) -> impl Fn(WanError) -> WanError {
    move |error| match error {
        WanError::Tensor(error) => WanError::InvalidWeights(format!("{component}: {error}")),
        other => other,
    }
}
