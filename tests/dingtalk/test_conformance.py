"""The DingTalk plugin passes the platform conformance suite on its emulator, in every card
mode: StandardCard (post then edit), and AI cards (native streaming) on DingTalk's
built-in template (the default) and on a template of one's own."""

from __future__ import annotations

import pytest

from imrobots.testing.conformance import EmulatorFactory, PlatformConformance
from imrobots_dingtalk.console import DingTalkConsoleAdapter

MODES = {
    "standard": {"card_mode": "standard"},
    "ai-builtin-template": {"card_mode": "ai"},
    "ai-own-template": {"card_mode": "ai", "ai_template_id": "imrobots-answer.schema"},
}


class TestDingTalkConformance(PlatformConformance):
    @pytest.fixture(params=list(MODES))
    def emulator_factory(self, request: pytest.FixtureRequest) -> EmulatorFactory:
        options = MODES[request.param]
        return lambda: DingTalkConsoleAdapter(**options, ping_interval=None)  # type: ignore[arg-type]
