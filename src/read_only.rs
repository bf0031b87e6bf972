//! Running a request against a read-only view of storage: how a performance standby serves a
//! request from its local replica (OpenBao's read-enabled standbys do the same with
//! `barrier.SetReadOnly`). Inside [`run`], every barrier write fails with
//! [`BarrierError::ReadOnly`](crate::barrier::BarrierError::ReadOnly) before it reaches storage,
//! and the attempt is recorded even if the handler swallows the error; the caller then forwards
//! the whole request to the active node instead of answering. So it does for a token the local
//! replica does not know: the active node may have just created it.
//!
//! The mark is task-local: work a handler spawns onto other tasks is not covered, but it cannot
//! write either, since only the Raft leader can append to the log.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What a request run read-only ran into.
#[derive(Default)]
pub struct Outcome {
    /// It tried to write storage.
    pub wrote: AtomicBool,
    /// Its token is not in the local replica (never created, revoked, expired, or created on
    /// the active node and not applied here yet). Only the active node can tell which.
    pub unknown_token: AtomicBool,
}

impl Outcome {
    /// Whether the request must go to the active node instead.
    pub fn must_forward(&self) -> bool {
        self.wrote.load(Ordering::Acquire) || self.unknown_token.load(Ordering::Acquire)
    }
}

tokio::task_local! {
    static READ_ONLY: Arc<Outcome>;
}

/// Runs `fut` read-only. Returns its output and what it ran into.
pub async fn run<F: Future>(fut: F) -> (F::Output, Arc<Outcome>) {
    let outcome = Arc::new(Outcome::default());
    let out = READ_ONLY.scope(Arc::clone(&outcome), fut).await;
    (out, outcome)
}

/// Called by the barrier before a write: `true` (and the attempt recorded) when the current task
/// runs read-only.
pub(crate) fn refuse_write() -> bool {
    READ_ONLY.try_with(|o| o.wrote.store(true, Ordering::Release)).is_ok()
}

/// Called by the core when a request's token is not found; recorded only in a read-only run.
pub(crate) fn note_unknown_token() {
    let _ = READ_ONLY.try_with(|o| o.unknown_token.store(true, Ordering::Release));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_are_refused_and_recorded_only_inside_the_scope() {
        assert!(!refuse_write(), "outside a read-only scope writes are allowed");
        let ((), o) = run(async {}).await;
        assert!(!o.must_forward());
        let (refused, o) = run(async { refuse_write() }).await;
        assert!(refused && o.wrote.load(Ordering::Acquire) && o.must_forward());
        assert!(!refuse_write());
        let ((), o) = run(async { note_unknown_token() }).await;
        assert!(o.must_forward() && !o.wrote.load(Ordering::Acquire));
    }
}
