//! Issue 6's partition must-hold: a linearizable read after a partition of the old active node
//! never returns a value older than an acknowledged write. Three "hosts" (network namespaces on
//! a bridge); the active node A is cut off from its peers while the test, in the root
//! namespace, still reaches every node.
//!
//! Scripted, on one key: v1 written through A; A cut off; the majority elects a new active node
//! N; v2 written through N and acknowledged. Then a linearizable read on A fails with an error
//! within a bound (never a stale 200), the same read on N and on the other standby returns v2,
//! and an eventual read on A may return v1 but then says how far behind it is
//! (`X-Vault-Applied-Index` below N's). After the heal A is a standby whose linearizable read
//! returns v2.
//!
//! Throughout, on another key: a writer per node (a standby forwards) and a linearizable reader
//! per node, every attempt recorded with its start and end. The check: a read that succeeded
//! saw at least the KV v2 version of every write acknowledged before the read started.
//! Versions only grow on the active node, so "older than" is "a smaller version".
//!
//! Needs root and `ip netns`; otherwise the test prints `SKIPPED: ...` to stderr and returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_tests::cluster::{eventually, health, quick as call, Cluster};
use cluster_tests::netns;
use serde_json::{json, Value};

/// Longest a linearizable read on the cut-off node may take to fail: its ReadIndex round or the
/// wait for an active node (both bounded by the server, 5 s at most), plus margin for a loaded
/// machine. Without a bound a client of the minority side would hang.
const LINEARIZABLE_FAILS_WITHIN: Duration = Duration::from_secs(8);
/// By then the cut-off node's lease (250 ms) has ended, with margin for a loaded machine.
const LEASE_GONE: Duration = Duration::from_secs(1);
/// The client timeout of the loops: beyond every server-side bound, so a hang shows as `None`.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the partition lasts at least, so the loops run well past the lease and election.
const PARTITION_AT_LEAST: Duration = Duration::from_secs(8);
/// Longest any linearizable read may take to answer, anywhere, at any time: the wait for an
/// active node (2 s) and the read index with its apply wait (5 s), plus margin.
const LINEARIZABLE_ANSWERS_WITHIN: Duration = Duration::from_secs(10);
/// Bounds of the loops: attempts per task, the pause between one task's attempts, and the
/// attempts of one task unanswered at once.
const MAX_ATTEMPTS: usize = 5_000;
const WRITE_PAUSE: Duration = Duration::from_millis(100);
const READ_PAUSE: Duration = Duration::from_millis(50);
const IN_FLIGHT: usize = 16;

const LINEARIZABLE: (&str, &str) = ("X-Vault-Consistency", "linearizable");
const EVENTUAL: (&str, &str) = ("X-Vault-Consistency", "eventual");

/// What one request got back.
#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    body: Value,
    applied_index: Option<u64>,
}

/// One request, following no redirect (a 307 is an answer too); `None` when the node does not
/// answer within the client's timeout.
async fn send(http: &reqwest::Client, addr: &str, method: &str, path: &str, token: &str, header: Option<(&str, &str)>, body: Option<Value>) -> Option<Answer> {
    let m = reqwest::Method::from_bytes(method.as_bytes()).ok()?;
    let mut r = http.request(m, format!("{addr}/v1/{path}")).header("X-Vault-Token", token);
    if let Some((k, v)) = header {
        r = r.header(k, v);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.ok()?;
    let status = resp.status().as_u16();
    let applied_index = resp.headers().get("x-vault-applied-index").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let bytes = resp.bytes().await.ok()?;
    Some(Answer { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null), applied_index })
}

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(timeout).build().expect("client")
}

/// One attempt of a loop: a write (with the version it was acknowledged at) or a
/// linearizable read (with the version it saw).
#[derive(Clone, Debug)]
struct Op {
    node: usize,
    start: Instant,
    end: Instant,
    /// `None`: no answer within the client's timeout.
    status: Option<u16>,
    /// The KV v2 version written or read, on a 200.
    version: Option<u64>,
}

/// A writer and a linearizable reader per node, all on one key, recording every attempt.
struct Loops {
    stop: Arc<AtomicBool>,
    writes: Arc<Mutex<Vec<Op>>>,
    reads: Arc<Mutex<Vec<Op>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

const LOOP_KEY: &str = "kv/data/loop";

impl Loops {
    fn start(addrs: &[String], token: &str) -> Loops {
        let stop = Arc::new(AtomicBool::new(false));
        let (writes, reads) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let mut tasks = Vec::new();
        for (node, addr) in addrs.iter().enumerate() {
            for write in [true, false] {
                let (stop, addr, token) = (stop.clone(), addr.clone(), token.to_string());
                let log = if write { writes.clone() } else { reads.clone() };
                tasks.push(tokio::spawn(async move {
                    let http = client(CLIENT_TIMEOUT);
                    // Several at once, so one stuck request does not stop the loop.
                    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
                    let mut ops = tokio::task::JoinSet::new();
                    for i in 0..MAX_ATTEMPTS {
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        let slot = slots.clone().acquire_owned().await.expect("semaphore");
                        let (http, addr, token, log) = (http.clone(), addr.clone(), token.clone(), log.clone());
                        ops.spawn(async move {
                            let start = Instant::now();
                            let (answer, version_at) = if write {
                                let body = json!({ "data": { "w": format!("n{node}-{i}") } });
                                (send(&http, &addr, "POST", LOOP_KEY, &token, None, Some(body)).await, "/data/version")
                            } else {
                                (send(&http, &addr, "GET", LOOP_KEY, &token, Some(LINEARIZABLE), None).await, "/data/metadata/version")
                            };
                            let op = Op {
                                node,
                                start,
                                end: Instant::now(),
                                status: answer.as_ref().map(|a| a.status),
                                version: answer.as_ref().filter(|a| a.status == 200).and_then(|a| a.body.pointer(version_at)?.as_u64()),
                            };
                            log.lock().unwrap_or_else(|p| p.into_inner()).push(op);
                            drop(slot);
                        });
                        tokio::time::sleep(if write { WRITE_PAUSE } else { READ_PAUSE }).await;
                    }
                    while ops.join_next().await.is_some() {}
                }));
            }
        }
        Loops { stop, writes, reads, tasks }
    }

    fn acked_since(&self, node: usize, t: Instant) -> bool {
        self.writes.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|w| w.node == node && w.start > t && w.status == Some(200))
    }

    fn read_since(&self, node: usize, t: Instant) -> bool {
        self.reads.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|r| r.node == node && r.start > t && r.status == Some(200))
    }

    async fn stop(self) -> (Vec<Op>, Vec<Op>) {
        self.stop.store(true, Ordering::Release);
        for t in self.tasks {
            t.await.expect("loop task");
        }
        let get = |l: &Mutex<Vec<Op>>| l.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (get(&self.writes), get(&self.reads))
    }
}

fn value(a: &Answer) -> &Value {
    &a.body["data"]["data"]["v"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linearizable_read_never_returns_a_value_older_than_an_acknowledged_write_across_a_partition() {
    const TEST: &str = "a_linearizable_read_never_returns_a_value_older_than_an_acknowledged_write_across_a_partition";
    if !netns::skip_unless_available(TEST) {
        return;
    }
    let c = Cluster::builder(3).netns().start().await;
    let addrs = c.addrs();
    let root = c.root.clone();
    let old = c.wait_active(Duration::from_secs(10)).await;
    let http = client(CLIENT_TIMEOUT);
    let quick = client(Duration::from_secs(2));

    // v1 through the active node, seen by a linearizable read on every node.
    let w1 = send(&http, &addrs[old], "POST", "kv/data/scripted", &root, None, Some(json!({ "data": { "v": "v1" } }))).await;
    assert!(w1.as_ref().is_some_and(|a| a.status == 200), "write v1: {w1:?}");
    for a in &addrs {
        let r = send(&http, a, "GET", "kv/data/scripted", &root, Some(LINEARIZABLE), None).await;
        assert!(r.as_ref().is_some_and(|r| r.status == 200 && value(r) == "v1"), "linearizable read of v1 on {a}: {r:?}");
    }

    let watch = c.watch_single_active(Duration::from_millis(500));
    let loops = Loops::start(&addrs, &root);
    let t_start = Instant::now();
    for n in 0..3 {
        eventually(Duration::from_secs(20), "writes acknowledged through every node", || async { loops.acked_since(n, t_start).then_some(()) }).await;
        eventually(Duration::from_secs(20), "linearizable reads on every node", || async { loops.read_since(n, t_start).then_some(()) }).await;
    }

    // The cut: A loses its peers, the test still reaches it.
    let t_cut = Instant::now();
    c.net().isolate_from_peers(old).expect("isolate the active node");
    eventually(Duration::from_secs(5), "the cut-off node to stop reporting active", || async {
        (health(&quick, &addrs[old]).await != Some(200)).then_some(())
    })
    .await;
    let new = c.wait_active_other_than(old, Duration::from_secs(20)).await;
    let other = (0..3).find(|&i| i != old && i != new).expect("a third node");
    println!("node {old} cut off; node {new} active {:?} after the cut", t_cut.elapsed());

    // v2 through the new active node, acknowledged.
    let w2 = eventually(Duration::from_secs(10), "v2 acknowledged by the new active node", || async {
        send(&http, &addrs[new], "POST", "kv/data/scripted", &root, None, Some(json!({ "data": { "v": "v2" } }))).await.filter(|a| a.status == 200)
    })
    .await;
    let new_applied = w2.applied_index.expect("a write carries X-Vault-Applied-Index");

    // A linearizable read on the cut-off node: an error within a bound, never a stale 200.
    let t = Instant::now();
    let r = send(&http, &addrs[old], "GET", "kv/data/scripted", &root, Some(LINEARIZABLE), None).await;
    let took = t.elapsed();
    println!("linearizable read on the cut-off node: {r:?} after {took:?}");
    let r = r.unwrap_or_else(|| panic!("the cut-off node did not answer a linearizable read within {CLIENT_TIMEOUT:?}"));
    assert!(r.status >= 400, "a linearizable read on the cut-off node answered {} {}\n{}", r.status, r.body, c.logs());
    assert!(r.body["errors"].as_array().is_some_and(|e| e.iter().any(|m| m.as_str().is_some_and(|m| !m.is_empty()))), "no error message: {r:?}");
    assert!(took < LINEARIZABLE_FAILS_WITHIN, "a linearizable read on the cut-off node took {took:?}");

    // The same read on the majority side: v2.
    for i in [new, other] {
        let r = send(&http, &addrs[i], "GET", "kv/data/scripted", &root, Some(LINEARIZABLE), None).await;
        assert!(r.as_ref().is_some_and(|r| r.status == 200 && value(r) == "v2"), "linearizable read on node {i}: {r:?}");
    }

    // An eventual read on the cut-off node may be stale, but says how far behind it is.
    let r = send(&http, &addrs[old], "GET", "kv/data/scripted", &root, Some(EVENTUAL), None).await;
    println!("eventual read on the cut-off node: {r:?}");
    if let Some(r) = r.as_ref().filter(|r| r.status == 200) {
        assert_eq!(value(r), "v1", "{r:?}");
        let applied = r.applied_index.unwrap_or_else(|| panic!("a stale read without X-Vault-Applied-Index: {r:?}"));
        assert!(applied < new_applied, "applied index {applied} on the cut-off node, {new_applied} on the new active node");
    }

    // Keep the partition long enough for the loops to see every phase.
    for n in [new, other] {
        let t = Instant::now();
        eventually(Duration::from_secs(20), "writes acknowledged through the majority", || async { loops.acked_since(n, t).then_some(()) }).await;
        eventually(Duration::from_secs(20), "linearizable reads on the majority", || async { loops.read_since(n, t).then_some(()) }).await;
    }
    tokio::time::sleep(PARTITION_AT_LEAST.saturating_sub(t_cut.elapsed())).await;

    // The heal: A becomes a standby of N, and its linearizable read returns v2.
    let t_heal = Instant::now();
    c.net().rejoin_peers(old).expect("heal");
    eventually(Duration::from_secs(30), "the old node to become a standby of the new active node", || async {
        let (code, v) = call(&quick, &addrs[old], "GET", "sys/leader", None, None).await?;
        let standby = matches!(health(&quick, &addrs[old]).await, Some(429 | 473));
        (code == 200 && standby && v["is_self"] == json!(false) && v["leader_address"] == json!(addrs[new])).then_some(())
    })
    .await;
    let r = send(&http, &addrs[old], "GET", "kv/data/scripted", &root, Some(LINEARIZABLE), None).await;
    assert!(r.as_ref().is_some_and(|r| r.status == 200 && value(r) == "v2"), "linearizable read on the healed node: {r:?}");
    let t = Instant::now();
    eventually(Duration::from_secs(20), "linearizable reads on the healed node", || async { loops.read_since(old, t).then_some(()) }).await;
    let (writes, reads) = loops.stop().await;
    watch.finish().await;

    // No successful linearizable read saw less than a write acknowledged before it started.
    let mut acked: Vec<(Instant, u64)> = writes.iter().filter(|w| w.status == Some(200)).map(|w| (w.end, w.version.expect("an acknowledged write's version"))).collect();
    acked.sort();
    let mut stale = Vec::new();
    for r in reads.iter().filter(|r| r.status == Some(200)) {
        let seen = r.version.expect("a read's version");
        let floor = acked.iter().take_while(|(end, _)| *end < r.start).map(|(_, v)| *v).max().unwrap_or(0);
        if seen < floor {
            stale.push((r.clone(), floor));
        }
    }

    // Each node's share, and what the cut-off node answered while cut off.
    let during = |o: &&Op| o.start > t_cut && o.start < t_heal;
    for n in 0..3 {
        let role = if n == old { " (cut off)" } else if n == new { " (new active)" } else { "" };
        let (w, r): (Vec<&Op>, Vec<&Op>) = (writes.iter().filter(|o| o.node == n).collect(), reads.iter().filter(|o| o.node == n).collect());
        let ok = |v: &[&Op]| v.iter().filter(|o| o.status == Some(200)).count();
        let (wd, rd): (Vec<&Op>, Vec<&Op>) = (w.iter().copied().filter(during).collect(), r.iter().copied().filter(during).collect());
        let mut codes: Vec<Option<u16>> = rd.iter().map(|o| o.status).collect();
        codes.sort();
        codes.dedup();
        let slowest = rd.iter().map(|o| o.end - o.start).max().unwrap_or_default();
        println!(
            "node {n}{role}: writes {}/{} acknowledged, linearizable reads {}/{} served; during the cut writes {}/{}, reads {}/{} (answers {codes:?}, slowest {slowest:?})",
            ok(&w),
            w.len(),
            ok(&r),
            r.len(),
            ok(&wd),
            wd.len(),
            ok(&rd),
            rd.len()
        );
    }
    assert!(stale.is_empty(), "{} linearizable reads older than an acknowledged write, e.g. {:?}\n{}", stale.len(), &stale[..stale.len().min(5)], c.logs());
    // Every linearizable read answered within its bound, on the majority side during the
    // failover too (a standby whose active node is gone must not wait on it for longer).
    let slow: Vec<String> = reads
        .iter()
        .filter(|r| r.status.is_none() || r.end - r.start >= LINEARIZABLE_ANSWERS_WITHIN)
        .map(|r| format!("node {} sent {:?} after the cut: {:?} after {:?}", r.node, r.start.saturating_duration_since(t_cut), r.status, r.end - r.start))
        .collect();
    assert!(slow.is_empty(), "{} linearizable reads took {LINEARIZABLE_ANSWERS_WITHIN:?} or more: {slow:#?}", slow.len());
    let last_served = |ops: &[Op]| ops.iter().filter(|o| o.node == old && o.start > t_cut && o.end < t_heal && o.status == Some(200)).map(|o| o.end - t_cut).max();
    println!("while cut off, the cut-off node answered its last write {:?} and its last linearizable read {:?} after the cut", last_served(&writes), last_served(&reads));
    // The cut-off node's linearizable reads sent once it had lost its lease (and answered
    // before the heal) all failed, each within the bound.
    let cut_off: Vec<&Op> = reads.iter().filter(|o| o.node == old && o.start > t_cut + LEASE_GONE && o.end < t_heal).collect();
    assert!(!cut_off.is_empty(), "no linearizable reads sent to the cut-off node while it was cut off");
    for o in &cut_off {
        assert_ne!(o.status, Some(200), "the cut-off node served a linearizable read {o:?}");
        assert!(o.end - o.start < LINEARIZABLE_FAILS_WITHIN, "a linearizable read on the cut-off node took {:?}: {o:?}", o.end - o.start);
    }
    println!("{} linearizable reads checked against {} acknowledged writes", reads.iter().filter(|r| r.status == Some(200)).count(), acked.len());
}
