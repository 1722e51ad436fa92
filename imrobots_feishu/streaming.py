"""The CardKit stream handle: one streaming answer in a Feishu card entity.

The engine opens it with :meth:`FeishuPlatform.open_stream` (``card_mode =
"cardkit"``): the platform creates a card entity in streaming mode and sends it by
reference (PROTOCOLS 3.8). Per-card state lives here, never in the frozen
:class:`~imrobots.platform.CardRef`: the entity id and the card's ``sequence``.

- :meth:`push` puts the whole text so far into the answer element
  (``PUT /cardkit/v1/cards/:card_id/elements/:element_id/content``) with the next
  sequence and a fresh ``uuid``; Feishu types out the new part. Every call on the
  entity takes a sequence **strictly greater** than any before (300317 otherwise), so
  a retry never reuses one. If streaming mode closed (200850 after its 10 minutes,
  300309), it is turned on again once and the push repeated.
- :meth:`renew` (the platform's lifetime remedy is ``RENEW``) turns streaming mode off
  and on again through ``PATCH .../settings``, which starts its 10 minutes anew
  (UNCONFIRMED on Feishu itself: the documented clock starts "when streaming mode is
  enabled"; the emulator does the same).
- :meth:`close` replaces the whole card (``PUT /cardkit/v1/cards/:card_id``) with the
  final, error or interrupted card, streaming mode off, buttons carrying the entity id.
- :meth:`state` / :meth:`FeishuPlatform.restore_stream` rebuild the handle after a
  restart (its sequence restarts well above the last one saved).
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from imrobots.platform import Card, CardRef, FatalPlatformError, StreamHandle, Target

from .cards import CONTENT_ELEMENT, card_json, dumps

if TYPE_CHECKING:
    from .platform import FeishuPlatform

__all__ = [
    "CONTENT_ELEMENT",
    "STREAMING_CLOSED_CODES",
    "FeishuCardKitStream",
    "content_body",
    "settings_body",
    "update_body",
]

STREAMING_CLOSED_CODES = frozenset({"200850", "300309"})


class FeishuCardKitStream(StreamHandle):
    """A streaming answer in a CardKit card entity. See the module docstring."""

    def __init__(
        self,
        platform: FeishuPlatform,
        target: Target,
        ref: CardRef,
        *,
        card_id: str,
        title: str | None,
    ) -> None:
        self.platform = platform
        self.target = target
        self.ref = ref
        self.card_id = card_id
        self.title = title
        self.pushes = 0
        self.renewals = 0
        self.closed = False

    def __repr__(self) -> str:
        return f"FeishuCardKitStream(card={self.card_id!r}, pushes={self.pushes})"

    async def push(self, text: str) -> None:
        try:
            await self.platform.cardkit_content(self.card_id, text)
        except FatalPlatformError as exc:
            if exc.code not in STREAMING_CLOSED_CODES:
                raise
            await self.platform.cardkit_streaming(self.card_id, on=True)
            await self.platform.cardkit_content(self.card_id, text)
        self.pushes += 1

    async def renew(self) -> None:
        await self.platform.cardkit_streaming(self.card_id, on=False)
        await self.platform.cardkit_streaming(self.card_id, on=True)
        self.renewals += 1

    async def close(self, card: Card) -> None:
        await self.platform.cardkit_update(self.card_id, card)
        self.closed = True

    def state(self) -> dict[str, Any]:
        return {
            **super().state(),
            "mode": "cardkit",
            "card_id": self.card_id,
            "sequence": self.platform.sequence_of(self.card_id),
            "title": self.title,
        }


def content_body(text: str, sequence: int) -> dict[str, Any]:
    """The body of an element content update (1..100,000 characters)."""
    return {"content": text or " ", "sequence": sequence, "uuid": uuid.uuid4().hex}


def settings_body(on: bool, sequence: int) -> dict[str, Any]:
    return {
        "settings": json.dumps({"config": {"streaming_mode": on}}),
        "sequence": sequence,
        "uuid": uuid.uuid4().hex,
    }


def update_body(card: Card, card_id: str, sequence: int, *, tables: bool) -> dict[str, Any]:
    data = dumps(card_json(card, streaming=False, entity_id=card_id, tables=tables))
    return {
        "card": {"type": "card_json", "data": data},
        "sequence": sequence,
        "uuid": uuid.uuid4().hex,
    }
