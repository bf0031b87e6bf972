//! The checks every [`HaBackend`] must pass, so the in-memory, etcd and Raft HA backends keep
//! Vault's lock semantics.
//!
//! [`exercise_ha_backend`] ports Vault's `ExerciseHABackend` (`sdk/physical/testing.go`): `b` and
//! `b2` are two nodes' views of one store (the same backend twice is fine for an in-memory one).
//! [`exercise_ha_extras`] checks what vaultd's HA loop relies on beyond it: the lost signal, a
//! waiter woken by a release, a second `lock` on a held handle, an idempotent `unlock`.
//!
//! Like [`crate::conformance`], the functions panic naming the failed step and are compiled into
//! the library so other crates' tests can run them. Every wait is bounded by [`WAIT`].

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ha::{HaBackend, HaLock, LockLost};
use crate::Error;

/// Upper bound on any single wait in the suite: generous for a loaded machine, and it turns a
/// hang into a failure naming the step.
pub const WAIT: Duration = Duration::from_secs(30);

fn ok<T>(res: crate::Result<T>, step: &str) -> T {
    match res {
        Ok(v) => v,
        Err(e) => panic!("ha conformance: {step}: unexpected error: {e}"),
    }
}

async fn bounded<F: std::future::Future>(fut: F, step: &str) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("ha conformance: {step}: no result within {WAIT:?}"),
    }
}

async fn value(lock: &dyn HaLock, step: &str) -> Option<String> {
    ok(bounded(lock.value(), step).await, step)
}

async fn take(lock: &dyn HaLock, step: &str) -> LockLost {
    match ok(bounded(lock.lock(CancellationToken::new()), step).await, step) {
        Some(lost) => lost,
        None => panic!("ha conformance: {step}: lock returned no lost signal"),
    }
}

/// Port of Vault's `ExerciseHABackend`.
pub async fn exercise_ha_backend(b: &dyn HaBackend, b2: &dyn HaBackend) {
    // Get the lock.
    let lock = ok(b.lock_with("foo", "bar"), "initial lock_with");
    let lost = take(&*lock, "lock attempt 1").await;
    assert!(!lost.is_lost(), "ha conformance: a fresh lock is already lost");

    // Check the value.
    assert_eq!(value(&*lock, "value after lock").await.as_deref(), Some("bar"));

    // A fencing backend accepts the lock it handed out.
    ok(b.register_active_node_lock(&*lock).await, "register_active_node_lock");

    // Second acquisition should not succeed; its handle sees the lock held, with the holder's
    // value (held means *some* node holds it, not this one).
    let lock2 = ok(b2.lock_with("foo", "baz"), "lock_with 2");
    assert_eq!(
        value(&*lock2, "value through the second handle").await.as_deref(),
        Some("bar"),
        "ha conformance: the second handle must see the first holder's value"
    );

    // Cancel the attempt after 50 ms: no lock, no error.
    let stop = CancellationToken::new();
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            stop.cancel();
        })
    };
    let attempt = ok(bounded(lock2.lock(stop), "stopped lock 2").await, "stopped lock 2");
    assert!(attempt.is_none(), "ha conformance: lock 2 was taken while lock 1 was held");
    let _ = stopper.await;
    assert!(!lost.is_lost(), "ha conformance: a stopped rival made the holder lose its lock");

    // Release the first lock: now the second can take it.
    ok(bounded(lock.unlock(), "unlock 1").await, "unlock 1");
    let lost2 = take(&*lock2, "lock 2 after release").await;
    ok(b2.register_active_node_lock(&*lock2).await, "register_active_node_lock 2");
    assert_eq!(value(&*lock2, "value after lock 2").await.as_deref(), Some("baz"));
    assert_eq!(value(&*lock, "value of lock 2 seen by handle 1").await.as_deref(), Some("baz"));

    // Cleanup.
    ok(bounded(lock2.unlock(), "unlock 2").await, "unlock 2");
    bounded(lost2.wait(), "lost signal of lock 2 after unlock").await;
    assert_eq!(value(&*lock2, "value after cleanup").await, None);
}

/// What vaultd's HA loop relies on beyond Vault's suite.
pub async fn exercise_ha_extras(b: &dyn HaBackend, b2: &dyn HaBackend) {
    let a = ok(b.lock_with("extras/lock", "a"), "lock_with a");
    let c = ok(b2.lock_with("extras/lock", "c"), "lock_with c");

    // Nobody holds it yet; unlocking a lock not held is a no-op.
    assert_eq!(value(&*a, "value before any lock").await, None);
    ok(bounded(a.unlock(), "unlock of a lock not held").await, "unlock of a lock not held");

    let lost_a = take(&*a, "lock a").await;

    // Taking a lock this handle already holds is an error, and does not release it.
    match bounded(a.lock(CancellationToken::new()), "second lock on a held handle").await {
        Err(Error::LockAlreadyHeld(_)) => {}
        Err(e) => panic!("ha conformance: second lock on a held handle: wrong error: {e}"),
        Ok(_) => panic!("ha conformance: second lock on a held handle succeeded"),
    }
    assert!(!lost_a.is_lost(), "ha conformance: a refused second lock lost the lock");

    // A rival already told to stop returns without the lock.
    let stopped = CancellationToken::new();
    stopped.cancel();
    let attempt = ok(bounded(c.lock(stopped), "pre-stopped lock").await, "pre-stopped lock");
    assert!(attempt.is_none(), "ha conformance: a pre-stopped rival took a held lock");

    // A rival waiting in `lock` is woken by the release (not only by its stop) and takes it.
    let waiter = async {
        let lost = ok(c.lock(CancellationToken::new()).await, "waiting lock c");
        lost.expect("a lock without a stop signal returns Some")
    };
    let release = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ok(a.unlock().await, "unlock a while c waits");
    };
    let (lost_c, ()) =
        bounded(async { tokio::join!(waiter, release) }, "hand-over to waiter").await;
    bounded(lost_a.wait(), "lost signal of a after unlock").await;
    assert!(!lost_c.is_lost(), "ha conformance: the new holder's lock is already lost");
    assert_eq!(value(&*a, "value after hand-over").await.as_deref(), Some("c"));

    // The old holder's unlock must not release the new holder.
    ok(bounded(a.unlock(), "stale unlock").await, "stale unlock");
    assert_eq!(value(&*c, "value after a stale unlock").await.as_deref(), Some("c"));
    assert!(!lost_c.is_lost(), "ha conformance: a stale unlock released the new holder");

    // A released lock can be taken again by the same handle.
    ok(bounded(c.unlock(), "unlock c").await, "unlock c");
    let lost_a2 = take(&*a, "relock a").await;
    assert_eq!(value(&*c, "value after relock").await.as_deref(), Some("a"));
    ok(bounded(a.unlock(), "final unlock").await, "final unlock");
    bounded(lost_a2.wait(), "lost signal after final unlock").await;
    assert_eq!(value(&*c, "value after final unlock").await, None);
}
