//! `vaultd kv ...`: the `vault kv` commands. Each first asks the server which mount serves the
//! path and its KV version (`sys/internal/ui/mounts/<path>`), then uses the v1 or v2 API.

use serde_json::{json, Map, Value};

use super::client::Client;
use super::output::{
    self, api_failure, check_format, header_for_map, pad_equal_signs, print_table, API, OK, USAGE,
};
use super::{KvCommand, KvMetadataCommand, OutArgs};

/// Where a KV path lives: the mount (with its slash, empty when unknown), the path inside it,
/// and the engine version.
struct KvPath {
    mount: String,
    rest: String,
    version: u8,
}

impl KvPath {
    /// The API path of `section` (`data`, `metadata`, ...) for v2, or the plain path for v1.
    fn api(&self, section: &str) -> String {
        if self.version == 2 {
            format!("{}{section}/{}", self.mount, self.rest)
        } else {
            format!("{}{}", self.mount, self.rest)
        }
    }
}

/// Vault's preflight: a 404 from the endpoint means an old server, so the path is used as it is
/// with KV v1; any other failure is an error.
/// The client from the environment and the KV preflight for `path`: the prologue of every
/// `kv` subcommand. `Err` is the exit code, already reported.
async fn connect(mount: Option<&str>, path: &str) -> Result<(Client, KvPath), i32> {
    let c = output::client()?;
    let kp = preflight(&c, mount, path).await?;
    Ok((c, kp))
}

async fn preflight(c: &Client, mount: Option<&str>, path: &str) -> Result<KvPath, i32> {
    let full = match mount {
        Some(m) => format!("{}/{}", m.trim_matches('/'), path.trim_start_matches('/')),
        None => path.trim_start_matches('/').to_string(),
    };
    match c.read("GET", &format!("sys/internal/ui/mounts/{full}"), None).await {
        Ok(Some(v)) => {
            let data = v.get("data").cloned().unwrap_or(Value::Null);
            let mount_path = data.get("path").and_then(Value::as_str).unwrap_or("").to_string();
            let version = match data.get("options").and_then(|o| o.get("version")) {
                Some(Value::String(s)) if s == "2" => 2,
                Some(Value::Number(n)) if n.as_u64() == Some(2) => 2,
                _ => 1,
            };
            // `secret` names the mount `secret/` itself.
            let rest = if format!("{full}/") == mount_path {
                String::new()
            } else {
                full.strip_prefix(&mount_path).unwrap_or(&full).to_string()
            };
            Ok(KvPath { mount: mount_path, rest, version })
        }
        Ok(None) => Ok(KvPath { mount: String::new(), rest: full, version: 1 }),
        Err(e) => {
            eprintln!("{e}");
            Err(API)
        }
    }
}

fn parse_versions(v: Option<&str>) -> Result<Vec<u64>, String> {
    let Some(v) = v else { return Ok(Vec::new()) };
    v.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.trim().parse::<u64>().map_err(|_| format!("invalid version {p:?}")))
        .collect()
}

pub async fn run(cmd: KvCommand) -> i32 {
    match cmd {
        KvCommand::Put { mount, cas, path, pairs, out } => {
            put_or_patch(false, mount, cas, path, pairs, out).await
        }
        KvCommand::Patch { mount, cas, path, pairs, out } => {
            put_or_patch(true, mount, cas, path, pairs, out).await
        }
        KvCommand::Get { mount, version, path, out } => get(mount, version, path, out).await,
        KvCommand::List { mount, path, out } => list(mount, path, out).await,
        KvCommand::Delete { mount, versions, path } => delete(mount, versions, path).await,
        KvCommand::Undelete { mount, versions, path } => {
            version_op("undelete", mount, versions, path).await
        }
        KvCommand::Destroy { mount, versions, path } => {
            version_op("destroy", mount, versions, path).await
        }
        KvCommand::Metadata(m) => metadata(m).await,
    }
}

/// Prints a v2 write's answer: the path, then the new version's metadata.
fn print_written(api_path: &str, resp: &Value, out: &OutArgs) -> i32 {
    if out.field.is_some() || out.format == "json" {
        return output::output_secret(resp, &out.format, out.field.as_deref());
    }
    println!("{}\n{api_path}\n", pad_equal_signs("Secret Path", api_path.len()));
    let meta = resp.get("data").and_then(Value::as_object).cloned().unwrap_or_default();
    println!("{}", header_for_map("Metadata", &meta));
    print_table(&meta.iter().map(|(k, v)| (k.clone(), output::cell(v))).collect::<Vec<_>>());
    output::print_warnings(resp);
    OK
}

async fn put_or_patch(
    patch: bool,
    mount: Option<String>,
    cas: Option<i64>,
    path: String,
    pairs: Vec<String>,
    out: OutArgs,
) -> i32 {
    if let Err(code) = check_format(&out.format) {
        return code;
    }
    let data = match output::parse_pairs(&pairs) {
        Ok(d) if !d.is_empty() => d,
        Ok(_) => {
            eprintln!("Must supply data");
            return USAGE;
        }
        Err(e) => {
            eprintln!("Failed to parse K=V data: {e}");
            return USAGE;
        }
    };
    let (c, kp) = match connect(mount.as_deref(), &path).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    if patch && kp.version != 2 {
        eprintln!("K/V engine mount must be version 2 for patch support");
        return API;
    }
    let api_path = kp.api("data");
    let (method, body) = if kp.version == 2 {
        let mut body = json!({ "data": data });
        if let Some(cas) = cas.filter(|c| *c >= 0) {
            body["options"] = json!({ "cas": cas });
        }
        (if patch { "PATCH" } else { "PUT" }, body)
    } else {
        ("PUT", Value::Object(data))
    };
    match c.read(method, &api_path, Some(&body)).await {
        Err(e) => api_failure(&format!("writing data to {api_path}"), &e),
        Ok(None) => {
            eprintln!("Error writing data to {api_path}: no secret found at {api_path}");
            API
        }
        Ok(Some(v)) if kp.version == 2 => print_written(&api_path, &v, &out),
        Ok(Some(v)) if v.get("data").is_some_and(|d| !d.is_null()) => {
            output::output_secret(&v, &out.format, out.field.as_deref())
        }
        Ok(Some(_)) => {
            println!("Success! Data written to: {api_path}");
            OK
        }
    }
}

async fn get(mount: Option<String>, version: Option<u64>, path: String, out: OutArgs) -> i32 {
    if let Err(code) = check_format(&out.format) {
        return code;
    }
    let (c, kp) = match connect(mount.as_deref(), &path).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let api_path = kp.api("data");
    let query = match version {
        Some(v) if kp.version == 2 => format!("{api_path}?version={v}"),
        _ => api_path.clone(),
    };
    let resp = match c.read("GET", &query, None).await {
        Err(e) => return api_failure(&format!("reading {api_path}"), &e),
        Ok(None) => {
            eprintln!("No value found at {api_path}");
            return API;
        }
        Ok(Some(v)) => v,
    };
    let data = if kp.version == 2 {
        resp.pointer("/data/data").cloned()
    } else {
        resp.get("data").cloned()
    };
    if let Some(f) = out.field.as_deref() {
        return match data.as_ref().and_then(|d| d.get(f)) {
            Some(v) => {
                output::print_field(v, &out.format);
                OK
            }
            None => {
                eprintln!("Field \"{f}\" not present in map");
                USAGE
            }
        };
    }
    if out.format == "json" {
        println!("{}", output::secret_json(&resp));
        return OK;
    }
    if kp.version != 2 {
        // Vault shows only the data of a v1 secret, under a `Data` header.
        if let Some(d) = data.as_ref().and_then(Value::as_object) {
            println!("{}", header_for_map("Data", d));
            print_table(&d.iter().map(|(k, v)| (k.clone(), output::cell(v))).collect::<Vec<_>>());
        }
        output::print_warnings(&resp);
        return OK;
    }
    {
        println!("{}\n{api_path}\n", pad_equal_signs("Secret Path", api_path.len()));
        let meta =
            resp.pointer("/data/metadata").and_then(Value::as_object).cloned().unwrap_or_default();
        if !meta.is_empty() {
            println!("{}", header_for_map("Metadata", &meta));
            print_table(
                &meta.iter().map(|(k, v)| (k.clone(), output::cell(v))).collect::<Vec<_>>(),
            );
        }
        println!();
        if let Some(d) = data.as_ref().and_then(Value::as_object) {
            println!("{}", header_for_map("Data", d));
            print_table(&d.iter().map(|(k, v)| (k.clone(), output::cell(v))).collect::<Vec<_>>());
        }
    }
    output::print_warnings(&resp);
    OK
}

/// Prints LIST keys: a `Keys` column, or a JSON array.
pub fn print_keys(resp: &Value, format: &str) -> i32 {
    let keys = resp.pointer("/data/keys").and_then(Value::as_array).cloned().unwrap_or_default();
    if format == "json" {
        output::print_json(&Value::Array(keys));
        return OK;
    }
    let mut rows = vec![vec!["Keys".to_string()], vec!["----".to_string()]];
    rows.extend(keys.iter().map(|k| vec![output::go_fmt(k)]));
    output::print_columns(&rows);
    OK
}

async fn list(mount: Option<String>, path: String, out: OutArgs) -> i32 {
    if let Err(code) = check_format(&out.format) {
        return code;
    }
    let (c, kp) = match connect(mount.as_deref(), &path).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let api_path = kp.api("metadata");
    match c.read("LIST", &api_path, None).await {
        Err(e) => api_failure(&format!("listing {api_path}"), &e),
        Ok(Some(v)) if v.pointer("/data/keys").is_some() => print_keys(&v, &out.format),
        Ok(_) => {
            eprintln!("No value found at {api_path}");
            API
        }
    }
}

async fn delete(mount: Option<String>, versions: Option<String>, path: String) -> i32 {
    let versions = match parse_versions(versions.as_deref()) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            return USAGE;
        }
    };
    let (c, kp) = match connect(mount.as_deref(), &path).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let (method, api_path, body) = if kp.version == 2 && !versions.is_empty() {
        ("PUT", kp.api("delete"), Some(json!({ "versions": versions })))
    } else {
        ("DELETE", kp.api("data"), None)
    };
    match c.call(method, &api_path, body.as_ref()).await {
        Err(e) => api_failure(&format!("deleting {api_path}"), &e),
        Ok(_) => {
            println!("Success! Data deleted (if it existed) at: {api_path}");
            OK
        }
    }
}

/// `undelete` and `destroy`: KV v2 only, and `-versions` is required.
async fn version_op(
    op: &str,
    mount: Option<String>,
    versions: Option<String>,
    path: String,
) -> i32 {
    let versions = match parse_versions(versions.as_deref()) {
        Ok(v) if !v.is_empty() => v,
        Ok(_) => {
            eprintln!(
                "No versions provided, use the \"-versions\" flag to specify the version to {op}."
            );
            return USAGE;
        }
        Err(e) => {
            eprintln!("{e}");
            return USAGE;
        }
    };
    let (c, kp) = match connect(mount.as_deref(), &path).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    if kp.version != 2 {
        eprintln!("{op} is not supported on KV version 1 mounts");
        return USAGE;
    }
    let api_path = kp.api(op);
    match c.call("PUT", &api_path, Some(&json!({ "versions": versions }))).await {
        Err(e) => api_failure(&format!("writing data to {api_path}"), &e),
        Ok(_) => {
            println!("Success! Data written to: {api_path}");
            OK
        }
    }
}

async fn metadata(cmd: KvMetadataCommand) -> i32 {
    let c = match output::client() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (mount, path) = match &cmd {
        KvMetadataCommand::Get { mount, path, .. }
        | KvMetadataCommand::Put { mount, path, .. }
        | KvMetadataCommand::Delete { mount, path } => (mount.clone(), path.clone()),
    };
    let kp = match preflight(&c, mount.as_deref(), &path).await {
        Ok(kp) => kp,
        Err(code) => return code,
    };
    if kp.version != 2 {
        eprintln!("Metadata not supported on KV Version 1");
        return USAGE;
    }
    let api_path = kp.api("metadata");
    match cmd {
        KvMetadataCommand::Get { out, .. } => {
            if let Err(code) = check_format(&out.format) {
                return code;
            }
            let resp = match c.read("GET", &api_path, None).await {
                Err(e) => return api_failure(&format!("reading {api_path}"), &e),
                Ok(None) => {
                    eprintln!("No value found at {api_path}");
                    return API;
                }
                Ok(Some(v)) => v,
            };
            if out.field.is_some() || out.format == "json" {
                return output::output_secret(&resp, &out.format, out.field.as_deref());
            }
            let mut meta = resp.get("data").and_then(Value::as_object).cloned().unwrap_or_default();
            let versions =
                meta.remove("versions").and_then(|v| v.as_object().cloned()).unwrap_or_default();
            println!("{}\n{api_path}\n", pad_equal_signs("Metadata Path", api_path.len()));
            println!("{}", header_for_map("Metadata", &meta));
            print_table(
                &meta.iter().map(|(k, v)| (k.clone(), output::cell(v))).collect::<Vec<_>>(),
            );
            let mut numbered: Vec<(u64, &Value)> =
                versions.iter().filter_map(|(k, v)| k.parse().ok().map(|n| (n, v))).collect();
            numbered.sort_by_key(|(n, _)| *n);
            for (n, v) in numbered {
                let m = v.as_object().cloned().unwrap_or_default();
                println!("\n{}", header_for_map(&format!("Version {n}"), &m));
                print_table(
                    &m.iter().map(|(k, v)| (k.clone(), output::cell(v))).collect::<Vec<_>>(),
                );
            }
            OK
        }
        KvMetadataCommand::Put {
            max_versions,
            cas_required,
            delete_version_after,
            custom_metadata,
            ..
        } => {
            let mut body = Map::new();
            if let Some(m) = max_versions {
                body.insert("max_versions".into(), json!(m));
            }
            if let Some(b) = cas_required {
                body.insert("cas_required".into(), json!(b));
            }
            if let Some(d) = delete_version_after {
                body.insert("delete_version_after".into(), json!(d));
            }
            if !custom_metadata.is_empty() {
                let mut cm = Map::new();
                for kv in &custom_metadata {
                    let Some((k, v)) = kv.split_once('=') else {
                        eprintln!("Invalid custom metadata {kv:?}: format must be key=value");
                        return USAGE;
                    };
                    cm.insert(k.to_string(), Value::String(v.to_string()));
                }
                body.insert("custom_metadata".into(), Value::Object(cm));
            }
            match c.call("PUT", &api_path, Some(&Value::Object(body))).await {
                Err(e) => api_failure(&format!("writing data to {api_path}"), &e),
                Ok(_) => {
                    println!("Success! Data written to: {api_path}");
                    OK
                }
            }
        }
        KvMetadataCommand::Delete { .. } => match c.call("DELETE", &api_path, None).await {
            Err(e) => api_failure(&format!("deleting {api_path}"), &e),
            Ok(_) => {
                println!("Success! Data deleted (if it existed) at: {api_path}");
                OK
            }
        },
    }
}
