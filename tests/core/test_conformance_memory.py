"""The memory platform passes the platform conformance suite, in edit and native modes."""

from __future__ import annotations

import pytest

from imrobots.emulation import MemoryEmulator
from imrobots.memory import MemorySettings
from imrobots.testing.conformance import EmulatorFactory, PlatformConformance


class TestMemoryConformance(PlatformConformance):
    @pytest.fixture(params=["edit", "native"])
    def emulator_factory(self, request: pytest.FixtureRequest) -> EmulatorFactory:
        # A server-side quota the client-side limiter must keep under: the concurrency
        # check makes more calls than fit in one second of it.
        settings = MemorySettings(streaming=request.param, quota=50, app_rate=50)
        return lambda: MemoryEmulator(settings)
