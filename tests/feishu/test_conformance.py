"""The Feishu platform passes the core conformance suite on its emulator, with answers
streamed through CardKit and through PATCHed card messages, over the long connection.

(The HTTP event-callback inbound mode is not in this version; see
``docs/platforms/feishu.md``.)
"""

from __future__ import annotations

import pytest

from imrobots.config import structure
from imrobots.emulation import EmulatorAdapter
from imrobots.platform import Platform
from imrobots.testing.conformance import EmulatorFactory, PlatformConformance

pytest.importorskip("lark_oapi")

from imrobots_feishu.console import FeishuConsoleAdapter
from imrobots_feishu.platform import FeishuPlatform, FeishuSettings


class TestFeishuConformance(PlatformConformance):
    @pytest.fixture(params=["cardkit", "patch"])
    def emulator_factory(self, request: pytest.FixtureRequest) -> EmulatorFactory:
        mode = request.param
        return lambda: FeishuConsoleAdapter(card_mode=mode)

    def make_platform(self, emulator: EmulatorAdapter) -> Platform:
        settings = structure(emulator.robot_settings(), FeishuSettings, path="feishu emulator")
        return FeishuPlatform(settings)
