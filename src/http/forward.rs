//! What a standby does with a request before dispatch: answer it itself (the lifecycle
//! endpoints), redirect the client to the active node (307), or forward the request over the
//! cluster port and relay the answer unchanged (Vault's default; `internal/http/handler.go`
//! `handleRequestForwarding`, `respondStandby`).

use std::sync::LazyLock;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response as HttpResponse};
use serde_json::json;

use crate::core::Core;
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
    )
}

/// Snapshot save and restore always redirect: Vault streams them, it never forwards them.
fn always_redirected(path: &str) -> bool {
    path == "sys/storage/raft/snapshot" || path.starts_with("sys/storage/raft/snapshot-")
}

/// `Some(response)` when this node must not dispatch the request itself. `path` is the decoded
/// path after `/v1/`; `forwarded` says it came over the forwarding channel from a standby.
pub(crate) async fn intercept(
    core: &Core,
    forwarded: bool,
    method: &Method,
    uri: &Uri,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<HttpResponse> {
    if forwarded {
        // The standby saw an older advertisement. Refusing (never forwarding again) keeps a
        // request from circling; the standby redirects its client or retries.
        return match core.await_active(true).await {
            HaState::Active => None,
            _ => {
                let mut resp = StatusCode::SERVICE_UNAVAILABLE.into_response();
                resp.extensions_mut().insert(NotActive);
                Some(resp)
            }
        };
    }
    let HaState::Standby { leader } = core.ha_state() else { return None };
    let path = path.trim_end_matches('/');
    if path == "sys/seal" && (method == Method::PUT || method == Method::POST) {
        return Some(error(StatusCode::INTERNAL_SERVER_ERROR, STANDBY_SEAL));
    }
    // A removed node is no longer a member: it neither forwards nor serves (the core refuses).
    if answered_locally(path) || path == "sys/seal" || core.removed_from_cluster() {
        return None;
    }
    // Leadership is changing: wait briefly for the new active node rather than fail.
    let leader = match leader {
        Some(leader) => leader,
        None => match core.await_active(false).await {
            HaState::Active => return None,
            HaState::Standby { leader: Some(leader) } => leader,
            _ => return Some(error(StatusCode::INTERNAL_SERVER_ERROR, NO_ACTIVE_NODE)),
        },
    };
    let no_forwarding = headers.get("x-vault-no-request-forwarding").is_some_and(|v| !v.is_empty());
    if no_forwarding || always_redirected(path) {
        return Some(redirect(&leader, uri));
    }
    let req = ForwardedRequest {
        method: method.as_str().to_string(),
        path_and_query: uri.path_and_query().map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string()),
        headers: headers.iter().map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec())).collect(),
        body: body.to_vec(),
        client_addr: None,
    };
    match FORWARDER.forward(&leader, req).await {
        Ok(resp) => Some(relay(resp)),
        Err(e) => {
            // As Vault: a request that cannot be forwarded is redirected.
            tracing::warn!(active = %leader.cluster_addr, "request forwarding failed, redirecting: {e}");
            Some(redirect(&leader, uri))
        }
    }
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
    let target = uri.path_and_query().map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string());
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
