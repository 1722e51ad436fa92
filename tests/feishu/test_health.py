"""Issue 12, Build 3 on Feishu: both inbound modes report their state, inbound frames and
rejected requests through the core's ``Platform.connection_status`` (read by ``/healthz``,
``/metrics`` and the stop summary)."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
import pytest

pytest.importorskip("lark_oapi")

from imrobots import Robot
from imrobots.health import ConnectionState, HealthServer
from imrobots.testing.conformance import open_rig
from imrobots_feishu.console import FeishuConsoleAdapter
from imrobots_feishu.platform import FeishuPlatform
from tests.engine.conftest import eventually


async def test_the_long_connection_reports_state_frames_and_reconnects() -> None:
    async with open_rig(lambda: FeishuConsoleAdapter(), Robot(agent=lambda r: "ok")) as rig:
        status = rig.platform.connection_status
        assert status.reported and status.state is ConnectionState.CONNECTED
        assert status.connections == 1 and status.reconnects == 0
        await eventually(lambda: status.last_frame is not None)  # the first pong
        before = status.last_frame
        assert before is not None
        await rig.say("question", conversation_id="g-health")
        await rig.final_card("g-health", "ok")
        assert status.last_frame is not None and status.last_frame > before
        emulator = rig.emulator
        assert isinstance(emulator, FeishuConsoleAdapter)
        assert await emulator.emulator.drop_connections() == 1
        await eventually(
            lambda: status.reconnects == 1 and status.state is ConnectionState.CONNECTED
        )
        assert status.connections == 2
    assert status.state is ConnectionState.CLOSED


async def test_callback_mode_reports_listening_callbacks_and_forged_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Connected once the endpoint listens, a frame per accepted callback, each forged
    callback counted as rejected: in ``/healthz``, ``/metrics`` and the stop summary."""
    caplog.set_level(logging.INFO, logger="imrobots.runtime")
    async with open_rig(
        lambda: FeishuConsoleAdapter(mode="callback"),
        Robot(agent=lambda r: "ok"),
    ) as rig:
        platform = rig.platform
        assert isinstance(platform, FeishuPlatform) and platform.callback_url is not None
        status = platform.connection_status
        assert status.reported and status.state is ConnectionState.CONNECTED
        assert status.connections == 1
        frames = status.last_frame
        await rig.say("question", conversation_id="g-cb-health")
        await rig.final_card("g-cb-health", "ok")
        assert status.last_frame is not None and status.last_frame != frames
        async with aiohttp.ClientSession() as http:
            for body in (b'{"encrypt": "AAAA"}', b"not json", b'{"token": "forged"}'):
                async with http.post(platform.callback_url, data=body) as response:
                    assert response.status == 401
            assert status.rejections == 3 and rig.runtime.stats.rejected == 0
            server = HealthServer([rig.runtime])
            base = await server.start()
            try:
                async with http.get(f"{base}/healthz") as response:
                    assert response.status == 200
                    report: dict[str, Any] = json.loads(await response.text())
                robot = report["robots"][rig.runtime.name]
                assert robot["state"] == "connected" and robot["inbound_rejected"] == 3
                async with http.get(f"{base}/metrics") as response:
                    metrics = await response.text()
            finally:
                await server.stop()
        labels = f'platform="feishu",robot="{rig.runtime.name}"'
        line = f"imrobots_inbound_rejected_total{{{labels}}} 3.0"
        assert line in metrics, metrics
    assert status.state is ConnectionState.CLOSED
    stopped = [r.getMessage() for r in caplog.records if "stopped:" in r.getMessage()]
    assert stopped and "3 inbound requests rejected (forged or malformed)" in stopped[0]
