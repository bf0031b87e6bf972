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

impl Client {
    pub fn from_env() -> Result<Client, String> {
        let addr = env("ADDR").unwrap_or_else(|| "https://127.0.0.1:8200".to_string());
        let token = env("TOKEN").or_else(|| {
            let home = std::env::var("HOME").ok()?;
            std::fs::read_to_string(format!("{home}/.vault-token")).ok().map(|t| t.trim().to_string())
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

    /// Sends a request to `/v1/<path>`; returns the status and the JSON body (Null if empty).
    pub async fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(StatusCode, Value), ApiError> {
        let url = format!("{}/v1/{}", self.addr, path.trim_start_matches('/'));
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| ApiError { status: None, errors: vec![e.to_string()], url: url.clone() })?;
        let mut req = self.http.request(method, &url).header("X-Vault-Request", "true");
        if let Some(t) = &self.token {
            req = req.header("X-Vault-Token", t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| ApiError { status: None, errors: vec![format!("{e}")], url: url.clone() })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ApiError { status: Some(status), errors: vec![e.to_string()], url: url.clone() })?;
        let json: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Ok((status, json))
    }

    /// Like [`request`](Self::request) but turns error statuses into an [`ApiError`].
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ApiError> {
        let url = format!("{}/v1/{}", self.addr, path.trim_start_matches('/'));
        let (status, json) = self.request(method, path, body).await?;
        if status.is_success() {
            return Ok(json);
        }
        let errors = json
            .get("errors")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|e| e.as_str().map(String::from)).collect())
            .unwrap_or_default();
        Err(ApiError { status: Some(status), errors, url })
    }
}
