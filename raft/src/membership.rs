//! Cluster membership on [`RaftNode`]: adding, promoting and removing nodes, and the
//! configuration as `sys/storage/raft/configuration` shows it.
//!
//! Nodes are named by their numeric raft id, which each node chose at random when its data
//! directory was created ([`RaftNode::raft_id`]); a joining node reports it together with its
//! [`Node`] (Vault node id, api_addr, cluster_addr). Every change runs on the leader; on another
//! node it fails with [`RaftError::NotLeader`], which names the leader's API address.
//!
//! Rules this module keeps (openraft issues 898 and 927):
//! - adding a node that is already a member with the same details changes nothing, so a retried
//!   join does not append another membership entry;
//! - a Vault node id already held by another raft id is refused: a node whose data was wiped
//!   comes back under a new raft id, and the old one must be removed first;
//! - a learner is promoted only once it has caught up with the leader's log, so that a fresh
//!   voter does not stall commits while it receives a snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError as OpenraftError};
use openraft::metrics::WaitError;
use openraft::{ChangeMembers, ServerState};

use crate::cluster::host_port;
use crate::error::RaftError;
use crate::types::Node;
use crate::RaftNode;

/// A membership change commits in one (learner) or two (joint, then uniform) entries: a few
/// round trips, plus an election if the leader changes meanwhile.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a promotion waits for the new voters to catch up with the leader's log.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Vault's node id.
    pub node_id: String,
    pub raft_id: u64,
    /// The cluster address as `host:port`, the form Vault shows as `address`.
    pub address: String,
    pub api_addr: String,
    /// This node believes the member is the current leader.
    pub leader: bool,
    /// A voter (counts for quorum), as opposed to a non-voter (learner).
    pub voter: bool,
}

type WriteError = OpenraftError<u64, ClientWriteError<u64, Node>>;

fn write_error(e: WriteError) -> RaftError {
    match e {
        OpenraftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            RaftError::NotLeader { leader_api_addr: f.leader_node.map(|n| n.api_addr) }
        }
        OpenraftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            RaftError::Membership(e.to_string())
        }
        OpenraftError::Fatal(f) => RaftError::Stopped(f.to_string()),
    }
}

impl RaftNode {
    /// The numeric id openraft knows this node by. A joining node sends it, with its [`Node`], to
    /// the leader, which passes both to [`RaftNode::add_learner`].
    pub fn raft_id(&self) -> u64 {
        self.raft_id
    }

    /// This node as the membership records it.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Adds a node as a non-voter and returns once that change is committed. The leader starts
    /// replicating to it (a snapshot first, if the log was purged); it votes only after
    /// [`RaftNode::promote`]. Adding a member again with the same details is a no-op; with a new
    /// address it updates the address.
    pub async fn add_learner(&self, raft_id: u64, node: Node) -> Result<(), RaftError> {
        if raft_id == 0 {
            return Err(RaftError::Config("raft id 0 is not a valid node id".into()));
        }
        if node.node_id.is_empty() {
            return Err(RaftError::Config("the joining node's node_id is empty".into()));
        }
        host_port(&node.cluster_addr)?;
        self.check_can_change()?;

        let change = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            if let Some((other, _)) =
                membership.nodes().find(|(id, n)| **id != raft_id && n.node_id == node.node_id)
            {
                return Err(RaftError::Membership(format!(
                    "node_id {:?} is already a member as raft id {other}; remove it first",
                    node.node_id
                )));
            }
            match membership.get_node(&raft_id) {
                Some(existing) if *existing == node => return Ok(()),
                Some(_) => Some(ChangeMembers::SetNodes(BTreeMap::from([(raft_id, node.clone())]))),
                None => None,
            }
        };
        let write = async {
            match change {
                Some(update) => self.raft.change_membership(update, true).await,
                None => self.raft.add_learner(raft_id, node.clone(), false).await,
            }
        };
        match tokio::time::timeout(MEMBERSHIP_TIMEOUT, write).await {
            Err(_) => {
                Err(RaftError::Timeout(MEMBERSHIP_TIMEOUT, "the new learner to be committed"))
            }
            Ok(Err(e)) => Err(write_error(e)),
            Ok(Ok(_)) => {
                tracing::info!(raft_id, node = %node, "added a raft learner");
                Ok(())
            }
        }
    }

    /// Makes a learner a voter, once it has caught up (bounded wait).
    pub async fn promote(&self, raft_id: u64) -> Result<(), RaftError> {
        let mut voters = self.voter_ids();
        voters.insert(raft_id);
        self.change_membership(voters.into_iter().collect()).await
    }

    /// Makes exactly `voters` the voters. Every id must already be a member; voters left out
    /// become non-voters (they keep replicating; [`RaftNode::remove_node`] removes them). New
    /// voters must first catch up with the leader's log (bounded wait). Returns once the final
    /// configuration is committed.
    pub async fn change_membership(&self, voters: Vec<u64>) -> Result<(), RaftError> {
        let voters: BTreeSet<u64> = voters.into_iter().collect();
        if voters.is_empty() {
            return Err(RaftError::Membership("a cluster needs at least one voter".into()));
        }
        self.check_can_change()?;
        let (current, new_voters) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            if let Some(unknown) = voters.iter().find(|id| membership.get_node(id).is_none()) {
                return Err(RaftError::Membership(format!(
                    "raft id {unknown} is not a member; add it as a learner first"
                )));
            }
            let current: BTreeSet<u64> = membership.voter_ids().collect();
            let joint = membership.get_joint_config().len() > 1;
            if current == voters && !joint {
                return Ok(());
            }
            let new: Vec<u64> = voters.difference(&current).copied().collect();
            (current, new)
        };
        self.wait_caught_up(&new_voters, CATCH_UP_TIMEOUT).await?;
        let write =
            self.raft.change_membership(ChangeMembers::ReplaceAllVoters(voters.clone()), true);
        match tokio::time::timeout(MEMBERSHIP_TIMEOUT, write).await {
            Err(_) => {
                Err(RaftError::Timeout(MEMBERSHIP_TIMEOUT, "the membership change to commit"))
            }
            Ok(Err(e)) => Err(write_error(e)),
            Ok(Ok(_)) => {
                tracing::info!(?current, ?voters, "changed the raft voters");
                Ok(())
            }
        }
    }

    /// Removes a node from the cluster, voter or not. Removing a node that is not a member is a
    /// no-op, so a retried removal succeeds. The leader may remove itself: it steps down once the
    /// change is committed and the others elect a new leader.
    pub async fn remove_node(&self, raft_id: u64) -> Result<(), RaftError> {
        self.check_can_change()?;
        let (is_member, is_voter) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            (
                membership.get_node(&raft_id).is_some(),
                membership.voter_ids().any(|id| id == raft_id),
            )
        };
        if !is_member {
            return Ok(());
        }
        let ids = BTreeSet::from([raft_id]);
        let change = if is_voter {
            ChangeMembers::RemoveVoters(ids)
        } else {
            ChangeMembers::RemoveNodes(ids)
        };
        // `retain = false`: a removed voter leaves entirely instead of staying as a learner.
        let write = self.raft.change_membership(change, false);
        match tokio::time::timeout(MEMBERSHIP_TIMEOUT, write).await {
            Err(_) => Err(RaftError::Timeout(MEMBERSHIP_TIMEOUT, "the removal to commit")),
            Ok(Err(e)) => Err(write_error(e)),
            Ok(Ok(_)) => {
                if raft_id != self.raft_id {
                    self.transport.forget(raft_id);
                }
                tracing::info!(raft_id, "removed a raft node");
                Ok(())
            }
        }
    }

    /// The members as this node knows them (its latest membership entry, committed or not), in
    /// raft id order. Only the leader's view is authoritative.
    pub fn configuration(&self) -> Vec<PeerInfo> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| PeerInfo {
                node_id: node.node_id.clone(),
                raft_id: *id,
                address: host_port(&node.cluster_addr)
                    .map(str::to_string)
                    .unwrap_or_else(|_| node.cluster_addr.clone()),
                api_addr: node.api_addr.clone(),
                leader: m.current_leader == Some(*id),
                voter: voters.contains(id),
            })
            .collect()
    }

    fn voter_ids(&self) -> BTreeSet<u64> {
        self.raft.metrics().borrow().membership_config.membership().voter_ids().collect()
    }

    /// Membership changes need the cluster port (the leader must reach the nodes) and must run on
    /// the leader; failing early names the leader instead of timing out.
    fn check_can_change(&self) -> Result<(), RaftError> {
        self.reads()?;
        if !self.transport.is_started() {
            return Err(RaftError::Config(
                "the cluster port is not started (RaftNode::start_cluster)".into(),
            ));
        }
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.state != ServerState::Leader {
            let leader_api_addr = m
                .current_leader
                .and_then(|id| m.membership_config.membership().get_node(&id))
                .map(|n| n.api_addr.clone());
            return Err(RaftError::NotLeader { leader_api_addr });
        }
        Ok(())
    }

    /// Waits until the leader has replicated to each of `ids` everything it had when called.
    async fn wait_caught_up(&self, ids: &[u64], timeout: Duration) -> Result<(), RaftError> {
        if ids.is_empty() {
            return Ok(());
        }
        let target = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let ids = ids.to_vec();
        self.raft
            .wait(Some(timeout))
            .metrics(
                move |m| {
                    ids.iter().all(|id| {
                        m.replication
                            .as_ref()
                            .and_then(|r| r.get(id))
                            .and_then(|matched| matched.as_ref())
                            .is_some_and(|l| l.index >= target)
                    })
                },
                "the new voters to catch up",
            )
            .await
            .map(|_| ())
            .map_err(|e| match e {
                WaitError::Timeout(..) => {
                    RaftError::Timeout(timeout, "the new voters to catch up with the leader")
                }
                WaitError::ShuttingDown => RaftError::Stopped("raft is shutting down".into()),
            })
    }
}
