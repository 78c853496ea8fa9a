//! The server's side of the handshake fed arbitrary bytes: either raw (as a
//! stranger would send them), or after a valid token (arbitrary challenge
//! answers). No panic, no hang (the clock is paused, so timeouts elapse at
//! once), and a wrong answer never passes.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use snitun::Cipher;
use snitun::handshake::{HandshakeConfig, server_handshake};
use snitun::token::{FernetKey, KeyRing, TokenClaims};
use snitun_fuzz::{block_on, take_byte};
use tokio::io::AsyncWriteExt;

const CIPHERS: [Cipher; 3] = [Cipher::AesCbc, Cipher::AesGcm, Cipher::AesGcmSiv];

fn ring() -> &'static KeyRing {
    static RING: OnceLock<KeyRing> = OnceLock::new();
    RING.get_or_init(
        || match KeyRing::new(vec![FernetKey::from_bytes(&[5; 32])]) {
            Ok(ring) => ring,
            Err(err) => panic!("key ring: {err}"),
        },
    )
}

/// A valid token for each cipher (minted once; valid for a century).
fn token(cipher: Cipher) -> &'static str {
    static TOKENS: OnceLock<Vec<String>> = OnceLock::new();
    let tokens = TOKENS.get_or_init(|| {
        CIPHERS
            .iter()
            .map(|cipher| {
                let claims =
                    TokenClaims::new("fuzz.example", Duration::from_secs(100 * 365 * 86400))
                        .with_cipher(*cipher);
                ring().mint(&claims)
            })
            .collect()
    });
    let index = CIPHERS.iter().position(|c| *c == cipher).unwrap_or(0);
    tokens.get(index).map(String::as_str).unwrap_or_default()
}

fuzz_target!(|input: &[u8]| {
    let (mode, data) = take_byte(input);
    let cipher = CIPHERS[usize::from(mode / 2) % CIPHERS.len()];
    let mut wire = Vec::new();
    if mode % 2 == 1 {
        wire.extend_from_slice(token(cipher).as_bytes());
    }
    wire.extend_from_slice(data);
    let config = HandshakeConfig::default();
    let result = block_on(async move {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            let _ = client.write_all(&wire).await;
            let _ = client.shutdown().await;
            // Keep reading what the server sends (the challenge) so it never
            // blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await;
        });
        let result = server_handshake(&mut server, BytesMut::new(), ring(), &config).await;
        drop(server);
        let _ = writer.await;
        result
    });
    // The answer depends on a random challenge the input cannot know: a
    // handshake that passed means the check was skipped.
    assert!(result.is_err(), "arbitrary bytes passed the challenge");
});
