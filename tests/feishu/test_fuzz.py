"""Fuzzing the Feishu long connection's event handling and converters (issue 12, Build 5;
the inputs of item 9 as explicit examples): a malformed event is dropped with a warning
and still answered, never raised, and what becomes an event has ids and text that encode
as UTF-8."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

pytest.importorskip("lark_oapi")

from imrobots import payloads
from imrobots.platform import Message, Secret
from imrobots_feishu import convert
from imrobots_feishu.connection import Answer
from imrobots_feishu.platform import FeishuPlatform, FeishuSettings

from ..fuzzing import FUZZ, deep, encodable, json_values, mutated

MESSAGE = {
    "schema": "2.0",
    "header": {
        "event_id": "ev1",
        "event_type": "im.message.receive_v1",
        "create_time": "1700000000000",
    },
    "event": {
        "sender": {"sender_id": {"open_id": "ou_1"}, "sender_type": "user"},
        "message": {
            "message_id": "om_1",
            "create_time": "1700000000000",
            "chat_id": "oc_1",
            "chat_type": "group",
            "message_type": "text",
            "content": json.dumps({"text": "@_user_1 hello"}),
            "mentions": [{"key": "@_user_1", "id": {"open_id": "ou_bot"}, "name": "bot"}],
        },
    },
}
ACTION = {
    "schema": "2.0",
    "header": {
        "event_id": "ev2",
        "event_type": "card.action.trigger",
        "create_time": "1700000000000000",
    },
    "event": {
        "operator": {"open_id": "ou_1"},
        "action": {"value": {"v": "v1.x.y", "b": "b1"}, "tag": "button"},
        "context": {"open_message_id": "om_1", "open_chat_id": "oc_1"},
    },
}


def _with(base: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


envelopes = st.one_of(
    st.builds(
        lambda e, m: {**MESSAGE, "event": {**MESSAGE["event"], "message": m}, **e},
        st.just({}),
        mutated(MESSAGE["event"]["message"]),
    ),  # type: ignore[index]
    mutated(MESSAGE),
    mutated(ACTION),
    st.builds(lambda a: _with(ACTION, ("event", "action"), a), mutated(ACTION["event"]["action"])),  # type: ignore[index]
    json_values,
)

PLATFORM = FeishuPlatform(FeishuSettings(app_id="cli_fuzz", app_secret=Secret("s")))


@FUZZ
@given(envelope=envelopes)
@example(envelope=_with(MESSAGE, ("event", "message", "message_id"), "om_\ud800"))
@example(envelope=_with(MESSAGE, ("event", "message", "content"), json.dumps({"text": "x\udfff"})))
@example(envelope=_with(MESSAGE, ("event", "message", "content"), deep()))
@example(envelope=_with(MESSAGE, ("event", "message", "create_time"), str(10**30)))
@example(envelope=_with(ACTION, ("header", "create_time"), str(-(10**30))))
@example(envelope=_with(ACTION, ("event", "action", "value"), {"v": "v1.好评🙂.ü"}))
@example(envelope=_with(MESSAGE, ("header", "event_id"), ""))
def test_every_event_is_answered_and_never_raises(envelope: Any) -> None:
    payload = json.dumps(envelope).encode()
    for kind in ("event", "card"):
        answer = PLATFORM._on_frame(kind, payload)
        assert isinstance(answer, Answer)
    try:  # as on the wire: JSON bytes, read as the platform reads them
        envelope = payloads.loads(payload, convert.ID_FIELDS)
    except payloads.MalformedJson:
        return
    for build in (
        lambda e: convert.to_message(e, bot_open_id="ou_bot"),
        convert.to_card_action,
    ):
        if not isinstance(envelope, dict):
            continue
        try:
            event = build(envelope)
        except convert.MalformedPayload as exc:
            assert str(exc)
            continue
        assert event.id and encodable(event.id)
        if isinstance(event, Message):
            assert encodable(event.text)


def test_deep_json_frames_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert isinstance(PLATFORM._on_frame("event", deep().encode()), Answer)
    assert not [r for r in caplog.records if r.exc_info]
