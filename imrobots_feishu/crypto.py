"""Feishu event-callback checks: decryption, signature, verification token, freshness.

In HTTP callback mode Feishu POSTs each event to the robot's URL (PROTOCOLS 3.4 for
the deadline and redelivery; the wire format below is from Feishu's "Encrypt and
decrypt events" and "Verify the request source" pages and what lark-oapi's
``EventDispatcherHandler`` checks):

- **Encryption**, when the app has an Encrypt Key: the body is ``{"encrypt": base64}``,
  the ciphertext AES-256-CBC with key ``SHA-256(encrypt_key)``, the 16-byte IV in
  front, PKCS#7 padding. Decrypted by lark-oapi's own ``AESCipher``.
- **Signature**, when the app has an Encrypt Key: ``X-Lark-Signature`` is the hex
  SHA-256 of ``X-Lark-Request-Timestamp + X-Lark-Request-Nonce + encrypt_key + body``
  (the raw body bytes). Compared in constant time.
- **Verification Token**: the decrypted event's ``header.token`` (schema 2.0), or the
  top-level ``token`` (the URL-verification challenge and schema 1.0 events).
- **Freshness** (ours; Feishu documents no window): a signed request whose
  timestamp is more than ``max_age`` seconds away from now, or whose nonce was seen
  within that window, is a replay. Feishu signs every redelivery anew.

The URL-verification challenge (``{"type": "url_verification", "challenge", "token"}``,
encrypted like events when there is an Encrypt Key) is checked by its token only, as
lark-oapi does (Feishu may send it unsigned).

Every failure raises :class:`ForgedCallback` whose message says what did not check
out and never carries the key, the token or the body.
"""

from __future__ import annotations

import binascii
import collections
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from lark_oapi.core.utils.decryptor import AESCipher  # type: ignore[import-untyped]

__all__ = [
    "NONCE_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "CallbackCrypto",
    "ForgedCallback",
    "signature",
]

TIMESTAMP_HEADER = "X-Lark-Request-Timestamp"
NONCE_HEADER = "X-Lark-Request-Nonce"
SIGNATURE_HEADER = "X-Lark-Signature"
URL_VERIFICATION = "url_verification"
_NONCES = 100_000


class ForgedCallback(Exception):
    """A callback that does not check out (signature, token, encryption, freshness)."""


def signature(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    """``X-Lark-Signature`` of a request: hex SHA-256 of timestamp + nonce + key + body."""
    return hashlib.sha256((timestamp + nonce + encrypt_key).encode() + body).hexdigest()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class CallbackCrypto:
    """Checks and opens callbacks for one app. See the module docstring.

    ``encrypt_key`` ``None``: callbacks come in plain JSON and are checked by the
    verification token only. ``clock`` returns Unix seconds (tests move it)."""

    def __init__(
        self,
        *,
        verification_token: str,
        encrypt_key: str | None,
        max_age: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._token = verification_token
        self._key = encrypt_key or None
        self._cipher = AESCipher(self._key) if self._key else None
        self.max_age = max_age
        self._clock = clock
        self._nonces: collections.OrderedDict[str, float] = collections.OrderedDict()

    def __repr__(self) -> str:
        return f"CallbackCrypto(encrypted={self._key is not None}, max_age={self.max_age})"

    def open(self, body: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        """The event (or challenge) ``body`` carries, checked; raises :class:`ForgedCallback`."""
        signed = self._key is not None and SIGNATURE_HEADER in headers
        if signed:
            self._check_signature(body, headers)  # before anything is decrypted
        outer = _object(body, "the body")
        if "encrypt" in outer:
            if self._cipher is None:
                raise ForgedCallback("an encrypted callback, but no encrypt_key is configured")
            plain = self._decrypt(outer["encrypt"])
        elif self._key is not None:
            raise ForgedCallback("a plain callback, but the app encrypts its callbacks")
        else:
            plain = outer
        challenge = plain.get("type") == URL_VERIFICATION
        if self._key is not None and not signed and not challenge:
            raise ForgedCallback("unsigned (no X-Lark-Signature)")
        header = plain.get("header")
        token = header.get("token") if isinstance(header, Mapping) else plain.get("token")
        if not isinstance(token, str) or not _same(token, self._token):
            raise ForgedCallback("the verification token does not match")
        return plain

    def _decrypt(self, value: Any) -> dict[str, Any]:
        assert self._cipher is not None
        if not isinstance(value, str):
            raise ForgedCallback("'encrypt' is not a string")
        try:
            text = self._cipher.decrypt_str(value)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise ForgedCallback("the body does not decrypt with the encrypt_key") from None
        return _object(text.encode(), "the decrypted body")

    def _check_signature(self, body: bytes, headers: Mapping[str, str]) -> None:
        assert self._key is not None
        timestamp = headers.get(TIMESTAMP_HEADER, "")
        nonce = headers.get(NONCE_HEADER, "")
        given = headers.get(SIGNATURE_HEADER, "")
        if not (timestamp and nonce and given):
            raise ForgedCallback("incompletely signed (no timestamp or nonce)")
        if not _same(given.lower(), signature(timestamp, nonce, self._key, body)):
            raise ForgedCallback("the signature does not match")
        try:
            sent = float(timestamp)
        except ValueError:
            raise ForgedCallback("the timestamp is not a number") from None
        now = self._clock()
        if abs(now - sent) > self.max_age:
            raise ForgedCallback(
                f"the timestamp is {now - sent:.0f} s off (more than {self.max_age:g} s): a replay"
            )
        while self._nonces and next(iter(self._nonces.values())) < now - self.max_age:
            self._nonces.popitem(last=False)
        seen = f"{timestamp}:{nonce}"
        if seen in self._nonces:
            raise ForgedCallback("the nonce was seen before: a replay")
        self._nonces[seen] = now
        while len(self._nonces) > _NONCES:
            self._nonces.popitem(last=False)


def _object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ForgedCallback(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise ForgedCallback(f"{what} is not a JSON object")
    return value
