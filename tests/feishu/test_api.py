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
from imrobots_feishu.api import FeishuApi
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
