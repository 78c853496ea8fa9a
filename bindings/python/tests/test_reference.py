"""Interop with the reference snitun 0.47 (Python >= 3.13 only)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
import hashlib

from aiohttp import web

import pytest

snitun = pytest.importorskip("snitun")

from snitun.client.client_peer import ClientPeer as RefClientPeer  # noqa: E402
from snitun.client.connector import EndpointConnector as RefEndpointConnector  # noqa: E402
from snitun.server.peer_manager import PeerManager as RefPeerManager  # noqa: E402
from snitun.server.run import SniTunServer as RefSniTunServer  # noqa: E402
from snitun.utils.server import generate_client_token as ref_generate_token  # noqa: E402

from snitun_rs.client.client_peer import ClientPeer  # noqa: E402
from snitun_rs.client.connector import EndpointConnector  # noqa: E402
from snitun_rs.utils.aiohttp_client import SniTunClientAioHttp  # noqa: E402
from snitun_rs.utils.server import generate_client_token  # noqa: E402

from .conftest import HOSTNAME, Creds, Echo, Running, call_through, wait_for  # noqa: E402
from .test_aiohttp import AppState, https, make_app, stream_bytes  # noqa: E402
from .test_tunnel import free_port  # noqa: E402
from .tls import Tls  # noqa: E402


@pytest.mark.parametrize("cipher", ["aes-cbc", "aes-gcm", "aes-gcm-siv"])
def test_our_token_in_reference(creds: Creds, cipher: str) -> None:
    token = generate_client_token(
        creds.keys, timedelta(hours=1), HOSTNAME, creds.aes_key, creds.aes_iv, cipher
    )
    peer = RefPeerManager(creds.keys).create_peer(token)
    assert peer.hostname == HOSTNAME
    assert peer.protocol_version == 2


async def test_reference_client_and_token_on_our_server(
    server: Running, echo: Echo, creds: Creds
) -> None:
    token = ref_generate_token(
        creds.keys, timedelta(hours=1), HOSTNAME, creds.aes_key, creds.aes_iv
    )
    peer = RefClientPeer("127.0.0.1", server.peer_port)
    await peer.start(
        RefEndpointConnector("127.0.0.1", echo.port),
        token,
        creds.aes_key,
        creds.aes_iv,
        protocol_version=2,
    )
    await wait_for(lambda: server.server.peers.connections == 1)
    assert (await call_through(server.sni_port, b"ref client")).endswith(b"ref client")
    await peer.stop()


@pytest.mark.parametrize("cipher", ["aes-cbc", "aes-gcm"])
async def test_our_client_on_reference_server(echo: Echo, creds: Creds, cipher: str) -> None:
    sni_port, peer_port = free_port(), free_port()
    ref = RefSniTunServer(
        creds.keys, sni_port=sni_port, sni_host="127.0.0.1", peer_port=peer_port, peer_host="127.0.0.1"
    )
    await ref.start()
    try:
        peer = ClientPeer("127.0.0.1", peer_port)
        await peer.start(
            EndpointConnector("127.0.0.1", echo.port),
            creds.token(cipher),
            creds.aes_key,
            creds.aes_iv,
            protocol_version=2,
            cipher=cipher,
        )
        await wait_for(lambda: ref.peers.connections == 1)
        payload = bytes(range(256)) * 1024
        assert (await call_through(sni_port, payload)).endswith(payload)
        await peer.stop()
    finally:
        await ref.stop()
        await asyncio.sleep(0)


@pytest.mark.parametrize("cipher", ["aes-cbc", "aes-gcm", "aes-gcm-siv"])
async def test_aiohttp_drop_in_through_reference_server(creds: Creds, tls: Tls, cipher: str) -> None:
    """Our SniTunClientAioHttp serving real HTTPS requests through the
    reference's server."""
    sni_port, peer_port = free_port(), free_port()
    ref = RefSniTunServer(
        creds.keys, sni_port=sni_port, sni_host="127.0.0.1", peer_port=peer_port, peer_host="127.0.0.1"
    )
    await ref.start()
    state = AppState([], [], [])
    runner = web.AppRunner(make_app(state))
    await runner.setup()
    try:
        client = SniTunClientAioHttp(runner, tls.server_context(), "127.0.0.1", peer_port)
        await client.start()
        await client.connect(
            creds.token(cipher), creds.aes_key, creds.aes_iv, protocol_version=2, cipher=cipher
        )
        await wait_for(lambda: ref.peers.connections == 1)
        status, body = await https(sni_port, tls, "GET", "/hello")
        assert (status, body) == (200, b"hello 127.0.0.1 cloud=False")
        size = 16 * 1024 * 1024
        status, body = await https(sni_port, tls, "GET", f"/download?size={size}")
        assert status == 200
        assert hashlib.sha256(body).digest() == hashlib.sha256(stream_bytes(size)).digest()
        payload = stream_bytes(size)
        status, _ = await https(sni_port, tls, "POST", "/upload", payload)
        assert status == 200
        assert state.uploads == [(size, hashlib.sha256(payload).hexdigest())]
        await client.stop()
    finally:
        await runner.cleanup()
        await ref.stop()
        await asyncio.sleep(0)
