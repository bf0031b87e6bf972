//! A real etcd cluster on loopback for tests: `n` members of Debian's `etcd` binary on free
//! ports, data in a temporary directory (in `/dev/shm` when there is one, so etcd's fsyncs are
//! cheap), all members killed on drop. Tests skip themselves when [`etcd_binary`] finds nothing
//! (`make testtools` installs Debian's `etcd-server`).
//!
//! Compiled into the library, like the conformance suites, so the server's cluster tests can
//! start one too.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// Certificates for a cluster that serves clients over TLS and requires client certificates
/// (`--client-cert-auth`); PEM files made by the test. Peers still talk plain HTTP.
#[derive(Clone, Debug)]
pub struct TestTls {
    pub ca_file: PathBuf,
    /// Valid for `127.0.0.1`.
    pub server_cert_file: PathBuf,
    pub server_key_file: PathBuf,
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
}

/// The etcd binary: `$ETCD_BIN`, else `/usr/bin/etcd`, else `etcd` on `PATH`.
pub fn etcd_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ETCD_BIN") {
        return Some(PathBuf::from(p));
    }
    let debian = PathBuf::from("/usr/bin/etcd");
    if debian.is_file() {
        return Some(debian);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join("etcd"))
        .find(|p| p.is_file())
}

struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    child: Option<Child>,
}

pub struct EtcdTestCluster {
    binary: PathBuf,
    dir: tempfile::TempDir,
    token: String,
    members: Vec<Member>,
    tls: Option<TestTls>,
}

/// Loopback ports nobody listens on now. They are released before etcd binds them, so another
/// process could take one in between; a start that fails for that reason says so in its log.
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<_>>()?;
    listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect()
}

impl EtcdTestCluster {
    /// Starts `n` members and waits (up to 30 s) until the cluster serves linearizable reads.
    /// `Ok(None)` when there is no etcd binary: the caller prints a skip message.
    pub async fn start(n: usize) -> Result<Option<Self>, String> {
        Self::start_with(n, None).await
    }

    /// [`Self::start`], serving clients over TLS with `tls` (client URLs are `https://`).
    pub async fn start_with(n: usize, tls: Option<TestTls>) -> Result<Option<Self>, String> {
        let Some(binary) = etcd_binary() else { return Ok(None) };
        let mut builder = tempfile::Builder::new();
        builder.prefix("vaultd-etcd-");
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() { builder.tempdir_in(shm) } else { builder.tempdir() }
            .map_err(|e| format!("temp dir for etcd: {e}"))?;
        let ports = free_ports(2 * n).map_err(|e| format!("free ports for etcd: {e}"))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_url: format!("{scheme}://127.0.0.1:{}", ports[2 * i]),
                peer_url: format!("http://127.0.0.1:{}", ports[2 * i + 1]),
                child: None,
            })
            .collect();
        let token = format!("vaultd-test-{}", ports[0]);
        let mut cluster = Self { binary, dir, token, members, tls };
        for i in 0..n {
            cluster.start_member(i)?;
        }
        cluster.wait_ready(Duration::from_secs(30)).await?;
        Ok(Some(cluster))
    }

    /// Starts member `i` (again, after [`Self::kill`]: it rejoins with its data).
    pub fn start_member(&mut self, i: usize) -> Result<(), String> {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let m = &self.members[i];
        if m.child.is_some() {
            return Ok(());
        }
        let log_path = self.dir.path().join(format!("{}.log", m.name));
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut command = Command::new(&self.binary);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert_file)
                .arg("--key-file")
                .arg(&tls.server_key_file)
                .arg("--trusted-ca-file")
                .arg(&tls.ca_file)
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.dir.path().join(&m.name))
            .args(["--listen-client-urls", &m.client_url])
            .args(["--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url])
            .args(["--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.binary.display()))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Waits until a client of every running member's URL gets a linearizable read through.
    pub async fn wait_ready(&self, limit: Duration) -> Result<(), String> {
        let urls: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client_url.clone())
            .collect();
        let deadline = tokio::time::Instant::now() + limit;
        let mut last_error = String::from("no attempt");
        while tokio::time::Instant::now() < deadline {
            let attempt = async {
                let mut opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
                if let Some(tls) = &self.tls {
                    let read = |p: &Path| std::fs::read(p).map_err(etcd_client::Error::IoError);
                    opts = opts.with_tls(
                        TlsOptions::new()
                            .ca_certificate(Certificate::from_pem(read(&tls.ca_file)?))
                            .identity(Identity::from_pem(
                                read(&tls.client_cert_file)?,
                                read(&tls.client_key_file)?,
                            )),
                    );
                }
                let mut client = Client::connect(&urls, Some(opts)).await?;
                client.get("vaultd-test-ready", None).await
            };
            match tokio::time::timeout(Duration::from_secs(3), attempt).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = "timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "etcd cluster not ready after {limit:?}: {last_error}; logs in {}",
            self.dir.path().display()
        ))
    }

    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    pub fn client_url(&self, i: usize) -> String {
        self.members[i].client_url.clone()
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOPs (`true`) or SIGCONTs (`false`) member `i`.
    pub fn pause(&self, i: usize, paused: bool) {
        if let Some(child) = &self.members[i].child {
            let signal = if paused { libc::SIGSTOP } else { libc::SIGCONT };
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill(2) with a pid this process spawned and has not reaped.
                unsafe { libc::kill(pid, signal) };
            }
        }
    }

    /// The members' log directory, for a failing test's message.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for EtcdTestCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
