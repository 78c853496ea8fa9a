"""Serve an aiohttp application through the tunnel, in-process."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING

from ..client.client_peer import ClientPeer
from ..client.connector import TransportConnector
from . import DEFAULT_CIPHER, DEFAULT_PROTOCOL_VERSION

if TYPE_CHECKING:
    from aiohttp.web import AppRunner

    from ..client.access_list import AccessList

__all__ = ("SniTunClientAioHttp",)

_LOGGER = logging.getLogger(__name__)


class SniTunClientAioHttp:
    """Expose the aiohttp app of ``runner`` through a SniTun server.

    Every caller's channel is upgraded to TLS with ``context`` on the event
    loop and served by ``runner.server`` directly: no localhost socket is
    involved. The tunnel itself (encryption, multiplexing, keep-alive) runs
    in Rust.
    """

    def __init__(
        self,
        runner: AppRunner,
        context: ssl.SSLContext,
        snitun_server: str,
        snitun_port: int | None = None,
    ) -> None:
        """Initialize SniTunClientAioHttp (``runner`` must be set up)."""
        self._connector: TransportConnector | None = None
        self._client = ClientPeer(snitun_server, snitun_port)
        self._server_name = f"{snitun_server}:{snitun_port}"
        self._protocol_factory = runner.server
        self._ssl_context = context

    @property
    def is_connected(self) -> bool:
        """Whether the tunnel to the server is up."""
        return self._client.is_connected

    @property
    def access_list(self) -> AccessList | None:
        """The access list applied to callers (None: everyone)."""
        if self._connector:
            return self._connector.access_list
        return None

    def wait(self) -> asyncio.Future[None]:
        """A future that resolves when the tunnel ends."""
        return self._client.wait()

    async def start(self, access_list: AccessList | None = None) -> None:
        """Prepare to serve the app (call before ``connect()``)."""
        server = self._protocol_factory
        if server is None:
            raise RuntimeError("the aiohttp runner is not set up (call runner.setup())")
        self._connector = TransportConnector(server, self._ssl_context, access_list)
        _LOGGER.info("AioHTTP snitun client started")

    async def stop(self, *, wait: bool = False) -> None:  # noqa: ARG002
        """Disconnect (``wait`` is accepted for compatibility: the stop
        always waits for the channels to end, which takes no socket
        timeout here)."""
        await self.disconnect()
        _LOGGER.info("AioHTTP snitun client closed")

    async def connect(
        self,
        fernet_key: bytes,
        aes_key: bytes,
        aes_iv: bytes,
        throttling: int | None = None,
        protocol_version: int = DEFAULT_PROTOCOL_VERSION,
        cipher: str = DEFAULT_CIPHER,
    ) -> None:
        """Connect to the SniTun server (a no-op while connected).

        Raises ``SniTunConnectionError`` when the server cannot be reached
        or refuses the token or key.
        """
        if self._client.is_connected:
            return
        if self._connector is None:
            raise RuntimeError("call start() before connect()")
        await self._client.start(
            self._connector,
            fernet_key,
            aes_key,
            aes_iv,
            throttling=throttling,
            protocol_version=protocol_version,
            cipher=cipher,
        )
        _LOGGER.info("AioHTTP snitun client connected to: %s", self._server_name)

    async def disconnect(self) -> None:
        """Disconnect from the SniTun server (a no-op when not connected)."""
        if not self._client.is_connected:
            return
        await self._client.stop()
        _LOGGER.info("AioHTTP snitun client disconnected from: %s", self._server_name)
