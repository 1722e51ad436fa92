"""lark-oapi's own clients, unchanged, against the Feishu emulator.

``ws.Client`` runs in a subprocess (``_sdk_runner.py``: it creates its loop at import
and blocks forever); the API client's synchronous calls (which fetch tokens with
blocking ``requests``) run in a worker thread, while the emulator runs in the test's
loop. Every address is the emulator's 127.0.0.1 origin.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import pytest
import pytest_asyncio

from imrobots_feishu.emulator import ApiError, FeishuEmulator

lark = pytest.importorskip("lark_oapi")

RUNNER = Path(__file__).with_name("_sdk_runner.py")
SECRET = "sdk-secret-value"
_apps = iter(range(1, 10_000))


def new_app_id() -> str:
    # lark-oapi caches tenant tokens per app id for the whole process: one id per test
    return f"cli_sdk{next(_apps):04d}"


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[FeishuEmulator]:
    emulator = FeishuEmulator(response_timeout=1.0, redelivery=(0.2, 0.2))
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


class SdkProcess:
    def __init__(self, proc: asyncio.subprocess.Process, log: IO[bytes]) -> None:
        self.proc = proc
        self.log = log

    async def line(self, timeout: float = 10.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not raw:
                raise AssertionError(f"the SDK exited; its log: {self.output()}")
            try:
                found = json.loads(raw)
            except ValueError:
                continue
            if isinstance(found, dict):
                return found

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode("utf-8", errors="replace")[-4000:]


async def start_sdk(emu: FeishuEmulator, app_id: str, log: IO[bytes]) -> SdkProcess:
    emu.add_app(app_id, SECRET)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(RUNNER),
        emu.base_url,
        app_id,
        SECRET,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
    )
    sdk = SdkProcess(proc, log)
    try:
        await emu.wait_for(lambda: bool(emu.live(app_id)), timeout=20.0)
    except TimeoutError:
        proc.kill()
        raise AssertionError(f"ws.Client did not connect; its log: {sdk.output()}") from None
    return sdk


async def stop_sdk(sdk: SdkProcess) -> None:
    if sdk.proc.returncode is None:
        sdk.proc.kill()
    await sdk.proc.wait()


async def test_ws_client_receives_events_and_answers(emu: FeishuEmulator) -> None:
    app_id = new_app_id()
    with tempfile.TemporaryFile() as log:
        sdk = await start_sdk(emu, app_id, log)
        try:
            conn = emu.live(app_id)[0]
            # the SDK pings at once after connecting; the pong carries the ClientConfig
            await emu.wait_for(lambda: conn.pings >= 1)

            record, delivery = emu.push_message(
                app_id,
                chat_id="oc_sdk",
                chat_type="p2p",
                sender="ou_user",
                message_type="text",
                content={"text": "hello sdk"},
            )
            seen = await sdk.line()
            assert seen == {
                "event": "message",
                "message_id": record.message_id,
                "text": "hello sdk",
            }
            assert delivery.done is not None
            answer = await asyncio.wait_for(delivery.done, 5)
            assert answer["code"] == 200
            assert delivery.attempts == 1

            emu.fragment_size = 40  # a message in many fragments is reassembled by the SDK
            record, _ = emu.push_message(
                app_id,
                chat_id="oc_sdk",
                chat_type="p2p",
                sender="ou_user",
                message_type="text",
                content={"text": "fragmented " * 5},
            )
            seen = await sdk.line()
            assert seen["text"] == "fragmented " * 5
            emu.fragment_size = None

            # a card action's answer comes back base64 in the response frame
            answer = await emu.press_button(
                app_id, message_id=record.message_id, value={"k": "v"}, operator="ou_user"
            )
            assert (await sdk.line()) == {"event": "card", "value": {"k": "v"}}
            assert answer["code"] == 200
            assert answer["data"]["toast"]["content"] == "pressed"
        finally:
            await stop_sdk(sdk)


async def test_failed_handler_is_redelivered(emu: FeishuEmulator) -> None:
    app_id = new_app_id()
    with tempfile.TemporaryFile() as log:
        sdk = await start_sdk(emu, app_id, log)
        try:
            record, delivery = emu.push_message(
                app_id,
                chat_id="oc_sdk",
                chat_type="group",
                sender="ou_user",
                message_type="text",
                content={"text": "raise"},
            )
            for _ in range(3):  # the first delivery and two redeliveries, all failing
                assert (await sdk.line())["message_id"] == record.message_id
            await emu.wait_for(lambda: delivery.attempts == 3)
        finally:
            await stop_sdk(sdk)


async def test_connection_cap_refuses_the_51st(emu: FeishuEmulator) -> None:
    import websockets

    app_id = new_app_id()
    emu.add_app(app_id, SECRET)
    emu.max_connections = 1
    async with (
        aiohttp_session() as session,
        session.post(
            f"{emu.base_url}/callback/ws/endpoint", json={"AppID": app_id, "AppSecret": SECRET}
        ) as response,
    ):
        url = (await response.json())["data"]["URL"]
    async with websockets.connect(url):
        await emu.wait_for(lambda: len(emu.live(app_id)) == 1)
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url)
        headers = refused.value.response.headers
        assert headers["handshake-status"] == "514"
        assert headers["handshake-autherrcode"] == "1000040350"


def aiohttp_session() -> Any:
    import aiohttp

    return aiohttp.ClientSession()


def api_client(emu: FeishuEmulator, app_id: str) -> Any:
    emu.add_app(app_id, SECRET)
    return lark.Client.builder().app_id(app_id).app_secret(SECRET).domain(emu.base_url).build()


async def test_api_client_sends_replies_and_patches(emu: FeishuEmulator) -> None:
    from lark_oapi.api.im.v1 import (
        CreateMessageRequest,
        CreateMessageRequestBody,
        PatchMessageRequest,
        PatchMessageRequestBody,
        ReplyMessageRequest,
        ReplyMessageRequestBody,
    )

    app_id = new_app_id()
    client = api_client(emu, app_id)
    user, _ = emu.push_message(
        app_id,
        chat_id="oc_api",
        chat_type="group",
        sender="ou_user",
        message_type="text",
        content={"text": "hi"},
    )
    card = {"schema": "2.0", "config": {"update_multi": True}, "body": {"elements": []}}

    def calls() -> tuple[Any, Any, Any, Any]:
        sent = client.im.v1.message.create(
            CreateMessageRequest.builder()
            .receive_id_type("chat_id")
            .request_body(
                CreateMessageRequestBody.builder()
                .receive_id("oc_api")
                .msg_type("text")
                .content(json.dumps({"text": "proactive"}))
                .uuid("same-uuid")
                .build()
            )
            .build()
        )
        again = client.im.v1.message.create(
            CreateMessageRequest.builder()
            .receive_id_type("chat_id")
            .request_body(
                CreateMessageRequestBody.builder()
                .receive_id("oc_api")
                .msg_type("text")
                .content(json.dumps({"text": "proactive"}))
                .uuid("same-uuid")
                .build()
            )
            .build()
        )
        replied = client.im.v1.message.reply(
            ReplyMessageRequest.builder()
            .message_id(user.message_id)
            .request_body(
                ReplyMessageRequestBody.builder()
                .msg_type("interactive")
                .content(json.dumps(card))
                .build()
            )
            .build()
        )
        patched = client.im.v1.message.patch(
            PatchMessageRequest.builder()
            .message_id(replied.data.message_id)
            .request_body(
                PatchMessageRequestBody.builder()
                .content(json.dumps({**card, "header": {"title": {"content": "new"}}}))
                .build()
            )
            .build()
        )
        return sent, again, replied, patched

    sent, again, replied, patched = await asyncio.to_thread(calls)
    assert sent.success(), sent.msg
    assert again.data.message_id == sent.data.message_id  # uuid dedupe
    assert replied.success() and replied.data.parent_id == user.message_id
    assert patched.success(), patched.msg
    record = emu.messages[replied.data.message_id]
    assert record.content["header"]["title"]["content"] == "new"


async def test_api_client_drives_cardkit(emu: FeishuEmulator) -> None:
    from lark_oapi.api.cardkit.v1 import (
        ContentCardElementRequest,
        ContentCardElementRequestBody,
        CreateCardRequest,
        CreateCardRequestBody,
        SettingsCardRequest,
        SettingsCardRequestBody,
    )
    from lark_oapi.api.im.v1 import CreateMessageRequest, CreateMessageRequestBody

    app_id = new_app_id()
    client = api_client(emu, app_id)
    card = {
        "schema": "2.0",
        "config": {"streaming_mode": True},
        "body": {"elements": [{"tag": "markdown", "element_id": "content", "content": "..."}]},
    }

    def content(card_id: str, text: str, sequence: int) -> Any:
        return client.cardkit.v1.card_element.content(
            ContentCardElementRequest.builder()
            .card_id(card_id)
            .element_id("content")
            .request_body(
                ContentCardElementRequestBody.builder()
                .content(text)
                .sequence(sequence)
                .uuid(f"u{sequence}-{text}")
                .build()
            )
            .build()
        )

    def calls() -> dict[str, Any]:
        created = client.cardkit.v1.card.create(
            CreateCardRequest.builder()
            .request_body(
                CreateCardRequestBody.builder().type("card_json").data(json.dumps(card)).build()
            )
            .build()
        )
        card_id = created.data.card_id
        sent = client.im.v1.message.create(
            CreateMessageRequest.builder()
            .receive_id_type("open_id")
            .request_body(
                CreateMessageRequestBody.builder()
                .receive_id("ou_user")
                .msg_type("interactive")
                .content(json.dumps({"type": "card", "data": {"card_id": card_id}}))
                .build()
            )
            .build()
        )
        first = content(card_id, "Hello", 1)
        stale = content(card_id, "Hello wor", 1)
        closed = client.cardkit.v1.card.settings(
            SettingsCardRequest.builder()
            .card_id(card_id)
            .request_body(
                SettingsCardRequestBody.builder()
                .settings(json.dumps({"config": {"streaming_mode": False}}))
                .sequence(2)
                .uuid("close")
                .build()
            )
            .build()
        )
        after = content(card_id, "Hello world", 3)
        return {
            "card_id": card_id,
            "sent": sent,
            "first": first,
            "stale": stale,
            "closed": closed,
            "after": after,
        }

    out = await asyncio.to_thread(calls)
    assert out["sent"].success(), out["sent"].msg
    assert out["first"].success(), out["first"].msg
    assert out["stale"].code == 300317  # sequence not increasing
    assert out["closed"].success()
    assert out["after"].code == 300309  # streaming mode closed
    message = emu.messages[out["sent"].data.message_id]
    assert message.receivers == ["ou_user"]
    view = emu.message_view(message)
    assert view["card"]["blocks"] == ({"type": "markdown", "text": "Hello"},)


async def test_streaming_mode_times_out(emu: FeishuEmulator) -> None:
    emu.stream_lifetime = 0.5
    app = emu.add_app(new_app_id(), SECRET)
    card = {
        "schema": "2.0",
        "config": {"streaming_mode": True},
        "body": {"elements": [{"tag": "markdown", "element_id": "c", "content": "x"}]},
    }
    entity = emu.api_card_create(app, {"type": "card_json", "data": json.dumps(card)})
    emu.api_element_content(app, entity.card_id, "c", {"content": "a", "sequence": 1})
    entity.streaming_since = (entity.streaming_since or 0) - 1.0  # as if 1 s had passed
    with pytest.raises(ApiError) as timed_out:
        emu.api_element_content(app, entity.card_id, "c", {"content": "ab", "sequence": 2})
    assert timed_out.value.code == 200850


async def test_rate_limit_answers_429_with_reset(emu: FeishuEmulator) -> None:
    from lark_oapi.api.im.v1 import CreateMessageRequest, CreateMessageRequestBody

    app_id = new_app_id()
    client = api_client(emu, app_id)
    emu.api_rate = 3
    emu.chat_rate = 100

    def calls() -> list[Any]:
        return [
            client.im.v1.message.create(
                CreateMessageRequest.builder()
                .receive_id_type("chat_id")
                .request_body(
                    CreateMessageRequestBody.builder()
                    .receive_id("oc_rl")
                    .msg_type("text")
                    .content(json.dumps({"text": f"n{i}"}))
                    .build()
                )
                .build()
            )
            for i in range(4)
        ]

    answers = await asyncio.to_thread(calls)
    assert [a.code for a in answers[:3]] == [0, 0, 0]
    assert answers[3].code == 99991400
    assert answers[3].raw.status_code == 429
    assert int(answers[3].raw.headers["x-ogw-ratelimit-reset"]) >= 1
