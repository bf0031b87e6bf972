//! vaultd: a secrets server that speaks Vault's HTTP API, with integrated Raft storage.
//!
//! See ARCHITECTURE.md for the map. The request path is
//! `http -> request -> core (token, policy) -> router -> engine (kv) -> view -> barrier ->
//! storage backend -> raft`.

pub mod barrier;
pub mod cli;
pub mod config;
pub mod credential;
pub mod core;
pub mod error;
pub mod etcd_storage;
pub mod forwarding;
pub mod ha;
pub mod http;
pub mod kv;
pub mod mounts;
pub mod policy;
pub mod policy_store;
pub mod raft_join;
pub mod read_only;
pub mod request;
pub mod router;
pub mod seal;
pub mod sys;
pub mod sys_raft;
pub mod sys_snapshot;
pub mod token;
pub mod token_auth;
pub mod transit;
pub mod view;

/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The Vault API level vaultd implements, reported as `version` by seal-status and health so
/// that clients which gate features on the server version (Terraform's provider, the CLIs) treat
/// vaultd as a current server. The build metadata names vaultd.
pub const API_VERSION: &str = concat!("2.7.2+vaultd.", env!("CARGO_PKG_VERSION"));
pub const BUILD_DATE: &str = "2026-11-24T00:00:00Z";
