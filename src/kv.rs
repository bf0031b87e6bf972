//! The KV secrets engine, versions 1 and 2.
//!
//! Layout inside a mount's view (all behind the barrier):
//! - v1: the secret at its own path.
//! - v2: `meta/<path>` holds the key's metadata (versions, their times, settings) and
//!   `versions/<sha256(path)>/<n>` each version's data. Hashing the path keeps version keys
//!   short and flat whatever the secret path looks like.
//!
//! A v2 write is one read of the metadata plus one atomic transaction (new version, updated
//! metadata, pruned old version), so with integrated storage it is exactly one Raft entry. Writes
//! to the same secret are serialised by a striped lock so check-and-set is exact.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::Mutex;

use crate::error::{Error, Result};
use crate::request::{Operation, Request, Response};
use crate::router::LogicalBackend;
use crate::view::{View, ViewOp};

/// Lock stripes for per-secret write serialisation. A fixed count bounds memory whatever the
/// number of secrets; two secrets sharing a stripe only wait for each other.
const STRIPES: usize = 256;
const DEFAULT_MAX_VERSIONS: u64 = 10;
/// Bounds the versions a single delete/undelete/destroy call may name.
const MAX_VERSIONS_PER_CALL: usize = 1000;

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// KV v1

pub struct KvV1 {
    view: View,
}

impl KvV1 {
    pub fn new(view: View) -> Self {
        KvV1 { view }
    }
}

#[async_trait]
impl LogicalBackend for KvV1 {
    async fn handle(&self, req: &Request, path: &str) -> Result<Option<Response>> {
        match req.op {
            Operation::List => {
                let keys = self.view.list(path).await?;
                if keys.is_empty() {
                    return Ok(None);
                }
                Ok(Some(Response::from_value(json!({ "keys": keys }))))
            }
            _ if path.is_empty() => Err(Error::UnsupportedPath),
            Operation::Read => match self.view.get(path).await? {
                None => Ok(None),
                Some(bytes) => {
                    let data: Map<String, Value> = serde_json::from_slice(&bytes)
                        .map_err(|e| Error::internal(format!("corrupt secret: {e}")))?;
                    Ok(Some(Response::data(data)))
                }
            },
            Operation::Update | Operation::Patch => {
                if req.data.is_empty() {
                    return Err(Error::bad_request("missing data fields"));
                }
                self.view.put(path, &serde_json::to_vec(&req.data)?).await?;
                Ok(Some(Response::default()))
            }
            Operation::Delete => {
                self.view.delete(path).await?;
                Ok(Some(Response::default()))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// KV v2

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct VersionMeta {
    created_time: String,
    #[serde(default)]
    deletion_time: String,
    #[serde(default)]
    destroyed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct KeyMeta {
    created_time: String,
    updated_time: String,
    current_version: u64,
    oldest_version: u64,
    #[serde(default)]
    max_versions: u64,
    #[serde(default)]
    cas_required: bool,
    #[serde(default)]
    custom_metadata: Option<BTreeMap<String, String>>,
    versions: BTreeMap<u64, VersionMeta>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct EngineConfig {
    #[serde(default)]
    max_versions: u64,
    #[serde(default)]
    cas_required: bool,
}

#[derive(Serialize, Deserialize)]
struct VersionData {
    data: Map<String, Value>,
}

pub struct KvV2 {
    view: View,
    stripes: Vec<Mutex<()>>,
    /// The engine config, read on every write: cached after the first read and replaced when
    /// this engine writes it. (Another node changing it arrives with HA's cache invalidation.)
    config: std::sync::RwLock<Option<EngineConfig>>,
}

impl KvV2 {
    pub fn new(view: View) -> Self {
        KvV2 { view, stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(), config: std::sync::RwLock::new(None) }
    }

    fn stripe(&self, key: &str) -> &Mutex<()> {
        // FNV-1a: cheap, stable, and good enough to spread keys over stripes.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in key.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
        &self.stripes[(h % STRIPES as u64) as usize]
    }

    fn version_key(key: &str, version: u64) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
        format!("versions/{}/{version}", hex::encode(digest))
    }

    async fn meta(&self, key: &str) -> Result<Option<KeyMeta>> {
        self.view.get_json(&format!("meta/{key}")).await
    }

    async fn config(&self) -> Result<EngineConfig> {
        if let Some(c) = self.config.read().ok().and_then(|c| c.clone()) {
            return Ok(c);
        }
        let c: EngineConfig = self.view.get_json("config").await?.unwrap_or_default();
        if let Ok(mut slot) = self.config.write() {
            *slot = Some(c.clone());
        }
        Ok(c)
    }

    fn version_json(version: u64, vm: &VersionMeta, meta: &KeyMeta) -> Value {
        json!({
            "created_time": vm.created_time,
            "custom_metadata": meta.custom_metadata,
            "deletion_time": vm.deletion_time,
            "destroyed": vm.destroyed,
            "version": version,
        })
    }

    async fn read_data(&self, req: &Request, key: &str) -> Result<Option<Response>> {
        let Some(meta) = self.meta(key).await? else { return Ok(None) };
        let version = match req.data.get("version") {
            None => meta.current_version,
            Some(v) => parse_u64(v).ok_or_else(|| Error::bad_request("invalid version"))?,
        };
        let version = if version == 0 { meta.current_version } else { version };
        let Some(vm) = meta.versions.get(&version) else { return Ok(None) };
        let metadata = Self::version_json(version, vm, &meta);
        if vm.destroyed || !vm.deletion_time.is_empty() {
            // Vault answers 404 but still shows the version's metadata.
            return Ok(Some(
                Response::from_value(json!({ "data": null, "metadata": metadata })).with_status(404),
            ));
        }
        let data: Option<VersionData> = self.view.get_json(&Self::version_key(key, version)).await?;
        let Some(data) = data else { return Ok(None) };
        Ok(Some(Response::from_value(json!({ "data": data.data, "metadata": metadata }))))
    }

    async fn write_data(&self, req: &Request, key: &str) -> Result<Option<Response>> {
        let data = match req.data.get("data") {
            Some(Value::Object(m)) => m.clone(),
            Some(Value::Null) | None => return Err(Error::bad_request("no data provided")),
            Some(_) => return Err(Error::bad_request("data must be a JSON object")),
        };
        let cas = match req.data.get("options").and_then(|o| o.get("cas")) {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_u64(v).ok_or_else(|| Error::bad_request("error parsing check-and-set parameter"))?),
        };
        let config = self.config().await?;
        let _guard = self.stripe(key).lock().await;
        let mut meta = self.meta(key).await?.unwrap_or_default();
        if (config.cas_required || meta.cas_required) && cas.is_none() {
            return Err(Error::bad_request("check-and-set parameter required for this call"));
        }
        if let Some(cas) = cas {
            if cas != meta.current_version {
                return Err(Error::bad_request("check-and-set parameter did not match the current version"));
            }
        }
        let now = now_rfc3339();
        if meta.created_time.is_empty() {
            meta.created_time = now.clone();
        }
        meta.updated_time = now.clone();
        let version = meta.current_version + 1;
        meta.current_version = version;
        if meta.oldest_version == 0 {
            meta.oldest_version = version;
        }
        let vm = VersionMeta { created_time: now, deletion_time: String::new(), destroyed: false };
        meta.versions.insert(version, vm.clone());

        let mut ops = vec![ViewOp::Put(
            Self::version_key(key, version),
            serde_json::to_vec(&VersionData { data })?,
        )];
        let max = effective_max_versions(meta.max_versions, config.max_versions);
        while meta.versions.len() as u64 > max {
            let Some((&oldest, _)) = meta.versions.iter().next() else { break };
            meta.versions.remove(&oldest);
            ops.push(ViewOp::Delete(Self::version_key(key, oldest)));
        }
        meta.oldest_version = meta.versions.keys().next().copied().unwrap_or(version);
        ops.push(ViewOp::Put(format!("meta/{key}"), serde_json::to_vec(&meta)?));
        self.view.transaction(ops).await?;
        Ok(Some(Response::from_value(Self::version_json(version, &vm, &meta))))
    }

    /// Soft-deletes (`delete`), restores (`undelete`) or destroys versions. `None` versions
    /// means the latest one (DELETE on `data/`).
    async fn change_versions(&self, key: &str, versions: Option<Vec<u64>>, action: VersionAction) -> Result<Option<Response>> {
        let _guard = self.stripe(key).lock().await;
        let Some(mut meta) = self.meta(key).await? else {
            return Ok(Some(Response::default()));
        };
        let versions = versions.unwrap_or_else(|| vec![meta.current_version]);
        let now = now_rfc3339();
        let mut ops = Vec::new();
        for v in versions {
            let Some(vm) = meta.versions.get_mut(&v) else { continue };
            match action {
                VersionAction::Delete => {
                    if vm.deletion_time.is_empty() && !vm.destroyed {
                        vm.deletion_time = now.clone();
                    }
                }
                VersionAction::Undelete => {
                    if !vm.destroyed {
                        vm.deletion_time.clear();
                    }
                }
                VersionAction::Destroy => {
                    if !vm.destroyed {
                        vm.destroyed = true;
                        ops.push(ViewOp::Delete(Self::version_key(key, v)));
                    }
                }
            }
        }
        ops.push(ViewOp::Put(format!("meta/{key}"), serde_json::to_vec(&meta)?));
        self.view.transaction(ops).await?;
        Ok(Some(Response::default()))
    }

    async fn read_metadata(&self, key: &str) -> Result<Option<Response>> {
        let Some(meta) = self.meta(key).await? else { return Ok(None) };
        let versions: Map<String, Value> = meta
            .versions
            .iter()
            .map(|(v, vm)| {
                (v.to_string(), json!({"created_time": vm.created_time, "deletion_time": vm.deletion_time, "destroyed": vm.destroyed}))
            })
            .collect();
        Ok(Some(Response::from_value(json!({
            "cas_required": meta.cas_required,
            "created_time": meta.created_time,
            "current_version": meta.current_version,
            "custom_metadata": meta.custom_metadata,
            "delete_version_after": "0s",
            "max_versions": meta.max_versions,
            "oldest_version": meta.oldest_version,
            "updated_time": meta.updated_time,
            "versions": versions,
        }))))
    }

    async fn delete_metadata(&self, key: &str) -> Result<Option<Response>> {
        let _guard = self.stripe(key).lock().await;
        let Some(meta) = self.meta(key).await? else { return Ok(Some(Response::default())) };
        let mut ops: Vec<ViewOp> = meta.versions.keys().map(|v| ViewOp::Delete(Self::version_key(key, *v))).collect();
        ops.push(ViewOp::Delete(format!("meta/{key}")));
        self.view.transaction(ops).await?;
        Ok(Some(Response::default()))
    }
}

#[derive(Clone, Copy)]
enum VersionAction {
    Delete,
    Undelete,
    Destroy,
}

fn effective_max_versions(key_max: u64, engine_max: u64) -> u64 {
    match (key_max, engine_max) {
        (0, 0) => DEFAULT_MAX_VERSIONS,
        (0, e) => e,
        (k, 0) => k,
        (k, e) => k.min(e),
    }
}

fn parse_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn parse_versions(req: &Request) -> Result<Vec<u64>> {
    let raw = req.data.get("versions").ok_or_else(|| Error::bad_request("no version number provided"))?;
    let list: Vec<u64> = match raw {
        Value::Array(items) => items.iter().map(parse_u64).collect::<Option<Vec<_>>>(),
        Value::String(s) => s.split(',').map(|p| p.trim().parse().ok()).collect::<Option<Vec<_>>>(),
        other => parse_u64(other).map(|v| vec![v]),
    }
    .ok_or_else(|| Error::bad_request("versions must be a list of integers"))?;
    if list.is_empty() {
        return Err(Error::bad_request("no version number provided"));
    }
    if list.len() > MAX_VERSIONS_PER_CALL {
        return Err(Error::bad_request(format!("at most {MAX_VERSIONS_PER_CALL} versions per request")));
    }
    Ok(list)
}

#[async_trait]
impl LogicalBackend for KvV2 {
    async fn handle(&self, req: &Request, path: &str) -> Result<Option<Response>> {
        let (section, key) = match path.split_once('/') {
            Some((s, k)) => (s, k),
            None => (path, ""),
        };
        match (section, req.op) {
            ("config", Operation::Read) => {
                let c = self.config().await?;
                Ok(Some(Response::from_value(json!({
                    "cas_required": c.cas_required,
                    "delete_version_after": "0s",
                    "max_versions": c.max_versions,
                }))))
            }
            ("config", Operation::Update) => {
                let mut c = self.config().await?;
                if let Some(v) = req.data.get("max_versions") {
                    c.max_versions = parse_u64(v).ok_or_else(|| Error::bad_request("invalid max_versions"))?;
                }
                if let Some(v) = req.data.get("cas_required") {
                    c.cas_required = v.as_bool().ok_or_else(|| Error::bad_request("invalid cas_required"))?;
                }
                self.view.put_json("config", &c).await?;
                if let Ok(mut slot) = self.config.write() {
                    *slot = Some(c);
                }
                Ok(Some(Response::default()))
            }
            (_, _) if key.is_empty() && req.op != Operation::List => Err(Error::UnsupportedPath),
            ("data", Operation::Read) => self.read_data(req, key).await,
            ("data", Operation::Update) => self.write_data(req, key).await,
            ("data", Operation::Delete) => self.change_versions(key, None, VersionAction::Delete).await,
            ("delete", Operation::Update) => self.change_versions(key, Some(parse_versions(req)?), VersionAction::Delete).await,
            ("undelete", Operation::Update) => {
                self.change_versions(key, Some(parse_versions(req)?), VersionAction::Undelete).await
            }
            ("destroy", Operation::Update) => {
                self.change_versions(key, Some(parse_versions(req)?), VersionAction::Destroy).await
            }
            ("metadata", Operation::Read) => self.read_metadata(key).await,
            ("metadata", Operation::Delete) => self.delete_metadata(key).await,
            ("metadata", Operation::List) => {
                let keys = self.view.list(&format!("meta/{key}")).await?;
                if keys.is_empty() {
                    return Ok(None);
                }
                Ok(Some(Response::from_value(json!({ "keys": keys }))))
            }
            ("data" | "delete" | "undelete" | "destroy" | "metadata" | "config", _) => Err(Error::UnsupportedOperation),
            _ => Err(Error::UnsupportedPath),
        }
    }
}
