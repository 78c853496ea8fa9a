"""snitun-rs: SniTun in Rust, a drop-in for the Python ``snitun`` package.

Import paths mirror the reference: replace ``snitun`` with ``snitun_rs``.
"""

from .utils import PROTOCOL_VERSION

__all__ = ("PROTOCOL_VERSION",)
