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
//!   `auto_join` is not supported (a warning says so and the stanza is skipped).
//!   `leader_client_cert[_file]`/`leader_client_key[_file]` are presented to the leader's API
//!   listener and `leader_tls_servername` replaces the URL's host for SNI and the certificate
//!   check ([`LeaderTls`]), in stanzas and in `sys/storage/raft/join` alike.
//! - The leader returns the cluster TLS keyring (`vaultd_raft::TlsKeyring`) including the CA
//!   key; every node presents the same certificate, as Vault's raft TLS keyring is shared.

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
    leader_tls: LeaderTls,
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

/// How a joining node talks TLS to the leader's API listener (Vault's `leader_ca_cert`,
/// `leader_client_cert`, `leader_client_key`, `leader_tls_servername`). `Debug` hides the key.
#[derive(Clone, Default)]
pub struct LeaderTls {
    pub ca_cert: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<zeroize::Zeroizing<String>>,
    /// The name to send (SNI) and to check the leader's certificate against, instead of the
    /// host of `leader_api_addr`.
    pub servername: Option<String>,
}

impl std::fmt::Debug for LeaderTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderTls")
            .field("ca_cert", &self.ca_cert.is_some())
            .field("client_cert", &self.client_cert.is_some())
            .field("client_key", &self.client_key.as_ref().map(|_| "<redacted>"))
            .field("servername", &self.servername)
            .finish()
    }
}

/// `sys/storage/raft/join`'s parameters.
#[derive(Debug, Clone, Default)]
pub struct JoinRequest {
    pub leader_api_addr: String,
    pub leader_tls: LeaderTls,
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
    pub leader_client_cert: Option<String>,
    pub leader_client_cert_file: Option<std::path::PathBuf>,
    pub leader_client_key: Option<String>,
    pub leader_client_key_file: Option<std::path::PathBuf>,
    pub leader_tls_servername: Option<String>,
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
        out.push(RetryJoinTarget {
            leader_api_addr: addr.to_string(),
            leader_ca_cert: rj.leader_ca_cert.clone(),
            leader_ca_cert_file: rj.leader_ca_cert_file.clone(),
            leader_client_cert: rj.leader_client_cert.clone(),
            leader_client_cert_file: rj.leader_client_cert_file.clone(),
            leader_client_key: rj.leader_client_key.clone(),
            leader_client_key_file: rj.leader_client_key_file.clone(),
            leader_tls_servername: rj.leader_tls_servername.clone(),
        });
    }
    out
}

impl RetryJoinTarget {
    fn request(&self, non_voter: bool) -> Result<JoinRequest> {
        // Inline PEM wins over the file, as in Vault.
        let pem = |inline: &Option<String>, file: &Option<std::path::PathBuf>, what: &str| {
            match (inline, file) {
                (Some(pem), _) => Ok(Some(pem.clone())),
                (None, Some(path)) => std::fs::read_to_string(path).map(Some).map_err(|e| {
                    Error::JoinFailed(format!("reading {what} {}: {e}", path.display()))
                }),
                (None, None) => Ok(None),
            }
        };
        let leader_tls = LeaderTls {
            ca_cert: pem(&self.leader_ca_cert, &self.leader_ca_cert_file, "leader_ca_cert_file")?,
            client_cert: pem(
                &self.leader_client_cert,
                &self.leader_client_cert_file,
                "leader_client_cert_file",
            )?,
            client_key: pem(
                &self.leader_client_key,
                &self.leader_client_key_file,
                "leader_client_key_file",
            )?
            .map(zeroize::Zeroizing::new),
            servername: self.leader_tls_servername.clone().filter(|s| !s.is_empty()),
        };
        Ok(JoinRequest {
            leader_api_addr: self.leader_api_addr.clone(),
            leader_tls,
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

/// The client for `url` on the leader, and the URL to call: with `leader_tls_servername` the
/// URL names that server instead, resolved to the original host's address, so that SNI and the
/// certificate check use the server name while the connection goes where `leader_api_addr` says.
async fn http_client(tls: &LeaderTls, url: &str) -> Result<(reqwest::Client, String)> {
    let mut b = reqwest::Client::builder().timeout(REMOTE_TIMEOUT).connect_timeout(REMOTE_TIMEOUT);
    if let Some(pem) = tls.ca_cert.as_deref().filter(|p| !p.is_empty()) {
        let cert = reqwest::Certificate::from_pem(pem.as_bytes())
            .map_err(|e| Error::bad_request(format!("invalid leader_ca_cert: {e}")))?;
        b = b.add_root_certificate(cert);
    }
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let pem = zeroize::Zeroizing::new(format!("{cert}\n{}", key.as_str()));
            let identity = reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| {
                Error::bad_request(format!("invalid leader_client_cert or leader_client_key: {e}"))
            })?;
            b = b.identity(identity);
        }
        (None, None) => {}
        _ => {
            return Err(Error::bad_request(
                "leader_client_cert and leader_client_key must be given together",
            ))
        }
    }
    let mut url = url.to_string();
    if let Some(name) = &tls.servername {
        let mut parsed = reqwest::Url::parse(&url)
            .map_err(|e| Error::bad_request(format!("invalid leader_api_addr: {e}")))?;
        let host = parsed.host_str().unwrap_or("").trim_matches(['[', ']']).to_string();
        let port = parsed.port_or_known_default().unwrap_or(8200);
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| Error::JoinFailed(format!("resolving {host}: {e}")))?
            .next()
            .ok_or_else(|| Error::JoinFailed(format!("{host} resolves to no address")))?;
        parsed
            .set_host(Some(name))
            .map_err(|e| Error::bad_request(format!("invalid leader_tls_servername: {e}")))?;
        b = b.resolve(name, addr);
        url = parsed.to_string();
    }
    let client = b.build().map_err(|e| Error::internal(format!("building HTTP client: {e}")))?;
    Ok((client, url))
}

/// POSTs `body` to the leader's `path` and returns its JSON answer, or the leader's error text.
async fn call_leader(leader: &str, tls: &LeaderTls, path: &str, body: &Value) -> Result<Value> {
    let url = format!("{}/v1/{path}", leader.trim_end_matches('/'));
    let (client, url) = http_client(tls, &url).await?;
    let resp = client
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
        &req.leader_tls,
        "sys/storage/raft/bootstrap/challenge",
        &body,
    )
    .await?;
    let c: ChallengeAnswer = serde_json::from_value(v)
        .map_err(|e| Error::JoinFailed(format!("malformed challenge from the leader: {e}")))?;
    Ok(PendingJoin {
        leader_api_addr: req.leader_api_addr.clone(),
        leader_tls: req.leader_tls.clone(),
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
        &pending.leader_tls,
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
        assert_eq!(req.leader_tls.ca_cert.as_deref(), Some("PEM"));
        assert!(req.retry && req.non_voter);
        let missing = RetryJoinTarget {
            leader_api_addr: "https://c:8200".into(),
            leader_ca_cert: None,
            leader_ca_cert_file: Some("/nonexistent/ca.pem".into()),
            leader_client_cert: None,
            leader_client_cert_file: None,
            leader_client_key: None,
            leader_client_key_file: None,
            leader_tls_servername: None,
        };
        assert!(missing.request(false).is_err());
    }

    /// A leader stand-in: an HTTPS listener that requires a client certificate from the
    /// cluster CA and answers `{}` to at most `conns` connections.
    async fn mtls_leader(tls: &vaultd_raft::ClusterTls, conns: usize) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls.server_config().expect("srv")));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            for _ in 0..conns {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let Ok(mut stream) = acceptor.accept(tcp).await else { continue };
                let mut buf = vec![0u8; 16 * 1024];
                let mut got = 0;
                while got < buf.len() {
                    match stream.read(&mut buf[got..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                    let text = String::from_utf8_lossy(&buf[..got]);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                            .unwrap_or(0);
                        if got >= end + 4 + len {
                            break;
                        }
                    }
                }
                let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn leader_client_certificate_and_server_name_reach_the_leader() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let cluster = vaultd_raft::ClusterTls::generate().expect("tls");
        let addr = mtls_leader(&cluster, 4).await;
        let leader = format!("https://{addr}");
        let full = LeaderTls {
            ca_cert: Some(cluster.ca_cert_pem.clone()),
            client_cert: Some(cluster.cert_pem.clone()),
            client_key: Some(zeroize::Zeroizing::new(cluster.key_pem.clone())),
            servername: Some(vaultd_raft::CLUSTER_SERVER_NAME.into()),
        };
        let shown = format!("{full:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        let body = json!({});
        let v = call_leader(&leader, &full, "sys/x", &body).await.expect("mutual TLS with the server name");
        assert_eq!(v, json!({}));

        // The certificate names vaultd-cluster, not 127.0.0.1: without the server name it fails.
        let no_name = LeaderTls { servername: None, ..full.clone() };
        assert!(call_leader(&leader, &no_name, "sys/x", &body).await.is_err());
        // The leader requires a client certificate.
        let no_cert = LeaderTls { client_cert: None, client_key: None, ..full.clone() };
        assert!(call_leader(&leader, &no_cert, "sys/x", &body).await.is_err());
        // Half a client identity is the caller's mistake.
        let half = LeaderTls { client_key: None, ..full.clone() };
        assert!(matches!(http_client(&half, &leader).await, Err(Error::BadRequest(_))));
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
