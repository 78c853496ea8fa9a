//! The 32-byte frame header and what its fields carry.
//!
//! Layout (big-endian): `id[16] | flow u8 | size u32 | extra[11]`. Every
//! possible byte string is a valid header: unknown flow values decode to
//! [`Flow::Unknown`] and encode back to the same byte, so a receiver can skip
//! them without losing its place in the stream.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Plaintext header length.
pub const HEADER_SIZE: usize = 32;
/// Length of the `extra` field.
pub const EXTRA_SIZE: usize = 11;
/// First protocol version that carries the caller address encrypted in the
/// NEW payload (and IPv6).
pub const ENCRYPTED_NEW_MIN_VERSION: u8 = 2;
/// First protocol version with PAUSE/RESUME flow control.
pub const FLOW_CONTROL_MIN_VERSION: u8 = 1;
/// The newest protocol version we speak.
pub const PROTOCOL_VERSION: u8 = 2;

/// A channel's 16-byte identifier, drawn at random by the side that opens it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub [u8; 16]);

impl ChannelId {
    /// A fresh random id.
    pub fn random() -> Self {
        let mut id = [0u8; 16];
        rand::fill(&mut id);
        ChannelId(id)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelId({self})")
    }
}

/// What a frame means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    /// Open channel `id` (0x01).
    New,
    /// Bytes for channel `id` (0x02).
    Data,
    /// Channel `id` is closed (0x04).
    Close,
    /// Ping request or reply, told apart by `extra` (0x08).
    Ping,
    /// The sender's incoming queue for `id` is full (0x16, protocol >= 1).
    Pause,
    /// It has drained (0x32, protocol >= 1).
    Resume,
    /// A value this implementation does not know; ignored on receipt.
    Unknown(u8),
}

impl Flow {
    /// Decode the flow byte; never fails.
    pub fn from_byte(byte: u8) -> Flow {
        match byte {
            0x01 => Flow::New,
            0x02 => Flow::Data,
            0x04 => Flow::Close,
            0x08 => Flow::Ping,
            0x16 => Flow::Pause,
            0x32 => Flow::Resume,
            other => Flow::Unknown(other),
        }
    }

    /// The byte on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            Flow::New => 0x01,
            Flow::Data => 0x02,
            Flow::Close => 0x04,
            Flow::Ping => 0x08,
            Flow::Pause => 0x16,
            Flow::Resume => 0x32,
            Flow::Unknown(other) => other,
        }
    }

    /// The reference's name for the flow (`UNKNOWN` for other values).
    pub fn name(self) -> &'static str {
        match self {
            Flow::New => "NEW",
            Flow::Data => "DATA",
            Flow::Close => "CLOSE",
            Flow::Ping => "PING",
            Flow::Pause => "PAUSE",
            Flow::Resume => "RESUME",
            Flow::Unknown(_) => "UNKNOWN",
        }
    }
}

/// `extra` of a ping request starts with this.
pub const PING_REQUEST: &[u8] = b"ping";
/// `extra` of a ping reply starts with this.
pub const PING_REPLY: &[u8] = b"pong";

/// A decoded (plaintext) frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The channel the frame is about (random for PING).
    pub id: ChannelId,
    /// What the frame means.
    pub flow: Flow,
    /// Payload bytes that follow (plaintext length for an encrypted NEW).
    pub size: u32,
    /// Flow-specific bytes; unused ones are random.
    pub extra: [u8; EXTRA_SIZE],
}

impl FrameHeader {
    /// A header whose `extra` starts with `extra_prefix` (at most 11 bytes;
    /// longer input is cut) and is filled up with random bytes, as the
    /// reference does, so no two headers encrypt alike under CBC.
    pub fn new(id: ChannelId, flow: Flow, size: u32, extra_prefix: &[u8]) -> Self {
        let mut extra = [0u8; EXTRA_SIZE];
        let used = extra_prefix.len().min(EXTRA_SIZE);
        let (head, tail) = extra.split_at_mut(used);
        let (prefix, _) = extra_prefix.split_at(used);
        head.copy_from_slice(prefix);
        rand::fill(tail);
        FrameHeader {
            id,
            flow,
            size,
            extra,
        }
    }

    /// Pack into the 32-byte plaintext.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out[..16].copy_from_slice(&self.id.0);
        out[16] = self.flow.to_byte();
        out[17..21].copy_from_slice(&self.size.to_be_bytes());
        out[21..].copy_from_slice(&self.extra);
        out
    }

    /// Unpack a 32-byte plaintext; every input is a valid header.
    pub fn decode(bytes: &[u8; HEADER_SIZE]) -> Self {
        let (id, rest) = bytes.split_at(16);
        let (flow, rest) = rest.split_at(1);
        let (size, extra) = rest.split_at(4);
        let mut header = FrameHeader {
            id: ChannelId([0; 16]),
            flow: Flow::from_byte(flow.first().copied().unwrap_or_default()),
            size: 0,
            extra: [0; EXTRA_SIZE],
        };
        header.id.0.copy_from_slice(id);
        let mut size_bytes = [0u8; 4];
        size_bytes.copy_from_slice(size);
        header.size = u32::from_be_bytes(size_bytes);
        header.extra.copy_from_slice(extra);
        header
    }

    /// True for a PING whose extra marks it as a reply; every other PING is
    /// a request and gets answered.
    pub fn is_pong(&self) -> bool {
        self.flow == Flow::Ping && self.extra.starts_with(PING_REPLY)
    }
}

/// The caller's address as a protocol >= 2 NEW payload: family marker
/// (`b'4'` or `b'6'`), the packed address, random padding up to a multiple
/// of 16 (so it is one whole CBC unit). Returns the buffer and its length
/// (16 or 32).
pub fn new_payload(ip: IpAddr) -> ([u8; 32], usize) {
    let mut out = [0u8; 32];
    rand::fill(&mut out);
    let len = match ip {
        IpAddr::V4(v4) => {
            out[0] = b'4';
            out[1..5].copy_from_slice(&v4.octets());
            16
        }
        IpAddr::V6(v6) => {
            out[0] = b'6';
            out[1..17].copy_from_slice(&v6.octets());
            32
        }
    };
    (out, len)
}

/// Decode the caller address of a protocol >= 2 NEW payload. Marker `b'6'`
/// needs 16 address bytes, anything else 4 (the reference does not police
/// the marker further). `None` when the address is truncated: the receiver
/// then ignores the NEW.
pub fn parse_new_payload(payload: &[u8]) -> Option<IpAddr> {
    let (marker, packed) = payload.split_first()?;
    if *marker == b'6' {
        let octets: [u8; 16] = packed.get(..16)?.try_into().ok()?;
        Some(IpAddr::V6(Ipv6Addr::from(octets)))
    } else {
        let octets: [u8; 4] = packed.get(..4)?.try_into().ok()?;
        Some(IpAddr::V4(Ipv4Addr::from(octets)))
    }
}

/// `extra` prefix of a protocol < 2 NEW: `b'4'` and the IPv4 address; these
/// versions cannot carry IPv6, so an IPv6 caller is sent as 0.0.0.0.
pub fn legacy_new_extra(ip: IpAddr) -> [u8; 5] {
    let v4 = match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
    };
    let mut out = [b'4', 0, 0, 0, 0];
    out[1..].copy_from_slice(&v4.octets());
    out
}

/// The caller address of a protocol < 2 NEW: extra bytes 1..5, whatever
/// extra byte 0 holds.
pub fn parse_legacy_new_extra(extra: &[u8; EXTRA_SIZE]) -> IpAddr {
    let mut octets = [0u8; 4];
    octets.copy_from_slice(&extra[1..5]);
    IpAddr::V4(Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn flow_bytes() {
        assert_eq!(Flow::Pause.to_byte(), 0x16);
        assert_eq!(Flow::Resume.to_byte(), 0x32);
        assert_eq!(Flow::from_byte(16), Flow::Unknown(16));
        for byte in 0..=255u8 {
            assert_eq!(Flow::from_byte(byte).to_byte(), byte);
        }
    }

    #[test]
    fn new_header_pads_extra_randomly() {
        let id = ChannelId::random();
        let a = FrameHeader::new(id, Flow::Ping, 0, PING_REQUEST);
        let b = FrameHeader::new(id, Flow::Ping, 0, PING_REQUEST);
        assert!(a.extra.starts_with(b"ping"));
        assert_ne!(a.extra, b.extra, "padding must be random");
        assert!(!a.is_pong());
        assert!(FrameHeader::new(id, Flow::Ping, 0, PING_REPLY).is_pong());
    }

    #[test]
    fn new_payload_both_families() {
        let v4: IpAddr = "192.0.2.10".parse().unwrap();
        let (buf, len) = new_payload(v4);
        assert_eq!(len, 16);
        assert_eq!(parse_new_payload(&buf[..len]), Some(v4));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let (buf, len) = new_payload(v6);
        assert_eq!(len, 32);
        assert_eq!(parse_new_payload(&buf[..len]), Some(v6));
        assert_eq!(parse_new_payload(b"6\x01\x02"), None);
        assert_eq!(parse_new_payload(b""), None);
        assert_eq!(parse_new_payload(b"4abc"), None);
    }

    #[test]
    fn legacy_extra_drops_ipv6() {
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(legacy_new_extra(v6), [b'4', 0, 0, 0, 0]);
        let header = FrameHeader::new(
            ChannelId::random(),
            Flow::New,
            0,
            &legacy_new_extra("10.1.2.3".parse().unwrap()),
        );
        assert_eq!(
            parse_legacy_new_extra(&header.extra),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn header_decode_encode_is_identity(bytes in proptest::array::uniform32(any::<u8>())) {
            let header = FrameHeader::decode(&bytes);
            prop_assert_eq!(header.encode(), bytes);
        }

        #[test]
        fn new_payload_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_new_payload(&bytes);
        }
    }
}
