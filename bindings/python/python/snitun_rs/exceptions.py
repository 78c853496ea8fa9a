"""SniTun exceptions, with the reference's names and hierarchy."""

# Defined in the native module, which raises them from its own threads.
from ._snitun_rs import SniTunConnectionError, SniTunError

__all__ = (
    "MultiplexerTransportClose",
    "MultiplexerTransportDecrypt",
    "MultiplexerTransportError",
    "ParseProxyProtocolError",
    "ParseProxyProtocolIncompleteError",
    "ParseSNIError",
    "ParseSNIIncompleteError",
    "SniTunChallengeError",
    "SniTunConnectionError",
    "SniTunError",
    "SniTunInvalidPeer",
)


class SniTunChallengeError(SniTunError):
    """The challenge/response of a handshake failed."""


class SniTunInvalidPeer(SniTunError):
    """A peer's token or configuration is invalid."""


class ParseSNIError(SniTunError):
    """Invalid ClientHello data."""


class ParseSNIIncompleteError(ParseSNIError):
    """Incomplete ClientHello data."""


class ParseProxyProtocolError(SniTunError):
    """Invalid PROXY protocol header."""


class ParseProxyProtocolIncompleteError(ParseProxyProtocolError):
    """Incomplete PROXY protocol header."""


class MultiplexerTransportError(SniTunError):
    """The multiplexer link to the peer has a problem."""


class MultiplexerTransportClose(SniTunError):
    """The multiplexer link to the peer is closed."""


class MultiplexerTransportDecrypt(SniTunError):
    """A multiplexer message could not be decrypted."""
