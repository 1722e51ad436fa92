"""Feishu's HTTP callback mode, over real sockets on 127.0.0.1: the robot's endpoint
(URL verification, decryption, signature, token, replay checks, redelivered event ids)
and the emulator's callback delivery (challenge on configuration, redelivery of
callbacks answered late, not at all or with an error)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

pytest.importorskip("lark_oapi")

from imrobots.platform import CardAction, FatalPlatformError, Message
from imrobots_feishu.console import FeishuConsoleAdapter
from imrobots_feishu.crypto import CallbackCrypto, ForgedCallback
from imrobots_feishu.emulator import FeishuEmulator
from imrobots_feishu.emulator.frames import card_action_event, message_event
from imrobots_feishu.emulator.server import encrypt, sign
from imrobots_feishu.platform import FeishuPlatform

Event = Message | CardAction


class Robot:
    """A Feishu platform in callback mode on an emulator, its sink recording events."""

    def __init__(self, adapter: FeishuConsoleAdapter, platform: FeishuPlatform) -> None:
        self.adapter = adapter
        self.platform = platform
        self.seen: list[Event] = []
        self.http = aiohttp.ClientSession()

    async def sink(self, event: Event) -> None:
        self.seen.append(event)

    @property
    def url(self) -> str:
        assert self.platform.callback_url is not None
        return self.platform.callback_url

    @property
    def key(self) -> str:
        assert self.adapter.app.encrypt_key is not None
        return self.adapter.app.encrypt_key

    def envelope(self, text: str = "hello", *, token: str | None = None) -> dict[str, Any]:
        app = self.adapter.app
        return message_event(
            app_id=app.app_id,
            tenant_key=app.tenant_key,
            verification_token=app.verification_token if token is None else token,
            message_id=f"om_{time.monotonic_ns()}",
            chat_id="oc_cb",
            chat_type="p2p",
            sender_open_id="ou_alice",
            message_type="text",
            content={"text": text},
        )

    def signed(
        self,
        payload: dict[str, Any],
        *,
        key: str | None = None,
        timestamp: float | None = None,
        nonce: str = "n1",
    ) -> tuple[bytes, dict[str, str]]:
        """``payload`` encrypted with ``key`` (default: the app's) and signed with the
        app's key at ``timestamp`` (default: now)."""
        body = json.dumps({"encrypt": encrypt(key or self.key, json.dumps(payload).encode())})
        ts = str(int(time.time() if timestamp is None else timestamp))
        headers = {
            "Content-Type": "application/json",
            "X-Lark-Request-Timestamp": ts,
            "X-Lark-Request-Nonce": nonce,
            "X-Lark-Signature": sign(ts, nonce, self.key, body.encode()),
        }
        return body.encode(), headers

    async def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        async with self.http.post(self.url, data=body, headers=headers) as response:
            return response.status, await response.json(content_type=None)


@pytest.fixture(params=[True, False], ids=["encrypted", "plain"])
async def robot(request: pytest.FixtureRequest) -> AsyncIterator[Robot]:
    adapter = FeishuConsoleAdapter(mode="callback", encrypt=request.param)
    await adapter.start()
    platform = adapter.create_platform()
    assert isinstance(platform, FeishuPlatform)
    rig = Robot(adapter, platform)
    try:
        await platform.start(rig.sink)
        yield rig
    finally:
        await rig.http.close()
        await platform.close()
        await adapter.stop()


async def test_url_verification_is_answered(robot: Robot) -> None:
    """The emulator configures the URL only after the robot echoed its challenge
    (encrypted when the app has an encrypt key, plain otherwise)."""
    emu = robot.adapter.emulator
    await emu.set_callback_url(robot.adapter.app_id, robot.url)
    assert robot.adapter.app.callback_url == robot.url
    robot.adapter.app.verification_token = "another-token"
    with pytest.raises(ValueError, match="did not answer"):
        await emu.set_callback_url(robot.adapter.app_id, robot.url)
    assert robot.platform.endpoint is not None and robot.platform.endpoint.forged == 1


async def test_events_arrive_and_card_action_answer_is_the_response(robot: Robot) -> None:
    """A message event and a card action go through the emulator's POSTs into the sink;
    the card action's answer is the HTTP response body; a redelivered event id is
    answered again (200, the same body) and processed once."""
    adapter = robot.adapter
    await adapter._route()
    emu = adapter.emulator
    record, delivery = emu.push_message(
        adapter.app_id,
        chat_id="oc_cb",
        chat_type="p2p",
        sender="ou_alice",
        message_type="text",
        content={"text": "hi"},
    )
    assert delivery.done is not None
    assert (await asyncio.wait_for(delivery.done, 3.0))["code"] == 200
    await emu.wait_for(lambda: len(robot.seen) == 1)
    assert isinstance(robot.seen[0], Message) and robot.seen[0].text == "hi"

    envelope = card_action_event(
        app_id=adapter.app_id,
        tenant_key=adapter.app.tenant_key,
        verification_token=adapter.app.verification_token,
        operator_open_id="ou_alice",
        message_id=record.message_id,
        chat_id="oc_cb",
        value={"kind": "feedback", "label": "Helpful"},
    )
    answers = []
    for _ in range(2):  # Feishu redelivers: same event_id, a new signed POST
        again = emu.deliver(adapter.app_id, envelope)
        assert again.done is not None
        answers.append(await asyncio.wait_for(again.done, 3.0))
    assert answers[0] == answers[1] == {"code": 200, "data": {}}
    endpoint = robot.platform.endpoint
    assert endpoint is not None
    await emu.wait_for(lambda: len(robot.seen) == 2 and endpoint.pending == 0)
    assert [type(e) for e in robot.seen] == [Message, CardAction]
    assert robot.platform.endpoint.events == 3 and robot.platform.endpoint.forged == 0


async def test_forged_callbacks_are_rejected_and_nothing_processed(
    robot: Robot, caplog: pytest.LogCaptureFixture
) -> None:
    """Bad signature, bad token, bad decryption, an old timestamp, a replayed nonce, an
    unsigned or a plain body (with an encrypt key); a wrong token (without one): each is
    answered 401 and logged with its reason; only the genuine event is processed."""
    caplog.set_level(logging.WARNING, logger="imrobots_feishu.connection")
    encrypted = robot.adapter.app.encrypt_key is not None
    forged: list[tuple[str, bytes, dict[str, str]]] = []
    plain_headers = {"Content-Type": "application/json"}
    if encrypted:
        body, headers = robot.signed(robot.envelope("bad signature"))
        headers["X-Lark-Signature"] = "0" * 64
        forged.append(("signature does not match", body, headers))
        forged.append(
            ("verification token", *robot.signed(robot.envelope("t", token="wrong"), nonce="n2"))
        )
        forged.append(
            ("does not decrypt", *robot.signed(robot.envelope("k"), key="other-key", nonce="n3"))
        )
        old = time.time() - 600
        forged.append(("a replay", *robot.signed(robot.envelope("old"), timestamp=old, nonce="n4")))
        body, headers = robot.signed(robot.envelope("unsigned"), nonce="n5")
        del headers["X-Lark-Signature"]
        forged.append(("unsigned", body, headers))
        forged.append(
            ("plain callback", json.dumps(robot.envelope("plain")).encode(), plain_headers)
        )
        genuine, genuine_headers = robot.signed(robot.envelope("genuine"), nonce="n6")
    else:
        forged.append(
            (
                "verification token",
                json.dumps(robot.envelope("t", token="wrong")).encode(),
                plain_headers,
            )
        )
        forged.append(("encrypted callback", json.dumps({"encrypt": "x"}).encode(), plain_headers))
        genuine, genuine_headers = json.dumps(robot.envelope("genuine")).encode(), plain_headers
    forged.append(("not JSON", b"<xml/>", plain_headers))

    for reason, body, headers in forged:
        caplog.clear()
        status, _ = await robot.post(body, headers)
        assert status == 401, reason
        assert any(reason in r.getMessage() for r in caplog.records), (reason, caplog.text)
    assert robot.key not in caplog.text if encrypted else True
    assert robot.adapter.app.verification_token not in caplog.text

    status, answer = await robot.post(genuine, genuine_headers)
    assert (status, answer) == (200, {})
    if encrypted:  # the same signed request again: a replayed nonce
        caplog.clear()
        status, _ = await robot.post(genuine, genuine_headers)
        assert status == 401 and "nonce was seen" in caplog.text
    endpoint = robot.platform.endpoint
    assert endpoint is not None
    await robot.adapter.emulator.wait_for(lambda: len(robot.seen) >= 1 and endpoint.pending == 0)
    assert [e.text for e in robot.seen if isinstance(e, Message)] == ["genuine"]
    assert robot.platform.endpoint.forged == len(forged) + (1 if encrypted else 0)
    assert robot.platform.endpoint.events == 1


def test_crypto_opens_what_the_emulator_seals() -> None:
    """lark-oapi's AESCipher (the robot's side) opens the emulator's own encryption."""
    crypto = CallbackCrypto(verification_token="tok", encrypt_key="k" * 20, max_age=60)
    payload = {"schema": "2.0", "header": {"token": "tok", "event_id": "e"}}
    body = json.dumps({"encrypt": encrypt("k" * 20, json.dumps(payload).encode())}).encode()
    headers = {
        "X-Lark-Request-Timestamp": str(int(time.time())),
        "X-Lark-Request-Nonce": "abc",
    }
    headers["X-Lark-Signature"] = sign(headers["X-Lark-Request-Timestamp"], "abc", "k" * 20, body)
    assert crypto.open(body, headers) == payload
    with pytest.raises(ForgedCallback, match="nonce was seen"):
        crypto.open(body, headers)
    assert "k" * 20 not in repr(crypto)


async def test_bad_credentials_fail_at_start() -> None:
    adapter = FeishuConsoleAdapter(mode="callback")
    await adapter.start()
    adapter.emulator.apps[adapter.app_id].app_secret = "changed"
    platform = adapter.create_platform()
    assert isinstance(platform, FeishuPlatform)
    try:
        with pytest.raises(FatalPlatformError):
            await platform.start(lambda event: asyncio.sleep(0))
        assert platform.endpoint is None
    finally:
        await platform.close()
        await adapter.stop()


async def test_emulator_redelivers_late_missing_and_failed_callbacks() -> None:
    """A POST answered 500, then one answered after the response timeout, then none
    (the connection cut): each is delivered again on the redelivery schedule, and
    delivery ends at the first 200."""
    emu = FeishuEmulator(response_timeout=0.3, redelivery=(0.05, 0.05, 0.05, 0.05))
    app = emu.add_app("cli_redeliver", "secret", encrypt_key="ek")
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        crypto = CallbackCrypto(verification_token=app.verification_token, encrypt_key="ek")
        plain = crypto.open(json.dumps(body).encode(), request.headers)
        if plain.get("type") == "url_verification":
            return web.json_response({"challenge": plain["challenge"]})
        seen.append(plain["header"]["event_id"])
        if len(seen) == 1:
            return web.json_response({}, status=500)
        if len(seen) == 2:
            await asyncio.sleep(1.0)  # past the 0.3 s response timeout
        if len(seen) == 3:
            assert request.transport is not None
            request.transport.abort()
        return web.json_response({})

    server = web.Application()
    server.router.add_post("/cb", handler)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    await emu.start()
    try:
        await emu.set_callback_url(app.app_id, f"http://127.0.0.1:{port}/cb")
        envelope = message_event(
            app_id=app.app_id,
            tenant_key=app.tenant_key,
            verification_token=app.verification_token,
            message_id="om_1",
            chat_id="oc_1",
            chat_type="p2p",
            sender_open_id="ou_1",
            message_type="text",
            content={"text": "x"},
        )
        delivery = emu.deliver(app.app_id, envelope)
        assert delivery.done is not None
        assert (await asyncio.wait_for(delivery.done, 5.0))["code"] == 200
        assert delivery.attempts == 4
        assert len(set(seen)) == 1 and len(seen) == 4
    finally:
        await emu.stop()
        await runner.cleanup()


async def test_lark_oapi_dispatcher_accepts_the_emulators_callbacks() -> None:
    """lark-oapi's own ``EventDispatcherHandler`` (its decryption, signature and token
    checks) answers the emulator's challenge and takes its encrypted, signed events."""
    import lark_oapi as lark

    emu = FeishuEmulator()
    app = emu.add_app("cli_lark_dispatch", "secret", encrypt_key="dispatch-key")
    received: list[str] = []

    def on_message(data: Any) -> None:
        received.append(data.event.message.message_id)

    dispatcher = (
        lark.EventDispatcherHandler.builder("dispatch-key", app.verification_token)
        .register_p2_im_message_receive_v1(on_message)
        .build()
    )

    async def handler(request: web.Request) -> web.StreamResponse:
        raw = lark.RawRequest()
        raw.uri = request.path
        raw.body = await request.read()
        raw.headers = dict(request.headers.items())
        answer = dispatcher.do(raw)
        return web.Response(body=answer.content, status=answer.status_code)

    server = web.Application()
    server.router.add_post("/lark", handler)
    runner = web.AppRunner(server)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    await emu.start()
    try:
        await emu.set_callback_url(app.app_id, f"http://127.0.0.1:{runner.addresses[0][1]}/lark")
        record, delivery = emu.push_message(
            app.app_id,
            chat_id="oc_1",
            chat_type="p2p",
            sender="ou_1",
            message_type="text",
            content={"text": "hi"},
        )
        assert delivery.done is not None
        assert (await asyncio.wait_for(delivery.done, 3.0))["code"] == 200
        assert received == [record.message_id]
    finally:
        await emu.stop()
        await runner.cleanup()


async def test_held_event_is_pushed_once_the_url_is_set_and_not_again() -> None:
    """An event raised before the app had a callback URL is held, POSTed once the URL is
    configured, and, answered, not delivered again when its redelivery time comes."""
    emu = FeishuEmulator(redelivery=(0.05, 0.05))
    app = emu.add_app("cli_held", "secret")
    posts: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("type") == "url_verification":
            return web.json_response({"challenge": body["challenge"]})
        posts.append(body)
        return web.json_response({})

    server = web.Application()
    server.router.add_post("/cb", handler)
    runner = web.AppRunner(server)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    await emu.start()
    try:
        _, delivery = emu.push_message(
            app.app_id,
            chat_id="oc_1",
            chat_type="p2p",
            sender="ou_1",
            message_type="text",
            content={"text": "early"},
        )
        await emu.wait_for(lambda: delivery.attempts == 0 and bool(emu._held))
        await emu.set_callback_url(app.app_id, f"http://127.0.0.1:{runner.addresses[0][1]}/cb")
        assert delivery.done is not None
        assert (await asyncio.wait_for(delivery.done, 3.0))["code"] == 200
        await emu.wait_for(lambda: not emu._tasks, timeout=3.0)  # the schedule ran out
        assert delivery.attempts == 1 and len(posts) == 1
    finally:
        await emu.stop()
        await runner.cleanup()
