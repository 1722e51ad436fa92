"""The stream reply's handle: one streaming answer in a WeCom robot stream (PROTOCOLS 4c).

The engine opens it with :meth:`WeComPlatform.open_stream`, pushes the whole answer so
far and closes it once. Per-stream state lives here:

- ``req_id``: the callback being answered. Every frame goes out under it, one at a
  time (the connection waits for each ack before the next, so pushes are ack-paced).
- ``stream_id``: derived from the core's idempotency key, so a retried frame updates
  the same stream; the first frame shows the thinking text.
- :meth:`push` sends ``{"msgtype": "stream", "stream": {id, finish: false, content}}``
  with the whole text; the platform declares ``KEEP_ALIVE``, so the engine also pushes
  (the same text) at least every ``keep_alive`` seconds.
- :meth:`close` sends ``finish: true`` with the last text; a final card with buttons
  goes as ``stream_with_template_card`` (the stream plus a ``button_interaction`` card
  whose ``task_id`` is the stream id, so a press names the answer card).
- Retries with the same idempotency key are safe: an open sent again updates the same
  stream id, a finish sent again is the very same frame, and a finish (or a proactive
  card's ``task_id``) refused after its first ack was lost is taken as landed.
- 846608 (expired, past WeCom's 6 minutes) and 846605 (invalid req_id, after a
  reconnect) raise :class:`CardGone`: the engine continues in a new message, which
  :meth:`WeComPlatform.open_stream` makes a :class:`ProactiveStream` (``aibot_send_msg``).

:class:`ProactiveStream` is the stream where WeCom has none: a proactive answer, or the
continuation of one past its stream's lifetime. It shows nothing until :meth:`close`,
which sends the card as a template card (``aibot_send_msg``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imrobots.platform import (
    Card,
    CardGone,
    CardRef,
    FatalPlatformError,
    OutcomeUnknown,
    StreamHandle,
    Target,
)

if TYPE_CHECKING:
    from .platform import WeComPlatform

__all__ = ["ProactiveStream", "WeComStream"]


class WeComStream(StreamHandle):
    """A stream reply on one ``req_id``. See the module docstring."""

    def __init__(
        self, platform: WeComPlatform, target: Target, ref: CardRef, *, req_id: str, generation: int
    ) -> None:
        self.platform = platform
        self.target = target
        self.ref = ref
        self.req_id = req_id
        self.generation = generation
        self.pushes = 0
        self.closed = False
        self.final_body: dict[str, Any] | None = None
        """The finish frame, once built: a retry sends the very same frame."""
        self.finish_unknown = False
        """A finish frame was sent and its ack lost (it may have landed)."""

    def __repr__(self) -> str:
        return f"WeComStream(stream={self.ref.id!r}, pushes={self.pushes})"

    async def push(self, text: str) -> None:
        await self.platform.stream_frame(self, text, finish=False)
        self.pushes += 1

    async def close(self, card: Card) -> None:
        await self.platform.stream_frame(self, card, finish=True)
        self.closed = True

    def state(self) -> dict[str, Any]:
        return {
            **super().state(),
            "req_id": self.req_id,
            "generation": self.generation,
            "title": None,
        }


class ProactiveStream(StreamHandle):
    """An answer with no stream to show it in: sent whole at :meth:`close`."""

    def __init__(self, platform: WeComPlatform, target: Target, ref: CardRef) -> None:
        self.platform = platform
        self.target = target
        self.ref = ref
        self.latest = ""
        self.unknown = False
        """The card was sent and the ack lost (it may have landed)."""

    def __repr__(self) -> str:
        return f"ProactiveStream(card={self.ref.id!r})"

    async def push(self, text: str) -> None:
        self.latest = text

    async def close(self, card: Card) -> None:
        try:
            await self.platform.send_template_card(self.target, card, task_id=self.ref.id)
        except OutcomeUnknown:
            self.unknown = True
            raise
        except CardGone:
            raise
        except FatalPlatformError:
            if self.unknown:
                # Sent before with its ack lost; WeCom refusing the same task_id again
                # (the emulator: 40058 "task_id already used") means it landed.
                return
            raise

    def state(self) -> dict[str, Any]:
        return {**super().state(), "proactive": True}
