"""Hundreds of answers under one platform quota: no refusals, the quota used, fair turns.

    python bench/rate_limit.py [--answers 500] [--seconds 60] [--quota 20]

The in-memory platform enforces a server-side quota of ``--quota`` requests
per second (fixed one-second windows; a call beyond it is refused as rate
limited, like DingTalk's 403 ``QpsLimit``) and declares the same rate to the
client, whose app-wide limiter spends 90% of it. ``--answers`` answers arrive
at once, one per conversation, each streaming ``--seconds`` seconds of text.

Printed:

- refused calls (the platform's rate-limit errors): the target is zero;
- the share of the quota used while answers were active: calls / (window x
  quota), the window running from the first call to the last final card; the
  limiter's ceiling is 90%, the target at least 80%;
- final cards delivered with the whole answer;
- fairness: the longest wait between two versions of any answer's card
  (thinking -> updates -> final), against the fair share: with ``N`` answers
  sharing ``0.9 x quota`` calls/s, each gets a turn every ``N / (0.9 x quota)``
  seconds. The target is at most 3x the fair share; the median answer's longest
  wait is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

from imrobots.agents import AgentRequest
from imrobots.cards import Card, CardStatus
from imrobots.memory import MemoryPlatform, MemorySettings
from imrobots.robot import Robot
from imrobots.runtime import RobotRuntime, RuntimeOptions


def make_agent(seconds: float) -> tuple[Any, str]:
    chunks = [f"word{i} " for i in range(max(1, round(seconds * 10)))]

    async def agent(request: AgentRequest) -> AsyncIterator[str]:
        for chunk in chunks:
            yield chunk
            await asyncio.sleep(0.1)

    return agent, "".join(chunks)


async def main(args: argparse.Namespace) -> int:
    platform = MemoryPlatform(MemorySettings(quota=args.quota, app_rate=args.quota))
    agent, answer = make_agent(args.seconds)
    runtime = RobotRuntime(
        name="bench",
        robot=Robot(agent=agent),
        platform=platform,
        options=RuntimeOptions(max_concurrent=args.answers, max_pending=args.answers * 2),
    )
    budget = args.quota * platform.capabilities.rate_headroom
    fair_share = args.answers / budget
    print(
        f"{args.answers} answers of {args.seconds:g} s at once; platform quota {args.quota:g} "
        f"requests/s, client limiter {budget:g}/s; fair share: a turn every "
        f"{fair_share:.1f} s per answer"
    )
    await runtime.start()
    started = time.monotonic()
    try:
        for i in range(args.answers):
            await platform.say(f"question {i}", conversation=f"c{i}")
        await runtime.wait_idle()
    finally:
        await runtime.stop()
    wall = time.monotonic() - started

    calls = platform.calls
    window = calls[-1].time - calls[0].time
    accepted = sum(call.ok for call in calls)
    used = len(calls) / (window * args.quota)
    finals = sum(
        card.status is CardStatus.FINAL and card.text == answer for card in platform.cards.values()
    )
    stuck = sum(
        card.status is None or not card.status.is_terminal for card in platform.cards.values()
    )
    streamed = sum(
        any(isinstance(v, Card) and v.status is CardStatus.STREAMING for _, v in card.history)
        for card in platform.cards.values()
    )
    gaps = []
    for card in platform.cards.values():
        stamps = [at for at, _ in card.history]
        gaps.append(max((b - a for a, b in itertools.pairwise(stamps)), default=0.0))
    longest = max(gaps)
    median = statistics.median(gaps)

    rows = [
        ("wall time", f"{wall:.1f} s"),
        ("calls", f"{len(calls)} ({accepted} accepted)"),
        ("refused as rate limited", f"{platform.rejected_calls}   (target 0)"),
        ("active window", f"{window:.1f} s"),
        ("quota used", f"{used:.1%}   (ceiling 90%, target >= 80%)"),
        ("final cards", f"{finals}/{args.answers} with the whole answer, {stuck} stuck"),
        ("answers that streamed", f"{streamed}/{args.answers} (updates before the final)"),
        ("fair share", f"{fair_share:.2f} s between turns"),
        (
            "longest wait, worst answer",
            f"{longest:.2f} s = {longest / fair_share:.2f}x fair share   (target <= 3x)",
        ),
        (
            "longest wait, median answer",
            f"{median:.2f} s = {median / fair_share:.2f}x fair share",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    ok = (
        platform.rejected_calls == 0
        and used >= 0.8
        and finals == args.answers
        and longest <= 3 * fair_share
    )
    print("\nall targets met" if ok else "\nSOME TARGETS NOT MET")
    return 0 if ok else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds each answer streams")
    parser.add_argument("--quota", type=float, default=20.0, help="platform requests per second")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse())))
