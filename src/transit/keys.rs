//! A named transit key ("policy" in Vault's words): its versions, settings, and the crypto each
//! version supports.
//!
//! Two forms: [`StoredPolicy`] is the JSON document at `policy/<name>` in the mount's view (so
//! behind the barrier), with key material base64-encoded; [`Policy`] is that document plus the
//! parsed aws-lc-rs keys for every usable version, built once and cached by the engine so an
//! encrypt never parses storage. Secret bytes live in `Zeroizing` buffers; the aws-lc-rs key
//! objects cleanse their own memory when dropped.
//!
//! Wire formats follow Vault: ciphertext `vault:v<N>:base64(nonce(12) || ct || tag(16))`,
//! signatures `vault:v<N>:base64(sig)` (ECDSA ASN.1 DER, or r||s for `jws`), HMAC
//! `vault:v<N>:base64(mac)` with a separate 32-byte HMAC key per version.

use std::collections::BTreeMap;

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use zeroize::{Zeroize, Zeroizing};

use super::fields::{b64_encode, now_rfc3339_nanos};
use crate::error::{Error, Result};

/// Vault's default version template: `vault:v{{version}}:`.
const PREFIX: &str = "vault:v";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyType {
    #[serde(rename = "aes128-gcm96")]
    Aes128Gcm96,
    #[serde(rename = "aes256-gcm96")]
    Aes256Gcm96,
    #[serde(rename = "chacha20-poly1305")]
    ChaCha20Poly1305,
    #[serde(rename = "ed25519")]
    Ed25519,
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
}

/// Key types Vault knows that vaultd does not implement: refused with a clear error rather than
/// Vault's "unknown key type".
pub const UNSUPPORTED_TYPES: &[&str] = &[
    "xchacha20-poly1305",
    "ecdsa-p384",
    "ecdsa-p521",
    "rsa-2048",
    "rsa-3072",
    "rsa-4096",
    "hmac",
    "external-key",
];

impl KeyType {
    pub fn parse(s: &str) -> Option<KeyType> {
        Some(match s {
            "aes128-gcm96" => KeyType::Aes128Gcm96,
            "aes256-gcm96" => KeyType::Aes256Gcm96,
            "chacha20-poly1305" => KeyType::ChaCha20Poly1305,
            "ed25519" => KeyType::Ed25519,
            "ecdsa-p256" => KeyType::EcdsaP256,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            KeyType::Aes128Gcm96 => "aes128-gcm96",
            KeyType::Aes256Gcm96 => "aes256-gcm96",
            KeyType::ChaCha20Poly1305 => "chacha20-poly1305",
            KeyType::Ed25519 => "ed25519",
            KeyType::EcdsaP256 => "ecdsa-p256",
        }
    }

    pub fn encryption_supported(self) -> bool {
        matches!(self, KeyType::Aes128Gcm96 | KeyType::Aes256Gcm96 | KeyType::ChaCha20Poly1305)
    }

    pub fn signing_supported(self) -> bool {
        matches!(self, KeyType::Ed25519 | KeyType::EcdsaP256)
    }

    pub fn derivation_supported(self) -> bool {
        !matches!(self, KeyType::EcdsaP256)
    }

    /// ECDSA signs a digest of the input; Ed25519 signs the input itself.
    pub fn hash_signature_input(self) -> bool {
        matches!(self, KeyType::EcdsaP256)
    }

    fn aead_alg(self) -> Option<&'static aead::Algorithm> {
        match self {
            KeyType::Aes128Gcm96 => Some(&aead::AES_128_GCM),
            KeyType::Aes256Gcm96 => Some(&aead::AES_256_GCM),
            KeyType::ChaCha20Poly1305 => Some(&aead::CHACHA20_POLY1305),
            _ => None,
        }
    }

    /// Go's AEAD error text when a ciphertext fails authentication.
    fn open_error(self) -> &'static str {
        match self {
            KeyType::ChaCha20Poly1305 => "chacha20poly1305: message authentication failed",
            _ => "cipher: message authentication failed",
        }
    }
}

/// An operation's failure: a user error (400, the text goes back) or an internal one (500).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpError {
    User(String),
    Internal(String),
}

impl OpError {
    pub fn user(s: impl Into<String>) -> Self {
        OpError::User(s.into())
    }

    pub fn message(&self) -> &str {
        match self {
            OpError::User(s) | OpError::Internal(s) => s,
        }
    }
}

/// `ErrTooOld` in Vault.
pub const ERR_TOO_OLD: &str = "ciphertext or signature version is disallowed by policy (too old)";

mod zb64 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        v: &Zeroizing<Vec<u8>>,
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        let mut text = b64_encode(v);
        let r = s.serialize_str(&text);
        text.zeroize();
        r
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Zeroizing<Vec<u8>>, D::Error> {
        let mut text = String::deserialize(d)?;
        let out =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text.as_bytes());
        text.zeroize();
        out.map(Zeroizing::new).map_err(serde::de::Error::custom)
    }
}

/// One version of a key as stored.
#[derive(Serialize, Deserialize, Clone)]
pub struct StoredKey {
    /// Symmetric: the raw key. Ed25519 and ECDSA: a PKCS#8 document.
    #[serde(with = "zb64")]
    key: Zeroizing<Vec<u8>>,
    #[serde(with = "zb64")]
    hmac_key: Zeroizing<Vec<u8>>,
    /// Unix seconds (Vault's `DeprecatedCreationTime`, shown for symmetric keys).
    time: i64,
    /// RFC 3339 with nanoseconds (shown for asymmetric keys).
    creation_time: String,
    /// Ed25519: base64 of the raw key; ECDSA: PEM of the SubjectPublicKeyInfo.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    public_key: String,
}

/// A key as stored at `policy/<name>`.
#[derive(Serialize, Deserialize, Clone)]
pub struct StoredPolicy {
    pub name: String,
    #[serde(rename = "type")]
    pub key_type: KeyType,
    pub latest_version: u32,
    pub min_decryption_version: u32,
    #[serde(default)]
    pub min_encryption_version: u32,
    #[serde(default)]
    pub deletion_allowed: bool,
    #[serde(default)]
    pub exportable: bool,
    #[serde(default)]
    pub allow_plaintext_backup: bool,
    /// Seconds; stored and reported (vaultd does not rotate on a schedule yet).
    #[serde(default)]
    pub auto_rotate_period: u64,
    /// Key derivation: every operation uses HKDF-SHA256(version key, context) as its key
    /// (Vault's `hkdf_sha256` KDF; convergent encryption is not supported).
    #[serde(default)]
    pub derived: bool,
    pub keys: BTreeMap<u32, StoredKey>,
}

impl StoredPolicy {
    /// A new key with its first version.
    pub fn generate(name: &str, key_type: KeyType) -> Result<StoredPolicy> {
        let mut p = StoredPolicy {
            name: name.to_string(),
            key_type,
            latest_version: 0,
            min_decryption_version: 1,
            min_encryption_version: 0,
            deletion_allowed: false,
            exportable: false,
            allow_plaintext_backup: false,
            auto_rotate_period: 0,
            derived: false,
            keys: BTreeMap::new(),
        };
        p.rotate()?;
        Ok(p)
    }

    /// Adds a fresh version and makes it the latest.
    pub fn rotate(&mut self) -> Result<()> {
        let crypto_err = |what: &str| Error::internal(format!("transit: generating {what} failed"));
        let (creation_time, time) = now_rfc3339_nanos();
        let mut hmac_key = Zeroizing::new(vec![0u8; 32]);
        aws_lc_rs::rand::fill(&mut hmac_key).map_err(|_| crypto_err("an HMAC key"))?;
        let (key, public_key) = match self.key_type {
            KeyType::Aes128Gcm96 | KeyType::Aes256Gcm96 | KeyType::ChaCha20Poly1305 => {
                let len = if self.key_type == KeyType::Aes128Gcm96 { 16 } else { 32 };
                let mut key = Zeroizing::new(vec![0u8; len]);
                aws_lc_rs::rand::fill(&mut key).map_err(|_| crypto_err("a key"))?;
                (key, String::new())
            }
            KeyType::Ed25519 => {
                let kp = Ed25519KeyPair::generate().map_err(|_| crypto_err("an Ed25519 key"))?;
                let doc = kp.to_pkcs8().map_err(|_| crypto_err("an Ed25519 key"))?;
                (Zeroizing::new(doc.as_ref().to_vec()), b64_encode(kp.public_key().as_ref()))
            }
            KeyType::EcdsaP256 => {
                let kp = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING)
                    .map_err(|_| crypto_err("an ECDSA key"))?;
                let doc = kp.to_pkcs8v1().map_err(|_| crypto_err("an ECDSA key"))?;
                let der =
                    kp.public_key().as_der().map_err(|_| crypto_err("an ECDSA public key"))?;
                (Zeroizing::new(doc.as_ref().to_vec()), pem("PUBLIC KEY", der.as_ref()))
            }
        };
        self.latest_version += 1;
        self.keys.insert(
            self.latest_version,
            StoredKey { key, hmac_key, time, creation_time, public_key },
        );
        if self.min_decryption_version == 0 {
            self.min_decryption_version = 1;
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>> {
        Ok(Zeroizing::new(serde_json::to_vec(self)?))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<StoredPolicy> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::internal(format!("corrupt transit key: {e}")))
    }

    /// Vault's key read shape (`formatKeyPolicy`).
    pub fn to_api(&self) -> Map<String, Value> {
        let mut keys = Map::new();
        for (v, k) in self.keys.range(self.min_decryption_version..) {
            let shown = match self.key_type {
                KeyType::Aes128Gcm96 | KeyType::Aes256Gcm96 | KeyType::ChaCha20Poly1305 => {
                    json!(k.time)
                }
                KeyType::Ed25519 | KeyType::EcdsaP256 => json!({
                    "certificate_chain": "",
                    "creation_time": k.creation_time,
                    "name": if self.key_type == KeyType::Ed25519 { "ed25519" } else { "P-256" },
                    "public_key": k.public_key,
                }),
            };
            keys.insert(v.to_string(), shown);
        }
        let t = self.key_type;
        let v = json!({
            "allow_plaintext_backup": self.allow_plaintext_backup,
            "auto_rotate_period": self.auto_rotate_period,
            "deletion_allowed": self.deletion_allowed,
            "derived": self.derived,
            "exportable": self.exportable,
            "imported_key": false,
            "keys": keys,
            "latest_version": self.latest_version,
            "min_available_version": 0,
            "min_decryption_version": self.min_decryption_version,
            "min_encryption_version": self.min_encryption_version,
            "name": self.name,
            "soft_deleted": false,
            "supports_decryption": t.encryption_supported(),
            "supports_derivation": t.derivation_supported(),
            "supports_encryption": t.encryption_supported(),
            "supports_signing": t.signing_supported(),
            "type": t.name(),
        });
        let mut m = match v {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        if self.derived {
            m.insert("kdf".into(), json!("hkdf_sha256"));
            m.insert("convergent_encryption".into(), json!(false));
        }
        m
    }
}

/// Vault's message when a derived key is used without a context.
pub const ERR_MISSING_CONTEXT: &str = "missing 'context' for key derivation; the key was created using a derived key, which means additional, per-request information must be included in order to perform operations with the key";

struct OkmLen(usize);

impl aws_lc_rs::hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256 with an empty salt (Go's `hkdf.New(sha256.New, key, nil, context)`).
fn hkdf_sha256(
    secret: &[u8],
    context: &[u8],
    len: usize,
) -> std::result::Result<Zeroizing<Vec<u8>>, OpError> {
    let fail = || OpError::Internal("key derivation failed".into());
    let prk = aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, &[]).extract(secret);
    let info = [context];
    let okm = prk.expand(&info, OkmLen(len)).map_err(|_| fail())?;
    let mut out = Zeroizing::new(vec![0u8; len]);
    okm.fill(&mut out).map_err(|_| fail())?;
    Ok(out)
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = b64_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

enum Crypto {
    Aead(LessSafeKey),
    Ed25519(Ed25519KeyPair),
    Ecdsa(EcdsaKeyPair),
}

struct Material {
    crypto: Crypto,
    /// The version's raw key, kept for derived keys (the per-context key is made from it).
    raw: Option<Zeroizing<Vec<u8>>>,
    /// The PKCS#8 document of an ECDSA key, to build a fixed-format (JWS) signer on demand.
    pkcs8: Option<Zeroizing<Vec<u8>>>,
    hmac_key: Zeroizing<Vec<u8>>,
}

/// A key ready for use: the stored document and the parsed key of every version a request may
/// still use (those at or above `min_decryption_version`).
pub struct Policy {
    pub stored: StoredPolicy,
    versions: BTreeMap<u32, Material>,
}

/// How an ECDSA signature is encoded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Marshaling {
    Asn1,
    Jws,
}

impl Marshaling {
    pub fn parse(s: &str) -> Option<Marshaling> {
        match s {
            "" | "asn1" => Some(Marshaling::Asn1),
            "jws" => Some(Marshaling::Jws),
            _ => None,
        }
    }
}

/// A hash algorithm name Vault does not know.
#[derive(Debug)]
pub struct UnknownAlgorithm;

/// The hash algorithms Vault names, mapped to aws-lc-rs. `Ok(None)` is a name Vault accepts
/// that vaultd cannot compute (SHA3-224, "none").
pub fn digest_alg(
    name: &str,
) -> std::result::Result<Option<&'static digest::Algorithm>, UnknownAlgorithm> {
    Ok(Some(match name {
        "sha1" => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        "sha2-224" => &digest::SHA224,
        "sha2-256" => &digest::SHA256,
        "sha2-384" => &digest::SHA384,
        "sha2-512" => &digest::SHA512,
        "sha3-256" => &digest::SHA3_256,
        "sha3-384" => &digest::SHA3_384,
        "sha3-512" => &digest::SHA3_512,
        "sha3-224" | "none" => return Ok(None),
        _ => return Err(UnknownAlgorithm),
    }))
}

pub fn hmac_alg(
    name: &str,
) -> std::result::Result<Option<aws_lc_rs::hmac::Algorithm>, UnknownAlgorithm> {
    use aws_lc_rs::hmac;
    Ok(Some(match name {
        "sha1" => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        "sha2-224" => hmac::HMAC_SHA224,
        "sha2-256" => hmac::HMAC_SHA256,
        "sha2-384" => hmac::HMAC_SHA384,
        "sha2-512" => hmac::HMAC_SHA512,
        "sha3-224" | "sha3-256" | "sha3-384" | "sha3-512" | "none" => return Ok(None),
        _ => return Err(UnknownAlgorithm),
    }))
}

/// Splits `vault:v<N>:<rest>` as Vault does; `what` is "ciphertext" or "signature".
fn split_versioned<'a>(value: &'a str, what: &str) -> std::result::Result<(i64, &'a str), OpError> {
    let rest = value
        .strip_prefix(PREFIX)
        .ok_or_else(|| OpError::User(format!("invalid {what}: no prefix")))?;
    let (ver, body) = rest
        .split_once(':')
        .ok_or_else(|| OpError::User(format!("invalid {what}: wrong number of fields")))?;
    let ver = parse_go_int(ver).ok_or_else(|| {
        OpError::User(format!("invalid {what}: version number could not be decoded"))
    })?;
    Ok((ver, body))
}

/// Go's `strconv.Atoi`: optional sign, decimal digits only.
pub fn parse_go_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Go's `hashToInt` input for a 256-bit curve: the leftmost 32 bytes of the digest, or the
/// digest left-padded with zeros when shorter. Signing this as a SHA-256-sized digest gives the
/// same signature Go computes for any hash.
fn p256_digest(hashed: &[u8]) -> std::result::Result<digest::Digest, OpError> {
    let mut buf = [0u8; 32];
    if hashed.len() >= 32 {
        buf.copy_from_slice(&hashed[..32]);
    } else {
        buf[32 - hashed.len()..].copy_from_slice(hashed);
    }
    digest::Digest::import_less_safe(&buf, &digest::SHA256)
        .map_err(|_| OpError::Internal("invalid digest".into()))
}

/// Checks that `sig` is exactly one DER `SEQUENCE { INTEGER, INTEGER }` (what Go's
/// `asn1.Unmarshal` into an ECDSA signature accepts), with Vault's error texts.
fn check_ecdsa_der(sig: &[u8]) -> std::result::Result<(), OpError> {
    let invalid = || OpError::user("supplied signature is invalid");
    fn read_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let tag = *b.first()?;
        let first = *b.get(1)? as usize;
        let (len, hdr) = if first < 0x80 {
            (first, 2)
        } else {
            let n = first & 0x7f;
            if n == 0 || n > 2 {
                return None;
            }
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | *b.get(2 + i)? as usize;
            }
            if len < 0x80 {
                return None; // not minimal
            }
            (len, 2 + n)
        };
        let body = b.get(hdr..hdr + len)?;
        Some((tag, body, &b[hdr + len..]))
    }
    let (tag, body, rest) = read_tlv(sig).ok_or_else(invalid)?;
    if tag != 0x30 {
        return Err(invalid());
    }
    let mut inner = body;
    for _ in 0..2 {
        let (t, int, after) = read_tlv(inner).ok_or_else(invalid)?;
        if t != 0x02 || int.is_empty() {
            return Err(invalid());
        }
        inner = after;
    }
    if !inner.is_empty() {
        return Err(invalid());
    }
    if !rest.is_empty() {
        return Err(OpError::user("supplied signature contains extra data"));
    }
    Ok(())
}

impl Policy {
    /// Parses every usable version's key.
    pub fn load(stored: StoredPolicy) -> Result<Policy> {
        let mut versions = BTreeMap::new();
        let bad = |v: u32| {
            Error::internal(format!("transit: key {} version {v} is corrupt", stored.name))
        };
        for (&v, k) in stored.keys.range(stored.min_decryption_version..) {
            let (crypto, pkcs8) = match stored.key_type {
                t @ (KeyType::Aes128Gcm96 | KeyType::Aes256Gcm96 | KeyType::ChaCha20Poly1305) => {
                    let alg = t.aead_alg().ok_or_else(|| bad(v))?;
                    let unbound = UnboundKey::new(alg, &k.key).map_err(|_| bad(v))?;
                    (Crypto::Aead(LessSafeKey::new(unbound)), None)
                }
                KeyType::Ed25519 => {
                    (Crypto::Ed25519(Ed25519KeyPair::from_pkcs8(&k.key).map_err(|_| bad(v))?), None)
                }
                KeyType::EcdsaP256 => {
                    let kp = EcdsaKeyPair::from_pkcs8(
                        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                        &k.key,
                    )
                    .map_err(|_| bad(v))?;
                    (Crypto::Ecdsa(kp), Some(k.key.clone()))
                }
            };
            let raw = stored.derived.then(|| k.key.clone());
            versions.insert(v, Material { crypto, raw, pkcs8, hmac_key: k.hmac_key.clone() });
        }
        Ok(Policy { stored, versions })
    }

    fn material(&self, ver: i64) -> std::result::Result<&Material, OpError> {
        u32::try_from(ver)
            .ok()
            .and_then(|v| self.versions.get(&v))
            .ok_or_else(|| OpError::user("no such key version"))
    }

    /// For a derived key, the AEAD key for `context`; `None` for a plain key (context ignored,
    /// as Vault does).
    fn derived_key(
        &self,
        m: &Material,
        context: &[u8],
    ) -> std::result::Result<Option<LessSafeKey>, OpError> {
        if !self.stored.derived {
            return Ok(None);
        }
        if context.is_empty() {
            return Err(OpError::user(ERR_MISSING_CONTEXT));
        }
        let t = self.stored.key_type;
        let (Some(raw), Some(alg)) = (m.raw.as_ref(), t.aead_alg()) else {
            return Err(OpError::User(format!(
                "derivation not supported for key type {}",
                t.name()
            )));
        };
        let bytes = hkdf_sha256(raw, context, alg.key_len())?;
        let unbound = UnboundKey::new(alg, &bytes)
            .map_err(|_| OpError::Internal("key derivation failed".into()))?;
        Ok(Some(LessSafeKey::new(unbound)))
    }

    /// Resolves the version an encrypt-like operation uses (`ver` 0 = latest), with Vault's texts.
    pub fn encryption_version(&self, ver: i64) -> std::result::Result<i64, OpError> {
        let p = &self.stored;
        match ver {
            0 => Ok(i64::from(p.latest_version)),
            v if v < 0 => Err(OpError::user("requested version for encryption is negative")),
            v if v > i64::from(p.latest_version) => Err(OpError::user(
                "requested version for encryption is higher than the latest key version",
            )),
            v if v < i64::from(p.min_encryption_version) => Err(OpError::user(
                "requested version for encryption is less than the minimum encryption key version",
            )),
            v => Ok(v),
        }
    }

    /// Encrypts `plaintext`; returns the `vault:v<N>:...` string.
    pub fn encrypt(
        &self,
        ver: i64,
        context: &[u8],
        plaintext: &[u8],
        aad: &[u8],
    ) -> std::result::Result<String, OpError> {
        let t = self.stored.key_type;
        if !t.encryption_supported() {
            return Err(OpError::User(format!(
                "message encryption not supported for key type {}",
                t.name()
            )));
        }
        let ver = self.encryption_version(ver)?;
        let m = self.material(ver)?;
        let derived = self.derived_key(m, context)?;
        let key = match (&derived, &m.crypto) {
            (Some(k), _) => k,
            (None, Crypto::Aead(k)) => k,
            _ => return Err(OpError::Internal(format!("unsupported key type {}", t.name()))),
        };
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| OpError::Internal("random source failed".into()))?;
        let tag_len = key.algorithm().tag_len();
        let mut buf = Vec::with_capacity(NONCE_LEN + plaintext.len() + tag_len);
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(plaintext);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf[NONCE_LEN..],
            )
            .map_err(|_| OpError::Internal("encryption failed".into()))?;
        buf.extend_from_slice(tag.as_ref());
        let mut out = String::with_capacity(16 + buf.len() * 4 / 3 + 4);
        out.push_str(PREFIX);
        out.push_str(&ver.to_string());
        out.push(':');
        base64::Engine::encode_string(&base64::engine::general_purpose::STANDARD, &buf, &mut out);
        Ok(out)
    }

    /// Decrypts a `vault:v<N>:...` string.
    pub fn decrypt(
        &self,
        value: &str,
        context: &[u8],
        aad: &[u8],
    ) -> std::result::Result<Zeroizing<Vec<u8>>, OpError> {
        let t = self.stored.key_type;
        if !t.encryption_supported() {
            return Err(OpError::User(format!(
                "message decryption not supported for key type {}",
                t.name()
            )));
        }
        let (mut ver, body) = split_versioned(value, "ciphertext")?;
        if ver == 0 {
            ver = 1; // Vault's compatibility with keys that started at zero
        }
        if ver > i64::from(self.stored.latest_version) {
            return Err(OpError::user("invalid ciphertext: version is too new"));
        }
        if self.stored.min_decryption_version > 0
            && ver < i64::from(self.stored.min_decryption_version)
        {
            return Err(OpError::user(ERR_TOO_OLD));
        }
        let mut decoded = Zeroizing::new(
            super::fields::b64_decode(body)
                .map_err(|_| OpError::user("invalid ciphertext: could not decode base64"))?,
        );
        let m = self.material(ver)?;
        let derived = self.derived_key(m, context)?;
        let key = match (&derived, &m.crypto) {
            (Some(k), _) => k,
            (None, Crypto::Aead(k)) => k,
            _ => return Err(OpError::Internal(format!("unsupported key type {}", t.name()))),
        };
        if decoded.len() < NONCE_LEN {
            return Err(OpError::user("invalid ciphertext length"));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&decoded[..NONCE_LEN]);
        let plain_len = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut decoded[NONCE_LEN..],
            )
            .map_err(|_| OpError::user(t.open_error()))?
            .len();
        let mut out = Zeroizing::new(Vec::with_capacity(plain_len));
        out.extend_from_slice(&decoded[NONCE_LEN..NONCE_LEN + plain_len]);
        Ok(out)
    }

    /// Signs `input` (already hashed for ECDSA). Returns the signature string and the version.
    pub fn sign(
        &self,
        ver: i64,
        input: &[u8],
        marshaling: Marshaling,
    ) -> std::result::Result<(String, i64), OpError> {
        let p = &self.stored;
        let ver = match ver {
            0 => i64::from(p.latest_version),
            v if v < 0 => return Err(OpError::user("requested version for signing is negative")),
            v if v > i64::from(p.latest_version) => {
                return Err(OpError::user(
                    "requested version for signing is higher than the latest key version",
                ))
            }
            v if p.min_encryption_version > 0 && v < i64::from(p.min_encryption_version) => {
                return Err(OpError::user(
                    "requested version for signing is less than the minimum encryption key version",
                ))
            }
            v => v,
        };
        let m = self.material(ver)?;
        let sig: Vec<u8> = match &m.crypto {
            Crypto::Ed25519(kp) => kp.sign(input).as_ref().to_vec(),
            Crypto::Ecdsa(kp) => {
                let d = p256_digest(input)?;
                match marshaling {
                    Marshaling::Asn1 => kp
                        .sign_digest(&d)
                        .map_err(|_| OpError::Internal("signing failed".into()))?
                        .as_ref()
                        .to_vec(),
                    Marshaling::Jws => {
                        let pkcs8 = m
                            .pkcs8
                            .as_ref()
                            .ok_or_else(|| OpError::Internal("signing failed".into()))?;
                        let fixed = EcdsaKeyPair::from_pkcs8(
                            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                            pkcs8,
                        )
                        .map_err(|_| OpError::Internal("signing failed".into()))?;
                        fixed
                            .sign_digest(&d)
                            .map_err(|_| OpError::Internal("signing failed".into()))?
                            .as_ref()
                            .to_vec()
                    }
                }
            }
            Crypto::Aead(_) => {
                return Err(OpError::Internal(format!(
                    "message signing not supported for key type {}",
                    p.key_type.name()
                )))
            }
        };
        let encoded = match marshaling {
            Marshaling::Jws => {
                base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &sig)
            }
            Marshaling::Asn1 => b64_encode(&sig),
        };
        Ok((format!("{PREFIX}{ver}:{encoded}"), ver))
    }

    /// Verifies a `vault:v<N>:...` signature over `input` (already hashed for ECDSA).
    pub fn verify(
        &self,
        input: &[u8],
        sig: &str,
        marshaling: Marshaling,
    ) -> std::result::Result<bool, OpError> {
        let t = self.stored.key_type;
        if !t.signing_supported() {
            return Err(OpError::User(format!(
                "message verification not supported for key type {}",
                t.name()
            )));
        }
        let (ver, body) = split_versioned(sig, "signature")?;
        if ver > i64::from(self.stored.latest_version) {
            return Err(OpError::user("invalid signature: version is too new"));
        }
        if self.stored.min_decryption_version > 0
            && ver < i64::from(self.stored.min_decryption_version)
        {
            return Err(OpError::user(ERR_TOO_OLD));
        }
        let sig_bytes = match marshaling {
            Marshaling::Asn1 => super::fields::b64_decode(body).map_err(|_| ()),
            Marshaling::Jws => {
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, body)
                    .map_err(|_| ())
            }
        }
        .map_err(|_| OpError::user("invalid base64 signature value"))?;
        match t {
            KeyType::EcdsaP256 => {
                if marshaling == Marshaling::Asn1 {
                    check_ecdsa_der(&sig_bytes)?;
                }
                let m = self.material(ver)?;
                let Crypto::Ecdsa(kp) = &m.crypto else { return Ok(false) };
                let d = p256_digest(input)?;
                let alg = match marshaling {
                    Marshaling::Asn1 => &signature::ECDSA_P256_SHA256_ASN1,
                    Marshaling::Jws => &signature::ECDSA_P256_SHA256_FIXED,
                };
                Ok(UnparsedPublicKey::new(alg, kp.public_key().as_ref())
                    .verify_digest(&d, &sig_bytes)
                    .is_ok())
            }
            KeyType::Ed25519 => {
                let m = self.material(ver)?;
                let Crypto::Ed25519(kp) = &m.crypto else { return Ok(false) };
                Ok(UnparsedPublicKey::new(&signature::ED25519, kp.public_key().as_ref())
                    .verify(input, &sig_bytes)
                    .is_ok())
            }
            _ => Ok(false),
        }
    }

    /// The HMAC key of a version (Vault's `HMACKey`), with Vault's texts.
    pub fn hmac_key(&self, ver: i64) -> std::result::Result<&[u8], String> {
        if ver < 0 {
            return Err("key version does not exist (cannot be negative)".into());
        }
        if ver > i64::from(self.stored.latest_version) {
            return Err(format!(
                "key version does not exist; latest key version is {}",
                self.stored.latest_version
            ));
        }
        self.material(ver).map(|m| m.hmac_key.as_slice()).map_err(|e| e.message().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_parsing() {
        assert_eq!(split_versioned("vault:v3:abc", "ciphertext").unwrap(), (3, "abc"));
        assert_eq!(
            split_versioned("nope", "ciphertext").unwrap_err().message(),
            "invalid ciphertext: no prefix"
        );
        assert_eq!(
            split_versioned("vault:v3", "signature").unwrap_err().message(),
            "invalid signature: wrong number of fields"
        );
        assert_eq!(
            split_versioned("vault:vx:a", "ciphertext").unwrap_err().message(),
            "invalid ciphertext: version number could not be decoded"
        );
    }

    #[test]
    fn hkdf_matches_rfc5869_with_empty_salt() {
        // RFC 5869 test case 3 (no salt, no info): what Go's hkdf.New(sha256.New, k, nil, nil) gives.
        let okm = hkdf_sha256(&[0x0b; 22], &[], 42).unwrap();
        assert_eq!(
            hex::encode(okm.as_slice()),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
        );
    }

    #[test]
    fn der_checks() {
        assert!(check_ecdsa_der(&[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02]).is_ok());
        assert_eq!(
            check_ecdsa_der(&[0, 0, 0]).unwrap_err().message(),
            "supplied signature is invalid"
        );
        assert_eq!(
            check_ecdsa_der(&[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02, 0x00])
                .unwrap_err()
                .message(),
            "supplied signature contains extra data"
        );
    }

    #[test]
    fn stored_round_trip_and_pem() {
        for t in
            [KeyType::Aes256Gcm96, KeyType::ChaCha20Poly1305, KeyType::Ed25519, KeyType::EcdsaP256]
        {
            let mut p = StoredPolicy::generate("k", t).unwrap();
            p.rotate().unwrap();
            let back = StoredPolicy::from_bytes(&p.to_bytes().unwrap()).unwrap();
            assert_eq!(back.latest_version, 2);
            let loaded = Policy::load(back).unwrap();
            assert_eq!(loaded.versions.len(), 2);
        }
        let p = StoredPolicy::generate("k", KeyType::EcdsaP256).unwrap();
        let pk = &p.keys[&1].public_key;
        assert!(
            pk.starts_with("-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE"),
            "{pk}"
        );
        assert!(pk.ends_with("\n-----END PUBLIC KEY-----\n"));
    }
}
