"""Signed feedback button values.

Each feedback button carries ``v1.<payload>.<signature>``: the payload names
the robot, the answered message and the rating; the signature is an HMAC-SHA256
with the robot's secret. A press whose value does not verify is rejected and
logged, so nobody can forge or alter feedback by crafting a callback.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets

import attrs

from .models import FeedbackRating

__all__ = ["FeedbackSigner", "FeedbackToken", "InvalidFeedback"]

_PREFIX = "v1"


class InvalidFeedback(ValueError):
    """A feedback value that is malformed or whose signature does not match."""


@attrs.frozen(kw_only=True)
class FeedbackToken:
    """What a verified feedback value says."""

    robot: str
    message_id: str
    rating: FeedbackRating


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@attrs.define(repr=False)
class FeedbackSigner:
    """Signs and verifies feedback values with one robot's secret."""

    _secret: bytes

    @classmethod
    def from_secret(cls, secret: str | bytes | None) -> FeedbackSigner:
        """Use ``secret``; ``None`` makes a random one (values then only verify in this process)."""
        if secret is None:
            return cls(secrets.token_bytes(32))
        return cls(secret.encode() if isinstance(secret, str) else secret)

    def __repr__(self) -> str:
        return "FeedbackSigner(secret=***)"

    def _mac(self, payload: str) -> str:
        digest = hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).digest()
        return _b64(digest[:16])

    def sign(self, token: FeedbackToken) -> str:
        body = json.dumps(
            {"r": token.robot, "m": token.message_id, "t": token.rating.value},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        payload = _b64(body.encode("utf-8"))
        return f"{_PREFIX}.{payload}.{self._mac(payload)}"

    def values(self, robot: str, message_id: str) -> dict[FeedbackRating, str]:
        """The signed value of each of the four buttons of one answer."""
        return {
            rating: self.sign(FeedbackToken(robot=robot, message_id=message_id, rating=rating))
            for rating in FeedbackRating
        }

    @staticmethod
    def looks_like_feedback(value: str) -> bool:
        return value.startswith(_PREFIX + ".")

    def verify(self, value: str) -> FeedbackToken:
        """Return the token a value carries, or raise :class:`InvalidFeedback`."""
        parts = value.split(".")
        if len(parts) != 3 or parts[0] != _PREFIX:
            raise InvalidFeedback("not a feedback value")
        _, payload, mac = parts
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise InvalidFeedback("bad signature")
        try:
            data = json.loads(_unb64(payload))
            return FeedbackToken(
                robot=str(data["r"]), message_id=str(data["m"]), rating=FeedbackRating(data["t"])
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise InvalidFeedback("malformed payload") from exc
