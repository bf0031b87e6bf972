//! The authenticated part of `sys/`: mounts, auth methods, ACL policies, capabilities, the UI
//! mount preflight the CLI relies on, and the barrier's key management. (Seal, init, health and
//! leader are HTTP-level handlers in `http`, because they answer while sealed.)

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::core::Core;
use crate::error::{Error, Result};
use crate::mounts;
use crate::policy::Acl;
use crate::request::{Operation, Request, Response};
use crate::router::path_matches;

/// Paths below `sys/` that need `sudo` (OpenBao's system backend `PathsSpecial.Root`, plus
/// `seal` and `step-down`, which Vault checks in their own handlers).
const ROOT_PATHS: &[&str] = &[
    "auth/*",
    "remount",
    "audit",
    "audit/*",
    "raw",
    "raw/*",
    "rotate",
    "rotate/keyring",
    "rotate/root",
    "config/cors",
    "config/auditing/*",
    "config/ui/headers/*",
    "plugins/catalog/*",
    "revoke-prefix/*",
    "revoke-force/*",
    "leases/revoke-prefix/*",
    "leases/revoke-force/*",
    "leases/lookup/*",
    "leases",
    "internal/inspect/*",
    "seal",
    "step-down",
    "storage/raft/tls/rotate",
];

/// Paths below `sys/` the core serves without a token check (the lifecycle endpoints answer in
/// `http` before the core). The UI mount preflight checks the token itself.
const UNAUTHENTICATED_PATHS: &[&str] = &["internal/ui/mounts", "internal/ui/mounts/*"];

pub fn is_root_path(rest: &str) -> bool {
    path_matches(ROOT_PATHS, rest)
}

pub fn is_unauthenticated(rest: &str) -> bool {
    path_matches(UNAUTHENTICATED_PATHS, rest)
}

/// OpenBao wraps some handler errors in go-multierror's text; clients see exactly this.
fn multi(msg: &str) -> String {
    format!("1 error occurred:\n\t* {msg}\n\n")
}

pub async fn handle(core: &Core, req: &Request) -> Result<Option<Response>> {
    let path = req.path.strip_prefix("sys/").unwrap_or(&req.path);
    let path = path.trim_end_matches('/');
    match (path, req.op) {
        (p, _) if p.starts_with("storage/raft/") => crate::sys_raft::handle(core, req, &p["storage/raft/".len()..]).await,
        ("step-down", Operation::Update) => {
            core.step_down().await?;
            Ok(None)
        }
        ("ha-status", Operation::Read) => ha_status(core),
        ("mounts", Operation::Read) => list_mounts(core).await,
        ("mounts", Operation::List) => list_mounts(core).await,
        (p, op) if p.starts_with("mounts/") => {
            let mount = &p["mounts/".len()..];
            if let Some(target) = mount.strip_suffix("/tune") {
                return tune(core, target, req).await;
            }
            match op {
                Operation::Update => enable_mount(core, mount, req).await,
                Operation::Delete => {
                    core.disable_mount(mount).await?;
                    Ok(Some(Response::default()))
                }
                Operation::Read => read_mount(core, mount).await,
                _ => Err(Error::UnsupportedOperation),
            }
        }
        ("internal/ui/mounts", Operation::Read) => ui_mounts(core, req).await,
        (p, Operation::Read) if p.starts_with("internal/ui/mounts/") => ui_mount(core, req, &p["internal/ui/mounts/".len()..]).await,
        ("auth", Operation::Read) => list_auth(core).await,
        (p, op) if p.starts_with("auth/") => {
            let path = &p["auth/".len()..];
            if let Some(target) = path.strip_suffix("/tune") {
                return tune_auth(core, target, req).await;
            }
            match op {
                Operation::Update => enable_auth(core, path, req).await,
                Operation::Delete => {
                    core.disable_auth(path).await?;
                    Ok(None)
                }
                Operation::Read => read_auth(core, path).await,
                _ => Err(Error::UnsupportedOperation),
            }
        }
        ("policies/acl", Operation::List) => {
            let keys = core.policies.list().await?;
            Ok(Some(Response::from_value(json!({ "keys": keys }))))
        }
        ("policies/acl", _) => Err(Error::UnsupportedOperation),
        (p, op) if p.starts_with("policies/acl/") => policy_endpoint(core, req, &p["policies/acl/".len()..], op, false).await,
        ("policy", Operation::Read | Operation::List) => {
            let keys = core.policies.list().await?;
            let mut r = Response::from_value(json!({ "keys": keys, "policies": keys }));
            r.inject_data_at_top = true;
            Ok(Some(r))
        }
        (p, op) if p.starts_with("policy/") => policy_endpoint(core, req, &p["policy/".len()..], op, true).await,
        ("capabilities-self", Operation::Update) => {
            let entry = req.client.as_ref().ok_or(Error::PermissionDenied)?;
            let acl = core.policies.acl(&entry.policies).await?;
            capabilities(&acl, req)
        }
        ("capabilities", Operation::Update) => {
            let token = req.data.get("token").and_then(Value::as_str).unwrap_or("");
            if token.is_empty() {
                return Err(Error::internal(multi("no token found")));
            }
            let Some((_, entry)) = core.tokens.find(token).await? else {
                return Err(Error::bad_request(multi("invalid token")));
            };
            let acl = core.policies.acl(&entry.policies).await?;
            capabilities(&acl, req)
        }
        ("capabilities-accessor", Operation::Update) => {
            let accessor = req.data.get("accessor").and_then(Value::as_str).unwrap_or("");
            let Some((_, entry)) = core.tokens.by_accessor(accessor).await? else {
                return Err(Error::bad_request(multi("invalid accessor")));
            };
            let acl = core.policies.acl(&entry.policies).await?;
            capabilities(&acl, req)
        }
        ("key-status", Operation::Read) => {
            let ks = core.barrier.key_status()?;
            let mut r = Response::from_value(json!({
                "term": ks.term,
                "install_time": ks.install_time,
                "encryptions": ks.encryptions,
            }));
            r.inject_data_at_top = true;
            Ok(Some(r))
        }
        ("rotate", Operation::Update) => {
            core.barrier.rotate().await?;
            Ok(Some(Response::default()))
        }
        _ => Err(Error::UnsupportedPath),
    }
}

async fn list_mounts(core: &Core) -> Result<Option<Response>> {
    let table = core.mount_table().await?;
    let data: Map<String, Value> = table.iter().map(|m| (m.path.clone(), m.to_api())).collect();
    let mut r = Response::data(data);
    r.inject_data_at_top = true;
    Ok(Some(r))
}

async fn read_mount(core: &Core, mount: &str) -> Result<Option<Response>> {
    let want = format!("{}/", mount.trim_matches('/'));
    let table = core.mount_table().await?;
    Ok(table.iter().find(|m| m.path == want).map(|m| {
        // Vault copies sys/mounts/* answers to the top level for legacy clients.
        let mut r = Response::from_value(m.to_api());
        r.inject_data_at_top = true;
        r
    }))
}

async fn enable_mount(core: &Core, mount: &str, req: &Request) -> Result<Option<Response>> {
    let kind = req.data.get("type").and_then(Value::as_str).unwrap_or("");
    let mut options = match req.data.get("options") {
        Some(Value::Object(o)) => Some(o.clone()),
        Some(Value::Null) | None => None,
        Some(_) => return Err(Error::bad_request("options must be an object")),
    };
    let kind = mounts::resolve_type(kind, &mut options)?;
    let description = req.data.get("description").and_then(Value::as_str).unwrap_or("");
    core.enable_mount(mount, &kind, description, options).await?;
    Ok(Some(Response::default()))
}

/// `sys/mounts/<path>/tune`: read or change a mount's lease TTLs, description and options.
/// `options.version = "2"` on a KV v1 mount upgrades it in place, converting every secret into
/// version 1 of a v2 key, as Vault does; a downgrade is refused.
async fn tune(core: &Core, mount: &str, req: &Request) -> Result<Option<Response>> {
    let want = format!("{}/", mount.trim_matches('/'));
    match req.op {
        Operation::Read => {
            let table = core.mount_table().await?;
            let Some(m) = table.iter().find(|m| m.path == want) else {
                return Err(Error::bad_request(format!("cannot fetch sysview for path \"{want}\"")));
            };
            let mut data = json!({
                "default_lease_ttl": if m.config.default_lease_ttl == 0 { core.default_lease_ttl } else { m.config.default_lease_ttl },
                "max_lease_ttl": if m.config.max_lease_ttl == 0 { core.max_lease_ttl } else { m.config.max_lease_ttl },
                "description": m.description,
                "force_no_cache": m.config.force_no_cache,
            });
            if let (Some(opts), Value::Object(d)) = (&m.options, &mut data) {
                d.insert("options".into(), Value::Object(opts.clone()));
            }
            // Vault copies sys/mounts/* answers to the top level for legacy clients.
            let mut r = Response::from_value(data);
            r.inject_data_at_top = true;
            Ok(Some(r))
        }
        Operation::Update => tune_write(core, &want, req).await,
        _ => Err(Error::UnsupportedOperation),
    }
}

/// A TTL in a tune request: seconds or a Go duration; `"system"` resets it to the system's
/// default (stored as 0); absent or `""` leaves it as it is.
fn tune_ttl(req: &Request, name: &str) -> Result<Option<u64>> {
    match req.data.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "system" => Ok(Some(0)),
        Some(Value::String(s)) => match crate::kv::parse_signed_duration(s) {
            Ok(secs) if secs < 0 => Err(Error::bad_request(format!("{name} must not be negative"))),
            Ok(secs) => Ok(Some(secs as u64)),
            Err(e) => Err(Error::bad_request(e)),
        },
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| Error::bad_request(format!("{name} must be a non-negative number of seconds"))),
        Some(_) => Err(Error::bad_request(format!("{name} must be a duration string or a number of seconds"))),
    }
}

/// Serialises tunes (an upgrade runs between reading the entry and writing it back); the table
/// write itself happens under core's mount lock (`Core::replace_mount_entry`).
static TUNE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn tune_write(core: &Core, want: &str, req: &Request) -> Result<Option<Response>> {
    let default_ttl = tune_ttl(req, "default_lease_ttl")?;
    let max_ttl = tune_ttl(req, "max_lease_ttl")?;
    let description = match req.data.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        Some(_) => return Err(Error::bad_request("description must be a string")),
    };
    let options = match req.data.get("options") {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => Some(o.clone()),
        Some(_) => return Err(Error::bad_request("options must be an object")),
    };

    let _guard = TUNE_LOCK.lock().await;
    let table = core.mount_table().await?;
    let Some(entry) = table.iter().find(|m| m.path == want).cloned() else {
        return Err(Error::bad_request(format!("tune of path \"{want}\" failed: no mount entry found")));
    };

    let mut updated = entry.clone();
    if let Some(t) = default_ttl {
        updated.config.default_lease_ttl = t;
    }
    if let Some(t) = max_ttl {
        updated.config.max_lease_ttl = t;
    }
    let eff_default = if updated.config.default_lease_ttl == 0 { core.default_lease_ttl } else { updated.config.default_lease_ttl };
    let eff_max = if updated.config.max_lease_ttl == 0 { core.max_lease_ttl } else { updated.config.max_lease_ttl };
    if eff_max < eff_default {
        return Err(Error::bad_request(format!(
            "backend max lease TTL of {eff_max} would be less than backend default lease TTL of {eff_default}"
        )));
    }
    if let Some(d) = description {
        updated.description = d;
    }

    let mut upgrade = false;
    if let Some(opts) = options {
        let mut merged = updated.options.clone().unwrap_or_default();
        for (k, v) in opts {
            let v = match v {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return Err(Error::bad_request(format!("options.{k} must be a string"))),
            };
            if k == "version" && entry.kind == "kv" {
                let from = entry.kv_version();
                match v.as_str() {
                    "2" if from == 1 => upgrade = true,
                    "2" => {}
                    "1" | "" if from == 2 => return Err(Error::bad_request("cannot downgrade mount from version 2")),
                    "1" | "" => {}
                    other => return Err(Error::bad_request(format!("invalid KV version {other:?}: must be 1 or 2"))),
                }
            }
            merged.insert(k, Value::String(v));
        }
        updated.options = Some(merged);
    }

    let view = crate::view::View::new(core.barrier.clone(), entry.storage_prefix());
    if upgrade {
        let converted = crate::kv::upgrade_v1_to_v2(&view).await?;
        tracing::info!(mount = %want, secrets = converted, "upgraded KV v1 mount to v2");
    }
    if updated != entry {
        core.replace_mount_entry(updated).await?;
    }
    if upgrade {
        crate::kv::finish_upgrade(&view).await?;
        let r = Response {
            warnings: vec![format!(
                "Upgrading mount from version 1 to version 2. This mount will be unavailable for a brief period and will resume service shortly."
            )],
            ..Default::default()
        };
        return Ok(Some(r.with_status(200)));
    }
    Ok(Some(Response::default()))
}

/// The preflight's refusal: 403 with Vault's text, naming the path with a trailing slash.
fn preflight_denied(path: &str) -> Error {
    Error::Forbidden(format!(
        "preflight capability check returned 403, please ensure client's policies grant access to path \"{}/\"",
        path.trim_end_matches('/')
    ))
}

/// The ACL of the request's token for the UI endpoints, which are unauthenticated paths that
/// check the token themselves (Vault's `fetchACLTokenEntryAndEntity`). Counts no use.
async fn ui_acl(core: &Core, req: &Request) -> Result<Arc<Acl>> {
    let token = req.token.as_deref().filter(|t| !t.is_empty()).ok_or(Error::PermissionDenied)?;
    let (_, entry) = core.tokens.lookup(token).await?;
    core.policies.acl(&entry.policies).await
}

/// `GET sys/internal/ui/mounts/<path>`: which mount serves a path, and its KV version. The
/// `vault kv` / `bao kv` commands call this first and break without it. A token that can do
/// nothing below the mount gets the same 403 as a path with no mount, so this cannot be used to
/// discover mounts.
async fn ui_mount(core: &Core, req: &Request, path: &str) -> Result<Option<Response>> {
    let acl = ui_acl(core, req).await?;
    let Some((route, _)) = core.router.matching(path) else {
        return Err(preflight_denied(path));
    };
    if !acl.has_mount_access(&route.prefix) {
        return Err(preflight_denied(path));
    }
    let m = &route.entry;
    let mut v = if route.is_auth { m.to_api_auth() } else { m.to_api() };
    if let Value::Object(o) = &mut v {
        o.insert("path".into(), Value::String(m.path.clone()));
        o.insert("deprecation_status".into(), Value::String("supported".into()));
    }
    Ok(Some(Response::from_value(v)))
}

/// `GET sys/internal/ui/mounts`: the mounts and auth methods the token can use.
async fn ui_mounts(core: &Core, req: &Request) -> Result<Option<Response>> {
    let acl = ui_acl(core, req).await?;
    let mut secret = Map::new();
    for m in core.mount_table().await? {
        if acl.has_mount_access(&m.path) {
            secret.insert(m.path.clone(), m.to_api());
        }
    }
    let mut auth = Map::new();
    for m in core.auth_table().await? {
        if acl.has_mount_access(&format!("auth/{}", m.path)) {
            auth.insert(m.path.clone(), m.to_api_auth());
        }
    }
    Ok(Some(Response::from_value(json!({ "auth": auth, "secret": secret }))))
}

async fn list_auth(core: &Core) -> Result<Option<Response>> {
    let table = core.auth_table().await?;
    let data: Map<String, Value> = table.iter().map(|m| (m.path.clone(), m.to_api_auth())).collect();
    let mut r = Response::data(data);
    r.inject_data_at_top = true;
    Ok(Some(r))
}

async fn read_auth(core: &Core, path: &str) -> Result<Option<Response>> {
    let want = format!("{}/", path.trim_matches('/'));
    let table = core.auth_table().await?;
    let Some(m) = table.iter().find(|m| m.path == want) else {
        return Err(Error::bad_request(format!("No auth engine at {want}")));
    };
    let mut v = m.to_api_auth();
    if let Value::Object(o) = &mut v {
        o.insert("deprecation_status".into(), Value::String("supported".into()));
    }
    let mut r = Response::from_value(v);
    r.inject_data_at_top = true;
    Ok(Some(r))
}

/// `GET|POST sys/auth/<path>/tune`: an auth method's lease TTLs and description.
async fn tune_auth(core: &Core, path: &str, req: &Request) -> Result<Option<Response>> {
    let want = format!("{}/", path.trim_matches('/'));
    let (d, m, description) = match req.op {
        Operation::Read => {
            let table = core.auth_table().await?;
            let m = table.iter().find(|m| m.path == want).ok_or_else(|| Error::bad_request(format!("cannot fetch sysview for path \"auth/{want}\"")))?;
            let (d, max) = core.mount_ttls(m);
            (d, max, m.description.clone())
        }
        Operation::Update => {
            let ttl = |k: &str| -> Result<Option<u64>> {
                match req.data.get(k) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) if s == "system" => Ok(Some(0)),
                    Some(v) => crate::policy::parse_duration_value(v).map(Some).map_err(Error::BadRequest),
                }
            };
            let description = req.data.get("description").and_then(Value::as_str).map(str::to_string);
            core.tune_auth(path, ttl("default_lease_ttl")?, ttl("max_lease_ttl")?, description).await?;
            return Ok(None);
        }
        _ => return Err(Error::UnsupportedOperation),
    };
    let mut r = Response::from_value(json!({
        "default_lease_ttl": d,
        "max_lease_ttl": m,
        "force_no_cache": false,
        "token_type": "default-service",
        "description": description,
    }));
    r.inject_data_at_top = true;
    Ok(Some(r))
}

/// `POST sys/auth/<path>` `{type, description, config, options}`.
async fn enable_auth(core: &Core, path: &str, req: &Request) -> Result<Option<Response>> {
    let kind = match req.data.get("type") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(Error::bad_request("backend type must be specified as a string")),
    };
    let description = req.data.get("description").and_then(Value::as_str).unwrap_or("");
    let options = match req.data.get("options") {
        Some(Value::Object(o)) => Some(o.clone()),
        Some(Value::Null) | None => None,
        Some(_) => return Err(Error::bad_request("options must be an object")),
    };
    let mut config = mounts::MountConfig::default();
    if let Some(c) = req.data.get("config") {
        let c = c.as_object().ok_or_else(|| Error::bad_request("config must be an object"))?;
        let ttl = |k: &str| -> Result<u64> {
            c.get(k).map_or(Ok(0), |v| crate::policy::parse_duration_value(v).map_err(|e| Error::bad_request(format!("error parsing {k}: {e}"))))
        };
        config.default_lease_ttl = ttl("default_lease_ttl")?;
        config.max_lease_ttl = ttl("max_lease_ttl")?;
    }
    core.enable_auth(path, kind, description, config, options).await?;
    Ok(None)
}

/// `sys/policies/acl/<name>` and the legacy `sys/policy/<name>` (which calls the text `rules`
/// and also answers at the top level of the body).
async fn policy_endpoint(core: &Core, req: &Request, name: &str, op: Operation, legacy: bool) -> Result<Option<Response>> {
    let name = crate::policy::normalize_name(name).map_err(Error::BadRequest)?;
    match op {
        Operation::Read => {
            let Some(p) = core.policies.get(&name).await? else {
                return Ok(None);
            };
            let stored = &p.1;
            let mut v = json!({
                "name": stored.name,
                "version": stored.version,
                "cas_required": false,
                "allow_wildcards_in_identity_templates": false,
                "allow_slashes_in_identity_templates": false,
            });
            v[if legacy { "rules" } else { "policy" }] = Value::String(stored.policy.clone());
            if !stored.modified.is_empty() {
                v["modified"] = Value::String(stored.modified.clone());
            }
            let mut r = Response::from_value(v);
            r.inject_data_at_top = legacy;
            Ok(Some(r))
        }
        Operation::Update => {
            let mut warnings = Vec::new();
            let text = match (req.data.get("policy").and_then(Value::as_str), req.data.get("rules").and_then(Value::as_str)) {
                (Some(p), _) if !p.is_empty() => p.to_string(),
                (_, Some(r)) if legacy && !r.is_empty() => {
                    warnings.push("'rules' is deprecated, please use 'policy' instead".to_string());
                    r.to_string()
                }
                _ => return Err(Error::bad_request("'policy' parameter not supplied or empty")),
            };
            // Vault accepts the text base64-encoded too (policy text itself never is valid base64).
            let text = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or(text);
            core.policies.set(&name, &text).await?;
            if warnings.is_empty() {
                Ok(None)
            } else {
                Ok(Some(Response { warnings, ..Default::default() }))
            }
        }
        Operation::Delete => {
            core.policies.delete(&name).await?;
            Ok(None)
        }
        _ => Err(Error::UnsupportedOperation),
    }
}

/// `sys/capabilities*`: `{paths: [...]}` (or `path`) → each path's capabilities, plus
/// `capabilities` when exactly one path was asked about (for old clients).
fn capabilities(acl: &Acl, req: &Request) -> Result<Option<Response>> {
    let mut paths: Vec<String> = Vec::new();
    for key in ["paths", "path"] {
        match req.data.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => paths.extend(s.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty())),
            Some(Value::Array(a)) => {
                for p in a {
                    paths.push(p.as_str().ok_or_else(|| Error::bad_request("paths must be strings"))?.to_string());
                }
            }
            Some(_) => return Err(Error::bad_request("paths must be a list of strings")),
        }
    }
    if paths.is_empty() {
        return Err(Error::bad_request("paths must be supplied"));
    }
    let mut data = Map::new();
    for p in paths.iter().take(1000) {
        data.insert(p.clone(), json!(acl.capabilities(p)));
    }
    if paths.len() == 1 {
        if let Some(c) = data.get(&paths[0]).cloned() {
            data.insert("capabilities".into(), c);
        }
    }
    let mut r = Response::data(data);
    r.inject_data_at_top = true;
    Ok(Some(r))
}

/// `sys/ha-status`: the cluster's nodes from the Raft configuration, the active one marked, with
/// when each other node last answered the active node (Vault: the last echo heartbeat). A standby
/// forwards this request; answered on a standby anyway, it knows no contact times (`null`).
fn ha_status(core: &Core) -> Result<Option<Response>> {
    let Some(raft) = core.raft() else {
        if !core.ha_enabled() {
            return Err(Error::bad_request("node is not in HA cluster mode"));
        }
        // On a lock (etcd) the active node hears nothing from its standbys: it lists itself.
        let node = json!({
            "hostname": core.api_addr,
            "api_address": core.api_addr,
            "cluster_address": core.cluster_addr,
            "active_node": core.ha_state().is_active(),
            "last_echo": Value::Null,
            "version": crate::API_VERSION,
        });
        let mut r = Response::from_value(json!({ "nodes": [node] }));
        r.inject_data_at_top = true;
        return Ok(Some(r));
    };
    let active = core.ha_state().is_active();
    let contact = raft.peer_contact();
    let leader_id = raft.status().leader.map(|n| n.node_id);
    let now = time::OffsetDateTime::now_utc();
    let mut nodes: Vec<Value> = raft
        .configuration()
        .into_iter()
        .map(|p| {
            let is_self = p.raft_id == raft.raft_id();
            let active_node = if is_self { active } else { !active && leader_id.as_deref() == Some(p.node_id.as_str()) };
            let last_echo = match contact.get(&p.raft_id).copied().flatten() {
                Some(age) if !is_self => {
                    let at = now - time::Duration::try_from(age).unwrap_or(time::Duration::ZERO);
                    Value::String(at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default())
                }
                _ => Value::Null,
            };
            json!({
                "hostname": p.node_id,
                "api_address": p.api_addr,
                "cluster_address": format!("https://{}", p.address),
                "active_node": active_node,
                "last_echo": last_echo,
                "version": crate::API_VERSION,
            })
        })
        .collect();
    nodes.sort_by(|a, b| a["api_address"].as_str().cmp(&b["api_address"].as_str()));
    let mut r = Response::from_value(json!({ "nodes": nodes }));
    r.inject_data_at_top = true;
    Ok(Some(r))
}
