//! The `userpass` auth method, with Vault's API.
//!
//! Users live at `user/<lowercased name>` in the mount's view (behind the barrier). Passwords
//! are stored as Argon2id PHC strings (Vault uses bcrypt; a bcrypt `password_hash` is refused),
//! hashed and verified on the blocking pool because Argon2 is deliberately slow. A login for an
//! unknown user still verifies against a dummy hash, so the answer takes as long and reads the
//! same ("invalid username or password") whether the user exists or not.

pub mod token_params;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::request::{Operation, Request, Response};
use crate::router::LogicalBackend;
use crate::transit::fields::{multierror, Fields};
use crate::view::View;
use token_params::{parse_cidrs, sanitize_policies, TokenParams};

const INVALID_CREDENTIALS: &str = "invalid username or password";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct UserEntry {
    /// Argon2id PHC string.
    #[serde(default)]
    password_hash: String,
    #[serde(flatten)]
    token: TokenParams,
    /// Legacy fields (`policies`, `ttl`, `max_ttl`, `bound_cidrs`), kept as Vault keeps them.
    #[serde(default)]
    policies: Vec<String>,
    #[serde(default)]
    ttl: u64,
    #[serde(default)]
    max_ttl: u64,
    #[serde(default)]
    bound_cidrs: Vec<String>,
}

/// Hashes a password with Argon2id (the crate's defaults: 19 MiB, 2 passes) on the blocking
/// pool.
async fn hash_password(password: Zeroizing<String>) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let mut salt = [0u8; 16];
        aws_lc_rs::rand::fill(&mut salt).map_err(|_| Error::internal("random source failed"))?;
        let salt = SaltString::encode_b64(&salt)
            .map_err(|e| Error::internal(format!("password hashing failed: {e}")))?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::internal(format!("password hashing failed: {e}")))
    })
    .await
    .map_err(|e| Error::internal(format!("password hashing task failed: {e}")))?
}

/// Verifies `password` against a PHC string on the blocking pool; the comparison of the
/// derived hashes is constant-time (password-hash's `Output` equality).
async fn verify_password(password: Zeroizing<String>, phc: String) -> Result<bool> {
    tokio::task::spawn_blocking(move || {
        let Ok(parsed) = PasswordHash::new(&phc) else { return false };
        Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()
    })
    .await
    .map_err(|e| Error::internal(format!("password check task failed: {e}")))
}

/// A hash of a password nobody knows, checked against when the user does not exist.
async fn dummy_hash() -> Result<String> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    if let Some(h) = DUMMY.get() {
        return Ok(h.clone());
    }
    let h = hash_password(Zeroizing::new(uuid::Uuid::new_v4().to_string())).await?;
    Ok(DUMMY.get_or_init(|| h).clone())
}

/// Vault's `GenericNameRegex` for user names.
fn valid_name(name: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let (Some(first), Some(last)) = (name.chars().next(), name.chars().last()) else {
        return false;
    };
    word(first) && word(last) && name.chars().all(|c| word(c) || matches!(c, '-' | '.' | '@'))
}

/// Vault's `validatePasswordInput`.
fn check_password_input(password: &str, password_hash: &str) -> Result<()> {
    match (password.is_empty(), password_hash.is_empty()) {
        (false, false) => Err(Error::bad_request("only one of password or password_hash may be provided")),
        (true, true) => Err(Error::bad_request("must provide either password or password_hash")),
        (true, false) => Err(Error::bad_request(
            "password_hash is not supported by vaultd (it stores Argon2id hashes); provide password",
        )),
        (false, true) => Ok(()),
    }
}

pub struct Userpass {
    view: View,
}

impl Userpass {
    pub fn new(view: View) -> Self {
        Userpass { view }
    }

    async fn user(&self, name: &str) -> Result<Option<UserEntry>> {
        let mut entry: Option<UserEntry> =
            self.view.get_json(&format!("user/{}", name.to_lowercase())).await?;
        // Vault's upgrade of legacy fields on read.
        if let Some(u) = entry.as_mut() {
            if u.token.token_ttl == 0 && u.ttl > 0 {
                u.token.token_ttl = u.ttl;
            }
            if u.token.token_max_ttl == 0 && u.max_ttl > 0 {
                u.token.token_max_ttl = u.max_ttl;
            }
            if u.token.token_policies.is_empty() && !u.policies.is_empty() {
                u.token.token_policies = u.policies.clone();
            }
            if u.token.token_bound_cidrs.is_empty() && !u.bound_cidrs.is_empty() {
                u.token.token_bound_cidrs = u.bound_cidrs.clone();
            }
        }
        Ok(entry)
    }

    async fn put_user(&self, name: &str, u: &UserEntry) -> Result<()> {
        self.view.put_json(&format!("user/{}", name.to_lowercase()), u).await
    }

    async fn list(&self) -> Result<Option<Response>> {
        let keys = self.view.list("user/").await?;
        if keys.is_empty() {
            return Ok(None);
        }
        Ok(Some(Response::from_value(json!({ "keys": keys }))))
    }

    async fn read(&self, name: &str) -> Result<Option<Response>> {
        let Some(u) = self.user(name).await? else { return Ok(None) };
        let mut data = Map::new();
        u.token.populate(&mut data);
        if u.ttl > 0 {
            data.insert("ttl".into(), json!(u.ttl));
        }
        if u.max_ttl > 0 {
            data.insert("max_ttl".into(), json!(u.max_ttl));
        }
        if !u.policies.is_empty() {
            data.insert("policies".into(), json!(u.token.token_policies));
        }
        if !u.bound_cidrs.is_empty() {
            data.insert("bound_cidrs".into(), json!(u.bound_cidrs));
        }
        Ok(Some(Response::data(data)))
    }

    async fn write(&self, req: &Request, name: &str) -> Result<Option<Response>> {
        let f = Fields::with_existence_check(&req.data);
        let password = Zeroizing::new(f.string("password")?);
        let password_hash = f.string("password_hash")?;
        let existing = self.user(name).await?;
        if existing.is_none() {
            check_password_input(&password, &password_hash)?;
        }
        let mut u = existing.unwrap_or_default();
        u.token.parse(&f)?;
        if !password.is_empty() || !password_hash.is_empty() {
            check_password_input(&password, &password_hash)?;
            u.password_hash = hash_password(password).await?;
        }
        upgrade_legacy(&f, &mut u)?;
        self.put_user(name, &u).await?;
        Ok(None)
    }

    async fn set_password(&self, req: &Request, name: &str) -> Result<Option<Response>> {
        let f = Fields::new(&req.data);
        let Some(mut u) = self.user(name).await? else {
            return Err(multierror("username does not exist"));
        };
        let password = Zeroizing::new(f.string("password")?);
        check_password_input(&password, &f.string("password_hash")?)?;
        u.password_hash = hash_password(password).await?;
        self.put_user(name, &u).await?;
        Ok(None)
    }

    async fn set_policies(&self, req: &Request, name: &str) -> Result<Option<Response>> {
        let f = Fields::new(&req.data);
        let Some(mut u) = self.user(name).await? else {
            return Err(multierror("username does not exist"));
        };
        match f.comma_strings("token_policies")? {
            Some(p) => {
                u.token.token_policies = sanitize_policies(&p, false);
                u.policies =
                    if f.has("policies") { u.token.token_policies.clone() } else { Vec::new() };
            }
            None => {
                if let Some(p) = f.comma_strings("policies")? {
                    u.policies = sanitize_policies(&p, false);
                    u.token.token_policies = u.policies.clone();
                }
            }
        }
        self.put_user(name, &u).await?;
        Ok(None)
    }

    async fn login(&self, req: &Request, name: &str) -> Result<Option<Response>> {
        let f = Fields::new(&req.data);
        let username = name.to_lowercase();
        let password = Zeroizing::new(f.string("password")?);
        if password.is_empty() {
            return Err(Error::internal("missing password"));
        }
        let user = self.user(&username).await?;
        let phc = match &user {
            Some(u) if u.password_hash.is_empty() => {
                return Err(Error::bad_request(INVALID_CREDENTIALS))
            }
            Some(u) => u.password_hash.clone(),
            None => dummy_hash().await?,
        };
        let matched = verify_password(password, phc).await?;
        let Some(user) = user.filter(|_| matched) else {
            return Err(Error::bad_request(INVALID_CREDENTIALS));
        };
        let mut metadata = BTreeMap::new();
        metadata.insert("username".to_string(), username.clone());
        let auth = user.token.to_auth(&req.mount_point, &username, metadata);
        Ok(Some(Response { auth: Some(auth), ..Default::default() }))
    }
}

/// Vault's `tokenutil.UpgradeValue` for the deprecated user fields: a legacy field given alone
/// sets both itself and its `token_` twin; given with the twin it mirrors it; the twin alone
/// clears the legacy field.
fn upgrade_legacy(f: &Fields, u: &mut UserEntry) -> Result<()> {
    if f.has("token_policies") {
        u.policies = if f.has("policies") { u.token.token_policies.clone() } else { Vec::new() };
    } else if let Some(p) = f.comma_strings("policies")? {
        u.policies = sanitize_policies(&p, false);
        u.token.token_policies = u.policies.clone();
    }
    if f.has("token_ttl") {
        u.ttl = if f.has("ttl") { u.token.token_ttl } else { 0 };
    } else if let Some(v) = f.duration_secs("ttl")? {
        u.ttl = v as u64;
        u.token.token_ttl = u.ttl;
    }
    if f.has("token_max_ttl") {
        u.max_ttl = if f.has("max_ttl") { u.token.token_max_ttl } else { 0 };
    } else if let Some(v) = f.duration_secs("max_ttl")? {
        u.max_ttl = v as u64;
        u.token.token_max_ttl = u.max_ttl;
    }
    if f.has("token_bound_cidrs") {
        u.bound_cidrs =
            if f.has("bound_cidrs") { u.token.token_bound_cidrs.clone() } else { Vec::new() };
    } else if let Some(c) = f.comma_strings("bound_cidrs")? {
        u.bound_cidrs = parse_cidrs(&c).map_err(Error::BadRequest)?;
        u.token.token_bound_cidrs = u.bound_cidrs.clone();
    }
    Ok(())
}

#[async_trait]
impl LogicalBackend for Userpass {
    async fn handle(&self, req: &Request, path: &str) -> Result<Option<Response>> {
        let parts: Vec<&str> = path.split('/').collect();
        let op = req.op;
        match parts.as_slice() {
            ["users"] | ["users", ""] => match op {
                Operation::List => self.list().await,
                _ => Err(Error::UnsupportedOperation),
            },
            ["users", name] if valid_name(name) => match op {
                Operation::Read => self.read(name).await,
                Operation::Update => self.write(req, name).await,
                Operation::Delete => {
                    self.view.delete(&format!("user/{}", name.to_lowercase())).await?;
                    Ok(None)
                }
                _ => Err(Error::UnsupportedOperation),
            },
            ["users", name, "password"] if valid_name(name) => match op {
                Operation::Update => self.set_password(req, name).await,
                _ => Err(Error::UnsupportedOperation),
            },
            ["users", name, "policies"] if valid_name(name) => match op {
                Operation::Update => self.set_policies(req, name).await,
                _ => Err(Error::UnsupportedOperation),
            },
            ["login", name] if valid_name(name) => match op {
                Operation::Update => self.login(req, name).await,
                _ => Err(Error::UnsupportedOperation),
            },
            _ => Err(Error::UnsupportedPath),
        }
    }

    fn unauthenticated_paths(&self) -> &'static [&'static str] {
        &["login/*"]
    }

    /// Writes to `users/<name>` create or update depending on whether the user exists.
    async fn existence_check(&self, _req: &Request, path: &str) -> Result<Option<bool>> {
        match path.split_once('/') {
            Some(("users", name)) if valid_name(name) => Ok(Some(self.user(name).await?.is_some())),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests;
