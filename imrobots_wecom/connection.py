"""The intelligent robot's long connection, owned end to end on asyncio with aiohttp.

Why not ``wecom_aibot_sdk.WSClient`` (1.0.8, read in full): it is non-blocking and
its heartbeat and per-``req_id`` reply queue are right, but

- ``connect()`` returns before the subscription is answered, and a refused secret only
  shows as an ``error`` event, so ``Platform.start`` could not say "connected" or
  "bad credentials";
- reply acks fail as bare ``Exception("Reply ack error: errcode=...")`` strings, so
  846608 / 846605 / 45009 could only be told apart by parsing text, and a socket lost
  after a reply was written fails it the same way as one never sent (the core needs
  :class:`~imrobots.platform.OutcomeUnknown` for the first, a plain retry for the
  second);
- reconnects give up after ``max_reconnect_attempts`` (10 by default), and
  ``disconnect()`` waits up to 30 s for handler tasks;
- it brings ``websockets`` and ``httpx`` in beside the aiohttp the core already uses.

So this module speaks the same protocol (PROTOCOLS 4c) itself. The SDK still proves
the emulator faithful: ``tests/wecom/test_sdk.py`` runs it, unchanged, against it.

1. Open the WebSocket (no WebSocket-level pings, as the SDK) and send
   ``aibot_subscribe`` with the bot id and secret; wait for its ack. A non-zero
   errcode is a credentials error: :meth:`AibotConnection.start` raises it at once,
   later it is retried with backoff.
2. Every ``ping_interval`` (30 s, the SDK's) send ``ping``; its ack comes at once. A
   connection on which no frame from WeCom (a ping ack, a push) arrived for the ping
   interval plus a margin (:data:`LIVENESS_MARGIN`, 10 s, at most the interval itself:
   40 s by default) is dead: close it and reconnect. (The SDK waits for two missed acks,
   60-90 s.)
3. Pushes (``aibot_msg_callback``/``aibot_event_callback``) need no acknowledgement
   from the client (the SDK sends none); the handler only converts and queues, so the
   reader never waits for an answer.
4. :meth:`AibotConnection.request` sends one frame and waits ``ack_timeout`` (5 s) for
   the ack carrying its ``req_id``. Frames for one ``req_id`` go **one at a time**: the
   next waits for the previous ack (acks are matched by ``req_id`` alone, as in the
   SDK), which paces stream replies by WeCom's own acks.
5. ``disconnected_event`` (a newer connection of the same bot took over) stops the
   loop for good, with one clear error log line, instead of fighting the other process.
6. Other losses reconnect with exponential backoff and jitter, without limit; a
   connection whose ``aibot_subscribe`` was acknowledged resets the backoff, so the
   first reconnect after a drop goes out at once.

Secrets: the bot secret goes only into the subscribe frame, never into logs or errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import attrs

from imrobots.platform import (
    ConnectionStatus,
    FatalPlatformError,
    MalformedJson,
    OutcomeUnknown,
    RetryableError,
    Secret,
    dump_json,
    load_json,
)

__all__ = [
    "LIVENESS_MARGIN",
    "AckError",
    "AibotConnection",
    "ConnectionOptions",
    "new_req_id",
    "parse_frame",
]

ID_FIELDS = frozenset({"req_id", "msgid", "userid", "chatid", "aibotid", "task_id"})
"""Fields that identify: a lone surrogate in one drops the frame (see :func:`parse_frame`)."""

LIVENESS_MARGIN = 10.0
"""Seconds past the ping interval before a silent connection is taken for dead."""

log = logging.getLogger("imrobots.wecom.connection")

Frame = dict[str, Any]
Handler = Callable[[str, str, dict[str, Any], int], None]
"""``handler(cmd, req_id, body, generation)``: called for each push, must not block."""


def new_req_id(prefix: str) -> str:
    """A request id in the SDK's shape ``{prefix}_{ms}_{hex}``."""
    return f"{prefix}_{int(time.time() * 1000)}_{uuid.uuid4().hex[:8]}"


class AckError(Exception):
    """WeCom acked a frame with a non-zero errcode."""

    def __init__(self, cmd: str, errcode: int, errmsg: str) -> None:
        super().__init__(f"{cmd}: errcode {errcode} {errmsg}")
        self.cmd = cmd
        self.errcode = errcode
        self.errmsg = errmsg


@attrs.frozen(kw_only=True)
class ConnectionOptions:
    connect_timeout: float = 30.0
    ack_timeout: float = 5.0
    ping_interval: float = 30.0
    reconnect_initial: float = 1.0
    reconnect_max: float = 30.0


def parse_frame(text: str) -> Frame | None:
    """The JSON object of a frame from WeCom, lone surrogates in its text replaced; ``None``
    (logged) for one that is not JSON, not an object, nested too deep, or with a lone
    surrogate in an id."""
    try:
        frame = load_json(text, ID_FIELDS, where="frame")
    except MalformedJson as exc:
        log.warning("WeCom sent a frame that cannot be read (%s); ignored", exc)
        return None
    if not isinstance(frame, dict):
        log.warning("WeCom sent a frame that is not a JSON object; ignored")
        return None
    return frame


class AibotConnection:
    """One bot's long connection. See the module docstring."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        url: str,
        bot_id: str,
        secret: Secret,
        handler: Handler,
        options: ConnectionOptions | None = None,
        status: ConnectionStatus | None = None,
    ) -> None:
        self.session = session
        self.status = status or ConnectionStatus()
        """Where connection state and inbound frames are reported (the core's health)."""
        self.url = url
        self.bot_id = bot_id
        self._secret = secret
        self.handler = handler
        self.options = options or ConnectionOptions()
        self.generation = 0
        """Counts subscriptions; a req_id from an older generation is stale."""
        self._refused = False
        """Subscriptions were refused since the last good one (logged once, as is the end)."""
        self.taken_over = False
        self.reconnects = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pending: dict[str, asyncio.Future[Frame]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}
        self._runner: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._first: asyncio.Future[None] | None = None
        self._closing = False
        self._last_frame = 0.0
        self._send_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"AibotConnection(bot_id={self.bot_id!r}, generation={self.generation})"

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed and self._ready.is_set()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Connect and subscribe; returns once subscribed, raises on bad credentials."""
        self._first = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(), name=f"wecom-aibot-{self.bot_id}")
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                await asyncio.shield(self._first)
        except TimeoutError:
            await self.close()
            raise RetryableError(
                f"WeCom bot {self.bot_id}: no subscription within "
                f"{self.options.connect_timeout}s ({self.url})"
            ) from None
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._closing = True
        runner, self._runner = self._runner, None
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner
        self._fail_pending(RetryableError("the WeCom connection was closed"))

    async def wait_ready(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        return self._ready.is_set()

    # ------------------------------------------------------------------ loop
    def _stopped(self) -> bool:
        return self._closing or self.taken_over

    async def _run(self) -> None:
        attempt = 0
        while not self._stopped():
            self.status.connecting()
            generation = self.generation
            try:
                await self._session_once()
            except asyncio.CancelledError:
                raise
            except AckError as exc:
                if self._first is not None and not self._first.done():
                    self._first.set_exception(
                        FatalPlatformError(
                            f"WeCom refused the subscription of bot {self.bot_id}: "
                            f"errcode {exc.errcode} {exc.errmsg} (check bot_id and secret)",
                            code=str(exc.errcode),
                        )
                    )
                    return
                # it subscribed before: WeCom's passing fault, retried with backoff
                if not self._refused:
                    self._refused = True
                    log.error(
                        "WeCom bot %s: subscription refused although it subscribed before "
                        "(%s); retrying with backoff until WeCom accepts it again",
                        self.bot_id,
                        exc,
                    )
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                log.warning("WeCom bot %s: connection failed: %s", self.bot_id, exc)
            except Exception:
                log.exception("WeCom bot %s: the connection loop failed", self.bot_id)
            finally:
                self._ready.clear()
                self._ws = None
                self._fail_pending(
                    OutcomeUnknown(
                        "the WeCom connection was closed (close()) before the ack came"
                        if self._closing
                        else "the WeCom connection was lost"
                    )
                )
                if self.generation != generation:
                    attempt = 0  # subscribed: however it ended, the backoff starts over
            if self._stopped():
                break
            self.status.disconnected("the WeCom connection was lost")
            attempt += 1
            self.reconnects += 1
            delay = min(
                self.options.reconnect_max, self.options.reconnect_initial * 2 ** (attempt - 1)
            )
            delay *= 0.5 + random.random() / 2
            if attempt > 1 or self.generation == 0:
                await asyncio.sleep(delay)

    async def _session_once(self) -> None:
        async with self.session.ws_connect(
            self.url, heartbeat=None, autoping=True, timeout=aiohttp.ClientWSTimeout(ws_close=5.0)
        ) as ws:
            self._ws = ws
            self._last_frame = time.monotonic()
            subscribe_id = new_req_id("aibot_subscribe")
            await self._send(
                {
                    "cmd": "aibot_subscribe",
                    "headers": {"req_id": subscribe_id},
                    "body": {"bot_id": self.bot_id, "secret": self._secret.get()},
                }
            )
            async with asyncio.timeout(self.options.connect_timeout):
                while True:
                    frame = await self._receive(ws)
                    if frame is not None:
                        self.status.frame_received()
                    if frame is None:
                        raise aiohttp.ClientError("closed before the subscription was answered")
                    if frame.get("headers", {}).get("req_id") == subscribe_id:
                        break
            errcode = int(frame.get("errcode", -1))
            if errcode != 0:
                raise AckError("aibot_subscribe", errcode, str(frame.get("errmsg", "")))
            self.generation += 1
            self._ready.set()
            self.status.connected()
            if self._first is not None and not self._first.done():
                self._first.set_result(None)
            log.info("WeCom bot %s: subscribed (%s)", self.bot_id, self.url)
            if self._refused:  # said as it happens, not when this connection ends
                self._refused = False
                log.warning("WeCom bot %s: subscription accepted again", self.bot_id)
            pinger = asyncio.create_task(self._ping_loop(ws))
            try:
                while True:
                    frame = await self._receive(ws)
                    if frame is not None:
                        self.status.frame_received()
                    if frame is None:
                        return
                    self._dispatch(frame)
                    if self.taken_over:
                        await ws.close()
                        return
            finally:
                pinger.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pinger

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> Frame | None:
        while True:
            msg = await ws.receive()
            if msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSING,
            ):
                return None
            if msg.type is aiohttp.WSMsgType.ERROR:
                return None
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            self._last_frame = time.monotonic()
            frame = parse_frame(msg.data)
            if frame is not None:
                return frame
            self.status.rejected()

    def _dispatch(self, frame: Frame) -> None:
        cmd = str(frame.get("cmd") or "")
        headers = frame.get("headers")
        req_id = str(headers.get("req_id") or "") if isinstance(headers, dict) else ""
        if cmd in ("aibot_msg_callback", "aibot_event_callback"):
            body = frame.get("body")
            if not isinstance(body, dict):
                self.status.rejected()
                log.warning("WeCom push %s without a body; ignored", req_id)
                return
            event = body.get("event")
            if isinstance(event, dict) and event.get("eventtype") == "disconnected_event":
                self.taken_over = True
                log.error(
                    "WeCom bot %s: a newer connection of this bot took over "
                    "(disconnected_event); this process stops receiving and will NOT "
                    "reconnect. Run one process per bot.",
                    self.bot_id,
                )
                return
            try:
                self.handler(cmd, req_id, body, self.generation)
            except Exception:
                log.exception("WeCom push %s could not be handled", req_id)
            return
        if req_id.startswith("ping"):
            return
        future = self._pending.pop(req_id, None)
        if future is not None and not future.done():
            future.set_result(frame)

    @property
    def idle_timeout(self) -> float:
        """Seconds without a frame from WeCom after which the connection is dead: the ping
        interval plus :data:`LIVENESS_MARGIN` (at most the interval itself)."""
        interval = self.options.ping_interval
        return interval + min(LIVENESS_MARGIN, interval)

    async def _ping_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        interval = self.options.ping_interval
        idle = self.idle_timeout
        tick = min(interval, idle / 4)
        next_ping = time.monotonic() + interval
        while not ws.closed:
            await asyncio.sleep(tick)
            now = time.monotonic()
            silent = now - self._last_frame
            if silent > idle:
                log.warning(
                    "WeCom bot %s: no frame from WeCom (ping ack or push) for %.1fs, a ping "
                    "goes out every %gs; the connection is dead, reconnecting",
                    self.bot_id,
                    silent,
                    interval,
                )
                # a black-holed socket never answers the close handshake: do not wait on it
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 1.0)
                return
            # A sleep may end a hair before its time (uvloop's clock counts whole
            # milliseconds): a ping due within half a tick goes now. Put off by a whole
            # tick instead, with the default 30 s interval and 10 s margin the next tick
            # is the one that finds WeCom silent for 40 s and drops a healthy connection.
            if now >= next_ping - tick / 2:
                next_ping = now + interval
                with contextlib.suppress(Exception):
                    await self._send({"cmd": "ping", "headers": {"req_id": new_req_id("ping")}})

    async def _send(self, frame: Frame) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise RetryableError("the WeCom connection is down")
        async with self._send_lock:
            await ws.send_str(dump_json(frame).decode())

    def _fail_pending(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)

    # ------------------------------------------------------------------ requests
    async def request(self, cmd: str, body: dict[str, Any], *, req_id: str | None = None) -> Frame:
        """Send ``cmd`` (under ``req_id``, or a fresh one) and return its ack.

        One frame per ``req_id`` is in flight at a time. Raises :class:`AckError` for a
        non-zero errcode, :class:`RetryableError` when not connected (nothing was sent),
        :class:`OutcomeUnknown` when the ack did not come."""
        rid = req_id or new_req_id(cmd)
        lock = self._locks.setdefault(rid, asyncio.Lock())
        self._users[rid] = self._users.get(rid, 0) + 1
        try:
            async with lock:
                frame = await self._exchange(cmd, rid, body)
        finally:
            self._users[rid] -= 1
            if not self._users[rid]:
                del self._users[rid]
                self._locks.pop(rid, None)
        errcode = int(frame.get("errcode", 0) or 0)
        if errcode != 0:
            raise AckError(cmd, errcode, str(frame.get("errmsg", "")))
        return frame

    async def _exchange(self, cmd: str, rid: str, body: dict[str, Any]) -> Frame:
        if not self.connected:
            if self.taken_over:
                raise FatalPlatformError(f"WeCom bot {self.bot_id}: another connection took over")
            await self.wait_ready(self.options.ack_timeout)
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            try:
                await self._send({"cmd": cmd, "headers": {"req_id": rid}, "body": body})
            except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
                raise OutcomeUnknown(f"{cmd}: the connection failed while sending") from exc
            try:
                async with asyncio.timeout(self.options.ack_timeout):
                    return await future
            except TimeoutError:
                raise OutcomeUnknown(f"{cmd}: no ack within {self.options.ack_timeout}s") from None
        finally:
            if self._pending.get(rid) is future:
                del self._pending[rid]
