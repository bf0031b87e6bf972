//! Performance standbys (issue 6), with three real processes: reads on a standby are served
//! from its local replica (its forward counter in `sys/metrics` stays put); a write through any
//! node returns `X-Vault-Index`, and a read sent with it to another node sees the write; a
//! linearizable read on a standby asks the active node for one read index; a revoked token is
//! refused on every standby once applied; writes (KV v2 with cas, a login, a token create, a
//! token use count) through a standby are forwarded; health, leader and `vaultd status` say
//! "performance standby"; `disable_performance_standby` gives back the plain standby; OpenBao's
//! `bao` CLI and hvac read from a standby.

use std::process::Command;
use std::time::{Duration, Instant};

use cluster_tests::cluster::{wait_for, Cluster};
use cluster_tests::{bao_bin, run_cmd, vaultd_bin, venv_python, Api};
use serde_json::{json, Value};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// One request with extra headers: (status, headers, JSON body or Null).
async fn send(
    http: &reqwest::Client,
    addr: &str,
    method: &str,
    path: &str,
    token: &str,
    headers: &[(&str, String)],
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut r = http.request(m, format!("{addr}/v1/{path}")).header("X-Vault-Token", token);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"));
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body");
    (status, h, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn header(h: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// A counter from the node's `sys/metrics`.
async fn counter(api: &Api, name: &str) -> u64 {
    let (s, v) = api.req("GET", "sys/metrics", None).await;
    assert_eq!(s, 200, "sys/metrics: {v}");
    v["Counters"].as_array().expect("counters").iter().find(|c| c["Name"] == json!(name)).and_then(|c| c["Count"].as_u64()).unwrap_or(0)
}

const FORWARDED: &str = "vault.ha.rpc.client.forward";
const LOCAL: &str = "vaultd.standby.local";
const READ_INDEX: &str = "vaultd.standby.read_index";

fn bao(addr: &str, token: &str) -> Command {
    let mut c = Command::new(bao_bin());
    let home = tempfile::tempdir().expect("home").keep();
    c.env("BAO_ADDR", addr).env("VAULT_ADDR", addr).env("BAO_TOKEN", token).env("HOME", home);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standbys_read_locally_with_the_consistency_asked_for() {
    let c = Cluster::start(3).await;
    let h = http();
    let (a, b, d) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let sb = b.client().with_token(&c.root);

    // Status: health 473 (200 with perfstandbyok), leader and `vaultd status` name it.
    let (s, v) = b.client().req("GET", "sys/health", None).await;
    assert_eq!((s, &v["standby"], &v["performance_standby"]), (473, &json!(true), &json!(true)), "{v}");
    assert_eq!(b.client().req("GET", "sys/health?perfstandbyok=true", None).await.0, 200);
    assert_eq!(b.client().req("GET", "sys/health?standbyok=true", None).await.0, 473, "standbyok does not apply to a performance standby");
    let (_, v) = a.client().req("GET", "sys/health", None).await;
    assert_eq!(v["performance_standby"], json!(false), "{v}");
    let (_, v) = b.client().req("GET", "sys/leader", None).await;
    assert_eq!((&v["performance_standby"], &v["is_self"]), (&json!(true), &json!(false)), "{v}");
    let (code, out, err) = run_cmd(Command::new(vaultd_bin()).args(["status"]).env("VAULT_ADDR", &b.addr));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.lines().any(|l| l.starts_with("HA Mode") && l.trim_end().ends_with("standby")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("Performance Standby Node") && l.trim_end().ends_with("true")), "{out}");

    // Read-your-writes: a write through any node, then a read with its X-Vault-Index on another
    // node at once, always the new value.
    let addrs = [&a.addr, &b.addr, &d.addr];
    for i in 0..30usize {
        let (w, r) = (addrs[i % 3], addrs[(i + 1) % 3]);
        let (s, hw, v) = send(&h, w, "POST", "kv/data/ryw", &c.root, &[], Some(json!({ "data": { "n": i } }))).await;
        assert_eq!(s, 200, "write {i} through {w}: {v}");
        let index = header(&hw, "x-vault-index").unwrap_or_else(|| panic!("no X-Vault-Index on a write through {w}: {hw:?}"));
        let (s, _, v) = send(&h, r, "GET", "kv/data/ryw", &c.root, &[("X-Vault-Index", index)], None).await;
        assert_eq!((s, &v["data"]["data"]["n"]), (200, &json!(i)), "read {i} on {r} after a write through {w}: {v}");
    }

    // Reads on a standby do not touch the network: its forward counter does not move.
    let (fwd0, local0) = (counter(&sb, FORWARDED).await, counter(&sb, LOCAL).await);
    for _ in 0..50 {
        let (s, hr, v) = send(&h, &b.addr, "GET", "kv/data/ryw", &c.root, &[], None).await;
        assert_eq!(s, 200, "{v}");
        assert!(header(&hr, "x-vault-applied-index").is_some_and(|i| i.parse::<u64>().is_ok()), "{hr:?}");
    }
    let (s, _) = sb.req("LIST", "kv/metadata/", None).await;
    assert_eq!(s, 200);
    let (s, v) = sb.req("GET", "kv/data/missing", None).await;
    assert_eq!((s, &v), (404, &json!({ "errors": [] })));
    assert_eq!(counter(&sb, FORWARDED).await, fwd0, "reads on a performance standby were forwarded");
    assert!(counter(&sb, LOCAL).await >= local0 + 52);
    // A token the standby does not know may be one the active node just created: forwarded.
    let (s, v) = b.client().with_token("nope").req("GET", "kv/data/ryw", None).await;
    assert_eq!((s, &v), (403, &json!({ "errors": ["permission denied"] })));
    assert_eq!(counter(&sb, FORWARDED).await, fwd0 + 1);

    // An index this node cannot reach in time: 412 with `fail`, forwarded by default.
    let (_, hw, _) = send(&h, &a.addr, "POST", "kv/data/far", &c.root, &[], Some(json!({ "data": { "x": 1 } }))).await;
    let far = far_index(hw["x-vault-index"].to_str().expect("index"), 1_000_000);
    let t0 = Instant::now();
    let (s, _, v) = send(&h, &b.addr, "GET", "kv/data/far", &c.root, &[("X-Vault-Index", far.clone()), ("X-Vault-Inconsistent", "fail".into())], None).await;
    assert_eq!((s, &v), (412, &json!({ "errors": ["required index state not present"] })));
    assert!(t0.elapsed() >= Duration::from_millis(1900), "412 before the bounded wait: {:?}", t0.elapsed());
    let fwd = counter(&sb, FORWARDED).await;
    let (s, _, v) = send(&h, &b.addr, "GET", "kv/data/far", &c.root, &[("X-Vault-Index", far)], None).await;
    assert_eq!((s, &v["data"]["data"]["x"]), (200, &json!(1)), "{v}");
    assert_eq!(counter(&sb, FORWARDED).await, fwd + 1);
    let (s, _, _) = send(&h, &b.addr, "GET", "kv/data/far", &c.root, &[("X-Vault-Index", "bm9wZQ==".into())], None).await;
    assert_eq!(s, 400, "a malformed index is refused");

    // Linearizable: one read index from the active node, then a local read; also on the active.
    let ri0 = counter(&sb, READ_INDEX).await;
    let fwd = counter(&sb, FORWARDED).await;
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let (s, _, v) = send(&h, &a.addr, "POST", "kv/data/lin", &c.root, &[], Some(json!({ "data": { "n": i } }))).await;
        assert_eq!(s, 200, "{v}");
        let t = Instant::now();
        let (s, _, v) = send(&h, &b.addr, "GET", "kv/data/lin", &c.root, &[("X-Vault-Consistency", "linearizable".into())], None).await;
        worst = worst.max(t.elapsed());
        assert_eq!((s, &v["data"]["data"]["n"]), (200, &json!(i)), "linearizable read {i}: {v}");
    }
    println!("linearizable read on a standby: worst of 20 {worst:?}");
    assert_eq!(counter(&sb, READ_INDEX).await, ri0 + 20);
    assert_eq!(counter(&sb, FORWARDED).await, fwd, "a linearizable read needs the read index only");
    let (s, _, v) = send(&h, &a.addr, "GET", "kv/data/lin", &c.root, &[("X-Vault-Consistency", "linearizable".into())], None).await;
    assert_eq!((s, &v["data"]["data"]["n"]), (200, &json!(19)), "{v}");
    // Clients cannot reach the internal read index endpoint.
    assert_eq!(send(&h, &b.addr, "GET", "sys/internal/vaultd/read-index", &c.root, &[], None).await.0, 404);
    assert_eq!(send(&h, &a.addr, "GET", "sys/internal/vaultd/read-index", &c.root, &[], None).await.0, 404);

    // OpenBao's CLI and hvac reading from a standby: served locally.
    let fwd = counter(&sb, FORWARDED).await;
    let (code, out, err) = run_cmd(bao(&b.addr, &c.root).args(["kv", "get", "-field=n", "kv/lin"]));
    assert_eq!((code, out.trim()), (0, "19"), "{out}{err}");
    let script = r#"
import sys, hvac
c = hvac.Client(url=sys.argv[1], token=sys.argv[2])
assert c.is_authenticated()
r = c.secrets.kv.v2.read_secret_version(path="lin", mount_point="kv", raise_on_deleted_version=True)
assert r["data"]["data"] == {"n": 19}, r
print("hvac-perf-standby-ok")
"#;
    let (code, out, err) = run_cmd(Command::new(venv_python()).args(["-c", script, &b.addr, &c.root]));
    assert_eq!(code, 0, "hvac: {out}{err}");
    assert!(out.contains("hvac-perf-standby-ok"), "{out}{err}");
    assert_eq!(counter(&sb, FORWARDED).await, fwd, "bao and hvac reads were forwarded");
}

/// The index value of `index` with its number raised by `by` (the test knows the format; the
/// check field is recomputed the way the server does).
fn far_index(index: &str, by: u64) -> String {
    let script = r#"
import base64, hashlib, sys
raw = base64.b64decode(sys.argv[1]).decode()
v, cid, idx, rep, _ = raw.split(":")
idx = int(idx) + int(sys.argv[2])
check = hashlib.sha256(f"vaultd-index:{cid}:{idx}".encode()).hexdigest()[:32]
print(base64.b64encode(f"{v}:{cid}:{idx}:{rep}:{check}".encode()).decode())
"#;
    let (code, out, err) = run_cmd(Command::new("python3").args(["-c", script, index, &by.to_string()]));
    assert_eq!(code, 0, "{err}");
    out.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_forwarded_and_revocations_apply_everywhere() {
    // Node 3 a plain standby.
    let c = Cluster::builder(3).config_line(2, "disable_performance_standby = true").start().await;
    let h = http();
    let (a, b, plain) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let root_a = a.client().with_token(&c.root);
    let sb = b.client().with_token(&c.root);

    // KV v2 with cas through the standby: forwarded, checked on the active node.
    let (s, v) = sb.req("POST", "kv/data/cas", Some(json!({ "options": { "cas": 0 }, "data": { "v": 1 } }))).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = sb.req("POST", "kv/data/cas", Some(json!({ "options": { "cas": 1 }, "data": { "v": 2 } }))).await;
    assert_eq!((s, &v["data"]["version"]), (200, &json!(2)), "{v}");
    let (s, v) = sb.req("POST", "kv/data/cas", Some(json!({ "options": { "cas": 1 }, "data": { "v": 3 } }))).await;
    assert_eq!(s, 400, "a stale cas is refused by the active node: {v}");

    // A login and a token create through the standby.
    let (s, v) = root_a.req("POST", "sys/auth/userpass", Some(json!({ "type": "userpass" }))).await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = root_a.req("POST", "auth/userpass/users/bob", Some(json!({ "password": "pw", "policies": "default" }))).await;
    assert_eq!(s, 204, "{v}");
    let (s, hl, v) = send(&h, &b.addr, "POST", "auth/userpass/login/bob", "", &[], Some(json!({ "password": "pw" }))).await;
    assert_eq!(s, 200, "login through a standby: {v}");
    let bob = v["auth"]["client_token"].as_str().expect("token").to_string();
    let index = header(&hl, "x-vault-index").expect("a login writes: X-Vault-Index");
    let (s, _, v) = send(&h, &c.nodes[1].addr, "GET", "auth/token/lookup-self", &bob, &[("X-Vault-Index", index)], None).await;
    assert_eq!((s, &v["data"]["display_name"]), (200, &json!("userpass-bob")), "{v}");
    let (s, v) = sb.req("POST", "auth/token/create", Some(json!({ "policies": ["default"], "ttl": "1h" }))).await;
    assert_eq!(s, 200, "token create through a standby: {v}");

    // A token created on the active node works on a standby at once (forwarded until applied).
    let (_, v) = root_a.req("POST", "auth/token/create", Some(json!({ "policies": ["root"] }))).await;
    let fresh = v["auth"]["client_token"].as_str().expect("token").to_string();
    let (s, _, v) = send(&h, &b.addr, "GET", "kv/data/cas", &fresh, &[], None).await;
    assert_eq!(s, 200, "a new token on a standby: {v}");

    // A token with uses: each use is a write, so the standby forwards it; the last one ends it.
    let (_, v) = root_a.req("POST", "auth/token/create", Some(json!({ "policies": ["root"], "num_uses": 2 }))).await;
    let limited = v["auth"]["client_token"].as_str().expect("token").to_string();
    let fwd = counter(&sb, FORWARDED).await;
    for _ in 0..2 {
        let (s, _, v) = send(&h, &b.addr, "GET", "kv/data/cas", &limited, &[], None).await;
        assert_eq!(s, 200, "{v}");
    }
    assert!(counter(&sb, FORWARDED).await >= fwd + 2, "use-counted reads must be forwarded");
    let mut refused = false;
    for _ in 0..50 {
        let (s, _, _) = send(&h, &b.addr, "GET", "kv/data/cas", &limited, &[], None).await;
        if s == 403 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "a used-up token still works on the standby");

    // A revoked token is refused on every standby as soon as it has applied the revocation.
    let (_, v) = root_a.req("POST", "auth/token/create", Some(json!({ "policies": ["root"] }))).await;
    let doomed = v["auth"]["client_token"].as_str().expect("token").to_string();
    for n in &c.nodes[1..] {
        wait_for("the new token on a standby", || async { send(&h, &n.addr, "GET", "kv/data/cas", &doomed, &[], None).await.0 == 200 }).await;
    }
    let (s, hr, v) = send(&h, &a.addr, "POST", "auth/token/revoke", &c.root, &[], Some(json!({ "token": doomed }))).await;
    assert_eq!(s, 204, "{v}");
    let index = header(&hr, "x-vault-index").expect("a revoke writes: X-Vault-Index");
    for n in &c.nodes[1..] {
        let (s, _, v) = send(&h, &n.addr, "GET", "kv/data/cas", &doomed, &[("X-Vault-Index", index.clone())], None).await;
        assert_eq!((s, &v), (403, &json!({ "errors": ["permission denied"] })), "revoked token on {}", n.addr);
    }
    // Without the index: refused once applied (eventually, within seconds).
    wait_for("the revocation to apply on the standby", || async {
        send(&h, &b.addr, "GET", "kv/data/cas", &doomed, &[], None).await.0 == 403
    })
    .await;

    // A policy change applies on the standby too.
    let (s, _) = root_a.req("POST", "sys/policies/acl/reader", Some(json!({ "policy": "path \"kv/data/*\" { capabilities = [\"read\"] }" }))).await;
    assert_eq!(s, 204);
    let (_, v) = root_a.req("POST", "auth/token/create", Some(json!({ "policies": ["reader"] }))).await;
    let reader = v["auth"]["client_token"].as_str().expect("token").to_string();
    let (_, hp, _) = send(&h, &a.addr, "POST", "sys/policies/acl/reader", &c.root, &[], Some(json!({ "policy": "path \"other/*\" { capabilities = [\"read\"] }" }))).await;
    let index = header(&hp, "x-vault-index").expect("index");
    let (s, _, v) = send(&h, &b.addr, "GET", "kv/data/cas", &reader, &[("X-Vault-Index", index)], None).await;
    assert_eq!(s, 403, "a narrowed policy still allows on the standby: {v}");

    // disable_performance_standby: a plain standby (429, forwards its reads).
    let (s, v) = plain.client().req("GET", "sys/health", None).await;
    assert_eq!((s, &v["performance_standby"]), (429, &json!(false)), "{v}");
    let pl = plain.client().with_token(&c.root);
    let fwd = counter(&pl, FORWARDED).await;
    let (s, v) = pl.req("GET", "kv/data/cas", None).await;
    assert_eq!((s, &v["data"]["data"]["v"]), (200, &json!(2)), "{v}");
    assert_eq!(counter(&pl, FORWARDED).await, fwd + 1, "a plain standby forwards its reads");
}
