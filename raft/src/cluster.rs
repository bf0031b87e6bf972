//! The cluster port: one mutual-TLS listener that serves several protocols, told apart by ALPN,
//! as Vault's cluster port does (`raft_storage_v1` for Raft, `req_fw_sb-act_v1` for request
//! forwarding, ...).
//!
//! A connection is accepted with tokio-rustls' [`LazyConfigAcceptor`]: the ClientHello is read
//! first, the protocol is chosen from the ALPN names it offers (the client's order wins), and only
//! then is the handshake completed with that single protocol. An offer naming no registered
//! protocol is closed without a handshake. Every peer must present a certificate signed by the
//! cluster CA ([`ClusterTls::server_config`]).
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections at once (further ones wait in the kernel's
//! backlog), and a connection that has not finished its handshake within [`HANDSHAKE_TIMEOUT`]
//! is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};

use crate::error::RaftError;
use crate::tls::{ClusterTls, CLUSTER_SERVER_NAME};

/// ALPN of the Raft transport (Vault's name, `internal/physical/raft/streamlayer.go`).
pub const ALPN_RAFT: &[u8] = b"raft_storage_v1";
/// ALPN of standby-to-active request forwarding (Vault's name); the server registers it.
pub const ALPN_REQUEST_FORWARDING: &[u8] = b"req_fw_sb-act_v1";

/// Connections served at once. A cluster has a handful of nodes, each with one Raft connection
/// per peer plus forwarding: this is far above need and far below what would exhaust the
/// process.
pub const MAX_CONNECTIONS: usize = 256;

/// From TCP accept to a finished handshake. Vault allows 30 s; 10 s is ample on any network a
/// Raft cluster can run on, and frees a connection slot sooner from a peer that stalls.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// After a failed `accept` (e.g. out of file descriptors), wait this long before the next, so
/// that a persistent error does not spin a core.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A server-side cluster connection, after the handshake.
pub type ClusterStream = tokio_rustls::server::TlsStream<TcpStream>;
/// A client-side cluster connection, after the handshake.
pub type ClusterClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A protocol served on the cluster port.
#[async_trait]
pub trait ClusterHandler: Send + Sync + 'static {
    /// Serves one authenticated connection whose ALPN is this handler's, until it ends. The
    /// peer's certificate chain is available from `stream.get_ref().1.peer_certificates()`.
    /// The future is dropped (the connection closed) when the listener shuts down.
    async fn serve(&self, stream: ClusterStream, peer: SocketAddr);

    /// The TLS configuration for this protocol's connections, when it is not the cluster CA's
    /// mutual TLS (request forwarding trusts only the active node's per-term certificate).
    /// Chosen after the ClientHello, so one port serves protocols with different trust.
    fn server_config(&self) -> Option<Arc<ServerConfig>> {
        None
    }
}

type HandlerMap = HashMap<Vec<u8>, Arc<dyn ClusterHandler>>;

/// The protocols a listener serves, by ALPN name. Shared, so protocols can be registered before
/// and after the listener starts.
#[derive(Clone, Default)]
pub(crate) struct Protocols(Arc<RwLock<HandlerMap>>);

impl Protocols {
    pub(crate) fn insert(&self, alpn: &[u8], handler: Arc<dyn ClusterHandler>) {
        // A poisoned lock only means a panic elsewhere while holding it; the map is still whole.
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        map.insert(alpn.to_vec(), handler);
    }

    pub(crate) fn remove(&self, alpn: &[u8]) {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        map.remove(alpn);
    }

    /// The first offered protocol that has a handler, in the client's order of preference.
    fn choose<'a>(
        &self,
        offered: impl Iterator<Item = &'a [u8]>,
    ) -> Option<(Vec<u8>, Arc<dyn ClusterHandler>)> {
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        for alpn in offered {
            if let Some(h) = map.get(alpn) {
                return Some((alpn.to_vec(), Arc::clone(h)));
            }
        }
        None
    }
}

struct Shared {
    /// Replaced by `set_tls`; a connection takes the one current at its handshake.
    tls: RwLock<Arc<ServerConfig>>,
    protocols: Protocols,
}

/// A running cluster listener. Dropping it (or [`ClusterListener::shutdown`]) stops accepting and
/// closes every connection it accepted.
pub struct ClusterListener {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl ClusterListener {
    /// Binds `addr` and starts accepting, serving no protocol until one is registered.
    pub async fn bind(addr: SocketAddr, tls: &ClusterTls) -> Result<ClusterListener, RaftError> {
        Self::bind_with(addr, tls.server_config()?, Protocols::default()).await
    }

    pub(crate) async fn bind_with(
        addr: SocketAddr,
        config: ServerConfig,
        protocols: Protocols,
    ) -> Result<ClusterListener, RaftError> {
        let config = Arc::new(config);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| RaftError::Io(format!("binding the cluster port {addr}: {e}")))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| RaftError::Io(format!("the cluster port's address: {e}")))?;
        let shared = Arc::new(Shared { tls: RwLock::new(config), protocols });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        tracing::info!(%local_addr, "cluster port listening");
        Ok(ClusterListener { local_addr, shared, task })
    }

    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `alpn` with `handler` on connections accepted from now on. Registering a name again
    /// replaces its handler.
    pub fn register_protocol(&self, alpn: &[u8], handler: Arc<dyn ClusterHandler>) {
        self.shared.protocols.insert(alpn, handler);
    }

    pub fn unregister_protocol(&self, alpn: &[u8]) {
        self.shared.protocols.remove(alpn);
    }

    /// Uses a new TLS identity for connections accepted from now on; established connections
    /// keep theirs.
    pub fn set_tls(&self, tls: &ClusterTls) -> Result<(), RaftError> {
        self.set_server_config(tls.server_config()?);
        Ok(())
    }

    /// [`ClusterListener::set_tls`] with a ready configuration (e.g. a keyring's, trusting
    /// several CAs).
    pub(crate) fn set_server_config(&self, config: ServerConfig) {
        let config = Arc::new(config);
        let mut current = self.shared.tls.write().unwrap_or_else(|p| p.into_inner());
        *current = config;
    }

    /// Stops accepting and closes every connection (their tasks are aborted).
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for ClusterListener {
    fn drop(&mut self) {
        // The accept task owns the listening socket and the JoinSet of connections: aborting it
        // closes them all.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        // Taking a slot before accepting leaves excess connections in the kernel's backlog.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("cluster port: accept failed: {e}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            serve_connection(tcp, peer, &shared).await;
            drop(slot);
        });
    }
}

async fn serve_connection(tcp: TcpStream, peer: SocketAddr, shared: &Shared) {
    // Raft messages are small and latency-bound (heartbeats, votes).
    let _ = tcp.set_nodelay(true);
    let handshake = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
            .await
            .map_err(|e| format!("reading the ClientHello: {e}"))?;
        let hello = start.client_hello();
        let offered: Vec<Vec<u8>> =
            hello.alpn().map(|names| names.map(<[u8]>::to_vec).collect()).unwrap_or_default();
        let Some((alpn, handler)) = shared.protocols.choose(offered.iter().map(Vec::as_slice))
        else {
            return Err(format!(
                "no served protocol among the offered ALPN names {:?}",
                offered.iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect::<Vec<_>>()
            ));
        };
        let mut config = match handler.server_config() {
            Some(own) => ServerConfig::clone(&own),
            None => {
                let current = shared.tls.read().unwrap_or_else(|p| p.into_inner());
                ServerConfig::clone(&current)
            }
        };
        config.alpn_protocols = vec![alpn];
        let stream =
            start.into_stream(Arc::new(config)).await.map_err(|e| format!("TLS handshake: {e}"))?;
        Ok((stream, handler))
    };
    let (stream, handler) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(e)) => {
            tracing::info!(%peer, "cluster port: refused a connection: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "cluster port: no handshake within {HANDSHAKE_TIMEOUT:?}");
            return;
        }
    };
    handler.serve(stream, peer).await;
}

/// `host:port` of a cluster address: Vault's `cluster_addr` is a URL (`https://10.0.0.1:8201`);
/// a bare `host:port` is accepted too.
pub fn host_port(cluster_addr: &str) -> Result<&str, RaftError> {
    let rest = cluster_addr
        .strip_prefix("https://")
        .or_else(|| cluster_addr.strip_prefix("tcp://"))
        .unwrap_or(cluster_addr);
    let rest = rest.trim_end_matches('/');
    let valid = !rest.is_empty()
        && !rest.contains('/')
        && !rest.contains("://")
        && rest.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
    if valid {
        Ok(rest)
    } else {
        Err(RaftError::Config(format!(
            "invalid cluster address {cluster_addr:?}: expected https://host:port"
        )))
    }
}

/// Connects to a peer's cluster port with `config` (see [`ClusterTls::client_config`]), checks
/// the server against the cluster CA and [`CLUSTER_SERVER_NAME`], and checks that the server
/// chose the protocol `config` offers. Not bounded in time: callers put a timeout around it.
/// A `config` with its own certificate verifier (request forwarding pins the active node's
/// certificate) is dialled the same way: the name is then whatever that verifier checks.
pub async fn dial(
    cluster_addr: &str,
    config: Arc<ClientConfig>,
) -> Result<ClusterClientStream, RaftError> {
    let addr = host_port(cluster_addr)?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| RaftError::Unreachable(format!("connecting to {addr}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(CLUSTER_SERVER_NAME)
        .map_err(|e| RaftError::Tls(format!("the cluster server name: {e}")))?;
    let wanted = config.alpn_protocols.first().cloned();
    let stream = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| RaftError::Unreachable(format!("TLS handshake with {addr}: {e}")))?;
    let chosen = stream.get_ref().1.alpn_protocol();
    if chosen != wanted.as_deref() {
        return Err(RaftError::Unreachable(format!(
            "{addr} did not agree on the protocol {:?}",
            wanted.map(|w| String::from_utf8_lossy(&w).into_owned())
        )));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_addresses() {
        assert_eq!(host_port("https://10.0.0.1:8201").ok(), Some("10.0.0.1:8201"));
        assert_eq!(host_port("https://node-a.internal:8201/").ok(), Some("node-a.internal:8201"));
        assert_eq!(host_port("127.0.0.1:8201").ok(), Some("127.0.0.1:8201"));
        assert_eq!(host_port("https://[::1]:8201").ok(), Some("[::1]:8201"));
        for bad in ["", "https://", "https://host", "https://host:0", "https://h:1/x", "http://h:1"]
        {
            assert!(host_port(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
