"""ClientPeer + EndpointConnector through our SniTunServer."""

from __future__ import annotations

import asyncio
from datetime import timedelta
import logging
import os
import socket

import pytest

from snitun_rs.client.access_list import AccessList, AccessListAction
from snitun_rs.client.client_peer import ClientPeer
from snitun_rs.client.connector import EndpointConnector
from snitun_rs.exceptions import SniTunConnectionError, SniTunError
from snitun_rs.server.run import SniTunServerSingle

from .conftest import HOSTNAME, Creds, Echo, Running, call_through, client_hello, wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("cipher", "protocol_version"),
    [("aes-cbc", 2), ("aes-gcm", 2), ("aes-gcm-siv", 2)],
)
async def test_bytes_through_tunnel(
    server: Running, echo: Echo, creds: Creds, cipher: str, protocol_version: int
) -> None:
    peer = ClientPeer("127.0.0.1", server.peer_port)
    assert not peer.is_connected
    await peer.start(
        EndpointConnector("127.0.0.1", echo.port),
        creds.token(cipher),
        creds.aes_key,
        creds.aes_iv,
        protocol_version=protocol_version,
        cipher=cipher,
    )
    assert peer.is_connected
    await wait_for(lambda: server.server.peers.connections == 1)
    assert server.server.peers.hostnames == [HOSTNAME]
    assert server.server.peers.peer_available(HOSTNAME)
    info = server.server.peers.get_peer(HOSTNAME)
    assert info is not None and info.cipher == cipher

    payload = os.urandom(1 << 20)
    answer = await call_through(server.sni_port, payload)
    assert answer == client_hello(HOSTNAME) + payload

    # Several callers at once.
    small = [os.urandom(1000 + i) for i in range(8)]
    answers = await asyncio.gather(*(call_through(server.sni_port, p) for p in small))
    assert [a[len(client_hello(HOSTNAME)) :] for a in answers] == small

    await peer.stop()
    assert not peer.is_connected
    await wait_for(lambda: server.server.peers.connections == 0)


async def test_stop_and_wait(server: Running, echo: Echo, creds: Creds) -> None:
    peer = ClientPeer("127.0.0.1", server.peer_port)
    with pytest.raises(RuntimeError):
        peer.wait()
    with pytest.raises(RuntimeError):
        await peer.stop()
    await peer.start(
        EndpointConnector("127.0.0.1", echo.port), creds.token(), creds.aes_key, creds.aes_iv, protocol_version=2
    )
    with pytest.raises(RuntimeError):
        await peer.start(
            EndpointConnector("127.0.0.1", echo.port), creds.token(), creds.aes_key, creds.aes_iv, protocol_version=2
        )
    waiter = peer.wait()
    await asyncio.sleep(0.1)
    assert not waiter.done()
    await peer.stop()
    async with asyncio.timeout(5):
        await waiter
    with pytest.raises(RuntimeError):
        await peer.stop()

    # Reconnect after stop (once the server has seen the old link go; the
    # server registers a peer just after the client's start() returns).
    await wait_for(lambda: server.server.peers.connections == 0)
    await peer.start(
        EndpointConnector("127.0.0.1", echo.port), creds.token(), creds.aes_key, creds.aes_iv, protocol_version=2
    )
    assert peer.is_connected
    await wait_for(lambda: server.server.peers.connections == 1)
    answer = await call_through(server.sni_port, b"again")
    assert answer.endswith(b"again")
    await peer.stop()


async def test_wait_resolves_when_server_stops(creds: Creds, echo: Echo) -> None:
    srv = SniTunServerSingle(creds.keys, host="127.0.0.1", port=0)
    await srv.start()
    port = srv.addresses[0][2]
    peer = ClientPeer("127.0.0.1", port)
    await peer.start(
        EndpointConnector("127.0.0.1", echo.port), creds.token(), creds.aes_key, creds.aes_iv, protocol_version=2
    )
    await wait_for(lambda: srv.peers.connections == 1)
    # Single port: callers come to the same port.
    assert (await call_through(port, b"single")).endswith(b"single")
    waiter = peer.wait()
    await srv.stop()
    async with asyncio.timeout(15):
        await waiter
    assert not peer.is_connected

    # The server is back on the same port: connecting works again.
    srv = SniTunServerSingle(creds.keys, host="127.0.0.1", port=port)
    await srv.start()
    await peer.start(
        EndpointConnector("127.0.0.1", echo.port), creds.token(), creds.aes_key, creds.aes_iv, protocol_version=2
    )
    await wait_for(lambda: srv.peers.connections == 1)
    assert (await call_through(port, b"back")).endswith(b"back")
    await peer.stop()
    await srv.stop()


async def test_refused_port(creds: Creds) -> None:
    peer = ClientPeer("127.0.0.1", free_port())
    with pytest.raises(SniTunConnectionError):
        await peer.start(
            EndpointConnector("127.0.0.1", 1), creds.token(), creds.aes_key, creds.aes_iv, protocol_version=2
        )
    assert not peer.is_connected


async def test_wrong_aes_key_gcm(server: Running, creds: Creds) -> None:
    peer = ClientPeer("127.0.0.1", server.peer_port)
    with pytest.raises(SniTunConnectionError):
        await peer.start(
            EndpointConnector("127.0.0.1", 1),
            creds.token("aes-gcm"),
            os.urandom(32),
            creds.aes_iv,
            cipher="aes-gcm",
        )
    assert server.server.peers.connections == 0


async def test_expired_token(server: Running, creds: Creds) -> None:
    peer = ClientPeer("127.0.0.1", server.peer_port)
    with pytest.raises(SniTunError) as info:
        await peer.start(
            EndpointConnector("127.0.0.1", 1),
            creds.token(valid=timedelta(seconds=-10)),
            creds.aes_key,
            creds.aes_iv,
        )
    assert isinstance(info.value, SniTunConnectionError)


async def test_bad_arguments(server: Running, creds: Creds) -> None:
    peer = ClientPeer("127.0.0.1", server.peer_port)
    with pytest.raises(ValueError):
        await peer.start(
            EndpointConnector("127.0.0.1", 1), creds.token(), b"short", creds.aes_iv
        )
    with pytest.raises(ValueError):
        await peer.start(
            EndpointConnector("127.0.0.1", 1),
            creds.token(),
            creds.aes_key,
            creds.aes_iv,
            cipher="rot13",
        )


async def test_cancel_pending_connect(creds: Creds) -> None:
    # A listener that accepts and never answers: the handshake waits.
    held: list[asyncio.StreamWriter] = []  # Python 3.13 closes dropped writers
    silent = await asyncio.start_server(lambda r, w: held.append(w), "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    peer = ClientPeer("127.0.0.1", port)
    task = asyncio.create_task(
        peer.start(EndpointConnector("127.0.0.1", 1), creds.token(), creds.aes_key, creds.aes_iv)
    )
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not peer.is_connected
    silent.close()


@pytest.mark.parametrize("action", ["allow", "block"])
async def test_access_list(server: Running, echo: Echo, creds: Creds, action: str) -> None:
    access = AccessList(AccessListAction(action))
    access.add("127.0.0.0/8")
    peer = ClientPeer("127.0.0.1", server.peer_port)
    await peer.start(
        EndpointConnector("127.0.0.1", echo.port, access_list=access),
        creds.token(),
        creds.aes_key,
        creds.aes_iv,
        protocol_version=2,
    )
    await wait_for(lambda: server.server.peers.connections == 1)
    if action == "allow":
        assert (await call_through(server.sni_port, b"let me in")).endswith(b"let me in")
    else:
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await call_through(server.sni_port, b"let me in")
        assert echo.connections == 0
    await peer.stop()


async def test_endpoint_error_callback(server: Running, creds: Creds) -> None:
    called = asyncio.Event()

    async def on_error() -> None:
        called.set()

    peer = ClientPeer("127.0.0.1", server.peer_port)
    await peer.start(
        EndpointConnector(
            "127.0.0.1", free_port(), endpoint_connection_error_callback=on_error
        ),
        creds.token(),
        creds.aes_key,
        creds.aes_iv,
        protocol_version=2,
    )
    await wait_for(lambda: server.server.peers.connections == 1)
    with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
        await call_through(server.sni_port, b"nobody home")
    async with asyncio.timeout(5):
        await called.wait()
    await peer.stop()


async def test_rust_logs_reach_python_logging(
    server: Running, echo: Echo, creds: Creds, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="snitun_rs")
    peer = ClientPeer("127.0.0.1", server.peer_port)
    await peer.start(
        EndpointConnector("127.0.0.1", echo.port), creds.token(), creds.aes_key, creds.aes_iv, protocol_version=2
    )
    await peer.stop()
    names = {record.name for record in caplog.records}
    assert any(name.startswith("snitun_rs.snitun.") for name in names), names
