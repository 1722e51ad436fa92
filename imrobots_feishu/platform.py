"""The Feishu/Lark platform: the long connection or HTTP callbacks in, CardKit or PATCHed
cards out.

:class:`FeishuSettings` is the ``[robots.NAME.settings]`` table of a robot on
``platform = "feishu"``; :class:`FeishuPlatform` implements the core's
:class:`~imrobots.platform.Platform` on top of :mod:`.connection` (the long
connection, responses first, or the HTTP callback endpoint), :mod:`.crypto` (callback
signature, decryption and token checks), :mod:`.convert` (events -> core events), :mod:`.cards`
(core cards -> card JSON 2.0), :mod:`.messages` (message contents, byte limits,
``uuid``), :mod:`.streaming` (the CardKit stream handle) and :mod:`.api` (lark-oapi's
typed client with our token cache and error classes). See ``docs/platforms/feishu.md``.

Inbound (``mode``): ``long_connection`` opens Feishu's WebSocket; ``callback`` serves
``http://callback_host:callback_port/callback_path`` for Feishu's event POSTs (the
robot's public URL, behind a reverse proxy that terminates TLS, is what the developer
console is given). Both feed the same conversion; an ``event_id`` seen before (Feishu
redelivers at least once, PROTOCOLS 3.4) is answered as the first time and not
processed again.

Where things go:

- An answer to a message replies to it (``POST /im/v1/messages/:id/reply``, in its
  thread if it has one); if the message was withdrawn (230011) the answer goes to
  its chat instead.
- A proactive target goes to its chat (``receive_id_type=chat_id``) or, without a
  conversation, to its user (``open_id``), @-mentioning ``Target.mentions``.
- Answers stream into a CardKit card entity (``card_mode = "cardkit"``) or into a card
  message that is PATCHed (``card_mode = "patch"``, for apps without CardKit); the
  first CardKit create the platform refuses switches the robot to PATCH for good, and
  announces the APIs it now calls (``Platform.change_capabilities``) so the limiter
  counts updates and closes in ``im.message.patch``'s one window.
- Images and files are uploaded (``/im/v1/images``, ``/im/v1/files``) and sent.
- A card Feishu refuses for its tables (230099 with 11310, :func:`table_refusal`) is
  sent again with them drawn as code blocks, and that card keeps them so.
- Downloads go to the configured domain only; a redirect is not followed (an error
  with code ``redirect``).

Idempotency: the core's key becomes the ``uuid`` of the send (:func:`uuid_for`), so
Feishu answers a retried send with the message the first attempt made; a CardKit
open remembers the entity it created under the key, so its retry sends that one.
Updates carry the whole content and a fresh ``sequence``, so repeating them is safe.
"""

from __future__ import annotations

import collections
import json
import logging
import re
from collections.abc import Mapping
from typing import Any, Literal

import aiohttp
import attrs
from lark_oapi.api.cardkit.v1 import (  # type: ignore[import-untyped]
    ContentCardElementRequest,
    ContentCardElementRequestBody,
    CreateCardRequest,
    CreateCardRequestBody,
    SettingsCardRequest,
    SettingsCardRequestBody,
    UpdateCardRequest,
    UpdateCardRequestBody,
)
from lark_oapi.api.im.v1 import (  # type: ignore[import-untyped]
    CreateFileRequest,
    CreateFileRequestBody,
    CreateImageRequest,
    CreateImageRequestBody,
    CreateMessageRequest,
    CreateMessageRequestBody,
    GetMessageRequest,
    GetMessageResourceRequest,
    PatchMessageRequest,
    PatchMessageRequestBody,
    ReplyMessageRequest,
    ReplyMessageRequestBody,
)

from imrobots.platform import (
    Attachment,
    Capabilities,
    Card,
    CardAction,
    CardGone,
    CardRef,
    CardStream,
    EventSink,
    FatalPlatformError,
    LifetimeRemedy,
    Message,
    Op,
    Platform,
    Quote,
    RateLimit,
    Refused,
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
    load_json,
    number_problems,
    refuse_redirects,
    settings_problems,
    streaming_card,
)

from .api import (
    CARD_GONE_CODES,
    FATAL_CODES,
    RATE_LIMITED_CODES,
    RETRYABLE_CODES,
    AnswerTooLarge,
    FeishuApi,
)
from .cards import card_json, degrade_tables, dumps
from .connection import Answer, CallbackEndpoint, ConnectionOptions, LongConnection
from .convert import (
    CARD_ACTION_EVENT,
    ID_FIELDS,
    MESSAGE_EVENT,
    MalformedPayload,
    button_value,
    content_text,
    to_card_action,
    to_message,
)
from .crypto import CallbackCrypto
from .messages import (
    CONTENT_BYTES,
    POST_BYTES,
    file_content,
    image_content,
    post_content,
    split_bytes,
    text_content,
    uuid_for,
)
from .streaming import FeishuCardKitStream, content_body, settings_body, update_body

__all__ = [
    "CARD_TEXT_BYTES",
    "FEISHU_DOMAIN",
    "LARK_DOMAIN",
    "FeishuPlatform",
    "FeishuSettings",
]

log = logging.getLogger("imrobots_feishu")

FEISHU_DOMAIN = "https://open.feishu.cn"
LARK_DOMAIN = "https://open.larksuite.com"
CARD_TEXT_BYTES = 28 * 1024
"""UTF-8 bytes of answer markdown per card before the answer continues in a new card:
the 30 KB a card may have (PROTOCOLS 3.8) less room for its title, buttons and JSON."""
IMAGE_BYTES = 10 * 1024 * 1024
"""``/im/v1/images`` takes images up to 10 MB (Feishu's upload-image page)."""
FILE_BYTES = 30 * 1024 * 1024
"""``/im/v1/files`` takes files up to 30 MB (Feishu's upload-file page)."""
STREAM_LIFETIME = 600.0
"""CardKit streaming mode closes itself 10 minutes after it was enabled (PROTOCOLS 3.8)."""

CardMode = Literal["cardkit", "patch"]
InboundMode = Literal["long_connection", "callback"]
_PROGRESS_KEYS = 2048
_SEQUENCES = 4096
_EVENT_IDS = 10_000
SEQUENCE_SKIP = 1000
"""How far a card's ``sequence`` jumps after Feishu answers 300317 (another writer used
higher ones): the retry then clears them in one step instead of one per attempt."""


def table_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is Feishu refusing a card for its number of tables: 230099 whose
    message carries the card-content error 11310 (``card table number over limit``), or
    11310 itself (ANCHORS 5)."""
    code = getattr(exc, "code", None)
    if code == "11310":
        return True
    return code == "230099" and ("11310" in str(exc) or "table" in str(exc).lower())


_SEND_OPS = frozenset({Op.OPEN, Op.SEND_CARD, Op.SEND_TEXT, Op.SEND_IMAGE, Op.SEND_FILE})


_POSITIVE = (
    "callback_max_age",
    "app_rate",
    "app_rate_minute",
    "chat_rate",
    "update_interval",
    "max_updates",
    "max_text",
    "max_message_text",
    "stream_lifetime",
    "max_download_bytes",
    "request_timeout",
    "connect_timeout",
    "idle_timeout",
    "reconnect_initial",
    "reconnect_max",
)
"""Settings that must be positive when set."""


_CALLBACK_KEYS = (
    "verification_token",
    "encrypt_key",
    "callback_host",
    "callback_port",
    "callback_path",
    "callback_max_age",
)
"""Settings only ``mode = "callback"`` uses."""


def _domain_problem(value: str) -> str | None:
    return endpoint_problem(value, origin=True)


def _problems(problems: list[tuple[str, str]]) -> SettingsProblems:
    return settings_problems(FeishuSettings, problems, title="Feishu")


@attrs.frozen(kw_only=True)
class FeishuSettings:
    """``[robots.NAME.settings]`` of a Feishu/Lark robot. Only the credentials are required."""

    app_id: str
    """The app's App ID (``cli_...``), from the developer console's credentials page."""
    app_secret: Secret = attrs.field(repr=False)
    """The app's App Secret. Never logged or shown."""
    domain: str = FEISHU_DOMAIN
    """``https://open.feishu.cn`` (Feishu), ``https://open.larksuite.com`` (Lark), or an
    emulator's ``http://127.0.0.1:PORT``."""
    mode: InboundMode = "long_connection"
    """How events arrive: ``long_connection`` (the WebSocket; self-built apps) or
    ``callback`` (Feishu POSTs them to the robot's URL; see ``callback_*``)."""
    card_mode: CardMode = "cardkit"
    """``cardkit``: answers stream natively into a card entity. ``patch``: a card message
    is edited (5 updates/s per message), for apps that cannot use CardKit."""
    verification_token: Secret | None = attrs.field(default=None, repr=False)
    """The event subscription's Verification Token (Events & Callbacks > Encryption
    Strategy); required in callback mode: every callback must carry it."""
    encrypt_key: Secret | None = attrs.field(default=None, repr=False)
    """The event subscription's Encrypt Key (same page). With it, callbacks must come
    encrypted and signed (``X-Lark-Signature``); without it they are checked by the
    verification token only (a warning at start)."""
    callback_host: str = "127.0.0.1"
    """Address the callback endpoint listens on (callback mode); ``0.0.0.0`` for all."""
    callback_port: int = 8080
    """Port of the callback endpoint; 0 picks a free one (tests)."""
    callback_path: str = "/feishu/callback"
    """Path of the callback endpoint; the request URL in the developer console ends so."""
    callback_max_age: float = 300.0
    """Seconds a signed callback's ``X-Lark-Request-Timestamp`` may be off from now; an
    older one (or a nonce seen within that time) is rejected as a replay."""
    app_rate: float = 50.0
    """Calls per second the app may make to each API (PROTOCOLS 3.9: 50)."""
    app_rate_minute: float = 1000.0
    """Calls per minute the app may make to each API (PROTOCOLS 3.9: 1000)."""
    chat_rate: float = 5.0
    """Messages per second into one chat or to one user (PROTOCOLS 3.8: 5)."""
    update_interval: float | None = None
    """Minimum seconds between two updates of one card; default 0.3 (CardKit) or 0.5
    (PATCH: 5/s per message, and every edit shows)."""
    max_updates: int | None = None
    """Cap on updates per card (the final one included); ``None``: no cap."""
    max_text: int = CARD_TEXT_BYTES
    """UTF-8 bytes of answer text per card before the answer continues in a new card."""
    max_message_text: int = CONTENT_BYTES
    """UTF-8 bytes of text per message before it continues in the next message."""
    stream_lifetime: float = STREAM_LIFETIME
    """Seconds a CardKit stream stays open; the engine renews it before then."""
    tables: bool = True
    """Send markdown tables as tables; ``False`` draws them as code blocks (cards with
    many tables are refused, 230099)."""
    max_download_bytes: int = 100 * 1024 * 1024
    request_timeout: float = 10.0
    connect_timeout: float = 30.0
    idle_timeout: float | None = None
    """Seconds without a frame from Feishu (pong or event) before the long connection is
    presumed dead (default: the server's PingInterval plus 10 s, at most twice it)."""
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0

    def __attrs_post_init__(self) -> None:
        """Check the settings as a whole; every problem is reported, each on its field."""
        problems: list[tuple[str, str]] = [
            (name, f"is empty: {what}, from the developer console's credentials page")
            for name, what, value in (
                ("app_id", "the app's App ID (cli_...)", self.app_id.strip()),
                ("app_secret", "the app's App Secret", self.app_secret.get().strip()),
            )
            if not value
        ]
        domain = _domain_problem(self.domain)
        if domain is not None:
            problems.append(("domain", domain))
        problems += number_problems(
            self, _POSITIVE, ordered=[("reconnect_initial", "reconnect_max")]
        )
        if self.mode == "callback" and not self.verification_token:
            problems.append(
                (
                    "verification_token",
                    "required in mode 'callback' (the developer console's Verification "
                    "Token, under Events & Callbacks > Encryption Strategy)",
                )
            )
        if self.encrypt_key is not None and not self.encrypt_key:
            problems.append(("encrypt_key", "is empty; set the Encrypt Key or leave it out"))
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
        if not self.callback_path.startswith("/"):
            problems.append(("callback_path", f"must start with /, got {self.callback_path!r}"))
        if problems:
            raise _problems(problems)

    def app_identity(self) -> tuple[str, str]:
        """``("app_id", identity)``: two robots with the same App ID on one domain are one
        app, whose events Feishu hands each to one random long connection (cluster mode,
        PROTOCOLS 3.4) or POSTs to the one request URL of its event subscription, so
        ``imrobots check`` warns of them."""
        return "app_id", f"{self.domain.rstrip('/')} {self.app_id}"

    def config_warnings(self) -> list[tuple[str, str]]:
        """Advice ``imrobots check`` prints: ``(field, message)`` pairs: callback mode
        without an Encrypt Key, and callback settings in long-connection mode (where
        they do nothing: usually ``mode = "callback"`` is missing)."""
        if self.mode == "callback" and self.encrypt_key is None:
            return [
                (
                    "encrypt_key",
                    "not set: callbacks come unsigned and are checked by the verification "
                    "token only; set the Encrypt Key (Events & Callbacks > Encryption Strategy)",
                )
            ]
        if self.mode == "long_connection":
            defaults = attrs.fields_dict(FeishuSettings)
            return [
                (name, "belongs to mode 'callback'; ignored in mode 'long_connection'")
                for name in _CALLBACK_KEYS
                if getattr(self, name) != defaults[name].default
            ]
        return []

    @property
    def interval(self) -> float:
        if self.update_interval is not None:
            return self.update_interval
        return 0.3 if self.card_mode == "cardkit" else 0.5


def _api_names(mode: CardMode, *, fell_back: bool = False) -> dict[Op, str | tuple[str, ...]]:
    """The Feishu API each operation calls (for the per-API limits). Sends and replies
    share one bucket, as do the card entity's update and settings calls (conservative:
    they are separate APIs on Feishu). Updating a card or answering a button press in
    CardKit mode updates the entity when the card has one and PATCHes the message
    otherwise, so it counts on both. (A renewal makes two settings calls:
    ``Capabilities.op_calls``.)

    ``fell_back``: PATCH mode after a CardKit refusal. Pushes and closes then PATCH the
    message and share ``im.message.patch``'s window; an answer opened on CardKit before
    the switch may still push and close its entity, so each counts on both APIs."""
    send = "im.message.send"
    names: dict[Op, str | tuple[str, ...]] = {op: send for op in _SEND_OPS}
    if fell_back:
        patch = "im.message.patch"
        names.update(
            {
                Op.PUSH: ("cardkit.card_element.content", patch),
                Op.RENEW: ("cardkit.card", patch),
                Op.CLOSE: ("cardkit.card", patch),
                Op.UPDATE_CARD: ("cardkit.card", patch),
                Op.ANSWER_ACTION: ("cardkit.card", patch),
            }
        )
        return names
    if mode == "cardkit":
        either = ("cardkit.card", "im.message.patch")
        names.update(
            {
                Op.PUSH: "cardkit.card_element.content",
                Op.RENEW: "cardkit.card",
                Op.CLOSE: "cardkit.card",
                Op.UPDATE_CARD: either,
                Op.ANSWER_ACTION: either,
            }
        )
    else:
        names.update({op: "im.message.patch" for op in (Op.PUSH, Op.CLOSE, Op.UPDATE_CARD)})
        names[Op.ANSWER_ACTION] = "im.message.patch"
    return names


def _limits(s: FeishuSettings) -> tuple[RateLimit, ...]:
    """Per app and API 50/s and 1000/min (PROTOCOLS 3.9), 5/s per chat for sends
    (PROTOCOLS 3.8), 5/s per PATCHed message; card entities are held to 5/s too (Feishu
    allows 10 operations/s per entity, none counted while streaming, PROTOCOLS 3.9).

    The per-second limits are counted over short windows (0.1 s and 0.25 s): a client
    window of a whole second lets a full second's calls go in one burst at each window
    edge, and a few milliseconds of skew between when calls leave and when Feishu counts
    them then puts two bursts in one of Feishu's seconds. Short windows spread the calls
    (at most 45/s per API, 4/s per chat or card, with the default headroom)."""
    card_ops = frozenset({Op.PUSH, Op.RENEW, Op.CLOSE, Op.UPDATE_CARD, Op.ANSWER_ACTION})
    return (
        RateLimit(scope=Scope.API, rate=s.app_rate, window=0.1),
        RateLimit(scope=Scope.API, rate=s.app_rate_minute / 60, window=60.0),
        RateLimit(scope=Scope.CONVERSATION, rate=s.chat_rate, window=0.25, ops=_SEND_OPS),
        RateLimit(scope=Scope.CARD, rate=5.0, window=0.25, ops=card_ops),
    )


class FeishuPlatform(Platform):
    """A robot's connection to Feishu/Lark. See the module docstring."""

    name = "feishu"

    def __init__(self, settings: FeishuSettings) -> None:
        self.settings = s = settings
        cardkit = s.card_mode == "cardkit"
        self.capabilities = Capabilities(
            streaming=StreamingMode.NATIVE if cardkit else StreamingMode.EDIT,
            rate_limits=_limits(s),
            app_rate=s.app_rate,
            api_names=_api_names(s.card_mode),
            op_calls={Op.RENEW: 2},  # streaming mode off, then on (FeishuCardKitStream.renew)
            update_interval=s.interval,
            max_updates=s.max_updates,
            stream_lifetime=s.stream_lifetime if cardkit else None,
            lifetime_remedy=LifetimeRemedy.RENEW if cardkit else LifetimeRemedy.NEW_MESSAGE,
            max_text=s.max_text,
            max_message_text=s.max_message_text,
            text_unit=SizeUnit.BYTES,
            max_image_bytes=IMAGE_BYTES,
            max_file_bytes=FILE_BYTES,
            images=True,
            files=True,
            downloads=True,
            threads=True,
            mentions=True,
            proactive=True,
            action_deadline=3.0,
            rate_limited_codes=RATE_LIMITED_CODES,
            retryable_codes=RETRYABLE_CODES,
            fatal_codes=FATAL_CODES | CARD_GONE_CODES,
        )
        self.card_mode: CardMode = s.card_mode
        self.api = FeishuApi(
            app_id=s.app_id, app_secret=s.app_secret, domain=s.domain, timeout=s.request_timeout
        )
        self.bot_open_id: str | None = None
        self.connection: LongConnection | None = None
        self.endpoint: CallbackEndpoint | None = None
        self.callback_url: str | None = None
        """Where the callback endpoint listens (callback mode, once started)."""
        self._events: collections.OrderedDict[str, Any] = collections.OrderedDict()
        """Event ids handled -> the answer they got (redeliveries get it again)."""
        self._session: aiohttp.ClientSession | None = None
        self._sink: EventSink | None = None
        self._progress: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._sequences: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._no_tables: collections.OrderedDict[str, None] = collections.OrderedDict()
        """Cards (entity or message ids) Feishu refused for their tables: drawn without."""
        self._withdrawn: collections.OrderedDict[str, None] = collections.OrderedDict()
        """Messages found withdrawn (230011): later answers to them go to the chat."""

    def __repr__(self) -> str:
        return f"FeishuPlatform(app_id={self.settings.app_id!r}, card_mode={self.card_mode!r})"

    def describe(self) -> str:
        s = self.settings
        where = f", callbacks at {self.callback_url or '?'}" if s.mode == "callback" else ""
        return f"feishu app {s.app_id} at {s.domain} ({s.mode}{where}, {self.card_mode} cards)"

    # ------------------------------------------------------------------ lifecycle
    async def start(self, sink: EventSink) -> None:
        self._sink = sink
        self._session = client_session(trace_configs=[refuse_redirects()])
        try:
            self.bot_open_id = await self.api.bot_open_id()
        except Exception as exc:
            log.warning("could not fetch the robot's open_id (%s); mentions are guessed", exc)
        s = self.settings
        if s.mode == "callback":
            try:
                await self._start_callbacks()
            except BaseException:
                await self.close()
                raise
            return
        self.connection = LongConnection(
            self._session,
            domain=s.domain,
            app_id=s.app_id,
            app_secret=s.app_secret.get,
            handler=self._on_frame,
            status=self.connection_status,
            options=ConnectionOptions(
                connect_timeout=s.connect_timeout,
                request_timeout=s.request_timeout,
                idle_timeout=s.idle_timeout,
                reconnect_initial=s.reconnect_initial,
                reconnect_max=s.reconnect_max,
            ),
        )
        try:
            await self.connection.start()
        except BaseException:
            await self.close()
            raise

    async def _start_callbacks(self) -> None:
        s = self.settings
        assert s.verification_token is not None
        try:
            await self.api.token()  # bad credentials show now, not at the first answer
        except RetryableError as exc:
            log.warning("could not fetch a Feishu tenant token yet: %s", exc)
        if s.encrypt_key is None:
            log.warning(
                "Feishu app %s takes callbacks without an encrypt_key: they are checked by "
                "the verification token only; set the Encrypt Key so they are signed",
                s.app_id,
            )
        crypto = CallbackCrypto(
            verification_token=s.verification_token.get(),
            encrypt_key=s.encrypt_key.get() if s.encrypt_key is not None else None,
            max_age=s.callback_max_age,
        )
        self.endpoint = CallbackEndpoint(
            host=s.callback_host,
            port=s.callback_port,
            path=s.callback_path,
            crypto=crypto,
            handler=self._on_event,
            status=self.connection_status,
        )
        await self.endpoint.start()
        self.callback_url = self.endpoint.url
        log.info("Feishu app %s: callbacks at %s", s.app_id, self.callback_url)

    async def close(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.close()
            self.endpoint = None
        if self.connection is not None:
            await self.connection.close()
            self.connection = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.api.close()

    # ------------------------------------------------------------------ inbound
    def _on_frame(self, kind: str, payload: bytes) -> Answer:
        """Convert one long-connection event; the response frame goes out before the
        sink runs."""
        try:
            envelope = load_json(payload, ID_FIELDS, where="event")
        except ValueError as exc:  # MalformedJson included
            self.connection_status.rejected()
            log.warning("dropped a Feishu event that cannot be read: %s", exc)
            return Answer()
        if not isinstance(envelope, dict):
            self.connection_status.rejected()
            log.warning("dropped a Feishu event that is not a JSON object")
            return Answer()
        return self._on_event(envelope)

    def _on_event(self, envelope: dict[str, Any]) -> Answer:
        """Convert one event (either inbound mode); the answer (the response frame, or
        the HTTP response) goes out before the sink runs. A redelivered ``event_id``
        gets its first answer again and nothing else."""
        try:
            header = envelope.get("header") or {}
            event_id = header.get("event_id")
            if isinstance(event_id, str) and event_id in self._events:
                log.debug("Feishu redelivered event %s; answered once already", event_id)
                return Answer(data=self._events[event_id])
            event_type = header.get("event_type")
            answer = Answer()
            if event_type == MESSAGE_EVENT:
                message = to_message(envelope, bot_open_id=self.bot_open_id)
                answer = Answer(follow_up=lambda: self._deliver_message(message))
            elif event_type == CARD_ACTION_EVENT:
                action = to_card_action(envelope)
                answer = Answer(data={}, follow_up=lambda: self._deliver(action))
            if isinstance(event_id, str) and event_id:
                self._events[event_id] = answer.data
                while len(self._events) > _EVENT_IDS:
                    self._events.popitem(last=False)
            return answer
        except (ValueError, AttributeError, MalformedPayload) as exc:
            self.connection_status.rejected()
            log.warning("dropped a Feishu event that cannot be read: %s", exc)
        return Answer()

    async def _deliver(self, event: Message | CardAction) -> None:
        if self._sink is not None:
            await self._sink(event)

    async def _deliver_message(self, message: Message) -> None:
        if message.quote is not None and message.quote.id:
            message = attrs.evolve(message, quote=await self._quote(message.quote.id))
        await self._deliver(message)

    async def _quote(self, message_id: str) -> Quote:
        """The quoted message's text (``GET /im/v1/messages/:id``); only its id if that fails."""
        try:
            response = await self.api.call(
                "im.message.get",
                self.api.client.im.v1.message.aget,
                GetMessageRequest.builder().message_id(message_id).build(),
            )
            item = response.data.items[0]
            content = json.loads(item.body.content or "{}")
            text, _ = content_text(str(item.msg_type), content, {})
            return Quote(id=message_id, text=text)
        except Exception as exc:
            log.info("could not read quoted message %s: %s", message_id, exc)
            return Quote(id=message_id)

    # ------------------------------------------------------------------ sending
    def _remember(self, key: str, value: Any) -> None:
        self._progress[key] = value
        self._progress.move_to_end(key)
        while len(self._progress) > _PROGRESS_KEYS:
            self._progress.popitem(last=False)

    @staticmethod
    def _mark(seen: collections.OrderedDict[str, None], key: str) -> None:
        seen[key] = None
        seen.move_to_end(key)
        while len(seen) > _PROGRESS_KEYS:
            seen.popitem(last=False)

    def tables_for(self, card: str) -> bool:
        """Whether markdown tables are sent as tables on ``card`` (an entity or message id):
        unless ``tables = false`` or Feishu refused this card's tables."""
        return self.settings.tables and card not in self._no_tables

    def drop_tables(self, card: str, exc: BaseException) -> bool:
        """After ``exc``: True if it refused ``card``'s tables and they were still sent, in
        which case ``card`` is drawn without them from now on (the caller sends again)."""
        if not table_refusal(exc) or not self.tables_for(card):
            return False
        log.info("Feishu refused the tables of card %s (%s); drawn as text", card, exc)
        self._mark(self._no_tables, card)
        return True

    def _reply_to(self, target: Target) -> str | None:
        context = target.context
        header = context.get("header") if isinstance(context, Mapping) else None
        if (
            target.reply_to
            and isinstance(header, Mapping)
            and header.get("event_type") == MESSAGE_EVENT
        ):
            return target.reply_to
        return None

    async def _send(
        self, target: Target, msg_type: str, content: str, *, uuid: str, what: str
    ) -> Any:
        """Reply to the message answered, else send to the chat or user; the message data."""
        reply_to = self._reply_to(target)
        if reply_to is not None and reply_to not in self._withdrawn:
            body = (
                ReplyMessageRequestBody.builder()
                .msg_type(msg_type)
                .content(content)
                .reply_in_thread(bool(target.thread))
                .uuid(uuid)
                .build()
            )
            request = ReplyMessageRequest.builder().message_id(reply_to).request_body(body).build()
            try:
                response = await self.api.call(
                    "im.message.reply", self.api.client.im.v1.message.areply, request
                )
                return response.data
            except CardGone as exc:
                if exc.code != "230011":
                    raise
                log.info("message %s was withdrawn; sending %s to its chat", reply_to, what)
                self._mark(self._withdrawn, reply_to)
        if target.conversation is not None:
            id_type, receive_id = "chat_id", target.conversation.id
        elif target.user is not None:
            id_type, receive_id = "open_id", target.user.id
        else:
            raise FatalPlatformError(f"no chat or user to send {what} to", code="target")
        body = (
            CreateMessageRequestBody.builder()
            .receive_id(receive_id)
            .msg_type(msg_type)
            .content(content)
            .uuid(uuid)
            .build()
        )
        request = CreateMessageRequest.builder().receive_id_type(id_type).request_body(body).build()
        response = await self.api.call(
            "im.message.create", self.api.client.im.v1.message.acreate, request
        )
        return response.data

    def _ref(self, data: Any, target: Target, **extra: Any) -> CardRef:
        chat = getattr(data, "chat_id", None) or (
            target.conversation.id if target.conversation else None
        )
        return CardRef(
            id=str(data.message_id), platform=self.name, conversation_id=chat, data=extra
        )

    def _card_content(self, card: Card, *, streaming: bool = False, tables: bool = True) -> str:
        tables = tables and self.settings.tables
        content = dumps(card_json(card, streaming=streaming, tables=tables))
        if len(content.encode()) > POST_BYTES:
            raise FatalPlatformError(
                f"the card is {len(content.encode())} bytes; Feishu takes {POST_BYTES}",
                code="230025",
            )
        return content

    async def send_card(self, target: Target, card: Card, *, key: str) -> CardRef:
        """Send ``card`` as a card message (shared, so it can be PATCHed); sent again with
        its tables drawn as text if Feishu refuses them (230099/11310)."""
        try:
            data = await self._send(
                target, "interactive", self._card_content(card), uuid=uuid_for(key), what="a card"
            )
        except FatalPlatformError as exc:
            if not self.drop_tables(key, exc):
                raise
            content = self._card_content(card, tables=False)
            data = await self._send(
                target, "interactive", content, uuid=uuid_for(key), what="a card"
            )
        ref = self._ref(data, target, mode="patch", title=card.title or "")
        if not self.tables_for(key):
            self._mark(self._no_tables, ref.id)
        return ref

    async def update_card(self, ref: CardRef, card: Card) -> None:
        """Replace a sent card: its entity through CardKit, else the message by PATCH."""
        card_id = ref.data.get("card_id") if isinstance(ref.data, Mapping) else None
        if isinstance(card_id, str) and card_id:
            await self.cardkit_update(card_id, card)
            return
        await self._patch_card(ref.id, card)

    async def _patch_card(self, message_id: str, card: Card) -> None:
        """PATCH a card message with ``card``; again without tables if Feishu refuses them."""
        try:
            await self.patch(
                message_id, self._card_content(card, tables=self.tables_for(message_id))
            )
        except FatalPlatformError as exc:
            if not self.drop_tables(message_id, exc):
                raise
            await self.patch(message_id, self._card_content(card, tables=False))

    async def patch(self, message_id: str, content: str) -> None:
        body = PatchMessageRequestBody.builder().content(content).build()
        request = PatchMessageRequest.builder().message_id(message_id).request_body(body).build()
        await self.api.call("im.message.patch", self.api.client.im.v1.message.apatch, request)

    async def stream_update(self, ref: CardRef, text: str) -> None:
        """Show ``text`` (for the core's :class:`~imrobots.platform.CardStream`): the
        entity's answer element, else a PATCH of the streaming card."""
        card_id = ref.data.get("card_id")
        if isinstance(card_id, str) and card_id:
            await self.cardkit_content(card_id, text)
            return
        title = ref.data.get("title")
        card = streaming_card(title if isinstance(title, str) else "", text)
        await self._patch_card(ref.id, card)

    # ------------------------------------------------------------------ CardKit
    def next_sequence(self, card_id: str) -> int:
        """The next ``sequence`` of a card entity, strictly increasing (PROTOCOLS 3.8)."""
        value = self._sequences.get(card_id, 0) + 1
        self._sequences[card_id] = value
        self._sequences.move_to_end(card_id)
        while len(self._sequences) > _SEQUENCES:
            self._sequences.popitem(last=False)
        return value

    def sequence_of(self, card_id: str) -> int:
        return self._sequences.get(card_id, 0)

    async def _on_entity(self, card_id: str, where: str, method: Any, request: Any) -> None:
        """One call on a card entity; after 300317 (another writer used higher
        sequences) the card's sequence jumps by :data:`SEQUENCE_SKIP` before the error
        goes to the engine, which retries."""
        try:
            await self.api.call(where, method, request)
        except RetryableError as exc:
            if exc.code == "300317":
                self._sequences[card_id] = self.sequence_of(card_id) + SEQUENCE_SKIP
            raise

    async def cardkit_content(self, card_id: str, text: str) -> None:
        """Put ``text`` into the entity's answer element; its tables drawn as text if
        Feishu refused them on this card (then or before: 230099/11310)."""
        from .cards import CONTENT_ELEMENT

        for _ in range(2):
            shown = text if self.tables_for(card_id) else degrade_tables(text)
            body = ContentCardElementRequestBody(content_body(shown, self.next_sequence(card_id)))
            request = (
                ContentCardElementRequest.builder()
                .card_id(card_id)
                .element_id(CONTENT_ELEMENT)
                .request_body(body)
                .build()
            )
            try:
                await self._on_entity(
                    card_id,
                    "cardkit.card_element.content",
                    self.api.client.cardkit.v1.card_element.acontent,
                    request,
                )
                return
            except FatalPlatformError as exc:
                if not self.drop_tables(card_id, exc):
                    raise

    async def cardkit_streaming(self, card_id: str, *, on: bool) -> None:
        body = SettingsCardRequestBody(settings_body(on, self.next_sequence(card_id)))
        request = SettingsCardRequest.builder().card_id(card_id).request_body(body).build()
        await self._on_entity(
            card_id, "cardkit.card.settings", self.api.client.cardkit.v1.card.asettings, request
        )

    async def cardkit_update(self, card_id: str, card: Card) -> None:
        """Replace the entity's whole card; its tables drawn as text if Feishu refuses them."""
        for _ in range(2):
            raw = update_body(
                card, card_id, self.next_sequence(card_id), tables=self.tables_for(card_id)
            )
            request = (
                UpdateCardRequest.builder()
                .card_id(card_id)
                .request_body(UpdateCardRequestBody(raw))
                .build()
            )
            try:
                await self._on_entity(
                    card_id, "cardkit.card.update", self.api.client.cardkit.v1.card.aupdate, request
                )
                return
            except FatalPlatformError as exc:
                if not self.drop_tables(card_id, exc):
                    raise

    async def _create_entity(self, card: Card, key: str) -> str:
        """A card entity showing ``card`` in streaming mode; created again with its tables
        drawn as text if Feishu refuses them (a continuation opens with text)."""
        for _ in range(2):
            tables = self.tables_for(key)
            data = dumps(card_json(card, streaming=True, tables=tables))
            body = CreateCardRequestBody.builder().type("card_json").data(data).build()
            request = CreateCardRequest.builder().request_body(body).build()
            try:
                response = await self.api.call(
                    "cardkit.card.create", self.api.client.cardkit.v1.card.acreate, request
                )
            except FatalPlatformError as exc:
                if not self.drop_tables(key, exc):
                    raise
                continue
            card_id = str(response.data.card_id)
            if not tables:
                self._mark(self._no_tables, card_id)
            return card_id
        raise AssertionError("unreachable")

    async def open_stream(self, target: Target, card: Card, *, key: str) -> StreamHandle:
        """Start an answer showing ``card`` (the thinking card): a CardKit entity in
        streaming mode sent by reference, or (PATCH mode) a card message."""
        if self.card_mode == "cardkit":
            card_id = self._progress.get(key)
            if not isinstance(card_id, str):
                try:
                    card_id = await self._create_entity(card, key)
                except (Refused, FatalPlatformError) as exc:
                    if isinstance(exc, CardGone):
                        raise
                    log.warning(
                        "Feishu refused a CardKit card (%s); answering with PATCHed cards "
                        "from now on",
                        exc,
                    )
                    self.card_mode = "patch"
                    # updates and closes now both PATCH the message: the limiter must
                    # count them in one window, not in CardKit's two
                    self.change_capabilities(api_names=_api_names("patch", fell_back=True))
                    card_id = None
                if card_id is not None:
                    self._remember(key, card_id)
            if isinstance(card_id, str):
                content = json.dumps({"type": "card", "data": {"card_id": card_id}})
                data = await self._send(
                    target, "interactive", content, uuid=uuid_for(key), what="a card"
                )
                ref = self._ref(data, target, mode="cardkit", card_id=card_id)
                handle = FeishuCardKitStream(self, target, ref, card_id=card_id, title=card.title)
                if card.markdown and card.status.value == "streaming":
                    await handle.push(card.markdown)  # a continuation opens with its text
                return handle
        ref = await self.send_card(target, card, key=key)
        return CardStream(self, target, ref, title=card.title)

    async def restore_stream(self, target: Target, state: Mapping[str, Any]) -> StreamHandle:
        """Rebuild the handle of a stream a crash left open (from its ``state()``)."""
        ref_state = state.get("ref")
        if not isinstance(ref_state, Mapping) or not isinstance(ref_state.get("id"), str):
            raise CardGone("no card to restore")
        conversation = ref_state.get("conversation_id")
        title = state.get("title")
        title = title if isinstance(title, str) else None
        card_id = state.get("card_id")
        if state.get("mode") == "cardkit" and isinstance(card_id, str):
            sequence = state.get("sequence")
            seen = sequence if isinstance(sequence, int) else 0
            self._sequences[card_id] = max(self._sequences.get(card_id, 0), seen + 1000)
            ref = CardRef(
                id=ref_state["id"],
                platform=self.name,
                conversation_id=conversation if isinstance(conversation, str) else None,
                data={"mode": "cardkit", "card_id": card_id},
            )
            return FeishuCardKitStream(self, target, ref, card_id=card_id, title=title)
        data = state.get("data")
        ref = CardRef(
            id=ref_state["id"],
            platform=self.name,
            conversation_id=conversation if isinstance(conversation, str) else None,
            data=dict(data) if isinstance(data, Mapping) else {"mode": "patch"},
        )
        return CardStream(self, target, ref, title=title)

    async def answer_action(self, action: CardAction, card: Card, *, key: str) -> None:
        """Replace the pressed card: through CardKit when its buttons name their entity,
        else by PATCHing the message."""
        raw_action = (action.raw.get("event") or {}).get("action") or {}
        _, _, entity = button_value(raw_action.get("value"))
        if entity:
            await self.cardkit_update(entity, card)
            return
        await self._patch_card(action.card_id, card)

    # ------------------------------------------------------------------ messages
    async def send_text(
        self, target: Target, text: str, *, markdown: bool = False, key: str
    ) -> None:
        """Send text (``text``) or markdown (a ``post`` with one ``md`` element): a reply to
        the message answered, else to the chat or user, @-mentioning ``target.mentions``.
        Longer than ``max_message_text`` bytes, it goes as several messages, in order,
        each with its own ``uuid``."""
        parts = split_bytes(text, self.settings.max_message_text)
        sent = int(self._progress.get(key, 0))
        for index, part in enumerate(parts):
            if index < sent:
                continue  # sent by an earlier attempt of this send
            mentions = target.mentions if index == 0 else ()
            if markdown:
                msg_type, content = "post", post_content(part, mentions)
            else:
                msg_type, content = "text", text_content(part, mentions)
            uuid = uuid_for(key if len(parts) == 1 else f"{key}:{index}")
            await self._send(target, msg_type, content, uuid=uuid, what="a message")
            self._remember(key, index + 1)

    async def _upload(self, kind: str, upload: Upload, key: str) -> str:
        found = self._progress.get(key)
        if isinstance(found, str):
            return found  # uploaded by an earlier attempt of this send
        limit = IMAGE_BYTES if kind == "image" else FILE_BYTES
        if upload.size > limit:
            raise FatalPlatformError(
                f"{kind} of {upload.size} bytes is larger than the {limit} bytes Feishu takes",
                code="upload.too_large",
            )
        client = self.api.client.im.v1
        if kind == "image":
            body = (
                CreateImageRequestBody.builder()
                .image_type("message")
                .image(FeishuApi.file(upload.data))
                .build()
            )
            request = CreateImageRequest.builder().request_body(body).build()
            response = await self.api.call("im.image.create", client.image.acreate, request)
            media_key = str(response.data.image_key)
        else:
            body = (
                CreateFileRequestBody.builder()
                .file_type(_file_type(upload.name))
                .file_name(upload.name)
                .file(FeishuApi.file(upload.data))
                .build()
            )
            request = CreateFileRequest.builder().request_body(body).build()
            response = await self.api.call("im.file.create", client.file.acreate, request)
            media_key = str(response.data.file_key)
        self._remember(key, media_key)
        return media_key

    async def send_image(self, target: Target, image: Upload, *, key: str) -> None:
        """Upload ``image`` (``/im/v1/images``) and send it as an image message."""
        image_key = await self._upload("image", image, key)
        await self._send(
            target, "image", image_content(image_key), uuid=uuid_for(key), what="an image"
        )

    async def send_file(self, target: Target, file: Upload, *, key: str) -> None:
        """Upload ``file`` (``/im/v1/files``, name kept) and send it as a file message."""
        file_key = await self._upload("file", file, key)
        await self._send(target, "file", file_content(file_key), uuid=uuid_for(key), what="a file")

    async def download(self, attachment: Attachment) -> bytes:
        """Fetch what a user sent: ``GET /im/v1/messages/:id/resources/:key?type=`` on the
        configured domain (never a URL from the payload)."""
        extra = attachment.extra
        message_id, kind = extra.get("message_id"), extra.get("type")
        if not attachment.id or not isinstance(message_id, str):
            raise FatalPlatformError(
                f"this {attachment.kind} has no resource key to fetch it with", code="download"
            )
        request = (
            GetMessageResourceRequest.builder()
            .message_id(message_id)
            .file_key(attachment.id)
            .type(kind if kind in ("image", "file") else "file")
            .build()
        )
        limit = self.settings.max_download_bytes
        try:
            response = await self.api.call(
                "im.message_resource.get",
                self.api.client.im.v1.message_resource.aget,
                request,
                max_bytes=limit,  # read no further than that: the body is never held whole
            )
        except AnswerTooLarge as exc:
            raise FatalPlatformError(
                f"{attachment.kind} of {exc.size} bytes or more is over max_download_bytes "
                f"({limit})",
                code="download.too_large",
            ) from None
        data = response.file.read() if response.file is not None else b""
        return bytes(data)


_FILE_TYPES = {"opus": "opus", "mp4": "mp4", "pdf": "pdf", "doc": "doc", "docx": "doc"}
_FILE_TYPES.update({"xls": "xls", "xlsx": "xls", "ppt": "ppt", "pptx": "ppt"})


def _file_type(name: str) -> str:
    """``file_type`` of ``/im/v1/files``: opus, mp4, pdf, doc, xls, ppt, else stream."""
    extension = re.sub(r".*\.", "", name.lower()) if "." in name else ""
    return _FILE_TYPES.get(extension, "stream")
