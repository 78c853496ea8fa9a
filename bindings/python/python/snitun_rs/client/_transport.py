"""Tunnel channels as asyncio transports (no loopback socket).

Each channel the server opens is handed over by Rust as a
``NativeChannel``; :class:`ChannelTransport` wraps it as an
``asyncio.Transport`` that ``loop.start_tls(..., server_side=True)``
upgrades, so an aiohttp ``RequestHandler`` (or any protocol) speaks TLS
straight over the tunnel. Rust reads ahead a bounded amount and wakes the
loop once per batch; the bytes are copied from Rust straight into the
protocol's buffer. See the module docs of ``bindings/python/src/bridge.rs``
for the flow control on the Rust side.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import contextvars
import functools
import logging
import ssl
from typing import Any

from .._snitun_rs import NativeChannel
from ..exceptions import MultiplexerTransportError

_LOGGER = logging.getLogger(__name__)

# What one wake-up delivers at most before it yields to other callbacks.
_WAKE_BUDGET = 1024 * 1024
# Slice size for protocols that do not say (SSLProtocol's max_size).
_DEFAULT_SLICE = 256 * 1024


class ChannelTransport(asyncio.Transport):
    """An ``asyncio.Transport`` over one tunnel channel.

    ``get_extra_info("peername")`` is ``(caller_ip, 0)``. The protocol is
    paused (``pause_writing``) while more than 256 KiB written have not been
    taken by the tunnel, and resumed once all of it has; ``pause_reading``
    stops deliveries (the tunnel then sends PAUSE upstream).
    """

    # loop.start_tls() refuses transports without this.
    _start_tls_compatible = True

    def __init__(
        self,
        native: NativeChannel,
        loop: asyncio.AbstractEventLoop,
        context: contextvars.Context,
    ) -> None:
        """Wrap ``native``; callbacks run on ``loop`` in ``context``."""
        super().__init__(extra={"peername": (native.peer_ip, 0)})
        self._native = native
        self._loop = loop
        self._context = context
        self._protocol: asyncio.BaseProtocol | None = None
        # Reading starts paused: start_tls() pauses, sets its protocol and
        # resumes, and nothing may be delivered before it has.
        self._reading_paused = True
        self._writing_paused = False
        self._closing = False
        self._lost = False
        self._closed: asyncio.Future[None] = loop.create_future()
        schedule = functools.partial(
            loop.call_soon_threadsafe, self._wake, context=context
        )
        if native.attach(schedule):
            self._schedule_wake()

    # -- asyncio.BaseTransport -------------------------------------------

    def get_protocol(self) -> asyncio.BaseProtocol:  # type: ignore[override]
        """The current protocol (SSLProtocol after start_tls)."""
        assert self._protocol is not None, "ChannelTransport: protocol not set"
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Set the protocol that receives the channel's data."""
        self._protocol = protocol

    def is_closing(self) -> bool:
        """True once closed, aborted, or the channel ended."""
        return self._closing

    def close(self) -> None:
        """Close after sending what was written; the protocol's
        ``connection_lost(None)`` follows."""
        if self._closing:
            return
        self._closing = True
        self._native.close()
        self._lose(None)

    # -- asyncio.ReadTransport -------------------------------------------

    def is_reading(self) -> bool:
        """Whether data is being delivered."""
        return not self._reading_paused and not self._closing

    def pause_reading(self) -> None:
        """Stop delivering data until ``resume_reading()``."""
        if self._reading_paused:
            return
        self._reading_paused = True
        self._native.set_read_paused(True)

    def resume_reading(self) -> None:
        """Deliver data again."""
        if not self._reading_paused:
            return
        self._reading_paused = False
        self._native.set_read_paused(False)
        if self._native.claim():
            self._schedule_wake()

    # -- asyncio.WriteTransport ------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:  # type: ignore[override]
        """Queue ``data`` for the caller; never blocks."""
        if self._closing:
            return
        if self._native.write(data) and not self._writing_paused:
            self._writing_paused = True
            self._call_protocol("pause_writing")

    def writelines(self, list_of_data: Any) -> None:
        """Queue each buffer in turn."""
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        """Channels have no half-close."""
        return False

    def write_eof(self) -> None:
        """Not supported by the tunnel protocol."""
        raise NotImplementedError("tunnel channels cannot half-close")

    def get_write_buffer_size(self) -> int:
        """Bytes written and not yet taken by the tunnel."""
        return self._native.write_buffer_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """The fixed limits: resume at 0, pause above 256 KiB."""
        return (0, 256 * 1024)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Accepted for compatibility; the tunnel's limits are fixed."""

    def abort(self) -> None:
        """Close now, dropping what was not sent."""
        if self._closing and self._lost:
            return
        self._closing = True
        self._native.abort()
        self._lose(None)

    # Called by SSLProtocol when the handshake times out or fails.
    def _force_close(self, exc: BaseException | None) -> None:
        self._closing = True
        self._native.abort()
        self._lose(exc)

    # -- waiting -----------------------------------------------------------

    async def wait_closed(self) -> None:
        """Wait until the transport is closed or the channel ended."""
        await asyncio.shield(self._closed)

    # -- the bridge --------------------------------------------------------

    def _schedule_wake(self) -> None:
        self._loop.call_soon(self._wake, context=self._context)

    def _wake(self) -> None:
        """Deliver what Rust has for us, resume writing if due, and notice
        the channel's end."""
        native = self._native
        try:
            if native.take_resume() and self._writing_paused and not self._closing:
                self._writing_paused = False
                self._call_protocol("resume_writing")
            self._deliver(native)
            if not self._closing and (ended := native.ended()) is not None:
                self._closing = True
                error = (
                    MultiplexerTransportError(f"channel aborted: {ended}") if ended else None
                )
                self._lose(error)
        except Exception as exc:  # noqa: BLE001
            # A protocol callback failed: report it and end the channel,
            # as asyncio's own transports do.
            self._loop.call_exception_handler(
                {
                    "message": "Fatal error on tunnel channel transport",
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
            self._force_close(exc)
        finally:
            if native.finish_wake():
                self._schedule_wake()

    def _deliver(self, native: NativeChannel) -> None:
        protocol = self._protocol
        if protocol is None or self._closing:
            return
        budget = _WAKE_BUDGET
        if isinstance(protocol, asyncio.BufferedProtocol):
            slice_size = getattr(protocol, "max_size", _DEFAULT_SLICE)
            while budget > 0 and not self._reading_paused and not self._closing:
                pending = native.readable
                if not pending:
                    return
                buf = protocol.get_buffer(min(pending, slice_size))
                size = len(buf)  # type: ignore[arg-type]
                if not size:
                    raise RuntimeError("get_buffer() returned an empty buffer")
                view = memoryview(buf)
                if size > pending:
                    view = view[:pending]
                copied = native.read_into(view)
                protocol.buffer_updated(copied)
                budget -= copied
        else:
            while budget > 0 and not self._reading_paused and not self._closing:
                data = native.read(_DEFAULT_SLICE)
                if not data:
                    return
                protocol.data_received(data)  # type: ignore[attr-defined]
                budget -= len(data)

    def _call_protocol(self, method: str) -> None:
        protocol = self._protocol
        if protocol is None:
            return
        try:
            getattr(protocol, method)()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001
            self._loop.call_exception_handler(
                {
                    "message": f"protocol.{method}() failed",
                    "exception": exc,
                    "transport": self,
                    "protocol": protocol,
                }
            )

    def _lose(self, exc: BaseException | None) -> None:
        """Tell the protocol once, on the next loop turn (as asyncio's
        transports do), and release ``wait_closed()``."""
        if self._lost:
            return
        self._lost = True
        self._native.detach()
        protocol = self._protocol
        if protocol is not None:
            self._loop.call_soon(
                protocol.connection_lost,
                exc if isinstance(exc, Exception) or exc is None else None,
                context=self._context,
            )
        if not self._closed.done():
            self._closed.set_result(None)


async def serve_tls(
    native: NativeChannel,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    ssl_context: ssl.SSLContext,
) -> None:
    """Serve one channel: TLS over the channel, then ``protocol_factory()``'s
    protocol over TLS, until the channel ends."""
    loop = asyncio.get_running_loop()
    transport = ChannelTransport(native, loop, contextvars.copy_context())
    peer = native.peer_ip
    protocol = protocol_factory()
    try:
        tls_transport = await loop.start_tls(
            transport, protocol, ssl_context, server_side=True
        )
    except (OSError, ssl.SSLError, ConnectionError, asyncio.TimeoutError) as exc:
        # A scanner, a client that gave up, or the tunnel went away: this
        # channel only.
        _LOGGER.debug("Cannot start TLS for %s: %s", peer, exc)
        transport.abort()
        return
    if tls_transport is None:
        transport.abort()
        return
    _LOGGER.debug("Connected peer: %s", peer)
    error: Exception | None = None
    try:
        protocol.connection_made(tls_transport)
        await transport.wait_closed()
    except Exception as exc:  # noqa: BLE001
        error = exc
        _LOGGER.error("Transport error for %s: %s", peer, exc)
        transport.abort()
    # The SSL cascade normally tells the app protocol too; during aiohttp's
    # sendfile fallback it does not reach it, so tell it here as well
    # (aiohttp's RequestHandler tolerates the second call). Never close the
    # TLS transport here: its shutdown could not complete on a dead channel.
    protocol.connection_lost(error)
