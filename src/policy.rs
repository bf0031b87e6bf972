//! ACL policies: Vault's policy language and the compiled ACL a token is checked against.
//!
//! A policy is HCL (or its JSON form): `path "<pattern>" { capabilities = [...] }` blocks, or the
//! legacy `policy = "read|write|deny|sudo"`. A pattern is exact (`secret/data/app`), a prefix
//! (trailing `*`), or has `+` segments that match exactly one path segment.
//!
//! [`Acl`] is the union of a token's policies, built once per policy set (see
//! `policy_store`). Lookups follow Vault's rules:
//! 1. an exact rule wins;
//! 2. for a LIST, the exact rule of the path without its trailing `/`, then the non-exact rules
//!    for that path;
//! 3. otherwise the highest-priority non-exact rule, by Vault's ordering: the later the first
//!    `+`/`*`, the better; not a prefix beats a prefix; fewer `+` segments; longer pattern;
//!    lexicographically greater pattern.
//!
//! Rules for the same pattern from several policies merge: capabilities are unioned, except that
//! `deny` anywhere makes the pattern deny-only.
//!
//! Only the parsing and the evaluation live here; storage and caching are in `policy_store`.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::{Map, Value};

/// Capability bits, in Vault's order.
pub mod caps {
    pub const DENY: u32 = 1;
    pub const CREATE: u32 = 1 << 1;
    pub const READ: u32 = 1 << 2;
    pub const UPDATE: u32 = 1 << 3;
    pub const DELETE: u32 = 1 << 4;
    pub const LIST: u32 = 1 << 5;
    pub const SUDO: u32 = 1 << 6;
    pub const PATCH: u32 = 1 << 7;
    /// OpenBao's `scan`; accepted so OpenBao policies parse.
    pub const SCAN: u32 = 1 << 8;
}

/// The built-in policy that grants everything; it has no rules and cannot be changed.
pub const ROOT_POLICY: &str = "root";
/// The policy attached to tokens by default; stored, editable, not deletable.
pub const DEFAULT_POLICY: &str = "default";

/// OpenBao's default policy text (the same as Vault's, less Enterprise-only paths).
pub const DEFAULT_POLICY_TEXT: &str = r#"
# Allow tokens to look up their own properties
path "auth/token/lookup-self" {
    capabilities = ["read"]
}

# Allow tokens to renew themselves
path "auth/token/renew-self" {
    capabilities = ["update"]
}

# Allow tokens to revoke themselves
path "auth/token/revoke-self" {
    capabilities = ["update"]
}

# Allow a token to look up its own capabilities on a path
path "sys/capabilities-self" {
    capabilities = ["update"]
}

# Allow a token to look up its own entity by id or name
path "identity/entity/id/{{identity.entity.id}}" {
  capabilities = ["read"]
}
path "identity/entity/name/{{identity.entity.name}}" {
  capabilities = ["read"]
}


# Allow a token to look up its resultant ACL from all policies. This is useful
# for UIs. It is an internal path because the format may change at any time
# based on how the internal ACL features and capabilities change.
path "sys/internal/ui/resultant-acl" {
    capabilities = ["read"]
}

# Allow a token to renew a lease via lease_id in the request body; old path for
# old clients, new path for newer
path "sys/leases/renew" {
    capabilities = ["update"]
}

# Allow looking up lease properties. This requires knowing the lease ID ahead
# of time and does not divulge any sensitive information.
path "sys/leases/lookup" {
    capabilities = ["update"]
}

# Allow a token to manage its own cubbyhole
path "cubbyhole/*" {
    capabilities = ["create", "read", "update", "delete", "list"]
}

# Allow a token to wrap arbitrary values in a response-wrapping token
path "sys/wrapping/wrap" {
    capabilities = ["update"]
}

# Allow a token to look up the creation time and TTL of a given
# response-wrapping token
path "sys/wrapping/lookup" {
    capabilities = ["update"]
}

# Allow a token to unwrap a response-wrapping token. This is a convenience to
# avoid client token swapping since this is also part of the response wrapping
# policy.
path "sys/wrapping/unwrap" {
    capabilities = ["update"]
}

# Allow general purpose tools
path "sys/tools/hash" {
    capabilities = ["update"]
}
path "sys/tools/hash/*" {
    capabilities = ["update"]
}

# Allow a token to make requests to the Authorization Endpoint for OIDC providers.
path "identity/oidc/provider/+/authorize" {
    capabilities = ["read", "update"]
}
"#;

/// Upper bound on path blocks in one policy: a policy is configuration, not data, and the ACL
/// built from it is held in memory for every policy set that uses it.
const MAX_RULES: usize = 10_000;

/// What a request asks of a path. `Update` becomes `Create` when the backend's existence check
/// says the target does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    List,
    Create,
    Update,
    Delete,
    Patch,
}

impl Op {
    fn bit(self) -> u32 {
        match self {
            Op::Read => caps::READ,
            Op::List => caps::LIST,
            Op::Create => caps::CREATE,
            Op::Update => caps::UPDATE,
            Op::Delete => caps::DELETE,
            Op::Patch => caps::PATCH,
        }
    }
}

/// What a rule grants on its paths.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Permissions {
    pub caps: u32,
    /// Parameter name (lowercase) → allowed values; an empty list allows any value.
    pub allowed_parameters: Option<HashMap<String, Vec<Value>>>,
    pub denied_parameters: Option<HashMap<String, Vec<Value>>>,
    pub required_parameters: Vec<String>,
    /// Set by `min_wrapping_ttl`/`max_wrapping_ttl`. vaultd does not wrap responses, so such a
    /// rule can never be satisfied, which is what Vault does for an unwrapped request.
    pub requires_wrapping: bool,
}

impl Permissions {
    fn merge(&mut self, other: &Permissions) {
        if self.caps & caps::DENY != 0 {
            return;
        }
        if other.caps & caps::DENY != 0 {
            *self = Permissions { caps: caps::DENY, ..Default::default() };
            return;
        }
        self.caps |= other.caps;
        merge_params(&mut self.allowed_parameters, &other.allowed_parameters);
        merge_params(&mut self.denied_parameters, &other.denied_parameters);
        for p in &other.required_parameters {
            if !self.required_parameters.contains(p) {
                self.required_parameters.push(p.clone());
            }
        }
        self.requires_wrapping |= other.requires_wrapping;
    }
}

/// Vault's merge of parameter constraints: an empty list (any value) wins, else values append.
fn merge_params(
    into: &mut Option<HashMap<String, Vec<Value>>>,
    from: &Option<HashMap<String, Vec<Value>>>,
) {
    let Some(from) = from else { return };
    if from.is_empty() {
        return;
    }
    let into = into.get_or_insert_with(HashMap::new);
    for (k, v) in from {
        match into.get_mut(k) {
            Some(existing) if existing.is_empty() => {}
            Some(_) if v.is_empty() => {
                into.insert(k.clone(), Vec::new());
            }
            Some(existing) => existing.extend(v.iter().cloned()),
            None => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

/// One `path` block, normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct PathRule {
    /// Without a leading `/`. For a plain prefix rule, without the trailing `*`; a rule with `+`
    /// segments keeps its `*`.
    pub path: String,
    pub is_prefix: bool,
    pub has_segment_wildcards: bool,
    /// Uses identity templating (`{{identity.entity.id}}`). vaultd has no identity store, so
    /// like Vault for a token without an entity, such rules grant nothing.
    pub templated: bool,
    pub perms: Permissions,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    /// The text as written; reads return it unchanged.
    pub raw: String,
    pub rules: Vec<PathRule>,
}

/// Parses a policy. The error is the message Vault returns (400) for invalid policy text.
pub fn parse(name: &str, raw: &str) -> Result<Policy, String> {
    let blocks =
        if raw.trim_start().starts_with('{') { json_blocks(raw)? } else { hcl_blocks(raw)? };
    if blocks.len() > MAX_RULES {
        return Err(format!("failed to parse policy: more than {MAX_RULES} path blocks"));
    }
    let mut rules = Vec::with_capacity(blocks.len());
    for (key, body) in blocks {
        rules.push(parse_rule(&key, &body).map_err(|e| format!("failed to parse policy: {e}"))?);
    }
    Ok(Policy { name: name.to_string(), raw: raw.to_string(), rules })
}

/// One `path` block before validation: its pattern and its body as JSON.
type RawRule = (String, Map<String, Value>);

/// The `path` blocks of HCL policy text.
fn hcl_blocks(raw: &str) -> Result<Vec<RawRule>, String> {
    let body = hcl::parse(raw)
        .map_err(|e| format!("failed to parse policy: {}", e.to_string().trim_start()))?;
    let mut out = Vec::new();
    for structure in body.into_inner() {
        match structure {
            hcl::Structure::Attribute(attr) => {
                // `name = "..."` is allowed at the top level and ignored, as in Vault.
                if attr.key.as_str() != "name" {
                    return Err(format!(
                        "failed to parse policy: invalid key {:?}",
                        attr.key.as_str()
                    ));
                }
            }
            hcl::Structure::Block(block) => {
                if block.identifier.as_str() != "path" {
                    return Err(format!(
                        "failed to parse policy: invalid key {:?}",
                        block.identifier.as_str()
                    ));
                }
                let [label] = block.labels.as_slice() else {
                    return Err(
                        "failed to parse policy: a path block needs exactly one path".into()
                    );
                };
                let key = label.as_str().to_string();
                let mut m = Map::new();
                for s in block.body.into_inner() {
                    match s {
                        hcl::Structure::Attribute(a) => {
                            m.insert(
                                a.key.as_str().to_string(),
                                expr_to_json(a.expr).map_err(|e| format!("path {key:?}: {e}"))?,
                            );
                        }
                        // HCL1's `allowed_parameters { ... }` block form of an object attribute.
                        hcl::Structure::Block(b) => {
                            let mut obj = Map::new();
                            for inner in b.body.into_inner() {
                                if let hcl::Structure::Attribute(a) = inner {
                                    obj.insert(
                                        a.key.as_str().to_string(),
                                        expr_to_json(a.expr)
                                            .map_err(|e| format!("path {key:?}: {e}"))?,
                                    );
                                }
                            }
                            m.insert(b.identifier.as_str().to_string(), Value::Object(obj));
                        }
                    }
                }
                out.push((key, m));
            }
        }
    }
    Ok(out)
}

fn expr_to_json(e: hcl::Expression) -> Result<Value, String> {
    Ok(match e {
        hcl::Expression::Null => Value::Null,
        hcl::Expression::Bool(b) => Value::Bool(b),
        hcl::Expression::Number(n) => serde_json::to_value(n).map_err(|e| e.to_string())?,
        hcl::Expression::String(s) => Value::String(s),
        hcl::Expression::Array(a) => {
            Value::Array(a.into_iter().map(expr_to_json).collect::<Result<_, _>>()?)
        }
        hcl::Expression::Object(o) => {
            let mut m = Map::new();
            for (k, v) in o {
                let key = match k {
                    hcl::ObjectKey::Identifier(i) => i.to_string(),
                    hcl::ObjectKey::Expression(hcl::Expression::String(s)) => s,
                    hcl::ObjectKey::Expression(other) => {
                        return Err(format!("unsupported object key {other}"))
                    }
                    _ => return Err("unsupported object key".into()),
                };
                m.insert(key, expr_to_json(v)?);
            }
            Value::Object(m)
        }
        // A quoted string that looks like a template (`"${...}"`): Vault's HCL 1 has no
        // templates, so keep the text as written.
        hcl::Expression::TemplateExpr(t) => Value::String(t.to_string()),
        other => return Err(format!("unsupported expression {other}")),
    })
}

/// The JSON form: `{"path": {"<pattern>": {...}, ...}}` or `{"path": [{"<pattern>": {...}}]}`.
fn json_blocks(raw: &str) -> Result<Vec<RawRule>, String> {
    let v: Value = serde_json::from_str(raw).map_err(|e| format!("failed to parse policy: {e}"))?;
    let Value::Object(top) = v else {
        return Err("failed to parse policy: does not contain a root object".into());
    };
    let mut out = Vec::new();
    for (k, v) in top {
        match k.as_str() {
            "name" => {}
            "path" => {
                let items: Vec<Value> = match v {
                    Value::Array(a) => a,
                    other => vec![other],
                };
                for item in items {
                    let Value::Object(paths) = item else {
                        return Err("failed to parse policy: path must be an object".into());
                    };
                    for (p, body) in paths {
                        let bodies = match body {
                            Value::Array(a) => a,
                            other => vec![other],
                        };
                        for b in bodies {
                            let Value::Object(b) = b else {
                                return Err(format!(
                                    "failed to parse policy: path {p:?}: must be an object"
                                ));
                            };
                            out.push((p.clone(), b));
                        }
                    }
                }
            }
            other => return Err(format!("failed to parse policy: invalid key {other:?}")),
        }
    }
    Ok(out)
}

const VALID_RULE_KEYS: &[&str] = &[
    "comment",
    "policy",
    "capabilities",
    "allowed_parameters",
    "denied_parameters",
    "required_parameters",
    "min_wrapping_ttl",
    "max_wrapping_ttl",
    "mfa_methods",
    "pagination_limit",
    "expiration",
    "list_scan_response_keys_filter_path",
    "control_group",
];

fn parse_rule(key: &str, body: &Map<String, Value>) -> Result<PathRule, String> {
    for k in body.keys() {
        if !VALID_RULE_KEYS.contains(&k.as_str()) {
            return Err(format!("path {key:?}: invalid key {k:?}"));
        }
    }
    let mut path = key.strip_prefix('/').unwrap_or(key).to_string();
    if path.contains("+*") {
        return Err(format!("path {path:?}: invalid use of wildcards ('+*' is forbidden)"));
    }
    let has_segment_wildcards = path == "+" || path.contains("/+") || path.starts_with("+/");
    let mut is_prefix = false;
    if path.ends_with('*') {
        is_prefix = true;
        // A rule with `+` segments keeps its `*`: the matcher reads it from the pattern.
        if !has_segment_wildcards {
            path.pop();
        }
    }
    let templated = path.contains("{{");

    let mut names: Vec<String> = Vec::new();
    match body.get("capabilities") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for c in a {
                match c {
                    Value::String(s) => names.push(s.clone()),
                    other => return Err(format!("path {key:?}: invalid capability {other}")),
                }
            }
        }
        Some(_) => return Err(format!("path {key:?}: capabilities must be a list of strings")),
    }
    if let Some(p) = body.get("policy") {
        let p = p.as_str().ok_or_else(|| format!("path {key:?}: policy must be a string"))?;
        match p {
            "deny" => names = vec!["deny".into()],
            "read" => names.extend(["read", "list"].map(String::from)),
            "write" => {
                names.extend(["create", "read", "update", "delete", "list"].map(String::from))
            }
            "sudo" => names
                .extend(["create", "read", "update", "delete", "list", "sudo"].map(String::from)),
            other => return Err(format!("path {key:?}: invalid policy {other:?}")),
        }
    }
    let mut bits = 0u32;
    for name in &names {
        let bit = match name.as_str() {
            "deny" => {
                bits = caps::DENY;
                break;
            }
            "create" => caps::CREATE,
            "read" => caps::READ,
            "update" => caps::UPDATE,
            "delete" => caps::DELETE,
            "list" => caps::LIST,
            "sudo" => caps::SUDO,
            "patch" => caps::PATCH,
            "scan" => caps::SCAN,
            other => {
                return Err(format!("path {key:?}: path {key:?}: invalid capability {other:?}"))
            }
        };
        bits |= bit;
    }

    let mut perms = Permissions { caps: bits, ..Default::default() };
    if bits & caps::DENY == 0 {
        perms.allowed_parameters = param_map(key, body.get("allowed_parameters"))?;
        perms.denied_parameters = param_map(key, body.get("denied_parameters"))?;
        if let Some(v) = body.get("required_parameters") {
            let a = v
                .as_array()
                .ok_or_else(|| format!("path {key:?}: required_parameters must be a list"))?;
            for p in a {
                perms.required_parameters.push(
                    p.as_str()
                        .ok_or_else(|| {
                            format!("path {key:?}: required_parameters must be strings")
                        })?
                        .to_string(),
                );
            }
        }
        let min = wrapping_ttl(key, body.get("min_wrapping_ttl"), "min_wrapping_ttl")?;
        let max = wrapping_ttl(key, body.get("max_wrapping_ttl"), "max_wrapping_ttl")?;
        if min != 0 && max != 0 && max < min {
            return Err("max_wrapping_ttl cannot be less than min_wrapping_ttl".into());
        }
        perms.requires_wrapping = min > 0 || max > 0;
    }
    Ok(PathRule { path, is_prefix, has_segment_wildcards, templated, perms })
}

fn param_map(key: &str, v: Option<&Value>) -> Result<Option<HashMap<String, Vec<Value>>>, String> {
    let Some(v) = v else { return Ok(None) };
    // HCL 1 decodes a repeated block as a list of objects; accept both forms.
    let objs: Vec<&Map<String, Value>> = match v {
        Value::Object(o) => vec![o],
        Value::Array(a) => a.iter().filter_map(Value::as_object).collect(),
        _ => return Err(format!("path {key:?}: parameters must be an object")),
    };
    let mut out = HashMap::new();
    for o in objs {
        for (name, values) in o {
            let list = match values {
                Value::Array(a) => a.clone(),
                Value::Null => Vec::new(),
                other => vec![other.clone()],
            };
            out.insert(name.to_lowercase(), list);
        }
    }
    Ok(Some(out))
}

fn wrapping_ttl(key: &str, v: Option<&Value>, what: &str) -> Result<u64, String> {
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(v) => {
            parse_duration_value(v).map_err(|e| format!("path {key:?}: error parsing {what}: {e}"))
        }
    }
}

/// Vault's `ParseDurationSecond`: a number of seconds, or a duration string (`"1h"`, `"90"`).
pub fn parse_duration_value(v: &Value) -> Result<u64, String> {
    match v {
        Value::Null => Ok(0),
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .ok_or_else(|| format!("invalid duration {n}")),
        Value::String(s) if s.trim().is_empty() => Ok(0),
        Value::String(s) => crate::config::parse_duration(s.trim()).map(|d| d.as_secs()),
        other => Err(format!("invalid duration {other}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The compiled ACL

/// Longest-prefix lookup over the prefix rules: a byte trie, so a lookup costs one step per
/// byte of the request path whatever the number of rules.
#[derive(Debug, Default)]
struct PrefixTrie {
    nodes: Vec<TrieNode>,
    values: Vec<(String, Permissions)>,
}

#[derive(Debug, Default)]
struct TrieNode {
    /// Sorted by byte; children are few, so a binary search beats a map.
    edges: Vec<(u8, u32)>,
    value: Option<u32>,
}

impl PrefixTrie {
    fn new() -> Self {
        PrefixTrie { nodes: vec![TrieNode::default()], values: Vec::new() }
    }

    fn insert_or_merge(&mut self, key: &str, perms: &Permissions) {
        let mut node = 0usize;
        for &b in key.as_bytes() {
            let edges = &self.nodes[node].edges;
            node = match edges.binary_search_by_key(&b, |e| e.0) {
                Ok(i) => edges[i].1 as usize,
                Err(i) => {
                    let next = self.nodes.len() as u32;
                    self.nodes.push(TrieNode::default());
                    self.nodes[node].edges.insert(i, (b, next));
                    next as usize
                }
            };
        }
        match self.nodes[node].value {
            Some(v) => self.values[v as usize].1.merge(perms),
            None => {
                self.nodes[node].value = Some(self.values.len() as u32);
                self.values.push((key.to_string(), perms.clone()));
            }
        }
    }

    /// The longest rule that is a prefix of `path`: (its length, its permissions).
    fn longest(&self, path: &str) -> Option<(usize, &Permissions)> {
        let mut node = 0usize;
        let mut best = self.nodes[0].value.map(|v| (0usize, v));
        for (i, &b) in path.as_bytes().iter().enumerate() {
            let edges = &self.nodes[node].edges;
            match edges.binary_search_by_key(&b, |e| e.0) {
                Ok(j) => node = edges[j].1 as usize,
                Err(_) => break,
            }
            if let Some(v) = self.nodes[node].value {
                best = Some((i + 1, v));
            }
        }
        best.map(|(len, v)| (len, &self.values[v as usize].1))
    }
}

/// The union of a token's policies, ready to answer "may this token do that".
#[derive(Debug)]
pub struct Acl {
    root: bool,
    exact: HashMap<String, Permissions>,
    prefix: PrefixTrie,
    /// Patterns with `+` segments, keeping a trailing `*` when they have one.
    segment: Vec<(String, Permissions)>,
}

/// The outcome of [`Acl::allow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decision {
    pub allowed: bool,
    /// The matching rule grants `sudo` (or the token is root): enough for root-protected paths.
    pub sudo: bool,
    pub is_root: bool,
}

/// A matching non-exact rule: `'p` borrows the pattern (from the request path for a prefix
/// rule), `'a` the ACL.
struct Candidate<'p, 'a> {
    first_wildcard: usize,
    is_prefix: bool,
    wildcards: usize,
    pattern: &'p str,
    perms: &'a Permissions,
}

/// Vault's priority between matching non-exact rules; `Greater` means `a` wins.
fn priority(a: &Candidate<'_, '_>, b: &Candidate<'_, '_>) -> Ordering {
    a.first_wildcard
        .cmp(&b.first_wildcard)
        .then_with(|| b.is_prefix.cmp(&a.is_prefix))
        .then_with(|| b.wildcards.cmp(&a.wildcards))
        .then_with(|| a.pattern.len().cmp(&b.pattern.len()))
        .then_with(|| a.pattern.cmp(b.pattern))
}

impl Acl {
    /// The ACL of a set of policies. A set containing `root` grants everything.
    pub fn new(policies: &[&Policy]) -> Acl {
        let mut acl = Acl {
            root: false,
            exact: HashMap::new(),
            prefix: PrefixTrie::new(),
            segment: Vec::new(),
        };
        for p in policies {
            if p.name == ROOT_POLICY {
                acl.root = true;
            }
            for r in &p.rules {
                if r.templated {
                    continue;
                }
                if r.has_segment_wildcards {
                    match acl.segment.iter_mut().find(|(k, _)| *k == r.path) {
                        Some((_, existing)) => existing.merge(&r.perms),
                        None => acl.segment.push((r.path.clone(), r.perms.clone())),
                    }
                } else if r.is_prefix {
                    acl.prefix.insert_or_merge(&r.path, &r.perms);
                } else {
                    match acl.exact.get_mut(&r.path) {
                        Some(existing) => existing.merge(&r.perms),
                        None => {
                            acl.exact.insert(r.path.clone(), r.perms.clone());
                        }
                    }
                }
            }
        }
        acl
    }

    pub fn root() -> Acl {
        Acl { root: true, exact: HashMap::new(), prefix: PrefixTrie::new(), segment: Vec::new() }
    }

    pub fn is_root(&self) -> bool {
        self.root
    }

    /// The permissions that govern `path` for `op`, or `None` when no rule matches.
    fn permissions(&self, path: &str, list: bool) -> Option<&Permissions> {
        let path = path.trim_start_matches('/');
        if let Some(p) = self.exact.get(path) {
            return Some(p);
        }
        if list {
            let trimmed = path.strip_suffix('/');
            if let Some(p) = trimmed.and_then(|t| self.exact.get(t)) {
                return Some(p);
            }
            // A LIST also tries the path without its slash against the non-exact rules, so a
            // rule like `secret/metadata/app*` governs `LIST secret/metadata/app/`.
            if let Some(t) = trimmed {
                if let Some(p) = self.non_exact(t) {
                    return Some(p);
                }
            }
        }
        self.non_exact(path)
    }

    fn non_exact<'a>(&'a self, path: &str) -> Option<&'a Permissions> {
        let prefix = self.prefix.longest(path);
        if self.segment.is_empty() {
            return prefix.map(|(_, p)| p);
        }
        let mut best: Option<Candidate<'_, 'a>> = prefix.map(|(len, perms)| Candidate {
            first_wildcard: len,
            is_prefix: true,
            wildcards: 0,
            pattern: &path[..len],
            perms,
        });
        for (full, perms) in &self.segment {
            if let Some(c) = segment_match(full, perms, path) {
                best = match best {
                    Some(b) if priority(&b, &c) != Ordering::Less => Some(b),
                    _ => Some(c),
                };
            }
        }
        best.map(|c| c.perms)
    }

    /// Whether the token may perform `op` on `path` with request parameters `data`.
    pub fn allow(&self, op: Op, path: &str, data: &Map<String, Value>) -> Decision {
        if self.root {
            return Decision { allowed: true, sudo: true, is_root: true };
        }
        let Some(perms) = self.permissions(path, op == Op::List) else {
            return Decision::default();
        };
        let sudo = perms.caps & caps::SUDO != 0;
        if perms.caps & caps::DENY != 0 || perms.caps & op.bit() == 0 || perms.requires_wrapping {
            return Decision { allowed: false, sudo, is_root: false };
        }
        let allowed = match op {
            Op::Read | Op::Update | Op::Create | Op::Patch => parameters_allowed(perms, data),
            _ => true,
        };
        Decision { allowed, sudo, is_root: false }
    }

    /// The capability bits that govern a non-LIST request on `path` (0 when nothing matches).
    pub fn capability_bits_exact(&self, path: &str) -> u32 {
        if self.root {
            return u32::MAX;
        }
        self.permissions(path, false).map_or(0, |p| p.caps)
    }

    /// The capability bits that govern `path` (0 when nothing matches), looked up as Vault's
    /// capabilities endpoints do (with the LIST fallbacks).
    pub fn capability_bits(&self, path: &str) -> u32 {
        self.permissions(path, true).map_or(0, |p| p.caps)
    }

    /// Vault's `Capabilities`: the names granted on `path`, sorted; `["root"]` for a root token
    /// and `["deny"]` when nothing (or an explicit deny) applies.
    pub fn capabilities(&self, path: &str) -> Vec<String> {
        if self.root {
            return vec!["root".into()];
        }
        let bits = self.capability_bits(path);
        if bits & caps::DENY != 0 {
            return vec!["deny".into()];
        }
        let mut out: Vec<String> = [
            (caps::CREATE, "create"),
            (caps::DELETE, "delete"),
            (caps::LIST, "list"),
            (caps::PATCH, "patch"),
            (caps::READ, "read"),
            (caps::SCAN, "scan"),
            (caps::SUDO, "sudo"),
            (caps::UPDATE, "update"),
        ]
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| n.to_string())
        .collect();
        if out.is_empty() {
            out.push("deny".into());
        }
        out
    }

    /// Vault's `hasMountAccess`: does any rule grant something at or below the mount `path`
    /// (which ends with `/`)? Used by the UI mount preflight.
    pub fn has_mount_access(&self, path: &str) -> bool {
        if self.root {
            return true;
        }
        let granted = |p: &Permissions| p.caps & caps::DENY == 0 && p.caps != 0;
        let bits = self.capability_bits(path);
        if bits & caps::DENY == 0 && bits != 0 {
            return true;
        }
        if self.exact.iter().any(|(k, p)| k.starts_with(path) && granted(p)) {
            return true;
        }
        if self.prefix.values.iter().any(|(k, p)| k.starts_with(path) && granted(p)) {
            return true;
        }
        let parts: Vec<&str> = path.split('/').collect();
        for (full, perms) in &self.segment {
            if !granted(perms) || parts.len() < 2 {
                continue;
            }
            let (pattern, is_prefix) = match full.strip_suffix('*') {
                Some(p) => (p, true),
                None => (full.as_str(), false),
            };
            let wc: Vec<&str> = pattern.split('/').collect();
            let mut segments: Vec<&str> = Vec::new();
            for (i, part) in wc.iter().enumerate() {
                let Some(seg) = parts.get(i) else { break };
                if *part == "+"
                    || part == seg
                    || (is_prefix && i + 1 == wc.len() && seg.starts_with(part))
                {
                    segments.push(seg);
                }
                if i == parts.len() - 2 {
                    let joined = format!("{}/", segments.join("/"));
                    if joined.starts_with(path) {
                        return true;
                    }
                    break;
                }
            }
        }
        false
    }
}

/// Matches a `+` pattern against `path`; the candidate carries what the priority rules need.
fn segment_match<'a>(
    full: &'a str,
    perms: &'a Permissions,
    path: &str,
) -> Option<Candidate<'a, 'a>> {
    if full.is_empty() {
        return None;
    }
    let first_wildcard = full.find('+').unwrap_or(full.len());
    let (pattern, is_prefix) = match full.strip_suffix('*') {
        Some(p) => (p, true),
        None => (full, false),
    };
    let wc_count = pattern.split('/').count();
    let path_count = path.split('/').count();
    if path_count < wc_count || (!is_prefix && wc_count != path_count) {
        return None;
    }
    let mut wildcards = 0;
    for (i, (part, seg)) in pattern.split('/').zip(path.split('/')).enumerate() {
        if part == "+" {
            wildcards += 1;
        } else if part == seg || (is_prefix && i + 1 == wc_count && seg.starts_with(part)) {
        } else {
            return None;
        }
    }
    Some(Candidate { first_wildcard, is_prefix, wildcards, pattern, perms })
}

/// Vault's parameter constraints: required, then denied, then allowed.
fn parameters_allowed(perms: &Permissions, data: &Map<String, Value>) -> bool {
    for p in &perms.required_parameters {
        if !data.contains_key(&p.to_lowercase()) {
            return false;
        }
    }
    if data.is_empty() {
        return true;
    }
    if let Some(denied) = &perms.denied_parameters {
        if !denied.is_empty() {
            if denied.contains_key("*") {
                return false;
            }
            for (k, v) in data {
                if let Some(list) = denied.get(&k.to_lowercase()) {
                    if value_in_list(v, list) {
                        return false;
                    }
                }
            }
        }
    }
    let Some(allowed) = &perms.allowed_parameters else { return true };
    if allowed.is_empty() {
        return true;
    }
    let allow_all = allowed.contains_key("*");
    if allowed.len() == 1 && allow_all {
        return true;
    }
    for (k, v) in data {
        match allowed.get(&k.to_lowercase()) {
            None if !allow_all => return false,
            Some(list) if !value_in_list(v, list) => return false,
            _ => {}
        }
    }
    true
}

fn value_in_list(v: &Value, list: &[Value]) -> bool {
    if list.is_empty() {
        return true;
    }
    list.iter().any(|el| match (el, v) {
        (Value::String(pattern), Value::String(s)) => glob_match(pattern, s),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    })
}

/// Vault's `GlobbedStringsMatch`: `*` only at the start and/or the end.
fn glob_match(pattern: &str, s: &str) -> bool {
    if pattern.len() < 2 {
        return s == pattern;
    }
    match (pattern.strip_prefix('*'), pattern.strip_suffix('*')) {
        (Some(_), Some(_)) => s.contains(&pattern[1..pattern.len() - 1]),
        (Some(suffix), None) => s.ends_with(suffix),
        (None, Some(prefix)) => s.starts_with(prefix),
        (None, None) => s == pattern,
    }
}

/// Normalises a policy name as Vault does (trimmed, lowercase) and rejects names that cannot be
/// stored or addressed.
pub fn normalize_name(name: &str) -> Result<String, String> {
    let n = name.trim().to_lowercase();
    if n.is_empty() {
        return Err("policy name must be provided".into());
    }
    if n.len() > 512 || n.chars().any(char::is_control) || n == "." || n == ".." {
        return Err(format!("invalid policy name {name:?}"));
    }
    Ok(n)
}

/// Vault's `SanitizePolicies`: trimmed, lowercase, no empty names, no duplicates, sorted, with
/// `default` added on request; a set containing `root` is just `root`.
pub fn sanitize(policies: &[String], add_default: bool) -> Vec<String> {
    let mut out: Vec<String> =
        policies.iter().map(|p| p.trim().to_lowercase()).filter(|p| !p.is_empty()).collect();
    if out.iter().any(|p| p == ROOT_POLICY) {
        return vec![ROOT_POLICY.to_string()];
    }
    if add_default {
        out.push(DEFAULT_POLICY.to_string());
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(texts: &[&str]) -> Acl {
        let policies: Vec<Policy> =
            texts.iter().enumerate().map(|(i, t)| parse(&format!("p{i}"), t).unwrap()).collect();
        let refs: Vec<&Policy> = policies.iter().collect();
        Acl::new(&refs)
    }

    fn can(a: &Acl, op: Op, path: &str) -> bool {
        a.allow(op, path, &Map::new()).allowed
    }

    #[test]
    fn parses_capabilities_and_legacy_policy() {
        let p = parse(
            "x",
            r#"path "secret/*" { capabilities = ["read", "list"] }
            path "/sys/mounts" { policy = "write" }
            path "a" {
                policy = "deny"
                capabilities = ["read"]
            }"#,
        )
        .unwrap();
        assert_eq!(p.rules.len(), 3);
        assert_eq!(p.rules[0].path, "secret/");
        assert!(p.rules[0].is_prefix);
        assert_eq!(p.rules[0].perms.caps, caps::READ | caps::LIST);
        assert_eq!(p.rules[1].path, "sys/mounts");
        assert_eq!(
            p.rules[1].perms.caps,
            caps::CREATE | caps::READ | caps::UPDATE | caps::DELETE | caps::LIST
        );
        assert_eq!(p.rules[2].perms.caps, caps::DENY);
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let e = parse("x", r#"path "secret/*" { capabilities = ["read"] "#).unwrap_err();
        assert!(e.starts_with("failed to parse policy: "), "{e}");
        let e = parse("x", r#"path "secret/*" { capabilities = ["reed"] }"#).unwrap_err();
        assert!(e.contains(r#"invalid capability "reed""#), "{e}");
        let e = parse("x", r#"path "secret/*" { foo = 1 }"#).unwrap_err();
        assert!(e.contains(r#"invalid key "foo""#), "{e}");
        let e = parse("x", r#"foo "secret/*" { capabilities = ["read"] }"#).unwrap_err();
        assert!(e.contains(r#"invalid key "foo""#), "{e}");
        let e = parse("x", r#"path "a/+*" { capabilities = ["read"] }"#).unwrap_err();
        assert!(e.contains("'+*' is forbidden"), "{e}");
        let e = parse("x", r#"path "a" { policy = "admin" }"#).unwrap_err();
        assert!(e.contains(r#"invalid policy "admin""#), "{e}");
    }

    #[test]
    fn json_policies_parse() {
        let p = parse(
            "x",
            r#"{"path": {"secret/*": {"capabilities": ["read"]}, "a/b": {"policy": "write"}}}"#,
        )
        .unwrap();
        assert_eq!(p.rules.len(), 2);
        let a = acl(&[r#"{"path": [{"kv/+/x": {"capabilities": ["list"]}}]}"#]);
        assert!(can(&a, Op::List, "kv/q/x"));
    }

    #[test]
    fn default_policy_parses() {
        let p = parse(DEFAULT_POLICY, DEFAULT_POLICY_TEXT).unwrap();
        let a = Acl::new(&[&p]);
        assert!(can(&a, Op::Read, "auth/token/lookup-self"));
        assert!(can(&a, Op::Update, "auth/token/renew-self"));
        assert!(can(&a, Op::Create, "cubbyhole/foo"));
        assert!(can(&a, Op::Read, "identity/oidc/provider/my-provider/authorize"));
        assert!(
            !can(&a, Op::Read, "identity/entity/id/{{identity.entity.id}}"),
            "templated rules grant nothing without identity"
        );
        assert!(!can(&a, Op::Read, "secret/data/x"));
        assert!(!can(&a, Op::Update, "auth/token/lookup-self"));
    }

    #[test]
    fn exact_prefix_and_deny() {
        let a = acl(&[r#"path "secret/*" { capabilities = ["read", "list"] }
               path "secret/super-secret" { capabilities = ["deny"] }
               path "secret/restricted" {
                   capabilities = ["create"]
                   allowed_parameters = {
                       "foo" = []
                       "bar" = ["zip", "zap"]
                   }
               }"#]);
        assert!(can(&a, Op::Read, "secret/foo"));
        assert!(can(&a, Op::List, "secret/"));
        assert!(!can(&a, Op::Update, "secret/foo"));
        assert!(!can(&a, Op::Read, "secret/super-secret"));
        assert!(can(&a, Op::Read, "secret/super-secret/child"), "deny is exact");
        assert!(!can(&a, Op::Read, "secre"));
        let mut d = Map::new();
        d.insert("foo".into(), Value::from("anything"));
        assert!(a.allow(Op::Create, "secret/restricted", &d).allowed);
        d.insert("bar".into(), Value::from("zip"));
        assert!(a.allow(Op::Create, "secret/restricted", &d).allowed);
        d.insert("bar".into(), Value::from("nope"));
        assert!(!a.allow(Op::Create, "secret/restricted", &d).allowed);
        let mut d = Map::new();
        d.insert("other".into(), Value::from(1));
        assert!(!a.allow(Op::Create, "secret/restricted", &d).allowed);
    }

    #[test]
    fn deny_wins_across_policies_and_capabilities_union() {
        let a = acl(&[
            r#"path "secret/*" { capabilities = ["read"] }"#,
            r#"path "secret/*" { capabilities = ["update"] }"#,
            r#"path "kv/x" { capabilities = ["read", "update"] }"#,
            r#"path "kv/x" { capabilities = ["deny"] }"#,
        ]);
        assert!(can(&a, Op::Read, "secret/a"));
        assert!(can(&a, Op::Update, "secret/a"));
        assert!(!can(&a, Op::Read, "kv/x"));
        assert_eq!(a.capabilities("kv/x"), vec!["deny"]);
        assert_eq!(a.capabilities("secret/a"), vec!["read", "update"]);
        assert_eq!(a.capabilities("nothing"), vec!["deny"]);
    }

    #[test]
    fn longest_prefix_wins() {
        let a = acl(&[r#"path "secret/*" { capabilities = ["read"] }
                       path "secret/app/*" { capabilities = ["update"] }"#]);
        assert!(can(&a, Op::Update, "secret/app/x"));
        assert!(!can(&a, Op::Read, "secret/app/x"));
        assert!(can(&a, Op::Read, "secret/other"));
    }

    #[test]
    fn plus_matches_exactly_one_segment() {
        let a = acl(&[r#"path "secret/+/teamb" { capabilities = ["read"] }
                       path "secret/+/+/x*" { capabilities = ["list"] }"#]);
        assert!(can(&a, Op::Read, "secret/foo/teamb"));
        assert!(can(&a, Op::Read, "secret/bar/teamb"));
        assert!(!can(&a, Op::Read, "secret/foo/bar/teamb"));
        assert!(!can(&a, Op::Read, "secret/teamb"));
        assert!(can(&a, Op::List, "secret/a/b/xyz"));
        assert!(can(&a, Op::List, "secret/a/b/x/deeper"));
        assert!(!can(&a, Op::List, "secret/a/b/y"));
    }

    // The examples of Vault's policy documentation ("Priority matching").
    #[test]
    fn vault_priority_rules() {
        // 1. The first wildcard or glob earlier: lower priority.
        let a = acl(&[r#"path "secret/*" { capabilities = ["read"] }
                       path "secret/+/foo" { capabilities = ["update"] }"#]);
        assert!(
            can(&a, Op::Update, "secret/x/foo"),
            "secret/+ (first + at 7) vs secret/* (glob at 7): not a prefix wins"
        );
        let a = acl(&[r#"path "secret/+/*" { capabilities = ["read"] }
                       path "secret/a/*" { capabilities = ["update"] }"#]);
        assert!(
            can(&a, Op::Update, "secret/a/b"),
            "secret/a/* has its glob later than secret/+/*'s +"
        );
        // 2. Ends in * (prefix) and the other does not: lower.
        let a = acl(&[r#"path "secret/+/x*" { capabilities = ["read"] }
                       path "secret/+/xy" { capabilities = ["update"] }"#]);
        assert!(can(&a, Op::Update, "secret/a/xy"));
        // 3. More + segments: lower.
        let a = acl(&[r#"path "secret/+/+/baz" { capabilities = ["read"] }
                       path "secret/+/bar/baz" { capabilities = ["update"] }"#]);
        assert!(can(&a, Op::Update, "secret/foo/bar/baz"));
        // 4. Shorter: lower.
        let a = acl(&[r#"path "secret/+/b*" { capabilities = ["read"] }
                       path "secret/+/ba*" { capabilities = ["update"] }"#]);
        assert!(can(&a, Op::Update, "secret/x/bar"));
        // 5. Same shape and length: the lexicographically greater pattern wins.
        let a = acl(&[r#"path "secret/+/ab*" { capabilities = ["read"] }
                       path "secret/+/ac*" { capabilities = ["update"] }"#]);
        assert!(can(&a, Op::Read, "secret/x/abz"), "only one matches");
        // The docs' example: "secret/*" vs "secret/+/bar" for secret/foo/bar.
        let a = acl(&[r#"path "secret/*" { capabilities = ["read"] }
                       path "secret/+/bar" { capabilities = ["update"] }"#]);
        assert!(can(&a, Op::Update, "secret/foo/bar"));
        assert!(can(&a, Op::Read, "secret/foo/baz"));
    }

    #[test]
    fn list_uses_path_without_trailing_slash() {
        let a = acl(&[r#"path "secret/metadata/app" { capabilities = ["list"] }
                       path "kv/metadata/team*" { capabilities = ["list"] }"#]);
        assert!(can(&a, Op::List, "secret/metadata/app/"));
        assert!(!can(&a, Op::Read, "secret/metadata/app/"));
        assert!(can(&a, Op::List, "kv/metadata/team/"));
    }

    #[test]
    fn sudo_and_root() {
        let a = acl(&[r#"path "sys/rotate" { capabilities = ["update", "sudo"] }
                       path "sys/mounts/*" { capabilities = ["update"] }"#]);
        let d = a.allow(Op::Update, "sys/rotate", &Map::new());
        assert!(d.allowed && d.sudo && !d.is_root);
        let d = a.allow(Op::Update, "sys/mounts/x", &Map::new());
        assert!(d.allowed && !d.sudo);
        let r = Acl::root();
        assert!(r.allow(Op::Delete, "anything", &Map::new()).allowed);
        assert_eq!(r.capabilities("x"), vec!["root"]);
    }

    #[test]
    fn required_and_denied_parameters() {
        let a = acl(&[r#"path "x" {
            capabilities = ["update"]
            required_parameters = ["name"]
            denied_parameters = { "admin" = [] }
        }"#]);
        let mut d = Map::new();
        assert!(!a.allow(Op::Update, "x", &d).allowed);
        d.insert("name".into(), Value::from("a"));
        assert!(a.allow(Op::Update, "x", &d).allowed);
        d.insert("admin".into(), Value::from(true));
        assert!(!a.allow(Op::Update, "x", &d).allowed);
        assert!(glob_match("*ab*", "xaby"));
        assert!(glob_match("ab*", "abc"));
        assert!(!glob_match("*ab", "abc"));
    }

    #[test]
    fn mount_access_for_preflight() {
        let a = acl(&[r#"path "secret/data/app/*" { capabilities = ["read"] }
                       path "kv/+/x" { capabilities = ["read"] }
                       path "other/*" { capabilities = ["deny"] }"#]);
        assert!(a.has_mount_access("secret/"));
        assert!(a.has_mount_access("kv/"));
        assert!(!a.has_mount_access("other/"));
        assert!(!a.has_mount_access("nope/"));
    }

    #[test]
    fn sanitize_policies() {
        assert_eq!(
            sanitize(&["B".into(), " a ".into(), "b".into()], true),
            vec!["a", "b", "default"]
        );
        assert_eq!(sanitize(&["root".into(), "x".into()], true), vec!["root"]);
        assert_eq!(normalize_name(" MyPol ").unwrap(), "mypol");
        assert!(normalize_name("").is_err());
    }
}
