//! The client side: `connect()` and the session it returns.
//!
//! A channel is served either by the TCP relay of the core
//! (`EndpointConnector`) or handed to Python as a `NativeChannel` that the
//! transport of `snitun_rs.client._transport` wraps (the drop-in for the
//! reference's `TransportConnector`). Either way the access list is asked
//! per channel, so changes to the Python `AccessList` apply at once.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use snitun::client::{Client, Connector, EndpointConnector, ServeFuture, Session};
use snitun::{Channel, Error, LinkEnd, MuxConfig};

use crate::bridge::{Bridge, NativeChannel, pump};
use crate::{aes_material, cipher, connect_error};

/// Environment overrides of the client's keep-alive, in seconds (for tests
/// and unusual networks; the reference has no such knobs): how often to
/// ping the server, and how long to wait for its pong.
const PING_INTERVAL_ENV: &str = "SNITUN_RS_PING_INTERVAL";
const PING_TIMEOUT_ENV: &str = "SNITUN_RS_PING_TIMEOUT";

/// A connected client session (one link to a server).
#[pyclass(frozen, module = "snitun_rs._snitun_rs")]
pub(crate) struct NativeSession {
    session: Session,
}

#[pymethods]
impl NativeSession {
    /// Whether the link is up.
    #[getter]
    fn is_connected(&self) -> bool {
        self.session.is_connected()
    }

    /// Resolve when the link has ended, with the reason in words (awaitable).
    fn wait<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let session = self.session.clone();
        crate::runtime::spawn_py(py, async move {
            let end: LinkEnd = session.wait().await;
            Ok(end.to_string())
        })
    }

    /// Close the link and wait until every task of the session has ended
    /// (awaitable).
    fn disconnect<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let session = self.session.clone();
        crate::runtime::spawn_py(py, async move {
            session.disconnect().await;
            Ok(())
        })
    }
}

/// Asks the Python access list (a callable `ip -> bool`) about a caller.
#[derive(Clone)]
struct AccessCheck(Option<Arc<Py<PyAny>>>);

impl AccessCheck {
    fn permits(&self, caller: IpAddr) -> bool {
        let Some(check) = &self.0 else {
            return true;
        };
        crate::runtime::with_python(|py| {
            check
                .call1(py, (caller.to_string(),))
                .and_then(|verdict| verdict.is_truthy(py))
                .unwrap_or_else(|err| {
                    // A list that cannot answer lets no one in.
                    err.write_unraisable(py, None);
                    false
                })
        })
        .unwrap_or(false)
    }
}

/// Serves each channel with the core's TCP relay, after the access check.
struct Endpoint {
    relay: EndpointConnector,
    access: AccessCheck,
}

impl Connector for Endpoint {
    fn serve(&self, channel: Channel) -> ServeFuture {
        if !self.access.permits(channel.peer_ip()) {
            return refuse(channel);
        }
        self.relay.serve(channel)
    }

    fn endpoint(&self) -> String {
        self.relay.endpoint()
    }
}

/// Hands each channel to Python (`on_channel(NativeChannel)`, a
/// thread-safe scheduler onto the event loop), then pumps it.
struct Transport {
    on_channel: Arc<Py<PyAny>>,
    access: AccessCheck,
}

impl Connector for Transport {
    fn serve(&self, channel: Channel) -> ServeFuture {
        if !self.access.permits(channel.peer_ip()) {
            return refuse(channel);
        }
        let bridge = Bridge::new(channel.peer_ip());
        let handed = crate::runtime::with_python(|py| {
            let native = Py::new(
                py,
                NativeChannel {
                    bridge: bridge.clone(),
                },
            )?;
            self.on_channel.call1(py, (native,)).map(drop)
        });
        match handed {
            Some(Ok(())) => Box::pin(async move {
                pump(channel, bridge).await;
                Ok(())
            }),
            Some(Err(err)) => Box::pin(async move {
                drop(channel);
                Err(Error::Config(format!(
                    "cannot hand the channel to the event loop: {err}"
                )))
            }),
            None => Box::pin(async move {
                drop(channel);
                Err(Error::Config("the Python interpreter is gone".into()))
            }),
        }
    }

    fn endpoint(&self) -> String {
        String::from("asyncio transport")
    }
}

fn refuse(channel: Channel) -> ServeFuture {
    tracing::warn!(caller = %channel.peer_ip(), "block request per access list policy");
    // Dropping the channel sends CLOSE.
    drop(channel);
    Box::pin(async { Ok(()) })
}

fn env_seconds(name: &str) -> PyResult<Option<Duration>> {
    let Ok(value) = std::env::var(name) else {
        return Ok(None);
    };
    value
        .trim()
        .parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .filter(|limit| !limit.is_zero())
        .map(Some)
        .ok_or_else(|| {
            PyValueError::new_err(format!("{name}={value:?} is not a number of seconds"))
        })
}

/// Connect to a server's peer port and serve its channels (awaitable
/// resolving to a `NativeSession`).
///
/// Channels go to the TCP `endpoint` when given, else to `on_channel`.
/// `access_check` (a callable `ip -> bool`, or None to let everyone in) is
/// asked for every caller. `on_endpoint_error` is called each time a
/// channel cannot be served. Both are called from Rust threads with the
/// GIL.
#[pyfunction]
#[pyo3(signature = (server, token, aes_key, aes_iv, cipher_name, protocol_version, throttling, endpoint, on_channel, access_check, on_endpoint_error))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn connect<'py>(
    py: Python<'py>,
    server: String,
    token: Vec<u8>,
    aes_key: &[u8],
    aes_iv: &[u8],
    cipher_name: &str,
    protocol_version: u8,
    throttling: Option<u32>,
    endpoint: Option<String>,
    on_channel: Option<Py<PyAny>>,
    access_check: Option<Py<PyAny>>,
    on_endpoint_error: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (key, iv) = aes_material(aes_key, aes_iv)?;
    let access = AccessCheck(access_check.map(Arc::new));
    let mut mux = MuxConfig::from_env();
    if let Some(limit) = env_seconds(PING_TIMEOUT_ENV)? {
        mux.ping_timeout = limit;
    }
    let mut builder = Client::builder(server)
        .token(token)
        .aes(key, iv)
        .cipher(cipher(cipher_name)?)
        .protocol_version(protocol_version)
        .throttling(throttling)
        .mux_config(mux);
    if let Some(interval) = env_seconds(PING_INTERVAL_ENV)? {
        builder = builder.ping_interval(interval);
    }
    builder = match (endpoint, on_channel) {
        (Some(endpoint), None) => builder.connector(Endpoint {
            relay: EndpointConnector::new(endpoint),
            access,
        }),
        (None, Some(on_channel)) => builder.connector(Transport {
            on_channel: Arc::new(on_channel),
            access,
        }),
        _ => {
            return Err(PyValueError::new_err(
                "give exactly one of endpoint and on_channel",
            ));
        }
    };
    if let Some(callback) = on_endpoint_error {
        builder = builder.on_endpoint_error(move |error| {
            tracing::debug!(%error, "endpoint error");
            crate::runtime::with_python(|py| {
                if let Err(err) = callback.call0(py) {
                    err.write_unraisable(py, None);
                }
            });
        });
    }
    crate::runtime::spawn_py(py, async move {
        let session = builder.connect().await.map_err(connect_error)?;
        Ok(NativeSession { session })
    })
}
