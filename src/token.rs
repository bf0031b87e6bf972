//! The token store: who is calling.
//!
//! Tokens are never stored as given. Everything lives behind the barrier under `sys/token/`:
//! - `id/<sha256(token)>`: the [`TokenEntry`];
//! - `accessor/<sha256(accessor)>`: which token an accessor names;
//! - `parent/<parent hash>/<child hash>`: the parent → children index that revocation walks.
//!
//! Neither the disk nor a snapshot holds a usable token or accessor, not even in key names.
//!
//! Looked-up entries are cached by hash: token lookup is on every authenticated request and must
//! not cost a storage read. Every write of an entry goes through this store and updates the
//! cache, so the cache is never older than storage on this node. Writes to one entry (use
//! counting, renewal, revocation marks) are serialised by striped locks.
//!
//! Expiry: an expired token is refused on use at once. A background tidy (one task, started on
//! unseal, stopped on seal) revokes expired tokens with their children: it follows an in-memory
//! queue ordered by expiry time, and periodically scans every entry to catch what the queue
//! cannot know (entries from before a restart, interrupted revocations, children of a revoked
//! parent).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::view::{View, ViewOp};

/// Upper bound on cached token entries; the cache is dropped whole when it is reached (entries
/// reload from storage on their next use), which keeps memory bounded without an LRU.
const CACHE_LIMIT: usize = 100_000;
/// Lock stripes for per-token read-modify-write.
const STRIPES: usize = 64;
/// Upper bound on tokens one revocation removes (a parent with its whole subtree).
const MAX_TREE: usize = 1_000_000;
/// Upper bound on the expiry queue; past it, new expiries wait for the next full scan.
const EXPIRY_QUEUE_LIMIT: usize = 1_000_000;
/// Upper bound on entries one full scan reads.
const MAX_SCAN: usize = 1_000_000;
/// Expired tokens revoked per tidy tick.
const TIDY_BATCH: usize = 1_000;
const TIDY_TICK: Duration = Duration::from_secs(1);
const FULL_SCAN_EVERY: Duration = Duration::from_secs(600);

/// `num_uses` of a token whose last use is in progress: it is revoked when that request ends.
pub const LAST_USE: i64 = -1;
/// `num_uses` of a token whose revocation has started (Vault's `tokenRevocationPending`).
pub const REVOKE_PENDING: i64 = -3;

/// Vault's service-token prefix; clients (and people) recognise tokens by it.
const SERVICE_PREFIX: &str = "hvs.";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenEntry {
    pub accessor: String,
    /// Sanitised and sorted (see `policy::sanitize`); the ACL cache is keyed by this list.
    pub policies: Vec<String>,
    /// The path that created the token (`auth/token/create`, `auth/userpass/login/bob`).
    pub path: String,
    pub display_name: String,
    /// Unix seconds.
    pub creation_time: i64,
    /// The TTL the token was created with, seconds; 0 means no expiry (root tokens).
    pub ttl: u64,
    /// Uses left; 0 is unlimited. Negative values are [`LAST_USE`] and [`REVOKE_PENDING`].
    #[serde(default)]
    pub num_uses: i64,
    #[serde(default)]
    pub orphan: bool,
    #[serde(default)]
    pub meta: Option<HashMap<String, String>>,
    /// SHA-256 of the parent token; empty for orphans.
    #[serde(default)]
    pub parent: String,
    /// Unix milliseconds; 0 in entries written before these fields existed.
    #[serde(default)]
    pub issue_time_ms: i64,
    /// Unix milliseconds; 0 means never.
    #[serde(default)]
    pub expire_time_ms: i64,
    #[serde(default)]
    pub last_renewal_ms: i64,
    #[serde(default)]
    pub explicit_max_ttl: u64,
    #[serde(default)]
    pub period: u64,
    /// The issuing backend's max TTL (logins); bounds renewals.
    #[serde(default)]
    pub max_ttl: u64,
    #[serde(default)]
    pub renewable: bool,
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn rfc3339_ms(ms: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
}

impl TokenEntry {
    pub fn is_root(&self) -> bool {
        self.policies.iter().any(|p| p == "root")
    }

    fn issue_ms(&self) -> i64 {
        if self.issue_time_ms != 0 {
            self.issue_time_ms
        } else {
            self.creation_time.saturating_mul(1000)
        }
    }

    /// Usable now: not expired, not used up, not being revoked.
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.num_uses >= 0 && (self.expire_time_ms == 0 || now_ms < self.expire_time_ms)
    }

    /// Seconds left before expiry (0 for tokens that never expire).
    pub fn remaining_ttl(&self, now_ms: i64) -> u64 {
        if self.expire_time_ms == 0 {
            return 0;
        }
        ((self.expire_time_ms - now_ms).max(0) / 1000) as u64
    }

    /// The `data` of `auth/token/lookup*`, in Vault's shape (hvac and the CLIs read it to check a
    /// token is valid). `id` is null; the caller fills it when it knows the token.
    pub fn lookup_data(&self) -> Value {
        let now = now_ms();
        let mut v = json!({
            "accessor": self.accessor,
            "creation_time": self.creation_time,
            "creation_ttl": self.ttl,
            "display_name": self.display_name,
            "entity_id": "",
            "expire_time": if self.expire_time_ms == 0 { None } else { rfc3339_ms(self.expire_time_ms) },
            "explicit_max_ttl": self.explicit_max_ttl,
            "id": Value::Null,
            "issue_time": rfc3339_ms(self.issue_ms()),
            "meta": self.meta,
            "num_uses": self.num_uses,
            "orphan": self.orphan,
            "path": self.path,
            "policies": self.policies,
            "renewable": self.renewable && self.expire_time_ms != 0,
            "ttl": self.remaining_ttl(now),
            "type": "service",
        });
        if self.period > 0 {
            v["period"] = json!(self.period);
        }
        if self.last_renewal_ms > 0 {
            v["last_renewal_time"] = json!(self.last_renewal_ms / 1000);
            v["last_renewal"] = json!(rfc3339_ms(self.last_renewal_ms));
        }
        v
    }
}

/// What a new token is made of; the store adds the token, accessor and times.
#[derive(Debug, Clone, Default)]
pub struct NewToken {
    /// A caller-chosen token (root/sudo only); a random `hvs.` token otherwise.
    pub id: Option<String>,
    pub policies: Vec<String>,
    /// Hash of the parent token; empty for an orphan.
    pub parent: String,
    pub path: String,
    pub display_name: String,
    pub meta: Option<HashMap<String, String>>,
    pub num_uses: i64,
    /// The computed TTL, seconds; 0 never expires.
    pub ttl: u64,
    pub explicit_max_ttl: u64,
    pub period: u64,
    pub max_ttl: u64,
    pub renewable: bool,
}

pub fn generate_token() -> String {
    format!("{SERVICE_PREFIX}{}", random_base62(24))
}

pub fn random_base62(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rngs::OsRng;
    (0..len).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

pub fn token_hash(token: &str) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()))
}

#[derive(Serialize, Deserialize)]
struct AccessorEntry {
    accessor: String,
    token_hash: String,
}

/// Inputs of Vault's `CalculateTTL` (all seconds except `start_ms`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TtlParams {
    /// A renewal's requested increment; 0 uses `ttl`.
    pub increment: u64,
    /// The TTL asked for at creation (or by the backend); 0 uses the mount default.
    pub ttl: u64,
    pub period: u64,
    /// The backend's max (a role, a login method); 0 means the mount's.
    pub backend_max: u64,
    pub explicit_max: u64,
    /// When the token was issued; 0 means now.
    pub start_ms: i64,
}

/// Vault's `humanDuration`: Go's duration text without trailing zero units (`768h`, `1h30m`).
pub fn human_duration(secs: u64) -> String {
    let mut s = crate::config::format_duration_go(Duration::from_secs(secs));
    if s.ends_with("m0s") {
        s.truncate(s.len() - 2);
    }
    if s.ends_with("h0m") {
        s.truncate(s.len() - 2);
    }
    s
}

/// Vault's `framework.CalculateTTL`: the TTL a token gets at creation or renewal, capped by the
/// mount's max TTL (`sys_max`), the backend's and the explicit max, measured from issue time.
pub fn calculate_ttl(
    sys_default: u64,
    sys_max: u64,
    p: &TtlParams,
    now_ms: i64,
) -> Result<(u64, Vec<String>)> {
    let now = now_ms.div_euclid(1000);
    let start = if p.start_ms == 0 { now } else { p.start_ms.div_euclid(1000) };
    let mut max_ttl = sys_max;
    if p.backend_max > 0 && p.backend_max < max_ttl {
        max_ttl = p.backend_max;
    }
    if p.explicit_max > 0 && p.explicit_max < max_ttl {
        max_ttl = p.explicit_max;
    }
    if max_ttl == 0 {
        return Err(Error::internal("max TTL must be greater than zero"));
    }
    let mut warnings = Vec::new();
    let (mut ttl, max_valid) = if p.period > 0 {
        let mut period = p.period;
        if period > max_ttl {
            warnings.push(format!(
                "period of {:?} exceeded the effective max_ttl of {:?}; period value is capped accordingly",
                human_duration(period),
                human_duration(max_ttl)
            ));
            period = max_ttl;
        }
        (period, (p.explicit_max > 0).then(|| start.saturating_add(p.explicit_max as i64)))
    } else {
        let ttl = if p.increment > 0 {
            p.increment
        } else if p.ttl > 0 {
            p.ttl
        } else {
            sys_default
        };
        (ttl, Some(start.saturating_add(max_ttl as i64)))
    };
    if let Some(max_valid) = max_valid {
        let left = max_valid - now;
        if left <= 0 {
            return Err(Error::bad_request("past the max TTL, cannot renew"));
        }
        if (left as u64) < ttl {
            warnings.push(format!(
                "TTL of {:?} exceeded the effective max_ttl of {:?}; TTL value is capped accordingly",
                human_duration(ttl),
                human_duration(left as u64)
            ));
            ttl = left as u64;
        }
    }
    Ok((ttl, warnings))
}

/// Expiry times of live tokens, soonest first. Renewals add a new item; stale items are
/// recognised (the entry's expiry moved, or the entry is gone) when they come due.
#[derive(Default)]
struct ExpiryQueue {
    items: BTreeSet<(i64, String)>,
    /// Items were dropped because the queue was full: the next tidy must scan everything.
    overflowed: bool,
}

pub struct TokenStore {
    view: View,
    cache: RwLock<HashMap<String, Arc<TokenEntry>>>,
    locks: Vec<tokio::sync::Mutex<()>>,
    expiry: Mutex<ExpiryQueue>,
    tidy: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl TokenStore {
    pub fn new(view: View) -> Self {
        TokenStore {
            view,
            cache: RwLock::new(HashMap::new()),
            locks: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            expiry: Mutex::new(ExpiryQueue::default()),
            tidy: Mutex::new(None),
        }
    }

    fn lock_for(&self, hash: &str) -> &tokio::sync::Mutex<()> {
        let b = hash.as_bytes();
        let i =
            b.iter().take(8).fold(0usize, |acc, x| acc.wrapping_mul(31).wrapping_add(*x as usize));
        &self.locks[i % STRIPES]
    }

    /// Drops cached entries and the expiry queue (seal).
    pub fn clear_cache(&self) {
        if let Ok(mut c) = self.cache.write() {
            c.clear();
        }
        if let Ok(mut q) = self.expiry.lock() {
            *q = ExpiryQueue::default();
        }
    }

    /// Drops one token from the cache: another node changed or removed it.
    pub fn evict(&self, hash: &str) {
        if let Ok(mut c) = self.cache.write() {
            c.remove(hash);
        }
    }

    fn cache_put(&self, hash: &str, e: Arc<TokenEntry>) {
        if let Ok(mut c) = self.cache.write() {
            if c.len() >= CACHE_LIMIT {
                c.clear();
            }
            c.insert(hash.to_string(), e);
        }
    }

    fn cache_remove(&self, hash: &str) {
        if let Ok(mut c) = self.cache.write() {
            c.remove(hash);
        }
    }

    fn schedule(&self, hash: &str, expire_ms: i64) {
        if expire_ms == 0 {
            return;
        }
        if let Ok(mut q) = self.expiry.lock() {
            if q.items.len() >= EXPIRY_QUEUE_LIMIT {
                q.overflowed = true;
            } else {
                q.items.insert((expire_ms, hash.to_string()));
            }
        }
    }

    /// The stored entry for a hash, live or not.
    pub async fn entry_by_hash(&self, hash: &str) -> Result<Option<Arc<TokenEntry>>> {
        if let Some(e) = self.cache.read().ok().and_then(|c| c.get(hash).cloned()) {
            return Ok(Some(e));
        }
        let Some(entry) = self.view.get_json::<TokenEntry>(&format!("id/{hash}")).await? else {
            return Ok(None);
        };
        let entry = Arc::new(entry);
        self.cache_put(hash, entry.clone());
        Ok(Some(entry))
    }

    /// Resolves a client token. Unknown, expired and used-up tokens are all "permission
    /// denied", as in Vault: a caller learns nothing about which tokens exist.
    pub async fn lookup(&self, token: &str) -> Result<(String, Arc<TokenEntry>)> {
        if token.is_empty() || token.len() > 512 {
            return Err(Error::PermissionDenied);
        }
        let hash = token_hash(token);
        match self.entry_by_hash(&hash).await? {
            Some(e) if e.is_live(now_ms()) => Ok((hash, e)),
            _ => Err(Error::PermissionDenied),
        }
    }

    /// Like [`lookup`](Self::lookup), but `None` for a token that is not usable.
    pub async fn find(&self, token: &str) -> Result<Option<(String, Arc<TokenEntry>)>> {
        match self.lookup(token).await {
            Ok(x) => Ok(Some(x)),
            Err(Error::PermissionDenied) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The live token an accessor names: (its hash, its entry).
    pub async fn by_accessor(&self, accessor: &str) -> Result<Option<(String, Arc<TokenEntry>)>> {
        if accessor.is_empty() || accessor.len() > 512 {
            return Ok(None);
        }
        let Some(a) = self
            .view
            .get_json::<AccessorEntry>(&format!("accessor/{}", token_hash(accessor)))
            .await?
        else {
            return Ok(None);
        };
        match self.entry_by_hash(&a.token_hash).await? {
            Some(e) if e.is_live(now_ms()) => Ok(Some((a.token_hash, e))),
            _ => Ok(None),
        }
    }

    /// Every live token's accessor, sorted; at most `limit`.
    pub async fn list_accessors(&self, limit: usize) -> Result<Vec<String>> {
        let keys = self.view.list("accessor/").await?;
        let mut out = Vec::new();
        let now = now_ms();
        for k in keys.iter().filter(|k| !k.ends_with('/')).take(limit) {
            if let Some(a) = self.view.get_json::<AccessorEntry>(&format!("accessor/{k}")).await? {
                if matches!(self.entry_by_hash(&a.token_hash).await?, Some(e) if e.is_live(now)) {
                    out.push(a.accessor);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Stores a new root token (init, dev mode). `id` lets dev mode choose it.
    pub async fn create_root(&self, id: Option<&str>) -> Result<String> {
        let (token, _) = self
            .create(NewToken {
                id: id.filter(|t| !t.is_empty()).map(str::to_string),
                policies: vec!["root".into()],
                path: "auth/token/root".into(),
                display_name: "root".into(),
                ..Default::default()
            })
            .await?;
        Ok(token)
    }

    /// Creates and stores a token; returns it with its entry.
    pub async fn create(&self, n: NewToken) -> Result<(String, Arc<TokenEntry>)> {
        let token = match n.id {
            Some(id) => {
                if id.len() > 512 || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
                    return Err(Error::bad_request("invalid token ID"));
                }
                if self.entry_by_hash(&token_hash(&id)).await?.is_some() {
                    return Err(Error::bad_request("cannot create a token with a duplicate ID"));
                }
                id
            }
            None => generate_token(),
        };
        let hash = token_hash(&token);
        let now = now_ms();
        let entry = TokenEntry {
            accessor: random_base62(24),
            policies: n.policies,
            path: n.path,
            display_name: n.display_name,
            creation_time: now.div_euclid(1000),
            ttl: n.ttl,
            num_uses: n.num_uses,
            orphan: n.parent.is_empty(),
            meta: n.meta,
            parent: n.parent,
            issue_time_ms: now,
            expire_time_ms: if n.ttl > 0 { now.saturating_add(n.ttl as i64 * 1000) } else { 0 },
            last_renewal_ms: 0,
            explicit_max_ttl: n.explicit_max_ttl,
            period: n.period,
            max_ttl: n.max_ttl,
            renewable: n.renewable && n.ttl > 0,
        };
        let mut ops = vec![
            ViewOp::Put(format!("id/{hash}"), serde_json::to_vec(&entry)?),
            ViewOp::Put(
                format!("accessor/{}", token_hash(&entry.accessor)),
                serde_json::to_vec(&AccessorEntry {
                    accessor: entry.accessor.clone(),
                    token_hash: hash.clone(),
                })?,
            ),
        ];
        if !entry.parent.is_empty() {
            ops.push(ViewOp::Put(format!("parent/{}/{hash}", entry.parent), Vec::new()));
        }
        self.view.transaction(ops).await?;
        let entry = Arc::new(entry);
        self.cache_put(&hash, entry.clone());
        self.schedule(&hash, entry.expire_time_ms);
        Ok((token, entry))
    }

    async fn store(&self, hash: &str, e: TokenEntry) -> Result<Arc<TokenEntry>> {
        self.view.put_json(&format!("id/{hash}"), &e).await?;
        let e = Arc::new(e);
        self.cache_put(hash, e.clone());
        Ok(e)
    }

    /// Counts one use of a token with limited uses. Returns the entry as of this use and whether
    /// it was the last one (the caller revokes the token when the request is done).
    pub async fn use_token(
        &self,
        hash: &str,
        entry: Arc<TokenEntry>,
    ) -> Result<(Arc<TokenEntry>, bool)> {
        if entry.num_uses == 0 {
            return Ok((entry, false));
        }
        let _g = self.lock_for(hash).lock().await;
        let Some(cur) = self.entry_by_hash(hash).await? else {
            return Err(Error::PermissionDenied);
        };
        if !cur.is_live(now_ms()) {
            return Err(Error::PermissionDenied);
        }
        if cur.num_uses == 0 {
            return Ok((cur, false));
        }
        let mut e = (*cur).clone();
        e.num_uses -= 1;
        let last = e.num_uses == 0;
        if last {
            e.num_uses = LAST_USE;
        }
        Ok((self.store(hash, e).await?, last))
    }

    /// Renews a token: a new TTL from now, within its maximums. `sys` is the mount's (default,
    /// max) TTL. Returns the entry, the new TTL and warnings.
    pub async fn renew(
        &self,
        hash: &str,
        increment: u64,
        sys: (u64, u64),
    ) -> Result<(Arc<TokenEntry>, u64, Vec<String>)> {
        let _g = self.lock_for(hash).lock().await;
        let now = now_ms();
        let cur = match self.entry_by_hash(hash).await? {
            Some(e) if e.is_live(now) => e,
            _ => return Err(Error::bad_request("token not found")),
        };
        if !cur.renewable || cur.expire_time_ms == 0 {
            return Err(Error::bad_request("lease is not renewable"));
        }
        let params = TtlParams {
            increment,
            ttl: cur.ttl,
            period: cur.period,
            backend_max: cur.max_ttl,
            explicit_max: cur.explicit_max_ttl,
            start_ms: cur.issue_ms(),
        };
        let (ttl, warnings) = calculate_ttl(sys.0, sys.1, &params, now)?;
        let mut e = (*cur).clone();
        e.expire_time_ms = now.saturating_add(ttl as i64 * 1000);
        e.last_renewal_ms = now;
        let e = self.store(hash, e).await?;
        self.schedule(hash, e.expire_time_ms);
        Ok((e, ttl, warnings))
    }

    /// Revokes a token and every token below it. The token stops working first (it is marked
    /// revoke-pending), then the subtree is removed leaves first, so an interrupted revocation
    /// leaves no child without its parent; the tidy finishes it.
    pub async fn revoke_tree(&self, hash: &str) -> Result<()> {
        {
            let _g = self.lock_for(hash).lock().await;
            let Some(cur) = self.entry_by_hash(hash).await? else {
                return Ok(());
            };
            if cur.num_uses != REVOKE_PENDING {
                let mut e = (*cur).clone();
                e.num_uses = REVOKE_PENDING;
                self.store(hash, e).await?;
            }
        }
        // Iterative post-order walk: (hash, children already pushed).
        let mut stack: Vec<(String, bool)> = vec![(hash.to_string(), false)];
        let mut seen = 0usize;
        while let Some((h, expanded)) = stack.pop() {
            if expanded {
                self.delete_one(&h).await?;
                continue;
            }
            stack.push((h.clone(), true));
            for child in self.view.list(&format!("parent/{h}/")).await? {
                seen += 1;
                if seen > MAX_TREE {
                    return Err(Error::internal(format!(
                        "token tree has more than {MAX_TREE} tokens"
                    )));
                }
                stack.push((child.trim_end_matches('/').to_string(), false));
            }
        }
        Ok(())
    }

    /// Revokes one token; its children become orphans (Vault's `revoke-orphan`).
    pub async fn revoke_orphan(&self, hash: &str) -> Result<()> {
        let children = self.view.list(&format!("parent/{hash}/")).await?;
        for child in children.iter().take(MAX_TREE) {
            let child = child.trim_end_matches('/');
            let _g = self.lock_for(child).lock().await;
            if let Some(c) = self.entry_by_hash(child).await? {
                let mut e = (*c).clone();
                e.parent.clear();
                e.orphan = true;
                self.store(child, e).await?;
            }
            self.view.delete(&format!("parent/{hash}/{child}")).await?;
        }
        self.delete_one(hash).await
    }

    /// Removes one token's entry and index records (its children are already gone).
    async fn delete_one(&self, hash: &str) -> Result<()> {
        let _g = self.lock_for(hash).lock().await;
        let entry: Option<TokenEntry> = self.view.get_json(&format!("id/{hash}")).await?;
        let mut ops = vec![ViewOp::Delete(format!("id/{hash}"))];
        if let Some(e) = &entry {
            ops.push(ViewOp::Delete(format!("accessor/{}", token_hash(&e.accessor))));
            if !e.parent.is_empty() {
                ops.push(ViewOp::Delete(format!("parent/{}/{hash}", e.parent)));
            }
        }
        self.view.transaction(ops).await?;
        self.cache_remove(hash);
        Ok(())
    }

    /// Every stored token whose path starts with `prefix` (an auth mount being disabled).
    pub async fn hashes_with_path_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for k in self.view.list("id/").await?.into_iter().take(MAX_SCAN) {
            if let Some(e) = self.view.get_json::<TokenEntry>(&format!("id/{k}")).await? {
                if e.path.starts_with(prefix) {
                    out.push(k);
                }
            }
        }
        Ok(out)
    }

    // -----------------------------------------------------------------------------------------
    // Tidy

    /// Starts the background tidy (after unseal). Replaces a running one.
    /// Starts the background tidy. `may_write` says whether this node can write now (the Raft
    /// leader): on a follower every revocation would fail with NotLeader, so it skips the round;
    /// a follower that becomes leader takes the work over at its next tick.
    pub fn start_tidy(self: &Arc<Self>, may_write: Arc<dyn Fn() -> bool + Send + Sync>) {
        let store = Arc::downgrade(self);
        let handle = tokio::spawn(async move {
            let mut last_full: Option<tokio::time::Instant> = None;
            loop {
                let Some(s) = store.upgrade() else { return };
                if !may_write() {
                    drop(s);
                    tokio::time::sleep(TIDY_TICK).await;
                    continue;
                }
                let full = last_full.is_none_or(|t| t.elapsed() >= FULL_SCAN_EVERY)
                    || s.expiry.lock().map(|q| q.overflowed).unwrap_or(false);
                if full {
                    match s.full_scan().await {
                        Ok(n) if n > 0 => {
                            tracing::info!(revoked = n, "token tidy: revoked invalid tokens")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "token tidy: scan failed"),
                    }
                    last_full = Some(tokio::time::Instant::now());
                }
                if let Err(e) = s.revoke_due().await {
                    tracing::warn!(error = %e, "token tidy: expiry failed");
                }
                drop(s);
                tokio::time::sleep(TIDY_TICK).await;
            }
        });
        if let Ok(mut t) = self.tidy.lock() {
            if let Some(old) = t.replace(handle) {
                old.abort();
            }
        }
    }

    pub fn stop_tidy(&self) {
        if let Ok(mut t) = self.tidy.lock() {
            if let Some(h) = t.take() {
                h.abort();
            }
        }
    }

    /// Revokes the tokens whose expiry has come, at most [`TIDY_BATCH`] per call.
    pub async fn revoke_due(&self) -> Result<usize> {
        let now = now_ms();
        let due: Vec<String> = {
            let Ok(mut q) = self.expiry.lock() else { return Ok(0) };
            let mut out = Vec::new();
            while out.len() < TIDY_BATCH {
                match q.items.first() {
                    Some((t, _)) if *t <= now => {
                        if let Some((_, h)) = q.items.pop_first() {
                            out.push(h);
                        }
                    }
                    _ => break,
                }
            }
            out
        };
        let mut n = 0;
        for h in due {
            if let Some(e) = self.entry_by_hash(&h).await? {
                // A renewal moved the expiry: that renewal queued its own item.
                if e.expire_time_ms != 0 && e.expire_time_ms <= now {
                    self.revoke_tree(&h).await?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Reads every entry: revokes expired, used-up and half-revoked tokens and children whose
    /// parent is gone; queues the expiry of the rest. Returns how many it revoked.
    pub async fn full_scan(&self) -> Result<usize> {
        if let Ok(mut q) = self.expiry.lock() {
            q.overflowed = false;
        }
        let keys = self.view.list("id/").await?;
        let mut revoked = 0;
        for (i, k) in keys.iter().filter(|k| !k.ends_with('/')).take(MAX_SCAN).enumerate() {
            if i % 256 == 255 {
                tokio::task::yield_now().await;
            }
            let Some(e) = self.view.get_json::<TokenEntry>(&format!("id/{k}")).await? else {
                continue;
            };
            let now = now_ms();
            // A LAST_USE entry is mid-request unless it is old; give that request a minute.
            let stuck_last_use =
                e.num_uses == LAST_USE && now - e.issue_ms().max(e.last_renewal_ms) > 60_000;
            let orphaned =
                !e.parent.is_empty() && self.view.get(&format!("id/{}", e.parent)).await?.is_none();
            if (!e.is_live(now) && e.num_uses != LAST_USE) || stuck_last_use || orphaned {
                self.revoke_tree(k).await?;
                revoked += 1;
            } else {
                self.schedule(k, e.expire_time_ms);
            }
        }
        Ok(revoked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::barrier::{Barrier, RootKey};
    use vaultd_storage::inmem::InmemBackend;

    async fn store() -> Arc<TokenStore> {
        let barrier = Arc::new(Barrier::new(Arc::new(InmemBackend::new())));
        let key = RootKey::generate().unwrap();
        barrier.initialize(&key).await.unwrap();
        barrier.unseal(&key).await.unwrap();
        Arc::new(TokenStore::new(View::new(barrier, "sys/token/")))
    }

    fn child(parent: &str, ttl: u64) -> NewToken {
        NewToken {
            policies: vec!["default".into()],
            parent: parent.into(),
            path: "auth/token/create".into(),
            display_name: "token".into(),
            ttl,
            renewable: true,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn create_lookup_and_hashed_storage() {
        let s = store().await;
        let root = s.create_root(Some("root")).await.unwrap();
        let (rh, re) = s.lookup(&root).await.unwrap();
        assert!(re.is_root() && re.orphan && re.expire_time_ms == 0);
        let (t, e) = s.create(child(&rh, 3600)).await.unwrap();
        assert!(t.starts_with("hvs."));
        assert!(!e.orphan && e.renewable);
        assert_eq!(s.lookup(&t).await.unwrap().1.accessor, e.accessor);
        assert!(s.by_accessor(&e.accessor).await.unwrap().is_some());
        // Nothing is keyed by the token or the accessor themselves.
        let keys = s.view.list("id/").await.unwrap();
        assert!(keys.iter().all(|k| !k.contains(&t) && k.len() == 64));
        let keys = s.view.list("accessor/").await.unwrap();
        assert!(keys.iter().all(|k| !k.contains(&e.accessor)));
        assert!(matches!(s.lookup("nope").await, Err(Error::PermissionDenied)));
        assert_eq!(s.list_accessors(100).await.unwrap().len(), 2);
        // A custom id cannot be reused.
        let mut n = child(&rh, 0);
        n.id = Some("root".into());
        assert!(s.create(n).await.is_err());
    }

    #[tokio::test]
    async fn revoking_a_parent_revokes_its_subtree() {
        let s = store().await;
        let (p, _) = s.create(child("", 0)).await.unwrap();
        let ph = token_hash(&p);
        let (c1, _) = s.create(child(&ph, 0)).await.unwrap();
        let (c2, _) = s.create(child(&ph, 0)).await.unwrap();
        let (g, _) = s.create(child(&token_hash(&c1), 0)).await.unwrap();
        let (other, _) = s.create(child("", 0)).await.unwrap();
        s.revoke_tree(&ph).await.unwrap();
        for t in [&p, &c1, &c2, &g] {
            assert!(s.find(t).await.unwrap().is_none(), "{t} still valid");
        }
        assert!(s.find(&other).await.unwrap().is_some());
        assert!(s.view.list("parent/").await.unwrap().is_empty());
        assert_eq!(s.view.list("id/").await.unwrap().len(), 1);
        assert_eq!(s.view.list("accessor/").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn revoke_orphan_keeps_children() {
        let s = store().await;
        let (p, _) = s.create(child("", 0)).await.unwrap();
        let (c, _) = s.create(child(&token_hash(&p), 0)).await.unwrap();
        s.revoke_orphan(&token_hash(&p)).await.unwrap();
        assert!(s.find(&p).await.unwrap().is_none());
        let (_, e) = s.find(&c).await.unwrap().unwrap();
        assert!(e.orphan && e.parent.is_empty());
    }

    #[tokio::test]
    async fn num_uses_run_out() {
        let s = store().await;
        let mut n = child("", 0);
        n.num_uses = 2;
        let (t, _) = s.create(n).await.unwrap();
        let (h, e) = s.lookup(&t).await.unwrap();
        let (e, last) = s.use_token(&h, e).await.unwrap();
        assert_eq!((e.num_uses, last), (1, false));
        let (e, last) = s.use_token(&h, e).await.unwrap();
        assert_eq!((e.num_uses, last), (LAST_USE, true));
        assert!(s.find(&t).await.unwrap().is_none(), "a token on its last use is no longer usable");
        assert!(s.use_token(&h, e).await.is_err());
    }

    #[tokio::test]
    async fn expiry_and_tidy() {
        let s = store().await;
        let (p, _) = s.create(child("", 1)).await.unwrap();
        let (c, _) = s.create(child(&token_hash(&p), 0)).await.unwrap();
        assert!(s.find(&p).await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(s.find(&p).await.unwrap().is_none(), "expired at once");
        assert!(s.find(&c).await.unwrap().is_some(), "the child lives until the tidy runs");
        assert_eq!(s.revoke_due().await.unwrap(), 1);
        assert!(s.find(&c).await.unwrap().is_none(), "expiry revokes the children too");
        assert!(s.view.list("id/").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn full_scan_finds_orphaned_children_and_expired_tokens() {
        let s = store().await;
        let (p, _) = s.create(child("", 0)).await.unwrap();
        let ph = token_hash(&p);
        let (c, _) = s.create(child(&ph, 0)).await.unwrap();
        // The parent disappears without its children (an interrupted revocation).
        s.view.delete(&format!("id/{ph}")).await.unwrap();
        s.clear_cache();
        assert_eq!(s.full_scan().await.unwrap(), 1);
        assert!(s.find(&c).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn renew_extends_within_max() {
        let s = store().await;
        let mut n = child("", 60);
        n.explicit_max_ttl = 120;
        let (t, _) = s.create(n).await.unwrap();
        let h = token_hash(&t);
        let (_, ttl, w) = s.renew(&h, 3600, (3600, 7200)).await.unwrap();
        assert!((118..=120).contains(&ttl), "{ttl}");
        assert_eq!(w.len(), 1, "{w:?}");
        let (e, ttl, _) = s.renew(&h, 30, (3600, 7200)).await.unwrap();
        assert_eq!(ttl, 30);
        assert!(e.last_renewal_ms > 0);
        let root = s.create_root(None).await.unwrap();
        let e = s.renew(&token_hash(&root), 0, (3600, 7200)).await.unwrap_err();
        assert_eq!(e.to_string(), "lease is not renewable");
    }

    #[test]
    fn ttl_calculation_matches_vault() {
        let now = 1_000_000_000;
        let sys = (768 * 3600, 768 * 3600);
        let p = TtlParams { explicit_max: 7200, ..Default::default() };
        let (ttl, w) = calculate_ttl(sys.0, sys.1, &p, now).unwrap();
        assert_eq!(ttl, 7200);
        assert_eq!(
            w,
            vec![
                r#"TTL of "768h" exceeded the effective max_ttl of "2h"; TTL value is capped accordingly"#
            ]
        );
        let p = TtlParams { period: 600, ..Default::default() };
        assert_eq!(calculate_ttl(sys.0, sys.1, &p, now).unwrap().0, 600);
        let p = TtlParams { ttl: 3600, ..Default::default() };
        assert_eq!(calculate_ttl(sys.0, sys.1, &p, now).unwrap().0, 3600);
        let p = TtlParams {
            ttl: 3600,
            start_ms: now - 7_200_000,
            explicit_max: 3600,
            ..Default::default()
        };
        assert!(calculate_ttl(sys.0, sys.1, &p, now).is_err());
        assert_eq!(human_duration(5400), "1h30m");
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(120), "2m");
    }
}
