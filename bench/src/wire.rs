//! What the load generator and the endpoint say to each other.
//!
//! A caller opens with a real TLS ClientHello naming the device (so every
//! server routes it by SNI), then a 9-byte command: one mode byte and a
//! big-endian `u64`. The endpoint skips the ClientHello record and obeys:
//!
//! * [`UPLOAD`] `n`: read `n` bytes, then answer one byte ([`ACK`]);
//! * [`DOWNLOAD`] `n`: send `n` bytes;
//! * [`ECHO`]: send back everything read.
//!
//! In every mode the endpoint then reads until the caller's EOF and closes,
//! so a connection always ends from the caller's side (no tunnel ever has
//! to deliver a stream's tail after an endpoint close).

/// Command: the caller sends `n` bytes, the endpoint acknowledges.
pub const UPLOAD: u8 = b'U';
/// Command: the endpoint sends `n` bytes.
pub const DOWNLOAD: u8 = b'D';
/// Command: the endpoint echoes until EOF.
pub const ECHO: u8 = b'E';
/// The endpoint's answer to a finished upload.
pub const ACK: u8 = b'K';
/// Length of a command.
pub const COMMAND_LEN: usize = 9;
/// Size of the buffers bulk transfers use on both ends.
pub const BULK_BUFFER: usize = 256 * 1024;

/// A command as sent on the wire.
pub fn command(mode: u8, n: u64) -> [u8; COMMAND_LEN] {
    let mut out = [0u8; COMMAND_LEN];
    let (head, tail) = out.split_at_mut(1);
    head.copy_from_slice(&[mode]);
    tail.copy_from_slice(&n.to_be_bytes());
    out
}

/// Parse a command: its mode and count.
pub fn parse_command(buf: &[u8; COMMAND_LEN]) -> (u8, u64) {
    let (mode, count) = buf.split_at(1);
    let mut n = [0u8; 8];
    n.copy_from_slice(count);
    (mode.first().copied().unwrap_or(0), u64::from_be_bytes(n))
}

/// A TLS 1.3-style ClientHello record naming `host` (server_name,
/// supported_versions and padding extensions, as real hellos carry). The
/// servers only route on it; nobody terminates TLS.
pub fn client_hello(host: &str) -> Vec<u8> {
    fn u16be(n: usize) -> [u8; 2] {
        u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes()
    }
    let mut list = vec![0u8];
    list.extend_from_slice(&u16be(host.len()));
    list.extend_from_slice(host.as_bytes());
    let mut sni = u16be(list.len()).to_vec();
    sni.extend_from_slice(&list);

    let mut exts = vec![0x00, 0x00];
    exts.extend_from_slice(&u16be(sni.len()));
    exts.extend_from_slice(&sni);
    // supported_versions: TLS 1.3
    exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
    // padding, to the size of a typical browser hello
    exts.extend_from_slice(&[0x00, 0x15]);
    exts.extend_from_slice(&u16be(200));
    exts.extend_from_slice(&[0u8; 200]);

    let mut hello = vec![0x03, 0x03];
    hello.extend_from_slice(&[0x5a; 32]); // random
    hello.push(32); // legacy session id
    hello.extend_from_slice(&[0x11; 32]);
    hello.extend_from_slice(&[0x00, 0x04, 0x13, 0x01, 0x13, 0x02]); // suites
    hello.extend_from_slice(&[0x01, 0x00]); // compression: null
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

#[cfg(test)]
mod tests {
    use super::*;
    use snitun::server::sni::{SniParse, parse_sni};

    #[test]
    fn hello_is_routable_by_our_parser() {
        let hello = client_hello("bench.example");
        match parse_sni(&hello) {
            Ok(SniParse::Hostname(name)) => assert_eq!(name, "bench.example"),
            other => panic!("unexpected parse: {other:?}"),
        }
    }

    #[test]
    fn command_round_trip() {
        let cmd = command(DOWNLOAD, 1 << 40);
        assert_eq!(parse_command(&cmd), (DOWNLOAD, 1 << 40));
    }
}
