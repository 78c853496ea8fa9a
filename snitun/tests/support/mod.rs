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
/// about 16 KiB: a record's limit).
pub fn client_hello_padded(host: Option<&str>, padding: usize) -> Vec<u8> {
    let mut exts = Vec::new();
    if let Some(host) = host {
        let mut list = vec![0u8];
        list.extend_from_slice(&u16be(host.len()));
        list.extend_from_slice(host.as_bytes());
        let mut body = u16be(list.len()).to_vec();
        body.extend_from_slice(&list);
        exts.extend_from_slice(&[0, 0]);
        exts.extend_from_slice(&u16be(body.len()));
        exts.extend_from_slice(&body);
    }
    // supported_versions: TLS 1.3
    exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
    // padding
    exts.extend_from_slice(&[0x00, 0x15]);
    exts.extend_from_slice(&u16be(padding));
    exts.extend_from_slice(&vec![0u8; padding]);

    let mut hello = vec![0x03, 0x03];
    hello.extend_from_slice(&[0x5a; 32]); // random
    hello.push(32); // session id
    hello.extend_from_slice(&[0x11; 32]);
    hello.extend_from_slice(&[0x00, 0x04, 0x13, 0x01, 0x13, 0x02]); // suites
    hello.extend_from_slice(&[0x01, 0x00]); // compression
    hello.extend_from_slice(&u16be(exts.len()));
    hello.extend_from_slice(&exts);

    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&u16be(hello.len()));
    handshake.extend_from_slice(&hello);

    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16be(handshake.len()));
    record.extend_from_slice(&handshake);
    record
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
