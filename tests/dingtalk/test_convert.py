"""The payload converter against a golden corpus of DingTalk pushes (``payloads/``).

Each ``bot-*.json`` / ``callback-*.json`` file holds ``data`` (a push's data as
DingTalk sends it) and ``expect``: either the fields of the core event it must
become, or ``error`` with words the one-line error must name.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imrobots import ConversationKind, MessageKind
from imrobots_dingtalk.convert import (
    BotMessage,
    MalformedPayload,
    TextContent,
    UnknownContent,
    _fast_bot_message,
    _structure,
    make_converter,
    parse_bot_message,
    to_card_action,
    to_message,
)

PAYLOADS = Path(__file__).with_name("payloads")


def _cases(prefix: str) -> list[Any]:
    files = sorted(PAYLOADS.glob(f"{prefix}-*.json"))
    assert files, f"no {prefix} payloads in {PAYLOADS}"
    return [pytest.param(json.loads(f.read_text(encoding="utf-8")), id=f.stem) for f in files]


@pytest.mark.parametrize("case", _cases("bot"))
def test_bot_message_corpus(case: dict[str, Any]) -> None:
    expect = case["expect"]
    robot_names = tuple(case.get("robot_names", ()))
    if "error" in expect:
        with pytest.raises(MalformedPayload) as info:
            to_message(case["data"], robot_names=robot_names)
        text = str(info.value)
        assert "\n" not in text
        for word in expect["error"]:
            assert word in text
        return
    message = to_message(case["data"], robot_names=robot_names)
    data = case["data"]
    assert message.platform == "dingtalk"
    assert message.id == data["msgId"]
    assert message.conversation.id == data["conversationId"]
    assert message.kind is MessageKind(expect["kind"])
    assert message.text == expect["text"]
    assert message.raw is data  # kept for replies (sessionWebhook) and advanced robots
    if "mentioned" in expect:
        assert message.mentioned is expect["mentioned"]
    if "conversation" in expect:
        assert message.conversation.kind is ConversationKind(expect["conversation"])
    if "conversation_title" in expect:
        assert message.conversation.title == expect["conversation_title"]
    if "sender" in expect:
        assert message.sender.id == expect["sender"]
    if "sender_name" in expect:
        assert message.sender.name == expect["sender_name"]
    if "is_admin" in expect:
        assert message.sender.is_admin is expect["is_admin"]
    if "mentions" in expect:
        assert [m.id for m in message.mentions] == expect["mentions"]
    if "time" in expect:
        assert message.time == datetime.fromisoformat(expect["time"])
    if "attachments" in expect:
        got = [[a.kind, a.name, a.text] for a in message.attachments]
        assert got == expect["attachments"]
    if "download_codes" in expect:
        assert [a.download_code for a in message.attachments] == expect["download_codes"]


@pytest.mark.parametrize("case", _cases("callback"))
def test_card_callback_corpus(case: dict[str, Any]) -> None:
    expect = case["expect"]
    if "error" in expect:
        with pytest.raises(MalformedPayload) as info:
            to_card_action(case["data"], callback_id="frame-1")
        for word in expect["error"]:
            assert word in str(info.value)
        return
    action = to_card_action(case["data"], callback_id="frame-1", time_ms=1_700_000_000_000)
    assert action.id == "frame-1"
    assert action.platform == "dingtalk"
    assert action.card_id == case["data"]["outTrackId"]
    assert action.time == datetime.fromtimestamp(1_700_000_000, tz=UTC)
    for key in ("action_id", "value"):
        if key in expect:
            assert getattr(action, key) == expect[key]
    if "sender" in expect:
        assert action.sender.id == expect["sender"]
    if "conversation" in expect:
        assert action.conversation is not None
        assert action.conversation.kind is ConversationKind(expect["conversation"])


def test_msgtype_selects_the_content_class() -> None:
    base = {"msgId": "m", "conversationId": "c", "conversationType": "1"}
    text = parse_bot_message({**base, "msgtype": "text", "text": {"content": "hi"}})
    assert text.content == TextContent(content="hi")
    other = parse_bot_message({**base, "msgtype": "markdown", "content": {"text": "x"}})
    assert isinstance(other.content, UnknownContent)


def test_strings_stand_in_for_numbers_and_booleans() -> None:
    bot = parse_bot_message(
        {
            "msgId": 12345,
            "conversationId": "c",
            "conversationType": 2,
            "msgtype": "text",
            "isInAtList": "true",
            "text": {"content": "hi"},
        }
    )
    assert isinstance(bot, BotMessage)
    assert bot.msg_id == "12345"
    assert bot.is_group
    assert bot.is_in_at_list is True


def test_error_names_fields_as_dingtalk_spells_them() -> None:
    with pytest.raises(MalformedPayload) as info:
        parse_bot_message({"msgtype": "text", "conversationType": "2", "isInAtList": []})
    text = str(info.value)
    assert "data.msgId" in text
    assert "data.isInAtList" in text
    assert "msg_id" not in text


def test_a_converter_is_independent() -> None:
    converter = make_converter()
    bot = converter.structure(
        {"msgId": "m", "conversationId": "c", "conversationType": "1", "msgtype": "text"},
        BotMessage,
    )
    assert bot.content == TextContent(content="")


def test_reprs_hide_download_codes_and_webhooks() -> None:
    data = json.loads((PAYLOADS / "bot-text-group-mention.json").read_text("utf-8"))["data"]
    bot = parse_bot_message(data)
    assert "sendBySession" not in repr(bot)
    message = to_message(data)
    assert "sendBySession" not in repr(message)


# --- the fast path: the same BotMessage as the converter, or the converter's own error -----

_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.lists(st.none() | st.integers() | st.text(max_size=4), max_size=2),
    st.dictionaries(st.sampled_from(["content", "dingtalkId", "x"]), st.text(max_size=4)),
)
_KEYS = [
    "msgId", "msgtype", "conversationId", "conversationType", "createAt", "conversationTitle",
    "senderId", "senderStaffId", "senderNick", "isAdmin", "chatbotUserId", "robotCode",
    "isInAtList", "atUsers", "sessionWebhook", "errCode", "content", "text",
]  # fmt: skip


def _both(data: Any) -> tuple[Any, Any]:
    """(fast path's result or None, converter's result or its error text)."""
    fast = _fast_bot_message(data)
    try:
        slow: Any = _structure(data, BotMessage)
    except MalformedPayload as exc:
        slow = f"error: {exc}"
    return fast, slow


@pytest.mark.parametrize("case", _cases("bot"))
def test_fast_path_builds_what_the_converter_builds(case: dict[str, Any]) -> None:
    data = case["data"]
    if not isinstance(data, dict):
        return
    fast, slow = _both(data)
    if "error" in case["expect"]:
        assert fast is None  # errors are the converter's to word
    elif "richText" not in json.dumps(data) or isinstance(data.get("content"), dict):
        assert fast is not None, "a well-typed push took the slow path"
    if fast is not None:
        assert fast == slow
        assert repr(fast) == repr(slow)


@settings(max_examples=200, deadline=None)
@given(
    base=st.sampled_from(sorted(PAYLOADS.glob("bot-*.json"))),
    changes=st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=4),
    dropped=st.sets(st.sampled_from(_KEYS), max_size=3),
)
def test_fast_path_agrees_on_any_shape(
    base: Path, changes: dict[str, Any], dropped: set[str]
) -> None:
    data = json.loads(base.read_text("utf-8"))["data"]
    if not isinstance(data, dict):
        return
    data = {k: v for k, v in {**data, **changes}.items() if k not in dropped}
    fast, slow = _both(data)
    if fast is not None:
        assert fast == slow


def _messages(data: dict[str, Any]) -> tuple[Any, Any]:
    """(to_message's result on the dict, or its error text; the same from the converter's
    BotMessage, with the dict as raw)."""
    try:
        fast: Any = to_message(data, robot_names=("HelpBot",))
    except MalformedPayload as exc:
        fast = f"error: {exc}"
    try:
        slow: Any = to_message(_structure(data, BotMessage), robot_names=("HelpBot",))
    except MalformedPayload as exc:
        slow = f"error: {exc}"
    return fast, slow


def _same_message(fast: Any, slow: Any, data: dict[str, Any]) -> None:
    if isinstance(slow, str):
        assert fast == slow
        return
    if not _structure(data, BotMessage).create_at:  # "now", read twice
        fast = attrs.evolve(fast, time=slow.time)
    assert fast == slow and repr(fast) == repr(slow)
    assert fast.raw is data and slow.raw == {}
    assert fast.attachments == slow.attachments and fast.quote == slow.quote


@pytest.mark.parametrize("case", _cases("bot"))
def test_to_message_reads_a_dict_as_the_converter_would(case: dict[str, Any]) -> None:
    """to_message reads a well-typed push's fields from the dict itself (no BotMessage):
    the same Message as from the converter's BotMessage, or the same error."""
    data = case["data"]
    if isinstance(data, dict):
        _same_message(*_messages(data), data)


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from(sorted(PAYLOADS.glob("bot-*.json"))),
    changes=st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=4),
    dropped=st.sets(st.sampled_from(_KEYS), max_size=3),
    at_users=st.none()
    | st.lists(
        st.dictionaries(
            st.sampled_from(["dingtalkId", "staffId", "unionId"]),
            st.none() | st.sampled_from(["", "$:LWCP_v1:$robot", "u1", "u2"]),
        ),
        max_size=3,
    ),
)
def test_to_message_agrees_with_the_converter_on_any_shape(
    base: Path, changes: dict[str, Any], dropped: set[str], at_users: list[Any] | None
) -> None:
    data = json.loads(base.read_text("utf-8"))["data"]
    if not isinstance(data, dict):
        return
    data = {k: v for k, v in {**data, **changes}.items() if k not in dropped}
    if at_users is not None:
        data["atUsers"] = at_users
        data.setdefault("chatbotUserId", "$:LWCP_v1:$robot")
    _same_message(*_messages(data), data)
