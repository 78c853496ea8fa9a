//! Helpers shared by the integration tests.

#![allow(dead_code)]

/// `n` as a big-endian TLS length field.
pub fn u16be(n: usize) -> [u8; 2] {
    u16::try_from(n)
        .unwrap_or_else(|_| panic!("{n} does not fit a TLS length field"))
        .to_be_bytes()
}

/// A ClientHello in one TLS record, with a server_name extension when
/// `host` is given (and supported_versions and padding, as real hellos
/// have). Enough for the server's router, which never terminates TLS.
pub fn client_hello_for(host: Option<&str>) -> Vec<u8> {
    client_hello_padded(host, 120)
}

/// [`client_hello_for`] with `padding` bytes of padding extension (up to
/// 16 KiB: a record's limit).
pub fn client_hello_padded(host: Option<&str>, padding: usize) -> Vec<u8> {
    snitun::server::sni::build_client_hello(host, padding)
}

/// A ClientHello naming `host`.
pub fn client_hello(host: &str) -> Vec<u8> {
    client_hello_for(Some(host))
}

/// `len` bytes of a repeatable pattern that differs by `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
        .collect()
}
