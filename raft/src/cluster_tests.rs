//! Multi-node tests: three `RaftNode`s in one process, talking over real mutual TLS on loopback.
//!
//! Timings are printed (`--nocapture`) and asserted loosely: the box is shared, and the bounds
//! are about "a few seconds", not benchmarks.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::ClientConfig;
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use vaultd_storage::Error;

use crate::cluster::{dial, ALPN_RAFT};
use crate::rpc::{decode_frame, encode_frame, read_frame, RequestFrame, ResponseFrame, RpcRequest};
use crate::{ClusterTls, RaftConfig, RaftNode, RaftStatus};

/// Ports for the test's nodes: bound to port 0 and released, so the kernel picks free ones. A
/// node rebinds its port after a restart (listeners set SO_REUSEADDR).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0")).collect();
    held.iter().map(|l| l.local_addr().expect("local addr").port()).collect()
}

fn config(dir: &Path, name: &str, port: u16) -> RaftConfig {
    RaftConfig {
        path: dir.to_path_buf(),
        node_id: name.to_string(),
        api_addr: format!("https://{name}.test:8200"),
        cluster_addr: format!("https://127.0.0.1:{port}"),
    }
}

fn bind_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn start(dir: &Path, name: &str, port: u16, tls: &ClusterTls) -> Arc<RaftNode> {
    let node = RaftNode::open(config(dir, name, port)).await.expect("open");
    let bound = node.start_cluster(bind_addr(port), tls).await.expect("start cluster");
    assert_eq!(bound.port(), port);
    node
}

/// Polls `check` every 20 ms until it yields a value, or panics after `timeout`.
async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn has_value(node: &Arc<RaftNode>, key: &str, value: &[u8]) -> bool {
    match node.backend().get(key).await {
        Ok(Some(v)) => v == value,
        _ => false,
    }
}

fn leader_of(nodes: &[&Arc<RaftNode>]) -> Option<Arc<RaftNode>> {
    nodes.iter().find(|n| n.status().is_leader).map(|n| Arc::clone(n))
}

/// Writes through whichever of `nodes` leads, retrying while leadership settles.
async fn put_on_leader(nodes: &[&Arc<RaftNode>], key: &str, value: &[u8]) -> Arc<RaftNode> {
    eventually(Duration::from_secs(10), "a write on the leader", || async {
        let leader = leader_of(nodes)?;
        leader.backend().put(key, value.to_vec()).await.ok().map(|_| leader)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_fail_over_and_catch_up() {
    let tls = ClusterTls::generate().expect("cluster tls");
    let node_tls = tls.without_ca_key();
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().expect("tempdir")).collect();
    let ports = free_ports(3);
    let names = ["node-1", "node-2", "node-3"];

    let n1 = start(dirs[0].path(), names[0], ports[0], &node_tls).await;
    let n2 = start(dirs[1].path(), names[1], ports[1], &node_tls).await;
    let n3 = start(dirs[2].path(), names[2], ports[2], &node_tls).await;
    n1.bootstrap_single().await.expect("bootstrap node 1");

    // Nodes 2 and 3 are not members: they must not campaign, whatever happens meanwhile.
    for n in [&n2, &n3] {
        assert!(!n.is_initialized().await);
        assert_eq!(n.status().term, 0, "an uninitialized node must not campaign");
    }

    // Join: learners first, then voters.
    n1.add_learner(n2.raft_id(), n2.node().clone()).await.expect("add node 2");
    n1.add_learner(n3.raft_id(), n3.node().clone()).await.expect("add node 3");
    let applied = n1.status().applied_index;
    n1.add_learner(n3.raft_id(), n3.node().clone()).await.expect("a repeated join is a no-op");
    assert_eq!(n1.status().applied_index, applied, "a repeated join appends nothing");
    let mut clash = n3.node().clone();
    clash.cluster_addr = "https://127.0.0.1:1".into();
    assert!(
        matches!(n1.add_learner(12345, clash).await, Err(crate::RaftError::Membership(_))),
        "a node_id held by another raft id is refused"
    );
    let members = n1.configuration();
    assert_eq!(members.len(), 3);
    assert_eq!(members.iter().filter(|p| p.voter).count(), 1);

    let t = Instant::now();
    n1.promote(n2.raft_id()).await.expect("promote node 2");
    n1.change_membership(vec![n1.raft_id(), n2.raft_id(), n3.raft_id()])
        .await
        .expect("three voters");
    println!("promotion of two learners took {:?}", t.elapsed());
    let members = n1.configuration();
    assert_eq!(members.iter().filter(|p| p.voter).count(), 3, "{members:?}");
    let me = members.iter().find(|p| p.raft_id == n1.raft_id()).expect("node 1 listed");
    assert!(me.leader);
    assert_eq!(me.node_id, "node-1");
    assert_eq!(me.address, format!("127.0.0.1:{}", ports[0]));

    // Writes on the leader reach every node's local state machine.
    let backend = n1.backend();
    for i in 0..50 {
        backend.put(&format!("k/{i:02}"), format!("v{i}").into_bytes()).await.expect("put");
    }
    let t = Instant::now();
    for n in [&n1, &n2, &n3] {
        eventually(Duration::from_secs(5), "replication of k/49", || async {
            has_value(n, "k/49", b"v49").await.then_some(())
        })
        .await;
        assert_eq!(n.backend().list("k/").await.expect("list").len(), 50);
    }
    println!("the last of 50 writes was readable on all three nodes after {:?}", t.elapsed());

    // Commit hints: only the leader gives one, a follower applies what a true one names, and one
    // with an older vote or naming a log id the follower does not hold changes nothing.
    assert!(n2.commit_hint().is_none(), "a follower gives no commit hint");
    let hint = n1.commit_hint().expect("the leader gives a commit hint");
    let index = n1.applied_index();
    n2.learn_commit(&hint).await;
    n2.wait_applied(index, Duration::from_secs(5)).await.expect("the hinted index is applied");
    let mut stale: serde_json::Value = serde_json::from_str(&hint).expect("a hint is JSON");
    stale["vote"]["leader_id"]["term"] = 0.into();
    stale["applied"]["index"] = (index + 1000).into();
    let mut beyond: serde_json::Value = serde_json::from_str(&hint).expect("a hint is JSON");
    beyond["applied"]["index"] = (index + 1000).into();
    for forged in [stale, beyond, serde_json::json!("garbage")] {
        n3.learn_commit(&forged.to_string()).await;
    }
    assert_eq!(n3.status().term, n1.status().term, "a hint starts no election");
    assert!(n3.applied_index() < index + 1000);
    backend.put("k/after-hints", b"1".to_vec()).await.expect("put after the hints");
    eventually(Duration::from_secs(5), "replication after forged hints", || async {
        has_value(&n3, "k/after-hints", b"1").await.then_some(())
    })
    .await;
    assert_eq!(n3.backend().list("k/").await.expect("list").len(), 51, "no entry was lost");

    // A follower refuses writes and names the leader.
    match n2.backend().put("k/x", b"x".to_vec()).await {
        Err(Error::NotLeader { leader_api_addr }) => {
            assert_eq!(leader_api_addr.as_deref(), Some("https://node-1.test:8200"))
        }
        other => panic!("a follower write should be NotLeader, got {other:?}"),
    }
    assert!(matches!(
        n2.add_learner(999, n3.node().clone()).await,
        Err(crate::RaftError::NotLeader { .. })
    ));

    // Fail-over: stop the leader.
    let old_term = n1.status().term;
    let t = Instant::now();
    n1.shutdown().await.expect("shutdown node 1");
    let new_leader =
        eventually(Duration::from_secs(10), "a new leader", || async { leader_of(&[&n2, &n3]) })
            .await;
    let elected = t.elapsed();
    let writer = put_on_leader(&[&n2, &n3], "after/failover", b"1").await;
    let first_write = t.elapsed();
    println!("fail-over: new leader after {elected:?}, first write after {first_write:?}");
    assert!(Arc::ptr_eq(&writer, &new_leader) || writer.status().is_leader);
    assert!(new_leader.status().term > old_term);
    assert!(elected < Duration::from_secs(5), "election took {elected:?}");
    for i in 0..20 {
        let key = format!("after/{i:02}");
        put_on_leader(&[&n2, &n3], &key, b"2").await;
    }
    drop(backend);
    drop(n1);

    // The old leader restarts. openraft restores a node that led when it stopped as leader of its
    // old term; nothing acknowledges it, which is how the server can tell (RaftStatus docs).
    let n1 = RaftNode::open(config(dirs[0].path(), names[0], ports[0])).await.expect("reopen");
    let before: RaftStatus = n1.status();
    assert!(
        !(before.is_leader && before.millis_since_quorum_ack.is_some()),
        "a restarted node must not look like an acknowledged leader: {before:?}"
    );
    let real = leader_of(&[&n2, &n3]).expect("the new leader").status();
    assert!(real.millis_since_quorum_ack.is_some_and(|ms| ms < 1000), "{real:?}");
    let t = Instant::now();
    n1.start_cluster(bind_addr(ports[0]), &node_tls).await.expect("restart cluster port");
    eventually(Duration::from_secs(10), "node 1 to catch up", || async {
        has_value(&n1, "after/19", b"2").await.then_some(())
    })
    .await;
    println!("the restarted node caught up after {:?}", t.elapsed());
    assert!(has_value(&n1, "k/00", b"v0").await, "it kept what it had before");
    let leader = leader_of(&[&n1, &n2, &n3]).expect("a leader");
    assert_eq!(n1.status().leader.map(|l| l.node_id), Some(leader.node().node_id.clone()));

    // Shrink: remove node 3 (from whichever node leads), then stop it as an operator would.
    let victim = if Arc::ptr_eq(&leader, &n3) { Arc::clone(&n2) } else { Arc::clone(&n3) };
    leader.remove_node(victim.raft_id()).await.expect("remove a node");
    let members = leader.configuration();
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(members.iter().all(|p| p.raft_id != victim.raft_id() && p.voter));
    leader.remove_node(victim.raft_id()).await.expect("removing again is a no-op");
    victim.shutdown().await.expect("shutdown the removed node");
    let rest: Vec<&Arc<RaftNode>> =
        [&n1, &n2, &n3].into_iter().filter(|n| !Arc::ptr_eq(n, &victim)).collect();
    put_on_leader(&rest, "after/removal", b"3").await;
    for n in &rest {
        eventually(Duration::from_secs(5), "the write after the removal", || async {
            has_value(n, "after/removal", b"3").await.then_some(())
        })
        .await;
    }

    for n in [&n1, &n2, &n3] {
        n.shutdown().await.expect("shutdown");
    }
}

/// Sends a harmless vote request over `stream` and returns whether any answer came back.
async fn answered<S>(mut stream: S, target: u64) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let request = RequestFrame {
        id: 1,
        target,
        body: RpcRequest::Vote(openraft::raft::VoteRequest::new(openraft::Vote::new(0, 7), None)),
    };
    let frame = encode_frame(&request).expect("encode");
    if stream.write_all(&frame).await.is_err() || stream.flush().await.is_err() {
        return false;
    }
    match tokio::time::timeout(Duration::from_secs(5), read_frame(&mut stream)).await {
        Ok(Ok(Some(body))) => decode_frame::<ResponseFrame>(&body).is_ok(),
        Ok(_) => false,
        Err(_) => panic!("the listener neither answered nor closed the connection"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_port_admits_only_the_cluster_ca() {
    let tls = ClusterTls::generate().expect("cluster tls");
    let other = ClusterTls::generate().expect("another cluster's tls");
    let dir = TempDir::new().expect("tempdir");
    let node = RaftNode::open(config(dir.path(), "node-1", 1)).await.expect("open");
    let addr = node.start_cluster(bind_addr(0), &tls).await.expect("start cluster");
    let cluster_addr = format!("https://{addr}");
    let id = node.raft_id();

    // Positive control: a member's certificate gets an answer.
    let ok = dial(&cluster_addr, tls.client_config(ALPN_RAFT).expect("config")).await;
    assert!(answered(ok.expect("a member connects"), id).await, "a member must be answered");
    // A request for another raft id is answered with a refusal, not handed to Raft.
    let ok = dial(&cluster_addr, tls.client_config(ALPN_RAFT).expect("config")).await;
    assert!(answered(ok.expect("connect"), id + 1).await);

    // A certificate from another CA (trusting our CA, so only the server's check can stop it).
    let mut foreign = other.without_ca_key();
    foreign.ca_cert_pem = tls.ca_cert_pem.clone();
    // TLS 1.3: the client finishes its side before the server has checked its certificate, so
    // the dial may succeed; the refusal then arrives instead of an answer.
    if let Ok(stream) = dial(&cluster_addr, foreign.client_config(ALPN_RAFT).expect("config")).await
    {
        assert!(!answered(stream, id).await, "a foreign certificate was answered");
    }

    // No client certificate at all.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(tls.ca_cert_pem.as_bytes()).expect("pem"))
        .expect("root");
    let mut anonymous = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    anonymous.alpn_protocols = vec![ALPN_RAFT.to_vec()];
    if let Ok(stream) = dial(&cluster_addr, Arc::new(anonymous)).await {
        assert!(!answered(stream, id).await, "a client without a certificate was answered");
    }

    // A client that trusts another CA does not accept this server.
    assert!(dial(&cluster_addr, other.client_config(ALPN_RAFT).expect("config")).await.is_err());

    // An ALPN nobody registered: closed without a handshake.
    assert!(dial(&cluster_addr, tls.client_config(b"h2").expect("config")).await.is_err());
    // Plain TCP speaking garbage: closed, and the listener keeps serving.
    let mut raw = TcpStream::connect(addr).await.expect("tcp");
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
    let _ = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut raw)).await;
    let ok = dial(&cluster_addr, tls.client_config(ALPN_RAFT).expect("config")).await;
    assert!(answered(ok.expect("still serving"), id).await);

    // A registered protocol is served beside Raft.
    struct Hello;
    #[async_trait::async_trait]
    impl crate::ClusterHandler for Hello {
        async fn serve(&self, mut stream: crate::ClusterStream, _peer: SocketAddr) {
            let _ = stream.write_all(b"hello").await;
            let _ = stream.shutdown().await;
        }
    }
    node.register_protocol(crate::cluster::ALPN_REQUEST_FORWARDING, Arc::new(Hello))
        .expect("register");
    assert!(node.register_protocol(ALPN_RAFT, Arc::new(Hello)).is_err(), "raft's ALPN is reserved");
    let mut fw = dial(
        &cluster_addr,
        tls.client_config(crate::cluster::ALPN_REQUEST_FORWARDING).expect("config"),
    )
    .await
    .expect("forwarding protocol");
    let mut got = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut fw, &mut got).await.expect("read");
    assert_eq!(got, b"hello");

    node.shutdown().await.expect("shutdown");
    // The port is released with the node (the accept task ends at its next poll).
    eventually(Duration::from_secs(2), "the cluster port to close", || async {
        TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await;
}

/// Catching up the two other ways: a learner that was down while big entries were written gets
/// them in AppendEntries cut to size, and a learner added after the log was purged gets a
/// snapshot, in several chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learners_catch_up_by_cut_batches_and_by_chunked_snapshot() {
    const MIB: usize = 1024 * 1024;
    let tls = ClusterTls::generate().expect("cluster tls");
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().expect("tempdir")).collect();
    let ports = free_ports(3);

    let n1 = start(dirs[0].path(), "node-1", ports[0], &tls).await;
    n1.bootstrap_single().await.expect("bootstrap");
    let n2 = start(dirs[1].path(), "node-2", ports[1], &tls).await;
    n1.add_learner(n2.raft_id(), n2.node().clone()).await.expect("add node 2");
    n1.backend().put("small", b"x".to_vec()).await.expect("put");
    eventually(Duration::from_secs(5), "node 2 to replicate", || async {
        has_value(&n2, "small", b"x").await.then_some(())
    })
    .await;

    // Node 2 goes down; 8 MiB in 1 MiB entries is written meanwhile (a learner is not needed for
    // a commit). On its return the leader's first AppendEntries would hold all 8 entries.
    n2.shutdown().await.expect("shutdown node 2");
    drop(n2);
    let big = |i: usize| vec![i as u8; MIB];
    for i in 0..8 {
        n1.backend().put(&format!("big/{i}"), big(i)).await.expect("put big");
    }
    let n2 = RaftNode::open(config(dirs[1].path(), "node-2", ports[1])).await.expect("reopen");
    n2.start_cluster(bind_addr(ports[1]), &tls).await.expect("start cluster");
    let t = Instant::now();
    eventually(Duration::from_secs(10), "node 2 to catch up on 8 MiB", || async {
        has_value(&n2, "big/7", &big(7)).await.then_some(())
    })
    .await;
    println!("a learner caught up on 8 x 1 MiB entries in {:?}", t.elapsed());
    for i in 0..8 {
        assert!(has_value(&n2, &format!("big/{i}"), &big(i)).await, "big/{i} on node 2");
    }

    // Snapshot, purge the log, then add node 3: only a snapshot can bring it up to date.
    n1.raft.trigger().snapshot().await.expect("trigger snapshot");
    let last_applied = n1.raft.metrics().borrow().last_applied.expect("applied");
    n1.raft
        .wait(Some(Duration::from_secs(10)))
        .snapshot(last_applied, "snapshot built")
        .await
        .expect("snapshot built");
    n1.raft.trigger().purge_log(last_applied.index).await.expect("purge");
    n1.raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.purged.map(|p| p.index) == Some(last_applied.index), "log purged")
        .await
        .expect("log purged");

    let n3 = start(dirs[2].path(), "node-3", ports[2], &tls).await;
    let t = Instant::now();
    n1.add_learner(n3.raft_id(), n3.node().clone()).await.expect("add node 3");
    eventually(Duration::from_secs(10), "node 3 to install the snapshot", || async {
        has_value(&n3, "big/7", &big(7)).await.then_some(())
    })
    .await;
    println!("a new learner installed an ~8 MiB snapshot (3 MiB chunks) in {:?}", t.elapsed());
    assert!(n3.raft.metrics().borrow().snapshot.is_some(), "node 3 got there by snapshot");
    assert!(has_value(&n3, "small", b"x").await);

    // All three become voters and keep replicating after the snapshot.
    n1.change_membership(vec![n1.raft_id(), n2.raft_id(), n3.raft_id()])
        .await
        .expect("three voters");
    n1.backend().put("after/snapshot", b"y".to_vec()).await.expect("put");
    for n in [&n2, &n3] {
        eventually(Duration::from_secs(5), "the write after the snapshot", || async {
            has_value(n, "after/snapshot", b"y").await.then_some(())
        })
        .await;
    }

    // A voter that restarts without its cluster port (a sealed node: no cluster TLS yet) must not
    // campaign: it would only raise its term, and depose the leader once reachable. A follower
    // that hears nothing campaigns after 0.6-0.95 s (election timeout plus leader lease).
    n2.shutdown().await.expect("shutdown node 2");
    drop(n2);
    let n2 = RaftNode::open(config(dirs[1].path(), "node-2", ports[1])).await.expect("reopen");
    let term = n2.status().term;
    n1.backend().put("while/sealed", b"z".to_vec()).await.expect("a write with node 2 away");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let status = n2.status();
    assert_eq!(status.term, term, "a voter without its cluster port campaigned: {status:?}");
    assert!(!status.is_leader);
    n2.start_cluster(bind_addr(ports[1]), &tls).await.expect("start cluster");
    eventually(Duration::from_secs(5), "node 2 to catch up", || async {
        has_value(&n2, "while/sealed", b"z").await.then_some(())
    })
    .await;
    assert_eq!(n1.status().term, n2.status().term, "node 2 rejoined without an election");
    assert!(n1.status().is_leader);
    for n in [&n1, &n2, &n3] {
        n.shutdown().await.expect("shutdown");
    }
}
