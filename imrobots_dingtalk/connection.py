"""The DingTalk Stream connection, owned end to end on asyncio with aiohttp.

Why not ``dingtalk_stream.DingTalkStreamClient``: it opens connections and
fetches tokens with blocking ``requests`` on the event loop, acknowledges a
message only after its handler returned, and reconnects after fixed 3-10 s
sleeps. This module speaks the same protocol (PROTOCOLS 1.1-1.6) without any of
that:

1. ``POST {gateway}/v1.0/gateway/connections/open`` with the app's credentials and
   subscriptions returns a WebSocket ``endpoint`` and a one-shot ``ticket``.
2. ``GET {endpoint}?ticket=...`` opens the WebSocket. Every text frame is JSON.
3. Each frame is acknowledged **as soon as it is parsed**, before anything else
   runs: SYSTEM frames (``ping`` and the rest) echo their ``data`` (the opaque);
   CALLBACK frames get the :class:`Ack` the frame handler returns (which only
   converts the payload), and only then does the handler's follow-up (delivering
   the event to the core's sink) run.
4. SYSTEM ``disconnect``: a new connection is opened at once while the old one
   drains (it is read until the server closes it or ``drain_timeout`` passes), so
   there is no gap in which pushes have nowhere to go.
5. Other losses reconnect with exponential backoff and jitter. An idle watchdog
   sends WebSocket pings and closes a socket on which nothing (no frame, no pong)
   arrived for ``idle_timeout`` seconds: dead sockets do not hang the robot.
6. Every step of a (re)connect is bounded by ``request_timeout``: the ticket POST,
   the WebSocket upgrade, and the first sign of life on the new socket (a ping is
   sent at once; its pong or any frame must arrive in time). A step that gets no
   answer, as on a half-open network where the TCP handshake works and nothing
   more, fails the attempt, which is retried with backoff, instead of waiting on
   aiohttp's five-minute default.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import quote_plus, urlsplit

import aiohttp
import attrs

from imrobots.platform import FatalPlatformError, PlatformError, RetryableError, Secret

from .api import classify

__all__ = [
    "ACK_OK",
    "Ack",
    "ConnectionOptions",
    "ConnectionStats",
    "Frame",
    "FrameHandler",
    "StreamConnection",
    "Subscription",
]

log = logging.getLogger("imrobots_dingtalk.connection")

USER_AGENT = "imrobots-dingtalk/0.1 (aiohttp)"
_MESSAGE_ID = re.compile(r'"messageId"\s*:\s*"([^"\\]{1,200})"')


@attrs.frozen(kw_only=True)
class Subscription:
    """One ``{type, topic}`` entry of the connection request."""

    type: Literal["EVENT", "CALLBACK"]
    topic: str


@attrs.frozen(kw_only=True)
class Frame:
    """A server-to-client frame (PROTOCOLS 1.3). ``data`` is still the JSON *string*."""

    type: str
    topic: str
    message_id: str
    headers: Mapping[str, Any] = attrs.field(repr=False)
    data: str = attrs.field(repr=False)

    @property
    def time_ms(self) -> int | None:
        """The ``time`` header (milliseconds), when present and numeric."""
        value = self.headers.get("time")
        try:
            return int(value) if value is not None else None
        except (TypeError, ValueError):
            return None


@attrs.frozen(kw_only=True)
class Ack:
    """The client's answer to a frame (PROTOCOLS 1.4)."""

    code: int = 200
    message: str = "OK"
    data: str = '{"response":null}'
    """A JSON *string* (for card callbacks: ``{"response": {...}}``)."""


ACK_OK = Ack()

READ_SLICE = 0.002
"""Seconds of frames read in a row (a burst of pushes) before the reader lets the event
loop run other work: a burst of a thousand pushes would otherwise stall it for as long
as they all take to read, convert and start."""

FollowUp = Callable[[], Awaitable[None]]
FrameHandler = Callable[[Frame], tuple[Ack, FollowUp | None]]
"""Called for each CALLBACK frame: return the ack at once and, optionally, a
follow-up run right after the ack is sent (the reader awaits it, so arrival
order holds; it must be quick)."""


@attrs.frozen(kw_only=True)
class ConnectionOptions:
    """Timing of the connection loop (see :class:`~imrobots_dingtalk.platform.DingTalkSettings`)."""

    connect_timeout: float = 30.0
    request_timeout: float = 10.0
    ping_interval: float = 20.0
    idle_timeout: float = 60.0
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0
    stable_after: float = 10.0
    """A connection that lived this long resets the backoff."""
    drain_timeout: float = 12.0
    """After ``disconnect``: how long the old connection is still read (DingTalk closes it
    after 10 s)."""
    local_ip: str | None = None


@attrs.define
class ConnectionStats:
    """Counters of one :class:`StreamConnection` (for tests, benchmarks and status lines)."""

    opened: int = 0
    """WebSocket connections established."""
    failed_attempts: int = 0
    frames: int = 0
    acks: int = 0
    pings: int = 0
    """SYSTEM ``ping`` frames answered."""
    pongs: int = 0
    """WebSocket pongs received (answers to the watchdog's pings)."""
    disconnects: int = 0
    """SYSTEM ``disconnect`` frames seen."""
    watchdog_closes: int = 0
    malformed: int = 0
    """Frames that could not be parsed (acked with 400 when their messageId was readable)."""
    unknown: int = 0
    """Frames of a type or topic nobody handles (acked with 404)."""
    handler_errors: int = 0


@attrs.define(eq=False)
class _Live:
    """One WebSocket connection and its tasks."""

    number: int
    ws: aiohttp.ClientWebSocketResponse
    opened_at: float
    last_seen: float
    ended: asyncio.Future[str]
    """Resolves with why this connection stopped serving (or started draining)."""
    alive: asyncio.Event = attrs.field(factory=asyncio.Event)
    """Set by the first frame or pong received: the server answers on this socket."""
    draining: bool = False
    reader: asyncio.Task[None] | None = None
    watchdog: asyncio.Task[None] | None = None


class StreamConnection:
    """Keeps one app's Stream connection up and feeds its frames to ``handler``.

    ``start()`` returns once the first connection is up (or raises
    :class:`~imrobots.FatalPlatformError` for refused credentials, or
    :class:`~imrobots.PlatformError` if no connection came up within
    ``connect_timeout``); ``close()`` stops everything.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        gateway: str,
        client_id: str,
        client_secret: Secret,
        subscriptions: Sequence[Subscription],
        handler: FrameHandler,
        options: ConnectionOptions | None = None,
    ) -> None:
        self.session = session
        self.gateway = gateway.rstrip("/")
        self.client_id = client_id
        self._secret = client_secret
        self.subscriptions = tuple(subscriptions)
        self.handler = handler
        self.options = options or ConnectionOptions()
        self.stats = ConnectionStats()
        self._supervisor: asyncio.Task[None] | None = None
        self._started: asyncio.Future[None] | None = None
        self._live: list[_Live] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._counter = 0
        self._random = random.Random()
        self._up = asyncio.Event()

    def __repr__(self) -> str:
        return f"StreamConnection(gateway={self.gateway!r}, client_id={self.client_id!r})"

    # ------------------------------------------------------------------ public
    @property
    def closing(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closing

    @property
    def connected(self) -> bool:
        """Whether a connection that receives pushes is up (and answered since it opened)."""
        return any(
            not live.draining and not live.ws.closed and live.alive.is_set() for live in self._live
        )

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until :attr:`connected` (after a reconnect, say); ``timeout`` in seconds."""
        async with asyncio.timeout(timeout):
            while not self.connected:
                self._up.clear()
                await self._up.wait()

    async def start(self) -> None:
        """Connect; return once the first connection is up."""
        if self._supervisor is not None:
            return
        loop = asyncio.get_running_loop()
        self._started = loop.create_future()
        self._closing = False
        self._supervisor = asyncio.create_task(self._supervise(), name="dingtalk-stream")
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                await asyncio.shield(self._started)
        except TimeoutError:
            await self.close()
            raise PlatformError(
                f"no DingTalk stream connection for app {self.client_id!r} within "
                f"{self.options.connect_timeout:g}s (gateway {self.gateway})"
            ) from None
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop reconnecting and close every connection. Idempotent."""
        self._closing = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        for live in list(self._live):
            await self._shutdown(live)
        self._live.clear()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()

    # ------------------------------------------------------------------ supervisor
    def _backoff(self, attempt: int) -> float:
        base = min(
            self.options.reconnect_max, self.options.reconnect_initial * 2.0 ** (attempt - 1)
        )
        return base * (0.5 + self._random.random() / 2)  # "equal jitter"

    async def _supervise(self) -> None:
        attempt = 0
        quick = 0  # disconnects in a row of connections that lived under a second
        while not self._closing:
            try:
                live = await self._connect()
            except FatalPlatformError as exc:
                if self._started is not None and not self._started.done():
                    self._started.set_exception(exc)
                    return
                attempt += 1
                delay = self.options.reconnect_max
                log.error("DingTalk stream: %s; retrying in %.0fs", exc, delay)
                self.stats.failed_attempts += 1
                await asyncio.sleep(delay)
                continue
            except (PlatformError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                attempt += 1
                delay = self._backoff(attempt)
                self.stats.failed_attempts += 1
                log.warning(
                    "DingTalk stream connection failed (%s); retrying in %.2fs",
                    _describe(exc),
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            if self._started is not None and not self._started.done():
                self._started.set_result(None)
            reason = await asyncio.shield(live.ended)
            if self.closing:
                return
            lived = time.monotonic() - live.opened_at
            if reason == "disconnect":
                # Warm: reconnect at once, unless the server keeps doing it right away.
                quick = quick + 1 if lived < 1.0 else 0
                if quick < 3:
                    attempt = 0
                    log.info("DingTalk asked connection %d to reconnect; reconnecting", live.number)
                    continue
            else:
                quick = 0
            attempt = 1 if lived >= self.options.stable_after else attempt + 1
            delay = self._backoff(attempt)
            log.warning(
                "DingTalk stream connection %d lost (%s); reconnecting in %.2fs",
                live.number,
                reason,
                delay,
            )
            await asyncio.sleep(delay)

    async def _local_ip(self) -> str:
        if self.options.local_ip is not None:
            return self.options.local_ip
        host = urlsplit(self.gateway).hostname or ""
        if host in ("127.0.0.1", "localhost", "::1"):
            return "127.0.0.1"
        return ""

    async def _open_ticket(self) -> tuple[str, str]:
        url = f"{self.gateway}/v1.0/gateway/connections/open"
        what = "POST /v1.0/gateway/connections/open"
        body = {
            "clientId": self.client_id,
            "clientSecret": self._secret.get(),
            "subscriptions": [{"type": s.type, "topic": s.topic} for s in self.subscriptions],
            "ua": USER_AGENT,
            "localIp": await self._local_ip(),
        }
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        timeout = aiohttp.ClientTimeout(total=self.options.request_timeout)
        try:
            async with self.session.post(
                url, data=json.dumps(body), headers=headers, timeout=timeout
            ) as response:
                status = response.status
                raw = await response.read()
        except TimeoutError:
            raise RetryableError(f"DingTalk {what} timed out") from None
        try:
            answer: Any = json.loads(raw) if raw else None
        except ValueError:
            answer = raw.decode("utf-8", errors="replace")
        if status != 200:
            error = classify(what, status, answer)
            if isinstance(error, RetryableError):
                raise error
            raise FatalPlatformError(
                f"DingTalk refused a stream connection for app {self.client_id!r}: {error}",
                code=error.code,
                status=status,
            )
        if not isinstance(answer, dict):
            raise RetryableError(f"DingTalk {what}: the answer is not a JSON object")
        endpoint, ticket = answer.get("endpoint"), answer.get("ticket")
        if not isinstance(endpoint, str) or not isinstance(ticket, str) or not endpoint:
            raise RetryableError(f"DingTalk {what}: the answer lacks endpoint or ticket")
        return endpoint, ticket

    async def _connect(self) -> _Live:
        """One connection attempt. Each step (ticket, upgrade, first sign of life) gets at
        most ``request_timeout``; a step without an answer raises :class:`RetryableError`."""
        step = self.options.request_timeout
        endpoint, ticket = await self._open_ticket()
        separator = "&" if "?" in endpoint else "?"
        url = f"{endpoint}{separator}ticket={quote_plus(ticket)}"
        try:
            async with asyncio.timeout(step):
                ws = await self.session.ws_connect(
                    url,
                    autoping=False,
                    heartbeat=None,
                    max_msg_size=16 * 1024 * 1024,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                )
        except TimeoutError:
            raise RetryableError(
                f"DingTalk stream: the WebSocket upgrade at {urlsplit(endpoint).netloc} got "
                f"no answer within {step:g}s"
            ) from None
        now = time.monotonic()
        self._counter += 1
        live = _Live(
            number=self._counter,
            ws=ws,
            opened_at=now,
            last_seen=now,
            ended=asyncio.get_running_loop().create_future(),
        )
        self._live.append(live)
        self.stats.opened += 1
        live.reader = asyncio.create_task(self._read(live), name=f"dingtalk-read-{live.number}")
        live.watchdog = asyncio.create_task(
            self._watch(live), name=f"dingtalk-watchdog-{live.number}"
        )
        try:
            await live.ws.ping()  # its pong (or any frame) proves the server answers here
            async with asyncio.timeout(step):
                await live.alive.wait()
        except (TimeoutError, ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            self._end(live, "no answer after the upgrade")
            await self._shutdown(live)
            if isinstance(exc, TimeoutError):
                raise RetryableError(
                    f"DingTalk stream: no frame or pong within {step:g}s after the WebSocket "
                    "upgrade"
                ) from None
            raise RetryableError(f"DingTalk stream: {_describe(exc)}") from None
        self._up.set()
        log.info(
            "DingTalk stream connection %d is up for app %s (%s)",
            live.number,
            self.client_id,
            urlsplit(endpoint).netloc,
        )
        return live

    # ------------------------------------------------------------------ one connection
    def _end(self, live: _Live, reason: str) -> None:
        if not live.ended.done():
            live.ended.set_result(reason)

    async def _close_ws(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 3.0)

    async def _shutdown(self, live: _Live) -> None:
        self._end(live, "closed by the client")
        for task in (live.watchdog, live.reader):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        await self._close_ws(live.ws)
        for task in (live.watchdog, live.reader):
            if task is not None and task is not asyncio.current_task():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if live in self._live:
            self._live.remove(live)

    async def _read(self, live: _Live) -> None:
        ws = live.ws
        reason = "closed by the server"
        slice_started = time.monotonic()
        try:
            while True:
                msg = await ws.receive()
                live.last_seen = time.monotonic()
                kind = msg.type
                if kind in _SIGNS_OF_LIFE:
                    live.alive.set()
                if kind is aiohttp.WSMsgType.TEXT:
                    await self._on_text(live, msg.data)
                    if live.last_seen - slice_started >= READ_SLICE:
                        # A burst of buffered frames is read without the loop running
                        # anything else: let it run the answers just started (and timers)
                        await asyncio.sleep(0)
                        slice_started = time.monotonic()
                elif kind is aiohttp.WSMsgType.PING:
                    await ws.pong(msg.data)
                elif kind is aiohttp.WSMsgType.PONG:
                    self.stats.pongs += 1
                elif kind is aiohttp.WSMsgType.BINARY:
                    self.stats.malformed += 1
                    log.warning("ignored a binary frame of %d bytes", len(msg.data))
                elif kind is aiohttp.WSMsgType.ERROR:
                    reason = f"socket error ({_describe(msg.data)})"
                    break
                else:  # CLOSE, CLOSING, CLOSED
                    break
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            reason = f"socket error ({_describe(exc)})"
        finally:
            self._end(live, reason)
            if live.watchdog is not None:
                live.watchdog.cancel()
            if live in self._live:
                self._live.remove(live)
            if not ws.closed:
                task = asyncio.ensure_future(self._close_ws(ws))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _watch(self, live: _Live) -> None:
        """Ping every ``ping_interval``; close the socket after ``idle_timeout`` of silence."""
        opts = self.options
        tick = max(0.01, min(opts.ping_interval, opts.idle_timeout / 4))
        last_ping = time.monotonic()
        ws = live.ws
        while not ws.closed:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - live.last_seen > opts.idle_timeout:
                self.stats.watchdog_closes += 1
                log.warning(
                    "DingTalk stream connection %d silent for %.1fs; closing it",
                    live.number,
                    now - live.last_seen,
                )
                self._end(live, f"idle for {now - live.last_seen:.1f}s")
                if live.reader is not None:
                    live.reader.cancel()
                await self._close_ws(ws)
                return
            if now - last_ping >= opts.ping_interval:
                last_ping = now
                try:
                    await ws.ping()
                except (ConnectionError, RuntimeError, aiohttp.ClientError):
                    return  # the reader sees the failure

    async def _drain_then_close(self, live: _Live) -> None:
        await asyncio.sleep(self.options.drain_timeout)
        if not live.ws.closed:
            log.info("closing drained DingTalk stream connection %d", live.number)
            await self._shutdown(live)

    # ------------------------------------------------------------------ frames
    async def _send_ack(self, live: _Live, message_id: str, ack: Ack) -> None:
        try:
            await live.ws.send_str(ack_text(message_id, ack))
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            log.warning("could not acknowledge frame %s: %s", message_id, _describe(exc))
            return
        self.stats.acks += 1

    async def _on_text(self, live: _Live, text: str) -> None:
        self.stats.frames += 1
        try:
            frame = _parse_frame(text)
        except ValueError as exc:
            self.stats.malformed += 1
            match = _MESSAGE_ID.search(text)
            log.warning(
                "malformed DingTalk frame (%s, %d bytes)%s",
                exc,
                len(text),
                f"; acking {match.group(1)} with 400" if match else "; no messageId to ack",
            )
            if match:
                await self._send_ack(live, match.group(1), Ack(code=400, message=str(exc)))
            return
        if frame.type == "SYSTEM":
            await self._on_system(live, frame)
            return
        if frame.type == "EVENT":
            # Not subscribed; say SUCCESS so that DingTalk does not redeliver it.
            self.stats.unknown += 1
            log.info("ignored EVENT frame %s (topic %s)", frame.message_id, frame.topic)
            data = json.dumps({"status": "SUCCESS", "message": "not handled"})
            await self._send_ack(live, frame.message_id, Ack(data=data))
            return
        if frame.type != "CALLBACK":
            self.stats.unknown += 1
            log.warning("unknown frame type %r (%s)", frame.type, frame.message_id)
            await self._send_ack(live, frame.message_id, Ack(code=404, message="unknown type"))
            return
        try:
            ack, follow_up = self.handler(frame)
        except Exception:
            self.stats.handler_errors += 1
            log.exception("failed to handle frame %s (%s)", frame.message_id, frame.topic)
            ack, follow_up = Ack(code=500, message="internal error"), None
        if ack.code == 404:
            self.stats.unknown += 1
        elif ack.code == 400:
            self.stats.malformed += 1
        await self._send_ack(live, frame.message_id, ack)
        if follow_up is not None:
            try:
                await follow_up()
            except Exception:
                self.stats.handler_errors += 1
                log.exception("failed to deliver frame %s (%s)", frame.message_id, frame.topic)

    async def _on_system(self, live: _Live, frame: Frame) -> None:
        # Every SYSTEM frame is answered with its data echoed (ping: the opaque).
        await self._send_ack(live, frame.message_id, Ack(data=frame.data))
        if frame.topic == "ping":
            self.stats.pings += 1
        elif frame.topic == "disconnect":
            self.stats.disconnects += 1
            reason = _disconnect_reason(frame.data)
            log.info(
                "DingTalk sent disconnect on connection %d (%s); opening a new one",
                live.number,
                reason,
            )
            if not live.draining:
                live.draining = True
                self._end(live, "disconnect")
                task = asyncio.ensure_future(self._drain_then_close(live))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        else:
            log.debug("SYSTEM frame %s (%s)", frame.topic, frame.message_id)


_SIGNS_OF_LIFE = frozenset(
    {
        aiohttp.WSMsgType.TEXT,
        aiohttp.WSMsgType.BINARY,
        aiohttp.WSMsgType.PING,
        aiohttp.WSMsgType.PONG,
    }
)


_json_string = json.encoder.encode_basestring
"""A str as a JSON string, non-ASCII kept (what ``json.dumps(..., ensure_ascii=False)`` writes)."""


def ack_text(message_id: str, ack: Ack) -> str:
    """The JSON of the frame that acknowledges ``message_id`` with ``ack``: exactly
    ``json.dumps({"code", "headers": {"contentType", "messageId"}, "message", "data"},
    ensure_ascii=False)``, written without building the dicts (one ack per push)."""
    return (
        f'{{"code": {int(ack.code)}, "headers": {{"contentType": "application/json", '
        f'"messageId": {_json_string(message_id)}}}, "message": {_json_string(ack.message)}, '
        f'"data": {_json_string(ack.data)}}}'
    )


def _parse_frame(text: str) -> Frame:
    try:
        raw = json.loads(text)
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    headers = raw.get("headers")
    if not isinstance(headers, dict):
        raise ValueError("no headers")
    message_id = headers.get("messageId")
    if not isinstance(message_id, str) or not message_id:
        raise ValueError("no messageId")
    kind = raw.get("type")
    topic = headers.get("topic")
    data = raw.get("data", "")
    if not isinstance(kind, str):
        raise ValueError("no type")
    if not isinstance(topic, str):
        raise ValueError("no topic")
    if not isinstance(data, str):
        data = json.dumps(data, ensure_ascii=False)  # tolerate an object instead of a string
    return Frame(type=kind, topic=topic, message_id=message_id, headers=headers, data=data)


def _disconnect_reason(data: str) -> str:
    try:
        parsed = json.loads(data)
    except ValueError:
        return "no reason"
    reason = parsed.get("reason") if isinstance(parsed, dict) else None
    return reason if isinstance(reason, str) else "no reason"


def _describe(exc: object) -> str:
    if isinstance(exc, BaseException):
        text = str(exc).splitlines()[0] if str(exc) else ""
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return str(exc)
