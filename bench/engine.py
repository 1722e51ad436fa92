"""The engine's goals table, measured on the DingTalk emulator beside the seed's handler.

    python bench/engine.py            # every row, each figure the median of 3 runs (~15 min)
    python bench/engine.py --quick    # one run per figure, smaller loads (~3 min)
    python bench/engine.py --rows 1,4 # only some rows

The DingTalk emulator runs in this process, on the loop ``imrobots emulate`` uses
(uvloop where installed). Each client (the robot on ``imrobots`` with its DingTalk
plugin in StandardCard mode as the issue measures it, ``--card-mode ai`` for AI cards;
or the seed's handler on the official ``dingtalk-stream`` SDK; or the bare SDK) runs in
a subprocess of its own, so the CPU, memory and event-loop figures are the client's
alone. The robot's process
reports its own loop stalls (a 10 ms ticker; also in CPU time, which a busy machine
does not inflate), its collector's pauses, its answers' first-update latencies
(``AnswerResult``) and its resident memory; CPU is its user+system time from ``/proc``.

Rows (the anchor is the seed's handler, or the bare SDK for intake):

1. 1,000 concurrent answers of 5 s, quota lifted: wall time / 5 s. The agent
   streams 50 chunks 100 ms apart, as the issue measured it. The seed runs answers
   one after another (its handler blocks), so its figure is extrapolated from
   ``--seed-answers``.
2. The same with 2,000 answers.
3. Client CPU per 1,000 answers of 100 chunks 50 ms apart (the issue's row says
   100 chunks): runs of their own, whose wall time / 5 s is printed under the
   table (twice the chunks of row 1, so each answer's agent wakes, and is late,
   twice as often).
4. Longest event-loop stall with 1,000 answers (from row 1's runs; the seed's
   loop is blocked for a whole answer each time).
5. First token -> first update p99 at the default quota (20 calls/s per API,
   client budget 18), low load: 50 answers of 2 s arriving 2 a second, which keep
   the busiest API (card updates) under half its quota (printed); and the calls
   the emulator refused. Beside it, the same at 10 answers a second ("overload"):
   there the card updates asked for are about twice what the API allows, so a
   first update waits for the next slot that frees (at most a tenth of a second:
   the limiter spreads each second's calls over its tenths), ahead of every
   running answer's intermediate updates (``Priority``).
6. The busiest API's share of its quota with 500 answers of 30 s streaming at
   once, at 20 calls/s per API (the client allows 18: 90 % is the ceiling);
   refusals; the longest wait between two versions of any card against the
   fair share (``answers / 18`` seconds).
7. CPU per 1,000 inbound messages through the full runtime (a robot that
   answers nothing) against the bare SDK with an empty handler.
8. 1,000 concurrent answers with default settings: row 1 runs the robot with
   ``RuntimeOptions()`` untouched, so it is row 1's wall time.
9. Resident memory per idle conversation after 10,000 answers in 10,000
   conversations (history bounded: ``history_limit`` turns, ``history_ttl``,
   at most 10,000 conversations in the memory store), and in brackets the Python
   heap per conversation from one more run under ``tracemalloc`` (RSS keeps the
   allocator's high-water mark of the answers in flight; see ``memory_run``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import logging
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dingtalk_answers  # the seed's handler, run as a subprocess
import dingtalk_intake  # the bare SDK, run as a subprocess

APP = "engineapp"
SECRET = "engine-secret"
LIFTED = 1_000_000
TICK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the robot (child)


async def robot_child(args: argparse.Namespace) -> None:
    """The robot process: answers on the emulator and reports figures on request (stdin)."""
    import gc

    from imrobots import Robot, RobotRuntime, RuntimeOptions, Secret
    from imrobots.examples import SupportRobot
    from imrobots_dingtalk.platform import DingTalkPlatform, DingTalkSettings

    chunks, delay = args.chunks, args.chunk_delay
    if args.trace:
        import tracemalloc

        tracemalloc.start()

    async def model(request: Any) -> AsyncIterator[str]:
        for i in range(chunks):
            if delay:
                await asyncio.sleep(delay)
            yield f"w{i} "

    class Silent(Robot):
        async def on_message(self, message: Any, reply: Any) -> None:
            return None

    latencies: list[float] = []

    class Hooks:
        def reply_finished(self, robot: str, message: Any, result: Any) -> list[None]:
            if result.first_update_latency is not None:
                latencies.append(result.first_update_latency)
            return [None]

    # The parent said the card mode once (main); every robot child would say it again.
    logging.getLogger("imrobots_dingtalk").addFilter(
        lambda record: not record.getMessage().startswith(f"dingtalk app {APP}: ")
    )
    platform = DingTalkPlatform(
        DingTalkSettings(
            client_id=APP,
            client_secret=Secret(SECRET),
            openapi_endpoint=args.url,
            app_rate=args.app_rate,
            card_mode=os.environ.get("BENCH_CARD_MODE", "standard"),  # type: ignore[arg-type]
        )
    )
    robot: Robot = Silent() if args.silent else SupportRobot(agent=model)
    runtime = RobotRuntime(
        name="support", robot=robot, platform=platform, options=RuntimeOptions(), hooks=Hooks()
    )
    await runtime.start()
    stall = 0.0
    stalls: list[tuple[float, float, float]] = []  # (since reset, stall, its CPU) if > 20 ms
    since = time.monotonic()
    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}  # collector pauses by generation
    gc_started = 0.0

    def on_gc(phase: str, info: dict[str, int]) -> None:
        nonlocal gc_started
        if phase == "start":
            gc_started = time.thread_time()
        else:  # in CPU time, as cpu_stall
            pauses[info["generation"]].append(time.thread_time() - gc_started)

    gc.callbacks.append(on_gc)

    cpu_stall = 0.0  # the longest stall in CPU time: on a busy machine the wall-clock
    # stall includes the time the process waited for a core, this one does not

    async def ticker() -> None:
        nonlocal stall, cpu_stall
        while True:
            before, cpu = time.monotonic(), time.thread_time()
            await asyncio.sleep(0.01)
            late = time.monotonic() - before - 0.01
            stall = max(stall, late)
            used = time.thread_time() - cpu
            cpu_stall = max(cpu_stall, used)
            if late > 0.02:
                stalls.append((round(before - since, 3), round(late, 3), round(used, 3)))

    watcher = asyncio.create_task(ticker())
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True}), flush=True)
    while line := (await reader.readline()).decode().strip():
        if line == "reset":
            stall = cpu_stall = 0.0
            since = time.monotonic()
            stalls.clear()
            for paused in pauses.values():
                paused.clear()
            latencies.clear()
            print(json.dumps({"ok": True}), flush=True)
        elif line == "report":
            collector = {
                f"gen{g}": {"count": len(p), "max_ms": max(p, default=0) * 1000}
                for g, p in pauses.items()
            }
            longest = sorted(stalls, key=lambda s: -s[2])[:5]
            gc.collect()
            rss = _rss_kb(os.getpid())
            report = {"stall": stall, "cpu_stall": cpu_stall, "latencies": latencies, "rss_kb": rss}
            if args.trace:
                report["heap_bytes"] = tracemalloc.get_traced_memory()[0]
            report |= {"gc": collector, "stalls": longest}
            print(json.dumps(report), flush=True)
        else:
            break
    watcher.cancel()
    await runtime.stop()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


class Child:
    """A client subprocess and the emulator app it talks to."""

    def __init__(self, emu: Any, command: list[str], *, robot: bool, app: str = APP) -> None:
        self.emu, self.command, self.robot, self.app = emu, command, robot, app
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Child:
        self.proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE if self.robot else None,
            stdout=asyncio.subprocess.PIPE if self.robot else None,
        )
        if self.robot:
            await self._answer()
        await self.emu.wait_for(
            lambda: bool(self.emu.live_connections(self.app)), 60, what="client"
        )
        return self

    async def _answer(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        result: dict[str, Any] = json.loads(line)
        return result

    async def ask(self, what: str) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"{what}\n".encode())
        await self.proc.stdin.drain()
        return await self._answer()

    @property
    def cpu(self) -> float:
        assert self.proc is not None
        return _cpu(self.proc.pid)

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.robot and self.proc.stdin is not None:
            self.proc.stdin.write(b"quit\n")
            await self.proc.stdin.drain()
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
                return
            except TimeoutError:
                pass
        self.proc.send_signal(signal.SIGTERM)
        await self.proc.wait()


def robot_command(
    url: str, *, chunks: int, delay: float, app_rate: float, silent: bool, trace: bool = False
) -> list[str]:
    command = [sys.executable, __file__, "--child", "robot", "--url", url]
    command += ["--chunks", str(chunks), "--chunk-delay", str(delay), "--app-rate", str(app_rate)]
    return command + (["--silent"] if silent else []) + (["--trace"] if trace else [])


def seed_command(url: str, *, chunks: int, delay: float) -> list[str]:
    path = str(Path(__file__).with_name("dingtalk_answers.py"))
    return [sys.executable, path, "--child", "--url", url, "--chunks", str(chunks),
            "--chunk-delay", str(delay)]  # fmt: skip


def sdk_command(url: str) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).with_name("dingtalk_intake.py")),
        "--child",
        "sdk",
        "--url",
        url,
    ]


# --------------------------------------------------------------------------- measuring


def _positive(text: str) -> int:
    """``--seed-answers``: a whole number of 1 or more."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of 1 or more")
    return value


def _rows(text: str) -> set[int]:
    """``--rows``: "1,4" -> {1, 4}; anything else is a usage error naming the rows."""
    try:
        rows = {int(part) for part in text.split(",")}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give row numbers 1-9, e.g. 1,4") from None
    if not rows <= set(range(1, 10)):
        raise argparse.ArgumentTypeError(f"{text!r}: the rows are numbered 1-9")
    return rows


def emulator(qps: int) -> Any:
    from imrobots_dingtalk.emulator import DingTalkEmulator

    # The test server starts each run with the earlier runs' garbage collected, and what
    # is left frozen out of its collector's way: a full collection of thousands of old
    # answers' records in the middle of a run would hold every client's calls up for a
    # few ms (row 5's p99 is the slowest of 50 first updates).
    gc.collect()
    gc.freeze()
    # SYSTEM pings as DingTalk sends them (every 20-30 s): without them the client takes
    # the connection for muted after 40 s and replaces it in the middle of a long row
    emu = DingTalkEmulator(seed=1, ping_interval=20.0, qps_limit=qps)
    return emu


def _final(card: Any) -> bool:
    """Whether a card shows its final state (the four feedback buttons)."""
    return len(card.view.get("buttons") or []) == 4


class Finals:
    """Counts the emulator's final cards, and when the last of them became final.

    A card once final stays so: each check reads only the cards not final at the last
    one (and those made since), so that polling costs the test server little. Counting
    every card on every change, as the bench did, took about 7 % of the test server's
    CPU at 1,000 answers, most of it in the burst of final cards it was timing."""

    def __init__(self, emu: Any) -> None:
        self.emu = emu
        self.count = 0
        self.last_at = 0.0
        """``time.monotonic()`` of the last card that became final (its last update)."""
        self._seen = 0
        self._pending: dict[str, Any] = {}

    def __call__(self) -> int:
        cards = self.emu.cards
        if len(cards) > self._seen:
            for key in itertools.islice(cards, self._seen, None):
                self._pending[key] = cards[key]
            self._seen = len(cards)
        done = [key for key, card in self._pending.items() if _final(card)]
        for key in done:
            card = self._pending.pop(key)
            self.count += 1
            self.last_at = max(self.last_at, card.updated_at)
        return self.count

    async def wait(self, count: int, timeout: float, what: str) -> float:
        """Wait (polling every 10 ms) until ``count`` cards are final; the time the last
        one became final, ``time.monotonic()``. :class:`TimeoutError` after ``timeout``
        seconds."""
        deadline = time.monotonic() + timeout
        while self() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: {self.count} of {count} within {timeout:g}s")
            await asyncio.sleep(0.01)
        return self.last_at


def refused(emu: Any) -> int:
    return sum(1 for c in emu.calls if c.status in (403, 429))


async def push(
    emu: Any,
    count: int,
    *,
    per_second: float | None = None,
    prefix: str = "c",
    app: str = APP,
) -> None:
    started = time.monotonic()
    for i in range(count):
        if per_second is not None:
            due = started + i / per_second
            if due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())
        await emu.push_message(
            app, text=f"question {i}", conversation_id=f"{prefix}{i}", sender_staff_id=f"u{i}"
        )
        if per_second is None and i % 50 == 49:
            await asyncio.sleep(0)


async def answers_run(count: int, seconds: float, chunks: int) -> dict[str, float]:
    """Row 1/2/3/4/8: ``count`` concurrent answers, quota lifted, on the robot."""
    async with emulator(LIFTED) as emu:
        emu.add_app(APP, SECRET)
        command = robot_command(
            emu.base_url, chunks=chunks, delay=seconds / chunks, app_rate=LIFTED, silent=False
        )
        async with Child(emu, command, robot=True) as child:
            await child.ask("reset")
            cpu = child.cpu
            server_cpu = time.process_time()
            started = time.monotonic()
            await push(emu, count)
            wall = await Finals(emu).wait(count, 600, "final cards") - started
            cpu = child.cpu - cpu
            server_cpu = time.process_time() - server_cpu
            report = await child.ask("report")
    return {
        "wall": wall,
        "ratio": wall / seconds,
        "cpu_per_1000": cpu / count * 1000,
        "server_cpu_per_1000": server_cpu / count * 1000,
        "stall_ms": report["stall"] * 1000,
        "cpu_stall_ms": report["cpu_stall"] * 1000,
        "refused": refused(emu),
        "gc": report["gc"],
        "stalls": report["stalls"],
    }


async def seed_run(answers: int, seconds: float, chunks: int, target: int) -> dict[str, float]:
    """The seed's handler: ``answers`` answered one after another, extrapolated to ``target``."""
    app = dingtalk_answers.APP
    async with emulator(LIFTED) as emu:
        emu.add_app(app, dingtalk_answers.SECRET)
        command = seed_command(emu.base_url, chunks=chunks, delay=seconds / chunks)
        async with Child(emu, command, robot=False, app=app) as child:
            cpu = child.cpu
            started = time.monotonic()
            await push(emu, answers, app=app)
            wall = await Finals(emu).wait(answers, 600, "seed final cards") - started
            cpu = child.cpu - cpu
    per_answer = wall / answers
    return {
        "ratio": per_answer * target / seconds,
        "cpu_per_1000": cpu / answers * 1000,
        "stall_ms": per_answer * 1000,
    }


async def first_update_run(count: int, per_second: float) -> dict[str, float]:
    """Row 5: answers of 2 s (20 chunks, 100 ms apart) arriving ``per_second`` at the
    default quota; and how much of its quota the busiest API's calls took."""
    async with emulator(20) as emu:
        emu.add_app(APP, SECRET)
        command = robot_command(emu.base_url, chunks=20, delay=0.1, app_rate=20, silent=False)
        async with Child(emu, command, robot=True) as child:
            await child.ask("reset")
            await push(emu, count, per_second=per_second)
            await Finals(emu).wait(count, 300, "final cards")
            report = await child.ask("report")
    latencies = sorted(report["latencies"])
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0.0
    calls = [c for c in emu.calls if c.route != "oauth2.accessToken" and c.status == 200]
    span = max(c.at for c in calls) - min(c.at for c in calls)
    busiest = max(Counter(c.route for c in calls).values())
    return {"p99_ms": p99 * 1000, "refused": refused(emu), "load": busiest / (span * 20)}


async def quota_run(count: int, seconds: float) -> dict[str, float]:
    """Row 6: ``count`` long answers at 20 calls/s per API."""
    async with emulator(20) as emu:
        emu.add_app(APP, SECRET)
        command = robot_command(
            emu.base_url, chunks=int(seconds * 10), delay=0.1, app_rate=20, silent=False
        )
        async with Child(emu, command, robot=True) as child:
            await child.ask("reset")
            await push(emu, count)
            await Finals(emu).wait(count, 900, "final cards")
    calls = [c for c in emu.calls if c.route != "oauth2.accessToken" and c.status == 200]
    start, end = min(c.at for c in calls), max(c.at for c in calls)
    by_route: dict[str, int] = {}
    for call in calls:
        by_route[call.route] = by_route.get(call.route, 0) + 1
    busiest = max(by_route.values())
    gaps = []
    for card in emu.cards.values():
        times = [u.at for u in card.updates]
        gaps.append(max((b - a for a, b in itertools.pairwise(times)), default=0.0))
    fair = count / (20 * 0.9)
    return {
        "quota_used": busiest / ((end - start) * 20),
        "refused": refused(emu),
        "gap_ratio": max(gaps) / fair,
    }


async def intake_run(count: int, *, sdk: bool) -> dict[str, float]:
    """Row 7: CPU per 1,000 inbound messages (no answers)."""
    app = dingtalk_intake.APP if sdk else APP
    async with emulator(LIFTED) as emu:
        emu.add_app(app, dingtalk_intake.SECRET if sdk else SECRET)
        if sdk:
            command = sdk_command(emu.base_url)
        else:
            command = robot_command(emu.base_url, chunks=1, delay=0, app_rate=LIFTED, silent=True)
        async with Child(emu, command, robot=not sdk, app=app) as child:
            await push(emu, 200, prefix="warm", app=app)  # warm-up, not measured
            await emu.wait_for(lambda: _acked(emu) >= 200, 120, what="warm-up acks")
            cpu = child.cpu
            await push(emu, count, per_second=2000, app=app)
            await emu.wait_for(lambda: _acked(emu) >= 200 + count, 300, what="acks")
            cpu = child.cpu - cpu
    return {"cpu_ms_per_1000": cpu / count * 1000 * 1000}


def _acked(emu: Any) -> int:
    return sum(1 for a in emu.acks.values() if a.kind == "message" and a.acked_at is not None)


async def memory_run(count: int, *, trace: bool = False) -> dict[str, float]:
    """Row 9: resident memory per idle conversation after ``count`` answers, paced at
    250 a second (at 1,000 a second the emulator, in this process, falls behind: card
    opens wait for a pooled connection past their time-out, and the backlog, not the
    idle conversations, sets the figure). With ``trace``: the Python heap
    (``tracemalloc``) per conversation instead, which the allocator's high-water mark
    (memory of the answers in flight that the process keeps) does not inflate."""
    async with emulator(LIFTED) as emu:
        emu.add_app(APP, SECRET)
        command = robot_command(
            emu.base_url, chunks=1, delay=0, app_rate=LIFTED, silent=False, trace=trace
        )
        key = "heap_bytes" if trace else "rss_kb"
        unit = 1 if trace else 1024
        async with Child(emu, command, robot=True) as child:
            done = Finals(emu)
            await push(emu, 500, prefix="warm")
            await done.wait(500, 300, "warm-up")
            before = (await child.ask("report"))[key]
            await push(emu, count, per_second=250)
            await done.wait(500 + count, 600, "final cards")
            after = (await child.ask("report"))[key]
    return {"bytes_per_conversation": (after - before) * unit / count}


# --------------------------------------------------------------------------- the table

ROWS_HELP = """rows (each figure the median of 3 runs; bench/README.md and this file's docstring
say exactly what each measures):
  1  1,000 concurrent answers of 5 s (50 chunks 100 ms apart), quota lifted: wall / 5 s
  2  the same with 2,000 answers
  3  client CPU per 1,000 answers of 100 chunks 50 ms apart (runs of its own)
  4  longest event-loop stall with 1,000 answers (row 1's runs)
  5  first token -> first update p99 at the default quota, low load and overload
  6  busiest API's share of its quota, 500 streams at 20 calls/s per API
  7  CPU per 1,000 inbound messages, full runtime against the bare dingtalk-stream SDK
  8  1,000 answers with default settings (row 1's runs)
  9  resident memory per idle conversation after 10,000 answers
--quick: one run per figure, lighter loads (300 and 600 answers instead of 1,000 and 2,000)"""


def spread(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    if not values:
        return "-"
    middle = statistics.median(values)
    if len(values) == 1:
        return fmt(middle)
    return f"{fmt(middle)} ({fmt(min(values))}-{fmt(max(values))})"


def reference_ms() -> float:
    """CPU milliseconds (best of 5) of a fixed piece of interpreter work (JSON, dicts,
    strings, small calls, like a robot's), to compare runs made at different times: the
    figures of a VM whose speed changes move with it."""
    record = {"id": "m1", "text": "w1 " * 50, "items": list(range(20)), "ok": True}

    def work() -> int:
        total = 0
        for i in range(4000):
            copy = json.loads(json.dumps(record))
            copy["id"] = f"m{i}"
            total += len(copy["text"].split()) + sum(copy["items"])
        return total

    best = math.inf
    for _ in range(5):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best * 1000


def reference_in_child() -> float:
    """:func:`reference_ms` in a fresh interpreter: this process's heap (the emulator's
    records of every run, frozen) would slow the same work down by itself."""
    code = "import engine; print(engine.reference_ms())"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parent,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout)


async def main(args: argparse.Namespace) -> None:
    from imrobots import Secret
    from imrobots_dingtalk.platform import DingTalkSettings

    # says the robot's card mode (a warning for "standard") once; the children do not
    DingTalkSettings(client_id=APP, client_secret=Secret(SECRET), card_mode=args.card_mode)
    runs = 1 if args.quick else 3
    reference = [reference_in_child()]
    servers: list[str] = []
    notes: list[str] = []
    rows = args.rows or set(range(1, 10))
    n1 = 300 if args.quick else 1000
    n2 = 600 if args.quick else 2000
    table: list[tuple[str, str, str, str]] = []

    def x(v: float) -> str:
        return f"{v:.2f} x"

    def s(v: float) -> str:
        return f"{v:.2f} s"

    def ms(v: float) -> str:
        return f"{v:.0f} ms" if v >= 10 else f"{v:.2f} ms"

    def pct(v: float) -> str:
        return f"{v * 100:.1f} %"

    answers: list[dict[str, float]] = []  # every answers_run, for the checks under the table
    if rows & {1, 4, 8}:
        engine = [await answers_run(n1, 5.0, 50) for _ in range(runs)]
        seed = [await seed_run(args.seed_answers, 5.0, 50, n1) for _ in range(runs)]
        answers += engine
        servers.append(f"{spread([r['server_cpu_per_1000'] for r in engine], s)} ({n1:,} answers)")
        if 1 in rows:
            table.append(
                (
                    f"{n1:,} concurrent answers (5 s each, 50 chunks), wall / 5 s",
                    spread([r["ratio"] for r in engine], x),
                    spread([r["ratio"] for r in seed], x) + " *",
                    "<= 1.10 x",
                )
            )
        if 4 in rows:
            table.append(
                (
                    f"longest event-loop stall at {n1:,} answers",
                    spread([r["stall_ms"] for r in engine], ms),
                    spread([r["stall_ms"] for r in seed], ms),
                    "<= 50 ms",
                )
            )
        if 8 in rows:
            table.append(
                (
                    f"{n1:,} concurrent answers, default settings, wall / 5 s",
                    spread([r["ratio"] for r in engine], x),
                    "-",
                    "<= 1.2 x",
                )
            )
    if 3 in rows:
        engine = [await answers_run(n1, 5.0, 100) for _ in range(runs)]
        seed = [await seed_run(args.seed_answers, 5.0, 100, n1) for _ in range(runs)]
        answers += engine
        table.append(
            (
                "client CPU per 1,000 answers (100 chunks)",
                spread([r["cpu_per_1000"] for r in engine], s),
                spread([r["cpu_per_1000"] for r in seed], s) + " *",
                "<= 3 s",
            )
        )
        notes.append(
            f"row 3's runs, {n1:,} answers of 100 chunks 50 ms apart: wall / 5 s "
            f"{spread([r['ratio'] for r in engine], x)}, longest stall "
            f"{spread([r['stall_ms'] for r in engine], ms)}"
        )
        server = spread([r["server_cpu_per_1000"] for r in engine], s)
        servers.append(f"{server} ({n1:,} answers of 100 chunks)")
    if 2 in rows:
        engine = [await answers_run(n2, 5.0, 50) for _ in range(runs)]
        answers += engine
        table.append(
            (
                f"{n2:,} concurrent answers, wall / 5 s",
                spread([r["ratio"] for r in engine], x),
                "-",
                "<= 1.25 x",
            )
        )
        servers.append(f"{spread([r['server_cpu_per_1000'] for r in engine], s)} ({n2:,} answers)")
    refusals = sum(r["refused"] for r in answers)
    assert refusals == 0, f"{refusals} calls refused with the quota lifted"
    if 5 in rows:
        # low load: 2 answers a second keep the busiest API (card updates) under half its
        # quota (printed); at 10 a second its calls would be 2.2 times what it allows, so
        # a first update can only wait for the next slot that frees (printed beside it)
        for per_second, label, goal in (
            (2, "low load", "<= 5 ms, 0 refused"),
            (10, "overload", "-"),
        ):
            first = [await first_update_run(50, per_second) for _ in range(runs)]
            table.append(
                (
                    f"first token -> first update p99, default quota, {label}",
                    spread([r["p99_ms"] for r in first], ms)
                    + f", {sum(r['refused'] for r in first):.0f} refused (busiest API at "
                    + spread([r["load"] for r in first], pct)
                    + " of its quota)",
                    "-",
                    goal,
                )
            )
    if 6 in rows:
        count, seconds = (200, 20.0) if args.quick else (500, 30.0)
        quota = [await quota_run(count, seconds) for _ in range(runs)]
        table.append(
            (
                f"busiest API's quota used, {count} streams at 20/s per API",
                spread([r["quota_used"] for r in quota], pct)
                + f", {sum(r['refused'] for r in quota):.0f} refused, longest gap "
                + spread([r["gap_ratio"] for r in quota], x)
                + " fair share",
                "-",
                ">= 90 %, 0 refused, gap <= 1.5 x",
            )
        )
    if 7 in rows:
        count = 2000 if args.quick else 5000
        mine = [await intake_run(count, sdk=False) for _ in range(runs)]
        sdk = [await intake_run(count, sdk=True) for _ in range(runs)]
        table.append(
            (
                "CPU per 1,000 inbound messages, full runtime",
                spread([r["cpu_ms_per_1000"] for r in mine], ms),
                spread([r["cpu_ms_per_1000"] for r in sdk], ms) + " (bare SDK)",
                "<= half the SDK's",
            )
        )
    if 9 in rows:
        count = 3000 if args.quick else 10_000
        memory = [await memory_run(count) for _ in range(runs)]
        heap = await memory_run(count, trace=True)

        def kb(v: float) -> str:
            return f"{v / 1024:.2f} KB"

        rss = [r["bytes_per_conversation"] for r in memory]
        if statistics.median(rss) < 0:
            notes.append(
                "RSS per idle conversation below 0: the process's resident memory fell "
                "across the run (the allocator gave back what the warm-up's answers in "
                "flight had raised); the Python heap figure measures what each conversation keeps"
            )
        table.append(
            (
                f"RSS per idle conversation after {count:,} answered",
                spread(rss, kb) + f" (Python heap {kb(heap['bytes_per_conversation'])})",
                "-",
                "<= 2 KB, bounded",
            )
        )

    header = ("figure", "imrobots", "seed's handler", "goal")
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(4)]
    for index, row in enumerate([header, *table]):
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))
        if index == 0:
            print("  ".join("-" * w for w in widths))
    print(
        "each figure the median of 3 runs, (min-max) beside it"
        if runs > 1
        else "one run per figure (--quick: lighter loads, figures that only hint at the goals)"
    )
    if any(row[2].endswith("*") for row in table):
        print(
            f"* the seed's figure extrapolated from {args.seed_answers} answers run one after "
            "another (its handler blocks its loop)"
        )
    for note in notes:
        print(note)
    if servers:
        print(f"the test server's CPU per 1,000 answers (this process): {', '.join(servers)}")
    reference.append(reference_in_child())
    print(
        f"machine speed: a fixed piece of interpreter work took {reference[0]:.0f} ms of CPU "
        f"before the runs and {reference[1]:.0f} ms after (lower is faster; this VM's figures "
        "move with it)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=ROWS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="one run per figure, lighter loads")
    parser.add_argument(
        "--rows", type=_rows, help="comma-separated row numbers 1-9, listed below (default: all)"
    )
    parser.add_argument(
        "--card-mode",
        choices=("standard", "ai"),
        default="standard",
        help="the robot's DingTalk card mode (default: standard, the seed's StandardCards)",
    )
    parser.add_argument(
        "--seed-answers",
        type=_positive,
        default=2,
        help="answers the seed's handler runs one after another, from which its rows 1, 3 "
        "and 4 are extrapolated (default: 2)",
    )
    parser.add_argument("--child", choices=("robot",), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--chunks", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--chunk-delay", type=float, default=0.05, help=argparse.SUPPRESS)
    parser.add_argument("--app-rate", type=float, default=20.0, help=argparse.SUPPRESS)
    parser.add_argument("--silent", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child == "robot":
        if os.environ.get("BENCH_PROFILE"):  # a cProfile of the robot process, for development
            import cProfile

            # CPU time, not wall time: on a shared machine a call that waits for the CPU
            # would otherwise look expensive
            from imrobots.loop import run

            profile = cProfile.Profile(time.process_time)
            profile.runcall(run, robot_child(arguments))
            profile.dump_stats(os.environ["BENCH_PROFILE"])
        else:
            # the loop `imrobots run` runs robots on: uvloop where installed, unless
            # IMROBOTS_LOOP=asyncio (imrobots.loop), which compares the two
            from imrobots.loop import run

            run(robot_child(arguments))
    else:
        os.environ["BENCH_CARD_MODE"] = arguments.card_mode  # the robot children read it
        # The emulator (the test server every client here talks to) on the loop `imrobots
        # emulate` uses: under 1,000 answers at once it must not be the slower end.
        from imrobots.loop import run

        run(main(arguments))
