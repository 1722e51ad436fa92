"""The DingTalk plugin passes the platform conformance suite on its emulator, in both card
modes (StandardCard, post then edit; AI card, native streaming)."""

from __future__ import annotations

import pytest

from imrobots.testing.conformance import EmulatorFactory, PlatformConformance
from imrobots_dingtalk.console import DingTalkConsoleAdapter


class TestDingTalkConformance(PlatformConformance):
    @pytest.fixture(params=["standard", "ai"])
    def emulator_factory(self, request: pytest.FixtureRequest) -> EmulatorFactory:
        return lambda: DingTalkConsoleAdapter(card_mode=request.param, ping_interval=None)
