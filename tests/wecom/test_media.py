"""Media both ways: images and files the robot sends (the chunked upload over the long
connection, ``media/upload`` in app mode) and attachments users send (decrypted with
their per-message ``aeskey``, fetched only from WeCom's hosts)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import pytest

from imrobots import Message, Reply, Robot
from imrobots.emulation import EmulatorAdapter
from imrobots.platform import Attachment, FatalPlatformError, Platform, Upload
from imrobots.testing.conformance import PNG_PIXEL, open_rig
from imrobots_wecom.console import WeComConsoleAdapter
from imrobots_wecom.messages import MAX_FILE_BYTES, MAX_IMAGE_BYTES, MEDIA_CHUNK_BYTES
from imrobots_wecom.platform import WeComPlatform, _host_allowed

BIG = os.urandom(2 * MEDIA_CHUNK_BYTES + 1000)
"""A file of three upload chunks."""


def _platform(emulator: EmulatorAdapter) -> Platform:
    platform = emulator.create_platform()
    assert platform is not None
    return platform


def _routes(adapter: WeComConsoleAdapter) -> list[str]:
    return [str(c["route"]) for c in adapter.state()["calls"]]


class _FileRobot(Robot):
    """Sends :data:`BIG` as a file, after ``gate`` is set (when there is one)."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        super().__init__()
        self.gate = gate
        self.seen: list[Message] = []
        self.error: BaseException | None = None

    async def on_message(self, message: Message, reply: Reply) -> None:
        self.seen.append(message)
        if self.gate is not None:
            await self.gate.wait()
        try:
            await reply.file(BIG, name="report.bin")
        except BaseException as exc:
            self.error = exc
            raise


async def test_a_file_of_several_chunks_arrives_whole_as_a_reply() -> None:
    adapter = WeComConsoleAdapter()
    async with open_rig(lambda: adapter, _FileRobot(), make_platform=_platform) as rig:
        await rig.say("send the report", conversation_id="g-media", group=True)
        await rig.until("the file sent", lambda: adapter.emulator.sent_media or None)
        [sent] = adapter.emulator.sent_media
        assert (sent["conversation_id"], sent["msgtype"], sent["name"]) == (
            "g-media",
            "file",
            "report.bin",
        )
        assert hashlib.sha256(sent["data"]).digest() == hashlib.sha256(BIG).digest()
        media = [r for r in _routes(adapter) if r.startswith("aibot_")]
        assert media == [
            "aibot_upload_media_init",
            "aibot_upload_media_chunk",
            "aibot_upload_media_chunk",
            "aibot_upload_media_chunk",
            "aibot_upload_media_finish",
            "aibot_respond_msg",  # a reply on the message's req_id
        ]
        upload = adapter.uploads()[-1]
        assert (upload["kind"], upload["size"]) == ("file", len(BIG))


async def test_media_goes_proactively_once_the_req_id_cannot_answer() -> None:
    """Past the reply window (here: the req_id aged by hand), the file is sent with
    ``aibot_send_msg`` to the chat."""
    gate = asyncio.Event()
    robot = _FileRobot(gate)
    adapter = WeComConsoleAdapter()
    async with open_rig(lambda: adapter, robot, make_platform=_platform) as rig:
        await rig.say("report please", conversation_id="g-late", group=True)
        await rig.until("the message received", lambda: robot.seen or None)
        platform = rig.platform
        assert isinstance(platform, WeComPlatform)
        for req_id in platform._received:
            platform._received[req_id] -= 3600.0
        gate.set()
        await rig.until("the file sent", lambda: adapter.emulator.sent_media or None)
        assert adapter.emulator.sent_media[0]["conversation_id"] == "g-late"
        assert _routes(adapter)[-1] == "aibot_send_msg"
        assert "aibot_respond_msg" not in _routes(adapter)


async def test_sizes_over_the_caps_are_refused() -> None:
    """The core refuses an image over 10 MB before any call; the emulator refuses an
    upload over the file cap (40006), which the platform raises as fatal."""
    adapter = WeComConsoleAdapter()
    await adapter.start()
    platform = _platform(adapter)
    assert platform.capabilities.max_image_bytes == MAX_IMAGE_BYTES
    assert platform.capabilities.max_file_bytes == MAX_FILE_BYTES

    async def sink(event: object) -> None:
        return None

    try:
        await platform.start(sink)
        assert isinstance(platform, WeComPlatform)
        with pytest.raises(FatalPlatformError) as caught:
            await platform.upload_media(
                Upload(name="big.bin", data=bytes(MAX_FILE_BYTES + 1)), "file"
            )
        assert caught.value.code == "40006"
        with pytest.raises(FatalPlatformError):
            await platform.upload_media(Upload(name="tiny.png", data=b"png"), "image")
        assert "aibot_upload_media_chunk" not in _routes(adapter)
    finally:
        await platform.close()
        await adapter.stop()

    class TooBig(Robot):
        error: BaseException | None = None

        async def on_message(self, message: Message, reply: Reply) -> None:
            try:
                await reply.image(bytes(MAX_IMAGE_BYTES + 1), name="huge.png")
            except ValueError as exc:
                TooBig.error = exc
                await reply.text("too big")

    adapter = WeComConsoleAdapter()
    async with open_rig(lambda: adapter, TooBig(), make_platform=_platform) as rig:
        await rig.say("huge image", conversation_id="g-big")
        await rig.robot_message("g-big", "too big")
        assert TooBig.error is not None and "10485760 bytes" in str(TooBig.error)
        assert "aibot_upload_media_init" not in _routes(adapter)


async def test_app_mode_uploads_media_and_sends_it_by_media_id() -> None:
    class Sender(Robot):
        async def on_message(self, message: Message, reply: Reply) -> None:
            await reply.image(PNG_PIXEL, name="chart.png")
            await reply.file(BIG, name="report.bin")

    adapter = WeComConsoleAdapter(mode="app")
    async with open_rig(lambda: adapter, Sender(), make_platform=_platform) as rig:
        await rig.say("charts", conversation_id="direct-app", group=False, user_id="bob")
        await rig.until("both sent", lambda: len(adapter.emulator.sent_media) == 2 or None)
        image, file = adapter.emulator.sent_media
        assert (image["conversation_id"], image["msgtype"], image["data"]) == (
            "bob",
            "image",
            PNG_PIXEL,
        )
        assert (file["msgtype"], file["name"], file["data"] == BIG) == ("file", "report.bin", True)
        assert _routes(adapter).count("/cgi-bin/media/upload") == 2
        assert {u["conversation_id"] for u in adapter.uploads()} == {"direct-app"}


async def test_an_attachment_is_decrypted_with_its_aeskey() -> None:
    received: list[bytes] = []

    class Reader(Robot):
        async def on_message(self, message: Message, reply: Reply) -> None:
            for attachment in message.attachments:
                received.append(await attachment.read())
            await reply.text("read")

        on_empty_message = on_message  # a file alone has no text

    adapter = WeComConsoleAdapter()
    async with open_rig(lambda: adapter, Reader(), make_platform=_platform) as rig:
        await rig.say(
            "",
            conversation_id="d-read",
            group=False,
            attachments=[("file", "notes.bin", BIG)],
        )
        await rig.robot_message("d-read", "read")
        assert received == [BIG]
        # what the emulator serves is the ciphertext, not the file
        [stored] = adapter.emulator.files.values()
        assert stored != BIG and len(stored) % 32 == 0


@pytest.mark.parametrize(
    ("url", "extra", "allowed"),
    [
        ("https://wework.qpic.cn/wwpic/abc", (), True),
        ("https://ww-aibot-img-1258476243.cos.ap-guangzhou.myqcloud.com/x", (), True),
        ("http://wework.qpic.cn/wwpic/abc", (), False),  # WeCom's hosts over https only
        ("https://qq.com.evil.example/x", (), False),
        ("https://evil.example/x?h=qq.com", (), False),
        ("http://127.0.0.1:9/x", (), False),
        ("http://127.0.0.1:9/x", ("127.0.0.1:9",), True),
        ("http://127.0.0.1:10/x", ("127.0.0.1:9",), False),
        ("file:///etc/passwd", ("127.0.0.1:9",), False),
    ],
)
def test_downloads_come_only_from_wecom_or_the_configured_hosts(
    url: str, extra: tuple[str, ...], allowed: bool
) -> None:
    assert _host_allowed(url, extra) is allowed


async def test_a_download_from_elsewhere_is_refused_without_a_request() -> None:
    adapter = WeComConsoleAdapter()
    platform = _platform(adapter)
    assert isinstance(platform, WeComPlatform)
    attachment: Any = Attachment(kind="image", url="https://evil.example/i.png")
    try:
        with pytest.raises(FatalPlatformError, match="non-WeCom host"):
            await platform.download(attachment)
        assert platform._session is None  # nothing was fetched
    finally:
        await platform.close()
