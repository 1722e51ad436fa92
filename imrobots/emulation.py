"""The contract between platform emulators and the core's console and pytest plugin.

A platform plugin registers an emulator factory with ``register_emulators``;
the factory makes an :class:`EmulatorAdapter`: the platform's emulated server
side, seen through a platform-neutral lens. The web console and
``imrobots.testing`` only ever talk to this contract, so every platform's
emulator appears in them the same way.

Views are plain JSON-able dicts:

* a **card**: ``{"id", "conversation_id", "title", "status", "blocks", "updates",
  "created", "updated", "reply_to"}`` where ``blocks`` is a list of
  ``{"type": "markdown", "text"}``, ``{"type": "divider"}``, ``{"type": "note", "text"}``
  or ``{"type": "buttons", "buttons": [{"id", "label", "style"}]}`` and ``status``
  is ``thinking``, ``streaming``, ``final``, ``error``, ``interrupted`` or ``None``;
* a **message**: ``{"id", "conversation_id", "user_id", "user_name", "text", "time",
  "from_robot"}``;
* a **call**: ``{"time", "method", "route", "status", "error", "rate_limited", "latency_ms"}``.

Events from :meth:`EmulatorAdapter.subscribe` are ``{"type": "card" | "message" |
"call" | "connection" | "feedback", ...}`` with the view under the type's name.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable
from typing import Any

from .cards import Actions, Card, CardStatus, Divider, Markdown, Note
from .memory import MemoryCard, MemoryPlatform, MemorySettings
from .platform import Platform

__all__ = ["EmulatorAdapter", "MemoryEmulator", "card_view_blocks"]

View = dict[str, Any]


class EmulatorAdapter(abc.ABC):
    """One running emulator of one platform, hosting one robot app."""

    platform: str = ""
    """The platform name (``dingtalk``, ``memory``...)."""
    title: str = ""
    """What the console calls it."""

    def __init__(self) -> None:
        self._subscribers: list[asyncio.Queue[View]] = []
        self.messages: list[View] = []
        """Every chat message (from users and the robot's plain replies), oldest first."""

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

    def robot_settings(self) -> dict[str, Any]:
        """The ``[robots.NAME.settings]`` that point a robot at this emulator."""
        return {}

    def create_platform(self) -> Platform | None:
        """In-process emulators may hand over the platform object directly."""
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
        """A user sends ``text``; returns the platform message id."""

    @abc.abstractmethod
    async def press(self, *, card_id: str, button_id: str, user_id: str) -> None:
        """A user presses a card button, delivered as the platform's callback."""

    @abc.abstractmethod
    def state(self) -> dict[str, list[View]]:
        """``{"messages": [...], "cards": [...], "calls": [...]}``, oldest first."""

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
        self, conversation_id: str, user_id: str, user_name: str, text: str, *, from_robot: bool
    ) -> View:
        """Add a chat message to :attr:`messages` and emit it (subclasses call this)."""
        view = {
            "id": f"m{len(self.messages) + 1}",
            "conversation_id": conversation_id,
            "user_id": user_id,
            "user_name": user_name,
            "text": text,
            "time": time.time(),
            "from_robot": from_robot,
        }
        self.messages.append(view)
        self.emit({"type": "message", "message": view})
        return view

    async def fault(self, kind: str, value: float | None = None) -> None:
        """Inject a fault: ``drop`` (connections), ``errors`` (share of calls failing),
        ``latency`` (seconds added to every call)."""
        raise NotImplementedError(f"{self.platform} emulator has no fault {kind!r}")

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


class MemoryEmulator(EmulatorAdapter):
    """The in-memory platform seen as an emulator (no sockets: the robot runs in-process)."""

    platform = "memory"
    title = "In-memory"

    def __init__(self, settings: MemorySettings | None = None) -> None:
        super().__init__()
        self._platform = MemoryPlatform(settings or MemorySettings(update_interval=0.3))
        self._platform.on_change(self._on_change)
        self._calls_seen = 0
        self._started = time.time()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def create_platform(self) -> Platform:
        return self._platform

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

    def _on_change(self, op: str, record: MemoryCard | None) -> None:
        calls = self._call_views()
        for call in calls[self._calls_seen :]:
            self.emit({"type": "call", "call": call})
        self._calls_seen = len(calls)
        if record is not None:
            self.emit({"type": "card", "card": self._card_view(record)})
        elif op == "send_text":
            conversation_id, text = self._platform.texts[-1]
            self.record_message(conversation_id, "robot", "Robot", text, from_robot=True)

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
        shown = f"@robot {text}" if group and mention else text
        self.record_message(conversation_id, user_id, user_name, shown, from_robot=False)
        message = await self._platform.say(
            text,
            conversation=conversation_id,
            group=group,
            sender=user_id,
            sender_name=user_name,
            mentioned=mention or not group,
        )
        return message.id

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

    def state(self) -> dict[str, list[View]]:
        return {
            "messages": list(self.messages),
            "cards": [self._card_view(c) for c in self._platform.cards.values()],
            "calls": self._call_views(),
        }

    async def fault(self, kind: str, value: float | None = None) -> None:
        import attrs

        settings = self._platform.settings
        if kind == "errors":
            settings = attrs.evolve(settings, failure_rate=float(value or 0.0))
        elif kind == "latency":
            settings = attrs.evolve(settings, latency=float(value or 0.0))
        elif kind == "drop":
            return  # nothing to drop: the memory platform has no connection
        else:
            raise ValueError(f"unknown fault {kind!r}; choose drop, errors or latency")
        self._platform.settings = settings
