//! Cluster TLS rotation with three real processes: `sys/storage/raft/tls/rotate` on the active
//! node stages a new identity, waits for every peer, then makes it current. Afterwards writes
//! still commit, a kill -9 of the active node elects another over the rotated identity, and the
//! killed node, restarted and unsealed, rejoins (fresh connections, so only the new identity and
//! trust serve it): with the third node stopped, a write needs it.

use std::time::{Duration, Instant};

use cluster_tests::Node;
use serde_json::{json, Value};

struct Cluster {
    _tmp: tempfile::TempDir,
    nodes: Vec<Node>,
    keys: Vec<String>,
    root: String,
}

async fn form_cluster() -> Cluster {
    let tmp = tempfile::tempdir().unwrap();
    let nodes: Vec<Node> = (1..=3).map(|i| Node::raft(&tmp.path().join(format!("n{i}")), &format!("node{i}"))).collect();
    let (keys, root) = nodes[0].client().init(1, 1).await;
    nodes[0].client().unseal(&keys).await;
    nodes[0].client().with_token(&root).fast_autopilot().await;
    nodes[0].client().with_token(&root).mount_kv2("kv").await;
    for n in &nodes[1..] {
        let (s, v) = n.client().req("POST", "sys/storage/raft/join", Some(json!({ "leader_api_addr": nodes[0].addr }))).await;
        assert_eq!(s, 200, "join: {v}");
        n.client().unseal(&keys).await;
    }
    let c = Cluster { _tmp: tmp, nodes, keys, root };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = c.nodes[0].client().with_token(&c.root).req("GET", "sys/storage/raft/configuration", None).await;
        let voters = v["data"]["config"]["servers"].as_array().map_or(0, |s| s.iter().filter(|p| p["voter"] == json!(true)).count());
        if voters == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "no 3 voters: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c
}

impl Cluster {
    /// The node that says it is active, polled until one does (or `within` passes).
    async fn active(&self, skip: &[usize], within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            for (i, n) in self.nodes.iter().enumerate() {
                if skip.contains(&i) {
                    continue;
                }
                if let Ok((200, v)) = n.client().try_req("GET", "sys/leader", None).await {
                    if v["is_self"] == json!(true) {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no active node within {within:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes `kv/data/<key>` on node `i`, retrying until acknowledged or `within` passes.
    async fn write(&self, i: usize, key: &str, value: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let api = self.nodes[i].client().with_token(&self.root);
            match api.try_req("POST", &format!("kv/data/{key}"), Some(json!({"data": {"v": value}}))).await {
                Ok((200, _)) => return,
                other => assert!(Instant::now() < deadline, "write {key} on node{}: {other:?}", i + 1),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn read(&self, i: usize, key: &str) -> Value {
        let (s, v) = self.nodes[i].client().with_token(&self.root).req("GET", &format!("kv/data/{key}"), None).await;
        assert_eq!(s, 200, "read {key} on node{}: {v}", i + 1);
        v["data"]["data"]["v"].clone()
    }
}

/// How often `needle` occurs in node `i`'s log, polled until at least `n` (or `within` passes).
async fn wait_log(node: &Node, needle: &str, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let seen = node.log().matches(needle).count();
        if seen >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{needle:?} seen {seen} times, want {n}:\n{}", node.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_replication_failover_and_restarts_working() {
    let mut c = form_cluster().await;
    let a = c.active(&[], Duration::from_secs(20)).await;
    c.write(a, "before", "1", Duration::from_secs(10)).await;

    // Sudo only: no token is refused, root rotates (204 once the new identity is current).
    let (s, _) = c.nodes[a].client().req("POST", "sys/storage/raft/tls/rotate", None).await;
    assert!(s == 403 || s == 401, "rotate without a token: {s}");
    let t0 = Instant::now();
    let (s, v) = c.nodes[a].client().with_token(&c.root).req("POST", "sys/storage/raft/tls/rotate", None).await;
    assert_eq!(s, 204, "rotate: {v}");
    println!("cluster TLS rotation took {:?}", t0.elapsed());
    assert!(c.nodes[a].log().contains("cluster TLS rotated"));
    // Every node applied the initial keyring, the staged one and the rotated one.
    for n in &c.nodes {
        wait_log(n, "cluster TLS keyring applied", 3, Duration::from_secs(10)).await;
    }

    c.write(a, "after", "2", Duration::from_secs(10)).await;

    // kill -9 the active node: the other two elect a leader and commit writes.
    c.nodes[a].kill9();
    let t1 = Instant::now();
    let b = c.active(&[a], Duration::from_secs(30)).await;
    c.write(b, "failover", "3", Duration::from_secs(20)).await;
    println!("new active node after kill -9: {:?}", t1.elapsed());
    assert_eq!(c.read(b, "before").await, json!("1"));
    assert_eq!(c.read(b, "after").await, json!("2"));

    // The killed node comes back on the rotated identity from its own barrier copy; with the
    // third node stopped, a write needs the restarted node's acknowledgement.
    c.nodes[a].start();
    c.nodes[a].client().unseal(&c.keys).await;
    let third = (0..3).find(|i| *i != a && *i != b).unwrap();
    c.write(b, "rejoined", "4", Duration::from_secs(20)).await;
    c.nodes[third].kill9();
    c.write(b, "quorum-with-restarted", "5", Duration::from_secs(30)).await;
    assert_eq!(c.read(b, "quorum-with-restarted").await, json!("5"));
}
