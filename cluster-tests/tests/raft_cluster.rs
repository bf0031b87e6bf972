//! Three real processes form a Raft cluster by join (issue 4): node 1 is initialized, nodes 2 and
//! 3 join it (one through the HTTP API, one through the CLI) and are unsealed with node 1's keys;
//! data written on the leader is readable on every node; a peer can be removed; wrong keys on a
//! joining node fail clearly and leave the cluster unchanged. A node whose config has a
//! `retry_join` stanza finds the cluster by itself and only needs unsealing.

use std::process::Command;
use std::time::{Duration, Instant};

use cluster_tests::{Api, Node, run_cmd, vaultd_bin};
use serde_json::{Value, json};

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

/// Polls the leader's configuration until `pred` holds (promotion to voter runs in the
/// background after a join).
async fn wait_servers(api: &Api, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    // Autopilot promotes a joined node after Vault's 10 s server_stabilization_time.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let s = servers(api).await;
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads `path` on `api` until it answers 200 (a follower applies the leader's log shortly after).
async fn read_eventually(api: &Api, path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (s, v) = api.req("GET", path, None).await;
        if s == 200 {
            return v;
        }
        assert!(Instant::now() < deadline, "{path} on {}: {s} {v}", api.addr);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_by_join() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n1 = Node::raft(&tmp.path().join("n1"), "node1");
    let mut n2 = Node::raft(&tmp.path().join("n2"), "node2");
    let n3 = Node::raft(&tmp.path().join("n3"), "node3");

    let (keys, root) = n1.client().init(3, 2).await;
    n1.client().unseal(&keys).await;
    n1.client().with_token(&root).fast_autopilot().await;
    let c1 = n1.client().with_token(&root);
    c1.mount_kv2("kv").await;

    // Node 2 joins through the HTTP API. It then reports the cluster's seal configuration.
    let (s, v) = n2
        .client()
        .req("POST", "sys/storage/raft/join", Some(json!({ "leader_api_addr": n1.addr })))
        .await;
    assert_eq!((s, &v["joined"]), (200, &Value::Bool(true)), "{v}");
    let (_, st) = n2.client().req("GET", "sys/seal-status", None).await;
    assert_eq!(
        (st["initialized"].clone(), st["sealed"].clone(), st["t"].clone()),
        (json!(true), json!(true), json!(2)),
        "{st}"
    );
    // A second init on a joining node is refused.
    let (s, _) = n2
        .client()
        .req("PUT", "sys/init", Some(json!({"secret_shares": 1, "secret_threshold": 1})))
        .await;
    assert_eq!(s, 400);
    n2.client().unseal(&keys[..2]).await;

    // An unreachable leader: a clear error, and the node stays uninitialized.
    let (s, v) = n3
        .client()
        .req(
            "POST",
            "sys/storage/raft/join",
            Some(json!({ "leader_api_addr": "http://127.0.0.1:1" })),
        )
        .await;
    assert_eq!(s, 500, "{v}");
    assert!(v["errors"][0].as_str().unwrap_or("").contains("failed to join raft cluster"), "{v}");
    let (_, st) = n3.client().req("GET", "sys/seal-status", None).await;
    assert_eq!(st["initialized"], json!(false), "{st}");

    // Node 3 joins through the CLI (the `join` alias of `operator raft join`).
    let (code, out, err) = run_cmd(vaultd(&n3.addr, None).args(["join", &n1.addr]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Joined") && out.contains("true"), "{out}");

    // Wrong keys: a clear 400, nothing sent to the leader, the join stays pending.
    let wrong = [format!("01{}01", "ab".repeat(31)), format!("02{}02", "cd".repeat(31))];
    let (s, _) = n3.client().req("PUT", "sys/unseal", Some(json!({ "key": wrong[0] }))).await;
    assert_eq!(s, 200);
    let (s, v) = n3.client().req("PUT", "sys/unseal", Some(json!({ "key": wrong[1] }))).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["errors"][0].as_str().unwrap_or("").contains("invalid key"), "{v}");
    let s1 = servers(&c1).await;
    assert_eq!(s1.len(), 2, "the wrong keys changed the cluster: {s1:?}");
    n3.client().unseal(&keys[1..3]).await;

    // Three voters, one leader (node 1), as the API and the CLI show them.
    let all = wait_servers(&c1, "three voters", |s| {
        s.len() == 3 && s.iter().all(|p| p["voter"] == json!(true))
    })
    .await;
    let leaders: Vec<&Value> = all.iter().filter(|p| p["leader"] == json!(true)).collect();
    assert_eq!(leaders.len(), 1, "{all:?}");
    assert_eq!(leaders[0]["node_id"], "node1");
    assert_eq!(leaders[0]["protocol_version"], "3");
    let (code, out, err) =
        run_cmd(vaultd(&n1.addr, Some(&root)).args(["operator", "raft", "list-peers"]));
    assert_eq!(code, 0, "{out}{err}");
    let header = out.lines().next().unwrap_or("");
    assert!(
        header.starts_with("Node")
            && header.contains("Address")
            && header.contains("State")
            && header.contains("Voter"),
        "{out}"
    );
    for n in ["node1", "node2", "node3"] {
        assert!(out.contains(n), "{out}");
    }
    assert_eq!(out.matches("leader").count(), 1, "{out}");
    assert_eq!(out.matches("follower").count(), 2, "{out}");

    // A write on the leader is readable from each follower's own API.
    let (s, v) =
        c1.req("POST", "kv/data/shared", Some(json!({ "data": { "v": "replicated" } }))).await;
    assert_eq!(s, 200, "{v}");
    for n in [&n2, &n3] {
        let v = read_eventually(&n.client().with_token(&root), "kv/data/shared").await;
        assert_eq!(v["data"]["data"]["v"], "replicated", "{v}");
    }

    // Followers follow later changes too: a mount enabled after they joined, a revoked token.
    let (s, v) = c1
        .req("POST", "sys/mounts/later", Some(json!({"type": "kv", "options": {"version": "2"}})))
        .await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = c1.req("POST", "later/data/k", Some(json!({ "data": { "v": "late" } }))).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = c1.req("POST", "auth/token/create", Some(json!({ "policies": ["root"] }))).await;
    assert_eq!(s, 200, "{v}");
    let child = v["auth"]["client_token"].as_str().unwrap().to_string();
    for n in [&n2, &n3] {
        let v = read_eventually(&n.client().with_token(&child), "later/data/k").await;
        assert_eq!(v["data"]["data"]["v"], "late", "{v}");
    }
    let (s, v) = c1.req("POST", "auth/token/revoke", Some(json!({ "token": child }))).await;
    assert_eq!(s, 204, "{v}");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (s, _) = n2.client().with_token(&child).req("GET", "later/data/k", None).await;
        if s == 403 {
            break;
        }
        assert!(Instant::now() < deadline, "a revoked token still works on a follower: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A follower names the leader and forwards writes to it.
    let (s, l) = n2.client().req("GET", "sys/leader", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        (l["is_self"].clone(), l["leader_address"].clone()),
        (json!(false), json!(n1.addr)),
        "{l}"
    );
    let (s, v) = n2
        .client()
        .with_token(&root)
        .req("POST", "kv/data/other", Some(json!({ "data": { "v": "x" } })))
        .await;
    // A standby forwards the write to the active node (issue 5).
    assert_eq!(s, 200, "{v}");

    // remove-peer: errors first, then node 3 goes.
    let (s, v) = c1.req("POST", "sys/storage/raft/remove-peer", Some(json!({}))).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["errors"][0], "no server id provided");
    let (s, _) =
        c1.req("POST", "sys/storage/raft/remove-peer", Some(json!({ "server_id": "nope" }))).await;
    assert_eq!(s, 400);
    let (s, _) = n1
        .client()
        .req("POST", "sys/storage/raft/remove-peer", Some(json!({ "server_id": "node3" })))
        .await;
    assert_eq!(s, 403, "remove-peer needs a token");
    let (code, out, err) =
        run_cmd(vaultd(&n1.addr, Some(&root)).args(["operator", "raft", "remove-peer", "node3"]));
    assert_eq!(code, 0, "{out}{err}");
    let left = wait_servers(&c1, "two peers", |s| s.len() == 2).await;
    assert!(left.iter().all(|p| p["node_id"] != "node3"), "{left:?}");

    // The two-node cluster still commits.
    let (s, v) = c1.req("POST", "kv/data/after", Some(json!({ "data": { "v": "2" } }))).await;
    assert_eq!(s, 200, "{v}");
    let v = read_eventually(&n2.client().with_token(&root), "kv/data/after").await;
    assert_eq!(v["data"]["data"]["v"], "2");

    // The whole cluster restarts: each node unseals on its own (the first one cannot reach a
    // quorum until the second is unsealed), then the cluster elects a leader and commits again.
    n1.restart();
    n2.restart();
    n1.client().unseal(&keys[..2]).await;
    n2.client().unseal(&keys[..2]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut written = false;
        for n in [&n1, &n2] {
            let (s, _) = n
                .client()
                .with_token(&root)
                .req("POST", "kv/data/restarted", Some(json!({ "data": { "v": "3" } })))
                .await;
            written |= s == 200;
        }
        if written {
            break;
        }
        assert!(Instant::now() < deadline, "no node accepts writes after the restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for n in [&n1, &n2] {
        let v = read_eventually(&n.client().with_token(&root), "kv/data/restarted").await;
        assert_eq!(v["data"]["data"]["v"], "3", "{v}");
        let v = read_eventually(&n.client().with_token(&root), "kv/data/shared").await;
        assert_eq!(v["data"]["data"]["v"], "replicated", "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_join_stanza_joins_on_start() {
    let tmp = tempfile::tempdir().unwrap();
    let n1 = Node::raft(&tmp.path().join("n1"), "node1");
    let (keys, root) = n1.client().init(3, 2).await;
    n1.client().unseal(&keys).await;
    n1.client().with_token(&root).fast_autopilot().await;
    let c1 = n1.client().with_token(&root);
    c1.mount_kv2("kv").await;
    let (s, v) = c1.req("POST", "kv/data/before", Some(json!({ "data": { "v": "n1" } }))).await;
    assert_eq!(s, 200, "{v}");

    // Node 2 names node 1 (and an unreachable leader first, which it skips past) in its config.
    let lines = format!(
        "  retry_join {{\n    leader_api_addr = \"http://127.0.0.1:1\"\n  }}\n  retry_join {{\n    leader_api_addr = \"{}\"\n  }}",
        n1.addr
    );
    let n2 = Node::raft_with(&tmp.path().join("n2"), "node2", &lines);

    // Without any join call, it soon reports node 1's seal configuration.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, st) = n2.client().req("GET", "sys/seal-status", None).await;
        if st["initialized"] == json!(true) {
            assert_eq!((st["sealed"].clone(), st["t"].clone()), (json!(true), json!(2)), "{st}");
            break;
        }
        assert!(Instant::now() < deadline, "retry_join did not reach node 1: {st}\n{}", n2.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(n2.log().contains("retry_join: attempt failed"), "{}", n2.log());

    // Node 1's keys finish the join; node 2 becomes a voter and serves node 1's data.
    n2.client().unseal(&keys[1..3]).await;
    wait_servers(&c1, "two voters", |s| {
        s.len() == 2 && s.iter().all(|p| p["voter"] == json!(true))
    })
    .await;
    let (code, out, err) =
        run_cmd(vaultd(&n1.addr, Some(&root)).args(["operator", "raft", "list-peers"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("node2") && out.matches("follower").count() == 1, "{out}");
    let v = read_eventually(&n2.client().with_token(&root), "kv/data/before").await;
    assert_eq!(v["data"]["data"]["v"], "n1", "{v}");
    let (s, v) = c1.req("POST", "kv/data/after", Some(json!({ "data": { "v": "later" } }))).await;
    assert_eq!(s, 200, "{v}");
    let v = read_eventually(&n2.client().with_token(&root), "kv/data/after").await;
    assert_eq!(v["data"]["data"]["v"], "later", "{v}");
    assert!(!n2.log().contains("BEGIN CERTIFICATE"), "the log shows TLS material");
}
