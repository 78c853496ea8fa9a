//! The multiplexer reader fed arbitrary frames after a handshake, for every
//! cipher, protocol version and role: frames are well encrypted (so the
//! fuzzer reaches the frame logic) with arbitrary headers and payloads, with
//! optional raw garbage in between. The application side accepts channels,
//! reads them and writes back. No panic and no hang: the link ends at EOF.
#![no_main]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use snitun::mux::frame::ChannelId;
use snitun::mux::{Flow, FrameEncoder, FrameHeader, MuxConfig};
use snitun::{Cipher, CipherState, Multiplexer, Role};
use snitun_fuzz::{block_on, take_byte};
use tokio::io::AsyncWriteExt;

const CIPHERS: [Cipher; 3] = [Cipher::AesCbc, Cipher::AesGcm, Cipher::AesGcmSiv];
const KEY: [u8; 32] = [0x11; 32];
const IV: [u8; 16] = [0x22; 16];

/// Build the byte stream the remote sends, from fuzz operations.
fn wire(mut data: &[u8], encoder: &mut FrameEncoder, version: u8) -> BytesMut {
    let ids = [
        ChannelId([1; 16]),
        ChannelId([2; 16]),
        ChannelId([3; 16]),
        ChannelId([0; 16]),
    ];
    let mut out = BytesMut::new();
    while let Some((&op, rest)) = data.split_first() {
        data = rest;
        match op % 4 {
            // Raw bytes, unencrypted: the decryptor must refuse them.
            0 => {
                let (len, rest) = take_byte(data);
                let n = usize::from(len % 64).min(rest.len());
                let (garbage, rest) = rest.split_at(n);
                out.extend_from_slice(garbage);
                data = rest;
            }
            // A frame: id, flow, size (u16), extra (11), payload.
            _ => {
                let (id, rest) = take_byte(data);
                let (flow, rest) = take_byte(rest);
                let (size_hi, rest) = take_byte(rest);
                let (size_lo, rest) = take_byte(rest);
                let n = (usize::from(size_hi) << 8 | usize::from(size_lo)).min(rest.len());
                let (payload, rest) = rest.split_at(n);
                let extra_len = rest.len().min(11);
                let (extra, rest) = rest.split_at(extra_len);
                data = rest;
                let flow = Flow::from_byte(flow);
                let id = ids[usize::from(id) % ids.len()];
                // A NEW's address is its own encrypted unit from protocol 2.
                let encrypted_payload = matches!(flow, Flow::New) && version >= 2;
                let announced = if encrypted_payload {
                    payload.len() + encoder.overhead()
                } else {
                    payload.len()
                };
                let header = FrameHeader::new(id, flow, announced as u32, extra);
                let Ok(unit) = encoder.header(&header) else {
                    return out;
                };
                out.extend_from_slice(unit.as_ref());
                if encrypted_payload {
                    if encoder.payload_unit(payload, &mut out).is_err() {
                        return out;
                    }
                } else {
                    out.extend_from_slice(payload);
                }
            }
        }
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let (setup, data) = take_byte(input);
    let cipher = CIPHERS[usize::from(setup) % 3];
    let version = (setup / 3) % 3;
    let role = if (setup / 9) % 2 == 0 {
        Role::Initiator
    } else {
        Role::Responder
    };
    let mut encoder = FrameEncoder::new(CipherState::new(cipher, role.peer(), &KEY, &IV).encryptor);
    let stream = wire(data, &mut encoder, version);

    block_on(async move {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let config = MuxConfig {
            incoming_high_watermark: 64 * 1024,
            incoming_low_watermark: 16 * 1024,
            incoming_max_bytes: 256 * 1024,
            incoming_max_bytes_v0: 256 * 1024,
            ..MuxConfig::default()
        };
        let mux = Multiplexer::new(
            ours,
            CipherState::new(cipher, role, &KEY, &IV),
            version,
            role,
            config,
        );
        let remote = tokio::spawn(async move {
            let _ = theirs.write_all(&stream).await;
            let _ = theirs.shutdown().await;
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut theirs, &mut sink).await;
        });
        let serve = async {
            while let Some(mut channel) = mux.accept().await {
                tokio::spawn(async move {
                    while let Ok(Some(chunk)) = channel.recv().await {
                        if channel.send(Bytes::from(chunk.to_vec())).await.is_err() {
                            break;
                        }
                    }
                });
            }
        };
        // The paused clock makes this instant; a link that outlives it hangs.
        let ended = tokio::time::timeout(Duration::from_secs(3600), async {
            tokio::join!(serve, mux.closed())
        })
        .await;
        assert!(ended.is_ok(), "the link did not end after EOF");
        let _ = remote.await;
    });
});
