"""Issue 12, Build 3 on WeCom: the long connection reports its state, reconnects and
inbound frames through the core's ``Platform.connection_status`` (read by ``/healthz``
and ``/metrics``)."""

from __future__ import annotations

from imrobots import Robot
from imrobots.emulation import EmulatorAdapter
from imrobots.health import ConnectionState
from imrobots.platform import Platform
from imrobots.testing.conformance import open_rig
from imrobots_wecom.console import WeComConsoleAdapter
from tests.engine.conftest import eventually


def _platform(emulator: EmulatorAdapter) -> Platform:
    platform = emulator.create_platform()
    assert platform is not None
    return platform


async def test_the_connection_reports_state_frames_and_reconnects() -> None:
    async with open_rig(
        lambda: WeComConsoleAdapter(), Robot(agent=lambda r: "ok"), make_platform=_platform
    ) as rig:
        status = rig.platform.connection_status
        assert status.reported and status.state is ConnectionState.CONNECTED
        assert status.connections == 1 and status.reconnects == 0
        assert status.last_frame is not None  # the subscription's answer
        before = status.last_frame
        await rig.say("question", conversation_id="g-health")
        await rig.final_card("g-health", "ok")
        assert status.last_frame > before
        await rig.emulator.fault("drop")
        await eventually(
            lambda: status.reconnects == 1 and status.state is ConnectionState.CONNECTED
        )
    assert status.state is ConnectionState.CLOSED
