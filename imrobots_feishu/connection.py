"""The Feishu long connection, owned end to end on asyncio with aiohttp.

Why not ``lark_oapi.ws.Client``: it creates a module-level event loop when imported,
``start()`` blocks that loop forever and cannot be stopped, endpoint discovery uses
blocking ``requests`` without a timeout (larksuite/oapi-sdk-python#169: a bot deaf
for days), and the handler runs before the response frame is written, so a slow
handler misses the 3 s deadline (PROTOCOLS 3.4, 3.5). This module speaks the same
protocol and reuses lark-oapi's protobuf ``pbbp2.Frame`` for the wire format:

1. ``POST {domain}/callback/ws/endpoint`` ``{"AppID", "AppSecret"}`` returns the
   WebSocket URL (with ``device_id`` and ``service_id``) and the ClientConfig
   (PROTOCOLS 3.1). Codes other than 0, 1 and 1000040343 are fatal (bad credentials).
2. The WebSocket carries binary frames only. A CONTROL ping goes out at once and then
   every ``PingInterval`` seconds; a pong may carry a new ClientConfig (PROTOCOLS 3.3).
3. DATA frames are reassembled by ``message_id`` when ``sum`` > 1 (fragments kept 5 s)
   and handed to the frame handler, which only converts the payload; the **response
   frame is written at once** (the same frame, ``biz_rt`` added, payload
   ``{"code": 200[, "data": base64 JSON]}``), and only then does the handler's
   follow-up (delivering the event to the core's sink) run (PROTOCOLS 3.4).
4. Losses reconnect with exponential backoff and jitter, bounded by
   ``reconnect_max``; a connection that completed its handshake resets the backoff. The
   liveness clock is Feishu's own traffic: each ping is answered by a CONTROL pong, so a
   socket on which no frame (pong or data) arrived for ``idle_timeout`` seconds (default:
   the PingInterval plus :data:`LIVENESS_MARGIN`, at most twice the interval: 130 s with
   the 120 s default) is dead and replaced; WebSocket-level pings and pongs do not count.
   A handshake refused with 514/1000040350 (over 50 connections) or 403 is fatal, as in
   lark-oapi. Endpoint discovery follows no redirect (a 3xx is an error).

:class:`CallbackEndpoint` is the other inbound mode, event callbacks over HTTP: an
aiohttp server on ``host:port`` whose ``path`` takes Feishu's POSTs. Each is checked
and opened by :class:`~imrobots_feishu.crypto.CallbackCrypto` (signature, freshness,
decryption, verification token); a forged one is answered 401 and logged with the
reason, and nothing else happens. The URL-verification challenge is echoed. Events go
to the same frame handler as long-connection frames: its :class:`Answer` ``data`` is the
HTTP response body (a card action's answer, ``{}`` otherwise), written before the
handler's follow-up runs, well within Feishu's 3 s.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import attrs
from aiohttp import web
from lark_oapi.ws.pb.pbbp2_pb2 import Frame  # type: ignore[import-untyped]

from imrobots.platform import (
    ConnectionStatus,
    FatalPlatformError,
    PlatformUnavailable,
    RetryableError,
    redirect_message,
)

from .crypto import URL_VERIFICATION, CallbackCrypto, ForgedCallback

__all__ = [
    "LIVENESS_MARGIN",
    "Answer",
    "CallbackEndpoint",
    "ConnectionOptions",
    "EventHandler",
    "FrameHandler",
    "LongConnection",
]

log = logging.getLogger("imrobots_feishu.connection")

LIVENESS_MARGIN = 10.0
"""Seconds past the ping interval before a silent connection is taken for dead."""

CONTROL, DATA = 0, 1
ENDPOINT_PATH = "/callback/ws/endpoint"
_RETRY_CODES = (1, 1000040343)
_FATAL_HANDSHAKE = "1000040350"


@attrs.frozen(kw_only=True)
class Answer:
    """What the frame handler returns: the response ``data`` (a callback's answer, JSON)
    and the work to run after the response frame was written."""

    data: Any = None
    follow_up: Callable[[], Coroutine[Any, Any, None]] | None = None
    code: int = 200


FrameHandler = Callable[[str, bytes], Answer]
"""``handler(frame type, payload) -> Answer``; must not block (it only converts)."""
EventHandler = Callable[[dict[str, Any]], Answer]
"""``handler(event envelope) -> Answer`` for callbacks; must not block."""


@attrs.frozen(kw_only=True)
class ConnectionOptions:
    connect_timeout: float = 30.0
    request_timeout: float = 10.0
    idle_timeout: float | None = None
    """Seconds without a frame from Feishu before the socket is presumed dead; default the
    PingInterval plus :data:`LIVENESS_MARGIN` (at most the interval itself)."""
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0
    fragment_ttl: float = 5.0


class LongConnection:
    """One app's long connection, reconnecting until :meth:`close`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        domain: str,
        app_id: str,
        app_secret: Callable[[], str],
        handler: FrameHandler,
        options: ConnectionOptions | None = None,
        status: ConnectionStatus | None = None,
    ) -> None:
        self.session = session
        self.status = status or ConnectionStatus()
        """Where the state, frames and rejected frames are reported (``/healthz``)."""
        self.domain = domain.rstrip("/")
        self.app_id = app_id
        self._secret = app_secret
        self.handler = handler
        self.options = options or ConnectionOptions()
        self.ping_interval = 120.0
        self.connects = 0
        self.frames = 0
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._closing = False
        self._fatal: BaseException | None = None
        self._fragments: dict[str, tuple[float, list[bytes | None]]] = {}
        self._follow_ups: set[asyncio.Task[None]] = set()
        self._write_lock = asyncio.Lock()

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closing

    def __repr__(self) -> str:
        return f"LongConnection(app_id={self.app_id!r}, domain={self.domain!r})"

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Connect; return once the first connection is up (or raise why it cannot be)."""
        self._task = asyncio.create_task(self._run(), name=f"feishu-ws-{self.app_id}")
        waiter = asyncio.create_task(self.connected.wait())
        try:
            await asyncio.wait(
                {waiter, self._task},
                timeout=self.options.connect_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiter.cancel()
        if self._fatal is not None:
            raise self._fatal
        if not self.connected.is_set():
            await self.close()
            raise PlatformUnavailable(
                f"no Feishu long connection to {self.domain} within {self.options.connect_timeout}s"
            )

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        for task in list(self._follow_ups):
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(task), 5.0)

    async def _run(self) -> None:
        failures = 0
        refused = False
        while not self._closing:
            self.status.connecting()
            try:
                url = await self._discover()
                if refused:
                    refused = False
                    log.warning("Feishu accepts the long connection of app %s again", self.app_id)
                await self._serve(url)
            except FatalPlatformError as exc:
                if self.connects == 0:  # never connected: the credentials are wrong
                    self._fatal = exc
                    log.error("Feishu long connection refused: %s", exc)
                    return
                # it connected before: Feishu's passing fault, retried with backoff
                failures += 1
                self.status.disconnected(f"Feishu refuses the long connection: {exc}")
                if not refused:
                    refused = True
                    log.error(
                        "Feishu refuses the long connection of app %s although it connected "
                        "before (%s); retrying with backoff until it accepts again",
                        self.app_id,
                        exc,
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.closing:
                    return
                failures = 1 if self.connected.is_set() else failures + 1
                self.status.disconnected(f"the Feishu long connection was lost: {exc}")
                log.warning("Feishu long connection lost (%s); reconnecting", exc)
            finally:
                self.connected.clear()
                self._ws = None
            delay = min(
                self.options.reconnect_initial * 2 ** max(failures - 1, 0),
                self.options.reconnect_max,
            )
            await asyncio.sleep(delay * (0.5 + random.random() / 2))

    # ------------------------------------------------------------------ protocol
    async def _discover(self) -> str:
        """Endpoint discovery (PROTOCOLS 3.1): the WebSocket URL; applies ClientConfig."""
        body = {"AppID": self.app_id, "AppSecret": self._secret()}
        timeout = aiohttp.ClientTimeout(total=self.options.request_timeout)
        async with self.session.post(
            self.domain + ENDPOINT_PATH,
            json=body,
            headers={"locale": "zh"},
            timeout=timeout,
            allow_redirects=False,
        ) as response:
            if 300 <= response.status < 400:
                location = response.headers.get("Location")
                message = redirect_message("Feishu endpoint discovery", response.status, location)
                log.warning("%s", message)
                raise FatalPlatformError(message, code="redirect")
            if response.status != 200:
                raise RetryableError(f"endpoint discovery: HTTP {response.status}")
            answer = await response.json(content_type=None)
        code = answer.get("code") if isinstance(answer, dict) else None
        if code in _RETRY_CODES:
            raise RetryableError(f"endpoint discovery: code {code} (busy)")
        if code != 0:
            msg = answer.get("msg") if isinstance(answer, dict) else ""
            raise FatalPlatformError(
                f"Feishu refused the long connection of app {self.app_id}: code {code} {msg} "
                "(check app_id/app_secret, and that the app subscribes to events by long "
                "connection)",
                code=str(code),
            )
        data = answer.get("data") or {}
        self._configure(data.get("ClientConfig"))
        url = data.get("URL")
        if not isinstance(url, str) or not url:
            raise RetryableError("endpoint discovery answered no URL")
        return url

    @property
    def idle_timeout(self) -> float:
        """Seconds without a frame from Feishu after which the socket is dead."""
        if self.options.idle_timeout is not None:
            return self.options.idle_timeout
        return self.ping_interval + min(LIVENESS_MARGIN, self.ping_interval)

    def _configure(self, config: Any) -> None:
        if isinstance(config, dict):
            interval = config.get("PingInterval")
            if isinstance(interval, int | float) and interval > 0:
                self.ping_interval = float(interval)

    async def _serve(self, url: str) -> None:
        query = parse_qs(urlsplit(url).query)
        service = int((query.get("service_id") or ["0"])[0])
        try:
            ws = await self.session.ws_connect(url, autoping=True, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            headers: Mapping[str, str] = exc.headers or {}
            status = headers.get("handshake-status", str(exc.status))
            if status == "403" or headers.get("handshake-autherrcode") == _FATAL_HANDSHAKE:
                raise FatalPlatformError(
                    f"Feishu refused the WebSocket: {status} "
                    f"{headers.get('handshake-msg', '')} (at most 50 connections per app)",
                    code=str(headers.get("handshake-autherrcode") or status),
                ) from None
            raise
        self._ws = ws
        self.connects += 1
        self.connected.set()
        self.status.connected()
        log.info("Feishu long connection %d open (app %s)", self.connects, self.app_id)
        pinger = asyncio.create_task(self._pings(ws, service))
        last_frame = time.monotonic()
        try:
            while True:
                idle = self.idle_timeout
                left = last_frame + idle - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                try:
                    message = await ws.receive(timeout=left)
                except TimeoutError:
                    continue  # WebSocket-level traffic may have reset aiohttp's timer
                if message.type == aiohttp.WSMsgType.BINARY:
                    last_frame = time.monotonic()
                    self.status.frame_received(last_frame)
                    await self._on_frame(ws, message.data)
                elif message.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.ERROR,
                ):
                    raise ConnectionError(f"socket closed ({message.type.name})")
        except TimeoutError:
            log.warning(
                "Feishu long connection %d: no frame from Feishu (pong or event) for %.1fs, "
                "a ping goes out every %gs; the socket is dead, replacing it",
                self.connects,
                time.monotonic() - last_frame,
                self.ping_interval,
            )
            raise ConnectionError("no frame within the idle timeout") from None
        finally:
            pinger.cancel()
            with contextlib.suppress(BaseException):
                await pinger
            with contextlib.suppress(Exception):
                await ws.close()

    async def _pings(self, ws: aiohttp.ClientWebSocketResponse, service: int) -> None:
        while True:
            frame = Frame()
            frame.SeqID = 0
            frame.LogID = 0
            frame.service = service
            frame.method = CONTROL
            header = frame.headers.add()
            header.key, header.value = "type", "ping"
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._write(ws, frame.SerializeToString())
            await asyncio.sleep(self.ping_interval)

    async def _write(self, ws: aiohttp.ClientWebSocketResponse, data: bytes) -> None:
        async with self._write_lock:
            await ws.send_bytes(data)

    async def _on_frame(self, ws: aiohttp.ClientWebSocketResponse, data: bytes) -> None:
        frame = Frame()
        try:
            frame.ParseFromString(data)
        except Exception:
            self.status.rejected()
            log.warning("dropped a frame that is not a pbbp2.Frame")
            return
        headers = {h.key: h.value for h in frame.headers}
        kind = headers.get("type", "")
        if frame.method == CONTROL:
            if kind == "pong" and frame.payload:
                with contextlib.suppress(ValueError):
                    self._configure(json.loads(frame.payload))
            return
        if frame.method != DATA:
            return
        self.frames += 1
        payload = self._reassemble(headers, bytes(frame.payload))
        if payload is None:
            return
        started = time.monotonic()
        try:
            answer = self.handler(kind, payload)
        except Exception:
            log.exception("Feishu frame handler failed")
            answer = Answer(code=500)
        response: dict[str, Any] = {"code": answer.code}
        if answer.data is not None:
            encoded = json.dumps(answer.data, ensure_ascii=False).encode()
            response["data"] = base64.b64encode(encoded).decode()
        biz = frame.headers.add()
        biz.key, biz.value = "biz_rt", str(int((time.monotonic() - started) * 1000))
        frame.payload = json.dumps(response).encode()
        await self._write(ws, frame.SerializeToString())
        if answer.follow_up is not None:
            task = asyncio.create_task(answer.follow_up())
            self._follow_ups.add(task)
            task.add_done_callback(self._follow_ups.discard)

    def _reassemble(self, headers: dict[str, str], payload: bytes) -> bytes | None:
        try:
            total, index = int(headers.get("sum", "1")), int(headers.get("seq", "0"))
        except ValueError:
            return None
        if total <= 1:
            return payload
        now = time.monotonic()
        for key, (at, _) in list(self._fragments.items()):
            if now - at > self.options.fragment_ttl:
                del self._fragments[key]
        key = headers.get("message_id", "")
        at, parts = self._fragments.setdefault(key, (now, [None] * total))
        if not 0 <= index < len(parts):
            return None
        parts[index] = payload
        if any(p is None for p in parts):
            return None
        del self._fragments[key]
        return b"".join(p for p in parts if p is not None)


class CallbackEndpoint:
    """The HTTP event-callback endpoint of one app. See the module docstring.

    ``port`` 0 picks a free port; :attr:`url` says where it listens once started.
    :attr:`forged` counts rejected requests, :attr:`events` accepted events. ``status``
    (``/healthz``): connected once listening, ``frame_received`` per accepted callback,
    ``rejected`` per forged one."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        path: str,
        crypto: CallbackCrypto,
        handler: EventHandler,
        max_body: int = 1024 * 1024,
        status: ConnectionStatus | None = None,
    ) -> None:
        self.status = status or ConnectionStatus()
        self.host = host
        self.port = port
        self.path = path
        self.crypto = crypto
        self.handler = handler
        self.max_body = max_body
        self.url: str | None = None
        self.forged = 0
        self.events = 0
        self._runner: web.AppRunner | None = None
        self._follow_ups: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"CallbackEndpoint(url={self.url!r})"

    @property
    def pending(self) -> int:
        """Accepted events whose follow-up (delivery to the robot) is still running."""
        return len(self._follow_ups)

    async def start(self) -> None:
        """Listen; raise :class:`FatalPlatformError` if the address cannot be bound."""
        app = web.Application(client_max_size=self.max_body)
        app.router.add_post(self.path, self._post)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            await self._runner.cleanup()
            self._runner = None
            raise FatalPlatformError(
                f"cannot listen for Feishu callbacks on {self.host}:{self.port}: {exc.strerror}",
                code="callback_port",
            ) from None
        sock.setblocking(False)
        port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock).start()
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{port}{self.path}"
        self.status.connected()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for task in list(self._follow_ups):
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(task), 5.0)

    async def _post(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            plain = self.crypto.open(body, request.headers)
        except ForgedCallback as exc:
            self.forged += 1
            self.status.rejected()
            log.warning("rejected a Feishu callback from %s: %s", request.remote, exc)
            return web.json_response({"msg": "forbidden"}, status=401)
        self.status.frame_received()
        if plain.get("type") == URL_VERIFICATION:
            log.info("answered Feishu's URL verification challenge")
            return web.json_response({"challenge": plain.get("challenge")})
        self.events += 1
        try:
            answer = self.handler(plain)
        except Exception:
            log.exception("Feishu callback handler failed")
            return web.json_response({"msg": "error"}, status=500)
        if answer.code != 200:
            return web.json_response({"msg": "error"}, status=500)
        response = web.json_response(answer.data if answer.data is not None else {})
        await response.prepare(request)
        await response.write_eof()
        if answer.follow_up is not None:
            task = asyncio.create_task(answer.follow_up())
            self._follow_ups.add(task)
            task.add_done_callback(self._follow_ups.discard)
        return response
