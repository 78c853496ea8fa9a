#!/usr/bin/env python3
"""Smoke test of an installed ``snitun_rs``: one whole tunnel on loopback.

    python smoke.py [--bytes N] [--timeout SECONDS]

Standalone on purpose (not a pytest module: pytest collects ``test_*.py``):
it needs only the installed package and the standard library, so it also
runs on a bare interpreter, e.g. an arm64 CPython under qemu-user. It
starts a SniTun server (SNI and peer ports on 127.0.0.1, port 0), a TCP
echo endpoint and one client peer per cipher, then for each peer connects to
the SNI port as a caller, sends a TLS ClientHello naming the peer's hostname
followed by N random bytes, and checks that every byte comes back through
the tunnel. Every wait is bounded. Prints one line
``snitun_rs smoke: ok (<machine>, ...)`` and exits 0, or names the step that
failed and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
from datetime import timedelta
import faulthandler
import os
import platform
import struct
import sys
import time

# Only the installed package: never a snitun_rs next to this file.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

CIPHERS = ("aes-cbc", "aes-gcm", "aes-gcm-siv")


def client_hello(host: str) -> bytes:
    """A TLS 1.3 ClientHello record with ``host`` as its SNI, which is all the
    server reads before routing the caller."""

    def u16(n: int) -> bytes:
        return struct.pack("!H", n)

    def u24(n: int) -> bytes:
        return struct.pack("!I", n)[1:]

    name = host.encode("ascii")
    server_name_list = b"\x00" + u16(len(name)) + name  # host_name(0)
    sni = u16(len(server_name_list)) + server_name_list
    extensions = b"\x00\x00" + u16(len(sni)) + sni  # server_name
    extensions += b"\x00\x2b" + u16(3) + b"\x02\x03\x04"  # supported_versions: TLS 1.3
    extensions += b"\x00\x0a" + u16(4) + u16(2) + b"\x00\x1d"  # supported_groups: x25519
    body = b"\x03\x03" + os.urandom(32)  # legacy version, random
    body += b"\x20" + os.urandom(32)  # legacy session id
    body += u16(4) + b"\x13\x01\x13\x02"  # cipher suites
    body += b"\x01\x00"  # compression: null
    body += u16(len(extensions)) + extensions
    handshake = b"\x01" + u24(len(body)) + body  # client_hello(1)
    return b"\x16\x03\x01" + u16(len(handshake)) + handshake  # handshake record


class Failed(Exception):
    """A step of the smoke test went wrong."""


class Steps:
    """Names the step in progress, for the failure message."""

    def __init__(self) -> None:
        self.current = "start"

    def __call__(self, name: str) -> None:
        self.current = name


async def bounded(what: str, awaitable, timeout: float):
    try:
        async with asyncio.timeout(timeout):
            return await awaitable
    except TimeoutError:
        raise Failed(f"timed out after {timeout:g} s: {what}") from None


async def until(what: str, predicate, timeout: float) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await bounded(what, poll(), timeout)


async def echo_server() -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def call(sni_port: int, host: str, payload: bytes, timeout: float) -> None:
    """Be a caller: hello + payload in, the same bytes back out."""
    hello = client_hello(host)
    sent = hello + payload
    reader, writer = await bounded(
        "connect to the SNI port", asyncio.open_connection("127.0.0.1", sni_port), timeout
    )
    try:

        async def send() -> None:
            writer.write(sent)
            await writer.drain()

        sending = asyncio.create_task(send())
        try:
            try:
                back = await bounded(
                    f"{len(sent)} bytes back from {host}", reader.readexactly(len(sent)), timeout
                )
            except asyncio.IncompleteReadError as err:
                raise Failed(
                    f"{host}: the tunnel closed after {len(err.partial)} of {len(sent)} bytes"
                ) from None
            await bounded("sending", sending, timeout)
        finally:
            sending.cancel()
        if back != sent:
            at = next(i for i, (a, b) in enumerate(zip(back, sent)) if a != b)
            raise Failed(f"{host}: byte {at} of {len(sent)} came back changed")
    finally:
        writer.close()
        try:
            await bounded("closing the caller", writer.wait_closed(), timeout)
        except (ConnectionError, Failed):
            pass


async def smoke(size: int, timeout: float, step: Steps) -> str:
    step("import snitun_rs")
    import snitun_rs
    from snitun_rs.client.client_peer import ClientPeer
    from snitun_rs.client.connector import EndpointConnector
    from snitun_rs.server.run import SniTunServer
    from snitun_rs.utils.aes import generate_aes_keyset
    from snitun_rs.utils.server import generate_client_token

    fernet_key = base64.urlsafe_b64encode(os.urandom(32)).decode()

    step("start the echo endpoint")
    echo, echo_port = await echo_server()
    server = peers = None
    try:
        step("start the server")
        server = SniTunServer(
            [fernet_key], sni_port=0, sni_host="127.0.0.1", peer_port=0, peer_host="127.0.0.1"
        )
        await bounded("server start", server.start(), timeout)
        ports = {kind: port for kind, _, port in server.addresses}
        if set(ports) != {"sni", "peer"} or not all(ports.values()):
            raise Failed(f"unexpected server addresses {server.addresses}")

        peers = []
        for cipher in CIPHERS:
            host = f"smoke-{cipher}.example.org"
            step(f"connect the {cipher} client peer")
            aes_key, aes_iv = generate_aes_keyset()
            token = generate_client_token(
                [fernet_key], timedelta(minutes=10), host, aes_key, aes_iv, cipher=cipher
            )
            peer = ClientPeer("127.0.0.1", ports["peer"])
            # The token carries protocol version 2; the client must run the
            # same (ClientPeer's default, 0, is the reference's).
            await bounded(
                f"{cipher} peer start",
                peer.start(
                    EndpointConnector("127.0.0.1", echo_port),
                    token,
                    aes_key,
                    aes_iv,
                    protocol_version=snitun_rs.PROTOCOL_VERSION,
                    cipher=cipher,
                ),
                timeout,
            )
            peers.append(peer)
            if not peer.is_connected:
                raise Failed(f"{cipher} peer not connected after start()")
            await until(
                f"the server to register {host}",
                lambda host=host: server.peers.peer_available(host),
                timeout,
            )

        payload = os.urandom(size)
        started = time.monotonic()
        for cipher in CIPHERS:
            host = f"smoke-{cipher}.example.org"
            step(f"call {host} through the tunnel")
            await call(ports["sni"], host, payload, timeout)
        elapsed = time.monotonic() - started

        step("stop the client peers")
        for peer in peers:
            await bounded("peer stop", peer.stop(), timeout)
        peers = []
        await until("the server to drop the peers", lambda: server.peers.connections == 0, timeout)
        step("stop the server")
        running, server = server, None
        await bounded("server stop", running.stop(), timeout)
    finally:
        for peer in peers or []:
            try:
                await asyncio.wait_for(peer.stop(), timeout)
            except Exception:  # noqa: BLE001 - already failing
                pass
        if server is not None:
            try:
                await asyncio.wait_for(server.stop(), timeout)
            except Exception:  # noqa: BLE001 - already failing
                pass
        echo.close()

    return (
        f"Python {platform.python_version()}, {len(CIPHERS)} peers ({', '.join(CIPHERS)}), "
        f"{len(CIPHERS)} x {size} bytes echoed through the tunnel in {elapsed:.2f} s, "
        f"protocol {snitun_rs.PROTOCOL_VERSION}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bytes", type=int, default=1 << 20, help="payload per caller (1 MiB)")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="bound of each wait, seconds (120: qemu is slow)"
    )
    args = parser.parse_args()
    # A last resort should a wait hang outside asyncio: traceback and exit 1.
    faulthandler.dump_traceback_later(args.timeout * 10, exit=True)
    step = Steps()
    try:
        details = asyncio.run(smoke(args.bytes, args.timeout, step))
    except Failed as err:
        print(f"snitun_rs smoke: FAILED at '{step.current}': {err}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - report any error as the failure
        print(
            f"snitun_rs smoke: FAILED at '{step.current}': {type(err).__name__}: {err}",
            file=sys.stderr,
        )
        return 1
    finally:
        faulthandler.cancel_dump_traceback_later()
    print(f"snitun_rs smoke: ok ({platform.machine()}, {details})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
