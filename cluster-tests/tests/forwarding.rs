//! Standbys and the active node (issue 5), with three real processes: a write sent to a standby
//! is forwarded to the active node over the cluster port and acknowledged once; with
//! `X-Vault-No-Request-Forwarding` the standby redirects (307 to the active node's api_addr);
//! OpenBao's `bao` CLI and hvac work pointed at a standby; a standby that knows no active node
//! answers Vault's 500.

use std::process::Command;
use std::time::{Duration, Instant};

use cluster_tests::cluster::Cluster;
use cluster_tests::{bao_bin, run_cmd, venv_python, Api};
use serde_json::{json, Value};

/// Reads `path` on `api` until it answers 200 (a standby applies the log shortly after).
async fn read_eventually(api: &Api, path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = api.req("GET", path, None).await;
        if s == 200 {
            return v;
        }
        assert!(Instant::now() < deadline, "{path} on {}: {s} {v}", api.addr);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

fn bao(addr: &str, token: &str) -> Command {
    let mut c = Command::new(bao_bin());
    let home = tempfile::tempdir().expect("home").keep();
    c.env("BAO_ADDR", addr).env("VAULT_ADDR", addr).env("BAO_TOKEN", token).env("HOME", home);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standbys_forward_redirect_and_serve_real_clients() {
    let c = Cluster::start(3).await;
    let (active, standby, other) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);

    // A write to a standby is acknowledged once (one version) and readable everywhere.
    let sb = standby.client().with_token(&c.root);
    let (s, v) = sb.req("POST", "kv/data/fw", Some(json!({ "data": { "via": "standby" } }))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["version"], json!(1), "{v}");
    for n in &c.nodes {
        let v = read_eventually(&n.client().with_token(&c.root), "kv/data/fw").await;
        assert_eq!(v["data"]["data"], json!({ "via": "standby" }), "{v}");
        assert_eq!(v["data"]["metadata"]["version"], json!(1), "{v}");
    }
    // The active node's answer is relayed whole: status, headers and body (a 404 stays a 404,
    // a 403 a 403).
    let (s, v) = sb.req("GET", "kv/data/missing", None).await;
    assert_eq!((s, &v), (404, &json!({ "errors": [] })));
    let (s, v) = standby.client().with_token("nope").req("GET", "kv/data/fw", None).await;
    assert_eq!((s, &v), (403, &json!({ "errors": ["permission denied"] })));

    // Redirection on request: 307 to the active node, the same path and query; following it works.
    let http = no_redirects();
    let resp = http
        .post(format!("{}/v1/kv/data/redirected?x=1", standby.addr))
        .header("X-Vault-Token", &c.root)
        .header("X-Vault-No-Request-Forwarding", "true")
        .json(&json!({ "data": { "via": "redirect" } }))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 307);
    let location = resp.headers()["location"].to_str().expect("location").to_string();
    assert_eq!(location, format!("{}/v1/kv/data/redirected?x=1", active.addr));
    let resp = http
        .post(&location)
        .header("X-Vault-Token", &c.root)
        .json(&json!({ "data": { "via": "redirect" } }))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    // Snapshots always redirect.
    let resp = http.get(format!("{}/v1/sys/storage/raft/snapshot", other.addr)).header("X-Vault-Token", &c.root).send().await.expect("send");
    assert_eq!(resp.status().as_u16(), 307);
    // Sealing a standby is refused, as Vault refuses it.
    let (s, v) = other.client().with_token(&c.root).req("PUT", "sys/seal", None).await;
    assert_eq!(s, 500, "{v}");

    // OpenBao's CLI pointed at a standby.
    let (code, out, err) = run_cmd(bao(&standby.addr, &c.root).args(["kv", "put", "kv/cli", "a=1"]));
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run_cmd(bao(&other.addr, &c.root).args(["kv", "get", "-field=a", "kv/cli"]));
    assert_eq!((code, out.trim()), (0, "1"), "{out}{err}");
    let (code, out, err) = run_cmd(bao(&standby.addr, &c.root).args(["token", "create", "-format=json", "-ttl=1h"]));
    assert_eq!(code, 0, "{out}{err}");
    let tok: Value = serde_json::from_str(&out).expect("json");
    let new_token = tok["auth"]["client_token"].as_str().expect("token").to_string();
    let (code, out, err) = run_cmd(bao(&other.addr, &new_token).args(["token", "lookup", "-format=json"]));
    assert_eq!(code, 0, "{out}{err}");

    // hvac pointed at a standby.
    let script = r#"
import sys, hvac
c = hvac.Client(url=sys.argv[1], token=sys.argv[2])
assert c.is_authenticated()
c.secrets.kv.v2.create_or_update_secret(path="hvac", secret={"k": "v"}, mount_point="kv")
r = c.secrets.kv.v2.read_secret_version(path="hvac", mount_point="kv", raise_on_deleted_version=True)
assert r["data"]["data"] == {"k": "v"}, r
t = c.auth.token.create(policies=["default"], ttl="1h")["auth"]["client_token"]
assert hvac.Client(url=sys.argv[1], token=t).is_authenticated()
print("hvac-standby-ok")
"#;
    let (code, out, err) = run_cmd(Command::new(venv_python()).args(["-c", script, &other.addr, &c.root]));
    assert_eq!(code, 0, "hvac: {out}{err}");
    assert!(out.contains("hvac-standby-ok"), "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_without_an_active_node_answers_500() {
    let mut c = Cluster::start(3).await;
    // Without a quorum no node can become active.
    c.nodes[0].kill9();
    c.nodes[1].kill9();
    let last = c.nodes[2].client().with_token(&c.root);
    let mut seen = (0, Value::Null);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        // Until the node notices, it may still redirect to the dead node (which the client
        // follows and fails to reach).
        if let Ok(answer) = last.try_req("GET", "kv/data/fw", None).await {
            seen = answer;
            if seen.0 == 500 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(seen, (500, json!({ "errors": ["local node not active but active cluster node not found"] })));
}
