//! The Shamir seal: seal configuration, unseal key shares, and the wrapped root key.
//!
//! # Key hierarchy
//!
//! ```text
//! unseal key shares  (given to operators at init, never stored)
//!   -> unseal key    (32 bytes; rebuilt from `secret_threshold` shares, held only while unsealing)
//!   -> root key      (stored at ROOT_KEY_PATH, AES-256-GCM under the unseal key)
//!   -> keyring       (stored at `core/keyring` under the root key; see `barrier`)
//!   -> data keys     (the keyring's terms; everything else at rest is encrypted with them)
//! ```
//!
//! The seal configuration is the only plaintext record: it says how many shares exist and how
//! many unseal, which `sys/seal-status` must report while sealed. It holds no secret.
//!
//! # Invariants
//!
//! - Nothing below the barrier sees a plaintext key: the root key is stored only wrapped, with
//!   its storage path ([`ROOT_KEY_PATH`]) bound as AES-GCM additional data.
//! - Every secret here (unseal key, shares, partial unseal progress, decoded submissions, the
//!   random bytes fed to Shamir) sits in a zeroize-on-drop buffer and never appears in `Debug`
//!   output or in error messages.
//! - Shamir sharing is vsss-rs's constant-time GF(256) implementation; nothing here does field
//!   arithmetic.
//!
//! # Share format
//!
//! With one share the share *is* the 32-byte unseal key (as in Vault). With several, each share
//! is 33 bytes: the 32 bytes of the polynomials' values followed by one byte of x-coordinate
//! (1..=255). That is HashiCorp's layout over the same field (GF(2^8), polynomial 0x11b), so a
//! share set made by Vault/OpenBao combines to the same secret here; the tests check this with
//! shares from a real OpenBao server. Operators see shares hex- and base64-encoded.
//!
//! Error messages copy OpenBao 2.7's wording so that clients matching on them keep working.

use std::convert::Infallible;
use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::barrier::{self, OpenError, RootKey, KEY_LEN};

/// Where the caller stores the [`SealConfig`] as plaintext JSON, below the barrier.
pub const SEAL_CONFIG_PATH: &str = "core/seal-config";

/// Where the caller stores the output of [`wrap_root_key`], below the barrier.
pub const ROOT_KEY_PATH: &str = "core/root-key";

pub const SHAMIR_SEAL_TYPE: &str = "shamir";

/// Length of the unseal key (AES-256).
pub const UNSEAL_KEY_LEN: usize = KEY_LEN;

/// Length of a share when there is more than one: the key's length plus the x-coordinate.
pub const SHARE_LEN: usize = UNSEAL_KEY_LEN + 1;

/// Shortest submission accepted (Vault: the barrier's minimum key length, AES-128).
pub const MIN_SUBMITTED_KEY_LEN: usize = 16;

/// Longest submission accepted (Vault: the maximum key length plus the Shamir overhead).
pub const MAX_SUBMITTED_KEY_LEN: usize = SHARE_LEN;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// `sys/init` with bad counts; 400. The message is Vault's, prefix included.
    #[error("invalid seal configuration: {0}")]
    InvalidConfig(&'static str),
    /// The stored configuration does not parse or names another seal type.
    #[error("stored seal configuration is invalid: {0}")]
    StoredConfig(String),
    /// `sys/unseal` with neither `key` nor `reset`; 400.
    #[error("'key' must be specified in request body as JSON, or 'reset' set to true")]
    MissingKey,
    /// Neither hex nor standard base64; 400.
    #[error("'key' must be a valid hex or base64 string")]
    KeyEncoding,
    #[error("invalid key: key is shorter than minimum 16 bytes")]
    KeyTooShort,
    #[error("invalid key: key is longer than maximum 33 bytes")]
    KeyTooLong,
    /// The combined (or single) key is not an AES key size; 400. Go's wording, as OpenBao
    /// passes it through.
    #[error("invalid key: failed to setup unseal key: crypto/aes: invalid key size {0}")]
    InvalidUnsealKeySize(usize),
    #[error("invalid key: failed to compute combined key: all parts must be the same length")]
    SharesLengthMismatch,
    /// Two shares with the same x-coordinate but different values; 400.
    #[error("invalid key: failed to compute combined key: duplicate part detected")]
    DuplicatePart,
    /// The combined key does not decrypt the stored root key: wrong or mixed-up shares; 400.
    #[error("unable to retrieve stored keys: invalid key: failed to decrypt keys from storage: cipher: message authentication failed")]
    WrongUnsealKey,
    /// The stored root key blob is damaged (not a wrong key): storage corruption.
    #[error("unable to retrieve stored keys: stored root key is malformed: {0}")]
    MalformedRootKey(&'static str),
    /// Shamir splitting failed (parameters are validated first, so this is unexpected).
    #[error("failed to split unseal key: {0}")]
    Split(String),
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),
}

impl SealError {
    /// Whether the request was at fault (OpenBao answers 400) rather than the server (500).
    pub fn is_user_error(&self) -> bool {
        match self {
            SealError::InvalidConfig(_)
            | SealError::MissingKey
            | SealError::KeyEncoding
            | SealError::KeyTooShort
            | SealError::KeyTooLong
            | SealError::InvalidUnsealKeySize(_)
            | SealError::SharesLengthMismatch
            | SealError::DuplicatePart
            | SealError::WrongUnsealKey => true,
            SealError::StoredConfig(_) | SealError::MalformedRootKey(_) | SealError::Split(_) | SealError::Crypto(_) => false,
        }
    }
}

/// The key that unlocks the stored root key. 32 bytes, zeroized on drop, never printed.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct UnsealKey([u8; UNSEAL_KEY_LEN]);

impl UnsealKey {
    pub fn generate() -> Result<Self, SealError> {
        let mut key = UnsealKey([0u8; UNSEAL_KEY_LEN]);
        aws_lc_rs::rand::fill(&mut key.0).map_err(|_| SealError::Crypto("random generator failed"))?;
        Ok(key)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let arr: [u8; UNSEAL_KEY_LEN] = bytes.try_into().map_err(|_| SealError::InvalidUnsealKeySize(bytes.len()))?;
        Ok(UnsealKey(arr))
    }

    pub(crate) fn expose_secret(&self) -> &[u8; UNSEAL_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for UnsealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnsealKey(<redacted>)")
    }
}

/// The seal configuration stored at [`SEAL_CONFIG_PATH`]: `{"type":"shamir","secret_shares":5,
/// "secret_threshold":3}`. Unknown fields are ignored when reading, so a later version may add
/// some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealConfig {
    #[serde(rename = "type")]
    pub seal_type: String,
    pub secret_shares: u8,
    pub secret_threshold: u8,
}

impl SealConfig {
    /// A Shamir configuration, not yet validated: `sys/init` calls [`SealConfig::validate`]
    /// (or builds it with [`SealConfig::from_request`]).
    pub fn shamir(secret_shares: u8, secret_threshold: u8) -> Self {
        SealConfig { seal_type: SHAMIR_SEAL_TYPE.to_string(), secret_shares, secret_threshold }
    }

    /// Builds a Shamir configuration from `sys/init`'s values, with Vault's checks and messages.
    /// Takes `i64` because the request's JSON integers may be negative or above 255, and Vault
    /// reports those with its own messages rather than a decoding error.
    pub fn from_request(secret_shares: i64, secret_threshold: i64) -> Result<Self, SealError> {
        validate_counts(secret_shares, secret_threshold)?;
        // Both are in 1..=255 after validation; the conversions cannot fail.
        let shares = u8::try_from(secret_shares).map_err(|_| SealError::InvalidConfig("shares must be less than 256"))?;
        let threshold =
            u8::try_from(secret_threshold).map_err(|_| SealError::InvalidConfig("threshold must be less than 256"))?;
        Ok(Self::shamir(shares, threshold))
    }

    /// Vault's `SealConfig.Validate` for the fields this configuration has.
    pub fn validate(&self) -> Result<(), SealError> {
        if self.seal_type != SHAMIR_SEAL_TYPE {
            return Err(SealError::StoredConfig(format!("unsupported seal type {:?}", self.seal_type)));
        }
        validate_counts(i64::from(self.secret_shares), i64::from(self.secret_threshold))
    }

    /// Parses and validates the JSON stored at [`SEAL_CONFIG_PATH`].
    pub fn from_json(bytes: &[u8]) -> Result<Self, SealError> {
        let config: SealConfig = serde_json::from_slice(bytes).map_err(|e| SealError::StoredConfig(e.to_string()))?;
        config.validate().map_err(|e| SealError::StoredConfig(e.to_string()))?;
        Ok(config)
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a struct of a string and two integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Vault's checks, in Vault's order (the order decides which message a request with several
/// problems gets).
fn validate_counts(shares: i64, threshold: i64) -> Result<(), SealError> {
    let invalid = SealError::InvalidConfig;
    if shares < 1 {
        return Err(invalid("shares must be at least one"));
    }
    if threshold < 1 {
        return Err(invalid("threshold must be at least one"));
    }
    if shares > 1 && threshold == 1 {
        return Err(invalid("threshold must be greater than one for multiple shares"));
    }
    if shares > 255 {
        return Err(invalid("shares must be less than 256"));
    }
    if threshold > 255 {
        return Err(invalid("threshold must be less than 256"));
    }
    if threshold > shares {
        return Err(invalid("threshold cannot be larger than shares"));
    }
    Ok(())
}

/// aws-lc's generator behind the `rand_core` 0.10 traits vsss-rs wants. Those traits require an
/// infallible generator, so a failure is recorded instead of reported, the bytes are zeroed,
/// and [`split_unseal_key`] discards the result when the flag is set.
struct AwsLcRng {
    failed: bool,
}

impl AwsLcRng {
    fn fill(&mut self, dst: &mut [u8]) {
        if aws_lc_rs::rand::fill(dst).is_err() {
            dst.zeroize();
            self.failed = true;
        }
    }
}

impl rand_core::TryRng for AwsLcRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = Zeroizing::new([0u8; 4]);
        self.fill(b.as_mut());
        Ok(u32::from_le_bytes(*b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = Zeroizing::new([0u8; 8]);
        self.fill(b.as_mut());
        Ok(u64::from_le_bytes(*b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.fill(dst);
        Ok(())
    }
}

impl rand_core::TryCryptoRng for AwsLcRng {}

/// Splits the unseal key into `shares` shares, any `threshold` of which rebuild it. See the
/// module docs for the format. The same rules as [`SealConfig::from_request`] apply.
pub fn split_unseal_key(key: &UnsealKey, shares: u8, threshold: u8) -> Result<Vec<Zeroizing<Vec<u8>>>, SealError> {
    validate_counts(i64::from(shares), i64::from(threshold))?;
    if shares == 1 {
        return Ok(vec![Zeroizing::new(key.expose_secret().to_vec())]);
    }
    let mut rng = AwsLcRng { failed: false };
    // vsss-rs puts the x-coordinate first; wrap its output at once so it is wiped on every path.
    let raw = Zeroizing::new(
        vsss_rs::Gf256::split_bytes(usize::from(threshold), usize::from(shares), key.expose_secret(), &mut rng)
            .map_err(|e| SealError::Split(e.to_string()))?,
    );
    if rng.failed {
        return Err(SealError::Crypto("random generator failed"));
    }
    raw.iter()
        .map(|s| {
            if s.len() != SHARE_LEN {
                return Err(SealError::Split(format!("unexpected share length {}", s.len())));
            }
            let mut share = Zeroizing::new(Vec::with_capacity(SHARE_LEN));
            share.extend_from_slice(&s[1..]);
            share.push(s[0]);
            Ok(share)
        })
        .collect()
}

/// Rebuilds the unseal key from shares in the format [`split_unseal_key`] produces. One part is
/// taken as the key itself (a threshold of one). Errors carry Vault's messages.
pub fn combine_shares(parts: &[Zeroizing<Vec<u8>>]) -> Result<UnsealKey, SealError> {
    let combined: Zeroizing<Vec<u8>> = match parts {
        [] => return Err(SealError::MissingKey),
        [single] => Zeroizing::new(single.to_vec()),
        [first, rest @ ..] => {
            if rest.iter().any(|p| p.len() != first.len()) {
                return Err(SealError::SharesLengthMismatch);
            }
            if first.len() < 2 {
                return Err(SealError::KeyTooShort);
            }
            // Back to vsss-rs's order: x-coordinate first.
            let mut reordered: Zeroizing<Vec<Vec<u8>>> = Zeroizing::new(Vec::with_capacity(parts.len()));
            for p in parts {
                let (x, y) = p.split_at(p.len() - 1);
                let mut v = Vec::with_capacity(p.len());
                v.extend_from_slice(y);
                v.extend_from_slice(x);
                reordered.push(v);
            }
            match vsss_rs::Gf256::combine_bytes(reordered.as_slice()) {
                Ok(secret) => Zeroizing::new(secret),
                Err(vsss_rs::Error::SharingDuplicateIdentifier) => return Err(SealError::DuplicatePart),
                // An x-coordinate of 0: HashiCorp's interpolation accepts it and yields a key
                // that fails to decrypt, so report what OpenBao reports.
                Err(vsss_rs::Error::SharingInvalidIdentifier) => return Err(SealError::WrongUnsealKey),
                Err(e) => return Err(SealError::Split(e.to_string())),
            }
        }
    };
    match combined.len() {
        UNSEAL_KEY_LEN => UnsealKey::from_bytes(&combined),
        // Valid AES-128/192 sizes: OpenBao tries them and fails to decrypt; vaultd's keys are
        // always 256-bit, so the outcome (and the message) is the same.
        16 | 24 => Err(SealError::WrongUnsealKey),
        n => Err(SealError::InvalidUnsealKeySize(n)),
    }
}

/// Base64 as Go's `base64.StdEncoding` decodes it: padding required, non-zero trailing bits
/// tolerated.
const GO_STD_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes a submitted unseal key as OpenBao does: hex if it decodes to an acceptable length,
/// otherwise standard base64; then the length checks.
pub fn decode_submitted_key(key: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
    if key.is_empty() {
        return Err(SealError::MissingKey);
    }
    let acceptable = |b: &[u8]| (MIN_SUBMITTED_KEY_LEN..=MAX_SUBMITTED_KEY_LEN).contains(&b.len());
    // A base64 string can also be valid hex; only a hex result of a possible length wins.
    let bytes = match hex::decode(key).map(Zeroizing::new) {
        Ok(b) if acceptable(&b) => b,
        _ => Zeroizing::new(GO_STD_BASE64.decode(key).map_err(|_| SealError::KeyEncoding)?),
    };
    if bytes.len() < MIN_SUBMITTED_KEY_LEN {
        return Err(SealError::KeyTooShort);
    }
    if bytes.len() > MAX_SUBMITTED_KEY_LEN {
        return Err(SealError::KeyTooLong);
    }
    Ok(bytes)
}

/// The shares submitted so far in one unseal attempt (`sys/unseal`).
pub struct UnsealProgress {
    threshold: u8,
    parts: Vec<Zeroizing<Vec<u8>>>,
    nonce: String,
}

impl fmt::Debug for UnsealProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnsealProgress")
            .field("threshold", &self.threshold)
            .field("progress", &self.parts.len())
            .field("nonce", &self.nonce)
            .finish()
    }
}

impl UnsealProgress {
    pub fn new(threshold: u8) -> Self {
        UnsealProgress { threshold: threshold.max(1), parts: Vec::new(), nonce: String::new() }
    }

    pub fn for_config(config: &SealConfig) -> Self {
        Self::new(config.secret_threshold)
    }

    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    /// Distinct shares held; always below the threshold between calls.
    pub fn progress(&self) -> usize {
        self.parts.len()
    }

    /// Identifies this unseal attempt (`sys/seal-status`'s `nonce`): a random UUID-shaped string
    /// made with the first share, empty while no share is held.
    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// Forgets every share (`sys/unseal` with `reset`). The shares are zeroized.
    pub fn reset(&mut self) {
        self.parts.clear();
        self.nonce.clear();
    }

    /// Decodes and adds a submitted key (hex or base64). See [`UnsealProgress::add_share_bytes`].
    pub fn add_share(&mut self, key: &str) -> Result<Option<UnsealKey>, SealError> {
        let share = decode_submitted_key(key)?;
        self.add_share_bytes(share)
    }

    /// Adds a share. A share already held is ignored (the same share twice does not count
    /// twice, and is not an error, as in Vault). At the threshold the shares are combined and
    /// forgotten, whatever the outcome: `Ok(Some(key))` for the caller to try on the stored root
    /// key, or the combining error with progress back at zero. A rejected submission (bad
    /// length) leaves the progress as it was.
    pub fn add_share_bytes(&mut self, share: Zeroizing<Vec<u8>>) -> Result<Option<UnsealKey>, SealError> {
        if share.len() < MIN_SUBMITTED_KEY_LEN {
            return Err(SealError::KeyTooShort);
        }
        if share.len() > MAX_SUBMITTED_KEY_LEN {
            return Err(SealError::KeyTooLong);
        }
        if self.parts.iter().any(|p| aws_lc_rs::constant_time::verify_slices_are_equal(p, &share).is_ok()) {
            return Ok(None);
        }
        if self.parts.is_empty() {
            self.nonce = new_nonce()?;
        }
        self.parts.push(share);
        if self.parts.len() < usize::from(self.threshold) {
            return Ok(None);
        }
        let result = combine_shares(&self.parts);
        self.reset();
        result.map(Some)
    }
}

/// A random 128-bit value in UUID form, like the `nonce` Vault reports (go-uuid's format: random
/// bytes, no version bits).
fn new_nonce() -> Result<String, SealError> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| SealError::Crypto("random generator failed"))?;
    let h = hex::encode(b);
    Ok(format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]))
}

/// Encrypts the root key with the unseal key for storage at [`ROOT_KEY_PATH`] (AES-256-GCM,
/// that path as additional data, the barrier's ciphertext layout with term 0).
pub fn wrap_root_key(unseal: &UnsealKey, root: &RootKey) -> Result<Vec<u8>, SealError> {
    barrier::encrypt_with_raw_key(unseal.expose_secret(), ROOT_KEY_PATH, root.expose_secret())
        .map_err(|_| SealError::Crypto("AES-GCM encryption failed"))
}

/// Decrypts what [`wrap_root_key`] stored. A wrong unseal key gives
/// [`SealError::WrongUnsealKey`], whose message is OpenBao's for wrong shares.
pub fn unwrap_root_key(unseal: &UnsealKey, blob: &[u8]) -> Result<RootKey, SealError> {
    let plain = match barrier::decrypt_with_raw_key(unseal.expose_secret(), ROOT_KEY_PATH, blob) {
        Ok(p) => p,
        Err(OpenError::Auth) => return Err(SealError::WrongUnsealKey),
        Err(OpenError::Malformed(reason)) => return Err(SealError::MalformedRootKey(reason)),
    };
    RootKey::from_bytes(&plain).map_err(|_| SealError::MalformedRootKey("wrong length"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::barrier::{Barrier, BarrierError};
    use std::sync::Arc;
    use vaultd_storage::inmem::InmemBackend;
    use vaultd_storage::Backend;

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    /// Every k-element subset of 0..n.
    fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
        (0u32..(1 << n)).filter(|m| m.count_ones() as usize == k).map(|m| (0..n).filter(|i| m & (1 << i) != 0).collect()).collect()
    }

    #[test]
    fn config_validation_matches_openbao() {
        // (shares, threshold, OpenBao 2.7.2's message): observed on a real server.
        let cases: &[(i64, i64, Option<&str>)] = &[
            (0, 0, Some("invalid seal configuration: shares must be at least one")),
            (0, 1, Some("invalid seal configuration: shares must be at least one")),
            (-1, 1, Some("invalid seal configuration: shares must be at least one")),
            (0, 5, Some("invalid seal configuration: shares must be at least one")),
            (1, 0, Some("invalid seal configuration: threshold must be at least one")),
            (2, -1, Some("invalid seal configuration: threshold must be at least one")),
            (3, 1, Some("invalid seal configuration: threshold must be greater than one for multiple shares")),
            (3, 4, Some("invalid seal configuration: threshold cannot be larger than shares")),
            (1, 2, Some("invalid seal configuration: threshold cannot be larger than shares")),
            (256, 3, Some("invalid seal configuration: shares must be less than 256")),
            (300, 256, Some("invalid seal configuration: shares must be less than 256")),
            (1, 300, Some("invalid seal configuration: threshold must be less than 256")),
            (255, 256, Some("invalid seal configuration: threshold must be less than 256")),
            (1, 1, None),
            (5, 3, None),
            (255, 255, None),
            (255, 2, None),
        ];
        for &(shares, threshold, want) in cases {
            let got = SealConfig::from_request(shares, threshold);
            match want {
                Some(msg) => assert_eq!(got.unwrap_err().to_string(), msg, "{shares}/{threshold}"),
                None => {
                    let c = got.unwrap();
                    assert_eq!((i64::from(c.secret_shares), i64::from(c.secret_threshold)), (shares, threshold));
                    c.validate().unwrap();
                }
            }
        }
        let bad = SealConfig { seal_type: SHAMIR_SEAL_TYPE.into(), secret_shares: 2, secret_threshold: 3 };
        assert_eq!(bad.validate().unwrap_err().to_string(), "invalid seal configuration: threshold cannot be larger than shares");
    }

    #[test]
    fn config_json() {
        let c = SealConfig::from_request(5, 3).unwrap();
        let json = c.to_json();
        assert_eq!(String::from_utf8(json.clone()).unwrap(), r#"{"type":"shamir","secret_shares":5,"secret_threshold":3}"#);
        assert_eq!(SealConfig::from_json(&json).unwrap(), c);
        assert_eq!(
            SealConfig::from_json(br#"{"type":"shamir","secret_shares":5,"secret_threshold":3,"stored_shares":1}"#).unwrap(),
            c
        );
        assert!(SealConfig::from_json(br#"{"type":"awskms","secret_shares":1,"secret_threshold":1}"#).is_err());
        assert!(SealConfig::from_json(br#"{"type":"shamir","secret_shares":5,"secret_threshold":6}"#).is_err());
        assert!(SealConfig::from_json(br#"{"type":"shamir","secret_shares":300,"secret_threshold":3}"#).is_err());
        assert!(SealConfig::from_json(b"{").is_err());
    }

    #[test]
    fn single_share_is_the_key() {
        let key = UnsealKey::generate().unwrap();
        let shares = split_unseal_key(&key, 1, 1).unwrap();
        assert_eq!(shares.len(), 1);
        assert_eq!(&shares[0][..], key.expose_secret());
        let mut p = UnsealProgress::new(1);
        let got = p.add_share(&hex::encode(&shares[0])).unwrap().unwrap();
        assert_eq!(got.expose_secret(), key.expose_secret());
    }

    #[test]
    fn split_combine_every_subset_5_of_3() {
        let key = UnsealKey::generate().unwrap();
        let shares = split_unseal_key(&key, 5, 3).unwrap();
        assert_eq!(shares.len(), 5);
        let mut xs: Vec<u8> = shares.iter().map(|s| s[SHARE_LEN - 1]).collect();
        assert!(shares.iter().all(|s| s.len() == SHARE_LEN));
        xs.sort();
        xs.dedup();
        assert_eq!(xs.len(), 5);
        assert!(!xs.contains(&0));
        for k in 3..=5 {
            for subset in subsets(5, k) {
                let parts: Vec<_> = subset.iter().map(|&i| shares[i].clone()).collect();
                let got = combine_shares(&parts).unwrap();
                assert_eq!(got.expose_secret(), key.expose_secret(), "subset {subset:?}");
                // And through UnsealProgress, with the submissions in hex and base64.
                let mut p = UnsealProgress::new(3);
                let mut result = None;
                for (n, &i) in subset.iter().take(3).enumerate() {
                    let text = if n % 2 == 0 { hex::encode(&shares[i]) } else { b64(&shares[i]) };
                    result = p.add_share(&text).unwrap();
                    if n < 2 {
                        assert!(result.is_none());
                        assert_eq!(p.progress(), n + 1);
                    }
                }
                assert_eq!(result.unwrap().expose_secret(), key.expose_secret());
                assert_eq!(p.progress(), 0);
            }
        }
        // Fewer than the threshold: no key from the progress, and interpolating two points
        // gives something other than the key.
        for subset in subsets(5, 2) {
            let mut p = UnsealProgress::new(3);
            for &i in &subset {
                assert!(p.add_share(&hex::encode(&shares[i])).unwrap().is_none());
            }
            assert_eq!(p.progress(), 2);
            let parts: Vec<_> = subset.iter().map(|&i| shares[i].clone()).collect();
            if let Ok(wrong) = combine_shares(&parts) {
                assert_ne!(wrong.expose_secret(), key.expose_secret());
            }
        }
    }

    #[test]
    fn other_share_counts() {
        for (n, t) in [(2u8, 2u8), (3, 3), (10, 7), (255, 2), (255, 255)] {
            let key = UnsealKey::generate().unwrap();
            let shares = split_unseal_key(&key, n, t).unwrap();
            assert_eq!(shares.len(), usize::from(n));
            let parts: Vec<_> = shares.iter().rev().take(usize::from(t)).cloned().collect();
            assert_eq!(combine_shares(&parts).unwrap().expose_secret(), key.expose_secret(), "{n}/{t}");
        }
        let key = UnsealKey::generate().unwrap();
        assert_eq!(
            split_unseal_key(&key, 3, 1).unwrap_err().to_string(),
            "invalid seal configuration: threshold must be greater than one for multiple shares"
        );
        assert!(split_unseal_key(&key, 2, 3).is_err());
        assert!(split_unseal_key(&key, 0, 0).is_err());
    }

    #[test]
    fn duplicate_shares_do_not_count() {
        let key = UnsealKey::generate().unwrap();
        let shares = split_unseal_key(&key, 5, 3).unwrap();
        let mut p = UnsealProgress::new(3);
        assert!(p.add_share(&hex::encode(&shares[0])).unwrap().is_none());
        let nonce = p.nonce().to_string();
        // Same share again, in hex, upper-case hex and base64: still one.
        assert!(p.add_share(&hex::encode(&shares[0])).unwrap().is_none());
        assert!(p.add_share(&hex::encode_upper(&shares[0])).unwrap().is_none());
        assert!(p.add_share(&b64(&shares[0])).unwrap().is_none());
        assert_eq!(p.progress(), 1);
        assert_eq!(p.nonce(), nonce);
        assert!(p.add_share(&hex::encode(&shares[1])).unwrap().is_none());
        assert!(p.add_share(&b64(&shares[1])).unwrap().is_none());
        assert_eq!(p.progress(), 2);
        assert_eq!(p.add_share(&hex::encode(&shares[2])).unwrap().unwrap().expose_secret(), key.expose_secret());
    }

    #[test]
    fn progress_nonce_and_reset() {
        let key = UnsealKey::generate().unwrap();
        let shares = split_unseal_key(&key, 3, 2).unwrap();
        let mut p = UnsealProgress::new(2);
        assert_eq!((p.progress(), p.threshold(), p.nonce()), (0, 2, ""));
        p.add_share(&hex::encode(&shares[0])).unwrap();
        let n1 = p.nonce().to_string();
        let shape: Vec<usize> = n1.split('-').map(str::len).collect();
        assert_eq!(shape, vec![8, 4, 4, 4, 12]);
        assert!(n1.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        p.reset();
        assert_eq!((p.progress(), p.nonce()), (0, ""));
        p.add_share(&hex::encode(&shares[0])).unwrap();
        assert_ne!(p.nonce(), n1, "a new attempt gets a new nonce");
        // A rejected submission leaves the progress alone.
        assert_eq!(p.add_share("0011223344556677").unwrap_err(), SealError::KeyTooShort);
        assert_eq!(p.progress(), 1);
        assert!(format!("{p:?}").contains("progress: 1"));
        assert!(!format!("{p:?}").contains(&hex::encode(&shares[0][..4])));
    }

    #[test]
    fn submitted_key_decoding_matches_openbao() {
        let hexn = |n: usize| "ab".repeat(n);
        let b64n = |n: usize| b64(&vec![b'a'; n]);
        let cases: Vec<(String, Result<usize, &str>)> = vec![
            (String::new(), Err("'key' must be specified in request body as JSON, or 'reset' set to true")),
            ("!!!!not-a-key!!!!".into(), Err("'key' must be a valid hex or base64 string")),
            // 16 hex chars = 8 bytes: too short as hex, so base64 (12 bytes), then too short.
            ("0011223344556677".into(), Err("invalid key: key is shorter than minimum 16 bytes")),
            (hexn(15), Err("'key' must be a valid hex or base64 string")),
            (hexn(16), Ok(16)),
            (hexn(32), Ok(32)),
            (hexn(33), Ok(33)),
            (hexn(34), Err("invalid key: key is longer than maximum 33 bytes")),
            (hexn(40), Err("invalid key: key is longer than maximum 33 bytes")),
            (hexn(100), Err("invalid key: key is longer than maximum 33 bytes")),
            (b64n(40), Err("invalid key: key is longer than maximum 33 bytes")),
            (b64n(10), Err("invalid key: key is shorter than minimum 16 bytes")),
            (b64n(32), Ok(32)),
            ("a".repeat(67), Err("'key' must be a valid hex or base64 string")),
            // Unpadded and URL-safe base64 are not Go's StdEncoding.
            (b64n(32).trim_end_matches('=').to_string(), Err("'key' must be a valid hex or base64 string")),
            (b64(&[0xfb, 0xff].repeat(16)).replace('+', "-").replace('/', "_"), Err("'key' must be a valid hex or base64 string")),
        ];
        for (input, want) in cases {
            match (decode_submitted_key(&input), want) {
                (Ok(b), Ok(n)) => assert_eq!(b.len(), n, "{input}"),
                (Err(e), Err(msg)) => assert_eq!(e.to_string(), msg, "{input}"),
                (got, want) => panic!("{input}: got {:?}, want {want:?}", got.map(|b| b.len())),
            }
        }
    }

    #[test]
    fn combine_errors_match_openbao_and_reset() {
        let key = UnsealKey::generate().unwrap();
        let shares = split_unseal_key(&key, 5, 3).unwrap();
        // Mixed lengths.
        let mut p = UnsealProgress::new(3);
        p.add_share(&hex::encode(&shares[0])).unwrap();
        p.add_share(&hex::encode(&shares[1])).unwrap();
        let err = p.add_share(&hexn_random(32)).unwrap_err();
        assert_eq!(err.to_string(), "invalid key: failed to compute combined key: all parts must be the same length");
        assert_eq!((p.progress(), p.nonce()), (0, ""));
        // Same x-coordinate, different value.
        let mut forged = shares[1].clone();
        forged[SHARE_LEN - 1] = shares[0][SHARE_LEN - 1];
        p.add_share(&hex::encode(&shares[0])).unwrap();
        p.add_share(&hex::encode(&shares[2])).unwrap();
        assert_eq!(
            p.add_share(&hex::encode(&forged)).unwrap_err().to_string(),
            "invalid key: failed to compute combined key: duplicate part detected"
        );
        assert_eq!(p.progress(), 0);
        // Threshold one with a share-sized key, and odd combined sizes.
        let mut one = UnsealProgress::new(1);
        assert_eq!(
            one.add_share(&hexn_random(33)).unwrap_err().to_string(),
            "invalid key: failed to setup unseal key: crypto/aes: invalid key size 33"
        );
        assert_eq!(one.add_share(&hexn_random(16)).unwrap_err(), SealError::WrongUnsealKey);
        assert_eq!(one.progress(), 0);
        let mut two = UnsealProgress::new(2);
        // The last byte is a share's x-coordinate: distinct, or the pair is a duplicate part.
        two.add_share(&(hexn_random(19) + "01")).unwrap();
        assert_eq!(two.add_share(&(hexn_random(19) + "02")).unwrap_err().to_string(), "invalid key: failed to setup unseal key: crypto/aes: invalid key size 19");
        // A zero x-coordinate is a wrong key, not a panic.
        let mut zero = shares[3].clone();
        zero[SHARE_LEN - 1] = 0;
        assert_eq!(combine_shares(&[shares[0].clone(), shares[1].clone(), zero]).unwrap_err(), SealError::WrongUnsealKey);
    }

    fn hexn_random(n: usize) -> String {
        let mut b = vec![0u8; n];
        aws_lc_rs::rand::fill(&mut b).unwrap();
        hex::encode(b)
    }

    /// Shares from a real OpenBao 2.7.2 server (`sys/init` 5/3, a throwaway in-memory instance):
    /// every 3-subset combines to the same key, so the share layout and field match HashiCorp's.
    #[test]
    fn openbao_shares_combine_consistently() {
        let bao = [
            "0c635bfc04eff092b4cc84666371212a8fcba6ca420bbc458f88036f080c181a17",
            "329e129e2122d5f8b0d942baf357af947c65b84ce137898ad681de4e678dcfc123",
            "20aa0cd970a059c341d0b7290a88e2dd91330d95ad0e0c726ef100399d8fc0858b",
            "14d107b300e00e85f15562208216ad8a603f2666866a1cdf130c273cc01de35122",
            "9680d11a4004a3ff3a92a82c7cf517ac00f748c17b933592378d3d456191719544",
        ];
        let shares: Vec<_> = bao.iter().map(|h| decode_submitted_key(h).unwrap()).collect();
        let reference = combine_shares(&shares[..3]).unwrap();
        for subset in subsets(5, 3) {
            let parts: Vec<_> = subset.iter().map(|&i| shares[i].clone()).collect();
            assert_eq!(combine_shares(&parts).unwrap().expose_secret(), reference.expose_secret(), "{subset:?}");
        }
        let all = combine_shares(&shares).unwrap();
        assert_eq!(all.expose_secret(), reference.expose_secret());
    }

    #[test]
    fn root_key_wrapping() {
        let unseal = UnsealKey::generate().unwrap();
        let root = RootKey::generate().unwrap();
        let blob = wrap_root_key(&unseal, &root).unwrap();
        assert_eq!(blob.len(), 4 + 1 + 12 + 32 + 16);
        assert_eq!(unwrap_root_key(&unseal, &blob).unwrap().expose_secret(), root.expose_secret());
        let wrong = UnsealKey::generate().unwrap();
        assert_eq!(
            unwrap_root_key(&wrong, &blob).unwrap_err().to_string(),
            "unable to retrieve stored keys: invalid key: failed to decrypt keys from storage: cipher: message authentication failed"
        );
        for len in 0..blob.len() {
            assert!(unwrap_root_key(&unseal, &blob[..len]).is_err(), "len {len}");
        }
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert!(unwrap_root_key(&unseal, &bad).is_err(), "byte {i}");
        }
        // The path is bound: the same key encrypted for another path does not unwrap.
        let elsewhere = barrier::encrypt_with_raw_key(unseal.expose_secret(), "core/elsewhere", root.expose_secret()).unwrap();
        assert_eq!(unwrap_root_key(&unseal, &elsewhere).unwrap_err(), SealError::WrongUnsealKey);
    }

    #[test]
    fn debug_output_has_no_keys() {
        let key = UnsealKey::from_bytes(&[0xCD; 32]).unwrap();
        assert_eq!(format!("{key:?}"), "UnsealKey(<redacted>)");
        assert!(UnsealKey::from_bytes(&[0; 31]).is_err());
    }

    /// The whole init/unseal flow the server runs, and a scan of storage for any secret.
    #[tokio::test]
    async fn init_then_unseal_end_to_end() {
        let backend = Arc::new(InmemBackend::new());
        let secret = b"end-to-end-SECRET-value-8c1d";
        let (shares, unseal_bytes, root_bytes) = {
            // sys/init
            let config = SealConfig::from_request(5, 3).unwrap();
            let unseal = UnsealKey::generate().unwrap();
            let root = RootKey::generate().unwrap();
            let barrier = Barrier::new(backend.clone());
            barrier.initialize(&root).await.unwrap();
            backend.put(SEAL_CONFIG_PATH, config.to_json()).await.unwrap();
            backend.put(ROOT_KEY_PATH, wrap_root_key(&unseal, &root).unwrap()).await.unwrap();
            let shares = split_unseal_key(&unseal, config.secret_shares, config.secret_threshold).unwrap();
            barrier.unseal(&root).await.unwrap();
            barrier.put("secret/data/db", secret).await.unwrap();
            (shares, unseal.expose_secret().to_vec(), root.expose_secret().to_vec())
        };

        // A restarted server: only storage and the operators' shares remain.
        let barrier = Barrier::new(backend.clone());
        let config = SealConfig::from_json(&backend.get(SEAL_CONFIG_PATH).await.unwrap().unwrap()).unwrap();
        let mut progress = UnsealProgress::for_config(&config);
        let blob = backend.get(ROOT_KEY_PATH).await.unwrap().unwrap();

        // Three wrong (but well-formed) shares: OpenBao's message, still sealed.
        // The last byte is a share's x-coordinate: distinct, or two shares are a duplicate part.
        for x in ["01", "02"] {
            assert!(progress.add_share(&(hexn_random(32) + x)).unwrap().is_none());
        }
        let bad = progress.add_share(&(hexn_random(32) + "03")).unwrap().unwrap();
        assert_eq!(unwrap_root_key(&bad, &blob).unwrap_err(), SealError::WrongUnsealKey);
        assert!(barrier.sealed());
        assert!(matches!(barrier.get("secret/data/db").await, Err(BarrierError::Sealed)));

        let mut unseal = None;
        for share in [&shares[4], &shares[0], &shares[2]] {
            unseal = progress.add_share(&b64(share)).unwrap();
        }
        let root = unwrap_root_key(&unseal.unwrap(), &blob).unwrap();
        barrier.unseal(&root).await.unwrap();
        assert_eq!(barrier.get("secret/data/db").await.unwrap().unwrap(), secret);

        let mut needles: Vec<Vec<u8>> = vec![secret.to_vec(), unseal_bytes, root_bytes];
        needles.extend(shares.iter().map(|s| s.to_vec()));
        needles.extend(shares.iter().map(|s| s[..16].to_vec()));
        let mut scanned = 0;
        let mut stack = vec![String::new()];
        while let Some(prefix) = stack.pop() {
            for child in backend.list(&prefix).await.unwrap() {
                let path = format!("{prefix}{child}");
                if path.ends_with('/') {
                    stack.push(path);
                    continue;
                }
                let value = backend.get(&path).await.unwrap().unwrap();
                scanned += 1;
                for n in &needles {
                    assert!(!value.windows(n.len()).any(|w| w == &n[..]), "secret material at {path}");
                }
            }
        }
        assert_eq!(scanned, 4); // seal config, root key, keyring, the secret
    }
}
