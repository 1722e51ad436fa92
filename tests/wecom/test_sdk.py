"""The official long-connection SDK (``wecom-aibot-sdk`` from PyPI), unchanged, against
the emulator: it subscribes, receives a message and sends a stream reply."""

from __future__ import annotations

import asyncio
import os

import pytest

from imrobots_wecom.emulator import WeComEmulator

try:
    import wecom_aibot_sdk as sdk
except ImportError:
    if os.environ.get("CI"):
        raise  # CI installs the dev extra, which brings the SDK: never skip there
    pytest.skip("needs the SDK: pip install wecom-aibot-sdk", allow_module_level=True)


async def test_sdk_subscribes_receives_and_streams() -> None:
    emulator = WeComEmulator()
    emulator.add_bot("sdk-bot", "sdk-secret")
    await emulator.start()
    client = sdk.WSClient("sdk-bot", "sdk-secret", ws_url=emulator.ws_url)
    authenticated = asyncio.Event()
    replied = asyncio.Event()
    received: list[str] = []

    async def on_text(frame: dict[str, object]) -> None:
        body = frame["body"]
        assert isinstance(body, dict)
        received.append(body["text"]["content"])
        await client.reply_stream(frame, "sdk-stream", "Hello", False)
        await client.reply_stream(frame, "sdk-stream", "Hello from the SDK", True)
        replied.set()

    client.on("authenticated", authenticated.set)
    client.on("message.text", on_text)
    try:
        await client.connect()
        async with asyncio.timeout(5):
            await authenticated.wait()
        await emulator.push_message(
            "sdk-bot", user_id="alice", msgtype="text", content={"content": "hi robot"}
        )
        async with asyncio.timeout(5):
            await replied.wait()
    finally:
        await client.disconnect()
        await emulator.stop()
    assert received == ["hi robot"]
    card = emulator.cards["sdk-stream"]
    assert (card.content, card.finished, card.updates) == ("Hello from the SDK", True, 1)


async def test_sdk_is_told_to_stop_when_taken_over() -> None:
    emulator = WeComEmulator()
    emulator.add_bot("sdk-bot", "sdk-secret")
    await emulator.start()
    first = sdk.WSClient("sdk-bot", "sdk-secret", ws_url=emulator.ws_url)
    second = sdk.WSClient("sdk-bot", "sdk-secret", ws_url=emulator.ws_url)
    told = asyncio.Event()
    up = asyncio.Event()
    first.on("event.disconnected_event", lambda frame: told.set())
    first.on("authenticated", up.set)
    try:
        await first.connect()
        async with asyncio.timeout(5):
            await up.wait()
        await second.connect()
        async with asyncio.timeout(5):
            await told.wait()
        assert emulator.connected("sdk-bot")
    finally:
        await second.disconnect()
        await emulator.stop()


async def test_sdk_uploads_media_in_chunks_and_replies_with_it() -> None:
    """The SDK's chunked upload (its chunks sent concurrently) and media reply."""
    data = bytes(range(256)) * 2600  # 665,600 bytes: two chunks
    emulator = WeComEmulator()
    emulator.add_bot("sdk-bot", "sdk-secret")
    await emulator.start()
    client = sdk.WSClient("sdk-bot", "sdk-secret", ws_url=emulator.ws_url)
    authenticated = asyncio.Event()
    replied = asyncio.Event()

    async def on_text(frame: dict[str, object]) -> None:
        result = await client.upload_media(data, type="file", filename="report.bin")
        await client.reply_media(frame, "file", result["media_id"])
        replied.set()

    client.on("authenticated", authenticated.set)
    client.on("message.text", on_text)
    try:
        await client.connect()
        async with asyncio.timeout(5):
            await authenticated.wait()
        await emulator.push_message(
            "sdk-bot", user_id="alice", msgtype="text", content={"content": "the report?"}
        )
        async with asyncio.timeout(10):
            await replied.wait()
    finally:
        await client.disconnect()
        await emulator.stop()
    [sent] = emulator.sent_media
    assert (sent["conversation_id"], sent["name"], sent["data"] == data) == (
        "alice",
        "report.bin",
        True,
    )
    chunks = [c for c in emulator.calls if c["route"] == "aibot_upload_media_chunk"]
    assert len(chunks) == 2 and all(c["status"] == 200 for c in chunks)


async def test_sdk_answers_enter_chat_with_a_welcome() -> None:
    emulator = WeComEmulator()
    emulator.add_bot("sdk-bot", "sdk-secret")
    await emulator.start()
    client = sdk.WSClient("sdk-bot", "sdk-secret", ws_url=emulator.ws_url)
    authenticated = asyncio.Event()
    welcomed = asyncio.Event()

    async def on_enter(frame: dict[str, object]) -> None:
        await client.reply_welcome(frame, {"msgtype": "text", "text": {"content": "Hi there"}})
        welcomed.set()

    client.on("authenticated", authenticated.set)
    client.on("event.enter_chat", on_enter)
    try:
        await client.connect()
        async with asyncio.timeout(5):
            await authenticated.wait()
        await emulator.push_event("sdk-bot", "enter_chat", user_id="alice")
        async with asyncio.timeout(5):
            await welcomed.wait()
    finally:
        await client.disconnect()
        await emulator.stop()
    assert [(m["conversation_id"], m["text"]) for m in emulator.messages] == [("alice", "Hi there")]
