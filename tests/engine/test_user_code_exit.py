"""An agent or handler that raises SystemExit (sys.exit(), an argparse error in a seed
agent) ends that answer in an error card; the process, and every other answer, go on.
Before: SystemExit left its task and stopped the event loop, cards stuck "thinking"."""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from imrobots import AgentRequest, Robot, UserCodeExit
from imrobots.examples import SupportRobot
from imrobots.testing import robot_chat


def argparse_agent(request: AgentRequest) -> str:
    parser = argparse.ArgumentParser(prog="agent")
    parser.add_argument("--n", type=int)
    parser.parse_args(["--n", "many"])  # exits with 2
    return "never"


async def exiting_stream(request: AgentRequest) -> AsyncIterator[str]:
    yield "half an answer "
    sys.exit(3)


class ExitingHandler(Robot):
    async def on_message(self, message: Any, reply: Any) -> None:
        sys.exit(4)


@pytest.mark.parametrize(
    "robot",
    [
        pytest.param(lambda: SupportRobot(agent=argparse_agent), id="sync-agent"),
        pytest.param(lambda: SupportRobot(agent=exiting_stream), id="async-generator"),
        pytest.param(ExitingHandler, id="handler"),
    ],
)
async def test_system_exit_in_user_code_is_an_error_card(robot: Any) -> None:
    async with robot_chat(robot(), platform="memory", timeout=5) as chat:
        await chat.say("first")
        await chat.expect_error()
        await chat.say("second")  # the robot still answers
        await chat.expect_error()
        await chat.runtime.wait_idle(timeout=5)
        assert chat.runtime.stats.failed == 2


def test_user_code_exit_keeps_the_code() -> None:
    error = UserCodeExit(SystemExit(2))
    assert error.code == 2 and "SystemExit(2)" in str(error)
