//! The link: one encrypted TCP stream, one reader task, one writer task.
//!
//! The reader decodes frames into the channels' incoming queues (and
//! answers pings); the writer drains the shared outgoing queue with
//! vectored writes, several frames per system call when they are ready.
//! Either task ending ends the link: every channel still open is aborted
//! (reads fail rather than look like a clean end) and the other task stops.

use std::collections::HashMap;
use std::io::IoSlice;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use std::pin::Pin;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::buffer::{BUFFER_SIZE, POOL, SMALL_READ};
use super::channel::{Channel, ChannelEnd, ChannelShared, Delivery};
use super::codec::{Frame, FrameDecoder, FrameEncoder};
use super::config::MuxConfig;
use super::frame::{
    ChannelId, ENCRYPTED_NEW_MIN_VERSION, FLOW_CONTROL_MIN_VERSION, Flow, FrameHeader, PING_REPLY,
    PING_REQUEST, legacy_new_extra, new_payload, parse_legacy_new_extra, parse_new_payload,
};
use super::queue::{ControlError, OutFrame, OutQueue, Watermarks};
use super::splice::{self, Filled, Pipe};
use crate::crypto::{CipherState, Role};
use crate::error::{Error, Result};

/// Frames of at least this size make a throttled writer sleep.
const THROTTLE_MIN_SIZE: usize = 8192;
/// Most frames the writer sends with one vectored write.
const MAX_BATCH_FRAMES: usize = 64;
/// About the most bytes the writer gathers for one vectored write.
const MAX_BATCH_BYTES: usize = 512 * 1024;
/// A writer woken for less than this lets other ready tasks add their
/// frames before it writes (see `write_frames`).
const COALESCE_BELOW: usize = 16 * 1024;
/// Smallest read buffer; idle links keep only this much.
const MIN_READ_BUFFER: usize = 8 * 1024;

/// Why a link ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEnd {
    /// [`Multiplexer::shutdown`] was called (or the handle dropped).
    Shutdown,
    /// The peer closed the TCP connection.
    PeerClosed,
    /// Nothing was read or written within the idle timeout.
    IdleTimeout,
    /// A ping got no pong in time.
    PingTimeout,
    /// An I/O error or a protocol violation (the message says which).
    Failed(String),
}

impl std::fmt::Display for LinkEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkEnd::Shutdown => f.write_str("shut down"),
            LinkEnd::PeerClosed => f.write_str("closed by the peer"),
            LinkEnd::IdleTimeout => f.write_str("idle timeout"),
            LinkEnd::PingTimeout => f.write_str("no pong to our ping"),
            LinkEnd::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// Byte and channel counts of a link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Bytes read from the peer (all framing included).
    pub bytes_in: u64,
    /// Bytes written to the peer (all framing included).
    pub bytes_out: u64,
    /// Of `bytes_in`, DATA payload that went on to a socket through a pipe
    /// with splice(2), never copied into memory: links made with
    /// [`Multiplexer::new_tcp`], channels relayed to sockets, Linux.
    pub bytes_spliced: u64,
    /// Channels open now.
    pub channels: usize,
}

/// State shared by the tasks, the handle and the channels of one link.
pub(crate) struct Link {
    config: MuxConfig,
    protocol_version: u8,
    /// The link is a TCP stream on a system with splice(2): received
    /// payloads of channels relayed to sockets move through pipes (see
    /// mux::splice).
    splice: bool,
    out: OutQueue,
    channels: Mutex<HashMap<ChannelId, Arc<ChannelShared>>>,
    cancel: CancellationToken,
    end: Mutex<Option<LinkEnd>>,
    /// Pongs received so far.
    pongs: watch::Sender<u64>,
    /// Pings sent so far; held while queueing one so the numbers follow
    /// the wire order (the peer answers pings in order).
    pings: Mutex<u64>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    bytes_spliced: AtomicU64,
    started: Instant,
    /// Milliseconds after `started` of the last successful read or write.
    last_activity: AtomicU64,
}

impl Link {
    pub(crate) fn config(&self) -> &MuxConfig {
        &self.config
    }

    pub(crate) fn out(&self) -> &OutQueue {
        &self.out
    }

    pub(crate) fn protocol_version(&self) -> u8 {
        self.protocol_version
    }

    pub(crate) fn splices(&self) -> bool {
        self.splice
    }

    fn channels(&self) -> MutexGuard<'_, HashMap<ChannelId, Arc<ChannelShared>>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_activity.store(now, Ordering::Relaxed);
    }

    fn idle_deadline(&self) -> Instant {
        let last = Duration::from_millis(self.last_activity.load(Ordering::Relaxed));
        self.started + last + self.config.idle_timeout
    }

    /// Queue a control frame; a peer that floods us ends the link.
    pub(crate) fn push_control(&self, frame: OutFrame) {
        if let Err(ControlError::Flooded) = self.out.push_control(frame) {
            self.terminate(LinkEnd::Failed(
                "peer sends control frames faster than it reads our replies".into(),
            ));
        }
    }

    /// Send a ping and wait for the pong answering it: once it is back, the
    /// peer has read everything this link sent before the ping.
    pub(crate) async fn round_trip(&self) -> Result<()> {
        let mut pongs = self.pongs.subscribe();
        let seq = {
            let mut pings = self.pings.lock().unwrap_or_else(|e| e.into_inner());
            self.out
                .push_control(OutFrame::bare(
                    ChannelId::random(),
                    Flow::Ping,
                    PING_REQUEST,
                ))
                .map_err(|_| Error::ConnectionClosed {
                    during: "sending a ping",
                })?;
            *pings += 1;
            *pings
        };
        tokio::select! {
            answered = pongs.wait_for(|n| *n >= seq) => answered
                .map(|_| ())
                .map_err(|_| Error::ConnectionClosed { during: "waiting for a pong" }),
            _ = self.cancel.cancelled() => Err(Error::ConnectionClosed { during: "waiting for a pong" }),
            _ = tokio::time::sleep(self.config.ping_timeout) => {
                self.terminate(LinkEnd::PingTimeout);
                Err(Error::Timeout { during: "waiting for a pong" })
            }
        }
    }

    /// A local close: CLOSE goes out after the channel's queued data.
    pub(crate) fn close_channel(&self, id: ChannelId) {
        self.channels().remove(&id);
        self.out.close(id);
    }

    /// Close a channel that went wrong: CLOSE to the peer, reads fail.
    fn abort_channel(&self, id: ChannelId, why: &str) {
        let channel = self.channels().remove(&id);
        if let Some(channel) = channel {
            channel.end(ChannelEnd::Aborted(why.to_string()));
        }
        self.out.close(id);
    }

    /// End the link once; later calls keep the first reason.
    pub(crate) fn terminate(&self, end: LinkEnd) {
        {
            let mut slot = self.end.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_some() {
                return;
            }
            match &end {
                LinkEnd::Shutdown | LinkEnd::PeerClosed => tracing::debug!("link {end}"),
                _ => tracing::warn!("link {end}"),
            }
            *slot = Some(end.clone());
        }
        self.out.close_all();
        let channels: Vec<_> = self.channels().drain().map(|(_, c)| c).collect();
        for channel in channels {
            channel.end(ChannelEnd::Aborted(format!("link {end}")));
        }
        self.cancel.cancel();
    }

    fn end_reason(&self) -> Option<LinkEnd> {
        self.end.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Apply one received frame.
    fn dispatch(self: &Arc<Self>, frame: Frame, accept: Option<&mpsc::Sender<Channel>>) {
        let Frame { header, payload } = frame;
        let id = header.id;
        match header.flow {
            Flow::Data => {
                let Some(channel) = self.channels().get(&id).cloned() else {
                    tracing::trace!(%id, "DATA for unknown channel");
                    return;
                };
                let (high, cap, can_pause) = self.delivery_limits();
                let delivery = channel.deliver(payload, high, cap, can_pause);
                self.delivered(id, delivery);
            }
            Flow::New => {
                let Some(accept) = accept else {
                    tracing::warn!(%id, "peer asked to open a channel on the side that opens them");
                    return;
                };
                let ip = if self.protocol_version >= ENCRYPTED_NEW_MIN_VERSION {
                    parse_new_payload(&payload)
                } else {
                    Some(parse_legacy_new_extra(&header.extra))
                };
                let Some(ip) = ip else {
                    tracing::warn!(%id, "NEW with a malformed caller address, ignored");
                    return;
                };
                self.accept_channel(id, ip, accept);
            }
            Flow::Close => {
                let channel = self.channels().remove(&id);
                self.out.remove(id);
                match channel {
                    Some(channel) => channel.end(ChannelEnd::Closed),
                    None => tracing::trace!(%id, "CLOSE for unknown channel"),
                }
            }
            Flow::Ping => {
                if header.is_pong() {
                    self.pongs.send_modify(|n| *n = n.wrapping_add(1));
                } else {
                    self.push_control(OutFrame::bare(id, Flow::Ping, PING_REPLY));
                }
            }
            Flow::Pause | Flow::Resume => {
                if !self.out.set_remote_paused(id, header.flow == Flow::Pause) {
                    tracing::trace!(%id, flow = header.flow.name(), "for unknown channel");
                }
            }
            Flow::Unknown(value) => {
                tracing::warn!(%id, value, "unknown frame type, ignored");
            }
        }
    }

    /// The incoming high watermark, cap and whether PAUSE exists.
    fn delivery_limits(&self) -> (usize, usize, bool) {
        (
            self.config.incoming_high_watermark,
            self.config.incoming_cap(self.protocol_version),
            self.protocol_version >= FLOW_CONTROL_MIN_VERSION,
        )
    }

    /// Act on how a channel took received DATA.
    fn delivered(&self, id: ChannelId, delivery: Delivery) {
        match delivery {
            Delivery::Queued | Delivery::Ended => {}
            Delivery::QueuedPause => {
                self.push_control(OutFrame::bare(id, Flow::Pause, &[]));
            }
            Delivery::Overflow => {
                let cap = self.config.incoming_cap(self.protocol_version);
                tracing::warn!(%id, cap, "incoming queue full, closing channel");
                self.abort_channel(id, "incoming queue overflow");
            }
        }
    }

    /// The channel a DATA payload of `len` bytes may be spliced into, and
    /// its pipe.
    fn splice_target(&self, id: ChannelId, len: usize) -> Option<(Arc<ChannelShared>, Arc<Pipe>)> {
        let channel = self.channels().get(&id).cloned()?;
        let pipe = channel.splice_pipe(len)?;
        Some((channel, pipe))
    }

    fn accept_channel(self: &Arc<Self>, id: ChannelId, ip: IpAddr, accept: &mpsc::Sender<Channel>) {
        let shared = ChannelShared::new(id, ip);
        {
            let mut channels = self.channels();
            if channels.contains_key(&id) {
                tracing::warn!(%id, "NEW for a channel that is already open, ignored");
                return;
            }
            channels.insert(id, shared.clone());
        }
        if self.out.open(id, None).is_err() {
            return;
        }
        let channel = Channel::new(shared, self.clone());
        match accept.try_send(channel) {
            Ok(()) => {}
            // Dropping the refused channel sends CLOSE.
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%id, "too many channels waiting to be accepted, refused");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!(%id, "no one accepts channels, refused");
            }
        }
    }
}

/// A multiplexed link over one encrypted stream.
///
/// Built after the handshake with the cipher state it produced. The server
/// (responder) opens channels with [`open_channel`](Self::open_channel); the
/// client (initiator) takes the channels the server opens with
/// [`accept`](Self::accept). Dropping the handle shuts the link down.
pub struct Multiplexer {
    link: Arc<Link>,
    incoming: Option<tokio::sync::Mutex<mpsc::Receiver<Channel>>>,
}

impl Multiplexer {
    /// Start the reader and writer tasks on `stream` (needs a Tokio
    /// runtime). `role` is this end's: an initiator accepts channels, a
    /// responder opens them.
    pub fn new<S>(
        stream: S,
        cipher: CipherState,
        protocol_version: u8,
        role: Role,
        config: MuxConfig,
    ) -> Multiplexer
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (reader, writer) = tokio::io::split(stream);
        Self::start(reader, writer, cipher, protocol_version, role, config)
    }

    /// As [`new`](Self::new), on a TCP stream: on Linux, bulk DATA received
    /// for channels relayed to sockets (the server's callers, the client's
    /// endpoints) then moves from the link to those sockets with splice(2)
    /// instead of being copied through memory, and such a channel pauses
    /// the peer once its pipe is three quarters full (1 MiB pipes, two
    /// descriptors per busy channel); the bytes on the wire are the same.
    pub fn new_tcp(
        stream: TcpStream,
        cipher: CipherState,
        protocol_version: u8,
        role: Role,
        config: MuxConfig,
    ) -> Multiplexer {
        let (reader, writer) = stream.into_split();
        Self::start(reader, writer, cipher, protocol_version, role, config)
    }

    fn start<R, W>(
        reader: R,
        writer: W,
        cipher: CipherState,
        protocol_version: u8,
        role: Role,
        config: MuxConfig,
    ) -> Multiplexer
    where
        R: LinkReader + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (encryptor, decryptor) = cipher.split();
        let decoder = FrameDecoder::new(
            decryptor,
            protocol_version,
            config.frame_limit(protocol_version),
        );
        let encoder = FrameEncoder::new(encryptor);
        let marks = Watermarks {
            low: config.outgoing_low_watermark,
            high: config.outgoing_high_watermark,
            cap: config.outgoing_max_bytes,
        };
        let (accept_tx, incoming) = match role {
            Role::Initiator => {
                let (tx, rx) = mpsc::channel(config.max_pending_channels.max(1));
                (Some(tx), Some(tokio::sync::Mutex::new(rx)))
            }
            Role::Responder => (None, None),
        };
        let link = Arc::new(Link {
            config,
            protocol_version,
            splice: splice::SUPPORTED && reader.tcp().is_some(),
            out: OutQueue::new(marks),
            channels: Mutex::new(HashMap::new()),
            cancel: CancellationToken::new(),
            end: Mutex::new(None),
            pongs: watch::channel(0).0,
            pings: Mutex::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            bytes_spliced: AtomicU64::new(0),
            started: Instant::now(),
            last_activity: AtomicU64::new(0),
        });
        tokio::spawn(read_loop(link.clone(), reader, decoder, accept_tx));
        tokio::spawn(write_loop(link.clone(), writer, encoder));
        Multiplexer { link, incoming }
    }

    /// The protocol version the link runs.
    pub fn protocol_version(&self) -> u8 {
        self.link.protocol_version
    }

    /// Open a channel for a caller at `peer_ip` (server side): NEW is queued
    /// and the channel can be written to at once.
    pub fn open_channel(&self, peer_ip: IpAddr) -> Result<Channel> {
        let id = ChannelId::random();
        let first = if self.link.protocol_version >= ENCRYPTED_NEW_MIN_VERSION {
            let (buf, len) = new_payload(peer_ip);
            OutFrame {
                header: FrameHeader::new(id, Flow::New, len as u32, &[]),
                payload: bytes::Bytes::copy_from_slice(buf.get(..len).unwrap_or_default()),
            }
        } else {
            OutFrame::bare(id, Flow::New, &legacy_new_extra(peer_ip))
        };
        let shared = ChannelShared::new(id, peer_ip);
        self.link.channels().insert(id, shared.clone());
        if self.link.out.open(id, Some(first)).is_err() || self.link.cancel.is_cancelled() {
            self.link.channels().remove(&id);
            return Err(Error::ConnectionClosed {
                during: "opening a channel",
            });
        }
        Ok(Channel::new(shared, self.link.clone()))
    }

    /// The next channel opened by the peer (client side); `None` once the
    /// link is down or on a link that does not accept channels.
    pub async fn accept(&self) -> Option<Channel> {
        let incoming = self.incoming.as_ref()?;
        let mut rx = incoming.lock().await;
        tokio::select! {
            channel = rx.recv() => channel,
            _ = self.link.cancel.cancelled() => None,
        }
    }

    /// Send a ping and wait for its pong (up to the configured ping
    /// timeout; no pong ends the link).
    pub async fn ping(&self) -> Result<()> {
        self.link.round_trip().await
    }

    /// Close the link and every channel on it.
    pub fn shutdown(&self) {
        self.link.terminate(LinkEnd::Shutdown);
    }

    /// True until the link ends.
    pub fn is_connected(&self) -> bool {
        !self.link.cancel.is_cancelled()
    }

    /// Wait for the link to end and tell why.
    pub async fn closed(&self) -> LinkEnd {
        self.link.cancel.cancelled().await;
        self.link.end_reason().unwrap_or(LinkEnd::Shutdown)
    }

    /// Why the link ended, if it has.
    pub fn end_reason(&self) -> Option<LinkEnd> {
        self.link.end_reason()
    }

    /// Traffic and channel counts.
    pub fn stats(&self) -> LinkStats {
        LinkStats {
            bytes_in: self.link.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.link.bytes_out.load(Ordering::Relaxed),
            bytes_spliced: self.link.bytes_spliced.load(Ordering::Relaxed),
            channels: self.link.channels().len(),
        }
    }
}

impl Drop for Multiplexer {
    fn drop(&mut self) {
        self.link.terminate(LinkEnd::Shutdown);
    }
}

impl std::fmt::Debug for Multiplexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Multiplexer")
            .field("protocol_version", &self.link.protocol_version)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

/// The reading half of the link's stream. A TCP half lends its socket, so
/// the reader can splice payloads (see mux::splice).
pub(crate) trait LinkReader: AsyncRead + Unpin {
    /// The link's socket, when it is a plain TCP stream.
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }
}

impl<S: AsyncRead> LinkReader for tokio::io::ReadHalf<S> {}

impl LinkReader for OwnedReadHalf {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }
}

async fn read_loop<R: LinkReader>(
    link: Arc<Link>,
    mut reader: R,
    mut decoder: FrameDecoder,
    accept: Option<mpsc::Sender<Channel>>,
) {
    let end = read_frames(&link, &mut reader, &mut decoder, accept.as_ref()).await;
    link.terminate(end);
}

async fn read_frames<R: LinkReader>(
    link: &Arc<Link>,
    reader: &mut R,
    decoder: &mut FrameDecoder,
    accept: Option<&mpsc::Sender<Channel>>,
) -> LinkEnd {
    let max_buffer = link.config.read_buffer_size.max(MIN_READ_BUFFER);
    let mut next_size = MIN_READ_BUFFER;
    let mut buf = BytesMut::new();
    // The last payload was read on its own: read only up to the end of the
    // next header, so the payload after it lands in its own buffer too.
    let mut header_only = false;
    let idle = tokio::time::sleep_until(link.idle_deadline());
    tokio::pin!(idle);
    loop {
        // A bulk payload for a channel relayed to a socket moves on through
        // a pipe, when the payload has not started arriving in `buf`.
        if buf.is_empty()
            && link.splice
            && let Some((id, len)) = decoder
                .pending_raw_header()
                .map(|header| (header.id, header.size as usize))
                .filter(|(_, len)| (SMALL_READ..=BUFFER_SIZE).contains(len))
            && let Some((channel, pipe)) = link.splice_target(id, len)
        {
            if decoder.skip_raw_payload().is_none() {
                return LinkEnd::Failed("no pending payload".into());
            }
            if let Err(end) =
                splice_payload(link, reader, &channel, &pipe, len, idle.as_mut()).await
            {
                return end;
            }
            header_only = true;
            continue;
        }
        // A large raw payload (bulk DATA) is read straight into a recycled
        // buffer of its own (see mux::buffer): the profile of a bulk
        // transfer showed the growing read buffer costing page faults on
        // fresh memory and copies of the frames that straddled two reads.
        if let Some(len) = decoder
            .pending_raw_payload()
            .filter(|len| (SMALL_READ..=BUFFER_SIZE).contains(len))
        {
            let mut payload = POOL.take();
            // What already arrived of it: less than a general read.
            payload.extend_from_slice(&buf);
            buf.clear();
            if let Err(end) = fill_to(link, reader, &mut payload, len, idle.as_mut()).await {
                return end;
            }
            let Some(frame) = decoder.take_raw_payload(POOL.freeze(payload)) else {
                return LinkEnd::Failed("payload length mismatch".into());
            };
            link.dispatch(frame, accept);
            header_only = true;
            continue;
        }
        let read = if header_only {
            let want = decoder.wanted(&buf).max(1);
            buf.reserve(want);
            read_some(link, reader, &mut (&mut buf).limit(want), idle.as_mut()).await
        } else {
            // Grow the buffer while reads fill it (many small frames), keep
            // it small on an idle link; a frame's payload is never reserved
            // from its header before its bytes arrive.
            if buf.capacity() - buf.len() < MIN_READ_BUFFER / 2 {
                buf.reserve(next_size.max(decoder.wanted(&buf).min(max_buffer)));
            }
            let room = buf.capacity() - buf.len();
            let read = read_some(link, reader, &mut buf, idle.as_mut()).await;
            if let Ok(n) = read
                && n == room
            {
                next_size = (next_size * 2).min(max_buffer);
            }
            read
        };
        if let Err(end) = read {
            return end;
        }
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    header_only = false;
                    link.dispatch(frame, accept);
                }
                Ok(None) => break,
                Err(e) => return LinkEnd::Failed(e.to_string()),
            }
        }
    }
}

/// Move a DATA payload of `len` bytes from the link into `channel`'s
/// `pipe` (which has room for it by the count) and queue it there; what
/// the pipe does not take is read into memory and queued behind.
async fn splice_payload<R: LinkReader>(
    link: &Link,
    reader: &mut R,
    channel: &ChannelShared,
    pipe: &Pipe,
    len: usize,
    mut idle: Pin<&mut Sleep>,
) -> std::result::Result<(), LinkEnd> {
    let mut moved = 0;
    if let Some(socket) = reader.tcp() {
        while moved < len {
            match splice_some(link, socket, pipe, len - moved, idle.as_mut()).await? {
                Filled::Moved(n) => moved += n,
                Filled::Eof => return Err(LinkEnd::PeerClosed),
                Filled::PipeFull => break,
            }
        }
    }
    let (high, cap, can_pause) = link.delivery_limits();
    if moved > 0 {
        link.bytes_spliced
            .fetch_add(moved as u64, Ordering::Relaxed);
        link.delivered(
            channel.id,
            channel.deliver_piped(moved, high, cap, can_pause),
        );
    }
    if moved < len {
        let mut payload = POOL.take();
        fill_to(link, reader, &mut payload, len - moved, idle.as_mut()).await?;
        let payload = POOL.freeze(payload);
        link.delivered(channel.id, channel.deliver(payload, high, cap, can_pause));
    }
    Ok(())
}

/// Read from the link until `payload` holds `len` bytes.
async fn fill_to<R: AsyncRead + Unpin>(
    link: &Link,
    reader: &mut R,
    payload: &mut Vec<u8>,
    len: usize,
    mut idle: Pin<&mut Sleep>,
) -> std::result::Result<(), LinkEnd> {
    while payload.len() < len {
        let want = len - payload.len();
        read_some(link, reader, &mut payload.limit(want), idle.as_mut()).await?;
    }
    Ok(())
}

/// One move from the link's socket into `pipe` (up to `max` bytes), while
/// watching for shutdown and the idle timeout.
async fn splice_some(
    link: &Link,
    socket: &TcpStream,
    pipe: &Pipe,
    max: usize,
    mut idle: Pin<&mut Sleep>,
) -> std::result::Result<Filled, LinkEnd> {
    loop {
        tokio::select! {
            biased;
            _ = link.cancel.cancelled() => return Err(LinkEnd::Shutdown),
            ready = socket.readable() => {
                if let Err(e) = ready {
                    return Err(LinkEnd::Failed(format!("read: {e}")));
                }
                match pipe.fill_from(socket, max) {
                    Ok(Filled::Moved(n)) => {
                        link.touch();
                        link.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                        return Ok(Filled::Moved(n));
                    }
                    Ok(other) => return Ok(other),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(LinkEnd::Failed(format!("read: {e}"))),
                }
            }
            _ = idle.as_mut() => {
                let deadline = link.idle_deadline();
                if Instant::now() >= deadline {
                    return Err(LinkEnd::IdleTimeout);
                }
                idle.as_mut().reset(deadline);
            }
        }
    }
}

/// One read from the link into `dst`, while watching for shutdown and the
/// idle timeout. `Ok(n)`: `n > 0` bytes arrived; `Err`: the link ends.
async fn read_some<R: AsyncRead + Unpin, B: BufMut>(
    link: &Link,
    reader: &mut R,
    dst: &mut B,
    mut idle: Pin<&mut Sleep>,
) -> std::result::Result<usize, LinkEnd> {
    loop {
        tokio::select! {
            biased;
            _ = link.cancel.cancelled() => return Err(LinkEnd::Shutdown),
            read = reader.read_buf(dst) => return match read {
                Ok(0) => Err(LinkEnd::PeerClosed),
                Ok(n) => {
                    link.touch();
                    link.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                    Ok(n)
                }
                Err(e) => Err(LinkEnd::Failed(format!("read: {e}"))),
            },
            _ = idle.as_mut() => {
                let deadline = link.idle_deadline();
                if Instant::now() >= deadline {
                    return Err(LinkEnd::IdleTimeout);
                }
                idle.as_mut().reset(deadline);
            }
        }
    }
}

/// Where a piece of a batch lives: in the header arena or in a frame.
enum Piece {
    Arena(Range<usize>),
    Payload(usize),
}

async fn write_loop<W: AsyncWrite + Unpin>(
    link: Arc<Link>,
    mut writer: W,
    mut encoder: FrameEncoder,
) {
    let end = write_frames(&link, &mut writer, &mut encoder).await;
    link.terminate(end);
    // Tell the peer we are done (FIN), without waiting long for it.
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
}

async fn write_frames<W: AsyncWrite + Unpin>(
    link: &Arc<Link>,
    writer: &mut W,
    encoder: &mut FrameEncoder,
) -> LinkEnd {
    let throttle = link
        .config
        .throttling
        .filter(|n| *n > 0)
        .map(|n| Duration::from_secs_f64(1.0 / f64::from(n)));
    let max_frames = if throttle.is_some() {
        1
    } else {
        MAX_BATCH_FRAMES
    };
    let encrypt_new = link.protocol_version >= ENCRYPTED_NEW_MIN_VERSION;
    let mut batch: Vec<OutFrame> = Vec::with_capacity(max_frames);
    let mut arena = BytesMut::new();
    let mut pieces: Vec<Piece> = Vec::with_capacity(max_frames * 2);
    // The queue was empty and a frame has just arrived.
    let mut woken = false;
    loop {
        batch.clear();
        if !link.out.take_batch(&mut batch, max_frames, MAX_BATCH_BYTES) {
            return link.end_reason().unwrap_or(LinkEnd::Shutdown);
        }
        if batch.is_empty() {
            tokio::select! {
                biased;
                _ = link.cancel.cancelled() => return LinkEnd::Shutdown,
                _ = link.out.wait() => woken = true,
            }
            continue;
        }
        if std::mem::take(&mut woken) {
            let bytes: usize = batch.iter().map(OutFrame::size).sum();
            if bytes < COALESCE_BELOW && batch.len() < max_frames && link.channels().len() > 1 {
                // Woken for a few small frames (a channel opening or
                // closing, a short message) while other channels are open:
                // the tasks that are ready too, other channels' relays or
                // timers due at the same tick, queue theirs first and the
                // lot shares one write. Many short connections need far
                // fewer writes (8 % more connections/s, 12 % less CPU per
                // connection). Not for a lone channel, whose round trip
                // would only pay the yield (7 % on a 1 KiB echo), nor for
                // bulk transfers.
                tokio::task::yield_now().await;
                let room = max_frames - batch.len();
                if !link
                    .out
                    .take_batch(&mut batch, room, MAX_BATCH_BYTES - bytes)
                {
                    return link.end_reason().unwrap_or(LinkEnd::Shutdown);
                }
            }
        }
        arena.clear();
        pieces.clear();
        for (index, frame) in batch.iter().enumerate() {
            let start = arena.len();
            let unit = match encoder.header(&frame.header) {
                Ok(unit) => unit,
                Err(e) => return LinkEnd::Failed(format!("encrypt: {e}")),
            };
            arena.extend_from_slice(unit.as_ref());
            if frame.payload.is_empty() {
                pieces.push(Piece::Arena(start..arena.len()));
            } else if frame.header.flow == Flow::New && encrypt_new {
                if let Err(e) = encoder.payload_unit(&frame.payload, &mut arena) {
                    return LinkEnd::Failed(format!("encrypt: {e}"));
                }
                pieces.push(Piece::Arena(start..arena.len()));
            } else {
                pieces.push(Piece::Arena(start..arena.len()));
                pieces.push(Piece::Payload(index));
            }
        }
        let mut slices: Vec<IoSlice<'_>> = pieces
            .iter()
            .map(|piece| match piece {
                Piece::Arena(range) => IoSlice::new(arena.get(range.clone()).unwrap_or_default()),
                Piece::Payload(index) => IoSlice::new(
                    batch
                        .get(*index)
                        .map(|f| &f.payload[..])
                        .unwrap_or_default(),
                ),
            })
            .collect();
        let total: usize = slices.iter().map(|s| s.len()).sum();
        tokio::select! {
            biased;
            _ = link.cancel.cancelled() => return LinkEnd::Shutdown,
            written = write_all_vectored(writer, &mut slices) => {
                if let Err(e) = written {
                    return LinkEnd::Failed(format!("write: {e}"));
                }
            }
        }
        link.touch();
        link.bytes_out.fetch_add(total as u64, Ordering::Relaxed);
        if let Some(pause) = throttle
            && batch.iter().any(|f| f.payload.len() >= THROTTLE_MIN_SIZE)
        {
            tokio::time::sleep(pause).await;
        }
    }
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(
    writer: &mut W,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    while !slices.is_empty() {
        let n = writer.write_vectored(slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}
