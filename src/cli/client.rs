//! A small client for the Vault HTTP API, configured the way the `vault` CLI is: `VAULT_ADDR`
//! (or `BAO_ADDR`), `VAULT_TOKEN` (or `~/.vault-token`), `VAULT_CACERT`, `VAULT_SKIP_VERIFY`.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Reads a setting from `BAO_*` first, then `VAULT_*`, as OpenBao's CLI does.
pub fn env(name: &str) -> Option<String> {
    std::env::var(format!("BAO_{name}"))
        .ok()
        .or_else(|| std::env::var(format!("VAULT_{name}")).ok())
        .filter(|v| !v.is_empty())
}

pub struct Client {
    http: reqwest::Client,
    addr: String,
    token: Option<String>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: Option<StatusCode>,
    pub errors: Vec<String>,
    /// `METHOD url`, as the Go client prints it.
    pub url: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => {
                writeln!(f, "Error making API request.\n\nURL: {}\nCode: {}. Errors:\n", self.url, s.as_u16())?;
                for e in &self.errors {
                    writeln!(f, "* {e}")?;
                }
                Ok(())
            }
            None => write!(f, "{}", self.errors.join("; ")),
        }
    }
}

/// The token helper's file: `~/.vault-token`, as Vault's default helper.
pub fn token_file() -> Option<std::path::PathBuf> {
    std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".vault-token"))
}

impl Client {
    /// The server address requests go to (`VAULT_ADDR`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn from_env() -> Result<Client, String> {
        let addr = env("ADDR").unwrap_or_else(|| "https://127.0.0.1:8200".to_string());
        // VAULT_TOKEN wins over the token helper's file, as in Vault.
        let token = env("TOKEN").or_else(|| {
            let t = std::fs::read_to_string(token_file()?).ok()?;
            Some(t.trim().to_string()).filter(|t| !t.is_empty())
        });
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(60));
        if env("SKIP_VERIFY").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
            builder = builder.danger_accept_invalid_certs(true);
        }
        if let Some(path) = env("CACERT") {
            let pem = std::fs::read(&path).map_err(|e| format!("reading VAULT_CACERT {path}: {e}"))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| format!("parsing VAULT_CACERT {path}: {e}"))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| format!("building HTTP client: {e}"))?;
        Ok(Client { http, addr: addr.trim_end_matches('/').to_string(), token })
    }

    /// Uses `token` for this client's requests instead of the configured one.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token;
        self
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Sends a request to `/v1/<path>`; returns the status and the JSON body (Null if empty).
    pub async fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(StatusCode, Value), ApiError> {
        let url = format!("{}/v1/{}", self.addr, path.trim_start_matches('/'));
        let shown = format!("{method} {url}");
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| ApiError { status: None, errors: vec![e.to_string()], url: shown.clone() })?;
        let patch = method.as_str() == "PATCH";
        let mut req = self.http.request(method, &url).header("X-Vault-Request", "true");
        if let Some(t) = &self.token {
            req = req.header("X-Vault-Token", t);
        }
        if let Some(b) = body {
            // Vault takes only JSON merge patches on PATCH.
            let ct = if patch { "application/merge-patch+json" } else { "application/json" };
            let bytes = serde_json::to_vec(b).map_err(|e| ApiError { status: None, errors: vec![e.to_string()], url: shown.clone() })?;
            req = req.header("Content-Type", ct).body(bytes);
        }
        let url = shown;
        let resp = req.send().await.map_err(|e| ApiError { status: None, errors: vec![format!("{e}")], url: url.clone() })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ApiError { status: Some(status), errors: vec![e.to_string()], url: url.clone() })?;
        let json: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Ok((status, json))
    }

    /// Like [`request`](Self::request) but turns error statuses into an [`ApiError`].
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ApiError> {
        let url = format!("{method} {}/v1/{}", self.addr, path.trim_start_matches('/'));
        let (status, json) = self.request(method, path, body).await?;
        if status.is_success() {
            return Ok(json);
        }
        Err(api_error(status, &json, url))
    }

    /// A read as the Go client does it: a 404 with data or warnings (a deleted KV version, a
    /// hint about the path) is still an answer; a bare 404 is `None`.
    pub async fn read(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Option<Value>, ApiError> {
        let url = format!("{method} {}/v1/{}", self.addr, path.trim_start_matches('/'));
        let (status, json) = self.request(method, path, body).await?;
        if status.is_success() {
            return Ok(Some(json));
        }
        if status == StatusCode::NOT_FOUND {
            let has_data = json.get("data").is_some_and(|d| !d.is_null());
            let has_warnings = json.get("warnings").and_then(Value::as_array).is_some_and(|w| !w.is_empty());
            return Ok(if has_data || has_warnings { Some(json) } else { None });
        }
        Err(api_error(status, &json, url))
    }
}

fn api_error(status: StatusCode, json: &Value, url: String) -> ApiError {
    let errors = json
        .get("errors")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|e| e.as_str().map(String::from)).collect())
        .unwrap_or_default();
    ApiError { status: Some(status), errors, url }
}
