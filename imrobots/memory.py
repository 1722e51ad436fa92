"""The built-in in-memory platform.

It is registered through the same ``register_platforms`` hook as every other
platform (as ``llm-echo`` is for ``llm``). A test or an example says something
as a user with :meth:`MemoryPlatform.say`, presses buttons with
:meth:`MemoryPlatform.press`, and reads every card and call from the records.
A simulated server-side quota, latency and failure rate, calls that time out
after the platform acted, refused cards, and the size limits (in characters or
bytes) and stream lifetime it declares (and enforces), make it a stand-in for a
real platform's limits. Sends are idempotent by key, as the contract asks.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import attrs

from .cards import Card, CardStatus, streaming_card
from .errors import (
    CardGone,
    FatalPlatformError,
    OutcomeUnknown,
    PlatformError,
    RateLimited,
    Refused,
    RetryableError,
)
from .models import (
    Attachment,
    CardAction,
    ChatEntered,
    Conversation,
    ConversationKind,
    FeedbackRating,
    Message,
    Quote,
    Sender,
    Target,
)
from .platform import (
    Capabilities,
    CardRef,
    EventSink,
    LifetimeRemedy,
    Platform,
    SizeUnit,
    StreamHandle,
    StreamingMode,
    Upload,
    measure,
    settings_problems,
)

__all__ = ["MemoryCall", "MemoryCard", "MemoryPlatform", "MemorySettings", "MemoryStream"]

log = logging.getLogger(__name__)


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
    """Most markdown a card holds, in ``text_unit``; a bigger card is refused (fatal error)."""
    max_message_text: int | None = None
    """Most text one message holds, in ``text_unit``; a bigger one is refused."""
    text_unit: Literal["characters", "bytes"] = "characters"
    stream_lifetime: float | None = None
    """Seconds after it was opened (or renewed) during which a card can be updated; later
    updates fail with "card gone", as Feishu and WeCom streams end."""
    lifetime_remedy: Literal["new_message", "renew", "keep_alive"] = "new_message"
    keep_alive: float | None = None
    refuse_cards: bool = False
    """Refuse every card call as an app without card permission would (``Refused``)."""
    timeout_after_act: float = 0.0
    """Share of calls that take effect and then time out (``OutcomeUnknown``)."""
    timeout_after_act_ops: tuple[str, ...] = ()
    """The operations ``timeout_after_act`` applies to (``send_card``, ``send_text``...);
    empty: all."""
    latency: float = 0.0
    """Seconds every call takes."""
    failure_rate: float = 0.0
    """Share of calls that fail."""
    failure_kind: Literal["5xx", "rate_limited", "mixed"] = "mixed"
    seed: int | None = None

    def __attrs_post_init__(self) -> None:
        """Check the values; every problem is reported, each on its field. (None were
        checked: ``app_rate = 0`` passed ``imrobots check`` and ``run`` stopped on the
        limiter's ``ValueError`` traceback; a share of 2 or a negative latency passed.)

        :raises SettingsProblems: a rate, interval, size or lifetime not above 0, a share
            outside 0..1, a negative or infinite latency, an unknown operation name.
        """
        problems: list[tuple[str, str]] = []
        for name in _MEMORY_POSITIVE:
            value = getattr(self, name)
            if value is not None and not value > 0:  # nan too, which compares false
                problems.append((name, f"must be positive, got {value!r}"))
        for name in ("timeout_after_act", "failure_rate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                problems.append((name, f"must be a share 0..1, got {value!r}"))
        if not 0 <= self.latency < float("inf"):
            problems.append(("latency", f"must be 0 or more seconds, got {self.latency!r}"))
        unknown = [op for op in self.timeout_after_act_ops if op not in _MEMORY_OPS]
        if unknown:
            problems.append(
                (
                    "timeout_after_act_ops",
                    f"unknown operation {unknown[0]!r}; choose from {', '.join(_MEMORY_OPS)}",
                )
            )
        if problems:
            raise settings_problems(MemorySettings, problems, title="memory platform")


_MEMORY_POSITIVE = (
    "quota",
    "app_rate",
    "update_interval",
    "max_updates",
    "max_text",
    "max_message_text",
    "stream_lifetime",
    "keep_alive",
)
_MEMORY_OPS = (
    "send_card",
    "update_card",
    "stream_update",
    "renew",
    "send_text",
    "send_image",
    "send_file",
)
"""The operations :class:`MemoryPlatform` counts as calls (``timeout_after_act_ops``)."""


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
    reply_to: str | None
    history: list[tuple[float, Card | str]] = attrs.field(factory=list)
    gone: bool = False
    thread: str | None = None
    opened_at: float = 0.0
    """When the card was sent or its stream last renewed."""
    renewals: int = 0

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
            max_message_text=s.max_message_text,
            text_unit=SizeUnit(s.text_unit),
            stream_lifetime=s.stream_lifetime,
            lifetime_remedy=LifetimeRemedy(s.lifetime_remedy),
            keep_alive=s.keep_alive,
            images=True,
            files=True,
            downloads=True,
            threads=True,
            max_image_bytes=10 * 1024 * 1024,
            max_file_bytes=20 * 1024 * 1024,
            rate_limited_codes=frozenset({"QpsLimit"}),
            retryable_codes=frozenset({"ServerBusy"}),
            fatal_codes=frozenset({"TooLarge"}),
        )
        self.cards: dict[str, MemoryCard] = {}
        self.texts: list[tuple[str, str]] = []
        """(conversation id, text) of every plain message sent."""
        self.uploads: list[tuple[str, str, Upload]] = []
        """(conversation id, ``image`` or ``file``, content) of every image and file sent."""
        self.blobs: dict[str, bytes] = {}
        """Content of the attachments users sent, by attachment id."""
        self._keys: dict[str, object] = {}
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
        attachments: Sequence[tuple[str, str, bytes]] = (),
        quote: str | None = None,
        thread: str | None = None,
    ) -> Message:
        """Send a message to the robot as a user; returns the message delivered.

        ``attachments`` are ``(kind, name, content)``; ``quote`` is the text of a
        quoted message; ``thread`` the thread it is said in.
        """
        if self._sink is None:
            raise RuntimeError("the memory platform is not started")
        files = []
        for kind, name, content in attachments:
            blob_id = f"blob-{next(self._ids)}"
            self.blobs[blob_id] = content
            files.append(Attachment(kind=kind, name=name, id=blob_id, size=len(content)))
        message = Message(
            id=message_id or f"msg-{next(self._ids)}",
            platform=self.name,
            text=text,
            conversation=Conversation(
                id=conversation, kind=ConversationKind.GROUP if group else ConversationKind.DIRECT
            ),
            sender=Sender(id=sender, name=sender_name),
            mentioned=(not group) if mentioned is None else mentioned,
            attachments=tuple(files),
            quote=Quote(text=quote) if quote is not None else None,
            thread=thread,
            app=self.settings.app_id,
            raw={"text": text},
        )
        if time is not None:
            message = attrs.evolve(message, time=time)
        await self._sink(message)
        return message

    async def enter(self, *, sender: str = "user-1", conversation: str | None = None) -> None:
        """A user opens a chat with the robot (a :class:`ChatEntered` event)."""
        if self._sink is None:
            raise RuntimeError("the memory platform is not started")
        await self._sink(
            ChatEntered(
                id=f"enter-{next(self._ids)}",
                platform=self.name,
                sender=Sender(id=sender),
                conversation=Conversation(id=conversation) if conversation else None,
                app=self.settings.app_id,
            )
        )

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
        ``None`` for a call the platform refused or failed (the call is in :attr:`calls`).
        A listener that raises is logged and skipped: the call it watched goes on."""
        self._listeners.append(listener)

    # -------------------------------------------------------------- robot side
    async def _enter(self, op: str, card_id: str | None) -> bool:
        """Admit one call (or raise its simulated failure). Returns True when the call must
        take effect and then fail with ``OutcomeUnknown`` (a time-out after acting)."""
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
        if not s.timeout_after_act or (
            s.timeout_after_act_ops and op not in s.timeout_after_act_ops
        ):
            return False
        return self._random.random() < s.timeout_after_act

    async def _after(self, op: str, record: MemoryCard | None, lost: bool) -> None:
        await self._changed_now(op, record)
        if lost:
            raise OutcomeUnknown(f"simulated time-out after {op} took effect", code="Timeout")

    async def _changed_now(self, op: str, card: MemoryCard | None) -> None:
        for listener in self._listeners:
            try:
                listener(op, card)
            except Exception:  # a broken console must not break the robot's call
                log.exception("a memory platform listener failed on %s", op)
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

    async def _check_size(self, op: str, card_id: str | None, text: str, limit: int | None) -> None:
        unit = SizeUnit(self.settings.text_unit)
        if limit is not None and measure(text, unit) > limit:
            raise await self._failed(
                op,
                card_id,
                "TooLarge",
                FatalPlatformError(
                    f"content too large: {measure(text, unit)} {unit}, at most {limit}",
                    code="TooLarge",
                ),
            )

    async def _check_cards(self, op: str, card_id: str | None) -> None:
        if self.settings.refuse_cards:
            raise await self._failed(
                op,
                card_id,
                "NoCardPermission",
                Refused("this app may not send cards", code="NoCardPermission", app_wide=True),
            )

    async def _updatable(self, op: str, ref: CardRef) -> MemoryCard:
        record = self.cards.get(ref.id)
        if record is None or record.gone:
            raise CardGone(f"card {ref.id} does not exist", code="CardGone")
        lifetime = self.settings.stream_lifetime
        if lifetime is not None and time.monotonic() - record.opened_at > lifetime:
            raise await self._failed(
                op,
                ref.id,
                "CardExpired",
                CardGone(f"card {ref.id} can no longer be updated", code="CardExpired"),
            )
        return record

    @staticmethod
    def _conversation_of(target: Target) -> str:
        if target.conversation is not None:
            return target.conversation.id
        if target.user is not None:
            return target.user.id  # a direct message to a user: its chat is named after them
        raise FatalPlatformError("target has neither a conversation nor a user")

    def _ref(self, record: MemoryCard) -> CardRef:
        return CardRef(id=record.id, platform=self.name, conversation_id=record.conversation_id)

    async def send_card(self, target: Target, card: Card, *, key: str) -> CardRef:
        known = self._keys.get(key)
        if isinstance(known, MemoryCard):
            return self._ref(known)  # a retry of a send that took effect: no second card
        await self._check_cards("send_card", None)
        await self._check_size("send_card", None, card.markdown, self.settings.max_text)
        lost = await self._enter("send_card", None)
        card_id = f"card-{next(self._ids)}"
        now = time.monotonic()
        record = MemoryCard(
            id=card_id,
            conversation_id=self._conversation_of(target),
            reply_to=target.reply_to,
            thread=target.thread,
            opened_at=now,
        )
        record.history.append((now, card))
        self.cards[card_id] = record
        self._keys[key] = record
        await self._after("send_card", record, lost)
        return self._ref(record)

    async def update_card(self, ref: CardRef, card: Card) -> None:
        record = await self._updatable("update_card", ref)
        await self._check_cards("update_card", ref.id)
        await self._check_size("update_card", ref.id, card.markdown, self.settings.max_text)
        lost = await self._enter("update_card", ref.id)
        record.history.append((time.monotonic(), card))
        await self._after("update_card", record, lost)

    async def stream_update(self, ref: CardRef, text: str) -> None:
        record = await self._updatable("stream_update", ref)
        await self._check_size("stream_update", ref.id, text, self.settings.max_text)
        lost = await self._enter("stream_update", ref.id)
        record.history.append((time.monotonic(), text))
        await self._after("stream_update", record, lost)

    async def open_stream(self, target: Target, card: Card, *, key: str) -> StreamHandle:
        ref = await self.send_card(target, card, key=key)
        return MemoryStream(self, target, ref, title=card.title)

    async def restore_stream(self, target: Target, state: Mapping[str, Any]) -> StreamHandle:
        ref = state.get("ref")
        if not isinstance(ref, Mapping) or ref.get("id") not in self.cards:
            raise CardGone("no such card to restore")
        title = state.get("title")
        record = self.cards[str(ref["id"])]
        return MemoryStream(
            self, target, self._ref(record), title=title if isinstance(title, str) else None
        )

    async def renew(self, ref: CardRef) -> None:
        record = await self._updatable("renew", ref)
        lost = await self._enter("renew", ref.id)
        record.opened_at = time.monotonic()
        record.renewals += 1
        await self._after("renew", record, lost)

    async def send_text(
        self, target: Target, text: str, *, markdown: bool = False, key: str
    ) -> None:
        if key in self._keys:
            return  # a retry of a send that took effect: not posted twice
        await self._check_size("send_text", None, text, self.settings.max_message_text)
        lost = await self._enter("send_text", None)
        self._keys[key] = True
        self.texts.append((self._conversation_of(target), text))
        await self._after("send_text", None, lost)

    async def _send_upload(
        self, op: str, kind: str, target: Target, upload: Upload, key: str
    ) -> None:
        if key in self._keys:
            return
        lost = await self._enter(op, None)
        self._keys[key] = True
        self.uploads.append((self._conversation_of(target), kind, upload))
        await self._after(op, None, lost)

    async def send_image(self, target: Target, image: Upload, *, key: str) -> None:
        await self._send_upload("send_image", "image", target, image, key)

    async def send_file(self, target: Target, file: Upload, *, key: str) -> None:
        await self._send_upload("send_file", "file", target, file, key)

    async def download(self, attachment: Attachment) -> bytes:
        await self._enter("download", None)
        try:
            return self.blobs[attachment.id or ""]
        except KeyError:
            raise FatalPlatformError(f"no attachment {attachment.id!r}", code="NotFound") from None


class MemoryStream(StreamHandle):
    """The memory platform's own stream handle: pushes edit the card (``edit``) or stream
    its text (``native``); :meth:`renew` restarts the card's lifetime."""

    def __init__(
        self, platform: MemoryPlatform, target: Target, ref: CardRef, *, title: str | None
    ) -> None:
        self.platform = platform
        self.target = target
        self.ref = ref
        self.title = title
        self.pushes = 0

    async def push(self, text: str) -> None:
        if self.platform.capabilities.streaming is StreamingMode.NATIVE:
            await self.platform.stream_update(self.ref, text)
        else:
            await self.platform.update_card(self.ref, streaming_card(self.title or "", text))
        self.pushes += 1

    async def renew(self) -> None:
        await self.platform.renew(self.ref)

    async def close(self, card: Card) -> None:
        await self.platform.update_card(self.ref, card)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "title": self.title}
