//! What a channel is bridged to.
//!
//! The client hands every channel the server opens (after the access list
//! let it through) to a [`Connector`]. [`EndpointConnector`] is the
//! reference behaviour: a TCP connection to a local `host:port` (the TLS
//! server of the device) and bytes relayed both ways. Bindings and
//! applications provide their own connectors, for example to serve TLS
//! in-process on the channel itself (it is `AsyncRead + AsyncWrite`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Result};
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
/// Bytes read at once from either side of a relay.
const RELAY_BUFFER: usize = 64 * 1024;

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
async fn relay(channel: Channel, mut endpoint: TcpStream) -> RelayEnd {
    let id: ChannelId = channel.id();
    let (mut channel_read, mut channel_write) = tokio::io::split(channel);
    let end = {
        let (mut endpoint_read, mut endpoint_write) = endpoint.split();
        tokio::select! {
            end = to_endpoint(&mut channel_read, &mut endpoint_write) => end,
            end = to_channel(&mut endpoint_read, &mut channel_write) => end,
        }
    };
    if let RelayEnd::ChannelAborted(_) = end {
        // Abortive close: the endpoint sees a reset, not a clean end.
        if let Err(e) = socket2::SockRef::from(&endpoint).set_linger(Some(Duration::ZERO)) {
            tracing::debug!(%id, "cannot set SO_LINGER on the endpoint socket: {e}");
        }
    }
    drop(endpoint);
    let mut channel = channel_read.unsplit(channel_write);
    if let RelayEnd::EndpointClosed = end {
        // The endpoint finished its answer: make sure the server has it all
        // before CLOSE (see Channel::close_after_delivery).
        channel.close_after_delivery(CLOSE_SETTLE_LIMIT).await;
    }
    // Dropping the channel closes it: CLOSE follows queued data.
    drop(channel);
    end
}

/// Channel to endpoint; the channel's clean end becomes a FIN.
async fn to_endpoint<R, W>(from: &mut R, to: &mut W) -> RelayEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(RELAY_BUFFER);
    loop {
        buf.reserve(RELAY_BUFFER);
        match from.read_buf(&mut buf).await {
            Ok(0) => {
                let _ = to.shutdown().await;
                return RelayEnd::ChannelClosed;
            }
            Ok(_) => {
                if let Err(e) = to.write_all_buf(&mut buf).await {
                    return RelayEnd::EndpointFailed(e);
                }
            }
            Err(e) => return RelayEnd::ChannelAborted(e),
        }
    }
}

/// Endpoint to channel.
async fn to_channel<R, W>(from: &mut R, to: &mut W) -> RelayEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(RELAY_BUFFER);
    loop {
        buf.reserve(RELAY_BUFFER);
        match from.read_buf(&mut buf).await {
            Ok(0) => return RelayEnd::EndpointClosed,
            Ok(_) => {
                if let Err(e) = to.write_all_buf(&mut buf).await {
                    if e.kind() == io::ErrorKind::ConnectionAborted {
                        return RelayEnd::ChannelAborted(e);
                    }
                    // The server closed the channel: the other direction
                    // still delivers what arrived before CLOSE, then ends.
                    return std::future::pending().await;
                }
            }
            Err(e) => return RelayEnd::EndpointFailed(e),
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
