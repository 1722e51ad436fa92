"""Liveness and backoff of the DingTalk stream connection (issue 12, items 2-4), over real
sockets against the emulator with its connection faults.

- A *muted* connection (the server stops sending pushes and SYSTEM pings but still answers
  WebSocket pings) was never replaced: 22 of 22 messages undelivered in 110 s. Liveness now
  comes from DingTalk's own traffic (SYSTEM pings, pushes), not from WebSocket pongs.
- A *black-holed* socket (silent both ways, never closed) was noticed after 58 s with the
  defaults. Now: within DingTalk's SYSTEM ping interval plus a margin (40 s by default,
  ``idle_timeout``; shortened here).
- Backoff ran away (0.3 -> 27.3 s) under a TCP abort every 5 s, because only a connection
  that lived 10 s reset it. Now a connection that completed its handshake resets it: a
  reconnect comes within a second of each drop.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from imrobots import RobotRuntime, Secret
from imrobots_dingtalk.connection import LIVENESS_MARGIN, SYSTEM_PING_INTERVAL, StreamConnection
from imrobots_dingtalk.emulator import DingTalkEmulator
from imrobots_dingtalk.emulator.emulator import ConnectionFault
from imrobots_dingtalk.platform import DingTalkPlatform, DingTalkSettings

from .support import APP, QUESTION, SECRET, cards_for, final, running

PING = 0.3
"""The emulator's SYSTEM ping interval in these tests (DingTalk: about 30 s)."""
MARGIN = 0.4
IDLE = PING + MARGIN
"""The robot's ``idle_timeout``: the ping interval plus the margin, scaled down."""


@pytest_asyncio.fixture
async def pinging() -> AsyncIterator[DingTalkEmulator]:
    """An emulator that sends SYSTEM pings every ``PING`` seconds, as DingTalk does."""
    async with DingTalkEmulator(seed=12, ping_interval=PING, disconnect_grace=1.0) as emulator:
        emulator.add_app(APP, SECRET)
        yield emulator


def _connection(runtime: RobotRuntime) -> StreamConnection:
    platform = runtime.platform
    assert isinstance(platform, DingTalkPlatform) and platform.connection is not None
    return platform.connection


def test_the_default_liveness_bound_comes_from_dingtalks_ping_interval() -> None:
    settings = DingTalkSettings(client_id="x", client_secret=Secret(SECRET))
    assert SYSTEM_PING_INTERVAL == 30.0  # PROTOCOLS 1.5: "keepalive every 20-30 s"
    assert settings.idle_timeout == SYSTEM_PING_INTERVAL + LIVENESS_MARGIN <= 40.0
    assert settings.reconnect_initial <= 1.0


@pytest.mark.parametrize("fault", ["muted", "blackhole"])
async def test_a_silent_connection_is_replaced_within_the_ping_interval_plus_margin(
    pinging: DingTalkEmulator, fault: ConnectionFault, caplog: pytest.LogCaptureFixture
) -> None:
    emu = pinging
    # WebSocket pings (ping_interval) more often than idle_timeout, as with the defaults
    # (20 s and 60 s before): pongs must not count as the platform being alive
    async with running(
        emu, delay=0.0, idle_timeout=IDLE, ping_interval=PING / 3, reconnect_initial=0.05
    ) as runtime:
        connection = _connection(runtime)
        first = emu.connections[0]
        await emu.wait_for(lambda: first.pings_echoed >= 1, 5, what="a SYSTEM ping echoed")
        assert emu.fault_connections(fault, APP) == 1
        faulted_at = time.monotonic()
        # pushed while the connection is broken: DingTalk routes them to it and they are lost
        lost = await emu.push_message(APP, text=QUESTION, conversation_id="cid-lost")
        assert lost.lost
        # (a black-holed socket stays open on the server's side: the client's view counts)
        await emu.wait_for(
            lambda: connection.stats.opened >= 2 and any(c.live for c in emu.connections[1:]),
            IDLE + PING + 5,
            what=f"the {fault} connection replaced",
        )
        took = time.monotonic() - faulted_at
        # the last frame came at most PING before the fault; the watchdog ticks IDLE/4
        assert took < IDLE + IDLE / 4 + 0.5, f"replaced after {took:.2f}s"
        await connection.wait_connected(5)
        pushes = [
            await emu.push_message(APP, text=QUESTION, conversation_id=f"cid-after-{i}")
            for i in range(5)
        ]
        await emu.wait_for(
            lambda: all(any(final(c) for c in cards_for(emu, p)) for p in pushes),
            15,
            what="answers after the replacement",
        )
        assert all(p.ack.code == 200 for p in pushes)
        if fault == "muted":
            await emu.wait_for(lambda: not first.live, 5, what="the muted connection closed")
        assert connection.stats.watchdog_closes >= 1
    lines = [r.getMessage() for r in caplog.records if "no frame from DingTalk" in r.getMessage()]
    assert lines, "the replacement is logged"
    assert "SYSTEM ping" in lines[0]


async def test_each_reconnect_after_a_drop_comes_within_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # SYSTEM pings every 1.05 s: a connection that echoed one lived past the one-second
    # quick-drop guard, as a connection in the steady state does.
    async with DingTalkEmulator(seed=4, ping_interval=1.05) as emu:
        emu.add_app(APP, SECRET)
        async with running(emu, delay=0.0, reconnect_initial=0.5, reconnect_max=30.0) as runtime:
            connection = _connection(runtime)
            gaps: list[float] = []
            for round_ in range(4):  # the old backoff passed 1 s by the third
                current = [c for c in emu.connections if c.live]
                assert len(current) == 1
                await emu.wait_for(
                    lambda c=current[0]: c.pings_echoed >= 1, 5, what=f"ping in round {round_}"
                )
                before = len(emu.connections)
                dropped_at = time.monotonic()
                assert await emu.drop_connections(APP) == 1
                await emu.wait_for(
                    lambda n=before: len(emu.connections) > n and emu.connections[-1].live,
                    10,
                    what=f"reconnect in round {round_}",
                )
                gaps.append(emu.connections[-1].at - dropped_at)
                await connection.wait_connected(5)
            assert max(gaps) <= 1.0, f"reconnect delays {[round(g, 2) for g in gaps]}"
            pushed = await emu.push_message(APP, text=QUESTION, conversation_id="cid-after-drops")
            await emu.wait_for(lambda: any(final(c) for c in cards_for(emu, pushed)), 10)
