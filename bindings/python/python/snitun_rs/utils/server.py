"""Helpers for running a server: minting client tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from .._snitun_rs import PROTOCOL_VERSION, mint_token
from . import DEFAULT_CIPHER, DEFAULT_PROTOCOL_VERSION

__all__ = ("DEFAULT_PROTOCOL_VERSION", "PROTOCOL_VERSION", "generate_client_token")


def generate_client_token(
    tokens: list[str],
    valid_delta: timedelta,
    hostname: str,
    aes_key: bytes,
    aes_iv: bytes,
    cipher: str = DEFAULT_CIPHER,
) -> bytes:
    """Mint a Fernet token (with the first of ``tokens``) for a client.

    The payload is the reference's: expiry, hostname, AES key and IV,
    protocol version 2, and the cipher unless it is aes-cbc.
    """
    valid = (datetime.now(tz=UTC) + valid_delta).timestamp()
    return mint_token(list(tokens), valid, hostname, bytes(aes_key), bytes(aes_iv), cipher)
