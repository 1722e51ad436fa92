"""Signed feedback button values.

Each feedback button carries ``v1.<payload>.<signature>``: the payload names
the robot, the answered message, the rating, the conversation the answer went to
(in a direct chat also its user) and the card the buttons were put on; the
signature is an HMAC-SHA256 with the robot's secret. A press whose value does not
verify is rejected and logged, so nobody can forge or alter feedback by crafting a
callback; the runtime also rejects a valid value pressed on another card or in
another conversation (a replay), see ``RobotRuntime._handle_feedback``. Values
signed before conversations were bound (no ``c`` in the payload) are rejected.

Where the key comes from (:meth:`FeedbackSigner.for_robot`): the robot's
configured ``feedback_secret`` if it has one; otherwise a random 32-byte key
made on first use and kept in the store under ``feedback-key:{robot}`` (hex),
which every later start and every replica sharing the store reuse. So buttons
survive restarts with a persistent store (SQLite, Redis) or a configured
secret; with the in-memory store a new process makes a new key, and the buttons
of cards sent before it are rejected as forged. The key never appears in a
repr, a log line or an error message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from typing import TYPE_CHECKING

import attrs

from .models import FeedbackRating

if TYPE_CHECKING:
    from .store import Store

__all__ = ["FEEDBACK_KEY_PREFIX", "FeedbackSigner", "FeedbackToken", "InvalidFeedback"]

_PREFIX = "v1"

FEEDBACK_KEY_PREFIX = "feedback-key:"
"""Store keys of the generated signing keys: ``feedback-key:{robot}``."""


class InvalidFeedback(ValueError):
    """A feedback value that is malformed or whose signature does not match."""


@attrs.frozen(kw_only=True)
class FeedbackToken:
    """What a verified feedback value says."""

    robot: str
    message_id: str
    rating: FeedbackRating
    conversation: str | None = None
    """The conversation the answer went to."""
    user: str | None = None
    """In a direct chat, the user it was with (platforms name direct chats differently
    in messages and in button presses)."""
    card: str | None = None
    """The card the buttons were put on, when known at signing."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_json_string = json.encoder.encode_basestring
"""A str as a JSON string, non-ASCII kept (as ``json.dumps(..., ensure_ascii=False)``)."""


_RATINGS_JSON = tuple((rating, _json_string(rating.value)) for rating in FeedbackRating)
"""Each rating with its value as a JSON string."""


def _around_rating(
    robot: str, message_id: str, conversation: str | None, user: str | None, card: str | None
) -> tuple[str, str] | None:
    """A token's JSON before and after its rating's value: what
    ``json.dumps(fields, separators=(",", ":"), ensure_ascii=False)`` writes for the fields
    ``r``, ``m``, ``t``, then ``c``, ``u``, ``k`` when given, without setting up an encoder
    (four buttons for every answer). ``None`` when a field is not a ``str`` (json's path)."""
    named = (robot, message_id, conversation, user, card)
    if not all(type(value) is str for value in named if value is not None):
        return None
    head = f'{{"r":{_json_string(robot)},"m":{_json_string(message_id)},"t":'
    tail = "".join(
        f',"{key}":{_json_string(value)}'
        for key, value in (("c", conversation), ("u", user), ("k", card))
        if value is not None
    )
    return head, tail + "}"


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@attrs.define(repr=False)
class FeedbackSigner:
    """Signs and verifies feedback values with one robot's secret."""

    _secret: bytes
    _keyed: hmac.HMAC = attrs.field(init=False, eq=False)
    """HMAC-SHA256 keyed with the secret, copied for each value (keying it costs as much
    as hashing a short value)."""

    def __attrs_post_init__(self) -> None:
        self._keyed = hmac.new(self._secret, digestmod=hashlib.sha256)

    @classmethod
    def from_secret(cls, secret: str | bytes | None) -> FeedbackSigner:
        """Use ``secret``; ``None`` makes a random one (values then only verify in this process).

        A robot's runtime uses :meth:`for_robot` instead, whose key survives restarts.

        :raises ValueError: ``secret`` is empty: anyone could sign buttons with it.
        """
        if secret is None:
            return cls(secrets.token_bytes(32))
        if not secret:
            raise ValueError(
                "the feedback secret is empty, so anyone could sign feedback buttons: give "
                "a secret, or None for a random key"
            )
        return cls(secret.encode() if isinstance(secret, str) else secret)

    @classmethod
    async def for_robot(
        cls, store: Store, robot: str, secret: str | bytes | None
    ) -> FeedbackSigner:
        """The signer of ``robot``: its configured ``secret``, else a key kept in ``store``.

        Without a secret, a random 32-byte key is stored (hex) under
        ``feedback-key:{robot}`` with :meth:`Store.setdefault_value
        <imrobots.store.Store.setdefault_value>`, so the first start makes it and
        every later start, and every process sharing the store, gets the same
        one. It lasts as long as the store does: with
        :class:`~imrobots.store.MemoryStore`, only as long as the process.
        """
        if secret is not None:
            return cls.from_secret(secret)
        key = f"{FEEDBACK_KEY_PREFIX}{robot}"
        stored = await store.setdefault_value(key, secrets.token_hex(32))
        try:
            decoded = bytes.fromhex(stored)
        except ValueError:
            decoded = b""
        if not decoded:
            raise ValueError(
                f"the feedback signing key stored under {key!r} is not a hex key: delete it"
                " (open feedback buttons then stop verifying) or set feedback_secret"
            )
        return cls(decoded)

    def __repr__(self) -> str:
        return "FeedbackSigner(secret=***)"

    def _mac(self, payload: str) -> str:
        mac = self._keyed.copy()
        mac.update(payload.encode("ascii"))
        return _b64(mac.digest()[:16])

    def _value(self, body: str) -> str:
        """The signed value of a token's JSON ``body``."""
        payload = _b64(body.encode("utf-8"))
        return f"{_PREFIX}.{payload}.{self._mac(payload)}"

    def sign(self, token: FeedbackToken) -> str:
        parts = _around_rating(
            token.robot, token.message_id, token.conversation, token.user, token.card
        )
        if parts is not None:
            return self._value(parts[0] + _json_string(token.rating.value) + parts[1])
        fields: dict[str, object] = {
            "r": token.robot,
            "m": token.message_id,
            "t": token.rating.value,
        }
        for key, value in (("c", token.conversation), ("u", token.user), ("k", token.card)):
            if value is not None:
                fields[key] = value
        return self._value(json.dumps(fields, separators=(",", ":"), ensure_ascii=False))

    def values(
        self,
        robot: str,
        message_id: str,
        *,
        conversation: str | None = None,
        user: str | None = None,
        card: str | None = None,
    ) -> dict[FeedbackRating, str]:
        """The signed value of each of the four buttons of one answer, bound to its
        ``conversation`` (and ``user`` in a direct chat) and ``card``: for each rating,
        what :meth:`sign` gives for the :class:`FeedbackToken` of these fields, the JSON
        around the rating written once (every answer has four buttons)."""
        parts = _around_rating(robot, message_id, conversation, user, card)
        if parts is None:
            return {
                rating: self.sign(
                    FeedbackToken(
                        robot=robot,
                        message_id=message_id,
                        rating=rating,
                        conversation=conversation,
                        user=user,
                        card=card,
                    )
                )
                for rating in FeedbackRating
            }
        head, tail = parts
        return {rating: self._value(head + encoded + tail) for rating, encoded in _RATINGS_JSON}

    @staticmethod
    def looks_like_feedback(value: str) -> bool:
        return value.startswith(_PREFIX + ".")

    def verify(self, value: str) -> FeedbackToken:
        """Return the token a value carries, or raise :class:`InvalidFeedback`."""
        if not value.isascii():  # signed values are ASCII; hmac refuses other text
            raise InvalidFeedback("not a feedback value (not ASCII)")
        parts = value.split(".")
        if len(parts) != 3 or parts[0] != _PREFIX:
            raise InvalidFeedback("not a feedback value")
        _, payload, mac = parts
        if not (payload.isascii() and mac.isascii()):
            raise InvalidFeedback("malformed value")
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise InvalidFeedback("bad signature")
        try:
            data = json.loads(_unb64(payload))
            return FeedbackToken(
                robot=str(data["r"]),
                message_id=str(data["m"]),
                rating=FeedbackRating(data["t"]),
                conversation=_optional(data, "c"),
                user=_optional(data, "u"),
                card=_optional(data, "k"),
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise InvalidFeedback("malformed payload") from exc


def _optional(data: dict[str, object], key: str) -> str | None:
    value = data.get(key)
    return None if value is None else str(value)
