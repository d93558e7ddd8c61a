//! The scheduler's error cases, mapped once to gRPC status codes.

/// Response metadata naming the leader's URL on an `Unavailable` from a follower.
pub const LEADER_METADATA: &str = "reelfarm-leader";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// A report that does not match the current assignment (a fenced-off worker).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    /// This scheduler does not lead; the leader's URL when one is known.
    #[error("{}", match .0 {
        Some(url) => format!("this scheduler does not lead; the leader is at {url}"),
        None => "no scheduler leads right now (an election is under way); retry in a few seconds".to_string(),
    })]
    NotLeader(Option<String>),
    /// No credentials, or credentials that prove nobody.
    #[error("{0}")]
    Unauthenticated(String),
    /// Credentials that do not allow the call.
    #[error("{0}")]
    PermissionDenied(String),
    /// A cap on what one scheduler holds at once (open watches, pending registrations).
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<reelfarm_common::Error> for Error {
    fn from(error: reelfarm_common::Error) -> Self {
        use reelfarm_common::Error as Common;
        match error {
            Common::InvalidArgument(message) => Error::InvalidArgument(message),
            Common::NotFound(message) => Error::NotFound(message),
            Common::FailedPrecondition(message) => Error::FailedPrecondition(message),
            Common::Unavailable(message) => Error::Unavailable(message),
            Common::Internal(message) => Error::Internal(message),
            Common::Corrupt(message) => Error::Internal(format!("corrupt: {message}")),
        }
    }
}

impl From<reelfarm_core::Error> for Error {
    fn from(error: reelfarm_core::Error) -> Self {
        use reelfarm_core::Error as Core;
        match error {
            Core::InvalidArgument(message) => Error::InvalidArgument(message),
            Core::NotFound(message) => Error::NotFound(message),
            Core::FailedPrecondition(message) => Error::FailedPrecondition(message),
            Core::Unauthenticated(message) => Error::Unauthenticated(message),
            Core::PermissionDenied(message) => Error::PermissionDenied(message),
            Core::Internal(message) => Error::Internal(message),
        }
    }
}

impl From<reelfarm_common::spec::SpecError> for Error {
    fn from(error: reelfarm_common::spec::SpecError) -> Self {
        Error::InvalidArgument(error.to_string())
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            Error::NotFound(_) => tonic::Status::not_found(message),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            Error::Unavailable(_) => tonic::Status::unavailable(message),
            Error::NotLeader(leader) => {
                let mut status = tonic::Status::unavailable(message);
                if let Some(url) = leader
                    && let Ok(value) = url.parse()
                {
                    status.metadata_mut().insert(LEADER_METADATA, value);
                }
                status
            }
            Error::Unauthenticated(_) => tonic::Status::unauthenticated(message),
            Error::PermissionDenied(_) => tonic::Status::permission_denied(message),
            Error::ResourceExhausted(_) => tonic::Status::resource_exhausted(message),
            Error::Internal(_) => tonic::Status::internal(message),
        }
    }
}
