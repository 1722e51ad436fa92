"""Issue 9, cases 4, 5 and 7 on DingTalk itself: the log lines that say why cards were
skipped, and questions with no text (a bare @robot, a voice note nobody could recognise)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from imrobots import Message, Reply, Robot
from imrobots_dingtalk.emulator import DingTalkEmulator

from .support import APP, QUESTION, running


class _Asked(Robot):
    """Records what its agent would be asked; the default empty-message reply stays."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    async def on_message(self, message: Message, reply: Reply) -> None:
        self.asked.append(message.text)
        await reply.markdown("answered")


@pytest.mark.parametrize(
    ("msgtype", "content", "text"),
    [
        ("text", None, " "),  # a bare @robot: DingTalk sends the text without the mention
        ("audio", {"recognition": "", "downloadCode": "dc-voice", "duration": 2000}, ""),
    ],
    ids=["bare-mention", "voice-unrecognised"],
)
async def test_a_question_without_text_gets_the_default_reply(
    emu: DingTalkEmulator, msgtype: str, content: dict[str, Any] | None, text: str
) -> None:
    """Before: the agent was called with '' and an answer card was drawn."""
    robot = _Asked()
    async with running(emu, robot=robot) as runtime:
        await emu.push_message(APP, text=text, msgtype=msgtype, content=content)
        await emu.wait_for(lambda: len(emu.webhook_messages) == 1, 10, what="the reply")
        await runtime.wait_idle(10)
    assert robot.asked == []  # the agent was not asked anything
    (reply,) = emu.webhook_messages
    assert reply.text == Robot.empty_message_reply
    assert not emu.cards


async def test_an_unpublished_robot_says_why_cards_were_skipped(
    emu: DingTalkEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running(emu) as runtime:
        await emu.push_message(APP, text=QUESTION, conversation_type="direct", sender_staff_id="")
        await emu.wait_for(lambda: len(emu.webhook_messages) == 1, 10)
        await runtime.wait_idle(10)
    lines = [r.getMessage() for r in caplog.records if "senderStaffId" in r.getMessage()]
    assert lines and "published" in lines[0] and "sessionWebhook" in lines[0]


async def test_a_missing_card_permission_is_logged_once_as_an_error(
    emu: DingTalkEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    emu.revoke_card_permissions(APP)
    caplog.set_level(logging.INFO)
    async with running(emu) as runtime:
        for index in range(3):
            await emu.push_message(APP, text=QUESTION, conversation_id=f"cid-perm-{index}")
            await emu.wait_for(lambda i=index: len(emu.webhook_messages) == i + 1, 10)
        await runtime.wait_idle(10)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    refusals = [r.getMessage() for r in errors if "refuses cards" in r.getMessage()]
    assert len(refusals) == 1, refusals  # the first failure, once: later answers skip cards
    assert "AccessTokenPermissionDenied" in refusals[0] or "permission" in refusals[0]
