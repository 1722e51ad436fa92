"""Emulator state: plain records, their containers, and change notification.

Nothing here speaks HTTP or WebSocket; :mod:`.server` and :mod:`.emulator` do.
Every record carries ``at`` (``time.monotonic()``) and ``wall`` (``time.time()``).
Records turn into JSON-able dicts with :func:`to_json`; fields whose metadata has
``json=False`` (secrets, internal bookkeeping) are left out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

logger = logging.getLogger(__name__)

_HIDDEN: dict[str, Any] = {"json": False}

ConversationType = Literal["direct", "group"]
CardKind = Literal["standard", "instance"]
AckKind = Literal["message", "callback", "event", "ping", "disconnect", "raw"]


def _now() -> float:
    return time.monotonic()


def _wall() -> float:
    return time.time()


def to_json(obj: Any) -> Any:
    """Convert records (dataclasses), containers and sets into JSON-able values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            if not f.metadata.get("json", True):
                continue
            out[f.name] = to_json(getattr(obj, f.name))
        return out
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted(to_json(v) for v in obj)
    return obj


def redact(value: Any) -> Any:
    """Copy of a request body with secret values replaced by ``"***"``."""
    if isinstance(value, dict):
        return {
            k: ("***" if k in _SECRET_KEYS and v not in (None, "") else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


_SECRET_KEYS = frozenset({"clientSecret", "appSecret", "client_secret", "app_secret"})


# --- records ------------------------------------------------------------------


@dataclass(kw_only=True)
class EmulatedApp:
    """A DingTalk internal app with a robot (AppKey = clientId = robotCode by default)."""

    client_id: str
    client_secret: str = field(repr=False, metadata=_HIDDEN)
    robot_code: str
    app_id: str
    """Sent as the ``appId`` header of CALLBACK frames."""
    unified_app_id: str
    """Sent as the ``eventUnifiedAppId`` header of EVENT frames."""
    corp_id: str
    chatbot_user_id: str
    """The robot's ``$:LWCP_v1:$...`` id, as in ``chatbotUserId`` and ``atUsers``."""
    denied_scopes: set[str] = field(default_factory=set)
    """Permissions (e.g. ``Card.Instance.Write``) the app was not granted: routes that
    need one answer 403 ``Forbidden.AccessDenied.AccessTokenPermissionDenied``."""
    at: float = field(default_factory=_now)
    wall: float = field(default_factory=_wall)


@dataclass(kw_only=True)
class ApiCall:
    """One HTTP call to the emulator (control API excluded)."""

    seq: int
    method: str
    path: str
    route: str
    """Logical route name, e.g. ``card.streaming`` or ``unknown``."""
    client_id: str | None
    status: int
    error_code: str | None
    latency: float
    """Seconds spent answering, injected latency included."""
    request: Any
    """The JSON body with secrets redacted (``None`` if there was none)."""
    response: Any
    notes: list[str] = field(default_factory=list)
    """Things the emulator accepted but real DingTalk may not (coercions etc.)."""
    at: float = field(default_factory=_now)
    wall: float = field(default_factory=_wall)


@dataclass(kw_only=True)
class AckRecord:
    """A server-to-client frame that expects an ACK, keyed by ``messageId``."""

    message_id: str
    kind: AckKind
    topic: str
    client_id: str
    connection_id: str | None = None
    """Connection of the latest delivery."""
    queued_at: float | None = None
    pushed_at: float | None = None
    pushed_wall: float | None = None
    deliveries: int = 0
    acked_at: float | None = None
    acked_wall: float | None = None
    ack_count: int = 0
    code: int | None = None
    message: str | None = None
    data: Any = None
    """The ACK's ``data`` parsed from its JSON string (raw string if not JSON)."""
    raw: dict[str, Any] | None = None
    latency: float | None = None
    """Seconds between the first delivery and the first ACK."""
    timeout: float | None = None
    """DingTalk's deadline for this kind of push (3 s bot message, 2 s card callback)."""
    timed_out: bool = False
    opaque: str | None = None
    """For SYSTEM ping: the opaque value the client must echo."""
    echoed: bool | None = None
    status: str | None = None
    """For EVENT: ``data.status`` of the ACK (``SUCCESS`` or ``LATER``)."""
    later_count: int = 0
    """For EVENT: how many ACKs asked for a later redelivery (or failed)."""

    @property
    def acked(self) -> bool:
        return self.acked_at is not None

    @property
    def response(self) -> Any:
        """``data.response`` of the ACK (what a card callback handler returned)."""
        if isinstance(self.data, dict):
            return self.data.get("response")
        return None


@dataclass(kw_only=True)
class PushedMessage:
    """A bot message pushed on ``/v1.0/im/bot/messages/get``."""

    msg_id: str
    message_id: str
    client_id: str
    conversation_id: str
    conversation_type: ConversationType
    sender_staff_id: str
    text: str
    data: dict[str, Any]
    session_webhook: str
    frame: dict[str, Any] | None = None
    """The latest frame sent (``None`` while queued)."""
    queued: bool = False
    """True if no live connection could take it when it was pushed."""
    lost: bool = False
    """Routed to a muted or black-holed connection: it never reached the client."""
    ack: AckRecord = field(metadata=_HIDDEN)
    at: float = field(default_factory=_now)
    wall: float = field(default_factory=_wall)


@dataclass(kw_only=True)
class PushedCallback:
    """A card callback pushed on ``/v1.0/card/instances/callback``."""

    message_id: str
    client_id: str
    card_id: str
    action_id: str
    params: dict[str, Any]
    user_id: str
    data: dict[str, Any]
    frame: dict[str, Any] | None = None
    queued: bool = False
    notes: list[str] = field(default_factory=list)
    ack: AckRecord = field(metadata=_HIDDEN)
    at: float = field(default_factory=_now)
    wall: float = field(default_factory=_wall)


@dataclass(kw_only=True)
class PushedEvent:
    """An EVENT push (subscription ``{"type": "EVENT", "topic": "*"}``)."""

    message_id: str
    client_id: str
    event_type: str
    event_id: str
    data: dict[str, Any]
    frame: dict[str, Any] | None = None
    queued: bool = False
    ack: AckRecord = field(metadata=_HIDDEN)
    at: float = field(default_factory=_now)
    wall: float = field(default_factory=_wall)


@dataclass(kw_only=True)
class CardUpdate:
    """One change to a card: the route that made it and a snapshot afterwards."""

    route: str
    content: dict[str, Any]
    at: float = field(default_factory=_now)
    wall: float = field(default_factory=_wall)


@dataclass(kw_only=True)
class CardRecord:
    """A StandardCard (by ``cardBizId``) or a card instance (by ``outTrackId``)."""

    card_id: str
    kind: CardKind
    client_id: str
    template_id: str
    conversation_id: str | None = None
    conversation_type: ConversationType | None = None
    spaces: list[str] = field(default_factory=list)
    """Open space ids it was delivered to, e.g. ``dtv1.card//IM_GROUP.cid...``."""
    receiver_user_ids: list[str] = field(default_factory=list)
    at_user_ids: list[str] = field(default_factory=list)
    at_all: bool = False
    robot_code: str | None = None
    callback_type: str | None = None
    content: dict[str, Any] = field(default_factory=dict)
    """StandardCard: the parsed ``cardData``. Instance: ``cardParamMap`` (strings),
    streaming keys included."""
    private_data: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-user ``cardParamMap`` (``privateData`` / callback ``userPrivateData``)."""
    flow_status: str | None = None
    """``cardParamMap["flowStatus"]`` (SDK: 1 processing, 2 inputing, 3 finished, 5 failed)."""
    streaming_state: Literal["none", "inputing", "finished", "failed"] = "none"
    finalized: bool = False
    error: bool = False
    delivered: bool = False
    stream_key: str | None = None
    """The ``key`` of the latest ``PUT /v1.0/card/streaming``."""
    view: dict[str, Any] = field(default_factory=dict)
    """What a client would show: title, markdown, status, buttons (see :mod:`.render`)."""
    updates: list[CardUpdate] = field(default_factory=list)
    stream_guids: set[str] = field(default_factory=set, metadata=_HIDDEN)
    at: float = field(default_factory=_now)
    wall: float = field(default_factory=_wall)
    updated_at: float = field(default_factory=_now)


@dataclass(kw_only=True)
class WebhookMessage:
    """A post to a message's sessionWebhook (accepted or refused)."""

    session: str
    client_id: str | None
    msg_id: str | None
    """The pushed message whose webhook was used."""
    conversation_id: str | None
    conversation_type: ConversationType | None
    msgtype: str | None
    text: str | None
    """``text.content``, ``markdown.text`` or ``actionCard.text``."""
    title: str | None
    at_user_ids: list[str]
    body: Any
    errcode: int
    errmsg: str
    at: float = field(default_factory=_now)
    wall: float = field(default_factory=_wall)

    @property
    def ok(self) -> bool:
        return self.errcode == 0


@dataclass(kw_only=True)
class SentMessage:
    """A robot message sent through ``oToMessages/batchSend`` or ``groupMessages/send``."""

    client_id: str
    route: str
    robot_code: str
    msg_key: str
    msg_param: Any
    user_ids: list[str]
    conversation_id: str | None
    process_query_key: str
    media: MediaRecord | None = None
    """For ``sampleImageMsg`` / ``sampleFile`` (and audio/video): the uploaded media sent."""
    at: float = field(default_factory=_now)
    wall: float = field(default_factory=_wall)


@dataclass(kw_only=True)
class StoredFile:
    """Content a user sent the robot (a picture, file, voice or video message): what
    ``POST /v1.0/robot/messageFiles/download`` hands out by ``downloadCode``."""

    download_code: str
    client_id: str
    kind: str
    """``picture``, ``file``, ``audio`` or ``video``."""
    name: str | None
    size: int
    mime_type: str
    data: bytes = field(repr=False, metadata=_HIDDEN)
    downloads: int = 0
    """How many times its content was fetched."""
    at: float = field(default_factory=_now)
    wall: float = field(default_factory=_wall)


@dataclass(kw_only=True)
class MediaRecord:
    """A file the robot uploaded (``POST /media/upload``), by ``media_id``."""

    media_id: str
    client_id: str
    type: str
    """``image``, ``voice``, ``video`` or ``file``."""
    name: str | None
    size: int
    mime_type: str | None
    data: bytes = field(repr=False, metadata=_HIDDEN)
    at: float = field(default_factory=_now)
    wall: float = field(default_factory=_wall)


@dataclass(kw_only=True)
class ConnectionRecord:
    """A stream WebSocket connection (live or closed)."""

    connection_id: str
    client_id: str
    subscriptions: list[dict[str, Any]]
    ua: str | None
    local_ip: str | None
    closed_at: float | None = None
    closed_wall: float | None = None
    close_reason: str | None = None
    """``client``, ``dropped``, ``disconnect`` or ``server stop``."""
    draining: bool = False
    """A ``disconnect`` was sent; nothing more is delivered on it."""
    pings_sent: int = 0
    pings_echoed: int = 0
    deliveries: int = 0
    fault: str | None = None
    """``muted`` or ``blackhole`` once :meth:`DingTalkEmulator.fault_connections` broke it."""
    at: float = field(default_factory=_now)
    wall: float = field(default_factory=_wall)

    @property
    def live(self) -> bool:
        return self.closed_at is None

    def subscribes(self, frame_type: str, topic: str) -> bool:
        for sub in self.subscriptions:
            if sub.get("type") != frame_type:
                continue
            if sub.get("topic") in (topic, "*"):
                return True
        return False


@dataclass(kw_only=True)
class Ticket:
    ticket: str
    client_id: str
    subscriptions: list[dict[str, Any]]
    ua: str | None
    local_ip: str | None
    expires_at: float
    used: bool = False
    at: float = field(default_factory=_now)


@dataclass(kw_only=True)
class AccessToken:
    token: str = field(repr=False)
    client_id: str
    expires_at: float


@dataclass(kw_only=True)
class WebhookSession:
    token: str
    client_id: str
    msg_id: str
    conversation_id: str
    conversation_type: ConversationType
    sender_staff_id: str
    expires_at: float
    """Monotonic deadline (``webhook_lifetime`` after the push)."""


# --- the container ------------------------------------------------------------

Listener = Callable[[dict[str, Any]], None]

_POLL_INTERVAL = 0.05


def _name(predicate: Callable[[], bool]) -> str:
    return str(getattr(predicate, "__qualname__", repr(predicate)))


class EmulatorState:
    """Everything the emulator has seen, plus change notification.

    ``emit`` records an event: it wakes :meth:`wait_for` callers, feeds every
    :meth:`subscribe` queue and calls every :meth:`on_change` listener. All of
    it runs on the emulator's event loop.
    """

    def __init__(self) -> None:
        self.apps: dict[str, EmulatedApp] = {}
        self.calls: list[ApiCall] = []
        self.acks: dict[str, AckRecord] = {}
        self.pushes: list[PushedMessage | PushedCallback | PushedEvent] = []
        self.cards: dict[str, CardRecord] = {}
        self.webhook_messages: list[WebhookMessage] = []
        self.sent_messages: list[SentMessage] = []
        self.files: dict[str, StoredFile] = {}
        self.media: dict[str, MediaRecord] = {}
        self.connections: list[ConnectionRecord] = []
        self.faults: list[dict[str, Any]] = []
        self.tickets: dict[str, Ticket] = {}
        self.tokens: dict[str, AccessToken] = {}
        self.sessions: dict[str, WebhookSession] = {}
        self._seq = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._queues: list[asyncio.Queue[dict[str, Any]]] = []
        self._listeners: list[Listener] = []

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # -- notification --

    def emit(self, kind: str, record: Any, **extra: Any) -> None:
        """Record an event of ``kind`` about ``record`` and notify everyone. With no
        subscriber nor listener, the event is numbered (``seq``) and waiters are woken, but
        its JSON is not built: a card's record grows with each update, and converting it
        on every change was most of the emulator's work under load (``bench/engine.py``)."""
        seq = self.next_seq()
        if not self._queues and not self._listeners:
            self._wake_waiters()
            return
        event: dict[str, Any] = {
            "kind": kind,
            "seq": seq,
            "at": time.monotonic(),
            "wall": time.time(),
        }
        event.update({k: to_json(v) for k, v in extra.items()})
        if record is not None:
            event["record"] = to_json(record)
        for queue in list(self._queues):
            queue.put_nowait(event)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken console listener must not break the emulator
                logger.exception("emulator on_change listener failed")
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._queues.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        if queue in self._queues:
            self._queues.remove(queue)

    def on_change(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,
        *,
        what: str | None = None,
    ) -> None:
        """Return once ``predicate()`` is true.

        It is re-checked after every event and at least every 50 ms (for
        predicates that depend on time, e.g. an expiry). Raises
        :class:`TimeoutError` naming the predicate and summarising the state.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(self._timeout_message(timeout, what or _name(predicate)))
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait({waiter}, timeout=min(remaining, _POLL_INTERVAL))
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _timeout_message(self, timeout: float, name: str) -> str:
        recent = [f"{c.method} {c.path} -> {c.status}" for c in self.calls[-5:]]
        live = sum(1 for c in self.connections if c.live)
        return (
            f"condition {name!r} not met within {timeout:g}s "
            f"(live connections: {live}, acks: {sum(a.acked for a in self.acks.values())}"
            f"/{len(self.acks)}, cards: {len(self.cards)}, "
            f"webhook messages: {len(self.webhook_messages)}, "
            f"last calls: {recent or 'none'})"
        )
