//! The etcd HA lock: one key held under a lease.
//!
//! Taking it: grant a lease of `lock_ttl`, then one `Txn`: if the key does not exist
//! (`CreateRevision == 0`) put it with our value under the lease, else read it. If another node
//! holds it, give the lease back and watch the key until it is deleted (released, or its lease
//! expired), then try again. Every wait is bounded: the watch is re-opened at least every
//! `lock_ttl`, so a dead connection turns into an error of the next attempt.
//!
//! Holding it: a monitor task renews the lease every `lock_ttl / 3` and watches the key. The lock
//! is lost when the key is deleted or replaced, when etcd reports the lease gone, or when no
//! renewal has been acknowledged for `lock_ttl` minus a margin, counted from when the last
//! acknowledged renewal was *sent*: etcd cannot have expired the lease before then, so this
//! node stops acting as the holder before etcd lets another node take over. Whatever this node
//! believes, its fenced writes (see [`super`]) fail once the key is gone.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp as EtcdOp, WatchOptions,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{map_err, timed, Fence, Shared};
use crate::ha::{HaLock, LockLost};
use crate::{Error, Result};

/// Pause after a failed watch or renewal before the next try; the lease deadline bounds the
/// retries of a held lock, `lock`'s caller those of an attempt.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// A handle on one etcd lock key, made by [`super::EtcdBackend`]'s `lock_with`.
pub struct EtcdLock {
    shared: Arc<Shared>,
    key: Vec<u8>,
    value: String,
    /// `Some` while this handle holds (or has just lost) the lock. Held across a whole `lock`
    /// call, so `unlock` waits for an attempt in progress, as in Vault.
    state: tokio::sync::Mutex<Option<Held>>,
}

struct Held {
    lease: i64,
    create_revision: i64,
    lost: CancellationToken,
    monitor: JoinHandle<()>,
}

impl EtcdLock {
    pub(crate) fn new(shared: Arc<Shared>, key: Vec<u8>, value: String) -> Self {
        Self { shared, key, value, state: tokio::sync::Mutex::new(None) }
    }

    fn key_str(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }

    /// The fence of the lock this handle holds now.
    pub(crate) async fn fence(&self) -> Result<Fence> {
        match &*self.state.lock().await {
            Some(h) if !h.lost.is_cancelled() => {
                Ok(Fence { key: self.key.clone(), create_revision: h.create_revision })
            }
            _ => Err(Error::Fenced { lock_key: self.key_str() }),
        }
    }

    /// The lease of the lock this handle holds, if it holds it. For tests and diagnostics.
    pub async fn lease_id(&self) -> Option<i64> {
        self.state.lock().await.as_ref().filter(|h| !h.lost.is_cancelled()).map(|h| h.lease)
    }

    /// Waits (at most one `lock_ttl`) until the key is deleted at or after `start_revision`.
    async fn wait_for_delete(&self, start_revision: i64) {
        let wait = async {
            let mut watch = self.shared.client.watch_client();
            let opts = WatchOptions::new().with_start_revision(start_revision);
            let Ok(mut stream) = watch.watch(self.key.clone(), Some(opts)).await else {
                tokio::time::sleep(RETRY_PAUSE).await;
                return;
            };
            loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        if resp.canceled()
                            || resp.events().iter().any(|e| e.event_type() == EventType::Delete)
                        {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => {
                        tokio::time::sleep(RETRY_PAUSE).await;
                        return;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(self.shared.config.lock_ttl, wait).await;
    }
}

#[async_trait]
impl HaLock for EtcdLock {
    async fn lock(&self, stop: CancellationToken) -> Result<Option<LockLost>> {
        let mut state = tokio::select! {
            s = self.state.lock() => s,
            _ = stop.cancelled() => return Ok(None),
        };
        if state.as_ref().is_some_and(|h| !h.lost.is_cancelled()) {
            return Err(Error::LockAlreadyHeld(self.key_str()));
        }
        if let Some(old) = state.take() {
            old.monitor.abort();
        }
        let config = &self.shared.config;
        let ttl_secs = i64::try_from(config.lock_ttl.as_secs()).unwrap_or(i64::MAX);
        loop {
            if stop.is_cancelled() {
                return Ok(None);
            }
            let granted_at = Instant::now();
            let mut leases = self.shared.client.lease_client();
            let lease = timed(config.request_timeout, leases.grant(ttl_secs, None))
                .await?
                .map_err(map_err)?
                .id();
            let txn = Txn::new()
                .when([Compare::create_revision(self.key.clone(), CompareOp::Equal, 0)])
                .and_then([EtcdOp::put(
                    self.key.clone(),
                    self.value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([EtcdOp::get(self.key.clone(), Some(GetOptions::new().with_keys_only()))]);
            let mut kv = self.shared.client.kv_client();
            let resp = match timed(config.request_timeout, kv.txn(txn)).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => {
                    revoke_quietly(&self.shared, lease).await;
                    return Err(map_err(e));
                }
                Err(e) => {
                    revoke_quietly(&self.shared, lease).await;
                    return Err(e);
                }
            };
            let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            if resp.succeeded() {
                let lost = CancellationToken::new();
                let monitor = tokio::spawn(monitor(
                    self.shared.clone(),
                    self.key.clone(),
                    lease,
                    revision,
                    granted_at,
                    lost.clone(),
                ));
                *state =
                    Some(Held { lease, create_revision: revision, lost: lost.clone(), monitor });
                return Ok(Some(LockLost::new(lost)));
            }
            revoke_quietly(&self.shared, lease).await;
            tokio::select! {
                _ = stop.cancelled() => return Ok(None),
                _ = self.wait_for_delete(revision + 1) => {}
            }
        }
    }

    async fn unlock(&self) -> Result<()> {
        let Some(held) = self.state.lock().await.take() else { return Ok(()) };
        let was_lost = held.lost.is_cancelled();
        held.lost.cancel();
        held.monitor.abort();
        if was_lost {
            // The monitor already gave the lease back, and the key may be another node's now.
            return Ok(());
        }
        // Revoking the lease deletes the key at once, so a waiting node need not wait out the TTL.
        let mut leases = self.shared.client.lease_client();
        match timed(self.shared.config.request_timeout, leases.revoke(held.lease)).await? {
            Ok(_) => Ok(()),
            Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn value(&self) -> Result<Option<String>> {
        let mut kv = self.shared.client.kv_client();
        let mut resp = timed(self.shared.config.request_timeout, kv.get(self.key.clone(), None))
            .await?
            .map_err(map_err)?;
        Ok(resp
            .take_kvs()
            .into_iter()
            .next()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for EtcdLock {
    /// A dropped handle stops renewing and gives its lease back if a runtime is there to do it;
    /// otherwise the lease, and with it the key, expires within the TTL.
    fn drop(&mut self) {
        if let Some(held) = self.state.get_mut().take() {
            held.lost.cancel();
            held.monitor.abort();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let shared = self.shared.clone();
                runtime.spawn(async move { revoke_quietly(&shared, held.lease).await });
            }
        }
    }
}

/// Gives a lease back, bounded by the request timeout; failure only means the lease lives until
/// its TTL runs out.
async fn revoke_quietly(shared: &Shared, lease: i64) {
    let mut leases = shared.client.lease_client();
    let _ = timed(shared.config.request_timeout, leases.revoke(lease)).await;
}

/// Keeps a held lock's lease alive and watches its key; resolves `lost` when either fails.
async fn monitor(
    shared: Arc<Shared>,
    key: Vec<u8>,
    lease: i64,
    create_revision: i64,
    granted_at: Instant,
    lost: CancellationToken,
) {
    let reason = tokio::select! {
        _ = lost.cancelled() => return,
        reason = keep_alive(&shared, lease, granted_at) => reason,
        reason = watch_key(&shared, &key, create_revision) => reason,
    };
    tracing::warn!(
        lock = %String::from_utf8_lossy(&key),
        reason,
        "etcd HA lock lost"
    );
    lost.cancel();
    revoke_quietly(&shared, lease).await;
}

/// Renews the lease every TTL/3 until renewal fails for good; returns why.
async fn keep_alive(shared: &Shared, lease: i64, granted_at: Instant) -> &'static str {
    let ttl = shared.config.lock_ttl;
    // Stop a little before etcd could expire the lease: clocks drift, tasks are scheduled late.
    let margin = (ttl / 5).min(Duration::from_secs(1));
    let mut deadline = granted_at + ttl - margin;
    let mut renewer = None;
    loop {
        let sent_at = Instant::now();
        if sent_at >= deadline {
            return "no lease renewal acknowledged within the lock TTL";
        }
        let renew = async {
            match &mut renewer {
                None => {
                    // Opening the stream sends the first renewal and reads its answer.
                    let mut leases = shared.client.lease_client();
                    renewer = Some(leases.keep_alive(lease).await?);
                    Ok(true)
                }
                Some((keeper, stream)) => {
                    keeper.keep_alive().await?;
                    match stream.message().await? {
                        Some(resp) => Ok(resp.ttl() > 0),
                        None => {
                            Err(etcd_client::Error::LeaseKeepAliveError("stream closed".into()))
                        }
                    }
                }
            }
        };
        match tokio::time::timeout_at(deadline, renew).await {
            Err(_) => return "no lease renewal acknowledged within the lock TTL",
            Ok(Ok(true)) => {
                deadline = sent_at + ttl - margin;
                tokio::time::sleep_until((Instant::now() + ttl / 3).min(deadline)).await;
            }
            Ok(Ok(false)) => return "the lease expired",
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(m))) if m.contains("not found") => {
                return "the lease expired";
            }
            Ok(Err(_)) => {
                renewer = None;
                tokio::time::sleep_until((Instant::now() + RETRY_PAUSE).min(deadline)).await;
            }
        }
    }
}

/// Watches the lock key from just after its creation; returns when it is deleted or replaced.
async fn watch_key(shared: &Shared, key: &[u8], create_revision: i64) -> &'static str {
    let mut next = create_revision + 1;
    loop {
        let mut watch = shared.client.watch_client();
        let opts = WatchOptions::new().with_start_revision(next);
        if let Ok(mut stream) = watch.watch(key.to_vec(), Some(opts)).await {
            while let Ok(Some(resp)) = stream.message().await {
                if resp.canceled() {
                    // Compacted past `next`: look at the key itself.
                    if let Some(reason) = check_key(shared, key, create_revision).await {
                        return reason;
                    }
                    if let Some(h) = resp.header() {
                        next = next.max(h.revision() + 1);
                    }
                    break;
                }
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    next = next.max(kv.mod_revision() + 1);
                    if event.event_type() == EventType::Delete {
                        return "the lock key was deleted";
                    }
                    if kv.create_revision() != create_revision {
                        return "the lock key was replaced";
                    }
                }
            }
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// After a compaction: is the key still the one this node created?
async fn check_key(shared: &Shared, key: &[u8], create_revision: i64) -> Option<&'static str> {
    let mut kv = shared.client.kv_client();
    let resp = timed(shared.config.request_timeout, kv.get(key.to_vec(), None)).await.ok()?.ok()?;
    match resp.kvs().first() {
        None => Some("the lock key was deleted"),
        Some(kv) if kv.create_revision() != create_revision => Some("the lock key was replaced"),
        Some(_) => None,
    }
}
