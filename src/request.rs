//! The logical request and response: what the HTTP layer hands to the router and gets back.
//!
//! These are transport-free on purpose: the HTTP module builds a [`Request`] from an HTTP request
//! (method, path, query, body, token) and turns a [`Response`] into Vault's JSON envelope. Backends
//! never see HTTP types, so request forwarding and tests can drive them directly.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::token::TokenEntry;

/// What a request does, derived from the HTTP method as Vault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Read,
    /// PUT and POST. Backends that distinguish create from update decide by existence.
    Update,
    Delete,
    /// The `LIST` method, or `GET ...?list=true`.
    List,
    /// PATCH with `application/merge-patch+json`.
    Patch,
}

impl Operation {
    /// Capability name as written in ACL policies.
    pub fn capability(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Update => "update",
            Operation::Delete => "delete",
            Operation::List => "list",
            Operation::Patch => "patch",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub op: Operation,
    /// Path below `/v1/`, without a leading slash. A list request's path ends with `/`.
    pub path: String,
    /// The JSON object of the body, or the query parameters of a GET/LIST.
    pub data: Map<String, Value>,
    /// The client token as sent (`X-Vault-Token` or `Authorization: Bearer`).
    pub token: Option<String>,
    /// The caller's token entry, set by the core once the token is checked (`None` on
    /// unauthenticated paths such as logins).
    pub client: Option<Arc<TokenEntry>>,
    /// The mount the router matched, with its trailing slash (`secret/`, `auth/userpass/`).
    pub mount_point: String,
}

impl Request {
    pub fn new(op: Operation, path: impl Into<String>) -> Self {
        Request { op, path: path.into(), data: Map::new(), token: None, client: None, mount_point: String::new() }
    }

    pub fn with_data(mut self, data: Map<String, Value>) -> Self {
        self.data = data;
        self
    }
}

/// What an auth method returns from a successful login (Vault's `logical.Auth`). The backend
/// fills in who the caller is and what they may do; the core mints the token and fills
/// `client_token` and `accessor` before the response leaves.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub policies: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub display_name: String,
    /// Seconds; 0 means the mount's or the system's default.
    pub ttl: u64,
    /// Seconds; 0 means the mount's or the system's maximum.
    pub max_ttl: u64,
    /// Seconds; a periodic token is renewed by this much forever.
    pub period: u64,
    pub explicit_max_ttl: u64,
    pub num_uses: u64,
    pub renewable: bool,
    /// Set by the core when it mints the token.
    pub client_token: String,
    pub accessor: String,
    pub orphan: bool,
}

/// A backend's answer. `None` from a backend means "nothing here" (404 for reads).
#[derive(Debug, Clone, Default)]
pub struct Response {
    pub data: Option<Map<String, Value>>,
    /// A login or token creation: the envelope's `auth` block.
    pub auth: Option<Auth>,
    pub warnings: Vec<String>,
    /// Overrides the status (KV v2 answers 404 with a body for deleted versions).
    pub status: Option<u16>,
    /// The `mount_type` field of the envelope.
    pub mount_type: String,
    /// Copy `data` to the top level of the body too, for legacy clients of some sys routes.
    pub inject_data_at_top: bool,
    /// Answer with exactly `data` as the body, without the envelope (sys/init, seal-status...).
    pub raw: bool,
}

impl Response {
    pub fn data(data: Map<String, Value>) -> Self {
        Response { data: Some(data), ..Default::default() }
    }

    pub fn from_value(v: Value) -> Self {
        match v {
            Value::Object(m) => Response::data(m),
            other => {
                let mut m = Map::new();
                m.insert("value".into(), other);
                Response::data(m)
            }
        }
    }

    pub fn raw(v: Value) -> Self {
        let mut r = Response::from_value(v);
        r.raw = true;
        r
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }
}
