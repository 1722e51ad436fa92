"""The DingTalk emulator as the console sees it (issue 9, emulator and console fidelity).

- A direct chat shows the answer beside the question: DingTalk files a 1:1 card under
  the robot's own conversation with the user, and the adapter maps it back to the
  conversation the user spoke in (``direct`` in the console).
- An AI card's status is what DingTalk would show, read from the wire: its state
  (processing, inputting, finished, failed: the streaming call's ``isFinalize`` /
  ``isError`` and the ``flowStatus`` param) and, for a failed card, the ``stopReason``
  param. Before, an interrupted answer was finalized (DingTalk: finished) and the console
  called it interrupted by finding "(answer interrupted)" in its text; an answer that
  merely quoted those words was called interrupted too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from imrobots import Robot
from imrobots.agents import AgentRequest
from imrobots.demo_agent import DemoAgent
from imrobots.examples import SupportRobot
from imrobots.testing import robot_chat

AI = {"card_mode": "ai"}


async def test_the_direct_chat_shows_the_answer() -> None:
    """The console's "direct" conversation holds the user's message and the answer card."""
    async with robot_chat(
        SupportRobot(agent=DemoAgent(delay=0)), platform="dingtalk", emulator_options=AI
    ) as chat:
        emulator = chat.emulator
        await emulator.say(
            text="How do I get a refund?",
            conversation_id="direct",
            group=False,
            user_id="alice",
            user_name="Alice",
            mention=True,
        )
        await emulator.wait_for(
            lambda: any(
                c["conversation_id"] == "direct" and c["status"] == "final"
                for c in emulator.state()["cards"]
            ),
            10,
        )
        state = emulator.state()
    messages = [m for m in state["messages"] if m["conversation_id"] == "direct"]
    assert [m["text"] for m in messages] == ["How do I get a refund?"]
    (card,) = [c for c in state["cards"] if c["conversation_id"] == "direct"]
    assert card["state"] == "finished" and "within 30 days" in card["blocks"][0]["text"]
    assert all(c["conversation_id"] == "direct" for c in state["cards"])


class _Endless:
    """Streams two words, then waits for ever (until the runtime stops)."""

    stream_mode = "delta"

    def __init__(self) -> None:
        self.streaming = asyncio.Event()

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        yield "Refunds take "
        yield "five days "
        self.streaming.set()
        await asyncio.Event().wait()


def _states(chat: Any) -> list[tuple[str, str]]:
    """(state, status) of every view of the chat's one card, without repeats."""
    (views,) = chat.cards().values()
    seen: list[tuple[str, str]] = []
    for view in views:
        pair = (view["state"], view["status"])
        if not seen or seen[-1] != pair:
            seen.append(pair)
    return seen


async def test_an_interrupted_ai_answer_is_shown_failed_as_dingtalk_shows_it() -> None:
    agent = _Endless()
    async with robot_chat(Robot(agent=agent), platform="dingtalk", emulator_options=AI) as chat:
        await chat.say("How long do refunds take?")
        await chat.expect_update(contains="five days")
        await chat.runtime.stop(timeout=5)
        card = await chat.expect_interrupted()
        assert card["state"] == "failed"
        assert "five days" in card["blocks"][0]["text"]
        assert _states(chat) == [
            ("processing", "thinking"),
            ("inputting", "streaming"),
            ("failed", "interrupted"),
        ]


async def test_the_status_is_never_read_from_the_text() -> None:
    """An answer that quotes the core's note finishes as final, not interrupted."""

    async def quoting(request: AgentRequest) -> str:
        return "The robot prints (answer interrupted) when it is stopped mid-answer."

    async with robot_chat(Robot(agent=quoting), platform="dingtalk", emulator_options=AI) as chat:
        await chat.say("What does an interrupted answer say?")
        card = await chat.expect_final(contains="(answer interrupted)")
        assert card["state"] == "finished"


async def test_an_agent_error_is_failed_and_error() -> None:
    async def broken(request: AgentRequest) -> str:
        raise RuntimeError("model exploded")

    async with robot_chat(Robot(agent=broken), platform="dingtalk", emulator_options=AI) as chat:
        await chat.say("boom")
        card = await chat.expect_error()
        assert card["state"] == "failed"


async def test_the_call_inspector_gets_each_calls_request_and_response() -> None:
    """The console's call inspector shows request and response JSON for DingTalk calls too
    (secrets redacted by the emulator)."""
    async with robot_chat(
        SupportRobot(agent=DemoAgent(delay=0)), platform="dingtalk", emulator_options=AI
    ) as chat:
        await chat.say("How do I get a refund?")
        await chat.expect_final("refund")
        calls = chat.emulator.state()["calls"]
        creates = [c for c in calls if c["route"].endswith("/createAndDeliver")]
        assert creates and isinstance(creates[0]["request"], dict)
        assert creates[0]["request"].get("outTrackId") and creates[0]["response"] is not None
        tokens = [c for c in calls if "accessToken" in c["route"]]
        assert all("appSecret" not in str(c.get("request")) or "***" in str(c["request"])
                   for c in tokens)  # fmt: skip
