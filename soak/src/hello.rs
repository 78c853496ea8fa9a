//! A minimal TLS ClientHello naming a host: all the server's router reads
//! (it never terminates TLS), so callers need nothing more.

/// One TLS record holding a ClientHello with a server_name extension for
/// `host` (and supported_versions, as real hellos have).
pub fn client_hello(host: &str) -> Vec<u8> {
    snitun::server::sni::build_client_hello(Some(host), 0)
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
