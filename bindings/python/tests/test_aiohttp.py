"""The aiohttp drop-in: an app served over TLS through the tunnel, with no
loopback socket between the tunnel and the app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
import contextvars
from dataclasses import dataclass
import gc
import hashlib
import os
from pathlib import Path
import ssl

from aiohttp import web
import pytest

from snitun_rs.client.access_list import AccessList, AccessListAction
from snitun_rs.utils.aiohttp_client import SniTunClientAioHttp

from .conftest import HOSTNAME, Creds, Running, wait_for
from .tls import Tls

# Home Assistant sets such a variable before connecting and reads it in its
# request handlers.
IS_CLOUD = contextvars.ContextVar("is_cloud", default=False)

MIB = 1024 * 1024
BLOCK = bytes(range(256)) * 256  # 64 KiB


def stream_bytes(size: int) -> bytes:
    """The first ``size`` bytes of the pattern the app streams."""
    return (BLOCK * (size // len(BLOCK) + 1))[:size]


@dataclass
class AppState:
    remotes: list[str]
    cloud_flags: list[bool]
    uploads: list[tuple[int, str]]
    sockets_opened: int = 0
    file: Path | None = None


def make_app(state: AppState, slow: float = 0.0) -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        state.remotes.append(request.remote or "")
        state.cloud_flags.append(IS_CLOUD.get())
        return web.Response(text=f"hello {request.remote} cloud={IS_CLOUD.get()}")

    async def download(request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        response = web.StreamResponse()
        response.content_length = size
        await response.prepare(request)
        sent = 0
        while sent < size:
            chunk = BLOCK[: min(len(BLOCK), size - sent)]
            await response.write(chunk)
            sent += len(chunk)
            if slow:
                await asyncio.sleep(slow)
        await response.write_eof()
        return response

    async def upload(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_chunked(256 * 1024):
            digest.update(chunk)
            size += len(chunk)
            if slow:
                await asyncio.sleep(slow)
        state.uploads.append((size, digest.hexdigest()))
        return web.json_response({"size": size, "sha256": digest.hexdigest()})

    async def file(request: web.Request) -> web.FileResponse:
        # aiohttp serves files with loop.sendfile(), which falls back to
        # writes on TLS transports (the path Home Assistant's frontend takes).
        assert state.file is not None
        return web.FileResponse(state.file)

    app = web.Application(client_max_size=1024 * MIB)
    app.router.add_get("/file", file)
    app.router.add_get("/hello", hello)
    app.router.add_get("/download", download)
    app.router.add_post("/upload", upload)
    return app


@dataclass
class Served:
    client: SniTunClientAioHttp
    runner: web.AppRunner
    state: AppState


@pytest.fixture
async def served(tls: Tls, server: Running, creds: Creds) -> AsyncIterator[Served]:
    state = AppState([], [], [])
    runner = web.AppRunner(make_app(state))
    await runner.setup()
    client = SniTunClientAioHttp(runner, tls.server_context(), "127.0.0.1", server.peer_port)
    await client.start()
    token = IS_CLOUD.set(True)
    try:
        await client.connect(creds.token(), creds.aes_key, creds.aes_iv, protocol_version=2)
    finally:
        IS_CLOUD.reset(token)
    await wait_for(lambda: server.server.peers.connections == 1)
    yield Served(client, runner, state)
    await client.stop()
    await runner.cleanup()


async def https(
    port: int,
    tls: Tls,
    method: str,
    path: str,
    body: bytes = b"",
    timeout: float = 60,
    read_delay: float = 0.0,
    sink: Callable[[bytes], object] | None = None,
) -> tuple[int, bytes]:
    """One HTTPS/1.1 request to the SNI port (SNI = HOSTNAME); returns the
    status and the body. ``read_delay`` makes a slow reader; with ``sink``
    the body is passed to it piece by piece instead of returned."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls.client_context(), server_hostname=HOSTNAME
        )
        try:
            head = (
                f"{method} {path} HTTP/1.1\r\nHost: {HOSTNAME}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode())
            view = memoryview(body)
            for offset in range(0, len(body), MIB):
                writer.write(view[offset : offset + MIB])
                await writer.drain()
            await writer.drain()
            status_line = await reader.readline()
            status = int(status_line.split()[1])
            length = None
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            if length is None:
                return status, await reader.read()
            if sink is None:
                return status, await reader.readexactly(length)
            got = 0
            while got < length:
                part = await reader.read(min(256 * 1024, length - got))
                if not part:
                    raise ConnectionError("body cut short")
                sink(part)
                got += len(part)
                if read_delay:
                    await asyncio.sleep(read_delay)
            return status, b""
        finally:
            writer.close()


async def https_when_ready(port: int, tls: Tls, method: str, path: str, wait: float = 10) -> tuple[int, bytes]:
    """``https()``, retried while the server is still registering a peer
    that has just connected (it refuses callers for an unknown hostname)."""
    async with asyncio.timeout(wait):
        while True:
            try:
                return await https(port, tls, method, path)
            except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
                await asyncio.sleep(0.05)


async def test_https_request_through_our_server(served: Served, server: Running, tls: Tls) -> None:
    status, body = await https(server.sni_port, tls, "GET", "/hello")
    assert status == 200
    assert body == b"hello 127.0.0.1 cloud=True"
    # The app saw the caller's address (peername of the channel transport)
    # and the context variable set before connect().
    assert served.state.remotes == ["127.0.0.1"]
    assert served.state.cloud_flags == [True]
    assert IS_CLOUD.get() is False


async def test_no_socket_between_tunnel_and_app(served: Served, server: Running, tls: Tls) -> None:
    # The runner has no site: the app is reachable only through the tunnel.
    assert served.runner.sites == set()
    assert served.runner.addresses == []
    status, _ = await https(server.sni_port, tls, "GET", "/hello")
    assert status == 200


async def test_concurrent_requests(served: Served, server: Running, tls: Tls) -> None:
    results = await asyncio.gather(
        *(https(server.sni_port, tls, "GET", "/hello") for _ in range(20))
    )
    assert all(status == 200 for status, _ in results)
    assert len(served.state.remotes) == 20


async def test_download_64_mib_hashed(served: Served, server: Running, tls: Tls) -> None:
    size = 64 * MIB
    status, body = await https(server.sni_port, tls, "GET", f"/download?size={size}")
    assert status == 200
    assert len(body) == size
    assert hashlib.sha256(body).digest() == hashlib.sha256(stream_bytes(size)).digest()


async def test_file_response_through_the_tunnel(
    served: Served, server: Running, tls: Tls, tmp_path
) -> None:
    payload = stream_bytes(5 * MIB + 123)
    path = tmp_path / "frontend.bin"
    path.write_bytes(payload)
    served.state.file = path
    status, body = await https(server.sni_port, tls, "GET", "/file")
    assert status == 200
    assert hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()


async def test_upload_64_mib_hashed(served: Served, server: Running, tls: Tls) -> None:
    payload = stream_bytes(64 * MIB)
    status, body = await https(server.sni_port, tls, "POST", "/upload", payload)
    assert status == 200
    assert served.state.uploads == [(len(payload), hashlib.sha256(payload).hexdigest())]


def rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# The test script runs pytest with MALLOC_ARENA_MAX=2: glibc's per-thread
# arenas otherwise keep tens of MiB of freed memory around, which would hide
# what these tests look for. Without it the bound is looser (still under
# the 64 MiB a stream piled up in memory would take).
RSS_BOUND = (32 if os.environ.get("MALLOC_ARENA_MAX") else 56) * MIB


class PeakRss:
    """Samples this process's RSS while in the block."""

    def __init__(self) -> None:
        self.before = 0
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss())
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> PeakRss:
        gc.collect()
        self.before = self.peak = rss()
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, rss())
        print(f"RSS grew by {self.growth / MIB:.1f} MiB")  # shown with -s

    @property
    def growth(self) -> int:
        return self.peak - self.before


async def test_slow_reader_memory_is_bounded(served: Served, server: Running, tls: Tls) -> None:
    """A fast app streaming 64 MiB to a caller that reads slowly: the app's
    writes are paused (back-pressure from the tunnel) instead of buffering
    the stream in memory."""
    size = 64 * MIB
    digest = hashlib.sha256()
    async with PeakRss() as memory:
        status, _ = await https(
            server.sni_port,
            tls,
            "GET",
            f"/download?size={size}",
            timeout=120,
            read_delay=0.004,
            sink=digest.update,
        )
    assert status == 200
    assert digest.digest() == hashlib.sha256(stream_bytes(size)).digest()
    assert memory.growth < RSS_BOUND, f"RSS grew by {memory.growth / MIB:.0f} MiB"


async def test_slow_handler_upload_memory_is_bounded(
    tls: Tls, server: Running, creds: Creds
) -> None:
    """A caller uploading 64 MiB as fast as it can to a handler that reads
    slowly: reading is paused down the stack (the tunnel sends PAUSE)."""
    state = AppState([], [], [])
    runner = web.AppRunner(make_app(state, slow=0.002))
    await runner.setup()
    client = SniTunClientAioHttp(runner, tls.server_context(), "127.0.0.1", server.peer_port)
    await client.start()
    await client.connect(creds.token(), creds.aes_key, creds.aes_iv, protocol_version=2)
    await wait_for(lambda: server.server.peers.connections == 1)
    try:
        payload = stream_bytes(64 * MIB)
        async with PeakRss() as memory:
            status, _ = await https(server.sni_port, tls, "POST", "/upload", payload, timeout=120)
        assert status == 200
        assert state.uploads == [(len(payload), hashlib.sha256(payload).hexdigest())]
        assert memory.growth < RSS_BOUND, f"RSS grew by {memory.growth / MIB:.0f} MiB"
    finally:
        await client.stop()
        await runner.cleanup()


@pytest.mark.parametrize("action", ["allow", "block"])
async def test_live_access_list(
    tls: Tls, server: Running, creds: Creds, action: str
) -> None:
    state = AppState([], [], [])
    runner = web.AppRunner(make_app(state))
    await runner.setup()
    client = SniTunClientAioHttp(runner, tls.server_context(), "127.0.0.1", server.peer_port)
    access = AccessList(AccessListAction(action))
    if action == "allow":
        access.add("127.0.0.0/8")
    await client.start(access_list=access)
    await client.connect(creds.token(), creds.aes_key, creds.aes_iv, protocol_version=2)
    await wait_for(lambda: server.server.peers.connections == 1)
    try:
        assert client.access_list is access
        status, _ = await https(server.sni_port, tls, "GET", "/hello")
        assert status == 200
        # Edited while connected: applies to the next caller.
        if action == "allow":
            access.remove("127.0.0.0/8")
        else:
            access.add("127.0.0.1")
        with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, OSError)):
            await https(server.sni_port, tls, "GET", "/hello", timeout=10)
        assert len(state.remotes) == 1
    finally:
        await client.stop()
        await runner.cleanup()


async def test_disconnect_and_reconnect(served: Served, server: Running, tls: Tls, creds: Creds) -> None:
    client = served.client
    assert client.is_connected
    ended = client.wait()
    await client.disconnect()
    assert not client.is_connected
    async with asyncio.timeout(10):
        await ended
    await wait_for(lambda: server.server.peers.connections == 0)
    await client.connect(creds.token(), creds.aes_key, creds.aes_iv, protocol_version=2)
    await wait_for(lambda: server.server.peers.connections == 1)
    status, _ = await https(server.sni_port, tls, "GET", "/hello")
    assert status == 200


async def test_tls_failure_closes_only_that_channel(served: Served, server: Running, tls: Tls) -> None:
    # A caller that does not trust the certificate: its handshake fails.
    untrusting = ssl.create_default_context()
    with pytest.raises(ssl.SSLError):
        async with asyncio.timeout(10):
            _, writer = await asyncio.open_connection(
                "127.0.0.1", server.sni_port, ssl=untrusting, server_hostname=HOSTNAME
            )
            writer.close()
    status, _ = await https(server.sni_port, tls, "GET", "/hello")
    assert status == 200
    assert served.client.is_connected


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


async def test_stop_leaves_no_tasks_or_threads(tls: Tls, server: Running, creds: Creds) -> None:
    state = AppState([], [], [])
    runner = web.AppRunner(make_app(state))
    await runner.setup()
    client = SniTunClientAioHttp(runner, tls.server_context(), "127.0.0.1", server.peer_port)
    await client.start()

    async def session(streaming: bool) -> None:
        await client.connect(creds.token(), creds.aes_key, creds.aes_iv, protocol_version=2)
        assert (await https_when_ready(server.sni_port, tls, "GET", "/hello"))[0] == 200
        for _ in range(2):
            assert (await https(server.sni_port, tls, "GET", "/hello"))[0] == 200
        if streaming:
            # A response still streaming when the tunnel stops.
            pending = asyncio.create_task(
                https(server.sni_port, tls, "GET", f"/download?size={256 * MIB}", timeout=30)
            )
            await asyncio.sleep(0.3)
        await client.stop()
        if streaming:
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError)):
                await pending

    # The first session starts the shared tokio runtime's threads.
    await session(streaming=False)
    await asyncio.sleep(0.2)
    tasks_before = asyncio.all_tasks()
    threads_before = os_threads()
    await session(streaming=True)
    await runner.cleanup()
    await asyncio.sleep(0.2)
    leftover = asyncio.all_tasks() - tasks_before
    assert not leftover, leftover
    assert os_threads() <= threads_before
