"""The imrobots.testing DSL and pytest fixture, on the memory platform's emulator."""

from __future__ import annotations

from typing import Any

import pytest

from imrobots import Robot
from imrobots.demo_agent import DemoAgent
from imrobots.examples import SupportRobot
from imrobots.testing import ChatExpectationError, robot_chat


async def test_the_whole_conversation_dsl() -> None:
    async with robot_chat(SupportRobot(agent=DemoAgent(delay=0.002))) as chat:
        await chat.say("How do I get a refund?")
        thinking = await chat.expect_thinking()
        assert "thinking" in thinking["blocks"][0]["text"]
        await chat.expect_update()
        final = await chat.expect_final(contains="refund")
        assert [b["label"] for b in final["blocks"][-1]["buttons"]] == [
            "Very helpful",
            "Helpful",
            "Not much help",
            "No help",
        ]
        await chat.press("Not much help")
        feedback = await chat.expect_feedback("not_much_help")
        assert feedback.question == "How do I get a refund?"


async def test_expectations_fail_with_what_was_seen() -> None:
    async with robot_chat(Robot(agent=lambda request: "plain answer"), timeout=0.5) as chat:
        await chat.say("hi")
        await chat.expect_final(contains="plain")
        with pytest.raises(
            ChatExpectationError, match=r"a final card containing 'absent'.*plain answer"
        ):
            await chat.expect_final(contains="absent")


async def test_errors_and_rejections() -> None:
    def broken(request: Any) -> str:
        raise RuntimeError("agent down")

    async with robot_chat(Robot(agent=broken)) as chat:
        await chat.say("hello?")
        await chat.expect_error()
        await chat.say("not for the robot", mention=False)
        await chat.expect_no_answer()


async def test_fixture_cleans_up(robot_chat: Any, imrobots_platforms: list[str]) -> None:
    assert "memory" in imrobots_platforms
    chat = await robot_chat(Robot(agent=lambda request: f"echo {request.text}"))
    await chat.say("ping")
    await chat.expect_final(contains="echo ping")


PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


class _Sender(Robot):
    async def on_message(self, message: Any, reply: Any) -> None:
        if "image" in message.text:
            await reply.image(PNG, name="chart.png")
        else:
            await reply.file(b"quarterly figures", name="report.txt")


@pytest.mark.parametrize("platform", ["memory", "wecom"])
@pytest.mark.parametrize("what", ["image", "file"])
async def test_an_image_or_file_is_an_answer(platform: str, what: str) -> None:
    """Before: the memory and WeCom emulators show a sent image or file only as an upload
    event, which the kit left out, so expect_no_answer() passed on a robot that
    answered with one, and a failed expectation said it saw "nothing"."""
    if platform == "wecom":
        pytest.importorskip("wechatpy")
    async with robot_chat(_Sender(), platform=platform, timeout=5) as chat:
        await chat.say(f"send the {what}")
        with pytest.raises(ChatExpectationError, match="expected no answer") as failed:
            await chat.expect_no_answer()
        name = "chart.png" if what == "image" else "report.txt"
        assert f"{what} '{name}'" in str(failed.value)
        assert [(u["kind"], u["name"]) for u in chat.uploads()] == [(what, name)]


async def test_feishu_shows_a_sent_image_or_file_as_such() -> None:
    """Before: the Feishu emulator showed the robot's image and file messages as empty
    text, so the console and the kit saw a blank message ``''``."""
    pytest.importorskip("lark_oapi")
    async with robot_chat(_Sender(), platform="feishu", timeout=5) as chat:
        await chat.say("send the file")
        await chat.expect_text(contains="[file: report.txt]")
        await chat.say("send the image")
        await chat.expect_text(contains="[image]")


async def test_expect_no_answer_on_a_message_wecom_never_pushes() -> None:
    """WeCom's intelligent robot gets a group message only when @-mentioned. Before:
    expect_no_answer() waited for the robot to take in a message it never gets, and
    failed after the chat's timeout with "it did not (saw: nothing)"."""
    pytest.importorskip("wechatpy")
    robot = SupportRobot(agent=lambda request: "an answer")
    async with robot_chat(robot, platform="wecom", timeout=3) as chat:
        await chat.say("just chatting", mention=False)
        assert await chat.expect_no_answer() == "not delivered"
        await chat.say("and now to the robot")
        with pytest.raises(ChatExpectationError, match="expected no answer"):
            await chat.expect_no_answer()
