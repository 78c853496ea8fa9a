"""A Home-Assistant-style app reachable through a SniTun server.

    python device.py --server HOST:PORT --token TOKEN --aes-key HEX --aes-iv HEX \
        --cert cert.pem --key key.pem

The aiohttp app is never bound to a port: each caller's TLS connection
arrives through the tunnel and is served in-process (TLS with --cert/--key,
which must be valid for the device's hostname). Like Home Assistant, the app
marks requests that come through the cloud with a context variable set
before connecting, and keeps reconnecting with back-off while it runs.
Prints "connected" each time the tunnel is up; stops on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import logging
import signal
import ssl

from aiohttp import web

from snitun_rs.exceptions import SniTunConnectionError
from snitun_rs.utils.aiohttp_client import SniTunClientAioHttp

# Home Assistant sets such a variable before connecting; its request
# handlers read it to know a request came through the cloud.
IS_CLOUD_REQUEST = contextvars.ContextVar("is_cloud_request", default=False)


async def index(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "message": "Hello from home",
            "remote": request.remote,
            "cloud": IS_CLOUD_REQUEST.get(),
        }
    )


async def run(args: argparse.Namespace, stop: asyncio.Event) -> None:
    app = web.Application()
    app.router.add_get("/", index)
    runner = web.AppRunner(app)
    await runner.setup()

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    host, _, port = args.server.rpartition(":")
    client = SniTunClientAioHttp(runner, context, host, int(port))
    await client.start()

    delay = 1.0
    while not stop.is_set():
        IS_CLOUD_REQUEST.set(True)
        try:
            await client.connect(
                args.token.encode(),
                bytes.fromhex(args.aes_key),
                bytes.fromhex(args.aes_iv),
                protocol_version=2,
            )
        except SniTunConnectionError as err:
            logging.warning("cannot connect (%s); retrying in %.0f s", err, delay)
        else:
            delay = 1.0
            print("connected", flush=True)
            ended = asyncio.ensure_future(client.wait())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({ended, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if stop.is_set():
                ended.cancel()
                break
            logging.warning("tunnel lost; reconnecting")
        finally:
            IS_CLOUD_REQUEST.set(False)
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            delay = min(delay * 2, 60)

    await client.stop()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="the SniTun server's peer address HOST:PORT")
    parser.add_argument("--token", required=True)
    parser.add_argument("--aes-key", required=True, help="hex")
    parser.add_argument("--aes-iv", required=True, help="hex")
    parser.add_argument("--cert", required=True, help="TLS certificate for the device's hostname")
    parser.add_argument("--key", required=True, help="its private key")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)

    async def amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(args, stop)

    asyncio.run(amain())


if __name__ == "__main__":
    main()
