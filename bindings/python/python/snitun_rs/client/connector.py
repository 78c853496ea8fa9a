"""Connectors: what each caller's channel is bridged to."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from .access_list import AccessList

__all__ = ("Connector", "EndpointConnector")


class Connector:
    """Base of the connectors: holds the access list applied to callers."""

    def __init__(self, access_list: AccessList | None = None) -> None:
        """Initialize with an access list (None lets every caller in)."""
        self._access_list = access_list

    @property
    def access_list(self) -> AccessList | None:
        """The access list applied to incoming channels (or None)."""
        return self._access_list


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
