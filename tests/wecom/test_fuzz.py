"""Fuzzing the WeCom robot's frame handling and converters (issue 12, Build 5; the inputs
of item 9 as explicit examples): malformed pushes are dropped with a warning, never an
exception, and what becomes an event has ids and text that encode as UTF-8."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from imrobots.platform import Message, Secret
from imrobots_wecom import convert
from imrobots_wecom.connection import AibotConnection, parse_frame
from imrobots_wecom.platform import WeComPlatform, WeComSettings

from ..fuzzing import FUZZ, deep, encodable, json_values, mutated, text

BODY = {
    "msgid": "msg-fuzz",
    "create_time": 1_700_000_000,
    "aibotid": "bot-fuzz",
    "chattype": "group",
    "chatid": "chat-fuzz",
    "from": {"userid": "user001"},
    "msgtype": "text",
    "text": {"content": "@bot hello"},
}
EVENT = {
    **BODY,
    "msgtype": "event",
    "event": {
        "eventtype": "template_card_event",
        "template_card_event": {
            "card_type": "button_interaction",
            "event_key": "k",
            "task_id": "t",
        },
    },
}

bodies = st.one_of(mutated(BODY), mutated(EVENT), json_values)


@FUZZ
@given(body=bodies)
@example(body={**BODY, "msgid": "a\ud800"})
@example(body={**BODY, "msgid": ""})
@example(body={**BODY, "create_time": 10**30})
@example(body={**BODY, "create_time": -(10**30)})
@example(body={**BODY, "text": {"content": "x\udfff"}})
@example(
    body={
        **EVENT,
        "event": {
            "eventtype": "template_card_event",
            "template_card_event": {"event_key": "好评🙂"},
        },
    }
)
def test_the_converters_raise_only_malformed_payload(body: Any) -> None:
    # as on the wire: JSON text (lone surrogates as escapes), read by the frame parser
    frame = parse_frame(json.dumps({"cmd": "aibot_msg_callback", "body": body}))
    if frame is None:
        return  # dropped with a warning
    body = frame["body"]
    for build in (
        lambda b: convert.to_message(b, req_id="r", generation=1),
        lambda b: convert.to_card_action(b, req_id="r", generation=1, button_ids={}),
        lambda b: convert.to_chat_entered(b, req_id="r", generation=1),
    ):
        if not isinstance(body, dict):
            continue
        try:
            event = build(body)
        except convert.MalformedPayload as exc:
            assert str(exc)
            continue
        assert event.id and encodable(event.id)
        if isinstance(event, Message):
            assert encodable(event.text)


@FUZZ
@given(raw=text)
@example(
    raw=json.dumps({"cmd": "aibot_msg_callback", "headers": {"req_id": "r\ud800"}, "body": BODY})
)
@example(
    raw=json.dumps(
        {
            "cmd": "aibot_msg_callback",
            "headers": {"req_id": "r"},
            "body": {**BODY, "msgid": "\ud800"},
        }
    )
)
@example(raw='{"cmd":"aibot_msg_callback","body":' + deep() + "}")
@example(raw=deep())
def test_the_frame_parser_returns_a_frame_or_none(raw: str) -> None:
    frame = parse_frame(raw)
    if frame is not None:
        assert isinstance(frame, dict)
        json.dumps(frame).encode("utf-8")  # can be logged and stored: no lone surrogate


async def test_pushes_of_any_shape_are_dropped_or_delivered_never_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    platform = WeComPlatform(WeComSettings(bot_id="bot-fuzz", secret=Secret("s")))
    seen: list[Any] = []
    async with aiohttp.ClientSession() as session:
        connection = AibotConnection(
            session,
            url="ws://127.0.0.1:9",
            bot_id="bot-fuzz",
            secret=Secret("s"),
            handler=lambda *args: seen.append(args),
        )

        @FUZZ
        @given(
            cmd=st.sampled_from(["aibot_msg_callback", "aibot_event_callback", "other", ""]),
            body=bodies,
            headers=st.one_of(st.just({"req_id": "r1"}), json_values),
        )
        def one(cmd: str, body: Any, headers: Any) -> None:
            frame = {"cmd": cmd, "headers": headers, "body": body}
            connection._dispatch(frame)  # never raises
            if isinstance(body, dict):
                platform._on_push(cmd or "aibot_msg_callback", "r1", body, 1)

        one()
    assert not connection.taken_over or seen is not None
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
