//! The path-level commands (`read`, `write`, `delete`, `list`) and the token, policy, login,
//! secrets and auth commands, written against Vault's API shapes.

use std::io::BufRead;

use serde_json::{json, Map, Value};

use super::client::{token_file, Client};
use super::output::{self, api_failure, check_format, print_columns, API, OK, USAGE};
use super::{AuthCommand, LoginArgs, PathArgs, PolicyCommand, SecretsCommand, TokenCommand};

fn client_or_exit() -> Result<Client, i32> {
    output::client()
}

macro_rules! try_code {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(code) => return code,
        }
    };
}

fn pairs_or_exit(pairs: &[String]) -> Result<Map<String, Value>, i32> {
    output::parse_pairs(pairs).map_err(|e| {
        eprintln!("Failed to parse K=V data: {e}");
        USAGE
    })
}

/// `read PATH [k=v...]`: the pairs become query parameters, as in Vault.
pub async fn read(a: PathArgs) -> i32 {
    try_code!(check_format(&a.out.format));
    let data = try_code!(pairs_or_exit(&a.pairs));
    let c = try_code!(client_or_exit());
    let mut path = a.path.trim_start_matches('/').to_string();
    if !data.is_empty() {
        let q: Vec<String> = data
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(&output::go_fmt(v))))
            .collect();
        path = format!("{path}?{}", q.join("&"));
    }
    match c.read("GET", &path, None).await {
        Err(e) => api_failure(&format!("reading {}", a.path), &e),
        Ok(None) => {
            eprintln!("No value found at {}", a.path);
            API
        }
        Ok(Some(v)) => output::output_secret(&v, &a.out.format, a.out.field.as_deref()),
    }
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `write PATH k=v...`: prints the answer when there is one, else a success line.
pub async fn write(a: PathArgs) -> i32 {
    try_code!(check_format(&a.out.format));
    let data = try_code!(pairs_or_exit(&a.pairs));
    let c = try_code!(client_or_exit());
    match c.call("PUT", &a.path, Some(&Value::Object(data))).await {
        Err(e) => api_failure(&format!("writing data to {}", a.path), &e),
        Ok(v) if has_content(&v) => {
            output::output_secret(&v, &a.out.format, a.out.field.as_deref())
        }
        Ok(v) => {
            println!("Success! Data written to: {}", a.path);
            output::print_warnings(&v);
            OK
        }
    }
}

fn has_content(v: &Value) -> bool {
    v.get("data").is_some_and(|d| !d.is_null()) || v.get("auth").is_some_and(|d| !d.is_null())
}

pub async fn delete(a: PathArgs) -> i32 {
    let data = try_code!(pairs_or_exit(&a.pairs));
    let c = try_code!(client_or_exit());
    let body = if data.is_empty() { None } else { Some(Value::Object(data)) };
    match c.call("DELETE", &a.path, body.as_ref()).await {
        Err(e) => api_failure(&format!("deleting {}", a.path), &e),
        Ok(_) => {
            println!("Success! Data deleted (if it existed) at: {}", a.path);
            OK
        }
    }
}

pub async fn list(a: PathArgs) -> i32 {
    try_code!(check_format(&a.out.format));
    let c = try_code!(client_or_exit());
    match c.read("LIST", &a.path, None).await {
        Err(e) => api_failure(&format!("listing {}", a.path), &e),
        Ok(Some(v)) if v.pointer("/data/keys").is_some() => {
            super::kv::print_keys(&v, &a.out.format)
        }
        Ok(v) => {
            if let Some(v) = v {
                output::print_warnings(&v);
            }
            eprintln!("No value found at {}", a.path);
            API
        }
    }
}

/// `k=v` flags (`-metadata`) as a JSON object.
fn kv_flags(items: &[String], what: &str) -> Result<Map<String, Value>, i32> {
    let mut m = Map::new();
    for kv in items {
        let Some((k, v)) = kv.split_once('=') else {
            eprintln!("Invalid {what} {kv:?}: format must be key=value");
            return Err(USAGE);
        };
        m.insert(k.to_string(), Value::String(v.to_string()));
    }
    Ok(m)
}

pub async fn token(cmd: TokenCommand) -> i32 {
    match cmd {
        TokenCommand::Create {
            policies,
            ttl,
            explicit_max_ttl,
            period,
            display_name,
            use_limit,
            renewable,
            orphan,
            no_default_policy,
            metadata,
            role,
            kind,
            id,
            out,
        } => {
            try_code!(check_format(&out.format));
            let meta = try_code!(kv_flags(&metadata, "metadata"));
            let c = try_code!(client_or_exit());
            let mut body = Map::new();
            // `-policy=a,b` and repeated `-policy` both work, as in Vault.
            let policies: Vec<String> = policies
                .iter()
                .flat_map(|p| p.split(','))
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect();
            if !policies.is_empty() {
                body.insert("policies".into(), json!(policies));
            }
            for (k, v) in [
                ("ttl", ttl),
                ("explicit_max_ttl", explicit_max_ttl),
                ("period", period),
                ("display_name", display_name),
                ("type", kind),
                ("id", id),
            ] {
                if let Some(v) = v {
                    body.insert(k.into(), Value::String(v));
                }
            }
            if let Some(n) = use_limit {
                body.insert("num_uses".into(), json!(n));
            }
            if let Some(r) = renewable {
                body.insert("renewable".into(), json!(r));
            }
            if no_default_policy {
                body.insert("no_default_policy".into(), json!(true));
            }
            if !meta.is_empty() {
                body.insert("meta".into(), Value::Object(meta));
            }
            let path = match (role, orphan) {
                (Some(r), _) => format!("auth/token/create/{r}"),
                (None, true) => "auth/token/create-orphan".to_string(),
                (None, false) => "auth/token/create".to_string(),
            };
            match c.call("POST", &path, Some(&Value::Object(body))).await {
                Err(e) => api_failure("creating token", &e),
                Ok(v) => output::output_secret(&v, &out.format, out.field.as_deref()),
            }
        }
        TokenCommand::Lookup { accessor, token, out } => {
            try_code!(check_format(&out.format));
            let c = try_code!(client_or_exit());
            let result = match (token, accessor) {
                (None, true) => {
                    eprintln!("Not enough arguments (expected 1, got 0)");
                    return USAGE;
                }
                (None, false) => c.call("GET", "auth/token/lookup-self", None).await,
                (Some(a), true) => {
                    c.call("POST", "auth/token/lookup-accessor", Some(&json!({ "accessor": a })))
                        .await
                }
                (Some(t), false) => {
                    c.call("POST", "auth/token/lookup", Some(&json!({ "token": t }))).await
                }
            };
            match result {
                Err(e) => api_failure("looking up token", &e),
                Ok(v) => output::output_secret(&v, &out.format, out.field.as_deref()),
            }
        }
        TokenCommand::Revoke { accessor, self_, token } => {
            let c = try_code!(client_or_exit());
            let result = match (token, accessor, self_) {
                (_, _, true) => c.call("POST", "auth/token/revoke-self", None).await,
                (Some(a), true, false) => {
                    c.call("POST", "auth/token/revoke-accessor", Some(&json!({ "accessor": a })))
                        .await
                }
                (Some(t), false, false) => {
                    c.call("POST", "auth/token/revoke", Some(&json!({ "token": t }))).await
                }
                (None, _, false) => {
                    eprintln!("Not enough arguments (expected 1, got 0)");
                    return USAGE;
                }
            };
            match result {
                Err(e) => api_failure("revoking token", &e),
                Ok(_) => {
                    println!("Success! Revoked token (if it existed)");
                    OK
                }
            }
        }
    }
}

pub async fn policy(cmd: PolicyCommand) -> i32 {
    match cmd {
        PolicyCommand::Write { name, file } => {
            let text = if file == "-" {
                let mut s = String::new();
                if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
                    eprintln!("Failed to read policy from stdin: {e}");
                    return USAGE;
                }
                s
            } else {
                match std::fs::read_to_string(&file) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("Failed to read policy file {file}: {e}");
                        return USAGE;
                    }
                }
            };
            let c = try_code!(client_or_exit());
            let name = name.trim().to_lowercase();
            match c
                .call("PUT", &format!("sys/policies/acl/{name}"), Some(&json!({ "policy": text })))
                .await
            {
                Err(e) => api_failure("uploading policy", &e),
                Ok(_) => {
                    println!("Success! Uploaded policy: {name}");
                    OK
                }
            }
        }
        PolicyCommand::Read { name, out } => {
            try_code!(check_format(&out.format));
            let c = try_code!(client_or_exit());
            let name = name.trim().to_lowercase();
            match c.read("GET", &format!("sys/policies/acl/{name}"), None).await {
                Err(e) => api_failure("reading policy", &e),
                Ok(None) => {
                    eprintln!("No policy named: {name}");
                    API
                }
                Ok(Some(v)) if out.format == "json" || out.field.is_some() => {
                    output::output_secret(&v, &out.format, out.field.as_deref())
                }
                Ok(Some(v)) => {
                    let text = v.pointer("/data/policy").and_then(Value::as_str).unwrap_or("");
                    println!("{}", text.trim_end());
                    OK
                }
            }
        }
        PolicyCommand::List { out } => {
            try_code!(check_format(&out.format));
            let c = try_code!(client_or_exit());
            match c.read("LIST", "sys/policies/acl", None).await {
                Err(e) => api_failure("listing policies", &e),
                Ok(v) => {
                    let keys = v
                        .as_ref()
                        .and_then(|v| v.pointer("/data/keys"))
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    if out.format == "json" {
                        output::print_json(&Value::Array(keys));
                    } else {
                        for k in keys {
                            println!("{}", output::go_fmt(&k));
                        }
                    }
                    OK
                }
            }
        }
        PolicyCommand::Delete { name } => {
            let c = try_code!(client_or_exit());
            let name = name.trim().to_lowercase();
            match c.call("DELETE", &format!("sys/policies/acl/{name}"), None).await {
                Err(e) => api_failure("deleting", &e),
                Ok(_) => {
                    println!("Success! Deleted policy: {name}");
                    OK
                }
            }
        }
    }
}

/// `login [TOKEN]` or `login -method=userpass username=U password=P`. The token goes to
/// `~/.vault-token` (mode 0600), which later commands read when `VAULT_TOKEN` is unset.
pub async fn login(a: LoginArgs) -> i32 {
    try_code!(check_format(&a.out.format));
    let c = try_code!(client_or_exit());
    let resp = match a.method.as_str() {
        "token" => {
            let token = match a.args.first() {
                Some(t) if t != "-" && !t.contains('=') => t.clone(),
                Some(t) if t.starts_with("token=") => t["token=".len()..].to_string(),
                _ => {
                    eprint!("Token (will be hidden): ");
                    let mut line = String::new();
                    if std::io::stdin().lock().read_line(&mut line).is_err() {
                        eprintln!("Error reading token");
                        return USAGE;
                    }
                    line.trim().to_string()
                }
            };
            if token.is_empty() {
                eprintln!("Error authenticating: no token provided");
                return USAGE;
            }
            let lookup = match c
                .with_token(Some(token.clone()))
                .call("GET", "auth/token/lookup-self", None)
                .await
            {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("Error authenticating: error looking up token: {e}");
                    return API;
                }
            };
            // A token login has no auth block: Vault's CLI builds one from the lookup.
            let d = lookup.get("data").cloned().unwrap_or(Value::Null);
            let policies = d.get("policies").cloned().unwrap_or(json!([]));
            json!({
                "request_id": lookup.get("request_id").cloned().unwrap_or(Value::Null),
                "lease_id": "",
                "lease_duration": 0,
                "renewable": false,
                "data": null,
                "warnings": null,
                "auth": {
                    "client_token": token,
                    "accessor": d.get("accessor").cloned().unwrap_or(Value::Null),
                    "policies": policies,
                    "token_policies": policies,
                    "identity_policies": d.get("identity_policies").cloned().unwrap_or(json!([])),
                    "metadata": d.get("meta").cloned().unwrap_or(Value::Null),
                    "orphan": d.get("orphan").cloned().unwrap_or(Value::Bool(false)),
                    "entity_id": d.get("entity_id").cloned().unwrap_or(json!("")),
                    "lease_duration": d.get("ttl").cloned().unwrap_or(json!(0)),
                    "renewable": d.get("renewable").cloned().unwrap_or(Value::Bool(false)),
                },
            })
        }
        "userpass" | "ldap" | "okta" | "radius" => {
            let mut data = try_code!(pairs_or_exit(&a.args));
            let Some(Value::String(user)) = data.remove("username") else {
                eprintln!("Error authenticating: 'username' must be specified");
                return USAGE;
            };
            if !data.contains_key("password") {
                eprint!("Password (will be hidden): ");
                let mut line = String::new();
                if std::io::stdin().lock().read_line(&mut line).is_err() {
                    eprintln!("Error reading password");
                    return USAGE;
                }
                data.insert(
                    "password".into(),
                    Value::String(line.trim_end_matches(['\r', '\n']).to_string()),
                );
            }
            let mount = a.path.clone().unwrap_or_else(|| a.method.clone());
            let path = format!("auth/{}/login/{user}", mount.trim_matches('/'));
            match c.with_token(None).call("PUT", &path, Some(&Value::Object(data))).await {
                Ok(v) => v,
                Err(e) => return api_failure("authenticating", &e),
            }
        }
        other => {
            eprintln!("Unknown auth method: {other}. Use \"vaultd auth list\" to see the complete list of auth methods. Additionally, some auth methods are only available via the HTTP API.");
            return USAGE;
        }
    };
    let token =
        resp.pointer("/auth/client_token").and_then(Value::as_str).unwrap_or("").to_string();
    if token.is_empty() {
        eprintln!("Error authenticating: the server returned no token");
        return API;
    }
    let stored = !a.no_store && store_token(&token);
    if a.out.field.is_some() || a.out.format == "json" {
        return output::output_secret(&resp, &a.out.format, a.out.field.as_deref());
    }
    if super::client::env("TOKEN").is_some() {
        eprintln!(
            "WARNING! The VAULT_TOKEN environment variable is set! The value of this variable\n\
             will take precedence; if this is unwanted please unset VAULT_TOKEN or update its\n\
             value accordingly.\n"
        );
    }
    if stored {
        println!(
            "Success! You are now authenticated. The token information displayed below is\n\
             already stored in the token helper. You do NOT need to run \"vaultd login\" again.\n\
             Future Vault requests will automatically use this token.\n"
        );
    } else {
        println!(
            "Success! You are now authenticated. The token information displayed below is\n\
             NOT stored in the token helper. Set the VAULT_TOKEN environment variable or pass\n\
             the token with each request.\n"
        );
    }
    output::output_secret(&resp, &a.out.format, None)
}

/// Writes the token helper's file with owner-only permissions. Failure is reported, not fatal:
/// the token is still printed.
fn store_token(token: &str) -> bool {
    let Some(path) = token_file() else {
        eprintln!("Error storing token: HOME is not set");
        return false;
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let result =
        opts.open(&path).and_then(|mut f| std::io::Write::write_all(&mut f, token.as_bytes()));
    if let Err(e) = result {
        eprintln!("Error storing token in {}: {e}", path.display());
        return false;
    }
    true
}

/// The `Path Type Accessor Description [Version]` table of `secrets list` / `auth list`.
fn print_mounts(resp: &Value, with_version: bool) {
    let data = resp.get("data").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut header = vec!["Path", "Type", "Accessor", "Description"];
    if with_version {
        header.push("Version");
    }
    let mut rows: Vec<Vec<String>> = vec![
        header.iter().map(|s| s.to_string()).collect(),
        header.iter().map(|s| "-".repeat(s.len())).collect(),
    ];
    for (path, m) in &data {
        let s = |k: &str| output::cell(m.get(k).unwrap_or(&Value::String(String::new())));
        let mut row = vec![path.clone(), s("type"), s("accessor"), s("description")];
        if with_version {
            row.push(s("plugin_version"));
        }
        rows.push(row);
    }
    print_columns(&rows);
}

fn ttl_config(default: Option<String>, max: Option<String>) -> Map<String, Value> {
    let mut config = Map::new();
    if let Some(d) = default {
        config.insert("default_lease_ttl".into(), Value::String(d));
    }
    if let Some(m) = max {
        config.insert("max_lease_ttl".into(), Value::String(m));
    }
    config
}

pub async fn secrets(cmd: SecretsCommand) -> i32 {
    let c = try_code!(client_or_exit());
    match cmd {
        SecretsCommand::Enable {
            path,
            version,
            description,
            default_lease_ttl,
            max_lease_ttl,
            kind,
        } => {
            let path = format!("{}/", path.unwrap_or_else(|| kind.clone()).trim_matches('/'));
            let mut body = json!({ "type": kind, "description": description.unwrap_or_default() });
            let api = format!("sys/mounts/{}", path.trim_end_matches('/'));
            let config = ttl_config(default_lease_ttl, max_lease_ttl);
            if !config.is_empty() {
                body["config"] = Value::Object(config);
            }
            if let Some(v) = version {
                body["options"] = json!({ "version": v.to_string() });
            }
            match c.call("POST", &api, Some(&body)).await {
                Err(e) => api_failure("enabling", &e),
                Ok(_) => {
                    println!("Success! Enabled the {kind} secrets engine at: {path}");
                    OK
                }
            }
        }
        SecretsCommand::Disable { path } => {
            let path = format!("{}/", path.trim_matches('/'));
            match c
                .call("DELETE", &format!("sys/mounts/{}", path.trim_end_matches('/')), None)
                .await
            {
                Err(e) => api_failure(&format!("disabling secrets engine at {path}"), &e),
                Ok(_) => {
                    println!("Success! Disabled the secrets engine (if it existed) at: {path}");
                    OK
                }
            }
        }
        SecretsCommand::List { out } => {
            try_code!(check_format(&out.format));
            match c.call("GET", "sys/mounts", None).await {
                Err(e) => api_failure("listing secrets engines", &e),
                Ok(v) if out.format == "json" => {
                    output::print_json(v.get("data").unwrap_or(&Value::Null));
                    OK
                }
                Ok(v) => {
                    print_mounts(&v, false);
                    OK
                }
            }
        }
    }
}

pub async fn auth(cmd: AuthCommand) -> i32 {
    let c = try_code!(client_or_exit());
    match cmd {
        AuthCommand::Enable { path, description, kind } => {
            let path = format!("{}/", path.unwrap_or_else(|| kind.clone()).trim_matches('/'));
            let body = json!({ "type": kind, "description": description.unwrap_or_default() });
            match c
                .call("POST", &format!("sys/auth/{}", path.trim_end_matches('/')), Some(&body))
                .await
            {
                Err(e) => api_failure("enabling", &e),
                Ok(_) => {
                    println!("Success! Enabled {kind} auth method at: {path}");
                    OK
                }
            }
        }
        AuthCommand::Disable { path } => {
            let path = format!("{}/", path.trim_matches('/'));
            match c.call("DELETE", &format!("sys/auth/{}", path.trim_end_matches('/')), None).await
            {
                Err(e) => api_failure(&format!("disabling auth method at {path}"), &e),
                Ok(_) => {
                    println!("Success! Disabled the auth method (if it existed) at: {path}");
                    OK
                }
            }
        }
        AuthCommand::List { out } => {
            try_code!(check_format(&out.format));
            match c.call("GET", "sys/auth", None).await {
                Err(e) => api_failure("listing enabled authentications", &e),
                Ok(v) if out.format == "json" => {
                    output::print_json(v.get("data").unwrap_or(&Value::Null));
                    OK
                }
                Ok(v) => {
                    print_mounts(&v, true);
                    OK
                }
            }
        }
    }
}
