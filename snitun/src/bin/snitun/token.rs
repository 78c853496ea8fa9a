//! `snitun keygen` and `snitun token`: the session master's two jobs.

use std::time::Duration;

use serde::Serialize;
use snitun::Cipher;
use snitun::token::{FernetKey, KeyRing, TokenClaims};

use crate::cli::TokenArgs;
use crate::fail::{Context, Result, bail};

/// What `snitun token` prints: the token, and everything the device must be
/// configured with next to it.
#[derive(Serialize)]
struct Minted<'a> {
    token: &'a str,
    hostname: &'a str,
    aliases: &'a [String],
    valid: f64,
    aes_key: String,
    aes_iv: String,
    protocol_version: u8,
    cipher: &'static str,
}

/// Print a fresh Fernet key.
pub fn keygen() {
    println!("{}", FernetKey::generate().to_base64());
}

/// A key ring from the command line's keys, each checked without echoing
/// it back.
pub fn key_ring(keys: &[String]) -> Result<KeyRing> {
    let mut parsed = Vec::with_capacity(keys.len());
    for (n, key) in keys.iter().enumerate() {
        let key = key.trim();
        if key.is_empty() {
            bail!("--fernet-key #{}: empty key", n + 1);
        }
        parsed.push(FernetKey::from_base64(key).context(format!("--fernet-key #{}", n + 1))?);
    }
    KeyRing::new(parsed).context("--fernet-key")
}

/// Mint a token and print it as one JSON object.
pub fn token(args: &TokenArgs) -> Result<()> {
    let ring = key_ring(&args.fernet_keys)?;
    if args.hostname.trim().is_empty() {
        bail!("--hostname must not be empty");
    }
    let cipher = Cipher::from(args.cipher);
    let claims = TokenClaims::new(args.hostname.clone(), Duration::from_secs(args.valid))
        .with_aliases(args.aliases.clone())
        .with_cipher(cipher)
        .with_protocol_version(args.protocol_version);
    let token = ring.mint(&claims);
    let minted = Minted {
        token: &token,
        hostname: &claims.hostname,
        aliases: &claims.aliases,
        valid: claims.valid,
        aes_key: hex::encode(claims.aes_key),
        aes_iv: hex::encode(claims.aes_iv),
        protocol_version: claims.protocol_version,
        cipher: cipher.name(),
    };
    let json = serde_json::to_string(&minted).context("writing JSON")?;
    println!("{json}");
    Ok(())
}
