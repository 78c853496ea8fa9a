"""snitun-rs: SniTun in Rust, a drop-in for the Python ``snitun`` package.

Import paths mirror the reference: replace ``snitun`` with ``snitun_rs``.
"""

import atexit

from ._snitun_rs import quiesce as _quiesce
from .utils import PROTOCOL_VERSION

# Before the interpreter finalizes, stop the Rust threads from calling into
# Python and let the calls in flight return (see src/runtime.rs).
atexit.register(_quiesce)

__all__ = ("PROTOCOL_VERSION",)
