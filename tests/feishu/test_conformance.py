"""The Feishu platform passes the core conformance suite on its emulator, with answers
streamed through CardKit and through PATCHed card messages, with events arriving over
the long connection and as HTTP callbacks (encrypted and signed).
"""

from __future__ import annotations

import pytest

from imrobots.testing.conformance import EmulatorFactory, PlatformConformance

pytest.importorskip("lark_oapi")

from imrobots_feishu.console import FeishuConsoleAdapter


class TestFeishuConformance(PlatformConformance):
    @pytest.fixture(
        params=[
            ("cardkit", "long_connection"),
            ("patch", "long_connection"),
            ("cardkit", "callback"),
            ("patch", "callback"),
        ],
        ids=lambda p: "-".join(p),
    )
    def emulator_factory(self, request: pytest.FixtureRequest) -> EmulatorFactory:
        card_mode, mode = request.param
        return lambda: FeishuConsoleAdapter(card_mode=card_mode, mode=mode)
