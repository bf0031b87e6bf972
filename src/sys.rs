//! The authenticated part of `sys/`: mounts, the UI mount preflight the CLI relies on, and the
//! barrier's key management. (Seal, init, health and leader are HTTP-level handlers in `http`,
//! because they answer while sealed.)

use serde_json::{json, Map, Value};

use crate::core::Core;
use crate::error::{Error, Result};
use crate::mounts;
use crate::request::{Operation, Request, Response};

pub async fn handle(core: &Core, req: &Request) -> Result<Option<Response>> {
    let path = req.path.strip_prefix("sys/").unwrap_or(&req.path);
    let path = path.trim_end_matches('/');
    match (path, req.op) {
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
        (p, Operation::Read) if p.starts_with("internal/ui/mounts/") => ui_mount(core, &p["internal/ui/mounts/".len()..]),
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

/// Serialises tune's read-modify-write of the mount table. Mount enable/disable (core.rs) hold
/// their own lock, not this one: a tune racing an enable can lose the enable's entry. Moving the
/// table update into `Core` under its mount lock closes that window.
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
        // Re-read right before writing so the window for racing a mount change stays short.
        let mut table = core.mount_table().await?;
        let Some(slot) = table.iter_mut().find(|m| m.path == want) else {
            return Err(Error::bad_request(format!("tune of path \"{want}\" failed: no mount entry found")));
        };
        *slot = updated;
        crate::view::View::new(core.barrier.clone(), "core/").put_json(mounts::MOUNT_TABLE_KEY, &table).await?;
        core.router.rebuild(&core.barrier, &table)?;
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

/// `GET sys/internal/ui/mounts/<path>`: which mount serves a path, and its KV version. The
/// `vault kv` / `bao kv` commands call this first and break without it.
fn ui_mount(core: &Core, path: &str) -> Result<Option<Response>> {
    let Some((route, _)) = core.router.matching(path) else {
        return Err(Error::bad_request(format!(
            "preflight capability check returned 403, please ensure client's policies grant access to path \"{path}/\""
        )));
    };
    let m = &route.entry;
    let mut v = m.to_api();
    if let Value::Object(o) = &mut v {
        o.insert("path".into(), Value::String(m.path.clone()));
        o.insert("deprecation_status".into(), Value::String("supported".into()));
    }
    Ok(Some(Response::from_value(v)))
}
