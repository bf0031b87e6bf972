//! The transit secrets engine: encryption as a service, with Vault's API.
//!
//! Layout inside the mount's view (all behind the barrier): `policy/<name>` holds one key as a
//! JSON [`keys::StoredPolicy`] (every version's material, base64). Parsed keys are cached in
//! memory by name ([`keys::Policy`]), so encrypt, decrypt, sign and HMAC never read or parse
//! storage on the hot path. Every change to a key (create, rotate, config, delete) runs under a
//! per-name lock stripe, writes storage, then replaces the cache entry; a cache miss loads under
//! the same stripe so a stale read cannot overwrite a newer entry.
//!
//! Derived keys (`derived=true`, or a first encrypt with a `context`) derive each operation's
//! key with HKDF-SHA256 from the version key and the context, as Vault's `hkdf_sha256` KDF.
//!
//! Not implemented (refused with a clear error): convergent encryption, derived Ed25519 keys,
//! exportable keys
//! and plaintext backups, key types other than AES-GCM, ChaCha20-Poly1305, Ed25519 and ECDSA
//! P-256, SHA3 HMACs and SHA3-224 signatures. `auto_rotate_period` is stored and reported but
//! nothing rotates on a schedule yet.

pub mod fields;
pub mod keys;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::request::{Operation, Request, Response};
use crate::router::LogicalBackend;
use crate::view::View;
use fields::{b64_decode, b64_encode, multierror, Fields};
use keys::{KeyType, Marshaling, OpError, Policy, StoredPolicy};

/// Lock stripes serialising changes per key name.
const STRIPES: usize = 64;
/// Parsed keys kept in memory; the cache is dropped whole when full (entries reload on use).
const CACHE_LIMIT: usize = 10_000;
/// Vault's cap on `random` bytes.
const RANDOM_MAX_BYTES: i64 = 128 * 1024;

pub struct Transit {
    view: View,
    cache: RwLock<HashMap<String, Arc<Policy>>>,
    stripes: Vec<Mutex<()>>,
}

/// Vault's `GenericNameRegex`: `\w(([\w-.@]+)?\w)?`.
fn valid_name(name: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = name.chars();
    let (Some(first), Some(last)) = (chars.next(), name.chars().last()) else { return false };
    word(first) && word(last) && name.chars().all(|c| word(c) || matches!(c, '-' | '.' | '@'))
}

fn user(msg: impl Into<String>) -> Error {
    Error::BadRequest(msg.into())
}

/// A batch item's outcome, as Vault sorts them for the status code.
#[derive(Default)]
struct BatchOutcome {
    user_error: bool,
    internal_error: bool,
    success: bool,
}

impl BatchOutcome {
    fn record(&mut self, e: &OpError) {
        match e {
            OpError::User(_) => self.user_error = true,
            OpError::Internal(_) => self.internal_error = true,
        }
    }

    /// Vault's `batchRequestResponse`: 400 for any user error, else 500 for an internal one; a
    /// valid `partial_failure_response_code` replaces it when some items succeeded.
    fn finish(&self, f: &Fields, mut resp: Response) -> Result<Response> {
        if !self.user_error && !self.internal_error {
            return Ok(resp);
        }
        let mut code: u16 = if self.user_error { 400 } else { 500 };
        if self.success {
            if let Some(c) = f.int("partial_failure_response_code")? {
                if (1..=599).contains(&c) {
                    code = c as u16;
                } else {
                    resp.warnings.push(format!(
                        "invalid HTTP response code override from partial_failure_response_code, reverting to {code}"
                    ));
                }
            }
        }
        Ok(resp.with_status(code))
    }
}

/// One item of an encrypt, decrypt or rewrap request (Vault's `BatchRequestItem`).
#[derive(Default)]
struct CipherItem {
    context: String,
    plaintext: String,
    ciphertext: String,
    key_version: i64,
    associated_data: String,
    reference: String,
    decoded_context: Vec<u8>,
}

fn decode_cipher_items(
    raw: &Value,
    require_plaintext: bool,
    require_ciphertext: bool,
) -> Result<Vec<CipherItem>> {
    let Value::Array(items) = raw else {
        return Err(multierror(format!(
            "failed to parse batch input: source data must be an array or slice, got {}",
            go_type_name(raw)
        )));
    };
    let mut out = Vec::with_capacity(items.len());
    let mut errs = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Value::Object(m) = item else {
            return Err(multierror(format!(
                "failed to parse batch input: [{i}] expected a map, got '{}'",
                go_type_name(item)
            )));
        };
        let mut it = CipherItem::default();
        let string = |key: &str, slot: &mut String, errs: &mut Vec<String>| match m.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => *slot = s.clone(),
            Some(other) => errs.push(format!(
                "'[{i}].{key}' expected type 'string', got unconvertible type '{}'",
                go_type_name(other)
            )),
        };
        string("context", &mut it.context, &mut errs);
        string("associated_data", &mut it.associated_data, &mut errs);
        string("reference", &mut it.reference, &mut errs);
        string("ciphertext", &mut it.ciphertext, &mut errs);
        if require_ciphertext && !m.contains_key("ciphertext") {
            errs.push(format!("'[{i}].ciphertext' missing ciphertext to decrypt"));
        }
        match m.get("plaintext") {
            Some(Value::String(s)) => it.plaintext = s.clone(),
            Some(other) => errs.push(format!(
                "'[{i}].plaintext' expected type 'string', got unconvertible type '{}'",
                go_type_name(other)
            )),
            None if require_plaintext => {
                errs.push(format!("'[{i}].plaintext' missing plaintext to encrypt"))
            }
            None => {}
        }
        match m.get("key_version") {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) => it.key_version = v,
                None => errs.push(format!(
                    "error decoding json.Number into [{i}].key_version: strconv.ParseInt: parsing \"{n}\": invalid syntax"
                )),
            },
            Some(other) => errs.push(format!(
                "'[{i}].key_version' expected type 'int', got unconvertible type '{}'",
                go_type_name(other)
            )),
        }
        out.push(it);
    }
    if !errs.is_empty() {
        return Err(multierror(format!("failed to parse batch input: {}", errs.join("\n"))));
    }
    Ok(out)
}

/// Sign, verify and HMAC batch items are string maps in Vault (a missing key differs from "").
fn decode_string_items(raw: &Value) -> Result<Vec<HashMap<String, String>>> {
    let Value::Array(items) = raw else {
        return Err(multierror(format!(
            "failed to parse batch input: source data must be an array or slice, got {}",
            go_type_name(raw)
        )));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(m) = item else {
            return Err(multierror(format!(
                "failed to parse batch input: '[{i}]' expected a map, got '{}'",
                go_type_name(item)
            )));
        };
        let mut map = HashMap::new();
        for (k, v) in m {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Null => continue,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => if *b { "1".into() } else { "0".into() },
                other => {
                    return Err(multierror(format!(
                        "failed to parse batch input: '[{i}][{k}]' expected type 'string', got unconvertible type '{}'",
                        go_type_name(other)
                    )))
                }
            };
            map.insert(k.clone(), s);
        }
        out.push(map);
    }
    Ok(out)
}

fn go_type_name(v: &Value) -> &'static str {
    match v {
        Value::Object(_) => "map[string]interface {}",
        Value::Array(_) => "[]interface {}",
        Value::String(_) => "string",
        Value::Bool(_) => "bool",
        Value::Number(_) => "json.Number",
        Value::Null => "<nil>",
    }
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Vault's batch input: `batch_input` decoded by `decode` (an empty batch is an error), else the
/// request's single item from `single`. The flag says whether the request was a batch.
fn read_items<'a, T>(
    f: &Fields<'a>,
    decode: impl FnOnce(&'a Value) -> Result<Vec<T>>,
    single: impl FnOnce() -> Result<T>,
) -> Result<(Vec<T>, bool)> {
    match f.raw("batch_input") {
        Some(raw) => {
            let items = decode(raw)?;
            if items.is_empty() {
                return Err(user("missing batch input to process"));
            }
            Ok((items, true))
        }
        None => Ok((vec![single()?], false)),
    }
}

/// A string batch item's `reference`, echoed back in its result.
fn reference(item: &HashMap<String, String>) -> String {
    item.get("reference").cloned().unwrap_or_default()
}

/// Vault's `batch_results`: each item's own fields (from `fields`), then its `reference`.
fn batch_results<R>(
    results: impl IntoIterator<Item = R>,
    references: impl IntoIterator<Item = String>,
    mut fields: impl FnMut(R, &mut Map<String, Value>),
) -> Response {
    let out: Vec<Value> = results
        .into_iter()
        .zip(references)
        .map(|(r, reference)| {
            let mut m = Map::new();
            fields(r, &mut m);
            m.insert("reference".into(), Value::String(reference));
            Value::Object(m)
        })
        .collect();
    Response::from_value(json!({ "batch_results": out }))
}

/// A non-batch request's only result: its response body from `ok`, or its error from `err`.
fn single_result<T, E>(
    result: Option<std::result::Result<T, E>>,
    ok: impl FnOnce(T) -> Value,
    err: impl FnOnce(E) -> Error,
) -> Result<Option<Response>> {
    match result {
        Some(Ok(v)) => Ok(Some(Response::from_value(ok(v)))),
        Some(Err(e)) => Err(err(e)),
        None => Err(Error::internal("no result")),
    }
}

/// An item's base64 `associated_data` (none when empty); Vault fails it as an internal error.
fn decode_aad(associated_data: &str) -> std::result::Result<Option<Vec<u8>>, OpError> {
    if associated_data.is_empty() {
        return Ok(None);
    }
    b64_decode(associated_data).map(Some).map_err(|e| {
        OpError::Internal(format!(
            "unable to get associated_data/additional_data from factory[0]: {e}"
        ))
    })
}

/// An item error as a bare error: internal ones wrapped (500), user ones as 400.
fn op_error(e: OpError) -> Error {
    match e {
        OpError::Internal(m) => multierror(m),
        OpError::User(m) => user(m),
    }
}

impl Transit {
    pub fn new(view: View) -> Self {
        Transit {
            view,
            cache: RwLock::new(HashMap::new()),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    fn stripe(&self, name: &str) -> &Mutex<()> {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
        &self.stripes[(h % STRIPES as u64) as usize]
    }

    fn cached(&self, name: &str) -> Option<Arc<Policy>> {
        self.cache.read().ok()?.get(name).cloned()
    }

    fn cache_put(&self, name: &str, p: Arc<Policy>) {
        if let Ok(mut c) = self.cache.write() {
            if c.len() >= CACHE_LIMIT && !c.contains_key(name) {
                c.clear();
            }
            c.insert(name.to_string(), p);
        }
    }

    fn cache_remove(&self, name: &str) {
        if let Ok(mut c) = self.cache.write() {
            c.remove(name);
        }
    }

    async fn read_stored(&self, name: &str) -> Result<Option<StoredPolicy>> {
        match self.view.get(&format!("policy/{name}")).await? {
            None => Ok(None),
            Some(bytes) => {
                let bytes = Zeroizing::new(bytes);
                StoredPolicy::from_bytes(&bytes).map(Some)
            }
        }
    }

    /// Loads a key from storage into the cache; the caller holds the name's stripe.
    async fn load_locked(&self, name: &str) -> Result<Option<Arc<Policy>>> {
        if let Some(p) = self.cached(name) {
            return Ok(Some(p));
        }
        let Some(stored) = self.read_stored(name).await? else { return Ok(None) };
        let p = Arc::new(Policy::load(stored)?);
        self.cache_put(name, p.clone());
        Ok(Some(p))
    }

    /// The key named `name`, from the cache or storage.
    async fn policy(&self, name: &str) -> Result<Option<Arc<Policy>>> {
        if let Some(p) = self.cached(name) {
            return Ok(Some(p));
        }
        let _g = self.stripe(name).lock().await;
        self.load_locked(name).await
    }

    /// Writes a changed key and swaps it into the cache; the caller holds the stripe.
    async fn save_locked(&self, stored: StoredPolicy) -> Result<Arc<Policy>> {
        let bytes = stored.to_bytes()?;
        self.view.put(&format!("policy/{}", stored.name), &bytes).await?;
        let name = stored.name.clone();
        let p = Arc::new(Policy::load(stored)?);
        self.cache_put(&name, p.clone());
        Ok(p)
    }

    /// Returns the key, creating it with `key_type` if it does not exist (`upserted` = created).
    async fn get_or_create(
        &self,
        name: &str,
        key_type: KeyType,
        derived: bool,
    ) -> Result<(Arc<Policy>, bool)> {
        if let Some(p) = self.cached(name) {
            return Ok((p, false));
        }
        let _g = self.stripe(name).lock().await;
        if let Some(p) = self.load_locked(name).await? {
            return Ok((p, false));
        }
        let mut stored = StoredPolicy::generate(name, key_type)?;
        stored.derived = derived;
        Ok((self.save_locked(stored).await?, true))
    }

    fn key_response(p: &StoredPolicy) -> Response {
        Response::data(p.to_api())
    }

    // --- keys ------------------------------------------------------------------------------

    async fn list_keys(&self) -> Result<Option<Response>> {
        let keys = self.view.list("policy/").await?;
        if keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(Response::from_value(json!({ "keys": keys }))))
    }

    async fn create_key(&self, req: &Request, name: &str) -> Result<Option<Response>> {
        let f = Fields::new(&req.data);
        let derived = f.bool("derived")?.unwrap_or(false);
        let convergent = f.bool("convergent_encryption")?.unwrap_or(false);
        let key_type = f.str("type")?.unwrap_or_else(|| "aes256-gcm96".into());
        let key_size = f.int("key_size")?.unwrap_or(0);
        let exportable = f.bool("exportable")?.unwrap_or(false);
        let backup = f.bool("allow_plaintext_backup")?.unwrap_or(false);
        let auto_rotate = f.duration_secs("auto_rotate_period")?.unwrap_or(0);
        let _ = f.str("context")?;
        if auto_rotate != 0 && auto_rotate < 3600 {
            return Err(user("auto rotate period must be 0 to disable or at least an hour"));
        }
        if !derived && convergent {
            return Err(user("convergent encryption requires derivation to be enabled"));
        }
        let Some(kt) = KeyType::parse(&key_type) else {
            if keys::UNSUPPORTED_TYPES.contains(&key_type.as_str()) {
                return Err(user(format!("key type {key_type} is not supported by vaultd")));
            }
            return Err(user(format!("unknown key type {key_type}")));
        };
        if key_size != 0 {
            return Err(user(format!("key_size is not valid for algorithm {}", kt.name())));
        }
        if f.has("external_key_ref") && !f.string("external_key_ref")?.is_empty() {
            return Err(user("must provide type=external-key to use external_key_ref"));
        }
        if convergent {
            return Err(user("convergent encryption is not supported by vaultd"));
        }
        if derived && kt == KeyType::EcdsaP256 {
            return Err(multierror(format!(
                "key derivation and convergent encryption not supported for keys of type {}",
                kt.name()
            )));
        }
        if derived && !kt.encryption_supported() {
            return Err(user(format!("derived {} keys are not supported by vaultd", kt.name())));
        }
        if exportable {
            return Err(user("exportable keys are not supported by vaultd"));
        }
        if backup {
            return Err(user(
                "plaintext backups (allow_plaintext_backup=true) are not supported by vaultd",
            ));
        }
        let _g = self.stripe(name).lock().await;
        if let Some(p) = self.load_locked(name).await? {
            // Vault answers with the existing key unchanged.
            return Ok(Some(Self::key_response(&p.stored)));
        }
        let mut stored = StoredPolicy::generate(name, kt)?;
        stored.auto_rotate_period = auto_rotate as u64;
        stored.derived = derived;
        let p = self.save_locked(stored).await?;
        Ok(Some(Self::key_response(&p.stored)))
    }

    async fn delete_key(&self, name: &str) -> Result<Option<Response>> {
        let _g = self.stripe(name).lock().await;
        let Some(p) = self.load_locked(name).await? else {
            return Err(user(format!(
                "error deleting policy {name}: could not delete key; not found"
            )));
        };
        if !p.stored.deletion_allowed {
            return Err(user(format!(
                "error deleting policy {name}: deletion is not allowed for this key"
            )));
        }
        self.view.delete(&format!("policy/{name}")).await?;
        self.cache_remove(name);
        Ok(None)
    }

    async fn rotate_key(&self, name: &str) -> Result<Option<Response>> {
        let _g = self.stripe(name).lock().await;
        let Some(p) = self.load_locked(name).await? else { return Err(user("key not found")) };
        let mut stored = p.stored.clone();
        stored.rotate()?;
        let p = self.save_locked(stored).await?;
        Ok(Some(Self::key_response(&p.stored)))
    }

    async fn config_key(&self, req: &Request, name: &str) -> Result<Option<Response>> {
        let f = Fields::new(&req.data);
        let min_dec = f.int("min_decryption_version")?;
        let min_enc = f.int("min_encryption_version")?;
        let deletion_allowed = f.bool("deletion_allowed")?;
        let exportable = f.bool("exportable")?;
        let backup = f.bool("allow_plaintext_backup")?;
        let auto_rotate = f.duration_secs("auto_rotate_period")?;

        let _g = self.stripe(name).lock().await;
        let Some(p) = self.load_locked(name).await? else {
            return Err(user(format!("no existing key named {name} could be found")));
        };
        let mut s = p.stored.clone();
        let mut warnings = Vec::new();
        let mut changed = false;
        if let Some(mut v) = min_dec {
            if v < 0 {
                return Err(user("min decryption version cannot be negative"));
            }
            if v == 0 {
                v = 1;
                warnings.push("since Vault 0.3 (prior to the OpenBao fork), transit key numbering starts at 1; forcing minimum to 1".to_string());
            }
            if v != i64::from(s.min_decryption_version) {
                if v > i64::from(s.latest_version) {
                    return Err(user(format!(
                        "cannot set min decryption version of {v}, latest key version is {}",
                        s.latest_version
                    )));
                }
                s.min_decryption_version = v as u32;
                changed = true;
            }
        }
        if let Some(v) = min_enc {
            if v < 0 {
                return Err(user("min encryption version cannot be negative"));
            }
            if v != i64::from(s.min_encryption_version) {
                if v > i64::from(s.latest_version) {
                    return Err(user(format!(
                        "cannot set min encryption version of {v}, latest key version is {}",
                        s.latest_version
                    )));
                }
                s.min_encryption_version = v as u32;
                changed = true;
            }
        }
        if s.min_encryption_version > 0 && s.min_encryption_version < s.min_decryption_version {
            return Err(user(format!(
                "cannot set min encryption/decryption values; min encryption version of {} must be greater than or equal to min decryption version of {}",
                s.min_encryption_version, s.min_decryption_version
            )));
        }
        if let Some(d) = deletion_allowed {
            if d != s.deletion_allowed {
                s.deletion_allowed = d;
                changed = true;
            }
        }
        if exportable == Some(true) && !s.exportable {
            return Err(user("exportable keys are not supported by vaultd"));
        }
        if backup == Some(true) && !s.allow_plaintext_backup {
            return Err(user(
                "plaintext backups (allow_plaintext_backup=true) are not supported by vaultd",
            ));
        }
        if let Some(secs) = auto_rotate {
            if secs != 0 && secs < 3600 {
                return Err(user("auto rotate period must be 0 to disable or at least an hour"));
            }
            if secs as u64 != s.auto_rotate_period {
                s.auto_rotate_period = secs as u64;
                changed = true;
            }
        }
        let p = if changed { self.save_locked(s).await? } else { p };
        let mut resp = Self::key_response(&p.stored);
        resp.warnings = warnings;
        Ok(Some(resp))
    }

    // --- encrypt, decrypt, rewrap, datakey -------------------------------------------------

    async fn encrypt(&self, req: &Request, name: &str) -> Result<Option<Response>> {
        let f = Fields::with_existence_check(&req.data);
        let (mut items, batch) = read_items(
            &f,
            |raw| decode_cipher_items(raw, true, false),
            || {
                let Some(plaintext) = f.str("plaintext")? else {
                    return Err(user("missing plaintext to encrypt"));
                };
                Ok(CipherItem {
                    plaintext,
                    context: f.string("context")?,
                    key_version: f.int("key_version")?.unwrap_or(0),
                    associated_data: f.string("associated_data")?,
                    ..Default::default()
                })
            },
        )?;
        let n = items.len();
        let mut results: Vec<std::result::Result<(String, i64), OpError>> = Vec::with_capacity(n);
        let mut decoded: Vec<Option<Zeroizing<Vec<u8>>>> = Vec::with_capacity(n);
        let context_set = !items[0].context.is_empty();
        for item in items.iter_mut() {
            if item.context.is_empty() == context_set {
                return Err(user(
                    "context should be set either in all the request blocks or in none",
                ));
            }
            match b64_decode(&item.plaintext) {
                Err(e) => {
                    results.push(Err(OpError::User(e)));
                    decoded.push(None);
                    continue;
                }
                Ok(pt) => decoded.push(Some(Zeroizing::new(pt))),
            }
            if !item.context.is_empty() {
                match b64_decode(&item.context) {
                    Ok(c) => item.decoded_context = c,
                    Err(e) => {
                        results.push(Err(OpError::User(e)));
                        continue;
                    }
                }
            }
            results.push(Ok((String::new(), 0)));
        }

        let p = match self.policy(name).await? {
            Some(p) => p,
            None => {
                // Vault creates the key on first encrypt (upsert).
                let kt = f.str("type")?.unwrap_or_else(|| "aes256-gcm96".into());
                let kt = match kt.as_str() {
                    "ecdsa-p256" | "ecdsa-p384" | "ecdsa-p521" => {
                        return Err(user(format!("key type {kt} not supported for this operation")))
                    }
                    other => match KeyType::parse(other).filter(|t| t.encryption_supported()) {
                        Some(t) => t,
                        None if other == "xchacha20-poly1305" => {
                            return Err(user(format!(
                                "key type {other} is not supported by vaultd"
                            )))
                        }
                        None => return Err(user(format!("unknown key type {kt}"))),
                    },
                };
                if f.bool("convergent_encryption")?.unwrap_or(false) {
                    if !context_set {
                        return Err(user("convergent encryption requires derivation to be enabled, so context is required"));
                    }
                    return Err(user("convergent encryption is not supported by vaultd"));
                }
                // A context on a new key makes it a derived key, as in Vault.
                self.get_or_create(name, kt, context_set).await?.0
            }
        };

        let mut outcome = BatchOutcome::default();
        for (i, item) in items.iter_mut().enumerate() {
            if results[i].is_err() {
                outcome.user_error = true;
                continue;
            }
            let aad = match decode_aad(&item.associated_data) {
                Ok(a) => a,
                Err(err) => {
                    outcome.record(&err);
                    results[i] = Err(err);
                    continue;
                }
            };
            let pt = decoded[i].as_deref().map(Vec::as_slice).unwrap_or_default();
            match p.encrypt(
                item.key_version,
                &item.decoded_context,
                pt,
                aad.as_deref().unwrap_or_default(),
            ) {
                Ok(ct) => {
                    outcome.success = true;
                    let ver = if item.key_version == 0 {
                        i64::from(p.stored.latest_version)
                    } else {
                        item.key_version
                    };
                    results[i] = Ok((ct, ver));
                }
                Err(e) => {
                    outcome.record(&e);
                    results[i] = Err(e);
                }
            }
        }

        if batch {
            let references = items.iter().map(|item| item.reference.clone());
            let resp = batch_results(results, references, |r, m| match r {
                Ok((ct, ver)) => {
                    m.insert("ciphertext".into(), Value::String(ct));
                    m.insert("key_version".into(), json!(ver));
                }
                Err(e) => {
                    m.insert("error".into(), Value::String(e.message().to_string()));
                }
            });
            return outcome.finish(&f, resp).map(Some);
        }
        single_result(
            results.pop(),
            |(ct, ver)| json!({ "ciphertext": ct, "key_version": ver }),
            op_error,
        )
    }

    async fn decrypt(&self, req: &Request, name: &str) -> Result<Option<Response>> {
        let f = Fields::new(&req.data);
        let (mut items, batch) = read_items(
            &f,
            |raw| decode_cipher_items(raw, false, true),
            || {
                let ciphertext = f.string("ciphertext")?;
                if ciphertext.is_empty() {
                    return Err(user("missing ciphertext to decrypt"));
                }
                Ok(CipherItem {
                    ciphertext,
                    context: f.string("context")?,
                    associated_data: f.string("associated_data")?,
                    ..Default::default()
                })
            },
        )?;
        let context_set = !items[0].context.is_empty();
        let mut results: Vec<std::result::Result<Zeroizing<Vec<u8>>, OpError>> =
            Vec::with_capacity(items.len());
        let mut outcome = BatchOutcome::default();
        for item in items.iter_mut() {
            if item.context.is_empty() == context_set {
                return Err(user(
                    "context should be set either in all the request blocks or in none",
                ));
            }
            if item.ciphertext.is_empty() {
                outcome.user_error = true;
                results.push(Err(OpError::user("missing ciphertext to decrypt")));
                continue;
            }
            if !item.context.is_empty() {
                match b64_decode(&item.context) {
                    Ok(c) => item.decoded_context = c,
                    Err(e) => {
                        outcome.user_error = true;
                        results.push(Err(OpError::User(e)));
                        continue;
                    }
                }
            }
            results.push(Ok(Zeroizing::new(Vec::new())));
        }
        let Some(p) = self.policy(name).await? else {
            return Err(user("encryption key not found"));
        };
        for (i, item) in items.iter().enumerate() {
            if results[i].is_err() {
                continue;
            }
            let aad = match decode_aad(&item.associated_data) {
                Ok(a) => a,
                Err(err) => {
                    outcome.record(&err);
                    results[i] = Err(err);
                    continue;
                }
            };
            match p.decrypt(
                &item.ciphertext,
                &item.decoded_context,
                aad.as_deref().unwrap_or_default(),
            ) {
                Ok(pt) => {
                    outcome.success = true;
                    results[i] = Ok(pt);
                }
                Err(e) => {
                    outcome.record(&e);
                    results[i] = Err(e);
                }
            }
        }
        if batch {
            let references = items.iter().map(|item| item.reference.clone());
            let resp = batch_results(results, references, |r, m| match r {
                Ok(pt) => {
                    m.insert("plaintext".into(), Value::String(b64_encode(&pt)));
                }
                Err(e) => {
                    m.insert("plaintext".into(), Value::String(String::new()));
                    m.insert("error".into(), Value::String(e.message().to_string()));
                }
            });
            return outcome.finish(&f, resp).map(Some);
        }
        single_result(results.pop(), |pt| json!({ "plaintext": b64_encode(&pt) }), op_error)
    }

    async fn rewrap(&self, req: &Request, name: &str) -> Result<Option<Response>> {
        let f = Fields::new(&req.data);
        let (mut items, batch) = read_items(
            &f,
            |raw| decode_cipher_items(raw, false, false),
            || {
                let ciphertext = f.string("ciphertext")?;
                if ciphertext.is_empty() {
                    return Err(user("missing ciphertext to decrypt"));
                }
                Ok(CipherItem {
                    ciphertext,
                    context: f.string("context")?,
                    key_version: f.int("key_version")?.unwrap_or(0),
                    ..Default::default()
                })
            },
        )?;
        let context_set = !items[0].context.is_empty();
        let mut results: Vec<std::result::Result<(String, i64), String>> =
            Vec::with_capacity(items.len());
        for item in items.iter_mut() {
            if item.context.is_empty() == context_set {
                return Err(user(
                    "context should be set either in all the request blocks or in none",
                ));
            }
            if item.ciphertext.is_empty() {
                results.push(Err("missing ciphertext to decrypt".into()));
                continue;
            }
            if !item.context.is_empty() {
                match b64_decode(&item.context) {
                    Ok(c) => item.decoded_context = c,
                    Err(e) => {
                        results.push(Err(e));
                        continue;
                    }
                }
            }
            results.push(Ok((String::new(), 0)));
        }
        let Some(p) = self.policy(name).await? else {
            return Err(user("encryption key not found"));
        };
        for (i, item) in items.iter().enumerate() {
            if results[i].is_err() {
                continue;
            }
            let pt = match p.decrypt(&item.ciphertext, &item.decoded_context, &[]) {
                Ok(pt) => pt,
                Err(OpError::User(m)) => {
                    results[i] = Err(m);
                    continue;
                }
                Err(OpError::Internal(m)) => return Err(multierror(m)),
            };
            match p.encrypt(item.key_version, &item.decoded_context, &pt, &[]) {
                Ok(ct) => {
                    let ver = if item.key_version == 0 {
                        i64::from(p.stored.latest_version)
                    } else {
                        item.key_version
                    };
                    results[i] = Ok((ct, ver));
                }
                Err(OpError::User(m)) => results[i] = Err(m),
                Err(OpError::Internal(m)) => return Err(multierror(m)),
            }
        }
        if batch {
            let references = items.iter().map(|item| item.reference.clone());
            let resp = batch_results(results, references, |r, m| match r {
                Ok((ct, ver)) => {
                    m.insert("ciphertext".into(), Value::String(ct));
                    m.insert("key_version".into(), json!(ver));
                }
                Err(e) => {
                    m.insert("error".into(), Value::String(e));
                }
            });
            return Ok(Some(resp));
        }
        single_result(
            results.pop(),
            |(ct, ver)| json!({ "ciphertext": ct, "key_version": ver }),
            user,
        )
    }

    async fn datakey(&self, req: &Request, kind: &str, name: &str) -> Result<Option<Response>> {
        let f = Fields::new(&req.data);
        let ver = f.int("key_version")?.unwrap_or(0);
        let bits = f.int("bits")?.unwrap_or(256);
        let plaintext_allowed = match kind {
            "plaintext" => true,
            "wrapped" => false,
            _ => return Err(user("Invalid path, must be 'plaintext' or 'wrapped'")),
        };
        let context = f.string("context")?;
        let context = if context.is_empty() {
            Vec::new()
        } else {
            b64_decode(&context).map_err(|_| user("failed to base64-decode context"))?
        };
        let Some(p) = self.policy(name).await? else {
            return Err(user("encryption key not found"));
        };
        let len = match bits {
            512 => 64,
            256 => 32,
            128 => 16,
            _ => return Err(user("invalid bit length")),
        };
        let mut key = Zeroizing::new(vec![0u8; len]);
        aws_lc_rs::rand::fill(&mut key).map_err(|_| Error::internal("random source failed"))?;
        let ad = f.string("associated_data")?;
        let aad = if ad.is_empty() {
            None
        } else {
            Some(b64_decode(&ad).map_err(|e| {
                multierror(format!(
                    "unable to get associated_data/additional_data from factory[0]: {e}"
                ))
            })?)
        };
        let ct = match p.encrypt(ver, &context, &key, aad.as_deref().unwrap_or_default()) {
            Ok(ct) => ct,
            Err(OpError::User(m)) => return Err(user(m)),
            Err(OpError::Internal(m)) => return Err(multierror(m)),
        };
        let ver = if ver == 0 { i64::from(p.stored.latest_version) } else { ver };
        let mut data = obj(json!({ "ciphertext": ct, "key_version": ver }));
        if plaintext_allowed {
            data.insert("plaintext".into(), Value::String(b64_encode(&key)));
        }
        Ok(Some(Response::data(data)))
    }

    // --- sign, verify, hmac ----------------------------------------------------------------

    fn hash_name(f: &Fields, url_alg: Option<&str>) -> Result<String> {
        if let Some(a) = url_alg.filter(|a| !a.is_empty()) {
            return Ok(a.to_string());
        }
        let h = f.string("hash_algorithm")?;
        if !h.is_empty() {
            return Ok(h);
        }
        let a = f.string("algorithm")?;
        Ok(if a.is_empty() { "sha2-256".into() } else { a })
    }

    /// Hashes `input` for a key type that signs digests; `None` when the input is used as is.
    fn prepare_input(
        p: &Policy,
        input: Vec<u8>,
        alg: Option<&'static aws_lc_rs::digest::Algorithm>,
        prehashed: bool,
    ) -> Vec<u8> {
        match alg {
            Some(alg) if p.stored.key_type.hash_signature_input() && !prehashed => {
                aws_lc_rs::digest::digest(alg, &input).as_ref().to_vec()
            }
            _ => input,
        }
    }

    async fn sign(
        &self,
        req: &Request,
        name: &str,
        url_alg: Option<&str>,
    ) -> Result<Option<Response>> {
        let f = Fields::new(&req.data);
        let ver = f.int("key_version")?.unwrap_or(0);
        let hash_name = Self::hash_name(&f, url_alg)?;
        let alg = keys::digest_alg(&hash_name)
            .map_err(|_| user(format!("invalid hash algorithm \"{hash_name}\"")))?;
        let marshaling_name = f.string("marshaling_algorithm")?;
        let marshaling = Marshaling::parse(&marshaling_name)
            .ok_or_else(|| user(format!("invalid marshaling type \"{marshaling_name}\"")))?;
        let prehashed = f.bool("prehashed")?.unwrap_or(false);
        let sig_alg = f.string("signature_algorithm")?;
        let Some(p) = self.policy(name).await? else { return Err(user("signing key not found")) };
        let kt = p.stored.key_type;
        if !kt.signing_supported() {
            return Err(user(format!("key type {} does not support signing", kt.name())));
        }
        if hash_name == "none" && (!prehashed || sig_alg != "pkcs1v15") {
            return Err(user(
                "hash_algorithm=none requires both prehashed=true and signature_algorithm=pkcs1v15",
            ));
        }
        if alg.is_none() && kt.hash_signature_input() && !prehashed {
            return Err(user(format!("hash algorithm {hash_name} is not supported by vaultd")));
        }
        let (items, batch) = read_items(&f, decode_string_items, || {
            let mut m = HashMap::new();
            m.insert("input".to_string(), f.string("input")?);
            m.insert("context".to_string(), f.string("context")?);
            Ok(m)
        })?;
        // (signature, version) or (error text, is a bare error rather than an error response).
        let mut results: Vec<std::result::Result<(String, i64), (String, bool)>> =
            Vec::with_capacity(items.len());
        for item in &items {
            let Some(raw) = item.get("input") else {
                results.push(Err(("missing input".into(), false)));
                continue;
            };
            let input = match b64_decode(raw) {
                Ok(i) => i,
                Err(e) => {
                    results.push(Err((format!("unable to decode input as base64: {e}"), false)));
                    continue;
                }
            };
            let input = Self::prepare_input(&p, input, alg, prehashed);
            if let Some(c) = item.get("context").filter(|c| !c.is_empty()) {
                if b64_decode(c).is_err() {
                    results.push(Err(("failed to base64-decode context".into(), false)));
                    continue;
                }
            }
            results
                .push(p.sign(ver, &input, marshaling).map_err(|e| (e.message().to_string(), true)));
        }
        if batch {
            let resp = batch_results(results, items.iter().map(reference), |r, m| match r {
                Ok((sig, v)) => {
                    m.insert("signature".into(), Value::String(sig));
                    m.insert("key_version".into(), json!(v));
                }
                Err((e, _)) => {
                    m.insert("key_version".into(), json!(0));
                    m.insert("error".into(), Value::String(e));
                }
            });
            return Ok(Some(resp));
        }
        single_result(
            results.pop(),
            |(sig, v)| json!({ "key_version": v, "signature": sig }),
            // Vault returns signing failures as a bare error: 500, wrapped.
            |(m, bare)| if bare { multierror(m) } else { user(m) },
        )
    }

    async fn verify(
        &self,
        req: &Request,
        name: &str,
        url_alg: Option<&str>,
    ) -> Result<Option<Response>> {
        let f = Fields::new(&req.data);
        let (items, batch) = read_items(&f, decode_string_items, || {
            let mut m = HashMap::new();
            m.insert("input".to_string(), f.string("input")?);
            if let Some(s) = f.str("signature")? {
                m.insert("signature".to_string(), s);
            }
            if let Some(h) = f.str("hmac")? {
                m.insert("hmac".to_string(), h);
            }
            m.insert("context".to_string(), f.string("context")?);
            Ok(m)
        })?;
        let (mut sig_found, mut hmac_found, mut missing) = (false, false, false);
        for item in &items {
            if item.contains_key("signature") {
                sig_found = true;
            } else if item.contains_key("hmac") {
                hmac_found = true;
            } else {
                missing = true;
            }
        }
        let single = !batch;
        if single && sig_found && hmac_found {
            return Err(user("provide one of 'signature' or 'hmac'"));
        }
        if single && !sig_found && !hmac_found {
            return Err(user("neither a 'signature' nor an 'hmac' were given to verify"));
        }
        if sig_found && hmac_found {
            return Err(user(
                "elements of batch_input must all provide 'signature' or all provide 'hmac'",
            ));
        }
        if missing && sig_found {
            return Err(user("some elements of batch_input are missing 'signature'"));
        }
        if missing && hmac_found {
            return Err(user("some elements of batch_input are missing 'hmac'"));
        }
        if missing {
            return Err(user("no batch_input elements have 'signature' or 'hmac'"));
        }
        if hmac_found {
            return self.hmac_verify(&f, name, url_alg, items, single).await;
        }

        let hash_name = Self::hash_name(&f, url_alg)?;
        let alg = keys::digest_alg(&hash_name)
            .map_err(|_| user(format!("invalid hash algorithm \"{hash_name}\"")))?;
        let marshaling_name = f.string("marshaling_algorithm")?;
        let marshaling = Marshaling::parse(&marshaling_name)
            .ok_or_else(|| user(format!("invalid marshaling type \"{marshaling_name}\"")))?;
        let prehashed = f.bool("prehashed")?.unwrap_or(false);
        let sig_alg = f.string("signature_algorithm")?;
        let Some(p) = self.policy(name).await? else {
            return Err(user("signature verification key not found"));
        };
        let kt = p.stored.key_type;
        if !kt.signing_supported() {
            return Err(user(format!("key type {} does not support verification", kt.name())));
        }
        if hash_name == "none" && (!prehashed || sig_alg != "pkcs1v15") {
            return Err(user(
                "hash_algorithm=none requires both prehashed=true and signature_algorithm=pkcs1v15",
            ));
        }
        if alg.is_none() && kt.hash_signature_input() && !prehashed {
            return Err(user(format!("hash algorithm {hash_name} is not supported by vaultd")));
        }
        let mut results: Vec<std::result::Result<bool, String>> = Vec::with_capacity(items.len());
        for item in &items {
            let Some(raw) = item.get("input") else {
                results.push(Err("missing input".into()));
                continue;
            };
            let input = match b64_decode(raw) {
                Ok(i) => i,
                Err(e) => {
                    results.push(Err(format!("unable to decode input as base64: {e}")));
                    continue;
                }
            };
            let Some(sig) = item.get("signature") else {
                results.push(Err("missing signature".into()));
                continue;
            };
            let input = Self::prepare_input(&p, input, alg, prehashed);
            if let Some(c) = item.get("context").filter(|c| !c.is_empty()) {
                if b64_decode(c).is_err() {
                    results.push(Err("failed to base64-decode context".into()));
                    continue;
                }
            }
            results.push(p.verify(&input, sig, marshaling).map_err(|e| e.message().to_string()));
        }
        if !single {
            let resp = batch_results(results, items.iter().map(reference), |r, m| match r {
                Ok(valid) => {
                    m.insert("valid".into(), Value::Bool(valid));
                }
                Err(e) => {
                    m.insert("valid".into(), Value::Bool(false));
                    m.insert("error".into(), Value::String(e));
                }
            });
            return Ok(Some(resp));
        }
        single_result(results.pop(), |valid| json!({ "valid": valid }), user)
    }

    async fn hmac(
        &self,
        req: &Request,
        name: &str,
        url_alg: Option<&str>,
    ) -> Result<Option<Response>> {
        let f = Fields::new(&req.data);
        let mut ver = f.int("key_version")?.unwrap_or(0);
        let alg_name = match url_alg.filter(|a| !a.is_empty()) {
            Some(a) => a.to_string(),
            None => f.str("algorithm")?.unwrap_or_else(|| "sha2-256".into()),
        };
        let Some(p) = self.policy(name).await? else {
            return Err(user("encryption key not found"));
        };
        let s = &p.stored;
        if ver == 0 {
            ver = i64::from(s.latest_version);
        } else if ver != i64::from(s.latest_version)
            && s.min_encryption_version > 0
            && ver < i64::from(s.min_encryption_version)
        {
            return Err(user("cannot generate HMAC: version is too old (disallowed by policy)"));
        }
        let key = p.hmac_key(ver).map_err(user)?;
        let alg = match keys::hmac_alg(&alg_name) {
            Ok(Some(a)) => a,
            Ok(None) => {
                return Err(user(format!("HMAC algorithm {alg_name} is not supported by vaultd")))
            }
            // Vault formats the (zero) hash type here, not the name.
            Err(keys::UnknownAlgorithm) => return Err(user("unsupported algorithm '\\x00'")),
        };
        let hkey = aws_lc_rs::hmac::Key::new(alg, key);
        let (items, batch) = read_items(&f, decode_string_items, || {
            let Some(input) = f.str("input")? else {
                return Err(user("missing input for HMAC"));
            };
            let mut m = HashMap::new();
            m.insert("input".to_string(), input);
            Ok(m)
        })?;
        let results: Vec<std::result::Result<String, String>> = items
            .iter()
            .map(|item| {
                let raw = item.get("input").ok_or_else(|| "missing input for HMAC".to_string())?;
                let input = b64_decode(raw)
                    .map_err(|e| format!("unable to decode input as base64: {e}"))?;
                let tag = aws_lc_rs::hmac::sign(&hkey, &input);
                Ok(format!("vault:v{ver}:{}", b64_encode(tag.as_ref())))
            })
            .collect();
        if batch {
            let resp = batch_results(results, items.iter().map(reference), |r, m| {
                match r {
                    Ok(h) => m.insert("hmac".into(), Value::String(h)),
                    Err(e) => m.insert("error".into(), Value::String(e)),
                };
            });
            return Ok(Some(resp));
        }
        single_result(results.into_iter().next(), |h| json!({ "hmac": h }), user)
    }

    async fn hmac_verify(
        &self,
        f: &Fields<'_>,
        name: &str,
        url_alg: Option<&str>,
        items: Vec<HashMap<String, String>>,
        single: bool,
    ) -> Result<Option<Response>> {
        let alg_name = Self::hash_name(f, url_alg)?;
        let Some(p) = self.policy(name).await? else {
            return Err(user("encryption key not found"));
        };
        let alg = match keys::hmac_alg(&alg_name) {
            Ok(Some(a)) => a,
            Ok(None) => {
                return Err(user(format!("HMAC algorithm {alg_name} is not supported by vaultd")))
            }
            Err(keys::UnknownAlgorithm) => {
                return Err(user(format!("invalid hash algorithm \"{alg_name}\"")))
            }
        };
        let s = &p.stored;
        let results: Vec<std::result::Result<bool, String>> = items
            .iter()
            .map(|item| {
                let raw = item.get("input").ok_or_else(|| "missing input".to_string())?;
                let input = b64_decode(raw)
                    .map_err(|e| format!("unable to decode input as base64: {e}"))?;
                let given = item.get("hmac").ok_or_else(|| "missing hmac".to_string())?;
                let rest = given
                    .strip_prefix("vault:v")
                    .ok_or_else(|| "invalid HMAC to verify: no prefix".to_string())?;
                let (v, body) = rest
                    .split_once(':')
                    .ok_or_else(|| "invalid HMAC: wrong number of fields".to_string())?;
                let ver = keys::parse_go_int(v).ok_or_else(|| {
                    "invalid HMAC: version number could not be decoded".to_string()
                })?;
                let given_mac = b64_decode(body)
                    .map_err(|e| format!("unable to decode verification HMAC as base64: {e}"))?;
                if ver > i64::from(s.latest_version) {
                    return Err("invalid HMAC: version is too new".into());
                }
                if s.min_decryption_version > 0 && ver < i64::from(s.min_decryption_version) {
                    return Err(
                        "cannot verify HMAC: version is too old (disallowed by policy)".into()
                    );
                }
                let key = p.hmac_key(ver)?;
                let hkey = aws_lc_rs::hmac::Key::new(alg, key);
                Ok(aws_lc_rs::hmac::verify(&hkey, &input, &given_mac).is_ok())
            })
            .collect();
        if !single {
            let resp = batch_results(results, items.iter().map(reference), |r, m| match r {
                // `valid` is omitted when false in Vault's batch HMAC results.
                Ok(true) => {
                    m.insert("valid".into(), Value::Bool(true));
                }
                Ok(false) => {}
                Err(e) => {
                    m.insert("error".into(), Value::String(e));
                }
            });
            return Ok(Some(resp));
        }
        single_result(results.into_iter().next(), |valid| json!({ "valid": valid }), user)
    }

    // --- random ----------------------------------------------------------------------------

    fn random(
        req: &Request,
        source: Option<&str>,
        url_bytes: Option<&str>,
    ) -> Result<Option<Response>> {
        let f = Fields::new(&req.data);
        let is_source = |s: &str| matches!(s, "" | "platform" | "seal" | "all");
        let parse_count = |s: &str| {
            keys::parse_go_int(s)
                .ok_or_else(|| user(format!("error parsing url-set byte count: strconv.Atoi: parsing \"{s}\": invalid syntax")))
        };
        let (source, bytes) = match (source, url_bytes) {
            (None, _) => ("platform".to_string(), f.int("bytes")?.unwrap_or(32)),
            (Some(s), None) if is_source(s) => (s.to_string(), f.int("bytes")?.unwrap_or(32)),
            (Some(s), None) => ("platform".to_string(), parse_count(s)?),
            (Some(s), Some(b)) => (s.to_string(), parse_count(b)?),
        };
        let format = f.str("format")?.unwrap_or_else(|| "base64".into());
        if bytes < 1 {
            return Err(user("'bytes' cannot be less than 1"));
        }
        if bytes > RANDOM_MAX_BYTES {
            return Err(user(format!("'bytes' should be less than {RANDOM_MAX_BYTES}")));
        }
        if format != "hex" && format != "base64" {
            return Err(user(format!(
                "unsupported encoding format \"{format}\"; must be \"hex\" or \"base64\""
            )));
        }
        let mut warnings = Vec::new();
        match source.as_str() {
            "" | "platform" | "all" => {}
            "seal" => warnings.push("no seal/entropy augmentation available, using platform entropy source".to_string()),
            other => {
                return Err(user(format!(
                    "unsupported entropy source \"{other}\"; must be \"platform\" or \"seal\", or \"all\""
                )))
            }
        }
        let mut buf = vec![0u8; bytes as usize];
        aws_lc_rs::rand::fill(&mut buf).map_err(|_| Error::internal("random source failed"))?;
        let out = if format == "hex" { hex::encode(&buf) } else { b64_encode(&buf) };
        let mut resp = Response::from_value(json!({ "random_bytes": out }));
        resp.warnings = warnings;
        Ok(Some(resp))
    }
}

#[async_trait]
impl LogicalBackend for Transit {
    async fn handle(&self, req: &Request, path: &str) -> Result<Option<Response>> {
        let parts: Vec<&str> = path.split('/').collect();
        let op = req.op;
        let named = |i: usize| parts.get(i).copied().filter(|n| valid_name(n));
        match parts.as_slice() {
            ["keys"] | ["keys", ""] => match op {
                Operation::List => self.list_keys().await,
                _ => Err(Error::UnsupportedOperation),
            },
            ["keys", _] if named(1).is_some() => match op {
                Operation::Read => {
                    Ok(self.policy(parts[1]).await?.map(|p| Self::key_response(&p.stored)))
                }
                Operation::Update => self.create_key(req, parts[1]).await,
                Operation::Delete => self.delete_key(parts[1]).await,
                _ => Err(Error::UnsupportedOperation),
            },
            ["keys", _, "rotate"] if named(1).is_some() => match op {
                Operation::Update => self.rotate_key(parts[1]).await,
                _ => Err(Error::UnsupportedOperation),
            },
            ["keys", _, "config"] if named(1).is_some() => match op {
                Operation::Update => self.config_key(req, parts[1]).await,
                _ => Err(Error::UnsupportedOperation),
            },
            [verb @ ("encrypt" | "decrypt" | "rewrap"), _] if named(1).is_some() => {
                match (op, *verb) {
                    (Operation::Update, "encrypt") => self.encrypt(req, parts[1]).await,
                    (Operation::Update, "decrypt") => self.decrypt(req, parts[1]).await,
                    (Operation::Update, _) => self.rewrap(req, parts[1]).await,
                    _ => Err(Error::UnsupportedOperation),
                }
            }
            ["datakey", kind, _]
                if named(2).is_some()
                    && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                match op {
                    Operation::Update => self.datakey(req, kind, parts[2]).await,
                    _ => Err(Error::UnsupportedOperation),
                }
            }
            [verb @ ("sign" | "verify" | "hmac"), _, rest @ ..]
                if named(1).is_some() && rest.len() <= 1 =>
            {
                let alg = rest.first().copied();
                if alg.is_some_and(|a| a.is_empty()) {
                    return Err(Error::UnsupportedPath);
                }
                match (op, *verb) {
                    (Operation::Update, "sign") => self.sign(req, parts[1], alg).await,
                    (Operation::Update, "verify") => self.verify(req, parts[1], alg).await,
                    (Operation::Update, _) => self.hmac(req, parts[1], alg).await,
                    _ => Err(Error::UnsupportedOperation),
                }
            }
            ["random", rest @ ..] if rest.len() <= 2 && rest.iter().all(|s| !s.is_empty()) => {
                match op {
                    Operation::Update => {
                        Self::random(req, rest.first().copied(), rest.get(1).copied())
                    }
                    _ => Err(Error::UnsupportedOperation),
                }
            }
            _ => Err(Error::UnsupportedPath),
        }
    }

    /// `encrypt/<name>` creates the key when it is missing, so a policy may grant `create`
    /// without `update` (Vault's existence check on that path).
    async fn existence_check(&self, _req: &Request, path: &str) -> Result<Option<bool>> {
        match path.split_once('/') {
            Some(("encrypt", name)) if valid_name(name) => {
                Ok(Some(self.policy(name).await?.is_some()))
            }
            _ => Ok(None),
        }
    }
}
