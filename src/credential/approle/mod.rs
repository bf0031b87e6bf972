//! The `approle` auth method, with Vault's API.
//!
//! Layout inside the mount's view (all behind the barrier):
//! - `hmac_key`: 32 random bytes made on first use; every identifier below is stored only as
//!   hex HMAC-SHA256 under this key, so storage never holds a usable role ID or secret ID.
//! - `role/<name>`: the role (names are lowercased, as Vault does for new roles).
//! - `role_id/<hmac(role_id)>`: the role's name, to resolve a login.
//! - `secret_id/<hmac(role name)>/<hmac(secret_id)>`: a secret ID's entry (uses left, TTL...).
//! - `accessor/<hmac(accessor)>`: which secret ID an accessor names.
//!
//! Related keys change together in one view transaction. Role changes are serialised by one
//! lock (they also guard the uniqueness of role IDs); a login's use-count decrement is
//! serialised per secret ID by a striped lock. Expired secret IDs are refused and removed when
//! met (Vault leaves that to its periodic tidy). The caller's address does not reach backends
//! yet, so a login that Vault would check against CIDRs (`secret_id_bound_cidrs`, a secret ID's
//! `cidr_list`) fails closed with Vault's "failed to get connection information";
//! `token_bound_cidrs` are stored and shown only.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::{Mutex, OnceCell};
use zeroize::Zeroizing;

use crate::credential::userpass::token_params::{parse_cidrs, sanitize_policies, TokenParams};
use crate::error::{Error, Result};
use crate::request::{Operation, Request, Response};
use crate::router::LogicalBackend;
use crate::transit::fields::{b64_decode, multierror, now_rfc3339_nanos, rfc3339_nanos, Fields};
use crate::view::{View, ViewOp};

const INVALID_CREDENTIALS: &str = "invalid role or secret ID";
/// Vault's answer when a login must be checked against CIDRs but the caller's address is
/// unknown. Backends do not see the caller's address yet, so CIDR-bound logins fail closed.
const NO_CONNECTION_INFO: &str = "failed to get connection information";
const STRIPES: usize = 64;
/// Go's zero `time.Time`, which Vault shows for a secret ID that never expires.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";
/// Secret IDs a role may list or delete in one call; bounds memory.
const MAX_SECRET_IDS: usize = 100_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RoleEntry {
    name: String,
    role_id: String,
    bind_secret_id: bool,
    #[serde(default)]
    secret_id_bound_cidrs: Option<Vec<String>>,
    #[serde(default)]
    secret_id_num_uses: i64,
    #[serde(default)]
    secret_id_ttl: u64,
    #[serde(default)]
    local_secret_ids: bool,
    #[serde(flatten)]
    token: TokenParams,
    /// Legacy `policies` and `period`.
    #[serde(default)]
    policies: Vec<String>,
    #[serde(default)]
    period: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoleIdEntry {
    name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SecretIdEntry {
    secret_id_accessor: String,
    secret_id_num_uses: i64,
    secret_id_ttl: u64,
    creation_time: String,
    /// Unix seconds; 0 = never.
    #[serde(default)]
    expires_at: i64,
    #[serde(default)]
    expiration_time: String,
    last_updated_time: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    cidr_list: Vec<String>,
    #[serde(default)]
    token_bound_cidrs: Vec<String>,
}

impl SecretIdEntry {
    fn expired(&self) -> bool {
        self.expires_at != 0 && time::OffsetDateTime::now_utc().unix_timestamp() >= self.expires_at
    }

    fn to_api(&self) -> Map<String, Value> {
        let v = json!({
            "cidr_list": self.cidr_list,
            "creation_time": self.creation_time,
            "expiration_time": if self.expiration_time.is_empty() { ZERO_TIME } else { &self.expiration_time },
            "last_updated_time": self.last_updated_time,
            "metadata": self.metadata,
            "secret_id_accessor": self.secret_id_accessor,
            "secret_id_num_uses": self.secret_id_num_uses,
            "secret_id_ttl": self.secret_id_ttl,
            "token_bound_cidrs": self.token_bound_cidrs,
        });
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccessorEntry {
    secret_id_hmac: String,
}

/// Vault's `GenericNameRegex`.
fn valid_name(name: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let (Some(first), Some(last)) = (name.chars().next(), name.chars().last()) else {
        return false;
    };
    word(first) && word(last) && name.chars().all(|c| word(c) || matches!(c, '-' | '.' | '@'))
}

/// Vault's `strutil.ParseArbitraryKeyValues`: JSON (optionally base64-wrapped) or `k=v,k=v`.
fn parse_metadata(input: &str) -> std::result::Result<BTreeMap<String, String>, String> {
    let mut input = input.trim().to_string();
    if input.is_empty() {
        return Ok(BTreeMap::new());
    }
    if let Ok(bytes) = b64_decode(&input) {
        if let Ok(s) = String::from_utf8(bytes) {
            input = s;
        }
    }
    if let Ok(m) = serde_json::from_str::<BTreeMap<String, String>>(&input) {
        return Ok(m);
    }
    let mut out = BTreeMap::new();
    for item in input.split(',') {
        let Some((k, v)) = item.trim().split_once('=') else {
            return Err("failed to parse the input: invalid <key,value> format".into());
        };
        let k = k.trim();
        if k.is_empty() {
            return Err("failed to parse the input: invalid <key,value> format".into());
        }
        out.insert(k.to_string(), v.trim().to_string());
    }
    Ok(out)
}

fn not_found_role(name: &str) -> Response {
    // Vault's error response with a 404 status: `{"errors": [...]}` and nothing else.
    Response::raw(json!({ "errors": [format!("role \"{name}\" does not exist")] })).with_status(404)
}

pub struct AppRole {
    view: View,
    hmac_key: OnceCell<Zeroizing<Vec<u8>>>,
    roles: Mutex<()>,
    stripes: Vec<Mutex<()>>,
}

impl AppRole {
    pub fn new(view: View) -> Self {
        AppRole {
            view,
            hmac_key: OnceCell::new(),
            roles: Mutex::new(()),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    fn stripe(&self, key: &str) -> &Mutex<()> {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in key.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
        &self.stripes[(h % STRIPES as u64) as usize]
    }

    /// The mount's HMAC key, created on first use.
    async fn key(&self) -> Result<&[u8]> {
        let k = self
            .hmac_key
            .get_or_try_init(|| async {
                // OnceCell runs one initializer at a time; a stored key wins over a new one.
                if let Some(k) = self.view.get("hmac_key").await? {
                    return Ok::<_, Error>(Zeroizing::new(k));
                }
                let mut k = Zeroizing::new(vec![0u8; 32]);
                aws_lc_rs::rand::fill(&mut k)
                    .map_err(|_| Error::internal("random source failed"))?;
                self.view.put("hmac_key", &k).await?;
                Ok(k)
            })
            .await?;
        Ok(k.as_slice())
    }

    async fn hmac(&self, value: &str) -> Result<String> {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, self.key().await?);
        Ok(hex::encode(aws_lc_rs::hmac::sign(&key, value.as_bytes()).as_ref()))
    }

    async fn role(&self, name: &str) -> Result<Option<RoleEntry>> {
        self.view.get_json(&format!("role/{}", name.to_lowercase())).await
    }

    async fn secret_prefix(&self, role: &str) -> Result<String> {
        Ok(format!("secret_id/{}/", self.hmac(role).await?))
    }

    // --- roles -----------------------------------------------------------------------------

    async fn list_roles(&self) -> Result<Option<Response>> {
        let keys = self.view.list("role/").await?;
        if keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(Response::from_value(json!({ "keys": keys }))))
    }

    async fn read_role(&self, name: &str) -> Result<Option<Response>> {
        let Some(role) = self.role(name).await? else { return Ok(None) };
        let mut data = Map::new();
        data.insert("bind_secret_id".into(), json!(role.bind_secret_id));
        data.insert("secret_id_bound_cidrs".into(), json!(role.secret_id_bound_cidrs));
        data.insert("secret_id_num_uses".into(), json!(role.secret_id_num_uses));
        data.insert("secret_id_ttl".into(), json!(role.secret_id_ttl));
        data.insert("local_secret_ids".into(), json!(role.local_secret_ids));
        role.token.populate(&mut data);
        if role.period != 0 {
            data.insert("period".into(), json!(role.period));
        }
        if !role.policies.is_empty() {
            data.insert("policies".into(), json!(role.policies));
        }
        Ok(Some(Response::data(data)))
    }

    /// Stores `role` and keeps the role ID index right (Vault's `setRoleEntry`); the caller
    /// holds the roles lock.
    async fn save_role(&self, role: &RoleEntry, previous_role_id: &str) -> Result<()> {
        let has_cidrs = role.secret_id_bound_cidrs.as_ref().is_some_and(|c| !c.is_empty());
        if !role.bind_secret_id && !has_cidrs && role.token.token_bound_cidrs.is_empty() {
            return Err(multierror("at least one constraint should be enabled on the role"));
        }
        let id_key = format!("role_id/{}", self.hmac(&role.role_id).await?);
        if let Some(idx) = self.view.get_json::<RoleIdEntry>(&id_key).await? {
            if idx.name != role.name {
                return Err(multierror("role_id already in use"));
            }
        }
        let mut ops = vec![ViewOp::Put(format!("role/{}", role.name), serde_json::to_vec(role)?)];
        if !previous_role_id.is_empty() && previous_role_id != role.role_id {
            ops.push(ViewOp::Delete(format!("role_id/{}", self.hmac(previous_role_id).await?)));
        }
        ops.push(ViewOp::Put(
            id_key,
            serde_json::to_vec(&RoleIdEntry { name: role.name.clone() })?,
        ));
        self.view.transaction(ops).await
    }

    async fn write_role(&self, req: &Request, name: &str) -> Result<Option<Response>> {
        let f = Fields::with_existence_check(&req.data);
        let _g = self.roles.lock().await;
        let existing = self.role(name).await?;
        let create = existing.is_none();
        let mut role = existing
            .unwrap_or_else(|| RoleEntry { name: name.to_lowercase(), ..Default::default() });
        role.token.parse(&f)?;
        if let Some(local) = f.bool("local_secret_ids")? {
            if !create {
                return Err(Error::bad_request(
                    "local_secret_ids can only be modified during role creation",
                ));
            }
            role.local_secret_ids = local;
        }
        let previous_role_id = role.role_id.clone();
        if let Some(id) = f.str("role_id")? {
            role.role_id = id;
        } else if create {
            role.role_id = uuid::Uuid::new_v4().to_string();
        }
        if role.role_id.is_empty() {
            return Err(Error::bad_request(
                "invalid role_id supplied, or failed to generate a role_id",
            ));
        }
        if let Some(b) = f.bool("bind_secret_id")? {
            role.bind_secret_id = b;
        } else if create {
            role.bind_secret_id = true;
        }
        let cidrs = match f.comma_strings("secret_id_bound_cidrs")? {
            Some(c) => Some(c),
            None => f.comma_strings("bound_cidr_list")?,
        };
        if let Some(c) = cidrs {
            for item in &c {
                if !item.contains('/') || parse_cidrs(std::slice::from_ref(item)).is_err() {
                    return Err(multierror(format!(
                        "failed to validate CIDR blocks: invalid CIDR address: {item}"
                    )));
                }
            }
            role.secret_id_bound_cidrs = Some(c);
        }
        if let Some(n) = f.int("secret_id_num_uses")? {
            role.secret_id_num_uses = n;
        }
        if role.secret_id_num_uses < 0 {
            return Err(Error::bad_request("secret_id_num_uses cannot be negative"));
        }
        if let Some(ttl) = f.duration_secs("secret_id_ttl")? {
            role.secret_id_ttl = ttl as u64;
        }
        // Vault's upgrade of the legacy `policies` and `period`.
        if f.has("token_policies") {
            role.policies =
                if f.has("policies") { role.token.token_policies.clone() } else { Vec::new() };
        } else if let Some(p) = f.comma_strings("policies")? {
            role.policies = sanitize_policies(&p, false);
            role.token.token_policies = role.policies.clone();
        }
        if f.has("token_period") {
            role.period = if f.has("period") { role.token.token_period } else { 0 };
        } else if let Some(p) = f.duration_secs("period")? {
            role.period = p as u64;
            role.token.token_period = role.period;
        }
        self.save_role(&role, &previous_role_id).await?;
        Ok(None)
    }

    async fn delete_role(&self, name: &str) -> Result<Option<Response>> {
        let _g = self.roles.lock().await;
        let Some(role) = self.role(name).await? else { return Ok(None) };
        let prefix = self.secret_prefix(&role.name).await?;
        let mut ops = Vec::new();
        for h in self.view.list(&prefix).await?.into_iter().take(MAX_SECRET_IDS) {
            if let Some(e) = self.view.get_json::<SecretIdEntry>(&format!("{prefix}{h}")).await? {
                ops.push(ViewOp::Delete(format!(
                    "accessor/{}",
                    self.hmac(&e.secret_id_accessor).await?
                )));
            }
            ops.push(ViewOp::Delete(format!("{prefix}{h}")));
        }
        ops.push(ViewOp::Delete(format!("role_id/{}", self.hmac(&role.role_id).await?)));
        ops.push(ViewOp::Delete(format!("role/{}", role.name)));
        for chunk in ops.chunks(256) {
            self.view.transaction(chunk.iter().map(clone_op).collect()).await?;
        }
        Ok(None)
    }

    async fn read_role_id(&self, name: &str) -> Result<Option<Response>> {
        Ok(self.role(name).await?.map(|r| Response::from_value(json!({ "role_id": r.role_id }))))
    }

    async fn write_role_id(&self, req: &Request, name: &str) -> Result<Option<Response>> {
        let f = Fields::new(&req.data);
        let _g = self.roles.lock().await;
        let Some(mut role) = self.role(name).await? else { return Err(Error::UnsupportedPath) };
        let previous = std::mem::take(&mut role.role_id);
        role.role_id = f.string("role_id")?;
        if role.role_id.is_empty() {
            return Err(Error::bad_request("missing role_id"));
        }
        self.save_role(&role, &previous).await?;
        Ok(None)
    }

    // --- secret IDs ------------------------------------------------------------------------

    async fn generate_secret_id(
        &self,
        req: &Request,
        name: &str,
        custom: Option<String>,
    ) -> Result<Option<Response>> {
        let f = Fields::new(&req.data);
        let secret_id = match custom {
            Some(s) => s,
            None => uuid::Uuid::new_v4().to_string(),
        };
        if secret_id.is_empty() {
            return Err(Error::bad_request("missing secret_id"));
        }
        let Some(role) = self.role(name).await? else { return Ok(Some(not_found_role(name))) };
        if !role.bind_secret_id {
            return Err(Error::bad_request("bind_secret_id is not set on the role"));
        }
        let cidr_list = f.comma_strings("cidr_list")?.unwrap_or_default();
        if parse_cidrs(&cidr_list).is_err() {
            return Err(Error::bad_request("failed to validate CIDR blocks"));
        }
        let token_cidrs = f.comma_strings("token_bound_cidrs")?.unwrap_or_default();
        if parse_cidrs(&token_cidrs).is_err() {
            return Err(Error::bad_request("failed to validate token CIDR blocks"));
        }
        let num_uses = match f.int("num_uses")? {
            Some(n) => {
                if n < 0 {
                    return Err(Error::bad_request("num_uses cannot be negative"));
                }
                let r = role.secret_id_num_uses;
                if r > 0 && (n == 0 || n > r) {
                    return Err(Error::bad_request(
                        "num_uses cannot be higher than the role's secret_id_num_uses",
                    ));
                }
                n
            }
            None => role.secret_id_num_uses,
        };
        let ttl = match f.duration_secs("ttl")? {
            Some(t) => {
                let t = t as u64;
                let r = role.secret_id_ttl;
                if r > 0 && (t == 0 || t > r) {
                    return Err(Error::bad_request(
                        "ttl cannot be longer than the role's secret_id_ttl",
                    ));
                }
                t
            }
            None => role.secret_id_ttl,
        };
        let metadata = parse_metadata(&f.string("metadata")?)
            .map_err(|e| Error::bad_request(format!("failed to parse metadata: {e}")))?;

        let now = time::OffsetDateTime::now_utc();
        let created = rfc3339_nanos(now);
        let (expires_at, expiration_time) = if ttl > 0 {
            let exp = now + time::Duration::seconds(ttl as i64);
            (exp.unix_timestamp(), rfc3339_nanos(exp))
        } else {
            (0, String::new())
        };
        let accessor = uuid::Uuid::new_v4().to_string();
        let entry = SecretIdEntry {
            secret_id_accessor: accessor.clone(),
            secret_id_num_uses: num_uses,
            secret_id_ttl: ttl,
            creation_time: created.clone(),
            expires_at,
            expiration_time,
            last_updated_time: created,
            metadata,
            cidr_list,
            token_bound_cidrs: token_cidrs,
        };
        let secret_hmac = self.hmac(&secret_id).await?;
        let entry_key = format!("{}{secret_hmac}", self.secret_prefix(&role.name).await?);
        let _g = self.stripe(&secret_hmac).lock().await;
        if self.view.get(&entry_key).await?.is_some() {
            return Err(multierror("failed to store secret_id: SecretID is already registered"));
        }
        self.view
            .transaction(vec![
                ViewOp::Put(
                    format!("accessor/{}", self.hmac(&accessor).await?),
                    serde_json::to_vec(&AccessorEntry { secret_id_hmac: secret_hmac.clone() })?,
                ),
                ViewOp::Put(entry_key, serde_json::to_vec(&entry)?),
            ])
            .await?;
        Ok(Some(Response::from_value(json!({
            "secret_id": secret_id,
            "secret_id_accessor": accessor,
            "secret_id_num_uses": num_uses,
            "secret_id_ttl": ttl,
        }))))
    }

    async fn list_secret_ids(&self, name: &str) -> Result<Option<Response>> {
        let Some(role) = self.role(name).await? else {
            return Err(Error::bad_request(format!("role \"{name}\" does not exist")));
        };
        let prefix = self.secret_prefix(&role.name).await?;
        let mut keys = Vec::new();
        for h in self.view.list(&prefix).await?.into_iter().take(MAX_SECRET_IDS) {
            if let Some(e) = self.view.get_json::<SecretIdEntry>(&format!("{prefix}{h}")).await? {
                if !e.expired() {
                    keys.push(e.secret_id_accessor);
                }
            }
        }
        if keys.is_empty() {
            return Ok(None);
        }
        keys.sort();
        Ok(Some(Response::from_value(json!({ "keys": keys }))))
    }

    /// The storage key and entry of a secret ID of `role`, if it exists and has not expired.
    async fn find_secret(
        &self,
        role: &str,
        secret_hmac: &str,
    ) -> Result<Option<(String, SecretIdEntry)>> {
        let key = format!("{}{secret_hmac}", self.secret_prefix(role).await?);
        match self.view.get_json::<SecretIdEntry>(&key).await? {
            Some(e) if !e.expired() => Ok(Some((key, e))),
            _ => Ok(None),
        }
    }

    async fn delete_secret(&self, key: &str, entry: &SecretIdEntry) -> Result<()> {
        self.view
            .transaction(vec![
                ViewOp::Delete(format!("accessor/{}", self.hmac(&entry.secret_id_accessor).await?)),
                ViewOp::Delete(key.to_string()),
            ])
            .await
    }

    /// `secret-id/lookup` and `secret-id/destroy`.
    async fn secret_id_op(
        &self,
        req: &Request,
        name: &str,
        destroy: bool,
    ) -> Result<Option<Response>> {
        let f = Fields::new(&req.data);
        let secret_id = f.string("secret_id")?;
        if secret_id.is_empty() {
            return Err(Error::bad_request("missing secret_id"));
        }
        let Some(role) = self.role(name).await? else {
            return Err(multierror(format!("role \"{name}\" does not exist")));
        };
        let secret_hmac = self.hmac(&secret_id).await?;
        let _g = self.stripe(&secret_hmac).lock().await;
        let Some((key, entry)) = self.find_secret(&role.name, &secret_hmac).await? else {
            return Ok(None);
        };
        if destroy {
            self.delete_secret(&key, &entry).await?;
            return Ok(None);
        }
        Ok(Some(Response::data(entry.to_api())))
    }

    /// `secret-id-accessor/lookup` and `secret-id-accessor/destroy`.
    async fn accessor_op(
        &self,
        req: &Request,
        name: &str,
        destroy: bool,
    ) -> Result<Option<Response>> {
        let f = Fields::new(&req.data);
        let accessor = f.string("secret_id_accessor")?;
        if accessor.is_empty() {
            return Err(Error::bad_request("missing secret_id_accessor"));
        }
        let Some(role) = self.role(name).await? else {
            return Err(multierror(format!("role \"{name}\" does not exist")));
        };
        let missing =
            format!("failed to find accessor entry for secret_id_accessor: \"{accessor}\"");
        let acc: Option<AccessorEntry> =
            self.view.get_json(&format!("accessor/{}", self.hmac(&accessor).await?)).await?;
        let found = match acc {
            Some(a) => {
                let _g = self.stripe(&a.secret_id_hmac).lock().await;
                match self.find_secret(&role.name, &a.secret_id_hmac).await? {
                    Some((key, entry)) if destroy => {
                        self.delete_secret(&key, &entry).await?;
                        return Ok(None);
                    }
                    other => other,
                }
            }
            None => None,
        };
        match found {
            Some((_, entry)) => Ok(Some(Response::data(entry.to_api()))),
            None if destroy => Err(multierror(missing)),
            None => Ok(Some(Response::from_value(json!({ "error": missing })).with_status(404))),
        }
    }

    // --- login -----------------------------------------------------------------------------

    async fn login(&self, req: &Request) -> Result<Option<Response>> {
        let f = Fields::new(&req.data);
        let role_id = f.string("role_id")?.trim().to_string();
        if role_id.is_empty() {
            // Vault's alias lookahead fails first, with a bare error.
            return Err(Error::internal("missing role_id"));
        }
        let idx: Option<RoleIdEntry> =
            self.view.get_json(&format!("role_id/{}", self.hmac(&role_id).await?)).await?;
        let Some(idx) = idx else { return Err(Error::bad_request(INVALID_CREDENTIALS)) };
        let Some(role) = self.role(&idx.name).await? else {
            return Err(Error::bad_request(INVALID_CREDENTIALS));
        };

        let mut metadata = BTreeMap::new();
        if role.bind_secret_id {
            let secret_id = f.string("secret_id")?.trim().to_string();
            if secret_id.is_empty() {
                return Err(Error::bad_request("missing secret_id"));
            }
            let secret_hmac = self.hmac(&secret_id).await?;
            let key = format!("{}{secret_hmac}", self.secret_prefix(&role.name).await?);
            let _g = self.stripe(&secret_hmac).lock().await;
            let Some(mut entry) = self.view.get_json::<SecretIdEntry>(&key).await? else {
                return Err(Error::bad_request(INVALID_CREDENTIALS));
            };
            if entry.expired() {
                self.delete_secret(&key, &entry).await?;
                return Err(Error::bad_request(INVALID_CREDENTIALS));
            }
            if !entry.cidr_list.is_empty() {
                return Err(Error::internal(NO_CONNECTION_INFO));
            }
            match entry.secret_id_num_uses {
                n if n <= 0 => {}
                1 => self.delete_secret(&key, &entry).await?,
                _ => {
                    entry.secret_id_num_uses -= 1;
                    entry.last_updated_time = now_rfc3339_nanos().0;
                    self.view.put_json(&key, &entry).await?;
                }
            }
            metadata = entry.metadata;
        }
        if role.secret_id_bound_cidrs.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(Error::internal(NO_CONNECTION_INFO));
        }
        metadata.insert("role_name".to_string(), role.name.clone());
        let auth = role.token.to_auth(&req.mount_point, "", metadata);
        Ok(Some(Response { auth: Some(auth), ..Default::default() }))
    }
}

fn clone_op(op: &ViewOp) -> ViewOp {
    match op {
        ViewOp::Put(k, v) => ViewOp::Put(k.clone(), v.clone()),
        ViewOp::Delete(k) => ViewOp::Delete(k.clone()),
    }
}

#[async_trait]
impl LogicalBackend for AppRole {
    async fn handle(&self, req: &Request, path: &str) -> Result<Option<Response>> {
        let parts: Vec<&str> = path.split('/').collect();
        let op = req.op;
        let unsupported = || Err(Error::UnsupportedOperation);
        match parts.as_slice() {
            ["login"] => match op {
                Operation::Update => self.login(req).await,
                _ => unsupported(),
            },
            ["role"] | ["role", ""] => match op {
                Operation::List => self.list_roles().await,
                _ => unsupported(),
            },
            ["role", name, rest @ ..] if valid_name(name) => match (rest, op) {
                ([], Operation::Read) => self.read_role(name).await,
                ([], Operation::Update) => self.write_role(req, name).await,
                ([], Operation::Delete) => self.delete_role(name).await,
                (["role-id"], Operation::Read) => self.read_role_id(name).await,
                (["role-id"], Operation::Update) => self.write_role_id(req, name).await,
                (["secret-id"] | ["secret-id", ""], Operation::List) => {
                    self.list_secret_ids(name).await
                }
                (["secret-id"], Operation::Update) => {
                    self.generate_secret_id(req, name, None).await
                }
                (["custom-secret-id"], Operation::Update) => {
                    let s = Fields::new(&req.data).string("secret_id")?;
                    self.generate_secret_id(req, name, Some(s)).await
                }
                (["secret-id", "lookup"], Operation::Update) => {
                    self.secret_id_op(req, name, false).await
                }
                (["secret-id", "destroy"], Operation::Update | Operation::Delete) => {
                    self.secret_id_op(req, name, true).await
                }
                (["secret-id-accessor", "lookup"], Operation::Update) => {
                    self.accessor_op(req, name, false).await
                }
                (["secret-id-accessor", "destroy"], Operation::Update | Operation::Delete) => {
                    self.accessor_op(req, name, true).await
                }
                ([] | ["role-id"] | ["secret-id"] | ["custom-secret-id"], _)
                | (["secret-id" | "secret-id-accessor", "lookup" | "destroy"], _) => unsupported(),
                _ => Err(Error::UnsupportedPath),
            },
            _ => Err(Error::UnsupportedPath),
        }
    }

    fn unauthenticated_paths(&self) -> &'static [&'static str] {
        &["login"]
    }

    /// Writes to `role/<name>` create or update depending on whether the role exists.
    async fn existence_check(&self, _req: &Request, path: &str) -> Result<Option<bool>> {
        match path.split_once('/') {
            Some(("role", name)) if valid_name(name) => Ok(Some(self.role(name).await?.is_some())),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests;
