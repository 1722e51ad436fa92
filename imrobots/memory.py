"""The built-in in-memory platform.

It is registered through the same ``register_platforms`` hook as every other
platform (as ``llm-echo`` is for ``llm``). A test or an example says something
as a user with :meth:`MemoryPlatform.say`, presses buttons with
:meth:`MemoryPlatform.press`, and reads every card and call from the records.
A simulated server-side quota, latency and failure rate, and the card size
limit and stream lifetime it declares (and enforces), make it a stand-in for a
real platform's limits.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Literal

import attrs

from .cards import Card, CardStatus
from .errors import CardGone, FatalPlatformError, PlatformError, RateLimited, RetryableError
from .models import (
    CardAction,
    Conversation,
    ConversationKind,
    FeedbackRating,
    Message,
    Sender,
)
from .platform import Capabilities, CardRef, EventSink, Platform, StreamingMode

__all__ = ["MemoryCall", "MemoryCard", "MemoryPlatform", "MemorySettings"]


@attrs.frozen(kw_only=True)
class MemorySettings:
    """Settings of the in-memory platform (``[robots.NAME.settings]``)."""

    app_id: str = "memory-app"
    streaming: Literal["edit", "native", "buffered"] = "edit"
    quota: float | None = None
    """Simulated server-side quota in requests per second (fixed 1-second windows);
    calls beyond it are refused as rate limited. ``None``: unlimited."""
    app_rate: float = 20.0
    """The rate the platform declares to the client-side limiter."""
    update_interval: float = 0.5
    max_updates: int | None = None
    max_text: int | None = None
    """Most characters of markdown a card holds; a bigger card is refused (fatal error)."""
    stream_lifetime: float | None = None
    """Seconds after it was sent during which a card can be updated; later updates fail
    with "card gone", as Feishu and WeCom streams end."""
    latency: float = 0.0
    """Seconds every call takes."""
    failure_rate: float = 0.0
    """Share of calls that fail."""
    failure_kind: Literal["5xx", "rate_limited", "mixed"] = "mixed"
    seed: int | None = None


@attrs.define
class MemoryCall:
    """One call the robot made."""

    time: float
    op: str
    card_id: str | None
    ok: bool
    error: str | None = None


@attrs.define
class MemoryCard:
    """A card as the platform holds it, with every version it had."""

    id: str
    conversation_id: str
    reply_to: str
    history: list[tuple[float, Card | str]] = attrs.field(factory=list)
    gone: bool = False

    @property
    def current(self) -> Card | str:
        return self.history[-1][1]

    @property
    def status(self) -> CardStatus | None:
        current = self.current
        return current.status if isinstance(current, Card) else None

    @property
    def text(self) -> str:
        current = self.current
        return current.markdown if isinstance(current, Card) else current


class MemoryPlatform(Platform):
    """A platform that lives in this process. See the module docstring."""

    name = "memory"

    def __init__(self, settings: MemorySettings | None = None) -> None:
        self.settings = settings or MemorySettings()
        s = self.settings
        self.capabilities = Capabilities(
            streaming=StreamingMode(s.streaming),
            app_rate=s.app_rate,
            update_interval=s.update_interval,
            max_updates=s.max_updates,
            max_text=s.max_text,
            stream_lifetime=s.stream_lifetime,
            rate_limited_codes=frozenset({"QpsLimit"}),
            retryable_codes=frozenset({"ServerBusy"}),
            fatal_codes=frozenset({"TooLarge"}),
        )
        self.cards: dict[str, MemoryCard] = {}
        self.texts: list[tuple[str, str]] = []
        """(conversation id, text) of every plain message sent."""
        self.calls: list[MemoryCall] = []
        self.rejected_calls = 0
        self._sink: EventSink | None = None
        self._ids = itertools.count(1)
        self._random = random.Random(s.seed)
        self._window: deque[float] = deque()
        self._changed = asyncio.Condition()
        self._listeners: list[Callable[[str, MemoryCard | None], None]] = []

    def describe(self) -> str:
        return f"memory (in-process, app {self.settings.app_id})"

    # -------------------------------------------------------------- connection
    async def start(self, sink: EventSink) -> None:
        self._sink = sink

    async def close(self) -> None:
        self._sink = None

    # -------------------------------------------------------------- user side
    async def say(
        self,
        text: str,
        *,
        conversation: str = "conversation-1",
        group: bool = False,
        sender: str = "user-1",
        sender_name: str | None = "Alice",
        mentioned: bool | None = None,
        message_id: str | None = None,
        time: datetime | None = None,
    ) -> Message:
        """Send a message to the robot as a user; returns the message delivered."""
        if self._sink is None:
            raise RuntimeError("the memory platform is not started")
        message = Message(
            id=message_id or f"msg-{next(self._ids)}",
            platform=self.name,
            text=text,
            conversation=Conversation(
                id=conversation, kind=ConversationKind.GROUP if group else ConversationKind.DIRECT
            ),
            sender=Sender(id=sender, name=sender_name),
            mentioned=(not group) if mentioned is None else mentioned,
            raw={"text": text},
        )
        if time is not None:
            message = attrs.evolve(message, time=time)
        await self._sink(message)
        return message

    async def press(
        self,
        card_id: str,
        button: str | FeedbackRating,
        *,
        sender: str = "user-1",
        value: str | None = None,
    ) -> CardAction:
        """Press a button of a card by label (or feedback rating); ``value`` overrides its value."""
        if self._sink is None:
            raise RuntimeError("the memory platform is not started")
        card = self.cards[card_id].current
        if not isinstance(card, Card):
            raise ValueError(f"card {card_id} has no buttons")
        label = button.label if isinstance(button, FeedbackRating) else button
        for candidate in card.buttons:
            if candidate.label == label:
                break
        else:
            raise ValueError(f"card {card_id} has no button {label!r}")
        action = CardAction(
            id=f"press-{next(self._ids)}",
            platform=self.name,
            card_id=card_id,
            action_id=candidate.id,
            value=candidate.value if value is None else value,
            sender=Sender(id=sender),
            conversation=Conversation(id=self.cards[card_id].conversation_id),
        )
        await self._sink(action)
        return action

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds, re-checking after every call the robot makes."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    def cards_in(self, conversation: str) -> list[MemoryCard]:
        return [c for c in self.cards.values() if c.conversation_id == conversation]

    def on_change(self, listener: Callable[[str, MemoryCard | None], None]) -> None:
        """Call ``listener(op, card)`` after every call (for consoles): ``op`` is the
        operation (``send_card``...) with the card it touched, or ``"OP:failed"`` with
        ``None`` for a call the platform refused or failed (the call is in :attr:`calls`)."""
        self._listeners.append(listener)

    # -------------------------------------------------------------- robot side
    async def _enter(self, op: str, card_id: str | None) -> None:
        s = self.settings
        if s.latency:
            await asyncio.sleep(s.latency)
        now = time.monotonic()
        if s.quota is not None:
            window_start = float(int(now))
            while self._window and self._window[0] < window_start:
                self._window.popleft()
            if len(self._window) >= s.quota:
                self.rejected_calls += 1
                raise await self._failed(
                    op,
                    card_id,
                    "QpsLimit",
                    RateLimited(
                        "simulated quota exceeded",
                        code="QpsLimit",
                        status=403,
                        retry_after=window_start + 1 - now,
                    ),
                )
            self._window.append(now)
        if s.failure_rate and self._random.random() < s.failure_rate:
            kind = s.failure_kind
            if kind == "mixed":
                kind = self._random.choice(["5xx", "rate_limited"])
            error: PlatformError = (
                RateLimited("simulated rate limit", code="QpsLimit", status=403)
                if kind == "rate_limited"
                else RetryableError("simulated server error", code="ServerBusy", status=503)
            )
            raise await self._failed(op, card_id, kind, error)
        self.calls.append(MemoryCall(time=now, op=op, card_id=card_id, ok=True))

    async def _changed_now(self, op: str, card: MemoryCard | None) -> None:
        for listener in self._listeners:
            listener(op, card)
        async with self._changed:
            self._changed.notify_all()

    async def _failed(
        self, op: str, card_id: str | None, error_code: str, error: PlatformError
    ) -> PlatformError:
        """Record a refused or failed call, tell the listeners, and return ``error`` to raise."""
        self.calls.append(
            MemoryCall(time=time.monotonic(), op=op, card_id=card_id, ok=False, error=error_code)
        )
        await self._changed_now(f"{op}:failed", None)
        return error

    async def _check_size(self, op: str, card_id: str | None, text: str) -> None:
        limit = self.settings.max_text
        if limit is not None and len(text) > limit:
            raise await self._failed(
                op,
                card_id,
                "TooLarge",
                FatalPlatformError(
                    f"content too large: {len(text)} characters, at most {limit}", code="TooLarge"
                ),
            )

    async def _updatable(self, op: str, ref: CardRef) -> MemoryCard:
        record = self.cards.get(ref.id)
        if record is None or record.gone:
            raise CardGone(f"card {ref.id} does not exist", code="CardGone")
        lifetime = self.settings.stream_lifetime
        if lifetime is not None and time.monotonic() - record.history[0][0] > lifetime:
            raise await self._failed(
                op,
                ref.id,
                "CardExpired",
                CardGone(f"card {ref.id} can no longer be updated", code="CardExpired"),
            )
        return record

    async def send_card(self, to: Message, card: Card) -> CardRef:
        await self._check_size("send_card", None, card.markdown)
        await self._enter("send_card", None)
        card_id = f"card-{next(self._ids)}"
        record = MemoryCard(id=card_id, conversation_id=to.conversation.id, reply_to=to.id)
        record.history.append((time.monotonic(), card))
        self.cards[card_id] = record
        await self._changed_now("send_card", record)
        return CardRef(id=card_id, platform=self.name, conversation_id=to.conversation.id)

    async def update_card(self, ref: CardRef, card: Card) -> None:
        record = await self._updatable("update_card", ref)
        await self._check_size("update_card", ref.id, card.markdown)
        await self._enter("update_card", ref.id)
        record.history.append((time.monotonic(), card))
        await self._changed_now("update_card", record)

    async def stream_update(self, ref: CardRef, text: str, *, final: bool = False) -> None:
        record = await self._updatable("stream_update", ref)
        await self._check_size("stream_update", ref.id, text)
        await self._enter("stream_update", ref.id)
        record.history.append((time.monotonic(), text))
        await self._changed_now("stream_update", record)

    async def send_text(self, to: Message, text: str, *, markdown: bool = False) -> None:
        await self._enter("send_text", None)
        self.texts.append((to.conversation.id, text))
        await self._changed_now("send_text", None)
