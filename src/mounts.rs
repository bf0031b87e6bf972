//! The mount tables: which secrets engine serves which path prefix (`core/mounts`), and which
//! auth method serves which path below `auth/` (`core/auth`).
//!
//! Each table is one JSON document behind the barrier. Changes rewrite it whole (it is small)
//! and then rebuild the router, so a reader never sees a half-applied change. Both tables use
//! [`MountEntry`]; an auth entry's `path` is relative to `auth/` (`userpass/`), as Vault lists it.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

pub const MOUNT_TABLE_KEY: &str = "mounts";
pub const AUTH_TABLE_KEY: &str = "auth";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct MountConfig {
    #[serde(default)]
    pub default_lease_ttl: u64,
    #[serde(default)]
    pub max_lease_ttl: u64,
    #[serde(default)]
    pub force_no_cache: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountEntry {
    /// Always ends with `/`.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub description: String,
    pub accessor: String,
    pub uuid: String,
    #[serde(default)]
    pub config: MountConfig,
    #[serde(default)]
    pub options: Option<Map<String, Value>>,
    #[serde(default)]
    pub local: bool,
    #[serde(default)]
    pub seal_wrap: bool,
}

impl MountEntry {
    pub fn new(path: &str, kind: &str, description: &str, options: Option<Map<String, Value>>) -> Self {
        MountEntry {
            path: path.to_string(),
            kind: kind.to_string(),
            description: description.to_string(),
            accessor: format!("{}_{}", kind, random_hex8()),
            uuid: uuid::Uuid::new_v4().to_string(),
            config: MountConfig::default(),
            options,
            local: false,
            seal_wrap: false,
        }
    }

    /// An auth method entry (`sys/auth`): Vault names their accessors `auth_<type>_<hex>`.
    pub fn new_auth(path: &str, kind: &str, description: &str, options: Option<Map<String, Value>>) -> Self {
        let mut e = MountEntry::new(path, kind, description, options);
        e.accessor = format!("auth_{}_{}", kind, random_hex8());
        e
    }

    /// Where an auth method's data lives in the barrier (Vault's `auth/<uuid>/`).
    pub fn auth_storage_prefix(&self) -> String {
        format!("auth/{}/", self.uuid)
    }

    /// The JSON shape of `GET sys/auth` entries: a mount entry whose config names the token
    /// type the method issues.
    pub fn to_api_auth(&self) -> Value {
        let mut v = self.to_api();
        if let Some(c) = v.get_mut("config").and_then(Value::as_object_mut) {
            c.insert("token_type".into(), Value::String("default-service".into()));
        }
        v
    }

    /// KV version of a `kv` mount: "2" when options.version says so.
    pub fn kv_version(&self) -> u8 {
        let v = self.options.as_ref().and_then(|o| o.get("version"));
        match v {
            Some(Value::String(s)) if s == "2" => 2,
            Some(Value::Number(n)) if n.as_u64() == Some(2) => 2,
            _ => 1,
        }
    }

    /// Where this mount's data lives in the barrier: keyed by uuid, so remounting or disabling
    /// and re-enabling at the same path never mixes data.
    pub fn storage_prefix(&self) -> String {
        format!("logical/{}/", self.uuid)
    }

    /// The JSON shape of `GET sys/mounts` entries.
    pub fn to_api(&self) -> Value {
        let mut v = json!({
            "accessor": self.accessor,
            "config": {
                "default_lease_ttl": self.config.default_lease_ttl,
                "force_no_cache": self.config.force_no_cache,
                "max_lease_ttl": self.config.max_lease_ttl,
            },
            "description": self.description,
            "external_entropy_access": false,
            "local": self.local,
            "options": self.options,
            "plugin_version": "",
            "running_plugin_version": format!("v{}+builtin.vaultd", crate::VERSION),
            "running_sha256": "",
            "seal_wrap": self.seal_wrap,
            "type": self.kind,
            "uuid": self.uuid,
        });
        // Vault reports the plugin deprecation status of every pluggable engine, not of the
        // built-in core mounts.
        if !matches!(self.kind.as_str(), "system" | "identity" | "cubbyhole" | "token") {
            if let Value::Object(o) = &mut v {
                o.insert("deprecation_status".into(), Value::String("supported".into()));
            }
        }
        v
    }
}

fn random_hex8() -> String {
    let mut b = [0u8; 4];
    rand::Rng::fill(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}

/// The mounts every initialized server has.
pub fn default_table() -> Vec<MountEntry> {
    let mut sys = MountEntry::new("sys/", "system", "system endpoints used for control, policy and debugging", None);
    sys.seal_wrap = true;
    let mut cubby = MountEntry::new("cubbyhole/", "cubbyhole", "per-token private secret storage", None);
    cubby.local = true;
    let identity = MountEntry::new("identity/", "identity", "identity store", None);
    vec![cubby, identity, sys]
}

/// The auth methods every initialized server has: the token store.
pub fn default_auth_table() -> Vec<MountEntry> {
    vec![MountEntry::new_auth("token/", "token", "token based credentials", None)]
}

/// Paths a user may not mount at, because core routes own them.
const RESERVED: &[&str] = &["sys/", "auth/", "cubbyhole/", "identity/"];

/// Normalises and checks a user-supplied mount path.
pub fn validate_new_path(raw: &str, table: &[MountEntry]) -> Result<String> {
    validate_path(raw, table, RESERVED)
}

/// Normalises and checks a path for a new auth method (relative to `auth/`).
pub fn validate_new_auth_path(raw: &str, table: &[MountEntry]) -> Result<String> {
    validate_path(raw, table, &[])
}

/// Maps the `type` of `POST sys/auth/<path>` to a supported auth method.
pub fn resolve_auth_type(kind: &str) -> Result<String> {
    match kind {
        "userpass" | "approle" => Ok(kind.to_string()),
        "token" => Err(Error::bad_request("token credential backend cannot be instantiated")),
        "" => Err(Error::bad_request("backend type must be specified as a string")),
        other => Err(Error::bad_request(format!("plugin not found in the catalog: {other}"))),
    }
}

fn validate_path(raw: &str, table: &[MountEntry], reserved: &[&str]) -> Result<String> {
    let trimmed = raw.trim_matches('/');
    if trimmed.is_empty() {
        return Err(Error::bad_request("path cannot be empty"));
    }
    if trimmed.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(Error::bad_request(format!("invalid mount path {raw:?}")));
    }
    let path = format!("{trimmed}/");
    for r in reserved {
        if path.starts_with(r) {
            return Err(Error::bad_request(format!("cannot mount '{path}' of type: mount path is reserved")));
        }
    }
    for m in table {
        if path.starts_with(&m.path) || m.path.starts_with(&path) {
            return Err(Error::bad_request(format!("path is already in use at {}", m.path)));
        }
    }
    Ok(path)
}

/// Maps the `type` of a mount request to a supported engine, resolving Vault's aliases.
pub fn resolve_type(kind: &str, options: &mut Option<Map<String, Value>>) -> Result<String> {
    match kind {
        "kv" => Ok("kv".into()),
        "generic" => Ok("kv".into()),
        "kv-v2" => {
            let opts = options.get_or_insert_with(Map::new);
            opts.insert("version".into(), Value::String("2".into()));
            Ok("kv".into())
        }
        "transit" => Ok("transit".into()),
        "" => Err(Error::bad_request("missing required 'type' parameter")),
        other => Err(Error::bad_request(format!("plugin not found in the catalog: {other}"))),
    }
}
