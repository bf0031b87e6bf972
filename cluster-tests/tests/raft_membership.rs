//! Raft membership with real processes (issue 4): autopilot promotes a joining node only after
//! the stabilization time and shows the cluster's health; a `non_voter` stays a learner; a 4th
//! node joins, is removed, knows it (health 530, `removed_from_cluster`, requests refused) and
//! still knows after a restart; joins to a follower, a dead address, an uninitialized or a sealed
//! node fail clearly and change nothing; `peers.json` brings a lone survivor back.

use std::process::Command;
use std::time::{Duration, Instant};

use cluster_tests::{Api, Node, run_cmd, vaultd_bin};
use serde_json::{Value, json};

/// Short, so that the test does not wait Vault's default 10 s per promotion.
const STABILIZATION: Duration = Duration::from_secs(3);

fn vaultd(addr: &str, token: Option<&str>) -> Command {
    let mut c = Command::new(vaultd_bin());
    c.env("VAULT_ADDR", addr)
        .env_remove("BAO_ADDR")
        .env_remove("BAO_TOKEN")
        .env("HOME", "/nonexistent");
    match token {
        Some(t) => c.env("VAULT_TOKEN", t),
        None => c.env_remove("VAULT_TOKEN"),
    };
    c
}

async fn servers(api: &Api) -> Vec<Value> {
    let (s, v) = api.req("GET", "sys/storage/raft/configuration", None).await;
    assert_eq!(s, 200, "configuration: {v}");
    v["data"]["config"]["servers"].as_array().cloned().unwrap_or_default()
}

fn voter(servers: &[Value], node_id: &str) -> Option<bool> {
    servers.iter().find(|p| p["node_id"] == node_id).and_then(|p| p["voter"].as_bool())
}

async fn wait_for<F: Fn(&[Value]) -> bool>(api: &Api, what: &str, secs: u64, pred: F) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = servers(api).await;
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn join(node: &Node, leader: &str, non_voter: bool) -> (u16, Value) {
    node.client()
        .req(
            "POST",
            "sys/storage/raft/join",
            Some(json!({ "leader_api_addr": leader, "non_voter": non_voter })),
        )
        .await
}

async fn health(node: &Node) -> (u16, Value) {
    node.client().req("GET", "sys/health", None).await
}

fn err_text(v: &Value) -> String {
    v["errors"].as_array().map(|a| format!("{a:?}")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autopilot_non_voters_removal_and_join_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let n1 = Node::raft(&tmp.path().join("n1"), "node1");
    let n2 = Node::raft(&tmp.path().join("n2"), "node2");
    let mut n3 = Node::raft(&tmp.path().join("n3"), "node3");
    let mut n4 = Node::raft(&tmp.path().join("n4"), "node4");
    let n5 = Node::raft(&tmp.path().join("n5"), "node5");

    let (keys, root) = n1.client().init(1, 1).await;
    n1.client().unseal(&keys).await;
    let c1 = n1.client().with_token(&root);

    // Autopilot configuration: Vault's defaults, validation, then a short stabilization time
    // through the CLI.
    let (s, v) = c1.req("GET", "sys/storage/raft/autopilot/configuration", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["data"],
        json!({"cleanup_dead_servers": false, "dead_server_last_contact_threshold": "24h0m0s",
               "last_contact_threshold": "10s", "max_trailing_logs": 1000, "min_quorum": 0,
               "server_stabilization_time": "10s"})
    );
    let (s, v) = c1
        .req("POST", "sys/storage/raft/autopilot/configuration", Some(json!({"cleanup_dead_servers": true})))
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(err_text(&v).contains("min_quorum must be set"), "{v}");
    let (code, out, err) = run_cmd(vaultd(&n1.addr, Some(&root)).args([
        "operator",
        "raft",
        "autopilot",
        "set-config",
        &format!("-server-stabilization-time={}s", STABILIZATION.as_secs()),
    ]));
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run_cmd(
        vaultd(&n1.addr, Some(&root)).args(["operator", "raft", "autopilot", "get-config"]),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Server Stabilization Time") && out.contains("3s"), "{out}");

    // Node 2 joins to vote: a non-voter first, promoted once stable for the stabilization time.
    let (s, v) = join(&n2, &n1.addr, false).await;
    assert_eq!(s, 200, "{v}");
    let started = Instant::now();
    n2.client().unseal(&keys).await;
    assert_eq!(voter(&servers(&c1).await, "node2"), Some(false), "promoted before stabilizing");
    wait_for(&c1, "node2 promoted", 30, |s| voter(s, "node2") == Some(true)).await;
    assert!(
        started.elapsed() >= STABILIZATION,
        "promoted after {:?}, before the stabilization time",
        started.elapsed()
    );

    // Node 3 joins as a non-voter through the CLI and stays one.
    let (code, out, err) =
        run_cmd(vaultd(&n3.addr, None).args(["operator", "raft", "join", "-non-voter", &n1.addr]));
    assert_eq!(code, 0, "{out}{err}");
    n3.client().unseal(&keys).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let state = loop {
        let (s, v) = c1.req("GET", "sys/storage/raft/autopilot/state", None).await;
        assert_eq!(s, 200, "{v}");
        let n3 = &v["data"]["servers"]["node3"];
        // Healthy for longer than the stabilization time, and still no voter.
        let stable_for = n3["stable_since"].as_str().is_some() && n3["healthy"] == json!(true);
        if stable_for && v["data"]["healthy"] == json!(true) {
            tokio::time::sleep(STABILIZATION + Duration::from_secs(2)).await;
            break c1.req("GET", "sys/storage/raft/autopilot/state", None).await.1;
        }
        assert!(Instant::now() < deadline, "node3 never became healthy: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let d = &state["data"];
    assert_eq!(d["leader"], "node1", "{d}");
    // In raft id order, which is random: compare as sets.
    let mut voters: Vec<&str> =
        d["voters"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    voters.sort_unstable();
    assert_eq!(voters, ["node1", "node2"], "{d}");
    assert_eq!(d["non_voters"], json!(["node3"]), "{d}");
    assert_eq!(d["failure_tolerance"], json!(0), "{d}");
    let s3 = &d["servers"]["node3"];
    assert_eq!((&s3["status"], &s3["node_type"], &s3["node_status"]), (&json!("non-voter"), &json!("non-voter"), &json!("alive")), "{d}");
    assert_eq!(d["servers"]["node1"]["status"], "leader", "{d}");
    assert!(s3["last_index"].as_u64().unwrap_or(0) > 0, "{d}");
    assert_eq!(voter(&servers(&c1).await, "node3"), Some(false));
    let (code, out, err) =
        run_cmd(vaultd(&n1.addr, Some(&root)).args(["operator", "raft", "list-peers"]));
    assert_eq!(code, 0, "{out}{err}");
    let row3 = out.lines().find(|l| l.starts_with("node3")).unwrap_or("");
    assert!(row3.trim_end().ends_with("false"), "{out}");
    let (code, out, err) =
        run_cmd(vaultd(&n1.addr, Some(&root)).args(["operator", "raft", "autopilot", "state"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("Healthy:                         true\n"), "{out}");
    assert!(out.contains("Leader:                          node1\n"), "{out}");
    assert!(out.contains("Non Voters:\n   node3\n"), "{out}");
    assert!(out.contains("      Node Type:         non-voter\n"), "{out}");
    let (code, out, err) = run_cmd(
        vaultd(&n1.addr, Some(&root))
            .args(["operator", "raft", "autopilot", "state", "-format=json"]),
    );
    assert_eq!(code, 0, "{out}{err}");
    let j: Value = serde_json::from_str(&out).expect("json");
    assert_eq!((j["Healthy"].clone(), j["Leader"].clone()), (json!(true), json!("node1")), "{out}");
    assert_eq!(j["Servers"]["node3"]["NodeType"], "non-voter", "{out}");

    // Join errors: each is clear and changes nothing.
    let before = servers(&c1).await.len();
    let (s, v) = join(&n5, &n2.addr, false).await;
    assert_eq!(s, 500, "{v}");
    let e = err_text(&v);
    assert!(e.contains("not the raft leader") && e.contains(&n1.addr), "a follower names the leader: {v}");
    let (s, v) = join(&n5, "http://127.0.0.1:1", false).await;
    assert_eq!(s, 500, "{v}");
    assert!(err_text(&v).contains("failed to join raft cluster"), "{v}");
    let n6 = Node::raft(&tmp.path().join("n6"), "node6");
    let (s, v) = join(&n5, &n6.addr, false).await;
    assert_eq!(s, 500, "{v}");
    assert!(err_text(&v).contains("not initialized"), "{v}");
    // A sealed member (node 3 after a restart) refuses too.
    n3.restart();
    let (s, v) = join(&n5, &n3.addr, false).await;
    assert_eq!(s, 500, "{v}");
    assert!(err_text(&v).contains("sealed"), "{v}");
    let (_, st) = n5.client().req("GET", "sys/seal-status", None).await;
    assert_eq!(st["initialized"], json!(false), "a failed join left state behind: {st}");
    assert_eq!(servers(&c1).await.len(), before, "a failed join changed the cluster");
    n3.client().unseal(&keys).await;

    // remove-peer errors: a clear 400, the cluster unchanged.
    let (s, v) = c1.req("POST", "sys/storage/raft/remove-peer", Some(json!({"server_id": "nope"}))).await;
    assert_eq!(s, 400, "{v}");
    assert!(err_text(&v).contains("nope"), "{v}");
    let (s, v) = c1.req("POST", "sys/storage/raft/remove-peer", Some(json!({}))).await;
    assert_eq!(s, 400, "{v}");
    assert!(err_text(&v).contains("no server id provided"), "{v}");
    assert_eq!(servers(&c1).await.len(), before);

    // A 4th node joins, becomes a voter, is removed, and knows it.
    let (s, v) = join(&n4, &n1.addr, false).await;
    assert_eq!(s, 200, "{v}");
    n4.client().unseal(&keys).await;
    wait_for(&c1, "node4 promoted", 30, |s| voter(s, "node4") == Some(true)).await;
    let (s, v) = health(&n4).await;
    assert_eq!((s, &v["removed_from_cluster"]), (473, &json!(false)), "{v}");
    let (code, out, err) = run_cmd(
        vaultd(&n1.addr, Some(&root)).args(["operator", "raft", "remove-peer", "node4"]),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Peer removed successfully!"), "{out}");
    assert_eq!(voter(&servers(&c1).await, "node4"), None);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, v) = health(&n4).await;
        if s == 530 {
            assert_eq!(v["removed_from_cluster"], json!(true), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "node4 does not know it was removed: {s} {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, st) = n4.client().req("GET", "sys/seal-status", None).await;
    assert_eq!(st["removed_from_cluster"], json!(true), "{st}");
    let (s, v) = n4.client().with_token(&root).req("GET", "sys/mounts", None).await;
    assert_eq!(s, 503, "{v}");
    assert!(err_text(&v).contains("removed"), "{v}");
    // It stays removed across a restart, and the cluster carries on without it.
    n4.restart();
    let (s, v) = health(&n4).await;
    assert_eq!((s, &v["removed_from_cluster"]), (530, &json!(true)), "{v}");
    let (s, v) = c1.req("POST", "sys/mounts/after", Some(json!({"type": "kv"}))).await;
    assert_eq!(s, 204, "the cluster lost its write path: {v}");
    let (s, v) = health(&n1).await;
    assert_eq!((s, &v["removed_from_cluster"]), (200, &json!(false)), "{v}");
    let after = servers(&c1).await;
    assert_eq!(after.len(), 3, "{after:?}");
    assert_eq!(after.iter().filter(|p| p["leader"] == json!(true)).count(), 1, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_json_brings_back_a_lone_survivor() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n1 = Node::raft(&tmp.path().join("n1"), "node1");
    let mut n2 = Node::raft(&tmp.path().join("n2"), "node2");
    let mut n3 = Node::raft(&tmp.path().join("n3"), "node3");
    let (keys, root) = n1.client().init(1, 1).await;
    n1.client().unseal(&keys).await;
    let c1 = n1.client().with_token(&root);
    let (s, v) = c1
        .req("POST", "sys/storage/raft/autopilot/configuration", Some(json!({"server_stabilization_time": "1s"})))
        .await;
    assert_eq!(s, 204, "{v}");
    c1.mount_kv2("kv").await;
    for n in [&n2, &n3] {
        let (s, v) = join(n, &n1.addr, false).await;
        assert_eq!(s, 200, "{v}");
        n.client().unseal(&keys).await;
    }
    wait_for(&c1, "three voters", 30, |s| s.len() == 3 && s.iter().all(|p| p["voter"] == json!(true)))
        .await;
    let (s, v) = c1.req("POST", "kv/data/before", Some(json!({"data": {"v": "old"}}))).await;
    assert_eq!(s, 200, "{v}");

    // Two nodes are lost for good; the survivor alone has no quorum.
    n2.kill9();
    n3.kill9();
    n1.stop();
    let raft_dir = n1.dir.join("data").join("raft");
    std::fs::create_dir_all(&raft_dir).unwrap();
    std::fs::write(
        raft_dir.join("peers.json"),
        json!([{"id": "node1", "address": format!("127.0.0.1:{}", n1.cluster_port), "non_voter": false}])
            .to_string(),
    )
    .unwrap();
    n1.start();
    n1.client().unseal(&keys).await;
    assert!(!raft_dir.join("peers.json").exists(), "peers.json was not consumed");
    assert!(raft_dir.join("peers.info").exists(), "peers.json was not renamed to peers.info");

    // It leads alone, serves the old data and takes new writes.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, _) = c1.req("POST", "kv/data/after", Some(json!({"data": {"v": "new"}}))).await;
        if s == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the survivor does not take writes: {s}\n{}", n1.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (s, v) = c1.req("GET", "kv/data/before", None).await;
    assert_eq!((s, &v["data"]["data"]["v"]), (200, &json!("old")), "{v}");
    let s = servers(&c1).await;
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!((&s[0]["node_id"], &s[0]["leader"], &s[0]["voter"]), (&json!("node1"), &json!(true), &json!(true)));
    // The recovery happens once: a restart keeps the single-node cluster and its data.
    n1.restart();
    n1.client().unseal(&keys).await;
    let (s, v) = c1.req("GET", "kv/data/after", None).await;
    assert_eq!((s, &v["data"]["data"]["v"]), (200, &json!("new")), "{v}");
}
