"""App mode: images, voice, video and files a member sends are read lazily through
``Attachment.read()``/``save()``: ``media/get`` with the access token, on the configured
API endpoint only (never the callback's ``PicUrl``)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from imrobots import Message, Reply, Robot
from imrobots.emulation import EmulatorAdapter
from imrobots.platform import FatalPlatformError, Platform
from imrobots.testing.conformance import PNG_PIXEL, open_rig
from imrobots_wecom.console import WeComConsoleAdapter


class _Keeper(Robot):
    """Keeps every message; answers with what it read."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[Message] = []

    async def on_empty_message(self, message: Message, reply: Reply) -> None:
        await self.on_message(message, reply)

    async def on_message(self, message: Message, reply: Reply) -> None:
        self.messages.append(message)
        parts = []
        for attachment in message.attachments:
            data = await attachment.read()
            parts.append(f"{attachment.kind} {len(data)} {hashlib.sha256(data).hexdigest()[:12]}")
        await reply.text("read " + "; ".join(parts))


def _platform(**overrides: Any) -> Any:
    def make(emulator: EmulatorAdapter) -> Platform:
        assert isinstance(emulator, WeComConsoleAdapter)
        platform = emulator.create_platform(**overrides)
        assert platform is not None
        return platform

    return make


def _digest(kind: str, data: bytes) -> str:
    return f"{kind} {len(data)} {hashlib.sha256(data).hexdigest()[:12]}"


@pytest.mark.parametrize(
    ("kind", "name", "data"),
    [
        ("image", "pixel.png", PNG_PIXEL),
        ("audio", "note.amr", b"#!AMR\n" + bytes(range(200))),
        ("video", "clip.mp4", b"\x00\x00\x00\x18ftypmp42" + b"v" * 3000),
        ("file", "report.pdf", b"%PDF-1.4 " + "报告".encode() * 500),
    ],
    ids=["image", "voice", "video", "file"],
)
async def test_inbound_media_is_read_through_media_get(kind: str, name: str, data: bytes) -> None:
    robot = _Keeper()
    adapter = WeComConsoleAdapter(mode="app")
    async with open_rig(lambda: adapter, robot) as rig:
        await rig.say("", conversation_id="d-media", group=False, attachments=[(kind, name, data)])
        await rig.robot_message("d-media", "read " + _digest(kind, data))
        [message] = robot.messages
        [attachment] = message.attachments
        assert attachment.kind == kind and attachment.extra["media_id"]
        gets = [c for c in adapter.state()["calls"] if c["route"] == "/cgi-bin/media/get"]
        assert [c["status"] for c in gets] == [200]
        assert adapter.emulator.pic_fetches == 0  # never the callback's PicUrl


async def test_save_writes_the_file_and_a_revoked_token_is_renewed(tmp_path: Path) -> None:
    robot = _Keeper()
    adapter = WeComConsoleAdapter(mode="app")
    async with open_rig(lambda: adapter, robot) as rig:
        data = b"%PDF-1.4 " + b"x" * 5000
        await rig.say(
            "", conversation_id="d-save", group=False, attachments=[("file", "a.pdf", data)]
        )
        await rig.robot_message("d-save", "read")
        [attachment] = robot.messages[0].attachments
        adapter.app.tokens.clear()  # WeCom revoked the token early (40014 on the next call)
        saved = await attachment.save(tmp_path / "a.pdf")
        assert saved.read_bytes() == data
        gets = [c for c in adapter.state()["calls"] if c["route"] == "/cgi-bin/media/get"]
        assert [c["error"] for c in gets] == [None, "40014", None]


async def test_unknown_media_and_oversized_media_are_refused() -> None:
    robot = _Keeper()
    adapter = WeComConsoleAdapter(mode="app")
    make = _platform(max_download_bytes=1000)
    async with open_rig(lambda: adapter, robot, make_platform=make) as rig:
        await rig.say("hi", conversation_id="d-refused", group=False)
        await rig.robot_message("d-refused", "read")
        big = b"%PDF" + b"y" * 2000
        media_id = adapter.emulator.store_media(big, "file", "big.pdf")
        platform = rig.platform
        from imrobots.models import Attachment

        with pytest.raises(FatalPlatformError, match="larger than 1000 bytes"):
            await platform.download(
                Attachment(kind="file", id=media_id, extra={"media_id": media_id})
            )
        with pytest.raises(FatalPlatformError, match="40007"):
            await platform.download(Attachment(kind="file", id="nope", extra={"media_id": "nope"}))
