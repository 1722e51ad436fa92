"""The Feishu server-side emulator: apps, long connections, event delivery, OpenAPI state.

One :class:`FeishuEmulator` hosts any number of self-built apps. Users' messages and
button presses become events (PROTOCOLS 3.6, 3.7) delivered to one random long
connection of the app (cluster mode, PROTOCOLS 3.4) as DATA frames, fragmented when
``fragment_size`` is set, or POSTed to the app's callback URL in HTTP callback mode.
A delivery whose response frame does not arrive within ``response_timeout`` (3 s) is
delivered again after each of ``redelivery`` (15 s, 5 min, 1 h, 6 h); while the app
has no connection, deliveries are held and pushed, in order, once one opens.

The OpenAPI side (:mod:`.server` routes call the ``api_*`` methods) keeps messages,
card entities and uploaded resources, and enforces the documented limits: per app
and API 50/s and 1000/min (429, 99991400, ``x-ogw-ratelimit-reset``), 5/s per chat for
send/reply and 5/s per message for PATCH (230020), 10/s per card entity outside
streaming mode, strictly increasing ``sequence`` (300317), streaming mode closing
itself ``stream_lifetime`` seconds after it was enabled (200850), 30 KB cards
(200860/230025). Faults: dropped connections, a share of failing or rate-limited
calls, latency, and lost answers (a share of calls take effect, then their connection
is cut before the answer goes out: :meth:`FeishuEmulator.set_lost_answer_rate`), and
on demand: an error for the next calls of one API (:meth:`~FeishuEmulator.fail_next`),
revoked tenant tokens (99991663), streaming mode ended early (200850), another writer's
``sequence`` (300317), withdrawn messages (230011), downloads redirected off the domain
(``resource_redirect``). Cards with more than ``max_tables`` tables are refused (230099).

HTTP callback mode (:meth:`FeishuEmulator.set_callback_url`): the URL is checked with
the ``url_verification`` challenge when it is configured, as the developer console
does; events are then POSTed to it (encrypted and signed when the app has an encrypt
key), a card action's answer is the HTTP response body, and a POST answered late
(after ``response_timeout``), not at all or with a status other than 200 is delivered
again on the ``redelivery`` schedule.

Listeners registered with :meth:`FeishuEmulator.on_change` get ``{"kind": ...}``
events: ``call``, ``message``, ``card``, ``upload``, ``connection``, ``delivery``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import random
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
import attrs
from aiohttp import web

from imrobots.emulation import new_token
from imrobots.platform import LoneSurrogate, parse_json_strict

from .errors import ApiError
from .frames import DATA, Frame, card_action_event, encode_frame, message_event, new_id
from .state import (
    ApiCall,
    App,
    CardEntity,
    MessageRecord,
    RenderedCard,
    Resource,
    Window,
    iter_elements,
    render_card,
)

__all__ = ["Connection", "Delivery", "FeishuEmulator"]

log = logging.getLogger("imrobots_feishu.emulator")

Listener = Callable[[dict[str, Any]], None]

REDELIVERY = (15.0, 300.0, 3600.0, 21600.0)
"""Seconds after which an unanswered event is delivered again (PROTOCOLS 3.4)."""
MAX_CONNECTIONS = 50
"""Long connections per app (PROTOCOLS 3.4)."""
CARD_BYTES = 30 * 1024
"""Card and post content, and card entities (PROTOCOLS 3.8)."""
TEXT_BYTES = 150 * 1024
"""Text message content (PROTOCOLS 3.8)."""
STREAM_LIFETIME = 600.0
"""Seconds streaming mode stays on after being enabled (PROTOCOLS 3.8)."""
MAX_TABLES = 5
"""Tables one card may hold (UNCONFIRMED: the limit; see :meth:`ApiError.too_many_tables`)."""
_TABLE = re.compile(r"(?m)^[ \t]*\|[^\n]*\|[ \t]*\n[ \t]*\|[ \t:\-|]+\|[ \t]*$")
"""A markdown table: a row of cells, then its delimiter row."""
_FENCED = re.compile(r"(?ms)^[ \t]*```.*?^[ \t]*```")
"""A fenced code block (tables in it are text)."""

_SEND_OPS = ("im.message.create", "im.message.reply")


@attrs.define(kw_only=True)
class Connection:
    """One open long connection."""

    id: str
    app_id: str
    service_id: int
    ws: web.WebSocketResponse = attrs.field(repr=False)
    transport: Any = attrs.field(default=None, repr=False)
    opened: float = attrs.field(factory=time.time)
    pings: int = 0
    muted: bool = False
    """The server sends nothing more on it (no pongs, events routed to it are lost);
    WebSocket-level pings are still answered. See :meth:`FeishuEmulator.mute_connections`."""


@attrs.define(kw_only=True)
class Delivery:
    """One event on its way to the app, with its attempts."""

    app_id: str
    event_id: str
    payload: bytes = attrs.field(repr=False)
    kind: str = "event"
    attempts: int = 0
    done: asyncio.Future[dict[str, Any]] | None = attrs.field(default=None, repr=False)
    latencies: list[float] = attrs.field(factory=list)
    sending: bool = False
    """An attempt is in flight (a scheduled redelivery then waits for the next step)."""


class FeishuEmulator:
    """Feishu's server side on 127.0.0.1. See the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        response_timeout: float = 3.0,
        redelivery: Sequence[float] = REDELIVERY,
        max_connections: int = MAX_CONNECTIONS,
        api_rate: int = 50,
        api_rate_minute: int = 1000,
        chat_rate: int = 5,
        patch_rate: int = 5,
        card_rate: int = 10,
        card_bytes: int = CARD_BYTES,
        text_bytes: int = TEXT_BYTES,
        markdown_bytes: int | None = None,
        message_text_bytes: int | None = None,
        stream_lifetime: float = STREAM_LIFETIME,
        max_tables: int | None = MAX_TABLES,
        token_ttl: int = 7200,
        fragment_size: int | None = None,
        ping_interval: int = 120,
        reconnect_interval: int = 120,
        reconnect_nonce: int = 30,
    ) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the emulator binds loopback addresses only")
        self.host = host
        self.control_token = new_token()
        """What the control API's ``POST`` routes need (``X-Imrobots-Token``)."""
        self.port = port
        self.response_timeout = response_timeout
        self.redelivery = tuple(redelivery)
        self.max_connections = max_connections
        self.api_rate = api_rate
        self.api_rate_minute = api_rate_minute
        self.chat_rate = chat_rate
        self.patch_rate = patch_rate
        self.card_rate = card_rate
        self.card_bytes = card_bytes
        self.text_bytes = text_bytes
        self.markdown_bytes = markdown_bytes
        """Most UTF-8 bytes one markdown element may hold (``None``: only ``card_bytes``);
        set small by tests that check splitting."""
        self.message_text_bytes = message_text_bytes
        """Most UTF-8 bytes of text one text or post message may hold (``None``: only
        ``text_bytes``/``card_bytes``); set small by tests that check splitting."""
        self.stream_lifetime = stream_lifetime
        self.max_tables = max_tables
        """Most markdown tables (and ``table`` elements) one card may hold (230099/11310
        beyond; ``None``: no limit)."""
        self.token_ttl = token_ttl
        self.fragment_size = fragment_size
        self.client_config = {
            "ReconnectCount": -1,
            "ReconnectInterval": reconnect_interval,
            "ReconnectNonce": reconnect_nonce,
            "PingInterval": ping_interval,
        }
        self.apps: dict[str, App] = {}
        self.tokens: dict[str, tuple[str, float]] = {}
        self.messages: dict[str, MessageRecord] = {}
        self.cards: dict[str, CardEntity] = {}
        self.resources: dict[str, Resource] = {}
        self.calls: list[ApiCall] = []
        self.connections: dict[str, Connection] = {}
        self.deliveries: dict[str, Delivery] = {}
        self.p2p_chats: dict[tuple[str, str], str] = {}
        self.uuids: dict[tuple[str, str], str] = {}
        self.windows = Window()
        self.failure_rate = 0.0
        self.rate_limit_rate = 0.0
        self.cardkit_refused = False
        """Whether CardKit creates are refused (99991672), as for an app without the
        CardKit permission: the platform falls back to PATCH."""
        self.latency = 0.0
        self.lost_answer_rate = 0.0
        """Share of successful OpenAPI calls whose answer is lost (after they acted)."""
        self.lost_answers = 0
        self._faults: dict[str, list[ApiError]] = {}
        self.resource_redirect: str | None = None
        """Where message-resource downloads are redirected (a 302), to check that a robot
        never follows a download off its configured domain; ``None``: served here."""
        """API name -> errors its next calls get, in order (:meth:`fail_next`)."""
        self._http: aiohttp.ClientSession | None = None
        """The session callback POSTs go out on (callback mode)."""
        self._listeners: list[Listener] = []
        self._held: dict[str, list[Delivery]] = {}
        self._pending: dict[str, Delivery] = {}
        """Frame message id -> the delivery awaiting its response frame."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._seq = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._site_port: int | None = None
        self.random = random.Random()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        from .server import make_app

        self._runner = web.AppRunner(make_app(self), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        sockets: list[Any] = list(getattr(server, "sockets", None) or [])
        self._site_port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for conn in list(self.connections.values()):
            with contextlib.suppress(Exception):
                await conn.ws.close()
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        if self._site_port is None:
            raise RuntimeError("the emulator is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._site_port}"

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ listeners
    def on_change(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds, re-checked on every change (and every 50 ms)."""
        changed = asyncio.Event()
        remove = self.on_change(lambda event: changed.set())
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), 0.05)
        finally:
            remove()

    def notify(self, kind: str, **fields: Any) -> None:
        event = {"kind": kind, "wall": time.time(), **fields}
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("emulator listener failed")

    # ------------------------------------------------------------------ apps
    def add_app(
        self,
        app_id: str,
        app_secret: str,
        *,
        verification_token: str | None = None,
        encrypt_key: str | None = None,
        bot_name: str = "Robot",
        callback_url: str | None = None,
    ) -> App:
        app = App(
            app_id=app_id,
            app_secret=app_secret,
            verification_token=verification_token or secrets.token_urlsafe(16),
            encrypt_key=encrypt_key,
            bot_open_id=f"ou_bot_{app_id}",
            bot_name=bot_name,
            callback_url=callback_url,
        )
        self.apps[app_id] = app
        return app

    def check_secret(self, app_id: str, app_secret: str) -> App:
        app = self.apps.get(app_id)
        if app is None or not secrets.compare_digest(app.app_secret, app_secret):
            raise ApiError.bad_credentials()
        return app

    def issue_token(self, app: App) -> tuple[str, int]:
        """A tenant token; the current one while more than 30 minutes remain
        (PROTOCOLS 3.8)."""
        now = time.time()
        for token, (app_id, expires) in self.tokens.items():
            if app_id == app.app_id and expires - now > 1800:
                return token, int(expires - now)
        token = f"t-{secrets.token_hex(16)}"
        self.tokens[token] = (app.app_id, now + self.token_ttl)
        return token, self.token_ttl

    def app_for_token(self, authorization: str | None) -> App:
        if not authorization:
            raise ApiError.missing_token()
        token = authorization.removeprefix("Bearer ").strip()
        found = self.tokens.get(token)
        if found is None or found[1] <= time.time():
            raise ApiError.invalid_token()
        return self.apps[found[0]]

    # ------------------------------------------------------------------ limits, faults
    def check_limits(self, app: App, api: str) -> None:
        """The app-level limits of ``api`` (PROTOCOLS 3.9) and the injected faults."""
        queued = self._faults.get(api)
        if queued:
            raise queued.pop(0)
        if self.rate_limit_rate and self.random.random() < self.rate_limit_rate:
            raise ApiError.frequency_limit(self.api_rate, 1.0)
        if self.failure_rate and self.random.random() < self.failure_rate:
            raise ApiError.system_busy()
        now = time.monotonic()
        wait = self.windows.hit(f"{app.app_id}:{api}:s", self.api_rate, 1.0, now)
        if wait is not None:
            raise ApiError.frequency_limit(self.api_rate, wait)
        wait = self.windows.hit(f"{app.app_id}:{api}:m", self.api_rate_minute, 60.0, now)
        if wait is not None:
            raise ApiError.frequency_limit(self.api_rate_minute, wait)

    def record_call(
        self, method: str, path: str, status: int, code: int, started: float
    ) -> ApiCall:
        call = ApiCall(
            method=method,
            path=path,
            status=status,
            code=code,
            wall=time.time(),
            latency=time.monotonic() - started,
            rate_limited=code in (99991400, 230020),
        )
        self.calls.append(call)
        self.notify("call", record=attrs.asdict(call))
        return call

    def fail_next(self, api: str, error: ApiError, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``api`` (the route's name in the record, e.g.
        ``im.message.reply``, ``cardkit.card.update``) with ``error`` instead of acting:
        a 429 with its reset header, another process's 230020, a refused upload."""
        self._faults.setdefault(api, []).extend([error] * times)

    def revoke_tokens(self, app_id: str) -> int:
        """Invalidate the app's tenant tokens now (as when its secret is reset or Feishu
        drops them early): calls with them get 99991663. Returns how many."""
        revoked = [t for t, (owner, _) in self.tokens.items() if owner == app_id]
        for token in revoked:
            del self.tokens[token]
        return len(revoked)

    def end_streaming(self, card_id: str) -> None:
        """Close a card entity's streaming mode as its 10 minutes running out does: the
        next streaming update gets 200850."""
        entity = self.cards[card_id]
        entity.streaming_since = None
        entity.timed_out = True

    def bump_sequence(self, card_id: str, by: int) -> None:
        """Another writer updated the card entity with a ``sequence`` ``by`` higher: the
        robot's next updates with lower ones get 300317."""
        self.cards[card_id].sequence += by

    def set_failure_rate(self, share: float) -> None:
        self.failure_rate = share

    def set_rate_limit_rate(self, share: float) -> None:
        self.rate_limit_rate = share

    def set_latency(self, seconds: float) -> None:
        self.latency = seconds

    def set_lost_answer_rate(self, share: float) -> None:
        """Lose the answer of this share (0..1) of successful OpenAPI calls: each takes
        effect (a message is sent, a card updated), then its connection is cut before
        the answer goes out, as when a reply times out after Feishu acted."""
        if not 0.0 <= share <= 1.0:
            raise ValueError("share must be between 0 and 1")
        self.lost_answer_rate = share

    def lose_answer(self) -> bool:
        """Whether the answer of this successful call is to be lost."""
        lost = self.lost_answer_rate > 0 and self.random.random() < self.lost_answer_rate
        self.lost_answers += lost
        return lost

    # ------------------------------------------------------------------ callback mode
    def callback_session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def set_callback_url(self, app_id: str, url: str | None) -> None:
        """Switch the app to HTTP callback delivery at ``url`` (``None``: back to the long
        connection). The URL must answer the ``url_verification`` challenge first, as
        Feishu's developer console requires; :class:`ValueError` if it does not. Events
        held while the app had no delivery route are then POSTed."""
        from .server import verify_url

        app = self.apps[app_id]
        if url is not None and not await verify_url(self, app_id, url):
            raise ValueError(f"{url} did not answer Feishu's URL verification challenge")
        app.callback_url = url
        self.notify("callback", app_id=app_id, url=url)
        if url is not None:
            for delivery in self._held.pop(app_id, []):
                self._spawn(self._attempt(delivery))

    # ------------------------------------------------------------------ connections
    def endpoint(self, app: App) -> dict[str, Any]:
        """``data`` of ``POST /callback/ws/endpoint`` (PROTOCOLS 3.1)."""
        device = secrets.token_hex(8)
        service = 100 + len(self.apps)
        url = self.base_url.replace("http://", "ws://")
        return {
            "URL": f"{url}/ws?device_id={device}&service_id={service}&app_id={app.app_id}",
            "ClientConfig": dict(self.client_config),
        }

    def live(self, app_id: str) -> list[Connection]:
        return [c for c in self.connections.values() if c.app_id == app_id]

    def attach(self, conn: Connection) -> None:
        self.connections[conn.id] = conn
        self.notify("connection", event="open", app_id=conn.app_id, connection=conn.id)
        held = self._held.pop(conn.app_id, [])
        for delivery in held:
            self._spawn(self._attempt(delivery))

    def detach(self, conn: Connection) -> None:
        if self.connections.pop(conn.id, None) is not None:
            self.notify("connection", event="close", app_id=conn.app_id, connection=conn.id)

    async def drop_connections(self, app_id: str | None = None) -> int:
        """Abort the TCP of live connections (no close handshake); returns how many. In
        callback mode this closes the connections callbacks were POSTed on."""
        dropped = 0
        if self._http is not None:
            await self._http.close()
            self._http = None
        for conn in list(self.connections.values()):
            if app_id is not None and conn.app_id != app_id:
                continue
            self.detach(conn)
            if conn.transport is not None:
                conn.transport.abort()
            else:
                await conn.ws.close()
            dropped += 1
        return dropped

    def mute_connections(self, app_id: str | None = None) -> int:
        """Mute the live connections (of ``app_id``, or all) without closing them: no more
        pongs, events routed to them are lost, WebSocket pings are still answered.
        Returns how many. New connections are not affected."""
        count = 0
        for conn in self.connections.values():
            if app_id is None or conn.app_id == app_id:
                conn.muted = True
                count += 1
        return count

    def pong(self, conn: Connection, frame: Frame) -> Frame:
        """The answer to a ping: a pong carrying the ClientConfig (PROTOCOLS 3.3)."""
        conn.pings += 1
        return Frame(
            seq_id=frame.seq_id,
            log_id=frame.log_id,
            service=frame.service,
            method=0,
            headers=[("type", "pong")],
            payload=json.dumps(self.client_config).encode(),
        )

    def on_response(self, frame: Frame) -> None:
        """A response frame from the client (PROTOCOLS 3.4)."""
        frame_id = frame.header("message_id")
        delivery = self._pending.pop(frame_id or "", None)
        if delivery is None or delivery.done is None or delivery.done.done():
            return
        try:
            answer = parse_json_strict(frame.payload or b"{}", where="response frame")
            if not isinstance(answer, dict):
                answer = {"code": 500}
            data = answer.get("data")
            if isinstance(data, str) and data:
                try:
                    answer["data"] = parse_json_strict(
                        base64.b64decode(data), where="response frame data"
                    )
                except LoneSurrogate:
                    raise
                except ValueError:
                    answer["data"] = None
        except LoneSurrogate as exc:
            # Refused as an answer that cannot be read: a failed attempt (redelivered as
            # Feishu's schedule says), the connection kept. UNCONFIRMED: what Feishu does.
            log.warning("refused a response frame of %s: %s", delivery.app_id, exc)
            answer = {"code": 500}
        except ValueError:
            answer = {"code": 500}
        delivery.done.set_result(answer)

    # ------------------------------------------------------------------ delivery
    def deliver(
        self,
        app_id: str,
        envelope: Mapping[str, Any],
        kind: str = "event",
        *,
        raw: bytes | None = None,
    ) -> Delivery:
        """Deliver an event envelope (and its redeliveries) to the app, in the background.
        ``raw``: send these bytes as the payload instead (malformed JSON, deep nesting,
        escapes of lone surrogates: for fuzzing a client)."""
        header = envelope.get("header") or {}
        delivery = Delivery(
            app_id=app_id,
            event_id=str(header.get("event_id") or new_id("")),
            payload=raw if raw is not None else json.dumps(envelope, ensure_ascii=False).encode(),
            kind=kind,
        )
        delivery.done = asyncio.get_running_loop().create_future()
        self.deliveries[delivery.event_id] = delivery
        self._spawn(self._deliver_all(delivery))
        return delivery

    async def _deliver_all(self, delivery: Delivery) -> None:
        schedule = (0.0, *self.redelivery)
        for index, delay in enumerate(schedule):
            if delay:
                await asyncio.sleep(delay)
            done = delivery.done
            if done is not None and done.done() and done.result().get("code") == 200:
                return  # a held attempt, pushed once the app could be reached, was answered
            if delivery.sending or any(d is delivery for d in self._held.get(delivery.app_id, ())):
                continue  # in flight, or held until the app can be reached
            answer = await self._attempt(delivery)
            if answer is not None and answer.get("code") == 200:
                return
            if index == len(schedule) - 1:
                self.notify("delivery", event_id=delivery.event_id, result="given up")

    async def _attempt(self, delivery: Delivery) -> dict[str, Any] | None:
        """One delivery attempt: push the frame(s), wait for the response frame."""
        delivery.sending = True
        try:
            return await self._attempt_once(delivery)
        finally:
            delivery.sending = False

    async def _attempt_once(self, delivery: Delivery) -> dict[str, Any] | None:
        app = self.apps[delivery.app_id]
        if app.callback_url:
            from .server import post_callback

            answer = await post_callback(self, app, delivery)
            self._finish(delivery, answer)
            return answer
        conns = self.live(delivery.app_id)
        if not conns:
            held = self._held.setdefault(delivery.app_id, [])
            if not any(d is delivery for d in held):
                held.append(delivery)
            return None
        conn = self.random.choice(conns)
        delivery.attempts += 1
        frame_id = new_id("")
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        attempt = Delivery(
            app_id=delivery.app_id, event_id=delivery.event_id, payload=b"", done=waiter
        )
        self._pending[frame_id] = attempt
        started = time.monotonic()
        try:
            for frame in self._frames(delivery, frame_id, conn):
                if not conn.muted:
                    await conn.ws.send_bytes(encode_frame(frame))
            answer = await asyncio.wait_for(waiter, self.response_timeout)
        except (TimeoutError, ConnectionError, RuntimeError) as exc:
            self._pending.pop(frame_id, None)
            self.notify(
                "delivery", event_id=delivery.event_id, attempt=delivery.attempts, result=repr(exc)
            )
            return None
        delivery.latencies.append(time.monotonic() - started)
        self._finish(delivery, answer)
        return answer

    def _finish(self, delivery: Delivery, answer: dict[str, Any] | None) -> None:
        self.notify(
            "delivery",
            event_id=delivery.event_id,
            attempt=delivery.attempts,
            result=answer.get("code") if answer else None,
        )
        if answer is not None and delivery.done is not None and not delivery.done.done():
            delivery.done.set_result(answer)

    def _frames(self, delivery: Delivery, frame_id: str, conn: Connection) -> list[Frame]:
        payload = delivery.payload
        size = self.fragment_size or len(payload) or 1
        parts = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
        trace = new_id("")
        seq = next(self._seq)
        return [
            Frame(
                seq_id=seq,
                log_id=seq,
                service=conn.service_id,
                method=DATA,
                headers=[
                    ("type", delivery.kind),
                    ("message_id", frame_id),
                    ("sum", str(len(parts))),
                    ("seq", str(index)),
                    ("trace_id", trace),
                    ("timestamp", str(int(time.time() * 1000))),
                ],
                payload=part,
            )
            for index, part in enumerate(parts)
        ]

    async def redeliver(self, event_id: str) -> Delivery:
        """Deliver an earlier event again, as Feishu does (same ``event_id``)."""
        old = self.deliveries[event_id]
        envelope = json.loads(old.payload)
        return self.deliver(old.app_id, envelope, old.kind)

    # ------------------------------------------------------------------ users
    def p2p_chat(self, app_id: str, user: str) -> str:
        return self.p2p_chats.setdefault((app_id, user), f"oc_p2p_{user}")

    def push_message(
        self,
        app_id: str,
        *,
        chat_id: str,
        chat_type: str,
        sender: str,
        message_type: str,
        content: Mapping[str, Any],
        mentions: Sequence[Mapping[str, Any]] = (),
        parent_id: str | None = None,
    ) -> tuple[MessageRecord, Delivery]:
        """A user sends a message: record it and deliver ``im.message.receive_v1``."""
        app = self.apps[app_id]
        if chat_type == "p2p":
            self.p2p_chats[(app_id, sender)] = chat_id
        record = MessageRecord(
            message_id=new_id("om_"),
            app_id=app_id,
            chat_id=chat_id,
            chat_type=chat_type,
            sender_id=sender,
            from_app=False,
            msg_type=message_type,
            content=dict(content),
            parent_id=parent_id,
            root_id=parent_id,
        )
        self.messages[record.message_id] = record
        self.notify("message", record=self.message_view(record))
        envelope = message_event(
            app_id=app_id,
            tenant_key=app.tenant_key,
            verification_token=app.verification_token,
            message_id=record.message_id,
            chat_id=chat_id,
            chat_type=chat_type,
            sender_open_id=sender,
            message_type=message_type,
            content=content,
            mentions=mentions,
            parent_id=parent_id,
        )
        return record, self.deliver(app_id, envelope)

    def bot_mention(self, app: App, key: str = "@_user_1") -> dict[str, Any]:
        return {
            "key": key,
            "id": {"union_id": f"on_{app.bot_open_id}", "user_id": "", "open_id": app.bot_open_id},
            "name": app.bot_name,
            "tenant_key": app.tenant_key,
        }

    def add_resource(
        self, kind: str, data: bytes, *, name: str | None = None, message_id: str | None = None
    ) -> Resource:
        key = new_id("img_v3_" if kind == "image" else "file_v3_")
        resource = Resource(key=key, kind=kind, data=data, name=name, message_id=message_id)
        self.resources[key] = resource
        return resource

    async def press_button(
        self, app_id: str, *, message_id: str, value: Any, operator: str
    ) -> dict[str, Any]:
        """A user presses a button: deliver ``card.action.trigger`` and apply the answer
        (a toast, or a card replacing the pressed one) within ``response_timeout``."""
        app = self.apps[app_id]
        record = self.messages[message_id]
        envelope = card_action_event(
            app_id=app_id,
            tenant_key=app.tenant_key,
            verification_token=app.verification_token,
            operator_open_id=operator,
            message_id=message_id,
            chat_id=record.chat_id,
            value=value,
        )
        delivery = self.deliver(app_id, envelope)
        assert delivery.done is not None
        answer = await asyncio.wait_for(asyncio.shield(delivery.done), self.response_timeout + 10.0)
        data = answer.get("data")
        if isinstance(data, dict):
            card = data.get("card")
            if (
                isinstance(card, dict)
                and card.get("type") == "raw"
                and isinstance(card.get("data"), dict)
            ):
                self._replace_card(record, card["data"])
        return answer

    # ------------------------------------------------------------------ views
    def render(self, record: MessageRecord) -> RenderedCard | None:
        if record.msg_type != "interactive":
            return None
        if record.card_id is not None and record.card_id in self.cards:
            entity = self.cards[record.card_id]
            rendered = render_card(entity.data)
            return attrs.evolve(rendered, streaming=entity.streaming)
        return render_card(record.content)

    def message_view(self, record: MessageRecord) -> dict[str, Any]:
        view: dict[str, Any] = {
            "message_id": record.message_id,
            "app_id": record.app_id,
            "chat_id": record.chat_id,
            "chat_type": record.chat_type,
            "sender_id": record.sender_id,
            "from_app": record.from_app,
            "msg_type": record.msg_type,
            "content": record.content,
            "parent_id": record.parent_id,
            "receivers": list(record.receivers),
            "created": record.created,
            "updated": record.updated,
            "updates": record.updates,
            "card_id": record.card_id,
        }
        rendered = self.render(record)
        if rendered is not None:
            view["card"] = attrs.asdict(rendered)
            if record.card_id is not None and record.card_id in self.cards:
                view["content_updates"] = self.cards[record.card_id].content_updates
        return view

    def _changed(self, record: MessageRecord, *, new: bool = False) -> None:
        if not new:
            record.updates += 1
            record.updated = time.time()
        kind = "card" if record.msg_type == "interactive" else "message"
        self.notify(kind, record=self.message_view(record), new=new)

    def _replace_card(self, record: MessageRecord, card: dict[str, Any]) -> None:
        if record.card_id is not None and record.card_id in self.cards:
            entity = self.cards[record.card_id]
            entity.data = card
            entity.streaming_since = None
        else:
            record.content = card
        self._changed(record)

    # ------------------------------------------------------------------ OpenAPI: messages
    def _content(self, msg_type: str, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, str):
            raise ApiError.bad_request("content must be a JSON string")
        limit = self.text_bytes if msg_type == "text" else self.card_bytes
        if len(raw.encode()) > limit:
            raise ApiError.content_too_long()
        try:
            content = parse_json_strict(raw, where="content")
        except LoneSurrogate as exc:
            log.warning("refused a message: %s", exc)
            raise ApiError.lone_surrogate(exc) from None
        except ValueError:
            raise ApiError.bad_request("content is not valid JSON") from None
        if not isinstance(content, dict):
            raise ApiError.bad_request("content must be a JSON object")
        if msg_type == "interactive" and content.get("type") != "card":
            self._check_markdown(content)
        most = self.message_text_bytes
        shown = message_text(msg_type, content) if msg_type in ("text", "post") else ""
        if most is not None and len(shown.encode()) > most:
            raise ApiError.content_too_long()
        return content

    def _check_markdown(self, card: Mapping[str, Any]) -> None:
        body = card.get("body") if isinstance(card.get("body"), dict) else card
        assert isinstance(body, Mapping)
        tables = 0
        for element in iter_elements(body.get("elements")):
            text = str(element.get("content") or "")
            if element.get("tag") == "table":
                tables += 1
            elif element.get("tag") == "markdown":
                tables += len(_TABLE.findall(_FENCED.sub("", text)))
                if self.markdown_bytes is not None and len(text.encode()) > self.markdown_bytes:
                    raise ApiError.card_too_large()
        if self.max_tables is not None and tables > self.max_tables:
            raise ApiError.too_many_tables()

    def _chat_limit(self, chat_id: str) -> None:
        wait = self.windows.hit(f"chat:{chat_id}", self.chat_rate, 1.0, time.monotonic())
        if wait is not None:
            raise ApiError.message_frequency()

    def api_send(
        self, app: App, *, receive_id_type: str, body: Mapping[str, Any], api: str
    ) -> MessageRecord:
        """``POST /open-apis/im/v1/messages`` (PROTOCOLS 3.8)."""
        receive_id = body.get("receive_id")
        if not isinstance(receive_id, str) or not receive_id:
            raise ApiError.bad_request("receive_id is required")
        receivers: list[str] = []
        if receive_id_type == "chat_id":
            chat_id = receive_id
            known = [m for m in self.messages.values() if m.chat_id == chat_id]
            chat_type = known[0].chat_type if known else "group"
        elif receive_id_type in ("open_id", "user_id", "union_id", "email"):
            chat_id = self.p2p_chat(app.app_id, receive_id)
            chat_type = "p2p"
            receivers = [receive_id]
        else:
            raise ApiError.bad_request(f"invalid receive_id_type {receive_id_type!r}")
        return self._new_app_message(app, chat_id, chat_type, body, receivers=receivers)

    def api_reply(self, app: App, message_id: str, body: Mapping[str, Any]) -> MessageRecord:
        """``POST /open-apis/im/v1/messages/:message_id/reply`` (PROTOCOLS 3.8)."""
        parent = self.messages.get(message_id)
        if parent is None:
            raise ApiError.message_not_found()
        if parent.withdrawn:
            raise ApiError.withdrawn()
        thread = parent.thread_id
        if body.get("reply_in_thread"):
            thread = thread or new_id("omt_")
        return self._new_app_message(
            app,
            parent.chat_id,
            parent.chat_type,
            body,
            parent=parent.message_id,
            thread=thread,
        )

    def _new_app_message(
        self,
        app: App,
        chat_id: str,
        chat_type: str,
        body: Mapping[str, Any],
        *,
        receivers: list[str] | None = None,
        parent: str | None = None,
        thread: str | None = None,
    ) -> MessageRecord:
        msg_type = str(body.get("msg_type") or "")
        if msg_type not in ("text", "post", "interactive", "image", "file", "audio", "media"):
            raise ApiError.bad_request(f"unsupported msg_type {msg_type!r}")
        content = self._content(msg_type, body.get("content"))
        token = body.get("uuid")
        if isinstance(token, str) and token:
            if len(token) > 50:
                raise ApiError.bad_request("uuid longer than 50 characters")
            earlier = self.uuids.get((app.app_id, token))
            if earlier is not None and earlier in self.messages:
                return self.messages[earlier]  # deduplicated within an hour (PROTOCOLS 3.8)
        self._chat_limit(chat_id)
        card_id = None
        if msg_type == "interactive" and content.get("type") == "card":
            data = content.get("data")
            card_id = data.get("card_id") if isinstance(data, dict) else None
            entity = self.cards.get(str(card_id))
            if entity is None or entity.app_id != app.app_id:
                raise ApiError.card_not_found()
            if entity.message_id is not None:
                raise ApiError.card_sent_twice()
        if msg_type in ("image", "file", "audio", "media"):
            key = content.get("image_key") or content.get("file_key")
            resource = self.resources.get(str(key))
            if resource is None:
                raise ApiError.bad_request(f"unknown resource key {key!r}")
        record = MessageRecord(
            message_id=new_id("om_"),
            app_id=app.app_id,
            chat_id=chat_id,
            chat_type=chat_type,
            sender_id=app.bot_open_id,
            from_app=True,
            msg_type=msg_type,
            content=content,
            parent_id=parent,
            root_id=parent,
            thread_id=thread,
            uuid=token if isinstance(token, str) and token else None,
            card_id=str(card_id) if card_id else None,
            receivers=receivers or [],
        )
        self.messages[record.message_id] = record
        if record.uuid:
            self.uuids[(app.app_id, record.uuid)] = record.message_id
        if card_id:
            self.cards[str(card_id)].message_id = record.message_id
        if msg_type in ("image", "file"):
            resource = self.resources[str(content.get("image_key") or content.get("file_key"))]
            self.notify(
                "upload",
                record={
                    "conversation_id": receivers[0] if receivers else chat_id,
                    "kind": msg_type,
                    "name": resource.name,
                    "size": len(resource.data),
                    "message_id": record.message_id,
                },
            )
        self._changed(record, new=True)
        return record

    def api_patch(self, app: App, message_id: str, body: Mapping[str, Any]) -> None:
        """``PATCH /open-apis/im/v1/messages/:message_id``: replace a shared card
        (PROTOCOLS 3.8)."""
        record = self.messages.get(message_id)
        if record is None or record.app_id != app.app_id or not record.from_app:
            raise ApiError.message_not_found()
        if record.withdrawn:
            raise ApiError.withdrawn()
        if record.msg_type != "interactive":
            raise ApiError.bad_request("only cards can be updated")
        wait = self.windows.hit(f"patch:{message_id}", self.patch_rate, 1.0, time.monotonic())
        if wait is not None:
            raise ApiError.message_frequency()
        content = self._content("interactive", body.get("content"))
        current = record.content if record.card_id is None else self.cards[record.card_id].data
        if not _update_multi(current) or not _update_multi(content):
            raise ApiError.not_updatable()
        if record.card_id is not None:
            self.cards[record.card_id].data = content
            self.cards[record.card_id].streaming_since = None
        else:
            record.content = content
        self._changed(record)

    def api_withdraw(self, message_id: str) -> None:
        """A user or admin recalls a message (later replies to it fail with 230011)."""
        self.messages[message_id].withdrawn = True

    def api_get_message(self, app: App, message_id: str) -> dict[str, Any]:
        """``GET /open-apis/im/v1/messages/:message_id`` (the fields robots read)."""
        record = self.messages.get(message_id)
        if record is None or record.app_id != app.app_id:
            raise ApiError.message_not_found()
        return {
            "items": [
                {
                    "message_id": record.message_id,
                    "root_id": record.root_id or "",
                    "parent_id": record.parent_id or "",
                    "msg_type": record.msg_type,
                    "create_time": str(int(record.created * 1000)),
                    "update_time": str(int(record.updated * 1000)),
                    "deleted": record.withdrawn,
                    "updated": record.updates > 0,
                    "chat_id": record.chat_id,
                    "sender": {
                        "id": record.sender_id,
                        "id_type": "app_id" if record.from_app else "open_id",
                        "sender_type": "app" if record.from_app else "user",
                        "tenant_key": app.tenant_key,
                    },
                    "body": {"content": json.dumps(record.content, ensure_ascii=False)},
                }
            ]
        }

    def api_resource(self, app: App, message_id: str, key: str, kind: str) -> Resource:
        """``GET /open-apis/im/v1/messages/:message_id/resources/:file_key?type=``."""
        record = self.messages.get(message_id)
        resource = self.resources.get(key)
        if record is None or record.app_id != app.app_id or resource is None:
            raise ApiError.message_not_found()
        if resource.message_id not in (None, message_id):
            raise ApiError.bad_request("the resource does not belong to the message")
        if kind not in ("image", "file"):
            raise ApiError.bad_request("type must be image or file")
        return resource

    def api_upload(self, kind: str, data: bytes, name: str | None) -> Resource:
        """``POST /open-apis/im/v1/images`` (10 MB) and ``/files`` (30 MB)."""
        limit = 10 * 1024 * 1024 if kind == "image" else 30 * 1024 * 1024
        if not data:
            raise ApiError.bad_request("empty file")
        if len(data) > limit:
            raise ApiError.bad_request(f"{kind} larger than {limit} bytes")
        return self.add_resource(kind, data, name=name)

    # ------------------------------------------------------------------ OpenAPI: CardKit
    def _entity(self, app: App, card_id: str) -> CardEntity:
        entity = self.cards.get(card_id)
        if entity is None or entity.app_id != app.app_id:
            raise ApiError.card_not_found()
        since = entity.streaming_since
        if since is not None and time.monotonic() - since > self.stream_lifetime:
            entity.streaming_since = None  # streaming mode closes itself
            entity.timed_out = True
        return entity

    def _sequenced(self, entity: CardEntity, body: Mapping[str, Any]) -> bool:
        """Check ``uuid`` and ``sequence``; False when the uuid was seen (a replay)."""
        token = body.get("uuid")
        if isinstance(token, str) and token in entity.uuids:
            return False
        sequence = body.get("sequence")
        if not isinstance(sequence, int) or isinstance(sequence, bool):
            raise ApiError.bad_request("sequence is required")
        if sequence <= entity.sequence:
            raise ApiError.sequence_not_increasing()
        if entity.streaming_since is None:
            wait = self.windows.hit(f"card:{entity.card_id}", self.card_rate, 1.0, time.monotonic())
            if wait is not None:
                raise ApiError.card_frequency()
        entity.sequence = sequence
        if isinstance(token, str) and token:
            entity.uuids.add(token)
        return True

    def _card_json(self, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, str):
            raise ApiError.bad_request("data must be a JSON string")
        if len(raw.encode()) > self.card_bytes:
            raise ApiError.card_too_large()
        try:
            data = parse_json_strict(raw, where="data")
        except LoneSurrogate as exc:
            log.warning("refused a card: %s", exc)
            raise ApiError.lone_surrogate(exc) from None
        except ValueError:
            raise ApiError.bad_request("data is not valid JSON") from None
        if not isinstance(data, dict) or data.get("schema") != "2.0":
            raise ApiError.bad_request("card entities need a schema 2.0 card")
        self._check_markdown(data)
        return data

    def _set_streaming(self, entity: CardEntity, config: Any) -> None:
        if isinstance(config, dict) and "streaming_mode" in config:
            if config["streaming_mode"]:
                entity.streaming_since = time.monotonic()
                entity.timed_out = False
            else:
                entity.streaming_since = None

    def api_card_create(self, app: App, body: Mapping[str, Any]) -> CardEntity:
        """``POST /open-apis/cardkit/v1/cards`` (PROTOCOLS 3.8)."""
        if self.cardkit_refused:
            raise ApiError.no_permission()
        if body.get("type") != "card_json":
            raise ApiError.bad_request("only type card_json is emulated")
        data = self._card_json(body.get("data"))
        entity = CardEntity(card_id=new_id("7"), app_id=app.app_id, data=data)
        self._set_streaming(entity, data.get("config"))
        self.cards[entity.card_id] = entity
        return entity

    def _entity_changed(self, entity: CardEntity) -> None:
        if entity.message_id is not None and entity.message_id in self.messages:
            self._changed(self.messages[entity.message_id])

    def api_card_update(self, app: App, card_id: str, body: Mapping[str, Any]) -> None:
        """``PUT /open-apis/cardkit/v1/cards/:card_id``: replace the whole card."""
        entity = self._entity(app, card_id)
        card = body.get("card")
        if not isinstance(card, dict) or card.get("type") != "card_json":
            raise ApiError.bad_request("card must be {type: card_json, data}")
        data = self._card_json(card.get("data"))
        if not self._sequenced(entity, body):
            return
        entity.data = data
        config = data.get("config")
        self._set_streaming(entity, config if isinstance(config, dict) else {})
        if not (isinstance(config, dict) and "streaming_mode" in config):
            entity.streaming_since = None
        self._entity_changed(entity)

    def api_card_settings(self, app: App, card_id: str, body: Mapping[str, Any]) -> None:
        """``PATCH /open-apis/cardkit/v1/cards/:card_id/settings``."""
        entity = self._entity(app, card_id)
        raw = body.get("settings")
        try:
            settings = parse_json_strict(raw, where="settings") if isinstance(raw, str) else None
        except LoneSurrogate as exc:
            log.warning("refused card settings: %s", exc)
            raise ApiError.lone_surrogate(exc) from None
        except ValueError:
            settings = None
        if not isinstance(settings, dict):
            raise ApiError.bad_request("settings must be a JSON string")
        if not self._sequenced(entity, body):
            return
        config = settings.get("config")
        if isinstance(config, dict):
            merged = dict(entity.data.get("config") or {})
            merged.update(config)
            entity.data["config"] = merged
            self._set_streaming(entity, config)
        self._entity_changed(entity)

    def api_element_content(
        self, app: App, card_id: str, element_id: str, body: Mapping[str, Any]
    ) -> None:
        """``PUT .../cards/:card_id/elements/:element_id/content``: stream text
        (PROTOCOLS 3.8)."""
        entity = self._entity(app, card_id)
        if entity.streaming_since is None:
            raise ApiError.streaming_timeout() if entity.timed_out else ApiError.streaming_closed()
        content = body.get("content")
        if not isinstance(content, str) or not 1 <= len(content) <= 100_000:
            raise ApiError.bad_request("content must be 1..100000 characters")
        if self.markdown_bytes is not None and len(content.encode()) > self.markdown_bytes:
            raise ApiError.card_too_large()
        elements = entity.data.get("body", {}).get("elements")
        target = next(
            (e for e in iter_elements(elements) if e.get("element_id") == element_id), None
        )
        if target is None:
            raise ApiError.bad_request(f"no element {element_id!r}")
        if target.get("tag") == "markdown" and self.max_tables is not None:
            before = str(target.get("content") or "")
            target["content"] = content
            try:
                self._check_markdown(entity.data)  # UNCONFIRMED: streaming text is checked too
            finally:
                target["content"] = before
        if not self._sequenced(entity, body):
            return
        if "content" in target:
            target["content"] = content
        else:
            target["text"] = {"tag": "plain_text", "content": content}
        entity.content_updates += 1
        self._entity_changed(entity)


def message_text(msg_type: str, content: Mapping[str, Any]) -> str:
    """The text a text or post message shows (mentions as ``@id``); an image or file
    message shows as ``[image]`` or ``[file: NAME]``."""
    if msg_type == "image":
        return "[image]"
    if msg_type == "file":
        return f"[file: {content.get('file_name') or content.get('file_key') or ''}]"
    if msg_type == "text":
        return re.sub(r'<at user_id="([^"]*)"></at>', r"@\1", str(content.get("text") or ""))
    body: Any = content
    if "content" not in content:
        body = next((v for v in content.values() if isinstance(v, dict)), {})
    lines = []
    for line in body.get("content") or ():
        parts = []
        for item in line if isinstance(line, list) else ():
            if isinstance(item, dict) and item.get("tag") in ("text", "md", "a"):
                parts.append(str(item.get("text") or ""))
            elif isinstance(item, dict) and item.get("tag") == "at":
                parts.append(f"@{item.get('user_id')}")
        lines.append(" ".join(p for p in parts if p))
    return "\n".join(lines)


def _update_multi(card: Mapping[str, Any]) -> bool:
    if card.get("type") == "card" or card.get("schema") == "2.0":
        return True  # card entities and schema 2.0 cards are always shared
    config = card.get("config")
    return isinstance(config, dict) and bool(config.get("update_multi"))
