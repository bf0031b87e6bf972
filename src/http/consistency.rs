//! What consistency a read gets, per request (issue 6), and the headers that carry it.
//!
//! - `X-Vault-Index` (response to a write, sent back on later requests): an opaque value naming
//!   the Raft index the write was applied at. A standby serves a request carrying it only after
//!   it has applied that index, waiting at most [`INDEX_WAIT`]; then it forwards the request to
//!   the active node (`X-Vault-Inconsistent: forward-active-node`, the default) or answers 412
//!   (`X-Vault-Inconsistent: fail`), as Vault Enterprise documents.
//! - `X-Vault-Consistency: linearizable` (vaultd's own): a linearizable read on any node. A
//!   standby asks the active node for its read index over the forwarding channel (the active node
//!   runs a ReadIndex round, a quorum confirms it still leads), waits until it has applied it,
//!   then reads locally. The active node does the same round before serving such a read itself,
//!   so a deposed leader never answers one.
//! - Without either, a standby's read is eventually consistent, except that it waits (at most
//!   [`INDEX_WAIT`]) for the writes this node itself forwarded (`Core::note_relayed`), so a
//!   client reads its own write on the node it wrote through; every logical response of a
//!   Raft node carries `X-Vault-Applied-Index`, the index its local state had applied, so a
//!   client can see how far behind a node may be.
//!
//! The index value has Vault's shape (`base64("v1:<cluster id>:<index>:0:<check>")`, so Vault's
//! Go client can parse and merge it) but is not authenticated: a forged value can only make its
//! own request wait for [`INDEX_WAIT`] and then be forwarded or refused.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use base64::Engine;
use tokio::time::Instant;

use crate::core::Core;
use crate::error::Error;
use crate::ha::{HaState, LeaderAdvertisement};

pub const INDEX: &str = "x-vault-index";
pub const INCONSISTENT: &str = "x-vault-inconsistent";
pub const CONSISTENCY: &str = "x-vault-consistency";
pub const APPLIED_INDEX: &str = "x-vault-applied-index";

/// How long a standby waits to apply a requested `X-Vault-Index` (Vault's
/// `best_effort_wal_wait_duration` default).
pub const INDEX_WAIT: Duration = Duration::from_secs(2);
/// Upper bound on a linearizable read's ReadIndex round and the wait to apply its index.
pub const LINEARIZABLE_WAIT: Duration = Duration::from_secs(5);

/// How often a standby waiting for a read index looks whether another node is active now.
const LEADER_POLL: Duration = Duration::from_millis(50);
/// The pause before asking the same active node again after it refused a read index.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The internal endpoint the active node answers with its read index. Served only to requests
/// that came over the forwarding channel; clients get a 404.
pub const READ_INDEX_PATH: &str = "sys/internal/vaultd/read-index";

/// Vault's text for a 412.
pub const INDEX_NOT_PRESENT: &str = "required index state not present";

/// What the request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// Whatever this node has (eventual consistency on a standby).
    Any,
    /// At least this Raft index applied.
    Index(u64),
    Linearizable,
}

/// What a standby does when it cannot reach the wanted state in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenStale {
    Forward,
    Fail,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

/// The consistency a request asks for. `cluster_id` is this node's cluster: an index from
/// another cluster is refused (400) rather than silently ignored.
pub fn wanted(headers: &HeaderMap, cluster_id: &str) -> Result<Wanted, Error> {
    if let Some(c) = header(headers, CONSISTENCY) {
        return match c.to_ascii_lowercase().as_str() {
            "linearizable" => Ok(Wanted::Linearizable),
            "eventual" => Ok(Wanted::Any),
            other => Err(Error::bad_request(format!("invalid X-Vault-Consistency {other:?}: want \"linearizable\" or \"eventual\""))),
        };
    }
    // Vault's client may send several states (one header each); the highest index wins.
    let mut best: Option<u64> = None;
    for v in headers.get_all(INDEX) {
        let Some(v) = v.to_str().ok().map(str::trim).filter(|v| !v.is_empty()) else { continue };
        let index = decode_index(v, cluster_id).ok_or_else(|| Error::bad_request("invalid X-Vault-Index"))?;
        best = Some(best.map_or(index, |b| b.max(index)));
    }
    Ok(best.map_or(Wanted::Any, Wanted::Index))
}

pub fn when_stale(headers: &HeaderMap) -> Result<WhenStale, Error> {
    match header(headers, INCONSISTENT).map(str::to_ascii_lowercase).as_deref() {
        None | Some("forward-active-node") => Ok(WhenStale::Forward),
        Some("fail") => Ok(WhenStale::Fail),
        Some(other) => Err(Error::bad_request(format!(
            "invalid X-Vault-Inconsistent {other:?}: want \"forward-active-node\" or \"fail\""
        ))),
    }
}

fn check(cluster_id: &str, index: u64) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, format!("vaultd-index:{cluster_id}:{index}").as_bytes());
    hex::encode(&d.as_ref()[..16])
}

pub fn encode_index(cluster_id: &str, index: u64) -> String {
    let raw = format!("v1:{cluster_id}:{index}:0:{}", check(cluster_id, index));
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn decode_index(value: &str, cluster_id: &str) -> Option<u64> {
    if value.len() > 512 {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(value).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let mut parts = raw.split(':');
    let (v, cid, index, _replicated, sum) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if v != "v1" || cid != cluster_id || parts.next().is_some() {
        return None;
    }
    let index = index.parse().ok()?;
    (sum == check(cluster_id, index)).then_some(index)
}

/// A linearizable read on a standby: a read index from the active node, then this node's wait
/// to apply it, both within [`LINEARIZABLE_WAIT`]. Returns the active node that gave the index
/// and whether this node applied it in time (if not, the caller forwards to that node or
/// answers 412); an error when no active node gave a read index in time.
///
/// During a failover the advertised active node may be gone: a request to a node cut off from
/// the network gets no answer until the forwarding timeout (90 s), and one to a deposed node is
/// refused. So the standby asks whichever node is advertised as active now, as soon as it
/// learns of it, and gives up at the bound. Any node's read index serves: it was confirmed by a
/// quorum after this read began.
pub(crate) async fn standby_linearizable(core: &Core, mut leader: Arc<LeaderAdvertisement>) -> Result<(Arc<LeaderAdvertisement>, bool), Error> {
    let raft = core.raft().ok_or_else(|| Error::internal("a linearizable read needs raft"))?;
    let deadline = Instant::now() + LINEARIZABLE_WAIT;
    let mut last_error = None;
    // Bounded by the deadline: every pass returns or waits at least RETRY_PAUSE or LEADER_POLL.
    loop {
        let asked = Arc::clone(&leader);
        let ask = super::forward::read_index(&asked);
        tokio::pin!(ask);
        let mut retry_at = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let why = last_error.map_or_else(|| format!("no answer from the active node at {}", leader.cluster_addr), |e: Error| e.to_string());
                return Err(Error::Unavailable(format!("linearizable read: no read index within {LINEARIZABLE_WAIT:?}: {why}")));
            }
            tokio::select! {
                answer = &mut ask, if retry_at.is_none() => match answer {
                    Ok(index) => {
                        let applied = raft.wait_applied(index, deadline.saturating_duration_since(Instant::now())).await.is_ok();
                        return Ok((Arc::clone(&asked), applied));
                    }
                    Err(e) => {
                        tracing::debug!(active = %asked.cluster_addr, "no read index from the active node: {e}");
                        last_error = Some(e);
                        retry_at = Some(Instant::now() + RETRY_PAUSE);
                    }
                },
                _ = tokio::time::sleep(left.min(LEADER_POLL)) => {}
            }
            match core.ha_state() {
                // This node took over meanwhile: its own round (which waits for the apply too).
                HaState::Active => {
                    raft.read_index(deadline.saturating_duration_since(Instant::now())).await?;
                    return Ok((core.ha.own().unwrap_or_else(|| Arc::clone(&asked)), true));
                }
                HaState::Standby { leader: Some(now) } if now.uuid != asked.uuid => {
                    leader = now;
                    break;
                }
                _ => {}
            }
            if retry_at.is_some_and(|at| Instant::now() >= at) {
                break;
            }
        }
    }
}

/// Header value of a number (always valid).
pub fn number(n: u64) -> HeaderValue {
    HeaderValue::from(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn index_round_trips_only_in_its_cluster() {
        let v = encode_index("c1", 42);
        assert_eq!(decode_index(&v, "c1"), Some(42));
        assert_eq!(decode_index(&v, "c2"), None);
        assert_eq!(decode_index("garbage", "c1"), None);
        // Vault's shape: base64 of five colon-separated fields.
        let raw = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(&v).unwrap()).unwrap();
        assert_eq!(raw.split(':').count(), 5, "{raw}");
        // A tampered index fails its check.
        let forged = base64::engine::general_purpose::STANDARD.encode(raw.replace(":42:", ":43:"));
        assert_eq!(decode_index(&forged, "c1"), None);
    }

    #[test]
    fn requests_ask_for_a_consistency() {
        assert_eq!(wanted(&HeaderMap::new(), "c").unwrap(), Wanted::Any);
        let two = headers(&[(INDEX, &encode_index("c", 7)), (INDEX, &encode_index("c", 9))]);
        assert_eq!(wanted(&two, "c").unwrap(), Wanted::Index(9));
        assert_eq!(wanted(&headers(&[(CONSISTENCY, "Linearizable")]), "c").unwrap(), Wanted::Linearizable);
        assert!(wanted(&headers(&[(CONSISTENCY, "strong")]), "c").is_err());
        assert!(wanted(&headers(&[(INDEX, "bm9wZQ==")]), "c").is_err());
        assert_eq!(when_stale(&HeaderMap::new()).unwrap(), WhenStale::Forward);
        assert_eq!(when_stale(&headers(&[(INCONSISTENT, "fail")])).unwrap(), WhenStale::Fail);
        assert!(when_stale(&headers(&[(INCONSISTENT, "await-state")])).is_err());
    }
}
