"""The server dies or the link stalls mid-session: ``wait()`` resolves, and
``connect()`` works again once the server is back, with no stale state
(the reference fails the latter: snitun issue 465)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
import os
import signal
import sys
import textwrap

from aiohttp import web
import pytest

from snitun_rs.utils.aiohttp_client import SniTunClientAioHttp

from .conftest import Creds, wait_for
from .test_aiohttp import AppState, https, https_when_ready, make_app
from .test_tunnel import free_port
from .tls import Tls

SERVER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from snitun_rs.server.run import SniTunServer

    async def main():
        keys = sys.argv[1].split(",")
        server = SniTunServer(keys, sni_port=int(sys.argv[2]), sni_host="127.0.0.1",
                              peer_port=int(sys.argv[3]), peer_host="127.0.0.1")
        await server.start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


class ServerProcess:
    """Our server in a child process, so it can be killed for real."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.sni_port = free_port()
        self.peer_port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SERVER_SCRIPT,
            ",".join(self.keys),
            str(self.sni_port),
            str(self.peer_port),
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(20):
            assert (await self.proc.stdout.readline()).strip() == b"ready"

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        self.proc = None


@pytest.fixture
async def server_process(creds: Creds) -> AsyncIterator[ServerProcess]:
    process = ServerProcess(creds.keys)
    yield process
    await process.kill()


@pytest.fixture
async def app() -> AsyncIterator[tuple[web.AppRunner, AppState]]:
    state = AppState([], [], [])
    runner = web.AppRunner(make_app(state))
    await runner.setup()
    yield runner, state
    await runner.cleanup()


async def test_server_killed_mid_session(
    server_process: ServerProcess, app: tuple[web.AppRunner, AppState], creds: Creds, tls: Tls
) -> None:
    runner, _ = app
    await server_process.start()
    client = SniTunClientAioHttp(runner, tls.server_context(), "127.0.0.1", server_process.peer_port)
    await client.start()
    await client.connect(creds.token(), creds.aes_key, creds.aes_iv, protocol_version=2)
    assert (await https_when_ready(server_process.sni_port, tls, "GET", "/hello"))[0] == 200
    # A caller in the middle of a download when the server dies.
    streaming = asyncio.create_task(
        https(server_process.sni_port, tls, "GET", f"/download?size={512 * 1024 * 1024}")
    )
    await asyncio.sleep(0.3)

    ended = client.wait()
    await server_process.kill()
    async with asyncio.timeout(10):
        await ended
    assert not client.is_connected
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError, OSError)):
        await streaming

    # Back on the same ports: connect() works again and serves.
    await server_process.start()
    await client.connect(creds.token(), creds.aes_key, creds.aes_iv, protocol_version=2)
    assert client.is_connected
    assert (await https_when_ready(server_process.sni_port, tls, "GET", "/hello"))[0] == 200
    await client.stop()


class StallingRelay:
    """A TCP relay to the server's peer port that can stop forwarding
    without closing anything (a link that hangs, e.g. a NAT dropping state)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.stalled = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if self.stalled.is_set():
                await asyncio.Event().wait()  # hold on forever, forward nothing
            writer.write(data)
            await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def test_pong_never_comes(
    monkeypatch: pytest.MonkeyPatch,
    server_process: ServerProcess,
    app: tuple[web.AppRunner, AppState],
    creds: Creds,
    tls: Tls,
) -> None:
    # Shrunk keep-alive: ping every 0.5 s, give up after 1 s without pong.
    monkeypatch.setenv("SNITUN_RS_PING_INTERVAL", "0.5")
    monkeypatch.setenv("SNITUN_RS_PING_TIMEOUT", "1")
    runner, _ = app
    await server_process.start()
    relay = StallingRelay(server_process.peer_port)
    await relay.start()
    try:
        client = SniTunClientAioHttp(runner, tls.server_context(), "127.0.0.1", relay.port)
        await client.start()
        await client.connect(creds.token(), creds.aes_key, creds.aes_iv, protocol_version=2)
        assert (await https_when_ready(server_process.sni_port, tls, "GET", "/hello"))[0] == 200

        ended = client.wait()
        relay.stalled.set()
        async with asyncio.timeout(10):
            await ended
        assert not client.is_connected

        # The network is back: a new link through the relay works.
        relay.stalled.clear()
        await client.connect(creds.token(), creds.aes_key, creds.aes_iv, protocol_version=2)
        await wait_for(lambda: client.is_connected)
        # The server may still hold the stale link for the hostname until it
        # notices; the new link takes over and serves.
        async with asyncio.timeout(20):
            while True:
                try:
                    status, _ = await https(server_process.sni_port, tls, "GET", "/hello", timeout=5)
                except (ConnectionError, OSError, asyncio.IncompleteReadError, TimeoutError):
                    await asyncio.sleep(0.2)
                    continue
                if status == 200:
                    break
        await client.stop()
    finally:
        await relay.stop()


def test_ping_environment_is_checked(creds: Creds) -> None:
    """A malformed override is a clear error, not a silent default."""

    async def attempt() -> None:
        from snitun_rs.client.client_peer import ClientPeer
        from snitun_rs.client.connector import EndpointConnector

        os.environ["SNITUN_RS_PING_INTERVAL"] = "soon"
        try:
            with pytest.raises(ValueError, match="SNITUN_RS_PING_INTERVAL"):
                await ClientPeer("127.0.0.1", 1).start(
                    EndpointConnector("127.0.0.1", 1), creds.token(), creds.aes_key, creds.aes_iv
                )
        finally:
            del os.environ["SNITUN_RS_PING_INTERVAL"]

    asyncio.run(attempt())


EXIT_SCRIPT = textwrap.dedent(
    """
    import asyncio, base64, os, sys
    from datetime import timedelta
    from snitun_rs.client.client_peer import ClientPeer
    from snitun_rs.client.connector import EndpointConnector
    from snitun_rs.server.run import SniTunServer
    from snitun_rs.utils.aes import generate_aes_keyset
    from snitun_rs.utils.server import generate_client_token

    async def main():
        keys = [base64.urlsafe_b64encode(os.urandom(32)).decode()]
        server = SniTunServer(keys, sni_port=0, sni_host="127.0.0.1", peer_port=0, peer_host="127.0.0.1")
        await server.start()
        port = {kind: port for kind, _, port in server.addresses}["peer"]
        key, iv = generate_aes_keyset()
        token = generate_client_token(keys, timedelta(hours=1), "exit.test", key, iv)
        peer = ClientPeer("127.0.0.1", port)
        await peer.start(EndpointConnector("127.0.0.1", 9), token, key, iv, protocol_version=2)
        if sys.argv[1] == "clean":
            await peer.stop()
            await server.stop()
        # "sloppy": exit with the session and the server still running.

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("how", ["clean", "sloppy"])
async def test_process_exits_cleanly_right_after_stop(how: str) -> None:
    """Regression: a process that exits right after stopping (or without
    stopping) must not crash in interpreter finalization while the Rust
    threads still hold Python objects (it did, about one run in ten)."""
    for _ in range(12):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", EXIT_SCRIPT, how, stderr=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(30):
            _, stderr = await proc.communicate()
        assert proc.returncode == 0, stderr.decode()
