//! One vaultd process on integrated storage: the slice HTTP -> barrier -> Raft -> sled, its
//! durability across restarts and SIGKILL, encryption at rest, and Vault's answers to bad input.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_tests::{Api, Node};
use serde_json::{json, Value};

async fn fresh(dir: &std::path::Path) -> (Node, Api, Vec<String>) {
    let node = Node::raft(dir, "node1");
    let api = node.client();
    let (keys, root) = api.init(3, 2).await;
    api.unseal(&keys).await;
    let api = api.with_token(&root);
    api.mount_kv2("secret").await;
    (node, api, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_survives_restart_and_unseal() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut node, api, keys) = fresh(tmp.path()).await;

    let (s, v) = api.req("POST", "secret/data/app/db", Some(json!({"data": {"password": "hunter2"}}))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["version"], 1);
    let (s, v) = api.req("GET", "secret/data/app/db", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["data"]["data"]["password"], "hunter2");

    node.restart();
    let fresh_api = node.client();
    let (_, st) = fresh_api.req("GET", "sys/seal-status", None).await;
    assert_eq!(st["sealed"], true, "a restarted node comes back sealed");
    assert_eq!(st["initialized"], true);
    let (s, v) = api.req("GET", "secret/data/app/db", None).await;
    assert_eq!((s, v["errors"][0].as_str()), (503, Some("Vault is sealed")));

    fresh_api.unseal(&keys).await;
    let (s, v) = api.req("GET", "secret/data/app/db", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["data"]["password"], "hunter2");
    let (s, v) = api.req("POST", "secret/data/app/db", Some(json!({"data": {"password": "x"}, "options": {"cas": 1}}))).await;
    assert_eq!(s, 200, "writes work after restart: {v}");
    assert_eq!(v["data"]["version"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut node, api, keys) = fresh(tmp.path()).await;

    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let stop = Instant::now() + Duration::from_millis(2500);
    let mut tasks = Vec::new();
    for w in 0..8 {
        let api = api.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < stop {
                let key = format!("w{w}/k{i}");
                match api.try_req("POST", &format!("secret/data/{key}"), Some(json!({"data": {"v": key}}))).await {
                    Ok((200, _)) => {
                        acked.lock().unwrap().insert(key);
                    }
                    _ => break,
                }
                i += 1;
            }
        }));
    }
    // Kill while the writers are mid-flight.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "too few writes acknowledged before the kill: {}", acked.len());

    node.start();
    node.client().unseal(&keys).await;
    let mut missing = Vec::new();
    for key in &acked {
        let (s, v) = api.req("GET", &format!("secret/data/{key}"), None).await;
        if s != 200 || v["data"]["data"]["v"] != Value::String(key.clone()) {
            missing.push(key.clone());
        }
    }
    assert!(missing.is_empty(), "{} of {} acknowledged writes lost, e.g. {:?}", missing.len(), acked.len(), &missing[..missing.len().min(5)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_on_disk_is_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut node, api, _keys) = fresh(tmp.path()).await;
    let marker = "PLAINTEXT-MARKER-8c1f2e9a";
    let (s, _) = api.req("POST", "secret/data/marker-path", Some(json!({"data": {"m": marker}}))).await;
    assert_eq!(s, 200);
    let root = api.token.clone().unwrap();
    node.stop();

    let mut files = 0;
    for entry in walk(&tmp.path().join("data")) {
        let bytes = std::fs::read(&entry).unwrap();
        files += 1;
        for needle in [marker.as_bytes(), root.as_bytes(), b"hunter2"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} contains plaintext {:?}",
                entry.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
    assert!(files > 0, "no data files found");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_vaults_errors_and_the_node_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::raft(tmp.path(), "node1");
    let anon = node.client();

    // Before init.
    let (s, v) = anon.req("GET", "sys/health", None).await;
    assert_eq!((s, &v["initialized"]), (501, &json!(false)));
    let (s, v) = anon.req("PUT", "sys/init", Some(json!({"secret_shares": 300, "secret_threshold": 2}))).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["errors"][0].as_str().unwrap().contains("shares must be less than 256"), "{v}");
    let (s, v) = anon.req("PUT", "sys/init", Some(json!({"secret_shares": 2, "secret_threshold": 3}))).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["errors"][0].as_str().unwrap().contains("threshold cannot be larger than shares"), "{v}");
    let (s, v) = anon.raw("PUT", "sys/init", "{\"secret_shares\":").await;
    assert_eq!(s, 400);
    assert!(v["errors"][0].as_str().unwrap().starts_with("failed to decode JSON input"), "{v}");

    let (keys, root) = anon.init(3, 2).await;
    let (s, v) = anon.req("PUT", "sys/init", Some(json!({"secret_shares": 1, "secret_threshold": 1}))).await;
    assert_eq!((s, v["errors"][0].as_str()), (400, Some("Vault is already initialized")));

    // Unseal input.
    let (s, v) = anon.req("PUT", "sys/unseal", Some(json!({}))).await;
    assert_eq!(s, 400);
    assert_eq!(v["errors"][0], "'key' must be specified in request body as JSON, or 'reset' set to true");
    let (s, v) = anon.req("PUT", "sys/unseal", Some(json!({"key": "zz"}))).await;
    assert_eq!(s, 400, "{v}");
    // Two shares that are well-formed but not from this cluster.
    let bogus = ["AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g", "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj9A"];
    let (s, _) = anon.req("PUT", "sys/unseal", Some(json!({"key": bogus[0]}))).await;
    assert_eq!(s, 200);
    let (s, v) = anon.req("PUT", "sys/unseal", Some(json!({"key": bogus[1]}))).await;
    assert_eq!(s, 400, "wrong shares must be refused: {v}");
    let (_, st) = anon.req("GET", "sys/seal-status", None).await;
    assert_eq!(st["sealed"], true);
    assert_eq!(st["progress"], 0, "a failed attempt is reset");

    anon.unseal(&keys).await;
    let api = anon.clone().with_token(&root);
    api.mount_kv2("secret").await;

    let (s, v) = api.raw("POST", "secret/data/x", "{\"data\": {").await;
    assert_eq!(s, 400, "{v}");
    assert!(v["errors"][0].as_str().unwrap().starts_with("failed to decode JSON input"));
    let (s, v) = api.req("GET", "nomount/foo", None).await;
    assert_eq!((s, v["errors"][0].as_str()), (404, Some("no handler for route \"nomount/foo\". route entry not found.")));
    let (s, v) = anon.req("GET", "secret/data/x", None).await;
    assert_eq!((s, v["errors"][0].as_str()), (403, Some("permission denied")));
    let (s, v) = anon.clone().with_token("hvs.bogus").req("GET", "secret/data/x", None).await;
    assert_eq!((s, v["errors"][0].as_str()), (403, Some("permission denied")));
    let (s, v) = api.req("GET", "secret/data/missing", None).await;
    assert_eq!((s, &v), (404, &json!({"errors": []})));
    let (s, v) = api.req("POST", "secret/data/x", Some(json!({"data": {"a": 1}, "options": {"cas": 7}}))).await;
    assert_eq!((s, v["errors"][0].as_str()), (400, Some("check-and-set parameter did not match the current version")));

    // Still serving.
    let (s, _) = api.req("GET", "sys/health", None).await;
    assert_eq!(s, 200);
    let (s, _) = api.req("POST", "secret/data/x", Some(json!({"data": {"a": 1}}))).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_leader_and_seal_status_have_vaults_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let (node, api, _) = fresh(tmp.path()).await;
    let (s, h) = api.req("GET", "sys/health", None).await;
    assert_eq!(s, 200);
    for f in ["initialized", "sealed", "standby", "performance_standby", "replication_performance_mode", "replication_dr_mode", "server_time_utc", "version", "cluster_name", "cluster_id"] {
        assert!(h.get(f).is_some(), "health lacks {f}: {h}");
    }
    // Every override the Go client sends must be accepted.
    let (s, _) = api
        .req("GET", "sys/health?standbyok=true&perfstandbyok=true&activecode=299&standbycode=299&drsecondarycode=299&performancestandbycode=299&sealedcode=299&uninitcode=299&removedcode=299&haunhealthycode=299", None)
        .await;
    assert_eq!(s, 299);
    let (s, _) = api.req("GET", "sys/health?activecode=abc", None).await;
    assert_eq!(s, 400);

    let (s, l) = api.req("GET", "sys/leader", None).await;
    assert_eq!(s, 200);
    assert_eq!(l["ha_enabled"], true);
    assert_eq!(l["is_self"], true);
    assert_eq!(l["leader_address"], node.addr.as_str());
    assert!(l["raft_committed_index"].as_u64().unwrap() > 0);

    let (s, m) = api.req("GET", "sys/mounts", None).await;
    assert_eq!(s, 200);
    assert_eq!(m["secret/"]["type"], "kv", "legacy top-level copy: {m}");
    assert_eq!(m["data"]["secret/"]["options"]["version"], "2");

    let (s, _) = api.req("PUT", "sys/seal", None).await;
    assert_eq!(s, 204);
    let (s, h) = api.req("GET", "sys/health", None).await;
    assert_eq!((s, &h["sealed"]), (503, &json!(true)));
    let (s, l) = api.req("GET", "sys/leader", None).await;
    assert_eq!((s, l["errors"][0].as_str()), (503, Some("Vault is sealed")));
}

/// Issue 3's engines keep their secrets behind the barrier too: userpass passwords, approle
/// secret IDs, KV v1 values and policy text never reach the disk in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_store_nothing_in_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut node, api, _keys) = fresh(tmp.path()).await;
    let password = "PASSWORD-MARKER-3f9a1c";
    let kv1_value = "KV1-MARKER-77d2e0";
    let policy_marker = "policy-marker-path-5b8e";

    let (s, v) = api.req("POST", "sys/auth/userpass", Some(json!({"type": "userpass"}))).await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = api.req("POST", "auth/userpass/users/alice", Some(json!({"password": password, "token_policies": ["default"]}))).await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = api.req("POST", "auth/userpass/login/alice", Some(json!({"password": password}))).await;
    assert_eq!(s, 200, "{v}");
    let login_token = v["auth"]["client_token"].as_str().unwrap().to_string();

    let (s, v) = api.req("POST", "sys/auth/approle", Some(json!({"type": "approle"}))).await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = api.req("POST", "auth/approle/role/app", Some(json!({"token_policies": ["default"]}))).await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = api.req("POST", "auth/approle/role/app/secret-id", None).await;
    assert_eq!(s, 200, "{v}");
    let secret_id = v["data"]["secret_id"].as_str().unwrap().to_string();
    let (_, v) = api.req("GET", "auth/approle/role/app/role-id", None).await;
    let role_id = v["data"]["role_id"].as_str().unwrap().to_string();

    let (s, v) = api.req("POST", "sys/mounts/kv1", Some(json!({"type": "kv"}))).await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = api.req("POST", "kv1/app", Some(json!({"v": kv1_value}))).await;
    assert_eq!(s, 204, "{v}");
    let policy = format!("path \"secret/data/{policy_marker}\" {{ capabilities = [\"read\"] }}");
    let (s, v) = api.req("PUT", "sys/policies/acl/marker", Some(json!({"policy": policy}))).await;
    assert_eq!(s, 204, "{v}");
    node.stop();

    for entry in walk(&tmp.path().join("data")) {
        let bytes = std::fs::read(&entry).unwrap();
        for needle in [password, kv1_value, policy_marker, &secret_id, &role_id, &login_token] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{} contains plaintext {needle:?}",
                entry.display()
            );
        }
    }
}
