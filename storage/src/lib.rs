//! Physical storage for vaultd.
//!
//! This crate is the bottom of the data path: `barrier -> storage -> raft`. A [`Backend`] stores
//! opaque bytes under string keys and knows nothing about encryption: everything that reaches it
//! from the server has already passed through the barrier. Keys are `/`-separated paths, as in
//! Vault's physical layer, and [`Backend::list`] has Vault's one-level listing semantics.
//!
//! Backends here:
//! - [`inmem::InmemBackend`]: a sorted map in memory, for `storage "inmem"` and tests.
//! - [`sled_backend::SledBackend`]: a local sled tree with durable (fdatasync'd) writes.
//! - [`etcd::EtcdBackend`]: an etcd v3 cluster shared by all nodes (`storage "etcd"`), which is
//!   also an HA backend with fenced writes.
//! - The Raft backend lives in the `vaultd-raft` crate and implements the same trait.
//!
//! [`ha`] defines the HA backend trait beside [`Backend`]: a named lock that one node holds at a
//! time (Vault's `physical.HABackend`), with an in-memory implementation.
//!
//! [`conformance`] holds the checks every backend must pass (a port of Vault's
//! `ExerciseBackend` and `ExerciseBackend_ListPrefix`), [`ha_conformance`] those every HA backend
//! must pass (Vault's `ExerciseHABackend`). [`sled_sync`] is the sync that makes what sled wrote
//! durable, shared by the sled backend and the Raft store.

pub mod conformance;
pub mod etcd;
pub mod ha;
pub mod ha_conformance;
pub mod inmem;
pub mod sled_backend;
pub mod sled_sync;

pub use ha::{HaBackend, HaLock, InmemHaBackend, LockLost};

use async_trait::async_trait;

/// Largest key a backend accepts. Bounds memory per request and matches what sled and Raft
/// entries can carry comfortably.
pub const MAX_KEY_LEN: usize = 4096;

/// Largest value a backend accepts (Vault's raft `max_entry_size` default, 1 MiB).
pub const MAX_VALUE_LEN: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("put failed due to value being too large, max value size for key {key} is {max}")]
    ValueTooLarge { key: String, max: usize },
    /// The write must be sent to the node that can accept it (the Raft leader).
    #[error("node is not the leader")]
    NotLeader { leader_api_addr: Option<String> },
    /// The backend cannot accept writes right now (no quorum, shutting down, sealed Raft).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage I/O error: {0}")]
    Io(String),
    /// A fenced write reached the store after this node lost the HA lock it registered: the store
    /// itself refused it and nothing was written. The node must stop acting as the active node.
    #[error("storage write rejected: this node no longer holds the HA lock {lock_key:?}")]
    Fenced { lock_key: String },
    /// A transaction the backend cannot apply atomically (etcd's `--max-txn-ops` and
    /// `--max-request-bytes`); nothing was written.
    #[error("transaction too large: {0}")]
    TransactionTooLarge(String),
    /// `HaLock::lock` on a handle that already holds its lock.
    #[error("lock {0:?} is already held by this handle")]
    LockAlreadyHeld(String),
    /// A storage stanza that cannot be used (bad address, unreadable TLS file, bad duration).
    #[error("invalid storage configuration: {0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// One operation of an atomic [`Backend::transaction`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

impl TxnOp {
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
        }
    }
}

/// A key-value store of opaque bytes. Implementations are shared between tasks (`Arc<dyn Backend>`).
///
/// Contract (checked by [`conformance`]):
/// - `get` of a missing key is `Ok(None)`; `delete` of a missing key is `Ok(())`.
/// - `list(prefix)` returns the distinct first path segments below `prefix`, sorted; a segment
///   that has keys beneath it is returned with a trailing `/` (both `foo` and `foo/` may appear).
/// - A write that returned `Ok` is durable: it survives a crash of the process (and, for Raft, of
///   any minority of nodes).
/// - `transaction` applies all operations or none.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()>;
    async fn delete(&self, key: &str) -> Result<()>;
    async fn list(&self, prefix: &str) -> Result<Vec<String>>;
    async fn transaction(&self, ops: Vec<TxnOp>) -> Result<()>;
}

/// Rejects keys and values a backend must never store. Every backend calls this first, so the
/// limits hold whatever path a write takes.
pub fn validate_put(key: &str, value: &[u8]) -> Result<()> {
    validate_key(key)?;
    if value.len() > MAX_VALUE_LEN {
        return Err(Error::ValueTooLarge { key: key.to_string(), max: MAX_VALUE_LEN });
    }
    Ok(())
}

pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidKey("empty key".into()));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidKey(format!("key longer than {MAX_KEY_LEN} bytes")));
    }
    Ok(())
}

/// Vault's one-level listing of the keys that start with `prefix` (O(n log n) in their number).
/// Shared by every backend so the semantics cannot drift between them.
pub fn list_children<'a, I>(prefix: &str, sorted_keys: I) -> Vec<String>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut out: Vec<String> = Vec::new();
    for key in sorted_keys {
        let Some(rest) = key.strip_prefix(prefix) else { continue };
        let child = match rest.find('/') {
            Some(i) => &rest[..=i],
            None => rest,
        };
        // Sorted input puts a folder's keys together, so comparing with the last child removes
        // most repeats cheaply; sort + dedup below makes the result right for any input order.
        if !child.is_empty() && out.last().map(String::as_str) != Some(child) {
            out.push(child.to_string());
        }
    }
    out.sort();
    out.dedup();
    out
}
