"""Run a SniTun server from asyncio (the listeners and proxy run in Rust)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
import ipaddress
import socket
from typing import TypeAlias

from .._snitun_rs import NativeServer

__all__ = ("PeerInfo", "PeerManager", "SniTunServer", "SniTunServerSingle")

Host: TypeAlias = str | ipaddress.IPv4Address | ipaddress.IPv6Address
Hosts: TypeAlias = Host | Sequence[Host] | None


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A connected peer (a snapshot)."""

    hostname: str
    alias: list[str] = field(default_factory=list)
    protocol_version: int = 0
    cipher: str = "aes-cbc"
    address: tuple[str, int] = ("", 0)
    channels: int = 0


class PeerManager:
    """Live view of the peers connected to a server."""

    def __init__(self, server: _ServerBase) -> None:
        """Initialize the view of ``server`` (empty while it is stopped)."""
        self._server = server

    def _raw(self) -> list[tuple[str, list[str], int, str, str, int, int]]:
        native = self._server._native
        return [] if native is None else native.peers()

    @property
    def connections(self) -> int:
        """Number of connected peers."""
        return len(self._raw())

    @property
    def hostnames(self) -> list[str]:
        """Primary hostnames of the connected peers."""
        return [peer[0] for peer in self._raw()]

    def iter_peers(self) -> Iterator[PeerInfo]:
        """Snapshots of the connected peers."""
        for hostname, alias, version, cipher, ip, port, channels in self._raw():
            yield PeerInfo(hostname, alias, version, cipher, (ip, port), channels)

    def peer_available(self, hostname: str) -> bool:
        """Whether a peer serves ``hostname`` (primary name or alias)."""
        return self.get_peer(hostname) is not None

    def get_peer(self, hostname: str) -> PeerInfo | None:
        """The peer serving ``hostname``, if one is connected."""
        for peer in self.iter_peers():
            if peer.hostname == hostname or hostname in peer.alias:
                return peer
        return None


def _normalize(hosts: Hosts) -> list[str | None]:
    if hosts is None:
        return [None]
    if isinstance(hosts, str | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return [str(hosts)]
    return [str(host) for host in hosts]


async def _resolve(hosts: Hosts, port: int) -> list[str]:
    """``ip:port`` strings for every address of ``hosts`` (None: all
    interfaces, IPv4 and IPv6), as the reference's listeners bind them."""
    loop = asyncio.get_running_loop()
    addrs: list[str] = []
    for host in _normalize(hosts):
        infos = await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, _, _, _, sockaddr in infos:
            ip = sockaddr[0]
            addr = f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
            if addr not in addrs:
                addrs.append(addr)
    if not addrs:
        raise RuntimeError(f"No listening addresses for hosts: {hosts}")
    return addrs


class _ServerBase:
    """Shared start/stop/peers of both server classes."""

    def __init__(self, fernet_keys: list[str], throttling: int | None, proxy_protocol: bool) -> None:
        self._fernet_keys = list(fernet_keys)
        self._throttling = throttling
        self._proxy_protocol = proxy_protocol
        self._native: NativeServer | None = None
        self._peers = PeerManager(self)

    @property
    def peers(self) -> PeerManager:
        """The connected peers."""
        return self._peers

    @property
    def addresses(self) -> list[tuple[str, str, int]]:
        """Bound listeners as ``(kind, ip, port)``, kind ``sni``, ``peer``
        or ``listen`` (ports chosen by the system when 0 was asked)."""
        return [] if self._native is None else self._native.addresses()

    async def _start(self, sni: list[str], peer: list[str], listen: list[str]) -> None:
        if self._native is not None:
            raise RuntimeError("Server already started")
        native = NativeServer(
            self._fernet_keys, sni, peer, listen, self._throttling, self._proxy_protocol
        )
        await native.start()
        self._native = native

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._native is None:
            raise RuntimeError("Server not started")
        native, self._native = self._native, None
        await native.stop()


class SniTunServer(_ServerBase):
    """SniTun server with an SNI port (callers) and a peer port (devices)."""

    def __init__(
        self,
        fernet_keys: list[str],
        sni_port: int | None = None,
        sni_host: Hosts = None,
        peer_port: int | None = None,
        peer_host: Hosts = None,
        throttling: int | None = None,
        proxy_protocol: bool = False,
    ) -> None:
        """Initialize; ports default to 443 (SNI) and 8080 (peers)."""
        super().__init__(fernet_keys, throttling, proxy_protocol)
        self._sni_port = 443 if sni_port is None else sni_port
        self._sni_host = sni_host
        self._peer_port = 8080 if peer_port is None else peer_port
        self._peer_host = peer_host

    async def start(self) -> None:
        """Bind both ports and serve."""
        await self._start(
            await _resolve(self._sni_host, self._sni_port),
            await _resolve(self._peer_host, self._peer_port),
            [],
        )


class SniTunServerSingle(_ServerBase):
    """SniTun server with one port for both callers and devices."""

    def __init__(
        self,
        fernet_keys: list[str],
        host: Hosts = None,
        port: int | None = None,
        throttling: int | None = None,
        proxy_protocol: bool = False,
    ) -> None:
        """Initialize; the port defaults to 443."""
        super().__init__(fernet_keys, throttling, proxy_protocol)
        self._host = host
        self._port = 443 if port is None else port

    async def start(self) -> None:
        """Bind the port and serve."""
        await self._start([], [], await _resolve(self._host, self._port))
