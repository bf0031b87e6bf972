//! openraft's `RaftStateMachine` on one sled tree per generation, `sm.<generation>`, and the
//! local read path that serves `get`/`list` from it.
//!
//! ## Layout
//!
//! One tree holds both the data and the state machine's own metadata, so that one sled `Batch`
//! (atomic in memory and on disk) updates them together, with no cross-tree transaction:
//! - `0x00 "last_applied"`, `0x00 "last_membership"`: the metadata;
//! - `0x01 <key>`: a vaultd key and its value.
//!
//! ## Durability of applies
//!
//! `apply` writes each entry's operations, its log id as `last_applied` and, for a membership
//! entry, the membership, in one batch; it does not sync. It does not need to: an entry is applied
//! only once committed, and a committed entry is already durable in the log (and the committed id
//! too, see `save_committed`). After a crash the tree may be behind; openraft then re-applies the
//! log from the recovered `last_applied` up to the recovered committed id, and since data and
//! `last_applied` move in one batch, no entry is applied twice or skipped. `purge` syncs before it
//! drops log entries, so the log still holds every entry the tree may have lost.
//!
//! ## Snapshots
//!
//! A snapshot is the data of the tree (not the metadata, which openraft sends as `SnapshotMeta`)
//! in a small framed format (see [`SnapshotWriter`]), held in memory (`Cursor<Vec<u8>>`) for now.
//! `install_snapshot` must *replace* the state machine: it writes the snapshot into a fresh
//! generation, syncs, then flips `meta.sm_generation` to it and syncs again, and only then drops
//! the old tree. A crash before the flip leaves the old generation live and a partial new one that
//! the next open deletes; a crash after it leaves the new one live. No key of the old state can
//! survive into the new one, which a "clear, then insert" on one tree could not promise without a
//! transaction holding the whole snapshot (sled transactions cannot iterate to clear a tree).
//!
//! ## Restores
//!
//! A restore of a saved snapshot (`snapshot.rs`) arrives as log entries, so every node applies it
//! at the same point of the log, and a node that crashes re-applies what it lost:
//! - `BeginRestore{id}` empties the staging tree `sm.<live generation + 1>` and records `id` under
//!   `0x00 "restore"` in the live tree (with `last_applied`, one batch);
//! - `RestoreChunk{id, pairs}` writes the pairs into the staging tree (idempotent, so a chunk
//!   re-applied after a crash does no harm), then moves `last_applied` in the live tree;
//! - `CommitRestore{id}` gives the staging tree `last_applied` and the live membership, syncs,
//!   flips `meta.sm_generation` to it and syncs again, exactly as a snapshot install: a crash
//!   before the flip re-applies the commit on restart, a crash after it finds the restored data
//!   live. `AbortRestore{id}` drops the staging tree and the record.
//!
//! `open` keeps the staging tree only while the live tree records a restore. A step naming
//! another id than the recorded one is skipped on every node alike (it is a deterministic function
//! of the log), so a stale leader's step cannot mix two restores. Live writes applied between
//! begin and commit go to the old tree and are discarded by the commit, as in Vault.
//!
//! The current snapshot is kept in memory only. After a restart there is none until openraft asks
//! for one; openraft rebuilds it at start-up if the log was purged.

use std::io::Cursor;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StoredMembership,
};

use crate::error::{to_storage_error, RaftError};
use crate::store::{decode, encode, meta_key, sm_tree_name, u64_from_be, Store, TREE_SM_PREFIX};
use crate::types::{Node, Op, Response, TypeConfig};

const KEY_LAST_APPLIED: &[u8] = b"\x00last_applied";
const KEY_LAST_MEMBERSHIP: &[u8] = b"\x00last_membership";
/// Present while a restore is staged: its id (see "Restores" in the module docs).
const KEY_RESTORE: &[u8] = b"\x00restore";
pub(crate) const DATA_PREFIX: u8 = 0x01;
/// Marks, in a Raft snapshot only, a pair of the staging tree of a restore in progress.
const STAGED_PREFIX: u8 = 0x02;

/// Limits of one sled batch while installing a snapshot: bounds the memory a batch holds besides
/// the snapshot itself.
const INSTALL_BATCH_BYTES: usize = 4 * 1024 * 1024;
const INSTALL_BATCH_OPS: usize = 4096;

fn data_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(DATA_PREFIX);
    k.extend_from_slice(key.as_bytes());
    k
}

/// What `applied_state` reports: the last applied log id and the last membership.
type AppliedState = (Option<LogId<u64>>, StoredMembership<u64, Node>);

fn sm_error(verb: ErrorVerb, e: RaftError) -> StorageError<u64> {
    to_storage_error(ErrorSubject::StateMachine, verb, e)
}

fn snapshot_error(
    verb: ErrorVerb,
    meta: Option<&SnapshotMeta<u64, Node>>,
    e: RaftError,
) -> StorageError<u64> {
    to_storage_error(ErrorSubject::Snapshot(meta.map(|m| m.signature())), verb, e)
}

/// The live generation, shared between the state machine (which replaces it on snapshot install)
/// and the read path.
struct Live {
    generation: u64,
    tree: sled::Tree,
}

#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, Node>,
    data: Vec<u8>,
}

/// State shared by the state machine, its snapshot builders and [`crate::RaftNode`]'s reads.
pub(crate) struct SmShared {
    live: RwLock<Live>,
    current_snapshot: Mutex<Option<StoredSnapshot>>,
    /// Held by `apply` for each entry and by an export for its whole scan, so that an exported
    /// snapshot is the state between two entries, never half of a transaction. An async lock:
    /// `apply` holds it across the syncs of a restore commit.
    pub(crate) apply_gate: tokio::sync::Mutex<()>,
    /// Counts restores committed on this node, for the server to reload what it derived from
    /// the replaced data (keyring, mount tables, caches).
    pub(crate) restores: tokio::sync::watch::Sender<u64>,
    /// The last applied log id, published as soon as the tree holds the entry. Requests that
    /// wait for an index watch this rather than openraft's metrics: those report an apply only
    /// once the core task has taken its notification, which on a follower can wait behind the
    /// sync of the next append (~5 ms here).
    pub(crate) applied: tokio::sync::watch::Sender<Option<LogId<u64>>>,
}

impl SmShared {
    /// Publishes `log_id` as applied. Entries apply in log order, so it only moves forward;
    /// `install` replaces it (see [`SmShared::replace_applied`]).
    fn advance_applied(&self, log_id: LogId<u64>) {
        self.applied.send_if_modified(|cur| {
            let newer = cur.is_none_or(|c| c.index < log_id.index);
            if newer {
                *cur = Some(log_id);
            }
            newer
        });
    }

    fn replace_applied(&self, log_id: Option<LogId<u64>>) {
        self.applied.send_replace(log_id);
    }

    pub(crate) fn tree(&self) -> Result<sled::Tree, RaftError> {
        let live = self
            .live
            .read()
            .map_err(|_| RaftError::Io("the state machine lock is poisoned".into()))?;
        Ok(live.tree.clone())
    }

    /// A local read: sees every entry applied so far (on the leader, every write whose
    /// `client_write` has returned: openraft 0.9 answers a write after applying it).
    pub(crate) fn get(&self, key: &str) -> Result<Option<Vec<u8>>, RaftError> {
        Ok(self.tree()?.get(data_key(key))?.map(|v| v.to_vec()))
    }

    /// Vault's one-level listing. When a key reveals a subtree (`prefix` + `child/`...), the scan
    /// seeks past the whole subtree, so the cost is one seek per child, not one step per key below
    /// `prefix`. One key per child reaches `list_children`, which shapes the answer exactly as in
    /// every other backend.
    pub(crate) fn list(&self, prefix: &str) -> Result<Vec<String>, RaftError> {
        let tree = self.tree()?;
        let full_prefix = data_key(prefix);
        let mut representatives: Vec<String> = Vec::new();
        let mut start = full_prefix.clone();
        'scan: loop {
            for item in tree.range(start.as_slice()..).keys() {
                let raw = item?;
                if !raw.starts_with(&full_prefix) {
                    break 'scan;
                }
                let key = std::str::from_utf8(&raw[1..]).map_err(|_| {
                    RaftError::Corrupt(format!("a state machine key is not UTF-8: {:?}", &raw[..]))
                })?;
                let rest = key.get(prefix.len()..).unwrap_or_default();
                representatives.push(key.to_string());
                if let Some(slash) = rest.find('/') {
                    // Every key under `prefix + rest[..=slash]` sorts below this ('0' follows '/').
                    let mut next = Vec::with_capacity(full_prefix.len() + slash + 1);
                    next.extend_from_slice(&full_prefix);
                    next.extend_from_slice(&rest.as_bytes()[..slash]);
                    next.push(b'/' + 1);
                    start = next;
                    continue 'scan;
                }
            }
            break;
        }
        Ok(vaultd_storage::list_children(prefix, representatives.iter().map(String::as_str)))
    }
}

pub(crate) struct StateMachineStore {
    store: Arc<Store>,
    shared: Arc<SmShared>,
}

impl StateMachineStore {
    /// Opens the live generation and deletes any other (a snapshot install that crashed before its
    /// flip, or an old generation whose drop was interrupted), except the staging tree of a
    /// restore the live tree records as in progress.
    pub(crate) fn open(store: Arc<Store>) -> Result<(Self, Arc<SmShared>), RaftError> {
        let generation = match store.meta.get(meta_key::SM_GENERATION)? {
            Some(raw) => u64_from_be(&raw, "the state machine generation")?,
            None => {
                return Err(RaftError::Corrupt(
                    "the raft metadata names no state machine generation".into(),
                ))
            }
        };
        let live_name = sm_tree_name(generation);
        let staging_name = sm_tree_name(generation + 1);
        let restoring = store.db.open_tree(&live_name)?.contains_key(KEY_RESTORE)?;
        for name in store.db.tree_names() {
            let is_sm = name.starts_with(TREE_SM_PREFIX.as_bytes());
            let keep = name.as_ref() == live_name.as_bytes()
                || (restoring && name.as_ref() == staging_name.as_bytes());
            if is_sm && !keep {
                tracing::info!(tree = %String::from_utf8_lossy(&name), "dropping a stale state machine generation");
                store.db.drop_tree(&name)?;
            }
        }
        let tree = store.db.open_tree(&live_name)?;
        let applied: Option<LogId<u64>> = match tree.get(KEY_LAST_APPLIED)? {
            Some(raw) => Some(decode(&raw, "the last applied log id")?),
            None => None,
        };
        let shared = Arc::new(SmShared {
            live: RwLock::new(Live { generation, tree }),
            current_snapshot: Mutex::new(None),
            apply_gate: tokio::sync::Mutex::new(()),
            restores: tokio::sync::watch::Sender::new(0),
            applied: tokio::sync::watch::Sender::new(applied),
        });
        Ok((Self { store, shared: Arc::clone(&shared) }, shared))
    }

    pub(crate) fn read_applied_state(&self) -> Result<AppliedState, RaftError> {
        let tree = self.shared.tree()?;
        let last_applied = match tree.get(KEY_LAST_APPLIED)? {
            Some(raw) => Some(decode(&raw, "the last applied log id")?),
            None => None,
        };
        let membership = match tree.get(KEY_LAST_MEMBERSHIP)? {
            Some(raw) => decode(&raw, "the last membership")?,
            None => StoredMembership::default(),
        };
        Ok((last_applied, membership))
    }

    fn apply_entry(tree: &sled::Tree, entry: Entry<TypeConfig>) -> Result<(), RaftError> {
        let mut batch = sled::Batch::default();
        match entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Normal(request) => {
                // A Batch keeps the last operation per key: what applying them in order leaves.
                for op in request.ops {
                    match op {
                        Op::Put { key, value } => batch.insert(data_key(&key), value),
                        Op::Delete { key } => batch.remove(data_key(&key)),
                        // `apply` routes entries with restore steps to `apply_restore`.
                        _ => {}
                    }
                }
            }
            EntryPayload::Membership(membership) => {
                let stored = StoredMembership::new(Some(entry.log_id), membership);
                batch.insert(KEY_LAST_MEMBERSHIP, encode(&stored)?);
            }
        }
        batch.insert(KEY_LAST_APPLIED, encode(&entry.log_id)?);
        tree.apply_batch(batch)?;
        Ok(())
    }

    fn live_generation(&self) -> Result<u64, RaftError> {
        let live = self
            .shared
            .live
            .read()
            .map_err(|_| RaftError::Io("the state machine lock is poisoned".into()))?;
        Ok(live.generation)
    }

    /// The id of the restore staged now, if any.
    fn staged_restore(tree: &sled::Tree) -> Result<Option<String>, RaftError> {
        match tree.get(KEY_RESTORE)? {
            Some(raw) => Ok(Some(decode(&raw, "the staged restore id")?)),
            None => Ok(None),
        }
    }

    /// Applies an entry carrying restore steps (see "Restores" in the module docs). Plain puts
    /// and deletes in the same entry (none are proposed so) apply to the live tree in order.
    async fn apply_restore(&mut self, entry: Entry<TypeConfig>) -> Result<Response, RaftError> {
        let EntryPayload::Normal(request) = entry.payload else {
            return Ok(Response::default());
        };
        let log_id = entry.log_id;
        let mut response = Response::default();
        for op in request.ops {
            let live = self.shared.tree()?;
            let generation = self.live_generation()?;
            let staging_name = sm_tree_name(generation + 1);
            let staged = Self::staged_restore(&live)?;
            match op {
                Op::Put { key, value } => {
                    live.insert(data_key(&key), value)?;
                }
                Op::Delete { key } => {
                    live.remove(data_key(&key))?;
                }
                Op::BeginRestore { id } => {
                    // A restore begun earlier and never finished is replaced by this one.
                    self.store.db.drop_tree(staging_name.as_bytes())?;
                    self.store.db.open_tree(&staging_name)?;
                    live.insert(KEY_RESTORE, encode(&id)?)?;
                    tracing::info!(restore = %id, "snapshot restore begun");
                }
                Op::RestoreChunk { id, pairs } => {
                    if staged.as_deref() != Some(id.as_str()) {
                        tracing::warn!(restore = %id, "skipping a chunk of a restore that is not staged");
                        continue;
                    }
                    let staging = self.store.db.open_tree(&staging_name)?;
                    let mut batch = sled::Batch::default();
                    for pair in pairs {
                        batch.insert(data_key(&pair.key), pair.value);
                    }
                    staging.apply_batch(batch)?;
                }
                Op::AbortRestore { id } => {
                    if staged.as_deref() != Some(id.as_str()) {
                        continue;
                    }
                    live.remove(KEY_RESTORE)?;
                    // Unreachable once the record is gone; a failed drop is retried by `open`.
                    if let Err(e) = self.store.db.drop_tree(staging_name.as_bytes()) {
                        tracing::warn!("failed to drop an aborted restore's staging tree: {e}");
                    }
                    tracing::info!(restore = %id, "snapshot restore aborted");
                }
                Op::CommitRestore { id } => {
                    if staged.as_deref() != Some(id.as_str()) {
                        tracing::warn!(restore = %id, "skipping the commit of a restore that is not staged");
                        continue;
                    }
                    let staging = self.store.db.open_tree(&staging_name)?;
                    let mut batch = sled::Batch::default();
                    batch.insert(KEY_LAST_APPLIED, encode(&log_id)?);
                    if let Some(membership) = live.get(KEY_LAST_MEMBERSHIP)? {
                        batch.insert(KEY_LAST_MEMBERSHIP, membership);
                    }
                    staging.apply_batch(batch)?;
                    self.switch_to(generation + 1, staging).await?;
                    self.shared.restores.send_modify(|n| *n += 1);
                    response.restore_committed = true;
                    tracing::info!(restore = %id, "snapshot restore committed");
                }
            }
        }
        self.shared.tree()?.insert(KEY_LAST_APPLIED, encode(&log_id)?)?;
        Ok(response)
    }

    /// Makes `tree`, complete and holding its metadata, the live generation: synced before and
    /// after the pointer flip, so a crash leaves either the old or the new state machine, whole.
    async fn switch_to(&mut self, generation: u64, tree: sled::Tree) -> Result<(), RaftError> {
        let old = self.live_generation()?;
        self.store.sync().await?;
        self.store.meta.insert(meta_key::SM_GENERATION, &generation.to_be_bytes())?;
        self.store.sync().await?;
        {
            let mut live = self
                .shared
                .live
                .write()
                .map_err(|_| RaftError::Io("the state machine lock is poisoned".into()))?;
            *live = Live { generation, tree };
        }
        // The old generation is unreachable now; if this fails, the next open drops it.
        if let Err(e) = self.store.db.drop_tree(sm_tree_name(old).as_bytes()) {
            tracing::warn!("failed to drop the replaced state machine generation {old}: {e}");
        }
        Ok(())
    }

    /// Copies the data out while the state machine cannot change: openraft calls this on the
    /// state machine task, between applies, and builds the snapshot on another task afterwards.
    fn capture(&self) -> Result<Captured, RaftError> {
        let (last_applied, last_membership) = self.read_applied_state()?;
        let tree = self.shared.tree()?;
        let mut writer = SnapshotWriter::new();
        for item in tree.iter() {
            let (key, value) = item?;
            // openraft sends these two as the snapshot's meta.
            if key == KEY_LAST_APPLIED || key == KEY_LAST_MEMBERSHIP {
                continue;
            }
            writer.push(&key, &value)?;
        }
        // A follower that installs this snapshot mid-restore needs the staged part too, or it
        // would skip the rest of the restore that the others apply.
        if tree.contains_key(KEY_RESTORE)? {
            let staging = self.store.db.open_tree(sm_tree_name(self.live_generation()? + 1))?;
            for item in staging.scan_prefix([DATA_PREFIX]) {
                let (key, value) = item?;
                let mut k = key.to_vec();
                k[0] = STAGED_PREFIX;
                writer.push(&k, &value)?;
            }
        }
        Ok(Captured { last_applied, last_membership, data: writer.finish() })
    }

    async fn install(
        &mut self,
        meta: &SnapshotMeta<u64, Node>,
        data: Vec<u8>,
    ) -> Result<(), RaftError> {
        // Decode everything before touching anything, so a bad snapshot leaves the state intact.
        SnapshotReader::new(&data)?.validate()?;

        // An export must not scan a tree this drops.
        let shared = Arc::clone(&self.shared);
        let _gate = shared.apply_gate.lock().await;
        let generation = self.live_generation()? + 1;
        // The new live tree, and the staging tree of a restore in progress beside it (the
        // previous staging tree, if any, is the name the new live tree takes).
        let mut fresh = Vec::with_capacity(2);
        for g in [generation, generation + 1] {
            let name = sm_tree_name(g);
            // Leftovers of a crashed install under these names were dropped at open; cheap.
            self.store.db.drop_tree(name.as_bytes())?;
            fresh.push(self.store.db.open_tree(&name)?);
        }
        let staging = fresh.pop().ok_or_else(|| RaftError::Corrupt("no staging tree".into()))?;
        let tree = fresh.pop().ok_or_else(|| RaftError::Corrupt("no live tree".into()))?;

        let mut batches = [(sled::Batch::default(), 0usize, 0usize), (sled::Batch::default(), 0, 0)];
        let mut reader = SnapshotReader::new(&data)?;
        while let Some((key, value)) = reader.next_pair()? {
            let (target, k) = if key[0] == STAGED_PREFIX {
                let mut k = key.to_vec();
                k[0] = DATA_PREFIX;
                (1, k)
            } else {
                (0, key.to_vec())
            };
            let (batch, bytes, ops) = &mut batches[target];
            batch.insert(k, value);
            *bytes += key.len() + value.len();
            *ops += 1;
            if *bytes >= INSTALL_BATCH_BYTES || *ops >= INSTALL_BATCH_OPS {
                [&tree, &staging][target].apply_batch(std::mem::take(batch))?;
                (*bytes, *ops) = (0, 0);
            }
        }
        let [(mut batch, ..), (staged, ..)] = batches;
        staging.apply_batch(staged)?;
        if let Some(last) = &meta.last_log_id {
            batch.insert(KEY_LAST_APPLIED, encode(last)?);
        }
        batch.insert(KEY_LAST_MEMBERSHIP, encode(&meta.last_membership)?);
        tree.apply_batch(batch)?;
        if !tree.contains_key(KEY_RESTORE)? {
            self.store.db.drop_tree(sm_tree_name(generation + 1).as_bytes())?;
        }

        // The new generation is complete on disk before anything points at it.
        self.switch_to(generation, tree).await?;
        self.shared.replace_applied(meta.last_log_id);
        set_current_snapshot(&self.shared, StoredSnapshot { meta: meta.clone(), data })?;
        Ok(())
    }
}

/// Keeps the newest snapshot: a build that finishes after a newer snapshot was installed must not
/// replace it.
fn set_current_snapshot(shared: &SmShared, snapshot: StoredSnapshot) -> Result<(), RaftError> {
    let mut current = shared
        .current_snapshot
        .lock()
        .map_err(|_| RaftError::Io("the snapshot lock is poisoned".into()))?;
    let newer = match &*current {
        Some(existing) => snapshot.meta.last_log_id >= existing.meta.last_log_id,
        None => true,
    };
    if newer {
        *current = Some(snapshot);
    }
    Ok(())
}

struct Captured {
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, Node>,
    data: Vec<u8>,
}

pub(crate) struct SnapshotBuilder {
    shared: Arc<SmShared>,
    captured: Option<Result<Captured, RaftError>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let captured = match self.captured.take() {
            Some(Ok(c)) => c,
            Some(Err(e)) => return Err(sm_error(ErrorVerb::Read, e)),
            None => {
                return Err(sm_error(
                    ErrorVerb::Read,
                    RaftError::Corrupt("snapshot builder used twice".into()),
                ))
            }
        };
        // Unique across restarts, so a follower never mistakes two snapshots for one.
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let snapshot_id = match &captured.last_applied {
            Some(l) => format!("{}-{}-{nanos:x}", l.leader_id, l.index),
            None => format!("none-{nanos:x}"),
        };
        let meta = SnapshotMeta {
            last_log_id: captured.last_applied,
            last_membership: captured.last_membership,
            snapshot_id,
        };
        let stored = StoredSnapshot { meta: meta.clone(), data: captured.data.clone() };
        set_current_snapshot(&self.shared, stored)
            .map_err(|e| snapshot_error(ErrorVerb::Write, Some(&meta), e))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(captured.data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<AppliedState, StorageError<u64>> {
        self.read_applied_state().map_err(|e| sm_error(ErrorVerb::Read, e))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let shared = Arc::clone(&self.shared);
        let entries = entries.into_iter();
        let mut responses = Vec::with_capacity(entries.size_hint().0);
        for entry in entries {
            let log_id = entry.log_id;
            let _gate = shared.apply_gate.lock().await;
            let is_restore = matches!(&entry.payload, EntryPayload::Normal(r) if r.ops.iter().any(Op::is_restore));
            let result = if is_restore {
                self.apply_restore(entry).await
            } else {
                match self.shared.tree() {
                    Ok(tree) => Self::apply_entry(&tree, entry).map(|()| Response::default()),
                    Err(e) => Err(e),
                }
            };
            let response = result
                .map_err(|e| to_storage_error(ErrorSubject::Apply(log_id), ErrorVerb::Write, e))?;
            shared.advance_applied(log_id);
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { shared: Arc::clone(&self.shared), captured: Some(self.capture()) }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        tracing::info!(snapshot = %meta, bytes = snapshot.get_ref().len(), "installing a raft snapshot");
        self.install(meta, snapshot.into_inner())
            .await
            .map_err(|e| snapshot_error(ErrorVerb::Write, Some(meta), e))
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let current = self.shared.current_snapshot.lock().map_err(|_| {
            sm_error(ErrorVerb::Read, RaftError::Io("the snapshot lock is poisoned".into()))
        })?;
        Ok(current.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}

/// Snapshot data: `MAGIC`, a big-endian `u64` pair count, then per pair a big-endian `u32` key
/// length, the key, a `u32` value length and the value. The count and the lengths let the reader
/// reject a truncated or padded snapshot before installing anything. Keys are the tree's raw
/// keys (a prefix byte, then a UTF-8 key): data, the staged-restore record, and with
/// `STAGED_PREFIX` the staging tree's data; not `last_applied` and the membership, which travel
/// in openraft's snapshot meta.
const SNAPSHOT_MAGIC: &[u8; 8] = b"vdsnap02";

struct SnapshotWriter {
    buf: Vec<u8>,
    count: u64,
}

impl SnapshotWriter {
    fn new() -> Self {
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(SNAPSHOT_MAGIC);
        buf.extend_from_slice(&0u64.to_be_bytes());
        Self { buf, count: 0 }
    }

    fn push(&mut self, key: &[u8], value: &[u8]) -> Result<(), RaftError> {
        for part in [key, value] {
            let len = u32::try_from(part.len()).map_err(|_| {
                RaftError::Corrupt(format!("a state machine item of {} bytes", part.len()))
            })?;
            self.buf.extend_from_slice(&len.to_be_bytes());
            self.buf.extend_from_slice(part);
        }
        self.count += 1;
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf[SNAPSHOT_MAGIC.len()..SNAPSHOT_MAGIC.len() + 8]
            .copy_from_slice(&self.count.to_be_bytes());
        self.buf
    }
}

/// A key and its value, borrowed from the snapshot data.
type Pair<'a> = (&'a [u8], &'a [u8]);

struct SnapshotReader<'a> {
    rest: &'a [u8],
    remaining: u64,
}

impl<'a> SnapshotReader<'a> {
    fn new(data: &'a [u8]) -> Result<Self, RaftError> {
        let header = SNAPSHOT_MAGIC.len() + 8;
        if data.len() < header || &data[..SNAPSHOT_MAGIC.len()] != SNAPSHOT_MAGIC {
            return Err(RaftError::Corrupt(
                "the snapshot does not start with vaultd's snapshot header".into(),
            ));
        }
        let remaining =
            u64_from_be(&data[SNAPSHOT_MAGIC.len()..header], "the snapshot pair count")?;
        Ok(Self { rest: &data[header..], remaining })
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], RaftError> {
        if self.rest.len() < len {
            return Err(RaftError::Corrupt("the snapshot is truncated".into()));
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }

    fn take_part(&mut self) -> Result<&'a [u8], RaftError> {
        let raw = self.take(4)?;
        let len = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        self.take(len as usize)
    }

    /// The next key and value, or `None` after the last pair of a well-formed snapshot.
    fn next_pair(&mut self) -> Result<Option<Pair<'a>>, RaftError> {
        if self.remaining == 0 {
            if !self.rest.is_empty() {
                return Err(RaftError::Corrupt("the snapshot has trailing bytes".into()));
            }
            return Ok(None);
        }
        let key = self.take_part()?;
        let value = self.take_part()?;
        let valid = match key.split_first() {
            Some((&DATA_PREFIX | &STAGED_PREFIX, rest)) => std::str::from_utf8(rest).is_ok(),
            Some(_) => key == KEY_RESTORE,
            None => false,
        };
        if !valid {
            return Err(RaftError::Corrupt("the snapshot holds a key that is not a state machine key".into()));
        }
        self.remaining -= 1;
        Ok(Some((key, value)))
    }

    fn validate(mut self) -> Result<(), RaftError> {
        while self.next_pair()?.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::{CommittedLeaderId, Membership};

    use super::*;
    use crate::types::Request;

    fn log_id(term: u64, index: u64) -> LogId<u64> {
        LogId { leader_id: CommittedLeaderId::new(term, 1), index }
    }

    fn normal(index: u64, ops: Vec<Op>) -> Entry<TypeConfig> {
        Entry { log_id: log_id(1, index), payload: EntryPayload::Normal(Request { ops }) }
    }

    fn put(key: &str, value: &str) -> Op {
        Op::Put { key: key.into(), value: value.as_bytes().to_vec() }
    }

    fn open(dir: &std::path::Path) -> (StateMachineStore, Arc<SmShared>) {
        let store = Store::open(dir, "test").expect("open store");
        StateMachineStore::open(store).expect("open state machine")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn install_snapshot_replaces_the_state_machine() {
        let leader_dir = tempfile::tempdir().expect("tempdir");
        let follower_dir = tempfile::tempdir().expect("tempdir");
        let (mut leader, _) = open(leader_dir.path());
        let (mut follower, follower_reads) = open(follower_dir.path());

        let members: BTreeSet<u64> = [1].into_iter().collect();
        let membership = Entry {
            log_id: log_id(1, 1),
            payload: EntryPayload::Membership(Membership::new(vec![members], ())),
        };
        leader
            .apply(vec![
                membership,
                normal(2, vec![put("a", "1"), put("dir/b", "2")]),
                normal(3, vec![put("c", "3")]),
            ])
            .await
            .expect("leader apply");
        // The follower has keys the snapshot does not: they must not survive the install.
        follower
            .apply(vec![normal(1, vec![put("stale", "x"), put("dir/stale", "y"), put("a", "old")])])
            .await
            .expect("follower apply");

        let snapshot = leader.get_snapshot_builder().await.build_snapshot().await.expect("build");
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 3)));
        follower.install_snapshot(&snapshot.meta, snapshot.snapshot).await.expect("install");

        assert_eq!(follower_reads.get("stale").expect("get"), None);
        assert_eq!(follower_reads.get("dir/stale").expect("get"), None);
        assert_eq!(follower_reads.get("a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(follower_reads.get("c").expect("get"), Some(b"3".to_vec()));
        assert_eq!(follower_reads.list("").expect("list"), vec!["a", "c", "dir/"]);
        assert_eq!(follower_reads.list("dir/").expect("list"), vec!["b"]);
        let (applied, membership) = follower.applied_state().await.expect("applied state");
        assert_eq!(applied, Some(log_id(1, 3)));
        assert_eq!(membership.log_id(), &Some(log_id(1, 1)));
        let current =
            follower.get_current_snapshot().await.expect("current").expect("some snapshot");
        assert_eq!(current.meta, snapshot.meta);

        // The install survives a reopen, and the replaced generation is gone from disk.
        drop((follower, follower_reads));
        let (mut reopened, reads) = open(follower_dir.path());
        assert_eq!(reads.get("stale").expect("get"), None);
        assert_eq!(reads.get("a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(reopened.applied_state().await.expect("applied").0, Some(log_id(1, 3)));
        let sm_trees: Vec<_> = reopened
            .store
            .db
            .tree_names()
            .into_iter()
            .filter(|n| n.starts_with(TREE_SM_PREFIX.as_bytes()))
            .collect();
        assert_eq!(sm_trees.len(), 1, "exactly one state machine generation on disk");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_snapshot_leaves_the_state_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut sm, reads) = open(dir.path());
        sm.apply(vec![normal(1, vec![put("keep", "v")])]).await.expect("apply");

        let mut writer = SnapshotWriter::new();
        writer.push(b"\x01new", b"value").expect("push");
        let mut data = writer.finish();
        data.truncate(data.len() - 2);
        let meta = SnapshotMeta { last_log_id: Some(log_id(2, 9)), ..Default::default() };
        let result = sm.install_snapshot(&meta, Box::new(Cursor::new(data))).await;
        assert!(result.is_err(), "a truncated snapshot must be rejected");
        assert_eq!(reads.get("keep").expect("get"), Some(b"v".to_vec()));
        assert_eq!(reads.get("new").expect("get"), None);
        assert_eq!(sm.applied_state().await.expect("applied").0, Some(log_id(1, 1)));
    }

    fn step(index: u64, op: Op) -> Entry<TypeConfig> {
        normal(index, vec![op])
    }

    fn chunk(id: &str, pairs: &[(&str, &str)]) -> Op {
        Op::RestoreChunk {
            id: id.into(),
            pairs: pairs
                .iter()
                .map(|(k, v)| crate::types::RestorePair { key: (*k).into(), value: v.as_bytes().to_vec() })
                .collect(),
        }
    }

    fn sm_tree_count(sm: &StateMachineStore) -> usize {
        sm.store.db.tree_names().iter().filter(|n| n.starts_with(TREE_SM_PREFIX.as_bytes())).count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restore_switches_atomically_at_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut sm, reads) = open(dir.path());
        let members: BTreeSet<u64> = [1].into_iter().collect();
        let membership = Entry {
            log_id: log_id(1, 1),
            payload: EntryPayload::Membership(Membership::new(vec![members], ())),
        };
        sm.apply(vec![membership, normal(2, vec![put("old", "1"), put("a", "old")])]).await.expect("apply");
        let mut events = reads.restores.subscribe();

        sm.apply(vec![step(3, Op::BeginRestore { id: "r1".into() }), step(4, chunk("r1", &[("a", "new")]))])
            .await
            .expect("begin");
        // Staged, not live: reads and later writes still see the old data.
        assert_eq!(reads.get("a").expect("get"), Some(b"old".to_vec()));
        sm.apply(vec![normal(5, vec![put("during", "x")])]).await.expect("write during");
        // A step of another restore is skipped.
        let r = sm.apply(vec![step(6, chunk("other", &[("x", "y")])), step(7, Op::CommitRestore { id: "other".into() })])
            .await
            .expect("foreign steps");
        assert!(!r[1].restore_committed);
        assert_eq!(reads.get("a").expect("get"), Some(b"old".to_vec()));

        sm.apply(vec![step(8, chunk("r1", &[("dir/b", "2")]))]).await.expect("chunk");
        let r = sm.apply(vec![step(9, Op::CommitRestore { id: "r1".into() })]).await.expect("commit");
        assert!(r[0].restore_committed);
        assert_eq!(reads.get("a").expect("get"), Some(b"new".to_vec()));
        assert_eq!(reads.get("dir/b").expect("get"), Some(b"2".to_vec()));
        assert_eq!(reads.get("old").expect("get"), None);
        assert_eq!(reads.get("during").expect("get"), None);
        assert_eq!(reads.get("x").expect("get"), None);
        let (applied, membership) = sm.applied_state().await.expect("applied");
        assert_eq!(applied, Some(log_id(1, 9)));
        assert_eq!(membership.log_id(), &Some(log_id(1, 1)), "the membership survives a restore");
        assert!(events.has_changed().expect("events"));
        assert_eq!(*events.borrow_and_update(), 1);
        assert_eq!(sm_tree_count(&sm), 1);

        // Normal writes go on in the restored tree, and all of it survives a reopen.
        sm.apply(vec![normal(10, vec![put("after", "z")])]).await.expect("after");
        drop((sm, reads));
        let (mut sm, reads) = open(dir.path());
        assert_eq!(reads.get("a").expect("get"), Some(b"new".to_vec()));
        assert_eq!(reads.get("after").expect("get"), Some(b"z".to_vec()));
        assert_eq!(reads.get("old").expect("get"), None);
        assert_eq!(sm.applied_state().await.expect("applied").0, Some(log_id(1, 10)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_aborted_restore_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut sm, reads) = open(dir.path());
        sm.apply(vec![normal(1, vec![put("keep", "v")])]).await.expect("apply");
        sm.apply(vec![
            step(2, Op::BeginRestore { id: "r".into() }),
            step(3, chunk("r", &[("keep", "replaced"), ("new", "n")])),
            step(4, Op::AbortRestore { id: "r".into() }),
        ])
        .await
        .expect("abort");
        // A commit after the abort finds nothing staged.
        let r = sm.apply(vec![step(5, Op::CommitRestore { id: "r".into() })]).await.expect("late commit");
        assert!(!r[0].restore_committed);
        assert_eq!(reads.get("keep").expect("get"), Some(b"v".to_vec()));
        assert_eq!(reads.get("new").expect("get"), None);
        assert_eq!(sm_tree_count(&sm), 1, "the staging tree is dropped");
        assert_eq!(sm.applied_state().await.expect("applied").0, Some(log_id(1, 5)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restore_survives_a_restart_midway() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut sm, _reads) = open(dir.path());
            sm.apply(vec![normal(1, vec![put("old", "1")])]).await.expect("apply");
            sm.apply(vec![step(2, Op::BeginRestore { id: "r".into() }), step(3, chunk("r", &[("a", "1")]))])
                .await
                .expect("begin");
            sm.store.sync().await.expect("sync");
        }
        // The "crash": reopen. The old data is live, the staging tree is kept for the rest of
        // the log, which openraft re-applies or delivers next.
        let (mut sm, reads) = open(dir.path());
        assert_eq!(reads.get("old").expect("get"), Some(b"1".to_vec()));
        assert_eq!(reads.get("a").expect("get"), None);
        assert_eq!(sm_tree_count(&sm), 2);
        sm.apply(vec![step(4, chunk("r", &[("b", "2")])), step(5, Op::CommitRestore { id: "r".into() })])
            .await
            .expect("finish");
        assert_eq!(reads.get("a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(reads.get("b").expect("get"), Some(b"2".to_vec()));
        assert_eq!(reads.get("old").expect("get"), None);

        // A staging tree without a record (a crash inside BeginRestore) is dropped at open.
        let gen = sm.live_generation().expect("generation");
        sm.store.db.open_tree(sm_tree_name(gen + 1)).expect("stray").insert(b"x", b"y").expect("insert");
        sm.store.sync().await.expect("sync");
        drop((sm, reads));
        let (sm, reads) = open(dir.path());
        assert_eq!(sm_tree_count(&sm), 1);
        assert_eq!(reads.get("a").expect("get"), Some(b"1".to_vec()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_that_installs_a_snapshot_mid_restore_finishes_it() {
        let leader_dir = tempfile::tempdir().expect("tempdir");
        let follower_dir = tempfile::tempdir().expect("tempdir");
        let (mut leader, _) = open(leader_dir.path());
        let (mut follower, reads) = open(follower_dir.path());
        leader
            .apply(vec![
                normal(1, vec![put("old", "1")]),
                step(2, Op::BeginRestore { id: "r".into() }),
                step(3, chunk("r", &[("a", "1")])),
            ])
            .await
            .expect("leader");
        let snapshot = leader.get_snapshot_builder().await.build_snapshot().await.expect("build");
        follower.install_snapshot(&snapshot.meta, snapshot.snapshot).await.expect("install");
        assert_eq!(reads.get("old").expect("get"), Some(b"1".to_vec()));
        assert_eq!(reads.get("a").expect("get"), None, "staged data is not live");

        let rest = vec![step(4, chunk("r", &[("b", "2")])), step(5, Op::CommitRestore { id: "r".into() })];
        let r = follower.apply(rest).await.expect("rest of the restore");
        assert!(r[1].restore_committed);
        assert_eq!(reads.get("a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(reads.get("b").expect("get"), Some(b"2".to_vec()));
        assert_eq!(reads.get("old").expect("get"), None);
    }

    #[test]
    fn snapshot_format_round_trips_and_rejects_padding() {
        let mut writer = SnapshotWriter::new();
        writer.push(b"\x01k1", b"").expect("push");
        writer.push(b"\x02k2", &[0u8, 255, 7]).expect("push");
        let data = writer.finish();
        let mut reader = SnapshotReader::new(&data).expect("header");
        assert_eq!(reader.next_pair().expect("pair"), Some((&b"\x01k1"[..], &b""[..])));
        assert_eq!(reader.next_pair().expect("pair"), Some((&b"\x02k2"[..], &[0u8, 255, 7][..])));
        assert_eq!(reader.next_pair().expect("end"), None);

        let mut padded = data.clone();
        padded.push(0);
        assert!(SnapshotReader::new(&padded).expect("header").validate().is_err());
        assert!(SnapshotReader::new(b"garbage").is_err());
    }
}
