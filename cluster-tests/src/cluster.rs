//! A formed cluster for the HA tests: `n` raft nodes (on loopback, or each in its own network
//! namespace), node 0 initialized (one key share), unsealed and active with KV v2 at `kv/`, the
//! others joined to it, unsealed, voters, and standbys that name node 0 as the active node.
//! Dropping the cluster kills its processes, then removes its namespaces and directories.
//!
//! Beside it: the polls the HA tests share (who is active, by `sys/leader` or by `sys/health`),
//! a watcher that fails a test if two nodes ever say they are active at once, and
//! short-timeout requests that turn a node that does not answer into `None` instead of a stall.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::netns::Netns;
use crate::{Api, Node};

/// How long forming a cluster may take at each step (a loaded 2-core machine runs several).
const FORM_WITHIN: Duration = Duration::from_secs(30);

/// A client whose every request gives up after `timeout` (redirects followed, as reqwest does
/// by default).
pub fn quick_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder().timeout(timeout).build().expect("client")
}

/// One request: (status, JSON body or Null); `None` when the node does not answer in time (a
/// stopped or cut-off node must not stall a poller).
pub async fn quick(http: &reqwest::Client, addr: &str, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Option<(u16, Value)> {
    let m = reqwest::Method::from_bytes(method.as_bytes()).ok()?;
    let mut r = http.request(m, format!("{addr}/v1/{path}"));
    if let Some(t) = token {
        r = r.header("X-Vault-Token", t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.ok()?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.ok()?;
    Some((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

/// `sys/health`'s status code, `None` when the node does not answer.
pub async fn health(http: &reqwest::Client, addr: &str) -> Option<u16> {
    quick(http, addr, "GET", "sys/health", None, None).await.map(|(c, _)| c)
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `within`; panics naming `what`.
pub async fn eventually<T, F: Future<Output = Option<T>>>(within: Duration, what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` every 100 ms until it holds, for at most 30 s; panics naming `what`.
pub async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + FORM_WITHIN;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How to form a [`Cluster`].
pub struct Builder {
    n: usize,
    netns: bool,
    config_lines: Vec<(usize, String)>,
}

impl Builder {
    /// Each node in its own network namespace (see [`Netns`]); the caller checks
    /// [`crate::netns::skip_unless_available`] first.
    pub fn netns(mut self) -> Builder {
        self.netns = true;
        self
    }

    /// Adds `line` to node `i`'s config file (restarting it) before the cluster forms.
    pub fn config_line(mut self, i: usize, line: &str) -> Builder {
        self.config_lines.push((i, line.to_string()));
        self
    }

    pub async fn start(self) -> Cluster {
        assert!(self.n >= 1);
        let tmp = tempfile::tempdir().expect("tmp");
        let net = self.netns.then(|| Netns::new(self.n).expect("network namespaces"));
        let mut nodes: Vec<Node> = (0..self.n)
            .map(|i| {
                let (dir, id) = (tmp.path().join(format!("n{}", i + 1)), format!("node{}", i + 1));
                match &net {
                    Some(net) => net.node(i, &dir, &id, ""),
                    None => Node::raft(&dir, &id),
                }
            })
            .collect();
        for (i, line) in &self.config_lines {
            let node = &mut nodes[*i];
            let mut cfg = std::fs::read_to_string(&node.config).expect("config");
            cfg.push_str(line);
            cfg.push('\n');
            std::fs::write(&node.config, cfg).expect("config");
            node.restart();
        }
        let first = nodes[0].client();
        let (keys, root) = first.init(1, 1).await;
        first.unseal(&keys).await;
        wait_for("node 1 active", || async { first.try_req("GET", "sys/health", None).await.is_ok_and(|(s, _)| s == 200) }).await;
        let admin = first.clone().with_token(&root);
        admin.fast_autopilot().await;
        admin.mount_kv2("kv").await;
        for n in &nodes[1..] {
            let (s, v) = n.client().req("POST", "sys/storage/raft/join", Some(json!({ "leader_api_addr": nodes[0].addr }))).await;
            assert_eq!(s, 200, "join: {v}");
            n.client().unseal(&keys).await;
        }
        // Failover needs voters: autopilot promotes the joined nodes after their stabilization.
        let n = nodes.len();
        wait_for("every node a voter", || async {
            let conf = admin.try_req("GET", "sys/storage/raft/configuration", None).await;
            conf.is_ok_and(|(s, v)| {
                let servers = v["data"]["config"]["servers"].as_array().cloned().unwrap_or_default();
                s == 200 && servers.len() == n && servers.iter().all(|p| p["voter"] == json!(true))
            })
        })
        .await;
        for node in &nodes[1..] {
            wait_for("a standby that knows the active node", || async {
                let health = node.client().try_req("GET", "sys/health", None).await;
                let leader = node.client().try_req("GET", "sys/leader", None).await;
                // 473: a performance standby (the default); 429: a plain one.
                matches!(health, Ok((429 | 473, _)))
                    && leader.is_ok_and(|(s, v)| s == 200 && v["leader_address"] == json!(nodes[0].addr) && v["is_self"] == json!(false))
            })
            .await;
        }
        Cluster { nodes, keys, root, net, _tmp: tmp }
    }
}

/// A formed cluster (see the module docs). Fields drop in order: processes, then namespaces,
/// then directories.
pub struct Cluster {
    pub nodes: Vec<Node>,
    /// The unseal key (one share).
    pub keys: Vec<String>,
    pub root: String,
    net: Option<Netns>,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    pub fn builder(n: usize) -> Builder {
        Builder { n, netns: false, config_lines: Vec::new() }
    }

    /// `n` nodes on loopback.
    pub async fn start(n: usize) -> Cluster {
        Cluster::builder(n).start().await
    }

    /// The namespaces of a cluster built with [`Builder::netns`].
    pub fn net(&self) -> &Netns {
        self.net.as_ref().expect("a cluster in network namespaces")
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// Node `i`'s client with the root token.
    pub fn root_client(&self, i: usize) -> Api {
        self.nodes[i].client().with_token(&self.root)
    }

    /// Every node's log, for a failure message.
    pub fn logs(&self) -> String {
        self.nodes.iter().map(|n| format!("--- {}\n{}", n.addr, n.log())).collect::<Vec<_>>().join("\n")
    }

    /// Which nodes say (through `sys/leader`) that they are active.
    pub async fn actives(&self) -> Vec<usize> {
        let http = quick_client(Duration::from_millis(500));
        let mut out = Vec::new();
        for (i, a) in self.addrs().iter().enumerate() {
            if let Some((200, v)) = quick(&http, a, "GET", "sys/leader", None, None).await {
                if v["is_self"] == json!(true) {
                    out.push(i);
                }
            }
        }
        out
    }

    /// Waits until exactly one node is active and every unsealed standby names it; returns it.
    pub async fn settled(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        let http = quick_client(Duration::from_millis(500));
        loop {
            let actives = self.actives().await;
            if let [a] = actives[..] {
                let mut ok = true;
                for (i, addr) in self.addrs().iter().enumerate() {
                    if i == a {
                        continue;
                    }
                    match quick(&http, addr, "GET", "sys/leader", None, None).await {
                        Some((200, v)) => ok &= v["leader_address"] == json!(self.nodes[a].addr),
                        // Sealed, or not running.
                        Some((503, _)) | None => {}
                        Some(_) => ok = false,
                    }
                }
                if ok {
                    return a;
                }
            }
            assert!(Instant::now() < deadline, "no settled active node: {actives:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls (`sys/leader`) until a node other than `old` is active; returns it and the time
    /// taken since `t0`.
    pub async fn new_active(&self, old: usize, t0: Instant, within: Duration) -> (usize, Duration) {
        loop {
            let actives = self.actives().await;
            if let Some(&a) = actives.iter().find(|&&a| a != old) {
                return (a, t0.elapsed());
            }
            assert!(t0.elapsed() < within, "no new active node after {:?}", t0.elapsed());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The node among `among` answering 200 on `sys/health` (active and within its lease), if
    /// exactly one does.
    pub async fn active_among(&self, http: &reqwest::Client, among: &[usize]) -> Option<usize> {
        let mut active = Vec::new();
        for &i in among {
            if health(http, &self.nodes[i].addr).await == Some(200) {
                active.push(i);
            }
        }
        (active.len() == 1).then(|| active[0])
    }

    /// Waits (at most `within`) until exactly one node answers 200 on `sys/health`; returns it.
    pub async fn wait_active(&self, within: Duration) -> usize {
        let http = quick_client(Duration::from_secs(2));
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        eventually(within, "one active node", || self.active_among(&http, &all)).await
    }

    /// Waits (at most `within`) until exactly one node other than `old` answers 200 on
    /// `sys/health`; returns it.
    pub async fn wait_active_other_than(&self, old: usize, within: Duration) -> usize {
        let http = quick_client(Duration::from_secs(2));
        let rest: Vec<usize> = (0..self.nodes.len()).filter(|&i| i != old).collect();
        eventually(within, "another node to become active", || self.active_among(&http, &rest)).await
    }

    /// The nodes other than `active`.
    pub fn standbys(&self, active: usize) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| i != active).collect()
    }

    /// Starts a [`SingleActiveWatch`] over every node, each poll giving up after `poll_timeout`.
    pub fn watch_single_active(&self, poll_timeout: Duration) -> SingleActiveWatch {
        SingleActiveWatch::start(self.addrs(), poll_timeout)
    }
}

/// Asks every node for `sys/health` at once, over and over (every 20 ms), and records every
/// round in which two nodes said active (200). A round asks every node at once, so it is a
/// near-instant snapshot.
pub struct SingleActiveWatch {
    stop: Arc<AtomicBool>,
    violations: Arc<Mutex<Vec<Vec<Option<u16>>>>>,
    rounds: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SingleActiveWatch {
    pub fn start(addrs: Vec<String>, poll_timeout: Duration) -> SingleActiveWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let rounds = Arc::new(AtomicUsize::new(0));
        let (s, v, r) = (stop.clone(), violations.clone(), rounds.clone());
        let task = tokio::spawn(async move {
            let http = quick_client(poll_timeout);
            while !s.load(Ordering::Acquire) {
                let polls: Vec<_> = addrs
                    .iter()
                    .map(|a| {
                        let (http, a) = (http.clone(), a.clone());
                        tokio::spawn(async move { health(&http, &a).await })
                    })
                    .collect();
                let mut codes = Vec::new();
                for p in polls {
                    codes.push(p.await.ok().flatten());
                }
                if codes.iter().filter(|c| **c == Some(200)).count() > 1 {
                    v.lock().unwrap_or_else(|p| p.into_inner()).push(codes);
                }
                r.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        SingleActiveWatch { stop, violations, rounds, task }
    }

    /// Stops the watch; panics if two nodes were ever active at once, or if it hardly ran.
    pub async fn finish(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.task.await;
        let v = self.violations.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let rounds = self.rounds.load(Ordering::Relaxed);
        assert!(v.is_empty(), "two active nodes at once in {} of {rounds} rounds: {v:?}", v.len());
        assert!(rounds > 10, "the watcher hardly ran ({rounds} rounds)");
    }
}
