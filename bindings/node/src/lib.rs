//! The native addon of the `snitun-rs` npm package.
//!
//! A thin layer over the `snitun` crate. The package's `index.ts` builds the
//! public API (`Client` and `Server` as `EventEmitter`s, `Error` subclasses,
//! option defaults and hex/Buffer keys) on these few classes and functions.
//!
//! - Everything that waits returns a Promise driven by napi's tokio runtime,
//!   so the JS thread never blocks.
//! - Events travel over one threadsafe function per running client session
//!   or server. It is held for exactly as long as the session or server runs:
//!   that keeps the Node process alive while there is something to serve,
//!   and its release lets the process exit once `disconnect()`/`stop()` ran.
//! - Errors carry their kind in a `[snitun:KIND]` prefix of the message (napi
//!   errors only carry a fixed set of status codes); `index.ts` turns it into
//!   the `code` property of an `Error` subclass.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use napi::bindgen_prelude::Buffer;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Status, Unknown};
use napi_derive::napi;
use snitun::client::{AccessList, Client, ClientEvent, ReconnectPolicy, Session, parse_networks};
use snitun::server::{BoundAddrs, PeerEvent, PeerInfo, Server, ServerHandle};
use snitun::token::{AES_IV_SIZE, AES_KEY_SIZE, FernetKey, KeyRing, TokenClaims};
use snitun::{Cipher, Error};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use zeroize::Zeroize;

/// How long `stop()` lets a server's connections drain before giving up on
/// them (the core's own grace period is 10 s as well).
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A JS callback that takes one event object, called without an error
/// argument (napi's "callee handled" convention is for Node-style callbacks).
type EventSink<T> = ThreadsafeFunction<T, Unknown<'static>, T, Status, false>;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// A napi error whose message starts with `[snitun:KIND]` (or
/// `[snitun:IO:ECODE]` for I/O errors with a recognisable errno name).
fn kind_error(kind: &str, message: impl std::fmt::Display) -> napi::Error {
    napi::Error::new(Status::GenericFailure, format!("[snitun:{kind}] {message}"))
}

fn config_error(message: impl std::fmt::Display) -> napi::Error {
    kind_error("CONFIG", message)
}

fn state_error(message: impl std::fmt::Display) -> napi::Error {
    kind_error("INVALID_STATE", message)
}

/// The Node errno name of an I/O error kind, where there is a usual one.
fn errno_name(kind: std::io::ErrorKind) -> Option<&'static str> {
    use std::io::ErrorKind as K;
    Some(match kind {
        K::ConnectionRefused => "ECONNREFUSED",
        K::ConnectionReset => "ECONNRESET",
        K::ConnectionAborted => "ECONNABORTED",
        K::AddrInUse => "EADDRINUSE",
        K::AddrNotAvailable => "EADDRNOTAVAIL",
        K::TimedOut => "ETIMEDOUT",
        K::BrokenPipe => "EPIPE",
        K::PermissionDenied => "EACCES",
        K::HostUnreachable => "EHOSTUNREACH",
        K::NetworkUnreachable => "ENETUNREACH",
        K::NotFound => "ENOTFOUND",
        _ => return None,
    })
}

/// The JS-visible kind of a core error: one code per thing that went wrong,
/// coarse where the difference does not help a caller (protocol faults).
fn to_js_error(error: Error) -> napi::Error {
    let kind = match &error {
        Error::Io(io) => {
            return match errno_name(io.kind()) {
                Some(errno) => kind_error(&format!("IO:{errno}"), &error),
                None => kind_error("IO", &error),
            };
        }
        Error::Timeout { .. } => "TIMEOUT",
        // The client explains a close before the challenge as a refused
        // token; that is the one case a caller can act on (new token).
        Error::ConnectionClosed { during } if during.contains("refused the token") => {
            "TOKEN_REFUSED"
        }
        Error::ConnectionClosed { .. } => "CONNECTION_CLOSED",
        Error::InvalidToken => "INVALID_TOKEN",
        Error::InvalidTokenPayload(_) | Error::MalformedToken(_) => "MALFORMED_TOKEN",
        Error::TokenExpired { .. } => "TOKEN_EXPIRED",
        Error::UnsupportedCipher(_) => "UNSUPPORTED_CIPHER",
        Error::InvalidKey(_) => "INVALID_KEY",
        Error::DecryptFailed => "DECRYPT_FAILED",
        Error::ChallengeFailed => "CHALLENGE_FAILED",
        Error::Config(_) => "CONFIG",
        _ => "PROTOCOL",
    };
    kind_error(kind, &error)
}

/// A lock that shrugs off poisoning (the guarded values stay consistent:
/// every critical section is a plain assignment or take).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// Conversions
// ---------------------------------------------------------------------------

fn cipher(name: Option<&str>) -> napi::Result<Cipher> {
    match name {
        None => Ok(Cipher::AesCbc),
        Some(name) => Cipher::from_name(name).map_err(to_js_error),
    }
}

fn protocol_version(version: Option<u32>) -> napi::Result<u8> {
    let version = version.unwrap_or(u32::from(snitun::token::CURRENT_PROTOCOL_VERSION));
    match u8::try_from(version) {
        Ok(v) if v <= snitun::token::CURRENT_PROTOCOL_VERSION => Ok(v),
        _ => Err(config_error(format!(
            "protocolVersion must be 0, 1 or 2, not {version}"
        ))),
    }
}

fn key_iv(key: &[u8], iv: &[u8]) -> napi::Result<([u8; AES_KEY_SIZE], [u8; AES_IV_SIZE])> {
    let key: [u8; AES_KEY_SIZE] = key.try_into().map_err(|_| {
        kind_error(
            "INVALID_KEY",
            format!("aesKey must be {AES_KEY_SIZE} bytes, got {}", key.len()),
        )
    })?;
    let iv: [u8; AES_IV_SIZE] = iv.try_into().map_err(|_| {
        kind_error(
            "INVALID_KEY",
            format!("aesIv must be {AES_IV_SIZE} bytes, got {}", iv.len()),
        )
    })?;
    Ok((key, iv))
}

/// Milliseconds (a JS number) as a duration: finite, non-negative, and not
/// absurdly large.
fn millis(name: &str, value: f64) -> napi::Result<Duration> {
    if !value.is_finite() || value < 0.0 {
        return Err(config_error(format!(
            "{name} must be a non-negative number of milliseconds, not {value}"
        )));
    }
    Duration::try_from_secs_f64(value / 1000.0)
        .map_err(|_| config_error(format!("{name} is too large: {value}")))
}

/// `host:port` with a port (the JS API never relies on default ports, so a
/// missing one is a typo).
fn check_host_port(name: &str, addr: &str) -> napi::Result<()> {
    let port = addr
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(_))) if !host.is_empty() => Ok(()),
        _ => Err(config_error(format!(
            "{name} must be a \"host:port\" string, not {addr:?}"
        ))),
    }
}

fn unix_millis(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------
// Tokens and keys
// ---------------------------------------------------------------------------

/// A fresh random Fernet key for a server (URL-safe base64, 44 characters).
#[napi]
pub fn generate_fernet_key() -> String {
    FernetKey::generate().to_base64()
}

/// What `generateToken` mints.
#[napi(object)]
pub struct TokenOptions {
    /// The server's Fernet key (URL-safe base64) that mints the token.
    pub fernet_key: String,
    /// The device's primary hostname.
    pub hostname: String,
    /// Extra hostnames the device serves.
    pub aliases: Option<Vec<String>>,
    /// Seconds from now until the token expires (negative: already expired).
    pub valid_seconds: f64,
    /// Tunnel cipher: "aes-cbc" (default), "aes-gcm" or "aes-gcm-siv".
    pub cipher: Option<String>,
    /// Multiplexer protocol version, 0 to 2 (default 2).
    pub protocol_version: Option<u32>,
}

/// A minted token and the key material the device needs with it.
#[napi(object)]
pub struct GeneratedToken {
    /// The Fernet token to give the client.
    pub token: String,
    /// The tunnel AES-256 key, 64 hex digits.
    pub aes_key: String,
    /// The tunnel IV, 32 hex digits.
    pub aes_iv: String,
    /// The primary hostname.
    pub hostname: String,
    /// The extra hostnames.
    pub aliases: Vec<String>,
    /// Expiry as UTC unix seconds.
    pub valid: f64,
    /// The tunnel cipher.
    pub cipher: String,
    /// The multiplexer protocol version.
    pub protocol_version: u32,
}

/// Mint a token with a fresh AES key and IV, as a session master does
/// (byte-compatible with the Python reference's `generate_client_token`).
#[napi]
pub fn generate_token(options: TokenOptions) -> napi::Result<GeneratedToken> {
    let key = FernetKey::from_base64(&options.fernet_key).map_err(to_js_error)?;
    let ring = KeyRing::new(vec![key]).map_err(to_js_error)?;
    if options.hostname.is_empty() {
        return Err(config_error("hostname must not be empty"));
    }
    if !options.valid_seconds.is_finite() {
        return Err(config_error("validSeconds must be a finite number"));
    }
    let cipher = cipher(options.cipher.as_deref())?;
    let protocol_version = protocol_version(options.protocol_version)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    let mut claims = TokenClaims::new(options.hostname, Duration::ZERO)
        .with_cipher(cipher)
        .with_aliases(options.aliases.unwrap_or_default())
        .with_protocol_version(protocol_version);
    claims.valid = now + options.valid_seconds;
    Ok(GeneratedToken {
        token: ring.mint(&claims),
        aes_key: hex::encode(claims.aes_key),
        aes_iv: hex::encode(claims.aes_iv),
        hostname: claims.hostname.clone(),
        aliases: claims.aliases.clone(),
        valid: claims.valid,
        cipher: cipher.name().to_owned(),
        protocol_version: u32::from(protocol_version),
    })
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// Reconnect back-off (all times in milliseconds).
#[napi(object)]
pub struct ReconnectOptions {
    /// The first delay.
    pub initial_ms: f64,
    /// The longest delay.
    pub max_ms: f64,
    /// Growth per failed attempt.
    pub multiplier: f64,
    /// Relative random variation, 0 to 1.
    pub jitter: f64,
}

/// Client settings, already normalised by `index.ts` (keys as bytes).
#[napi(object)]
pub struct NativeClientOptions {
    /// The server's peer port, `host:port`.
    pub server: String,
    /// The Fernet token.
    pub token: String,
    /// The tunnel AES key (32 bytes).
    pub aes_key: Buffer,
    /// The tunnel IV (16 bytes).
    pub aes_iv: Buffer,
    /// Where channels are relayed to, `host:port`.
    pub endpoint: String,
    /// Protocol version, 0 to 2.
    pub protocol_version: Option<u32>,
    /// Cipher name.
    pub cipher: Option<String>,
    /// Only these networks (CIDR) may call.
    pub allow: Option<Vec<String>>,
    /// These networks (CIDR) may not call.
    pub block: Option<Vec<String>>,
    /// Messages per second after each large frame (none: unthrottled).
    pub throttling: Option<u32>,
    /// Reconnect policy (none: the session ends with its first link).
    pub reconnect: Option<ReconnectOptions>,
    /// Limit of the TCP connect to the server, in milliseconds.
    pub connect_timeout_ms: Option<f64>,
}

/// A client event as `index.ts` receives it.
#[napi(object)]
pub struct NativeClientEvent {
    /// "connected", "disconnected" or "endpointError".
    pub kind: String,
    /// disconnected: why, in words.
    pub reason: Option<String>,
    /// disconnected: whether the client will try again.
    pub will_reconnect: Option<bool>,
    /// endpointError: the channel id (hex).
    pub channel: Option<String>,
    /// endpointError: the caller's address.
    pub caller: Option<String>,
    /// endpointError: the endpoint that failed.
    pub endpoint: Option<String>,
    /// endpointError: the error, in words.
    pub error: Option<String>,
}

impl NativeClientEvent {
    fn of(kind: &str) -> NativeClientEvent {
        NativeClientEvent {
            kind: kind.to_owned(),
            reason: None,
            will_reconnect: None,
            channel: None,
            caller: None,
            endpoint: None,
            error: None,
        }
    }

    fn from_core(event: ClientEvent) -> NativeClientEvent {
        match event {
            ClientEvent::Connected => NativeClientEvent::of("connected"),
            ClientEvent::Disconnected {
                reason,
                will_reconnect,
            } => NativeClientEvent {
                reason: Some(reason),
                will_reconnect: Some(will_reconnect),
                ..NativeClientEvent::of("disconnected")
            },
            ClientEvent::EndpointError(error) => NativeClientEvent {
                channel: Some(error.channel.to_string()),
                caller: Some(error.caller.to_string()),
                endpoint: Some(error.endpoint),
                error: Some(error.error),
                ..NativeClientEvent::of("endpointError")
            },
        }
    }
}

/// Session counters.
#[napi(object)]
pub struct NativeClientStats {
    /// Whether a link is up now.
    pub connected: bool,
    /// Links established, the first one included.
    pub connects: f64,
    /// Reconnect attempts that failed.
    pub failed_attempts: f64,
    /// Channels (callers) handed to the endpoint.
    pub channels: f64,
    /// Channels refused by the access list.
    pub refused: f64,
    /// Channels whose endpoint could not be reached.
    pub endpoint_errors: f64,
    /// Bytes read from the current link (framing included).
    pub bytes_in: f64,
    /// Bytes written to the current link (framing included).
    pub bytes_out: f64,
    /// The last reason a link ended or a reconnect failed.
    pub last_error: Option<String>,
}

/// A running session and the task forwarding its events to JS.
struct Running {
    session: Session,
    /// Ends after the session's last event; it owns the threadsafe function.
    forwarder: Option<JoinHandle<()>>,
}

/// A validated client configuration that connects sessions.
#[napi]
pub struct NativeClient {
    server: String,
    token: String,
    key: [u8; AES_KEY_SIZE],
    iv: [u8; AES_IV_SIZE],
    endpoint: String,
    protocol_version: u8,
    cipher: Cipher,
    access_list: AccessList,
    throttling: Option<u32>,
    reconnect: Option<ReconnectPolicy>,
    connect_timeout: Option<Duration>,
    running: Mutex<Option<Running>>,
    /// Set while a `connect()` is on its way, so a second one fails fast.
    connecting: Mutex<bool>,
}

/// The key material lives as long as the JS object; wipe it with it (the
/// core wipes its own copies).
impl Drop for NativeClient {
    fn drop(&mut self) {
        self.token.zeroize();
        self.key.zeroize();
        self.iv.zeroize();
    }
}

#[napi]
impl NativeClient {
    /// Validate `options`; throws a `[snitun:CONFIG]`-style error if any is
    /// wrong.
    #[napi(constructor)]
    pub fn new(options: NativeClientOptions) -> napi::Result<Self> {
        check_host_port("server", &options.server)?;
        check_host_port("endpoint", &options.endpoint)?;
        if options.token.is_empty() {
            return Err(config_error("token must not be empty"));
        }
        let (key, iv) = key_iv(&options.aes_key, &options.aes_iv)?;
        let access_list = match (options.allow, options.block) {
            (Some(_), Some(_)) => {
                return Err(config_error("give allow or block, not both"));
            }
            (Some(allow), None) => {
                AccessList::allow(parse_networks(allow).map_err(|e| config_error(e.to_string()))?)
            }
            (None, Some(block)) => {
                AccessList::block(parse_networks(block).map_err(|e| config_error(e.to_string()))?)
            }
            (None, None) => AccessList::allow_all(),
        };
        if options.throttling == Some(0) {
            return Err(config_error("throttling must be at least 1 message/s"));
        }
        let reconnect = match options.reconnect {
            None => None,
            Some(r) => {
                if !(r.multiplier.is_finite() && r.multiplier >= 1.0) {
                    return Err(config_error("reconnect.multiplier must be at least 1"));
                }
                if !(r.jitter.is_finite() && (0.0..=1.0).contains(&r.jitter)) {
                    return Err(config_error("reconnect.jitter must be between 0 and 1"));
                }
                Some(ReconnectPolicy {
                    initial: millis("reconnect.initialMs", r.initial_ms)?,
                    max: millis("reconnect.maxMs", r.max_ms)?,
                    multiplier: r.multiplier,
                    jitter: r.jitter,
                })
            }
        };
        let connect_timeout = options
            .connect_timeout_ms
            .map(|ms| millis("connectTimeout", ms))
            .transpose()?;
        if connect_timeout.is_some_and(|t| t.is_zero()) {
            return Err(config_error("connectTimeout must be more than 0"));
        }
        Ok(NativeClient {
            server: options.server,
            token: options.token,
            key,
            iv,
            endpoint: options.endpoint,
            protocol_version: protocol_version(options.protocol_version)?,
            cipher: cipher(options.cipher.as_deref())?,
            access_list,
            throttling: options.throttling,
            reconnect,
            connect_timeout,
            running: Mutex::new(None),
            connecting: Mutex::new(false),
        })
    }

    /// Connect and hand shake; resolves once the link is up. `onEvent` is
    /// called on the JS thread with every event of the session, from the
    /// first `connected` to the final `disconnected`.
    #[napi(ts_args_type = "onEvent: (event: NativeClientEvent) => void")]
    pub async fn connect(&self, on_event: EventSink<NativeClientEvent>) -> napi::Result<()> {
        {
            let running = lock(&self.running);
            // A session whose forwarder has finished is over: connect anew.
            let live = running
                .as_ref()
                .and_then(|r| r.forwarder.as_ref())
                .is_some_and(|f| !f.is_finished());
            if live {
                return Err(state_error("already connected: call disconnect() first"));
            }
            let mut connecting = lock(&self.connecting);
            if *connecting {
                return Err(state_error("a connect() is already in progress"));
            }
            *connecting = true;
        }
        let mut builder = Client::builder(self.server.clone())
            .token(self.token.clone())
            .aes(self.key, self.iv)
            .cipher(self.cipher)
            .protocol_version(self.protocol_version)
            .endpoint(self.endpoint.clone())
            .access_list(self.access_list.clone())
            .throttling(self.throttling)
            .reconnect(self.reconnect.clone());
        if let Some(limit) = self.connect_timeout {
            builder = builder.connect_timeout(limit);
        }
        let connected = builder.connect_with_events().await;
        *lock(&self.connecting) = false;
        let (session, events) = connected.map_err(to_js_error)?;
        let forwarder = tokio::spawn(forward_client_events(events, on_event));
        *lock(&self.running) = Some(Running {
            session,
            forwarder: Some(forwarder),
        });
        Ok(())
    }

    /// Whether a link to the server is up now.
    #[napi(getter)]
    pub fn is_connected(&self) -> bool {
        lock(&self.running)
            .as_ref()
            .is_some_and(|r| r.session.is_connected())
    }

    /// Close the link, stop reconnecting, and resolve once every task of the
    /// session has ended and its last event is queued for JS. Resolves at
    /// once when not connected.
    #[napi]
    pub async fn disconnect(&self) -> napi::Result<()> {
        let taken = lock(&self.running)
            .as_mut()
            .map(|r| (r.session.clone(), r.forwarder.take()));
        if let Some((session, forwarder)) = taken {
            session.disconnect().await;
            if let Some(forwarder) = forwarder {
                let _ = forwarder.await;
            }
        }
        Ok(())
    }

    /// Resolve when the session is over for good (its link ended without a
    /// reconnect policy, or `disconnect()` was called) with the reason in
    /// words; `null` when no session was ever connected.
    #[napi]
    pub async fn wait_closed(&self) -> napi::Result<Option<String>> {
        let session = lock(&self.running).as_ref().map(|r| r.session.clone());
        match session {
            Some(session) => Ok(Some(session.wait().await.to_string())),
            None => Ok(None),
        }
    }

    /// Counters of the current (or last) session; `null` before `connect()`.
    #[napi]
    pub fn stats(&self) -> Option<NativeClientStats> {
        let stats = lock(&self.running).as_ref()?.session.stats();
        let link = stats.link.unwrap_or_default();
        Some(NativeClientStats {
            connected: stats.connected,
            connects: stats.connects as f64,
            failed_attempts: stats.failed_attempts as f64,
            channels: stats.channels as f64,
            refused: stats.refused as f64,
            endpoint_errors: stats.endpoint_errors as f64,
            bytes_in: link.bytes_in as f64,
            bytes_out: link.bytes_out as f64,
            last_error: stats.last_error,
        })
    }
}

/// Pass a session's events to JS until its last one, then release the
/// callback (which lets the Node process exit).
async fn forward_client_events(
    mut events: broadcast::Receiver<ClientEvent>,
    on_event: EventSink<NativeClientEvent>,
) {
    loop {
        match events.recv().await {
            Ok(event) => {
                let last = matches!(
                    event,
                    ClientEvent::Disconnected {
                        will_reconnect: false,
                        ..
                    }
                );
                on_event.call(
                    NativeClientEvent::from_core(event),
                    ThreadsafeFunctionCallMode::NonBlocking,
                );
                if last {
                    break;
                }
            }
            // A JS thread too busy to take 256 events misses some; the
            // session goes on, and so does the forwarding.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// Server settings, already normalised by `index.ts` (lists everywhere).
#[napi(object)]
pub struct NativeServerOptions {
    /// Fernet keys (URL-safe base64); tokens opened by any of them are
    /// accepted, the first one is the primary.
    pub fernet_keys: Vec<String>,
    /// SNI listen addresses (callers).
    pub sni: Vec<String>,
    /// Peer listen addresses (devices).
    pub peer: Vec<String>,
    /// Single-port listen addresses (both).
    pub listen: Vec<String>,
    /// Expect a PROXY protocol header on caller connections.
    pub proxy_protocol: bool,
    /// Messages per second after each large frame (none: unthrottled).
    pub throttling: Option<u32>,
}

/// The addresses a started server listens on, `host:port` each.
#[napi(object)]
pub struct NativeAddresses {
    /// SNI ports.
    pub sni: Vec<String>,
    /// Peer ports.
    pub peer: Vec<String>,
    /// Single-port listeners.
    pub listen: Vec<String>,
}

impl From<BoundAddrs> for NativeAddresses {
    fn from(addrs: BoundAddrs) -> Self {
        let strings = |list: Vec<SocketAddr>| list.iter().map(ToString::to_string).collect();
        NativeAddresses {
            sni: strings(addrs.sni),
            peer: strings(addrs.peer),
            listen: strings(addrs.listen),
        }
    }
}

/// A connected peer (device).
#[napi(object)]
pub struct NativePeerInfo {
    /// Primary hostname of its token.
    pub hostname: String,
    /// Extra hostnames.
    pub aliases: Vec<String>,
    /// Protocol version of its link.
    pub protocol_version: u32,
    /// Cipher of its link.
    pub cipher: String,
    /// Where it connected from, `host:port`.
    pub remote_address: String,
    /// Bytes read from its link (framing included).
    pub bytes_in: f64,
    /// Bytes written to its link (framing included).
    pub bytes_out: f64,
    /// Callers connected through it now.
    pub channels: u32,
    /// When its handshake completed, ms since the epoch.
    pub connected_at: f64,
}

impl From<PeerInfo> for NativePeerInfo {
    fn from(peer: PeerInfo) -> Self {
        NativePeerInfo {
            hostname: peer.hostname,
            aliases: peer.aliases,
            protocol_version: u32::from(peer.protocol_version),
            cipher: peer.cipher.name().to_owned(),
            remote_address: peer.remote_addr.to_string(),
            bytes_in: peer.bytes_in as f64,
            bytes_out: peer.bytes_out as f64,
            channels: u32::try_from(peer.channels).unwrap_or(u32::MAX),
            connected_at: unix_millis(peer.connected_at),
        }
    }
}

/// A server event as `index.ts` receives it.
#[napi(object)]
pub struct NativeServerEvent {
    /// "peerConnected" or "peerDisconnected".
    pub kind: String,
    /// peerConnected: the peer.
    pub peer: Option<NativePeerInfo>,
    /// peerDisconnected: its hostname.
    pub hostname: Option<String>,
    /// peerDisconnected: why.
    pub reason: Option<String>,
}

impl From<PeerEvent> for NativeServerEvent {
    fn from(event: PeerEvent) -> Self {
        match event {
            PeerEvent::Connected(peer) => NativeServerEvent {
                kind: "peerConnected".into(),
                peer: Some(peer.into()),
                hostname: None,
                reason: None,
            },
            PeerEvent::Disconnected { hostname, reason } => NativeServerEvent {
                kind: "peerDisconnected".into(),
                peer: None,
                hostname: Some(hostname),
                reason: Some(reason),
            },
        }
    }
}

/// A running server and the task forwarding its events to JS.
struct RunningServer {
    handle: ServerHandle,
    forwarder: JoinHandle<()>,
}

/// A validated server configuration that can be started (once at a time).
#[napi]
pub struct NativeServer {
    keys: KeyRing,
    sni: Vec<String>,
    peer: Vec<String>,
    listen: Vec<String>,
    proxy_protocol: bool,
    throttling: Option<u32>,
    running: Mutex<Option<RunningServer>>,
    /// Set while a `start()` is binding, so a second one fails fast.
    starting: Mutex<bool>,
}

#[napi]
impl NativeServer {
    /// Validate `options`; throws a `[snitun:CONFIG]`-style error if any is
    /// wrong.
    #[napi(constructor)]
    pub fn new(options: NativeServerOptions) -> napi::Result<Self> {
        if options.fernet_keys.is_empty() {
            return Err(config_error("fernetKeys must name at least one key"));
        }
        let keys = KeyRing::from_strings(&options.fernet_keys).map_err(to_js_error)?;
        for (name, list) in [
            ("sni", &options.sni),
            ("peer", &options.peer),
            ("listen", &options.listen),
        ] {
            for addr in list {
                check_host_port(name, addr)?;
            }
        }
        let single = !options.listen.is_empty();
        if options.sni.is_empty() && options.peer.is_empty() && !single {
            return Err(config_error(
                "no listen address: give sni and peer, or listen",
            ));
        }
        if !single && options.sni.is_empty() != options.peer.is_empty() {
            return Err(config_error(
                "dual-port mode needs both an sni and a peer address",
            ));
        }
        if options.throttling == Some(0) {
            return Err(config_error("throttling must be at least 1 message/s"));
        }
        Ok(NativeServer {
            keys,
            sni: options.sni,
            peer: options.peer,
            listen: options.listen,
            proxy_protocol: options.proxy_protocol,
            throttling: options.throttling,
            running: Mutex::new(None),
            starting: Mutex::new(false),
        })
    }

    /// Bind every address (host names are resolved; port 0 picks a free
    /// port) and start serving; resolves to the bound addresses. `onEvent`
    /// is called on the JS thread with every peer event until `stop()`.
    #[napi(ts_args_type = "onEvent: (event: NativeServerEvent) => void")]
    pub async fn start(
        &self,
        on_event: EventSink<NativeServerEvent>,
    ) -> napi::Result<NativeAddresses> {
        {
            let running = lock(&self.running);
            let mut starting = lock(&self.starting);
            if running.is_some() || *starting {
                return Err(state_error("server already started"));
            }
            *starting = true;
        }
        let bound = self.bind().await;
        *lock(&self.starting) = false;
        let server = bound?;
        let addrs = server.local_addrs();
        // Subscribed before the server runs, so no peer event is missed.
        let events = server.handle().subscribe();
        let handle = server.spawn();
        let forwarder = tokio::spawn(forward_server_events(events, handle.clone(), on_event));
        *lock(&self.running) = Some(RunningServer { handle, forwarder });
        Ok(addrs.into())
    }

    /// Stop listening, end every peer's link and caller, and resolve once
    /// every task has ended (at most 10 s). Resolves at once when not
    /// started.
    #[napi]
    pub async fn stop(&self) -> napi::Result<()> {
        let Some(running) = lock(&self.running).take() else {
            return Ok(());
        };
        let result = running.handle.shutdown(SERVER_STOP_TIMEOUT).await;
        running.handle.closed().await;
        let _ = running.forwarder.await;
        result.map_err(to_js_error)
    }

    /// The bound addresses while started, else `null`.
    #[napi(getter)]
    pub fn addresses(&self) -> Option<NativeAddresses> {
        lock(&self.running)
            .as_ref()
            .map(|r| r.handle.local_addrs().into())
    }

    /// A snapshot of the connected peers, sorted by hostname (empty when not
    /// started).
    #[napi]
    pub fn peers(&self) -> Vec<NativePeerInfo> {
        lock(&self.running)
            .as_ref()
            .map(|r| r.handle.peers().into_iter().map(Into::into).collect())
            .unwrap_or_default()
    }

    /// Every hostname and alias served now, sorted.
    #[napi]
    pub fn hostnames(&self) -> Vec<String> {
        lock(&self.running)
            .as_ref()
            .map(|r| r.handle.hostnames())
            .unwrap_or_default()
    }
}

impl NativeServer {
    async fn bind(&self) -> napi::Result<Server> {
        let mut builder = Server::builder(self.keys.clone())
            .proxy_protocol(self.proxy_protocol)
            .throttling(self.throttling);
        for addr in resolve(&self.sni).await? {
            builder = builder.sni_listen(addr);
        }
        for addr in resolve(&self.peer).await? {
            builder = builder.peer_listen(addr);
        }
        for addr in resolve(&self.listen).await? {
            builder = builder.listen(addr);
        }
        builder.bind().await.map_err(to_js_error)
    }
}

/// Every address of every `host:port` (IP literals as they are).
async fn resolve(addrs: &[String]) -> napi::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for addr in addrs {
        if let Ok(literal) = addr.parse::<SocketAddr>() {
            out.push(literal);
            continue;
        }
        let found = tokio::net::lookup_host(addr.as_str())
            .await
            .map_err(|e| kind_error("IO:ENOTFOUND", format!("cannot resolve {addr:?}: {e}")))?;
        let before = out.len();
        for found in found {
            if !out.contains(&found) {
                out.push(found);
            }
        }
        if out.len() == before {
            return Err(kind_error(
                "IO:ENOTFOUND",
                format!("{addr:?} resolves to no address"),
            ));
        }
    }
    Ok(out)
}

/// Pass a server's peer events to JS until it has stopped, then release the
/// callback.
async fn forward_server_events(
    mut events: broadcast::Receiver<PeerEvent>,
    handle: ServerHandle,
    on_event: EventSink<NativeServerEvent>,
) {
    let send = |event: PeerEvent| {
        on_event.call(event.into(), ThreadsafeFunctionCallMode::NonBlocking);
    };
    loop {
        tokio::select! {
            biased;
            event = events.recv() => match event {
                Ok(event) => send(event),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            },
            () = handle.closed() => {
                // What the shutdown itself announced (peers ending).
                while let Ok(event) = events.try_recv() {
                    send(event);
                }
                break;
            }
        }
    }
}
