//! The token store: who is calling.
//!
//! Tokens are never stored as given. The entry lives at `sys/token/id/<sha256(token)>` behind the
//! barrier, so neither the disk nor a snapshot holds a usable token. Looked-up entries are cached by
//! hash: token lookup is on every authenticated request and must not cost a storage read. The
//! cache is cleared on seal and when an entry is revoked.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::view::View;

/// Upper bound on cached token entries; the cache is dropped whole when it is reached (entries
/// reload from storage on their next use), which keeps memory bounded without an LRU.
const CACHE_LIMIT: usize = 100_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenEntry {
    pub accessor: String,
    pub policies: Vec<String>,
    pub path: String,
    pub display_name: String,
    /// Unix seconds.
    pub creation_time: i64,
    /// Seconds; 0 means no expiry (root tokens).
    pub ttl: u64,
    #[serde(default)]
    pub num_uses: u64,
    #[serde(default)]
    pub orphan: bool,
    #[serde(default)]
    pub meta: Option<HashMap<String, String>>,
}

impl TokenEntry {
    pub fn is_root(&self) -> bool {
        self.policies.iter().any(|p| p == "root")
    }

    /// The `data` of `auth/token/lookup-self`, in Vault's shape (hvac and the CLIs read it to
    /// check a token is valid).
    pub fn lookup_data(&self) -> serde_json::Value {
        let fmt = |t: i64| {
            time::OffsetDateTime::from_unix_timestamp(t)
                .ok()
                .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let (expire_time, ttl) = if self.ttl == 0 {
            (None, 0)
        } else {
            let exp = self.creation_time.saturating_add(self.ttl as i64);
            (fmt(exp), (exp - now).max(0))
        };
        serde_json::json!({
            "accessor": self.accessor,
            "creation_time": self.creation_time,
            "creation_ttl": self.ttl,
            "display_name": self.display_name,
            "entity_id": "",
            "expire_time": expire_time,
            "explicit_max_ttl": 0,
            "id": serde_json::Value::Null,
            "issue_time": fmt(self.creation_time),
            "meta": self.meta,
            "num_uses": self.num_uses,
            "orphan": self.orphan,
            "path": self.path,
            "policies": self.policies,
            "renewable": false,
            "ttl": ttl,
            "type": "service",
        })
    }
}

pub struct TokenStore {
    cache: RwLock<HashMap<String, Arc<TokenEntry>>>,
}

/// Vault's service-token prefix; clients (and people) recognise tokens by it.
const SERVICE_PREFIX: &str = "hvs.";

pub fn generate_token() -> String {
    format!("{SERVICE_PREFIX}{}", random_base62(24))
}

pub fn random_base62(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rngs::OsRng;
    (0..len).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

fn token_hash(token: &str) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()))
}

impl Default for TokenStore {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenStore {
    pub fn new() -> Self {
        TokenStore { cache: RwLock::new(HashMap::new()) }
    }

    pub fn clear_cache(&self) {
        if let Ok(mut c) = self.cache.write() {
            c.clear();
        }
    }

    /// Stores a new root token (init, dev mode). `id` lets dev mode choose it.
    pub async fn create_root(&self, view: &View, id: Option<&str>) -> Result<String> {
        let token = match id {
            Some(t) if !t.is_empty() => t.to_string(),
            _ => generate_token(),
        };
        let entry = TokenEntry {
            accessor: random_base62(24),
            policies: vec!["root".into()],
            path: "auth/token/root".into(),
            display_name: "root".into(),
            creation_time: time::OffsetDateTime::now_utc().unix_timestamp(),
            ttl: 0,
            num_uses: 0,
            orphan: true,
            meta: None,
        };
        let hash = token_hash(&token);
        view.put_json(&format!("id/{hash}"), &entry).await?;
        view.put(&format!("accessor/{}", entry.accessor), hash.as_bytes()).await?;
        Ok(token)
    }

    /// Resolves a client token. Unknown and expired tokens are both "permission denied", as in
    /// Vault: a caller learns nothing about which tokens exist.
    pub async fn lookup(&self, view: &View, token: &str) -> Result<Arc<TokenEntry>> {
        if token.is_empty() || token.len() > 512 {
            return Err(Error::PermissionDenied);
        }
        let hash = token_hash(token);
        if let Some(e) = self.cache.read().ok().and_then(|c| c.get(&hash).cloned()) {
            return self.check_live(e);
        }
        let entry: TokenEntry = view.get_json(&format!("id/{hash}")).await?.ok_or(Error::PermissionDenied)?;
        let entry = Arc::new(entry);
        if let Ok(mut c) = self.cache.write() {
            if c.len() >= CACHE_LIMIT {
                c.clear();
            }
            c.insert(hash, entry.clone());
        }
        self.check_live(entry)
    }

    fn check_live(&self, e: Arc<TokenEntry>) -> Result<Arc<TokenEntry>> {
        if e.ttl > 0 {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            if now >= e.creation_time.saturating_add(e.ttl as i64) {
                return Err(Error::PermissionDenied);
            }
        }
        Ok(e)
    }
}
