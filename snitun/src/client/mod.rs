//! The client peer: the device side of the tunnel.
//!
//! The device connects out to the server's peer port, sends its Fernet
//! token, answers the AES challenge and then runs the multiplexer on that
//! connection. Every channel the server opens (one per caller) is checked
//! against an [`AccessList`] and handed to a [`Connector`]: by default an
//! [`EndpointConnector`] that relays it to a local TLS server. A ping every
//! 50 s keeps the link alive (no pong within 90 s ends it), and an optional
//! [`ReconnectPolicy`] brings it back with exponential back-off.
//!
//! ```no_run
//! use snitun::client::{Client, ClientEvent, ReconnectPolicy};
//!
//! # async fn run(token: String, key: [u8; 32], iv: [u8; 16]) -> snitun::Result<()> {
//! let session = Client::builder("snitun.example.org:8080")
//!     .token(token)
//!     .aes(key, iv)
//!     .endpoint("127.0.0.1:8123")
//!     .reconnect(Some(ReconnectPolicy::default()))
//!     .connect()
//!     .await?;
//! let mut events = session.subscribe();
//! tokio::spawn(async move {
//!     while let Ok(event) = events.recv().await {
//!         if let ClientEvent::Disconnected { reason, will_reconnect } = event {
//!             eprintln!("tunnel down ({reason}), reconnecting: {will_reconnect}");
//!         }
//!     }
//! });
//! let end = session.wait().await;
//! eprintln!("session over: {end}");
//! # Ok(())
//! # }
//! ```

pub mod access_list;
pub mod connector;
pub mod peer;
pub mod reconnect;

pub use access_list::{AccessList, AccessMode, parse_network, parse_networks};
pub use connector::{Connector, EndpointConnector, ServeFuture};
pub use peer::{Client, ClientBuilder, ClientEvent, EndpointError, Session, SessionStats};
pub use reconnect::ReconnectPolicy;
