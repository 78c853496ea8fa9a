"""Run one side of the reference snitun (Python, 0.47.0) for snitun-bench.

    python reference_peer.py server --fernet-key KEY
    python reference_peer.py client --server HOST:PORT --token T \
        --aes-key HEX --aes-iv HEX --endpoint HOST:PORT [--cipher C]

Each side runs in its own process so the benchmark can read its CPU time
and memory from /proc. Only the reference's public classes do the work
(``SniTunServer``, ``ClientPeer`` with its ``EndpointConnector``), with no
instrumentation, so the figures are the reference's own. The lines printed
match the `snitun` CLI's (``listening sni ADDR``, ``listening peer ADDR``,
``connected ...``), so the benchmark reads both the same way. The process
runs until stdin is closed or it gets SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from snitun.client.client_peer import ClientPeer
from snitun.client.connector import EndpointConnector
from snitun.server.run import SniTunServer


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


async def wait_for_stop() -> None:
    """Until SIGTERM/SIGINT or the end of stdin (the benchmark died)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def stdin_closed() -> None:
        while await reader.read(4096):
            pass
        stop.set()

    watcher = asyncio.create_task(stdin_closed())
    await stop.wait()
    watcher.cancel()


async def run_server(args: argparse.Namespace) -> None:
    server = SniTunServer([args.fernet_key], sni_host=args.host, peer_host=args.host)
    # The reference turns port 0 into its default ports: ask for free ports
    # by setting them after construction (as the interop driver does).
    server._list_sni._port = 0
    server._list_peer._port = 0
    await server.start()
    for kind, listener in (("sni", server._list_sni), ("peer", server._list_peer)):
        for sock in listener._server.sockets:
            host, port = sock.getsockname()[:2]
            print(f"listening {kind} {host}:{port}", flush=True)
    await wait_for_stop()
    await server.stop()


async def run_client(args: argparse.Namespace) -> None:
    end_host, end_port = split_addr(args.endpoint)
    host, port = split_addr(args.server)
    client = ClientPeer(host, port)
    await client.start(
        EndpointConnector(end_host, end_port),
        args.token.encode(),
        bytes.fromhex(args.aes_key),
        bytes.fromhex(args.aes_iv),
        protocol_version=args.protocol_version,
        cipher=args.cipher,
    )
    print(f"connected {args.server} endpoint {args.endpoint}", flush=True)
    await wait_for_stop()
    if client.is_connected:
        await client.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="side", required=True)
    server = sub.add_parser("server")
    server.add_argument("--fernet-key", required=True)
    server.add_argument("--host", default="127.0.0.1")
    client = sub.add_parser("client")
    client.add_argument("--server", required=True)
    client.add_argument("--token", required=True)
    client.add_argument("--aes-key", required=True)
    client.add_argument("--aes-iv", required=True)
    client.add_argument("--endpoint", required=True)
    client.add_argument("--cipher", default="aes-cbc")
    client.add_argument("--protocol-version", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("SNITUN_BENCH_LOG_LEVEL", "WARNING"), stream=sys.stderr)
    asyncio.run(run_server(args) if args.side == "server" else run_client(args))


if __name__ == "__main__":
    main()
