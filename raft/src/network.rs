//! The seam where the cluster transport plugs in.
//!
//! vaultd runs single-node for now: there is no cluster transport yet, so every RPC to a peer fails
//! with `RPCError::Unreachable` and openraft backs off and retries, as it would for a peer that is
//! down. A single-node cluster never sends an RPC, so nothing waits on this.
//!
//! The later mTLS cluster-port transport becomes another [`Transport`] variant: it will carry a
//! handle the server crate supplies, which moves opaque bytes to a peer's `cluster_addr`. Requests
//! and responses are encoded inside this crate, so the server crate still never names an openraft
//! type.

use openraft::error::{InstallSnapshotError, RPCError, RaftError as OpenraftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};

use crate::error::RaftError;
use crate::types::{Node, TypeConfig};

/// How this node reaches its peers.
#[derive(Debug, Clone)]
pub(crate) enum Transport {
    /// No cluster transport yet: every peer is unreachable.
    None,
}

impl RaftNetworkFactory<TypeConfig> for Transport {
    type Network = PeerClient;

    /// Creates a client without connecting, as openraft requires: connecting is the RPC's job.
    async fn new_client(&mut self, target: u64, node: &Node) -> PeerClient {
        match self {
            Transport::None => PeerClient::Unconnected { target, node: node.clone() },
        }
    }
}

/// A client for one peer.
pub(crate) enum PeerClient {
    Unconnected { target: u64, node: Node },
}

impl PeerClient {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<u64, Node, E> {
        match self {
            PeerClient::Unconnected { target, node } => {
                let err = RaftError::Unreachable(format!(
                    "no cluster transport yet: cannot reach raft node {target} ({node})"
                ));
                RPCError::Unreachable(Unreachable::new(&err))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Node, OpenraftError<u64>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Node, OpenraftError<u64, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Node, OpenraftError<u64>>> {
        Err(self.unreachable())
    }
}
