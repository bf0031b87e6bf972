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
    Ok(table.iter().find(|m| m.path == want).map(|m| Response::from_value(m.to_api())))
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

async fn tune(core: &Core, mount: &str, req: &Request) -> Result<Option<Response>> {
    let want = format!("{}/", mount.trim_matches('/'));
    let table = core.mount_table().await?;
    let Some(m) = table.iter().find(|m| m.path == want) else {
        return Err(Error::bad_request(format!("cannot fetch sysview for path \"{want}\"")));
    };
    match req.op {
        Operation::Read => Ok(Some(Response::from_value(json!({
            "default_lease_ttl": if m.config.default_lease_ttl == 0 { core.default_lease_ttl } else { m.config.default_lease_ttl },
            "max_lease_ttl": if m.config.max_lease_ttl == 0 { core.max_lease_ttl } else { m.config.max_lease_ttl },
            "description": m.description,
            "force_no_cache": m.config.force_no_cache,
            "options": m.options,
        })))),
        _ => Err(Error::UnsupportedOperation),
    }
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
