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
use vaultd_raft::{AutopilotConfig, AutopilotState, ClusterTls, RaftNode, TlsKeyring};

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
        ("tls/rotate", Operation::Update) => {
            rotate_cluster_tls(core, raft).await?;
            Ok(None)
        }
        (
            "configuration" | "remove-peer" | "autopilot/state" | "autopilot/configuration"
            | "tls/rotate",
            _,
        ) => {
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

/// How long a rotation waits for every peer to replicate the staged keyring.
const ROTATE_REPLICATION_WAIT: Duration = Duration::from_secs(30);

/// How often every node re-reads `core/raft/tls` ([`refresh_cluster_tls`], from the HA task).
pub const TLS_REREAD: Duration = Duration::from_secs(2);

/// Scheduled rotation: the identity's age that triggers one, and how often the active node checks.
const ROTATE_EVERY: Duration = Duration::from_secs(30 * 24 * 3600);
pub const ROTATE_CHECK: Duration = Duration::from_secs(3600);

/// One rotation at a time per process (the endpoint and the schedule share it).
static ROTATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn read_keyring(core: &Core) -> Result<Option<TlsKeyring>> {
    let stored: Option<Value> = View::new(core.barrier.clone(), "core/").get_json(crate::raft_join::TLS_KEY).await?;
    stored.map(|v| TlsKeyring::from_json(v).map_err(Error::from)).transpose()
}

/// The HA task's hook, on every unsealed node: applies `core/raft/tls` to the cluster port when
/// it differs from `applied`, which it then holds. Errors are logged and retried next time.
pub async fn refresh_cluster_tls(core: &Core, raft: &RaftNode, applied: &mut Option<TlsKeyring>) {
    let ring = match read_keyring(core).await {
        Ok(Some(ring)) => ring,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(error = %e, "reading the cluster TLS keyring failed");
            return;
        }
    };
    if applied.as_ref() == Some(&ring) {
        return;
    }
    match raft.set_cluster_tls(&ring).await {
        Ok(true) => {
            tracing::info!(staged = ring.next.is_some(), "cluster TLS keyring applied");
            *applied = Some(ring);
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "applying the cluster TLS keyring failed"),
    }
}

/// On the active node, from the HA task: rotates in the background when the current identity is
/// older than [`ROTATE_EVERY`] (or of unknown age, i.e. stored before keyrings).
pub async fn rotate_if_due(core: Arc<Core>) {
    let Ok(Some(ring)) = read_keyring(&core).await else { return };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if ring.next.is_none() && now.saturating_sub(ring.current_since) < ROTATE_EVERY.as_secs() {
        return;
    }
    let Some(raft) = core.raft().cloned() else { return };
    tokio::spawn(async move {
        match rotate_cluster_tls(&core, &raft).await {
            Ok(()) => tracing::info!("scheduled cluster TLS rotation finished"),
            Err(e) => tracing::warn!(error = %e, "scheduled cluster TLS rotation failed; will retry"),
        }
    });
}

/// Rotates the cluster TLS identity without downtime (see [`TlsKeyring`]): stage a new identity
/// as `next` so every node trusts it, wait until every peer has that entry and has had time to
/// apply it, then make it current. A failure after staging leaves both identities trusted and
/// the old one presented, which is safe; a retry starts over with a fresh identity.
pub async fn rotate_cluster_tls(core: &Core, raft: &RaftNode) -> Result<()> {
    let _one = ROTATING
        .try_lock()
        .map_err(|_| Error::bad_request("a cluster TLS rotation is already in progress"))?;
    if !raft.status().is_leader {
        return Err(Error::Unavailable("only the active node rotates the cluster TLS".into()));
    }
    let view = View::new(core.barrier.clone(), "core/");
    let ring = read_keyring(core)
        .await?
        .ok_or_else(|| Error::internal("the cluster TLS identity is missing from core/raft/tls"))?;
    let staged = ring.with_next(ClusterTls::generate()?);
    view.put_json(crate::raft_join::TLS_KEY, &staged).await?;
    raft.set_cluster_tls(&staged).await?;
    let index = raft.status().committed_index;

    let deadline = tokio::time::Instant::now() + ROTATE_REPLICATION_WAIT;
    loop {
        let matched = raft.peers_matched();
        let behind: Vec<u64> = matched.iter().filter(|(_, m)| **m < index).map(|(id, _)| *id).collect();
        if behind.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Unavailable(format!(
                "cluster TLS rotation: raft peers {behind:?} did not replicate the new trust anchor within {}s; \
                 the old identity stays in use",
                ROTATE_REPLICATION_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Replicated is not yet applied to the cluster port: a peer applies on its next commit
    // notice and re-reads the keyring every TLS_REREAD. No per-peer acknowledgement exists, so
    // wait out two re-reads plus a heartbeat's margin.
    tokio::time::sleep(TLS_REREAD * 2 + Duration::from_secs(1)).await;

    let promoted = staged
        .promoted()
        .ok_or_else(|| Error::internal("the staged cluster TLS keyring has no next identity"))?;
    view.put_json(crate::raft_join::TLS_KEY, &promoted).await?;
    raft.set_cluster_tls(&promoted).await?;
    tracing::info!("cluster TLS rotated: nodes now present the new identity");
    Ok(())
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
