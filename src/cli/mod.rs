//! The `vaultd` command line: `server`, and the client commands (`operator`, `status`, `kv`)
//! that talk to a server over its HTTP API, as the `vault` CLI does.
//!
//! Vault's CLI uses Go's flag syntax (`-key-shares=3`, single dash). clap wants `--key-shares`,
//! so [`normalize_args`] rewrites single-dash long flags before parsing; both spellings work.

pub mod client;
pub mod commands;
pub mod server;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "vaultd", version = crate::VERSION, about = "A secrets server speaking the Vault HTTP API, with integrated Raft storage")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start a server.
    Server(ServerArgs),
    /// Operator commands: init, unseal, seal.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Print the seal and HA status of a server.
    Status(FormatArgs),
    /// Read and write secrets in a KV mount.
    #[command(subcommand)]
    Kv(KvCommand),
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Path to a config file or a directory of them; may repeat.
    #[arg(long = "config")]
    pub config: Vec<PathBuf>,
    /// Development mode: in-memory-style single node, initialized and unsealed, KV v2 at secret/.
    #[arg(long)]
    pub dev: bool,
    /// Root token to create in dev mode.
    #[arg(long = "dev-root-token-id", env = "VAULT_DEV_ROOT_TOKEN_ID")]
    pub dev_root_token_id: Option<String>,
    /// Address the dev server listens on.
    #[arg(long = "dev-listen-address", default_value = "127.0.0.1:8200", env = "VAULT_DEV_LISTEN_ADDRESS")]
    pub dev_listen_address: String,
    /// Keep dev-mode Raft data in this directory instead of a temporary one.
    #[arg(long = "dev-raft-dir")]
    pub dev_raft_dir: Option<PathBuf>,
    /// trace, debug, info, warn, error.
    #[arg(long = "log-level", env = "VAULT_LOG_LEVEL")]
    pub log_level: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct FormatArgs {
    /// Output format: table or json.
    #[arg(long, default_value = "table")]
    pub format: String,
}

#[derive(Subcommand, Debug)]
pub enum OperatorCommand {
    /// Initialize a server: create the unseal key shares and the root token.
    Init {
        #[arg(long = "key-shares", default_value_t = 5)]
        key_shares: i64,
        #[arg(long = "key-threshold", default_value_t = 3)]
        key_threshold: i64,
        /// Only report whether the server is initialized (exit 0 yes, 2 no).
        #[arg(long)]
        status: bool,
        #[command(flatten)]
        fmt: FormatArgs,
    },
    /// Provide one unseal key share (read from stdin when not given).
    Unseal {
        key: Option<String>,
        #[arg(long)]
        reset: bool,
        #[command(flatten)]
        fmt: FormatArgs,
    },
    /// Seal the server.
    Seal,
}

#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Write a secret: `kv put [-mount=M] PATH key=value...`.
    Put {
        #[arg(long)]
        mount: Option<String>,
        #[arg(long)]
        cas: Option<i64>,
        path: String,
        pairs: Vec<String>,
        #[command(flatten)]
        fmt: FormatArgs,
    },
    /// Read a secret.
    Get {
        #[arg(long)]
        mount: Option<String>,
        #[arg(long)]
        version: Option<u64>,
        #[arg(long)]
        field: Option<String>,
        path: String,
        #[command(flatten)]
        fmt: FormatArgs,
    },
}

/// Rewrites Go-style `-flag` / `-flag=value` into clap's `--flag` form. Stops at `--`, and
/// leaves `-`, short single-letter flags and anything that is not a flag alone.
pub fn normalize_args<I: IntoIterator<Item = OsString>>(args: I) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut passthrough = false;
    for a in args {
        if passthrough {
            out.push(a);
            continue;
        }
        let s = a.to_string_lossy();
        if s == "--" {
            passthrough = true;
            out.push(a);
            continue;
        }
        let is_go_long = s.starts_with('-')
            && !s.starts_with("--")
            && s.len() > 2
            && s.as_bytes().get(1).is_some_and(|b| b.is_ascii_alphabetic());
        if is_go_long {
            out.push(OsString::from(format!("-{s}")));
        } else {
            out.push(a);
        }
    }
    out
}

/// Runs the CLI and returns the process exit code (Vault's: 0 ok, 1 usage/local error,
/// 2 for the conditions each command documents).
pub async fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Server(args) => server::run(args).await,
        Command::Operator(cmd) => commands::operator(cmd).await,
        Command::Status(fmt) => commands::status(&fmt).await,
        Command::Kv(cmd) => commands::kv(cmd).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(v: &[&str]) -> Vec<String> {
        normalize_args(v.iter().map(OsString::from)).into_iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn go_style_flags_become_long_flags() {
        assert_eq!(
            norm(&["vaultd", "operator", "init", "-key-shares=3", "--key-threshold=2", "-", "-h", "--", "-x1"]),
            vec!["vaultd", "operator", "init", "--key-shares=3", "--key-threshold=2", "-", "-h", "--", "-x1"]
        );
    }

    #[test]
    fn cli_parses_vault_style_commands() {
        let cli = Cli::try_parse_from(normalize_args(
            ["vaultd", "server", "-dev", "-dev-root-token-id=root"].iter().map(OsString::from),
        ))
        .expect("parse");
        match cli.command {
            Command::Server(a) => {
                assert!(a.dev);
                assert_eq!(a.dev_root_token_id.as_deref(), Some("root"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
