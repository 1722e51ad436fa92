"""The DingTalk server-side emulator: lifecycle, stream connections, pushes, faults."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from aiohttp import web

from imrobots.emulation import new_token
from imrobots.platform import (
    LoneSurrogate,
    find_lone_surrogate,
    may_hold_lone_surrogate,
    parse_json,
)

from . import errors, frames
from .errors import ApiError
from .openapi import apply_callback_response, record_card_change
from .state import (
    AccessToken,
    AckKind,
    AckRecord,
    ApiCall,
    CardRecord,
    ConnectionRecord,
    ConversationType,
    EmulatedApp,
    EmulatorState,
    Listener,
    MediaRecord,
    PushedCallback,
    PushedEvent,
    PushedMessage,
    SentMessage,
    StoredFile,
    Ticket,
    WebhookMessage,
    WebhookSession,
)

logger = logging.getLogger(__name__)

TICKET_LIFETIME = 90.0
"""Seconds a connection ticket stays valid (PROTOCOLS 1.1)."""
BOT_MESSAGE_TIMEOUT = 3.0
"""Stream push timeout for bot messages (PROTOCOLS 1.7)."""
CARD_CALLBACK_TIMEOUT = 2.0
"""Card callbacks must be answered within 2 s (PROTOCOLS 1.7)."""
MAX_REDELIVERIES = 3
# GUESS: the event retry schedule is documented for HTTP push only (PROTOCOLS 1.7).
EVENT_RETRY_DELAYS = (10.0, 30.0)
"""Event redelivery delays when ``redeliver_after`` is not set."""


MEDIA_LIMITS = {"image": 20 * 1024 * 1024, "file": 20 * 1024 * 1024,
                "voice": 2 * 1024 * 1024, "video": 20 * 1024 * 1024}  # fmt: skip
"""Largest upload per ``media/upload`` type, in bytes. UNCONFIRMED: DingTalk's page for
the API was not available; 20 MB is what DingTalk's own connectors enforce
(DingTalk-Real-AI/dingtalk-openclaw-connector ``MAX_FILE_SIZE``), 2 MB for voice is
the old documented AMR limit."""
DOWNLOAD_URL_LIFETIME = 3600.0
"""Seconds a ``messageFiles/download`` URL stays valid. GUESS: undocumented."""
_FILE_KINDS = {"picture": "image/png", "file": "application/octet-stream",
               "audio": "audio/amr", "video": "video/mp4"}  # fmt: skip


@dataclass(kw_only=True)
class Withhold:
    """A fault: the next ``count`` successful calls of ``route`` (any route when ``None``)
    take effect, then their answer is kept from the client: held ``seconds`` (past the
    client's time-out; ``None``: until the emulator stops) or the connection is dropped."""

    route: str | None
    count: int
    seconds: float | None
    mode: Literal["timeout", "disconnect"]

    def describe(self) -> str:
        where = self.route or "any route"
        if self.mode == "disconnect":
            return f"{where}: connection dropped after the call took effect"
        held = f"{self.seconds:g}s" if self.seconds is not None else "until the emulator stops"
        return f"{where}: answer held {held} after the call took effect"


StallStage = Literal["ticket", "upgrade", "silent"]


@dataclass(kw_only=True)
class Stall:
    """A fault of the next ``count`` connection attempts (a half-open network): the
    ``ticket`` POST, or the WebSocket ``upgrade``, is accepted at TCP level and never
    answered; or (``silent``) the upgrade is answered and then nothing more comes: no
    frame, no pong. Held until the emulator stops."""

    stage: StallStage
    count: int

    def describe(self) -> str:
        what = {
            "ticket": "connections/open accepted, never answered",
            "upgrade": "WebSocket upgrade accepted, never answered",
            "silent": "WebSocket upgraded, then silent (no frames, no pongs)",
        }[self.stage]
        return f"{what} ({self.count} more)"


@dataclass(kw_only=True)
class Redirect:
    """A fault: the next ``count`` requests whose path starts with ``path`` are answered
    with ``status`` (a 3xx) and ``Location: location`` instead of being served."""

    path: str
    location: str
    count: int
    status: int = 307

    def describe(self) -> str:
        return f"{self.path}: {self.status} to {self.location} ({self.count} more)"


ConnectionFault = Literal["muted", "blackhole"]


@dataclass(kw_only=True, eq=False)
class _Push:
    message_id: str
    frame_type: str
    topic: str
    data: dict[str, Any]
    client_id: str
    ack: AckRecord
    record: PushedMessage | PushedCallback | PushedEvent
    extra_headers: dict[str, str] = field(default_factory=dict)
    redeliveries: int = 0

    @property
    def settled(self) -> bool:
        """Acknowledged for good (an EVENT ACK must not ask for LATER)."""
        if not self.ack.acked:
            return False
        if self.ack.kind == "event":
            return self.ack.code == 200 and self.ack.status != "LATER"
        return True


@dataclass(kw_only=True, eq=False)
class _LiveConnection:
    record: ConnectionRecord
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    broken: bool = False
    fault: ConnectionFault | None = None
    """``muted``: nothing more is sent (pushes routed here are lost, no SYSTEM pings),
    WebSocket pings are still answered. ``blackhole``: nothing sent, nothing read (no
    pongs, no acks), the socket stays open."""

    @property
    def usable(self) -> bool:
        return (
            not self.broken and not self.record.draining and self.record.live and not self.ws.closed
        )

    async def send(self, frame: dict[str, Any]) -> None:
        async with self.lock:
            await self.ws.send_str(json.dumps(frame, ensure_ascii=False))


class DingTalkEmulator:
    """A protocol-faithful emulator of DingTalk's server side on 127.0.0.1.

    Serves the Stream gateway (``/v1.0/gateway/connections/open`` and the
    ``/connect`` WebSocket), the OpenAPI routes robots call, per-message
    sessionWebhooks and a JSON control API under ``/_emulator/``. Everything
    it sees is recorded in :attr:`state` (also exposed as :attr:`calls`,
    :attr:`acks`, :attr:`cards`, ...).

    Example::

        async with DingTalkEmulator(seed=1) as emu:
            emu.add_app("ding-app", "secret")
            # point the SDK at emu.base_url, then:
            pushed = await emu.push_message("ding-app", text="hello")
            await emu.wait_for(lambda: pushed.ack.acked)
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        qps_limit: int = 20,
        ping_interval: float | None = 30.0,
        disconnect_grace: float = 10.0,
        token_lifetime: int = 7200,
        webhook_lifetime: float = 5400.0,
        redeliver_after: float | None = None,
        seed: int | None = None,
        max_connections_per_app: int = 50,
        stream_content_limit: int = 20_000,
        card_data_limit: int = 30_000,
        invalid_token_status: int = 401,
    ) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the emulator only binds a loopback address")
        self.host = host
        self.control_token = new_token()
        """What the control API's ``POST`` routes need (``X-Imrobots-Token``)."""
        self.requested_port = port
        self.qps_limit = qps_limit
        self.ping_interval = ping_interval
        self.disconnect_grace = disconnect_grace
        self.token_lifetime = token_lifetime
        self.webhook_lifetime = webhook_lifetime
        self.redeliver_after = redeliver_after
        self.seed = seed
        self.max_connections_per_app = max_connections_per_app
        # GUESS: DingTalk documents "content is too large" but not the size; the
        # docs only advise <= 1 KB per call and <= 3 KB in total.
        self.stream_content_limit = stream_content_limit
        """Bytes of ``content`` one ``PUT /v1.0/card/streaming`` may carry."""
        # GUESS: no documented size limit for a StandardCard's cardData either.
        self.card_data_limit = card_data_limit
        """Bytes of ``cardData`` (the JSON string) a StandardCard send or update may carry."""
        self.webhook_text_limit = 20_000
        """Bytes of text one sessionWebhook message may carry (460101 beyond)."""
        self.media_limits = dict(MEDIA_LIMITS)
        """Largest ``media/upload`` per type, in bytes."""
        self._withholds: list[Withhold] = []
        self._redirects: list[Redirect] = []
        self._refuse_until = 0.0
        self._stalls: list[Stall] = []
        self._stopping = asyncio.Event()
        self._download_tokens: dict[str, tuple[str, float]] = {}
        self.invalid_token_status = invalid_token_status
        self.state = EmulatorState()
        self.rng = random.Random(seed)
        self._fault_rng = random.Random(None if seed is None else seed + 1)
        self.latency = 0.0
        self.failure_rate = 0.0
        self.failure_kind: Literal["5xx", "qps"] = "5xx"
        self.lost_rate = 0.0
        """Share of successful calls whose answer is lost (see :meth:`set_lost_rate`)."""
        self._live: dict[str, _LiveConnection] = {}
        self._pending: dict[str, deque[_Push]] = {}
        self._pushes_by_id: dict[str, _Push] = {}
        self._qps: dict[tuple[str, str], tuple[int, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.event_sockets: set[web.WebSocketResponse] = set()
        """Open ``/_emulator/events`` sockets (closed by :meth:`stop`)."""
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Bind the loopback socket and start serving."""
        if self._runner is not None:
            return
        from .server import build_app

        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.requested_port))
        sock.setblocking(False)
        self._port = int(sock.getsockname()[1])
        runner = web.AppRunner(build_app(self), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.SockSite(runner, sock)
        await site.start()
        self._runner = runner

    async def stop(self) -> None:
        """Close every connection, cancel timers and stop serving."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping.set()  # withheld answers go out (to clients long gone)
        for conn in list(self._live.values()):
            conn.record.close_reason = conn.record.close_reason or "server stop"
            for task in conn.tasks:
                task.cancel()
            try:
                await asyncio.wait_for(conn.ws.close(code=1001, message=b"server stop"), 1.0)
            except (TimeoutError, ConnectionError, RuntimeError):
                if conn.transport is not None:
                    conn.transport.abort()
        for ws in list(self.event_sockets):
            with contextlib.suppress(TimeoutError, ConnectionError, RuntimeError):
                await asyncio.wait_for(ws.close(code=1001, message=b"server stop"), 1.0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await runner.cleanup()

    async def __aenter__(self) -> DingTalkEmulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the emulator is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: OpenAPI, gateway, webhooks and control API."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def ws_endpoint(self) -> str:
        return "ws" + self.base_url[len("http") :] + "/connect"

    # --- state views ------------------------------------------------------------

    @property
    def apps(self) -> dict[str, EmulatedApp]:
        return self.state.apps

    @property
    def calls(self) -> list[ApiCall]:
        return self.state.calls

    @property
    def acks(self) -> dict[str, AckRecord]:
        return self.state.acks

    @property
    def cards(self) -> dict[str, CardRecord]:
        return self.state.cards

    @property
    def webhook_messages(self) -> list[WebhookMessage]:
        return self.state.webhook_messages

    @property
    def sent_messages(self) -> list[SentMessage]:
        return self.state.sent_messages

    @property
    def connections(self) -> list[ConnectionRecord]:
        return self.state.connections

    @property
    def files(self) -> dict[str, StoredFile]:
        """What users sent the robot, by ``downloadCode``."""
        return self.state.files

    @property
    def media(self) -> dict[str, MediaRecord]:
        """What robots uploaded with ``media/upload``, by ``media_id``."""
        return self.state.media

    @property
    def pushes(self) -> list[PushedMessage | PushedCallback | PushedEvent]:
        return self.state.pushes

    def live_connections(self, client_id: str | None = None) -> list[ConnectionRecord]:
        return [
            c.record
            for c in self._live.values()
            if client_id is None or c.record.client_id == client_id
        ]

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """A queue receiving every recorded event as a JSON-able dict."""
        return self.state.subscribe()

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self.state.unsubscribe(queue)

    def on_change(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every recorded event; returns a remover."""
        return self.state.on_change(listener)

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 5.0, *, what: str | None = None
    ) -> None:
        """Wait until ``predicate()`` holds, re-checking after every recorded change."""
        await self.state.wait_for(predicate, timeout, what=what)

    # --- apps and tokens ----------------------------------------------------------

    def add_app(
        self, client_id: str, client_secret: str, *, robot_code: str | None = None
    ) -> EmulatedApp:
        """Register an internal app; ``robot_code`` defaults to the AppKey."""
        if not client_id or not client_secret:
            raise ValueError("client_id and client_secret must be non-empty")
        existing = self.state.apps.get(client_id)
        if existing is not None:
            if existing.client_secret != client_secret or (
                robot_code is not None and robot_code != existing.robot_code
            ):
                raise ValueError(f"app {client_id!r} already exists with other settings")
            return existing
        corp = frames.corp_id(client_id)
        app = EmulatedApp(
            client_id=client_id,
            client_secret=client_secret,
            robot_code=robot_code or client_id,
            app_id=str(self.rng.randrange(10**8, 10**9)),
            unified_app_id=frames.new_uuid(self.rng),
            corp_id=corp,
            chatbot_user_id=frames.lwcp_id(corp, "robot", client_id),
        )
        self.state.apps[client_id] = app
        self.state.emit("app", app)
        return app

    def _app(self, client_id: str) -> EmulatedApp:
        app = self.state.apps.get(client_id)
        if app is None:
            raise ValueError(f"unknown app {client_id!r}; call add_app() first")
        return app

    def issue_token(self, app: EmulatedApp) -> AccessToken:
        """Same token while valid (and its lifetime is renewed), else a new one."""
        now = time.monotonic()
        for token in self.state.tokens.values():
            if token.client_id == app.client_id and token.expires_at > now:
                token.expires_at = now + self.token_lifetime
                return token
        token = AccessToken(
            token=frames.new_hex(self.rng, 16),
            client_id=app.client_id,
            expires_at=now + self.token_lifetime,
        )
        self.state.tokens[token.token] = token
        return token

    def token_client(self, token: str | None) -> str | None:
        if not token:
            return None
        record = self.state.tokens.get(token)
        if record is None:
            return None
        if record.expires_at <= time.monotonic():
            del self.state.tokens[token]
            return None
        return record.client_id

    # --- faults -------------------------------------------------------------------

    def set_latency(self, seconds: float) -> None:
        """Delay every ``/v1.0/...`` answer by ``seconds``."""
        if not 0 <= seconds < math.inf:  # nan and inf too: every call would hang for good
            raise ValueError(f"latency must be >= 0 and finite, got {seconds!r}")
        self.latency = float(seconds)
        self._fault("latency", seconds=self.latency)

    def set_failure_rate(self, rate: float, *, kind: Literal["5xx", "qps"] = "5xx") -> None:
        """Fail this share of OpenAPI calls: ``500 system.busy`` or the 403 QPS body."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        if kind not in ("5xx", "qps"):
            raise ValueError("kind must be '5xx' or 'qps'")
        self.failure_rate = float(rate)
        self.failure_kind = kind
        self._fault("failure_rate", rate=self.failure_rate, failure_kind=kind)

    def expire_tokens(self) -> None:
        """Invalidate every issued access token (next calls get the auth error)."""
        self.state.tokens.clear()
        self._fault("expire_tokens")

    def withhold_responses(
        self,
        route: str | None = None,
        *,
        count: int = 1,
        seconds: float | None = None,
        mode: Literal["timeout", "disconnect"] = "timeout",
    ) -> Withhold:
        """Let the next ``count`` successful calls of ``route`` take effect, then keep their
        answer from the client: held ``seconds`` (``None``: until :meth:`stop`), or with
        ``mode="disconnect"`` the connection is dropped. ``route`` is a route name
        (``card.instances.createAndDeliver``, ``interactiveCards.send``, ``sessionWebhook``,
        ``media.upload``...; ``None``: any). The client sees a time-out or a dropped
        connection although DingTalk acted: the outcome is unknown to it."""
        if count < 1:
            raise ValueError("count must be at least 1")
        if mode not in ("timeout", "disconnect"):
            raise ValueError("mode must be 'timeout' or 'disconnect'")
        rule = Withhold(route=route, count=count, seconds=seconds, mode=mode)
        self._withholds.append(rule)
        self._fault("withhold", route=route, count=count, seconds=seconds, mode=mode)
        return rule

    def set_lost_rate(self, rate: float) -> None:
        """Lose the answer of this share (0..1) of successful calls (seeded dice): each
        takes effect, then its connection is dropped before the answer goes out, as
        :meth:`withhold_responses` with ``mode="disconnect"`` does for one call."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        self.lost_rate = float(rate)
        self._fault("lost_rate", rate=self.lost_rate)

    def refuse_credentials(self, seconds: float) -> None:
        """For ``seconds`` from now, ``POST /v1.0/oauth2/accessToken`` refuses every app's
        (right) credentials with ``400 invalidClientIdOrSecret``, as DingTalk did for a
        few seconds in production while the credentials were fine. Combine with
        :meth:`expire_tokens` so that the robot has to fetch a token meanwhile."""
        if not 0 <= seconds < math.inf:
            raise ValueError(f"seconds must be >= 0 and finite, got {seconds!r}")
        self._refuse_until = time.monotonic() + seconds
        self._fault("refuse_credentials", seconds=seconds)

    @property
    def refusing_credentials(self) -> bool:
        """Whether :meth:`refuse_credentials` is in effect."""
        return time.monotonic() < self._refuse_until

    def redirect_requests(
        self, path: str, location: str, *, count: int = 1, status: int = 307
    ) -> Redirect:
        """Answer the next ``count`` requests whose path starts with ``path`` (e.g.
        ``/robot/sendBySession`` for sessionWebhooks) with ``status`` and ``Location:
        location``: a platform host redirecting elsewhere. A client must not follow it."""
        if count < 1:
            raise ValueError("count must be at least 1")
        if not 300 <= status < 400:
            raise ValueError("status must be a 3xx")
        rule = Redirect(path=path, location=location, count=count, status=status)
        self._redirects.append(rule)
        self._fault("redirect", path=path, location=location, count=count, status=status)
        return rule

    def take_redirect(self, path: str) -> Redirect | None:
        """The redirect rule that applies to a request of ``path``, if any."""
        for rule in self._redirects:
            if path.startswith(rule.path) and rule.count > 0:
                rule.count -= 1
                if rule.count == 0:
                    self._redirects.remove(rule)
                return rule
        return None

    def fault_connections(self, fault: ConnectionFault, client_id: str | None = None) -> int:
        """Break the live connections (of ``client_id``, or all) without closing them;
        returns how many. ``muted``: the server stops sending (pushes routed to the
        connection are lost, no more SYSTEM pings) but still answers WebSocket pings.
        ``blackhole``: the socket goes silent both ways (nothing sent, nothing read, so no
        pongs and no acks) and stays open. New connections are not affected."""
        if fault not in ("muted", "blackhole"):
            raise ValueError("fault must be 'muted' or 'blackhole'")
        count = 0
        for conn in list(self._live.values()):
            if client_id is not None and conn.record.client_id != client_id:
                continue
            if conn.fault is None:
                conn.fault = fault
                conn.record.fault = fault
                if fault == "blackhole" and conn.transport is not None:
                    conn.transport.pause_reading()
                count += 1
        self._fault("connections", fault=fault, client_id=client_id, affected=count)
        return count

    def take_withhold(self, route: str) -> Withhold | None:
        """The withhold rule that applies to this successful call of ``route``, if any."""
        for rule in self._withholds:
            if rule.route in (None, route) and rule.count > 0:
                rule.count -= 1
                if rule.count == 0:
                    self._withholds.remove(rule)
                return rule
        if self.lost_rate > 0 and self._fault_rng.random() < self.lost_rate:
            return Withhold(route=route, count=1, seconds=None, mode="disconnect")
        return None

    def stall_connections(self, *, stage: StallStage = "upgrade", count: int = 1) -> Stall:
        """Make the next ``count`` connection attempts hang at ``stage`` (see :class:`Stall`):
        what a client sees when the network half-heals (the TCP handshake works, the
        answer never comes). A client that waits on library defaults stays deaf for
        minutes; one that bounds each step retries."""
        if count < 1:
            raise ValueError("count must be at least 1")
        if stage not in ("ticket", "upgrade", "silent"):
            raise ValueError("stage must be 'ticket', 'upgrade' or 'silent'")
        rule = Stall(stage=stage, count=count)
        self._stalls.append(rule)
        self._fault("stall", stage=stage, count=count)
        return rule

    def take_stall(self, stage: StallStage) -> Stall | None:
        """The stall rule that applies to this attempt at ``stage``, if any."""
        for rule in self._stalls:
            if rule.stage == stage and rule.count > 0:
                rule.count -= 1
                if rule.count == 0:
                    self._stalls.remove(rule)
                return rule
        return None

    async def hold(self, seconds: float | None) -> None:
        """Wait ``seconds`` (``None``: forever), or until the emulator stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def revoke_permission(self, client_id: str, *scopes: str) -> None:
        """Take permissions from the app (e.g. ``Card.Instance.Write``,
        ``Card.Streaming.Write``): the routes that need them answer 403
        ``Forbidden.AccessDenied.AccessTokenPermissionDenied`` naming the scope."""
        app = self._app(client_id)
        app.denied_scopes.update(scopes)
        self._fault("permission", client_id=client_id, revoked=sorted(scopes))

    def grant_permission(self, client_id: str, *scopes: str) -> None:
        """Give back permissions taken with :meth:`revoke_permission`."""
        app = self._app(client_id)
        app.denied_scopes.difference_update(scopes)
        self._fault("permission", client_id=client_id, granted=sorted(scopes))

    def revoke_card_permissions(self, client_id: str) -> None:
        """The app may not send or change cards (an app without the card permissions)."""
        self.revoke_permission(client_id, "Card.Instance.Write", "Card.Streaming.Write")

    def _fault(self, action: str, **details: Any) -> None:
        entry = {"action": action, **details, "at": time.monotonic(), "wall": time.time()}
        self.state.faults.append(entry)
        self.state.emit("fault", None, **entry)

    def roll_failure(self) -> ApiError | None:
        """The injected failure for this call, if the seeded dice say so."""
        if self.failure_rate <= 0 or self._fault_rng.random() >= self.failure_rate:
            return None
        return errors.qps_limited() if self.failure_kind == "qps" else errors.system_busy()

    def admit(self, client_id: str, route: str) -> bool:
        """Per-app per-API fixed 1-second window (DingTalk: "当前秒调用次数")."""
        # GUESS: refused calls do not count towards the window.
        second = int(time.time())
        key = (client_id, route)
        window, count = self._qps.get(key, (second, 0))
        if window != second:
            count = 0
        if count >= self.qps_limit:
            return False
        self._qps[key] = (second, count + 1)
        return True

    async def drop_connections(
        self, client_id: str | None = None, *, connection_id: str | None = None
    ) -> int:
        """Abort the TCP of live connections (no close frame), of one app or one connection
        (``connection_id``, as in :meth:`live_connections`); returns how many."""
        dropped = 0
        for conn in list(self._live.values()):
            if client_id is not None and conn.record.client_id != client_id:
                continue
            if connection_id is not None and conn.record.connection_id != connection_id:
                continue
            conn.record.close_reason = "dropped"
            conn.broken = True
            if conn.transport is not None:
                conn.transport.abort()
            else:
                await conn.ws.close(code=1006)
            dropped += 1
        self._fault(
            "drop_connections", client_id=client_id, connection_id=connection_id, dropped=dropped
        )
        return dropped

    # --- files users send, and their downloads -------------------------------------

    def add_file(
        self,
        client_id: str,
        data: bytes,
        *,
        kind: str = "file",
        name: str | None = None,
        mime_type: str | None = None,
    ) -> StoredFile:
        """Store content a user sends (``picture``, ``file``, ``audio`` or ``video``) and
        return it with its ``downloadCode``, for :meth:`push_message`'s ``content``."""
        self._app(client_id)
        if kind not in _FILE_KINDS:
            raise ValueError(f"kind must be one of {sorted(_FILE_KINDS)}")
        stored = StoredFile(
            download_code=frames.new_b64(self.rng, 48),
            client_id=client_id,
            kind=kind,
            name=name,
            size=len(data),
            mime_type=mime_type or _FILE_KINDS[kind],
            data=bytes(data),
        )
        self.state.files[stored.download_code] = stored
        self.state.emit("file", stored)
        return stored

    async def push_attachment(
        self,
        client_id: str,
        kind: Literal["picture", "file", "audio", "video"],
        data: bytes,
        *,
        name: str | None = None,
        recognition: str | None = None,
        duration_ms: int | None = None,
        **push: Any,
    ) -> PushedMessage:
        """A user sends a picture, file, voice message (with DingTalk's speech
        ``recognition``) or video: store it and push the message (PROTOCOLS 1.9).
        ``push`` goes to :meth:`push_message` (conversation, sender...)."""
        stored = self.add_file(client_id, data, kind=kind, name=name)
        content: dict[str, Any] = {"downloadCode": stored.download_code}
        if kind == "file":
            content["fileName"] = name or "file"
        elif kind == "audio":
            content["duration"] = duration_ms if duration_ms is not None else 1000
            if recognition is not None:
                content["recognition"] = recognition
        elif kind == "video":
            content["duration"] = duration_ms if duration_ms is not None else 1000
            content["videoType"] = "mp4"
        return await self.push_message(client_id, msgtype=kind, content=content, **push)

    def download_token(self, stored: StoredFile) -> str:
        """A temporary URL token for ``stored`` (what ``messageFiles/download`` answers)."""
        token = frames.new_hex(self.rng, 16)
        self._download_tokens[token] = (stored.download_code, time.monotonic())
        return token

    def file_for_token(self, token: str) -> StoredFile | None:
        entry = self._download_tokens.get(token)
        if entry is None or time.monotonic() - entry[1] > DOWNLOAD_URL_LIFETIME:
            return None
        return self.state.files.get(entry[0])

    # --- tickets and connections (used by the server) ------------------------------

    def new_ticket(
        self,
        app: EmulatedApp,
        subscriptions: list[dict[str, Any]],
        ua: str | None,
        local_ip: str | None,
    ) -> Ticket:
        ticket = Ticket(
            ticket=frames.new_uuid(self.rng),
            client_id=app.client_id,
            subscriptions=subscriptions,
            ua=ua,
            local_ip=local_ip,
            expires_at=time.monotonic() + TICKET_LIFETIME,
        )
        self.state.tickets[ticket.ticket] = ticket
        return ticket

    def take_ticket(self, value: str | None) -> Ticket:
        """Consume a ticket (single use, 90 s) or raise the handshake error."""
        ticket = self.state.tickets.get(value or "")
        if ticket is None or ticket.used or ticket.expires_at <= time.monotonic():
            raise errors.invalid_ticket()
        live = sum(1 for c in self._live.values() if c.record.client_id == ticket.client_id)
        if live >= self.max_connections_per_app:
            raise errors.too_many_connections(self.max_connections_per_app)
        ticket.used = True
        return ticket

    def attach(
        self, ws: web.WebSocketResponse, transport: asyncio.Transport | None, ticket: Ticket
    ) -> _LiveConnection:
        record = ConnectionRecord(
            connection_id=frames.new_uuid(self.rng),
            client_id=ticket.client_id,
            subscriptions=ticket.subscriptions,
            ua=ticket.ua,
            local_ip=ticket.local_ip,
        )
        conn = _LiveConnection(record=record, ws=ws, transport=transport)
        self._live[record.connection_id] = conn
        self.state.connections.append(record)
        self.state.emit("connection", record, event="open")
        if self.ping_interval:
            # GUESS: DingTalk's ping cadence is unpublished; 30 s by default.
            self._spawn_for(conn, self._ping_loop(conn, self.ping_interval))
        self._spawn(self._flush_pending(ticket.client_id))
        return conn

    def detach(self, conn: _LiveConnection, close_code: int | None) -> None:
        self._live.pop(conn.record.connection_id, None)
        for task in conn.tasks:
            task.cancel()
        record = conn.record
        if record.closed_at is None:
            record.closed_at = time.monotonic()
            record.closed_wall = time.time()
            record.close_reason = record.close_reason or "client"
        self.state.emit("connection", record, event="close", close_code=close_code)

    def on_text(self, conn: _LiveConnection, text: str) -> None:
        """Handle a text frame from a client: an ACK for a frame we sent."""
        try:
            frame = parse_json(text, where="frame")
            data = _parse_data(frame.get("data")) if isinstance(frame, dict) else None
        except ValueError:
            self.state.emit("frame", None, problem="not JSON", text=text[:500])
            return
        problem = _lone_surrogate(frame, data) if may_hold_lone_surrogate(text) else None
        headers = frame.get("headers") if isinstance(frame, dict) else None
        message_id = headers.get("messageId") if isinstance(headers, dict) else None
        ack = self.state.acks.get(message_id) if isinstance(message_id, str) else None
        if problem is not None and not _echoes_emulator(ack):
            # Refused, the connection kept: taken as never sent (a push then goes unacked,
            # as when no ACK comes). An echo of a lone surrogate the emulator sent itself
            # (fuzzing a client) is taken. GUESS: what DingTalk does with such a frame is
            # not documented.
            logger.warning(
                "refused a frame on stream connection %s: %s", conn.record.connection_id, problem
            )
            self.state.emit("frame", None, problem=str(problem))
            return
        if ack is None or not isinstance(frame, dict):
            self.state.emit("frame", None, problem="unknown messageId", frame=frame)
            return
        ack.ack_count += 1
        if ack.acked_at is None:
            now = time.monotonic()
            ack.acked_at = now
            ack.acked_wall = time.time()
            code = frame.get("code")
            ack.code = code if isinstance(code, int) else None
            message = frame.get("message")
            ack.message = message if isinstance(message, str) else None
            ack.data = data
            ack.raw = frame
            if ack.pushed_at is not None:
                ack.latency = now - ack.pushed_at
                ack.timed_out = ack.timeout is not None and ack.latency > ack.timeout
            if ack.kind == "ping":
                ack.echoed = isinstance(ack.data, dict) and ack.data.get("opaque") == ack.opaque
                if ack.echoed:
                    conn.record.pings_echoed += 1
            elif ack.kind == "callback":
                self._apply_callback(ack)
            elif ack.kind == "event":
                status = ack.data.get("status") if isinstance(ack.data, dict) else None
                ack.status = status if isinstance(status, str) else None
                push = self._pushes_by_id.get(ack.message_id)
                if push is not None and not push.settled:
                    ack.later_count += 1
        self.state.emit("ack", ack)

    def _apply_callback(self, ack: AckRecord) -> None:
        push = self._pushes_by_id.get(ack.message_id)
        if push is None or not isinstance(push.record, PushedCallback):
            return
        callback = push.record
        card = self.state.cards.get(callback.card_id)
        if card is None or ack.code != 200 or ack.response is None:
            return
        if ack.timed_out:
            # GUESS: a response after the documented 2 s deadline is dropped.
            callback.notes.append("ACK after the 2 s deadline: response ignored")
            return
        if card.kind != "instance":
            callback.notes.append("response not applied: StandardCard callbacks are unconfirmed")
            return
        try:
            changed = apply_callback_response(card, callback.user_id, ack.response, callback.notes)
        except ApiError as exc:
            callback.notes.append(f"response rejected: {exc.code}")
            return
        if changed:
            record_card_change(self.state, card, "callback")

    # --- pushes -------------------------------------------------------------------

    async def push_message(
        self,
        client_id: str,
        *,
        text: str = "",
        conversation_type: Literal["direct", "group"] = "group",
        conversation_id: str | None = None,
        conversation_title: str | None = None,
        sender_staff_id: str = "user001",
        sender_nick: str = "Alice",
        at_robot: bool = True,
        msgtype: str = "text",
        content: dict[str, Any] | None = None,
        msg_id: str | None = None,
        create_at_ms: int | None = None,
        replied_msg: dict[str, Any] | None = None,
    ) -> PushedMessage:
        """A user sends the robot a message: push it like DingTalk does (PROTOCOLS 1.9).

        ``replied_msg`` makes a text a quoted reply (``text.repliedMsg``), e.g.
        ``{"msgType": "text", "msgId": "...", "content": {"text": "the quoted words"}}``.

        The message gets its own sessionWebhook on this emulator, valid for
        ``webhook_lifetime`` seconds. It goes to one live connection of the app
        (seeded random choice); with none live it is queued until one connects.
        """
        app = self._app(client_id)
        if conversation_type not in ("direct", "group"):
            raise ValueError("conversation_type must be 'direct' or 'group'")
        if not msgtype:
            raise ValueError("msgtype must be non-empty")
        if msgtype != "text" and content is None:
            raise ValueError(f"msgtype {msgtype!r} needs a content dict")
        conv_type: ConversationType = conversation_type
        if conversation_id is None:
            key = "default" if conv_type == "group" else (sender_staff_id or sender_nick)
            conversation_id = frames.conversation_id(app, conv_type, key)
        msg_id = msg_id or frames.new_msg_id(self.rng)
        create_at = create_at_ms if create_at_ms is not None else frames.now_ms()
        session = frames.new_hex(self.rng, 16)
        webhook = f"{self.base_url}/robot/sendBySession?session={session}"
        self.state.sessions[session] = WebhookSession(
            token=session,
            client_id=client_id,
            msg_id=msg_id,
            conversation_id=conversation_id,
            conversation_type=conv_type,
            sender_staff_id=sender_staff_id,
            expires_at=time.monotonic() + self.webhook_lifetime,
        )
        data = frames.build_bot_message(
            app,
            msg_id=msg_id,
            conversation_type=conv_type,
            conversation_id=conversation_id,
            conversation_title=conversation_title,
            sender_staff_id=sender_staff_id,
            sender_nick=sender_nick,
            at_robot=at_robot,
            msgtype=msgtype,
            text=text,
            content=content,
            create_at_ms=create_at,
            session_webhook=webhook,
            session_webhook_expired_ms=frames.now_ms() + int(self.webhook_lifetime * 1000),
            replied_msg=replied_msg,
        )
        message_id = frames.new_message_id(self.rng)
        ack = self._new_ack(
            message_id, "message", frames.TOPIC_BOT_MESSAGE, client_id, timeout=BOT_MESSAGE_TIMEOUT
        )
        record = PushedMessage(
            msg_id=msg_id,
            message_id=message_id,
            client_id=client_id,
            conversation_id=conversation_id,
            conversation_type=conv_type,
            sender_staff_id=sender_staff_id,
            text=text,
            data=data,
            session_webhook=webhook,
            ack=ack,
        )
        await self._push(record, frames.TOPIC_BOT_MESSAGE, data)
        return record

    async def redeliver_message(self, client_id: str, msg_id: str) -> PushedMessage:
        """Push a bot message again, as DingTalk may (the same frame ``messageId``, the same
        ``msgId`` and content): for testing that a robot answers it once. Returns once it
        is sent (or queued while no connection is live)."""
        self._app(client_id)
        for push in self._pushes_by_id.values():
            record = push.record
            if (
                isinstance(record, PushedMessage)
                and record.client_id == client_id
                and record.msg_id == msg_id
            ):
                push.redeliveries += 1
                self.state.emit(
                    "redelivery", None, message_id=push.message_id, attempt=push.redeliveries
                )
                await self._deliver(push)
                return record
        raise ValueError(f"no message {msg_id!r} was pushed to app {client_id!r}")

    async def press_button(
        self,
        client_id: str,
        *,
        card_id: str,
        action_id: str,
        params: dict[str, Any] | None = None,
        user_id: str = "user001",
    ) -> PushedCallback:
        """A user presses a card button: push ``/v1.0/card/instances/callback``.

        The ACK's ``data.response`` (cardData / userPrivateData /
        cardUpdateOptions) is applied to instance cards when it arrives in time.
        """
        app = self._app(client_id)
        card = self.state.cards.get(card_id)
        if card is None or card.client_id != client_id:
            raise ValueError(f"unknown card {card_id!r} for app {client_id!r}")
        notes: list[str] = []
        # GUESS: spaceId is the openConversationId in groups and the userId in 1:1
        # robot chats (mirroring openSpaceId); real callbacks were not captured.
        if card.conversation_type == "direct":
            space_type, space_id = "IM_ROBOT", (card.receiver_user_ids or [user_id])[0]
        else:
            space_type, space_id = "IM_GROUP", card.conversation_id or ""
        if card.kind == "standard":
            # GUESS: StandardCard clicks over Stream are unconfirmed (PROTOCOLS 1.10);
            # the emulator uses the card-instance callback format.
            notes.append("StandardCard click delivered in the card-instance callback format")
        elif card.callback_type not in (None, "STREAM"):
            notes.append(f"card callbackType is {card.callback_type}; delivered over Stream anyway")
        data = frames.build_card_callback(
            app,
            card_id=card_id,
            action_id=action_id,
            params=params or {},
            user_id=user_id,
            space_type=space_type,
            space_id=space_id,
        )
        message_id = frames.new_message_id(self.rng)
        ack = self._new_ack(
            message_id,
            "callback",
            frames.TOPIC_CARD_CALLBACK,
            client_id,
            timeout=CARD_CALLBACK_TIMEOUT,
        )
        record = PushedCallback(
            message_id=message_id,
            client_id=client_id,
            card_id=card_id,
            action_id=action_id,
            params=dict(params or {}),
            user_id=user_id,
            data=data,
            notes=notes,
            ack=ack,
        )
        await self._push(record, frames.TOPIC_CARD_CALLBACK, data)
        return record

    async def push_event(
        self,
        client_id: str,
        event_type: str,
        data: dict[str, Any] | None = None,
        *,
        event_id: str | None = None,
    ) -> PushedEvent:
        """Push an EVENT frame (e.g. ``chat_update_title``) to a ``*`` EVENT subscriber.

        The ACK's ``data`` should carry ``{"status": "SUCCESS" | "LATER"}``; a
        missing ACK, a non-200 code or ``LATER`` gets the event redelivered
        (after ``redeliver_after`` if set, else 10 s then 30 s).
        """
        app = self._app(client_id)
        if not event_type:
            raise ValueError("event_type must be non-empty")
        event_id = event_id or frames.new_hex(self.rng, 16)
        message_id = frames.new_message_id(self.rng)
        ack = self._new_ack(message_id, "event", event_type, client_id, timeout=BOT_MESSAGE_TIMEOUT)
        payload = dict(data or {})
        record = PushedEvent(
            message_id=message_id,
            client_id=client_id,
            event_type=event_type,
            event_id=event_id,
            data=payload,
            ack=ack,
        )
        push = _Push(
            message_id=message_id,
            frame_type="EVENT",
            topic=frames.TOPIC_EVENT,
            data=payload,
            client_id=client_id,
            ack=ack,
            record=record,
            extra_headers={
                "eventType": event_type,
                "eventId": event_id,
                "eventCorpId": app.corp_id,
                "eventBornTime": str(frames.now_ms()),
                "eventUnifiedAppId": app.unified_app_id,
            },
        )
        self._pushes_by_id[message_id] = push
        self.state.pushes.append(record)
        await self._deliver(push)
        return record

    async def send_raw_frame(
        self, client_id: str, text: str, *, message_id: str | None = None
    ) -> AckRecord | None:
        """Send ``text`` as it is (any string: malformed JSON, escapes of lone surrogates,
        a deep nesting...) to one live connection of the app, for fuzzing a client.
        With ``message_id``, the client's ACK for it is recorded in :attr:`acks` (kind
        ``raw``) and returned; without, ``None``. Raises ``LookupError`` when the app has
        no usable connection."""
        self._app(client_id)
        conns = [c for c in self._live.values() if c.record.client_id == client_id and c.usable]
        if not conns:
            raise LookupError(f"app {client_id!r} has no live connection")
        conn = conns[0]
        ack = None
        if message_id is not None:
            ack = self._new_ack(message_id, "raw", "raw", client_id)
            ack.connection_id = conn.record.connection_id
        async with conn.lock:
            await conn.ws.send_str(text)
        if ack is not None:
            ack.pushed_at = time.monotonic()
            ack.pushed_wall = time.time()
            ack.deliveries = 1
        self.state.emit("raw", None, size=len(text), message_id=message_id)
        return ack

    async def send_system(
        self,
        client_id: str,
        topic: Literal["ping", "disconnect"],
        *,
        connection_id: str | None = None,
        reason: str = "persistent connection is timeout",
        opaque: str | None = None,
    ) -> list[str]:
        """Send a SYSTEM frame to the app's live connections (or one of them).

        ``ping`` carries ``{"opaque": ...}`` and expects it echoed in the ACK.
        ``disconnect`` carries ``{"reason": ...}``; the connection gets nothing
        more and is closed after ``disconnect_grace`` seconds.
        Returns the frame messageIds.
        """
        self._app(client_id)
        if topic not in ("ping", "disconnect"):
            raise ValueError("topic must be 'ping' or 'disconnect'")
        targets = [
            c
            for c in self._live.values()
            if c.record.client_id == client_id
            and (connection_id is None or c.record.connection_id == connection_id)
        ]
        if connection_id is not None and not targets:
            raise ValueError(f"no live connection {connection_id!r} for app {client_id!r}")
        sent: list[str] = []
        for conn in targets:
            if topic == "ping":
                message_id = await self._send_ping(conn, opaque)
            else:
                message_id = await self._send_disconnect(conn, reason)
            if message_id is not None:
                sent.append(message_id)
        return sent

    def _new_ack(
        self,
        message_id: str,
        kind: AckKind,
        topic: str,
        client_id: str,
        *,
        timeout: float | None = None,
    ) -> AckRecord:
        ack = AckRecord(
            message_id=message_id, kind=kind, topic=topic, client_id=client_id, timeout=timeout
        )
        self.state.acks[message_id] = ack
        return ack

    async def _push(
        self,
        record: PushedMessage | PushedCallback,
        topic: str,
        data: dict[str, Any],
    ) -> None:
        push = _Push(
            message_id=record.message_id,
            frame_type="CALLBACK",
            topic=topic,
            data=data,
            client_id=record.client_id,
            ack=record.ack,
            record=record,
        )
        self._pushes_by_id[push.message_id] = push
        self.state.pushes.append(record)
        await self._deliver(push)

    def _pick(self, push: _Push) -> _LiveConnection | None:
        candidates = [
            c
            for c in self._live.values()
            if c.record.client_id == push.client_id
            and c.usable
            and c.record.subscribes(push.frame_type, push.topic)
        ]
        if not candidates:
            return None
        # A faulted connection gets pushes only while the app has no healthy one (DingTalk
        # notices a dead TCP connection in the end; the client has given up on it earlier).
        healthy = [c for c in candidates if c.fault is None]
        return self.rng.choice(healthy or candidates)

    async def _deliver(self, push: _Push) -> None:
        app = self.state.apps[push.client_id]
        while True:
            conn = self._pick(push)
            if conn is None:
                self._enqueue(push)
                return
            frame = frames.build_frame(
                push.frame_type,
                push.topic,
                push.message_id,
                push.data,
                app_id=app.app_id,
                connection_id=conn.record.connection_id,
                extra_headers=push.extra_headers,
            )
            if push.ack.kind == "event" and push.ack.acked and not push.settled:
                # a LATER/failed ACK: the redelivery gets a fresh ACK record
                push.ack.acked_at = None
            if conn.fault is not None:
                if isinstance(push.record, PushedMessage):
                    push.record.lost = True
                elif isinstance(push.record, PushedCallback):
                    push.record.notes.append(f"lost on a {conn.fault} connection")
            else:
                try:
                    await conn.send(frame)
                except (ConnectionError, RuntimeError):
                    conn.broken = True
                    continue
            now = time.monotonic()
            ack = push.ack
            if ack.pushed_at is None:
                ack.pushed_at = now
                ack.pushed_wall = time.time()
            ack.deliveries += 1
            ack.connection_id = conn.record.connection_id
            conn.record.deliveries += 1
            push.record.frame = frame
            self.state.emit(
                "push",
                push.record,
                message_id=push.message_id,
                topic=push.topic,
                connection_id=conn.record.connection_id,
                delivery=ack.deliveries,
            )
            self._schedule_redelivery(push)
            return

    def _enqueue(self, push: _Push) -> None:
        queue = self._pending.setdefault(push.client_id, deque())
        if all(item is not push for item in queue):
            queue.append(push)
        push.record.queued = True
        if push.ack.queued_at is None:
            push.ack.queued_at = time.monotonic()
        self.state.emit("queued", push.record, message_id=push.message_id, topic=push.topic)

    async def _flush_pending(self, client_id: str) -> None:
        queue = self._pending.pop(client_id, None)
        if not queue:
            return
        for push in list(queue):
            await self._deliver(push)

    def _schedule_redelivery(self, push: _Push) -> None:
        delay = self.redeliver_after
        if push.ack.kind == "event" and delay is None:
            # events are "relatively reliable" and redelivered (PROTOCOLS 1.7)
            delay = EVENT_RETRY_DELAYS[min(push.redeliveries, len(EVENT_RETRY_DELAYS) - 1)]
            if push.redeliveries >= len(EVENT_RETRY_DELAYS):
                return
        if delay is None:
            return

        async def later() -> None:
            await asyncio.sleep(delay)
            if push.settled or push.redeliveries >= MAX_REDELIVERIES:
                return
            push.redeliveries += 1
            self.state.emit(
                "redelivery", None, message_id=push.message_id, attempt=push.redeliveries
            )
            await self._deliver(push)

        self._spawn(later())

    async def _send_ping(self, conn: _LiveConnection, opaque: str | None = None) -> str | None:
        message_id = frames.new_message_id(self.rng)
        opaque = opaque or frames.new_uuid(self.rng)
        frame = frames.build_frame("SYSTEM", frames.TOPIC_PING, message_id, {"opaque": opaque})
        ack = self._new_ack(message_id, "ping", frames.TOPIC_PING, conn.record.client_id)
        ack.opaque = opaque
        ack.connection_id = conn.record.connection_id
        try:
            await conn.send(frame)
        except (ConnectionError, RuntimeError):
            return None
        ack.pushed_at = time.monotonic()
        ack.pushed_wall = time.time()
        ack.deliveries = 1
        conn.record.pings_sent += 1
        self.state.emit("ping", ack)
        return message_id

    async def _send_disconnect(self, conn: _LiveConnection, reason: str) -> str | None:
        message_id = frames.new_message_id(self.rng)
        frame = frames.build_frame(
            "SYSTEM", frames.TOPIC_DISCONNECT, message_id, {"reason": reason}
        )
        ack = self._new_ack(
            message_id, "disconnect", frames.TOPIC_DISCONNECT, conn.record.client_id
        )
        ack.connection_id = conn.record.connection_id
        try:
            await conn.send(frame)
        except (ConnectionError, RuntimeError):
            return None
        ack.pushed_at = time.monotonic()
        ack.pushed_wall = time.time()
        ack.deliveries = 1
        conn.record.draining = True
        self.state.emit("connection", conn.record, event="disconnect", reason=reason)
        self._spawn_for(conn, self._close_after(conn, self.disconnect_grace))
        return message_id

    async def _close_after(self, conn: _LiveConnection, delay: float) -> None:
        # GUESS: DingTalk "closes TCP" after the grace period; the emulator sends a
        # WebSocket close frame (1000) first, then aborts if the client is silent.
        await asyncio.sleep(delay)
        if conn.record.live and not conn.ws.closed:
            conn.record.close_reason = conn.record.close_reason or "disconnect"
            try:
                await asyncio.wait_for(conn.ws.close(code=1000, message=b"disconnect"), 1.0)
            except (TimeoutError, ConnectionError, RuntimeError):
                if conn.transport is not None:
                    conn.transport.abort()

    async def _ping_loop(self, conn: _LiveConnection, interval: float) -> None:
        while conn.record.live:
            await asyncio.sleep(interval)
            if not conn.usable:
                return
            if conn.fault is None:
                await self._send_ping(conn)

    # --- background tasks -----------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _spawn_for(self, conn: _LiveConnection, coro: Coroutine[Any, Any, None]) -> None:
        task = self._spawn(coro)
        conn.tasks.add(task)
        task.add_done_callback(conn.tasks.discard)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.state.emit("error", None, error=repr(exc))


def _parse_data(value: Any) -> Any:
    """An ACK's ``data``: the JSON in the string, else the value itself."""
    if isinstance(value, str):
        try:
            return parse_json(value, where="frame.data")
        except ValueError:
            return value
    return value


def _lone_surrogate(frame: Any, data: Any) -> LoneSurrogate | None:
    """Where a client's frame, or the JSON in its ``data`` string, holds a lone surrogate."""
    path = find_lone_surrogate(frame)
    if path is not None:
        return LoneSurrogate("frame", path)
    path = find_lone_surrogate(data)
    return LoneSurrogate("frame.data", path) if path is not None else None


def _echoes_emulator(ack: AckRecord | None) -> bool:
    """Whether a lone surrogate in a client's frame may echo one the emulator sent: the
    ACK of a raw frame (:meth:`DingTalkEmulator.send_raw_frame`: text of any kind, whose
    messageId or ping opaque the ACK repeats)."""
    return ack is not None and ack.kind == "raw"
