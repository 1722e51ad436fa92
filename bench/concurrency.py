"""Many answers at once: the imrobots engine beside a handler written the seed's way.

    python bench/concurrency.py [--answers 1000] [--seconds 5] [--seed-answers 10]

Both runs use the in-memory platform (no network) with a generous quota, one
conversation per answer, and an agent that writes for ``--seconds`` seconds in
chunks of 0.1 s.

- ``engine``: :class:`imrobots.RobotRuntime` with the default robot, which
  streams the agent's answer through :class:`~imrobots.streaming.AnswerStream`
  (the async agent never blocks the loop; card updates go out from a separate
  pump, paced per card and by the app-wide limiter).
- ``seed``: the seed tutorial's handler: an ``async`` handler that calls the
  agent synchronously (a sync generator that ``time.sleep``\\ s between
  chunks, blocking the event loop) and awaits each card update inline, with
  the seed's rule (every 2 s or 5 chunks, at most 20 updates). Since it blocks
  the loop, answers run one after the other; it is run for ``--seed-answers``
  answers and the time for ``--answers`` is extrapolated linearly (said so in
  the output).

For each run the script prints the wall time from the first message to the
last final card, answers per second, final cards delivered, card updates per
answer, and the longest stall of the event loop (a 10 ms ticker measures it:
anything that blocks the loop shows up there, and every other user waits that
long).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import attrs

from imrobots.agents import AgentRequest
from imrobots.cards import CardStatus, final_card, streaming_card, thinking_card
from imrobots.memory import MemoryPlatform, MemorySettings
from imrobots.models import Message
from imrobots.robot import Reply, Robot
from imrobots.runtime import RobotRuntime, RuntimeOptions

CHUNK_SECONDS = 0.1
GENEROUS_RATE = 100_000.0
"""Requests per second of the simulated platform: no quota pressure in this bench."""


@attrs.frozen
class Figures:
    label: str
    answers: int
    seconds: float
    wall: float
    finals: int
    updates_per_answer: float
    max_stall: float
    extrapolated: bool = False


def chunks_for(seconds: float) -> list[str]:
    return [f"word{i} " for i in range(max(1, round(seconds / CHUNK_SECONDS)))]


def async_agent(seconds: float) -> Any:
    chunks = chunks_for(seconds)

    async def agent(request: AgentRequest) -> AsyncIterator[str]:
        for chunk in chunks:
            await asyncio.sleep(CHUNK_SECONDS)
            yield chunk

    return agent


def blocking_agent(seconds: float) -> Any:
    chunks = chunks_for(seconds)

    def agent(question: str) -> Iterator[str]:
        for chunk in chunks:
            time.sleep(CHUNK_SECONDS)  # the seed's agent: a blocking call per chunk
            yield chunk

    return agent


class SeedStyleRobot(Robot):
    """The seed's handler, in this framework's terms, with its mistakes kept."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.blocking = blocking_agent(seconds)

    async def on_message(self, message: Message, reply: Reply) -> None:
        platform = self.runtime.platform
        question = message.text
        ref = await platform.send_card(message.target, thinking_card(question), key=message.id)
        text, pending, updates, last = "", 0, 0, time.monotonic()
        for chunk in self.blocking(question):  # runs on the event loop, blocking it
            text += chunk
            pending += 1
            if updates < 19 and (time.monotonic() - last >= 2.0 or pending >= 5):
                await platform.update_card(ref, streaming_card(question, text))
                updates += 1
                pending = 0
                last = time.monotonic()
        await platform.update_card(ref, final_card(question, text, feedback=None))


async def ticker(stalls: list[float], stop: asyncio.Event) -> None:
    """Record how late a 10 ms tick comes: the event loop's stalls."""
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.sleep(0.01)
        stalls.append(time.monotonic() - before - 0.01)


async def run(label: str, robot: Robot, answers: int, seconds: float) -> Figures:
    platform = MemoryPlatform(MemorySettings(app_rate=GENEROUS_RATE, update_interval=0.5))
    runtime = RobotRuntime(
        name="bench",
        robot=robot,
        platform=platform,
        options=RuntimeOptions(
            strategy="concurrent", max_concurrent=answers, max_pending=answers * 2
        ),
    )
    await runtime.start()
    stalls: list[float] = []
    stop = asyncio.Event()
    watcher = asyncio.create_task(ticker(stalls, stop))
    started = time.monotonic()
    try:
        for i in range(answers):
            await platform.say(f"question {i}", conversation=f"c{i}")
            await asyncio.sleep(0)  # one message per loop iteration, as frames off a socket
        await runtime.wait_idle()
        wall = time.monotonic() - started
    finally:
        stop.set()
        await watcher
        await runtime.stop()
    expected = "".join(chunks_for(seconds))
    finals = sum(
        1
        for card in platform.cards.values()
        if card.status is CardStatus.FINAL and card.text == expected
    )
    updates = sum(1 for call in platform.calls if call.op in ("update_card", "stream_update"))
    # the final update is one of them; report the updates made while streaming
    return Figures(
        label=label,
        answers=answers,
        seconds=seconds,
        wall=wall,
        finals=finals,
        updates_per_answer=updates / answers - 1,
        max_stall=max(stalls, default=0.0),
    )


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {rest:02d} s"


def table(rows: list[Figures]) -> str:
    header = (
        "run",
        "answers",
        "s/answer",
        "wall time",
        "answers/s",
        "final cards",
        "updates/answer",
        "max loop stall",
    )
    lines = [header]
    for row in rows:
        lines.append(
            (
                row.label,
                f"{row.answers:,}",
                f"{row.seconds:g}",
                duration(row.wall) + (" *" if row.extrapolated else ""),
                f"{row.answers / row.wall:.2f}",
                "-" if row.extrapolated else f"{row.finals:,}/{row.answers:,}",
                "-" if row.extrapolated else f"{row.updates_per_answer:.1f}",
                "-" if row.extrapolated else f"{row.max_stall * 1000:.0f} ms",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


async def main(args: argparse.Namespace) -> int:
    print(
        f"{args.answers:,} answers streaming {args.seconds:g} s each "
        f"(chunks every {CHUNK_SECONDS:g} s) on the in-memory platform, "
        f"quota {GENEROUS_RATE:,.0f} requests/s"
    )
    engine = await run(
        "engine (imrobots)", Robot(agent=async_agent(args.seconds)), args.answers, args.seconds
    )
    print(f"engine: done in {duration(engine.wall)}")
    seed = await run("seed pattern", SeedStyleRobot(args.seconds), args.seed_answers, args.seconds)
    print(f"seed pattern: done in {duration(seed.wall)}")
    per_answer = seed.wall / seed.answers
    extrapolated = attrs.evolve(
        seed,
        label="seed, extrapolated",
        answers=args.answers,
        wall=per_answer * args.answers,
        extrapolated=True,
    )
    print()
    print(table([engine, seed, extrapolated]))
    print(
        f"\n* extrapolated: the seed pattern ran {seed.answers} answers one after the other "
        f"({per_answer:.2f} s each, the event loop blocked throughout);\n"
        f"  {args.answers:,} answers would take {args.answers:,} x {per_answer:.2f} s."
    )
    ratio = extrapolated.wall / engine.wall
    print(
        f"\nratio: for {args.answers:,} answers the seed pattern takes {ratio:,.0f}x as long "
        f"as the engine ({duration(extrapolated.wall)} vs {duration(engine.wall)})."
    )
    ok = engine.finals == engine.answers and seed.finals == seed.answers
    if not ok:
        print("ERROR: some answers did not end in a final card with the whole text")
    return 0 if ok else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=1000, help="answers through the engine")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds each answer streams")
    parser.add_argument(
        "--seed-answers",
        type=int,
        default=10,
        help="answers through the seed pattern (they run one after the other)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse())))
