//! A minimal TLS ClientHello naming a host: all the server's router reads
//! (it never terminates TLS), so callers need nothing more.

/// One TLS record holding a ClientHello with a server_name extension for
/// `host` (and supported_versions, as real hellos have).
pub fn client_hello(host: &str) -> Vec<u8> {
    let name = host.as_bytes();
    let mut exts = Vec::new();
    // server_name: list of one host_name entry.
    push_u16(&mut exts, 0x0000);
    push_u16(&mut exts, name.len() + 5);
    push_u16(&mut exts, name.len() + 3);
    exts.push(0);
    push_u16(&mut exts, name.len());
    exts.extend_from_slice(name);
    // supported_versions: TLS 1.3.
    exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);

    let mut hello = vec![0x03, 0x03];
    hello.extend_from_slice(&[0x42; 32]); // random
    hello.push(0); // no session id
    hello.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one suite
    hello.extend_from_slice(&[0x01, 0x00]); // null compression
    push_u16(&mut hello, exts.len());
    hello.extend_from_slice(&exts);

    let mut record = vec![0x16, 0x03, 0x01];
    push_u16(&mut record, hello.len() + 4);
    record.extend_from_slice(&[0x01, 0x00]);
    push_u16(&mut record, hello.len());
    record.extend_from_slice(&hello);
    record
}

fn push_u16(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use snitun::server::sni::{SniParse, parse_sni};

    #[test]
    fn the_server_routes_it() {
        let hello = client_hello("peer-7.soak.test");
        assert!(matches!(
            parse_sni(&hello),
            Ok(SniParse::Hostname(name)) if name == "peer-7.soak.test"
        ));
    }
}
