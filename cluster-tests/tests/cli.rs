//! The command lines operators use: vaultd's own CLI, OpenBao's real `bao` CLI and the hvac
//! Python client against a vaultd server; dev mode; TLS listeners; config errors.

use std::process::Command;

use cluster_tests::{bao_bin, free_ports, run_cmd, vaultd_bin, venv_python, Node};
use serde_json::Value;

fn vaultd(addr: &str, token: Option<&str>) -> Command {
    let mut c = Command::new(vaultd_bin());
    c.env("VAULT_ADDR", addr).env_remove("BAO_ADDR").env_remove("BAO_TOKEN").env("HOME", "/nonexistent");
    match token {
        Some(t) => c.env("VAULT_TOKEN", t),
        None => c.env_remove("VAULT_TOKEN"),
    };
    c
}

fn bao(addr: &str, token: Option<&str>) -> Command {
    let mut c = Command::new(bao_bin());
    let home = tempfile::tempdir().unwrap().keep();
    c.env("BAO_ADDR", addr).env("VAULT_ADDR", addr).env("HOME", home);
    match token {
        Some(t) => c.env("BAO_TOKEN", t),
        None => c.env_remove("BAO_TOKEN").env_remove("VAULT_TOKEN"),
    };
    c
}

#[test]
fn vaultd_cli_init_unseal_status_kv() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::raft(tmp.path(), "n1");
    let addr = node.addr.clone();

    let (code, _, _) = run_cmd(vaultd(&addr, None).args(["operator", "init", "-status"]));
    assert_eq!(code, 2, "not initialized yet");
    let (code, out, err) = run_cmd(vaultd(&addr, None).args(["operator", "init", "-key-shares=3", "-key-threshold=2", "-format=json"]));
    assert_eq!(code, 0, "{out}{err}");
    let init: Value = serde_json::from_str(&out).unwrap();
    let keys: Vec<String> = init["unseal_keys_b64"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect();
    let root = init["root_token"].as_str().unwrap().to_string();
    assert_eq!(keys.len(), 3);

    let (code, out, _) = run_cmd(vaultd(&addr, None).arg("status"));
    assert_eq!(code, 2, "sealed: {out}");
    assert!(out.contains("Sealed") && out.contains("true"), "{out}");

    let (code, out, err) = run_cmd(vaultd(&addr, None).args(["operator", "unseal", &keys[0]]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Unseal Progress    1/2"), "{out}");
    let (code, _, _) = run_cmd(vaultd(&addr, None).args(["operator", "unseal", &keys[2]]));
    assert_eq!(code, 0);

    let (code, out, err) = run_cmd(vaultd(&addr, None).arg("status"));
    assert_eq!(code, 0, "{out}{err}");
    for want in ["Sealed                  false", "Storage Type            raft", "HA Enabled              true", "HA Mode                 active"] {
        assert!(out.contains(want), "status lacks {want:?}:\n{out}");
    }

    let api = node.client().with_token(&root);
    tokio::runtime::Runtime::new().unwrap().block_on(api.mount_kv2("secret"));
    let (code, out, err) = run_cmd(vaultd(&addr, Some(&root)).args(["kv", "put", "secret/app", "user=alice", "pass=s3cr3t"]));
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run_cmd(vaultd(&addr, Some(&root)).args(["kv", "get", "-field=pass", "secret/app"]));
    assert_eq!((code, out.trim()), (0, "s3cr3t"), "{err}");
    let (code, out, _) = run_cmd(vaultd(&addr, Some(&root)).args(["kv", "get", "secret/app"]));
    assert_eq!(code, 0);
    assert!(out.contains("user") && out.contains("alice") && out.contains("version"), "{out}");
    let (code, _, err) = run_cmd(vaultd(&addr, Some(&root)).args(["kv", "get", "secret/nothing-here"]));
    assert_eq!(code, 2, "{err}");

    let (code, out, _) = run_cmd(vaultd(&addr, Some(&root)).args(["operator", "seal"]));
    assert_eq!(code, 0);
    assert!(out.contains("Vault is sealed"));
}

#[test]
fn openbao_cli_drives_vaultd() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::raft(tmp.path(), "n1");
    let addr = node.addr.clone();

    let (code, out, err) = run_cmd(bao(&addr, None).args(["operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json"]));
    assert_eq!(code, 0, "bao operator init: {out}{err}");
    let init: Value = serde_json::from_str(&out).unwrap();
    let key = init["unseal_keys_b64"][0].as_str().unwrap().to_string();
    let root = init["root_token"].as_str().unwrap().to_string();

    let (code, out, err) = run_cmd(bao(&addr, None).arg("status"));
    assert_eq!(code, 2, "bao status on a sealed node exits 2: {out}{err}");
    let (code, out, err) = run_cmd(bao(&addr, None).args(["operator", "unseal", &key]));
    assert_eq!(code, 0, "bao operator unseal: {out}{err}");
    let (code, out, err) = run_cmd(bao(&addr, None).arg("status"));
    assert_eq!(code, 0, "bao status: {out}{err}");
    assert!(out.contains("Storage Type") && out.contains("raft"), "{out}");

    let (code, out, err) = run_cmd(bao(&addr, Some(&root)).args(["secrets", "enable", "-path=secret", "-version=2", "kv"]));
    assert_eq!(code, 0, "bao secrets enable: {out}{err}");
    let (code, out, err) = run_cmd(bao(&addr, Some(&root)).args(["kv", "put", "secret/app", "k=v1"]));
    assert_eq!(code, 0, "bao kv put: {out}{err}");
    let (code, out, err) = run_cmd(bao(&addr, Some(&root)).args(["kv", "get", "-field=k", "secret/app"]));
    assert_eq!((code, out.trim()), (0, "v1"), "bao kv get: {err}");
    let (code, out, err) = run_cmd(bao(&addr, Some(&root)).args(["kv", "get", "-format=json", "secret/app"]));
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["data"]["metadata"]["version"], 1);
}

#[test]
fn hvac_reads_and_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::dev(tmp.path());
    let script = r#"
import sys, hvac
c = hvac.Client(url=sys.argv[1], token="root")
assert c.is_authenticated()
assert c.sys.is_initialized() and not c.sys.is_sealed()
c.secrets.kv.v2.create_or_update_secret(path="hv/app", secret={"a": "b"})
r = c.secrets.kv.v2.read_secret_version(path="hv/app", raise_on_deleted_version=True)
assert r["data"]["data"] == {"a": "b"}, r
st = c.sys.read_health_status(method="GET")
assert st["initialized"] and not st["sealed"], st
print("hvac-ok")
"#;
    let (code, out, err) = run_cmd(Command::new(venv_python()).args(["-c", script, &node.addr]));
    assert_eq!(code, 0, "hvac: {out}{err}");
    assert!(out.contains("hvac-ok"));
}

#[test]
fn dev_mode_is_ready_to_use() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::dev(tmp.path());
    let log = node.log();
    assert!(log.contains("Storage: raft (HA available)"), "banner: {log}");
    assert!(log.contains("Root Token: root"), "{log}");
    let (code, out, err) = run_cmd(vaultd(&node.addr, Some("root")).args(["kv", "put", "secret/dev", "x=1"]));
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = run_cmd(vaultd(&node.addr, Some("root")).args(["kv", "get", "-field=x", "secret/dev"]));
    assert_eq!((code, out.trim()), (0, "1"));
}

#[test]
fn tls_listener_serves_https() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = tmp.path().join("cert.pem");
    let key = tmp.path().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let (port, cport) = free_ports();
    let config = tmp.path().join("tls.hcl");
    std::fs::write(
        &config,
        format!(
            "storage \"inmem\" {{}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  tls_cert_file = \"{}\"\n  tls_key_file = \"{}\"\n}}\napi_addr = \"https://127.0.0.1:{port}\"\ncluster_addr = \"https://127.0.0.1:{cport}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let node = Node::with_config(tmp.path(), config, port, cport, "https", vec![]);
    let (code, out, err) = run_cmd(vaultd(&node.addr, None).env("VAULT_CACERT", &cert).args(["operator", "init", "-status"]));
    assert_eq!(code, 2, "TLS request with the CA: {out}{err}");
    let (code, out, err) = run_cmd(vaultd(&node.addr, None).arg("status"));
    assert_eq!(code, 1, "an untrusted certificate is an error: {out}{err}");
}

#[test]
fn invalid_config_names_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("bad.hcl");
    std::fs::write(&config, "storage \"raft\" {\n  path = \"/tmp/x\"\n}\nlistener \"tcp\" {\n  address = \"127.0.0.1:0\"\n  tls_disable = true\n}\napi_addr = \"http://127.0.0.1:1\"\n").unwrap();
    let (code, out, err) = run_cmd(Command::new(vaultd_bin()).args(["server", &format!("-config={}", config.display())]));
    assert_ne!(code, 0);
    assert!(err.contains("cluster address must be set when using raft storage"), "{out}{err}");

    std::fs::write(&config, "storage \"inmem\" {\nlistener \"tcp\" {}\n").unwrap();
    let (code, _, err) = run_cmd(Command::new(vaultd_bin()).args(["server", &format!("-config={}", config.display())]));
    assert_ne!(code, 0);
    assert!(err.contains("bad.hcl"), "a syntax error names the file: {err}");
}

#[test]
fn vaultrs_drives_vaultd() {
    let bin = std::env::var("VAULTRS_CHECK_BIN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../compat/vaultrs/target/debug/vaultrs-check").to_string()
    });
    assert!(std::path::Path::new(&bin).exists(), "{bin} not built: run `make compat` (make test does)");
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::dev(tmp.path());
    let (code, out, err) = run_cmd(Command::new(&bin).args([node.addr.as_str(), "root"]));
    assert_eq!(code, 0, "vaultrs:\n{out}{err}");
    assert!(out.contains("vaultrs-ok"), "{out}");
}
