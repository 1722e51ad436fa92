"""Half-open reconnects (issue 9, case 3): the connection drops, then the next attempt is
accepted at TCP level and never answered. Before, the robot waited on aiohttp's 300 s
default (262 s unreachable was measured); now each step of a reconnect (ticket POST,
WebSocket upgrade, first frame) is bounded by ``request_timeout`` and retried with
backoff, so the robot is back within timeout + backoff."""

from __future__ import annotations

import time

import pytest

from imrobots_dingtalk.emulator import DingTalkEmulator
from imrobots_dingtalk.emulator.emulator import StallStage
from imrobots_dingtalk.platform import DingTalkPlatform

from .support import APP, QUESTION, cards_for, final, running

TIMEOUT = 0.3
"""The connection's ``request_timeout`` in these tests."""
BACKOFF_MAX = 0.2
"""``reconnect_max``: no wait between two attempts is longer."""


@pytest.mark.parametrize("stage", ["ticket", "upgrade", "silent"])
async def test_a_half_open_reconnect_recovers_within_timeout_and_backoff(
    emu: DingTalkEmulator, stage: StallStage
) -> None:
    async with running(
        emu, request_timeout=TIMEOUT, reconnect_initial=0.05, reconnect_max=BACKOFF_MAX
    ) as runtime:
        platform = runtime.platform
        assert isinstance(platform, DingTalkPlatform) and platform.connection is not None
        connection = platform.connection
        emu.stall_connections(stage=stage)
        dropped_at = time.monotonic()
        assert await emu.drop_connections(APP) == 1
        # a backoff, the stalled attempt (one timeout), a backoff, then a good attempt
        budget = TIMEOUT + 2 * BACKOFF_MAX
        await emu.wait_for(
            lambda: any(c.live for c in emu.connections[1:]) and connection.connected,
            budget + 2.0,
            what=f"reconnected after a stalled {stage}",
        )
        took = time.monotonic() - dropped_at
        assert took < budget + 0.5, f"reconnected after {took:.2f}s"
        assert connection.stats.failed_attempts >= 1
        stalled = [c for c in emu.calls if any("stalled" in n for n in c.notes)]
        assert len(stalled) == 1
        # and it hears again: a message pushed now is answered
        pushed = await emu.push_message(APP, text=QUESTION, conversation_id="cid-after-stall")
        await emu.wait_for(lambda: any(final(c) for c in cards_for(emu, pushed)), 10)
        assert pushed.ack.code == 200
