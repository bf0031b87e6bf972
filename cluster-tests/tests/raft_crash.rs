//! Crashes under write load (issue 4). Eight clients write distinct KV v2 keys to the leader of a
//! 3-node cluster and record a write only once it is acknowledged (200). A node is killed with
//! SIGKILL mid-stream, so it gets no chance to flush. Whatever was acknowledged must survive:
//! - a killed follower, restarted and unsealed, catches up and serves every acknowledged write,
//!   and the leader has them all;
//! - when the leader is killed, the clients find the new leader by polling `sys/leader` on every
//!   node (followers answer writes with 503) and keep writing; every acknowledged write, before
//!   and after the crash, is on the new leader, and on the old one once it is back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_tests::{Api, Node};
use serde_json::{Value, json};

const CLIENTS: usize = 8;

async fn servers(api: &Api) -> Vec<Value> {
    let (s, v) = api.req("GET", "sys/storage/raft/configuration", None).await;
    assert_eq!(s, 200, "configuration: {v}");
    v["data"]["config"]["servers"].as_array().cloned().unwrap_or_default()
}

/// Three nodes: node 1 initialized, 2 and 3 joined and unsealed, all voters, KV v2 at kv/.
async fn cluster(tmp: &std::path::Path) -> (Vec<Node>, Vec<String>, String) {
    let n1 = Node::raft(&tmp.join("n1"), "node1");
    let n2 = Node::raft(&tmp.join("n2"), "node2");
    let n3 = Node::raft(&tmp.join("n3"), "node3");
    let (keys, root) = n1.client().init(3, 2).await;
    n1.client().unseal(&keys).await;
    n1.client().with_token(&root).fast_autopilot().await;
    n1.client().with_token(&root).mount_kv2("kv").await;
    for n in [&n2, &n3] {
        let (s, v) = n.client().req("POST", "sys/storage/raft/join", Some(json!({ "leader_api_addr": n1.addr }))).await;
        assert_eq!((s, &v["joined"]), (200, &json!(true)), "{v}");
        n.client().unseal(&keys[..2]).await;
    }
    let c1 = n1.client().with_token(&root);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = servers(&c1).await;
        if s.len() == 3 && s.iter().all(|p| p["voter"] == json!(true)) {
            break;
        }
        assert!(Instant::now() < deadline, "no three voters: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (vec![n1, n2, n3], keys, root)
}

/// The acknowledged writes: (key, value).
type Acked = Arc<Mutex<Vec<(String, String)>>>;

/// Polls `sys/leader` on each address until one says it is the leader. Dead nodes refuse the
/// connection at once; a deadline bounds the whole search.
async fn find_leader(addrs: &[String], deadline: Instant) -> Option<String> {
    while Instant::now() < deadline {
        for a in addrs {
            if let Ok((200, l)) = Api::new(a).try_req("GET", "sys/leader", None).await {
                if l["is_self"] == json!(true) {
                    return Some(a.clone());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Starts CLIENTS writers that loop until `stop`: each writes `kv/data/c<client>-<seq>` to the
/// leader it knows, records the write on 200, and on anything else looks for the leader again.
fn start_writers(addrs: Vec<String>, root: String, acked: Acked, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CLIENTS)
        .map(|c| {
            let (addrs, root, acked, stop) = (addrs.clone(), root.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut api = Api::new(&addrs[0]).with_token(&root);
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let (key, val) = (format!("c{c}-{seq}"), format!("v{c}-{seq}"));
                    match api.try_req("POST", &format!("kv/data/{key}"), Some(json!({ "data": { "v": val } }))).await {
                        Ok((200, _)) => acked.lock().expect("lock").push((key, val)),
                        _ => {
                            let deadline = Instant::now() + Duration::from_secs(2);
                            if let Some(l) = find_leader(&addrs, deadline).await {
                                api = Api::new(&l).with_token(&root);
                            }
                        }
                    }
                }
            })
        })
        .collect()
}

/// Waits until at least `n` more writes than `from` are acknowledged.
async fn wait_acked(acked: &Acked, from: usize, n: usize, what: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = acked.lock().expect("lock").len();
        if now >= from + n {
            return now;
        }
        assert!(Instant::now() < deadline, "only {} writes acknowledged {what}", now - from);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every acknowledged write is readable on `api` with its value. A follower applies the log a
/// little after the leader commits, so the first missing key is polled for a while.
async fn check_all(api: &Api, acked: &[(String, String)], who: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for (key, val) in acked {
        loop {
            match api.try_req("GET", &format!("kv/data/{key}"), None).await {
                Ok((200, v)) => {
                    assert_eq!(v["data"]["data"]["v"], json!(val), "{key} on {who}: {v}");
                    break;
                }
                other => assert!(Instant::now() < deadline, "acknowledged write {key} missing on {who}: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_killed_under_write_load_catches_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, keys, root) = cluster(tmp.path()).await;
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(addrs, root.clone(), acked.clone(), stop.clone());

    let n = wait_acked(&acked, 0, 200, "before the crash").await;
    nodes[2].kill9();
    // The remaining two still form a majority: writes go on while the follower is down.
    let n = wait_acked(&acked, n, 300, "with a follower down").await;
    nodes[2].start();
    nodes[2].client().unseal(&keys[..2]).await;
    wait_acked(&acked, n, 200, "after the restart").await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }

    let acked = acked.lock().expect("lock").clone();
    eprintln!("follower crash: {} acknowledged writes ({n} before the restart)", acked.len());
    check_all(&nodes[0].client().with_token(&root), &acked, "the leader").await;
    check_all(&nodes[2].client().with_token(&root), &acked, "the restarted follower").await;
    check_all(&nodes[1].client().with_token(&root), &acked, "the other follower").await;
    assert!(nodes[2].log().matches("==> Vault server started!").count() == 2, "{}", nodes[2].log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_under_write_load_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, keys, root) = cluster(tmp.path()).await;
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(addrs.clone(), root.clone(), acked.clone(), stop.clone());

    let n = wait_acked(&acked, 0, 200, "before the crash").await;
    nodes[0].kill9();
    // The writers find the new leader themselves; they must get going again on it.
    let t = Instant::now();
    wait_acked(&acked, n, 1, "after the leader was killed").await;
    let failover = t.elapsed();
    wait_acked(&acked, n, 300, "after the leader was killed").await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let acked = acked.lock().expect("lock").clone();
    eprintln!("leader crash: {} acknowledged writes ({n} before the crash); writes resumed after {failover:?}", acked.len());

    let leader = find_leader(&addrs[1..], Instant::now() + Duration::from_secs(30)).await.expect("a new leader");
    check_all(&Api::new(&leader).with_token(&root), &acked, "the new leader").await;

    // The old leader comes back as a follower and has everything too.
    nodes[0].start();
    nodes[0].client().unseal(&keys[..2]).await;
    check_all(&nodes[0].client().with_token(&root), &acked, "the restarted old leader").await;
}
