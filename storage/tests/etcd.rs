//! The etcd backend against a real 3-member etcd cluster on loopback (one per test, so that
//! killing members in one test cannot disturb another). Skipped, with a message, when there is
//! no etcd binary.

use std::time::Duration;

use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use vaultd_storage::etcd::test_cluster::EtcdTestCluster;
use vaultd_storage::etcd::{EtcdBackend, EtcdConfig, EtcdLock};
use vaultd_storage::{conformance, ha_conformance, Backend, Error, HaBackend, HaLock, TxnOp};

/// Bound on waits that should take about one lock TTL; generous for a loaded machine.
const SLOW: Duration = Duration::from_secs(30);

async fn cluster() -> Option<EtcdTestCluster> {
    match EtcdTestCluster::start(3).await {
        Ok(Some(c)) => Some(c),
        Ok(None) => {
            eprintln!(
                "skipping: no etcd binary (Debian's etcd-server; `make testtools` installs it)"
            );
            None
        }
        Err(e) => panic!("etcd test cluster: {e}"),
    }
}

fn config(urls: Vec<String>, lock_ttl_secs: u64) -> EtcdConfig {
    EtcdConfig {
        endpoints: urls,
        path: "/vault/".into(),
        lock_ttl: Duration::from_secs(lock_ttl_secs),
        request_timeout: Duration::from_secs(3),
        ..EtcdConfig::default()
    }
}

async fn connect(urls: Vec<String>, lock_ttl_secs: u64) -> EtcdBackend {
    EtcdBackend::connect(config(urls, lock_ttl_secs)).await.expect("connect to the test cluster")
}

async fn take(lock: &dyn HaLock) -> vaultd_storage::LockLost {
    timeout(SLOW, lock.lock(CancellationToken::new()))
        .await
        .expect("lock within the bound")
        .expect("lock")
        .expect("a lock without a stop signal returns Some")
}

/// Takes a lock the way the server's HA loop does: an attempt that fails because etcd is busy
/// (a member just died, an election is running) is retried.
async fn take_retrying(lock: &dyn HaLock) -> vaultd_storage::LockLost {
    let deadline = Instant::now() + SLOW;
    loop {
        match lock.lock(CancellationToken::new()).await {
            Ok(Some(lost)) => return lost,
            Ok(None) => panic!("a lock without a stop signal returned None"),
            Err(e) if Instant::now() < deadline => {
                eprintln!("lock attempt failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("lock attempts kept failing: {e}"),
        }
    }
}

async fn lease_of(lock: &dyn HaLock) -> i64 {
    let lock = lock.as_any().downcast_ref::<EtcdLock>().expect("an etcd lock");
    lock.lease_id().await.expect("the lock is held")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_conformance() {
    let Some(c) = cluster().await else { return };
    let b = connect(c.client_urls(), 2).await;
    conformance::exercise_all(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_conformance() {
    let Some(c) = cluster().await else { return };
    // Two nodes: two connections, each to a different member first.
    let b = connect(c.client_urls(), 2).await;
    let mut urls = c.client_urls();
    urls.rotate_left(1);
    let b2 = connect(urls, 2).await;
    ha_conformance::exercise_ha_backend(&b, &b2).await;
    ha_conformance::exercise_ha_extras(&b, &b2).await;
}

/// Issue 7: a node that lost its lock without noticing (paused past its lease) cannot write:
/// etcd itself refuses the write, and the new holder's data stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_holder_writes_are_fenced() {
    let Some(c) = cluster().await else { return };
    let a = connect(c.client_urls(), 5).await;
    let b = connect(c.client_urls(), 5).await;

    // Before any lock is registered, writes are not fenced (cluster initialisation).
    a.put("core/seal-config", b"init".to_vec()).await.unwrap();

    let lock_a = a.lock_with("core/lock", "node-a").unwrap();
    let lost_a = take(&*lock_a).await;
    a.register_active_node_lock(&*lock_a).await.unwrap();
    a.put("data", b"from a".to_vec()).await.unwrap();

    // A's lease ends as if A had been paused past it (etcd deletes the lock key), and B takes
    // over at once and writes.
    let mut raw = etcd_client::Client::connect(c.client_urls(), None).await.unwrap();
    raw.lease_revoke(lease_of(&*lock_a).await).await.unwrap();
    let lock_b = b.lock_with("core/lock", "node-b").unwrap();
    let _lost_b = take(&*lock_b).await;
    b.register_active_node_lock(&*lock_b).await.unwrap();
    b.put("data", b"from b".to_vec()).await.unwrap();

    // Every kind of write from A is refused, whatever A believes.
    let refused = |r: vaultd_storage::Result<()>, what: &str| match r {
        Err(Error::Fenced { lock_key }) => assert_eq!(lock_key, "/vault/core/lock", "{what}"),
        other => panic!("{what}: expected Fenced, got {other:?}"),
    };
    refused(a.put("data", b"from a, stale".to_vec()).await, "stale put");
    refused(a.delete("data").await, "stale delete");
    refused(
        a.transaction(vec![
            TxnOp::Put { key: "data".into(), value: b"stale txn".to_vec() },
            TxnOp::Put { key: "other".into(), value: b"stale txn".to_vec() },
        ])
        .await,
        "stale transaction",
    );
    assert_eq!(b.get("data").await.unwrap().as_deref(), Some(&b"from b"[..]));
    assert_eq!(b.get("other").await.unwrap(), None, "a refused transaction wrote part of itself");
    assert_eq!(
        a.lock_with("core/lock", "x").unwrap().value().await.unwrap().as_deref(),
        Some("node-b")
    );

    // A learns it lost the lock (its watch sees the key go).
    timeout(SLOW, lost_a.wait()).await.expect("A's lost signal");
    // And registering a lost lock is refused.
    assert!(matches!(a.register_active_node_lock(&*lock_a).await, Err(Error::Fenced { .. })));
}

/// The member a holder talks to dies (`kill`) or hangs (`pause`): the holder's lost signal
/// fires before another node can take the lock, and the other node gets it.
async fn lock_moves_when_holders_member_fails(kill: bool) {
    let Some(mut c) = cluster().await else { return };
    let ttl = 3;
    let a = connect(vec![c.client_url(0)], ttl).await;
    let b = connect(vec![c.client_url(1), c.client_url(2)], ttl).await;
    let lock_a = a.lock_with("core/lock", "node-a").unwrap();
    let lost_a = take(&*lock_a).await;
    let lock_b = b.lock_with("core/lock", "node-b").unwrap();

    let failed_at = Instant::now();
    if kill {
        c.kill(0);
    } else {
        c.pause(0, true);
    }
    let a_lost = async {
        lost_a.wait().await;
        Instant::now()
    };
    let b_took = async {
        let lost_b = take_retrying(&*lock_b).await;
        (Instant::now(), lost_b)
    };
    let (a_lost_at, (b_took_at, lost_b)) =
        timeout(SLOW, async { tokio::join!(a_lost, b_took) }).await.expect("lock hand-over");
    eprintln!(
        "member {}: A lost the lock after {:?}, B took it after {:?}",
        if kill { "killed" } else { "paused" },
        a_lost_at - failed_at,
        b_took_at - failed_at
    );
    assert!(a_lost_at <= b_took_at, "A still believed it held the lock when B took it");
    assert!(!lost_b.is_lost());
    assert_eq!(lock_b.value().await.unwrap().as_deref(), Some("node-b"));
    if !kill {
        c.pause(0, false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_lost_when_members_process_is_killed() {
    lock_moves_when_holders_member_fails(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_lost_when_members_process_hangs() {
    lock_moves_when_holders_member_fails(false).await;
}

/// etcd down at connect: a clear error, no panic; a backend made while it was up fails its
/// requests while it is down and works again, unchanged, when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unreachable_then_back() {
    let Some(mut c) = cluster().await else { return };
    let b = connect(c.client_urls(), 2).await;
    b.put("kept", b"v".to_vec()).await.unwrap();
    for i in 0..3 {
        c.kill(i);
    }

    let mut cfg = config(c.client_urls(), 2);
    cfg.request_timeout = Duration::from_secs(1);
    match EtcdBackend::connect(cfg.clone()).await {
        Err(Error::Unavailable(msg)) => {
            assert!(msg.contains("unreachable") && msg.contains(&c.client_url(0)), "{msg}")
        }
        Err(e) => panic!("connect to a down cluster: wrong error: {e}"),
        Ok(_) => panic!("connect to a down cluster succeeded"),
    }
    match b.get("kept").await {
        Err(Error::Unavailable(_)) => {}
        other => panic!("get with etcd down: expected Unavailable, got {other:?}"),
    }
    let lock = b.lock_with("core/lock", "x").unwrap();
    assert!(lock.lock(CancellationToken::new()).await.is_err(), "lock with etcd down");

    for i in 0..3 {
        c.start_member(i).unwrap();
    }
    c.wait_ready(SLOW).await.unwrap();
    let again = EtcdBackend::connect(cfg).await.expect("connect once etcd is back");
    assert_eq!(again.get("kept").await.unwrap().as_deref(), Some(&b"v"[..]));
    // The old client reconnects by itself.
    let deadline = Instant::now() + SLOW;
    loop {
        match b.get("kept").await {
            Ok(v) => {
                assert_eq!(v.as_deref(), Some(&b"v"[..]));
                break;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("old client not back yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("old client never recovered: {e}"),
        }
    }
    let lost = take_retrying(&*lock).await;
    assert!(!lost.is_lost());
}

/// A transaction beyond etcd's limits is refused here, with the limit named, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_transactions_are_refused() {
    let Some(c) = cluster().await else { return };
    let b = connect(c.client_urls(), 2).await;
    let many: Vec<TxnOp> =
        (0..129).map(|i| TxnOp::Put { key: format!("many/{i}"), value: b"v".to_vec() }).collect();
    match b.transaction(many).await {
        Err(Error::TransactionTooLarge(m)) => assert!(m.contains("--max-txn-ops"), "{m}"),
        other => panic!("129 ops: expected TransactionTooLarge, got {other:?}"),
    }
    let big: Vec<TxnOp> = (0..2)
        .map(|i| TxnOp::Put { key: format!("big/{i}"), value: vec![0u8; 1024 * 1024] })
        .collect();
    match b.transaction(big).await {
        Err(Error::TransactionTooLarge(m)) => assert!(m.contains("--max-request-bytes"), "{m}"),
        other => panic!("2 MiB txn: expected TransactionTooLarge, got {other:?}"),
    }
    assert_eq!(b.list("").await.unwrap(), Vec::<String>::new());
    // 128 operations is exactly etcd's default limit, and a listing pages through them.
    let ok: Vec<TxnOp> = (0..128)
        .map(|i| TxnOp::Put { key: format!("many/{i:03}"), value: b"v".to_vec() })
        .collect();
    b.transaction(ok).await.unwrap();
    let listed = b.list("many/").await.unwrap();
    assert_eq!(listed.len(), 128);
    assert_eq!(listed[0], "000");

    // Listings page: more direct children than a page, and a folder larger than a page that the
    // listing steps over.
    for batch in 0..3 {
        let ops = (0..128)
            .map(|i| TxnOp::Put { key: format!("page/k{:03}", batch * 128 + i), value: vec![] })
            .chain((0..100).map(|i| TxnOp::Put {
                key: format!("page/dir/{:03}", batch * 100 + i),
                value: vec![],
            }))
            .collect::<Vec<_>>();
        for chunk in ops.chunks(128) {
            b.transaction(chunk.to_vec()).await.unwrap();
        }
    }
    let listed = b.list("page/").await.unwrap();
    assert_eq!(listed.len(), 385, "384 keys and one folder");
    assert_eq!(listed[0], "dir/");
    assert_eq!(listed[384], "k383");
    assert_eq!(b.list("page/dir/").await.unwrap().len(), 300);
    assert_eq!(b.list("").await.unwrap(), ["many/", "page/"]);
}

/// Certificates for the TLS test: a CA, a server certificate for 127.0.0.1, a client certificate.
fn make_tls(dir: &std::path::Path) -> vaultd_storage::etcd::test_cluster::TestTls {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names).unwrap().signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into()]);
    let (client_cert, client_key) = leaf(vec!["vaultd".into()]);
    let write = |name: &str, pem: &str| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    vaultd_storage::etcd::test_cluster::TestTls {
        ca_file: write("ca.pem", &ca.pem()),
        server_cert_file: write("server.pem", &server_cert),
        server_key_file: write("server-key.pem", &server_key),
        client_cert_file: write("client.pem", &client_cert),
        client_key_file: write("client-key.pem", &client_key),
    }
}

/// `tls_ca_file`, `tls_cert_file`, `tls_key_file`: the backend talks to an etcd that requires
/// client certificates, through rustls with aws-lc-rs; without the client certificate it cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let certs = tempfile::tempdir().unwrap();
    let tls = make_tls(certs.path());
    let c = match EtcdTestCluster::start_with(3, Some(tls.clone())).await {
        Ok(Some(c)) => c,
        Ok(None) => return eprintln!("skipping: no etcd binary"),
        Err(e) => panic!("etcd test cluster: {e}"),
    };
    let mut cfg = config(c.client_urls(), 2);
    assert!(cfg.endpoints[0].starts_with("https://"));
    cfg.tls_ca_file = Some(tls.ca_file.clone());
    cfg.tls_cert_file = Some(tls.client_cert_file.clone());
    cfg.tls_key_file = Some(tls.client_key_file.clone());
    let b = EtcdBackend::connect(cfg.clone()).await.expect("connect over TLS");
    b.put("over/tls", b"v".to_vec()).await.unwrap();
    assert_eq!(b.get("over/tls").await.unwrap().as_deref(), Some(&b"v"[..]));
    let lock = b.lock_with("core/lock", "tls").unwrap();
    let _lost = take(&*lock).await;
    assert_eq!(lock.value().await.unwrap().as_deref(), Some("tls"));

    // Without a client certificate etcd refuses the handshake: an error naming the cluster,
    // no panic.
    cfg.tls_cert_file = None;
    cfg.tls_key_file = None;
    cfg.request_timeout = Duration::from_secs(2);
    match EtcdBackend::connect(cfg).await {
        // tonic reports the refused handshake either as the TLS alert or, when its balancer
        // gives up on the endpoints first, as a cancelled call.
        Err(Error::Config(msg)) | Err(Error::Unavailable(msg)) => {
            assert!(msg.contains("etcd at https://127.0.0.1:"), "{msg}")
        }
        Err(e) => panic!("connect without a client certificate: wrong error: {e}"),
        Ok(_) => panic!("connect without a client certificate succeeded"),
    }
}

/// `username` and `password`: the backend works as an etcd user limited to its `path`, and a
/// wrong password is a clear error at connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_and_password() {
    use etcd_client::Permission;
    let Some(c) = cluster().await else { return };
    let mut admin = etcd_client::Client::connect(c.client_urls(), None).await.unwrap();
    admin.user_add("root", "root-pw", None).await.unwrap();
    // The root role exists once granted for the first time; add it where it must be added.
    let _ = admin.role_add("root").await;
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("vaultd").await.unwrap();
    admin
        .role_grant_permission("vaultd", Permission::read_write("/vault/").with_prefix())
        .await
        .unwrap();
    admin.user_add("vaultd", "s3cret", None).await.unwrap();
    admin.user_grant_role("vaultd", "vaultd").await.unwrap();
    admin.auth_enable().await.unwrap();

    let mut cfg = config(c.client_urls(), 2);
    cfg.username = Some("vaultd".into());
    cfg.password = Some("s3cret".into());
    let b = EtcdBackend::connect(cfg.clone()).await.expect("connect as the vaultd user");
    conformance::exercise_backend(&b).await;
    let lock = b.lock_with("core/lock", "authed").unwrap();
    let _lost = take(&*lock).await;
    b.register_active_node_lock(&*lock).await.unwrap();
    b.put("fenced/with/auth", b"v".to_vec()).await.unwrap();

    cfg.password = Some("wrong".into());
    match EtcdBackend::connect(cfg).await {
        Err(Error::Config(msg)) => {
            assert!(msg.contains("authentication failed") && !msg.contains("wrong"), "{msg}");
        }
        Err(e) => panic!("connect with a wrong password: wrong error: {e}"),
        Ok(_) => panic!("connect with a wrong password succeeded"),
    }
}

/// Operations per second through the etcd backend on the 3-member test cluster (data in
/// /dev/shm, so etcd's fsyncs cost little: an upper bound for a cluster on disks). Run with
/// `cargo test -p vaultd-storage --release --test etcd -- --ignored bench_etcd --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_etcd() {
    let Some(c) = cluster().await else { return };
    let b = std::sync::Arc::new(connect(c.client_urls(), 15).await);
    let lock = b.lock_with("core/lock", "bench").unwrap();
    let _lost = take(&*lock).await;
    let secs = 3.0;
    for (what, workers, fenced) in [
        ("writes", 1usize, false),
        ("writes", 32, false),
        ("writes", 32, true),
        ("reads", 32, true),
    ] {
        if fenced {
            b.register_active_node_lock(&*lock).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..workers {
            let b = b.clone();
            tasks.spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    if what == "writes" {
                        b.put(&format!("bench/{t:02}/{n:08}"), vec![0x5a; 256]).await.expect("put");
                    } else {
                        b.get(&format!("bench/{t:02}/{:08}", n % 100)).await.expect("get");
                    }
                    n += 1;
                }
                n
            });
        }
        let mut total = 0;
        while let Some(n) = tasks.join_next().await {
            total += n.expect("task");
        }
        eprintln!(
            "etcd: {what} {workers:>2} workers{}: {total} in {secs} s = {:.0}/s",
            if fenced { " (fenced)" } else { "" },
            total as f64 / secs
        );
    }
}
