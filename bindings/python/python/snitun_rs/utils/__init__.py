"""Constants and helpers for applications."""

from .._snitun_rs import PROTOCOL_VERSION

CIPHER_CBC = "aes-cbc"
CIPHER_GCM = "aes-gcm"
CIPHER_GCM_SIV = "aes-gcm-siv"
DEFAULT_CIPHER = CIPHER_CBC
DEFAULT_PROTOCOL_VERSION = 0

__all__ = (
    "CIPHER_CBC",
    "CIPHER_GCM",
    "CIPHER_GCM_SIV",
    "DEFAULT_CIPHER",
    "DEFAULT_PROTOCOL_VERSION",
    "PROTOCOL_VERSION",
)
