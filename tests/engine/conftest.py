"""Fixtures and helpers of the engine tests: a runtime on the in-memory platform.

Nothing here sleeps to wait for something: tests wait on ``platform.wait_for``,
``runtime.wait_idle``, events, or :func:`eventually` (a poll with a deadline).
Agents do sleep, because sleeping is how they simulate a model writing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from imrobots.agents import AgentRequest
from imrobots.cards import Card, Markdown
from imrobots.memory import MemoryCard, MemoryPlatform, MemorySettings
from imrobots.models import Feedback, Message
from imrobots.policy import AccessPolicy
from imrobots.robot import Robot
from imrobots.runtime import RobotRuntime, RuntimeOptions
from imrobots.streaming import AnswerResult

DEADLINE = 10.0
"""Seconds a condition may take before a test fails (generous: CI machines are slow)."""

FAST = {"app_rate": 10_000.0}
"""Memory settings of a platform whose quota never matters."""


async def eventually(
    check: Callable[[], bool], *, within: float = DEADLINE, what: str = ""
) -> None:
    """Poll ``check`` until it holds; fail after ``within`` seconds (naming ``what``)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within} s{f': {what}' if what else ''}")
        await asyncio.sleep(0.005)


class Recorder:
    """Runtime hooks as plain attributes returning lists, like ``manager.hook`` does."""

    def __init__(self) -> None:
        self.received: list[Message] = []
        self.rejected: list[tuple[Message, str]] = []
        self.finished: list[tuple[Message, AnswerResult]] = []
        self.feedback: list[Feedback] = []

    def message_received(self, robot: str, message: Message) -> list[None]:
        self.received.append(message)
        return [None]

    def message_rejected(self, robot: str, message: Message, reason: str) -> list[None]:
        self.rejected.append((message, reason))
        return [None]

    def reply_finished(self, robot: str, message: Message, result: AnswerResult) -> list[None]:
        self.finished.append((message, result))
        return [None]

    def feedback_received(self, robot: str, feedback: Feedback) -> list[None]:
        self.feedback.append(feedback)
        return [None]


def words(count: int, *, prefix: str = "w") -> list[str]:
    """``count`` distinct deltas, each ending with a space."""
    return [f"{prefix}{i} " for i in range(count)]


def streaming_agent(
    chunks: list[str], *, seconds: float = 0.0, first_delay: float = 0.0
) -> Callable[[AgentRequest], AsyncIterator[str]]:
    """An async agent yielding ``chunks`` (deltas) spread over ``seconds``."""
    pause = seconds / len(chunks) if chunks else 0.0

    async def agent(request: AgentRequest) -> AsyncIterator[str]:
        if first_delay:
            await asyncio.sleep(first_delay)
        for chunk in chunks:
            yield chunk
            if pause:
                await asyncio.sleep(pause)

    return agent


class AgentRobot(Robot):
    """The default robot: streams its agent's answer (history and all)."""


def all_terminal(platform: MemoryPlatform) -> bool:
    """Every card the platform holds is in a terminal state (none left thinking or streaming)."""
    return all(c.status is not None and c.status.is_terminal for c in platform.cards.values())


def answer_cards(platform: MemoryPlatform, message: Message) -> list[MemoryCard]:
    """The cards answering ``message``, in the order they were sent."""
    return [c for c in platform.cards.values() if c.reply_to == message.id]


def joined_text(cards: list[MemoryCard]) -> str:
    """The markdown of the current version of each card, concatenated."""
    return "".join(c.text for c in cards)


def squash(text: str) -> str:
    """``text`` without whitespace, to compare text cut at whitespace boundaries."""
    return "".join(text.split())


def ops(platform: MemoryPlatform, *, ok: bool = True) -> list[str]:
    return [c.op for c in platform.calls if c.ok is ok]


def markdown_of(version: Card | str) -> str:
    if isinstance(version, Card):
        return "\n\n".join(e.text for e in version.elements if isinstance(e, Markdown))
    return version


Factory = Callable[..., Awaitable[tuple[MemoryPlatform, RobotRuntime]]]


@pytest.fixture
async def make_runtime() -> AsyncIterator[Factory]:
    """Start a runtime on a fresh memory platform; every runtime is stopped at teardown.

    ``make_runtime(agent=..., robot=..., hooks=..., policy=..., **settings_and_options)``:
    keywords naming a :class:`MemorySettings` field go to the platform, those naming a
    :class:`RuntimeOptions` field to the runtime.
    """
    started: list[RobotRuntime] = []
    setting_names = {a.name for a in MemorySettings.__attrs_attrs__}
    option_names = {a.name for a in RuntimeOptions.__attrs_attrs__}

    async def make(
        *,
        agent: object | None = None,
        robot: Robot | None = None,
        hooks: Any = None,
        policy: AccessPolicy | None = None,
        feedback_secret: str | None = "test-secret",
        name: str = "bot",
        **kwargs: Any,
    ) -> tuple[MemoryPlatform, RobotRuntime]:
        unknown = set(kwargs) - setting_names - option_names
        assert not unknown, f"unknown keywords: {unknown}"
        settings = MemorySettings(**{k: v for k, v in kwargs.items() if k in setting_names})
        options = RuntimeOptions(**{k: v for k, v in kwargs.items() if k in option_names})
        platform = MemoryPlatform(settings)
        runtime = RobotRuntime(
            name=name,
            robot=robot if robot is not None else AgentRobot(agent=agent),
            platform=platform,
            options=options,
            policy=policy,
            feedback_secret=feedback_secret,
            hooks=hooks,
        )
        await runtime.start()
        started.append(runtime)
        return platform, runtime

    yield make
    for runtime in started:
        await runtime.stop(timeout=5.0)
