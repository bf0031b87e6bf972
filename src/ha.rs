//! High availability: which node is active, on Raft leadership or on a lock in an HA backend.
//!
//! Two sources of leadership feed one state ([`HaState`], [`Core::ha_state`]), one advertisement
//! ([`LeaderAdvertisement`] at `core/leader/<uuid>` through the barrier) and one forwarding path:
//! - integrated storage (raft): the Raft leader is the active node (below);
//! - a lock ([`LockHa`]: `storage "etcd"`, or `ha_storage "etcd"` beside another storage): the
//!   holder of [`LOCK_KEY`] in the HA backend is the active node, as in Vault (`vault/ha.go`).
//!   Each attempt takes the lock with a fresh uuid as its value; the holder registers the lock
//!   with the data backend (fenced writes), drops its caches, writes its advertisement at
//!   `core/leader/<lock value>` and serves forwarded requests on a cluster listener of its own
//!   (`cluster_address`, TLS with ALPN as on raft's port). It stops serving the moment the
//!   lock's [`LockLost`] resolves (checked on every [`Core::ha_state`]), which the etcd lock does
//!   before etcd can hand the lock to another node. Standbys read the lock's value, then the
//!   advertisement it names, and forward everything: nothing tells them what the active node
//!   changed, so they are never performance standbys. Step-down and seal release the lock.
//!
//! The Raft leader is the active node, once it has proven its leadership and finished becoming
//! active; every other unsealed node is a standby (Vault: `vault/ha.go`, where the HA lock on
//! Raft is Raft leadership itself). A sealed node is neither and takes no part in Raft.
//!
//! One background task per unsealed node (started at unseal, aborted at seal) follows the Raft
//! status watch and a short tick:
//! - Raft leader, not yet active: prove leadership (a quorum round that also applies everything
//!   committed before this term), refresh caches and routes, generate a fresh forwarding identity,
//!   write the [`LeaderAdvertisement`] at `core/leader/<uuid>` through the barrier, delete older
//!   ones, register the forwarding handler on the cluster port, and only then report Active.
//! - Active, leadership lost: report Standby at once and unregister the forwarding handler.
//! - Standby: keep the advertisement of the current leader (re-read when the leader or term
//!   changes, and while none is found, when entries were applied).
//!
//! While leadership changes there is a gap of up to about a second (the election, then the new
//! leader becoming active, then standbys reading its advertisement) in which a node knows no
//! active node. A request that arrives then waits for one, up to [`REQUEST_WAIT`], instead of
//! failing at once ([`Core::await_active`]); whichever node it then goes to still checks its
//! lease, so the wait never lets two nodes acknowledge.
//!
//! The leader lease: [`Core::ha_state`] reports Active only while a quorum acknowledged this node
//! less than [`LEASE`] ago. A voter grants no vote to another candidate until openraft's own
//! leader lease ([`vaultd_raft::LEADER_LEASE`]) has passed since it last heard this leader, and
//! the quorum's acknowledgement came after it heard it; so an active node that is cut off stops
//! serving before another node can be elected: never two active nodes acknowledging. It is
//! checked on every call, not by the task, so it holds even if the task is late.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use vaultd_raft::cluster::ALPN_REQUEST_FORWARDING;
use vaultd_raft::{ClusterHandler, ClusterListener, ClusterTls, RaftNode, RaftStatus};
use vaultd_storage::{HaBackend, HaLock, LockLost};

use crate::core::Core;
use crate::error::{Error, Result};
use crate::forwarding::{self, ForwardingIdentity};

/// Where advertisements live, below `core/`.
pub const ADVERTISEMENT_PREFIX: &str = "leader/";
/// Longest time since a quorum's acknowledgement for which a leader still serves: openraft's
/// leader lease, less [`LEASE_MARGIN`] (see the module docs).
pub const LEASE: Duration = vaultd_raft::LEADER_LEASE.saturating_sub(LEASE_MARGIN);
/// How late the age of the quorum's acknowledgement may be (the Raft metrics watch stamps it
/// when it runs, which a busy 2-core host delays); the rest of the lease must still cover a
/// heartbeat round, or a healthy active node would keep pausing between heartbeats.
const LEASE_MARGIN: Duration = Duration::from_millis(150);
const _: () = assert!(LEASE.as_millis() < vaultd_raft::LEADER_LEASE.as_millis());
/// How long a request waits for an active node while leadership changes (module docs).
pub const REQUEST_WAIT: Duration = Duration::from_secs(2);
/// While a request waits: how often it looks again besides being woken (a lease renewal wakes
/// nobody).
const REQUEST_POLL: Duration = Duration::from_millis(20);
/// How often the task looks at the state besides the Raft status watch.
const TICK: Duration = Duration::from_millis(50);
/// Upper bound on becoming active (the quorum round, the cache refresh, the advertisement).
const BECOME_ACTIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed attempt to become active, so a persistent failure does not spin.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long a step-down waits for another node to lead before this one may lead again.
pub const STEP_DOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on removing an advertisement when leaving (seal, step-down); best effort.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(1);
/// Advertisements read or deleted at once. A new leader deletes the older ones, so there are
/// only ever a few; this bounds the work if something left many behind.
const MAX_ADVERTISEMENTS: usize = 64;
/// While a standby has no advertisement for its leader: it re-reads when entries were applied
/// (the advertisement arrives as one), at most every REREAD_MIN (a write load applies entries
/// all the time), and otherwise every REREAD_MAX.
const REREAD_MIN: Duration = Duration::from_millis(20);
const REREAD_MAX: Duration = Duration::from_secs(1);

/// The active-node lock in an HA backend (Vault's `core/lock`).
pub const LOCK_KEY: &str = "core/lock";
/// How often a standby on a lock looks at the lock's holder: often while it knows no active node,
/// less once it does (each look is one read from the HA backend).
const LOCK_LOOK_UNKNOWN: Duration = Duration::from_millis(100);
const LOCK_LOOK_KNOWN: Duration = Duration::from_millis(250);
/// Pause after a failed attempt to take the lock (the HA backend unreachable).
const LOCK_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Bound on releasing the lock at seal, step-down and shutdown; the lease expires anyway.
const UNLOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// HA on a lock in an HA backend rather than on Raft leadership.
pub struct LockHa {
    /// Where the lock lives (`ha_storage`, else `storage`).
    pub backend: Arc<dyn HaBackend>,
    /// The data backend the active node registers its lock with, so that its writes fail once
    /// the lock is lost; `None` when the data backend cannot check that lock (another store).
    pub fence: Option<Arc<dyn HaBackend>>,
}

/// What the active node writes at `core/leader/<uuid>` through the barrier.
#[derive(Clone, Serialize, Deserialize)]
pub struct LeaderAdvertisement {
    pub uuid: String,
    pub api_addr: String,
    pub cluster_addr: String,
    pub identity: ForwardingIdentity,
    /// RFC 3339.
    pub active_since: String,
}

impl std::fmt::Debug for LeaderAdvertisement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderAdvertisement")
            .field("uuid", &self.uuid)
            .field("api_addr", &self.api_addr)
            .field("cluster_addr", &self.cluster_addr)
            .field("active_since", &self.active_since)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub enum HaState {
    Sealed,
    Active,
    /// Unsealed and not active; `leader` is the active node's advertisement, if known.
    Standby { leader: Option<Arc<LeaderAdvertisement>> },
}

impl HaState {
    pub fn is_active(&self) -> bool {
        matches!(self, HaState::Active)
    }
}

/// A node's HA bookkeeping, inside [`Core`].
#[derive(Default)]
pub struct Ha {
    inner: RwLock<Inner>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The node's HTTP app, which the forwarding handler runs forwarded requests through.
    app: RwLock<Option<axum::Router>>,
    /// During a step-down: this node must not become active again until it ends.
    stepping_down: AtomicBool,
    /// Woken when this node becomes active, leaves, or learns the active node: requests
    /// waiting in [`Core::await_active`].
    changed: tokio::sync::Notify,
    /// On a lock: the handle of the current attempt (released at seal), the node's own cluster
    /// listener for forwarded requests, and the step-down request to the task.
    lock: Mutex<Option<Arc<dyn HaLock>>>,
    listener: Mutex<Option<ClusterListener>>,
    step_down_requested: tokio::sync::Notify,
}

#[derive(Default)]
struct Inner {
    /// This node's own advertisement while it is active.
    own: Option<Arc<LeaderAdvertisement>>,
    /// On a standby: the active node's advertisement.
    leader: Option<Arc<LeaderAdvertisement>>,
    /// The (term, leader node id) `leader` was looked up for.
    looked_up_for: Option<(u64, String)>,
    /// The applied index and time of the last lookup that found nothing.
    last_miss: Option<(u64, Instant)>,
    /// When the standby saw the current (term, leader) first: how long finding it took.
    leader_seen_at: Option<Instant>,
    /// On a lock, while active: resolves when the lock is lost.
    lock_lost: Option<LockLost>,
}

impl Ha {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_app(&self, app: axum::Router) {
        *self.app.write().unwrap_or_else(|p| p.into_inner()) = Some(app);
    }

    /// This node's advertisement while it is active (lease aside).
    pub fn own(&self) -> Option<Arc<LeaderAdvertisement>> {
        self.read().own.clone()
    }
}

/// Whether `raft` may serve as leader now: it leads, and (with other voters) a quorum
/// acknowledged it within the lease.
fn holds_lease(raft: &RaftNode) -> bool {
    if !raft.leader_state_and_applied().0 {
        return false;
    }
    raft.voter_count() <= 1 || raft.quorum_ack_age().is_some_and(|age| age < LEASE)
}

/// The HA state as a pure function of its inputs, for [`Core::ha_state`] and its tests.
fn state_of(
    sealed: bool,
    ha_enabled: bool,
    own: Option<&Arc<LeaderAdvertisement>>,
    leased: impl FnOnce() -> bool,
    leader: Option<&Arc<LeaderAdvertisement>>,
) -> HaState {
    if sealed {
        return HaState::Sealed;
    }
    if !ha_enabled {
        return HaState::Active;
    }
    match own {
        Some(_) if leased() => HaState::Active,
        // Leader whose lease lapsed: it knows no other active node yet.
        Some(_) => HaState::Standby { leader: None },
        None => HaState::Standby { leader: leader.cloned() },
    }
}

/// Among advertisements, the newest one of the node `leader` (matched by cluster address), never
/// this node's own.
fn pick_advertisement(
    ads: Vec<LeaderAdvertisement>,
    leader_cluster_addr: &str,
    own_cluster_addr: &str,
) -> Option<LeaderAdvertisement> {
    ads.into_iter()
        .filter(|a| a.cluster_addr == leader_cluster_addr && a.cluster_addr != own_cluster_addr)
        .max_by(|a, b| a.active_since.cmp(&b.active_since))
}

impl Core {
    /// The node's HA state. Cheap: called on every request.
    pub fn ha_state(&self) -> HaState {
        let raft = self.raft();
        let inner = self.ha.read();
        state_of(
            self.is_sealed(),
            self.ha_enabled(),
            inner.own.as_ref(),
            || match raft {
                Some(r) => holds_lease(r),
                None => inner.lock_lost.as_ref().is_some_and(|l| !l.is_lost()),
            },
            inner.leader.as_ref(),
        )
    }

    /// The HA state for a request, waiting up to [`REQUEST_WAIT`] while leadership changes: on a
    /// node that knows no active node (any request), or, with `this_node` (a request forwarded
    /// here), while this node leads Raft but is not active (becoming active, or between lease
    /// renewals). Returns at once otherwise.
    pub async fn await_active(&self, this_node: bool) -> HaState {
        let started = Instant::now();
        let mut waited = false;
        loop {
            // Registered before looking, so a change between the look and the wait still wakes.
            let changed = self.ha.changed.notified();
            let state = self.ha_state();
            let waits = match &state {
                HaState::Standby { leader: None } if this_node => {
                    self.raft().is_some_and(|r| r.leader_state_and_applied().0)
                }
                HaState::Standby { leader: None } => true,
                _ => false,
            };
            let left = REQUEST_WAIT.saturating_sub(started.elapsed());
            if !waits || left.is_zero() {
                if waited {
                    tracing::debug!(
                        waited_ms = started.elapsed().as_millis() as u64,
                        active = state.is_active(),
                        known = matches!(state, HaState::Standby { leader: Some(_) }),
                        "ha: a request waited for an active node"
                    );
                }
                return state;
            }
            waited = true;
            let _ = tokio::time::timeout(left.min(REQUEST_POLL), changed).await;
        }
    }

    /// Gives the HA machinery the node's HTTP app (forwarded requests run through it).
    /// Registers the forwarding handler at once if this node is already active (dev mode
    /// unseals before the listeners exist).
    pub fn set_http_app(&self, app: axum::Router) -> Result<()> {
        self.ha.set_app(app.clone());
        if let Some(own) = self.ha.own() {
            self.register_forwarding(forwarding::server_handler(&own.identity, app)?)?;
        }
        Ok(())
    }

    /// Serves forwarded requests with `handler`: on the Raft cluster port, or on a lock, on this
    /// node's own cluster listener.
    fn register_forwarding(&self, handler: Arc<dyn ClusterHandler>) -> Result<()> {
        if let Some(raft) = self.raft() {
            raft.register_protocol(ALPN_REQUEST_FORWARDING, handler)?;
        } else if let Some(l) = self.ha.listener.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            l.register_protocol(ALPN_REQUEST_FORWARDING, handler);
        }
        Ok(())
    }

    fn unregister_forwarding(&self) {
        if let Some(raft) = self.raft() {
            raft.unregister_protocol(ALPN_REQUEST_FORWARDING);
        } else if let Some(l) = self.ha.listener.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            l.unregister_protocol(ALPN_REQUEST_FORWARDING);
        }
    }

    /// At the end of unseal: one HA step now (a node that leads becomes active before it reports
    /// unsealed), then the background task.
    pub(crate) async fn start_ha(&self) {
        if self.ha_lock.is_some() {
            return self.start_lock_ha().await;
        }
        let Some(raft) = self.raft().cloned() else { return };
        // Only a proven leader (the unseal's quorum round) steps inline: a node restored as
        // leader of an old term would wait out the whole timeout here and delay the unseal.
        if holds_lease(&raft) {
            self.ha_step(&raft).await;
        }
        let weak = self.weak();
        let handle = tokio::spawn(ha_loop(weak, raft.subscribe()));
        let old = self.ha.task.lock().unwrap_or_else(|p| p.into_inner()).replace(handle);
        if let Some(old) = old {
            old.abort();
        }
    }

    /// At seal: stop the task and stop being active; removes this node's advertisement (best
    /// effort, bounded) while the barrier is still open.
    pub(crate) async fn stop_ha(&self) {
        let task = self.ha.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            task.abort();
        }
        let own = self.leave_active("sealing");
        if let Some(own) = own {
            self.delete_advertisement(&own.uuid).await;
        }
        // On a lock: give it back (after the advertisement, which a fenced write removes only
        // while the lock is held), and close the forwarding listener.
        let lock = self.ha.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(lock) = lock {
            match tokio::time::timeout(UNLOCK_TIMEOUT, lock.unlock()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "ha: releasing the HA lock failed; it expires with its lease"),
                Err(_) => tracing::warn!("ha: releasing the HA lock timed out; it expires with its lease"),
            }
        }
        drop(self.ha.listener.lock().unwrap_or_else(|p| p.into_inner()).take());
        let mut inner = self.ha.write();
        inner.leader = None;
        inner.looked_up_for = None;
        inner.last_miss = None;
        inner.leader_seen_at = None;
    }

    /// `sys/step-down` on the active node: stop being active at once, remove the advertisement,
    /// and let another node take leadership (in the background; the request returns at once).
    pub async fn step_down(&self) -> Result<()> {
        if self.ha_lock.is_some() {
            if !self.ha_state().is_active() {
                return Err(Error::Unavailable("node is not active".into()));
            }
            if self.ha.stepping_down.swap(true, Ordering::AcqRel) {
                return Ok(());
            }
            let own = self.leave_active("step-down requested");
            if let Some(own) = own {
                self.delete_advertisement(&own.uuid).await;
            }
            // The task releases the lock and waits before it tries to take it again.
            self.ha.step_down_requested.notify_one();
            return Ok(());
        }
        let Some(raft) = self.raft().cloned() else { return Ok(()) };
        if !self.ha_state().is_active() {
            return Err(Error::Unavailable("node is not active".into()));
        }
        if self.ha.stepping_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let own = self.leave_active("step-down requested");
        if let Some(own) = own {
            self.delete_advertisement(&own.uuid).await;
        }
        let weak = self.weak();
        tokio::spawn(async move {
            let started = Instant::now();
            let handed = raft.step_down(STEP_DOWN_TIMEOUT).await;
            tracing::info!(handed, elapsed_ms = started.elapsed().as_millis() as u64, "ha: step-down finished");
            if let Some(core) = weak.upgrade() {
                core.ha.stepping_down.store(false, Ordering::Release);
            }
        });
        Ok(())
    }

    /// Stops being active (no storage writes: the node may have lost its quorum). Returns the
    /// advertisement it had, if it was active.
    fn leave_active(&self, why: &str) -> Option<Arc<LeaderAdvertisement>> {
        let own = {
            let mut inner = self.ha.write();
            inner.lock_lost = None;
            inner.own.take()
        };
        if own.is_some() {
            self.unregister_forwarding();
            self.set_active_since(None);
            self.ha.changed.notify_waiters();
            tracing::info!(reason = why, "ha: stopped active operation, now standby");
        }
        own
    }

    async fn delete_advertisement(&self, uuid: &str) {
        let key = format!("{ADVERTISEMENT_PREFIX}{uuid}");
        match tokio::time::timeout(CLEANUP_TIMEOUT, self.core_view().delete(&key)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "ha: removing the leader advertisement failed"),
            Err(_) => tracing::debug!("ha: removing the leader advertisement timed out"),
        }
    }

    /// One look at the Raft state; see the module docs.
    async fn ha_step(&self, raft: &Arc<RaftNode>) {
        let st = raft.status();
        if self.ha.read().own.is_some() {
            if !st.is_leader {
                self.leave_active("raft leadership lost");
            }
            return;
        }
        if st.is_leader {
            if self.ha.stepping_down.load(Ordering::Acquire) {
                return;
            }
            match tokio::time::timeout(BECOME_ACTIVE_TIMEOUT, self.become_active(raft)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "ha: becoming active failed; will retry");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(_) => {
                    tracing::warn!("ha: becoming active timed out; will retry");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
            return;
        }
        self.refresh_leader(&st).await;
    }

    async fn become_active(&self, raft: &Arc<RaftNode>) -> Result<()> {
        let started = Instant::now();
        let ms = |t: Instant| t.elapsed().as_millis() as u64;
        raft.wait_for_leader(BECOME_ACTIVE_TIMEOUT).await?;
        tracing::debug!(elapsed_ms = ms(started), "ha: raft leadership proven");
        self.refresh_as_new_leader().await?;
        tracing::debug!(elapsed_ms = ms(started), "ha: caches refreshed");
        self.advertise_and_serve(uuid::Uuid::new_v4().to_string(), None, started).await
    }

    /// The end of becoming active, whatever the leadership source: the advertisement under
    /// `uuid`, the forwarding handler, then Active (on a lock, for as long as `lost` has not
    /// resolved).
    async fn advertise_and_serve(&self, uuid: String, lost: Option<LockLost>, started: Instant) -> Result<()> {
        let ms = |t: Instant| t.elapsed().as_millis() as u64;
        let ad = LeaderAdvertisement {
            uuid,
            api_addr: self.api_addr.clone(),
            cluster_addr: self.cluster_addr.clone(),
            identity: ForwardingIdentity::generate()?,
            active_since: crate::kv::now_rfc3339(),
        };
        let view = self.core_view();
        view.put_json(&format!("{ADVERTISEMENT_PREFIX}{}", ad.uuid), &ad).await?;
        tracing::debug!(elapsed_ms = ms(started), "ha: advertisement written");
        let app = self.ha.app.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(app) = app {
            self.register_forwarding(forwarding::server_handler(&ad.identity, app)?)?;
        }
        // Leadership may have moved while this ran; the next step notices and leaves again.
        self.set_active_since(Some(ad.active_since.clone()));
        {
            let mut inner = self.ha.write();
            inner.own = Some(Arc::new(ad.clone()));
            inner.lock_lost = lost;
            inner.leader = None;
            inner.looked_up_for = None;
            inner.leader_seen_at = None;
        }
        self.ha.changed.notify_waiters();
        tracing::info!(elapsed_ms = ms(started), "ha: this node is now active");
        // Older advertisements only after serving: standbys pick the newest of the leader's, so
        // they are clutter, not a hazard, and each delete is a Raft round trip.
        let removed = async {
            let old = view.list(ADVERTISEMENT_PREFIX).await?;
            for uuid in old.iter().filter(|u| **u != ad.uuid).take(MAX_ADVERTISEMENTS) {
                view.delete(&format!("{ADVERTISEMENT_PREFIX}{uuid}")).await?;
            }
            Ok::<_, Error>(())
        };
        if let Err(e) = removed.await {
            tracing::debug!(error = %e, "ha: removing older advertisements failed; the next leader retries");
        }
        Ok(())
    }

    /// On a standby: finds the current leader's advertisement.
    async fn refresh_leader(&self, st: &RaftStatus) {
        let key = st.leader.as_ref().map(|n| (st.term, n.node_id.clone()));
        let (same_key, have, last_miss) = {
            let inner = self.ha.read();
            (inner.looked_up_for == key, inner.leader.is_some(), inner.last_miss)
        };
        if same_key && have {
            return;
        }
        if same_key {
            if let Some((applied, at)) = last_miss {
                let wait = if applied == st.applied_index { REREAD_MAX } else { REREAD_MIN };
                if at.elapsed() < wait {
                    return;
                }
            }
        }
        let found = match &st.leader {
            None => None,
            Some(node) => match self.read_advertisements().await {
                Ok(ads) => pick_advertisement(ads, &node.cluster_addr, &self.cluster_addr).map(Arc::new),
                Err(e) => {
                    tracing::debug!(error = %e, "ha: reading the leader advertisement failed");
                    None
                }
            },
        };
        let mut inner = self.ha.write();
        if !same_key {
            inner.leader_seen_at = Some(Instant::now());
        }
        inner.last_miss = if found.is_none() { Some((st.applied_index, Instant::now())) } else { None };
        let learned = found.is_some();
        if let (Some(ad), Some(seen)) = (&found, inner.leader_seen_at) {
            tracing::debug!(
                term = st.term,
                active = %ad.cluster_addr,
                after_ms = seen.elapsed().as_millis() as u64,
                "ha: found the active node's advertisement"
            );
        }
        inner.leader = found;
        inner.looked_up_for = key;
        drop(inner);
        if learned {
            self.ha.changed.notify_waiters();
        }
    }

    async fn read_advertisements(&self) -> Result<Vec<LeaderAdvertisement>> {
        let view = self.core_view();
        let mut ads = Vec::new();
        for uuid in view.list(ADVERTISEMENT_PREFIX).await?.iter().take(MAX_ADVERTISEMENTS) {
            if let Some(ad) = view.get_json::<LeaderAdvertisement>(&format!("{ADVERTISEMENT_PREFIX}{uuid}")).await? {
                ads.push(ad);
            }
        }
        Ok(ads)
    }
}

impl Core {
    /// Unseal on a lock: open this node's cluster listener (forwarded requests reach the active
    /// node there), then start the task that takes the lock or follows its holder.
    async fn start_lock_ha(&self) {
        match self.cluster_bind {
            // The listener's own identity serves no protocol: forwarding brings its pinned one.
            Some(bind) => match ClusterTls::generate() {
                Ok(tls) => match ClusterListener::bind(bind, &tls).await {
                    Ok(l) => *self.ha.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(l),
                    Err(e) => tracing::warn!(error = %e, "ha: the cluster listener did not start; standbys cannot forward to this node"),
                },
                Err(e) => tracing::warn!(error = %e, "ha: no TLS identity for the cluster listener"),
            },
            None => tracing::warn!("no usable cluster_address: standbys cannot forward to this node"),
        }
        let handle = tokio::spawn(lock_loop(self.weak()));
        let old = self.ha.task.lock().unwrap_or_else(|p| p.into_inner()).replace(handle);
        if let Some(old) = old {
            old.abort();
        }
    }

    /// Holder of the lock: fence the data writes on it, drop caches the previous active node
    /// made stale, advertise, serve.
    async fn become_active_on_lock(&self, lock: &dyn HaLock, uuid: &str, lost: LockLost) -> Result<()> {
        let started = Instant::now();
        if let Some(fence) = self.ha_lock.as_ref().and_then(|l| l.fence.as_ref()) {
            fence.register_active_node_lock(lock).await?;
        }
        self.reload_for_active().await?;
        self.advertise_and_serve(uuid.to_string(), Some(lost), started).await
    }

    /// On a standby on a lock: who holds the lock, and that node's advertisement. Returns when
    /// to look again.
    async fn refresh_lock_holder(&self, lock: &dyn HaLock) -> Duration {
        let value = match tokio::time::timeout(BECOME_ACTIVE_TIMEOUT, lock.value()).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "ha: reading the HA lock's holder failed");
                return LOCK_LOOK_UNKNOWN;
            }
            Err(_) => return LOCK_LOOK_UNKNOWN,
        };
        let Some(uuid) = value else {
            let mut inner = self.ha.write();
            inner.leader = None;
            inner.looked_up_for = None;
            return LOCK_LOOK_UNKNOWN;
        };
        let key = Some((0, uuid.clone()));
        {
            let inner = self.ha.read();
            if inner.looked_up_for == key && inner.leader.is_some() {
                return LOCK_LOOK_KNOWN;
            }
        }
        let found = match self.core_view().get_json::<LeaderAdvertisement>(&format!("{ADVERTISEMENT_PREFIX}{uuid}")).await {
            // A lock this node held before a restart, not expired yet, is not an active node.
            Ok(Some(ad)) if ad.cluster_addr != self.cluster_addr => Some(Arc::new(ad)),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e, "ha: reading the active node's advertisement failed");
                None
            }
        };
        let learned = found.is_some();
        {
            let mut inner = self.ha.write();
            if inner.looked_up_for != key {
                inner.leader_seen_at = Some(Instant::now());
            }
            if let (Some(ad), Some(seen)) = (&found, inner.leader_seen_at) {
                tracing::debug!(active = %ad.cluster_addr, after_ms = seen.elapsed().as_millis() as u64, "ha: found the active node's advertisement");
            }
            inner.leader = found;
            inner.looked_up_for = key;
        }
        if learned {
            self.ha.changed.notify_waiters();
            LOCK_LOOK_KNOWN
        } else {
            LOCK_LOOK_UNKNOWN
        }
    }
}

/// Releases `lock`, bounded; a failure only means its lease runs out instead.
async fn release(lock: &dyn HaLock) {
    match tokio::time::timeout(UNLOCK_TIMEOUT, lock.unlock()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "ha: releasing the HA lock failed"),
        Err(_) => tracing::debug!("ha: releasing the HA lock timed out"),
    }
}

/// The task of a node on a lock (module docs): standby until it takes the lock, active until it
/// loses it or steps down, again and again until sealed (the task is aborted).
async fn lock_loop(core: Weak<Core>) {
    loop {
        // A fresh value per attempt: the advertisement of each term is stored under it.
        let uuid = uuid::Uuid::new_v4().to_string();
        let lock: Arc<dyn HaLock> = {
            let Some(c) = core.upgrade() else { return };
            let Some(lha) = c.ha_lock.as_ref() else { return };
            match lha.backend.lock_with(LOCK_KEY, &uuid) {
                Ok(l) => {
                    let l: Arc<dyn HaLock> = Arc::from(l);
                    *c.ha.lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&l));
                    l
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ha: cannot make the HA lock; will retry");
                    drop(c);
                    tokio::time::sleep(LOCK_RETRY_PAUSE).await;
                    continue;
                }
            }
        };
        // Standby: wait for the lock, following its holder meanwhile.
        let attempt = lock.lock(CancellationToken::new());
        tokio::pin!(attempt);
        let taken = loop {
            let look = {
                let Some(c) = core.upgrade() else { return };
                c.refresh_lock_holder(&*lock).await
            };
            tokio::select! {
                r = &mut attempt => break r,
                _ = tokio::time::sleep(look) => {}
            }
        };
        let lost = match taken {
            Ok(Some(lost)) => lost,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "ha: taking the HA lock failed; will retry");
                tokio::time::sleep(LOCK_RETRY_PAUSE).await;
                continue;
            }
        };
        let Some(c) = core.upgrade() else { return };
        tracing::info!("ha: took the HA lock");
        match tokio::time::timeout(BECOME_ACTIVE_TIMEOUT, c.become_active_on_lock(&*lock, &uuid, lost.clone())).await {
            Ok(Ok(())) => {}
            failed => {
                match failed {
                    Ok(Err(e)) => tracing::warn!(error = %e, "ha: becoming active failed; will retry"),
                    _ => tracing::warn!("ha: becoming active timed out; will retry"),
                }
                c.leave_active("becoming active failed");
                release(&*lock).await;
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        }
        // Active until the lock is lost or a step-down asks to let go.
        let stepped_down = loop {
            tokio::select! {
                _ = lost.wait() => break false,
                _ = c.ha.step_down_requested.notified() => {
                    if c.ha.stepping_down.load(Ordering::Acquire) {
                        break true;
                    }
                }
            }
        };
        if !stepped_down {
            // Stop serving first (ha_state already refuses), then clean up.
            c.leave_active("the HA lock was lost");
        }
        release(&*lock).await;
        if stepped_down {
            // Vault waits before competing again, so that another node takes the lock.
            let until = Instant::now() + STEP_DOWN_TIMEOUT;
            while Instant::now() < until {
                let look = c.refresh_lock_holder(&*lock).await;
                tokio::time::sleep(look).await;
            }
            c.ha.stepping_down.store(false, Ordering::Release);
            tracing::info!("ha: step-down finished");
        }
    }
}

async fn ha_loop(core: Weak<Core>, mut status: tokio::sync::watch::Receiver<RaftStatus>) {
    // The cluster TLS keyring this node's port uses, re-read every TLS_REREAD (a rotation's
    // writes reach every node through Raft), and when the active node last checked its age.
    let mut applied_tls = None;
    let mut tls_read_at: Option<Instant> = None;
    let mut rotation_checked_at: Option<Instant> = None;
    loop {
        {
            let Some(core) = core.upgrade() else { return };
            let Some(raft) = core.raft().cloned() else { return };
            core.ha_step(&raft).await;
            if tls_read_at.is_none_or(|t| t.elapsed() >= crate::sys_raft::TLS_REREAD) {
                tls_read_at = Some(Instant::now());
                crate::sys_raft::refresh_cluster_tls(&core, &raft, &mut applied_tls).await;
            }
            if core.ha.read().own.is_some()
                && rotation_checked_at.is_none_or(|t| t.elapsed() >= crate::sys_raft::ROTATE_CHECK)
            {
                rotation_checked_at = Some(Instant::now());
                crate::sys_raft::rotate_if_due(Arc::clone(&core)).await;
            }
        }
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ad(cluster: &str, since: &str) -> LeaderAdvertisement {
        LeaderAdvertisement {
            uuid: uuid::Uuid::new_v4().to_string(),
            api_addr: format!("http://{cluster}"),
            cluster_addr: format!("https://{cluster}"),
            identity: ForwardingIdentity { cert_der: vec![1], key_der: zeroize::Zeroizing::new(vec![2]) },
            active_since: since.into(),
        }
    }

    #[test]
    fn states_follow_seal_leadership_and_lease() {
        let own = Arc::new(ad("a:1", "2026-01-01T00:00:00Z"));
        let other = Arc::new(ad("b:1", "2026-01-01T00:00:00Z"));
        assert!(matches!(state_of(true, true, Some(&own), || true, None), HaState::Sealed));
        assert!(matches!(state_of(false, false, None, || false, None), HaState::Active));
        assert!(matches!(state_of(false, true, Some(&own), || true, None), HaState::Active));
        // The lease lapsed: serves nothing, knows no active node.
        assert!(matches!(state_of(false, true, Some(&own), || false, Some(&other)), HaState::Standby { leader: None }));
        match state_of(false, true, None, || true, Some(&other)) {
            HaState::Standby { leader: Some(l) } => assert_eq!(l.uuid, other.uuid),
            s => panic!("unexpected {s:?}"),
        }
        assert!(matches!(state_of(false, true, None, || true, None), HaState::Standby { leader: None }));
    }

    #[test]
    fn standby_picks_the_newest_advertisement_of_the_raft_leader() {
        let old = ad("b:1", "2026-01-01T00:00:00Z");
        let new = ad("b:1", "2026-01-01T00:00:05Z");
        let elsewhere = ad("c:1", "2026-01-01T00:00:09Z");
        let mine = ad("a:1", "2026-01-01T00:00:10Z");
        let got = pick_advertisement(vec![old, new.clone(), elsewhere, mine.clone()], "https://b:1", "https://a:1");
        assert_eq!(got.map(|a| a.uuid), Some(new.uuid));
        assert!(pick_advertisement(vec![mine], "https://a:1", "https://a:1").is_none(), "a stale advertisement of this node is ignored");
    }

    #[test]
    fn the_lease_ends_before_a_vote_can_be_granted_and_outlasts_a_heartbeat_round() {
        // Never two actives: a voter grants no vote within LEADER_LEASE of hearing the leader.
        assert!(LEASE < vaultd_raft::LEADER_LEASE);
        assert!(vaultd_raft::LEADER_LEASE - LEASE >= Duration::from_millis(100), "margin for a late metrics report");
        // openraft sends a heartbeat every 1.5 intervals; the lease must outlast one round.
        assert!(LEASE > vaultd_raft::HEARTBEAT_INTERVAL * 3 / 2 + Duration::from_millis(50));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let a = ad("a:1", "x");
        let s = format!("{a:?}");
        assert!(!s.contains("key_der") && !s.contains("identity"), "{s}");
    }
}
