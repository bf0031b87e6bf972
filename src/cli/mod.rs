//! The `vaultd` command line: `server`, and the client commands (`operator`, `status`, `kv`)
//! that talk to a server over its HTTP API, as the `vault` CLI does.
//!
//! Vault's CLI uses Go's flag syntax (`-key-shares=3`, single dash). clap wants `--key-shares`,
//! so [`normalize_args`] rewrites single-dash long flags before parsing; both spellings work.

pub mod client;
pub mod commands;
pub mod generic;
pub mod kv;
pub mod output;
pub mod raft;
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
    /// Join this node to a raft cluster (`operator raft join`).
    Join(raft::JoinArgs),
    /// Print the seal and HA status of a server.
    Status(FormatArgs),
    /// Read and write secrets in a KV mount.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Read any path: `read PATH [key=value...]`.
    Read(PathArgs),
    /// Write any path: `write PATH key=value...`.
    Write(PathArgs),
    /// Delete any path.
    Delete(PathArgs),
    /// List the keys below any path.
    List(PathArgs),
    /// Create, look up and revoke tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage ACL policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Authenticate and store the token for later commands.
    Login(LoginArgs),
    /// Mount, unmount and list secrets engines.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Enable, disable and list auth methods.
    #[command(subcommand)]
    Auth(AuthCommand),
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
    /// Make the active node give up leadership; another node becomes active.
    #[command(name = "step-down")]
    StepDown,
    /// Integrated storage: join, list-peers, remove-peer.
    #[command(subcommand)]
    Raft(raft::RaftCommand),
}

/// Flags every client command that prints a secret takes.
#[derive(Args, Debug, Clone)]
pub struct OutArgs {
    /// Output format: table or json.
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Print only this field of the answer.
    #[arg(long)]
    pub field: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Write a secret: `kv put [-mount=M] [-cas=N] PATH key=value...`.
    Put {
        #[arg(long)]
        mount: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        cas: Option<i64>,
        path: String,
        pairs: Vec<String>,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Merge new keys into the latest version of a secret (KV v2 only).
    Patch {
        #[arg(long)]
        mount: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        cas: Option<i64>,
        path: String,
        pairs: Vec<String>,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Read a secret.
    Get {
        #[arg(long)]
        mount: Option<String>,
        #[arg(long)]
        version: Option<u64>,
        path: String,
        #[command(flatten)]
        out: OutArgs,
    },
    /// List the keys below a path.
    List {
        #[arg(long)]
        mount: Option<String>,
        path: String,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Soft-delete the latest version, or the versions named by `-versions`.
    Delete {
        #[arg(long)]
        mount: Option<String>,
        #[arg(long)]
        versions: Option<String>,
        path: String,
    },
    /// Restore soft-deleted versions.
    Undelete {
        #[arg(long)]
        mount: Option<String>,
        #[arg(long)]
        versions: Option<String>,
        path: String,
    },
    /// Permanently remove versions.
    Destroy {
        #[arg(long)]
        mount: Option<String>,
        #[arg(long)]
        versions: Option<String>,
        path: String,
    },
    /// A secret's metadata: get, put, delete.
    #[command(subcommand)]
    Metadata(KvMetadataCommand),
}

#[derive(Subcommand, Debug)]
pub enum KvMetadataCommand {
    Get {
        #[arg(long)]
        mount: Option<String>,
        path: String,
        #[command(flatten)]
        out: OutArgs,
    },
    Put {
        #[arg(long)]
        mount: Option<String>,
        #[arg(long = "max-versions")]
        max_versions: Option<i64>,
        #[arg(long = "cas-required", num_args = 0..=1, default_missing_value = "true")]
        cas_required: Option<bool>,
        #[arg(long = "delete-version-after")]
        delete_version_after: Option<String>,
        /// `key=value`; may repeat.
        #[arg(long = "custom-metadata")]
        custom_metadata: Vec<String>,
        path: String,
    },
    Delete {
        #[arg(long)]
        mount: Option<String>,
        path: String,
    },
}

// Parsed once per process; boxing the big variant would only add noise to the match arms.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token.
    Create {
        #[arg(long = "policy")]
        policies: Vec<String>,
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long = "explicit-max-ttl")]
        explicit_max_ttl: Option<String>,
        #[arg(long)]
        period: Option<String>,
        #[arg(long = "display-name")]
        display_name: Option<String>,
        #[arg(long = "use-limit", alias = "num-uses")]
        use_limit: Option<u64>,
        #[arg(long, num_args = 0..=1, default_missing_value = "true")]
        renewable: Option<bool>,
        #[arg(long)]
        orphan: bool,
        #[arg(long = "no-default-policy")]
        no_default_policy: bool,
        /// `key=value`; may repeat.
        #[arg(long)]
        metadata: Vec<String>,
        #[arg(long)]
        role: Option<String>,
        #[arg(long = "type")]
        kind: Option<String>,
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Show a token's properties (the caller's own without an argument).
    Lookup {
        /// The argument is an accessor, not a token.
        #[arg(long)]
        accessor: bool,
        token: Option<String>,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Revoke a token and its children.
    Revoke {
        #[arg(long)]
        accessor: bool,
        #[arg(long = "self")]
        self_: bool,
        token: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Upload a policy from a file, or from stdin with `-`.
    Write { name: String, file: String },
    Read {
        name: String,
        #[command(flatten)]
        out: OutArgs,
    },
    List {
        #[command(flatten)]
        out: OutArgs,
    },
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum SecretsCommand {
    /// Mount a secrets engine: `secrets enable [-path=P] [-version=2] TYPE`.
    Enable {
        #[arg(long)]
        path: Option<String>,
        #[arg(long)]
        version: Option<u32>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long = "default-lease-ttl")]
        default_lease_ttl: Option<String>,
        #[arg(long = "max-lease-ttl")]
        max_lease_ttl: Option<String>,
        kind: String,
    },
    Disable { path: String },
    List {
        #[command(flatten)]
        out: OutArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Enable an auth method: `auth enable [-path=P] TYPE`.
    Enable {
        #[arg(long)]
        path: Option<String>,
        #[arg(long)]
        description: Option<String>,
        kind: String,
    },
    Disable { path: String },
    List {
        #[command(flatten)]
        out: OutArgs,
    },
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Auth method: token (default) or userpass.
    #[arg(long, default_value = "token")]
    pub method: String,
    /// Mount path of the auth method (defaults to the method's name).
    #[arg(long)]
    pub path: Option<String>,
    /// Do not store the token in ~/.vault-token.
    #[arg(long = "no-store")]
    pub no_store: bool,
    /// A token, or `key=value` pairs for the method (`username=U password=P`).
    pub args: Vec<String>,
    #[command(flatten)]
    pub out: OutArgs,
}

#[derive(Args, Debug)]
pub struct PathArgs {
    pub path: String,
    /// `key=value` pairs (`@file` reads a file, `-` reads JSON from stdin).
    pub pairs: Vec<String>,
    #[command(flatten)]
    pub out: OutArgs,
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
        Command::Join(a) => raft::run(raft::RaftCommand::Join(a)).await,
        Command::Kv(cmd) => kv::run(cmd).await,
        Command::Read(a) => generic::read(a).await,
        Command::Write(a) => generic::write(a).await,
        Command::Delete(a) => generic::delete(a).await,
        Command::List(a) => generic::list(a).await,
        Command::Token(cmd) => generic::token(cmd).await,
        Command::Policy(cmd) => generic::policy(cmd).await,
        Command::Login(a) => generic::login(a).await,
        Command::Secrets(cmd) => generic::secrets(cmd).await,
        Command::Auth(cmd) => generic::auth(cmd).await,
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
