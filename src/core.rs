//! The core: one node's state and the request path above HTTP.
//!
//! `Core` owns the barrier, the seal lifecycle (init, unseal, seal), the mount and auth tables
//! and the router, the token store and the policy store. The HTTP layer turns requests into
//! [`Request`]s and calls [`Core::handle_request`]; everything below (router, engines, barrier,
//! storage, Raft) is reached only through here.
//!
//! The request pipeline (`handle_request`):
//! 1. sealed → 503;
//! 2. find the target: `sys/`, the token store at `auth/token/`, or a routed mount;
//! 3. a path the target declares unauthenticated (logins) skips 4–6;
//! 4. the token: missing, unknown, expired or used up → 403 "permission denied";
//! 5. the ACL (cached per policy set): the operation's capability on the path (a write asks for
//!    `create` when the backend's existence check says the target is new), and `sudo` on the
//!    target's root paths → else 403;
//! 6. count a use of a token with `num_uses`;
//! 7. dispatch; a response carrying `auth` from an auth method becomes a new token;
//! 8. a token on its last use is revoked.
//!
//! Lifecycle invariants:
//! - "Initialized" means the seal configuration exists in storage. It is written last by init,
//!   so a crash during init leaves a node that can simply be initialized again.
//! - "Unsealed" means the barrier holds the keyring *and* post-unseal setup (mounts, cluster
//!   identity) finished: `ready` is set last, and requests check only `ready`.
//! - init, unseal and seal are serialised by one mutex; requests never take it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Mutex;
use vaultd_raft::{ClusterTls, RaftNode, TlsKeyring};
use vaultd_storage::Backend;

use crate::barrier::{Barrier, RootKey};
use crate::error::{Error, Result};
use crate::mounts::{self, MountEntry, AUTH_TABLE_KEY, MOUNT_TABLE_KEY};
use crate::policy::{self, Op};
use crate::policy_store::PolicyStore;
use crate::raft_join::{self, PendingJoin};
use crate::request::{Auth, Operation, Request, Response};
use crate::router::{path_matches, Route, Router};
use crate::seal::{self, SealConfig, UnsealKey, UnsealProgress};
use crate::sys;
use crate::token::{calculate_ttl, now_ms, NewToken, TokenEntry, TokenStore, TtlParams};
use crate::token_auth::{self, Caller};
use crate::view::{View, ViewOp};

/// How long unseal waits for this node to lead its Raft group before giving up.
const LEADER_WAIT: Duration = Duration::from_secs(15);
/// How long unseal on a member of a multi-node cluster waits to find its leader.
const CLUSTER_WAIT: Duration = Duration::from_secs(5);
/// Most log entries, and keys in them, a follower reads back to invalidate its caches key by
/// key; beyond either it drops every cache instead (bounded work per refresh).
const MAX_INVALIDATION_ENTRIES: u64 = 4096;
const MAX_INVALIDATION_KEYS: usize = 65_536;
/// Upper bound on keys removed when a mount is disabled in one call (bounded memory).
const MAX_UNMOUNT_KEYS: usize = 1_000_000;
/// Keys deleted per storage transaction when a mount is disabled: etcd's default
/// `--max-txn-ops` is 128.
const DELETE_CHUNK: usize = 128;

/// Where the storage lives and what it can do; fixed for the life of the process.
pub enum StorageKind {
    Raft(Arc<RaftNode>),
    Inmem,
    File,
    /// `storage "etcd"`: one etcd cluster shared by every node.
    Etcd,
}

impl StorageKind {
    pub fn name(&self) -> &'static str {
        match self {
            StorageKind::Raft(_) => "raft",
            StorageKind::Inmem => "inmem",
            StorageKind::File => "file",
            StorageKind::Etcd => "etcd",
        }
    }
}

pub struct CoreConfig {
    pub physical: Arc<dyn Backend>,
    pub storage: StorageKind,
    pub api_addr: String,
    pub cluster_addr: String,
    /// Where this node's cluster port listens (the first listener's `cluster_address`), when it
    /// is an IP address and port.
    pub cluster_bind: Option<SocketAddr>,
    pub default_lease_ttl: u64,
    pub max_lease_ttl: u64,
    /// Whether a standby serves reads from its local replica (`disable_performance_standby` and
    /// `disable_standby_reads` turn it off).
    pub performance_standby: bool,
    /// HA on a lock in an HA backend (etcd, as `storage` or `ha_storage`); `None` with raft
    /// (leadership is the lock) and with storage that has no HA.
    pub ha_lock: Option<crate::ha::LockHa>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub name: String,
    pub id: String,
}

pub struct InitResult {
    /// The unseal key shares, raw bytes; the caller encodes them (hex and base64).
    pub keys: Vec<zeroize::Zeroizing<Vec<u8>>>,
    pub root_token: String,
}

/// What `sys/seal-status` reports.
pub struct SealStatus {
    pub initialized: bool,
    pub sealed: bool,
    pub threshold: u8,
    pub shares: u8,
    pub progress: usize,
    pub nonce: String,
    pub cluster: Option<ClusterInfo>,
}

/// The outcome of the token and policy checks.
pub enum Authz {
    /// A path that needs no token (a login).
    Unauthenticated,
    Allowed(Caller),
    /// A valid token the ACL refuses.
    Denied(Caller),
}

/// Who serves a request path.
pub enum Target {
    /// `sys/...`, served by `sys::handle`.
    Sys,
    /// `auth/token/...`, served by `token_auth::handle`.
    TokenStore,
    /// A mount or auth method, and the path relative to it.
    Routed(Arc<Route>, String),
    /// Nothing is mounted there: 404 once the caller is known to be allowed to ask.
    Unrouted,
}

pub struct Core {
    pub physical: Arc<dyn Backend>,
    pub barrier: Arc<Barrier>,
    pub storage: StorageKind,
    pub router: Router,
    pub tokens: Arc<TokenStore>,
    pub policies: PolicyStore,
    pub api_addr: String,
    pub cluster_addr: String,
    pub cluster_bind: Option<SocketAddr>,
    pub default_lease_ttl: u64,
    pub max_lease_ttl: u64,
    performance_standby: bool,
    ready: AtomicBool,
    lifecycle: Mutex<Option<UnsealProgress>>,
    /// Serialises mount and auth table changes (read-modify-write of one document).
    mount_lock: Mutex<()>,
    cluster: RwLock<Option<ClusterInfo>>,
    active_since: RwLock<Option<String>>,
    /// A raft join waiting for the unseal keys (`raft_join`).
    pending_join: RwLock<Option<PendingJoin>>,
    /// Per-process secret the expected raft join answers are derived from (`raft_join`).
    join_secret: [u8; 32],
    /// On a raft follower: the applied index the caches and routes were last refreshed at
    /// (`sync_follower`), and the lock that makes one request do each refresh.
    follower_synced: AtomicU64,
    /// Whether that refresh happened as leader.
    synced_as_leader: AtomicBool,
    follower_sync: Mutex<()>,
    /// On a performance standby: the highest Raft index of a write this node forwarded and
    /// relayed the answer to. Its local reads wait until it has applied that index
    /// (`http::serve_on_standby`), so a client reads its own write on the node it wrote through
    /// without the write's answer waiting for this node's apply.
    relayed_index: AtomicU64,
    /// Active or standby (`ha`).
    pub(crate) ha: crate::ha::Ha,
    /// HA on a lock rather than on Raft leadership (`ha`).
    pub(crate) ha_lock: Option<crate::ha::LockHa>,
    /// This core, for the background tasks it starts (they must not keep it alive).
    me: Weak<Core>,
}

impl Core {
    pub fn new(cfg: CoreConfig) -> Arc<Core> {
        let barrier = Arc::new(Barrier::new(cfg.physical.clone()));
        Arc::new_cyclic(|me| Core {
            physical: cfg.physical,
            tokens: Arc::new(TokenStore::new(View::new(barrier.clone(), "sys/token/"))),
            policies: PolicyStore::new(View::new(barrier.clone(), "sys/policy/")),
            barrier,
            storage: cfg.storage,
            router: Router::new(),
            api_addr: cfg.api_addr,
            cluster_addr: cfg.cluster_addr,
            cluster_bind: cfg.cluster_bind,
            default_lease_ttl: cfg.default_lease_ttl,
            max_lease_ttl: cfg.max_lease_ttl,
            performance_standby: cfg.performance_standby,
            relayed_index: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            lifecycle: Mutex::new(None),
            mount_lock: Mutex::new(()),
            cluster: RwLock::new(None),
            active_since: RwLock::new(None),
            pending_join: RwLock::new(None),
            join_secret: rand::random(),
            follower_synced: AtomicU64::new(0),
            synced_as_leader: AtomicBool::new(false),
            follower_sync: Mutex::new(()),
            ha: crate::ha::Ha::default(),
            ha_lock: cfg.ha_lock,
            me: me.clone(),
        })
    }

    pub(crate) fn weak(&self) -> Weak<Core> {
        self.me.clone()
    }

    pub(crate) fn core_view(&self) -> View {
        View::new(self.barrier.clone(), "core/")
    }

    pub fn is_sealed(&self) -> bool {
        !self.ready.load(Ordering::Acquire)
    }

    /// Whether nodes elect an active one: Raft leadership, or a lock in an HA backend.
    pub fn ha_enabled(&self) -> bool {
        matches!(self.storage, StorageKind::Raft(_)) || self.ha_lock.is_some()
    }

    /// Whether this node is a performance standby now: an unsealed standby on integrated storage
    /// with standby reads enabled. It serves reads locally and forwards writes.
    pub fn is_performance_standby(&self) -> bool {
        self.performance_standby_enabled() && matches!(self.ha_state(), crate::ha::HaState::Standby { .. }) && !self.removed_from_cluster()
    }

    /// Whether standby reads are enabled: by configuration, and only on integrated storage. A
    /// standby on a lock (etcd) is a plain standby: nothing tells it what the active node changed,
    /// so its caches would serve stale tokens and policies.
    pub fn performance_standby_enabled(&self) -> bool {
        self.performance_standby && self.raft().is_some()
    }

    /// Records that a forwarded write committed at `index` was relayed to a client here.
    pub(crate) fn note_relayed(&self, index: u64) {
        self.relayed_index.fetch_max(index, Ordering::AcqRel);
    }

    /// The highest index [`Core::note_relayed`] recorded.
    pub(crate) fn relayed_index(&self) -> u64 {
        self.relayed_index.load(Ordering::Acquire)
    }

    pub fn raft(&self) -> Option<&Arc<RaftNode>> {
        match &self.storage {
            StorageKind::Raft(r) => Some(r),
            _ => None,
        }
    }

    pub fn cluster_info(&self) -> Option<ClusterInfo> {
        self.cluster.read().ok().and_then(|c| c.clone())
    }

    pub fn active_since(&self) -> Option<String> {
        self.active_since.read().ok().and_then(|c| c.clone())
    }

    pub(crate) fn set_active_since(&self, since: Option<String>) {
        if let Ok(mut a) = self.active_since.write() {
            *a = since;
        }
    }

    /// The seal configuration: the stored one, else that of the cluster a pending raft join is
    /// joining (the node then counts as initialized and takes that cluster's unseal keys).
    pub async fn seal_config(&self) -> Result<Option<SealConfig>> {
        match self.stored_seal_config().await? {
            Some(c) => Ok(Some(c)),
            None => Ok(self.pending_join().map(|j| j.seal_config)),
        }
    }

    /// The seal configuration in this node's storage only.
    pub async fn stored_seal_config(&self) -> Result<Option<SealConfig>> {
        match self.physical.get(seal::SEAL_CONFIG_PATH).await? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::internal(format!("corrupt seal configuration: {e}"))),
        }
    }

    pub async fn initialized(&self) -> Result<bool> {
        Ok(self.seal_config().await?.is_some())
    }

    pub fn pending_join(&self) -> Option<PendingJoin> {
        self.pending_join.read().ok().and_then(|j| j.clone())
    }

    pub fn set_pending_join(&self, join: PendingJoin) {
        if let Ok(mut j) = self.pending_join.write() {
            *j = Some(join);
        }
    }

    fn clear_pending_join(&self) {
        if let Ok(mut j) = self.pending_join.write() {
            *j = None;
        }
    }

    pub fn join_secret(&self) -> &[u8; 32] {
        &self.join_secret
    }

    /// Makes sure this node can write: with integrated storage, bootstrap a one-voter cluster the
    /// first time, or wait to be elected leader of the existing one.
    async fn ensure_writable(&self) -> Result<()> {
        if let StorageKind::Raft(raft) = &self.storage {
            if !raft.is_initialized().await {
                raft.bootstrap_single().await.map_err(|e| Error::Unavailable(format!("raft bootstrap failed: {e}")))?;
            }
            raft.wait_for_leader(LEADER_WAIT)
                .await
                .map_err(|e| Error::Unavailable(format!("no raft leader: {e}")))?;
        }
        Ok(())
    }

    /// At unseal: the only voter must lead (as `ensure_writable`). A member of a larger cluster
    /// waits, bounded by [`CLUSTER_WAIT`], until it knows another leader or has proven its own
    /// leadership (a quorum round), and then unseals either way: a follower is ready once it
    /// knows a leader (reads are local, writes get NotLeader), and after a full-cluster restart
    /// the first node unsealed cannot reach a quorum until the others are unsealed too (their
    /// cluster ports open only then), so refusing to unseal would deadlock the restart.
    async fn wait_for_cluster(&self) -> Result<()> {
        let StorageKind::Raft(raft) = &self.storage else { return Ok(()) };
        let me = raft.raft_id();
        let only_voter = raft.configuration().iter().filter(|p| p.voter).all(|p| p.raft_id == me);
        if !raft.is_initialized().await || only_voter {
            return self.ensure_writable().await;
        }
        let deadline = std::time::Instant::now() + CLUSTER_WAIT;
        loop {
            let st = raft.status();
            if st.is_leader {
                // openraft restores a node that led before a restart as leader of its old term;
                // only a quorum round proves it. Short rounds, so a refusal is retried.
                let remaining = deadline.saturating_duration_since(std::time::Instant::now());
                if raft.wait_for_leader(remaining.min(Duration::from_secs(1))).await.is_ok() {
                    return Ok(());
                }
            } else if st.leader.as_ref().is_some_and(|n| n.node_id != raft.node().node_id) {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                tracing::warn!("unsealing without a raft leader (no quorum yet): writes fail until the other nodes are unsealed");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts the cluster port with the identity kept in the barrier (`core/raft/tls`). A cluster
    /// made before that identity existed gets one now, if this node is its only voter and leads.
    async fn start_cluster_port(&self) -> Result<()> {
        let StorageKind::Raft(raft) = &self.storage else { return Ok(()) };
        let core = self.core_view();
        let tls: Option<serde_json::Value> = core.get_json(raft_join::TLS_KEY).await?;
        let tls = tls.map(TlsKeyring::from_json).transpose()?;
        let only_voter = raft.configuration().iter().filter(|p| p.voter).all(|p| p.raft_id == raft.raft_id());
        let tls = match tls {
            Some(t) => t,
            None if only_voter => {
                self.ensure_writable().await?;
                let t = TlsKeyring::new(ClusterTls::generate()?);
                core.put_json(raft_join::TLS_KEY, &t).await?;
                t
            }
            None => return Err(Error::internal("the cluster TLS identity is missing from core/raft/tls")),
        };
        let Some(bind) = self.cluster_bind else {
            if only_voter {
                tracing::warn!("no usable cluster_address: the cluster port stays closed, so no node can join");
                return Ok(());
            }
            return Err(Error::Unavailable("no usable cluster_address to start the cluster port on".into()));
        };
        match raft.start_cluster_keyring(bind, &tls).await {
            Ok(_) => Ok(()),
            // A lone node serves without its cluster port (a dev server whose port+1 is taken).
            Err(e) if only_voter => {
                tracing::warn!(error = %e, "starting the cluster port failed; no node can join");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `PUT sys/init`: creates the keys and the root token. The node stays sealed afterwards,
    /// as a Shamir-sealed Vault does.
    pub async fn initialize(&self, config: SealConfig, root_token_id: Option<&str>) -> Result<InitResult> {
        let _life = self.lifecycle.lock().await;
        if self.initialized().await? {
            return Err(Error::AlreadyInitialized);
        }
        config.validate()?;
        self.ensure_writable().await?;

        let unseal_key = UnsealKey::generate()?;
        let root_key = RootKey::generate()?;
        let shares = seal::split_unseal_key(&unseal_key, config.secret_shares, config.secret_threshold)?;

        // A keyring without a seal configuration is what an init that crashed half-way leaves
        // behind. Nobody can hold keys for it (they were never returned), so start over.
        self.physical.delete(crate::barrier::KEYRING_PATH).await?;
        self.barrier.initialize(&root_key).await?;
        let wrapped = seal::wrap_root_key(&unseal_key, &root_key)?;
        self.physical.put(seal::ROOT_KEY_PATH, wrapped).await?;

        // Populate the core tables while the barrier is open, then close it again.
        self.barrier.unseal(&root_key).await?;
        let setup = self.first_setup(root_token_id).await;
        self.barrier.seal();
        let root_token = setup?;

        // Last: this write is what makes the node "initialized".
        self.physical.put(seal::SEAL_CONFIG_PATH, serde_json::to_vec(&config)?).await?;
        tracing::info!(shares = config.secret_shares, threshold = config.secret_threshold, "core: initialized");
        Ok(InitResult { keys: shares, root_token })
    }

    async fn first_setup(&self, root_token_id: Option<&str>) -> Result<String> {
        let core = self.core_view();
        core.put_json(MOUNT_TABLE_KEY, &mounts::default_table()).await?;
        let info = ClusterInfo {
            name: format!("vault-cluster-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            id: uuid::Uuid::new_v4().to_string(),
        };
        core.put_json("cluster/local/info", &info).await?;
        core.put_json(AUTH_TABLE_KEY, &mounts::default_auth_table()).await?;
        if let StorageKind::Raft(_) = self.storage {
            // The cluster's TLS identity: every node gets it through the barrier (joining nodes
            // in the bootstrap answer first).
            core.put_json(raft_join::TLS_KEY, &TlsKeyring::new(ClusterTls::generate()?)).await?;
        }
        self.policies.ensure_default().await?;
        self.tokens.create_root(root_token_id).await
    }

    /// `PUT sys/unseal` with one key share. Returns once the share is recorded; the node is
    /// unsealed when the threshold is reached.
    pub async fn unseal_share(&self, key: &str) -> Result<()> {
        let mut life = self.lifecycle.lock().await;
        if !self.is_sealed() {
            return Ok(());
        }
        let config = self.seal_config().await?.ok_or(Error::NotInitialized)?;
        let progress = life.get_or_insert_with(|| UnsealProgress::new(config.secret_threshold));
        let Some(unseal_key) = progress.add_share(key)? else {
            return Ok(());
        };
        // Threshold reached: whatever happens next, this attempt is over.
        *life = None;
        if self.stored_seal_config().await?.is_none() {
            if let Some(join) = self.pending_join() {
                // A joining node: the keys prove membership to the leader, then the node unseals
                // with the root key it unwrapped. Wrong keys leave the join pending.
                let root_key = raft_join::finish(self, &join, &unseal_key).await?;
                self.clear_pending_join();
                return self.unseal_with_root_key(&root_key).await;
            }
        }
        let wrapped = self.physical.get(seal::ROOT_KEY_PATH).await?.ok_or_else(|| Error::internal("root key missing from storage"))?;
        let root_key = seal::unwrap_root_key(&unseal_key, &wrapped)?;
        self.unseal_with_root_key(&root_key).await
    }

    pub async fn unseal_reset(&self) -> Result<()> {
        let mut life = self.lifecycle.lock().await;
        if !self.is_sealed() {
            return Err(Error::bad_request("vault is unsealed"));
        }
        *life = None;
        Ok(())
    }

    async fn unseal_with_root_key(&self, root_key: &RootKey) -> Result<()> {
        self.barrier.unseal(root_key).await?;
        if let Err(e) = self.post_unseal().await {
            self.barrier.seal();
            self.router.clear();
            return Err(e);
        }
        tracing::info!("core: vault is unsealed");
        Ok(())
    }

    /// A follower's caches (tokens, policies, compiled ACLs, engines' state) and mount routes are
    /// filled from its local store, which the leader changes under it through Raft: whenever
    /// entries were applied since the last request, drop what those entries changed (the keys
    /// they wrote, read back from the local log: [`Core::invalidate_written`]), so that a
    /// revoked token or a changed policy or mount takes effect here as soon as it is applied,
    /// while a stream of KV writes leaves the caches a standby's reads need alone. When the keys
    /// cannot be known (entries behind a snapshot, a restore, too many), everything is dropped
    /// and the routes rebuilt. The leader changes all of these through its own code paths, which
    /// invalidate as they go, so it only records where it is.
    async fn sync_follower(&self) -> Result<()> {
        let StorageKind::Raft(raft) = &self.storage else { return Ok(()) };
        let (leader, applied) = raft.leader_state_and_applied();
        let was_leader = self.synced_as_leader.load(Ordering::Acquire);
        if leader && was_leader {
            // Still the leader that refreshed last: everything applied since is its own doing.
            self.follower_synced.store(applied, Ordering::Release);
            return Ok(());
        }
        if !leader && !was_leader && self.follower_synced.load(Ordering::Acquire) == applied {
            return Ok(());
        }
        let _one = self.follower_sync.lock().await;
        // Read again under the lock: applies may have continued, and another request may have
        // refreshed meanwhile.
        let (leader, applied) = raft.leader_state_and_applied();
        let (was_leader, synced) = (self.synced_as_leader.load(Ordering::Acquire), self.follower_synced.load(Ordering::Acquire));
        if leader == was_leader && synced == applied {
            return Ok(());
        }
        // A follower that just became leader refreshes everything once: it applied the old
        // leader's entries before its term started. So does a node that never synced.
        // Mount changes on a new leader rebuild the routes under this lock too.
        let _mounts = self.mount_lock.lock().await;
        let written = if leader || was_leader || synced == 0 || applied < synced {
            None
        } else {
            raft.keys_written(synced, applied, MAX_INVALIDATION_ENTRIES, MAX_INVALIDATION_KEYS)
        };
        match written {
            Some(keys) => self.invalidate_written(&keys).await?,
            None => self.reload_stored_state().await?,
        }
        self.follower_synced.store(applied, Ordering::Release);
        self.synced_as_leader.store(leader, Ordering::Release);
        Ok(())
    }

    /// Drops what the storage keys `keys` (written by the leader, applied here) were cached as:
    /// a token entry, the policies, the routes (mount or auth table, or an engine's cached
    /// state). OpenBao routes its FSM's applied keys the same way (`invalidation.go`). The caller
    /// holds `mount_lock`.
    async fn invalidate_written(&self, keys: &[String]) -> Result<()> {
        let mut routes = false;
        let mut policies = false;
        for key in keys {
            if let Some(hash) = key.strip_prefix("sys/token/id/") {
                self.tokens.evict(hash);
            } else if key.starts_with("sys/policy/") {
                policies = true;
            } else if key.strip_prefix("core/").is_some_and(|k| k == MOUNT_TABLE_KEY || k == AUTH_TABLE_KEY) {
                routes = true;
            } else if key.starts_with("logical/") || key.starts_with("auth/") {
                routes |= match self.router.by_storage_key(key) {
                    Some((route, rest)) => engine_caches(&route.entry.kind, &rest),
                    // A mount this node does not route yet: its table change rebuilds.
                    None => false,
                };
            }
        }
        if policies {
            self.policies.invalidate();
        }
        if routes {
            let core = self.core_view();
            let table: Vec<MountEntry> = core.get_json(MOUNT_TABLE_KEY).await?.unwrap_or_else(mounts::default_table);
            let auth: Vec<MountEntry> = core.get_json(AUTH_TABLE_KEY).await?.unwrap_or_else(mounts::default_auth_table);
            self.router.rebuild_with_auth(&self.barrier, &table, &auth)?;
        }
        Ok(())
    }

    /// Drops the token, policy and ACL caches and rebuilds the routes from the stored mount and
    /// auth tables: what a node does when the store changed under it (entries applied as a
    /// follower, a snapshot restore). The caller holds `mount_lock`.
    async fn reload_stored_state(&self) -> Result<()> {
        self.tokens.clear_cache();
        self.policies.invalidate();
        let core = self.core_view();
        let table: Vec<MountEntry> = core.get_json(MOUNT_TABLE_KEY).await?.unwrap_or_else(mounts::default_table);
        let auth: Vec<MountEntry> = core.get_json(AUTH_TABLE_KEY).await?.unwrap_or_else(mounts::default_auth_table);
        self.router.rebuild_with_auth(&self.barrier, &table, &auth)?;
        Ok(())
    }

    /// A node that just took the HA lock drops its caches and rebuilds its routes: the previous
    /// active node changed the shared store under it.
    pub(crate) async fn reload_for_active(&self) -> Result<()> {
        let _mounts = self.mount_lock.lock().await;
        self.reload_stored_state().await
    }

    /// A node that just became Raft leader refreshes its caches and routes once: it applied the
    /// old leader's entries as a follower.
    pub(crate) async fn refresh_as_new_leader(&self) -> Result<()> {
        self.synced_as_leader.store(false, Ordering::Release);
        self.sync_follower().await
    }

    /// Loads everything a serving node needs, then marks it ready.
    async fn post_unseal(&self) -> Result<()> {
        // The cluster port first: a member of a larger cluster needs it to find its leader.
        self.start_cluster_port().await?;
        self.wait_for_cluster().await?;
        let core = self.core_view();
        let table: Vec<MountEntry> = match core.get_json(MOUNT_TABLE_KEY).await? {
            Some(t) => t,
            None => {
                let t = mounts::default_table();
                core.put_json(MOUNT_TABLE_KEY, &t).await?;
                t
            }
        };
        // Data from before auth methods existed has no auth table: start with the token store.
        let auth: Vec<MountEntry> = match core.get_json(AUTH_TABLE_KEY).await? {
            Some(t) => t,
            None => {
                let t = mounts::default_auth_table();
                core.put_json(AUTH_TABLE_KEY, &t).await?;
                t
            }
        };
        self.router.rebuild_with_auth(&self.barrier, &table, &auth)?;
        self.policies.invalidate();
        self.policies.ensure_default().await?;
        let info: Option<ClusterInfo> = core.get_json("cluster/local/info").await?;
        if let Ok(mut c) = self.cluster.write() {
            *c = info;
        }
        if !self.ha_enabled() {
            self.set_active_since(Some(crate::kv::now_rfc3339()));
        }
        // Last before ready: nothing can fail after the tidy starts, so a failed unseal never
        // leaves it running against a sealed barrier. The tidy writes, so only the active node
        // runs it; a node that leads becomes active in `start_ha`, before it reports unsealed.
        let me = self.weak();
        self.tokens.start_tidy(Arc::new(move || me.upgrade().is_some_and(|c| c.ha_state().is_active())));
        crate::sys_raft::install_autopilot_loader(self);
        self.start_ha().await;
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Progress of the current unseal attempt, for seal-status.
    pub async fn seal_status(&self) -> Result<SealStatus> {
        let config = self.seal_config().await?;
        let life = self.lifecycle.lock().await;
        let sealed = self.is_sealed();
        let (progress, nonce) = match life.as_ref() {
            Some(p) if sealed => (p.progress(), p.nonce().to_string()),
            _ => (0, String::new()),
        };
        Ok(SealStatus {
            initialized: config.is_some(),
            sealed,
            threshold: config.as_ref().map_or(0, |c| c.secret_threshold),
            shares: config.as_ref().map_or(0, |c| c.secret_shares),
            progress,
            nonce,
            cluster: if sealed { None } else { self.cluster_info() },
        })
    }

    /// Seals the node: drops every key and cache. Requires a root token (checked by the caller).
    pub async fn seal(&self) -> Result<()> {
        let mut life = self.lifecycle.lock().await;
        *life = None;
        self.ready.store(false, Ordering::Release);
        self.tokens.stop_tidy();
        // While the barrier is still open: the active node removes its advertisement.
        self.stop_ha().await;
        self.router.clear();
        self.tokens.clear_cache();
        self.policies.invalidate();
        self.barrier.seal();
        self.set_active_since(None);
        // A sealed node takes no part in Raft; a sealed leader's followers elect another.
        if let Some(raft) = self.raft() {
            raft.stop_cluster().await;
        }
        tracing::info!("core: vault is sealed");
        Ok(())
    }

    /// Resolves the request's token, or fails with "permission denied".
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Arc<TokenEntry>> {
        let token = token.ok_or(Error::PermissionDenied)?;
        Ok(self.tokens.lookup(token).await?.1)
    }

    /// Resolves `token` and checks it may use `path` with `sudo` (for endpoints outside the
    /// pipeline, such as `sys/seal` and `sys/step-down`). Counts no use.
    pub async fn authorize_sudo(&self, token: Option<&str>, path: &str) -> Result<Arc<TokenEntry>> {
        let token = token.filter(|t| !t.is_empty()).ok_or(Error::PermissionDenied)?;
        let (_, entry) = self.tokens.lookup(token).await?;
        let acl = self.policies.acl(&entry.policies).await?;
        let d = acl.allow(Op::Update, path, &Map::new());
        if !(d.allowed && d.sudo) {
            return Err(Error::PermissionDenied);
        }
        Ok(entry)
    }

    /// Which handler serves `path`, and the matched mount's prefix.
    pub fn target(&self, path: &str) -> (Target, String) {
        if path == "sys" || path.starts_with("sys/") {
            return (Target::Sys, "sys/".into());
        }
        if path == "auth/token" || path.starts_with(token_auth::MOUNT) {
            return (Target::TokenStore, token_auth::MOUNT.into());
        }
        match self.router.matching(path) {
            Some((route, rest)) => {
                let prefix = route.prefix.clone();
                (Target::Routed(route, rest), prefix)
            }
            None => (Target::Unrouted, String::new()),
        }
    }

    /// Steps 3–5 of the pipeline: who is calling and may they do this. A missing or invalid
    /// token is an error; a valid token the ACL refuses is [`Authz::Denied`], because a refused
    /// request still spends one of the token's uses, as in Vault.
    pub async fn authorize(&self, req: &Request, target: &Target) -> Result<Authz> {
        let unauthenticated = match target {
            Target::Sys => sys::is_unauthenticated(req.path.strip_prefix("sys/").unwrap_or("")),
            Target::Routed(route, rest) => route.backend.as_ref().is_some_and(|b| path_matches(b.unauthenticated_paths(), rest)),
            Target::TokenStore | Target::Unrouted => false,
        };
        if unauthenticated {
            return Ok(Authz::Unauthenticated);
        }
        let token = req.token.as_deref().filter(|t| !t.is_empty()).ok_or(Error::PermissionDenied)?;
        let (hash, entry) = match self.tokens.lookup(token).await {
            Ok(found) => found,
            Err(e) => {
                crate::read_only::note_unknown_token();
                return Err(e);
            }
        };
        let acl = self.policies.acl(&entry.policies).await?;
        if !acl.is_root() {
            let op = match req.op {
                Operation::Read => Op::Read,
                Operation::List => Op::List,
                Operation::Delete => Op::Delete,
                Operation::Patch => Op::Patch,
                Operation::Update => self.write_op(&acl, req, target).await?,
            };
            let d = acl.allow(op, &req.path, &req.data);
            if !d.allowed || (self.requires_sudo(req, target) && !d.sudo) {
                return Ok(Authz::Denied(Caller { token: token.to_string(), hash, entry, acl }));
            }
        }
        Ok(Authz::Allowed(Caller { token: token.to_string(), hash, entry, acl }))
    }

    /// `create` or `update` for a write. The backend's existence check (a storage read) runs
    /// only when the answer matters: when the policy grants one of the two but not the other.
    async fn write_op(&self, acl: &policy::Acl, req: &Request, target: &Target) -> Result<Op> {
        let bits = acl.capability_bits_exact(&req.path);
        if (bits & policy::caps::CREATE != 0) == (bits & policy::caps::UPDATE != 0) {
            return Ok(Op::Update);
        }
        if let Target::Routed(route, rest) = target {
            if let Some(b) = &route.backend {
                if b.existence_check(req, rest).await? == Some(false) {
                    return Ok(Op::Create);
                }
            }
        }
        Ok(Op::Update)
    }

    fn requires_sudo(&self, req: &Request, target: &Target) -> bool {
        match target {
            Target::Sys => sys::is_root_path(req.path.strip_prefix("sys/").unwrap_or("")),
            Target::TokenStore => token_auth::is_root_path(req.path.strip_prefix(token_auth::MOUNT).unwrap_or("")),
            Target::Routed(route, rest) => route.backend.as_ref().is_some_and(|b| path_matches(b.root_paths(), rest)),
            Target::Unrouted => false,
        }
    }

    /// The request pipeline; see the module documentation.
    pub async fn handle_request(&self, req: &Request) -> Result<Option<Response>> {
        if self.is_sealed() {
            return Err(Error::Sealed);
        }
        if self.removed_from_cluster() {
            return Err(Error::Unavailable(crate::sys_raft::REMOVED_MESSAGE.into()));
        }
        // A Raft leader that is not active (becoming active, stepping down, or past its lease)
        // serves nothing: its reads may be stale and its writes must not be acknowledged.
        if let Some(raft) = self.raft() {
            if raft.leader_state_and_applied().0 && !self.ha_state().is_active() {
                return Err(Error::Unavailable("node is not active".into()));
            }
        }
        // On a lock, a standby serves nothing itself (the HTTP layer forwards), and an active node
        // that lost its lock stops at once, before etcd lets another node take it.
        if self.ha_lock.is_some() && !self.ha_state().is_active() {
            return Err(Error::Unavailable("node is not active".into()));
        }
        self.sync_follower().await?;
        let (target, mount_point) = self.target(&req.path);
        let mut req = req.clone();
        req.mount_point = mount_point;
        let (mut caller, allowed) = match self.authorize(&req, &target).await? {
            Authz::Unauthenticated => (None, true),
            Authz::Allowed(c) => (Some(c), true),
            Authz::Denied(c) => (Some(c), false),
        };
        let mut last_use = false;
        if let Some(c) = caller.as_mut() {
            let (entry, last) = self.tokens.use_token(&c.hash, c.entry.clone()).await?;
            c.entry = entry;
            last_use = last;
            req.client = Some(c.entry.clone());
        }
        let result = if allowed { self.dispatch(&req, target, caller.as_ref()).await } else { Err(Error::PermissionDenied) };
        if let (true, Some(c)) = (last_use, &caller) {
            if let Err(e) = self.tokens.revoke_tree(&c.hash).await {
                tracing::warn!(error = %e, "revoking a used-up token failed; the tidy will retry");
            }
        }
        result
    }

    async fn dispatch(&self, req: &Request, target: Target, caller: Option<&Caller>) -> Result<Option<Response>> {
        match target {
            Target::Sys => sys::handle(self, req).await,
            Target::TokenStore => match caller {
                Some(c) => token_auth::handle(self, req, c).await,
                None => Err(Error::PermissionDenied),
            },
            Target::Routed(route, rest) => {
                let backend = route.backend.as_ref().ok_or_else(|| Error::NoHandler(req.path.clone()))?;
                let mut resp = backend.handle(req, &rest).await?;
                if let Some(r) = resp.as_mut() {
                    r.mount_type = route.entry.kind.clone();
                    if route.is_auth {
                        if let Some(auth) = r.auth.as_mut().filter(|a| a.client_token.is_empty()) {
                            let warnings = self.mint_login_token(req, &route, auth).await?;
                            r.warnings.extend(warnings);
                        }
                    }
                }
                Ok(resp)
            }
            Target::Unrouted => Err(Error::NoHandler(req.path.clone())),
        }
    }

    /// Turns an auth method's successful login into a token (Vault's `RegisterAuth`): an orphan
    /// with the method's policies, its TTL within the mount's limits.
    ///
    /// The method decides about `default` (its `token_no_default_policy`), so the policies are
    /// only sanitised here. The display name is prefixed with the mount (`userpass-bob`) unless
    /// the method already did so.
    async fn mint_login_token(&self, req: &Request, route: &Route, auth: &mut Auth) -> Result<Vec<String>> {
        let policies = policy::sanitize(&auth.policies, false);
        if policies.iter().any(|p| p == policy::ROOT_POLICY) {
            return Err(Error::bad_request("auth methods cannot create root tokens"));
        }
        let (sys_default, sys_max) = self.mount_ttls(&route.entry);
        let params = TtlParams {
            ttl: auth.ttl,
            period: auth.period,
            backend_max: auth.max_ttl,
            explicit_max: auth.explicit_max_ttl,
            ..Default::default()
        };
        let (ttl, warnings) = calculate_ttl(sys_default, sys_max, &params, now_ms())?;
        let source = route.entry.path.replace('/', "-");
        let display_name = if auth.display_name.starts_with(&source) || auth.display_name == source.trim_end_matches('-') {
            auth.display_name.clone()
        } else {
            format!("{source}{}", auth.display_name).trim_end_matches('-').to_string()
        };
        let (token, entry) = self
            .tokens
            .create(NewToken {
                id: None,
                policies,
                parent: String::new(),
                path: req.path.clone(),
                display_name,
                meta: token_auth::meta_of(&auth.metadata),
                num_uses: i64::try_from(auth.num_uses).unwrap_or(i64::MAX),
                ttl,
                explicit_max_ttl: auth.explicit_max_ttl,
                period: auth.period,
                max_ttl: auth.max_ttl,
                renewable: auth.renewable,
            })
            .await?;
        *auth = token_auth::auth_of(&entry, token, ttl);
        Ok(warnings)
    }

    /// A mount's (default, max) lease TTL: its own tuning, else the system's.
    pub fn mount_ttls(&self, entry: &MountEntry) -> (u64, u64) {
        let d = if entry.config.default_lease_ttl == 0 { self.default_lease_ttl } else { entry.config.default_lease_ttl };
        let m = if entry.config.max_lease_ttl == 0 { self.max_lease_ttl } else { entry.config.max_lease_ttl };
        (d, m)
    }

    /// The token store's (default, max) TTL, from the `token/` auth mount.
    pub fn token_mount_ttls(&self) -> (u64, u64) {
        match self.router.matching(token_auth::MOUNT) {
            Some((route, _)) if route.is_auth => self.mount_ttls(&route.entry),
            _ => (self.default_lease_ttl, self.max_lease_ttl),
        }
    }

    pub async fn mount_table(&self) -> Result<Vec<MountEntry>> {
        Ok(self.core_view().get_json(MOUNT_TABLE_KEY).await?.unwrap_or_default())
    }

    /// Replaces the mount entry at `updated.path` (tune). Under the mount lock, like enable and
    /// disable, so a tune never overwrites a concurrent mount change with a stale table.
    pub async fn replace_mount_entry(&self, updated: MountEntry) -> Result<()> {
        let _g = self.mount_lock.lock().await;
        let mut table = self.mount_table().await?;
        let Some(slot) = table.iter_mut().find(|m| m.path == updated.path) else {
            return Err(Error::bad_request(format!("tune of path \"{}\" failed: no mount entry found", updated.path)));
        };
        *slot = updated;
        self.core_view().put_json(MOUNT_TABLE_KEY, &table).await?;
        self.router.rebuild(&self.barrier, &table)
    }

    pub async fn enable_mount(&self, path: &str, kind: &str, description: &str, options: Option<Map<String, Value>>) -> Result<()> {
        let _g = self.mount_lock.lock().await;
        let mut table = self.mount_table().await?;
        let path = mounts::validate_new_path(path, &table)?;
        table.push(MountEntry::new(&path, kind, description, options));
        self.core_view().put_json(MOUNT_TABLE_KEY, &table).await?;
        self.router.rebuild(&self.barrier, &table)
    }

    pub async fn disable_mount(&self, path: &str) -> Result<()> {
        let _g = self.mount_lock.lock().await;
        let want = format!("{}/", path.trim_matches('/'));
        let mut table = self.mount_table().await?;
        let Some(pos) = table.iter().position(|m| m.path == want) else {
            // Vault answers success for a path with nothing mounted.
            return Ok(());
        };
        if matches!(table[pos].kind.as_str(), "system" | "identity" | "cubbyhole") {
            return Err(Error::bad_request(format!("cannot unmount \"{want}\"")));
        }
        let entry = table.remove(pos);
        // Unroute first so no request writes into the mount while its data is removed.
        self.core_view().put_json(MOUNT_TABLE_KEY, &table).await?;
        self.router.rebuild(&self.barrier, &table)?;
        let view = View::new(self.barrier.clone(), entry.storage_prefix());
        let keys = view.list_recursive("", MAX_UNMOUNT_KEYS).await?;
        for chunk in keys.chunks(DELETE_CHUNK) {
            view.transaction(chunk.iter().map(|k| ViewOp::Delete(k.clone())).collect()).await?;
        }
        Ok(())
    }

    pub async fn auth_table(&self) -> Result<Vec<MountEntry>> {
        Ok(self.core_view().get_json(AUTH_TABLE_KEY).await?.unwrap_or_default())
    }

    /// `POST sys/auth/<path>`: enables an auth method at `auth/<path>/`.
    pub async fn enable_auth(&self, path: &str, kind: &str, description: &str, config: mounts::MountConfig, options: Option<Map<String, Value>>) -> Result<()> {
        let kind = mounts::resolve_auth_type(kind)?;
        let _g = self.mount_lock.lock().await;
        let mut auth = self.auth_table().await?;
        let path = mounts::validate_new_auth_path(path, &auth)?;
        let mut entry = MountEntry::new_auth(&path, &kind, description, Some(options.unwrap_or_default()));
        entry.config = config;
        auth.push(entry);
        self.core_view().put_json(AUTH_TABLE_KEY, &auth).await?;
        self.router.rebuild_with_auth(&self.barrier, &self.mount_table().await?, &auth)
    }

    /// `POST sys/auth/<path>/tune`: sets an auth method's lease TTLs (0 = the system's) and
    /// description. `None` leaves a value as it is.
    pub async fn tune_auth(&self, path: &str, default_ttl: Option<u64>, max_ttl: Option<u64>, description: Option<String>) -> Result<()> {
        let _g = self.mount_lock.lock().await;
        let want = format!("{}/", path.trim_matches('/'));
        let mut auth = self.auth_table().await?;
        let Some(entry) = auth.iter_mut().find(|m| m.path == want) else {
            return Err(Error::bad_request(format!("cannot fetch sysview for path \"auth/{want}\"")));
        };
        let mut config = entry.config.clone();
        if let Some(d) = default_ttl {
            config.default_lease_ttl = d;
        }
        if let Some(m) = max_ttl {
            config.max_lease_ttl = m;
        }
        let effective_default = if config.default_lease_ttl == 0 { self.default_lease_ttl } else { config.default_lease_ttl };
        let effective_max = if config.max_lease_ttl == 0 { self.max_lease_ttl } else { config.max_lease_ttl };
        if effective_max < effective_default {
            return Err(Error::bad_request(format!(
                "backend max lease TTL of {effective_max} would be less than backend default lease TTL of {effective_default}"
            )));
        }
        entry.config = config;
        if let Some(d) = description {
            entry.description = d;
        }
        self.core_view().put_json(AUTH_TABLE_KEY, &auth).await?;
        self.router.rebuild_with_auth(&self.barrier, &self.mount_table().await?, &auth)
    }

    /// `DELETE sys/auth/<path>`: unroutes the method, revokes the tokens it issued and removes
    /// its data.
    pub async fn disable_auth(&self, path: &str) -> Result<()> {
        let _g = self.mount_lock.lock().await;
        let want = format!("{}/", path.trim_matches('/'));
        let mut auth = self.auth_table().await?;
        let Some(pos) = auth.iter().position(|m| m.path == want) else {
            return Ok(());
        };
        if auth[pos].kind == "token" {
            return Err(Error::bad_request("token credential backend cannot be disabled"));
        }
        let entry = auth.remove(pos);
        self.core_view().put_json(AUTH_TABLE_KEY, &auth).await?;
        self.router.rebuild_with_auth(&self.barrier, &self.mount_table().await?, &auth)?;
        for hash in self.tokens.hashes_with_path_prefix(&format!("auth/{want}")).await? {
            self.tokens.revoke_tree(&hash).await?;
        }
        let view = View::new(self.barrier.clone(), entry.auth_storage_prefix());
        let keys = view.list_recursive("", MAX_UNMOUNT_KEYS).await?;
        for chunk in keys.chunks(DELETE_CHUNK) {
            view.transaction(chunk.iter().map(|k| ViewOp::Delete(k.clone())).collect()).await?;
        }
        Ok(())
    }

    /// Dev mode: initialize with one share, unseal, and mount KV v2 at `secret/`.
    pub async fn dev_setup(&self, root_token_id: Option<&str>) -> Result<(String, String)> {
        let init = self
            .initialize(SealConfig::shamir(1, 1), root_token_id)
            .await?;
        let key = init.keys.first().ok_or_else(|| Error::internal("no unseal key generated"))?;
        let key_b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key.as_slice());
        self.unseal_share(&key_b64).await?;
        let mut opts = Map::new();
        opts.insert("version".into(), Value::String("2".into()));
        self.enable_mount("secret", "kv", "key/value secret storage", Some(opts)).await?;
        Ok((key_b64, init.root_token))
    }

    pub async fn shutdown(&self) {
        if self.ha_lock.is_some() {
            // Stop serving and give the lock back, so a standby takes over without waiting out
            // the lock's TTL.
            self.stop_ha().await;
        }
        if let StorageKind::Raft(raft) = &self.storage {
            if let Err(e) = raft.shutdown().await {
                tracing::warn!(error = %e, "raft shutdown");
            }
        }
    }

    /// After a Raft snapshot restore replaced the whole store under this node (on the leader
    /// that ran it and on every follower): reload the keyring, drop every cache and rebuild the
    /// routes from the restored tables. A keyring that does not open with this node's root key
    /// (a forced restore of another cluster's snapshot) seals the node, as Vault does: it then
    /// needs the unseal keys of the snapshot's cluster.
    pub async fn reload_after_restore(&self) -> Result<()> {
        if self.is_sealed() {
            return Ok(());
        }
        if let Err(e) = self.barrier.reload_keyring().await {
            tracing::warn!("the restored keyring does not open with this node's root key, sealing: {e}");
            return self.seal().await;
        }
        let _mounts = self.mount_lock.lock().await;
        self.reload_stored_state().await?;
        let info: Option<ClusterInfo> = self.core_view().get_json("cluster/local/info").await?;
        if let Ok(mut c) = self.cluster.write() {
            *c = info;
        }
        tracing::info!("core: reloaded keyring, tables and caches after a snapshot restore");
        Ok(())
    }

    /// This node was removed from its Raft cluster (HV 1.19's `removed_from_cluster`): health
    /// answers 530 and requests are refused. Durable across restarts (the raft crate records it).
    pub fn removed_from_cluster(&self) -> bool {
        self.raft().is_some_and(|r| r.is_removed())
    }
}

/// Whether a write to an engine's storage key `rest` can stale what the engine caches in
/// memory: KV v2 caches its `config`, transit its parsed keys; KV data, userpass and approle
/// are read from storage on every request. Unknown kinds are assumed to cache.
fn engine_caches(kind: &str, rest: &str) -> bool {
    match kind {
        "kv" => rest == "config",
        "userpass" | "approle" => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use async_trait::async_trait;
    use serde_json::json;
    use vaultd_storage::inmem::InmemBackend;

    use super::*;
    use crate::router::LogicalBackend;

    async fn dev_core() -> Arc<Core> {
        let core = Core::new(CoreConfig {
            physical: Arc::new(InmemBackend::new()),
            storage: StorageKind::Inmem,
            api_addr: "http://127.0.0.1:8200".into(),
            cluster_addr: "https://127.0.0.1:8201".into(),
            cluster_bind: None,
            default_lease_ttl: 768 * 3600,
            max_lease_ttl: 768 * 3600,
            performance_standby: true,
            ha_lock: None,
        });
        core.dev_setup(Some("root")).await.unwrap();
        core
    }

    fn req(op: Operation, path: &str, token: &str, data: serde_json::Value) -> Request {
        let mut r = Request::new(op, path);
        r.token = Some(token.to_string());
        if let serde_json::Value::Object(m) = data {
            r.data = m;
        }
        r
    }

    async fn new_token(core: &Core, body: serde_json::Value) -> String {
        let resp = core.handle_request(&req(Operation::Update, "auth/token/create", "root", body)).await.unwrap().unwrap();
        resp.auth.unwrap().client_token
    }

    #[tokio::test]
    async fn pipeline_enforces_policies_and_sudo() {
        let core = dev_core().await;
        let policy = r#"
            path "secret/data/*" { capabilities = ["read"] }
            path "sys/rotate" { capabilities = ["update"] }
            path "sys/mounts/*" { capabilities = ["update", "sudo"] }
        "#;
        core.handle_request(&req(Operation::Update, "sys/policies/acl/reader", "root", json!({ "policy": policy }))).await.unwrap();
        let t = new_token(&core, json!({"policies": ["reader"]})).await;
        core.handle_request(&req(Operation::Update, "secret/data/a", "root", json!({"data": {"k": "v"}}))).await.unwrap();
        let r = core.handle_request(&req(Operation::Read, "secret/data/a", &t, json!({}))).await.unwrap().unwrap();
        assert_eq!(r.data.unwrap()["data"]["k"], "v");
        let denied = |r: Result<Option<Response>>| matches!(r, Err(Error::PermissionDenied));
        assert!(denied(core.handle_request(&req(Operation::Update, "secret/data/a", &t, json!({"data": {}}))).await));
        assert!(denied(core.handle_request(&req(Operation::List, "secret/metadata/", &t, json!({}))).await));
        // `update` without `sudo` on a root path is not enough.
        assert!(denied(core.handle_request(&req(Operation::Update, "sys/rotate", &t, json!({}))).await));
        assert!(denied(core.handle_request(&req(Operation::Read, "auth/token/lookup-self", "bogus", json!({}))).await));
        let r = core.handle_request(&req(Operation::Read, "auth/token/lookup-self", &t, json!({}))).await.unwrap().unwrap();
        assert_eq!(r.data.unwrap()["id"], json!(t));
        // Unknown paths: 403 for a token without access, 404 for one with.
        assert!(denied(core.handle_request(&req(Operation::Read, "nope/x", &t, json!({}))).await));
        assert!(matches!(core.handle_request(&req(Operation::Read, "nope/x", "root", json!({}))).await, Err(Error::NoHandler(_))));
        // A policy change applies to existing tokens at once.
        core.handle_request(&req(Operation::Update, "sys/policies/acl/reader", "root", json!({ "policy": "path \"x\" { capabilities = [\"read\"] }" })))
            .await
            .unwrap();
        assert!(denied(core.handle_request(&req(Operation::Read, "secret/data/a", &t, json!({}))).await));
    }

    struct FakeLogin;

    #[async_trait]
    impl LogicalBackend for FakeLogin {
        async fn handle(&self, _req: &Request, path: &str) -> Result<Option<Response>> {
            assert_eq!(path, "login/bob");
            let mut metadata = std::collections::BTreeMap::new();
            metadata.insert("username".to_string(), "bob".to_string());
            let auth = Auth {
                policies: vec!["dev".into(), "default".into()],
                metadata,
                display_name: "bob".into(),
                ttl: 60,
                renewable: true,
                ..Default::default()
            };
            Ok(Some(Response { auth: Some(auth), ..Default::default() }))
        }

        fn unauthenticated_paths(&self) -> &'static [&'static str] {
            &["login/*"]
        }
    }

    #[tokio::test]
    async fn login_responses_become_tokens() {
        let core = dev_core().await;
        let route = Arc::new(Route {
            entry: MountEntry::new_auth("fake/", "userpass", "", None),
            prefix: "auth/fake/".into(),
            is_auth: true,
            backend: Some(Arc::new(FakeLogin)),
        });
        let target = Target::Routed(route.clone(), "login/bob".into());
        let r = Request::new(Operation::Update, "auth/fake/login/bob");
        assert!(matches!(core.authorize(&r, &target).await.unwrap(), Authz::Unauthenticated), "login paths need no token");
        let resp = core.dispatch(&r, target, None).await.unwrap().unwrap();
        let auth = resp.auth.unwrap();
        assert!(auth.client_token.starts_with("hvs."));
        assert_eq!(auth.policies, vec!["default", "dev"]);
        assert_eq!(auth.ttl, 60);
        assert!(auth.orphan && auth.renewable);
        let (_, e) = core.tokens.lookup(&auth.client_token).await.unwrap();
        assert_eq!(e.display_name, "fake-bob");
        assert_eq!(e.path, "auth/fake/login/bob");
        assert_eq!(e.meta.as_ref().unwrap()["username"], "bob");
    }

    /// The cost the pipeline adds to a request: token lookup (hash, cache) plus the ACL check
    /// (cached compile, rule match). Run with
    /// `cargo test --release -p vaultd bench_token_and_policy -- --ignored --nocapture`.
    #[tokio::test]
    #[ignore]
    async fn bench_token_and_policy() {
        let core = dev_core().await;
        let mut policy = String::new();
        // A realistic policy: a few dozen rules of each kind.
        for i in 0..30 {
            policy.push_str(&format!("path \"secret/data/team{i}/*\" {{ capabilities = [\"read\", \"list\"] }}\n"));
            policy.push_str(&format!("path \"kv/team{i}/config\" {{ capabilities = [\"read\"] }}\n"));
            policy.push_str(&format!("path \"secret/+/team{i}/+\" {{ capabilities = [\"update\"] }}\n"));
        }
        core.handle_request(&req(Operation::Update, "sys/policies/acl/bench", "root", json!({ "policy": policy }))).await.unwrap();
        let t = new_token(&core, json!({"policies": ["bench"]})).await;
        let r = req(Operation::Read, "secret/data/team17/app/db", &t, json!({}));
        let (target, _) = core.target(&r.path);
        for _ in 0..1000 {
            assert!(matches!(core.authorize(&r, &target).await.unwrap(), Authz::Allowed(_)));
        }
        let n = 200_000;
        let start = Instant::now();
        for _ in 0..n {
            let c = core.authorize(&r, &target).await.unwrap();
            std::hint::black_box(c);
        }
        let per = start.elapsed() / n;
        println!("token lookup + ACL check: {per:?} per request ({} rules)", 90 + 17);
        assert!(per < Duration::from_micros(10), "{per:?}");
    }
}
