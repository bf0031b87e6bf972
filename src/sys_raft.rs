//! `sys/storage/raft/*` behind a token (the join handshake is in `raft_join` and `http::raft`):
//! the peer list (`configuration`) and `remove-peer`.

use serde_json::{Value, json};

use crate::core::Core;
use crate::error::{Error, Result};
use crate::request::{Operation, Request, Response};

pub async fn handle(core: &Core, req: &Request, path: &str) -> Result<Option<Response>> {
    let raft = core.raft().ok_or_else(|| Error::bad_request("raft storage is not in use"))?;
    match (path, req.op) {
        ("configuration", Operation::Read) => {
            let servers: Vec<Value> = raft
                .configuration()
                .into_iter()
                .map(|p| {
                    json!({
                        "node_id": p.node_id,
                        "address": p.address,
                        "leader": p.leader,
                        "protocol_version": "3",
                        "voter": p.voter,
                    })
                })
                .collect();
            let index = raft.status().committed_index;
            Ok(Some(Response::from_value(
                json!({ "config": { "servers": servers, "index": index } }),
            )))
        }
        ("remove-peer", Operation::Update) => {
            let id = req.data.get("server_id").and_then(Value::as_str).unwrap_or("");
            if id.is_empty() {
                return Err(Error::bad_request("no server id provided"));
            }
            let peer =
                raft.configuration().into_iter().find(|p| p.node_id == id).ok_or_else(|| {
                    Error::bad_request(format!("no raft peer with server id {id:?}"))
                })?;
            raft.remove_node(peer.raft_id).await?;
            tracing::info!(server_id = id, "removed raft peer");
            Ok(None)
        }
        ("configuration" | "remove-peer", _) => Err(Error::UnsupportedOperation),
        _ => Err(Error::UnsupportedPath),
    }
}
