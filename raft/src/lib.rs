//! Integrated storage for vaultd: Raft (openraft 0.9.25) over one sled database, exposed to the
//! server as a `vaultd_storage::Backend`, with the cluster port that carries Raft between nodes.
//!
//! The server crate sees only [`RaftNode`], [`RaftConfig`], [`RaftStatus`], [`Node`],
//! [`PeerInfo`], [`ClusterTls`], the [`cluster`] module (listener, protocol hook, dialer) and
//! [`RaftError`]; every openraft type stays inside this crate, so a move to openraft 0.10 (or a
//! different log store) changes nothing outside it.
//!
//! ## Codemap
//!
//! - `store.rs`: the sled database (`<path>/vaultd.sled`) and the sync that makes sled durable.
//! - `log_store.rs`: the Raft log, vote and committed id (openraft's `RaftLogStorage`).
//! - `state_machine.rs`: the key-value state, snapshots, and local reads (`RaftStateMachine`).
//! - `snapshot.rs`: saving the state machine to a file and restoring one through the log.
//! - `backend.rs`: the `Backend` implementation and the group commit in front of openraft.
//! - `membership.rs`: adding, promoting and removing nodes; the configuration as Vault shows it;
//!   the removed flag (a removed node knows it and stays out of elections, across restarts);
//!   `peers.json` recovery before openraft starts.
//! - `autopilot.rs`: on the leader, Vault's autopilot: per-server health from pings and
//!   replication, promotion of stable learners, dead-server cleanup, retried removal notices.
//! - `tls.rs`: [`ClusterTls`], the cluster CA and node certificate (ECDSA P-521), and the rustls
//!   configurations (mutual TLS, trust in the cluster CA only).
//! - `cluster.rs`: the cluster port: one TLS listener that dispatches connections by ALPN
//!   (`raft_storage_v1`, and whatever the server registers, e.g. request forwarding), and `dial`.
//! - `rpc.rs`: the Raft protocol on that port: length-prefixed MessagePack frames, request ids,
//!   and the server side that hands requests to the local Raft.
//! - `network.rs`: the client side (openraft's `RaftNetworkFactory`): one lazily dialed,
//!   shared connection per peer, and openraft's error kinds.
//! - `types.rs`: the openraft type configuration, [`Node`], and what a log entry carries.
//!
//! ## Invariants
//!
//! - **A write is acknowledged only after its log entry is synced to disk** (sled flush plus
//!   fdatasync of sled's files) and applied to the local state machine.
//! - **Vote and committed id are synced before openraft is told they are saved.**
//! - **Every read sees only applied, hence committed and durable, entries.**
//! - **A snapshot install replaces the state machine as a whole**, also across a crash.
//! - **Only cluster members talk Raft**: the cluster port requires a client certificate signed by
//!   the cluster CA, and a request names the raft id it is for, so a node never acts on a message
//!   meant for another.
//!
//! ## A node's life in a cluster
//!
//! [`RaftNode::open`] starts Raft on the local data; reads work at once. The cluster port starts
//! with [`RaftNode::start_cluster`] (the server calls it once it has the cluster TLS identity,
//! which lives in the barrier). The first node bootstraps itself ([`RaftNode::bootstrap_single`]);
//! a joining node opens, starts its cluster port and waits, and the leader adds it with
//! [`RaftNode::add_learner`] (the joining node reports its [`RaftNode::raft_id`] and [`Node`]);
//! autopilot promotes it once it has been healthy for the stabilization time, unless its `Node`
//! says `non_voter`.
//!
//! ### Elections before the cluster port
//!
//! A node campaigns only when it can reach its peers. Elections start disabled; `open` enables
//! them when this node has no membership (it then never campaigns anyway: it is no voter) or is
//! the only voter, and `start_cluster` enables them otherwise. Without this, a sealed voter (no
//! cluster TLS yet) would time out, raise its term again and again, and depose the healthy leader
//! the moment it became reachable.
//!
//! openraft 0.9 restores a node that was leader when it stopped as leader of its old term at
//! start-up. Such a node cannot commit anything (its peers have moved on) and steps down at the
//! first message from the real leader, but until then [`RaftStatus::is_leader`] is true on it:
//! only [`RaftNode::wait_for_leader`] (a quorum round) proves leadership.
//!
//! ## Write throughput
//!
//! openraft 0.9 appends, syncs, commits (another sync, for the committed id) and applies one entry
//! at a time, and waits for each before taking the next client request, so a node manages only
//! about 1,300 entries a second here. `backend.rs` therefore merges concurrent writes into one
//! entry (group commit): `bench_put_throughput` (`cargo test --release -p vaultd-raft --
//! --ignored bench --nocapture`) measures ~34,000 puts/s with 32 writers on the 2-core dev box.
//!
//! ## Timing
//!
//! The Raft timing suits a LAN and aims at a failover under a second. openraft runs its timers
//! on a tick of 1.5 heartbeat intervals, and a leader sends a heartbeat on each tick: every
//! 150 ms with [`HEARTBEAT_INTERVAL`] = 100 ms. A follower calls an election once it has heard
//! nothing for openraft's leader lease (the maximum election timeout, [`LEADER_LEASE`], 400 ms)
//! plus its own election timeout (drawn once per process from 200-400 ms), checked on the next
//! tick: 600-950 ms, four heartbeats at least, so that a few late or lost ones (an fsync stall,
//! CPU contention on a 2-core host) do not depose a healthy leader. The maximum is twice the
//! minimum so that candidates' timers spread out and split votes stay rare. A SIGKILLed leader
//! is replaced, and the first write acknowledged through a survivor, 0.6-1.0 s after the kill
//! (`bench/ha.sh`).
//!
//! openraft 0.9 gives an AppendEntries only the heartbeat interval to complete, so the transport
//! asks openraft to split an AppendEntries above 4 MiB (`network.rs`); one entry, up to
//! [`MAX_TRANSACTION_BYTES`], always travels alone.

mod autopilot;
mod backend;
pub mod cluster;
mod error;
mod log_store;
mod membership;
mod network;
mod rpc;
mod snapshot;
mod state_machine;
mod store;
mod tls;
mod types;

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, InitializeError, RaftError as OpenraftError};
use openraft::metrics::WaitError;
use openraft::{Raft, ServerState, SnapshotPolicy};

pub use crate::autopilot::{
    AutopilotConfig, AutopilotConfigLoader, AutopilotServer, AutopilotState,
};
pub use crate::backend::MAX_TRANSACTION_BYTES;
pub use crate::cluster::{ClusterHandler, ClusterListener, ClusterStream};
pub use crate::error::RaftError;
pub use crate::membership::PeerInfo;
pub use crate::snapshot::{check_state_file, StateFileInfo};
pub use crate::tls::{ClusterTls, TlsKeyring, CLUSTER_SERVER_NAME};
pub use crate::types::Node;

use crate::backend::{propose, Proposer, RaftBackend};
use crate::cluster::{Protocols, ALPN_RAFT};
use crate::log_store::LogStore;
use crate::membership::Removal;
use crate::network::Transport;
use crate::rpc::RaftRpcService;
use crate::state_machine::{SmShared, StateMachineStore};
use crate::store::Store;
use crate::types::{Op, TypeConfig};

/// openraft's leader lease, which is its maximum election timeout: a voter that heard from a
/// leader grants no vote to another candidate until this long has passed. The server's HA lease
/// (`vaultd::ha::LEASE`) must stay below it, so that a leader cut off from its quorum stops
/// serving before another can be elected. See "Timing" in the crate docs.
pub const LEADER_LEASE: Duration = Duration::from_millis(400);

/// openraft's heartbeat interval, which is also the timeout of every AppendEntries (0.9 gives
/// it no other); it ticks, and so sends heartbeats, every 1.5 intervals.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);

/// The shortest election timeout; a follower's is drawn from here up to [`LEADER_LEASE`].
const ELECTION_TIMEOUT_MIN: Duration = Duration::from_millis(200);

/// How long `bootstrap_single` waits for this node to become leader. A one-voter cluster elects
/// itself at once; the margin covers a slow first sync.
const BOOTSTRAP_LEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `shutdown` waits for openraft's tasks to release the database, so that the directory
/// can be reopened right away (sled holds an exclusive lock on it while any handle is alive).
const SHUTDOWN_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
const SHUTDOWN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// What the server passes from `storage "raft" { ... }` and the listener configuration.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// Data directory; the database lives in `<path>/vaultd.sled`.
    pub path: PathBuf,
    /// Vault's string node id. A data directory stays bound to the node id it was created with.
    pub node_id: String,
    pub api_addr: String,
    pub cluster_addr: String,
}

/// A point-in-time view of this node's Raft state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    pub node_id: String,
    /// The numeric id openraft knows this node by (random, fixed when the directory was created).
    pub raft_id: u64,
    /// This node is in the leader state of its current term. Not proof of leadership: a deposed
    /// leader believes it until it hears of the newer term (see the crate docs, "Elections before
    /// the cluster port"); check `millis_since_quorum_ack` too.
    pub is_leader: bool,
    /// On a leader, how long ago a quorum last acknowledged it, as of openraft's last metrics
    /// report (`None`: not leader, or no acknowledgement yet in this term). What an active node
    /// watches to stop serving when it is cut off.
    pub millis_since_quorum_ack: Option<u64>,
    pub leader: Option<Node>,
    pub term: u64,
    /// Index of the last entry known committed and saved on this node.
    pub committed_index: u64,
    pub applied_index: u64,
}

/// One node of vaultd's integrated storage. Shared as `Arc<RaftNode>`.
pub struct RaftNode {
    raft: Raft<TypeConfig>,
    raft_id: u64,
    node: Node,
    /// The data directory (`RaftConfig::path`).
    dir: PathBuf,
    /// The client side of the cluster transport (shared with openraft).
    transport: Transport,
    /// What the cluster port serves: Raft, plus what the server registers.
    protocols: Protocols,
    /// The cluster port, once started. An async lock: starting it binds a socket.
    cluster: tokio::sync::Mutex<Option<ClusterListener>>,
    /// [`RaftStatus`] as of openraft's last metrics report, for [`RaftNode::subscribe`].
    status_tx: tokio::sync::watch::Sender<RaftStatus>,
    /// When the watch task last saw the metrics, and `millis_since_quorum_ack` then: openraft
    /// reports that age only when it reports metrics, so the true age is that plus the time
    /// since (see [`RaftNode::quorum_ack_age`]).
    quorum_ack: Arc<Mutex<(Instant, Option<u64>)>>,
    /// `None` once shut down: reads and writes then fail with `Unavailable`.
    open: RwLock<Option<Open>>,
    /// Whether this node was removed from the cluster (`membership.rs`).
    removal: Arc<Removal>,
    autopilot: autopilot::Autopilot,
    /// The removal watcher and autopilot; aborted at shutdown.
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The highest index a commit hint was handed to the local Raft for
    /// ([`RaftNode::learn_commit`]): hints at or below it are dropped, so that the many answers
    /// of one entry's writes cost one message.
    hinted: std::sync::atomic::AtomicU64,
}

/// What a leader's commit hint carries: its vote and a log id it has applied (so committed).
#[derive(serde::Serialize, serde::Deserialize)]
struct CommitHint {
    vote: openraft::Vote<u64>,
    applied: openraft::LogId<u64>,
}

struct Open {
    store: Arc<Store>,
    reads: Arc<SmShared>,
    proposer: Proposer,
}

impl RaftNode {
    /// Opens (creating if needed) the sled database and starts openraft. Reads work at once, from
    /// the local state machine, which already includes every write this node acknowledged before
    /// a restart; writes need a leader.
    pub async fn open(cfg: RaftConfig) -> Result<Arc<RaftNode>, RaftError> {
        if cfg.node_id.is_empty() {
            return Err(RaftError::Config("node_id must not be empty".into()));
        }
        let (path, node_id) = (cfg.path.clone(), cfg.node_id.clone());
        let dir = cfg.path.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&path, &node_id))
            .await
            .map_err(|e| RaftError::Io(format!("the open task failed: {e}")))??;
        let (state_machine, reads) = StateMachineStore::open(Arc::clone(&store))?;
        let node = Node {
            node_id: cfg.node_id,
            api_addr: cfg.api_addr,
            cluster_addr: cfg.cluster_addr,
            non_voter: false,
        };
        let state_machine = {
            let (path, store, me) = (cfg.path.clone(), Arc::clone(&store), node.clone());
            let (sm, recovered) = tokio::task::spawn_blocking(move || {
                let r = membership::recover_from_peers_json(&path, &store, &state_machine, &me);
                (state_machine, r)
            })
            .await
            .map_err(|e| RaftError::Io(format!("the peers.json task failed: {e}")))?;
            recovered?;
            sm
        };
        let removed = store.is_removed()?;

        // Raft::new re-applies committed entries the state machine lost in a crash before it
        // returns (see state_machine.rs), which is why reads are complete right after `open`.
        // Elections start disabled; see "Elections before the cluster port" in the crate docs.
        let transport = Transport::new();
        let raft = Raft::new(
            store.raft_id,
            Arc::new(raft_config()?),
            transport.clone(),
            LogStore::new(Arc::clone(&store)),
            state_machine,
        )
        .await
        .map_err(|e| RaftError::Stopped(format!("raft failed to start: {e}")))?;
        let raft_id = store.raft_id;
        let voters = raft
            .with_raft_state(|st| st.membership_state.effective().voter_ids().collect::<Vec<u64>>())
            .await
            .map_err(|e| RaftError::Stopped(format!("raft failed to start: {e}")))?;
        if removed {
            tracing::warn!(raft_id, "this node was removed from its raft cluster; it stays out of elections");
        } else if voters.is_empty() || voters == [raft_id] {
            raft.runtime_config().elect(true);
        }

        let proposer = Proposer::start(raft.clone());
        let removal = Arc::new(Removal::new(removed, &store, raft.clone()));
        let protocols = Protocols::default();
        protocols.insert(
            ALPN_RAFT,
            Arc::new(RaftRpcService { raft: raft.clone(), raft_id, removal: Arc::clone(&removal) }),
        );
        tracing::info!(raft_id, node = %node, voters = voters.len(), "raft storage opened");
        let initial = status_from(&raft.metrics().borrow(), raft_id, &node.node_id, 0);
        let (status_tx, _) = tokio::sync::watch::channel(initial);
        let quorum_ack = Arc::new(Mutex::new((Instant::now(), None)));
        tokio::spawn(watch_metrics(
            raft.metrics(),
            status_tx.clone(),
            Arc::clone(&quorum_ack),
            Arc::downgrade(&store),
            raft_id,
            node.node_id.clone(),
        ));
        let watcher = membership::spawn_watcher(raft.clone(), Arc::clone(&removal), raft_id);
        let node = Arc::new(RaftNode {
            raft,
            raft_id,
            node,
            dir,
            transport,
            protocols,
            cluster: tokio::sync::Mutex::new(None),
            status_tx,
            quorum_ack,
            open: RwLock::new(Some(Open { store, reads, proposer })),
            removal,
            autopilot: autopilot::Autopilot::new(),
            tasks: std::sync::Mutex::new(Vec::new()),
            hinted: std::sync::atomic::AtomicU64::new(0),
        });
        let pilot = autopilot::spawn(Arc::downgrade(&node));
        if let Ok(mut tasks) = node.tasks.lock() {
            tasks.extend([watcher, pilot]);
        }
        Ok(node)
    }

    /// A watch of this node's [`RaftStatus`], updated at every openraft metrics report (leader
    /// changes, applies, commits, and the leader's quorum acknowledgements). It closes when Raft
    /// shuts down.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<RaftStatus> {
        self.status_tx.subscribe()
    }

    /// On a leader: how long ago a quorum last acknowledged it, at least (`None`: not leader, or
    /// no acknowledgement yet this term). Unlike [`RaftStatus::millis_since_quorum_ack`] it keeps
    /// growing while openraft reports nothing, which is what a leader cut off from its peers
    /// needs to notice that it must stop serving.
    pub fn quorum_ack_age(&self) -> Option<Duration> {
        let (seen, ms) = *self.quorum_ack.lock().unwrap_or_else(|p| p.into_inner());
        ms.map(|ms| Duration::from_millis(ms) + seen.elapsed())
    }

    /// The number of voters in the current membership.
    pub fn voter_count(&self) -> usize {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().voter_ids().count()
    }

    /// Takes this node out of the cluster's traffic while it is sealed: closes the cluster port
    /// and every outgoing connection, and stops elections and heartbeats, so a sealed leader's
    /// followers time out and elect another node. [`RaftNode::start_cluster`] undoes it.
    pub async fn stop_cluster(&self) {
        let rc = self.raft.runtime_config();
        rc.elect(false);
        rc.heartbeat(false);
        if let Some(listener) = self.cluster.lock().await.take() {
            listener.shutdown();
        }
        self.transport.close();
        tracing::info!(raft_id = self.raft_id, "raft cluster transport stopped");
    }

    /// Hands leadership away (openraft 0.9 has no leadership transfer): stops sending heartbeats
    /// and standing for election, so the followers time out and elect one of themselves, waits
    /// (bounded by `timeout`) until another node leads, then takes part again. Returns whether
    /// another node took over. Callers stop writing first: an append would be a heartbeat too.
    pub async fn step_down(&self, timeout: Duration) -> bool {
        if !self.status().is_leader {
            return true;
        }
        let rc = self.raft.runtime_config();
        rc.heartbeat(false);
        rc.elect(false);
        let me = self.raft_id;
        let handed = self
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != me),
                "another node leads",
            )
            .await
            .is_ok();
        // Only a node whose cluster port still runs may campaign (it may have been sealed
        // meanwhile, which stops both).
        if self.transport.is_started() {
            rc.heartbeat(true);
            rc.elect(true);
        }
        tracing::info!(raft_id = me, handed, "raft step-down finished");
        handed
    }

    /// Starts the cluster port on `bind` (Vault's `cluster_address`; peers reach it at this
    /// node's advertised `cluster_addr`) with `tls`, and lets this node talk to its peers: Raft
    /// RPCs in both directions, and elections if it is one of several voters. Returns the bound
    /// address (the real port when `bind` has port 0).
    ///
    /// Calling it again swaps the TLS identity for new connections and keeps the listener (a
    /// different `bind` is then ignored).
    pub async fn start_cluster(
        &self,
        bind: SocketAddr,
        tls: &ClusterTls,
    ) -> Result<SocketAddr, RaftError> {
        self.start_cluster_keyring(bind, &TlsKeyring::new(tls.clone())).await
    }

    /// [`RaftNode::start_cluster`] with a keyring: presents its current identity and trusts
    /// every CA in it. Calling it again with a changed keyring is how a rotation reaches this
    /// node; connections already established keep their handshake's identity.
    pub async fn start_cluster_keyring(
        &self,
        bind: SocketAddr,
        tls: &TlsKeyring,
    ) -> Result<SocketAddr, RaftError> {
        let client = tls.client_config(ALPN_RAFT)?;
        let server = tls.server_config()?;
        let mut cluster = self.cluster.lock().await;
        // Checked under the lock: `shutdown` marks the node closed before it takes this lock to
        // stop the listener, so no listener can start after it.
        self.reads()?;
        let local_addr = match &*cluster {
            Some(listener) => {
                listener.set_server_config(server);
                listener.local_addr()
            }
            None => {
                let listener =
                    ClusterListener::bind_with(bind, server, self.protocols.clone()).await?;
                let addr = listener.local_addr();
                *cluster = Some(listener);
                addr
            }
        };
        self.transport.set_tls(client);
        if !self.is_removed() {
            self.raft.runtime_config().heartbeat(true);
            self.raft.runtime_config().elect(true);
        }
        tracing::info!(raft_id = self.raft_id, %local_addr, "raft cluster transport started");
        Ok(local_addr)
    }

    /// Serves another protocol on the cluster port, under ALPN name `alpn` (e.g.
    /// [`cluster::ALPN_REQUEST_FORWARDING`]), before or after [`RaftNode::start_cluster`].
    /// Registering a name again replaces its handler; Raft's own name is refused.
    pub fn register_protocol(
        &self,
        alpn: &[u8],
        handler: Arc<dyn ClusterHandler>,
    ) -> Result<(), RaftError> {
        if alpn == ALPN_RAFT {
            return Err(RaftError::Config("the raft_storage_v1 protocol is raft's own".into()));
        }
        if alpn.is_empty() || alpn.len() > 255 {
            return Err(RaftError::Config("an ALPN name is 1 to 255 bytes".into()));
        }
        self.protocols.insert(alpn, handler);
        Ok(())
    }

    /// Stops serving `alpn` on new connections (Raft's own name is left alone).
    pub fn unregister_protocol(&self, alpn: &[u8]) {
        if alpn != ALPN_RAFT {
            self.protocols.remove(alpn);
        }
    }

    /// True once this node's Raft has a membership (it was bootstrapped or has joined).
    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    /// Bootstraps a one-voter cluster made of this node and waits (bounded) until it leads.
    /// A node that already has a membership is left alone: `Err(RaftError::AlreadyInitialized)`.
    pub async fn bootstrap_single(&self) -> Result<(), RaftError> {
        let members = BTreeMap::from([(self.raft_id, self.node.clone())]);
        match self.raft.initialize(members).await {
            Ok(()) => {}
            Err(OpenraftError::APIError(InitializeError::NotAllowed(_))) => {
                return Err(RaftError::AlreadyInitialized)
            }
            Err(OpenraftError::APIError(e)) => {
                return Err(RaftError::Config(format!("bootstrap failed: {e}")))
            }
            Err(OpenraftError::Fatal(f)) => return Err(RaftError::Stopped(f.to_string())),
        }
        tracing::info!(raft_id = self.raft_id, "bootstrapped a single-node raft cluster");
        self.wait_for_leader(BOOTSTRAP_LEADER_TIMEOUT).await
    }

    /// Waits (bounded by `timeout`) until this node is leader and has applied everything committed
    /// before its term, so that its local reads are up to date. Used after a restart of a node
    /// that should lead (a single-node cluster).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<(), RaftError> {
        let deadline = Instant::now() + timeout;
        let id = self.raft_id;
        self.raft
            .wait(Some(timeout))
            .metrics(
                |m| m.state == ServerState::Leader && m.current_leader == Some(id),
                "this node leads",
            )
            .await
            .map_err(|e| match e {
                WaitError::Timeout(..) => {
                    RaftError::Timeout(timeout, "this node to become raft leader")
                }
                WaitError::ShuttingDown => RaftError::Stopped("raft is shutting down".into()),
            })?;
        // A new leader knows all committed entries only once an entry of its own term commits;
        // ensure_linearizable waits for that and for the state machine to apply up to it.
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, self.raft.ensure_linearizable()).await {
            Err(_) => {
                Err(RaftError::Timeout(timeout, "the new raft leader to apply its first entry"))
            }
            Ok(Ok(_)) => Ok(()),
            Ok(Err(OpenraftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(RaftError::NotLeader { leader_api_addr: f.leader_node.map(|n| n.api_addr) })
            }
            Ok(Err(OpenraftError::APIError(e))) => {
                Err(RaftError::Stopped(format!("lost leadership: {e}")))
            }
            Ok(Err(OpenraftError::Fatal(f))) => Err(RaftError::Stopped(f.to_string())),
        }
    }

    /// The storage backend over this node: writes go through Raft, reads are local.
    pub fn backend(self: &Arc<Self>) -> Arc<dyn vaultd_storage::Backend> {
        Arc::new(RaftBackend { node: Arc::clone(self) })
    }

    pub fn status(&self) -> RaftStatus {
        let committed_index = match self.open.read() {
            Ok(open) => open.as_ref().map(|o| o.store.committed_index()).unwrap_or(0),
            Err(_) => 0,
        };
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        status_from(&m, self.raft_id, &self.node.node_id, committed_index)
    }

    /// On the leader: how long ago each other member last acknowledged a message from it
    /// (`None`: never this term), by raft id. Empty on a follower.
    pub fn peer_contact(&self) -> BTreeMap<u64, Option<Duration>> {
        if !self.status().is_leader {
            return BTreeMap::new();
        }
        self.configuration()
            .iter()
            .filter(|p| p.raft_id != self.raft_id)
            .map(|p| (p.raft_id, self.transport.last_answer(p.raft_id)))
            .collect()
    }

    /// On the leader: the highest log index each other member has matched, by raft id (0 when
    /// unknown). Empty on a follower. A rotation waits on it before presenting a new identity.
    pub fn peers_matched(&self) -> BTreeMap<u64, u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.state != ServerState::Leader {
            return BTreeMap::new();
        }
        let replication = m.replication.as_ref();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| *id != self.raft_id)
            .map(|id| {
                let matched = replication
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map(|l| l.index)
                    .unwrap_or(0);
                (id, matched)
            })
            .collect()
    }

    /// Swaps the cluster port's TLS (listener and dialer) for new connections; established
    /// connections keep theirs. `false` (and nothing changes) when the port is not started.
    pub async fn set_cluster_tls(&self, tls: &TlsKeyring) -> Result<bool, RaftError> {
        let client = tls.client_config(ALPN_RAFT)?;
        let server = tls.server_config()?;
        let cluster = self.cluster.lock().await;
        let Some(listener) = &*cluster else { return Ok(false) };
        listener.set_server_config(server);
        self.transport.set_tls(client);
        Ok(true)
    }

    /// Whether this node is in the leader state, and its last applied index: the cheap part of
    /// [`RaftNode::status`], for a check on every request.
    ///
    /// The index is the state machine's own (see [`RaftNode::applied_index`]), so everything it
    /// names is readable locally when this returns.
    pub fn leader_state_and_applied(&self) -> (bool, u64) {
        let leader = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            m.state == ServerState::Leader && m.current_leader == Some(self.raft_id)
        };
        (leader, self.applied_index())
    }

    /// The last index applied to the local state machine, as the state machine published it
    /// (openraft's metrics report it later, once its core task has taken the notification).
    /// 0 once shut down.
    pub fn applied_index(&self) -> u64 {
        self.reads().map_or(0, |r| r.applied.borrow().map_or(0, |l| l.index))
    }

    /// Stops Raft and closes the database. Writes waiting for a commit fail with `Unavailable`
    /// (they may or may not have committed). Calling it again is a no-op.
    pub async fn shutdown(&self) -> Result<(), RaftError> {
        let open = match self.open.write() {
            Ok(mut open) => open.take(),
            Err(_) => return Err(RaftError::Io("the raft node lock is poisoned".into())),
        };
        let Some(Open { store, reads, proposer }) = open else {
            return Ok(());
        };
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.drain(..).for_each(|t| t.abort());
        }
        // Peers see this node go at once (connections close) rather than after a timeout.
        if let Some(listener) = self.cluster.lock().await.take() {
            listener.shutdown();
        }
        self.transport.close();
        proposer.stop();
        drop(reads);
        let stopped = self
            .raft
            .shutdown()
            .await
            .map_err(|e| RaftError::Stopped(format!("the raft core task failed: {e}")));

        // openraft's state-machine task ends shortly after the core; it holds the database.
        let deadline = Instant::now() + SHUTDOWN_RELEASE_TIMEOUT;
        while Arc::strong_count(&store) > 1 && Instant::now() < deadline {
            tokio::time::sleep(SHUTDOWN_POLL_INTERVAL).await;
        }
        if Arc::strong_count(&store) > 1 {
            tracing::warn!("raft tasks still hold the database after {SHUTDOWN_RELEASE_TIMEOUT:?}");
        }
        // Persists the last applies too, so the next start has nothing to re-apply.
        let synced = store.sync().await;
        drop(store);
        tracing::info!(raft_id = self.raft_id, "raft storage shut down");
        stopped.and(synced)
    }

    fn reads(&self) -> Result<Arc<SmShared>, RaftError> {
        let open =
            self.open.read().map_err(|_| RaftError::Io("the raft node lock is poisoned".into()))?;
        open.as_ref()
            .map(|o| Arc::clone(&o.reads))
            .ok_or_else(|| RaftError::Stopped("the raft node is shut down".into()))
    }

    async fn propose(&self, ops: Vec<Op>) -> vaultd_storage::Result<()> {
        let queue = {
            let open = self
                .open
                .read()
                .map_err(|_| vaultd_storage::Error::Io("the raft node lock is poisoned".into()))?;
            match open.as_ref() {
                Some(o) => o.proposer.sender(),
                None => {
                    return Err(vaultd_storage::Error::Unavailable(
                        "the raft node is shut down".into(),
                    ))
                }
            }
        };
        propose(queue, ops).await
    }

    /// On the leader: a ReadIndex round (openraft's `get_read_log_id`, heartbeats to a quorum
    /// that confirm this node still leads), then the wait until this node has applied up to the
    /// returned index. The index is what any node must have applied before a read it serves is
    /// linearizable. Fails on a node that is not (or no longer) the leader, or without a quorum
    /// within `timeout`.
    pub async fn read_index(&self, timeout: Duration) -> Result<u64, RaftError> {
        let deadline = Instant::now() + timeout;
        let round = tokio::time::timeout(timeout, self.raft.get_read_log_id()).await;
        let index = match round {
            Err(_) => return Err(RaftError::Timeout(timeout, "a quorum to confirm the leader")),
            Ok(Ok((read, _))) => read.map(|l| l.index).unwrap_or(0),
            Ok(Err(OpenraftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                return Err(RaftError::NotLeader { leader_api_addr: f.leader_node.map(|n| n.api_addr) })
            }
            Ok(Err(OpenraftError::APIError(e))) => {
                return Err(RaftError::Stopped(format!("lost leadership: {e}")))
            }
            Ok(Err(OpenraftError::Fatal(f))) => return Err(RaftError::Stopped(f.to_string())),
        };
        self.wait_applied(index, deadline.saturating_duration_since(Instant::now())).await?;
        Ok(index)
    }

    /// Waits, at most `timeout`, until this node's state machine has applied `index`.
    /// It watches the state machine itself, not openraft's metrics: see `SmShared::applied`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), RaftError> {
        let mut applied = self.reads()?.applied.subscribe();
        let reached =
            tokio::time::timeout(timeout, applied.wait_for(|a| a.map_or(0, |l| l.index) >= index))
                .await
                .map(|r| r.is_ok());
        match reached {
            Ok(true) => Ok(()),
            Ok(false) => Err(RaftError::Stopped("raft is shutting down".into())),
            Err(_) => Err(RaftError::Timeout(timeout, "this node to apply the index")),
        }
    }

    /// On the leader: a commit hint, an opaque text naming this node's vote and the last log id
    /// it has applied, for a follower that relayed a client's write here and must apply it
    /// before answering ([`RaftNode::learn_commit`]). `None` on any other node.
    pub fn commit_hint(&self) -> Option<String> {
        let vote = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            if m.state != ServerState::Leader || m.current_leader != Some(self.raft_id) {
                return None;
            }
            m.vote
        };
        let applied = (*self.reads().ok()?.applied.borrow())?;
        serde_json::to_string(&CommitHint { vote, applied }).ok()
    }

    /// On a follower: hands a leader's [`RaftNode::commit_hint`] to the local Raft as the
    /// heartbeat that leader would send (its vote; the applied log id as both the previous log
    /// id and the commit), so that this node applies the entry now rather than when the
    /// leader's replication stream next carries the commit index, which under load can be after
    /// the next entry's round trip and syncs. openraft checks it as any AppendEntries: a vote
    /// older than this node's is refused, and the commit is taken only if this node's log holds
    /// exactly that log id (and so, by log matching, the leader's log up to it). A log id a
    /// leader has applied stays committed, so a late hint is still true. The hint must come from
    /// the leader itself (the server passes only what the active node sent over the pinned
    /// forwarding channel): a forged one naming another term at an index this node holds would
    /// make it drop entries from there on, as a real leader's message would. Failures are
    /// not the caller's concern: the leader's own messages bring the commit in any case.
    pub async fn learn_commit(&self, hint: &str) {
        use std::sync::atomic::Ordering;
        let Ok(CommitHint { vote, applied }) = serde_json::from_str::<CommitHint>(hint) else {
            tracing::debug!("ignoring an undecodable commit hint");
            return;
        };
        if !vote.is_committed() || applied.index <= self.applied_index() {
            return;
        }
        let before = self.hinted.fetch_max(applied.index, Ordering::AcqRel);
        if before >= applied.index {
            return;
        }
        let req = openraft::raft::AppendEntriesRequest {
            vote,
            prev_log_id: Some(applied),
            leader_commit: Some(applied),
            entries: Vec::new(),
        };
        let taken = match self.raft.append_entries(req).await {
            Ok(resp) => resp.is_success(),
            Err(e) => {
                tracing::debug!("raft refused a commit hint: {e}");
                false
            }
        };
        if !taken {
            // This node's log does not reach that entry yet: a later hint for it may succeed.
            let _ = self.hinted.compare_exchange(
                applied.index,
                before,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// The storage keys the log entries in `(after, upto]` wrote, read back from the local log,
    /// for a node that keeps caches of what it read and must drop what changed under it. `None`
    /// when the caller must assume anything changed: an entry is no longer in the log (purged
    /// behind a snapshot, or a snapshot was installed), an entry is part of a restore, or there
    /// are more than `max_keys` keys or `max_entries` entries.
    pub fn keys_written(&self, after: u64, upto: u64, max_entries: u64, max_keys: usize) -> Option<Vec<String>> {
        if upto <= after {
            return Some(Vec::new());
        }
        if upto - after > max_entries {
            return None;
        }
        let store = {
            let open = self.open.read().ok()?;
            Arc::clone(&open.as_ref()?.store)
        };
        let mut keys = Vec::new();
        let mut expect = after + 1;
        for item in store.log.range((after + 1).to_be_bytes()..=upto.to_be_bytes()) {
            let (key, raw) = item.ok()?;
            if store::u64_from_be(&key, "a log key").ok()? != expect {
                return None;
            }
            expect += 1;
            let entry: openraft::Entry<TypeConfig> = store::decode(&raw, "a log entry").ok()?;
            if let openraft::EntryPayload::Normal(req) = entry.payload {
                for op in req.ops {
                    match op {
                        Op::Put { key, .. } | Op::Delete { key } => keys.push(key),
                        _ => return None,
                    }
                }
                if keys.len() > max_keys {
                    return None;
                }
            }
        }
        (expect == upto + 1).then_some(keys)
    }
}

fn status_from(
    m: &openraft::RaftMetrics<u64, Node>,
    raft_id: u64,
    node_id: &str,
    committed_index: u64,
) -> RaftStatus {
    let leader =
        m.current_leader.and_then(|id| m.membership_config.membership().get_node(&id).cloned());
    RaftStatus {
        node_id: node_id.to_string(),
        raft_id,
        is_leader: m.state == ServerState::Leader && m.current_leader == Some(raft_id),
        millis_since_quorum_ack: m.millis_since_quorum_ack,
        leader,
        term: m.current_term,
        committed_index,
        applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
    }
}

/// Republishes openraft's metrics as [`RaftStatus`] and stamps the quorum acknowledgement age
/// with the time it was seen. One task per node; it ends when Raft shuts down (the metrics
/// channel closes). Holds the store weakly so that shutdown can release the database.
async fn watch_metrics(
    mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, Node>>,
    tx: tokio::sync::watch::Sender<RaftStatus>,
    quorum_ack: Arc<Mutex<(Instant, Option<u64>)>>,
    store: Weak<Store>,
    raft_id: u64,
    node_id: String,
) {
    loop {
        let committed = store.upgrade().map(|s| s.committed_index()).unwrap_or(0);
        let status = {
            let m = metrics.borrow_and_update();
            status_from(&m, raft_id, &node_id, committed)
        };
        *quorum_ack.lock().unwrap_or_else(|p| p.into_inner()) =
            (Instant::now(), if status.is_leader { status.millis_since_quorum_ack } else { None });
        tx.send_if_modified(|cur| {
            let changed = *cur != status;
            if changed {
                *cur = status;
            }
            changed
        });
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// openraft settings, all explicit rather than library defaults.
fn raft_config() -> Result<openraft::Config, RaftError> {
    let config = openraft::Config {
        cluster_name: "vaultd".into(),
        // See "Timing" in the crate docs.
        heartbeat_interval: HEARTBEAT_INTERVAL.as_millis() as u64,
        election_timeout_min: ELECTION_TIMEOUT_MIN.as_millis() as u64,
        election_timeout_max: LEADER_LEASE.as_millis() as u64,
        // Per snapshot chunk, sent and installed; 3 MiB crosses a LAN in milliseconds, the rest
        // is margin for the receiver's sync.
        install_snapshot_timeout: 1000,
        // Entries per AppendEntries to a follower: one append and one sync there. Our entries are
        // already batches of client writes (backend.rs), each at most MAX_TRANSACTION_BYTES.
        max_payload_entries: 512,
        // A snapshot every 10,000 entries (each possibly many writes); building one copies the
        // state machine, so not more often.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(10_000),
        // Must exceed the snapshot interval, or a lagging follower could stay behind forever.
        replication_lag_threshold: 20_000,
        snapshot_max_chunk_size: 3 * 1024 * 1024,
        // Entries kept behind a snapshot so a briefly lagging follower catches up from the log
        // instead of a full snapshot; older ones are purged.
        max_in_snapshot_log_to_keep: 1000,
        purge_batch_size: 1,
        // Enabled by `open` or `start_cluster` (crate docs, "Elections before the cluster port").
        enable_elect: false,
        ..Default::default()
    };
    config.validate().map_err(|e| RaftError::Config(e.to_string()))
}
