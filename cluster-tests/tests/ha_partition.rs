//! Issue 5's partition scenario on three "hosts" (network namespaces on a bridge): the active
//! node is cut off from its peers while the test, in the root namespace, still reaches every
//! node and writes through all three. The cut-off node must stop acknowledging (its lease ends
//! before the others can elect a leader), the majority elects a new active node that takes the
//! writes, and after the heal the old node is a standby again and every acknowledged write is
//! there. Needs root and `ip netns`; otherwise the test prints `SKIPPED: ...` to stderr and
//! returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_tests::cluster::{eventually, health, quick, Cluster};
use cluster_tests::netns;
use serde_json::json;

/// Longest a write through the cut-off node may still be acknowledged after the cut: its HA
/// lease (250 ms) plus a write already past the lease check, with margin for a loaded machine.
const STOPS_ACKNOWLEDGING_WITHIN: Duration = Duration::from_secs(1);
/// Longest a request to the cut-off node may take to fail once its lease is gone: the wait for
/// an active node (2 s) plus margin. Without a bound a client of the minority side would hang.
/// (A write admitted before the lease ended waits for its commit up to the storage write
/// timeout, 10 s, instead.)
const FAILS_WITHIN: Duration = Duration::from_secs(5);
/// The writers' client timeout: beyond the storage write timeout, so a hang shows as one.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the partition lasts at least, so that the bounds above are seen to hold.
const PARTITION_AT_LEAST: Duration = Duration::from_secs(8);
/// Writes per writer at most (one every WRITE_PAUSE, at most IN_FLIGHT unanswered).
const MAX_WRITES: usize = 5_000;
/// Enough in flight that writes stuck on the cut-off side (up to the write timeout) leave room
/// for new ones at this pace.
const WRITE_PAUSE: Duration = Duration::from_millis(50);
const IN_FLIGHT: usize = 64;

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder().timeout(timeout).build().expect("client")
}

/// One write a writer attempted.
#[derive(Clone, Debug)]
struct Write {
    key: String,
    start: Instant,
    end: Instant,
    /// `None`: no answer within the client's timeout.
    status: Option<u16>,
}

impl Write {
    fn acked(&self) -> bool {
        self.status == Some(200)
    }
}

/// A writer per node, each sending KV v2 writes of fresh keys to its own node only (a standby
/// forwards them) at a steady pace, several at once (one stuck write does not stop the next),
/// and recording every attempt.
struct Writers {
    stop: Arc<AtomicBool>,
    log: Vec<Arc<Mutex<Vec<Write>>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(addrs: &[String], token: &str) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let log: Vec<_> = addrs.iter().map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
        let tasks = addrs
            .iter()
            .enumerate()
            .map(|(n, addr)| {
                let (stop, log, addr, token) = (stop.clone(), log[n].clone(), addr.clone(), token.to_string());
                tokio::spawn(async move {
                    let http = client(CLIENT_TIMEOUT);
                    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
                    let mut writes = tokio::task::JoinSet::new();
                    for i in 0..MAX_WRITES {
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        let slot = slots.clone().acquire_owned().await.expect("semaphore");
                        let (http, addr, token, log) = (http.clone(), addr.clone(), token.clone(), log.clone());
                        writes.spawn(async move {
                            let key = format!("n{n}-{i}");
                            let start = Instant::now();
                            let r = quick(&http, &addr, "POST", &format!("kv/data/{key}"), Some(&token), Some(json!({"data": {"k": key}}))).await;
                            let w = Write { key, start, end: Instant::now(), status: r.map(|(c, _)| c) };
                            log.lock().unwrap().push(w);
                            drop(slot);
                        });
                        tokio::time::sleep(WRITE_PAUSE).await;
                    }
                    while writes.join_next().await.is_some() {}
                })
            })
            .collect();
        Writers { stop, log, tasks }
    }

    /// Whether node `n`'s writer had a write acknowledged that it sent after `t`.
    fn acked_since(&self, n: usize, t: Instant) -> bool {
        self.log[n].lock().unwrap().iter().any(|w| w.start > t && w.acked())
    }

    async fn stop(self) -> Vec<Vec<Write>> {
        self.stop.store(true, Ordering::Release);
        for t in self.tasks {
            t.await.expect("writer");
        }
        self.log.iter().map(|l| l.lock().unwrap().clone()).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_active_node_stops_and_the_majority_takes_over_without_losing_writes() {
    const TEST: &str = "a_cut_off_active_node_stops_and_the_majority_takes_over_without_losing_writes";
    if !netns::skip_unless_available(TEST) {
        return;
    }
    let c = Cluster::builder(3).netns().start().await;
    let (net, root) = (c.net(), c.root.clone());
    let addrs = c.addrs();
    let logs = || c.logs();

    let http = client(Duration::from_secs(2));
    let all = [0, 1, 2];
    let old = eventually(Duration::from_secs(10), "one active node", || c.active_among(&http, &all)).await;
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != old).collect();
    let watch = c.watch_single_active(Duration::from_millis(500));
    let writers = Writers::start(&addrs, &root);
    let t_start = Instant::now();
    for n in all {
        eventually(Duration::from_secs(20), "writes acknowledged through every node", || async {
            writers.acked_since(n, t_start).then_some(())
        })
        .await;
    }

    // The cut: the old active node loses its peers, the test still reaches it.
    let t_cut = Instant::now();
    net.isolate_from_peers(old).expect("isolate the active node");
    eventually(Duration::from_secs(5), "the cut-off node to stop reporting active", || async {
        (health(&http, &addrs[old]).await != Some(200)).then_some(())
    })
    .await;
    let new = eventually(Duration::from_secs(20), "the majority to elect a new active node", || c.active_among(&http, &rest)).await;
    let t_new = Instant::now();
    for &n in &rest {
        eventually(Duration::from_secs(20), "writes acknowledged through the majority", || async {
            writers.acked_since(n, t_new).then_some(())
        })
        .await;
    }
    tokio::time::sleep(PARTITION_AT_LEAST.saturating_sub(t_cut.elapsed())).await;
    assert_ne!(health(&http, &addrs[old]).await, Some(200), "the cut-off node reports active again\n{}", logs());

    // The heal: the old node follows the new leader as a standby, and forwards again.
    let t_heal = Instant::now();
    net.rejoin_peers(old).expect("heal");
    eventually(Duration::from_secs(30), "the old node to become a standby of the new active node", || async {
        let (code, v) = quick(&http, &addrs[old], "GET", "sys/leader", None, None).await?;
        // 473: every standby is a performance standby by default.
        let standby = matches!(health(&http, &addrs[old]).await, Some(429 | 473));
        (code == 200 && standby && v["is_self"] == json!(false) && v["leader_address"] == json!(addrs[new])).then_some(())
    })
    .await;
    eventually(Duration::from_secs(20), "writes acknowledged through the old node after the heal", || async {
        writers.acked_since(old, t_heal).then_some(())
    })
    .await;
    let log = writers.stop().await;
    watch.finish().await;

    // While cut off, the old node acknowledged nothing sent to it after its lease, and failed
    // every such write within a bound instead of hanging.
    let cut_off: Vec<&Write> = log[old]
        .iter()
        .filter(|w| w.start > t_cut + STOPS_ACKNOWLEDGING_WITHIN && w.start + FAILS_WITHIN < t_heal)
        .collect();
    assert!(!cut_off.is_empty(), "no writes sent to the cut-off node while it was cut off");
    for w in &cut_off {
        assert!(!w.acked(), "the cut-off node acknowledged {w:?} {:?} after the cut\n{}", w.start - t_cut, logs());
        assert!(w.end - w.start < FAILS_WITHIN, "a write to the cut-off node took {:?}: {w:?}", w.end - w.start);
        assert!(w.status.is_some_and(|s| s >= 500), "{w:?}");
    }

    // Every acknowledged write, through any node at any time, is there.
    let reader = client(Duration::from_secs(10));
    let acked: Vec<&Write> = log.iter().flatten().filter(|w| w.acked()).collect();
    for w in &acked {
        let got = quick(&reader, &addrs[new], "GET", &format!("kv/data/{}", w.key), Some(&root), None).await;
        assert!(
            matches!(&got, Some((200, v)) if v["data"]["data"]["k"] == json!(w.key)),
            "acknowledged write {w:?} lost: {got:?}"
        );
    }
    for (n, writes) in log.iter().enumerate() {
        let during: Vec<&Write> = writes.iter().filter(|w| w.start > t_cut && w.start < t_heal).collect();
        let slowest = during.iter().map(|w| w.end - w.start).max().unwrap_or_default();
        eprintln!(
            "node {n}{}: {} writes acknowledged of {}; during the cut {} of {} (no answer: {}, slowest {slowest:?})",
            if n == old { " (cut off)" } else if n == new { " (new active)" } else { "" },
            writes.iter().filter(|w| w.acked()).count(),
            writes.len(),
            during.iter().filter(|w| w.acked()).count(),
            during.len(),
            during.iter().filter(|w| w.status.is_none()).count(),
        );
    }
    eprintln!("new active node {:?} after the cut", t_new - t_cut);
}
