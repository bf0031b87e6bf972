//! Vault's `tokenutil.TokenParams`: the `token_*` settings every auth method's users and roles
//! carry, how they are parsed from a request, shown on read, and turned into an [`Auth`].
//! Shared by userpass and approle.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::request::Auth;
use crate::transit::fields::Fields;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenParams {
    /// Stored and shown; not enforced (connection addresses do not reach backends yet).
    #[serde(default)]
    pub token_bound_cidrs: Vec<String>,
    #[serde(default)]
    pub token_explicit_max_ttl: u64,
    #[serde(default)]
    pub token_max_ttl: u64,
    #[serde(default)]
    pub token_no_default_policy: bool,
    #[serde(default)]
    pub token_num_uses: u64,
    #[serde(default)]
    pub token_period: u64,
    #[serde(default)]
    pub token_policies: Vec<String>,
    /// "default", "service" or "batch".
    #[serde(default)]
    pub token_type: String,
    #[serde(default)]
    pub token_ttl: u64,
    #[serde(default)]
    pub token_strictly_bind_ip: bool,
}

/// Parses one address or CIDR as Vault's `parseutil.ParseAddrs` does, and renders it as
/// go-sockaddr prints it (a single host keeps no prefix length).
pub fn parse_cidr(s: &str) -> std::result::Result<String, String> {
    let t = s.trim();
    let bad = || {
        format!("error parsing address \"{t}\": Unable to convert \"{t}\" to an IPv4 or IPv6 address, or a UNIX Socket")
    };
    let (ip, prefix) = match t.split_once('/') {
        Some((ip, p)) => (ip, Some(p.parse::<u8>().map_err(|_| bad())?)),
        None => (t, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match prefix {
        Some(p) if p > max => Err(bad()),
        Some(p) if p < max => Ok(format!("{ip}/{p}")),
        _ => Ok(ip.to_string()),
    }
}

pub fn parse_cidrs(items: &[String]) -> std::result::Result<Vec<String>, String> {
    items.iter().map(|s| parse_cidr(s)).collect()
}

/// Vault's `policyutil.SanitizePolicies`: trimmed, lowercased, no empties or duplicates,
/// sorted; `root` alone wins; `default` added when asked.
pub fn sanitize_policies(policies: &[String], add_default: bool) -> Vec<String> {
    let mut out: Vec<String> =
        policies.iter().map(|p| p.trim().to_lowercase()).filter(|p| !p.is_empty()).collect();
    if out.iter().any(|p| p == "root") {
        return vec!["root".to_string()];
    }
    if add_default && !out.iter().any(|p| p == "default") {
        out.push("default".to_string());
    }
    out.sort();
    out.dedup();
    out
}

fn bad(msg: impl Into<String>) -> Error {
    Error::BadRequest(msg.into())
}

impl TokenParams {
    /// `ParseTokenFields`: applies the `token_*` fields present in the request.
    pub fn parse(&mut self, f: &Fields) -> Result<()> {
        if let Some(cidrs) = f.comma_strings("token_bound_cidrs")? {
            self.token_bound_cidrs = parse_cidrs(&cidrs).map_err(bad)?;
        }
        if let Some(v) = f.duration_secs("token_explicit_max_ttl")? {
            self.token_explicit_max_ttl = v as u64;
        }
        if let Some(v) = f.duration_secs("token_max_ttl")? {
            self.token_max_ttl = v as u64;
        }
        if let Some(v) = f.bool("token_no_default_policy")? {
            self.token_no_default_policy = v;
        }
        if let Some(v) = f.duration_secs("token_period")? {
            self.token_period = v as u64;
        }
        if let Some(v) = f.comma_strings("token_policies")? {
            self.token_policies = v;
        }
        if let Some(t) = f.str("token_type")? {
            self.token_type = match t.as_str() {
                "" | "default" | "default-service" | "default-batch" => "default".into(),
                "service" => "service".into(),
                "batch" => "batch".into(),
                other => return Err(bad(format!("invalid 'token_type' value \"{other}\""))),
            };
        }
        if let Some(n) = f.int("token_num_uses")? {
            if n < 0 {
                return Err(bad("'token_num_uses' cannot be negative"));
            }
            self.token_num_uses = n as u64;
        }
        if self.token_type == "batch" {
            if self.token_period != 0 {
                return Err(bad("'token_type' cannot be 'batch' or 'default_batch' when set to generate periodic tokens"));
            }
            if self.token_num_uses != 0 {
                return Err(bad(
                    "'token_type' cannot be 'batch' or 'default_batch' when set to generate tokens with limited use count",
                ));
            }
        }
        if let Some(v) = f.duration_secs("token_ttl")? {
            self.token_ttl = v as u64;
        }
        if self.token_ttl > 0 && self.token_max_ttl > 0 && self.token_ttl > self.token_max_ttl {
            return Err(bad("'token_ttl' cannot be greater than 'token_max_ttl'"));
        }
        if let Some(v) = f.bool("token_strictly_bind_ip")? {
            self.token_strictly_bind_ip = v;
        }
        if self.token_strictly_bind_ip && !self.token_bound_cidrs.is_empty() {
            return Err(bad(
                "'token_strictly_bind_ip' conflicts with 'token_bound_cidrs'; set only one",
            ));
        }
        Ok(())
    }

    /// `PopulateTokenData`: the `token_*` fields of a read.
    pub fn populate(&self, m: &mut Map<String, Value>) {
        m.insert("token_bound_cidrs".into(), json!(self.token_bound_cidrs));
        m.insert("token_explicit_max_ttl".into(), json!(self.token_explicit_max_ttl));
        m.insert("token_max_ttl".into(), json!(self.token_max_ttl));
        m.insert("token_no_default_policy".into(), json!(self.token_no_default_policy));
        m.insert("token_num_uses".into(), json!(self.token_num_uses));
        m.insert("token_period".into(), json!(self.token_period));
        m.insert("token_policies".into(), json!(self.token_policies));
        m.insert("token_strictly_bind_ip".into(), json!(self.token_strictly_bind_ip));
        m.insert("token_ttl".into(), json!(self.token_ttl));
        let t = if self.token_type.is_empty() { "default" } else { self.token_type.as_str() };
        m.insert("token_type".into(), json!(t));
    }

    /// `PopulateTokenAuth` plus what Vault's core does with it: the token's policies are
    /// sanitised with `default` added unless `token_no_default_policy`, and the display name is
    /// the mount's path (without `auth/`, slashes as dashes) followed by `name`.
    pub fn to_auth(
        &self,
        mount_point: &str,
        name: &str,
        metadata: std::collections::BTreeMap<String, String>,
    ) -> Auth {
        let source = mount_point.strip_prefix("auth/").unwrap_or(mount_point).replace('/', "-");
        let display = format!("{source}{name}");
        Auth {
            policies: sanitize_policies(&self.token_policies, !self.token_no_default_policy),
            metadata,
            display_name: display.trim_end_matches('-').to_string(),
            ttl: self.token_ttl,
            max_ttl: self.token_max_ttl,
            period: self.token_period,
            explicit_max_ttl: self.token_explicit_max_ttl,
            num_uses: self.token_num_uses,
            renewable: true,
            orphan: true,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_render_like_go_sockaddr() {
        assert_eq!(parse_cidr("127.0.0.1/32").unwrap(), "127.0.0.1");
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap(), "10.0.0.0/8");
        assert_eq!(parse_cidr("::1").unwrap(), "::1");
        assert_eq!(
            parse_cidr("bad").unwrap_err(),
            "error parsing address \"bad\": Unable to convert \"bad\" to an IPv4 or IPv6 address, or a UNIX Socket"
        );
    }

    #[test]
    fn policies_sanitised() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(sanitize_policies(&p(&["b", " A ", "b", ""]), true), p(&["a", "b", "default"]));
        assert_eq!(sanitize_policies(&p(&["x", "root"]), true), p(&["root"]));
        assert_eq!(sanitize_policies(&p(&[]), false), Vec::<String>::new());
    }

    #[test]
    fn auth_display_name() {
        let t =
            TokenParams { token_policies: vec!["a".into()], token_ttl: 60, ..Default::default() };
        let a = t.to_auth("auth/userpass/", "alice", Default::default());
        assert_eq!(a.display_name, "userpass-alice");
        assert_eq!(a.policies, vec!["a", "default"]);
        assert_eq!(t.to_auth("auth/approle/", "", Default::default()).display_name, "approle");
        assert_eq!(
            t.to_auth("auth/team/up/", "bob", Default::default()).display_name,
            "team-up-bob"
        );
    }
}
