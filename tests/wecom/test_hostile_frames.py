"""Hostile frames on the WeCom robot's long connection (issue 12, item 9 applied to WeCom),
sent as raw text by the emulator: each is dropped with a warning (WeCom pushes take no
ack), the connection stays up, nothing logs a traceback, and another conversation is
answered."""

from __future__ import annotations

import json
import logging
import time

import pytest

from imrobots import Robot
from imrobots.emulation import EmulatorAdapter
from imrobots.platform import Platform
from imrobots.testing.conformance import open_rig
from imrobots_wecom.console import WeComConsoleAdapter

from ..fuzzing import deep


def _platform(emulator: EmulatorAdapter) -> Platform:
    platform = emulator.create_platform()
    assert platform is not None
    return platform


def _push(body: dict[str, object], req_id: str = "aibot_msg_callback_1") -> str:
    return json.dumps({"cmd": "aibot_msg_callback", "headers": {"req_id": req_id}, "body": body})


async def _answer(request: object) -> str:
    return "an answer"


async def test_hostile_frames_are_dropped_and_the_connection_stays_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    adapter = WeComConsoleAdapter()
    async with open_rig(lambda: adapter, Robot(agent=_answer), make_platform=_platform) as rig:
        emulator = adapter.emulator
        bot = emulator.bots[adapter.bot_id]
        body = {
            "msgid": "m1",
            "create_time": int(time.time()),
            "aibotid": adapter.bot_id,
            "chattype": "group",
            "chatid": "g-hostile",
            "from": {"userid": "u1"},
            "msgtype": "text",
            "text": {"content": "hello"},
        }
        hostile = [
            "not json",
            deep(),
            '{"cmd":"aibot_msg_callback","headers":{"req_id":"r"},"body":' + deep() + "}",
            _push({**body, "msgid": "m\ud800"}),
            _push(body, req_id="r\ud800"),
            _push({**body, "msgid": ""}),
            _push({**body, "msgid": "m-time", "create_time": 10**30}),
            _push({**body, "msgid": "m-long-" + "x" * 500, "text": {"content": "x\udfff"}}),
            json.dumps([1, 2, 3]),
        ]
        received = rig.runtime.stats.received
        for text in hostile:
            await emulator.send_raw(adapter.bot_id, text)
        await rig.say("are you there?", conversation_id="g-bystander")
        await rig.final_card("g-bystander", "an answer")
        assert bot.subscriptions == 1, "the connection went down"
        # the surrogate text became U+FFFD; the rest never became a message
        assert rig.runtime.stats.received == received + 2
        # (one of the two is the bystander) the others are counted as rejected
        assert rig.platform.connection_status.rejections == len(hostile) - 1
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
