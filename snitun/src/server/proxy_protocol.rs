//! PROXY protocol (HAProxy v1 text and v2 binary) headers.
//!
//! When the server sits behind a trusted TCP proxy, every public connection
//! starts with a PROXY header that carries the caller's real address. The
//! server strips it and reports that address to the device (in the NEW
//! message) instead of the proxy's. Connections without a header are passed
//! on untouched, as the reference does.
//!
//! The rules follow the reference (`snitun` 0.47.0) exactly, with one
//! exception: a v1 `TCP6` source with an IPv6 zone (`fe80::1%eth0`) is
//! rejected, because a zone is meaningless to the device and cannot be
//! carried as an IP address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::Error;

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// What every v1 header starts with.
const V1_PREFIX: &[u8] = b"PROXY ";

/// The longest v1 line, CRLF included (the spec's worst case, 107 bytes,
/// plus one byte of slack as in the reference).
pub const V1_MAX_LINE: usize = 108;

/// Fixed part of a v2 header: signature, version/command, family/protocol,
/// address length.
const V2_HEADER_LEN: usize = 16;

/// Address block sizes (source, destination, ports) of the v2 families.
const V2_INET_BLOCK: usize = 12;
const V2_INET6_BLOCK: usize = 36;

/// [`read_proxy_header`] gives up when this many bytes have arrived and the
/// header is still incomplete (a v2 header may announce 64 KiB; real ones
/// are far smaller).
pub const MAX_PROXY_HEADER_READ: usize = 1500;

/// What [`parse_proxy_header`] found at the start of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyParse {
    /// The bytes do not start with a PROXY header: they are the caller's
    /// stream itself.
    None,
    /// A complete header of `size` bytes.
    Header {
        /// The caller's address; `None` for v1 `UNKNOWN`, v2 `LOCAL` and
        /// v2 families other than INET and INET6 (the socket's peer address
        /// is used then).
        source: Option<IpAddr>,
        /// Header length: strip this many bytes, the rest is the stream.
        size: usize,
    },
    /// A header has begun (or the buffer is a prefix of a header start,
    /// including the empty buffer) and more bytes are needed.
    Incomplete,
}

/// A PROXY header read and stripped by [`read_proxy_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The caller's address, if the header carries one (see
    /// [`ProxyParse::Header`]).
    pub source: Option<IpAddr>,
    /// How many bytes the header took on the wire.
    pub size: usize,
}

/// Shorthand for the error every malformed header produces.
fn invalid(reason: &'static str) -> Error {
    Error::InvalidProxyHeader(reason)
}

/// How `buf` relates to a fixed header start.
enum Start {
    /// `buf` begins with all of it.
    Full,
    /// `buf` is a proper prefix of it (more bytes may still make it match).
    Partial,
    /// `buf` differs from it.
    No,
}

fn match_start(buf: &[u8], magic: &[u8]) -> Start {
    if buf.starts_with(magic) {
        Start::Full
    } else if magic.starts_with(buf) {
        Start::Partial
    } else {
        Start::No
    }
}

/// Parse a PROXY protocol header at the start of `buf`.
///
/// Returns [`ProxyParse::None`] when `buf` cannot be the start of a header,
/// [`ProxyParse::Incomplete`] when it is (or may become) one but more bytes
/// are needed, and [`Error::InvalidProxyHeader`] when it is a malformed
/// header: a v1 line without CRLF in its first 108 bytes, an unknown v1
/// protocol, a wrong field count, a source that is not an address of the
/// announced family; a v2 version other than 2, a command other than LOCAL
/// and PROXY, or an address block too short for its family.
pub fn parse_proxy_header(buf: &[u8]) -> Result<ProxyParse, Error> {
    match (match_start(buf, &V2_SIGNATURE), match_start(buf, V1_PREFIX)) {
        (Start::Full, _) => parse_v2(buf),
        (_, Start::Full) => parse_v1(buf),
        (Start::Partial, _) | (_, Start::Partial) => Ok(ProxyParse::Incomplete),
        (Start::No, Start::No) => Ok(ProxyParse::None),
    }
}

/// Parse a v1 text header; `buf` starts with `"PROXY "`.
fn parse_v1(buf: &[u8]) -> Result<ProxyParse, Error> {
    let window = buf.get(..V1_MAX_LINE).unwrap_or(buf);
    let Some(line_len) = window.windows(2).position(|pair| pair == b"\r\n") else {
        return if buf.len() < V1_MAX_LINE {
            Ok(ProxyParse::Incomplete)
        } else {
            Err(invalid("v1 line has no CRLF within 108 bytes"))
        };
    };
    let line = window.get(..line_len).unwrap_or_default();
    let size = line_len + 2;

    // Fields are separated by single spaces; an empty field (double or
    // trailing space) makes the count or the address wrong, as in the
    // reference.
    let mut fields = line.split(|&b| b == b' ');
    if fields.next() != Some(b"PROXY".as_slice()) {
        return Err(invalid("v1 line does not start with PROXY"));
    }
    let want_v6 = match fields.next() {
        // The rest of an UNKNOWN line is ignored by design of the protocol.
        Some(b"UNKNOWN") => return Ok(ProxyParse::Header { source: None, size }),
        Some(b"TCP4") => false,
        Some(b"TCP6") => true,
        _ => return Err(invalid("v1 protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let (Some(source), Some(_dest), Some(_src_port), Some(_dst_port), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(invalid("v1 TCP line does not have exactly 6 fields"));
    };
    // Only the source is used, so only the source is validated (destination
    // and ports are not, as in the reference).
    let source = std::str::from_utf8(source).map_err(|_| invalid("v1 source is not text"))?;
    let source = if want_v6 {
        source
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| invalid("v1 TCP6 source is not an IPv6 address"))?
    } else {
        source
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| invalid("v1 TCP4 source is not an IPv4 address"))?
    };
    Ok(ProxyParse::Header {
        source: Some(source),
        size,
    })
}

/// Parse a v2 binary header; `buf` starts with the signature.
fn parse_v2(buf: &[u8]) -> Result<ProxyParse, Error> {
    let Some(header) = buf.first_chunk::<V2_HEADER_LEN>() else {
        return Ok(ProxyParse::Incomplete);
    };
    let [.., version_command, family_protocol, len_hi, len_lo] = *header;
    // The version is judged as soon as the fixed header is there, before the
    // address block arrives (as the reference does).
    if version_command >> 4 != 2 {
        return Err(invalid("v2 version is not 2"));
    }
    let size = V2_HEADER_LEN + usize::from(u16::from_be_bytes([len_hi, len_lo]));
    let Some(block) = buf.get(V2_HEADER_LEN..size) else {
        return Ok(ProxyParse::Incomplete);
    };
    let source = match version_command & 0x0f {
        // LOCAL: the proxy's own connection (health check); no caller.
        0x0 => None,
        // PROXY: take the source of INET / INET6; other families (UNSPEC,
        // UNIX, unknown) carry no IP address. The transport nibble is not
        // looked at, and TLVs after the addresses are skipped with the block.
        0x1 => match family_protocol >> 4 {
            0x1 => {
                let addr = block
                    .get(..V2_INET_BLOCK)
                    .and_then(|b| b.first_chunk::<4>())
                    .ok_or_else(|| invalid("v2 INET address block shorter than 12 bytes"))?;
                Some(IpAddr::V4(Ipv4Addr::from(*addr)))
            }
            0x2 => {
                let addr = block
                    .get(..V2_INET6_BLOCK)
                    .and_then(|b| b.first_chunk::<16>())
                    .ok_or_else(|| invalid("v2 INET6 address block shorter than 36 bytes"))?;
                Some(IpAddr::V6(Ipv6Addr::from(*addr)))
            }
            _ => None,
        },
        _ => return Err(invalid("v2 command is neither LOCAL nor PROXY")),
    };
    Ok(ProxyParse::Header { source, size })
}

/// Read a PROXY header from the start of a connection and strip it.
///
/// `buf` may already hold the first bytes of the connection. Reads until
/// [`parse_proxy_header`] gives a verdict. Returns `Ok(None)` when the
/// connection does not start with a PROXY header (`buf` then holds the bytes
/// read, untouched), or the header with `buf` holding the bytes after it.
///
/// Errors: [`Error::InvalidProxyHeader`] for a malformed header or one still
/// incomplete after [`MAX_PROXY_HEADER_READ`] bytes,
/// [`Error::ConnectionClosed`] when the stream ends before a verdict,
/// [`Error::Io`] for socket errors. No time limit is applied here.
pub async fn read_proxy_header<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<Option<ProxyHeader>, Error> {
    loop {
        match parse_proxy_header(buf)? {
            ProxyParse::None => return Ok(None),
            ProxyParse::Header { source, size } => {
                if size > buf.len() {
                    // parse_proxy_header never reports more than it saw.
                    return Err(invalid("header size beyond the buffer"));
                }
                let _header = buf.split_to(size);
                return Ok(Some(ProxyHeader { source, size }));
            }
            ProxyParse::Incomplete => {}
        }
        let room = MAX_PROXY_HEADER_READ.saturating_sub(buf.len());
        if room == 0 {
            return Err(invalid("header still incomplete after 1500 bytes"));
        }
        // Read no more than the limit, so a long header cannot make us buffer
        // more than MAX_PROXY_HEADER_READ bytes.
        buf.reserve(room);
        let read = reader.read_buf(&mut (&mut *buf).limit(room)).await?;
        if read == 0 {
            return Err(Error::ConnectionClosed {
                during: "reading the PROXY protocol header",
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncWriteExt, ReadBuf};

    fn header(source: Option<&str>, size: usize) -> ProxyParse {
        ProxyParse::Header {
            source: source.map(|s| s.parse().unwrap()),
            size,
        }
    }

    fn v2(version_command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(version_command);
        out.push(family);
        out.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    fn inet_block() -> Vec<u8> {
        vec![10, 1, 2, 3, 10, 9, 8, 7, 0x04, 0xd2, 0x01, 0xbb]
    }

    fn inet6_block() -> Vec<u8> {
        let mut b = "2001:db8:1::5"
            .parse::<Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec();
        b.extend_from_slice(&"2001:db8:2::6".parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&[0x10, 0xe1, 0x01, 0xbb]);
        b
    }

    struct Chunks(Vec<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(first) = self.0.first_mut() {
                let n = first.len().min(out.remaining());
                out.put_slice(&first[..n]);
                first.drain(..n);
                if first.is_empty() {
                    self.0.remove(0);
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn v1_headers() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        let mut input = line.to_vec();
        input.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            parse_proxy_header(&input).unwrap(),
            header(Some("192.168.0.1"), line.len())
        );
        assert_eq!(
            parse_proxy_header(b"PROXY TCP6 2001:db8::10 2001:db8::20 1 2\r\n").unwrap(),
            header(Some("2001:db8::10"), 42)
        );
        assert_eq!(
            parse_proxy_header(b"PROXY UNKNOWN\r\n").unwrap(),
            header(None, 15)
        );
    }

    #[test]
    fn v1_rejections() {
        for line in [
            &b"PROXY TCP4 2001:db8::10 1.2.3.4 1 2\r\n"[..],
            b"PROXY TCP6 1.2.3.4 2001:db8::10 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 1\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2 3\r\n",
            b"PROXY TCP4  1.2.3.4 1.2.3.5 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2 \r\n",
            b"PROXY TCP4 010.1.2.3 1.2.3.5 1 2\r\n",
            b"PROXY TCP4 \xff.1.2.3 1.2.3.5 1 2\r\n",
            b"PROXY TCP6 fe80::1%eth0 2001:db8::20 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 1.2.3.5 1 2\r\n",
            b"PROXY tcp4 1.2.3.4 1.2.3.5 1 2\r\n",
            b"PROXY \r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2\nGET / HTTP/1.1\r\n",
        ] {
            assert!(
                matches!(parse_proxy_header(line), Err(Error::InvalidProxyHeader(_))),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX_LINE, b'x');
        assert!(parse_proxy_header(&long).is_err());
        long.truncate(V1_MAX_LINE - 1);
        assert_eq!(parse_proxy_header(&long).unwrap(), ProxyParse::Incomplete);
        // CRLF ending exactly at byte 108 is accepted, at byte 109 it is not.
        long.truncate(V1_MAX_LINE - 2);
        long.extend_from_slice(b"\r\n");
        assert_eq!(parse_proxy_header(&long).unwrap(), header(None, 108));
        long.insert(20, b'x');
        assert!(parse_proxy_header(&long).is_err());
    }

    #[test]
    fn not_a_header() {
        for input in [
            &b"\x16\x03\x01\x02\x00\x01"[..],
            b"GET / HTTP/1.1\r\n",
            b"PROXY\t",
            b"PROXY\r\n",
            b"proxy TCP4",
            b"\r\n\r\nX",
            b" ",
        ] {
            assert_eq!(parse_proxy_header(input).unwrap(), ProxyParse::None);
        }
    }

    #[test]
    fn prefixes_are_incomplete() {
        let v1 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        for cut in 0..v1.len() {
            assert_eq!(
                parse_proxy_header(&v1[..cut]).unwrap(),
                ProxyParse::Incomplete
            );
        }
        let v2 = v2(0x21, 0x21, &inet6_block());
        for cut in 0..v2.len() {
            assert_eq!(
                parse_proxy_header(&v2[..cut]).unwrap(),
                ProxyParse::Incomplete
            );
        }
    }

    #[test]
    fn v2_headers() {
        assert_eq!(
            parse_proxy_header(&v2(0x21, 0x11, &inet_block())).unwrap(),
            header(Some("10.1.2.3"), 28)
        );
        assert_eq!(
            parse_proxy_header(&v2(0x21, 0x21, &inet6_block())).unwrap(),
            header(Some("2001:db8:1::5"), 52)
        );
        let mut with_tlv = inet_block();
        with_tlv.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
        assert_eq!(
            parse_proxy_header(&v2(0x21, 0x11, &with_tlv)).unwrap(),
            header(Some("10.1.2.3"), 33)
        );
        assert_eq!(
            parse_proxy_header(&v2(0x20, 0x11, &inet_block())).unwrap(),
            header(None, 28)
        );
        assert_eq!(
            parse_proxy_header(&v2(0x21, 0x31, &[0; 216])).unwrap(),
            header(None, 232)
        );
        assert_eq!(
            parse_proxy_header(&v2(0x21, 0x00, &[])).unwrap(),
            header(None, 16)
        );
    }

    #[test]
    fn v2_rejections() {
        for input in [
            v2(0x11, 0x11, &inet_block()),
            v2(0x31, 0x11, &inet_block()),
            v2(0x22, 0x11, &inet_block()),
            v2(0x2f, 0x11, &inet_block()),
            v2(0x21, 0x11, &inet_block()[..11]),
            v2(0x21, 0x21, &inet_block()),
            v2(0x21, 0x21, &inet6_block()[..35]),
            // Bad version with only the fixed header: invalid, not incomplete.
            v2(0x11, 0x11, &inet_block())[..16].to_vec(),
        ] {
            assert!(
                matches!(
                    parse_proxy_header(&input),
                    Err(Error::InvalidProxyHeader(_))
                ),
                "{input:02x?}"
            );
        }
    }

    #[tokio::test]
    async fn reads_split_v1_header_and_keeps_leftover() {
        let mut stream = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec();
        stream.extend_from_slice(b"\x16\x03\x01payload");
        for size in [1, 3, 6, 7, 47, 100] {
            let mut reader = Chunks(stream.chunks(size).map(<[u8]>::to_vec).collect());
            let mut buf = BytesMut::new();
            let got = read_proxy_header(&mut reader, &mut buf).await.unwrap();
            assert_eq!(
                got,
                Some(ProxyHeader {
                    source: Some("192.168.0.1".parse().unwrap()),
                    size: 47
                })
            );
            // Leftover is a prefix of what followed the header.
            assert_eq!(&buf[..], &stream[47..47 + buf.len()]);
        }
    }

    #[tokio::test]
    async fn reads_v2_over_duplex_with_prefilled_buffer() {
        let mut stream = v2(0x21, 0x11, &inet_block());
        stream.extend_from_slice(b"rest");
        let (mut client, mut server) = tokio::io::duplex(64);
        let mut buf = BytesMut::from(&stream[..5]);
        client.write_all(&stream[5..]).await.unwrap();
        let got = read_proxy_header(&mut server, &mut buf).await.unwrap();
        assert_eq!(got.unwrap().source, Some("10.1.2.3".parse().unwrap()));
        assert_eq!(&buf[..], b"rest");
    }

    #[tokio::test]
    async fn a_complete_v2_header_over_the_read_limit_is_refused_by_the_reader() {
        // Found by the fuzzer: the parser (which follows the reference, see
        // the v2_addr_len_65535 vector) takes a 3 KiB header whole; the
        // reader, which bounds what a caller may make us buffer, refuses it.
        let big = v2(0x21, 0x11, &[1; MAX_PROXY_HEADER_READ]);
        assert!(matches!(
            parse_proxy_header(&big).unwrap(),
            ProxyParse::Header { .. }
        ));
        let mut buf = BytesMut::new();
        let err = read_proxy_header(&mut Chunks(vec![big]), &mut buf)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidProxyHeader(_)), "{err:?}");
        let largest = v2(0x21, 0x11, &[1; MAX_PROXY_HEADER_READ - V2_HEADER_LEN]);
        let mut buf = BytesMut::new();
        let header = read_proxy_header(&mut Chunks(vec![largest]), &mut buf)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(header.size, MAX_PROXY_HEADER_READ);
    }

    #[tokio::test]
    async fn no_header_leaves_buffer_untouched() {
        let mut reader = Chunks(vec![b"\x16\x03".to_vec(), b"\x01".to_vec()]);
        let mut buf = BytesMut::new();
        assert_eq!(
            read_proxy_header(&mut reader, &mut buf).await.unwrap(),
            None
        );
        assert_eq!(&buf[..], b"\x16\x03");
    }

    #[tokio::test]
    async fn eof_and_oversize_are_errors() {
        for chunks in [
            vec![],
            vec![b"PROXY TCP4 1.2".to_vec()],
            vec![b"\r\n\r\n".to_vec()],
        ] {
            let mut buf = BytesMut::new();
            let err = read_proxy_header(&mut Chunks(chunks), &mut buf)
                .await
                .unwrap_err();
            assert!(matches!(err, Error::ConnectionClosed { .. }), "{err:?}");
        }
        let big = v2(0x21, 0x11, &[0; 2000]);
        let mut buf = BytesMut::new();
        let err = read_proxy_header(&mut Chunks(vec![big]), &mut buf)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidProxyHeader(_)), "{err:?}");
        assert!(buf.len() <= MAX_PROXY_HEADER_READ);
        let mut buf = BytesMut::new();
        let err = read_proxy_header(&mut Chunks(vec![b"PROXY junk\r\n".to_vec()]), &mut buf)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidProxyHeader(_)), "{err:?}");
    }

    fn arb_header() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (
                any::<[u8; 4]>(),
                any::<[u8; 4]>(),
                any::<u16>(),
                any::<u16>()
            )
                .prop_map(|(s, d, sp, dp)| format!(
                    "PROXY TCP4 {} {} {sp} {dp}\r\n",
                    Ipv4Addr::from(s),
                    Ipv4Addr::from(d)
                )
                .into_bytes()),
            (
                any::<[u8; 16]>(),
                any::<[u8; 16]>(),
                any::<u16>(),
                any::<u16>()
            )
                .prop_map(|(s, d, sp, dp)| format!(
                    "PROXY TCP6 {} {} {sp} {dp}\r\n",
                    Ipv6Addr::from(s),
                    Ipv6Addr::from(d)
                )
                .into_bytes()),
            (
                prop_oneof![Just(0x20u8), Just(0x21)],
                any::<u8>(),
                prop::collection::vec(any::<u8>(), 36..100)
            )
                .prop_map(|(vc, fam, block)| v2(vc, fam, &block)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_proxy_header(&bytes);
        }

        #[test]
        fn parse_never_panics_after_a_header_start(
            v2_start in any::<bool>(),
            tail in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut input = if v2_start { V2_SIGNATURE.to_vec() } else { V1_PREFIX.to_vec() };
            input.extend_from_slice(&tail);
            if let Ok(ProxyParse::Header { size, .. }) = parse_proxy_header(&input) {
                prop_assert!(size <= input.len());
            }
        }

        #[test]
        fn valid_headers_parse_and_prefixes_are_incomplete(
            head in arb_header(),
            rest in prop::collection::vec(any::<u8>(), 0..20),
        ) {
            let mut input = head.clone();
            input.extend_from_slice(&rest);
            match parse_proxy_header(&input).unwrap() {
                ProxyParse::Header { size, .. } => prop_assert_eq!(size, head.len()),
                other => prop_assert!(false, "{:?}", other),
            }
            for cut in 0..head.len() {
                prop_assert_eq!(parse_proxy_header(&head[..cut]).unwrap(), ProxyParse::Incomplete);
            }
        }
    }
}
