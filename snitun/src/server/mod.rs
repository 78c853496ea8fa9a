//! The public server: SNI proxy and peer listener.
//!
//! Devices (client peers) connect to the peer port, prove themselves with a
//! Fernet token and the AES challenge, and keep one multiplexed link open.
//! Callers connect to the SNI port with TLS; the server reads the host name
//! of their ClientHello and relays their stream, still encrypted end to
//! end, over a channel of the link of the device serving that name. In
//! single-port mode one port takes both, told apart by the first bytes.
//!
//! ```no_run
//! # async fn run() -> snitun::Result<()> {
//! use snitun::server::Server;
//! use snitun::token::KeyRing;
//!
//! let keys = KeyRing::from_strings(["<fernet key, url-safe base64>"])?;
//! let server = Server::builder(keys)
//!     .sni_listen("0.0.0.0:443".parse().unwrap())
//!     .peer_listen("0.0.0.0:8080".parse().unwrap())
//!     .bind()
//!     .await?;
//! println!("listening on {:?}", server.local_addrs());
//! server.run_until(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! Every task the server starts ends when it shuts down: listeners stop
//! accepting, every peer's link is shut down and every caller is dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::handshake::HandshakeConfig;
use crate::mux::MuxConfig;
use crate::token::KeyRing;

mod admission;
mod listen;
mod peer_listener;
pub mod proxy_protocol;
mod registry;
mod single_port;
pub mod sni;
mod sni_proxy;

pub use admission::Refusals;
pub use registry::{PeerEvent, PeerInfo};

use admission::Admission;

use listen::PortKind;
use registry::Registry;
use tokio_util::task::TaskTracker;

/// How long [`Server::run_until`] waits for its tasks after a shutdown
/// before it returns anyway (the reference waits 10 s for its peers).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Server-side time limits (the reference's values by default) and
/// admission limits (the reference has none; ours are far above what one
/// server serves normally, and bound what strangers can make it hold).
///
/// Beyond an admission limit new work is refused cleanly (the new
/// connection is closed, or the new peer turned away) and existing tunnels
/// are not touched; refusals are counted in
/// [`ServerHandle::refusals`] and the `snitun.limits.refused` metric, and
/// logged at most once per 10 s per limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// SNI port: the PROXY header (if enabled) and the first TLS record
    /// must arrive within this (2 s).
    pub client_hello_timeout: Duration,
    /// Single-port mode: the PROXY header (if enabled) and the first bytes
    /// must arrive within this (10 s).
    pub single_port_timeout: Duration,
    /// A caller connection that moves no byte in either direction for this
    /// long is closed (90 s; the reference closes after 90-120 s).
    pub caller_idle_timeout: Duration,
    /// How often a connected peer's token expiry is checked again (4 h).
    pub revalidate_interval: Duration,
    /// Peer connections in their handshake (token and challenge) at once
    /// (1,024); more are closed at once.
    pub max_handshakes: usize,
    /// Registered peers (100,000); an authenticated peer beyond this is
    /// turned away (one replacing a connected peer's hostname is not).
    pub max_peers: usize,
    /// Open channels on one peer's link (10,000); a caller beyond this is
    /// closed.
    pub max_channels_per_peer: usize,
    /// Caller connections waiting for their ClientHello (or, in
    /// single-port mode, their first bytes) at once (10,000).
    pub max_pending_hellos: usize,
    /// Bytes a caller may send before its ClientHello is complete (32 KiB;
    /// a ClientHello record is at most 16 KiB).
    pub max_hello_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            client_hello_timeout: Duration::from_secs(2),
            single_port_timeout: Duration::from_secs(10),
            caller_idle_timeout: Duration::from_secs(90),
            revalidate_interval: Duration::from_secs(4 * 3600),
            max_handshakes: 1024,
            max_peers: 100_000,
            max_channels_per_peer: 10_000,
            max_pending_hellos: 10_000,
            max_hello_bytes: 32 * 1024,
        }
    }
}

/// The addresses a server listens on (with the ports actually bound, so
/// port 0 shows the port the system chose).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BoundAddrs {
    /// SNI ports (callers).
    pub sni: Vec<SocketAddr>,
    /// Peer ports (devices).
    pub peer: Vec<SocketAddr>,
    /// Single-port listeners (both).
    pub listen: Vec<SocketAddr>,
}

/// What every task of a server shares.
pub(crate) struct Context {
    pub(crate) keys: KeyRing,
    pub(crate) registry: Registry,
    pub(crate) proxy_protocol: bool,
    pub(crate) mux_config: MuxConfig,
    pub(crate) handshake: HandshakeConfig,
    pub(crate) limits: ServerLimits,
    pub(crate) admission: Admission,
    /// Cancelled when the server shuts down.
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: TaskTracker,
}

/// Configures and binds a [`Server`]; from [`Server::builder`].
#[derive(Debug)]
pub struct ServerBuilder {
    keys: KeyRing,
    sni: Vec<SocketAddr>,
    peer: Vec<SocketAddr>,
    listen: Vec<SocketAddr>,
    proxy_protocol: bool,
    throttling: Option<Option<u32>>,
    mux_config: MuxConfig,
    handshake: HandshakeConfig,
    limits: ServerLimits,
}

impl ServerBuilder {
    /// Listen for callers (TLS with SNI) on `addr` (dual-port mode).
    /// Repeatable; IPv4 and IPv6 addresses may be mixed.
    pub fn sni_listen(mut self, addr: SocketAddr) -> Self {
        self.sni.push(addr);
        self
    }

    /// Listen for client peers on `addr` (dual-port mode). Repeatable.
    pub fn peer_listen(mut self, addr: SocketAddr) -> Self {
        self.peer.push(addr);
        self
    }

    /// Listen for callers and peers on one port (single-port mode).
    /// Repeatable, and may be combined with dual-port listeners.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen.push(addr);
        self
    }

    /// Expect a PROXY protocol (v1 or v2) header on every caller connection
    /// and report its source address to the peer (off by default). Enable
    /// only behind a trusted proxy: anyone else could claim any address.
    pub fn proxy_protocol(mut self, enabled: bool) -> Self {
        self.proxy_protocol = enabled;
        self
    }

    /// Throttle every peer link: after each sent frame of at least 8 KiB,
    /// sleep 1/N s. Overrides the throttling of [`mux_config`](Self::mux_config).
    pub fn throttling(mut self, messages_per_second: Option<u32>) -> Self {
        self.throttling = Some(messages_per_second);
        self
    }

    /// Limits of the peer links (defaults: [`MuxConfig::default`]).
    pub fn mux_config(mut self, config: MuxConfig) -> Self {
        self.mux_config = config;
        self
    }

    /// Limits of the peer handshake.
    pub fn handshake_config(mut self, config: HandshakeConfig) -> Self {
        self.handshake = config;
        self
    }

    /// Time limits of callers and peers.
    pub fn limits(mut self, limits: ServerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Bind every address now (port 0 picks a free port), so the addresses
    /// are known before the server runs.
    ///
    /// # Errors
    /// [`Error::Config`] when no address is given, SNI addresses come
    /// without peer addresses (or the reverse) and no single-port address,
    /// or throttling is 0; [`Error::Io`] when an address cannot be bound
    /// (the message names it).
    pub async fn bind(self) -> Result<Server> {
        let single = !self.listen.is_empty();
        if self.sni.is_empty() && self.peer.is_empty() && !single {
            return Err(Error::Config(
                "no listen address: give SNI and peer addresses, or a single-port address".into(),
            ));
        }
        if !single && (self.sni.is_empty() != self.peer.is_empty()) {
            return Err(Error::Config(
                "dual-port mode needs both an SNI address and a peer address".into(),
            ));
        }
        let mut mux_config = self.mux_config;
        if let Some(throttling) = self.throttling {
            mux_config.throttling = throttling;
        }
        if mux_config.throttling == Some(0) {
            return Err(Error::Config(
                "throttling must be at least 1 message/s".into(),
            ));
        }

        let mut listeners = Vec::new();
        let mut addrs = BoundAddrs::default();
        for (kind, wanted, bound) in [
            (PortKind::Sni, &self.sni, &mut addrs.sni),
            (PortKind::Peer, &self.peer, &mut addrs.peer),
            (PortKind::Single, &self.listen, &mut addrs.listen),
        ] {
            for addr in wanted {
                let listener = listen::bind(*addr)?;
                bound.push(listener.local_addr()?);
                listeners.push((listener, kind));
            }
        }

        let ctx = Arc::new(Context {
            keys: self.keys,
            registry: Registry::default(),
            proxy_protocol: self.proxy_protocol,
            mux_config,
            handshake: self.handshake,
            limits: self.limits,
            admission: Admission::default(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        let finished = CancellationToken::new();
        let handle = ServerHandle {
            ctx: ctx.clone(),
            addrs: Arc::new(addrs),
            finished: finished.clone(),
        };
        Ok(Server {
            handle,
            listeners,
            _finish: FinishGuard { ctx, finished },
        })
    }
}

/// Marks the server finished (and cancels its tasks) when the server's run
/// ends or the server is dropped unrun.
struct FinishGuard {
    ctx: Arc<Context>,
    finished: CancellationToken,
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        self.ctx.cancel.cancel();
        self.finished.cancel();
    }
}

/// A bound SniTun server, ready to run.
///
/// Built with [`Server::builder`]; run it with [`run_until`](Self::run_until)
/// or [`spawn`](Self::spawn). Dropping it unrun closes its sockets.
pub struct Server {
    handle: ServerHandle,
    listeners: Vec<(TcpListener, PortKind)>,
    _finish: FinishGuard,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addrs", &self.handle.addrs)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Start configuring a server that accepts tokens opened by any key of
    /// `keys`.
    pub fn builder(keys: KeyRing) -> ServerBuilder {
        ServerBuilder {
            keys,
            sni: Vec::new(),
            peer: Vec::new(),
            listen: Vec::new(),
            proxy_protocol: false,
            throttling: None,
            mux_config: MuxConfig::default(),
            handshake: HandshakeConfig::default(),
            limits: ServerLimits::default(),
        }
    }

    /// The bound addresses.
    pub fn local_addrs(&self) -> BoundAddrs {
        (*self.handle.addrs).clone()
    }

    /// A handle to watch and stop the server.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Serve until `shutdown` completes (or a handle shuts the server down),
    /// then shut down gracefully: stop accepting, shut every peer's link
    /// down, drop every caller, and wait (up to 10 s) for every task to end.
    ///
    /// # Errors
    /// None at present: binding errors are reported by
    /// [`ServerBuilder::bind`].
    pub async fn run_until<F>(self, shutdown: F) -> Result<()>
    where
        F: Future<Output = ()>,
    {
        let Server {
            handle,
            listeners,
            _finish,
        } = self;
        let ctx = &handle.ctx;
        for (listener, kind) in listeners {
            ctx.tasks
                .spawn(listen::accept_loop(ctx.clone(), listener, kind));
        }
        tracing::info!(addrs = ?handle.addrs, "SniTun server running");
        tokio::select! {
            _ = shutdown => {}
            _ = ctx.cancel.cancelled() => {}
        }
        tracing::info!("SniTun server shutting down");
        ctx.cancel.cancel();
        ctx.registry.end_all("server shutting down");
        ctx.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, ctx.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = ctx.tasks.len(),
                "server tasks still running after the shutdown grace period"
            );
        }
        drop(_finish);
        tracing::info!("SniTun server stopped");
        Ok(())
    }

    /// Run the server on the current Tokio runtime in the background; stop
    /// it with [`ServerHandle::shutdown`].
    pub fn spawn(self) -> ServerHandle {
        let handle = self.handle();
        tokio::spawn(async move {
            let _ = self.run_until(std::future::pending()).await;
        });
        handle
    }
}

/// A cheap, cloneable handle to a server: its peers, events, and shutdown.
#[derive(Clone)]
pub struct ServerHandle {
    ctx: Arc<Context>,
    addrs: Arc<BoundAddrs>,
    finished: CancellationToken,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addrs", &self.addrs)
            .field("peers", &self.peer_count())
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// How often each admission limit of [`ServerLimits`] has refused work.
    pub fn refusals(&self) -> Refusals {
        self.ctx.admission.refusals()
    }

    /// Peer connections in their handshake and callers waiting for their
    /// ClientHello, now.
    pub fn pending(&self) -> (usize, usize) {
        self.ctx.admission.in_progress()
    }

    /// A snapshot of every connected peer, sorted by hostname.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.ctx
            .registry
            .entries()
            .iter()
            .map(|entry| entry.info())
            .collect()
    }

    /// How many peers are connected.
    pub fn peer_count(&self) -> usize {
        self.ctx.registry.len()
    }

    /// Every hostname and alias served now, sorted.
    pub fn hostnames(&self) -> Vec<String> {
        self.ctx.registry.hostnames()
    }

    /// Receive peer connect and disconnect events from now on. A receiver
    /// that falls more than 1024 events behind misses the oldest (it gets
    /// `RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.ctx.registry.subscribe()
    }

    /// The bound addresses.
    pub fn local_addrs(&self) -> BoundAddrs {
        (*self.addrs).clone()
    }

    /// Shut the server down gracefully and wait until all its tasks have
    /// ended, at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] when tasks are still running after `timeout`.
    pub async fn shutdown(&self, timeout: Duration) -> Result<()> {
        self.ctx.cancel.cancel();
        self.ctx.registry.end_all("server shutting down");
        self.ctx.tasks.close();
        tokio::time::timeout(timeout, self.ctx.tasks.wait())
            .await
            .map_err(|_| Error::Timeout {
                during: "waiting for the server's tasks to end",
            })
    }

    /// Wait until the server has stopped (its run ended, or it was dropped
    /// without running).
    pub async fn closed(&self) {
        self.finished.cancelled().await;
    }

    /// True once the server has been told to shut down.
    pub fn is_shutting_down(&self) -> bool {
        self.ctx.cancel.is_cancelled()
    }
}
