//! The crate's one error type.
//!
//! Variants are named after what went wrong, so callers (and the bindings,
//! which map them to their own exception types) can tell a bad token from a
//! network fault without parsing messages.

use std::io;

/// Everything that can go wrong in snitun.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a socket or stream.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),

    /// A protocol step did not finish within its time limit.
    #[error("timed out {during}")]
    Timeout {
        /// What we were waiting for, e.g. "waiting for the challenge".
        during: &'static str,
    },

    /// The other side closed the connection before a step was complete.
    #[error("connection closed {during}")]
    ConnectionClosed {
        /// What we were waiting for when the stream ended.
        during: &'static str,
    },

    /// The token is not a Fernet token any of the server's keys can open
    /// (bad base64, bad version byte, wrong key, tampered, truncated).
    #[error("invalid token: not a Fernet token for any of the configured keys")]
    InvalidToken,

    /// The token decrypted, but its payload is not UTF-8 JSON.
    #[error("invalid token payload: {0}")]
    InvalidTokenPayload(String),

    /// The token payload is JSON but a field is missing, of the wrong type,
    /// badly encoded or out of range.
    #[error("malformed token payload: {0}")]
    MalformedToken(String),

    /// The token's `valid` time has passed.
    #[error("token expired at unix time {valid}")]
    TokenExpired {
        /// The expiry carried by the token (UTC unix seconds).
        valid: f64,
    },

    /// A cipher name that this implementation does not support.
    #[error("unsupported cipher {0:?} (expected aes-cbc, aes-gcm or aes-gcm-siv)")]
    UnsupportedCipher(String),

    /// A key, IV or Fernet key of the wrong size or encoding.
    #[error("invalid key material: {0}")]
    InvalidKey(String),

    /// An AEAD unit failed authentication (wrong key, tampering, or a peer
    /// configured with another cipher).
    #[error("decryption failed: authentication tag mismatch (wrong key or cipher, or tampering)")]
    DecryptFailed,

    /// The AES-GCM nonce counter of this direction is used up.
    #[error("AES-GCM nonce counter exhausted: the connection must be re-established")]
    NonceExhausted,

    /// A unit handed to the cipher has a size the cipher cannot take
    /// (CBC units must be whole 16-byte blocks, AEAD units carry 28 bytes of
    /// nonce and tag).
    #[error("invalid cipher unit length {0}")]
    InvalidUnitLength(usize),

    /// The peer's answer to the challenge was wrong: it holds another AES
    /// key/IV or runs another cipher.
    #[error("challenge failed: the peer's answer does not match (AES key, IV or cipher differ)")]
    ChallengeFailed,

    /// The first bytes on the SNI port are not a TLS ClientHello we can route.
    #[error("invalid TLS ClientHello: {0}")]
    InvalidClientHello(&'static str),

    /// A PROXY protocol header is malformed.
    #[error("invalid PROXY protocol header: {0}")]
    InvalidProxyHeader(&'static str),

    /// A frame header announced more payload than the configured limit.
    #[error(
        "frame of {size} bytes exceeds the limit of {limit} bytes: the peer most likely \
         uses another cipher, AES key or protocol version"
    )]
    FrameTooLarge {
        /// The size field of the header.
        size: u32,
        /// The configured limit.
        limit: usize,
    },

    /// A peer sent more than a configured limit allows (see
    /// [`ServerLimits`](crate::server::ServerLimits)).
    #[error("limit exceeded: {what} (limit {limit})")]
    LimitExceeded {
        /// What went over the limit.
        what: &'static str,
        /// The limit.
        limit: usize,
    },

    /// An invalid argument or configuration value given by the caller.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Result alias with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
