//! This node's request-routing counters and `sys/metrics`, answered by every node itself (a
//! standby does not forward it), so a test or an operator can see what a node sent over the
//! network. Vault's counter `vault.ha.rpc.client.forward` keeps its name; the others are vaultd's.
//! Counters are totals since the process started (Vault's in-memory sink resets them every
//! interval).

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use serde_json::{json, Map, Value};

use super::{error_response, json_response, Incoming};
use crate::core::Core;
use crate::error::Error;
use crate::policy::Op;

pub struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Requests this node forwarded whole to the active node.
pub static FORWARDED: Counter = Counter::new();
/// Read-index requests this standby sent to the active node (linearizable reads).
pub static READ_INDEX: Counter = Counter::new();
/// Requests this standby served from its local replica.
pub static STANDBY_LOCAL: Counter = Counter::new();
/// Requests this standby started locally and then forwarded (they tried to write, or their
/// token is not known here).
pub static STANDBY_WRITE_FORWARDED: Counter = Counter::new();
/// Requests this standby refused with 412 (index not reached in time).
pub static STANDBY_INDEX_FAILED: Counter = Counter::new();

fn counters() -> [(&'static str, u64); 5] {
    [
        ("vault.ha.rpc.client.forward", FORWARDED.get()),
        ("vaultd.standby.read_index", READ_INDEX.get()),
        ("vaultd.standby.local", STANDBY_LOCAL.get()),
        ("vaultd.standby.write_forwarded", STANDBY_WRITE_FORWARDED.get()),
        ("vaultd.standby.index_failed", STANDBY_INDEX_FAILED.get()),
    ]
}

/// `GET sys/metrics` (`?format=prometheus` for the text format): needs a token with `read` on
/// `sys/metrics`, as in Vault without `unauthenticated_metrics_access`.
pub async fn serve(core: &Core, inc: &Incoming) -> HttpResponse {
    if inc.method != Method::GET {
        return error_response(&Error::UnsupportedOperation);
    }
    if core.is_sealed() {
        return error_response(&Error::Sealed);
    }
    if let Err(e) = allowed(core, inc).await {
        return error_response(&e);
    }
    let applied = core.raft().map_or(0, |r| r.leader_state_and_applied().1);
    if inc.query.get("format").and_then(Value::as_str) == Some("prometheus") {
        let mut text = String::new();
        for (name, count) in counters() {
            let name = name.replace('.', "_");
            text.push_str(&format!("# TYPE {name} counter\n{name} {count}\n"));
        }
        text.push_str(&format!("# TYPE vaultd_raft_applied_index gauge\nvaultd_raft_applied_index {applied}\n"));
        let mut resp = (StatusCode::OK, text).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
        return resp;
    }
    let counters: Vec<Value> = counters()
        .into_iter()
        .map(|(name, n)| json!({ "Name": name, "Count": n, "Sum": n, "Rate": 0, "Min": 0, "Max": 0, "Mean": 0, "Stddev": 0, "Labels": {} }))
        .collect();
    let body = json!({
        "Timestamp": crate::kv::now_rfc3339(),
        "Gauges": [{ "Name": "vaultd.raft.applied_index", "Value": applied, "Labels": {} }],
        "Counters": counters,
        "Samples": [],
        "Points": [],
    });
    json_response(StatusCode::OK, &body)
}

async fn allowed(core: &Core, inc: &Incoming) -> Result<(), Error> {
    let entry = core.authenticate(inc.token().as_deref().filter(|t| !t.is_empty())).await?;
    let acl = core.policies.acl(&entry.policies).await?;
    if acl.allow(Op::Read, "sys/metrics", &Map::new()).allowed {
        Ok(())
    } else {
        Err(Error::PermissionDenied)
    }
}
