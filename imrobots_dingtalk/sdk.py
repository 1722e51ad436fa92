"""Hand the messages of a ``dingtalk-stream`` app to an imrobots robot: the migration path
from the seed's code.

An app built the seed's way owns a ``dingtalk_stream.DingTalkStreamClient`` and registers
its own ``ChatbotHandler``. Replace that handler with :class:`RobotHandler` and the app
keeps its client, its connection and its ``start_forever()``, while every message is
answered by an imrobots robot, with its streaming cards, dedupe, per-conversation
order, rate limits and feedback buttons::

    import dingtalk_stream
    from imrobots.demo_agent import DemoAgent
    from imrobots.examples import SupportRobot
    from imrobots_dingtalk.sdk import RobotHandler

    client = dingtalk_stream.DingTalkStreamClient(dingtalk_stream.Credential(ID, SECRET))
    handler = RobotHandler(SupportRobot(agent=DemoAgent()))
    handler.register(client)  # bot messages and card button presses
    client.start_forever()

How it works. The SDK calls :meth:`RobotHandler.process` on its own event loop for each
push. The handler converts the push (the same code as the plugin's own connection),
hands the event to the robot's runtime, and returns at once, so the SDK acknowledges
the push before any answer is worked on (the seed acknowledged only after the whole
answer). The runtime runs on an event loop of its own, in a thread the handler starts
when the SDK starts (:meth:`pre_start`): the SDK's blocking ``requests`` calls never stall
an answer, and a slow answer never stalls the SDK. The robot speaks through a
:class:`~imrobots_dingtalk.platform.DingTalkPlatform` that opens no connection of its own
(``stream=False``): the SDK's client is the only one.

Settings come from the SDK by default: the client's credential, and the SDK's
``DINGTALK_OPENAPI_ENDPOINT`` (when it points elsewhere than DingTalk, at the emulator
say, its host is also allowed for sessionWebhooks and downloads). Pass ``settings`` to
change any :class:`~imrobots_dingtalk.platform.DingTalkSettings` field.

This module imports ``dingtalk_stream`` (``pip install "imrobots[dingtalk]"``); the rest
of the plugin does not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import dingtalk_stream  # type: ignore[import-untyped]
from dingtalk_stream.utils import DINGTALK_OPENAPI_ENDPOINT  # type: ignore[import-untyped]

from imrobots import CardAction, Message, Robot, RobotRuntime, RuntimeOptions, Secret, Store

from .connection import Frame
from .platform import BOT_MESSAGE_TOPIC, CARD_CALLBACK_TOPIC, DingTalkPlatform, DingTalkSettings

__all__ = ["RobotHandler"]

log = logging.getLogger("imrobots_dingtalk.sdk")

_DINGTALK_HOSTS = ("dingtalk.com",)


def _settings_from_sdk(client: Any, overrides: Mapping[str, Any]) -> DingTalkSettings:
    """Settings from the SDK's client (credential) and endpoint, with ``overrides``."""
    values: dict[str, Any] = {}
    credential = getattr(client, "credential", None)
    if credential is not None:
        values["client_id"] = credential.client_id
        values["client_secret"] = Secret(credential.client_secret)
    endpoint = str(DINGTALK_OPENAPI_ENDPOINT).rstrip("/")
    values["openapi_endpoint"] = endpoint
    parts = urlsplit(endpoint)
    host = (parts.hostname or "").lower()
    if host and not any(host == d or host.endswith("." + d) for d in _DINGTALK_HOSTS):
        # pointed elsewhere on purpose (an emulator, a proxy): that server speaks for DingTalk
        values["oapi_endpoint"] = endpoint
        values["webhook_hosts"] = (parts.netloc,)
        values["download_hosts"] = (parts.netloc,)
    values.update(overrides)
    if isinstance(values.get("client_secret"), str):
        values["client_secret"] = Secret(values["client_secret"])
    if "client_id" not in values:
        raise ValueError(
            "RobotHandler needs the app's credentials: register it with a "
            "DingTalkStreamClient, or pass settings with client_id and client_secret"
        )
    return DingTalkSettings(**values)


class RobotHandler(dingtalk_stream.ChatbotHandler):  # type: ignore[misc]
    """A ``dingtalk_stream`` handler that answers with an imrobots robot.

    :param robot: the robot (a :class:`~imrobots.Robot` with its agent), or a runtime
        not started yet whose platform is a :class:`DingTalkPlatform` (it is switched to
        ``stream=False``: the SDK's client owns the connection).
    :param settings: :class:`DingTalkSettings` fields over the ones taken from the SDK
        (a mapping), or complete settings.
    :param name: the robot's name (store keys, feedback, logs).
    :param store: the runtime's store (default: in memory; a SQLite or Redis store keeps
        dedupe and feedback across restarts).
    :param options: the runtime's options.
    :param feedback_secret: signs feedback buttons (default: a key kept in the store).
    :param stop_timeout: seconds :meth:`stop` waits for running answers to close.

    Register it for the bot message topic (the seed's line) and, for feedback buttons,
    for the card callback topic too; :meth:`register` does both.
    """

    def __init__(
        self,
        robot: Robot | RobotRuntime,
        *,
        settings: DingTalkSettings | Mapping[str, Any] | None = None,
        name: str = "support",
        store: Store | None = None,
        options: RuntimeOptions | None = None,
        feedback_secret: str | bytes | None = None,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        if isinstance(robot, RobotRuntime) and not isinstance(robot.platform, DingTalkPlatform):
            raise TypeError("RobotHandler needs a runtime on a DingTalkPlatform")
        self._robot = robot
        self._settings = settings
        self._name = name
        self._store = store
        self._options = options
        self._feedback_secret = feedback_secret
        self._stop_timeout = stop_timeout
        self._runtime: RobotRuntime | None = robot if isinstance(robot, RobotRuntime) else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started: Future[None] | None = None
        self._inbox: asyncio.Queue[Message | CardAction] = asyncio.Queue()
        """Events converted on the SDK's loop, delivered in arrival order on the robot's."""
        self._pump: asyncio.Task[None] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RobotHandler(robot={self._name!r})"

    # ------------------------------------------------------------------ set-up
    def register(self, client: Any) -> None:
        """Register for bot messages and card button presses on the SDK's ``client``."""
        client.register_callback_handler(dingtalk_stream.ChatbotMessage.TOPIC, self)
        client.register_callback_handler(dingtalk_stream.Card_Callback_Router_Topic, self)

    @property
    def runtime(self) -> RobotRuntime:
        """The robot's runtime (made on :meth:`start`)."""
        if self._runtime is None:
            raise RuntimeError("the handler is not started: register it and start the client")
        return self._runtime

    @property
    def platform(self) -> DingTalkPlatform:
        platform = self.runtime.platform
        assert isinstance(platform, DingTalkPlatform)
        return platform

    def _make_runtime(self) -> RobotRuntime:
        if self._runtime is not None:
            platform = self._runtime.platform
            assert isinstance(platform, DingTalkPlatform)
            platform.stream = False
            return self._runtime
        if isinstance(self._settings, DingTalkSettings):
            settings = self._settings
        else:
            client = getattr(self, "dingtalk_client", None)
            settings = _settings_from_sdk(client, self._settings or {})
        assert isinstance(self._robot, Robot)
        return RobotRuntime(
            name=self._name,
            robot=self._robot,
            platform=DingTalkPlatform(settings, stream=False),
            store=self._store,
            options=self._options,
            feedback_secret=self._feedback_secret,
        )

    def pre_start(self) -> None:
        """Called by the SDK when its client starts: start the robot (without waiting)."""
        self.start(wait=False)

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Start the robot's loop thread and its runtime (once). ``wait``: block until the
        runtime is up (or raise what stopped it)."""
        with self._lock:
            if self._started is None:
                self._runtime = self._make_runtime()
                loop = asyncio.new_event_loop()
                self._loop = loop
                self._thread = threading.Thread(
                    target=loop.run_forever, name=f"imrobots-{self._name}", daemon=True
                )
                self._thread.start()
                self._started = asyncio.run_coroutine_threadsafe(self._start(), loop)
                self._started.add_done_callback(self._log_start)
            started = self._started
        if wait:
            started.result(timeout)

    async def _start(self) -> None:
        await self.runtime.start()
        self._pump = asyncio.create_task(self._deliver_all(), name=f"imrobots-{self._name}-inbox")

    async def _deliver_all(self) -> None:
        platform = self.platform
        while True:
            event = await self._inbox.get()
            try:
                await platform.deliver(event)
            except Exception:
                log.exception("robot %s could not take push %s", self._name, event.id)

    def _log_start(self, started: Future[None]) -> None:
        if started.cancelled():
            return
        error = started.exception()
        if error is not None:
            log.error("robot %s did not start: %s", self._name, error)

    def stop(self) -> None:
        """Stop the runtime (running answers end in an interrupted card) and its thread."""
        with self._lock:
            loop, thread, started = self._loop, self._thread, self._started
            self._loop = self._thread = self._started = None
        if loop is None or thread is None or started is None:
            return
        if started.done() and started.exception() is None:
            stopping = asyncio.run_coroutine_threadsafe(self._stop(), loop)
            try:
                stopping.result(self._stop_timeout + 5)
            except Exception:
                log.exception("robot %s did not stop cleanly", self._name)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        if not thread.is_alive():
            loop.close()

    async def _stop(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
        await self.runtime.stop(timeout=self._stop_timeout)

    def stop_on_signals(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """On these signals, stop the robot (running answers end in an interrupted card),
        then end the process. Call it from the main thread before ``client.start_forever()``:
        the SDK's loop retries on any error and would not end otherwise, and without a stop
        a card being answered would stay "inputting" after the process is gone."""

        def on_signal(signum: int, frame: object) -> None:
            log.info("robot %s: signal %s, closing running answers", self._name, signum)
            self.stop()
            logging.shutdown()
            os._exit(0)  # the SDK's start_forever swallows exceptions: leave at once

        for number in signals:
            signal.signal(number, on_signal)

    def __enter__(self) -> RobotHandler:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ pushes
    async def process(self, callback: Any) -> tuple[int, Any]:
        """Called by the SDK for each push on a registered topic: convert it, hand it to the
        robot, and return the ack at once (the answer is worked on after)."""
        self.start(wait=False)
        started = self._started
        if started is not None and started.done() and started.exception() is not None:
            return dingtalk_stream.AckMessage.STATUS_SYSTEM_EXCEPTION, "the robot is not running"
        headers = callback.headers
        topic = headers.topic or BOT_MESSAGE_TOPIC
        data = callback.data
        frame = Frame(
            type="CALLBACK",
            topic=topic,
            message_id=str(headers.message_id or ""),
            headers={"time": headers.time} if headers.time is not None else {},
            data=data if isinstance(data, str) else json.dumps(data, ensure_ascii=False),
        )
        platform = self.platform
        ack, event = platform.convert(frame)
        loop = self._loop
        if event is not None and loop is not None:
            loop.call_soon_threadsafe(self._inbox.put_nowait, event)
        response = _ack_response(ack.data) if topic == CARD_CALLBACK_TOPIC else ack.message
        return ack.code, response


def _ack_response(data: str) -> Any:
    """The ``response`` inside an ack's data string (``{"response": ...}``)."""
    try:
        parsed = json.loads(data)
    except ValueError:
        return {}
    return parsed.get("response", {}) if isinstance(parsed, dict) else {}
