//! Raft snapshots (issue 4) with real processes: save, write more, restore brings back exactly
//! the saved data, on a single node and on every node of a 3-node cluster; truncated, corrupted,
//! empty, garbage and foreign snapshots are refused with a clear 400 and change nothing (a forced
//! restore of a foreign snapshot seals the node, as Vault's does); vaultd's CLI and OpenBao's
//! `bao` CLI drive both directions.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cluster_tests::{bao_bin, run_cmd, vaultd_bin, Api, Node};
use serde_json::{json, Value};

fn vaultd(addr: &str, token: &str) -> Command {
    let mut c = Command::new(vaultd_bin());
    c.env("VAULT_ADDR", addr)
        .env("VAULT_TOKEN", token)
        .env_remove("BAO_ADDR")
        .env_remove("BAO_TOKEN")
        .env("HOME", "/nonexistent");
    c
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

async fn save_bytes(api: &Api) -> Vec<u8> {
    let resp = http()
        .get(format!("{}/v1/sys/storage/raft/snapshot", api.addr))
        .header("X-Vault-Token", api.token.as_deref().unwrap_or(""))
        .send()
        .await
        .expect("save");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/gzip");
    assert!(resp.headers()["content-disposition"].to_str().unwrap_or("").starts_with("attachment"));
    resp.bytes().await.expect("snapshot body").to_vec()
}

async fn restore_bytes(api: &Api, body: Vec<u8>, force: bool) -> (u16, Value) {
    let path = if force { "snapshot-force" } else { "snapshot" };
    let resp = http()
        .post(format!("{}/v1/sys/storage/raft/{path}", api.addr))
        .header("X-Vault-Token", api.token.as_deref().unwrap_or(""))
        .body(body)
        .send()
        .await
        .expect("restore");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("body");
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn put(api: &Api, key: &str, value: &str) {
    let (s, v) = api.req("POST", &format!("kv/data/{key}"), Some(json!({"data": {"v": value}}))).await;
    assert_eq!(s, 200, "write {key}: {v}");
}

async fn status_of(api: &Api, key: &str) -> u16 {
    api.req("GET", &format!("kv/data/{key}"), None).await.0
}

/// Polls until `key` reads with `want` status on `api` (a follower applies the restore shortly
/// after the leader).
async fn wait_status(api: &Api, key: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = status_of(api, key).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{key} on {}: {got}, want {want}", api.addr);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A one-node cluster, initialized and unsealed, with KV v2 at `kv/`.
async fn single(dir: &Path, id: &str) -> (Node, Api) {
    let n = Node::raft(dir, id);
    let (keys, root) = n.client().init(1, 1).await;
    n.client().unseal(&keys).await;
    let api = n.client().with_token(&root);
    api.mount_kv2("kv").await;
    (n, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_save_write_restore_with_the_cli() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (n, api) = single(&tmp.path().join("n1"), "node1").await;
    let root = api.token.clone().expect("token");
    put(&api, "a", "before").await;

    let file = tmp.path().join("snap.gz");
    let (code, out, err) = run_cmd(vaultd(&n.addr, &root).args(["operator", "raft", "snapshot", "save"]).arg(&file));
    assert_eq!(code, 0, "{out}{err}");
    assert!(std::fs::metadata(&file).expect("saved file").len() > 0);
    // What is on disk is ciphertext: the saved value does not appear (gzip level aside, the
    // temp files are gone from the raft directory).
    let tmp_dir = n.dir.join("data").join("snapshot-tmp");
    assert_eq!(std::fs::read_dir(&tmp_dir).map(|d| d.count()).unwrap_or(0), 0, "temporary files left behind");

    put(&api, "b", "after").await;
    put(&api, "a", "changed").await;
    let (code, out, err) = run_cmd(vaultd(&n.addr, &root).args(["operator", "raft", "snapshot", "restore"]).arg(&file));
    assert_eq!(code, 0, "{out}{err}");
    let (s, v) = api.req("GET", "kv/data/a", None).await;
    assert_eq!((s, &v["data"]["data"]["v"]), (200, &json!("before")), "{v}");
    assert_eq!(status_of(&api, "b").await, 404);
    // The node keeps serving and writing after the restore, and across a restart.
    put(&api, "c", "later").await;
    assert_eq!(std::fs::read_dir(&tmp_dir).map(|d| d.count()).unwrap_or(0), 0, "temporary files left behind");

    // Errors in Vault's CLI shape.
    let (code, _, err) = run_cmd(vaultd(&n.addr, "bogus").args(["operator", "raft", "snapshot", "save"]).arg(tmp.path().join("x")));
    assert_eq!(code, 2);
    assert!(err.contains("Error taking the snapshot") && err.contains("Code: 403"), "{err}");
    let (code, _, err) = run_cmd(vaultd(&n.addr, &root).args(["operator", "raft", "snapshot", "restore"]).arg(tmp.path().join("missing")));
    assert_eq!(code, 1);
    assert!(err.contains("Error opening snapshot file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_restore_reaches_every_follower() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let n1 = Node::raft(&tmp.path().join("n1"), "node1");
    let n2 = Node::raft(&tmp.path().join("n2"), "node2");
    let n3 = Node::raft(&tmp.path().join("n3"), "node3");
    let (keys, root) = n1.client().init(1, 1).await;
    n1.client().unseal(&keys).await;
    n1.client().with_token(&root).fast_autopilot().await;
    let c1 = n1.client().with_token(&root);
    c1.mount_kv2("kv").await;
    for n in [&n2, &n3] {
        let (s, v) = n.client().req("POST", "sys/storage/raft/join", Some(json!({ "leader_api_addr": n1.addr }))).await;
        assert_eq!(s, 200, "{v}");
        n.client().unseal(&keys).await;
    }
    let (c2, c3) = (n2.client().with_token(&root), n3.client().with_token(&root));

    put(&c1, "a", "saved").await;
    for c in [&c2, &c3] {
        wait_status(c, "a", 200).await;
    }
    let snapshot = save_bytes(&c1).await;
    put(&c1, "b", "later").await;
    for c in [&c2, &c3] {
        wait_status(c, "b", 200).await;
    }

    // A standby redirects snapshot requests to the active node, as Vault does.
    let resp = http()
        .get(format!("{}/v1/sys/storage/raft/snapshot", n2.addr))
        .header("X-Vault-Token", &root)
        .send()
        .await
        .expect("standby");
    assert_eq!(resp.status().as_u16(), 307);
    assert_eq!(resp.headers()["location"], format!("{}/v1/sys/storage/raft/snapshot", n1.addr).as_str());

    let (s, v) = restore_bytes(&c1, snapshot, false).await;
    assert_eq!(s, 204, "{v}");
    assert_eq!(status_of(&c1, "b").await, 404);
    assert_eq!(status_of(&c1, "a").await, 200);
    // Each follower's local store shows the restored data.
    for c in [&c2, &c3] {
        wait_status(c, "b", 404).await;
        wait_status(c, "a", 200).await;
    }
    // Replication goes on after the restore.
    put(&c1, "c", "after").await;
    for c in [&c2, &c3] {
        wait_status(c, "c", 200).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_snapshots_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (n, api) = single(&tmp.path().join("n1"), "node1").await;
    put(&api, "a", "saved").await;
    let good = save_bytes(&api).await;
    put(&api, "b", "later").await;

    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x55;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 2].to_vec()),
        ("truncated trailer", good[..good.len() - 4].to_vec()),
        ("flipped byte", flipped),
        ("empty", Vec::new()),
        ("garbage", b"this is not a snapshot at all".repeat(100)),
    ];
    for (what, body) in cases {
        let (s, v) = restore_bytes(&api, body, false).await;
        assert_eq!(s, 400, "{what}: {v}");
        let msg = v["errors"][0].as_str().unwrap_or("");
        assert!(msg.contains("snapshot"), "{what}: unclear error {v}");
        assert_eq!(status_of(&api, "a").await, 200, "{what} changed the data");
        assert_eq!(status_of(&api, "b").await, 200, "{what} changed the data");
    }
    // Without a token, or sealed-hash checks aside: no restore either.
    let (s, _) = restore_bytes(&Api::new(&n.addr), good.clone(), false).await;
    assert_eq!(s, 403);

    // Another cluster's snapshot: Vault's 400, then snapshot-force restores it and the node seals
    // (its keyring needs the other cluster's keys).
    let (_other_node, other) = single(&tmp.path().join("other"), "other1").await;
    put(&other, "foreign", "x").await;
    let foreign = save_bytes(&other).await;
    let (s, v) = restore_bytes(&api, foreign.clone(), false).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["errors"][0].as_str().unwrap_or("").starts_with(
            "could not verify hash file, possibly the snapshot is using a different set of unseal keys; use the snapshot-force API"
        ),
        "{v}"
    );
    assert_eq!(status_of(&api, "b").await, 200);
    let (s, v) = restore_bytes(&api, foreign, true).await;
    assert_eq!(s, 204, "{v}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, st) = n.client().req("GET", "sys/seal-status", None).await;
        if st["sealed"] == json!(true) {
            break;
        }
        assert!(Instant::now() < deadline, "the node did not seal after a foreign forced restore: {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bao_cli_saves_and_restores() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (n, api) = single(&tmp.path().join("n1"), "node1").await;
    let root = api.token.clone().expect("token");
    put(&api, "a", "saved").await;
    let bao = |args: &[&str]| {
        let mut c = Command::new(bao_bin());
        c.args(args).env("BAO_ADDR", &n.addr).env("BAO_TOKEN", &root).env("HOME", "/nonexistent");
        run_cmd(&mut c)
    };
    let file = tmp.path().join("bao.snap");
    let file_s = file.to_string_lossy().into_owned();
    let (code, out, err) = bao(&["operator", "raft", "snapshot", "save", &file_s]);
    assert_eq!(code, 0, "{out}{err}");
    put(&api, "b", "later").await;
    let (code, out, err) = bao(&["operator", "raft", "snapshot", "restore", &file_s]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(status_of(&api, "a").await, 200);
    assert_eq!(status_of(&api, "b").await, 404);
}
