//! Server configuration, read from the same HCL and JSON files HashiCorp Vault and OpenBao read.
//!
//! vaultd is a drop-in replacement, so this module accepts Vault's file format as it is, not a
//! cleaned-up variant of it:
//!
//! - **HCL or JSON.** Files ending in `.json` (or whose first character is `{`, which Vault also
//!   sniffs) are JSON; everything else is HCL. Vault parses with HCL 1, whose syntax is looser than
//!   HCL 2 (quoted attribute names, commas or bare spaces between attributes of a one-line block,
//!   an attribute assigned twice). When hcl-rs rejects a file, a small length-preserving rewrite of
//!   those HCL 1 forms is tried before the parse error is reported, so line numbers stay right.
//! - **One or many.** A stanza such as `listener "tcp" {}` or `retry_join {}` may appear once or
//!   several times, and JSON spells the same thing as an object, an array of objects, or an object
//!   of arrays. hcl-rs's serde path turns one block into an object and two into an array, so this
//!   module does not deserialize into structs: it converts both syntaxes into one ordered tree
//!   (`Val`), where every stanza shape becomes "a list of bodies", and reads typed values from it.
//! - **Loose scalars.** Vault parses most booleans, integers and durations "weakly":
//!   `tls_disable = "1"`, `tls_disable = 1` and `tls_disable = true` are all the same, and a
//!   duration may be `"768h"`, `"30d"`, `"90"` or `90`. The same rules apply here.
//! - **Unknown keys are warnings, not errors.** Vault logs "unknown or unsupported field ... found
//!   in configuration" and starts anyway; operators' files carry keys for other Vault versions,
//!   Enterprise or plugins, and refusing them would break the drop-in promise. Keys Vault knows but
//!   vaultd does not implement (telemetry, seal, ...) are also warnings, with a message saying so.
//! - **Errors name the file, the key and the problem**, e.g.
//!   `config.hcl: listener.0.address: invalid address "abc": missing port in address`.
//!
//! Loading is three steps so that each can be tested without the process environment:
//! [`load`] (files, per-file validation, merge), [`Config::apply_env`] (the `BAO_*` / `VAULT_*`
//! variables that take precedence over files), and [`Config::validate_for_server`] (rules that only
//! hold for a real server, e.g. raft needs `cluster_addr`; dev mode skips it). [`load_for_server`]
//! runs all three.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hcl::edit::expr::{Expression, ObjectKey, UnaryOperator};
use hcl::edit::structure::{BlockLabel, Body, Structure};
use hcl::edit::template::{Element, Template};
use hcl::edit::Span;

/// Listener address when a `listener "tcp"` stanza has none (Vault's default).
pub const DEFAULT_LISTEN_ADDRESS: &str = "127.0.0.1:8200";
/// Request body limit when `max_request_size` is unset or 0 (Vault: 32 MiB).
pub const DEFAULT_MAX_REQUEST_SIZE: u64 = 32 * 1024 * 1024;
/// Request time limit when neither the listener nor `default_max_request_duration` sets one.
pub const DEFAULT_MAX_REQUEST_DURATION: Duration = Duration::from_secs(90);
/// Vault's system default for `default_lease_ttl` and `max_lease_ttl` (32 days).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(768 * 3600);
/// Storage types a vaultd server can run on; others parse (for the banner) but fail validation.
pub const SUPPORTED_STORAGE_TYPES: &[&str] = &["raft", "inmem", "file", "etcd"];
/// `ha_storage` types a vaultd server can run with (beside any supported `storage`).
pub const SUPPORTED_HA_STORAGE_TYPES: &[&str] = &["etcd"];

/// Everything that can go wrong while loading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A configuration file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The paths given contained no `*.hcl` or `*.json` file.
    #[error(
        "no configuration files found in {0} (directories are searched for *.hcl and *.json files)"
    )]
    NoFiles(String),
    /// The HCL or JSON parser rejected a file.
    #[error("{file}: syntax error{}: {message}", position_suffix(.line, .column))]
    Syntax { file: String, line: Option<usize>, column: Option<usize>, message: String },
    /// A value is wrong, missing or conflicts with another one. `file` may also name an
    /// environment variable or "dev mode", whichever supplied the value.
    #[error("{file}: {key}: {message}")]
    Invalid { file: String, key: String, message: String },
}

fn position_suffix(line: &Option<usize>, column: &Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

fn invalid(file: &str, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { file: file.to_string(), key: key.into(), message: message.into() }
}

/// The merged server configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// `storage "<type>" {}`, or the legacy `backend "<type>" {}`.
    pub storage: Option<Storage>,
    /// `ha_storage` / legacy `ha_backend`: where the active-node lock lives when it is not the
    /// data store (split mode). Only `etcd` is accepted (validation says why for others).
    pub ha_storage: Option<Storage>,
    pub listeners: Vec<Listener>,
    /// URL advertised to clients and peers. Env `BAO_API_ADDR`/`VAULT_API_ADDR` wins.
    pub api_addr: Option<String>,
    /// URL advertised for cluster traffic. Always stored with the `https` scheme, because the
    /// cluster port is always TLS (Vault rewrites it the same way).
    pub cluster_addr: Option<String>,
    pub cluster_name: Option<String>,
    pub disable_mlock: bool,
    pub disable_clustering: bool,
    /// Normalised to one of `trace`, `debug`, `info`, `warn`, `error`.
    pub log_level: Option<String>,
    pub ui: bool,
    /// `None` means Vault's default, [`DEFAULT_LEASE_TTL`].
    pub default_lease_ttl: Option<Duration>,
    /// `None` means Vault's default, [`DEFAULT_LEASE_TTL`].
    pub max_lease_ttl: Option<Duration>,
    /// Fallback for listeners without `max_request_duration`; already applied to `listeners`.
    pub default_max_request_duration: Option<Duration>,
    pub disable_performance_standby: bool,
    pub disable_standby_reads: bool,
    pub enable_response_header_hostname: bool,
    pub enable_response_header_raft_node_id: bool,
    /// Unknown or ignored keys and other non-fatal findings, each naming file and key.
    pub warnings: Vec<String>,
    /// The files read, in the order they were merged.
    pub files: Vec<PathBuf>,
    /// Which file (or environment variable, or "dev mode") supplied each top-level setting;
    /// keys are config keys such as `storage`, `api_addr`, `listener.1`. Used for error messages.
    pub sources: BTreeMap<String, String>,
}

/// A `storage` (or `ha_storage`) stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    /// The stanza label, lower-cased: `raft`, `inmem`, `file`, `consul`, ...
    pub kind: String,
    /// Typed settings when `kind == "raft"`.
    pub raft: Option<RaftStorage>,
    /// The stanza as Vault hands it to a storage backend: every value a string, non-strings
    /// JSON-encoded (so `retry_join` is a JSON array). The stanza-level `redirect_addr`,
    /// `advertise_addr`, `cluster_addr` and `disable_clustering` are removed, as Vault does.
    pub options: BTreeMap<String, String>,
}

/// `storage "raft"` settings, with Vault's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStorage {
    /// Empty until set by the file or `BAO_RAFT_PATH`/`VAULT_RAFT_PATH`;
    /// [`Config::validate_for_server`] rejects an empty path.
    pub path: PathBuf,
    /// Env `BAO_RAFT_NODE_ID`/`VAULT_RAFT_NODE_ID` wins; when `None` the node reads
    /// `<path>/node-id` or generates one.
    pub node_id: Option<String>,
    /// Timing multiplier; a configured 0 means the default, 5 (Vault's documented meaning).
    pub performance_multiplier: u32,
    /// Default 10240: Vault leaves hashicorp/raft's default in place (its docs say 10000).
    pub trailing_logs: u64,
    pub snapshot_threshold: u64,
    pub snapshot_interval: Duration,
    pub max_entry_size: u64,
    pub max_transaction_size: u64,
    pub retry_join: Vec<RetryJoin>,
    pub retry_join_as_non_voter: bool,
    pub autopilot_reconcile_interval: Duration,
    pub autopilot_update_interval: Duration,
}

impl Default for RaftStorage {
    fn default() -> Self {
        RaftStorage {
            path: PathBuf::new(),
            node_id: None,
            performance_multiplier: 5,
            trailing_logs: 10240,
            snapshot_threshold: 8192,
            snapshot_interval: Duration::from_secs(120),
            max_entry_size: 1024 * 1024,
            max_transaction_size: 8 * 1024 * 1024,
            retry_join: Vec::new(),
            retry_join_as_non_voter: false,
            autopilot_reconcile_interval: Duration::from_secs(10),
            autopilot_update_interval: Duration::from_secs(2),
        }
    }
}

/// One `retry_join {}` block. Exactly one of `leader_api_addr` and `auto_join` is set; TLS
/// material comes either from files or inline PEM, never both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryJoin {
    pub leader_api_addr: Option<String>,
    pub leader_tls_servername: Option<String>,
    pub leader_ca_cert_file: Option<PathBuf>,
    pub leader_client_cert_file: Option<PathBuf>,
    pub leader_client_key_file: Option<PathBuf>,
    pub leader_ca_cert: Option<String>,
    pub leader_client_cert: Option<String>,
    pub leader_client_key: Option<String>,
    /// go-discover syntax, e.g. `provider=aws tag_key=... tag_value=...`.
    pub auto_join: Option<String>,
    /// `http` or `https` (default).
    pub auto_join_scheme: String,
    /// Default 8200.
    pub auto_join_port: u16,
}

impl Default for RetryJoin {
    fn default() -> Self {
        RetryJoin {
            leader_api_addr: None,
            leader_tls_servername: None,
            leader_ca_cert_file: None,
            leader_client_cert_file: None,
            leader_client_key_file: None,
            leader_ca_cert: None,
            leader_client_cert: None,
            leader_client_key: None,
            auto_join: None,
            auto_join_scheme: "https".to_string(),
            auto_join_port: 8200,
        }
    }
}

/// TLS protocol versions vaultd can serve (rustls has no TLS 1.0/1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// The config spelling, `tls12` or `tls13`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "tls12",
            TlsVersion::Tls13 => "tls13",
        }
    }
}

/// Lets a `TlsVersion` be used where the config spelling is expected (`&l.tls_min_version` as
/// `&str`), which is how callers written against a string-typed field use it.
impl std::ops::Deref for TlsVersion {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `listener "tcp"` stanza, with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Always `"tcp"`: Vault's `unix` listener is rejected at load time.
    pub kind: String,
    pub address: String,
    /// Default: `address` with port + 1. With port 0 (an ephemeral port) it stays port 0, and
    /// the server should derive it from the port actually bound, as Vault does.
    pub cluster_address: String,
    pub tls_disable: bool,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_client_ca_file: Option<PathBuf>,
    pub tls_require_and_verify_client_cert: bool,
    pub tls_disable_client_certs: bool,
    pub tls_min_version: TlsVersion,
    pub tls_max_version: TlsVersion,
    /// `None` means unlimited (a negative value in the file); 0 in the file means the default.
    pub max_request_size: Option<u64>,
    pub max_request_duration: Duration,
}

impl Listener {
    /// A plain-HTTP listener on `address` with every other setting at its default.
    pub fn plain(address: &str) -> Listener {
        Listener {
            kind: "tcp".to_string(),
            address: address.to_string(),
            cluster_address: default_cluster_address(address).unwrap_or_default(),
            tls_disable: true,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_require_and_verify_client_cert: false,
            tls_disable_client_certs: false,
            tls_min_version: TlsVersion::Tls12,
            tls_max_version: TlsVersion::Tls13,
            max_request_size: Some(DEFAULT_MAX_REQUEST_SIZE),
            max_request_duration: DEFAULT_MAX_REQUEST_DURATION,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------------------------

/// Loads and merges configuration files. Each path is a file or a directory; a directory
/// contributes its `*.hcl` and `*.json` files (not recursively, sorted by name, editor backup
/// files skipped). Later files win for scalars, listeners accumulate, and a second `storage`
/// stanza anywhere is an error. Does not read the environment: see [`Config::apply_env`].
pub fn load(paths: &[PathBuf]) -> Result<Config, ConfigError> {
    let files = expand_paths(paths)?;
    if files.is_empty() {
        let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(ConfigError::NoFiles(if shown.is_empty() {
            "(no paths given)".to_string()
        } else {
            shown.join(", ")
        }));
    }
    let mut merged = Merged::default();
    for file in &files {
        let name = file.display().to_string();
        let src = std::fs::read_to_string(file)
            .map_err(|source| ConfigError::Io { path: name.clone(), source })?;
        let json = file.extension().is_some_and(|e| e == "json") || looks_like_json(&src);
        let layer = parse_layer(&src, &name, json)?;
        merged.absorb(layer)?;
        merged.files.push(file.clone());
    }
    merged.finish()
}

/// Parses one document. `name` is used in messages; `json` selects the JSON syntax.
pub fn from_str(src: &str, name: &str, json: bool) -> Result<Config, ConfigError> {
    let mut merged = Merged::default();
    merged.absorb(parse_layer(src, name, json)?)?;
    merged.files.push(PathBuf::from(name));
    merged.finish()
}

/// [`load`], then [`Config::apply_env`], then [`Config::validate_for_server`]: what
/// `vaultd server -config=...` needs.
pub fn load_for_server(paths: &[PathBuf]) -> Result<Config, ConfigError> {
    let mut config = load(paths)?;
    config.apply_env();
    config.validate_for_server()?;
    Ok(config)
}

/// The dev-mode configuration: one plain-HTTP listener on `listen`, raft storage in `raft_dir`
/// (or in-memory storage without one), `api_addr = http://<listen>` and
/// `cluster_addr = https://<host>:<port + 1>`, UI on. An unparseable `listen` yields a config
/// that [`Config::validate_for_server`] rejects with the reason.
pub fn dev(listen: &str, raft_dir: Option<PathBuf>) -> Config {
    let mut sources = BTreeMap::new();
    let storage = match raft_dir {
        Some(dir) => {
            let mut options = BTreeMap::new();
            options.insert("path".to_string(), dir.display().to_string());
            Storage {
                kind: "raft".to_string(),
                raft: Some(RaftStorage { path: dir, ..RaftStorage::default() }),
                options,
            }
        }
        None => Storage { kind: "inmem".to_string(), raft: None, options: BTreeMap::new() },
    };
    let listener = Listener::plain(listen);
    let cluster_addr = match split_host_port(listen) {
        Ok((host, port)) if port < u16::MAX => {
            Some(format!("https://{}", join_host_port(&host, port + 1)))
        }
        _ => None,
    };
    for key in ["storage", "listener.0", "api_addr", "cluster_addr", "ui"] {
        sources.insert(key.to_string(), "dev mode".to_string());
    }
    Config {
        storage: Some(storage),
        listeners: vec![listener],
        api_addr: Some(format!("http://{listen}")),
        cluster_addr,
        ui: true,
        sources,
        ..Config::default()
    }
}

impl Config {
    /// Applies the environment variables that take precedence over configuration files.
    pub fn apply_env(&mut self) {
        self.apply_env_from(|name| std::env::var(name).ok());
    }

    /// [`Config::apply_env`] with an explicit lookup, so tests need not touch the process
    /// environment. `lookup` is asked for the `BAO_*` name first and the `VAULT_*` name only if
    /// the former is absent; an empty value counts as unset (both as OpenBao does).
    ///
    /// Variables: `*_API_ADDR` (then `*_REDIRECT_ADDR`, `*_ADVERTISE_ADDR`), `*_CLUSTER_ADDR`,
    /// and for raft storage `*_RAFT_PATH`, `*_RAFT_NODE_ID`, `*_RAFT_RETRY_JOIN_AS_NON_VOTER`
    /// (any non-empty value means true, as in Vault).
    pub fn apply_env_from<F>(&mut self, lookup: F)
    where
        F: Fn(&str) -> Option<String>,
    {
        let read = |suffix: &str| read_bao_variable(&lookup, suffix);
        if let Some((value, var)) =
            read("API_ADDR").or_else(|| read("REDIRECT_ADDR")).or_else(|| read("ADVERTISE_ADDR"))
        {
            self.api_addr = Some(value);
            self.sources.insert("api_addr".to_string(), env_source(&var));
        }
        if let Some((value, var)) = read("CLUSTER_ADDR") {
            self.cluster_addr = Some(force_https(&value));
            self.sources.insert("cluster_addr".to_string(), env_source(&var));
        }
        // Vault's etcd backend: ETCD_ADDR wins over `address`; ETCD_USERNAME and ETCD_PASSWORD
        // apply where the stanza sets no `username` / `password`.
        for (stanza, storage) in [("storage", &mut self.storage), ("ha_storage", &mut self.ha_storage)] {
            let Some(s) = storage.as_mut().filter(|s| s.kind == "etcd") else { continue };
            if let Some(addr) = lookup("ETCD_ADDR").filter(|v| !v.is_empty()) {
                s.options.insert("address".to_string(), addr);
                self.sources.insert(format!("{stanza}.etcd.address"), env_source("ETCD_ADDR"));
            }
            for (key, var) in [("username", "ETCD_USERNAME"), ("password", "ETCD_PASSWORD")] {
                if s.options.contains_key(key) {
                    continue;
                }
                if let Some(v) = lookup(var).filter(|v| !v.is_empty()) {
                    s.options.insert(key.to_string(), v);
                    self.sources.insert(format!("{stanza}.etcd.{key}"), env_source(var));
                }
            }
        }
        let path = read("RAFT_PATH");
        let node_id = read("RAFT_NODE_ID");
        let non_voter = read("RAFT_RETRY_JOIN_AS_NON_VOTER");
        for (stanza, storage) in
            [("storage", &mut self.storage), ("ha_storage", &mut self.ha_storage)]
        {
            let Some(raft) = storage.as_mut().and_then(|s| s.raft.as_mut()) else {
                continue;
            };
            if let Some((value, var)) = &path {
                raft.path = PathBuf::from(value);
                self.sources.insert(format!("{stanza}.raft.path"), env_source(var));
            }
            if let Some((value, var)) = &node_id {
                raft.node_id = Some(value.clone());
                self.sources.insert(format!("{stanza}.raft.node_id"), env_source(var));
            }
            if let Some((_, var)) = &non_voter {
                raft.retry_join_as_non_voter = true;
                self.sources
                    .insert(format!("{stanza}.raft.retry_join_as_non_voter"), env_source(var));
            }
        }
    }

    /// Checks the rules a real (non-dev) server needs, after [`Config::apply_env`]: storage and
    /// a listener present, storage type supported, and for raft: a path, `api_addr` and
    /// `cluster_addr` set, clustering enabled, no `ha_storage`.
    pub fn validate_for_server(&self) -> Result<(), ConfigError> {
        let Some(storage) = &self.storage else {
            return Err(invalid(
                &self.all_files(),
                "storage",
                "a storage backend must be specified",
            ));
        };
        let storage_file = self.source("storage");
        if !SUPPORTED_STORAGE_TYPES.contains(&storage.kind.as_str()) {
            return Err(invalid(
                &storage_file,
                format!("storage.{}", storage.kind),
                format!(
                    "unknown storage type {:?}; vaultd supports: {}",
                    storage.kind,
                    SUPPORTED_STORAGE_TYPES.join(", ")
                ),
            ));
        }
        if self.listeners.is_empty() {
            return Err(invalid(
                &self.all_files(),
                "listener",
                "at least one listener \"tcp\" stanza is required",
            ));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            // dev() and hand-built configs skip parse-time checks, so repeat the cheap one here.
            let key = format!("listener.{i}");
            split_host_port(&l.address).map_err(|e| {
                invalid(
                    &self.source(&key),
                    format!("{key}.address"),
                    format!("invalid address {:?}: {e}", l.address),
                )
            })?;
        }
        for key in ["api_addr", "cluster_addr"] {
            let value = if key == "api_addr" { &self.api_addr } else { &self.cluster_addr };
            if let Some(v) = value {
                check_url(v).map_err(|e| {
                    invalid(&self.source(key), key, format!("invalid URL {v:?}: {e}"))
                })?;
            }
        }
        if let (Some(api), Some(cluster)) = (&self.api_addr, &self.cluster_addr) {
            if api == cluster {
                return Err(invalid(
                    &self.source("cluster_addr"),
                    "cluster_addr",
                    format!("address {api:?} used for both API and cluster addresses"),
                ));
            }
        }
        if storage.kind == "etcd" {
            self.etcd_config(false)?;
        }
        if let Some(ha) = &self.ha_storage {
            let ha_file = self.source("ha_storage");
            let message = if storage.kind == "raft" && ha.kind == "raft" {
                "Raft cannot be set both as 'storage' and 'ha_storage'. Setting 'storage' to \
                 'raft' will automatically set it up for HA operations as well"
                    .to_string()
            } else if storage.kind == "raft" {
                "HA storage cannot be declared when Raft is the storage type".to_string()
            } else if ha.kind == "raft" {
                // OpenBao accepts raft as an HA-only backend; vaultd's Raft carries data too.
                "ha_storage \"raft\" is not supported by vaultd; use storage \"raft\", which \
                 provides HA itself, or ha_storage \"etcd\""
                    .to_string()
            } else if !SUPPORTED_HA_STORAGE_TYPES.contains(&ha.kind.as_str()) {
                format!(
                    "unknown HA storage type {:?}; vaultd supports: {}",
                    ha.kind,
                    SUPPORTED_HA_STORAGE_TYPES.join(", ")
                )
            } else {
                String::new()
            };
            if !message.is_empty() {
                return Err(invalid(&ha_file, format!("ha_storage.{}", ha.kind), message));
            }
            let ha_cfg = self.etcd_config(true)?;
            if storage.kind == "etcd" {
                if let (Some(data), Some(lock)) = (self.etcd_config(false)?, ha_cfg) {
                    if data.path == lock.path && data.endpoints == lock.endpoints {
                        return Err(invalid(
                            &ha_file,
                            "ha_storage.etcd.path",
                            format!(
                                "ha_storage and storage use the same etcd path {:?}; give the \
                                 HA lock its own path",
                                lock.path
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(raft) = &storage.raft {
            if raft.path.as_os_str().is_empty() {
                return Err(invalid(
                    &storage_file,
                    "storage.raft.path",
                    "'path' must be set (or BAO_RAFT_PATH / VAULT_RAFT_PATH)",
                ));
            }
            if self.disable_clustering {
                return Err(invalid(
                    &self.source("disable_clustering"),
                    "disable_clustering",
                    "disable clustering cannot be set to true when Raft is the storage type",
                ));
            }
            if self.cluster_addr.is_none() {
                return Err(invalid(
                    &storage_file,
                    "cluster_addr",
                    "cluster address must be set when using raft storage",
                ));
            }
            if self.api_addr.is_none() {
                return Err(invalid(
                    &storage_file,
                    "api_addr",
                    "missing API address, please set in configuration or via environment \
                     (BAO_API_ADDR / VAULT_API_ADDR); raft storage advertises it to peers",
                ));
            }
            if raft.retry_join_as_non_voter && raft.retry_join.is_empty() {
                return Err(invalid(
                    &self.source_or("storage.raft.retry_join_as_non_voter", &storage_file),
                    "storage.raft.retry_join_as_non_voter",
                    "setting retry_join_as_non_voter to true is only valid if at least one \
                     retry_join stanza is specified",
                ));
            }
        }
        Ok(())
    }

    /// The etcd settings of `storage` (or, with `ha`, of `ha_storage`) when that stanza is
    /// `etcd`, checked; errors name the file and key.
    pub fn etcd_config(
        &self,
        ha: bool,
    ) -> Result<Option<vaultd_storage::etcd::EtcdConfig>, ConfigError> {
        let (stanza, storage) =
            if ha { ("ha_storage", &self.ha_storage) } else { ("storage", &self.storage) };
        let Some(s) = storage.as_ref().filter(|s| s.kind == "etcd") else { return Ok(None) };
        vaultd_storage::etcd::EtcdConfig::from_options(&s.options, parse_duration)
            .map(Some)
            .map_err(|e| {
                let msg = e.to_string();
                // The storage crate says `storage "etcd": <key>: <problem>`.
                let detail = msg.split_once("storage \"etcd\": ").map_or(msg.as_str(), |(_, d)| d);
                let (key, problem) = detail.split_once(": ").unwrap_or(("", detail));
                let key = if key.is_empty() { format!("{stanza}.etcd") } else { format!("{stanza}.etcd.{key}") };
                invalid(&self.source(stanza), key, problem.to_string())
            })
    }

    fn source(&self, key: &str) -> String {
        self.sources.get(key).cloned().unwrap_or_else(|| self.all_files())
    }

    fn source_or(&self, key: &str, fallback: &str) -> String {
        self.sources.get(key).cloned().unwrap_or_else(|| fallback.to_string())
    }

    fn all_files(&self) -> String {
        if self.files.is_empty() {
            "configuration".to_string()
        } else {
            let names: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
            names.join(", ")
        }
    }
}

fn env_source(var: &str) -> String {
    format!("environment variable {var}")
}

/// OpenBao's `ReadBaoVariable`: the `BAO_` name wins whenever it is present, even empty.
fn read_bao_variable<F>(lookup: &F, suffix: &str) -> Option<(String, String)>
where
    F: Fn(&str) -> Option<String>,
{
    let bao = format!("BAO_{suffix}");
    let (value, var) = match lookup(&bao) {
        Some(v) => (v, bao),
        None => {
            let vault = format!("VAULT_{suffix}");
            (lookup(&vault)?, vault)
        }
    };
    let value = value.trim().to_string();
    if value.is_empty() {
        None
    } else {
        Some((value, var))
    }
}

// ---------------------------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------------------------

/// Formats like Go's `time.Duration.String()`: `768h0m0s`, `30m0s`, `1h30m0s`, `1.5s`,
/// `250ms`, `0s`. Vault echoes durations in this form, and clients compare the strings.
pub fn format_duration_go(d: Duration) -> String {
    const US: u128 = 1_000;
    const MS: u128 = 1_000_000;
    const S: u128 = 1_000_000_000;
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < US {
        return format!("{nanos}ns");
    }
    if nanos < MS {
        return format!("{}µs", decimal(nanos, US, 3));
    }
    if nanos < S {
        return format!("{}ms", decimal(nanos, MS, 6));
    }
    let secs = nanos / S;
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&decimal(s * S + nanos % S, S, 9));
    out.push('s');
    out
}

/// `n / unit` with the remainder as a decimal fraction without trailing zeros.
fn decimal(n: u128, unit: u128, digits: usize) -> String {
    let (int, rem) = (n / unit, n % unit);
    if rem == 0 {
        return int.to_string();
    }
    let frac = format!("{rem:0digits$}");
    format!("{int}.{}", frac.trim_end_matches('0'))
}

/// Parses a Vault duration: Go's `time.ParseDuration` syntax (`1h30m`, `1.5h`, `300ms`, `10us`,
/// `10µs`, `5ns`), a bare integer meaning seconds (`"90"`), or whole days (`"30d"`, which
/// Vault's parseutil accepts). Negative durations are rejected: no setting takes one.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    let bad = || format!("invalid duration {s:?}");
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = text.parse::<i64>() {
        return u64::try_from(secs)
            .map(Duration::from_secs)
            .map_err(|_| format!("invalid duration {s:?}: must not be negative"));
    }
    if let Some(days) = text.strip_suffix('d') {
        if let Ok(days) = days.parse::<u64>() {
            return days.checked_mul(86_400).map(Duration::from_secs).ok_or_else(bad);
        }
    }
    let (negative, mut rest) = match text.as_bytes()[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    // Go caps durations at i64::MAX nanoseconds (~292 years); so do we.
    let limit = i64::MAX as u128;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after) = rest.split_at(int_len);
        let (frac_digits, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(bad());
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("missing unit in duration {s:?}")),
            other => return Err(format!("unknown unit {other:?} in duration {s:?}")),
        };
        let mut value: u128 = 0;
        for b in int_digits.bytes() {
            value = value * 10 + u128::from(b - b'0');
            if value > limit {
                return Err(bad());
            }
        }
        let mut part = value * unit_ns;
        // Precision beyond 18 fractional digits is below a nanosecond for every unit.
        let mut scale: u128 = 1;
        let mut frac: u128 = 0;
        for b in frac_digits.bytes().take(18) {
            frac = frac * 10 + u128::from(b - b'0');
            scale *= 10;
        }
        part += frac * unit_ns / scale;
        total += part;
        if total > limit {
            return Err(bad());
        }
        rest = after;
    }
    if negative && total != 0 {
        return Err(format!("invalid duration {s:?}: must not be negative"));
    }
    u64::try_from(total).map(Duration::from_nanos).map_err(|_| bad())
}

// ---------------------------------------------------------------------------------------------
// The syntax-neutral value tree
// ---------------------------------------------------------------------------------------------

/// A parsed value, the same for HCL and JSON. Objects keep order and repeated keys, because a
/// repeated key is how HCL spells a repeated block.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Val>),
    Obj(Vec<Entry>),
}

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    key: String,
    /// 1-based line and column of the key; JSON gives none.
    pos: Option<(usize, usize)>,
    val: Val,
}

impl Val {
    fn kind(&self) -> &'static str {
        match self {
            Val::Null => "null",
            Val::Bool(_) => "a boolean",
            Val::Int(_) | Val::Float(_) => "a number",
            Val::Str(_) => "a string",
            Val::List(_) => "a list",
            Val::Obj(_) => "an object",
        }
    }
}

impl<'de> serde::Deserialize<'de> for Val {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValVisitor;
        impl<'de> serde::de::Visitor<'de> for ValVisitor {
            type Value = Val;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Val, E> {
                Ok(Val::Null)
            }
            fn visit_none<E>(self) -> Result<Val, E> {
                Ok(Val::Null)
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Val, D::Error> {
                <Val as serde::Deserialize>::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Val, E> {
                Ok(Val::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Val, E> {
                Ok(Val::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Val, E> {
                Ok(i64::try_from(v).map_or(Val::Float(v as f64), Val::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Val, E> {
                Ok(Val::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Val, E> {
                Ok(Val::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Val, E> {
                Ok(Val::Str(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Val, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Val>()? {
                    items.push(item);
                }
                Ok(Val::List(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Val, A::Error> {
                let mut entries = Vec::new();
                while let Some((key, val)) = map.next_entry::<String, Val>()? {
                    entries.push(Entry { key, pos: None, val });
                }
                Ok(Val::Obj(entries))
            }
        }
        deserializer.deserialize_any(ValVisitor)
    }
}

fn looks_like_json(src: &str) -> bool {
    src.trim_start_matches('\u{feff}').trim_start().starts_with('{')
}

/// Parses a document into its top-level entries plus parse-time warnings.
fn parse_document(
    src: &str,
    file: &str,
    json: bool,
) -> Result<(Vec<Entry>, Vec<String>), ConfigError> {
    if json {
        let val: Val = serde_json::from_str(src).map_err(|e| {
            // serde_json appends the position to its message; it is reported separately.
            let text = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            ConfigError::Syntax {
                file: file.to_string(),
                line: Some(e.line()),
                column: Some(e.column()).filter(|c| *c > 0),
                message: text.strip_suffix(&suffix).unwrap_or(&text).to_string(),
            }
        })?;
        return match val {
            Val::Obj(entries) => Ok((entries, Vec::new())),
            other => Err(ConfigError::Syntax {
                file: file.to_string(),
                line: None,
                column: None,
                message: format!("the top level must be an object, found {}", other.kind()),
            }),
        };
    }
    let lines = LineIndex::new(src);
    match hcl::edit::parser::parse_body(src) {
        Ok(body) => Ok((HclConv { text: src, lines: &lines, file }.body(&body, "")?, Vec::new())),
        Err(first) => {
            if let Some(fixed) = hcl1::normalize(src) {
                if let Ok(body) = hcl::edit::parser::parse_body(&fixed.text) {
                    let entries =
                        HclConv { text: &fixed.text, lines: &lines, file }.body(&body, "")?;
                    let warnings = fixed
                        .dropped
                        .iter()
                        .map(|(key, offset)| {
                            let (l, c) = lines.pos(*offset);
                            format!(
                                "{key} is set more than once in {file}: the value at {file}:{l}:{c} \
                                 is overridden by a later one (as in Vault)"
                            )
                        })
                        .collect();
                    return Ok((entries, warnings));
                }
            }
            Err(ConfigError::Syntax {
                file: file.to_string(),
                line: Some(first.location().line()),
                column: Some(first.location().column()),
                message: first.message().to_string(),
            })
        }
    }
}

/// Byte offset to 1-based line and column (in characters).
struct LineIndex<'a> {
    src: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(src: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { src, starts }
    }

    fn pos(&self, offset: usize) -> (usize, usize) {
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let col =
            self.src.get(start..offset.min(self.src.len())).map_or(1, |s| s.chars().count() + 1);
        (line, col)
    }
}

/// hcl-edit's syntax tree to [`Val`]. `text` is the text that was parsed (possibly the HCL 1
/// rewrite, which has the same byte offsets as the original).
struct HclConv<'a> {
    text: &'a str,
    lines: &'a LineIndex<'a>,
    file: &'a str,
}

impl HclConv<'_> {
    fn pos(&self, span: Option<std::ops::Range<usize>>) -> Option<(usize, usize)> {
        span.map(|r| self.lines.pos(r.start))
    }

    fn body(&self, body: &Body, prefix: &str) -> Result<Vec<Entry>, ConfigError> {
        let mut entries = Vec::new();
        for structure in body.iter() {
            match structure {
                Structure::Attribute(attr) => {
                    let key = attr.key.as_str().to_string();
                    let path = join_key(prefix, &key);
                    entries.push(Entry {
                        pos: self.pos(attr.key.span()),
                        val: self.expr(&attr.value, &path)?,
                        key,
                    });
                }
                Structure::Block(block) => {
                    let ident = block.ident.as_str().to_string();
                    let mut path = join_key(prefix, &ident);
                    let mut labels = Vec::new();
                    for label in &block.labels {
                        let (text, span) = match label {
                            BlockLabel::Ident(i) => (i.as_str().to_string(), i.span()),
                            BlockLabel::String(s) => (s.value().clone(), s.span()),
                        };
                        path = join_key(&path, &text);
                        labels.push((text, self.pos(span)));
                    }
                    // Labels nest as objects, the shape JSON uses for the same stanza.
                    let mut val = Val::Obj(self.body(&block.body, &path)?);
                    for (label, pos) in labels.into_iter().rev() {
                        val = Val::Obj(vec![Entry { key: label, pos, val }]);
                    }
                    entries.push(Entry { key: ident, pos: self.pos(block.ident.span()), val });
                }
            }
        }
        Ok(entries)
    }

    fn expr(&self, expr: &Expression, path: &str) -> Result<Val, ConfigError> {
        Ok(match expr {
            Expression::Null(_) => Val::Null,
            Expression::Bool(b) => Val::Bool(*b.value()),
            Expression::Number(n) => number_val(n.value()),
            Expression::String(s) => Val::Str(s.value().clone()),
            Expression::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    out.push(self.expr(item, &format!("{path}.{i}"))?);
                }
                Val::List(out)
            }
            Expression::Object(obj) => {
                let mut out = Vec::new();
                for (key, value) in obj.iter() {
                    let (key, span) = match key {
                        ObjectKey::Ident(i) => (i.as_str().to_string(), i.span()),
                        ObjectKey::Expression(e) => match self.expr(e, path)? {
                            Val::Str(s) => (s, e.span()),
                            other => {
                                return Err(invalid(
                                    self.file,
                                    path,
                                    format!("object keys must be strings, found {}", other.kind()),
                                ))
                            }
                        },
                    };
                    let val = self.expr(value.expr(), &join_key(path, &key))?;
                    out.push(Entry { key, pos: self.pos(span), val });
                }
                Val::Obj(out)
            }
            Expression::StringTemplate(t) => Val::Str(self.template(t, path)?),
            Expression::HeredocTemplate(h) => Val::Str(self.template(&h.template, path)?),
            Expression::Parenthesis(p) => self.expr(p.inner(), path)?,
            Expression::UnaryOp(op) if *op.operator.value() == UnaryOperator::Neg => {
                match self.expr(&op.expr, path)? {
                    Val::Int(i) => Val::Int(-i),
                    Val::Float(f) => Val::Float(-f),
                    _ => return Err(self.unsupported(expr, path)),
                }
            }
            _ => return Err(self.unsupported(expr, path)),
        })
    }

    /// HCL 1 has no interpolation: `"${x}"` is literal text there, so it stays literal here.
    fn template(&self, template: &Template, path: &str) -> Result<String, ConfigError> {
        let mut out = String::new();
        for element in template.iter() {
            match element {
                Element::Literal(lit) => out.push_str(lit.value()),
                Element::Interpolation(i) => out.push_str(self.raw(i.span(), path)?),
                Element::Directive(d) => out.push_str(self.raw(d.span(), path)?),
            }
        }
        Ok(out)
    }

    fn raw(&self, span: Option<std::ops::Range<usize>>, path: &str) -> Result<&str, ConfigError> {
        span.and_then(|r| self.text.get(r))
            .ok_or_else(|| invalid(self.file, path, "unsupported template in string"))
    }

    fn unsupported(&self, expr: &Expression, path: &str) -> ConfigError {
        let at = self
            .pos(expr.span())
            .map(|(l, c)| format!(" (line {l}, column {c})"))
            .unwrap_or_default();
        invalid(
            self.file,
            path,
            format!(
                "expressions are not supported in configuration files{at}; use a literal value"
            ),
        )
    }
}

fn number_val(n: &hcl::Number) -> Val {
    match n.as_i64() {
        Some(i) => Val::Int(i),
        None => Val::Float(n.as_f64().unwrap_or(f64::NAN)),
    }
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

// ---------------------------------------------------------------------------------------------
// HCL 1 compatibility
// ---------------------------------------------------------------------------------------------

/// Rewrites the HCL 1 forms that HCL 2 rejects but Vault's parser accepts, without changing any
/// byte offset (so positions reported against the original stay right):
/// `"key" = v` becomes ` key  = v`; a `,` or space between two attributes of a body becomes a
/// newline (and the block braces get newlines so the body is multi-line); an attribute assigned
/// twice in one body has its earlier assignment blanked, HCL 1's "last one wins". Returns `None`
/// when the text is not in the small grammar it understands; the caller then reports the
/// original parse error.
mod hcl1 {
    use std::collections::HashMap;

    pub(super) struct Normalized {
        pub text: String,
        /// Keys whose earlier assignment was dropped, with its byte offset.
        pub dropped: Vec<(String, usize)>,
    }

    pub(super) fn normalize(src: &str) -> Option<Normalized> {
        let toks = lex(src.as_bytes())?;
        let mut w = Walker {
            src: src.as_bytes(),
            toks,
            i: 0,
            out: src.as_bytes().to_vec(),
            dropped: Vec::new(),
        };
        w.body("", true)?;
        let text = String::from_utf8(w.out).ok()?;
        Some(Normalized { text, dropped: w.dropped })
    }

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum K {
        Ident,
        Str,
        Heredoc,
        Number,
        Punct(u8),
        Newline,
    }

    #[derive(Clone, Copy, Debug)]
    struct Tok {
        k: K,
        start: usize,
        end: usize,
    }

    fn lex(s: &[u8]) -> Option<Vec<Tok>> {
        let mut toks = Vec::new();
        let mut i = 0;
        while i < s.len() {
            let c = s[i];
            let next = s.get(i + 1).copied();
            let start = i;
            let k = match c {
                b' ' | b'\t' | b'\r' => {
                    i += 1;
                    continue;
                }
                b'\n' => {
                    i += 1;
                    K::Newline
                }
                b'#' => {
                    i = line_end(s, i);
                    continue;
                }
                b'/' if next == Some(b'/') => {
                    i = line_end(s, i);
                    continue;
                }
                b'/' if next == Some(b'*') => {
                    let close = find(s, i + 2, b"*/")?;
                    i = close + 2;
                    if s[start..close].contains(&b'\n') {
                        K::Newline
                    } else {
                        continue;
                    }
                }
                b'"' => {
                    i = string_end(s, i)?;
                    K::Str
                }
                b'<' if next == Some(b'<') => {
                    i = heredoc_end(s, i)?;
                    K::Heredoc
                }
                b'0'..=b'9' => {
                    i += 1;
                    while i < s.len()
                        && (s[i].is_ascii_alphanumeric()
                            || s[i] == b'.'
                            || (matches!(s[i], b'+' | b'-') && matches!(s[i - 1], b'e' | b'E')))
                    {
                        i += 1;
                    }
                    K::Number
                }
                c if c.is_ascii_alphabetic() || c == b'_' => {
                    i += 1;
                    while i < s.len()
                        && (s[i].is_ascii_alphanumeric() || matches!(s[i], b'_' | b'-'))
                    {
                        i += 1;
                    }
                    K::Ident
                }
                b'=' | b'{' | b'}' | b'[' | b']' | b',' | b'-' | b'(' | b')' | b':' => {
                    i += 1;
                    K::Punct(c)
                }
                _ => return None,
            };
            toks.push(Tok { k, start, end: i });
        }
        Some(toks)
    }

    fn line_end(s: &[u8], mut i: usize) -> usize {
        while i < s.len() && s[i] != b'\n' {
            i += 1;
        }
        i
    }

    fn find(s: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
        s.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from)
    }

    /// End (exclusive) of the quoted string starting at `i`, skipping `${...}` sequences, which
    /// may themselves contain quotes.
    fn string_end(s: &[u8], i: usize) -> Option<usize> {
        let mut j = i + 1;
        loop {
            match *s.get(j)? {
                b'\\' => j += 2,
                b'"' => return Some(j + 1),
                b'\n' => return None,
                b'$' | b'%' if s.get(j + 1) == Some(&b'{') => {
                    j += 2;
                    let mut depth = 1;
                    while depth > 0 {
                        match *s.get(j)? {
                            b'{' => {
                                depth += 1;
                                j += 1
                            }
                            b'}' => {
                                depth -= 1;
                                j += 1
                            }
                            b'"' => j = string_end(s, j)?,
                            _ => j += 1,
                        }
                    }
                }
                _ => j += 1,
            }
        }
    }

    /// End (exclusive, before the newline) of the heredoc starting at `i` (`<<EOF` or `<<-EOF`).
    fn heredoc_end(s: &[u8], i: usize) -> Option<usize> {
        let mut j = i + 2;
        if s.get(j) == Some(&b'-') {
            j += 1;
        }
        let id_start = j;
        while j < s.len() && (s[j].is_ascii_alphanumeric() || s[j] == b'_') {
            j += 1;
        }
        let ident = &s[id_start..j];
        if ident.is_empty() {
            return None;
        }
        let mut line_start = line_end(s, j) + 1;
        while line_start <= s.len() {
            let end = line_end(s, line_start);
            if s[line_start..end].trim_ascii() == ident {
                return Some(end);
            }
            line_start = end + 1;
        }
        None
    }

    struct Walker<'a> {
        src: &'a [u8],
        toks: Vec<Tok>,
        i: usize,
        out: Vec<u8>,
        dropped: Vec<(String, usize)>,
    }

    impl Walker<'_> {
        fn peek(&self) -> Option<Tok> {
            self.toks.get(self.i).copied()
        }

        fn take(&mut self) -> Option<Tok> {
            let t = self.peek()?;
            self.i += 1;
            Some(t)
        }

        fn text(&self, t: Tok) -> &str {
            std::str::from_utf8(&self.src[t.start..t.end]).unwrap_or("")
        }

        /// Statements until `}` (not consumed) or, at top level, the end of input.
        fn body(&mut self, path: &str, top: bool) -> Option<()> {
            let mut seen: HashMap<String, (usize, usize)> = HashMap::new();
            loop {
                while self.peek().is_some_and(|t| t.k == K::Newline) {
                    self.i += 1;
                }
                let Some(first) = self.peek() else {
                    return top.then_some(());
                };
                if first.k == K::Punct(b'}') {
                    return (!top).then_some(());
                }
                self.i += 1;
                let key = match first.k {
                    K::Ident => self.text(first).to_string(),
                    K::Str => {
                        let inner =
                            self.text(first).get(1..first.end - first.start - 1)?.to_string();
                        let ident_like = inner
                            .chars()
                            .next()
                            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                            && inner
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                        if !ident_like {
                            return None;
                        }
                        self.out[first.start] = b' ';
                        self.out[first.end - 1] = b' ';
                        inner
                    }
                    _ => return None,
                };
                match self.peek()?.k {
                    K::Punct(b'=') => {
                        self.i += 1;
                        self.value()?;
                        let end = self.toks.get(self.i - 1)?.end;
                        if let Some((s, e)) = seen.insert(key.clone(), (first.start, end)) {
                            for b in &mut self.out[s..e] {
                                if *b != b'\n' {
                                    *b = b' ';
                                }
                            }
                            let full = if path.is_empty() { key } else { format!("{path}.{key}") };
                            self.dropped.push((full, s));
                        }
                    }
                    K::Str | K::Ident | K::Punct(b'{') => {
                        while self.peek().is_some_and(|t| matches!(t.k, K::Str | K::Ident)) {
                            self.i += 1;
                        }
                        let open = self.take()?;
                        if open.k != K::Punct(b'{') {
                            return None;
                        }
                        let inner_path =
                            if path.is_empty() { key } else { format!("{path}.{key}") };
                        self.body(&inner_path, false)?;
                        let close = self.take()?;
                        self.break_braces(open.start, close.start);
                    }
                    _ => return None,
                }
                self.after_statement()?;
            }
        }

        /// A block body on the `{` line is only valid HCL 2 for a single attribute, so put the
        /// body on its own lines when whitespace allows.
        fn break_braces(&mut self, open: usize, close: usize) {
            if close > open + 1
                && matches!(self.src[open + 1], b' ' | b'\t')
                && matches!(self.src[close - 1], b' ' | b'\t')
            {
                self.out[open + 1] = b'\n';
                self.out[close - 1] = b'\n';
            }
        }

        fn value(&mut self) -> Option<()> {
            let t = self.take()?;
            match t.k {
                K::Str | K::Heredoc | K::Number | K::Ident => Some(()),
                K::Punct(b'-') => (self.take()?.k == K::Number).then_some(()),
                K::Punct(b'[') | K::Punct(b'{') => {
                    let mut depth = 1usize;
                    while depth > 0 {
                        match self.take()?.k {
                            K::Punct(b'[') | K::Punct(b'{') => depth += 1,
                            K::Punct(b']') | K::Punct(b'}') => depth -= 1,
                            _ => {}
                        }
                    }
                    Some(())
                }
                _ => None,
            }
        }

        fn after_statement(&mut self) -> Option<()> {
            let Some(next) = self.peek() else {
                return Some(());
            };
            match next.k {
                K::Newline | K::Punct(b'}') => Some(()),
                K::Punct(b',') => {
                    self.out[next.start] = b'\n';
                    self.i += 1;
                    Some(())
                }
                _ if next.start > 0 && matches!(self.src[next.start - 1], b' ' | b'\t') => {
                    self.out[next.start - 1] = b'\n';
                    Some(())
                }
                _ => None,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading typed values from the tree
// ---------------------------------------------------------------------------------------------

/// Where a key was found, for messages: `file:line:col`, or just the file for JSON.
fn location(file: &str, pos: Option<(usize, usize)>) -> String {
    match pos {
        Some((l, c)) => format!("{file}:{l}:{c}"),
        None => file.to_string(),
    }
}

fn unknown_key_warning(file: &str, path: &str, pos: Option<(usize, usize)>) -> String {
    format!("unknown or unsupported field {path} found in configuration at {}", location(file, pos))
}

fn ignored_key_warning(file: &str, path: &str, pos: Option<(usize, usize)>) -> String {
    format!(
        "{path} is a Vault setting that vaultd does not implement; ignored (at {})",
        location(file, pos)
    )
}

/// A string setting; numbers and booleans are accepted in their text form, as HCL 1 does.
fn get_string(v: &Val, file: &str, key: &str) -> Result<Option<String>, ConfigError> {
    match v {
        Val::Null => Ok(None),
        Val::Str(s) => Ok(Some(s.clone())),
        Val::Int(i) => Ok(Some(i.to_string())),
        Val::Float(f) => Ok(Some(f.to_string())),
        Val::Bool(b) => Ok(Some(b.to_string())),
        other => Err(invalid(file, key, format!("expected a string, found {}", other.kind()))),
    }
}

/// A non-empty string setting; `""` means unset, as in Vault.
fn get_nonempty(v: &Val, file: &str, key: &str) -> Result<Option<String>, ConfigError> {
    Ok(get_string(v, file, key)?.filter(|s| !s.is_empty()))
}

/// Vault's `parseutil.ParseBool`: booleans, numbers (non-zero is true), and the strings Go's
/// `strconv.ParseBool` knows; the empty string is false.
fn get_bool(v: &Val, file: &str, key: &str) -> Result<Option<bool>, ConfigError> {
    let parsed = match v {
        Val::Null => return Ok(None),
        Val::Bool(b) => *b,
        Val::Int(i) => *i != 0,
        Val::Float(f) => *f != 0.0,
        Val::Str(s) => match s.as_str() {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
            "0" | "f" | "F" | "FALSE" | "false" | "False" | "" => false,
            other => {
                return Err(invalid(
                    file,
                    key,
                    format!("invalid boolean {other:?}: use true or false"),
                ))
            }
        },
        other => {
            return Err(invalid(file, key, format!("expected a boolean, found {}", other.kind())))
        }
    };
    Ok(Some(parsed))
}

/// Vault's `parseutil.ParseDurationSecond`: numbers are seconds, strings go through
/// [`parse_duration`], `""` is unset.
fn get_duration(v: &Val, file: &str, key: &str) -> Result<Option<Duration>, ConfigError> {
    match v {
        Val::Null => Ok(None),
        Val::Int(i) => u64::try_from(*i)
            .map(|s| Some(Duration::from_secs(s)))
            .map_err(|_| invalid(file, key, format!("invalid duration {i}: must not be negative"))),
        // Go converts the float to an integer count before scaling it to seconds: 1.5 is 1s.
        Val::Float(f) if f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64 => {
            Ok(Some(Duration::from_secs(f.trunc() as u64)))
        }
        Val::Str(s) if s.is_empty() => Ok(None),
        Val::Str(s) => parse_duration(s).map(Some).map_err(|e| invalid(file, key, e)),
        other => Err(invalid(file, key, format!("expected a duration, found {}", other.kind()))),
    }
}

/// Vault's `parseutil.ParseInt`: integers or decimal strings; `""` is 0.
fn get_i64(v: &Val, file: &str, key: &str) -> Result<Option<i64>, ConfigError> {
    match v {
        Val::Null => Ok(None),
        Val::Int(i) => Ok(Some(*i)),
        Val::Float(f) if f.fract() == 0.0 && f.abs() < i64::MAX as f64 => Ok(Some(*f as i64)),
        Val::Str(s) if s.trim().is_empty() => Ok(Some(0)),
        Val::Str(s) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| invalid(file, key, format!("invalid integer {s:?}"))),
        other => Err(invalid(file, key, format!("expected an integer, found {}", other.kind()))),
    }
}

fn get_u64(v: &Val, file: &str, key: &str) -> Result<Option<u64>, ConfigError> {
    match get_i64(v, file, key)? {
        None => Ok(None),
        Some(i) => u64::try_from(i)
            .map(Some)
            .map_err(|_| invalid(file, key, format!("must not be negative, got {i}"))),
    }
}

/// Bodies of an unlabelled stanza (`retry_join {}`): one object, or a list of objects.
fn stanza_bodies<'a>(v: &'a Val, file: &str, key: &str) -> Result<Vec<&'a [Entry]>, ConfigError> {
    match v {
        Val::Obj(entries) => Ok(vec![entries.as_slice()]),
        Val::List(items) => {
            let mut out = Vec::new();
            for item in items {
                out.extend(stanza_bodies(item, file, key)?);
            }
            Ok(out)
        }
        other => Err(invalid(file, key, format!("expected a block, found {}", other.kind()))),
    }
}

/// A body that is really `{ "<label>": body-or-bodies, ... }` (every value a stanza), as
/// opposed to an unlabelled body with its own settings.
fn is_label_map(entries: &[Entry]) -> bool {
    !entries.is_empty()
        && entries.iter().all(|e| match &e.val {
            Val::Obj(_) => true,
            Val::List(items) => !items.is_empty() && items.iter().all(|i| matches!(i, Val::Obj(_))),
            _ => false,
        })
}

struct Labelled<'a> {
    label: Option<(String, Option<(usize, usize)>)>,
    body: &'a [Entry],
}

/// Bodies of a stanza with one label (`listener "tcp" {}`, `storage "raft" {}`) in any of the
/// shapes HCL and JSON produce: `{tcp: {..}}`, `[{tcp: {..}}, ..]`, `{tcp: [{..}, {..}]}`, or an
/// unlabelled `{type = "tcp", ..}`.
fn labelled_bodies<'a>(
    v: &'a Val,
    file: &str,
    key: &str,
) -> Result<Vec<Labelled<'a>>, ConfigError> {
    let mut out = Vec::new();
    match v {
        Val::List(items) => {
            for item in items {
                out.extend(labelled_bodies(item, file, key)?);
            }
        }
        Val::Obj(entries) if is_label_map(entries) => {
            for e in entries {
                for body in stanza_bodies(&e.val, file, key)? {
                    out.push(Labelled { label: Some((e.key.clone(), e.pos)), body });
                }
            }
        }
        Val::Obj(entries) => out.push(Labelled { label: None, body: entries }),
        other => {
            return Err(invalid(file, key, format!("expected a block, found {}", other.kind())))
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// One file
// ---------------------------------------------------------------------------------------------

/// Top-level keys Vault or OpenBao understand and vaultd deliberately ignores.
const IGNORED_TOP_LEVEL: &[&str] = &[
    "administrative_namespace_path",
    "allow_audit_log_prefixing",
    "allow_unauthenticated_workflows",
    "audit",
    "cache_size",
    "cluster_cipher_suites",
    "detect_deadlocks",
    "disable_cache",
    "disable_indexing",
    "disable_printable_check",
    "disable_sealwrap",
    "disable_sentinel_trace",
    "enable_post_unseal_trace",
    "entropy",
    "experiments",
    "hsm",
    "imprecise_lease_role_tracking",
    "initialize",
    "introspection_endpoint",
    "kms",
    "license_path",
    "log_file",
    "log_format",
    "log_requests_level",
    "log_rotate_bytes",
    "log_rotate_duration",
    "log_rotate_max_files",
    "pid_file",
    "plugin",
    "plugin_auto_download",
    "plugin_auto_register",
    "plugin_directory",
    "plugin_download_behavior",
    "plugin_download_max_size",
    "plugin_file_permissions",
    "plugin_file_uid",
    "post_unseal_trace_directory",
    "raw_storage_endpoint",
    "replication",
    "reporting",
    "service_registration",
    "telemetry",
    "unsafe_allow_api_audit_creation",
    "unsafe_cross_namespace_identity",
    "unsafe_relative_paths",
    "user_lockout",
];

const IGNORED_LISTENER: &[&str] = &[
    "agent_api",
    "chroot_namespace",
    "cors_allow_credentials",
    "cors_allowed_headers",
    "cors_allowed_origins",
    "cors_enabled",
    "custom_response_headers",
    "disable_replication_status_endpoints",
    "disable_request_limiter",
    "disable_unauthed_generate_root_endpoints",
    "disable_unauthed_rekey_endpoints",
    "http_idle_timeout",
    "http_read_header_timeout",
    "http_read_timeout",
    "http_write_timeout",
    "inflight_requests_logging",
    "max_request_json_memory",
    "max_request_json_strings",
    "profiling",
    "proxy_api",
    "proxy_protocol_authorized_addrs",
    "proxy_protocol_behavior",
    "purpose",
    "redact_addresses",
    "redact_cluster_name",
    "redact_version",
    "require_request_header",
    "role",
    "socket_group",
    "socket_mode",
    "socket_user",
    "telemetry",
    "tls_acme_ca_directory",
    "tls_acme_ca_root",
    "tls_acme_cache_path",
    "tls_acme_disable_alpn_challenge",
    "tls_acme_disable_http_challenge",
    "tls_acme_domains",
    "tls_acme_eab_key_id",
    "tls_acme_eab_mac_key",
    "tls_acme_email",
    "tls_acme_key_type",
    "tls_acme_test_ca_directory",
    "tls_auto_reload",
    "tls_auto_reload_interval",
    "tls_cipher_suites",
    "tls_key_exchange_preferences",
    "tls_prefer_server_cipher_suites",
    "unauthenticated_metrics_access",
    "x_forwarded_for_authorized_addrs",
    "x_forwarded_for_client_cert_decoders",
    "x_forwarded_for_client_cert_header",
    "x_forwarded_for_client_cert_keep_not_forwarded",
    "x_forwarded_for_client_cert_keep_unauthorized",
    "x_forwarded_for_hop_skips",
    "x_forwarded_for_reject_not_authorized",
    "x_forwarded_for_reject_not_present",
];

const IGNORED_RAFT: &[&str] = &[
    "apply_delay",
    "autopilot_redundancy_zone",
    "autopilot_upgrade_version",
    "max_batch_entries",
    "max_batch_size",
    "max_mount_and_namespace_table_entry_size",
    "raft_log_verification_interval",
    "raft_log_verifier_enabled",
    "raft_wal",
    "snapshot_delay",
];

/// What one file says; `None` means the file does not mention the setting.
#[derive(Default)]
struct Layer {
    file: String,
    storage: Option<StorageDraft>,
    ha_storage: Option<StorageDraft>,
    listeners: Vec<ListenerDraft>,
    api_addr: Option<String>,
    cluster_addr: Option<String>,
    cluster_name: Option<String>,
    log_level: Option<String>,
    disable_mlock: Option<bool>,
    disable_clustering: Option<bool>,
    ui: Option<bool>,
    disable_performance_standby: Option<bool>,
    disable_standby_reads: Option<bool>,
    enable_response_header_hostname: Option<bool>,
    enable_response_header_raft_node_id: Option<bool>,
    default_lease_ttl: Option<Duration>,
    max_lease_ttl: Option<Duration>,
    default_max_request_duration: Option<Duration>,
    warnings: Vec<String>,
}

struct StorageDraft {
    storage: Storage,
    /// The stanza name used (`storage`, `backend`, ...), for messages.
    stanza: String,
    /// Vault's legacy per-stanza addresses; top-level settings win over them.
    redirect_addr: Option<String>,
    cluster_addr: Option<String>,
    disable_clustering: Option<bool>,
}

struct ListenerDraft {
    listener: Listener,
    /// Unset until merged, because `default_max_request_duration` may come from another file.
    max_request_duration: Option<Duration>,
}

fn parse_layer(src: &str, file: &str, json: bool) -> Result<Layer, ConfigError> {
    let (entries, parse_warnings) = parse_document(src, file, json)?;
    let mut layer = Layer { file: file.to_string(), warnings: parse_warnings, ..Layer::default() };
    let mut storage_entries: Vec<&Entry> = Vec::new();
    let mut backend_entries: Vec<&Entry> = Vec::new();
    let mut ha_entries: Vec<&Entry> = Vec::new();
    let mut ha_backend_entries: Vec<&Entry> = Vec::new();
    let mut listener_index = 0;
    for e in &entries {
        let (k, v) = (e.key.as_str(), &e.val);
        match k {
            "storage" => storage_entries.push(e),
            "backend" => backend_entries.push(e),
            "ha_storage" => ha_entries.push(e),
            "ha_backend" => ha_backend_entries.push(e),
            "listener" => {
                for block in labelled_bodies(v, file, "listener")? {
                    layer.listeners.push(parse_listener(
                        file,
                        listener_index,
                        &block,
                        &mut layer.warnings,
                    )?);
                    listener_index += 1;
                }
            }
            "api_addr" => layer.api_addr = check_addr_setting(v, file, k)?,
            "cluster_addr" => {
                layer.cluster_addr = check_addr_setting(v, file, k)?.map(|a| force_https(&a))
            }
            "cluster_name" => layer.cluster_name = get_nonempty(v, file, k)?,
            "log_level" => layer.log_level = parse_log_level(v, file)?,
            "disable_mlock" => layer.disable_mlock = get_bool(v, file, k)?,
            "disable_clustering" => layer.disable_clustering = get_bool(v, file, k)?,
            "ui" => layer.ui = get_bool(v, file, k)?,
            "disable_performance_standby" => {
                layer.disable_performance_standby = get_bool(v, file, k)?
            }
            "disable_standby_reads" => layer.disable_standby_reads = get_bool(v, file, k)?,
            "enable_response_header_hostname" => {
                layer.enable_response_header_hostname = get_bool(v, file, k)?
            }
            "enable_response_header_raft_node_id" => {
                layer.enable_response_header_raft_node_id = get_bool(v, file, k)?
            }
            "default_lease_ttl" => layer.default_lease_ttl = get_duration(v, file, k)?,
            "max_lease_ttl" => layer.max_lease_ttl = get_duration(v, file, k)?,
            "default_max_request_duration" => {
                layer.default_max_request_duration = get_duration(v, file, k)?
            }
            "seal" => {
                for block in labelled_bodies(v, file, "seal")? {
                    let kind = block.label.as_ref().map_or("", |(l, _)| l.as_str());
                    if !kind.eq_ignore_ascii_case("shamir") {
                        layer.warnings.push(format!(
                            "seal {kind:?} is not supported by vaultd and is ignored: the barrier \
                             key is protected by Shamir unseal keys (at {})",
                            location(file, e.pos)
                        ));
                    }
                }
            }
            _ if IGNORED_TOP_LEVEL.contains(&k) => {
                layer.warnings.push(ignored_key_warning(file, k, e.pos))
            }
            _ => layer.warnings.push(unknown_key_warning(file, k, e.pos)),
        }
    }
    // Vault reads the legacy `backend` name only when `storage` is absent.
    if !storage_entries.is_empty() && !backend_entries.is_empty() {
        layer.warnings.push(format!(
            "both storage and backend are set in {file}; backend is ignored (as in Vault)"
        ));
        backend_entries.clear();
    }
    if !ha_entries.is_empty() && !ha_backend_entries.is_empty() {
        layer.warnings.push(format!(
            "both ha_storage and ha_backend are set in {file}; ha_backend is ignored (as in Vault)"
        ));
        ha_backend_entries.clear();
    }
    let (storage_name, storage_list) = if storage_entries.is_empty() {
        ("backend", backend_entries)
    } else {
        ("storage", storage_entries)
    };
    layer.storage = parse_storage_stanza(file, storage_name, &storage_list, &mut layer.warnings)?;
    let (ha_name, ha_list) = if ha_entries.is_empty() {
        ("ha_backend", ha_backend_entries)
    } else {
        ("ha_storage", ha_entries)
    };
    layer.ha_storage = parse_storage_stanza(file, ha_name, &ha_list, &mut layer.warnings)?;
    Ok(layer)
}

fn check_addr_setting(v: &Val, file: &str, key: &str) -> Result<Option<String>, ConfigError> {
    let Some(addr) = get_nonempty(v, file, key)? else {
        return Ok(None);
    };
    check_url(&addr).map_err(|e| invalid(file, key, format!("invalid URL {addr:?}: {e}")))?;
    Ok(Some(addr))
}

/// OpenBao's accepted spellings (`loghelper.ParseLogLevel`), normalised.
fn parse_log_level(v: &Val, file: &str) -> Result<Option<String>, ConfigError> {
    let Some(raw) = get_string(v, file, "log_level")? else {
        return Ok(None);
    };
    let level = match raw.trim().to_ascii_lowercase().as_str() {
        "" => return Ok(None),
        "trace" => "trace",
        "debug" => "debug",
        "info" | "notice" => "info",
        "warn" | "warning" => "warn",
        "err" | "error" => "error",
        _ => {
            return Err(invalid(
                file,
                "log_level",
                format!("unknown log level: {raw:?} (use trace, debug, info, warn or error)"),
            ))
        }
    };
    Ok(Some(level.to_string()))
}

fn parse_storage_stanza(
    file: &str,
    name: &str,
    entries: &[&Entry],
    warnings: &mut Vec<String>,
) -> Result<Option<StorageDraft>, ConfigError> {
    let mut blocks = Vec::new();
    for e in entries {
        blocks.extend(labelled_bodies(&e.val, file, name)?);
    }
    let block = match blocks.as_slice() {
        [] => return Ok(None),
        [one] => one,
        _ => return Err(invalid(file, name, format!("only one {name:?} block is permitted"))),
    };
    let Some((label, _)) = &block.label else {
        return Err(invalid(
            file,
            name,
            format!("storage type must be specified, e.g. {name} \"raft\" {{ ... }}"),
        ));
    };
    let kind = label.to_ascii_lowercase();
    let prefix = format!("{name}.{kind}");
    let mut options = flatten_options(block.body);
    let mut draft = StorageDraft {
        stanza: name.to_string(),
        redirect_addr: options.remove("redirect_addr").or_else(|| options.remove("advertise_addr")),
        cluster_addr: options.remove("cluster_addr"),
        disable_clustering: None,
        storage: Storage { kind: kind.clone(), raft: None, options: BTreeMap::new() },
    };
    options.remove("advertise_addr");
    if let Some(raw) = options.remove("disable_clustering") {
        draft.disable_clustering =
            get_bool(&Val::Str(raw), file, &format!("{prefix}.disable_clustering"))?;
    }
    for (key, addr) in
        [("redirect_addr", &draft.redirect_addr), ("cluster_addr", &draft.cluster_addr)]
    {
        if let Some(a) = addr {
            check_url(a).map_err(|e| {
                invalid(file, format!("{prefix}.{key}"), format!("invalid URL {a:?}: {e}"))
            })?;
        }
    }
    draft.storage.options = options;
    if kind == "raft" {
        draft.storage.raft = Some(parse_raft(file, &prefix, block.body, warnings)?);
    }
    Ok(Some(draft))
}

/// Vault hands storage backends a `map[string]string`: strings as they are, everything else
/// JSON-encoded. A key given more than once (repeated blocks) becomes a JSON array.
fn flatten_options(body: &[Entry]) -> BTreeMap<String, String> {
    let mut grouped: Vec<(String, Vec<&Val>)> = Vec::new();
    for e in body {
        match grouped.iter_mut().find(|(k, _)| *k == e.key) {
            Some((_, vals)) => vals.push(&e.val),
            None => grouped.push((e.key.clone(), vec![&e.val])),
        }
    }
    let mut out = BTreeMap::new();
    for (key, vals) in grouped {
        let text = match vals.as_slice() {
            [Val::Str(s)] => s.clone(),
            [one] => to_json(one).to_string(),
            many => {
                let mut items = Vec::new();
                for v in many {
                    match v {
                        Val::List(inner) => items.extend(inner.iter().map(to_json)),
                        other => items.push(to_json(other)),
                    }
                }
                serde_json::Value::Array(items).to_string()
            }
        };
        out.insert(key, text);
    }
    out
}

fn to_json(v: &Val) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Val::Null => J::Null,
        Val::Bool(b) => J::Bool(*b),
        Val::Int(i) => J::from(*i),
        Val::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Val::Str(s) => J::String(s.clone()),
        Val::List(items) => J::Array(items.iter().map(to_json).collect()),
        // Repeated blocks inside a stanza (retry_join) are decoded by Vault as a list.
        Val::Obj(entries) => {
            let mut map = serde_json::Map::new();
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for e in entries {
                *counts.entry(e.key.as_str()).or_default() += 1;
            }
            for e in entries {
                if counts.get(e.key.as_str()).copied().unwrap_or(0) > 1 {
                    let slot = map.entry(e.key.clone()).or_insert_with(|| J::Array(Vec::new()));
                    if let J::Array(items) = slot {
                        items.push(to_json(&e.val));
                    }
                } else {
                    map.insert(e.key.clone(), to_json(&e.val));
                }
            }
            J::Object(map)
        }
    }
}

fn parse_raft(
    file: &str,
    prefix: &str,
    body: &[Entry],
    warnings: &mut Vec<String>,
) -> Result<RaftStorage, ConfigError> {
    let mut raft = RaftStorage::default();
    let mut reconcile_set = false;
    let mut update_set = false;
    let mut retry_join_bodies = Vec::new();
    for e in body {
        let key = format!("{prefix}.{}", e.key);
        let v = &e.val;
        match e.key.as_str() {
            "path" => {
                raft.path = get_nonempty(v, file, &key)?.map(PathBuf::from).unwrap_or_default()
            }
            "node_id" => raft.node_id = get_nonempty(v, file, &key)?,
            "performance_multiplier" => {
                if let Some(m) = get_u64(v, file, &key)? {
                    raft.performance_multiplier = match u32::try_from(m) {
                        Ok(0) => 5,
                        Ok(m) => m,
                        Err(_) => return Err(invalid(file, &key, format!("{m} is too large"))),
                    };
                }
            }
            "trailing_logs" => set_u64(&mut raft.trailing_logs, v, file, &key)?,
            "snapshot_threshold" => set_u64(&mut raft.snapshot_threshold, v, file, &key)?,
            "max_entry_size" => {
                set_u64(&mut raft.max_entry_size, v, file, &key)?;
                if raft.max_entry_size == 0 {
                    return Err(invalid(file, &key, "must be greater than 0"));
                }
            }
            "max_transaction_size" => set_u64(&mut raft.max_transaction_size, v, file, &key)?,
            "snapshot_interval" => {
                if let Some(d) = get_duration(v, file, &key)? {
                    raft.snapshot_interval = d;
                }
            }
            "autopilot_reconcile_interval" => {
                if let Some(d) = get_duration(v, file, &key)?.filter(|d| !d.is_zero()) {
                    raft.autopilot_reconcile_interval = d;
                    reconcile_set = true;
                }
            }
            "autopilot_update_interval" => {
                if let Some(d) = get_duration(v, file, &key)?.filter(|d| !d.is_zero()) {
                    raft.autopilot_update_interval = d;
                    update_set = true;
                }
            }
            "retry_join_as_non_voter" => {
                raft.retry_join_as_non_voter = get_bool(v, file, &key)?.unwrap_or(false)
            }
            "retry_join" => retry_join_bodies.extend(stanza_bodies(v, file, &key)?),
            // Consumed by parse_storage_stanza, common to every storage type.
            "redirect_addr" | "advertise_addr" | "cluster_addr" | "disable_clustering" => {}
            k if IGNORED_RAFT.contains(&k) => warnings.push(ignored_key_warning(file, &key, e.pos)),
            _ => warnings.push(unknown_key_warning(file, &key, e.pos)),
        }
    }
    if raft.autopilot_reconcile_interval < raft.autopilot_update_interval {
        let key = if reconcile_set || !update_set {
            "autopilot_reconcile_interval"
        } else {
            "autopilot_update_interval"
        };
        return Err(invalid(
            file,
            format!("{prefix}.{key}"),
            format!(
                "autopilot_reconcile_interval ({}) should be larger than autopilot_update_interval ({})",
                format_duration_go(raft.autopilot_reconcile_interval),
                format_duration_go(raft.autopilot_update_interval)
            ),
        ));
    }
    for (i, body) in retry_join_bodies.into_iter().enumerate() {
        raft.retry_join.push(parse_retry_join(
            file,
            &format!("{prefix}.retry_join.{i}"),
            body,
            warnings,
        )?);
    }
    Ok(raft)
}

fn set_u64(slot: &mut u64, v: &Val, file: &str, key: &str) -> Result<(), ConfigError> {
    if let Some(n) = get_u64(v, file, key)? {
        *slot = n;
    }
    Ok(())
}

fn parse_retry_join(
    file: &str,
    prefix: &str,
    body: &[Entry],
    warnings: &mut Vec<String>,
) -> Result<RetryJoin, ConfigError> {
    let mut rj = RetryJoin::default();
    for e in body {
        let key = format!("{prefix}.{}", e.key);
        let v = &e.val;
        let text = || get_nonempty(v, file, &key);
        match e.key.as_str() {
            "leader_api_addr" => rj.leader_api_addr = text()?,
            "leader_tls_servername" => rj.leader_tls_servername = text()?,
            "leader_ca_cert_file" => rj.leader_ca_cert_file = text()?.map(PathBuf::from),
            "leader_client_cert_file" => rj.leader_client_cert_file = text()?.map(PathBuf::from),
            "leader_client_key_file" => rj.leader_client_key_file = text()?.map(PathBuf::from),
            "leader_ca_cert" => rj.leader_ca_cert = text()?,
            "leader_client_cert" => rj.leader_client_cert = text()?,
            "leader_client_key" => rj.leader_client_key = text()?,
            "auto_join" => rj.auto_join = text()?,
            "auto_join_scheme" => {
                if let Some(s) = text()? {
                    rj.auto_join_scheme = s;
                }
            }
            "auto_join_port" => {
                if let Some(p) = get_u64(v, file, &key)? {
                    rj.auto_join_port = u16::try_from(p)
                        .map_err(|_| invalid(file, &key, format!("invalid port {p}")))?;
                }
            }
            _ => warnings.push(unknown_key_warning(file, &key, e.pos)),
        }
    }
    match (&rj.leader_api_addr, &rj.auto_join) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                file,
                prefix,
                "cannot provide both a leader_api_addr and auto_join",
            ))
        }
        (None, None) => {
            return Err(invalid(file, prefix, "one of leader_api_addr or auto_join must be set"))
        }
        (Some(addr), None) => check_url(addr).map_err(|e| {
            invalid(file, format!("{prefix}.leader_api_addr"), format!("invalid URL {addr:?}: {e}"))
        })?,
        (None, Some(_)) => {}
    }
    if rj.auto_join_scheme != "http" && rj.auto_join_scheme != "https" {
        return Err(invalid(
            file,
            format!("{prefix}.auto_join_scheme"),
            format!("invalid scheme {:?}; must either be http or https", rj.auto_join_scheme),
        ));
    }
    let pairs = [
        (
            "leader_ca_cert_file",
            rj.leader_ca_cert_file.is_some(),
            "leader_ca_cert",
            rj.leader_ca_cert.is_some(),
        ),
        (
            "leader_client_cert_file",
            rj.leader_client_cert_file.is_some(),
            "leader_client_cert",
            rj.leader_client_cert.is_some(),
        ),
        (
            "leader_client_key_file",
            rj.leader_client_key_file.is_some(),
            "leader_client_key",
            rj.leader_client_key.is_some(),
        ),
    ];
    let uses_files = pairs.iter().any(|p| p.1);
    let uses_inline = pairs.iter().any(|p| p.3);
    if uses_files && uses_inline {
        let file_keys: Vec<&str> = pairs.iter().filter(|p| p.1).map(|p| p.0).collect();
        let inline_keys: Vec<&str> = pairs.iter().filter(|p| p.3).map(|p| p.2).collect();
        return Err(invalid(
            file,
            prefix,
            format!(
                "TLS material must come either from files ({}) or inline PEM ({}), not both",
                file_keys.join(", "),
                inline_keys.join(", ")
            ),
        ));
    }
    let cert = rj.leader_client_cert_file.is_some() || rj.leader_client_cert.is_some();
    let key = rj.leader_client_key_file.is_some() || rj.leader_client_key.is_some();
    if cert != key {
        return Err(invalid(
            file,
            prefix,
            "a client certificate and its key must be given together (leader_client_cert[_file] and leader_client_key[_file])",
        ));
    }
    Ok(rj)
}

fn parse_listener(
    file: &str,
    index: usize,
    block: &Labelled<'_>,
    warnings: &mut Vec<String>,
) -> Result<ListenerDraft, ConfigError> {
    let prefix = format!("listener.{index}");
    let field = |name: &str| format!("{prefix}.{name}");
    let mut kind = block.label.as_ref().map(|(l, _)| l.to_ascii_lowercase());
    let mut address = None;
    let mut cluster_address = None;
    let mut tls_disable = false;
    let mut tls_cert_file = None;
    let mut tls_key_file = None;
    let mut tls_client_ca_file = None;
    let mut require_client_cert = false;
    let mut disable_client_certs = false;
    let mut min_raw: Option<String> = None;
    let mut max_raw: Option<String> = None;
    let mut max_request_size: Option<i64> = None;
    let mut max_request_duration = None;
    for e in block.body {
        let key = field(&e.key);
        let v = &e.val;
        match e.key.as_str() {
            "type" => {
                if let Some(t) = get_nonempty(v, file, &key)? {
                    kind = Some(t.to_ascii_lowercase());
                }
            }
            "address" => address = get_nonempty(v, file, &key)?,
            "cluster_address" => cluster_address = get_nonempty(v, file, &key)?,
            "tls_disable" => tls_disable = get_bool(v, file, &key)?.unwrap_or(false),
            "tls_cert_file" => tls_cert_file = get_nonempty(v, file, &key)?.map(PathBuf::from),
            "tls_key_file" => tls_key_file = get_nonempty(v, file, &key)?.map(PathBuf::from),
            "tls_client_ca_file" => {
                tls_client_ca_file = get_nonempty(v, file, &key)?.map(PathBuf::from)
            }
            "tls_require_and_verify_client_cert" => {
                require_client_cert = get_bool(v, file, &key)?.unwrap_or(false)
            }
            "tls_disable_client_certs" => {
                disable_client_certs = get_bool(v, file, &key)?.unwrap_or(false)
            }
            "tls_min_version" => min_raw = get_nonempty(v, file, &key)?,
            "tls_max_version" => max_raw = get_nonempty(v, file, &key)?,
            "max_request_size" => max_request_size = get_i64(v, file, &key)?,
            "max_request_duration" => max_request_duration = get_duration(v, file, &key)?,
            k if IGNORED_LISTENER.contains(&k) => {
                warnings.push(ignored_key_warning(file, &key, e.pos))
            }
            _ => warnings.push(unknown_key_warning(file, &key, e.pos)),
        }
    }
    match kind.as_deref() {
        Some("tcp") => {}
        None => return Err(invalid(file, &prefix, "listener type must be specified")),
        Some("unix") => {
            return Err(invalid(
                file,
                &prefix,
                "listener type \"unix\" is not supported by vaultd; use \"tcp\"",
            ))
        }
        Some(other) => {
            return Err(invalid(file, &prefix, format!("unsupported listener type {other:?}")))
        }
    }
    let address = address.unwrap_or_else(|| DEFAULT_LISTEN_ADDRESS.to_string());
    let (host, port) = split_host_port(&address).map_err(|e| {
        invalid(file, field("address"), format!("invalid address {address:?}: {e}"))
    })?;
    let cluster_address = match cluster_address {
        Some(c) => {
            split_host_port(&c).map_err(|e| {
                invalid(file, field("cluster_address"), format!("invalid address {c:?}: {e}"))
            })?;
            c
        }
        None => match port {
            0 => join_host_port(&host, 0),
            u16::MAX => {
                return Err(invalid(
                    file,
                    field("cluster_address"),
                    format!(
                        "cannot derive a cluster address from {address:?} (port + 1 overflows); set cluster_address"
                    ),
                ))
            }
            p => join_host_port(&host, p + 1),
        },
    };
    let describe = || format!("listener \"tcp\" at {address:?}");
    let mut tls_min_version = TlsVersion::Tls12;
    let mut tls_max_version = TlsVersion::Tls13;
    if tls_disable {
        // Vault ignores TLS settings on a plain listener; say so rather than fail.
        for (name, raw) in [("tls_min_version", &min_raw), ("tls_max_version", &max_raw)] {
            if let Some(r) = raw {
                if parse_tls_version(r).is_err() {
                    warnings.push(format!(
                        "{}: {name} {r:?} is ignored because tls_disable is set (in {file})",
                        field(name)
                    ));
                }
            }
        }
    } else {
        match (&tls_cert_file, &tls_key_file) {
            (Some(_), Some(_)) => {}
            (None, None) => {
                return Err(invalid(
                    file,
                    &prefix,
                    format!(
                        "{} has TLS enabled but neither tls_cert_file nor tls_key_file is set; \
                         set both, or set tls_disable = true",
                        describe()
                    ),
                ))
            }
            (Some(_), None) => {
                return Err(invalid(
                    file,
                    field("tls_key_file"),
                    format!("{} has tls_cert_file but no tls_key_file", describe()),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    file,
                    field("tls_cert_file"),
                    format!("{} has tls_key_file but no tls_cert_file", describe()),
                ))
            }
        }
        if let Some(r) = &min_raw {
            tls_min_version =
                parse_tls_version(r).map_err(|e| invalid(file, field("tls_min_version"), e))?;
        }
        if let Some(r) = &max_raw {
            tls_max_version =
                parse_tls_version(r).map_err(|e| invalid(file, field("tls_max_version"), e))?;
        }
        if tls_max_version < tls_min_version {
            return Err(invalid(
                file,
                field("tls_max_version"),
                "'tls_max_version' must be greater than or equal to 'tls_min_version'",
            ));
        }
        if require_client_cert && disable_client_certs {
            return Err(invalid(
                file,
                &prefix,
                "'tls_disable_client_certs' and 'tls_require_and_verify_client_cert' are mutually exclusive",
            ));
        }
    }
    let max_request_size = match max_request_size {
        None | Some(0) => Some(DEFAULT_MAX_REQUEST_SIZE),
        Some(n) => u64::try_from(n).ok(),
    };
    Ok(ListenerDraft {
        max_request_duration,
        listener: Listener {
            kind: "tcp".to_string(),
            address: address.clone(),
            cluster_address,
            tls_disable,
            tls_cert_file,
            tls_key_file,
            tls_client_ca_file,
            tls_require_and_verify_client_cert: require_client_cert,
            tls_disable_client_certs: disable_client_certs,
            tls_min_version,
            tls_max_version,
            max_request_size,
            max_request_duration: DEFAULT_MAX_REQUEST_DURATION,
        },
    })
}

fn parse_tls_version(raw: &str) -> Result<TlsVersion, String> {
    match raw {
        "tls12" => Ok(TlsVersion::Tls12),
        "tls13" => Ok(TlsVersion::Tls13),
        "tls10" | "tls11" => Err(format!(
            "{raw:?} is accepted by Vault but not supported by vaultd (TLS 1.0 and 1.1 are \
             obsolete); use tls12 or tls13"
        )),
        other => Err(format!("value {other:?} not supported, please specify one of [tls12,tls13]")),
    }
}

// ---------------------------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------------------------

/// Go's `net.SplitHostPort` for listen addresses: `host:port`, `[v6]:port`, or `:port`.
fn split_host_port(addr: &str) -> Result<(String, u16), String> {
    if addr.contains("{{") {
        return Err(
            "go-sockaddr templates ({{ ... }}) are not supported by vaultd; use a literal address"
                .to_string(),
        );
    }
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("missing ']' in address")?;
        let port = after.strip_prefix(':').ok_or("missing port in address")?;
        (host, port)
    } else {
        let (host, port) = addr.rsplit_once(':').ok_or("missing port in address")?;
        if host.contains(':') {
            return Err("too many colons in address (put IPv6 addresses in brackets)".to_string());
        }
        (host, port)
    };
    let port = port.parse::<u16>().map_err(|_| format!("invalid port {port:?}"))?;
    Ok((host.to_string(), port))
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn default_cluster_address(address: &str) -> Option<String> {
    let (host, port) = split_host_port(address).ok()?;
    Some(join_host_port(&host, if port == 0 { 0 } else { port.checked_add(1)? }))
}

/// An advertised address: `http(s)://host[:port]`, optionally with a trailing `/`. The port is
/// optional because Vault deployments behind a load balancer commonly omit it.
fn check_url(url: &str) -> Result<(), String> {
    if url.contains("{{") {
        return Err(
            "go-sockaddr templates ({{ ... }}) are not supported by vaultd; use a literal address"
                .to_string(),
        );
    }
    let (scheme, rest) =
        url.split_once("://").ok_or("missing scheme; expected http(s)://host:port")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(format!("unsupported scheme {scheme:?}; expected http or https"));
    }
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !path.is_empty() && path != "/" {
        return Err("must not contain a path, query or fragment".to_string());
    }
    if authority.contains('@') {
        return Err("must not contain user information".to_string());
    }
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (host, after) = inner.split_once(']').ok_or("missing ']' in host")?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or("unexpected text after ']'")?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err("IPv6 hosts must be in brackets, e.g. https://[::1]:8200".to_string())
            }
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("missing host".to_string());
    }
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err(format!("invalid port {p:?}")),
        }
    }
    Ok(())
}

/// The cluster port always speaks TLS; Vault rewrites the scheme the same way.
fn force_https(addr: &str) -> String {
    match addr.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => format!("https://{rest}"),
        _ => addr.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Files and merging
// ---------------------------------------------------------------------------------------------

fn expand_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = Vec::new();
    let mut seen = HashSet::new();
    for path in paths {
        let io = |source| ConfigError::Io { path: path.display().to_string(), source };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mut batch = Vec::new();
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).map_err(io)? {
                let entry_path = entry.map_err(io)?.path();
                if entry_path.is_dir() || !is_config_file_name(&entry_path) {
                    continue;
                }
                batch.push(entry_path);
            }
            // Go's Readdir order is whatever the file system returns; sorting makes it stable.
            batch.sort();
        } else {
            batch.push(path.clone());
        }
        for file in batch {
            // A file named both directly and through its directory is read once (Vault skips it too).
            let identity = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
            if seen.insert(identity) {
                files.push(file);
            }
        }
    }
    Ok(files)
}

/// `*.hcl` or `*.json`, skipping vim (`~`) and emacs (`.#x`, `#x#`) temporary files, as Vault does.
fn is_config_file_name(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let temporary = name.ends_with('~')
        || name.starts_with(".#")
        || (name.starts_with('#') && name.ends_with('#'));
    !temporary && (name.ends_with(".hcl") || name.ends_with(".json"))
}

/// The merge of every layer so far, remembering which file set what.
#[derive(Default)]
struct Merged {
    storage: Option<StorageDraft>,
    ha_storage: Option<StorageDraft>,
    listeners: Vec<ListenerDraft>,
    api_addr: Option<String>,
    cluster_addr: Option<String>,
    cluster_name: Option<String>,
    log_level: Option<String>,
    disable_mlock: Option<bool>,
    disable_clustering: Option<bool>,
    ui: Option<bool>,
    disable_performance_standby: Option<bool>,
    disable_standby_reads: Option<bool>,
    enable_response_header_hostname: Option<bool>,
    enable_response_header_raft_node_id: Option<bool>,
    default_lease_ttl: Option<Duration>,
    max_lease_ttl: Option<Duration>,
    default_max_request_duration: Option<Duration>,
    warnings: Vec<String>,
    files: Vec<PathBuf>,
    sources: BTreeMap<String, String>,
}

impl Merged {
    fn absorb(&mut self, layer: Layer) -> Result<(), ConfigError> {
        let file = layer.file;
        macro_rules! later_wins {
            ($($field:ident),* $(,)?) => {$(
                if let Some(v) = layer.$field {
                    self.$field = Some(v);
                    self.sources.insert(stringify!($field).to_string(), file.clone());
                }
            )*};
        }
        later_wins!(
            api_addr,
            cluster_addr,
            cluster_name,
            log_level,
            disable_mlock,
            disable_clustering,
            ui,
            disable_performance_standby,
            disable_standby_reads,
            enable_response_header_hostname,
            enable_response_header_raft_node_id,
            default_lease_ttl,
            max_lease_ttl,
            default_max_request_duration,
        );
        for (slot, draft, key) in [
            (&mut self.storage, layer.storage, "storage"),
            (&mut self.ha_storage, layer.ha_storage, "ha_storage"),
        ] {
            let Some(draft) = draft else { continue };
            if slot.is_some() {
                let first = self.sources.get(key).cloned().unwrap_or_default();
                return Err(invalid(
                    &file,
                    &draft.stanza,
                    format!("a {key} stanza is already defined in {first}; only one is permitted"),
                ));
            }
            *slot = Some(draft);
            self.sources.insert(key.to_string(), file.clone());
        }
        for listener in layer.listeners {
            self.sources.insert(format!("listener.{}", self.listeners.len()), file.clone());
            self.listeners.push(listener);
        }
        self.warnings.extend(layer.warnings);
        Ok(())
    }

    fn finish(mut self) -> Result<Config, ConfigError> {
        // Vault's legacy per-stanza addresses apply only where the top level is silent;
        // ha_storage is consulted first because Vault takes HA addresses from it when present.
        for (key, draft) in [("ha_storage", &self.ha_storage), ("storage", &self.storage)] {
            let Some(d) = draft else { continue };
            let file = self.sources.get(key).cloned().unwrap_or_default();
            if self.api_addr.is_none() {
                if let Some(a) = &d.redirect_addr {
                    self.api_addr = Some(a.clone());
                    self.sources.insert("api_addr".to_string(), file.clone());
                }
            }
            if self.cluster_addr.is_none() {
                if let Some(a) = &d.cluster_addr {
                    self.cluster_addr = Some(force_https(a));
                    self.sources.insert("cluster_addr".to_string(), file.clone());
                }
            }
            if self.disable_clustering.is_none() {
                if let Some(b) = d.disable_clustering {
                    self.disable_clustering = Some(b);
                    self.sources.insert("disable_clustering".to_string(), file);
                }
            }
        }
        let default_ttl = self.default_lease_ttl.unwrap_or(DEFAULT_LEASE_TTL);
        let max_ttl = self.max_lease_ttl.unwrap_or(DEFAULT_LEASE_TTL);
        if default_ttl > max_ttl {
            let key = if self.default_lease_ttl.is_some() {
                "default_lease_ttl"
            } else {
                "max_lease_ttl"
            };
            let file = self.sources.get(key).cloned().unwrap_or_default();
            return Err(invalid(
                &file,
                key,
                format!(
                    "default_lease_ttl ({}) cannot be larger than max_lease_ttl ({})",
                    format_duration_go(default_ttl),
                    format_duration_go(max_ttl)
                ),
            ));
        }
        let fallback_duration =
            self.default_max_request_duration.unwrap_or(DEFAULT_MAX_REQUEST_DURATION);
        let listeners = self
            .listeners
            .into_iter()
            .map(|d| Listener {
                max_request_duration: d
                    .max_request_duration
                    .filter(|t| !t.is_zero())
                    .unwrap_or(fallback_duration),
                ..d.listener
            })
            .collect();
        Ok(Config {
            storage: self.storage.map(|d| d.storage),
            ha_storage: self.ha_storage.map(|d| d.storage),
            listeners,
            api_addr: self.api_addr,
            cluster_addr: self.cluster_addr,
            cluster_name: self.cluster_name,
            disable_mlock: self.disable_mlock.unwrap_or(false),
            disable_clustering: self.disable_clustering.unwrap_or(false),
            log_level: self.log_level,
            ui: self.ui.unwrap_or(false),
            default_lease_ttl: self.default_lease_ttl,
            max_lease_ttl: self.max_lease_ttl,
            default_max_request_duration: self.default_max_request_duration,
            disable_performance_standby: self.disable_performance_standby.unwrap_or(false),
            disable_standby_reads: self.disable_standby_reads.unwrap_or(false),
            enable_response_header_hostname: self.enable_response_header_hostname.unwrap_or(false),
            enable_response_header_raft_node_id: self
                .enable_response_header_raft_node_id
                .unwrap_or(false),
            warnings: self.warnings,
            files: self.files,
            sources: self.sources,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The integrated-storage example from Vault's documentation, with TLS material on disk.
    const DOCS_RAFT_HCL: &str = r#"
storage "raft" {
  path    = "/opt/vault/data"
  node_id = "raft_node_1"

  retry_join {
    leader_api_addr         = "https://vault-2.example.com:8200"
    leader_ca_cert_file     = "/opt/vault/tls/ca.pem"
    leader_client_cert_file = "/opt/vault/tls/client.pem"
    leader_client_key_file  = "/opt/vault/tls/client-key.pem"
  }
  retry_join {
    leader_api_addr         = "https://vault-3.example.com:8200"
    leader_tls_servername   = "vault.example.com"
    leader_ca_cert_file     = "/opt/vault/tls/ca.pem"
    leader_client_cert_file = "/opt/vault/tls/client.pem"
    leader_client_key_file  = "/opt/vault/tls/client-key.pem"
  }
}

listener "tcp" {
  address            = "0.0.0.0:8200"
  cluster_address    = "0.0.0.0:8201"
  tls_cert_file      = "/opt/vault/tls/vault.pem"
  tls_key_file       = "/opt/vault/tls/vault-key.pem"
  tls_min_version    = "tls13"
}

api_addr          = "https://vault-1.example.com:8200"
cluster_addr      = "https://vault-1.example.com:8201"
cluster_name      = "prod"
disable_mlock     = true
ui                = true
log_level         = "Info"
default_lease_ttl = "768h"
max_lease_ttl     = "8760h"
"#;

    const SECOND_LISTENER: &str = r#"
listener "tcp" {
  address          = "127.0.0.1:8210"
  tls_disable      = 1
  max_request_size = -1
}
"#;

    fn parse(src: &str) -> Config {
        match from_str(src, "config.hcl", false) {
            Ok(c) => c,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    fn parse_err(src: &str) -> String {
        match from_str(src, "config.hcl", false) {
            Ok(c) => panic!("expected an error, got {c:#?}"),
            Err(e) => e.to_string(),
        }
    }

    fn server_err(config: &Config) -> String {
        match config.validate_for_server() {
            Ok(()) => panic!("expected a validation error"),
            Err(e) => e.to_string(),
        }
    }

    /// A minimal valid raft server config, with `extra` appended at the top level.
    fn raft_config(extra: &str) -> String {
        format!(
            r#"
storage "raft" {{
  path    = "/data"
  node_id = "n1"
}}
listener "tcp" {{
  address     = "127.0.0.1:8200"
  tls_disable = true
}}
api_addr     = "http://127.0.0.1:8200"
cluster_addr = "https://127.0.0.1:8201"
{extra}
"#
        )
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn docs_raft_config_one_listener() {
        let c = parse(DOCS_RAFT_HCL);
        let storage = c.storage.as_ref().unwrap();
        assert_eq!(storage.kind, "raft");
        let raft = storage.raft.as_ref().unwrap();
        assert_eq!(raft.path, PathBuf::from("/opt/vault/data"));
        assert_eq!(raft.node_id.as_deref(), Some("raft_node_1"));
        assert_eq!(raft.performance_multiplier, 5);
        assert_eq!(raft.trailing_logs, 10240);
        assert_eq!(raft.snapshot_threshold, 8192);
        assert_eq!(raft.max_entry_size, 1 << 20);
        assert_eq!(raft.autopilot_reconcile_interval, Duration::from_secs(10));
        assert_eq!(raft.retry_join.len(), 2);
        let rj = &raft.retry_join[0];
        assert_eq!(rj.leader_api_addr.as_deref(), Some("https://vault-2.example.com:8200"));
        assert_eq!(rj.leader_ca_cert_file, Some(PathBuf::from("/opt/vault/tls/ca.pem")));
        assert_eq!(rj.leader_client_key_file, Some(PathBuf::from("/opt/vault/tls/client-key.pem")));
        assert_eq!(rj.auto_join_scheme, "https");
        assert_eq!(rj.auto_join_port, 8200);
        assert_eq!(raft.retry_join[1].leader_tls_servername.as_deref(), Some("vault.example.com"));
        // Vault's storage backends see retry_join as a JSON array.
        let opts: serde_json::Value = serde_json::from_str(&storage.options["retry_join"]).unwrap();
        assert_eq!(opts.as_array().map(Vec::len), Some(2));
        assert_eq!(storage.options["node_id"], "raft_node_1");

        assert_eq!(c.listeners.len(), 1);
        let l = &c.listeners[0];
        assert_eq!(l.kind, "tcp");
        assert_eq!(l.address, "0.0.0.0:8200");
        assert_eq!(l.cluster_address, "0.0.0.0:8201");
        assert!(!l.tls_disable);
        assert_eq!(l.tls_cert_file, Some(PathBuf::from("/opt/vault/tls/vault.pem")));
        assert_eq!(l.tls_min_version, TlsVersion::Tls13);
        assert_eq!(l.tls_max_version, TlsVersion::Tls13);
        assert_eq!(l.max_request_size, Some(DEFAULT_MAX_REQUEST_SIZE));
        assert_eq!(l.max_request_duration, Duration::from_secs(90));

        assert_eq!(c.api_addr.as_deref(), Some("https://vault-1.example.com:8200"));
        assert_eq!(c.cluster_addr.as_deref(), Some("https://vault-1.example.com:8201"));
        assert_eq!(c.cluster_name.as_deref(), Some("prod"));
        assert!(c.disable_mlock && c.ui && !c.disable_clustering);
        assert_eq!(c.log_level.as_deref(), Some("info"));
        assert_eq!(c.default_lease_ttl, Some(Duration::from_secs(768 * 3600)));
        assert_eq!(c.max_lease_ttl, Some(Duration::from_secs(8760 * 3600)));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.sources["storage"], "config.hcl");
        c.validate_for_server().unwrap();
    }

    #[test]
    fn docs_raft_config_two_listeners() {
        let c = parse(&format!("{DOCS_RAFT_HCL}{SECOND_LISTENER}"));
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.listeners[0].address, "0.0.0.0:8200");
        let l = &c.listeners[1];
        assert_eq!(l.address, "127.0.0.1:8210");
        assert_eq!(l.cluster_address, "127.0.0.1:8211");
        assert!(l.tls_disable);
        assert_eq!(l.max_request_size, None, "negative means unlimited");
        assert_eq!(c.sources["listener.1"], "config.hcl");
        c.validate_for_server().unwrap();
    }

    #[test]
    fn json_equivalent_matches_hcl() {
        let json = r#"{
          "storage": {"raft": {
            "path": "/opt/vault/data",
            "node_id": "raft_node_1",
            "retry_join": [
              {"leader_api_addr": "https://vault-2.example.com:8200",
               "leader_ca_cert_file": "/opt/vault/tls/ca.pem",
               "leader_client_cert_file": "/opt/vault/tls/client.pem",
               "leader_client_key_file": "/opt/vault/tls/client-key.pem"},
              {"leader_api_addr": "https://vault-3.example.com:8200",
               "leader_tls_servername": "vault.example.com",
               "leader_ca_cert_file": "/opt/vault/tls/ca.pem",
               "leader_client_cert_file": "/opt/vault/tls/client.pem",
               "leader_client_key_file": "/opt/vault/tls/client-key.pem"}
            ]}},
          "listener": [
            {"tcp": {"address": "0.0.0.0:8200", "cluster_address": "0.0.0.0:8201",
                     "tls_cert_file": "/opt/vault/tls/vault.pem",
                     "tls_key_file": "/opt/vault/tls/vault-key.pem", "tls_min_version": "tls13"}},
            {"tcp": {"address": "127.0.0.1:8210", "tls_disable": "1", "max_request_size": -1}}
          ],
          "api_addr": "https://vault-1.example.com:8200",
          "cluster_addr": "https://vault-1.example.com:8201",
          "cluster_name": "prod",
          "disable_mlock": true,
          "ui": true,
          "log_level": "Info",
          "default_lease_ttl": "768h",
          "max_lease_ttl": "8760h"
        }"#;
        let from_json = from_str(json, "config.json", true).unwrap();
        let mut from_hcl = parse(&format!("{DOCS_RAFT_HCL}{SECOND_LISTENER}"));
        from_hcl.files = from_json.files.clone();
        from_hcl.sources = from_json.sources.clone();
        assert_eq!(from_json, from_hcl);
    }

    #[test]
    fn json_listener_shapes() {
        let cases = [
            r#"{"listener": {"tcp": {"address": "127.0.0.1:1", "tls_disable": true}}}"#,
            r#"{"listener": [{"tcp": {"address": "127.0.0.1:1", "tls_disable": true}}]}"#,
            r#"{"listener": {"tcp": [{"address": "127.0.0.1:1", "tls_disable": true}]}}"#,
            r#"{"listener": {"type": "tcp", "address": "127.0.0.1:1", "tls_disable": true}}"#,
            r#"{"listener": [{"type": "TCP", "address": "127.0.0.1:1", "tls_disable": true}]}"#,
        ];
        for case in cases {
            let c = from_str(case, "c.json", true).unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(c.listeners.len(), 1, "{case}");
            assert_eq!(c.listeners[0].address, "127.0.0.1:1");
        }
        let two = r#"{"listener": {"tcp": [{"address": "127.0.0.1:1", "tls_disable": true},
                                           {"address": "127.0.0.1:3", "tls_disable": true}]}}"#;
        assert_eq!(from_str(two, "c.json", true).unwrap().listeners.len(), 2);
        // HCL's unlabelled form with a `type` attribute, as Vault accepts.
        let c = parse("listener {\n  type = \"tcp\"\n  tls_disable = true\n}\n");
        assert_eq!(c.listeners[0].address, DEFAULT_LISTEN_ADDRESS);
        assert_eq!(c.listeners[0].cluster_address, "127.0.0.1:8201");
    }

    #[test]
    fn directory_of_files_merges_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "20-listener.hcl", "listener \"tcp\" {\n  address = \"127.0.0.1:8300\"\n  tls_disable = true\n}\nlog_level = \"debug\"\nui = true\n");
        write(dir.path(), "10-storage.hcl", "storage \"raft\" {\n  path = \"/data\"\n}\nlog_level = \"warn\"\napi_addr = \"http://127.0.0.1:8200\"\n");
        write(
            dir.path(),
            "30-more.json",
            r#"{"listener": {"tcp": {"address": "127.0.0.1:8400", "tls_disable": true}}, "log_level": "trace", "cluster_addr": "http://127.0.0.1:8201", "ui": false}"#,
        );
        write(dir.path(), "notes.txt", "not a config {{{");
        write(dir.path(), "40-backup.hcl~", "garbage {{{");
        write(dir.path(), ".#50-lock.hcl", "garbage {{{");
        std::fs::create_dir(dir.path().join("sub.hcl")).unwrap();
        let c = load(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<String> =
            c.files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["10-storage.hcl", "20-listener.hcl", "30-more.json"]);
        assert_eq!(c.log_level.as_deref(), Some("trace"), "later files win");
        assert!(!c.ui, "an explicit later false wins");
        let addrs: Vec<&str> = c.listeners.iter().map(|l| l.address.as_str()).collect();
        assert_eq!(addrs, ["127.0.0.1:8300", "127.0.0.1:8400"], "listeners accumulate");
        assert_eq!(c.cluster_addr.as_deref(), Some("https://127.0.0.1:8201"));
        assert!(c.sources["storage"].ends_with("10-storage.hcl"));
        assert!(c.sources["listener.1"].ends_with("30-more.json"));
        c.validate_for_server().unwrap();

        // The same file named directly and through its directory is read once.
        let again = load(&[dir.path().join("10-storage.hcl"), dir.path().to_path_buf()]).unwrap();
        assert_eq!(again.files.len(), 3);

        // A second storage stanza in another file is an error naming both files.
        write(dir.path(), "60-storage.json", r#"{"storage": {"inmem": {}}}"#);
        let err = load(&[dir.path().to_path_buf()]).unwrap_err().to_string();
        assert!(
            err.contains("60-storage.json: storage: a storage stanza is already defined in"),
            "{err}"
        );
        assert!(err.contains("10-storage.hcl"), "{err}");
    }

    #[test]
    fn load_errors_for_missing_paths_and_empty_directories() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(matches!(err, ConfigError::NoFiles(_)), "{err}");
        let err = load(&[dir.path().join("nope.hcl")]).unwrap_err();
        assert!(matches!(err, ConfigError::Io { .. }), "{err}");
        assert!(err.to_string().contains("nope.hcl"), "{err}");
        assert!(matches!(load(&[]), Err(ConfigError::NoFiles(_))));
        // JSON content in a .hcl file is recognised, as Vault does.
        let p = write(dir.path(), "x.hcl", r#"{"ui": true}"#);
        assert!(load(&[p]).unwrap().ui);
    }

    #[test]
    fn legacy_backend_stanza() {
        let c = parse("backend \"raft\" {\n  path = \"/data\"\n  node_id = \"n1\"\n}\n");
        let s = c.storage.unwrap();
        assert_eq!(s.kind, "raft");
        assert_eq!(s.raft.unwrap().path, PathBuf::from("/data"));

        let c = parse("storage \"raft\" {\n  path = \"/a\"\n}\nbackend \"inmem\" {}\n");
        assert_eq!(c.storage.unwrap().kind, "raft", "storage wins over backend");
        assert!(c.warnings.iter().any(|w| w.contains("backend is ignored")), "{:?}", c.warnings);

        // Vault's per-stanza addresses are used when the top level is silent.
        let c = parse("backend \"Consul\" {\n  address = \"127.0.0.1:8500\"\n  redirect_addr = \"http://10.0.0.1:8200\"\n  cluster_addr = \"http://10.0.0.1:8201\"\n  disable_clustering = \"true\"\n}\n");
        let s = c.storage.as_ref().unwrap();
        assert_eq!(s.kind, "consul");
        assert_eq!(s.options.get("address").map(String::as_str), Some("127.0.0.1:8500"));
        assert!(!s.options.contains_key("redirect_addr"));
        assert_eq!(c.api_addr.as_deref(), Some("http://10.0.0.1:8200"));
        assert_eq!(c.cluster_addr.as_deref(), Some("https://10.0.0.1:8201"));
        assert!(c.disable_clustering);
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let err =
            from_str("listener \"tcp\" {\n  address = \n}\n", "config.hcl", false).unwrap_err();
        match &err {
            ConfigError::Syntax { file, line, .. } => {
                assert_eq!(file, "config.hcl");
                assert_eq!(*line, Some(2));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string().starts_with("config.hcl: syntax error at line 2, column 13: "),
            "{err}"
        );

        let err = from_str("{\n  \"ui\": [1,,]\n}", "config.json", true).unwrap_err().to_string();
        assert_eq!(err, "config.json: syntax error at line 2, column 12: expected value");
        let err = from_str("[1]", "config.json", true).unwrap_err().to_string();
        assert!(err.contains("top level must be an object"), "{err}");

        let err = parse_err("api_addr = var.addr\n");
        assert!(err.starts_with("config.hcl: api_addr: expressions are not supported"), "{err}");
    }

    #[test]
    fn hcl1_forms_vault_accepts() {
        // Quoted keys, commas and bare spaces between attributes of one-line blocks.
        let c = parse(concat!(
            "\"api_addr\" = \"http://127.0.0.1:8200\"\n",
            "listener \"tcp\" { address = \"127.0.0.1:8200\", tls_disable = true }\n",
            "listener \"tcp\" { address = \"127.0.0.1:8300\" tls_disable = 1 }\n",
            "storage \"raft\" { path = \"/data\" }\n",
            "bogus_key = 1\n",
        ));
        assert_eq!(c.api_addr.as_deref(), Some("http://127.0.0.1:8200"));
        assert_eq!(c.listeners.len(), 2);
        assert!(c.listeners.iter().all(|l| l.tls_disable));
        // Positions still refer to the original text.
        assert!(c.warnings.iter().any(|w| w.ends_with("config.hcl:5:1")), "{:?}", c.warnings);

        // An attribute given twice: the last one wins, as in Vault, with a warning.
        let c = parse("api_addr = \"http://a:8200\"\nui = true\napi_addr = \"http://b:8200\"\n");
        assert_eq!(c.api_addr.as_deref(), Some("http://b:8200"));
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("api_addr is set more than once")
                    && w.contains("config.hcl:1:1")),
            "{:?}",
            c.warnings
        );

        // `${...}` is literal text in HCL 1.
        let c = parse("cluster_name = \"a-${foo}-b\"\n");
        assert_eq!(c.cluster_name.as_deref(), Some("a-${foo}-b"));
    }

    #[test]
    fn heredoc_inline_pem_in_retry_join() {
        let c = parse(concat!(
            "storage \"raft\" {\n  path = \"/data\"\n  retry_join {\n",
            "    leader_api_addr = \"https://10.0.0.2:8200\"\n",
            "    leader_ca_cert = <<EOF\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\nEOF\n",
            "    leader_client_cert = \"-----BEGIN CERTIFICATE-----\\nMIIC\\n-----END CERTIFICATE-----\"\n",
            "    leader_client_key = <<-EOT\n      -----BEGIN PRIVATE KEY-----\n      MIID\n      -----END PRIVATE KEY-----\n      EOT\n",
            "  }\n}\n",
        ));
        let rj = &c.storage.unwrap().raft.unwrap().retry_join[0];
        assert_eq!(
            rj.leader_ca_cert.as_deref(),
            Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
        );
        assert_eq!(
            rj.leader_client_cert.as_deref(),
            Some("-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----")
        );
        assert_eq!(
            rj.leader_client_key.as_deref(),
            Some("-----BEGIN PRIVATE KEY-----\nMIID\n-----END PRIVATE KEY-----\n")
        );
    }

    #[test]
    fn listener_errors() {
        let cases: &[(&str, &str)] = &[
            (
                "listener \"tcp\" {\n  address = \"abc\"\n  tls_disable = true\n}\n",
                "config.hcl: listener.0.address: invalid address \"abc\": missing port in address",
            ),
            (
                "listener \"tcp\" {\n  address = \"::1:8200\"\n  tls_disable = true\n}\n",
                "config.hcl: listener.0.address: invalid address \"::1:8200\": too many colons",
            ),
            (
                "listener \"tcp\" {\n  address = \"127.0.0.1:99999\"\n  tls_disable = true\n}\n",
                "config.hcl: listener.0.address: invalid address \"127.0.0.1:99999\": invalid port \"99999\"",
            ),
            (
                "listener \"tcp\" {\n  address = \"{{ GetPrivateIP }}:8200\"\n  tls_disable = true\n}\n",
                "go-sockaddr templates",
            ),
            (
                "listener \"tcp\" {\n  address = \"127.0.0.1:8200\"\n  tls_disable = true\n  cluster_address = \"x\"\n}\n",
                "config.hcl: listener.0.cluster_address: invalid address \"x\"",
            ),
            ("listener \"unix\" {\n  address = \"/tmp/s\"\n}\n", "config.hcl: listener.0: listener type \"unix\" is not supported"),
            ("listener \"foo\" {}\n", "config.hcl: listener.0: unsupported listener type \"foo\""),
            ("listener {\n  address = \"127.0.0.1:1\"\n}\n", "config.hcl: listener.0: listener type must be specified"),
            (
                "listener \"tcp\" {\n  address = \"0.0.0.0:8200\"\n}\n",
                "config.hcl: listener.0: listener \"tcp\" at \"0.0.0.0:8200\" has TLS enabled but neither tls_cert_file nor tls_key_file is set",
            ),
            (
                "listener \"tcp\" {\n  tls_cert_file = \"/c.pem\"\n}\n",
                "config.hcl: listener.0.tls_key_file: listener \"tcp\" at \"127.0.0.1:8200\" has tls_cert_file but no tls_key_file",
            ),
            (
                "listener \"tcp\" {\n  tls_key_file = \"/k.pem\"\n}\n",
                "config.hcl: listener.0.tls_cert_file: listener \"tcp\" at \"127.0.0.1:8200\" has tls_key_file but no tls_cert_file",
            ),
            (
                "listener \"tcp\" {\n  tls_cert_file = \"/c\"\n  tls_key_file = \"/k\"\n  tls_min_version = \"tls10\"\n}\n",
                "config.hcl: listener.0.tls_min_version: \"tls10\" is accepted by Vault but not supported by vaultd",
            ),
            (
                "listener \"tcp\" {\n  tls_cert_file = \"/c\"\n  tls_key_file = \"/k\"\n  tls_max_version = \"tls99\"\n}\n",
                "config.hcl: listener.0.tls_max_version: value \"tls99\" not supported, please specify one of [tls12,tls13]",
            ),
            (
                "listener \"tcp\" {\n  tls_cert_file = \"/c\"\n  tls_key_file = \"/k\"\n  tls_min_version = \"tls13\"\n  tls_max_version = \"tls12\"\n}\n",
                "config.hcl: listener.0.tls_max_version: 'tls_max_version' must be greater than or equal to 'tls_min_version'",
            ),
            (
                "listener \"tcp\" {\n  tls_cert_file = \"/c\"\n  tls_key_file = \"/k\"\n  tls_require_and_verify_client_cert = true\n  tls_disable_client_certs = true\n}\n",
                "config.hcl: listener.0: 'tls_disable_client_certs' and 'tls_require_and_verify_client_cert' are mutually exclusive",
            ),
            (
                "listener \"tcp\" {\n  tls_disable = \"yes\"\n}\n",
                "config.hcl: listener.0.tls_disable: invalid boolean \"yes\"",
            ),
            (
                "listener \"tcp\" {\n  tls_disable = true\n  max_request_size = \"lots\"\n}\n",
                "config.hcl: listener.0.max_request_size: invalid integer \"lots\"",
            ),
            (
                "listener \"tcp\" {\n  tls_disable = true\n  max_request_duration = \"-5s\"\n}\n",
                "config.hcl: listener.0.max_request_duration: invalid duration \"-5s\": must not be negative",
            ),
            (
                "listener \"tcp\" {\n  address = \"127.0.0.1:65535\"\n  tls_disable = true\n}\n",
                "config.hcl: listener.0.cluster_address: cannot derive a cluster address",
            ),
        ];
        for (src, expected) in cases {
            let err = parse_err(src);
            assert!(err.contains(expected), "\n  got: {err}\n want: {expected}");
        }
    }

    #[test]
    fn listener_values_vault_accepts() {
        for v in ["true", "\"true\"", "\"1\"", "1", "\"T\""] {
            let c = parse(&format!("listener \"tcp\" {{\n  tls_disable = {v}\n}}\n"));
            assert!(c.listeners[0].tls_disable, "tls_disable = {v}");
        }
        for v in ["false", "\"false\"", "\"0\"", "0", "\"\""] {
            let src = format!("listener \"tcp\" {{\n  tls_disable = {v}\n  tls_cert_file = \"/c\"\n  tls_key_file = \"/k\"\n}}\n");
            assert!(!parse(&src).listeners[0].tls_disable, "tls_disable = {v}");
        }
        let sizes = [
            ("0", Some(DEFAULT_MAX_REQUEST_SIZE)),
            ("-1", None),
            ("1024", Some(1024)),
            ("\"2048\"", Some(2048)),
        ];
        for (v, want) in sizes {
            let c = parse(&format!(
                "listener \"tcp\" {{\n  tls_disable = true\n  max_request_size = {v}\n}}\n"
            ));
            assert_eq!(c.listeners[0].max_request_size, want, "max_request_size = {v}");
        }
        let c = parse("listener \"tcp\" {\n  address = \"[::1]:8200\"\n  tls_disable = true\n  max_request_duration = \"10\"\n}\n");
        assert_eq!(c.listeners[0].cluster_address, "[::1]:8201");
        assert_eq!(c.listeners[0].max_request_duration, Duration::from_secs(10));
        // Port 0 (ephemeral) keeps an ephemeral cluster port for the server to resolve.
        let c = parse("listener \"tcp\" {\n  address = \"127.0.0.1:0\"\n  tls_disable = true\n}\n");
        assert_eq!(c.listeners[0].cluster_address, "127.0.0.1:0");
        // default_max_request_duration is the fallback, whichever file sets it.
        let c = parse("default_max_request_duration = \"2m\"\nlistener \"tcp\" {\n  tls_disable = true\n}\nlistener \"tcp\" {\n  address = \"127.0.0.1:1\"\n  tls_disable = true\n  max_request_duration = 5\n}\n");
        assert_eq!(c.listeners[0].max_request_duration, Duration::from_secs(120));
        assert_eq!(c.listeners[1].max_request_duration, Duration::from_secs(5));
        // TLS version settings on a plain listener are ignored by Vault; here with a warning.
        let c =
            parse("listener \"tcp\" {\n  tls_disable = true\n  tls_min_version = \"tls10\"\n}\n");
        assert!(
            c.warnings.iter().any(|w| w.contains("ignored because tls_disable")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn top_level_value_errors() {
        let cases: &[(&str, &str)] = &[
            ("log_level = \"loud\"\n", "config.hcl: log_level: unknown log level: \"loud\""),
            ("api_addr = \"abc\"\n", "config.hcl: api_addr: invalid URL \"abc\": missing scheme"),
            ("api_addr = \"ftp://a:1\"\n", "config.hcl: api_addr: invalid URL \"ftp://a:1\": unsupported scheme \"ftp\""),
            ("api_addr = \"http://a:8200/v1\"\n", "must not contain a path"),
            ("api_addr = \"http://::1:8200\"\n", "IPv6 hosts must be in brackets"),
            ("cluster_addr = \"https://a:0\"\n", "config.hcl: cluster_addr: invalid URL \"https://a:0\": invalid port \"0\""),
            ("cluster_addr = \"https://{{ GetPrivateIP }}:8201\"\n", "go-sockaddr templates"),
            ("ui = \"maybe\"\n", "config.hcl: ui: invalid boolean \"maybe\""),
            ("ui = [true]\n", "config.hcl: ui: expected a boolean, found a list"),
            ("max_lease_ttl = \"10x\"\n", "config.hcl: max_lease_ttl: unknown unit \"x\" in duration \"10x\""),
            (
                "default_lease_ttl = \"1000h\"\n",
                "config.hcl: default_lease_ttl: default_lease_ttl (1000h0m0s) cannot be larger than max_lease_ttl (768h0m0s)",
            ),
            ("storage \"raft\" {}\nstorage \"inmem\" {}\n", "config.hcl: storage: only one \"storage\" block is permitted"),
            ("storage {\n  path = \"/x\"\n}\n", "config.hcl: storage: storage type must be specified"),
            ("ha_storage \"raft\" {}\nha_storage \"raft\" {}\n", "config.hcl: ha_storage: only one \"ha_storage\" block is permitted"),
        ];
        for (src, expected) in cases {
            let err = parse_err(src);
            assert!(err.contains(expected), "\n  got: {err}\n want: {expected}");
        }
        for (raw, want) in
            [("TRACE", "trace"), ("Warning", "warn"), ("err", "error"), ("notice", "info")]
        {
            assert_eq!(parse(&format!("log_level = \"{raw}\"\n")).log_level.as_deref(), Some(want));
        }
        let c = parse(
            "api_addr = \"https://vault.example.com\"\ncluster_addr = \"http://[fd00::1]:8201/\"\n",
        );
        assert_eq!(c.api_addr.as_deref(), Some("https://vault.example.com"), "port is optional");
        assert_eq!(
            c.cluster_addr.as_deref(),
            Some("https://[fd00::1]:8201/"),
            "cluster scheme forced to https"
        );
    }

    #[test]
    fn raft_and_retry_join_errors() {
        let raft = |body: &str| format!("storage \"raft\" {{\n  path = \"/data\"\n{body}\n}}\n");
        let cases: Vec<(String, &str)> = vec![
            (
                raft("  retry_join {\n    leader_api_addr = \"https://a:8200\"\n    leader_ca_cert_file = \"/ca.pem\"\n    leader_ca_cert = \"PEM\"\n  }"),
                "config.hcl: storage.raft.retry_join.0: TLS material must come either from files (leader_ca_cert_file) or inline PEM (leader_ca_cert), not both",
            ),
            (
                raft("  retry_join {\n    leader_api_addr = \"https://a:8200\"\n  }\n  retry_join {\n    leader_api_addr = \"https://b:8200\"\n    auto_join = \"provider=aws\"\n  }"),
                "config.hcl: storage.raft.retry_join.1: cannot provide both a leader_api_addr and auto_join",
            ),
            (
                raft("  retry_join {\n    leader_tls_servername = \"x\"\n  }"),
                "config.hcl: storage.raft.retry_join.0: one of leader_api_addr or auto_join must be set",
            ),
            (
                raft("  retry_join {\n    auto_join = \"provider=k8s\"\n    auto_join_scheme = \"ftp\"\n  }"),
                "config.hcl: storage.raft.retry_join.0.auto_join_scheme: invalid scheme \"ftp\"; must either be http or https",
            ),
            (
                raft("  retry_join {\n    leader_api_addr = \"a:8200\"\n  }"),
                "config.hcl: storage.raft.retry_join.0.leader_api_addr: invalid URL \"a:8200\"",
            ),
            (
                raft("  retry_join {\n    leader_api_addr = \"https://a:8200\"\n    leader_client_cert_file = \"/c.pem\"\n  }"),
                "config.hcl: storage.raft.retry_join.0: a client certificate and its key must be given together",
            ),
            (raft("  performance_multiplier = \"fast\""), "config.hcl: storage.raft.performance_multiplier: invalid integer \"fast\""),
            (raft("  trailing_logs = -1"), "config.hcl: storage.raft.trailing_logs: must not be negative, got -1"),
            (raft("  max_entry_size = 0"), "config.hcl: storage.raft.max_entry_size: must be greater than 0"),
            (
                raft("  autopilot_reconcile_interval = \"1s\""),
                "config.hcl: storage.raft.autopilot_reconcile_interval: autopilot_reconcile_interval (1s) should be larger than autopilot_update_interval (2s)",
            ),
        ];
        for (src, expected) in cases {
            let err = parse_err(&src);
            assert!(err.contains(expected), "\n  got: {err}\n want: {expected}");
        }
        // Single retry_join written as an attribute list, and numeric strings, as Vault accepts.
        let c = parse(&raft("  performance_multiplier = \"1\"\n  snapshot_threshold = 100\n  snapshot_interval = \"30s\"\n  retry_join = [{ auto_join = \"provider=k8s\", auto_join_port = \"8300\" }]"));
        let r = c.storage.unwrap().raft.unwrap();
        assert_eq!((r.performance_multiplier, r.snapshot_threshold), (1, 100));
        assert_eq!(r.snapshot_interval, Duration::from_secs(30));
        assert_eq!(r.retry_join[0].auto_join_port, 8300);
        // 0 means the default multiplier.
        let r = parse(&raft("  performance_multiplier = 0")).storage.unwrap().raft.unwrap();
        assert_eq!(r.performance_multiplier, 5);
    }

    #[test]
    fn server_validation_errors() {
        let ok = parse(&raft_config(""));
        ok.validate_for_server().unwrap();

        let no_storage = parse("listener \"tcp\" {\n  tls_disable = true\n}\n");
        assert_eq!(
            server_err(&no_storage),
            "config.hcl: storage: a storage backend must be specified"
        );

        let no_listener = parse("storage \"inmem\" {}\n");
        assert_eq!(
            server_err(&no_listener),
            "config.hcl: listener: at least one listener \"tcp\" stanza is required"
        );

        let file_storage = parse("storage \"consul\" {\n  path = \"/x\"\n}\nlistener \"tcp\" {\n  tls_disable = true\n}\n");
        assert_eq!(
            server_err(&file_storage),
            "config.hcl: storage.consul: unknown storage type \"consul\"; vaultd supports: raft, inmem, file, etcd"
        );

        let mut c = ok.clone();
        c.cluster_addr = None;
        assert_eq!(
            server_err(&c),
            "config.hcl: cluster_addr: cluster address must be set when using raft storage"
        );

        let mut c = ok.clone();
        c.api_addr = None;
        assert!(server_err(&c).starts_with("config.hcl: api_addr: missing API address"));

        let mut c = ok.clone();
        c.storage.as_mut().unwrap().raft.as_mut().unwrap().path = PathBuf::new();
        assert!(server_err(&c).starts_with("config.hcl: storage.raft.path: 'path' must be set"));

        let c = parse(&raft_config("disable_clustering = true"));
        assert_eq!(
            server_err(&c),
            "config.hcl: disable_clustering: disable clustering cannot be set to true when Raft is the storage type"
        );

        let c = parse(&raft_config("ha_storage \"raft\" {\n  path = \"/ha\"\n}"));
        assert!(server_err(&c).starts_with(
            "config.hcl: ha_storage.raft: Raft cannot be set both as 'storage' and 'ha_storage'"
        ));
        let c = parse(&raft_config("ha_storage \"consul\" {}"));
        assert_eq!(server_err(&c), "config.hcl: ha_storage.consul: HA storage cannot be declared when Raft is the storage type");
        let c = parse("storage \"inmem\" {}\nha_storage \"raft\" {\n  path = \"/x\"\n}\nlistener \"tcp\" {\n  tls_disable = true\n}\n");
        assert!(server_err(&c).contains("ha_storage \"raft\" is not supported by vaultd"));
        let c = parse("storage \"inmem\" {}\nha_storage \"consul\" {}\nlistener \"tcp\" {\n  tls_disable = true\n}\n");
        assert_eq!(server_err(&c), "config.hcl: ha_storage.consul: unknown HA storage type \"consul\"; vaultd supports: etcd");

        let mut c = ok.clone();
        c.cluster_addr = c.api_addr.clone();
        assert!(server_err(&c)
            .contains("address \"http://127.0.0.1:8200\" used for both API and cluster addresses"));

        let c =
            parse(&raft_config("").replace("node_id = \"n1\"", "retry_join_as_non_voter = true"));
        assert!(server_err(&c).contains("storage.raft.retry_join_as_non_voter: setting retry_join_as_non_voter to true is only valid"));

        // In-memory storage needs neither address.
        let c = parse("storage \"inmem\" {}\nlistener \"tcp\" {\n  tls_disable = true\n}\n");
        c.validate_for_server().unwrap();
    }

    #[test]
    fn unknown_and_ignored_keys_are_warnings() {
        let c = parse(&raft_config(
            "foo_bar = 1\ntelemetry {\n  disable_hostname = true\n}\nseal \"awskms\" {\n  region = \"x\"\n}\nseal \"shamir\" {}\n",
        ));
        c.validate_for_server().unwrap();
        let w = c.warnings.join("\n");
        assert!(
            w.contains(
                "unknown or unsupported field foo_bar found in configuration at config.hcl:12:1"
            ),
            "{w}"
        );
        assert!(w.contains("telemetry is a Vault setting that vaultd does not implement; ignored (at config.hcl:13:1)"), "{w}");
        assert!(w.contains("seal \"awskms\" is not supported by vaultd"), "{w}");
        assert!(!w.contains("shamir"), "{w}");

        let c = parse("listener \"tcp\" {\n  tls_disable = true\n  bogus_key = 3\n  x_forwarded_for_hop_skips = 1\n}\nstorage \"raft\" {\n  path = \"/d\"\n  node-id = \"typo\"\n  retry_join {\n    leader_api_addr = \"http://a:1\"\n    leader_ca = \"x\"\n  }\n}\n");
        let w = c.warnings.join("\n");
        assert!(w.contains("unknown or unsupported field listener.0.bogus_key found in configuration at config.hcl:3:3"), "{w}");
        assert!(w.contains("listener.0.x_forwarded_for_hop_skips is a Vault setting that vaultd does not implement"), "{w}");
        assert!(w.contains("unknown or unsupported field storage.raft.node-id found in configuration at config.hcl:8:3"), "{w}");
        assert!(w.contains("field storage.raft.retry_join.0.leader_ca found"), "{w}");

        let c = from_str(r#"{"bogus": 1, "ui": true}"#, "c.json", true).unwrap();
        assert_eq!(
            c.warnings,
            ["unknown or unsupported field bogus found in configuration at c.json"]
        );
    }

    #[test]
    fn env_takes_precedence_via_apply_env_from() {
        let mut c = parse(&raft_config(""));
        c.apply_env_from(env(&[
            ("VAULT_API_ADDR", "http://vault-name:8200"),
            ("BAO_API_ADDR", "http://bao-name:8200"),
            ("VAULT_CLUSTER_ADDR", "http://10.0.0.9:8201"),
            ("VAULT_RAFT_PATH", "/env/raft"),
            ("BAO_RAFT_NODE_ID", "env-node"),
            ("VAULT_RAFT_NODE_ID", "ignored"),
        ]));
        assert_eq!(c.api_addr.as_deref(), Some("http://bao-name:8200"), "BAO_* before VAULT_*");
        assert_eq!(
            c.cluster_addr.as_deref(),
            Some("https://10.0.0.9:8201"),
            "scheme forced to https"
        );
        let raft = c.storage.as_ref().unwrap().raft.as_ref().unwrap();
        assert_eq!(raft.path, PathBuf::from("/env/raft"));
        assert_eq!(raft.node_id.as_deref(), Some("env-node"));
        assert_eq!(c.sources["api_addr"], "environment variable BAO_API_ADDR");
        c.validate_for_server().unwrap();

        // A present-but-empty BAO_ variable hides the VAULT_ one and counts as unset.
        let mut c = parse(&raft_config(""));
        c.apply_env_from(env(&[("BAO_API_ADDR", ""), ("VAULT_API_ADDR", "http://x:1")]));
        assert_eq!(c.api_addr.as_deref(), Some("http://127.0.0.1:8200"));

        // REDIRECT then ADVERTISE are fallbacks for the API address.
        let mut c = parse(&raft_config(""));
        c.apply_env_from(env(&[
            ("VAULT_ADVERTISE_ADDR", "http://adv:1"),
            ("VAULT_REDIRECT_ADDR", "http://red:1"),
        ]));
        assert_eq!(c.api_addr.as_deref(), Some("http://red:1"));

        // The environment can supply what the file lacks, so validation comes after it.
        let mut c = parse("storage \"raft\" {}\nlistener \"tcp\" {\n  tls_disable = true\n}\n");
        assert!(c.validate_for_server().is_err());
        c.apply_env_from(env(&[
            ("BAO_RAFT_PATH", "/r"),
            ("BAO_API_ADDR", "http://h:8200"),
            ("BAO_CLUSTER_ADDR", "https://h:8201"),
        ]));
        c.validate_for_server().unwrap();

        // An invalid value from the environment is reported against the variable.
        let mut c = parse(&raft_config(""));
        c.apply_env_from(env(&[("VAULT_API_ADDR", "not-a-url")]));
        assert!(server_err(&c)
            .starts_with("environment variable VAULT_API_ADDR: api_addr: invalid URL"));

        let mut c = parse(&raft_config(""));
        c.apply_env_from(env(&[("VAULT_RAFT_RETRY_JOIN_AS_NON_VOTER", "yes")]));
        assert!(c.storage.as_ref().unwrap().raft.as_ref().unwrap().retry_join_as_non_voter);
        assert!(server_err(&c).starts_with("environment variable VAULT_RAFT_RETRY_JOIN_AS_NON_VOTER: storage.raft.retry_join_as_non_voter"));
    }

    #[test]
    fn durations_round_trip_in_go_format() {
        let cases = [
            ("768h", "768h0m0s"),
            ("30m", "30m0s"),
            ("1h30m", "1h30m0s"),
            ("1.5h", "1h30m0s"),
            ("90", "1m30s"),
            ("10s", "10s"),
            ("0", "0s"),
            ("0s", "0s"),
            ("1.5s", "1.5s"),
            ("300ms", "300ms"),
            ("1.5ms", "1.5ms"),
            ("10us", "10µs"),
            ("10µs", "10µs"),
            ("7ns", "7ns"),
            ("2h45m3.25s", "2h45m3.25s"),
            ("30d", "720h0m0s"),
            ("+5m", "5m0s"),
            ("1h0.5m", "1h0m30s"),
        ];
        for (input, go) in cases {
            let d = parse_duration(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(format_duration_go(d), go, "{input}");
            assert_eq!(parse_duration(go).unwrap(), d, "{go} parses back");
        }
        assert_eq!(format_duration_go(DEFAULT_LEASE_TTL), "768h0m0s");
        assert_eq!(format_duration_go(DEFAULT_MAX_REQUEST_DURATION), "1m30s");
        for bad in ["", "abc", "10", "5x", "1.5", ".s", "-1h", "-10", "1h-", "h", "9999999999h"] {
            if bad == "10" {
                continue; // bare integers are seconds
            }
            assert!(parse_duration(bad).is_err(), "{bad:?} should fail");
        }
        assert_eq!(parse_duration("-0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("missing").unwrap_err(), "invalid duration \"missing\"");
        assert_eq!(parse_duration("1.5").unwrap_err(), "missing unit in duration \"1.5\"");
        // Numbers in the file are seconds; floats truncate like Go's conversion.
        let c = parse("default_lease_ttl = 3600\nmax_lease_ttl = 7200.9\n");
        assert_eq!(c.default_lease_ttl, Some(Duration::from_secs(3600)));
        assert_eq!(c.max_lease_ttl, Some(Duration::from_secs(7200)));
        assert_eq!(parse("max_lease_ttl = \"\"\n").max_lease_ttl, None);
    }

    #[test]
    fn dev_mode_config() {
        let c = dev("127.0.0.1:8200", Some(PathBuf::from("/tmp/dev-raft")));
        c.validate_for_server().unwrap();
        assert_eq!(c.api_addr.as_deref(), Some("http://127.0.0.1:8200"));
        assert_eq!(c.cluster_addr.as_deref(), Some("https://127.0.0.1:8201"));
        let l = &c.listeners[0];
        assert!(l.tls_disable);
        assert_eq!(l.cluster_address, "127.0.0.1:8201");
        assert_eq!(l.max_request_size, Some(DEFAULT_MAX_REQUEST_SIZE));
        let s = c.storage.as_ref().unwrap();
        assert_eq!(s.kind, "raft");
        assert_eq!(s.raft.as_ref().unwrap().path, PathBuf::from("/tmp/dev-raft"));
        assert!(c.ui);

        let c = dev("[::1]:18300", None);
        assert_eq!(c.storage.as_ref().unwrap().kind, "inmem");
        assert_eq!(c.cluster_addr.as_deref(), Some("https://[::1]:18301"));
        c.validate_for_server().unwrap();

        let c = dev("nonsense", None);
        assert_eq!(
            server_err(&c),
            "dev mode: listener.0.address: invalid address \"nonsense\": missing port in address"
        );
    }

    /// `storage "etcd"` and split mode: Vault's keys, the environment overrides Vault's etcd
    /// backend reads, and errors that name the stanza and key.
    #[test]
    fn etcd_storage_and_split_mode() {
        let etcd = |extra: &str| {
            format!(
                "storage \"etcd\" {{\n  address = \"http://10.0.0.1:2379,http://10.0.0.2:2379\"\n  path = \"vault-data\"\n  lock_ttl = \"2s\"\n}}\n\
                 listener \"tcp\" {{\n  tls_disable = true\n}}\n{extra}"
            )
        };
        let c = parse(&etcd(""));
        c.validate_for_server().unwrap();
        let e = c.etcd_config(false).unwrap().unwrap();
        assert_eq!(e.endpoints, ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]);
        assert_eq!((e.path.as_str(), e.lock_ttl), ("/vault-data/", Duration::from_secs(2)));
        assert!(c.etcd_config(true).unwrap().is_none());

        let split = parse(&etcd("ha_storage \"etcd\" {\n  address = \"http://10.0.0.1:2379\"\n  path = \"/vault-ha/\"\n}\n"));
        split.validate_for_server().unwrap();
        assert_eq!(split.etcd_config(true).unwrap().unwrap().path, "/vault-ha/");
        let same = parse(&etcd("ha_storage \"etcd\" {\n  address = \"http://10.0.0.1:2379,http://10.0.0.2:2379\"\n  path = \"vault-data\"\n}\n"));
        assert!(server_err(&same).contains("ha_storage.etcd.path: ha_storage and storage use the same etcd path"), "{}", server_err(&same));
        let inmem = parse("storage \"inmem\" {}\nha_storage \"etcd\" {}\nlistener \"tcp\" {\n  tls_disable = true\n}\n");
        inmem.validate_for_server().unwrap();

        let bad = parse(&etcd("").replace("\"2s\"", "\"soon\""));
        assert!(server_err(&bad).starts_with("config.hcl: storage.etcd.lock_ttl: "), "{}", server_err(&bad));
        let bad = parse(&etcd("").replace("http://10.0.0.2:2379", "10.0.0.2:2379"));
        assert!(server_err(&bad).starts_with("config.hcl: storage.etcd.address: "), "{}", server_err(&bad));

        // ETCD_ADDR wins over the file; ETCD_USERNAME / ETCD_PASSWORD only fill what it lacks.
        let mut c = parse(&etcd("").replace("  lock_ttl", "  username = \"file-user\"\n  password = \"file-pw\"\n  lock_ttl"));
        c.apply_env_from(|name| match name {
            "ETCD_ADDR" => Some("http://env:2379".into()),
            "ETCD_USERNAME" => Some("env-user".into()),
            _ => None,
        });
        let e = c.etcd_config(false).unwrap().unwrap();
        assert_eq!(e.endpoints, ["http://env:2379"]);
        assert_eq!(e.username.as_deref(), Some("file-user"));
        let mut c = parse(&etcd(""));
        c.apply_env_from(|name| match name {
            "ETCD_USERNAME" => Some("env-user".into()),
            "ETCD_PASSWORD" => Some("env-pw".into()),
            _ => None,
        });
        let e = c.etcd_config(false).unwrap().unwrap();
        assert_eq!((e.username.as_deref(), e.password.as_deref()), (Some("env-user"), Some("env-pw")));
    }
}
