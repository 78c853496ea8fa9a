//! Listening sockets and the accept loop.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

use super::Context;
use super::{peer_listener, single_port, sni_proxy};

/// The listen backlog asked for (the kernel caps it at its own maximum,
/// `net.core.somaxconn` on Linux). The reference asks for 80 000.
const LISTEN_BACKLOG: i32 = 80_000;

/// First pause after an accept error such as EMFILE; doubled up to
/// [`ACCEPT_BACKOFF_MAX`] while the errors go on.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What a listening socket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortKind {
    /// Callers (TLS with SNI).
    Sni,
    /// Client peers (token and handshake).
    Peer,
    /// Both, told apart by their first bytes.
    Single,
}

impl PortKind {
    fn name(self) -> &'static str {
        match self {
            PortKind::Sni => "SNI",
            PortKind::Peer => "peer",
            PortKind::Single => "single-port",
        }
    }
}

/// Bind a listening TCP socket: `SO_REUSEADDR` (on Windows
/// `SO_EXCLUSIVEADDRUSE` instead, see [`exclusive_address_use`]),
/// `IPV6_V6ONLY` for IPv6 (so `[::]` and `0.0.0.0` can both be bound on one
/// port), a large backlog.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let context = |e: io::Error| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"));
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(context)?;
    // On Unix this lets a restarted server bind while connections of the
    // previous one linger in TIME_WAIT (on Linux a second listener on the
    // port still fails). Windows gives the same name another meaning: a
    // socket that sets it may bind over a port another socket is listening
    // on and take its connections. Windows rebinds over TIME_WAIT without
    // it.
    #[cfg(not(windows))]
    socket.set_reuse_address(true).map_err(context)?;
    #[cfg(windows)]
    exclusive_address_use(&socket).map_err(context)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(context)?;
    }
    socket.set_nonblocking(true).map_err(context)?;
    socket.bind(&addr.into()).map_err(context)?;
    socket.listen(LISTEN_BACKLOG).map_err(context)?;
    TcpListener::from_std(socket.into()).map_err(context)
}

/// Set `SO_EXCLUSIVEADDRUSE` on a socket that is not bound yet.
///
/// Why: Windows protects a listener that sets neither option only from
/// other user accounts; any process of the same account could still bind
/// the port with `SO_REUSEADDR` and silently receive some of the callers
/// and peers meant for this server. With this option that bind
/// fails instead, which is what a second listener gets on Linux.
///
/// The cost: while a connection accepted by an earlier listener on the
/// port is still open (not merely in TIME_WAIT), a new listener cannot
/// bind it, so a restart can fail with "address in use" until that
/// connection ends. A clear error at start is preferred to a port that
/// may be shared without anyone noticing.
///
/// socket2 has no setter for it, so the Winsock call comes from
/// `windows-sys` (already what tokio and socket2 use on Windows).
#[cfg(windows)]
fn exclusive_address_use(socket: &Socket) -> io::Result<()> {
    use std::os::windows::io::AsRawSocket;
    use windows_sys::Win32::Networking::WinSock::{
        SO_EXCLUSIVEADDRUSE, SOCKET, SOCKET_ERROR, SOL_SOCKET, WSAGetLastError, setsockopt,
    };

    let handle = SOCKET::try_from(socket.as_raw_socket())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "socket handle out of range"))?;
    let on: i32 = 1;
    let len = i32::try_from(std::mem::size_of_val(&on)).unwrap_or(i32::MAX);
    // SAFETY: `handle` is the open socket `socket` owns for the whole
    // call; the option value is a live, readable int of `len` bytes.
    let rc = unsafe {
        setsockopt(
            handle,
            SOL_SOCKET,
            SO_EXCLUSIVEADDRUSE,
            std::ptr::from_ref(&on).cast(),
            len,
        )
    };
    if rc == SOCKET_ERROR {
        // SAFETY: reads the calling thread's last Winsock error.
        return Err(io::Error::from_raw_os_error(unsafe { WSAGetLastError() }));
    }
    Ok(())
}

/// Errors that concern one connection only: the next accept may succeed
/// at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Accept connections until the server shuts down, one task each.
pub(crate) async fn accept_loop(ctx: Arc<Context>, listener: TcpListener, kind: PortKind) {
    let local = listener.local_addr().ok();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, remote)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                ctx.tasks.spawn(serve(ctx.clone(), stream, remote, kind));
            }
            Err(e) if is_connection_error(&e) => {
                tracing::debug!(error = %e, "accept: connection failed before it was taken");
            }
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM...: retrying at once would
                // spin; pause, and let existing connections finish.
                tracing::warn!(
                    error = %e,
                    listener = ?local,
                    pause_ms = backoff.as_millis() as u64,
                    "accept failed; pausing before the next attempt"
                );
                tokio::select! {
                    _ = ctx.cancel.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
    tracing::debug!(listener = ?local, port = kind.name(), "stopped accepting");
}

async fn serve(ctx: Arc<Context>, stream: TcpStream, remote: SocketAddr, kind: PortKind) {
    match kind {
        PortKind::Sni => sni_proxy::serve_caller(ctx, stream, remote).await,
        PortKind::Peer => peer_listener::serve_peer(ctx, stream, remote, Default::default()).await,
        PortKind::Single => single_port::serve(ctx, stream, remote).await,
    }
}
