"""The WeCom server-side emulator: the robot long connection, app routes, callbacks, faults.

**Robot mode** (PROTOCOLS 4c): a WebSocket at ``/`` (the SDK's ``ws_url``) speaking JSON
frames ``{cmd?, headers: {req_id}, body?, errcode?, errmsg?}``.

- ``aibot_subscribe`` checks ``bot_id``/``secret`` (a wrong one is acked with a non-zero
  errcode, 40001 (UNCONFIRMED: the real code is not documented) and nothing else is
  accepted on that socket). A second subscription of the same bot takes over: the older
  socket gets an ``aibot_event_callback`` with ``disconnected_event`` and is closed, so
  one connection per bot is live (PROTOCOLS 4c, inferred from the SDK).
- ``ping`` is acked ``{headers: {req_id}, errcode: 0}``; every client frame is acked with
  its own ``req_id``, in order. A frame holding a lone surrogate (``parse_json_strict``)
  is acked 40058 and not taken (UNCONFIRMED), as is an app-mode body holding one. A
  frame with no ``req_id`` to ack (binary, not JSON, not a JSON object) is dropped with
  a warning naming the connection and bot; the connection goes on (UNCONFIRMED).
- Pushes: ``aibot_msg_callback`` / ``aibot_event_callback`` with a fresh ``req_id``
  bound to the socket it went out on. Replies (``aibot_respond_msg``,
  ``aibot_respond_welcome_msg``, ``aibot_respond_update_msg``) must reuse a ``req_id``
  of the live socket, else 846605 "invalid req_id" (seen after reconnects, PROTOCOLS 4c).
- Stream replies: ``{"msgtype": "stream", "stream": {id, finish, content}}`` carry the
  whole text; ``stream_lifetime`` seconds (360 by default, configurable) after the
  user's message a stream refuses updates with 846608 "stream message update expired"
  (counted from the message: UNCONFIRMED whether WeCom counts from the message or from
  the last update). Content over ``max_stream_bytes`` (20,480) is truncated, as WeCom
  does (PROTOCOLS 4c).
- ``aibot_respond_update_msg`` answers a ``template_card_event`` within
  ``update_window`` (5 s) and ``aibot_respond_welcome_msg`` an ``enter_chat`` within
  ``welcome_window`` (5 s); later ones get 846605 (UNCONFIRMED code).
- ``aibot_send_msg`` (markdown, template_card, media) to a user id or group chat id;
  the chunked upload ``aibot_upload_media_init/chunk/finish`` (≤512 KB chunks, ≤100;
  the sizes of temporary media: more than 5 bytes, images ≤ 10 MB, files ≤ 20 MB,
  answered 40006 beyond, UNCONFIRMED on the long connection; ``total_size`` and ``md5``
  checked at ``finish``). Media messages (``image``/``file`` by ``media_id``) answer a
  message (``aibot_respond_msg``) or go proactively (``aibot_send_msg``).

**App mode** (PROTOCOLS 4a): ``GET /cgi-bin/gettoken``, ``POST /cgi-bin/message/send``
(markdown ≤ 2,048 bytes; per member 30/min and 1,000/h, answered 45009 by default,
or silently dropped as WeCom documents, with ``member_limit_mode="drop"``),
``POST /cgi-bin/appchat/send`` (markdown, or image/file by ``media_id``),
``POST /cgi-bin/media/upload`` (multipart ``media``, the same size caps); encrypted XML
callbacks POSTed to the app's ``callback_url`` and retried (3 attempts in all) when not
answered 200 within ``callback_timeout`` (5 s); the URL check (``verify_url``).
``message/send`` also takes ``template_card`` (``button_interaction`` with 1-6 buttons,
``text_notice`` with its required ``card_action`` link, the other types stored as sent;
``task_id`` of ``[A-Za-z0-9_@-]``, at most 128, unique per app; path/90236) and answers
a ``response_code``. A press (:meth:`WeComEmulator.press_app`) POSTs an encrypted
``template_card_event`` (``EventKey``, ``TaskId``, ``CardType``, ``ResponseCode``;
path/90240) to the callback URL, retried like messages. ``POST
/cgi-bin/message/update_template_card`` takes a ``response_code`` once, within
``response_code_ttl`` (72 hours; path/94888), and replaces the card (``template_card``)
or greys its buttons out (``button.replace_name``); an unknown, used or expired code is
refused 40058 (UNCONFIRMED: WeCom's code is not documented in our sources).
``GET /cgi-bin/media/get`` serves media by ``media_id`` (uploaded, or sent by a user in
an app callback: :meth:`WeComEmulator.store_media`), 40007 for an unknown one (path/90254).

Faults: ``errors`` (a share of calls answered -1 "system busy"), ``rate_limit`` (45009),
``latency``, ``drop`` (sockets aborted; pushes are held until a new subscription) and
``lost_answers`` (a share of calls take effect and are never answered: no ack on the
long connection, the HTTP connection aborted in app mode); ``call_fault`` aims a fault
at chosen calls of the long connection (tests).
Every robot call is recorded and reported to listeners (:meth:`WeComEmulator.on_change`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import random
import secrets
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Literal
from xml.sax.saxutils import escape

import aiohttp
import attrs
from aiohttp import web

from imrobots.emulation import control_guard, new_token
from imrobots.platform import (
    LoneSurrogate,
    dump_json,
    escape_surrogates,
    parse_json,
    parse_json_strict,
)

from ..crypto import CallbackCrypto, encrypt_media, new_media_key

__all__ = [
    "ERR_INVALID_REQ_ID",
    "ERR_RATE_LIMITED",
    "ERR_STREAM_EXPIRED",
    "ERR_SYSTEM_BUSY",
    "WeComApp",
    "WeComBot",
    "WeComEmulator",
]

log = logging.getLogger("imrobots.wecom.emulator")

ERR_STREAM_EXPIRED = 846608
"""846608 "stream message update expired" (sunnoy/openclaw-plugin-wecom#107)."""
ERR_INVALID_REQ_ID = 846605
"""846605 "invalid req_id" (PROTOCOLS 4c)."""
ERR_SYSTEM_BUSY = -1
"""-1 "system busy": WeCom's global retryable code."""
ERR_RATE_LIMITED = 45009
"""45009 "api freq out of limit" (PROTOCOLS 4a/4e; on the long connection UNCONFIRMED)."""
ERR_AUTH = 40001
"""Answer to a bad subscription (UNCONFIRMED: WeCom's global "invalid credential")."""
ERR_BAD_REQUEST = 40058
"""WeCom's global "invalid parameter"; used for malformed frames (UNCONFIRMED here)."""
ERR_TOKEN = 40014
ERR_CONTENT_TOO_LONG = 45002
ERR_MEDIA_SIZE = 40006
"""WeCom's global "invalid file size" (UNCONFIRMED on the long connection)."""
ERR_MEDIA_ID = 40007
"""WeCom's global "invalid media_id"."""
MAX_CHUNK_BYTES = 512 * 1024
MAX_CHUNKS = 100
MEDIA_CAPS = {"image": 10 * 1024 * 1024, "voice": 2 * 1024 * 1024, "video": 10 * 1024 * 1024}
"""Temporary media caps by type (WeCom doc path/90253); other types are files."""
MAX_MEDIA_FILE = 20 * 1024 * 1024
MIN_MEDIA_BYTES = 5
"""Media must be larger than 5 bytes (path/90253)."""


def media_cap(media_type: str) -> int:
    """The largest upload of ``media_type``, in bytes."""
    return MEDIA_CAPS.get(media_type, MAX_MEDIA_FILE)


Listener = Callable[[dict[str, Any]], None]
CallFault = Callable[[str, dict[str, Any]], int | Literal["lost"] | None]
"""See :attr:`WeComEmulator.call_fault`."""
_FAULT_MESSAGES = {ERR_SYSTEM_BUSY: "system busy", ERR_RATE_LIMITED: "api freq out of limit"}


def _truncate(text: str, limit: int) -> tuple[str, bool]:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text, False
    return data[:limit].decode("utf-8", "ignore"), True


@attrs.define(eq=False)
class _Socket:
    id: int
    ws: web.WebSocketResponse
    bot: WeComBot | None = None
    lock: asyncio.Lock = attrs.field(factory=asyncio.Lock)
    silent: bool = False
    """Black-holed: nothing is sent or read on it any more (see ``blackhole``)."""


@attrs.define
class Callback:
    """A push to the robot and what may still answer it."""

    req_id: str
    socket: int
    at: float
    kind: Literal["msg", "event"]
    body: dict[str, Any]
    conversation_id: str
    eventtype: str | None = None
    template_used: bool = False
    answered: float | None = None
    """When the first reply frame on this ``req_id`` was read (monotonic), for benches."""


@attrs.define
class CardRecord:
    """A stream reply or a template card, as the chat shows it."""

    id: str
    bot_id: str
    conversation_id: str
    kind: Literal["stream", "template_card"]
    content: str = ""
    finished: bool = False
    template: dict[str, Any] | None = None
    updates: int = 0
    truncated: bool = False
    reply_to: str | None = None
    replaced: str | None = None
    """App mode: the text the buttons were greyed out with (``button.replace_name``)."""
    created: float = attrs.field(factory=time.time)
    updated: float = attrs.field(factory=time.time)

    def view(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class WeComBot:
    """An intelligent robot (bot id and secret) and its live connection."""

    bot_id: str
    secret: str = attrs.field(repr=False)
    name: str = "Robot"
    socket: _Socket | None = None
    callbacks: dict[str, Callback] = attrs.field(factory=dict)
    held: list[tuple[str, dict[str, Any]]] = attrs.field(factory=list)
    sent: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    """msgid -> the body pushed, for redelivery."""
    subscriptions: int = 0


@attrs.define
class WeComApp:
    """A self-built app (CorpID, Secret, AgentId, callback Token and EncodingAESKey)."""

    corp_id: str
    secret: str = attrs.field(repr=False)
    agent_id: int
    token: str = attrs.field(repr=False)
    encoding_aes_key: str = attrs.field(repr=False)
    callback_url: str | None = None
    tokens: dict[str, float] = attrs.field(factory=dict, repr=False)
    member_sends: dict[str, deque[float]] = attrs.field(factory=dict)
    sent: dict[str, str] = attrs.field(factory=dict)
    """MsgId -> plaintext XML, for redelivery."""
    task_ids: set[str] = attrs.field(factory=set)
    """task_ids of the template cards the app sent (unique per app)."""
    response_codes: dict[str, ResponseCode] = attrs.field(factory=dict, repr=False)

    @property
    def crypto(self) -> CallbackCrypto:
        return CallbackCrypto(self.token, self.encoding_aes_key, self.corp_id)


@attrs.define
class ResponseCode:
    """A ``response_code``: one ``update_template_card`` of card ``task_id``."""

    task_id: str
    expires: float
    """monotonic"""
    used: bool = False


@attrs.define
class Delivery:
    """One attempt to POST an app callback."""

    msg_id: str
    attempt: int
    status: int | None
    latency: float
    error: str | None = None


class WeComEmulator:
    """WeCom's server side on 127.0.0.1. See the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        stream_lifetime: float = 360.0,
        max_stream_bytes: int = 20480,
        max_markdown_bytes: int = 20480,
        app_markdown_bytes: int = 2048,
        update_window: float = 5.0,
        welcome_window: float = 5.0,
        callback_timeout: float = 5.0,
        callback_attempts: int = 3,
        callback_retry_delay: float = 0.2,
        member_limit_mode: Literal["error", "drop"] = "error",
        member_per_minute: int = 30,
        member_per_hour: int = 1000,
        member_minute: float = 60.0,
        member_hour: float = 3600.0,
        response_code_ttl: float = 72 * 3600.0,
        seed: int | None = None,
    ) -> None:
        self.host = host
        self.control_token = new_token()
        """What the control API's ``POST`` routes need (``X-Imrobots-Token``)."""
        self.port = port
        self.stream_lifetime = stream_lifetime
        self.max_stream_bytes = max_stream_bytes
        self.max_markdown_bytes = max_markdown_bytes
        self.app_markdown_bytes = app_markdown_bytes
        self.update_window = update_window
        self.welcome_window = welcome_window
        self.callback_timeout = callback_timeout
        self.callback_attempts = callback_attempts
        self.callback_retry_delay = callback_retry_delay
        self.member_limit_mode = member_limit_mode
        self.member_per_minute = member_per_minute
        self.member_per_hour = member_per_hour
        self.member_minute = member_minute
        """Seconds ``member_per_minute`` is counted over (60; tests shorten it)."""
        self.member_hour = member_hour
        """Seconds ``member_per_hour`` is counted over (3,600; tests shorten it)."""
        self.pic_fetches = 0
        """Requests for an image callback's ``PicUrl`` (see :meth:`_pic`)."""
        self.response_code_ttl = response_code_ttl
        """Seconds a response_code can be used (72 hours; tests shorten it)."""
        self.bots: dict[str, WeComBot] = {}
        self.apps: dict[str, WeComApp] = {}
        self.cards: dict[str, CardRecord] = {}
        self.messages: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        self.deliveries: list[Delivery] = []
        self.uploads: dict[str, dict[str, Any]] = {}
        self.media: dict[str, tuple[str, bytes, str]] = {}
        """media_id -> (type, content, filename) of finished uploads."""
        self.sent_media: list[dict[str, Any]] = []
        """Media messages the robots sent: conversation_id, msgtype, name, data, who."""
        self.files: dict[str, bytes] = {}
        """download token -> encrypted content served at ``/_emulator/files/{token}``."""
        self.ack_pings = True
        """False: pings go unanswered (a dead connection, for heartbeat tests)."""
        self.groups: set[str] = set()
        """Group chat ids seen in pushes (a send to any other chatid goes to a user)."""
        self.failure_rate = 0.0
        self.rate_limit_rate = 0.0
        self.lost_answer_rate = 0.0
        """Share of the robot's calls that take effect and are never answered (no ack on
        the long connection; the HTTP connection aborted in app mode)."""
        self.call_fault: CallFault | None = None
        """A fault aimed at chosen calls (tests): called with each robot call on the long
        connection (``cmd``, ``body``) before the share faults; returns an errcode to
        answer instead of acting, ``"lost"`` (the call takes effect, its ack never
        comes), or ``None`` (no fault from it)."""
        self.latency = 0.0
        self._random = random.Random(seed)
        self._ids = itertools.count(1)
        self._sockets: set[_Socket] = set()
        self._listeners: list[Listener] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connected = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(
            client_max_size=64 * 1024 * 1024, middlewares=[control_guard(self.control_token)]
        )
        app.router.add_get("/", self._websocket)
        app.router.add_get("/cgi-bin/gettoken", self._gettoken)
        app.router.add_post("/cgi-bin/message/send", self._message_send)
        app.router.add_post("/cgi-bin/appchat/send", self._appchat_send)
        app.router.add_post("/cgi-bin/media/upload", self._media_upload)
        app.router.add_get("/cgi-bin/media/get", self._media_get)
        app.router.add_get("/_emulator/pic/{media_id}", self._pic)
        app.router.add_post("/cgi-bin/message/update_template_card", self._update_template_card)
        app.router.add_get("/_emulator/files/{token}", self._file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = _bind(self.host, self.port)
        self.port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for sock in list(self._sockets):
            with contextlib.suppress(Exception):
                await sock.ws.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def on_change(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` on every change; returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _emit(self, event: dict[str, Any]) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("emulator listener failed")

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ set-up
    def add_bot(self, bot_id: str, secret: str, *, name: str = "Robot") -> WeComBot:
        bot = WeComBot(bot_id=bot_id, secret=secret, name=name)
        self.bots[bot_id] = bot
        return bot

    def add_app(
        self,
        corp_id: str,
        secret: str,
        *,
        agent_id: int = 1000002,
        token: str | None = None,
        encoding_aes_key: str | None = None,
    ) -> WeComApp:
        key = encoding_aes_key or secrets.token_urlsafe(40).replace("-", "a").replace("_", "b")[:43]
        app = WeComApp(
            corp_id=corp_id,
            secret=secret,
            agent_id=agent_id,
            token=token or secrets.token_hex(8),
            encoding_aes_key=key,
        )
        self.apps[corp_id] = app
        return app

    def set_failure_rate(self, share: float) -> None:
        self.failure_rate = share

    def set_rate_limit_rate(self, share: float) -> None:
        self.rate_limit_rate = share

    def set_lost_answer_rate(self, share: float) -> None:
        self.lost_answer_rate = share

    def _lose(self) -> bool:
        """Whether this call's answer is lost (after it took effect)."""
        return self.lost_answer_rate > 0 and self._random.random() < self.lost_answer_rate

    def set_latency(self, seconds: float) -> None:
        self.latency = seconds

    def store_file(self, data: bytes) -> tuple[str, str]:
        """Store ``data`` encrypted with a fresh media key; returns ``(url, aeskey)``."""
        aeskey = new_media_key()
        token = uuid.uuid4().hex
        self.files[token] = encrypt_media(data, aeskey)
        return f"{self.base_url}/_emulator/files/{token}", aeskey

    async def _file(self, request: web.Request) -> web.StreamResponse:
        data = self.files.get(request.match_info["token"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/octet-stream")

    # ------------------------------------------------------------------ recording
    def _record_call(self, method: str, route: str, errcode: int, started: float, who: str) -> None:
        status = 200
        if errcode == ERR_RATE_LIMITED:
            status = 429
        elif errcode == ERR_SYSTEM_BUSY:
            status = 503
        elif errcode != 0:
            status = 400
        call = {
            "time": time.time(),
            "method": method,
            "route": route,
            "status": status,
            "error": str(errcode) if errcode else None,
            "rate_limited": errcode == ERR_RATE_LIMITED,
            "latency_ms": round((time.monotonic() - started) * 1000, 1),
            "who": who,
        }
        self.calls.append(call)
        self._emit({"kind": "call", "call": call})

    def _record_message(
        self,
        conversation_id: str,
        text: str,
        *,
        who: str,
        receivers: list[str] | None = None,
        msgtype: str = "markdown",
    ) -> None:
        message = {
            "conversation_id": conversation_id,
            "text": text,
            "who": who,
            "receivers": receivers or [],
            "msgtype": msgtype,
            "time": time.time(),
        }
        self.messages.append(message)
        self._emit({"kind": "message", "message": message})

    def _card_changed(self, card: CardRecord) -> None:
        card.updated = time.time()
        self._emit({"kind": "card", "card": card.view()})

    def _fault(self) -> int:
        """An injected error code for this call, or 0."""
        roll = self._random.random()
        if roll < self.failure_rate:
            return ERR_SYSTEM_BUSY
        if roll < self.failure_rate + self.rate_limit_rate:
            return ERR_RATE_LIMITED
        return 0

    # ------------------------------------------------------------------ websocket
    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=8 * 1024 * 1024)
        await ws.prepare(request)
        sock = _Socket(id=next(self._ids), ws=ws)
        self._sockets.add(sock)
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self._drop_frame(sock, f"a binary frame ({len(msg.data)} bytes)")
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    frame = parse_json_strict(msg.data, where="frame")
                except LoneSurrogate as exc:
                    await self._refuse_frame(sock, msg.data, exc)
                    continue
                except ValueError:
                    self._drop_frame(sock, f"a text frame that is not JSON ({len(msg.data)} chars)")
                    continue
                if isinstance(frame, dict):
                    await self._on_frame(sock, frame)
                else:
                    self._drop_frame(sock, f"a JSON {type(frame).__name__}, not an object")
        finally:
            self._sockets.discard(sock)
            bot = sock.bot
            if bot is not None and bot.socket is sock:
                bot.socket = None
                self._emit({"kind": "connection", "event": "close", "bot_id": bot.bot_id})
        return ws

    async def _send(self, sock: _Socket, frame: dict[str, Any]) -> None:
        await self._send_text(sock, json.dumps(frame, ensure_ascii=False))

    async def _send_text(self, sock: _Socket, text: str) -> None:
        async with sock.lock:
            if not sock.ws.closed and not sock.silent:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await sock.ws.send_str(text)

    def _drop_frame(self, sock: _Socket, what: str) -> None:
        """Log a robot's frame the emulator cannot read (binary, not JSON, not a JSON
        object) and take nothing of it; the connection goes on. It has no ``req_id`` to
        answer to. UNCONFIRMED: what WeCom does with such a frame."""
        bot = sock.bot.bot_id if sock.bot is not None else "not subscribed"
        log.warning(
            "dropped %s on robot connection %d (bot %s): WeCom frames are JSON objects",
            what,
            sock.id,
            bot,
        )

    async def _refuse_frame(self, sock: _Socket, text: str, problem: LoneSurrogate) -> None:
        """Answer a robot's frame holding a lone surrogate (``parse_json_strict``) with
        errcode 40058 and its own ``req_id``, and take nothing of it; the connection goes
        on. UNCONFIRMED: what WeCom answers to such a frame (40058 is its "invalid
        parameter", which the emulator gives other malformed frames)."""
        started = time.monotonic()
        frame = parse_json(text, where="frame")  # read once already: it parses
        headers = frame.get("headers") if isinstance(frame, dict) else None
        req_id = headers.get("req_id") if isinstance(headers, dict) else None
        cmd = escape_surrogates(frame.get("cmd") or "") if isinstance(frame, dict) else ""
        log.warning("refused a %s frame on the robot's long connection: %s", cmd or "?", problem)
        bot = sock.bot
        if bot is not None and bot.socket is sock:
            self._record_call("WS", cmd, ERR_BAD_REQUEST, started, bot.bot_id)
        answer = {
            "headers": {"req_id": req_id if isinstance(req_id, str) else ""},
            "errcode": ERR_BAD_REQUEST,
            "errmsg": f"invalid parameter: {problem}",
        }
        # dump_json writes a lone surrogate in the req_id as its escape: the client reads
        # back the req_id it sent
        await self._send_text(sock, dump_json(answer).decode())

    async def _ack(
        self, sock: _Socket, req_id: str, errcode: int, errmsg: str = "", body: Any = None
    ) -> None:
        frame: dict[str, Any] = {
            "headers": {"req_id": req_id},
            "errcode": errcode,
            "errmsg": errmsg or ("ok" if errcode == 0 else "error"),
        }
        if body is not None:
            frame["body"] = body
        await self._send(sock, frame)

    async def _on_frame(self, sock: _Socket, frame: dict[str, Any]) -> None:
        cmd = str(frame.get("cmd") or "")
        headers = frame.get("headers")
        req_id = str(headers.get("req_id") or "") if isinstance(headers, dict) else ""
        body = frame.get("body") if isinstance(frame.get("body"), dict) else {}
        assert isinstance(body, dict)
        if cmd == "aibot_subscribe":
            await self._subscribe(sock, req_id, body)
            return
        if cmd == "ping":
            if self.ack_pings:
                await self._ack(sock, req_id, 0)
            return
        bot = sock.bot
        if bot is None or bot.socket is not sock:
            await self._ack(sock, req_id, ERR_AUTH, "not subscribed")
            return
        started = time.monotonic()
        if self.latency:
            await asyncio.sleep(self.latency)
        errcode, errmsg, reply = 0, "ok", None
        aimed = self.call_fault(cmd, body) if self.call_fault is not None else None
        injected = 0
        if isinstance(aimed, int):
            injected = aimed
        elif cmd.startswith(("aibot_respond", "aibot_send")):
            injected = self._fault()
        if injected:
            errcode = injected
            errmsg = _FAULT_MESSAGES.get(injected, "error")
        else:
            try:
                reply = self._command(bot, sock, cmd, req_id, body)
            except _Refusal as exc:
                errcode, errmsg = exc.code, exc.message
        self._record_call("WS", cmd, errcode, started, bot.bot_id)
        if aimed == "lost" or (
            aimed is None
            and injected == 0
            and cmd.startswith(("aibot_respond", "aibot_send"))
            and self._lose()
        ):
            return  # it took effect; its ack never comes
        await self._ack(sock, req_id, errcode, errmsg, reply)

    async def _subscribe(self, sock: _Socket, req_id: str, body: dict[str, Any]) -> None:
        bot = self.bots.get(str(body.get("bot_id") or ""))
        if bot is None or not secrets.compare_digest(str(body.get("secret") or ""), bot.secret):
            await self._ack(sock, req_id, ERR_AUTH, "invalid bot_id or secret")
            return
        old = bot.socket
        sock.bot = bot
        bot.socket = sock
        bot.subscriptions += 1
        await self._ack(sock, req_id, 0)
        self._emit({"kind": "connection", "event": "open", "bot_id": bot.bot_id})
        if old is not None and old is not sock:
            self._spawn(self._take_over(bot, old))
        held, bot.held = bot.held, []
        for cmd, pushed in held:
            await self._push(bot, cmd, pushed)

    async def _take_over(self, bot: WeComBot, old: _Socket) -> None:
        event = {
            "msgid": uuid.uuid4().hex,
            "create_time": int(time.time()),
            "aibotid": bot.bot_id,
            "msgtype": "event",
            "event": {"eventtype": "disconnected_event"},
        }
        req_id = f"aibot_event_callback_{uuid.uuid4().hex[:16]}"
        await self._send(
            old, {"cmd": "aibot_event_callback", "headers": {"req_id": req_id}, "body": event}
        )
        with contextlib.suppress(Exception):
            await old.ws.close(code=1000, message=b"a newer connection took over")

    async def drop(self, bot_id: str | None = None) -> None:
        """Abort the robot sockets (no close handshake)."""
        for sock in list(self._sockets):
            if bot_id is None or (sock.bot is not None and sock.bot.bot_id == bot_id):
                if sock.bot is not None and sock.bot.socket is sock:
                    sock.bot.socket = None
                    self._emit({"kind": "connection", "event": "close", "bot_id": sock.bot.bot_id})
                transport = sock.ws._req.transport if sock.ws._req is not None else None
                if transport is not None:
                    transport.abort()
                self._sockets.discard(sock)

    async def send_raw(self, bot_id: str, text: str) -> None:
        """Send ``text`` as it is on the bot's subscribed socket (malformed JSON, escapes of
        lone surrogates, deep nesting): for fuzzing a client. ``LookupError`` without one."""
        bot = self.bots[bot_id]
        sock = bot.socket
        if sock is None:
            raise LookupError(f"bot {bot_id!r} has no subscribed socket")
        async with sock.lock:
            await sock.ws.send_str(text)

    def blackhole(self, bot_id: str | None = None) -> int:
        """Make the robot sockets (of ``bot_id``, or all) silent both ways without closing
        them: nothing more is sent (pushes and acks are lost) and nothing is read. Returns
        how many. New connections are not affected."""
        count = 0
        for sock in list(self._sockets):
            if bot_id is None or (sock.bot is not None and sock.bot.bot_id == bot_id):
                sock.silent = True
                transport = sock.ws._req.transport if sock.ws._req is not None else None
                if transport is not None:
                    transport.pause_reading()
                count += 1
        return count

    def connected(self, bot_id: str) -> bool:
        bot = self.bots.get(bot_id)
        return bot is not None and bot.socket is not None

    def live_sockets(self, bot_id: str) -> int:
        return sum(1 for s in self._sockets if s.bot is not None and s.bot.bot_id == bot_id)

    # ------------------------------------------------------------------ pushes
    async def _push(self, bot: WeComBot, cmd: str, body: dict[str, Any]) -> str | None:
        sock = bot.socket
        if sock is None:
            bot.held.append((cmd, body))
            return None
        req_id = f"{cmd}_{int(time.time() * 1000)}_{uuid.uuid4().hex[:8]}"
        event = body.get("event") if isinstance(body.get("event"), dict) else None
        chat = body.get("chatid") or (body.get("from") or {}).get("userid") or ""
        if body.get("chattype") == "group" and body.get("chatid"):
            self.groups.add(str(body["chatid"]))
        bot.callbacks[req_id] = Callback(
            req_id=req_id,
            socket=sock.id,
            at=time.monotonic(),
            kind="event" if cmd == "aibot_event_callback" else "msg",
            body=body,
            conversation_id=str(chat),
            eventtype=str(event.get("eventtype")) if event else None,
        )
        await self._send(sock, {"cmd": cmd, "headers": {"req_id": req_id}, "body": body})
        return req_id

    def _base_body(
        self, bot: WeComBot, *, chat_type: str, chatid: str, user_id: str, msgid: str | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "msgid": msgid or uuid.uuid4().hex,
            "create_time": int(time.time()),
            "aibotid": bot.bot_id,
            "chattype": chat_type,
            "from": {"userid": user_id},
        }
        if chat_type == "group":
            body["chatid"] = chatid
        return body

    async def push_message(
        self,
        bot_id: str,
        *,
        user_id: str,
        msgtype: str,
        content: dict[str, Any],
        chat_type: Literal["single", "group"] = "single",
        chatid: str = "",
        msgid: str | None = None,
        quote: dict[str, Any] | None = None,
    ) -> str:
        """A user's message pushed as ``aibot_msg_callback`` (held while disconnected);
        returns its ``msgid``."""
        bot = self.bots[bot_id]
        body = self._base_body(
            bot, chat_type=chat_type, chatid=chatid, user_id=user_id, msgid=msgid
        )
        body["msgtype"] = msgtype
        body[msgtype] = content
        if quote is not None:
            body["quote"] = quote
        bot.sent[body["msgid"]] = body
        await self._push(bot, "aibot_msg_callback", body)
        return str(body["msgid"])

    async def redeliver(self, bot_id: str, msgid: str) -> None:
        bot = self.bots[bot_id]
        await self._push(bot, "aibot_msg_callback", bot.sent[msgid])

    async def push_event(
        self,
        bot_id: str,
        eventtype: str,
        *,
        user_id: str,
        chat_type: Literal["single", "group"] = "single",
        chatid: str = "",
        detail: dict[str, Any] | None = None,
    ) -> str | None:
        """An ``aibot_event_callback``; returns its ``req_id`` (``None`` if held)."""
        bot = self.bots[bot_id]
        body = self._base_body(bot, chat_type=chat_type, chatid=chatid, user_id=user_id, msgid=None)
        body["msgtype"] = "event"
        body["event"] = {"eventtype": eventtype, **({eventtype: detail} if detail else {})}
        return await self._push(bot, "aibot_event_callback", body)

    async def press(self, bot_id: str, *, card_id: str, key: str, user_id: str) -> str | None:
        """A user presses the button ``key`` of template card ``card_id``."""
        card = self.cards[card_id]
        template = card.template or {}
        chat_type: Literal["single", "group"] = (
            "group" if card.conversation_id != user_id else "single"
        )
        return await self.push_event(
            bot_id,
            "template_card_event",
            user_id=user_id,
            chat_type=chat_type,
            chatid=card.conversation_id,
            detail={
                "card_type": template.get("card_type", "button_interaction"),
                "event_key": key,
                "task_id": template.get("task_id", card_id),
                "selected_items": {"selected_item": []},
            },
        )

    # ------------------------------------------------------------------ commands
    def _callback(self, bot: WeComBot, sock: _Socket, req_id: str) -> Callback:
        cb = bot.callbacks.get(req_id)
        if cb is None or cb.socket != sock.id:
            raise _Refusal(ERR_INVALID_REQ_ID, "invalid req_id")
        if cb.answered is None:
            cb.answered = time.monotonic()
        return cb

    def _command(
        self, bot: WeComBot, sock: _Socket, cmd: str, req_id: str, body: dict[str, Any]
    ) -> Any:
        if cmd == "aibot_respond_msg":
            cb = self._callback(bot, sock, req_id)
            self._respond(bot, cb, body)
            return None
        if cmd == "aibot_respond_welcome_msg":
            cb = self._callback(bot, sock, req_id)
            if cb.eventtype != "enter_chat" or time.monotonic() - cb.at > self.welcome_window:
                raise _Refusal(ERR_INVALID_REQ_ID, "invalid req_id: welcome window passed")
            self._show_body(bot, cb.conversation_id, body, reply_to=None, proactive=False)
            return None
        if cmd == "aibot_respond_update_msg":
            cb = self._callback(bot, sock, req_id)
            if (
                cb.eventtype != "template_card_event"
                or time.monotonic() - cb.at > self.update_window
            ):
                raise _Refusal(ERR_INVALID_REQ_ID, "invalid req_id: update window passed")
            self._update_card(body)
            return None
        if cmd == "aibot_send_msg":
            chatid = str(body.get("chatid") or "")
            if not chatid:
                raise _Refusal(ERR_BAD_REQUEST, "chatid missing")
            self._show_body(bot, chatid, body, reply_to=None, proactive=True)
            return None
        if cmd == "aibot_upload_media_init":
            return self._upload_init(body)
        if cmd == "aibot_upload_media_chunk":
            return self._upload_chunk(body)
        if cmd == "aibot_upload_media_finish":
            return self._upload_finish(bot, body)
        raise _Refusal(ERR_BAD_REQUEST, f"unknown cmd {cmd!r}")

    def _respond(self, bot: WeComBot, cb: Callback, body: dict[str, Any]) -> None:
        msgtype = body.get("msgtype")
        reply_to = str(cb.body.get("msgid") or "")
        if msgtype in ("stream", "stream_with_template_card"):
            stream = body.get("stream")
            if not isinstance(stream, dict) or not stream.get("id"):
                raise _Refusal(ERR_BAD_REQUEST, "stream.id missing")
            if msgtype == "stream_with_template_card":
                self._take_template(cb)
            if time.monotonic() - cb.at > self.stream_lifetime:
                raise _Refusal(ERR_STREAM_EXPIRED, "stream message update expired")
            stream_id = str(stream["id"])
            card = self.cards.get(stream_id)
            if card is not None and card.finished:
                raise _Refusal(ERR_BAD_REQUEST, "stream already finished")
            content, truncated = _truncate(str(stream.get("content") or ""), self.max_stream_bytes)
            if card is None:
                card = CardRecord(
                    id=stream_id,
                    bot_id=bot.bot_id,
                    conversation_id=cb.conversation_id,
                    kind="stream",
                    reply_to=reply_to,
                )
                self.cards[stream_id] = card
            else:
                card.updates += 1
            card.content = content
            card.truncated = card.truncated or truncated
            card.finished = bool(stream.get("finish"))
            if msgtype == "stream_with_template_card" and isinstance(
                body.get("template_card"), dict
            ):
                card.template = dict(body["template_card"])
            self._card_changed(card)
            return
        if msgtype == "template_card":
            self._take_template(cb)
            self._show_body(bot, cb.conversation_id, body, reply_to=reply_to, proactive=False)
            return
        if msgtype in ("image", "file", "voice", "video"):
            self._show_body(bot, cb.conversation_id, body, reply_to=reply_to, proactive=False)
            return
        raise _Refusal(ERR_BAD_REQUEST, f"msgtype {msgtype!r} cannot answer a message")

    @staticmethod
    def _take_template(cb: Callback) -> None:
        if cb.template_used:
            raise _Refusal(ERR_BAD_REQUEST, "a message can be answered with one template card")
        cb.template_used = True

    def _show_body(
        self,
        bot: WeComBot,
        conversation_id: str,
        body: dict[str, Any],
        *,
        reply_to: str | None,
        proactive: bool,
    ) -> None:
        msgtype = str(body.get("msgtype") or "")
        who = bot.bot_id
        if msgtype in ("markdown", "text"):
            part = body.get(msgtype)
            text = str(part.get("content") or "") if isinstance(part, dict) else ""
            text, _ = _truncate(text, self.max_markdown_bytes)
            receivers = [] if conversation_id in self.groups else [conversation_id]
            self._record_message(
                conversation_id, text, who=who, msgtype=msgtype, receivers=receivers
            )
            return
        if msgtype == "template_card":
            template = body.get("template_card")
            if not isinstance(template, dict):
                raise _Refusal(ERR_BAD_REQUEST, "template_card missing")
            card_id = str(template.get("task_id") or uuid.uuid4().hex)
            if card_id in self.cards:
                raise _Refusal(ERR_BAD_REQUEST, "task_id already used")
            card = CardRecord(
                id=card_id,
                bot_id=bot.bot_id,
                conversation_id=conversation_id,
                kind="template_card",
                template=dict(template),
                finished=True,
                reply_to=reply_to,
            )
            self.cards[card_id] = card
            self._card_changed(card)
            return
        if msgtype in ("image", "file", "voice", "video"):
            self._show_media(conversation_id, body, who=who)
            return
        raise _Refusal(ERR_BAD_REQUEST, f"unsupported msgtype {msgtype!r}")

    def _media_of(self, body: dict[str, Any]) -> tuple[str, bytes, str]:
        """The uploaded media a media message names; raises for an unknown ``media_id``."""
        msgtype = str(body.get("msgtype") or "")
        part = body.get(msgtype)
        media_id = str(part.get("media_id") or "") if isinstance(part, dict) else ""
        media = self.media.get(media_id)
        if media is None:
            raise _Refusal(ERR_MEDIA_ID, "invalid media_id")
        return media

    def _show_media(self, conversation_id: str, body: dict[str, Any], *, who: str) -> None:
        msgtype = str(body.get("msgtype") or "")
        _, data, filename = self._media_of(body)
        self.sent_media.append(
            {
                "conversation_id": conversation_id,
                "msgtype": msgtype,
                "name": filename,
                "data": data,
                "who": who,
            }
        )
        self._emit(
            {
                "kind": "upload",
                "upload": {
                    "conversation_id": conversation_id,
                    "kind": "image" if msgtype == "image" else "file",
                    "name": filename,
                    "size": len(data),
                },
            }
        )

    def _update_card(self, body: dict[str, Any]) -> None:
        template = body.get("template_card")
        if body.get("response_type") != "update_template_card" or not isinstance(template, dict):
            raise _Refusal(ERR_BAD_REQUEST, "response_type update_template_card expected")
        task_id = str(template.get("task_id") or "")
        card = self.cards.get(task_id)
        if card is None:
            raise _Refusal(ERR_BAD_REQUEST, "unknown task_id")
        card.template = dict(template)
        card.updates += 1
        self._card_changed(card)

    # ------------------------------------------------------------------ uploads
    def _upload_init(self, body: dict[str, Any]) -> dict[str, Any]:
        total = int(body.get("total_chunks") or 0)
        if not 1 <= total <= MAX_CHUNKS:
            raise _Refusal(ERR_BAD_REQUEST, "total_chunks must be 1..100")
        media_type = str(body.get("type") or "file")
        if media_type not in ("image", "voice", "video", "file"):
            raise _Refusal(ERR_BAD_REQUEST, f"invalid media type {media_type!r}")
        size = int(body.get("total_size") or 0)
        if not MIN_MEDIA_BYTES < size <= media_cap(media_type):
            raise _Refusal(ERR_MEDIA_SIZE, "invalid file size")
        upload_id = uuid.uuid4().hex
        self.uploads[upload_id] = {
            "type": media_type,
            "filename": body.get("filename") or "file",
            "total_chunks": total,
            "total_size": int(body.get("total_size") or 0),
            "md5": body.get("md5"),
            "chunks": {},
        }
        return {"upload_id": upload_id}

    def _upload_chunk(self, body: dict[str, Any]) -> None:
        import base64

        upload = self.uploads.get(str(body.get("upload_id") or ""))
        if upload is None:
            raise _Refusal(ERR_BAD_REQUEST, "invalid upload_id")
        index = int(body.get("chunk_index", -1))
        if not 0 <= index < upload["total_chunks"]:
            raise _Refusal(ERR_BAD_REQUEST, "chunk_index out of range")
        data = base64.b64decode(str(body.get("base64_data") or ""))
        if len(data) > MAX_CHUNK_BYTES:
            raise _Refusal(ERR_BAD_REQUEST, "chunk over 512 KB")
        upload["chunks"][index] = data

    def _upload_finish(self, bot: WeComBot, body: dict[str, Any]) -> dict[str, Any]:
        upload = self.uploads.pop(str(body.get("upload_id") or ""), None)
        if upload is None:
            raise _Refusal(ERR_BAD_REQUEST, "invalid upload_id")
        chunks = upload["chunks"]
        if len(chunks) != upload["total_chunks"]:
            raise _Refusal(ERR_BAD_REQUEST, "chunks missing")
        data = b"".join(chunks[i] for i in range(upload["total_chunks"]))
        if len(data) != upload["total_size"]:
            raise _Refusal(ERR_MEDIA_SIZE, "total_size does not match the chunks")
        if upload["md5"] and hashlib.md5(data).hexdigest() != upload["md5"]:
            raise _Refusal(ERR_BAD_REQUEST, "md5 mismatch")
        media_id = f"media_{uuid.uuid4().hex}"
        self.media[media_id] = (str(upload["type"]), data, str(upload["filename"]))
        return {"type": upload["type"], "media_id": media_id, "created_at": str(int(time.time()))}

    # ------------------------------------------------------------------ app mode: HTTP
    def _app_for_token(self, token: str) -> WeComApp:
        for app in self.apps.values():
            expiry = app.tokens.get(token)
            if expiry is not None:
                if expiry < time.monotonic():
                    raise _Refusal(42001, "access_token expired")
                return app
        raise _Refusal(ERR_TOKEN, "invalid access_token")

    @staticmethod
    def _json(errcode: int, errmsg: str = "ok", **extra: Any) -> web.Response:
        return web.json_response({"errcode": errcode, "errmsg": errmsg, **extra})

    async def _gettoken(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        app = self.apps.get(request.query.get("corpid", ""))
        if app is None:
            self._record_call("GET", "/cgi-bin/gettoken", 40013, started, "?")
            return self._json(40013, "invalid corpid")
        if not secrets.compare_digest(request.query.get("corpsecret", ""), app.secret):
            self._record_call("GET", "/cgi-bin/gettoken", ERR_AUTH, started, app.corp_id)
            return self._json(ERR_AUTH, "invalid credential")
        token = secrets.token_urlsafe(48)
        app.tokens[token] = time.monotonic() + 7200
        self._record_call("GET", "/cgi-bin/gettoken", 0, started, app.corp_id)
        return self._json(0, access_token=token, expires_in=7200)

    async def _app_call(
        self, request: web.Request, route: str, handle: Callable[[WeComApp, dict[str, Any]], Any]
    ) -> web.Response:
        started = time.monotonic()
        who = "?"
        try:
            app = self._app_for_token(request.query.get("access_token", ""))
            who = app.corp_id
            if self.latency:
                await asyncio.sleep(self.latency)
            try:
                body = parse_json_strict(await request.read(), where="body")
            except LoneSurrogate as exc:
                # UNCONFIRMED: what WeCom answers to such text; 40058 "invalid parameter"
                log.warning("refused POST %s: %s", route, exc)
                raise _Refusal(ERR_BAD_REQUEST, f"invalid parameter: {exc}") from None
            except ValueError:
                raise _Refusal(44004, "empty or invalid body") from None
            injected = self._fault()
            if injected:
                raise _Refusal(injected, "system busy" if injected < 0 else "api freq out of limit")
            extra = handle(app, body if isinstance(body, dict) else {}) or {}
        except _Refusal as exc:
            self._record_call("POST", route, exc.code, started, who)
            return self._json(exc.code, exc.message)
        self._record_call("POST", route, 0, started, who)
        if self._lose() and request.transport is not None:
            request.transport.abort()  # it took effect; its answer never comes
        return self._json(0, **extra)

    def _text_of(self, body: dict[str, Any]) -> str | None:
        """The text of a markdown/text message, ``None`` for a media message or a template
        card (checked)."""
        msgtype = str(body.get("msgtype") or "")
        part = body.get(msgtype)
        if msgtype in ("image", "file", "voice", "video"):
            self._media_of(body)
            return None
        if msgtype == "template_card":
            _check_app_template(part)
            return None
        if msgtype not in ("markdown", "text") or not isinstance(part, dict):
            raise _Refusal(ERR_BAD_REQUEST, f"unsupported msgtype {msgtype!r}")
        text = str(part.get("content") or "")
        if len(text.encode("utf-8")) > self.app_markdown_bytes:
            raise _Refusal(ERR_CONTENT_TOO_LONG, "content size out of limit")
        return text

    def _app_show(
        self,
        conversation_id: str,
        text: str | None,
        body: dict[str, Any],
        *,
        who: str,
        receivers: list[str] | None = None,
    ) -> None:
        if body.get("msgtype") == "template_card":
            template = dict(body["template_card"])
            card_id = str(template["task_id"])
            if card_id in self.cards:  # the same task_id to several receivers
                card_id = f"{card_id}@{conversation_id}"
            card = CardRecord(
                id=card_id,
                bot_id=who,
                conversation_id=conversation_id,
                kind="template_card",
                template=template,
                finished=True,
            )
            self.cards[card_id] = card
            self._card_changed(card)
        elif text is None:
            self._show_media(conversation_id, body, who=who)
        else:
            self._record_message(conversation_id, text, who=who, receivers=receivers)

    async def _media_upload(self, request: web.Request) -> web.Response:
        """``POST /cgi-bin/media/upload?access_token&type``: multipart field ``media``."""
        started = time.monotonic()
        route = "/cgi-bin/media/upload"
        who = "?"
        try:
            app = self._app_for_token(request.query.get("access_token", ""))
            who = app.corp_id
            media_type = request.query.get("type", "")
            if media_type not in ("image", "voice", "video", "file"):
                raise _Refusal(40004, "invalid media type")
            form = await request.post()
            field = form.get("media")
            if not isinstance(field, web.FileField):
                raise _Refusal(41005, "media data missing")
            data = field.file.read()
            if not MIN_MEDIA_BYTES < len(data) <= media_cap(media_type):
                raise _Refusal(ERR_MEDIA_SIZE, "invalid file size")
            injected = self._fault()
            if injected:
                raise _Refusal(injected, "system busy" if injected < 0 else "api freq out of limit")
        except _Refusal as exc:
            self._record_call("POST", route, exc.code, started, who)
            return self._json(exc.code, exc.message)
        media_id = f"media_{uuid.uuid4().hex}"
        self.media[media_id] = (media_type, data, field.filename or "file")
        self._record_call("POST", route, 0, started, who)
        return self._json(0, type=media_type, media_id=media_id, created_at=str(int(time.time())))

    async def _message_send(self, request: web.Request) -> web.Response:
        def handle(app: WeComApp, body: dict[str, Any]) -> dict[str, Any]:
            if int(body.get("agentid") or 0) != app.agent_id:
                raise _Refusal(40056, "invalid agentid")
            text = self._text_of(body)
            users = [u for u in str(body.get("touser") or "").split("|") if u]
            parties = [p for p in str(body.get("toparty") or "").split("|") if p]
            tags = [t for t in str(body.get("totag") or "").split("|") if t]
            if not users and not parties and not tags:
                raise _Refusal(40031, "invalid user list")
            task_id = ""
            if body.get("msgtype") == "template_card":
                task_id = str(body["template_card"].get("task_id") or "")
                if task_id in app.task_ids:
                    # UNCONFIRMED code: WeCom says task_ids must not repeat (path/90236).
                    raise _Refusal(ERR_BAD_REQUEST, "task_id already used")
            now = time.monotonic()
            allowed = []
            for user in users:
                sends = app.member_sends.setdefault(user, deque())
                while sends and now - sends[0] > self.member_hour:
                    sends.popleft()
                minute = sum(1 for t in sends if now - t <= self.member_minute)
                if minute >= self.member_per_minute or len(sends) >= self.member_per_hour:
                    if self.member_limit_mode == "error":
                        raise _Refusal(ERR_RATE_LIMITED, "api freq out of limit (member)")
                    continue  # dropped silently, as WeCom documents
                sends.append(now)
                allowed.append(user)
            for user in allowed:
                self._app_show(user, text, body, who=app.corp_id, receivers=[user])
            for party in parties:
                self._app_show(f"party:{party}", text, body, who=app.corp_id)
            for tag in tags:
                self._app_show(f"tag:{tag}", text, body, who=app.corp_id)
            answer: dict[str, Any] = {"invaliduser": "", "msgid": uuid.uuid4().hex}
            if task_id:
                app.task_ids.add(task_id)
                answer["response_code"] = self._new_response_code(app, task_id)
            return answer

        return await self._app_call(request, "/cgi-bin/message/send", handle)

    async def _appchat_send(self, request: web.Request) -> web.Response:
        def handle(app: WeComApp, body: dict[str, Any]) -> None:
            chatid = str(body.get("chatid") or "")
            if not chatid:
                raise _Refusal(86003, "chatid missing")
            self._app_show(chatid, self._text_of(body), body, who=app.corp_id)

        return await self._app_call(request, "/cgi-bin/appchat/send", handle)

    def _new_response_code(self, app: WeComApp, task_id: str) -> str:
        code = secrets.token_urlsafe(24)
        app.response_codes[code] = ResponseCode(
            task_id=task_id, expires=time.monotonic() + self.response_code_ttl
        )
        return code

    def _app_card(self, task_id: str, user: str) -> CardRecord | None:
        card = self.cards.get(f"{task_id}@{user}") or self.cards.get(task_id)
        return card if card is not None and card.kind == "template_card" else None

    async def _update_template_card(self, request: web.Request) -> web.Response:
        """``message/update_template_card``: one update per ``response_code``."""

        def handle(app: WeComApp, body: dict[str, Any]) -> dict[str, Any]:
            if int(body.get("agentid") or 0) != app.agent_id:
                raise _Refusal(40056, "invalid agentid")
            code = app.response_codes.get(str(body.get("response_code") or ""))
            if code is None or code.used or code.expires < time.monotonic():
                raise _Refusal(ERR_BAD_REQUEST, "invalid response_code (unknown, used or expired)")
            users = [str(u) for u in body.get("userids") or ()]
            if not users and not body.get("atall"):
                raise _Refusal(40031, "invalid user list")
            template = body.get("template_card")
            button = body.get("button")
            if isinstance(template, dict):
                _check_app_template(template, need_task_id=False)
            elif not isinstance(button, dict) or not button.get("replace_name"):
                raise _Refusal(ERR_BAD_REQUEST, "template_card or button.replace_name missing")
            code.used = True
            for user in users:
                card = self._app_card(code.task_id, user)
                if card is None:
                    continue
                if isinstance(template, dict):
                    card.template = {**template, "task_id": code.task_id}
                    card.replaced = None
                else:
                    assert isinstance(button, dict)
                    card.replaced = str(button["replace_name"])
                card.updates += 1
                self._card_changed(card)
            return {"invaliduser": ""}

        return await self._app_call(request, "/cgi-bin/message/update_template_card", handle)

    def store_media(self, data: bytes, media_type: str, filename: str) -> str:
        """Keep media a user sends in an app callback; returns its ``media_id``."""
        media_id = f"media_{uuid.uuid4().hex}"
        self.media[media_id] = (media_type, data, filename)
        return media_id

    async def _pic(self, request: web.Request) -> web.StreamResponse:
        """An image callback's ``PicUrl`` (WeCom's CDN link; counted in ``pic_fetches``,
        which a robot downloading from the API host only leaves at 0)."""
        self.pic_fetches += 1
        media = self.media.get(request.match_info["media_id"])
        if media is None:
            return web.Response(status=404)
        return web.Response(body=media[1], content_type="image/png")

    async def _media_get(self, request: web.Request) -> web.StreamResponse:
        """``GET /cgi-bin/media/get?access_token&media_id``: the content, or JSON errors."""
        started = time.monotonic()
        route = "/cgi-bin/media/get"
        who = "?"
        try:
            app = self._app_for_token(request.query.get("access_token", ""))
            who = app.corp_id
            media = self.media.get(request.query.get("media_id", ""))
            if media is None:
                raise _Refusal(ERR_MEDIA_ID, "invalid media_id")
            injected = self._fault()
            if injected:
                raise _Refusal(injected, "system busy" if injected < 0 else "api freq out of limit")
        except _Refusal as exc:
            self._record_call("GET", route, exc.code, started, who)
            return self._json(exc.code, exc.message)
        media_type, data, filename = media
        self._record_call("GET", route, 0, started, who)
        kind = {"image": "image/png", "voice": "audio/amr", "video": "video/mp4"}
        return web.Response(
            body=data,
            content_type=kind.get(media_type, "application/octet-stream"),
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    # ------------------------------------------------------------------ app mode: callbacks
    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    def app_message_xml(
        self,
        app: WeComApp,
        *,
        user_id: str,
        msgtype: str = "text",
        content: str = "",
        msg_id: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> tuple[str, str]:
        """The plaintext XML of a message from ``user_id`` and its MsgId."""
        msg_id = msg_id or str(random.randint(10**18, 10**19 - 1))
        fields = {
            "ToUserName": app.corp_id,
            "FromUserName": user_id,
            "CreateTime": str(int(time.time())),
            "MsgType": msgtype,
        }
        if msgtype == "text":
            fields["Content"] = content
        fields.update(extra or {})
        fields["MsgId"] = msg_id
        fields["AgentID"] = str(app.agent_id)
        return _xml(fields), msg_id

    def encrypt_callback(self, app: WeComApp, xml: str) -> tuple[dict[str, str], str]:
        """The query (msg_signature, timestamp, nonce) and body of an encrypted callback."""
        import re

        nonce = str(random.randint(10**8, 10**9))
        timestamp = str(int(time.time()))
        envelope = app.crypto.encrypt(xml, nonce, timestamp)
        encrypted = re.search(r"<Encrypt><!\[CDATA\[(.*?)\]\]></Encrypt>", envelope)
        sig = re.search(r"<MsgSignature><!\[CDATA\[(.*?)\]\]></MsgSignature>", envelope)
        assert encrypted is not None and sig is not None
        body = (
            f"<xml><ToUserName><![CDATA[{escape(app.corp_id)}]]></ToUserName>"
            f"<AgentID><![CDATA[{app.agent_id}]]></AgentID>"
            f"<Encrypt><![CDATA[{encrypted.group(1)}]]></Encrypt></xml>"
        )
        return {"msg_signature": sig.group(1), "timestamp": timestamp, "nonce": nonce}, body

    async def push_app_message(
        self,
        corp_id: str,
        *,
        user_id: str,
        content: str = "",
        msgtype: str = "text",
        msg_id: str | None = None,
        extra: dict[str, str] | None = None,
        wait: bool = False,
    ) -> str:
        """POST an encrypted callback to the app's ``callback_url``, retried as WeCom does
        (in the background unless ``wait``); returns the MsgId."""
        app = self.apps[corp_id]
        if msg_id is not None and msg_id in app.sent:
            xml = app.sent[msg_id]
        else:
            xml, msg_id = self.app_message_xml(
                app, user_id=user_id, msgtype=msgtype, content=content, msg_id=msg_id, extra=extra
            )
            app.sent[msg_id] = xml
        task = self._spawn(self._deliver(app, msg_id, xml))
        if wait:
            await task
        return msg_id

    async def press_app(
        self, corp_id: str, *, card_id: str, key: str, user_id: str, wait: bool = False
    ) -> str:
        """A member presses button ``key`` of the app's template card ``card_id``: an
        encrypted ``template_card_event`` POSTed to the callback URL (retried as
        messages are); returns its ``ResponseCode``."""
        app = self.apps[corp_id]
        card = self.cards.get(card_id)
        if card is None or card.kind != "template_card" or card.template is None:
            raise ValueError(f"no template card {card_id!r}")
        keys = [str(b.get("key")) for b in card.template.get("button_list") or ()]
        if card.replaced is not None or key not in keys:
            raise ValueError(f"card {card_id!r} has no pressable button {key!r}")
        task_id = str(card.template.get("task_id") or card_id)
        code = self._new_response_code(app, task_id)
        fields = {
            "ToUserName": app.corp_id,
            "FromUserName": user_id,
            "CreateTime": str(int(time.time())),
            "MsgType": "event",
            "Event": "template_card_event",
            "EventKey": key,
            "TaskId": task_id,
            "CardType": str(card.template.get("card_type") or "button_interaction"),
            "ResponseCode": code,
            "AgentID": str(app.agent_id),
        }
        task = self._spawn(self._deliver(app, code, _xml(fields)))
        if wait:
            await task
        return code

    async def _deliver(self, app: WeComApp, msg_id: str, xml: str) -> None:
        for attempt in range(1, self.callback_attempts + 1):
            if app.callback_url is None:
                raise RuntimeError(f"app {app.corp_id} has no callback_url")
            query, body = self.encrypt_callback(app, xml)
            started = time.monotonic()
            status: int | None = None
            error: str | None = None
            try:
                async with asyncio.timeout(self.callback_timeout):
                    async with self._client().post(
                        app.callback_url, params=query, data=body.encode("utf-8")
                    ) as response:
                        status = response.status
                        await response.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                error = type(exc).__name__
            self.deliveries.append(
                Delivery(msg_id, attempt, status, time.monotonic() - started, error)
            )
            if status == 200:
                return
            await asyncio.sleep(self.callback_retry_delay)

    async def verify_url(self, corp_id: str) -> bool:
        """WeCom's URL check: GET with an encrypted ``echostr``; True if the plaintext came
        back within 1 s (PROTOCOLS 4a)."""
        import re

        app = self.apps[corp_id]
        assert app.callback_url is not None
        plain = secrets.token_hex(8)
        nonce, timestamp = str(random.randint(10**8, 10**9)), str(int(time.time()))
        envelope = app.crypto.encrypt(plain, nonce, timestamp)
        encrypted = re.search(r"<Encrypt><!\[CDATA\[(.*?)\]\]></Encrypt>", envelope)
        sig = re.search(r"<MsgSignature><!\[CDATA\[(.*?)\]\]></MsgSignature>", envelope)
        assert encrypted is not None and sig is not None
        query = {
            "msg_signature": sig.group(1),
            "timestamp": timestamp,
            "nonce": nonce,
            "echostr": encrypted.group(1),
        }
        try:
            async with asyncio.timeout(1.0):
                async with self._client().get(app.callback_url, params=query) as response:
                    return response.status == 200 and (await response.text()) == plain
        except (TimeoutError, aiohttp.ClientError):
            return False


def _xml(fields: dict[str, str]) -> str:
    """A flat callback XML (digits bare, the rest in CDATA, as WeCom writes them)."""
    inner = "".join(
        f"<{k}>{v}</{k}>" if v.isdigit() else f"<{k}><![CDATA[{v}]]></{k}>"
        for k, v in fields.items()
    )
    return f"<xml>{inner}</xml>"


_CARD_TYPES = (
    "text_notice",
    "news_notice",
    "button_interaction",
    "vote_interaction",
    "multiple_interaction",
)


def _check_app_template(template: Any, *, need_task_id: bool = True) -> None:
    """Refuse a ``template_card`` WeCom would refuse (path/90236; the codes are WeCom's
    global "invalid parameter", UNCONFIRMED for each case)."""
    import re

    if not isinstance(template, dict):
        raise _Refusal(ERR_BAD_REQUEST, "template_card missing")
    card_type = template.get("card_type")
    if card_type not in _CARD_TYPES:
        raise _Refusal(ERR_BAD_REQUEST, f"invalid card_type {card_type!r}")
    task_id = template.get("task_id")
    interactive = card_type in ("button_interaction", "vote_interaction", "multiple_interaction")
    checked = task_id is not None or (interactive and need_task_id)
    if checked and not (isinstance(task_id, str) and re.match(r"^[A-Za-z0-9_@-]{1,128}$", task_id)):
        raise _Refusal(ERR_BAD_REQUEST, "invalid task_id")
    if card_type == "button_interaction":
        buttons = template.get("button_list")
        if not isinstance(buttons, list) or not 1 <= len(buttons) <= 6:
            raise _Refusal(ERR_BAD_REQUEST, "button_list must have 1 to 6 buttons")
        for button in buttons:
            key = str(button.get("key") or "") if isinstance(button, dict) else ""
            if not key or len(key.encode("utf-8")) > 1024 or not button.get("text"):
                raise _Refusal(ERR_BAD_REQUEST, "each button needs text and a key of <= 1024 bytes")
    if card_type in ("text_notice", "news_notice"):
        action = template.get("card_action")
        action = action if isinstance(action, dict) else {}
        kind = action.get("type")
        if kind not in (1, 2) or (kind == 1 and not str(action.get("url") or "")):
            raise _Refusal(ERR_BAD_REQUEST, "card_action of type 1 (url) or 2 required")


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host:port`` (0: a free port)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


class _Refusal(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
