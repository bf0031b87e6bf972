//! Output as the `vault` CLI prints it: two-column tables with `n/a` for empty strings and Go's
//! `%v` for nested values, Go's `api.Secret` JSON with `-format=json`, and `-field=` printing
//! one raw value.

use std::io::{IsTerminal, Write};

use serde_json::{Map, Value};

use super::client::{ApiError, Client};

/// Exit codes, as Vault's: 0 ok, 1 local or usage error, 2 API error or nothing found.
pub const OK: i32 = 0;
pub const USAGE: i32 = 1;
pub const API: i32 = 2;

pub fn client() -> Result<Client, i32> {
    Client::from_env().map_err(|e| {
        eprintln!("Error: {e}");
        USAGE
    })
}

/// Checks `-format` before anything is sent, so a typo costs no request.
pub fn check_format(format: &str) -> Result<(), i32> {
    match format {
        "table" | "json" => Ok(()),
        other => {
            eprintln!("Invalid output format: {other}");
            Err(USAGE)
        }
    }
}

/// Go's `%v` of a decoded JSON value: `<nil>`, `[a b]`, `map[k:v]`.
pub fn go_fmt(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => format!("[{}]", a.iter().map(go_fmt).collect::<Vec<_>>().join(" ")),
        Value::Object(m) => format!(
            "map[{}]",
            m.iter().map(|(k, v)| format!("{k}:{}", go_fmt(v))).collect::<Vec<_>>().join(" ")
        ),
    }
}

/// A table cell: Go's `%v`, with `n/a` for an empty string as Vault prints it.
pub fn cell(v: &Value) -> String {
    match v {
        Value::String(s) if s.is_empty() => "n/a".into(),
        other => go_fmt(other),
    }
}

/// Vault's `humanDuration`: `768h`, `1h30m`, `59s`, `0s`.
pub fn human_duration(secs: i64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let mut s = crate::kv::format_duration_secs(secs);
    if s.ends_with("m0s") {
        s.truncate(s.len() - 2);
    }
    if let Some(i) = s.find("h0m") {
        s = format!("{}{}", &s[..=i], &s[i + 3..]);
    }
    s
}

/// Columns separated by four spaces, each padded to its widest cell (the last is not padded).
pub fn print_columns(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cellv) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cellv);
            } else {
                let pad = widths[c].saturating_sub(cellv.chars().count());
                line.push_str(cellv);
                line.push_str(&" ".repeat(pad + 4));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    print!("{out}");
}

/// The `Key / Value` table.
pub fn print_table(rows: &[(String, String)]) {
    let mut all = vec![
        vec!["Key".to_string(), "Value".to_string()],
        vec!["---".to_string(), "-----".to_string()],
    ];
    all.extend(rows.iter().map(|(k, v)| vec![k.clone(), v.clone()]));
    print_columns(&all);
}

/// Vault's section header: the title centred in `=` signs over `width` columns.
pub fn pad_equal_signs(header: &str, width: usize) -> String {
    let mut eq = width as i64 - (header.len() as i64 + 2);
    if eq <= 0 {
        eq = 4;
    }
    let side = ((eq + 1) / 2) as usize;
    format!("{} {header} {}", "=".repeat(side), "=".repeat(side))
}

/// The header over a map's table: as wide as its longest key plus the value column.
pub fn header_for_map(header: &str, m: &Map<String, Value>) -> String {
    let max_key = m.keys().map(String::len).max().unwrap_or(0);
    pad_equal_signs(header, max_key + 4 + 5)
}

/// Pretty JSON with two-space indents.
pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// A JSON member for [`ordered_json`]: a value, or an object already rendered in order.
pub enum Member {
    V(Value),
    Raw(String),
}

/// Writes `pairs` as a JSON object in the given order (serde_json's map sorts its keys; Go
/// prints struct fields in declaration order).
pub fn ordered_json(pairs: &[(&str, Member)], indent: usize) -> String {
    let pad = " ".repeat(indent + 2);
    let mut out = String::from("{\n");
    for (i, (k, m)) in pairs.iter().enumerate() {
        let body = match m {
            Member::V(v) => serde_json::to_string_pretty(v)
                .unwrap_or_default()
                .replace('\n', &format!("\n{pad}")),
            Member::Raw(r) => r.clone(),
        };
        out.push_str(&format!("{pad}\"{k}\": {body}"));
        out.push_str(if i + 1 < pairs.len() { ",\n" } else { "\n" });
    }
    out.push_str(&" ".repeat(indent));
    out.push('}');
    out
}

/// An API answer in the shape of Go's `api.Secret` JSON.
pub fn secret_json(resp: &Value) -> String {
    let g = |k: &str, default: Value| Member::V(resp.get(k).cloned().unwrap_or(default));
    let mut pairs = vec![
        ("request_id", g("request_id", Value::Null)),
        ("lease_id", g("lease_id", Value::String(String::new()))),
        ("lease_duration", g("lease_duration", Value::from(0))),
        ("renewable", g("renewable", Value::Bool(false))),
        ("data", g("data", Value::Null)),
        ("warnings", g("warnings", Value::Null)),
    ];
    if let Some(auth) = resp.get("auth").filter(|a| a.is_object()) {
        let a = |k: &str, default: Value| Member::V(auth.get(k).cloned().unwrap_or(default));
        let body = ordered_json(
            &[
                ("client_token", a("client_token", Value::Null)),
                ("accessor", a("accessor", Value::Null)),
                ("policies", a("policies", Value::Null)),
                ("token_policies", a("token_policies", Value::Null)),
                ("identity_policies", a("identity_policies", Value::Null)),
                ("metadata", a("metadata", Value::Null)),
                ("orphan", a("orphan", Value::Bool(false))),
                ("entity_id", a("entity_id", Value::String(String::new()))),
                ("lease_duration", a("lease_duration", Value::from(0))),
                ("renewable", a("renewable", Value::Bool(false))),
                ("mfa_requirement", a("mfa_requirement", Value::Null)),
            ],
            2,
        );
        pairs.push(("auth", Member::Raw(body)));
    }
    if let Some(w) = resp.get("wrap_info").filter(|w| !w.is_null()) {
        pairs.push(("wrap_info", Member::V(w.clone())));
    }
    ordered_json(&pairs, 0)
}

fn is_ttl_key(k: &str) -> bool {
    k == "period" || k.ends_with("_period") || k == "ttl" || k.ends_with("_ttl")
}

/// The rows of `auth` as Vault's table shows them.
fn auth_rows(auth: &Value) -> Vec<(String, String)> {
    let s = |k: &str| auth.get(k).map(go_fmt).unwrap_or_default();
    let q = |k: &str| {
        let items: Vec<String> = auth
            .get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().map(go_fmt).collect())
            .unwrap_or_default();
        format!("[{}]", items.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(" "))
    };
    let lease = auth.get("lease_duration").and_then(Value::as_i64).unwrap_or(0);
    let mut rows = vec![
        ("token".to_string(), s("client_token")),
        ("token_accessor".into(), s("accessor")),
        ("token_duration".into(), if lease == 0 { "∞".into() } else { human_duration(lease) }),
        ("token_renewable".into(), s("renewable")),
        ("token_policies".into(), q("token_policies")),
        ("identity_policies".into(), q("identity_policies")),
        ("policies".into(), q("policies")),
    ];
    if let Some(meta) = auth.get("metadata").and_then(Value::as_object) {
        for (k, v) in meta {
            rows.push((format!("token_meta_{k}"), go_fmt(v)));
        }
    }
    rows
}

/// The table of a whole answer: lease, data (TTL-like fields as durations), auth.
pub fn secret_rows(resp: &Value) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    let lease = resp.get("lease_duration").and_then(Value::as_i64).unwrap_or(0);
    if lease > 0 {
        let id = resp.get("lease_id").and_then(Value::as_str).unwrap_or("");
        if id.is_empty() {
            // Vault's name for the lease of a KV v1 read, which has no lease to renew.
            rows.push(("refresh_interval".to_string(), human_duration(lease)));
        } else {
            rows.push(("lease_id".to_string(), id.to_string()));
            rows.push(("lease_duration".into(), human_duration(lease)));
            rows.push((
                "lease_renewable".into(),
                resp.get("renewable").map(go_fmt).unwrap_or_default(),
            ));
        }
    }
    if let Some(data) = resp.get("data").and_then(Value::as_object) {
        for (k, v) in data {
            let shown = match v.as_i64() {
                Some(secs) if is_ttl_key(k) => human_duration(secs),
                _ => cell(v),
            };
            rows.push((k.clone(), shown));
        }
    }
    if let Some(auth) = resp.get("auth").filter(|a| a.is_object()) {
        rows.extend(auth_rows(auth));
    }
    rows
}

pub fn print_warnings(resp: &Value) {
    let Some(w) = resp.get("warnings").and_then(Value::as_array).filter(|w| !w.is_empty()) else {
        return;
    };
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "WARNING! The following warnings were returned from Vault:\n");
    for item in w {
        for line in wrap(&format!("* {}", go_fmt(item)), 78) {
            let _ = writeln!(err, "  {line}");
        }
        let _ = writeln!(err);
    }
}

/// Greedy word wrap at `width` columns, as Vault wraps warnings.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        if !cur.is_empty() && cur.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// Prints one raw value for `-field`: strings as they are, anything else as `%v` (or JSON with
/// `-format=json`). Vault adds a newline only on a terminal, so scripts get the exact bytes.
pub fn print_field(v: &Value, format: &str) {
    let text = if format == "json" {
        serde_json::to_string_pretty(v).unwrap_or_default()
    } else {
        go_fmt(v)
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if std::io::stdout().is_terminal() {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

/// `-field=NAME` of an answer: data first, then the auth block's token fields.
pub fn field_of(resp: &Value, name: &str) -> Option<Value> {
    if let Some(v) = resp.get("data").and_then(|d| d.get(name)) {
        return Some(v.clone());
    }
    let auth = resp.get("auth").filter(|a| a.is_object())?;
    let key = match name {
        "token" => "client_token",
        "token_accessor" => "accessor",
        "token_duration" => {
            let lease = auth.get("lease_duration").and_then(Value::as_i64).unwrap_or(0);
            return Some(Value::String(if lease == 0 {
                "∞".into()
            } else {
                human_duration(lease)
            }));
        }
        "token_renewable" => "renewable",
        "token_policies" | "identity_policies" | "policies" => name,
        _ => return None,
    };
    auth.get(key).cloned()
}

/// Prints an answer as `-format`/`-field` ask. Returns the exit code.
pub fn output_secret(resp: &Value, format: &str, field: Option<&str>) -> i32 {
    if let Some(f) = field {
        return match field_of(resp, f) {
            Some(v) => {
                print_field(&v, format);
                OK
            }
            None => {
                eprintln!("Field \"{f}\" not present in map");
                USAGE
            }
        };
    }
    if format == "json" {
        println!("{}", secret_json(resp));
        return OK;
    }
    let rows = secret_rows(resp);
    if !rows.is_empty() {
        print_table(&rows);
        if resp.get("warnings").and_then(Value::as_array).is_some_and(|w| !w.is_empty()) {
            eprintln!();
        }
    }
    print_warnings(resp);
    OK
}

/// `Error <doing what>: <API error>`, exit 2.
pub fn api_failure(what: &str, e: &ApiError) -> i32 {
    eprintln!("Error {what}: {e}");
    API
}

/// Parses `key=value` arguments as Vault's CLI does: `@file` reads a file, `-` as the whole
/// argument list reads a JSON object from stdin, `key=-` reads the value from stdin.
pub fn parse_pairs(pairs: &[String]) -> Result<Map<String, Value>, String> {
    if pairs.len() == 1 && pairs[0] == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| format!("reading stdin: {e}"))?;
        return match serde_json::from_str::<Value>(&s) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err("stdin must hold a JSON object".into()),
            Err(e) => Err(format!("parsing JSON from stdin: {e}")),
        };
    }
    let mut m = Map::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("invalid key/value pair {p:?}: format must be key=value"))?;
        let v = if let Some(file) = v.strip_prefix('@') {
            std::fs::read_to_string(file).map_err(|e| format!("error reading file {file}: {e}"))?
        } else if v == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|e| e.to_string())?;
            s
        } else {
            v.to_string()
        };
        m.insert(k.to_string(), Value::String(v));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn headers_and_durations_match_vault() {
        assert_eq!(pad_equal_signs("Secret Path", "secret/data/cli/a".len()), "== Secret Path ==");
        assert_eq!(
            pad_equal_signs("Metadata Path", "secret/metadata/cli/a".len()),
            "=== Metadata Path ==="
        );
        assert_eq!(pad_equal_signs("Metadata", 24), "======= Metadata =======");
        assert_eq!(pad_equal_signs("Metadata", 33), "============ Metadata ============");
        assert_eq!(pad_equal_signs("Data", 10), "== Data ==");
        assert_eq!(human_duration(2764800), "768h");
        assert_eq!(human_duration(3600 * 767 + 59 * 60 + 59), "767h59m59s");
        assert_eq!(human_duration(5400), "1h30m");
        assert_eq!(human_duration(60), "1m");
        assert_eq!(human_duration(0), "0s");
    }

    #[test]
    fn go_formatting() {
        assert_eq!(go_fmt(&json!({"a": 2, "b": null})), "map[a:2 b:<nil>]");
        assert_eq!(go_fmt(&json!(["x", 1])), "[x 1]");
        assert_eq!(cell(&json!("")), "n/a");
    }

    #[test]
    fn secret_json_keeps_go_field_order_and_auth() {
        let r = json!({"request_id": "r", "data": null, "auth": {"client_token": "t", "policies": ["a"]}});
        let s = secret_json(&r);
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["auth"]["client_token"], "t");
        assert!(s.find("request_id").unwrap() < s.find("lease_id").unwrap());
        assert!(s.find("\"data\"").unwrap() < s.find("\"auth\"").unwrap());
    }
}
