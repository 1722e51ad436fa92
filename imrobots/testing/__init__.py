"""Test your robots against the platforms' emulators, with a short conversation DSL.

::

    from imrobots.testing import robot_chat

    async def test_support_answers_refunds():
        async with robot_chat(SupportRobot(agent=my_agent), platform="dingtalk") as chat:
            await chat.say("How do I get a refund?")
            await chat.expect_thinking()
            card = await chat.expect_final(contains="refund")
            await chat.press("Very helpful")
            await chat.expect_feedback("very_helpful")

With the pytest plugin (installed with imrobots), the ``robot_chat`` fixture does
the same and cleans up after the test.
"""

from __future__ import annotations

from .chat import Chat, ChatExpectationError, robot_chat

__all__ = ["Chat", "ChatExpectationError", "robot_chat"]
