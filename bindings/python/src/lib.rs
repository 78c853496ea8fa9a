//! The native module of the `snitun-rs` Python package (`snitun_rs._snitun_rs`).
//!
//! A thin layer over the `snitun` crate: the Python package builds the
//! reference-compatible API (`snitun_rs.server.run.SniTunServer`,
//! `snitun_rs.client.client_peer.ClientPeer`, ...) on these few classes and
//! functions. Every operation that waits is an asyncio awaitable run on a
//! tokio runtime, so the GIL is free while Rust works, and cancelling the
//! awaitable drops the Rust future. Errors are raised as the exception types
//! of `snitun_rs.exceptions` (looked up when raised).

mod bridge;
mod client;
mod runtime;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use snitun::server::{Server, ServerHandle};
use snitun::token::{KeyRing, TokenClaims};
use snitun::{Cipher, Error};

/// How long `stop()` lets a server's connections drain before cutting them.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Size of the tunnel AES key and IV in bytes.
const AES_KEY_SIZE: usize = 32;
const AES_IV_SIZE: usize = 16;

pyo3::create_exception!(
    snitun_rs.exceptions,
    SniTunError,
    pyo3::exceptions::PyException,
    "Base exception of snitun_rs."
);
pyo3::create_exception!(
    snitun_rs.exceptions,
    SniTunConnectionError,
    SniTunError,
    "The client cannot connect to the server (refused, timed out, rejected)."
);

/// The exception a failed client connect raises, as the reference does:
/// bad arguments are `ValueError`, anything on the way to a working link
/// (refused, timed out, closed, wrong key) is `SniTunConnectionError`.
pub(crate) fn connect_error(err: Error) -> PyErr {
    match err {
        Error::Config(_) | Error::UnsupportedCipher(_) | Error::InvalidKey(_) => {
            PyValueError::new_err(err.to_string())
        }
        // Lazy: made without the GIL, on a runtime thread.
        other => SniTunConnectionError::new_err(other.to_string()),
    }
}

/// A lock that shrugs off poisoning (the guarded values stay consistent).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn aes_material(
    key: &[u8],
    iv: &[u8],
) -> PyResult<([u8; AES_KEY_SIZE], [u8; AES_IV_SIZE])> {
    let key: [u8; AES_KEY_SIZE] = key
        .try_into()
        .map_err(|_| PyValueError::new_err(format!("aes_key must be {AES_KEY_SIZE} bytes")))?;
    let iv: [u8; AES_IV_SIZE] = iv
        .try_into()
        .map_err(|_| PyValueError::new_err(format!("aes_iv must be {AES_IV_SIZE} bytes")))?;
    Ok((key, iv))
}

pub(crate) fn cipher(name: &str) -> PyResult<Cipher> {
    Cipher::from_name(name).map_err(|err| PyValueError::new_err(err.to_string()))
}

fn key_ring(keys: Vec<String>) -> PyResult<KeyRing> {
    KeyRing::from_strings(keys).map_err(|err| PyValueError::new_err(err.to_string()))
}

fn socket_addrs(addrs: Vec<String>) -> PyResult<Vec<SocketAddr>> {
    addrs
        .iter()
        .map(|addr| {
            addr.parse()
                .map_err(|_| PyValueError::new_err(format!("not a socket address: {addr:?}")))
        })
        .collect()
}

/// Mint a Fernet token with the first of `keys` for `hostname`, expiring at
/// unix time `valid`, carrying the AES key and IV (protocol version 2, and
/// the cipher unless aes-cbc), exactly as the reference's
/// `generate_client_token` writes it.
#[pyfunction]
#[pyo3(signature = (keys, valid, hostname, aes_key, aes_iv, cipher_name))]
fn mint_token<'py>(
    py: Python<'py>,
    keys: Vec<String>,
    valid: f64,
    hostname: String,
    aes_key: &[u8],
    aes_iv: &[u8],
    cipher_name: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    if hostname.is_empty() {
        // Servers refuse such tokens (no SNI can match an empty name).
        return Err(PyValueError::new_err("hostname must not be empty"));
    }
    let ring = key_ring(keys)?;
    let (key, iv) = aes_material(aes_key, aes_iv)?;
    let mut claims = TokenClaims::new(hostname, Duration::ZERO).with_cipher(cipher(cipher_name)?);
    claims.valid = valid;
    claims.aes_key = key;
    claims.aes_iv = iv;
    let token = ring.mint(&claims);
    Ok(PyBytes::new(py, token.as_bytes()))
}

/// A SniTun server: SNI and peer listeners, or single-port listeners.
#[pyclass(frozen, module = "snitun_rs._snitun_rs")]
struct NativeServer {
    keys: KeyRing,
    sni: Vec<SocketAddr>,
    peer: Vec<SocketAddr>,
    listen: Vec<SocketAddr>,
    throttling: Option<u32>,
    proxy_protocol: bool,
    handle: Arc<Mutex<Option<ServerHandle>>>,
}

#[pymethods]
impl NativeServer {
    #[new]
    #[pyo3(signature = (fernet_keys, sni, peer, listen, throttling, proxy_protocol))]
    fn new(
        fernet_keys: Vec<String>,
        sni: Vec<String>,
        peer: Vec<String>,
        listen: Vec<String>,
        throttling: Option<u32>,
        proxy_protocol: bool,
    ) -> PyResult<Self> {
        Ok(NativeServer {
            keys: key_ring(fernet_keys)?,
            sni: socket_addrs(sni)?,
            peer: socket_addrs(peer)?,
            listen: socket_addrs(listen)?,
            throttling,
            proxy_protocol,
            handle: Arc::new(Mutex::new(None)),
        })
    }

    /// Bind every address and start serving (awaitable).
    fn start<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if lock(&self.handle).is_some() {
            return Err(PyRuntimeError::new_err("server already started"));
        }
        let mut builder = Server::builder(self.keys.clone())
            .proxy_protocol(self.proxy_protocol)
            .throttling(self.throttling);
        for addr in &self.sni {
            builder = builder.sni_listen(*addr);
        }
        for addr in &self.peer {
            builder = builder.peer_listen(*addr);
        }
        for addr in &self.listen {
            builder = builder.listen(*addr);
        }
        let slot = self.handle.clone();
        crate::runtime::spawn_py(py, async move {
            let server = builder.bind().await.map_err(|err| match err {
                Error::Io(io) => PyOSError::new_err(io.to_string()),
                other => PyValueError::new_err(other.to_string()),
            })?;
            *lock(&slot) = Some(server.spawn());
            Ok(())
        })
    }

    /// Stop listening and close every connection (awaitable).
    fn stop<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let Some(handle) = lock(&self.handle).take() else {
            return Err(PyRuntimeError::new_err("server not started"));
        };
        crate::runtime::spawn_py(py, async move {
            handle
                .shutdown(SERVER_STOP_TIMEOUT)
                .await
                .map_err(|err| PyRuntimeError::new_err(err.to_string()))
        })
    }

    /// The bound addresses: `(kind, host, port)` with kind "sni", "peer" or
    /// "listen" (empty before `start()`).
    fn addresses(&self) -> Vec<(&'static str, String, u16)> {
        let Some(handle) = lock(&self.handle).clone() else {
            return Vec::new();
        };
        let addrs = handle.local_addrs();
        let tagged = [
            ("sni", addrs.sni),
            ("peer", addrs.peer),
            ("listen", addrs.listen),
        ];
        tagged
            .into_iter()
            .flat_map(|(kind, list)| {
                list.into_iter()
                    .map(move |addr| (kind, addr.ip().to_string(), addr.port()))
            })
            .collect()
    }

    /// Connected peers: `(hostname, aliases, protocol_version, cipher,
    /// remote_ip, remote_port, channels)`.
    #[allow(clippy::type_complexity)]
    fn peers(&self) -> Vec<(String, Vec<String>, u8, &'static str, String, u16, usize)> {
        let Some(handle) = lock(&self.handle).clone() else {
            return Vec::new();
        };
        handle
            .peers()
            .into_iter()
            .map(|peer| {
                (
                    peer.hostname,
                    peer.aliases,
                    peer.protocol_version,
                    peer.cipher.name(),
                    peer.remote_addr.ip().to_string(),
                    peer.remote_addr.port(),
                    peer.channels,
                )
            })
            .collect()
    }
}

/// Route Rust log records (from `tracing`, through `log`) to Python
/// `logging`, under `snitun_rs.<rust module path>` logger names (levels are looked up
/// on each record, so `setLevel` takes effect at once).
fn install_logging(py: Python<'_>) -> PyResult<()> {
    let logger = pyo3_log::Logger::new(py, pyo3_log::Caching::Loggers)?.set_prefix("snitun_rs");
    // A second import in the same process (e.g. sub-interpreters) finds a
    // logger installed already; that one keeps working.
    if log::set_boxed_logger(Box::new(runtime::GatedLogger(logger))).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
    Ok(())
}

/// The native core of `snitun_rs`.
#[pymodule]
fn _snitun_rs(module: &Bound<'_, PyModule>) -> PyResult<()> {
    install_logging(module.py())?;
    module.add_function(wrap_pyfunction!(mint_token, module)?)?;
    module.add_function(wrap_pyfunction!(client::connect, module)?)?;
    module.add_function(wrap_pyfunction!(runtime::quiesce, module)?)?;
    module.add_class::<NativeServer>()?;
    module.add_class::<client::NativeSession>()?;
    module.add_class::<bridge::NativeChannel>()?;
    let py = module.py();
    module.add("SniTunError", py.get_type::<SniTunError>())?;
    module.add(
        "SniTunConnectionError",
        py.get_type::<SniTunConnectionError>(),
    )?;
    module.add("PROTOCOL_VERSION", snitun::token::CURRENT_PROTOCOL_VERSION)?;
    Ok(())
}
