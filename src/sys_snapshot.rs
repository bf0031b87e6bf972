//! `sys/storage/raft/snapshot` (save and restore) and `sys/storage/raft/snapshot-force`.
//!
//! ## The archive
//!
//! As Vault's (`internal/physical/raft/snapshot/archive.go`): a gzipped tar of `meta.json`,
//! `state.bin` (the raft crate's state file: every stored key with its value as stored, i.e.
//! barrier ciphertext, never plaintext), `SHA256SUMS` (SHA-256 of the two, `sha256sum` format)
//! and `SHA256SUMS.sealed` (`SHA256SUMS` encrypted with the root key, AES-256-GCM). Vault's CLI
//! checks that the last member, `SHA256SUMS.sealed`, is present and not empty, so `bao operator
//! raft snapshot save` works against vaultd unchanged.
//!
//! The checksums catch a truncated or corrupted file; the sealed copy tells a snapshot of this
//! cluster (same root key) from another cluster's, which only `snapshot-force` restores.
//!
//! ## Streaming
//!
//! A save writes the state file to a temporary file in the raft directory, then streams the
//! archive to the client from a blocking task through a bounded channel; a restore spools the
//! body to a temporary file (its own size bound, not `max_request_size`), unpacks `state.bin`
//! into another while hashing it, verifies everything, and only then hands the state file to the
//! raft crate, which replaces the state machine on every node through the log. Temporary files
//! are removed when the request ends, whatever happened. Nothing is held whole in memory.
//!
//! ## After a restore
//!
//! Every node that applies the commit (the leader here, the followers through
//! [`spawn_restore_watcher`]) reloads its keyring and tables ([`Core::reload_after_restore`]),
//! and seals when the restored keyring does not open with its root key (a forced restore of
//! another cluster's snapshot), as Vault does.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use aws_lc_rs::digest::{Context, SHA256};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response as HttpResponse};
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Mutex, Semaphore};
use vaultd_raft::{RaftError, RaftNode};

use crate::core::Core;
use crate::error::{Error, Result};
use crate::http::{error_response, Incoming};

pub const SNAPSHOT_PATH: &str = "sys/storage/raft/snapshot";
pub const SNAPSHOT_FORCE_PATH: &str = "sys/storage/raft/snapshot-force";

/// The additional data the sealed checksum file is encrypted under.
const SEALED_AAD: &str = "core/raft/snapshot/SHA256SUMS";
const STATE_FORMAT: &str = "vaultd-state-v1";

/// Largest restore body accepted. Restores bypass `max_request_size` (a snapshot is the whole
/// data set); this bounds the disk a client can fill with one upload.
pub const MAX_RESTORE_BYTES: u64 = 8 * 1024 * 1024 * 1024;
/// Largest `state.bin` unpacked from an archive: a gzip bomb stops here.
const MAX_STATE_BYTES: u64 = 4 * MAX_RESTORE_BYTES;
/// Largest small member (`meta.json`, the checksum files).
const MAX_SMALL_MEMBER: u64 = 64 * 1024;
/// Tar members read before giving up on an archive.
const MAX_MEMBERS: usize = 16;
/// Snapshot operations (saves and restores) running at once per node, each with temporary files.
static OPERATIONS: Semaphore = Semaphore::const_new(2);
/// One restore at a time per node.
static RESTORE: Mutex<()> = Mutex::const_new(());
/// Chunks of the archive in flight to a client, and their size: bounds a save's memory.
const STREAM_CHUNKS: usize = 8;
const STREAM_CHUNK_BYTES: usize = 256 * 1024;
const TMP_DIR: &str = "snapshot-tmp";

/// Serves both snapshot paths. The body stays a stream: `http` does not buffer it for these.
pub async fn serve(core: &Arc<Core>, method: Method, uri: &Uri, headers: HeaderMap, body: Body, force: bool) -> HttpResponse {
    let path = if force { SNAPSHOT_FORCE_PATH } else { SNAPSHOT_PATH };
    let result = match (&method, force) {
        (&Method::GET, false) => save(core, uri, &headers).await,
        (&Method::POST | &Method::PUT, _) => restore(core, uri, &headers, body, force).await,
        _ => Err(Error::UnsupportedOperation),
    };
    match result {
        Ok(resp) => resp,
        Err(e) => {
            if !matches!(e, Error::BadRequest(_) | Error::PermissionDenied | Error::Sealed) {
                tracing::warn!(path, error = %e, "raft snapshot request failed");
            }
            error_response(&e)
        }
    }
}

/// The checks every snapshot request passes first, in Vault's order: sealed, token with sudo
/// (a root path), then active node (a standby redirects, as Vault always does for these paths).
async fn preflight<'a>(core: &'a Core, uri: &Uri, headers: &HeaderMap) -> Result<std::result::Result<&'a Arc<RaftNode>, HttpResponse>> {
    if core.is_sealed() {
        return Err(Error::Sealed);
    }
    let inc = Incoming { method: Method::GET, path: String::new(), query: Default::default(), headers: headers.clone(), body: Bytes::new() };
    core.authorize_sudo(inc.token().as_deref(), SNAPSHOT_PATH).await?;
    let raft = core.raft().ok_or_else(|| Error::bad_request("raft storage is not in use"))?;
    let status = raft.status();
    if !status.is_leader {
        let Some(leader) = status.leader.filter(|l| !l.api_addr.is_empty()) else {
            return Err(Error::Unavailable("local node not active but active cluster node not found".into()));
        };
        let target = match uri.path_and_query() {
            Some(pq) => format!("{}{}", leader.api_addr.trim_end_matches('/'), pq.as_str()),
            None => leader.api_addr.clone(),
        };
        let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
        let location = HeaderValue::from_str(&target).map_err(|_| Error::internal("the active node's api_addr is not a valid header"))?;
        resp.headers_mut().insert(header::LOCATION, location);
        return Ok(Err(resp));
    }
    Ok(Ok(raft))
}

fn tmp_dir(raft: &RaftNode) -> Result<PathBuf> {
    let dir = raft.data_dir().join(TMP_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| Error::internal(format!("creating {}: {e}", dir.display())))?;
    Ok(dir)
}

fn temp_file(dir: &Path, prefix: &str) -> Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempfile_in(dir)
        .map_err(|e| Error::internal(format!("creating a temporary file in {}: {e}", dir.display())))
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&SHA256, data).as_ref())
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = BufReader::with_capacity(256 * 1024, File::open(path)?);
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

fn sums_file(meta_sum: &str, state_sum: &str) -> Vec<u8> {
    format!("{meta_sum}  meta.json\n{state_sum}  state.bin\n").into_bytes()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::internal(format!("the snapshot task failed: {e}")))
}

async fn save(core: &Arc<Core>, uri: &Uri, headers: &HeaderMap) -> Result<HttpResponse> {
    let raft = match preflight(core, uri, headers).await? {
        Ok(r) => Arc::clone(r),
        Err(redirect) => return Ok(redirect),
    };
    let permit = OPERATIONS.acquire().await.map_err(|_| Error::internal("the snapshot semaphore is closed"))?;
    let state = temp_file(&tmp_dir(&raft)?, "save-")?;
    let info = raft.export_state(state.path()).await?;
    let status = raft.status();
    let meta = serde_json::to_vec(&json!({
        "Version": 1,
        "Format": STATE_FORMAT,
        "ID": format!("{}-{}-{}", status.term, status.applied_index, crate::kv::now_rfc3339()),
        "Index": status.applied_index,
        "Term": status.term,
        "Size": info.bytes,
        "Pairs": info.pairs,
    }))
    .map_err(Error::internal)?;
    let state_path = state.path().to_path_buf();
    let state_sum = blocking(move || sha256_file(&state_path)).await?.map_err(Error::internal)?;
    let sums = sums_file(&sha256_hex(&meta), &state_sum);
    let sealed = core.barrier.encrypt_with_root_key(SEALED_AAD, &sums)?;

    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(STREAM_CHUNKS);
    let err_tx = tx.clone();
    tokio::task::spawn_blocking(move || {
        // The temporary file and the permit live until the archive is written or abandoned.
        let _permit = permit;
        let written = File::open(state.path()).and_then(|mut file| {
            let out = ChannelWriter { tx, buf: Vec::with_capacity(STREAM_CHUNK_BYTES) };
            write_archive(out, &meta, &mut file, info.bytes, &sums, &sealed)
        });
        if let Err(e) = written {
            // The client sees the stream end early: an incomplete archive (no sealed hash file).
            tracing::warn!("raft snapshot stream ended early: {e}");
            let _ = err_tx.blocking_send(Err(e));
        }
        drop(state);
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut resp = (StatusCode::OK, Body::from_stream(stream)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/gzip"));
    h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"raft.snap\""));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Hands what the archive writer produces to the response body in bounded chunks; the blocking
/// send is the back-pressure from a slow client.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(STREAM_CHUNK_BYTES)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= STREAM_CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

fn tar_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o600);
    h.set_mtime(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));
    h
}

fn write_archive(out: impl Write, meta: &[u8], state: &mut File, state_len: u64, sums: &[u8], sealed: &[u8]) -> io::Result<()> {
    let mut tar = tar::Builder::new(GzEncoder::new(out, flate2::Compression::fast()));
    tar.append_data(&mut tar_header(meta.len() as u64), "meta.json", meta)?;
    tar.append_data(&mut tar_header(state_len), "state.bin", state.take(state_len))?;
    tar.append_data(&mut tar_header(sums.len() as u64), "SHA256SUMS", sums)?;
    // Last, as in Vault: its presence tells a client the stream is complete.
    tar.append_data(&mut tar_header(sealed.len() as u64), "SHA256SUMS.sealed", sealed)?;
    let mut out = tar.into_inner()?.finish()?;
    out.flush()
}

async fn restore(core: &Arc<Core>, uri: &Uri, headers: &HeaderMap, body: Body, force: bool) -> Result<HttpResponse> {
    let raft = match preflight(core, uri, headers).await? {
        Ok(r) => Arc::clone(r),
        Err(redirect) => return Ok(redirect),
    };
    let _one = RESTORE.try_lock().map_err(|_| Error::Unavailable("another raft snapshot restore is in progress on this node".into()))?;
    let _permit = OPERATIONS.acquire().await.map_err(|_| Error::internal("the snapshot semaphore is closed"))?;
    let dir = tmp_dir(&raft)?;
    let upload = temp_file(&dir, "restore-upload-")?;
    let size = spool(body, upload.path()).await?;
    if size == 0 {
        return Err(Error::bad_request("no snapshot provided: the request body is empty"));
    }
    let state = temp_file(&dir, "restore-state-")?;
    let (upload_path, state_path) = (upload.path().to_path_buf(), state.path().to_path_buf());
    let archive = blocking(move || read_archive(&upload_path, &state_path)).await?.map_err(|e| Error::bad_request(format!("invalid snapshot: {e}")))?;
    drop(upload);
    archive.verify().map_err(|e| Error::bad_request(format!("invalid snapshot: {e}")))?;
    if !force {
        let opened = core.barrier.decrypt_with_root_key(SEALED_AAD, &archive.sealed)?;
        if opened.as_deref().map(Vec::as_slice) != Some(archive.sums.as_slice()) {
            return Err(Error::bad_request(
                "could not verify hash file, possibly the snapshot is using a different set of unseal keys; use the snapshot-force API to bypass this check",
            ));
        }
    }
    let info = raft.restore_state(state.path()).await.map_err(|e| match e {
        RaftError::Corrupt(m) => Error::bad_request(format!("invalid snapshot: {m}")),
        other => Error::Raft(other),
    })?;
    tracing::info!(pairs = info.pairs, bytes = info.bytes, force, "raft snapshot restored");
    core.reload_after_restore().await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Writes the request body to `path`, refusing more than [`MAX_RESTORE_BYTES`].
async fn spool(mut body: Body, path: &Path) -> Result<u64> {
    let io_err = |e: io::Error| Error::internal(format!("spooling the snapshot: {e}"));
    let mut file = tokio::fs::File::create(path).await.map_err(io_err)?;
    let mut size = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::bad_request(format!("reading the snapshot upload failed: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        size += data.len() as u64;
        if size > MAX_RESTORE_BYTES {
            return Err(Error::BodyTooLarge);
        }
        file.write_all(&data).await.map_err(io_err)?;
    }
    file.flush().await.map_err(io_err)?;
    Ok(size)
}

/// What a restore read from an archive; `state.bin` itself went to a file.
struct Archive {
    meta: Vec<u8>,
    meta_sum: String,
    state_sum: Option<String>,
    sums: Vec<u8>,
    sealed: Vec<u8>,
}

impl Archive {
    fn verify(&self) -> std::result::Result<(), String> {
        let Some(state_sum) = &self.state_sum else { return Err("the archive has no state.bin".into()) };
        if self.sums.is_empty() {
            return Err("the archive has no SHA256SUMS".into());
        }
        if self.sealed.is_empty() {
            return Err("the archive has no SHA256SUMS.sealed: the snapshot is incomplete".into());
        }
        let listed = |name: &str| {
            std::str::from_utf8(&self.sums).ok()?.lines().find_map(|l| {
                let (sum, file) = l.split_once("  ")?;
                (file == name).then(|| sum.to_ascii_lowercase())
            })
        };
        for (name, sum) in [("meta.json", &self.meta_sum), ("state.bin", state_sum)] {
            match listed(name) {
                Some(expected) if expected == *sum => {}
                Some(_) => return Err(format!("the SHA-256 of {name} does not match SHA256SUMS: the file is corrupt")),
                None => return Err(format!("SHA256SUMS lists no {name}")),
            }
        }
        let meta: Value = serde_json::from_slice(&self.meta).map_err(|e| format!("meta.json is not JSON: {e}"))?;
        if meta.get("Format").and_then(Value::as_str) != Some(STATE_FORMAT) {
            return Err("the snapshot was not made by vaultd (unknown state format)".into());
        }
        Ok(())
    }
}

fn read_small(entry: &mut impl Read, name: &str) -> std::result::Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    entry.take(MAX_SMALL_MEMBER + 1).read_to_end(&mut buf).map_err(|e| format!("reading {name}: {e}"))?;
    if buf.len() as u64 > MAX_SMALL_MEMBER {
        return Err(format!("{name} is larger than {MAX_SMALL_MEMBER} bytes"));
    }
    Ok(buf)
}

/// Unpacks the archive at `src`: `state.bin` into `state_out` (hashed on the way), the small
/// members into memory. Reads the gzip stream to its end, so its own CRC and length check too.
fn read_archive(src: &Path, state_out: &Path) -> std::result::Result<Archive, String> {
    let file = File::open(src).map_err(|e| format!("opening the upload: {e}"))?;
    let mut tar = tar::Archive::new(GzDecoder::new(BufReader::with_capacity(256 * 1024, file)));
    let mut archive = Archive { meta: Vec::new(), meta_sum: String::new(), state_sum: None, sums: Vec::new(), sealed: Vec::new() };
    let entries = tar.entries().map_err(|e| format!("not a gzipped tar archive: {e}"))?;
    for (n, entry) in entries.enumerate() {
        if n >= MAX_MEMBERS {
            return Err(format!("the archive has more than {MAX_MEMBERS} members"));
        }
        let mut entry = entry.map_err(|e| format!("the archive is truncated or corrupt: {e}"))?;
        let name = entry.path().map_err(|e| format!("a member has a bad name: {e}"))?.to_string_lossy().into_owned();
        match name.as_str() {
            "meta.json" => {
                archive.meta = read_small(&mut entry, &name)?;
                archive.meta_sum = sha256_hex(&archive.meta);
            }
            "SHA256SUMS" => archive.sums = read_small(&mut entry, &name)?,
            "SHA256SUMS.sealed" => archive.sealed = read_small(&mut entry, &name)?,
            "state.bin" => {
                let mut out = File::create(state_out).map_err(|e| format!("creating a temporary file: {e}"))?;
                let mut hashing = HashingWriter { inner: &mut out, ctx: Context::new(&SHA256) };
                let copied = io::copy(&mut (&mut entry).take(MAX_STATE_BYTES + 1), &mut hashing)
                    .map_err(|e| format!("the archive is truncated or corrupt: {e}"))?;
                if copied > MAX_STATE_BYTES {
                    return Err(format!("state.bin is larger than {MAX_STATE_BYTES} bytes"));
                }
                archive.state_sum = Some(hex::encode(hashing.ctx.finish().as_ref()));
                out.sync_all().map_err(|e| format!("writing a temporary file: {e}"))?;
            }
            // Members a later format may add; the checksums cover what a restore uses.
            _ => {}
        }
    }
    let mut rest = tar.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| format!("the archive is truncated or corrupt: {e}"))?;
    Ok(archive)
}

struct HashingWriter<'a> {
    inner: &'a mut File,
    ctx: Context,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.ctx.update(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Runs [`Core::reload_after_restore`] on this node whenever a restore commits here: on a
/// follower that is the only signal that the whole store changed under it. One task per server,
/// ending with the core or the raft node. Called once at server start, before any request.
pub fn spawn_restore_watcher(core: &Arc<Core>) {
    let Some(raft) = core.raft() else { return };
    // Temporary files of saves and restores a crash interrupted: nothing can be using them yet.
    let stale = raft.data_dir().join(TMP_DIR);
    if let Err(e) = std::fs::remove_dir_all(&stale) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!("cannot remove {}: {e}", stale.display());
        }
    }
    let mut events = match raft.restore_events() {
        Ok(rx) => rx,
        Err(e) => {
            tracing::warn!("cannot watch for raft snapshot restores: {e}");
            return;
        }
    };
    let weak: Weak<Core> = Arc::downgrade(core);
    tokio::spawn(async move {
        while events.changed().await.is_ok() {
            let Some(core) = weak.upgrade() else { return };
            if let Err(e) = core.reload_after_restore().await {
                tracing::error!("reloading after a raft snapshot restore failed: {e}");
            }
        }
    });
}
