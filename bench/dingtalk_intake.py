"""How fast the DingTalk plugin takes in messages, beside the bare ``dingtalk-stream`` SDK.

    python bench/dingtalk_intake.py [--rate 2000] [--count 6000] [--burst 10000]

For each client the script starts the DingTalk emulator (in this process) and
the client in a subprocess, so the two do not share an interpreter:

- ``plugin``: ``imrobots_dingtalk.DingTalkPlatform`` delivering every message to
  a sink that only counts (frame parsed, acked, converted to a core Message);
- ``sdk``: ``dingtalk_stream.DingTalkStreamClient`` 0.24.x with a ChatbotHandler
  whose ``process`` returns at once (``DINGTALK_OPENAPI_ENDPOINT`` set before
  import, ``get_host_ip`` patched to 127.0.0.1).

Then, on one group conversation:

1. warm-up: 500 messages at 1,000 msg/s (not measured);
2. paced: ``--count`` messages at ``--rate`` msg/s, pushed in 5 ms ticks;
3. burst: ``--burst`` messages pushed as fast as the emulator can.

Ack latency is measured by the emulator: from writing the frame to reading the
client's ack (so it includes both sides' event loops and the loopback socket).
The emulator process's garbage collector is paused while measuring (the
emulator keeps every record; its full collections would otherwise show up as
20-100 ms "ack latency" of whichever client is running).
"Rate" is messages acknowledged per second from the first push to the last ack.
CPU is the client process's user+system time during the paced and burst
phases, per 1,000 messages (Linux ``/proc``).
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

APP = "dingbenchapp"
SECRET = "bench-secret"


# --------------------------------------------------------------------------- clients


async def run_plugin_client(url: str) -> None:
    from imrobots import Secret
    from imrobots_dingtalk.platform import DingTalkPlatform, DingTalkSettings

    received = 0

    async def sink(event: object) -> None:
        nonlocal received
        received += 1

    platform = DingTalkPlatform(
        DingTalkSettings(client_id=APP, client_secret=Secret(SECRET), openapi_endpoint=url)
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await platform.start(sink)
    await stop.wait()
    await platform.close()
    print(f"plugin client received {received}", file=sys.stderr)


def run_sdk_client(url: str) -> None:
    os.environ["DINGTALK_OPENAPI_ENDPOINT"] = url
    import logging

    import dingtalk_stream  # type: ignore[import-untyped]
    from dingtalk_stream import AckMessage

    # The SDK sets each of its loggers (dingtalk_stream.client, .handler...) to INFO, with
    # a stderr handler of its own, whenever it builds a client or handler, so a level set
    # on them beforehand does not hold, and its INFO lines land amid engine.py's table:
    # this process logs nothing below WARNING.
    logging.disable(logging.INFO)
    client_class: Any = dingtalk_stream.DingTalkStreamClient
    client_class.get_host_ip = lambda self: "127.0.0.1"

    class Empty(dingtalk_stream.ChatbotHandler):  # type: ignore[misc]
        async def process(self, callback: Any) -> tuple[int, str]:
            return AckMessage.STATUS_OK, "OK"

    client = client_class(dingtalk_stream.Credential(APP, SECRET))
    client.register_callback_handler(dingtalk_stream.ChatbotMessage.TOPIC, Empty())
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(client.start())


# --------------------------------------------------------------------------- driver


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class Phase:
    def __init__(self, name: str, latencies: list[float], seconds: float, pushed: int) -> None:
        self.name = name
        self.latencies = sorted(latencies)
        self.seconds = seconds
        self.pushed = pushed

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        index = min(len(self.latencies) - 1, int(q * len(self.latencies)))
        return self.latencies[index] * 1000

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


async def push_phase(
    emu: Any, count: int, rate: float | None, acked: dict[str, Any], name: str
) -> Phase:
    """Push ``count`` messages (paced at ``rate``/s, or as fast as possible) and wait for acks."""
    target = acked["count"] + count
    done = asyncio.Event()
    acked["target"], acked["event"] = target, done
    pushes = []
    started = time.perf_counter()
    tick = 0.005
    if rate is None:
        for i in range(count):
            pushes.append(await emu.push_message(APP, text=f"b{i}", conversation_id="cid-bench"))
            if i % 200 == 199:
                await asyncio.sleep(0)
    else:
        per_tick = rate * tick
        sent = 0
        next_tick = started
        while sent < count:
            due = min(count, round((time.perf_counter() - started) / tick * per_tick) + 1)
            while sent < due:
                pushes.append(
                    await emu.push_message(APP, text=f"p{sent}", conversation_id="cid-bench")
                )
                sent += 1
            next_tick += tick
            await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))
    if acked["count"] < target:
        async with asyncio.timeout(60):
            await done.wait()
    last_ack = max(p.ack.acked_at for p in pushes)
    first_push = min(p.ack.pushed_at for p in pushes)
    latencies = [p.ack.latency for p in pushes if p.ack.latency is not None]
    if os.environ.get("BENCH_DEBUG"):
        worst = sorted(range(len(pushes)), key=lambda i: -(pushes[i].ack.latency or 0))[:5]
        print(name, [(i, round((pushes[i].ack.latency or 0) * 1000, 1)) for i in worst])
    return Phase(name, latencies, last_ack - first_push, count)


async def measure(client: str, args: argparse.Namespace) -> tuple[list[Phase], float, int]:
    from imrobots_dingtalk.emulator import DingTalkEmulator

    async with DingTalkEmulator(seed=1, ping_interval=None) as emu:
        emu.add_app(APP, SECRET)
        acked: dict[str, Any] = {"count": 0, "target": 0, "event": None}

        def on_event(event: dict[str, Any]) -> None:
            record = event.get("record") or {}
            first_ack = record.get("kind") == "message" and record.get("ack_count") == 1
            if event["kind"] == "ack" and first_ack:
                acked["count"] += 1
                if acked["count"] >= acked["target"] and acked["event"] is not None:
                    acked["event"].set()

        emu.on_change(on_event)
        command = [sys.executable, __file__, "--child", client, "--url", emu.base_url]
        proc = await asyncio.create_subprocess_exec(*command)
        try:
            await emu.wait_for(lambda: bool(emu.live_connections(APP)), 30, what="client up")
            phases = [await push_phase(emu, 500, 1000.0, acked, "warm-up")]
            # The emulator keeps every record; its full collections would stall this
            # process (and show up as the client's ack latency). Not while measuring.
            gc.collect()
            gc.disable()
            try:
                cpu_before = process_cpu(proc.pid)
                phases.append(await push_phase(emu, args.count, args.rate, acked, "paced"))
                phases.append(await push_phase(emu, args.burst, None, acked, "burst"))
                cpu = process_cpu(proc.pid) - cpu_before
            finally:
                gc.enable()
            measured = args.count + args.burst
        finally:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
        timed_out = sum(1 for a in emu.acks.values() if a.timed_out)
        return phases, cpu / measured * 1000, timed_out


def print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print(
            "  ".join(
                cell.rjust(widths[i]) if i else cell.ljust(widths[i]) for i, cell in enumerate(row)
            )
        )
        if index == 0:
            print("  ".join("-" * w for w in widths))


async def main(args: argparse.Namespace) -> None:
    print(
        f"DingTalk intake: paced {args.count} msgs at {args.rate:g} msg/s, burst {args.burst} "
        f"msgs; python {sys.version.split()[0]}, {os.cpu_count()} cpus"
    )
    rows = [["client", "phase", "msgs", "rate msg/s", "ack p50 ms", "ack p99 ms", "ack max ms"]]
    cpu_rows = [["client", "client CPU ms / 1000 msgs", "acks over 3 s"]]
    for client in args.clients.split(","):
        phases, cpu, late = await measure(client, args)
        for phase in phases[1:]:
            rows.append(
                [
                    client,
                    phase.name,
                    str(len(phase.latencies)),
                    f"{phase.rate:,.0f}",
                    f"{phase.pct(0.50):.2f}",
                    f"{phase.pct(0.99):.2f}",
                    f"{phase.pct(1.0):.2f}",
                ]
            )
        cpu_rows.append([client, f"{cpu * 1000:.1f}", str(late)])
    print()
    print_table(rows)
    print()
    print_table(cpu_rows)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000.0, help="paced phase, msg/s")
    parser.add_argument("--count", type=int, default=6000, help="messages in the paced phase")
    parser.add_argument("--burst", type=int, default=10000, help="messages in the burst phase")
    parser.add_argument("--clients", default="plugin,sdk", help="comma-separated: plugin,sdk")
    parser.add_argument("--child", choices=("plugin", "sdk"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "plugin":
        asyncio.run(run_plugin_client(args.url))
    elif args.child == "sdk":
        run_sdk_client(args.url)
    else:
        asyncio.run(main(args))
