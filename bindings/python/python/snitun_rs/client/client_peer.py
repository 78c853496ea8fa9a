"""Client peer: the device's link to a SniTun server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import logging

import contextvars

from .._snitun_rs import NativeChannel, NativeSession, connect
from ..utils import DEFAULT_CIPHER, DEFAULT_PROTOCOL_VERSION
from ._transport import serve_tls
from .connector import Connector, EndpointConnector, TransportConnector

__all__ = ("ClientPeer",)

_LOGGER = logging.getLogger(__name__)


class ClientPeer:
    """Client of a SniTun server.

    ``start()`` connects and hands shakes; from then on Rust serves the
    channels (one per caller) and keeps the link alive with pings, without
    the event loop's help. ``wait()`` resolves when the link has ended.
    """

    def __init__(self, snitun_host: str, snitun_port: int | None = None) -> None:
        """Initialize ClientPeer."""
        self._snitun_host = snitun_host
        self._snitun_port = snitun_port or 8080
        self._session: NativeSession | None = None
        self._channel_tasks: set[asyncio.Task[None]] = set()

    @property
    def is_connected(self) -> bool:
        """Whether a link to the server is up."""
        return self._session is not None and self._session.is_connected

    def wait(self) -> asyncio.Future[None]:
        """Return a future that resolves when the link to the server ends."""
        if self._session is None:
            raise RuntimeError("No SniTun connection available")
        ended = self._session.wait()
        result: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def _done(fut: asyncio.Future[str]) -> None:
            if result.done():
                return
            if fut.cancelled():
                result.cancel()
            elif (exc := fut.exception()) is not None:
                result.set_exception(exc)
            else:
                _LOGGER.debug("SniTun link ended: %s", fut.result())
                result.set_result(None)

        def _cancel(res: asyncio.Future[None]) -> None:
            if res.cancelled() and not ended.done():
                ended.cancel()

        ended.add_done_callback(_done)
        result.add_done_callback(_cancel)
        return result

    async def start(
        self,
        connector: Connector,
        fernet_token: bytes,
        aes_key: bytes,
        aes_iv: bytes,
        throttling: int | None = None,
        protocol_version: int = DEFAULT_PROTOCOL_VERSION,
        cipher: str = DEFAULT_CIPHER,
    ) -> None:
        """Connect to the server and start serving channels.

        Raises ``SniTunConnectionError`` when the server cannot be reached,
        does not answer in time, or rejects the token or the AES key.
        """
        if self.is_connected:
            raise RuntimeError("SniTun connection available")
        loop = asyncio.get_running_loop()
        endpoint: str | None = None
        on_channel = None
        if isinstance(connector, EndpointConnector):
            endpoint = connector._endpoint
        elif isinstance(connector, TransportConnector):
            on_channel = self._channel_handler(connector, loop)
        else:
            raise TypeError(
                "snitun_rs.ClientPeer serves EndpointConnector and "
                f"TransportConnector connectors; got {type(connector).__name__}"
            )
        # A previous link that ended on its own leaves nothing to clean up.
        self._session = None
        host = self._snitun_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        self._session = await connect(
            f"{host}:{self._snitun_port}",
            bytes(fernet_token),
            bytes(aes_key),
            bytes(aes_iv),
            cipher,
            protocol_version,
            throttling,
            endpoint,
            on_channel,
            connector._access_check(),
            _error_notifier(connector, loop),
        )
        _LOGGER.debug(
            "Connected to SniTun server %s:%s", self._snitun_host, self._snitun_port
        )

    async def stop(self) -> None:
        """Close the link and wait until every channel has ended."""
        if self._session is None:
            raise RuntimeError("No SniTun connection available")
        session, self._session = self._session, None
        await session.disconnect()
        # In-process channels end on the loop: their transports hear of the
        # end from Rust (connection_lost), then their tasks finish.
        if self._channel_tasks:
            await asyncio.wait(list(self._channel_tasks), timeout=10)

    def _channel_handler(
        self, connector: TransportConnector, loop: asyncio.AbstractEventLoop
    ) -> Callable[[NativeChannel], None]:
        """What Rust calls (from its threads) for each new channel: serve it
        on ``loop`` as a task, in a copy of the current context (so context
        variables set before ``start()`` are seen by request handlers)."""
        context = contextvars.copy_context()
        tasks = self._channel_tasks

        def _serve(native: NativeChannel) -> None:
            task = loop.create_task(
                serve_tls(native, connector._protocol_factory, connector._ssl_context)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        def _on_channel(native: NativeChannel) -> None:
            loop.call_soon_threadsafe(_serve, native, context=context)

        return _on_channel


def _error_notifier(
    connector: Connector, loop: asyncio.AbstractEventLoop
) -> Callable[[], None] | None:
    """A thread-safe function that runs the connector's error callback on
    ``loop`` (Rust calls it from its own threads)."""
    callback = getattr(connector, "_endpoint_connection_error_callback", None)
    if callback is None:
        return None
    tasks: set[asyncio.Task[None]] = set()

    def _run() -> None:
        task = loop.create_task(callback())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _notify() -> None:
        try:
            loop.call_soon_threadsafe(_run)
        except RuntimeError:
            # The loop is closed: nobody is left to tell.
            pass

    return _notify
