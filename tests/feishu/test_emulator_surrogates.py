"""The Feishu emulator refuses client JSON holding a lone surrogate, and loses nothing else.

JSON may escape a lone surrogate (``"a\\ud800b"``): valid JSON, which the parser turns
into a ``str`` UTF-8 cannot carry. Before, an OpenAPI body with one answered HTTP 500
(the emulator measured or re-encoded it) or was taken into a message the console could
not show. Raw bytes and frames over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from imrobots_feishu.emulator import FeishuEmulator
from imrobots_feishu.emulator.frames import DATA, Frame, decode_frame, encode_frame, message_event
from tests.surrogates import FINE, LONE
from tests.surrogates import escaped as escaped_text

pytestmark = pytest.mark.asyncio

APP = "cli_surrogates01"
SECRET = "surrogate-secret"
BASE = "/open-apis"
LOGGER = "imrobots_feishu.emulator"


def escaped(value: Any) -> bytes:
    """``value`` as JSON text in UTF-8, each lone surrogate written as its escape."""
    return escaped_text(value).encode()


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[FeishuEmulator]:
    emulator = FeishuEmulator(redelivery=())
    emulator.add_app(APP, SECRET)
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


async def call(
    http: aiohttp.ClientSession,
    emu: FeishuEmulator,
    method: str,
    path: str,
    data: bytes,
    token: str | None = None,
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with http.request(method, f"{emu.base_url}{path}", data=data, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def token_of(http: aiohttp.ClientSession, emu: FeishuEmulator) -> str:
    status, answer = await call(
        http,
        emu,
        "POST",
        f"{BASE}/auth/v3/tenant_access_token/internal",
        json.dumps({"app_id": APP, "app_secret": SECRET}).encode(),
    )
    assert status == 200, answer
    token = answer["tenant_access_token"]
    assert isinstance(token, str)
    return token


def text_message(text: str, chat: str = "oc_chat") -> dict[str, Any]:
    return {"receive_id": chat, "msg_type": "text", "content": json.dumps({"text": text})}


def card_json(text: str) -> str:
    return json.dumps(
        {
            "schema": "2.0",
            "config": {"streaming_mode": True},
            "body": {"elements": [{"tag": "markdown", "element_id": "md", "content": text}]},
        }
    )


async def test_openapi_routes_refuse_a_lone_surrogate_with_400_and_go_on(
    http: aiohttp.ClientSession, emu: FeishuEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    token = await token_of(http, emu)
    send = f"{BASE}/im/v1/messages?receive_id_type=chat_id"
    status, sent = await call(
        http, emu, "POST", send, json.dumps(text_message("hi")).encode(), token
    )
    assert status == 200, sent
    message_id = sent["data"]["message_id"]
    shared = {
        "receive_id": "oc_chat",
        "msg_type": "interactive",
        "content": json.dumps({"config": {"update_multi": True}, "elements": []}),
    }
    status, sent = await call(http, emu, "POST", send, json.dumps(shared).encode(), token)
    assert status == 200, sent
    card_message = sent["data"]["message_id"]
    status, created = await call(
        http,
        emu,
        "POST",
        f"{BASE}/cardkit/v1/cards",
        json.dumps({"type": "card_json", "data": card_json("hi")}).encode(),
        token,
    )
    assert status == 200, created
    card = created["data"]["card_id"]
    messages_before = json.dumps([emu.message_view(m) for m in emu.messages.values()])
    cards_before = json.dumps({k: v.data for k, v in emu.cards.items()})

    refused: list[tuple[str, str, bytes, str]] = [
        # in the body itself, in a key, in the JSON string a field carries, encoded raw
        ("POST", send, escaped({**text_message("x"), "receive_id": LONE}), "receive_id"),
        ("POST", send, escaped(text_message(LONE)), "content"),
        ("POST", send, escaped({**text_message("x"), LONE: 1}), "body"),
        (
            "POST",
            send,
            json.dumps(text_message("raw")).encode().replace(b"raw", b"r\xed\xa0\x80w"),
            "content",
        ),
        ("POST", f"{BASE}/im/v1/messages/{message_id}/reply", escaped(text_message(LONE)), "text"),
        (
            "PATCH",
            f"{BASE}/im/v1/messages/{card_message}",
            escaped({"content": json.dumps({"elements": [{"tag": "markdown", "content": LONE}]})}),
            "content",
        ),
        (
            "POST",
            f"{BASE}/cardkit/v1/cards",
            escaped({"type": "card_json", "data": card_json(LONE)}),
            "data",
        ),
        (
            "PUT",
            f"{BASE}/cardkit/v1/cards/{card}",
            escaped({"card": {"type": "card_json", "data": card_json(LONE)}, "sequence": 2}),
            "data",
        ),
        (
            "PATCH",
            f"{BASE}/cardkit/v1/cards/{card}/settings",
            escaped({"settings": json.dumps({"config": {"summary": LONE}}), "sequence": 3}),
            "settings",
        ),
        (
            "PUT",
            f"{BASE}/cardkit/v1/cards/{card}/elements/md/content",
            escaped({"content": LONE, "sequence": 4}),
            "content",
        ),
    ]
    for method, path, body, where in refused:
        calls = len(emu.calls)
        with caplog.at_level(logging.INFO, logger=LOGGER):
            status, answer = await call(http, emu, method, path, body, token)
        assert status == 400, (path, answer)
        assert answer["code"] == 230001, (path, answer)
        assert "lone surrogate" in answer["msg"] and where in answer["msg"], answer
        assert len(emu.calls) == calls + 1 and emu.calls[-1].code == 230001
        assert any("lone surrogate" in r.getMessage() for r in caplog.records), path
        caplog.clear()
    # nothing was taken
    assert json.dumps([emu.message_view(m) for m in emu.messages.values()]) == messages_before
    assert json.dumps({k: v.data for k, v in emu.cards.items()}) == cards_before

    status, answer = await call(
        http, emu, "POST", send, json.dumps(text_message(FINE)).encode(), token
    )
    assert status == 200, answer
    last = list(emu.messages.values())[-1]
    assert last.content == {"text": FINE}


async def test_token_and_endpoint_refuse_a_lone_surrogate(
    http: aiohttp.ClientSession, emu: FeishuEmulator
) -> None:
    status, answer = await call(
        http,
        emu,
        "POST",
        f"{BASE}/auth/v3/tenant_access_token/internal",
        escaped({"app_id": APP, "app_secret": LONE}),
    )
    assert status == 400 and answer["code"] == 230001 and "app_secret" in answer["msg"], answer
    status, answer = await call(
        http, emu, "POST", "/callback/ws/endpoint", escaped({"AppID": APP, "AppSecret": LONE})
    )
    assert status == 400 and answer["code"] == 230001 and "AppSecret" in answer["msg"], answer
    assert await token_of(http, emu)


async def _connect(
    http: aiohttp.ClientSession, emu: FeishuEmulator
) -> aiohttp.ClientWebSocketResponse:
    status, answer = await call(
        http,
        emu,
        "POST",
        "/callback/ws/endpoint",
        json.dumps({"AppID": APP, "AppSecret": SECRET}).encode(),
    )
    assert status == 200 and answer["code"] == 0, answer
    ws = await http.ws_connect(answer["data"]["URL"])
    await emu.wait_for(lambda: len(emu.live(APP)) == 1)
    return ws


def _event(emu: FeishuEmulator, text: str) -> dict[str, Any]:
    app = emu.apps[APP]
    return message_event(
        app_id=APP,
        tenant_key=app.tenant_key,
        verification_token=app.verification_token,
        message_id=f"om_{text}",
        chat_id="oc_chat",
        chat_type="group",
        sender_open_id="ou_user",
        message_type="text",
        content={"text": text},
        mentions=[],
    )


async def _answer(ws: aiohttp.ClientWebSocketResponse, payload: bytes) -> None:
    """Read the next DATA frame and answer it with ``payload`` (as lark-oapi does: the same
    frame, the JSON answer as its payload)."""
    while True:
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        frame = decode_frame(msg.data)
        if frame.method == DATA:
            break
    answer = Frame(
        seq_id=frame.seq_id,
        log_id=frame.log_id,
        service=frame.service,
        method=DATA,
        headers=[*frame.headers, ("biz_rt", "1")],
        payload=payload,
    )
    await ws.send_bytes(encode_frame(answer))


def _b64(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


async def test_long_connection_answer_with_a_lone_surrogate_is_refused_and_the_connection_stays(
    http: aiohttp.ClientSession, emu: FeishuEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    ws = await _connect(http, emu)
    hostile = [
        escaped({"code": 200, "headers": {"x": LONE}, "data": ""}),  # in the answer
        json.dumps({"code": 200, "data": _b64({"toast": {"content": LONE}})}).encode(),
    ]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for index, payload in enumerate(hostile):
            delivery = emu.deliver(APP, _event(emu, f"hostile{index}"))
            await _answer(ws, payload)
            assert delivery.done is not None
            answer = await asyncio.wait_for(asyncio.shield(delivery.done), 5)
            # refused as an answer that cannot be read: a failed attempt, not a success
            assert answer == {"code": 500}
    refusals = [r for r in caplog.records if "lone surrogate" in r.getMessage()]
    assert len(refusals) == len(hostile) and all(r.levelno >= logging.INFO for r in refusals)

    # the same connection goes on
    delivery = emu.deliver(APP, _event(emu, "fine"))
    await _answer(
        ws, json.dumps({"code": 200, "data": _b64({"toast": {"content": "ok"}})}).encode()
    )
    assert delivery.done is not None
    answer = await asyncio.wait_for(asyncio.shield(delivery.done), 5)
    assert answer == {"code": 200, "data": {"toast": {"content": "ok"}}}
    assert not ws.closed and len(emu.live(APP)) == 1
    await ws.close()


async def test_callback_answer_with_a_lone_surrogate_is_refused(
    emu: FeishuEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    answers = [escaped({"toast": {"content": LONE}}), b'{"toast": {"content": "ok"}}']

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("type") == "url_verification":
            return web.json_response({"challenge": body["challenge"]})
        return web.Response(body=answers.pop(0), content_type="application/json")

    app = web.Application()
    app.router.add_post("/callback", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        await emu.set_callback_url(APP, f"http://127.0.0.1:{port}/callback")
        with caplog.at_level(logging.INFO, logger=LOGGER):
            delivery = emu.deliver(APP, _event(emu, "hostile"))
            assert delivery.done is not None
            answer = await asyncio.wait_for(asyncio.shield(delivery.done), 5)
        # taken as an answer without JSON, as a body that is not JSON is
        assert answer == {"code": 200, "data": {}}
        assert any("lone surrogate" in r.getMessage() for r in caplog.records)
        delivery = emu.deliver(APP, _event(emu, "fine"))
        assert delivery.done is not None
        answer = await asyncio.wait_for(asyncio.shield(delivery.done), 5)
        assert answer == {"code": 200, "data": {"toast": {"content": "ok"}}}
    finally:
        await runner.cleanup()
