//! Routes a logical request to the secrets engine mounted at the longest matching prefix.
//!
//! The route table is rebuilt whole from the mount table on every change and swapped in behind
//! one pointer, so a request always sees a consistent set of mounts without holding a lock while
//! it runs.

use std::sync::{Arc, RwLock};

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
}

pub struct Route {
    pub entry: MountEntry,
    pub backend: Arc<dyn LogicalBackend>,
}

#[derive(Default)]
pub struct Router {
    /// Sorted longest path first, so the first match is the most specific mount.
    routes: RwLock<Arc<Vec<Arc<Route>>>>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds engines for every mount in `table`. Mounts handled by core (sys, identity,
    /// cubbyhole for now) get no engine here.
    pub fn rebuild(&self, barrier: &Arc<Barrier>, table: &[MountEntry]) -> Result<()> {
        let mut routes = Vec::with_capacity(table.len());
        for entry in table {
            let view = View::new(barrier.clone(), entry.storage_prefix());
            let backend: Arc<dyn LogicalBackend> = match entry.kind.as_str() {
                "kv" if entry.kv_version() == 2 => Arc::new(KvV2::new(view)),
                "kv" => Arc::new(KvV1::new(view)),
                "transit" => Arc::new(crate::transit::Transit::new(view)),
                "userpass" => Arc::new(crate::credential::userpass::Userpass::new(view)),
                "approle" => Arc::new(crate::credential::approle::AppRole::new(view)),
                "system" | "identity" | "cubbyhole" => continue,
                other => return Err(Error::internal(format!("mount {} has unknown type {other}", entry.path))),
            };
            routes.push(Arc::new(Route { entry: entry.clone(), backend }));
        }
        routes.sort_by(|a, b| b.entry.path.len().cmp(&a.entry.path.len()));
        let mut guard = self.routes.write().map_err(|_| Error::internal("router lock poisoned"))?;
        *guard = Arc::new(routes);
        Ok(())
    }

    pub fn clear(&self) {
        if let Ok(mut g) = self.routes.write() {
            *g = Arc::new(Vec::new());
        }
    }

    /// The route serving `path`, and the path relative to it.
    pub fn matching(&self, path: &str) -> Option<(Arc<Route>, String)> {
        let routes = self.routes.read().ok()?.clone();
        for r in routes.iter() {
            let mount = r.entry.path.as_str();
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
        let mut resp = route.backend.handle(req, &rest).await?;
        if let Some(r) = resp.as_mut() {
            r.mount_type = route.entry.kind.clone();
        }
        Ok(resp)
    }
}
