"""Side-by-side: the aiohttp drop-in of snitun_rs against the reference's.

    target/py313/bin/python bindings/python/bench/aiohttp_bench.py [--mib 64] [--rounds 5]

Serves one aiohttp app through a tunnel over TLS, four ways in one run,
interleaved round by round so machine drift hits them alike:
``rs`` (our server + our SniTunClientAioHttp), ``ref`` (the reference
server + its SniTunClientAioHttp), and the two mixed pairs; plus ``direct``
(the same app on a plain TLS socket, the limit). Each round downloads and
uploads ``--mib`` MiB and times 200 small requests. Prints medians (with
min and max) and ratios. Needs CPython 3.13 with snitun_rs, snitun 0.47.0
and aiohttp installed (the test venv ``target/py313`` has them; build
the wheel optimised first: ``SNITUN_PY_PROFILE=release
bindings/python/scripts/test.sh``).

Each request opens a new TLS connection, as a browser's first request
does; TLS and aiohttp run in Python in every variant, so the figures show
how much of the total the tunnel is.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
from collections.abc import Callable
from datetime import timedelta
import os
from pathlib import Path
import socket
import ssl
import statistics
import sys
import tempfile
import time

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tls import make_tls  # noqa: E402

from snitun.server.run import SniTunServer as RefServer  # noqa: E402
from snitun.utils.aiohttp_client import SniTunClientAioHttp as RefClient  # noqa: E402
from snitun_rs.server.run import SniTunServer as RsServer  # noqa: E402
from snitun_rs.utils.aes import generate_aes_keyset  # noqa: E402
from snitun_rs.utils.aiohttp_client import SniTunClientAioHttp as RsClient  # noqa: E402
from snitun_rs.utils.server import generate_client_token  # noqa: E402

HOST = "bench.example.net"
MIB = 1024 * 1024
BLOCK = os.urandom(256 * 1024)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_app() -> web.Application:
    async def small(_: web.Request) -> web.Response:
        return web.Response(body=b"x" * 1024)

    async def download(request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        response = web.StreamResponse()
        response.content_length = size
        await response.prepare(request)
        left = size
        while left:
            chunk = BLOCK[: min(len(BLOCK), left)]
            await response.write(chunk)
            left -= len(chunk)
        return response

    async def upload(request: web.Request) -> web.Response:
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        return web.Response(text=str(size))

    app = web.Application(client_max_size=4096 * MIB)
    app.router.add_get("/small", small)
    app.router.add_get("/download", download)
    app.router.add_post("/upload", upload)
    return app


async def request(port: int, context: ssl.SSLContext, method: str, path: str, body: int = 0) -> int:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=HOST
    )
    try:
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {body}\r\n\r\n".encode()
        )
        left = body
        while left:
            chunk = BLOCK[: min(len(BLOCK), left)]
            writer.write(chunk)
            left -= len(chunk)
            await writer.drain()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        got = 0
        while got < length:
            data = await reader.read(256 * 1024)
            if not data:
                raise ConnectionError("cut short")
            got += len(data)
        return got
    finally:
        writer.close()


async def measure(port: int, context: ssl.SSLContext, mib: int) -> dict[str, float]:
    size = mib * MIB
    started = time.perf_counter()
    assert await request(port, context, "GET", f"/download?size={size}") == size
    down = size / (time.perf_counter() - started) / 1e6
    started = time.perf_counter()
    await request(port, context, "POST", "/upload", size)
    up = size / (time.perf_counter() - started) / 1e6
    latencies = []
    for _ in range(200):
        started = time.perf_counter()
        await request(port, context, "GET", "/small")
        latencies.append((time.perf_counter() - started) * 1000)
    return {"down_MBps": down, "up_MBps": up, "req_ms_p50": statistics.median(latencies)}


async def tunnel(server_cls: Callable, client_cls: Callable, runner: web.AppRunner, tls) -> tuple:
    keys = [base64.urlsafe_b64encode(os.urandom(32)).decode()]
    sni_port, peer_port = free_port(), free_port()
    server = server_cls(keys, sni_port=sni_port, sni_host="127.0.0.1", peer_port=peer_port, peer_host="127.0.0.1")
    await server.start()
    key, iv = generate_aes_keyset()
    token = generate_client_token(keys, timedelta(hours=1), HOST, key, iv)
    client = client_cls(runner, tls.server_context(), "127.0.0.1", peer_port)
    await client.start()
    await client.connect(token, key, iv, protocol_version=2)
    # Wait until the server routes the hostname.
    for _ in range(200):
        try:
            await request(sni_port, tls.client_context(), "GET", "/small")
            break
        except (ConnectionError, ssl.SSLError, OSError):
            await asyncio.sleep(0.02)
    return server, client, sni_port


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tls = make_tls(Path(tempfile.mkdtemp()), HOST)
    runner = web.AppRunner(make_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server_context())
    await site.start()
    direct_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    variants = {
        "rs": (RsServer, RsClient),
        "ref": (RefServer, RefClient),
        "rs-server+ref-client": (RsServer, RefClient),
        "ref-server+rs-client": (RefServer, RsClient),
    }
    running = {name: await tunnel(s, c, runner, tls) for name, (s, c) in variants.items()}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in ["direct", *variants]}
    for _ in range(args.rounds):
        results["direct"].append(await measure(direct_port, tls.client_context(), args.mib))
        for name, (_, _, port) in running.items():
            results[name].append(await measure(port, tls.client_context(), args.mib))

    print(f"{args.mib} MiB each way, 200 x 1 KiB requests, {args.rounds} rounds (median [min-max])")
    print(f"{'variant':24} {'down MB/s':>22} {'up MB/s':>22} {'request ms p50':>22}")
    medians: dict[str, dict[str, float]] = {}
    for name, rounds in results.items():
        cells = []
        medians[name] = {}
        for metric in ("down_MBps", "up_MBps", "req_ms_p50"):
            values = [r[metric] for r in rounds]
            medians[name][metric] = statistics.median(values)
            cells.append(f"{statistics.median(values):8.1f} [{min(values):.1f}-{max(values):.1f}]")
        print(f"{name:24} " + " ".join(f"{c:>22}" for c in cells))
    rs, ref = medians["rs"], medians["ref"]
    print(
        f"rs/ref: down {rs['down_MBps'] / ref['down_MBps']:.2f}x, up {rs['up_MBps'] / ref['up_MBps']:.2f}x, "
        f"request latency {rs['req_ms_p50'] / ref['req_ms_p50']:.2f}x"
    )
    for server, client, _ in running.values():
        await client.stop()
        await server.stop()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
