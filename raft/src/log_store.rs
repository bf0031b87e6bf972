//! openraft's `RaftLogStorage` on the `log` and `meta` trees.
//!
//! openraft calls every write method here from its core task, one at a time, so log and vote
//! writes are serialized as the trait requires. Each write is made durable ([`Store::sync`])
//! before it is reported done: `append` calls its callback only after the sync, and `save_vote`,
//! `truncate` and `purge` return only after it. `save_committed` is the exception: it rides on the
//! next append's sync (see there for why that is safe). Reads (`try_get_log_entries`)
//! come from the core and from replication tasks through clones of this store.
//!
//! In openraft 0.9 the core waits for each append's callback before it takes the next client
//! request, so every append costs one sync on the leader. Throughput therefore comes from putting
//! many client writes into one entry, which `backend.rs` does (group commit); on followers, one
//! AppendEntries RPC of up to `max_payload_entries` entries is one append and one sync.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError, Vote,
};

use crate::error::{to_storage_error, RaftError};
use crate::store::{decode, encode, meta_key, u64_from_be, Store};
use crate::types::TypeConfig;

/// Log keys are big-endian indexes, so sled's byte order is log order.
fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn logs_error(verb: ErrorVerb, e: RaftError) -> StorageError<u64> {
    to_storage_error(ErrorSubject::Logs, verb, e)
}

fn store_error(verb: ErrorVerb, e: RaftError) -> StorageError<u64> {
    to_storage_error(ErrorSubject::Store, verb, e)
}

fn vote_error(verb: ErrorVerb, e: RaftError) -> StorageError<u64> {
    to_storage_error(ErrorSubject::Vote, verb, e)
}

#[derive(Clone)]
pub(crate) struct LogStore {
    store: Arc<Store>,
}

impl LogStore {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        what: &str,
    ) -> Result<Option<T>, RaftError> {
        match self.store.meta.get(key)? {
            Some(raw) => Ok(Some(decode(&raw, what)?)),
            None => Ok(None),
        }
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId<u64>>, RaftError> {
        match self.store.log.last()? {
            Some((key, raw)) => {
                let entry: Entry<TypeConfig> = decode(&raw, "the last log entry")?;
                check_index(&key, &entry)?;
                Ok(Some(entry.log_id))
            }
            None => Ok(None),
        }
    }

    fn read_range(&self, start: u64, end: Bound<u64>) -> Result<Vec<Entry<TypeConfig>>, RaftError> {
        let mut entries = Vec::new();
        for item in self.store.log.range(index_key(start)..) {
            let (key, raw) = item?;
            let index = u64_from_be(&key, "a log key")?;
            let in_range = match end {
                Bound::Included(e) => index <= e,
                Bound::Excluded(e) => index < e,
                Bound::Unbounded => true,
            };
            if !in_range {
                break;
            }
            let entry: Entry<TypeConfig> = decode(&raw, "a log entry")?;
            check_index(&key, &entry)?;
            entries.push(entry);
        }
        Ok(entries)
    }

    /// Removes every entry with an index in `range` from the `log` tree, in one batch. The range
    /// is a prefix or a suffix of the log, both bounded by its length.
    fn remove_range(&self, range: impl RangeBounds<[u8; 8]>) -> Result<(), RaftError> {
        let mut batch = sled::Batch::default();
        for key in self.store.log.range(range).keys() {
            batch.remove(key?);
        }
        self.store.log.apply_batch(batch)?;
        Ok(())
    }
}

/// A stored entry must sit under its own index: checked on every read, so that a corrupted or
/// misplaced entry stops the node instead of being replicated or applied.
fn check_index(key: &[u8], entry: &Entry<TypeConfig>) -> Result<(), RaftError> {
    let index = u64_from_be(key, "a log key")?;
    if index != entry.log_id.index {
        return Err(RaftError::Corrupt(format!(
            "log entry stored at index {index} carries log id {}",
            entry.log_id
        )));
    }
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => match s.checked_add(1) {
                Some(s) => s,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        self.read_range(start, range.end_bound().cloned())
            .map_err(|e| logs_error(ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let last_purged_log_id: Option<LogId<u64>> = self
            .read_meta(meta_key::LAST_PURGED, "the last purged log id")
            .map_err(|e| store_error(ErrorVerb::Read, e))?;
        let last_log_id = self.last_entry_log_id().map_err(|e| logs_error(ErrorVerb::Read, e))?;
        Ok(LogState { last_log_id: last_log_id.or(last_purged_log_id), last_purged_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let result = async {
            self.store.meta.insert(meta_key::VOTE, encode(vote)?)?;
            // A vote that is forgotten after a crash lets this node vote twice in one term.
            self.store.sync().await
        };
        result.await.map_err(|e| vote_error(ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        self.read_meta(meta_key::VOTE, "the vote").map_err(|e| vote_error(ErrorVerb::Read, e))
    }

    /// Durable because openraft re-applies logs only up to the committed id it reads back at start
    /// (0.9's `get_initial_state`): with it on disk, a node that restarts serves every write it
    /// acknowledged from its local state machine at once, before any leader is elected. Without
    /// it, those reads could miss acknowledged writes until a leader commits again.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        // Written but not synced: the committed id is only a hint for how far a restart may
        // re-apply before an election (openraft documents it as optional). The next append's
        // sync makes it durable; losing the latest value only means those entries are applied
        // after the node is elected again, never that an acknowledged write is lost, because the
        // log itself was synced before any write was acknowledged. Syncing here cost a second
        // fdatasync per entry (about 15% of write throughput).
        let result = async {
            match &committed {
                Some(log_id) => self.store.meta.insert(meta_key::COMMITTED, encode(log_id)?)?,
                None => self.store.meta.remove(meta_key::COMMITTED)?,
            };
            Ok::<(), RaftError>(())
        };
        result.await.map_err(|e| store_error(ErrorVerb::Write, e))?;
        let index = committed.map(|l| l.index).unwrap_or(0);
        self.store.committed_index.fetch_max(index, Ordering::Relaxed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        self.read_meta(meta_key::COMMITTED, "the committed log id")
            .map_err(|e| store_error(ErrorVerb::Read, e))
    }

    /// The entries are written in one batch, or with one insert when there is one entry (both
    /// atomic; readable when this returns, as the trait requires), and synced; only then is the
    /// callback called. On an error the callback is dropped, which
    /// openraft also reads as a failed write, and the error stops the node.
    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded: Vec<([u8; 8], Vec<u8>)> = Vec::new();
        for entry in entries {
            let raw = encode(&entry).map_err(|e| logs_error(ErrorVerb::Write, e))?;
            encoded.push((index_key(entry.log_id.index), raw));
        }
        if encoded.len() == 1 {
            // One entry (the leader's group-commit entry, a follower's usual AppendEntries): a
            // single insert is atomic on its own, and unlike `apply_batch` it does not make sled
            // seal and write its I/O buffer twice (sled's `pin_log`; each write ends in a
            // `sync_file_range` that the sync below waits for). Measured on a 3-node cluster:
            // the append's sled write went from ~0.7 ms to ~0.1-0.3 ms and the sync from ~5.1 ms
            // to ~4.4 ms.
            for (key, raw) in encoded {
                self.store
                    .log
                    .insert(key, raw)
                    .map_err(|e| logs_error(ErrorVerb::Write, e.into()))?;
            }
        } else {
            let mut batch = sled::Batch::default();
            for (key, raw) in encoded {
                batch.insert(&key, raw);
            }
            self.store
                .log
                .apply_batch(batch)
                .map_err(|e| logs_error(ErrorVerb::Write, e.into()))?;
        }
        self.store.sync().await.map_err(|e| logs_error(ErrorVerb::Write, e))?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    /// Durable, so that entries a new leader overwrote cannot reappear after a crash.
    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        tracing::debug!(%log_id, "truncating the raft log from this entry on");
        let result = async {
            self.remove_range(index_key(log_id.index)..)?;
            self.store.sync().await
        };
        result.await.map_err(|e| logs_error(ErrorVerb::Delete, e))
    }

    /// openraft purges only entries covered by a snapshot, which on this store means entries
    /// already applied to the `sm.*` tree. Those applies are not synced one by one (see
    /// `state_machine.rs`), so the first sync here makes them durable before the purge can be:
    /// after a crash, the state machine is never behind a log that no longer has the entries to
    /// catch it up. The purged id is written before the entries go, so an interrupted purge
    /// leaves entries below it that openraft ignores and the next purge removes.
    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        tracing::debug!(%log_id, "purging the raft log up to this entry");
        let result = async {
            self.store.sync().await?;
            self.store.meta.insert(meta_key::LAST_PURGED, encode(&log_id)?)?;
            self.remove_range(..=index_key(log_id.index))?;
            self.store.sync().await
        };
        result.await.map_err(|e| logs_error(ErrorVerb::Delete, e))
    }
}
