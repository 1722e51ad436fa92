"""The AI card's stream handle: one streaming answer in a DingTalk AI card.

The engine opens it with :meth:`DingTalkPlatform.open_stream` (``card_mode =
"ai"``), pushes the whole answer so far, and closes it once. Per-card state lives
here, never in the frozen :class:`~imrobots.platform.CardRef`: whether the card was
switched to "inputing" (``flowStatus`` 2, as the SDK's AI card does before its first
text) and how many pushes it had.

- :meth:`push` streams the whole text: ``PUT /v1.0/card/streaming`` with
  ``isFull: true`` (required for a markdown variable, PROTOCOLS 2.5).
- :meth:`close` finalizes: a ``card/streaming`` call with ``isFinalize: true`` (or
  ``isError: true`` for an error or interrupted card) carrying the last text, then the
  title, ``flowStatus``, stop reason and buttons through ``PUT /v1.0/card/instances``.
  Every AI card the plugin makes is closed with such a streaming call, whatever path it
  took, so none stays "inputing" (PROTOCOLS 2.8).
- :meth:`state` / :meth:`DingTalkPlatform.restore_stream` rebuild the handle after
  a restart, so a card a crash left open is closed as interrupted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imrobots.platform import Card, CardRef, CardStatus, StreamHandle, Target

from .cards import FLOW_STATUS

if TYPE_CHECKING:
    from .platform import DingTalkPlatform

__all__ = ["DingTalkAICardStream"]


class DingTalkAICardStream(StreamHandle):
    """A streaming answer in an AI card. See the module docstring."""

    def __init__(
        self,
        platform: DingTalkPlatform,
        target: Target,
        ref: CardRef,
        *,
        title: str | None,
        inputing: bool = False,
    ) -> None:
        self.platform = platform
        self.target = target
        self.ref = ref
        self.title = title
        self.inputing = inputing
        """Whether the card shows "inputing" (``flowStatus`` 2) already."""
        self.pushes = 0
        self.closed = False

    def __repr__(self) -> str:
        return f"DingTalkAICardStream(card={self.ref.id!r}, pushes={self.pushes})"

    async def push(self, text: str) -> None:
        if not self.inputing:
            await self.platform.set_card_data(
                self.ref, {"flowStatus": FLOW_STATUS[CardStatus.STREAMING]}
            )
            self.inputing = True
        await self.platform.stream_content(self.ref, text, finalize=False, error=False)
        self.pushes += 1

    async def close(self, card: Card) -> None:
        await self.platform.finish_ai_card(self.ref, card)
        self.closed = True

    def state(self) -> dict[str, Any]:
        return {**super().state(), "mode": "ai", "title": self.title}
