//! # snitun
//!
//! SniTun in Rust: a device behind NAT connects out to a public server,
//! proves itself with a Fernet token and an AES challenge, and then one
//! encrypted, multiplexed TCP connection carries every caller's TLS stream.
//! The server routes callers to devices by the SNI host name of their
//! ClientHello; TLS stays end to end. Wire-compatible with the Python
//! `snitun` 0.47.0, protocol versions 0, 1 and 2, ciphers aes-cbc, aes-gcm and
//! aes-gcm-siv.
//!
//! - [`server::Server`]: the public side (SNI port for callers, peer port for
//!   devices, or one port for both).
//! - [`client::Client`]: the device side; each channel (one per caller) goes
//!   to a [`client::Connector`], by default a TCP endpoint.
//! - [`Channel`] is `AsyncRead + AsyncWrite` with back-pressure, so a Rust
//!   application can also serve TLS on it in process.
//! - [`token`] mints and validates the Fernet tokens a session master hands
//!   to devices.
//!
//! A whole tunnel on loopback: the device's channels are answered by a
//! closure instead of a TCP endpoint.
//!
//! ```
//! use std::time::Duration;
//! use snitun::client::Client;
//! use snitun::server::Server;
//! use snitun::token::{FernetKey, KeyRing, TokenClaims};
//! use tokio::io::AsyncWriteExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> snitun::Result<()> {
//! // The server holds the Fernet keys; a session master mints tokens with them.
//! let keys = KeyRing::new(vec![FernetKey::generate()])?;
//! let server = Server::builder(keys.clone())
//!     .sni_listen("127.0.0.1:0".parse().unwrap())
//!     .peer_listen("127.0.0.1:0".parse().unwrap())
//!     .bind()
//!     .await?;
//! let peer_port = server.local_addrs().peer[0];
//! let server = server.spawn();
//!
//! // The device gets a token for its host name and the AES key and IV in it.
//! let claims = TokenClaims::new("device.example.org", Duration::from_secs(3600));
//! let session = Client::builder(peer_port.to_string())
//!     .token(keys.mint(&claims))
//!     .aes(claims.aes_key, claims.aes_iv)
//!     .connector(|mut channel: snitun::Channel| async move {
//!         // A real device would serve TLS here; answer every caller at once.
//!         channel.write_all(b"hello from the device").await?;
//!         Ok(())
//!     })
//!     .connect()
//!     .await?;
//!
//! // Callers reaching device.example.org on the SNI port now land on it.
//! while server.peer_count() == 0 {
//!     tokio::time::sleep(Duration::from_millis(5)).await;
//! }
//! assert_eq!(server.hostnames(), ["device.example.org"]);
//! session.disconnect().await;
//! server.shutdown(Duration::from_secs(5)).await?;
//! # Ok(())
//! # }
//! ```

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
