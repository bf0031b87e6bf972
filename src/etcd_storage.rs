//! `storage "etcd"` and `ha_storage "etcd"` in the server: an etcd backend that may be
//! unreachable when the server starts.
//!
//! Vault starts with its etcd down and reports errors until etcd answers; so does vaultd. A
//! configuration etcd refuses (bad credentials, unreadable TLS files) is still an error at start.
//! While etcd is unreachable every operation fails with [`Error::Unavailable`] (503, the node
//! stays sealed or standby) and a background task retries the connection every
//! [`RECONNECT_PAUSE`] until it succeeds; from then on, the etcd client reconnects by itself.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use vaultd_storage::etcd::{EtcdBackend, EtcdConfig};
use vaultd_storage::{Backend, Error, HaBackend, HaLock, Result, TxnOp};

/// Pause between connection attempts while etcd is unreachable (each attempt is bounded by the
/// stanza's `request_timeout`).
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// An [`EtcdBackend`] once connected; `Unavailable` before.
pub struct LazyEtcd {
    backend: OnceLock<EtcdBackend>,
    config: EtcdConfig,
    /// Why the last connection attempt failed, for the errors returned meanwhile.
    last_error: Mutex<String>,
}

impl LazyEtcd {
    /// Connects now if etcd answers; otherwise logs why and keeps trying in the background.
    /// `stanza` (`storage` or `ha_storage`) names the configuration in messages.
    pub async fn connect(
        config: EtcdConfig,
        stanza: &'static str,
    ) -> std::result::Result<Arc<Self>, String> {
        let me = Arc::new(Self {
            backend: OnceLock::new(),
            config: config.clone(),
            last_error: Mutex::new(String::new()),
        });
        match EtcdBackend::connect(config).await {
            Ok(b) => {
                let _ = me.backend.set(b);
            }
            Err(Error::Unavailable(m)) => {
                tracing::error!("{stanza} \"etcd\": {m}; retrying every {RECONNECT_PAUSE:?} (the node stays sealed or standby until etcd answers)");
                *me.last_error.lock().unwrap_or_else(|p| p.into_inner()) = m;
                tokio::spawn(reconnect(Arc::downgrade(&me), stanza));
            }
            Err(e) => return Err(format!("{stanza} \"etcd\": {e}")),
        }
        Ok(me)
    }

    fn connected(&self) -> Result<&EtcdBackend> {
        self.backend.get().ok_or_else(|| {
            let why = self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
            Error::Unavailable(if why.is_empty() {
                "etcd is not connected yet".to_string()
            } else {
                why
            })
        })
    }

    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }
}

async fn reconnect(me: Weak<LazyEtcd>, stanza: &'static str) {
    loop {
        tokio::time::sleep(RECONNECT_PAUSE).await;
        let Some(lazy) = me.upgrade() else { return };
        match EtcdBackend::connect(lazy.config.clone()).await {
            Ok(b) => {
                let _ = lazy.backend.set(b);
                tracing::info!(
                    "{stanza} \"etcd\": connected to {}",
                    lazy.config.endpoints.join(",")
                );
                return;
            }
            Err(e) => {
                tracing::debug!("{stanza} \"etcd\": still unreachable: {e}");
                *lazy.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
            }
        }
    }
}

#[async_trait]
impl Backend for LazyEtcd {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.connected()?.get(key).await
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.connected()?.put(key, value).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.connected()?.delete(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.connected()?.list(prefix).await
    }

    async fn transaction(&self, ops: Vec<TxnOp>) -> Result<()> {
        self.connected()?.transaction(ops).await
    }
}

#[async_trait]
impl HaBackend for LazyEtcd {
    fn lock_with(&self, key: &str, value: &str) -> Result<Box<dyn HaLock>> {
        self.connected()?.lock_with(key, value)
    }

    fn ha_enabled(&self) -> bool {
        self.config.ha_enabled
    }

    async fn register_active_node_lock(&self, lock: &dyn HaLock) -> Result<()> {
        self.connected()?.register_active_node_lock(lock).await
    }
}
