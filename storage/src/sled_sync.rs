//! Making what sled 0.34.7 wrote durable: the one implementation behind both
//! [`crate::sled_backend::SledBackend`] and the Raft store of the `vaultd-raft` crate.
//!
//! See [`SledSyncer`] for what sled leaves undone and how each step closes a gap.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Closes the gaps in sled 0.34.7's durability. sled's `flush()` is not enough on its own:
///
/// - On Linux it ends in `sync_file_range`, which starts write-back of sled's log file `db` but
///   neither commits file metadata nor flushes the drive's volatile write cache (sled issue 1452).
///   [`SledSyncer::sync`] therefore `fdatasync`s `<dir>/db` itself, last.
/// - sled stores an item larger than a quarter of a segment (128 KiB with the default 512 KiB
///   segments) in its own file under `blobs/`, written with no fsync at all. Every blob that is new
///   or has changed size is `fdatasync`ed, before the log, so that a log record never becomes
///   durable ahead of a blob it points to.
/// - A new directory entry (a new blob, a page-table snapshot `snap.*` that sled renamed into
///   place, the files sled creates with the database) survives a power loss only once its
///   directory is fsync'd: `blobs/` and `<dir>` are fsync'd whenever their entries changed. sled
///   writes `conf` without a sync, so it is fsync'd along with `<dir>`. An optional parent
///   directory (the one holding `<dir>`) is fsync'd once, by the first successful sync, so that
///   `<dir>` itself survives.
/// - A failed sync is final: after an fsync error the kernel may have dropped the dirty pages and
///   cleared the error ("fsyncgate"), so a later successful fsync proves nothing. The first failure
///   is latched and every later [`SledSyncer::sync`] returns [`SyncError::Refused`]; only a restart,
///   which recovers from what is really on disk, clears it.
///
/// One sync covers every tree: sled keeps a single log for the whole database. The syncer keeps
/// bookkeeping between calls and takes `&mut self`: its owner serializes the calls.
pub struct SledSyncer {
    dir: PathBuf,
    /// `<dir>/db`, sled's log. One handle kept open: fdatasync through any descriptor writes back
    /// the inode's dirty pages and flushes the drive cache, whichever descriptor wrote them.
    log: File,
    dir_handle: File,
    /// The parent of `dir`, if the owner asked for it: synced once, so that `dir` itself survives.
    parent_handle: Option<File>,
    blobs_dir: PathBuf,
    blobs_handle: File,
    /// Entries of `dir` at the last sync; a change (sled renamed a snapshot into place) needs a
    /// directory fsync for the new entry to survive power loss.
    dir_entries: BTreeSet<OsString>,
    /// Blob files already synced, with the size they had then. A blob may be seen while sled is
    /// still writing it: a later size change means it must be synced again.
    synced_blobs: HashMap<OsString, u64>,
    /// Set by the first failed sync; see the type docs.
    failed: Option<Arc<SyncError>>,
}

/// The step of [`SledSyncer::sync`] whose file-system call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStep {
    /// fsync of a blob file or of `blobs/` (the path is `blobs/`).
    Blobs,
    /// fsync of `conf` or of the sled directory.
    Dir,
    /// fdatasync of `<dir>/db`.
    Log,
    /// The one-time fsync of the parent directory (the path is the sled directory).
    Parent,
}

impl SyncStep {
    /// What was being done, as the start of an error message followed by the path.
    pub fn what(self) -> &'static str {
        match self {
            SyncStep::Blobs => "syncing sled blobs in",
            SyncStep::Dir => "syncing the directory",
            SyncStep::Log => "fdatasync of sled's log in",
            SyncStep::Parent => "syncing the parent of",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// sled's own `flush()` failed.
    #[error("sled: {0}")]
    Flush(sled::Error),
    /// A read_dir, open or fsync of one of the steps failed.
    #[error("{} {}: {source}", .step.what(), .path.display())]
    Io { step: SyncStep, path: PathBuf, source: io::Error },
    /// An earlier sync failed (the error it returned is kept here); see [`SledSyncer`].
    #[error("storage refuses writes after an earlier failed sync: {0}")]
    Refused(Arc<SyncError>),
}

impl SledSyncer {
    /// Opens the files a sync needs in the sled directory `dir` (which sled must already have
    /// created: `db` and `blobs/` are opened here). `parent`, if given, is fsync'd by the first
    /// successful [`SledSyncer::sync`] and never again.
    pub fn new(dir: &Path, parent: Option<&Path>) -> io::Result<Self> {
        let blobs_dir = dir.join("blobs");
        Ok(Self {
            dir: dir.to_path_buf(),
            log: File::open(dir.join("db"))?,
            dir_handle: File::open(dir)?,
            parent_handle: parent.map(File::open).transpose()?,
            blobs_handle: File::open(&blobs_dir)?,
            blobs_dir,
            dir_entries: BTreeSet::new(),
            synced_blobs: HashMap::new(),
            failed: None,
        })
    }

    /// Makes every write applied to `db` so far durable: sled's flush (write-back of its buffers,
    /// plus writing any pending blob files), then fsync of new or grown blobs and of `blobs/` if its
    /// entries changed, then fsync of `conf` and the directory if its entries changed, then
    /// fdatasync of the log, then (once) the parent directory.
    ///
    /// The first error is latched: this and every later call return it, later ones wrapped in
    /// [`SyncError::Refused`] without touching the disk.
    pub fn sync(&mut self, db: &sled::Db) -> Result<(), SyncError> {
        if let Some(first) = &self.failed {
            return Err(SyncError::Refused(Arc::clone(first)));
        }
        match self.sync_once(db) {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = Arc::new(e);
                self.failed = Some(Arc::clone(&e));
                // Nobody else holds the Arc yet; the fallback only exists to avoid an unwrap.
                Err(Arc::try_unwrap(e).unwrap_or_else(SyncError::Refused))
            }
        }
    }

    /// The error of the sync that failed first, once one has: every later sync is refused.
    pub fn failure(&self) -> Option<&SyncError> {
        self.failed.as_deref()
    }

    fn sync_once(&mut self, db: &sled::Db) -> Result<(), SyncError> {
        // Writes sled's buffers out (and any blob files it has pending).
        db.flush().map_err(SyncError::Flush)?;
        // Blobs before the log, so that a log record is never durable ahead of a blob it points to.
        self.sync_blobs().map_err(|e| io_error(SyncStep::Blobs, &self.blobs_dir, e))?;
        self.sync_dir().map_err(|e| io_error(SyncStep::Dir, &self.dir, e))?;
        self.log.sync_data().map_err(|e| io_error(SyncStep::Log, &self.dir, e))?;
        if let Some(parent) = self.parent_handle.take() {
            parent.sync_all().map_err(|e| io_error(SyncStep::Parent, &self.dir, e))?;
        }
        Ok(())
    }

    fn sync_blobs(&mut self) -> io::Result<()> {
        let mut seen: HashMap<OsString, u64> = HashMap::with_capacity(self.synced_blobs.len());
        let mut dir_changed = false;
        for entry in fs::read_dir(&self.blobs_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            // The size is read before the sync: if sled appends afterwards, the next sync sees a
            // different size and syncs the file again.
            let len = match entry.metadata() {
                Ok(m) => m.len(),
                // sled garbage-collects blobs concurrently; one that vanished needs no sync.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let known = self.synced_blobs.get(&name).copied();
            if known != Some(len) {
                dir_changed |= known.is_none();
                match File::open(entry.path()) {
                    Ok(f) => f.sync_data()?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
            seen.insert(name, len);
        }
        dir_changed |= seen.len() != self.synced_blobs.len();
        if dir_changed {
            self.blobs_handle.sync_all()?;
        }
        self.synced_blobs = seen;
        Ok(())
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        let mut entries = BTreeSet::new();
        for entry in fs::read_dir(&self.dir)? {
            entries.insert(entry?.file_name());
        }
        if entries != self.dir_entries {
            // `conf` is written (unsynced) only when sled creates the database, which is also when
            // the directory's entries first "change" for this syncer.
            match File::open(self.dir.join("conf")) {
                Ok(f) => f.sync_all()?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            self.dir_handle.sync_all()?;
            self.dir_entries = entries;
        }
        Ok(())
    }
}

fn io_error(step: SyncStep, path: &Path, source: io::Error) -> SyncError {
    SyncError::Io { step, path: path.to_path_buf(), source }
}

/// `create_dir_all`, then fsync the parent of every directory it created, so that the directory
/// chain survives a power loss right after it returns.
pub fn create_dir_durably(path: &Path) -> io::Result<()> {
    let mut missing: Vec<&Path> = Vec::new();
    let mut cur = Some(path);
    while let Some(p) = cur {
        if p.as_os_str().is_empty() || p.exists() {
            break;
        }
        missing.push(p);
        cur = p.parent();
    }
    fs::create_dir_all(path)?;
    for created in missing {
        let parent = match created.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}
