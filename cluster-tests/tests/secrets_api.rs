//! The secrets API as clients see it: OpenBao's real `bao` CLI, hvac, vaultd's own CLI and raw
//! HTTP against a vaultd dev server, checking the outputs, shapes and status codes Vault gives.
//!
//! Tests named `*_tokens_policies_*`, `*_userpass_*`, `*_transit_*` and `read_only_policy_*`
//! need the token store, ACL policies, sys/auth, userpass and transit (other branches of issue
//! 3); the rest need only KV, mounts and the CLI.

use std::path::Path;
use std::process::{Command, Stdio};

use cluster_tests::{bao_bin, run_cmd, vaultd_bin, venv_python, Api, Node};
use serde_json::{json, Value};

fn bao(addr: &str, token: Option<&str>, home: &Path) -> Command {
    let mut c = Command::new(bao_bin());
    c.env("BAO_ADDR", addr).env("VAULT_ADDR", addr).env("HOME", home).env_remove("VAULT_TOKEN");
    match token {
        Some(t) => c.env("BAO_TOKEN", t),
        None => c.env_remove("BAO_TOKEN"),
    };
    c
}

fn vaultd(addr: &str, token: Option<&str>, home: &Path) -> Command {
    let mut c = Command::new(vaultd_bin());
    c.env("VAULT_ADDR", addr).env_remove("BAO_ADDR").env_remove("BAO_TOKEN").env("HOME", home);
    match token {
        Some(t) => c.env("VAULT_TOKEN", t),
        None => c.env_remove("VAULT_TOKEN"),
    };
    c
}

/// Runs and insists on exit 0; returns stdout.
fn ok(cmd: &mut Command) -> String {
    let (code, out, err) = run_cmd(cmd);
    assert_eq!(code, 0, "{cmd:?} failed:\nstdout: {out}\nstderr: {err}");
    out
}

fn with_stdin(cmd: &mut Command, input: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

// ---------------------------------------------------------------------------------------------
// KV and mounts: pass on this branch.

#[test]
fn bao_cli_kv_v2_flows_against_vaultd() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::dev(tmp.path());
    let (a, home) = (node.addr.as_str(), tmp.path());
    let bao = |t: Option<&str>| bao(a, t, home);

    let out = ok(bao(Some("root")).args(["kv", "put", "secret/app", "user=alice", "pass=one"]));
    assert!(
        out.contains("= Secret Path =\nsecret/data/app\n") && out.contains("version            1"),
        "{out}"
    );
    ok(bao(Some("root")).args(["kv", "put", "-mount=secret", "app", "user=alice", "pass=two"]));
    let out = ok(bao(Some("root")).args(["kv", "patch", "secret/app", "extra=x"]));
    assert!(out.contains("version            3"), "patch makes version 3: {out}");
    let v = json_of(&ok(bao(Some("root")).args(["kv", "get", "-format=json", "secret/app"])));
    assert_eq!(v["data"]["data"], json!({"user": "alice", "pass": "two", "extra": "x"}));
    assert_eq!(v["data"]["metadata"]["version"], 3);
    let out = ok(bao(Some("root")).args(["kv", "get", "-version=1", "-field=pass", "secret/app"]));
    assert_eq!(out.trim(), "one");
    let out = ok(bao(Some("root")).args(["kv", "get", "secret/app"]));
    assert!(
        out.contains("======= Metadata =======")
            && out.contains("== Data ==")
            && out.contains("extra    x"),
        "{out}"
    );

    // CAS.
    let (code, _, err) =
        run_cmd(bao(Some("root")).args(["kv", "put", "-cas=1", "secret/app", "k=v"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("check-and-set parameter did not match the current version"), "{err}");
    ok(bao(Some("root")).args(["kv", "put", "-cas=3", "secret/app", "user=bob"]));

    // Metadata.
    ok(bao(Some("root")).args([
        "kv",
        "metadata",
        "put",
        "-max-versions=3",
        "-custom-metadata=owner=ops",
        "secret/app",
    ]));
    let out = ok(bao(Some("root")).args(["kv", "metadata", "get", "secret/app"]));
    assert!(
        out.contains("Metadata Path ==\nsecret/metadata/app\n")
            && out.contains("max_versions")
            && out.contains("map[owner:ops]"),
        "{out}"
    );
    assert!(out.contains("====== Version 4 ======"), "{out}");
    ok(bao(Some("root")).args(["kv", "put", "secret/app", "user=carol"]));
    let v = json_of(&ok(bao(Some("root")).args([
        "kv",
        "metadata",
        "get",
        "-format=json",
        "secret/app",
    ])));
    assert_eq!(v["data"]["current_version"], 5);
    assert_eq!(v["data"]["oldest_version"], 3, "versions past max_versions are pruned: {v}");
    assert!(v["data"]["versions"].get("2").is_none(), "{v}");

    // Delete, undelete, destroy.
    let out = ok(bao(Some("root")).args(["kv", "delete", "secret/app"]));
    assert!(out.contains("Success! Data deleted (if it existed) at: secret/data/app"), "{out}");
    let v = json_of(&ok(bao(Some("root")).args(["kv", "get", "-format=json", "secret/app"])));
    assert!(
        v["data"]["data"].is_null() && v["data"]["metadata"]["deletion_time"] != "",
        "a deleted version shows its metadata: {v}"
    );
    let out = ok(bao(Some("root")).args(["kv", "undelete", "-versions=5", "secret/app"]));
    assert!(out.contains("Success! Data written to: secret/undelete/app"), "{out}");
    assert_eq!(
        ok(bao(Some("root")).args(["kv", "get", "-field=user", "secret/app"])).trim(),
        "carol"
    );
    ok(bao(Some("root")).args(["kv", "destroy", "-versions=4", "secret/app"]));
    let v = json_of(&ok(bao(Some("root")).args([
        "kv",
        "metadata",
        "get",
        "-format=json",
        "secret/app",
    ])));
    assert_eq!(v["data"]["versions"]["4"]["destroyed"], true);

    // List.
    ok(bao(Some("root")).args(["kv", "put", "secret/dir/one", "a=1"]));
    let out = ok(bao(Some("root")).args(["kv", "list", "secret/"]));
    assert!(
        out.starts_with("Keys\n----\n") && out.contains("app") && out.contains("dir/"),
        "{out}"
    );
    let (code, _, err) = run_cmd(bao(Some("root")).args(["kv", "list", "secret/nothing"]));
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run_cmd(bao(Some("root")).args(["kv", "get", "secret/nothing"]));
    assert_eq!(code, 2);
    assert!(err.contains("No value found at secret/data/nothing"), "{err}");

    let out = ok(bao(Some("root")).args(["kv", "metadata", "delete", "secret/app"]));
    assert!(out.contains("Success! Data deleted (if it existed) at: secret/metadata/app"), "{out}");
    let (code, _, _) = run_cmd(bao(Some("root")).args(["kv", "metadata", "get", "secret/app"]));
    assert_eq!(code, 2);
}

#[test]
fn bao_cli_secrets_enable_and_kv_v1() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::dev(tmp.path());
    let (a, home) = (node.addr.as_str(), tmp.path());
    let bao = || bao(a, Some("root"), home);

    let out = ok(bao().args(["secrets", "enable", "-path=kv1", "kv"]));
    assert!(out.contains("Success! Enabled the kv secrets engine at: kv1/"), "{out}");
    ok(bao().args(["secrets", "enable", "-path=kv2", "-version=2", "kv"]));
    let (code, _, err) = run_cmd(bao().args(["secrets", "enable", "-path=kv1", "kv"]));
    assert_eq!(code, 2);
    assert!(err.contains("path is already in use at kv1/"), "{err}");
    let out = ok(bao().args(["secrets", "list"]));
    assert!(out.contains("kv1/") && out.contains("kv2/") && out.contains("secret/"), "{out}");

    let out = ok(bao().args(["kv", "put", "kv1/app", "a=1"]));
    assert!(out.contains("Success! Data written to: kv1/app"), "{out}");
    assert_eq!(ok(bao().args(["kv", "get", "-field=a", "kv1/app"])).trim(), "1");
    let out = ok(bao().args(["write", "kv1/other", "b=2"]));
    assert!(out.contains("Success! Data written to: kv1/other"), "{out}");
    let out = ok(bao().args(["read", "kv1/other"]));
    assert!(out.contains("b ") && out.contains(" 2"), "{out}");
    let out = ok(bao().args(["list", "kv1/"]));
    assert!(out.contains("app") && out.contains("other"), "{out}");
    ok(bao().args(["delete", "kv1/other"]));
    let (code, _, _) = run_cmd(bao().args(["read", "kv1/other"]));
    assert_eq!(code, 2);

    // Upgrade in place: the v1 secret becomes version 1 of a v2 key.
    let out = ok(bao().args(["kv", "enable-versioning", "kv1"]));
    assert!(out.contains("Success! Tuned the secrets engine at: kv1/"), "{out}");
    let tune = node.client().with_token("root");
    let (s, v) = rt().block_on(tune.req("GET", "sys/mounts/kv1/tune", None));
    assert_eq!((s, &v["data"]["options"]["version"]), (200, &json!("2")), "{v}");
    let v = json_of(&ok(bao().args(["kv", "get", "-format=json", "kv1/app"])));
    assert_eq!(v["data"]["data"]["a"], "1", "{v}");
    assert_eq!(v["data"]["metadata"]["version"], 1);

    let out = ok(bao().args(["secrets", "disable", "kv2"]));
    assert!(out.contains("Success! Disabled the secrets engine (if it existed) at: kv2/"), "{out}");
}

#[test]
fn hvac_kv_flows() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::dev(tmp.path());
    let script = r#"
import sys, hvac
c = hvac.Client(url=sys.argv[1], token="root")
kv = c.secrets.kv.v2
kv.create_or_update_secret(path="app", secret={"a": "1", "nested": {"b": "2"}})
kv.create_or_update_secret(path="app", secret={"a": "2", "nested": {"b": "2"}}, cas=1)
try:
    kv.create_or_update_secret(path="app", secret={"a": "3"}, cas=1)
    raise SystemExit("cas mismatch accepted")
except hvac.exceptions.InvalidRequest as e:
    assert "check-and-set parameter did not match" in str(e), e
kv.patch(path="app", secret={"c": "3"})
r = kv.read_secret_version(path="app", raise_on_deleted_version=True)
assert r["data"]["data"] == {"a": "2", "nested": {"b": "2"}, "c": "3"}, r
assert r["data"]["metadata"]["version"] == 3, r
r = kv.read_secret_version(path="app", version=1, raise_on_deleted_version=True)
assert r["data"]["data"]["a"] == "1", r
r = c.read("secret/subkeys/app")
assert r["data"]["subkeys"] == {"a": None, "nested": {"b": None}, "c": None}, r
kv.update_metadata(path="app", max_versions=7, custom_metadata={"team": "x"}, delete_version_after="1h")
m = kv.read_secret_metadata(path="app")["data"]
assert m["max_versions"] == 7 and m["custom_metadata"] == {"team": "x"} and m["delete_version_after"] == "1h0m0s", m
kv.delete_latest_version_of_secret(path="app")
r = kv.read_secret_version(path="app", raise_on_deleted_version=False)
assert r["data"]["data"] is None and r["data"]["metadata"]["deletion_time"], r
kv.undelete_secret_versions(path="app", versions=[3])
kv.destroy_secret_versions(path="app", versions=[1])
m = kv.read_secret_metadata(path="app")["data"]
assert m["versions"]["1"]["destroyed"] is True, m
kv.create_or_update_secret(path="dir/x", secret={"k": "v"})
keys = kv.list_secrets(path="")["data"]["keys"]
assert keys == ["app", "dir/"], keys
kv.configure(max_versions=5, cas_required=False, delete_version_after="30m")
cfg = kv.read_configuration()["data"]
assert cfg == {"max_versions": 5, "cas_required": False, "delete_version_after": "30m0s"}, cfg
kv.delete_metadata_and_all_versions(path="app")
try:
    kv.read_secret_version(path="app", raise_on_deleted_version=True)
    raise SystemExit("read after delete_metadata")
except hvac.exceptions.InvalidPath:
    pass
c.sys.enable_secrets_engine("kv", path="v1", options={"version": "1"})
c.secrets.kv.v1.create_or_update_secret(path="s", secret={"x": "y"}, mount_point="v1")
assert c.secrets.kv.v1.read_secret(path="s", mount_point="v1")["data"] == {"x": "y"}
assert c.secrets.kv.v1.list_secrets(path="", mount_point="v1")["data"]["keys"] == ["s"]
c.sys.tune_mount_configuration(path="v1", default_lease_ttl="1h", max_lease_ttl="2h", description="tuned")
t = c.sys.read_mount_configuration(path="v1")["data"]
assert t["default_lease_ttl"] == 3600 and t["max_lease_ttl"] == 7200 and t["description"] == "tuned", t
print("hvac-kv-ok")
"#;
    let (code, out, err) = run_cmd(Command::new(venv_python()).args(["-c", script, &node.addr]));
    assert_eq!(code, 0, "hvac: {out}{err}");
    assert!(out.contains("hvac-kv-ok"));
}

#[test]
fn vaultd_cli_kv_and_path_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::dev(tmp.path());
    let (a, home) = (node.addr.as_str(), tmp.path());
    let v = || vaultd(a, Some("root"), home);

    let out = ok(v().args(["kv", "put", "secret/app", "user=alice", "pass=one"]));
    assert!(
        out.contains("= Secret Path =\nsecret/data/app\n") && out.contains("version            1"),
        "{out}"
    );
    ok(v().args(["kv", "patch", "secret/app", "pass=two"]));
    assert_eq!(ok(v().args(["kv", "get", "-field=pass", "secret/app"])).trim(), "two");
    assert_eq!(
        ok(v().args(["kv", "get", "-field=pass", "-version=1", "secret/app"])).trim(),
        "one"
    );
    let j = json_of(&ok(v().args(["kv", "get", "-format=json", "secret/app"])));
    assert_eq!(j["data"]["data"], json!({"user": "alice", "pass": "two"}));
    let (code, _, err) = run_cmd(v().args(["kv", "put", "-cas=0", "secret/app", "x=1"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("Code: 400") && err.contains("check-and-set parameter did not match"),
        "{err}"
    );
    let (code, _, err) = run_cmd(v().args(["kv", "get", "-field=nope", "secret/app"]));
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = run_cmd(v().args(["kv", "put", "secret/app"]));
    assert_eq!((code, err.trim()), (1, "Must supply data"));
    let (code, _, _) = run_cmd(v().args(["kv", "get", "-format=yaml", "secret/app"]));
    assert_eq!(code, 1, "an unknown format is a usage error");

    ok(v().args(["kv", "put", "secret/dir/x", "k=v"]));
    let out = ok(v().args(["kv", "list", "secret"]));
    assert_eq!(out, "Keys\n----\napp\ndir/\n");
    assert_eq!(
        json_of(&ok(v().args(["kv", "list", "-format=json", "secret/"]))),
        json!(["app", "dir/"])
    );
    let out = ok(v().args(["kv", "delete", "secret/app"]));
    assert!(out.contains("Success! Data deleted (if it existed) at: secret/data/app"), "{out}");
    ok(v().args(["kv", "undelete", "-versions=2", "secret/app"]));
    let (code, _, err) = run_cmd(v().args(["kv", "undelete", "secret/app"]));
    assert_eq!(code, 1, "-versions is required: {err}");
    ok(v().args(["kv", "destroy", "-versions=1", "secret/app"]));
    ok(v().args([
        "kv",
        "metadata",
        "put",
        "-max-versions=4",
        "-cas-required",
        "-custom-metadata=team=ops",
        "secret/app",
    ]));
    let out = ok(v().args(["kv", "metadata", "get", "secret/app"]));
    assert!(
        out.contains("cas_required            true")
            && out.contains("map[team:ops]")
            && out.contains("====== Version 1 ======"),
        "{out}"
    );
    let (code, _, err) = run_cmd(v().args(["kv", "put", "secret/app", "x=1"]));
    assert!(code == 2 && err.contains("check-and-set parameter required"), "{err}");
    ok(v().args(["kv", "metadata", "delete", "secret/app"]));
    let (code, _, err) = run_cmd(v().args(["kv", "get", "secret/app"]));
    assert_eq!(code, 2);
    assert!(err.contains("No value found at secret/data/app"), "{err}");

    // Generic path commands and mounts.
    let out = ok(v().args(["secrets", "enable", "-path=kv1", "kv"]));
    assert_eq!(out.trim(), "Success! Enabled the kv secrets engine at: kv1/");
    ok(v().args(["secrets", "enable", "-path=kv2", "-version=2", "kv"]));
    let out = ok(v().args(["secrets", "list"]));
    assert!(out.starts_with("Path ") && out.contains("kv1/") && out.contains("kv2/"), "{out}");
    let mounts = json_of(&ok(v().args(["secrets", "list", "-format=json"])));
    assert_eq!(mounts["kv2/"]["options"]["version"], "2");
    assert_eq!(
        ok(v().args(["write", "kv1/a", "x=1", "y=2"])).trim(),
        "Success! Data written to: kv1/a"
    );
    let out = ok(v().args(["read", "kv1/a"]));
    assert!(out.contains("x ") && out.contains("y "), "{out}");
    assert_eq!(ok(v().args(["read", "-field=y", "kv1/a"])).trim(), "2");
    assert_eq!(ok(v().args(["list", "kv1/"])), "Keys\n----\na\n");
    let (code, out, err) =
        with_stdin(v().args(["write", "kv2/data/j", "-"]), r#"{"data": {"from": "stdin"}}"#);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(ok(v().args(["kv", "get", "-field=from", "kv2/j"])).trim(), "stdin");
    ok(v().args(["delete", "kv1/a"]));
    let (code, _, err) = run_cmd(v().args(["read", "kv1/a"]));
    assert!(code == 2 && err.contains("No value found at kv1/a"), "{err}");
    let (code, _, err) = run_cmd(v().args(["write", "nomount/x", "a=1"]));
    assert!(code == 2 && err.contains("Code: 404"), "{err}");
    ok(v().args(["secrets", "disable", "kv1"]));
    let (code, _, err) = run_cmd(vaultd(a, None, home).args(["kv", "get", "secret/dir/x"]));
    assert_eq!(code, 2, "no token: {err}");
    assert!(err.contains("permission denied"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_http_api_matches_vault() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::dev(tmp.path());
    let api = node.client().with_token("root");
    let http = reqwest::Client::new();
    let send = |method: &str, path: &str, ct: Option<&str>, body: &str| {
        let mut r = http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}/v1/{path}", node.addr),
            )
            .header("X-Vault-Token", "root")
            .header("X-Vault-Request", "true")
            .body(body.to_string());
        if let Some(ct) = ct {
            r = r.header("Content-Type", ct);
        }
        async move {
            let resp = r.send().await.unwrap();
            let s = resp.status().as_u16();
            let b = resp.bytes().await.unwrap();
            (s, serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null))
        }
    };

    let (s, _) = api
        .req("POST", "secret/data/p", Some(json!({"data": {"a": 1, "n": {"x": 1, "y": 2}}})))
        .await;
    assert_eq!(s, 200);
    // PATCH needs a merge patch.
    let (s, v) =
        send("PATCH", "secret/data/p", Some("application/json"), r#"{"data":{"a":2}}"#).await;
    assert_eq!(s, 415, "{v}");
    assert_eq!(
        v["errors"][0],
        "PATCH requires Content-Type of application/merge-patch+json, provided application/json"
    );
    let (s, v) = send(
        "PATCH",
        "secret/data/p",
        Some("application/merge-patch+json"),
        r#"{"data":{"a":null,"n":{"y":null,"z":3}}}"#,
    )
    .await;
    assert_eq!((s, &v["data"]["version"]), (200, &json!(2)), "{v}");
    let (_, v) = api.req("GET", "secret/data/p", None).await;
    assert_eq!(v["data"]["data"], json!({"n": {"x": 1, "z": 3}}));
    let (s, _) = send(
        "PATCH",
        "secret/data/missing",
        Some("application/merge-patch+json"),
        r#"{"data":{"a":1}}"#,
    )
    .await;
    assert_eq!(s, 404);
    let (s, v) = send(
        "PATCH",
        "secret/data/p",
        Some("application/merge-patch+json"),
        r#"{"data":{"a":1},"options":{"cas":1}}"#,
    )
    .await;
    assert_eq!(
        (s, v["errors"][0].as_str()),
        (400, Some("check-and-set parameter did not match the current version"))
    );

    // Subkeys.
    let (s, v) = api.req("GET", "secret/subkeys/p", None).await;
    assert_eq!((s, &v["data"]["subkeys"]), (200, &json!({"n": {"x": null, "z": null}})));
    let (_, v) = api.req("GET", "secret/subkeys/p?depth=1&version=1", None).await;
    assert_eq!(v["data"]["subkeys"], json!({"a": null, "n": null}));
    assert_eq!(v["data"]["metadata"]["version"], 1);

    // Wrong types are 400s naming the field.
    for (path, body, field) in [
        ("secret/data/p", json!({"data": "str"}), "data"),
        ("secret/data/p", json!({"data": {}, "options": "x"}), "options"),
        ("secret/metadata/p", json!({"max_versions": "many"}), "max_versions"),
        ("secret/metadata/p", json!({"cas_required": "maybe"}), "cas_required"),
        ("secret/metadata/p", json!({"delete_version_after": "soon"}), "delete_version_after"),
        ("secret/metadata/p", json!({"custom_metadata": ["x"]}), "custom_metadata"),
        ("secret/config", json!({"max_versions": {}}), "max_versions"),
    ] {
        let (s, v) = api.req("POST", path, Some(body.clone())).await;
        assert_eq!(s, 400, "{path} {body}: {v}");
        assert!(v["errors"][0].as_str().unwrap().contains(field), "{path} {body}: {v}");
    }
    let (s, v) = api.req("GET", "secret/data/p?version=x", None).await;
    assert_eq!(s, 400, "{v}");

    // delete_version_after is enforced: a version past it reads as deleted.
    let (s, _) =
        api.req("POST", "secret/metadata/short", Some(json!({"delete_version_after": "1s"}))).await;
    assert_eq!(s, 204);
    let (_, v) = api.req("POST", "secret/data/short", Some(json!({"data": {"a": 1}}))).await;
    assert_ne!(v["data"]["deletion_time"], "", "{v}");
    let (s, _) = api.req("GET", "secret/data/short", None).await;
    assert_eq!(s, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (s, v) = api.req("GET", "secret/data/short", None).await;
    assert_eq!((s, &v["data"]["data"]), (404, &Value::Null), "{v}");
    assert_eq!(v["data"]["metadata"]["version"], 1);
    let (s, v) = api.req("GET", "secret/metadata/short", None).await;
    assert_eq!((s, &v["data"]["delete_version_after"]), (200, &json!("1s")));
    let (s, _) = api
        .req("POST", "secret/metadata/short", Some(json!({"delete_version_after": "-1s"})))
        .await;
    assert_eq!(s, 400, "a key's delete_version_after cannot be negative");

    // Metadata PATCH merges custom_metadata.
    let (s, _) = api
        .req("POST", "secret/metadata/p", Some(json!({"custom_metadata": {"a": "1", "b": "2"}})))
        .await;
    assert_eq!(s, 204);
    let (s, _) = send(
        "PATCH",
        "secret/metadata/p",
        Some("application/merge-patch+json"),
        r#"{"custom_metadata":{"a":null,"c":"3"},"max_versions":4}"#,
    )
    .await;
    assert_eq!(s, 204);
    let (_, v) = api.req("GET", "secret/metadata/p", None).await;
    assert_eq!(v["data"]["custom_metadata"], json!({"b": "2", "c": "3"}));
    assert_eq!(v["data"]["max_versions"], 4);
    let (s, _) = send(
        "PATCH",
        "secret/metadata/none",
        Some("application/merge-patch+json"),
        r#"{"max_versions":1}"#,
    )
    .await;
    assert_eq!(s, 404);

    // Detailed listing and config.
    let (s, v) = api.req("LIST", "secret/detailed-metadata/", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["keys"], json!(["p", "short"]));
    assert_eq!(v["data"]["key_info"]["p"]["current_version"], 2);
    let (s, _) = api
        .req(
            "POST",
            "secret/config",
            Some(json!({"max_versions": 3, "cas_required": true, "delete_version_after": "2h"})),
        )
        .await;
    assert_eq!(s, 204);
    let (_, v) = api.req("GET", "secret/config", None).await;
    assert_eq!(
        v["data"],
        json!({"max_versions": 3, "cas_required": true, "delete_version_after": "2h0m0s"})
    );
    let (s, v) = api.req("POST", "secret/data/q", Some(json!({"data": {"a": 1}}))).await;
    assert_eq!(
        (s, v["errors"][0].as_str()),
        (400, Some("check-and-set parameter required for this call"))
    );
    let (s, _) = api
        .req(
            "POST",
            "secret/config",
            Some(json!({"cas_required": false, "delete_version_after": "0s"})),
        )
        .await;
    assert_eq!(s, 204);

    // Paths.
    // Sent raw: HTTP client libraries resolve `..` (and `%2e%2e`) before sending.
    for path in ["/v1/secret/data/../x", "/v1/secret/data/%2e%2e/x"] {
        let (status, body) = raw_http(node.port, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Vault-Token: root\r\nConnection: close\r\n\r\n"));
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("relative paths not supported"), "{path}: {body}");
    }
    let (s, v) = api.req("POST", "secret/data/dir/", Some(json!({"data": {"a": 1}}))).await;
    assert_eq!((s, v["errors"][0].as_str()), (400, Some("cannot write to a path ending in '/'")));
    let (s, v) = api.req("GET", "secret/bogus/x", None).await;
    assert_eq!(s, 404);
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .starts_with("Invalid path for a versioned K/V secrets engine"),
        "{v}"
    );
    let (s, v) = api.req("GET", "secret/data", None).await;
    assert_eq!(
        (s, v["warnings"][0].as_str()),
        (404, Some("Non-listing operations on the root of a K/V v2 mount are not supported."))
    );
    let (s, v) = api.req("GET", "secret/metadata/?list=true", None).await;
    assert_eq!((s, &v["data"]["keys"]), (200, &json!(["p", "short"])));

    // Form bodies, as curl -d sends them.
    api.req("POST", "sys/mounts/kv1", Some(json!({"type": "kv"}))).await;
    let (s, _) =
        send("POST", "kv1/form", Some("application/x-www-form-urlencoded"), "a=1&b=x%20y&a=2")
            .await;
    assert_eq!(s, 204);
    let (_, v) = api.req("GET", "kv1/form", None).await;
    assert_eq!(v["data"], json!({"a": "1,2", "b": "x y"}));
    let (s, _) =
        send("POST", "kv1/json", Some("application/x-www-form-urlencoded"), r#"{"n": 1}"#).await;
    assert_eq!(s, 204);
    let (_, v) = api.req("GET", "kv1/json", None).await;
    assert_eq!(v["data"], json!({"n": 1}), "a JSON body with curl's default content type is JSON");
    let (s, _) =
        send("PATCH", "kv1/json", Some("application/merge-patch+json"), r#"{"n": 2}"#).await;
    assert_eq!(s, 405, "KV v1 has no PATCH");

    // Tune: TTLs, description, and the v1 -> v2 upgrade.
    let (s, v) = api
        .req(
            "POST",
            "sys/mounts/kv1/tune",
            Some(json!({"default_lease_ttl": "1h", "max_lease_ttl": 7200, "description": "d"})),
        )
        .await;
    assert_eq!(s, 204, "{v}");
    let (_, v) = api.req("GET", "sys/mounts/kv1/tune", None).await;
    assert_eq!(
        (&v["data"]["default_lease_ttl"], &v["data"]["max_lease_ttl"], &v["data"]["description"]),
        (&json!(3600), &json!(7200), &json!("d"))
    );
    assert_eq!(v["default_lease_ttl"], 3600, "tune answers are copied to the top level too");
    let (s, v) = api.req("POST", "sys/mounts/kv1/tune", Some(json!({"max_lease_ttl": "1m"}))).await;
    assert_eq!(
        (s, v["errors"][0].as_str()),
        (
            400,
            Some(
                "backend max lease TTL of 60 would be less than backend default lease TTL of 3600"
            )
        )
    );
    let (s, v) =
        api.req("POST", "sys/mounts/kv1/tune", Some(json!({"default_lease_ttl": "bogus"}))).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = api.req("POST", "sys/mounts/nope/tune", Some(json!({"description": "x"}))).await;
    assert_eq!(
        (s, v["errors"][0].as_str()),
        (400, Some("tune of path \"nope/\" failed: no mount entry found"))
    );
    let (s, v) =
        api.req("POST", "sys/mounts/kv1/tune", Some(json!({"options": {"version": "2"}}))).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .starts_with("Upgrading mount from version 1 to version 2"),
        "{v}"
    );
    let (s, v) = api.req("GET", "kv1/data/form", None).await;
    assert_eq!(
        (s, &v["data"]["data"]),
        (200, &json!({"a": "1,2", "b": "x y"})),
        "upgraded secrets read as v2: {v}"
    );
    let (_, v) = api.req("LIST", "kv1/metadata/", None).await;
    assert_eq!(v["data"]["keys"], json!(["form", "json"]));
    let (s, v) =
        api.req("POST", "sys/mounts/kv1/tune", Some(json!({"options": {"version": "1"}}))).await;
    assert_eq!((s, v["errors"][0].as_str()), (400, Some("cannot downgrade mount from version 2")));
    let (_, v) = api.req("GET", "sys/mounts", None).await;
    assert_eq!(v["data"]["kv1/"]["options"]["version"], "2");
    assert_eq!(v["data"]["kv1/"]["deprecation_status"], "supported");
    assert_eq!(v["data"]["kv1/"]["config"]["default_lease_ttl"], 3600);
}

/// One HTTP/1.1 exchange over a plain socket: (status, body text).
fn raw_http(port: u16, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

// ---------------------------------------------------------------------------------------------
// Tokens, policies, auth methods, transit: need the other branches of issue 3.

const READ_ONLY_POLICY: &str = "path \"secret/data/*\" {\n  capabilities = [\"read\", \"list\"]\n}\npath \"secret/metadata/*\" {\n  capabilities = [\"list\"]\n}\n";

#[test]
fn bao_cli_tokens_policies_userpass_transit() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::dev(tmp.path());
    let (a, home) = (node.addr.as_str(), tmp.path());
    let bao = |t: Option<&str>| bao(a, t, home);

    // Policies.
    let (code, out, err) =
        with_stdin(bao(Some("root")).args(["policy", "write", "ro", "-"]), READ_ONLY_POLICY);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Success! Uploaded policy: ro"), "{out}");
    let out = ok(bao(Some("root")).args(["policy", "read", "ro"]));
    assert!(out.contains("path \"secret/data/*\""), "{out}");
    let out = ok(bao(Some("root")).args(["policy", "list"]));
    assert!(out.lines().any(|l| l == "ro") && out.lines().any(|l| l == "root"), "{out}");

    // Tokens.
    let created = json_of(&ok(bao(Some("root")).args([
        "token",
        "create",
        "-policy=ro",
        "-ttl=1h",
        "-format=json",
    ])));
    let ro = created["auth"]["client_token"].as_str().unwrap().to_string();
    assert!(created["auth"]["policies"].as_array().unwrap().contains(&json!("ro")), "{created}");
    let out = ok(bao(Some("root")).args(["token", "lookup", &ro]));
    assert!(out.contains("policies") && out.contains("ro"), "{out}");
    let out = ok(bao(Some(&ro)).args(["token", "lookup"]));
    assert!(out.contains("ttl"), "{out}");

    // The read-only token reads but cannot write.
    ok(bao(Some("root")).args(["kv", "put", "secret/app", "k=v"]));
    assert_eq!(ok(bao(Some(&ro)).args(["kv", "get", "-field=k", "secret/app"])).trim(), "v");
    let (code, _, err) = run_cmd(bao(Some(&ro)).args(["kv", "put", "secret/app", "k=w"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("permission denied"), "{err}");

    let out = ok(bao(Some("root")).args(["token", "revoke", &ro]));
    assert!(out.contains("Success! Revoked token"), "{out}");
    let (code, _, _) = run_cmd(bao(Some(&ro)).args(["kv", "get", "secret/app"]));
    assert_eq!(code, 2, "a revoked token is refused");

    // Userpass login stores the token for later commands.
    let out = ok(bao(Some("root")).args(["auth", "enable", "userpass"]));
    assert!(out.contains("Success! Enabled userpass auth method at: userpass/"), "{out}");
    ok(bao(Some("root")).args([
        "write",
        "auth/userpass/users/alice",
        "password=pw",
        "policies=ro",
    ]));
    let out = ok(bao(None).args(["login", "-method=userpass", "username=alice", "password=pw"]));
    assert!(
        out.contains("Success! You are now authenticated") && out.contains("token_policies"),
        "{out}"
    );
    assert_eq!(
        ok(bao(None).args(["kv", "get", "-field=k", "secret/app"])).trim(),
        "v",
        "the stored token is used"
    );
    let (code, _, _) =
        run_cmd(bao(None).args(["login", "-method=userpass", "username=alice", "password=wrong"]));
    assert_eq!(code, 2);

    // Transit.
    ok(bao(Some("root")).args(["secrets", "enable", "transit"]));
    ok(bao(Some("root")).args(["write", "-f", "transit/keys/k1"]));
    let pt = "aGVsbG8gd29ybGQ="; // "hello world"
    let ct = ok(bao(Some("root")).args([
        "write",
        "-field=ciphertext",
        "transit/encrypt/k1",
        &format!("plaintext={pt}"),
    ]));
    assert!(ct.starts_with("vault:v1:"), "{ct}");
    let back = ok(bao(Some("root")).args([
        "write",
        "-field=plaintext",
        "transit/decrypt/k1",
        &format!("ciphertext={}", ct.trim()),
    ]));
    assert_eq!(back.trim(), pt);
}

#[test]
fn hvac_tokens_policies_userpass_transit() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::dev(tmp.path());
    let script = r#"
import sys, base64, hvac
addr = sys.argv[1]
c = hvac.Client(url=addr, token="root")
policy = sys.argv[2]
c.sys.create_or_update_policy(name="ro", policy=policy)
assert "ro" in c.sys.list_policies()["data"]["policies"]
assert 'secret/data/*' in c.sys.read_policy(name="ro")["data"]["rules"]
c.secrets.kv.v2.create_or_update_secret(path="app", secret={"k": "v"})
tok = c.auth.token.create(policies=["ro"], ttl="1h")["auth"]["client_token"]
assert "ro" in c.auth.token.lookup(tok)["data"]["policies"]
ro = hvac.Client(url=addr, token=tok)
assert ro.secrets.kv.v2.read_secret_version(path="app", raise_on_deleted_version=True)["data"]["data"] == {"k": "v"}
try:
    ro.secrets.kv.v2.create_or_update_secret(path="app", secret={"k": "w"})
    raise SystemExit("read-only token wrote")
except hvac.exceptions.Forbidden:
    pass
c.auth.token.revoke(tok)
assert not ro.is_authenticated()
c.sys.enable_auth_method("userpass")
c.auth.userpass.create_or_update_user(username="bob", password="pw", policies=["ro"])
u = hvac.Client(url=addr)
u.auth.userpass.login(username="bob", password="pw")
assert u.is_authenticated()
assert u.secrets.kv.v2.read_secret_version(path="app", raise_on_deleted_version=True)["data"]["data"]["k"] == "v"
c.sys.enable_secrets_engine("transit")
c.secrets.transit.create_key(name="k1")
pt = base64.b64encode(b"hello").decode()
ct = c.secrets.transit.encrypt_data(name="k1", plaintext=pt)["data"]["ciphertext"]
assert ct.startswith("vault:v1:"), ct
assert c.secrets.transit.decrypt_data(name="k1", ciphertext=ct)["data"]["plaintext"] == pt
print("hvac-auth-ok")
"#;
    let (code, out, err) =
        run_cmd(Command::new(venv_python()).args(["-c", script, &node.addr, READ_ONLY_POLICY]));
    assert_eq!(code, 0, "hvac: {out}{err}");
    assert!(out.contains("hvac-auth-ok"));
}

#[test]
fn vaultd_cli_tokens_policies_userpass_login() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::dev(tmp.path());
    let (a, home) = (node.addr.as_str(), tmp.path());
    let v = |t: Option<&str>| vaultd(a, t, home);

    let (code, out, err) =
        with_stdin(v(Some("root")).args(["policy", "write", "ro", "-"]), READ_ONLY_POLICY);
    assert_eq!((code, out.trim()), (0, "Success! Uploaded policy: ro"), "{err}");
    assert!(ok(v(Some("root")).args(["policy", "read", "ro"])).contains("secret/data/*"));
    assert!(ok(v(Some("root")).args(["policy", "list"])).lines().any(|l| l == "ro"));

    let ro = ok(v(Some("root")).args(["token", "create", "-policy=ro", "-ttl=1h", "-field=token"]));
    let ro = ro.trim().to_string();
    assert!(!ro.is_empty());
    let out = ok(v(Some("root")).args(["token", "lookup", &ro]));
    assert!(out.contains("policies") && out.contains("ro") && out.contains("ttl "), "{out}");
    ok(v(Some("root")).args(["kv", "put", "secret/app", "k=v"]));
    assert_eq!(ok(v(Some(&ro)).args(["kv", "get", "-field=k", "secret/app"])).trim(), "v");
    let (code, _, err) = run_cmd(v(Some(&ro)).args(["kv", "put", "secret/app", "k=w"]));
    assert!(code == 2 && err.contains("permission denied"), "{err}");
    assert!(ok(v(Some("root")).args(["token", "revoke", &ro])).contains("Success! Revoked token"));

    assert!(ok(v(Some("root")).args(["auth", "enable", "userpass"]))
        .contains("Enabled userpass auth method at: userpass/"));
    assert!(ok(v(Some("root")).args(["auth", "list"])).contains("userpass/"));
    ok(v(Some("root")).args(["write", "auth/userpass/users/alice", "password=pw", "policies=ro"]));
    let out = ok(v(None).args(["login", "-method=userpass", "username=alice", "password=pw"]));
    assert!(
        out.contains("Success! You are now authenticated") && out.contains("token_meta_username"),
        "{out}"
    );
    let stored = std::fs::read_to_string(home.join(".vault-token")).unwrap();
    assert!(!stored.trim().is_empty());
    assert_eq!(
        ok(v(None).args(["kv", "get", "-field=k", "secret/app"])).trim(),
        "v",
        "the stored token is used"
    );
    // VAULT_TOKEN wins over the stored token.
    let (code, _, _) = run_cmd(v(Some("hvs.bogus")).args(["kv", "get", "secret/app"]));
    assert_eq!(code, 2);
    let out = ok(v(None).args(["login", "root"]));
    assert!(out.contains("token_policies       [\"root\"]"), "{out}");
    assert_eq!(std::fs::read_to_string(home.join(".vault-token")).unwrap(), "root");
    let (code, _, _) =
        run_cmd(v(None).args(["login", "-method=userpass", "username=alice", "password=no"]));
    assert_eq!(code, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_policy_distinguishes_create_from_update() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::dev(tmp.path());
    let root = node.client().with_token("root");
    let policy = "path \"secret/data/*\" { capabilities = [\"create\", \"read\"] }\npath \"kv1/*\" { capabilities = [\"create\", \"read\"] }\n";
    let (s, v) =
        root.req("PUT", "sys/policies/acl/create-only", Some(json!({"policy": policy}))).await;
    assert_eq!(s, 204, "{v}");
    root.req("POST", "sys/mounts/kv1", Some(json!({"type": "kv"}))).await;
    let (_, v) =
        root.req("POST", "auth/token/create", Some(json!({"policies": ["create-only"]}))).await;
    let t = v["auth"]["client_token"].as_str().unwrap_or_else(|| panic!("{v}")).to_string();
    let user = Api::new(&node.addr).with_token(&t);
    // Creating a new secret needs `create`; overwriting it needs `update`.
    let (s, v) = user.req("POST", "secret/data/new", Some(json!({"data": {"a": 1}}))).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = user.req("POST", "secret/data/new", Some(json!({"data": {"a": 2}}))).await;
    assert_eq!(s, 403);
    let (s, _) = user.req("POST", "kv1/new", Some(json!({"a": 1}))).await;
    assert_eq!(s, 204);
    let (s, _) = user.req("POST", "kv1/new", Some(json!({"a": 2}))).await;
    assert_eq!(s, 403);
}
