"""examples/python run as a user would run them: the server script, and the
Home-Assistant-style device app exposed through it. On Python 3.13 the same
device app also runs with its imports switched to the reference ``snitun``,
which shows the app is written against the reference's public API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
import importlib.util
import json
from pathlib import Path
import signal
import ssl
import sys

import pytest

from .tls import Tls, make_tls

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "python"


class Process:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self, timeout: float = 30) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            line = await self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"process exited early ({await self.proc.wait()})")
        return line.decode().strip()

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            return await self.proc.wait()


@pytest.fixture
async def spawn() -> AsyncIterator:
    started: list[Process] = []

    async def _spawn(*args: str) -> Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *args, stdout=asyncio.subprocess.PIPE
        )
        started.append(Process(proc))
        return started[-1]

    yield _spawn
    for process in started:
        if process.proc.returncode is None:
            process.proc.kill()
            await process.proc.wait()


async def get(port: int, hostname: str, tls: Tls) -> dict:
    async with asyncio.timeout(20):
        while True:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=tls.client_context(), server_hostname=hostname
                )
            except (ConnectionError, ssl.SSLError):
                # The server is still registering the device that has just
                # connected.
                await asyncio.sleep(0.05)
                continue
            break
        writer.write(f"GET / HTTP/1.1\r\nHost: {hostname}\r\nConnection: close\r\n\r\n".encode())
        response = await reader.read()
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return json.loads(body)


async def run_device_through_server(spawn, tmp_path: Path, device_script: Path) -> None:
    server = await spawn(str(EXAMPLES / "server.py"), "--hostname", "home.example.net")
    info = json.loads(await server.line())
    tls = make_tls(tmp_path, info["hostname"])
    device = await spawn(
        str(device_script),
        "--server",
        f"127.0.0.1:{info['peer_port']}",
        "--token",
        info["token"],
        "--aes-key",
        info["aes_key"],
        "--aes-iv",
        info["aes_iv"],
        "--cert",
        str(tls.cert),
        "--key",
        str(tls.key),
    )
    assert await device.line() == "connected"
    answer = await get(info["sni_port"], info["hostname"], tls)
    assert answer == {"message": "Hello from home", "remote": "127.0.0.1", "cloud": True}
    assert await device.stop() == 0
    assert await server.stop() == 0


async def test_device_through_server_example(spawn, tmp_path: Path) -> None:
    await run_device_through_server(spawn, tmp_path, EXAMPLES / "device.py")


@pytest.mark.skipif(
    importlib.util.find_spec("snitun") is None, reason="the reference snitun is not installed"
)
async def test_same_app_runs_on_the_reference(spawn, tmp_path: Path) -> None:
    source = (EXAMPLES / "device.py").read_text()
    assert "snitun_rs." in source
    ported = tmp_path / "device_reference.py"
    ported.write_text(source.replace("snitun_rs.", "snitun."))
    await run_device_through_server(spawn, tmp_path, ported)
