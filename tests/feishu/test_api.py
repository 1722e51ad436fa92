"""The OpenAPI client sends lark-oapi's typed requests over one kept-alive HTTP client.

lark-oapi's own async transport opens a new ``httpx.AsyncClient`` per request (a new
connection, and a TLS context built on the event loop every time);
:class:`imrobots_feishu.api.FeishuApi` sends the same requests over one client per app
and reads the answers into the typed responses, JSON, multipart uploads and binary
downloads alike. Against the emulator on 127.0.0.1.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from unittest import mock

import httpx
import pytest
import pytest_asyncio

pytest.importorskip("lark_oapi")

from lark_oapi.api.im.v1 import (  # type: ignore[import-untyped]
    CreateImageRequest,
    CreateImageRequestBody,
    CreateMessageRequest,
    CreateMessageRequestBody,
    GetMessageResourceRequest,
)

from imrobots.platform import FatalPlatformError, Secret
from imrobots_feishu.api import AnswerTooLarge, FeishuApi
from imrobots_feishu.emulator import FeishuEmulator

APP = "cli_apiclient01"
SECRET = "api-client-secret"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[FeishuEmulator]:
    emulator = FeishuEmulator()
    emulator.add_app(APP, SECRET)
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


@pytest_asyncio.fixture
async def api(emu: FeishuEmulator) -> AsyncIterator[FeishuApi]:
    client = FeishuApi(app_id=APP, app_secret=Secret(SECRET), domain=emu.base_url)
    try:
        yield client
    finally:
        await client.close()


def _send(chat: str, text: str) -> Any:
    body = (
        CreateMessageRequestBody.builder()
        .receive_id(chat)
        .msg_type("text")
        .content(json.dumps({"text": text}))
        .build()
    )
    return CreateMessageRequest.builder().receive_id_type("chat_id").request_body(body).build()


async def test_calls_share_one_client_and_read_typed_answers(
    emu: FeishuEmulator, api: FeishuApi
) -> None:
    made = []
    original = httpx.AsyncClient.__init__

    def spy(self: httpx.AsyncClient, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        original(self, *args, **kwargs)

    with mock.patch.object(httpx.AsyncClient, "__init__", spy):
        assert await api.bot_open_id() == f"ou_bot_{APP}"  # an untyped call
        sent = []
        for i in range(10):
            response = await api.call(
                "im.message.create",
                api.client.im.v1.message.acreate,
                _send(f"oc_api{i}", f"hello {i}"),
            )
            sent.append(response.data.message_id)
        # a multipart upload, then a binary download of what a user sent
        upload = (
            CreateImageRequest.builder()
            .request_body(
                CreateImageRequestBody.builder().image_type("message").image(api.file(PNG)).build()
            )
            .build()
        )
        image = await api.call("im.image.create", api.client.im.v1.image.acreate, upload)
        assert image.data.image_key in emu.resources
        resource = emu.add_resource("file", b"the user's bytes", name="notes.txt")
        record, _ = emu.push_message(
            APP,
            chat_id="oc_api",
            chat_type="group",
            sender="ou_user",
            message_type="file",
            content={"file_key": resource.key, "file_name": "notes.txt"},
        )
        resource.message_id = record.message_id
        download = (
            GetMessageResourceRequest.builder()
            .message_id(record.message_id)
            .file_key(resource.key)
            .type("file")
            .build()
        )
        got = await api.call(
            "im.message.resource", api.client.im.v1.message_resource.aget, download
        )
        assert got.file.read() == b"the user's bytes"
    assert len(made) == 1, "every call after the first reuses the client"
    assert api.token_fetches == 1
    assert [emu.messages[m].content["text"] for m in sent] == [f"hello {i}" for i in range(10)]
    texts = [m.content.get("text") for m in emu.messages.values() if m.from_app]
    assert texts == [f"hello {i}" for i in range(10)]


async def test_an_error_answer_is_classified_and_close_lets_the_next_call_reconnect(
    api: FeishuApi,
) -> None:
    with pytest.raises(FatalPlatformError) as caught:
        await api.call(
            "im.message.create", api.client.im.v1.message.acreate, _send("", "no receiver")
        )
    assert SECRET not in str(caught.value)
    await api.close()
    await api.close()  # idempotent
    response = await api.call(
        "im.message.create", api.client.im.v1.message.acreate, _send("oc_api", "again")
    )
    assert response.code == 0 and response.data.message_id


def _resource_request(message_id: str, key: str) -> Any:
    return (
        GetMessageResourceRequest.builder()
        .message_id(message_id)
        .file_key(key)
        .type("file")
        .build()
    )


async def test_a_download_is_read_no_further_than_max_bytes(
    emu: FeishuEmulator, api: FeishuApi
) -> None:
    resource = emu.add_resource("file", b"x" * 4096, name="big.bin")
    record, _ = emu.push_message(
        APP,
        chat_id="oc_big",
        chat_type="group",
        sender="ou_user",
        message_type="file",
        content={"file_key": resource.key, "file_name": "big.bin"},
    )
    resource.message_id = record.message_id
    request = _resource_request(record.message_id, resource.key)
    where, method = "im.message.resource", api.client.im.v1.message_resource.aget
    # announced longer (Content-Length): refused before reading the body
    with pytest.raises(AnswerTooLarge) as refused:
        await api.call(where, method, request, max_bytes=1024)
    assert (refused.value.size, refused.value.max_bytes) == (4096, 1024)
    # exactly the limit, and no limit: the whole body
    got = await api.call(where, method, request, max_bytes=4096)
    assert got.file.read() == b"x" * 4096
    assert (await api.call(where, method, request)).file.read() == b"x" * 4096


async def test_a_download_without_a_length_stops_once_past_max_bytes() -> None:
    from aiohttp import web

    sent: list[int] = []

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.enable_chunked_encoding()  # no Content-Length: only reading tells
        await response.prepare(request)
        for _ in range(64):  # 4 MiB on offer
            await response.write(b"y" * 65536)
            sent.append(65536)
        return response

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"code": 0, "tenant_access_token": "t-x", "expire": 7200})

    server = web.Application()
    server.router.add_post("/open-apis/auth/v3/tenant_access_token/internal", token)
    server.router.add_get("/open-apis/im/v1/messages/{id}/resources/{key}", endless)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = FeishuApi(app_id=APP, app_secret=Secret(SECRET), domain=f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(AnswerTooLarge) as refused:
            await client.call(
                "im.message.resource",
                client.client.im.v1.message_resource.aget,
                _resource_request("om_x", "file_x"),
                max_bytes=100_000,
            )
        assert 100_000 < refused.value.size <= 100_000 + 65536 * 2  # stopped at once
    finally:
        await client.close()
        await runner.cleanup()
