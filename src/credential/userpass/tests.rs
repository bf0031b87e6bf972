//! userpass over a real barrier on the in-memory backend, driven through `handle`. Expected
//! texts and shapes are OpenBao 2.x's.

use std::sync::Arc;

use serde_json::{json, Map, Value};
use vaultd_storage::inmem::InmemBackend;

use super::*;
use crate::barrier::{Barrier, RootKey};

async fn engine() -> (Userpass, Arc<InmemBackend>) {
    let backend = Arc::new(InmemBackend::new());
    let barrier = Barrier::new(backend.clone());
    let root = RootKey::generate().unwrap();
    barrier.initialize(&root).await.unwrap();
    barrier.unseal(&root).await.unwrap();
    (Userpass::new(View::new(Arc::new(barrier), "auth/up-test/")), backend)
}

fn req(op: Operation, path: &str, body: Value) -> Request {
    let data: Map<String, Value> = match body {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let mut r = Request::new(op, format!("auth/userpass/{path}")).with_data(data);
    r.mount_point = "auth/userpass/".into();
    r
}

async fn call(u: &Userpass, op: Operation, path: &str, body: Value) -> Result<Option<Response>> {
    u.handle(&req(op, path, body), path).await
}

async fn read(u: &Userpass, path: &str) -> Map<String, Value> {
    call(u, Operation::Read, path, json!({})).await.unwrap().expect("found").data.unwrap()
}

#[tokio::test]
async fn user_crud_and_shapes() {
    let (u, backend) = engine().await;
    assert!(u.unauthenticated_paths().contains(&"login/*"));
    let r = call(
        &u,
        Operation::Update,
        "users/Alice",
        json!({"password": "pw1", "token_policies": "a,b", "token_ttl": "1h", "token_bound_cidrs": ["127.0.0.1/32"]}),
    )
    .await
    .unwrap();
    assert!(r.is_none(), "204");
    let d = read(&u, "users/alice").await;
    assert_eq!(
        Value::Object(d.clone()),
        json!({
            "token_bound_cidrs": ["127.0.0.1"], "token_explicit_max_ttl": 0, "token_max_ttl": 0,
            "token_no_default_policy": false, "token_num_uses": 0, "token_period": 0,
            "token_policies": ["a", "b"], "token_strictly_bind_ip": false, "token_ttl": 3600,
            "token_type": "default"
        })
    );
    assert_eq!(read(&u, "users/ALICE").await, d, "names are case-insensitive");
    assert_eq!(
        u.existence_check(&req(Operation::Update, "users/alice", json!({})), "users/alice")
            .await
            .unwrap(),
        Some(true)
    );
    assert_eq!(
        u.existence_check(&req(Operation::Update, "users/bob", json!({})), "users/bob")
            .await
            .unwrap(),
        Some(false)
    );

    // The password is stored only as an Argon2id hash, behind the barrier.
    let stored = u.user("alice").await.unwrap().unwrap();
    assert!(stored.password_hash.starts_with("$argon2id$"), "{}", stored.password_hash);
    use vaultd_storage::Backend;
    let raw = backend.get("auth/up-test/user/alice").await.unwrap().unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("argon2"));

    let list = call(&u, Operation::List, "users/", json!({})).await.unwrap().unwrap().data.unwrap();
    assert_eq!(list["keys"], json!(["alice"]));

    // Legacy `policies` shows up on read when used.
    call(&u, Operation::Update, "users/alice/policies", json!({"policies": "P2,p3"}))
        .await
        .unwrap();
    let d = read(&u, "users/alice").await;
    assert_eq!(d["policies"], json!(["p2", "p3"]));
    assert_eq!(d["token_policies"], json!(["p2", "p3"]));
    call(&u, Operation::Update, "users/alice/policies", json!({"token_policies": ["x"]}))
        .await
        .unwrap();
    let d = read(&u, "users/alice").await;
    assert_eq!(d["token_policies"], json!(["x"]));
    assert!(!d.contains_key("policies"));

    assert!(call(&u, Operation::Delete, "users/alice", json!({})).await.unwrap().is_none());
    assert!(call(&u, Operation::Delete, "users/alice", json!({})).await.unwrap().is_none());
    assert!(call(&u, Operation::Read, "users/alice", json!({})).await.unwrap().is_none());
    assert!(call(&u, Operation::List, "users/", json!({})).await.unwrap().is_none());
}

#[tokio::test]
async fn user_write_errors() {
    let (u, _) = engine().await;
    let e = |r: Result<Option<Response>>| r.unwrap_err().to_string();
    assert_eq!(
        e(call(&u, Operation::Update, "users/bob", json!({"policies": ["x"]})).await),
        "must provide either password or password_hash"
    );
    assert_eq!(
        e(call(&u, Operation::Update, "users/bob", json!({"password": "x", "password_hash": "y"}))
            .await),
        "only one of password or password_hash may be provided"
    );
    assert!(e(
        call(&u, Operation::Update, "users/bob", json!({"password_hash": "$2a$10$abc"})).await
    )
    .contains("not supported"));
    assert_eq!(
        e(call(&u, Operation::Update, "users/z", json!({"password": "x", "token_ttl": "abc"}))
            .await),
        "error converting input for field \"token_ttl\": time: invalid duration \"abc\""
    );
    assert_eq!(
        e(call(&u, Operation::Update, "users/z", json!({"password": "x", "token_ttl": -5})).await),
        "error converting input for field \"token_ttl\": cannot provide negative value '-5'"
    );
    assert_eq!(
        e(call(
            &u,
            Operation::Update,
            "users/z",
            json!({"password": "x", "token_ttl": 100, "token_max_ttl": 50})
        )
        .await),
        "'token_ttl' cannot be greater than 'token_max_ttl'"
    );
    assert_eq!(
        e(call(&u, Operation::Update, "users/z", json!({"password": "x", "token_bound_cidrs": "bad"})).await),
        "error parsing address \"bad\": Unable to convert \"bad\" to an IPv4 or IPv6 address, or a UNIX Socket"
    );
    assert_eq!(
        e(call(&u, Operation::Update, "users/z", json!({"password": "x", "token_type": "weird"}))
            .await),
        "invalid 'token_type' value \"weird\""
    );
    assert_eq!(
        e(call(&u, Operation::Update, "users/z", json!({"password": "x", "token_no_default_policy": "xyz"})).await),
        "error converting input for field \"token_no_default_policy\": '' cannot parse value as 'bool': strconv.ParseBool: invalid syntax"
    );
    assert!(
        call(&u, Operation::Read, "users/z", json!({})).await.unwrap().is_none(),
        "nothing written on error"
    );
    assert_eq!(
        e(call(&u, Operation::Update, "users/nobody/password", json!({"password": "x"})).await),
        "1 error occurred:\n\t* username does not exist\n\n"
    );
    assert_eq!(
        e(call(&u, Operation::Update, "users/nobody/policies", json!({"token_policies": "x"}))
            .await),
        "1 error occurred:\n\t* username does not exist\n\n"
    );
    assert!(matches!(
        call(&u, Operation::Read, "users/a/password", json!({})).await,
        Err(Error::UnsupportedOperation)
    ));
    assert!(matches!(
        call(&u, Operation::Update, "nothing", json!({})).await,
        Err(Error::UnsupportedPath)
    ));
}

#[tokio::test]
async fn login_success_failure_and_password_change() {
    let (u, _) = engine().await;
    call(
        &u,
        Operation::Update,
        "users/alice",
        json!({"password": "pw1", "token_policies": "b,A", "token_ttl": "1h", "token_max_ttl": "2h",
               "token_num_uses": 3, "token_period": 0, "token_explicit_max_ttl": 7200}),
    )
    .await
    .unwrap();
    let r = call(&u, Operation::Update, "login/ALICE", json!({"password": "pw1"}))
        .await
        .unwrap()
        .unwrap();
    assert!(r.data.is_none());
    let a = r.auth.unwrap();
    assert_eq!(a.policies, vec!["a", "b", "default"]);
    assert_eq!(a.metadata.get("username").map(String::as_str), Some("alice"));
    assert_eq!(a.display_name, "userpass-alice");
    assert_eq!((a.ttl, a.max_ttl, a.num_uses, a.explicit_max_ttl), (3600, 7200, 3, 7200));
    assert!(a.renewable);

    let bad = |r: Result<Option<Response>>| match r {
        Err(Error::BadRequest(m)) => m,
        other => panic!("expected 400, got {other:?}"),
    };
    assert_eq!(
        bad(call(&u, Operation::Update, "login/alice", json!({"password": "nope"})).await),
        "invalid username or password"
    );
    assert_eq!(
        bad(call(&u, Operation::Update, "login/nobody", json!({"password": "nope"})).await),
        "invalid username or password"
    );
    assert!(
        matches!(call(&u, Operation::Update, "login/alice", json!({})).await, Err(Error::Internal(m)) if m == "missing password")
    );

    call(&u, Operation::Update, "users/alice/password", json!({"password": "pw2"})).await.unwrap();
    assert_eq!(
        bad(call(&u, Operation::Update, "login/alice", json!({"password": "pw1"})).await),
        "invalid username or password"
    );
    assert!(call(&u, Operation::Update, "login/alice", json!({"password": "pw2"}))
        .await
        .unwrap()
        .unwrap()
        .auth
        .is_some());
    assert_eq!(
        call(&u, Operation::Update, "users/alice/password", json!({}))
            .await
            .unwrap_err()
            .to_string(),
        "must provide either password or password_hash"
    );

    // token_no_default_policy leaves `default` out; updating without a password keeps it.
    call(&u, Operation::Update, "users/alice", json!({"token_no_default_policy": true}))
        .await
        .unwrap();
    let a = call(&u, Operation::Update, "login/alice", json!({"password": "pw2"}))
        .await
        .unwrap()
        .unwrap()
        .auth
        .unwrap();
    assert_eq!(a.policies, vec!["a", "b"]);
}
