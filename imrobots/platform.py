"""The contract a platform plugin (the Type layer) implements.

A platform owns the connection to one IM platform for one robot: it receives
wire events, acknowledges them at once, converts them to :class:`Message` and
:class:`CardAction` and hands them to the core's sink; it sends and updates
cards; and it declares its :class:`Capabilities` so the core can adapt its
streaming and rate limiting instead of special-casing platforms.
"""

from __future__ import annotations

import abc
import enum
import importlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Literal, Protocol

import attrs

from .cards import Card
from .models import CardAction, Message

__all__ = [
    "Capabilities",
    "CardRef",
    "EventSink",
    "Platform",
    "PlatformSpec",
    "StreamingMode",
    "resolve_object",
]


class StreamingMode(enum.StrEnum):
    """How a platform can show an answer that is still being written."""

    NATIVE = "native"
    """A streaming card the platform animates (DingTalk AI card, Feishu CardKit, WeCom stream)."""
    EDIT = "edit"
    """Post a card, then edit it (DingTalk StandardCard update, Feishu message PATCH)."""
    BUFFERED = "buffered"
    """Nothing can be edited: send the answer once, at the end."""


ErrorClass = Literal["rate_limited", "retryable", "fatal"]


@attrs.frozen(kw_only=True)
class Capabilities:
    """What a platform can do and the limits it enforces.

    The streaming engine derives its defaults from these: the app-wide token
    bucket from ``app_rate``/``app_burst``, the per-card pacing from
    ``update_interval``, the cap on updates from ``max_updates``, rotation from
    ``stream_lifetime`` and splitting from ``max_text``.
    """

    streaming: StreamingMode = StreamingMode.EDIT
    app_rate: float = 20.0
    """Requests per second the platform allows one app across all conversations."""
    app_burst: int | None = None
    """Bucket size of the client-side limiter; default 1 (evenly spaced calls)."""
    rate_headroom: float = 0.9
    """Share of ``app_rate`` the client-side limiter uses, leaving room for clock jitter."""
    update_interval: float = 1.0
    """Minimum seconds between two updates of one card."""
    max_updates: int | None = None
    """Most updates one card may get (the final one included), or ``None``."""
    stream_lifetime: float | None = None
    """Seconds after which the platform stops accepting updates to a streaming card."""
    max_text: int | None = None
    """Most characters of markdown one card can hold."""
    cards: bool = True
    """Whether the platform can draw cards with buttons at all."""
    rate_limited_codes: frozenset[str] = frozenset()
    """Platform error codes that mean "rate limited"."""
    retryable_codes: frozenset[str] = frozenset()
    """Platform error codes that mean "try again later"."""
    fatal_codes: frozenset[str] = frozenset()
    """Platform error codes that mean "give up"."""

    @property
    def burst(self) -> int:
        return self.app_burst if self.app_burst is not None else 1

    @property
    def budget(self) -> float:
        """Requests per second the client-side limiter allows."""
        return self.app_rate * self.rate_headroom

    def classify(self, code: str | None) -> ErrorClass | None:
        """Say what a platform error code means, or ``None`` when it is not a declared code."""
        if code is None:
            return None
        if code in self.rate_limited_codes:
            return "rate_limited"
        if code in self.retryable_codes:
            return "retryable"
        if code in self.fatal_codes:
            return "fatal"
        return None


@attrs.frozen(kw_only=True)
class CardRef:
    """A handle to a card a platform sent, used to update it."""

    id: str
    """The platform's id of the card or message."""
    platform: str
    conversation_id: str | None = None
    data: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False, hash=False)
    """Whatever else the platform needs to update the card."""


class EventSink(Protocol):
    """Where a platform delivers inbound events. It returns quickly; work happens later."""

    def __call__(self, event: Message | CardAction) -> Awaitable[None]: ...


class Platform(abc.ABC):
    """Base class of a platform connection for one robot.

    Subclasses set ``name`` and ``capabilities`` and implement the abstract
    methods. Errors are raised as :mod:`imrobots.errors` classes
    (:class:`~imrobots.errors.RateLimited`, :class:`~imrobots.errors.RetryableError`,
    :class:`~imrobots.errors.FatalPlatformError`, :class:`~imrobots.errors.CardGone`).
    """

    name: ClassVar[str] = ""
    capabilities: Capabilities = Capabilities()

    @abc.abstractmethod
    async def start(self, sink: EventSink) -> None:
        """Connect, and from then on deliver events to ``sink``.

        Acknowledge each inbound frame to the platform before (or while)
        calling the sink, never after the answer: the sink only queues work.
        Returns once the first connection is up; reconnects are the platform's
        job until :meth:`close`.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Disconnect and release resources. Idempotent."""

    @abc.abstractmethod
    async def send_card(self, to: Message, card: Card) -> CardRef:
        """Send ``card`` into the conversation of ``to`` (mentioning its sender in groups)."""

    @abc.abstractmethod
    async def update_card(self, ref: CardRef, card: Card) -> None:
        """Replace the content of a sent card. Raise CardGone if it can no longer be edited."""

    @abc.abstractmethod
    async def send_text(self, to: Message, text: str, *, markdown: bool = False) -> None:
        """Send a plain text or markdown message into the conversation of ``to``."""

    async def stream_update(self, ref: CardRef, text: str, *, final: bool = False) -> None:
        """Native streaming: show ``text`` (the whole answer so far) in the card.

        Only called when ``capabilities.streaming`` is ``NATIVE``.
        """
        raise NotImplementedError(f"platform {self.name!r} has no native streaming")

    def describe(self) -> str:
        """One line saying what this connection talks to, for logs and the CLI."""
        return self.name


def resolve_object(ref: object) -> Any:
    """Import ``"package.module:attribute"`` lazily; return anything else unchanged."""
    if not isinstance(ref, str):
        return ref
    module_name, _, attribute = ref.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"expected 'module:attribute', got {ref!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


@attrs.frozen(kw_only=True)
class PlatformSpec:
    """How a plugin registers a platform through ``register_platforms(register)``.

    ``factory`` and ``settings`` may be ``"module:attribute"`` strings so that
    registering a platform never imports its SDK; they are imported when a
    robot actually uses the platform.
    """

    name: str
    factory: Callable[..., Platform] | str
    """Called as ``factory(settings)`` with an instance of ``settings``."""
    settings: type[Any] | str | None = None
    """An attrs class the platform's config table is converted to (cattrs)."""
    description: str = ""
    requires: tuple[str, ...] = ()
    """Modules that must be importable (the platform's SDK)."""
    install: str | None = None
    """The command that installs what is missing, e.g. ``pip install "imrobots[dingtalk]"``."""
    status: Literal["available", "planned"] = "available"
    """``"planned"``: registered so that it is listed, but not usable in this version.

    A plugin whose platform does not yet pass the conformance suite registers as
    ``"planned"``: ``imrobots platforms`` lists it as planned, and ``imrobots
    check`` and ``imrobots run`` refuse it.
    """
