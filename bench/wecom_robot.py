"""The WeCom intelligent robot on the long connection: intake and many stream replies.

    python bench/wecom_robot.py [--rate 1000] [--count 6000] [--burst 10000]
                                [--streams 500] [--chunks 40] [--chunk-delay 0.05]

The WeCom emulator runs in this process; each client runs in a subprocess of its own,
so the two do not share an interpreter. The emulator's garbage collector is paused
while measuring (it keeps every record; its full collections would show up as the
client's latency).

**Intake** (``--clients plugin,sdk``): callbacks taken in per second and their ack
latency. WeCom's long connection has no acknowledgement of a push by the client: a
robot acknowledges a callback by answering on its ``req_id``. So each client answers
every text callback with a two-frame stream reply (``finish: false``, then ``finish:
true``), and the **ack latency** is the time from the emulator writing the callback to
reading the client's first frame on its ``req_id`` (both event loops and the loopback
socket included). **Rate** is callbacks answered per second, from the first push to
the last first frame.

- ``plugin``: ``imrobots_wecom.WeComPlatform`` (robot mode) with a sink that answers
  through the platform contract (``open_stream`` then ``close``); no core runtime.
- ``sdk``: the official ``wecom_aibot_sdk.WSClient`` 1.0.x, ``reply_stream`` twice.

Phases on one group chat: warm-up (500 callbacks at 1,000/s, not measured), paced
(``--count`` at ``--rate``/s, in 5 ms ticks), burst (``--burst`` as fast as the
emulator can push). CPU is the client process's user+system time in the paced and
burst phases, per 1,000 callbacks (Linux ``/proc``).

**Streams** (``--streams``, 0 to skip): the support robot on ``imrobots``
(``RobotRuntime`` + this plugin, default settings) answers ``--streams`` users at
once, each @-mentioning it in their own group; every answer is a simulated model of
``--chunks`` chunks ``--chunk-delay`` s apart. WeCom documents no rate for the long
connection; the plugin's client budget is ``app_rate`` (default 50 frames/s,
UNCONFIRMED; ``--app-rate``) x 0.9, shared fairly by every stream. Printed:

- **acks pending**: frames the robot had sent and was waiting on WeCom's ack for, at
  most at once (sampled every 5 ms in the client) and at the end (target 0);
- **errors**: frames WeCom (the emulator) answered with a non-zero errcode, and
  answers the runtime counted failed (target 0);
- **longest gap per stream**: for each user, the longest time they saw nothing new:
  between their message and the first frame of the answer, or between two frames,
  p50/p99/max, beside the fair share (streams / frames per second). An answer that
  is complete before its first turn at the limiter goes out in one frame (the final
  stream reply with its buttons, no thinking frame);
- **finals landed**: streams that ended ``finish: true`` with the four feedback
  buttons and the whole answer, out of ``--streams``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

BOT = "wecom-bench-bot"
SECRET = "wecom-bench-secret"
WORDS = (
    "Refunds", "are", "possible", "within", "thirty", "days", "of", "delivery,", "with", "the",
    "prepaid", "label.",
)  # fmt: skip


def chunk(i: int) -> str:
    return WORDS[i % len(WORDS)] + " "


def answer_text(chunks: int) -> str:
    return "".join(chunk(i) for i in range(chunks)).strip()


# --------------------------------------------------------------------------- clients


async def run_plugin_client(url: str) -> None:
    """The plugin alone: every text callback answered with a two-frame stream reply."""
    from imrobots import Card, Markdown, Message, Secret
    from imrobots_wecom.platform import WeComPlatform, WeComSettings

    platform = WeComPlatform(WeComSettings(bot_id=BOT, secret=Secret(SECRET), ws_url=url))
    received = 0

    async def sink(event: object) -> None:
        nonlocal received
        if not isinstance(event, Message):
            return
        received += 1
        try:
            handle = await platform.open_stream(
                event.target, Card(elements=(Markdown(text="…"),)), key=f"s-{event.id}"
            )
            await handle.close(Card(elements=(Markdown(text="ok"),)))
        except Exception as exc:  # the bench stopping under a frame in flight
            print(f"plugin client: {type(exc).__name__}: {exc}", file=sys.stderr)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await platform.start(sink)
    await stop.wait()
    await platform.close()
    print(f"plugin client received {received}", file=sys.stderr)


def run_sdk_client(url: str) -> None:
    """The official SDK: every text callback answered with ``reply_stream`` twice."""
    import wecom_aibot_sdk  # type: ignore[import-untyped]

    class Quiet:
        """The SDK's logger prints every frame at DEBUG; only warnings and errors here."""

        def debug(self, message: str, *args: Any) -> None:
            pass

        info = debug

        def warn(self, message: str, *args: Any) -> None:
            print("sdk:", message, *args, file=sys.stderr)

        error = warn

    async def main() -> None:
        client = wecom_aibot_sdk.WSClient(BOT, SECRET, ws_url=url, logger=Quiet())

        async def on_text(frame: dict[str, Any]) -> None:
            stream_id = "s-" + str(frame["body"]["msgid"])
            await client.reply_stream(frame, stream_id, "…", False)
            await client.reply_stream(frame, stream_id, "ok", True)

        client.on("message.text", on_text)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await client.connect()
        await stop.wait()
        os._exit(0)

    asyncio.run(main())


async def run_runtime_client(url: str, chunks: int, delay: float, app_rate: float) -> None:
    """The support robot on ``imrobots`` (runtime + plugin); prints its figures as JSON
    on stdout when told to stop."""
    from imrobots import RobotRuntime, Secret
    from imrobots.examples import SupportRobot
    from imrobots_wecom.platform import WeComPlatform, WeComSettings

    async def model(request: Any) -> AsyncIterator[str]:
        for i in range(chunks):
            await asyncio.sleep(delay)
            yield chunk(i)

    platform = WeComPlatform(
        WeComSettings(bot_id=BOT, secret=Secret(SECRET), ws_url=url, app_rate=app_rate)
    )
    runtime = RobotRuntime(name="support", robot=SupportRobot(agent=model), platform=platform)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await runtime.start()
    peak = 0

    async def sample() -> None:
        nonlocal peak
        while True:
            connection = platform.connection
            if connection is not None:
                peak = max(peak, len(connection._pending))
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    await stop.wait()
    sampler.cancel()
    connection = platform.connection
    pending = len(connection._pending) if connection is not None else -1
    stats = runtime.stats
    print(
        json.dumps(
            {
                "peak_pending": peak,
                "pending": pending,
                "answered": stats.answered,
                "failed": stats.failed,
                "degraded": stats.degraded,
            }
        ),
        flush=True,
    )
    await runtime.stop(timeout=5)


# --------------------------------------------------------------------------- driver


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def pct(values: Sequence[float], q: float, scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * scale:.{digits}f}"


def print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        cells = [c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)]
        print("  ".join(cells))
        if index == 0:
            print("  ".join("-" * w for w in widths))


def child(args: argparse.Namespace, role: str, url: str) -> list[str]:
    return [
        sys.executable,
        __file__,
        "--child",
        role,
        "--url",
        url,
        "--chunks",
        str(args.chunks),
        "--chunk-delay",
        str(args.chunk_delay),
        "--app-rate",
        str(args.app_rate),
    ]


class Phase:
    def __init__(self, name: str, latencies: list[float], seconds: float) -> None:
        self.name = name
        self.latencies = latencies
        self.seconds = seconds

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


async def push_phase(emu: Any, count: int, rate: float | None, name: str) -> Phase:
    """Push ``count`` callbacks (paced at ``rate``/s, or as fast as possible) and wait
    until each was answered."""
    bot = emu.bots[BOT]
    msgids: list[str] = []

    async def push(i: int) -> None:
        msgids.append(
            await emu.push_message(
                BOT,
                user_id=f"user{i % 50}",
                msgtype="text",
                content={"content": f"@Robot q{i}"},
                chat_type="group",
                chatid="bench-group",
            )
        )

    started = time.perf_counter()
    if rate is None:
        for i in range(count):
            await push(i)
            if i % 200 == 199:
                await asyncio.sleep(0)
    else:
        tick, sent, next_tick = 0.005, 0, started
        while sent < count:
            due = min(count, round((time.perf_counter() - started) / tick * rate * tick) + 1)
            while sent < due:
                await push(sent)
                sent += 1
            next_tick += tick
            await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))
    wanted = set(msgids)

    def answered() -> list[Any]:
        return [
            cb
            for cb in bot.callbacks.values()
            if cb.body.get("msgid") in wanted and cb.answered is not None
        ]

    deadline = time.monotonic() + 120
    while len(answered()) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: {len(answered())} of {count} callbacks answered")
        await asyncio.sleep(0.05)
    done = answered()
    latencies = [cb.answered - cb.at for cb in done]
    seconds = max(cb.answered for cb in done) - min(cb.at for cb in done)
    return Phase(name, latencies, seconds)


async def intake(client: str, args: argparse.Namespace) -> tuple[list[Phase], float]:
    from imrobots_wecom.emulator import WeComEmulator

    emu = WeComEmulator(seed=1)
    emu.add_bot(BOT, SECRET)
    await emu.start()
    proc = await asyncio.create_subprocess_exec(*child(args, client, emu.ws_url))
    try:
        await wait_for(lambda: emu.connected(BOT), 30, "client subscribed")
        phases = [await push_phase(emu, 500, 1000.0, "warm-up")]
        gc.collect()
        gc.disable()
        try:
            cpu_before = process_cpu(proc.pid)
            phases.append(await push_phase(emu, args.count, args.rate, "paced"))
            phases.append(await push_phase(emu, args.burst, None, "burst"))
            cpu = process_cpu(proc.pid) - cpu_before
        finally:
            gc.enable()
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        await emu.stop()
    return phases, cpu / (args.count + args.burst) * 1000


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout}s")
        await asyncio.sleep(0.02)


async def streams(args: argparse.Namespace) -> dict[str, Any]:
    from imrobots_wecom.emulator import WeComEmulator

    emu = WeComEmulator(seed=1)
    emu.add_bot(BOT, SECRET)
    frames: dict[str, list[float]] = {}
    """chat id -> when the user asked, then when each frame of its answer was shown."""

    def on_event(event: dict[str, Any]) -> None:
        if event.get("kind") == "card":
            card = event["card"]
            frames.setdefault(card["conversation_id"], []).append(time.monotonic())

    emu.on_change(on_event)
    await emu.start()
    proc = await asyncio.create_subprocess_exec(
        *child(args, "runtime", emu.ws_url), stdout=asyncio.subprocess.PIPE
    )
    expected = answer_text(args.chunks)
    try:
        await wait_for(lambda: emu.connected(BOT), 30, "robot subscribed")
        gc.collect()
        gc.disable()
        started = time.monotonic()
        for i in range(args.streams):
            frames[f"group-{i}"] = [time.monotonic()]
            await emu.push_message(
                BOT,
                user_id=f"user{i}",
                msgtype="text",
                content={"content": f"@Robot question {i}: how do I get a refund?"},
                chat_type="group",
                chatid=f"group-{i}",
            )

        def finals() -> list[Any]:
            return [
                c
                for c in emu.cards.values()
                if c.finished and len((c.template or {}).get("button_list") or []) == 4
            ]

        try:
            await wait_for(lambda: len(finals()) >= args.streams, args.timeout, "final frames")
        except TimeoutError as exc:
            print(f"  (stopped waiting: {exc})")
        wall = time.monotonic() - started
    finally:
        gc.enable()
        proc.send_signal(signal.SIGTERM)
        out, _ = await proc.communicate()
        await emu.stop()
    client = json.loads(out.decode().strip().splitlines()[-1])
    landed = [c for c in finals() if expected in c.content]
    gaps = []
    for times in frames.values():
        ordered = sorted(times)
        gaps.append(max((b - a for a, b in itertools.pairwise(ordered)), default=0.0))
    calls = [c for c in emu.calls if c["route"].startswith("aibot_")]
    return {
        "wall": wall,
        "frames": len(calls),
        "errors": sum(1 for c in calls if c["status"] >= 400),
        "gaps": gaps,
        "landed": len(landed),
        "finished": len(finals()),
        **client,
    }


async def main(args: argparse.Namespace) -> None:
    print(
        f"WeCom robot mode; python {sys.version.split()[0]}, {os.cpu_count()} cpus; "
        f"emulator and client in separate processes on 127.0.0.1"
    )
    clients = [c for c in args.clients.split(",") if c]
    if clients:
        print(
            f"\nIntake: paced {args.count} callbacks at {args.rate:g}/s, burst {args.burst}; "
            "ack = callback written -> first frame on its req_id read"
        )
        rows = [["client", "phase", "callbacks", "rate /s", "ack p50 ms", "ack p99 ms", "max ms"]]
        cpu_rows = [["client", "client CPU ms / 1000 callbacks"]]
        for client in clients:
            phases, cpu = await intake(client, args)
            for phase in phases[1:]:
                rows.append(
                    [
                        client,
                        phase.name,
                        str(len(phase.latencies)),
                        f"{phase.rate:,.0f}",
                        pct(phase.latencies, 0.50, 1000),
                        pct(phase.latencies, 0.99, 1000),
                        pct(phase.latencies, 1.0, 1000),
                    ]
                )
            cpu_rows.append([client, f"{cpu * 1000:.1f}"])
        print()
        print_table(rows)
        print()
        print_table(cpu_rows)
    if args.streams:
        budget = args.app_rate * 0.9
        print(
            f"\nStreams: {args.streams} concurrent answers of {args.chunks} chunks every "
            f"{args.chunk_delay:g}s, the support robot on imrobots (app_rate "
            f"{args.app_rate:g} frames/s, client budget {budget:g}/s)"
        )
        r = await streams(args)
        print()
        print_table(
            [
                ["figure", "value"],
                ["wall s (first message to last final)", f"{r['wall']:.1f}"],
                ["frames sent (all aibot_* calls)", str(r["frames"])],
                ["acks pending: most at once", str(r["peak_pending"])],
                ["acks pending: at the end", str(r["pending"])],
                ["errors: frames refused", str(r["errors"])],
                ["errors: answers failed (runtime)", str(r["failed"])],
                [
                    "longest gap per stream p50/p99/max s",
                    f"{pct(r['gaps'], 0.5)} / {pct(r['gaps'], 0.99)} / {pct(r['gaps'], 1.0)}",
                ],
                ["  fair share (streams / budget) s", f"{args.streams / budget:.1f}"],
                ["finals landed (whole answer, buttons)", f"{r['landed']} / {args.streams}"],
                ["answers degraded (runtime)", str(r["degraded"])],
            ]
        )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="paced phase, callbacks/s")
    parser.add_argument("--count", type=int, default=6000, help="callbacks in the paced phase")
    parser.add_argument("--burst", type=int, default=10000, help="callbacks in the burst phase")
    parser.add_argument("--clients", default="plugin,sdk", help="plugin,sdk (empty: none)")
    parser.add_argument("--streams", type=int, default=500, help="concurrent answers (0: none)")
    parser.add_argument("--chunks", type=int, default=40, help="chunks per answer")
    parser.add_argument("--chunk-delay", type=float, default=0.05, help="seconds between chunks")
    parser.add_argument("--app-rate", type=float, default=50.0, help="the plugin's app_rate")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for finals")
    parser.add_argument("--child", choices=("plugin", "sdk", "runtime"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "plugin":
        asyncio.run(run_plugin_client(args.url))
    elif args.child == "sdk":
        run_sdk_client(args.url)
    elif args.child == "runtime":
        asyncio.run(run_runtime_client(args.url, args.chunks, args.chunk_delay, args.app_rate))
    else:
        asyncio.run(main(args))
