//! The link ciphers: AES-256-CBC, AES-256-GCM and AES-256-GCM-SIV.
//!
//! Only the multiplexer's framing is encrypted (each 32-byte header is one
//! unit, and on protocol >= 2 the caller address carried by NEW is another);
//! payload is the caller's TLS already. Each direction has its own state, and
//! the state carries over from the handshake into the multiplexer, so a
//! [`CipherState`] is built once per link and then [split](CipherState::split)
//! between the reader and the writer task.
//!
//! - **aes-cbc**: one continuous CBC stream per direction, no padding; every
//!   unit chains from the previous ciphertext block. No overhead, no
//!   authentication.
//! - **aes-gcm**: each unit is `nonce(12) || ciphertext || tag(16)`; the nonce
//!   is a 4-byte direction prefix (initiator 0, responder 1) and an 8-byte
//!   counter from 0. We are stricter than the reference on receipt: the unit
//!   must carry the peer's prefix and exactly the next counter, because TCP
//!   delivers in order, so anything else is a replay or tampering.
//! - **aes-gcm-siv** (RFC 8452): same framing with a random nonce per unit.

use std::fmt;
use std::str::FromStr;

use aes::Aes256;
use aes::cipher::{Array, BlockModeDecrypt, BlockModeEncrypt, KeyInit, KeyIvInit};
use aes_gcm::Aes256Gcm;
use aes_gcm::aead::AeadInOut;
use aes_gcm_siv::Aes256GcmSiv;

use crate::error::{Error, Result};

/// AEAD nonce length on the wire.
pub const NONCE_SIZE: usize = 12;
/// AEAD tag length on the wire.
pub const TAG_SIZE: usize = 16;
/// Bytes an AEAD cipher adds to every unit.
pub const AEAD_OVERHEAD: usize = NONCE_SIZE + TAG_SIZE;
/// AES block size: CBC units are multiples of it.
pub const BLOCK_SIZE: usize = 16;
/// Length of the AES key carried by the token.
pub const KEY_SIZE: usize = 32;
/// Length of the CBC IV carried by the token.
pub const IV_SIZE: usize = 16;

/// The cipher named by the token's `cipher` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Cipher {
    /// AES-256-CBC stream (the default, and the only cipher before AEADs).
    #[default]
    AesCbc,
    /// AES-256-GCM with direction-prefixed counter nonces.
    AesGcm,
    /// AES-256-GCM-SIV with random nonces.
    AesGcmSiv,
}

impl Cipher {
    /// Every supported cipher.
    pub const ALL: [Cipher; 3] = [Cipher::AesCbc, Cipher::AesGcm, Cipher::AesGcmSiv];

    /// Parse a wire name (`aes-cbc`, `aes-gcm`, `aes-gcm-siv`).
    pub fn from_name(name: &str) -> Result<Cipher> {
        match name {
            "aes-cbc" => Ok(Cipher::AesCbc),
            "aes-gcm" => Ok(Cipher::AesGcm),
            "aes-gcm-siv" => Ok(Cipher::AesGcmSiv),
            other => Err(Error::UnsupportedCipher(other.to_string())),
        }
    }

    /// The wire name, as written in tokens.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::AesCbc => "aes-cbc",
            Cipher::AesGcm => "aes-gcm",
            Cipher::AesGcmSiv => "aes-gcm-siv",
        }
    }

    /// Bytes this cipher adds to every encrypted unit (0 or 28).
    pub fn overhead(self) -> usize {
        match self {
            Cipher::AesCbc => 0,
            Cipher::AesGcm | Cipher::AesGcmSiv => AEAD_OVERHEAD,
        }
    }
}

impl fmt::Display for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Cipher {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Cipher::from_name(s)
    }
}

/// Which end of the link a cipher state belongs to. Only AES-GCM cares: the
/// two ends share one key, so each owns a distinct nonce prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The client peer (the side that connects and sends the token).
    Initiator,
    /// The server.
    Responder,
}

impl Role {
    /// The other end.
    pub fn peer(self) -> Role {
        match self {
            Role::Initiator => Role::Responder,
            Role::Responder => Role::Initiator,
        }
    }

    fn gcm_prefix(self) -> [u8; 4] {
        match self {
            Role::Initiator => [0, 0, 0, 0],
            Role::Responder => [0, 0, 0, 1],
        }
    }
}

/// Both directions of one link's cipher.
pub struct CipherState {
    /// Encrypts what this end sends.
    pub encryptor: Encryptor,
    /// Decrypts what this end receives.
    pub decryptor: Decryptor,
}

impl CipherState {
    /// Fresh state for one link. `iv` is used by aes-cbc only.
    pub fn new(cipher: Cipher, role: Role, key: &[u8; KEY_SIZE], iv: &[u8; IV_SIZE]) -> Self {
        CipherState {
            encryptor: Encryptor::new(cipher, role, key, iv),
            decryptor: Decryptor::new(cipher, role, key, iv),
        }
    }

    /// The cipher in use.
    pub fn cipher(&self) -> Cipher {
        self.encryptor.cipher()
    }

    /// Bytes added to every encrypted unit.
    pub fn overhead(&self) -> usize {
        self.cipher().overhead()
    }

    /// Separate the directions, for a reader task and a writer task.
    pub fn split(self) -> (Encryptor, Decryptor) {
        (self.encryptor, self.decryptor)
    }
}

impl fmt::Debug for CipherState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CipherState")
            .field("cipher", &self.cipher())
            .finish_non_exhaustive()
    }
}

/// The sending direction.
pub struct Encryptor {
    inner: EncryptorInner,
}

enum EncryptorInner {
    Cbc(Box<cbc::Encryptor<Aes256>>),
    Gcm {
        aead: Box<Aes256Gcm>,
        prefix: [u8; 4],
        /// `None` once counter 2^64-1 has been used.
        next: Option<u64>,
    },
    GcmSiv(Box<Aes256GcmSiv>),
}

impl Encryptor {
    /// A fresh sender for `role`.
    pub fn new(cipher: Cipher, role: Role, key: &[u8; KEY_SIZE], iv: &[u8; IV_SIZE]) -> Self {
        let inner = match cipher {
            Cipher::AesCbc => EncryptorInner::Cbc(Box::new(cbc::Encryptor::<Aes256>::new(
                &Array::from(*key),
                &Array::from(*iv),
            ))),
            Cipher::AesGcm => EncryptorInner::Gcm {
                aead: Box::new(Aes256Gcm::new(&Array::from(*key))),
                prefix: role.gcm_prefix(),
                next: Some(0),
            },
            Cipher::AesGcmSiv => {
                EncryptorInner::GcmSiv(Box::new(Aes256GcmSiv::new(&Array::from(*key))))
            }
        };
        Encryptor { inner }
    }

    /// The cipher in use.
    pub fn cipher(&self) -> Cipher {
        match self.inner {
            EncryptorInner::Cbc(_) => Cipher::AesCbc,
            EncryptorInner::Gcm { .. } => Cipher::AesGcm,
            EncryptorInner::GcmSiv(_) => Cipher::AesGcmSiv,
        }
    }

    /// Bytes added to every unit.
    pub fn overhead(&self) -> usize {
        self.cipher().overhead()
    }

    /// Encrypt `plaintext` as one unit into the front of `out`, returning the
    /// unit's length on the wire (`plaintext.len() + overhead()`).
    ///
    /// CBC needs whole blocks; an `out` shorter than the unit is an error.
    pub fn encrypt(&mut self, plaintext: &[u8], out: &mut [u8]) -> Result<usize> {
        let nonce = match &mut self.inner {
            EncryptorInner::Cbc(_) => None,
            EncryptorInner::Gcm { prefix, next, .. } => {
                let counter = next.ok_or(Error::NonceExhausted)?;
                *next = counter.checked_add(1);
                let mut nonce = [0u8; NONCE_SIZE];
                nonce[..4].copy_from_slice(prefix);
                nonce[4..].copy_from_slice(&counter.to_be_bytes());
                Some(nonce)
            }
            EncryptorInner::GcmSiv(_) => {
                let mut nonce = [0u8; NONCE_SIZE];
                rand::fill(&mut nonce);
                Some(nonce)
            }
        };
        self.encrypt_with(nonce, plaintext, out)
    }

    /// Encrypt with a caller-chosen AES-GCM-SIV nonce. For known-answer tests
    /// only: production units always draw a fresh random nonce.
    #[doc(hidden)]
    pub fn encrypt_with_siv_nonce(
        &mut self,
        nonce: [u8; NONCE_SIZE],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize> {
        match self.inner {
            EncryptorInner::GcmSiv(_) => self.encrypt_with(Some(nonce), plaintext, out),
            _ => Err(Error::Config(
                "a fixed nonce is only allowed for aes-gcm-siv".into(),
            )),
        }
    }

    /// Move the AES-GCM counter forward, as if `next` units had been sent.
    /// For tests of counter encoding and exhaustion.
    #[doc(hidden)]
    pub fn set_gcm_counter(&mut self, counter: u64) -> Result<()> {
        match &mut self.inner {
            EncryptorInner::Gcm { next, .. } => {
                *next = Some(counter);
                Ok(())
            }
            _ => Err(Error::Config("only aes-gcm has a nonce counter".into())),
        }
    }

    fn encrypt_with(
        &mut self,
        nonce: Option<[u8; NONCE_SIZE]>,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize> {
        let unit_len = plaintext.len() + self.overhead();
        let out = out
            .get_mut(..unit_len)
            .ok_or(Error::InvalidUnitLength(plaintext.len()))?;
        match (&mut self.inner, nonce) {
            (EncryptorInner::Cbc(enc), _) => {
                let (blocks, rest) = Array::slice_as_chunks_mut(out);
                if !rest.is_empty() {
                    return Err(Error::InvalidUnitLength(plaintext.len()));
                }
                Array::slice_as_flattened_mut(blocks).copy_from_slice(plaintext);
                enc.encrypt_blocks(blocks);
            }
            (EncryptorInner::Gcm { aead, .. }, Some(nonce)) => {
                seal(aead.as_ref(), nonce, plaintext, out)?;
            }
            (EncryptorInner::GcmSiv(aead), Some(nonce)) => {
                seal(aead.as_ref(), nonce, plaintext, out)?;
            }
            _ => return Err(Error::Config("AEAD unit without a nonce".into())),
        }
        Ok(unit_len)
    }
}

/// `out` is exactly `nonce || ciphertext || tag` long.
fn seal<A>(aead: &A, nonce: [u8; NONCE_SIZE], plaintext: &[u8], out: &mut [u8]) -> Result<()>
where
    A: AeadInOut
        + aes_gcm::aead::AeadCore<
            NonceSize = aes_gcm::aead::consts::U12,
            TagSize = aes_gcm::aead::consts::U16,
        >,
{
    let (nonce_out, rest) = out.split_at_mut(NONCE_SIZE);
    let (body, tag_out) = rest.split_at_mut(plaintext.len());
    nonce_out.copy_from_slice(&nonce);
    body.copy_from_slice(plaintext);
    let tag = aead
        .encrypt_inout_detached(&Array::from(nonce), &[], body.into())
        .map_err(|_| Error::InvalidUnitLength(plaintext.len()))?;
    tag_out.copy_from_slice(&tag);
    Ok(())
}

/// The receiving direction.
pub struct Decryptor {
    inner: DecryptorInner,
}

enum DecryptorInner {
    Cbc(Box<cbc::Decryptor<Aes256>>),
    Gcm {
        aead: Box<Aes256Gcm>,
        /// The prefix the peer must use.
        peer_prefix: [u8; 4],
        /// The counter the next unit must carry; `None` after 2^64-1.
        next: Option<u64>,
    },
    GcmSiv(Box<Aes256GcmSiv>),
}

impl Decryptor {
    /// A fresh receiver for `role` (it expects units from `role.peer()`).
    pub fn new(cipher: Cipher, role: Role, key: &[u8; KEY_SIZE], iv: &[u8; IV_SIZE]) -> Self {
        let inner = match cipher {
            Cipher::AesCbc => DecryptorInner::Cbc(Box::new(cbc::Decryptor::<Aes256>::new(
                &Array::from(*key),
                &Array::from(*iv),
            ))),
            Cipher::AesGcm => DecryptorInner::Gcm {
                aead: Box::new(Aes256Gcm::new(&Array::from(*key))),
                peer_prefix: role.peer().gcm_prefix(),
                next: Some(0),
            },
            Cipher::AesGcmSiv => {
                DecryptorInner::GcmSiv(Box::new(Aes256GcmSiv::new(&Array::from(*key))))
            }
        };
        Decryptor { inner }
    }

    /// The cipher in use.
    pub fn cipher(&self) -> Cipher {
        match self.inner {
            DecryptorInner::Cbc(_) => Cipher::AesCbc,
            DecryptorInner::Gcm { .. } => Cipher::AesGcm,
            DecryptorInner::GcmSiv(_) => Cipher::AesGcmSiv,
        }
    }

    /// Bytes added to every unit.
    pub fn overhead(&self) -> usize {
        self.cipher().overhead()
    }

    /// Decrypt one whole unit in place and return its plaintext, which lies
    /// inside `unit` (after the nonce, for the AEADs).
    ///
    /// Errors: [`Error::InvalidUnitLength`] for a unit CBC or the AEAD framing
    /// cannot hold, [`Error::DecryptFailed`] for a failed tag or (aes-gcm) a
    /// nonce that is not the peer's next one. After an error the link must be
    /// closed: the state no longer matches the peer's.
    pub fn decrypt<'a>(&mut self, unit: &'a mut [u8]) -> Result<&'a [u8]> {
        match &mut self.inner {
            DecryptorInner::Cbc(dec) => {
                let len = unit.len();
                let (blocks, rest) = Array::slice_as_chunks_mut(unit);
                if !rest.is_empty() {
                    return Err(Error::InvalidUnitLength(len));
                }
                dec.decrypt_blocks(blocks);
                Ok(Array::slice_as_flattened(blocks))
            }
            DecryptorInner::Gcm {
                aead,
                peer_prefix,
                next,
            } => {
                let body = open(aead.as_ref(), unit, |nonce| {
                    let expected = next.ok_or(Error::DecryptFailed)?;
                    let (prefix, counter) = nonce.split_at(4);
                    let counter =
                        u64::from_be_bytes(counter.try_into().map_err(|_| Error::DecryptFailed)?);
                    if prefix != peer_prefix || counter != expected {
                        return Err(Error::DecryptFailed);
                    }
                    Ok(())
                })?;
                *next = next.and_then(|n| n.checked_add(1));
                Ok(body)
            }
            DecryptorInner::GcmSiv(aead) => open(aead.as_ref(), unit, |_| Ok(())),
        }
    }

    /// Expect the next AES-GCM unit to carry `counter`. For tests.
    #[doc(hidden)]
    pub fn set_gcm_counter(&mut self, counter: u64) -> Result<()> {
        match &mut self.inner {
            DecryptorInner::Gcm { next, .. } => {
                *next = Some(counter);
                Ok(())
            }
            _ => Err(Error::Config("only aes-gcm has a nonce counter".into())),
        }
    }
}

/// Split `nonce || ciphertext || tag`, let `check_nonce` police the nonce,
/// and decrypt the body in place.
fn open<'a, A>(
    aead: &A,
    unit: &'a mut [u8],
    check_nonce: impl FnOnce(&[u8]) -> Result<()>,
) -> Result<&'a [u8]>
where
    A: AeadInOut
        + aes_gcm::aead::AeadCore<
            NonceSize = aes_gcm::aead::consts::U12,
            TagSize = aes_gcm::aead::consts::U16,
        >,
{
    let len = unit.len();
    if len < AEAD_OVERHEAD {
        return Err(Error::InvalidUnitLength(len));
    }
    let (nonce, rest) = unit.split_at_mut(NONCE_SIZE);
    let (body, tag) = rest.split_at_mut(len - AEAD_OVERHEAD);
    check_nonce(nonce)?;
    let nonce: [u8; NONCE_SIZE] = (&*nonce)
        .try_into()
        .map_err(|_| Error::InvalidUnitLength(len))?;
    let tag: [u8; TAG_SIZE] = (&*tag)
        .try_into()
        .map_err(|_| Error::InvalidUnitLength(len))?;
    aead.decrypt_inout_detached(
        &Array::from(nonce),
        &[],
        (&mut *body).into(),
        &Array::from(tag),
    )
    .map_err(|_| Error::DecryptFailed)?;
    Ok(body)
}

impl fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encryptor")
            .field("cipher", &self.cipher())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decryptor")
            .field("cipher", &self.cipher())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 32] = [7; 32];
    const IV: [u8; 16] = [9; 16];

    fn pair(cipher: Cipher) -> (CipherState, CipherState) {
        (
            CipherState::new(cipher, Role::Initiator, &KEY, &IV),
            CipherState::new(cipher, Role::Responder, &KEY, &IV),
        )
    }

    fn seal_vec(enc: &mut Encryptor, plain: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; plain.len() + enc.overhead()];
        let n = enc.encrypt(plain, &mut out).unwrap();
        assert_eq!(n, out.len());
        out
    }

    #[test]
    fn names_round_trip() {
        for cipher in Cipher::ALL {
            assert_eq!(cipher.name().parse::<Cipher>().unwrap(), cipher);
        }
        assert!(matches!(
            "chacha20".parse::<Cipher>(),
            Err(Error::UnsupportedCipher(_))
        ));
    }

    #[test]
    fn cbc_chains_across_units() {
        let (mut client, mut server) = pair(Cipher::AesCbc);
        let a = seal_vec(&mut client.encryptor, &[1; 32]);
        let b = seal_vec(&mut client.encryptor, &[1; 32]);
        assert_ne!(a, b, "the second unit must chain from the first");
        let mut a2 = a.clone();
        let mut b2 = b.clone();
        assert_eq!(server.decryptor.decrypt(&mut a2).unwrap(), &[1; 32]);
        assert_eq!(server.decryptor.decrypt(&mut b2).unwrap(), &[1; 32]);
    }

    #[test]
    fn cbc_rejects_partial_blocks() {
        let (mut client, mut server) = pair(Cipher::AesCbc);
        let mut out = [0u8; 32];
        assert!(matches!(
            client.encryptor.encrypt(&[0; 17], &mut out),
            Err(Error::InvalidUnitLength(17))
        ));
        let mut unit = [0u8; 31];
        assert!(matches!(
            server.decryptor.decrypt(&mut unit),
            Err(Error::InvalidUnitLength(31))
        ));
    }

    #[test]
    fn gcm_nonce_layout_and_order() {
        let (mut client, mut server) = pair(Cipher::AesGcm);
        let first = seal_vec(&mut client.encryptor, b"hello");
        let second = seal_vec(&mut client.encryptor, b"world");
        assert_eq!(&first[..12], &[0u8; 12]);
        assert_eq!(&second[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        // Out of order: the strict receiver refuses unit 1 before unit 0.
        let mut out_of_order = second.clone();
        assert!(matches!(
            server.decryptor.decrypt(&mut out_of_order),
            Err(Error::DecryptFailed)
        ));
        let (_, mut server) = pair(Cipher::AesGcm);
        let mut a = first.clone();
        assert_eq!(server.decryptor.decrypt(&mut a).unwrap(), b"hello");
        // Replay of unit 0.
        let mut replay = first.clone();
        assert!(server.decryptor.decrypt(&mut replay).is_err());
        let mut b = second.clone();
        assert_eq!(server.decryptor.decrypt(&mut b).unwrap(), b"world");
    }

    #[test]
    fn gcm_rejects_own_direction_prefix() {
        let (mut client, _) = pair(Cipher::AesGcm);
        let (mut other_client, _) = pair(Cipher::AesGcm);
        let mut unit = seal_vec(&mut client.encryptor, b"x");
        // A unit made by an initiator must not be accepted by an initiator.
        assert!(other_client.decryptor.decrypt(&mut unit).is_err());
    }

    #[test]
    fn gcm_counter_exhaustion_is_an_error() {
        let (mut client, mut server) = pair(Cipher::AesGcm);
        client.encryptor.set_gcm_counter(u64::MAX).unwrap();
        server.decryptor.set_gcm_counter(u64::MAX).unwrap();
        let mut last = seal_vec(&mut client.encryptor, b"last");
        assert_eq!(&last[4..12], &[0xff; 8]);
        let mut out = [0u8; 64];
        assert!(matches!(
            client.encryptor.encrypt(b"again", &mut out),
            Err(Error::NonceExhausted)
        ));
        assert_eq!(server.decryptor.decrypt(&mut last).unwrap(), b"last");
    }

    #[test]
    fn aead_rejects_short_and_tampered_units() {
        for cipher in [Cipher::AesGcm, Cipher::AesGcmSiv] {
            let (mut client, mut server) = pair(cipher);
            let mut short = [0u8; 27];
            assert!(matches!(
                server.decryptor.decrypt(&mut short),
                Err(Error::InvalidUnitLength(27))
            ));
            let mut unit = seal_vec(&mut client.encryptor, &[5; 32]);
            let last = unit.len() - 1;
            unit[last] ^= 1;
            assert!(matches!(
                server.decryptor.decrypt(&mut unit),
                Err(Error::DecryptFailed)
            ));
        }
    }

    #[test]
    fn encrypt_needs_room() {
        for cipher in Cipher::ALL {
            let (mut client, _) = pair(cipher);
            let mut out = [0u8; 16];
            assert!(client.encryptor.encrypt(&[0; 32], &mut out).is_err());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn units_round_trip(
            cipher_index in 0usize..3,
            units in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..130), 1..6),
        ) {
            let cipher = Cipher::ALL[cipher_index];
            let (mut client, mut server) = pair(cipher);
            for plain in &units {
                // CBC takes whole blocks only; the AEADs take any size.
                let plain = match cipher {
                    Cipher::AesCbc => &plain[..plain.len() / 16 * 16],
                    _ => &plain[..],
                };
                let mut unit = seal_vec(&mut client.encryptor, plain);
                prop_assert_eq!(unit.len(), plain.len() + cipher.overhead());
                let opened = server.decryptor.decrypt(&mut unit).unwrap();
                prop_assert_eq!(opened, plain);
                // And the other direction, interleaved.
                let mut back = seal_vec(&mut server.encryptor, plain);
                prop_assert_eq!(client.decryptor.decrypt(&mut back).unwrap(), plain);
            }
        }

        #[test]
        fn aead_decrypt_never_panics(cipher_index in 1usize..3, mut bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (_, mut server) = pair(Cipher::ALL[cipher_index]);
            prop_assert!(server.decryptor.decrypt(&mut bytes).is_err());
        }
    }
}
