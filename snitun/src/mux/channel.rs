//! One caller's stream inside a link, as `AsyncRead + AsyncWrite`.
//!
//! Back-pressure is the traits' own: `poll_write` is pending while the
//! channel's outgoing queue is over high water or the remote has sent PAUSE,
//! and bytes that arrive faster than `poll_read` takes them wait in the
//! channel's incoming queue, which sends PAUSE to the remote at high water
//! and RESUME once drained. The protocol has no half-close: shutting down
//! (or dropping) a channel sends CLOSE, after any data already queued.

use std::collections::VecDeque;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// How often [`Channel::close_after_delivery`] looks at the queues.
const SETTLE_POLL: Duration = Duration::from_millis(5);
/// How long it leaves a trailing PAUSE to arrive after the pong.
const SETTLE_GRACE: Duration = Duration::from_millis(25);
/// A channel that has sent less than this cannot have been paused by its
/// peer, whose pause watermark is 2 MiB by default (the reference's and
/// ours; configurable, but nobody sets it this low).
const NEVER_PAUSED_BELOW: usize = 64 * 1024;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::frame::{ChannelId, FLOW_CONTROL_MIN_VERSION, Flow, HEADER_SIZE};
use super::multiplexer::Link;
use super::queue::{OutFrame, PushError};
use super::splice::Pipe;

/// How a channel's incoming side ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelEnd {
    /// CLOSE received, or closed locally: EOF after the queued data.
    Closed,
    /// The link died or the channel was torn down abnormally (queue
    /// overflow, decrypt failure, timeout): reads fail, so applications do
    /// not mistake a truncated stream for a complete one.
    Aborted(String),
}

/// A piece of received payload, in memory or in the channel's pipe.
enum Held {
    Bytes(Bytes),
    /// This many bytes, next in line in `Incoming::pipe`.
    Piped(usize),
}

impl Held {
    fn len(&self) -> usize {
        match self {
            Held::Bytes(bytes) => bytes.len(),
            Held::Piped(len) => *len,
        }
    }
}

/// A piece of received payload as a relay takes it.
pub(crate) enum Chunk {
    Bytes(Bytes),
    /// This many bytes, next in line in the pipe: a relay to a socket moves
    /// them with [`Pipe::drain_to`].
    Piped(Arc<Pipe>, usize),
}

#[derive(Default)]
struct Incoming {
    queue: VecDeque<Held>,
    /// Accounted bytes: 32 per queued message plus its unread payload.
    bytes: usize,
    /// We sent PAUSE and owe the remote a RESUME.
    paused: bool,
    end: Option<ChannelEnd>,
    waker: Option<Waker>,
    /// The consumer is a relay to a socket: the link reader may leave
    /// payloads in `pipe` (see mux::splice).
    splice: bool,
    pipe: Option<Arc<Pipe>>,
}

/// State shared between a [`Channel`] handle and its link's reader task.
pub(crate) struct ChannelShared {
    pub id: ChannelId,
    pub peer_ip: IpAddr,
    incoming: Mutex<Incoming>,
}

/// What the reader task did with a received DATA.
pub(crate) enum Delivery {
    Queued,
    /// Over the high watermark: send PAUSE.
    QueuedPause,
    /// At the cap: the channel is unhealthy and must be closed.
    Overflow,
    /// The channel already ended; drop the data.
    Ended,
}

impl ChannelShared {
    pub fn new(id: ChannelId, peer_ip: IpAddr) -> Arc<Self> {
        Arc::new(ChannelShared {
            id,
            peer_ip,
            incoming: Mutex::new(Incoming::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Incoming> {
        self.incoming.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue received payload; `high`/`cap` in accounted bytes. `can_pause`
    /// is false on protocol 0.
    pub fn deliver(&self, data: Bytes, high: usize, cap: usize, can_pause: bool) -> Delivery {
        self.hold(Held::Bytes(data), high, cap, can_pause)
    }

    /// Queue `len` received bytes that the reader moved into the pipe
    /// [`splice_pipe`](Self::splice_pipe) gave it; as
    /// [`deliver`](Self::deliver).
    pub fn deliver_piped(&self, len: usize, high: usize, cap: usize, can_pause: bool) -> Delivery {
        self.hold(Held::Piped(len), high, cap, can_pause)
    }

    /// The pipe for a payload of `len` bytes, when this channel's consumer
    /// takes piped payloads and the pipe has room (created on first use).
    pub fn splice_pipe(&self, len: usize) -> Option<Arc<Pipe>> {
        let mut incoming = self.lock();
        if !incoming.splice || incoming.end.is_some() {
            return None;
        }
        let pipe = match &incoming.pipe {
            Some(pipe) => pipe.clone(),
            None => match Pipe::new() {
                Ok(pipe) => incoming.pipe.insert(Arc::new(pipe)).clone(),
                Err(e) => {
                    // Out of descriptors, most likely: copy instead.
                    tracing::debug!(id = %self.id, error = %e, "no pipe for a channel");
                    incoming.splice = false;
                    return None;
                }
            },
        };
        pipe.has_room(len).then_some(pipe)
    }

    fn hold(&self, held: Held, high: usize, cap: usize, can_pause: bool) -> Delivery {
        let mut incoming = self.lock();
        if incoming.end.is_some() {
            return Delivery::Ended;
        }
        if incoming.bytes >= cap {
            return Delivery::Overflow;
        }
        if held.len() == 0 {
            return Delivery::Queued;
        }
        let piped = matches!(held, Held::Piped(_));
        incoming.bytes += HEADER_SIZE + held.len();
        incoming.queue.push_back(held);
        // A pipe nearly full would make the next payloads go through memory
        // again: pause the remote early instead (resumed at the usual low
        // watermark, by which the pipe has room again).
        let pipe_full = piped
            && incoming
                .pipe
                .as_ref()
                .is_some_and(|pipe| pipe.nearly_full());
        let pause = can_pause && !incoming.paused && (incoming.bytes >= high || pipe_full);
        if pause {
            incoming.paused = true;
        }
        if let Some(waker) = incoming.waker.take() {
            waker.wake();
        }
        if pause {
            Delivery::QueuedPause
        } else {
            Delivery::Queued
        }
    }

    /// End the incoming side; queued data stays readable unless aborted.
    pub fn end(&self, end: ChannelEnd) {
        let mut incoming = self.lock();
        if incoming.end.is_none() {
            if matches!(end, ChannelEnd::Aborted(_)) {
                incoming.queue.clear();
                incoming.bytes = 0;
            }
            incoming.end = Some(end);
        }
        if let Some(waker) = incoming.waker.take() {
            waker.wake();
        }
    }

    /// Bytes waiting in the incoming queue (accounted as the reference
    /// does).
    pub fn incoming_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Whether we have told the remote to pause and not yet to resume.
    pub fn pause_sent(&self) -> bool {
        self.lock().paused
    }
}

/// One channel of a link: a caller's byte stream.
///
/// Dropping the handle closes the channel (CLOSE is sent after any queued
/// data).
pub struct Channel {
    shared: Arc<ChannelShared>,
    link: Arc<Link>,
    /// Part of a received chunk not yet handed to the reader.
    partial: Option<Bytes>,
    closed: bool,
}

impl Channel {
    pub(crate) fn new(shared: Arc<ChannelShared>, link: Arc<Link>) -> Self {
        Channel {
            shared,
            link,
            partial: None,
            closed: false,
        }
    }

    /// The channel's id.
    pub fn id(&self) -> ChannelId {
        self.shared.id
    }

    /// The caller's address as carried by NEW (0.0.0.0 for an IPv6 caller
    /// on protocol < 2).
    pub fn peer_ip(&self) -> IpAddr {
        self.shared.peer_ip
    }

    /// The link's protocol version.
    pub fn protocol_version(&self) -> u8 {
        self.link.protocol_version()
    }

    /// Receive the next chunk of data without copying it; `None` at the
    /// end of the stream. An abnormal end is an error.
    pub async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Poll for the next chunk; see [`recv`](Self::recv).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        match self.poll_recv_chunk(cx) {
            Poll::Ready(Ok(Some(Chunk::Bytes(bytes)))) => Poll::Ready(Ok(Some(bytes))),
            Poll::Ready(Ok(Some(Chunk::Piped(pipe, len)))) => {
                Poll::Ready(copy_out(&pipe, len).map(Some))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(Ok(None)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Let the link reader leave this channel's payloads in a pipe: the
    /// caller takes them with [`poll_recv_chunk`](Self::poll_recv_chunk)
    /// and moves them to a socket. A no-op where the link cannot splice.
    pub(crate) fn enable_splice(&self) {
        if self.link.splices() {
            self.shared.lock().splice = true;
        }
    }

    /// Poll for the next chunk, leaving piped payloads in their pipe; see
    /// [`enable_splice`](Self::enable_splice).
    pub(crate) fn poll_recv_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Option<Chunk>>> {
        if let Some(partial) = self.partial.take() {
            return Poll::Ready(Ok(Some(Chunk::Bytes(partial))));
        }
        let mut incoming = self.shared.lock();
        if let Some(held) = incoming.queue.pop_front() {
            incoming.bytes = incoming.bytes.saturating_sub(HEADER_SIZE + held.len());
            let resume = self.resume_due(&mut incoming);
            let chunk = match held {
                Held::Bytes(bytes) => Chunk::Bytes(bytes),
                Held::Piped(len) => match &incoming.pipe {
                    Some(pipe) => Chunk::Piped(pipe.clone(), len),
                    None => {
                        return Poll::Ready(Err(io::Error::other("piped data without a pipe")));
                    }
                },
            };
            drop(incoming);
            if resume {
                self.send_resume();
            }
            return Poll::Ready(Ok(Some(chunk)));
        }
        match &incoming.end {
            Some(ChannelEnd::Closed) => Poll::Ready(Ok(None)),
            Some(ChannelEnd::Aborted(why)) => Poll::Ready(Err(aborted(why))),
            None => {
                incoming.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn resume_due(&self, incoming: &mut Incoming) -> bool {
        if incoming.paused && incoming.bytes <= self.link.config().incoming_low_watermark {
            incoming.paused = false;
            return incoming.end.is_none();
        }
        false
    }

    fn send_resume(&self) {
        let frame = OutFrame::bare(self.shared.id, Flow::Resume, &[]);
        self.link.push_control(frame);
    }

    /// Send `data` without copying it, waiting while the channel is over
    /// water or paused by the remote. Large buffers are split into frames.
    pub async fn send(&mut self, mut data: Bytes) -> io::Result<()> {
        while !data.is_empty() {
            std::future::poll_fn(|cx| self.poll_send(cx, &mut data)).await?;
        }
        Ok(())
    }

    /// Queue the front of `data` (up to one frame) without copying it:
    /// the queued part is split off `data`, whose rest stays for the next
    /// call. Pending while the channel is over water or paused by the
    /// remote, like [`poll_write`](AsyncWrite::poll_write); `Ok(0)` only
    /// for empty `data`.
    ///
    /// Relays that read into their own buffers use this instead of
    /// `poll_write`, which has to copy the borrowed slice it is given.
    pub fn poll_send(&mut self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let max = self.link.config().max_send_frame.max(1);
        let id = self.shared.id;
        match self.link.out().poll_push_data(cx, id, || {
            let take = data.len().min(max);
            data.split_to(take)
        }) {
            Poll::Ready(Ok(n)) => Poll::Ready(Ok(n)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.push_error(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// True when a write would be taken now (not over water, not paused).
    pub fn is_writable(&self) -> bool {
        self.link.out().is_writable(self.shared.id)
    }

    /// Whether the remote has asked us to pause this channel.
    pub fn remote_paused(&self) -> bool {
        self.link.out().remote_paused(self.shared.id)
    }

    /// Bytes queued to send on this channel (header accounting included).
    pub fn outgoing_bytes(&self) -> usize {
        self.link.out().queued_bytes(self.shared.id)
    }

    /// Bytes received and not yet read (header accounting included).
    pub fn incoming_bytes(&self) -> usize {
        self.shared.incoming_bytes()
    }

    /// Whether we asked the remote to pause (our incoming queue is over high
    /// water and has not drained to low water yet).
    pub fn pause_sent(&self) -> bool {
        self.shared.pause_sent()
    }

    /// Close once the peer has provably taken everything sent and is not
    /// pausing this channel, waiting at most `limit`; then as
    /// [`close`](Self::close).
    ///
    /// Why: the reference (`snitun` 0.47.0) drops the last ~512 KiB of a
    /// channel when a CLOSE reaches it while it has this channel paused (its
    /// RESUME then fails on the deleted queue). So when our side ends a
    /// stream, we first let our queue drain, prove with a ping round trip
    /// that the peer has read it all, give a PAUSE that data caused time to
    /// arrive, and wait out any pause before sending CLOSE. A channel that
    /// sent less than 64 KiB cannot have been paused: it skips the round
    /// trip and only waits the grace.
    pub async fn close_after_delivery(&mut self, limit: Duration) {
        if self.closed {
            return;
        }
        let _ = tokio::time::timeout(limit, self.delivery_settled()).await;
        self.close();
    }

    /// Resolves once the peer has read everything queued on this channel so
    /// far and is not pausing it (see
    /// [`close_after_delivery`](Self::close_after_delivery)); holds no
    /// borrow of the channel, so a relay can keep reading meanwhile. Bound
    /// it with a timeout.
    pub fn delivery_settled(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let link = self.link.clone();
        let id = self.shared.id;
        // Decided now: whoever settles a channel has stopped writing to it.
        let short = link.out().sent_bytes(id) < NEVER_PAUSED_BELOW && !link.out().remote_paused(id);
        async move {
            if link.protocol_version() < FLOW_CONTROL_MIN_VERSION {
                return;
            }
            if !short {
                // Our frames must be on the wire before the ping, which
                // would otherwise overtake them in the control lane.
                while link.out().queued_bytes(id) > 0 {
                    tokio::time::sleep(SETTLE_POLL).await;
                }
                if link.round_trip().await.is_err() {
                    return;
                }
            }
            // A short channel skips the round trip (two link frames per
            // short connection): it cannot have been paused. Both wait the
            // grace: a PAUSE the peer queued for our last data may trail
            // its pong, and a device's answer to a caller's half-close
            // needs time to arrive before CLOSE ends the channel.
            tokio::time::sleep(SETTLE_GRACE).await;
            while link.out().remote_paused(id) {
                tokio::time::sleep(SETTLE_POLL).await;
            }
        }
    }

    /// Close the channel: CLOSE is queued after the data already queued, and
    /// the read side ends once what has arrived is read.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.link.close_channel(self.shared.id);
        self.shared.end(ChannelEnd::Closed);
    }

    fn push_error(&self, _: PushError) -> io::Error {
        let incoming = self.shared.lock();
        match &incoming.end {
            Some(ChannelEnd::Aborted(why)) => aborted(why),
            _ => io::Error::new(io::ErrorKind::BrokenPipe, "channel closed"),
        }
    }
}

/// The `len` bytes next in `pipe`, copied out (for consumers that are not
/// sockets).
fn copy_out(pipe: &Pipe, len: usize) -> io::Result<Bytes> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|rest| !rest.is_empty()) {
        match pipe.read_into(rest)? {
            0 => return Err(io::Error::other("pipe holds less than was queued")),
            n => filled += n,
        }
    }
    Ok(Bytes::from(buf))
}

fn aborted(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!("channel aborted: {why}"),
    )
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.shared.id)
            .field("peer_ip", &self.shared.peer_ip)
            .finish_non_exhaustive()
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.close();
    }
}

impl AsyncRead for Channel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut chunk = match self.poll_recv(cx) {
            Poll::Ready(Ok(Some(chunk))) => chunk,
            Poll::Ready(Ok(None)) => return Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        let n = chunk.len().min(buf.remaining());
        buf.put_slice(&chunk.split_to(n));
        if !chunk.is_empty() {
            self.partial = Some(chunk);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Channel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let max = self.link.config().max_send_frame.max(1);
        let id = self.shared.id;
        match self.link.out().poll_push_data(cx, id, || {
            let (head, _) = buf.split_at(buf.len().min(max));
            Bytes::copy_from_slice(head)
        }) {
            Poll::Ready(Ok(n)) => Poll::Ready(Ok(n)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.push_error(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Queued frames belong to the link's writer now; there is nothing
        // more to push.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.close();
        Poll::Ready(Ok(()))
    }
}
