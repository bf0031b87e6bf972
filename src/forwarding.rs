//! Request forwarding from standbys to the active node. STUB owned by the `forwarding` branch:
//! only what the HA state needs to build (the identity and a handler that refuses everything).
//! The lead replaces this file with the `forwarding` branch's at merge.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, SanType, PKCS_ECDSA_P521_SHA512};
use serde::{Deserialize, Serialize};
use vaultd_raft::{ClusterHandler, ClusterStream};

use crate::error::{Error, Result};

/// The active node's per-term forwarding identity: a fresh ECDSA P-521 key and a self-signed
/// certificate, for client and server auth. Debug redacts the key; the key is zeroized on drop.
#[derive(Clone, Serialize, Deserialize)]
pub struct ForwardingIdentity {
    pub cert_der: Vec<u8>,
    pub key_der: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ForwardingIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardingIdentity").field("cert_der", &self.cert_der.len()).finish_non_exhaustive()
    }
}

impl ForwardingIdentity {
    pub fn generate() -> Result<Self> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P521_SHA512).map_err(|e| Error::internal(format!("generating the forwarding key: {e}")))?;
        let name = format!("fw-{}", uuid::Uuid::new_v4());
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::DnsName(name.try_into().map_err(|e| Error::internal(format!("forwarding certificate name: {e}")))?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.self_signed(&key).map_err(|e| Error::internal(format!("signing the forwarding certificate: {e}")))?;
        Ok(ForwardingIdentity { cert_der: cert.der().to_vec(), key_der: zeroize::Zeroizing::new(key.serialize_der()) })
    }
}

/// Closes every connection: forwarding itself comes with the `forwarding` branch.
struct Refuse;

#[async_trait]
impl ClusterHandler for Refuse {
    async fn serve(&self, _stream: ClusterStream, _peer: SocketAddr) {}
}

pub fn server_handler(_identity: &ForwardingIdentity, _app: axum::Router) -> Result<Arc<dyn ClusterHandler>> {
    Ok(Arc::new(Refuse))
}
