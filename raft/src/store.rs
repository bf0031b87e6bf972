//! The single sled database behind a node (`<path>/vaultd.sled`), and the sync that makes what sled
//! wrote durable.
//!
//! Trees:
//! - `log`: Raft log entries, keyed by big-endian index so that sled's order is log order.
//! - `meta`: vote, committed log id, last purged log id, this node's numeric Raft id, Vault's
//!   string node id, the schema version, and which state-machine generation is live.
//! - `sm.<generation>`: the state machine (see `state_machine.rs`). A snapshot install writes a
//!   new generation and then flips the pointer in `meta`, so a crash never leaves a mix.
//!
//! ## Durability
//!
//! sled 0.34.7's `flush()` is not enough on its own:
//! - on Linux it ends in `sync_file_range`, which starts write-back of sled's log file `db` but
//!   neither commits file metadata nor flushes the drive's volatile cache (sled issue 1452);
//! - items bigger than a quarter segment (128 KiB at the default 512 KiB segments) go to files under
//!   `blobs/`, which sled writes without any sync;
//! - sled writes `conf` without a sync and renames its page-table snapshots (`snap.*`) into place
//!   without syncing the directory; nobody syncs the directories it creates.
//!
//! [`SledSyncer::sync`] (in `vaultd_storage::sled_sync`, shared with the sled backend) therefore
//! runs sled's flush, fsyncs every blob that is new or changed size and a directory whose entries
//! changed, and then `fdatasync`s the log file. Every point at
//! which this crate tells openraft "on disk" (`append`'s callback, `save_vote`,
//! `truncate`, `purge`, `install_snapshot`) goes through it. One sync covers every tree: sled keeps
//! a single log for the whole database.
//!
//! A failed sync is final: after an fsync error the kernel may have dropped the dirty pages and
//! cleared the error, so a later successful fsync proves nothing. The syncer then refuses every
//! further sync, openraft turns the storage error into a fatal stop, and the node recovers from
//! what is really on disk when the process restarts.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;

use vaultd_storage::sled_sync::{create_dir_durably, SledSyncer, SyncError};

use crate::error::RaftError;

/// Name of the sled directory inside the configured raft `path`. A directory of its own leaves room
/// beside it for later files (a streamed snapshot, a `node-id` file as Vault keeps).
pub(crate) const DB_DIR: &str = "vaultd.sled";

/// sled's page cache. Its 1 GiB default inflates RSS far beyond what a secrets server needs (RSS has
/// been reported at several times the cache size); vaultd's working set is small.
const CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

/// Bumped whenever the layout of the trees or the encoding of a value changes incompatibly.
const SCHEMA_VERSION: u32 = 1;

pub(crate) const TREE_LOG: &str = "log";
pub(crate) const TREE_META: &str = "meta";
/// State-machine trees are `sm.<generation>`.
pub(crate) const TREE_SM_PREFIX: &str = "sm.";

/// Keys of the `meta` tree.
pub(crate) mod meta_key {
    pub(crate) const SCHEMA_VERSION: &[u8] = b"schema_version";
    pub(crate) const RAFT_ID: &[u8] = b"raft_id";
    pub(crate) const NODE_ID: &[u8] = b"node_id";
    pub(crate) const VOTE: &[u8] = b"vote";
    pub(crate) const COMMITTED: &[u8] = b"committed";
    pub(crate) const LAST_PURGED: &[u8] = b"last_purged";
    pub(crate) const SM_GENERATION: &[u8] = b"sm_generation";
    /// Present once this node learned that it was removed from the cluster; never cleared (a
    /// removed node rejoins only with a wiped data directory, as Vault's).
    pub(crate) const REMOVED: &[u8] = b"removed";
}

pub(crate) fn sm_tree_name(generation: u64) -> String {
    format!("{TREE_SM_PREFIX}{generation}")
}

/// Encodes a persisted value. Named fields (a map, not a tuple) cost a few bytes per value and keep
/// old data readable when a struct gains an optional field.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, RaftError> {
    rmp_serde::to_vec_named(value).map_err(|e| RaftError::Corrupt(format!("encoding failed: {e}")))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, RaftError> {
    rmp_serde::from_slice(bytes)
        .map_err(|e| RaftError::Corrupt(format!("cannot decode {what}: {e}")))
}

pub(crate) fn u64_from_be(bytes: &[u8], what: &str) -> Result<u64, RaftError> {
    let arr: [u8; 8] =
        bytes.try_into().map_err(|_| RaftError::Corrupt(format!("{what} is not 8 bytes long")))?;
    Ok(u64::from_be_bytes(arr))
}

/// The open database, shared by the log store, the state machine and the read path.
pub(crate) struct Store {
    pub(crate) db: sled::Db,
    pub(crate) log: sled::Tree,
    pub(crate) meta: sled::Tree,
    /// This node's numeric Raft id, fixed when the directory was created.
    pub(crate) raft_id: u64,
    /// The last index `save_committed` made durable, for status reporting (openraft 0.9's metrics
    /// carry no committed index).
    pub(crate) committed_index: AtomicU64,
    syncer: Mutex<SledSyncer>,
}

impl Store {
    /// Opens or creates `<path>/vaultd.sled`. Blocking: sled's recovery reads its whole log, so
    /// async callers run this on the blocking pool.
    ///
    /// A new directory gets a random numeric Raft id: a node whose data was wiped comes back as a
    /// new member instead of a known id with a shorter log, which openraft's leader does not
    /// tolerate (openraft issue 898). `node_id` is Vault's string id; reopening a directory under
    /// another one is refused, so two nodes' data cannot be mixed up by a config slip.
    pub(crate) fn open(path: &Path, node_id: &str) -> Result<Arc<Store>, RaftError> {
        create_dir_durably(path).map_err(|e| io_error("creating the raft directory", path, e))?;
        let dir = path.join(DB_DIR);

        // `temporary` stays false (its default): a temporary sled database skips every sync.
        let db = sled::Config::new().path(&dir).cache_capacity(CACHE_CAPACITY_BYTES).open()?;
        let log = db.open_tree(TREE_LOG)?;
        let meta = db.open_tree(TREE_META)?;
        let syncer = SledSyncer::new(&dir, Some(path))
            .map_err(|e| io_error("opening sled's files in", &dir, e))?;

        let raft_id = match meta.get(meta_key::RAFT_ID)? {
            Some(raw) => {
                check_existing(&meta, node_id)?;
                u64_from_be(&raw, "the stored raft id")?
            }
            None => initialize_meta(&meta, node_id)?,
        };
        let committed_index = match meta.get(meta_key::COMMITTED)? {
            Some(raw) => decode::<openraft::LogId<u64>>(&raw, "the committed log id")?.index,
            None => 0,
        };

        let store = Store {
            db,
            log,
            meta,
            raft_id,
            committed_index: AtomicU64::new(committed_index),
            syncer: Mutex::new(syncer),
        };
        // Makes durable what sled and we just created: `conf`, the directories, the metadata.
        store.sync_blocking()?;
        Ok(Arc::new(store))
    }

    /// Makes every write done so far to any tree durable. Blocking (an fdatasync costs ~0.3 ms
    /// here, more on a busy disk).
    pub(crate) fn sync_blocking(&self) -> Result<(), RaftError> {
        let mut syncer =
            self.syncer.lock().map_err(|_| RaftError::Io("the sync lock is poisoned".into()))?;
        syncer.sync(&self.db).map_err(|e| {
            let err = sync_error(&e);
            if !matches!(e, SyncError::Refused(_)) {
                tracing::error!("failed to sync raft storage, refusing all further writes: {err}");
            }
            err
        })
    }

    /// [`Store::sync_blocking`] on tokio's blocking pool, so an fsync never stalls the runtime's
    /// few worker threads (two on the target machine).
    pub(crate) async fn sync(self: &Arc<Self>) -> Result<(), RaftError> {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || store.sync_blocking())
            .await
            .map_err(|e| RaftError::Io(format!("the sync task failed: {e}")))?
    }

    pub(crate) fn committed_index(&self) -> u64 {
        self.committed_index.load(Ordering::Relaxed)
    }

    pub(crate) fn is_removed(&self) -> Result<bool, RaftError> {
        Ok(self.meta.get(meta_key::REMOVED)?.is_some())
    }

    /// Records durably that this node was removed from the cluster.
    pub(crate) async fn mark_removed(self: &Arc<Self>) -> Result<(), RaftError> {
        self.meta.insert(meta_key::REMOVED, &[1u8])?;
        self.sync().await
    }
}

fn initialize_meta(meta: &sled::Tree, node_id: &str) -> Result<u64, RaftError> {
    // Zero is a fine openraft id, but as "unset" it is easy to confuse in logs and status output.
    let raft_id = rand::random::<u64>().max(1);
    let mut batch = sled::Batch::default();
    batch.insert(meta_key::SCHEMA_VERSION, &SCHEMA_VERSION.to_be_bytes());
    batch.insert(meta_key::NODE_ID, node_id.as_bytes());
    batch.insert(meta_key::SM_GENERATION, &0u64.to_be_bytes());
    // Written last within the batch and checked first on open: its presence means "initialized".
    batch.insert(meta_key::RAFT_ID, &raft_id.to_be_bytes());
    meta.apply_batch(batch)?;
    tracing::info!(raft_id, node_id, "created a new raft data directory");
    Ok(raft_id)
}

fn check_existing(meta: &sled::Tree, node_id: &str) -> Result<(), RaftError> {
    let version = match meta.get(meta_key::SCHEMA_VERSION)? {
        Some(raw) => {
            let arr: [u8; 4] = raw
                .as_ref()
                .try_into()
                .map_err(|_| RaftError::Corrupt("the schema version is not 4 bytes".into()))?;
            u32::from_be_bytes(arr)
        }
        None => return Err(RaftError::Corrupt("the raft metadata has no schema version".into())),
    };
    if version != SCHEMA_VERSION {
        return Err(RaftError::Config(format!(
            "the raft data directory has schema version {version}, this build reads only version {SCHEMA_VERSION}"
        )));
    }
    let stored = meta
        .get(meta_key::NODE_ID)?
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default();
    if stored != node_id {
        return Err(RaftError::Config(format!(
            "the raft data directory belongs to node_id {stored:?}, but this node is configured as {node_id:?}"
        )));
    }
    Ok(())
}

/// A [`SyncError`] in this crate's words: a failed sled flush keeps its corruption/I/O split, and
/// a refusal names the first failure as it was reported then.
fn sync_error(e: &SyncError) -> RaftError {
    match e {
        SyncError::Flush(sled_error) => RaftError::from(sled_error.clone()),
        SyncError::Io { .. } => RaftError::Io(e.to_string()),
        SyncError::Refused(first) => RaftError::Io(format!(
            "storage refuses writes after an earlier failed sync: {}",
            sync_error(first)
        )),
    }
}

fn io_error(what: &str, path: &Path, e: io::Error) -> RaftError {
    RaftError::Io(format!("{what} {}: {e}", path.display()))
}
