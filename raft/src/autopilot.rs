//! Autopilot, on the leader only: Vault's server health, promotion of new nodes once stable, and
//! (when enabled) removal of dead servers.
//!
//! A node that joins to vote is added as a learner with `Node::non_voter == false`. Every
//! [`TICK`] the leader pings each member over the cluster port (`rpc.rs`, `Ping`) and reads how far
//! openraft has replicated to it. A member is healthy when it answered within
//! `last_contact_threshold` and trails the leader's log by at most `max_trailing_logs`; a learner
//! that stays healthy for `server_stabilization_time` is promoted to voter, one per tick. A node
//! that joined with `non_voter` is never promoted.
//!
//! With `cleanup_dead_servers`, a member not heard from for `dead_server_last_contact_threshold`
//! is removed, as long as at least `min_quorum` voters remain (the server refuses the setting
//! with `min_quorum` < 3, as Vault does).
//!
//! The configuration lives in the server's barrier, which this crate cannot read: the server
//! installs a loader ([`RaftNode::set_autopilot_loader`]) that the task calls whenever this node
//! starts a new term as leader, and pushes changes with [`RaftNode::set_autopilot_config`].
//! Health history is in memory and starts afresh on each new leader, so a new leader waits a full
//! stabilization time before it promotes anyone (Vault's autopilot behaves the same).
//!
//! Removal notices: the leader tells a node it removed (`Removed`), retrying from this task for a
//! bounded time when the node was unreachable, so that a node down at removal learns it when it
//! comes back instead of campaigning.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use openraft::network::RaftNetworkFactory;
use openraft::ServerState;

use crate::error::RaftError;
use crate::rpc::{RpcRequest, RpcResponse};
use crate::types::Node;
use crate::RaftNode;

/// How often the leader looks at its followers.
pub(crate) const TICK: Duration = Duration::from_millis(500);
/// A ping that takes longer than this counts as no answer.
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// Removal notices kept for retry, and how many ticks each is retried (about 10 minutes).
const MAX_PENDING_NOTICES: usize = 64;
const NOTICE_ATTEMPTS: u32 = 1200;
/// Members tracked at most; a cluster is a handful of nodes, this only bounds a misconfiguration.
const MAX_TRACKED: usize = 1024;

/// Vault's autopilot configuration (`sys/storage/raft/autopilot/configuration`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutopilotConfig {
    pub cleanup_dead_servers: bool,
    pub last_contact_threshold: Duration,
    pub dead_server_last_contact_threshold: Duration,
    pub max_trailing_logs: u64,
    pub min_quorum: u64,
    pub server_stabilization_time: Duration,
}

impl Default for AutopilotConfig {
    /// Vault's defaults.
    fn default() -> Self {
        AutopilotConfig {
            cleanup_dead_servers: false,
            last_contact_threshold: Duration::from_secs(10),
            dead_server_last_contact_threshold: Duration::from_secs(24 * 3600),
            max_trailing_logs: 1000,
            min_quorum: 0,
            server_stabilization_time: Duration::from_secs(10),
        }
    }
}

/// Reads the stored configuration (`Ok(None)`: none stored, use the defaults). Called on the
/// leader at the start of each term.
pub type AutopilotConfigLoader = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<Option<AutopilotConfig>, String>> + Send>>
        + Send
        + Sync,
>;

/// One server in [`AutopilotState`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutopilotServer {
    /// Vault's node id (autopilot's `id` and `name`).
    pub node_id: String,
    /// Cluster address, `host:port`.
    pub address: String,
    /// `alive` when heard from within `last_contact_threshold`, else `failed`.
    pub node_status: &'static str,
    /// Since the last answer (zero for the leader itself).
    pub last_contact: Duration,
    pub last_term: u64,
    pub last_index: u64,
    pub healthy: bool,
    /// When the server last became healthy (or when tracking started).
    pub stable_since: SystemTime,
    /// `leader`, `voter` or `non-voter`.
    pub status: &'static str,
    /// `voter` or `non-voter`.
    pub node_type: &'static str,
}

/// `sys/storage/raft/autopilot/state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutopilotState {
    pub healthy: bool,
    pub failure_tolerance: u64,
    pub leader: String,
    pub voters: Vec<String>,
    pub non_voters: Vec<String>,
    /// In raft id order.
    pub servers: Vec<AutopilotServer>,
}

#[derive(Debug, Clone)]
struct Tracked {
    /// When tracking started (this leader's term, or when the member was added).
    first_seen: Instant,
    last_contact: Option<Instant>,
    healthy_since: Option<Instant>,
    stable_since: SystemTime,
}

struct Notice {
    raft_id: u64,
    node: Node,
    attempts: u32,
}

/// Autopilot's state on one node; only the leader uses it.
pub(crate) struct Autopilot {
    config: RwLock<AutopilotConfig>,
    loader: RwLock<Option<AutopilotConfigLoader>>,
    /// The term whose configuration is loaded (0: load at the next tick as leader).
    loaded_term: Mutex<u64>,
    tracked: Mutex<BTreeMap<u64, Tracked>>,
    notices: Mutex<VecDeque<Notice>>,
}

impl Autopilot {
    pub(crate) fn new() -> Self {
        Autopilot {
            config: RwLock::new(AutopilotConfig::default()),
            loader: RwLock::new(None),
            loaded_term: Mutex::new(0),
            tracked: Mutex::new(BTreeMap::new()),
            notices: Mutex::new(VecDeque::new()),
        }
    }

    pub(crate) fn config(&self) -> AutopilotConfig {
        self.config.read().map(|c| c.clone()).unwrap_or_default()
    }

    fn set_config(&self, cfg: AutopilotConfig) {
        if let Ok(mut c) = self.config.write() {
            *c = cfg;
        }
    }

    /// Queues a removal notice for retry (bounded: the oldest is dropped).
    pub(crate) fn queue_notice(&self, raft_id: u64, node: Node) {
        if let Ok(mut q) = self.notices.lock() {
            q.retain(|n| n.raft_id != raft_id);
            if q.len() >= MAX_PENDING_NOTICES {
                q.pop_front();
            }
            q.push_back(Notice { raft_id, node, attempts: 0 });
        }
    }

    fn reset(&self) {
        if let Ok(mut t) = self.tracked.lock() {
            t.clear();
        }
        if let Ok(mut l) = self.loaded_term.lock() {
            *l = 0;
        }
    }
}

impl RaftNode {
    /// The autopilot configuration in effect on this node (meaningful on the leader).
    pub fn autopilot_config(&self) -> AutopilotConfig {
        self.autopilot.config()
    }

    /// Applies a new autopilot configuration at once (the server stores it first).
    pub fn set_autopilot_config(&self, cfg: AutopilotConfig) {
        self.autopilot.set_config(cfg);
    }

    /// Installs how autopilot reads the stored configuration when this node becomes leader.
    pub fn set_autopilot_loader(&self, loader: AutopilotConfigLoader) {
        if let Ok(mut l) = self.autopilot.loader.write() {
            *l = Some(loader);
        }
        self.autopilot.reset();
    }

    /// Autopilot's view of the cluster. Only the leader has one.
    pub fn autopilot_state(&self) -> Result<AutopilotState, RaftError> {
        self.reads()?;
        let cfg = self.autopilot.config();
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.state != ServerState::Leader {
            let leader_api_addr = m
                .current_leader
                .and_then(|id| m.membership_config.membership().get_node(&id))
                .map(|n| n.api_addr.clone());
            return Err(RaftError::NotLeader { leader_api_addr });
        }
        let membership = m.membership_config.membership();
        let voter_ids: BTreeSet<u64> = membership.voter_ids().collect();
        let last_index = m.last_log_index.unwrap_or(0);
        let tracked = self.autopilot.tracked.lock().map(|t| t.clone()).unwrap_or_default();
        let now = Instant::now();
        let mut servers = Vec::new();
        let (mut voters, mut non_voters) = (Vec::new(), Vec::new());
        let mut healthy_voters = 0u64;
        let mut leader = String::new();
        for (id, node) in membership.nodes() {
            let is_voter = voter_ids.contains(id);
            let address = crate::cluster::host_port(&node.cluster_addr)
                .map(str::to_string)
                .unwrap_or_else(|_| node.cluster_addr.clone());
            let server = if *id == self.raft_id {
                leader = node.node_id.clone();
                AutopilotServer {
                    node_id: node.node_id.clone(),
                    address,
                    node_status: "alive",
                    last_contact: Duration::ZERO,
                    last_term: m.current_term,
                    last_index,
                    healthy: true,
                    stable_since: tracked
                        .get(id)
                        .map(|t| t.stable_since)
                        .unwrap_or_else(SystemTime::now),
                    status: "leader",
                    node_type: "voter",
                }
            } else {
                let matched = m.replication.as_ref().and_then(|r| r.get(id)).cloned().flatten();
                let t = tracked.get(id);
                let since = t.and_then(|t| t.last_contact).map(|c| now.duration_since(c));
                let healthy = is_healthy(&cfg, since, matched.map(|l| l.index), last_index);
                let alive = since.is_some_and(|s| s <= cfg.last_contact_threshold);
                AutopilotServer {
                    node_id: node.node_id.clone(),
                    address,
                    node_status: if alive { "alive" } else { "failed" },
                    last_contact: since.unwrap_or(Duration::ZERO),
                    last_term: matched.map(|l| l.leader_id.term).unwrap_or(0),
                    last_index: matched.map(|l| l.index).unwrap_or(0),
                    healthy,
                    stable_since: t.map(|t| t.stable_since).unwrap_or_else(SystemTime::now),
                    status: if is_voter { "voter" } else { "non-voter" },
                    node_type: if is_voter { "voter" } else { "non-voter" },
                }
            };
            if is_voter {
                voters.push(server.node_id.clone());
                if server.healthy {
                    healthy_voters += 1;
                }
            } else {
                non_voters.push(server.node_id.clone());
            }
            servers.push(server);
        }
        let quorum = voter_ids.len() as u64 / 2 + 1;
        Ok(AutopilotState {
            healthy: servers.iter().all(|s| s.healthy),
            failure_tolerance: healthy_voters.saturating_sub(quorum),
            leader,
            voters,
            non_voters,
            servers,
        })
    }
}

fn is_healthy(
    cfg: &AutopilotConfig,
    since_contact: Option<Duration>,
    matched: Option<u64>,
    leader_last: u64,
) -> bool {
    let contact_ok = since_contact.is_some_and(|s| s <= cfg.last_contact_threshold);
    let trailing = leader_last.saturating_sub(matched.unwrap_or(0));
    contact_ok && matched.is_some() && trailing <= cfg.max_trailing_logs
}

/// Runs autopilot until the node is dropped or shut down.
pub(crate) fn spawn(node: Weak<RaftNode>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let Some(node) = node.upgrade() else { return };
            if node.reads().is_err() {
                return;
            }
            if let Err(e) = tick(&node).await {
                tracing::debug!("autopilot: {e}");
            }
        }
    })
}

async fn tick(node: &RaftNode) -> Result<(), RaftError> {
    let ap = &node.autopilot;
    let (is_leader, term, members, voters, replication, last_index) = {
        let metrics = node.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let members: BTreeMap<u64, Node> =
            membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        (
            m.state == ServerState::Leader && m.current_leader == Some(node.raft_id),
            m.current_term,
            members,
            voters,
            m.replication.clone().unwrap_or_default(),
            m.last_log_index.unwrap_or(0),
        )
    };
    if !is_leader || node.is_removed() {
        ap.reset();
        return Ok(());
    }
    load_config(node, term).await;
    let cfg = ap.config();

    // Ping every other member at once; each answer stamps its last contact.
    let mut pings = tokio::task::JoinSet::new();
    for (id, n) in members.iter().filter(|(id, _)| **id != node.raft_id).take(MAX_TRACKED) {
        let mut transport = node.transport.clone();
        let (id, n) = (*id, n.clone());
        pings.spawn(async move {
            let client = transport.new_client(id, &n).await;
            let ok = matches!(
                client.call_control(RpcRequest::Ping, PING_TIMEOUT).await,
                Ok(RpcResponse::Ack)
            );
            (id, ok)
        });
    }
    let mut answered = BTreeSet::new();
    while let Some(r) = pings.join_next().await {
        if let Ok((id, true)) = r {
            answered.insert(id);
        }
    }

    let now = Instant::now();
    let (promote, dead) = {
        let mut tracked =
            ap.tracked.lock().map_err(|_| RaftError::Io("autopilot lock poisoned".into()))?;
        tracked.retain(|id, _| members.contains_key(id));
        let mut promote = None;
        let mut dead = Vec::new();
        for (id, n) in &members {
            let t = tracked.entry(*id).or_insert_with(|| Tracked {
                first_seen: now,
                last_contact: None,
                healthy_since: None,
                stable_since: SystemTime::now(),
            });
            if *id == node.raft_id {
                t.last_contact = Some(now);
                t.healthy_since.get_or_insert(now);
                continue;
            }
            if answered.contains(id) {
                t.last_contact = Some(now);
            }
            let since = t.last_contact.map(|c| now.duration_since(c));
            let matched = replication.get(id).cloned().flatten().map(|l| l.index);
            if is_healthy(&cfg, since, matched, last_index) {
                if t.healthy_since.is_none() {
                    t.healthy_since = Some(now);
                    t.stable_since = SystemTime::now();
                }
            } else {
                t.healthy_since = None;
            }
            let stable = t
                .healthy_since
                .is_some_and(|h| now.duration_since(h) >= cfg.server_stabilization_time);
            if !voters.contains(id) && !n.non_voter && stable && promote.is_none() {
                promote = Some(*id);
            }
            let silent = now.duration_since(t.last_contact.unwrap_or(t.first_seen));
            if cfg.cleanup_dead_servers && silent > cfg.dead_server_last_contact_threshold {
                dead.push(*id);
            }
        }
        (promote, dead)
    };

    if let Some(id) = promote {
        match node.promote(id).await {
            Ok(()) => tracing::info!(raft_id = id, "autopilot: promoted a stable node to voter"),
            Err(e) => tracing::warn!(raft_id = id, error = %e, "autopilot: promotion failed"),
        }
    }
    let mut voter_count = voters.len() as u64;
    for id in dead {
        let is_voter = voters.contains(&id);
        if is_voter && voter_count.saturating_sub(1) < cfg.min_quorum {
            tracing::warn!(raft_id = id, "autopilot: not removing a dead voter: min_quorum");
            continue;
        }
        match node.remove_node(id).await {
            Ok(()) => {
                tracing::warn!(raft_id = id, "autopilot: removed a dead server");
                if is_voter {
                    voter_count -= 1;
                }
            }
            Err(e) => tracing::warn!(raft_id = id, error = %e, "autopilot: removal failed"),
        }
    }
    send_notices(node).await;
    Ok(())
}

async fn load_config(node: &RaftNode, term: u64) {
    let ap = &node.autopilot;
    if ap.loaded_term.lock().map(|l| *l == term).unwrap_or(false) {
        return;
    }
    let loader = ap.loader.read().ok().and_then(|l| l.clone());
    let Some(loader) = loader else { return };
    match loader().await {
        Ok(cfg) => {
            ap.set_config(cfg.unwrap_or_default());
            if let Ok(mut l) = ap.loaded_term.lock() {
                *l = term;
            }
        }
        // Typically sealed; the defaults (or the last configuration) stay until it loads.
        Err(e) => tracing::debug!("autopilot: cannot load the configuration yet: {e}"),
    }
}

/// Sends pending removal notices; a notice stays queued until acknowledged or out of attempts.
pub(crate) async fn send_notices(node: &RaftNode) {
    let pending: Vec<(u64, Node)> = match node.autopilot.notices.lock() {
        Ok(mut q) => {
            q.iter_mut().for_each(|n| n.attempts += 1);
            q.retain(|n| n.attempts <= NOTICE_ATTEMPTS);
            q.iter().map(|n| (n.raft_id, n.node.clone())).collect()
        }
        Err(_) => return,
    };
    for (id, n) in pending {
        if notify_removed(node, id, &n).await {
            if let Ok(mut q) = node.autopilot.notices.lock() {
                q.retain(|x| x.raft_id != id);
            }
        }
    }
}

/// Tells `raft_id` it was removed; true once it acknowledged.
pub(crate) async fn notify_removed(node: &RaftNode, raft_id: u64, target: &Node) -> bool {
    let mut transport = node.transport.clone();
    let client = transport.new_client(raft_id, target).await;
    let sent = client
        .call_control(RpcRequest::Removed { by: node.raft_id }, PING_TIMEOUT)
        .await;
    match sent {
        Ok(RpcResponse::Ack) => {
            tracing::info!(raft_id, "told the removed node that it was removed");
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClusterTls, RaftConfig};

    async fn start(dir: &std::path::Path, name: &str, port: u16, tls: &ClusterTls) -> Arc<RaftNode> {
        let cfg = RaftConfig {
            path: dir.to_path_buf(),
            node_id: name.to_string(),
            api_addr: format!("https://{name}.test:8200"),
            cluster_addr: format!("https://127.0.0.1:{port}"),
        };
        let node = RaftNode::open(cfg).await.expect("open");
        node.start_cluster(std::net::SocketAddr::from(([127, 0, 0, 1], port)), tls)
            .await
            .expect("start cluster");
        node
    }

    async fn until(what: &str, timeout: Duration, check: impl Fn() -> bool) {
        let deadline = Instant::now() + timeout;
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn is_voter(leader: &RaftNode, id: u64) -> Option<bool> {
        leader.configuration().into_iter().find(|p| p.raft_id == id).map(|p| p.voter)
    }

    /// In one process over real TLS: autopilot promotes a stable learner, never a non-voter, and a
    /// removed node learns it from the leader and remembers it after a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn promotion_non_voters_and_removal_notice() {
        let tls = ClusterTls::generate().expect("tls").without_ca_key();
        let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::TempDir::new().expect("tmp")).collect();
        let held: Vec<std::net::TcpListener> =
            (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
        let ports: Vec<u16> = held.iter().map(|l| l.local_addr().expect("addr").port()).collect();
        drop(held);
        let n1 = start(dirs[0].path(), "n1", ports[0], &tls).await;
        let n2 = start(dirs[1].path(), "n2", ports[1], &tls).await;
        let n3 = start(dirs[2].path(), "n3", ports[2], &tls).await;
        n1.bootstrap_single().await.expect("bootstrap");
        let stabilization = Duration::from_millis(600);
        n1.set_autopilot_config(AutopilotConfig {
            server_stabilization_time: stabilization,
            ..Default::default()
        });

        let added = Instant::now();
        n1.add_learner(n2.raft_id(), n2.node().clone()).await.expect("add n2");
        let mut n3_node = n3.node().clone();
        n3_node.non_voter = true;
        n1.add_learner(n3.raft_id(), n3_node).await.expect("add n3");
        assert_eq!(is_voter(&n1, n2.raft_id()), Some(false), "a new node starts as a learner");
        until("n2 promoted", Duration::from_secs(15), || is_voter(&n1, n2.raft_id()) == Some(true)).await;
        assert!(added.elapsed() >= stabilization, "promoted before the stabilization time");

        let state = n1.autopilot_state().expect("state on the leader");
        assert_eq!(state.leader, "n1");
        let mut voters = state.voters.clone();
        voters.sort();
        assert_eq!(voters, vec!["n1".to_string(), "n2".to_string()]);
        assert_eq!(state.non_voters, vec!["n3".to_string()]);
        assert!(n2.autopilot_state().is_err(), "only the leader has autopilot state");
        tokio::time::sleep(stabilization * 3).await;
        assert_eq!(is_voter(&n1, n3.raft_id()), Some(false), "a non-voter is never promoted");

        n1.remove_node(n2.raft_id()).await.expect("remove n2");
        until("n2 knows it was removed", Duration::from_secs(10), || n2.is_removed()).await;
        assert!(!n1.is_removed() && !n3.is_removed());
        n2.shutdown().await.expect("shutdown n2");
        let reopened = RaftNode::open(RaftConfig {
            path: dirs[1].path().to_path_buf(),
            node_id: "n2".into(),
            api_addr: "https://n2.test:8200".into(),
            cluster_addr: format!("https://127.0.0.1:{}", ports[1]),
        })
        .await
        .expect("reopen n2");
        assert!(reopened.is_removed(), "the removal is durable");
        for n in [&reopened, &n1, &n3] {
            n.shutdown().await.expect("shutdown");
        }
    }

    #[test]
    fn health_needs_contact_and_a_short_trail() {
        let cfg = AutopilotConfig { max_trailing_logs: 10, ..Default::default() };
        let recent = Some(Duration::from_secs(1));
        assert!(is_healthy(&cfg, recent, Some(95), 100));
        assert!(!is_healthy(&cfg, recent, Some(80), 100), "too far behind");
        assert!(!is_healthy(&cfg, recent, None, 100), "nothing replicated yet");
        assert!(!is_healthy(&cfg, None, Some(100), 100), "never answered");
        assert!(!is_healthy(&cfg, Some(Duration::from_secs(11)), Some(100), 100), "silent");
    }

    #[test]
    fn defaults_are_vaults() {
        let d = AutopilotConfig::default();
        assert!(!d.cleanup_dead_servers);
        assert_eq!(d.last_contact_threshold, Duration::from_secs(10));
        assert_eq!(d.dead_server_last_contact_threshold, Duration::from_secs(86400));
        assert_eq!(d.max_trailing_logs, 1000);
        assert_eq!(d.min_quorum, 0);
        assert_eq!(d.server_stabilization_time, Duration::from_secs(10));
    }

    #[test]
    fn notices_are_bounded() {
        let ap = Autopilot::new();
        for i in 0..(MAX_PENDING_NOTICES as u64 + 10) {
            ap.queue_notice(i + 1, Node::default());
        }
        assert_eq!(ap.notices.lock().map(|q| q.len()).unwrap_or(0), MAX_PENDING_NOTICES);
    }
}
