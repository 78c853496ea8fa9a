//! The public server: SNI proxy and peer listener.

pub mod proxy_protocol;
pub mod sni;
