//! The channel -> socket half of a relay, shared by the server's caller
//! relay and the client's endpoint relay.
//!
//! Chunks are taken from the channel as they arrived (no copy) and several
//! go out with one vectored write. What the outbox holds is bounded, so it
//! stays inside the channel's flow control: a socket that does not take
//! bytes stops the outbox taking chunks, the channel's incoming queue fills
//! and PAUSE goes to the remote.
//!
//! Payloads the link reader left in the channel's pipe (see mux::splice)
//! move pipe -> socket, in their turn among the chunks.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::Channel;
use super::channel::Chunk;
use super::splice::Pipe;

/// Most chunks written with one vectored write.
const MAX_WRITE_CHUNKS: usize = 16;
/// About the most bytes held for one vectored write.
const MAX_WRITE_BYTES: usize = 256 * 1024;

/// Why an outbox cannot go on.
#[derive(Debug)]
pub(crate) enum OutboxEnd {
    /// The channel ended cleanly and everything before the end was written.
    ChannelClosed,
    /// The channel ended abnormally (after everything before it was
    /// written).
    ChannelFailed(io::Error),
    /// The socket refused a write.
    WriteFailed(io::Error),
}

/// Chunks received from a channel, not yet written to the socket.
#[derive(Default)]
pub(crate) struct Outbox {
    chunks: VecDeque<Bytes>,
    bytes: usize,
    /// A piped chunk after `chunks`: the bytes of it still in the pipe.
    piped: Option<(Arc<Pipe>, usize)>,
}

impl Outbox {
    /// One step channel -> `socket`: take what the channel has ready
    /// (without waiting) and write it. `Ready(Ok)`: something moved;
    /// `Pending`: nothing can move now (wakers are registered).
    pub(crate) fn poll_forward(
        &mut self,
        cx: &mut Context<'_>,
        channel: &mut Channel,
        socket: &mut TcpStream,
    ) -> Poll<Result<(), OutboxEnd>> {
        let mut gathered = false;
        while self.piped.is_none()
            && self.chunks.len() < MAX_WRITE_CHUNKS
            && self.bytes < MAX_WRITE_BYTES
        {
            match channel.poll_recv_chunk(cx) {
                Poll::Ready(Ok(Some(Chunk::Bytes(chunk)))) => {
                    self.bytes += chunk.len();
                    self.chunks.push_back(chunk);
                    gathered = true;
                }
                Poll::Ready(Ok(Some(Chunk::Piped(pipe, len)))) => {
                    self.piped = Some((pipe, len));
                    gathered = true;
                }
                // The end is acted on once what came before it is written:
                // the channel reports it again.
                Poll::Ready(Ok(None)) if self.chunks.is_empty() => {
                    return Poll::Ready(Err(OutboxEnd::ChannelClosed));
                }
                Poll::Ready(Err(e)) if self.chunks.is_empty() => {
                    return Poll::Ready(Err(OutboxEnd::ChannelFailed(e)));
                }
                Poll::Ready(_) | Poll::Pending => break,
            }
        }
        if self.chunks.is_empty() {
            return match self.piped.take() {
                Some((pipe, left)) => self.poll_splice(cx, socket, pipe, left, gathered),
                None => Poll::Pending,
            };
        }
        let mut slices = [IoSlice::new(&[]); MAX_WRITE_CHUNKS];
        let mut count = 0;
        for (slot, chunk) in slices.iter_mut().zip(self.chunks.iter()) {
            *slot = IoSlice::new(chunk);
            count += 1;
        }
        let slices = slices.get(..count).unwrap_or_default();
        match Pin::new(socket).poll_write_vectored(cx, slices) {
            Poll::Ready(Ok(0)) => {
                Poll::Ready(Err(OutboxEnd::WriteFailed(io::ErrorKind::WriteZero.into())))
            }
            Poll::Ready(Ok(n)) => {
                self.consume(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(OutboxEnd::WriteFailed(e))),
            Poll::Pending if gathered => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Move the piped chunk's `left` bytes on from the pipe.
    fn poll_splice(
        &mut self,
        cx: &mut Context<'_>,
        socket: &TcpStream,
        pipe: Arc<Pipe>,
        left: usize,
        gathered: bool,
    ) -> Poll<Result<(), OutboxEnd>> {
        match socket.poll_write_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(OutboxEnd::WriteFailed(e))),
            Poll::Pending => {
                self.piped = Some((pipe, left));
                return if gathered {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
        }
        match pipe.drain_to(socket, left) {
            Ok(0) => Poll::Ready(Err(OutboxEnd::ChannelFailed(io::Error::other(
                "a pipe holds less than was queued",
            )))),
            Ok(n) => {
                if n < left {
                    self.piped = Some((pipe, left - n));
                }
                Poll::Ready(Ok(()))
            }
            // Full: the readiness is cleared; polling again registers.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.piped = Some((pipe, left));
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(OutboxEnd::WriteFailed(e))),
        }
    }

    /// Drop the first `n` written bytes.
    fn consume(&mut self, mut n: usize) {
        self.bytes = self.bytes.saturating_sub(n);
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_splits_chunks_at_the_written_byte() {
        let mut outbox = Outbox::default();
        for chunk in [&b"abc"[..], b"defg", b"h"] {
            outbox.bytes += chunk.len();
            outbox.chunks.push_back(Bytes::from_static(chunk));
        }
        outbox.consume(5);
        assert_eq!(outbox.bytes, 3);
        assert_eq!(outbox.chunks, [&b"fg"[..], b"h"]);
        outbox.consume(3);
        assert!(outbox.chunks.is_empty());
        assert_eq!(outbox.bytes, 0);
    }
}
