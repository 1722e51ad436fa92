"""Attachments both ways, quoted replies, proactive sends and AI-card finalization on the
emulator, through a real ``RobotRuntime``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from imrobots import Card, Markdown, Message, Reply, Robot, Target, final_card
from imrobots.examples import SupportRobot
from imrobots.platform import Attachment, CardStatus, Upload
from imrobots.store import MemoryStore
from imrobots_dingtalk.emulator import CardRecord, DingTalkEmulator
from imrobots_dingtalk.platform import DingTalkPlatform
from imrobots_dingtalk.streaming import DingTalkAICardStream

from .support import APP, MODES, QUESTION, CardMode, cards_for, final, make_settings, running


class Collector(Robot):
    """Keeps every message and the content of its attachments."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[Message] = []
        self.contents: list[bytes] = []
        self.errors: list[BaseException] = []

    async def _collect(self, message: Message) -> None:
        self.messages.append(message)
        for attachment in message.attachments:
            try:
                self.contents.append(await attachment.read())
            except Exception as exc:
                self.errors.append(exc)

    async def on_message(self, message: Message, reply: Reply) -> None:
        await self._collect(message)

    async def on_empty_message(self, message: Message, reply: Reply) -> None:
        await self._collect(message)


async def wait_messages(emu: DingTalkEmulator, robot: Collector, count: int) -> None:
    await emu.wait_for(lambda: len(robot.messages) >= count, 10, what=f"{count} messages")


# --------------------------------------------------------------------------- inbound


async def test_attachments_users_send_are_downloaded(emu: DingTalkEmulator) -> None:
    robot = Collector()
    async with running(emu, robot=robot) as runtime:
        direct = {"conversation_type": "direct", "sender_staff_id": "staff5"}
        await emu.push_attachment(APP, "picture", b"\x89PNG-picture", **direct)
        await emu.push_attachment(APP, "file", b"%PDF-invoice", name="invoice.pdf", **direct)
        await emu.push_attachment(
            APP, "audio", b"#!AMR-voice", recognition="我要退款", duration_ms=4000, **direct
        )
        await emu.push_attachment(APP, "video", b"mp4-video", **direct)
        await wait_messages(emu, robot, 4)
        await runtime.wait_idle(10)
    assert robot.errors == []
    picture, file, audio, video = robot.messages
    assert [m.kind.value for m in robot.messages] == ["image", "file", "audio", "video"]
    assert [a.kind for m in robot.messages for a in m.attachments] == [
        "image",
        "file",
        "audio",
        "video",
    ]
    assert file.attachments[0].name == "invoice.pdf"
    assert file.attachments[0].mime_type == "application/pdf"
    assert audio.text == "我要退款" and audio.attachments[0].text == "我要退款"
    assert audio.attachments[0].duration == 4.0
    assert video.attachments[0].mime_type == "video/mp4"
    assert robot.contents == [b"\x89PNG-picture", b"%PDF-invoice", b"#!AMR-voice", b"mp4-video"]
    assert all(f.downloads == 1 for f in emu.files.values())
    assert "download_code" not in repr(picture.attachments[0])


async def test_rich_text_pictures_are_attachments(emu: DingTalkEmulator) -> None:
    robot = Collector()
    stored = emu.add_file(APP, b"receipt-bytes", kind="picture")
    rich = {
        "richText": [
            {"text": "看看"},
            {"type": "picture", "downloadCode": stored.download_code},
            {"text": "这张收据"},
        ]
    }
    async with running(emu, robot=robot) as runtime:
        await emu.push_message(APP, msgtype="richText", content=rich)
        await wait_messages(emu, robot, 1)
        await runtime.wait_idle(10)
    (message,) = robot.messages
    assert message.text == "看看这张收据"
    assert robot.contents == [b"receipt-bytes"]


async def test_downloads_only_from_allowed_hosts(emu: DingTalkEmulator) -> None:
    robot = Collector()
    async with running(emu, robot=robot, download_hosts=()) as runtime:
        await emu.push_attachment(APP, "picture", b"secret", conversation_type="direct")
        await wait_messages(emu, robot, 1)
        await runtime.wait_idle(10)
    (error,) = robot.errors
    assert "refused to download from host '127.0.0.1'" in str(error)
    assert "download_hosts" in str(error)
    assert all(f.downloads == 0 for f in emu.files.values())


async def test_a_quoted_reply_becomes_the_messages_quote(emu: DingTalkEmulator) -> None:
    robot = Collector()
    picture = emu.add_file(APP, b"quoted-picture", kind="picture")
    async with running(emu, robot=robot) as runtime:
        await emu.push_message(
            APP,
            text="这个怎么退？",
            replied_msg={
                "msgType": "text",
                "msgId": "msgQUOTED==",
                "senderId": "$:LWCP_v1:$abc",
                "content": {"text": "订单 1234 已发货"},
            },
        )
        await emu.push_message(
            APP,
            text="and this?",
            replied_msg={
                "msgType": "picture",
                "msgId": "msgPIC==",
                "content": {"downloadCode": picture.download_code},
            },
        )
        await wait_messages(emu, robot, 2)
        await runtime.wait_idle(10)
    text, image = robot.messages
    assert text.text == "这个怎么退？"
    assert text.quote is not None and text.quote.text == "订单 1234 已发货"
    assert text.quote.id == "msgQUOTED==" and text.quote.sender is not None
    assert image.quote is not None and image.quote.text == ""
    (quoted,) = image.quote.attachments
    assert quoted.kind == "image" and await quoted.read() == b"quoted-picture"


async def test_the_demo_agent_answers_a_quoted_question_in_its_context(
    emu: DingTalkEmulator,
) -> None:
    """Issue 9, case 1: "What about this?" quoting "How do I get a refund?" is answered
    with the refund section (the question alone gets the demo agent's fallback)."""
    async with running(emu, "ai") as runtime:
        pushed = await emu.push_message(
            APP,
            text="What about this?",
            replied_msg={"msgType": "text", "msgId": "msgQ1==", "content": {"text": QUESTION}},
        )
        await emu.wait_for(
            lambda: any(final(c) for c in cards_for(emu, pushed)), 10, what="the final card"
        )
        await runtime.wait_idle(10)
    (card,) = cards_for(emu, pushed)
    assert "within 30 days" in (card.view["markdown"] or "")


# --------------------------------------------------------------------------- outbound


class Sender(Robot):
    """Answers with an image and a file."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[BaseException] = []

    async def on_message(self, message: Message, reply: Reply) -> None:
        try:
            await reply.image(b"\x89PNG-chart", name="chart.png")
            await reply.file(b"%PDF-report", name="report.pdf")
        except Exception as exc:
            self.errors.append(exc)


@pytest.mark.parametrize("group", [True, False])
async def test_images_and_files_are_uploaded_and_sent(emu: DingTalkEmulator, group: bool) -> None:
    robot = Sender()
    async with running(emu, robot=robot) as runtime:
        pushed = await emu.push_message(
            APP,
            text="send me the report",
            conversation_type="group" if group else "direct",
            sender_staff_id="staff8",
        )
        await emu.wait_for(lambda: len(emu.sent_messages) == 2, 10, what="image and file")
        await runtime.wait_idle(10)
    assert robot.errors == []
    image, file = emu.sent_messages
    route = "robot.groupMessages.send" if group else "robot.oToMessages.batchSend"
    assert image.route == file.route == route
    assert image.msg_key == "sampleImageMsg" and file.msg_key == "sampleFile"
    assert image.media is not None and image.media.data == b"\x89PNG-chart"
    assert image.media.type == "image" and image.msg_param == {"photoURL": image.media.media_id}
    assert file.media is not None and file.media.data == b"%PDF-report"
    assert file.msg_param["fileName"] == "report.pdf" and file.msg_param["fileType"] == "pdf"
    if group:
        assert image.conversation_id == pushed.conversation_id
    else:
        assert image.user_ids == ["staff8"]
    uploads = [c for c in emu.calls if c.route == "media.upload"]
    assert len(uploads) == 2 and all("access_token" not in json.dumps(c.request) for c in uploads)


async def test_an_image_too_large_is_refused_before_uploading(emu: DingTalkEmulator) -> None:
    platform = DingTalkPlatform(make_settings(emu))
    try:
        target = Target.to_user("dingtalk", "staff1")
        big = Upload(name="huge.png", data=b"x" * (20 * 1024 * 1024 + 1))
        with pytest.raises(Exception, match="larger than the 20971520 bytes"):
            await platform.send_image(target, big, key="k1")
    finally:
        await platform.close()
    assert not any(c.route == "media.upload" for c in emu.calls)


class Announcer(Robot):
    """Speaks first when told to."""


@pytest.mark.parametrize("mode", MODES)
async def test_proactive_sends_to_a_user_and_a_group(emu: DingTalkEmulator, mode: CardMode) -> None:
    robot = Announcer()
    async with running(emu, mode, robot=robot):
        user = Target.to_user("dingtalk", "manager01")
        group = Target.to_group("dingtalk", "cidOpenGroup==", mentions=("staff2", "staff3"))
        await robot.send(user, "**Done**: the refund went out.")
        await robot.send(group, "Maintenance at 18:00", markdown=False)
        await robot.send(group, final_card("Status", "All systems go.", feedback=None))
        await robot.send(user, Card(title="Note", elements=(Markdown(text="Hi"),)))
    to_user, to_group = emu.sent_messages
    assert to_user.route == "robot.oToMessages.batchSend" and to_user.user_ids == ["manager01"]
    assert to_user.msg_key == "sampleMarkdown"
    assert to_user.msg_param["text"] == "**Done**: the refund went out."
    assert to_group.route == "robot.groupMessages.send"
    assert to_group.conversation_id == "cidOpenGroup=="
    assert to_group.msg_param == {"content": "Maintenance at 18:00"}
    group_card, user_card = sorted(emu.cards.values(), key=lambda c: c.at)
    assert group_card.conversation_id == "cidOpenGroup=="
    assert group_card.at_user_ids == ["staff2", "staff3"]
    assert "All systems go." in (group_card.view["markdown"] or "")
    assert user_card.receiver_user_ids == ["manager01"]
    if mode == "ai":
        assert group_card.finalized and user_card.finalized


# --------------------------------------------------------------------------- AI cards


def ends_finalized(card: CardRecord) -> bool:
    """The card's last streaming call finalized it (or marked it failed)."""
    return card.streaming_state in ("finished", "failed")


async def test_every_ai_card_ends_with_a_finalizing_stream_call(emu: DingTalkEmulator) -> None:
    long_answer = "\n\n".join(f"第{i}段" + "字" * 1_000 for i in range(1, 9))  # ~24 KB

    async def agent(request: Any) -> str:
        if "boom" in request.text:
            raise RuntimeError("model down")
        return long_answer if "long" in request.text else "short answer"

    async with running(emu, "ai", robot=SupportRobot(agent=agent)) as runtime:
        await emu.push_message(APP, text=QUESTION, conversation_id="cid-ok")
        await emu.push_message(APP, text="boom", conversation_id="cid-error")
        await emu.push_message(APP, text="long please", conversation_id="cid-long")
        # the agent error ends in an error card, counted failed
        await emu.wait_for(
            lambda: (runtime.stats.answered, runtime.stats.failed) == (2, 1),
            15,
            what="two answers and an error card",
        )
        await runtime.wait_idle(10)
    cards = list(emu.cards.values())
    assert len(cards) == 4  # the long answer continued in a second card
    assert all(ends_finalized(c) for c in cards), [c.streaming_state for c in cards]
    (failed,) = [c for c in cards if c.conversation_id == "cid-error"]
    assert failed.streaming_state == "failed" and failed.content["flowStatus"] == "5"
    for card in cards:
        streams = [u for u in card.updates if u.route == "card.streaming"]
        assert streams, "no card/streaming call"
    calls = [c for c in emu.calls if c.route == "card.streaming"]
    assert all(c.request["isFull"] is True for c in calls)


@pytest.mark.parametrize("mode", MODES)
async def test_a_card_a_crash_left_open_is_closed_as_interrupted(
    emu: DingTalkEmulator, mode: CardMode
) -> None:
    store = MemoryStore()
    # a first process opened an answer, streamed some text, and died
    async with running(emu, mode, store=store) as runtime:
        target = Target.to_group("dingtalk", "cid-crash")
        handle = await runtime.platform.open_stream(
            target, Card(title=QUESTION, status=CardStatus.THINKING), key="crash-answer-1"
        )
        await handle.push("Refunds take")
        state = handle.state()
        assert json.loads(json.dumps(state)) == state  # JSON-able
        assert dict(handle.ref.data) == {"mode": mode}  # nothing mutable in the ref
        if mode == "ai":
            assert isinstance(handle, DingTalkAICardStream) and handle.inputing
        record = {
            "target": {
                "platform": "dingtalk",
                "conversation": {"id": "cid-crash", "kind": "group"},
            },
            "state": state,
            "question": QUESTION,
            "text": "Refunds take",
        }
        await store.put_value(runtime._key("open", "crash"), json.dumps(record), ttl=600)
    # the card outlived it: still streaming
    (card,) = emu.cards.values()
    # the next start closes it as interrupted, with the text it had
    async with running(emu, mode, store=store) as runtime:
        assert runtime.stats.recovered == 1
    markdown = card.view["markdown"] or ""
    assert "Refunds take" in markdown and "interrupted" in markdown
    if mode == "ai":
        # DingTalk shows an answer that did not finish as failed (isError), with its text
        assert card.streaming_state == "failed" and card.content["flowStatus"] == "5"
        assert card.content["stopReason"] == "interrupted"
        streams = [
            c.request
            for c in emu.calls
            if c.route == "card.streaming" and c.request.get("outTrackId") == card.card_id
        ]
        assert streams[-1]["isError"] is True and streams[-1]["isFinalize"] is False


async def test_a_final_card_sent_as_a_new_message_is_finalized(emu: DingTalkEmulator) -> None:
    platform = DingTalkPlatform(make_settings(emu, "ai"))
    try:
        target = Target.to_group("dingtalk", "cid-new")
        ref = await platform.send_card(target, final_card("q", "done", feedback=None), key="k-1")
        again = await platform.send_card(target, final_card("q", "done", feedback=None), key="k-1")
    finally:
        await platform.close()
    assert ref.id == again.id == "k-1"
    (card,) = emu.cards.values()
    assert card.streaming_state == "finished" and card.content["msgContent"] == "done"
    routes = [c.route for c in emu.calls if c.route != "oauth2.accessToken"]
    assert routes == [
        "card.instances.createAndDeliver",
        "card.streaming",
        "card.instances.createAndDeliver",  # the same key: "already exists", kept
        "card.streaming",
    ]


async def test_attachment_without_download_code_says_so(emu: DingTalkEmulator) -> None:
    platform = DingTalkPlatform(make_settings(emu))
    try:
        with pytest.raises(Exception, match="no downloadCode"):
            await platform.download(Attachment(kind="image"))
    finally:
        await platform.close()
