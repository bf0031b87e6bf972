//! HA backends: a named lock that at most one node holds at a time, the way Vault chooses its
//! active node when the storage is shared (Vault's `physical.HABackend` and `physical.Lock`).
//!
//! The semantics follow Vault's, and [`crate::ha_conformance`] checks them on every
//! implementation:
//! - [`HaBackend::lock_with`] makes a handle for `key` that advertises `value` while it holds the
//!   lock (Vault's `LockWith`). It does not touch the store.
//! - [`HaLock::lock`] blocks until the lock is taken or `stop` is cancelled (Vault's
//!   `Lock(stopCh)`): `Ok(Some(lost))` when taken, `Ok(None)` when stopped. `lost` resolves when
//!   the lock is lost (lease expired, key deleted, store unreachable past the lease) or released.
//! - [`HaLock::value`] reports whether *any* node holds the lock and the holder's value
//!   (Vault's `Value()`; `None` = not held).
//! - [`HaLock::unlock`] releases it (Vault's `Unlock`); releasing a lock not held is a no-op.
//!
//! Fencing (Vault's `FencingHABackend`): after taking the active-node lock the server calls
//! [`HaBackend::register_active_node_lock`]; a backend that can fence then makes its data writes
//! conditional on that lock still being held, so a paused old active node cannot overwrite the
//! new one's data. Backends that cannot fence accept the call and do nothing.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// Resolves when a held lock is lost or released. Cheap to clone; every clone sees the same loss.
#[derive(Clone, Debug)]
pub struct LockLost(CancellationToken);

impl LockLost {
    pub(crate) fn new(token: CancellationToken) -> Self {
        Self(token)
    }

    /// Waits until the lock is lost (returns at once if it already is).
    pub async fn wait(&self) {
        self.0.cancelled().await
    }

    pub fn is_lost(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// A store that can elect one holder of a named lock among the nodes that share it.
#[async_trait]
pub trait HaBackend: Send + Sync + 'static {
    /// A handle on the lock `key` that, once taken, advertises `value` to every node.
    fn lock_with(&self, key: &str, value: &str) -> Result<Box<dyn HaLock>>;

    /// Whether this backend elects an active node (the banner's "(HA available)").
    fn ha_enabled(&self) -> bool {
        true
    }

    /// Makes this backend's data writes conditional on `lock` (taken through this backend) still
    /// being held (Vault's `RegisterActiveNodeLock`). Writes made before any registration are not
    /// fenced, as cluster initialisation needs. The default, for backends that cannot fence,
    /// accepts and does nothing.
    async fn register_active_node_lock(&self, lock: &dyn HaLock) -> Result<()> {
        let _ = lock;
        Ok(())
    }
}

/// One node's handle on a named lock.
#[async_trait]
pub trait HaLock: Send + Sync + 'static {
    /// Takes the lock, waiting while another node holds it, until `stop` is cancelled.
    /// `Ok(None)` means stopped before the lock was taken. A store error ends the attempt with
    /// `Err`; the caller retries (as Vault's core does). Taking a lock this handle already holds
    /// is [`Error::LockAlreadyHeld`]; a lost lock can be taken again.
    async fn lock(&self, stop: CancellationToken) -> Result<Option<LockLost>>;

    /// Releases the lock if this handle holds it, and resolves its [`LockLost`].
    async fn unlock(&self) -> Result<()>;

    /// The value of the current holder, whoever it is; `None` when nobody holds the lock.
    async fn value(&self) -> Result<Option<String>>;

    /// For backends that recognise their own lock type in `register_active_node_lock`.
    fn as_any(&self) -> &dyn Any;
}

/// The in-memory HA backend: locks shared by every clone of one `InmemHaBackend`, for tests and
/// for `storage "inmem"` with HA (Vault's `inmem_ha`). Nothing survives the process.
#[derive(Clone, Default)]
pub struct InmemHaBackend {
    shared: Arc<InmemLocks>,
}

#[derive(Default)]
struct InmemLocks {
    held: Mutex<HashMap<String, InmemHolder>>,
    /// Woken on every release, so waiting lockers look again.
    released: Notify,
}

struct InmemHolder {
    value: String,
    /// Which handle holds the lock: a stale handle's unlock must not release a newer holder.
    handle_id: u64,
    lost: CancellationToken,
}

impl InmemHaBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the lock `key` away from its holder, as a lease expiring in a real store would:
    /// the holder's [`LockLost`] resolves and a waiting locker gets the lock. For tests.
    pub fn break_lock(&self, key: &str) {
        if let Ok(mut held) = self.shared.held.lock() {
            if let Some(holder) = held.remove(key) {
                holder.lost.cancel();
            }
        }
        self.shared.released.notify_waiters();
    }
}

fn poisoned() -> Error {
    Error::Io("in-memory lock table poisoned".into())
}

impl HaBackend for InmemHaBackend {
    fn lock_with(&self, key: &str, value: &str) -> Result<Box<dyn HaLock>> {
        crate::validate_key(key)?;
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(Box::new(InmemLock {
            shared: self.shared.clone(),
            key: key.to_string(),
            value: value.to_string(),
            handle_id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }))
    }
}

struct InmemLock {
    shared: Arc<InmemLocks>,
    key: String,
    value: String,
    handle_id: u64,
}

#[async_trait]
impl HaLock for InmemLock {
    async fn lock(&self, stop: CancellationToken) -> Result<Option<LockLost>> {
        loop {
            // Register for the wake-up before looking, so a release between the look and the
            // wait is not missed.
            let released = self.shared.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut held = self.shared.held.lock().map_err(|_| poisoned())?;
                match held.get(&self.key) {
                    Some(h) if h.handle_id == self.handle_id => {
                        return Err(Error::LockAlreadyHeld(self.key.clone()))
                    }
                    Some(_) => {}
                    None => {
                        let lost = CancellationToken::new();
                        held.insert(
                            self.key.clone(),
                            InmemHolder {
                                value: self.value.clone(),
                                handle_id: self.handle_id,
                                lost: lost.clone(),
                            },
                        );
                        return Ok(Some(LockLost::new(lost)));
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(None),
                _ = released => {}
            }
        }
    }

    async fn unlock(&self) -> Result<()> {
        {
            let mut held = self.shared.held.lock().map_err(|_| poisoned())?;
            if held.get(&self.key).is_none_or(|h| h.handle_id != self.handle_id) {
                return Ok(());
            }
            if let Some(holder) = held.remove(&self.key) {
                holder.lost.cancel();
            }
        }
        self.shared.released.notify_waiters();
        Ok(())
    }

    async fn value(&self) -> Result<Option<String>> {
        let held = self.shared.held.lock().map_err(|_| poisoned())?;
        Ok(held.get(&self.key).map(|h| h.value.clone()))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for InmemLock {
    /// A dropped handle cannot unlock any more: release what it holds, as a lease would expire.
    fn drop(&mut self) {
        let released = match self.shared.held.lock() {
            Ok(mut held) => {
                if held.get(&self.key).is_some_and(|h| h.handle_id == self.handle_id) {
                    if let Some(holder) = held.remove(&self.key) {
                        holder.lost.cancel();
                    }
                    true
                } else {
                    false
                }
            }
            Err(_) => false,
        };
        if released {
            self.shared.released.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::{HaBackend, InmemHaBackend};
    use crate::ha_conformance;

    #[tokio::test]
    async fn exercise_ha_backend() {
        let b = InmemHaBackend::new();
        ha_conformance::exercise_ha_backend(&b, &b.clone()).await;
    }

    #[tokio::test]
    async fn exercise_ha_extras() {
        let b = InmemHaBackend::new();
        ha_conformance::exercise_ha_extras(&b, &b.clone()).await;
    }

    /// A broken lock (lease expiry) resolves the holder's signal and hands the lock to a waiter.
    #[tokio::test]
    async fn break_lock_hands_over() {
        let b = InmemHaBackend::new();
        let a = b.lock_with("core/lock", "a").unwrap();
        let lost = a.lock(CancellationToken::new()).await.unwrap().unwrap();
        let b2 = b.clone();
        let waiter = tokio::spawn(async move {
            let l = b2.lock_with("core/lock", "b").unwrap();
            let got = l.lock(CancellationToken::new()).await.unwrap();
            (got.is_some(), l)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        b.break_lock("core/lock");
        tokio::time::timeout(Duration::from_secs(10), lost.wait()).await.unwrap();
        let (took, l) =
            tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap();
        assert!(took);
        assert_eq!(l.value().await.unwrap().as_deref(), Some("b"));
        // The old holder's unlock must not release the new holder.
        a.unlock().await.unwrap();
        assert_eq!(a.value().await.unwrap().as_deref(), Some("b"));
    }
}
