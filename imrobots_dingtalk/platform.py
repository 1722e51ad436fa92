"""The DingTalk platform: Stream mode in, StandardCard or AI card out.

:class:`DingTalkSettings` is the ``[robots.NAME.settings]`` table of a robot on
``platform = "dingtalk"``; :class:`DingTalkPlatform` implements
:class:`imrobots.Platform` on top of :mod:`.connection` (the Stream loop, acks
first), :mod:`.convert` (payloads -> core events), :mod:`.cards` (core cards ->
DingTalk JSON) and :mod:`.api` (the OpenAPI client). See
``docs/platforms/dingtalk.md``.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import attrs

from imrobots import (
    Capabilities,
    Card,
    CardAction,
    CardRef,
    CardStatus,
    EventSink,
    FatalPlatformError,
    Message,
    Platform,
    RateLimited,
    RetryableError,
    Secret,
    StreamingMode,
)

from .api import FATAL_CODES, RATE_LIMITED_CODES, RETRYABLE_CODES, DingTalkApi
from .cards import FLOW_STATUS, ai_card_params, ai_markdown, standard_card
from .connection import (
    ACK_OK,
    Ack,
    ConnectionOptions,
    FollowUp,
    Frame,
    StreamConnection,
    Subscription,
)
from .convert import MalformedPayload, get_converter, to_card_action, to_message

__all__ = [
    "BOT_MESSAGE_TOPIC",
    "CARD_CALLBACK_TOPIC",
    "DingTalkPlatform",
    "DingTalkSettings",
    "webhook_allowed",
]

log = logging.getLogger("imrobots_dingtalk")

BOT_MESSAGE_TOPIC = "/v1.0/im/bot/messages/get"
CARD_CALLBACK_TOPIC = "/v1.0/card/instances/callback"
DINGTALK_DOMAIN = "dingtalk.com"
_CARD_ACK = Ack(data='{"response":{}}')


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"expected {attribute.name} > 0, got {value}")


def _url(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        return
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected {attribute.name} to be an http(s) URL, got {value!r}")


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


def _ai_template(
    instance: DingTalkSettings, attribute: attrs.Attribute[Any], value: str | None
) -> None:
    if instance.card_mode == "ai" and not value:
        raise ValueError('expected ai_template_id to be set when card_mode = "ai"')


@attrs.frozen(kw_only=True)
class DingTalkSettings:
    """``[robots.NAME.settings]`` of a DingTalk robot. Only the credentials are required."""

    client_id: str
    """The app's Client ID (AppKey), from the developer console's credentials page."""
    client_secret: Secret = attrs.field(repr=False)
    """The app's Client Secret (AppSecret). Never logged or shown."""
    robot_code: str | None = None
    """The robot's code; internal apps use the Client ID (the default)."""
    card_mode: Literal["standard", "ai"] = "standard"
    """``standard``: the seed's StandardCard, posted then edited (legacy API, closed to
    apps created after 2024-12-31). ``ai``: an AI card instance streamed natively."""
    ai_template_id: str | None = attrs.field(default=None, validator=_ai_template)
    """The AI card template (``xxx.schema``) from the card platform; required for ``ai``."""
    ai_content_key: str = "msgContent"
    """The template's markdown variable that streaming updates write."""
    openapi_endpoint: str = attrs.field(default="https://api.dingtalk.com", validator=_url)
    """Base URL of the OpenAPI (tokens, cards, robot messages)."""
    gateway_endpoint: str | None = attrs.field(default=None, validator=_url)
    """Base URL of ``/v1.0/gateway/connections/open``; default: ``openapi_endpoint``."""
    webhook_hosts: tuple[str, ...] = attrs.field(default=(), validator=_hosts)
    """Extra sessionWebhook hosts (``host`` or ``host:port``) to accept besides
    ``*.dingtalk.com``, e.g. ``"127.0.0.1:8790"`` for the emulator."""
    at_sender: bool = True
    """In groups, @-mention the sender in answer cards and replies."""
    robot_names: tuple[str, ...] = attrs.field(default=(), validator=_list)
    """Display names of the robot: a leading ``@name`` is removed from message text."""
    app_rate: float = attrs.field(default=20.0, validator=_positive)
    """Requests per second the app may make (DingTalk standard edition: 20 per API)."""
    update_interval: float = attrs.field(default=1.0, validator=_positive)
    """Minimum seconds between two updates of one card."""
    max_updates: int | None = attrs.field(default=None, validator=_positive)
    """Cap on updates per card (the final one included); ``None``: no cap."""
    max_text: int | None = attrs.field(default=None, validator=_positive)
    """Characters of markdown per card before the answer continues in a new card."""
    request_timeout: float = attrs.field(default=10.0, validator=_positive)
    """Seconds one HTTP call may take."""
    connect_timeout: float = attrs.field(default=30.0, validator=_positive)
    """Seconds ``start`` waits for the first stream connection."""
    ping_interval: float = attrs.field(default=20.0, validator=_positive)
    """Seconds between WebSocket pings the client sends."""
    idle_timeout: float = attrs.field(default=60.0, validator=_positive)
    """Seconds without any frame or pong after which a connection is presumed dead."""
    reconnect_initial: float = attrs.field(default=0.5, validator=_positive)
    """First reconnect delay; doubles per failed attempt (with jitter)."""
    reconnect_max: float = attrs.field(default=30.0, validator=_positive)
    """Longest reconnect delay."""
    local_ip: str | None = None
    """``localIp`` sent when opening a connection (diagnostic only); default: not sent."""

    @property
    def gateway(self) -> str:
        return (self.gateway_endpoint or self.openapi_endpoint).rstrip("/")

    @property
    def robot(self) -> str:
        return self.robot_code or self.client_id


def webhook_allowed(url: str, extra_hosts: tuple[str, ...]) -> bool:
    """Whether a sessionWebhook URL may be posted to.

    Allowed: ``https`` URLs on ``dingtalk.com`` or a subdomain, and any URL whose
    ``host`` or ``host:port`` is in ``extra_hosts``.
    """
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return False
    if not host or parts.scheme not in ("http", "https"):
        return False
    allowed = {h.lower() for h in extra_hosts}
    if host in allowed or (port is not None and f"{host}:{port}" in allowed):
        return True
    is_dingtalk = host == DINGTALK_DOMAIN or host.endswith("." + DINGTALK_DOMAIN)
    return is_dingtalk and parts.scheme == "https"


class DingTalkPlatform(Platform):
    """A robot's connection to DingTalk (Stream mode). See the module docstring."""

    name = "dingtalk"

    def __init__(self, settings: DingTalkSettings) -> None:
        self.settings = settings
        s = settings
        self.capabilities = Capabilities(
            streaming=StreamingMode.NATIVE if s.card_mode == "ai" else StreamingMode.EDIT,
            app_rate=s.app_rate,
            update_interval=s.update_interval,
            max_updates=s.max_updates,
            max_text=s.max_text,
            rate_limited_codes=RATE_LIMITED_CODES,
            retryable_codes=RETRYABLE_CODES,
            fatal_codes=FATAL_CODES,
        )
        self._session: aiohttp.ClientSession | None = None
        self._api: DingTalkApi | None = None
        self.connection: StreamConnection | None = None
        self._sink: EventSink | None = None
        get_converter()  # build the payload converter now, not on the first message

    def __repr__(self) -> str:
        return f"DingTalkPlatform(client_id={self.settings.client_id!r})"

    def describe(self) -> str:
        s = self.settings
        return (
            f"dingtalk stream mode, app {s.client_id}, {s.card_mode} cards, "
            f"gateway {s.gateway}, openapi {s.openapi_endpoint}"
        )

    # ------------------------------------------------------------------ lifecycle
    def _http(self) -> tuple[aiohttp.ClientSession, DingTalkApi]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100, ttl_dns_cache=300),
                headers={"User-Agent": "imrobots-dingtalk/0.1"},
            )
            self._api = DingTalkApi(
                self._session,
                endpoint=self.settings.openapi_endpoint,
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
        """Fetch a token (checks the credentials), then open the stream connection."""
        self._sink = sink
        session, api = self._http()
        s = self.settings
        try:
            try:
                await api.access_token()
            except RetryableError as exc:  # a network blip: the connection loop retries
                log.warning("could not fetch a DingTalk access token yet: %s", exc)
            self.connection = StreamConnection(
                session,
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
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
        self._sink = None

    # ------------------------------------------------------------------ inbound
    def _on_frame(self, frame: Frame) -> tuple[Ack, FollowUp | None]:
        """Convert a CALLBACK frame; the connection sends the ack, then runs the follow-up."""
        sink = self._sink
        if frame.topic == BOT_MESSAGE_TOPIC:
            try:
                message = to_message(json.loads(frame.data), robot_names=self.settings.robot_names)
            except (ValueError, MalformedPayload) as exc:
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
            if sink is None:
                return ACK_OK, None
            return ACK_OK, lambda: sink(message)
        if frame.topic == CARD_CALLBACK_TOPIC:
            try:
                action: CardAction = to_card_action(
                    json.loads(frame.data), callback_id=frame.message_id, time_ms=frame.time_ms
                )
            except (ValueError, MalformedPayload) as exc:
                log.warning("dropped malformed card callback %s: %s", frame.message_id, exc)
                return Ack(code=400, message=f"bad data: {exc}"[:200]), None
            if sink is None:
                return _CARD_ACK, None
            return _CARD_ACK, lambda: sink(action)
        log.warning("ignored a push on unknown topic %r (%s)", frame.topic, frame.message_id)
        return Ack(code=404, message="topic not supported"), None

    # ------------------------------------------------------------------ outbound helpers
    @staticmethod
    def _payload(to: Message) -> Mapping[str, Any]:
        return to.raw if isinstance(to.raw, Mapping) else {}

    def _sender_staff_id(self, to: Message) -> str | None:
        """The sender's userId (staff id); ``None`` when DingTalk sent only the encrypted id."""
        payload = self._payload(to)
        staff = payload.get("senderStaffId") if payload else to.sender.id
        return str(staff) if staff else None

    def _at_sender(self, to: Message) -> str | None:
        """The staff id to @-mention in a group answer, if any."""
        if not (self.settings.at_sender and to.conversation.is_group):
            return None
        return self._sender_staff_id(to)

    def _staff_id(self, to: Message) -> str:
        staff = self._sender_staff_id(to)
        if not staff:
            raise FatalPlatformError(
                "cannot send a card to this direct chat: DingTalk sent no senderStaffId "
                "(is the robot published?)"
            )
        return str(staff)

    @staticmethod
    def _new_card_id() -> str:
        return uuid.uuid4().hex

    # ------------------------------------------------------------------ cards
    async def send_card(self, to: Message, card: Card) -> CardRef:
        """Send ``card`` into the conversation of ``to`` (a StandardCard or an AI card)."""
        card_id = self._new_card_id()
        if self.settings.card_mode == "ai":
            await self.api.call(
                "POST", "/v1.0/card/instances/createAndDeliver", self._ai_create(to, card, card_id)
            )
        else:
            await self.api.call(
                "POST",
                "/v1.0/im/v1.0/robot/interactiveCards/send",
                self._standard_send(to, card, card_id),
            )
        return CardRef(
            id=card_id,
            platform=self.name,
            conversation_id=to.conversation.id,
            data={"mode": self.settings.card_mode, "inputing": card.status is CardStatus.STREAMING},
        )

    def _standard_send(self, to: Message, card: Card, card_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "cardTemplateId": "StandardCard",
            "cardBizId": card_id,
            "robotCode": self.settings.robot,
            "cardData": json.dumps(standard_card(card), ensure_ascii=False),
        }
        options: dict[str, Any] = {"atAll": False}
        if to.conversation.is_group:
            body["openConversationId"] = to.conversation.id
            staff = self._at_sender(to)
            if staff:
                at = [{"nickName": to.sender.name or staff, "userId": staff}]
                options["atUserListJson"] = json.dumps(at, ensure_ascii=False)
        else:
            body["singleChatReceiver"] = json.dumps({"userId": self._staff_id(to)})
        body["sendOptions"] = options
        return body

    def _ai_create(self, to: Message, card: Card, card_id: str) -> dict[str, Any]:
        s = self.settings
        body: dict[str, Any] = {
            "cardTemplateId": s.ai_template_id,
            "outTrackId": card_id,
            "cardData": {"cardParamMap": ai_card_params(card, content_key=s.ai_content_key)},
            "callbackType": "STREAM",
            "imGroupOpenSpaceModel": {"supportForward": True},
            "imRobotOpenSpaceModel": {"supportForward": True},
            "userIdType": 1,
        }
        if to.conversation.is_group:
            body["openSpaceId"] = f"dtv1.card//IM_GROUP.{to.conversation.id}"
            deliver: dict[str, Any] = {"robotCode": s.robot}
            staff = self._at_sender(to)
            if staff:
                deliver["atUserIds"] = {staff: to.sender.name or staff}
            body["imGroupOpenDeliverModel"] = deliver
        else:
            body["openSpaceId"] = f"dtv1.card//IM_ROBOT.{self._staff_id(to)}"
            body["imRobotOpenDeliverModel"] = {"spaceType": "IM_ROBOT", "robotCode": s.robot}
        return body

    def _mode(self, ref: CardRef) -> str:
        mode = ref.data.get("mode") if isinstance(ref.data, Mapping) else None
        return mode if isinstance(mode, str) else self.settings.card_mode

    async def update_card(self, ref: CardRef, card: Card) -> None:
        """Replace the card's content; terminal states finalize an AI card.

        AI cards: the markdown goes through ``PUT /v1.0/card/streaming`` (with
        ``isFinalize`` or ``isError`` for a final or error card), then title, status
        and buttons through ``PUT /v1.0/card/instances``.
        """
        if self._mode(ref) != "ai":
            standard = {
                "cardBizId": ref.id,
                "cardData": json.dumps(standard_card(card), ensure_ascii=False),
            }
            await self.api.call(
                "PUT", "/v1.0/im/robots/interactiveCards", standard, card_update=True
            )
            return
        terminal = card.status.is_terminal
        await self._stream(
            ref,
            ai_markdown(card),
            finalize=terminal and card.status is not CardStatus.ERROR,
            error=card.status is CardStatus.ERROR,
        )
        if terminal or card.buttons:
            params = ai_card_params(card, content_key=self.settings.ai_content_key, content=False)
            body: dict[str, Any] = {
                "outTrackId": ref.id,
                "cardData": {"cardParamMap": params},
                "cardUpdateOptions": {"updateCardDataByKey": True},
            }
            await self.api.call("PUT", "/v1.0/card/instances", body, card_update=True)

    async def stream_update(self, ref: CardRef, text: str, *, final: bool = False) -> None:
        """Show ``text`` (the whole answer so far) in an AI card."""
        if self._mode(ref) != "ai":
            raise NotImplementedError("stream_update needs card_mode = 'ai'")
        state = ref.data
        if isinstance(state, dict) and not state.get("inputing"):
            # As the SDK's AI card does: flowStatus 2 ("inputing") before the first text.
            body = {
                "outTrackId": ref.id,
                "cardData": {"cardParamMap": {"flowStatus": FLOW_STATUS[CardStatus.STREAMING]}},
                "cardUpdateOptions": {"updateCardDataByKey": True},
            }
            await self.api.call("PUT", "/v1.0/card/instances", body, card_update=True)
            state["inputing"] = True
        await self._stream(ref, text, finalize=final, error=False)

    async def _stream(self, ref: CardRef, text: str, *, finalize: bool, error: bool) -> None:
        body = {
            "outTrackId": ref.id,
            "guid": uuid.uuid4().hex,
            "key": self.settings.ai_content_key,
            "content": text or " ",
            "isFull": True,
            "isFinalize": finalize,
            "isError": error,
        }
        await self.api.call("PUT", "/v1.0/card/streaming", body, card_update=True)

    # ------------------------------------------------------------------ text
    async def send_text(self, to: Message, text: str, *, markdown: bool = False) -> None:
        """Reply through the message's sessionWebhook; after it expired, through the
        robot message API (``groupMessages/send`` / ``oToMessages/batchSend``)."""
        payload = self._payload(to)
        url = payload.get("sessionWebhook")
        expires = payload.get("sessionWebhookExpiredTime")
        expired = isinstance(expires, int | float) and expires / 1000 < time.time() + 5
        if isinstance(url, str) and url and not expired:
            if not webhook_allowed(url, self.settings.webhook_hosts):
                host = urlsplit(url).netloc or "?"
                raise FatalPlatformError(
                    f"refused to post to sessionWebhook host {host!r}: not an https "
                    "*.dingtalk.com URL and not in settings webhook_hosts",
                    code="webhook.host",
                )
            answer = await self.api.post_webhook(url, self._webhook_body(to, text, markdown))
            errcode = answer.get("errcode", 0) if isinstance(answer, dict) else 0
            if errcode in (0, None):
                return
            errmsg = answer.get("errmsg", "") if isinstance(answer, dict) else ""
            if errcode != 300001:  # 300001: session gone; fall back to the OpenAPI
                host = urlsplit(url).netloc or "?"
                text_error = (
                    f"DingTalk sessionWebhook ({host}) refused the reply: {errcode} {errmsg}"
                )
                if errcode == 130101:
                    raise RateLimited(text_error, code=str(errcode), retry_after=60.0)
                raise FatalPlatformError(text_error, code=str(errcode))
            log.info("sessionWebhook of %s expired; sending through the OpenAPI", to.id)
        await self._send_robot_message(to, text, markdown)

    def _webhook_body(self, to: Message, text: str, markdown: bool) -> dict[str, Any]:
        staff = self._at_sender(to)
        at = [staff] if staff else []
        body: dict[str, Any]
        if markdown:
            title = text.strip().splitlines()[0][:40] if text.strip() else "reply"
            body = {"msgtype": "markdown", "markdown": {"title": title, "text": text}}
        else:
            body = {"msgtype": "text", "text": {"content": text}}
        body["at"] = {"atUserIds": at, "isAtAll": False}
        return body

    async def _send_robot_message(self, to: Message, text: str, markdown: bool) -> None:
        if markdown:
            title = text.strip().splitlines()[0][:40] if text.strip() else "reply"
            key, param = "sampleMarkdown", {"title": title, "text": text}
        else:
            key, param = "sampleText", {"content": text}
        body: dict[str, Any] = {
            "robotCode": self.settings.robot,
            "msgKey": key,
            "msgParam": json.dumps(param, ensure_ascii=False),
        }
        if to.conversation.is_group:
            body["openConversationId"] = to.conversation.id
            await self.api.call("POST", "/v1.0/robot/groupMessages/send", body)
        else:
            body["userIds"] = [self._staff_id(to)]
            await self.api.call("POST", "/v1.0/robot/oToMessages/batchSend", body)
