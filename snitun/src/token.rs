//! Fernet tokens: the device's credential, minted by the session master and
//! checked by the server (PROTOCOL.md §1).
//!
//! Fernet is implemented here rather than taken from the `fernet` crate on
//! purpose: that crate checks a clock skew the reference never checks, panics
//! on an empty key list, and would pull in a second copy of the RustCrypto
//! stack. The format is small: `0x80 | timestamp u64 BE | IV 16 |
//! AES-128-CBC/PKCS7 ciphertext | HMAC-SHA256 of everything before it`,
//! URL-safe base64. The signing key is the first half of the 32-byte Fernet
//! key, the encryption key the second half.
//!
//! The Fernet timestamp is written but never checked: only the payload's
//! `valid` field expires a token, exactly as in the reference.
//!
//! Tokens reach [`KeyRing::validate`] as raw bytes from the network, so every
//! step here returns an error instead of panicking.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes::Aes128;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::crypto::Cipher;
use crate::error::{Error, Result};

/// The version byte every Fernet token starts with (base64 `gA`).
const FERNET_VERSION: u8 = 0x80;
/// Size of the Fernet key: 16 bytes HMAC key, then 16 bytes AES-128 key.
pub const FERNET_KEY_SIZE: usize = 32;
/// Size of the Fernet IV and of one AES block.
const BLOCK: usize = 16;
/// Size of the HMAC-SHA256 tag closing every token.
const TAG: usize = 32;
/// Version byte + timestamp + IV: the bytes in front of the ciphertext.
const HEADER: usize = 1 + 8 + BLOCK;

/// Size of the tunnel's AES key carried by the token (AES-256).
pub const AES_KEY_SIZE: usize = 32;
/// Size of the tunnel's CBC IV carried by the token.
pub const AES_IV_SIZE: usize = 16;

/// Lowest `valid` the reference can represent: 0001-01-01T00:00:00Z.
/// Python's `datetime.fromtimestamp` raises below it.
const MIN_VALID: f64 = -62_135_596_800.0;
/// First `valid` the reference cannot represent: 10000-01-01T00:00:00Z.
/// Python raises (ValueError/OverflowError) from here on, which drops the
/// connection; we reject such tokens as malformed.
const MAX_VALID: f64 = 253_402_300_800.0;

/// Protocol version written by [`TokenClaims::new`], as the reference's
/// minter always writes 2.
pub const CURRENT_PROTOCOL_VERSION: u8 = 2;

type HmacSha256 = Hmac<Sha256>;
type Aes128CbcEnc = cbc::Encryptor<Aes128>;
type Aes128CbcDec = cbc::Decryptor<Aes128>;

/// URL-safe base64. Output always carries `=` padding (as Python's
/// `urlsafe_b64encode` does, so tokens are byte-identical with the
/// reference's); input may omit it. Everything else is strict: characters
/// outside the URL-safe alphabet, the standard alphabet's `+`/`/`, trailing
/// garbage and non-canonical trailing bits are all rejected, where Python's
/// decoder silently skips or accepts them.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Current UTC unix time in seconds (0 if the clock is before 1970).
fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// 16 fresh random bytes from the thread-local CSPRNG.
fn random_16() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    bytes
}

// ---------------------------------------------------------------------------
// Fernet
// ---------------------------------------------------------------------------

/// One Fernet key (32 bytes: HMAC-SHA256 signing key, then AES-128 key).
///
/// Written and read as URL-safe base64, like Python's `Fernet.generate_key()`.
/// The bytes are wiped when the key is dropped, and `Debug` never shows them.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct FernetKey {
    signing: [u8; 16],
    encryption: [u8; 16],
}

impl FernetKey {
    /// A fresh random key.
    pub fn generate() -> FernetKey {
        FernetKey {
            signing: random_16(),
            encryption: random_16(),
        }
    }

    /// A key from its 32 raw bytes.
    pub fn from_bytes(bytes: &[u8; FERNET_KEY_SIZE]) -> FernetKey {
        let mut signing = [0u8; 16];
        let mut encryption = [0u8; 16];
        let (first, second) = bytes.split_at(16);
        signing.copy_from_slice(first);
        encryption.copy_from_slice(second);
        FernetKey {
            signing,
            encryption,
        }
    }

    /// A key from URL-safe base64 of 32 bytes (padding optional; surrounding
    /// whitespace, e.g. a newline from a key file, is ignored).
    ///
    /// # Errors
    /// [`Error::InvalidKey`] if the text is not base64 or not 32 bytes.
    pub fn from_base64(text: &str) -> Result<FernetKey> {
        let raw =
            Zeroizing::new(BASE64.decode(text.trim()).map_err(|e| {
                Error::InvalidKey(format!("Fernet key is not URL-safe base64: {e}"))
            })?);
        let bytes: &[u8; FERNET_KEY_SIZE] = raw.as_slice().try_into().map_err(|_| {
            Error::InvalidKey(format!(
                "Fernet key must be {FERNET_KEY_SIZE} bytes, got {}",
                raw.len()
            ))
        })?;
        Ok(FernetKey::from_bytes(bytes))
    }

    /// The key as URL-safe base64 with padding (44 characters), the form
    /// Python's `cryptography` uses.
    pub fn to_base64(&self) -> String {
        let mut raw = Zeroizing::new([0u8; FERNET_KEY_SIZE]);
        let (first, second) = raw.split_at_mut(16);
        first.copy_from_slice(&self.signing);
        second.copy_from_slice(&self.encryption);
        BASE64.encode(raw.as_slice())
    }

    /// Encrypt `data` into a Fernet token stamped with the current time and a
    /// random IV.
    pub fn encrypt(&self, data: &[u8]) -> String {
        self.encrypt_with(data, unix_now().as_secs(), random_16())
    }

    /// Encrypt with a given timestamp and IV: deterministic, for test vectors.
    /// Never reuse an IV with the same key outside tests.
    pub fn encrypt_with(&self, data: &[u8], timestamp: u64, iv: [u8; 16]) -> String {
        // PKCS#7 always adds 1..=16 bytes, so the padded text is never empty.
        let pad = BLOCK - data.len() % BLOCK;
        let mut padded = Zeroizing::new(Vec::with_capacity(data.len() + pad));
        padded.extend_from_slice(data);
        // `pad` is 1..=16, so the cast is lossless.
        padded.resize(data.len() + pad, pad as u8);

        // Encrypting whole blocks is infallible, unlike the padded helpers,
        // whose only error (buffer too small) cannot happen here but would
        // still need handling.
        let mut blocks: Vec<aes::Block> = padded
            .chunks_exact(BLOCK)
            .map(|chunk| {
                let mut block = aes::Block::default();
                block.copy_from_slice(chunk);
                block
            })
            .collect();
        Aes128CbcEnc::new(&self.encryption.into(), &iv.into()).encrypt_blocks(&mut blocks);

        let mut raw = Vec::with_capacity(HEADER + padded.len() + TAG);
        raw.push(FERNET_VERSION);
        raw.extend_from_slice(&timestamp.to_be_bytes());
        raw.extend_from_slice(&iv);
        for block in &blocks {
            raw.extend_from_slice(block);
        }
        let tag = self.mac().chain_update(&raw).finalize().into_bytes();
        raw.extend_from_slice(&tag);
        BASE64.encode(&raw)
    }

    /// Decrypt a Fernet token made with this key. The timestamp is ignored.
    ///
    /// # Errors
    /// [`Error::InvalidToken`] for anything that is not a token of this key.
    pub fn decrypt(&self, token: &[u8]) -> Result<Vec<u8>> {
        let raw = decode_token(token).ok_or(Error::InvalidToken)?;
        self.open(&raw).ok_or(Error::InvalidToken)
    }

    /// HMAC-SHA256 keyed with the signing half.
    ///
    /// HMAC pads keys shorter than the hash block with zeros (RFC 2104), so
    /// the 16-byte key zero-extended to the 64-byte block is the same key;
    /// building it that way avoids `new_from_slice`'s (never taken) error path.
    fn mac(&self) -> HmacSha256 {
        let mut block = hmac::digest::Key::<HmacSha256>::default();
        for (dst, src) in block.iter_mut().zip(self.signing.iter()) {
            *dst = *src;
        }
        let mac = <HmacSha256 as KeyInit>::new(&block);
        block.as_mut_slice().zeroize();
        mac
    }

    /// Verify and decrypt the decoded bytes of a token; `None` on any fault.
    fn open(&self, raw: &[u8]) -> Option<Vec<u8>> {
        let (&version, _) = raw.split_first()?;
        if version != FERNET_VERSION {
            return None;
        }
        let (signed, tag) = raw.split_at_checked(raw.len().checked_sub(TAG)?)?;
        // Authenticate before touching the ciphertext (constant-time compare
        // inside `verify_slice`), so nothing below is a padding oracle.
        self.mac().chain_update(signed).verify_slice(tag).ok()?;

        let (_version_and_time, rest) = signed.split_at_checked(1 + 8)?;
        let (iv, ciphertext) = rest.split_first_chunk::<BLOCK>()?;
        if ciphertext.is_empty() || ciphertext.len() % BLOCK != 0 {
            return None;
        }
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let plain = Aes128CbcDec::new(&self.encryption.into(), &(*iv).into())
            .decrypt_padded::<Pkcs7>(&mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

impl fmt::Debug for FernetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FernetKey(<redacted>)")
    }
}

impl FromStr for FernetKey {
    type Err = Error;

    fn from_str(text: &str) -> Result<FernetKey> {
        FernetKey::from_base64(text)
    }
}

/// Base64 layer of a token. `None` for anything that is not strict URL-safe
/// base64 (the reference's lenient decoding is deliberately not copied: a
/// token that only decodes leniently has been mangled on the way).
fn decode_token(token: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    BASE64.decode(token).ok().map(Zeroizing::new)
}

/// The server's Fernet keys (Python's `MultiFernet`): tokens are minted with
/// the first key and accepted if any key opens them, which allows rotation.
#[derive(Clone)]
pub struct KeyRing {
    // The minting key is held apart so that "never empty" is a fact of the
    // type, not an invariant an accessor would have to panic on.
    first: FernetKey,
    others: Vec<FernetKey>,
}

impl KeyRing {
    /// A ring of the given keys, the first one used for minting.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] if `keys` is empty.
    pub fn new(keys: Vec<FernetKey>) -> Result<KeyRing> {
        let mut keys = keys.into_iter();
        let first = keys.next().ok_or_else(|| {
            Error::InvalidKey("the key ring needs at least one Fernet key".into())
        })?;
        Ok(KeyRing {
            first,
            others: keys.collect(),
        })
    }

    /// A ring from URL-safe base64 keys, in order.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] if a key is malformed or there is none.
    pub fn from_strings<I, S>(keys: I) -> Result<KeyRing>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let keys = keys
            .into_iter()
            .map(|key| FernetKey::from_base64(key.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        KeyRing::new(keys)
    }

    /// The key new tokens are minted with.
    pub fn primary(&self) -> &FernetKey {
        &self.first
    }

    /// All keys in the order they are tried, minting key first.
    pub fn keys(&self) -> impl Iterator<Item = &FernetKey> {
        std::iter::once(&self.first).chain(self.others.iter())
    }

    /// Number of keys (at least 1).
    pub fn len(&self) -> usize {
        1 + self.others.len()
    }

    /// Always false: a ring holds at least one key.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Encrypt with the first key (current time, random IV).
    pub fn encrypt(&self, data: &[u8]) -> String {
        self.first.encrypt(data)
    }

    /// Decrypt with the first key that opens the token; the Fernet timestamp
    /// is not checked.
    ///
    /// # Errors
    /// [`Error::InvalidToken`] if no key opens it.
    pub fn decrypt(&self, token: &[u8]) -> Result<Vec<u8>> {
        let raw = decode_token(token).ok_or(Error::InvalidToken)?;
        self.keys()
            .find_map(|key| key.open(&raw))
            .ok_or(Error::InvalidToken)
    }

    /// Mint a token for `claims` with the first key, now.
    pub fn mint(&self, claims: &TokenClaims) -> String {
        self.mint_at(claims, unix_now().as_secs())
    }

    /// Mint with a given Fernet timestamp (which no validator checks).
    pub fn mint_at(&self, claims: &TokenClaims, fernet_time: u64) -> String {
        self.mint_with_iv(claims, fernet_time, random_16())
    }

    /// Mint deterministically, with a given Fernet timestamp and IV: for
    /// tests and vectors only; never reuse an IV with the same key.
    pub fn mint_with_iv(&self, claims: &TokenClaims, fernet_time: u64, iv: [u8; 16]) -> String {
        let payload = claims.payload_json();
        self.first.encrypt_with(payload.as_bytes(), fernet_time, iv)
    }

    /// Check a token as the server does on a new peer connection, against
    /// the current time.
    ///
    /// # Errors
    /// See [`KeyRing::validate_at`].
    pub fn validate(&self, token: &[u8]) -> Result<PeerToken> {
        self.validate_at(token, unix_now().as_secs_f64())
    }

    /// Check a token against the given time (UTC unix seconds).
    ///
    /// # Errors
    /// - [`Error::InvalidToken`]: not a Fernet token of any key;
    /// - [`Error::InvalidTokenPayload`]: not UTF-8 JSON;
    /// - [`Error::MalformedToken`]: a field missing, of the wrong type,
    ///   badly encoded, of the wrong size, or duplicated; `valid` out of range;
    /// - [`Error::UnsupportedCipher`]: a cipher name we do not know;
    /// - [`Error::TokenExpired`]: `valid` is before `now`.
    pub fn validate_at(&self, token: &[u8], now: f64) -> Result<PeerToken> {
        let payload = Zeroizing::new(self.decrypt(token)?);
        PeerToken::from_payload(&payload, now)
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("keys", &self.len())
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Token payload
// ---------------------------------------------------------------------------

/// What a valid token says about the peer presenting it.
///
/// The AES key and IV are wiped when this is dropped and never shown by
/// `Debug`.
#[derive(Clone, PartialEq)]
pub struct PeerToken {
    /// Primary hostname the peer serves.
    pub hostname: String,
    /// Further hostnames served by the same peer (`alias`).
    pub aliases: Vec<String>,
    /// Multiplexer protocol version (0 when the token has none).
    pub protocol_version: u8,
    /// Tunnel cipher (aes-cbc when the token names none).
    pub cipher: Cipher,
    /// Tunnel AES-256 key.
    pub aes_key: [u8; AES_KEY_SIZE],
    /// Tunnel CBC IV; all zeros for the AEAD ciphers when the token's IV is
    /// not 16 bytes (they do not use it).
    pub aes_iv: [u8; AES_IV_SIZE],
    /// Expiry, UTC unix seconds.
    pub valid: f64,
}

impl PeerToken {
    /// Check a decrypted token payload against `now` (UTC unix seconds).
    ///
    /// Field rules: `valid` (number, required), `hostname` (non-empty string),
    /// `aes_key` (hex, 32 bytes), `aes_iv` (hex; 16 bytes for aes-cbc, any
    /// length for the AEAD ciphers, which ignore it), `protocol_version`
    /// (0..=255, absent means 0), `cipher` (absent or null means aes-cbc),
    /// `alias` (list of non-empty strings; absent or null means none). Unknown fields
    /// are ignored; a repeated field is rejected.
    ///
    /// # Errors
    /// As [`KeyRing::validate_at`], minus [`Error::InvalidToken`].
    pub fn from_payload(payload: &[u8], now: f64) -> Result<PeerToken> {
        let text = std::str::from_utf8(payload)
            .map_err(|e| Error::InvalidTokenPayload(format!("not UTF-8: {e}")))?;
        // Two passes, so the error classes follow the reference's: anything
        // `json.loads` would refuse (including trailing data after a complete
        // object) is an invalid payload; only then are shape and types checked.
        serde_json::from_str::<de::IgnoredAny>(text)
            .map_err(|e| Error::InvalidTokenPayload(format!("not JSON: {e}")))?;
        let raw: RawPayload =
            serde_json::from_str(text).map_err(|e| Error::MalformedToken(e.to_string()))?;
        raw.check(now)
    }
}

impl fmt::Debug for PeerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerToken")
            .field("hostname", &self.hostname)
            .field("aliases", &self.aliases)
            .field("protocol_version", &self.protocol_version)
            .field("cipher", &self.cipher)
            .field("aes_key", &"<redacted>")
            .field("aes_iv", &"<redacted>")
            .field("valid", &self.valid)
            .finish()
    }
}

impl Drop for PeerToken {
    fn drop(&mut self) {
        self.aes_key.zeroize();
        self.aes_iv.zeroize();
    }
}

/// The payload as JSON types, before range and encoding checks.
///
/// Typed fields give MalformedToken for the reference's type quirks (numeric
/// hostname, string alias or protocol_version), and serde's derive rejects
/// repeated fields instead of letting the last one win.
#[derive(Deserialize)]
struct RawFields {
    valid: f64,
    hostname: String,
    aes_key: String,
    aes_iv: String,
    // A null `protocol_version` is rejected (the reference would carry
    // `None` into the multiplexer and fail there); absence means 0.
    #[serde(default)]
    protocol_version: u8,
    #[serde(default)]
    cipher: Option<String>,
    #[serde(default)]
    alias: Option<Vec<String>>,
}

impl Drop for RawFields {
    fn drop(&mut self) {
        self.aes_key.zeroize();
        self.aes_iv.zeroize();
    }
}

/// [`RawFields`] accepted only from a JSON object: serde's derived
/// deserializer would also take a JSON array as a positional struct, which
/// the reference (`config["valid"]` on a list) rejects.
struct RawPayload(RawFields);

impl<'de> Deserialize<'de> for RawPayload {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectOnly;

        impl<'de> Visitor<'de> for ObjectOnly {
            type Value = RawPayload;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawPayload, A::Error> {
                RawFields::deserialize(de::value::MapAccessDeserializer::new(map)).map(RawPayload)
            }
        }

        deserializer.deserialize_map(ObjectOnly)
    }
}

impl RawPayload {
    /// Apply the checks in the reference's order: `valid` (range, then
    /// expiry) first, then the keys and cipher.
    fn check(self, now: f64) -> Result<PeerToken> {
        let RawPayload(mut raw) = self;
        let valid = raw.valid;
        if !valid.is_finite() || !(MIN_VALID..MAX_VALID).contains(&valid) {
            return Err(Error::MalformedToken(format!(
                "valid {valid:?} is outside years 1..=9999"
            )));
        }
        if valid < now {
            return Err(Error::TokenExpired { valid });
        }

        // An empty name can never match a ClientHello's SNI (RFC 6066 names
        // are not empty); the reference would register it anyway.
        if raw.hostname.is_empty() {
            return Err(Error::MalformedToken("hostname is empty".into()));
        }
        if raw
            .alias
            .as_ref()
            .is_some_and(|names| names.iter().any(String::is_empty))
        {
            return Err(Error::MalformedToken("alias has an empty name".into()));
        }

        let cipher = match raw.cipher.as_deref() {
            None => Cipher::AesCbc,
            // Unlike the reference, which silently falls back to aes-cbc, an
            // unknown name is refused: the client would be running some other
            // cipher and the handshake could only fail later, less clearly.
            Some(name) => Cipher::from_name(name)?,
        };

        let key_bytes = decode_hex("aes_key", &raw.aes_key)?;
        let aes_key: [u8; AES_KEY_SIZE] = key_bytes.as_slice().try_into().map_err(|_| {
            Error::MalformedToken(format!(
                "aes_key is {} bytes; {AES_KEY_SIZE} required (AES-256)",
                key_bytes.len()
            ))
        })?;

        // The IV's hex is checked for every cipher, as the reference decodes
        // it unconditionally; only aes-cbc needs its size.
        let iv_bytes = decode_hex("aes_iv", &raw.aes_iv)?;
        let aes_iv: [u8; AES_IV_SIZE] = match iv_bytes.as_slice().try_into() {
            Ok(iv) => iv,
            Err(_) if cipher != Cipher::AesCbc => [0u8; AES_IV_SIZE],
            Err(_) => {
                return Err(Error::MalformedToken(format!(
                    "aes_iv is {} bytes; aes-cbc needs {AES_IV_SIZE}",
                    iv_bytes.len()
                )));
            }
        };

        Ok(PeerToken {
            hostname: std::mem::take(&mut raw.hostname),
            aliases: raw.alias.take().unwrap_or_default(),
            protocol_version: raw.protocol_version,
            cipher,
            aes_key,
            aes_iv,
            valid,
        })
    }
}

/// Decode a hex field into wiped-on-drop bytes.
fn decode_hex(field: &str, text: &str) -> Result<Zeroizing<Vec<u8>>> {
    hex::decode(text)
        .map(Zeroizing::new)
        .map_err(|e| Error::MalformedToken(format!("{field} is not hex: {e}")))
}

// ---------------------------------------------------------------------------
// Minting
// ---------------------------------------------------------------------------

/// What a minted token grants: the payload of [`KeyRing::mint`].
///
/// The AES key and IV are wiped when this is dropped and never shown by
/// `Debug`.
#[derive(Clone, PartialEq)]
pub struct TokenClaims {
    /// Primary hostname.
    pub hostname: String,
    /// Extra hostnames (written as `alias` only when non-empty).
    pub aliases: Vec<String>,
    /// Expiry, UTC unix seconds.
    pub valid: f64,
    /// Tunnel AES-256 key.
    pub aes_key: [u8; AES_KEY_SIZE],
    /// Tunnel CBC IV (written for every cipher, as the reference does).
    pub aes_iv: [u8; AES_IV_SIZE],
    /// Multiplexer protocol version.
    pub protocol_version: u8,
    /// Tunnel cipher (written as `cipher` only when not aes-cbc).
    pub cipher: Cipher,
}

impl TokenClaims {
    /// Claims for `hostname`, valid for `valid_for` from now, with a fresh
    /// random AES key and IV, protocol version 2 and aes-cbc (the
    /// reference's `generate_client_token` defaults).
    pub fn new(hostname: impl Into<String>, valid_for: Duration) -> TokenClaims {
        let mut aes_key = [0u8; AES_KEY_SIZE];
        rand::fill(&mut aes_key);
        TokenClaims {
            hostname: hostname.into(),
            aliases: Vec::new(),
            valid: unix_now().saturating_add(valid_for).as_secs_f64(),
            aes_key,
            aes_iv: random_16(),
            protocol_version: CURRENT_PROTOCOL_VERSION,
            cipher: Cipher::AesCbc,
        }
    }

    /// The same claims with another cipher.
    #[must_use]
    pub fn with_cipher(mut self, cipher: Cipher) -> TokenClaims {
        self.cipher = cipher;
        self
    }

    /// The same claims with these aliases.
    #[must_use]
    pub fn with_aliases(mut self, aliases: Vec<String>) -> TokenClaims {
        self.aliases = aliases;
        self
    }

    /// The same claims with another protocol version.
    #[must_use]
    pub fn with_protocol_version(mut self, protocol_version: u8) -> TokenClaims {
        self.protocol_version = protocol_version;
        self
    }

    /// The token payload exactly as the reference's minter writes it
    /// (Python `json.dumps`: `", "`/`": "` separators, ASCII-only strings,
    /// `valid` as a Python float): keys `valid, hostname, aes_key, aes_iv,
    /// protocol_version`, then `cipher` unless aes-cbc, then `alias` unless
    /// empty.
    pub fn payload_json(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(256));
        out.push_str("{\"valid\": ");
        out.push_str(&python_float_repr(self.valid));
        out.push_str(", \"hostname\": ");
        push_python_json_str(&mut out, &self.hostname);
        out.push_str(", \"aes_key\": \"");
        out.push_str(&Zeroizing::new(hex::encode(self.aes_key)));
        out.push_str("\", \"aes_iv\": \"");
        out.push_str(&Zeroizing::new(hex::encode(self.aes_iv)));
        out.push_str("\", \"protocol_version\": ");
        out.push_str(&self.protocol_version.to_string());
        if self.cipher != Cipher::AesCbc {
            out.push_str(", \"cipher\": ");
            push_python_json_str(&mut out, self.cipher.name());
        }
        if !self.aliases.is_empty() {
            out.push_str(", \"alias\": [");
            for (i, alias) in self.aliases.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                push_python_json_str(&mut out, alias);
            }
            out.push(']');
        }
        out.push('}');
        out
    }
}

impl fmt::Debug for TokenClaims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenClaims")
            .field("hostname", &self.hostname)
            .field("aliases", &self.aliases)
            .field("valid", &self.valid)
            .field("aes_key", &"<redacted>")
            .field("aes_iv", &"<redacted>")
            .field("protocol_version", &self.protocol_version)
            .field("cipher", &self.cipher)
            .finish()
    }
}

impl Drop for TokenClaims {
    fn drop(&mut self) {
        self.aes_key.zeroize();
        self.aes_iv.zeroize();
    }
}

/// A float as Python's `repr` (and so `json.dumps`) prints it: shortest
/// round-trip digits, always a fractional part or exponent (`4290105600.0`),
/// scientific notation outside 1e-4 <= |x| < 1e16 (`1e+16`, `1e-05`), and
/// `NaN`/`Infinity` for the non-finite values.
fn python_float_repr(value: f64) -> String {
    if value.is_nan() {
        return "NaN".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` yields the same shortest digits as Python, e.g. "1.5e16".
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = match scientific.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (scientific.as_str(), 0),
    };
    // Python switches to an exponent when the decimal point would sit more
    // than 16 digits right of the first digit or 4 zeros left of it.
    if (-4..=15).contains(&exponent) {
        let mut fixed = format!("{value}");
        if !fixed.contains('.') {
            fixed.push_str(".0");
        }
        fixed
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.unsigned_abs())
    }
}

/// A JSON string as Python's `json.dumps` writes it with the default
/// `ensure_ascii=True`: short escapes for `"` `\` and five controls, every
/// other character outside printable ASCII as lowercase `\uXXXX` (UTF-16
/// surrogate pairs above the BMP).
fn push_python_json_str(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str("\\u");
                    for shift in [12u16, 8, 4, 0] {
                        let nibble = usize::from((*unit >> shift) & 0xf);
                        out.push(char::from(HEX.get(nibble).copied().unwrap_or(b'0')));
                    }
                }
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY_NEW: &str = "FdGqvkxA88FoKc5ApCmj3LByrRH-qm2OxSKoxHSVJz4=";
    const KEY_OLD: &str = "B41s94Khy09gWXV3vEOKdNOgWDXNldC_7q60_shd4UY=";
    const NOW: f64 = 1_767_225_600.0; // 2026-01-01
    const FUTURE: f64 = 4_102_444_800.0; // 2100-01-01
    const KEY_HEX: &str = "18abda612a75d4f3577d21a532177440435eb638f990e08e5b6618d783372066";
    const IV_HEX: &str = "5cd8df95cbb2a79d0ff072e2bfbd791b";

    fn ring(keys: &[&str]) -> KeyRing {
        KeyRing::from_strings(keys).unwrap()
    }

    fn claims() -> TokenClaims {
        TokenClaims {
            hostname: "abcdef0123.ui.example.net".into(),
            aliases: vec![],
            valid: 4_290_105_600.0,
            aes_key: hex::decode(KEY_HEX).unwrap().try_into().unwrap(),
            aes_iv: hex::decode(IV_HEX).unwrap().try_into().unwrap(),
            protocol_version: 2,
            cipher: Cipher::AesCbc,
        }
    }

    /// A token carrying `payload` verbatim, encrypted with the NEW key.
    fn token_for(payload: &str) -> Vec<u8> {
        ring(&[KEY_NEW]).encrypt(payload.as_bytes()).into_bytes()
    }

    fn payload(extra: &str) -> String {
        format!(
            "{{\"valid\": {FUTURE:?}, \"hostname\": \"home.example.org\", \
             \"aes_key\": \"{KEY_HEX}\", \"aes_iv\": \"{IV_HEX}\"{extra}}}"
        )
    }

    fn validate(payload: &str) -> Result<PeerToken> {
        ring(&[KEY_NEW]).validate_at(&token_for(payload), NOW)
    }

    #[test]
    fn key_round_trip_and_debug_hides_it() {
        let key = FernetKey::from_base64(KEY_NEW).unwrap();
        assert_eq!(key.to_base64(), KEY_NEW);
        assert_eq!(format!("{key:?}"), "FernetKey(<redacted>)");
        let unpadded = FernetKey::from_base64(KEY_NEW.trim_end_matches('=')).unwrap();
        assert_eq!(unpadded.to_base64(), KEY_NEW);
        assert_eq!(
            FernetKey::from_base64(&format!(" {KEY_NEW}\n"))
                .unwrap()
                .to_base64(),
            KEY_NEW
        );
        let generated = FernetKey::generate();
        assert_eq!(generated.to_base64().len(), 44);
        assert_eq!(
            FernetKey::from_base64(&generated.to_base64())
                .unwrap()
                .to_base64(),
            generated.to_base64()
        );
        assert_ne!(generated.to_base64(), FernetKey::generate().to_base64());
    }

    #[test]
    fn bad_keys_are_rejected() {
        for bad in [
            "",
            "short",
            "FdGqvkxA88FoKc5ApCmj3LByrRH+qm2OxSKoxHSVJz4=", // standard alphabet
            "FdGqvkxA88FoKc5ApCmj3LByrRH-qm2OxSKoxHSVJz4AAAA=",
            "FdGqvkxA88FoKc5ApCmj3LByrRH-qm2OxSKoxHSV",
        ] {
            assert!(
                matches!(FernetKey::from_base64(bad), Err(Error::InvalidKey(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(KeyRing::new(vec![]), Err(Error::InvalidKey(_))));
        assert!(matches!(
            KeyRing::from_strings(Vec::<String>::new()),
            Err(Error::InvalidKey(_))
        ));
        assert!(matches!(
            KeyRing::from_strings([KEY_NEW, "nope"]),
            Err(Error::InvalidKey(_))
        ));
    }

    #[test]
    fn debug_never_shows_key_material() {
        let claims = claims();
        let token = ring(&[KEY_NEW]).validate_at(ring(&[KEY_NEW]).mint(&claims).as_bytes(), NOW);
        let shown = format!("{claims:?} {token:?} {:?}", ring(&[KEY_NEW, KEY_OLD]));
        assert!(
            !shown.contains(KEY_HEX) && !shown.contains("18, 171"),
            "{shown}"
        );
        assert!(
            !shown.contains(IV_HEX) && !shown.contains("92, 216"),
            "{shown}"
        );
        assert!(!shown.contains("FdGq"), "{shown}");
    }

    #[test]
    fn fernet_round_trip_and_layout() {
        let key = FernetKey::from_base64(KEY_NEW).unwrap();
        for len in [0usize, 1, 15, 16, 17, 100] {
            let data = vec![0xa5u8; len];
            let token = key.encrypt_with(&data, 0x0102_0304_0506_0708, [7u8; 16]);
            assert!(token.starts_with("gA"));
            let raw = BASE64.decode(&token).unwrap();
            assert_eq!(raw[0], 0x80);
            assert_eq!(raw[1..9], [1, 2, 3, 4, 5, 6, 7, 8]);
            assert_eq!(raw[9..25], [7u8; 16]);
            assert_eq!(raw.len(), HEADER + (len / 16 + 1) * 16 + TAG);
            assert_eq!(key.decrypt(token.as_bytes()).unwrap(), data);
            // Padding is optional on input.
            assert_eq!(
                key.decrypt(token.trim_end_matches('=').as_bytes()).unwrap(),
                data
            );
        }
    }

    /// A token from Python's `cryptography` (`Fernet(KEY_NEW)`), to pin the
    /// key split and layout independently of our own encryptor.
    #[test]
    fn decrypts_a_reference_token() {
        let token = "gAAAAABpVbkAqOucQ6oTTNypzCuFEfsaO00fgX0d1IzH0bU6lx9ZF-df-7m0u6lYRQ1qV8JtT49kc9BM557xHveQSDM0v9m3JdvVAk-cgLBbGH0WojY09R0DEGKW71zw6uDGpVtrnyTTMQE9IchzVkUbES3TrSo8RYUn0d0E-e9q4MIB_6Sq-lor0AJm8y4erT46b_0XXXC-u5uHFIhvy7IaIPR32AMZrSgBQjYlOgJtyoLkmNR7T1k1dA10ogQonjVJ-Y68-4sd4TDyL66RWqBn0SntSARhmlJ4BGG4Io7qG4jaMxNWU-5bYJNItrpUCWxNYImulBar1MhGgsULKWwoFloj3q7_d9y5wx1ba3LUxglqCg5wuzQ=";
        let plain = ring(&[KEY_NEW]).decrypt(token.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(plain).unwrap(), *claims().payload_json(),);
        // And our encryptor reproduces it byte for byte from its IV and time.
        let raw = BASE64.decode(token).unwrap();
        let time = u64::from_be_bytes(raw[1..9].try_into().unwrap());
        let iv: [u8; 16] = raw[9..25].try_into().unwrap();
        assert_eq!(ring(&[KEY_NEW]).mint_with_iv(&claims(), time, iv), token);
    }

    #[test]
    fn tampering_and_garbage_are_invalid_tokens() {
        let ring = ring(&[KEY_NEW]);
        let good = ring.mint(&claims());
        let raw = BASE64.decode(&good).unwrap();
        let mut cases: Vec<Vec<u8>> = vec![
            vec![],
            b"gA".to_vec(),
            b"====".to_vec(),
            b"\x00\x01\x02 not a token".to_vec(),
            format!("{good}\n").into_bytes(),
            format!("{good}AAAA").into_bytes(),
            good.replace('-', "+").replace('_', "/").into_bytes(),
            good.as_bytes()[..good.len() / 2].to_vec(),
            good.as_bytes()[..good.len() - 4].to_vec(),
            FernetKey::generate().encrypt(b"{}").into_bytes(),
        ];
        for i in [0, 1, 9, 25, raw.len() - 33, raw.len() - 1] {
            let mut flipped = raw.clone();
            flipped[i] ^= 1;
            cases.push(BASE64.encode(&flipped).into_bytes());
        }
        // Authentic HMAC over bad structure: empty and ragged ciphertext.
        let key = FernetKey::from_base64(KEY_NEW).unwrap();
        for ct_len in [0usize, 5, 17] {
            let mut body = vec![0x80u8];
            body.extend_from_slice(&[0u8; 8 + 16]);
            body.extend(std::iter::repeat_n(0x11u8, ct_len));
            let tag = key.mac().chain_update(&body).finalize().into_bytes();
            body.extend_from_slice(&tag);
            cases.push(BASE64.encode(&body).into_bytes());
        }
        // Authentic HMAC and valid block count, but the padding is wrong.
        let mut blocks = [aes::Block::default()];
        blocks[0].copy_from_slice(&[0u8; 16]);
        Aes128CbcEnc::new(&key.encryption.into(), &[0u8; 16].into()).encrypt_blocks(&mut blocks);
        let mut body = vec![0x80u8];
        body.extend_from_slice(&[0u8; 24]);
        body.extend_from_slice(&blocks[0]);
        let tag = key.mac().chain_update(&body).finalize().into_bytes();
        body.extend_from_slice(&tag);
        cases.push(BASE64.encode(&body).into_bytes());

        for case in cases {
            assert!(
                matches!(ring.validate_at(&case, NOW), Err(Error::InvalidToken)),
                "{:?}",
                String::from_utf8_lossy(&case)
            );
        }
    }

    #[test]
    fn fernet_timestamp_is_ignored() {
        let ring = ring(&[KEY_NEW]);
        for time in [0, u64::MAX] {
            let token = ring.mint_at(&claims(), time);
            assert!(ring.validate_at(token.as_bytes(), NOW).is_ok());
        }
    }

    #[test]
    fn rotation_mints_with_first_and_accepts_any() {
        let both = ring(&[KEY_NEW, KEY_OLD]);
        let old_only = ring(&[KEY_OLD]);
        let new_only = ring(&[KEY_NEW]);
        let token = both.mint(&claims());
        assert!(new_only.validate_at(token.as_bytes(), NOW).is_ok());
        assert!(matches!(
            old_only.validate_at(token.as_bytes(), NOW),
            Err(Error::InvalidToken)
        ));
        let old_token = old_only.mint(&claims());
        assert!(both.validate_at(old_token.as_bytes(), NOW).is_ok());
        assert_eq!(both.len(), 2);
        assert_eq!(both.keys().count(), 2);
    }

    #[test]
    fn payload_matches_reference_minter() {
        let mut c = claims();
        assert_eq!(
            *c.payload_json(),
            format!(
                "{{\"valid\": 4290105600.0, \"hostname\": \"abcdef0123.ui.example.net\", \
                 \"aes_key\": \"{KEY_HEX}\", \"aes_iv\": \"{IV_HEX}\", \"protocol_version\": 2}}"
            )
        );
        c.cipher = Cipher::AesGcmSiv;
        c.aliases = vec!["a.example".into(), "b\"\u{e9}\u{1f600}\x7f".into()];
        assert!(c.payload_json().ends_with(
            "\"protocol_version\": 2, \"cipher\": \"aes-gcm-siv\", \
             \"alias\": [\"a.example\", \"b\\\"\\u00e9\\ud83d\\ude00\\u007f\"]}"
        ));
        // What we write, we read back identically.
        let token = validate(&c.payload_json()).unwrap();
        assert_eq!(token.aliases, c.aliases);
        assert_eq!(token.cipher, Cipher::AesGcmSiv);
    }

    #[test]
    fn expiry_survives_the_json_round_trip_exactly() {
        // Regression: serde_json without `float_roundtrip` read some
        // timestamps 1 ULP off (about one fresh token in a few hundred).
        let ring = KeyRing::new(vec![FernetKey::generate()]).unwrap();
        for i in 0..2000u32 {
            let mut claims = TokenClaims::new("device.example", Duration::ZERO);
            claims.valid = 1_767_139_200.0 + f64::from(i) * 0.000_137_9 + 1e9;
            let token = ring
                .validate_at(ring.mint(&claims).as_bytes(), 0.0)
                .unwrap();
            assert_eq!(
                token.valid.to_bits(),
                claims.valid.to_bits(),
                "{}",
                claims.valid
            );
        }
    }

    #[test]
    fn python_float_reprs() {
        for (value, python) in [
            (4_290_105_600.0, "4290105600.0"),
            (1_767_139_200.5, "1767139200.5"),
            (1_767_139_200.123_456, "1767139200.123456"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e20, "1e+20"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5e-7, "-2.5e-07"),
            (1e300, "1e+300"),
            (0.1, "0.1"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            assert_eq!(python_float_repr(value), python, "{value:e}");
        }
    }

    #[test]
    fn accepts_the_documented_shapes() {
        let t = validate(&payload("")).unwrap();
        assert_eq!(t.hostname, "home.example.org");
        assert_eq!(t.protocol_version, 0);
        assert_eq!(t.cipher, Cipher::AesCbc);
        assert!(t.aliases.is_empty());
        assert_eq!(hex::encode(t.aes_key), KEY_HEX);
        assert_eq!(hex::encode(t.aes_iv), IV_HEX);
        assert_eq!(t.valid, FUTURE);

        let t = validate(&payload(
            ", \"cipher\": null, \"alias\": null, \"x\": [[{}]]",
        ))
        .unwrap();
        assert_eq!((t.cipher, t.aliases.len()), (Cipher::AesCbc, 0));
        let t = validate(&payload(", \"protocol_version\": 255, \"alias\": [\"a\"]")).unwrap();
        assert_eq!(
            (t.protocol_version, &t.aliases[..]),
            (255, &["a".to_string()][..])
        );
        // Integer valid, upper-case hex, the exact expiry second.
        let t = validate(&format!(
            "{{\"valid\": 1767225600, \"hostname\": \"h\", \"aes_key\": \"{}\", \"aes_iv\": \"{IV_HEX}\"}}",
            KEY_HEX.to_uppercase()
        ))
        .unwrap();
        assert_eq!(t.valid, NOW);
        assert_eq!(hex::encode(t.aes_key), KEY_HEX);
        // AEAD ciphers ignore the IV: any hex length is fine, stored as zeros.
        for cipher in ["aes-gcm", "aes-gcm-siv"] {
            for iv in ["", "00", IV_HEX, "0011223344556677"] {
                let t = validate(&format!(
                    "{{\"valid\": {FUTURE:?}, \"hostname\": \"h\", \"aes_key\": \"{KEY_HEX}\", \
                     \"aes_iv\": \"{iv}\", \"cipher\": \"{cipher}\"}}"
                ))
                .unwrap();
                let want = if iv == IV_HEX {
                    IV_HEX.to_string()
                } else {
                    "00".repeat(16)
                };
                assert_eq!(hex::encode(t.aes_iv), want);
            }
        }
    }

    #[test]
    fn rejects_bad_payloads_with_the_right_reason() {
        let invalid_payload = |p: &[u8]| {
            let token = ring(&[KEY_NEW]).encrypt(p);
            matches!(
                ring(&[KEY_NEW]).validate_at(token.as_bytes(), NOW),
                Err(Error::InvalidTokenPayload(_))
            )
        };
        for p in [
            &b""[..],
            b"hello world",
            b"\xff\xfe{}",
            b"{\"valid\": NaN}",
            b"{} trailing",
            b"\xef\xbb\xbf{}",
            "[".repeat(100_000).as_bytes(),
        ] {
            assert!(invalid_payload(p), "{:?}", String::from_utf8_lossy(p));
        }
        // Deep nesting inside an ignored field must not overflow the stack.
        let deep = payload(&format!(", \"x\": {}", "[".repeat(100_000)));
        assert!(matches!(
            validate(&deep),
            Err(Error::InvalidTokenPayload(_))
        ));

        let malformed = [
            "[1, 2, 3]".to_string(),
            "1".into(),
            "null".into(),
            "\"x\"".into(),
            "{}".into(),
            format!("[{FUTURE:?}, \"h\", \"{KEY_HEX}\", \"{IV_HEX}\"]"),
            payload(", \"hostname\": \"dup\""),
            payload(", \"alias\": \"single\""),
            payload(", \"alias\": [1]"),
            payload(", \"protocol_version\": \"2\""),
            payload(", \"protocol_version\": 256"),
            payload(", \"protocol_version\": -1"),
            payload(", \"protocol_version\": 2.0"),
            payload(", \"protocol_version\": null"),
            payload(", \"cipher\": 1"),
            payload(", \"valid\": 1"),
            "{\"valid\": \"4102444800.0\", \"hostname\": \"h\", \"aes_key\": \"\", \"aes_iv\": \"\"}"
                .into(),
            format!(
                "{{\"valid\": 1e20, \"hostname\": \"h\", \"aes_key\": \"{KEY_HEX}\", \"aes_iv\": \"{IV_HEX}\"}}"
            ),
            format!(
                "{{\"valid\": 253402300800, \"hostname\": \"h\", \"aes_key\": \"{KEY_HEX}\", \"aes_iv\": \"{IV_HEX}\"}}"
            ),
            format!(
                "{{\"valid\": 99999999999999999999999, \"hostname\": \"h\", \"aes_key\": \"{KEY_HEX}\", \"aes_iv\": \"{IV_HEX}\"}}"
            ),
            format!("{{\"valid\": {FUTURE:?}, \"hostname\": 12345, \"aes_key\": \"{KEY_HEX}\", \"aes_iv\": \"{IV_HEX}\"}}"),
            format!("{{\"valid\": {FUTURE:?}, \"aes_key\": \"{KEY_HEX}\", \"aes_iv\": \"{IV_HEX}\"}}"),
            format!("{{\"valid\": {FUTURE:?}, \"hostname\": \"h\", \"aes_iv\": \"{IV_HEX}\"}}"),
            format!("{{\"valid\": {FUTURE:?}, \"hostname\": \"h\", \"aes_key\": \"{KEY_HEX}\"}}"),
            format!("{{\"hostname\": \"h\", \"aes_key\": \"{KEY_HEX}\", \"aes_iv\": \"{IV_HEX}\"}}"),
            format!("{{\"valid\": {FUTURE:?}, \"hostname\": \"h\", \"aes_key\": \"zz{}\", \"aes_iv\": \"{IV_HEX}\"}}", &KEY_HEX[2..]),
            format!("{{\"valid\": {FUTURE:?}, \"hostname\": \"h\", \"aes_key\": \"{}\", \"aes_iv\": \"{IV_HEX}\"}}", &KEY_HEX[..32]),
            format!("{{\"valid\": {FUTURE:?}, \"hostname\": \"h\", \"aes_key\": \"{KEY_HEX}00\", \"aes_iv\": \"{IV_HEX}\"}}"),
            format!("{{\"valid\": {FUTURE:?}, \"hostname\": \"h\", \"aes_key\": \"{}\", \"aes_iv\": \"{IV_HEX}\"}}", &KEY_HEX[..63]),
            format!("{{\"valid\": {FUTURE:?}, \"hostname\": \"h\", \"aes_key\": \"{KEY_HEX}\", \"aes_iv\": \"{}\"}}", &IV_HEX[..16]),
            format!("{{\"valid\": {FUTURE:?}, \"hostname\": \"h\", \"aes_key\": \"{KEY_HEX}\", \"aes_iv\": \"{}\"}}", &IV_HEX[..31]),
            format!("{{\"valid\": {FUTURE:?}, \"hostname\": \"h\", \"aes_key\": \"{KEY_HEX}\", \"aes_iv\": \"xx\", \"cipher\": \"aes-gcm\"}}"),
            format!("{{\"valid\": {FUTURE:?}, \"hostname\": \"h\", \"aes_key\": \"{KEY_HEX}\", \"aes_iv\": \"{IV_HEX} \"}}"),
            // Found by the fuzzer: names that no SNI can match.
            format!("{{\"valid\": {FUTURE:?}, \"hostname\": \"\", \"aes_key\": \"{KEY_HEX}\", \"aes_iv\": \"{IV_HEX}\"}}"),
            payload(", \"alias\": [\"a.example\", \"\"]"),
        ];
        for p in &malformed {
            assert!(
                matches!(validate(p), Err(Error::MalformedToken(_))),
                "{p}: {:?}",
                validate(p)
            );
        }

        for name in ["chacha20-poly1305", "AES-CBC", ""] {
            assert!(
                matches!(
                    validate(&payload(&format!(", \"cipher\": \"{name}\""))),
                    Err(Error::UnsupportedCipher(_))
                ),
                "{name}"
            );
        }

        let expired = format!(
            "{{\"valid\": 1577836800.0, \"hostname\": \"h\", \"aes_key\": \"{KEY_HEX}\", \"aes_iv\": \"{IV_HEX}\"}}"
        );
        assert!(matches!(
            validate(&expired),
            Err(Error::TokenExpired { valid }) if valid == 1_577_836_800.0
        ));
        // Just one second late.
        let late = format!(
            "{{\"valid\": 1767225599.5, \"hostname\": \"h\", \"aes_key\": \"{KEY_HEX}\", \"aes_iv\": \"{IV_HEX}\"}}"
        );
        assert!(matches!(validate(&late), Err(Error::TokenExpired { .. })));
    }

    #[test]
    fn new_claims_are_fresh_and_valid() {
        let a = TokenClaims::new("device.example", Duration::from_secs(3600));
        let b = TokenClaims::new("device.example", Duration::from_secs(3600));
        assert_ne!(a.aes_key, b.aes_key);
        assert_ne!(a.aes_iv, b.aes_iv);
        assert_eq!(a.protocol_version, 2);
        assert_eq!(a.cipher, Cipher::AesCbc);
        let ring = KeyRing::new(vec![FernetKey::generate()]).unwrap();
        let t = ring.validate(ring.mint(&a).as_bytes()).unwrap();
        assert_eq!(t.hostname, "device.example");
        assert_eq!(t.aes_key, a.aes_key);
        assert_eq!(t.aes_iv, a.aes_iv);
        assert_eq!(t.valid, a.valid);

        let gone = TokenClaims::new("d", Duration::ZERO);
        let later = unix_now().as_secs_f64() + 1.0;
        assert!(matches!(
            ring.validate_at(ring.mint(&gone).as_bytes(), later),
            Err(Error::TokenExpired { .. })
        ));
    }

    // ---- properties --------------------------------------------------------

    fn arb_cipher() -> impl Strategy<Value = Cipher> {
        prop_oneof![
            Just(Cipher::AesCbc),
            Just(Cipher::AesGcm),
            Just(Cipher::AesGcmSiv)
        ]
    }

    prop_compose! {
        fn arb_claims()(
            // Names are never empty (the validator refuses those).
            hostname in "(?s).+",
            aliases in proptest::collection::vec("(?s).+", 0..4),
            // Whole range the validator accepts, fractions included.
            valid in NOW..MAX_VALID,
            aes_key in any::<[u8; 32]>(),
            aes_iv in any::<[u8; 16]>(),
            protocol_version in any::<u8>(),
            cipher in arb_cipher(),
        ) -> TokenClaims {
            TokenClaims { hostname, aliases, valid, aes_key, aes_iv, protocol_version, cipher }
        }
    }

    /// Random JSON values, nested a little.
    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            (NOW..MAX_VALID * 2.0).prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            "[0-9a-fA-F]{0,70}".prop_map(Value::String),
            Just(Value::String(KEY_HEX.into())),
            Just(Value::String(IV_HEX.into())),
            Just(Value::String("aes-gcm".into())),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::vec(("[a-z_]{0,8}", inner), 0..4)
                    .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// JSON objects built from the real field names (plus strangers) with
    /// random values, so the typed checks behind the JSON parser are reached.
    fn arb_payload_text() -> impl Strategy<Value = String> {
        let field = prop_oneof![
            Just("valid".to_string()),
            Just("hostname".to_string()),
            Just("aes_key".to_string()),
            Just("aes_iv".to_string()),
            Just("protocol_version".to_string()),
            Just("cipher".to_string()),
            Just("alias".to_string()),
            "[a-z]{1,6}",
        ];
        proptest::collection::vec((field, arb_json()), 0..9).prop_map(|fields| {
            let body: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{}: {v}", serde_json::Value::from(k.as_str())))
                .collect();
            format!("{{{}}}", body.join(", "))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let ring = ring(&[KEY_NEW, KEY_OLD]);
            prop_assert!(matches!(ring.validate_at(&bytes, NOW), Err(Error::InvalidToken)));
        }

        #[test]
        fn never_panics_on_arbitrary_strings(text in any::<String>()) {
            let ring = ring(&[KEY_NEW]);
            let _ = ring.validate_at(text.as_bytes(), NOW);
            let with_prefix = format!("gAAAAA{text}");
            let _ = ring.validate_at(with_prefix.as_bytes(), NOW);
        }

        #[test]
        fn never_panics_on_base64_of_arbitrary_bytes(
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            // A 0x80 prefix gets past the version check into the HMAC path.
            let mut raw = vec![FERNET_VERSION];
            raw.extend_from_slice(&body);
            let ring = ring(&[KEY_NEW]);
            prop_assert!(matches!(
                ring.validate_at(BASE64.encode(&raw).as_bytes(), NOW),
                Err(Error::InvalidToken)
            ));
        }

        #[test]
        fn never_panics_on_encrypted_arbitrary_payload(
            payload in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let ring = ring(&[KEY_NEW]);
            let token = ring.encrypt(&payload);
            prop_assert_eq!(ring.decrypt(token.as_bytes()).unwrap(), payload.clone());
            prop_assert!(!matches!(ring.validate_at(token.as_bytes(), NOW), Err(Error::InvalidToken)));
        }

        #[test]
        fn never_panics_on_encrypted_arbitrary_text(text in any::<String>()) {
            let ring = ring(&[KEY_NEW]);
            let _ = ring.validate_at(ring.encrypt(text.as_bytes()).as_bytes(), NOW);
        }

        #[test]
        fn never_panics_on_encrypted_json_objects(text in arb_payload_text()) {
            let ring = ring(&[KEY_NEW]);
            let result = ring.validate_at(ring.encrypt(text.as_bytes()).as_bytes(), NOW);
            // Whatever the outcome, a JSON payload is never a Fernet failure.
            prop_assert!(!matches!(result, Err(Error::InvalidToken)), "{}", text);
        }

        #[test]
        fn mint_then_validate_round_trips(claims in arb_claims(), time in any::<u64>()) {
            let ring = ring(&[KEY_NEW, KEY_OLD]);
            let token = ring.mint_at(&claims, time);
            let got = ring.validate_at(token.as_bytes(), NOW).unwrap();
            prop_assert_eq!(&got.hostname, &claims.hostname);
            prop_assert_eq!(&got.aliases, &claims.aliases);
            // serde_json's default float parser may miss the nearest double
            // by one ULP (its exact `float_roundtrip` mode is not enabled).
            prop_assert!(
                (got.valid.to_bits() as i64 - claims.valid.to_bits() as i64).abs() <= 1,
                "{} != {}", got.valid, claims.valid
            );
            prop_assert_eq!(got.aes_key, claims.aes_key);
            prop_assert_eq!(got.aes_iv, claims.aes_iv);
            prop_assert_eq!(got.protocol_version, claims.protocol_version);
            prop_assert_eq!(got.cipher, claims.cipher);
            // The payload is the JSON serde_json also reads back equal.
            let json: serde_json::Value = serde_json::from_str(&claims.payload_json()).unwrap();
            prop_assert_eq!(json["hostname"].as_str(), Some(claims.hostname.as_str()));
        }

        #[test]
        fn python_repr_reads_back_exactly(value in any::<f64>()) {
            prop_assume!(value.is_finite());
            let text = python_float_repr(value);
            prop_assert!(text.contains('.') || text.contains('e'), "{}", text);
            prop_assert_eq!(text.parse::<f64>().unwrap().to_bits(), value.to_bits());
        }
    }
}
