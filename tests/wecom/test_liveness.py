"""Liveness and backoff of the WeCom robot long connection (issue 12, items 3 and 4, the
DingTalk findings applied to WeCom), over real sockets against the emulator.

- A black-holed socket (silent both ways, never closed) was taken for dead only after
  two unanswered pings: 60-90 s with the SDK's 30 s heartbeat. Now: no frame from WeCom
  for the ping interval plus a margin (40 s by default) and the connection is replaced.
- A connection whose ``aibot_subscribe`` was acknowledged resets the backoff, however it
  ended: each reconnect after a drop comes within a second.
"""

from __future__ import annotations

import logging
import time

import aiohttp
import pytest

from imrobots.platform import Secret
from imrobots_wecom.connection import LIVENESS_MARGIN, AibotConnection
from imrobots_wecom.console import WeComConsoleAdapter
from imrobots_wecom.platform import WeComPlatform
from tests.engine.conftest import eventually


async def _sink(event: object) -> None:
    return None


def _platform(adapter: WeComConsoleAdapter, **overrides: float) -> WeComPlatform:
    """The platform of the emulator's bot, with ``overrides`` of its settings."""
    platform = adapter.create_platform(**overrides)
    assert isinstance(platform, WeComPlatform)
    return platform


async def test_the_default_liveness_bound_is_the_ping_interval_plus_a_margin() -> None:
    async with aiohttp.ClientSession() as session:
        connection = AibotConnection(
            session, url="ws://127.0.0.1:9", bot_id="b", secret=Secret("s"), handler=print
        )
        assert connection.options.ping_interval == 30.0  # the SDK's heartbeat (PROTOCOLS 4c)
        assert connection.idle_timeout == 30.0 + LIVENESS_MARGIN == 40.0


async def test_a_black_holed_socket_is_replaced_within_the_ping_interval_plus_margin() -> None:
    adapter = WeComConsoleAdapter()
    await adapter.start()
    interval = 0.2
    platform = _platform(adapter, ping_interval=interval, reconnect_initial=0.01)
    bot = adapter.emulator.bots[adapter.bot_id]
    try:
        await platform.start(_sink)
        connection = platform.connection
        assert connection is not None
        assert adapter.emulator.blackhole(adapter.bot_id) == 1
        went_dark = time.monotonic()
        await eventually(lambda: bot.subscriptions >= 2, within=5, what="a new subscription")
        took = time.monotonic() - went_dark
        idle = connection.idle_timeout
        assert idle == 2 * interval
        # silent since at most one ping interval before; the watchdog ticks idle/4
        assert took < idle + idle / 4 + 0.3, f"replaced after {took:.2f}s"
        await eventually(lambda: connection.connected, within=5, what="connected again")
    finally:
        await platform.close()
        await adapter.stop()


async def test_each_reconnect_after_a_drop_comes_within_a_second() -> None:
    adapter = WeComConsoleAdapter()
    await adapter.start()
    platform = _platform(adapter, reconnect_initial=1.0, reconnect_max=30.0)
    bot = adapter.emulator.bots[adapter.bot_id]
    try:
        await platform.start(_sink)
        gaps = []
        for round_ in range(6):
            before = bot.subscriptions
            dropped = time.monotonic()
            await adapter.emulator.drop(adapter.bot_id)
            await eventually(
                lambda n=before: bot.subscriptions > n, within=10, what=f"round {round_}"
            )
            gaps.append(time.monotonic() - dropped)
        assert max(gaps) <= 1.0, f"reconnect delays {[round(g, 2) for g in gaps]}"
    finally:
        await platform.close()
        await adapter.stop()


async def test_a_refused_subscription_after_it_worked_is_retried_with_one_error_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    adapter = WeComConsoleAdapter()
    await adapter.start()
    platform = _platform(adapter, reconnect_initial=0.02, reconnect_max=0.1)
    bot = adapter.emulator.bots[adapter.bot_id]
    good = bot.secret
    try:
        await platform.start(_sink)
        bot.secret = "rotated-for-a-while"  # WeCom refuses the right secret
        await adapter.emulator.drop(adapter.bot_id)
        connection = platform.connection
        assert connection is not None
        before = connection.reconnects
        await eventually(
            lambda: connection.reconnects >= before + 3, within=5, what="three refused attempts"
        )
        bot.secret = good
        await eventually(lambda: bot.subscriptions >= 2, within=5, what="subscribed again")
        # the emulator counts the subscription when it accepts it; the client says so once
        # it has read the answer (closing before that lost the line: a CI failure)
        await eventually(
            lambda: "subscription accepted again" in caplog.text, within=5, what="the client's line"
        )
    finally:
        await platform.close()
        await adapter.stop()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "subscribed before" in errors[0], errors
    assert "subscription accepted again" in caplog.text
    assert good not in caplog.text


async def test_a_watchdog_tick_that_ends_early_does_not_put_off_the_ping(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default shape (ping every 3 ticks, dead after 4 silent ticks) at a tenth of a
    second a tick: the tick due with the ping ends 5 ms early (uvloop's clock counts whole
    milliseconds) and the next one 10 ms late (a busy loop). The ping must still go at the
    early tick: put off to the next one, it would come after the watchdog found WeCom
    silent for the whole bound, and a healthy connection was dropped (seen in the demo)."""
    import asyncio

    from imrobots_wecom import connection as module

    interval, margin = 0.3, 0.1  # as 30 s and LIVENESS_MARGIN 10 s
    monkeypatch.setattr(module, "LIVENESS_MARGIN", margin)
    real_sleep = asyncio.sleep
    ticks = 0
    six_ticks = asyncio.Event()

    async def sleep(delay: float, result: object = None) -> object:
        nonlocal ticks
        if abs(delay - margin) < 1e-9:  # a watchdog tick
            ticks += 1
            delay += {3: -0.005, 4: 0.010}.get(ticks, 0.0)
            if ticks >= 6:
                six_ticks.set()
        return await real_sleep(delay, result)

    class Asyncio:  # the connection module's asyncio, whose sleep is the one above
        def __getattr__(self, name: str) -> object:
            return sleep if name == "sleep" else getattr(asyncio, name)

    monkeypatch.setattr(module, "asyncio", Asyncio())
    caplog.set_level(logging.INFO)
    adapter = WeComConsoleAdapter()
    await adapter.start()
    platform = _platform(adapter, ping_interval=interval)
    bot = adapter.emulator.bots[adapter.bot_id]
    try:
        await platform.start(_sink)
        connection = platform.connection
        assert connection is not None and connection.idle_timeout == interval + margin
        await asyncio.wait_for(six_ticks.wait(), 10)  # past the bound of 4 ticks
        assert bot.subscriptions == 1 and connection.connected
    finally:
        await platform.close()
        await adapter.stop()
    assert "the connection is dead" not in caplog.text
