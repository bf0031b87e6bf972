//! The KV secrets engine, versions 1 and 2.
//!
//! Layout inside a mount's view (all behind the barrier):
//! - v1: the secret at its own path.
//! - v2: `meta/<path>` holds the key's metadata (versions, their times, settings) and
//!   `versions/<sha256(path)>/<n>` each version's data; `config` the engine's settings. Hashing
//!   the path keeps version keys short and flat whatever the secret path looks like.
//!
//! A v2 write is one read of the metadata plus one atomic transaction (new version, updated
//! metadata, pruned old versions), so with integrated storage it is exactly one Raft entry. Writes
//! to the same secret are serialised by a striped lock so check-and-set is exact.
//!
//! Request bodies are weakly typed as in Vault (`"3"` is accepted where an integer is expected);
//! anything that cannot be converted is a 400 naming the field.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
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
/// Vault's limits on custom metadata (`kv` plugin, `validateCustomMetadata`).
const MAX_CUSTOM_METADATA_KEYS: usize = 64;
const MAX_CUSTOM_METADATA_KEY_LEN: usize = 128;
const MAX_CUSTOM_METADATA_VALUE_LEN: usize = 512;
/// Keys of a KV v1 mount an in-place upgrade to v2 converts; larger mounts are refused rather
/// than held in memory.
pub const MAX_UPGRADE_KEYS: usize = 100_000;
/// Secrets converted per storage transaction during an upgrade (3 operations each).
const UPGRADE_CHUNK: usize = 64;
/// Written before an upgrade converts anything, removed when the mount is v2: its presence tells
/// a retried upgrade that `meta/` and `versions/` keys are its own earlier output.
const UPGRADE_MARKER: &str = "upgrading-from-v1";

const ROOT_WARNING: &str =
    "Non-listing operations on the root of a K/V v2 mount are not supported.";
const INVALID_PATH_WARNING: &str = "Invalid path for a versioned K/V secrets engine. See the API docs for the appropriate API endpoints to use. If using the Vault CLI, use 'vault kv get' for this operation.";

pub fn now_rfc3339() -> String {
    format_time(OffsetDateTime::now_utc())
}

fn format_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

// ---------------------------------------------------------------------------------------------
// Weakly typed request fields, as Vault's FieldData converts them.

fn field_error(name: &str, msg: impl std::fmt::Display) -> Error {
    Error::bad_request(format!("error converting input for field \"{name}\": {msg}"))
}

fn present<'a>(data: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    data.get(name).filter(|v| !v.is_null())
}

/// An integer field: a JSON number without a fraction, or a string holding one.
pub fn field_int(data: &Map<String, Value>, name: &str) -> Result<Option<i64>> {
    let Some(v) = present(data, name) else { return Ok(None) };
    let parsed = match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| f as i64)
        }),
        Value::String(s) if s.trim().is_empty() => Some(0),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    parsed.map(Some).ok_or_else(|| field_error(name, format!("cannot parse {v} as an integer")))
}

fn field_uint(data: &Map<String, Value>, name: &str) -> Result<Option<u64>> {
    match field_int(data, name)? {
        None => Ok(None),
        Some(n) => u64::try_from(n)
            .map(Some)
            .map_err(|_| field_error(name, format!("cannot provide negative value '{n}'"))),
    }
}

/// A boolean field: a JSON bool, a number (non-zero is true), or Go's `strconv.ParseBool` forms.
fn field_bool(data: &Map<String, Value>, name: &str) -> Result<Option<bool>> {
    let Some(v) = present(data, name) else { return Ok(None) };
    let parsed = match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().map(|f| f != 0.0),
        Value::String(s) if s.is_empty() => Some(false),
        Value::String(s) => match s.as_str() {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
            "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
            _ => None,
        },
        _ => None,
    };
    parsed.map(Some).ok_or_else(|| field_error(name, format!("cannot parse {v} as a boolean")))
}

/// A duration field in whole seconds: a number of seconds, or a string holding seconds or a Go
/// duration (`"1h30m"`). Negative values are returned as such; callers decide if they mean
/// something.
pub fn field_duration_secs(data: &Map<String, Value>, name: &str) -> Result<Option<i64>> {
    let Some(v) = present(data, name) else { return Ok(None) };
    match v {
        Value::Number(_) => field_int(data, name),
        Value::String(s) => parse_signed_duration(s).map(Some).map_err(|e| field_error(name, e)),
        other => Err(field_error(name, format!("cannot parse {other} as a duration"))),
    }
}

/// Go's `time.ParseDuration` (and Vault's plain seconds), allowing a leading minus, truncated to
/// whole seconds.
pub fn parse_signed_duration(s: &str) -> std::result::Result<i64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(0);
    }
    let (neg, abs) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    let d = crate::config::parse_duration(abs)
        .map_err(|_| format!("time: invalid duration \"{s}\""))?;
    let secs = i64::try_from(d.as_secs()).map_err(|_| format!("time: invalid duration \"{s}\""))?;
    Ok(if neg { -secs } else { secs })
}

/// Go's `time.Duration.String()` for whole seconds, negative included (`-1s`, `1h30m0s`).
pub fn format_duration_secs(secs: i64) -> String {
    let abs =
        crate::config::format_duration_go(std::time::Duration::from_secs(secs.unsigned_abs()));
    if secs < 0 {
        format!("-{abs}")
    } else {
        abs
    }
}

fn field_object(data: &Map<String, Value>, name: &str) -> Result<Option<Map<String, Value>>> {
    match present(data, name) {
        None => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(other) => {
            Err(field_error(name, format!("expected a JSON object, got {}", type_name(other))))
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `custom_metadata`: string values (numbers and booleans are converted, as Vault does), within
/// Vault's limits. `null` values are kept as `None` for merge patches to delete.
fn field_custom_metadata(
    data: &Map<String, Value>,
    name: &str,
) -> Result<Option<BTreeMap<String, Option<String>>>> {
    let Some(obj) = field_object(data, name)? else { return Ok(None) };
    if obj.len() > MAX_CUSTOM_METADATA_KEYS {
        return Err(Error::bad_request(format!(
            "custom_metadata may not have more than {MAX_CUSTOM_METADATA_KEYS} keys"
        )));
    }
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        if k.is_empty() || k.len() > MAX_CUSTOM_METADATA_KEY_LEN {
            return Err(Error::bad_request(format!(
                "custom_metadata key {k:?} must be between 1 and {MAX_CUSTOM_METADATA_KEY_LEN} bytes"
            )));
        }
        let s = match v {
            Value::Null => None,
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                return Err(field_error(
                    name,
                    format!("value of {k:?} must be a string, got {}", type_name(&other)),
                ))
            }
        };
        if s.as_ref().is_some_and(|s| s.len() > MAX_CUSTOM_METADATA_VALUE_LEN) {
            return Err(Error::bad_request(format!(
                "custom_metadata value of {k:?} is longer than {MAX_CUSTOM_METADATA_VALUE_LEN} bytes"
            )));
        }
        out.insert(k, s);
    }
    Ok(Some(out))
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` removes a key, anything else
/// replaces. Depth is bounded by serde_json's parse recursion limit.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
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
            Operation::Read if path.is_empty() => Ok(None),
            _ if path.is_empty() => Err(Error::UnsupportedPath),
            Operation::Read => match self.view.get(path).await? {
                None => Ok(None),
                Some(bytes) => {
                    let data: Map<String, Value> = serde_json::from_slice(&bytes)
                        .map_err(|e| Error::internal(format!("corrupt secret: {e}")))?;
                    Ok(Some(Response::data(data)))
                }
            },
            Operation::Update => {
                if req.data.is_empty() {
                    return Err(Error::bad_request("missing data fields"));
                }
                self.view.put(path, &serde_json::to_vec(&req.data)?).await?;
                Ok(Some(Response::default()))
            }
            // KV v1 has no patch operation in Vault either.
            Operation::Patch => Err(Error::UnsupportedOperation),
            Operation::Delete => {
                self.view.delete(path).await?;
                Ok(Some(Response::default()))
            }
        }
    }

    async fn existence_check(&self, req: &Request, path: &str) -> Result<Option<bool>> {
        if req.op != Operation::Update || path.is_empty() || path.ends_with('/') {
            return Ok(None);
        }
        Ok(Some(self.view.get(path).await?.is_some()))
    }
}

// ---------------------------------------------------------------------------------------------
// KV v2

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct VersionMeta {
    created_time: String,
    /// When the version is (or was) deleted; a future time means "scheduled" by
    /// `delete_version_after`, and the version still reads until then.
    #[serde(default)]
    deletion_time: String,
    #[serde(default)]
    destroyed: bool,
}

impl VersionMeta {
    fn deleted_at(&self, now: OffsetDateTime) -> bool {
        if self.deletion_time.is_empty() {
            return false;
        }
        // An unparsable time was written by a bug: fail closed, the version reads as deleted.
        parse_time(&self.deletion_time).is_none_or(|t| t <= now)
    }

    fn readable_at(&self, now: OffsetDateTime) -> bool {
        !self.destroyed && !self.deleted_at(now)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct KeyMeta {
    created_time: String,
    updated_time: String,
    current_version: u64,
    /// 0 until old versions are pruned, as in Vault.
    oldest_version: u64,
    #[serde(default)]
    max_versions: u64,
    #[serde(default)]
    cas_required: bool,
    /// Seconds; 0 means the engine's setting.
    #[serde(default)]
    delete_version_after: i64,
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
    /// Seconds; 0 means none, negative disables the keys' own settings too.
    #[serde(default)]
    delete_version_after: i64,
}

/// What a read of one version found.
enum VersionRead {
    /// No such key, version or data.
    Missing,
    /// Soft-deleted or destroyed: only its metadata is shown (with a 404).
    Deleted(Value),
    Live(Map<String, Value>, Value),
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
        KvV2 {
            view,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            config: std::sync::RwLock::new(None),
        }
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

    /// The version a read names: `?version=N`, where 0 (or less, or absent) is the latest.
    fn requested_version(req: &Request, meta: &KeyMeta) -> Result<u64> {
        let v = field_int(&req.data, "version")?.unwrap_or(0);
        Ok(if v <= 0 { meta.current_version } else { v as u64 })
    }

    /// The version a read (`data/`, `subkeys/`) names, with its metadata JSON, and its data
    /// unless it is deleted or destroyed.
    async fn read_version(&self, req: &Request, key: &str) -> Result<VersionRead> {
        let Some(meta) = self.meta(key).await? else { return Ok(VersionRead::Missing) };
        let version = Self::requested_version(req, &meta)?;
        let Some(vm) = meta.versions.get(&version) else { return Ok(VersionRead::Missing) };
        let metadata = Self::version_json(version, vm, &meta);
        if !vm.readable_at(OffsetDateTime::now_utc()) {
            return Ok(VersionRead::Deleted(metadata));
        }
        let data: Option<VersionData> =
            self.view.get_json(&Self::version_key(key, version)).await?;
        Ok(match data {
            Some(d) => VersionRead::Live(d.data, metadata),
            None => VersionRead::Missing,
        })
    }

    async fn read_data(&self, req: &Request, key: &str) -> Result<Option<Response>> {
        Ok(match self.read_version(req, key).await? {
            VersionRead::Missing => None,
            // Vault answers 404 but still shows the version's metadata.
            VersionRead::Deleted(metadata) => Some(
                Response::from_value(json!({ "data": null, "metadata": metadata }))
                    .with_status(404),
            ),
            VersionRead::Live(data, metadata) => {
                Some(Response::from_value(json!({ "data": data, "metadata": metadata })))
            }
        })
    }

    /// `subkeys/<path>`: the secret's key structure without its values.
    async fn read_subkeys(&self, req: &Request, key: &str) -> Result<Option<Response>> {
        let depth = field_int(&req.data, "depth")?.unwrap_or(0);
        if depth < 0 {
            return Err(field_error("depth", format!("cannot provide negative value '{depth}'")));
        }
        Ok(match self.read_version(req, key).await? {
            VersionRead::Missing => None,
            VersionRead::Deleted(metadata) => Some(
                Response::from_value(json!({ "subkeys": null, "metadata": metadata }))
                    .with_status(404),
            ),
            VersionRead::Live(data, metadata) => {
                let subkeys = subkeys(&data, depth as u64, 1);
                Some(Response::from_value(json!({ "subkeys": subkeys, "metadata": metadata })))
            }
        })
    }

    fn parse_cas(req: &Request) -> Result<Option<u64>> {
        let options = field_object(&req.data, "options")?;
        match options.as_ref().and_then(|o| o.get("cas")) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| Error::bad_request("error parsing check-and-set parameter")),
            Some(Value::String(s)) => s
                .parse()
                .map(Some)
                .map_err(|_| Error::bad_request("error parsing check-and-set parameter")),
            Some(_) => Err(Error::bad_request("error parsing check-and-set parameter")),
        }
    }

    fn check_cas(config: &EngineConfig, meta: &KeyMeta, cas: Option<u64>) -> Result<()> {
        match cas {
            None if config.cas_required || meta.cas_required => {
                Err(Error::bad_request("check-and-set parameter required for this call"))
            }
            Some(cas) if cas != meta.current_version => {
                Err(Error::bad_request("check-and-set parameter did not match the current version"))
            }
            _ => Ok(()),
        }
    }

    async fn write_data(&self, req: &Request, key: &str) -> Result<Option<Response>> {
        let data = match field_object(&req.data, "data")? {
            Some(m) => m,
            None => return Err(Error::bad_request("no data provided")),
        };
        let cas = Self::parse_cas(req)?;
        let config = self.config().await?;
        let _guard = self.stripe(key).lock().await;
        let meta = self.meta(key).await?.unwrap_or_default();
        Self::check_cas(&config, &meta, cas)?;
        self.commit_version(key, meta, data, &config).await
    }

    /// `PATCH data/<path>`: a JSON merge patch of the latest version becomes a new version.
    async fn patch_data(&self, req: &Request, key: &str) -> Result<Option<Response>> {
        let patch = match present(&req.data, "data") {
            Some(Value::Object(m)) => Value::Object(m.clone()),
            Some(other) => {
                return Err(field_error(
                    "data",
                    format!("expected a JSON object, got {}", type_name(other)),
                ))
            }
            None => return Err(Error::bad_request("no data provided")),
        };
        let cas = Self::parse_cas(req)?;
        let config = self.config().await?;
        let _guard = self.stripe(key).lock().await;
        let Some(meta) = self.meta(key).await? else {
            return Ok(Some(Response::default().with_status(404)));
        };
        let current = meta.current_version;
        let Some(vm) = meta.versions.get(&current) else {
            return Ok(Some(Response::default().with_status(404)));
        };
        if !vm.readable_at(OffsetDateTime::now_utc()) {
            // As Vault: 404 with the latest version's metadata.
            return Ok(Some(
                Response::from_value(Self::version_json(current, vm, &meta)).with_status(404),
            ));
        }
        Self::check_cas(&config, &meta, cas)?;
        let existing: Option<VersionData> =
            self.view.get_json(&Self::version_key(key, current)).await?;
        let Some(existing) = existing else {
            return Ok(Some(Response::default().with_status(404)));
        };
        let mut merged = Value::Object(existing.data);
        merge_patch(&mut merged, &patch);
        let Value::Object(merged) = merged else {
            return Err(Error::internal("merge patch of an object produced a non-object"));
        };
        self.commit_version(key, meta, merged, &config).await
    }

    /// Appends a version, prunes versions past `max_versions`, and writes both in one
    /// transaction. The caller holds the key's stripe lock and has checked CAS.
    async fn commit_version(
        &self,
        key: &str,
        mut meta: KeyMeta,
        data: Map<String, Value>,
        config: &EngineConfig,
    ) -> Result<Option<Response>> {
        let now = OffsetDateTime::now_utc();
        let now_s = format_time(now);
        if meta.created_time.is_empty() {
            meta.created_time = now_s.clone();
        }
        meta.updated_time = now_s.clone();
        let version = meta.current_version + 1;
        meta.current_version = version;
        let deletion_time =
            effective_delete_after(meta.delete_version_after, config.delete_version_after)
                .map(|secs| format_time(now + time::Duration::seconds(secs)))
                .unwrap_or_default();
        let vm = VersionMeta { created_time: now_s, deletion_time, destroyed: false };
        meta.versions.insert(version, vm.clone());

        let mut ops = vec![ViewOp::Put(
            Self::version_key(key, version),
            serde_json::to_vec(&VersionData { data })?,
        )];
        // Vault prunes by version number: everything at or below `current - max` goes.
        let max = effective_max_versions(meta.max_versions, config.max_versions);
        if version > max {
            let cut = version - max;
            let doomed: Vec<u64> = meta.versions.range(..=cut).map(|(v, _)| *v).collect();
            for v in doomed {
                meta.versions.remove(&v);
                ops.push(ViewOp::Delete(Self::version_key(key, v)));
            }
            meta.oldest_version = cut + 1;
        }
        ops.push(ViewOp::Put(format!("meta/{key}"), serde_json::to_vec(&meta)?));
        self.view.transaction(ops).await?;
        Ok(Some(Response::from_value(Self::version_json(version, &vm, &meta))))
    }

    /// Soft-deletes (`delete`), restores (`undelete`) or destroys versions. `None` versions
    /// means the latest one (DELETE on `data/`).
    async fn change_versions(
        &self,
        key: &str,
        versions: Option<Vec<u64>>,
        action: VersionAction,
    ) -> Result<Option<Response>> {
        let config = self.config().await?;
        let _guard = self.stripe(key).lock().await;
        let Some(mut meta) = self.meta(key).await? else {
            return Ok(Some(Response::default()));
        };
        let versions = versions.unwrap_or_else(|| vec![meta.current_version]);
        let now = OffsetDateTime::now_utc();
        let dva = effective_delete_after(meta.delete_version_after, config.delete_version_after);
        let mut ops = Vec::new();
        let mut changed = false;
        for v in versions {
            let Some(vm) = meta.versions.get_mut(&v) else { continue };
            match action {
                VersionAction::Delete => {
                    if !vm.destroyed && !vm.deleted_at(now) {
                        vm.deletion_time = format_time(now);
                        changed = true;
                    }
                }
                VersionAction::Undelete => {
                    if !vm.destroyed && vm.deleted_at(now) {
                        // Vault re-arms delete_version_after from now.
                        vm.deletion_time = dva
                            .map(|s| format_time(now + time::Duration::seconds(s)))
                            .unwrap_or_default();
                        changed = true;
                    }
                }
                VersionAction::Destroy => {
                    if !vm.destroyed {
                        vm.destroyed = true;
                        ops.push(ViewOp::Delete(Self::version_key(key, v)));
                        changed = true;
                    }
                }
            }
        }
        if changed {
            ops.push(ViewOp::Put(format!("meta/{key}"), serde_json::to_vec(&meta)?));
            self.view.transaction(ops).await?;
        }
        Ok(Some(Response::default()))
    }

    fn metadata_json(meta: &KeyMeta) -> Value {
        let versions: Map<String, Value> = meta
            .versions
            .iter()
            .map(|(v, vm)| {
                (v.to_string(), json!({"created_time": vm.created_time, "deletion_time": vm.deletion_time, "destroyed": vm.destroyed}))
            })
            .collect();
        json!({
            "cas_required": meta.cas_required,
            "created_time": meta.created_time,
            "current_version": meta.current_version,
            "custom_metadata": meta.custom_metadata,
            "delete_version_after": format_duration_secs(meta.delete_version_after),
            "max_versions": meta.max_versions,
            "oldest_version": meta.oldest_version,
            "updated_time": meta.updated_time,
            "versions": versions,
        })
    }

    async fn read_metadata(&self, key: &str) -> Result<Option<Response>> {
        let Some(meta) = self.meta(key).await? else { return Ok(None) };
        Ok(Some(Response::from_value(Self::metadata_json(&meta))))
    }

    /// `POST metadata/<path>` (replace the given settings) and `PATCH` (merge them; a `null` in
    /// `custom_metadata` removes that key). PATCH needs the key to exist.
    async fn write_metadata(
        &self,
        req: &Request,
        key: &str,
        patch: bool,
    ) -> Result<Option<Response>> {
        let max_versions = field_uint(&req.data, "max_versions")?;
        let cas_required = field_bool(&req.data, "cas_required")?;
        let dva = field_duration_secs(&req.data, "delete_version_after")?;
        if let Some(d) = dva.filter(|d| *d < 0) {
            return Err(field_error(
                "delete_version_after",
                format!("cannot provide negative value '{d}'"),
            ));
        }
        let custom = field_custom_metadata(&req.data, "custom_metadata")?;
        let _guard = self.stripe(key).lock().await;
        let existing = self.meta(key).await?;
        if patch && existing.is_none() {
            return Ok(Some(Response::default().with_status(404)));
        }
        let now = now_rfc3339();
        let mut meta =
            existing.unwrap_or_else(|| KeyMeta { created_time: now.clone(), ..Default::default() });
        if let Some(v) = max_versions {
            meta.max_versions = v;
        }
        if let Some(v) = cas_required {
            meta.cas_required = v;
        }
        if let Some(v) = dva {
            meta.delete_version_after = v;
        }
        if let Some(custom) = custom {
            let mut merged = if patch {
                meta.custom_metadata.take().unwrap_or_default()
            } else {
                BTreeMap::new()
            };
            for (k, v) in custom {
                match v {
                    Some(v) => {
                        merged.insert(k, v);
                    }
                    None => {
                        merged.remove(&k);
                    }
                }
            }
            if merged.len() > MAX_CUSTOM_METADATA_KEYS {
                return Err(Error::bad_request(format!(
                    "custom_metadata may not have more than {MAX_CUSTOM_METADATA_KEYS} keys"
                )));
            }
            meta.custom_metadata = Some(merged);
        }
        meta.updated_time = now;
        self.view.put_json(&format!("meta/{key}"), &meta).await?;
        Ok(Some(Response::default()))
    }

    async fn delete_metadata(&self, key: &str) -> Result<Option<Response>> {
        let _guard = self.stripe(key).lock().await;
        let Some(meta) = self.meta(key).await? else { return Ok(Some(Response::default())) };
        let mut ops: Vec<ViewOp> =
            meta.versions.keys().map(|v| ViewOp::Delete(Self::version_key(key, *v))).collect();
        ops.push(ViewOp::Delete(format!("meta/{key}")));
        self.view.transaction(ops).await?;
        Ok(Some(Response::default()))
    }

    async fn list_metadata(&self, key: &str, detailed: bool) -> Result<Option<Response>> {
        let keys = self.view.list(&format!("meta/{key}")).await?;
        if keys.is_empty() {
            return Ok(None);
        }
        if !detailed {
            return Ok(Some(Response::from_value(json!({ "keys": keys }))));
        }
        // One metadata read per listed secret: bounded by the listing itself.
        let mut info = Map::new();
        for k in keys.iter().filter(|k| !k.ends_with('/')) {
            if let Some(meta) = self.meta(&format!("{key}{k}")).await? {
                info.insert(k.clone(), Self::metadata_json(&meta));
            }
        }
        Ok(Some(Response::from_value(json!({ "keys": keys, "key_info": info }))))
    }

    async fn read_config(&self) -> Result<Option<Response>> {
        let c = self.config().await?;
        Ok(Some(Response::from_value(json!({
            "cas_required": c.cas_required,
            "delete_version_after": format_duration_secs(c.delete_version_after),
            "max_versions": c.max_versions,
        }))))
    }

    async fn write_config(&self, req: &Request) -> Result<Option<Response>> {
        let max_versions = field_uint(&req.data, "max_versions")?;
        let cas_required = field_bool(&req.data, "cas_required")?;
        let dva = field_duration_secs(&req.data, "delete_version_after")?;
        let mut c = self.config().await?;
        if let Some(v) = max_versions {
            c.max_versions = v;
        }
        if let Some(v) = cas_required {
            c.cas_required = v;
        }
        if let Some(v) = dva {
            c.delete_version_after = v;
        }
        self.view.put_json("config", &c).await?;
        if let Ok(mut slot) = self.config.write() {
            *slot = Some(c);
        }
        Ok(Some(Response::default()))
    }
}

/// `{data...}` with every leaf replaced by null, cut off below `max_depth` (0: no limit).
fn subkeys(data: &Map<String, Value>, max_depth: u64, depth: u64) -> Value {
    let mut out = Map::new();
    for (k, v) in data {
        let child = match v {
            Value::Object(m) if max_depth == 0 || depth < max_depth => {
                subkeys(m, max_depth, depth + 1)
            }
            _ => Value::Null,
        };
        out.insert(k.clone(), child);
    }
    Value::Object(out)
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

/// Seconds after creation at which a new version is deleted: the shorter of the key's and the
/// engine's setting, none if neither is set, and none at all when the engine's is negative.
fn effective_delete_after(key: i64, engine: i64) -> Option<i64> {
    if engine < 0 {
        return None;
    }
    match (key > 0, engine > 0) {
        (true, true) => Some(key.min(engine)),
        (true, false) => Some(key),
        (false, true) => Some(engine),
        (false, false) => None,
    }
}

fn parse_versions(req: &Request) -> Result<Vec<u64>> {
    let raw = present(&req.data, "versions")
        .ok_or_else(|| Error::bad_request("No version number provided"))?;
    let one = |v: &Value| match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    let list: Vec<u64> = match raw {
        Value::Array(items) => items.iter().map(one).collect::<Option<Vec<_>>>(),
        Value::String(s) => s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| p.trim().parse().ok())
            .collect::<Option<Vec<_>>>(),
        other => one(other).map(|v| vec![v]),
    }
    .ok_or_else(|| field_error("versions", "versions must be a list of non-negative integers"))?;
    if list.is_empty() {
        return Err(Error::bad_request("No version number provided"));
    }
    if list.len() > MAX_VERSIONS_PER_CALL {
        return Err(Error::bad_request(format!(
            "at most {MAX_VERSIONS_PER_CALL} versions per request"
        )));
    }
    Ok(list)
}

fn warning_404(warning: &str) -> Option<Response> {
    Some(Response { warnings: vec![warning.to_string()], ..Default::default() }.with_status(404))
}

#[async_trait]
impl LogicalBackend for KvV2 {
    async fn handle(&self, req: &Request, path: &str) -> Result<Option<Response>> {
        let (section, key) = match path.split_once('/') {
            Some((s, k)) => (s, k),
            None => (path, ""),
        };
        match (section, req.op) {
            ("config", Operation::Read) if key.is_empty() => self.read_config().await,
            ("config", Operation::Update) if key.is_empty() => self.write_config(req).await,
            ("config", _) if key.is_empty() => Err(Error::UnsupportedOperation),
            // `secret/data` without a slash: Vault's hint that the mount root takes only LIST.
            ("data" | "metadata" | "delete" | "undelete" | "destroy", _)
                if !path.contains('/') && req.op != Operation::List =>
            {
                Ok(warning_404(ROOT_WARNING))
            }
            ("metadata", Operation::List) => self.list_metadata(key, false).await,
            ("detailed-metadata", Operation::List) => self.list_metadata(key, true).await,
            ("data" | "metadata" | "subkeys", Operation::Read) if key.is_empty() => Ok(None),
            ("data" | "delete" | "undelete" | "destroy" | "metadata" | "subkeys", _)
                if key.is_empty() =>
            {
                Err(Error::UnsupportedOperation)
            }
            ("data", Operation::Read) => self.read_data(req, key).await,
            ("data", Operation::Update) => self.write_data(req, key).await,
            ("data", Operation::Patch) => self.patch_data(req, key).await,
            ("data", Operation::Delete) => {
                self.change_versions(key, None, VersionAction::Delete).await
            }
            ("subkeys", Operation::Read) => self.read_subkeys(req, key).await,
            ("delete", Operation::Update) => {
                self.change_versions(key, Some(parse_versions(req)?), VersionAction::Delete).await
            }
            ("undelete", Operation::Update) => {
                self.change_versions(key, Some(parse_versions(req)?), VersionAction::Undelete).await
            }
            ("destroy", Operation::Update) => {
                self.change_versions(key, Some(parse_versions(req)?), VersionAction::Destroy).await
            }
            ("metadata", Operation::Read) => self.read_metadata(key).await,
            ("metadata", Operation::Update) => self.write_metadata(req, key, false).await,
            ("metadata", Operation::Patch) => self.write_metadata(req, key, true).await,
            ("metadata", Operation::Delete) => self.delete_metadata(key).await,
            ("data" | "delete" | "undelete" | "destroy" | "detailed-metadata" | "subkeys", _)
                if path.contains('/') =>
            {
                Err(Error::UnsupportedOperation)
            }
            _ => Ok(warning_404(INVALID_PATH_WARNING)),
        }
    }

    /// A write to `data/<path>` or `metadata/<path>` creates when the key has no metadata yet,
    /// so policies can grant `create` without `update`, as in Vault.
    async fn existence_check(&self, req: &Request, path: &str) -> Result<Option<bool>> {
        if req.op != Operation::Update {
            return Ok(None);
        }
        match path.split_once('/') {
            Some(("data" | "metadata", key)) if !key.is_empty() && !key.ends_with('/') => {
                Ok(Some(self.meta(key).await?.is_some()))
            }
            _ => Ok(None),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Upgrade of a KV v1 mount to v2 in place (`sys/mounts/<path>/tune` with `options.version=2`).

/// Converts every v1 secret in `view` into version 1 of a v2 key, as Vault's upgrade does.
/// Returns how many secrets were converted.
///
/// Runs before the mount table says v2 (the caller switches it afterwards), in transactions of
/// [`UPGRADE_CHUNK`] secrets, each deleting the v1 entries it converted. A crash part-way leaves a
/// v1 mount with some secrets already converted and the marker in place; running the upgrade
/// again finishes it, because the marker says the v2-layout keys it finds are its own. Secrets
/// written to the v1 mount while the upgrade runs may be left behind, as in Vault, where the
/// mount is unavailable during the upgrade.
pub async fn upgrade_v1_to_v2(view: &View) -> Result<usize> {
    let resuming = view.get(UPGRADE_MARKER).await?.is_some();
    let all = view.list_recursive("", MAX_UPGRADE_KEYS).await.map_err(|e| match e {
        // list_recursive's only Internal error is its limit.
        Error::Internal(m) if m.starts_with("more than") => Error::bad_request(format!(
            "cannot upgrade this mount in place: it holds more than {MAX_UPGRADE_KEYS} secrets"
        )),
        other => other,
    })?;
    let owned_by_v2 = |k: &str| {
        k.starts_with("meta/") || k.starts_with("versions/") || k == "config" || k == UPGRADE_MARKER
    };
    let mut keys = Vec::new();
    for k in all {
        if owned_by_v2(&k) {
            if resuming {
                continue;
            }
            // A v1 secret whose name is a v2 storage key cannot be converted without ambiguity.
            return Err(Error::bad_request(format!(
                "cannot upgrade this mount in place: the secret {k:?} collides with KV v2's storage layout; move it first"
            )));
        }
        keys.push(k);
    }
    if !resuming {
        view.put(UPGRADE_MARKER, b"1").await?;
    }
    let targets: BTreeSet<String> = keys.iter().map(|k| format!("meta/{k}")).collect();
    let now = now_rfc3339();
    let mut converted = 0;
    for chunk in keys.chunks(UPGRADE_CHUNK) {
        let mut ops = Vec::with_capacity(chunk.len() * 3);
        for k in chunk {
            let Some(bytes) = view.get(k).await? else { continue };
            let data: Map<String, Value> = match serde_json::from_slice(&bytes) {
                Ok(Value::Object(m)) => m,
                Ok(other) => {
                    let mut m = Map::new();
                    m.insert("value".into(), other);
                    m
                }
                Err(e) => return Err(Error::internal(format!("corrupt v1 secret {k:?}: {e}"))),
            };
            let vm = VersionMeta { created_time: now.clone(), ..Default::default() };
            let meta = KeyMeta {
                created_time: now.clone(),
                updated_time: now.clone(),
                current_version: 1,
                // What Vault's upgrade records.
                oldest_version: 1,
                versions: BTreeMap::from([(1, vm)]),
                ..Default::default()
            };
            if !targets.contains(k) {
                ops.push(ViewOp::Delete(k.clone()));
            }
            ops.push(ViewOp::Put(
                KvV2::version_key(k, 1),
                serde_json::to_vec(&VersionData { data })?,
            ));
            ops.push(ViewOp::Put(format!("meta/{k}"), serde_json::to_vec(&meta)?));
            converted += 1;
        }
        if !ops.is_empty() {
            view.transaction(ops).await?;
        }
    }
    Ok(converted)
}

/// Removes the upgrade marker once the mount table says v2.
pub async fn finish_upgrade(view: &View) -> Result<()> {
    view.delete(UPGRADE_MARKER).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
        let mut t = json!({"a": [1]});
        merge_patch(&mut t, &json!({"a": {"b": 1}, "n": null}));
        assert_eq!(t, json!({"a": {"b": 1}}));
        let mut t = json!({"a": 1});
        merge_patch(&mut t, &json!({"b": {"c": null}}));
        assert_eq!(t, json!({"a": 1, "b": {}}));
    }

    #[test]
    fn subkeys_replace_leaves_and_honour_depth() {
        let d = json!({"a": 1, "b": {"c": {"d": 2}}, "e": [1]});
        let Value::Object(m) = d else { unreachable!() };
        assert_eq!(subkeys(&m, 0, 1), json!({"a": null, "b": {"c": {"d": null}}, "e": null}));
        assert_eq!(subkeys(&m, 1, 1), json!({"a": null, "b": null, "e": null}));
        assert_eq!(subkeys(&m, 2, 1), json!({"a": null, "b": {"c": null}, "e": null}));
    }

    #[test]
    fn durations_parse_and_print_like_go() {
        assert_eq!(parse_signed_duration("1h30m"), Ok(5400));
        assert_eq!(parse_signed_duration("90"), Ok(90));
        assert_eq!(parse_signed_duration("-1s"), Ok(-1));
        assert!(parse_signed_duration("bogus").is_err());
        assert_eq!(format_duration_secs(5400), "1h30m0s");
        assert_eq!(format_duration_secs(0), "0s");
        assert_eq!(format_duration_secs(-1), "-1s");
        assert_eq!(format_duration_secs(60), "1m0s");
    }

    #[test]
    fn delete_version_after_takes_the_shorter_and_negative_engine_disables() {
        assert_eq!(effective_delete_after(0, 0), None);
        assert_eq!(effective_delete_after(10, 0), Some(10));
        assert_eq!(effective_delete_after(0, 20), Some(20));
        assert_eq!(effective_delete_after(30, 20), Some(20));
        assert_eq!(effective_delete_after(30, -1), None);
    }

    #[test]
    fn weak_fields_convert_like_vault() {
        let m: Map<String, Value> =
            serde_json::from_value(json!({"a": "3", "b": 4, "c": "x", "d": "true", "e": "1h"}))
                .unwrap();
        assert_eq!(field_int(&m, "a").unwrap(), Some(3));
        assert_eq!(field_int(&m, "b").unwrap(), Some(4));
        assert!(field_int(&m, "c").is_err());
        assert_eq!(field_bool(&m, "d").unwrap(), Some(true));
        assert!(field_bool(&m, "c").is_err());
        assert_eq!(field_duration_secs(&m, "e").unwrap(), Some(3600));
        assert_eq!(field_duration_secs(&m, "b").unwrap(), Some(4));
        assert_eq!(field_int(&m, "missing").unwrap(), None);
    }
}
