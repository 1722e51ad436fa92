"""Robot-mode payloads -> core messages."""

from __future__ import annotations

from typing import Any

from imrobots.platform import MessageKind
from imrobots_wecom.convert import to_message


def _body(msgtype: str, part: Any, **extra: Any) -> dict[str, Any]:
    return {
        "msgid": "m1",
        "aibotid": "bot",
        "chattype": "single",
        "from": {"userid": "alice"},
        "msgtype": msgtype,
        msgtype: part,
        **extra,
    }


def test_group_text_loses_the_robot_mention() -> None:
    body = _body("text", {"content": "@Support  how do I reset?"}, chattype="group", chatid="g1")
    message = to_message(body, req_id="r", generation=1)
    assert message.text == "how do I reset?"
    assert message.conversation.id == "g1" and message.conversation.is_group
    named = to_message(body, req_id="r", generation=1, robot_names=("Support",))
    assert named.text == "how do I reset?"
    assert message.raw["req_id"] == "r" and message.raw["generation"] == 1


def test_mixed_voice_file_and_quote() -> None:
    mixed = _body(
        "mixed",
        {
            "msg_item": [
                {"msgtype": "text", "text": {"content": "see this"}},
                {"msgtype": "image", "image": {"url": "https://x.qq.com/i", "aeskey": "k"}},
            ]
        },
        quote={"msgtype": "text", "text": {"content": "earlier words"}},
    )
    message = to_message(mixed, req_id="r", generation=1)
    assert (message.kind, message.text) == (MessageKind.RICH_TEXT, "see this")
    assert message.attachments[0].kind == "image"
    assert message.attachments[0].extra["aeskey"] == "k"
    assert message.quote is not None and message.quote.text == "earlier words"
    voice = to_message(_body("voice", {"content": "spoken text"}), req_id="r", generation=1)
    assert (voice.kind, voice.text, voice.attachments[0].text) == (
        MessageKind.AUDIO,
        "spoken text",
        "spoken text",
    )
    file = to_message(
        _body("file", {"url": "https://x.qq.com/f", "aeskey": "k"}), req_id="r", generation=1
    )
    assert file.kind is MessageKind.FILE and file.attachments[0].url == "https://x.qq.com/f"
    unknown = to_message(_body("location", {}), req_id="r", generation=1)
    assert unknown.kind is MessageKind.UNSUPPORTED


def test_robot_names_strip_only_a_whole_name_the_longest_first() -> None:
    """``robot_names = ["Support"]`` turned "@Supporter hi" into "er hi", names where one
    starts another (["Help", "HelpDesk"]) left "Desk ..." of "@HelpDesk", and a blank
    name stripped only the "@"."""

    def text(content: str, names: tuple[str, ...]) -> str:
        body = _body("text", {"content": content}, chattype="group", chatid="g1")
        return to_message(body, req_id="r", generation=1, robot_names=names).text

    assert text("@Supporter hi", ("Support",)) == "@Supporter hi"
    assert text("@Support hi", ("Support",)) == "hi"
    assert text("@Support, hi", ("Support",)) == ", hi"
    assert text("@HelpDesk how?", ("Help", "HelpDesk")) == "how?"
    assert text("@Help how?", ("Help", "HelpDesk")) == "how?"
    assert text("@助手你好", ("助手",)) == "你好"  # a Chinese name may be glued to the text
    assert text("@Support hi", ("",)) == "hi"  # blank names ignored: any leading @word
