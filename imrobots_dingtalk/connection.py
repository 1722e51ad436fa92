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
5. Liveness comes from DingTalk's own traffic: it sends a SYSTEM ``ping`` every 20-30 s
   (:data:`SYSTEM_PING_INTERVAL`, PROTOCOLS 1.5). A connection on which no frame (a
   SYSTEM ping or a push) arrived for ``idle_timeout`` seconds (default: that interval
   plus :data:`LIVENESS_MARGIN`, 40 s) is *replaced*: a new connection is opened at once
   and the old one closed once the new one is up. WebSocket pongs do not count: a
   connection whose server stopped sending but still answers pings (muted) is as useless
   as a black-holed one. The client still sends WebSocket pings every ``ping_interval``
   (they keep middleboxes from dropping an idle socket).
   Other losses reconnect with exponential backoff and jitter; a connection that
   completed its handshake resets the backoff (unless it was dropped within
   ``stable_after``, three times in a row), so a drop in the steady state is followed
   by a reconnect within ``reconnect_initial`` (0.5 s).
6. Every step of a (re)connect is bounded by ``request_timeout``: the ticket POST,
   the WebSocket upgrade, and the first sign of life on the new socket (a ping is
   sent at once; its pong or any frame must arrive in time). A step that gets no
   answer, as on a half-open network where the TCP handshake works and nothing
   more, fails the attempt, which is retried with backoff, instead of waiting on
   aiohttp's five-minute default.
7. A frame that cannot be taken (not JSON, nested too deep for the parser, a
   ``messageId`` over :data:`MAX_MESSAGE_ID` characters or with a lone surrogate) is
   acked with 400 when its ``messageId`` can be read, logged, and changes nothing else;
   acks are ASCII JSON, so an echoed lone surrogate travels as an escape. Neither the
   ticket POST nor the upgrade follows a redirect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import quote_plus, urlsplit

import aiohttp
import attrs

from imrobots.platform import (
    ConnectionStatus,
    FatalPlatformError,
    MalformedJson,
    PlatformError,
    RetryableError,
    Secret,
    parse_json,
    redirect_message,
    valid_text,
)

from .api import classify

__all__ = [
    "ACK_OK",
    "LIVENESS_MARGIN",
    "MAX_MESSAGE_ID",
    "SYSTEM_PING_INTERVAL",
    "Ack",
    "BadFrame",
    "ConnectionOptions",
    "ConnectionStats",
    "Frame",
    "FrameHandler",
    "StreamConnection",
    "Subscription",
]

log = logging.getLogger("imrobots_dingtalk.connection")

USER_AGENT = "imrobots-dingtalk/0.1 (aiohttp)"
SYSTEM_PING_INTERVAL = 30.0
"""Seconds between DingTalk's SYSTEM pings on a connection: "usually every 20-30 s"
(PROTOCOLS 1.5; a community observation, DingTalk publishes no figure)."""
LIVENESS_MARGIN = 10.0
"""Seconds of slack past :data:`SYSTEM_PING_INTERVAL` before a silent connection is
replaced (network jitter, a busy server)."""
MAX_MESSAGE_ID = 200
"""Characters of a frame's ``messageId`` accepted (DingTalk's look like
``213d841d_972_1898bb26334_70a7``, PROTOCOLS 1.3); a longer one is refused with 400."""
_MESSAGE_ID = re.compile(r'"messageId"\s*:\s*"([^"\\]{1,1024})"')


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
    """Seconds between the WebSocket pings the client sends."""
    idle_timeout: float = SYSTEM_PING_INTERVAL + LIVENESS_MARGIN
    """Seconds without a frame from DingTalk (SYSTEM ping or push) before the connection is
    replaced."""
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0
    stable_after: float = 1.0
    """A connection dropped sooner than this after its handshake is a quick drop: three in
    a row and the backoff grows instead of resetting."""
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
    """Connections replaced because no frame came for ``idle_timeout``."""
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
    """Last frame or pong (anything)."""
    ended: asyncio.Future[str]
    """Resolves with why this connection stopped serving (or started draining)."""
    alive: asyncio.Event = attrs.field(factory=asyncio.Event)
    """Set by the first frame or pong received: the server answers on this socket."""
    last_frame: float = 0.0
    """Last text frame from DingTalk (a SYSTEM ping, a push): the liveness clock."""
    draining: bool = False
    replace: bool = False
    """Silent for ``idle_timeout``: closed as soon as a new connection is up."""
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
        status: ConnectionStatus | None = None,
    ) -> None:
        self.session = session
        self.status = status or ConnectionStatus()
        """Where connection state and inbound frames are reported (the core's health)."""
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
        attempt = 0  # failed attempts (or quick drops) since the last good connection
        quick = 0  # connections in a row that were dropped within stable_after
        refused = False  # the credentials are being refused (logged once per streak)
        while not self._closing:
            self.status.connecting()
            try:
                live = await self._connect()
            except FatalPlatformError as exc:
                if self._started is not None and not self._started.done():
                    self._started.set_exception(exc)
                    return
                # The credentials worked before (the first connection came up): a refusal
                # now is DingTalk's passing fault, retried with backoff, logged once.
                attempt += 1
                delay = self._backoff(attempt)
                self.stats.failed_attempts += 1
                if not refused:
                    refused = True
                    log.error(
                        "DingTalk refuses the stream connection of app %s although it "
                        "connected before (%s); retrying with backoff until it accepts again",
                        self.client_id,
                        exc,
                    )
                else:
                    log.debug("DingTalk still refuses; retrying in %.2fs", delay)
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
            self.status.connected()
            if refused:
                refused = False
                log.warning(
                    "DingTalk accepts the stream connection of app %s again", self.client_id
                )
            for old in list(self._live):
                if old is not live and old.replace:
                    self._spawn(self._shutdown(old))
            if self._started is not None and not self._started.done():
                self._started.set_result(None)
            reason = await asyncio.shield(live.ended)
            if self.closing:
                return
            self.status.disconnected(reason)
            lived = time.monotonic() - live.opened_at
            quick = quick + 1 if lived < self.options.stable_after else 0
            if quick == 0:
                attempt = 0  # the handshake completed and the connection served: steady state
            if (live.draining or live.replace) and quick < 3:
                # asked to reconnect (disconnect), or silent: the new connection comes at once
                if not live.replace:
                    log.info("DingTalk asked connection %d to reconnect; reconnecting", live.number)
                continue
            attempt += 1
            delay = self._backoff(attempt)
            log.warning(
                "DingTalk stream connection %d lost (%s); reconnecting in %.2fs",
                live.number,
                reason,
                delay,
            )
            await asyncio.sleep(delay)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
                url, data=json.dumps(body), headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                status = response.status
                if 300 <= status < 400:
                    message = redirect_message(
                        f"DingTalk {what}", status, response.headers.get("Location")
                    )
                    log.warning("%s", message)
                    raise FatalPlatformError(message, code="redirect", status=status)
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
            last_frame=now,
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
                    live.last_frame = live.last_seen
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
                    self.status.rejected()
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
                self._spawn(self._close_ws(ws))

    async def _watch(self, live: _Live) -> None:
        """Ping every ``ping_interval``; replace the connection after ``idle_timeout``
        without a frame from DingTalk (pongs do not count)."""
        opts = self.options
        tick = max(0.01, min(opts.ping_interval, opts.idle_timeout / 4))
        last_ping = time.monotonic()
        ws = live.ws
        while not ws.closed:
            await asyncio.sleep(tick)
            now = time.monotonic()
            silent = now - live.last_frame
            if silent > opts.idle_timeout:
                self.stats.watchdog_closes += 1
                heard = now - live.last_seen
                log.warning(
                    "DingTalk stream connection %d: no frame from DingTalk (SYSTEM ping or "
                    "push) for %.1fs, expected a SYSTEM ping every ~%gs (%s); replacing it",
                    live.number,
                    silent,
                    min(SYSTEM_PING_INTERVAL, opts.idle_timeout),
                    "the socket still answers pings: muted"
                    if heard < silent
                    else "nothing at all: the socket is dead",
                )
                live.replace = True
                live.draining = True
                self._end(live, f"no frame for {silent:.1f}s")
                self._spawn(self._drain_then_close(live))
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
            # ASCII JSON: a lone surrogate echoed from a hostile frame travels as an escape
            await live.ws.send_str(ack_text(message_id, ack))
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            log.warning("could not acknowledge frame %s: %s", message_id, _describe(exc))
            return
        self.stats.acks += 1

    async def _on_text(self, live: _Live, text: str) -> None:
        self.stats.frames += 1
        self.status.frame_received()
        try:
            frame = _parse_frame(text)
        except ValueError as exc:
            self.stats.malformed += 1
            self.status.rejected()
            message_id = exc.message_id if isinstance(exc, BadFrame) else None
            if message_id is None:
                match = _MESSAGE_ID.search(text)
                message_id = match.group(1) if match else None
            log.warning(
                "malformed DingTalk frame (%s, %d characters)%s",
                exc,
                len(text),
                f"; acking {message_id[:80]!a} with 400" if message_id else "; no messageId to ack",
            )
            if message_id:
                await self._send_ack(live, message_id, Ack(code=400, message=str(exc)[:200]))
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
            self.status.rejected()
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
                self._spawn(self._drain_then_close(live))
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


_json_string = json.encoder.encode_basestring_ascii
"""A str as an ASCII JSON string (what ``json.dumps`` writes by default: non-ASCII and lone
surrogates escaped)."""


def ack_text(message_id: str, ack: Ack) -> str:
    """The JSON of the frame that acknowledges ``message_id`` with ``ack``: exactly
    ``json.dumps({"code", "headers": {"contentType", "messageId"}, "message", "data"})``,
    written without building the dicts (one ack per push)."""
    return (
        f'{{"code": {int(ack.code)}, "headers": {{"contentType": "application/json", '
        f'"messageId": {_json_string(message_id)}}}, "message": {_json_string(ack.message)}, '
        f'"data": {_json_string(ack.data)}}}'
    )


class BadFrame(ValueError):
    """A frame that cannot be taken, whose ``messageId`` (to ack it with 400) is known."""

    def __init__(self, reason: str, message_id: str) -> None:
        super().__init__(reason)
        self.message_id = message_id


def _parse_frame(text: str) -> Frame:
    """The frame in ``text``; :class:`ValueError` (:class:`BadFrame` when the messageId is
    known) for anything that is not a frame of PROTOCOLS 1.3."""
    try:
        raw = parse_json(text, where="frame")
    except MalformedJson as exc:  # "frame: not JSON", "frame: JSON nested too deep"
        raise ValueError(str(exc).removeprefix("frame: ")) from None
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    headers = raw.get("headers")
    if not isinstance(headers, dict):
        raise ValueError("no headers")
    message_id = headers.get("messageId")
    if not isinstance(message_id, str) or not message_id:
        raise ValueError("no messageId")
    if len(message_id) > MAX_MESSAGE_ID:
        raise BadFrame(f"messageId longer than {MAX_MESSAGE_ID} characters", message_id)
    if not valid_text(message_id):
        raise BadFrame("messageId is not valid Unicode (a lone surrogate)", message_id)
    kind = raw.get("type")
    topic = headers.get("topic")
    data = raw.get("data", "")
    if not isinstance(kind, str):
        raise ValueError("no type")
    if not isinstance(topic, str):
        raise ValueError("no topic")
    if not isinstance(data, str):
        data = json.dumps(data)  # tolerate an object instead of a string
    return Frame(type=kind, topic=topic, message_id=message_id, headers=headers, data=data)


def _disconnect_reason(data: str) -> str:
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        return "no reason"
    reason = parsed.get("reason") if isinstance(parsed, dict) else None
    return reason if isinstance(reason, str) else "no reason"


def _describe(exc: object) -> str:
    if isinstance(exc, BaseException):
        text = str(exc).splitlines()[0] if str(exc) else ""
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return str(exc)
