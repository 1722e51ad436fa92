"""The core conformance suite for WeCom, in both modes, on the WeCom emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from imrobots import Robot
from imrobots.agents import AgentRequest
from imrobots.emulation import EmulatorAdapter
from imrobots.platform import Platform
from imrobots.testing.conformance import EmulatorFactory, PlatformConformance
from imrobots_wecom.console import WeComConsoleAdapter


class TestWeComConformance(PlatformConformance):
    @pytest.fixture(params=["robot", "app"])
    def emulator_factory(self, request: pytest.FixtureRequest) -> EmulatorFactory:
        mode = request.param
        return lambda: WeComConsoleAdapter(mode=mode)

    def make_platform(self, emulator: EmulatorAdapter) -> Platform:
        # The platform is 'planned' until this suite passes, so it is built directly.
        platform = emulator.create_platform()
        assert platform is not None
        return platform

    async def test_redelivery_is_answered_once(self, emulator_factory: EmulatorFactory) -> None:
        """The suite's check waits for a card, which a card-less (buffered) app never
        shows; in app mode the same check is made on the messages."""
        if emulator_factory().mode == "robot":  # type: ignore[attr-defined]
            await super().test_redelivery_is_answered_once(emulator_factory)
            return
        questions: list[str] = []

        async def agent(request: AgentRequest) -> AsyncIterator[str]:
            questions.append(request.text)
            yield f"re-{request.text}-001"

        async with self.rig(emulator_factory, Robot(agent=agent)) as rig:
            conversation = rig.conversation("redeliver")
            message_id = await rig.say("first", conversation_id=conversation)
            await rig.robot_message(conversation, "re-first-001")
            await rig.emulator.redeliver(message_id)
            await rig.emulator.redeliver(message_id)
            await rig.say("second", conversation_id=conversation)
            await rig.robot_message(conversation, "re-second-001")
            await rig.runtime.wait_idle(timeout=self.timeout)
            assert questions == ["first", "second"], questions
            assert len(rig.robot_messages(conversation)) == 2
