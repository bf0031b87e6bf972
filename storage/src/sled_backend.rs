//! A [`Backend`] on a local sled 0.34.7 database whose acknowledged writes survive a crash.
//!
//! Why this file exists: sled is the embedded store vaultd builds on, but sled alone does not keep
//! the contract of [`Backend`] ("a write that returned `Ok` is durable"):
//!
//! - On Linux, sled's `flush()` ends in `sync_file_range`, which starts write-back of the page cache
//!   but neither flushes the drive's volatile write cache nor commits file metadata (sled issue
//!   1452). After sled's flush we therefore `fdatasync` sled's data file ourselves.
//! - sled stores an item larger than a quarter of a segment (128 KiB with the default 512 KiB
//!   segments; our values go up to 1 MiB, and a leaf node holding several values can be larger
//!   still) in its own file under `blobs/`, written with no fsync at all. Before acknowledging a
//!   write we fsync every blob file that is new or has changed size, and the directories whose
//!   entries changed (new blobs, sled's snapshot renames).
//! - sled writes its `conf` file with no fsync, and nobody fsyncs the directories it creates; we do
//!   both when opening.
//!
//! Those syncs are [`SledSyncer`], shared with the Raft store; a failed sync is final, and the
//! writer thread then refuses every further write.
//!
//! An fdatasync costs about 0.3 ms on this class of machine, so syncing once per write would cap a
//! node at ~3,000 writes/s in total. Writes therefore go through **group commit**: one dedicated
//! writer thread takes every write that is waiting (up to [`MAX_GROUP`]), applies them to sled, makes
//! them durable with one flush + sync, and only then acknowledges all of them.
//!
//! What sled files exist in the directory (0.34.7, `src/config.rs`): `conf` (storage parameters),
//! `db` (the log, all segments in one file, locked exclusively while open), `blobs/<lsn>` (large
//! items) and `snap.<lsn>` (page-table snapshots, which sled itself writes with `sync_all`, then
//! renames). Treat the data directory as a whole: copying only `db` loses data.
//!
//! Known limit: a write is visible to `get`/`list` as soon as the writer thread applies it, which is
//! slightly before it is durable and acknowledged (at most one group commit). A reader can thus
//! observe a write that a crash in that window then loses. sled has no way to stage a write durably
//! without publishing it.

use std::io;
use std::path::Path;
use std::thread::JoinHandle;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::sled_sync::{create_dir_durably, SledSyncer, SyncError, SyncStep};
use crate::{list_children, validate_key, validate_put, Backend, Error, Result, TxnOp};

/// sled's page cache size. sled's 1 GiB default inflates RSS far beyond what a secrets server
/// needs (RSS has been reported at several times the cache size); vaultd's working set is small.
pub const DEFAULT_CACHE_CAPACITY: u64 = 64 * 1024 * 1024;

/// Most writes applied and acknowledged by one flush + sync. Large enough that a burst from many
/// concurrent clients shares one sync; small enough that the first writer of a group does not
/// wait long behind the others being applied.
pub const MAX_GROUP: usize = 256;

/// Writes waiting for the writer thread. Bounded so that a slow disk pushes back on callers
/// (`put` awaits a free slot) instead of queueing without limit; with values of up to 1 MiB this
/// bounds queued memory to about 256 MiB in the worst case.
const QUEUE_DEPTH: usize = 256;

/// The single sled tree holding vaultd's keys. A named tree rather than sled's default one leaves
/// room for bookkeeping trees (a schema version, for instance) without mixing them with user keys.
const TREE_NAME: &str = "vaultd";

/// A write waiting for the writer thread, with the channel its caller awaits.
struct WriteRequest {
    op: WriteOp,
    ack: oneshot::Sender<Result<()>>,
}

enum WriteOp {
    Put {
        key: String,
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    /// A whole transaction; sled applies a `Batch` atomically, on disk and in memory.
    Batch(sled::Batch),
}

/// sled on a local directory, with fsync'd, group-committed writes. See the module docs.
pub struct SledBackend {
    tree: sled::Tree,
    /// Feeds the writer thread. `None` only while dropping, to close the channel before joining.
    writes: Option<mpsc::Sender<WriteRequest>>,
    writer: Option<JoinHandle<()>>,
}

impl SledBackend {
    /// Opens (or creates) a database in the directory `path`. It does blocking file I/O and sled's
    /// recovery, which reads the whole log: from async code, call it inside `spawn_blocking`.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_cache(path, DEFAULT_CACHE_CAPACITY)
    }

    /// [`SledBackend::open`] with a page cache of `cache_capacity` bytes.
    pub fn open_with_cache(path: &Path, cache_capacity: u64) -> Result<Self> {
        create_dir_durably(path).map_err(|e| io_err("creating the data directory", path, e))?;

        // `temporary` stays false (its default): a temporary sled database skips every sync.
        // `flush_every_ms` keeps its default of 500 ms: that background flush is harmless, and our
        // own flush + sync is what acknowledgements rely on.
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity)
            .open()
            .map_err(sled_err)?;
        let tree = db.open_tree(TREE_NAME).map_err(sled_err)?;

        let mut syncer =
            SledSyncer::new(path, None).map_err(|e| io_err("opening sled's files", path, e))?;
        // Make what sled just created durable before anything is acknowledged: `conf` (never
        // fsync'd by sled), the `blobs/` entry, the tree creation in the log.
        syncer.sync(&db).map_err(|e| Error::Io(sync_msg(&e)))?;

        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer_tree = tree.clone();
        let writer = std::thread::Builder::new()
            .name("vaultd-sled-writer".into())
            .spawn(move || writer_loop(db, writer_tree, syncer, rx))
            .map_err(|e| Error::Io(format!("failed to start the sled writer thread: {e}")))?;

        Ok(Self { tree, writes: Some(tx), writer: Some(writer) })
    }

    /// Hands a write to the writer thread and waits until it is durable (or failed). Dropping the
    /// returned future once the write is queued does not cancel it: it is applied regardless.
    async fn write(&self, op: WriteOp) -> Result<()> {
        let writes = self.writes.as_ref().ok_or_else(writer_gone)?;
        let (ack, acked) = oneshot::channel();
        writes.send(WriteRequest { op, ack }).await.map_err(|_| writer_gone())?;
        acked.await.map_err(|_| writer_gone())?
    }

    /// Runs a blocking sled read on tokio's blocking pool: a read can miss the cache and hit disk.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&sled::Tree) -> Result<T> + Send + 'static,
    {
        let tree = self.tree.clone();
        tokio::task::spawn_blocking(move || f(&tree))
            .await
            .map_err(|e| Error::Io(format!("sled read task failed: {e}")))?
    }
}

impl Drop for SledBackend {
    /// Closes the queue and waits for the writer thread, which finishes the group in hand and then
    /// drops its sled handles. Waiting matters: sled holds an exclusive lock on its `db` file until
    /// the last handle is gone, so reopening the same directory right after a drop would otherwise
    /// fail. The wait is at most one group commit (milliseconds).
    fn drop(&mut self) {
        drop(self.writes.take());
        if let Some(writer) = self.writer.take() {
            // A panicked writer has already failed its callers (their acks were dropped); there is
            // nothing more to do with the panic here.
            let _ = writer.join();
        }
    }
}

#[async_trait]
impl Backend for SledBackend {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        validate_key(key)?;
        let key = key.to_string();
        self.read(move |tree| Ok(tree.get(key.as_bytes()).map_err(sled_err)?.map(|v| v.to_vec())))
            .await
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        validate_put(key, &value)?;
        self.write(WriteOp::Put { key: key.to_string(), value }).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        self.write(WriteOp::Delete { key: key.to_string() }).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = prefix.to_string();
        self.read(move |tree| list_blocking(tree, &prefix)).await
    }

    async fn transaction(&self, ops: Vec<TxnOp>) -> Result<()> {
        // Validate everything before anything reaches sled: a transaction applies all or nothing.
        for op in &ops {
            match op {
                TxnOp::Put { key, value } => validate_put(key, value)?,
                TxnOp::Delete { key } => validate_key(key)?,
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        // A sled Batch keeps the last operation per key, which is what applying the operations in
        // order would leave behind.
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                TxnOp::Put { key, value } => batch.insert(key.into_bytes(), value),
                TxnOp::Delete { key } => batch.remove(key.into_bytes()),
            }
        }
        self.write(WriteOp::Batch(batch)).await
    }
}

/// One-level listing by prefix scan. When a key reveals a subtree (`prefix` + `child/`...), the scan
/// jumps past the whole subtree instead of walking it, so listing the root costs one seek per child
/// rather than one step per key in the store. Only one key per child reaches `list_children`,
/// which shapes the answer exactly as every other backend does.
fn list_blocking(tree: &sled::Tree, prefix: &str) -> Result<Vec<String>> {
    let mut representatives: Vec<String> = Vec::new();
    let mut start: Vec<u8> = prefix.as_bytes().to_vec();
    'scan: loop {
        for item in tree.range(start.as_slice()..).keys() {
            let raw = item.map_err(sled_err)?;
            if !raw.starts_with(prefix.as_bytes()) {
                break 'scan;
            }
            let key = std::str::from_utf8(&raw).map_err(|_| {
                Error::Io(format!("sled holds a key that is not UTF-8: {:?}", &raw[..]))
            })?;
            let rest = key.get(prefix.len()..).unwrap_or_default();
            representatives.push(key.to_string());
            if let Some(slash) = rest.find('/') {
                // Every key under `prefix + rest[..=slash]` sorts before this bound ('0' follows '/').
                let mut next = Vec::with_capacity(prefix.len() + slash + 1);
                next.extend_from_slice(prefix.as_bytes());
                next.extend_from_slice(&rest.as_bytes()[..slash]);
                next.push(b'/' + 1);
                start = next;
                continue 'scan;
            }
        }
        break;
    }
    Ok(list_children(prefix, representatives.iter().map(String::as_str)))
}

/// The writer thread: group commit. Blocks for the first waiting write, takes whatever else is
/// already queued, applies it all, makes it durable with one flush + sync, then acknowledges.
fn writer_loop(
    db: sled::Db,
    tree: sled::Tree,
    mut syncer: SledSyncer,
    mut rx: mpsc::Receiver<WriteRequest>,
) {
    let mut group: Vec<WriteRequest> = Vec::with_capacity(MAX_GROUP);
    let mut applied: Vec<(oneshot::Sender<Result<()>>, Result<()>)> = Vec::with_capacity(MAX_GROUP);

    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(req) => group.push(req),
                Err(_) => break,
            }
        }

        // After a failed flush or sync the syncer refuses every further sync (see `sled_sync`), so
        // a write would never become durable: refuse it before it reaches sled, until the process
        // restarts and sled recovers from what is on disk.
        if let Some(first) = syncer.failure() {
            let reason =
                format!("sled storage refuses writes after a failed sync: {}", sync_msg(first));
            for req in group.drain(..) {
                let _ = req.ack.send(Err(Error::Unavailable(reason.clone())));
            }
            continue;
        }

        for req in group.drain(..) {
            applied.push((req.ack, apply(&tree, req.op)));
        }

        // The sync error as text, to hand one copy to each caller of the group.
        let synced = syncer.sync(&db).map_err(|e| sync_msg(&e));
        for (ack, result) in applied.drain(..) {
            let outcome = match (&synced, result) {
                (_, Err(e)) => Err(e),
                // The write is in sled's memory (readers may see it) but not known to be on disk:
                // the caller must treat its outcome as unknown, as after any storage error.
                (Err(msg), Ok(())) => Err(Error::Io(msg.clone())),
                (Ok(()), Ok(())) => Ok(()),
            };
            // The caller may have gone away (its future dropped); the write stands regardless.
            let _ = ack.send(outcome);
        }
    }
    // The channel closed: SledBackend was dropped. Dropping `db` here releases sled's file lock.
}

fn apply(tree: &sled::Tree, op: WriteOp) -> Result<()> {
    match op {
        WriteOp::Put { key, value } => tree.insert(key.into_bytes(), value).map(|_| ()),
        WriteOp::Delete { key } => tree.remove(key.into_bytes()).map(|_| ()),
        WriteOp::Batch(batch) => tree.apply_batch(batch),
    }
    .map_err(sled_err)
}

fn sled_err(e: sled::Error) -> Error {
    Error::Io(format!("sled: {e}"))
}

/// A sync error's message as this crate words it: [`SyncError`]'s own text, except that here the
/// sled directory is "the data directory".
fn sync_msg(e: &SyncError) -> String {
    match e {
        SyncError::Io { step: SyncStep::Dir, path, source } => {
            format!("syncing the data directory {}: {source}", path.display())
        }
        other => other.to_string(),
    }
}

fn io_err(what: &str, path: &Path, e: io::Error) -> Error {
    Error::Io(format!("{what} {}: {e}", path.display()))
}

fn writer_gone() -> Error {
    Error::Unavailable("the sled writer thread has stopped".into())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::conformance;

    fn open(dir: &Path) -> SledBackend {
        match SledBackend::open(dir) {
            Ok(b) => b,
            Err(e) => panic!("opening sled in {}: {e}", dir.display()),
        }
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exercise_backend() {
        let dir = tempdir();
        conformance::exercise_backend(&open(dir.path())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exercise_list_prefix() {
        let dir = tempdir();
        conformance::exercise_list_prefix(&open(dir.path())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exercise_transactions() {
        let dir = tempdir();
        conformance::exercise_transactions(&open(dir.path())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exercise_limits() {
        let dir = tempdir();
        conformance::exercise_limits(&open(dir.path())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exercise_all_then_again_after_reopen() {
        let dir = tempdir();
        conformance::exercise_all(&open(dir.path())).await;
        // Every check cleans up after itself, so a reopened store must be empty and pass again.
        conformance::exercise_all(&open(dir.path())).await;
    }

    /// The subtree skip in `list_blocking` must not skip siblings that sort between `a/` and `a0`
    /// or hide keys whose names contain characters below '/'.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn list_skips_subtrees_exactly() {
        let dir = tempdir();
        let b = open(dir.path());
        let keys =
            ["a", "a-b", "a.c", "a/x", "a/y/z", "a0", "a/", "b/c/d", "b/c/e", "ab", "é/x", "é"];
        for k in keys {
            b.put(k, k.as_bytes().to_vec()).await.expect("put");
        }
        // A trailing-slash key "a/" has an empty child below "a/", which list_children drops.
        let mem = crate::inmem::InmemBackend::new();
        for k in keys {
            mem.put(k, k.as_bytes().to_vec()).await.expect("put");
        }
        for prefix in ["", "a", "a/", "a/y/", "b/", "b/c/", "é", "é/", "zzz/"] {
            let got = b.list(prefix).await.expect("list");
            let want = mem.list(prefix).await.expect("list");
            assert_eq!(got, want, "list {prefix:?}: sled differs from inmem");
        }
        assert_eq!(
            b.list("").await.expect("list"),
            ["a", "a-b", "a.c", "a/", "a0", "ab", "b/", "é", "é/"]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn data_survives_drop_and_reopen() {
        let dir = tempdir();
        let big: Vec<u8> = (0..crate::MAX_VALUE_LEN).map(|i| (i % 253) as u8).collect();
        {
            let b = open(dir.path());
            b.put("plain", b"v1".to_vec()).await.expect("put");
            b.put("dir/nested", b"v2".to_vec()).await.expect("put");
            b.put("gone", b"x".to_vec()).await.expect("put");
            b.delete("gone").await.expect("delete");
            b.put("big", big.clone()).await.expect("put big");
            b.transaction(vec![
                TxnOp::Put { key: "txn/a".into(), value: b"a".to_vec() },
                TxnOp::Put { key: "txn/b".into(), value: b"b".to_vec() },
                TxnOp::Delete { key: "plain".into() },
            ])
            .await
            .expect("txn");
            // A 1 MiB value is over sled's blob threshold: it lives in its own file, which sled
            // never fsyncs; this is the path the blob sync exists for.
            let blobs = fs::read_dir(dir.path().join("blobs")).expect("blobs dir").count();
            assert!(blobs > 0, "expected the 1 MiB value to be stored as a sled blob");
        } // Dropped: the writer thread exits and sled releases its lock.
        let b = open(dir.path());
        assert_eq!(b.get("plain").await.expect("get"), None);
        assert_eq!(b.get("dir/nested").await.expect("get").as_deref(), Some(&b"v2"[..]));
        assert_eq!(b.get("gone").await.expect("get"), None);
        assert!(b.get("big").await.expect("get").as_deref() == Some(&big[..]), "big value changed");
        assert_eq!(b.get("txn/a").await.expect("get").as_deref(), Some(&b"a"[..]));
        assert_eq!(b.list("").await.expect("list"), ["big", "dir/", "txn/"]);
    }

    /// sled locks its `db` file: a second open of a live directory is an error, not a panic and
    /// not a second writer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn second_open_of_a_live_directory_fails() {
        let dir = tempdir();
        let _b = open(dir.path());
        match SledBackend::open(dir.path()) {
            Err(Error::Io(_)) => {}
            Err(e) => panic!("expected an I/O (lock) error, got {e}"),
            Ok(_) => panic!("a second open of a live sled directory succeeded"),
        }
    }

    /// Many writers at once: every write is acknowledged and present, and a group commit mixing
    /// puts, deletes and transactions keeps each request's own outcome.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers() {
        let dir = tempdir();
        let b = Arc::new(open(dir.path()));
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..32 {
            let b = b.clone();
            tasks.spawn(async move {
                for i in 0..50 {
                    let key = format!("w/{t:02}/{i:03}");
                    b.put(&key, key.as_bytes().to_vec()).await.expect("put");
                    if i % 10 == 0 {
                        // A rejected transaction in the same group must not affect its neighbours.
                        let bad = vec![TxnOp::Put { key: String::new(), value: vec![] }];
                        assert!(b.transaction(bad).await.is_err());
                        b.delete(&key).await.expect("delete");
                    }
                }
            });
        }
        while let Some(res) = tasks.join_next().await {
            res.expect("writer task");
        }
        let writers = b.list("w/").await.expect("list");
        assert_eq!(writers.len(), 32);
        for t in 0..32 {
            let keys = b.list(&format!("w/{t:02}/")).await.expect("list");
            assert_eq!(keys.len(), 45, "writer {t}");
            let v = b.get(&format!("w/{t:02}/001")).await.expect("get");
            assert_eq!(v.as_deref(), Some(format!("w/{t:02}/001").as_bytes()));
        }
    }

    // ----- crash test -----------------------------------------------------------------------

    const CRASH_DIR_ENV: &str = "VAULTD_SLED_CRASH_DIR";
    const CRASH_ROUND_ENV: &str = "VAULTD_SLED_CRASH_ROUND";

    /// The value stored under `key` in the crash test, so that recovery checks contents and not
    /// only presence. Every 16th key gets a 200 KiB value, over sled's 128 KiB blob threshold.
    fn crash_value(key: &str, n: usize) -> Vec<u8> {
        let len = if n % 16 == 7 { 200 * 1024 } else { 64 };
        key.bytes().cycle().take(len).collect()
    }

    /// Not a test on its own: the child process of `acknowledged_writes_survive_sigkill`, which
    /// re-executes the test binary with this test selected and the data directory in the
    /// environment. It writes until killed, printing a line for every acknowledged write.
    #[test]
    #[ignore = "child process of acknowledged_writes_survive_sigkill"]
    fn crash_child() {
        let (Ok(dir), Ok(round)) = (std::env::var(CRASH_DIR_ENV), std::env::var(CRASH_ROUND_ENV))
        else {
            return;
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async move {
            let b = Arc::new(open(Path::new(&dir)));
            println!("OPEN");
            let mut tasks = tokio::task::JoinSet::new();
            for t in 0..16 {
                let b = b.clone();
                let round = round.clone();
                tasks.spawn(async move {
                    for n in 0usize.. {
                        let key = format!("crash/{round}/{t:02}/{n:06}");
                        if n % 8 == 3 {
                            // Two keys in one transaction, acknowledged together.
                            let key2 = format!("{key}-txn");
                            let ops = vec![
                                TxnOp::Put { key: key.clone(), value: crash_value(&key, n) },
                                TxnOp::Put { key: key2.clone(), value: crash_value(&key2, n) },
                            ];
                            b.transaction(ops).await.expect("txn");
                            println!("PUT {n} {key}\nPUT {n} {key2}");
                        } else {
                            b.put(&key, crash_value(&key, n)).await.expect("put");
                            println!("PUT {n} {key}");
                        }
                        if n % 5 == 4 {
                            // Delete an earlier acknowledged key: deletes must be durable too.
                            let old = format!("crash/{round}/{t:02}/{:06}", n - 4);
                            // An unacknowledged write may or may not survive: announce the delete
                            // so the checker accepts either state until it is acknowledged.
                            println!("DELETING {old}");
                            b.delete(&old).await.expect("delete");
                            println!("DEL {old}");
                        }
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        });
    }

    /// SIGKILLs a writing child process several times over one directory; after each kill the
    /// reopened store holds every acknowledged put (with its value) and none of the acknowledged
    /// deletes. This proves crash (not power-loss) durability and that sled recovers from a kill
    /// at an arbitrary point, including mid-blob.
    #[test]
    fn acknowledged_writes_survive_sigkill() {
        let dir = tempdir();
        let exe = std::env::current_exe().expect("current_exe");
        // The state each key must be in after a crash, from the child's acknowledgements.
        #[derive(Clone, Copy)]
        enum Expect {
            /// The put of value number n was acknowledged and nothing else was started on the key.
            Present(usize),
            /// A delete was started but not acknowledged: either outcome is correct.
            PresentOrDeleted(usize),
            /// The delete was acknowledged.
            Deleted,
        }
        let mut expected: BTreeMap<String, Expect> = BTreeMap::new();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("rt");

        for round in 0..3 {
            let mut child = Command::new(&exe)
                .args([
                    "--exact",
                    "sled_backend::tests::crash_child",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CRASH_DIR_ENV, dir.path())
                .env(CRASH_ROUND_ENV, round.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn child");
            let stdout = child.stdout.take().expect("child stdout");
            let (opened_tx, opened_rx) = std::sync::mpsc::channel();
            let reader = std::thread::spawn(move || {
                let mut lines = Vec::new();
                let mut r = BufReader::new(stdout);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        // A line cut by the kill has no newline and was never fully acknowledged.
                        Ok(_) if buf.last() != Some(&b'\n') => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                            // libtest prints "test ... " without a newline before the child's output.
                            if line.ends_with("OPEN") {
                                let _ = opened_tx.send(());
                            }
                            lines.push(line);
                        }
                    }
                }
                lines
            });
            opened_rx.recv_timeout(Duration::from_secs(60)).expect("child opened the store");
            std::thread::sleep(Duration::from_millis(1000 + 137 * round));
            child.kill().expect("SIGKILL child"); // std's kill() is SIGKILL on Unix.
            child.wait().expect("wait child");
            let lines = reader.join().expect("reader thread");

            let mut acks = 0;
            for line in &lines {
                if let Some(rest) = line.strip_prefix("PUT ") {
                    let (n, key) = rest.split_once(' ').expect("PUT line");
                    expected.insert(key.to_string(), Expect::Present(n.parse().expect("n")));
                    acks += 1;
                } else if let Some(key) = line.strip_prefix("DELETING ") {
                    let Some(Expect::Present(n)) = expected.get(key).copied() else {
                        panic!("child deletes {key}, whose put was not acknowledged");
                    };
                    expected.insert(key.to_string(), Expect::PresentOrDeleted(n));
                } else if let Some(key) = line.strip_prefix("DEL ") {
                    expected.insert(key.to_string(), Expect::Deleted);
                    acks += 1;
                }
            }
            assert!(acks > 50, "round {round}: only {acks} acknowledged writes before the kill");

            let b = open(dir.path());
            rt.block_on(async {
                for (key, state) in &expected {
                    let got = b.get(key).await.expect("get after crash");
                    let value_ok = |n: usize| got.as_deref() == Some(&crash_value(key, n)[..]);
                    match *state {
                        Expect::Present(n) => assert!(
                            value_ok(n),
                            "round {round}: acknowledged put of {key} lost or wrong after SIGKILL: got {:?} bytes",
                            got.as_ref().map(Vec::len),
                        ),
                        Expect::PresentOrDeleted(n) => assert!(
                            got.is_none() || value_ok(n),
                            "round {round}: {key} has a value it was never given after SIGKILL",
                        ),
                        Expect::Deleted => assert!(got.is_none(), "round {round}: acknowledged delete of {key} undone after SIGKILL"),
                    }
                }
            });
            eprintln!("round {round}: {acks} acknowledged writes, all present after SIGKILL");
        }
    }

    // ----- throughput ---------------------------------------------------------------------------

    /// Writes/s with 32 concurrent writers (and with 1, for the per-sync baseline). Run with
    /// `cargo test -p vaultd-storage --release -- --ignored bench_sled_writes --nocapture`.
    #[test]
    #[ignore = "benchmark"]
    fn bench_sled_writes() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("rt");
        for writers in [1usize, 32, 32] {
            let dir = tempdir();
            let b = Arc::new(open(dir.path()));
            let secs = 3.0;
            let count = rt.block_on(async {
                let deadline = Instant::now() + Duration::from_secs_f64(secs);
                let mut tasks = tokio::task::JoinSet::new();
                for t in 0..writers {
                    let b = b.clone();
                    tasks.spawn(async move {
                        let mut n = 0u64;
                        while Instant::now() < deadline {
                            let key = format!("bench/{t:02}/{n:08}");
                            b.put(&key, vec![0x5a; 256]).await.expect("put");
                            n += 1;
                        }
                        n
                    });
                }
                let mut total = 0;
                while let Some(n) = tasks.join_next().await {
                    total += n.expect("task");
                }
                total
            });
            eprintln!(
                "sled: {writers:>2} writers: {count} writes in {secs} s = {:.0} writes/s",
                count as f64 / secs
            );
        }
    }
}
