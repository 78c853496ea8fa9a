//! What a channel is bridged to.
//!
//! The client hands every channel the server opens (after the access list
//! let it through) to a [`Connector`]. [`EndpointConnector`] is the
//! reference behaviour: a TCP connection to a local `host:port` (the TLS
//! server of the device) and bytes relayed both ways. Bindings and
//! applications provide their own connectors, for example to serve TLS
//! in-process on the channel itself (it is `AsyncRead + AsyncWrite`).

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::mux::inbox::{Inbox, InboxEnd};
use crate::mux::outbox::{Outbox, OutboxEnd};
use crate::mux::{Channel, ChannelId};

/// The future a [`Connector`] returns for one channel.
pub type ServeFuture = Pin<Box<dyn Future<Output = Result<()>> + Send + 'static>>;

/// Serves the channels of a client session.
///
/// [`serve`](Self::serve) is called once per channel, on its own task. The
/// channel belongs to the connector: dropping or
/// [closing](Channel::close) it sends CLOSE to the server. An `Err` is
/// reported as an [`EndpointError`](super::EndpointError) (callback and
/// event); the tunnel stays up either way. When the session ends, channels
/// still open fail their reads and writes, and a connector that ignores that
/// is cancelled (its future dropped) shortly after.
///
/// Any `Fn(Channel) -> impl Future<Output = Result<()>>` closure is a
/// connector:
///
/// ```
/// use snitun::client::Connector;
/// use snitun::mux::Channel;
/// use tokio::io::AsyncWriteExt;
///
/// fn hello() -> impl Connector {
///     |mut channel: Channel| async move {
///         channel.write_all(b"hello").await?;
///         Ok(())
///     }
/// }
/// ```
pub trait Connector: Send + Sync + 'static {
    /// Bridge `channel` to whatever this connector serves; resolve once the
    /// channel's work is over.
    fn serve(&self, channel: Channel) -> ServeFuture;

    /// What this connector connects to, for logs and
    /// [`EndpointError::endpoint`](super::EndpointError::endpoint).
    fn endpoint(&self) -> String {
        String::from("connector")
    }
}

impl<F, Fut> Connector for F
where
    F: Fn(Channel) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    fn serve(&self, channel: Channel) -> ServeFuture {
        Box::pin(self(channel))
    }
}

/// The port an endpoint address without one gets (the reference's).
pub const DEFAULT_ENDPOINT_PORT: u16 = 443;
/// How long [`EndpointConnector`] waits for the endpoint's TCP connect by
/// default.
pub const DEFAULT_ENDPOINT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Most steps one poll of the relay takes before yielding to other tasks.
const MAX_STEPS_PER_POLL: usize = 32;

/// Relays every channel to a TCP endpoint (the reference's behaviour).
///
/// Per channel: connect to the endpoint (TCP_NODELAY), then copy bytes both
/// ways until either side ends. The endpoint closing its side closes the
/// channel (CLOSE after the data already queued); the server closing the
/// channel ends the endpoint connection with a FIN after the data already
/// received; a channel that ends abnormally (the link to the server died)
/// resets the endpoint connection (RST), so the endpoint does not mistake a
/// cut stream for a complete one. An endpoint that cannot be reached is an
/// error (the channel is closed and the error reported); the tunnel stays
/// up.
#[derive(Debug, Clone)]
pub struct EndpointConnector {
    addr: Arc<str>,
    connect_timeout: Duration,
}

impl EndpointConnector {
    /// Connect channels to `addr`, a `host:port` (`[v6]:port` for an IPv6
    /// literal; without a port, 443).
    pub fn new(addr: impl Into<String>) -> EndpointConnector {
        let addr = with_default_port(&addr.into(), DEFAULT_ENDPOINT_PORT);
        EndpointConnector {
            addr: addr.into(),
            connect_timeout: DEFAULT_ENDPOINT_CONNECT_TIMEOUT,
        }
    }

    /// Give up connecting to the endpoint after `limit` (30 s by default).
    pub fn connect_timeout(mut self, limit: Duration) -> EndpointConnector {
        self.connect_timeout = limit;
        self
    }

    /// The endpoint address.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

/// How long a channel whose endpoint finished may wait for the server to
/// take the last data before CLOSE goes out anyway.
const CLOSE_SETTLE_LIMIT: Duration = Duration::from_secs(60);

impl Connector for EndpointConnector {
    fn serve(&self, channel: Channel) -> ServeFuture {
        let addr = self.addr.clone();
        let limit = self.connect_timeout;
        Box::pin(async move {
            let id = channel.id();
            let endpoint = connect_endpoint(&addr, limit).await?;
            tracing::debug!(%id, caller = %channel.peer_ip(), endpoint = %addr, "relaying");
            let end = relay(channel, endpoint).await;
            tracing::debug!(%id, "relay ended: {end}");
            Ok(())
        })
    }

    fn endpoint(&self) -> String {
        self.addr.to_string()
    }
}

async fn connect_endpoint(addr: &str, limit: Duration) -> Result<TcpStream> {
    let stream = match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return Err(Error::Io(io::Error::new(
                e.kind(),
                format!("cannot connect to endpoint {addr}: {e}"),
            )));
        }
        Err(_) => {
            return Err(Error::Timeout {
                during: "connecting to the endpoint",
            });
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// How a relay ended.
#[derive(Debug)]
enum RelayEnd {
    /// The server closed the channel (the caller is gone).
    ChannelClosed,
    /// The channel ended abnormally: the link died or it was torn down.
    ChannelAborted(io::Error),
    /// The endpoint closed its side.
    EndpointClosed,
    /// Reading from or writing to the endpoint failed.
    EndpointFailed(io::Error),
}

impl std::fmt::Display for RelayEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayEnd::ChannelClosed => f.write_str("channel closed by the server"),
            RelayEnd::ChannelAborted(e) => write!(f, "channel aborted ({e}), endpoint reset"),
            RelayEnd::EndpointClosed => f.write_str("endpoint closed"),
            RelayEnd::EndpointFailed(e) => write!(f, "endpoint failed: {e}"),
        }
    }
}

/// Copy both ways between `channel` and `endpoint` until either ends.
async fn relay(mut channel: Channel, mut endpoint: TcpStream) -> RelayEnd {
    let id: ChannelId = channel.id();
    channel.enable_splice();
    let end = {
        let mut relay = Relay {
            channel: &mut channel,
            endpoint: &mut endpoint,
            down: Inbox::default(),
            down_done: false,
            up: Outbox::default(),
        };
        poll_fn(|cx| relay.poll_relay(cx)).await
    };
    match &end {
        RelayEnd::ChannelClosed => {
            // The server closed the channel: FIN after everything it sent.
            // Closing the socket (below) sends it; a shutdown first would
            // be one more system call per connection for the same packets
            // (unread input resets the connection either way, and it has
            // nowhere to go once the channel is closed).
        }
        RelayEnd::ChannelAborted(_) => {
            // Abortive close: the endpoint sees a reset, not a clean end.
            if let Err(e) = socket2::SockRef::from(&endpoint).set_linger(Some(Duration::ZERO)) {
                tracing::debug!(%id, "cannot set SO_LINGER on the endpoint socket: {e}");
            }
        }
        RelayEnd::EndpointClosed | RelayEnd::EndpointFailed(_) => {}
    }
    drop(endpoint);
    if let RelayEnd::EndpointClosed = end {
        // The endpoint finished its answer: make sure the server has it all
        // before CLOSE (see Channel::close_after_delivery).
        channel.close_after_delivery(CLOSE_SETTLE_LIMIT).await;
    }
    // Dropping the channel closes it: CLOSE follows queued data.
    drop(channel);
    end
}

/// Both directions of one channel, driven by one task without copying
/// payload in user space: reads from the endpoint are split off the read
/// buffer and queued on the channel as they are; chunks from the channel
/// are written to the endpoint as they arrived, several per vectored write.
struct Relay<'a> {
    channel: &'a mut Channel,
    endpoint: &'a mut TcpStream,
    /// Endpoint -> channel.
    down: Inbox,
    /// The channel refuses data (the server closed it): the endpoint is no
    /// longer read; the other direction delivers what arrived, then ends.
    down_done: bool,
    /// From the channel, not yet written to the endpoint.
    up: Outbox,
}

impl Relay<'_> {
    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        for _ in 0..MAX_STEPS_PER_POLL {
            let mut progress = false;
            match self.poll_to_endpoint(cx) {
                Poll::Ready(Ok(())) => progress = true,
                Poll::Ready(Err(end)) => return Poll::Ready(end),
                Poll::Pending => {}
            }
            if !self.down_done {
                match self.poll_to_channel(cx) {
                    Poll::Ready(Ok(())) => progress = true,
                    Poll::Ready(Err(end)) => return Poll::Ready(end),
                    Poll::Pending => {}
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // Still busy: let other tasks run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// One step channel -> endpoint. `Ready(Ok)`: something happened.
    fn poll_to_endpoint(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RelayEnd>> {
        self.up
            .poll_forward(cx, self.channel, self.endpoint)
            .map_err(|end| match end {
                OutboxEnd::ChannelClosed => RelayEnd::ChannelClosed,
                OutboxEnd::ChannelFailed(e) => RelayEnd::ChannelAborted(e),
                OutboxEnd::WriteFailed(e) => RelayEnd::EndpointFailed(e),
            })
    }

    /// One step endpoint -> channel. `Ready(Ok)`: something happened.
    fn poll_to_channel(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RelayEnd>> {
        match self.down.poll_forward(cx, self.channel, self.endpoint) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(InboxEnd::Eof)) => Poll::Ready(Err(RelayEnd::EndpointClosed)),
            Poll::Ready(Err(InboxEnd::ChannelRefused(e)))
                if e.kind() == io::ErrorKind::ConnectionAborted =>
            {
                Poll::Ready(Err(RelayEnd::ChannelAborted(e)))
            }
            Poll::Ready(Err(InboxEnd::ChannelRefused(_))) => {
                // The server closed the channel: the other direction still
                // delivers what arrived before CLOSE, then ends.
                self.down_done = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(InboxEnd::ReadFailed(e))) => {
                Poll::Ready(Err(RelayEnd::EndpointFailed(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// `addr` with `:port` appended when it has none (`host`, `1.2.3.4`, `::1`
/// and `[::1]` get it; `host:80` and `[::1]:80` are kept).
pub(crate) fn with_default_port(addr: &str, port: u16) -> String {
    let addr = addr.trim();
    if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
        return std::net::SocketAddr::new(ip, port).to_string();
    }
    if let Some(inner) = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
        return format!("[{inner}]:{port}");
    }
    if addr.contains(':') {
        addr.to_string()
    } else {
        format!("{addr}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_port_is_added_only_when_missing() {
        assert_eq!(with_default_port("localhost", 443), "localhost:443");
        assert_eq!(with_default_port("localhost:8123", 443), "localhost:8123");
        assert_eq!(with_default_port("127.0.0.1", 443), "127.0.0.1:443");
        assert_eq!(with_default_port("::1", 443), "[::1]:443");
        assert_eq!(with_default_port("[::1]", 443), "[::1]:443");
        assert_eq!(with_default_port("[::1]:80", 443), "[::1]:80");
        assert_eq!(
            EndpointConnector::new("example.org").endpoint(),
            "example.org:443"
        );
    }
}
