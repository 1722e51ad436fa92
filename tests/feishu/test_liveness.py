"""Liveness of the Feishu long connection (issue 12, items 2-3, the DingTalk findings
applied to Feishu), over real sockets against the emulator.

The client pings every PingInterval (ClientConfig, 120 s by default) and Feishu answers
each ping with a CONTROL pong, so Feishu's own frames are the liveness clock. A muted
connection (no more pongs or events) was taken for dead after three ping intervals
(360 s); now after the interval plus a margin (130 s by default), and replaced.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from imrobots.config import structure
from imrobots.platform import CardAction, Message

pytest.importorskip("lark_oapi")

from imrobots_feishu.connection import LIVENESS_MARGIN, LongConnection
from imrobots_feishu.console import FeishuConsoleAdapter
from imrobots_feishu.platform import FeishuPlatform, FeishuSettings


async def _sink(event: Message | CardAction) -> None:
    return None


def test_the_default_liveness_bound_is_the_ping_interval_plus_a_margin() -> None:
    connection = LongConnection(
        None,  # type: ignore[arg-type]
        domain="http://127.0.0.1:9",
        app_id="cli_x",
        app_secret=lambda: "s",
        handler=lambda kind, payload: None,  # type: ignore[arg-type,return-value]
    )
    assert connection.ping_interval == 120.0  # lark-oapi's default (PROTOCOLS 3.1)
    assert connection.idle_timeout == 120.0 + LIVENESS_MARGIN == 130.0


async def test_a_muted_connection_is_replaced_within_the_ping_interval_plus_margin() -> None:
    adapter = FeishuConsoleAdapter()
    interval = 0.2
    adapter.emulator.client_config["PingInterval"] = interval
    await adapter.start()
    platform = FeishuPlatform(structure(adapter.robot_settings(), FeishuSettings, path="feishu"))
    emulator = adapter.emulator
    try:
        await platform.start(_sink)
        [first] = emulator.live(adapter.app_id)
        deadline = time.monotonic() + 5
        while first.pings < 2:  # the pongs flow: the ClientConfig's interval applies
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert emulator.mute_connections(adapter.app_id) == 1
        muted_at = time.monotonic()
        while not any(c is not first for c in emulator.live(adapter.app_id)):
            assert time.monotonic() - muted_at < 5, "the muted connection was not replaced"
            await asyncio.sleep(0.01)
        took = time.monotonic() - muted_at
        # the last pong came at most one interval before; the bound is 2 intervals here
        assert took < 2 * interval + 0.5, f"replaced after {took:.2f}s"
    finally:
        await platform.close()
        await adapter.stop()


async def test_each_reconnect_after_a_drop_comes_within_a_second() -> None:
    """A completed handshake resets the backoff (issue 12, item 4, applied to Feishu)."""
    adapter = FeishuConsoleAdapter()
    await adapter.start()
    settings = {**adapter.robot_settings(), "reconnect_initial": 0.5, "reconnect_max": 30.0}
    platform = FeishuPlatform(structure(settings, FeishuSettings, path="feishu"))
    emulator = adapter.emulator
    try:
        await platform.start(_sink)
        connection = platform.connection
        assert connection is not None
        gaps = []
        for _ in range(4):
            before = connection.connects
            dropped = time.monotonic()
            assert await emulator.drop_connections(adapter.app_id) == 1
            while connection.connects == before or not emulator.live(adapter.app_id):
                assert time.monotonic() - dropped < 10, "no reconnect"
                await asyncio.sleep(0.005)
            gaps.append(time.monotonic() - dropped)
        assert max(gaps) <= 1.0, f"reconnect delays {[round(g, 2) for g in gaps]}"
    finally:
        await platform.close()
        await adapter.stop()
