//! The client peer (the device side): configuration, session, callbacks.

use std::ffi::{c_char, c_void};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use snitun_core::Cipher;
use snitun_core::client::{
    AccessList, AccessMode, Client, ClientEvent, ReconnectPolicy, Session, parse_network,
};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use zeroize::Zeroizing;

use crate::args::{
    bytes_arg, check_host_port, fixed_bytes, free_handle, give, handle_mut, handle_ref, limit,
    out_ptr, parse_hex, str_arg, write_str,
};
use crate::error::{FfiError, guard, guard_value, snitun_result};
use crate::runtime::{EventThread, UserData, block_on, c_string, runtime};
use crate::token::{SNITUN_AES_IV_LEN, SNITUN_AES_KEY_LEN, check_protocol_version, parse_cipher};

/// Called when the tunnel is up: once right after snitun_client_connect()
/// succeeded, and again after every successful reconnect.
///
/// Runs on the client's own event thread (never two callbacks of a client
/// at once, never on the thread that called snitun_client_connect()). It
/// may call any snitun function, blocking ones included, and may even free
/// its own client (no further callback follows). Meanwhile later events
/// wait, so keep it short.
pub type snitun_client_connected_callback = Option<unsafe extern "C" fn(userdata: *mut c_void)>;

/// Called when the tunnel went down. `reason` (NUL-terminated, valid during
/// the call) says why; `will_reconnect` is true when a reconnect policy is
/// set and the client is about to try again. The last call of a session
/// always has `will_reconnect` false.
///
/// Runs on the client's event thread, like the connected callback.
pub type snitun_client_disconnected_callback = Option<
    unsafe extern "C" fn(userdata: *mut c_void, reason: *const c_char, will_reconnect: bool),
>;

/// Called when a caller's channel could not be relayed to the endpoint (the
/// endpoint refused or did not answer). The channel was closed; the tunnel
/// stays up. `endpoint` is the configured `host:port`, `caller` the
/// caller's IP address as the server reported it, `error` the reason; all
/// NUL-terminated and valid during the call.
///
/// Runs on the client's event thread, like the connected callback.
pub type snitun_client_endpoint_error_callback = Option<
    unsafe extern "C" fn(
        userdata: *mut c_void,
        endpoint: *const c_char,
        caller: *const c_char,
        error: *const c_char,
    ),
>;

#[derive(Clone, Copy, Default)]
struct Callbacks {
    connected: Option<(unsafe extern "C" fn(*mut c_void), UserData)>,
    disconnected: Option<(
        unsafe extern "C" fn(*mut c_void, *const c_char, bool),
        UserData,
    )>,
    endpoint_error: Option<(
        unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char, *const c_char),
        UserData,
    )>,
}

impl Callbacks {
    fn any(&self) -> bool {
        self.connected.is_some() || self.disconnected.is_some() || self.endpoint_error.is_some()
    }

    fn connected(&self) {
        if let Some((callback, userdata)) = self.connected {
            // SAFETY: the caller gave the callback with its userdata and
            // keeps both valid until the client is freed.
            unsafe { callback(userdata.0) };
        }
    }

    fn disconnected(&self, reason: &str, will_reconnect: bool) {
        if let Some((callback, userdata)) = self.disconnected {
            let reason = c_string(reason);
            // SAFETY: as in `connected`; the string outlives the call.
            unsafe { callback(userdata.0, reason.as_ptr(), will_reconnect) };
        }
    }

    fn deliver(&self, event: ClientEvent) {
        match event {
            ClientEvent::Connected => self.connected(),
            ClientEvent::Disconnected {
                reason,
                will_reconnect,
            } => self.disconnected(&reason, will_reconnect),
            ClientEvent::EndpointError(error) => {
                if let Some((callback, userdata)) = self.endpoint_error {
                    let endpoint = c_string(&error.endpoint);
                    let caller = c_string(&error.caller.to_string());
                    let message = c_string(&error.error);
                    // SAFETY: as in `connected`; the strings outlive the
                    // call.
                    unsafe {
                        callback(
                            userdata.0,
                            endpoint.as_ptr(),
                            caller.as_ptr(),
                            message.as_ptr(),
                        );
                    }
                }
            }
        }
    }
}

/// How a client connects and what it serves: from
/// snitun_client_config_new(), used by snitun_client_connect() (which
/// copies it, so one config can connect several clients), freed with
/// snitun_client_config_free() (which wipes the token and key).
///
/// Required: the server address (given to _new), the token, the AES key
/// and IV, and the endpoint.
/// Not thread-safe: do not use one config from two threads at once.
pub struct snitun_client_config {
    server: String,
    token: Option<Zeroizing<String>>,
    key: Option<Zeroizing<[u8; SNITUN_AES_KEY_LEN]>>,
    iv: Option<Zeroizing<[u8; SNITUN_AES_IV_LEN]>>,
    cipher: Cipher,
    protocol_version: u8,
    endpoint: Option<String>,
    access_list: AccessList,
    throttling: Option<u32>,
    reconnect: Option<ReconnectPolicy>,
    connect_timeout: Option<Duration>,
    callbacks: Callbacks,
}

/// Create a client config for the server's peer port at `server`
/// (`host:port`, `[IPv6]:port`; without a port, 8080) in `*out`.
/// Defaults: cipher aes-cbc, protocol version 2, every caller allowed, no
/// throttling, no reconnecting. `*out` is NULL after a failure.
///
/// Errors: NULL, non-UTF-8, bad address (`SNITUN_RESULT_INVALID_ARGUMENT`).
/// Thread-safe; does not block (no name lookup happens here).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_config_new(
    server: *const c_char,
    out: *mut *mut snitun_client_config,
) -> snitun_result {
    guard("snitun_client_config_new", || {
        // SAFETY: caller's pointer contracts.
        let out = unsafe { out_ptr(out, "out") }?;
        let server = unsafe { str_arg(server, "server") }?.trim();
        check_host_port(server, "server")?;
        give(
            out,
            snitun_client_config {
                server: server.to_owned(),
                token: None,
                key: None,
                iv: None,
                cipher: Cipher::AesCbc,
                protocol_version: crate::token::SNITUN_PROTOCOL_VERSION,
                endpoint: None,
                access_list: AccessList::allow_all(),
                throttling: None,
                reconnect: None,
                connect_timeout: None,
                callbacks: Callbacks::default(),
            },
        );
        Ok(())
    })
}

/// Run `change` on the config behind `config`.
fn with_config(
    name: &str,
    config: *mut snitun_client_config,
    change: impl FnOnce(&mut snitun_client_config) -> Result<(), FfiError>,
) -> snitun_result {
    guard(name, || {
        // SAFETY: caller's pointer contract (NULL or a live config used by
        // this thread only).
        let config = unsafe { handle_mut(config, "config") }?;
        change(config)
    })
}

/// Set the token minted for this device (URL-safe base64 text; surrounding
/// whitespace is ignored). Required.
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_config_set_token(
    config: *mut snitun_client_config,
    token: *const c_char,
) -> snitun_result {
    with_config("snitun_client_config_set_token", config, |config| {
        // SAFETY: caller's string contract.
        let token = unsafe { str_arg(token, "token") }?.trim();
        if token.is_empty() {
            return Err(FfiError::invalid("token is empty"));
        }
        config.token = Some(Zeroizing::new(token.to_owned()));
        Ok(())
    })
}

/// Set the tunnel's AES key from `len` raw bytes; `len` must be
/// `SNITUN_AES_KEY_LEN` (32). Required (this or the hex form).
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_config_set_aes_key(
    config: *mut snitun_client_config,
    key: *const u8,
    len: usize,
) -> snitun_result {
    with_config("snitun_client_config_set_aes_key", config, |config| {
        // SAFETY: caller's buffer contract.
        let bytes = unsafe { bytes_arg(key, len, "key") }?;
        config.key = Some(Zeroizing::new(fixed_bytes(bytes, "key")?));
        Ok(())
    })
}

/// Set the tunnel's AES IV from `len` raw bytes; `len` must be
/// `SNITUN_AES_IV_LEN` (16). Required (this or the hex form).
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_config_set_aes_iv(
    config: *mut snitun_client_config,
    iv: *const u8,
    len: usize,
) -> snitun_result {
    with_config("snitun_client_config_set_aes_iv", config, |config| {
        // SAFETY: caller's buffer contract.
        let bytes = unsafe { bytes_arg(iv, len, "iv") }?;
        config.iv = Some(Zeroizing::new(fixed_bytes(bytes, "iv")?));
        Ok(())
    })
}

/// Set the tunnel's AES key from 64 hex digits (the token's `aes_key`).
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_config_set_aes_key_hex(
    config: *mut snitun_client_config,
    key_hex: *const c_char,
) -> snitun_result {
    with_config("snitun_client_config_set_aes_key_hex", config, |config| {
        // SAFETY: caller's string contract.
        let text = unsafe { str_arg(key_hex, "key_hex") }?;
        config.key = Some(Zeroizing::new(parse_hex(text, "key_hex")?));
        Ok(())
    })
}

/// Set the tunnel's AES IV from 32 hex digits (the token's `aes_iv`).
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_config_set_aes_iv_hex(
    config: *mut snitun_client_config,
    iv_hex: *const c_char,
) -> snitun_result {
    with_config("snitun_client_config_set_aes_iv_hex", config, |config| {
        // SAFETY: caller's string contract.
        let text = unsafe { str_arg(iv_hex, "iv_hex") }?;
        config.iv = Some(Zeroizing::new(parse_hex(text, "iv_hex")?));
        Ok(())
    })
}

/// Set the tunnel cipher, as named in the token: `"aes-cbc"` (default),
/// `"aes-gcm"` or `"aes-gcm-siv"`.
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_config_set_cipher(
    config: *mut snitun_client_config,
    cipher: *const c_char,
) -> snitun_result {
    with_config("snitun_client_config_set_cipher", config, |config| {
        // SAFETY: caller's string contract.
        config.cipher = parse_cipher(unsafe { str_arg(cipher, "cipher") }?)?;
        Ok(())
    })
}

/// Set the multiplexer protocol version, as in the token: 0 to
/// `SNITUN_PROTOCOL_VERSION` (default).
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_config_set_protocol_version(
    config: *mut snitun_client_config,
    version: u8,
) -> snitun_result {
    with_config(
        "snitun_client_config_set_protocol_version",
        config,
        |config| {
            config.protocol_version = check_protocol_version(version)?;
            Ok(())
        },
    )
}

/// Relay every caller to the TCP endpoint `endpoint` (`host:port`, the
/// device's local TLS server; without a port, 443). Required.
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_config_set_endpoint(
    config: *mut snitun_client_config,
    endpoint: *const c_char,
) -> snitun_result {
    with_config("snitun_client_config_set_endpoint", config, |config| {
        // SAFETY: caller's string contract.
        let endpoint = unsafe { str_arg(endpoint, "endpoint") }?.trim();
        check_host_port(endpoint, "endpoint")?;
        config.endpoint = Some(endpoint.to_owned());
        Ok(())
    })
}

fn add_network(
    config: &mut snitun_client_config,
    network: *const c_char,
    mode: AccessMode,
) -> Result<(), FfiError> {
    // SAFETY: caller's string contract.
    let text = unsafe { str_arg(network, "network") }?;
    let network = parse_network(text).map_err(|e| FfiError::invalid(e.to_string()))?;
    let current = config.access_list.mode();
    if current == AccessMode::AllowAll {
        config.access_list = match mode {
            AccessMode::Block => AccessList::block(Vec::new()),
            _ => AccessList::allow(Vec::new()),
        };
    } else if current != mode {
        return Err(FfiError::config(
            "a client has either an allow list or a block list, not both",
        ));
    }
    config.access_list.add(network);
    Ok(())
}

/// Serve only callers inside `network` (CIDR such as `"10.0.0.0/8"` or
/// `"2001:db8::/32"`, or one address); repeat to allow several networks.
/// Once one network is allowed, every caller outside the allowed networks
/// is refused (its channel is closed at once).
///
/// Errors: a bad network (`SNITUN_RESULT_INVALID_ARGUMENT`); a config that
/// already has a block list (`SNITUN_RESULT_INVALID_CONFIG`).
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_config_add_allowed_network(
    config: *mut snitun_client_config,
    network: *const c_char,
) -> snitun_result {
    with_config(
        "snitun_client_config_add_allowed_network",
        config,
        |config| add_network(config, network, AccessMode::Allow),
    )
}

/// Refuse callers inside `network` (CIDR or one address); repeat to block
/// several networks. Everyone else is served.
///
/// Errors: a bad network (`SNITUN_RESULT_INVALID_ARGUMENT`); a config that
/// already has an allow list (`SNITUN_RESULT_INVALID_CONFIG`).
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_config_add_blocked_network(
    config: *mut snitun_client_config,
    network: *const c_char,
) -> snitun_result {
    with_config(
        "snitun_client_config_add_blocked_network",
        config,
        |config| add_network(config, network, AccessMode::Block),
    )
}

/// Throttle sending: after each frame of 8 KiB or more, pause 1/N second
/// (`messages_per_second` N; 0 turns throttling off, the default).
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_config_set_throttling(
    config: *mut snitun_client_config,
    messages_per_second: u32,
) -> snitun_result {
    with_config("snitun_client_config_set_throttling", config, |config| {
        config.throttling = (messages_per_second > 0).then_some(messages_per_second);
        Ok(())
    })
}

/// Reconnect after the link to the server is lost: the n-th consecutive
/// failed attempt waits `initial_ms * multiplier^n` milliseconds, at most
/// `max_ms`, varied by up to +-`jitter` of itself (0.0 to 1.0). The delay
/// starts over after a link that proved healthy. Suggested: 1000, 300000,
/// 2.0, 0.2. Off by default: the session then ends with its first link.
///
/// Errors (`SNITUN_RESULT_INVALID_ARGUMENT`): `initial_ms` 0 or above
/// `max_ms`, `multiplier` below 1 or not finite, `jitter` outside 0..1.
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_config_set_reconnect(
    config: *mut snitun_client_config,
    initial_ms: u64,
    max_ms: u64,
    multiplier: f64,
    jitter: f64,
) -> snitun_result {
    with_config("snitun_client_config_set_reconnect", config, |config| {
        if initial_ms == 0 || initial_ms > max_ms {
            return Err(FfiError::invalid(format!(
                "reconnect delays: need 0 < initial_ms ({initial_ms}) <= max_ms ({max_ms})"
            )));
        }
        if !multiplier.is_finite() || multiplier < 1.0 {
            return Err(FfiError::invalid(format!(
                "reconnect multiplier {multiplier}: must be a finite number >= 1"
            )));
        }
        if !(0.0..=1.0).contains(&jitter) {
            return Err(FfiError::invalid(format!(
                "reconnect jitter {jitter}: must be between 0 and 1"
            )));
        }
        config.reconnect = Some(ReconnectPolicy {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
            multiplier,
            jitter,
        });
        Ok(())
    })
}

/// Do not reconnect (the default): the session ends when its link does.
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_config_disable_reconnect(
    config: *mut snitun_client_config,
) -> snitun_result {
    with_config("snitun_client_config_disable_reconnect", config, |config| {
        config.reconnect = None;
        Ok(())
    })
}

/// Limit each TCP connect to the server, the first one and every reconnect
/// attempt, to `timeout_ms` milliseconds (default 60000; must not be 0).
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_config_set_connect_timeout(
    config: *mut snitun_client_config,
    timeout_ms: u64,
) -> snitun_result {
    with_config(
        "snitun_client_config_set_connect_timeout",
        config,
        |config| {
            if timeout_ms == 0 {
                return Err(FfiError::invalid("connect timeout 0"));
            }
            config.connect_timeout = Some(Duration::from_millis(timeout_ms));
            Ok(())
        },
    )
}

/// Call `callback` with `userdata` whenever the tunnel comes up (NULL
/// removes it). See snitun_client_connected_callback.
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_config_set_connected_callback(
    config: *mut snitun_client_config,
    callback: snitun_client_connected_callback,
    userdata: *mut c_void,
) -> snitun_result {
    with_config(
        "snitun_client_config_set_connected_callback",
        config,
        |config| {
            config.callbacks.connected = callback.map(|f| (f, UserData(userdata)));
            Ok(())
        },
    )
}

/// Call `callback` with `userdata` whenever the tunnel goes down (NULL
/// removes it). See snitun_client_disconnected_callback.
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_config_set_disconnected_callback(
    config: *mut snitun_client_config,
    callback: snitun_client_disconnected_callback,
    userdata: *mut c_void,
) -> snitun_result {
    with_config(
        "snitun_client_config_set_disconnected_callback",
        config,
        |config| {
            config.callbacks.disconnected = callback.map(|f| (f, UserData(userdata)));
            Ok(())
        },
    )
}

/// Call `callback` with `userdata` whenever the endpoint cannot be reached
/// for a caller (NULL removes it). See snitun_client_endpoint_error_callback.
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_config_set_endpoint_error_callback(
    config: *mut snitun_client_config,
    callback: snitun_client_endpoint_error_callback,
    userdata: *mut c_void,
) -> snitun_result {
    with_config(
        "snitun_client_config_set_endpoint_error_callback",
        config,
        |config| {
            config.callbacks.endpoint_error = callback.map(|f| (f, UserData(userdata)));
            Ok(())
        },
    )
}

/// Free a client config; NULL is a no-op. The token and key are wiped.
/// Clients connected with it are not affected.
///
/// Must not race with other calls on this config; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_config_free(config: *mut snitun_client_config) {
    let _ = guard("snitun_client_config_free", || {
        // SAFETY: caller's ownership contract.
        unsafe { free_handle(config) };
        Ok(())
    });
}

/// A connected client session: from snitun_client_connect(), freed with
/// snitun_client_free().
///
/// The session serves callers on library threads until it ends:
/// snitun_client_disconnect(), or its link ends and no reconnect policy is
/// set (or the policy's attempts are stopped). Every function on a client
/// is thread-safe, except snitun_client_free().
pub struct snitun_client {
    session: Session,
    /// Calls the callbacks; stopped first when the handle is dropped.
    events: Option<EventThread>,
}

impl snitun_client {
    /// Wait until the event thread has delivered its last callback (the
    /// final disconnect) and ended.
    async fn callbacks_done(&self) {
        if let Some(events) = &self.events {
            events.finished().await;
        }
    }
}

impl Drop for snitun_client {
    fn drop(&mut self) {
        // No callback after the handle is gone: stop the event thread
        // before the session (dropping the session then disconnects).
        self.events.take();
    }
}

/// The client's event thread: the first `Connected`, then every event, and
/// a final `Disconnected` even if the session ended before the thread
/// subscribed.
fn run_events(session: Session, callbacks: Callbacks, stop: tokio_util::sync::CancellationToken) {
    let Ok(runtime) = runtime() else {
        return;
    };
    let mut events = session.subscribe();
    callbacks.connected();
    enum Step {
        Stop,
        Event(Result<ClientEvent, RecvError>),
        Ended(String),
    }
    loop {
        if stop.is_cancelled() {
            return;
        }
        let step = runtime.block_on(async {
            tokio::select! {
                biased;
                () = stop.cancelled() => Step::Stop,
                event = events.recv() => Step::Event(event),
                end = session.wait() => Step::Ended(end.to_string()),
            }
        });
        match step {
            Step::Stop | Step::Event(Err(RecvError::Closed)) => return,
            Step::Event(Err(RecvError::Lagged(missed))) => {
                tracing::warn!(missed, "client events were dropped: a callback is too slow");
            }
            Step::Event(Ok(event)) => {
                let last = matches!(
                    event,
                    ClientEvent::Disconnected {
                        will_reconnect: false,
                        ..
                    }
                );
                callbacks.deliver(event);
                if last {
                    return;
                }
            }
            Step::Ended(reason) => {
                // Events sent before the end are still queued: deliver them,
                // and the final disconnect if it was missed.
                loop {
                    match events.try_recv() {
                        Ok(event) => {
                            let last = matches!(
                                event,
                                ClientEvent::Disconnected {
                                    will_reconnect: false,
                                    ..
                                }
                            );
                            callbacks.deliver(event);
                            if last {
                                return;
                            }
                        }
                        Err(TryRecvError::Lagged(_)) => {}
                        Err(_) => break,
                    }
                }
                callbacks.disconnected(&reason, false);
                return;
            }
        }
    }
}

/// Connect to the server with `config` and complete the handshake, waiting
/// at most `timeout_ms` milliseconds (`SNITUN_TIMEOUT_INFINITE`: no
/// limit); the connected client is stored in `*out` (NULL after a
/// failure). From then on the session serves callers on library threads,
/// relaying each to the endpoint.
///
/// Errors: `SNITUN_RESULT_INVALID_CONFIG` (token, AES key/IV or endpoint
/// missing), `SNITUN_RESULT_TIMEOUT`, `SNITUN_RESULT_IO` (server
/// unreachable), `SNITUN_RESULT_CONNECTION_CLOSED` (the server refused the
/// token), `SNITUN_RESULT_PROTOCOL` (the challenge failed: wrong AES key,
/// IV or cipher). With aes-cbc a wrong key is only noticed by the server,
/// which closes the link right after the handshake: the disconnected
/// callback then reports it.
///
/// Thread-safe (the config must not change meanwhile). Blocks; must not be
/// called from a log callback.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_connect(
    config: *const snitun_client_config,
    timeout_ms: u64,
    out: *mut *mut snitun_client,
) -> snitun_result {
    guard("snitun_client_connect", || {
        // SAFETY: caller's pointer contracts.
        let out = unsafe { out_ptr(out, "out") }?;
        let config = unsafe { handle_ref(config, "config") }?;
        let Some(token) = config.token.as_ref() else {
            return Err(FfiError::config(
                "no token: set it with snitun_client_config_set_token()",
            ));
        };
        let (Some(key), Some(iv)) = (config.key.as_ref(), config.iv.as_ref()) else {
            return Err(FfiError::config(
                "no AES key and IV: set them with snitun_client_config_set_aes_key(_hex)() \
                 and snitun_client_config_set_aes_iv(_hex)()",
            ));
        };
        let Some(endpoint) = config.endpoint.as_ref() else {
            return Err(FfiError::config(
                "no endpoint: set it with snitun_client_config_set_endpoint()",
            ));
        };
        let mut builder = Client::builder(config.server.clone())
            .token(token.as_bytes().to_vec())
            .aes(**key, **iv)
            .cipher(config.cipher)
            .protocol_version(config.protocol_version)
            .endpoint(endpoint.clone())
            .access_list(config.access_list.clone())
            .reconnect(config.reconnect.clone());
        if let Some(rate) = config.throttling {
            builder = builder.throttling(Some(rate));
        }
        if let Some(limit) = config.connect_timeout {
            builder = builder.connect_timeout(limit);
        }
        let session = block_on(async move {
            match limit(timeout_ms) {
                Some(limit) => tokio::time::timeout(limit, builder.connect())
                    .await
                    .unwrap_or(Err(snitun_core::Error::Timeout {
                        during: "connecting and handshaking",
                    })),
                None => builder.connect().await,
            }
        })?
        .map_err(|e| FfiError::core("connecting", e))?;
        let callbacks = config.callbacks;
        let events = if callbacks.any() {
            let session = session.clone();
            Some(EventThread::spawn("snitun-client-events", move |stop| {
                run_events(session, callbacks, stop);
            })?)
        } else {
            None
        };
        give(out, snitun_client { session, events });
        Ok(())
    })
}

/// Whether the tunnel to the server is up now (false for NULL, and while a
/// reconnect is pending).
///
/// Thread-safe; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_is_connected(client: *const snitun_client) -> bool {
    guard_value("snitun_client_is_connected", false, || {
        // SAFETY: caller's pointer contract.
        unsafe { client.as_ref() }.is_some_and(|client| client.session.is_connected())
    })
}

/// End the session: close the link, stop reconnecting, and wait at most
/// `timeout_ms` milliseconds (`SNITUN_TIMEOUT_INFINITE`: no limit) until
/// its work has ended and the disconnected callback (reason "shut down")
/// has returned (unless called from a callback of this client). Calling it
/// again, or on an ended session, returns at once.
///
/// Errors: `SNITUN_RESULT_TIMEOUT` (the session is still winding down; it
/// ends on its own).
/// Thread-safe. Blocks; must not be called from a log callback.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_disconnect(
    client: *const snitun_client,
    timeout_ms: u64,
) -> snitun_result {
    guard("snitun_client_disconnect", || {
        // SAFETY: caller's pointer contract.
        let client = unsafe { handle_ref(client, "client") }?;
        wait_for(
            timeout_ms,
            async {
                client.session.disconnect().await;
                client.callbacks_done().await;
            },
            "disconnecting",
        )
    })
}

/// Wait until the session is over (its link ended and no reconnect policy
/// is set, or it was disconnected), at most `timeout_ms` milliseconds
/// (0: just check; `SNITUN_TIMEOUT_INFINITE`: no limit).
///
/// Returns `SNITUN_RESULT_OK` when the session is over (see
/// snitun_client_end_reason()) and its last disconnected callback has
/// returned (unless called from a callback of this client),
/// `SNITUN_RESULT_TIMEOUT` when it is still running.
/// Thread-safe. Blocks; must not be called from a log callback.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_wait(
    client: *const snitun_client,
    timeout_ms: u64,
) -> snitun_result {
    guard("snitun_client_wait", || {
        // SAFETY: caller's pointer contract.
        let client = unsafe { handle_ref(client, "client") }?;
        wait_for(
            timeout_ms,
            async {
                client.session.wait().await;
                client.callbacks_done().await;
            },
            "waiting for the session to end",
        )
    })
}

fn wait_for<F: Future>(ms: u64, future: F, during: &str) -> Result<(), FfiError> {
    let done = block_on(async move {
        match limit(ms) {
            Some(limit) => tokio::time::timeout(limit, future).await.is_ok(),
            None => {
                future.await;
                true
            }
        }
    })?;
    if done {
        Ok(())
    } else {
        Err(FfiError::new(
            snitun_result::Timeout,
            format!("timed out {during}"),
        ))
    }
}

/// Copy why the session ended into `buf`, NUL-terminated (for example
/// `"shut down"`, `"closed by the peer"`, `"no pong to our ping"`). Size
/// query with `buf` NULL; see "Output strings".
///
/// Errors: `SNITUN_RESULT_INVALID_STATE` while the session is running.
/// Thread-safe; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_end_reason(
    client: *const snitun_client,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> snitun_result {
    guard("snitun_client_end_reason", || {
        // SAFETY: caller's pointer contract.
        let client = unsafe { handle_ref(client, "client") }?;
        // Poll once: the end is known at once or the session still runs.
        let wait = std::pin::pin!(client.session.wait());
        let Poll::Ready(end) = wait.poll(&mut Context::from_waker(Waker::noop())) else {
            return Err(FfiError::state("the session is still running"));
        };
        // SAFETY: caller's buffer contract.
        unsafe { write_str(&end.to_string(), buf, len, out_n) }
    })
}

/// Free a client; NULL is a no-op. A running session is disconnected
/// without waiting (its connections close on library threads shortly
/// after). Once this returns no callback of this client runs any more,
/// unless it is called from one of them (the callback then finishes and
/// no other follows). Callers that want the connections closed first call
/// snitun_client_disconnect() before.
///
/// Must not race with other calls on this client. Blocks only until a
/// callback of this client in progress on another thread returns.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_client_free(client: *mut snitun_client) {
    let _ = guard("snitun_client_free", || {
        // SAFETY: caller's ownership contract.
        unsafe { free_handle(client) };
        Ok(())
    });
}
