"""The testing kit cannot lie: expect_no_answer waits for the robot, expect_update takes
answers in one piece, expect_streamed requires streaming, and the docs' example runs as
written, with no pytest settings."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from imrobots import Robot
from imrobots.agents import AgentRequest
from imrobots.examples import SupportRobot
from imrobots.testing import ChatExpectationError, robot_chat

DOCS = Path(__file__).resolve().parents[2] / "docs"

PLATFORMS = ["memory"]
try:
    import dingtalk_stream  # noqa: F401

    PLATFORMS.append("dingtalk")
except ImportError:
    pass


def hello(request: AgentRequest) -> str:
    return "Hello there"


class Slow:
    """Streams three words a quarter of a second apart: several updates."""

    stream_mode = "delta"

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        for word in ("one ", "two ", "three"):
            await asyncio.sleep(0.25)
            yield word


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_expect_no_answer_fails_when_an_answer_comes(platform: str) -> None:
    async with robot_chat(SupportRobot(agent=hello), platform=platform) as chat:
        await chat.say("hi", mention=True)
        with pytest.raises(ChatExpectationError, match=r"expected no answer \(received\)"):
            await chat.expect_no_answer()
        await chat.expect_final(contains="Hello there")


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_expect_no_answer_passes_for_a_rejected_message(platform: str) -> None:
    async with robot_chat(SupportRobot(agent=hello), platform=platform) as chat:
        await chat.say("just chatting", mention=False)
        assert await chat.expect_no_answer() == "rejected: robot not mentioned"


async def test_expect_no_answer_passes_for_a_robot_that_stays_silent() -> None:
    class Silent(Robot):
        async def on_message(self, message: Any, reply: Any) -> None:
            return None

    async with robot_chat(Silent()) as chat:
        await chat.say("anyone?")
        assert await chat.expect_no_answer() == "received"


async def test_expect_no_answer_needs_a_message() -> None:
    async with robot_chat(SupportRobot(agent=hello)) as chat:
        with pytest.raises(ChatExpectationError, match="needs a say"):
            await chat.expect_no_answer()


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_expect_update_takes_an_answer_in_one_piece(platform: str) -> None:
    async with robot_chat(SupportRobot(agent=hello), platform=platform, timeout=3) as chat:
        await chat.say("hi")
        await chat.expect_thinking()
        view = await chat.expect_update(contains="Hello")
        assert view["status"] in ("streaming", "final")
        await chat.expect_final(contains="Hello there")
        with pytest.raises(ChatExpectationError, match="1 streamed update"):
            await chat.expect_streamed()


async def test_expect_streamed_sees_the_updates_of_a_streaming_answer() -> None:
    async with robot_chat(SupportRobot(agent=Slow())) as chat:
        await chat.say("count")
        view = await chat.expect_streamed(updates=2)
        assert view["status"] == "streaming"
        await chat.expect_final(contains="one two three")


def _examples(page: Path) -> dict[str, str]:
    """The page's Python blocks that are whole test files (first line ``# test_*.py``)."""
    text = page.read_text(encoding="utf-8")
    found = {}
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL):
        first = block.splitlines()[0]
        name = re.fullmatch(r"# (test_\w+\.py)", first)
        if name:
            found[name.group(1)] = block
    return found


def test_the_docs_testing_examples_run_as_written(tmp_path: Path) -> None:
    pytest.importorskip("dingtalk_stream")
    examples = _examples(DOCS / "testing.md")
    assert {"test_support.py", "test_echo.py", "test_no_early_pass.py"} <= set(examples)
    for name, code in examples.items():
        (tmp_path / name).write_text(code, encoding="utf-8")
    # a directory of its own: no pytest settings, no conftest, pytest-asyncio in strict mode
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(tmp_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b4 passed\b", result.stdout), result.stdout


class Halves(Robot):
    """Sends text with a lone surrogate (half of an emoji), and streams an emoji cut
    between its two halves: emulators failed with 500 or lost their connection on the
    text, and the streamed halves showed as two U+FFFD."""

    async def on_message(self, message: Any, reply: Any) -> None:
        await reply.text("pong \ud800 x")

        async def halves() -> AsyncIterator[str]:
            for chunk in ("smile ", "\ud83d", "\ude00", " done"):
                yield chunk

        await reply.stream(halves())


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_lone_surrogates_reach_the_chat_as_replacement_characters(platform: str) -> None:
    async with robot_chat(Halves(), platform=platform) as chat:
        await chat.say("hi", mention=True)
        await chat.expect_text(contains="pong \ufffd x")
        await chat.expect_final(contains="smile \U0001f600 done")
