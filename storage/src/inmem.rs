//! `storage "inmem"`: a sorted map in memory. Nothing survives the process.

use std::collections::BTreeMap;
use std::sync::RwLock;

use async_trait::async_trait;

use crate::{list_children, validate_key, validate_put, Backend, Error, Result, TxnOp};

#[derive(Default)]
pub struct InmemBackend {
    map: RwLock<BTreeMap<String, Vec<u8>>>,
}

impl InmemBackend {
    pub fn new() -> Self {
        Self::default()
    }
}

fn poisoned() -> Error {
    Error::Io("in-memory store lock poisoned".into())
}

#[async_trait]
impl Backend for InmemBackend {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        validate_key(key)?;
        Ok(self.map.read().map_err(|_| poisoned())?.get(key).cloned())
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<()> {
        validate_put(key, &value)?;
        self.map.write().map_err(|_| poisoned())?.insert(key.to_string(), value);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        self.map.write().map_err(|_| poisoned())?.remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let map = self.map.read().map_err(|_| poisoned())?;
        let keys = map
            .range(prefix.to_string()..)
            .map(|(k, _)| k.as_str())
            .take_while(|k| k.starts_with(prefix));
        Ok(list_children(prefix, keys))
    }

    async fn transaction(&self, ops: Vec<TxnOp>) -> Result<()> {
        for op in &ops {
            match op {
                TxnOp::Put { key, value } => validate_put(key, value)?,
                TxnOp::Delete { key } => validate_key(key)?,
            }
        }
        let mut map = self.map.write().map_err(|_| poisoned())?;
        for op in ops {
            match op {
                TxnOp::Put { key, value } => {
                    map.insert(key, value);
                }
                TxnOp::Delete { key } => {
                    map.remove(&key);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::InmemBackend;
    use crate::conformance;

    #[tokio::test]
    async fn exercise_backend() {
        conformance::exercise_backend(&InmemBackend::new()).await;
    }

    #[tokio::test]
    async fn exercise_list_prefix() {
        conformance::exercise_list_prefix(&InmemBackend::new()).await;
    }

    #[tokio::test]
    async fn exercise_transactions() {
        conformance::exercise_transactions(&InmemBackend::new()).await;
    }

    #[tokio::test]
    async fn exercise_limits() {
        conformance::exercise_limits(&InmemBackend::new()).await;
    }

    /// All checks in sequence on one backend: each must leave the store as it found it.
    #[tokio::test]
    async fn exercise_all() {
        conformance::exercise_all(&InmemBackend::new()).await;
    }
}
