"""Constants, exceptions, keys, tokens and access lists."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
import json

from cryptography.fernet import Fernet
import pytest

import snitun_rs
from snitun_rs import exceptions, utils
from snitun_rs.client.access_list import AccessList, AccessListAction
from snitun_rs.utils.aes import generate_aes_keyset
from snitun_rs.utils.server import generate_client_token

from .conftest import fernet_key


def test_constants() -> None:
    assert snitun_rs.PROTOCOL_VERSION == 2
    assert utils.PROTOCOL_VERSION == 2
    assert utils.DEFAULT_PROTOCOL_VERSION == 0
    assert (utils.CIPHER_CBC, utils.CIPHER_GCM, utils.CIPHER_GCM_SIV) == (
        "aes-cbc",
        "aes-gcm",
        "aes-gcm-siv",
    )
    assert utils.DEFAULT_CIPHER == "aes-cbc"


def test_exception_hierarchy() -> None:
    for name in (
        "SniTunChallengeError",
        "SniTunInvalidPeer",
        "ParseSNIError",
        "ParseProxyProtocolError",
        "MultiplexerTransportError",
        "MultiplexerTransportClose",
        "MultiplexerTransportDecrypt",
        "SniTunConnectionError",
    ):
        assert issubclass(getattr(exceptions, name), exceptions.SniTunError)
    assert issubclass(exceptions.ParseSNIIncompleteError, exceptions.ParseSNIError)
    assert issubclass(
        exceptions.ParseProxyProtocolIncompleteError, exceptions.ParseProxyProtocolError
    )


def test_aes_keyset() -> None:
    key, iv = generate_aes_keyset()
    assert (len(key), len(iv)) == (32, 16)
    assert generate_aes_keyset() != (key, iv)


@pytest.mark.parametrize("cipher", ["aes-cbc", "aes-gcm", "aes-gcm-siv"])
def test_token_payload(cipher: str) -> None:
    keys = [fernet_key(), fernet_key()]
    key, iv = generate_aes_keyset()
    token = generate_client_token(keys, timedelta(hours=1), "a.example.org", key, iv, cipher)
    # Minted with the first key, readable by any Fernet implementation.
    payload = json.loads(Fernet(keys[0]).decrypt(token))
    assert payload["hostname"] == "a.example.org"
    assert payload["aes_key"] == key.hex()
    assert payload["aes_iv"] == iv.hex()
    assert payload["protocol_version"] == 2
    assert abs(payload["valid"] - (datetime.now(UTC).timestamp() + 3600)) < 60
    if cipher == "aes-cbc":
        assert "cipher" not in payload
    else:
        assert payload["cipher"] == cipher
    assert list(payload)[:5] == ["valid", "hostname", "aes_key", "aes_iv", "protocol_version"]


def test_token_bad_arguments() -> None:
    key, iv = generate_aes_keyset()
    with pytest.raises(ValueError):
        generate_client_token(["not a key"], timedelta(hours=1), "h", key, iv)
    with pytest.raises(ValueError):
        generate_client_token([fernet_key()], timedelta(hours=1), "h", key[:8], iv)
    with pytest.raises(ValueError):
        generate_client_token([fernet_key()], timedelta(hours=1), "h", key, iv, "rot13")
    with pytest.raises(ValueError, match="hostname"):
        generate_client_token([fernet_key()], timedelta(hours=1), "", key, iv)


def test_access_list() -> None:
    allow = AccessList()
    assert allow.default_action is AccessListAction.ALLOW
    assert not allow.check_policy(ip_address("10.1.2.3"))
    allow.add("10.0.0.0/8")
    allow.add(ip_address("192.168.1.5"))
    assert allow.check_policy(ip_address("10.1.2.3"))
    assert allow.check_policy(ip_address("192.168.1.5"))
    assert not allow.check_policy(ip_address("192.168.1.6"))
    allow.remove("10.0.0.0/8")
    allow.remove("10.0.0.0/8")
    assert not allow.check_policy(ip_address("10.1.2.3"))

    block = AccessList(AccessListAction.BLOCK)
    assert block.check_policy(ip_address("::1"))
    block.add("::1")
    assert not block.check_policy(ip_address("::1"))
    assert AccessListAction("block") is AccessListAction.BLOCK
