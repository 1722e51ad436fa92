"""How a user tests their own robot with imrobots.testing (runs in this project's suite too)."""

from __future__ import annotations

from typing import Any

from imrobots.testing import robot_chat

from .robot import HelpdeskRobot, faq_agent


async def test_status_command_answers_in_plain_text() -> None:
    async with robot_chat(HelpdeskRobot(agent=faq_agent)) as chat:
        await chat.say("/status")
        await chat.expect_text(contains="operational")


async def test_questions_stream_and_unhappy_feedback_is_kept(robot_chat: Any) -> None:
    robot = HelpdeskRobot(agent=faq_agent)
    chat = await robot_chat(robot, platform="memory")
    await chat.say("When will you answer my ticket?")
    await chat.expect_thinking()
    await chat.expect_final(contains="one business day")
    await chat.press("No help")
    await chat.expect_feedback("no_help")
    assert [f.rating.value for f in robot.unhappy] == ["no_help"]
