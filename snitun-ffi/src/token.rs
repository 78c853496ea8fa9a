//! Fernet keys and token minting: the session master's side.

use std::ffi::c_char;
use std::time::Duration;

use snitun_core::Cipher;
use snitun_core::token::{FernetKey, KeyRing, TokenClaims};
use zeroize::Zeroizing;

use crate::args::{
    free_handle, give, handle_mut, handle_ref, out_ptr, str_arg, write_bytes, write_str,
};
use crate::error::{FfiError, guard, snitun_result};

/// Length of a Fernet key in URL-safe base64 (without the NUL).
pub const SNITUN_FERNET_KEY_LEN: usize = 44;
/// Size of the tunnel's AES key in bytes (AES-256).
pub const SNITUN_AES_KEY_LEN: usize = 32;
/// Size of the tunnel's AES IV in bytes.
pub const SNITUN_AES_IV_LEN: usize = 16;
/// Highest protocol version spoken; the default of clients and tokens.
pub const SNITUN_PROTOCOL_VERSION: u8 = 2;

/// Parse a cipher name as the reference spells it.
pub(crate) fn parse_cipher(name: &str) -> Result<Cipher, FfiError> {
    Cipher::from_name(name.trim()).map_err(|_| {
        FfiError::invalid(format!(
            "unknown cipher {name:?}: expected \"aes-cbc\", \"aes-gcm\" or \"aes-gcm-siv\""
        ))
    })
}

/// Check a protocol version.
pub(crate) fn check_protocol_version(version: u8) -> Result<u8, FfiError> {
    if version > SNITUN_PROTOCOL_VERSION {
        return Err(FfiError::invalid(format!(
            "protocol version {version} is not supported (0 to {SNITUN_PROTOCOL_VERSION})"
        )));
    }
    Ok(version)
}

/// Parse a Fernet key in URL-safe base64.
pub(crate) fn parse_fernet_key(text: &str) -> Result<FernetKey, FfiError> {
    FernetKey::from_base64(text.trim()).map_err(|e| {
        FfiError::invalid(format!(
            "fernet_key: not a Fernet key (32 bytes in URL-safe base64): {e}"
        ))
    })
}

/// Write a fresh random Fernet key, in URL-safe base64, to `buf` (`len`
/// bytes, at least `SNITUN_FERNET_KEY_LEN + 1`), NUL-terminated.
///
/// The key is what a server is configured with and what tokens are minted
/// with. Output string rules: see "Output strings" at the top of this
/// header.
///
/// Thread-safe; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_fernet_key_generate(
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> snitun_result {
    guard("snitun_fernet_key_generate", || {
        let key = Zeroizing::new(FernetKey::generate().to_base64());
        // SAFETY: caller's buffer contract.
        unsafe { write_str(&key, buf, len, out_n) }
    })
}

/// What to mint a token with: from snitun_token_config_new(), given to
/// snitun_token_mint(), freed with snitun_token_config_free().
///
/// The same fields as the `snitun token` command: Fernet key (required),
/// hostname (required), aliases, lifetime, cipher, protocol version.
/// Not thread-safe: do not use one config from two threads at once.
pub struct snitun_token_config {
    key: Option<FernetKey>,
    hostname: Option<String>,
    aliases: Vec<String>,
    valid: Duration,
    cipher: Cipher,
    protocol_version: u8,
}

/// Create an empty token config in `*out` (lifetime one day, cipher
/// aes-cbc, protocol version 2). `*out` is NULL after a failure.
///
/// Thread-safe; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_token_config_new(
    out: *mut *mut snitun_token_config,
) -> snitun_result {
    guard("snitun_token_config_new", || {
        // SAFETY: caller's pointer contract.
        let out = unsafe { out_ptr(out, "out") }?;
        give(
            out,
            snitun_token_config {
                key: None,
                hostname: None,
                aliases: Vec::new(),
                valid: Duration::from_secs(86_400),
                cipher: Cipher::AesCbc,
                protocol_version: SNITUN_PROTOCOL_VERSION,
            },
        );
        Ok(())
    })
}

/// Set the Fernet key (URL-safe base64, as from
/// snitun_fernet_key_generate()) the token is encrypted with. Required.
///
/// Errors: NULL, non-UTF-8, or not a Fernet key
/// (`SNITUN_RESULT_INVALID_ARGUMENT`).
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_token_config_set_fernet_key(
    config: *mut snitun_token_config,
    fernet_key: *const c_char,
) -> snitun_result {
    guard("snitun_token_config_set_fernet_key", || {
        // SAFETY: caller's pointer contracts.
        let config = unsafe { handle_mut(config, "config") }?;
        let text = unsafe { str_arg(fernet_key, "fernet_key") }?;
        config.key = Some(parse_fernet_key(text)?);
        Ok(())
    })
}

/// Set the device's hostname, which callers' SNI is matched against.
/// Required; must not be empty.
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_token_config_set_hostname(
    config: *mut snitun_token_config,
    hostname: *const c_char,
) -> snitun_result {
    guard("snitun_token_config_set_hostname", || {
        // SAFETY: caller's pointer contracts.
        let config = unsafe { handle_mut(config, "config") }?;
        let hostname = unsafe { str_arg(hostname, "hostname") }?.trim();
        if hostname.is_empty() {
            return Err(FfiError::invalid("hostname is empty"));
        }
        config.hostname = Some(hostname.to_owned());
        Ok(())
    })
}

/// Add a further hostname served by the same device (token field
/// `alias`). Must not be empty.
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_token_config_add_alias(
    config: *mut snitun_token_config,
    alias: *const c_char,
) -> snitun_result {
    guard("snitun_token_config_add_alias", || {
        // SAFETY: caller's pointer contracts.
        let config = unsafe { handle_mut(config, "config") }?;
        let alias = unsafe { str_arg(alias, "alias") }?.trim();
        if alias.is_empty() {
            return Err(FfiError::invalid("alias is empty"));
        }
        config.aliases.push(alias.to_owned());
        Ok(())
    })
}

/// Set the token's lifetime in seconds from the moment it is minted
/// (default 86400, one day).
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_token_config_set_valid_seconds(
    config: *mut snitun_token_config,
    seconds: u64,
) -> snitun_result {
    guard("snitun_token_config_set_valid_seconds", || {
        // SAFETY: caller's pointer contract.
        let config = unsafe { handle_mut(config, "config") }?;
        config.valid = Duration::from_secs(seconds);
        Ok(())
    })
}

/// Set the tunnel cipher the device will use: `"aes-cbc"` (default),
/// `"aes-gcm"` or `"aes-gcm-siv"`.
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_token_config_set_cipher(
    config: *mut snitun_token_config,
    cipher: *const c_char,
) -> snitun_result {
    guard("snitun_token_config_set_cipher", || {
        // SAFETY: caller's pointer contracts.
        let config = unsafe { handle_mut(config, "config") }?;
        config.cipher = parse_cipher(unsafe { str_arg(cipher, "cipher") }?)?;
        Ok(())
    })
}

/// Set the multiplexer protocol version the device will use, 0 to
/// `SNITUN_PROTOCOL_VERSION` (default).
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_token_config_set_protocol_version(
    config: *mut snitun_token_config,
    version: u8,
) -> snitun_result {
    guard("snitun_token_config_set_protocol_version", || {
        // SAFETY: caller's pointer contract.
        let config = unsafe { handle_mut(config, "config") }?;
        config.protocol_version = check_protocol_version(version)?;
        Ok(())
    })
}

/// Free a token config; NULL is a no-op. The Fernet key is wiped.
///
/// Must not race with other calls on this config; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_token_config_free(config: *mut snitun_token_config) {
    let _ = guard("snitun_token_config_free", || {
        // SAFETY: caller's ownership contract.
        unsafe { free_handle(config) };
        Ok(())
    });
}

/// A minted token with the AES key and IV it grants: from
/// snitun_token_mint(), freed with snitun_token_free() (which wipes it).
///
/// Read-only: its getters are thread-safe.
pub struct snitun_token {
    token: Zeroizing<String>,
    aes_key: Zeroizing<[u8; SNITUN_AES_KEY_LEN]>,
    aes_iv: Zeroizing<[u8; SNITUN_AES_IV_LEN]>,
    valid: f64,
}

/// Mint a token from `config` into `*out`, with a fresh random AES key and
/// IV. Each call mints a new token. `*out` is NULL after a failure.
///
/// Errors: `SNITUN_RESULT_INVALID_CONFIG` when the Fernet key or the
/// hostname is not set.
/// Thread-safe as long as `config` is not changed meanwhile; does not
/// block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_token_mint(
    config: *const snitun_token_config,
    out: *mut *mut snitun_token,
) -> snitun_result {
    guard("snitun_token_mint", || {
        // SAFETY: caller's pointer contracts.
        let out = unsafe { out_ptr(out, "out") }?;
        let config = unsafe { handle_ref(config, "config") }?;
        let Some(key) = config.key.clone() else {
            return Err(FfiError::config(
                "no Fernet key: set it with snitun_token_config_set_fernet_key()",
            ));
        };
        let Some(hostname) = config.hostname.clone() else {
            return Err(FfiError::config(
                "no hostname: set it with snitun_token_config_set_hostname()",
            ));
        };
        let ring = KeyRing::new(vec![key]).map_err(|e| FfiError::core("fernet_key", e))?;
        let claims = TokenClaims::new(hostname, config.valid)
            .with_aliases(config.aliases.clone())
            .with_cipher(config.cipher)
            .with_protocol_version(config.protocol_version);
        let token = Zeroizing::new(ring.mint(&claims));
        give(
            out,
            snitun_token {
                token,
                aes_key: Zeroizing::new(claims.aes_key),
                aes_iv: Zeroizing::new(claims.aes_iv),
                valid: claims.valid,
            },
        );
        Ok(())
    })
}

/// Copy the token (URL-safe base64 text, what the device sends to the
/// server) into `buf`, NUL-terminated. Size query with `buf` NULL; see
/// "Output strings" at the top of this header.
///
/// Thread-safe; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_token_string(
    token: *const snitun_token,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> snitun_result {
    guard("snitun_token_string", || {
        // SAFETY: caller's pointer contracts.
        let token = unsafe { handle_ref(token, "token") }?;
        unsafe { write_str(&token.token, buf, len, out_n) }
    })
}

/// Copy the token's AES key (`SNITUN_AES_KEY_LEN` raw bytes) to `buf`,
/// which holds `len >= SNITUN_AES_KEY_LEN` bytes.
///
/// Thread-safe; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_token_aes_key(
    token: *const snitun_token,
    buf: *mut u8,
    len: usize,
) -> snitun_result {
    guard("snitun_token_aes_key", || {
        // SAFETY: caller's pointer contracts.
        let token = unsafe { handle_ref(token, "token") }?;
        unsafe { write_bytes(token.aes_key.as_slice(), buf, len) }
    })
}

/// Copy the token's AES IV (`SNITUN_AES_IV_LEN` raw bytes) to `buf`, which
/// holds `len >= SNITUN_AES_IV_LEN` bytes.
///
/// Thread-safe; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_token_aes_iv(
    token: *const snitun_token,
    buf: *mut u8,
    len: usize,
) -> snitun_result {
    guard("snitun_token_aes_iv", || {
        // SAFETY: caller's pointer contracts.
        let token = unsafe { handle_ref(token, "token") }?;
        unsafe { write_bytes(token.aes_iv.as_slice(), buf, len) }
    })
}

/// Copy the token's AES key as 64 lowercase hex digits into `buf`,
/// NUL-terminated (65 bytes). Size query with `buf` NULL.
///
/// Thread-safe; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_token_aes_key_hex(
    token: *const snitun_token,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> snitun_result {
    guard("snitun_token_aes_key_hex", || {
        // SAFETY: caller's pointer contracts.
        let token = unsafe { handle_ref(token, "token") }?;
        let text = Zeroizing::new(hex::encode(token.aes_key.as_slice()));
        unsafe { write_str(&text, buf, len, out_n) }
    })
}

/// Copy the token's AES IV as 32 lowercase hex digits into `buf`,
/// NUL-terminated (33 bytes). Size query with `buf` NULL.
///
/// Thread-safe; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_token_aes_iv_hex(
    token: *const snitun_token,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> snitun_result {
    guard("snitun_token_aes_iv_hex", || {
        // SAFETY: caller's pointer contracts.
        let token = unsafe { handle_ref(token, "token") }?;
        let text = Zeroizing::new(hex::encode(token.aes_iv.as_slice()));
        unsafe { write_str(&text, buf, len, out_n) }
    })
}

/// The token's expiry in UTC unix seconds (0 for NULL).
///
/// Thread-safe; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_token_valid_until(token: *const snitun_token) -> f64 {
    crate::error::guard_value("snitun_token_valid_until", 0.0, || {
        // SAFETY: caller's pointer contract.
        unsafe { token.as_ref() }.map_or(0.0, |token| token.valid)
    })
}

/// Free a token; NULL is a no-op. The token, key and IV are wiped.
///
/// Must not race with other calls on this token; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_token_free(token: *mut snitun_token) {
    let _ = guard("snitun_token_free", || {
        // SAFETY: caller's ownership contract.
        unsafe { free_handle(token) };
        Ok(())
    });
}
