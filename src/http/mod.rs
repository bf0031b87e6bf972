//! The HTTP API: listeners, request parsing, Vault's JSON envelope, and the one place where
//! errors become status codes.
//!
//! Requests flow `listener -> parse (this module) -> lifecycle handler or Core::handle_request`.
//! Lifecycle endpoints (init, unseal, seal-status, health, leader) live in [`lifecycle`] because
//! they answer while the node is sealed; everything else goes through the core.

pub mod consistency;
mod forward;
pub mod lifecycle;
pub mod metrics;
pub mod listener;
pub mod raft;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response as HttpResponse};
use serde_json::{json, Map, Value};

use crate::barrier::BarrierError;
use vaultd_raft::RaftError;
use crate::core::Core;
use crate::error::Error;
use crate::request::{Operation, Request, Response};

/// Per-listener settings the handler needs.
#[derive(Clone)]
pub struct AppState {
    pub core: Arc<Core>,
    /// `None`: unlimited (Vault's negative `max_request_size`).
    pub max_request_size: Option<usize>,
}

pub fn app(state: AppState) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(state)
}

/// Maps every error to its HTTP status: the only place this happens.
pub fn error_status(e: &Error) -> StatusCode {
    match e {
        Error::PermissionDenied | Error::MissingToken | Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::Sealed => StatusCode::SERVICE_UNAVAILABLE,
        Error::NotInitialized | Error::AlreadyInitialized | Error::BadRequest(_) => StatusCode::BAD_REQUEST,
        Error::NoHandler(_) | Error::UnsupportedPath => StatusCode::NOT_FOUND,
        Error::UnsupportedOperation => StatusCode::METHOD_NOT_ALLOWED,
        Error::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Seal(e) if e.is_user_error() => StatusCode::BAD_REQUEST,
        Error::Barrier(BarrierError::Sealed | BarrierError::ReadOnly) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Barrier(BarrierError::Storage(vaultd_storage::Error::ValueTooLarge { .. })) => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Barrier(BarrierError::Storage(vaultd_storage::Error::InvalidKey(_))) => StatusCode::BAD_REQUEST,
        // A fenced write: this node lost the HA lock, so it is no longer the one that may write;
        // like a write on a non-leader, the client tries again (at the new active node).
        Error::Barrier(BarrierError::Storage(
            vaultd_storage::Error::NotLeader { .. } | vaultd_storage::Error::Unavailable(_) | vaultd_storage::Error::Fenced { .. },
        )) => StatusCode::SERVICE_UNAVAILABLE,
        // More keys or bytes in one transaction than etcd takes: too large, as a value would be.
        Error::Barrier(BarrierError::Storage(vaultd_storage::Error::TransactionTooLarge(_))) => StatusCode::PAYLOAD_TOO_LARGE,
        // A lock taken twice by one handle or an unusable storage stanza: the server's fault.
        Error::Barrier(BarrierError::Storage(vaultd_storage::Error::LockAlreadyHeld(_) | vaultd_storage::Error::Config(_))) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        Error::Raft(e) => match e {
            RaftError::Membership(_) | RaftError::Config(_) | RaftError::AlreadyInitialized => StatusCode::BAD_REQUEST,
            RaftError::NotLeader { .. }
            | RaftError::Unreachable(_)
            | RaftError::Network(_)
            | RaftError::Timeout(..)
            | RaftError::Stopped(_) => StatusCode::SERVICE_UNAVAILABLE,
            RaftError::Tls(_) | RaftError::Io(_) | RaftError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
        },
        Error::JoinFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        Error::Seal(_) | Error::Barrier(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub fn error_response(e: &Error) -> HttpResponse {
    let mut status = error_status(e);
    let msg = e.to_string();
    // Vault maps any error mentioning the sealed state to 503, whatever raised it.
    if msg.contains("Vault is sealed") {
        status = StatusCode::SERVICE_UNAVAILABLE;
    }
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        tracing::error!(error = %msg, "request failed");
    }
    json_response(status, &json!({ "errors": [msg] }))
}

pub fn json_response(status: StatusCode, body: &Value) -> HttpResponse {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = (status, bytes).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn empty_response(status: StatusCode) -> HttpResponse {
    let mut resp = status.into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn not_found() -> HttpResponse {
    json_response(StatusCode::NOT_FOUND, &json!({ "errors": [] }))
}

/// The parsed parts of an HTTP request that every handler uses.
pub struct Incoming {
    pub method: Method,
    pub path: String,
    pub query: Map<String, Value>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Incoming {
    pub fn token(&self) -> Option<String> {
        if let Some(t) = self.headers.get("x-vault-token").and_then(|v| v.to_str().ok()) {
            return Some(t.trim().to_string());
        }
        let auth = self.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        auth.strip_prefix("Bearer ").map(|t| t.trim().to_string())
    }

    /// The media type of the body, lower-cased, without parameters (`; charset=...`).
    fn content_type(&self) -> String {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// The body of a write, as Vault reads it: a form when the client says
    /// `application/x-www-form-urlencoded` and the body does not look like JSON (curl's `-d`
    /// sends that content type with JSON bodies too), JSON otherwise.
    pub fn write_body(&self) -> Result<Map<String, Value>, Error> {
        let looks_json = self.body.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| *b == b'{' || *b == b'[');
        if self.content_type() == "application/x-www-form-urlencoded" && !looks_json {
            return Ok(parse_form(&self.body));
        }
        self.json_body()
    }

    /// The body of a PATCH: Vault takes only JSON merge patches, and says so with a 415.
    pub fn patch_body(&self) -> Result<Map<String, Value>, Error> {
        let ct = self.content_type();
        if ct.is_empty() {
            // Go's mime.ParseMediaType error, which Vault passes through as a 400.
            return Err(Error::bad_request("mime: no media type"));
        }
        if ct != "application/merge-patch+json" {
            return Err(Error::UnsupportedMediaType(format!(
                "PATCH requires Content-Type of application/merge-patch+json, provided {ct}"
            )));
        }
        self.json_body()
    }

    /// The body as a JSON object; empty is `{}`. Vault's text for a malformed body.
    pub fn json_body(&self) -> Result<Map<String, Value>, Error> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(Value::Object(m)) => Ok(m),
            // `vault write -f` sends `null`: Vault decodes it into an empty map.
            Ok(Value::Null) => Ok(Map::new()),
            Ok(_) => Err(Error::bad_request("failed to decode JSON input: body must be a JSON object")),
            Err(e) => Err(Error::bad_request(format!("failed to decode JSON input: {e}"))),
        }
    }

    pub fn query_bool(&self, key: &str) -> Option<bool> {
        match self.query.get(key)? {
            Value::String(s) if s.is_empty() => Some(true),
            Value::String(s) => parse_go_bool(s),
            _ => None,
        }
    }
}

/// Go's strconv.ParseBool, which Vault uses for boolean query parameters.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn parse_query(uri: &Uri) -> Map<String, Value> {
    let mut m = Map::new();
    let Some(q) = uri.query() else { return m };
    for pair in q.split('&').take(256) {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode(k);
        let v = decode(v);
        m.entry(k).or_insert(Value::String(v));
    }
    m
}

/// Upper bound on form fields read from one body; the body size is already bounded, this bounds
/// the work per field.
const MAX_FORM_FIELDS: usize = 4096;

/// `a=1&b=2` into `{"a":"1","b":"2"}`. A repeated key joins its values with commas, as Vault
/// does with Go's `url.Values`.
fn parse_form(body: &[u8]) -> Map<String, Value> {
    let text = String::from_utf8_lossy(body);
    let mut fields: Vec<(String, Vec<String>)> = Vec::new();
    for pair in text.trim().split('&').take(MAX_FORM_FIELDS) {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode(k), decode(v));
        match fields.iter_mut().find(|(name, _)| *name == k) {
            Some((_, values)) => values.push(v),
            None => fields.push((k, vec![v])),
        }
    }
    fields.into_iter().map(|(k, v)| (k, Value::String(v.join(",")))).collect()
}

/// Vault refuses `..` path segments rather than resolving them.
fn has_relative_segment(path: &str) -> bool {
    path.split('/').any(|seg| seg == "..")
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s).decode_utf8_lossy().into_owned()
}

async fn handle(
    State(state): State<AppState>,
    forwarded: Option<axum::Extension<crate::forwarding::Forwarded>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> HttpResponse {
    // Snapshots stream their body (and have their own size bound): not buffered here.
    match uri.path().trim_end_matches('/') {
        "/v1/sys/storage/raft/snapshot" => return crate::sys_snapshot::serve(&state.core, method, &uri, headers, body, false).await,
        "/v1/sys/storage/raft/snapshot-force" => return crate::sys_snapshot::serve(&state.core, method, &uri, headers, body, true).await,
        _ => {}
    }
    let limit = state.max_request_size.unwrap_or(usize::MAX);
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => return error_response(&Error::BodyTooLarge),
    };
    let raw_path = uri.path();
    let Some(path) = raw_path.strip_prefix("/v1/") else {
        return not_found();
    };
    let path = percent_encoding::percent_decode_str(path).decode_utf8_lossy().into_owned();
    let forwarded = forwarded.is_some();
    // The read index is for standbys only (over the forwarding channel), never for clients.
    let read_index = path.trim_end_matches('/') == consistency::READ_INDEX_PATH;
    if read_index && !forwarded {
        return not_found();
    }
    // A standby hands the request to the active node (or redirects) before dispatching anything.
    match forward::intercept(&state.core, forwarded, &method, &uri, &path, &headers, &body).await {
        forward::Decision::Respond(resp) => return resp,
        forward::Decision::Dispatch if read_index => return serve_read_index(&state.core).await,
        forward::Decision::Dispatch => {}
        forward::Decision::Local(leader) => return serve_on_standby(&state, leader, method, uri, path, headers, body).await,
    }
    let inc = Incoming { method, path, query: parse_query(&uri), headers, body };
    let mut resp = dispatch(&state, inc).await;
    if forwarded {
        forward::add_commit_hint(&state.core, &mut resp);
    }
    resp
}

/// The active node's side of a standby's linearizable read: a ReadIndex round.
async fn serve_read_index(core: &Core) -> HttpResponse {
    let Some(raft) = core.raft() else { return not_found() };
    match raft.read_index(consistency::LINEARIZABLE_WAIT).await {
        Ok(index) => json_response(StatusCode::OK, &json!({ "index": index })),
        Err(e) => error_response(&Error::Raft(e)),
    }
}

/// A read on a performance standby: reach the state the request asks for, then run it against
/// the local replica, read-only; forward it whole if it tries to write (a token use count, a
/// lease), if its token is unknown here (the active node may have just created it), or if the
/// state cannot be reached in time.
async fn serve_on_standby(
    state: &AppState,
    leader: Arc<crate::ha::LeaderAdvertisement>,
    method: Method,
    uri: Uri,
    path: String,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResponse {
    let core = &state.core;
    let Some(raft) = core.raft() else { return dispatch(state, Incoming { method, path, query: parse_query(&uri), headers, body }).await };
    let cluster_id = core.cluster_info().map(|c| c.id).unwrap_or_default();
    let (wanted, when_stale) = match consistency::wanted(&headers, &cluster_id).and_then(|w| Ok((w, consistency::when_stale(&headers)?))) {
        Ok(x) => x,
        Err(e) => return error_response(&e),
    };
    let (leader, reached) = match wanted {
        // Still read-your-writes for what this node relayed (`forward::forward`).
        consistency::Wanted::Any => {
            let relayed = core.relayed_index();
            (leader, raft.applied_index() >= relayed || raft.wait_applied(relayed, consistency::INDEX_WAIT).await.is_ok())
        }
        consistency::Wanted::Index(index) => (leader, raft.wait_applied(index, consistency::INDEX_WAIT).await.is_ok()),
        // No stale fallback: without a read index from an active node in time, an error.
        consistency::Wanted::Linearizable => match consistency::standby_linearizable(core, leader).await {
            Ok(x) => x,
            Err(e) => return error_response(&e),
        },
    };
    let leader = &*leader;
    if !reached {
        if when_stale == consistency::WhenStale::Fail {
            metrics::STANDBY_INDEX_FAILED.inc();
            return json_response(StatusCode::PRECONDITION_FAILED, &json!({ "errors": [consistency::INDEX_NOT_PRESENT] }));
        }
        return forward::forward(core, leader, &method, &uri, &headers, &body).await;
    }
    let inc = Incoming { method: method.clone(), path, query: parse_query(&uri), headers: headers.clone(), body: body.clone() };
    let (resp, outcome) = crate::read_only::run(dispatch(state, inc)).await;
    if outcome.must_forward() {
        metrics::STANDBY_WRITE_FORWARDED.inc();
        return forward::forward(core, leader, &method, &uri, &headers, &body).await;
    }
    metrics::STANDBY_LOCAL.inc();
    resp
}

async fn dispatch(state: &AppState, inc: Incoming) -> HttpResponse {
    let core = &state.core;
    match inc.path.trim_end_matches('/') {
        "sys/init" => return lifecycle::init(core, &inc).await,
        "sys/seal-status" => return lifecycle::seal_status(core, &inc).await,
        "sys/unseal" => return lifecycle::unseal(core, &inc).await,
        "sys/seal" => return lifecycle::seal(core, &inc).await,
        "sys/health" => return lifecycle::health(core, &inc).await,
        "sys/leader" => return lifecycle::leader(core, &inc).await,
        "sys/metrics" => return metrics::serve(core, &inc).await,
        // Raft join answers while sealed (the joining node) or without a token (the leader's
        // side of the handshake), so it is served here, before the core's pipeline.
        "sys/storage/raft/join" => return raft::join(core, &inc).await,
        "sys/storage/raft/bootstrap/challenge" => return raft::challenge(core, &inc).await,
        "sys/storage/raft/bootstrap/answer" => return raft::answer(core, &inc).await,
        _ => {}
    }
    let op = match inc.method.as_str() {
        "GET" | "HEAD" if inc.query_bool("list") == Some(true) => Operation::List,
        "GET" | "HEAD" => Operation::Read,
        "PUT" | "POST" => Operation::Update,
        "DELETE" => Operation::Delete,
        "LIST" => Operation::List,
        "PATCH" => Operation::Patch,
        "OPTIONS" => return empty_response(StatusCode::NO_CONTENT),
        _ => return error_response(&Error::UnsupportedOperation),
    };
    if has_relative_segment(&inc.path) {
        return error_response(&Error::bad_request("relative paths not supported"));
    }
    if op == Operation::Update && inc.path.ends_with('/') {
        return error_response(&Error::bad_request("cannot write to a path ending in '/'"));
    }
    let data = match op {
        Operation::Update => match inc.write_body() {
            Ok(d) => d,
            Err(e) => return error_response(&e),
        },
        Operation::Patch => match inc.patch_body() {
            Ok(d) => d,
            Err(e) => return error_response(&e),
        },
        Operation::Read | Operation::List | Operation::Delete => {
            let mut q = inc.query.clone();
            q.remove("list");
            q
        }
    };
    let mut path = inc.path.clone();
    if op == Operation::List && !path.ends_with('/') {
        path.push('/');
    }
    let req = Request { op, path, data, token: inc.token(), client: None, mount_point: String::new() };
    let Some(raft) = core.raft() else {
        return match core.handle_request(&req).await {
            Ok(resp) => logical_response(op, resp),
            Err(e) => error_response(&e),
        };
    };
    let active = core.ha_state().is_active();
    if active {
        // On the active node a linearizable read first proves leadership with a quorum (a
        // standby did its round through the active node before dispatching).
        match consistency::wanted(&inc.headers, &core.cluster_info().map(|c| c.id).unwrap_or_default()) {
            Ok(consistency::Wanted::Linearizable) => {
                if let Err(e) = raft.read_index(consistency::LINEARIZABLE_WAIT).await {
                    return error_response(&Error::Raft(e));
                }
            }
            Ok(_) => {}
            Err(e) => return error_response(&e),
        }
    }
    let mut resp = match core.handle_request(&req).await {
        Ok(resp) => logical_response(op, resp),
        Err(e) => error_response(&e),
    };
    // Read after the request: at least the index of every write it made (openraft answers a
    // write once it is applied here).
    let applied = raft.leader_state_and_applied().1;
    let h = resp.headers_mut();
    h.insert(consistency::APPLIED_INDEX, consistency::number(applied));
    if active && !matches!(op, Operation::Read | Operation::List) {
        let cluster_id = core.cluster_info().map(|c| c.id).unwrap_or_default();
        if let Ok(v) = HeaderValue::from_str(&consistency::encode_index(&cluster_id, applied)) {
            h.insert(consistency::INDEX, v);
        }
    }
    resp
}

/// Turns a backend's answer into Vault's envelope and status.
fn logical_response(op: Operation, resp: Option<Response>) -> HttpResponse {
    let Some(resp) = resp else {
        return match op {
            Operation::Read | Operation::List => not_found(),
            _ => empty_response(StatusCode::NO_CONTENT),
        };
    };
    let status = resp.status.and_then(|s| StatusCode::from_u16(s).ok()).unwrap_or(StatusCode::OK);
    if resp.raw {
        return json_response(status, &Value::Object(resp.data.unwrap_or_default()));
    }
    if resp.data.is_none() && resp.warnings.is_empty() && resp.status.is_none() && resp.auth.is_none() {
        return empty_response(StatusCode::NO_CONTENT);
    }
    let mut body = Map::new();
    if resp.inject_data_at_top {
        if let Some(d) = &resp.data {
            for (k, v) in d {
                body.insert(k.clone(), v.clone());
            }
        }
    }
    // A request id only has to be unique, not secret: a user-space RNG avoids a getrandom(2)
    // syscall on every response.
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    body.insert("request_id".into(), Value::String(id.to_string()));
    body.insert("lease_id".into(), Value::String(String::new()));
    body.insert("renewable".into(), Value::Bool(false));
    body.insert("lease_duration".into(), Value::from(0));
    body.insert("data".into(), resp.data.map(Value::Object).unwrap_or(Value::Null));
    body.insert("wrap_info".into(), Value::Null);
    body.insert(
        "warnings".into(),
        if resp.warnings.is_empty() { Value::Null } else { Value::from(resp.warnings) },
    );
    // Vault's `LogicalAuth`: the lease of a login or token creation is the token's, in `auth`.
    let auth = match resp.auth {
        None => Value::Null,
        Some(a) => json!({
            "client_token": a.client_token,
            "accessor": a.accessor,
            "policies": a.policies,
            "token_policies": a.policies,
            "metadata": if a.metadata.is_empty() { Value::Null } else { json!(a.metadata) },
            "lease_duration": a.ttl,
            "renewable": a.renewable,
            "entity_id": "",
            "token_type": "service",
            "orphan": a.orphan,
            "mfa_requirement": Value::Null,
            "num_uses": a.num_uses,
        }),
    };
    body.insert("auth".into(), auth);
    body.insert("mount_type".into(), Value::String(resp.mount_type));
    json_response(status, &Value::Object(body))
}
