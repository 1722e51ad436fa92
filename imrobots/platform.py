"""The contract a platform plugin (the Type layer) implements.

Plugin authors import from here (``from imrobots.platform import ...``); robot
authors import from :mod:`imrobots`. Nothing here names a platform.

A platform owns the connection to one IM platform for one robot. It receives
wire events, acknowledges them at once, converts them to :class:`Message` and
:class:`CardAction` and hands them to the core's sink. Every outbound call goes
to a :class:`~imrobots.models.Target`. Answers stream through a
:class:`StreamHandle` the plugin owns (sequence numbers, stream ids and per-card
state live there). The plugin declares its :class:`Capabilities`: how it can
stream, what its stream lifetime is and how to remedy it, each size limit with
its unit, each rate limit with its scope, and which features it has, so the
core adapts instead of special-casing platforms.

Errors are raised as :mod:`imrobots.errors` classes: :class:`RateLimited` (with
the reset hint), :class:`RetryableError`, :class:`OutcomeUnknown` (sent, no
answer), :class:`CardGone`, :class:`Refused` (degrade), :class:`FatalPlatformError`.

Make outbound calls (and open the long connection) with a session from
:func:`client_session`: it honours ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``/``NO_PROXY``.
An SDK with an HTTP client of its own is given the proxy :class:`ProxySettings` picks for
its URL (``ProxySettings.from_env().for_url(url)``: a :class:`ProxyRoute` or ``None``), so
that it reads those variables exactly as every other connection does.
"""

from __future__ import annotations

import abc
import enum
import importlib
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import attrs
from cattrs.errors import AttributeValidationNote, ClassValidationError

from .cards import (
    Actions,
    Button,
    Card,
    CardStatus,
    Divider,
    Element,
    Markdown,
    Note,
    error_card,
    final_card,
    interrupted_card,
    new_id,
    streaming_card,
    thinking_card,
)
from .endpoints import endpoint_problem, is_loopback_host
from .errors import (
    CardGone,
    ConfigError,
    FatalPlatformError,
    ImrobotsError,
    NotSupported,
    OutcomeUnknown,
    PlatformError,
    PlatformUnavailable,
    PluginError,
    RateLimited,
    Refused,
    RetryableError,
)
from .health import ConnectionState, ConnectionStatus
from .models import (
    Attachment,
    CardAction,
    ChatEntered,
    Conversation,
    ConversationKind,
    Feedback,
    FeedbackRating,
    Message,
    MessageKind,
    Quote,
    Sender,
    Target,
)
from .payloads import (
    LoneSurrogate,
    MalformedJson,
    escape_surrogates,
    find_lone_surrogate,
    may_hold_lone_surrogate,
    valid_text,
)
from .payloads import dumps as dump_json
from .payloads import loads as load_json
from .payloads import parse as parse_json
from .payloads import parse_strict as parse_json_strict
from .proxies import ProxyRoute, ProxySettings, client_session
from .redirects import RedirectRefused, redirect_message, refuse_redirects
from .secret import Secret

T = TypeVar("T")

__all__ = [
    "Actions",
    "Attachment",
    "Button",
    "Capabilities",
    "Card",
    "CardAction",
    "CardGone",
    "CardRef",
    "CardStatus",
    "CardStream",
    "ChatEntered",
    "ConfigError",
    "ConnectionState",
    "ConnectionStatus",
    "Conversation",
    "ConversationKind",
    "Divider",
    "Element",
    "EventSink",
    "FatalPlatformError",
    "Feedback",
    "FeedbackRating",
    "ImrobotsError",
    "LifetimeRemedy",
    "LoneSurrogate",
    "MalformedJson",
    "Markdown",
    "Message",
    "MessageKind",
    "NotSupported",
    "Note",
    "Op",
    "OutcomeUnknown",
    "Platform",
    "PlatformError",
    "PlatformSpec",
    "PlatformUnavailable",
    "PluginError",
    "ProxyRoute",
    "ProxySettings",
    "Quote",
    "RateLimit",
    "RateLimited",
    "RedirectRefused",
    "Refused",
    "RetryableError",
    "Scope",
    "Secret",
    "Sender",
    "SettingsProblems",
    "SizeUnit",
    "StreamHandle",
    "StreamingMode",
    "Target",
    "Upload",
    "client_session",
    "dump_json",
    "endpoint_problem",
    "error_card",
    "escape_surrogates",
    "final_card",
    "find_lone_surrogate",
    "interrupted_card",
    "is_loopback_host",
    "load_json",
    "may_hold_lone_surrogate",
    "measure",
    "new_id",
    "number_problems",
    "parse_json",
    "parse_json_strict",
    "redirect_message",
    "refuse_redirects",
    "resolve_object",
    "settings_problems",
    "streaming_card",
    "structure_settings",
    "thinking_card",
    "valid_text",
]


class StreamingMode(enum.StrEnum):
    """How a platform can show an answer that is still being written."""

    NATIVE = "native"
    """A streaming card the platform animates (DingTalk AI card, Feishu CardKit, WeCom stream)."""
    EDIT = "edit"
    """Post a card, then edit it (DingTalk StandardCard update, Feishu message PATCH)."""
    BUFFERED = "buffered"
    """Nothing can be edited: send the answer once, at the end."""


class LifetimeRemedy(enum.StrEnum):
    """What the engine does before a stream reaches ``Capabilities.stream_lifetime``."""

    NEW_MESSAGE = "new_message"
    """Close the current card with the text so far and continue in a new one."""
    RENEW = "renew"
    """Call :meth:`StreamHandle.renew`, which extends the stream (Feishu CardKit)."""
    KEEP_ALIVE = "keep_alive"
    """Push at least every ``keep_alive`` seconds, even without new text; at the end of
    the lifetime continue in a new message (WeCom stream replies)."""


class SizeUnit(enum.StrEnum):
    """The unit a platform counts a size limit in."""

    BYTES = "bytes"
    """UTF-8 bytes (DingTalk sessionWebhook 20,000 bytes, Feishu 30 KB, WeCom 20,480 bytes)."""
    CHARACTERS = "characters"
    """Unicode code points."""


def measure(text: str, unit: SizeUnit) -> int:
    """The size of ``text`` in ``unit``. A lone surrogate, which UTF-8 cannot carry (JSON
    sends it as a 6-byte ``\\ud800`` escape), counts 6 bytes; it never raises."""
    if unit is not SizeUnit.BYTES or text.isascii():  # isascii: a flag, not a scan
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return len(text.encode("utf-8", "surrogatepass")) + 3 * sum(
            1 for c in text if "\ud800" <= c <= "\udfff"
        )


class Scope(enum.StrEnum):
    """What a rate limit counts calls of."""

    APP = "app"
    """Every call of the app, across all conversations."""
    API = "api"
    """Every call of one API (one :class:`Op`) of the app (DingTalk: 20/s per app per API)."""
    CONVERSATION = "conversation"
    """Calls into one conversation (Feishu: 5/s per chat)."""
    CARD = "card"
    """Updates of one card or message (Feishu: 5/s per PATCHed message)."""
    MEMBER = "member"
    """Messages to one member (WeCom app: 30/min per member)."""


class Op(enum.StrEnum):
    """The core's names for platform operations, used for ``Scope.API`` limits and
    for declaring which operations are idempotent."""

    OPEN = "open_stream"
    PUSH = "push"
    RENEW = "renew"
    CLOSE = "close"
    SEND_CARD = "send_card"
    UPDATE_CARD = "update_card"
    SEND_TEXT = "send_text"
    SEND_IMAGE = "send_image"
    SEND_FILE = "send_file"
    ANSWER_ACTION = "answer_action"


@attrs.frozen(kw_only=True)
class RateLimit:
    """One rate limit a platform enforces: at most ``rate`` calls per second within
    ``scope`` (per conversation, per card...), counted over a sliding ``window``.

    The client-side limiter allows ``floor(rate x window x headroom)`` calls (at
    least one) in any ``window`` seconds: a call goes at once when the window has
    room, else when it has, in arrival order.
    """

    scope: Scope
    rate: float
    """Calls per second (30 per minute is ``rate=0.5, window=60``)."""
    window: float = 1.0
    """Seconds the platform counts calls over (DingTalk and Feishu: 1 s; WeCom app
    messages to one member: 60 s)."""
    ops: frozenset[Op] | None = None
    """The operations it counts; ``None``: every operation."""

    def __attrs_post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"rate limit {self.scope}: rate must be positive, got {self.rate}")
        if self.window <= 0:
            raise ValueError(f"rate limit {self.scope}: window must be positive")

    def counts(self, op: Op) -> bool:
        return self.ops is None or op in self.ops

    def allowed(self, headroom: float = 1.0) -> int:
        """Calls the client allows in one window, leaving ``headroom``."""
        return max(1, int(self.rate * self.window * headroom + 1e-9))


ErrorClass = Literal["rate_limited", "retryable", "fatal"]

_ALL_OPS = frozenset(Op)


@attrs.frozen(kw_only=True)
class Capabilities:
    """What a platform can do and the limits it enforces.

    The streaming engine derives its defaults from these: its rate limiter from
    :meth:`limits`, the per-card pacing from ``update_interval``, the cap on
    updates from ``max_updates``, the lifetime handling from ``stream_lifetime``
    and ``lifetime_remedy``, and splitting from ``max_text`` / ``max_message_text``
    counted in ``text_unit``.
    """

    streaming: StreamingMode = StreamingMode.EDIT
    # --- rate limits -------------------------------------------------------------
    rate_limits: tuple[RateLimit, ...] = ()
    """Every rate limit, by scope. Empty: one app-wide limit of ``app_rate``."""
    app_rate: float = 20.0
    """Requests per second the platform allows one app across all conversations (used
    when ``rate_limits`` is empty), counted over 1-second windows."""
    rate_headroom: float = 0.9
    """Share of each declared rate the client-side limiter uses, leaving room for clock jitter."""
    # --- streaming ----------------------------------------------------------------
    update_interval: float = 1.0
    """Minimum seconds between two updates of one card."""
    max_updates: int | None = None
    """Most updates one card may get (the final one included), or ``None``."""
    stream_lifetime: float | None = None
    """Seconds after opening during which a stream accepts updates."""
    lifetime_remedy: LifetimeRemedy = LifetimeRemedy.NEW_MESSAGE
    """What to do before ``stream_lifetime`` ends."""
    keep_alive: float | None = None
    """With ``KEEP_ALIVE``: most seconds between two pushes of an open stream."""
    # --- sizes --------------------------------------------------------------------
    max_text: int | None = None
    """Most markdown one card (or stream) can hold, in ``text_unit``."""
    max_message_text: int | None = None
    """Most text one plain text/markdown message can hold, in ``text_unit``."""
    text_unit: SizeUnit = SizeUnit.CHARACTERS
    """The unit of ``max_text`` and ``max_message_text``."""
    max_image_bytes: int | None = None
    """Largest image :meth:`Platform.send_image` accepts, in bytes."""
    max_file_bytes: int | None = None
    """Largest file :meth:`Platform.send_file` accepts, in bytes."""
    # --- features -----------------------------------------------------------------
    cards: bool = True
    """Whether the platform can draw cards with buttons at all."""
    images: bool = False
    """Whether :meth:`Platform.send_image` works."""
    files: bool = False
    """Whether :meth:`Platform.send_file` works."""
    downloads: bool = False
    """Whether :meth:`Platform.download` fetches inbound attachments."""
    threads: bool = False
    """Whether answers can go into a thread (``Target.thread``)."""
    mentions: bool = True
    """Whether messages can @-mention users (``Target.mentions``)."""
    proactive: bool = True
    """Whether the robot can speak first (a target that is not an inbound message)."""
    action_deadline: float | None = None
    """Seconds within which a button press must be answered, when the platform has a deadline."""
    api_names: Mapping[Op, str | tuple[str, ...]] = attrs.field(factory=dict)
    """The platform API(s) each operation calls, for ``Scope.API`` limits: operations that
    call the same API share its window (e.g. pushes and closes of DingTalk AI cards both
    call ``card/streaming``); an operation that calls several APIs (a tuple) takes a turn
    in each. Unnamed operations count as an API of their own."""
    op_calls: Mapping[Op, int] = attrs.field(factory=dict)
    """Platform calls one operation makes, where it makes more than one (Feishu's renewal:
    streaming mode off, then on): each counts in every window that counts the operation,
    so the limiter takes that many slots at once. Unnamed operations make one."""
    idempotent: frozenset[Op] = _ALL_OPS
    """Operations a retry with the same idempotency key never repeats. After
    :class:`OutcomeUnknown`, only these are retried; others are taken as done."""
    # --- error codes ---------------------------------------------------------------
    rate_limited_codes: frozenset[str] = frozenset()
    """Platform error codes that mean "rate limited"."""
    retryable_codes: frozenset[str] = frozenset()
    """Platform error codes that mean "try again later"."""
    fatal_codes: frozenset[str] = frozenset()
    """Platform error codes that mean "give up"."""

    @property
    def budget(self) -> float:
        """Requests per second the client-side limiter allows app-wide (when no scoped
        limits are declared)."""
        return self.app_rate * self.rate_headroom

    def apis_of(self, op: Op) -> tuple[str, ...]:
        """The API names ``op`` is counted under."""
        names = self.api_names.get(op, str(op))
        return (names,) if isinstance(names, str) else names

    def api_of(self, op: Op) -> str:
        """The (first) API name ``op`` is counted under."""
        return self.apis_of(op)[0]

    def limits(self) -> tuple[RateLimit, ...]:
        """The rate limits in force: the declared ones, else one app-wide limit."""
        if self.rate_limits:
            return self.rate_limits
        return (RateLimit(scope=Scope.APP, rate=self.app_rate),)

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
    """A handle to a card or message a platform sent, used to update it."""

    id: str
    """The platform's id of the card or message."""
    platform: str
    conversation_id: str | None = None
    data: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False, hash=False)
    """Immutable facts the platform needs to update the card (JSON-able). Mutable
    per-card state belongs in a :class:`StreamHandle`, not here."""


@attrs.frozen(kw_only=True)
class Upload:
    """A file or image to send: ``data`` in memory, with its name and MIME type."""

    name: str
    data: bytes = attrs.field(repr=False)
    mime_type: str | None = None

    @property
    def size(self) -> int:
        """Size in bytes."""
        return len(self.data)


class EventSink(Protocol):
    """Where a platform delivers inbound events. It returns quickly; work happens later."""

    def __call__(self, event: Message | CardAction | ChatEntered) -> Awaitable[None]: ...


class StreamHandle(abc.ABC):
    """One streaming answer on the platform, owned by the plugin.

    The engine opens it with :meth:`Platform.open_stream`, calls :meth:`push`
    with the **whole** text so far (never a delta), :meth:`renew` when the
    platform's remedy is ``RENEW``, and :meth:`close` exactly once with the card
    that ends it (its ``status`` says final, error or interrupted). Anything the
    platform needs between calls (sequence numbers, stream ids, whether the card
    already shows "typing") lives on the handle. :meth:`state` must return what
    :meth:`Platform.restore_stream` needs to close the stream after a restart.
    """

    target: Target
    ref: CardRef

    @abc.abstractmethod
    async def push(self, text: str) -> None:
        """Show ``text``, the whole answer so far. Raises the core's error classes."""

    async def renew(self) -> None:
        """Extend the stream's lifetime (only called for ``LifetimeRemedy.RENEW``)."""
        raise NotSupported("this stream cannot be renewed")

    @abc.abstractmethod
    async def close(self, card: Card) -> None:
        """End the stream showing ``card`` (final with buttons, error or interrupted)."""

    def state(self) -> dict[str, Any]:
        """JSON-able state for :meth:`Platform.restore_stream`."""
        return {"ref": {"id": self.ref.id, "conversation_id": self.ref.conversation_id}}


class CardStream(StreamHandle):
    """The generic handle over :meth:`Platform.send_card` / :meth:`Platform.update_card`:
    each push edits the card (``EDIT``) or calls :meth:`Platform.stream_update` (``NATIVE``).
    """

    def __init__(
        self, platform: Platform, target: Target, ref: CardRef, *, title: str | None
    ) -> None:
        self.platform = platform
        self.target = target
        self.ref = ref
        self.title = title

    async def push(self, text: str) -> None:
        if self.platform.capabilities.streaming is StreamingMode.NATIVE:
            await self.platform.stream_update(self.ref, text)
        else:
            await self.platform.update_card(self.ref, streaming_card(self.title or "", text))

    async def close(self, card: Card) -> None:
        await self.platform.update_card(self.ref, card)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "title": self.title, "data": dict(self.ref.data)}


class Platform(abc.ABC):
    """Base class of a platform connection for one robot.

    Subclasses set ``name`` and ``capabilities`` and implement the abstract
    methods; the rest have defaults built on them. Every outbound method takes a
    :class:`Target` and an idempotency ``key``: the core mints one key per
    logical send and passes the same key on every retry, and the plugin maps it
    to the platform's idempotency field (a card id, a ``uuid``...).
    """

    name: ClassVar[str] = ""
    capabilities: Capabilities = Capabilities()

    def change_capabilities(self, **changes: Any) -> Capabilities:
        """Change what this platform declares while it runs (``changes`` are
        :class:`Capabilities` fields, e.g. ``api_names``), and tell whoever listens
        (:meth:`watch_capabilities`): the runtime's rate limiter then counts each call
        from its next reservation on under the new ``api_names`` and ``op_calls``. Use it
        when the platform switches the APIs it calls (Feishu falling back from CardKit to
        message PATCH). ``rate_limits`` are read once, at start: changing them raises
        ``ValueError``. Returns the new capabilities. Answers already running keep the
        capabilities they started with for everything but the limiter, so the new
        ``api_names`` should count the calls of both the old and the new way while any
        old answer may still be running."""
        if "rate_limits" in changes and changes["rate_limits"] != self.capabilities.rate_limits:
            raise ValueError("rate_limits cannot change while a platform runs")
        self.capabilities = attrs.evolve(self.capabilities, **changes)
        for listener in list(self.__dict__.get("_capability_listeners", ())):
            listener(self.capabilities)
        return self.capabilities

    def watch_capabilities(self, listener: Callable[[Capabilities], None]) -> None:
        """Call ``listener`` with the new capabilities after each
        :meth:`change_capabilities` (the runtime's rate limiter listens)."""
        listeners: list[Callable[[Capabilities], None]] = self.__dict__.setdefault(
            "_capability_listeners", []
        )
        if listener not in listeners:
            listeners.append(listener)

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

    # ------------------------------------------------------------------ cards
    @abc.abstractmethod
    async def send_card(self, target: Target, card: Card, *, key: str) -> CardRef:
        """Send ``card`` to ``target`` (mentioning its user in groups where the platform does)."""

    @abc.abstractmethod
    async def update_card(self, ref: CardRef, card: Card) -> None:
        """Replace the content of a sent card. Raise CardGone if it can no longer be edited."""

    async def stream_update(self, ref: CardRef, text: str) -> None:
        """Native streaming for :class:`CardStream`: show ``text`` (the whole answer so far)."""
        raise NotSupported(f"platform {self.name!r} has no native streaming")

    async def open_stream(self, target: Target, card: Card, *, key: str) -> StreamHandle:
        """Start a streaming answer showing ``card`` (the thinking card).

        The default sends ``card`` with :meth:`send_card` and returns a
        :class:`CardStream`; platforms with a stream protocol of their own return
        their own handle.
        """
        ref = await self.send_card(target, card, key=key)
        return CardStream(self, target, ref, title=card.title)

    async def restore_stream(self, target: Target, state: Mapping[str, Any]) -> StreamHandle:
        """Rebuild a handle from :meth:`StreamHandle.state`, to close a stream a crash left
        open. Raises :class:`CardGone` if it cannot be restored."""
        ref_state = state.get("ref")
        if not isinstance(ref_state, Mapping) or not isinstance(ref_state.get("id"), str):
            raise CardGone("no card to restore")
        data = state.get("data")
        ref = CardRef(
            id=ref_state["id"],
            platform=self.name,
            conversation_id=ref_state.get("conversation_id"),
            data=dict(data) if isinstance(data, Mapping) else {},
        )
        title = state.get("title")
        return CardStream(self, target, ref, title=title if isinstance(title, str) else None)

    # ------------------------------------------------------------------ messages
    @abc.abstractmethod
    async def send_text(
        self, target: Target, text: str, *, markdown: bool = False, key: str
    ) -> None:
        """Send a plain text or markdown message to ``target`` (at most
        ``capabilities.max_message_text``; the core splits longer text)."""

    async def send_image(self, target: Target, image: Upload, *, key: str) -> None:
        """Send an image (``capabilities.images``; at most ``max_image_bytes``)."""
        raise NotSupported(f"platform {self.name!r} cannot send images")

    async def send_file(self, target: Target, file: Upload, *, key: str) -> None:
        """Send a file (``capabilities.files``; at most ``max_file_bytes``)."""
        raise NotSupported(f"platform {self.name!r} cannot send files")

    async def download(self, attachment: Attachment) -> bytes:
        """Fetch an inbound attachment's content, only from the platform's own hosts."""
        raise NotSupported(f"platform {self.name!r} cannot download attachments")

    async def answer_action(self, action: CardAction, card: Card, *, key: str) -> None:
        """Answer a button press by replacing the pressed card with ``card`` (within
        ``capabilities.action_deadline``). The default updates the card by its id."""
        conversation = action.conversation.id if action.conversation else None
        ref = CardRef(id=action.card_id, platform=self.name, conversation_id=conversation)
        await self.update_card(ref, card)

    def describe(self) -> str:
        """One line saying what this connection talks to, for logs and the CLI (the core
        redacts secrets in any URL it shows: :func:`~imrobots.redact.redact_text`)."""
        return self.name

    @property
    def connection_status(self) -> ConnectionStatus:
        """The state of this platform's long connection, for ``/healthz`` and ``/metrics``.

        Plugins report through it: ``connection_status.connecting()`` when a (re)connect starts,
        ``connected()`` once a connection completed its handshake, ``disconnected(reason)``
        when it is lost, ``frame_received()`` for every inbound frame (pings included). A
        plugin that reports nothing is taken as connected once :meth:`start` returned.
        """
        status: ConnectionStatus | None = self.__dict__.get("_imrobots_connection")
        if status is None:
            status = self.__dict__["_imrobots_connection"] = ConnectionStatus()
        return status


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


class SettingsProblems(ClassValidationError):
    """Every problem of a platform's settings, each naming its field, raised from the
    settings class's ``__attrs_post_init__``: ``imrobots check`` prints one line per
    problem (``robots.NAME.settings.FIELD: ...``). Build it with :func:`settings_problems`."""


def settings_problems(
    cls: type[Any], problems: Sequence[tuple[str, str]], *, title: str
) -> SettingsProblems:
    """The error that reports ``problems`` (``(field, message)`` pairs) of the settings
    class ``cls`` field by field, as cattrs reports a wrong type: ``raise
    settings_problems(MySettings, problems, title="My platform")`` when a check of the
    settings as a whole (several fields, modes) fails. Its text is ``invalid TITLE
    settings: field: message; ...``."""
    errors: list[Exception] = []
    for name, message in problems:
        error = ValueError(message)
        note = f"Structuring class {cls.__name__} @ attribute {name}"
        error.__notes__ = [AttributeValidationNote(note, name, object)]
        errors.append(error)
    summary = "; ".join(f"{name}: {message}" for name, message in problems)
    return SettingsProblems(f"invalid {title} settings: {summary}", errors, cls)


def number_problems(
    settings: object,
    positive: Iterable[str] = (),
    *,
    ordered: Iterable[tuple[str, str]] = (),
    unit: str = "s",
) -> list[tuple[str, str]]:
    """The problems of a plugin's numeric settings, as ``(field, message)`` pairs for
    its own settings check (one line each, named on the field).

    Each of ``positive`` that is set (not ``None``) must be above 0 (``must be positive,
    got 0``; NaN too, which compares false with everything) and finite (``must be finite,
    got inf``: a time-out that never ends, a rate without a limit). Each ``(low, high)``
    of ``ordered`` must have ``high >= low`` (``must be at least low (5 s), got 2``, in
    ``unit``), checked only when neither already has a problem."""
    problems: list[tuple[str, str]] = []
    for name in positive:
        value = getattr(settings, name)
        if value is not None and not value > 0:
            problems.append((name, f"must be positive, got {value!r}"))
        elif value == math.inf:
            problems.append((name, f"must be finite, got {value!r}"))
    named = {name for name, _ in problems}
    for low, high in ordered:
        low_value, high_value = getattr(settings, low), getattr(settings, high)
        if named & {low, high} or low_value is None or high_value is None:
            continue
        if high_value < low_value:
            problems.append(
                (high, f"must be at least {low} ({low_value:g} {unit}), got {high_value:g}")
            )
    return problems


def structure_settings(data: Mapping[str, Any], cls: type[T], *, path: str) -> T:
    """Convert a settings table to the plugin's settings class ``cls`` the way ``imrobots
    run`` does (strict: unknown keys and wrong types are errors; ``Secret`` fields wrapped).

    For an emulator adapter or a test that builds its platform itself. Raises
    :class:`ConfigError` with one line naming ``path.of.field`` for each problem.
    """
    from .config import structure  # config imports the runtime, which imports this module

    return structure(dict(data), cls, path=path)


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
    seed_config: bool = False
    """This platform is the one a single-robot ``config.json`` without ``"platform"`` (the
    seed tutorial's file: ``clientId``, ``clientSecret``, ``agent``) runs on. At most one
    registered platform may claim it."""
    aliases: tuple[str, ...] = ()
    """Other names users write for the platform (a brand of it, a colloquial or former name,
    e.g. the international brand of a platform sold under two). They are never accepted in
    place of ``name``: a config naming one gets ``unknown platform 'ALIAS' (did you mean
    NAME?)``. Matched ignoring case and anything but letters and digits; an alias that is
    another registered platform's name, or that two platforms declare, suggests nothing."""
    status: Literal["available", "planned"] = "available"
    """``"planned"``: registered so that it is listed, but not usable in this version.

    A plugin whose platform does not yet pass the conformance suite registers as
    ``"planned"``: ``imrobots platforms`` lists it as planned, and ``imrobots
    check`` and ``imrobots run`` refuse it.
    """
