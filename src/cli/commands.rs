//! Client commands. Output follows the `vault` CLI: a two-column table by default, or the raw
//! JSON with `-format=json`.

use std::io::BufRead;

use serde_json::{json, Value};

use super::client::Client;
use super::{FormatArgs, OperatorCommand};

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
        OperatorCommand::Raft(cmd) => super::raft::run(cmd).await,
        OperatorCommand::StepDown => match c.call("PUT", "sys/step-down", None).await {
            Ok(_) => {
                println!("Success! Stepped down: {}", c.addr());
                0
            }
            Err(e) => {
                eprintln!("Error stepping down: {e}");
                2
            }
        },
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
