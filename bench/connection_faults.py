"""Connection faults on DingTalk: what a robot loses, and how fast it is back (issue 12).

    python bench/connection_faults.py [--answers 50] [--refusal 2] [--ping 1] [--drops 6]

Everything runs against the DingTalk emulator on 127.0.0.1, with the plugin's own
connection and the example robot (the demo agent), timings scaled down by ``--ping``
(DingTalk's SYSTEM ping interval is about 30 s; ``idle_timeout`` is the ping interval
plus a third of it, as 30 s + 10 s by default).

- **auth refusal**: tokens expire, then the token endpoint refuses the right credentials
  with 400 ``invalidClientIdOrSecret`` for ``--refusal`` seconds while ``--answers``
  messages arrive (final-card deadline: 4x the refusal). Printed: final cards, answers
  with no final card, error lines logged.
- **muted** / **blackhole**: the live connection stops sending (muted: WebSocket pings
  still answered; blackhole: silent both ways). Printed: seconds until a new connection
  is up, against ``idle_timeout``; whether a message pushed after it is answered.
- **TCP aborts**: the connection is aborted ``--drops`` times, each after it lived past
  the one-second quick-drop guard. Printed: the delays from each abort to the new
  connection (max and mean).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

from imrobots import RobotRuntime, RuntimeOptions, Secret
from imrobots.demo_agent import DemoAgent
from imrobots.examples import SupportRobot
from imrobots.streaming import StreamPolicy
from imrobots_dingtalk.emulator import DingTalkEmulator
from imrobots_dingtalk.platform import DingTalkPlatform, DingTalkSettings

APP = "dingfaultsapp"
SECRET = "faults-secret-0123456789"


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def _final(card: Any) -> bool:
    if card.kind == "instance" and card.streaming_state not in ("finished", "failed"):
        return False
    return len(card.view.get("buttons") or []) == 4


async def _runtime(emu: DingTalkEmulator, **settings: Any) -> RobotRuntime:
    host = emu.base_url.split("//", 1)[1]
    values: dict[str, Any] = {
        "client_id": APP,
        "client_secret": Secret(SECRET),
        "openapi_endpoint": emu.base_url,
        "oapi_endpoint": emu.base_url,
        "webhook_hosts": (host,),
        "download_hosts": (host,),
        "update_interval": 0.2,
        **settings,
    }
    options = settings.pop("options", None)
    values.pop("options", None)
    runtime = RobotRuntime(
        name="faults",
        robot=SupportRobot(agent=DemoAgent(delay=0.0)),
        platform=DingTalkPlatform(DingTalkSettings(**values)),
        options=options,
        feedback_secret="bench-feedback-secret",
    )
    await runtime.start()
    return runtime


def _final_for(emu: DingTalkEmulator, conversation: str) -> bool:
    return any(_final(c) for c in emu.cards.values() if c.conversation_id == conversation)


async def auth_refusal(answers: int, refusal: float) -> None:
    errors = _Count()
    logging.getLogger().addHandler(errors)
    async with DingTalkEmulator(seed=1, ping_interval=None) as emu:
        emu.add_app(APP, SECRET)
        policy = StreamPolicy(min_interval=0.2, final_deadline=4 * refusal, max_backoff=0.5)
        runtime = await _runtime(emu, options=RuntimeOptions(stream=policy))
        try:
            emu.expire_tokens()
            emu.refuse_credentials(refusal)
            ids = [f"cid-refused-{i}" for i in range(answers)]
            for cid in ids:
                await emu.push_message(APP, text="How do I get a refund?", conversation_id=cid)
            with contextlib.suppress(TimeoutError):
                await emu.wait_for(
                    lambda: sum(_final_for(emu, c) for c in ids) == answers, 4 * refusal + 10
                )
            await runtime.wait_idle(10)
            final = sum(_final_for(emu, c) for c in ids)
        finally:
            await runtime.stop(timeout=5)
    logging.getLogger().removeHandler(errors)
    refused = sum(1 for c in emu.calls if c.error_code == "invalidClientIdOrSecret")
    print(
        f"auth refusal {refusal:g}s: {final}/{answers} final cards, {answers - final} without, "
        f"{refused} refused token calls, {errors.count} error line(s)"
    )


async def silent(fault: str, ping: float) -> None:
    idle = ping + ping / 3
    async with DingTalkEmulator(seed=2, ping_interval=ping) as emu:
        emu.add_app(APP, SECRET)
        runtime = await _runtime(emu, idle_timeout=idle, ping_interval=ping / 3)
        try:
            first = emu.connections[0]
            await emu.wait_for(lambda: first.pings_echoed >= 1, 10)
            emu.fault_connections(fault, APP)  # type: ignore[arg-type]
            started = time.monotonic()
            await emu.wait_for(lambda: len(emu.connections) >= 2 and emu.connections[-1].live, 30)
            took = time.monotonic() - started
            pushed = await emu.push_message(APP, text="still there?", conversation_id="cid-after")
            with contextlib.suppress(TimeoutError):
                await emu.wait_for(lambda: _final_for(emu, pushed.conversation_id), 10)
            answered = _final_for(emu, pushed.conversation_id)
        finally:
            await runtime.stop(timeout=5)
    print(
        f"{fault}: replaced after {took:.2f}s (idle_timeout {idle:.2f}s, ping {ping:g}s); "
        f"next message answered: {answered}"
    )


def _echoed(connection: Any) -> Callable[[], bool]:
    return lambda: bool(connection.pings_echoed >= 1)


def _opened_after(emu: DingTalkEmulator, count: int) -> Callable[[], bool]:
    return lambda: len(emu.connections) > count and emu.connections[-1].live


async def aborts(drops: int) -> None:
    async with DingTalkEmulator(seed=3, ping_interval=1.05) as emu:
        emu.add_app(APP, SECRET)
        runtime = await _runtime(emu, reconnect_initial=0.5, reconnect_max=30.0)
        gaps: list[float] = []
        try:
            for _ in range(drops):
                live = [c for c in emu.connections if c.live][-1]
                await emu.wait_for(_echoed(live), 10)
                before = len(emu.connections)
                dropped = time.monotonic()
                await emu.drop_connections(APP)
                await emu.wait_for(_opened_after(emu, before), 30)
                gaps.append(emu.connections[-1].at - dropped)
        finally:
            await runtime.stop(timeout=5)
    print(
        f"TCP aborts x{drops}: reconnect after max {max(gaps):.2f}s, "
        f"mean {statistics.mean(gaps):.2f}s ({', '.join(f'{g:.2f}' for g in gaps)})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=50)
    parser.add_argument("--refusal", type=float, default=2.0)
    parser.add_argument("--ping", type=float, default=1.0)
    parser.add_argument("--drops", type=int, default=6)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # quiet; error lines are counted
    await auth_refusal(args.answers, args.refusal)
    await silent("muted", args.ping)
    await silent("blackhole", args.ping)
    await aborts(args.drops)


if __name__ == "__main__":
    asyncio.run(main())
