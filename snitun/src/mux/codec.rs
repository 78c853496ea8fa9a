//! Frames on the wire: an encrypted header unit, then the payload (raw for
//! DATA, its own encrypted unit for a protocol >= 2 NEW).
//!
//! Both halves are sans-io: the decoder works on whatever bytes have arrived
//! in a `BytesMut` and never reserves memory from the untrusted size field;
//! the encoder produces the header unit on the stack so the writer can send
//! it and the payload with one vectored write.

use bytes::{Bytes, BytesMut};

use super::frame::{ENCRYPTED_NEW_MIN_VERSION, Flow, FrameHeader, HEADER_SIZE};
use crate::crypto::{AEAD_OVERHEAD, Decryptor, Encryptor, NONCE_SIZE};
use crate::error::{Error, Result};

/// Longest header unit on the wire (AEAD).
pub const MAX_HEADER_UNIT: usize = HEADER_SIZE + AEAD_OVERHEAD;

/// One received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The decrypted header.
    pub header: FrameHeader,
    /// The payload: raw bytes, or the decrypted plaintext of a protocol >= 2
    /// NEW.
    pub payload: Bytes,
}

/// Turns the byte stream from the peer into frames.
#[derive(Debug)]
pub struct FrameDecoder {
    decryptor: Decryptor,
    protocol_version: u8,
    max_frame: usize,
    /// A header already decrypted whose payload has not fully arrived.
    pending: Option<FrameHeader>,
}

impl FrameDecoder {
    /// A decoder for a link of `protocol_version` that refuses headers
    /// announcing more than `max_frame` payload bytes.
    pub fn new(decryptor: Decryptor, protocol_version: u8, max_frame: usize) -> Self {
        FrameDecoder {
            decryptor,
            protocol_version,
            max_frame,
            pending: None,
        }
    }

    /// How many more bytes `buf` needs before [`decode`](Self::decode) can
    /// make progress; a hint for sizing reads, never larger than one frame.
    pub fn wanted(&self, buf: &BytesMut) -> usize {
        let need = match &self.pending {
            None => self.header_unit_len(),
            Some(header) => self.payload_wire_len(header),
        };
        need.saturating_sub(buf.len())
    }

    /// The wire length of the payload still to come when the decoder holds
    /// a header whose payload is raw (DATA, not an encrypted NEW address):
    /// the caller may then read that payload into memory of its own and
    /// hand it over with [`take_raw_payload`](Self::take_raw_payload),
    /// instead of growing the read buffer for it.
    pub fn pending_raw_payload(&self) -> Option<usize> {
        let header = self.pending.as_ref()?;
        (!self.payload_is_encrypted(header)).then_some(header.size as usize)
    }

    /// The header of the pending raw-payload frame (see
    /// [`pending_raw_payload`](Self::pending_raw_payload)).
    pub fn pending_raw_header(&self) -> Option<&FrameHeader> {
        self.pending
            .as_ref()
            .filter(|header| !self.payload_is_encrypted(header))
    }

    /// Take the pending raw-payload frame's header: the caller consumes its
    /// `size` payload bytes from the stream itself (moves them elsewhere)
    /// and the decoder expects the next header after them.
    pub fn skip_raw_payload(&mut self) -> Option<FrameHeader> {
        self.pending_raw_header()?;
        self.pending.take()
    }

    /// Complete the pending raw-payload frame with `payload`, which must be
    /// exactly [`pending_raw_payload`](Self::pending_raw_payload) bytes
    /// long; `None` (and nothing changes) otherwise.
    pub fn take_raw_payload(&mut self, payload: Bytes) -> Option<Frame> {
        if self.pending_raw_payload() != Some(payload.len()) {
            return None;
        }
        let header = self.pending.take()?;
        Some(Frame { header, payload })
    }

    fn header_unit_len(&self) -> usize {
        HEADER_SIZE + self.decryptor.overhead()
    }

    fn payload_is_encrypted(&self, header: &FrameHeader) -> bool {
        header.flow == Flow::New
            && header.size > 0
            && self.protocol_version >= ENCRYPTED_NEW_MIN_VERSION
    }

    fn payload_wire_len(&self, header: &FrameHeader) -> usize {
        let size = header.size as usize;
        if self.payload_is_encrypted(header) {
            size + self.decryptor.overhead()
        } else {
            size
        }
    }

    /// Take the next whole frame off the front of `buf`, or `Ok(None)` when
    /// more bytes are needed. An error means the link can no longer be
    /// trusted and must be closed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>> {
        let header = match self.pending.take() {
            Some(header) => header,
            None => {
                let unit_len = self.header_unit_len();
                if buf.len() < unit_len {
                    return Ok(None);
                }
                let mut unit = buf.split_to(unit_len);
                let plain = self.decryptor.decrypt(&mut unit)?;
                let plain: &[u8; HEADER_SIZE] = plain
                    .try_into()
                    .map_err(|_| Error::InvalidUnitLength(plain.len()))?;
                let header = FrameHeader::decode(plain);
                if header.size as usize > self.max_frame {
                    return Err(Error::FrameTooLarge {
                        size: header.size,
                        limit: self.max_frame,
                    });
                }
                header
            }
        };
        let wire_len = self.payload_wire_len(&header);
        if buf.len() < wire_len {
            self.pending = Some(header);
            return Ok(None);
        }
        let mut payload = buf.split_to(wire_len);
        let payload = if self.payload_is_encrypted(&header) {
            let plain_len = self.decryptor.decrypt(&mut payload)?.len();
            // Decryption is in place: the AEAD plaintext sits after the nonce.
            let offset = if self.decryptor.overhead() > 0 {
                NONCE_SIZE
            } else {
                0
            };
            let mut plain = payload.split_off(offset);
            plain.truncate(plain_len);
            plain.freeze()
        } else {
            payload.freeze()
        };
        Ok(Some(Frame { header, payload }))
    }
}

/// An encrypted header unit, ready to write.
#[derive(Clone, Copy)]
pub struct HeaderUnit {
    buf: [u8; MAX_HEADER_UNIT],
    len: usize,
}

impl AsRef<[u8]> for HeaderUnit {
    fn as_ref(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

impl std::fmt::Debug for HeaderUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeaderUnit({} bytes)", self.len)
    }
}

/// Encrypts outgoing frames.
#[derive(Debug)]
pub struct FrameEncoder {
    encryptor: Encryptor,
}

impl FrameEncoder {
    /// An encoder that continues `encryptor`'s state.
    pub fn new(encryptor: Encryptor) -> Self {
        FrameEncoder { encryptor }
    }

    /// Bytes the cipher adds to every unit.
    pub fn overhead(&self) -> usize {
        self.encryptor.overhead()
    }

    /// Encrypt a header as one unit.
    pub fn header(&mut self, header: &FrameHeader) -> Result<HeaderUnit> {
        let mut unit = HeaderUnit {
            buf: [0; MAX_HEADER_UNIT],
            len: 0,
        };
        unit.len = self.encryptor.encrypt(&header.encode(), &mut unit.buf)?;
        Ok(unit)
    }

    /// Encrypt a payload as its own unit (the protocol >= 2 NEW address) and
    /// append it to `out`.
    pub fn payload_unit(&mut self, plain: &[u8], out: &mut BytesMut) -> Result<()> {
        let start = out.len();
        out.resize(start + plain.len() + self.overhead(), 0);
        let (_, unit) = out.split_at_mut(start);
        let written = self.encryptor.encrypt(plain, unit)?;
        out.truncate(start + written);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Cipher, CipherState, Role};
    use crate::mux::frame::{ChannelId, new_payload, parse_new_payload};
    use std::net::IpAddr;

    fn endpoints(cipher: Cipher, version: u8) -> (FrameEncoder, FrameDecoder) {
        let key = [3u8; 32];
        let iv = [4u8; 16];
        let sender = CipherState::new(cipher, Role::Responder, &key, &iv);
        let receiver = CipherState::new(cipher, Role::Initiator, &key, &iv);
        (
            FrameEncoder::new(sender.encryptor),
            FrameDecoder::new(receiver.decryptor, version, 1 << 20),
        )
    }

    #[test]
    fn frames_round_trip_byte_by_byte() {
        for cipher in Cipher::ALL {
            for version in 0..=2u8 {
                let (mut enc, mut dec) = endpoints(cipher, version);
                let ip: IpAddr = "2001:db8::7".parse().unwrap();
                let id = ChannelId::random();
                let mut wire = BytesMut::new();
                let (addr, len) = new_payload(ip);
                let new_header = FrameHeader::new(id, Flow::New, len as u32, &[]);
                wire.extend_from_slice(enc.header(&new_header).unwrap().as_ref());
                if version >= 2 {
                    enc.payload_unit(&addr[..len], &mut wire).unwrap();
                } else {
                    wire.extend_from_slice(&addr[..len]);
                }
                let data_header = FrameHeader::new(id, Flow::Data, 5, &[]);
                wire.extend_from_slice(enc.header(&data_header).unwrap().as_ref());
                wire.extend_from_slice(b"hello");
                let close = FrameHeader::new(id, Flow::Close, 0, &[]);
                wire.extend_from_slice(enc.header(&close).unwrap().as_ref());

                // Feed one byte at a time: the decoder must never lose its place.
                let mut buf = BytesMut::new();
                let mut frames = Vec::new();
                for byte in wire.iter() {
                    buf.extend_from_slice(&[*byte]);
                    while let Some(frame) = dec.decode(&mut buf).unwrap() {
                        frames.push(frame);
                    }
                }
                assert_eq!(frames.len(), 3, "{cipher} v{version}");
                assert_eq!(frames[0].header, new_header);
                assert_eq!(parse_new_payload(&frames[0].payload), Some(ip));
                assert_eq!(frames[1].payload.as_ref(), b"hello");
                assert_eq!(frames[2].header, close);
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn oversize_frame_is_refused_before_its_payload_arrives() {
        let (mut enc, mut dec) = endpoints(Cipher::AesGcm, 2);
        let header = FrameHeader::new(ChannelId::random(), Flow::Data, u32::MAX, &[]);
        let mut buf = BytesMut::from(enc.header(&header).unwrap().as_ref());
        match dec.decode(&mut buf) {
            Err(Error::FrameTooLarge { size, limit }) => {
                assert_eq!(size, u32::MAX);
                assert_eq!(limit, 1 << 20);
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn raw_payload_can_be_read_separately() {
        let (mut enc, mut dec) = endpoints(Cipher::AesGcm, 2);
        let id = ChannelId::random();
        let header = FrameHeader::new(id, Flow::Data, 10, &[]);
        let mut buf = BytesMut::from(enc.header(&header).unwrap().as_ref());
        buf.extend_from_slice(b"0123");
        assert!(dec.decode(&mut buf).unwrap().is_none());
        assert_eq!(dec.pending_raw_payload(), Some(10));
        assert!(dec.take_raw_payload(Bytes::from_static(b"short")).is_none());
        let mut payload = buf.split().to_vec();
        payload.extend_from_slice(b"456789");
        let frame = dec.take_raw_payload(Bytes::from(payload)).unwrap();
        assert_eq!(frame.header, header);
        assert_eq!(&frame.payload[..], b"0123456789");
        assert_eq!(dec.pending_raw_payload(), None);
        // The stream goes on where the payload ended.
        let close = FrameHeader::new(id, Flow::Close, 0, &[]);
        let mut buf = BytesMut::from(enc.header(&close).unwrap().as_ref());
        assert_eq!(dec.decode(&mut buf).unwrap().unwrap().header, close);
    }

    #[test]
    fn wanted_counts_down() {
        let (mut enc, dec) = endpoints(Cipher::AesCbc, 2);
        let mut buf = BytesMut::new();
        assert_eq!(dec.wanted(&buf), 32);
        let header = FrameHeader::new(ChannelId::random(), Flow::Data, 3, &[]);
        buf.extend_from_slice(&enc.header(&header).unwrap().as_ref()[..10]);
        assert_eq!(dec.wanted(&buf), 22);
    }
}
