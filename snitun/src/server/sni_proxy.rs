//! The SNI port: route a caller's TLS stream to the peer serving its host
//! name.
//!
//! The first TLS record (a ClientHello) must arrive within
//! [`client_hello_timeout`](super::ServerLimits::client_hello_timeout),
//! after an optional PROXY protocol header. No server name, a name no
//! connected peer serves, or anything else: the socket is closed without a
//! byte sent. Otherwise a channel is opened on the peer's link (NEW carries
//! the caller's address), everything read so far is its first data, and
//! bytes are relayed both ways until one side ends:
//!
//! * the channel closes cleanly (CLOSE from the peer): what it delivered is
//!   written to the caller, then a FIN, and the caller's remaining input is
//!   read and discarded for a moment so that closing the socket does not
//!   reset the connection before the caller has read everything;
//! * the caller sends FIN: the channel is closed (CLOSE after the data
//!   already queued); what the peer had already sent is still delivered;
//! * the channel fails (the link died, its queue overflowed): the caller's
//!   connection is reset, so it cannot take a truncated stream for a
//!   complete one;
//! * nothing moves either way for
//!   [`caller_idle_timeout`](super::ServerLimits::caller_idle_timeout): both
//!   are closed.

use std::future::{Future, poll_fn};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use super::Context;
use super::admission::Limit;
use super::proxy_protocol::read_proxy_header;
use super::sni::read_client_hello_within;
use crate::error::Error;
use crate::mux::Channel;
use crate::mux::inbox::{Inbox, InboxEnd};
use crate::mux::outbox::{Outbox, OutboxEnd};

/// How long CLOSE may wait for the device to take the caller's last data.
const CLOSE_SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// Most steps one poll of the relay takes before yielding to other tasks.
const MAX_STEPS_PER_POLL: usize = 32;

/// After a clean end, how long the caller's remaining input is read and
/// discarded before the socket is closed.
const CLOSE_DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Where a caller's address comes from.
pub(crate) enum Source {
    /// Read a PROXY protocol header first if the server trusts them.
    Unread,
    /// The header was already handled (single-port mode): its source, if
    /// it carried one.
    Known(Option<IpAddr>),
}

/// Serve one connection on the SNI port.
pub(crate) async fn serve_caller(ctx: Arc<Context>, stream: TcpStream, remote: SocketAddr) {
    serve_tls(ctx, stream, remote, BytesMut::new(), Source::Unread).await;
}

/// Serve a caller whose first bytes (possibly none) are in `buf`.
pub(crate) async fn serve_tls(
    ctx: Arc<Context>,
    mut stream: TcpStream,
    remote: SocketAddr,
    mut buf: BytesMut,
    source: Source,
) {
    let Some(pending) =
        ctx.admission
            .enter(Limit::PendingHellos, ctx.limits.max_pending_hellos, remote)
    else {
        return;
    };
    let read = async {
        let source = match source {
            Source::Known(source) => source,
            Source::Unread if ctx.proxy_protocol => read_proxy_header(&mut stream, &mut buf)
                .await?
                .and_then(|header| header.source),
            Source::Unread => None,
        };
        let hostname =
            read_client_hello_within(&mut stream, &mut buf, ctx.limits.max_hello_bytes).await?;
        Ok::<_, Error>((source, hostname))
    };
    let (source, hostname) = tokio::select! {
        _ = ctx.cancel.cancelled() => return,
        read = timeout(ctx.limits.client_hello_timeout, read) => match read {
            Ok(Ok(found)) => found,
            Ok(Err(e @ Error::InvalidProxyHeader(_))) => {
                tracing::warn!(%remote, error = %e, "dropping a caller: invalid PROXY protocol header");
                return;
            }
            Ok(Err(Error::LimitExceeded { limit, .. })) => {
                ctx.admission.refuse(Limit::HelloBytes, limit, remote);
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "dropping a caller: no routable ClientHello");
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "dropping a caller: no ClientHello in time");
                return;
            }
        },
    };
    drop(pending);
    let caller_ip = source.unwrap_or_else(|| remote.ip().to_canonical());
    let Some(peer) = ctx.registry.lookup(&hostname) else {
        tracing::debug!(%remote, %hostname, "dropping a caller: hostname not connected");
        return;
    };
    let max_channels = ctx.limits.max_channels_per_peer;
    if peer.mux().stats().channels >= max_channels {
        ctx.admission
            .refuse(Limit::ChannelsPerPeer, max_channels, remote);
        return;
    }
    let channel = match peer.mux().open_channel(caller_ip) {
        Ok(channel) => channel,
        Err(e) => {
            tracing::debug!(%remote, %hostname, error = %e, "dropping a caller: cannot open a channel");
            return;
        }
    };
    // The channel keeps the link it needs; the registry entry is not held.
    drop(peer);
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%remote, error = %e, "cannot set TCP_NODELAY on a caller");
    }
    tracing::debug!(%remote, %caller_ip, %hostname, channel = %channel.id(), "relaying a caller");
    proxy(
        stream,
        channel,
        buf,
        ctx.limits.caller_idle_timeout,
        &ctx.cancel,
    )
    .await;
}

/// Relay between a caller and its channel, then close both as the way the
/// relay ended requires. `first` is sent on the channel before anything
/// else.
pub(crate) async fn proxy(
    mut caller: TcpStream,
    mut channel: Channel,
    first: BytesMut,
    idle_timeout: Duration,
    cancel: &CancellationToken,
) {
    let id = channel.id();
    let end = Relay::new(&mut caller, &mut channel, first)
        .run(idle_timeout, cancel)
        .await;
    match end {
        RelayEnd::ChannelClosed { caller_eof: true } => {
            drop(channel);
            // A clean end after the caller's FIN: it can send nothing more,
            // so closing the socket sends our FIN, never a reset.
            drop(caller);
            tracing::debug!(channel = %id, "caller relay ended: caller and channel closed");
        }
        RelayEnd::ChannelClosed { caller_eof: false } => {
            drop(channel);
            // A clean end: FIN, then take (and drop) what the caller still
            // sends, so the close does not turn into a reset that could
            // destroy data the caller has not read yet.
            if caller.shutdown().await.is_ok() {
                let _ = tokio::select! {
                    _ = cancel.cancelled() => Ok(()),
                    drained = timeout(CLOSE_DRAIN_LIMIT, drain(&mut caller)) => drained.unwrap_or(Ok(())),
                };
            }
            tracing::debug!(channel = %id, "caller relay ended: channel closed");
        }
        RelayEnd::ChannelFailed(e) => {
            drop(channel);
            // Reset: the stream was cut short, the caller must not see a
            // clean end.
            if let Err(e) = caller.set_zero_linger() {
                tracing::debug!(error = %e, "cannot set SO_LINGER 0 on a caller");
            }
            tracing::debug!(channel = %id, error = %e, "caller relay ended: channel failed");
        }
        RelayEnd::CallerFailed(e) => {
            drop(channel);
            tracing::debug!(channel = %id, error = %e, "caller relay ended: caller connection failed");
        }
        RelayEnd::Idle => {
            channel.close();
            let _ = timeout(Duration::from_secs(1), caller.shutdown()).await;
            tracing::debug!(channel = %id, "caller relay ended: idle timeout");
        }
        RelayEnd::Cancelled => {
            tracing::debug!(channel = %id, "caller relay ended: server shutting down");
        }
    }
}

/// Read and discard until EOF or an error.
async fn drain(caller: &mut TcpStream) -> io::Result<()> {
    let mut sink = [0u8; 4096];
    while caller.read(&mut sink).await? > 0 {}
    Ok(())
}

/// How a relay ended.
#[derive(Debug)]
enum RelayEnd {
    /// The channel reached its end cleanly (CLOSE from the peer, or the
    /// caller's EOF forwarded and the rest of the channel delivered).
    ChannelClosed {
        /// The caller had sent FIN (all its input was read).
        caller_eof: bool,
    },
    /// Reading from or writing to the channel failed.
    ChannelFailed(io::Error),
    /// Reading from or writing to the caller failed.
    CallerFailed(io::Error),
    /// No bytes moved for the idle timeout.
    Idle,
    /// The server is shutting down.
    Cancelled,
}

/// Both directions of one caller, driven by one task.
///
/// Back-pressure is the streams' own: nothing more is read from the caller
/// while the channel has not taken the last read (it is over its high
/// watermark or paused by the peer), and nothing more is taken from the
/// channel while the caller has not taken the last chunk.
struct Relay<'a> {
    caller: &'a mut TcpStream,
    channel: &'a mut Channel,
    /// Caller -> channel.
    up: Inbox,
    /// Received from the channel, not yet written to the caller.
    down: Outbox,
    /// Caller -> channel is over: the caller sent FIN (and the channel was
    /// closed behind its data), or the channel refused data (it was closed
    /// or failed; its read side tells which).
    up_done: bool,
    /// The caller sent FIN.
    caller_eof: bool,
    /// The caller sent FIN: CLOSE waits until the device has taken the data
    /// (see `Channel::close_after_delivery`).
    closing: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    last_activity: Instant,
}

impl<'a> Relay<'a> {
    fn new(caller: &'a mut TcpStream, channel: &'a mut Channel, first: BytesMut) -> Self {
        channel.enable_splice();
        Relay {
            caller,
            channel,
            up: Inbox::new(first.freeze()),
            down: Outbox::default(),
            up_done: false,
            caller_eof: false,
            closing: None,
            last_activity: Instant::now(),
        }
    }

    async fn run(mut self, idle_timeout: Duration, cancel: &CancellationToken) -> RelayEnd {
        let idle = tokio::time::sleep_until(self.last_activity + idle_timeout);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return RelayEnd::Cancelled,
                end = poll_fn(|cx| self.poll_relay(cx)) => return end,
                _ = &mut idle => {
                    let deadline = self.last_activity + idle_timeout;
                    if Instant::now() >= deadline {
                        return RelayEnd::Idle;
                    }
                    idle.as_mut().reset(deadline);
                }
            }
        }
    }

    /// Move bytes both ways until neither direction can go on.
    fn poll_relay(&mut self, cx: &mut TaskContext<'_>) -> Poll<RelayEnd> {
        for _ in 0..MAX_STEPS_PER_POLL {
            let mut progress = false;
            if let Some(closing) = self.closing.as_mut()
                && closing.as_mut().poll(cx).is_ready()
            {
                self.closing = None;
                self.channel.close();
                progress = true;
            }
            if !self.up_done {
                match self.poll_up(cx) {
                    Poll::Ready(Ok(())) => progress = true,
                    Poll::Ready(Err(end)) => return Poll::Ready(end),
                    Poll::Pending => {}
                }
            }
            match self.poll_down(cx) {
                Poll::Ready(Ok(())) => progress = true,
                Poll::Ready(Err(end)) => return Poll::Ready(end),
                Poll::Pending => {}
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // Still busy: let other tasks run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// One step caller -> channel. `Ready(Ok)`: something happened.
    fn poll_up(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), RelayEnd>> {
        match self.up.poll_forward(cx, self.channel, self.caller) {
            Poll::Ready(Ok(())) => {
                self.last_activity = Instant::now();
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(InboxEnd::Eof)) => {
                // FIN from the caller: CLOSE goes out after the data already
                // queued, once the device has provably taken it (a reference
                // client drops a stream's tail when CLOSE meets a pause); the
                // channel's read side delivers what has arrived, then ends.
                self.up_done = true;
                self.caller_eof = true;
                let settled = self.channel.delivery_settled();
                self.closing = Some(Box::pin(async move {
                    let _ = tokio::time::timeout(CLOSE_SETTLE_LIMIT, settled).await;
                }));
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(InboxEnd::ChannelRefused(e))) => {
                // The channel is closed or failed. Do not decide here: what
                // the peer sent before its CLOSE must still reach the
                // caller, and the channel's read side says whether the end
                // was clean.
                tracing::trace!(channel = %self.channel.id(), error = %e, "channel refuses data");
                self.up_done = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(InboxEnd::ReadFailed(e))) => {
                Poll::Ready(Err(RelayEnd::CallerFailed(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// One step channel -> caller. `Ready(Ok)`: something happened.
    fn poll_down(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), RelayEnd>> {
        let step = self.down.poll_forward(cx, self.channel, self.caller);
        if let Poll::Ready(Ok(())) = step {
            self.last_activity = Instant::now();
        }
        let caller_eof = self.caller_eof;
        step.map_err(|end| match end {
            OutboxEnd::ChannelClosed => RelayEnd::ChannelClosed { caller_eof },
            OutboxEnd::ChannelFailed(e) => RelayEnd::ChannelFailed(e),
            OutboxEnd::WriteFailed(e) => RelayEnd::CallerFailed(e),
        })
    }
}
