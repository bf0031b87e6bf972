//! Routes a logical request to the secrets engine or auth method mounted at the longest matching
//! prefix.
//!
//! The route table is rebuilt whole from the mount and auth tables on every change and swapped in
//! behind one pointer, so a request always sees a consistent set of mounts without holding a lock
//! while it runs. Mounts the core serves itself (`sys/`, `auth/token/`, `identity/`,
//! `cubbyhole/`) have a route without a backend, so the UI mount preflight can still name them.

use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;

use crate::barrier::Barrier;
use crate::error::{Error, Result};
use crate::kv::{KvV1, KvV2};
use crate::mounts::MountEntry;
use crate::request::{Request, Response};
use crate::view::View;

/// A secrets engine or auth method. `path` is the request path relative to the mount.
#[async_trait]
pub trait LogicalBackend: Send + Sync {
    async fn handle(&self, req: &Request, path: &str) -> Result<Option<Response>>;

    /// Paths (relative to the mount) served without a client token, such as `login` or
    /// `login/*`. A trailing `*` matches any suffix. The core skips token and policy checks on
    /// them; the backend authenticates the caller itself.
    fn unauthenticated_paths(&self) -> &'static [&'static str] {
        &[]
    }

    /// Vault's existence check: for a write (`Operation::Update`) to `path`, does the target
    /// exist? `Some(false)` makes the policy check ask for `create`, `Some(true)` for `update`;
    /// `None` (the default) means the backend does not distinguish and `update` is required.
    async fn existence_check(&self, _req: &Request, _path: &str) -> Result<Option<bool>> {
        Ok(None)
    }

    /// Paths (relative to the mount, same pattern syntax) that need `sudo` in the caller's
    /// policy, or a root token (Vault's `PathsSpecial.Root`).
    fn root_paths(&self) -> &'static [&'static str] {
        &[]
    }
}

/// Whether `path` matches one of Vault's special-path patterns: exact, or a prefix when the
/// pattern ends with `*`.
pub fn path_matches(patterns: &[&str], path: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => path == *p,
    })
}

pub struct Route {
    pub entry: MountEntry,
    /// The request path prefix: `secret/`, or `auth/userpass/` for an auth method.
    pub prefix: String,
    /// An auth method (from the auth table).
    pub is_auth: bool,
    /// `None` for the mounts the core serves itself.
    pub backend: Option<Arc<dyn LogicalBackend>>,
}

#[derive(Default)]
pub struct Router {
    /// Sorted longest path first, so the first match is the most specific mount.
    routes: RwLock<Arc<Vec<Arc<Route>>>>,
    /// The auth table of the last rebuild, so a rebuild for a mount table change keeps the auth
    /// methods routed. Held for the whole (synchronous) rebuild, which also serialises rebuilds:
    /// the published routes always come from the latest auth table.
    auth: Mutex<Vec<MountEntry>>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the routes after a mount table change; auth methods stay as they are.
    pub fn rebuild(&self, barrier: &Arc<Barrier>, mounts: &[MountEntry]) -> Result<()> {
        let auth = self.auth.lock().map_err(|_| Error::internal("router lock poisoned"))?;
        self.build(barrier, mounts, &auth)
    }

    /// Rebuilds the routes from both tables (unseal, auth method changes).
    pub fn rebuild_with_auth(&self, barrier: &Arc<Barrier>, mounts: &[MountEntry], auth: &[MountEntry]) -> Result<()> {
        let mut stored = self.auth.lock().map_err(|_| Error::internal("router lock poisoned"))?;
        self.build(barrier, mounts, auth)?;
        *stored = auth.to_vec();
        Ok(())
    }

    /// Builds engines for every mount in `mounts` and every auth method in `auth`, and publishes
    /// them. Callers hold `self.auth`.
    fn build(&self, barrier: &Arc<Barrier>, mounts: &[MountEntry], auth: &[MountEntry]) -> Result<()> {
        let mut routes = Vec::with_capacity(mounts.len() + auth.len());
        for entry in mounts {
            let view = View::new(barrier.clone(), entry.storage_prefix());
            let backend: Option<Arc<dyn LogicalBackend>> = match entry.kind.as_str() {
                "kv" if entry.kv_version() == 2 => Some(Arc::new(KvV2::new(view))),
                "kv" => Some(Arc::new(KvV1::new(view))),
                "transit" => Some(Arc::new(crate::transit::Transit::new(view))),
                "system" | "identity" | "cubbyhole" => None,
                other => return Err(Error::internal(format!("mount {} has unknown type {other}", entry.path))),
            };
            routes.push(Arc::new(Route { entry: entry.clone(), prefix: entry.path.clone(), is_auth: false, backend }));
        }
        for entry in auth {
            let view = View::new(barrier.clone(), entry.auth_storage_prefix());
            let backend: Option<Arc<dyn LogicalBackend>> = match entry.kind.as_str() {
                "userpass" => Some(Arc::new(crate::credential::userpass::Userpass::new(view))),
                "approle" => Some(Arc::new(crate::credential::approle::AppRole::new(view))),
                "token" => None,
                other => return Err(Error::internal(format!("auth method {} has unknown type {other}", entry.path))),
            };
            routes.push(Arc::new(Route { entry: entry.clone(), prefix: format!("auth/{}", entry.path), is_auth: true, backend }));
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let mut guard = self.routes.write().map_err(|_| Error::internal("router lock poisoned"))?;
        *guard = Arc::new(routes);
        Ok(())
    }

    pub fn clear(&self) {
        if let Ok(mut a) = self.auth.lock() {
            a.clear();
        }
        if let Ok(mut g) = self.routes.write() {
            *g = Arc::new(Vec::new());
        }
    }

    /// The route whose storage (`logical/<uuid>/`, `auth/<uuid>/`) holds the storage key `key`,
    /// and the key relative to it.
    pub fn by_storage_key(&self, key: &str) -> Option<(Arc<Route>, String)> {
        let routes = self.routes.read().ok()?.clone();
        routes.iter().find_map(|r| {
            let prefix = if r.is_auth { r.entry.auth_storage_prefix() } else { r.entry.storage_prefix() };
            key.strip_prefix(prefix.as_str()).map(|rest| (r.clone(), rest.to_string()))
        })
    }

    /// The route serving `path`, and the path relative to it.
    pub fn matching(&self, path: &str) -> Option<(Arc<Route>, String)> {
        let routes = self.routes.read().ok()?.clone();
        for r in routes.iter() {
            let mount = r.prefix.as_str();
            if let Some(rest) = path.strip_prefix(mount) {
                return Some((r.clone(), rest.to_string()));
            }
            // "secret" addresses the mount "secret/" itself.
            if path.len() + 1 == mount.len() && mount.starts_with(path) {
                return Some((r.clone(), String::new()));
            }
        }
        None
    }

    pub async fn route(&self, req: &Request) -> Result<Option<Response>> {
        let (route, rest) = self.matching(&req.path).ok_or_else(|| Error::NoHandler(req.path.clone()))?;
        let backend = route.backend.as_ref().ok_or_else(|| Error::NoHandler(req.path.clone()))?;
        let mut resp = backend.handle(req, &rest).await?;
        if let Some(r) = resp.as_mut() {
            r.mount_type = route.entry.kind.clone();
        }
        Ok(resp)
    }
}
