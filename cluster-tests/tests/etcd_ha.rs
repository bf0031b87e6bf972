//! HA on etcd (issue 7), with real vaultd processes on a real 3-member etcd cluster: one active
//! node and plain standbys (health 429, `performance_standby: false`), writes through a standby
//! forwarded, kill -9 of the active node (a standby takes over within the lock TTL plus 1 s and
//! nothing acknowledged is lost), SIGSTOP of the active node past its lease (its pending write is
//! not acknowledged unless the new active node made it, and it comes back as a standby), split
//! mode (`ha_storage "etcd"`), and etcd unreachable at start and mid-run.
//!
//! Skipped with a message when no etcd binary is installed (`make test` installs Debian's
//! `etcd-server`). Each test uses its own etcd cluster, so they may run in parallel.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cluster_tests::cluster::{quick, quick_client};
use cluster_tests::{free_ports, Api, Node};
use serde_json::{json, Value};
use vaultd_storage::etcd::test_cluster::EtcdTestCluster;

/// The lock TTL the tests run with (etcd's smallest lease is about 2 s anyway).
const LOCK_TTL: Duration = Duration::from_secs(2);
/// How long a poll waits for one node's answer (a killed or stopped node must not stall it).
const QUICK_TIMEOUT: Duration = Duration::from_secs(2);
/// The issue's bound on a take-over after the active node dies.
const TAKEOVER_BOUND: Duration = Duration::from_secs(3);

async fn etcd() -> Option<EtcdTestCluster> {
    match EtcdTestCluster::start(3).await {
        Ok(Some(c)) => Some(c),
        Ok(None) => {
            eprintln!("SKIPPED: no etcd binary (install Debian's etcd-server or set ETCD_BIN)");
            None
        }
        Err(e) => panic!("starting etcd: {e}"),
    }
}

/// A vaultd node on `storage "etcd"` at `path` (and, in split mode, `ha_storage "etcd"` at
/// `ha_path`), plain HTTP on a free port, its cluster listener on the next one.
fn etcd_node(dir: &Path, urls: &[String], path: &str, ha_path: Option<&str>) -> Node {
    std::fs::create_dir_all(dir).expect("mkdir");
    let (port, cluster_port) = free_ports();
    let address = urls.join(",");
    let ttl = LOCK_TTL.as_secs();
    let ha = ha_path.map_or(String::new(), |p| {
        format!("ha_storage \"etcd\" {{\n  address = \"{address}\"\n  path = \"{p}\"\n  lock_ttl = \"{ttl}s\"\n}}\n")
    });
    let config = dir.join("config.hcl");
    std::fs::write(
        &config,
        format!(
            r#"
storage "etcd" {{
  address  = "{address}"
  path     = "{path}"
  lock_ttl = "{ttl}s"
}}
{ha}
listener "tcp" {{
  address         = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_disable     = true
}}
api_addr      = "http://127.0.0.1:{port}"
cluster_addr  = "https://127.0.0.1:{cluster_port}"
disable_mlock = true
"#
        ),
    )
    .expect("write config");
    Node::with_config(dir, config, port, cluster_port, "http", vec![])
}

async fn health(http: &reqwest::Client, addr: &str) -> Option<(u16, Value)> {
    quick(http, addr, "GET", "sys/health", None, None).await
}

/// Waits until exactly one of `addrs` is active and every other answers as a standby; returns
/// the active one's index.
async fn one_active(addrs: &[String], within: Duration) -> usize {
    let http = quick_client(QUICK_TIMEOUT);
    let deadline = Instant::now() + within;
    loop {
        let mut codes = Vec::new();
        for a in addrs {
            codes.push(health(&http, a).await.map(|(s, _)| s));
        }
        let active: Vec<usize> =
            codes.iter().enumerate().filter(|(_, c)| **c == Some(200)).map(|(i, _)| i).collect();
        if active.len() == 1 && codes.iter().all(|c| matches!(c, Some(200 | 429))) {
            return active[0];
        }
        assert!(Instant::now() < deadline, "no single active node among {addrs:?}: {codes:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal(node: &Node, sig: &str) {
    let pid = node.pid().expect("running");
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

async fn write(api: &Api, key: &str, value: &str) -> (u16, Value) {
    api.req("POST", &format!("kv/data/{key}"), Some(json!({ "data": { "v": value } }))).await
}

async fn read(api: &Api, key: &str) -> Option<String> {
    let (s, v) = api.req("GET", &format!("kv/data/{key}"), None).await;
    if s == 404 {
        return None;
    }
    assert_eq!(s, 200, "read {key}: {v}");
    v["data"]["data"]["v"].as_str().map(str::to_string)
}

/// Init on the first node, unseal all, wait for one active node, mount KV v2 there.
async fn form(nodes: &[Node]) -> (Vec<String>, String, usize) {
    let (keys, root) = nodes[0].client().init(1, 1).await;
    for n in nodes {
        n.client().unseal(&keys).await;
    }
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let active = one_active(&addrs, Duration::from_secs(20)).await;
    nodes[active].client().with_token(&root).mount_kv2("kv").await;
    (keys, root, active)
}

/// Kills the active node while a client writes through the others, then checks the take-over
/// time and that every acknowledged write is there.
async fn kill_active_and_check(
    nodes: &mut [Node],
    root: &str,
    active: usize,
    prefix: &str,
) -> usize {
    let others: Vec<usize> = (0..nodes.len()).filter(|i| *i != active).collect();
    let http = quick_client(QUICK_TIMEOUT);
    // Acknowledged before the kill, through the active node and (forwarded) through a standby.
    let mut acked: Vec<(String, String)> = Vec::new();
    for i in 0..10 {
        let via = if i % 2 == 0 { active } else { others[0] };
        let (s, v) =
            write(&nodes[via].client().with_token(root), &format!("{prefix}{i}"), "before").await;
        assert_eq!(s, 200, "write through node {via}: {v}");
        acked.push((format!("{prefix}{i}"), "before".into()));
    }
    nodes[active].kill9();
    let killed = Instant::now();
    let survivors: Vec<String> = others.iter().map(|i| nodes[*i].addr.clone()).collect();
    // The first survivor that acknowledges a write as the active node.
    let mut n = 0;
    let new_active = loop {
        let mut found = None;
        for (k, a) in survivors.iter().enumerate() {
            if let Some((200, _)) = health(&http, a).await {
                let key = format!("{prefix}after{n}");
                n += 1;
                let body = json!({ "data": { "v": "after" } });
                if let Some((200, _)) =
                    quick(&http, a, "POST", &format!("kv/data/{key}"), Some(root), Some(body)).await
                {
                    acked.push((key, "after".into()));
                    found = Some(others[k]);
                    break;
                }
            }
        }
        if let Some(i) = found {
            break i;
        }
        assert!(killed.elapsed() < Duration::from_secs(15), "no node took over");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let took = killed.elapsed();
    eprintln!("etcd take-over after kill -9: {took:?} (lock_ttl {LOCK_TTL:?})");
    assert!(took <= TAKEOVER_BOUND, "take-over took {took:?}, more than lock_ttl + 1 s");
    let api = nodes[new_active].client().with_token(root);
    for (k, v) in &acked {
        assert_eq!(read(&api, k).await.as_deref(), Some(v.as_str()), "acknowledged write {k} lost");
    }
    new_active
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_standby_forwarding_and_kill9() {
    let Some(etcd) = etcd().await else { return };
    let tmp = tempfile::tempdir().unwrap();
    let urls = etcd.client_urls();
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| etcd_node(&tmp.path().join(format!("n{i}")), &urls, "/t-ha/", None))
        .collect();
    assert!(nodes[0].log().contains("Storage: etcd (HA available)"), "{}", nodes[0].log());
    let (_keys, root, active) = form(&nodes).await;

    let http = quick_client(QUICK_TIMEOUT);
    let standby = (active + 1) % 3;
    let (code, h) = health(&http, &nodes[standby].addr).await.expect("health");
    assert_eq!(code, 429, "{h}");
    assert_eq!(
        (h["standby"].clone(), h["performance_standby"].clone()),
        (json!(true), json!(false)),
        "{h}"
    );
    let (_, l) = nodes[standby].client().req("GET", "sys/leader", None).await;
    assert_eq!(l["ha_enabled"], json!(true), "{l}");
    assert_eq!(l["is_self"], json!(false), "{l}");
    assert_eq!(l["leader_address"], json!(nodes[active].addr), "{l}");
    assert!(l.get("raft_applied_index").is_none(), "{l}");
    let (_, l) = nodes[active].client().req("GET", "sys/leader", None).await;
    assert_eq!(
        (l["is_self"].clone(), l["performance_standby"].clone()),
        (json!(true), json!(false)),
        "{l}"
    );

    // A write through a standby is forwarded; a read through it is forwarded too (it does not
    // serve from its own caches) and sees the write at once.
    let via = nodes[standby].client().with_token(&root);
    let (s, v) = write(&via, "fw", "one").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(read(&nodes[active].client().with_token(&root), "fw").await.as_deref(), Some("one"));
    let (s, v) = write(&nodes[active].client().with_token(&root), "fw", "two").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(read(&via, "fw").await.as_deref(), Some("two"));

    let new_active = kill_active_and_check(&mut nodes, &root, active, "k").await;
    // The remaining standby follows the new active node.
    let last = (0..3).find(|i| *i != active && *i != new_active).expect("third node");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Until it sees the new holder, the standby may redirect to the dead node (refused).
        let r = nodes[last]
            .client()
            .with_token(&root)
            .try_req("POST", "kv/data/fw", Some(json!({ "data": { "v": "three" } })))
            .await;
        if matches!(r, Ok((200, _))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the standby does not forward to the new active node: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        read(&nodes[new_active].client().with_token(&root), "fw").await.as_deref(),
        Some("three")
    );

    // Step-down hands over and releases the lock at once.
    let (s, v) =
        nodes[new_active].client().with_token(&root).req("PUT", "sys/step-down", None).await;
    assert_eq!(s, 204, "{v}");
    let addrs = [nodes[new_active].addr.clone(), nodes[last].addr.clone()];
    let stepped = Instant::now();
    let now_active = one_active(&addrs, Duration::from_secs(10)).await;
    assert_eq!(now_active, 1, "the other node takes over after a step-down");
    assert!(
        stepped.elapsed() < LOCK_TTL,
        "step-down waited for the lease: {:?}",
        stepped.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_active_node_is_fenced() {
    let Some(etcd) = etcd().await else { return };
    let tmp = tempfile::tempdir().unwrap();
    let urls = etcd.client_urls();
    let nodes: Vec<Node> = (0..2)
        .map(|i| etcd_node(&tmp.path().join(format!("n{i}")), &urls, "/t-stop/", None))
        .collect();
    let (_keys, root, a) = form(&nodes).await;
    let b = 1 - a;
    let (s, v) = write(&nodes[a].client().with_token(&root), "x", "first").await;
    assert_eq!(s, 200, "{v}");

    signal(&nodes[a], "STOP");
    // A write sent to the paused node waits in its socket until it runs again.
    let old = nodes[a].client().with_token(&root);
    let pending = tokio::spawn(async move {
        old.try_req("POST", "kv/data/x", Some(json!({ "data": { "v": "old" } }))).await
    });
    let stopped = Instant::now();
    let http = quick_client(QUICK_TIMEOUT);
    loop {
        if let Some((200, _)) = health(&http, &nodes[b].addr).await {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "no take-over while the active node is paused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, v) = write(&nodes[b].client().with_token(&root), "x", "new").await;
    assert_eq!(s, 200, "{v}");
    // Past the old node's lease by a margin, then let it run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&nodes[a], "CONT");
    let answer = pending.await.expect("task");
    let acknowledged = matches!(answer, Ok((200, _)));
    eprintln!("the paused node's pending write answered {answer:?}");
    let value = read(&nodes[b].client().with_token(&root), "x").await;
    if acknowledged {
        // Only as a standby forwarding to the new active node may it have been acknowledged.
        assert_eq!(value.as_deref(), Some("old"));
    } else {
        assert_eq!(
            value.as_deref(),
            Some("new"),
            "an unacknowledged write of the old active node landed"
        );
    }
    // The old node comes back as a standby of the new one.
    let addrs = [nodes[0].addr.clone(), nodes[1].addr.clone()];
    assert_eq!(one_active(&addrs, Duration::from_secs(10)).await, b);
    let (s, v) = write(&nodes[a].client().with_token(&root), "x", "via-old").await;
    assert_eq!(s, 200, "the old node forwards now: {v}");
    assert_eq!(read(&nodes[b].client().with_token(&root), "x").await.as_deref(), Some("via-old"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_mode_failover() {
    let Some(etcd) = etcd().await else { return };
    let tmp = tempfile::tempdir().unwrap();
    let urls = etcd.client_urls();
    let mut nodes: Vec<Node> = (0..2)
        .map(|i| {
            etcd_node(&tmp.path().join(format!("n{i}")), &urls, "/split-data/", Some("/split-ha/"))
        })
        .collect();
    let log = nodes[0].log();
    assert!(log.contains("HA Storage: etcd"), "{log}");
    assert!(log.contains("Storage: etcd\n"), "{log}");
    let (_keys, root, active) = form(&nodes).await;
    kill_active_and_check(&mut nodes, &root, active, "s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unreachable_at_start_and_mid_run() {
    let Some(mut etcd) = etcd().await else { return };
    let tmp = tempfile::tempdir().unwrap();
    let urls = etcd.client_urls();
    for i in 0..3 {
        etcd.kill(i);
    }
    // The server starts, says why it cannot serve, and answers (sealed, 503) instead of crashing.
    let node = etcd_node(&tmp.path().join("n0"), &urls, "/t-down/", None);
    assert!(node.log().contains("unreachable"), "{}", node.log());
    let (s, v) = node.client().req("GET", "sys/seal-status", None).await;
    assert_eq!(s, 503, "{v}");
    for i in 0..3 {
        etcd.start_member(i).unwrap();
    }
    etcd.wait_ready(Duration::from_secs(30)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, v) = node.client().req("GET", "sys/seal-status", None).await;
        if s == 200 {
            assert_eq!(v["initialized"], json!(false), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "etcd is back but the node does not serve: {s} {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (keys, root) = node.client().init(1, 1).await;
    node.client().unseal(&keys).await;
    let http = quick_client(QUICK_TIMEOUT);
    let up = Instant::now();
    while !matches!(health(&http, &node.addr).await, Some((200, _))) {
        assert!(up.elapsed() < Duration::from_secs(30), "not active after unseal:\n{}", node.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.client().with_token(&root).mount_kv2("kv").await;
    let api = node.client().with_token(&root);
    assert_eq!(write(&api, "a", "1").await.0, 200);

    // Mid-run: the active node loses its lock and stops acknowledging, then serves again.
    for i in 0..3 {
        etcd.kill(i);
    }
    let down = Instant::now();
    loop {
        if !matches!(health(&http, &node.addr).await, Some((200, _))) {
            break;
        }
        assert!(down.elapsed() < LOCK_TTL + Duration::from_secs(3), "still active with etcd down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = json!({ "data": { "v": "2" } });
    let r = quick(&http, &node.addr, "POST", "kv/data/a", Some(&root), Some(body)).await;
    assert!(!matches!(r, Some((200, _))), "a write was acknowledged with etcd down: {r:?}");
    for i in 0..3 {
        etcd.start_member(i).unwrap();
    }
    etcd.wait_ready(Duration::from_secs(30)).await.unwrap();
    let back = Instant::now();
    loop {
        if let Some((200, _)) = health(&http, &node.addr).await {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "not active again after etcd came back:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The etcd client's connections come back one by one: a first write may still meet one
    // that is reconnecting.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = write(&api, "a", "3").await;
        if s == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "writes do not resume after etcd came back: {s} {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(read(&api, "a").await.as_deref(), Some("3"));
}

/// Vault's rule: a storage without HA and no ha_storage runs as a single node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inmem_has_ha_disabled() {
    let tmp = tempfile::tempdir().unwrap();
    let (port, cluster_port) = free_ports();
    let config = tmp.path().join("config.hcl");
    std::fs::write(
        &config,
        format!("storage \"inmem\" {{}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  tls_disable = true\n}}\n"),
    )
    .unwrap();
    let node = Node::with_config(tmp.path(), config, port, cluster_port, "http", vec![]);
    assert!(node.log().contains("Storage: inmem (HA disabled)"), "{}", node.log());
    let (keys, _root) = node.client().init(1, 1).await;
    node.client().unseal(&keys).await;
    let (s, v) = node.client().req("GET", "sys/leader", None).await;
    assert_eq!((s, v), (200, json!({ "ha_enabled": false })));
}
