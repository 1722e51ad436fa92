"""Issue 12, item 5: SIGTERM while a sync agent blocks forever.

Before: the cards were marked interrupted, but the process never exited (the interpreter
waited for the agent's worker thread at exit) and had to be killed. Now ``imrobots run``
exits within its grace period with exit code 0, whatever user code is doing, and the card
ends interrupted."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest

from imrobots_dingtalk.emulator import DingTalkEmulator

from .support import APP, start_run, write_robots_toml

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM")

GRACE = 3.0
GRACE_ARGS = ["--grace", str(GRACE)]

AGENTS = {
    "sync agent blocked forever": '''
import threading


def agent(request):
    """A sync agent that blocks forever (a hung model call without a timeout)."""
    threading.Event().wait()
    return "never"
''',
    "async agent swallowing cancellation": '''
import asyncio


async def agent(request):
    """An async agent that ignores being cancelled and waits on."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass
''',
    "to_thread call blocked forever": '''
import asyncio
import threading


async def agent(request):
    """A blocking call moved to the loop's default executor, which asyncio.run waits for."""
    await asyncio.to_thread(threading.Event().wait)
    return "never"
''',
}


def write_config(
    emu: DingTalkEmulator, directory: Path, agent: str, extra: str = "", module: str = ""
) -> Path:
    """A config of the tests' app on ``emu`` with ``agent`` (``module:callable``); with
    ``module``, the agent's module is written next to it first."""
    if module:
        (directory / f"{agent.partition(':')[0]}.py").write_text(module, encoding="utf-8")
    return write_robots_toml(
        emu,
        directory,
        robot='feedback_secret = "feedback-secret-not-in-logs-0001"',
        agent=f'use = "{agent}"\n{extra}',
    )


@pytest.mark.parametrize("case", list(AGENTS))
async def test_sigterm_exits_within_the_grace_period_whatever_the_agent_does(
    emu: DingTalkEmulator, case: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as log:
        config = write_config(emu, Path(tmp), "blocking_agent:agent", module=AGENTS[case])
        proc = await start_run(config, *GRACE_ARGS, output=log, cwd=tmp)
        try:
            await emu.wait_for(lambda: bool(emu.live_connections(APP)), 20, what="robot up")
            pushed = await emu.push_message(APP, text="hello?")
            await emu.wait_for(
                lambda: any(
                    c.conversation_id == pushed.conversation_id for c in emu.cards.values()
                ),
                20,
                what="the thinking card",
            )
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(GRACE + 10):
                code = await proc.wait()
            took = time.monotonic() - started
        except BaseException:
            log.seek(0)
            print(log.read().decode("utf-8", errors="replace")[-4000:])
            raise
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        log.seek(0)
        output = log.read().decode("utf-8", errors="replace")
    print(f"{case}: SIGTERM to exit {took:.2f} s (grace {GRACE} s), exit code {code}")
    assert code == 0, output[-3000:]
    assert took < GRACE + 1.0, output[-3000:]  # the grace period, plus interpreter exit
    (card,) = emu.cards.values()
    if case != "async agent swallowing cancellation":  # that answer cannot end: left open
        assert "interrupted" in json.dumps(card.content), card.content  # stopReason or note


async def test_sigterm_while_the_platform_is_unreachable_at_start_exits_at_once(
    emu: DingTalkEmulator,
) -> None:
    """SIGTERM before the first connection is up (the gateway never answers: a proxy or
    network fault). Before: the start waited out its whole ``connect_timeout`` (30 s),
    beyond the grace period, then exited 2 with "no DingTalk stream connection within
    30s". Now it stops within the grace period, exit code 0."""
    emu.stall_connections(stage="ticket", count=1000)
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as log:
        config = write_config(emu, Path(tmp), "demo")
        proc = await start_run(config, *GRACE_ARGS, output=log, cwd=tmp)
        try:
            await emu.wait_for(
                lambda: any(n.startswith("stalled") for c in emu.calls for n in c.notes),
                20,
                what="the robot's connection attempt, stalled",
            )
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(GRACE + 10):
                code = await proc.wait()
            took = time.monotonic() - started
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        log.seek(0)
        output = log.read().decode("utf-8", errors="replace")
    print(f"SIGTERM while connecting: exit {took:.2f} s, exit code {code}")
    assert code == 0, output[-3000:]
    assert took < GRACE + 1.0, output[-3000:]
    assert "error:" not in output, output[-3000:]
    assert output.rstrip().endswith("stopped"), output[-3000:]
