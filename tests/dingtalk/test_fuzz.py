"""Fuzzing the DingTalk frame parser, converter and the pipeline behind them (issue 12,
Build 5; the inputs of item 9 as explicit examples).

- :func:`_parse_frame` takes any text: a frame, or a ``ValueError``.
- :meth:`DingTalkPlatform.convert` takes any frame: an ack of 200, 400 or 404 (never an
  exception), and an event only with a non-empty id and text that encodes as UTF-8.
- The pipeline: hostile frames sent as raw text over the robot's live connection each get
  an ack, the connection stays up, nothing logs a traceback, and afterwards a message in
  another conversation is answered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from imrobots import Message, RobotRuntime, Secret
from imrobots.demo_agent import DemoAgent
from imrobots.examples import SupportRobot
from imrobots_dingtalk.connection import Frame, _parse_frame
from imrobots_dingtalk.emulator import DingTalkEmulator, frames
from imrobots_dingtalk.platform import (
    BOT_MESSAGE_TOPIC,
    CARD_CALLBACK_TOPIC,
    DingTalkPlatform,
    DingTalkSettings,
)

from ..fuzzing import FUZZ, deep, encodable, json_values, mutated, text
from .support import APP, QUESTION, SECRET, cards_for, final, make_settings

BOT = {
    "conversationId": "cid-fuzz",
    "chatbotCorpId": "dingcorp",
    "chatbotUserId": "$:LWCP_v1:$robot",
    "msgId": "msg-fuzz",
    "senderNick": "User",
    "isAdmin": False,
    "senderStaffId": "user001",
    "sessionWebhookExpiredTime": 1_900_000_000_000,
    "createAt": 1_700_000_000_000,
    "senderCorpId": "dingcorp",
    "conversationType": "2",
    "senderId": "$:LWCP_v1:$user",
    "sessionWebhook": "http://127.0.0.1:9/robot/sendBySession?session=x",
    "robotCode": APP,
    "msgtype": "text",
    "text": {"content": "hello"},
    "atUsers": [{"dingtalkId": "$:LWCP_v1:$robot"}],
    "isInAtList": True,
}
CALLBACK = {
    "extension": "{}",
    "corpId": "dingcorp",
    "type": "actionCallback",
    "userId": "user001",
    "userIdType": 1,
    "spaceType": "IM_GROUP",
    "spaceId": "cid-fuzz",
    "outTrackId": "card-fuzz",
    "content": json.dumps(
        {"cardPrivateData": {"actionIds": ["feedback"], "params": {"value": "v1.x.y"}}}
    ),
}

FEEDBACK_NON_ASCII = {
    **CALLBACK,
    "content": json.dumps(
        {"cardPrivateData": {"actionIds": ["feedback"], "params": {"value": "v1.好评.ü"}}},
        ensure_ascii=False,
    ),
}

PLATFORM = DingTalkPlatform(DingTalkSettings(client_id=APP, client_secret=Secret(SECRET)))

payloads = st.one_of(mutated(BOT), mutated(CALLBACK), json_values)


def _frame_text(kind: str, topic: str, message_id: Any, data: Any, time: Any = None) -> str:
    headers = {"contentType": "application/json", "messageId": message_id, "topic": topic}
    headers["time"] = str(frames.now_ms()) if time is None else time
    return json.dumps({"specVersion": "1.0", "type": kind, "headers": headers, "data": data})


# --------------------------------------------------------------------------- parser


@FUZZ
@given(text)
@example(_frame_text("CALLBACK", BOT_MESSAGE_TOPIC, "m\ud800", "{}"))
@example(_frame_text("CALLBACK", BOT_MESSAGE_TOPIC, "m" * 250, "{}"))
@example(_frame_text("SYSTEM", "ping", "m1", json.dumps({"opaque": "\ud800"})))
@example('{"type":"CALLBACK","headers":{"messageId":"m2","topic":"t"},"data":' + deep() + "}")
@example(deep())
def test_the_frame_parser_returns_a_frame_or_a_value_error(raw: str) -> None:
    try:
        frame = _parse_frame(raw)
    except ValueError as exc:
        assert str(exc)
        return
    assert frame.message_id and len(frame.message_id) <= 200 and encodable(frame.message_id)


# --------------------------------------------------------------------------- converter


@FUZZ
@given(
    topic=st.sampled_from([BOT_MESSAGE_TOPIC, CARD_CALLBACK_TOPIC, "/v1.0/unknown"]),
    payload=payloads,
    time=st.one_of(st.none(), st.integers(), st.text(max_size=25)),
)
@example(topic=BOT_MESSAGE_TOPIC, payload={**BOT, "msgId": "a\ud800"}, time=None)
@example(topic=BOT_MESSAGE_TOPIC, payload={**BOT, "msgId": ""}, time=None)
@example(topic=BOT_MESSAGE_TOPIC, payload={**BOT, "createAt": 10**30}, time=None)
@example(topic=BOT_MESSAGE_TOPIC, payload={**BOT, "createAt": -(10**30)}, time=None)
@example(topic=BOT_MESSAGE_TOPIC, payload={**BOT, "text": {"content": "x\udfff"}}, time=None)
@example(topic=CARD_CALLBACK_TOPIC, payload=CALLBACK, time=10**30)
@example(topic=CARD_CALLBACK_TOPIC, payload=FEEDBACK_NON_ASCII, time=None)
def test_the_converter_acks_every_payload(topic: str, payload: Any, time: Any) -> None:
    data = json.dumps(payload)  # lone surrogates travel as \ud800 escapes, as on the wire
    headers = {} if time is None else {"time": time}
    frame = Frame(type="CALLBACK", topic=topic, message_id="m-fuzz", headers=headers, data=data)
    ack, event = PLATFORM.convert(frame)
    assert ack.code in (200, 400, 404)
    if ack.code != 200:
        assert event is None and ack.message
        return
    assert event is not None and event.id and encodable(event.id)
    if isinstance(event, Message):
        assert encodable(event.text)
        assert event.conversation is not None and encodable(event.conversation.id)


def test_a_deep_data_string_is_a_400() -> None:
    frame = Frame(type="CALLBACK", topic=BOT_MESSAGE_TOPIC, message_id="m", headers={}, data=deep())
    ack, event = PLATFORM.convert(frame)
    assert ack.code == 400 and event is None


# --------------------------------------------------------------------------- pipeline


class _Robot:
    """A robot on the emulator, run on an event loop in a thread of its own, so that the
    synchronous hypothesis examples can drive it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.emu = DingTalkEmulator(seed=21, ping_interval=None)
        self.runtime: RobotRuntime | None = None
        self.run(self._start())

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        await self.emu.start()
        self.emu.add_app(APP, SECRET)
        platform = DingTalkPlatform(make_settings(self.emu, update_interval=0.05))
        self.runtime = RobotRuntime(
            name="fuzz",
            robot=SupportRobot(agent=DemoAgent(delay=0.0)),
            platform=platform,
            feedback_secret="fuzz-feedback-secret",
        )
        await self.runtime.start()

    async def _stop(self) -> None:
        if self.runtime is not None:
            await self.runtime.stop(timeout=5)
        await self.emu.stop()

    def close(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def robot() -> Iterator[_Robot]:
    running = _Robot()
    try:
        yield running
    finally:
        running.close()


hostile = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["CALLBACK", "SYSTEM", "EVENT", "BOGUS"]),
        "topic": st.sampled_from([BOT_MESSAGE_TOPIC, CARD_CALLBACK_TOPIC, "ping", "other"]),
        "payload": payloads,
        "as_string": st.booleans(),
        "time": st.one_of(st.none(), json_values),
    }
)


def test_hostile_frames_through_the_pipeline(
    robot: _Robot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    emu = robot.emu
    counter = iter(range(10**9))

    async def send(text_: str, message_id: str) -> tuple[int | None, bool]:
        ack = await emu.send_raw_frame(APP, text_, message_id=message_id)
        assert ack is not None
        await emu.wait_for(lambda: ack.acked, 5, what=f"ack of {message_id}")
        runtime = robot.runtime
        assert runtime is not None
        platform = runtime.platform
        assert isinstance(platform, DingTalkPlatform) and platform.connection is not None
        return ack.code, platform.connection.stats.opened == 1 and platform.connection.connected

    @FUZZ
    @given(hostile)
    @example(
        {
            "kind": "SYSTEM",
            "topic": "ping",
            "payload": {"opaque": "\ud800"},
            "as_string": True,
            "time": None,
        }
    )
    @example(
        {
            "kind": "CALLBACK",
            "topic": BOT_MESSAGE_TOPIC,
            "payload": {**BOT, "msgId": ""},
            "as_string": True,
            "time": None,
        }
    )
    @example(
        {
            "kind": "CALLBACK",
            "topic": BOT_MESSAGE_TOPIC,
            "payload": {**BOT, "createAt": 10**30},
            "as_string": True,
            "time": None,
        }
    )
    @example(
        {
            "kind": "CALLBACK",
            "topic": CARD_CALLBACK_TOPIC,
            "payload": CALLBACK,
            "as_string": True,
            "time": "1" * 40,
        }
    )
    @example(
        {
            "kind": "CALLBACK",
            "topic": CARD_CALLBACK_TOPIC,
            "payload": FEEDBACK_NON_ASCII,
            "as_string": True,
            "time": None,
        }
    )
    def one(case: dict[str, Any]) -> None:
        message_id = f"fz-{next(counter)}"
        payload = case["payload"]
        data = json.dumps(payload) if case["as_string"] else payload
        if case["kind"] == "CALLBACK" and isinstance(payload, dict) and "msgId" in payload:
            payload["msgId"] = payload["msgId"] if payload["msgId"] == "" else f"{message_id}"
            data = json.dumps(payload) if case["as_string"] else payload
        frame = _frame_text(case["kind"], case["topic"], message_id, data, case["time"])
        code, up = robot.run(send(frame, message_id))
        assert code in (200, 400, 404), f"acked {code}"
        assert up, "the connection went down"

    one()
    # the empty-msgId messages never took a dedupe slot; another conversation is answered
    runtime = robot.runtime
    assert runtime is not None

    async def bystander() -> None:
        pushed = await emu.push_message(APP, text=QUESTION, conversation_id="cid-bystander")
        await emu.wait_for(lambda: any(final(c) for c in cards_for(emu, pushed)), 15)

    robot.run(bystander())
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
