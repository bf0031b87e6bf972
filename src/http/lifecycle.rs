//! Endpoints that work before and during unseal: init, unseal, seal-status, seal, health,
//! leader. Their bodies are Vault's exact shapes (no logical envelope), because clients such as
//! `vault status`, hvac and vaultrs decode them field by field.

use axum::http::{Method, StatusCode};
use axum::response::Response as HttpResponse;
use base64::Engine;
use serde_json::{json, Value};

use super::{error_response, json_response, Incoming};
use crate::core::Core;
use crate::error::Error;
use crate::ha::HaState;
use crate::seal::SealConfig;

fn method_not_allowed() -> HttpResponse {
    error_response(&Error::UnsupportedOperation)
}

pub async fn init(core: &Core, inc: &Incoming) -> HttpResponse {
    match inc.method {
        Method::GET => match core.initialized().await {
            Ok(i) => json_response(StatusCode::OK, &json!({ "initialized": i })),
            Err(e) => error_response(&e),
        },
        Method::PUT | Method::POST => {
            let body = match inc.json_body() {
                Ok(b) => b,
                Err(e) => return error_response(&e),
            };
            if body.get("pgp_keys").is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
                || body.get("root_token_pgp_key").and_then(Value::as_str).is_some_and(|s| !s.is_empty())
            {
                return error_response(&Error::bad_request("PGP-encrypted key shares are not supported by vaultd"));
            }
            if body.get("recovery_shares").and_then(Value::as_u64).unwrap_or(0) > 0 {
                return error_response(&Error::bad_request(
                    "parameters recovery_shares,recovery_threshold not applicable to seal type shamir",
                ));
            }
            let shares = match int_field(&body, "secret_shares") {
                Ok(v) => v,
                Err(e) => return error_response(&e),
            };
            let threshold = match int_field(&body, "secret_threshold") {
                Ok(v) => v,
                Err(e) => return error_response(&e),
            };
            let config = match SealConfig::from_request(shares, threshold) {
                Ok(c) => c,
                Err(e) => return error_response(&Error::from(e)),
            };
            match core.initialize(config, None).await {
                Ok(res) => {
                    let hex: Vec<String> = res.keys.iter().map(|k| hex::encode(k.as_slice())).collect();
                    let b64: Vec<String> =
                        res.keys.iter().map(|k| base64::engine::general_purpose::STANDARD.encode(k.as_slice())).collect();
                    json_response(StatusCode::OK, &json!({ "keys": hex, "keys_base64": b64, "root_token": res.root_token }))
                }
                Err(e) => error_response(&e),
            }
        }
        _ => method_not_allowed(),
    }
}

fn int_field(body: &serde_json::Map<String, Value>, key: &str) -> Result<i64, Error> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| Error::bad_request(format!("invalid {key}"))),
        Some(Value::String(s)) => s.parse().map_err(|_| Error::bad_request(format!("invalid {key}"))),
        Some(_) => Err(Error::bad_request(format!("failed to decode JSON input: {key} must be a number"))),
    }
}

fn seal_status_json(core: &Core, st: &crate::core::SealStatus) -> Value {
    let mut v = json!({
        "type": "shamir",
        "initialized": st.initialized,
        "sealed": st.sealed,
        "t": st.threshold,
        "n": st.shares,
        "progress": st.progress,
        "nonce": st.nonce,
        "version": crate::API_VERSION,
        "build_date": crate::BUILD_DATE,
        "commit_date": crate::BUILD_DATE,
        "migration": false,
        "recovery_seal": false,
        "storage_type": core.storage.name(),
        "removed_from_cluster": core.removed_from_cluster(),
    });
    if let (Some(c), Value::Object(o)) = (&st.cluster, &mut v) {
        o.insert("cluster_name".into(), Value::String(c.name.clone()));
        o.insert("cluster_id".into(), Value::String(c.id.clone()));
    }
    v
}

pub async fn seal_status(core: &Core, inc: &Incoming) -> HttpResponse {
    if inc.method != Method::GET {
        return method_not_allowed();
    }
    match core.seal_status().await {
        Ok(st) => json_response(StatusCode::OK, &seal_status_json(core, &st)),
        Err(e) => error_response(&e),
    }
}

pub async fn unseal(core: &Core, inc: &Incoming) -> HttpResponse {
    if !matches!(inc.method, Method::PUT | Method::POST) {
        return method_not_allowed();
    }
    let body = match inc.json_body() {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let reset = body.get("reset").and_then(Value::as_bool).unwrap_or(false);
    let key = body.get("key").and_then(Value::as_str).unwrap_or("");
    let result = if reset {
        core.unseal_reset().await
    } else if key.is_empty() {
        Err(Error::bad_request("'key' must be specified in request body as JSON, or 'reset' set to true"))
    } else if let Err(e) = crate::seal::decode_submitted_key(key) {
        // Malformed keys are refused before anything else, as Vault does.
        Err(Error::from(e))
    } else {
        match core.initialized().await {
            Ok(false) => Err(Error::NotInitialized),
            Err(e) => Err(e),
            Ok(true) => core.unseal_share(key).await,
        }
    };
    if let Err(e) = result {
        return error_response(&e);
    }
    seal_status(core, &Incoming { method: Method::GET, ..clone_incoming(inc) }).await
}

fn clone_incoming(inc: &Incoming) -> Incoming {
    Incoming {
        method: inc.method.clone(),
        path: inc.path.clone(),
        query: inc.query.clone(),
        headers: inc.headers.clone(),
        body: inc.body.clone(),
    }
}

pub async fn seal(core: &Core, inc: &Incoming) -> HttpResponse {
    if !matches!(inc.method, Method::PUT | Method::POST) {
        return method_not_allowed();
    }
    if core.is_sealed() {
        return error_response(&Error::Sealed);
    }
    // Vault refuses to seal a standby (`sealInitCommon`); sealing is for the active node, or a
    // restart.
    if let HaState::Standby { .. } = core.ha_state() {
        return error_response(&Error::internal("vault cannot seal when in standby mode; please restart instead"));
    }
    // Vault lets any token with `sudo` on sys/seal seal the node, not only root tokens.
    if let Err(e) = core.authorize_sudo(inc.token().as_deref(), "sys/seal").await {
        return error_response(&e);
    }
    match core.seal().await {
        Ok(()) => super::empty_response(StatusCode::NO_CONTENT),
        Err(e) => error_response(&e),
    }
}

/// Reads an integer status-code override such as `standbycode=200`.
fn code_param(inc: &Incoming, key: &str, default: u16) -> Result<u16, Error> {
    match inc.query.get(key).and_then(Value::as_str) {
        None | Some("") => Ok(default),
        Some(s) => s
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
            .ok_or_else(|| Error::bad_request(format!("unable to parse {key} as an HTTP status code: {s:?}"))),
    }
}

/// Reads a boolean query parameter as Go's `strconv.ParseBool` (`standbyok=true`, `=1`...).
/// Absent or empty is false: Vault parses the value only when it is non-empty.
fn bool_param(inc: &Incoming, key: &str) -> Result<bool, Error> {
    match inc.query.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) => match s.as_str() {
            "" => Ok(false),
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
            _ => Err(Error::bad_request(format!("unable to parse {key} as a bool: {s:?}"))),
        },
        Some(_) => Err(Error::bad_request(format!("unable to parse {key} as a bool"))),
    }
}

pub async fn health(core: &Core, inc: &Incoming) -> HttpResponse {
    if !matches!(inc.method, Method::GET | Method::HEAD) {
        return method_not_allowed();
    }
    let codes = (|| -> Result<_, Error> {
        Ok((
            code_param(inc, "activecode", 200)?,
            code_param(inc, "standbycode", 429)?,
            code_param(inc, "drsecondarycode", 472)?,
            code_param(inc, "performancestandbycode", 473)?,
            code_param(inc, "sealedcode", 503)?,
            code_param(inc, "uninitcode", 501)?,
            code_param(inc, "removedcode", 530)?,
            code_param(inc, "haunhealthycode", 474)?,
        ))
    })();
    let (active, standby_code, _dr, perf_code, sealed_code, uninit, removed_code, _unhealthy) = match codes {
        Ok(c) => c,
        Err(e) => return error_response(&e),
    };
    let (standby_ok, perf_standby_ok) = match bool_param(inc, "standbyok").and_then(|s| bool_param(inc, "perfstandbyok").map(|p| (s, p))) {
        Ok(x) => x,
        Err(e) => return error_response(&e),
    };
    let initialized = match core.initialized().await {
        Ok(i) => i,
        Err(e) => return error_response(&e),
    };
    let state = core.ha_state();
    let sealed = matches!(state, HaState::Sealed);
    let standby = !state.is_active();
    let removed = core.removed_from_cluster();
    let perf_standby = !sealed && core.is_performance_standby();
    // Vault's order: a performance standby answers its own code; `standbyok` does not apply.
    let code = if !initialized {
        uninit
    } else if removed {
        removed_code
    } else if sealed {
        sealed_code
    } else if perf_standby {
        if perf_standby_ok {
            active
        } else {
            perf_code
        }
    } else if standby && !standby_ok {
        standby_code
    } else {
        active
    };
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    if inc.method == Method::HEAD {
        return super::empty_response(status);
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut body = json!({
        "initialized": initialized,
        "sealed": sealed,
        "standby": standby,
        "performance_standby": perf_standby,
        "replication_performance_mode": if sealed { "unknown" } else { "disabled" },
        "replication_dr_mode": if sealed { "unknown" } else { "disabled" },
        "server_time_utc": now,
        "version": crate::API_VERSION,
        "enterprise": false,
        "echo_duration_ms": 0,
        "clock_skew_ms": 0,
        "removed_from_cluster": removed,
    });
    if let (Some(c), false, Value::Object(o)) = (core.cluster_info(), sealed, &mut body) {
        o.insert("cluster_name".into(), Value::String(c.name));
        o.insert("cluster_id".into(), Value::String(c.id));
    }
    json_response(status, &body)
}

pub async fn leader(core: &Core, inc: &Incoming) -> HttpResponse {
    if inc.method != Method::GET {
        return method_not_allowed();
    }
    let state = core.ha_state();
    if matches!(state, HaState::Sealed) {
        return error_response(&Error::Sealed);
    }
    if !core.ha_enabled() {
        return json_response(StatusCode::OK, &json!({ "ha_enabled": false }));
    }
    let perf_standby = core.is_performance_standby();
    // Each node answers from what it knows: the active node itself, a standby from the active
    // node's advertisement (none during an election or while the new leader becomes active).
    let (is_self, leader_address, leader_cluster_address) = match &state {
        HaState::Active => (true, core.api_addr.clone(), core.cluster_addr.clone()),
        HaState::Standby { leader: Some(ad) } => (false, ad.api_addr.clone(), ad.cluster_addr.clone()),
        _ => (false, String::new(), String::new()),
    };
    let mut body = json!({
        "ha_enabled": true,
        "is_self": is_self,
        "leader_address": leader_address,
        "leader_cluster_address": leader_cluster_address,
        "performance_standby": perf_standby,
        "performance_standby_last_remote_wal": 0,
    });
    // Vault omits the Raft indexes (`omitempty`) when the storage is not raft.
    if let (Some(raft), Value::Object(o)) = (core.raft(), &mut body) {
        let st = raft.status();
        if perf_standby {
            o.insert("performance_standby_last_remote_wal".into(), json!(st.applied_index));
        }
        o.insert("raft_committed_index".into(), json!(st.committed_index));
        o.insert("raft_applied_index".into(), json!(st.applied_index));
    }
    // Vault omits a zero `active_time` (`omitempty`), so only the active node sends it.
    if let (true, Some(since), Value::Object(o)) = (is_self, core.active_since(), &mut body) {
        o.insert("active_time".into(), Value::String(since));
    }
    json_response(StatusCode::OK, &body)
}
