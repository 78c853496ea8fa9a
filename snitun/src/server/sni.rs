//! Reading the server name (SNI) out of a caller's TLS ClientHello.
//!
//! The public SNI port never terminates TLS: it only looks at the first TLS
//! record to learn which host name the caller wants, then forwards every byte
//! it read, unchanged, to the device that owns that name.
//!
//! Compatibility with the reference (`snitun` 0.47.0): every host name the
//! reference extracts from a well-formed ClientHello is extracted here too,
//! and "need more bytes" versus "invalid" is decided by the same rule (the
//! buffer is shorter than the record header's length). Where the reference is
//! lenient with malformed input this parser is stricter and rejects:
//!
//! * every length field is bounded by its enclosing structure (record,
//!   handshake message, extension block, extension, name list), not by the end
//!   of the buffer, so bytes after the record never become part of a name;
//! * the record version major byte must be 3 and the record at most 2^14
//!   bytes, as RFC 8446 §5.1 requires of every TLS peer;
//! * the ClientHello must fill its record exactly (fragmented hellos are not
//!   reassembled; the reference cannot route them either), the session id is
//!   at most 32 bytes, the cipher suite list has an even, non-zero length and
//!   the extension block ends exactly where the hello ends;
//! * a host name must be non-empty, valid UTF-8 and free of control
//!   characters.
//!
//! Real ClientHellos satisfy all of these, so no caller the reference can
//! route is turned away.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::Error;

/// The most bytes [`read_client_hello`] keeps in its buffer while waiting for
/// the first record to complete. A record can announce at most 2^16 + 4
/// bytes and this parser refuses more than 2^14 early, so the cap is a
/// backstop that bounds memory per caller whatever the header says.
pub const MAX_CLIENT_HELLO_BUFFER: usize = 1024 * 1024;

/// The largest TLS record body a peer may send (RFC 8446 §5.1: 2^14 bytes).
pub const MAX_RECORD_LENGTH: usize = 1 << 14;

/// Size of the TLS record header: content type, version (2), length (2).
const RECORD_HEADER_LEN: usize = 5;

/// How many bytes must have arrived before the handshake type is known.
const MIN_HELLO_PREFIX: usize = RECORD_HEADER_LEN + 1;

/// TLS content type of handshake records.
const CONTENT_TYPE_HANDSHAKE: u8 = 0x16;

/// Handshake message type of a ClientHello.
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;

/// The major byte of every TLS/SSL3 record version.
const RECORD_VERSION_MAJOR: u8 = 3;

/// Extension type of server_name (RFC 6066 §3).
const EXTENSION_SERVER_NAME: u16 = 0x0000;

/// Name type of a DNS host name inside the server_name list.
const NAME_TYPE_HOST_NAME: u8 = 0x00;

/// The largest legacy session id (RFC 8446 §4.1.2).
const MAX_SESSION_ID_LENGTH: usize = 32;

/// How much buffer space to offer the reader per read. A fixed amount, so a
/// caller cannot make us reserve memory by announcing a large record.
const READ_CHUNK: usize = 4096;

/// What [`parse_sni`] found in a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SniParse {
    /// The first record is a complete ClientHello naming this host (as sent:
    /// case and any trailing dot are preserved).
    Hostname(String),
    /// The record header announces more bytes than the buffer holds yet.
    Incomplete,
}

/// Shorthand for the error every malformed hello produces.
fn invalid(reason: &'static str) -> Error {
    Error::InvalidClientHello(reason)
}

/// Extract the SNI host name from the first TLS record in `buf`.
///
/// `buf` holds the bytes received so far on a public connection. Returns
/// [`SniParse::Incomplete`] when the record is not complete yet, the host name
/// when it is a ClientHello with a `host_name` entry, and
/// [`Error::InvalidClientHello`] for anything else (fewer than 5 bytes, not a
/// handshake record, not a ClientHello, malformed, or no server name).
///
/// Only the first record is read; bytes after it are ignored (they still
/// belong to the caller's stream and must be forwarded).
pub fn parse_sni(buf: &[u8]) -> Result<SniParse, Error> {
    let Some((header, rest)) = buf.split_first_chunk::<RECORD_HEADER_LEN>() else {
        return Err(invalid("shorter than a TLS record header"));
    };
    let record_len = check_record_header(header)?;
    let Some(record) = rest.get(..record_len) else {
        return Ok(SniParse::Incomplete);
    };
    parse_handshake_record(record).map(SniParse::Hostname)
}

/// Check content type, version and length of a record header and return the
/// length of the record body.
fn check_record_header(header: &[u8; RECORD_HEADER_LEN]) -> Result<usize, Error> {
    let [content_type, major, _minor, len_hi, len_lo] = *header;
    if content_type != CONTENT_TYPE_HANDSHAKE {
        return Err(invalid("not a TLS handshake record"));
    }
    if major != RECORD_VERSION_MAJOR {
        return Err(invalid("unknown TLS record version"));
    }
    let record_len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if record_len > MAX_RECORD_LENGTH {
        return Err(invalid("TLS record longer than 2^14 bytes"));
    }
    Ok(record_len)
}

/// Read the ClientHello handshake message that fills a complete record body.
fn parse_handshake_record(record: &[u8]) -> Result<String, Error> {
    let mut r = Reader::new(record);
    let msg_type = r.u8("empty TLS record")?;
    if msg_type != HANDSHAKE_CLIENT_HELLO {
        return Err(invalid("first handshake message is not a ClientHello"));
    }
    let body_len = r.u24("truncated handshake header")?;
    // A ClientHello longer than its record is fragmented over several
    // records. Real clients do not do that for hellos below 16 KiB, and the
    // reference cannot route such hellos either.
    let body = r.take(body_len, "ClientHello does not fit in its TLS record")?;
    // The ClientHello is alone in its record: nothing else is sent before
    // the server answers.
    if !r.is_empty() {
        return Err(invalid("ClientHello length does not match its TLS record"));
    }
    parse_client_hello(body)
}

/// Walk a ClientHello body (after the 4-byte handshake header) to its
/// server_name extension.
fn parse_client_hello(body: &[u8]) -> Result<String, Error> {
    let mut r = Reader::new(body);
    // legacy_version (not checked: only the record says whether this is
    // TLS at all) and random.
    r.take(2 + 32, "ClientHello truncated in version or random")?;
    let session_id_len = usize::from(r.u8("ClientHello truncated before the session id")?);
    if session_id_len > MAX_SESSION_ID_LENGTH {
        return Err(invalid("session id longer than 32 bytes"));
    }
    r.take(session_id_len, "session id overruns the ClientHello")?;
    let suites_len = r.u16("ClientHello truncated before the cipher suites")?;
    if suites_len == 0 || suites_len % 2 != 0 {
        return Err(invalid("cipher suite list length is zero or odd"));
    }
    r.take(suites_len, "cipher suites overrun the ClientHello")?;
    let compression_len = usize::from(r.u8("ClientHello truncated before compression methods")?);
    if compression_len == 0 {
        return Err(invalid("empty compression method list"));
    }
    r.take(
        compression_len,
        "compression methods overrun the ClientHello",
    )?;
    if r.is_empty() {
        return Err(invalid("ClientHello has no extensions, so no server name"));
    }
    let extensions_len = r.u16("truncated extensions length")?;
    let extensions = r.take(extensions_len, "extensions overrun the ClientHello")?;
    if !r.is_empty() {
        return Err(invalid("bytes after the extensions of the ClientHello"));
    }

    let mut exts = Reader::new(extensions);
    while !exts.is_empty() {
        let ext_type = exts.u16("truncated extension header")?;
        let ext_len = exts.u16("truncated extension header")?;
        let data = exts.take(ext_len, "extension overruns the extension block")?;
        if ext_type == usize::from(EXTENSION_SERVER_NAME) {
            // The first server_name extension decides, as in the reference;
            // the rest of the block is of no interest to a router.
            return parse_server_name_extension(data);
        }
    }
    Err(invalid("no server_name extension"))
}

/// Return the first `host_name` entry of a server_name extension body.
fn parse_server_name_extension(data: &[u8]) -> Result<String, Error> {
    let mut r = Reader::new(data);
    let list_len = r.u16("truncated server name list length")?;
    let list = r.take(list_len, "server name list overruns its extension")?;
    if !r.is_empty() {
        return Err(invalid("bytes after the server name list"));
    }
    let mut names = Reader::new(list);
    while !names.is_empty() {
        let name_type = names.u8("truncated server name entry")?;
        let name_len = names.u16("truncated server name entry")?;
        let name = names.take(name_len, "server name overruns the name list")?;
        // Entries of other types are skipped: RFC 6066 leaves room for new
        // name types and the reference skips them too.
        if name_type == NAME_TYPE_HOST_NAME {
            return host_name(name);
        }
    }
    Err(invalid("server_name extension has no host_name entry"))
}

/// Validate the bytes of a host name.
///
/// The name is kept as sent (no case folding, no IDNA processing): the
/// reference compares it byte for byte with the names its peers registered.
fn host_name(name: &[u8]) -> Result<String, Error> {
    if name.is_empty() {
        return Err(invalid("empty host name"));
    }
    let name = std::str::from_utf8(name).map_err(|_| invalid("host name is not UTF-8"))?;
    if name.chars().any(char::is_control) {
        return Err(invalid("control character in host name"));
    }
    Ok(name.to_owned())
}

/// A bounds-checked cursor over a byte slice. Every read names the reason
/// used when the bytes are not there.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn take(&mut self, n: usize, reason: &'static str) -> Result<&'a [u8], Error> {
        if n > self.rest.len() {
            return Err(invalid(reason));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, reason: &'static str) -> Result<[u8; N], Error> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or_else(|| invalid(reason))?;
        self.rest = tail;
        Ok(*head)
    }

    fn u8(&mut self, reason: &'static str) -> Result<u8, Error> {
        let [b] = self.array::<1>(reason)?;
        Ok(b)
    }

    fn u16(&mut self, reason: &'static str) -> Result<usize, Error> {
        Ok(usize::from(u16::from_be_bytes(self.array::<2>(reason)?)))
    }

    fn u24(&mut self, reason: &'static str) -> Result<usize, Error> {
        let [a, b, c] = self.array::<3>(reason)?;
        Ok((usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c))
    }
}

/// How many bytes the first record needs in total, judging from the bytes
/// present so far, or an error as soon as those bytes show it cannot be a
/// ClientHello (so garbage is dropped without waiting for more of it).
fn bytes_needed(buf: &[u8]) -> Result<usize, Error> {
    if buf.first().is_some_and(|&b| b != CONTENT_TYPE_HANDSHAKE) {
        return Err(invalid("not a TLS handshake record"));
    }
    if buf.get(1).is_some_and(|&b| b != RECORD_VERSION_MAJOR) {
        return Err(invalid("unknown TLS record version"));
    }
    if buf
        .get(RECORD_HEADER_LEN)
        .is_some_and(|&b| b != HANDSHAKE_CLIENT_HELLO)
    {
        return Err(invalid("first handshake message is not a ClientHello"));
    }
    match buf.first_chunk::<RECORD_HEADER_LEN>() {
        Some(header) => {
            let record_len = check_record_header(header)?;
            Ok((RECORD_HEADER_LEN + record_len).max(MIN_HELLO_PREFIX))
        }
        None => Ok(MIN_HELLO_PREFIX),
    }
}

/// Read the first TLS record of a public connection and return the SNI host
/// name of its ClientHello.
///
/// `buf` may already hold the first bytes of the connection (single-port
/// mode peeks at them to pick a path). On success `buf` holds every byte
/// read from the connection so far, the complete record and possibly bytes
/// after it, all of which belong to the caller's TLS stream and must be
/// forwarded to the device.
///
/// Errors: [`Error::InvalidClientHello`] when the bytes are not a ClientHello
/// with a host name (checked as early as the bytes allow),
/// [`Error::ConnectionClosed`] when the caller closes before the record is
/// complete, [`Error::Io`] for socket errors. No time limit is applied here:
/// the caller wraps this in `tokio::time::timeout` (2 s in the reference).
pub async fn read_client_hello<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<String, Error> {
    read_client_hello_within(reader, buf, MAX_CLIENT_HELLO_BUFFER).await
}

/// [`read_client_hello`] keeping at most `max_buffer` bytes (at least
/// 4 KiB): a record announcing more is [`Error::LimitExceeded`].
pub async fn read_client_hello_within<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max_buffer: usize,
) -> Result<String, Error> {
    let max_buffer = max_buffer.clamp(READ_CHUNK, MAX_CLIENT_HELLO_BUFFER);
    loop {
        let needed = bytes_needed(buf)?;
        if buf.len() >= needed {
            break;
        }
        if needed > max_buffer {
            return Err(Error::LimitExceeded {
                what: "bytes before a complete ClientHello",
                limit: max_buffer,
            });
        }
        let room = max_buffer - buf.len();
        buf.reserve(READ_CHUNK.min(room));
        let read = (&mut *reader).take(room as u64).read_buf(buf).await?;
        if read == 0 {
            return Err(Error::ConnectionClosed {
                during: "reading the ClientHello",
            });
        }
    }
    match parse_sni(buf)? {
        SniParse::Hostname(name) => Ok(name),
        // Unreachable in practice: the loop above waited for the whole record.
        SniParse::Incomplete => Err(invalid("TLS record incomplete")),
    }
}

/// A minimal ClientHello in one TLS record, naming `host` when given: the
/// server_name, supported_versions (TLS 1.3) and padding extensions, with
/// `padding` bytes of padding (at most [`MAX_RECORD_LENGTH`]; more is
/// clamped, as is a name over 255 bytes, which DNS does not allow anyway).
/// It is all the router reads, so tests, benchmarks and health
/// checks can reach a device through a server without a TLS stack.
///
/// ```
/// use snitun::server::sni::{SniParse, build_client_hello, parse_sni};
///
/// let hello = build_client_hello(Some("device.example"), 100);
/// assert!(matches!(parse_sni(&hello), Ok(SniParse::Hostname(h)) if h == "device.example"));
/// ```
pub fn build_client_hello(host: Option<&str>, padding: usize) -> Vec<u8> {
    fn push_len(out: &mut Vec<u8>, n: usize) {
        // Every length here is bounded by the clamps below.
        out.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes());
    }
    let padding = padding.min(MAX_RECORD_LENGTH);
    let mut exts = Vec::with_capacity(padding + 64);
    if let Some(host) = host {
        let name = host
            .as_bytes()
            .get(..usize::from(u8::MAX))
            .unwrap_or(host.as_bytes());
        exts.extend_from_slice(&EXTENSION_SERVER_NAME.to_be_bytes());
        push_len(&mut exts, name.len() + 5);
        push_len(&mut exts, name.len() + 3);
        exts.push(NAME_TYPE_HOST_NAME);
        push_len(&mut exts, name.len());
        exts.extend_from_slice(name);
    }
    // supported_versions: TLS 1.3, as every current client sends.
    exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
    exts.extend_from_slice(&[0x00, 0x15]);
    push_len(&mut exts, padding);
    exts.resize(exts.len() + padding, 0);

    let mut hello = vec![0x03, 0x03];
    hello.extend_from_slice(&[0x5a; 32]); // random
    hello.push(32); // legacy session id
    hello.extend_from_slice(&[0x11; 32]);
    hello.extend_from_slice(&[0x00, 0x04, 0x13, 0x01, 0x13, 0x02]); // two suites
    hello.extend_from_slice(&[0x01, 0x00]); // null compression
    push_len(&mut hello, exts.len());
    hello.extend_from_slice(&exts);

    let mut record = vec![CONTENT_TYPE_HANDSHAKE, RECORD_VERSION_MAJOR, 0x01];
    push_len(&mut record, hello.len() + 4);
    record.extend_from_slice(&[HANDSHAKE_CLIENT_HELLO, 0x00]);
    push_len(&mut record, hello.len());
    record.extend_from_slice(&hello);
    record
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

    /// One extension as (type, body).
    type Ext = (u16, Vec<u8>);

    fn u16be(n: usize) -> [u8; 2] {
        u16::try_from(n).unwrap().to_be_bytes()
    }

    fn sni_ext(entries: &[(u8, &[u8])]) -> Ext {
        let mut list = Vec::new();
        for (name_type, name) in entries {
            list.push(*name_type);
            list.extend_from_slice(&u16be(name.len()));
            list.extend_from_slice(name);
        }
        let mut body = u16be(list.len()).to_vec();
        body.extend_from_slice(&list);
        (EXTENSION_SERVER_NAME, body)
    }

    /// A ClientHello handshake body with the given session id and extensions.
    fn hello_body(session_id: &[u8], exts: &[Ext]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0xab; 32]);
        body.push(u8::try_from(session_id.len()).unwrap());
        body.extend_from_slice(session_id);
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
        body.extend_from_slice(&[1, 0]);
        let mut block = Vec::new();
        for (ext_type, data) in exts {
            block.extend_from_slice(&ext_type.to_be_bytes());
            block.extend_from_slice(&u16be(data.len()));
            block.extend_from_slice(data);
        }
        body.extend_from_slice(&u16be(block.len()));
        body.extend_from_slice(&block);
        body
    }

    /// Wrap a hello body in a handshake header and a record header.
    fn record(body: &[u8]) -> Vec<u8> {
        let mut handshake = vec![HANDSHAKE_CLIENT_HELLO];
        handshake.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        handshake.extend_from_slice(body);
        let mut rec = vec![CONTENT_TYPE_HANDSHAKE, 3, 1];
        rec.extend_from_slice(&u16be(handshake.len()));
        rec.extend_from_slice(&handshake);
        rec
    }

    fn hello(host: &str) -> Vec<u8> {
        let exts = vec![
            (0x000a, vec![0, 2, 0, 0x1d]),
            sni_ext(&[(0, host.as_bytes())]),
            (0x0010, b"\x00\x03\x02h2".to_vec()),
        ];
        record(&hello_body(&[7; 32], &exts))
    }

    fn rejected(result: Result<SniParse, Error>) -> bool {
        matches!(result, Err(Error::InvalidClientHello(_)))
    }

    /// Yields the given chunks one read at a time, then EOF. A chunk larger
    /// than the read buffer is delivered over several reads.
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
    fn extracts_host_name() {
        let rec = hello("example.com");
        assert_eq!(
            parse_sni(&rec).unwrap(),
            SniParse::Hostname("example.com".into())
        );
    }

    #[test]
    fn bytes_after_the_record_are_ignored() {
        let mut rec = hello("example.com");
        rec.extend_from_slice(b"\x14\x03\x03\x00\x01\x01");
        assert_eq!(
            parse_sni(&rec).unwrap(),
            SniParse::Hostname("example.com".into())
        );
    }

    #[test]
    fn skips_other_name_types_and_takes_first_host_name() {
        let exts = vec![sni_ext(&[(1, b"x"), (0, b"a.example"), (0, b"b.example")])];
        let rec = record(&hello_body(&[], &exts));
        assert_eq!(
            parse_sni(&rec).unwrap(),
            SniParse::Hostname("a.example".into())
        );
    }

    #[test]
    fn every_prefix_is_incomplete_or_too_short() {
        let rec = hello("example.com");
        for cut in 0..rec.len() {
            let result = parse_sni(&rec[..cut]);
            if cut < RECORD_HEADER_LEN {
                assert!(rejected(result), "cut {cut}");
            } else {
                assert_eq!(result.unwrap(), SniParse::Incomplete, "cut {cut}");
            }
        }
    }

    #[test]
    fn rejects_bad_hellos() {
        let good = hello("example.com");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("garbage", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
            ("alert record", {
                let mut r = good.clone();
                r[0] = 0x15;
                r
            }),
            ("server hello", {
                let mut r = good.clone();
                r[5] = 0x02;
                r
            }),
            ("version major 0xff", {
                let mut r = good.clone();
                r[1] = 0xff;
                r
            }),
            ("empty record", vec![0x16, 3, 1, 0, 0]),
            ("no extensions", {
                let mut body = hello_body(&[], &[]);
                body.truncate(body.len() - 2);
                record(&body)
            }),
            ("no sni", record(&hello_body(&[], &[(0x000a, vec![0, 0])]))),
            (
                "empty name list",
                record(&hello_body(&[], &[(0, vec![0, 0])])),
            ),
            (
                "only other name types",
                record(&hello_body(&[], &[sni_ext(&[(7, b"x")])])),
            ),
            (
                "empty host name",
                record(&hello_body(&[], &[sni_ext(&[(0, b"")])])),
            ),
            (
                "non-utf8 host name",
                record(&hello_body(&[], &[sni_ext(&[(0, b"ex\xffample")])])),
            ),
            (
                "nul in host name",
                record(&hello_body(&[], &[sni_ext(&[(0, b"exa\0mple")])])),
            ),
            ("session id of 33 bytes", record(&hello_body(&[1; 33], &[]))),
            ("oversize record", {
                let mut r = vec![0x16, 3, 1, 0x40, 0x01];
                r.resize(5 + 0x4001, 0);
                r[5] = 1;
                r
            }),
            ("name past the list end", {
                let (t, mut body) = sni_ext(&[(0, b"example.com")]);
                // Claim a longer name; the extension stays the same size.
                body[4] += 5;
                record(&hello_body(&[], &[(t, body)]))
            }),
            ("list length zero", {
                let (t, mut body) = sni_ext(&[(0, b"example.com")]);
                body[0] = 0;
                body[1] = 0;
                record(&hello_body(&[], &[(t, body)]))
            }),
            ("handshake longer than the record", {
                let mut r = good.clone();
                r[7] = r[7].wrapping_add(1);
                r
            }),
        ];
        for (name, input) in cases {
            assert!(rejected(parse_sni(&input)), "{name} accepted");
        }
    }

    #[test]
    fn name_reaching_past_the_record_is_rejected() {
        // The reference would read "example.comTRAILING" here.
        let (t, mut body) = sni_ext(&[(0, b"example.com")]);
        body[4] += 8;
        let mut rec = record(&hello_body(&[], &[(t, body)]));
        rec.extend_from_slice(b"TRAILING");
        assert!(rejected(parse_sni(&rec)));
    }

    #[tokio::test]
    async fn reads_hello_split_over_many_reads() {
        let rec = hello("split.example");
        let mut trailing = rec.clone();
        trailing.extend_from_slice(b"\x17\x03\x03\x00\x05hello");
        for size in [1, 2, 3, 5, 6, 7, 100] {
            let chunks = trailing.chunks(size).map(<[u8]>::to_vec).collect();
            let mut reader = Chunks(chunks);
            let mut buf = BytesMut::new();
            let name = read_client_hello(&mut reader, &mut buf).await.unwrap();
            assert_eq!(name, "split.example");
            // Everything read is kept for forwarding, and it is a prefix of
            // what was sent that covers the whole record.
            assert!(buf.len() >= rec.len());
            assert_eq!(&buf[..], &trailing[..buf.len()]);
        }
    }

    #[tokio::test]
    async fn reads_over_a_duplex_with_bytes_already_buffered() {
        let rec = hello("duplex.example");
        let (mut client, mut server) = tokio::io::duplex(64);
        let mut buf = BytesMut::from(&rec[..3]);
        let rest = rec[3..].to_vec();
        let writer = tokio::spawn(async move {
            for chunk in rest.chunks(17) {
                client.write_all(chunk).await.unwrap();
            }
            client
        });
        let name = read_client_hello(&mut server, &mut buf).await.unwrap();
        assert_eq!(name, "duplex.example");
        assert_eq!(&buf[..], &rec[..]);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn eof_mid_record_is_connection_closed() {
        let rec = hello("example.com");
        for cut in [0, 1, 5, 6, 40, rec.len() - 1] {
            let mut reader = Chunks(vec![rec[..cut].to_vec()]);
            let mut buf = BytesMut::new();
            let err = read_client_hello(&mut reader, &mut buf).await.unwrap_err();
            assert!(
                matches!(err, Error::ConnectionClosed { .. }),
                "cut {cut}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn garbage_is_rejected_without_waiting() {
        // Only one byte arrives and the stream then stays open: a reader that
        // waited for six bytes would hang here.
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"G").await.unwrap();
        let mut buf = BytesMut::new();
        let err = read_client_hello(&mut server, &mut buf).await.unwrap_err();
        assert!(matches!(err, Error::InvalidClientHello(_)), "{err:?}");

        // Byte 5 is checked as soon as it arrives.
        let mut reader = Chunks(vec![vec![0x16, 3, 1, 0x10, 0, 2]]);
        let mut buf = BytesMut::new();
        let err = read_client_hello(&mut reader, &mut buf).await.unwrap_err();
        assert!(matches!(err, Error::InvalidClientHello(_)), "{err:?}");
    }

    #[tokio::test]
    async fn oversize_record_is_rejected_from_its_header() {
        // The announced length (0xffff) is refused before any body is read.
        let (mut client, mut server) = tokio::io::duplex(64);
        client
            .write_all(&[0x16, 3, 1, 0xff, 0xff, 1])
            .await
            .unwrap();
        let mut buf = BytesMut::new();
        let err = read_client_hello(&mut server, &mut buf).await.unwrap_err();
        assert!(matches!(err, Error::InvalidClientHello(_)), "{err:?}");
        assert!(buf.capacity() <= 2 * READ_CHUNK);
    }

    #[tokio::test]
    async fn complete_but_invalid_hello_is_rejected() {
        let rec = record(&hello_body(&[], &[]));
        let mut reader = Chunks(vec![rec]);
        let mut buf = BytesMut::new();
        let err = read_client_hello(&mut reader, &mut buf).await.unwrap_err();
        assert!(matches!(err, Error::InvalidClientHello(_)), "{err:?}");
    }

    fn arb_host() -> impl Strategy<Value = String> {
        "[a-z0-9-]{1,63}(\\.[a-z0-9-]{1,63}){0,3}"
    }

    fn arb_hello() -> impl Strategy<Value = (String, Vec<u8>)> {
        (
            arb_host(),
            prop::collection::vec(any::<u8>(), 0..=32),
            prop::collection::vec((1u16.., prop::collection::vec(any::<u8>(), 0..40)), 0..6),
            0usize..6,
        )
            .prop_map(|(host, sid, mut exts, at)| {
                let at = at.min(exts.len());
                exts.insert(at, sni_ext(&[(0, host.as_bytes())]));
                let rec = record(&hello_body(&sid, &exts));
                (host, rec)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn parse_sni_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_sni(&bytes);
        }

        #[test]
        fn parse_sni_never_panics_on_record_shaped_input(
            len in 0u16..600,
            body in prop::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut input = vec![0x16, 3, 1];
            input.extend_from_slice(&len.to_be_bytes());
            input.push(1);
            input.extend_from_slice(&body);
            let _ = parse_sni(&input);
        }

        #[test]
        fn mutated_hellos_never_panic(
            (_, rec) in arb_hello(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut rec = rec;
            for (at, value) in edits {
                let i = at.index(rec.len());
                rec[i] = value;
            }
            let _ = parse_sni(&rec);
        }
    }

    proptest! {
        // Each case parses every prefix of a hello, so fewer cases suffice.
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        #[test]
        fn valid_hellos_parse_and_their_prefixes_are_incomplete((host, rec) in arb_hello()) {
            prop_assert_eq!(parse_sni(&rec).unwrap(), SniParse::Hostname(host));
            for cut in RECORD_HEADER_LEN..rec.len() {
                prop_assert_eq!(parse_sni(&rec[..cut]).unwrap(), SniParse::Incomplete);
            }
        }
    }
}
