//! The error cases a caller of the common crate can act on, mapped once to gRPC status codes.

/// Errors of the common crate (object store, spec conversion).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// Stored bytes that do not match their checksum.
    #[error("corrupt: {0}")]
    Corrupt(String),
}

#[cfg(feature = "io")]
impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            Error::NotFound(_) => tonic::Status::not_found(message),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            Error::Unavailable(_) => tonic::Status::unavailable(message),
            Error::Internal(_) => tonic::Status::internal(message),
            Error::Corrupt(_) => tonic::Status::data_loss(message),
        }
    }
}
