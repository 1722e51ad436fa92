"""WeCom cryptography: per-message media keys (robot mode) and callback crypto (app mode).

- **Media** (PROTOCOLS 4c): images and files a user sends to an intelligent robot are
  stored AES-256-CBC encrypted; the callback carries a per-message ``aeskey`` (base64 of
  the 32-byte key, its ``=`` padding sometimes dropped). The IV is the key's first 16
  bytes and the padding is PKCS#7 to 32-byte blocks, as in ``wecom_aibot_sdk/crypto.py``.
  :func:`decrypt_media` and its inverse :func:`encrypt_media` (for the emulator) use
  ``cryptography`` directly.
- **Callbacks** (PROTOCOLS 4a): :class:`CallbackCrypto` wraps wechatpy's
  ``WeChatCrypto`` (signature = SHA1 of the sorted token, timestamp, nonce and
  ciphertext; AES-256-CBC with the EncodingAESKey; receiveid = the CorpID). wechatpy is
  used for crypto and XML only, never for network calls. A correctly signed callback
  (or URL check) whose ``timestamp`` is more than ``max_age`` seconds away from now, in
  the past or the future, is refused as a replay. Failures raise
  :class:`ForgedCallback`, whose message never carries the token or the key.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "CallbackCrypto",
    "ForgedCallback",
    "decrypt_media",
    "encrypt_media",
    "new_media_key",
    "signature",
]

_BLOCK = 32


class ForgedCallback(Exception):
    """A callback whose signature or encryption does not check out."""


def _key(aes_key: str) -> bytes:
    padded = aes_key + "=" * (-len(aes_key) % 4)
    key = base64.b64decode(padded)
    if len(key) != 32:
        raise ValueError(f"a WeCom media key decodes to 32 bytes, not {len(key)}")
    return key


def new_media_key() -> str:
    """A fresh base64 media key (what the platform puts in ``image.aeskey``)."""
    return base64.b64encode(os.urandom(32)).decode("ascii")


def encrypt_media(data: bytes, aes_key: str) -> bytes:
    """Encrypt ``data`` as WeCom stores media (the emulator's side)."""
    key = _key(aes_key)
    pad = _BLOCK - len(data) % _BLOCK
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return encryptor.update(data + bytes([pad]) * pad) + encryptor.finalize()


def decrypt_media(data: bytes, aes_key: str) -> bytes:
    """Decrypt media downloaded from a robot callback's URL with its ``aeskey``."""
    key = _key(aes_key)
    if not data or len(data) % 16:
        raise ValueError("encrypted media must be a non-empty multiple of 16 bytes")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = decryptor.update(data) + decryptor.finalize()
    pad = plain[-1]
    if not 1 <= pad <= _BLOCK or plain[-pad:] != bytes([pad]) * pad:
        raise ValueError("bad padding: wrong media key or corrupted data")
    return plain[:-pad]


def signature(token: str, timestamp: str, nonce: str, encrypted: str) -> str:
    """The ``msg_signature`` of a callback (PROTOCOLS 4a)."""
    return hashlib.sha1("".join(sorted([token, timestamp, nonce, encrypted])).encode()).hexdigest()


# Why wechatpy refused a callback, by the name of what it raised (never its text).
_REASONS = {
    "InvalidSignatureException": "the msg_signature does not match",
    "InvalidCorpIdException": "it is encrypted for another CorpID",
    "ExpatError": "the body is not XML",
    "KeyError": "the body has no Encrypt element",
    "TypeError": "the body has no Encrypt element",
}


_DOCTYPE = "the body is XML with a DOCTYPE (refused: entity expansion; WeCom's callbacks have none)"


def _reason(exc: BaseException, default: str) -> str:
    return _REASONS.get(type(exc).__name__, default)


class CallbackCrypto:
    """App-mode callback crypto over wechatpy's ``WeChatCrypto`` (see the module docstring).

    The token and key are kept out of ``repr`` and of every error message. ``max_age``:
    seconds a callback's ``timestamp`` (Unix seconds) may be off from ``clock()``;
    ``None`` checks no timestamp (the emulator's own use). No nonce is remembered: WeCom
    retries an unanswered callback (3 attempts in all, PROTOCOLS 4a), and the retries are
    deduplicated by ``MsgId`` instead.
    """

    def __init__(
        self,
        token: str,
        encoding_aes_key: str,
        receive_id: str,
        *,
        max_age: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from wechatpy.enterprise.crypto import WeChatCrypto  # type: ignore[import-untyped]

        self._crypto: Any = WeChatCrypto(token, encoding_aes_key, receive_id)
        self.receive_id = receive_id
        self.max_age = max_age
        self._clock = clock

    def __repr__(self) -> str:
        return f"CallbackCrypto(receive_id={self.receive_id!r}, max_age={self.max_age})"

    def _check_fresh(self, timestamp: str) -> None:
        if self.max_age is None:
            return
        try:
            sent = float(timestamp)
        except ValueError:
            raise ForgedCallback("the timestamp is not a number") from None
        off = self._clock() - sent
        if not abs(off) <= self.max_age:  # NaN included
            when = "old" if off > 0 else "in the future"
            raise ForgedCallback(
                f"the timestamp is {abs(off):.0f} s {when} (more than callback_max_age "
                f"{self.max_age:g} s): a replay"
            )

    def verify_url(self, msg_signature: str, timestamp: str, nonce: str, echostr: str) -> str:
        """The plaintext of ``echostr`` for the URL check; raises :class:`ForgedCallback`."""
        try:
            plain = str(self._crypto.check_signature(msg_signature, timestamp, nonce, echostr))
        except Exception as exc:
            reason = _reason(exc, "the echostr does not decrypt with the EncodingAESKey")
            raise ForgedCallback(f"URL check failed: {reason}") from None
        try:
            self._check_fresh(timestamp)
        except ForgedCallback as exc:
            raise ForgedCallback(f"URL check failed: {exc}") from None
        return plain

    def decrypt(self, body: str, msg_signature: str, timestamp: str, nonce: str) -> str:
        """The decrypted XML of a POSTed callback; raises :class:`ForgedCallback`.

        A body with a DOCTYPE is refused before it is parsed: WeCom's callbacks carry none
        (PROTOCOLS 4a: ``<xml><ToUserName/><AgentID/><Encrypt/></xml>``), and one
        can declare entities that expand (wechatpy's parser refuses entities, which
        read as "does not decrypt")."""
        if "<!DOCTYPE" in body:
            raise ForgedCallback(_DOCTYPE)
        try:
            plain = str(self._crypto.decrypt_message(body, msg_signature, timestamp, nonce))
        except Exception as exc:
            reason = _reason(exc, "the body does not decrypt with the EncodingAESKey")
            raise ForgedCallback(reason) from None
        self._check_fresh(timestamp)
        return plain

    def encrypt(self, xml: str, nonce: str, timestamp: str) -> str:
        """An encrypted, signed ``<xml><Encrypt/><MsgSignature/>...`` envelope of ``xml``."""
        return str(self._crypto.encrypt_message(xml, nonce, timestamp))
