//! The server's one error type. Every failure a request can meet ends up here, and
//! `http::error_status` maps it to a status code in one place.

use crate::barrier::BarrierError;
use crate::seal::SealError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Missing token, unknown token, or a policy that does not grant the capability.
    #[error("permission denied")]
    PermissionDenied,
    /// A 403 whose text says more than "permission denied" (Vault's `ErrorResponse` paired with
    /// `ErrPermissionDenied`: "bad token", the UI mount preflight).
    #[error("{0}")]
    Forbidden(String),
    /// Vault matches on this exact text (and maps any error containing it to 503).
    #[error("Vault is sealed")]
    Sealed,
    #[error("Vault is not initialized")]
    NotInitialized,
    #[error("Vault is already initialized")]
    AlreadyInitialized,
    /// Vault's `logical.ErrorResponse`: the request is wrong, the text says how.
    #[error("{0}")]
    BadRequest(String),
    #[error("no handler for route \"{0}\". route entry not found.")]
    NoHandler(String),
    #[error("unsupported operation")]
    UnsupportedOperation,
    #[error("unsupported path")]
    UnsupportedPath,
    #[error("http: request body too large")]
    BodyTooLarge,
    /// A body in a format the endpoint does not take (PATCH without merge-patch JSON).
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("missing client token")]
    MissingToken,
    /// The node cannot serve writes now (no leader, storage unavailable).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Barrier(#[from] BarrierError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("{0}")]
    Internal(String),
    /// A membership or cluster operation of integrated storage failed (not leader, refused
    /// change, peer unreachable...); the variant says which.
    #[error(transparent)]
    Raft(#[from] vaultd_raft::RaftError),
    /// Talking to the leader during a raft join failed (unreachable, refused, a malformed answer).
    #[error("failed to join raft cluster: {0}")]
    JoinFailed(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Error::BadRequest(msg.into())
    }

    pub fn internal(msg: impl std::fmt::Display) -> Self {
        Error::Internal(msg.to_string())
    }
}

impl From<vaultd_storage::Error> for Error {
    fn from(e: vaultd_storage::Error) -> Self {
        Error::Barrier(BarrierError::from(e))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Internal(format!("encoding error: {e}"))
    }
}
