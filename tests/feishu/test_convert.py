"""Feishu event payloads -> core events, and Feishu errors -> core errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from imrobots.platform import (
    Card,
    CardGone,
    FatalPlatformError,
    MessageKind,
    RateLimited,
    Refused,
    RetryableError,
)
from imrobots_feishu.emulator.frames import card_action_event, message_event

pytest.importorskip("lark_oapi")

from imrobots_feishu.api import classify
from imrobots_feishu.cards import card_json, degrade_tables
from imrobots_feishu.convert import MalformedPayload, to_card_action, to_message
from imrobots_feishu.messages import split_bytes, uuid_for

BOT = "ou_bot"


def mention(key: str, open_id: str, name: str, user_id: str = "u1") -> dict[str, Any]:
    return {"key": key, "id": {"open_id": open_id, "user_id": user_id}, "name": name}


def event(message_type: str, content: dict[str, Any], **kw: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"chat_type": "group", "chat_id": "oc_1", **kw}
    return message_event(
        app_id="cli_x",
        tenant_key="t",
        verification_token="v",
        message_id="om_1",
        sender_open_id="ou_alice",
        message_type=message_type,
        content=content,
        **options,
    )


def test_text_with_the_robots_mention_stripped_and_others_resolved() -> None:
    payload = event(
        "text",
        {"text": "@_user_1 ask @_user_2 about it"},
        mentions=[
            mention("@_user_1", BOT, "Robot", user_id=""),
            mention("@_user_2", "ou_bob", "Bob"),
        ],
    )
    message = to_message(payload, bot_open_id=BOT)
    assert message.text == "ask @Bob about it"
    assert message.mentioned
    assert [m.id for m in message.mentions] == ["ou_bob"]
    assert message.conversation.is_group
    assert message.sender.id == "ou_alice"


def test_group_message_without_the_robots_mention_is_not_mentioned() -> None:
    message = to_message(event("text", {"text": "hello"}), bot_open_id=BOT)
    assert not message.mentioned


def test_direct_message_is_mentioned() -> None:
    message = to_message(event("text", {"text": "hi"}, chat_type="p2p"), bot_open_id=BOT)
    assert message.mentioned and not message.conversation.is_group


def test_post_with_an_image() -> None:
    content = {
        "title": "Report",
        "content": [[{"tag": "text", "text": "see "}, {"tag": "img", "image_key": "img_1"}]],
    }
    message = to_message(event("post", content), bot_open_id=BOT)
    assert message.kind is MessageKind.RICH_TEXT
    assert message.text == "Report\nsee"
    [image] = message.attachments
    assert (image.kind, image.id, image.extra["message_id"]) == ("image", "img_1", "om_1")


@pytest.mark.parametrize(
    ("message_type", "content", "kind", "attachment"),
    [
        ("image", {"image_key": "img_2"}, MessageKind.IMAGE, "image"),
        ("file", {"file_key": "f_1", "file_name": "a.pdf"}, MessageKind.FILE, "file"),
        ("audio", {"file_key": "f_2", "duration": 3000}, MessageKind.AUDIO, "audio"),
        ("media", {"file_key": "f_3", "image_key": "i"}, MessageKind.VIDEO, "video"),
        ("sticker", {"file_key": "s"}, MessageKind.UNSUPPORTED, None),
    ],
)
def test_message_types(
    message_type: str, content: dict[str, Any], kind: MessageKind, attachment: str | None
) -> None:
    message = to_message(event(message_type, content), bot_open_id=BOT)
    assert message.kind is kind
    assert [a.kind for a in message.attachments] == ([attachment] if attachment else [])


def test_reply_carries_a_quote() -> None:
    message = to_message(event("text", {"text": "this"}, parent_id="om_0"), bot_open_id=BOT)
    assert message.quote is not None and message.quote.id == "om_0"


def test_malformed_payloads_raise() -> None:
    payload = event("text", {"text": "x"})
    payload["event"]["message"]["content"] = "not json"
    with pytest.raises(MalformedPayload):
        to_message(payload, bot_open_id=BOT)
    with pytest.raises(MalformedPayload):
        to_message({"header": {}, "event": {}}, bot_open_id=BOT)


def test_card_action() -> None:
    payload = card_action_event(
        app_id="cli_x",
        tenant_key="t",
        verification_token="v",
        operator_open_id="ou_alice",
        message_id="om_9",
        chat_id="oc_1",
        value={"v": "signed", "b": "button_1", "c": "card_7"},
    )
    action = to_card_action(payload)
    assert (action.card_id, action.value, action.action_id) == ("om_9", "signed", "button_1")
    assert action.sender.id == "ou_alice"
    assert action.id == payload["header"]["event_id"]


@pytest.mark.parametrize(
    ("status", "code", "headers", "error"),
    [
        (429, 99991400, {"x-ogw-ratelimit-reset": "7"}, RateLimited),
        (400, 230020, {}, RateLimited),
        (400, 200740, {}, CardGone),
        (400, 230011, {}, CardGone),
        (400, 99991672, {}, Refused),
        (500, 1000040343, {}, RetryableError),
        (400, 300317, {}, RetryableError),
        (400, 230025, {}, FatalPlatformError),
        (302, None, {"location": "http://elsewhere/"}, FatalPlatformError),
    ],
)
def test_errors_are_classified(
    status: int, code: int | None, headers: dict[str, str], error: type[Exception]
) -> None:
    found = classify("im.message.reply", status, code, "msg", headers)
    assert type(found) is error
    if code == 99991400:
        assert isinstance(found, RateLimited) and found.retry_after == 7.0


def test_split_bytes_and_uuid() -> None:
    text = "中文" * 100 + " tail"
    parts = split_bytes(text, 100)
    assert "".join(parts) == text
    assert all(len(p.encode()) <= 100 for p in parts)
    assert uuid_for("k") == "k"
    assert len(uuid_for("k" * 80)) == 50 and uuid_for("k" * 80) == uuid_for("k" * 80)


def test_tables_degrade_to_code_blocks() -> None:
    table = "before\n| a | b |\n|---|---|\n| 1 | 2 |\nafter"
    degraded = degrade_tables(table)
    assert "```\n| a | b |" in degraded and degraded.endswith("after")
    card = json.loads(json.dumps(card_json(Card(title="t"))))
    assert card["schema"] == "2.0" and card["config"]["update_multi"] is True
