"""The example robot on the in-memory platform: thinking card, then final card with feedback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from imrobots import FeedbackRating, Robot, RobotRuntime
from imrobots.cards import Card, CardStatus
from imrobots.demo_agent import DemoAgent
from imrobots.examples import SupportRobot
from imrobots.memory import MemoryPlatform, MemorySettings


@pytest.fixture
async def running() -> AsyncIterator[tuple[MemoryPlatform, RobotRuntime]]:
    platform = MemoryPlatform(MemorySettings(update_interval=0.05))
    runtime = RobotRuntime(
        name="support", robot=SupportRobot(agent=DemoAgent(delay=0.005)), platform=platform
    )
    await runtime.start()
    yield platform, runtime
    await runtime.stop()


async def test_thinking_then_final_card_with_four_feedback_buttons(
    running: tuple[MemoryPlatform, RobotRuntime],
) -> None:
    platform, runtime = running
    message = await platform.say("How do I get a refund?")
    await platform.wait_for(lambda: len(platform.cards) == 1)
    [card] = platform.cards.values()
    first = card.history[0][1]
    assert isinstance(first, Card) and first.status is CardStatus.THINKING
    assert first.title == "How do I get a refund?"
    await platform.wait_for(lambda: card.status is CardStatus.FINAL, timeout=10)
    final = card.current
    assert isinstance(final, Card)
    assert "refund" in final.markdown.lower()
    assert [b.label for b in final.buttons] == [r.label for r in FeedbackRating]
    assert card.reply_to == message.id
    # pressing a button stores verified feedback with the question and answer
    await platform.press(card.id, FeedbackRating.VERY_HELPFUL)
    await runtime.wait_idle(timeout=5)
    [feedback] = await runtime.store.list_feedback()
    assert feedback.rating is FeedbackRating.VERY_HELPFUL
    assert feedback.question == "How do I get a refund?"
    assert feedback.answer == final.markdown


async def test_the_seed_robot_is_about_ten_lines() -> None:
    import inspect

    import imrobots.examples

    source = inspect.getsource(imrobots.examples.SupportRobot)
    code_lines = [line for line in source.splitlines() if line.strip() and '"""' not in line]
    assert len(code_lines) <= 10
    assert issubclass(SupportRobot, Robot)


async def test_reply_text_and_markdown() -> None:
    class Echo(Robot):
        async def on_message(self, message, reply):  # type: ignore[no-untyped-def]
            await reply.text(f"you said: {message.text}")
            await reply.markdown("**bold**")

    platform = MemoryPlatform()
    runtime = RobotRuntime(name="echo", robot=Echo(), platform=platform)
    await runtime.start()
    try:
        await platform.say("hello", conversation="c9")
        await platform.wait_for(lambda: len(platform.texts) == 2)
        assert platform.texts == [("c9", "you said: hello"), ("c9", "**bold**")]
    finally:
        await runtime.stop()


async def test_robot_without_agent_ends_in_an_error_card_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    platform = MemoryPlatform()
    runtime = RobotRuntime(name="bare", robot=SupportRobot(), platform=platform)
    await runtime.start()
    try:
        await platform.say("anyone?")
        await runtime.wait_idle(timeout=5)
        [card] = platform.cards.values()
        assert card.status is CardStatus.ERROR
        assert "has no agent: set [robots.NAME.agent] in the config" in caplog.text
    finally:
        await runtime.stop()
