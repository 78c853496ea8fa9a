"""Client peer: the device's link to a SniTun server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import logging

from .._snitun_rs import NativeSession, connect
from ..utils import DEFAULT_CIPHER, DEFAULT_PROTOCOL_VERSION
from .connector import Connector, EndpointConnector

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
        if not isinstance(connector, EndpointConnector):
            raise TypeError(
                "snitun_rs.ClientPeer serves EndpointConnector connectors; "
                f"got {type(connector).__name__}"
            )
        # A previous link that ended on its own leaves nothing to clean up.
        self._session = None
        host = self._snitun_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        access_list = connector.access_list
        self._session = await connect(
            f"{host}:{self._snitun_port}",
            bytes(fernet_token),
            bytes(aes_key),
            bytes(aes_iv),
            cipher,
            protocol_version,
            throttling,
            connector._endpoint,
            None if access_list is None else access_list._native(),
            _error_notifier(connector, asyncio.get_running_loop()),
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


def _error_notifier(
    connector: EndpointConnector, loop: asyncio.AbstractEventLoop
) -> Callable[[], None] | None:
    """A thread-safe function that runs the connector's error callback on
    ``loop`` (Rust calls it from its own threads)."""
    callback = connector._endpoint_connection_error_callback
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
