//! Client commands. Output follows the `vault` CLI: a two-column table by default, or the raw
//! JSON with `-format=json`.

use std::io::BufRead;

use serde_json::{json, Map, Value};

use super::client::Client;
use super::{FormatArgs, KvCommand, OperatorCommand};

fn client() -> Result<Client, i32> {
    Client::from_env().map_err(|e| {
        eprintln!("Error: {e}");
        1
    })
}

fn print_table(rows: &[(String, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(3).max(3);
    println!("{:<width$}    Value", "Key");
    println!("{:<width$}    -----", "---");
    for (k, v) in rows {
        println!("{k:<width$}    {v}");
    }
}

fn value_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "n/a".into(),
        other => other.to_string(),
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub async fn operator(cmd: OperatorCommand) -> i32 {
    let c = match client() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cmd {
        OperatorCommand::Init { key_shares, key_threshold, status, fmt } => {
            if status {
                return match c.call("GET", "sys/init", None).await {
                    Ok(v) if v.get("initialized") == Some(&Value::Bool(true)) => {
                        println!("Vault is initialized");
                        0
                    }
                    Ok(_) => {
                        println!("Vault is not initialized");
                        2
                    }
                    Err(e) => {
                        eprintln!("Error checking init status: {e}");
                        1
                    }
                };
            }
            let body = json!({ "secret_shares": key_shares, "secret_threshold": key_threshold });
            match c.call("PUT", "sys/init", Some(&body)).await {
                Err(e) => {
                    eprintln!("Error initializing: {e}");
                    2
                }
                Ok(v) if fmt.format == "json" => {
                    let mut out = v.clone();
                    if let Value::Object(o) = &mut out {
                        o.insert("unseal_keys_b64".into(), v.get("keys_base64").cloned().unwrap_or(Value::Null));
                        o.insert("unseal_keys_hex".into(), v.get("keys").cloned().unwrap_or(Value::Null));
                        o.insert("unseal_shares".into(), json!(key_shares));
                        o.insert("unseal_threshold".into(), json!(key_threshold));
                    }
                    print_json(&out);
                    0
                }
                Ok(v) => {
                    let keys = v.get("keys_base64").and_then(Value::as_array).cloned().unwrap_or_default();
                    for (i, k) in keys.iter().enumerate() {
                        println!("Unseal Key {}: {}", i + 1, value_str(k));
                    }
                    println!();
                    println!("Initial Root Token: {}", v.get("root_token").map(value_str).unwrap_or_default());
                    println!();
                    println!(
                        "Vault initialized with {key_shares} key shares and a key threshold of {key_threshold}. Please\n\
                         securely distribute the key shares printed above. When the Vault is re-sealed,\n\
                         restarted, or stopped, you must supply at least {key_threshold} of these keys to unseal it\n\
                         before it can start servicing requests."
                    );
                    0
                }
            }
        }
        OperatorCommand::Unseal { key, reset, fmt } => {
            let body = if reset {
                json!({ "reset": true })
            } else {
                let key = match key {
                    Some(k) if k != "-" => k,
                    _ => {
                        eprint!("Unseal Key (will be hidden): ");
                        let mut line = String::new();
                        if std::io::stdin().lock().read_line(&mut line).is_err() {
                            eprintln!("Error reading unseal key");
                            return 1;
                        }
                        line.trim().to_string()
                    }
                };
                json!({ "key": key })
            };
            match c.call("PUT", "sys/unseal", Some(&body)).await {
                Err(e) => {
                    eprintln!("Error unsealing: {e}");
                    2
                }
                Ok(v) => {
                    print_seal_status(&v, None, &fmt);
                    0
                }
            }
        }
        OperatorCommand::Seal => match c.call("PUT", "sys/seal", None).await {
            Ok(_) => {
                println!("Success! Vault is sealed.");
                0
            }
            Err(e) => {
                eprintln!("Error sealing: {e}");
                2
            }
        },
    }
}

fn print_seal_status(st: &Value, leader: Option<&Value>, fmt: &FormatArgs) {
    if fmt.format == "json" {
        let mut out = st.clone();
        if let (Some(Value::Object(l)), Value::Object(o)) = (leader, &mut out) {
            for (k, v) in l {
                o.insert(k.clone(), v.clone());
            }
        }
        print_json(&out);
        return;
    }
    let g = |k: &str| st.get(k).map(value_str).unwrap_or_default();
    let sealed = st.get("sealed") == Some(&Value::Bool(true));
    let mut rows = vec![
        ("Seal Type".to_string(), g("type")),
        ("Initialized".into(), g("initialized")),
        ("Sealed".into(), g("sealed")),
        ("Total Shares".into(), g("n")),
        ("Threshold".into(), g("t")),
    ];
    if sealed {
        rows.push(("Unseal Progress".into(), format!("{}/{}", g("progress"), g("t"))));
        rows.push(("Unseal Nonce".into(), if g("nonce").is_empty() { "n/a".into() } else { g("nonce") }));
    }
    rows.push(("Version".into(), g("version")));
    rows.push(("Build Date".into(), g("build_date")));
    rows.push(("Storage Type".into(), g("storage_type")));
    if !sealed {
        rows.push(("Cluster Name".into(), g("cluster_name")));
        rows.push(("Cluster ID".into(), g("cluster_id")));
    }
    match leader {
        Some(l) if l.get("ha_enabled") == Some(&Value::Bool(true)) => {
            rows.push(("HA Enabled".into(), "true".into()));
            let lg = |k: &str| l.get(k).map(value_str).unwrap_or_default();
            let cluster = lg("leader_cluster_address");
            rows.push(("HA Cluster".into(), if cluster.is_empty() { "n/a".into() } else { cluster }));
            let active = l.get("is_self") == Some(&Value::Bool(true));
            rows.push(("HA Mode".into(), if active { "active" } else { "standby" }.into()));
            if active {
                rows.push(("Active Since".into(), lg("active_time")));
            } else {
                let addr = lg("leader_address");
                rows.push(("Active Node Address".into(), if addr.is_empty() { "<none>".into() } else { addr }));
            }
            if l.get("performance_standby") == Some(&Value::Bool(true)) {
                rows.push(("Performance Standby Node".into(), "true".into()));
            }
            if l.get("raft_committed_index").is_some() {
                rows.push(("Raft Committed Index".into(), lg("raft_committed_index")));
                rows.push(("Raft Applied Index".into(), lg("raft_applied_index")));
            }
        }
        Some(_) => rows.push(("HA Enabled".into(), "false".into())),
        None if sealed => rows.push(("HA Enabled".into(), "true".into())),
        None => {}
    }
    print_table(&rows);
}

/// `status`: exit 0 unsealed, 2 sealed, 1 on error (Vault's codes).
pub async fn status(fmt: &FormatArgs) -> i32 {
    let c = match client() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let st = match c.call("GET", "sys/seal-status", None).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("Error checking seal status: {e}");
            return 1;
        }
    };
    let sealed = st.get("sealed") == Some(&Value::Bool(true));
    let leader = if sealed { None } else { c.call("GET", "sys/leader", None).await.ok() };
    print_seal_status(&st, leader.as_ref(), fmt);
    if sealed {
        2
    } else {
        0
    }
}

/// Splits `secret/foo` into mount and path using the server's preflight endpoint, as the
/// `vault kv` commands do; returns (mount path with slash, path within mount, kv version).
async fn kv_preflight(c: &Client, mount: Option<&str>, path: &str) -> Result<(String, String, u8), String> {
    let full = match mount {
        Some(m) => format!("{}/{}", m.trim_matches('/'), path.trim_start_matches('/')),
        None => path.trim_start_matches('/').to_string(),
    };
    let v = c.call("GET", &format!("sys/internal/ui/mounts/{full}"), None).await.map_err(|e| e.to_string())?;
    let data = v.get("data").cloned().unwrap_or(Value::Null);
    let mount_path = data.get("path").and_then(Value::as_str).unwrap_or("").to_string();
    let version = data
        .get("options")
        .and_then(|o| o.get("version"))
        .and_then(Value::as_str)
        .map_or(1, |s| if s == "2" { 2 } else { 1 });
    let rest = full.strip_prefix(&mount_path).unwrap_or(&full).to_string();
    Ok((mount_path, rest, version))
}

fn parse_pairs(pairs: &[String]) -> Result<Map<String, Value>, String> {
    let mut m = Map::new();
    for p in pairs {
        let (k, v) = p.split_once('=').ok_or_else(|| format!("invalid key/value pair {p:?}: expected key=value"))?;
        let v = if let Some(file) = v.strip_prefix('@') {
            std::fs::read_to_string(file).map_err(|e| format!("reading {file}: {e}"))?
        } else if v == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| e.to_string())?;
            s
        } else {
            v.to_string()
        };
        m.insert(k.to_string(), Value::String(v));
    }
    Ok(m)
}

pub async fn kv(cmd: KvCommand) -> i32 {
    let c = match client() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cmd {
        KvCommand::Put { mount, cas, path, pairs, fmt } => {
            let data = match parse_pairs(&pairs) {
                Ok(d) if !d.is_empty() => d,
                Ok(_) => {
                    eprintln!("Must supply data");
                    return 1;
                }
                Err(e) => {
                    eprintln!("Failed to parse K=V data: {e}");
                    return 1;
                }
            };
            let (m, rest, version) = match kv_preflight(&c, mount.as_deref(), &path).await {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("{e}");
                    return 2;
                }
            };
            let (api_path, body) = if version == 2 {
                let mut body = json!({ "data": data });
                if let Some(cas) = cas {
                    body["options"] = json!({ "cas": cas });
                }
                (format!("{m}data/{rest}"), body)
            } else {
                (format!("{m}{rest}"), Value::Object(data))
            };
            match c.call("PUT", &api_path, Some(&body)).await {
                Err(e) => {
                    eprintln!("Error writing data to {api_path}: {e}");
                    2
                }
                Ok(v) if fmt.format == "json" => {
                    print_json(&v);
                    0
                }
                Ok(v) => {
                    if version == 2 {
                        let title = format!("{} Secret Path {}", "=".repeat(4), "=".repeat(4));
                        println!("{title}\n{}\n", api_path);
                        println!("======= Metadata =======");
                        let rows: Vec<(String, String)> = v
                            .get("data")
                            .and_then(Value::as_object)
                            .map(|o| o.iter().map(|(k, v)| (k.clone(), value_str(v))).collect())
                            .unwrap_or_default();
                        print_table(&rows);
                    } else {
                        println!("Success! Data written to: {api_path}");
                    }
                    0
                }
            }
        }
        KvCommand::Get { mount, version, field, path, fmt } => {
            let (m, rest, kv_version) = match kv_preflight(&c, mount.as_deref(), &path).await {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("{e}");
                    return 2;
                }
            };
            let mut api_path = if kv_version == 2 { format!("{m}data/{rest}") } else { format!("{m}{rest}") };
            if let Some(v) = version {
                api_path.push_str(&format!("?version={v}"));
            }
            let v = match c.request("GET", &api_path, None).await {
                Ok((s, v)) if s.as_u16() == 404 && v.get("data").is_none_or(Value::is_null) => {
                    eprintln!("No value found at {api_path}");
                    return 2;
                }
                Ok((s, v)) if s.is_success() || s.as_u16() == 404 => v,
                Ok((_, v)) => {
                    eprintln!("Error reading {api_path}: {}", v);
                    return 2;
                }
                Err(e) => {
                    eprintln!("Error reading {api_path}: {e}");
                    return 2;
                }
            };
            let data = if kv_version == 2 { v.pointer("/data/data").cloned() } else { v.get("data").cloned() };
            let data = data.unwrap_or(Value::Null);
            if let Some(f) = field {
                return match data.get(&f) {
                    Some(val) => {
                        println!("{}", value_str(val));
                        0
                    }
                    None => {
                        eprintln!("Field \"{f}\" not present in secret");
                        1
                    }
                };
            }
            if fmt.format == "json" {
                print_json(&v);
                return 0;
            }
            if kv_version == 2 {
                println!("======= Metadata =======");
                let rows: Vec<(String, String)> = v
                    .pointer("/data/metadata")
                    .and_then(Value::as_object)
                    .map(|o| o.iter().map(|(k, v)| (k.clone(), value_str(v))).collect())
                    .unwrap_or_default();
                print_table(&rows);
                println!("\n====== Data ======");
            }
            let rows: Vec<(String, String)> =
                data.as_object().map(|o| o.iter().map(|(k, v)| (k.clone(), value_str(v))).collect()).unwrap_or_default();
            print_table(&rows);
            0
        }
    }
}
