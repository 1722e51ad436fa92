"""Test your robots against the platforms' emulators, with a short conversation DSL.

::

    from imrobots.examples import SupportRobot
    from imrobots.testing import robot_chat


    def answer(request):
        return "You can ask for a refund within 30 days."


    async def test_support_answers_refunds():
        async with robot_chat(SupportRobot(agent=answer), platform="dingtalk") as chat:
            await chat.say("How do I get a refund?")
            await chat.expect_thinking()
            card = await chat.expect_final(contains="refund")
            await chat.press("Very helpful")
            await chat.expect_feedback("very_helpful")

With the pytest plugin (installed with imrobots), the ``robot_chat`` fixture does
the same and cleans up after the test, and ``async def`` tests that use the kit run
on pytest-asyncio with no settings (see ``docs/testing.md``).

Platform plugins run the conformance suite, :class:`PlatformConformance` from
:mod:`imrobots.testing.conformance`, against their own emulator (it imports
pytest, so it is loaded only when asked for).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .chat import Chat, ChatExpectationError, robot_chat

if TYPE_CHECKING:
    from .conformance import EmulatorFactory, PlatformConformance

__all__ = ["Chat", "ChatExpectationError", "EmulatorFactory", "PlatformConformance", "robot_chat"]


def __getattr__(name: str) -> Any:
    if name in ("EmulatorFactory", "PlatformConformance"):
        from . import conformance

        return getattr(conformance, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
