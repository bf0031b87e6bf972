//! Request fields the way Vault's `framework.FieldData` reads them: weakly typed (a number may
//! come as a string and the other way round), `null` meaning "not given", and Vault's exact
//! error texts when a value cannot be converted.
//!
//! Used by transit and by the auth methods (`credential/`). It only parses; it knows nothing of
//! any engine, so it can move to a shared module when a third user appears.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Go's `base64.StdEncoding`: padding required, non-zero trailing bits tolerated.
const GO_STD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// Decodes standard base64 as Go does, failing with Go's text
/// (`illegal base64 data at input byte N`).
pub fn b64_decode(s: &str) -> std::result::Result<Vec<u8>, String> {
    // Go skips CR and LF anywhere in the input.
    let cleaned;
    let input = if s.contains(['\r', '\n']) {
        cleaned = s.replace(['\r', '\n'], "");
        cleaned.as_str()
    } else {
        s
    };
    GO_STD.decode(input).map_err(|e| {
        let offset = match e {
            base64::DecodeError::InvalidByte(off, _)
            | base64::DecodeError::InvalidLastSymbol(off, _) => off,
            // A truncated final quantum: Go reports where that quantum starts.
            base64::DecodeError::InvalidLength(len) => len - len % 4,
            base64::DecodeError::InvalidPadding => match input.find('=') {
                Some(i) => i,
                None => input.len() - input.len() % 4,
            },
        };
        format!("illegal base64 data at input byte {offset}")
    })
}

pub fn b64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Go's `%T` for a JSON value, as mapstructure names it in errors.
fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Object(_) => "map[string]interface {}",
        Value::Array(_) => "[]interface {}",
        Value::String(_) => "string",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float64",
        Value::Number(_) => "json.Number",
        Value::Null => "<nil>",
    }
}

/// The fields of one request. `validated` selects Vault's two error styles: paths without an
/// existence check validate every field up front and prefix "Field validation failed: ".
pub struct Fields<'a> {
    data: &'a Map<String, Value>,
    validated: bool,
}

impl<'a> Fields<'a> {
    pub fn new(data: &'a Map<String, Value>) -> Self {
        Fields { data, validated: true }
    }

    /// For paths that have an existence check (their conversion errors have no prefix).
    pub fn with_existence_check(data: &'a Map<String, Value>) -> Self {
        Fields { data, validated: false }
    }

    pub fn raw(&self, name: &str) -> Option<&'a Value> {
        match self.data.get(name) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.raw(name).is_some()
    }

    fn err(&self, name: &str, detail: impl std::fmt::Display) -> Error {
        let prefix = if self.validated { "Field validation failed: " } else { "" };
        Error::bad_request(format!("{prefix}error converting input for field \"{name}\": {detail}"))
    }

    pub fn str(&self, name: &str) -> Result<Option<String>> {
        match self.raw(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Bool(b)) => Ok(Some(if *b { "1".into() } else { "0".into() })),
            Some(v) => Err(self.err(
                name,
                format!("'' expected type 'string', got unconvertible type '{}'", go_type(v)),
            )),
        }
    }

    /// The string, or "" when absent.
    pub fn string(&self, name: &str) -> Result<String> {
        Ok(self.str(name)?.unwrap_or_default())
    }

    pub fn int(&self, name: &str) -> Result<Option<i64>> {
        let bad =
            || self.err(name, "'' cannot parse value as 'int': strconv.ParseInt: invalid syntax");
        match self.raw(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(bad),
            Some(Value::String(s)) if s.is_empty() => Ok(Some(0)),
            Some(Value::String(s)) => s.trim().parse::<i64>().map(Some).map_err(|_| bad()),
            Some(Value::Bool(b)) => Ok(Some(i64::from(*b))),
            Some(v) => Err(self.err(
                name,
                format!("'' expected type 'int', got unconvertible type '{}'", go_type(v)),
            )),
        }
    }

    pub fn bool(&self, name: &str) -> Result<Option<bool>> {
        let bad =
            || self.err(name, "'' cannot parse value as 'bool': strconv.ParseBool: invalid syntax");
        match self.raw(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s.is_empty() => Ok(Some(false)),
            Some(Value::String(s)) => parse_go_bool(s).map(Some).ok_or_else(bad),
            Some(Value::Number(n)) => Ok(Some(n.as_f64().is_some_and(|f| f != 0.0))),
            Some(v) => Err(self.err(
                name,
                format!("'' expected type 'bool', got unconvertible type '{}'", go_type(v)),
            )),
        }
    }

    /// Vault's `TypeDurationSecond`: an integer of seconds or a Go duration string ("1h30m").
    pub fn duration_secs(&self, name: &str) -> Result<Option<i64>> {
        let secs = match self.raw(name) {
            None => return Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => i,
                None => n.as_f64().map(|f| f as i64).unwrap_or(0),
            },
            Some(Value::String(s)) if s.trim().is_empty() => 0,
            Some(Value::String(s)) => {
                let t = s.trim();
                match t.parse::<i64>() {
                    Ok(i) => i,
                    Err(_) => match t.strip_prefix('-') {
                        Some(rest) if crate::config::parse_duration(rest).is_ok() => {
                            return Err(
                                self.err(name, format!("cannot provide negative value '{t}'"))
                            );
                        }
                        _ => crate::config::parse_duration(t)
                            .map_err(|_| self.err(name, format!("time: invalid duration \"{t}\"")))?
                            .as_secs() as i64,
                    },
                }
            }
            Some(v) => {
                return Err(self.err(
                    name,
                    format!("'' expected type 'int64', got unconvertible type '{}'", go_type(v)),
                ))
            }
        };
        if secs < 0 {
            return Err(self.err(name, format!("cannot provide negative value '{secs}'")));
        }
        Ok(Some(secs))
    }

    /// Vault's `TypeCommaStringSlice`: a comma-separated string or a list of strings; items are
    /// trimmed and empty ones dropped.
    pub fn comma_strings(&self, name: &str) -> Result<Option<Vec<String>>> {
        let items: Vec<String> = match self.raw(name) {
            None => return Ok(None),
            Some(Value::String(s)) => s.split(',').map(|p| p.trim().to_string()).collect(),
            Some(Value::Array(a)) => {
                let mut out = Vec::with_capacity(a.len());
                for (i, v) in a.iter().enumerate() {
                    match v {
                        Value::String(s) => out.push(s.trim().to_string()),
                        Value::Number(n) => out.push(n.to_string()),
                        Value::Bool(b) => out.push(b.to_string()),
                        other => {
                            return Err(self.err(
                                name,
                                format!(
                                    "1 error(s) decoding:\n\n* '[{i}]' expected type 'string', got unconvertible type '{}', value: '{}'",
                                    go_type(other),
                                    go_value(other)
                                ),
                            ))
                        }
                    }
                }
                out
            }
            Some(Value::Number(n)) => vec![n.to_string()],
            Some(Value::Bool(b)) => vec![b.to_string()],
            Some(other) => {
                return Err(self.err(
                    name,
                    format!(
                        "1 error(s) decoding:\n\n* '[0]' expected type 'string', got unconvertible type '{}', value: '{}'",
                        go_type(other),
                        go_value(other)
                    ),
                ))
            }
        };
        Ok(Some(items.into_iter().filter(|s| !s.is_empty()).collect()))
    }
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `%v` of a decoded JSON value (close enough for error texts).
fn go_value(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let inner: Vec<String> =
                m.iter().map(|(k, v)| format!("{k}:{}", go_value(v))).collect();
            format!("map[{}]", inner.join(" "))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(go_value).collect::<Vec<_>>().join(" ")),
        Value::String(s) => s.clone(),
        Value::Null => "<nil>".into(),
        other => other.to_string(),
    }
}

/// Vault's "1 error occurred" wrapping, used where Vault returns a bare Go error (500).
pub fn multierror(msg: impl std::fmt::Display) -> Error {
    Error::Internal(format!("1 error occurred:\n\t* {msg}\n\n"))
}

/// The current time as Go's `time.Time` marshals it (RFC 3339, nanoseconds, zeros trimmed).
pub fn now_rfc3339_nanos() -> (String, i64) {
    let now = time::OffsetDateTime::now_utc();
    (rfc3339_nanos(now), now.unix_timestamp())
}

pub fn rfc3339_nanos(t: time::OffsetDateTime) -> String {
    let base = t
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default();
    let nanos = t.nanosecond();
    if nanos == 0 {
        return base;
    }
    let frac = format!("{nanos:09}");
    let frac = frac.trim_end_matches('0');
    match base.strip_suffix('Z') {
        Some(head) => format!("{head}.{frac}Z"),
        None => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn go_base64_errors() {
        assert_eq!(b64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(b64_decode("!!!").unwrap_err(), "illegal base64 data at input byte 0");
        assert_eq!(b64_decode("abc").unwrap_err(), "illegal base64 data at input byte 0");
        assert_eq!(b64_decode("aGVsbG8").unwrap_err(), "illegal base64 data at input byte 4");
        assert_eq!(b64_decode("").unwrap(), b"");
    }

    #[test]
    fn weak_typing_and_errors() {
        let data = json!({"n": "5", "b": "true", "d": "1h", "neg": -5, "s": 7, "l": "a, b,,c", "bad": "x", "o": {"a": 1}})
            .as_object()
            .unwrap()
            .clone();
        let f = Fields::new(&data);
        assert_eq!(f.int("n").unwrap(), Some(5));
        assert_eq!(f.bool("b").unwrap(), Some(true));
        assert_eq!(f.duration_secs("d").unwrap(), Some(3600));
        assert_eq!(f.str("s").unwrap().as_deref(), Some("7"));
        assert_eq!(f.comma_strings("l").unwrap().unwrap(), vec!["a", "b", "c"]);
        assert_eq!(f.int("missing").unwrap(), None);
        assert_eq!(
            f.int("bad").unwrap_err().to_string(),
            "Field validation failed: error converting input for field \"bad\": '' cannot parse value as 'int': strconv.ParseInt: invalid syntax"
        );
        let g = Fields::with_existence_check(&data);
        assert_eq!(
            g.duration_secs("neg").unwrap_err().to_string(),
            "error converting input for field \"neg\": cannot provide negative value '-5'"
        );
        assert_eq!(
            g.duration_secs("bad").unwrap_err().to_string(),
            "error converting input for field \"bad\": time: invalid duration \"x\""
        );
        assert!(g
            .comma_strings("o")
            .unwrap_err()
            .to_string()
            .contains("'[0]' expected type 'string'"));
    }

    #[test]
    fn go_time_format() {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(1_795_524_438_054_861_000).unwrap();
        assert_eq!(rfc3339_nanos(t), "2026-11-24T12:47:18.054861Z");
        let t = time::OffsetDateTime::from_unix_timestamp(1_795_524_438).unwrap();
        assert_eq!(rfc3339_nanos(t), "2026-11-24T12:47:18Z");
    }
}
