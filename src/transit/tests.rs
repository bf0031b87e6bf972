//! Transit over a real barrier on the in-memory backend, driven through `handle` as the router
//! would. Expected texts and shapes are OpenBao 2.x's (checked against `bao server -dev`).

use std::sync::Arc;

use serde_json::{json, Map, Value};
use vaultd_storage::inmem::InmemBackend;

use super::*;
use crate::barrier::{Barrier, RootKey};

async fn engine() -> (Transit, Arc<InmemBackend>) {
    let backend = Arc::new(InmemBackend::new());
    let barrier = Barrier::new(backend.clone());
    let root = RootKey::generate().unwrap();
    barrier.initialize(&root).await.unwrap();
    barrier.unseal(&root).await.unwrap();
    (Transit::new(View::new(Arc::new(barrier), "logical/transit-test/")), backend)
}

fn req(op: Operation, path: &str, body: Value) -> Request {
    let data: Map<String, Value> = match body {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let mut r = Request::new(op, format!("transit/{path}")).with_data(data);
    r.mount_point = "transit/".into();
    r
}

async fn call(t: &Transit, op: Operation, path: &str, body: Value) -> Result<Option<Response>> {
    t.handle(&req(op, path, body), path).await
}

async fn ok(t: &Transit, op: Operation, path: &str, body: Value) -> Map<String, Value> {
    let r = call(t, op, path, body)
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .expect("a response");
    assert_eq!(r.status, None, "{path}: {:?}", r.data);
    r.data.unwrap_or_default()
}

async fn post(t: &Transit, path: &str, body: Value) -> Map<String, Value> {
    ok(t, Operation::Update, path, body).await
}

async fn err(t: &Transit, op: Operation, path: &str, body: Value) -> String {
    match call(t, op, path, body).await {
        Err(e) => e.to_string(),
        Ok(r) => panic!("{path}: expected an error, got {r:?}"),
    }
}

async fn bad(t: &Transit, path: &str, body: Value) -> String {
    match call(t, Operation::Update, path, body).await {
        Err(e @ Error::BadRequest(_)) => e.to_string(),
        other => panic!("{path}: expected a 400, got {other:?}"),
    }
}

fn b64(s: &[u8]) -> String {
    b64_encode(s)
}

fn s(m: &Map<String, Value>, k: &str) -> String {
    m.get(k).and_then(Value::as_str).unwrap_or_else(|| panic!("no {k} in {m:?}")).to_string()
}

#[tokio::test]
async fn key_lifecycle_read_list_delete() {
    let (t, _) = engine().await;
    let created = post(&t, "keys/k1", json!({})).await;
    assert_eq!(created["type"], "aes256-gcm96");
    assert_eq!(created["latest_version"], 1);
    assert_eq!(created["min_decryption_version"], 1);
    assert_eq!(created["min_encryption_version"], 0);
    assert_eq!(created["deletion_allowed"], false);
    assert_eq!(created["supports_encryption"], true);
    assert_eq!(created["supports_signing"], false);
    assert_eq!(created["name"], "k1");
    assert!(created["keys"]["1"].is_i64(), "{created:?}");
    let read = ok(&t, Operation::Read, "keys/k1", json!({})).await;
    assert_eq!(read, created);
    // Creating again answers with the existing key.
    assert_eq!(post(&t, "keys/k1", json!({"type": "ed25519"})).await["type"], "aes256-gcm96");

    post(&t, "keys/k2", json!({"type": "chacha20-poly1305"})).await;
    let list = ok(&t, Operation::List, "keys/", json!({})).await;
    assert_eq!(list["keys"], json!(["k1", "k2"]));
    assert!(call(&t, Operation::Read, "keys/missing", json!({})).await.unwrap().is_none());

    assert_eq!(
        err(&t, Operation::Delete, "keys/k1", json!({})).await,
        "error deleting policy k1: deletion is not allowed for this key"
    );
    assert_eq!(
        err(&t, Operation::Delete, "keys/nokey", json!({})).await,
        "error deleting policy nokey: could not delete key; not found"
    );
    let cfg = post(&t, "keys/k1/config", json!({"deletion_allowed": true})).await;
    assert_eq!(cfg["deletion_allowed"], true);
    assert!(call(&t, Operation::Delete, "keys/k1", json!({})).await.unwrap().is_none());
    assert!(call(&t, Operation::Read, "keys/k1", json!({})).await.unwrap().is_none());
    assert_eq!(
        bad(&t, "decrypt/k1", json!({"ciphertext": "vault:v1:AAAA"})).await,
        "encryption key not found"
    );
}

#[tokio::test]
async fn create_errors_and_refusals() {
    let (t, _) = engine().await;
    assert_eq!(bad(&t, "keys/k", json!({"type": "bogus"})).await, "unknown key type bogus");
    assert_eq!(
        bad(&t, "keys/k", json!({"auto_rotate_period": "1m"})).await,
        "auto rotate period must be 0 to disable or at least an hour"
    );
    assert_eq!(
        bad(&t, "keys/k", json!({"convergent_encryption": true})).await,
        "convergent encryption requires derivation to be enabled"
    );
    assert!(bad(&t, "keys/k", json!({"derived": true, "type": "ed25519"}))
        .await
        .contains("not supported by vaultd"));
    assert!(bad(&t, "keys/k", json!({"derived": true, "convergent_encryption": true}))
        .await
        .contains("not supported by vaultd"));
    assert_eq!(
        err(&t, Operation::Update, "keys/k", json!({"derived": true, "type": "ecdsa-p256"})).await,
        "1 error occurred:\n\t* key derivation and convergent encryption not supported for keys of type ecdsa-p256\n\n"
    );
    assert!(bad(&t, "keys/k", json!({"exportable": true}))
        .await
        .contains("not supported by vaultd"));
    assert!(bad(&t, "keys/k", json!({"type": "rsa-2048"}))
        .await
        .contains("not supported by vaultd"));
    let k = post(&t, "keys/k", json!({"auto_rotate_period": "2h"})).await;
    assert_eq!(k["auto_rotate_period"], 7200);
    assert!(matches!(
        call(&t, Operation::Read, "keys/k/config", json!({})).await,
        Err(Error::UnsupportedOperation)
    ));
    assert!(matches!(
        call(&t, Operation::Update, "nothing", json!({})).await,
        Err(Error::UnsupportedPath)
    ));
    assert!(matches!(
        call(&t, Operation::Read, "encrypt/k", json!({})).await,
        Err(Error::UnsupportedOperation)
    ));
    assert!(matches!(
        call(&t, Operation::Update, "keys/-bad", json!({})).await,
        Err(Error::UnsupportedPath)
    ));
}

#[tokio::test]
async fn encrypt_decrypt_round_trip_and_upsert() {
    let (t, _) = engine().await;
    for kt in ["aes256-gcm96", "aes128-gcm96", "chacha20-poly1305"] {
        let name = format!("k-{kt}");
        post(&t, &format!("keys/{name}"), json!({"type": kt})).await;
        for payload in [&b""[..], b"hello", &[0xAB; 1024][..]] {
            let e = post(&t, &format!("encrypt/{name}"), json!({"plaintext": b64(payload)})).await;
            let ct = s(&e, "ciphertext");
            assert!(ct.starts_with("vault:v1:"), "{ct}");
            assert_eq!(e["key_version"], 1);
            let d = post(&t, &format!("decrypt/{name}"), json!({"ciphertext": ct})).await;
            assert_eq!(s(&d, "plaintext"), b64(payload));
        }
    }
    // Encrypting with a missing key creates it (Vault's upsert).
    let e = post(&t, "encrypt/fresh", json!({"plaintext": b64(b"x")})).await;
    assert_eq!(e["key_version"], 1);
    let k = ok(&t, Operation::Read, "keys/fresh", json!({})).await;
    assert_eq!(k["type"], "aes256-gcm96");
    let e =
        post(&t, "encrypt/fresh-cc", json!({"plaintext": b64(b"x"), "type": "chacha20-poly1305"}))
            .await;
    assert!(s(&e, "ciphertext").starts_with("vault:v1:"));
    assert_eq!(
        ok(&t, Operation::Read, "keys/fresh-cc", json!({})).await["type"],
        "chacha20-poly1305"
    );
    assert_eq!(
        t.existence_check(&req(Operation::Update, "encrypt/fresh", json!({})), "encrypt/fresh")
            .await
            .unwrap(),
        Some(true)
    );
    assert_eq!(
        t.existence_check(&req(Operation::Update, "encrypt/no", json!({})), "encrypt/no")
            .await
            .unwrap(),
        Some(false)
    );

    // Associated data must match.
    let e =
        post(&t, "encrypt/fresh", json!({"plaintext": b64(b"x"), "associated_data": b64(b"ad")}))
            .await;
    let ct = s(&e, "ciphertext");
    assert_eq!(
        bad(&t, "decrypt/fresh", json!({"ciphertext": ct})).await,
        "cipher: message authentication failed"
    );
    let d =
        post(&t, "decrypt/fresh", json!({"ciphertext": ct, "associated_data": b64(b"ad")})).await;
    assert_eq!(s(&d, "plaintext"), b64(b"x"));
}

#[tokio::test]
async fn encrypt_decrypt_errors() {
    let (t, _) = engine().await;
    post(&t, "keys/k", json!({})).await;
    post(&t, "keys/cc", json!({"type": "chacha20-poly1305"})).await;
    post(&t, "keys/ed", json!({"type": "ed25519"})).await;
    assert_eq!(bad(&t, "encrypt/k", json!({})).await, "missing plaintext to encrypt");
    assert_eq!(
        bad(&t, "encrypt/k", json!({"plaintext": "!!!"})).await,
        "illegal base64 data at input byte 0"
    );
    assert_eq!(
        bad(&t, "encrypt/k", json!({"plaintext": "aGk=", "key_version": 5})).await,
        "requested version for encryption is higher than the latest key version"
    );
    assert_eq!(
        bad(&t, "encrypt/ed", json!({"plaintext": "aGk="})).await,
        "message encryption not supported for key type ed25519"
    );
    assert_eq!(
        bad(&t, "encrypt/k", json!({"batch_input": []})).await,
        "missing batch input to process"
    );
    assert_eq!(
        bad(&t, "encrypt/new-ec", json!({"plaintext": "aGk=", "type": "ecdsa-p256"})).await,
        "key type ecdsa-p256 not supported for this operation"
    );
    assert_eq!(bad(&t, "decrypt/k", json!({})).await, "missing ciphertext to decrypt");
    assert_eq!(
        bad(&t, "decrypt/k", json!({"ciphertext": "garbage"})).await,
        "invalid ciphertext: no prefix"
    );
    assert_eq!(
        bad(&t, "decrypt/k", json!({"ciphertext": "vault:v1"})).await,
        "invalid ciphertext: wrong number of fields"
    );
    assert_eq!(
        bad(&t, "decrypt/k", json!({"ciphertext": "vault:vx:AAAA"})).await,
        "invalid ciphertext: version number could not be decoded"
    );
    assert_eq!(
        bad(&t, "decrypt/k", json!({"ciphertext": "vault:v9:AAAA"})).await,
        "invalid ciphertext: version is too new"
    );
    assert_eq!(
        bad(&t, "decrypt/k", json!({"ciphertext": "vault:v1:!!!"})).await,
        "invalid ciphertext: could not decode base64"
    );
    assert_eq!(
        bad(&t, "decrypt/k", json!({"ciphertext": "vault:v1:AAAA"})).await,
        "invalid ciphertext length"
    );
    assert_eq!(
        bad(&t, "decrypt/nokey", json!({"ciphertext": "vault:v1:AAAA"})).await,
        "encryption key not found"
    );
    let ct = s(&post(&t, "encrypt/cc", json!({"plaintext": "aGk="})).await, "ciphertext");
    let mut raw = b64_decode(&ct["vault:v1:".len()..]).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 1;
    assert_eq!(
        bad(&t, "decrypt/cc", json!({"ciphertext": format!("vault:v1:{}", b64(&raw))})).await,
        "chacha20poly1305: message authentication failed"
    );
    assert!(matches!(
        call(&t, Operation::Update, "encrypt/k", json!({"plaintext": "aGk=", "key_version": "x"})).await,
        Err(Error::BadRequest(m)) if m == "error converting input for field \"key_version\": '' cannot parse value as 'int': strconv.ParseInt: invalid syntax"
    ));
}

#[tokio::test]
async fn batch_encrypt_decrypt_with_partial_failures() {
    let (t, _) = engine().await;
    post(&t, "keys/k", json!({})).await;
    let r = call(
        &t,
        Operation::Update,
        "encrypt/k",
        json!({"batch_input": [
            {"plaintext": "aGVsbG8=", "reference": "a"},
            {"plaintext": "!!", "reference": "b"},
            {"plaintext": ""}
        ]}),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r.status, Some(400));
    let res = r.data.unwrap()["batch_results"].as_array().unwrap().clone();
    assert_eq!(res.len(), 3);
    assert_eq!(res[0]["reference"], "a");
    assert_eq!(res[0]["key_version"], 1);
    assert_eq!(res[1], json!({"error": "illegal base64 data at input byte 0", "reference": "b"}));
    assert!(res[2]["ciphertext"].as_str().unwrap().starts_with("vault:v1:"));

    // All good: 200; partial failures may choose their status.
    let all = post(
        &t,
        "encrypt/k",
        json!({"batch_input": [{"plaintext": "aGk="}, {"plaintext": "aGk="}]}),
    )
    .await;
    let cts: Vec<String> = all["batch_results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ciphertext"].as_str().unwrap().to_string())
        .collect();
    assert_ne!(cts[0], cts[1], "fresh nonce per item");
    let r = call(
        &t,
        Operation::Update,
        "encrypt/k",
        json!({"batch_input": [{"plaintext": "aGk="}, {"plaintext": "!"}], "partial_failure_response_code": 207}),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r.status, Some(207));

    let r = call(
        &t,
        Operation::Update,
        "decrypt/k",
        json!({"batch_input": [{"ciphertext": cts[0], "reference": "x"}, {"ciphertext": "vault:v1:AAAA"}, {"ciphertext": ""}]}),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r.status, Some(400));
    let res = r.data.unwrap()["batch_results"].as_array().unwrap().clone();
    assert_eq!(res[0], json!({"plaintext": "aGk=", "reference": "x"}));
    assert_eq!(
        res[1],
        json!({"plaintext": "", "error": "invalid ciphertext length", "reference": ""})
    );
    assert_eq!(
        res[2],
        json!({"plaintext": "", "error": "missing ciphertext to decrypt", "reference": ""})
    );
    assert!(err(&t, Operation::Update, "decrypt/k", json!({"batch_input": [{}]}))
        .await
        .contains("'[0].ciphertext' missing ciphertext to decrypt"));
    assert_eq!(
        bad(&t, "encrypt/k", json!({"batch_input": [{"plaintext": "aGk=", "context": "YQ=="}, {"plaintext": "aGk="}]})).await,
        "context should be set either in all the request blocks or in none"
    );
}

#[tokio::test]
async fn rotation_min_versions_rewrap_and_cache() {
    let (t, _) = engine().await;
    post(&t, "keys/k", json!({})).await;
    let ct1 = s(&post(&t, "encrypt/k", json!({"plaintext": "aGk="})).await, "ciphertext");
    let rotated = post(&t, "keys/k/rotate", json!({})).await;
    assert_eq!(rotated["latest_version"], 2);
    assert_eq!(rotated["keys"].as_object().unwrap().len(), 2);
    // The cache serves the new version at once.
    let e = post(&t, "encrypt/k", json!({"plaintext": "aGk="})).await;
    assert_eq!(e["key_version"], 2);
    let ct2 = s(&e, "ciphertext");
    assert!(ct2.starts_with("vault:v2:"));
    // Old ciphertexts still decrypt; an explicit old version still encrypts.
    assert_eq!(s(&post(&t, "decrypt/k", json!({"ciphertext": ct1})).await, "plaintext"), "aGk=");
    assert_eq!(
        post(&t, "encrypt/k", json!({"plaintext": "aGk=", "key_version": 1})).await["key_version"],
        1
    );
    // Rewrap moves to the latest version.
    let rw = post(&t, "rewrap/k", json!({"ciphertext": ct1})).await;
    assert_eq!(rw["key_version"], 2);
    assert_eq!(
        s(&post(&t, "decrypt/k", json!({"ciphertext": s(&rw, "ciphertext")})).await, "plaintext"),
        "aGk="
    );
    assert_eq!(bad(&t, "rewrap/k", json!({})).await, "missing ciphertext to decrypt");
    assert_eq!(
        bad(&t, "rewrap/nokey", json!({"ciphertext": ct1})).await,
        "encryption key not found"
    );
    let rb =
        post(&t, "rewrap/k", json!({"batch_input": [{"ciphertext": ct1}, {"ciphertext": "bad"}]}))
            .await;
    assert_eq!(rb["batch_results"][1]["error"], "invalid ciphertext: no prefix");

    // min_decryption_version refuses old ciphertexts and hides old versions.
    let cfg = post(&t, "keys/k/config", json!({"min_decryption_version": 2})).await;
    assert_eq!(cfg["min_decryption_version"], 2);
    assert_eq!(cfg["keys"].as_object().unwrap().keys().collect::<Vec<_>>(), vec!["2"]);
    assert_eq!(bad(&t, "decrypt/k", json!({"ciphertext": ct1})).await, keys::ERR_TOO_OLD);
    assert_eq!(s(&post(&t, "decrypt/k", json!({"ciphertext": ct2})).await, "plaintext"), "aGk=");
    assert_eq!(
        bad(&t, "keys/k/config", json!({"min_decryption_version": 5})).await,
        "cannot set min decryption version of 5, latest key version is 2"
    );
    assert_eq!(
        bad(&t, "keys/k/config", json!({"min_encryption_version": 1})).await,
        "cannot set min encryption/decryption values; min encryption version of 1 must be greater than or equal to min decryption version of 2"
    );
    assert_eq!(
        bad(&t, "keys/nokey/config", json!({})).await,
        "no existing key named nokey could be found"
    );
    assert_eq!(bad(&t, "keys/nokey/rotate", json!({})).await, "key not found");
    assert_eq!(
        bad(&t, "keys/k/config", json!({"deletion_allowed": "maybe"})).await,
        "Field validation failed: error converting input for field \"deletion_allowed\": '' cannot parse value as 'bool': strconv.ParseBool: invalid syntax"
    );
    let warned = call(&t, Operation::Update, "keys/k/config", json!({"min_decryption_version": 0}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(warned.warnings.len(), 1);
    assert_eq!(warned.data.unwrap()["min_decryption_version"], 1);

    post(&t, "keys/k/rotate", json!({})).await;
    post(&t, "keys/k/config", json!({"min_encryption_version": 3, "min_decryption_version": 2}))
        .await;
    assert_eq!(
        bad(&t, "encrypt/k", json!({"plaintext": "aGk=", "key_version": 2})).await,
        "requested version for encryption is less than the minimum encryption key version"
    );

    // A fresh engine on the same storage sees the same state (nothing lives only in the cache).
    let view = t.view.clone();
    let t2 = Transit::new(view);
    let k = ok(&t2, Operation::Read, "keys/k", json!({})).await;
    assert_eq!(k["latest_version"], 3);
    assert_eq!(k["min_encryption_version"], 3);
    assert_eq!(s(&post(&t2, "decrypt/k", json!({"ciphertext": ct2})).await, "plaintext"), "aGk=");
}

#[tokio::test]
async fn derived_keys() {
    let (t, _) = engine().await;
    let k = post(&t, "keys/d", json!({"derived": true})).await;
    assert_eq!(k["derived"], true);
    assert_eq!(k["kdf"], "hkdf_sha256");
    assert_eq!(k["convergent_encryption"], false);
    let (ctx_a, ctx_b) = (b64(b"tenant-a"), b64(b"tenant-b"));
    assert_eq!(bad(&t, "encrypt/d", json!({"plaintext": "aGk="})).await, keys::ERR_MISSING_CONTEXT);
    let ct = s(
        &post(&t, "encrypt/d", json!({"plaintext": "aGk=", "context": ctx_a})).await,
        "ciphertext",
    );
    assert_eq!(
        s(&post(&t, "decrypt/d", json!({"ciphertext": ct, "context": ctx_a})).await, "plaintext"),
        "aGk="
    );
    assert_eq!(
        bad(&t, "decrypt/d", json!({"ciphertext": ct, "context": ctx_b})).await,
        "cipher: message authentication failed"
    );
    assert_eq!(bad(&t, "decrypt/d", json!({"ciphertext": ct})).await, keys::ERR_MISSING_CONTEXT);
    // A context on a plain key is ignored, as in Vault.
    post(&t, "keys/plain", json!({})).await;
    let pct = s(
        &post(&t, "encrypt/plain", json!({"plaintext": "aGk=", "context": ctx_a})).await,
        "ciphertext",
    );
    assert_eq!(
        s(&post(&t, "decrypt/plain", json!({"ciphertext": pct})).await, "plaintext"),
        "aGk="
    );
    // Upsert with a context makes a derived key; batches carry a context per item.
    let b = post(&t, "encrypt/up", json!({"batch_input": [{"plaintext": "aGk=", "context": ctx_a}, {"plaintext": "aGk=", "context": ctx_b}]})).await;
    assert_eq!(ok(&t, Operation::Read, "keys/up", json!({})).await["derived"], true);
    let cts: Vec<&str> = b["batch_results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ciphertext"].as_str().unwrap())
        .collect();
    let d = post(&t, "decrypt/up", json!({"batch_input": [{"ciphertext": cts[0], "context": ctx_a}, {"ciphertext": cts[1], "context": ctx_b}]})).await;
    assert_eq!(
        d["batch_results"],
        json!([{"plaintext": "aGk=", "reference": ""}, {"plaintext": "aGk=", "reference": ""}])
    );
    // Rewrap and datakey use the context too.
    post(&t, "keys/d/rotate", json!({})).await;
    let rw = post(&t, "rewrap/d", json!({"ciphertext": ct, "context": ctx_a})).await;
    assert_eq!(rw["key_version"], 2);
    assert_eq!(
        s(
            &post(&t, "decrypt/d", json!({"ciphertext": s(&rw, "ciphertext"), "context": ctx_a}))
                .await,
            "plaintext"
        ),
        "aGk="
    );
    let dk = post(&t, "datakey/plaintext/d", json!({"context": ctx_b})).await;
    assert_eq!(
        s(
            &post(&t, "decrypt/d", json!({"ciphertext": s(&dk, "ciphertext"), "context": ctx_b}))
                .await,
            "plaintext"
        ),
        s(&dk, "plaintext")
    );
    assert_eq!(bad(&t, "datakey/plaintext/d", json!({})).await, keys::ERR_MISSING_CONTEXT);
}

#[tokio::test]
async fn key_material_is_behind_the_barrier() {
    let (t, backend) = engine().await;
    post(&t, "keys/secretkey", json!({})).await;
    let p = t.policy("secretkey").await.unwrap().unwrap();
    let stored = p.stored.to_bytes().unwrap();
    let text = String::from_utf8_lossy(&stored).to_string();
    let key_b64 = text.split("\"key\":\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    use vaultd_storage::Backend;
    let raw = backend.get("logical/transit-test/policy/secretkey").await.unwrap().unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains(&key_b64));
    assert!(!String::from_utf8_lossy(&raw).contains("aes256"));
}

#[tokio::test]
async fn datakey_and_random() {
    let (t, _) = engine().await;
    post(&t, "keys/k", json!({})).await;
    post(&t, "keys/ed", json!({"type": "ed25519"})).await;
    let d = post(&t, "datakey/plaintext/k", json!({})).await;
    let pt = s(&d, "plaintext");
    assert_eq!(b64_decode(&pt).unwrap().len(), 32);
    assert_eq!(
        s(&post(&t, "decrypt/k", json!({"ciphertext": s(&d, "ciphertext")})).await, "plaintext"),
        pt
    );
    let w = post(&t, "datakey/wrapped/k", json!({"bits": 512})).await;
    assert!(!w.contains_key("plaintext"));
    let inner =
        s(&post(&t, "decrypt/k", json!({"ciphertext": s(&w, "ciphertext")})).await, "plaintext");
    assert_eq!(b64_decode(&inner).unwrap().len(), 64);
    assert_eq!(bad(&t, "datakey/wrapped/k", json!({"bits": 100})).await, "invalid bit length");
    assert_eq!(
        bad(&t, "datakey/bogus/k", json!({})).await,
        "Invalid path, must be 'plaintext' or 'wrapped'"
    );
    assert_eq!(bad(&t, "datakey/wrapped/nokey", json!({})).await, "encryption key not found");
    assert_eq!(
        bad(&t, "datakey/wrapped/ed", json!({})).await,
        "message encryption not supported for key type ed25519"
    );

    assert_eq!(
        b64_decode(&s(&post(&t, "random", json!({})).await, "random_bytes")).unwrap().len(),
        32
    );
    assert_eq!(s(&post(&t, "random/8", json!({"format": "hex"})).await, "random_bytes").len(), 16);
    let seal = call(&t, Operation::Update, "random/seal/4", json!({})).await.unwrap().unwrap();
    assert_eq!(
        seal.warnings,
        vec!["no seal/entropy augmentation available, using platform entropy source"]
    );
    assert_eq!(s(&post(&t, "random/all", json!({"bytes": 3})).await, "random_bytes").len(), 4);
    assert_eq!(
        bad(&t, "random/bogus", json!({})).await,
        "error parsing url-set byte count: strconv.Atoi: parsing \"bogus\": invalid syntax"
    );
    assert_eq!(
        bad(&t, "random/bogus/4", json!({})).await,
        "unsupported entropy source \"bogus\"; must be \"platform\" or \"seal\", or \"all\""
    );
    assert_eq!(bad(&t, "random/0", json!({})).await, "'bytes' cannot be less than 1");
    assert_eq!(
        bad(&t, "random", json!({"bytes": 200000})).await,
        "'bytes' should be less than 131072"
    );
    assert_eq!(
        bad(&t, "random", json!({"format": "x"})).await,
        "unsupported encoding format \"x\"; must be \"hex\" or \"base64\""
    );
}

#[tokio::test]
async fn sign_verify_round_trips() {
    let (t, _) = engine().await;
    let ed = post(&t, "keys/ed", json!({"type": "ed25519"})).await;
    assert_eq!(ed["keys"]["1"]["name"], "ed25519");
    assert_eq!(b64_decode(ed["keys"]["1"]["public_key"].as_str().unwrap()).unwrap().len(), 32);
    assert_eq!(ed["supports_signing"], true);
    let ec = post(&t, "keys/ec", json!({"type": "ecdsa-p256"})).await;
    assert_eq!(ec["keys"]["1"]["name"], "P-256");
    assert!(ec["keys"]["1"]["public_key"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----\n"));
    assert_eq!(ec["supports_derivation"], false);
    let input = b64(b"hello");
    for (key, path_alg) in
        [("ed", ""), ("ec", ""), ("ec", "/sha2-512"), ("ec", "/sha1"), ("ec", "/sha3-256")]
    {
        let sig = post(&t, &format!("sign/{key}{path_alg}"), json!({"input": input})).await;
        assert_eq!(sig["key_version"], 1);
        let sig = s(&sig, "signature");
        assert!(sig.starts_with("vault:v1:"));
        let v =
            post(&t, &format!("verify/{key}{path_alg}"), json!({"input": input, "signature": sig}))
                .await;
        assert_eq!(v["valid"], true, "{key}{path_alg}");
        let v = post(
            &t,
            &format!("verify/{key}{path_alg}"),
            json!({"input": b64(b"other"), "signature": sig}),
        )
        .await;
        assert_eq!(v["valid"], false, "{key}{path_alg}");
    }
    // Prehashed ECDSA verifies against the hashed input and vice versa.
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"hello");
    let sig = s(
        &post(&t, "sign/ec", json!({"input": b64(digest.as_ref()), "prehashed": true})).await,
        "signature",
    );
    assert_eq!(
        post(&t, "verify/ec", json!({"input": input, "signature": sig})).await["valid"],
        true
    );
    // JWS marshaling: r||s, base64url.
    let sig = s(
        &post(&t, "sign/ec", json!({"input": input, "marshaling_algorithm": "jws"})).await,
        "signature",
    );
    assert_eq!(
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &sig[9..])
            .unwrap()
            .len(),
        64
    );
    assert_eq!(
        post(
            &t,
            "verify/ec",
            json!({"input": input, "signature": sig, "marshaling_algorithm": "jws"})
        )
        .await["valid"],
        true
    );
    // After rotation old signatures verify until min_decryption_version moves past them.
    let old = s(&post(&t, "sign/ed", json!({"input": input})).await, "signature");
    post(&t, "keys/ed/rotate", json!({})).await;
    assert!(s(&post(&t, "sign/ed", json!({"input": input})).await, "signature")
        .starts_with("vault:v2:"));
    assert_eq!(
        post(&t, "verify/ed", json!({"input": input, "signature": old})).await["valid"],
        true
    );
    post(&t, "keys/ed/config", json!({"min_decryption_version": 2})).await;
    assert_eq!(
        bad(&t, "verify/ed", json!({"input": input, "signature": old})).await,
        keys::ERR_TOO_OLD
    );
}

#[tokio::test]
async fn sign_verify_errors_and_batches() {
    let (t, _) = engine().await;
    post(&t, "keys/ed", json!({"type": "ed25519"})).await;
    post(&t, "keys/ec", json!({"type": "ecdsa-p256"})).await;
    post(&t, "keys/k", json!({})).await;
    let input = b64(b"hello");
    assert_eq!(
        bad(&t, "sign/ec", json!({"input": input, "hash_algorithm": "md5"})).await,
        "invalid hash algorithm \"md5\""
    );
    assert_eq!(
        bad(&t, "sign/ec", json!({"input": "!!"})).await,
        "unable to decode input as base64: illegal base64 data at input byte 0"
    );
    assert_eq!(
        bad(&t, "sign/k", json!({"input": input})).await,
        "key type aes256-gcm96 does not support signing"
    );
    assert_eq!(bad(&t, "sign/nokey", json!({"input": input})).await, "signing key not found");
    assert_eq!(
        err(&t, Operation::Update, "sign/ed", json!({"input": input, "key_version": 3})).await,
        "1 error occurred:\n\t* requested version for signing is higher than the latest key version\n\n"
    );
    // An empty input is signed, as Vault does.
    assert!(post(&t, "sign/ec", json!({})).await.contains_key("signature"));
    assert_eq!(
        bad(&t, "verify/ed", json!({"input": input})).await,
        "neither a 'signature' nor an 'hmac' were given to verify"
    );
    assert_eq!(
        post(&t, "verify/ed", json!({"input": input, "signature": "vault:v1:AAAA"})).await["valid"],
        false
    );
    assert_eq!(
        bad(&t, "verify/ec", json!({"input": input, "signature": "vault:v1:AAAA"})).await,
        "supplied signature is invalid"
    );
    assert_eq!(
        bad(&t, "verify/ec", json!({"input": input, "signature": "vault:v1:!!"})).await,
        "invalid base64 signature value"
    );
    assert_eq!(
        bad(&t, "verify/ec", json!({"input": input, "signature": "bad"})).await,
        "invalid signature: no prefix"
    );
    assert_eq!(
        bad(&t, "verify/nokey", json!({"input": input, "signature": "vault:v1:AAAA"})).await,
        "signature verification key not found"
    );
    assert_eq!(
        bad(&t, "verify/k", json!({"input": input, "signature": "vault:v1:AAAA"})).await,
        "key type aes256-gcm96 does not support verification"
    );

    let r = post(
        &t,
        "sign/ec",
        json!({"batch_input": [{"input": input, "reference": "r1"}, {"input": "!!"}, {}]}),
    )
    .await;
    let res = r["batch_results"].as_array().unwrap();
    assert_eq!(res[0]["reference"], "r1");
    assert_eq!(res[0]["key_version"], 1);
    assert_eq!(
        res[1],
        json!({"key_version": 0, "error": "unable to decode input as base64: illegal base64 data at input byte 0", "reference": ""})
    );
    assert_eq!(res[2], json!({"key_version": 0, "error": "missing input", "reference": ""}));
    let sig = res[0]["signature"].as_str().unwrap();
    let v = post(&t, "verify/ec", json!({"batch_input": [{"input": input, "signature": sig}, {"input": b64(b"x"), "signature": sig}]})).await;
    assert_eq!(
        v["batch_results"],
        json!([{"valid": true, "reference": ""}, {"valid": false, "reference": ""}])
    );
    assert_eq!(
        bad(&t, "verify/ec", json!({"batch_input": [{"input": input}]})).await,
        "no batch_input elements have 'signature' or 'hmac'"
    );
    assert_eq!(
        bad(
            &t,
            "verify/ec",
            json!({"batch_input": [{"input": input, "signature": sig}, {"input": input}]})
        )
        .await,
        "some elements of batch_input are missing 'signature'"
    );
    assert_eq!(
        bad(&t, "verify/ec", json!({"batch_input": [{"input": input, "signature": sig}, {"input": input, "hmac": "x"}]})).await,
        "elements of batch_input must all provide 'signature' or all provide 'hmac'"
    );
}

#[tokio::test]
async fn hmac_and_verify() {
    let (t, _) = engine().await;
    post(&t, "keys/k", json!({})).await;
    post(&t, "keys/ed", json!({"type": "ed25519"})).await;
    let input = b64(b"hello");
    for (path, len) in [("hmac/k", 32), ("hmac/k/sha2-512", 64), ("hmac/ed", 32)] {
        let h = s(&post(&t, path, json!({"input": input})).await, "hmac");
        assert!(h.starts_with("vault:v1:"));
        assert_eq!(b64_decode(&h[9..]).unwrap().len(), len);
        let verify_path = path.replacen("hmac", "verify", 1);
        assert_eq!(
            post(&t, &verify_path, json!({"input": input, "hmac": h})).await["valid"],
            true,
            "{path}"
        );
        assert_eq!(
            post(&t, &verify_path, json!({"input": b64(b"x"), "hmac": h})).await["valid"],
            false
        );
    }
    // The HMAC matches HMAC-SHA256 under the version's HMAC key, not the encryption key.
    let h = s(&post(&t, "hmac/k", json!({"input": input, "algorithm": "sha2-384"})).await, "hmac");
    assert_eq!(b64_decode(&h[9..]).unwrap().len(), 48);
    assert_eq!(
        bad(&t, "hmac/k", json!({"input": input, "algorithm": "bogus"})).await,
        "unsupported algorithm '\\x00'"
    );
    assert_eq!(bad(&t, "hmac/k", json!({})).await, "missing input for HMAC");
    assert_eq!(
        bad(&t, "hmac/k", json!({"input": input, "key_version": 9})).await,
        "key version does not exist; latest key version is 1"
    );
    assert_eq!(bad(&t, "hmac/nokey", json!({"input": input})).await, "encryption key not found");
    post(&t, "keys/k/rotate", json!({})).await;
    post(&t, "keys/k/config", json!({"min_decryption_version": 2})).await;
    assert_eq!(
        bad(&t, "hmac/k", json!({"input": input, "key_version": 1})).await,
        "no such key version"
    );
    assert_eq!(
        bad(&t, "verify/k", json!({"input": input, "hmac": "vault:v1:AAAA"})).await,
        "cannot verify HMAC: version is too old (disallowed by policy)"
    );
    assert_eq!(
        bad(&t, "verify/k", json!({"input": input, "hmac": "xx"})).await,
        "invalid HMAC to verify: no prefix"
    );
    assert_eq!(
        post(&t, "verify/k", json!({"input": input, "hmac": "vault:v2:AAAA"})).await["valid"],
        false
    );

    let b = post(
        &t,
        "hmac/k",
        json!({"batch_input": [{"input": input, "reference": "a"}, {"input": "!"}, {}]}),
    )
    .await;
    let res = b["batch_results"].as_array().unwrap();
    assert!(res[0]["hmac"].as_str().unwrap().starts_with("vault:v2:"));
    assert_eq!(
        res[1]["error"],
        "unable to decode input as base64: illegal base64 data at input byte 0"
    );
    assert_eq!(res[2]["error"], "missing input for HMAC");
    let good = res[0]["hmac"].as_str().unwrap();
    let v = post(&t, "verify/k", json!({"batch_input": [{"input": input, "hmac": good}, {"input": b64(b"x"), "hmac": good}]})).await;
    assert_eq!(v["batch_results"], json!([{"valid": true, "reference": ""}, {"reference": ""}]));
}

/// Encrypt of a 1 KiB payload through `handle`, µs/op. Run with
/// `cargo test --release -p vaultd transit::tests::bench_encrypt_1k -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn bench_encrypt_1k() {
    let (t, _) = engine().await;
    post(&t, "keys/bench", json!({})).await;
    let body = json!({"plaintext": b64(&[0x5a; 1024])});
    let r = req(Operation::Update, "encrypt/bench", body);
    for _ in 0..2_000 {
        t.handle(&r, "encrypt/bench").await.unwrap();
    }
    let n = 100_000;
    let start = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(t.handle(&r, "encrypt/bench").await.unwrap());
    }
    let per = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!("transit encrypt 1 KiB via handle: {per:.2} µs/op ({n} ops)");
}
