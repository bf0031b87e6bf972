//! `operator raft join | list-peers | remove-peer | autopilot (state | get-config | set-config)`
//! (and the `join` alias), as Vault's CLI.

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::output::{self, print_columns, print_json, print_table};

#[derive(Args, Debug, Clone)]
pub struct JoinArgs {
    /// Keep retrying the join in the background until the leader answers (bounded).
    #[arg(long)]
    pub retry: bool,
    /// Join as a non-voter (a learner that never counts for quorum).
    #[arg(long = "non-voter")]
    pub non_voter: bool,
    /// PEM of the CA that signed the leader's API certificate (or @file).
    #[arg(long = "leader-ca-cert")]
    pub leader_ca_cert: Option<String>,
    /// The leader's API address, e.g. https://10.0.0.1:8200.
    pub leader_api_addr: String,
}

#[derive(Subcommand, Debug)]
pub enum RaftCommand {
    /// Join this (sealed, uninitialized) node to the cluster led by LEADER_API_ADDR.
    Join(JoinArgs),
    /// List the cluster's peers.
    ListPeers {
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Remove a peer by its node id.
    RemovePeer { server_id: String },
    /// Save or restore a snapshot of the cluster's data.
    #[command(subcommand)]
    Snapshot(super::raft_snapshot::SnapshotCommand),
    /// Autopilot: cluster health and its configuration.
    #[command(subcommand)]
    Autopilot(AutopilotCommand),
}

#[derive(Subcommand, Debug)]
pub enum AutopilotCommand {
    /// Show autopilot's view of the cluster's health.
    State {
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Show the autopilot configuration.
    GetConfig {
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Change the autopilot configuration; settings not given keep their value.
    SetConfig(SetConfigArgs),
}

#[derive(Args, Debug, Clone)]
pub struct SetConfigArgs {
    #[arg(long = "cleanup-dead-servers", num_args = 0..=1, default_missing_value = "true")]
    pub cleanup_dead_servers: Option<bool>,
    #[arg(long = "last-contact-threshold")]
    pub last_contact_threshold: Option<String>,
    #[arg(long = "dead-server-last-contact-threshold")]
    pub dead_server_last_contact_threshold: Option<String>,
    #[arg(long = "max-trailing-logs")]
    pub max_trailing_logs: Option<u64>,
    #[arg(long = "min-quorum")]
    pub min_quorum: Option<u64>,
    #[arg(long = "server-stabilization-time")]
    pub server_stabilization_time: Option<String>,
}

pub async fn run(cmd: RaftCommand) -> i32 {
    if let RaftCommand::Snapshot(cmd) = cmd {
        return super::raft_snapshot::run(cmd).await;
    }
    let c = match output::client() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cmd {
        RaftCommand::Join(a) => {
            let ca = match a.leader_ca_cert.as_deref() {
                Some(s) if s.starts_with('@') => match std::fs::read_to_string(&s[1..]) {
                    Ok(pem) => Some(pem),
                    Err(e) => {
                        eprintln!("Error reading {}: {e}", &s[1..]);
                        return output::USAGE;
                    }
                },
                other => other.map(String::from),
            };
            let body = json!({
                "leader_api_addr": a.leader_api_addr,
                "leader_ca_cert": ca.unwrap_or_default(),
                "retry": a.retry,
                "non_voter": a.non_voter,
            });
            match c.call("POST", "sys/storage/raft/join", Some(&body)).await {
                Ok(v) => {
                    print_table(&[(
                        "Joined".into(),
                        v.get("joined").map(output::cell).unwrap_or_else(|| "false".into()),
                    )]);
                    output::OK
                }
                Err(e) => {
                    eprintln!("Error joining the node to the Raft cluster: {e}");
                    output::API
                }
            }
        }
        RaftCommand::ListPeers { format } => {
            if let Err(code) = output::check_format(&format) {
                return code;
            }
            let v = match c.call("GET", "sys/storage/raft/configuration", None).await {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("Error reading the raft cluster configuration: {e}");
                    return output::API;
                }
            };
            if format == "json" {
                print_json(&v);
                return output::OK;
            }
            let servers = v
                .pointer("/data/config/servers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut rows =
                vec![vec!["Node".to_string(), "Address".into(), "State".into(), "Voter".into()]];
            rows.push(vec!["----".to_string(), "-------".into(), "-----".into(), "-----".into()]);
            for s in servers {
                let g = |k: &str| s.get(k).map(output::cell).unwrap_or_default();
                let state =
                    if s.get("leader") == Some(&Value::Bool(true)) { "leader" } else { "follower" };
                rows.push(vec![g("node_id"), g("address"), state.into(), g("voter")]);
            }
            print_columns(&rows);
            output::OK
        }
        RaftCommand::Snapshot(_) => output::USAGE,
        RaftCommand::Autopilot(cmd) => autopilot(&c, cmd).await,
        RaftCommand::RemovePeer { server_id } => {
            match c
                .call(
                    "POST",
                    "sys/storage/raft/remove-peer",
                    Some(&json!({ "server_id": server_id })),
                )
                .await
            {
                Ok(_) => {
                    println!("Peer removed successfully!");
                    output::OK
                }
                Err(e) => {
                    eprintln!("Error removing the peer from raft cluster: {e}");
                    output::API
                }
            }
        }
    }
}

async fn autopilot(c: &super::client::Client, cmd: AutopilotCommand) -> i32 {
    match cmd {
        AutopilotCommand::State { format } => {
            if let Err(code) = output::check_format(&format) {
                return code;
            }
            let v = match c.call("GET", "sys/storage/raft/autopilot/state", None).await {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("Error checking autopilot state: {e}");
                    return output::API;
                }
            };
            let data = v.get("data").cloned().unwrap_or(Value::Null);
            if format == "json" {
                print_json(&state_go_json(&data));
            } else {
                print!("{}", state_text(&data));
            }
            output::OK
        }
        AutopilotCommand::GetConfig { format } => {
            if let Err(code) = output::check_format(&format) {
                return code;
            }
            let v = match c.call("GET", "sys/storage/raft/autopilot/configuration", None).await {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("Error reading the autopilot configuration: {e}");
                    return output::API;
                }
            };
            let data = v.get("data").cloned().unwrap_or(Value::Null);
            if format == "json" {
                print_json(&data);
                return output::OK;
            }
            let g = |k: &str| data.get(k).map(output::cell).unwrap_or_default();
            print_table(&[
                ("Cleanup Dead Servers".into(), g("cleanup_dead_servers")),
                ("Last Contact Threshold".into(), g("last_contact_threshold")),
                ("Dead Server Last Contact Threshold".into(), g("dead_server_last_contact_threshold")),
                ("Server Stabilization Time".into(), g("server_stabilization_time")),
                ("Min Quorum".into(), g("min_quorum")),
                ("Max Trailing Logs".into(), g("max_trailing_logs")),
            ]);
            output::OK
        }
        AutopilotCommand::SetConfig(a) => {
            let mut body = serde_json::Map::new();
            if let Some(v) = a.cleanup_dead_servers {
                body.insert("cleanup_dead_servers".into(), json!(v));
            }
            for (k, v) in [
                ("last_contact_threshold", &a.last_contact_threshold),
                ("dead_server_last_contact_threshold", &a.dead_server_last_contact_threshold),
                ("server_stabilization_time", &a.server_stabilization_time),
            ] {
                if let Some(v) = v {
                    body.insert(k.into(), json!(v));
                }
            }
            for (k, v) in [("max_trailing_logs", a.max_trailing_logs), ("min_quorum", a.min_quorum)] {
                if let Some(v) = v {
                    body.insert(k.into(), json!(v));
                }
            }
            let body = Value::Object(body);
            match c.call("POST", "sys/storage/raft/autopilot/configuration", Some(&body)).await {
                Ok(_) => output::OK,
                Err(e) => {
                    eprintln!("Error updating the autopilot configuration: {e}");
                    output::API
                }
            }
        }
    }
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect())
        .unwrap_or_default()
}

/// Vault's text output of `operator raft autopilot state`.
pub fn state_text(d: &Value) -> String {
    let g = |v: &Value, k: &str| v.get(k).map(output::go_fmt).unwrap_or_default();
    let mut out = String::new();
    out.push_str(&format!("Healthy:                         {}\n", g(d, "healthy")));
    out.push_str(&format!("Failure Tolerance:               {}\n", g(d, "failure_tolerance")));
    out.push_str(&format!("Leader:                          {}\n", g(d, "leader")));
    out.push_str("Voters:\n");
    for n in names(&d["voters"]) {
        out.push_str(&format!("   {n}\n"));
    }
    let non_voters = names(&d["non_voters"]);
    if !non_voters.is_empty() {
        out.push_str("Non Voters:\n");
        for n in non_voters {
            out.push_str(&format!("   {n}\n"));
        }
    }
    out.push_str("Servers:\n");
    if let Some(servers) = d.get("servers").and_then(Value::as_object) {
        for (id, s) in servers {
            out.push_str(&format!("   {id}\n"));
            for (label, key) in [
                ("Name", "name"),
                ("Address", "address"),
                ("Status", "status"),
                ("Node Status", "node_status"),
                ("Healthy", "healthy"),
                ("Last Contact", "last_contact"),
                ("Last Term", "last_term"),
                ("Last Index", "last_index"),
                ("Version", "version"),
                ("Node Type", "node_type"),
            ] {
                out.push_str(&format!("      {:<19}{}\n", format!("{label}:"), g(s, key)));
            }
        }
    }
    out.push('\n');
    out
}

/// `-format=json`: Vault prints its Go struct (`AutopilotState`), field names capitalised.
pub fn state_go_json(d: &Value) -> Value {
    let mut servers = serde_json::Map::new();
    if let Some(all) = d.get("servers").and_then(Value::as_object) {
        for (id, s) in all {
            let g = |k: &str| s.get(k).cloned().unwrap_or(Value::Null);
            servers.insert(
                id.clone(),
                json!({
                    "ID": g("id"),
                    "Name": g("name"),
                    "Address": g("address"),
                    "NodeStatus": g("node_status"),
                    "LastContact": g("last_contact"),
                    "LastTerm": g("last_term"),
                    "LastIndex": g("last_index"),
                    "Healthy": g("healthy"),
                    "StableSince": g("stable_since"),
                    "Status": g("status"),
                    "Version": g("version"),
                    "UpgradeVersion": "",
                    "NodeType": g("node_type"),
                }),
            );
        }
    }
    let non_voters = d.get("non_voters").cloned().unwrap_or(Value::Null);
    json!({
        "Healthy": d.get("healthy").cloned().unwrap_or(Value::Bool(false)),
        "FailureTolerance": d.get("failure_tolerance").cloned().unwrap_or(json!(0)),
        "Servers": servers,
        "Leader": d.get("leader").cloned().unwrap_or(Value::Null),
        "Voters": d.get("voters").cloned().unwrap_or(Value::Null),
        "NonVoters": non_voters,
        "Upgrade": Value::Null,
        "OptimisticFailureTolerance": d.get("failure_tolerance").cloned().unwrap_or(json!(0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_text_matches_vaults_layout() {
        let d = json!({
            "healthy": true, "failure_tolerance": 0, "leader": "bao1", "voters": ["bao1"],
            "servers": {"bao1": {"id": "bao1", "name": "bao1", "address": "127.0.0.1:18411",
                "status": "leader", "node_status": "alive", "healthy": true, "last_contact": "0s",
                "last_term": 3, "last_index": 29, "version": "2.7.2", "node_type": "voter"}}
        });
        let want = [
            "Healthy:                         true",
            "Failure Tolerance:               0",
            "Leader:                          bao1",
            "Voters:",
            "   bao1",
            "Servers:",
            "   bao1",
            "      Name:              bao1",
            "      Address:           127.0.0.1:18411",
            "      Status:            leader",
            "      Node Status:       alive",
            "      Healthy:           true",
            "      Last Contact:      0s",
            "      Last Term:         3",
            "      Last Index:        29",
            "      Version:           2.7.2",
            "      Node Type:         voter",
            "",
            "",
        ]
        .join("\n");
        assert_eq!(state_text(&d), want);
    }
}
