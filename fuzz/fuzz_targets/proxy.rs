//! The PROXY v1/v2 parser and the async header reader on arbitrary bytes:
//! no panic, and a header the parser finds is one the reader finds too
//! (or refuses, when it is longer than the reader's limit).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use snitun::server::proxy_protocol::{
    MAX_PROXY_HEADER_READ, ProxyParse, parse_proxy_header, read_proxy_header,
};
use snitun_fuzz::{Pieces, block_on, take_byte};

fuzz_target!(|input: &[u8]| {
    let (piece, data) = take_byte(input);
    let parsed = parse_proxy_header(data);
    if let Ok(ProxyParse::Header { size, .. }) = &parsed {
        assert!(*size <= data.len());
    }
    let read = block_on(async {
        let mut reader = Pieces::new(data, usize::from(piece));
        let mut buf = BytesMut::new();
        read_proxy_header(&mut reader, &mut buf)
            .await
            .map(|header| (header, buf.len()))
    });
    if let Ok(ProxyParse::Header { source, size }) = parsed {
        if size > MAX_PROXY_HEADER_READ {
            // The parser follows the reference (any announced length); the
            // reader bounds what a caller may make the server buffer.
            assert!(
                matches!(read, Err(snitun::Error::InvalidProxyHeader(_))),
                "a {size}-byte header, the reader: {read:?}"
            );
            return;
        }
        match read {
            Ok((Some(header), rest)) => {
                assert_eq!(header.source, source);
                assert_eq!(header.size, size);
                // The reader stops once the header is complete: what it read
                // beyond it is a prefix of the caller's stream.
                assert!(rest <= data.len() - size);
            }
            other => panic!("parser found a header, the reader: {other:?}"),
        }
    }
});
