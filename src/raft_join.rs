//! Joining a node to an integrated-storage (Raft) cluster, both sides of the handshake.
//!
//! The flow, Vault's with Shamir seals, simplified:
//! 1. The operator calls `sys/storage/raft/join {leader_api_addr}` on a fresh node (sealed,
//!    uninitialized, empty Raft). It asks the leader for a challenge
//!    (`sys/storage/raft/bootstrap/challenge {server_id}`, unauthenticated) and keeps the answer in
//!    memory as a [`PendingJoin`]. The node now reports itself initialized, with the cluster's
//!    seal configuration, and waits for unseal keys.
//! 2. The operator unseals it with the *cluster's* key shares. The node combines them, unwraps the
//!    cluster's root key from the blob the leader sent, decrypts the challenge with it and sends
//!    the answer (`sys/storage/raft/bootstrap/answer`). Wrong shares fail here, before the leader
//!    is contacted again: 400, the cluster is unchanged, the join stays pending.
//! 3. The leader checks the answer, adds the node as a learner (marked `non_voter` when asked)
//!    and returns the cluster TLS identity. Autopilot (`vaultd_raft`) promotes a node that joined
//!    to vote once it has been healthy for `server_stabilization_time`; a `non_voter` stays a
//!    learner.
//! 4. The node starts its cluster port with that identity, waits until it has applied the leader's
//!    log up to the index the leader reported (it then holds `core/seal-config`, `core/root-key`
//!    and `core/keyring`), and unseals as usual, as a follower.
//!
//! Deviations from Vault, on purpose:
//! - Vault's challenge is a value encrypted with the barrier's keyring, and the joiner reads the
//!   keyring from the answer. Here the leader sends its stored `core/root-key` blob (already
//!   encrypted with the unseal key; anyone who can read a node's disk has it too) and the challenge
//!   encrypted with the root key. Only a holder of the unseal key can answer.
//! - The expected answer is derived (HKDF-SHA256) from a per-process secret and the server id, so
//!   the leader keeps no per-joiner state (Vault's map of pending challenges was a DoS vector). A
//!   leader restart between challenge and answer therefore invalidates the challenge: join again.
//! - `retry` retries the challenge request in the background for a bounded time
//!   ([`RETRY_ATTEMPTS`] × [`RETRY_INTERVAL`]). The `retry_join` stanzas ([`spawn_retry_join`])
//!   run the same bounded loop at startup, trying the leaders in order rather than in parallel.
//!   `auto_join`, client certificates and `leader_tls_servername` are not supported (a warning
//!   says so and the stanza is skipped or the setting ignored).
//! - The leader returns the cluster TLS identity including the CA key; every node presents the
//!   same certificate (see `vaultd_raft::ClusterTls`), as Vault's raft TLS keyring is shared.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use vaultd_raft::{Node, RaftNode, TlsKeyring};

use crate::barrier::{self, RootKey};
use crate::core::Core;
use crate::error::{Error, Result};
use crate::seal::{self, SealConfig, UnsealKey};

/// Where the cluster TLS identity lives, relative to the `core/` view (so `core/raft/tls`,
/// encrypted by the barrier).
pub const TLS_KEY: &str = "raft/tls";
/// Additional data of the challenge ciphertext: a blob made for something else never opens as one.
const CHALLENGE_AAD: &str = "core/raft/join-challenge";
/// Every call to the leader is bounded by this.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a joining node waits to apply the leader's state after being added.
const APPLY_WAIT: Duration = Duration::from_secs(30);
const APPLY_POLL: Duration = Duration::from_millis(50);
/// `retry`: attempts at the challenge request and the pause between them (5 minutes in all).
pub const RETRY_ATTEMPTS: u32 = 150;
pub const RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// Upper bound on the size of a leader's answer we accept (it carries certificates).
const MAX_REMOTE_BODY: usize = 1 << 20;

/// A join that got its challenge and waits for the unseal keys.
#[derive(Clone)]
pub struct PendingJoin {
    leader_api_addr: String,
    leader_ca_cert: Option<String>,
    non_voter: bool,
    pub seal_config: SealConfig,
    /// The leader's `core/root-key`: the root key encrypted with the unseal key.
    root_key_blob: Vec<u8>,
    /// The expected answer, encrypted with the root key.
    challenge: Vec<u8>,
}

impl std::fmt::Debug for PendingJoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingJoin")
            .field("leader_api_addr", &self.leader_api_addr)
            .field("non_voter", &self.non_voter)
            .finish_non_exhaustive()
    }
}

/// `sys/storage/raft/join`'s parameters.
#[derive(Debug, Clone, Default)]
pub struct JoinRequest {
    pub leader_api_addr: String,
    pub leader_ca_cert: Option<String>,
    pub retry: bool,
    pub non_voter: bool,
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(field: &str, s: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| Error::bad_request(format!("{field} is not valid base64")))
}

fn raft_of(core: &Core) -> Result<&Arc<RaftNode>> {
    core.raft().ok_or_else(|| Error::bad_request("raft storage is not in use"))
}

/// The joining side, step 1: fetch a challenge and keep it until the unseal keys arrive.
pub async fn join(core: &Arc<Core>, req: JoinRequest) -> Result<()> {
    let raft = raft_of(core)?;
    if req.leader_api_addr.is_empty() {
        return Err(Error::bad_request("leader_api_addr is required"));
    }
    if core.removed_from_cluster() {
        return Err(Error::bad_request(
            "node was removed from a HA cluster; wipe its data directory before joining again",
        ));
    }
    if !core.is_sealed()
        || core.stored_seal_config().await?.is_some()
        || raft.is_initialized().await
    {
        return Err(Error::bad_request("raft join can only be invoked on an uninitialized node"));
    }
    if !req.retry {
        let pending = fetch_challenge(raft, &req).await?;
        core.set_pending_join(pending);
        return Ok(());
    }
    // Vault's `retry`: answer at once and keep trying in the background, bounded.
    let core = Arc::clone(core);
    tokio::spawn(async move {
        for attempt in 1..=RETRY_ATTEMPTS {
            let Some(raft) = core.raft() else { return };
            match fetch_challenge(raft, &req).await {
                Ok(pending) => {
                    core.set_pending_join(pending);
                    tracing::info!(leader = %req.leader_api_addr, "raft join: challenge received; unseal to finish joining");
                    return;
                }
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "raft join: attempt failed, retrying")
                }
            }
            tokio::time::sleep(RETRY_INTERVAL).await;
        }
        tracing::error!(leader = %req.leader_api_addr, "raft join: giving up after {RETRY_ATTEMPTS} attempts");
    });
    Ok(())
}

/// One leader of a `retry_join` stanza, as a `sys/storage/raft/join` with `retry=true` would
/// name it. The CA certificate file is read at each attempt, so a file provisioned late still works.
#[derive(Debug, Clone)]
pub struct RetryJoinTarget {
    pub leader_api_addr: String,
    pub leader_ca_cert: Option<String>,
    pub leader_ca_cert_file: Option<std::path::PathBuf>,
}

/// Lower-cased and without a trailing slash, so that `http://127.0.0.1:8200/` and
/// `HTTP://127.0.0.1:8200` compare equal.
fn normalize_addr(addr: &str) -> String {
    addr.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// The leaders `retry_join` should try: stanzas with a `leader_api_addr` that is not one of this
/// node's own addresses (`own_addrs`: its `api_addr` and listener URLs). Unsupported settings
/// are reported once here.
pub fn retry_join_targets(
    stanzas: &[crate::config::RetryJoin],
    own_addrs: &[String],
) -> Vec<RetryJoinTarget> {
    let own: Vec<String> = own_addrs.iter().map(|a| normalize_addr(a)).collect();
    let mut out = Vec::new();
    for (i, rj) in stanzas.iter().enumerate() {
        let Some(addr) = rj.leader_api_addr.as_deref() else {
            tracing::warn!(
                stanza = i,
                "retry_join: auto_join is not supported; skipping this stanza"
            );
            continue;
        };
        if own.contains(&normalize_addr(addr)) {
            tracing::info!(leader = %addr, "retry_join: skipping this node's own address");
            continue;
        }
        if rj.leader_client_cert_file.is_some()
            || rj.leader_client_key_file.is_some()
            || rj.leader_client_cert.is_some()
            || rj.leader_client_key.is_some()
            || rj.leader_tls_servername.is_some()
        {
            tracing::warn!(leader = %addr, "retry_join: leader client certificates and leader_tls_servername are not supported and are ignored");
        }
        out.push(RetryJoinTarget {
            leader_api_addr: addr.to_string(),
            leader_ca_cert: rj.leader_ca_cert.clone(),
            leader_ca_cert_file: rj.leader_ca_cert_file.clone(),
        });
    }
    out
}

impl RetryJoinTarget {
    fn request(&self, non_voter: bool) -> Result<JoinRequest> {
        let leader_ca_cert = match (&self.leader_ca_cert, &self.leader_ca_cert_file) {
            (Some(pem), _) => Some(pem.clone()),
            (None, Some(path)) => Some(std::fs::read_to_string(path).map_err(|e| {
                Error::JoinFailed(format!("reading leader_ca_cert_file {}: {e}", path.display()))
            })?),
            (None, None) => None,
        };
        Ok(JoinRequest {
            leader_api_addr: self.leader_api_addr.clone(),
            leader_ca_cert,
            retry: true,
            non_voter,
        })
    }
}

/// Whether a `retry_join` loop still has work: the node is sealed, has no seal configuration of
/// its own, is not a Raft member and has no join pending (the operator may have joined by hand).
async fn wants_join(core: &Core) -> bool {
    let Some(raft) = core.raft() else { return false };
    core.is_sealed()
        && core.pending_join().is_none()
        && !raft.is_initialized().await
        && matches!(core.stored_seal_config().await, Ok(None))
}

/// Vault's `retry_join`: on a fresh raft node, every [`RETRY_INTERVAL`] (at most
/// [`RETRY_ATTEMPTS`] rounds) ask each leader in turn for a join challenge, as
/// `sys/storage/raft/join` with `retry=true` would; the first challenge received wins and the node
/// then waits for the cluster's unseal keys. Stops early once the node is initialized or joined
/// some other way. Returns `None` when there is nothing to do; abort the handle at shutdown.
pub async fn spawn_retry_join(
    core: &Arc<Core>,
    targets: Vec<RetryJoinTarget>,
    non_voter: bool,
) -> Option<tokio::task::JoinHandle<()>> {
    if targets.is_empty() || !wants_join(core).await {
        return None;
    }
    let core = Arc::clone(core);
    Some(tokio::spawn(async move {
        tracing::info!(
            leaders = targets.len(),
            "retry_join: node is uninitialized; trying to join a raft cluster"
        );
        for attempt in 1..=RETRY_ATTEMPTS {
            for target in &targets {
                if !wants_join(&core).await {
                    return;
                }
                let Some(raft) = core.raft() else { return };
                let result = match target.request(non_voter) {
                    Ok(req) => fetch_challenge(raft, &req).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(pending) => {
                        if !wants_join(&core).await {
                            return;
                        }
                        core.set_pending_join(pending);
                        tracing::info!(leader = %target.leader_api_addr, "retry_join: challenge received; unseal with the cluster's keys to finish joining");
                        return;
                    }
                    Err(e) => tracing::warn!(
                        attempt,
                        leader = %target.leader_api_addr,
                        error = %e,
                        "retry_join: attempt failed, retrying"
                    ),
                }
            }
            tokio::time::sleep(RETRY_INTERVAL).await;
        }
        tracing::error!("retry_join: giving up after {RETRY_ATTEMPTS} attempts");
    }))
}

fn http_client(ca_pem: Option<&str>) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().timeout(REMOTE_TIMEOUT).connect_timeout(REMOTE_TIMEOUT);
    if let Some(pem) = ca_pem.filter(|p| !p.is_empty()) {
        let cert = reqwest::Certificate::from_pem(pem.as_bytes())
            .map_err(|e| Error::bad_request(format!("invalid leader_ca_cert: {e}")))?;
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|e| Error::internal(format!("building HTTP client: {e}")))
}

/// POSTs `body` to the leader's `path` and returns its JSON answer, or the leader's error text.
async fn call_leader(leader: &str, ca: Option<&str>, path: &str, body: &Value) -> Result<Value> {
    let url = format!("{}/v1/{path}", leader.trim_end_matches('/'));
    let resp = http_client(ca)?
        .post(&url)
        .json(body)
        .send()
        .await
        .map_err(|e| Error::JoinFailed(format!("calling {url}: {e}")))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| Error::JoinFailed(format!("reading the answer of {url}: {e}")))?;
    if bytes.len() > MAX_REMOTE_BODY {
        return Err(Error::JoinFailed(format!("the answer of {url} is too large")));
    }
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        let errors = v
            .get("errors")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "));
        return Err(Error::JoinFailed(format!("{url}: {status}: {}", errors.unwrap_or_default())));
    }
    Ok(v)
}

#[derive(Deserialize)]
struct ChallengeAnswer {
    challenge: String,
    seal_config: SealConfig,
    root_key: String,
}

async fn fetch_challenge(raft: &RaftNode, req: &JoinRequest) -> Result<PendingJoin> {
    let body = json!({ "server_id": raft.node().node_id });
    let v = call_leader(
        &req.leader_api_addr,
        req.leader_ca_cert.as_deref(),
        "sys/storage/raft/bootstrap/challenge",
        &body,
    )
    .await?;
    let c: ChallengeAnswer = serde_json::from_value(v)
        .map_err(|e| Error::JoinFailed(format!("malformed challenge from the leader: {e}")))?;
    Ok(PendingJoin {
        leader_api_addr: req.leader_api_addr.clone(),
        leader_ca_cert: req.leader_ca_cert.clone(),
        non_voter: req.non_voter,
        seal_config: c.seal_config,
        root_key_blob: unb64("root_key", &c.root_key)?,
        challenge: unb64("challenge", &c.challenge)?,
    })
}

#[derive(Deserialize)]
struct BootstrapAnswer {
    /// A [`TlsKeyring`], or a bare identity from a leader that predates keyrings.
    tls: Value,
    #[serde(default)]
    index: u64,
}

/// The joining side, step 2 (called by the unseal that reached the threshold): prove the keys to
/// the leader, start the cluster port, catch up. Returns the root key to unseal with.
pub async fn finish(core: &Core, pending: &PendingJoin, unseal_key: &UnsealKey) -> Result<RootKey> {
    let raft = raft_of(core)?;
    // Wrong shares stop here, before anything is sent to the leader.
    let root_key = seal::unwrap_root_key(unseal_key, &pending.root_key_blob)?;
    let answer =
        barrier::decrypt_with_raw_key(root_key.expose_secret(), CHALLENGE_AAD, &pending.challenge)
            .map_err(|_| {
                Error::JoinFailed(
                    "the leader's challenge does not open with the cluster's root key".into(),
                )
            })?;
    let node = raft.node();
    let body = json!({
        "server_id": node.node_id,
        "answer": b64(&answer),
        "cluster_addr": node.cluster_addr,
        "api_addr": node.api_addr,
        "raft_id": raft.raft_id(),
        "non_voter": pending.non_voter,
    });
    let v = call_leader(
        &pending.leader_api_addr,
        pending.leader_ca_cert.as_deref(),
        "sys/storage/raft/bootstrap/answer",
        &body,
    )
    .await?;
    let a: BootstrapAnswer = serde_json::from_value(v).map_err(|e| {
        Error::JoinFailed(format!("malformed bootstrap answer from the leader: {e}"))
    })?;
    let bind = core.cluster_bind.ok_or_else(|| {
        Error::JoinFailed("this node has no usable cluster_address to listen on".into())
    })?;
    let tls = TlsKeyring::from_json(a.tls)
        .map_err(|e| Error::JoinFailed(format!("malformed bootstrap answer from the leader: {e}")))?;
    raft.start_cluster_keyring(bind, &tls).await?;

    // The leader replicates its log (or a snapshot) to the new learner; wait until the core
    // entries are here and everything the leader had when it added us is applied.
    let deadline = Instant::now() + APPLY_WAIT;
    loop {
        let applied = raft.status().applied_index >= a.index;
        if applied
            && core.stored_seal_config().await?.is_some()
            && core.physical.get(barrier::KEYRING_PATH).await?.is_some()
        {
            break;
        }
        if Instant::now() >= deadline {
            return Err(Error::JoinFailed(format!(
                "timed out after {APPLY_WAIT:?} waiting to replicate the leader's data"
            )));
        }
        tokio::time::sleep(APPLY_POLL).await;
    }
    tracing::info!(leader = %pending.leader_api_addr, "raft join: replicated the cluster's data; unsealing");
    Ok(root_key)
}

/// The answer a node with `server_id` must return: HKDF-SHA256 of the per-process secret, so
/// that nothing per joiner is stored.
fn expected_answer(secret: &[u8; 32], server_id: &str) -> Result<[u8; 32]> {
    use aws_lc_rs::hkdf;
    struct Len32;
    impl hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"vaultd raft join challenge").extract(secret);
    let info = [server_id.as_bytes()];
    let okm = prk.expand(&info, Len32).map_err(|_| Error::internal("HKDF expand failed"))?;
    let mut out = [0u8; 32];
    okm.fill(&mut out).map_err(|_| Error::internal("HKDF fill failed"))?;
    Ok(out)
}

/// The leader must be initialized, unsealed and lead; a standby names the leader instead. These
/// answers reach the joining node's operator inside its "failed to join raft cluster" error, so
/// they say what to do. Served outside any forwarding: a join is answered by the node asked.
async fn require_leader(core: &Core) -> Result<&Arc<RaftNode>> {
    let raft = raft_of(core)?;
    if core.removed_from_cluster() {
        return Err(Error::bad_request(
            "this node was removed from its cluster and cannot take new members",
        ));
    }
    if core.stored_seal_config().await?.is_none() {
        return Err(Error::bad_request(
            "this node is not initialized: join a node of an initialized cluster",
        ));
    }
    if core.is_sealed() {
        return Err(Error::bad_request("this node is sealed: unseal the leader before joining it"));
    }
    let st = raft.status();
    if !st.is_leader {
        return Err(Error::bad_request(match st.leader {
            Some(n) => format!(
                "this node is not the raft leader; join the leader at {} instead",
                n.api_addr
            ),
            None => "this node is not the raft leader and knows of no leader".to_string(),
        }));
    }
    Ok(raft)
}

fn str_field<'a>(body: &'a serde_json::Map<String, Value>, key: &str) -> &'a str {
    body.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The leader side: `sys/storage/raft/bootstrap/challenge`.
pub async fn challenge(core: &Core, body: &serde_json::Map<String, Value>) -> Result<Value> {
    require_leader(core).await?;
    let server_id = str_field(body, "server_id");
    if server_id.is_empty() {
        return Err(Error::bad_request("no server id provided"));
    }
    let answer = expected_answer(core.join_secret(), server_id)?;
    let challenge = core.barrier.encrypt_with_root_key(CHALLENGE_AAD, &answer)?;
    let config = core.stored_seal_config().await?.ok_or(Error::NotInitialized)?;
    let root_key = core
        .physical
        .get(seal::ROOT_KEY_PATH)
        .await?
        .ok_or_else(|| Error::internal("root key missing from storage"))?;
    Ok(json!({ "challenge": b64(&challenge), "seal_config": config, "root_key": b64(&root_key) }))
}

/// Equal without an early exit, so the time taken says nothing about where the answers differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The leader side: `sys/storage/raft/bootstrap/answer`. Adds the node and hands it the cluster
/// TLS identity.
pub async fn answer(core: &Core, body: &serde_json::Map<String, Value>) -> Result<Value> {
    let raft = require_leader(core).await?;
    let server_id = str_field(body, "server_id");
    if server_id.is_empty() {
        return Err(Error::bad_request("no server id provided"));
    }
    let given = unb64("answer", str_field(body, "answer"))?;
    let expected = expected_answer(core.join_secret(), server_id)?;
    if !constant_time_eq(&given, &expected) {
        return Err(Error::bad_request("invalid answer given"));
    }
    let cluster_addr = str_field(body, "cluster_addr");
    if cluster_addr.is_empty() {
        return Err(Error::bad_request("no cluster_addr provided"));
    }
    let raft_id = match body.get("raft_id") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| Error::bad_request("raft_id must be a positive integer"))?;
    let non_voter = body.get("non_voter").and_then(Value::as_bool).unwrap_or(false);
    // Handed over as stored (a keyring, or the old bare identity): mid-rotation the joiner must
    // trust both CAs like every other node.
    let tls: Value = crate::view::View::new(core.barrier.clone(), "core/")
        .get_json(TLS_KEY)
        .await?
        .ok_or_else(|| Error::internal("the cluster TLS identity is missing from core/raft/tls"))?;

    let node = Node {
        node_id: server_id.to_string(),
        api_addr: str_field(body, "api_addr").to_string(),
        cluster_addr: cluster_addr.to_string(),
        non_voter,
    };
    // A learner either way; autopilot promotes it once stable unless it asked to stay a
    // non-voter (the flag travels in the membership, so a new leader honours it too).
    raft.add_learner(raft_id, node).await?;
    let peers: Vec<Value> = raft
        .configuration()
        .into_iter()
        .map(|p| json!({ "id": p.node_id, "address": p.address, "api_addr": p.api_addr, "voter": p.voter }))
        .collect();
    Ok(json!({ "tls": tls, "peers": peers, "index": raft.status().committed_index }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_join_targets_skip_self_and_auto_join() {
        use crate::config::RetryJoin;
        let stanzas = vec![
            RetryJoin {
                leader_api_addr: Some("http://127.0.0.1:8200/".into()),
                ..Default::default()
            },
            RetryJoin { auto_join: Some("provider=aws".into()), ..Default::default() },
            RetryJoin {
                leader_api_addr: Some("https://b:8200".into()),
                leader_ca_cert: Some("PEM".into()),
                ..Default::default()
            },
        ];
        let t = retry_join_targets(&stanzas, &["HTTP://127.0.0.1:8200".to_string()]);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].leader_api_addr, "https://b:8200");
        let req = t[0].request(true).expect("request");
        assert_eq!(req.leader_ca_cert.as_deref(), Some("PEM"));
        assert!(req.retry && req.non_voter);
        let missing = RetryJoinTarget {
            leader_api_addr: "https://c:8200".into(),
            leader_ca_cert: None,
            leader_ca_cert_file: Some("/nonexistent/ca.pem".into()),
        };
        assert!(missing.request(false).is_err());
    }

    #[test]
    fn answers_depend_on_secret_and_server_id() {
        let a = expected_answer(&[1; 32], "node-a").expect("a");
        assert_eq!(a, expected_answer(&[1; 32], "node-a").expect("a again"));
        assert_ne!(a, expected_answer(&[1; 32], "node-b").expect("b"));
        assert_ne!(a, expected_answer(&[2; 32], "node-a").expect("other secret"));
        assert!(constant_time_eq(&a, &a));
        assert!(!constant_time_eq(&a, &a[..31]));
    }
}
