//! `vaultd server`: load the configuration, open storage, start the listeners, print the banner,
//! and (in dev mode) initialize and unseal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vaultd_raft::{RaftConfig, RaftNode};
use vaultd_storage::inmem::InmemBackend;
use vaultd_storage::sled_backend::SledBackend;
use vaultd_storage::{Backend, HaBackend};

use super::ServerArgs;
use crate::config::{self, Config};
use crate::core::{Core, CoreConfig, StorageKind};
use crate::etcd_storage::LazyEtcd;
use crate::ha::LockHa;
use crate::http::{self, listener, AppState};

/// Vault's default lease TTLs (768h) when the config does not set them.
const DEFAULT_LEASE_TTL_SECS: u64 = 768 * 3600;

pub async fn run(args: ServerArgs) -> i32 {
    match run_inner(args).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e}");
            1
        }
    }
}

fn init_logging(level: Option<&str>) {
    let level = match level.map(str::to_ascii_lowercase).as_deref() {
        Some("trace") => "trace",
        Some("debug") => "debug",
        Some("warn" | "warning") => "warn",
        Some("err" | "error") => "error",
        _ => "info",
    };
    // Dependencies log at warn: openraft and sled are chatty at info and say nothing an
    // operator needs.
    let filter = format!("warn,vaultd={level}");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Vault's node id resolution: env/config first (already applied), then `<path>/node-id`, then
/// a new UUID written there with mode 0600.
fn resolve_node_id(configured: Option<&str>, path: &Path) -> Result<String, String> {
    if let Some(id) = configured.filter(|s| !s.is_empty()) {
        return Ok(id.to_string());
    }
    let file = path.join("node-id");
    if let Ok(s) = std::fs::read_to_string(&file) {
        let s = s.trim();
        if !s.is_empty() {
            return Ok(s.to_string());
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    write_private(&file, id.as_bytes()).map_err(|e| format!("writing {}: {e}", file.display()))?;
    Ok(id)
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

async fn run_inner(args: ServerArgs) -> Result<(), String> {
    // Dev mode keeps its Raft data in a temporary directory removed at exit, unless told where.
    let mut _dev_dir: Option<tempfile::TempDir> = None;
    let cfg: Config = if args.dev {
        let dir = match &args.dev_raft_dir {
            Some(d) => d.clone(),
            None => {
                let t = tempfile::Builder::new().prefix("vaultd-dev-").tempdir().map_err(|e| format!("creating dev data dir: {e}"))?;
                let p = t.path().to_path_buf();
                _dev_dir = Some(t);
                p
            }
        };
        config::dev(&args.dev_listen_address, Some(dir))
    } else {
        if args.config.is_empty() {
            return Err("a configuration file must be specified with -config, or use -dev".into());
        }
        let mut cfg = config::load(&args.config).map_err(|e| e.to_string())?;
        cfg.apply_env();
        cfg.validate_for_server().map_err(|e| e.to_string())?;
        cfg
    };
    init_logging(args.log_level.as_deref().or(cfg.log_level.as_deref()));
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }

    let first = cfg.listeners.first().ok_or("no listener configured")?;
    let api_addr = cfg.api_addr.clone().unwrap_or_else(|| {
        let scheme = if first.tls_disable { "http" } else { "https" };
        format!("{scheme}://{}", first.address)
    });
    let cluster_addr = cfg.cluster_addr.clone().unwrap_or_else(|| format!("https://{}", first.cluster_address));

    let storage_cfg = cfg.storage.as_ref().ok_or("storage stanza is required")?;
    // An etcd data store is also an HA backend (its lock is the active node's).
    let mut storage_ha: Option<Arc<LazyEtcd>> = None;
    let (physical, storage): (Arc<dyn Backend>, StorageKind) = match storage_cfg.kind.as_str() {
        "raft" => {
            let raft = storage_cfg.raft.as_ref().ok_or("raft storage needs a path")?;
            std::fs::create_dir_all(&raft.path).map_err(|e| format!("creating raft path {}: {e}", raft.path.display()))?;
            let node_id = resolve_node_id(raft.node_id.as_deref(), &raft.path)?;
            let node = RaftNode::open(RaftConfig {
                path: raft.path.clone(),
                node_id,
                api_addr: api_addr.clone(),
                cluster_addr: cluster_addr.clone(),
            })
            .await
            .map_err(|e| format!("opening raft storage at {}: {e}", raft.path.display()))?;
            (node.backend(), StorageKind::Raft(node))
        }
        "inmem" => (Arc::new(InmemBackend::new()), StorageKind::Inmem),
        "file" => {
            let path = storage_cfg.options.get("path").ok_or("file storage needs a path")?;
            let b = SledBackend::open(&PathBuf::from(path)).map_err(|e| format!("opening file storage at {path}: {e}"))?;
            (Arc::new(b), StorageKind::File)
        }
        "etcd" => {
            let etcd = cfg.etcd_config(false).map_err(|e| e.to_string())?.ok_or("storage \"etcd\" has no settings")?;
            let b = LazyEtcd::connect(etcd, "storage").await?;
            storage_ha = Some(b.clone());
            (b, StorageKind::Etcd)
        }
        other => return Err(format!("unknown storage type {other:?} (supported: raft, inmem, file, etcd)")),
    };
    // Split mode: the lock (and so the active node) in `ha_storage`, the data in `storage`.
    let ha_storage: Option<Arc<LazyEtcd>> = match cfg.etcd_config(true).map_err(|e| e.to_string())? {
        Some(etcd) => Some(LazyEtcd::connect(etcd, "ha_storage").await?),
        None => None,
    };
    let ha_lock = match (&ha_storage, &storage_ha) {
        (Some(ha), data) if ha.ha_enabled() => {
            // The data writes can be fenced on a lock in the same etcd cluster only.
            let fence = data
                .as_ref()
                .filter(|d| d.config().endpoints == ha.config().endpoints)
                .map(|d| d.clone() as Arc<dyn HaBackend>);
            Some(LockHa { backend: ha.clone(), fence })
        }
        (None, Some(data)) if data.ha_enabled() => {
            Some(LockHa { backend: data.clone(), fence: Some(data.clone() as Arc<dyn HaBackend>) })
        }
        _ => None,
    };

    // The cluster port binds the first listener's cluster_address; a host name there (not an IP)
    // leaves the port closed, which only a lone node can live with.
    let cluster_bind = first.cluster_address.parse::<std::net::SocketAddr>().ok();
    if cluster_bind.is_none() && (storage.name() == "raft" || ha_lock.is_some()) {
        tracing::warn!(address = %first.cluster_address, "cluster_address is not an IP address and port; the cluster port cannot start");
    }
    let core = Core::new(CoreConfig {
        physical,
        storage,
        api_addr: api_addr.clone(),
        cluster_addr: cluster_addr.clone(),
        cluster_bind,
        default_lease_ttl: cfg.default_lease_ttl.map_or(DEFAULT_LEASE_TTL_SECS, |d| d.as_secs()),
        max_lease_ttl: cfg.max_lease_ttl.map_or(DEFAULT_LEASE_TTL_SECS, |d| d.as_secs()),
        performance_standby: !(cfg.disable_performance_standby || cfg.disable_standby_reads),
        ha_lock,
    });

    crate::sys_snapshot::spawn_restore_watcher(&core);

    // Dev mode is initialized and unsealed before the port opens, so the first client that can
    // connect finds a ready server.
    let dev_credentials = if args.dev {
        Some(core.dev_setup(args.dev_root_token_id.as_deref()).await.map_err(|e| format!("dev setup: {e}"))?)
    } else {
        None
    };

    let mut listener_lines = Vec::new();
    let mut servers = Vec::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let tls = if l.tls_disable {
            None
        } else {
            let cert = l.tls_cert_file.as_ref().ok_or("tls_cert_file is required when TLS is enabled")?;
            let key = l.tls_key_file.as_ref().ok_or("tls_key_file is required when TLS is enabled")?;
            Some(listener::tls_config(Path::new(cert), Path::new(key), &l.tls_min_version).map_err(|e| e.to_string())?)
        };
        let tcp = listener::bind(&l.address).await.map_err(|e| e.to_string())?;
        let max = l.max_request_size.map(|v| v as usize);
        let app = http::app(AppState { core: core.clone(), max_request_size: max });
        if i == 0 {
            // Requests forwarded from standbys run through the first listener's app.
            core.set_http_app(app.clone()).map_err(|e| format!("request forwarding: {e}"))?;
        }
        servers.push((tcp, app, tls));
        listener_lines.push(format!(
            "{:>24}: tcp (addr: \"{}\", cluster address: \"{}\", max_request_duration: \"{}\", max_request_size: \"{}\", tls: \"{}\")",
            format!("Listener {}", i + 1),
            l.address,
            l.cluster_address,
            config::format_duration_go(l.max_request_duration),
            l.max_request_size.map_or("-1".to_string(), |v| v.to_string()),
            if l.tls_disable { "disabled" } else { "enabled" },
        ));
    }

    // Vault's banner: with an HA-enabled ha_storage, an "HA Storage" line and the plain storage
    // type; otherwise whether the storage itself elects an active node.
    let ha_storage_line = ha_storage.as_ref().filter(|h| h.ha_enabled()).map(|_| "etcd");
    let storage_line = match (core.storage.name(), ha_storage_line) {
        (other, Some(_)) => other.to_string(),
        ("raft", None) => "raft (HA available)".to_string(),
        (other, None) if core.ha_enabled() => format!("{other} (HA available)"),
        (other, None) => format!("{other} (HA disabled)"),
    };
    let mut banner = String::from("==> Vault server configuration:\n\n");
    if let Some(ha) = ha_storage_line {
        banner.push_str(&format!("{:>24}: {}\n", "HA Storage", ha));
    }
    banner.push_str(&format!("{:>24}: {}\n", "Api Address", api_addr));
    banner.push_str(&format!("{:>24}: {}\n", "Cluster Address", cluster_addr));
    for l in &listener_lines {
        banner.push_str(l);
        banner.push('\n');
    }
    banner.push_str(&format!("{:>24}: {}\n", "Log Level", cfg.log_level.as_deref().unwrap_or("info")));
    banner.push_str(&format!("{:>24}: {}\n", "Storage", storage_line));
    banner.push_str(&format!("{:>24}: vaultd v{} (Vault API {})\n", "Version", crate::VERSION, crate::API_VERSION));
    println!("{banner}");

    if let Some((key, token)) = dev_credentials {
        println!(
            "WARNING! dev mode is enabled! In this mode, Vault runs entirely from a temporary\n\
             directory, is automatically initialized and unsealed, and the root token is\n\
             printed below. Do not run a dev server in production!\n\n\
             You may need to set the following environment variables:\n\n    \
             $ export VAULT_ADDR='{api_addr}'\n\n\
             The unseal key and root token are displayed below in case you want to\n\
             seal/unseal the Vault or re-authenticate.\n\n\
             Unseal Key: {key}\nRoot Token: {token}\n\n\
             Development mode should NOT be used in production installations!\n"
        );
    }
    println!("==> Vault server started! Log data will stream in below:\n");
    // Listeners start accepting only now: the banner (and dev credentials) are out first.
    for (tcp, app, tls) in servers {
        tokio::spawn(listener::serve(tcp, app, tls));
    }

    // Vault's retry_join: a fresh raft node looks for its cluster in the background.
    let retry_join = match storage_cfg.raft.as_ref().filter(|r| !r.retry_join.is_empty()) {
        Some(r) if core.raft().is_some() => {
            let mut own = vec![api_addr.clone()];
            for l in &cfg.listeners {
                let scheme = if l.tls_disable { "http" } else { "https" };
                own.push(format!("{scheme}://{}", l.address));
            }
            let targets = crate::raft_join::retry_join_targets(&r.retry_join, &own);
            crate::raft_join::spawn_retry_join(&core, targets, r.retry_join_as_non_voter).await
        }
        _ => None,
    };

    wait_for_shutdown().await;
    tracing::info!("shutting down");
    if let Some(h) = retry_join {
        h.abort();
    }
    core.shutdown().await;
    Ok(())
}

async fn wait_for_shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
