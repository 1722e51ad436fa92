"""The DSL and console adapter against the DingTalk emulator, in both card modes."""

from __future__ import annotations

import pytest

from imrobots.demo_agent import DemoAgent
from imrobots.examples import SupportRobot
from imrobots.testing import robot_chat

pytest.importorskip("dingtalk_stream")


@pytest.mark.parametrize("card_mode", ["standard", "ai"])
async def test_support_conversation_on_dingtalk(card_mode: str) -> None:
    async with robot_chat(
        SupportRobot(agent=DemoAgent(delay=0.01)),
        platform="dingtalk",
        emulator_options={"card_mode": card_mode},
    ) as chat:
        await chat.say("How do I get an invoice?")
        await chat.expect_thinking()
        await chat.expect_update()
        final = await chat.expect_final(contains="invoice")
        labels = [b["label"] for b in final["blocks"][-1]["buttons"]]
        assert labels == ["Very helpful", "Helpful", "Not much help", "No help"]
        await chat.press("Helpful")
        feedback = await chat.expect_feedback("helpful")
        assert feedback.platform == "dingtalk" and feedback.question == "How do I get an invoice?"


async def test_rejected_group_message_on_dingtalk() -> None:
    async with robot_chat(SupportRobot(agent=DemoAgent(delay=0)), platform="dingtalk") as chat:
        await chat.say("just chatting", mention=False)
        await chat.expect_no_answer()
