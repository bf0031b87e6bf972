//! The one error type of this crate.
//!
//! It carries messages, not sled or openraft values, so that no dependency's types leak into the
//! server crate through an error. Inside the crate, storage failures are converted to openraft's
//! `StorageError` at the trait boundary ([`to_storage_error`]); openraft treats every storage error
//! as fatal and stops the node, which is what we want for I/O errors (see `store.rs` on fsync).

use std::time::Duration;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};

#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// Reading or writing the node's files failed. After a failed sync the store refuses every
    /// further write until the process restarts (see `vaultd_storage::sled_sync::SledSyncer`).
    #[error("raft storage I/O failed: {0}")]
    Io(String),
    /// Data on disk (or a received snapshot) does not decode or breaks an invariant.
    #[error("raft storage is corrupt: {0}")]
    Corrupt(String),
    /// The configuration or the data directory does not fit this node.
    #[error("invalid raft configuration: {0}")]
    Config(String),
    /// `bootstrap_single` on a node that already has a membership.
    #[error("this node's raft cluster is already initialized")]
    AlreadyInitialized,
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    #[error("this node is not the raft leader")]
    NotLeader { leader_api_addr: Option<String> },
    /// A peer cannot be reached (connect or TLS handshake failed, or the cluster port is not
    /// started yet).
    #[error("raft peer unreachable: {0}")]
    Unreachable(String),
    /// Talking to a peer failed after the connection was made (I/O, a malformed frame, a timeout).
    #[error("raft network error: {0}")]
    Network(String),
    /// The cluster TLS identity is unusable (bad PEM, a key that does not match, ...).
    #[error("cluster TLS: {0}")]
    Tls(String),
    /// A membership change was refused: another change is in progress, a node is unknown, or a
    /// node id is already taken by another member.
    #[error("raft membership change refused: {0}")]
    Membership(String),
    /// Raft has shut down (on request, or after a fatal storage error).
    #[error("raft has stopped: {0}")]
    Stopped(String),
}

impl From<sled::Error> for RaftError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Corruption { .. } => RaftError::Corrupt(format!("sled: {e}")),
            other => RaftError::Io(format!("sled: {other}")),
        }
    }
}

impl From<std::io::Error> for RaftError {
    fn from(e: std::io::Error) -> Self {
        RaftError::Io(e.to_string())
    }
}

/// Wraps an error for openraft, naming what was being read or written.
pub(crate) fn to_storage_error(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: RaftError,
) -> StorageError<u64> {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}
