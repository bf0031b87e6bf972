//! `storage "etcd"`: every node's data in one shared etcd v3 cluster, and the active-node lock
//! in the same cluster (so this backend is both a [`Backend`] and an [`HaBackend`]).
//!
//! Layout: a key `k` is stored at `<path>k` (`/vault/core/keyring`), as Vault's etcd backend
//! lays it out; an HA lock `core/lock` lives at `<path>core/lock` (see [`lock`]).
//!
//! Fencing: once the server registers its active-node lock
//! ([`HaBackend::register_active_node_lock`]), every write is one etcd `Txn` conditioned on the
//! lock key still having the create revision it had when this node took it. A node that lost the
//! lock (lease expired while it was paused, key deleted) can no longer write, whatever it
//! believes: etcd refuses the `Txn` and the write fails with [`Error::Fenced`]. A lock key is
//! created once per acquisition, so a new holder's key always has a newer create revision.
//!
//! Bounds: every request is limited by `request_timeout`; values by [`crate::MAX_VALUE_LEN`];
//! transactions by the cluster's `--max-txn-ops` and `--max-request-bytes` (checked here so the
//! error names them); listings read at most [`LIST_PAGE`] keys per request.

mod config;
pub mod lock;
pub mod test_cluster;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, TlsOptions, Txn,
    TxnOp as EtcdOp,
};

pub use config::{
    EtcdConfig, DEFAULT_LOCK_TTL, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_TXN_OPS,
    DEFAULT_REQUEST_TIMEOUT,
};
pub use lock::EtcdLock;

use crate::ha::{HaBackend, HaLock};
use crate::{list_children, validate_key, validate_put, Backend, Error, Result, TxnOp};

/// Keys read per range request of a listing (keys only: at most 256 × 4 KiB = 1 MiB per page,
/// well under gRPC's 4 MiB default message size).
pub const LIST_PAGE: i64 = 256;

/// Room left in a request for what is not keys and values (protobuf framing, the fence compare).
const REQUEST_OVERHEAD: usize = 4096;

/// The etcd data and HA backend. Cheap to clone: clones share one connection and one fence.
#[derive(Clone)]
pub struct EtcdBackend {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) config: EtcdConfig,
    /// The registered active-node lock that conditions every write, if any.
    fence: RwLock<Option<Fence>>,
}

/// A lock key and the create revision it had when this node took it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fence {
    pub(crate) key: Vec<u8>,
    pub(crate) create_revision: i64,
}

impl EtcdBackend {
    /// Connects and checks that the cluster answers (a linearizable read, which needs a quorum),
    /// so that a wrong address or a down cluster is a clear error at start rather than at the
    /// first request. A failed connect can simply be retried.
    pub async fn connect(mut config: EtcdConfig) -> Result<Self> {
        config.validate()?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.request_timeout)
            // Detects a dead connection under a long-lived watch or keepalive stream. etcd refuses
            // pings more often than every 5 s (`--grpc-keepalive-min-time`).
            .with_keep_alive(Duration::from_secs(10), config.request_timeout);
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            // etcd's simple tokens expire (5 min by default): without the refresh, a quiet node
            // would fail its next request.
            options =
                options.with_user(user.clone(), password.clone()).with_auto_token_refresh(true);
        }
        if let Some(tls) = tls_options(&config)? {
            options = options.with_tls(tls);
        }
        let endpoints = config.endpoints.join(",");
        // A cluster that does not answer can be retried; anything else (a refused password, a
        // missing permission) is the configuration's fault.
        let unreachable = |e: Error| match e {
            Error::Unavailable(m) => {
                Error::Unavailable(format!("etcd at {endpoints} is unreachable: {m}"))
            }
            Error::Io(m) => Error::Config(format!("etcd at {endpoints} refused vaultd: {m}")),
            other => other,
        };
        // With a user, `connect` authenticates, which is already a round trip.
        let connecting = Client::connect(config.endpoints.clone(), Some(options));
        let client = timed(config.request_timeout, connecting)
            .await
            .map_err(unreachable)?
            .map_err(|e| unreachable(map_err(e)))?;
        let backend =
            Self { shared: Arc::new(Shared { client, config, fence: RwLock::new(None) }) };
        let probe = backend.shared.config.path.clone();
        let mut kv = backend.shared.client.kv_client();
        backend
            .timed(kv.get(probe, Some(GetOptions::new().with_count_only())))
            .await
            .map_err(unreachable)?;
        Ok(backend)
    }

    pub fn config(&self) -> &EtcdConfig {
        &self.shared.config
    }

    /// The etcd key of a vaultd key.
    fn etcd_key(&self, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.shared.config.path.len() + key.len());
        k.extend_from_slice(self.shared.config.path.as_bytes());
        k.extend_from_slice(key.as_bytes());
        k
    }

    async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        timed(self.shared.config.request_timeout, fut).await?.map_err(map_err)
    }

    /// Drops the registered fence: writes are unconditional again. For a node that stepped
    /// down cleanly and must write before it is active again (none does today).
    pub fn clear_fence(&self) {
        if let Ok(mut fence) = self.shared.fence.write() {
            *fence = None;
        }
    }

    fn fence(&self) -> Result<Option<Fence>> {
        self.shared
            .fence
            .read()
            .map(|f| f.clone())
            .map_err(|_| Error::Io("etcd fence lock poisoned".into()))
    }

    /// Applies `ops` (already validated, one per key) as one etcd transaction, conditioned on the
    /// registered fence if there is one.
    async fn write(&self, ops: Vec<EtcdOp>, bytes: usize) -> Result<()> {
        let config = &self.shared.config;
        if ops.is_empty() {
            return Ok(());
        }
        if ops.len() > config.max_txn_ops {
            return Err(Error::TransactionTooLarge(format!(
                "{} operations, etcd accepts at most {} in one transaction (--max-txn-ops)",
                ops.len(),
                config.max_txn_ops
            )));
        }
        if bytes + REQUEST_OVERHEAD > config.max_request_bytes {
            return Err(Error::TransactionTooLarge(format!(
                "{bytes} bytes of keys and values, etcd accepts requests of at most {} bytes \
                 (--max-request-bytes)",
                config.max_request_bytes
            )));
        }
        let fence = self.fence()?;
        let mut txn = Txn::new();
        if let Some(f) = &fence {
            txn = txn.when([Compare::create_revision(
                f.key.clone(),
                CompareOp::Equal,
                f.create_revision,
            )]);
        }
        let txn = txn.and_then(ops);
        let mut kv = self.shared.client.kv_client();
        let resp = self.timed(kv.txn(txn)).await?;
        if !resp.succeeded() {
            let lock_key =
                fence.map(|f| String::from_utf8_lossy(&f.key).into_owned()).unwrap_or_default();
            return Err(Error::Fenced { lock_key });
        }
        Ok(())
    }
}

/// Runs `fut` for at most `limit`; an expired request is `Unavailable`, as a down cluster is.
pub(crate) async fn timed<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = T>,
) -> Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| Error::Unavailable(format!("etcd request timed out after {limit:?}")))
}

/// etcd client errors: a cluster that cannot answer now is `Unavailable` (retryable), anything
/// else `Io`.
pub(crate) fn map_err(e: etcd_client::Error) -> Error {
    use etcd_client::Error as E;
    match &e {
        E::TransportError(_) | E::IoError(_) => Error::Unavailable(format!("etcd: {e}")),
        E::GRpcStatus(s)
            if matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ) || is_transport_failure(s) =>
        {
            Error::Unavailable(format!("etcd: {}", s.message()))
        }
        _ => Error::Io(format!("etcd: {e}")),
    }
}

/// tonic reports a connection that failed under a call (refused, reset, a failed TLS handshake)
/// as status `Unknown` with the transport error as its source.
fn is_transport_failure(s: &tonic::Status) -> bool {
    use std::error::Error as _;
    s.code() == tonic::Code::Unknown
        && s.source().is_some_and(|e| e.is::<tonic::transport::Error>())
}

fn tls_options(config: &EtcdConfig) -> Result<Option<TlsOptions>> {
    if config.tls_ca_file.is_none() && config.tls_cert_file.is_none() {
        return Ok(None);
    }
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            Error::Config(format!("storage \"etcd\": {key}: cannot read {}: {e}", path.display()))
        })
    };
    let mut tls = TlsOptions::new();
    if let Some(ca) = &config.tls_ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read("tls_ca_file", ca)?));
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
        tls = tls
            .identity(Identity::from_pem(read("tls_cert_file", cert)?, read("tls_key_file", key)?));
    }
    Ok(Some(tls))
}

#[async_trait]
impl Backend for EtcdBackend {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        validate_key(key)?;
        let mut kv = self.shared.client.kv_client();
        let mut resp = self.timed(kv.get(self.etcd_key(key), None)).await?;
        Ok(resp.take_kvs().into_iter().next().map(|kv| kv.into_key_value().1))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        validate_put(key, &value)?;
        let bytes = self.shared.config.path.len() + key.len() + value.len();
        self.write(vec![EtcdOp::put(self.etcd_key(key), value, None)], bytes).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        let bytes = self.shared.config.path.len() + key.len();
        self.write(vec![EtcdOp::delete(self.etcd_key(key), None)], bytes).await
    }

    /// Reads the keys under `prefix` a page at a time, jumping over a sub-folder once one of its
    /// keys is seen, so a listing costs about one request per [`LIST_PAGE`] direct children
    /// rather than reading every key below.
    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let base = self.etcd_key(prefix);
        let end = prefix_end(&base);
        let path_len = self.shared.config.path.len();
        let mut from = base.clone();
        let mut children: Vec<String> = Vec::new();
        loop {
            let mut kv = self.shared.client.kv_client();
            let opts =
                GetOptions::new().with_range(end.clone()).with_keys_only().with_limit(LIST_PAGE);
            let mut resp = self.timed(kv.get(from.clone(), Some(opts))).await?;
            let more = resp.more();
            let kvs = resp.take_kvs();
            let Some(last) = kvs.last().map(|kv| kv.key().to_vec()) else { break };
            let keys: Vec<String> = kvs
                .iter()
                .filter_map(|kv| kv.key().get(path_len..))
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            children.extend(list_children(prefix, keys.iter().map(String::as_str)));
            if !more {
                break;
            }
            // Resume after the folder of the last key, or right after the last key.
            from = match last[base.len()..].iter().position(|&b| b == b'/') {
                Some(i) => prefix_end(&last[..base.len() + i + 1]),
                None => [last.as_slice(), &[0]].concat(),
            };
            if from >= end {
                break;
            }
        }
        children.sort();
        children.dedup();
        Ok(children)
    }

    async fn transaction(&self, ops: Vec<TxnOp>) -> Result<()> {
        for op in &ops {
            match op {
                TxnOp::Put { key, value } => validate_put(key, value)?,
                TxnOp::Delete { key } => validate_key(key)?,
            }
        }
        // etcd refuses a transaction that writes one key twice; within ours the last operation
        // on a key wins, so keeping only that one is the same transaction.
        let mut last: HashMap<String, TxnOp> = HashMap::with_capacity(ops.len());
        for op in ops {
            last.insert(op.key().to_string(), op);
        }
        let mut bytes = 0;
        let mut etcd_ops = Vec::with_capacity(last.len());
        for (key, op) in last {
            bytes += self.shared.config.path.len() + key.len();
            etcd_ops.push(match op {
                TxnOp::Put { value, .. } => {
                    bytes += value.len();
                    EtcdOp::put(self.etcd_key(&key), value, None)
                }
                TxnOp::Delete { .. } => EtcdOp::delete(self.etcd_key(&key), None),
            });
        }
        self.write(etcd_ops, bytes).await
    }
}

#[async_trait]
impl HaBackend for EtcdBackend {
    fn lock_with(&self, key: &str, value: &str) -> Result<Box<dyn HaLock>> {
        validate_key(key)?;
        Ok(Box::new(EtcdLock::new(self.shared.clone(), self.etcd_key(key), value.to_string())))
    }

    fn ha_enabled(&self) -> bool {
        self.shared.config.ha_enabled
    }

    /// Fences this backend's writes on `lock`, which must be an [`EtcdLock`] held now.
    async fn register_active_node_lock(&self, lock: &dyn HaLock) -> Result<()> {
        let Some(lock) = lock.as_any().downcast_ref::<EtcdLock>() else {
            return Err(Error::Config(
                "an etcd backend can only fence on a lock taken from etcd".into(),
            ));
        };
        let fence = lock.fence().await?;
        *self.shared.fence.write().map_err(|_| Error::Io("etcd fence lock poisoned".into()))? =
            Some(fence);
        Ok(())
    }
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the keyspace, which etcd spells "\0".
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/vault/"), b"/vault0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }
}
