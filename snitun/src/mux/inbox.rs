//! The socket -> channel half of a relay, shared by the server's caller
//! relay and the client's endpoint relay (the twin of mux::outbox).
//!
//! Reads land in recycled buffers that go to the channel as they are, no
//! copy (see mux::buffer). This direction does not splice: sending from a
//! pipe cost the link writer a header write and a splice per frame instead
//! of one vectored write per batch, and measured slower (see
//! bench/results/NOTES.md).

use std::io;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::net::TcpStream;

use super::Channel;
use super::buffer::POOL;

/// Why an inbox cannot go on.
#[derive(Debug)]
pub(crate) enum InboxEnd {
    /// The socket reached end of stream (everything before it was queued).
    Eof,
    /// The channel refused data: it is closed or failed (its read side
    /// tells which); what was read and not queued is dropped.
    ChannelRefused(io::Error),
    /// Reading the socket failed.
    ReadFailed(io::Error),
}

/// Bytes read from a socket on their way into a channel.
#[derive(Default)]
pub(crate) struct Inbox {
    /// Read, not yet taken by the channel.
    pending: Bytes,
}

impl Inbox {
    /// An inbox that first sends `first` (bytes the relay read already).
    pub(crate) fn new(first: Bytes) -> Self {
        Inbox { pending: first }
    }

    /// One step `socket` -> `channel`. `Ready(Ok)`: something happened, or
    /// the socket's readiness was stale (poll again to register);
    /// `Pending`: nothing can move now (wakers are registered).
    pub(crate) fn poll_forward(
        &mut self,
        cx: &mut Context<'_>,
        channel: &mut Channel,
        socket: &TcpStream,
    ) -> Poll<Result<(), InboxEnd>> {
        if !self.pending.is_empty() {
            return match channel.poll_send(cx, &mut self.pending) {
                Poll::Ready(Ok(0)) => Poll::Ready(Err(InboxEnd::ChannelRefused(
                    io::ErrorKind::WriteZero.into(),
                ))),
                Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
                Poll::Ready(Err(e)) => {
                    self.pending = Bytes::new();
                    Poll::Ready(Err(InboxEnd::ChannelRefused(e)))
                }
                Poll::Pending => Poll::Pending,
            };
        }
        match socket.poll_read_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(InboxEnd::ReadFailed(e))),
            Poll::Pending => return Poll::Pending,
        }
        match POOL.read_from(socket) {
            Ok(read) if read.is_empty() => Poll::Ready(Err(InboxEnd::Eof)),
            Ok(read) => {
                self.pending = read;
                Poll::Ready(Ok(()))
            }
            // Readiness was stale; polling again registers for the next.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(InboxEnd::ReadFailed(e))),
        }
    }
}
