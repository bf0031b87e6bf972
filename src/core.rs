//! The core: one node's state and the request path above HTTP.
//!
//! `Core` owns the barrier, the seal lifecycle (init, unseal, seal), the mount table and router,
//! and the token store. The HTTP layer turns requests into [`Request`]s and calls
//! [`Core::handle_request`]; everything below (router, engines, barrier, storage, Raft) is reached
//! only through here.
//!
//! Lifecycle invariants:
//! - "Initialized" means the seal configuration exists in storage. It is written last by init,
//!   so a crash during init leaves a node that can simply be initialized again.
//! - "Unsealed" means the barrier holds the keyring *and* post-unseal setup (mounts, cluster
//!   identity) finished: `ready` is set last, and requests check only `ready`.
//! - init, unseal and seal are serialised by one mutex; requests never take it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Mutex;
use vaultd_raft::RaftNode;
use vaultd_storage::Backend;

use crate::barrier::{Barrier, RootKey};
use crate::error::{Error, Result};
use crate::mounts::{self, MountEntry, MOUNT_TABLE_KEY};
use crate::request::{Operation, Request, Response};
use crate::router::Router;
use crate::seal::{self, SealConfig, UnsealKey, UnsealProgress};
use crate::sys;
use crate::token::{TokenEntry, TokenStore};
use crate::view::{View, ViewOp};

/// How long unseal waits for this node to lead its Raft group before giving up.
const LEADER_WAIT: Duration = Duration::from_secs(15);
/// Upper bound on keys removed when a mount is disabled in one call (bounded memory).
const MAX_UNMOUNT_KEYS: usize = 1_000_000;

/// Where the storage lives and what it can do; fixed for the life of the process.
pub enum StorageKind {
    Raft(Arc<RaftNode>),
    Inmem,
    File,
}

impl StorageKind {
    pub fn name(&self) -> &'static str {
        match self {
            StorageKind::Raft(_) => "raft",
            StorageKind::Inmem => "inmem",
            StorageKind::File => "file",
        }
    }
}

pub struct CoreConfig {
    pub physical: Arc<dyn Backend>,
    pub storage: StorageKind,
    pub api_addr: String,
    pub cluster_addr: String,
    pub default_lease_ttl: u64,
    pub max_lease_ttl: u64,
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

pub struct Core {
    pub physical: Arc<dyn Backend>,
    pub barrier: Arc<Barrier>,
    pub storage: StorageKind,
    pub router: Router,
    pub tokens: TokenStore,
    pub api_addr: String,
    pub cluster_addr: String,
    pub default_lease_ttl: u64,
    pub max_lease_ttl: u64,
    ready: AtomicBool,
    lifecycle: Mutex<Option<UnsealProgress>>,
    /// Serialises mount table changes (read-modify-write of one document).
    mount_lock: Mutex<()>,
    cluster: RwLock<Option<ClusterInfo>>,
    active_since: RwLock<Option<String>>,
}

impl Core {
    pub fn new(cfg: CoreConfig) -> Arc<Core> {
        let barrier = Arc::new(Barrier::new(cfg.physical.clone()));
        Arc::new(Core {
            physical: cfg.physical,
            barrier,
            storage: cfg.storage,
            router: Router::new(),
            tokens: TokenStore::new(),
            api_addr: cfg.api_addr,
            cluster_addr: cfg.cluster_addr,
            default_lease_ttl: cfg.default_lease_ttl,
            max_lease_ttl: cfg.max_lease_ttl,
            ready: AtomicBool::new(false),
            lifecycle: Mutex::new(None),
            mount_lock: Mutex::new(()),
            cluster: RwLock::new(None),
            active_since: RwLock::new(None),
        })
    }

    fn core_view(&self) -> View {
        View::new(self.barrier.clone(), "core/")
    }

    fn token_view(&self) -> View {
        View::new(self.barrier.clone(), "sys/token/")
    }

    pub fn is_sealed(&self) -> bool {
        !self.ready.load(Ordering::Acquire)
    }

    pub fn ha_enabled(&self) -> bool {
        matches!(self.storage, StorageKind::Raft(_))
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

    pub async fn seal_config(&self) -> Result<Option<SealConfig>> {
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
        self.tokens.create_root(&self.token_view(), root_token_id).await
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

    /// Loads everything a serving node needs, then marks it ready.
    async fn post_unseal(&self) -> Result<()> {
        self.ensure_writable().await?;
        let core = self.core_view();
        let table: Vec<MountEntry> = match core.get_json(MOUNT_TABLE_KEY).await? {
            Some(t) => t,
            None => {
                let t = mounts::default_table();
                core.put_json(MOUNT_TABLE_KEY, &t).await?;
                t
            }
        };
        self.router.rebuild(&self.barrier, &table)?;
        let info: Option<ClusterInfo> = core.get_json("cluster/local/info").await?;
        if let Ok(mut c) = self.cluster.write() {
            *c = info;
        }
        if let Ok(mut a) = self.active_since.write() {
            *a = Some(crate::kv::now_rfc3339());
        }
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
        self.router.clear();
        self.tokens.clear_cache();
        self.barrier.seal();
        if let Ok(mut a) = self.active_since.write() {
            *a = None;
        }
        tracing::info!("core: vault is sealed");
        Ok(())
    }

    /// Resolves the request's token, or fails with "permission denied".
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Arc<TokenEntry>> {
        let token = token.ok_or(Error::PermissionDenied)?;
        self.tokens.lookup(&self.token_view(), token).await
    }

    /// The authenticated request path: token -> policy -> router -> engine.
    pub async fn handle_request(&self, req: &Request) -> Result<Option<Response>> {
        if self.is_sealed() {
            return Err(Error::Sealed);
        }
        let token = self.authenticate(req.token.as_deref()).await?;
        // Any valid token may look itself up, whatever its policies.
        if req.path == "auth/token/lookup-self" && matches!(req.op, Operation::Read | Operation::Update) {
            let mut data = token.lookup_data();
            data["id"] = serde_json::Value::String(req.token.clone().unwrap_or_default());
            return Ok(Some(Response::from_value(data)));
        }
        // Only root tokens exist until ACL policies land; anything else is denied.
        if !token.is_root() {
            return Err(Error::PermissionDenied);
        }
        if req.path == "sys" || req.path.starts_with("sys/") {
            return sys::handle(self, req).await;
        }
        self.router.route(req).await
    }

    pub async fn mount_table(&self) -> Result<Vec<MountEntry>> {
        Ok(self.core_view().get_json(MOUNT_TABLE_KEY).await?.unwrap_or_default())
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
        for chunk in keys.chunks(256) {
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
        if let StorageKind::Raft(raft) = &self.storage {
            if let Err(e) = raft.shutdown().await {
                tracing::warn!(error = %e, "raft shutdown");
            }
        }
    }
}
