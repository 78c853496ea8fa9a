"""AES helpers."""

from __future__ import annotations

import os


def generate_aes_keyset() -> tuple[bytes, bytes]:
    """Return a fresh random AES-256 key (32 bytes) and IV (16 bytes)."""
    return (os.urandom(32), os.urandom(16))
