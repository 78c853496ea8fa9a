//! Vector checker for gcm_siv.json: AES-256-GCM-SIV units.

use crate::common::*;
use crate::frames;
use serde_json::Value;
use snitun::crypto::{Cipher, Decryptor, Encryptor, Role};

pub fn check(_file: &Value, case: &Value) -> CaseResult {
    match kind(case)? {
        "decrypt" => crate::gcm::decrypt(Cipher::AesGcmSiv, case),
        "kat" => kat(case),
        "frames" => frames::check(case),
        other => unknown_kind(other),
    }
}

fn kat(case: &Value) -> CaseResult {
    let key: [u8; 32] = hex_array(case, "key")?;
    let nonce: [u8; 12] = hex_array(case, "nonce")?;
    let plain = hex_field(case, "plaintext")?;
    let sealed = hex_field(case, "ciphertext_and_tag")?;
    let wire = hex_field(case, "wire")?;
    let mut encryptor = Encryptor::new(Cipher::AesGcmSiv, Role::Responder, &key, &[0; 16]);
    let mut out = vec![0u8; plain.len() + 28];
    encryptor
        .encrypt_with_siv_nonce(nonce, &plain, &mut out)
        .map_err(|e| e.to_string())?;
    same(
        "ciphertext and tag",
        hex::encode(&out[12..]),
        hex::encode(&sealed),
    )?;
    same("wire", hex::encode(&out), hex::encode(&wire))?;
    let mut decryptor = Decryptor::new(Cipher::AesGcmSiv, Role::Initiator, &key, &[0; 16]);
    let mut unit = wire.clone();
    let opened = decryptor.decrypt(&mut unit).map_err(|e| e.to_string())?;
    same("plaintext", opened, &plain[..])
}
