//! The cluster's TLS identity and the rustls configurations built from it.
//!
//! Every node of a cluster presents the same certificate, signed by a CA that exists only for this
//! cluster (Vault likewise hands one raft TLS key to every node through its barrier). Trust is
//! therefore "signed by the cluster CA", in both directions:
//! - the server side requires a client certificate chaining to the cluster CA (mutual TLS);
//! - the client side verifies the server's chain against the cluster CA *only* (no system roots),
//!   and checks the name [`CLUSTER_SERVER_NAME`], which every node certificate carries as its DNS
//!   SAN, because peers dial each other by IP address and an IP SAN per node would tie the shared
//!   certificate to one host.
//!
//! Keys are ECDSA P-521, like Vault's raft TLS keyring. Only aws-lc-rs is used (never `ring`): it
//! is the one rustls provider here that signs and verifies P-521, and two providers in one process
//! make rustls' process-default selection panic.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P521_SHA512,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};

use crate::error::RaftError;

/// The DNS name in every node certificate, and the name a client checks. Fixed, because the CA is
/// per cluster: the CA, not the name, is what keeps other clusters' nodes out.
pub const CLUSTER_SERVER_NAME: &str = "vaultd-cluster";

/// How long generated certificates are valid: 30 years, as Vault's raft TLS certificates. They
/// are retired by rotation (a new [`ClusterTls`]), not by expiry, and an expiry in the middle of
/// the night would take the whole cluster down at once.
const CERT_LIFETIME: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// Backdating of `notBefore`, for peers whose clocks run slightly behind (Vault uses 30 s).
const CLOCK_SKEW: Duration = Duration::from_secs(30);

/// A cluster's TLS identity: the cluster CA and the certificate every node presents.
///
/// The server keeps it in its encrypted barrier and gives it to every node; this crate only uses
/// it. PEM throughout, so it serializes as plain strings. `Debug` never shows the keys.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterTls {
    /// The cluster CA certificate: the only trust anchor, both ways.
    pub ca_cert_pem: String,
    /// The CA's private key (PKCS#8), to issue further certificates. Nodes do not need it:
    /// see [`ClusterTls::without_ca_key`].
    pub ca_key_pem: Option<String>,
    /// The node certificate (server and client auth), signed by the CA.
    pub cert_pem: String,
    /// The node certificate's private key (PKCS#8).
    pub key_pem: String,
}

impl fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterTls")
            .field("ca_cert_pem", &format_args!("<{} bytes>", self.ca_cert_pem.len()))
            .field("ca_key_pem", &self.ca_key_pem.as_ref().map(|_| "<redacted>"))
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Drop for ClusterTls {
    /// Best effort: overwrites the private keys in this value's own buffers. Copies that rustls
    /// and aws-lc made while building configurations are theirs to clear.
    fn drop(&mut self) {
        wipe(std::mem::take(&mut self.key_pem));
        if let Some(k) = self.ca_key_pem.take() {
            wipe(k);
        }
    }
}

fn wipe(secret: String) {
    let mut bytes = secret.into_bytes();
    bytes.fill(0);
    // Keeps the compiler from dropping the fill as a dead store.
    std::hint::black_box(&bytes);
}

impl ClusterTls {
    /// Generates a new cluster CA (ECDSA P-521, self-signed, path length 0) and a node
    /// certificate (ECDSA P-521, server and client auth, DNS SAN [`CLUSTER_SERVER_NAME`]) signed
    /// by it.
    pub fn generate() -> Result<ClusterTls, RaftError> {
        let tls_err = |what: &str, e: rcgen::Error| RaftError::Tls(format!("{what}: {e}"));
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| RaftError::Tls("the system clock is before 1970".into()))?;
        let now = rcgen::date_time_ymd(1970, 1, 1) + now_unix;
        let (not_before, not_after) = (now - CLOCK_SKEW, now + CERT_LIFETIME);

        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P521_SHA512)
            .map_err(|e| tls_err("generating the cluster CA key", e))?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = name("vaultd cluster CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params.not_before = not_before;
        ca_params.not_after = not_after;
        let ca_key_pem = ca_key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key)
            .map_err(|e| tls_err("signing the cluster CA certificate", e))?;

        let node_key = KeyPair::generate_for(&PKCS_ECDSA_P521_SHA512)
            .map_err(|e| tls_err("generating the node key", e))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(CLUSTER_SERVER_NAME);
        params.subject_alt_names = vec![SanType::DnsName(
            CLUSTER_SERVER_NAME.try_into().map_err(|e| tls_err("the cluster server name", e))?,
        )];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .signed_by(&node_key, &ca)
            .map_err(|e| tls_err("signing the node certificate", e))?;

        Ok(ClusterTls {
            ca_cert_pem: ca.pem(),
            ca_key_pem: Some(ca_key_pem),
            cert_pem: cert.pem(),
            key_pem: node_key.serialize_pem(),
        })
    }

    /// The same identity without the CA key: what a node needs to take part in the cluster.
    pub fn without_ca_key(&self) -> ClusterTls {
        ClusterTls {
            ca_cert_pem: self.ca_cert_pem.clone(),
            ca_key_pem: None,
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }

    /// The server side of the cluster port: this node's certificate, and a client certificate
    /// chaining to the cluster CA required from every peer. ALPN is left empty: the listener sets
    /// it per connection to the protocol it chose from the ClientHello.
    pub fn server_config(&self) -> Result<ServerConfig, RaftError> {
        self.server_config_trusting(&[])
    }

    /// [`ClusterTls::server_config`], also accepting clients whose certificate chains to one of
    /// `extra_cas` (PEM): during a rotation peers may present either identity.
    pub fn server_config_trusting(&self, extra_cas: &[&str]) -> Result<ServerConfig, RaftError> {
        let provider = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots(extra_cas)?),
            provider.clone(),
        )
                .build()
                .map_err(|e| RaftError::Tls(format!("building the client verifier: {e}")))?;
        ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(|e| RaftError::Tls(format!("choosing TLS versions: {e}")))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain()?, self.key()?)
            .map_err(|e| RaftError::Tls(format!("the node certificate or key: {e}")))
    }

    /// The client side: trusts only the cluster CA, presents this node's certificate, offers
    /// exactly `alpn`.
    pub fn client_config(&self, alpn: &[u8]) -> Result<Arc<ClientConfig>, RaftError> {
        self.client_config_trusting(alpn, &[])
    }

    /// [`ClusterTls::client_config`], also accepting servers whose certificate chains to one of
    /// `extra_cas` (PEM).
    pub fn client_config_trusting(
        &self,
        alpn: &[u8],
        extra_cas: &[&str],
    ) -> Result<Arc<ClientConfig>, RaftError> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(|e| RaftError::Tls(format!("choosing TLS versions: {e}")))?
            .with_root_certificates(self.roots(extra_cas)?)
            .with_client_auth_cert(self.chain()?, self.key()?)
            .map_err(|e| RaftError::Tls(format!("the node certificate or key: {e}")))?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    }

    fn roots(&self, extra_cas: &[&str]) -> Result<RootCertStore, RaftError> {
        let mut roots = RootCertStore::empty();
        for pem in std::iter::once(self.ca_cert_pem.as_str()).chain(extra_cas.iter().copied()) {
            let ca = CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| RaftError::Tls(format!("the cluster CA certificate: {e}")))?;
            roots
                .add(ca)
                .map_err(|e| RaftError::Tls(format!("the cluster CA certificate: {e}")))?;
        }
        Ok(roots)
    }

    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, RaftError> {
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RaftError::Tls(format!("the node certificate: {e}")))?;
        if chain.is_empty() {
            return Err(RaftError::Tls("the node certificate PEM holds no certificate".into()));
        }
        Ok(chain)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, RaftError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| RaftError::Tls(format!("the node key: {e}")))
    }
}

/// What the server keeps at `core/raft/tls`: the identity nodes present, plus the one being
/// rolled in or out, as Vault's raft TLS keyring. A rotation goes through three stored states:
/// 1. `next` set: every node trusts both CAs but still presents `current`;
/// 2. once every peer has that, `next` becomes `current` and the old one `previous`: nodes present
///    the new certificate and still accept peers that have not switched yet;
/// 3. the next rotation drops `previous`.
///
/// So at every step any two nodes at most one state apart accept each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsKeyring {
    pub current: ClusterTls,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<ClusterTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<ClusterTls>,
    /// When `current` became current (Unix seconds; 0 when unknown, e.g. read from the old
    /// single-identity format), for the rotation schedule.
    #[serde(default)]
    pub current_since: u64,
}

/// The stored forms: the keyring, or a bare [`ClusterTls`] written before keyrings existed.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredTls {
    Keyring(TlsKeyring),
    Single(ClusterTls),
}

impl TlsKeyring {
    /// A keyring holding only `current`.
    pub fn new(current: ClusterTls) -> TlsKeyring {
        TlsKeyring { current, next: None, previous: None, current_since: unix_now() }
    }

    /// Reads either stored form.
    pub fn from_json(value: serde_json::Value) -> Result<TlsKeyring, RaftError> {
        match serde_json::from_value(value) {
            Ok(StoredTls::Keyring(k)) => Ok(k),
            Ok(StoredTls::Single(t)) => {
                Ok(TlsKeyring { current: t, next: None, previous: None, current_since: 0 })
            }
            Err(e) => Err(RaftError::Tls(format!("the stored cluster TLS keyring: {e}"))),
        }
    }

    /// The CAs trusted besides `current`'s.
    fn extra_cas(&self) -> Vec<&str> {
        [&self.next, &self.previous].into_iter().flatten().map(|t| t.ca_cert_pem.as_str()).collect()
    }

    pub fn server_config(&self) -> Result<ServerConfig, RaftError> {
        self.current.server_config_trusting(&self.extra_cas())
    }

    pub fn client_config(&self, alpn: &[u8]) -> Result<Arc<ClientConfig>, RaftError> {
        self.current.client_config_trusting(alpn, &self.extra_cas())
    }

    /// Step 1 of a rotation: `fresh` is trusted from now on. Drops `previous`.
    pub fn with_next(&self, fresh: ClusterTls) -> TlsKeyring {
        TlsKeyring {
            current: self.current.clone(),
            next: Some(fresh),
            previous: None,
            current_since: self.current_since,
        }
    }

    /// Step 2: `next` is presented; the old current stays trusted as `previous`. `None` when
    /// there is no `next`.
    pub fn promoted(&self) -> Option<TlsKeyring> {
        let next = self.next.clone()?;
        Some(TlsKeyring {
            current: next,
            next: None,
            previous: Some(self.current.clone()),
            current_since: unix_now(),
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// TLS 1.3 and 1.2, in rustls' order of preference (1.3 first). Peers are all vaultd, so 1.3 is
/// what they negotiate; 1.2 stays for parity with Vault's cluster port (minimum 1.2).
static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// aws-lc-rs, named explicitly rather than taken from the process default, so that this crate
/// behaves the same whether or not (and whichever) default the server installed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identity_builds_both_configs_and_hides_keys() {
        let tls = ClusterTls::generate().expect("generate");
        assert!(tls.ca_cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(tls.key_pem.contains("PRIVATE KEY"));
        tls.server_config().expect("server config");
        let client = tls.client_config(b"raft_storage_v1").expect("client config");
        assert_eq!(client.alpn_protocols, vec![b"raft_storage_v1".to_vec()]);

        let shown = format!("{tls:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        let node = tls.without_ca_key();
        assert!(node.ca_key_pem.is_none());
        node.server_config().expect("a node needs no CA key");
    }

    /// An in-memory handshake (bounded number of flights); `Err` names the side that refused.
    fn handshake(client: Arc<ClientConfig>, server: ServerConfig) -> Result<(), String> {
        let name = rustls::pki_types::ServerName::try_from(CLUSTER_SERVER_NAME).expect("name");
        let mut c = rustls::ClientConnection::new(client, name).expect("client");
        let mut s = rustls::ServerConnection::new(Arc::new(server)).expect("server");
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).expect("client write");
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).expect("server read");
                s.process_new_packets().map_err(|e| format!("server: {e}"))?;
            }
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).expect("server write");
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).expect("client read");
                c.process_new_packets().map_err(|e| format!("client: {e}"))?;
            }
            if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() {
                return Ok(());
            }
        }
        Err("handshake did not finish".into())
    }

    #[test]
    fn keyring_trusts_both_cas_during_a_rotation_and_refuses_others() {
        const ALPN: &[u8] = b"raft_storage_v1";
        let old = ClusterTls::generate().expect("old");
        let new = ClusterTls::generate().expect("new");
        let foreign = ClusterTls::generate().expect("foreign");
        let before = TlsKeyring::new(old.clone());
        let transition = before.with_next(new.clone());
        let after = transition.promoted().expect("promoted");
        assert_eq!(after.current, new);
        assert_eq!(after.previous.as_ref(), Some(&old));

        // A node that has not seen the rotation yet talks to one in the transition, both ways.
        let stale = before.client_config(ALPN).expect("client");
        handshake(stale.clone(), transition.server_config().expect("srv")).expect("old client");
        handshake(transition.client_config(ALPN).expect("c"), before.server_config().expect("s"))
            .expect("transition client to an old server");
        // Step 2 against step 1 and against a node still presenting the old identity.
        handshake(after.client_config(ALPN).expect("c"), transition.server_config().expect("s"))
            .expect("new identity accepted by a transition node");
        handshake(transition.client_config(ALPN).expect("c"), after.server_config().expect("s"))
            .expect("previous identity still trusted by a rotated server");
        // Two states apart do not meet: why step 2 waits until every peer has step 1.
        let err = handshake(stale.clone(), after.server_config().expect("s")).unwrap_err();
        assert!(err.starts_with("client"), "{err}");

        // Another cluster's identity is refused by every state, even by a client that trusts us.
        let intruder = foreign
            .client_config_trusting(ALPN, &[&old.ca_cert_pem, &new.ca_cert_pem])
            .expect("client");
        for ring in [&before, &transition, &after] {
            let err = handshake(intruder.clone(), ring.server_config().expect("s")).unwrap_err();
            assert!(err.starts_with("server"), "{err}");
        }

        // Once `previous` is dropped (the next rotation), the old identity is refused.
        let later = after.with_next(foreign.clone());
        assert!(later.previous.is_none());
        assert!(handshake(stale, later.server_config().expect("s")).is_err());
        handshake(after.client_config(ALPN).expect("c"), later.server_config().expect("s"))
            .expect("current identity still accepted");
    }

    #[test]
    fn keyring_reads_the_single_identity_format_and_round_trips() {
        let tls = ClusterTls::generate().expect("generate");
        let old = TlsKeyring::from_json(serde_json::to_value(&tls).expect("json")).expect("old");
        assert_eq!(old.current, tls);
        assert!(old.next.is_none() && old.previous.is_none());
        assert_eq!(old.current_since, 0);
        let ring = old.with_next(ClusterTls::generate().expect("next"));
        let back = TlsKeyring::from_json(serde_json::to_value(&ring).expect("json")).expect("ring");
        assert_eq!(back, ring);
        assert!(TlsKeyring::from_json(serde_json::json!({"nope": 1})).is_err());
        assert!(promoted_none_without_next(&old));
    }

    fn promoted_none_without_next(ring: &TlsKeyring) -> bool {
        ring.promoted().is_none()
    }

    #[test]
    fn garbage_is_a_tls_error() {
        let mut tls = ClusterTls::generate().expect("generate");
        tls.cert_pem = "not a certificate".into();
        assert!(matches!(tls.server_config(), Err(RaftError::Tls(_))));
    }
}
