//! The farm core's error cases: what a caller can act on. The scheduler maps them once to
//! its own error and from there to gRPC status codes.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// A report that does not match the current assignment (a fenced-off worker).
    #[error("{0}")]
    FailedPrecondition(String),
    /// No credentials, or credentials that prove nobody.
    #[error("{0}")]
    Unauthenticated(String),
    /// Credentials that do not allow the call.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("internal error: {0}")]
    Internal(String),
}
