//! # snitun
//!
//! SniTun in Rust: a device behind NAT connects out to a public server,
//! proves itself with a Fernet token and an AES challenge, and then one
//! encrypted, multiplexed TCP connection carries every caller's TLS stream.
//! The server routes callers to devices by the SNI host name of their
//! ClientHello; TLS stays end to end. Wire-compatible with the Python
//! `snitun` 0.47.0, protocol versions 0, 1 and 2, ciphers aes-cbc, aes-gcm and
//! aes-gcm-siv.

pub mod client;
pub mod crypto;
pub mod error;
pub mod handshake;
pub mod mux;
pub mod server;
pub mod token;

pub use crypto::{Cipher, CipherState, Decryptor, Encryptor, Role};
pub use error::{Error, Result};
pub use mux::{Channel, LinkEnd, Multiplexer, MuxConfig};
