"""Connectors: what each caller's channel is bridged to."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from ipaddress import ip_address
from ssl import SSLContext
from typing import Any

from .access_list import AccessList

__all__ = ("Connector", "EndpointConnector", "TransportConnector")


class Connector:
    """Base of the connectors: holds the access list applied to callers."""

    def __init__(self, access_list: AccessList | None = None) -> None:
        """Initialize with an access list (None lets every caller in)."""
        self._access_list = access_list

    @property
    def access_list(self) -> AccessList | None:
        """The access list applied to incoming channels (or None)."""
        return self._access_list

    def _access_check(self) -> Callable[[str], bool] | None:
        """The per-caller check the native client asks (None: everyone)."""
        if self._access_list is None:
            return None
        # Looked up on every call, so a list replaced or edited after
        # start() applies to the next caller.
        def check(ip: str) -> bool:
            access_list = self._access_list
            if access_list is None:
                return True
            address = ip_address(ip)
            if address.version == 6 and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            return access_list.check_policy(address)

        return check


class TransportConnector(Connector):
    """Serve every caller's channel in-process, over TLS, with a protocol.

    Each channel becomes an ``asyncio.Transport`` that ``loop.start_tls``
    upgrades with ``ssl_context`` (server side); then a protocol made by
    ``protocol_factory`` (e.g. an aiohttp ``RequestHandler`` factory,
    ``runner.server``) serves it. No socket is opened.

    The protocol's ``connection_lost()`` may be called twice (once through
    the TLS layer, once directly), as with the reference.
    """

    def __init__(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        ssl_context: SSLContext,
        access_list: AccessList | None = None,
    ) -> None:
        """Initialize TransportConnector."""
        super().__init__(access_list)
        self._protocol_factory = protocol_factory
        self._ssl_context = ssl_context


class EndpointConnector(Connector):
    """Relay every caller's channel to ``end_host:end_port`` over TCP.

    The relay runs in Rust; Python is only called for
    ``endpoint_connection_error_callback`` (a coroutine function, scheduled
    on the event loop of ``ClientPeer.start()`` each time the endpoint
    cannot be reached).
    """

    def __init__(
        self,
        end_host: str,
        end_port: int | str | None = None,
        access_list: AccessList | None = None,
        endpoint_connection_error_callback: Callable[[], Coroutine[Any, Any, None]]
        | None = None,
    ) -> None:
        """Initialize EndpointConnector."""
        super().__init__(access_list)
        self._end_host = end_host
        self._end_port = end_port or 443
        self._endpoint_connection_error_callback = endpoint_connection_error_callback

    @property
    def _endpoint(self) -> str:
        """``host:port`` for the native relay (IPv6 literals bracketed)."""
        host = self._end_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{int(self._end_port)}"
