//! Request forwarding from a standby to the active node, over the cluster port (ALPN
//! `req_fw_sb-act_v1`), as Vault's standbys do (`internal/vault/request_forwarding.go`).
//!
//! Trust: on becoming active a node generates a [`ForwardingIdentity`] (a fresh P-521 key and a
//! self-signed certificate) and advertises it, key included, through the barrier. Both ends of a
//! forwarding connection present that one certificate and accept only that one certificate, byte
//! for byte ([`PinnedCert`]): a standby proves it is an unsealed member by having read the key
//! from the barrier, and the active node proves it is the current one. The cluster CA's node
//! certificate, or any other, is refused. Signatures are checked by rustls' aws-lc-rs provider.
//!
//! Wire protocol: frames of a 4-byte big-endian length and a MessagePack body; a request frame is
//! `(id, ForwardedRequest)`, a reply `(id, Reply)`. Replies may come back in any order, so one
//! connection carries many requests at once (bounded on both sides). Frames are bounded by
//! [`MAX_FRAME_BYTES`].
//!
//! The active node runs each request through its own axum router, marked with [`Forwarded`] in
//! the request extensions (which a network client cannot set), so that a node that has stopped
//! being active refuses it ([`NotActive`]) instead of forwarding it again: forwarding never loops.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P521_SHA512,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;
use vaultd_raft::cluster::{ClusterStream, ALPN_REQUEST_FORWARDING};
use vaultd_raft::ClusterHandler;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Largest frame either side sends or accepts: Vault's default `max_request_size` (32 MiB) plus
/// room for headers and encoding, doubled for responses (a large list), which have no
/// configured limit of their own.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// Connections a standby keeps to the active node. Each is multiplexed; two spread TLS work over
/// two cores without opening one connection per client.
const POOL_SIZE: usize = 2;

/// Requests in flight on one connection, on either side. Past it a standby's callers wait (the
/// pool is then the bottleneck, not memory) and the active node stops reading frames.
const MAX_IN_FLIGHT: usize = 256;

/// TCP connect plus TLS handshake to the active node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One forwarded request, end to end: Vault's default `max_request_duration` (90 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);

/// The name a standby dials; the pinned certificate, not the name, is what is trusted.
const SERVER_NAME: &str = "vaultd-forwarding";

/// Certificates are retired by the next leadership change, not by expiry (Vault: 30 years).
const CERT_LIFETIME: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
const CLOCK_SKEW: Duration = Duration::from_secs(30);

/// Headers that describe one hop's connection, not the request: the receiving HTTP stack sets
/// its own (the body length comes from the relayed body).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

/// The active node's per-term forwarding identity: a fresh ECDSA P-521 key and a self-signed
/// certificate (rcgen), for client AND server auth. Serialized into the leader advertisement (which
/// is stored through the barrier, so only unsealed cluster members can read the key). Debug
/// redacts the key; the key bytes are zeroized on drop.
#[derive(Clone, Serialize, Deserialize)]
pub struct ForwardingIdentity {
    pub cert_der: Vec<u8>,
    pub key_der: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for ForwardingIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardingIdentity")
            .field("cert_der", &format_args!("<{} bytes>", self.cert_der.len()))
            .field("key_der", &"<redacted>")
            .finish()
    }
}

impl ForwardingIdentity {
    pub fn generate() -> Result<Self> {
        let err = |what: &str, e: rcgen::Error| Error::Internal(format!("forwarding identity: {what}: {e}"));
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Error::internal("the system clock is before 1970"))?;
        let now = rcgen::date_time_ymd(1970, 1, 1) + now_unix;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P521_SHA512).map_err(|e| err("generating the key", e))?;
        let mut params =
            CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(|e| err("the server name", e))?;
        // Vault names it `fw-<uuid>`; the random part makes every term's certificate distinct.
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("fw-{}", uuid::Uuid::new_v4()));
        params.distinguished_name = dn;
        // Not a CA: it signs nothing but handshakes, and is trusted only as itself.
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CERT_LIFETIME;
        let cert = params.self_signed(&key).map_err(|e| err("signing the certificate", e))?;
        Ok(ForwardingIdentity { cert_der: cert.der().to_vec(), key_der: Zeroizing::new(key.serialize_der()) })
    }

    fn cert(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.cert_der.clone())
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.to_vec()))
    }

    /// The active side: presents the identity, requires a client presenting the same.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        let provider = provider();
        let verifier = Arc::new(PinnedCert::new(self.cert(), &provider));
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(|e| Error::Internal(format!("forwarding TLS versions: {e}")))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert()], self.key())
            .map_err(|e| Error::Internal(format!("forwarding certificate or key: {e}")))?;
        Ok(Arc::new(config))
    }

    /// The standby side: trusts exactly the identity's certificate, presents it as its own.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>> {
        let provider = provider();
        let verifier = Arc::new(PinnedCert::new(self.cert(), &provider));
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(|e| Error::Internal(format!("forwarding TLS versions: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(vec![self.cert()], self.key())
            .map_err(|e| Error::Internal(format!("forwarding certificate or key: {e}")))?;
        config.alpn_protocols = vec![ALPN_REQUEST_FORWARDING.to_vec()];
        Ok(Arc::new(config))
    }
}

/// Vault's cluster port takes TLS 1.2 and later.
static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Trusts one certificate, compared byte for byte, for both server and client authentication.
/// A self-signed end-entity certificate has no chain to verify: possession of its key, proved by
/// the handshake signature (checked by the crypto provider), is the whole authentication.
#[derive(Debug)]
struct PinnedCert {
    cert: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedCert {
    fn new(cert: CertificateDer<'static>, provider: &CryptoProvider) -> Self {
        PinnedCert { cert, algorithms: provider.signature_verification_algorithms }
    }

    fn check(&self, presented: &CertificateDer<'_>) -> std::result::Result<(), rustls::Error> {
        if presented.as_ref() == self.cert.as_ref() {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))
        }
    }
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for PinnedCert {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A client request as the standby received it, relayed whole (rmp-serde on the wire).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForwardedRequest {
    pub method: String,
    /// `/v1/...?...`
    pub path_and_query: String,
    pub headers: Vec<(String, Vec<u8>)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    pub client_addr: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForwardedResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// Request extension on a request that arrived over the forwarding channel. Only
/// [`server_handler`] sets it: HTTP clients cannot.
#[derive(Clone, Debug)]
pub struct Forwarded {
    pub client_addr: Option<String>,
}

/// Response extension set by the HTTP layer when a forwarded request reached a node that is no
/// longer active; the handler turns it into [`Reply::NotActive`] for the standby.
#[derive(Clone, Copy, Debug)]
pub struct NotActive;

#[derive(Serialize, Deserialize)]
struct RequestFrame {
    id: u64,
    request: ForwardedRequest,
}

#[derive(Serialize, Deserialize)]
struct ReplyFrame {
    id: u64,
    reply: Reply,
}

#[derive(Serialize, Deserialize)]
enum Reply {
    Response(ForwardedResponse),
    /// This node is not (or no longer) active: the standby must look for the new one.
    NotActive,
    /// The request could not be run (malformed, too large); the text says why.
    Failed(String),
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes exceeds the limit of {max}"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

fn encode_frame<T: Serialize>(value: &T, max: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 4];
    rmp_serde::encode::write_named(&mut buf, value).map_err(|e| Error::Internal(format!("encoding a forwarding frame: {e}")))?;
    let len = buf.len() - 4;
    if len > max {
        return Err(Error::Unavailable(format!("a forwarded message of {len} bytes exceeds the limit of {max}")));
    }
    let len = u32::try_from(len).map_err(|_| Error::Unavailable("forwarded message too large".into()))?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}

/// Largest run of queued frames written with one flush: under load many small frames go out in
/// one TLS record and one system call instead of one each.
const MAX_BATCH_BYTES: usize = 256 << 10;

/// Writes `first` and whatever else is already queued (up to [`MAX_BATCH_BYTES`]), then flushes.
async fn write_batch<W: AsyncWrite + Unpin>(
    wr: &mut W,
    first: Vec<u8>,
    rx: &mut mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<()> {
    let mut batch = first;
    while batch.len() < MAX_BATCH_BYTES {
        match rx.try_recv() {
            Ok(more) => batch.extend_from_slice(&more),
            Err(_) => break,
        }
    }
    wr.write_all(&batch).await?;
    wr.flush().await
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;

/// One multiplexed client connection. Dropping the last handle aborts its tasks, closing it.
struct Conn {
    outgoing: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    slots: Arc<Semaphore>,
    dead: Arc<AtomicBool>,
    next_id: AtomicU64,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Why a call failed: before the request left (safe to retry elsewhere) or after (it may have
/// run; never replayed).
enum CallError {
    NotSent(Error),
    Lost(Error),
}

impl Conn {
    fn start<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S, max_frame: usize) -> Conn {
        let (rd, mut wr) = tokio::io::split(stream);
        let mut rd = tokio::io::BufReader::new(rd);
        let (outgoing, mut rx) = mpsc::channel::<Vec<u8>>(MAX_IN_FLIGHT);
        let pending: Pending = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        let fail_all = {
            let (pending, dead) = (Arc::clone(&pending), Arc::clone(&dead));
            move || {
                dead.store(true, Ordering::SeqCst);
                // Dropping the senders wakes every waiter with "connection lost".
                pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
            }
        };
        let writer = {
            let fail_all = fail_all.clone();
            tokio::spawn(async move {
                while let Some(frame) = rx.recv().await {
                    if write_batch(&mut wr, frame, &mut rx).await.is_err() {
                        break;
                    }
                }
                fail_all();
            })
        };
        let reader = {
            let pending = Arc::clone(&pending);
            tokio::spawn(async move {
                while let Ok(Some(frame)) = read_frame(&mut rd, max_frame).await {
                    let Ok(ReplyFrame { id, reply }) = rmp_serde::from_slice::<ReplyFrame>(&frame) else {
                        tracing::warn!("request forwarding: undecodable reply from the active node");
                        break;
                    };
                    let waiter = pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                    if let Some(w) = waiter {
                        let _ = w.send(reply);
                    }
                }
                fail_all();
            })
        };
        Conn {
            outgoing,
            pending,
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            dead,
            next_id: AtomicU64::new(1),
            tasks: vec![writer, reader],
        }
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    async fn call(&self, frame_of: impl FnOnce(u64) -> Result<Vec<u8>>) -> std::result::Result<Reply, CallError> {
        let closed = || CallError::NotSent(Error::Unavailable("the forwarding connection closed".into()));
        let _slot = self.slots.acquire().await.map_err(|_| closed())?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = frame_of(id).map_err(CallError::NotSent)?;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        if self.is_dead() || self.outgoing.send(frame).await.is_err() {
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            return Err(closed());
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(CallError::Lost(Error::Unavailable("the connection to the active node was lost".into()))),
            Err(_) => {
                self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                Err(CallError::Lost(Error::Unavailable(format!(
                    "the active node did not answer within {REQUEST_TIMEOUT:?}"
                ))))
            }
        }
    }
}

/// Which active node the pool's connections lead to. A new cluster address or certificate (a
/// new term) starts a new generation; connections of an older one are replaced on next use.
struct Target {
    cluster_addr: String,
    cert_der: Vec<u8>,
    config: Arc<ClientConfig>,
    generation: u64,
}

/// A pooled connection and the generation of [`Target`] it was made for.
type Pooled = (u64, Arc<Conn>);

/// Standby side: pooled mTLS connections to the active node's cluster port, ALPN
/// `req_fw_sb-act_v1`, trusting exactly `leader.identity.cert_der` and presenting the same
/// cert/key as client certificate (as Vault does). Reconnects when the advertisement changes.
/// Bounded pool, bounded frame size, timeouts.
pub struct Forwarder {
    target: Mutex<Option<Target>>,
    slots: Vec<tokio::sync::Mutex<Option<Pooled>>>,
    next_slot: AtomicUsize,
    max_frame: usize,
}

impl Default for Forwarder {
    fn default() -> Self {
        Self::new()
    }
}

impl Forwarder {
    pub fn new() -> Self {
        Self::with_max_frame(MAX_FRAME_BYTES)
    }

    /// A forwarder with another frame bound (tests).
    pub fn with_max_frame(max_frame: usize) -> Self {
        Forwarder {
            target: Mutex::new(None),
            slots: (0..POOL_SIZE).map(|_| tokio::sync::Mutex::new(None)).collect(),
            next_slot: AtomicUsize::new(0),
            max_frame,
        }
    }

    pub async fn forward(
        &self,
        leader: &crate::ha::LeaderAdvertisement,
        req: ForwardedRequest,
    ) -> Result<ForwardedResponse> {
        self.forward_to(&leader.cluster_addr, &leader.identity, req).await
    }

    /// [`Forwarder::forward`] to an active node given by its cluster address and identity.
    pub async fn forward_to(
        &self,
        cluster_addr: &str,
        identity: &ForwardingIdentity,
        req: ForwardedRequest,
    ) -> Result<ForwardedResponse> {
        let (generation, config) = self.target(cluster_addr, identity)?;
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let max = self.max_frame;
        let mut req = Some(req);
        // A pooled connection may have died since its last use (the active node restarted its
        // listener): one more try on a fresh connection, only if the request never left.
        for attempt in 0..2 {
            let conn = self.connection(slot, generation, cluster_addr, &config, attempt > 0).await?;
            let result = conn
                .call(|id| {
                    let request = req.take().ok_or_else(|| Error::internal("forwarded request already sent"))?;
                    encode_frame(&RequestFrame { id, request }, max)
                })
                .await;
            let reply = match result {
                Ok(reply) => reply,
                Err(CallError::Lost(e)) => return Err(e),
                Err(CallError::NotSent(e)) if req.is_none() || attempt > 0 => return Err(e),
                Err(CallError::NotSent(_)) => continue,
            };
            return match reply {
                Reply::Response(resp) => Ok(resp),
                Reply::NotActive => Err(Error::Unavailable("the advertised active node is not active".into())),
                Reply::Failed(msg) => Err(Error::Unavailable(format!("the active node could not run the request: {msg}"))),
            };
        }
        Err(Error::Unavailable("no connection to the active node".into()))
    }

    fn target(&self, cluster_addr: &str, identity: &ForwardingIdentity) -> Result<(u64, Arc<ClientConfig>)> {
        let mut target = self.target.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = target.as_ref() {
            if t.cluster_addr == cluster_addr && t.cert_der == identity.cert_der {
                return Ok((t.generation, Arc::clone(&t.config)));
            }
        }
        let generation = target.as_ref().map_or(1, |t| t.generation + 1);
        let config = identity.client_config()?;
        *target = Some(Target {
            cluster_addr: cluster_addr.to_string(),
            cert_der: identity.cert_der.clone(),
            config: Arc::clone(&config),
            generation,
        });
        Ok((generation, config))
    }

    async fn connection(
        &self,
        slot: usize,
        generation: u64,
        cluster_addr: &str,
        config: &Arc<ClientConfig>,
        fresh: bool,
    ) -> Result<Arc<Conn>> {
        let mut current = tokio::time::timeout(CONNECT_TIMEOUT, self.slots[slot].lock())
            .await
            .map_err(|_| Error::Unavailable("timed out waiting for a forwarding connection".into()))?;
        if let Some((g, conn)) = current.as_ref() {
            if *g == generation && !conn.is_dead() && !fresh {
                return Ok(Arc::clone(conn));
            }
        }
        *current = None;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, vaultd_raft::cluster::dial(cluster_addr, Arc::clone(config)))
            .await
            .map_err(|_| Error::Unavailable(format!("connecting to the active node at {cluster_addr} timed out")))?
            .map_err(|e| Error::Unavailable(format!("connecting to the active node: {e}")))?;
        let conn = Arc::new(Conn::start(stream, self.max_frame));
        *current = Some((generation, Arc::clone(&conn)));
        Ok(conn)
    }
}

/// Active side: the cluster-port handler for ALPN `req_fw_sb-act_v1`. It presents `identity` and
/// accepts only clients presenting that same certificate; each request is run through `app` (the
/// node's own HTTP router, via tower::ServiceExt::oneshot) and its response relayed.
pub fn server_handler(identity: &ForwardingIdentity, app: axum::Router) -> Result<Arc<dyn ClusterHandler>> {
    Ok(Arc::new(ForwardingService { config: identity.server_config()?, app, max_frame: MAX_FRAME_BYTES }))
}

struct ForwardingService {
    config: Arc<ServerConfig>,
    app: axum::Router,
    max_frame: usize,
}

#[async_trait]
impl ClusterHandler for ForwardingService {
    fn server_config(&self) -> Option<Arc<ServerConfig>> {
        Some(Arc::clone(&self.config))
    }

    async fn serve(&self, stream: ClusterStream, peer: SocketAddr) {
        serve_connection(stream, peer, self.app.clone(), self.max_frame).await;
    }
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
    peer: SocketAddr,
    app: axum::Router,
    max_frame: usize,
) {
    let (rd, mut wr) = tokio::io::split(stream);
    let mut rd = tokio::io::BufReader::new(rd);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if write_batch(&mut wr, frame, &mut rx).await.is_err() {
                return;
            }
        }
    });
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut running = JoinSet::new();
    loop {
        while running.try_join_next().is_some() {}
        // A slot before reading: past the bound the standby's frames wait in TCP buffers.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { break };
        let frame = match read_frame(&mut rd, max_frame).await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing::info!(%peer, "request forwarding: closing the connection: {e}");
                break;
            }
        };
        let Ok(RequestFrame { id, request }) = rmp_serde::from_slice::<RequestFrame>(&frame) else {
            tracing::info!(%peer, "request forwarding: undecodable request, closing the connection");
            break;
        };
        let (app, tx) = (app.clone(), tx.clone());
        running.spawn(async move {
            let reply = run(app, request, max_frame).await;
            let frame = encode_frame(&ReplyFrame { id, reply }, max_frame).or_else(|e| {
                encode_frame(&ReplyFrame { id, reply: Reply::Failed(e.to_string()) }, max_frame)
            });
            if let Ok(frame) = frame {
                let _ = tx.send(frame).await;
            }
            drop(slot);
        });
    }
    // Requests already running finish and answer (a write half done is still acknowledged).
    while running.join_next().await.is_some() {}
    drop(tx);
    let _ = writer.await;
}

async fn run(app: axum::Router, req: ForwardedRequest, max_frame: usize) -> Reply {
    let mut builder = axum::http::Request::builder().method(req.method.as_str()).uri(req.path_and_query.as_str());
    for (name, value) in &req.headers {
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) {
            (Ok(n), Ok(v)) => builder = builder.header(n, v),
            _ => return Reply::Failed(format!("invalid header {name:?}")),
        }
    }
    let mut request = match builder.body(Body::from(req.body)) {
        Ok(r) => r,
        Err(e) => return Reply::Failed(format!("invalid request: {e}")),
    };
    request.extensions_mut().insert(Forwarded { client_addr: req.client_addr });
    let response = match app.oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if response.extensions().get::<NotActive>().is_some() {
        return Reply::NotActive;
    }
    let (parts, body) = response.into_parts();
    let body = match axum::body::to_bytes(body, max_frame).await {
        Ok(b) => b.to_vec(),
        Err(e) => return Reply::Failed(format!("reading the response: {e}")),
    };
    let headers = parts
        .headers
        .iter()
        .filter(|(n, _)| !HOP_BY_HOP.contains(&n.as_str()))
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    Reply::Response(ForwardedResponse { status: parts.status.as_u16(), headers, body })
}


#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use rustls::pki_types::pem::PemObject;
    use vaultd_raft::{ClusterListener, ClusterTls};

    /// An app that echoes what it received, so a test sees exactly what the active side ran.
    fn echo_app(tag: &'static str) -> axum::Router {
        axum::Router::new().fallback(
            move |method: axum::http::Method,
                  uri: axum::http::Uri,
                  fwd: Option<axum::Extension<Forwarded>>,
                  headers: HeaderMap,
                  body: axum::body::Bytes| async move {
                let token = headers.get("x-vault-token").map(|v| v.to_str().unwrap_or("").to_string());
                let text = format!("{tag} {method} {uri} token={token:?} forwarded={} body={}", fwd.is_some(), body.len());
                let mut resp = (StatusCode::CREATED, text).into_response();
                resp.headers_mut().append("set-cookie", HeaderValue::from_static("a=1"));
                resp.headers_mut().append("set-cookie", HeaderValue::from_static("b=2"));
                resp.headers_mut().insert("x-vault-raw", HeaderValue::from_static("yes"));
                resp
            },
        )
    }

    async fn active(identity: &ForwardingIdentity, app: axum::Router) -> ClusterListener {
        let tls = ClusterTls::generate().expect("cluster tls");
        let listener = ClusterListener::bind("127.0.0.1:0".parse().expect("addr"), &tls).await.expect("bind");
        listener.register_protocol(ALPN_REQUEST_FORWARDING, server_handler(identity, app).expect("handler"));
        listener
    }

    fn request(body: Vec<u8>) -> ForwardedRequest {
        ForwardedRequest {
            method: "PUT".into(),
            path_and_query: "/v1/secret/data/a?x=1".into(),
            headers: vec![
                ("x-vault-token".into(), b"s.root".to_vec()),
                ("x-vault-request".into(), b"true".to_vec()),
                ("content-type".into(), b"application/json".to_vec()),
            ],
            body,
            client_addr: Some("192.0.2.1:5000".into()),
        }
    }

    fn addr(l: &ClusterListener) -> String {
        format!("https://{}", l.local_addr())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_is_relayed_whole() {
        let id = ForwardingIdentity::generate().expect("identity");
        assert!(format!("{id:?}").contains("key_der: \"<redacted>\""), "{id:?}");
        let listener = active(&id, echo_app("one")).await;
        let fwd = Forwarder::new();
        // Many at once over the few pooled connections: replies are matched by id.
        let mut set = JoinSet::new();
        let fwd = Arc::new(fwd);
        for i in 0..64usize {
            let (fwd, id, to) = (Arc::clone(&fwd), id.clone(), addr(&listener));
            set.spawn(async move { (i, fwd.forward_to(&to, &id, request(vec![7; i * 100])).await) });
        }
        while let Some(done) = set.join_next().await {
            let (i, resp) = done.expect("task");
            let resp = resp.expect("forwarded");
            assert_eq!(resp.status, 201);
            let body = String::from_utf8(resp.body).expect("utf8");
            assert_eq!(
                body,
                format!("one PUT /v1/secret/data/a?x=1 token=Some(\"s.root\") forwarded=true body={}", i * 100)
            );
            let cookies: Vec<_> = resp.headers.iter().filter(|(n, _)| n == "set-cookie").map(|(_, v)| v.clone()).collect();
            assert_eq!(cookies, vec![b"a=1".to_vec(), b"b=2".to_vec()]);
            assert!(resp.headers.iter().any(|(n, v)| n == "x-vault-raw" && v == b"yes"));
        }
    }

    /// Dials the active node with `config` and sends one valid request frame: `true` if a reply
    /// came back.
    async fn answered(to: &str, config: Arc<ClientConfig>) -> bool {
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(CONNECT_TIMEOUT, vaultd_raft::cluster::dial(to, config)).await
        else {
            return false;
        };
        let Ok(frame) = encode_frame(&RequestFrame { id: 1, request: request(vec![]) }, MAX_FRAME_BYTES) else {
            return false;
        };
        if stream.write_all(&frame).await.is_err() {
            return false;
        }
        matches!(tokio::time::timeout(CONNECT_TIMEOUT, read_frame(&mut stream, MAX_FRAME_BYTES)).await, Ok(Ok(Some(_))))
    }

    /// A client that trusts the active node's certificate but presents `cert`/`key` (or none).
    fn client_presenting(trusted: &ForwardingIdentity, own: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>) -> Arc<ClientConfig> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCert::new(trusted.cert(), &provider)));
        let mut config = match own {
            Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).expect("client cert"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_REQUEST_FORWARDING.to_vec()];
        Arc::new(config)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_advertised_certificate_is_accepted() {
        let id = ForwardingIdentity::generate().expect("identity");
        let listener = active(&id, echo_app("one")).await;
        let to = addr(&listener);
        assert!(answered(&to, id.client_config().expect("config")).await, "the member is served");

        let stranger = ForwardingIdentity::generate().expect("identity");
        assert!(!answered(&to, client_presenting(&id, Some((stranger.cert(), stranger.key())))).await, "a fresh self-signed certificate");
        assert!(!answered(&to, client_presenting(&id, None)).await, "no client certificate");
        // The cluster CA's node certificate is valid on the cluster port, but not for forwarding.
        let cluster = ClusterTls::generate().expect("cluster tls");
        let node_cert = CertificateDer::from_pem_slice(cluster.cert_pem.as_bytes()).expect("pem");
        let node_key = PrivateKeyDer::from_pem_slice(cluster.key_pem.as_bytes()).expect("pem");
        assert!(!answered(&to, client_presenting(&id, Some((node_cert, node_key)))).await, "the cluster node certificate");
        // A standby holding another term's identity does not trust this server either.
        assert!(!answered(&to, stranger.client_config().expect("config")).await, "a stale identity");
        assert!(Forwarder::new().forward_to(&to, &stranger, request(vec![])).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reconnects_when_the_identity_changes() {
        let first = ForwardingIdentity::generate().expect("identity");
        let listener = active(&first, echo_app("first")).await;
        let to = addr(&listener);
        let fwd = Forwarder::new();
        for _ in 0..4 {
            let resp = fwd.forward_to(&to, &first, request(vec![])).await.expect("first term");
            assert!(resp.body.starts_with(b"first "));
        }
        // A new term on the same node: new identity, new handler. Pooled connections of the old
        // term are replaced, not reused.
        let second = ForwardingIdentity::generate().expect("identity");
        listener.register_protocol(ALPN_REQUEST_FORWARDING, server_handler(&second, echo_app("second")).expect("handler"));
        for _ in 0..4 {
            let resp = fwd.forward_to(&to, &second, request(vec![])).await.expect("second term");
            assert!(resp.body.starts_with(b"second "), "{:?}", String::from_utf8_lossy(&resp.body));
        }
        // The active node moves: the old listener goes away, another node serves a third term.
        drop(listener);
        let third = ForwardingIdentity::generate().expect("identity");
        let moved = active(&third, echo_app("third")).await;
        assert!(fwd.forward_to(&to, &second, request(vec![])).await.is_err(), "the old active is gone");
        let resp = fwd.forward_to(&addr(&moved), &third, request(vec![])).await.expect("third term");
        assert!(resp.body.starts_with(b"third "));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_no_longer_active_refuses_and_frames_are_bounded() {
        let id = ForwardingIdentity::generate().expect("identity");
        let refusing = axum::Router::new().fallback(|| async {
            let mut resp = StatusCode::SERVICE_UNAVAILABLE.into_response();
            resp.extensions_mut().insert(NotActive);
            resp
        });
        let listener = active(&id, refusing).await;
        let to = addr(&listener);
        let err = Forwarder::new().forward_to(&to, &id, request(vec![])).await.expect_err("not active");
        assert!(err.to_string().contains("not active"), "{err}");

        // Too large to send: refused before it leaves, and the pool stays usable.
        let small = Forwarder::with_max_frame(4096);
        assert!(small.forward_to(&to, &id, request(vec![1; 8192])).await.is_err());
        let err = small.forward_to(&to, &id, request(vec![1; 16])).await.expect_err("not active");
        assert!(err.to_string().contains("not active"), "{err}");

        // A frame announcing more than the bound: the active node closes the connection without
        // reading (or allocating) it.
        let mut stream = vaultd_raft::cluster::dial(&to, id.client_config().expect("config")).await.expect("dial");
        stream.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
        stream.flush().await.expect("flush");
        let read = tokio::time::timeout(CONNECT_TIMEOUT, read_frame(&mut stream, MAX_FRAME_BYTES)).await.expect("closed in time");
        assert!(!matches!(read, Ok(Some(_))), "no reply to an oversized frame");
    }
}
