//! The client side of the Raft transport: openraft's `RaftNetworkFactory` over the cluster port.
//!
//! ## Connections
//!
//! openraft asks for a new client often (per replication stream, per election round, per
//! ReadIndex heartbeat), and a P-521 handshake costs milliseconds, so clients do not own
//! connections. The [`Transport`] keeps one [`Peer`] per raft id, and each peer at most one
//! connection ([`Session`]), which every client for that peer shares: requests carry ids, so many
//! can be in flight on one connection (see `rpc.rs`).
//!
//! A client connects lazily, on its first RPC, as openraft requires of `new_client`. The dial runs
//! in a task of its own, bounded by [`CONNECT_TIMEOUT`], so that openraft cancelling an RPC (its
//! timeouts are as short as the 100 ms heartbeat) never cancels the dial half-way; concurrent
//! callers wait for the same dial. A failed dial is remembered for [`REDIAL_BACKOFF`]: callers in
//! that window get `Unreachable` at once, and openraft backs off.
//!
//! A connection is dropped, and the next RPC redials, when reading or writing fails, when the peer
//! sends something malformed, or when a request has gone unanswered for [`STALL_TIMEOUT`] (a peer
//! that vanished without closing its sockets).
//!
//! ## Errors, as openraft sees them
//!
//! - connect or TLS handshake failed, cluster port not started, wrong node at that address:
//!   `Unreachable` (openraft backs off before retrying);
//! - the connection broke, a malformed frame, our own deadline: `Network`;
//! - the peer's Raft answered with an error: `RemoteError`;
//! - an AppendEntries too big for one message: `PayloadTooLarge`, with a hint of how many entries
//!   fit, and openraft sends fewer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError as OpenraftError,
    RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{EntryPayload, RaftNetwork, RaftNetworkFactory};
use rustls::ClientConfig;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cluster::{dial, ClusterClientStream};
use crate::error::RaftError;
use crate::rpc::{
    decode_frame, encode_frame, frame_channel, read_frame, run_writer, FrameError, FrameSender,
    RefusedKind, RequestFrame, ResponseFrame, RpcRequest, RpcResponse, MAX_FRAME,
};
use crate::types::{Node, TypeConfig};

/// Bound on one dial: TCP connect plus TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a failed dial is remembered. Shorter than openraft's 500 ms backoff, so that a peer
/// that comes back is dialed again on openraft's next attempt.
const REDIAL_BACKOFF: Duration = Duration::from_millis(250);

/// A request unanswered this long means the peer is gone even though its socket is not closed
/// (power loss, a partition): the connection is dropped and redialed. Generous, because a
/// snapshot's last chunk is answered only after the snapshot is installed and synced.
const STALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Requests sent and not yet answered on one connection, including ones whose caller has given
/// up. Beyond this the peer is not keeping up, and new requests fail at once.
const MAX_PENDING: usize = 1024;

/// Peers remembered by the transport before unused ones are forgotten (a cluster has a handful).
const MAX_PEERS: usize = 64;

/// The AppendEntries size above which openraft is asked for fewer entries. openraft 0.9 gives an
/// AppendEntries only the heartbeat interval (100 ms) to complete; 4 MiB crosses a 1 Gbit/s link
/// in about 35 ms, leaving the rest for the follower's fsync. A single larger entry (up to
/// `MAX_TRANSACTION_BYTES`) still goes alone.
const APPEND_SOFT_LIMIT: usize = 4 * 1024 * 1024;

/// Estimated encoding overhead per entry and per operation (log id, tags, lengths), for the
/// AppendEntries size estimate.
const ENTRY_OVERHEAD: usize = 64;
const OP_OVERHEAD: usize = 16;
const MEMBERSHIP_ESTIMATE: usize = 4096;

/// How this node reaches its peers. Cloned into openraft; the node keeps a clone to switch TLS on
/// and to close connections at shutdown.
#[derive(Clone)]
pub(crate) struct Transport {
    inner: Arc<TransportInner>,
}

struct TransportInner {
    /// The client TLS config, `None` until the cluster port is started: until then every peer is
    /// unreachable.
    tls: RwLock<Option<Arc<ClientConfig>>>,
    peers: Mutex<HashMap<u64, Arc<Peer>>>,
    /// When each peer last answered an AppendEntries (what `sys/ha-status` shows as a node's
    /// last echo). One entry per peer ever contacted; a handful in a cluster.
    answered: Mutex<HashMap<u64, std::time::Instant>>,
}

impl Transport {
    pub(crate) fn new() -> Self {
        Transport {
            inner: Arc::new(TransportInner {
                tls: RwLock::new(None),
                peers: Mutex::new(HashMap::new()),
                answered: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Uses `config` for connections made from now on.
    pub(crate) fn set_tls(&self, config: Arc<ClientConfig>) {
        *self.inner.tls.write().unwrap_or_else(|p| p.into_inner()) = Some(config);
    }

    pub(crate) fn is_started(&self) -> bool {
        self.inner.tls.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Closes every connection and makes every peer unreachable (shutdown).
    pub(crate) fn close(&self) {
        *self.inner.tls.write().unwrap_or_else(|p| p.into_inner()) = None;
        let peers =
            std::mem::take(&mut *self.inner.peers.lock().unwrap_or_else(|p| p.into_inner()));
        for peer in peers.values() {
            peer.close("this node is shutting down");
        }
    }

    /// How long ago `target` last answered an AppendEntries from this node, if ever.
    pub(crate) fn last_answer(&self, target: u64) -> Option<Duration> {
        let answered = self.inner.answered.lock().unwrap_or_else(|p| p.into_inner());
        answered.get(&target).map(|t| t.elapsed())
    }

    /// Forgets a peer (it left the cluster) and closes its connection.
    pub(crate) fn forget(&self, target: u64) {
        let peer = self.inner.peers.lock().unwrap_or_else(|p| p.into_inner()).remove(&target);
        if let Some(peer) = peer {
            peer.close("the node left the cluster");
        }
    }

    fn peer(&self, target: u64, cluster_addr: &str) -> Arc<Peer> {
        let mut peers = self.inner.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = peers.get(&target) {
            if p.cluster_addr == cluster_addr {
                return Arc::clone(p);
            }
        }
        if peers.len() >= MAX_PEERS {
            peers.retain(|_, p| Arc::strong_count(p) > 1);
        }
        // A new address (the node moved) gets a new peer; the old connection closes once the
        // clients still using it are gone.
        let peer = Arc::new(Peer::new(target, cluster_addr.to_string()));
        peers.insert(target, Arc::clone(&peer));
        peer
    }
}

impl RaftNetworkFactory<TypeConfig> for Transport {
    type Network = PeerClient;

    /// Creates a client without connecting, as openraft requires: connecting is the RPC's job.
    async fn new_client(&mut self, target: u64, node: &Node) -> PeerClient {
        PeerClient {
            target,
            node: node.clone(),
            peer: self.peer(target, &node.cluster_addr),
            transport: Arc::clone(&self.inner),
        }
    }
}

enum PeerState {
    Idle { last_failure: Option<(Instant, String)> },
    Dialing,
    Connected(Arc<Session>),
}

/// One peer: its address and its (at most one) connection.
struct Peer {
    target: u64,
    cluster_addr: String,
    /// Set when the transport closes or forgets this peer: no more dials, and a dial still under
    /// way is discarded. Clients openraft still holds then get `Unreachable`.
    closed: AtomicBool,
    state: Mutex<PeerState>,
    /// Bumped when a dial finishes, successfully or not.
    dialed: watch::Sender<u64>,
}

impl Peer {
    fn new(target: u64, cluster_addr: String) -> Self {
        Peer {
            target,
            cluster_addr,
            closed: AtomicBool::new(false),
            state: Mutex::new(PeerState::Idle { last_failure: None }),
            dialed: watch::channel(0).0,
        }
    }

    fn close(&self, reason: &str) {
        self.closed.store(true, Ordering::Release);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let PeerState::Connected(session) = &*state {
            session.shared.close(reason.to_string());
        }
        *state = PeerState::Idle { last_failure: None };
    }

    /// The live connection, dialing one if needed (see the module docs).
    async fn session(
        self: &Arc<Self>,
        transport: &TransportInner,
    ) -> Result<Arc<Session>, CallError> {
        let deadline = Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(1);
        loop {
            // Subscribed before looking at the state: a dial that finishes after the look is
            // then seen as a change.
            let mut dialed = self.dialed.subscribe();
            {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if self.closed.load(Ordering::Acquire) {
                    return Err(CallError::Unreachable(format!(
                        "the transport to raft node {} is closed",
                        self.target
                    )));
                }
                if let PeerState::Connected(session) = &*state {
                    if session.shared.is_usable() {
                        return Ok(Arc::clone(session));
                    }
                    *state = PeerState::Idle { last_failure: None };
                }
                match &*state {
                    PeerState::Dialing | PeerState::Connected(_) => {}
                    PeerState::Idle { last_failure: Some((at, why)) }
                        if at.elapsed() < REDIAL_BACKOFF =>
                    {
                        return Err(CallError::Unreachable(why.clone()));
                    }
                    PeerState::Idle { .. } => {
                        let config =
                            transport.tls.read().unwrap_or_else(|p| p.into_inner()).clone();
                        let Some(config) = config else {
                            return Err(CallError::Unreachable(
                                "the cluster port of this node is not started".into(),
                            ));
                        };
                        *state = PeerState::Dialing;
                        tokio::spawn(Arc::clone(self).dial(config));
                    }
                }
            }
            match tokio::time::timeout_at(deadline, dialed.changed()).await {
                Ok(Ok(())) => continue,
                // The sender lives in `self`; it cannot be gone while we hold `self`.
                Ok(Err(_)) | Err(_) => {
                    return Err(CallError::Unreachable(format!(
                        "no connection to raft node {} at {} within {CONNECT_TIMEOUT:?}",
                        self.target, self.cluster_addr
                    )))
                }
            }
        }
    }

    async fn dial(self: Arc<Self>, config: Arc<ClientConfig>) {
        let outcome = tokio::time::timeout(CONNECT_TIMEOUT, dial(&self.cluster_addr, config)).await;
        let next = match outcome {
            Ok(Ok(stream)) => {
                tracing::debug!(peer = self.target, addr = %self.cluster_addr, "raft peer connected");
                PeerState::Connected(Arc::new(Session::start(stream, self.target)))
            }
            Ok(Err(e)) => {
                // The message only: `CallError::Unreachable` wraps it in `RaftError::Unreachable`.
                let why = match e {
                    RaftError::Unreachable(m) => m,
                    other => other.to_string(),
                };
                PeerState::Idle { last_failure: Some((Instant::now(), why)) }
            }
            Err(_) => PeerState::Idle {
                last_failure: Some((
                    Instant::now(),
                    format!(
                        "connecting to {} timed out after {CONNECT_TIMEOUT:?}",
                        self.cluster_addr
                    ),
                )),
            },
        };
        if let PeerState::Idle { last_failure: Some((_, why)) } = &next {
            tracing::debug!(peer = self.target, "raft peer unreachable: {why}");
        }
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            // Checked under the lock that `close` takes, so a session made after `close` is
            // dropped here rather than kept alive by a forgotten peer.
            *state = if self.closed.load(Ordering::Acquire) {
                PeerState::Idle { last_failure: None }
            } else {
                next
            };
        }
        self.dialed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Why an RPC did not get an answer from the peer's Raft.
#[derive(Debug)]
enum CallError {
    Unreachable(String),
    Network(String),
    TooLarge(usize),
}

impl CallError {
    fn into_rpc<E: std::error::Error>(self) -> RPCError<u64, Node, E> {
        match self {
            CallError::Unreachable(m) => {
                RPCError::Unreachable(Unreachable::new(&RaftError::Unreachable(m)))
            }
            CallError::Network(m) => RPCError::Network(NetworkError::new(&RaftError::Network(m))),
            CallError::TooLarge(n) => RPCError::Network(NetworkError::new(&RaftError::Network(
                format!("a request of {n} bytes exceeds the frame limit of {MAX_FRAME}"),
            ))),
        }
    }
}

/// One connection to a peer: a writer task, a reader task, and the requests awaiting answers.
struct Session {
    sender: FrameSender,
    shared: Arc<SessionShared>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Session {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct SessionShared {
    next_id: AtomicU64,
    state: Mutex<SessionState>,
}

struct SessionState {
    /// Set once, when the connection fails or is closed; then no request is accepted.
    closed: Option<String>,
    pending: HashMap<u64, Pending>,
}

struct Pending {
    /// When the frame was handed to the writer; `None` while it is being queued.
    sent: Option<Instant>,
    /// Dropped (the receiver then sees the connection's failure) if the session closes first.
    reply: oneshot::Sender<RpcResponse>,
}

impl SessionShared {
    fn close(&self, reason: String) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.closed.is_none() {
            state.closed = Some(reason);
        }
        state.pending.clear();
    }

    fn closed_reason(&self) -> String {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.closed.clone().unwrap_or_else(|| "the connection closed".into())
    }

    /// Open, and every sent request has been answered or is younger than `STALL_TIMEOUT`.
    fn is_usable(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.closed.is_some() {
            return false;
        }
        let stalled = state
            .pending
            .values()
            .filter_map(|p| p.sent)
            .any(|sent| sent.elapsed() > STALL_TIMEOUT);
        if stalled {
            state.closed = Some(format!("a request went unanswered for {STALL_TIMEOUT:?}"));
            state.pending.clear();
            return false;
        }
        true
    }

    fn answer(&self, response: ResponseFrame) {
        let pending =
            self.state.lock().unwrap_or_else(|p| p.into_inner()).pending.remove(&response.id);
        // No entry: a late answer after the session was cleared. A dropped receiver: the caller
        // gave up (openraft's timeout). Neither is an error.
        if let Some(p) = pending {
            let _ = p.reply.send(response.body);
        }
    }
}

/// Removes a request that was registered but never handed to the writer (the caller was
/// cancelled while the queue was full): it will get no answer and must not look like a stall.
struct Unsent<'a> {
    shared: &'a SessionShared,
    id: u64,
    armed: bool,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.state.lock().unwrap_or_else(|p| p.into_inner()).pending.remove(&self.id);
        }
    }
}

impl Session {
    fn start(stream: ClusterClientStream, target: u64) -> Session {
        let (mut rd, wr) = tokio::io::split(stream);
        let (sender, rx) = frame_channel();
        let shared = Arc::new(SessionShared {
            next_id: AtomicU64::new(1),
            state: Mutex::new(SessionState { closed: None, pending: HashMap::new() }),
        });
        let writer = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                match run_writer(wr, rx).await {
                    Ok(()) => shared.close("the connection was closed".into()),
                    Err(e) => shared.close(format!("writing to the peer failed: {e}")),
                }
            })
        };
        let reader = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let reason = loop {
                    match read_frame(&mut rd).await {
                        Ok(Some(body)) => match decode_frame::<ResponseFrame>(&body) {
                            Ok(response) => shared.answer(response),
                            Err(e) => break format!("the peer sent a malformed response: {e}"),
                        },
                        Ok(None) => break "the peer closed the connection".to_string(),
                        Err(e) => break format!("reading from the peer failed: {e}"),
                    }
                };
                tracing::debug!(peer = target, "raft connection closed: {reason}");
                shared.close(reason);
            })
        };
        Session { sender, shared, tasks: [writer, reader] }
    }

    async fn call(&self, target: u64, body: RpcRequest) -> Result<RpcResponse, CallError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_frame(&RequestFrame { id, target, body }).map_err(|e| match e {
            FrameError::TooLarge(n) => CallError::TooLarge(n),
            other => CallError::Network(other.to_string()),
        })?;
        let (reply, answer) = oneshot::channel();
        {
            let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(reason) = &state.closed {
                return Err(CallError::Network(reason.clone()));
            }
            if state.pending.len() >= MAX_PENDING {
                return Err(CallError::Network(format!(
                    "{MAX_PENDING} requests to this peer are unanswered"
                )));
            }
            state.pending.insert(id, Pending { sent: None, reply });
        }
        let mut unsent = Unsent { shared: &self.shared, id, armed: true };
        if self.sender.send(frame).await.is_err() {
            return Err(CallError::Network(self.shared.closed_reason()));
        }
        unsent.armed = false;
        if let Some(p) =
            self.shared.state.lock().unwrap_or_else(|p| p.into_inner()).pending.get_mut(&id)
        {
            p.sent = Some(Instant::now());
        }
        answer.await.map_err(|_| CallError::Network(self.shared.closed_reason()))
    }
}

/// openraft's client for one peer.
pub(crate) struct PeerClient {
    target: u64,
    node: Node,
    peer: Arc<Peer>,
    transport: Arc<TransportInner>,
}

impl PeerClient {
    /// Sends `body` and waits for the answer, at most `ttl` (openraft also times the call out;
    /// this keeps the client bounded on its own).
    async fn call(&self, body: RpcRequest, ttl: Duration) -> Result<RpcResponse, CallError> {
        let exchange = async {
            let session = self.peer.session(&self.transport).await?;
            session.call(self.target, body).await
        };
        match tokio::time::timeout(ttl, exchange).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Network(format!(
                "raft node {} did not answer within {ttl:?}",
                self.target
            ))),
        }
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RemoteError<u64, Node, E> {
        RemoteError::new_with_node(self.target, self.node.clone(), e)
    }

    fn unexpected<E: std::error::Error>(&self, response: RpcResponse) -> RPCError<u64, Node, E> {
        let err = match response {
            RpcResponse::Refused { kind: RefusedKind::WrongNode, reason } => {
                return RPCError::Unreachable(Unreachable::new(&RaftError::Unreachable(reason)))
            }
            other => RaftError::Network(format!(
                "raft node {} answered with the wrong message type: {other:?}",
                self.target
            )),
        };
        RPCError::Network(NetworkError::new(&err))
    }
}

/// Entries of `rpc` that fit in [`APPEND_SOFT_LIMIT`] by estimate, if not all of them do.
fn entries_that_fit(rpc: &AppendEntriesRequest<TypeConfig>) -> Option<u64> {
    if rpc.entries.len() <= 1 {
        return None;
    }
    let mut total = 0usize;
    for (i, entry) in rpc.entries.iter().enumerate() {
        total += ENTRY_OVERHEAD
            + match &entry.payload {
                EntryPayload::Blank => 0,
                EntryPayload::Normal(r) => r.ops.iter().map(|op| op.size() + OP_OVERHEAD).sum(),
                EntryPayload::Membership(_) => MEMBERSHIP_ESTIMATE,
            };
        if total > APPEND_SOFT_LIMIT {
            return Some(i.max(1) as u64);
        }
    }
    None
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Node, OpenraftError<u64>>> {
        if let Some(fit) = entries_that_fit(&rpc) {
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fit)));
        }
        let entries = rpc.entries.len() as u64;
        match self.call(RpcRequest::AppendEntries(rpc), option.hard_ttl()).await {
            Ok(RpcResponse::AppendEntries(Ok(r))) => {
                let mut answered =
                    self.transport.answered.lock().unwrap_or_else(|p| p.into_inner());
                if answered.len() < MAX_PEERS || answered.contains_key(&self.target) {
                    answered.insert(self.target, std::time::Instant::now());
                }
                Ok(r)
            }
            Ok(RpcResponse::AppendEntries(Err(e))) => Err(RPCError::RemoteError(self.remote(e))),
            Ok(other) => Err(self.unexpected(other)),
            // The estimate let through a message over the frame limit: ask for half.
            Err(CallError::TooLarge(_)) if entries > 1 => {
                Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(entries / 2)))
            }
            Err(e) => Err(e.into_rpc()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Node, OpenraftError<u64, InstallSnapshotError>>,
    > {
        match self.call(RpcRequest::InstallSnapshot(rpc.into()), option.hard_ttl()).await {
            Ok(RpcResponse::InstallSnapshot(Ok(r))) => Ok(r),
            Ok(RpcResponse::InstallSnapshot(Err(e))) => Err(RPCError::RemoteError(self.remote(e))),
            Ok(other) => Err(self.unexpected(other)),
            Err(e) => Err(e.into_rpc()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Node, OpenraftError<u64>>> {
        match self.call(RpcRequest::Vote(rpc), option.hard_ttl()).await {
            Ok(RpcResponse::Vote(Ok(r))) => Ok(r),
            Ok(RpcResponse::Vote(Err(e))) => Err(RPCError::RemoteError(self.remote(e))),
            Ok(other) => Err(self.unexpected(other)),
            Err(e) => Err(e.into_rpc()),
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, LogId, Vote};

    use super::*;
    use crate::types::{Op, Request};

    fn append_of(sizes: &[usize]) -> AppendEntriesRequest<TypeConfig> {
        let entries = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| Entry {
                log_id: LogId { leader_id: CommittedLeaderId::new(1, 1), index: i as u64 + 1 },
                payload: EntryPayload::Normal(Request {
                    ops: vec![Op::Put { key: "k".into(), value: vec![0; size] }],
                }),
            })
            .collect();
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries,
        }
    }

    #[test]
    fn appends_are_cut_at_the_soft_limit_but_one_entry_always_goes() {
        const MIB: usize = 1024 * 1024;
        assert_eq!(entries_that_fit(&append_of(&[100; 300])), None);
        assert_eq!(entries_that_fit(&append_of(&[MIB; 8])), Some(3));
        assert_eq!(entries_that_fit(&append_of(&[8 * MIB, 10])), Some(1));
        assert_eq!(entries_that_fit(&append_of(&[8 * MIB])), None, "a lone entry is never cut");
    }
}
