//! The openraft type configuration and the data that goes through the log.
//!
//! Everything persisted or replicated is encoded with MessagePack (`rmp-serde`, named fields, see
//! `store::encode`) so that a field added later does not silently shift the meaning of old bytes.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// Raft types of vaultd's integrated storage. Node ids are `u64` because openraft 0.9 requires
    /// `Copy` ids; Vault's string node id lives in [`Node`].
    pub(crate) TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A member of the cluster as the membership records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Vault's node id (`storage "raft" { node_id = ... }`), shown by `sys/storage/raft/configuration`.
    pub node_id: String,
    /// Where clients reach this node's HTTP API: what a standby redirects or forwards to.
    pub api_addr: String,
    /// Where peers reach this node's cluster port (Raft RPCs, request forwarding).
    pub cluster_addr: String,
    /// Joined as a non-voter on purpose: autopilot never promotes it. A node that joined to vote
    /// starts as a learner with this false and is promoted once stable (`autopilot.rs`).
    #[serde(default)]
    pub non_voter: bool,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (api {}, cluster {})", self.node_id, self.api_addr, self.cluster_addr)
    }
}

/// One log entry's worth of writes, applied atomically. It may hold the operations of several
/// callers (see `backend.rs`, group commit), in the order they must take effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Request {
    pub(crate) ops: Vec<Op>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Op {
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    /// A snapshot restore (`snapshot.rs`) travels through the log so that it reaches every node
    /// and survives a crash: begin (fresh staging tree), chunks of the restored data, then commit
    /// (atomic switch to the staging tree) or abort. Each of these is proposed as an entry of its
    /// own; `id` ties the steps of one restore together so that a step of another restore (an
    /// old leader's) never mixes in.
    BeginRestore {
        id: String,
    },
    RestoreChunk {
        id: String,
        pairs: Vec<RestorePair>,
    },
    CommitRestore {
        id: String,
    },
    AbortRestore {
        id: String,
    },
}

/// One key and value of a restore chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RestorePair {
    pub(crate) key: String,
    #[serde(with = "serde_bytes")]
    pub(crate) value: Vec<u8>,
}

impl Op {
    /// Bytes this operation carries, for the batch and transaction size limits.
    pub(crate) fn size(&self) -> usize {
        match self {
            Op::Put { key, value } => key.len() + value.len(),
            Op::Delete { key } => key.len(),
            Op::BeginRestore { id } | Op::CommitRestore { id } | Op::AbortRestore { id } => id.len(),
            Op::RestoreChunk { id, pairs } => {
                id.len() + pairs.iter().map(|p| p.key.len() + p.value.len()).sum::<usize>()
            }
        }
    }

    pub(crate) fn is_restore(&self) -> bool {
        !matches!(self, Op::Put { .. } | Op::Delete { .. })
    }
}

/// Applying a request has no result beyond success: every operation was validated before it was
/// proposed, and an apply that fails for a local reason (I/O) must stop the node instead of being
/// reported to one client (it would differ between nodes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Response {
    /// Set by a `CommitRestore` that switched the state machine to the restored data (false when
    /// the restore it names is not the one staged, e.g. an older leader's).
    #[serde(default)]
    pub(crate) restore_committed: bool,
}
