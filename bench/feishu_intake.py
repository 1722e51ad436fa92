"""How fast the Feishu plugin takes in events over the long connection, beside lark-oapi.

    python bench/feishu_intake.py [--rate 1000] [--count 4000] [--burst 4000]
                                  [--clients plugin,sdk]

For each client the script starts the Feishu emulator (in this process) and the client
in a subprocess, so the two do not share an interpreter:

- ``plugin``: ``imrobots_feishu.FeishuPlatform`` delivering every event to a sink that
  only counts (frame read, response frame written, event converted to a core Message);
- ``sdk``: lark-oapi's own ``ws.Client`` with an ``im.message.receive_v1`` handler that
  returns at once (it creates its event loop at import and blocks in ``start()``).

Then, on one group chat, ``im.message.receive_v1`` events:

1. warm-up: 500 events at 1,000/s (not measured);
2. paced: ``--count`` events at ``--rate``/s, pushed in 5 ms ticks;
3. burst: ``--burst`` events pushed as fast as the emulator can.

The **response-frame latency** is measured by the emulator: from writing an event's
DATA frame to reading the client's response frame (both sides' event loops and the
loopback socket included; Feishu redelivers what is not answered within 3 s). The
emulator's garbage collector is paused while measuring (it keeps every record).
**Events/s** is events answered per second, from the first push to the last response
read. CPU is the client process's user+system time in the paced and burst phases, per
1,000 events (Linux ``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SECRET = "intake-bench-secret"
_apps = iter(range(1, 1000))


# --------------------------------------------------------------------------- clients


async def run_plugin_client(url: str, app_id: str) -> None:
    from imrobots import Secret
    from imrobots_feishu.platform import FeishuPlatform, FeishuSettings

    platform = FeishuPlatform(FeishuSettings(app_id=app_id, app_secret=Secret(SECRET), domain=url))
    seen = 0

    async def sink(event: object) -> None:
        nonlocal seen
        seen += 1

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await platform.start(sink)
    await stop.wait()
    await platform.close()


def run_sdk_client(url: str, app_id: str) -> None:
    import lark_oapi as lark  # type: ignore[import-untyped]

    handler = (
        lark.EventDispatcherHandler.builder("", "")
        .register_p2_im_message_receive_v1(lambda data: None)
        .build()
    )
    client = lark.ws.Client(
        app_id, SECRET, event_handler=handler, domain=url, log_level=lark.LogLevel.ERROR
    )
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    client.start()


# --------------------------------------------------------------------------- measuring


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class Phase:
    def __init__(self, name: str, latencies: list[float], seconds: float) -> None:
        self.name = name
        self.latencies = sorted(latencies)
        self.seconds = seconds

    def pct(self, q: float) -> str:
        if not self.latencies:
            return "-"
        index = min(len(self.latencies) - 1, int(q * len(self.latencies)))
        return f"{self.latencies[index] * 1000:.1f}"

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


async def push_phase(emu: Any, app_id: str, count: int, rate: float | None, name: str) -> Phase:
    """Push ``count`` events (paced at ``rate``/s, or as fast as possible); wait for every
    response frame."""
    deliveries: list[Any] = []
    answered: list[float] = []

    def push(i: int) -> None:
        _, delivery = emu.push_message(
            app_id,
            chat_id="oc_intake",
            chat_type="group",
            sender="ou_bench",
            message_type="text",
            content={"text": f"{name} {i}"},
        )
        delivery.done.add_done_callback(lambda _: answered.append(time.perf_counter()))
        deliveries.append(delivery)

    started = time.perf_counter()
    if rate is None:
        for i in range(count):
            push(i)
            if i % 200 == 199:
                await asyncio.sleep(0)
    else:
        tick = 0.005
        sent = 0
        next_tick = started
        while sent < count:
            due = min(count, round((time.perf_counter() - started) * rate) + 1)
            while sent < due:
                push(sent)
                sent += 1
            next_tick += tick
            await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))
    async with asyncio.timeout(120):
        await asyncio.gather(*(d.done for d in deliveries))
    latencies = [d.latencies[0] for d in deliveries if d.latencies]
    return Phase(name, latencies, max(answered) - started)


async def measure(client: str, args: argparse.Namespace) -> tuple[list[Phase], float]:
    from imrobots_feishu.emulator import FeishuEmulator

    app_id = f"cli_intake{next(_apps):03d}"
    emu = FeishuEmulator()
    emu.add_app(app_id, SECRET)
    await emu.start()
    command = [sys.executable, __file__, "--child", client, "--url", emu.base_url]
    proc = await asyncio.create_subprocess_exec(*command, "--app-id", app_id)
    try:
        await emu.wait_for(lambda: bool(emu.live(app_id)), 30)
        phases = [await push_phase(emu, app_id, 500, 1000.0, "warm-up")]
        gc.collect()
        gc.disable()
        try:
            cpu_before = process_cpu(proc.pid)
            phases.append(await push_phase(emu, app_id, args.count, args.rate, "paced"))
            phases.append(await push_phase(emu, app_id, args.burst, None, "burst"))
            cpu = process_cpu(proc.pid) - cpu_before
        finally:
            gc.enable()
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        await emu.stop()
    return phases, cpu / (args.count + args.burst) * 1000


def print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        cells = [c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(row)]
        print("  ".join(cells))
        if index == 0:
            print("  ".join("-" * w for w in widths))


async def main(args: argparse.Namespace) -> None:
    print(
        f"Feishu intake: paced {args.count} events at {args.rate:g}/s, burst {args.burst}; "
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus; latency = DATA frame "
        "written -> response frame read"
    )
    rows = [["client", "phase", "events", "events/s", "p50 ms", "p99 ms", "max ms", ">3 s"]]
    cpu_rows = [["client", "client CPU ms / 1000 events"]]
    for client in [c for c in args.clients.split(",") if c]:
        phases, cpu = await measure(client, args)
        for phase in phases[1:]:
            rows.append(
                [
                    client,
                    phase.name,
                    str(len(phase.latencies)),
                    f"{phase.rate:,.0f}",
                    phase.pct(0.5),
                    phase.pct(0.99),
                    phase.pct(1.0),
                    str(sum(1 for latency in phase.latencies if latency > 3.0)),
                ]
            )
        cpu_rows.append([client, f"{cpu * 1000:.1f}"])
    print()
    print_table(rows)
    print()
    print_table(cpu_rows)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="paced phase, events/s")
    parser.add_argument("--count", type=int, default=4000, help="events in the paced phase")
    parser.add_argument("--burst", type=int, default=4000, help="events in the burst phase")
    parser.add_argument("--clients", default="plugin,sdk", help="plugin,sdk")
    parser.add_argument("--child", choices=("plugin", "sdk"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--app-id", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "plugin":
        asyncio.run(run_plugin_client(args.url, args.app_id))
    elif args.child == "sdk":
        run_sdk_client(args.url, args.app_id)
    else:
        asyncio.run(main(args))
