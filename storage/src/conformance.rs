//! The checks every [`Backend`] must pass, so that the in-memory, sled and Raft backends cannot
//! drift apart in the semantics the rest of vaultd relies on.
//!
//! [`exercise_backend`] and [`exercise_list_prefix`] port Vault's `ExerciseBackend` and
//! `ExerciseBackend_ListPrefix` (`sdk/physical/testing.go`, identical in HashiCorp Vault and
//! OpenBao) without the `ListPage` pagination part, which vaultd's trait does not have.
//! [`exercise_transactions`] and [`exercise_limits`] check the parts of our contract that Vault
//! tests elsewhere (all-or-nothing transactions; `ErrValueTooLarge` with no partial write, as in
//! Vault's `TestRaft_Backend_LargeValue`).
//!
//! The functions panic with a message naming the failed step, like Go's `t.Fatalf`: they are meant
//! to be called from tests, including other crates' tests, which is why they are compiled into the
//! library rather than behind `#[cfg(test)]`.
//!
//! Each function expects no keys under the paths it uses (`exercise_backend` expects an empty
//! backend, as Vault's does) and deletes what it wrote, so they can run one after another on the
//! same backend; [`exercise_all`] does exactly that.

use crate::{Backend, Error, TxnOp, MAX_KEY_LEN, MAX_VALUE_LEN};

/// Runs every check in this module, in order, on one backend that starts empty.
pub async fn exercise_all(b: &dyn Backend) {
    exercise_backend(b).await;
    exercise_list_prefix(b).await;
    exercise_transactions(b).await;
    exercise_limits(b).await;
}

/// Unwraps a backend result or panics with the step that failed.
fn ok<T>(res: crate::Result<T>, step: &str) -> T {
    match res {
        Ok(v) => v,
        Err(e) => panic!("conformance: {step}: unexpected error: {e}"),
    }
}

async fn put(b: &dyn Backend, key: &str, value: &[u8], step: &str) {
    ok(b.put(key, value.to_vec()).await, &format!("{step} (put {key:?})"));
}

async fn delete(b: &dyn Backend, key: &str, step: &str) {
    ok(b.delete(key).await, &format!("{step} (delete {key:?})"));
}

async fn assert_get(b: &dyn Backend, key: &str, expected: Option<&[u8]>, step: &str) {
    let got = ok(b.get(key).await, &format!("{step} (get {key:?})"));
    assert_eq!(
        got.as_deref(),
        expected,
        "conformance: {step}: get {key:?} returned {:?}, expected {:?}",
        got.as_deref().map(String::from_utf8_lossy),
        expected.map(String::from_utf8_lossy),
    );
}

async fn assert_list(b: &dyn Backend, prefix: &str, expected: &[&str], step: &str) {
    let got = ok(b.list(prefix).await, &format!("{step} (list {prefix:?})"));
    assert_eq!(
        got, expected,
        "conformance: {step}: list {prefix:?} returned {got:?}, expected {expected:?}"
    );
}

/// Port of Vault's `ExerciseBackend`: basic get/put/delete and one-level listing, including the
/// regressions Vault pinned down (repeated puts, GH-189; phantom prefixes after deleting a deeply
/// nested key; a root listing that went empty after deleting one of two deep siblings).
pub async fn exercise_backend(b: &dyn Backend) {
    // Initial list should be empty.
    assert_list(b, "", &[], "initial list of an empty backend").await;

    // Delete should work if the key does not exist.
    delete(b, "foo", "idempotent delete of a missing key").await;

    // Get should not fail, but be nil.
    assert_get(b, "foo", None, "initial get of a missing key").await;

    // Make an entry; get should round-trip it.
    put(b, "foo", b"test", "put").await;
    assert_get(b, "foo", Some(b"test"), "get after put").await;

    // List should not be empty.
    assert_list(b, "", &["foo"], "list after put").await;

    // Delete should work; list is empty again and get is nil again.
    delete(b, "foo", "delete").await;
    assert_list(b, "", &[], "list after delete").await;
    assert_get(b, "foo", None, "get after delete").await;

    // Multiple puts of the same key should work (Vault GH-189).
    put(b, "foo", b"test", "multi put 1").await;
    put(b, "foo", b"test", "multi put 2").await;
    assert_get(b, "foo", Some(b"test"), "get after multi put").await;

    // A nested entry.
    put(b, "foo/bar", b"baz", "nested put").await;
    assert_get(b, "foo/bar", Some(b"baz"), "get of nested key").await;

    // List should have both a key and a subtree.
    assert_list(b, "", &["foo", "foo/"], "list with a key and a subtree of the same name").await;

    // Deleting a key that has children must not touch the children.
    delete(b, "foo", "delete of a key with children").await;
    assert_get(b, "foo/bar", Some(b"baz"), "child after deleting its parent key").await;

    // Removal of a deeply nested key should leave no artifacts (no phantom `nested1/`).
    put(b, "foo/nested1/nested2/nested3", b"baz", "deep nested put").await;
    delete(b, "foo/nested1/nested2/nested3", "delete of deep nested key").await;
    assert_list(b, "foo/", &["bar"], "list after removing a deep nested key").await;

    // A second nested entry, to test prefix removal.
    put(b, "foo/zip", b"zap", "second nested put").await;

    // Deleting one of two children keeps the prefix.
    delete(b, "foo/bar", "delete of one of two children").await;
    assert_list(b, "", &["foo/"], "list after deleting one of two children").await;

    // Deleting the last child removes the prefix.
    delete(b, "foo/zip", "delete of the last child").await;
    assert_list(b, "", &[], "list after deleting the last child").await;

    // With an empty root, adding and removing deep nested values must not break listing.
    put(b, "foo/nested1/nested2/value1", b"baz", "deep nested sibling 1").await;
    put(b, "foo/nested1/nested2/value2", b"baz", "deep nested sibling 2").await;
    delete(b, "foo/nested1/nested2/value2", "delete of deep nested sibling 2").await;
    let root = ok(b.list("").await, "list of root after deleting one deep sibling");
    if root.is_empty() {
        let nested = ok(b.list("foo/nested1/").await, "list of foo/nested1/");
        panic!(
            "conformance: root listing is empty after deleting one of two deep nested values, \
             expected [\"foo/\"]; foo/nested1/ lists {nested:?}"
        );
    }
    assert_list(b, "", &["foo/"], "list of root after deleting one deep sibling").await;
    assert_list(b, "foo/nested1/nested2/", &["value1"], "list of the deep level").await;

    // Clean up the listing-bug value.
    delete(b, "foo/nested1/nested2/value1", "delete of deep nested sibling 1").await;
    assert_list(b, "", &[], "list after deleting every deep value").await;

    // Create items in one path incrementally; the listing follows every step. (Vault also pages
    // through each state with ListPage; our trait has no pagination.)
    let mut created: Vec<String> = Vec::new();
    for i in 0..10 {
        let name = format!("key-{i}");
        put(b, &format!("foo/{name}"), b"baz", "incremental put").await;
        created.push(name);
        let expected: Vec<&str> = created.iter().map(String::as_str).collect();
        assert_list(b, "foo/", &expected, &format!("incremental list after {} puts", i + 1)).await;
    }
    for name in &created {
        delete(b, &format!("foo/{name}"), "incremental cleanup").await;
    }
    assert_list(b, "", &[], "list after incremental cleanup").await;
}

/// Port of Vault's `ExerciseBackend_ListPrefix`: a key, a key below it, and one below that.
pub async fn exercise_list_prefix(b: &dyn Backend) {
    put(b, "foo", b"test", "list prefix: entry 1").await;
    put(b, "foo/bar", b"test", "list prefix: entry 2").await;
    put(b, "foo/bar/baz", b"test", "list prefix: entry 3").await;

    assert_list(b, "", &["foo", "foo/"], "list prefix: scan the root").await;
    assert_list(b, "foo/", &["bar", "bar/"], "list prefix: scan foo/").await;
    assert_list(b, "foo/bar/", &["baz"], "list prefix: scan foo/bar/").await;

    // Vault cleans up in a defer; we clean up and check, so later checks start empty.
    for key in ["foo", "foo/bar", "foo/bar/baz"] {
        delete(b, key, "list prefix: cleanup").await;
    }
    assert_list(b, "", &[], "list prefix: list after cleanup").await;
}

fn put_op(key: &str, value: &[u8]) -> TxnOp {
    TxnOp::Put { key: key.to_string(), value: value.to_vec() }
}

fn delete_op(key: &str) -> TxnOp {
    TxnOp::Delete { key: key.to_string() }
}

/// Transactions apply every operation, in order, or none of them.
pub async fn exercise_transactions(b: &dyn Backend) {
    const P: &str = "conformance-txn/";

    // An empty transaction is a no-op, not an error.
    ok(b.transaction(Vec::new()).await, "empty transaction");

    put(b, &format!("{P}old"), b"old", "txn setup").await;
    put(b, &format!("{P}keep"), b"keep", "txn setup").await;

    // Puts and deletes together: all of them take effect.
    let ops = vec![
        put_op(&format!("{P}a"), b"1"),
        put_op(&format!("{P}dir/b"), b"2"),
        delete_op(&format!("{P}old")),
        put_op(&format!("{P}keep"), b"overwritten"),
        delete_op(&format!("{P}never-existed")),
        // Operations on one key apply in order: the last one wins.
        put_op(&format!("{P}put-then-delete"), b"x"),
        delete_op(&format!("{P}put-then-delete")),
        delete_op(&format!("{P}delete-then-put")),
        put_op(&format!("{P}delete-then-put"), b"y"),
        put_op(&format!("{P}twice"), b"first"),
        put_op(&format!("{P}twice"), b"second"),
    ];
    ok(b.transaction(ops).await, "transaction of puts and deletes");
    assert_get(b, &format!("{P}a"), Some(b"1"), "txn put").await;
    assert_get(b, &format!("{P}dir/b"), Some(b"2"), "txn nested put").await;
    assert_get(b, &format!("{P}old"), None, "txn delete").await;
    assert_get(b, &format!("{P}keep"), Some(b"overwritten"), "txn overwrite").await;
    assert_get(b, &format!("{P}never-existed"), None, "txn delete of a missing key").await;
    assert_get(b, &format!("{P}put-then-delete"), None, "txn put then delete of one key").await;
    assert_get(b, &format!("{P}delete-then-put"), Some(b"y"), "txn delete then put of one key")
        .await;
    assert_get(b, &format!("{P}twice"), Some(b"second"), "txn two puts of one key").await;
    assert_list(b, P, &["a", "delete-then-put", "dir/", "keep", "twice"], "list after transaction")
        .await;

    // A transaction with one invalid operation applies nothing, wherever the bad op sits.
    let before = snapshot(b, P, &["a", "dir/b", "keep", "delete-then-put", "twice", "new"]).await;
    let too_big = vec![0u8; MAX_VALUE_LEN + 1];
    let cases: Vec<(&str, Vec<TxnOp>)> = vec![
        (
            "empty key last",
            vec![put_op(&format!("{P}new"), b"n"), delete_op(&format!("{P}a")), put_op("", b"v")],
        ),
        ("empty key first", vec![put_op("", b"v"), put_op(&format!("{P}new"), b"n")]),
        ("delete of an empty key", vec![put_op(&format!("{P}new"), b"n"), delete_op("")]),
        (
            "oversized value",
            vec![
                put_op(&format!("{P}new"), b"n"),
                delete_op(&format!("{P}keep")),
                put_op(&format!("{P}twice"), &too_big),
            ],
        ),
        (
            "oversized key",
            vec![put_op(&format!("{P}new"), b"n"), put_op(&"k".repeat(MAX_KEY_LEN + 1), b"v")],
        ),
    ];
    for (name, ops) in cases {
        match b.transaction(ops).await {
            Err(Error::InvalidKey(_)) | Err(Error::ValueTooLarge { .. }) => {}
            Err(e) => {
                panic!("conformance: invalid transaction ({name}) failed with the wrong error: {e}")
            }
            Ok(()) => panic!("conformance: invalid transaction ({name}) was accepted"),
        }
        let after =
            snapshot(b, P, &["a", "dir/b", "keep", "delete-then-put", "twice", "new"]).await;
        assert_eq!(before, after, "conformance: invalid transaction ({name}) changed the store");
    }

    // Clean up through a transaction too.
    let cleanup = ["a", "dir/b", "keep", "delete-then-put", "twice"]
        .iter()
        .map(|k| delete_op(&format!("{P}{k}")))
        .collect();
    ok(b.transaction(cleanup).await, "transaction cleanup");
    assert_list(b, P, &[], "list after transaction cleanup").await;
}

/// The values and listing under `prefix`, to compare a store before and after a rejected write.
async fn snapshot(
    b: &dyn Backend,
    prefix: &str,
    keys: &[&str],
) -> (Vec<String>, Vec<Option<Vec<u8>>>) {
    let list = ok(b.list(prefix).await, "snapshot list");
    let mut values = Vec::new();
    for k in keys {
        values.push(ok(b.get(&format!("{prefix}{k}")).await, "snapshot get"));
    }
    (list, values)
}

/// Key and value limits: bad writes are rejected with the right error and write nothing; values and
/// keys exactly at the limits are accepted.
pub async fn exercise_limits(b: &dyn Backend) {
    const P: &str = "conformance-limits/";

    match b.put("", b"v".to_vec()).await {
        Err(Error::InvalidKey(_)) => {}
        other => panic!("conformance: put with an empty key: expected InvalidKey, got {other:?}"),
    }

    let big_key = format!("{P}big");
    match b.put(&big_key, vec![7u8; MAX_VALUE_LEN + 1]).await {
        Err(Error::ValueTooLarge { key, max }) => {
            assert_eq!(key, big_key, "conformance: ValueTooLarge names the wrong key");
            assert_eq!(max, MAX_VALUE_LEN, "conformance: ValueTooLarge reports the wrong limit");
        }
        other => panic!(
            "conformance: put of {} bytes: expected ValueTooLarge, got {other:?}",
            MAX_VALUE_LEN + 1
        ),
    }
    assert_get(b, &big_key, None, "get after a rejected oversized put").await;

    let long_key = format!("{P}{}", "k".repeat(MAX_KEY_LEN));
    match b.put(&long_key, b"v".to_vec()).await {
        Err(Error::InvalidKey(_)) => {}
        other => panic!(
            "conformance: put with a {}-byte key: expected InvalidKey, got {other:?}",
            long_key.len()
        ),
    }

    // Nothing was written by any rejected put.
    assert_list(b, P, &[], "list after rejected puts").await;

    // Exactly at the limits is fine, and round-trips byte for byte. (A 1 MiB value is also large
    // enough to take sled's out-of-log blob path.)
    let max_value: Vec<u8> = (0..MAX_VALUE_LEN).map(|i| (i % 251) as u8).collect();
    put(b, &big_key, &max_value, "put of a value of exactly MAX_VALUE_LEN").await;
    let got = ok(b.get(&big_key).await, "get of a MAX_VALUE_LEN value");
    assert!(
        got.as_deref() == Some(&max_value[..]),
        "conformance: MAX_VALUE_LEN value did not round-trip"
    );

    let max_key = format!("{P}{}", "k".repeat(MAX_KEY_LEN - P.len()));
    put(b, &max_key, b"v", "put with a key of exactly MAX_KEY_LEN").await;
    assert_get(b, &max_key, Some(b"v"), "get with a key of exactly MAX_KEY_LEN").await;

    // A rejected overwrite leaves the old value in place.
    match b.put(&big_key, vec![1u8; MAX_VALUE_LEN + 1]).await {
        Err(Error::ValueTooLarge { .. }) => {}
        other => panic!("conformance: oversized overwrite: expected ValueTooLarge, got {other:?}"),
    }
    let got = ok(b.get(&big_key).await, "get after a rejected overwrite");
    assert!(
        got.as_deref() == Some(&max_value[..]),
        "conformance: a rejected overwrite changed the value"
    );

    delete(b, &big_key, "limits cleanup").await;
    delete(b, &max_key, "limits cleanup").await;
    assert_list(b, P, &[], "list after limits cleanup").await;
}

/// The suite must fail on broken backends, or a passing run proves nothing.
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;

    use crate::inmem::InmemBackend;
    use crate::{validate_key, Backend, Result, TxnOp};

    #[derive(Clone, Copy, Debug)]
    enum Fault {
        /// `list` returns whole keys below the prefix instead of one level.
        ListsWholeKeys,
        /// `delete` of a key also deletes its children.
        DeleteRemovesChildren,
        /// `transaction` applies operations one by one and stops at the first invalid one.
        TxnNotAtomic,
        /// `put` of an oversized value writes nothing but reports success.
        SwallowsTooLarge,
        /// `get` of a missing key is an error.
        MissingIsError,
    }

    struct Faulty {
        inner: InmemBackend,
        fault: Fault,
    }

    #[async_trait]
    impl Backend for Faulty {
        async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
            match (self.fault, self.inner.get(key).await?) {
                (Fault::MissingIsError, None) => Err(crate::Error::Io("not found".into())),
                (_, v) => Ok(v),
            }
        }
        async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
            if let Fault::SwallowsTooLarge = self.fault {
                validate_key(key)?;
                return self.inner.put(key, value).await.or(Ok(()));
            }
            self.inner.put(key, value).await
        }
        async fn delete(&self, key: &str) -> Result<()> {
            if let Fault::DeleteRemovesChildren = self.fault {
                for child in self.inner.list(&format!("{key}/")).await? {
                    self.inner.delete(&format!("{key}/{child}")).await?;
                }
            }
            self.inner.delete(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<String>> {
            let Fault::ListsWholeKeys = self.fault else { return self.inner.list(prefix).await };
            // Walk the tree and return every key below `prefix`, flattened.
            let mut out = Vec::new();
            let mut todo = vec![prefix.to_string()];
            while let Some(p) = todo.pop() {
                for child in self.inner.list(&p).await? {
                    let full = format!("{p}{child}");
                    if child.ends_with('/') {
                        todo.push(full);
                    } else {
                        out.push(full[prefix.len()..].to_string());
                    }
                }
            }
            out.sort();
            Ok(out)
        }
        async fn transaction(&self, ops: Vec<TxnOp>) -> Result<()> {
            let Fault::TxnNotAtomic = self.fault else { return self.inner.transaction(ops).await };
            for op in ops {
                self.inner.transaction(vec![op]).await?;
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn suite_catches_broken_backends() {
        for fault in [
            Fault::ListsWholeKeys,
            Fault::DeleteRemovesChildren,
            Fault::TxnNotAtomic,
            Fault::SwallowsTooLarge,
            Fault::MissingIsError,
        ] {
            let b = Arc::new(Faulty { inner: InmemBackend::new(), fault });
            // Run on a task so the suite's panic is caught as a JoinError.
            let res = tokio::spawn(async move { super::exercise_all(&*b).await }).await;
            assert!(res.is_err_and(|e| e.is_panic()), "the suite passed a backend with {fault:?}");
        }
    }
}
