//! The `frames` case kind shared by cbc_stream.json, gcm.json and
//! gcm_siv.json: whole messages as the reference writer sent them, and the
//! events a fresh receiver of the other role produces.

use crate::common::*;
use crate::sim;
use serde_json::Value;
use snitun::crypto::{Cipher, Decryptor, Encryptor, Role};
use snitun::mux::FrameEncoder;
use snitun::mux::frame::FrameHeader;

pub fn check(case: &Value) -> CaseResult {
    let cipher = Cipher::from_name(text(case, "cipher")?).map_err(|e| e.to_string())?;
    let key: [u8; 32] = hex_array(case, "key")?;
    let iv: [u8; 16] = if cipher == Cipher::AesCbc {
        hex_array(case, "iv")?
    } else {
        [0; 16]
    };
    let version = uint(case, "protocol_version")? as u8;
    let sender = match text(case, "sender")? {
        "responder" => Role::Responder,
        "initiator" => Role::Initiator,
        other => return Err(format!("unknown sender {other:?}")),
    };
    let frames = case["frames"].as_array().ok_or("no frames")?;
    let wire = hex_field(case, "wire")?;

    // Sending: for deterministic ciphers our encoder must produce the
    // reference's bytes from the same plaintexts.
    if cipher != Cipher::AesGcmSiv {
        let mut encoder = FrameEncoder::new(Encryptor::new(cipher, sender, &key, &iv));
        let mut ours = bytes::BytesMut::new();
        for frame in frames {
            let plain: [u8; 32] = hex_array(frame, "header_plain")?;
            let header = FrameHeader::decode(&plain);
            ours.extend_from_slice(encoder.header(&header).map_err(|e| e.to_string())?.as_ref());
            match frame.get("data_plain").and_then(Value::as_str) {
                Some(_) => {
                    let data = hex_field(frame, "data_plain")?;
                    encoder
                        .payload_unit(&data, &mut ours)
                        .map_err(|e| e.to_string())?;
                }
                None => ours.extend_from_slice(&hex_field(frame, "data")?),
            }
        }
        same("sent wire", hex::encode(&ours), hex::encode(&wire))?;
    }

    // Receiving.
    let receiver = sender.peer();
    let ours = sim::receive(cipher, &key, &iv, receiver, version, &wire);
    let expected = case["receiver_effects"]
        .as_array()
        .ok_or("no receiver_effects")?;
    same("number of receiver effects", ours.len(), expected.len())?;
    for (index, (our, reference)) in ours.iter().zip(expected).enumerate() {
        if reference["event"] == "reply_sent" {
            check_reply(cipher, &key, &iv, receiver, our, reference)
                .map_err(|e| format!("effect {index}: {e}"))?;
        } else {
            same(&format!("effect {index}"), our, reference)?;
        }
    }
    Ok(())
}

/// The pong: same id as the ping, `pong` in extra, and (for deterministic
/// ciphers) our receiver's encryptor turns the reference's plaintext into the
/// reference's bytes.
fn check_reply(
    cipher: Cipher,
    key: &[u8; 32],
    iv: &[u8; 16],
    receiver: Role,
    ours: &Value,
    reference: &Value,
) -> CaseResult {
    same("event", ours["event"].as_str(), Some("reply_sent"))?;
    let plain: [u8; 32] = hex_array(reference, "plain")?;
    let header = FrameHeader::decode(&plain);
    same(
        "pong id",
        Some(hex::encode(header.id.0)),
        ours["ping_id"].as_str().map(String::from),
    )?;
    if !header.is_pong() {
        return Err("reference reply is not a pong".into());
    }
    let wire = hex_field(reference, "wire")?;
    if cipher == Cipher::AesGcmSiv {
        let mut unit = wire.clone();
        let mut decryptor = Decryptor::new(cipher, receiver.peer(), key, iv);
        let opened = decryptor.decrypt(&mut unit).map_err(|e| e.to_string())?;
        same("pong plaintext", opened, &plain[..])
    } else {
        let mut encryptor = Encryptor::new(cipher, receiver, key, iv);
        let mut out = vec![0u8; 32 + cipher.overhead()];
        encryptor
            .encrypt(&plain, &mut out)
            .map_err(|e| e.to_string())?;
        same("pong wire", hex::encode(out), hex::encode(wire))
    }
}
