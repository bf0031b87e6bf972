//! The token auth method: the HTTP API of the token store at `auth/token/` (create, lookup,
//! renew, revoke, accessors). It is built into the core rather than routed like other auth
//! methods because creating a token needs the caller's token and ACL.
//!
//! Shapes, status codes and error texts follow OpenBao's `token_store.go` handlers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::core::Core;
use crate::error::{Error, Result};
use crate::policy::{self, Acl, Op};
use crate::policy_store::MAX_TOKEN_POLICIES;
use crate::request::{Auth, Operation, Request, Response};
use crate::token::{calculate_ttl, now_ms, NewToken, TokenEntry, TtlParams};

pub const MOUNT: &str = "auth/token/";

/// Paths below `auth/token/` that need `sudo` (Vault's token store `PathsSpecial.Root`).
const ROOT_PATHS: &[&str] = &["revoke-orphan/*", "accessors*"];

/// Upper bound on accessors one LIST returns.
const MAX_LIST: usize = 100_000;

/// The authenticated caller of a request, as the core resolved it.
pub struct Caller {
    pub token: String,
    pub hash: String,
    pub entry: Arc<TokenEntry>,
    pub acl: Arc<Acl>,
}

impl Caller {
    /// Root, or `sudo` on `path` (Vault's `SudoPrivilege`).
    pub fn is_sudo(&self, path: &str) -> bool {
        self.acl.is_root() || self.acl.allow(Op::Update, path, &Map::new()).sudo
    }
}

pub fn is_root_path(rest: &str) -> bool {
    crate::router::path_matches(ROOT_PATHS, rest)
}

/// OpenBao wraps some handler errors in go-multierror's text; clients see exactly this.
fn multi(msg: &str) -> String {
    format!("1 error occurred:\n\t* {msg}\n\n")
}

pub async fn handle(core: &Core, req: &Request, caller: &Caller) -> Result<Option<Response>> {
    let rest = req.path.strip_prefix(MOUNT).unwrap_or("");
    let op = req.op;
    match rest.trim_end_matches('/') {
        "create" | "create-orphan" if op == Operation::Update => {
            create(core, req, caller, rest.starts_with("create-orphan")).await
        }
        "lookup" | "lookup-self" if op == Operation::Read => lookup_self(caller),
        "lookup-self" if op == Operation::Update => lookup_self(caller),
        "lookup" if op == Operation::Update => match str_param(req, "token")? {
            None => lookup_self(caller),
            Some(t) => lookup_other(core, caller, &t).await,
        },
        "lookup-accessor" if op == Operation::Update => {
            let accessor = str_param(req, "accessor")?.unwrap_or_default();
            let Some((_, e)) = core.tokens.by_accessor(&accessor).await? else {
                return Err(Error::bad_request(multi("invalid accessor")));
            };
            let mut d = e.lookup_data();
            d["id"] = Value::String(String::new());
            Ok(Some(Response::from_value(d)))
        }
        "renew" if op == Operation::Update => {
            let token =
                str_param(req, "token")?.ok_or_else(|| Error::bad_request("missing token ID"))?;
            renew(core, req, &token).await
        }
        "renew-self" if op == Operation::Update => renew(core, req, &caller.token).await,
        "renew-accessor" if op == Operation::Update => {
            let accessor = str_param(req, "accessor")?.unwrap_or_default();
            let Some((hash, _)) = core.tokens.by_accessor(&accessor).await? else {
                return Err(Error::bad_request(multi("invalid accessor")));
            };
            renew_hash(core, req, &hash, String::new()).await
        }
        "revoke" if op == Operation::Update => {
            let token =
                str_param(req, "token")?.ok_or_else(|| Error::bad_request("missing token ID"))?;
            if let Some((hash, _)) = core.tokens.find(&token).await? {
                core.tokens.revoke_tree(&hash).await?;
            }
            Ok(None)
        }
        "revoke-self" if op == Operation::Update => {
            core.tokens.revoke_tree(&caller.hash).await?;
            Ok(None)
        }
        "revoke-accessor" if op == Operation::Update => {
            let accessor = str_param(req, "accessor")?.unwrap_or_default();
            match core.tokens.by_accessor(&accessor).await? {
                Some((hash, _)) => {
                    core.tokens.revoke_tree(&hash).await?;
                    Ok(None)
                }
                None => Ok(Some(Response {
                    warnings: vec!["No token found with this accessor".into()],
                    ..Default::default()
                })),
            }
        }
        "revoke-orphan" if op == Operation::Update => {
            if !caller.is_sudo(&req.path) {
                return Err(Error::bad_request(
                    "root or sudo privileges required to revoke and orphan",
                ));
            }
            let token =
                str_param(req, "token")?.ok_or_else(|| Error::bad_request("missing token ID"))?;
            if let Some((hash, _)) = core.tokens.find(&token).await? {
                core.tokens.revoke_orphan(&hash).await?;
            }
            Ok(None)
        }
        "accessors" if op == Operation::List => {
            let keys = core.tokens.list_accessors(MAX_LIST).await?;
            if keys.is_empty() {
                return Ok(None);
            }
            Ok(Some(Response::from_value(json!({ "keys": keys }))))
        }
        "tidy" if op == Operation::Update => {
            let revoked = core.tokens.full_scan().await?;
            tracing::info!(revoked, "token tidy requested");
            Ok(Some(
                Response {
                    warnings: vec!["Tidy operation successfully started. Any information from the operation will be printed to OpenBao's server logs.".into()],
                    ..Default::default()
                }
                .with_status(202),
            ))
        }
        "create" | "create-orphan" | "lookup" | "lookup-self" | "lookup-accessor" | "renew"
        | "renew-self" | "renew-accessor" | "revoke" | "revoke-self" | "revoke-accessor"
        | "revoke-orphan" | "accessors" | "tidy" => Err(Error::UnsupportedOperation),
        _ => Err(Error::UnsupportedPath),
    }
}

/// The caller's own entry, as of this request (a use-limited token shows the use it spent).
fn lookup_self(caller: &Caller) -> Result<Option<Response>> {
    let mut d = caller.entry.lookup_data();
    d["id"] = Value::String(caller.token.clone());
    Ok(Some(Response::from_value(d)))
}

async fn lookup_other(core: &Core, caller: &Caller, token: &str) -> Result<Option<Response>> {
    if token == caller.token {
        return lookup_self(caller);
    }
    let Some((_, e)) = core.tokens.find(token).await? else {
        return Err(Error::Forbidden("bad token".into()));
    };
    let mut d = e.lookup_data();
    d["id"] = Value::String(token.to_string());
    Ok(Some(Response::from_value(d)))
}

async fn renew(core: &Core, req: &Request, token: &str) -> Result<Option<Response>> {
    let Some((hash, _)) = core.tokens.find(token).await? else {
        return Err(Error::bad_request("token not found"));
    };
    renew_hash(core, req, &hash, token.to_string()).await
}

async fn renew_hash(
    core: &Core,
    req: &Request,
    hash: &str,
    token: String,
) -> Result<Option<Response>> {
    let increment = match req.data.get("increment") {
        None => 0,
        Some(v) => policy::parse_duration_value(v).map_err(Error::BadRequest)?,
    };
    let (e, ttl, warnings) = core.tokens.renew(hash, increment, core.token_mount_ttls()).await?;
    let mut auth = auth_of(&e, token, ttl);
    auth.renewable = true;
    Ok(Some(Response { auth: Some(auth), warnings, ..Default::default() }))
}

/// The `auth` block for a token entry.
pub fn auth_of(e: &TokenEntry, token: String, ttl: u64) -> Auth {
    Auth {
        policies: e.policies.clone(),
        metadata: e
            .meta
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
        display_name: e.display_name.clone(),
        ttl,
        max_ttl: e.max_ttl,
        period: e.period,
        explicit_max_ttl: e.explicit_max_ttl,
        num_uses: e.num_uses.max(0) as u64,
        renewable: e.renewable,
        client_token: token,
        accessor: e.accessor.clone(),
        orphan: e.orphan,
    }
}

fn str_param(req: &Request, key: &str) -> Result<Option<String>> {
    match req.data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Error::bad_request(format!("{key} must be a string, got {other}"))),
    }
}

fn bool_param(req: &Request, key: &str, default: bool) -> Result<bool> {
    match req.data.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) => crate::http::parse_go_bool(s)
            .ok_or_else(|| Error::bad_request(format!("invalid boolean value for {key}: {s:?}"))),
        Some(Value::Number(n)) => Ok(n.as_f64().unwrap_or(0.0) != 0.0),
        Some(other) => Err(Error::bad_request(format!("invalid boolean value for {key}: {other}"))),
    }
}

fn duration_param(req: &Request, key: &str) -> Result<u64> {
    match req.data.get(key) {
        None => Ok(0),
        Some(v) => policy::parse_duration_value(v)
            .map_err(|e| Error::bad_request(format!("error parsing {key}: {e}"))),
    }
}

/// Policies as a JSON list or a comma-separated string (Vault accepts both).
pub fn policies_param(v: Option<&Value>) -> Result<Vec<String>> {
    let out: Vec<String> = match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => {
            s.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect()
        }
        Some(Value::Array(a)) => a
            .iter()
            .map(|p| {
                p.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::bad_request("policies must be a list of strings"))
            })
            .collect::<Result<_>>()?,
        Some(_) => return Err(Error::bad_request("policies must be a list of strings")),
    };
    if out.len() > MAX_TOKEN_POLICIES {
        return Err(Error::bad_request(format!(
            "a token may have at most {MAX_TOKEN_POLICIES} policies"
        )));
    }
    Ok(out)
}

fn meta_param(req: &Request) -> Result<Option<HashMap<String, String>>> {
    match req.data.get("meta") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) if o.is_empty() => Ok(None),
        Some(Value::Object(o)) => {
            let mut m = HashMap::new();
            for (k, v) in o {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                m.insert(k.clone(), v);
            }
            Ok(Some(m))
        }
        Some(_) => Err(Error::bad_request("meta must be a map of strings")),
    }
}

/// Vault: `token-` plus the name with anything but letters, digits and `-` replaced by `-`.
fn display_name(requested: Option<String>) -> String {
    match requested {
        None => "token".into(),
        Some(n) => {
            let full: String = format!("token-{n}")
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' })
                .collect();
            full.trim_end_matches('-').to_string()
        }
    }
}

/// `auth/token/create` and `create-orphan` (Vault's `handleCreateCommon` without roles).
async fn create(
    core: &Core,
    req: &Request,
    caller: &Caller,
    orphan_endpoint: bool,
) -> Result<Option<Response>> {
    let parent = &caller.entry;
    // A token with limited uses could escape its limit by minting children.
    if parent.num_uses != 0 {
        return Err(Error::PermissionDenied);
    }
    let is_sudo = caller.is_sudo(&req.path);
    let id = str_param(req, "id")?;
    if id.is_some() && !is_sudo {
        return Err(Error::bad_request("root or sudo privileges required to specify token id"));
    }
    match str_param(req, "type")?.as_deref() {
        None | Some("service") | Some("default") | Some("default-service") => {}
        Some("batch") => return Err(Error::bad_request("batch tokens are not supported")),
        Some(other) => {
            return Err(Error::bad_request(format!("invalid 'token_type' value {other:?}")))
        }
    }
    if str_param(req, "role_name")?.is_some() {
        return Err(Error::bad_request("token roles are not supported"));
    }
    let no_parent = bool_param(req, "no_parent", false)?;
    if no_parent && !orphan_endpoint && !is_sudo {
        return Err(Error::bad_request("root or sudo privileges required to create orphan token"));
    }
    let orphan = orphan_endpoint || no_parent;
    let no_default_policy = bool_param(req, "no_default_policy", false)?;
    let renewable = bool_param(req, "renewable", true)?;
    let num_uses = match req.data.get("num_uses") {
        None | Some(Value::Null) => 0,
        Some(v) => {
            let n = v
                .as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .ok_or_else(|| Error::bad_request("num_uses must be an integer"))?;
            if n < 0 {
                return Err(Error::bad_request("number of uses cannot be negative"));
            }
            n
        }
    };
    let explicit_max_ttl = duration_param(req, "explicit_max_ttl")?;
    let mut ttl = duration_param(req, "ttl")?;
    if ttl == 0 {
        ttl = duration_param(req, "lease")?;
    }
    let period = duration_param(req, "period")?;
    if period > 0 && !is_sudo {
        return Err(Error::bad_request(
            "root or sudo privileges required to create periodic token",
        ));
    }
    let meta = meta_param(req)?;
    let display = display_name(str_param(req, "display_name")?);

    // Policies: the requested ones, or the parent's; a non-sudo caller may only hand out a
    // subset of its own. `default` is added when the caller has it or is sudo.
    let requested = policy::sanitize(&policies_param(req.data.get("policies"))?, false);
    let parent_has_default = parent.policies.iter().any(|p| p == policy::DEFAULT_POLICY);
    let mut policies = if requested.is_empty() {
        policy::sanitize(&parent.policies, false)
    } else {
        requested.clone()
    };
    if !is_sudo && !requested.iter().all(|p| parent.policies.contains(p)) {
        return Err(Error::bad_request("child policies must be subset of parent"));
    }
    if policies.iter().any(|p| p == policy::ROOT_POLICY) && !parent.is_root() {
        return Err(Error::bad_request(
            "root tokens may not be created without parent token being root",
        ));
    }
    if !no_default_policy && (is_sudo || parent_has_default) {
        policies = policy::sanitize(&policies, true);
    }
    if no_default_policy {
        policies.retain(|p| p != policy::DEFAULT_POLICY);
    }

    let mut warnings = Vec::new();
    let (sys_default, sys_max) = core.token_mount_ttls();
    let is_root_token = policies.iter().any(|p| p == policy::ROOT_POLICY);
    if period > 0 || ttl > 0 || !is_root_token {
        let params =
            TtlParams { ttl, period, explicit_max: explicit_max_ttl, ..Default::default() };
        let (t, w) = calculate_ttl(sys_default, sys_max, &params, now_ms())?;
        ttl = t;
        warnings.extend(w);
    }
    if ttl == 0 && explicit_max_ttl > 0 {
        ttl = explicit_max_ttl;
    }

    let path = format!("{MOUNT}{}", if orphan_endpoint { "create-orphan" } else { "create" });
    let (token, entry) = core
        .tokens
        .create(NewToken {
            id,
            policies,
            parent: if orphan { String::new() } else { caller.hash.clone() },
            path,
            display_name: display,
            meta,
            num_uses,
            ttl,
            explicit_max_ttl,
            period,
            max_ttl: 0,
            renewable,
        })
        .await?;
    let auth = auth_of(&entry, token, ttl);
    Ok(Some(Response { auth: Some(auth), warnings, ..Default::default() }))
}

/// Metadata of an `Auth` as stored in a token entry.
pub fn meta_of(m: &BTreeMap<String, String>) -> Option<HashMap<String, String>> {
    if m.is_empty() {
        None
    } else {
        Some(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_are_sanitised() {
        assert_eq!(display_name(None), "token");
        assert_eq!(display_name(Some("My App".into())), "token-My-App");
        assert_eq!(display_name(Some("x!".into())), "token-x");
    }

    #[test]
    fn policies_accept_list_or_csv() {
        assert_eq!(policies_param(Some(&json!("a, b"))).unwrap(), vec!["a", "b"]);
        assert_eq!(policies_param(Some(&json!(["a"]))).unwrap(), vec!["a"]);
        assert!(policies_param(Some(&json!(1))).is_err());
    }

    #[test]
    fn root_paths() {
        assert!(is_root_path("accessors/"));
        assert!(is_root_path("revoke-orphan/x"));
        assert!(!is_root_path("revoke-orphan"));
        assert!(!is_root_path("create"));
    }
}
