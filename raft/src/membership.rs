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
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError as OpenraftError};
use openraft::metrics::WaitError;
use openraft::{
    ChangeMembers, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, Raft, ServerState,
    Vote,
};
use serde::Deserialize;

use crate::cluster::host_port;
use crate::error::RaftError;
use crate::state_machine::StateMachineStore;
use crate::store::{decode, encode, meta_key, Store};
use crate::types::{Node, TypeConfig};
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
        let (node, is_voter) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            (membership.get_node(&raft_id).cloned(), membership.voter_ids().any(|id| id == raft_id))
        };
        if node.is_none() {
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
                tracing::info!(raft_id, "removed a raft node");
                if raft_id == self.raft_id {
                    self.mark_removed("it removed itself as leader").await;
                } else {
                    if let Some(node) = node {
                        if !crate::autopilot::notify_removed(self, raft_id, &node).await {
                            self.autopilot.queue_notice(raft_id, node);
                        }
                    }
                    self.transport.forget(raft_id);
                }
                Ok(())
            }
        }
    }

    /// This node was removed from the cluster (told by the leader, or it saw a committed
    /// membership without itself). Durable: it stays removed across restarts.
    pub fn is_removed(&self) -> bool {
        self.removal.is_removed()
    }

    async fn mark_removed(&self, why: &str) {
        if let Err(e) = self.removal.mark(why).await {
            tracing::error!("cannot record that this node was removed: {e}");
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

/// Whether this node was removed from the cluster, and how it records it.
pub(crate) struct Removal {
    flag: AtomicBool,
    /// Weak: the store must close when the node shuts down (sled locks its directory).
    store: Weak<Store>,
    raft: Raft<TypeConfig>,
}

impl Removal {
    pub(crate) fn new(removed: bool, store: &Arc<Store>, raft: Raft<TypeConfig>) -> Self {
        Removal { flag: AtomicBool::new(removed), store: Arc::downgrade(store), raft }
    }

    pub(crate) fn is_removed(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Stops campaigning and records the removal durably. Idempotent.
    pub(crate) async fn mark(&self, why: &str) -> Result<(), RaftError> {
        if self.flag.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.raft.runtime_config().elect(false);
        tracing::warn!(why, "this node was removed from the raft cluster; it no longer takes part in elections");
        match self.store.upgrade() {
            Some(store) => store.mark_removed().await,
            None => Err(RaftError::Stopped("the raft node is shut down".into())),
        }
    }
}

/// Notices when a committed membership no longer holds this node, after one that did: the
/// fallback for a removal notice that never arrived. Only applied (hence committed) memberships
/// count, so an uncommitted entry a new leader later truncates never marks a node removed, and a
/// joining node replaying the memberships from before it was added never does either.
pub(crate) fn spawn_watcher(
    raft: Raft<TypeConfig>,
    removal: Arc<Removal>,
    raft_id: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rx = raft.metrics();
        let mut seen_self = false;
        loop {
            let removed = {
                let m = rx.borrow_and_update();
                let stored = &m.membership_config;
                let applied = m.last_applied.map(|l| l.index);
                let committed = stored.log_id().is_some_and(|l| applied >= Some(l.index));
                let member = stored.membership().get_node(&raft_id).is_some();
                if member && committed {
                    seen_self = true;
                }
                seen_self && committed && !member
            };
            if removed {
                if let Err(e) = removal.mark("a committed membership no longer lists it").await {
                    tracing::error!("cannot record that this node was removed: {e}");
                }
                return;
            }
            if removal.is_removed() || rx.changed().await.is_err() {
                return;
            }
        }
    })
}

/// Where Vault's lost-quorum recovery file lives, under the storage path.
pub(crate) const PEERS_JSON: &str = "raft/peers.json";
const PEERS_INFO: &str = "raft/peers.info";
/// A peers.json larger than this is not a list of a few servers.
const MAX_PEERS_JSON: u64 = 1 << 20;

#[derive(Debug, Deserialize)]
struct PeerEntry {
    id: String,
    address: String,
    #[serde(default)]
    non_voter: bool,
}

/// Vault's lost-quorum recovery: when `<path>/raft/peers.json` exists, make exactly its servers
/// the membership, before openraft starts, and rename the file to `peers.info`.
///
/// The new membership is appended to this node's log as an entry of a term above any it has seen
/// (`last term + 1`, with a matching vote), and openraft takes the last membership in the log as
/// the effective one. The entry's leader id is the lowest listed voter on every survivor: no real
/// leader ever wrote in that term, and survivors with equal last terms get comparable log ids
/// (the longer log wins the election; a shorter one is overwritten where it differs). The node
/// then elects itself (or the survivors elect one of them) at a still higher term, and that
/// leader's first entry commits the new membership. Every survivor must get the same file, as in
/// Vault.
///
/// Servers are matched to the current membership by Vault node id (their raft ids are not in the
/// file); a node id this node has never seen as a member is refused.
pub(crate) fn recover_from_peers_json(
    path: &Path,
    store: &Arc<Store>,
    state_machine: &StateMachineStore,
    me: &Node,
) -> Result<bool, RaftError> {
    let file = path.join(PEERS_JSON);
    let meta = match std::fs::metadata(&file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(RaftError::Io(format!("reading {}: {e}", file.display()))),
    };
    if meta.len() > MAX_PEERS_JSON {
        return Err(RaftError::Config(format!("{} is too large", file.display())));
    }
    let raw = std::fs::read(&file)
        .map_err(|e| RaftError::Io(format!("reading {}: {e}", file.display())))?;
    let peers: Vec<PeerEntry> = serde_json::from_slice(&raw)
        .map_err(|e| RaftError::Config(format!("{} is not valid: {e}", file.display())))?;

    let (applied, sm_membership) = state_machine.read_applied_state()?;
    let mut current = sm_membership.membership().clone();
    // The log after the last applied entry may hold a newer membership.
    let mut last_log: Option<LogId<u64>> = None;
    for item in store.log.iter().rev() {
        let (_, raw) = item?;
        let entry: Entry<TypeConfig> = decode(&raw, "a log entry")?;
        if last_log.is_none() {
            last_log = Some(entry.log_id);
        }
        if applied.is_some_and(|a| entry.log_id.index <= a.index) {
            break;
        }
        if let EntryPayload::Membership(m) = entry.payload {
            current = m;
            break;
        }
    }
    let last_purged: Option<LogId<u64>> = match store.meta.get(meta_key::LAST_PURGED)? {
        Some(raw) => Some(decode(&raw, "the last purged log id")?),
        None => None,
    };
    let last = [last_log, last_purged, applied].into_iter().flatten().max();
    let vote: Option<Vote<u64>> = match store.meta.get(meta_key::VOTE)? {
        Some(raw) => Some(decode(&raw, "the vote")?),
        None => None,
    };

    let members = peers_to_members(&peers, &current, store.raft_id, me)?;
    let voters: BTreeSet<u64> =
        members.iter().filter(|(_, (_, non_voter))| !non_voter).map(|(id, _)| *id).collect();
    let nodes: BTreeMap<u64, Node> = members.into_iter().map(|(id, (n, _))| (id, n)).collect();

    let term = last
        .map(|l| l.leader_id.term)
        .unwrap_or(0)
        .max(vote.map(|v| v.leader_id().term).unwrap_or(0))
        + 1;
    let index = last.map(|l| l.index + 1).unwrap_or(1);
    // The same leader id on every survivor (the lowest listed voter), so that survivors' last log
    // ids stay comparable and they can elect one of them.
    let author = voters.iter().next().copied().unwrap_or(store.raft_id);
    let entry: Entry<TypeConfig> = Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, author), index),
        payload: EntryPayload::Membership(Membership::new(vec![voters.clone()], nodes)),
    };
    store.log.insert(index.to_be_bytes(), encode(&entry)?)?;
    store.meta.insert(meta_key::VOTE, encode(&Vote::new(term, author))?)?;
    store.sync_blocking()?;
    std::fs::rename(&file, path.join(PEERS_INFO))
        .map_err(|e| RaftError::Io(format!("renaming {}: {e}", file.display())))?;
    if let Ok(dir) = std::fs::File::open(path.join("raft")) {
        // The rename is what says "done"; without the directory sync it could be undone by a crash
        // and the recovery run again on top of a newer log.
        dir.sync_all()?;
    }
    tracing::warn!(
        voters = ?voters,
        servers = peers.len(),
        index,
        "recovered the raft membership from peers.json (renamed to peers.info)"
    );
    Ok(true)
}

/// Maps peers.json's servers to members: raft id → (node, non_voter).
fn peers_to_members(
    peers: &[PeerEntry],
    current: &Membership<u64, Node>,
    my_raft_id: u64,
    me: &Node,
) -> Result<BTreeMap<u64, (Node, bool)>, RaftError> {
    if peers.is_empty() {
        return Err(RaftError::Config("peers.json lists no servers".into()));
    }
    let mut out = BTreeMap::new();
    for p in peers {
        if p.id.is_empty() || host_port(&p.address).is_err() {
            return Err(RaftError::Config(format!(
                "peers.json: server {:?} needs an id and an address host:port",
                p.id
            )));
        }
        let (raft_id, mut node) = if p.id == me.node_id {
            (my_raft_id, me.clone())
        } else {
            let (id, n) = current.nodes().find(|(_, n)| n.node_id == p.id).ok_or_else(|| {
                RaftError::Config(format!(
                    "peers.json names {:?}, which is not a member this node knows",
                    p.id
                ))
            })?;
            (*id, n.clone())
        };
        if host_port(&node.cluster_addr).ok() != Some(p.address.as_str()) {
            node.cluster_addr = format!("https://{}", p.address);
        }
        node.non_voter = p.non_voter;
        if out.insert(raft_id, (node, p.non_voter)).is_some() {
            return Err(RaftError::Config(format!("peers.json lists {:?} twice", p.id)));
        }
    }
    if !out.contains_key(&my_raft_id) {
        return Err(RaftError::Config(format!(
            "peers.json does not list this node ({:?})",
            me.node_id
        )));
    }
    if out.values().all(|(_, non_voter)| *non_voter) {
        return Err(RaftError::Config("peers.json lists no voter".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod recovery_tests {
    use super::*;

    fn node(id: &str, port: u16) -> Node {
        Node {
            node_id: id.into(),
            api_addr: format!("http://127.0.0.1:{}", port - 1),
            cluster_addr: format!("https://127.0.0.1:{port}"),
            non_voter: false,
        }
    }

    #[test]
    fn peers_map_to_known_members_only() {
        let current = Membership::new(
            vec![BTreeSet::from([1, 2, 3])],
            BTreeMap::from([(1, node("a", 8201)), (2, node("b", 8301)), (3, node("c", 8401))]),
        );
        let me = node("a", 8201);
        let p = |id: &str, addr: &str, nv: bool| PeerEntry {
            id: id.into(),
            address: addr.into(),
            non_voter: nv,
        };
        let m = peers_to_members(&[p("a", "127.0.0.1:8201", false)], &current, 1, &me)
            .expect("survivor alone");
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), vec![1]);

        let m = peers_to_members(
            &[p("a", "127.0.0.1:8201", false), p("c", "10.0.0.3:8201", true)],
            &current,
            1,
            &me,
        )
        .expect("two");
        assert_eq!(m[&3].0.cluster_addr, "https://10.0.0.3:8201", "a new address is taken");
        assert!(m[&3].1);

        assert!(peers_to_members(&[p("zz", "127.0.0.1:1", false)], &current, 1, &me).is_err());
        assert!(peers_to_members(&[p("b", "127.0.0.1:8301", false)], &current, 1, &me).is_err(), "self missing");
        assert!(peers_to_members(&[], &current, 1, &me).is_err());
        assert!(peers_to_members(&[p("a", "nope", false)], &current, 1, &me).is_err());
        assert!(peers_to_members(&[p("a", "127.0.0.1:8201", true)], &current, 1, &me).is_err(), "no voter");
    }
}
