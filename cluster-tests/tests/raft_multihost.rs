//! The 3-node join test with each node on its own "host": a network namespace with its own
//! address on a bridge, so nothing rides on a shared loopback and the advertised addresses are
//! the ones peers really dial (issue 4). Then the leader's link is cut and restored, and the
//! cluster is checked to still hold every write. Needs root and `ip netns`; otherwise the test
//! prints `SKIPPED: ...` to stderr and returns.

use std::process::Command;
use std::time::{Duration, Instant};

use cluster_tests::netns::{self, Netns};
use cluster_tests::{Api, Node, run_cmd, vaultd_bin};
use serde_json::{Value, json};

/// The vaultd CLI run inside node `i`'s namespace, as an operator logged into that host would.
fn vaultd_on(net: &Netns, i: usize, addr: &str, token: Option<&str>) -> Command {
    let prefix = net.exec_prefix(i);
    let mut c = Command::new(&prefix[0]);
    c.args(&prefix[1..])
        .arg(vaultd_bin())
        .env("VAULT_ADDR", addr)
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

async fn wait_servers(api: &Api, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = servers(api).await;
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads `path` on `api` until it answers 200 with `want` as `data.data.v`.
async fn read_eventually(api: &Api, path: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = api.try_req("GET", path, None).await;
        if let Ok((200, v)) = &r {
            assert_eq!(v["data"]["data"]["v"], want, "{path} on {}: {v}", api.addr);
            return;
        }
        assert!(Instant::now() < deadline, "{path} on {}: {r:?}", api.addr);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `sys/leader` on `nodes` until one of them says it is the leader; returns its index.
async fn find_leader(nodes: &[&Node], among: &[usize]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for &i in among {
            let api = Api::new(&nodes[i].addr);
            if let Ok((200, l)) = api.try_req("GET", "sys/leader", None).await {
                if l["is_self"] == json!(true) {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader among nodes {among:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes `kv/data/<key>` on whichever of `among` is the leader, retrying through elections.
async fn write_on_leader(nodes: &[&Node], among: &[usize], root: &str, key: &str, v: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let i = find_leader(nodes, among).await;
        let api = Api::new(&nodes[i].addr).with_token(root);
        match api.try_req("POST", &format!("kv/data/{key}"), Some(json!({ "data": { "v": v } }))).await {
            Ok((200, _)) => return i,
            other => assert!(Instant::now() < deadline, "write {key} on node {i}: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_join_replicate_and_survive_a_partition() {
    if !netns::skip_unless_available("three_hosts_join_replicate_and_survive_a_partition") {
        return;
    }
    let net = Netns::new(3).expect("network namespaces");
    let tmp = tempfile::tempdir().unwrap();
    let n1 = net.node(0, &tmp.path().join("n1"), "node1", "");
    let n2 = net.node(1, &tmp.path().join("n2"), "node2", "");
    let n3 = net.node(2, &tmp.path().join("n3"), "node3", "");
    let nodes = [&n1, &n2, &n3];
    assert_eq!(n1.addr, format!("http://{}:8200", net.ip(0)));

    let (keys, root) = n1.client().init(3, 2).await;
    n1.client().unseal(&keys).await;
    n1.client().with_token(&root).fast_autopilot().await;
    let c1 = n1.client().with_token(&root);
    c1.mount_kv2("kv").await;

    // Nodes 2 and 3 join from their own hosts through the CLI, then take the cluster's keys.
    for (i, n) in [(1, &n2), (2, &n3)] {
        let (code, out, err) = run_cmd(vaultd_on(&net, i, &n.addr, None).args(["operator", "raft", "join", &n1.addr]));
        assert_eq!(code, 0, "{out}{err}\n{}", n.log());
        assert!(out.contains("Joined") && out.contains("true"), "{out}");
        n.client().unseal(&keys[1..3]).await;
    }

    // All voters, each at its own host's cluster address; list-peers says the same.
    let all = wait_servers(&c1, "three voters", |s| {
        s.len() == 3 && s.iter().all(|p| p["voter"] == json!(true))
    })
    .await;
    let (code, out, err) =
        run_cmd(vaultd_on(&net, 0, &n1.addr, Some(&root)).args(["operator", "raft", "list-peers"]));
    assert_eq!(code, 0, "{out}{err}");
    for (i, id) in ["node1", "node2", "node3"].iter().enumerate() {
        let p = all.iter().find(|p| p["node_id"] == *id).unwrap_or_else(|| panic!("{id} missing: {all:?}"));
        let address = format!("{}:8201", net.ip(i));
        assert_eq!(p["address"], json!(address), "{p}");
        let state = if p["leader"] == json!(true) { "leader" } else { "follower" };
        let row = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_else(|| panic!("{id} not in list-peers:\n{out}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols, [id, address.as_str(), state, "true"], "list-peers disagrees with configuration:\n{out}\n{all:?}");
    }

    // A write on the leader is in every node's local store (followers serve reads locally).
    let (s, v) = c1.req("POST", "kv/data/shared", Some(json!({ "data": { "v": "replicated" } }))).await;
    assert_eq!(s, 200, "{v}");
    for n in nodes {
        read_eventually(&n.client().with_token(&root), "kv/data/shared", "replicated").await;
    }

    // Cut the leader off: the other two elect a leader between them and keep committing.
    let old = find_leader(&nodes, &[0, 1, 2]).await;
    let rest: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    net.partition(old).expect("partition");
    let during = write_on_leader(&nodes, &rest, &root, "during", "partitioned").await;
    assert_ne!(during, old);

    // Heal: the old leader rejoins as a follower and catches up; nothing written is lost.
    net.heal(old).expect("heal");
    let after = write_on_leader(&nodes, &[0, 1, 2], &root, "after", "healed").await;
    for n in nodes {
        let api = n.client().with_token(&root);
        read_eventually(&api, "kv/data/shared", "replicated").await;
        read_eventually(&api, "kv/data/during", "partitioned").await;
        read_eventually(&api, "kv/data/after", "healed").await;
    }
    let all = wait_servers(&nodes[after].client().with_token(&root), "three voters after the heal", |s| {
        s.len() == 3 && s.iter().all(|p| p["voter"] == json!(true))
    })
    .await;
    assert_eq!(all.iter().filter(|p| p["leader"] == json!(true)).count(), 1, "{all:?}");
}

/// The harness itself: namespaces reach each other and the test; a partition cuts a node off and
/// a heal restores it; nothing is left behind after drop.
#[test]
fn namespaces_connect_partition_heal_and_clean_up() {
    if !netns::skip_unless_available("namespaces_connect_partition_heal_and_clean_up") {
        return;
    }
    let ping = |net: &Netns, from: usize, to: String| {
        let prefix = net.exec_prefix(from);
        Command::new(&prefix[0])
            .args(&prefix[1..])
            .args(["ip", "neigh", "flush", "all"])
            .status()
            .expect("ip neigh");
        // One probe, one second: a TCP connect to a closed port answers (RST) only if it arrives.
        let (code, out, err) = run_cmd(
            Command::new(&prefix[0])
                .args(&prefix[1..])
                .args(["bash", "-c", &format!("timeout 1 bash -c '</dev/tcp/{to}/9' 2>&1; true")]),
        );
        assert_eq!(code, 0, "{out}{err}");
        out.contains("refused")
    };
    let net = Netns::new(2).expect("network namespaces");
    let names: Vec<String> = (0..2).map(|i| net.ns(i).to_string()).collect();
    assert!(ping(&net, 0, net.ip(1)), "node 0 cannot reach node 1");
    net.partition(1).expect("partition");
    assert!(!ping(&net, 0, net.ip(1)), "node 1 is still reachable while partitioned");
    net.heal(1).expect("heal");
    assert!(ping(&net, 0, net.ip(1)), "node 1 is unreachable after the heal");
    drop(net);
    let (_, list, _) = run_cmd(Command::new("ip").args(["netns", "list"]));
    for n in names {
        assert!(!list.contains(&n), "{n} left behind: {list}");
    }
}
