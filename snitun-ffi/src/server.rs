//! The public server: configuration, start/stop, peers, bound addresses,
//! peer events.

use std::ffi::{CString, c_char, c_void};
use std::net::SocketAddr;
use std::time::Duration;

use snitun_core::server::{BoundAddrs, PeerEvent, Server, ServerHandle};
use snitun_core::token::{FernetKey, KeyRing};
use tokio::sync::broadcast::error::RecvError;

use crate::args::{
    free_handle, give, handle_mut, handle_ref, limit, out_ptr, parse_listen_addr, str_arg,
    write_str,
};
use crate::error::{FfiError, guard, guard_value, snitun_result};
use crate::runtime::{EventThread, UserData, block_on, c_string, runtime};
use crate::token::parse_fernet_key;

/// How long snitun_server_free() lets a server that was not stopped wind
/// down in the background.
const FREE_GRACE: Duration = Duration::from_secs(10);

/// Which listeners of a server: a `kind` argument of
/// snitun_server_bound_count(), snitun_server_bound_port() and
/// snitun_server_bound_addr().
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum snitun_listener_kind {
    /// SNI ports (callers), from snitun_server_config_add_sni_listen().
    Sni = 0,
    /// Peer ports (devices), from snitun_server_config_add_peer_listen().
    Peer = 1,
    /// Single ports (both), from snitun_server_config_add_listen().
    Single = 2,
}

/// What happened to a peer, in a peer event callback.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum snitun_peer_event_kind {
    /// A device completed its handshake and now serves its hostname.
    Connected = 1,
    /// A device is gone.
    Disconnected = 2,
}

/// Called when a device connects to or disconnects from the server.
///
/// `hostname` is the device's primary hostname. `detail` is the device's
/// address (`ip:port`) for `SNITUN_PEER_EVENT_KIND_CONNECTED`, and the
/// reason for `SNITUN_PEER_EVENT_KIND_DISCONNECTED` (for example `"closed
/// by the peer"`, `"replaced by a newer connection"`, `"token expired"`,
/// `"server shutting down"`). Both strings are NUL-terminated and valid
/// during the call.
///
/// Runs on the server's own event thread (never two callbacks of a server
/// at once, never on the thread that called snitun_server_start()). It may
/// call any snitun function, blocking ones included, and may even free its
/// own server. Meanwhile later events wait (up to 1024, then the oldest
/// are dropped), so keep it short.
pub type snitun_peer_event_callback = Option<
    unsafe extern "C" fn(
        userdata: *mut c_void,
        kind: snitun_peer_event_kind,
        hostname: *const c_char,
        detail: *const c_char,
    ),
>;

type PeerCallback = (
    unsafe extern "C" fn(*mut c_void, snitun_peer_event_kind, *const c_char, *const c_char),
    UserData,
);

/// How a server listens and whom it admits: from
/// snitun_server_config_new(), used by snitun_server_start() (which copies
/// it), freed with snitun_server_config_free() (which wipes the keys).
///
/// Required: at least one Fernet key, and either SNI and peer addresses
/// (dual-port mode) or single-port addresses (both may be combined).
/// Not thread-safe: do not use one config from two threads at once.
pub struct snitun_server_config {
    keys: Vec<FernetKey>,
    sni: Vec<SocketAddr>,
    peer: Vec<SocketAddr>,
    listen: Vec<SocketAddr>,
    proxy_protocol: bool,
    throttling: Option<u32>,
    peer_event: Option<PeerCallback>,
}

/// Create an empty server config in `*out` (PROXY protocol off, no
/// throttling). `*out` is NULL after a failure.
///
/// Thread-safe; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_server_config_new(
    out: *mut *mut snitun_server_config,
) -> snitun_result {
    guard("snitun_server_config_new", || {
        // SAFETY: caller's pointer contract.
        let out = unsafe { out_ptr(out, "out") }?;
        give(
            out,
            snitun_server_config {
                keys: Vec::new(),
                sni: Vec::new(),
                peer: Vec::new(),
                listen: Vec::new(),
                proxy_protocol: false,
                throttling: None,
                peer_event: None,
            },
        );
        Ok(())
    })
}

fn with_config(
    name: &str,
    config: *mut snitun_server_config,
    change: impl FnOnce(&mut snitun_server_config) -> Result<(), FfiError>,
) -> snitun_result {
    guard(name, || {
        // SAFETY: caller's pointer contract (NULL or a live config used by
        // this thread only).
        let config = unsafe { handle_mut(config, "config") }?;
        change(config)
    })
}

/// Accept tokens encrypted with `fernet_key` (URL-safe base64). Repeat for
/// key rotation: tokens opened by any of the keys are accepted. At least
/// one is required.
///
/// Errors: not a Fernet key (`SNITUN_RESULT_INVALID_ARGUMENT`).
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_server_config_add_fernet_key(
    config: *mut snitun_server_config,
    fernet_key: *const c_char,
) -> snitun_result {
    with_config("snitun_server_config_add_fernet_key", config, |config| {
        // SAFETY: caller's string contract.
        let text = unsafe { str_arg(fernet_key, "fernet_key") }?;
        config.keys.push(parse_fernet_key(text)?);
        Ok(())
    })
}

fn add_addr(
    config: &mut snitun_server_config,
    addr: *const c_char,
    kind: snitun_listener_kind,
) -> Result<(), FfiError> {
    // SAFETY: caller's string contract.
    let text = unsafe { str_arg(addr, "addr") }?.trim();
    let addr = parse_listen_addr(text, "addr")?;
    match kind {
        snitun_listener_kind::Sni => config.sni.push(addr),
        snitun_listener_kind::Peer => config.peer.push(addr),
        snitun_listener_kind::Single => config.listen.push(addr),
    }
    Ok(())
}

/// Listen for callers (TLS with SNI) on `addr` (`IPv4:port` or
/// `[IPv6]:port`; port 0 picks a free port, see snitun_server_bound_port()).
/// Repeatable. Needs a peer address too.
///
/// Errors: bad address (`SNITUN_RESULT_INVALID_ARGUMENT`).
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_server_config_add_sni_listen(
    config: *mut snitun_server_config,
    addr: *const c_char,
) -> snitun_result {
    with_config("snitun_server_config_add_sni_listen", config, |config| {
        add_addr(config, addr, snitun_listener_kind::Sni)
    })
}

/// Listen for devices (client peers) on `addr` (as for SNI addresses).
/// Repeatable. Needs an SNI address too.
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_server_config_add_peer_listen(
    config: *mut snitun_server_config,
    addr: *const c_char,
) -> snitun_result {
    with_config("snitun_server_config_add_peer_listen", config, |config| {
        add_addr(config, addr, snitun_listener_kind::Peer)
    })
}

/// Listen for callers and devices on one port, told apart by their first
/// bytes (single-port mode), on `addr` (as for SNI addresses). Repeatable;
/// may be combined with dual-port listeners.
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_server_config_add_listen(
    config: *mut snitun_server_config,
    addr: *const c_char,
) -> snitun_result {
    with_config("snitun_server_config_add_listen", config, |config| {
        add_addr(config, addr, snitun_listener_kind::Single)
    })
}

/// Expect a PROXY protocol (v1 or v2) header on every caller connection
/// and report the address it names to the device (default off). Enable it
/// only behind a trusted load balancer: anyone else could claim any
/// address.
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_server_config_set_proxy_protocol(
    config: *mut snitun_server_config,
    enabled: bool,
) -> snitun_result {
    with_config(
        "snitun_server_config_set_proxy_protocol",
        config,
        |config| {
            config.proxy_protocol = enabled;
            Ok(())
        },
    )
}

/// Throttle every device link: after each frame of 8 KiB or more sent,
/// pause 1/N second (`messages_per_second` N; 0 turns throttling off, the
/// default).
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_server_config_set_throttling(
    config: *mut snitun_server_config,
    messages_per_second: u32,
) -> snitun_result {
    with_config("snitun_server_config_set_throttling", config, |config| {
        config.throttling = (messages_per_second > 0).then_some(messages_per_second);
        Ok(())
    })
}

/// Call `callback` with `userdata` whenever a device connects or
/// disconnects (NULL removes it). See snitun_peer_event_callback.
///
/// Not thread-safe (for this config); does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_server_config_set_peer_event_callback(
    config: *mut snitun_server_config,
    callback: snitun_peer_event_callback,
    userdata: *mut c_void,
) -> snitun_result {
    with_config(
        "snitun_server_config_set_peer_event_callback",
        config,
        |config| {
            config.peer_event = callback.map(|f| (f, UserData(userdata)));
            Ok(())
        },
    )
}

/// Free a server config; NULL is a no-op. Servers started with it are not
/// affected.
///
/// Must not race with other calls on this config; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_server_config_free(config: *mut snitun_server_config) {
    let _ = guard("snitun_server_config_free", || {
        // SAFETY: caller's ownership contract.
        unsafe { free_handle(config) };
        Ok(())
    });
}

/// A running server: from snitun_server_start(), freed with
/// snitun_server_free().
///
/// Every function on a server is thread-safe, except snitun_server_free().
pub struct snitun_server {
    handle: ServerHandle,
    addrs: BoundAddrs,
    /// Calls the peer event callback; stopped first when dropped.
    events: Option<EventThread>,
}

impl Drop for snitun_server {
    fn drop(&mut self) {
        self.events.take();
        if !self.handle.is_shutting_down()
            && let Ok(runtime) = runtime()
        {
            let handle = self.handle.clone();
            runtime.spawn(async move {
                let _ = handle.shutdown(FREE_GRACE).await;
            });
        }
    }
}

fn run_peer_events(
    mut events: tokio::sync::broadcast::Receiver<PeerEvent>,
    callback: PeerCallback,
    stop: tokio_util::sync::CancellationToken,
) {
    let Ok(runtime) = runtime() else {
        return;
    };
    let (function, userdata) = callback;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let event = runtime.block_on(async {
            tokio::select! {
                biased;
                () = stop.cancelled() => None,
                event = events.recv() => Some(event),
            }
        });
        let (kind, hostname, detail) = match event {
            None | Some(Err(RecvError::Closed)) => return,
            Some(Err(RecvError::Lagged(missed))) => {
                tracing::warn!(missed, "peer events were dropped: the callback is too slow");
                continue;
            }
            Some(Ok(PeerEvent::Connected(info))) => (
                snitun_peer_event_kind::Connected,
                info.hostname,
                info.remote_addr.to_string(),
            ),
            Some(Ok(PeerEvent::Disconnected { hostname, reason })) => {
                (snitun_peer_event_kind::Disconnected, hostname, reason)
            }
        };
        let hostname = c_string(&hostname);
        let detail = c_string(&detail);
        // SAFETY: the caller gave the callback with its userdata and keeps
        // both valid until the server is freed; the strings outlive the
        // call.
        unsafe { function(userdata.0, kind, hostname.as_ptr(), detail.as_ptr()) };
    }
}

/// Bind every address of `config` and start serving on library threads;
/// the running server is stored in `*out` (NULL after a failure).
///
/// Errors: `SNITUN_RESULT_INVALID_CONFIG` (no Fernet key, no address, SNI
/// addresses without peer addresses or the reverse), `SNITUN_RESULT_IO`
/// (an address cannot be bound; the message names it).
///
/// Thread-safe (the config must not change meanwhile). Blocks briefly
/// (binding); must not be called from a log callback.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_server_start(
    config: *const snitun_server_config,
    out: *mut *mut snitun_server,
) -> snitun_result {
    guard("snitun_server_start", || {
        // SAFETY: caller's pointer contracts.
        let out = unsafe { out_ptr(out, "out") }?;
        let config = unsafe { handle_ref(config, "config") }?;
        if config.keys.is_empty() {
            return Err(FfiError::config(
                "no Fernet key: add one with snitun_server_config_add_fernet_key()",
            ));
        }
        let keys = KeyRing::new(config.keys.clone()).map_err(|e| FfiError::core("keys", e))?;
        let mut builder = Server::builder(keys).proxy_protocol(config.proxy_protocol);
        for addr in &config.sni {
            builder = builder.sni_listen(*addr);
        }
        for addr in &config.peer {
            builder = builder.peer_listen(*addr);
        }
        for addr in &config.listen {
            builder = builder.listen(*addr);
        }
        if let Some(rate) = config.throttling {
            builder = builder.throttling(Some(rate));
        }
        let callback = config.peer_event;
        let (handle, events) = block_on(async move {
            let server = builder.bind().await?;
            // Subscribe before the server runs, so no event is missed.
            let events = callback.map(|_| server.handle().subscribe());
            let handle = server.spawn();
            Ok::<_, snitun_core::Error>((handle, events))
        })?
        .map_err(|e| FfiError::core("starting the server", e))?;
        let addrs = handle.local_addrs();
        let server = snitun_server {
            handle,
            addrs,
            events: None,
        };
        let mut server = server;
        if let (Some(callback), Some(events)) = (callback, events) {
            server.events = Some(EventThread::spawn("snitun-server-events", move |stop| {
                run_peer_events(events, callback, stop);
            })?);
        }
        give(out, server);
        Ok(())
    })
}

/// Stop the server gracefully: stop accepting, shut every device's link
/// down, drop every caller, and wait at most `timeout_ms` milliseconds
/// (`SNITUN_TIMEOUT_INFINITE`: no limit) until all of that is done. The
/// listening ports are closed. Calling it again returns when the server's
/// work has ended (at once if it has).
///
/// Errors: `SNITUN_RESULT_TIMEOUT` (connections still closing; they end
/// on their own).
/// Thread-safe. Blocks; must not be called from a log callback.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_server_stop(
    server: *const snitun_server,
    timeout_ms: u64,
) -> snitun_result {
    guard("snitun_server_stop", || {
        // SAFETY: caller's pointer contract.
        let server = unsafe { handle_ref(server, "server") }?;
        let handle = &server.handle;
        let stopped = block_on(async {
            let limit = limit(timeout_ms).unwrap_or(Duration::MAX);
            handle.shutdown(limit).await
        })?;
        stopped.map_err(|e| FfiError::core("stopping the server", e))
    })
}

/// How many devices are connected now (0 for NULL).
///
/// Thread-safe; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_server_peer_count(server: *const snitun_server) -> usize {
    guard_value("snitun_server_peer_count", 0, || {
        // SAFETY: caller's pointer contract.
        unsafe { server.as_ref() }.map_or(0, |server| server.handle.peer_count())
    })
}

/// A list of strings: from snitun_server_peer_hostnames() and
/// snitun_server_hostnames(), freed with snitun_string_list_free().
///
/// Read-only: its getters are thread-safe.
pub struct snitun_string_list {
    items: Vec<CString>,
}

/// Store in `*out` a snapshot of the primary hostname of every connected
/// device, sorted (one per device; aliases not included).
///
/// Thread-safe; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_server_peer_hostnames(
    server: *const snitun_server,
    out: *mut *mut snitun_string_list,
) -> snitun_result {
    guard("snitun_server_peer_hostnames", || {
        // SAFETY: caller's pointer contracts.
        let out = unsafe { out_ptr(out, "out") }?;
        let server = unsafe { handle_ref(server, "server") }?;
        let mut names: Vec<String> = server
            .handle
            .peers()
            .into_iter()
            .map(|peer| peer.hostname)
            .collect();
        names.sort();
        let items = names.iter().map(|name| c_string(name)).collect();
        give(out, snitun_string_list { items });
        Ok(())
    })
}

/// Store in `*out` a snapshot of every hostname served now, aliases
/// included, sorted.
///
/// Thread-safe; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_server_hostnames(
    server: *const snitun_server,
    out: *mut *mut snitun_string_list,
) -> snitun_result {
    guard("snitun_server_hostnames", || {
        // SAFETY: caller's pointer contracts.
        let out = unsafe { out_ptr(out, "out") }?;
        let server = unsafe { handle_ref(server, "server") }?;
        let items = server
            .handle
            .hostnames()
            .iter()
            .map(|name| c_string(name))
            .collect();
        give(out, snitun_string_list { items });
        Ok(())
    })
}

/// The number of strings in `list` (0 for NULL).
///
/// Thread-safe; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_string_list_len(list: *const snitun_string_list) -> usize {
    guard_value("snitun_string_list_len", 0, || {
        // SAFETY: caller's pointer contract.
        unsafe { list.as_ref() }.map_or(0, |list| list.items.len())
    })
}

/// The string at `index` in `list`, NUL-terminated, valid until the list
/// is freed; NULL when `list` is NULL or `index` is out of range.
///
/// Thread-safe; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_string_list_get(
    list: *const snitun_string_list,
    index: usize,
) -> *const c_char {
    guard_value("snitun_string_list_get", std::ptr::null(), || {
        // SAFETY: caller's pointer contract.
        unsafe { list.as_ref() }
            .and_then(|list| list.items.get(index))
            .map_or(std::ptr::null(), |item| item.as_ptr())
    })
}

/// Free a string list; NULL is a no-op.
///
/// Must not race with other calls on this list; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_string_list_free(list: *mut snitun_string_list) {
    let _ = guard("snitun_string_list_free", || {
        // SAFETY: caller's ownership contract.
        unsafe { free_handle(list) };
        Ok(())
    });
}

fn bound(server: &snitun_server, kind: u32) -> Result<&[SocketAddr], FfiError> {
    match kind {
        k if k == snitun_listener_kind::Sni as u32 => Ok(&server.addrs.sni),
        k if k == snitun_listener_kind::Peer as u32 => Ok(&server.addrs.peer),
        k if k == snitun_listener_kind::Single as u32 => Ok(&server.addrs.listen),
        other => Err(FfiError::invalid(format!(
            "kind {other} is not a snitun_listener_kind (0 to 2)"
        ))),
    }
}

fn bound_at(server: &snitun_server, kind: u32, index: usize) -> Result<SocketAddr, FfiError> {
    let addrs = bound(server, kind)?;
    addrs.get(index).copied().ok_or_else(|| {
        FfiError::invalid(format!(
            "index {index}: the server has {} listeners of kind {kind}",
            addrs.len()
        ))
    })
}

/// How many listeners of `kind` (a snitun_listener_kind) the server has (0
/// for NULL or an unknown kind). They are in the order their addresses
/// were added to the config.
///
/// Thread-safe; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_server_bound_count(
    server: *const snitun_server,
    kind: u32,
) -> usize {
    guard_value("snitun_server_bound_count", 0, || {
        // SAFETY: caller's pointer contract.
        unsafe { server.as_ref() }
            .and_then(|server| bound(server, kind).ok())
            .map_or(0, <[SocketAddr]>::len)
    })
}

/// Store in `*out_port` the port the listener `index` of `kind` is bound
/// to: the port the system chose when the config asked for port 0.
///
/// Errors: unknown kind or index out of range
/// (`SNITUN_RESULT_INVALID_ARGUMENT`).
/// Thread-safe; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_server_bound_port(
    server: *const snitun_server,
    kind: u32,
    index: usize,
    out_port: *mut u16,
) -> snitun_result {
    guard("snitun_server_bound_port", || {
        // SAFETY: caller's pointer contracts.
        let server = unsafe { handle_ref(server, "server") }?;
        let out_port = unsafe { out_port.as_mut() }.ok_or_else(|| FfiError::null("out_port"))?;
        *out_port = bound_at(server, kind, index)?.port();
        Ok(())
    })
}

/// Copy the address the listener `index` of `kind` is bound to
/// (`IPv4:port` or `[IPv6]:port`) into `buf`, NUL-terminated. Size query
/// with `buf` NULL; see "Output strings".
///
/// Thread-safe; does not block.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_server_bound_addr(
    server: *const snitun_server,
    kind: u32,
    index: usize,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> snitun_result {
    guard("snitun_server_bound_addr", || {
        // SAFETY: caller's pointer contracts.
        let server = unsafe { handle_ref(server, "server") }?;
        let addr = bound_at(server, kind, index)?.to_string();
        unsafe { write_str(&addr, buf, len, out_n) }
    })
}

/// Free a server; NULL is a no-op. A server not stopped yet is stopped in
/// the background (without waiting: its ports close shortly after). Once
/// this returns no peer event callback of this server runs any more,
/// unless it is called from that callback (which then finishes and no
/// other follows). Call snitun_server_stop() first to stop gracefully.
///
/// Must not race with other calls on this server. Blocks only until a
/// callback of this server in progress on another thread returns.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn snitun_server_free(server: *mut snitun_server) {
    let _ = guard("snitun_server_free", || {
        // SAFETY: caller's ownership contract.
        unsafe { free_handle(server) };
        Ok(())
    });
}
