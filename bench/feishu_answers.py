"""Many concurrent answers on Feishu, at the emulator's documented limits.

    python bench/feishu_answers.py [--answers 500] [--chunks 40] [--chunk-delay 0.05]
                                   [--setups cardkit,patch]

The Feishu emulator (127.0.0.1, in this process) enforces Feishu's documented limits
(PROTOCOLS 3.8, 3.9): per app and API 50 calls/s and 1,000/min (429 with 99991400),
5/s per chat for sends and replies and 5/s per PATCHed message (230020), 10/s per card
entity outside streaming mode. The support robot on ``imrobots`` (``RobotRuntime`` +
``FeishuPlatform``, default settings) answers ``--answers`` users at once, each
@-mentioning it in their own group; every answer is a simulated model of ``--chunks``
chunks ``--chunk-delay`` s apart. Setups: ``cardkit`` (the answer streams into a
CardKit card entity) and ``patch`` (a card message PATCHed, for apps without CardKit).

Printed, per setup:

- **rate-limit errors**: calls the emulator refused with 99991400 or 230020 (target
  0), and every other non-zero code by count;
- **busiest limit**: for each limit, the most calls counted in any of its windows
  (1 s or 60 s, sliding) against the limit, and for the busiest API its calls over the
  active window (first call to last final card) against what the limits allow in that
  window: ``min(50 x T, 1,000 x max(1, T / 60))`` (the client keeps 10% headroom and
  spreads each second over tenths: about 80% is its ceiling within the first minute,
  90% once the minute limit binds);
- **longest gap per card**: for each user, the longest time they saw nothing new
  (their message to the card's first appearance, or between two versions of the card,
  until the final one), p50/p99/max, beside the fair share: the time one call per
  answer takes at the client's budget for one API (40 calls/s, 4 per 0.1 s, while the
  answers fit in its 900 calls a minute; else 15/s);
- **finals landed**: cards showing Done with the four feedback buttons and the whole
  answer, out of ``--answers``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import itertools
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

APP = "cli_benchanswers"
SECRET = "bench-answers-secret"
WORDS = (
    "Refunds", "are", "possible", "within", "thirty", "days", "of", "delivery,", "with", "the",
    "prepaid", "label.",
)  # fmt: skip
RATE_LIMITED = (99991400, 230020)
ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (method, re.compile(pattern), name)
    for method, pattern, name in (
        ("POST", r"/im/v1/messages$", "im.message.create"),
        ("POST", r"/im/v1/messages/[^/]+/reply$", "im.message.reply"),
        ("PATCH", r"/im/v1/messages/[^/]+$", "im.message.patch"),
        ("POST", r"/cardkit/v1/cards$", "cardkit.card.create"),
        ("PUT", r"/cardkit/v1/cards/[^/]+$", "cardkit.card.update"),
        ("PATCH", r"/cardkit/v1/cards/[^/]+/settings$", "cardkit.card.settings"),
        ("PUT", r"/cardkit/v1/cards/[^/]+/elements/[^/]+/content$", "cardkit.card_element.content"),
    )
)
"""The emulator's OpenAPI routes and the API each counts on (its ``server.make_app``)."""


def chunk(i: int) -> str:
    return WORDS[i % len(WORDS)] + " "


def answer_text(chunks: int) -> str:
    return "".join(chunk(i) for i in range(chunks)).strip()


def api_of(method: str, path: str) -> str | None:
    for route_method, pattern, name in ROUTES:
        if method == route_method and pattern.search(path):
            return name
    return None


def pct(values: Sequence[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.2f}"


def peak(times: Sequence[float], seconds: float) -> int:
    """The most of ``times`` in any window of ``seconds`` (sliding)."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_left(ordered, t + seconds) - i for i, t in enumerate(ordered)), default=0
    )


def is_final(card: dict[str, Any], expected: str) -> bool:
    if not card.get("tags") or card["tags"][0] != "Done":
        return False
    buttons = [
        b for block in card["blocks"] if block["type"] == "buttons" for b in block["buttons"]
    ]
    text = " ".join(str(block.get("text") or "") for block in card["blocks"])
    return len(buttons) == 4 and expected in text


async def run(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    from imrobots import RobotRuntime, RuntimeOptions
    from imrobots.config import structure
    from imrobots.examples import SupportRobot
    from imrobots_feishu.emulator import FeishuEmulator
    from imrobots_feishu.platform import FeishuPlatform, FeishuSettings

    async def model(request: Any) -> AsyncIterator[str]:
        for i in range(args.chunks):
            await asyncio.sleep(args.chunk_delay)
            yield chunk(i)

    expected = answer_text(args.chunks)
    emu = FeishuEmulator()
    app = emu.add_app(APP, SECRET)
    seen: dict[str, list[float]] = {}
    """chat id -> when the user asked, then when each version of its card was shown."""
    finals: dict[str, float] = {}

    def on_event(event: dict[str, Any]) -> None:
        record = event.get("record") or {}
        if event.get("kind") != "card" or not record.get("from_app"):
            return
        chat = record["chat_id"]
        if chat in finals:
            return
        seen.setdefault(chat, []).append(time.monotonic())
        if is_final(record.get("card") or {}, expected):
            finals[chat] = time.monotonic()

    emu.on_change(on_event)
    await emu.start()
    settings = structure(
        {"app_id": APP, "app_secret": SECRET, "domain": emu.base_url, "card_mode": mode},
        FeishuSettings,
        path="bench",
    )
    runtime = RobotRuntime(
        name="support",
        robot=SupportRobot(agent=model),
        platform=FeishuPlatform(settings),
        options=RuntimeOptions(max_concurrent=max(100, args.answers), stale_after=None),
    )
    await runtime.start()
    try:
        await emu.wait_for(lambda: bool(emu.live(APP)), 30)
        first_call = len(emu.calls)
        started = time.monotonic()
        wall_started = time.time()
        for i in range(args.answers):
            chat = f"oc_bench_{i}"
            seen[chat] = [time.monotonic()]
            emu.push_message(
                APP,
                chat_id=chat,
                chat_type="group",
                sender=f"ou_user{i}",
                message_type="text",
                content={"text": f"@_user_1 question {i}: how do I get a refund?"},
                mentions=[emu.bot_mention(app)],
            )
        try:
            await emu.wait_for(lambda: len(finals) >= args.answers, args.timeout)
        except TimeoutError:
            print(f"  (stopped waiting after {args.timeout:g}s: {len(finals)} finals)")
        wall = time.monotonic() - started
        wall_ended = wall_started + wall
    finally:
        await runtime.stop(timeout=10)
        await emu.stop()
    calls = emu.calls[first_call:]
    return {
        "mode": mode,
        "wall": wall,
        "calls": calls,
        "window": (wall_started, wall_ended),
        "gaps": [
            max((b - a for a, b in itertools.pairwise(times)), default=0.0)
            for times in seen.values()
        ],
        "landed": len(finals),
        "chats": {m.message_id: m.chat_id for m in emu.messages.values()},
    }


def limits_table(result: dict[str, Any]) -> tuple[list[list[str]], str]:
    """Rows of the most calls counted in any window of each limit, and the busiest API's
    share over the active window."""
    calls = [c for c in result["calls"] if c.code not in RATE_LIMITED]
    by_api: dict[str, list[float]] = collections.defaultdict(list)
    by_chat: dict[str, list[float]] = collections.defaultdict(list)
    by_message: dict[str, list[float]] = collections.defaultdict(list)
    by_card: dict[str, list[float]] = collections.defaultdict(list)
    for call in calls:
        api = api_of(call.method, call.path)
        if api is None:
            continue
        by_api[api].append(call.wall)
        parts = call.path.split("/")
        if api == "im.message.reply":
            by_chat[result["chats"].get(parts[-2], parts[-2])].append(call.wall)
        elif api == "im.message.patch":
            by_message[parts[-1]].append(call.wall)
        elif api.startswith("cardkit.") and api != "cardkit.card.create":
            by_card[parts[parts.index("cards") + 1]].append(call.wall)
    rows = [["limit", "busiest", "most in a window", "limit", "share"]]

    def add(label: str, groups: dict[str, list[float]], seconds: float, limit: int) -> None:
        if not groups:
            return
        key, most = max(((k, peak(v, seconds)) for k, v in groups.items()), key=lambda x: x[1])
        rows.append([label, key, str(most), str(limit), f"{most / limit:.0%}"])

    add("per app and API, 1 s", by_api, 1.0, 50)
    add("per app and API, 60 s", by_api, 60.0, 1000)
    add("per chat (send/reply), 1 s", by_chat, 1.0, 5)
    add("per PATCHed message, 1 s", by_message, 1.0, 5)
    add("per card entity, 1 s (all calls)", by_card, 1.0, 10)
    start, end = result["window"]
    span = end - start
    allowed = min(50 * span, 1000 * max(1.0, span / 60))
    api, times = max(by_api.items(), key=lambda item: len(item[1]))
    share = (
        f"{api}: {len(times)} calls in {span:.1f} s, of {allowed:.0f} allowed "
        f"= {len(times) / allowed:.0%}"
    )
    return rows, share


def print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        cells = [c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(row)]
        print("  ".join(cells))
        if index == 0:
            print("  ".join("-" * w for w in widths))


async def main(args: argparse.Namespace) -> None:
    print(
        f"Feishu: {args.answers} concurrent answers of {args.chunks} chunks every "
        f"{args.chunk_delay:g}s; emulator at Feishu's limits (50/s and 1,000/min per app "
        f"and API, 5/s per chat and per PATCHed message); python "
        f"{sys.version.split()[0]}, {os.cpu_count()} cpus, emulator and robot in one process"
    )
    fair = args.answers / (40 if args.answers <= 900 else 1000 / 60 * 0.9)
    for mode in args.setups.split(","):
        r = await run(mode, args)
        calls = r["calls"]
        codes = collections.Counter(c.code for c in calls if c.code)
        limited = sum(n for code, n in codes.items() if code in RATE_LIMITED)
        other = ", ".join(f"{code}: {n}" for code, n in sorted(codes.items())) or "none"
        print(f"\n{mode}: wall {r['wall']:.1f} s (first message to last final card)")
        rows, share = limits_table(r)
        print_table(
            [
                ["figure", "value"],
                [
                    "API calls (token excluded)",
                    str(sum(1 for c in calls if "/auth/" not in c.path)),
                ],
                ["rate-limit errors (99991400, 230020)", str(limited)],
                ["non-zero codes", other],
                ["busiest API's share of its limits", share],
                [
                    "longest gap per card p50/p99/max s",
                    f"{pct(r['gaps'], 0.5)} / {pct(r['gaps'], 0.99)} / {pct(r['gaps'], 1.0)}",
                ],
                ["  fair share (one call per answer) s", f"{fair:.1f}"],
                ["finals landed (Done, buttons, whole text)", f"{r['landed']} / {args.answers}"],
            ]
        )
        print()
        print_table(rows)


def _argument_parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--answers", type=int, default=500, help="concurrent answers")
    parser.add_argument("--chunks", type=int, default=40, help="chunks per answer")
    parser.add_argument("--chunk-delay", type=float, default=0.05, help="seconds between chunks")
    parser.add_argument("--setups", default="cardkit,patch", help="cardkit,patch")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait, per setup")
    return parser


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    asyncio.run(main(_argument_parser().parse_args()))
