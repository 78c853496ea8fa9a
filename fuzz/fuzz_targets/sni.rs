//! The SNI parser and the async ClientHello reader on arbitrary bytes: no
//! panic, and both agree on every host name found.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use snitun::server::sni::{SniParse, parse_sni, read_client_hello};
use snitun_fuzz::{Pieces, block_on, take_byte};

fuzz_target!(|input: &[u8]| {
    let (piece, data) = take_byte(input);
    let parsed = parse_sni(data);
    let read = block_on(async {
        let mut reader = Pieces::new(data, usize::from(piece));
        let mut buf = BytesMut::new();
        read_client_hello(&mut reader, &mut buf).await
    });
    if let Ok(SniParse::Hostname(name)) = &parsed {
        assert!(!name.is_empty());
        match &read {
            Ok(read_name) => assert_eq!(read_name, name),
            Err(err) => panic!("parser found {name:?} but the reader failed: {err}"),
        }
    }
    if let Ok(name) = &read {
        assert!(!name.is_empty());
    }
});
