//! Connecting to the server and serving a session: handshake, channels,
//! keep-alive, reconnecting.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zeroize::Zeroize;

use super::access_list::AccessList;
use super::connector::{Connector, EndpointConnector, with_default_port};
use super::reconnect::{Backoff, ReconnectPolicy};
use crate::crypto::{Cipher, IV_SIZE, KEY_SIZE, Role};
use crate::error::{Error, Result};
use crate::handshake::{HandshakeConfig, client_handshake};
use crate::mux::frame::PROTOCOL_VERSION;
use crate::mux::{Channel, ChannelId, LinkEnd, LinkStats, Multiplexer, MuxConfig};

/// The server's peer port when the address has none (the reference's).
pub const DEFAULT_SERVER_PORT: u16 = 8080;
/// Limit of the TCP connect to the server (the reference's 60 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the client pings the server (the reference's 50 s).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(50);
/// A link that stayed up this long counts as healthy (the back-off starts
/// over after it).
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// A link the server closes this soon, before sending a single byte, most
/// likely failed the challenge.
const EARLY_CLOSE_WINDOW: Duration = Duration::from_secs(10);
/// How long channel tasks may take to wind down once their link is gone,
/// before they are cancelled.
const WIND_DOWN_GRACE: Duration = Duration::from_secs(2);
/// Events buffered per subscriber; a subscriber that falls further behind
/// skips the oldest ([`broadcast::error::RecvError::Lagged`]).
const EVENT_CAPACITY: usize = 256;

/// Entry point of the client side: `Client::builder(server)`.
///
/// See the [module documentation](super) for an example.
#[derive(Debug, Clone, Copy)]
pub struct Client;

impl Client {
    /// Start configuring a client for the server's peer port at `server`
    /// (`host:port`; without a port, 8080).
    pub fn builder(server: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(server.into())
    }
}

/// Something that happened to a session, from [`Session::subscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A link is up (the handshake is done). [`ClientBuilder::connect`]
    /// returning is the first one; later ones follow reconnects.
    Connected,
    /// The link ended. The last event of a session is always a
    /// `Disconnected` with `will_reconnect: false`.
    Disconnected {
        /// Why, in words (the [`LinkEnd`] display, or an explanation).
        reason: String,
        /// Whether the client will try to connect again.
        will_reconnect: bool,
    },
    /// A channel's connector failed (for [`EndpointConnector`]: the
    /// endpoint could not be reached). The channel was closed; the tunnel
    /// stays up.
    EndpointError(EndpointError),
}

/// A connector failure for one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointError {
    /// The channel.
    pub channel: ChannelId,
    /// The caller's address as the server announced it.
    pub caller: IpAddr,
    /// What the connector connects to ([`Connector::endpoint`]).
    pub endpoint: String,
    /// The error, in words.
    pub error: String,
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "endpoint {} for caller {} (channel {}): {}",
            self.endpoint, self.caller, self.channel, self.error
        )
    }
}

impl std::error::Error for EndpointError {}

type EndpointErrorCallback = Arc<dyn Fn(&EndpointError) + Send + Sync + 'static>;

/// Configuration of a client; [`connect`](Self::connect) starts the session.
pub struct ClientBuilder {
    server: String,
    token: Vec<u8>,
    aes: Option<([u8; KEY_SIZE], [u8; IV_SIZE])>,
    cipher: Cipher,
    protocol_version: u8,
    connector: Option<Arc<dyn Connector>>,
    access_list: AccessList,
    throttling: Option<Option<u32>>,
    reconnect: Option<ReconnectPolicy>,
    mux_config: MuxConfig,
    handshake_config: HandshakeConfig,
    connect_timeout: Duration,
    ping_interval: Duration,
    on_endpoint_error: Option<EndpointErrorCallback>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("server", &self.server)
            .field("token", &format_args!("<{} bytes>", self.token.len()))
            .field("aes", &self.aes.as_ref().map(|_| "<set>"))
            .field("cipher", &self.cipher)
            .field("protocol_version", &self.protocol_version)
            .field("connector", &self.connector.as_ref().map(|c| c.endpoint()))
            .field("access_list", &self.access_list)
            .field("throttling", &self.throttling)
            .field("reconnect", &self.reconnect)
            .field("mux_config", &self.mux_config)
            .field("handshake_config", &self.handshake_config)
            .field("connect_timeout", &self.connect_timeout)
            .field("ping_interval", &self.ping_interval)
            .finish_non_exhaustive()
    }
}

impl Drop for ClientBuilder {
    fn drop(&mut self) {
        self.token.zeroize();
        if let Some((key, iv)) = self.aes.as_mut() {
            key.zeroize();
            iv.zeroize();
        }
    }
}

impl ClientBuilder {
    fn new(server: String) -> ClientBuilder {
        ClientBuilder {
            server,
            token: Vec::new(),
            aes: None,
            cipher: Cipher::AesCbc,
            protocol_version: PROTOCOL_VERSION,
            connector: None,
            access_list: AccessList::allow_all(),
            throttling: None,
            reconnect: None,
            mux_config: MuxConfig::default(),
            handshake_config: HandshakeConfig::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            ping_interval: DEFAULT_PING_INTERVAL,
            on_endpoint_error: None,
        }
    }

    /// The Fernet token from the session master, sent as is (required).
    pub fn token(mut self, token: impl Into<Vec<u8>>) -> Self {
        self.token.zeroize();
        self.token = token.into();
        self
    }

    /// The AES key and IV the token was minted with (required; the IV is
    /// used by aes-cbc only).
    pub fn aes(mut self, key: [u8; KEY_SIZE], iv: [u8; IV_SIZE]) -> Self {
        self.aes = Some((key, iv));
        self
    }

    /// The cipher the token names (default aes-cbc).
    pub fn cipher(mut self, cipher: Cipher) -> Self {
        self.cipher = cipher;
        self
    }

    /// The protocol version to speak, 0 to 2 (default 2, the newest; the
    /// client does not negotiate it, as in the reference).
    pub fn protocol_version(mut self, version: u8) -> Self {
        self.protocol_version = version;
        self
    }

    /// What channels are bridged to (required, or [`endpoint`](Self::endpoint)).
    pub fn connector(mut self, connector: impl Connector) -> Self {
        self.connector = Some(Arc::new(connector));
        self
    }

    /// [`connector`](Self::connector) with a connector already shared.
    pub fn shared_connector(mut self, connector: Arc<dyn Connector>) -> Self {
        self.connector = Some(connector);
        self
    }

    /// Relay channels to the TCP endpoint `addr` (`host:port`; without a
    /// port, 443): shorthand for an [`EndpointConnector`].
    pub fn endpoint(self, addr: impl Into<String>) -> Self {
        self.connector(EndpointConnector::new(addr))
    }

    /// Which callers are served (default: everyone).
    pub fn access_list(mut self, access_list: AccessList) -> Self {
        self.access_list = access_list;
        self
    }

    /// Throttle sending: after each frame of 8 KiB or more, sleep 1/N s
    /// (overrides [`MuxConfig::throttling`]).
    pub fn throttling(mut self, messages_per_second: Option<u32>) -> Self {
        self.throttling = Some(messages_per_second);
        self
    }

    /// Reconnect after the link ends (default `None`: the session ends
    /// with the link).
    pub fn reconnect(mut self, policy: Option<ReconnectPolicy>) -> Self {
        self.reconnect = policy;
        self
    }

    /// Limits and timeouts of the multiplexer (queues, idle timeout, ping
    /// timeout).
    pub fn mux_config(mut self, config: MuxConfig) -> Self {
        self.mux_config = config;
        self
    }

    /// Limits of the handshake (the client uses `challenge_timeout`).
    pub fn handshake_config(mut self, config: HandshakeConfig) -> Self {
        self.handshake_config = config;
        self
    }

    /// Limit of the TCP connect to the server (60 s).
    pub fn connect_timeout(mut self, limit: Duration) -> Self {
        self.connect_timeout = limit;
        self
    }

    /// How often to ping the server (50 s); the pong must come within the
    /// mux config's `ping_timeout`.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Called (on the channel's task) whenever a connector fails, as the
    /// reference's `endpoint_connection_error_callback`. The same error is
    /// also sent as [`ClientEvent::EndpointError`].
    pub fn on_endpoint_error(
        mut self,
        callback: impl Fn(&EndpointError) + Send + Sync + 'static,
    ) -> Self {
        self.on_endpoint_error = Some(Arc::new(callback));
        self
    }

    /// Connect and hand shake; once that is done, serve channels (and
    /// keep the link alive, and reconnect if enabled) on background tasks.
    ///
    /// Fails if the configuration is incomplete or the first connection or
    /// handshake fails, with or without a reconnect policy. With aes-cbc a
    /// wrong key or IV cannot be seen during the handshake: the server
    /// closes the link right after it, which ends the first link with an
    /// explanation.
    pub async fn connect(self) -> Result<Session> {
        let (session, _events) = self.connect_with_events().await?;
        Ok(session)
    }

    /// [`connect`](Self::connect), also returning a receiver subscribed
    /// before the first link was installed: it sees every event of the
    /// session, starting with the first [`ClientEvent::Connected`]. A
    /// [`Session::subscribe`] after `connect` returns can miss events of a
    /// link that ends at once (e.g. a server that rejected the AES key).
    pub async fn connect_with_events(
        mut self,
    ) -> Result<(Session, broadcast::Receiver<ClientEvent>)> {
        let settings = self.settings()?;
        let Some(connector) = self.connector.take() else {
            return Err(Error::Config(
                "no connector: set one with .connector(..) or .endpoint(..)".into(),
            ));
        };
        let link = establish(&settings).await?;
        tracing::info!(server = %settings.server, "connected");
        let (events, receiver) = broadcast::channel(EVENT_CAPACITY);
        let shared = Arc::new(Shared {
            settings,
            connector,
            access_list: std::mem::take(&mut self.access_list),
            on_endpoint_error: self.on_endpoint_error.take(),
            events,
            link: Mutex::new(None),
            stop: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            channel_tasks: TaskTracker::new(),
            supervisor: Mutex::new(None),
            finished: watch::channel(None).0,
            counters: Counters::default(),
            last_error: Mutex::new(None),
        });
        // The handle exists before the task runs, so `stop` can always be
        // reached.
        let session = Session {
            handle: Arc::new(Handle {
                shared: shared.clone(),
            }),
        };
        let link = shared.install(link);
        let supervisor = tokio::spawn(supervise(shared.clone(), link));
        *shared.supervisor() = Some(supervisor);
        Ok((session, receiver))
    }

    fn settings(&mut self) -> Result<Settings> {
        let Some((key, iv)) = self.aes else {
            return Err(Error::Config(
                "no AES key and IV: set them with .aes(key, iv)".into(),
            ));
        };
        if self.token.is_empty() {
            return Err(Error::Config("no token: set it with .token(..)".into()));
        }
        if self.protocol_version > PROTOCOL_VERSION {
            return Err(Error::Config(format!(
                "protocol version {} is not supported (0 to {PROTOCOL_VERSION})",
                self.protocol_version
            )));
        }
        if self.ping_interval.is_zero() {
            return Err(Error::Config("the ping interval must not be zero".into()));
        }
        let server = with_default_port(&self.server, DEFAULT_SERVER_PORT);
        if server.starts_with(':') {
            return Err(Error::Config(format!(
                "no server host in {:?}",
                self.server
            )));
        }
        let mut mux_config = self.mux_config.clone();
        if let Some(throttling) = self.throttling {
            mux_config.throttling = throttling;
        }
        Ok(Settings {
            server,
            token: std::mem::take(&mut self.token),
            key,
            iv,
            cipher: self.cipher,
            protocol_version: self.protocol_version,
            mux_config,
            handshake_config: self.handshake_config.clone(),
            connect_timeout: self.connect_timeout,
            ping_interval: self.ping_interval,
            reconnect: self.reconnect.clone(),
        })
    }
}

/// Counters of a session, from [`Session::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Whether a link is up now.
    pub connected: bool,
    /// Links established (the first one included).
    pub connects: u64,
    /// Reconnect attempts that failed.
    pub failed_attempts: u64,
    /// Channels handed to the connector.
    pub channels: u64,
    /// Channels refused by the access list.
    pub refused: u64,
    /// Channels whose connector failed.
    pub endpoint_errors: u64,
    /// Traffic of the current link, if one is up.
    pub link: Option<LinkStats>,
    /// The last reason a link ended or a reconnect attempt failed.
    pub last_error: Option<String>,
}

/// A running client session: a cheap handle to the background tasks.
///
/// Clones share the session. Dropping the last clone disconnects (the
/// tasks then end on their own); call [`disconnect`](Self::disconnect) to
/// wait until they have.
#[derive(Clone)]
pub struct Session {
    handle: Arc<Handle>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("server", &self.shared().settings.server)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl Session {
    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// Whether a link to the server is up now.
    pub fn is_connected(&self) -> bool {
        self.shared()
            .link()
            .as_ref()
            .is_some_and(|mux| mux.is_connected())
    }

    /// Receive the session's events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ClientEvent> {
        self.shared().events.subscribe()
    }

    /// Wait until the session is over for good: the link ended and no
    /// reconnect is configured (its reason), or
    /// [`disconnect`](Self::disconnect) was called (or every handle
    /// dropped): [`LinkEnd::Shutdown`]. By then every channel task has
    /// ended.
    pub async fn wait(&self) -> LinkEnd {
        let mut finished = self.shared().finished.subscribe();
        match finished.wait_for(Option::is_some).await {
            Ok(end) => end.clone().unwrap_or(LinkEnd::Shutdown),
            Err(_) => LinkEnd::Shutdown,
        }
    }

    /// Close the link, stop reconnecting and wait until every task of the
    /// session has ended. Calling it again (or on an ended session) returns
    /// at once.
    pub async fn disconnect(&self) {
        let shared = self.shared();
        shared.stop.cancel();
        self.wait().await;
        let supervisor = shared.supervisor().take();
        if let Some(supervisor) = supervisor {
            // It has set `finished`, its last step: this is immediate.
            let _ = supervisor.await;
        }
    }

    /// Counters and the current link's traffic.
    pub fn stats(&self) -> SessionStats {
        let shared = self.shared();
        let link = shared
            .link()
            .as_ref()
            .map(|mux| (mux.is_connected(), mux.stats()));
        let counters = &shared.counters;
        SessionStats {
            connected: link.is_some_and(|(up, _)| up),
            connects: counters.connects.load(Ordering::Relaxed),
            failed_attempts: counters.failed_attempts.load(Ordering::Relaxed),
            channels: counters.channels.load(Ordering::Relaxed),
            refused: counters.refused.load(Ordering::Relaxed),
            endpoint_errors: counters.endpoint_errors.load(Ordering::Relaxed),
            link: link.map(|(_, stats)| stats),
            last_error: shared.last_error().clone(),
        }
    }
}

/// Owned by the [`Session`] clones only: the last one dropped stops the
/// session.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

/// The fixed configuration of a session.
struct Settings {
    server: String,
    token: Vec<u8>,
    key: [u8; KEY_SIZE],
    iv: [u8; IV_SIZE],
    cipher: Cipher,
    protocol_version: u8,
    mux_config: MuxConfig,
    handshake_config: HandshakeConfig,
    connect_timeout: Duration,
    ping_interval: Duration,
    reconnect: Option<ReconnectPolicy>,
}

impl Drop for Settings {
    fn drop(&mut self) {
        self.token.zeroize();
        self.key.zeroize();
        self.iv.zeroize();
    }
}

#[derive(Default)]
struct Counters {
    connects: AtomicU64,
    failed_attempts: AtomicU64,
    channels: AtomicU64,
    refused: AtomicU64,
    endpoint_errors: AtomicU64,
}

/// State shared by the session handles and the background tasks.
struct Shared {
    settings: Settings,
    connector: Arc<dyn Connector>,
    access_list: AccessList,
    on_endpoint_error: Option<EndpointErrorCallback>,
    events: broadcast::Sender<ClientEvent>,
    /// The link being served, if one is.
    link: Mutex<Option<Arc<Multiplexer>>>,
    /// Disconnect: close the link, stop reconnecting.
    stop: CancellationToken,
    /// Cancel channel tasks that did not end by themselves.
    hard_stop: CancellationToken,
    channel_tasks: TaskTracker,
    /// The task running [`supervise`], until someone waits for it.
    supervisor: Mutex<Option<JoinHandle<()>>>,
    /// Set once, when the session is over.
    finished: watch::Sender<Option<LinkEnd>>,
    counters: Counters,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn link(&self) -> MutexGuard<'_, Option<Arc<Multiplexer>>> {
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn supervisor(&self) -> MutexGuard<'_, Option<JoinHandle<()>>> {
        self.supervisor.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn last_error(&self) -> MutexGuard<'_, Option<String>> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Make `link` the current link: counted, visible to
    /// [`Session::is_connected`], announced.
    fn install(&self, link: Multiplexer) -> Arc<Multiplexer> {
        let link = Arc::new(link);
        *self.link() = Some(link.clone());
        self.counters.connects.fetch_add(1, Ordering::Relaxed);
        self.emit(ClientEvent::Connected);
        link
    }

    fn emit(&self, event: ClientEvent) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }

    fn spawn_channel(self: &Arc<Self>, channel: Channel) {
        let shared = self.clone();
        self.channel_tasks
            .spawn(async move { shared.serve_channel(channel).await });
    }

    async fn serve_channel(&self, channel: Channel) {
        let id = channel.id();
        let caller = channel.peer_ip();
        if !self.access_list.permits(caller) {
            tracing::warn!(%id, %caller, "caller refused by the access list");
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            // Dropping the channel sends CLOSE.
            return;
        }
        self.counters.channels.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%id, %caller, "new channel");
        let serving = self.connector.serve(channel);
        let result = tokio::select! {
            result = serving => result,
            _ = self.hard_stop.cancelled() => {
                tracing::debug!(%id, "connector cancelled: the session is over");
                return;
            }
        };
        if let Err(e) = result {
            let error = EndpointError {
                channel: id,
                caller,
                endpoint: self.connector.endpoint(),
                error: e.to_string(),
            };
            tracing::error!("{error}");
            self.counters
                .endpoint_errors
                .fetch_add(1, Ordering::Relaxed);
            if let Some(callback) = &self.on_endpoint_error {
                callback(&error);
            }
            self.emit(ClientEvent::EndpointError(error));
        }
    }
}

/// TCP connect, handshake, multiplexer.
async fn establish(settings: &Settings) -> Result<Multiplexer> {
    let server = settings.server.as_str();
    let connect = TcpStream::connect(server);
    let mut stream = match tokio::time::timeout(settings.connect_timeout, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return Err(Error::Io(io::Error::new(
                e.kind(),
                format!("cannot connect to the server at {server}: {e}"),
            )));
        }
        Err(_) => {
            return Err(Error::Timeout {
                during: "connecting to the server",
            });
        }
    };
    stream.set_nodelay(true)?;
    let state = client_handshake(
        &mut stream,
        &settings.token,
        settings.cipher,
        &settings.key,
        &settings.iv,
        &settings.handshake_config,
    )
    .await
    .map_err(explain_handshake_error)?;
    Ok(Multiplexer::new_tcp(
        stream,
        state,
        settings.protocol_version,
        Role::Initiator,
        settings.mux_config.clone(),
    ))
}

/// A server that closes instead of sending the challenge refused the token.
fn explain_handshake_error(error: Error) -> Error {
    match error {
        Error::ConnectionClosed {
            during: "waiting for the challenge",
        } => Error::ConnectionClosed {
            during: "waiting for the challenge: the server refused the token \
                     (invalid, expired, or minted with a key the server does not hold)",
        },
        other => other,
    }
}

/// How one link ended.
struct LinkOutcome {
    end: LinkEnd,
    /// It answered a ping or stayed up a while: reconnecting starts over.
    healthy: bool,
}

/// The whole life of a session: serve links until it is over.
async fn supervise(shared: Arc<Shared>, first: Arc<Multiplexer>) {
    let mut backoff = shared.settings.reconnect.clone().map(Backoff::new);
    let mut link = first;
    let end = loop {
        let outcome = serve_link(&shared, link).await;
        if shared.stop.is_cancelled() {
            shared.emit(disconnected(&LinkEnd::Shutdown, false));
            break LinkEnd::Shutdown;
        }
        tracing::warn!(server = %shared.settings.server, "link {}", outcome.end);
        *shared.last_error() = Some(outcome.end.to_string());
        shared.emit(disconnected(&outcome.end, backoff.is_some()));
        let Some(backoff) = backoff.as_mut() else {
            break outcome.end;
        };
        if outcome.healthy {
            backoff.reset();
        }
        match reconnect(&shared, backoff).await {
            Some(next) => link = next,
            None => {
                shared.emit(disconnected(&LinkEnd::Shutdown, false));
                break LinkEnd::Shutdown;
            }
        }
    };
    // Channels of the dead links fail their I/O and end; give connectors a
    // moment, then cancel what is left.
    shared.channel_tasks.close();
    if tokio::time::timeout(WIND_DOWN_GRACE, shared.channel_tasks.wait())
        .await
        .is_err()
    {
        shared.hard_stop.cancel();
        shared.channel_tasks.wait().await;
    }
    tracing::info!(server = %shared.settings.server, "session over: {end}");
    shared.finished.send_replace(Some(end));
}

fn disconnected(end: &LinkEnd, will_reconnect: bool) -> ClientEvent {
    ClientEvent::Disconnected {
        reason: end.to_string(),
        will_reconnect,
    }
}

/// Wait out the back-off and try again until connected (`Some`, the link
/// installed) or stopped (`None`).
async fn reconnect(shared: &Shared, backoff: &mut Backoff) -> Option<Arc<Multiplexer>> {
    let server = shared.settings.server.as_str();
    loop {
        let delay = backoff.next_delay();
        tracing::info!(%server, "reconnecting in {:.1} s", delay.as_secs_f64());
        tokio::select! {
            _ = shared.stop.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        let attempt = tokio::select! {
            _ = shared.stop.cancelled() => return None,
            attempt = establish(&shared.settings) => attempt,
        };
        match attempt {
            Ok(link) => {
                tracing::info!(%server, "reconnected");
                return Some(shared.install(link));
            }
            Err(e) => {
                tracing::warn!(%server, "reconnect failed: {e}");
                shared
                    .counters
                    .failed_attempts
                    .fetch_add(1, Ordering::Relaxed);
                *shared.last_error() = Some(e.to_string());
            }
        }
    }
}

/// Serve the installed link until it ends or the session stops: accept
/// channels, ping.
async fn serve_link(shared: &Arc<Shared>, mux: Arc<Multiplexer>) -> LinkOutcome {
    let started = Instant::now();
    let ponged = AtomicBool::new(false);

    let accept = async {
        while let Some(channel) = mux.accept().await {
            shared.spawn_channel(channel);
        }
    };
    let keepalive = async {
        loop {
            tokio::time::sleep(shared.settings.ping_interval).await;
            match mux.ping().await {
                Ok(()) => ponged.store(true, Ordering::Relaxed),
                // The link is ending; `accept` sees it.
                Err(e) => {
                    tracing::debug!("ping: {e}");
                    break;
                }
            }
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = shared.stop.cancelled() => mux.shutdown(),
        () = accept => {}
        () = keepalive => {}
    }
    let end = mux.closed().await;
    let stats = mux.stats();
    *shared.link() = None;
    drop(mux);

    let lifetime = started.elapsed();
    let ponged = ponged.load(Ordering::Relaxed);
    let end = match end {
        LinkEnd::PeerClosed if stats.bytes_in == 0 && !ponged && lifetime < EARLY_CLOSE_WINDOW => {
            LinkEnd::Failed(
                "the server closed the link right after the handshake: it most likely \
                 rejected the token or the AES key/IV/cipher (with aes-cbc a wrong key only \
                 shows this way)"
                    .into(),
            )
        }
        end => end,
    };
    LinkOutcome {
        end,
        healthy: ponged || lifetime >= HEALTHY_AFTER,
    }
}
