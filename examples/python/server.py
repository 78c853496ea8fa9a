"""A SniTun server for the device example, with a token for one device.

    python server.py [--sni-port 0] [--peer-port 0] [--hostname device.local]

Prints one JSON line with the bound ports and the device's credentials
(token, AES key and IV, hex), then serves until interrupted (Ctrl-C or
SIGTERM). In production the Fernet key comes from your configuration and
tokens are issued by your account service.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
from datetime import timedelta
import json
import os
import signal

from snitun_rs.server.run import SniTunServer
from snitun_rs.utils.aes import generate_aes_keyset
from snitun_rs.utils.server import generate_client_token


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--sni-port", type=int, default=0, help="callers' TLS port (0: any free)")
    parser.add_argument("--peer-port", type=int, default=0, help="devices' port (0: any free)")
    parser.add_argument("--hostname", default="device.local", help="the device's public name")
    parser.add_argument("--fernet-key", default=None, help="token key (default: a new one)")
    args = parser.parse_args()

    fernet_key = args.fernet_key or base64.urlsafe_b64encode(os.urandom(32)).decode()
    server = SniTunServer(
        [fernet_key],
        sni_port=args.sni_port,
        sni_host=args.host,
        peer_port=args.peer_port,
        peer_host=args.host,
    )
    await server.start()
    ports = {kind: port for kind, _, port in server.addresses}

    aes_key, aes_iv = generate_aes_keyset()
    token = generate_client_token(
        [fernet_key], timedelta(days=1), args.hostname, aes_key, aes_iv
    )
    print(
        json.dumps(
            {
                "sni_port": ports["sni"],
                "peer_port": ports["peer"],
                "hostname": args.hostname,
                "token": token.decode(),
                "aes_key": aes_key.hex(),
                "aes_iv": aes_iv.hex(),
            }
        ),
        flush=True,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
