"""The stream loop against a hand-driven gateway: bad frames, ack order, the idle watchdog.

The emulator only sends well-formed frames on subscribed topics, so these
tests use a tiny gateway (aiohttp, 127.0.0.1) that the test drives frame by
frame: malformed JSON, unknown topics and types, malformed payloads, and a
"zombie" socket that never answers a ping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import WSMsgType, web

from imrobots import CardAction, Message, PlatformError, Secret
from imrobots_dingtalk.emulator import DingTalkEmulator
from imrobots_dingtalk.platform import DingTalkPlatform, DingTalkSettings

BOT_TOPIC = "/v1.0/im/bot/messages/get"


class Gateway:
    """A minimal DingTalk gateway whose frames the test writes by hand."""

    def __init__(self, *, answer_pings: bool = True, hello: bool = False) -> None:
        self.answer_pings = answer_pings
        self.hello = hello
        """Send one SYSTEM ping frame right after the upgrade (then only what the test sends)."""
        self.opens: list[dict[str, Any]] = []
        self.sockets: list[web.WebSocketResponse] = []
        self.acks: list[dict[str, Any]] = []
        self.changed = asyncio.Condition()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Gateway:
        app = web.Application()
        app.router.add_post("/v1.0/gateway/connections/open", self.open)
        app.router.add_post("/v1.0/oauth2/accessToken", self.token)
        app.router.add_get("/connect", self.connect)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        for ws in self.sockets:
            await ws.close()
        assert self.runner is not None
        await self.runner.cleanup()

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)

    async def token(self, request: web.Request) -> web.Response:
        return web.json_response({"accessToken": "tok", "expireIn": 7200})

    async def open(self, request: web.Request) -> web.Response:
        self.opens.append(await request.json())
        await self._notify()
        ticket = f"ticket-{len(self.opens)}"
        return web.json_response(
            {"endpoint": self.url.replace("http", "ws") + "/connect", "ticket": ticket}
        )

    async def connect(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=self.answer_pings)
        await ws.prepare(request)
        self.sockets.append(ws)
        await self._notify()
        if self.hello:
            await ws.send_str(
                json.dumps(frame("hello-1", {"opaque": "o1"}, topic="ping", type_="SYSTEM"))
            )
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                self.acks.append(json.loads(msg.data))
                await self._notify()
        await self._notify()
        return ws

    async def send(self, frame: dict[str, Any] | str) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame, ensure_ascii=False)
        await self.sockets[-1].send_str(text)

    def ack_for(self, message_id: str) -> dict[str, Any] | None:
        return next((a for a in self.acks if a["headers"]["messageId"] == message_id), None)


def frame(
    message_id: str, data: Any, *, topic: str = BOT_TOPIC, type_: str = "CALLBACK"
) -> dict[str, Any]:
    return {
        "specVersion": "1.0",
        "type": type_,
        "headers": {
            "topic": topic,
            "messageId": message_id,
            "contentType": "application/json",
            "time": str(int(time.time() * 1000)),
        },
        "data": data if isinstance(data, str) else json.dumps(data, ensure_ascii=False),
    }


def bot_data(msg_id: str, text: str) -> dict[str, Any]:
    return {
        "msgId": msg_id,
        "msgtype": "text",
        "text": {"content": f" {text}"},
        "conversationId": "cid-frames",
        "conversationType": "2",
        "isInAtList": True,
        "senderStaffId": "staff1",
        "senderNick": "Ann",
        "createAt": int(time.time() * 1000),
    }


def settings(url: str, **overrides: Any) -> DingTalkSettings:
    values: dict[str, Any] = {
        "client_id": "frames-app",
        "client_secret": Secret("frames-secret"),
        "openapi_endpoint": url,
        "reconnect_initial": 0.05,
    }
    values.update(overrides)
    return DingTalkSettings(**values)


@pytest_asyncio.fixture
async def gateway() -> AsyncIterator[Gateway]:
    async with Gateway() as server:
        yield server


async def test_bad_frames_are_logged_and_acked_and_lose_nothing(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="imrobots_dingtalk")
    platform = DingTalkPlatform(settings(gateway.url))
    events: list[tuple[Message | CardAction, int]] = []

    async def sink(event: Message | CardAction) -> None:
        assert platform.connection is not None
        events.append((event, platform.connection.stats.acks))

    await platform.start(sink)
    try:
        await gateway.send('{"specVersion":"1.0","headers":{"messageId":"m-trunc","topic":')
        await gateway.send("garbage without any id")
        await gateway.send(frame("m-topic", {"x": 1}, topic="/v1.0/graph/api/invoke"))
        await gateway.send(frame("m-notjson", "{not json"))
        await gateway.send(frame("m-noid", {"msgtype": "text", "text": {"content": "x"}}))
        await gateway.send(frame("m-first", bot_data("msg-1", "first")))
        await gateway.send(frame("m-event", {"a": 1}, topic="*", type_="EVENT"))
        await gateway.send(frame("m-keepalive", {"opaque": "k"}, topic="KEEPALIVE", type_="SYSTEM"))
        await gateway.send(frame("m-weird", {"a": 1}, type_="WHATEVER"))
        unknown = {**bot_data("msg-2", ""), "msgtype": "voiceCall", "content": {"x": 1}}
        await gateway.send(frame("m-unknown-type", unknown))
        as_object = frame("m-object", {})
        as_object["data"] = bot_data("msg-3", "data as an object")
        await gateway.send(as_object)
        await gateway.send(frame("m-last", bot_data("msg-4", "last")))
        await gateway.wait_for(lambda: gateway.ack_for("m-last") is not None)
    finally:
        await platform.close()

    codes = {a["headers"]["messageId"]: a["code"] for a in gateway.acks}
    assert codes == {
        "m-trunc": 400,
        "m-topic": 404,
        "m-notjson": 400,
        "m-noid": 400,
        "m-first": 200,
        "m-event": 200,
        "m-keepalive": 200,
        "m-weird": 404,
        "m-unknown-type": 200,
        "m-object": 200,
        "m-last": 200,
    }
    event_ack = gateway.ack_for("m-event")
    assert event_ack is not None and json.loads(event_ack["data"])["status"] == "SUCCESS"
    keepalive = gateway.ack_for("m-keepalive")
    assert keepalive is not None and json.loads(keepalive["data"]) == {"opaque": "k"}
    noid = gateway.ack_for("m-noid")
    assert noid is not None and "msgId" in noid["message"]

    messages = [e for e, _ in events]
    assert all(isinstance(m, Message) for m in messages)
    assert [m.id for m in messages if isinstance(m, Message)] == [
        "msg-1",
        "msg-2",
        "msg-3",
        "msg-4",
    ]
    assert [m.text for m in messages if isinstance(m, Message)] == [
        "first",
        "",
        "data as an object",
        "last",
    ]
    # the sink ran only after the frame's ack was sent
    acked_before = [count for _, count in events]
    order = [a["headers"]["messageId"] for a in gateway.acks]
    for (event, count), frame_id in zip(
        events, ["m-first", "m-unknown-type", "m-object", "m-last"], strict=True
    ):
        assert count >= order.index(frame_id) + 1, f"{event.id} delivered before its ack"
    assert acked_before == sorted(acked_before)

    log_text = caplog.text
    assert "malformed DingTalk frame" in log_text
    assert "no messageId to ack" in log_text
    assert "unknown topic" in log_text
    assert "dropped malformed bot message m-notjson" in log_text


async def test_open_request_and_ticket(gateway: Gateway) -> None:
    platform = DingTalkPlatform(settings(gateway.url, local_ip="10.0.0.7"))

    async def sink(event: Message | CardAction) -> None:
        pass

    await platform.start(sink)
    await platform.close()
    (body,) = gateway.opens
    assert body["clientId"] == "frames-app" and body["clientSecret"] == "frames-secret"
    assert body["localIp"] == "10.0.0.7"
    assert body["subscriptions"] == [
        {"type": "CALLBACK", "topic": "/v1.0/im/bot/messages/get"},
        {"type": "CALLBACK", "topic": "/v1.0/card/instances/callback"},
    ]


async def test_watchdog_replaces_a_socket_that_falls_silent() -> None:
    async with Gateway(answer_pings=False, hello=True) as zombie:
        platform = DingTalkPlatform(
            settings(zombie.url, ping_interval=0.05, idle_timeout=0.25, reconnect_initial=0.01)
        )

        async def sink(event: Message | CardAction) -> None:
            pass

        await platform.start(sink)
        try:
            await zombie.wait_for(lambda: len(zombie.opens) >= 2, 5)
            connection = platform.connection
            assert connection is not None
            assert connection.stats.watchdog_closes >= 1
            assert connection.stats.pongs == 0
        finally:
            await platform.close()


async def test_a_socket_that_never_answers_is_not_taken_for_a_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Upgraded, then silent from the start (no frame, no pong): each attempt gives up
    after ``request_timeout`` and is retried; ``start`` fails after ``connect_timeout``."""
    async with Gateway(answer_pings=False) as zombie:
        platform = DingTalkPlatform(
            settings(
                zombie.url,
                request_timeout=0.2,
                connect_timeout=1.0,
                reconnect_initial=0.02,
                reconnect_max=0.05,
            )
        )

        async def sink(event: Message | CardAction) -> None:
            pass

        caplog.set_level(logging.WARNING, logger="imrobots_dingtalk")
        started = time.monotonic()
        with pytest.raises(PlatformError, match="no DingTalk stream connection"):
            await platform.start(sink)
        assert time.monotonic() - started < 3
        assert len(zombie.opens) >= 3
        failures = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
        assert any(
            "no frame or pong within 0.2s after the WebSocket upgrade" in f for f in failures
        )
        await platform.close()


async def test_watchdog_keeps_a_healthy_socket() -> None:
    """Healthy: DingTalk's SYSTEM pings keep coming (pongs alone do not count, see
    test_liveness.py)."""
    async with DingTalkEmulator(seed=3, ping_interval=0.05) as emu:
        emu.add_app("healthy-app", "healthy-secret")
        platform = DingTalkPlatform(
            DingTalkSettings(
                client_id="healthy-app",
                client_secret=Secret("healthy-secret"),
                openapi_endpoint=emu.base_url,
                ping_interval=0.03,
                idle_timeout=0.15,
            )
        )

        async def sink(event: Message | CardAction) -> None:
            pass

        await platform.start(sink)
        try:
            connection = platform.connection
            assert connection is not None
            # about 0.45 s: three idle timeouts
            await emu.wait_for(lambda: connection.stats.pings >= 9, 5, what="SYSTEM pings")
            assert connection.stats.pongs >= 1
            assert connection.stats.watchdog_closes == 0
            assert connection.stats.opened == 1 and connection.connected
            assert len(emu.connections) == 1
        finally:
            await platform.close()


async def test_backoff_when_the_gateway_is_down(caplog: pytest.LogCaptureFixture) -> None:
    async with Gateway() as server:
        url = server.url
    # the port is closed now: start retries with backoff, then gives up with one line
    platform = DingTalkPlatform(
        settings(url, connect_timeout=0.5, reconnect_initial=0.02, reconnect_max=0.1)
    )

    async def sink(event: Message | CardAction) -> None:
        pass

    caplog.set_level(logging.WARNING, logger="imrobots_dingtalk")
    with pytest.raises(PlatformError) as info:
        await platform.start(sink)
    text = str(info.value)
    assert "\n" not in text and "no DingTalk stream connection" in text
    assert "frames-secret" not in text
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) >= 2
    await platform.close()


async def test_a_burst_of_frames_lets_the_loop_run_between_them(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames already buffered are read in slices (``READ_SLICE``), not all in one go
    with nothing else running: other tasks (answers just started, timers) get turns
    during a burst. Order and acks are unchanged."""
    monkeypatch.setattr("imrobots_dingtalk.connection.READ_SLICE", 0.0)
    platform = DingTalkPlatform(settings(gateway.url))
    release = asyncio.Event()
    turns = 0
    seen: list[tuple[str, int]] = []

    async def sink(event: Message | CardAction) -> None:
        seen.append((event.id, turns))
        if len(seen) == 1:
            await release.wait()  # hold the reader while the rest of the burst arrives

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    await platform.start(sink)
    spinner = asyncio.create_task(other())
    try:
        count = 30
        for i in range(count):
            await gateway.send(frame(f"m-{i}", bot_data(f"msg-{i}", f"q{i}")))
        await gateway.wait_for(lambda: len(seen) == 1)
        for _ in range(50):  # let the client's socket take in the whole burst
            await asyncio.sleep(0)
        release.set()
        await gateway.wait_for(lambda: len(gateway.acks) == count)
    finally:
        spinner.cancel()
        await platform.close()
    assert [event_id for event_id, _ in seen] == [f"msg-{i}" for i in range(count)]
    assert [a["headers"]["messageId"] for a in gateway.acks] == [f"m-{i}" for i in range(count)]
    burst = [t for _, t in seen[1:]]
    assert burst[-1] - burst[0] >= count - 2, "the reader read the burst without yielding"
