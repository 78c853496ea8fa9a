"""Shared fixtures: a server, an echo endpoint, tokens and a TLS hello."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
import os
import struct

import pytest

from snitun_rs.server.run import SniTunServer
from snitun_rs.utils.aes import generate_aes_keyset
from snitun_rs.utils.server import generate_client_token

HOSTNAME = "device.example.org"


def fernet_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def client_hello(host: str) -> bytes:
    """A ClientHello record naming ``host`` (enough for SNI routing)."""

    def u16(n: int) -> bytes:
        return struct.pack("!H", n)

    name = host.encode()
    names = b"\x00" + u16(len(name)) + name
    sni_body = u16(len(names)) + names
    exts = b"\x00\x00" + u16(len(sni_body)) + sni_body
    exts += bytes([0x00, 0x2B, 0x00, 0x03, 0x02, 0x03, 0x04])  # supported_versions
    exts += b"\x00\x15" + u16(120) + bytes(120)  # padding
    hello = b"\x03\x03" + b"\x5a" * 32 + b"\x20" + b"\x11" * 32
    hello += b"\x00\x04\x13\x01\x13\x02" + b"\x01\x00" + u16(len(exts)) + exts
    handshake = b"\x01\x00" + u16(len(hello)) + hello
    return b"\x16\x03\x01" + u16(len(handshake)) + handshake


@dataclass
class Creds:
    keys: list[str]
    aes_key: bytes
    aes_iv: bytes

    def token(self, cipher: str = "aes-cbc", valid: timedelta = timedelta(days=1)) -> bytes:
        return generate_client_token(
            self.keys, valid, HOSTNAME, self.aes_key, self.aes_iv, cipher=cipher
        )


@pytest.fixture
def creds() -> Creds:
    key, iv = generate_aes_keyset()
    return Creds([fernet_key()], key, iv)


@dataclass
class Running:
    server: SniTunServer
    sni_port: int
    peer_port: int


@pytest.fixture
async def server(creds: Creds) -> AsyncIterator[Running]:
    srv = SniTunServer(
        creds.keys, sni_port=0, sni_host="127.0.0.1", peer_port=0, peer_host="127.0.0.1"
    )
    await srv.start()
    ports = {kind: port for kind, _, port in srv.addresses}
    yield Running(srv, ports["sni"], ports["peer"])
    await srv.stop()


@dataclass
class Echo:
    port: int
    received: list[bytes]
    connections: int = 0


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    """A TCP endpoint that echoes everything back."""
    state = Echo(0, [])

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            while data := await reader.read(65536):
                state.received.append(data)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = srv.sockets[0].getsockname()[1]
    yield state
    srv.close()
    await srv.wait_closed()


async def wait_for(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def call_through(sni_port: int, payload: bytes, host: str = HOSTNAME) -> bytes:
    """Connect to the SNI port as a caller, send a hello and ``payload``,
    and read back as many bytes as were sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sni_port)
    hello = client_hello(host)

    async def send() -> None:
        writer.write(hello + payload)
        await writer.drain()

    try:
        async with asyncio.timeout(15):
            sending = asyncio.create_task(send())
            try:
                return await reader.readexactly(len(hello) + len(payload))
            finally:
                sending.cancel()
    finally:
        writer.close()


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory):
    """A certificate for HOSTNAME and contexts trusting it."""
    from .tls import make_tls

    return make_tls(tmp_path_factory.mktemp("tls"), HOSTNAME)
