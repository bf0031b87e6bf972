//! The encrypted barrier: everything vaultd keeps at rest passes through here.
//!
//! # Key hierarchy
//!
//! ```text
//! unseal key shares  (held by operators, never stored; see `seal`)
//!   -> unseal key    (combined from `threshold` shares with Shamir, in memory only while unsealing)
//!   -> root key      (stored at `core/root-key`, encrypted with the unseal key)
//!   -> keyring       (stored at `core/keyring`, encrypted with the root key)
//!   -> data keys     (one AES-256-GCM key per keyring term; every other value is encrypted with
//!                     the keyring's active term)
//! ```
//!
//! # Invariants
//!
//! - Nothing below the barrier (the physical [`Backend`], Raft, snapshots, disk) ever sees a
//!   plaintext value or a key. Paths are not secret and are stored as they are, as in Vault.
//! - The storage path is the AEAD's additional data, so a ciphertext copied (or replayed) to
//!   another path fails to decrypt instead of silently moving a secret.
//! - Every ciphertext carries the keyring term that encrypted it, so rotation never re-encrypts
//!   old data: old terms stay in the keyring for decryption, new writes use the active term.
//! - The keyring is persisted *before* a new term encrypts anything, so a crash can never leave
//!   data encrypted with a key that storage does not know.
//! - Keys live in memory only while unsealed, in zeroize-on-drop buffers; sealing drops them.
//!   No key (nor any plaintext value) appears in `Debug` output or error messages.
//! - Random 96-bit nonces are safe for up to 2^32 encryptions per key (NIST SP 800-38D §8.3):
//!   the barrier rotates automatically after [`AUTO_ROTATE_ENCRYPTIONS`] and refuses to encrypt
//!   past [`MAX_ENCRYPTIONS_PER_TERM`], far below that bound.
//!
//! # Ciphertext layout
//!
//! ```text
//! [term: u32 big-endian][version: u8 = 1][nonce: 12 bytes][ciphertext][tag: 16 bytes]
//! ```
//!
//! Term 0 is reserved for values encrypted directly with the root key (the keyring) or with the
//! unseal key (the stored root key, see `seal`); data terms start at 1.
//!
//! # Keyring layout (the plaintext inside `core/keyring`)
//!
//! ```text
//! [version: u8 = 1][active term: u32][key count: u32]
//! then per key: [term: u32][key: 32 bytes][install time: i64 unix seconds][nanos: u32][encryptions: u64]
//! ```
//!
//! All integers are big-endian. A fixed binary layout (rather than JSON) keeps key material out of
//! intermediate strings that could not be zeroized.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use time::OffsetDateTime;
use vaultd_storage::{Backend, TxnOp};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Where the keyring lives, encrypted with the root key.
pub const KEYRING_PATH: &str = "core/keyring";

/// Length of every key in the hierarchy (AES-256).
pub const KEY_LEN: usize = 32;

/// Rotate the active term once it has encrypted this many values (2^30): a quarter of the 2^32
/// random-nonce bound, so lost counts (crashes, other nodes) have a wide margin.
pub const AUTO_ROTATE_ENCRYPTIONS: u64 = 1 << 30;

/// Refuse to encrypt with a term past this count (3 * 2^30) even if rotation keeps failing:
/// exceeding 2^32 random nonces under one key risks a nonce collision, which breaks GCM.
pub const MAX_ENCRYPTIONS_PER_TERM: u64 = 3 << 30;

/// The encryption count is re-persisted with the keyring every this many encryptions (2^24), and
/// a term loaded from storage is assumed to have up to this many unpersisted encryptions. Both
/// together keep the count an over-estimate across crashes without a write per encryption.
pub const COUNT_PERSIST_INTERVAL: u64 = 1 << 24;

/// Term used for ciphertexts made directly with the root key or the unseal key.
pub(crate) const ROOT_TERM: u32 = 0;

const CIPHERTEXT_VERSION: u8 = 1;
const KEYRING_VERSION: u8 = 1;
const TERM_LEN: usize = 4;
const HEADER_LEN: usize = TERM_LEN + 1 + NONCE_LEN;
const TAG_LEN: usize = 16;
/// Smallest well-formed ciphertext: a header and a tag around an empty plaintext.
const MIN_CIPHERTEXT_LEN: usize = HEADER_LEN + TAG_LEN;
const KEYRING_HEADER_LEN: usize = 1 + 4 + 4;
const KEYRING_ENTRY_LEN: usize = 4 + KEY_LEN + 8 + 4 + 8;

/// Paths the barrier must never read or write: they belong to the keyring and the seal, which
/// write them below the barrier. A barrier write there would destroy the ability to unseal.
fn is_reserved(path: &str) -> bool {
    path == KEYRING_PATH || path == crate::seal::ROOT_KEY_PATH || path == crate::seal::SEAL_CONFIG_PATH
}

#[derive(Debug, thiserror::Error)]
pub enum BarrierError {
    /// Vault's `ErrBarrierSealed`.
    #[error("Vault is sealed")]
    Sealed,
    /// Vault's `ErrBarrierNotInit`.
    #[error("Vault is not initialized")]
    NotInitialized,
    /// Vault's `ErrBarrierAlreadyInit`.
    #[error("Vault is already initialized")]
    AlreadyInitialized,
    /// The root key does not decrypt the keyring (Vault's `ErrBarrierInvalidKey`).
    #[error("Unseal failed, invalid key")]
    InvalidKey,
    /// A key given as bytes has the wrong length.
    #[error("invalid key length: expected {expected} bytes, got {actual}")]
    InvalidKeyLength { expected: usize, actual: usize },
    /// The value names a term this keyring does not hold (Vault's wording).
    #[error("no decryption key available for term {term}")]
    UnknownTerm { term: u32 },
    /// Authentication failed: wrong key, tampered data, or a value copied from another path.
    #[error("decryption failed for {path}: cipher: message authentication failed")]
    DecryptFailed { path: String },
    /// The stored bytes are not a ciphertext this barrier wrote (too short, unknown version).
    #[error("malformed ciphertext at {path}: {reason}")]
    Malformed { path: String, reason: &'static str },
    /// The keyring decrypted but its contents do not parse: storage corruption or a bug.
    #[error("keyring is corrupt: {0}")]
    CorruptKeyring(&'static str),
    /// The path belongs to the keyring or the seal and is written below the barrier.
    #[error("path {path} is reserved and cannot be accessed through the barrier")]
    ReservedPath { path: String },
    /// The active term reached [`MAX_ENCRYPTIONS_PER_TERM`] and could not be rotated.
    #[error("barrier key term {term} has reached its encryption limit; rotate the keyring")]
    KeyExhausted { term: u32 },
    /// The system random generator or the AEAD failed: nothing sensible can continue.
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),
    /// The physical backend failed; the variant is kept so the server can act on it (a
    /// `NotLeader` becomes request forwarding).
    #[error(transparent)]
    Storage(#[from] vaultd_storage::Error),
    /// A write inside [`crate::read_only::run`] (a request served by a performance standby);
    /// OpenBao's `ErrReadOnly` text. The caller forwards the request instead of answering.
    #[error("cannot write to readonly storage")]
    ReadOnly,
}

/// The root key: encrypts the keyring. 32 bytes, zeroized on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RootKey([u8; KEY_LEN]);

impl RootKey {
    /// A fresh key from aws-lc's system random generator.
    pub fn generate() -> Result<Self, BarrierError> {
        let mut key = RootKey([0u8; KEY_LEN]);
        aws_lc_rs::rand::fill(&mut key.0).map_err(|_| BarrierError::Crypto("random generator failed"))?;
        Ok(key)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BarrierError> {
        let arr: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| BarrierError::InvalidKeyLength { expected: KEY_LEN, actual: bytes.len() })?;
        Ok(RootKey(arr))
    }

    /// The raw key, for wrapping it with the unseal key (`seal`). Callers must not copy it into
    /// a buffer that is not zeroized.
    pub(crate) fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootKey(<redacted>)")
    }
}

/// One operation of [`Barrier::transaction`]. `Debug` shows the plaintext's length only.
#[derive(Clone, PartialEq, Eq)]
pub enum BarrierOp {
    Put { path: String, plaintext: Vec<u8> },
    Delete { path: String },
}

impl BarrierOp {
    pub fn path(&self) -> &str {
        match self {
            BarrierOp::Put { path, .. } | BarrierOp::Delete { path } => path,
        }
    }
}

impl fmt::Debug for BarrierOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BarrierOp::Put { path, plaintext } => f
                .debug_struct("Put")
                .field("path", path)
                .field("plaintext_len", &plaintext.len())
                .finish(),
            BarrierOp::Delete { path } => f.debug_struct("Delete").field("path", path).finish(),
        }
    }
}

/// What `sys/key-status` reports about the active term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    pub term: u32,
    /// RFC 3339 in UTC with as many fractional digits as needed, like Go's `RFC3339Nano`
    /// (Vault's format for this field).
    pub install_time: String,
    /// Encryptions made with this term, an over-estimate (see [`COUNT_PERSIST_INTERVAL`]).
    pub encryptions: u64,
}

// ---------------------------------------------------------------------------------------------
// Ciphertext format, shared with `seal` so the layout and its length checks exist once.
// ---------------------------------------------------------------------------------------------

/// Why a ciphertext could not be opened. Kept free of paths so both modules can word it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenError {
    Malformed(&'static str),
    Auth,
}

fn aead_key(key: &[u8; KEY_LEN]) -> Result<RandomizedNonceKey, BarrierError> {
    RandomizedNonceKey::new(&AES_256_GCM, key).map_err(|_| BarrierError::Crypto("cannot set up AES-256-GCM key"))
}

/// Reads the term of a ciphertext after checking it is long enough to be one at all.
fn parse_header(data: &[u8]) -> Result<u32, OpenError> {
    if data.len() < MIN_CIPHERTEXT_LEN {
        return Err(OpenError::Malformed("too short"));
    }
    if data[TERM_LEN] != CIPHERTEXT_VERSION {
        return Err(OpenError::Malformed("unknown version"));
    }
    let mut term = [0u8; TERM_LEN];
    term.copy_from_slice(&data[..TERM_LEN]);
    Ok(u32::from_be_bytes(term))
}

/// Encrypts `plaintext` into a fresh buffer laid out as described in the module docs.
fn seal_with(key: &RandomizedNonceKey, term: u32, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, BarrierError> {
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&term.to_be_bytes());
    out.push(CIPHERTEXT_VERSION);
    out.extend_from_slice(&[0u8; NONCE_LEN]);
    out.extend_from_slice(plaintext);
    let (nonce, tag) = key
        .seal_in_place_separate_tag(Aad::from(aad.as_bytes()), &mut out[HEADER_LEN..])
        .map_err(|_| BarrierError::Crypto("AES-GCM encryption failed"))?;
    out[TERM_LEN + 1..HEADER_LEN].copy_from_slice(nonce.as_ref());
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Decrypts in place and turns `data` into the plaintext, without allocating: the hot read path.
/// The term must already have been checked with [`parse_header`].
fn open_in_place_with(key: &RandomizedNonceKey, aad: &str, data: &mut Vec<u8>) -> Result<(), OpenError> {
    if data.len() < MIN_CIPHERTEXT_LEN {
        return Err(OpenError::Malformed("too short"));
    }
    let nonce = Nonce::try_assume_unique_for_key(&data[TERM_LEN + 1..HEADER_LEN])
        .map_err(|_| OpenError::Malformed("bad nonce"))?;
    let plain_len = key
        .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut data[HEADER_LEN..])
        .map_err(|_| OpenError::Auth)?
        .len();
    data.copy_within(HEADER_LEN..HEADER_LEN + plain_len, 0);
    // Whatever follows the plaintext (its old tail and the tag) is not secret: only truncate.
    data.truncate(plain_len);
    Ok(())
}

/// Encrypts with a raw 32-byte key under [`ROOT_TERM`]: the keyring (root key) and the stored
/// root key (unseal key, in `seal`).
pub(crate) fn encrypt_with_raw_key(key: &[u8; KEY_LEN], aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, BarrierError> {
    seal_with(&aead_key(key)?, ROOT_TERM, aad, plaintext)
}

/// Decrypts what [`encrypt_with_raw_key`] made. The plaintext comes back in a zeroizing buffer.
pub(crate) fn decrypt_with_raw_key(key: &[u8; KEY_LEN], aad: &str, data: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    if parse_header(data)? != ROOT_TERM {
        return Err(OpenError::Malformed("not encrypted with a root-level key"));
    }
    let key = aead_key(key).map_err(|_| OpenError::Auth)?;
    let mut buf = Zeroizing::new(data.to_vec());
    open_in_place_with(&key, aad, &mut buf)?;
    Ok(buf)
}

// ---------------------------------------------------------------------------------------------
// Keyring
// ---------------------------------------------------------------------------------------------

struct TermKey {
    term: u32,
    /// Kept (zeroized on drop) only to re-serialize the keyring; encryption uses `aead`, whose
    /// key schedule aws-lc cleanses when it frees it.
    raw: Zeroizing<[u8; KEY_LEN]>,
    aead: RandomizedNonceKey,
    install_time: OffsetDateTime,
    encryptions: AtomicU64,
    /// The count last written to storage: re-persist when `encryptions` runs ahead of it.
    persisted: AtomicU64,
}

impl TermKey {
    fn new(term: u32, raw: Zeroizing<[u8; KEY_LEN]>, install_time: OffsetDateTime, encryptions: u64, persisted: u64) -> Result<Self, BarrierError> {
        let aead = aead_key(&raw)?;
        Ok(TermKey {
            term,
            raw,
            aead,
            install_time,
            encryptions: AtomicU64::new(encryptions),
            persisted: AtomicU64::new(persisted),
        })
    }
}

/// The unsealed state: the root key (to re-persist the keyring) and every term's key. Dropping
/// it zeroizes all of them.
struct Keyring {
    root: RootKey,
    /// Sorted by term; lookups are a binary search over a handful of entries.
    keys: Vec<TermKey>,
    /// Index into `keys` of the active term (always the highest).
    active: usize,
}

impl Keyring {
    fn fresh(root: RootKey) -> Result<Self, BarrierError> {
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        aws_lc_rs::rand::fill(raw.as_mut()).map_err(|_| BarrierError::Crypto("random generator failed"))?;
        let key = TermKey::new(1, raw, OffsetDateTime::now_utc(), 0, 0)?;
        Ok(Keyring { root, keys: vec![key], active: 0 })
    }

    fn active(&self) -> &TermKey {
        // `active` is always in bounds: every constructor checks it.
        &self.keys[self.active]
    }

    fn term(&self, term: u32) -> Option<&TermKey> {
        self.keys.binary_search_by_key(&term, |k| k.term).ok().map(|i| &self.keys[i])
    }

    /// Encrypts one value with the active term and counts it. The flag says the count needs
    /// attention (persisting or rotation) once the value is written: see `after_encrypt`.
    fn encrypt(&self, path: &str, plaintext: &[u8]) -> Result<(Vec<u8>, bool), BarrierError> {
        let key = self.active();
        let count = key.encryptions.fetch_add(1, Ordering::Relaxed) + 1;
        if count > MAX_ENCRYPTIONS_PER_TERM {
            return Err(BarrierError::KeyExhausted { term: key.term });
        }
        let unpersisted = count.saturating_sub(key.persisted.load(Ordering::Relaxed));
        let attention = count >= AUTO_ROTATE_ENCRYPTIONS || unpersisted >= COUNT_PERSIST_INTERVAL;
        Ok((seal_with(&key.aead, key.term, path, plaintext)?, attention))
    }

    fn decrypt_in_place(&self, path: &str, data: &mut Vec<u8>) -> Result<(), BarrierError> {
        let term = parse_header(data).map_err(|e| open_error(path, e))?;
        let key = self.term(term).ok_or(BarrierError::UnknownTerm { term })?;
        open_in_place_with(&key.aead, path, data).map_err(|e| open_error(path, e))
    }

    /// Serializes into a zeroizing buffer: it holds every key in the clear.
    fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(KEYRING_HEADER_LEN + self.keys.len() * KEYRING_ENTRY_LEN));
        out.push(KEYRING_VERSION);
        out.extend_from_slice(&self.active().term.to_be_bytes());
        // Terms are distinct non-zero u32s, so the count always fits in a u32.
        out.extend_from_slice(&(self.keys.len() as u32).to_be_bytes());
        for k in &self.keys {
            out.extend_from_slice(&k.term.to_be_bytes());
            out.extend_from_slice(k.raw.as_ref());
            out.extend_from_slice(&k.install_time.unix_timestamp().to_be_bytes());
            out.extend_from_slice(&k.install_time.nanosecond().to_be_bytes());
            out.extend_from_slice(&k.encryptions.load(Ordering::Relaxed).to_be_bytes());
        }
        out
    }

    /// Parses a stored keyring. `local` is the keyring this node already holds, if any: a term it
    /// already counts keeps the larger of the two counts, a term new to this node gets
    /// [`COUNT_PERSIST_INTERVAL`] added for encryptions its writer may not have persisted.
    fn from_bytes(root: RootKey, data: &[u8], local: Option<&Keyring>) -> Result<Self, BarrierError> {
        let corrupt = BarrierError::CorruptKeyring;
        if data.len() < KEYRING_HEADER_LEN {
            return Err(corrupt("too short"));
        }
        if data[0] != KEYRING_VERSION {
            return Err(corrupt("unknown version"));
        }
        let active_term = read_u32(&data[1..5]);
        let count = read_u32(&data[5..9]) as usize;
        let body = &data[KEYRING_HEADER_LEN..];
        if count == 0 || body.len() != count.saturating_mul(KEYRING_ENTRY_LEN) {
            return Err(corrupt("wrong length"));
        }
        let mut keys: Vec<TermKey> = Vec::with_capacity(count);
        for entry in body.chunks_exact(KEYRING_ENTRY_LEN) {
            let term = read_u32(&entry[0..4]);
            if term == ROOT_TERM || keys.last().is_some_and(|k| k.term >= term) {
                return Err(corrupt("terms out of order"));
            }
            let mut raw = Zeroizing::new([0u8; KEY_LEN]);
            raw.copy_from_slice(&entry[4..4 + KEY_LEN]);
            let mut at = 4 + KEY_LEN;
            let secs = i64::from_be_bytes(array8(&entry[at..at + 8]));
            at += 8;
            let nanos = read_u32(&entry[at..at + 4]);
            at += 4;
            let stored = u64::from_be_bytes(array8(&entry[at..at + 8]));
            let install_time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(secs) * 1_000_000_000 + i128::from(nanos))
                .map_err(|_| corrupt("bad install time"))?;
            let local_count = local.and_then(|l| l.term(term)).map(|k| k.encryptions.load(Ordering::Relaxed));
            let encryptions = match local_count {
                Some(c) => c.max(stored),
                None => stored.saturating_add(COUNT_PERSIST_INTERVAL),
            };
            keys.push(TermKey::new(term, raw, install_time, encryptions, stored)?);
        }
        let active = keys.binary_search_by_key(&active_term, |k| k.term).map_err(|_| corrupt("active term missing"))?;
        if active != keys.len() - 1 {
            return Err(corrupt("active term is not the newest"));
        }
        Ok(Keyring { root, keys, active })
    }

    /// A copy of this keyring with one more term, which becomes active.
    fn with_new_term(&self) -> Result<Self, BarrierError> {
        let mut keys = Vec::with_capacity(self.keys.len() + 1);
        for k in &self.keys {
            keys.push(TermKey::new(
                k.term,
                k.raw.clone(),
                k.install_time,
                k.encryptions.load(Ordering::Relaxed),
                k.persisted.load(Ordering::Relaxed),
            )?);
        }
        let next = self.active().term.checked_add(1).ok_or(BarrierError::CorruptKeyring("term overflow"))?;
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        aws_lc_rs::rand::fill(raw.as_mut()).map_err(|_| BarrierError::Crypto("random generator failed"))?;
        keys.push(TermKey::new(next, raw, OffsetDateTime::now_utc(), 0, 0)?);
        let active = keys.len() - 1;
        Ok(Keyring { root: self.root.clone(), keys, active })
    }

    fn seal_to_storage(&self) -> Result<Vec<u8>, BarrierError> {
        encrypt_with_raw_key(self.root.expose_secret(), KEYRING_PATH, &self.to_bytes())
    }

    fn mark_persisted(&self) {
        for k in &self.keys {
            k.persisted.store(k.encryptions.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

fn read_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_be_bytes(a)
}

fn array8(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    a
}

fn open_error(path: &str, e: OpenError) -> BarrierError {
    match e {
        OpenError::Auth => BarrierError::DecryptFailed { path: path.to_string() },
        OpenError::Malformed(reason) => BarrierError::Malformed { path: path.to_string(), reason },
    }
}

/// Decrypts a stored keyring with the root key. A wrong key shows as [`BarrierError::InvalidKey`].
fn open_keyring(root: &RootKey, blob: &[u8], local: Option<&Keyring>) -> Result<Keyring, BarrierError> {
    let plain = match decrypt_with_raw_key(root.expose_secret(), KEYRING_PATH, blob) {
        Ok(p) => p,
        Err(OpenError::Auth) => return Err(BarrierError::InvalidKey),
        Err(OpenError::Malformed(reason)) => {
            return Err(BarrierError::Malformed { path: KEYRING_PATH.to_string(), reason })
        }
    };
    Keyring::from_bytes(root.clone(), &plain, local)
}

// ---------------------------------------------------------------------------------------------
// Barrier
// ---------------------------------------------------------------------------------------------

struct State {
    keyring: Option<Arc<Keyring>>,
    /// Bumped by every seal: a keyring change started before a seal must not unseal again.
    epoch: u64,
}

pub struct Barrier {
    backend: Arc<dyn Backend>,
    /// Readers hold the lock only to look up a key and run AES-GCM on one value; never across
    /// an await.
    state: RwLock<State>,
    /// Serializes keyring changes (rotate, reload, count persistence) so that two of them never
    /// write `core/keyring` from different bases.
    keyring_writer: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier").field("sealed", &self.sealed()).finish_non_exhaustive()
    }
}

impl Barrier {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Barrier {
            backend,
            state: RwLock::new(State { keyring: None, epoch: 0 }),
            keyring_writer: tokio::sync::Mutex::new(()),
        }
    }

    // The lock guards an `Option<Arc<_>>` and an integer, which are never left half-updated, so
    // a poisoned lock still holds a consistent value: recover it instead of failing every request.
    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn keyring(&self) -> Result<(Arc<Keyring>, u64), BarrierError> {
        let st = self.read_state();
        let kr = st.keyring.clone().ok_or(BarrierError::Sealed)?;
        Ok((kr, st.epoch))
    }

    /// Installs `keyring` unless the barrier was sealed since `epoch` was read.
    fn install(&self, keyring: Keyring, epoch: u64) -> Result<(), BarrierError> {
        let mut st = self.write_state();
        if st.epoch != epoch || st.keyring.is_none() {
            return Err(BarrierError::Sealed);
        }
        st.keyring = Some(Arc::new(keyring));
        Ok(())
    }

    /// Whether a keyring exists in storage (Vault: the barrier is initialized).
    pub async fn initialized(&self) -> Result<bool, BarrierError> {
        Ok(self.backend.get(KEYRING_PATH).await?.is_some())
    }

    /// Writes a fresh keyring (term 1) encrypted with `root_key`. Leaves the barrier sealed, as
    /// Vault's does: the caller unseals with the same key.
    pub async fn initialize(&self, root_key: &RootKey) -> Result<(), BarrierError> {
        let _writer = self.keyring_writer.lock().await;
        if self.initialized().await? {
            return Err(BarrierError::AlreadyInitialized);
        }
        let keyring = Keyring::fresh(root_key.clone())?;
        self.backend.put(KEYRING_PATH, keyring.seal_to_storage()?).await?;
        Ok(())
    }

    /// Loads the keyring with `root_key`. Already unsealed is not an error (as in Vault).
    pub async fn unseal(&self, root_key: &RootKey) -> Result<(), BarrierError> {
        let _writer = self.keyring_writer.lock().await;
        if !self.sealed() {
            return Ok(());
        }
        let blob = self.backend.get(KEYRING_PATH).await?.ok_or(BarrierError::NotInitialized)?;
        let keyring = open_keyring(root_key, &blob, None)?;
        let mut st = self.write_state();
        st.keyring = Some(Arc::new(keyring));
        Ok(())
    }

    /// Drops every key. Memory is zeroized as soon as in-flight operations release the keyring.
    pub fn seal(&self) {
        let mut st = self.write_state();
        st.keyring = None;
        st.epoch = st.epoch.wrapping_add(1);
    }

    pub fn sealed(&self) -> bool {
        self.read_state().keyring.is_none()
    }

    /// The plaintext at `path`, or `None`. Checked for seal before any I/O.
    pub async fn get(&self, path: &str) -> Result<Option<Vec<u8>>, BarrierError> {
        check_path(path)?;
        if self.sealed() {
            return Err(BarrierError::Sealed);
        }
        let Some(mut data) = self.backend.get(path).await? else {
            return Ok(None);
        };
        let result = {
            let st = self.read_state();
            let kr = st.keyring.as_ref().ok_or(BarrierError::Sealed)?;
            kr.decrypt_in_place(path, &mut data)
        };
        match result {
            Ok(()) => Ok(Some(data)),
            // A newer term than ours: another node rotated. Reload once and retry; an old
            // unknown term is corruption and reloading would not help.
            Err(BarrierError::UnknownTerm { term }) if term > self.active_term()? => {
                self.reload_keyring().await?;
                let st = self.read_state();
                let kr = st.keyring.as_ref().ok_or(BarrierError::Sealed)?;
                kr.decrypt_in_place(path, &mut data)?;
                Ok(Some(data))
            }
            Err(e) => Err(e),
        }
    }

    pub async fn put(&self, path: &str, plaintext: &[u8]) -> Result<(), BarrierError> {
        check_path(path)?;
        if crate::read_only::refuse_write() {
            return Err(BarrierError::ReadOnly);
        }
        let (ciphertext, attention) = {
            let st = self.read_state();
            st.keyring.as_ref().ok_or(BarrierError::Sealed)?.encrypt(path, plaintext)?
        };
        self.backend.put(path, ciphertext).await?;
        if attention {
            self.after_encrypt().await;
        }
        Ok(())
    }

    pub async fn delete(&self, path: &str) -> Result<(), BarrierError> {
        check_path(path)?;
        if crate::read_only::refuse_write() {
            return Err(BarrierError::ReadOnly);
        }
        if self.sealed() {
            return Err(BarrierError::Sealed);
        }
        Ok(self.backend.delete(path).await?)
    }

    /// Vault's one-level listing. Paths are not encrypted, so this is the backend's answer.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, BarrierError> {
        if self.sealed() {
            return Err(BarrierError::Sealed);
        }
        Ok(self.backend.list(prefix).await?)
    }

    /// Encrypts every put (each under its own path) and applies all operations atomically.
    pub async fn transaction(&self, ops: Vec<BarrierOp>) -> Result<(), BarrierError> {
        for op in &ops {
            check_path(op.path())?;
        }
        if crate::read_only::refuse_write() {
            return Err(BarrierError::ReadOnly);
        }
        let mut txn = Vec::with_capacity(ops.len());
        let mut attention = false;
        {
            let st = self.read_state();
            let kr = st.keyring.as_ref().ok_or(BarrierError::Sealed)?;
            for op in ops {
                match op {
                    BarrierOp::Put { path, plaintext } => {
                        // Owned plaintext: wipe it once encrypted rather than freeing it as is.
                        let plaintext = Zeroizing::new(plaintext);
                        let (value, needs) = kr.encrypt(&path, &plaintext)?;
                        attention |= needs;
                        txn.push(TxnOp::Put { key: path, value });
                    }
                    BarrierOp::Delete { path } => txn.push(TxnOp::Delete { key: path }),
                }
            }
        }
        self.backend.transaction(txn).await?;
        if attention {
            self.after_encrypt().await;
        }
        Ok(())
    }

    /// Adds a term and makes it active. The keyring is written to storage before the new term
    /// encrypts anything; on a write error the old keyring stays in use.
    pub async fn rotate(&self) -> Result<u32, BarrierError> {
        let _writer = self.keyring_writer.lock().await;
        self.rotate_locked().await
    }

    async fn rotate_locked(&self) -> Result<u32, BarrierError> {
        // Start from storage, not memory: if another node rotated since we loaded, adding to our
        // stale copy would drop its term, and with it every value written under that term.
        let (base, epoch) = self.fresh_keyring().await?;
        let next = base.with_new_term()?;
        let term = next.active().term;
        self.backend.put(KEYRING_PATH, next.seal_to_storage()?).await?;
        next.mark_persisted();
        self.install(next, epoch)?;
        Ok(term)
    }

    /// The keyring as stored, merged with this node's counts. Caller holds `keyring_writer`.
    async fn fresh_keyring(&self) -> Result<(Keyring, u64), BarrierError> {
        let (current, epoch) = self.keyring()?;
        let blob = self.backend.get(KEYRING_PATH).await?.ok_or(BarrierError::NotInitialized)?;
        Ok((open_keyring(&current.root, &blob, Some(&current))?, epoch))
    }

    /// Encrypts `plaintext` with the root key itself (AES-256-GCM, `aad` as additional data), for
    /// a value that only holders of the unseal key can open: the raft join challenge
    /// (`raft_join`), which a joining node decrypts after unwrapping the root key with its shares.
    pub fn encrypt_with_root_key(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, BarrierError> {
        let (keyring, _) = self.keyring()?;
        encrypt_with_raw_key(keyring.root.expose_secret(), aad, plaintext)
    }

    /// Opens what [`Barrier::encrypt_with_root_key`] sealed: `None` when it was not sealed with
    /// this root key and `aad` (another cluster's snapshot, a corrupt one).
    pub fn decrypt_with_root_key(&self, aad: &str, data: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, BarrierError> {
        let (keyring, _) = self.keyring()?;
        Ok(decrypt_with_raw_key(keyring.root.expose_secret(), aad, data).ok())
    }

    pub fn key_status(&self) -> Result<KeyStatus, BarrierError> {
        let st = self.read_state();
        let k = st.keyring.as_ref().ok_or(BarrierError::Sealed)?.active();
        Ok(KeyStatus {
            term: k.term,
            install_time: rfc3339_nano(k.install_time),
            encryptions: k.encryptions.load(Ordering::Relaxed),
        })
    }

    fn active_term(&self) -> Result<u32, BarrierError> {
        Ok(self.read_state().keyring.as_ref().ok_or(BarrierError::Sealed)?.active().term)
    }

    /// Re-reads the keyring from storage, e.g. after another node rotated it. One backend read
    /// and one decryption; nothing is written.
    pub async fn reload_keyring(&self) -> Result<(), BarrierError> {
        let _writer = self.keyring_writer.lock().await;
        let (fresh, epoch) = self.fresh_keyring().await?;
        self.install(fresh, epoch)
    }

    /// Write-path bookkeeping, run after a write whose encryption flagged the active term:
    /// rotate at [`AUTO_ROTATE_ENCRYPTIONS`], otherwise persist the count once it is
    /// [`COUNT_PERSIST_INTERVAL`] ahead of storage. A term loaded from storage starts a full
    /// interval ahead (the allowance), so the first write after an unseal or a reload persists
    /// it: every holder of the key records its allowance before it can crash unnoticed.
    /// The data write already succeeded, so failures here are not reported to that caller; the
    /// condition still holds and the next write retries.
    async fn after_encrypt(&self) {
        let Ok(_writer) = self.keyring_writer.try_lock() else {
            // Another keyring change is running; the condition still holds for the next write.
            return;
        };
        let Ok((kr, epoch)) = self.keyring() else { return };
        let active = kr.active();
        let count = active.encryptions.load(Ordering::Relaxed);
        if count >= AUTO_ROTATE_ENCRYPTIONS {
            let _ = self.rotate_locked().await;
        } else if count.saturating_sub(active.persisted.load(Ordering::Relaxed)) >= COUNT_PERSIST_INTERVAL {
            let _ = self.persist_counts(epoch).await;
        }
    }

    async fn persist_counts(&self, epoch: u64) -> Result<(), BarrierError> {
        let (fresh, fresh_epoch) = self.fresh_keyring().await?;
        if fresh_epoch != epoch {
            return Err(BarrierError::Sealed);
        }
        self.backend.put(KEYRING_PATH, fresh.seal_to_storage()?).await?;
        fresh.mark_persisted();
        self.install(fresh, epoch)
    }
}

/// Go's `time.RFC3339Nano` for a UTC time: trailing zeros of the fraction dropped, and no
/// fraction at all on a whole second. `time`'s RFC 3339 formatter does the same.
fn rfc3339_nano(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn check_path(path: &str) -> Result<(), BarrierError> {
    if is_reserved(path) {
        return Err(BarrierError::ReservedPath { path: path.to_string() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vaultd_storage::inmem::InmemBackend;

    async fn setup() -> (Arc<InmemBackend>, Barrier, RootKey) {
        let backend = Arc::new(InmemBackend::new());
        let barrier = Barrier::new(backend.clone());
        let root = RootKey::generate().unwrap();
        assert!(!barrier.initialized().await.unwrap());
        barrier.initialize(&root).await.unwrap();
        assert!(barrier.initialized().await.unwrap());
        assert!(barrier.sealed());
        barrier.unseal(&root).await.unwrap();
        assert!(!barrier.sealed());
        (backend, barrier, root)
    }

    async fn raw(backend: &InmemBackend, path: &str) -> Vec<u8> {
        backend.get(path).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn round_trip() {
        let (_b, barrier, _root) = setup().await;
        for value in [&b""[..], b"x", b"hello world", &[7u8; 5000][..]] {
            barrier.put("secret/foo", value).await.unwrap();
            assert_eq!(barrier.get("secret/foo").await.unwrap().as_deref(), Some(value));
        }
        assert_eq!(barrier.get("secret/missing").await.unwrap(), None);
        barrier.put("secret/bar", b"2").await.unwrap();
        assert_eq!(barrier.list("secret/").await.unwrap(), vec!["bar", "foo"]);
        barrier.delete("secret/foo").await.unwrap();
        assert_eq!(barrier.get("secret/foo").await.unwrap(), None);
    }

    #[tokio::test]
    async fn ciphertext_layout() {
        let (backend, barrier, _root) = setup().await;
        barrier.put("a", b"abc").await.unwrap();
        let ct = raw(&backend, "a").await;
        assert_eq!(ct.len(), 4 + 1 + 12 + 3 + 16);
        assert_eq!(&ct[..4], &1u32.to_be_bytes());
        assert_eq!(ct[4], 1);
        // Two encryptions of the same value differ (fresh nonce).
        barrier.put("b", b"abc").await.unwrap();
        assert_ne!(raw(&backend, "b").await[5..], ct[5..]);
    }

    #[tokio::test]
    async fn path_is_bound_as_aad() {
        let (backend, barrier, _root) = setup().await;
        barrier.put("secret/a", b"value-a").await.unwrap();
        let ct = raw(&backend, "secret/a").await;
        backend.put("secret/b", ct).await.unwrap();
        let err = barrier.get("secret/b").await.unwrap_err();
        assert!(matches!(err, BarrierError::DecryptFailed { ref path } if path == "secret/b"), "{err}");
        // The original is still fine.
        assert_eq!(barrier.get("secret/a").await.unwrap().unwrap(), b"value-a");
    }

    #[tokio::test]
    async fn truncated_and_corrupt_ciphertexts_error_without_panic() {
        let (backend, barrier, _root) = setup().await;
        barrier.put("v", b"some secret value").await.unwrap();
        let ct = raw(&backend, "v").await;
        for len in 0..ct.len() {
            backend.put("t", ct[..len].to_vec()).await.unwrap();
            let err = barrier.get("t").await.unwrap_err();
            assert!(
                matches!(err, BarrierError::Malformed { .. } | BarrierError::DecryptFailed { .. } | BarrierError::UnknownTerm { .. }),
                "len {len}: {err}"
            );
        }
        // Every single bit flip fails authentication (or the header check).
        for i in 0..ct.len() {
            for bit in 0..8 {
                let mut bad = ct.clone();
                bad[i] ^= 1 << bit;
                backend.put("v", bad).await.unwrap();
                assert!(barrier.get("v").await.is_err(), "flip byte {i} bit {bit}");
            }
        }
        // Garbage and an unknown term.
        backend.put("g", vec![0xff; 100]).await.unwrap();
        assert!(barrier.get("g").await.is_err());
        let mut other_term = ct.clone();
        other_term[..4].copy_from_slice(&0u32.to_be_bytes());
        backend.put("g", other_term).await.unwrap();
        assert!(matches!(barrier.get("g").await.unwrap_err(), BarrierError::UnknownTerm { term: 0 }));
    }

    #[tokio::test]
    async fn rotation_keeps_old_terms_readable() {
        let (backend, barrier, root) = setup().await;
        barrier.put("old", b"written under term 1").await.unwrap();
        assert_eq!(barrier.key_status().unwrap().term, 1);
        assert_eq!(barrier.rotate().await.unwrap(), 2);
        assert_eq!(barrier.rotate().await.unwrap(), 3);
        let status = barrier.key_status().unwrap();
        assert_eq!((status.term, status.encryptions), (3, 0));
        barrier.put("new", b"written under term 3").await.unwrap();
        assert_eq!(&raw(&backend, "new").await[..4], &3u32.to_be_bytes());
        assert_eq!(&raw(&backend, "old").await[..4], &1u32.to_be_bytes());
        assert_eq!(barrier.get("old").await.unwrap().unwrap(), b"written under term 1");
        assert_eq!(barrier.key_status().unwrap().encryptions, 1);
        // The rotated keyring was persisted: a fresh unseal sees all terms.
        barrier.seal();
        barrier.unseal(&root).await.unwrap();
        assert_eq!(barrier.key_status().unwrap().term, 3);
        assert_eq!(barrier.get("old").await.unwrap().unwrap(), b"written under term 1");
        assert_eq!(barrier.get("new").await.unwrap().unwrap(), b"written under term 3");
    }

    #[tokio::test]
    async fn another_nodes_rotation_is_picked_up() {
        let (backend, node_a, root) = setup().await;
        let node_b = Barrier::new(backend.clone());
        node_b.unseal(&root).await.unwrap();
        assert_eq!(node_b.rotate().await.unwrap(), 2);
        node_b.put("from-b", b"term 2 data").await.unwrap();
        // Node A still holds term 1 only: a read of term 2 data reloads transparently.
        assert_eq!(node_a.key_status().unwrap().term, 1);
        assert_eq!(node_a.get("from-b").await.unwrap().unwrap(), b"term 2 data");
        assert_eq!(node_a.key_status().unwrap().term, 2);
        // A rotation on A starts from storage, so it cannot drop B's term.
        node_b.rotate().await.unwrap();
        assert_eq!(node_a.rotate().await.unwrap(), 4);
        node_b.reload_keyring().await.unwrap();
        assert_eq!(node_b.key_status().unwrap().term, 4);
    }

    #[tokio::test]
    async fn sealed_barrier_refuses_everything() {
        let (_b, barrier, _root) = setup().await;
        barrier.put("k", b"v").await.unwrap();
        barrier.seal();
        assert!(barrier.sealed());
        assert!(matches!(barrier.get("k").await, Err(BarrierError::Sealed)));
        assert!(matches!(barrier.put("k", b"v").await, Err(BarrierError::Sealed)));
        assert!(matches!(barrier.delete("k").await, Err(BarrierError::Sealed)));
        assert!(matches!(barrier.list("").await, Err(BarrierError::Sealed)));
        assert!(matches!(barrier.rotate().await, Err(BarrierError::Sealed)));
        assert!(matches!(barrier.key_status(), Err(BarrierError::Sealed)));
        assert!(matches!(barrier.reload_keyring().await, Err(BarrierError::Sealed)));
        assert!(matches!(
            barrier.transaction(vec![BarrierOp::Delete { path: "k".into() }]).await,
            Err(BarrierError::Sealed)
        ));
    }

    #[tokio::test]
    async fn wrong_root_key_is_invalid_key() {
        let (_b, barrier, root) = setup().await;
        barrier.seal();
        let wrong = RootKey::generate().unwrap();
        assert!(matches!(barrier.unseal(&wrong).await, Err(BarrierError::InvalidKey)));
        assert!(barrier.sealed());
        barrier.unseal(&root).await.unwrap();
        assert!(!barrier.sealed());
    }

    #[tokio::test]
    async fn init_and_unseal_errors() {
        let backend = Arc::new(InmemBackend::new());
        let barrier = Barrier::new(backend.clone());
        let root = RootKey::generate().unwrap();
        assert!(matches!(barrier.unseal(&root).await, Err(BarrierError::NotInitialized)));
        barrier.initialize(&root).await.unwrap();
        assert!(matches!(barrier.initialize(&root).await, Err(BarrierError::AlreadyInitialized)));
        assert!(matches!(RootKey::from_bytes(&[0u8; 31]), Err(BarrierError::InvalidKeyLength { .. })));
        // A truncated keyring is an error, not a panic.
        let blob = raw(&backend, KEYRING_PATH).await;
        for len in 0..blob.len() {
            backend.put(KEYRING_PATH, blob[..len].to_vec()).await.unwrap();
            assert!(barrier.unseal(&root).await.is_err(), "len {len}");
        }
    }

    #[tokio::test]
    async fn transaction_encrypts_each_put() {
        let (backend, barrier, _root) = setup().await;
        barrier.put("gone", b"x").await.unwrap();
        barrier
            .transaction(vec![
                BarrierOp::Put { path: "t/a".into(), plaintext: b"alpha".to_vec() },
                BarrierOp::Put { path: "t/b".into(), plaintext: b"beta".to_vec() },
                BarrierOp::Delete { path: "gone".into() },
            ])
            .await
            .unwrap();
        assert_eq!(barrier.get("t/a").await.unwrap().unwrap(), b"alpha");
        assert_eq!(barrier.get("t/b").await.unwrap().unwrap(), b"beta");
        assert_eq!(barrier.get("gone").await.unwrap(), None);
        assert!(!raw(&backend, "t/a").await.windows(5).any(|w| w == b"alpha"));
        // Loaded from storage: the count starts one allowance ahead.
        assert_eq!(barrier.key_status().unwrap().encryptions, COUNT_PERSIST_INTERVAL + 3);
    }

    #[tokio::test]
    async fn reserved_paths_are_refused() {
        let (_b, barrier, _root) = setup().await;
        for path in [KEYRING_PATH, crate::seal::ROOT_KEY_PATH, crate::seal::SEAL_CONFIG_PATH] {
            assert!(matches!(barrier.put(path, b"x").await, Err(BarrierError::ReservedPath { .. })));
            assert!(matches!(barrier.get(path).await, Err(BarrierError::ReservedPath { .. })));
            assert!(matches!(barrier.delete(path).await, Err(BarrierError::ReservedPath { .. })));
        }
    }

    #[tokio::test]
    async fn no_plaintext_or_key_below_the_barrier() {
        let (backend, barrier, root) = setup().await;
        let secret = b"CORRECT-HORSE-BATTERY-STAPLE-4f9a1c";
        barrier.put("secret/data/app", secret).await.unwrap();
        barrier
            .transaction(vec![BarrierOp::Put { path: "secret/data/app2".into(), plaintext: secret.to_vec() }])
            .await
            .unwrap();
        barrier.rotate().await.unwrap();
        barrier.put("secret/data/app3", secret).await.unwrap();
        let keyring = barrier.read_state().keyring.clone().unwrap();
        let needles: Vec<Vec<u8>> = std::iter::once(secret.to_vec())
            .chain(std::iter::once(root.expose_secret().to_vec()))
            .chain(keyring.keys.iter().map(|k| k.raw.to_vec()))
            .collect();
        let mut scanned = 0;
        let mut stack = vec![String::new()];
        while let Some(prefix) = stack.pop() {
            for child in backend.list(&prefix).await.unwrap() {
                let path = format!("{prefix}{child}");
                if path.ends_with('/') {
                    stack.push(path);
                    continue;
                }
                let value = raw(&backend, &path).await;
                scanned += 1;
                for needle in &needles {
                    assert!(!value.windows(needle.len()).any(|w| w == &needle[..]), "secret material in raw value at {path}");
                }
            }
        }
        assert_eq!(scanned, 4); // core/keyring + three values
    }

    #[test]
    fn install_time_format() {
        let t = |ns: i128| rfc3339_nano(OffsetDateTime::from_unix_timestamp_nanos(ns).unwrap());
        assert_eq!(t(1_700_000_000_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(t(1_700_000_000_120_000_000), "2023-11-14T22:13:20.12Z");
        assert_eq!(t(1_700_000_000_123_456_789), "2023-11-14T22:13:20.123456789Z");
    }

    #[test]
    fn debug_output_has_no_keys() {
        let root = RootKey::from_bytes(&[0xAB; 32]).unwrap();
        assert_eq!(format!("{root:?}"), "RootKey(<redacted>)");
        let op = BarrierOp::Put { path: "p".into(), plaintext: b"hunter2".to_vec() };
        let dbg = format!("{op:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("104"), "{dbg}");
    }

    #[tokio::test]
    async fn counts_persist_and_auto_rotate() {
        let (backend, barrier, root) = setup().await;
        let keyring_before = raw(&backend, KEYRING_PATH).await;
        // Fresh from storage the count carries one allowance; the first write persists it.
        assert_eq!(barrier.key_status().unwrap().encryptions, COUNT_PERSIST_INTERVAL);
        barrier.put("p", b"x").await.unwrap();
        assert_ne!(raw(&backend, KEYRING_PATH).await, keyring_before);
        barrier.put("p", b"y").await.unwrap();
        let other = Barrier::new(backend.clone());
        other.unseal(&root).await.unwrap();
        assert_eq!(other.key_status().unwrap().encryptions, 2 * COUNT_PERSIST_INTERVAL + 1);
        // Reloading does not add the allowance again for a term this node already counts.
        other.reload_keyring().await.unwrap();
        assert_eq!(other.key_status().unwrap().encryptions, 2 * COUNT_PERSIST_INTERVAL + 1);

        let set = |n: u64| {
            let kr = barrier.read_state().keyring.clone().unwrap();
            kr.active().encryptions.store(n, Ordering::Relaxed);
        };
        set(AUTO_ROTATE_ENCRYPTIONS - 1);
        barrier.put("p", b"z").await.unwrap();
        assert_eq!(barrier.key_status().unwrap().term, 2);
        assert_eq!(barrier.get("p").await.unwrap().unwrap(), b"z");
        // Hard stop if a term somehow reaches the limit.
        set(MAX_ENCRYPTIONS_PER_TERM);
        assert!(matches!(barrier.put("q", b"x").await, Err(BarrierError::KeyExhausted { term: 2 })));
    }

    #[tokio::test]
    async fn storage_errors_keep_their_variant() {
        struct NotLeader;
        #[async_trait::async_trait]
        impl Backend for NotLeader {
            async fn get(&self, _: &str) -> vaultd_storage::Result<Option<Vec<u8>>> {
                Err(vaultd_storage::Error::NotLeader { leader_api_addr: Some("https://l:8200".into()) })
            }
            async fn put(&self, _: &str, _: Vec<u8>) -> vaultd_storage::Result<()> {
                Err(vaultd_storage::Error::NotLeader { leader_api_addr: None })
            }
            async fn delete(&self, _: &str) -> vaultd_storage::Result<()> {
                Ok(())
            }
            async fn list(&self, _: &str) -> vaultd_storage::Result<Vec<String>> {
                Ok(vec![])
            }
            async fn transaction(&self, _: Vec<TxnOp>) -> vaultd_storage::Result<()> {
                Ok(())
            }
        }
        let barrier = Barrier::new(Arc::new(NotLeader));
        let err = barrier.initialized().await.unwrap_err();
        assert!(matches!(err, BarrierError::Storage(vaultd_storage::Error::NotLeader { leader_api_addr: Some(_) })));
    }

    /// `cargo test --release -- --ignored --nocapture bench_`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark: run in release with --ignored --nocapture --test-threads=1"]
    async fn bench_get_100_bytes() {
        let (_b, barrier, _root) = setup().await;
        let barrier = Arc::new(barrier);
        barrier.put("secret/data/bench", &[0x5a; 100]).await.unwrap();
        const N: u32 = 1_000_000;
        for _ in 0..10_000 {
            barrier.get("secret/data/bench").await.unwrap();
        }
        let start = std::time::Instant::now();
        for _ in 0..N {
            let v = barrier.get("secret/data/bench").await.unwrap();
            std::hint::black_box(v);
        }
        let single = start.elapsed().as_nanos() as f64 / f64::from(N);

        let start = std::time::Instant::now();
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let b = barrier.clone();
                tokio::spawn(async move {
                    for _ in 0..N / 2 {
                        std::hint::black_box(b.get("secret/data/bench").await.unwrap());
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let parallel = start.elapsed().as_nanos() as f64 / f64::from(N);

        let start = std::time::Instant::now();
        for _ in 0..N / 4 {
            barrier.put("secret/data/bench", &[0x5a; 100]).await.unwrap();
        }
        let put = start.elapsed().as_nanos() as f64 / f64::from(N / 4);
        println!("barrier get 100 B (InmemBackend): {single:.0} ns/op one task; {parallel:.0} ns/op aggregate over 2 tasks; put {put:.0} ns/op");
    }

    /// Baseline for the benchmark above: the backend alone.
    #[tokio::test]
    #[ignore = "benchmark: run in release with --ignored --nocapture --test-threads=1"]
    async fn bench_inmem_get_baseline() {
        let backend = InmemBackend::new();
        backend.put("secret/data/bench", vec![0x5a; 133]).await.unwrap();
        const N: u32 = 1_000_000;
        let start = std::time::Instant::now();
        for _ in 0..N {
            std::hint::black_box(backend.get("secret/data/bench").await.unwrap());
        }
        println!("InmemBackend get 133 B: {:.0} ns/op", start.elapsed().as_nanos() as f64 / f64::from(N));
    }
}
