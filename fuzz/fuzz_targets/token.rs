//! The token validator: arbitrary bytes as a token, and arbitrary bytes as
//! the payload of a validly encrypted token (the JSON and field checks).
//! No panic; an accepted token has non-empty names and has not expired.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use snitun::token::{FernetKey, KeyRing, PeerToken};

/// A fixed "now" (2026-01-01) so runs are reproducible.
const NOW: f64 = 1_767_225_600.0;

fn ring() -> &'static KeyRing {
    static RING: OnceLock<KeyRing> = OnceLock::new();
    RING.get_or_init(|| {
        let keys = vec![
            FernetKey::from_bytes(&[7; 32]),
            FernetKey::from_bytes(&[9; 32]),
        ];
        match KeyRing::new(keys) {
            Ok(ring) => ring,
            Err(err) => panic!("key ring: {err}"),
        }
    })
}

fn check(token: Result<PeerToken, snitun::Error>) {
    if let Ok(token) = token {
        assert!(!token.hostname.is_empty());
        assert!(token.aliases.iter().all(|name| !name.is_empty()));
        assert!(token.valid > NOW);
    }
}

fuzz_target!(|data: &[u8]| {
    // As it comes off the wire.
    check(ring().validate_at(data, NOW));
    // As the decrypted payload of a token signed with our key.
    check(PeerToken::from_payload(data, NOW));
    let sealed = ring().encrypt(data);
    check(ring().validate_at(sealed.as_bytes(), NOW));
});
