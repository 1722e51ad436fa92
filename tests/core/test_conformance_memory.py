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


def test_a_planned_platform_can_be_built_for_its_conformance_tests() -> None:
    """Review finding: the suite's default platform refused a third-party plugin registered
    as planned (as the docs tell it to register) with "platform 'toy' is planned"."""
    from imrobots.errors import PluginError
    from imrobots.plugins import get_plugin_manager

    manager = get_plugin_manager()
    planned = [name for name, status in manager.platforms().items() if status.planned]
    if not planned:
        pytest.skip("no planned platform is registered in this environment")
    with pytest.raises(PluginError, match="planned"):
        manager.platform_spec(planned[0])
    assert manager.platform_spec(planned[0], planned=True).name == planned[0]
