"""The DingTalk emulator refuses client JSON holding a lone surrogate, and loses nothing else.

JSON may escape a lone surrogate (``"a\\ud800b"``): valid JSON, which the parser turns
into a ``str`` that UTF-8 cannot carry. Before, a body with one answered HTTP 500 (the
emulator measured or re-encoded it) or was taken and then broke whoever read the
record (the console's events WebSocket). Raw bytes over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from imrobots_dingtalk.emulator import DingTalkEmulator
from tests.surrogates import FINE, LONE
from tests.surrogates import escaped as escaped_text

pytestmark = pytest.mark.asyncio

APP = "dingsurrogates"
SECRET = "surrogate-secret"
TOKEN_HEADER = "x-acs-dingtalk-access-token"
SPACE = "dtv1.card//IM_GROUP.cidGroup=="


def escaped(value: Any) -> bytes:
    """``value`` as JSON text in UTF-8, each lone surrogate written as its escape."""
    return escaped_text(value).encode()


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[DingTalkEmulator]:
    async with DingTalkEmulator(seed=3, ping_interval=None) as emulator:
        emulator.add_app(APP, SECRET)
        yield emulator


async def token_of(http: aiohttp.ClientSession, emu: DingTalkEmulator) -> str:
    async with http.post(
        f"{emu.base_url}/v1.0/oauth2/accessToken", json={"appKey": APP, "appSecret": SECRET}
    ) as resp:
        assert resp.status == 200
        token = (await resp.json())["accessToken"]
    assert isinstance(token, str)
    return token


async def call(
    http: aiohttp.ClientSession,
    emu: DingTalkEmulator,
    method: str,
    path: str,
    data: bytes,
    token: str | None = None,
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers[TOKEN_HEADER] = token
    async with http.request(method, f"{emu.base_url}{path}", data=data, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


def ai_card(out_track_id: str, title: str = "Answer") -> dict[str, Any]:
    return {
        "cardTemplateId": "ai.schema",
        "outTrackId": out_track_id,
        "cardData": {"cardParamMap": {"flowStatus": "1", "title": title}},
        "callbackType": "STREAM",
        "openSpaceId": SPACE,
        "imGroupOpenDeliverModel": {"robotCode": APP},
    }


def standard_card(biz_id: str, text: str = "hi") -> dict[str, Any]:
    return {
        "cardTemplateId": "StandardCard",
        "cardBizId": biz_id,
        "robotCode": APP,
        "openConversationId": "cidGroup==",
        "cardData": json.dumps({"contents": [{"type": "markdown", "text": text}]}),
    }


def group_send(text: str = "hi") -> dict[str, Any]:
    return {
        "robotCode": APP,
        "openConversationId": "cidGroup==",
        "msgKey": "sampleText",
        "msgParam": json.dumps({"content": text}),
    }


# (method, path, body with a lone surrogate, where it lies): in the body itself, in a key,
# in a JSON string nested in the body (cardData, msgParam), and encoded raw (0xED 0xA0 0x80,
# which json decodes with surrogatepass)
REFUSED: list[tuple[str, str, bytes, str]] = [
    (
        "POST",
        "/v1.0/card/instances/createAndDeliver",
        escaped(ai_card("c-new", title=LONE)),
        "cardData.cardParamMap.title",
    ),
    (
        "PUT",
        "/v1.0/card/instances",
        escaped({"outTrackId": "c-ok", "cardData": {"cardParamMap": {LONE: "x"}}}),
        "cardParamMap",
    ),
    (
        "PUT",
        "/v1.0/card/streaming",
        escaped(
            {"outTrackId": "c-ok", "key": "content", "content": LONE, "guid": "g", "isFull": True}
        ),
        "content",
    ),
    (
        "POST",
        "/v1.0/im/v1.0/robot/interactiveCards/send",
        escaped(standard_card("s-new", text=LONE)),
        "cardData",
    ),
    (
        "PUT",
        "/v1.0/im/robots/interactiveCards",
        escaped({"cardBizId": "s-ok", "cardData": json.dumps({"title": LONE})}),
        "cardData",
    ),
    (
        "POST",
        "/v1.0/robot/groupMessages/send",
        escaped(group_send(LONE)),
        "msgParam",
    ),
    (
        "POST",
        "/v1.0/robot/oToMessages/batchSend",
        escaped({**group_send(), "userIds": ["u\udc00"]}),
        "userIds",
    ),
    (
        "POST",
        "/v1.0/robot/groupMessages/send",
        json.dumps(group_send("raw")).encode().replace(b"raw", b"r\xed\xa0\x80w"),
        "msgParam",
    ),
]


async def test_openapi_routes_refuse_a_lone_surrogate_with_400_and_go_on(
    http: aiohttp.ClientSession, emu: DingTalkEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    token = await token_of(http, emu)
    status, _ = await call(
        http,
        emu,
        "POST",
        "/v1.0/card/instances/createAndDeliver",
        json.dumps(ai_card("c-ok")).encode(),
        token,
    )
    assert status == 200
    status, _ = await call(
        http,
        emu,
        "POST",
        "/v1.0/im/v1.0/robot/interactiveCards/send",
        json.dumps(standard_card("s-ok")).encode(),
        token,
    )
    assert status == 200
    cards_before = {k: json.dumps(v.content) for k, v in emu.cards.items()}
    sent_before = len(emu.sent_messages)

    async with http.ws_connect(f"{emu.base_url}/_emulator/events") as events:
        assert json.loads((await events.receive(timeout=5)).data)["kind"] == "hello"
        for method, path, body, where in REFUSED:
            with caplog.at_level(logging.INFO, logger="imrobots_dingtalk.emulator"):
                status, answer = await call(http, emu, method, path, body, token)
            assert status == 400, (path, answer)
            assert answer["code"] == "invalidParameter", (path, answer)
            assert "lone surrogate" in answer["message"] and where in answer["message"], answer
            assert answer["requestid"]
            recorded = emu.calls[-1]
            assert (recorded.path, recorded.status) == (path, 400)
            assert recorded.error_code == "invalidParameter"
            # what was recorded can be stored and shown: UTF-8 carries it
            json.dumps(recorded.request, ensure_ascii=False).encode()
            assert any(
                "lone surrogate" in r.getMessage() and r.levelno >= logging.INFO
                for r in caplog.records
            ), path
            caplog.clear()
        # nothing was taken
        assert {k: json.dumps(v.content) for k, v in emu.cards.items()} == cards_before
        assert len(emu.sent_messages) == sent_before

        # the events WebSocket (the console) saw each refusal and still runs
        refusals = 0
        while refusals < len(REFUSED):
            event = json.loads((await events.receive(timeout=5)).data)
            if event["kind"] == "call" and event["record"]["status"] == 400:
                refusals += 1
        status, _ = await call(
            http,
            emu,
            "POST",
            "/v1.0/robot/groupMessages/send",
            json.dumps(group_send(FINE)).encode(),
            token,
        )
        assert status == 200
        while True:
            event = json.loads((await events.receive(timeout=5)).data)
            if event["kind"] == "call" and event["record"]["status"] == 200:
                break
    assert emu.sent_messages[-1].msg_param == {"content": FINE}


async def test_token_and_gateway_refuse_a_lone_surrogate(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    status, answer = await call(
        http, emu, "POST", "/v1.0/oauth2/accessToken", escaped({"appKey": APP, "appSecret": LONE})
    )
    assert status == 400 and answer["code"] == "invalidParameter", answer
    assert "appSecret" in answer["message"]
    body = {"clientId": APP, "clientSecret": SECRET, "ua": LONE, "subscriptions": []}
    status, answer = await call(http, emu, "POST", "/v1.0/gateway/connections/open", escaped(body))
    assert status == 400 and answer["code"] == "invalidParameter", answer
    assert not emu.state.tickets
    assert await token_of(http, emu)


async def test_session_webhook_refuses_a_lone_surrogate_in_its_own_shape(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    pushed = await emu.push_message(APP, text="hi")
    async with http.post(
        pushed.session_webhook,
        data=escaped({"msgtype": "text", "text": {"content": LONE}}),
        headers={"Content-Type": "application/json"},
    ) as resp:
        # an oapi-style route: HTTP 200 and a non-zero errcode, as for its other bad bodies
        assert resp.status == 200
        answer = await resp.json()
    assert answer["errcode"] == 40035 and "lone surrogate" in answer["errmsg"], answer
    refused = emu.webhook_messages[-1]
    assert refused.errcode == 40035 and not refused.ok
    json.dumps(refused.body, ensure_ascii=False).encode()
    async with http.post(
        pushed.session_webhook, json={"msgtype": "text", "text": {"content": FINE}}
    ) as resp:
        assert await resp.json() == {"errcode": 0, "errmsg": "ok"}
    assert emu.webhook_messages[-1].text == FINE


async def test_stream_ack_with_a_lone_surrogate_is_refused_and_the_connection_stays(
    http: aiohttp.ClientSession, emu: DingTalkEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    async with http.post(
        f"{emu.base_url}/v1.0/gateway/connections/open",
        json={
            "clientId": APP,
            "clientSecret": SECRET,
            "subscriptions": [{"type": "CALLBACK", "topic": "/v1.0/im/bot/messages/get"}],
        },
    ) as resp:
        opened = await resp.json()
    ws = await http.ws_connect(f"{opened['endpoint']}?ticket={opened['ticket']}")
    await emu.wait_for(lambda: len(emu.live_connections(APP)) == 1)
    queue = emu.subscribe()
    pushed = await emu.push_message(APP, text="hello")
    frame = json.loads((await ws.receive(timeout=5)).data)
    message_id = frame["headers"]["messageId"]

    def ack(data: str, message: str = "OK") -> dict[str, Any]:
        headers = {"contentType": "application/json", "messageId": message_id}
        return {"code": 200, "headers": headers, "message": message, "data": data}

    hostile = [
        json.dumps(ack(json.dumps({"response": None}), message=LONE)),  # in the frame
        json.dumps(ack(json.dumps({"response": {"text": LONE}}))),  # in its data string
    ]
    with caplog.at_level(logging.INFO, logger="imrobots_dingtalk.emulator"):
        for text in hostile:
            await ws.send_str(text)
        problems = []
        while len(problems) < len(hostile):
            event = await asyncio.wait_for(queue.get(), 5)
            if event["kind"] == "frame":
                problems.append(event)
    assert all("lone surrogate" in p["problem"] for p in problems), problems
    assert sum("lone surrogate" in r.getMessage() for r in caplog.records) == len(hostile)
    assert not pushed.ack.acked  # refused: not taken as the ACK

    # the same connection goes on: a good ACK is taken
    await ws.send_str(json.dumps(ack(json.dumps({"response": None}))))
    await emu.wait_for(lambda: pushed.ack.acked)
    assert pushed.ack.code == 200 and pushed.ack.data == {"response": None}
    assert not ws.closed and len(emu.live_connections(APP)) == 1

    await ws.close()


async def test_control_api_refuses_a_lone_surrogate(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    headers = {"X-Imrobots-Token": emu.control_token, "Content-Type": "application/json"}
    async with http.post(
        f"{emu.base_url}/_emulator/messages",
        data=escaped({"client_id": APP, "text": LONE}),
        headers=headers,
    ) as resp:
        assert resp.status == 400
        assert "lone surrogate" in (await resp.json())["error"]
    assert not emu.pushes
