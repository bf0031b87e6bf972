//! Running a request against a read-only view of storage: how a performance standby serves a
//! request from its local replica (OpenBao's read-enabled standbys do the same with
//! `barrier.SetReadOnly`). Inside [`run`], every barrier write fails with
//! [`BarrierError::ReadOnly`](crate::barrier::BarrierError::ReadOnly) before it reaches storage,
//! and the attempt is recorded even if the handler swallows the error; the caller then forwards
//! the whole request to the active node instead of answering.
//!
//! The mark is task-local: work a handler spawns onto other tasks is not covered, but it cannot
//! write either, since only the Raft leader can append to the log.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

tokio::task_local! {
    static READ_ONLY: Arc<AtomicBool>;
}

/// Runs `fut` read-only. Returns its output and whether it tried to write.
pub async fn run<F: Future>(fut: F) -> (F::Output, bool) {
    let attempted = Arc::new(AtomicBool::new(false));
    let out = READ_ONLY.scope(Arc::clone(&attempted), fut).await;
    (out, attempted.load(Ordering::Acquire))
}

/// Called by the barrier before a write: `true` (and the attempt recorded) when the current task
/// runs read-only.
pub(crate) fn refuse_write() -> bool {
    READ_ONLY
        .try_with(|attempted| {
            attempted.store(true, Ordering::Release);
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_are_refused_and_recorded_only_inside_the_scope() {
        assert!(!refuse_write(), "outside a read-only scope writes are allowed");
        let ((), wrote) = run(async {}).await;
        assert!(!wrote);
        let (refused, wrote) = run(async { refuse_write() }).await;
        assert!(refused && wrote);
        assert!(!refuse_write());
    }
}
