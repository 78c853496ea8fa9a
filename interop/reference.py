"""Drive the reference snitun (Python, 0.47.0) for snitun-rs's interop suite.

The Rust test (snitun/tests/interop.rs) starts this script once per group of
cases and talks to it with JSON lines: one command object per line on stdin,
one answer object per line on stdout (``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``). Commands run one at a time, in order;
the reference's servers, clients and channels run meanwhile on the same
event loop. Logs go to stderr. End of stdin ends the script.

Only the reference's own public classes do the work: ``SniTunServer``,
``SniTunServerSingle``, ``ClientPeer`` with an ``EndpointConnector``,
``generate_client_token`` (tokens of protocol 0/1, which that function
cannot write, and tokens with aliases are made with ``cryptography``'s
Fernet exactly as it would). The script adds observation only: the caller
address each channel of a reference client announces, and counters of
PAUSE/RESUME sent and received by reference channels.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
import json
import logging
import os
import sys
import time
from typing import Any

from cryptography.fernet import Fernet

from snitun.client.client_peer import ClientPeer
from snitun.client.connector import EndpointConnector
from snitun.multiplexer.channel import MultiplexerChannel
from snitun.multiplexer.core import Multiplexer
from snitun.multiplexer.message import MIN_PROTOCOL_VERSION_FOR_PAUSE_RESUME
from snitun.server.run import SniTunServer, SniTunServerSingle
from snitun.utils.server import PROTOCOL_VERSION, generate_client_token

_LOGGER = logging.getLogger("interop")

# --------------------------------------------------------------------------
# Flow-control observation: wrap the reference channel's own hooks.
# --------------------------------------------------------------------------

FLOW = {
    "pause_sent": 0,
    "resume_sent": 0,
    "pause_received": 0,
    "resume_received": 0,
    "max_incoming": 0,
}

_on_local_input = MultiplexerChannel._on_local_input_under_water
_on_remote_input = MultiplexerChannel.on_remote_input_under_water
_message_transport = MultiplexerChannel.message_transport


def _counting_local_input(self: MultiplexerChannel, under_water: bool) -> None:
    # The reference sends PAUSE/RESUME from here (protocol >= 1 only).
    if self._peer_protocol_version >= MIN_PROTOCOL_VERSION_FOR_PAUSE_RESUME:
        FLOW["pause_sent" if under_water else "resume_sent"] += 1
    _on_local_input(self, under_water)


def _counting_remote_input(self: MultiplexerChannel, under_water: bool) -> None:
    # Called by the reference multiplexer for each PAUSE/RESUME received.
    FLOW["pause_received" if under_water else "resume_received"] += 1
    _on_remote_input(self, under_water)


def _measuring_message_transport(self: MultiplexerChannel, message: Any) -> None:
    _message_transport(self, message)
    FLOW["max_incoming"] = max(FLOW["max_incoming"], self._input.qsize())


MultiplexerChannel._on_local_input_under_water = _counting_local_input
MultiplexerChannel.on_remote_input_under_water = _counting_remote_input
MultiplexerChannel.message_transport = _measuring_message_transport


# --------------------------------------------------------------------------
# Objects the driver keeps.
# --------------------------------------------------------------------------


class RecordingConnector(EndpointConnector):
    """The reference EndpointConnector, noting each channel's caller address."""

    def __init__(self, end_host: str, end_port: int) -> None:
        super().__init__(end_host, end_port)
        self.ips: list[str] = []

    async def handler(self, multiplexer: Multiplexer, channel: MultiplexerChannel) -> None:
        self.ips.append(str(channel.ip_address))
        await super().handler(multiplexer, channel)


class Driver:
    def __init__(self) -> None:
        self.next_id = 1
        self.servers: dict[int, Any] = {}
        self.clients: dict[int, tuple[ClientPeer, RecordingConnector]] = {}

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    # -- misc --------------------------------------------------------------

    async def cmd_hello(self, _: dict[str, Any]) -> dict[str, Any]:
        return {
            "snitun": version("snitun"),
            "cryptography": version("cryptography"),
            "python": sys.version.split()[0],
            "protocol_version": PROTOCOL_VERSION,
        }

    async def cmd_exit(self, _: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def cmd_flow(self, req: dict[str, Any]) -> dict[str, Any]:
        out = dict(FLOW)
        if req.get("reset"):
            for key in FLOW:
                FLOW[key] = 0
        return out

    async def cmd_token(self, req: dict[str, Any]) -> dict[str, Any]:
        """Mint a client token as the session master would."""
        key = req["fernet_key"]
        hostname = req["hostname"]
        aes_key = bytes.fromhex(req["aes_key"])
        aes_iv = bytes.fromhex(req["aes_iv"])
        version_ = int(req["protocol_version"])
        cipher = req["cipher"]
        alias = req.get("alias") or []
        delta = timedelta(seconds=float(req["valid_seconds"]))
        if version_ == PROTOCOL_VERSION and not alias:
            token = generate_client_token([key], delta, hostname, aes_key, aes_iv, cipher)
            return {"token": token.decode(), "minted_by": "generate_client_token"}
        # generate_client_token always writes protocol_version 2 and no alias:
        # build the same payload by hand for the other cases.
        payload: dict[str, Any] = {
            "valid": (datetime.now(tz=UTC) + delta).timestamp(),
            "hostname": hostname,
            "aes_key": aes_key.hex(),
            "aes_iv": aes_iv.hex(),
        }
        if version_ != 0:
            # Protocol 0 tokens predate the field: leave it out.
            payload["protocol_version"] = version_
        if cipher != "aes-cbc":
            payload["cipher"] = cipher
        if alias:
            payload["alias"] = alias
        token = Fernet(key).encrypt(json.dumps(payload).encode())
        return {"token": token.decode(), "minted_by": "fernet"}

    # -- servers -----------------------------------------------------------

    async def cmd_start_server(self, req: dict[str, Any]) -> dict[str, Any]:
        keys = req["fernet_keys"]
        if req["mode"] == "single":
            server = SniTunServerSingle(keys, host=req["hosts"])
            # The reference turns port 0 into its default (443): ask for any
            # free port by setting it after construction.
            server._port = 0
            await server.start()
            listen = [s.getsockname()[:2] for s in server._server.sockets]
            ident = self._new_id()
            self.servers[ident] = server
            return {"id": ident, "listen": listen}
        server = SniTunServer(
            keys,
            sni_host=req["sni_hosts"],
            peer_host=req["peer_host"],
        )
        # As above: port 0 (any free port) set after construction.
        server._list_sni._port = 0
        server._list_peer._port = 0
        await server.start()
        sni = [s.getsockname()[:2] for s in server._list_sni._server.sockets]
        peer = [s.getsockname()[:2] for s in server._list_peer._server.sockets]
        ident = self._new_id()
        self.servers[ident] = server
        return {"id": ident, "sni": sni, "peer": peer}

    async def cmd_server_peers(self, req: dict[str, Any]) -> dict[str, Any]:
        server = self.servers[req["id"]]
        names = {
            name
            for peer in server.peers.iter_peers()
            if peer.is_ready
            for name in peer.all_hostnames
        }
        return {"hostnames": sorted(names), "connections": server.peers.connections}

    async def cmd_server_ping(self, req: dict[str, Any]) -> dict[str, Any]:
        server = self.servers[req["id"]]
        peer = server.peers.get_peer(req["hostname"])
        if peer is None or peer.multiplexer is None:
            raise RuntimeError(f"no peer for {req['hostname']}")
        start = time.monotonic()
        async with asyncio.timeout(float(req.get("timeout", 10))):
            await peer.multiplexer.ping()
        return {"ms": (time.monotonic() - start) * 1000}

    async def cmd_stop_server(self, req: dict[str, Any]) -> dict[str, Any]:
        server = self.servers.pop(req["id"])
        await server.peers.close_connections(timeout=5)
        await server.stop()
        return {}

    # -- clients -----------------------------------------------------------

    async def cmd_start_client(self, req: dict[str, Any]) -> dict[str, Any]:
        connector = RecordingConnector(req["endpoint_host"], int(req["endpoint_port"]))
        client = ClientPeer(req["server_host"], int(req["server_port"]))
        await client.start(
            connector,
            req["token"].encode(),
            bytes.fromhex(req["aes_key"]),
            bytes.fromhex(req["aes_iv"]),
            protocol_version=int(req["protocol_version"]),
            cipher=req["cipher"],
        )
        ident = self._new_id()
        self.clients[ident] = (client, connector)
        return {"id": ident}

    async def cmd_client_connected(self, req: dict[str, Any]) -> dict[str, Any]:
        client, _ = self.clients[req["id"]]
        return {"connected": client.is_connected}

    async def cmd_client_ips(self, req: dict[str, Any]) -> dict[str, Any]:
        _, connector = self.clients[req["id"]]
        ips = list(connector.ips)
        if req.get("clear"):
            connector.ips.clear()
        return {"ips": ips}

    async def cmd_client_ping(self, req: dict[str, Any]) -> dict[str, Any]:
        client, _ = self.clients[req["id"]]
        multiplexer = client._multiplexer
        if multiplexer is None:
            raise RuntimeError("client is not connected")
        start = time.monotonic()
        async with asyncio.timeout(float(req.get("timeout", 10))):
            await multiplexer.ping()
        return {"ms": (time.monotonic() - start) * 1000}

    async def cmd_stop_client(self, req: dict[str, Any]) -> dict[str, Any]:
        client, _ = self.clients.pop(req["id"])
        if client.is_connected:
            await client.stop()
        return {}


async def main() -> None:
    logging.basicConfig(
        level=os.environ.get("SNITUN_INTEROP_LOG_LEVEL", "WARNING"),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    driver = Driver()
    while line := await reader.readline():
        if not line.strip():
            continue
        req: dict[str, Any] = {}
        try:
            req = json.loads(line)
            handler = getattr(driver, "cmd_" + req["cmd"], None)
            if handler is None:
                raise ValueError(f"unknown command {req['cmd']!r}")
            answer = {"ok": True, **await handler(req)}
        except Exception as err:  # noqa: BLE001 - every failure is reported
            _LOGGER.debug("command failed", exc_info=True)
            answer = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
        if req.get("cmd") == "exit":
            break


if __name__ == "__main__":
    asyncio.run(main())
