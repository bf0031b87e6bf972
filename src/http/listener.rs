//! Serves the API on one `listener "tcp"`: plain HTTP or TLS (rustls, aws-lc-rs), HTTP/1.1.
//!
//! Connections are accepted in a loop bounded by a semaphore: past `MAX_CONNECTIONS` open
//! connections the accept loop waits, so a flood of clients cannot exhaust memory or file
//! descriptors.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

const MAX_CONNECTIONS: usize = 8192;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("failed to read {what} {path}: {source}")]
    Pem { what: &'static str, path: String, source: rustls::pki_types::pem::Error },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("failed to listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("unsupported tls_min_version {0:?}: use tls12 or tls13")]
    Version(String),
}

/// Builds the TLS server configuration from the listener's PEM files.
pub fn tls_config(cert_file: &Path, key_file: &Path, min_version: &str) -> Result<Arc<rustls::ServerConfig>, ListenerError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| ListenerError::Pem { what: "tls_cert_file", path: cert_file.display().to_string(), source })?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|source| ListenerError::Pem { what: "tls_key_file", path: key_file.display().to_string(), source })?;
    let versions: &[&'static rustls::SupportedProtocolVersion] = match min_version {
        "" | "tls12" => &[&rustls::version::TLS13, &rustls::version::TLS12],
        "tls13" => &[&rustls::version::TLS13],
        other => return Err(ListenerError::Version(other.to_string())),
    };
    let mut cfg = rustls::ServerConfig::builder_with_protocol_versions(versions)
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

pub async fn bind(addr: &str) -> Result<TcpListener, ListenerError> {
    TcpListener::bind(addr).await.map_err(|source| ListenerError::Bind { addr: addr.to_string(), source })
}

/// Runs the accept loop until the process ends.
pub async fn serve(listener: TcpListener, app: axum::Router, tls: Option<Arc<rustls::ServerConfig>>) {
    let acceptor = tls.map(TlsAcceptor::from);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                None => serve_conn(TokioIo::new(stream), app, peer).await,
                Some(acc) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acc.accept(stream)).await {
                    Ok(Ok(tls)) => serve_conn(TokioIo::new(tls), app, peer).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
}

async fn serve_conn<I>(io: TokioIo<I>, app: axum::Router, peer: SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder.http1_only().serve_connection(io, service).await {
        tracing::debug!(%peer, error = %e, "connection closed with error");
    }
}
