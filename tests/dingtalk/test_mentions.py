"""The robot's own @-name is removed from a question however DingTalk glued it (issue 9,
case 2): a rich text whose first run is ``@HelpBot`` and second ``/server`` used to give
``@HelpBot/server``; the strip required a space after the name."""

from __future__ import annotations

from typing import Any

import pytest

from imrobots_dingtalk.convert import strip_mentions, to_message

NAMES = ("HelpBot",)


def rich_text(*runs: str) -> dict[str, Any]:
    return {
        "msgId": "msgMentions01",
        "msgtype": "richText",
        "conversationId": "cidGroup01",
        "conversationType": "2",
        "isInAtList": True,
        "senderStaffId": "user001",
        "content": {"richText": [{"text": run} for run in runs]},
    }


def text(content: str) -> dict[str, Any]:
    return {
        "msgId": "msgMentions02",
        "msgtype": "text",
        "conversationId": "cidGroup01",
        "conversationType": "2",
        "isInAtList": True,
        "senderStaffId": "user001",
        "text": {"content": content},
    }


def test_glued_name_in_rich_text_is_removed() -> None:
    """The issue's input: runs ``@HelpBot`` and ``/server``, ``robot_names = ["HelpBot"]``."""
    message = to_message(rich_text("@HelpBot", "/server"), robot_names=NAMES)
    assert message.text == "/server"


@pytest.mark.parametrize(
    ("runs", "expected"),
    [
        (("@HelpBot", "/server"), "/server"),
        (("@HelpBot", ", what is /server?"), "what is /server?"),
        (("@HelpBot", "：退款怎么办"), "退款怎么办"),
        (("@HelpBot", "?"), "?"),
        (("@HelpBot\u3000", "/server"), "/server"),
        (("@HelpBot\u3000/server",), "/server"),
        (("@HelpBot\u2005", "/server"), "/server"),
        (("＠HelpBot", " /server"), "/server"),
        (("@HelpBot ", "@HelpBot", " /server"), "/server"),
        (("@HelpBot", " restart ", "@HelpBot", " now"), "restart now"),
        (("please ", "@HelpBot", ", restart"), "please restart"),
    ],
    ids=[
        "glued-slash",
        "comma",
        "full-width-colon",
        "question-mark",
        "full-width-space-run",
        "full-width-space-inside",
        "four-per-em-space",
        "full-width-at",
        "repeated-at-start",
        "repeated-inside",
        "inside-with-comma",
    ],
)
def test_every_kind_of_glued_or_repeated_self_mention(runs: tuple[str, ...], expected: str) -> None:
    assert to_message(rich_text(*runs), robot_names=NAMES).text == expected


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (" @HelpBot/server", "/server"),
        ("@HelpBot,hi", "hi"),
        ("@HelpBot\u3000hi", "hi"),
        ("@HelpBot hi @HelpBot", "hi"),
        ("@HelpBotX hi", "@HelpBotX hi"),
        ("mail me at ops@HelpBot.example", "mail me at ops@HelpBot.example"),
        ("@Alice hi", "@Alice hi"),
    ],
    ids=["glued", "comma", "full-width-space", "trailing", "longer-name", "email", "other-user"],
)
def test_text_messages_alike(content: str, expected: str) -> None:
    assert to_message(text(content), robot_names=NAMES).text == expected


def test_longest_name_wins_and_names_in_spaceless_scripts_may_be_glued() -> None:
    names = ("Help", "HelpBot", "小助手")
    assert strip_mentions("@HelpBot/server", names) == "/server"
    assert strip_mentions("@Help/server", names) == "/server"
    assert strip_mentions("@小助手退款怎么办", names) == "退款怎么办"
    assert strip_mentions("@HelpBotter hi", names) == "@HelpBotter hi"


def test_no_names_only_trims() -> None:
    assert strip_mentions("  @HelpBot/server ", ()) == "@HelpBot/server"
