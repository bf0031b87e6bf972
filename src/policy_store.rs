//! Where ACL policies live and how a token's ACL is found fast.
//!
//! Policies are stored at `sys/policy/<name>` behind the barrier (as Vault does). Two caches sit
//! in front of storage:
//! - parsed policies by name;
//! - compiled [`Acl`]s by policy set (a token's sanitised, sorted policy list), so the request
//!   path is one hash lookup after the token's.
//!
//! Any policy write or delete bumps a generation counter and clears both caches. A compile that
//! started before the change does not publish its result (it checks the generation under the
//! cache lock), so a stale ACL can never be cached after a policy change.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::policy::{self, Acl, Policy, DEFAULT_POLICY, DEFAULT_POLICY_TEXT, ROOT_POLICY};
use crate::view::View;

/// Bounds on the caches: when reached, the cache is dropped whole and refills on demand, which
/// keeps memory bounded without LRU bookkeeping on the hot path.
const POLICY_CACHE_LIMIT: usize = 10_000;
const ACL_CACHE_LIMIT: usize = 10_000;
/// Upper bound on the policies a token may carry; more would make every ACL compile expensive.
pub const MAX_TOKEN_POLICIES: usize = 256;

/// The stored form.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredPolicy {
    pub name: String,
    pub policy: String,
    #[serde(default)]
    pub version: u64,
    /// RFC 3339.
    #[serde(default)]
    pub modified: String,
}

/// A parsed policy with its stored form.
pub type Loaded = Arc<(Policy, StoredPolicy)>;

pub struct PolicyStore {
    view: View,
    /// `None` caches "no such policy" (a token may name a deleted policy).
    policies: RwLock<HashMap<String, Option<Loaded>>>,
    acls: RwLock<HashMap<Vec<String>, Arc<Acl>>>,
    generation: AtomicU64,
    /// Serialises writes (read-modify-write of the version number).
    write: tokio::sync::Mutex<()>,
    root_acl: Arc<Acl>,
}

/// Storage keys may not contain `/` segments the way names can; escape so every name is one
/// flat key and listing gives the names back.
fn key_of(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

fn name_of(key: &str) -> String {
    key.replace("%2F", "/").replace("%25", "%")
}

impl PolicyStore {
    pub fn new(view: View) -> Self {
        PolicyStore {
            view,
            policies: RwLock::new(HashMap::new()),
            acls: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            write: tokio::sync::Mutex::new(()),
            root_acl: Arc::new(Acl::root()),
        }
    }

    /// Drops every cached policy and ACL (seal, or a change made elsewhere).
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut p) = self.policies.write() {
            p.clear();
        }
        if let Ok(mut a) = self.acls.write() {
            a.clear();
        }
    }

    /// Stores the default policy if it is missing (first setup, or data from before policies).
    pub async fn ensure_default(&self) -> Result<()> {
        if self.view.get(&key_of(DEFAULT_POLICY)).await?.is_none() {
            self.set(DEFAULT_POLICY, DEFAULT_POLICY_TEXT).await?;
        }
        Ok(())
    }

    /// A policy with its stored metadata. `root` is built in and has no text.
    pub async fn get(&self, name: &str) -> Result<Option<Loaded>> {
        if name == ROOT_POLICY {
            let p = Policy { name: ROOT_POLICY.into(), raw: String::new(), rules: Vec::new() };
            let s = StoredPolicy {
                name: ROOT_POLICY.into(),
                policy: String::new(),
                version: 0,
                modified: String::new(),
            };
            return Ok(Some(Arc::new((p, s))));
        }
        if let Some(hit) = self.policies.read().ok().and_then(|c| c.get(name).cloned()) {
            return Ok(hit);
        }
        let gen = self.generation.load(Ordering::Acquire);
        let stored: Option<StoredPolicy> = self.view.get_json(&key_of(name)).await?;
        let entry = match stored {
            None => None,
            Some(s) => {
                // Stored text was valid when written; a parse failure now is corruption.
                let p = policy::parse(&s.name, &s.policy)
                    .map_err(|e| Error::internal(format!("stored policy {name:?}: {e}")))?;
                Some(Arc::new((p, s)))
            }
        };
        if let Ok(mut c) = self.policies.write() {
            if self.generation.load(Ordering::Acquire) == gen {
                if c.len() >= POLICY_CACHE_LIMIT {
                    c.clear();
                }
                c.insert(name.to_string(), entry.clone());
            }
        }
        Ok(entry)
    }

    /// Creates or replaces a policy. Invalid text is a 400 with the parse error.
    pub async fn set(&self, name: &str, text: &str) -> Result<()> {
        let name = policy::normalize_name(name).map_err(Error::BadRequest)?;
        if name == ROOT_POLICY {
            return Err(Error::bad_request("cannot update \"root\" policy"));
        }
        policy::parse(&name, text).map_err(Error::BadRequest)?;
        let _w = self.write.lock().await;
        let prev: Option<StoredPolicy> = self.view.get_json(&key_of(&name)).await?;
        let stored = StoredPolicy {
            name: name.clone(),
            policy: text.to_string(),
            version: prev.map_or(1, |p| p.version + 1),
            modified: crate::kv::now_rfc3339(),
        };
        self.view.put_json(&key_of(&name), &stored).await?;
        self.invalidate();
        Ok(())
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        let name = policy::normalize_name(name).map_err(Error::BadRequest)?;
        match name.as_str() {
            ROOT_POLICY => return Err(Error::bad_request("cannot delete \"root\" policy")),
            DEFAULT_POLICY => return Err(Error::bad_request("cannot delete default policy")),
            _ => {}
        }
        let _w = self.write.lock().await;
        self.view.delete(&key_of(&name)).await?;
        self.invalidate();
        Ok(())
    }

    /// Every policy name, `root` included, sorted.
    pub async fn list(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .view
            .list("")
            .await?
            .iter()
            .filter(|k| !k.ends_with('/'))
            .map(|k| name_of(k))
            .collect();
        names.push(ROOT_POLICY.into());
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// The ACL for a token's policy list (sanitised and sorted at token creation). Policies that
    /// no longer exist grant nothing, as in Vault.
    pub async fn acl(&self, policies: &[String]) -> Result<Arc<Acl>> {
        if policies.iter().any(|p| p == ROOT_POLICY) {
            return Ok(self.root_acl.clone());
        }
        if let Some(a) = self.acls.read().ok().and_then(|c| c.get(policies).cloned()) {
            return Ok(a);
        }
        let gen = self.generation.load(Ordering::Acquire);
        let mut loaded = Vec::with_capacity(policies.len());
        for name in policies.iter().take(MAX_TOKEN_POLICIES) {
            if let Some(p) = self.get(name).await? {
                loaded.push(p);
            }
        }
        let refs: Vec<&Policy> = loaded.iter().map(|p| &p.0).collect();
        let acl = Arc::new(Acl::new(&refs));
        if let Ok(mut c) = self.acls.write() {
            if self.generation.load(Ordering::Acquire) == gen {
                if c.len() >= ACL_CACHE_LIMIT {
                    c.clear();
                }
                c.insert(policies.to_vec(), acl.clone());
            }
        }
        Ok(acl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::barrier::{Barrier, RootKey};
    use vaultd_storage::inmem::InmemBackend;

    async fn store() -> PolicyStore {
        let barrier = Arc::new(Barrier::new(Arc::new(InmemBackend::new())));
        let key = RootKey::generate().unwrap();
        barrier.initialize(&key).await.unwrap();
        barrier.unseal(&key).await.unwrap();
        PolicyStore::new(View::new(barrier, "sys/policy/"))
    }

    #[tokio::test]
    async fn crud_and_cache_invalidation() {
        let s = store().await;
        s.ensure_default().await.unwrap();
        assert_eq!(s.list().await.unwrap(), vec!["default", "root"]);
        s.set("Reader", r#"path "secret/*" { capabilities = ["read"] }"#).await.unwrap();
        let pols = vec!["default".to_string(), "reader".to_string()];
        let acl = s.acl(&pols).await.unwrap();
        assert!(acl.allow(policy::Op::Read, "secret/x", &Default::default()).allowed);
        // Changing the policy changes what the same policy set may do.
        s.set("reader", r#"path "other/*" { capabilities = ["read"] }"#).await.unwrap();
        let acl = s.acl(&pols).await.unwrap();
        assert!(!acl.allow(policy::Op::Read, "secret/x", &Default::default()).allowed);
        assert_eq!(s.get("reader").await.unwrap().unwrap().1.version, 2);
        s.delete("reader").await.unwrap();
        let acl = s.acl(&pols).await.unwrap();
        assert!(!acl.allow(policy::Op::Read, "other/x", &Default::default()).allowed);
        assert!(matches!(s.delete("default").await, Err(Error::BadRequest(_))));
        assert!(matches!(s.set("root", "").await, Err(Error::BadRequest(_))));
        let e = s.set("bad", "path \"x\" {").await.unwrap_err();
        assert!(e.to_string().starts_with("failed to parse policy"), "{e}");
        s.set("a/b", r#"path "x" { capabilities = ["read"] }"#).await.unwrap();
        assert!(s.list().await.unwrap().contains(&"a/b".to_string()));
        assert!(s.get("a/b").await.unwrap().is_some());
    }
}
