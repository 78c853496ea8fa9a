//! Vector checker for new_message.json: NEW as the server sends it and the
//! client reads it.

use crate::common::*;
use crate::sim;
use serde_json::{Value, json};
use snitun::crypto::{Cipher, Encryptor, Role};
use snitun::mux::FrameEncoder;
use snitun::mux::frame::FrameHeader;

pub fn check(_file: &Value, case: &Value) -> CaseResult {
    let cipher = Cipher::from_name(text(case, "cipher")?).map_err(|e| e.to_string())?;
    let key: [u8; 32] = hex_array(case, "key")?;
    let iv: [u8; 16] = hex_array(case, "iv")?;
    let receiver_version = uint(case, "receiver_protocol_version")? as u8;
    let wire = hex_field(case, "wire")?;

    // Sending: untampered messages from deterministic ciphers are
    // reproduced byte for byte by our encoder.
    if case["tampered"].is_null() && cipher != Cipher::AesGcmSiv {
        let header_plain: [u8; 32] = hex_array(case, "header_plain")?;
        let mut encoder = FrameEncoder::new(Encryptor::new(cipher, Role::Responder, &key, &iv));
        let mut ours = bytes::BytesMut::new();
        let header = FrameHeader::decode(&header_plain);
        ours.extend_from_slice(encoder.header(&header).map_err(|e| e.to_string())?.as_ref());
        if case["data_plain"].is_string() {
            encoder
                .payload_unit(&hex_field(case, "data_plain")?, &mut ours)
                .map_err(|e| e.to_string())?;
        }
        same("sent wire", hex::encode(&ours), hex::encode(&wire))?;
    }

    let events = sim::receive(cipher, &key, &iv, Role::Initiator, receiver_version, &wire);
    let first = events
        .first()
        .cloned()
        .unwrap_or(json!({"event": "nothing"}));
    let expected = &case["expected"];
    match expected_result(case)? {
        "channel_opened" => {
            let reference = json!({
                "event": "channel_opened",
                "channel_id": expected["channel_id"],
                "ip": expected["ip"],
            });
            if first["event"] != "channel_opened" && is_quirk(case) {
                return Ok(());
            }
            same("receiver effect", first, reference)
        }
        "ignored" => same("receiver effect", first, json!({"event": "ignored"})),
        "connection_closed" => same(
            "receiver effect",
            first,
            json!({"event": "connection_closed"}),
        ),
        other => Err(format!("unknown expected result {other:?}")),
    }
}
