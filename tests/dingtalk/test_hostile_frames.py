"""Hostile frames on the DingTalk stream (issue 12, item 9), sent as raw text by the
emulator over the robot's live connection.

Found: a lone surrogate in a ping's opaque or a messageId, JSON nested 100,000 deep, a
messageId over 200 characters (no ack at all), out-of-range timestamps (500 instead of a
clean 400), a non-ASCII feedback value (a traceback), an empty ``msgId`` (two messages
collided in dedupe). Now each frame gets a clean ack (400 for what cannot be taken; a
ping's opaque is echoed, escaped), the connection stays up, other conversations are
answered, and no traceback is logged.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from imrobots_dingtalk.connection import MAX_MESSAGE_ID
from imrobots_dingtalk.emulator import DingTalkEmulator, frames
from imrobots_dingtalk.platform import BOT_MESSAGE_TOPIC, CARD_CALLBACK_TOPIC, DingTalkPlatform

from .support import APP, QUESTION, cards_for, final, running

LONE = "\ud800"
DEEP = 100_000


def bot_data(emu: DingTalkEmulator, **changes: Any) -> dict[str, Any]:
    app = emu.apps[APP]
    data = frames.build_bot_message(
        app,
        msg_id="msg-hostile",
        conversation_type="group",
        conversation_id="cid-hostile",
        conversation_title=None,
        sender_staff_id="user001",
        sender_nick="User",
        at_robot=True,
        msgtype="text",
        text=QUESTION,
        content=None,
        create_at_ms=frames.now_ms(),
        session_webhook=f"{emu.base_url}/robot/sendBySession?session=x",
        session_webhook_expired_ms=frames.now_ms() + 60_000,
    )
    data.update(changes)
    return data


def frame_text(
    kind: str,
    topic: str,
    message_id: str,
    data: Any,
    *,
    time_ms: Any = None,
    raw_data: bool = False,
) -> str:
    headers = {
        "contentType": "application/json",
        "messageId": message_id,
        "time": str(time_ms if time_ms is not None else frames.now_ms()),
        "topic": topic,
    }
    body = {
        "specVersion": "1.0",
        "type": kind,
        "headers": headers,
        "data": data if raw_data else json.dumps(data),
    }
    return json.dumps(body)  # ensure_ascii: lone surrogates travel as \ud800 escapes


def deep_frame(message_id: str) -> str:
    head = frame_text("CALLBACK", BOT_MESSAGE_TOPIC, message_id, "", raw_data=True)
    return head.replace('"data": ""', '"data": ' + "[" * DEEP + "]" * DEEP)


def hostile_frames(emu: DingTalkEmulator) -> list[tuple[str, str, str, tuple[int, ...]]]:
    """(what, messageId, frame text, acceptable ack codes)."""
    long_id = "m" * (MAX_MESSAGE_ID + 50)
    callback = {
        "extension": "{}",
        "corpId": "ding-corp",
        "type": "actionCallback",
        "userId": "user001",
        "userIdType": 1,
        "spaceType": "IM_GROUP",
        "spaceId": "cid-hostile",
        "outTrackId": "card-hostile",
        "content": json.dumps(
            {
                "cardPrivateData": {
                    "actionIds": ["feedback"],
                    "params": {"value": "v1.好评🙂.ünïcödé"},
                }
            },
            ensure_ascii=False,
        ),
    }
    return [
        (
            "lone surrogate in a ping's opaque",
            "m-ping-lone",
            frame_text("SYSTEM", "ping", "m-ping-lone", {"opaque": "op" + LONE}),
            (200, 400),
        ),
        (
            "lone surrogate escaped inside the data string",
            "m-ping-escaped",
            frame_text("SYSTEM", "ping", "m-ping-escaped", '{"opaque":"op\\ud800"}', raw_data=True),
            (200, 400),
        ),
        (
            "lone surrogate in a messageId",
            "m-" + LONE,
            frame_text("CALLBACK", BOT_MESSAGE_TOPIC, "m-" + LONE, bot_data(emu, msgId="a1")),
            (400,),
        ),
        (
            "lone surrogate in a msgId",
            "m-lone-msgid",
            frame_text(
                "CALLBACK", BOT_MESSAGE_TOPIC, "m-lone-msgid", bot_data(emu, msgId="x" + LONE)
            ),
            (400,),
        ),
        ("JSON nested 100,000 deep", "m-deep", deep_frame("m-deep"), (400,)),
        (
            "JSON nested 100,000 deep inside data",
            "m-deep-data",
            frame_text(
                "CALLBACK",
                BOT_MESSAGE_TOPIC,
                "m-deep-data",
                "[" * DEEP + "]" * DEEP,
                raw_data=True,
            ),
            (400,),
        ),
        (
            "a messageId over 200 characters",
            long_id,
            frame_text("CALLBACK", BOT_MESSAGE_TOPIC, long_id, bot_data(emu, msgId="a2")),
            (400,),
        ),
        (
            "createAt out of range",
            "m-time",
            frame_text(
                "CALLBACK", BOT_MESSAGE_TOPIC, "m-time", bot_data(emu, msgId="a3", createAt=10**30)
            ),
            (400,),
        ),
        (
            "negative createAt out of range",
            "m-time-neg",
            frame_text(
                "CALLBACK",
                BOT_MESSAGE_TOPIC,
                "m-time-neg",
                bot_data(emu, msgId="a4", createAt=-(10**30)),
            ),
            (400,),
        ),
        (
            "a card callback's time header out of range",
            "m-cb-time",
            frame_text("CALLBACK", CARD_CALLBACK_TOPIC, "m-cb-time", callback, time_ms=10**30),
            (400,),
        ),
        (
            "a non-ASCII feedback value",
            "m-feedback",
            frame_text("CALLBACK", CARD_CALLBACK_TOPIC, "m-feedback", callback),
            (200, 400),
        ),
        (
            "an empty msgId",
            "m-empty-1",
            frame_text("CALLBACK", BOT_MESSAGE_TOPIC, "m-empty-1", bot_data(emu, msgId="")),
            (400,),
        ),
        (
            "another empty msgId",
            "m-empty-2",
            frame_text("CALLBACK", BOT_MESSAGE_TOPIC, "m-empty-2", bot_data(emu, msgId="")),
            (400,),
        ),
    ]


async def test_hostile_frames_get_clean_acks_and_the_connection_stays_up(
    emu: DingTalkEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running(emu, delay=0.0) as runtime:
        platform = runtime.platform
        assert isinstance(platform, DingTalkPlatform) and platform.connection is not None
        connection = platform.connection
        before = runtime.stats.received
        refused = 0
        for what, message_id, text, codes in hostile_frames(emu):
            ack = await emu.send_raw_frame(APP, text, message_id=message_id)
            assert ack is not None
            await emu.wait_for(lambda a=ack: a.acked, 5, what=f"the ack of {what}")
            assert ack.code in codes, f"{what}: acked {ack.code} {ack.message}"
            refused += ack.code == 400
            assert connection.connected and connection.stats.opened == 1, what
            assert [c.live for c in emu.connections] == [True], what
        # the ping's opaque came back as it was sent
        echoed = emu.acks["m-ping-lone"]
        assert echoed.code == 200 and echoed.data == {"opaque": "op" + LONE}
        # nothing hostile became a message; the two empty msgIds did not collide in dedupe
        assert runtime.stats.received == before and runtime.stats.duplicates == 0
        # each frame refused with 400 is counted as rejected (the stop summary, /metrics)
        assert refused > 0 and platform.connection_status.rejections == refused
        # another conversation is answered on the same connection
        pushed = await emu.push_message(APP, text=QUESTION, conversation_id="cid-bystander")
        await emu.wait_for(lambda: any(final(c) for c in cards_for(emu, pushed)), 10)
        await runtime.wait_idle(10)
        assert connection.stats.opened == 1
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
