"""Type stubs of the native module (internal: use the public modules)."""

import asyncio
from collections.abc import Callable

PROTOCOL_VERSION: int

def mint_token(
    keys: list[str],
    valid: float,
    hostname: str,
    aes_key: bytes,
    aes_iv: bytes,
    cipher_name: str,
) -> bytes: ...
def connect(
    server: str,
    token: bytes,
    aes_key: bytes,
    aes_iv: bytes,
    cipher_name: str,
    protocol_version: int,
    throttling: int | None,
    endpoint: str,
    access: tuple[str, list[str]] | None,
    on_endpoint_error: Callable[[], None] | None,
) -> asyncio.Future[NativeSession]: ...

class NativeSession:
    @property
    def is_connected(self) -> bool: ...
    def wait(self) -> asyncio.Future[str]: ...
    def disconnect(self) -> asyncio.Future[None]: ...

class NativeServer:
    def __init__(
        self,
        fernet_keys: list[str],
        sni: list[str],
        peer: list[str],
        listen: list[str],
        throttling: int | None,
        proxy_protocol: bool,
    ) -> None: ...
    def start(self) -> asyncio.Future[None]: ...
    def stop(self) -> asyncio.Future[None]: ...
    def addresses(self) -> list[tuple[str, str, int]]: ...
    def peers(self) -> list[tuple[str, list[str], int, str, str, int, int]]: ...
