"""The contract between platform emulators and the core's console, pytest plugin and
conformance suite.

A platform plugin registers an emulator factory with ``register_emulators``;
the factory makes an :class:`EmulatorAdapter`: the platform's emulated server
side, seen through a platform-neutral lens. The web console, the conversation
DSL of ``imrobots.testing`` and the conformance suite
(:mod:`imrobots.testing.conformance`) only ever talk to this contract, so every
platform's emulator appears in them the same way.

What an adapter must implement:

* for the console and the conversation DSL: :meth:`~EmulatorAdapter.start`,
  :meth:`~EmulatorAdapter.stop`, :meth:`~EmulatorAdapter.say`,
  :meth:`~EmulatorAdapter.press`, :meth:`~EmulatorAdapter.state`, and either
  :meth:`~EmulatorAdapter.create_platform` or :meth:`~EmulatorAdapter.robot_settings`;
* for the conformance suite, also :meth:`~EmulatorAdapter.configure`,
  :meth:`~EmulatorAdapter.say_with_attachments`, :meth:`~EmulatorAdapter.redeliver`,
  :meth:`~EmulatorAdapter.uploads` and the :meth:`~EmulatorAdapter.fault` kinds
  ``drop``, ``errors`` and ``rate_limit``. Their defaults raise
  :class:`NotImplementedError` saying what to implement.

Views are plain JSON-able dicts. Their ``conversation_id`` is the id the user's
:meth:`~EmulatorAdapter.say` named, one-to-one chats included (map the platform's
own ids back where they differ), so that a test can follow one conversation:

* a **card**: ``{"id", "conversation_id", "title", "status", "blocks", "updates",
  "created", "updated", "reply_to"}`` where ``blocks`` is a list of
  ``{"type": "markdown", "text"}``, ``{"type": "divider"}``, ``{"type": "note", "text"}``
  or ``{"type": "buttons", "buttons": [{"id", "label", "style"}]}`` and ``status``
  is ``thinking``, ``streaming``, ``final``, ``error``, ``interrupted`` or ``None``;
* a **message**: ``{"id", "conversation_id", "user_id", "user_name", "text", "time",
  "from_robot", "receivers"}``; ``receivers`` lists the user ids a robot message was
  addressed to when it went to users rather than to a conversation (a proactive
  direct message), else it is empty;
* a **call**: ``{"time", "method", "route", "status", "error", "rate_limited", "latency_ms"}``;
* an **upload**: ``{"conversation_id", "kind", "name", "size"}``: an image
  (``kind == "image"``) or file (``"file"``) the robot sent, ``size`` in bytes,
  ``name`` ``None`` when the platform does not keep it; ``conversation_id`` is the
  receiving user's id for a direct send with no conversation.

Events from :meth:`EmulatorAdapter.subscribe` are ``{"type": "card" | "message" |
"call" | "upload" | "connection" | "feedback", ...}`` with the view under the
type's name (a connection event is ``{"type": "connection", "connection": {"event":
"open" | "close"}}``).

An emulator that serves HTTP guards its control routes (``/_emulator/...``) with
:func:`control_guard` and a :func:`new_token` per start (Host and Origin checks, the
token for state-changing calls; see :mod:`imrobots.webguard`).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import attrs

from .cards import Actions, Card, CardStatus, Divider, Markdown, Note
from .memory import MemoryCard, MemoryPlatform, MemorySettings
from .platform import Platform
from .webguard import TOKEN_HEADER, control_guard, json_response, new_token

__all__ = [
    "FAULT_KINDS",
    "TOKEN_HEADER",
    "EmulatorAdapter",
    "MemoryEmulator",
    "card_view_blocks",
    "control_guard",
    "json_response",
    "new_token",
]

View = dict[str, Any]

FAULT_KINDS: Final = ("drop", "errors", "rate_limit", "latency", "lost_answers")
"""The fault kinds :meth:`EmulatorAdapter.fault` knows."""

_GUIDE = "see 'The conformance suite' in docs/writing-plugins.md"


class EmulatorAdapter(abc.ABC):
    """One running emulator of one platform, hosting one robot app.

    Methods are called in this order: the constructor, :meth:`configure` (only by
    tests that need small limits), :meth:`start`, then :meth:`create_platform` or
    :meth:`robot_settings` to connect a robot, then anything else, and :meth:`stop`.
    """

    platform: str = ""
    """The platform name (``dingtalk``, ``memory``...)."""
    title: str = ""
    """What the console calls it."""
    one_chat_per_user: bool = False
    """True where a user has a single chat with the robot, whatever conversation they
    speak in (an app that gets no group messages): the conformance checks that talk in
    several conversations at once then give each conversation a user of its own."""

    def __init__(self) -> None:
        self._subscribers: list[asyncio.Queue[View]] = []
        self.messages: list[View] = []
        """Every chat message (from users and the robot's plain replies), oldest first."""
        self.uploaded: list[View] = []
        """Upload views recorded with :meth:`record_upload`, oldest first."""
        self.undelivered: set[str] = set()
        """Ids :meth:`say` returned for messages the platform does not push to the robot
        at all (WeCom's intelligent robot: a group message without the @-mention)."""

    def _missing(self, method: str, what: str) -> NotImplementedError:
        return NotImplementedError(
            f"{type(self).__name__} (the {self.platform or '?'} emulator adapter) does not "
            f"implement EmulatorAdapter.{method}: {what} ({_GUIDE})"
        )

    @abc.abstractmethod
    async def start(self) -> None:
        """Start the emulator (bind 127.0.0.1, port 0)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop it. Idempotent."""

    @property
    def base_url(self) -> str | None:
        """Where the emulator listens, if it listens at all."""
        return None

    @property
    def control_token(self) -> str | None:
        """The per-start token that ``POST``s to the emulator's own control API (under
        ``/_emulator/``) need in the ``X-Imrobots-Token`` header, for an emulator that has
        such an API; ``None`` otherwise. ``imrobots emulate`` prints it."""
        return None

    def robot_settings(self) -> dict[str, Any]:
        """The ``[robots.NAME.settings]`` that point a robot at this emulator.

        They must carry the limits set with :meth:`configure`, so that the platform
        built from them declares those limits in its ``capabilities``."""
        return {}

    def create_platform(self) -> Platform | None:
        """In-process emulators may hand over the platform object directly (with the
        limits set with :meth:`configure` in its ``capabilities``)."""
        return None

    @abc.abstractmethod
    async def say(
        self,
        *,
        text: str,
        conversation_id: str,
        group: bool,
        user_id: str,
        user_name: str,
        mention: bool,
    ) -> str:
        """A user sends ``text``; returns the platform message id.

        ``group`` says whether ``conversation_id`` is a group chat (else a one-to-one
        chat with the robot); ``mention`` whether the user @-mentioned the robot (always
        implied in one-to-one chats). An empty ``text`` is a message with no text (a bare
        @-mention). The cards, messages and uploads the robot sends in answer show
        ``conversation_id`` in their views, even where the platform names one-to-one
        chats otherwise. The message is also recorded in :attr:`messages`. If the robot is
        not connected at the moment (after a ``drop`` fault), the emulator holds the
        message and pushes it once the robot reconnects, as the platform would."""

    async def say_with_attachments(
        self,
        *,
        attachments: Sequence[tuple[str, str, bytes]],
        text: str = "",
        conversation_id: str,
        group: bool,
        user_id: str,
        user_name: str,
        mention: bool,
    ) -> str:
        """A user sends a message carrying ``attachments``; returns the platform message id.

        Each attachment is ``(kind, name, content)`` with ``kind`` one of ``image``,
        ``file``, ``audio``, ``video``; the emulator stores ``content`` where the
        platform's download API (the one :meth:`Platform.download` calls) serves it, and
        pushes the message as the platform does for that kind (a picture message, a file
        message, or rich text when there is ``text`` too). The robot reads it with
        ``await attachment.read()``. Other arguments are as for :meth:`say`."""
        raise self._missing(
            "say_with_attachments",
            "push a message with images/files whose content the platform's download API "
            "serves, so that Attachment.read() returns the bytes the user sent",
        )

    async def redeliver(self, message_id: str) -> None:
        """Push the message ``message_id`` (an id :meth:`say` returned) to the robot again,
        as the platform does when it did not see it acknowledged: the same message id and
        content, a new delivery. Returns once it is pushed (or held, while the robot is
        disconnected)."""
        raise self._missing(
            "redeliver", "push an earlier message again with the same platform message id"
        )

    @abc.abstractmethod
    async def press(self, *, card_id: str, button_id: str, user_id: str) -> None:
        """A user presses a card button, delivered as the platform's callback."""

    @abc.abstractmethod
    def state(self) -> dict[str, list[View]]:
        """``{"messages": [...], "cards": [...], "calls": [...]}``, oldest first.

        ``cards`` holds each card once, in its current state, in the order the cards
        were created; ``calls`` every API call the robot made, refused ones included
        (a call refused for a rate limit has ``rate_limited`` true)."""

    def uploads(self) -> list[View]:
        """Every image and file the robot sent, oldest first, as upload views
        (``{"conversation_id", "kind", "name", "size"}``; see the module docstring).

        An adapter can call :meth:`record_upload` whenever its emulator receives one and
        return :attr:`uploaded` here."""
        raise self._missing(
            "uploads",
            "list the images and files the robot sent (record them with record_upload() "
            "and return self.uploaded)",
        )

    def configure(
        self,
        *,
        max_text: int | None = None,
        max_message_text: int | None = None,
        stream_lifetime: float | None = None,
    ) -> None:
        """Set smaller limits for a test; called before :meth:`start`.

        Each limit given must be both enforced by the emulator and declared by the
        platform the robot gets (:meth:`create_platform`, or the one built from
        :meth:`robot_settings`), in its ``capabilities``:

        * ``max_text``: the most markdown one card (or stream) holds, in the platform's
          ``text_unit`` (``Capabilities.max_text``);
        * ``max_message_text``: the most text one plain message holds, in ``text_unit``
          (``Capabilities.max_message_text``);
        * ``stream_lifetime``: seconds after opening during which a streaming card accepts
          updates (``Capabilities.stream_lifetime``).

        A limit the platform does not have at all (no card size limit, streams that never
        expire) is ignored: its capability stays ``None`` and the check that needs it
        skips, saying so. ``None`` leaves a limit as it is.
        """
        raise self._missing(
            "configure",
            "apply test limits (max_text, max_message_text, stream_lifetime) to both the "
            "emulator and the platform's capabilities",
        )

    def subscribe(self) -> asyncio.Queue[View]:
        """A queue that receives every event from now on."""
        queue: asyncio.Queue[View] = asyncio.Queue()
        self._subscribers.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[View]) -> None:
        """Stop feeding a queue from :meth:`subscribe`."""
        if queue in self._subscribers:
            self._subscribers.remove(queue)

    def emit(self, event: View) -> None:
        """Hand an event to every subscriber (subclasses call this)."""
        for queue in self._subscribers:
            queue.put_nowait(event)

    def record_message(
        self,
        conversation_id: str,
        user_id: str,
        user_name: str,
        text: str,
        *,
        from_robot: bool,
        receivers: Sequence[str] = (),
    ) -> View:
        """Add a chat message to :attr:`messages` and emit it (subclasses call this).
        ``receivers``: the user ids a robot message was sent to, for a direct send."""
        view = {
            "id": f"m{len(self.messages) + 1}",
            "conversation_id": conversation_id,
            "user_id": user_id,
            "user_name": user_name,
            "text": text,
            "time": time.time(),
            "from_robot": from_robot,
            "receivers": list(receivers),
        }
        self.messages.append(view)
        self.emit({"type": "message", "message": view})
        return view

    def record_upload(self, conversation_id: str, kind: str, name: str | None, size: int) -> View:
        """Add an upload view to :attr:`uploaded` and emit it (subclasses call this when
        the robot sent an image or file)."""
        view = {"conversation_id": conversation_id, "kind": kind, "name": name, "size": size}
        self.uploaded.append(view)
        self.emit({"type": "upload", "upload": view})
        return view

    async def fault(self, kind: str, value: float | None = None) -> None:
        """Inject a fault until it is turned off (``value`` 0 or ``None`` turns the share
        and latency faults off):

        * ``drop``: abort the robot's connections (no close handshake). The platform
          plugin must notice and reconnect on its own; what users say meanwhile is held
          and pushed after the reconnect, as the platform does. Returns once the
          connections are closed.
        * ``errors``: this share (0..1) of the robot's API calls fail with the platform's
          retryable server error (a 5xx, "system busy").
        * ``rate_limit``: this share of the robot's API calls is refused with the
          platform's rate-limit error (these calls have ``rate_limited`` true).
        * ``latency``: seconds added to every API call.
        * ``lost_answers``: this share of the robot's API calls take effect, then their
          answer never comes (the client times out, or the connection drops): what a
          client must answer by repeating the call with the same idempotency key, or by
          not repeating it at all. Optional: the suite's idempotency check is skipped,
          saying so, when an emulator raises ``NotImplementedError`` for it.
        """
        raise NotImplementedError(
            f"{self.platform} emulator has no fault {kind!r}; the conformance suite needs "
            f"drop, errors and rate_limit ({_GUIDE})"
        )

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds, re-checking on every event."""
        queue = self.subscribe()
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await queue.get()
        finally:
            self.unsubscribe(queue)


def card_view_blocks(card: Card) -> list[View]:
    """The neutral blocks of a core :class:`Card`."""
    blocks: list[View] = []
    for element in card.elements:
        if isinstance(element, Markdown):
            blocks.append({"type": "markdown", "text": element.text})
        elif isinstance(element, Divider):
            blocks.append({"type": "divider"})
        elif isinstance(element, Note):
            blocks.append({"type": "note", "text": element.text})
        elif isinstance(element, Actions):
            blocks.append(
                {
                    "type": "buttons",
                    "buttons": [
                        {"id": b.id, "label": b.label, "style": b.style} for b in element.buttons
                    ],
                }
            )
    return blocks


@attrs.frozen(kw_only=True)
class _Said:
    """What a user said, kept for redelivery."""

    text: str
    conversation_id: str
    group: bool
    user_id: str
    user_name: str
    mention: bool
    time: datetime
    attachments: tuple[tuple[str, str, bytes], ...] = ()


class MemoryEmulator(EmulatorAdapter):
    """The in-memory platform seen as an emulator (no sockets: the robot runs in-process).

    The memory platform has no connection; a ``drop`` fault still behaves as a server
    would: what users say is held while the connection is down and pushed, in order,
    once it is back (after :attr:`reconnect_delay` seconds).
    """

    platform = "memory"
    title = "In-memory"

    reconnect_delay: float = 0.02
    """Seconds the emulated connection stays down after a ``drop``."""

    def __init__(self, settings: MemorySettings | None = None) -> None:
        super().__init__()
        self._platform = self._new_platform(settings or MemorySettings(update_interval=0.3))
        self._handed_out = False
        self._calls_seen = 0
        self._uploads_seen = 0
        self._started = time.time()
        self._ids = itertools.count(1)
        self._said: dict[str, _Said] = {}
        self._connected = True
        self._held: list[tuple[str, _Said]] = []
        self._reconnect: asyncio.Task[None] | None = None

    def _new_platform(self, settings: MemorySettings) -> MemoryPlatform:
        platform = MemoryPlatform(settings)
        platform.on_change(lambda op, record: self._on_change(platform, op, record))
        return platform

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
            self._reconnect = None

    def create_platform(self) -> Platform:
        self._handed_out = True
        return self._platform

    def configure(
        self,
        *,
        max_text: int | None = None,
        max_message_text: int | None = None,
        stream_lifetime: float | None = None,
    ) -> None:
        if self._handed_out:
            raise RuntimeError("configure() the memory emulator before create_platform()")
        limits: dict[str, Any] = {
            "max_text": max_text,
            "max_message_text": max_message_text,
            "stream_lifetime": stream_lifetime,
        }
        changes = {name: value for name, value in limits.items() if value is not None}
        self._platform = self._new_platform(attrs.evolve(self._platform.settings, **changes))

    def _wall(self, monotonic: float) -> float:
        return time.time() - (time.monotonic() - monotonic)

    def _card_view(self, record: MemoryCard) -> View:
        title, status, blocks = None, None, []
        last_card = next((v for _, v in reversed(record.history) if isinstance(v, Card)), None)
        if last_card is not None:
            title = last_card.title
        current = record.current
        if isinstance(current, Card):
            status = current.status.value
            blocks = card_view_blocks(current)
        else:
            status = CardStatus.STREAMING.value
            blocks = [{"type": "markdown", "text": current}]
        return {
            "id": record.id,
            "conversation_id": record.conversation_id,
            "reply_to": record.reply_to,
            "title": title,
            "status": status,
            "blocks": blocks,
            "updates": len(record.history) - 1,
            "created": self._wall(record.history[0][0]),
            "updated": self._wall(record.history[-1][0]),
        }

    def _call_views(self) -> list[View]:
        return [
            {
                "time": self._wall(c.time),
                "method": "CALL",
                "route": c.op,
                "status": 200
                if c.ok
                else (403 if c.error in ("QpsLimit", "rate_limited") else 503),
                "error": c.error,
                "rate_limited": c.error in ("QpsLimit", "rate_limited"),
                "latency_ms": self._platform.settings.latency * 1000,
            }
            for c in self._platform.calls
        ]

    def _upload_views(self) -> list[View]:
        return [
            {
                "conversation_id": conversation,
                "kind": kind,
                "name": upload.name,
                "size": upload.size,
            }
            for conversation, kind, upload in self._platform.uploads
        ]

    def _on_change(self, platform: MemoryPlatform, op: str, record: MemoryCard | None) -> None:
        if platform is not self._platform:
            return  # a platform replaced by configure()
        calls = self._call_views()
        for call in calls[self._calls_seen :]:
            self.emit({"type": "call", "call": call})
        self._calls_seen = len(calls)
        if record is not None:
            self.emit({"type": "card", "card": self._card_view(record)})
        elif op == "send_text":
            conversation_id, text = self._platform.texts[-1]
            self.record_message(conversation_id, "robot", "Robot", text, from_robot=True)
        uploads = self._upload_views()
        for upload in uploads[self._uploads_seen :]:
            self.emit({"type": "upload", "upload": upload})
        self._uploads_seen = len(uploads)

    # ------------------------------------------------------------------ user side
    async def say(
        self,
        *,
        text: str,
        conversation_id: str,
        group: bool,
        user_id: str,
        user_name: str,
        mention: bool,
    ) -> str:
        return await self._say(
            _Said(
                text=text,
                conversation_id=conversation_id,
                group=group,
                user_id=user_id,
                user_name=user_name,
                mention=mention,
                time=datetime.now(UTC),
            )
        )

    async def say_with_attachments(
        self,
        *,
        attachments: Sequence[tuple[str, str, bytes]],
        text: str = "",
        conversation_id: str,
        group: bool,
        user_id: str,
        user_name: str,
        mention: bool,
    ) -> str:
        return await self._say(
            _Said(
                text=text,
                conversation_id=conversation_id,
                group=group,
                user_id=user_id,
                user_name=user_name,
                mention=mention,
                time=datetime.now(UTC),
                attachments=tuple(attachments),
            )
        )

    async def _say(self, said: _Said) -> str:
        shown = f"@robot {said.text}" if said.group and said.mention else said.text
        for kind, name, _ in said.attachments:
            shown = f"{shown} [{kind}: {name}]".strip()
        self.record_message(
            said.conversation_id, said.user_id, said.user_name, shown, from_robot=False
        )
        message_id = f"msg-emu-{next(self._ids)}"
        self._said[message_id] = said
        await self._push(message_id, said)
        return message_id

    async def _push(self, message_id: str, said: _Said) -> None:
        if not self._connected or self._held:
            self._held.append((message_id, said))  # pushed in order after the reconnect
            return
        await self._deliver(message_id, said)

    async def _deliver(self, message_id: str, said: _Said) -> None:
        await self._platform.say(
            said.text,
            conversation=said.conversation_id,
            group=said.group,
            sender=said.user_id,
            sender_name=said.user_name,
            mentioned=said.mention or not said.group,
            message_id=message_id,
            time=said.time,
            attachments=said.attachments,
        )

    async def redeliver(self, message_id: str) -> None:
        said = self._said.get(message_id)
        if said is None:
            raise ValueError(f"no message {message_id!r} was said on this emulator")
        await self._push(message_id, said)

    async def press(self, *, card_id: str, button_id: str, user_id: str) -> None:
        card = self._platform.cards[card_id].current
        if not isinstance(card, Card):
            raise ValueError(f"card {card_id} has no buttons")
        for button in card.buttons:
            if button.id == button_id:
                await self._platform.press(card_id, button.label, sender=user_id)
                self.emit(
                    {"type": "feedback", "feedback": {"card_id": card_id, "label": button.label}}
                )
                return
        raise ValueError(f"card {card_id} has no button {button_id!r}")

    # ------------------------------------------------------------------ views
    def state(self) -> dict[str, list[View]]:
        return {
            "messages": list(self.messages),
            "cards": [self._card_view(c) for c in self._platform.cards.values()],
            "calls": self._call_views(),
        }

    def uploads(self) -> list[View]:
        return self._upload_views()

    # ------------------------------------------------------------------ faults
    async def fault(self, kind: str, value: float | None = None) -> None:
        settings = self._platform.settings
        if kind == "errors":
            settings = attrs.evolve(settings, failure_rate=float(value or 0.0), failure_kind="5xx")
        elif kind == "rate_limit":
            settings = attrs.evolve(
                settings, failure_rate=float(value or 0.0), failure_kind="rate_limited"
            )
        elif kind == "latency":
            settings = attrs.evolve(settings, latency=float(value or 0.0))
        elif kind == "lost_answers":
            settings = attrs.evolve(settings, timeout_after_act=float(value or 0.0))
        elif kind == "drop":
            await self._drop()
            return
        else:
            raise ValueError(f"unknown fault {kind!r}; choose {', '.join(FAULT_KINDS)}")
        self._platform.settings = settings

    async def _drop(self) -> None:
        if not self._connected:
            return
        self._connected = False
        self.emit({"type": "connection", "connection": {"event": "close"}})
        self._reconnect = asyncio.create_task(self._reconnect_later())

    async def _reconnect_later(self) -> None:
        await asyncio.sleep(self.reconnect_delay)
        self._connected = True
        self.emit({"type": "connection", "connection": {"event": "open"}})
        while self._held and self._connected:
            message_id, said = self._held[0]
            await self._deliver(message_id, said)
            self._held.pop(0)
