//! Saving the whole state machine to a file and restoring one through the Raft log: the storage
//! half of `sys/storage/raft/snapshot`. The server wraps the file in Vault's archive (checksums,
//! sealed hash); this crate knows neither.
//!
//! ## The state file
//!
//! `MAGIC`, a big-endian `u64` pair count, then per pair a `u32` key length, the key (UTF-8), a
//! `u32` value length and the value: the data keys of the state machine with their values exactly
//! as stored (ciphertext; the barrier above encrypted them). It is written and read as a stream,
//! never held whole in memory. The count and the length bounds let [`check_state_file`] reject a
//! truncated, padded or garbled file before a restore changes anything.
//!
//! ## Restore
//!
//! [`RaftNode::restore_state`] runs on the leader: it checks the file, then proposes
//! `BeginRestore`, one `RestoreChunk` per up to [`CHUNK_BYTES`], and `CommitRestore` as entries
//! of their own (see "Restores" in `state_machine.rs` for what each does on every node). A failure
//! on the way proposes `AbortRestore` (best effort: a restore left staged is dropped by the next
//! begin, and never becomes live without its commit).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError as OpenraftError};

use crate::backend::MAX_TRANSACTION_BYTES;
use crate::error::RaftError;
use crate::state_machine::DATA_PREFIX;
use crate::types::{Op, Request, Response, RestorePair};
use crate::RaftNode;

const MAGIC: &[u8; 8] = b"vdstate1";

/// Most bytes of pairs per restore entry: one entry must stay within the transaction limit that
/// bounds every log entry (and so every sync and replication message).
pub const CHUNK_BYTES: usize = MAX_TRANSACTION_BYTES - 64 * 1024;
/// Most pairs per restore entry, bounding the per-pair overhead of one entry.
const CHUNK_PAIRS: usize = 64 * 1024;
/// Largest key and value accepted from a state file: what the storage layer accepts at all.
const MAX_KEY: usize = vaultd_storage::MAX_KEY_LEN;
const MAX_VALUE: usize = vaultd_storage::MAX_VALUE_LEN;
/// A restore entry may wait this long for its commit (it is larger than a client write).
const RESTORE_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What [`RaftNode::export_state`] and [`check_state_file`] report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateFileInfo {
    pub pairs: u64,
    pub bytes: u64,
}

fn corrupt(what: &str) -> RaftError {
    RaftError::Corrupt(format!("the snapshot's state data is invalid: {what}"))
}

fn read_len(r: &mut impl Read, max: usize, what: &str) -> Result<usize, RaftError> {
    let mut raw = [0u8; 4];
    r.read_exact(&mut raw).map_err(|_| corrupt("it is truncated"))?;
    let len = u32::from_be_bytes(raw) as usize;
    if len > max {
        return Err(corrupt(&format!("a {what} of {len} bytes exceeds the limit of {max}")));
    }
    Ok(len)
}

/// Reads a state file pair by pair.
struct StateReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> StateReader<R> {
    fn new(mut inner: R) -> Result<Self, RaftError> {
        let mut header = [0u8; 16];
        inner.read_exact(&mut header).map_err(|_| corrupt("it is shorter than its header"))?;
        if &header[..8] != MAGIC {
            return Err(corrupt("it does not start with vaultd's state header"));
        }
        let mut count = [0u8; 8];
        count.copy_from_slice(&header[8..]);
        Ok(Self { inner, remaining: u64::from_be_bytes(count) })
    }

    fn next_pair(&mut self) -> Result<Option<RestorePair>, RaftError> {
        if self.remaining == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe) {
                Ok(0) => Ok(None),
                Ok(_) => Err(corrupt("it has trailing bytes")),
                Err(e) => Err(RaftError::Io(format!("reading the snapshot: {e}"))),
            };
        }
        let key_len = read_len(&mut self.inner, MAX_KEY, "key")?;
        let mut key = vec![0u8; key_len];
        self.inner.read_exact(&mut key).map_err(|_| corrupt("it is truncated"))?;
        let key = String::from_utf8(key).map_err(|_| corrupt("a key is not UTF-8"))?;
        let value_len = read_len(&mut self.inner, MAX_VALUE, "value")?;
        let mut value = vec![0u8; value_len];
        self.inner.read_exact(&mut value).map_err(|_| corrupt("it is truncated"))?;
        self.remaining -= 1;
        Ok(Some(RestorePair { key, value }))
    }

    /// The next chunk of pairs for one restore entry; empty at the end.
    fn next_chunk(&mut self) -> Result<Vec<RestorePair>, RaftError> {
        let mut chunk = Vec::new();
        let mut bytes = 0usize;
        // A pair is at most MAX_KEY + MAX_VALUE, far below CHUNK_BYTES: stop one pair early.
        while chunk.len() < CHUNK_PAIRS && bytes + MAX_KEY + MAX_VALUE <= CHUNK_BYTES {
            match self.next_pair()? {
                Some(pair) => {
                    bytes += pair.key.len() + pair.value.len();
                    chunk.push(pair);
                }
                None => break,
            }
        }
        Ok(chunk)
    }
}

/// Reads a whole state file and checks its structure, without keeping it. Blocking.
pub fn check_state_file(path: &Path) -> Result<StateFileInfo, RaftError> {
    let file = File::open(path)?;
    let bytes = file.metadata()?.len();
    let mut reader = StateReader::new(BufReader::with_capacity(256 * 1024, file))?;
    let mut pairs = 0u64;
    while reader.next_pair()?.is_some() {
        pairs += 1;
    }
    Ok(StateFileInfo { pairs, bytes })
}

fn write_state(tree: &sled::Tree, path: &Path) -> Result<StateFileInfo, RaftError> {
    let mut out = BufWriter::with_capacity(256 * 1024, File::create(path)?);
    out.write_all(MAGIC)?;
    out.write_all(&0u64.to_be_bytes())?;
    let mut pairs = 0u64;
    for item in tree.scan_prefix([DATA_PREFIX]) {
        let (key, value) = item?;
        for part in [&key[1..], &value[..]] {
            let len = u32::try_from(part.len())
                .map_err(|_| RaftError::Corrupt(format!("a stored item of {} bytes", part.len())))?;
            out.write_all(&len.to_be_bytes())?;
            out.write_all(part)?;
        }
        pairs += 1;
    }
    let mut file = out.into_inner().map_err(|e| RaftError::Io(e.to_string()))?;
    file.seek(SeekFrom::Start(MAGIC.len() as u64))?;
    file.write_all(&pairs.to_be_bytes())?;
    file.sync_all()?;
    let bytes = file.metadata()?.len();
    Ok(StateFileInfo { pairs, bytes })
}

impl RaftNode {
    /// This node's raft data directory (`storage "raft" { path }`): where the server keeps the
    /// temporary files of snapshot saves and restores, on the same disk as the data.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the state machine's data to `path` as a state file: the state between two applied
    /// entries (applies wait while the scan runs). Streams from the tree to the file.
    pub async fn export_state(&self, path: &Path) -> Result<StateFileInfo, RaftError> {
        let reads = self.reads()?;
        let path: PathBuf = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let _gate = reads.apply_gate.blocking_lock();
            let tree = reads.tree()?;
            write_state(&tree, &path)
        })
        .await
        .map_err(|e| RaftError::Io(format!("the snapshot task failed: {e}")))?
    }

    /// Replaces the whole state machine, on every node, with the state file at `path` (checked
    /// first: a bad file changes nothing). Runs on the leader; on a follower it fails with
    /// `NotLeader` before anything is proposed.
    pub async fn restore_state(&self, path: &Path) -> Result<StateFileInfo, RaftError> {
        let check_path = path.to_path_buf();
        let info = tokio::task::spawn_blocking(move || check_state_file(&check_path))
            .await
            .map_err(|e| RaftError::Io(format!("the snapshot task failed: {e}")))??;

        let id = format!("{:016x}", rand::random::<u64>());
        self.write_restore_step(Op::BeginRestore { id: id.clone() }).await?;
        match self.restore_chunks(&id, path).await {
            Ok(()) => Ok(info),
            Err(e) => {
                if let Err(abort) = self.write_restore_step(Op::AbortRestore { id: id.clone() }).await {
                    tracing::warn!(restore = %id, "failed to abort the restore: {abort}");
                }
                Err(e)
            }
        }
    }

    async fn restore_chunks(&self, id: &str, path: &Path) -> Result<(), RaftError> {
        let file = File::open(path)?;
        let mut reader = Some(StateReader::new(BufReader::with_capacity(256 * 1024, file))?);
        let mut chunks = 0u64;
        loop {
            let Some(mut r) = reader.take() else {
                return Err(RaftError::Io("the snapshot reader was lost".into()));
            };
            let (r, chunk) = tokio::task::spawn_blocking(move || {
                let chunk = r.next_chunk();
                (r, chunk)
            })
            .await
            .map_err(|e| RaftError::Io(format!("the snapshot task failed: {e}")))?;
            let chunk = chunk?;
            reader = Some(r);
            if chunk.is_empty() {
                break;
            }
            chunks += 1;
            self.write_restore_step(Op::RestoreChunk { id: id.to_string(), pairs: chunk }).await?;
        }
        let response = self.write_restore_step(Op::CommitRestore { id: id.to_string() }).await?;
        if !response.restore_committed {
            return Err(RaftError::Stopped(
                "another restore replaced this one before it committed".into(),
            ));
        }
        tracing::info!(restore = %id, chunks, "snapshot restored through raft");
        Ok(())
    }

    /// Proposes one restore step as an entry of its own (not through the group commit, which
    /// would merge it with client writes) and waits until it is applied here.
    async fn write_restore_step(&self, op: Op) -> Result<Response, RaftError> {
        self.reads()?;
        let write = self.raft.client_write(Request { ops: vec![op] });
        match tokio::time::timeout(RESTORE_WRITE_TIMEOUT, write).await {
            Err(_) => Err(RaftError::Timeout(RESTORE_WRITE_TIMEOUT, "a restore entry to commit")),
            Ok(Ok(r)) => Ok(r.data),
            Ok(Err(OpenraftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(RaftError::NotLeader { leader_api_addr: f.leader_node.map(|n| n.api_addr) })
            }
            Ok(Err(OpenraftError::APIError(e))) => {
                Err(RaftError::Stopped(format!("raft rejected a restore entry: {e}")))
            }
            Ok(Err(OpenraftError::Fatal(f))) => Err(RaftError::Stopped(f.to_string())),
        }
    }

    /// A receiver that changes whenever a restore commits on this node (also when a follower
    /// applies the leader's): the server then reloads what it derived from the old data.
    pub fn restore_events(&self) -> Result<tokio::sync::watch::Receiver<u64>, RaftError> {
        Ok(self.reads()?.restores.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_file(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(pairs.len() as u64).to_be_bytes());
        for (k, v) in pairs {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
        out
    }

    #[test]
    fn state_files_are_checked_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state");
        let good = state_file(&[("a", b"1"), ("b/c", b"")]);
        std::fs::write(&path, &good).expect("write");
        assert_eq!(check_state_file(&path).expect("good").pairs, 2);

        let mut cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"garbage that is not a snapshot".to_vec(),
            good[..good.len() - 1].to_vec(),
            [&good[..], b"x"].concat(),
        ];
        let mut huge = good.clone();
        huge[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        cases.push(huge);
        for bad in cases {
            std::fs::write(&path, &bad).expect("write");
            assert!(check_state_file(&path).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn chunks_stay_within_the_transaction_limit() {
        let value = vec![7u8; MAX_VALUE];
        let keys: Vec<String> = (0..20).map(|i| format!("k{i:02}")).collect();
        let pairs: Vec<(&str, &[u8])> = keys.iter().map(|k| (k.as_str(), &value[..])).collect();
        let data = state_file(&pairs);
        let mut reader = StateReader::new(&data[..]).expect("header");
        let mut total = 0;
        loop {
            let chunk = reader.next_chunk().expect("chunk");
            if chunk.is_empty() {
                break;
            }
            let op = Op::RestoreChunk { id: "x".into(), pairs: chunk.clone() };
            assert!(op.size() <= MAX_TRANSACTION_BYTES);
            total += chunk.len();
        }
        assert_eq!(total, 20);
    }
}
