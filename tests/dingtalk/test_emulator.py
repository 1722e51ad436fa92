"""Raw-protocol tests of the DingTalk emulator with an aiohttp client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from imrobots_dingtalk.emulator import DingTalkEmulator

pytestmark = pytest.mark.asyncio

APP = "dingtestapp"
SECRET = "test-secret-value"
BOT = "/v1.0/im/bot/messages/get"
CARD_CB = "/v1.0/card/instances/callback"
TOKEN_HEADER = "x-acs-dingtalk-access-token"


# --- helpers --------------------------------------------------------------------


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[DingTalkEmulator]:
    async with DingTalkEmulator(seed=7, ping_interval=None) as emulator:
        emulator.add_app(APP, SECRET)
        yield emulator


async def open_ticket(
    http: aiohttp.ClientSession,
    emu: DingTalkEmulator,
    topics: Sequence[str] = (BOT,),
    secret: str = SECRET,
) -> tuple[int, dict[str, Any]]:
    body = {
        "clientId": APP,
        "clientSecret": secret,
        "subscriptions": [{"type": "CALLBACK", "topic": t} for t in topics],
        "ua": "test-client/1.0",
        "localIp": "127.0.0.1",
    }
    async with http.post(
        f"{emu.base_url}/v1.0/gateway/connections/open",
        json=body,
        headers={"Accept": "application/json"},
    ) as resp:
        return resp.status, await resp.json()


async def connect(
    http: aiohttp.ClientSession, emu: DingTalkEmulator, topics: Sequence[str] = (BOT,)
) -> aiohttp.ClientWebSocketResponse:
    status, body = await open_ticket(http, emu, topics)
    assert status == 200, body
    ws = await http.ws_connect(f"{body['endpoint']}?ticket={body['ticket']}", autoping=True)
    await emu.wait_for(lambda: len(emu.live_connections(APP)) >= 1)
    return ws


async def recv(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    frame = json.loads(msg.data)
    assert isinstance(frame, dict)
    return frame


async def send_ack(
    ws: aiohttp.ClientWebSocketResponse, frame: dict[str, Any], data: Any = None, code: int = 200
) -> None:
    await ws.send_str(
        json.dumps(
            {
                "code": code,
                "headers": {
                    "contentType": "application/json",
                    "messageId": frame["headers"]["messageId"],
                },
                "message": "OK",
                "data": json.dumps(data if data is not None else {"response": None}),
            }
        )
    )


async def get_token(http: aiohttp.ClientSession, emu: DingTalkEmulator) -> str:
    async with http.post(
        f"{emu.base_url}/v1.0/oauth2/accessToken",
        json={"appKey": APP, "appSecret": SECRET},
    ) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["expireIn"] == 7200
    token = body["accessToken"]
    assert isinstance(token, str)
    return token


async def api(
    http: aiohttp.ClientSession,
    emu: DingTalkEmulator,
    method: str,
    path: str,
    token: str,
    body: dict[str, Any],
) -> tuple[int, dict[str, Any]]:
    async with http.request(
        method, f"{emu.base_url}{path}", json=body, headers={TOKEN_HEADER: token}
    ) as resp:
        return resp.status, await resp.json()


def group_send_body(text: str = "hi") -> dict[str, Any]:
    return {
        "robotCode": APP,
        "openConversationId": "cidGroup==",
        "msgKey": "sampleText",
        "msgParam": json.dumps({"content": text}),
    }


async def create_ai_card(
    http: aiohttp.ClientSession, emu: DingTalkEmulator, token: str, out_track_id: str
) -> tuple[int, dict[str, Any]]:
    return await api(
        http,
        emu,
        "POST",
        "/v1.0/card/instances/createAndDeliver",
        token,
        {
            "cardTemplateId": "ai.schema",
            "outTrackId": out_track_id,
            "cardData": {"cardParamMap": {"flowStatus": "1", "title": "Answer"}},
            "callbackType": "STREAM",
            "openSpaceId": "dtv1.card//IM_GROUP.cidGroup==",
            "imGroupOpenDeliverModel": {"robotCode": APP, "atUserIds": {"u1": "Alice"}},
        },
    )


# --- gateway, tickets, frames ---------------------------------------------------------


async def test_bad_credentials_are_rejected(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    status, body = await open_ticket(http, emu, secret="wrong")
    assert status == 401
    assert body["code"] == "authFailed"
    assert body["message"] == "鉴权失败"
    assert body["requestid"]

    async with http.post(
        f"{emu.base_url}/v1.0/oauth2/accessToken", json={"appKey": APP, "appSecret": "nope"}
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == "invalidClientIdOrSecret"

    recorded = json.dumps([c.request for c in emu.calls], ensure_ascii=False)
    assert "wrong" not in recorded and "nope" not in recorded
    assert [c.error_code for c in emu.calls] == ["authFailed", "invalidClientIdOrSecret"]


async def test_ticket_is_single_use_and_expires(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    status, body = await open_ticket(http, emu)
    assert status == 200
    assert body["endpoint"] == f"ws://127.0.0.1:{emu.port}/connect"
    url = f"{body['endpoint']}?ticket={body['ticket']}"
    ws = await http.ws_connect(url)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(url)
    assert info.value.status == 401
    await ws.close()

    _, body = await open_ticket(http, emu)
    emu.state.tickets[body["ticket"]].expires_at = time.monotonic() - 1
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await http.ws_connect(f"{body['endpoint']}?ticket={body['ticket']}")
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await http.ws_connect(f"{body['endpoint']}?ticket=not-a-ticket")


async def test_bot_message_frame_shape_and_ack(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    ws = await connect(http, emu)
    pushed = await emu.push_message(APP, text="hello", sender_staff_id="u7", sender_nick="Bob")
    frame = await recv(ws)

    assert frame["specVersion"] == "1.0"
    assert frame["type"] == "CALLBACK"
    headers = frame["headers"]
    assert headers["topic"] == BOT
    assert headers["messageId"] == pushed.message_id
    assert headers["contentType"] == "application/json"
    assert isinstance(headers["time"], str) and headers["time"].isdigit()
    assert headers["appId"] == emu.apps[APP].app_id
    assert headers["connectionId"] == emu.live_connections(APP)[0].connection_id
    assert isinstance(frame["data"], str)

    data = json.loads(frame["data"])
    assert data["msgId"] == pushed.msg_id and data["msgId"].startswith("msg")
    assert data["conversationType"] == "2"
    assert data["conversationId"].startswith("cid")
    assert data["text"] == {"content": " hello"}
    assert data["isInAtList"] is True
    assert data["atUsers"] == [{"dingtalkId": emu.apps[APP].chatbot_user_id}]
    assert data["senderStaffId"] == "u7" and data["senderNick"] == "Bob"
    assert data["senderId"].startswith("$:LWCP_v1:$")
    assert data["robotCode"] == APP
    assert data["sessionWebhook"].startswith(f"{emu.base_url}/robot/sendBySession?session=")
    assert data["sessionWebhookExpiredTime"] - data["createAt"] == pytest.approx(
        5_400_000, abs=5000
    )

    direct = await emu.push_message(APP, text="dm", conversation_type="direct")
    direct_data = json.loads((await recv(ws))["data"])
    assert direct_data["conversationType"] == "1"
    assert direct_data["text"] == {"content": "dm"}
    assert "conversationTitle" not in direct_data and "atUsers" not in direct_data
    assert direct.conversation_id != pushed.conversation_id

    await send_ack(ws, frame)
    await emu.wait_for(lambda: pushed.ack.acked)
    ack = emu.acks[pushed.message_id]
    assert ack is pushed.ack
    assert ack.code == 200 and ack.data == {"response": None}
    assert ack.latency is not None and not ack.timed_out
    assert not direct.ack.acked
    await ws.close()


async def test_picture_message_uses_content(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    ws = await connect(http, emu)
    await emu.push_message(
        APP, msgtype="picture", content={"downloadCode": "dl1"}, conversation_type="direct"
    )
    data = json.loads((await recv(ws))["data"])
    assert data["msgtype"] == "picture"
    assert data["content"] == {"downloadCode": "dl1"}
    assert "text" not in data
    with pytest.raises(ValueError):
        await emu.push_message(APP, msgtype="file")
    with pytest.raises(ValueError):
        await emu.push_message("unknown-app", text="x")
    await ws.close()


async def test_ping_echo_is_recorded(http: aiohttp.ClientSession, emu: DingTalkEmulator) -> None:
    ws = await connect(http, emu)
    (good_id,) = await emu.send_system(APP, "ping", opaque="opaque-1")
    frame = await recv(ws)
    assert frame["type"] == "SYSTEM"
    assert frame["headers"]["topic"] == "ping"
    assert frame["headers"]["messageId"] == good_id
    assert json.loads(frame["data"]) == {"opaque": "opaque-1"}
    await send_ack(ws, frame, data=json.loads(frame["data"]))

    (bad_id,) = await emu.send_system(APP, "ping")
    bad = await recv(ws)
    await send_ack(ws, bad, data={"opaque": "something else"})

    await emu.wait_for(lambda: emu.acks[good_id].acked and emu.acks[bad_id].acked)
    assert emu.acks[good_id].echoed is True
    assert emu.acks[bad_id].echoed is False
    conn = emu.live_connections(APP)[0]
    assert conn.pings_sent == 2 and conn.pings_echoed == 1
    await ws.close()


async def test_periodic_ping(http: aiohttp.ClientSession) -> None:
    async with DingTalkEmulator(seed=1, ping_interval=0.05) as emulator:
        emulator.add_app(APP, SECRET)
        ws = await connect(http, emulator)
        for _ in range(2):
            frame = await recv(ws)
            assert frame["headers"]["topic"] == "ping"
            await send_ack(ws, frame, data=json.loads(frame["data"]))
        await emulator.wait_for(lambda: emulator.connections[0].pings_echoed >= 2)
        await ws.close()


async def test_disconnect_then_close(http: aiohttp.ClientSession) -> None:
    async with DingTalkEmulator(seed=2, ping_interval=None, disconnect_grace=0.2) as emulator:
        emulator.add_app(APP, SECRET)
        ws = await connect(http, emulator)
        started = time.monotonic()
        await emulator.send_system(APP, "disconnect", reason="connection is expired")
        frame = await recv(ws)
        assert frame["type"] == "SYSTEM" and frame["headers"]["topic"] == "disconnect"
        assert json.loads(frame["data"]) == {"reason": "connection is expired"}

        # nothing more is delivered on a draining connection
        pushed = await emulator.push_message(APP, text="lost?")
        assert pushed.queued and pushed.frame is None

        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert time.monotonic() - started >= 0.15
        await emulator.wait_for(lambda: not emulator.live_connections(APP))
        assert emulator.connections[0].close_reason == "disconnect"

        # the queued message goes to the next connection
        ws2 = await connect(http, emulator)
        again = await recv(ws2)
        assert again["headers"]["messageId"] == pushed.message_id
        await ws2.close()


async def test_drop_connections_closes_sockets(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    ws1 = await connect(http, emu)
    ws2 = await connect(http, emu)
    await emu.wait_for(lambda: len(emu.live_connections(APP)) == 2)
    assert await emu.drop_connections(APP) == 2
    for ws in (ws1, ws2):
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.ERROR,
        )
    await emu.wait_for(lambda: not emu.live_connections())
    assert [c.close_reason for c in emu.connections] == ["dropped", "dropped"]


async def test_one_connection_per_push_and_connection_limit(http: aiohttp.ClientSession) -> None:
    async with DingTalkEmulator(seed=3, ping_interval=None, max_connections_per_app=2) as emulator:
        emulator.add_app(APP, SECRET)
        ws1 = await connect(http, emulator)
        ws2 = await connect(http, emulator)
        await emulator.wait_for(lambda: len(emulator.live_connections(APP)) == 2)
        _status, body = await open_ticket(http, emulator)
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(f"{body['endpoint']}?ticket={body['ticket']}")
        assert info.value.status == 403

        for i in range(6):
            await emulator.push_message(APP, text=f"m{i}")
        await emulator.wait_for(lambda: sum(c.deliveries for c in emulator.connections) == 6)
        assert all(p.ack.deliveries == 1 for p in emulator.pushes)
        await ws1.close()
        await ws2.close()


async def test_only_subscribed_topics_are_delivered(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    ws = await connect(http, emu, topics=(BOT,))
    token = await get_token(http, emu)
    status, _ = await create_ai_card(http, emu, token, "card-sub")
    assert status == 200
    callback = await emu.press_button(APP, card_id="card-sub", action_id="btn")
    assert callback.queued and callback.frame is None
    await ws.close()


async def test_queued_message_delivered_when_connection_arrives(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    pushed = await emu.push_message(APP, text="early bird")
    assert pushed.queued and not pushed.frame and pushed.ack.queued_at is not None
    ws = await connect(http, emu)
    frame = await recv(ws)
    assert frame["headers"]["messageId"] == pushed.message_id
    assert json.loads(frame["data"])["msgId"] == pushed.msg_id
    assert pushed.frame == frame
    await ws.close()


async def test_redelivery_when_configured(http: aiohttp.ClientSession) -> None:
    async with DingTalkEmulator(seed=4, ping_interval=None, redeliver_after=0.1) as emulator:
        emulator.add_app(APP, SECRET)
        ws = await connect(http, emulator)
        pushed = await emulator.push_message(APP, text="again")
        first = await recv(ws)
        second = await recv(ws)  # not acked -> redelivered with the same messageId
        assert first["headers"]["messageId"] == second["headers"]["messageId"]
        assert first["data"] == second["data"]
        await send_ack(ws, second)
        await emulator.wait_for(lambda: pushed.ack.acked)
        assert pushed.ack.deliveries == 2
        await ws.close()


# --- OpenAPI --------------------------------------------------------------------------------


async def test_qps_limit_per_app_per_api(http: aiohttp.ClientSession) -> None:
    async with DingTalkEmulator(seed=5, ping_interval=None, qps_limit=5) as emulator:
        emulator.add_app(APP, SECRET)
        token = await get_token(http, emulator)
        results = await asyncio.gather(
            *(
                api(
                    http,
                    emulator,
                    "POST",
                    "/v1.0/robot/groupMessages/send",
                    token,
                    group_send_body(),
                )
                for _ in range(12)
            )
        )
        limited = [body for status, body in results if status == 403]
        assert len(limited) >= 2
        assert {b["code"] for b in limited} == {"Forbidden.AccessDenied.QpsLimitForAppkeyAndApi"}
        assert sum(status == 200 for status, _ in results) <= 10

        other = await api(
            http,
            emulator,
            "POST",
            "/v1.0/robot/oToMessages/batchSend",
            token,
            {"robotCode": APP, "userIds": ["u1"], "msgKey": "sampleText", "msgParam": "{}"},
        )
        assert other[0] == 200, other
        assert other[1]["processQueryKey"]
        assert len(emulator.sent_messages) == sum(s == 200 for s, _ in results) + 1


async def test_tokens_reused_and_expire(http: aiohttp.ClientSession, emu: DingTalkEmulator) -> None:
    token = await get_token(http, emu)
    assert await get_token(http, emu) == token
    path = "/v1.0/robot/groupMessages/send"
    assert (await api(http, emu, "POST", path, token, group_send_body()))[0] == 200

    emu.expire_tokens()
    status, body = await api(http, emu, "POST", path, token, group_send_body())
    assert status == 401
    assert body["code"] == "InvalidAuthentication"
    status, body = await api(http, emu, "POST", path, "", group_send_body())
    assert status == 401

    fresh = await get_token(http, emu)
    assert fresh != token
    assert (await api(http, emu, "POST", path, fresh, group_send_body()))[0] == 200


async def test_unknown_api_and_missing_body(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    token = await get_token(http, emu)
    status, body = await api(http, emu, "POST", "/v1.0/nope/nothing", token, {})
    assert status == 404 and body["code"] == "InvalidAction.NotFound"
    async with http.put(
        f"{emu.base_url}/v1.0/card/streaming", data=b"not json", headers={TOKEN_HEADER: token}
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == "Missingbody"


async def test_session_webhook_and_expiry(http: aiohttp.ClientSession) -> None:
    async with DingTalkEmulator(seed=6, ping_interval=None, webhook_lifetime=0.2) as emulator:
        emulator.add_app(APP, SECRET)
        pushed = await emulator.push_message(APP, text="hi", sender_staff_id="u9")
        reply = {"msgtype": "markdown", "markdown": {"title": "T", "text": "**hi**"}}
        async with http.post(pushed.session_webhook, json=reply) as resp:
            assert await resp.json() == {"errcode": 0, "errmsg": "ok"}
        first = emulator.webhook_messages[0]
        assert first.ok and first.msgtype == "markdown" and first.text == "**hi**"
        assert first.title == "T" and first.msg_id == pushed.msg_id

        async with http.post(pushed.session_webhook, json={"msgtype": "bogus"}) as resp:
            assert (await resp.json())["errcode"] != 0

        deadline = time.monotonic() + 5
        while True:
            async with http.post(
                pushed.session_webhook, json={"msgtype": "text", "text": {"content": "late"}}
            ) as resp:
                body = await resp.json()
            if body["errcode"] != 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert body == {"errcode": 300001, "errmsg": "session 不存在"}
        assert emulator.webhook_messages[-1].errcode == 300001


async def test_ai_card_lifecycle_and_streaming_validation(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    token = await get_token(http, emu)
    status, body = await create_ai_card(http, emu, token, "card-1")
    assert status == 200, body
    assert body["success"] is True
    assert body["result"]["outTrackId"] == "card-1"
    assert body["result"]["deliverResults"][0]["spaceType"] == "IM_GROUP"
    status, body = await create_ai_card(http, emu, token, "card-1")
    assert (status, body["code"]) == (400, "param.cardAlreadyExist")

    def stream(**over: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "outTrackId": "card-1",
            "guid": "g-1",
            "key": "msgContent",
            "content": "Hel",
            "isFull": False,
            "isFinalize": False,
            "isError": False,
        }
        base.update(over)
        return base

    put = "/v1.0/card/streaming"
    cases = [
        (stream(key=""), "param.stream.keyEmpty", "param.stream.keyEmpty"),
        (stream(guid=""), "param.stream.guidEmpty", "param.stream.guidEmpty"),
        (stream(content=""), "param.stream.contentEmpty", "param.stream.contentEmpty"),
        (stream(outTrackId="missing"), "param.stream.outTrackId", "card is not exist"),
        (stream(content="x" * 20_001), "param.stream.content", "content is too large"),
    ]
    for request, code, message in cases:
        status, body = await api(http, emu, "PUT", put, token, request)
        assert (status, body["code"], body["message"]) == (400, code, message)

    assert (await api(http, emu, "PUT", put, token, stream()))[0] == 200
    assert (await api(http, emu, "PUT", put, token, stream(guid="g-2", content="lo")))[0] == 200
    # same guid again is idempotent
    assert (await api(http, emu, "PUT", put, token, stream(guid="g-2", content="lo")))[0] == 200
    card = emu.cards["card-1"]
    assert card.content["msgContent"] == "Hello"
    assert card.streaming_state == "inputing"
    status, _ = await api(
        http,
        emu,
        "PUT",
        put,
        token,
        stream(guid="g-3", content="Hello!", isFull=True, isFinalize=True),
    )
    assert status == 200
    assert card.content["msgContent"] == "Hello!" and card.finalized
    assert card.view["markdown"] == "Hello!" and card.view["markdown_key"] == "msgContent"
    assert card.view["title"] == "Answer" and card.view["status"] == "finished"
    assert emu.cards["card-1"].streaming_state == "finished"

    status, _ = await api(
        http,
        emu,
        "PUT",
        "/v1.0/card/instances",
        token,
        {
            "outTrackId": "card-1",
            "cardData": {"cardParamMap": {"flowStatus": "3"}},
            "cardUpdateOptions": {"updateCardDataByKey": True},
        },
    )
    assert status == 200
    assert card.content == {"flowStatus": "3", "title": "Answer", "msgContent": "Hello!"}
    assert card.flow_status == "3"
    status, _ = await api(
        http,
        emu,
        "PUT",
        "/v1.0/card/instances",
        token,
        {"outTrackId": "card-1", "cardData": {"cardParamMap": {"only": "this"}}},
    )
    assert status == 200 and card.content == {"only": "this"}
    buttons = [{"id": "up", "label": "👍", "value": "1"}]
    status, _ = await api(
        http,
        emu,
        "PUT",
        "/v1.0/card/instances",
        token,
        {"outTrackId": "card-1", "cardData": {"cardParamMap": {"buttons": json.dumps(buttons)}}},
    )
    assert status == 200 and card.view["buttons"] == [{**buttons[0], "style": "default"}]
    status, body = await api(
        http,
        emu,
        "PUT",
        "/v1.0/card/instances",
        token,
        {"outTrackId": "card-1", "cardData": {"cardParamMap": {"bad": ["list"]}}},
    )
    assert status == 400 and body["code"] == "param.invalid"

    assert card.conversation_id == "cidGroup==" and card.at_user_ids == ["u1"]
    assert [u.route for u in card.updates] == [
        "card.instances.createAndDeliver",
        "card.streaming",
        "card.streaming",
        "card.streaming",
        "card.instances.update",
        "card.instances.update",
        "card.instances.update",
    ]


async def test_create_then_deliver_and_standard_card_errors(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    token = await get_token(http, emu)
    status, body = await api(
        http,
        emu,
        "POST",
        "/v1.0/card/instances",
        token,
        {"cardTemplateId": "t.schema", "outTrackId": "c2", "cardData": {"cardParamMap": {}}},
    )
    assert (status, body) == (200, {"success": True, "result": "c2"})
    status, body = await api(
        http,
        emu,
        "POST",
        "/v1.0/card/instances/deliver",
        token,
        {"outTrackId": "c2", "openSpaceId": "dtv1.card//IM_ROBOT.u5", "userIdType": 1},
    )
    assert (status, body["code"]) == (400, "param.openDeliverModelEmpty")
    status, body = await api(
        http,
        emu,
        "POST",
        "/v1.0/card/instances/deliver",
        token,
        {
            "outTrackId": "c2",
            "openSpaceId": "dtv1.card//IM_ROBOT.u5",
            "imRobotOpenDeliverModel": {"spaceType": "IM_ROBOT"},
        },
    )
    assert status == 200 and body["result"][0]["spaceId"] == "u5"
    assert emu.cards["c2"].conversation_type == "direct"
    assert emu.cards["c2"].receiver_user_ids == ["u5"]

    status, body = await api(
        http,
        emu,
        "PUT",
        "/v1.0/im/robots/interactiveCards",
        token,
        {"cardBizId": "unknown", "cardData": "{}"},
    )
    assert status == 400 and body["code"] == "cardInstance.notExist"
    status, body = await api(
        http,
        emu,
        "POST",
        "/v1.0/im/v1.0/robot/interactiveCards/send",
        token,
        {
            "cardTemplateId": "StandardCard",
            "cardBizId": "b1",
            "robotCode": APP,
            "cardData": "not json",
            "openConversationId": "cidX",
        },
    )
    assert status == 400 and body["code"] == "param.isNotJson"


async def test_card_fields_of_the_wrong_type_get_400_naming_them(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    """Before: ``key: ["k"]`` got ``param.stream.keyEmpty`` (the key is not empty), and
    ``isFinalize: "no"`` finalized the card (a non-empty string counted as true)."""
    token = await get_token(http, emu)
    assert (await create_ai_card(http, emu, token, "typed"))[0] == 200
    card = emu.cards["typed"]
    put = "/v1.0/card/streaming"
    good = {"outTrackId": "typed", "guid": "g", "key": "msgContent", "content": "Hi"}

    status, body = await api(
        http,
        emu,
        "PUT",
        put,
        token,
        {"outTrackId": 123, "key": ["k"], "content": {"a": 1}, "guid": True},
    )
    assert status == 400 and body["code"] == "param.invalid" and body["requestid"]
    assert body["message"] == (
        "outTrackId must be a string, not number; guid must be a string, not boolean; "
        "key must be a string, not array; content must be a string, not object"
    )
    status, body = await api(
        http, emu, "PUT", put, token, {**good, "isFull": "yes", "isFinalize": "no"}
    )
    assert (status, body["code"]) == (400, "param.invalid")
    assert body["message"] == (
        "isFull must be a boolean, not string; isFinalize must be a boolean, not string"
    )
    status, body = await api(http, emu, "PUT", put, token, {**good, "isError": 1})
    assert (status, body["message"]) == (400, "isError must be a boolean, not number")
    # none of the refused calls touched the card; null stays "not given"
    assert not card.finalized and not card.error and "msgContent" not in card.content
    assert card.stream_guids == set()
    status, _ = await api(http, emu, "PUT", put, token, {**good, "isFull": True, "isError": None})
    assert status == 200 and card.content["msgContent"] == "Hi" and not card.finalized

    # the other card routes: create, deliver, update, and the StandardCard pair
    cases: list[tuple[str, str, dict[str, Any], str, str]] = [
        (
            "POST",
            "/v1.0/card/instances",
            {"cardTemplateId": "t.schema", "outTrackId": "c9", "cardData": "{}", "userIdType": "1"},
            "param.invalid",
            "cardData must be an object, not string; userIdType must be an integer, not string",
        ),
        (
            "POST",
            "/v1.0/card/instances",
            {"cardTemplateId": "t.schema", "outTrackId": "c9", "cardData": {"cardParamMap": []}},
            "param.invalid",
            "cardData.cardParamMap must be an object, not array",
        ),
        (
            "POST",
            "/v1.0/card/instances/deliver",
            {"outTrackId": "typed", "openSpaceId": ["dtv1.card//IM_ROBOT.u5"]},
            "param.invalid",
            "openSpaceId must be a string, not array",
        ),
        (
            "POST",
            "/v1.0/card/instances/deliver",
            {
                "outTrackId": "typed",
                "openSpaceId": "dtv1.card//IM_GROUP.cidGroup==",
                "imGroupOpenDeliverModel": {"robotCode": APP, "atUserIds": ["u1"]},
            },
            "param.invalid",
            "imGroupOpenDeliverModel.atUserIds must be an object, not array",
        ),
        (
            "POST",
            "/v1.0/card/instances/createAndDeliver",
            {
                "cardTemplateId": "t.schema",
                "outTrackId": "c10",
                "cardData": {"cardParamMap": {}},
                "openSpaceId": ["dtv1.card//IM_ROBOT.u5"],
            },
            "param.invalid",
            "openSpaceId must be a string, not array",
        ),
        (
            "PUT",
            "/v1.0/card/instances",
            {"outTrackId": "typed", "cardUpdateOptions": {"updateCardDataByKey": "false"}},
            "param.invalid",
            "cardUpdateOptions.updateCardDataByKey must be a boolean, not string",
        ),
        (
            "POST",
            "/v1.0/im/v1.0/robot/interactiveCards/send",
            {
                "cardTemplateId": "StandardCard",
                "cardBizId": 7,
                "robotCode": APP,
                "cardData": {"header": {}},
                "openConversationId": "cidX",
            },
            "param.error",
            "参数无效: cardBizId must be a string, not number; "
            "cardData must be a string, not object",
        ),
        (
            "POST",
            "/v1.0/im/v1.0/robot/interactiveCards/send",
            {
                "cardTemplateId": "StandardCard",
                "cardBizId": "b7",
                "robotCode": APP,
                "cardData": "{}",
                "openConversationId": "cidX",
                "sendOptions": {"atAll": "false"},
            },
            "param.error",
            "参数无效: sendOptions.atAll must be a boolean, not string",
        ),
        (
            "PUT",
            "/v1.0/im/robots/interactiveCards",
            {"cardBizId": "b7", "cardData": "{}", "updateOptions": {"updateCardDataByKey": 1}},
            "param.error",
            "参数无效: updateOptions.updateCardDataByKey must be a boolean, not number",
        ),
    ]
    for method, path, request, code, message in cases:
        status, body = await api(http, emu, method, path, token, request)
        assert (status, body["code"], body["message"]) == (400, code, message), path
    assert set(emu.cards) == {"typed"} and card.spaces == ["dtv1.card//IM_GROUP.cidGroup=="]
    assert card.content["msgContent"] == "Hi"


async def test_failure_injection_share(http: aiohttp.ClientSession) -> None:
    async with DingTalkEmulator(seed=8, ping_interval=None, qps_limit=10_000) as emulator:
        emulator.add_app(APP, SECRET)
        token = await get_token(http, emulator)
        emulator.set_failure_rate(0.3)
        statuses = [
            (
                await api(
                    http,
                    emulator,
                    "POST",
                    "/v1.0/robot/groupMessages/send",
                    token,
                    group_send_body(),
                )
            )[0]
            for _ in range(200)
        ]
        failures = statuses.count(500)
        assert 30 <= failures <= 90, failures
        assert set(statuses) == {200, 500}
        bodies = [c.response for c in emulator.calls if c.status == 500]
        assert all(b["code"] == "system.busy" for b in bodies)

        emulator.set_failure_rate(1.0, kind="qps")
        status, body = await api(
            http, emulator, "POST", "/v1.0/robot/groupMessages/send", token, group_send_body()
        )
        assert (status, body["code"]) == (403, "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi")

        emulator.set_failure_rate(0.0)
        emulator.set_latency(0.05)
        started = time.monotonic()
        await api(
            http, emulator, "POST", "/v1.0/robot/groupMessages/send", token, group_send_body()
        )
        assert time.monotonic() - started >= 0.05
        assert emulator.calls[-1].latency >= 0.05


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ('{"action": "latency", "seconds": 1e999}', "latency must be >= 0 and finite, got inf"),
        ('{"action": "latency", "seconds": NaN}', "latency must be >= 0 and finite, got nan"),
        (
            '{"action": "refuse_credentials", "seconds": Infinity}',
            "seconds must be >= 0 and finite, got inf",
        ),
    ],
)
async def test_control_api_refuses_a_latency_or_refusal_without_end(
    http: aiohttp.ClientSession, emu: DingTalkEmulator, body: str, error: str
) -> None:
    """An infinite latency (``1e999``, which JSON readers take as inf) was set, answered
    200 ``{"latency": null}``, and every OpenAPI call then hung for good; NaN passed the
    ``< 0`` check too."""
    http.headers["X-Imrobots-Token"] = emu.control_token
    async with http.post(f"{emu.base_url}/_emulator/faults", data=body) as response:
        assert response.status == 400
        assert (await response.json())["error"] == error
    assert emu.latency == 0.0 and not emu.refusing_credentials


async def test_press_button_applies_callback_response(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    ws = await connect(http, emu, topics=(BOT, CARD_CB))
    token = await get_token(http, emu)
    await create_ai_card(http, emu, token, "card-btn")
    pushed = await emu.press_button(
        APP, card_id="card-btn", action_id="like", params={"value": "up"}, user_id="u3"
    )
    frame = await recv(ws)
    assert frame["type"] == "CALLBACK" and frame["headers"]["topic"] == CARD_CB
    data = json.loads(frame["data"])
    assert data["type"] == "actionCallback"
    assert data["outTrackId"] == "card-btn" and data["userId"] == "u3"
    assert data["spaceType"] == "IM_GROUP" and data["spaceId"] == "cidGroup=="
    assert isinstance(data["content"], str)
    assert json.loads(data["content"]) == {
        "cardPrivateData": {"actionIds": ["like"], "params": {"value": "up"}}
    }
    response = {
        "cardData": {"cardParamMap": {"feedback": "up"}},
        "userPrivateData": {"cardParamMap": {"voted": "true"}},
        "cardUpdateOptions": {"updateCardDataByKey": True, "updatePrivateDataByKey": True},
    }
    await send_ack(ws, frame, data={"response": response})
    await emu.wait_for(lambda: emu.cards["card-btn"].updates[-1].route == "callback")
    card = emu.cards["card-btn"]
    assert card.content["feedback"] == "up" and card.content["title"] == "Answer"
    assert card.private_data["u3"] == {"voted": "true"}
    assert pushed.ack.response == response
    with pytest.raises(ValueError):
        await emu.press_button(APP, card_id="nope", action_id="x")
    await ws.close()


# --- control API, events, helpers ------------------------------------------------------


async def test_control_api_over_http(http: aiohttp.ClientSession, emu: DingTalkEmulator) -> None:
    base = f"{emu.base_url}/_emulator"
    http.headers["X-Imrobots-Token"] = emu.control_token  # the control API's POSTs need it
    async with http.post(f"{base}/apps", json={"client_id": "app2", "client_secret": "s2"}) as r:
        assert r.status == 200
        app = await r.json()
        assert app["client_id"] == "app2" and "client_secret" not in app
    async with http.post(f"{base}/apps", json={"client_id": "app2"}) as r:
        assert r.status == 400 and "client_secret" in (await r.json())["error"]

    async with http.post(f"{base}/messages", json={"client_id": APP, "text": 5}) as r:
        assert r.status == 400 and "text" in (await r.json())["error"]
    async with http.post(f"{base}/messages", json={"client_id": APP, "bogus": 1}) as r:
        assert r.status == 400 and "bogus" in (await r.json())["error"]
    async with http.post(f"{base}/messages", json={"client_id": "ghost"}) as r:
        assert r.status == 400 and "ghost" in (await r.json())["error"]
    async with http.post(f"{base}/messages", data=b"{oops") as r:
        assert r.status == 400
    async with http.post(
        f"{base}/messages",
        json={"client_id": APP, "text": "via http", "conversation_type": "direct"},
    ) as r:
        assert r.status == 200
        pushed = await r.json()
    assert pushed["queued"] is True and pushed["ack"]["message_id"] == pushed["message_id"]

    token = await get_token(http, emu)
    await create_ai_card(http, emu, token, "card-http")
    async with http.post(
        f"{base}/buttons", json={"client_id": APP, "card_id": "card-http", "action_id": "a"}
    ) as r:
        assert r.status == 200 and (await r.json())["card_id"] == "card-http"

    async with http.post(f"{base}/faults", json={"action": "latency", "seconds": 0.01}) as r:
        assert (await r.json()) == {"latency": 0.01}
    async with http.post(f"{base}/faults", json={"action": "explode"}) as r:
        assert r.status == 400
    async with http.post(f"{base}/faults", json={"action": "expire_tokens"}) as r:
        assert r.status == 200
    assert not emu.state.tokens
    async with http.post(f"{base}/faults", json={"action": "drop_connections"}) as r:
        assert (await r.json()) == {"dropped": 0}

    for path in ("calls", "cards", "acks", "webhooks", "connections", "sent", "pushes", "apps"):
        async with http.get(f"{base}/{path}") as r:
            assert r.status == 200, path
            assert isinstance(await r.json(), list)
    async with http.get(f"{base}/cards") as r:
        cards = await r.json()
    assert [c["card_id"] for c in cards] == ["card-http"]
    async with http.get(f"{base}/calls", params={"client_id": APP}) as r:
        calls = await r.json()
    assert calls and all(c["client_id"] == APP for c in calls)
    assert not any(c["path"].startswith("/_emulator") for c in calls)


async def test_events_websocket(http: aiohttp.ClientSession, emu: DingTalkEmulator) -> None:
    async with http.ws_connect(f"{emu.base_url}/_emulator/events") as ws:
        hello = await recv(ws)
        assert hello["kind"] == "hello" and hello["summary"]["apps"] == [APP]
        await emu.push_message(APP, text="evented")
        await get_token(http, emu)
        kinds: list[str] = []
        while "call" not in kinds:
            kinds.append((await recv(ws))["kind"])
        assert "queued" in kinds


async def test_subscribe_queue_and_on_change(emu: DingTalkEmulator) -> None:
    queue = emu.subscribe()
    seen: list[str] = []
    remove = emu.on_change(lambda event: seen.append(event["kind"]))
    emu.add_app("app3", "s3")
    event = queue.get_nowait()
    assert event["kind"] == "app" and event["record"]["client_id"] == "app3"
    assert "client_secret" not in event["record"]
    remove()
    emu.expire_tokens()
    assert seen == ["app"]
    emu.unsubscribe(queue)


async def test_wait_for_timeout_is_helpful(emu: DingTalkEmulator) -> None:
    with pytest.raises(TimeoutError, match="never"):
        await emu.wait_for(lambda: False, 0.05, what="never")


async def test_event_push_redelivered_until_success(http: aiohttp.ClientSession) -> None:
    async with DingTalkEmulator(seed=12, ping_interval=None, redeliver_after=0.05) as emulator:
        emulator.add_app(APP, SECRET)
        status, body = await open_ticket(http, emulator, topics=())
        assert status == 200
        ws = await http.ws_connect(f"{body['endpoint']}?ticket={body['ticket']}")
        await emulator.wait_for(lambda: bool(emulator.live_connections(APP)))
        # no EVENT subscription yet: the event waits
        pending = await emulator.push_event(APP, "chat_update_title", {"title": "x"})
        assert pending.queued and not pending.frame
        await ws.close()

        body_sub = {
            "clientId": APP,
            "clientSecret": SECRET,
            "subscriptions": [{"type": "EVENT", "topic": "*"}],
        }
        async with http.post(
            f"{emulator.base_url}/v1.0/gateway/connections/open", json=body_sub
        ) as resp:
            body = await resp.json()
        ws = await http.ws_connect(f"{body['endpoint']}?ticket={body['ticket']}")
        frame = await recv(ws)
        assert frame["type"] == "EVENT"
        headers = frame["headers"]
        assert headers["eventType"] == "chat_update_title"
        assert headers["eventId"] == pending.event_id
        assert headers["eventCorpId"] == emulator.apps[APP].corp_id
        assert headers["eventBornTime"].isdigit()
        assert json.loads(frame["data"]) == {"title": "x"}
        await send_ack(ws, frame, data={"status": "LATER", "message": "busy"})
        again = await recv(ws)
        assert again["headers"]["messageId"] == headers["messageId"]
        await send_ack(ws, again, data={"status": "SUCCESS", "message": "ok"})
        await emulator.wait_for(lambda: pending.ack.status == "SUCCESS")
        assert pending.ack.later_count == 1 and pending.ack.deliveries == 2
        await ws.close()


async def test_request_ids_are_version_4_uuids_drawn_from_the_seed() -> None:
    """The emulator writes its ids without a UUID object: the same text as
    ``str(uuid.UUID(int=bits, version=4))`` for the seed's bits, upper-cased for an
    ``x-acs-request-id``; card copies are deep copies of the JSON."""
    import random
    import uuid

    from imrobots_dingtalk.emulator import frames
    from imrobots_dingtalk.emulator.openapi import _copy_json

    ours, theirs = random.Random(7), random.Random(7)
    for _ in range(2000):
        expected = str(uuid.UUID(int=theirs.getrandbits(128), version=4))
        assert frames.new_uuid(ours) == expected
    assert (
        frames.new_request_id(random.Random(7))
        == str(uuid.UUID(int=random.Random(7).getrandbits(128), version=4)).upper()
    )

    content: dict[str, Any] = {"a": [{"b": "c"}, 1, 2.5, None], "d": {"e": [True]}}
    copied = _copy_json(content)
    assert copied == content
    copied["a"][0]["b"] = "changed"
    copied["d"]["e"].append(False)
    assert content == {"a": [{"b": "c"}, 1, 2.5, None], "d": {"e": [True]}}


async def test_openapi_answers_are_compact_utf8_json(emu: DingTalkEmulator) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{emu.base_url}/v1.0/oauth2/accessToken",
            json={"appKey": "nobody", "appSecret": "wrong"},
        ) as response,
    ):
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert response.headers["x-acs-request-id"]
        text = await response.text()
    assert json.loads(text)["code"]
    assert ", " not in text and '": ' not in text
