"""The DingTalk platform: Stream mode in, StandardCard or AI card out.

:class:`DingTalkSettings` is the ``[robots.NAME.settings]`` table of a robot on
``platform = "dingtalk"``; :class:`DingTalkPlatform` implements the core's
:class:`~imrobots.platform.Platform` on top of :mod:`.connection` (the Stream loop,
acks first), :mod:`.convert` (payloads -> core events), :mod:`.cards` (core cards
-> DingTalk JSON), :mod:`.messages` (robot message bodies, byte limits),
:mod:`.streaming` (the AI card's stream handle) and :mod:`.api` (the OpenAPI
client). See ``docs/platforms/dingtalk.md``.

Where things go:

- An answer to a message (its :class:`~imrobots.platform.Target` carries the push
  in ``context``): cards to its group (``openConversationId``) or to its sender
  (``senderStaffId``), texts through its ``sessionWebhook`` (while it lives).
- A proactive target (``Target.to_user(..., staff_id)`` /
  ``Target.to_group(..., openConversationId, mentions=...)``) has no context: cards
  go to the user or group, texts through the robot message APIs
  (``oToMessages/batchSend``, ``groupMessages/send``).
- Images and files are uploaded (``oapi`` ``media/upload``) and sent as
  ``sampleImageMsg`` / ``sampleFile`` through the robot message APIs.

Idempotency: the core's key becomes the card's ``cardBizId`` / ``outTrackId``
(:func:`card_id_for`), so a retried create never makes a second card; a create
answered "already exists" is the retry of one that took effect. The sessionWebhook
and the robot message APIs have no idempotency field: those sends are declared not
idempotent, and the core never repeats them after an unknown outcome.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import attrs

from imrobots.platform import (
    Attachment,
    Capabilities,
    Card,
    CardAction,
    CardRef,
    CardStatus,
    CardStream,
    EventSink,
    FatalPlatformError,
    Message,
    NotSupported,
    Op,
    Platform,
    RateLimit,
    RateLimited,
    Refused,
    RetryableError,
    Scope,
    Secret,
    SizeUnit,
    StreamHandle,
    StreamingMode,
    Target,
    Upload,
    client_session,
    dump_json,
    endpoint_problem,
    refuse_redirects,
    settings_problems,
)

from .api import DUPLICATE_CODES, FATAL_CODES, RATE_LIMITED_CODES, RETRYABLE_CODES, DingTalkApi
from .cards import ai_card_params, ai_markdown, standard_card, stream_flags
from .connection import (
    ACK_OK,
    LIVENESS_MARGIN,
    SYSTEM_PING_INTERVAL,
    Ack,
    ConnectionOptions,
    FollowUp,
    Frame,
    StreamConnection,
    Subscription,
)
from .convert import get_converter, parse_json, to_card_action, to_message
from .messages import (
    ROBOT_PARAM_BYTES,
    WEBHOOK_TEXT_BYTES,
    file_param,
    fit_param,
    image_param,
    text_param,
    webhook_body,
)
from .streaming import DingTalkAICardStream

__all__ = [
    "BOT_MESSAGE_TOPIC",
    "BUILTIN_AI_TEMPLATE",
    "CARD_CALLBACK_TOPIC",
    "CARD_TEXT_BYTES",
    "MEDIA_MAX_BYTES",
    "DingTalkPlatform",
    "DingTalkSettings",
    "card_id_for",
    "card_mode_note",
    "download_allowed",
    "webhook_allowed",
]

log = logging.getLogger("imrobots_dingtalk")

BOT_MESSAGE_TOPIC = "/v1.0/im/bot/messages/get"
CARD_CALLBACK_TOPIC = "/v1.0/card/instances/callback"
DINGTALK_DOMAIN = "dingtalk.com"
DOWNLOAD_DOMAINS = ("dingtalk.com", "aliyuncs.com")
"""Domains a ``messageFiles/download`` URL may point to: DingTalk's own, and Alibaba
Cloud OSS where DingTalk keeps files (Tencent/WeKnora#1982 pins the same two)."""
_CARD_ACK = Ack(data='{"response":{}}')

CARD_TEXT_BYTES = 19_000
"""Default bytes of answer text per card before it continues in a new card.
UNCONFIRMED: DingTalk documents ``param.stream.content`` "content is too large" for
``card/streaming`` without a number (and advises at most 3 KB in total, PROTOCOLS
2.5), and no size at all for a StandardCard; 19,000 keeps a card's text under the
20,000 bytes of a sessionWebhook message, with room for the card's notes."""

MEDIA_MAX_BYTES = 20 * 1024 * 1024
"""Largest image or file ``media/upload`` takes. UNCONFIRMED: DingTalk's page for the API
was not available; 20 MB is the limit DingTalk's own connectors enforce
(DingTalk-Real-AI/dingtalk-openclaw-connector)."""

AI_PARAM_BYTES = 1000
"""A ``cardParamMap`` value is at most 1 KB (PROTOCOLS 2.4): longer card text goes
through ``card/streaming``."""

CARD_ID_CHARS = 64
"""``cardBizId`` may be 100 characters, 64 recommended (PROTOCOLS 2.3)."""
_CARD_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_PROGRESS_KEYS = 2048

CardMode = Literal["standard", "ai"]


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:  # nan too, which compares false
        raise ValueError(f"expected {attribute.name} > 0, got {value}")
    if value == math.inf:  # a time-out that never ends, a rate without a limit
        raise ValueError(f"expected {attribute.name} to be finite, got {value}")


def _reconnect_max(
    instance: DingTalkSettings, attribute: attrs.Attribute[Any], value: float
) -> None:
    _positive(instance, attribute, value)
    initial = instance.reconnect_initial
    if 0 < initial < math.inf and value < initial:  # a bad reconnect_initial says so itself
        raise ValueError(
            f"expected {attribute.name} >= reconnect_initial ({initial:g} s), got {value:g}"
        )


def _url(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        return
    problem = endpoint_problem(value)
    if problem is not None:
        raise ValueError(f"{attribute.name} {problem}")


_HOST = re.compile(r"^[A-Za-z0-9.\-]+(?::[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?$")


def _list(instance: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    # The config converter turns "abc" into ("a", "b", "c"); catch that mistake here.
    if len(value) > 1 and all(len(item) == 1 for item in value):
        raise ValueError(f"expected {attribute.name} to be a list of strings, not one string")


def _hosts(instance: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    _list(instance, attribute, value)
    for host in value:
        if not _HOST.match(host):
            raise ValueError(
                f'expected {attribute.name} entries like "host" or "host:port", got {host!r}'
            )


BUILTIN_AI_TEMPLATE = "382e4302-551d-4880-bf29-a30acfab2e71.schema"
"""DingTalk's general AI markdown card template, the one the official SDK's
``AIMarkdownCardInstance`` streams into: every app may use it, no template of one's own
is needed. Its variables are ``msgTitle``, ``msgContent``, ``flowStatus`` and
``sys_full_json_obj`` (``order``, ``msgButtons``)."""

NEW_APPS_SINCE = "2024-12-31"
"""Since this day DingTalk gives no StandardCard permission to new apps (PROTOCOLS 2.3)."""


_noted: set[tuple[str, str]] = set()
"""The (client id, card mode note) pairs this process logged (:func:`card_mode_note`)."""


def _ai_template(instance: DingTalkSettings, attribute: attrs.Attribute[Any], value: str) -> None:
    if instance.card_mode == "ai" and not value.strip():
        raise ValueError(
            "expected ai_template_id to be an AI card template id (xxx.schema, from the "
            "card platform's template list), or left out for DingTalk's built-in template"
        )


def _ai_content_key(
    instance: DingTalkSettings, attribute: attrs.Attribute[Any], value: str
) -> None:
    if instance.card_mode != "ai":
        return
    if not value.strip():
        raise ValueError(
            "expected ai_content_key to name the template's markdown variable, or left out "
            "for msgContent"
        )
    if instance.ai_template_id == BUILTIN_AI_TEMPLATE and value != "msgContent":
        raise ValueError(
            f"DingTalk's built-in AI card template shows the markdown of msgContent, not "
            f"{value!r}: leave ai_content_key out, or set ai_template_id to a template of "
            "your own that binds it"
        )


@attrs.frozen(kw_only=True)
class DingTalkSettings:
    """``[robots.NAME.settings]`` of a DingTalk robot. Only the credentials are required."""

    client_id: str
    """The app's Client ID (AppKey), from the developer console's credentials page."""
    client_secret: Secret = attrs.field(repr=False)
    """The app's Client Secret (AppSecret). Never logged or shown."""
    robot_code: str | None = None
    """The robot's code; internal apps use the Client ID (the default)."""
    card_mode: CardMode = "ai"
    """``ai`` (the default): an AI card instance streamed natively, the card APIs every app
    may use. ``standard``: the seed's StandardCard, posted then edited: a legacy API that
    DingTalk closed to apps created after 2024-12-31."""
    ai_template_id: str = attrs.field(default=BUILTIN_AI_TEMPLATE, metadata={"check": _ai_template})
    """The AI card template (``xxx.schema``). Default: DingTalk's built-in AI card template
    (:data:`BUILTIN_AI_TEMPLATE`); a template of one's own binds the plugin's variables
    (``title``, the ``ai_content_key`` markdown, ``flowStatus``, ``buttons``)."""
    ai_content_key: str = attrs.field(default="msgContent", metadata={"check": _ai_content_key})
    """The template's markdown variable that streaming updates write (``msgContent``, the
    built-in template's, unless ``ai_template_id`` names a template of one's own)."""
    openapi_endpoint: str = attrs.field(
        default="https://api.dingtalk.com", metadata={"check": _url}
    )
    """Base URL of the OpenAPI (tokens, cards, robot messages, file downloads)."""
    oapi_endpoint: str = attrs.field(default="https://oapi.dingtalk.com", metadata={"check": _url})
    """Base URL of the old-style API (``media/upload`` for images and files sent)."""
    gateway_endpoint: str | None = attrs.field(default=None, metadata={"check": _url})
    """Base URL of ``/v1.0/gateway/connections/open``; default: ``openapi_endpoint``."""
    webhook_hosts: tuple[str, ...] = attrs.field(default=(), metadata={"check": _hosts})
    """Extra sessionWebhook hosts (``host`` or ``host:port``) to accept besides
    ``*.dingtalk.com``, e.g. ``"127.0.0.1:8790"`` for the emulator."""
    download_hosts: tuple[str, ...] = attrs.field(default=(), metadata={"check": _hosts})
    """Extra hosts (``host`` or ``host:port``) attachments may be downloaded from besides
    ``*.dingtalk.com`` and ``*.aliyuncs.com`` (https), e.g. the emulator's."""
    at_sender: bool = True
    """In groups, @-mention the sender in answer cards and replies."""
    robot_names: tuple[str, ...] = attrs.field(default=(), metadata={"check": _list})
    """Display names of the robot: its ``@name`` mentions are removed from message text,
    glued (``@HelpBot/server``), followed by punctuation or a full-width space, or
    repeated (:func:`~imrobots_dingtalk.convert.strip_mentions`)."""
    app_rate: float = attrs.field(default=20.0, metadata={"check": _positive})
    """Calls per second the app may make to each API (DingTalk standard edition: 20)."""
    update_interval: float = attrs.field(default=1.0, metadata={"check": _positive})
    """Minimum seconds between two updates of one card."""
    max_updates: int | None = attrs.field(default=None, metadata={"check": _positive})
    """Cap on updates per card (the final one included); ``None``: no cap."""
    max_text: int | None = attrs.field(default=CARD_TEXT_BYTES, metadata={"check": _positive})
    """UTF-8 bytes of answer text per card before the answer continues in a new card."""
    max_message_text: int = attrs.field(default=WEBHOOK_TEXT_BYTES, metadata={"check": _positive})
    """UTF-8 bytes of text per message before it continues in the next one (DingTalk
    refuses a sessionWebhook message over 20,000 with 460101)."""
    max_download_bytes: int = attrs.field(default=100 * 1024 * 1024, metadata={"check": _positive})
    """Largest attachment :meth:`DingTalkPlatform.download` accepts."""
    request_timeout: float = attrs.field(default=10.0, metadata={"check": _positive})
    """Seconds one HTTP call may wait for its answer (connecting has as long again); also
    the bound of each step of a stream (re)connect: ticket, upgrade, first frame or pong."""
    connect_timeout: float = attrs.field(default=30.0, metadata={"check": _positive})
    """Seconds ``start`` waits for the first stream connection."""
    ping_interval: float = attrs.field(default=20.0, metadata={"check": _positive})
    """Seconds between WebSocket pings the client sends (they keep middleboxes from
    dropping an idle socket; their pongs do not prove the connection alive)."""
    idle_timeout: float = attrs.field(
        default=SYSTEM_PING_INTERVAL + LIVENESS_MARGIN, metadata={"check": _positive}
    )
    """Seconds without a frame from DingTalk (a SYSTEM ping or a push) after which the
    connection is replaced (a new one opened, then the old one closed). Default 40: DingTalk
    sends a SYSTEM ping every 20-30 s (PROTOCOLS 1.5), plus a 10 s margin."""
    reconnect_initial: float = attrs.field(default=0.5, metadata={"check": _positive})
    """First reconnect delay; doubles per failed attempt (with jitter). A connection that
    completed its handshake resets it: a drop is followed by a reconnect within this."""
    reconnect_max: float = attrs.field(default=30.0, metadata={"check": _reconnect_max})
    """Longest reconnect delay; at least ``reconnect_initial``."""
    local_ip: str | None = None
    """``localIp`` sent when opening a connection (diagnostic only); default: not sent."""

    def __attrs_post_init__(self) -> None:
        """Check the settings; every problem is reported, each on its field."""
        problems: list[tuple[str, str]] = [
            (name, f"is empty: {what}, from the developer console's credentials page")
            for name, what, value in (
                ("client_id", "the app's Client ID (AppKey)", self.client_id.strip()),
                (
                    "client_secret",
                    "the app's Client Secret (AppSecret)",
                    self.client_secret.get().strip(),
                ),
            )
            if not value
        ]
        for field in attrs.fields(type(self)):
            check = field.metadata.get("check")
            if check is None:
                continue
            try:
                check(self, field, getattr(self, field.name))
            except ValueError as exc:
                problems.append((field.name, str(exc)))
        if problems:
            raise settings_problems(type(self), problems, title="DingTalk")
        level, note = card_mode_note(self)
        # once per app and note per process: `imrobots run` converts the settings twice
        # (checking the file, then building the robots), and a program may make several
        if (self.client_id, note) not in _noted:
            _noted.add((self.client_id, note))
            log.log(level, "dingtalk app %s: %s", self.client_id, note)

    def config_warnings(self) -> list[tuple[str, str]]:
        """Advice ``imrobots check`` prints, as ``(field, message)`` pairs: an
        ``idle_timeout`` below :data:`~imrobots_dingtalk.connection.SYSTEM_PING_INTERVAL`
        (30 s), the longest gap between two of DingTalk's SYSTEM pings ("every 20-30 s",
        PROTOCOLS 1.5, a community observation), replaces a healthy connection that merely
        waits for its next ping, again and again."""
        if self.idle_timeout < SYSTEM_PING_INTERVAL:
            return [
                (
                    "idle_timeout",
                    f"{self.idle_timeout:g} s is below {SYSTEM_PING_INTERVAL:g} s, the interval "
                    "of DingTalk's SYSTEM pings (every 20-30 s, PROTOCOLS 1.5: a community "
                    "observation, DingTalk publishes no figure): a healthy connection would "
                    "be replaced again and again; leave it out for "
                    f"{SYSTEM_PING_INTERVAL + LIVENESS_MARGIN:g} s",
                )
            ]
        return []

    @property
    def builtin_template(self) -> bool:
        """Whether AI cards use DingTalk's built-in template (and its variables)."""
        return self.ai_template_id == BUILTIN_AI_TEMPLATE

    @property
    def gateway(self) -> str:
        return (self.gateway_endpoint or self.openapi_endpoint).rstrip("/")

    @property
    def robot(self) -> str:
        return self.robot_code or self.client_id

    def app_identity(self) -> tuple[str, str]:
        """``("client_id", identity)``: two robots with the same Client ID on one gateway
        are one app, whose pushes DingTalk hands each to one randomly chosen stream
        connection (PROTOCOLS 1.8), so ``imrobots check`` warns of them."""
        return "client_id", f"{self.gateway} {self.client_id}"


def card_mode_note(settings: DingTalkSettings) -> tuple[int, str]:
    """The log level and one line saying which card mode ``settings`` use and why (logged
    when settings are made, so ``imrobots check`` and ``imrobots run`` say it; once per
    app and process, however many times its settings are made)."""
    if settings.card_mode == "standard":
        return logging.WARNING, (
            'card_mode = "standard": StandardCards (the seed\'s cards), whose APIs DingTalk '
            f"closed to apps created after {NEW_APPS_SINCE}; such an app gets its answers "
            'as markdown messages, not cards. Use card_mode = "ai" (the default) unless '
            "the app is older and has the interactive-card permission"
        )
    if settings.builtin_template:
        return logging.INFO, (
            'AI cards on DingTalk\'s built-in AI card template (card_mode = "ai", the '
            f"default: the card APIs apps created after {NEW_APPS_SINCE} can use; needs the "
            "Card.Instance.Write and Card.Streaming.Write permissions). Set ai_template_id "
            "to use a template of your own"
        )
    return logging.INFO, (
        f'AI cards on template {settings.ai_template_id} (card_mode = "ai"), which must '
        f"bind title, {settings.ai_content_key}, flowStatus, buttons"
    )


def _host_allowed(
    url: str, domains: tuple[str, ...], extra_hosts: tuple[str, ...]
) -> tuple[bool, str]:
    """Whether ``url`` is https on one of ``domains`` (or a subdomain), or on one of
    ``extra_hosts`` (``host`` or ``host:port``, any http(s) scheme); and its host."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return False, "?"
    if not host or parts.scheme not in ("http", "https"):
        return False, host or "?"
    allowed = {h.lower() for h in extra_hosts}
    if host in allowed or (port is not None and f"{host}:{port}" in allowed):
        return True, host
    ours = any(host == d or host.endswith("." + d) for d in domains)
    return ours and parts.scheme == "https", host


def webhook_allowed(url: str, extra_hosts: tuple[str, ...]) -> bool:
    """Whether a sessionWebhook URL may be posted to.

    Allowed: ``https`` URLs on ``dingtalk.com`` or a subdomain, and any URL whose
    ``host`` or ``host:port`` is in ``extra_hosts``.
    """
    return _host_allowed(url, (DINGTALK_DOMAIN,), extra_hosts)[0]


def download_allowed(url: str, extra_hosts: tuple[str, ...]) -> bool:
    """Whether an attachment's download URL may be fetched: ``https`` on
    :data:`DOWNLOAD_DOMAINS` (or a subdomain), or a host in ``extra_hosts``."""
    return _host_allowed(url, DOWNLOAD_DOMAINS, extra_hosts)[0]


def card_id_for(key: str) -> str:
    """The ``cardBizId`` / ``outTrackId`` of the card sent under idempotency ``key``: the
    key itself when it is at most 64 characters of ``[A-Za-z0-9_.-]``, else its SHA-256
    in hex (64 characters). The same key always gives the same id, so a retried send
    addresses the card the first attempt may have made."""
    if _CARD_ID.match(key):
        return key
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _api_names(mode: CardMode) -> dict[Op, str]:
    """The DingTalk API each operation is counted under, for the per-API rate limit
    (20 calls a second per app and API, PROTOCOLS 2.7).

    StandardCard operations make one call each: sends count on ``interactiveCards.send``,
    pushes, closes and updates on ``interactiveCards.update``. Each AI-card operation
    calls two of the card APIs (create then stream, or stream then update the card's
    data), and the core takes one limiter turn per operation: so they all count on one
    bucket, ``card.streaming`` (the API every AI-card operation but the opening calls),
    and no card API gets more calls a second than that bucket allows. Texts, images and
    files all end in a robot message (an image or file after a ``media/upload``) and
    count on ``robot.messages``.
    """
    if mode == "ai":
        card = dict.fromkeys(
            (Op.OPEN, Op.SEND_CARD, Op.PUSH, Op.CLOSE, Op.UPDATE_CARD, Op.ANSWER_ACTION),
            "card.streaming",
        )
    else:
        card = {
            Op.OPEN: "interactiveCards.send",
            Op.SEND_CARD: "interactiveCards.send",
            Op.PUSH: "interactiveCards.update",
            Op.CLOSE: "interactiveCards.update",
            Op.UPDATE_CARD: "interactiveCards.update",
            Op.ANSWER_ACTION: "interactiveCards.update",
        }
    messages = dict.fromkeys((Op.SEND_TEXT, Op.SEND_IMAGE, Op.SEND_FILE), "robot.messages")
    return {**card, **messages}


IDEMPOTENT = frozenset(
    {Op.OPEN, Op.SEND_CARD, Op.PUSH, Op.CLOSE, Op.UPDATE_CARD, Op.ANSWER_ACTION, Op.RENEW}
)
"""Operations a retry never repeats: card creates carry the key as their id, updates and
streaming calls overwrite the whole content. Texts, images and files (sessionWebhook,
robot message APIs) have no idempotency field and are left out."""


_BAD_DATA = (ValueError, TypeError, OverflowError, RecursionError)
"""What converting a push's data may raise: :class:`MalformedPayload` (a ValueError) for
the shapes :mod:`.convert` checks, the rest for hostile ones; each is a 400 ack."""


class DingTalkPlatform(Platform):
    """A robot's connection to DingTalk (Stream mode). See the module docstring."""

    name = "dingtalk"

    def __init__(self, settings: DingTalkSettings, *, stream: bool = True) -> None:
        self.settings = settings
        self.stream = stream
        """Whether :meth:`start` opens the Stream connection. ``False`` when another client
        owns it and hands the pushes over (:class:`imrobots_dingtalk.sdk.RobotHandler`,
        through :meth:`convert` and :meth:`deliver`)."""
        s = settings
        self.capabilities = Capabilities(
            streaming=StreamingMode.NATIVE if s.card_mode == "ai" else StreamingMode.EDIT,
            rate_limits=(RateLimit(scope=Scope.API, rate=s.app_rate),),
            app_rate=s.app_rate,
            api_names=_api_names(s.card_mode),
            update_interval=s.update_interval,
            max_updates=s.max_updates,
            max_text=s.max_text,
            max_message_text=s.max_message_text,
            text_unit=SizeUnit.BYTES,
            max_image_bytes=MEDIA_MAX_BYTES,
            max_file_bytes=MEDIA_MAX_BYTES,
            images=True,
            files=True,
            downloads=True,
            mentions=True,
            proactive=True,
            idempotent=IDEMPOTENT,
            rate_limited_codes=RATE_LIMITED_CODES,
            retryable_codes=RETRYABLE_CODES,
            fatal_codes=FATAL_CODES,
        )
        self._session: aiohttp.ClientSession | None = None
        """The OpenAPI and sessionWebhook calls' session (each passes allow_redirects=False)."""
        self._stream_session: aiohttp.ClientSession | None = None
        """The Stream connection's session (the ticket POST and ``ws_connect``)."""
        self._api: DingTalkApi | None = None
        self.connection: StreamConnection | None = None
        self._sink: EventSink | None = None
        self._progress: collections.OrderedDict[str, Any] = collections.OrderedDict()
        """Per idempotency key, how far a multi-step send got (message parts sent, the
        media id uploaded), so that its retry does not repeat those steps."""
        get_converter()  # build the payload converter now, not on the first message

    def __repr__(self) -> str:
        return f"DingTalkPlatform(client_id={self.settings.client_id!r})"

    def describe(self) -> str:
        s = self.settings
        cards = "standard cards"
        if s.card_mode == "ai":
            template = "DingTalk's built-in template" if s.builtin_template else s.ai_template_id
            cards = f"ai cards ({template})"
        return (
            f"dingtalk stream mode, app {s.client_id}, {cards}, "
            f"gateway {s.gateway}, openapi {s.openapi_endpoint}"
        )

    # ------------------------------------------------------------------ lifecycle
    def _http(self) -> tuple[aiohttp.ClientSession, DingTalkApi]:
        if self._session is None or self._session.closed:
            # Every call on this session passes allow_redirects=False. No trace config:
            # one makes aiohttp send about eight trace signals per request, a tenth of a
            # call's client CPU; only ws_connect needs one (the Stream connection's session).
            self._session = client_session(
                limit=100, ttl_dns_cache=300, headers={"User-Agent": "imrobots-dingtalk/0.1"}
            )
            self._api = DingTalkApi(
                self._session,
                endpoint=self.settings.openapi_endpoint,
                oapi_endpoint=self.settings.oapi_endpoint,
                client_id=self.settings.client_id,
                client_secret=self.settings.client_secret,
                timeout=self.settings.request_timeout,
            )
        assert self._api is not None
        return self._session, self._api

    @property
    def api(self) -> DingTalkApi:
        """The OpenAPI client (made on first use)."""
        return self._http()[1]

    async def start(self, sink: EventSink) -> None:
        """Fetch a token (checks the credentials), then open the stream connection (unless
        :attr:`stream` is off: then pushes come in through :meth:`deliver`)."""
        self._sink = sink
        _, api = self._http()
        s = self.settings
        try:
            try:
                await api.access_token()
            except RetryableError as exc:  # a network blip: the connection loop retries
                log.warning("could not fetch a DingTalk access token yet: %s", exc)
            if not self.stream:
                return
            if self._stream_session is None or self._stream_session.closed:
                self._stream_session = client_session(
                    limit=10,
                    ttl_dns_cache=300,
                    headers={"User-Agent": "imrobots-dingtalk/0.1"},
                    trace_configs=[refuse_redirects()],  # ws_connect cannot be told not to follow
                )
            self.connection = StreamConnection(
                self._stream_session,
                gateway=s.gateway,
                client_id=s.client_id,
                client_secret=s.client_secret,
                subscriptions=(
                    Subscription(type="CALLBACK", topic=BOT_MESSAGE_TOPIC),
                    Subscription(type="CALLBACK", topic=CARD_CALLBACK_TOPIC),
                ),
                handler=self._on_frame,
                options=ConnectionOptions(
                    connect_timeout=s.connect_timeout,
                    request_timeout=s.request_timeout,
                    ping_interval=s.ping_interval,
                    idle_timeout=s.idle_timeout,
                    reconnect_initial=s.reconnect_initial,
                    reconnect_max=s.reconnect_max,
                    local_ip=s.local_ip,
                ),
                status=self.connection_status,
            )
            await self.connection.start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the stream connection and the HTTP session. Idempotent."""
        connection, self.connection = self.connection, None
        if connection is not None:
            await connection.close()
        for session in (self._stream_session, self._session):
            if session is not None and not session.closed:
                await session.close()
        self._stream_session = self._session = None
        self._sink = None

    # ------------------------------------------------------------------ inbound
    def _on_frame(self, frame: Frame) -> tuple[Ack, FollowUp | None]:
        """Convert a CALLBACK frame; the connection sends the ack, then runs the follow-up."""
        ack, event = self.convert(frame)
        sink = self._sink
        if event is None or sink is None:
            return ack, None
        return ack, lambda: sink(event)

    def convert(self, frame: Frame) -> tuple[Ack, Message | CardAction | None]:
        """The ack a CALLBACK frame gets, and the event it becomes (``None``: nothing to
        deliver). Pure and quick (about 15 µs): any thread may call it."""
        if frame.topic == BOT_MESSAGE_TOPIC:
            try:
                message = to_message(parse_json(frame.data), robot_names=self.settings.robot_names)
            except _BAD_DATA as exc:  # MalformedPayload, and what a hostile shape may raise
                log.warning("dropped malformed bot message %s: %s", frame.message_id, exc)
                return Ack(code=400, message=f"bad data: {exc}"[:200]), None
            if message.raw.get("errCode"):
                log.warning(
                    "DingTalk sent message %s without its content (errCode %s: %s); "
                    "the organisation's monthly Stream quota may be used up",
                    message.id,
                    message.raw.get("errCode"),
                    message.raw.get("errMsg", ""),
                )
            return ACK_OK, message
        if frame.topic == CARD_CALLBACK_TOPIC:
            try:
                action: CardAction = to_card_action(
                    parse_json(frame.data), callback_id=frame.message_id, time_ms=frame.time_ms
                )
            except _BAD_DATA as exc:
                log.warning("dropped malformed card callback %s: %s", frame.message_id, exc)
                return Ack(code=400, message=f"bad data: {exc}"[:200]), None
            return _CARD_ACK, action
        log.warning("ignored a push on unknown topic %r (%s)", frame.topic, frame.message_id)
        return Ack(code=404, message="topic not supported"), None

    async def deliver(self, event: Message | CardAction) -> None:
        """Hand an event made by :meth:`convert` to the core (once :meth:`start` ran)."""
        if self._sink is None:
            raise RuntimeError("the platform is not started: no sink to deliver to")
        await self._sink(event)

    # ------------------------------------------------------------------ targets
    @staticmethod
    def _context(target: Target) -> Mapping[str, Any]:
        """The push a target answers (a bot message or a card callback), or ``{}``."""
        return target.context if isinstance(target.context, Mapping) else {}

    def _user_id(self, target: Target) -> str | None:
        """The staff id (userId) of the target's user: the sender of the message
        answered, the presser of a button, or the receiver of a proactive send.
        ``None`` when DingTalk sent only the encrypted id (unpublished robot)."""
        context = self._context(target)
        if "msgId" in context or "senderStaffId" in context:
            staff = context.get("senderStaffId")
            return str(staff) if staff else None
        if "outTrackId" in context:
            user = context.get("userId")
            return str(user) if user else None
        return target.user.id if target.user is not None and target.user.id else None

    def _mentions(self, target: Target) -> list[tuple[str, str]]:
        """``(staff id, display name)`` to @-mention in a group: the target's mentions,
        and the sender being answered (``at_sender``)."""
        if not target.is_group:
            return []
        found: list[tuple[str, str]] = []
        if self.settings.at_sender and self._context(target):
            staff = self._user_id(target)
            if staff:
                name = target.user.name if target.user is not None else None
                found.append((staff, name or staff))
        for user_id in target.mentions:
            if user_id and all(user_id != known for known, _ in found):
                found.append((user_id, user_id))
        return found

    def _group_id(self, target: Target) -> str | None:
        """The ``openConversationId`` of a group target (a Stream push's
        ``conversationId`` is one)."""
        if target.conversation is not None and target.conversation.is_group:
            return target.conversation.id
        return None

    def _receiver(self, target: Target, what: str) -> str:
        """The staff id a direct card, image or file goes to; :class:`Refused` without one
        (DingTalk sends ``senderStaffId`` only once the robot is published)."""
        staff = self._user_id(target)
        if not staff:
            raise Refused(
                f"cannot send {what} to this direct chat: DingTalk sent no senderStaffId "
                "(is the robot published?); answering through the message's sessionWebhook",
                code="no.staffId",
                app_wide=False,
            )
        return staff

    def _remember(self, key: str, value: Any) -> None:
        self._progress[key] = value
        self._progress.move_to_end(key)
        while len(self._progress) > _PROGRESS_KEYS:
            self._progress.popitem(last=False)

    # ------------------------------------------------------------------ cards
    def _mode(self, ref: CardRef) -> str:
        mode = ref.data.get("mode") if isinstance(ref.data, Mapping) else None
        return mode if isinstance(mode, str) else self.settings.card_mode

    def _ref(self, target: Target, card_id: str) -> CardRef:
        conversation: str | None
        if target.conversation is not None:
            conversation = target.conversation.id
        else:
            conversation = target.user.id if target.user is not None else None
        return CardRef(
            id=card_id,
            platform=self.name,
            conversation_id=conversation,
            data={"mode": self.settings.card_mode},
        )

    async def send_card(self, target: Target, card: Card, *, key: str) -> CardRef:
        """Send ``card`` to ``target``'s group or user, as a StandardCard or an AI card.

        The card's id is :func:`card_id_for` ``key``. An AI card that is already final
        (or an error card) is finalized through ``card/streaming`` at once."""
        card_id = card_id_for(key)
        ref = self._ref(target, card_id)
        if self.settings.card_mode == "ai":
            await self._create_ai(target, card, card_id, content=False)
            finalize, error = stream_flags(card.status)
            await self.stream_content(ref, ai_markdown(card), finalize=finalize, error=error)
        else:
            await self._create(
                "/v1.0/im/v1.0/robot/interactiveCards/send",
                self._standard_send(target, card, card_id),
            )
        return ref

    async def _create(self, path: str, body: dict[str, Any]) -> None:
        """A create call; "already exists" is the retry of one that took effect."""
        try:
            await self.api.call("POST", path, body, card=True)
        except FatalPlatformError as exc:
            if exc.code in DUPLICATE_CODES:
                log.info("card %s exists already (a retried create); kept", _card_of(body))
                return
            raise

    def _standard_send(self, target: Target, card: Card, card_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "cardTemplateId": "StandardCard",
            "cardBizId": card_id,
            "robotCode": self.settings.robot,
            "cardData": dump_json(standard_card(card)).decode(),
        }
        options: dict[str, Any] = {"atAll": False}
        group = self._group_id(target)
        if group is not None:
            body["openConversationId"] = group
            at = [{"nickName": name, "userId": staff} for staff, name in self._mentions(target)]
            if at:
                options["atUserListJson"] = json.dumps(at, ensure_ascii=False)
        else:
            receiver = self._receiver(target, "a card")
            body["singleChatReceiver"] = json.dumps({"userId": receiver})
        body["sendOptions"] = options
        return body

    async def _create_ai(self, target: Target, card: Card, card_id: str, *, content: bool) -> None:
        s = self.settings
        params = ai_card_params(
            card, content_key=s.ai_content_key, content=content, builtin=s.builtin_template
        )
        params.setdefault(s.ai_content_key, "")
        body: dict[str, Any] = {
            "cardTemplateId": s.ai_template_id,
            "outTrackId": card_id,
            "cardData": {"cardParamMap": params},
            "callbackType": "STREAM",
            "imGroupOpenSpaceModel": {"supportForward": True},
            "imRobotOpenSpaceModel": {"supportForward": True},
            "userIdType": 1,
        }
        group = self._group_id(target)
        if group is not None:
            body["openSpaceId"] = f"dtv1.card//IM_GROUP.{group}"
            deliver: dict[str, Any] = {"robotCode": s.robot}
            mentions = self._mentions(target)
            if mentions:
                deliver["atUserIds"] = dict(mentions)
            body["imGroupOpenDeliverModel"] = deliver
        else:
            receiver = self._receiver(target, "a card")
            body["openSpaceId"] = f"dtv1.card//IM_ROBOT.{receiver}"
            body["imRobotOpenDeliverModel"] = {"spaceType": "IM_ROBOT", "robotCode": s.robot}
        await self._create("/v1.0/card/instances/createAndDeliver", body)

    async def open_stream(self, target: Target, card: Card, *, key: str) -> StreamHandle:
        """Start an answer showing ``card`` (the thinking card). StandardCard: the core's
        :class:`~imrobots.platform.CardStream` (each push edits the card). AI card: a
        :class:`~imrobots_dingtalk.streaming.DingTalkAICardStream`."""
        if self.settings.card_mode != "ai":
            ref = await self.send_card(target, card, key=key)
            return CardStream(self, target, ref, title=card.title)
        card_id = card_id_for(key)
        text = ai_markdown(card)
        small = len(text.encode("utf-8")) <= AI_PARAM_BYTES
        await self._create_ai(target, card, card_id, content=small)
        handle = DingTalkAICardStream(self, target, self._ref(target, card_id), title=card.title)
        if card.status is CardStatus.STREAMING or not small:
            await handle.push(text)  # a continuation card opens with text already
        return handle

    async def restore_stream(self, target: Target, state: Mapping[str, Any]) -> StreamHandle:
        """Rebuild the handle of a stream a crash left open (from its ``state()``)."""
        ref_state = state.get("ref")
        if not isinstance(ref_state, Mapping) or not isinstance(ref_state.get("id"), str):
            raise FatalPlatformError("no card to restore", code="restore")
        data = state.get("data")
        mode = state.get("mode") or (data.get("mode") if isinstance(data, Mapping) else None)
        mode = mode if mode in ("standard", "ai") else self.settings.card_mode
        conversation = ref_state.get("conversation_id")
        ref = CardRef(
            id=ref_state["id"],
            platform=self.name,
            conversation_id=conversation if isinstance(conversation, str) else None,
            data={"mode": mode},
        )
        title = state.get("title")
        title = title if isinstance(title, str) else None
        if mode == "ai":
            # whether it already showed "inputing" is unknown; closing does not need it
            return DingTalkAICardStream(self, target, ref, title=title, inputing=True)
        return CardStream(self, target, ref, title=title)

    async def update_card(self, ref: CardRef, card: Card) -> None:
        """Replace the card's content. StandardCard: ``PUT /v1.0/im/robots/interactiveCards``.
        AI card: the markdown through ``card/streaming`` (finalizing a final card, failing
        an error or interrupted one), then title, ``flowStatus`` and buttons through
        ``card/instances``."""
        if self._mode(ref) != "ai":
            standard = {
                "cardBizId": ref.id,
                "cardData": dump_json(standard_card(card)).decode(),
            }
            await self.api.call(
                "PUT", "/v1.0/im/robots/interactiveCards", standard, card_update=True, card=True
            )
            return
        await self.finish_ai_card(ref, card)

    async def finish_ai_card(self, ref: CardRef, card: Card) -> None:
        """Show ``card`` in an AI card: its markdown through ``card/streaming``
        (``isFinalize`` for a final card, ``isError`` for an error or interrupted one:
        DingTalk shows an answer that did not finish as failed, with the text it had),
        then its title, ``flowStatus``, stop reason and buttons through
        ``card/instances``. The streaming call comes first, at the moment the limiter
        granted the operation (the API it counts on)."""
        finalize, error = stream_flags(card.status)
        await self.stream_content(ref, ai_markdown(card), finalize=finalize, error=error)
        params = ai_card_params(
            card,
            content_key=self.settings.ai_content_key,
            content=False,
            builtin=self.settings.builtin_template,
        )
        await self.set_card_data(ref, params)

    async def set_card_data(self, ref: CardRef, params: Mapping[str, str]) -> None:
        """``PUT /v1.0/card/instances`` with ``params`` merged into the card's data."""
        body = {
            "outTrackId": ref.id,
            "cardData": {"cardParamMap": dict(params)},
            "cardUpdateOptions": {"updateCardDataByKey": True},
        }
        await self.api.call("PUT", "/v1.0/card/instances", body, card_update=True, card=True)

    async def stream_content(self, ref: CardRef, text: str, *, finalize: bool, error: bool) -> None:
        """``PUT /v1.0/card/streaming``: show ``text`` (the whole content, ``isFull``)."""
        body = {
            "outTrackId": ref.id,
            "guid": uuid.uuid4().hex,
            "key": self.settings.ai_content_key,
            "content": text or " ",
            "isFull": True,
            "isFinalize": finalize,
            "isError": error,
        }
        await self.api.call("PUT", "/v1.0/card/streaming", body, card_update=True, card=True)

    async def stream_update(self, ref: CardRef, text: str) -> None:
        """Show ``text`` in an AI card (for the core's generic
        :class:`~imrobots.platform.CardStream`)."""
        if self._mode(ref) != "ai":
            raise NotSupported("native streaming needs card_mode = 'ai'")
        await self.stream_content(ref, text, finalize=False, error=False)

    # ------------------------------------------------------------------ messages
    def _webhook(self, target: Target) -> str | None:
        """The sessionWebhook of the message answered, while it lives."""
        context = self._context(target)
        url = context.get("sessionWebhook")
        if not isinstance(url, str) or not url:
            return None
        expires = context.get("sessionWebhookExpiredTime")
        if isinstance(expires, int | float) and expires / 1000 < time.time() + 5:
            return None
        return url

    async def send_text(
        self, target: Target, text: str, *, markdown: bool = False, key: str
    ) -> None:
        """Send a text or markdown message: through the sessionWebhook of the message
        answered while it lives (at most 20,000 bytes), else through the robot message
        API (``groupMessages/send`` / ``oToMessages/batchSend``; ``msgParam`` at most
        15,000 bytes, so a longer text goes as several messages, in order).

        Not idempotent: DingTalk has no idempotency field for these, so the core never
        repeats a send whose outcome is unknown."""
        url = self._webhook(target)
        if url is not None:
            if not webhook_allowed(url, self.settings.webhook_hosts):
                host = urlsplit(url).netloc or "?"
                raise FatalPlatformError(
                    f"refused to post to sessionWebhook host {host!r}: not an https "
                    "*.dingtalk.com URL and not in settings webhook_hosts",
                    code="webhook.host",
                )
            at = [staff for staff, _ in self._mentions(target)]
            answer = await self.api.post_webhook(
                url, webhook_body(text, markdown=markdown, at_user_ids=at)
            )
            errcode = answer.get("errcode", 0) if isinstance(answer, dict) else 0
            if errcode in (0, None):
                return
            errmsg = answer.get("errmsg", "") if isinstance(answer, dict) else ""
            if errcode != 300001:  # 300001: session gone; fall back to the OpenAPI
                host = urlsplit(url).netloc or "?"
                problem = f"DingTalk sessionWebhook ({host}) refused the reply: {errcode} {errmsg}"
                if errcode == 130101:
                    raise RateLimited(problem, code=str(errcode), retry_after=60.0)
                raise FatalPlatformError(problem, code=str(errcode))
            log.info("sessionWebhook of %s expired; sending through the OpenAPI", target.reply_to)
        msg_key = text_param("", markdown=markdown)[0]
        parts = fit_param(
            text, lambda part: text_param(part, markdown=markdown)[1], ROBOT_PARAM_BYTES
        )
        sent = int(self._progress.get(key, 0))
        for index, part in enumerate(parts):
            if index < sent:
                continue  # sent by an earlier attempt of this send
            await self._robot_send(
                target, msg_key, text_param(part, markdown=markdown)[1], "a message"
            )
            self._remember(key, index + 1)

    async def _robot_send(
        self, target: Target, msg_key: str, param: Mapping[str, Any], what: str
    ) -> None:
        """One message through ``groupMessages/send`` (groups) or ``oToMessages/batchSend``
        (the user). These APIs cannot @-mention: mentions go with cards and replies."""
        body: dict[str, Any] = {
            "robotCode": self.settings.robot,
            "msgKey": msg_key,
            "msgParam": json.dumps(param, ensure_ascii=False),
        }
        group = self._group_id(target)
        if group is not None:
            body["openConversationId"] = group
            await self.api.call("POST", "/v1.0/robot/groupMessages/send", body)
        else:
            body["userIds"] = [self._receiver(target, what)]
            await self.api.call("POST", "/v1.0/robot/oToMessages/batchSend", body)

    async def _send_media(
        self, target: Target, upload: Upload, *, media_type: str, key: str
    ) -> None:
        kind = "an image" if media_type == "image" else "a file"
        if upload.size > MEDIA_MAX_BYTES:
            raise FatalPlatformError(
                f"{kind} of {upload.size} bytes is larger than the {MEDIA_MAX_BYTES} "
                "bytes DingTalk takes",
                code="media.too_large",
            )
        if target.conversation is None or not target.conversation.is_group:
            self._receiver(target, kind)  # refuse before uploading anything
        media_id = self._progress.get(key)
        if not isinstance(media_id, str):
            media_id = await self.api.upload_media(
                media_type, upload.name, upload.data, upload.mime_type
            )
            self._remember(key, media_id)  # a retry sends it without uploading it again
        if media_type == "image":
            msg_key, param = image_param(media_id)
        else:
            msg_key, param = file_param(media_id, upload.name)
        await self._robot_send(target, msg_key, param, kind)

    async def send_image(self, target: Target, image: Upload, *, key: str) -> None:
        """Upload ``image`` (``media/upload``, type image) and send it as a
        ``sampleImageMsg`` to the target's group or user."""
        await self._send_media(target, image, media_type="image", key=key)

    async def send_file(self, target: Target, file: Upload, *, key: str) -> None:
        """Upload ``file`` (``media/upload``, type file) and send it as a ``sampleFile``
        (name and extension kept) to the target's group or user."""
        await self._send_media(target, file, media_type="file", key=key)

    async def download(self, attachment: Attachment) -> bytes:
        """Fetch what a user sent: ``POST /v1.0/robot/messageFiles/download`` with its
        ``downloadCode`` gives a temporary URL, fetched only from DingTalk's hosts (or
        ``download_hosts``), with no redirects followed."""
        code = attachment.download_code
        if not code:
            raise FatalPlatformError(
                f"this {attachment.kind} has no downloadCode to fetch it with",
                code="download.code",
            )
        body = {"downloadCode": code, "robotCode": self.settings.robot}
        answer = await self.api.call("POST", "/v1.0/robot/messageFiles/download", body)
        url = answer.get("downloadUrl") if isinstance(answer, dict) else None
        if not isinstance(url, str) or not url:
            raise FatalPlatformError(
                "DingTalk messageFiles/download answered no downloadUrl", code="download.url"
            )
        allowed, host = _host_allowed(url, DOWNLOAD_DOMAINS, self.settings.download_hosts)
        if not allowed:
            raise FatalPlatformError(
                f"refused to download from host {host!r}: not https on "
                f"{' or '.join('*.' + d for d in DOWNLOAD_DOMAINS)} and not in settings "
                "download_hosts",
                code="download.host",
            )
        return await self.api.fetch(url, max_bytes=self.settings.max_download_bytes)


def _card_of(body: Mapping[str, Any]) -> str:
    return str(body.get("outTrackId") or body.get("cardBizId") or "?")
