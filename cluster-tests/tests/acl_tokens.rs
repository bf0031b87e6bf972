//! ACL policies, tokens and auth methods against a real vaultd: what a token may and may not
//! do, token lifetimes (TTL, revocation trees, use counts), the policy and capabilities APIs in
//! Vault's shapes, auth method mounts, and hvac driving the token and policy flows.

use std::process::Command;
use std::time::{Duration, Instant};

use cluster_tests::{run_cmd, venv_python, Api, Node};
use serde_json::{json, Value};

const READER: &str = r#"
path "secret/data/app/*" {
  capabilities = ["read"]
}
path "secret/metadata/app/*" {
  capabilities = ["list"]
}
"#;

async fn put_policy(root: &Api, name: &str, text: &str) {
    let (s, v) =
        root.req("PUT", &format!("sys/policies/acl/{name}"), Some(json!({ "policy": text }))).await;
    assert_eq!(s, 204, "policy {name}: {v}");
}

/// Creates a token as `parent`; returns (token, accessor, the whole response).
async fn create_token(parent: &Api, body: Value) -> (String, String, Value) {
    let (s, v) = parent.req("POST", "auth/token/create", Some(body)).await;
    assert_eq!(s, 200, "create: {v}");
    let t = v["auth"]["client_token"].as_str().expect("client_token").to_string();
    let a = v["auth"]["accessor"].as_str().expect("accessor").to_string();
    (t, a, v)
}

fn as_token(node: &Node, t: &str) -> Api {
    node.client().with_token(t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_token_reads_but_cannot_write_list_elsewhere_or_touch_sys() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::dev(tmp.path());
    let root = node.client().with_token("root");
    let (s, _) = root
        .req("POST", "secret/data/app/db", Some(json!({"data": {"password": "hunter2"}})))
        .await;
    assert_eq!(s, 200);
    root.req("POST", "secret/data/other/x", Some(json!({"data": {"k": "v"}}))).await;
    put_policy(&root, "app-reader", READER).await;
    let (t, _, v) = create_token(&root, json!({"policies": ["app-reader"]})).await;
    assert!(t.starts_with("hvs."), "{t}");
    assert_eq!(v["auth"]["policies"], json!(["app-reader", "default"]));
    assert_eq!(v["auth"]["token_policies"], json!(["app-reader", "default"]));
    assert_eq!(v["auth"]["token_type"], "service");
    assert_eq!(v["auth"]["renewable"], true);
    assert_eq!(v["auth"]["lease_duration"], 768 * 3600);
    let me = as_token(&node, &t);

    let (s, v) = me.req("GET", "secret/data/app/db", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["data"]["password"], "hunter2");
    let (s, v) =
        me.req("POST", "secret/data/app/db", Some(json!({"data": {"password": "x"}}))).await;
    assert_eq!((s, &v["errors"][0]), (403, &json!("permission denied")), "write");
    let (s, _) = me.req("DELETE", "secret/data/app/db", None).await;
    assert_eq!(s, 403, "delete");
    let (s, v) = me.req("LIST", "secret/metadata/app", None).await;
    assert_eq!(s, 200, "list inside: {v}");
    assert_eq!(v["data"]["keys"], json!(["db"]));
    let (s, _) = me.req("LIST", "secret/metadata/", None).await;
    assert_eq!(s, 403, "list outside");
    let (s, _) = me.req("GET", "secret/data/other/x", None).await;
    assert_eq!(s, 403, "read outside");
    for (m, p) in [
        ("GET", "sys/mounts"),
        ("POST", "sys/mounts/kv2"),
        ("LIST", "sys/policies/acl"),
        ("GET", "sys/auth"),
        ("POST", "sys/rotate"),
    ] {
        let (s, v) = me.req(m, p, Some(json!({"type": "kv"}))).await;
        assert_eq!(s, 403, "{m} {p}: {v}");
    }
    // The default policy still lets the token look itself up.
    let (s, v) = me.req("GET", "auth/token/lookup-self", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["data"]["id"], json!(t));
    assert_eq!(v["data"]["policies"], json!(["app-reader", "default"]));
    assert_eq!(v["data"]["path"], "auth/token/create");
    // No token and a bogus token are both plain 403s.
    let (s, v) = node.client().req("GET", "secret/data/app/db", None).await;
    assert_eq!((s, &v["errors"][0]), (403, &json!("permission denied")));
    let (s, _) = node.client().with_token("hvs.bogus").req("GET", "secret/data/app/db", None).await;
    assert_eq!(s, 403);
    // Changing the policy changes what the existing token may do.
    put_policy(&root, "app-reader", r#"path "secret/data/other/*" { capabilities = ["read"] }"#)
        .await;
    let (s, _) = me.req("GET", "secret/data/app/db", None).await;
    assert_eq!(s, 403);
    let (s, _) = me.req("GET", "secret/data/other/x", None).await;
    assert_eq!(s, 200);
    // The KV preflight answers only for mounts the token can use.
    let (s, v) = me.req("GET", "sys/internal/ui/mounts/secret/data/other/x", None).await;
    assert_eq!((s, &v["data"]["path"]), (200, &json!("secret/")), "{v}");
    let (s, v) = me.req("GET", "sys/internal/ui/mounts/nothing/here", None).await;
    assert_eq!(s, 403);
    assert_eq!(v["errors"][0], "preflight capability check returned 403, please ensure client's policies grant access to path \"nothing/here/\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sudo_paths_need_sudo() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::dev(tmp.path());
    let root = node.client().with_token("root");
    put_policy(&root, "ops", "path \"sys/rotate\" {\n  capabilities = [\"update\"]\n}\npath \"auth/token/accessors/\" {\n  capabilities = [\"list\"]\n}\n").await;
    put_policy(&root, "ops-sudo", "path \"sys/rotate\" {\n  capabilities = [\"update\", \"sudo\"]\n}\npath \"auth/token/accessors/\" {\n  capabilities = [\"list\", \"sudo\"]\n}\n").await;
    let (plain, _, _) = create_token(&root, json!({"policies": ["ops"]})).await;
    let (sudo, _, _) = create_token(&root, json!({"policies": ["ops-sudo"]})).await;
    let (s, _) = as_token(&node, &plain).req("POST", "sys/rotate", None).await;
    assert_eq!(s, 403);
    let (s, v) = as_token(&node, &sudo).req("POST", "sys/rotate", None).await;
    assert_eq!(s, 204, "{v}");
    let (s, _) = as_token(&node, &plain).req("LIST", "auth/token/accessors", None).await;
    assert_eq!(s, 403);
    let (s, v) = as_token(&node, &sudo).req("LIST", "auth/token/accessors", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["keys"].as_array().map(Vec::len), Some(3), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_ttl_expires_and_takes_children_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::dev(tmp.path());
    let root = node.client().with_token("root");
    put_policy(
        &root,
        "creator",
        "path \"auth/token/create\" {\n  capabilities = [\"update\"]\n}\n",
    )
    .await;
    let (parent, _, v) = create_token(&root, json!({"policies": ["creator"], "ttl": "2s"})).await;
    assert_eq!(v["auth"]["lease_duration"], 2);
    let (child, _, v) = create_token(&as_token(&node, &parent), json!({"ttl": "1h"})).await;
    assert_eq!(
        v["auth"]["policies"],
        json!(["creator", "default"]),
        "a child inherits its parent's policies"
    );
    assert_eq!(v["auth"]["orphan"], false);
    let (s, v) = as_token(&node, &parent).req("GET", "auth/token/lookup-self", None).await;
    assert_eq!(s, 200);
    assert!(v["data"]["ttl"].as_u64().unwrap() <= 2);
    assert!(v["data"]["expire_time"].is_string());

    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (s, _) = as_token(&node, &parent).req("GET", "auth/token/lookup-self", None).await;
    assert_eq!(s, 403, "expired tokens are refused at once");
    // The background tidy revokes the expired parent's children within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _) = as_token(&node, &child).req("GET", "auth/token/lookup-self", None).await;
        if s == 403 {
            break;
        }
        assert!(Instant::now() < deadline, "child of an expired parent still valid");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Renewal: a new TTL within the explicit max.
    let (t, _, v) = create_token(
        &root,
        json!({"policies": ["default"], "ttl": "1h", "explicit_max_ttl": "2h"}),
    )
    .await;
    assert_eq!(v["auth"]["lease_duration"], 3600);
    let (s, v) = as_token(&node, &t)
        .req("POST", "auth/token/renew-self", Some(json!({"increment": "3h"})))
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["auth"]["lease_duration"].as_u64().unwrap() <= 7200);
    assert!(v["warnings"][0].as_str().unwrap().contains("exceeded the effective max_ttl"), "{v}");
    let (s, v) = root.req("POST", "auth/token/renew-self", None).await;
    assert_eq!((s, &v["errors"][0]), (400, &json!("lease is not renewable")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_parent_revokes_its_children() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::dev(tmp.path());
    let root = node.client().with_token("root");
    put_policy(
        &root,
        "creator",
        "path \"auth/token/create\" {\n  capabilities = [\"update\"]\n}\n",
    )
    .await;
    let (p, _, _) = create_token(&root, json!({"policies": ["creator"]})).await;
    let (c1, c1_acc, _) = create_token(&as_token(&node, &p), json!({})).await;
    let (c2, _, _) = create_token(&as_token(&node, &p), json!({})).await;
    let (g, _, _) = create_token(&as_token(&node, &c1), json!({})).await;
    let (orphan, _, v) =
        create_token(&root, json!({"policies": ["creator"], "no_parent": true})).await;
    assert_eq!(v["auth"]["orphan"], true);

    // A non-sudo token may not hand out policies it does not have, nor make orphans.
    let (s, v) = as_token(&node, &p)
        .req("POST", "auth/token/create", Some(json!({"policies": ["root"]})))
        .await;
    assert_eq!((s, &v["errors"][0]), (400, &json!("child policies must be subset of parent")));
    let (s, v) = as_token(&node, &p)
        .req("POST", "auth/token/create", Some(json!({"no_parent": true})))
        .await;
    assert_eq!(
        (s, &v["errors"][0]),
        (400, &json!("root or sudo privileges required to create orphan token"))
    );

    let (s, v) =
        root.req("POST", "auth/token/lookup-accessor", Some(json!({"accessor": c1_acc}))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["id"], "");
    assert_eq!(v["data"]["orphan"], false);

    let (s, _) = root.req("POST", "auth/token/revoke", Some(json!({"token": p}))).await;
    assert_eq!(s, 204);
    for t in [&p, &c1, &c2, &g] {
        let (s, _) = as_token(&node, t).req("GET", "auth/token/lookup-self", None).await;
        assert_eq!(s, 403, "{t} survived its parent's revocation");
    }
    let (s, v) = root.req("POST", "auth/token/lookup", Some(json!({"token": c1}))).await;
    assert_eq!((s, &v["errors"][0]), (403, &json!("bad token")));
    let (s, _) = as_token(&node, &orphan).req("GET", "auth/token/lookup-self", None).await;
    assert_eq!(s, 200, "an orphan is nobody's child");

    // revoke-orphan keeps the children, now orphans. It needs sudo beyond the ACL's update.
    put_policy(
        &root,
        "revoker",
        "path \"auth/token/revoke-orphan\" {\n  capabilities = [\"update\"]\n}\n",
    )
    .await;
    let (p, _, _) = create_token(&root, json!({"policies": ["creator", "revoker"]})).await;
    let (c, _, _) = create_token(&as_token(&node, &p), json!({})).await;
    let (s, v) = as_token(&node, &p)
        .req("POST", "auth/token/revoke-orphan", Some(json!({"token": p})))
        .await;
    assert_eq!(
        (s, &v["errors"][0]),
        (400, &json!("root or sudo privileges required to revoke and orphan"))
    );
    let (s, _) = root.req("POST", "auth/token/revoke-orphan", Some(json!({"token": p}))).await;
    assert_eq!(s, 204);
    let (s, v) = as_token(&node, &c).req("GET", "auth/token/lookup-self", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["data"]["orphan"], true);
    // revoke-self and revoke-accessor.
    let (s, _) = as_token(&node, &c).req("POST", "auth/token/revoke-self", None).await;
    assert_eq!(s, 204);
    let (s, _) = as_token(&node, &c).req("GET", "auth/token/lookup-self", None).await;
    assert_eq!(s, 403);
    let (t, acc, _) = create_token(&root, json!({"policies": ["default"]})).await;
    let (s, _) =
        root.req("POST", "auth/token/revoke-accessor", Some(json!({"accessor": acc}))).await;
    assert_eq!(s, 204);
    let (s, _) = as_token(&node, &t).req("GET", "auth/token/lookup-self", None).await;
    assert_eq!(s, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn num_uses_limits_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::dev(tmp.path());
    let root = node.client().with_token("root");
    put_policy(&root, "app-reader", READER).await;
    root.req("POST", "secret/data/app/db", Some(json!({"data": {"k": "v"}}))).await;
    let (t, _, v) = create_token(&root, json!({"policies": ["app-reader"], "num_uses": 3})).await;
    assert_eq!(v["auth"]["num_uses"], 3);
    let me = as_token(&node, &t);
    let (s, v) = me.req("GET", "auth/token/lookup-self", None).await;
    assert_eq!((s, &v["data"]["num_uses"]), (200, &json!(2)), "lookup-self shows the use it spent");
    // A refused request spends a use too, as in Vault.
    let (s, _) = me.req("POST", "secret/data/app/db", Some(json!({"data": {}}))).await;
    assert_eq!(s, 403);
    let (s, _) = me.req("GET", "secret/data/app/db", None).await;
    assert_eq!(s, 200, "the last use is allowed");
    let (s, _) = me.req("GET", "secret/data/app/db", None).await;
    assert_eq!(s, 403, "then the token is gone");
    let (s, _) = root.req("POST", "auth/token/lookup", Some(json!({"token": t}))).await;
    assert_eq!(s, 403);
    // A token with limited uses cannot create children (it would escape its limit).
    put_policy(
        &root,
        "creator",
        "path \"auth/token/create\" {\n  capabilities = [\"update\"]\n}\n",
    )
    .await;
    let (t, _, _) = create_token(&root, json!({"policies": ["creator"], "num_uses": 5})).await;
    let (s, _) = as_token(&node, &t).req("POST", "auth/token/create", Some(json!({}))).await;
    assert_eq!(s, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_api_shapes_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::dev(tmp.path());
    let root = node.client().with_token("root");

    let (s, v) = root.req("LIST", "sys/policies/acl", None).await;
    assert_eq!((s, &v["data"]["keys"]), (200, &json!(["default", "root"])));
    let (s, v) = root.req("GET", "sys/policy", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        v["policies"],
        json!(["default", "root"]),
        "legacy list answers at the top level too"
    );
    assert_eq!(v["data"]["keys"], json!(["default", "root"]));

    put_policy(&root, "MyPol", READER).await;
    let (s, v) = root.req("GET", "sys/policies/acl/mypol", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["data"]["name"], "mypol", "names are lowercased");
    assert_eq!(v["data"]["policy"], READER);
    let (s, v) = root.req("GET", "sys/policy/mypol", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["rules"], READER);
    assert_eq!(v["data"]["rules"], READER);
    let (s, v) = root
        .req(
            "PUT",
            "sys/policy/legacy",
            Some(json!({"rules": "path \"secret/*\" { policy = \"write\" }"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["warnings"][0], "'rules' is deprecated, please use 'policy' instead");
    let (s, _) = root
        .req(
            "PUT",
            "sys/policy/legacy2",
            Some(json!({"policy": "path \"secret/*\" { policy = \"read\" }"})),
        )
        .await;
    assert_eq!(s, 204);
    let (_, v) = root.req("LIST", "sys/policies/acl", None).await;
    assert_eq!(v["data"]["keys"], json!(["default", "legacy", "legacy2", "mypol", "root"]));
    // The text may come base64-encoded.
    let (s, _) = root.req("PUT", "sys/policies/acl/b64", Some(json!({"policy": "cGF0aCAieCIgeyBjYXBhYmlsaXRpZXMgPSBbInJlYWQiXSB9"}))).await;
    assert_eq!(s, 204);
    let (_, v) = root.req("GET", "sys/policies/acl/b64", None).await;
    assert_eq!(v["data"]["policy"], "path \"x\" { capabilities = [\"read\"] }");
    root.req("DELETE", "sys/policies/acl/b64", None).await;

    let (s, v) = root
        .req(
            "PUT",
            "sys/policies/acl/bad",
            Some(json!({"policy": "path \"secret/*\" { capabilities = [\"read\"] "})),
        )
        .await;
    assert_eq!(s, 400);
    assert!(v["errors"][0].as_str().unwrap().starts_with("failed to parse policy: "), "{v}");
    let (s, v) = root
        .req(
            "PUT",
            "sys/policies/acl/bad",
            Some(json!({"policy": "path \"secret/*\" { capabilities = [\"reed\"] }"})),
        )
        .await;
    assert_eq!(s, 400);
    assert!(v["errors"][0].as_str().unwrap().contains("invalid capability \"reed\""), "{v}");
    let (s, v) = root.req("PUT", "sys/policies/acl/bad", Some(json!({}))).await;
    assert_eq!((s, &v["errors"][0]), (400, &json!("'policy' parameter not supplied or empty")));
    let (s, v) = root.req("PUT", "sys/policies/acl/root", Some(json!({"policy": READER}))).await;
    assert_eq!((s, &v["errors"][0]), (400, &json!("cannot update \"root\" policy")));
    let (s, v) = root.req("DELETE", "sys/policies/acl/root", None).await;
    assert_eq!((s, &v["errors"][0]), (400, &json!("cannot delete \"root\" policy")));
    let (s, v) = root.req("DELETE", "sys/policies/acl/default", None).await;
    assert_eq!((s, &v["errors"][0]), (400, &json!("cannot delete default policy")));
    let (s, v) = root.req("GET", "sys/policies/acl/nope", None).await;
    assert_eq!((s, v), (404, json!({"errors": []})));
    // The default policy is editable.
    let (s, v) = root.req("GET", "sys/policies/acl/default", None).await;
    assert_eq!(s, 200);
    assert!(v["data"]["policy"].as_str().unwrap().contains("auth/token/lookup-self"));
    put_policy(
        &root,
        "default",
        "path \"auth/token/lookup-self\" {\n  capabilities = [\"read\"]\n}\n",
    )
    .await;

    let (s, _) = root.req("DELETE", "sys/policies/acl/mypol", None).await;
    assert_eq!(s, 204);
    let (s, _) = root.req("DELETE", "sys/policy/legacy", None).await;
    assert_eq!(s, 204);
    let (_, v) = root.req("LIST", "sys/policies/acl", None).await;
    assert_eq!(v["data"]["keys"], json!(["default", "legacy2", "root"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_endpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::dev(tmp.path());
    let root = node.client().with_token("root");
    put_policy(
        &root,
        "caps",
        "path \"secret/data/*\" {\n  capabilities = [\"read\", \"update\"]\n}\npath \"secret/data/locked\" {\n  capabilities = [\"deny\"]\n}\npath \"secret/+/team\" {\n  capabilities = [\"list\"]\n}\n",
    )
    .await;
    let (t, acc, _) = create_token(&root, json!({"policies": ["caps"]})).await;
    let (s, v) = as_token(&node, &t)
        .req("POST", "sys/capabilities-self", Some(json!({"paths": ["secret/data/x", "secret/data/locked", "secret/meta/team", "sys/mounts", "cubbyhole/x"]})))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["secret/data/x"], json!(["read", "update"]));
    assert_eq!(v["data"]["secret/data/locked"], json!(["deny"]));
    assert_eq!(v["data"]["secret/meta/team"], json!(["list"]));
    assert_eq!(v["data"]["sys/mounts"], json!(["deny"]));
    assert_eq!(v["data"]["cubbyhole/x"], json!(["create", "delete", "list", "read", "update"]));
    assert_eq!(v["secret/data/x"], json!(["read", "update"]), "injected at the top level");
    assert!(v["data"].get("capabilities").is_none(), "only for a single path");
    let (_, v) = as_token(&node, &t)
        .req("POST", "sys/capabilities-self", Some(json!({"path": "secret/data/x"})))
        .await;
    assert_eq!(v["capabilities"], json!(["read", "update"]));
    let (_, v) =
        root.req("POST", "sys/capabilities-self", Some(json!({"paths": ["anything"]}))).await;
    assert_eq!(v["data"]["anything"], json!(["root"]));
    let (s, v) = root
        .req("POST", "sys/capabilities", Some(json!({"token": t, "paths": ["secret/data/x"]})))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["capabilities"], json!(["read", "update"]));
    let (s, v) = root
        .req(
            "POST",
            "sys/capabilities-accessor",
            Some(json!({"accessor": acc, "paths": ["secret/data/x"]})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["data"]["secret/data/x"], json!(["read", "update"]));
    let (s, _) =
        root.req("POST", "sys/capabilities", Some(json!({"token": "bogus", "paths": ["x"]}))).await;
    assert_eq!(s, 400);
    let (s, v) = root.req("POST", "sys/capabilities-self", Some(json!({}))).await;
    assert_eq!((s, &v["errors"][0]), (400, &json!("paths must be supplied")));
    // A token without the default policy may not even ask.
    let (t2, _, _) =
        create_token(&root, json!({"policies": ["caps"], "no_default_policy": true})).await;
    let (s, _) =
        as_token(&node, &t2).req("POST", "sys/capabilities-self", Some(json!({"path": "x"}))).await;
    assert_eq!(s, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_methods_mount_and_unmount() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::dev(tmp.path());
    let root = node.client().with_token("root");
    let (s, v) = root.req("GET", "sys/auth", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["token/"]["type"], "token", "injected at the top: {v}");
    assert_eq!(v["data"]["token/"]["config"]["token_type"], "default-service");
    let (s, v) = root
        .req(
            "POST",
            "sys/auth/userpass",
            Some(json!({"type": "userpass", "description": "people"})),
        )
        .await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = root.req("POST", "sys/auth/userpass", Some(json!({"type": "userpass"}))).await;
    assert_eq!((s, &v["errors"][0]), (400, &json!("path is already in use at userpass/")));
    let (s, v) = root.req("POST", "sys/auth/x", Some(json!({"type": "nonesuch"}))).await;
    assert_eq!((s, &v["errors"][0]), (400, &json!("plugin not found in the catalog: nonesuch")));
    let (s, v) = root.req("GET", "sys/auth", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["data"]["userpass/"]["type"], "userpass");
    assert_eq!(v["data"]["userpass/"]["description"], "people");
    assert!(v["data"]["userpass/"]["accessor"].as_str().unwrap().starts_with("auth_userpass_"));
    let (s, v) = root.req("GET", "sys/internal/ui/mounts/auth/userpass/login/bob", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["data"]["path"], "userpass/");
    // Enabling auth methods needs sudo on sys/auth/*.
    put_policy(
        &root,
        "auth-admin",
        "path \"sys/auth/*\" {\n  capabilities = [\"create\", \"update\", \"delete\"]\n}\n",
    )
    .await;
    let (t, _, _) = create_token(&root, json!({"policies": ["auth-admin"]})).await;
    let (s, _) =
        as_token(&node, &t).req("POST", "sys/auth/approle", Some(json!({"type": "approle"}))).await;
    assert_eq!(s, 403);
    // Tuning the token store's TTLs changes the default TTL of new tokens.
    let (s, v) = root.req("GET", "sys/auth/token/tune", None).await;
    assert_eq!((s, &v["default_lease_ttl"]), (200, &json!(768 * 3600)), "{v}");
    let (s, v) = root
        .req("POST", "sys/auth/token/tune", Some(json!({"default_lease_ttl": "1h", "max_lease_ttl": "2h"})))
        .await;
    assert_eq!(s, 204, "{v}");
    let (_, _, v) = create_token(&root, json!({"policies": ["default"]})).await;
    assert_eq!(v["auth"]["lease_duration"], 3600);
    let (s, v) = root.req("POST", "sys/auth/token/tune", Some(json!({"default_lease_ttl": "3h"}))).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = root.req("DELETE", "sys/auth/token", None).await;
    assert_eq!((s, &v["errors"][0]), (400, &json!("token credential backend cannot be disabled")));
    let (s, _) = root.req("DELETE", "sys/auth/userpass", None).await;
    assert_eq!(s, 204);
    let (_, v) = root.req("GET", "sys/auth", None).await;
    assert!(v["data"].get("userpass/").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_policies_and_auth_mounts_survive_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::raft(tmp.path(), "n1");
    let api = node.client();
    let (keys, root_token) = api.init(1, 1).await;
    api.unseal(&keys).await;
    let root = api.with_token(&root_token);
    root.mount_kv2("secret").await;
    put_policy(&root, "app-reader", READER).await;
    let (s, _) = root.req("POST", "sys/auth/userpass", Some(json!({"type": "userpass"}))).await;
    assert_eq!(s, 204);
    root.req("POST", "secret/data/app/db", Some(json!({"data": {"k": "v"}}))).await;
    let (t, _, _) = create_token(&root, json!({"policies": ["app-reader"]})).await;

    node.restart();
    node.client().unseal(&keys).await;
    let me = as_token(&node, &t);
    let (s, _) = me.req("GET", "secret/data/app/db", None).await;
    assert_eq!(s, 200);
    let (s, _) = me.req("POST", "secret/data/app/db", Some(json!({"data": {}}))).await;
    assert_eq!(s, 403);
    let (_, v) = node.client().with_token(&root_token).req("GET", "sys/auth", None).await;
    assert_eq!(v["data"]["userpass/"]["type"], "userpass");
    // Neither the token nor its accessor is on disk in the clear.
    let mut found = Vec::new();
    for entry in walk(&tmp.path().join("data")) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        if bytes.windows(t.len()).any(|w| w == t.as_bytes()) {
            found.push(entry);
        }
    }
    assert!(found.is_empty(), "token in plaintext in {found:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                pending.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn hvac_token_and_policy_flows() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::dev(tmp.path());
    let script = r#"
import sys, hvac
from hvac import exceptions as exc
addr = sys.argv[1]
c = hvac.Client(url=addr, token="root")
assert c.is_authenticated()

policy = 'path "secret/data/app/*" {\n  capabilities = ["read"]\n}\n'
c.sys.create_or_update_policy(name="app", policy=policy)
assert "app" in c.sys.list_policies()["data"]["policies"]
assert c.sys.read_policy(name="app")["data"]["rules"] == policy
c.sys.create_or_update_acl_policy(name="app2", policy=policy)
assert c.sys.read_acl_policy(name="app2")["data"]["policy"] == policy
assert "app2" in c.sys.list_acl_policies()["data"]["keys"]
c.sys.delete_acl_policy(name="app2")
assert "app2" not in c.sys.list_acl_policies()["data"]["keys"]

c.secrets.kv.v2.create_or_update_secret(path="app/db", secret={"pw": "s3cr3t"})
tok = c.auth.token.create(policies=["app"], ttl="1h", meta={"team": "a"})
auth = tok["auth"]
assert auth["client_token"].startswith("hvs."), auth
assert auth["policies"] == ["app", "default"], auth
assert auth["metadata"] == {"team": "a"}, auth
assert auth["lease_duration"] == 3600 and auth["renewable"], auth

u = hvac.Client(url=addr, token=auth["client_token"])
assert u.is_authenticated()
me = u.auth.token.lookup_self()["data"]
assert me["policies"] == ["app", "default"] and me["meta"] == {"team": "a"}, me
assert u.secrets.kv.v2.read_secret_version(path="app/db", raise_on_deleted_version=True)["data"]["data"] == {"pw": "s3cr3t"}
try:
    u.secrets.kv.v2.create_or_update_secret(path="app/db", secret={"pw": "x"})
    raise SystemExit("write should have been denied")
except exc.Forbidden:
    pass
caps = u.sys.get_capabilities(paths=["secret/data/app/db"])
assert caps["capabilities"] == ["read"], caps
renewed = u.auth.token.renew_self(increment="30m")
assert renewed["auth"]["lease_duration"] == 1800, renewed

looked = c.auth.token.lookup(token=auth["client_token"])["data"]
assert looked["accessor"] == auth["accessor"], looked
# hvac sends display_name="token"; Vault prefixes "token-".
assert c.auth.token.lookup_accessor(accessor=auth["accessor"])["data"]["display_name"] == "token-token"
assert auth["accessor"] in c.auth.token.list_accessors()["data"]["keys"]

orphan = c.auth.token.create_orphan(policies=["app"])["auth"]
assert orphan["orphan"], orphan

c.auth.token.revoke(token=auth["client_token"])
assert not u.is_authenticated()
try:
    c.auth.token.lookup(token=auth["client_token"])
    raise SystemExit("lookup of a revoked token should fail")
except exc.Forbidden:
    pass

c.sys.enable_auth_method(method_type="userpass", path="people")
assert "people/" in c.sys.list_auth_methods()["data"]
c.sys.disable_auth_method(path="people")
assert "people/" not in c.sys.list_auth_methods()["data"]
print("hvac-acl-ok")
"#;
    let (code, out, err) = run_cmd(Command::new(venv_python()).args(["-c", script, &node.addr]));
    assert_eq!(code, 0, "hvac: {out}{err}");
    assert!(out.contains("hvac-acl-ok"), "{out}{err}");
}
