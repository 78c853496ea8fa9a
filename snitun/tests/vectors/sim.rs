//! A receiver that turns a recorded wire stream into the events the
//! reference records in `receiver_effects` and new_message `expected`.
//!
//! It decodes with our real [`FrameDecoder`] and applies the multiplexer's
//! dispatch rules (PROTOCOL.md §4 "Receiving").

use std::collections::HashSet;

use bytes::BytesMut;
use serde_json::{Value, json};
use snitun::crypto::{Cipher, Decryptor, IV_SIZE, KEY_SIZE, Role};
use snitun::mux::frame::{parse_legacy_new_extra, parse_new_payload};
use snitun::mux::{ChannelId, Flow, FrameDecoder};

/// One receiver-side effect, in the vectors' JSON shape. A pong reply is
/// reported with the plaintext header we would send.
pub fn receive(
    cipher: Cipher,
    key: &[u8; KEY_SIZE],
    iv: &[u8; IV_SIZE],
    receiver: Role,
    protocol_version: u8,
    wire: &[u8],
) -> Vec<Value> {
    let decryptor = Decryptor::new(cipher, receiver, key, iv);
    let mut decoder = FrameDecoder::new(decryptor, protocol_version, 64 << 20);
    let mut buf = BytesMut::from(wire);
    let mut open: HashSet<ChannelId> = HashSet::new();
    let mut events = Vec::new();
    loop {
        let frame = match decoder.decode(&mut buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                events.push(json!({"event": "connection_closed"}));
                break;
            }
        };
        let header = frame.header;
        let id = hex::encode(header.id.0);
        let known = open.contains(&header.id);
        let event = match header.flow {
            Flow::New => {
                let ip = if protocol_version >= 2 {
                    parse_new_payload(&frame.payload)
                } else {
                    Some(parse_legacy_new_extra(&header.extra))
                };
                match ip {
                    Some(ip) => {
                        open.insert(header.id);
                        json!({"event": "channel_opened", "channel_id": id, "ip": ip.to_string()})
                    }
                    None => json!({"event": "ignored"}),
                }
            }
            Flow::Data if known => {
                json!({"event": "data", "channel_id": id, "data": hex::encode(&frame.payload)})
            }
            Flow::Close if known => {
                open.remove(&header.id);
                json!({"event": "channel_closed", "channel_id": id})
            }
            Flow::Pause if known => json!({"event": "remote_paused", "channel_id": id}),
            Flow::Resume if known => json!({"event": "remote_resumed", "channel_id": id}),
            Flow::Ping if header.is_pong() => json!({"event": "pong_received"}),
            Flow::Ping => json!({"event": "reply_sent", "ping_id": id}),
            _ => json!({"event": "ignored"}),
        };
        events.push(event);
    }
    events
}
