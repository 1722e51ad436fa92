"""The WeCom platform: the intelligent robot's long connection, or a self-built app.

:class:`WeComSettings` is the ``[robots.NAME.settings]`` table of a robot on
``platform = "wecom"``; ``mode`` picks one of two ways in (PROTOCOLS 4d):

- ``robot`` (default, the best fit for agents): the intelligent robot over the long
  connection (:mod:`.connection`, PROTOCOLS 4c). Answers stream natively as stream
  replies on the callback's ``req_id`` (:mod:`.streaming`), one frame in flight per
  ``req_id``, paced by WeCom's acks, each carrying the whole text (≤ 20,480 bytes).
  WeCom refuses stream updates 6 minutes after the message (846608): the platform
  declares ``LifetimeRemedy.KEEP_ALIVE`` (a push at least every ``keep_alive``
  seconds) with ``stream_lifetime``, so the engine closes the stream before its end
  and continues in a new message, sent with ``aibot_send_msg``. A reply on a
  ``req_id`` of an earlier connection (846605 after a reconnect) also goes out with
  ``aibot_send_msg``. Final cards carry the four feedback buttons in a
  ``button_interaction`` template card (``stream_with_template_card``); a press
  (``template_card_event``) is answered within 5 s with ``aibot_respond_update_msg``.
  ``enter_chat`` (a user opens the robot's chat) becomes a
  :class:`~imrobots.platform.ChatEntered`; what the robot greets with
  (``Robot.on_enter_chat``: ``reply.text`` or ``reply.card``) goes out as WeCom's
  welcome reply, ``aibot_respond_welcome_msg`` on the event's ``req_id`` (text or
  template card, once, within 5 s), else proactively with ``aibot_send_msg``.
- ``app``: a self-built app's callbacks (PROTOCOLS 4a): an aiohttp endpoint checks
  and decrypts them with wechatpy's ``WeChatCrypto`` (:mod:`.crypto`), answers an empty
  200 at once and works after; text goes through ``message/send`` markdown (2,048
  bytes) with a cached ``gettoken`` token (:mod:`.api`). No API edits an app message
  as it is written, so this mode declares ``StreamingMode.BUFFERED`` with cards: the
  core sends the whole answer once, as a ``template_card`` (``button_interaction``
  with the feedback buttons, ``task_id`` per card; text over ``card_text_bytes`` goes
  first as markdown). A press arrives as a ``template_card_event`` callback
  (``EventKey``, ``TaskId``, ``ResponseCode``, path/90240) and becomes a
  :class:`~imrobots.platform.CardAction`; the card is replaced with
  ``message/update_template_card`` and that ``ResponseCode`` (once, 72 hours,
  path/94888): a feedback press is thanked that way at once. Inbound images, voice,
  video and files are downloaded with ``media/get`` from ``api_endpoint`` only. The
  per-member limits (30/min, 1,000/h) are declared as ``Scope.MEMBER`` rate limits.

Proactive sends: robot mode ``aibot_send_msg`` to a user id or group chat id; app mode
``message/send`` to a user (``Target.to_user``), ``party:ID`` or ``tag:ID``
(``Target.to_group``), or ``appchat/send`` to an app group chat id.

Media: images (≤ 10 MB) and files (≤ 20 MB) go out in both modes (:mod:`.messages`).
Robot mode uploads them in chunks over the long connection and sends the ``media_id``
as a reply on the message's ``req_id`` while it can still answer, else with
``aibot_send_msg``; app mode uploads with ``media/upload`` and sends with
``message/send``. Inbound images and files (robot mode) are downloaded only from
WeCom's https hosts (or ``download_hosts``) and decrypted with their message's
``aeskey`` (:mod:`.crypto`).

See ``docs/platforms/wecom.md``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import logging
import re
import socket
import time
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import attrs
from aiohttp import web

from imrobots.platform import (
    Attachment,
    Capabilities,
    Card,
    CardAction,
    CardGone,
    CardRef,
    EventSink,
    FatalPlatformError,
    FeedbackRating,
    LifetimeRemedy,
    Message,
    Note,
    NotSupported,
    Op,
    OutcomeUnknown,
    Platform,
    RateLimit,
    RateLimited,
    RetryableError,
    Scope,
    Secret,
    SettingsProblems,
    SizeUnit,
    StreamHandle,
    StreamingMode,
    Target,
    Upload,
    client_session,
    endpoint_problem,
    number_problems,
    refuse_redirects,
    settings_problems,
)

from .cards import APP_TASK_ID, app_template_card, stream_text, template_card
from .connection import AckError, AibotConnection, ConnectionOptions
from .convert import (
    MalformedPayload,
    parse_xml,
    to_app_card_action,
    to_app_message,
    to_card_action,
    to_chat_entered,
    to_message,
)
from .crypto import CallbackCrypto, ForgedCallback, decrypt_media
from .messages import (
    APP_MARKDOWN_BYTES,
    MAX_FILE_BYTES,
    MAX_IMAGE_BYTES,
    MEDIA_MAX_CHUNKS,
    ROBOT_TEXT_BYTES,
    app_body,
    chunks,
    markdown_body,
)
from .streaming import ProactiveStream, WeComStream

__all__ = ["SettingsProblems", "WeComPlatform", "WeComSettings", "card_id_for"]

log = logging.getLogger("imrobots.wecom")

Mode = Literal["robot", "app"]

ERR_EXPIRED = 846608
ERR_INVALID_REQ_ID = 846605
WELCOME_WINDOW = 5.0
"""Seconds after ``enter_chat`` within which WeCom takes a welcome reply (PROTOCOLS 4c)."""
FEEDBACK_THANKS = "Thanks for your feedback!"
REPLACE_NAME_CHARS = 30
"""Characters kept of an app card's ``button.replace_name`` (UNCONFIRMED: WeCom documents
no length; it replaces a button's label)."""
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_WECOM_DOMAINS = ("qq.com", "qpic.cn")
"""https domains (and their subdomains) attachments may come from."""
_MEDIA_BUCKET = re.compile(r"^ww-aibot-img-1258476243\.cos\.[a-z0-9-]+\.myqcloud\.com$")
"""The Tencent COS bucket WeCom serves robot media from (UNCONFIRMED: observed in
callbacks, not documented). Other ``myqcloud.com`` buckets belong to anyone, so they are
not trusted."""


_FEEDBACK_LABELS = frozenset(rating.label for rating in FeedbackRating)


def _is_feedback(card: Card) -> bool:
    """Whether ``card`` is a final answer with the four feedback buttons."""
    labels = {b.label for b in card.buttons}
    return card.status.value == "final" and labels == _FEEDBACK_LABELS


def app_task_id(key: str) -> str:
    """The app-mode ``task_id`` of the card sent under idempotency ``key``: the key when
    WeCom takes it (``[A-Za-z0-9_@-]``, at most 128), else its SHA-256 (hex, 64)."""
    return key if APP_TASK_ID.match(key) else hashlib.sha256(key.encode()).hexdigest()


def card_id_for(key: str) -> str:
    """The stream id / ``task_id`` of the card sent under idempotency ``key``: the key when
    it is at most 64 characters of ``[A-Za-z0-9_.-]``, else its SHA-256 (hex, 64)."""
    return key if _SAFE_ID.match(key) else hashlib.sha256(key.encode()).hexdigest()


_POSITIVE = (
    "agent_id",
    "callback_max_age",
    "stream_lifetime",
    "keep_alive",
    "update_interval",
    "max_text",
    "max_message_text",
    "app_rate",
    "ping_interval",
    "ack_timeout",
    "connect_timeout",
    "reconnect_initial",
    "reconnect_max",
    "max_download_bytes",
    "request_timeout",
    "member_per_minute",
    "member_per_hour",
    "member_minute",
    "member_hour",
    "card_text_bytes",
)
_MODE_KEYS: dict[str, tuple[str, ...]] = {
    "robot": ("bot_id", "secret", "ws_url", "robot_names", "download_hosts"),
    "app": (
        "corp_id",
        "corp_secret",
        "agent_id",
        "token",
        "encoding_aes_key",
        "api_endpoint",
        "callback_host",
        "callback_port",
        "callback_path",
        "callback_max_age",
        "card_url",
    ),
}
"""The settings only one mode reads (``config_warnings`` names the other mode's)."""


def _blank(value: object) -> bool:
    """Whether a required setting is missing: unset, or a string or secret of white space
    only (a ``{{VAR}}`` exported as a space); an ``int`` (``agent_id``) is checked by its
    range instead."""
    if value is None:
        return True
    if isinstance(value, Secret):
        value = value.get()
    return isinstance(value, str) and not value.strip()


_AES_KEY = re.compile(r"[A-Za-z0-9+/]{43}")
"""An EncodingAESKey: 43 base64 characters (PROTOCOLS 4a: AESKey = base64(key + "=");
WeCom generates letters and digits; wechatpy decodes ``+`` and ``/`` too). Anything else
made wechatpy's ``b64decode`` raise ``binascii.Error`` when ``imrobots run`` started."""

_REQUIRED: dict[str, tuple[str, ...]] = {
    "robot": ("bot_id", "secret"),
    "app": ("corp_id", "corp_secret", "agent_id", "token", "encoding_aes_key"),
}


def _problems(problems: list[tuple[str, str]]) -> SettingsProblems:
    return settings_problems(WeComSettings, problems, title="WeCom")


@attrs.frozen(kw_only=True)
class WeComSettings:
    """``[robots.NAME.settings]`` of a WeCom robot. ``mode`` says which credentials apply."""

    mode: Mode = "robot"
    """``robot``: intelligent robot, long connection. ``app``: self-built app callbacks."""
    # --- robot mode ------------------------------------------------------------
    bot_id: str | None = None
    """The intelligent robot's Bot ID (admin console, robot's API mode: long connection)."""
    secret: Secret | None = attrs.field(default=None, repr=False)
    """The robot's Secret. Never logged or shown."""
    ws_url: str = "wss://openws.work.weixin.qq.com"
    """The long connection's address (the emulator's ``ws://127.0.0.1:PORT`` in tests)."""
    robot_names: tuple[str, ...] = ()
    """The robot's display names: ``@name`` is removed from group messages (by default
    a leading ``@word``)."""
    stream_lifetime: float = 360.0
    """Seconds after a message during which WeCom accepts stream updates (6 minutes)."""
    keep_alive: float = 120.0
    """Most seconds between two updates of an open stream."""
    update_interval: float = 0.5
    """Minimum seconds between two stream updates."""
    max_text: int | None = None
    """UTF-8 bytes one answer card holds: robot mode 20,480 (one stream reply; WeCom
    truncates beyond), app mode 2,048 (the answer's text, as one markdown message at most)."""
    max_message_text: int | None = None
    """UTF-8 bytes of one message; default 20,480 (robot) or 2,048 (app)."""
    app_rate: float = 50.0
    """Frames per second the robot sends in all (UNCONFIRMED: WeCom documents no QPS for
    the long connection; app mode: calls per second per API, 10,000/min documented)."""
    ping_interval: float = 30.0
    ack_timeout: float = 5.0
    connect_timeout: float = 30.0
    reconnect_initial: float = 1.0
    reconnect_max: float = 30.0
    download_hosts: tuple[str, ...] = ()
    """Extra hosts (``host`` or ``host:port``) attachments may be downloaded from."""
    max_download_bytes: int = 100 * 1024 * 1024
    # --- app mode --------------------------------------------------------------
    corp_id: str | None = None
    """The CorpID (My Company > Company Information)."""
    corp_secret: Secret | None = attrs.field(default=None, repr=False)
    """The app's Secret."""
    agent_id: int | None = None
    """The app's AgentId."""
    token: Secret | None = attrs.field(default=None, repr=False)
    """The callback Token (app > Receive Messages > Set API Receiving)."""
    encoding_aes_key: Secret | None = attrs.field(default=None, repr=False)
    """The callback EncodingAESKey (43 characters)."""
    api_endpoint: str = "https://qyapi.weixin.qq.com"
    callback_host: str = "127.0.0.1"
    callback_port: int = 8080
    """Port of the callback endpoint; 0 picks a free one (tests)."""
    callback_path: str = "/wecom/callback"
    callback_max_age: float = 300.0
    """Seconds a callback's (or URL check's) ``timestamp`` may be off from now, in the past
    or the future; a correctly signed one beyond that is rejected as a replay (403, logged).
    WeCom retries an unanswered callback 3 times in all (PROTOCOLS 4a); UNCONFIRMED: that
    the retries keep the original timestamp and come within minutes (PROTOCOLS does not
    say), so the window is kept at Feishu's 300 s rather than tighter."""
    request_timeout: float = 10.0
    member_per_minute: int = 30
    """Messages WeCom lets the app send one member per minute (30)."""
    member_per_hour: int = 1000
    """Messages WeCom lets the app send one member per hour (1,000)."""
    member_minute: float = 60.0
    """Seconds ``member_per_minute`` is counted over (60; the emulator's tests shorten it)."""
    member_hour: float = 3600.0
    """Seconds ``member_per_hour`` is counted over (3,600; tests shorten it)."""
    card_text_bytes: int = 480
    """App mode: UTF-8 bytes of text a template card carries in ``sub_title_text``
    (WeCom recommends at most 160 characters, path/90236: 480 bytes of Chinese). A card
    with more text sends it first as a markdown message, then the card (title and
    buttons)."""
    card_url: str | None = None
    """App mode: the link a card without buttons opens. WeCom's only button-less
    template card (``text_notice``) requires one (path/90236); without it such a card
    (an error, an interrupted answer, a replaced card) goes as markdown, and a pressed
    card is answered by greying its buttons out with a short text."""

    def app_identity(self) -> tuple[str, str] | None:
        """Which robot or app these settings connect as, for ``imrobots check``'s warning
        of two robots sharing one: ``("bot_id", ...)`` in robot mode (a newer long
        connection of a bot closes the older one, PROTOCOLS 4c), ``("agent_id", ...)``
        with the CorpID in app mode (WeCom posts an app's callbacks to the one URL of its
        Receive Messages page; an admin-console fact, not in PROTOCOLS); ``None``
        while the mode's credentials are missing."""
        if self.mode == "robot":
            return ("bot_id", f"{self.ws_url} {self.bot_id}") if self.bot_id else None
        if self.corp_id and self.agent_id is not None:
            return "agent_id", f"{self.api_endpoint} {self.corp_id} {self.agent_id}"
        return None

    def config_warnings(self) -> list[tuple[str, str]]:
        """Settings that do nothing in this ``mode`` (keys of the other mode), as
        ``(field, message)``: ``imrobots check`` prints them as warnings."""
        other = "app" if self.mode == "robot" else "robot"
        found = []
        for name in _MODE_KEYS[other]:
            value = getattr(self, name)
            default = attrs.fields_dict(WeComSettings)[name].default
            if value is not None and value != default and value != ():
                found.append((name, f"belongs to mode {other!r}; ignored in mode {self.mode!r}"))
        return found

    def __attrs_post_init__(self) -> None:
        """Check the settings as a whole; every problem is reported, each on its field."""
        problems = [
            (name, f"required in mode {self.mode!r}")
            for name in _REQUIRED.get(self.mode, ())
            if _blank(getattr(self, name))
        ]
        problems += number_problems(
            self, _POSITIVE, ordered=[("reconnect_initial", "reconnect_max")]
        )
        if self.encoding_aes_key is not None:
            key = self.encoding_aes_key.get()
            if len(key) != 43:
                problems.append(
                    ("encoding_aes_key", "must be 43 characters (WeCom's EncodingAESKey)")
                )
            elif not _AES_KEY.fullmatch(key):
                problems.append(
                    (
                        "encoding_aes_key",
                        "must be letters and digits (WeCom's EncodingAESKey: the base64 of "
                        "a 32-byte key without its '='); it has another character",
                    )
                )
        if self.keep_alive >= self.stream_lifetime:
            problems.append(
                ("keep_alive", f"must be less than stream_lifetime ({self.stream_lifetime:g} s)")
            )
        ws_problem = endpoint_problem(self.ws_url, websocket=True)
        if ws_problem is not None:
            problems.append(("ws_url", ws_problem))
        api_problem = endpoint_problem(self.api_endpoint)
        if api_problem is not None:
            problems.append(("api_endpoint", api_problem))
        if not 0 <= self.callback_port <= 65535:
            problems.append(("callback_port", f"must be 0..65535, got {self.callback_port}"))
        if not self.callback_host.strip():  # the socket would listen on every interface
            problems.append(
                (
                    "callback_host",
                    "is blank (which listens on every interface); give an address: "
                    "127.0.0.1, or 0.0.0.0 for every interface",
                )
            )
        if self.card_url is not None and not self.card_url.startswith(("https://", "http://")):
            problems.append(
                ("card_url", f"must start with https:// or http://, got {self.card_url!r}")
            )
        if not self.callback_path.startswith("/"):
            problems.append(("callback_path", f"must start with /, got {self.callback_path!r}"))
        if problems:
            raise _problems(problems)


def _robot_capabilities(s: WeComSettings) -> Capabilities:
    return Capabilities(
        streaming=StreamingMode.NATIVE,
        rate_limits=(RateLimit(scope=Scope.APP, rate=s.app_rate),),
        app_rate=s.app_rate,
        update_interval=s.update_interval,
        stream_lifetime=s.stream_lifetime,
        lifetime_remedy=LifetimeRemedy.KEEP_ALIVE,
        keep_alive=s.keep_alive,
        max_text=s.max_text or ROBOT_TEXT_BYTES,
        max_message_text=s.max_message_text or ROBOT_TEXT_BYTES,
        text_unit=SizeUnit.BYTES,
        max_image_bytes=MAX_IMAGE_BYTES,
        max_file_bytes=MAX_FILE_BYTES,
        cards=True,
        images=True,
        files=True,
        downloads=True,
        mentions=False,
        proactive=True,
        action_deadline=5.0,
        idempotent=frozenset({Op.OPEN, Op.PUSH, Op.CLOSE, Op.RENEW}),
        rate_limited_codes=frozenset({"45009"}),
        retryable_codes=frozenset({"-1"}),
        fatal_codes=frozenset({str(ERR_EXPIRED), str(ERR_INVALID_REQ_ID)}),
    )


def _app_capabilities(s: WeComSettings) -> Capabilities:
    member_ops = frozenset({Op.SEND_TEXT, Op.SEND_CARD, Op.SEND_IMAGE, Op.SEND_FILE})
    return Capabilities(
        streaming=StreamingMode.BUFFERED,
        rate_limits=(
            # Messages to one member: 30 per minute and 1,000 per hour (PROTOCOLS 4e).
            RateLimit(
                scope=Scope.MEMBER,
                rate=s.member_per_minute / s.member_minute,
                window=s.member_minute,
                ops=member_ops,
            ),
            RateLimit(
                scope=Scope.MEMBER,
                rate=s.member_per_hour / s.member_hour,
                window=s.member_hour,
                ops=member_ops,
            ),
            # Per corp per API: 10,000 per minute (PROTOCOLS 4e).
            RateLimit(scope=Scope.API, rate=min(s.app_rate, 10000 / 60)),
        ),
        # Texts, cards, images and files are all messages of ``message/send`` (app group
        # chats: ``appchat/send``, counted with it), so they share its window; images and
        # files are uploaded first (``media/upload``); card updates and answers to presses
        # call ``message/update_template_card``.
        api_names={
            Op.SEND_TEXT: "message/send",
            Op.SEND_CARD: "message/send",
            Op.SEND_IMAGE: ("message/send", "media/upload"),
            Op.SEND_FILE: ("message/send", "media/upload"),
            Op.UPDATE_CARD: "message/update_template_card",
            Op.ANSWER_ACTION: "message/update_template_card",
        },
        # A card whose text is longer than card_text_bytes goes as a markdown message and
        # then the card: two messages to the member, two calls of message/send.
        op_calls={Op.SEND_CARD: 2},
        app_rate=s.app_rate,
        max_text=s.max_text or APP_MARKDOWN_BYTES,
        max_message_text=s.max_message_text or APP_MARKDOWN_BYTES,
        text_unit=SizeUnit.BYTES,
        max_image_bytes=MAX_IMAGE_BYTES,
        max_file_bytes=MAX_FILE_BYTES,
        cards=True,
        images=True,
        files=True,
        downloads=True,
        mentions=False,
        proactive=True,
        idempotent=frozenset(),
        rate_limited_codes=frozenset({"45009", "45033"}),
        retryable_codes=frozenset({"-1"}),
    )


def _host_allowed(url: str, extra: tuple[str, ...]) -> bool:
    try:
        parts = urlsplit(url)
        host, port = (parts.hostname or "").lower(), parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host:
        return False
    allowed = {h.lower() for h in extra}
    if host in allowed or (port is not None and f"{host}:{port}" in allowed):
        return True
    if parts.scheme != "https":
        return False
    return bool(_MEDIA_BUCKET.match(host)) or any(
        host == d or host.endswith("." + d) for d in _WECOM_DOMAINS
    )


class _Recent:
    """A set of the last ``size`` keys added (req_ids: one per message, so bounded)."""

    def __init__(self, size: int = 10000) -> None:
        self.size = size
        self._keys: collections.OrderedDict[str, None] = collections.OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: str) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self.size:
            self._keys.popitem(last=False)


def _body_field(frame: Mapping[str, Any], name: str, cmd: str) -> str:
    body = frame.get("body")
    value = body.get(name) if isinstance(body, Mapping) else None
    if not isinstance(value, str) or not value:
        raise FatalPlatformError(f"WeCom {cmd}: no {name} in the ack")
    return value


class WeComPlatform(Platform):
    """A robot's connection to WeCom. See the module docstring."""

    name = "wecom"

    def __init__(self, settings: WeComSettings) -> None:
        self.settings = settings
        self.mode: Mode = settings.mode
        for field, message in settings.config_warnings():
            log.warning("WeCom settings: %s %s", field, message)
        self.capabilities = (
            _robot_capabilities(settings) if self.mode == "robot" else _app_capabilities(settings)
        )
        self._session: aiohttp.ClientSession | None = None
        self.connection: AibotConnection | None = None
        self._sink: EventSink | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._received: collections.OrderedDict[str, float] = collections.OrderedDict()
        """req_id -> when its push arrived (monotonic), newest last."""
        self._streamed: collections.OrderedDict[str, str] = collections.OrderedDict()
        """req_id -> the id of the stream opened on it (one per message)."""
        self._templated = _Recent()
        """req_ids a template card answered (one per message)."""
        self._welcomed = _Recent()
        """enter_chat req_ids a welcome went out on (one per event)."""
        self._buttons: collections.OrderedDict[str, dict[str, str]] = collections.OrderedDict()
        """task_id -> {button key: button id}, for the cards this process sent."""
        self._feedback_cards: collections.OrderedDict[str, Card] = collections.OrderedDict()
        """task_id -> a final answer card with feedback buttons, thanked when pressed."""
        self._app_texts: collections.OrderedDict[str, bool] = collections.OrderedDict()
        """App mode: idempotency keys whose card text went out as markdown already."""
        self._response_codes: collections.OrderedDict[str, tuple[str, str]] = (
            collections.OrderedDict()
        )
        """App mode: task_id -> (the response_code message/send answered, the member):
        one update of a card sent to one member."""
        # app mode
        self._api: Any = None
        self._crypto: CallbackCrypto | None = None
        self._runner: web.AppRunner | None = None
        self.callback_url: str | None = None
        self.forged = 0
        self._closing = False

    def __repr__(self) -> str:
        s = self.settings
        who = s.bot_id if self.mode == "robot" else f"{s.corp_id}/{s.agent_id}"
        return f"WeComPlatform(mode={self.mode!r}, id={who!r})"

    def describe(self) -> str:
        s = self.settings
        if self.mode == "robot":
            return f"wecom intelligent robot {s.bot_id}, long connection {s.ws_url}"
        return (
            f"wecom app {s.corp_id}/{s.agent_id}, callbacks at {self.callback_url or '?'}, "
            f"api {s.api_endpoint}"
        )

    # ------------------------------------------------------------------ lifecycle
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Every HTTP call passes allow_redirects=False; the robot's ws_connect cannot be
            # told so: its session refuses them. The app's session has no trace config,
            # which makes aiohttp send about eight trace signals per request.
            self._session = client_session(
                headers={"User-Agent": "imrobots-wecom/0.1"},
                trace_configs=[refuse_redirects()] if self.mode == "robot" else None,
            )
        return self._session

    async def start(self, sink: EventSink) -> None:
        self._sink = sink
        try:
            if self.mode == "robot":
                await self._start_robot()
            else:
                await self._start_app()
        except BaseException:
            await self.close()
            raise

    async def _start_robot(self) -> None:
        s = self.settings
        assert s.bot_id is not None and s.secret is not None
        self.connection = AibotConnection(
            self._http(),
            url=s.ws_url,
            bot_id=s.bot_id,
            secret=s.secret,
            handler=self._on_push,
            status=self.connection_status,
            options=ConnectionOptions(
                connect_timeout=s.connect_timeout,
                ack_timeout=s.ack_timeout,
                ping_interval=s.ping_interval,
                reconnect_initial=s.reconnect_initial,
                reconnect_max=s.reconnect_max,
            ),
        )
        await self.connection.start()

    async def close(self) -> None:
        """Stop taking pushes and callbacks, give the work they started (answers to
        presses, a sink's own calls) up to ``ack_timeout`` seconds to get WeCom's
        answers, then disconnect and cancel what is left. A call still in flight then
        fails with :class:`OutcomeUnknown` saying the connection was closed (not lost)."""
        self._closing = True
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=self.settings.ack_timeout)
        connection, self.connection = self.connection, None
        if connection is not None:
            await connection.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
        self._sink = None
        self._closing = False

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ robot inbound
    def _remember(self, store: collections.OrderedDict[str, Any], key: str, value: Any) -> None:
        store[key] = value
        store.move_to_end(key)
        while len(store) > 10000:
            store.popitem(last=False)

    def _on_push(self, cmd: str, req_id: str, body: dict[str, Any], generation: int) -> None:
        """Convert a push and queue it for the core (never waits for an answer)."""
        if self._closing:
            return  # closing: WeCom redelivers nothing, but the work would be cut short
        self._remember(self._received, req_id, time.monotonic())
        sink = self._sink
        event: Message | CardAction
        try:
            if cmd == "aibot_msg_callback":
                event = to_message(
                    body,
                    req_id=req_id,
                    generation=generation,
                    robot_names=self.settings.robot_names,
                )
            else:
                raw_event = body.get("event")
                detail: dict[str, Any] = raw_event if isinstance(raw_event, dict) else {}
                eventtype = detail.get("eventtype")
                if eventtype == "enter_chat":
                    entered = to_chat_entered(body, req_id=req_id, generation=generation)
                    if sink is not None:
                        self._spawn(sink(entered))
                    return
                if eventtype != "template_card_event":
                    log.debug("WeCom event %s (%s) not handled", eventtype, req_id)
                    return
                task_id = str((detail.get("template_card_event") or {}).get("task_id") or "")
                event = to_card_action(
                    body,
                    req_id=req_id,
                    generation=generation,
                    button_ids=self._buttons.get(task_id, {}),
                )
                feedback = self._feedback_cards.pop(task_id, None)
                if feedback is not None:
                    self._spawn(self._thank(event, feedback))
        except MalformedPayload as exc:
            self.connection_status.rejected()
            log.warning("dropped a malformed WeCom push %s: %s", req_id, exc)
            return
        if sink is not None:
            self._spawn(sink(event))

    async def _thank(self, action: CardAction, card: Card) -> None:
        """Answer a feedback press: robot mode within WeCom's 5 s, the card without its
        buttons; app mode, the answer card kept and its buttons greyed out with the
        thanks (``button.replace_name``)."""
        if self.mode == "app":
            try:
                await self._app_update_card(action, None, replace_name=FEEDBACK_THANKS)
            except Exception as exc:
                log.warning("could not update the feedback card %s: %s", action.card_id, exc)
            return
        thanked = Card(
            title=card.title,
            elements=(Note(text=FEEDBACK_THANKS),),
            status=card.status,
        )
        try:
            await self.answer_action(action, thanked, key=f"thanks-{action.id}")
        except Exception as exc:
            log.warning("could not update the feedback card %s: %s", action.card_id, exc)

    # ------------------------------------------------------------------ robot outbound
    def _conn(self) -> AibotConnection:
        if self.connection is None:
            raise RetryableError("the WeCom platform is not started")
        return self.connection

    def _reply_to(self, context: Mapping[str, Any] | None) -> tuple[str, int] | None:
        """The ``(req_id, generation)`` a reply can still use, or ``None``."""
        if not isinstance(context, Mapping) or context.get("mode") != "robot":
            return None
        if context.get("event") == "enter_chat":
            return None  # answered only with a welcome (see _welcome_to)
        req_id, generation = context.get("req_id"), context.get("generation")
        if not isinstance(req_id, str) or not isinstance(generation, int):
            return None
        connection = self.connection
        if connection is None or connection.generation != generation:
            return None  # WeCom answers 846605 for a req_id of an earlier connection
        received = self._received.get(req_id)
        lifetime = self.capabilities.stream_lifetime or 360.0
        if received is None or time.monotonic() - received >= lifetime:
            return None
        return req_id, generation

    def _welcome_to(self, context: Mapping[str, Any] | None) -> str | None:
        """The ``enter_chat`` req_id a welcome can still go out on (once, within 5 s)."""
        if not isinstance(context, Mapping) or context.get("event") != "enter_chat":
            return None
        req_id, generation = context.get("req_id"), context.get("generation")
        connection = self.connection
        if not isinstance(req_id, str) or connection is None:
            return None
        if connection.generation != generation or req_id in self._welcomed:
            return None
        received = self._received.get(req_id)
        if received is None or time.monotonic() - received >= WELCOME_WINDOW:
            return None
        return req_id

    async def _welcome(self, target: Target, body: dict[str, Any]) -> bool:
        """Send ``body`` as the welcome of the ``enter_chat`` the target answers; False
        when that is no longer possible (then the caller sends proactively)."""
        req_id = self._welcome_to(target.context)
        if req_id is None:
            return False
        self._welcomed.add(req_id)
        try:
            await self._request("aibot_respond_welcome_msg", body, req_id=req_id)
        except CardGone:
            return False  # the 5 s passed meanwhile
        return True

    @staticmethod
    def _chatid(target: Target) -> str:
        if target.conversation is not None:
            return target.conversation.id
        if target.user is not None and target.user.id:
            return target.user.id
        raise FatalPlatformError("a WeCom target needs a conversation or a user")

    @staticmethod
    def _error(exc: AckError) -> Exception:
        message = f"WeCom {exc.cmd}: errcode {exc.errcode} {exc.errmsg}"
        if exc.errcode in (ERR_EXPIRED, ERR_INVALID_REQ_ID):
            return CardGone(message, code=str(exc.errcode))
        if exc.errcode == 45009:
            return RateLimited(message, code="45009", retry_after=1.0)
        if exc.errcode == -1 or exc.errcode == 40001:
            return RetryableError(message, code=str(exc.errcode))
        return FatalPlatformError(message, code=str(exc.errcode))

    async def _request(
        self, cmd: str, body: dict[str, Any], *, req_id: str | None = None
    ) -> dict[str, Any]:
        try:
            return await self._conn().request(cmd, body, req_id=req_id)
        except AckError as exc:
            raise self._error(exc) from None

    def _remember_card(self, task_id: str, card: Card) -> None:
        self._remember(self._buttons, task_id, {b.value: b.id for b in card.buttons})

    async def open_stream(self, target: Target, card: Card, *, key: str) -> StreamHandle:
        stream_id = card_id_for(key)
        ref = CardRef(
            id=stream_id,
            platform=self.name,
            conversation_id=target.conversation.id if target.conversation else None,
        )
        if self.mode == "app":
            raise NotSupported("a WeCom app cannot stream")
        reply = self._reply_to(target.context)
        if reply is None:
            return ProactiveStream(self, target, ref)
        req_id, generation = reply
        opened = self._streamed.get(req_id)
        if opened is not None and opened != stream_id:
            return ProactiveStream(self, target, ref)  # the message has its stream already
        # A new stream, or the same one opened again (a retry after its ack was lost):
        # the first frame again updates the same stream id.
        handle = WeComStream(self, target, ref, req_id=req_id, generation=generation)
        self._remember(self._streamed, req_id, stream_id)
        try:
            await self.stream_frame(handle, stream_text(card) or card.plain_text(), finish=False)
        except CardGone:
            return ProactiveStream(self, target, ref)
        return handle

    async def stream_frame(self, handle: WeComStream, content: str | Card, *, finish: bool) -> None:
        """One ``aibot_respond_msg`` stream frame on the handle's ``req_id``."""
        connection = self._conn()
        if connection.generation != handle.generation:
            raise CardGone("the stream's req_id belongs to an earlier connection (846605)")
        if finish and handle.final_body is not None:
            body = handle.final_body  # a retry of the finish: the very same frame
        else:
            body = self._stream_body(handle, content, finish=finish)
            if finish:
                handle.final_body = body
        try:
            await self._request("aibot_respond_msg", body, req_id=handle.req_id)
        except OutcomeUnknown:
            handle.finish_unknown = handle.finish_unknown or finish
            raise
        except CardGone:
            raise
        except FatalPlatformError as exc:
            if finish and handle.finish_unknown:
                # The finish was sent before and its ack lost; WeCom refusing it again
                # (the emulator: 40058 "stream already finished") means it landed.
                # UNCONFIRMED: WeCom's answer to a repeated finish is not documented.
                log.info("stream %s: the lost finish had landed (%s)", handle.ref.id, exc)
                return
            raise

    def _stream_body(
        self, handle: WeComStream, content: str | Card, *, finish: bool
    ) -> dict[str, Any]:
        card = content if isinstance(content, Card) else None
        text = (
            content if isinstance(content, str) else (stream_text(content) or content.plain_text())
        )
        stream: dict[str, Any] = {"id": handle.ref.id, "finish": finish, "content": text}
        if card is None or not card.buttons or handle.req_id in self._templated:
            return {"msgtype": "stream", "stream": stream}
        self._templated.add(handle.req_id)
        self._remember_card(handle.ref.id, card)
        if _is_feedback(card):
            self._remember(self._feedback_cards, handle.ref.id, card)
        return {
            "msgtype": "stream_with_template_card",
            "stream": stream,
            "template_card": template_card(card, handle.ref.id, with_text=False),
        }

    async def send_template_card(self, target: Target, card: Card, *, task_id: str) -> None:
        """A template card sent proactively (``aibot_send_msg``)."""
        self._remember_card(task_id, card)
        await self._request(
            "aibot_send_msg",
            {
                "chatid": self._chatid(target),
                "msgtype": "template_card",
                "template_card": template_card(card, task_id),
            },
        )

    async def send_card(self, target: Target, card: Card, *, key: str) -> CardRef:
        if self.mode == "app":
            return await self._app_send_card(target, card, key=key)
        task_id = card_id_for(key)
        ref = CardRef(
            id=task_id,
            platform=self.name,
            conversation_id=target.conversation.id if target.conversation else None,
        )
        welcome = {"msgtype": "template_card", "template_card": template_card(card, task_id)}
        if self._welcome_to(target.context) is not None:
            self._remember_card(task_id, card)
            if await self._welcome(target, welcome):
                return ref
        reply = self._reply_to(target.context)
        if reply is not None and reply[0] not in self._streamed:
            # A finished stream reply: its text is markdown of up to 20,480 bytes; a
            # template card (a stream_with_template_card) carries only the title and
            # buttons, which a stream cannot (template card text is meant to be short).
            req_id = reply[0]
            text = stream_text(card) or card.plain_text()
            stream = {"id": task_id, "finish": True, "content": text}
            body: dict[str, Any] = {"msgtype": "stream", "stream": stream}
            if card.buttons and req_id not in self._templated:
                body = {
                    "msgtype": "stream_with_template_card",
                    "stream": stream,
                    "template_card": template_card(card, task_id, with_text=False),
                }
                self._templated.add(req_id)
                self._remember_card(task_id, card)
                if _is_feedback(card):
                    self._remember(self._feedback_cards, task_id, card)
            self._remember(self._streamed, req_id, task_id)
            try:
                await self._request("aibot_respond_msg", body, req_id=req_id)
                return ref
            except CardGone:
                pass  # the req_id died meanwhile: send it proactively
        await self.send_template_card(target, card, task_id=task_id)
        return ref

    async def update_card(self, ref: CardRef, card: Card) -> None:
        """Robot mode: never (:class:`CardGone`; WeCom edits a card only to answer a press,
        within 5 s). App mode: once per sent template card, with the ``response_code``
        ``message/send`` answered (``update_template_card``, within 72 hours,
        path/94888); :class:`CardGone` after that."""
        if self.mode == "app":
            sent = self._response_codes.pop(ref.id, None)
            if sent is None:
                raise CardGone("this WeCom app card was updated already or is not known")
            code, user = sent
            await self._app_update(ref.id, code, user, card)
            return
        raise CardGone("WeCom cannot edit a sent message (only a pressed card, within 5 s)")

    async def answer_action(self, action: CardAction, card: Card, *, key: str) -> None:
        if self.mode == "app":
            await self._app_update_card(action, card)
            return
        reply = self._reply_to(action.raw)
        if reply is None:
            raise CardGone("the button press can no longer be answered (req_id expired)")
        self._remember_card(action.card_id, card)
        body = {
            "response_type": "update_template_card",
            "template_card": template_card(card, action.card_id),
        }
        await self._request("aibot_respond_update_msg", body, req_id=reply[0])

    async def restore_stream(self, target: Target, state: Mapping[str, Any]) -> StreamHandle:
        ref_state = state.get("ref")
        if not isinstance(ref_state, Mapping) or not isinstance(ref_state.get("id"), str):
            raise CardGone("no stream to restore")
        ref = CardRef(
            id=ref_state["id"], platform=self.name, conversation_id=ref_state.get("conversation_id")
        )
        # After a restart the req_id belongs to an earlier connection: WeCom refuses it
        # (846605), so the stream is closed by a proactive message.
        return ProactiveStream(self, target, ref)

    async def send_text(
        self, target: Target, text: str, *, markdown: bool = False, key: str
    ) -> None:
        if self.mode == "app":
            await self._app_send(target, text)
            return
        # A greeting (the target is an enter_chat) is WeCom's welcome reply: text only.
        if await self._welcome(target, {"msgtype": "text", "text": {"content": text}}):
            return
        await self._request("aibot_send_msg", markdown_body(self._chatid(target), text))

    async def download(self, attachment: Attachment) -> bytes:
        """Robot mode: the attachment's URL (WeCom's hosts or ``download_hosts`` only),
        decrypted with its ``aeskey``. App mode: ``media/get`` on ``api_endpoint`` with
        the access token (the ``MediaId``; never the callback's ``PicUrl``). At most
        ``max_download_bytes``; raises :class:`FatalPlatformError` beyond, and
        :class:`RetryableError` for network failures."""
        if self.mode == "app":
            media_id = str(attachment.extra.get("media_id") or attachment.id or "")
            if not media_id or self._api is None:
                raise NotSupported("this attachment has no WeCom MediaId")
            data: bytes
            data, _ = await self._api.media(media_id, limit=self.settings.max_download_bytes)
            return data
        url = attachment.url
        if not url:
            raise NotSupported("this attachment has no WeCom download URL")
        if not _host_allowed(url, self.settings.download_hosts):
            raise FatalPlatformError("refused to download an attachment from a non-WeCom host")
        limit = self.settings.max_download_bytes
        try:
            async with self._http().get(
                url,
                timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout * 6),
                allow_redirects=False,
            ) as response:
                if response.status >= 500:
                    raise RetryableError(f"WeCom download: HTTP {response.status}")
                if response.status != 200:
                    raise FatalPlatformError(f"WeCom download: HTTP {response.status}")
                if (response.content_length or 0) > limit:
                    raise FatalPlatformError(f"attachment larger than {limit} bytes")
                buffer = bytearray()
                async for block in response.content.iter_chunked(64 * 1024):
                    buffer += block
                    if len(buffer) > limit:
                        break
                data = bytes(buffer)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RetryableError(f"WeCom download: {type(exc).__name__}") from None
        if len(data) > limit:
            raise FatalPlatformError(f"attachment larger than {limit} bytes")
        aeskey = str(attachment.extra.get("aeskey") or "")
        if not aeskey:
            return data
        try:
            return decrypt_media(data, aeskey)
        except ValueError as exc:
            raise FatalPlatformError(f"could not decrypt the attachment: {exc}") from None

    async def send_image(self, target: Target, image: Upload, *, key: str) -> None:
        """Upload ``image`` and send it (robot: chunked upload, then a reply on the
        message's ``req_id`` or ``aibot_send_msg``; app: ``media/upload``, then
        ``message/send``)."""
        await self._send_media(target, image, "image")

    async def send_file(self, target: Target, file: Upload, *, key: str) -> None:
        """Upload ``file`` and send it, as :meth:`send_image` does."""
        await self._send_media(target, file, "file")

    async def _send_media(self, target: Target, upload: Upload, media_type: str) -> None:
        if self.mode == "app":
            assert self._api is not None
            media_id = await self._api.upload(media_type, upload.name, upload.data)
            await self._app_deliver(target, media_type, {"media_id": media_id})
            return
        media_id = await self.upload_media(upload, media_type)
        body = {"msgtype": media_type, media_type: {"media_id": media_id}}
        reply = self._reply_to(target.context)
        if reply is not None:
            try:
                # A reply on the message's req_id (after its stream, if any, as the
                # official openclaw plugin does); frames on one req_id go one at a time.
                await self._request("aibot_respond_msg", body, req_id=reply[0])
                return
            except CardGone:
                pass  # the req_id died meanwhile (846605/846608): send it proactively
        await self._request("aibot_send_msg", {"chatid": self._chatid(target), **body})

    async def upload_media(self, upload: Upload, media_type: str) -> str:
        """The chunked upload over the long connection (see :mod:`.messages`); returns
        the ``media_id``. A chunk that fails retryably is sent again (twice at most)."""
        parts = chunks(upload.data)
        if len(parts) > MEDIA_MAX_CHUNKS:
            raise FatalPlatformError(
                f"{upload.name!r} needs {len(parts)} upload chunks; WeCom takes {MEDIA_MAX_CHUNKS}"
            )
        init = await self._request(
            "aibot_upload_media_init",
            {
                "type": media_type,
                "filename": upload.name,
                "total_size": upload.size,
                "total_chunks": len(parts),
                "md5": hashlib.md5(upload.data).hexdigest(),
            },
        )
        upload_id = _body_field(init, "upload_id", "aibot_upload_media_init")
        for index, part in enumerate(parts):
            for attempt in range(3):
                try:
                    await self._request(
                        "aibot_upload_media_chunk",
                        {
                            "upload_id": upload_id,
                            "chunk_index": index,
                            "base64_data": base64.b64encode(part).decode("ascii"),
                        },
                    )
                    break
                except (RetryableError, RateLimited):
                    if attempt == 2:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))
        finish = await self._request("aibot_upload_media_finish", {"upload_id": upload_id})
        return _body_field(finish, "media_id", "aibot_upload_media_finish")

    # ------------------------------------------------------------------ app mode
    async def _start_app(self) -> None:
        from .api import WeComApi

        s = self.settings
        assert s.corp_id and s.corp_secret and s.token and s.encoding_aes_key
        self._crypto = CallbackCrypto(
            s.token.get(), s.encoding_aes_key.get(), s.corp_id, max_age=s.callback_max_age
        )
        self._api = WeComApi(
            self._http(),
            endpoint=s.api_endpoint,
            corp_id=s.corp_id,
            secret=s.corp_secret,
            timeout=s.request_timeout,
        )
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_get(s.callback_path, self._url_check)
        app.router.add_post(s.callback_path, self._callback)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(
            socket.AF_INET6 if ":" in s.callback_host else socket.AF_INET, socket.SOCK_STREAM
        )
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((s.callback_host, s.callback_port))
        except OSError as exc:  # the port in use, a host that is no address of this machine
            sock.close()
            await self._runner.cleanup()
            self._runner = None
            raise FatalPlatformError(
                f"cannot listen for WeCom callbacks on {s.callback_host}:{s.callback_port}: "
                f"{exc.strerror or exc}",
                code="callback_port",
            ) from None
        sock.setblocking(False)
        port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock).start()
        self.callback_url = f"http://{s.callback_host}:{port}{s.callback_path}"
        try:
            await self._api.access_token()
        except RetryableError as exc:
            log.warning("could not fetch a WeCom access token yet: %s", exc)
        log.info("WeCom app %s/%s: callbacks at %s", s.corp_id, s.agent_id, self.callback_url)

    async def _url_check(self, request: web.Request) -> web.Response:
        assert self._crypto is not None
        q = request.query
        try:
            plain = self._crypto.verify_url(
                q.get("msg_signature", ""),
                q.get("timestamp", ""),
                q.get("nonce", ""),
                q.get("echostr", ""),
            )
        except ForgedCallback as exc:
            self.forged += 1
            self.connection_status.rejected()
            log.warning("rejected a WeCom URL check from %s: %s", request.remote, exc)
            return web.Response(status=403)
        return web.Response(text=plain)

    async def _callback(self, request: web.Request) -> web.Response:
        """Check, decrypt and queue a callback; answer an empty 200 at once."""
        assert self._crypto is not None
        if self._closing:
            # Not answered 200: WeCom retries it (3 attempts in all), maybe to a
            # process that is up again, instead of it being dropped here.
            return web.Response(status=503)
        q = request.query
        try:
            try:
                body = (await request.read()).decode("utf-8")
            except UnicodeDecodeError:
                raise ForgedCallback("the body is not UTF-8 text") from None
            xml = self._crypto.decrypt(
                body, q.get("msg_signature", ""), q.get("timestamp", ""), q.get("nonce", "")
            )
            try:
                fields = parse_xml(xml)
            except Exception:
                raise ForgedCallback("the decrypted body is not XML") from None
        except ForgedCallback as exc:
            self.forged += 1
            self.connection_status.rejected()
            log.warning(
                "rejected a forged or undecryptable WeCom callback from %s: %s", request.remote, exc
            )
            return web.Response(status=403)
        event: Message | CardAction
        try:
            if fields.get("MsgType") == "event":
                if fields.get("Event") != "template_card_event":
                    log.debug("WeCom app event %s not handled", fields.get("Event"))
                    return web.Response(text="")
                task_id = fields.get("TaskId", "")
                event = to_app_card_action(fields, button_ids=self._buttons.get(task_id, {}))
                if task_id in self._feedback_cards:
                    self._spawn(self._thank(event, self._feedback_cards.pop(task_id)))
            else:
                event = to_app_message(fields)
        except MalformedPayload as exc:
            self.connection_status.rejected()
            log.warning("dropped a malformed WeCom app callback: %s", exc)
            return web.Response(text="")
        sink = self._sink
        if sink is not None:
            self._spawn(sink(event))
        return web.Response(text="")

    async def _app_send(self, target: Target, text: str) -> None:
        await self._app_deliver(target, "markdown", {"content": text})

    async def _app_send_card(self, target: Target, card: Card, *, key: str) -> CardRef:
        """A card as a ``template_card`` message (see :func:`.cards.app_template_card`).
        Text longer than ``card_text_bytes`` goes first as a markdown message, then the
        card with the title and buttons; a card without buttons and no ``card_url`` goes
        as markdown only. A retry under the same ``key`` does not send the markdown part
        again. The answer's ``response_code`` (one ``update_template_card``, 72 hours,
        path/94888) is kept per ``task_id``."""
        s = self.settings
        task_id = app_task_id(key)
        ref = CardRef(
            id=task_id,
            platform=self.name,
            conversation_id=target.conversation.id if target.conversation else None,
        )
        text = stream_text(card) or card.plain_text()
        long_text = len(text.encode("utf-8")) > s.card_text_bytes
        template = app_template_card(card, task_id, card_url=s.card_url, with_text=not long_text)
        if template is None or long_text:
            if key not in self._app_texts:
                await self._app_send(target, text)
                self._remember(self._app_texts, key, True)
            if template is None or not card.buttons:
                return ref
        self._remember_card(task_id, card)
        if _is_feedback(card):
            self._remember(self._feedback_cards, task_id, card)
        answer = await self._app_deliver(target, "template_card", template)
        code = answer.get("response_code")
        conversation = target.conversation
        user = target.user.id if target.user is not None else None
        if user is None and conversation is not None and not conversation.is_group:
            user = conversation.id
        if isinstance(code, str) and code and user:
            self._remember(self._response_codes, task_id, (code, user))
        return ref

    async def _app_update_card(
        self, action: CardAction, card: Card | None, *, replace_name: str | None = None
    ) -> None:
        """Update the pressed card with ``message/update_template_card`` and the press's
        ``ResponseCode`` (once; WeCom doc path/94888): ``card`` when it can be a
        template card, else the card kept with its buttons greyed out and labelled
        ``replace_name`` (default: the card's first line; ``button.replace_name``)."""
        code = str(action.raw.get("ResponseCode") or "")
        if not code:
            raise CardGone("this press carries no ResponseCode to update its card with")
        await self._app_update(
            action.card_id, code, action.sender.id, card, replace_name=replace_name
        )

    async def _app_update(
        self,
        task_id: str,
        code: str,
        user: str,
        card: Card | None,
        *,
        replace_name: str | None = None,
    ) -> None:
        """``message/update_template_card`` of card ``task_id`` for ``user`` with
        ``code`` (see :meth:`_app_update_card`)."""
        s = self.settings
        assert s.agent_id is not None and self._api is not None
        body: dict[str, Any] = {"userids": [user], "agentid": s.agent_id, "response_code": code}
        template = None
        if card is not None:
            template = app_template_card(card, task_id, card_url=s.card_url)
            self._remember_card(task_id, card)
        if template is not None:
            body["template_card"] = template
        else:
            if replace_name is None:
                assert card is not None
                lines = (card.title or card.plain_text()).strip().splitlines()
                replace_name = lines[0] if lines else "OK"
            # UNCONFIRMED: WeCom documents no length for replace_name (it labels a button).
            body["button"] = {"replace_name": replace_name[:REPLACE_NAME_CHARS]}
        await self._api.post("/cgi-bin/message/update_template_card", body)

    async def _app_deliver(
        self, target: Target, msgtype: str, part: dict[str, Any]
    ) -> dict[str, Any]:
        """``message/send`` (to a user, ``party:ID`` or ``tag:ID``) or ``appchat/send``
        (to an app group chat id) of one ``msgtype`` message; returns WeCom's answer."""
        s = self.settings
        assert s.agent_id is not None and self._api is not None
        conversation = target.conversation
        if conversation is not None and conversation.is_group:
            cid = conversation.id
            if cid.startswith("party:"):
                body = app_body(s.agent_id, msgtype, part, toparty=cid.removeprefix("party:"))
            elif cid.startswith("tag:"):
                body = app_body(s.agent_id, msgtype, part, totag=cid.removeprefix("tag:"))
            else:
                if msgtype == "template_card":
                    raise NotSupported("an app group chat (appchat/send) takes no template card")
                return dict(
                    await self._api.post(
                        "/cgi-bin/appchat/send",
                        {"chatid": cid, "msgtype": msgtype, msgtype: part},
                    )
                )
        else:
            user = target.user.id if target.user is not None else None
            user = user or (conversation.id if conversation is not None else None)
            if not user:
                raise FatalPlatformError("a WeCom app message needs a user")
            body = app_body(s.agent_id, msgtype, part, touser=user)
        return dict(await self._api.post("/cgi-bin/message/send", body))
