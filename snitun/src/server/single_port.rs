//! Single-port mode: callers and peers on one port, told apart by their
//! first bytes.
//!
//! After an optional PROXY protocol header, the first bytes must arrive
//! within [`single_port_timeout`](super::ServerLimits::single_port_timeout):
//! a TLS handshake record (0x16) goes the SNI way, a Fernet token (`gA`) the
//! peer way, with the bytes read so far handed on; anything else is closed.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::Context;
use super::admission::Limit;
use super::peer_listener::serve_peer;
use super::proxy_protocol::read_proxy_header;
use super::sni_proxy::{Source, serve_tls};
use crate::error::Error;

/// The most bytes read before choosing a path (as the reference).
const FIRST_READ_MAX: usize = 2048;

/// TLS content type of a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// How every Fernet token starts (version byte 0x80, base64).
const TOKEN_START: &[u8] = b"gA";

/// What the first bytes of a connection are.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Tls,
    Peer,
    Unknown,
    /// Too few bytes to tell.
    NeedMore,
}

fn classify(buf: &[u8]) -> Kind {
    match buf.first() {
        None => Kind::NeedMore,
        Some(&TLS_HANDSHAKE) => Kind::Tls,
        Some(_) if buf.starts_with(TOKEN_START) => Kind::Peer,
        Some(_) if TOKEN_START.starts_with(buf) => Kind::NeedMore,
        Some(_) => Kind::Unknown,
    }
}

/// Serve one connection on a single-port listener.
pub(crate) async fn serve(ctx: Arc<Context>, mut stream: TcpStream, remote: SocketAddr) {
    // Until it is known to be a caller or a peer, a connection counts as a
    // caller waiting to be routed.
    let Some(pending) =
        ctx.admission
            .enter(Limit::PendingHellos, ctx.limits.max_pending_hellos, remote)
    else {
        return;
    };
    let mut buf = BytesMut::new();
    let read = async {
        let source = if ctx.proxy_protocol {
            read_proxy_header(&mut stream, &mut buf)
                .await?
                .and_then(|header| header.source)
        } else {
            None
        };
        loop {
            match classify(&buf) {
                Kind::NeedMore => {}
                kind => return Ok::<_, Error>((source, kind)),
            }
            let room = FIRST_READ_MAX.saturating_sub(buf.len());
            if room == 0 {
                return Ok((source, Kind::Unknown));
            }
            buf.reserve(room);
            let read = (&mut stream).take(room as u64).read_buf(&mut buf).await?;
            if read == 0 {
                return Err(Error::ConnectionClosed {
                    during: "waiting for the first bytes",
                });
            }
        }
    };
    let (source, kind) = tokio::select! {
        _ = ctx.cancel.cancelled() => return,
        read = timeout(ctx.limits.single_port_timeout, read) => match read {
            Ok(Ok(found)) => found,
            Ok(Err(e @ Error::InvalidProxyHeader(_))) => {
                tracing::warn!(%remote, error = %e, "dropping a connection: invalid PROXY protocol header");
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "dropping a connection before its first bytes");
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "dropping a connection: no first bytes in time");
                return;
            }
        },
    };
    drop(pending);
    match kind {
        Kind::Tls => serve_tls(ctx, stream, remote, buf, Source::Known(source)).await,
        Kind::Peer => serve_peer(ctx, stream, remote, buf).await,
        Kind::Unknown | Kind::NeedMore => {
            tracing::debug!(%remote, "dropping a connection: neither a ClientHello nor a token");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_pick_the_path() {
        assert_eq!(classify(b""), Kind::NeedMore);
        assert_eq!(classify(b"g"), Kind::NeedMore);
        assert_eq!(classify(b"gA"), Kind::Peer);
        assert_eq!(classify(b"gAAAAB"), Kind::Peer);
        assert_eq!(classify(&[0x16]), Kind::Tls);
        assert_eq!(classify(&[0x16, 3, 1]), Kind::Tls);
        assert_eq!(classify(b"GET / HTTP/1.1"), Kind::Unknown);
        assert_eq!(classify(b"gB"), Kind::Unknown);
    }
}
