"""The core conformance suite for WeCom, in both modes, on the WeCom emulator."""

from __future__ import annotations

import pytest

from imrobots.testing.conformance import EmulatorFactory, PlatformConformance
from imrobots_wecom.console import WeComConsoleAdapter


class TestWeComConformance(PlatformConformance):
    @pytest.fixture(params=["robot", "app"])
    def emulator_factory(self, request: pytest.FixtureRequest) -> EmulatorFactory:
        mode = request.param
        return lambda: WeComConsoleAdapter(mode=mode)
