//! Active/standby HA on Raft leadership (issue 5), with three real processes: exactly one node is
//! active; `sys/leader`, `sys/ha-status` and `sys/health` on the active node, a standby and a
//! sealed node; step-down and sealing the active node hand over; kill -9 of the active node
//! while clients write; the leader lease when both standbys stall (SIGSTOP). Throughout, a
//! watcher polls every node and fails the test if two nodes ever report active at once.
//!
//! Clients find the active node through `sys/leader` on each node (request forwarding through
//! any node comes with the forwarding branch). The tests run one at a time (a lock): timing on a
//! loaded 2-core machine is what they measure.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_tests::cluster::{quick, quick_client, Cluster};
use cluster_tests::{run_cmd, vaultd_bin, Api, Node};
use serde_json::json;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The bound on a hand-over the issue sets (new active node, acknowledged writes).
const HANDOVER_BOUND: Duration = Duration::from_secs(2);

fn vaultd(addr: &str, token: Option<&str>) -> Command {
    let mut c = Command::new(vaultd_bin());
    c.env("VAULT_ADDR", addr).env_remove("BAO_ADDR").env_remove("BAO_TOKEN").env("HOME", "/nonexistent");
    match token {
        Some(t) => c.env("VAULT_TOKEN", t),
        None => c.env_remove("VAULT_TOKEN"),
    };
    c
}

fn signal(node: &Node, sig: &str) {
    let pid = node.pid().expect("running");
    let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().expect("kill").success();
    assert!(ok, "kill -{sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_step_down_and_seal_hand_over() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(3).await;
    let watch = c.watch_single_active(Duration::from_millis(300));
    let a = c.settled(Duration::from_secs(10)).await;
    let s = (0..3).find(|&i| i != a).unwrap();
    let (active, standby) = (c.nodes[a].client(), c.nodes[s].client());

    // sys/leader, answered locally on every node.
    let (code, l) = active.req("GET", "sys/leader", None).await;
    assert_eq!(code, 200);
    assert_eq!((&l["ha_enabled"], &l["is_self"], &l["performance_standby"]), (&json!(true), &json!(true), &json!(false)), "{l}");
    assert_eq!(l["leader_address"], json!(c.nodes[a].addr));
    assert_eq!(l["leader_cluster_address"], json!(format!("https://127.0.0.1:{}", c.nodes[a].cluster_port)));
    assert!(l["active_time"].as_str().is_some_and(|t| t.starts_with("20")), "{l}");
    assert!(l["raft_committed_index"].as_u64().unwrap() > 0 && l["raft_applied_index"].as_u64().unwrap() > 0, "{l}");
    let (_, l) = standby.req("GET", "sys/leader", None).await;
    assert_eq!((&l["is_self"], &l["leader_address"]), (&json!(false), &json!(c.nodes[a].addr)), "{l}");
    assert_eq!(l["leader_cluster_address"], json!(format!("https://127.0.0.1:{}", c.nodes[a].cluster_port)));
    assert!(l.get("active_time").is_none(), "a standby omits active_time, as OpenBao: {l}");
    assert!(l["raft_applied_index"].as_u64().unwrap() > 0, "{l}");

    // sys/health: 200 active, 473 performance standby (issue 6), and the overrides.
    assert_eq!(active.req("GET", "sys/health", None).await.0, 200);
    let (code, h) = standby.req("GET", "sys/health", None).await;
    assert_eq!(code, 473);
    assert_eq!((&h["standby"], &h["sealed"], &h["performance_standby"]), (&json!(true), &json!(false), &json!(true)), "{h}");
    assert_eq!(standby.req("GET", "sys/health?perfstandbyok=true", None).await.0, 200);
    assert_eq!(standby.req("GET", "sys/health?standbycode=299&sealedcode=299&uninitcode=299&drsecondarycode=299&performancestandbycode=299&removedcode=299&haunhealthycode=299", None).await.0, 299);
    assert_eq!(standby.req("GET", "sys/health?perfstandbyok=true&activecode=204", None).await.0, 204);
    assert_eq!(standby.req("GET", "sys/health?standbycode=abc", None).await.0, 400);
    assert_eq!(active.req("GET", "sys/health?activecode=202", None).await.0, 202);

    // sys/ha-status on the active node: every node, the active one marked, echoes from the others.
    let root = active.clone().with_token(&c.root);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, v) = root.req("GET", "sys/ha-status", None).await;
        assert_eq!(code, 200, "{v}");
        let nodes = v["data"]["nodes"].as_array().cloned().unwrap_or_default();
        assert_eq!(nodes.len(), 3, "{v}");
        assert_eq!(v["nodes"], v["data"]["nodes"], "injected at the top level too");
        let act: Vec<_> = nodes.iter().filter(|n| n["active_node"] == json!(true)).collect();
        assert_eq!(act.len(), 1, "{v}");
        assert_eq!(act[0]["api_address"], json!(c.nodes[a].addr));
        assert!(act[0]["last_echo"].is_null(), "{v}");
        let mut sorted = nodes.clone();
        sorted.sort_by(|x, y| x["api_address"].as_str().cmp(&y["api_address"].as_str()));
        assert_eq!(sorted, nodes, "sorted by api_address");
        for n in &nodes {
            assert!(n["cluster_address"].as_str().unwrap().starts_with("https://127.0.0.1:"), "{n}");
            assert!(n["hostname"].is_string() && n["version"].is_string(), "{n}");
        }
        if nodes.iter().filter(|n| n["active_node"] == json!(false)).all(|n| n["last_echo"].is_string()) {
            break;
        }
        assert!(Instant::now() < deadline, "no echoes from the standbys: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(active.req("GET", "sys/ha-status", None).await.0, 403, "needs a token");

    // A standby refuses to seal (Vault: restart it instead).
    let (code, v) = standby.clone().with_token(&c.root).req("PUT", "sys/seal", None).await;
    assert_eq!(code, 500, "{v}");
    assert!(v["errors"][0].as_str().unwrap().contains("cannot seal when in standby mode"), "{v}");

    // `vaultd status` shows the HA rows as `bao status` does.
    let (code, out, err) = run_cmd(vaultd(&c.nodes[a].addr, None).arg("status"));
    assert_eq!(code, 0, "{out}{err}");
    for row in ["HA Enabled", "HA Cluster", "HA Mode", "Active Since", "Raft Committed Index", "Raft Applied Index"] {
        assert!(out.contains(row), "{row} missing:\n{out}");
    }
    assert!(out.lines().any(|l| l.starts_with("HA Mode") && l.trim_end().ends_with("active")), "{out}");
    let (_, out, _) = run_cmd(vaultd(&c.nodes[s].addr, None).arg("status"));
    assert!(out.lines().any(|l| l.starts_with("HA Mode") && l.trim_end().ends_with("standby")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("Active Node Address") && l.contains(&c.nodes[a].addr)), "{out}");

    // Step-down through the CLI: another node becomes active.
    let (code, out, err) = run_cmd(vaultd(&c.nodes[a].addr, Some(&c.root)).args(["operator", "step-down"]));
    let t0 = Instant::now();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Success! Stepped down: "), "{out}");
    let (b, took) = c.new_active(a, t0, Duration::from_secs(10)).await;
    println!("step-down hand-over: {took:?} (node{} -> node{})", a + 1, b + 1);
    assert!(took < HANDOVER_BOUND + Duration::from_millis(500), "step-down hand-over took {took:?}");
    let b_root = c.nodes[b].client().with_token(&c.root);
    let (code, v) = b_root.req("PUT", "kv/data/after-step-down", Some(json!({"data": {"v": 1}}))).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(c.settled(Duration::from_secs(10)).await, b);

    // Sealing the active node hands over too.
    let (code, v) = b_root.req("PUT", "sys/seal", None).await;
    let t0 = Instant::now();
    assert_eq!(code, 204, "{v}");
    let (d, took) = c.new_active(b, t0, Duration::from_secs(10)).await;
    println!("seal hand-over: {took:?} (node{} -> node{})", b + 1, d + 1);
    assert!(took < HANDOVER_BOUND + Duration::from_millis(500), "seal hand-over took {took:?}");

    // The sealed node answers only the lifecycle endpoints.
    let sealed = c.nodes[b].client();
    assert_eq!(sealed.req("GET", "sys/health", None).await.0, 503);
    let (code, v) = sealed.req("GET", "sys/leader", None).await;
    assert_eq!((code, &v["errors"][0]), (503, &json!("Vault is sealed")), "{v}");
    let (code, v) = sealed.req("GET", "sys/seal-status", None).await;
    assert_eq!((code, &v["sealed"]), (200, &json!(true)));
    assert_eq!(sealed.clone().with_token(&c.root).req("GET", "sys/mounts", None).await.0, 503);
    assert_eq!(sealed.req("GET", "sys/init", None).await.0, 200);
    let (code, h) = sealed.req("GET", "sys/health", None).await;
    assert_eq!(code, 503, "{h}");
    // Its cluster port is closed.
    assert!(std::net::TcpStream::connect(("127.0.0.1", c.nodes[b].cluster_port)).is_err(), "a sealed node's cluster port is closed");

    // Unsealed again, it becomes a standby of the new active node, and has the data.
    sealed.unseal(&c.keys).await;
    assert_eq!(c.settled(Duration::from_secs(10)).await, d);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, _) = sealed.req("GET", "sys/health", None).await;
        if code == 473 {
            break;
        }
        assert!(Instant::now() < deadline, "unsealed node is no standby: {code}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, v) = c.nodes[d].client().with_token(&c.root).req("GET", "kv/data/after-step-down", None).await;
    assert_eq!((code, &v["data"]["data"]["v"]), (200, &json!(1)), "{v}");
    watch.finish().await;
}

/// Writers that find the active node through `sys/leader` and record every acknowledged write.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, Instant)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn start_writers(addrs: Vec<String>, token: &str, n: usize, timeout: Duration) -> Writers {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let tasks = (0..n)
        .map(|w| {
            let (stop, acked, addrs, token) = (stop.clone(), acked.clone(), addrs.clone(), token.to_string());
            tokio::spawn(async move {
                let http = quick_client(timeout);
                let mut target: Option<String> = None;
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let Some(addr) = target.clone() else {
                        for a in &addrs {
                            if let Some((200, v)) = quick(&http, a, "GET", "sys/leader", None, None).await {
                                if v["is_self"] == json!(true) {
                                    target = Some(a.clone());
                                    break;
                                }
                            }
                        }
                        if target.is_none() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        continue;
                    };
                    let key = format!("w{w}-{i}");
                    i += 1;
                    match quick(&http, &addr, "PUT", &format!("kv/data/{key}"), Some(&token), Some(json!({"data": {"k": key}}))).await {
                        Some((200, _)) => acked.lock().unwrap().push((key, Instant::now())),
                        _ => target = None,
                    }
                }
            })
        })
        .collect();
    Writers { stop, acked, tasks }
}

impl Writers {
    async fn stop(self) -> Vec<(String, Instant)> {
        self.stop.store(true, Ordering::Release);
        for t in self.tasks {
            let _ = t.await;
        }
        let v = self.acked.lock().unwrap().clone();
        v
    }

    fn first_ack_after(&self, t: Instant) -> Option<Instant> {
        self.acked.lock().unwrap().iter().map(|(_, at)| *at).filter(|at| *at > t).min()
    }
}

async fn all_readable(api: &Api, acked: &[(String, Instant)]) {
    for (key, _) in acked {
        let (code, v) = api.req("GET", &format!("kv/data/{key}"), None).await;
        assert_eq!((code, &v["data"]["data"]["k"]), (200, &json!(key)), "acknowledged write {key} lost: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_active_node_under_writes() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3).await;
    let watch = c.watch_single_active(Duration::from_millis(300));
    let a = c.settled(Duration::from_secs(10)).await;
    let writers = start_writers(c.addrs(), &c.root, 4, Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(10);
    while writers.acked.lock().unwrap().len() < 50 {
        assert!(Instant::now() < deadline, "writers make no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.nodes[a].kill9();
    let t0 = Instant::now();
    let took = loop {
        if let Some(at) = writers.first_ack_after(t0) {
            break at - t0;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no write acknowledged after the kill");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("kill -9 of the active node: writes acknowledged again after {took:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked = writers.stop().await;
    watch.finish().await;
    assert!(took < HANDOVER_BOUND + Duration::from_millis(500), "fail-over took {took:?}");
    let b = c.settled(Duration::from_secs(10)).await;
    assert_ne!(a, b);
    all_readable(&c.nodes[b].client().with_token(&c.root), &acked).await;
    println!("{} acknowledged writes all readable", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_lease_when_both_standbys_stall() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(3).await;
    let watch = c.watch_single_active(Duration::from_millis(300));
    let a = c.settled(Duration::from_secs(10)).await;
    let writers = start_writers(vec![c.nodes[a].addr.clone()], &c.root, 2, Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(10);
    while writers.acked.lock().unwrap().len() < 20 {
        assert!(Instant::now() < deadline, "writers make no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let standbys: Vec<usize> = (0..3).filter(|&i| i != a).collect();
    for &s in &standbys {
        signal(&c.nodes[s], "STOP");
    }
    let t0 = Instant::now();
    let http = quick_client(Duration::from_millis(300));
    let stopped_after = loop {
        match quick(&http, &c.nodes[a].addr, "GET", "sys/health", None, None).await {
            Some((200, _)) => {}
            _ => break t0.elapsed(),
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "the isolated active node keeps reporting active");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("leader lease: the active node stopped serving {stopped_after:?} after its standbys stalled");
    assert!(stopped_after < Duration::from_millis(1500), "took {stopped_after:?}");
    // While stalled: nothing served, nothing acknowledged.
    let root = Api::new(&c.nodes[a].addr).with_token(&c.root);
    let (code, v) = root.req("GET", "kv/data/w0-0", None).await;
    // 503 from the core; 500 "active cluster node not found" once the forwarding hook answers.
    assert!(code == 503 || code == 500, "a node past its lease serves no reads: {code} {v}");
    let stall_end = Instant::now() + Duration::from_secs(2);
    let quiet_from = t0 + Duration::from_millis(1500);
    tokio::time::sleep_until(stall_end.into()).await;
    let during: Vec<_> = writers.acked.lock().unwrap().iter().filter(|(_, at)| *at > quiet_from && *at < stall_end).cloned().collect();
    assert!(during.is_empty(), "writes acknowledged while the active node had no quorum: {during:?}");
    for &s in &standbys {
        signal(&c.nodes[s], "CONT");
    }
    let t1 = Instant::now();
    let resumed = loop {
        if let Some(at) = writers.first_ack_after(t1) {
            break at - t1;
        }
        let actives = c.actives().await;
        if let [b] = actives[..] {
            if b != a {
                // Another node won an election on resuming: write through it instead.
                break t1.elapsed();
            }
        }
        assert!(t1.elapsed() < Duration::from_secs(10), "service did not resume");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("leader lease: service resumed {resumed:?} after SIGCONT");
    let acked = writers.stop().await;
    watch.finish().await;
    let b = c.settled(Duration::from_secs(10)).await;
    let api = c.nodes[b].client().with_token(&c.root);
    let (code, v) = api.req("PUT", "kv/data/after-stall", Some(json!({"data": {"k": "after-stall"}}))).await;
    assert_eq!(code, 200, "{v}");
    all_readable(&api, &acked).await;
}
