//! Vector checker for gcm.json: AES-256-GCM units and counter nonces.

use crate::common::*;
use crate::frames;
use serde_json::Value;
use snitun::crypto::{Cipher, Decryptor, Encryptor, Role};

pub fn check(_file: &Value, case: &Value) -> CaseResult {
    match kind(case)? {
        "sequence" => sequence(case),
        "encrypt" => encrypt(case),
        "exhausted" => exhausted(case),
        "decrypt" => decrypt(Cipher::AesGcm, case),
        "frames" => frames::check(case),
        other => unknown_kind(other),
    }
}

fn role(case: &Value) -> Result<Role, String> {
    match case["is_initiator"].as_bool() {
        Some(true) => Ok(Role::Initiator),
        Some(false) => Ok(Role::Responder),
        None => Err("no is_initiator".into()),
    }
}

fn sequence(case: &Value) -> CaseResult {
    let key: [u8; 32] = hex_array(case, "key")?;
    let role = role(case)?;
    same(
        "role name",
        text(case, "role")?,
        match role {
            Role::Initiator => "initiator",
            Role::Responder => "responder",
        },
    )?;
    let mut encryptor = Encryptor::new(Cipher::AesGcm, role, &key, &[0; 16]);
    let mut decryptor = Decryptor::new(Cipher::AesGcm, role.peer(), &key, &[0; 16]);
    for unit in case["units"].as_array().ok_or("no units")? {
        let label = text(unit, "label")?;
        let plain = hex_field(unit, "plaintext")?;
        let wire = hex_field(unit, "wire")?;
        let mut out = vec![0u8; plain.len() + 28];
        encryptor
            .encrypt(&plain, &mut out)
            .map_err(|e| e.to_string())?;
        same(
            &format!("{label} nonce"),
            hex::encode(&out[..12]),
            text(unit, "nonce")?.to_string(),
        )?;
        same(
            &format!("{label} wire"),
            hex::encode(&out),
            hex::encode(&wire),
        )?;
        let mut unit_bytes = wire.clone();
        let opened = decryptor
            .decrypt(&mut unit_bytes)
            .map_err(|e| e.to_string())?;
        same(
            &format!("{label} plaintext"),
            hex::encode(opened),
            hex::encode(&plain),
        )?;
    }
    Ok(())
}

fn encrypt(case: &Value) -> CaseResult {
    let key: [u8; 32] = hex_array(case, "key")?;
    let role = role(case)?;
    let counter = uint(case, "counter")?;
    let plain = hex_field(case, "plaintext")?;
    let wire = hex_field(case, "wire")?;
    let mut encryptor = Encryptor::new(Cipher::AesGcm, role, &key, &[0; 16]);
    encryptor
        .set_gcm_counter(counter)
        .map_err(|e| e.to_string())?;
    let mut out = vec![0u8; plain.len() + 28];
    encryptor
        .encrypt(&plain, &mut out)
        .map_err(|e| e.to_string())?;
    same(
        "nonce",
        hex::encode(&out[..12]),
        text(case, "nonce")?.to_string(),
    )?;
    same("wire", hex::encode(&out), hex::encode(&wire))?;
    let mut decryptor = Decryptor::new(Cipher::AesGcm, role.peer(), &key, &[0; 16]);
    decryptor
        .set_gcm_counter(counter)
        .map_err(|e| e.to_string())?;
    let mut unit = wire.clone();
    let opened = decryptor.decrypt(&mut unit).map_err(|e| e.to_string())?;
    same("plaintext", opened, &plain[..])
}

fn exhausted(case: &Value) -> CaseResult {
    let key: [u8; 32] = hex_array(case, "key")?;
    let role = role(case)?;
    let last = uint(case, "last_counter")?;
    same("last counter", last, u64::MAX)?;
    // The recorded last unit is valid for a receiver at that counter.
    let mut decryptor = Decryptor::new(Cipher::AesGcm, role.peer(), &key, &[0; 16]);
    decryptor.set_gcm_counter(last).map_err(|e| e.to_string())?;
    let mut unit = hex_field(case, "last_wire")?;
    decryptor.decrypt(&mut unit).map_err(|e| e.to_string())?;
    // Ours sends that unit, then refuses.
    let mut encryptor = Encryptor::new(Cipher::AesGcm, role, &key, &[0; 16]);
    encryptor.set_gcm_counter(last).map_err(|e| e.to_string())?;
    let mut out = [0u8; 60];
    encryptor
        .encrypt(&[0; 32], &mut out)
        .map_err(|e| e.to_string())?;
    same(
        "last nonce",
        hex::encode(&out[..12]),
        hex::encode(&hex_field(case, "last_wire")?[..12]),
    )?;
    match encryptor.encrypt(&[0; 32], &mut out) {
        Err(snitun::Error::NonceExhausted) => Ok(()),
        other => Err(format!(
            "after counter 2^64-1 we got {other:?}, want NonceExhausted"
        )),
    }
}

/// Decrypt one recorded unit. These cases test authentication, not our
/// (stricter) nonce policing, so the receiver is set up to expect the
/// unit's own counter from either direction.
pub fn decrypt(cipher: Cipher, case: &Value) -> CaseResult {
    let key: [u8; 32] = hex_array(case, "key")?;
    let wire = hex_field(case, "wire")?;
    let mut ours = Err("rejected".to_string());
    for role in [Role::Initiator, Role::Responder] {
        let mut decryptor = Decryptor::new(cipher, role, &key, &[0; 16]);
        if cipher == Cipher::AesGcm {
            let counter = wire
                .get(4..12)
                .and_then(|c| <[u8; 8]>::try_from(c).ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            decryptor
                .set_gcm_counter(counter)
                .map_err(|e| e.to_string())?;
        }
        let mut unit = wire.clone();
        if let Ok(plain) = decryptor.decrypt(&mut unit) {
            ours = Ok(hex::encode(plain));
            break;
        }
    }
    match expected_result(case)? {
        "accept" => accepted_as_reference(
            case,
            "plaintext",
            ours,
            text(&case["expected"], "plaintext")?.to_string(),
        ),
        "reject" => match ours {
            Err(_) => Ok(()),
            Ok(plain) => Err(format!("accepted a unit the reference rejects: {plain}")),
        },
        other => Err(format!("unknown expected result {other:?}")),
    }
}
