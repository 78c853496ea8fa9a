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

/// A TLS 1.3-style ClientHello record naming `host`, padded to the size
/// of a typical browser hello. The servers only route on it; nobody
/// terminates TLS.
pub fn client_hello(host: &str) -> Vec<u8> {
    snitun::server::sni::build_client_hello(Some(host), 200)
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
