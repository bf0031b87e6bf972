//! `operator raft snapshot save FILE` and `operator raft snapshot restore [-force] FILE`, as
//! Vault's CLI: the snapshot streams between the server and the file (never whole in memory),
//! with a progress line on stderr every [`PROGRESS_EVERY`] bytes, and a save is checked for
//! Vault's last archive member (`SHA256SUMS.sealed`) as Vault's client does.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{self, ApiError};
use super::output;

const SNAPSHOT_PATH: &str = "sys/storage/raft/snapshot";
const PROGRESS_EVERY: u64 = 8 * 1024 * 1024;
const READ_CHUNK: usize = 256 * 1024;
/// Vault's `api.ErrIncompleteSnapshot`.
const INCOMPLETE: &str = "incomplete snapshot, unable to read SHA256SUMS.sealed file";
/// Members scanned when checking a saved archive (Vault's has four).
const MAX_MEMBERS: usize = 16;

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Save a snapshot of the cluster's data to FILE.
    Save { file: PathBuf },
    /// Restore the cluster's data from the snapshot in FILE.
    Restore {
        /// Restore a snapshot of another cluster (skips the check that it was made with this
        /// cluster's keys); the nodes then need that cluster's unseal keys.
        #[arg(long)]
        force: bool,
        file: PathBuf,
    },
}

/// The connection settings of [`client::Client`], without its overall request timeout: a
/// snapshot of a large data set takes as long as it takes to move.
fn http_client() -> Result<(reqwest::Client, String, Option<String>), String> {
    let token = client::Client::from_env()?.token().map(String::from);
    let addr = client::env("ADDR").unwrap_or_else(|| "https://127.0.0.1:8200".to_string());
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        // Redirects are followed by hand: a restore must re-send its body.
        .redirect(reqwest::redirect::Policy::none());
    if client::env("SKIP_VERIFY").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        builder = builder.danger_accept_invalid_certs(true);
    }
    if let Some(path) = client::env("CACERT") {
        let pem = std::fs::read(&path).map_err(|e| format!("reading VAULT_CACERT {path}: {e}"))?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| format!("parsing VAULT_CACERT {path}: {e}"))?;
        builder = builder.add_root_certificate(cert);
    }
    let http = builder.build().map_err(|e| format!("building HTTP client: {e}"))?;
    Ok((http, addr.trim_end_matches('/').to_string(), token))
}

pub async fn run(cmd: SnapshotCommand) -> i32 {
    let (http, addr, token) = match http_client() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error initializing client: {e}");
            return output::USAGE;
        }
    };
    match cmd {
        SnapshotCommand::Save { file } => match save(&http, &addr, token.as_deref(), &file).await {
            Ok(()) => output::OK,
            Err(e) => {
                eprintln!("Error taking the snapshot: {e}");
                output::API
            }
        },
        SnapshotCommand::Restore { force, file } => {
            if let Err(e) = std::fs::metadata(&file) {
                eprintln!("Error opening snapshot file: {e}");
                return output::USAGE;
            }
            match restore(&http, &addr, token.as_deref(), &file, force).await {
                Ok(()) => output::OK,
                Err(e) => {
                    eprintln!("Error installing the snapshot: {e}");
                    output::API
                }
            }
        }
    }
}

fn transport_error(url: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError { status: None, errors: vec![e.to_string()], url: url.to_string() }
}

async fn api_error(resp: reqwest::Response, url: String) -> ApiError {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let errors = body
        .get("errors")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|e| e.as_str().map(String::from)).collect())
        .unwrap_or_default();
    ApiError { status: Some(status), errors, url }
}

/// Where a 307 from a standby points, if it is one (Vault's CLI follows one such redirect).
fn redirect_target(resp: &reqwest::Response) -> Option<String> {
    if resp.status() != StatusCode::TEMPORARY_REDIRECT {
        return None;
    }
    resp.headers().get(reqwest::header::LOCATION)?.to_str().ok().map(String::from)
}

fn progress(verb: &str, bytes: u64, next: &mut u64) {
    if bytes >= *next {
        eprintln!("{verb} {:.1} MiB", bytes as f64 / (1024.0 * 1024.0));
        *next = (bytes / PROGRESS_EVERY + 1) * PROGRESS_EVERY;
    }
}

async fn save(http: &reqwest::Client, addr: &str, token: Option<&str>, file: &Path) -> Result<(), ApiError> {
    let mut url = format!("{addr}/v1/{SNAPSHOT_PATH}");
    let mut resp = None;
    for _ in 0..2 {
        let mut req = http.get(&url).header("X-Vault-Request", "true");
        if let Some(t) = token {
            req = req.header("X-Vault-Token", t);
        }
        let r = req.send().await.map_err(|e| transport_error(&format!("GET {url}"), e))?;
        match redirect_target(&r) {
            Some(next) => url = next,
            None => {
                resp = Some(r);
                break;
            }
        }
    }
    let shown = format!("GET {url}");
    let Some(mut resp) = resp else { return Err(transport_error(&shown, "too many redirects")) };
    if !resp.status().is_success() {
        return Err(api_error(resp, shown).await);
    }
    let mut out = tokio::fs::File::create(file).await.map_err(|e| transport_error(&shown, format!("creating {}: {e}", file.display())))?;
    let (mut bytes, mut next) = (0u64, PROGRESS_EVERY);
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(&shown, e))? {
        out.write_all(&chunk).await.map_err(|e| transport_error(&shown, format!("writing {}: {e}", file.display())))?;
        bytes += chunk.len() as u64;
        progress("Snapshot saved:", bytes, &mut next);
    }
    out.flush().await.map_err(|e| transport_error(&shown, e))?;
    out.sync_all().await.map_err(|e| transport_error(&shown, e))?;
    drop(out);
    let path = file.to_path_buf();
    let complete = tokio::task::spawn_blocking(move || has_sealed_hash(&path)).await.unwrap_or(false);
    if !complete {
        return Err(transport_error(&shown, INCOMPLETE));
    }
    Ok(())
}

/// Whether the archive at `path` has a non-empty `SHA256SUMS.sealed`: a stream cut short by the
/// server lacks it (it is the last member).
fn has_sealed_hash(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else { return false };
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let Ok(entries) = tar.entries() else { return false };
    for entry in entries.take(MAX_MEMBERS) {
        let Ok(mut entry) = entry else { return false };
        let is_sealed = entry.path().is_ok_and(|p| p.as_os_str() == "SHA256SUMS.sealed");
        if is_sealed {
            let mut probe = [0u8; 1];
            return matches!(entry.read(&mut probe), Ok(1));
        }
    }
    false
}

async fn restore(http: &reqwest::Client, addr: &str, token: Option<&str>, file: &Path, force: bool) -> Result<(), ApiError> {
    let path = if force { "sys/storage/raft/snapshot-force" } else { SNAPSHOT_PATH };
    let mut url = format!("{addr}/v1/{path}");
    for _ in 0..2 {
        let shown = format!("POST {url}");
        let f = tokio::fs::File::open(file).await.map_err(|e| transport_error(&shown, format!("opening {}: {e}", file.display())))?;
        let mut req = http.post(&url).header("X-Vault-Request", "true").header("Content-Type", "application/octet-stream").body(reqwest::Body::wrap_stream(upload_stream(f)));
        if let Some(t) = token {
            req = req.header("X-Vault-Token", t);
        }
        let resp = req.send().await.map_err(|e| transport_error(&shown, e))?;
        if let Some(next) = redirect_target(&resp) {
            url = next;
            continue;
        }
        if !resp.status().is_success() {
            return Err(api_error(resp, shown).await);
        }
        return Ok(());
    }
    Err(transport_error(&format!("POST {url}"), "too many redirects"))
}

/// The file as a body stream, read in bounded chunks, with progress on stderr.
fn upload_stream(file: tokio::fs::File) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    futures_util::stream::unfold((file, 0u64, PROGRESS_EVERY), |(mut file, mut sent, mut next)| async move {
        let mut buf = vec![0u8; READ_CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                sent += n as u64;
                progress("Snapshot sent:", sent, &mut next);
                Some((Ok(buf), (file, sent, next)))
            }
            Err(e) => Some((Err(e), (file, sent, next))),
        }
    })
}
