//! HTTP side of the raft join handshake (`raft_join`): served before the core's pipeline because
//! the joining node is sealed and the leader's bootstrap endpoints take no token. Bodies are
//! Vault's raw shapes (no logical envelope).

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use axum::response::Response as HttpResponse;
use serde_json::{Value, json};

use super::{Incoming, error_response, json_response};
use crate::core::Core;
use crate::error::Error;
use crate::raft_join::{self, JoinRequest};

fn body_of(inc: &Incoming) -> Result<serde_json::Map<String, Value>, Error> {
    if !matches!(inc.method, Method::PUT | Method::POST) {
        return Err(Error::UnsupportedOperation);
    }
    inc.json_body()
}

fn flag(body: &serde_json::Map<String, Value>, key: &str) -> bool {
    match body.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => super::parse_go_bool(s).unwrap_or(false),
        _ => false,
    }
}

/// `POST sys/storage/raft/join` → `{"joined": true}`.
pub async fn join(core: &Arc<Core>, inc: &Incoming) -> HttpResponse {
    let body = match body_of(inc) {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let req = JoinRequest {
        leader_api_addr: text("leader_api_addr"),
        leader_tls: raft_join::LeaderTls {
            ca_cert: Some(text("leader_ca_cert")).filter(|s| !s.is_empty()),
            client_cert: Some(text("leader_client_cert")).filter(|s| !s.is_empty()),
            client_key: Some(text("leader_client_key"))
                .filter(|s| !s.is_empty())
                .map(zeroize::Zeroizing::new),
            servername: Some(text("leader_tls_servername")).filter(|s| !s.is_empty()),
        },
        retry: flag(&body, "retry"),
        non_voter: flag(&body, "non_voter"),
    };
    match raft_join::join(core, req).await {
        Ok(()) => json_response(StatusCode::OK, &json!({ "joined": true })),
        Err(e) => error_response(&e),
    }
}

/// `POST sys/storage/raft/bootstrap/challenge` (on the leader).
pub async fn challenge(core: &Core, inc: &Incoming) -> HttpResponse {
    let result = match body_of(inc) {
        Ok(b) => raft_join::challenge(core, &b).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => error_response(&e),
    }
}

/// `POST sys/storage/raft/bootstrap/answer` (on the leader).
pub async fn answer(core: &Core, inc: &Incoming) -> HttpResponse {
    let result = match body_of(inc) {
        Ok(b) => raft_join::answer(core, &b).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => error_response(&e),
    }
}
