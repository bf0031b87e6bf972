//! `sys/storage/raft/*` behind a token (the join handshake is in `raft_join` and `http::raft`):
//! the peer list (`configuration`), `remove-peer`, and autopilot (`autopilot/state`,
//! `autopilot/configuration`).
//!
//! The autopilot configuration is stored through the barrier at
//! `core/raft/autopilot/configuration` in the API's own JSON shape; the leader applies it at once
//! when it is written, and every new leader reads it when its term starts
//! ([`install_autopilot_loader`]).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use vaultd_raft::{AutopilotConfig, AutopilotState};

use crate::config::{format_duration_go, parse_duration};
use crate::core::Core;
use crate::error::{Error, Result};
use crate::request::{Operation, Request, Response};
use crate::view::View;

/// What a removed node answers to any request (HV 1.19's wording).
pub const REMOVED_MESSAGE: &str = "node was removed from a HA cluster";

/// Relative to the `core/` view: `core/raft/autopilot/configuration`.
const AUTOPILOT_KEY: &str = "raft/autopilot/configuration";

pub async fn handle(core: &Core, req: &Request, path: &str) -> Result<Option<Response>> {
    let raft = core.raft().ok_or_else(|| Error::bad_request("raft storage is not in use"))?;
    match (path, req.op) {
        ("configuration", Operation::Read) => {
            let servers: Vec<Value> = raft
                .configuration()
                .into_iter()
                .map(|p| {
                    json!({
                        "node_id": p.node_id,
                        "address": p.address,
                        "leader": p.leader,
                        "protocol_version": "3",
                        "voter": p.voter,
                    })
                })
                .collect();
            let index = raft.status().committed_index;
            Ok(Some(Response::from_value(
                json!({ "config": { "servers": servers, "index": index } }),
            )))
        }
        ("remove-peer", Operation::Update) => {
            let id = req.data.get("server_id").and_then(Value::as_str).unwrap_or("");
            if id.is_empty() {
                return Err(Error::bad_request("no server id provided"));
            }
            let peer =
                raft.configuration().into_iter().find(|p| p.node_id == id).ok_or_else(|| {
                    Error::bad_request(format!(
                        "no raft peer with server id {id:?}; the cluster is unchanged"
                    ))
                })?;
            raft.remove_node(peer.raft_id).await?;
            tracing::info!(server_id = id, "removed raft peer");
            Ok(None)
        }
        ("autopilot/state", Operation::Read) => {
            let state = raft.autopilot_state()?;
            Ok(Some(Response::from_value(state_json(&state))))
        }
        ("autopilot/configuration", Operation::Read) => {
            Ok(Some(Response::from_value(config_json(&raft.autopilot_config()))))
        }
        ("autopilot/configuration", Operation::Update) => {
            let cfg = parse_config(&req.data, raft.autopilot_config())?;
            let view = View::new(core.barrier.clone(), "core/");
            view.put_json(AUTOPILOT_KEY, &config_json(&cfg)).await?;
            raft.set_autopilot_config(cfg);
            Ok(None)
        }
        ("configuration" | "remove-peer" | "autopilot/state" | "autopilot/configuration", _) => {
            Err(Error::UnsupportedOperation)
        }
        _ => Err(Error::UnsupportedPath),
    }
}

/// Lets autopilot read the stored configuration whenever this node starts a term as leader.
pub fn install_autopilot_loader(core: &Core) {
    let Some(raft) = core.raft() else { return };
    let view = View::new(core.barrier.clone(), "core/");
    raft.set_autopilot_loader(Arc::new(move || {
        let view = view.clone();
        Box::pin(async move {
            let stored: Option<Map<String, Value>> =
                view.get_json(AUTOPILOT_KEY).await.map_err(|e| e.to_string())?;
            match stored {
                None => Ok(None),
                Some(m) => {
                    parse_config(&m, AutopilotConfig::default()).map(Some).map_err(|e| e.to_string())
                }
            }
        })
    }));
}

pub fn config_json(c: &AutopilotConfig) -> Value {
    json!({
        "cleanup_dead_servers": c.cleanup_dead_servers,
        "last_contact_threshold": format_duration_go(c.last_contact_threshold),
        "dead_server_last_contact_threshold": format_duration_go(c.dead_server_last_contact_threshold),
        "max_trailing_logs": c.max_trailing_logs,
        "min_quorum": c.min_quorum,
        "server_stabilization_time": format_duration_go(c.server_stabilization_time),
    })
}

fn field_error(name: &str, kind: &str) -> Error {
    Error::bad_request(format!(
        "Field validation failed: error converting input for field \"{name}\": cannot parse value as '{kind}'"
    ))
}

fn bool_field(data: &Map<String, Value>, name: &str) -> Result<Option<bool>> {
    match data.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) => match s.as_str() {
            "true" | "1" | "t" | "T" | "TRUE" | "True" => Ok(Some(true)),
            "false" | "0" | "f" | "F" | "FALSE" | "False" => Ok(Some(false)),
            _ => Err(field_error(name, "bool")),
        },
        Some(_) => Err(field_error(name, "bool")),
    }
}

fn uint_field(data: &Map<String, Value>, name: &str) -> Result<Option<u64>> {
    match data.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| field_error(name, "int")),
        Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| field_error(name, "int")),
        Some(_) => Err(field_error(name, "int")),
    }
}

fn duration_field(data: &Map<String, Value>, name: &str) -> Result<Option<Duration>> {
    match data.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            n.as_u64().map(|s| Some(Duration::from_secs(s))).ok_or_else(|| field_error(name, "duration"))
        }
        Some(Value::String(s)) => parse_duration(s).map(Some).map_err(|_| field_error(name, "duration")),
        Some(_) => Err(field_error(name, "duration")),
    }
}

/// Vault's update: the fields given replace those of `current`, the rest stay; then the
/// effective configuration is validated as Vault does.
pub fn parse_config(data: &Map<String, Value>, current: AutopilotConfig) -> Result<AutopilotConfig> {
    let mut c = current;
    if let Some(v) = bool_field(data, "cleanup_dead_servers")? {
        c.cleanup_dead_servers = v;
    }
    if let Some(v) = duration_field(data, "last_contact_threshold")? {
        c.last_contact_threshold = v;
    }
    if let Some(v) = duration_field(data, "dead_server_last_contact_threshold")? {
        c.dead_server_last_contact_threshold = v;
    }
    if let Some(v) = uint_field(data, "max_trailing_logs")? {
        c.max_trailing_logs = v;
    }
    if let Some(v) = uint_field(data, "min_quorum")? {
        c.min_quorum = v;
    }
    if let Some(v) = duration_field(data, "server_stabilization_time")? {
        c.server_stabilization_time = v;
    }
    if c.cleanup_dead_servers && c.min_quorum < 3 {
        // Vault prints with Go's %#v, hence the hexadecimal quorum.
        return Err(Error::bad_request(format!(
            "min_quorum must be set when cleanup_dead_servers is set and it should at least be 3; cleanup_dead_servers: {}, min_quorum: {:#x}",
            c.cleanup_dead_servers, c.min_quorum
        )));
    }
    if c.dead_server_last_contact_threshold < Duration::from_secs(60) {
        return Err(Error::bad_request(format!(
            "dead_server_last_contact_threshold should not be set to less than 1m; received: {}",
            c.dead_server_last_contact_threshold.as_secs()
        )));
    }
    Ok(c)
}

fn rfc3339(t: std::time::SystemTime) -> String {
    let t: time::OffsetDateTime = t.into();
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

pub fn state_json(s: &AutopilotState) -> Value {
    let mut servers = Map::new();
    for v in &s.servers {
        servers.insert(
            v.node_id.clone(),
            json!({
                "id": v.node_id,
                "name": v.node_id,
                "address": v.address,
                "node_status": v.node_status,
                "last_contact": format_duration_go(truncate_ms(v.last_contact)),
                "last_term": v.last_term,
                "last_index": v.last_index,
                "healthy": v.healthy,
                "stable_since": rfc3339(v.stable_since),
                "status": v.status,
                "version": crate::API_VERSION,
                "node_type": v.node_type,
            }),
        );
    }
    let mut out = json!({
        "healthy": s.healthy,
        "failure_tolerance": s.failure_tolerance,
        "leader": s.leader,
        "voters": s.voters,
        "servers": servers,
    });
    if let (false, Value::Object(o)) = (s.non_voters.is_empty(), &mut out) {
        o.insert("non_voters".into(), json!(s.non_voters));
    }
    out
}

/// Last contact to the millisecond: nanoseconds of ping jitter say nothing to an operator.
fn truncate_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().min(u64::MAX as u128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn config_updates_merge_and_validate_as_vault() {
        let d = AutopilotConfig::default();
        assert_eq!(
            config_json(&d),
            json!({
                "cleanup_dead_servers": false,
                "dead_server_last_contact_threshold": "24h0m0s",
                "last_contact_threshold": "10s",
                "max_trailing_logs": 1000,
                "min_quorum": 0,
                "server_stabilization_time": "10s",
            })
        );
        let e = parse_config(&data(json!({"cleanup_dead_servers": true})), d.clone()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "min_quorum must be set when cleanup_dead_servers is set and it should at least be 3; cleanup_dead_servers: true, min_quorum: 0x0"
        );
        let e = parse_config(
            &data(json!({"cleanup_dead_servers": true, "min_quorum": 3, "dead_server_last_contact_threshold": "30s"})),
            d.clone(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "dead_server_last_contact_threshold should not be set to less than 1m; received: 30"
        );
        let c = parse_config(&data(json!({"cleanup_dead_servers": true, "min_quorum": "3"})), d)
            .expect("valid");
        let c = parse_config(&data(json!({"server_stabilization_time": "5s"})), c).expect("merge");
        assert!(c.cleanup_dead_servers && c.min_quorum == 3);
        assert_eq!(c.server_stabilization_time, Duration::from_secs(5));
        assert!(parse_config(&data(json!({"min_quorum": "abc"})), c.clone()).is_err());
        assert!(parse_config(&data(json!({"last_contact_threshold": "soon"})), c).is_err());
    }
}
