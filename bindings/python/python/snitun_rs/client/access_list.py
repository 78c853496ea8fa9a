"""Per-IP access policy for connectors."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeAlias
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_network,
)

IPAddress: TypeAlias = IPv4Address | IPv6Address
IPNetwork: TypeAlias = IPv4Network | IPv6Network
IPNetworkLike: TypeAlias = str | IPAddress | IPNetwork

__all__ = ("AccessList", "AccessListAction")


class AccessListAction(StrEnum):
    """How the networks of an :class:`AccessList` are treated.

    ``ALLOW``: only callers in the listed networks may connect.
    ``BLOCK``: callers in the listed networks are refused, everyone else
    may connect.
    """

    ALLOW = "allow"
    BLOCK = "block"


@dataclass(slots=True)
class AccessList:
    """Which caller IPs a connector accepts.

    With ``ALLOW`` (the default) an empty list refuses everyone; with
    ``BLOCK`` an empty list lets everyone in. Hosts are stored as /32 or
    /128 networks, so addresses, network objects and CIDR strings can all be
    added.

    The list is asked for every new caller, so changes apply at once, also
    while connected (it may be asked from a Rust thread, holding the GIL).
    """

    default_action: AccessListAction = AccessListAction.ALLOW
    networks: set[IPNetwork] = field(default_factory=set)

    def add(self, network: IPNetworkLike) -> None:
        """Add an address or network (CIDR)."""
        self.networks.add(ip_network(network, strict=False))

    def remove(self, network: IPNetworkLike) -> None:
        """Remove an address or network; absent entries are ignored."""
        self.networks.discard(ip_network(network, strict=False))

    def check_policy(self, ip_address: IPAddress) -> bool:
        """Whether a caller at ``ip_address`` may connect."""
        # A snapshot: another thread may edit the set meanwhile.
        listed = any(ip_address in network for network in tuple(self.networks))
        if self.default_action is AccessListAction.ALLOW:
            return listed
        return not listed
