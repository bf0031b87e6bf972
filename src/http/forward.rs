//! What a standby does with a request before dispatch: answer it itself (the lifecycle
//! endpoints, `sys/metrics`), serve a read from its local replica (a performance standby; see
//! `serve_on_standby` in the parent module), redirect the client to the active node (307), or
//! forward the request over the cluster port and relay the answer unchanged (Vault's default;
//! `internal/http/handler.go` `handleRequestForwarding`, `respondStandby`).

use std::sync::{Arc, LazyLock};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response as HttpResponse};
use serde_json::json;

use super::{consistency, metrics};
use crate::core::Core;
use crate::error::Error;
use crate::forwarding::{ForwardedRequest, Forwarder, NotActive};
use crate::ha::{HaState, LeaderAdvertisement};

/// One per process (one node): its pool follows whichever node is active.
static FORWARDER: LazyLock<Forwarder> = LazyLock::new(Forwarder::new);

/// Vault's text when a standby knows no active node (`ErrHANotEnabled` aside).
const NO_ACTIVE_NODE: &str = "local node not active but active cluster node not found";
const STANDBY_SEAL: &str = "vault cannot seal when in standby mode; please restart instead";

/// Endpoints a standby answers itself (Vault serves them outside the logical router).
fn answered_locally(path: &str) -> bool {
    matches!(
        path,
        "sys/init"
            | "sys/seal-status"
            | "sys/unseal"
            | "sys/health"
            | "sys/leader"
            | "sys/storage/raft/join"
            | "sys/storage/raft/bootstrap/challenge"
            | "sys/storage/raft/bootstrap/answer"
            | "sys/metrics"
    )
}

/// Reads only the active node can answer (what it knows as Raft leader: contact times, autopilot
/// health, the configuration it commits): a performance standby forwards them as a plain
/// standby does (Vault Enterprise keeps such a list, `perfStandbyAlwaysForwardPaths`).
fn always_forwarded(path: &str) -> bool {
    matches!(
        path,
        "sys/ha-status"
            | "sys/storage/raft/configuration"
            | "sys/storage/raft/autopilot/state"
            | "sys/storage/raft/autopilot/configuration"
    )
}

/// Snapshot save and restore always redirect: Vault streams them, it never forwards them.
fn always_redirected(path: &str) -> bool {
    path == "sys/storage/raft/snapshot" || path.starts_with("sys/storage/raft/snapshot-")
}

/// What the HTTP layer does with a request, decided before dispatch.
pub(crate) enum Decision {
    /// Answered already (forwarded, redirected, refused).
    Respond(HttpResponse),
    /// Dispatch here: this node is active (or not clustered), or the endpoint is answered by
    /// every node itself.
    Dispatch,
    /// A performance standby serves it from its local replica (read-only), unless it turns out
    /// to write; the active node to forward to then.
    Local(Arc<LeaderAdvertisement>),
}

/// Reads a performance standby tries locally. Every other method writes by intent and goes to
/// the active node whole: run against a stale replica, a write could fail a check (a KV v2
/// `cas`) that the active node would pass, and answer before attempting any write.
fn is_read(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD || method.as_str() == "LIST"
}

/// What to do with a request before dispatch. `path` is the decoded path after `/v1/`;
/// `forwarded` says it came over the forwarding channel from a standby.
pub(crate) async fn intercept(
    core: &Core,
    forwarded: bool,
    method: &Method,
    uri: &Uri,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Decision {
    if forwarded {
        // The standby saw an older advertisement. Refusing (never forwarding again) keeps a
        // request from circling; the standby redirects its client or retries.
        return match core.await_active(true).await {
            HaState::Active => Decision::Dispatch,
            _ => {
                let mut resp = StatusCode::SERVICE_UNAVAILABLE.into_response();
                resp.extensions_mut().insert(NotActive);
                Decision::Respond(resp)
            }
        };
    }
    let HaState::Standby { leader } = core.ha_state() else { return Decision::Dispatch };
    let path = path.trim_end_matches('/');
    if path == "sys/seal" && (method == Method::PUT || method == Method::POST) {
        return Decision::Respond(error(StatusCode::INTERNAL_SERVER_ERROR, STANDBY_SEAL));
    }
    // A removed node is no longer a member: it neither forwards nor serves (the core refuses).
    if answered_locally(path) || path == "sys/seal" || core.removed_from_cluster() {
        return Decision::Dispatch;
    }
    // Leadership is changing: wait briefly for the new active node rather than fail.
    let leader = match leader {
        Some(leader) => leader,
        None => match core.await_active(false).await {
            HaState::Active => return Decision::Dispatch,
            HaState::Standby { leader: Some(leader) } => leader,
            _ => return Decision::Respond(error(StatusCode::INTERNAL_SERVER_ERROR, NO_ACTIVE_NODE)),
        },
    };
    if always_redirected(path) {
        return Decision::Respond(redirect(&leader, uri));
    }
    // A performance standby ignores X-Vault-No-Request-Forwarding for the reads it serves, as
    // Vault's do.
    if core.performance_standby_enabled() && is_read(method) && !always_forwarded(path) {
        return Decision::Local(leader);
    }
    let no_forwarding = headers.get("x-vault-no-request-forwarding").is_some_and(|v| !v.is_empty());
    if no_forwarding {
        return Decision::Respond(redirect(&leader, uri));
    }
    Decision::Respond(forward(core, &leader, method, uri, headers, body).await)
}

/// Forwards the request whole to the active node and relays its answer; a request that cannot
/// be forwarded is redirected, as Vault does. When the request wrote, its index is recorded
/// ([`Core::note_relayed`]) and this node's next local read waits until it has applied it, so a
/// client that reads from the node it wrote through sees its write. (Vault's perf standbys make
/// the write's answer wait instead, `best_effort_wal_wait_duration`; waiting at the read keeps
/// that wait off every forwarded write, and reads rarely find the index not yet applied.) The
/// active node's commit hint lets this node apply the write without waiting for the leader's
/// next AppendEntries.
pub(crate) async fn forward(core: &Core, leader: &LeaderAdvertisement, method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> HttpResponse {
    let req = ForwardedRequest {
        method: method.as_str().to_string(),
        path_and_query: path_and_query(uri),
        headers: headers.iter().map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec())).collect(),
        body: body.to_vec(),
        client_addr: None,
    };
    metrics::FORWARDED.inc();
    match FORWARDER.forward(leader, req).await {
        Ok(mut resp) => {
            let hint = take_header(&mut resp, COMMIT_HINT);
            if let (Some(raft), Some(index)) = (core.raft(), written_index(&resp)) {
                if let Some(hint) = hint.as_deref().and_then(|h| std::str::from_utf8(h).ok()) {
                    raft.learn_commit(hint).await;
                }
                core.note_relayed(index);
            }
            relay(resp)
        }
        Err(e) => {
            tracing::warn!(active = %leader.cluster_addr, "request forwarding failed, redirecting: {e}");
            redirect(leader, uri)
        }
    }
}

/// Asks the active node for its read index (one round trip; the active node confirms its
/// leadership with a quorum first).
pub(crate) async fn read_index(leader: &LeaderAdvertisement) -> Result<u64, Error> {
    let req = ForwardedRequest {
        method: "GET".into(),
        path_and_query: format!("/v1/{}", consistency::READ_INDEX_PATH),
        headers: Vec::new(),
        body: Vec::new(),
        client_addr: None,
    };
    metrics::READ_INDEX.inc();
    let resp = FORWARDER.forward(leader, req).await?;
    if resp.status != 200 {
        return Err(Error::Unavailable(format!("the active node refused a read index: {}", resp.status)));
    }
    let v: serde_json::Value = serde_json::from_slice(&resp.body)?;
    v["index"].as_u64().ok_or_else(|| Error::internal("the active node sent no read index"))
}

/// Response header, on the forwarding channel only (the standby removes it), on the active
/// node's answer to a forwarded write: the Raft commit hint (`RaftNode::commit_hint`) that lets
/// the standby apply the write at once instead of waiting for the leader's replication stream
/// to bring the commit index, which under load comes only after the next entry's round trip.
const COMMIT_HINT: &str = "x-vaultd-commit-hint";

/// The active node's side: adds the commit hint to its answer to a forwarded request that
/// wrote (one that carries `X-Vault-Index`).
pub(crate) fn add_commit_hint(core: &Core, resp: &mut HttpResponse) {
    if !resp.headers().contains_key(consistency::INDEX) {
        return;
    }
    if let Some(v) = core.raft().and_then(|r| r.commit_hint()).and_then(|h| HeaderValue::from_str(&h).ok()) {
        resp.headers_mut().insert(COMMIT_HINT, v);
    }
}

fn take_header(resp: &mut crate::forwarding::ForwardedResponse, name: &str) -> Option<Vec<u8>> {
    let i = resp.headers.iter().position(|(n, _)| n.eq_ignore_ascii_case(name))?;
    Some(resp.headers.swap_remove(i).1)
}

/// The index a forwarded request's answer says it wrote at: the active node's applied index,
/// on answers that carry an `X-Vault-Index` (writes).
fn written_index(resp: &crate::forwarding::ForwardedResponse) -> Option<u64> {
    let has = |name: &str| resp.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice());
    has(consistency::INDEX)?;
    std::str::from_utf8(has(consistency::APPLIED_INDEX)?).ok()?.trim().parse().ok()
}

fn path_and_query(uri: &Uri) -> String {
    uri.path_and_query().map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string())
}

fn error(status: StatusCode, msg: &str) -> HttpResponse {
    let mut resp = (status, json!({ "errors": [msg] }).to_string()).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// 307 to the active node's `api_addr` (scheme and authority; Vault replaces any path) with the
/// original path and query.
fn redirect(leader: &LeaderAdvertisement, uri: &Uri) -> HttpResponse {
    let base = leader.api_addr.trim_end_matches('/');
    let base = match base.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.split('/').next().unwrap_or(rest)),
        None => base.to_string(),
    };
    let target = path_and_query(uri);
    let location = format!("{base}{target}");
    let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            resp.headers_mut().insert(header::LOCATION, v);
            resp
        }
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, NO_ACTIVE_NODE),
    }
}

fn relay(resp: crate::forwarding::ForwardedResponse) -> HttpResponse {
    let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut out = HttpResponse::new(Body::from(resp.body));
    *out.status_mut() = status;
    let headers = out.headers_mut();
    for (name, value) in resp.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(&value)) {
            headers.append(n, v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_and_redirected_paths() {
        for p in ["sys/health", "sys/leader", "sys/seal-status", "sys/unseal", "sys/init", "sys/storage/raft/join"] {
            assert!(answered_locally(p), "{p}");
        }
        for p in ["sys/step-down", "sys/ha-status", "secret/data/x", "sys/storage/raft/configuration"] {
            assert!(!answered_locally(p), "{p}");
        }
        assert!(always_forwarded("sys/ha-status") && always_forwarded("sys/storage/raft/autopilot/state"));
        assert!(!always_forwarded("secret/data/x") && !always_forwarded("sys/mounts"));
        assert!(always_redirected("sys/storage/raft/snapshot"));
        assert!(always_redirected("sys/storage/raft/snapshot-force"));
        assert!(!always_redirected("sys/storage/raft/snapshots"));
    }

    #[test]
    fn redirect_keeps_path_and_query_and_drops_the_api_addr_path() {
        let leader = LeaderAdvertisement {
            uuid: "u".into(),
            api_addr: "https://10.0.0.2:8200/ui/".into(),
            cluster_addr: "https://10.0.0.2:8201".into(),
            identity: crate::forwarding::ForwardingIdentity { cert_der: vec![], key_der: Default::default() },
            active_since: String::new(),
        };
        let uri: Uri = "/v1/secret/data/a?version=2".parse().expect("uri");
        let resp = redirect(&leader, &uri);
        assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(resp.headers()[header::LOCATION], "https://10.0.0.2:8200/v1/secret/data/a?version=2");
    }
}
