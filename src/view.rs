//! A prefixed window onto the barrier: each mount, and each core subsystem, sees only its own
//! part of the keyspace. Backends cannot name a key outside their prefix, so a bug in one engine
//! cannot read or overwrite another's data or the keyring.

use std::sync::Arc;

use crate::barrier::{Barrier, BarrierOp};
use crate::error::{Error, Result};

#[derive(Clone)]
pub struct View {
    barrier: Arc<Barrier>,
    prefix: String,
}

impl View {
    pub fn new(barrier: Arc<Barrier>, prefix: impl Into<String>) -> Self {
        View { barrier, prefix: prefix.into() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A view on a sub-prefix of this one.
    pub fn sub(&self, prefix: &str) -> View {
        View { barrier: self.barrier.clone(), prefix: format!("{}{}", self.prefix, prefix) }
    }

    fn full(&self, key: &str) -> Result<String> {
        // A relative key never climbs out of the view: Vault rejects the same paths.
        if key.split('/').any(|seg| seg == ".." || seg == ".") {
            return Err(Error::bad_request("invalid key: path segments '.' and '..' are not allowed"));
        }
        Ok(format!("{}{}", self.prefix, key))
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.barrier.get(&self.full(key)?).await?)
    }

    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get(key).await? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::internal(format!("corrupt entry at {}{key}: {e}", self.prefix))),
        }
    }

    pub async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        Ok(self.barrier.put(&self.full(key)?, value).await?)
    }

    pub async fn put_json<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value)?;
        self.put(key, &bytes).await
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        Ok(self.barrier.delete(&self.full(key)?).await?)
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self.barrier.list(&self.full(prefix)?).await?)
    }

    /// Applies puts and deletes atomically (one Raft entry with integrated storage).
    pub async fn transaction(&self, ops: Vec<ViewOp>) -> Result<()> {
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            out.push(match op {
                ViewOp::Put(key, value) => BarrierOp::Put { path: self.full(&key)?, plaintext: value },
                ViewOp::Delete(key) => BarrierOp::Delete { path: self.full(&key)? },
            });
        }
        Ok(self.barrier.transaction(out).await?)
    }

    /// Every key below `prefix`, recursively. Bounded by `limit` so a huge tree cannot exhaust
    /// memory; callers that may exceed it must page.
    pub async fn list_recursive(&self, prefix: &str, limit: usize) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut pending = vec![prefix.to_string()];
        while let Some(dir) = pending.pop() {
            for child in self.list(&dir).await? {
                let full = format!("{dir}{child}");
                if child.ends_with('/') {
                    pending.push(full);
                } else {
                    out.push(full);
                }
                if out.len() + pending.len() > limit {
                    return Err(Error::internal(format!("more than {limit} keys below {prefix}")));
                }
            }
        }
        Ok(out)
    }
}

pub enum ViewOp {
    Put(String, Vec<u8>),
    Delete(String),
}
