//! approle over a real barrier on the in-memory backend, driven through `handle`. Expected
//! texts and shapes are OpenBao 2.x's.

use std::sync::Arc;

use serde_json::{json, Map, Value};
use vaultd_storage::inmem::InmemBackend;

use super::*;
use crate::barrier::{Barrier, RootKey};

async fn engine() -> (AppRole, Arc<InmemBackend>) {
    let backend = Arc::new(InmemBackend::new());
    let barrier = Barrier::new(backend.clone());
    let root = RootKey::generate().unwrap();
    barrier.initialize(&root).await.unwrap();
    barrier.unseal(&root).await.unwrap();
    (AppRole::new(View::new(Arc::new(barrier), "auth/ar-test/")), backend)
}

fn req(op: Operation, path: &str, body: Value) -> Request {
    let data: Map<String, Value> = match body {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let mut r = Request::new(op, format!("auth/approle/{path}")).with_data(data);
    r.mount_point = "auth/approle/".into();
    r
}

async fn call(a: &AppRole, op: Operation, path: &str, body: Value) -> Result<Option<Response>> {
    a.handle(&req(op, path, body), path).await
}

async fn data(a: &AppRole, op: Operation, path: &str, body: Value) -> Map<String, Value> {
    let r = call(a, op, path, body)
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .expect("a response");
    assert_eq!(r.status, None);
    r.data.unwrap()
}

fn err(r: Result<Option<Response>>) -> String {
    r.unwrap_err().to_string()
}

async fn login(a: &AppRole, role_id: &str, secret_id: &str) -> Result<Option<Response>> {
    call(a, Operation::Update, "login", json!({"role_id": role_id, "secret_id": secret_id})).await
}

#[tokio::test]
async fn role_crud_and_shapes() {
    let (a, backend) = engine().await;
    assert_eq!(a.unauthenticated_paths(), &["login"]);
    assert!(call(&a, Operation::Update, "role/R1", json!({"token_policies": "a,b", "secret_id_ttl": "10m", "secret_id_num_uses": 2, "token_ttl": "20m"}))
        .await
        .unwrap()
        .is_none());
    let d = data(&a, Operation::Read, "role/r1", json!({})).await;
    assert_eq!(
        Value::Object(d),
        json!({
            "bind_secret_id": true, "local_secret_ids": false, "secret_id_bound_cidrs": null,
            "secret_id_num_uses": 2, "secret_id_ttl": 600, "token_bound_cidrs": [],
            "token_explicit_max_ttl": 0, "token_max_ttl": 0, "token_no_default_policy": false,
            "token_num_uses": 0, "token_period": 0, "token_policies": ["a", "b"],
            "token_strictly_bind_ip": false, "token_ttl": 1200, "token_type": "default"
        })
    );
    assert_eq!(data(&a, Operation::List, "role/", json!({})).await["keys"], json!(["r1"]));
    assert_eq!(
        a.existence_check(&req(Operation::Update, "role/r1", json!({})), "role/r1").await.unwrap(),
        Some(true)
    );
    assert_eq!(
        a.existence_check(&req(Operation::Update, "role/zz", json!({})), "role/zz").await.unwrap(),
        Some(false)
    );

    let rid = data(&a, Operation::Read, "role/r1/role-id", json!({})).await["role_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(rid.len(), 36);
    call(&a, Operation::Update, "role/r1/role-id", json!({"role_id": "my-role-id"})).await.unwrap();
    assert_eq!(
        data(&a, Operation::Read, "role/r1/role-id", json!({})).await["role_id"],
        "my-role-id"
    );
    // Identifiers are stored only as HMACs, behind the barrier.
    use vaultd_storage::Backend;
    let keys = backend.list("auth/ar-test/role_id/").await.unwrap();
    assert_eq!(keys.len(), 1, "the old role ID's index is gone");
    assert!(!keys[0].contains("my-role-id"));

    // Legacy fields.
    call(&a, Operation::Update, "role/r3", json!({"policies": "X,y", "period": "1h", "secret_id_bound_cidrs": "10.0.0.0/8", "bind_secret_id": false}))
        .await
        .unwrap();
    let d = data(&a, Operation::Read, "role/r3", json!({})).await;
    assert_eq!(d["policies"], json!(["x", "y"]));
    assert_eq!(d["token_policies"], json!(["x", "y"]));
    assert_eq!(d["period"], 3600);
    assert_eq!(d["token_period"], 3600);
    assert_eq!(d["secret_id_bound_cidrs"], json!(["10.0.0.0/8"]));

    assert!(call(&a, Operation::Delete, "role/r3", json!({})).await.unwrap().is_none());
    assert!(call(&a, Operation::Delete, "role/nope", json!({})).await.unwrap().is_none());
    assert!(call(&a, Operation::Read, "role/r3", json!({})).await.unwrap().is_none());
    assert!(call(&a, Operation::Read, "role/nope/role-id", json!({})).await.unwrap().is_none());
}

#[tokio::test]
async fn role_errors() {
    let (a, _) = engine().await;
    call(&a, Operation::Update, "role/r1", json!({"role_id": "my-role-id"})).await.unwrap();
    assert_eq!(
        err(call(&a, Operation::Update, "role/r2", json!({"bind_secret_id": false})).await),
        "1 error occurred:\n\t* at least one constraint should be enabled on the role\n\n"
    );
    assert_eq!(
        err(call(&a, Operation::Update, "role/r2", json!({"role_id": "my-role-id"})).await),
        "1 error occurred:\n\t* role_id already in use\n\n"
    );
    assert_eq!(
        err(call(&a, Operation::Update, "role/r4", json!({"secret_id_bound_cidrs": "bad"})).await),
        "1 error occurred:\n\t* failed to validate CIDR blocks: invalid CIDR address: bad\n\n"
    );
    assert_eq!(
        err(call(&a, Operation::Update, "role/r4", json!({"secret_id_num_uses": -1})).await),
        "secret_id_num_uses cannot be negative"
    );
    assert_eq!(
        err(call(&a, Operation::Update, "role/r1", json!({"local_secret_ids": true})).await),
        "local_secret_ids can only be modified during role creation"
    );
    assert_eq!(
        err(call(&a, Operation::Update, "role/r5", json!({"role_id": ""})).await),
        "invalid role_id supplied, or failed to generate a role_id"
    );
    assert!(matches!(
        call(&a, Operation::Update, "role/nope/role-id", json!({"role_id": "x"})).await,
        Err(Error::UnsupportedPath)
    ));
    assert_eq!(
        err(call(&a, Operation::Update, "role/r1/role-id", json!({})).await),
        "missing role_id"
    );
    let r = call(&a, Operation::Update, "role/nope/secret-id", json!({})).await.unwrap().unwrap();
    assert_eq!(r.status, Some(404));
    assert_eq!(Value::Object(r.data.unwrap()), json!({"errors": ["role \"nope\" does not exist"]}));
    assert_eq!(
        err(call(&a, Operation::List, "role/nope/secret-id/", json!({})).await),
        "role \"nope\" does not exist"
    );
    assert!(matches!(
        call(&a, Operation::Read, "role/r1/secret-id", json!({})).await,
        Err(Error::UnsupportedOperation)
    ));
    assert!(matches!(
        call(&a, Operation::Update, "role/r1/bogus", json!({})).await,
        Err(Error::UnsupportedPath)
    ));
    assert_eq!(
        err(call(&a, Operation::Update, "role/r1", json!({"token_ttl": "abc"})).await),
        "error converting input for field \"token_ttl\": time: invalid duration \"abc\""
    );
}

#[tokio::test]
async fn secret_ids_login_and_num_uses() {
    let (a, backend) = engine().await;
    call(&a, Operation::Update, "role/r1", json!({"token_policies": "a,b", "secret_id_ttl": "10m", "secret_id_num_uses": 2, "token_ttl": "20m", "role_id": "rid"}))
        .await
        .unwrap();
    let s = data(&a, Operation::Update, "role/r1/secret-id", json!({"metadata": "{\"k\":\"v\"}"}))
        .await;
    assert_eq!(s["secret_id_num_uses"], 2);
    assert_eq!(s["secret_id_ttl"], 600);
    let sid = s["secret_id"].as_str().unwrap().to_string();
    let acc = s["secret_id_accessor"].as_str().unwrap().to_string();
    use vaultd_storage::Backend;
    for dir in ["auth/ar-test/accessor/", "auth/ar-test/secret_id/"] {
        for k in backend.list(dir).await.unwrap() {
            assert!(!k.contains(&sid) && !k.contains(&acc), "{k}");
        }
    }

    let look =
        data(&a, Operation::Update, "role/r1/secret-id/lookup", json!({"secret_id": sid})).await;
    assert_eq!(look["secret_id_accessor"], acc.as_str());
    assert_eq!(look["metadata"], json!({"k": "v"}));
    assert_eq!(look["secret_id_num_uses"], 2);
    assert_eq!(look["cidr_list"], json!([]));
    assert!(look["expiration_time"].as_str().unwrap() > look["creation_time"].as_str().unwrap());
    let by_acc = data(
        &a,
        Operation::Update,
        "role/r1/secret-id-accessor/lookup",
        json!({"secret_id_accessor": acc}),
    )
    .await;
    assert_eq!(by_acc, look);
    assert_eq!(
        data(&a, Operation::List, "role/r1/secret-id/", json!({})).await["keys"],
        json!([acc])
    );

    // Login: metadata merged with role_name; uses counted down, then the secret ID is gone.
    let auth = login(&a, "rid", &sid).await.unwrap().unwrap().auth.unwrap();
    assert_eq!(auth.policies, vec!["a", "b", "default"]);
    assert_eq!(
        auth.metadata,
        BTreeMap::from([
            ("k".to_string(), "v".to_string()),
            ("role_name".to_string(), "r1".to_string())
        ])
    );
    assert_eq!(auth.display_name, "approle");
    assert_eq!(auth.ttl, 1200);
    assert!(auth.renewable);
    let look =
        data(&a, Operation::Update, "role/r1/secret-id/lookup", json!({"secret_id": sid})).await;
    assert_eq!(look["secret_id_num_uses"], 1);
    assert!(login(&a, "rid", &sid).await.unwrap().unwrap().auth.is_some());
    assert_eq!(err(login(&a, "rid", &sid).await), "invalid role or secret ID");
    assert!(call(&a, Operation::Update, "role/r1/secret-id/lookup", json!({"secret_id": sid}))
        .await
        .unwrap()
        .is_none());
    assert!(backend.list("auth/ar-test/accessor/").await.unwrap().is_empty());

    // Failures.
    let sid2 = data(&a, Operation::Update, "role/r1/secret-id", json!({})).await["secret_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(err(login(&a, "rid", "bad").await), "invalid role or secret ID");
    assert_eq!(err(login(&a, "bad", &sid2).await), "invalid role or secret ID");
    assert_eq!(
        err(call(&a, Operation::Update, "login", json!({"role_id": "rid"})).await),
        "missing secret_id"
    );
    assert!(
        matches!(call(&a, Operation::Update, "login", json!({})).await, Err(Error::Internal(m)) if m == "missing role_id")
    );

    // Generation limits follow the role.
    assert_eq!(
        err(call(&a, Operation::Update, "role/r1/secret-id", json!({"num_uses": 5})).await),
        "num_uses cannot be higher than the role's secret_id_num_uses"
    );
    assert_eq!(
        err(call(&a, Operation::Update, "role/r1/secret-id", json!({"ttl": "1h"})).await),
        "ttl cannot be longer than the role's secret_id_ttl"
    );
    assert_eq!(
        err(call(&a, Operation::Update, "role/r1/secret-id", json!({"metadata": "notjson"})).await),
        "failed to parse metadata: failed to parse the input: invalid <key,value> format"
    );
    assert_eq!(
        err(call(&a, Operation::Update, "role/r1/secret-id", json!({"metadata": {"k": "v"}})).await),
        "Field validation failed: error converting input for field \"metadata\": '' expected type 'string', got unconvertible type 'map[string]interface {}'"
    );
    let one = data(
        &a,
        Operation::Update,
        "role/r1/secret-id",
        json!({"num_uses": 1, "ttl": 60, "metadata": "a=1,b=2"}),
    )
    .await;
    assert_eq!(one["secret_id_num_uses"], 1);
    assert_eq!(one["secret_id_ttl"], 60);
    let one_look = data(
        &a,
        Operation::Update,
        "role/r1/secret-id/lookup",
        json!({"secret_id": one["secret_id"]}),
    )
    .await;
    assert_eq!(one_look["metadata"], json!({"a": "1", "b": "2"}));
}

#[tokio::test]
async fn secret_id_ttl_custom_ids_and_destroy() {
    let (a, _) = engine().await;
    call(&a, Operation::Update, "role/r", json!({"role_id": "rid"})).await.unwrap();
    // A TTL in the past-equivalent: expire it by rewriting the entry's deadline.
    let s = data(&a, Operation::Update, "role/r/secret-id", json!({"ttl": 3600})).await;
    let sid = s["secret_id"].as_str().unwrap().to_string();
    let h = a.hmac(&sid).await.unwrap();
    let (key, mut entry) = a.find_secret("r", &h).await.unwrap().unwrap();
    entry.expires_at = time::OffsetDateTime::now_utc().unix_timestamp() - 1;
    a.view.put_json(&key, &entry).await.unwrap();
    assert!(call(&a, Operation::Update, "role/r/secret-id/lookup", json!({"secret_id": sid}))
        .await
        .unwrap()
        .is_none());
    assert_eq!(err(login(&a, "rid", &sid).await), "invalid role or secret ID");
    assert!(a.view.get(&key).await.unwrap().is_none(), "expired entry removed on use");

    // Unlimited secret IDs without TTL show Go's zero time.
    let s = data(&a, Operation::Update, "role/r/secret-id", json!({})).await;
    assert_eq!(s["secret_id_num_uses"], 0);
    let look = data(
        &a,
        Operation::Update,
        "role/r/secret-id/lookup",
        json!({"secret_id": s["secret_id"]}),
    )
    .await;
    assert_eq!(look["expiration_time"], "0001-01-01T00:00:00Z");
    for _ in 0..3 {
        assert!(login(&a, "rid", s["secret_id"].as_str().unwrap())
            .await
            .unwrap()
            .unwrap()
            .auth
            .is_some());
    }

    // Custom secret IDs, once only.
    let c =
        data(&a, Operation::Update, "role/r/custom-secret-id", json!({"secret_id": "my-secret"}))
            .await;
    assert_eq!(c["secret_id"], "my-secret");
    assert_eq!(
        err(call(
            &a,
            Operation::Update,
            "role/r/custom-secret-id",
            json!({"secret_id": "my-secret"})
        )
        .await),
        "1 error occurred:\n\t* failed to store secret_id: SecretID is already registered\n\n"
    );
    assert!(login(&a, "rid", "my-secret").await.unwrap().unwrap().auth.is_some());

    // Destroy by secret ID and by accessor; lookups of missing entries.
    assert!(call(
        &a,
        Operation::Update,
        "role/r/secret-id/destroy",
        json!({"secret_id": "my-secret"})
    )
    .await
    .unwrap()
    .is_none());
    assert_eq!(err(login(&a, "rid", "my-secret").await), "invalid role or secret ID");
    assert!(call(&a, Operation::Update, "role/r/secret-id/destroy", json!({"secret_id": "nope"}))
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        err(call(&a, Operation::Update, "role/r/secret-id/destroy", json!({})).await),
        "missing secret_id"
    );
    let acc = s["secret_id_accessor"].as_str().unwrap();
    assert!(call(
        &a,
        Operation::Update,
        "role/r/secret-id-accessor/destroy",
        json!({"secret_id_accessor": acc})
    )
    .await
    .unwrap()
    .is_none());
    assert_eq!(
        err(login(&a, "rid", s["secret_id"].as_str().unwrap()).await),
        "invalid role or secret ID"
    );
    assert_eq!(
        err(call(&a, Operation::Update, "role/r/secret-id-accessor/destroy", json!({"secret_id_accessor": acc})).await),
        format!("1 error occurred:\n\t* failed to find accessor entry for secret_id_accessor: \"{acc}\"\n\n")
    );
    let r = call(
        &a,
        Operation::Update,
        "role/r/secret-id-accessor/lookup",
        json!({"secret_id_accessor": "nope"}),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r.status, Some(404));
    assert_eq!(
        r.data.unwrap()["error"],
        "failed to find accessor entry for secret_id_accessor: \"nope\""
    );
    assert_eq!(
        err(call(&a, Operation::Update, "role/r/secret-id-accessor/lookup", json!({})).await),
        "missing secret_id_accessor"
    );
    assert_eq!(
        err(call(&a, Operation::Update, "role/nope/secret-id/lookup", json!({"secret_id": "x"}))
            .await),
        "1 error occurred:\n\t* role \"nope\" does not exist\n\n"
    );

    // bind_secret_id=false with a CIDR constraint: role ID alone logs in.
    call(&a, Operation::Update, "role/open", json!({"bind_secret_id": false, "secret_id_bound_cidrs": "10.0.0.0/8", "role_id": "open-id"}))
        .await
        .unwrap();
    assert_eq!(
        err(call(&a, Operation::Update, "role/open/secret-id", json!({})).await),
        "bind_secret_id is not set on the role"
    );
    // Its only other credential is the CIDR, which cannot be checked yet: fail closed.
    assert!(matches!(
        call(&a, Operation::Update, "login", json!({"role_id": "open-id"})).await,
        Err(Error::Internal(m)) if m == "failed to get connection information"
    ));
    call(
        &a,
        Operation::Update,
        "role/tok",
        json!({"bind_secret_id": false, "token_bound_cidrs": "10.0.0.0/8", "role_id": "tok-id"}),
    )
    .await
    .unwrap();
    let auth = call(&a, Operation::Update, "login", json!({"role_id": "tok-id"}))
        .await
        .unwrap()
        .unwrap()
        .auth
        .unwrap();
    assert_eq!(auth.metadata.get("role_name").map(String::as_str), Some("tok"));
    let cidr =
        data(&a, Operation::Update, "role/r/secret-id", json!({"cidr_list": "10.0.0.0/8"})).await;
    assert!(matches!(
        login(&a, "rid", cidr["secret_id"].as_str().unwrap()).await,
        Err(Error::Internal(_))
    ));

    // Deleting a role removes its secret IDs and its role ID.
    let s = data(&a, Operation::Update, "role/r/secret-id", json!({})).await;
    call(&a, Operation::Delete, "role/r", json!({})).await.unwrap();
    assert_eq!(
        err(login(&a, "rid", s["secret_id"].as_str().unwrap()).await),
        "invalid role or secret ID"
    );
    assert!(a.view.list("accessor/").await.unwrap().is_empty());
    assert!(a.view.list(&a.secret_prefix("r").await.unwrap()).await.unwrap().is_empty());
}
