"""The emulator's faults, permissions, size limits, downloads and media, over raw HTTP."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from imrobots_dingtalk.emulator import DingTalkEmulator

APP = "dingmediaapp"
SECRET = "media-secret"
TOKEN = "x-acs-dingtalk-access-token"


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[DingTalkEmulator]:
    async with DingTalkEmulator(seed=3, ping_interval=None) as emulator:
        emulator.add_app(APP, SECRET)
        yield emulator


async def token(http: aiohttp.ClientSession, emu: DingTalkEmulator) -> str:
    body = {"appKey": APP, "appSecret": SECRET}
    async with http.post(f"{emu.base_url}/v1.0/oauth2/accessToken", json=body) as response:
        return str((await response.json())["accessToken"])


async def call(
    http: aiohttp.ClientSession,
    emu: DingTalkEmulator,
    method: str,
    path: str,
    body: dict[str, Any],
    *,
    timeout: float | None = None,
) -> tuple[int, Any]:
    headers = {TOKEN: await token(http, emu)}
    client_timeout = aiohttp.ClientTimeout(total=timeout) if timeout else None
    async with http.request(
        method, emu.base_url + path, json=body, headers=headers, timeout=client_timeout
    ) as response:
        return response.status, await response.json()


def create_body(card_id: str) -> dict[str, Any]:
    return {
        "cardTemplateId": "t.schema",
        "outTrackId": card_id,
        "cardData": {"cardParamMap": {"msgContent": "hi"}},
        "openSpaceId": "dtv1.card//IM_GROUP.cidG",
        "imGroupOpenDeliverModel": {"robotCode": APP},
    }


# --------------------------------------------------------------------------- faults


async def test_withheld_answer_times_out_although_the_call_took_effect(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    rule = emu.withhold_responses("card.instances.createAndDeliver", count=1)
    with pytest.raises(TimeoutError):
        await call(
            http,
            emu,
            "POST",
            "/v1.0/card/instances/createAndDeliver",
            create_body("c1"),
            timeout=0.3,
        )
    assert "c1" in emu.cards, "the call took effect"
    (recorded,) = [c for c in emu.calls if c.route == "card.instances.createAndDeliver"]
    assert recorded.status == 200 and any("withheld" in n for n in recorded.notes)
    assert rule.count == 0
    # the rule is used up: a retry with the same id is answered (it exists already)
    status, body = await call(
        http, emu, "POST", "/v1.0/card/instances/createAndDeliver", create_body("c1")
    )
    assert (status, body["code"]) == (400, "param.cardAlreadyExist")


async def test_withheld_answer_as_a_dropped_connection(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    emu.withhold_responses("card.instances.createAndDeliver", mode="disconnect")
    with pytest.raises(aiohttp.ClientError):
        await call(http, emu, "POST", "/v1.0/card/instances/createAndDeliver", create_body("c2"))
    assert "c2" in emu.cards


async def test_permission_denied_body(http: aiohttp.ClientSession, emu: DingTalkEmulator) -> None:
    emu.revoke_permission(APP, "Card.Streaming.Write")
    await call(http, emu, "POST", "/v1.0/card/instances/createAndDeliver", create_body("c3"))
    status, body = await call(
        http,
        emu,
        "PUT",
        "/v1.0/card/streaming",
        {"outTrackId": "c3", "guid": "g", "key": "msgContent", "content": "x", "isFull": True},
    )
    assert status == 403
    assert body["code"] == "Forbidden.AccessDenied.AccessTokenPermissionDenied"
    assert body["accessdenieddetail"] == {"requiredScopes": ["Card.Streaming.Write"]}
    assert "add-api-permission" in body["message"] and body["requestid"]
    emu.grant_permission(APP, "Card.Streaming.Write")
    status, _ = await call(
        http,
        emu,
        "PUT",
        "/v1.0/card/streaming",
        {"outTrackId": "c3", "guid": "g", "key": "msgContent", "content": "x", "isFull": True},
    )
    assert status == 200


async def test_control_api_sets_faults_and_permissions(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    faults = f"{emu.base_url}/_emulator/faults"
    http.headers["X-Imrobots-Token"] = emu.control_token
    async with http.post(faults, json={"action": "withhold", "route": "sessionWebhook"}) as r:
        assert r.status == 200 and "sessionWebhook" in (await r.json())["withhold"]
    body = {"action": "permission", "client_id": APP, "scope": "X.Y", "granted": False}
    async with http.post(faults, json=body) as r:
        assert (await r.json())["denied_scopes"] == ["X.Y"]
    async with http.post(faults, json={"action": "withhold", "mode": "later"}) as r:
        assert r.status == 400


# --------------------------------------------------------------------------- sizes


async def test_standard_card_data_over_the_limit_is_refused(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    emu.card_data_limit = 1_000
    card = {"contents": [{"type": "markdown", "text": "字" * 400, "id": "m"}]}
    body = {
        "cardTemplateId": "StandardCard",
        "cardBizId": "big",
        "robotCode": APP,
        "cardData": json.dumps(card, ensure_ascii=False),
        "openConversationId": "cidG",
    }
    status, answer = await call(
        http, emu, "POST", "/v1.0/im/v1.0/robot/interactiveCards/send", body
    )
    assert status == 400 and answer["code"] == "param.error" and "1000 bytes" in answer["message"]
    assert "big" not in emu.cards


async def test_robot_message_param_over_15000_bytes_is_refused(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    param = json.dumps({"content": "字" * 5_000}, ensure_ascii=False)  # 15,014 bytes
    body = {
        "robotCode": APP,
        "msgKey": "sampleText",
        "msgParam": param,
        "openConversationId": "cidG",
    }
    status, answer = await call(http, emu, "POST", "/v1.0/robot/groupMessages/send", body)
    assert status == 400 and "15000" in answer["message"]
    assert emu.sent_messages == []


# --------------------------------------------------------------------------- files


async def test_files_users_send_are_downloaded_by_code(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    stored = emu.add_file(APP, b"%PDF-1.4 receipt", kind="file", name="receipt.pdf")
    path = "/v1.0/robot/messageFiles/download"
    status, answer = await call(
        http, emu, "POST", path, {"downloadCode": stored.download_code, "robotCode": APP}
    )
    assert status == 200
    url = answer["downloadUrl"]
    assert stored.download_code not in url  # a temporary URL, not the code
    async with http.get(url) as response:
        assert response.status == 200 and await response.read() == b"%PDF-1.4 receipt"
    assert stored.downloads == 1
    status, answer = await call(http, emu, "POST", path, {"downloadCode": "nope", "robotCode": APP})
    assert status == 400 and answer["code"] == "invalidParameter"
    async with http.get(f"{emu.base_url}/_emulator/files/unknown") as response:
        assert response.status == 403


async def test_control_api_stores_a_file(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    data = base64.b64encode(b"\x89PNG....").decode()
    body = {"client_id": APP, "kind": "picture", "data_base64": data, "name": "p.png"}
    http.headers["X-Imrobots-Token"] = emu.control_token
    async with http.post(f"{emu.base_url}/_emulator/files", json=body) as response:
        stored = await response.json()
    assert stored["size"] == 8 and "data" not in stored
    assert emu.files[stored["download_code"]].data == b"\x89PNG...."


async def test_media_upload_then_image_and_file_messages(
    http: aiohttp.ClientSession, emu: DingTalkEmulator
) -> None:
    access = await token(http, emu)

    async def upload(kind: str, name: str, data: bytes) -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("media", data, filename=name, content_type="application/octet-stream")
        url = f"{emu.base_url}/media/upload?access_token={access}&type={kind}"
        async with http.post(url, data=form) as response:
            assert response.status == 200
            result: dict[str, Any] = await response.json()
            return result

    image = await upload("image", "chart.png", b"\x89PNG-chart-bytes")
    assert image["errcode"] == 0 and image["media_id"].startswith("@")
    file = await upload("file", "report.pdf", b"%PDF-report-bytes")
    assert (await upload("sticker", "x", b"123456"))["errcode"] == 40004
    emu.media_limits["file"] = 10
    assert (await upload("file", "big.pdf", b"x" * 11))["errcode"] == 40006
    async with http.post(
        f"{emu.base_url}/media/upload?access_token=bad&type=file", data=b""
    ) as response:
        assert (await response.json())["errcode"] == 40014

    send = "/v1.0/robot/groupMessages/send"
    image_param = json.dumps({"photoURL": image["media_id"]})
    body = {"robotCode": APP, "msgKey": "sampleImageMsg", "msgParam": image_param}
    status, _ = await call(http, emu, "POST", send, {**body, "openConversationId": "cidG"})
    assert status == 200
    file_param = json.dumps(
        {"mediaId": file["media_id"], "fileName": "report.pdf", "fileType": "pdf"}
    )
    body = {"robotCode": APP, "msgKey": "sampleFile", "msgParam": file_param, "userIds": ["u1"]}
    status, _ = await call(http, emu, "POST", "/v1.0/robot/oToMessages/batchSend", body)
    assert status == 200
    sent_image, sent_file = emu.sent_messages
    assert sent_image.media is not None and sent_image.media.data == b"\x89PNG-chart-bytes"
    assert sent_file.media is not None and sent_file.media.name == "report.pdf"
    assert sent_file.conversation_id is not None  # the robot's 1:1 chat with u1
    unknown = json.dumps({"photoURL": "@not-uploaded"})
    body = {"robotCode": APP, "msgKey": "sampleImageMsg", "msgParam": unknown}
    status, answer = await call(http, emu, "POST", send, {**body, "openConversationId": "cidG"})
    assert status == 400 and answer["message"] == "mediaId is invalid"
