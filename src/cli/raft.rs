//! `operator raft join | list-peers | remove-peer` (and the `join` alias), as Vault's CLI.

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
