//! The Raft RPC protocol on the cluster port (ALPN `raft_storage_v1`): framing, message types, and
//! the server side that hands requests to the local Raft.
//!
//! ## Wire format
//!
//! One connection carries many requests at once. Each message is a frame: a big-endian `u32`
//! length, then that many bytes of MessagePack (`rmp-serde`, named fields, like everything else
//! this crate encodes). Requests carry an id, and a response carries the id of its request, so
//! responses may come back in any order: a vote is not stuck behind an append that waits for an
//! fsync. A frame is at most [`MAX_FRAME`] bytes; a larger length is a protocol error and closes
//! the connection, so a peer can never make the other side allocate more than that at once.
//!
//! Every request names the raft id it is meant for. A node answers a request for another id with
//! [`RpcResponse::Refused`] instead of handing it to Raft: an address that now belongs to another
//! node (a re-used IP, a node rebuilt under a new id) must not receive entries meant for someone
//! else.
//!
//! Snapshot chunks travel as [`SnapshotChunk`], whose data is a MessagePack binary: openraft's own
//! request type would encode its `Vec<u8>` as an array of integers, half again as large and much
//! slower to decode.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use openraft::error::{InstallSnapshotError, RaftError as OpenraftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{Raft, SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::cluster::{ClusterHandler, ClusterStream};
use crate::membership::Removal;
use crate::types::{Node, TypeConfig};

/// Largest frame either side sends or accepts. A log entry is at most
/// `MAX_TRANSACTION_BYTES` (8 MiB) and an AppendEntries is cut well below this (see
/// `network.rs`), so only a broken or hostile peer reaches it.
pub(crate) const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Bytes of frames queued for one connection's writer. Senders wait for room, so a slow peer
/// pushes back on the callers instead of growing a queue. Twice a maximal frame, so that one
/// maximal frame can always be queued behind another.
const MAX_QUEUED_BYTES: usize = 2 * MAX_FRAME;

/// Frames queued for one connection's writer, whatever their size.
const MAX_QUEUED_FRAMES: usize = 64;

/// Requests one server connection handles at once; the next frame is read only when one
/// finishes. Raft sends few at a time (one append per replication stream, votes, heartbeats),
/// so this is a bound for a misbehaving peer, not a tuning knob.
const MAX_SERVER_IN_FLIGHT: usize = 64;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RequestFrame {
    pub(crate) id: u64,
    /// The raft id this request is meant for.
    pub(crate) target: u64,
    pub(crate) body: RpcRequest,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RpcRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    InstallSnapshot(SnapshotChunk),
    /// Autopilot's liveness probe from the leader; answered with [`RpcResponse::Ack`]. Raft's own
    /// heartbeats say nothing to the application about when a follower last answered.
    Ping,
    /// The leader removed this node from the membership (`remove-peer`, autopilot's dead-server
    /// cleanup). The node records it durably and stops campaigning: a removed node that kept
    /// calling elections would disturb the cluster it is no longer part of.
    Removed { by: u64 },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ResponseFrame {
    pub(crate) id: u64,
    pub(crate) body: RpcResponse,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RpcResponse {
    AppendEntries(Result<AppendEntriesResponse<u64>, OpenraftError<u64>>),
    Vote(Result<VoteResponse<u64>, OpenraftError<u64>>),
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, OpenraftError<u64, InstallSnapshotError>>),
    /// A control message (`Ping`, `Removed`) was handled.
    Ack,
    /// The request was not given to Raft.
    Refused {
        kind: RefusedKind,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum RefusedKind {
    /// The request names another raft id than this node's.
    WrongNode,
}

/// openraft's `InstallSnapshotRequest` with its data as a MessagePack binary (module docs).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotChunk {
    vote: Vote<u64>,
    meta: SnapshotMeta<u64, Node>,
    offset: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
    done: bool,
}

impl From<InstallSnapshotRequest<TypeConfig>> for SnapshotChunk {
    fn from(r: InstallSnapshotRequest<TypeConfig>) -> Self {
        SnapshotChunk { vote: r.vote, meta: r.meta, offset: r.offset, data: r.data, done: r.done }
    }
}

impl From<SnapshotChunk> for InstallSnapshotRequest<TypeConfig> {
    fn from(c: SnapshotChunk) -> Self {
        InstallSnapshotRequest {
            vote: c.vote,
            meta: c.meta,
            offset: c.offset,
            data: c.data,
            done: c.done,
        }
    }
}

/// Encodes `msg` as one complete frame, length prefix included.
pub(crate) fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; 4];
    rmp_serde::encode::write_named(&mut buf, msg).map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    // Cannot fail: MAX_FRAME fits in a u32.
    let len = u32::try_from(len).map_err(|_| FrameError::TooLarge(len))?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}

pub(crate) fn decode_frame<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    rmp_serde::from_slice(body).map_err(|e| FrameError::Decode(e.to_string()))
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("encoding a frame: {0}")]
    Encode(String),
    #[error("decoding a frame: {0}")]
    Decode(String),
    #[error("a frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
}

/// Reads one frame's body. `Ok(None)` is a clean end of stream between frames.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the peer announced a frame of {len} bytes (limit {MAX_FRAME})"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// A frame queued for a connection's writer, holding its share of the byte budget until written.
struct OutFrame {
    bytes: Vec<u8>,
    _budget: OwnedSemaphorePermit,
}

/// The sending half of a connection: frames go through a bounded queue to one writer task, so
/// a frame is always written whole even if the caller that queued it gives up (openraft drops
/// an RPC's future when its timeout fires).
#[derive(Clone)]
pub(crate) struct FrameSender {
    tx: mpsc::Sender<OutFrame>,
    budget: Arc<Semaphore>,
}

pub(crate) struct FrameReceiver(mpsc::Receiver<OutFrame>);

pub(crate) fn frame_channel() -> (FrameSender, FrameReceiver) {
    let (tx, rx) = mpsc::channel(MAX_QUEUED_FRAMES);
    (FrameSender { tx, budget: Arc::new(Semaphore::new(MAX_QUEUED_BYTES)) }, FrameReceiver(rx))
}

/// The writer is gone: the connection is closed or closing.
#[derive(Debug)]
pub(crate) struct WriterClosed;

impl FrameSender {
    /// Queues a complete frame (from [`encode_frame`]); waits while the queue is full.
    pub(crate) async fn send(&self, bytes: Vec<u8>) -> Result<(), WriterClosed> {
        // encode_frame caps frames at MAX_FRAME + 4, well within the budget and a u32.
        let n = u32::try_from(bytes.len()).map_err(|_| WriterClosed)?;
        let budget =
            Arc::clone(&self.budget).acquire_many_owned(n).await.map_err(|_| WriterClosed)?;
        self.tx.send(OutFrame { bytes, _budget: budget }).await.map_err(|_| WriterClosed)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Writes queued frames until every sender is gone (then shuts the stream down) or a write fails.
/// Flushes only when the queue is empty, so a burst of frames leaves in few TLS records.
pub(crate) async fn run_writer<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: FrameReceiver,
) -> io::Result<()> {
    while let Some(frame) = rx.0.recv().await {
        w.write_all(&frame.bytes).await?;
        drop(frame);
        if rx.0.is_empty() {
            w.flush().await?;
        }
    }
    w.shutdown().await
}

/// The server side of `raft_storage_v1`: hands each request to this node's Raft.
pub(crate) struct RaftRpcService {
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) raft_id: u64,
    pub(crate) removal: Arc<Removal>,
}

#[async_trait]
impl ClusterHandler for RaftRpcService {
    async fn serve(&self, stream: ClusterStream, peer: SocketAddr) {
        let (mut rd, wr) = tokio::io::split(stream);
        let (sender, rx) = frame_channel();
        // Owns the writer and every request in progress: dropping it when the connection ends
        // aborts them, so nothing outlives the connection.
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            if let Err(e) = run_writer(wr, rx).await {
                tracing::debug!(%peer, "raft connection: writing failed: {e}");
            }
        });
        let in_flight = Arc::new(Semaphore::new(MAX_SERVER_IN_FLIGHT));
        loop {
            while tasks.try_join_next().is_some() {}
            if sender.is_closed() {
                break;
            }
            let body = match read_frame(&mut rd).await {
                Ok(Some(body)) => body,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(%peer, "raft connection: reading failed: {e}");
                    break;
                }
            };
            let request: RequestFrame = match decode_frame(&body) {
                Ok(r) => r,
                Err(e) => {
                    // Without a decodable id there is nothing to answer: close, and the peer's
                    // pending requests fail and it reconnects.
                    tracing::warn!(%peer, "raft connection: closing after a malformed request: {e}");
                    break;
                }
            };
            drop(body);
            let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else { break };
            let (raft, sender, raft_id) = (self.raft.clone(), sender.clone(), self.raft_id);
            let removal = Arc::clone(&self.removal);
            tasks.spawn(async move {
                let id = request.id;
                let body = handle(&raft, raft_id, &removal, request).await;
                match encode_frame(&ResponseFrame { id, body }) {
                    // A closed writer means the connection is going away; the peer sees that.
                    Ok(bytes) => {
                        let _ = sender.send(bytes).await;
                    }
                    Err(e) => {
                        tracing::error!(%peer, "raft connection: cannot encode a response: {e}")
                    }
                }
                drop(permit);
            });
        }
    }
}

async fn handle(
    raft: &Raft<TypeConfig>,
    raft_id: u64,
    removal: &Removal,
    request: RequestFrame,
) -> RpcResponse {
    if request.target != raft_id {
        return RpcResponse::Refused {
            kind: RefusedKind::WrongNode,
            reason: format!(
                "this is raft node {raft_id}, not {}: the address now belongs to another node",
                request.target
            ),
        };
    }
    match request.body {
        RpcRequest::AppendEntries(r) => RpcResponse::AppendEntries(raft.append_entries(r).await),
        RpcRequest::Vote(r) => RpcResponse::Vote(raft.vote(r).await),
        RpcRequest::InstallSnapshot(c) => {
            RpcResponse::InstallSnapshot(raft.install_snapshot(c.into()).await)
        }
        RpcRequest::Ping => RpcResponse::Ack,
        RpcRequest::Removed { by } => {
            if let Err(e) = removal.mark(&format!("raft node {by} removed it")).await {
                tracing::error!("cannot record that this node was removed: {e}");
            }
            RpcResponse::Ack
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_lengths_are_refused() {
        let msg = ResponseFrame {
            id: 7,
            body: RpcResponse::Refused { kind: RefusedKind::WrongNode, reason: "x".into() },
        };
        let bytes = encode_frame(&msg).expect("encode");
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes);
        let mut r = &two[..];
        for _ in 0..2 {
            let body = read_frame(&mut r).await.expect("read").expect("a frame");
            let back: ResponseFrame = decode_frame(&body).expect("decode");
            assert_eq!(back.id, 7);
        }
        assert!(read_frame(&mut r).await.expect("clean end").is_none());

        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        let mut r = &huge[..];
        assert!(read_frame(&mut r).await.is_err(), "a length above the limit is refused");
        let truncated = [0u8, 0, 0, 9, 1, 2];
        let mut r = &truncated[..];
        assert!(read_frame(&mut r).await.is_err(), "a frame cut short is an error");
    }

    #[test]
    fn snapshot_data_travels_as_binary() {
        let chunk = SnapshotChunk {
            vote: Vote::new(1, 1),
            meta: SnapshotMeta::default(),
            offset: 0,
            data: vec![0xff; 1000],
            done: true,
        };
        let bytes = encode_frame(&chunk).expect("encode");
        assert!(bytes.len() < 1200, "1000 bytes of 0xff took {} bytes", bytes.len());
    }
}
