//! The `storage "etcd"` stanza: Vault's keys, Vault's defaults, checked before connecting.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::{Error, Result};

/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// Vault's etcd lock TTL (`lock_timeout`, 15 s): how long a paused or cut-off active node keeps
/// the lock, so how long a failover takes at most.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(15);
/// Vault's etcd `request_timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct EtcdConfig {
    /// Client URLs (`address`, comma-separated; Vault's default `http://127.0.0.1:2379`).
    pub endpoints: Vec<String>,
    /// Key prefix of everything vaultd stores, starting and ending with `/` (`path`, default
    /// `/vault/`, as Vault lays out `path.Join("/vault", key)`).
    pub path: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Lease TTL of HA locks (`lock_ttl`, or Vault's name `lock_timeout`); whole seconds, as
    /// etcd leases are.
    pub lock_ttl: Duration,
    /// Bound on every etcd request (`request_timeout`).
    pub request_timeout: Duration,
    /// `ha_enabled`. Vault's etcd backend defaults to false; vaultd defaults to true, so that
    /// nodes sharing one etcd never all act as active.
    pub ha_enabled: bool,
    /// The etcd cluster's `--max-txn-ops` (`max_txn_ops`): larger transactions are refused here
    /// with a clear error instead of by etcd.
    pub max_txn_ops: usize,
    /// The etcd cluster's `--max-request-bytes` (`max_request_bytes`).
    pub max_request_bytes: usize,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            path: "/vault/".to_string(),
            username: None,
            password: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            lock_ttl: DEFAULT_LOCK_TTL,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            ha_enabled: true,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        }
    }
}

/// The password never reaches a log.
impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("path", &self.path)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("lock_ttl", &self.lock_ttl)
            .field("request_timeout", &self.request_timeout)
            .field("ha_enabled", &self.ha_enabled)
            .field("max_txn_ops", &self.max_txn_ops)
            .field("max_request_bytes", &self.max_request_bytes)
            .finish()
    }
}

fn bad(key: &str, msg: impl fmt::Display) -> Error {
    Error::Config(format!("storage \"etcd\": {key}: {msg}"))
}

impl EtcdConfig {
    /// Reads the stanza as Vault hands it to a backend (every value a string). Durations go
    /// through the server's parser (`parse_duration`, Go syntax or bare seconds) so that every
    /// stanza reads durations alike. Unknown keys are ignored, as Vault does. `ETCD_ADDR`,
    /// `ETCD_USERNAME` and `ETCD_PASSWORD` are not read here: the server applies environment
    /// overrides before.
    pub fn from_options(
        options: &BTreeMap<String, String>,
        parse_duration: impl Fn(&str) -> std::result::Result<Duration, String>,
    ) -> Result<Self> {
        let mut c = Self::default();
        let get = |k: &str| options.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        if let Some(address) = get("address") {
            c.endpoints = address
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect();
        }
        if let Some(path) = get("path") {
            c.path = path.to_string();
        }
        c.username = get("username").map(str::to_string);
        c.password = options.get("password").filter(|p| !p.is_empty()).cloned();
        c.tls_ca_file = get("tls_ca_file").map(PathBuf::from);
        c.tls_cert_file = get("tls_cert_file").map(PathBuf::from);
        c.tls_key_file = get("tls_key_file").map(PathBuf::from);
        for key in ["lock_ttl", "lock_timeout"] {
            if let Some(v) = get(key) {
                c.lock_ttl = parse_duration(v).map_err(|e| bad(key, e))?;
                break;
            }
        }
        if let Some(v) = get("request_timeout") {
            c.request_timeout = parse_duration(v).map_err(|e| bad("request_timeout", e))?;
        }
        if let Some(v) = get("ha_enabled") {
            c.ha_enabled = parse_bool(v).ok_or_else(|| bad("ha_enabled", "not a boolean"))?;
        }
        if let Some(v) = get("max_txn_ops") {
            c.max_txn_ops = v.parse().map_err(|e| bad("max_txn_ops", e))?;
        }
        if let Some(v) = get("max_request_bytes") {
            c.max_request_bytes = v.parse().map_err(|e| bad("max_request_bytes", e))?;
        }
        c.validate()?;
        Ok(c)
    }

    /// Normalises `path` and checks the settings that do not need the network.
    pub fn validate(&mut self) -> Result<()> {
        if self.endpoints.is_empty() {
            return Err(bad("address", "no etcd address given"));
        }
        for e in &self.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(bad("address", format!("{e:?} must start with http:// or https://")));
            }
        }
        let tls = self.tls_ca_file.is_some() || self.tls_cert_file.is_some();
        if tls && self.endpoints.iter().any(|e| e.starts_with("http://")) {
            return Err(bad("address", "TLS files are set but an address is http://"));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(bad("tls_cert_file", "tls_cert_file and tls_key_file go together"));
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(bad("username", "username and password go together"));
        }
        if !self.path.starts_with('/') {
            self.path.insert(0, '/');
        }
        if !self.path.ends_with('/') {
            self.path.push('/');
        }
        if self.lock_ttl < Duration::from_secs(1) {
            return Err(bad("lock_ttl", "must be at least 1s (etcd leases count whole seconds)"));
        }
        // etcd counts lease TTLs in whole seconds: round up, never shorten the lock.
        let secs = self.lock_ttl.as_secs() + u64::from(self.lock_ttl.subsec_nanos() > 0);
        self.lock_ttl = Duration::from_secs(secs);
        if self.request_timeout.is_zero() {
            return Err(bad("request_timeout", "must be positive"));
        }
        if self.max_txn_ops == 0 || self.max_request_bytes == 0 {
            return Err(bad("max_txn_ops", "limits must be positive"));
        }
        Ok(())
    }
}

/// Go's `strconv.ParseBool`, which Vault uses for `ha_enabled`.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::EtcdConfig;

    fn secs(s: &str) -> Result<Duration, String> {
        let n = s.trim_end_matches('s');
        n.parse::<u64>().map(Duration::from_secs).map_err(|e| e.to_string())
    }

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_vaults() {
        let c = EtcdConfig::from_options(&BTreeMap::new(), secs).unwrap();
        assert_eq!(c.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(c.path, "/vault/");
        assert_eq!(c.lock_ttl, Duration::from_secs(15));
        assert_eq!(c.request_timeout, Duration::from_secs(5));
    }

    #[test]
    fn parses_the_stanza() {
        let c = EtcdConfig::from_options(
            &opts(&[
                ("address", "http://a:2379, http://b:2379"),
                ("path", "secrets"),
                ("username", "u"),
                ("password", "hunter2"),
                ("lock_timeout", "7s"),
                ("request_timeout", "3"),
                ("ha_enabled", "false"),
            ]),
            secs,
        )
        .unwrap();
        assert_eq!(c.endpoints, ["http://a:2379", "http://b:2379"]);
        assert_eq!(c.path, "/secrets/");
        assert_eq!(c.lock_ttl, Duration::from_secs(7));
        assert_eq!(c.request_timeout, Duration::from_secs(3));
        assert!(!c.ha_enabled);
        assert!(!format!("{c:?}").contains("hunter2"), "the password reached Debug output");
    }

    #[test]
    fn rejects_bad_stanzas() {
        for (pairs, needle) in [
            (vec![("address", "a:2379")], "http://"),
            (vec![("lock_ttl", "0s")], "lock_ttl"),
            (vec![("lock_ttl", "soon")], "lock_ttl"),
            (vec![("username", "u")], "password"),
            (vec![("tls_ca_file", "/ca.pem")], "TLS"),
            (vec![("tls_cert_file", "/c.pem"), ("address", "https://a:1")], "tls_key_file"),
            (vec![("ha_enabled", "maybe")], "ha_enabled"),
        ] {
            let err = EtcdConfig::from_options(&opts(&pairs), secs).unwrap_err().to_string();
            assert!(err.contains(needle), "{pairs:?}: {err}");
        }
    }
}
