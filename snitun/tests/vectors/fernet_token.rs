//! Vector checker for fernet_token.json: what the server makes of the token a
//! peer sends (accept with its claims, or reject with the reference's
//! reason), key rotation, and byte-exact Fernet encryption and minting.

use crate::common::*;
use base64::Engine as _;
use serde_json::{Value, json};
use snitun::token::{FernetKey, KeyRing, PeerToken, TokenClaims};
use snitun::{Cipher, Error};
use std::time::{SystemTime, UNIX_EPOCH};

/// The clock the reference minter was pinned to (2026-01-01T00:00:00Z). The
/// `expired` vectors lie before it, the accepted ones in 2100 or later, so
/// the real time is used unless the machine's clock is behind this.
const PINNED_CLOCK: f64 = 1_767_225_600.0;

pub fn check(file: &Value, case: &Value) -> CaseResult {
    let ring = server_ring(case)?;
    let token = hex_field(case, "token_hex")?;
    if let Some(text) = case["token"].as_str() {
        same("token_hex vs token", token.as_slice(), text.as_bytes())?;
    }

    let ours = ring.validate_at(&token, now());
    match expected_result(case)? {
        "accept" => accept(case, &ours)?,
        "reject" => reject(case, &ours)?,
        other => return Err(format!("unknown expected result {other:?}")),
    }

    if let Some(payload) = payload(case)? {
        fernet_round_trip(file, &token, &payload)?;
    }
    if text(case, "name")?.starts_with("generate_client_token") {
        minting(case, &ring, &token)?;
    }
    Ok(())
}

fn now() -> f64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    real.max(PINNED_CLOCK)
}

fn server_ring(case: &Value) -> Result<KeyRing, String> {
    let keys = case["server_keys"]
        .as_array()
        .ok_or("field `server_keys` missing or not a list")?
        .iter()
        .map(|key| key.as_str().ok_or("a server key is not a string"))
        .collect::<Result<Vec<_>, _>>()?;
    KeyRing::from_strings(keys).map_err(|e| format!("server keys: {e}"))
}

/// The decrypted payload the case documents, if any.
fn payload(case: &Value) -> Result<Option<Vec<u8>>, String> {
    if let Some(text) = case["payload_text"].as_str() {
        Ok(Some(text.as_bytes().to_vec()))
    } else if case.get("payload_hex").is_some() {
        hex_field(case, "payload_hex").map(Some)
    } else {
        Ok(None)
    }
}

/// The fields the vectors compare, as JSON so the reference's odd accepted
/// types (a numeric hostname, a string alias) can be represented.
fn summary(token: &PeerToken) -> Value {
    json!({
        "hostname": token.hostname,
        "aliases": token.aliases,
        "protocol_version": token.protocol_version,
        "cipher": token.cipher.name(),
        "aes_key_bits": token.aes_key.len() * 8,
        "valid": token.valid,
    })
}

fn accept(case: &Value, ours: &Result<PeerToken, Error>) -> CaseResult {
    let expected = &case["expected"];
    let reference = json!({
        "hostname": expected["hostname"],
        "aliases": expected["aliases"],
        "protocol_version": expected["protocol_version"],
        "cipher": expected["cipher"],
        "aes_key_bits": expected["aes_key_bits"],
        "valid": expected["valid"],
    });
    accepted_as_reference(case, "token", ours.as_ref().map(summary), reference)?;

    // Where we accept, the key material must be the payload's.
    let (Ok(token), Some(payload_text)) = (ours, case["payload_text"].as_str()) else {
        return Ok(());
    };
    let payload: Value =
        serde_json::from_str(payload_text).map_err(|e| format!("payload_text is not JSON: {e}"))?;
    same(
        "aes_key",
        hex::encode(token.aes_key),
        text(&payload, "aes_key")?.to_lowercase(),
    )?;
    let iv_hex = text(&payload, "aes_iv")?.to_lowercase();
    let want_iv = if iv_hex.len() == 32 || token.cipher == Cipher::AesCbc {
        iv_hex
    } else {
        // The AEAD ciphers do not use the IV; we store zeros for odd sizes.
        "00".repeat(16)
    };
    same("aes_iv", hex::encode(token.aes_iv), want_iv)
}

fn reject(case: &Value, ours: &Result<PeerToken, Error>) -> CaseResult {
    let reason = text(&case["expected"], "reason")?;
    let err = match ours {
        Ok(token) => {
            return Err(format!(
                "we accepted {token:?}; the reference rejects ({reason})"
            ));
        }
        Err(err) => err,
    };
    let fits = match reason {
        "invalid_token" => matches!(err, Error::InvalidToken),
        "invalid_payload" => matches!(err, Error::InvalidTokenPayload(_)),
        "expired" => {
            if let (Error::TokenExpired { valid }, Some(payload_text)) =
                (err, case["payload_text"].as_str())
            {
                let payload: Value = serde_json::from_str(payload_text)
                    .map_err(|e| format!("payload_text is not JSON: {e}"))?;
                same(
                    "expired valid",
                    Some(*valid),
                    payload.get("valid").and_then(Value::as_f64),
                )?;
            }
            matches!(err, Error::TokenExpired { .. })
        }
        "malformed_payload" => matches!(
            err,
            Error::MalformedToken(_) | Error::UnsupportedCipher(_) | Error::InvalidKey(_)
        ),
        other => return Err(format!("unknown reject reason {other:?}")),
    };
    if fits {
        Ok(())
    } else {
        Err(format!(
            "rejected as {err:?}; the reference's reason is {reason}"
        ))
    }
}

/// Our Fernet against the reference's: the key that minted the token opens
/// it to exactly the documented payload, and encrypting that payload again
/// with the token's own timestamp and IV gives the very same token.
fn fernet_round_trip(file: &Value, token: &[u8], payload: &[u8]) -> CaseResult {
    let keys = file["fernet_keys"]
        .as_object()
        .ok_or("file constant `fernet_keys` missing")?;
    let mut opened_by = None;
    for (label, key) in keys {
        let key = FernetKey::from_base64(key.as_str().ok_or("a file key is not a string")?)
            .map_err(|e| format!("file key {label}: {e}"))?;
        if let Ok(plain) = key.decrypt(token) {
            same(
                &format!("payload decrypted with the {label} key"),
                hex::encode(&plain),
                hex::encode(payload),
            )?;
            opened_by = Some(key);
            break;
        }
    }
    let key = opened_by.ok_or("none of the file's keys opens this token")?;
    let (time, iv) = fernet_time_and_iv(token)?;
    let again = key.encrypt_with(payload, time, iv);
    same(
        "token re-encrypted with its timestamp and IV",
        again.as_str(),
        String::from_utf8_lossy(token).as_ref(),
    )
}

/// The reference's `generate_client_token`: our minter writes the same JSON
/// for the same claims, byte for byte, and so the same token.
fn minting(case: &Value, ring: &KeyRing, token: &[u8]) -> CaseResult {
    let payload_text = case["payload_text"]
        .as_str()
        .ok_or("generate_client_token case without payload_text")?;
    let payload: Value =
        serde_json::from_str(payload_text).map_err(|e| format!("payload_text is not JSON: {e}"))?;
    let cipher = match payload.get("cipher") {
        None => Cipher::AesCbc,
        Some(name) => Cipher::from_name(name.as_str().ok_or("cipher is not a string")?)
            .map_err(|e| e.to_string())?,
    };
    let claims = TokenClaims {
        hostname: text(&payload, "hostname")?.to_string(),
        aliases: Vec::new(),
        valid: payload
            .get("valid")
            .and_then(Value::as_f64)
            .ok_or("valid is not a number")?,
        aes_key: hex_array(&payload, "aes_key")?,
        aes_iv: hex_array(&payload, "aes_iv")?,
        protocol_version: u8::try_from(
            payload
                .get("protocol_version")
                .and_then(Value::as_u64)
                .ok_or("protocol_version is not an integer")?,
        )
        .map_err(|e| e.to_string())?,
        cipher,
    };
    same(
        "minted payload JSON",
        claims.payload_json().as_str(),
        payload_text,
    )?;
    let (time, iv) = fernet_time_and_iv(token)?;
    same(
        "minted token",
        ring.mint_with_iv(&claims, time, iv).as_str(),
        String::from_utf8_lossy(token).as_ref(),
    )
}

/// The Fernet timestamp and IV of a well-formed token.
fn fernet_time_and_iv(token: &[u8]) -> Result<(u64, [u8; 16]), String> {
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .map_err(|e| format!("token is not URL-safe base64: {e}"))?;
    let time = raw
        .get(1..9)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or("token too short for a timestamp")?;
    let iv = raw
        .get(9..25)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .ok_or("token too short for an IV")?;
    Ok((time, iv))
}
