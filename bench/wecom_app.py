"""The WeCom self-built app's callbacks: answered within WeCom's 5 s at 200 callbacks/s.

    python bench/wecom_app.py [--rate 200] [--seconds 10] [--chunks 20] [--chunk-delay 0.05]
                              [--app-rate 50]

The WeCom emulator runs in this process; the robot runs in a subprocess: the support
robot on ``imrobots`` (``RobotRuntime`` + this plugin in app mode, default settings),
its callback endpoint on 127.0.0.1 and its API calls (``gettoken``, ``message/send``)
to the emulator. The emulator checks the endpoint with WeCom's URL check, then POSTs
``--rate`` encrypted callbacks a second (wechatpy's crypto, a fresh signature, nonce
and timestamp each) for ``--seconds`` seconds, each from a different member, and
retries one not answered 200 within 5 s (3 attempts in all), as WeCom does.

Printed:

- **answered 200 within 5 s**: callbacks whose first POST was answered 200 within
  WeCom's deadline (target: all), the HTTP latency of first attempts (p50/p99/max)
  and the retries WeCom would have made;
- **pushed rate**: callbacks POSTed per second (the emulator's pacing, to check the
  rate was reached);
- the answers: ``message/send`` template cards with the feedback buttons (or markdown
  messages) that reached the members (one per callback), how long after its callback
  the last one arrived (p50/p99), refusals (45009 and other errors) and what the
  runtime counted. Answers are paced by the plugin's client budget (``app_rate``,
  default 50 calls/s per API, x 0.9), under WeCom's documented 10,000/min per corp per
  API (shared by the corp's apps), so at 200 callbacks/s the answers trail behind the
  callbacks; that is the budget, not the endpoint (``--app-rate 166`` uses the
  documented rate).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

CORP = "wwbenchcorp"


def chunk(i: int) -> str:
    return f"w{i} "


# --------------------------------------------------------------------------- robot


async def run_robot(settings: dict[str, Any], chunks: int, delay: float) -> None:
    """The support robot in app mode; prints its callback URL, then (when told to stop)
    its figures, as JSON lines on stdout."""
    from imrobots import RobotRuntime, Secret
    from imrobots.examples import SupportRobot
    from imrobots_wecom.platform import WeComPlatform, WeComSettings

    async def model(request: Any) -> AsyncIterator[str]:
        for i in range(chunks):
            await asyncio.sleep(delay)
            yield chunk(i)

    secret_fields = ("corp_secret", "token", "encoding_aes_key")
    values = {k: Secret(v) if k in secret_fields else v for k, v in settings.items()}
    platform = WeComPlatform(WeComSettings(**values))
    runtime = RobotRuntime(name="support", robot=SupportRobot(agent=model), platform=platform)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await runtime.start()
    print(json.dumps({"callback_url": platform.callback_url}), flush=True)
    await stop.wait()
    stats = runtime.stats
    print(
        json.dumps(
            {
                "received": stats.received,
                "duplicates": stats.duplicates,
                "answered": stats.answered,
                "failed": stats.failed,
                "forged": platform.forged,
            }
        ),
        flush=True,
    )
    await runtime.stop(timeout=5)


# --------------------------------------------------------------------------- driver


def pct(values: Sequence[float], q: float, scale: float = 1.0, digits: int = 1) -> str:
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


async def wait_for(predicate: Any, timeout: float, what: str) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            print(f"  (stopped waiting for {what} after {timeout:g}s)")
            return False
        await asyncio.sleep(0.05)
    return True


def answered_members(emu: Any) -> dict[str, float]:
    """member -> when the last part of their answer arrived (wall clock): template cards
    (the answer with its buttons) and markdown messages."""
    seen: dict[str, float] = {}
    arrivals = [(m["conversation_id"], m["time"]) for m in emu.messages]
    arrivals += [(c.conversation_id, c.created) for c in emu.cards.values()]
    for user, at in arrivals:
        seen[user] = max(seen.get(user, 0.0), at)
    return seen


async def main(args: argparse.Namespace) -> None:
    from imrobots_wecom.emulator import WeComEmulator

    total = int(args.rate * args.seconds)
    print(
        f"WeCom app mode: {total} callbacks at {args.rate:g}/s for {args.seconds:g}s, each from "
        f"its own member; answers of {args.chunks} chunks every {args.chunk_delay:g}s, "
        f"app_rate {args.app_rate:g}; "
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus"
    )
    emu = WeComEmulator(seed=1, callback_timeout=5.0, callback_attempts=3)
    app = emu.add_app(CORP, "bench-app-secret")
    await emu.start()
    settings = {
        "mode": "app",
        "corp_id": CORP,
        "corp_secret": app.secret,
        "agent_id": app.agent_id,
        "token": app.token,
        "encoding_aes_key": app.encoding_aes_key,
        "api_endpoint": emu.base_url,
        "callback_port": 0,
        "app_rate": args.app_rate,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--child",
        json.dumps(settings),
        "--chunks",
        str(args.chunks),
        "--chunk-delay",
        str(args.chunk_delay),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    pushed_at: dict[str, float] = {}
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        app.callback_url = json.loads(line)["callback_url"]
        checked = time.monotonic()
        url_ok = await emu.verify_url(CORP)
        url_check = time.monotonic() - checked
        gc.collect()
        gc.disable()
        started = time.perf_counter()
        tick, sent, next_tick = 0.005, 0, started
        while sent < total:
            due = min(total, round((time.perf_counter() - started) / tick * args.rate * tick) + 1)
            while sent < due:
                user = f"member{sent}"
                pushed_at[user] = time.time()
                await emu.push_app_message(CORP, user_id=user, content=f"question {sent}")
                sent += 1
            next_tick += tick
            await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))
        pushed_for = time.perf_counter() - started
        await wait_for(
            lambda: len({d.msg_id for d in emu.deliveries if d.status == 200}) >= total,
            60,
            "callbacks answered",
        )
        await wait_for(lambda: len(answered_members(emu)) >= total, args.timeout, "answers")
    finally:
        gc.enable()
        proc.send_signal(signal.SIGTERM)
        out, _ = await proc.communicate()
        await emu.stop()
    robot = json.loads(out.decode().strip().splitlines()[-1])
    first = [d for d in emu.deliveries if d.attempt == 1]
    in_time = [d for d in first if d.status == 200 and d.latency <= 5.0]
    answered_ids = {d.msg_id for d in emu.deliveries if d.status == 200}
    retries = sum(1 for d in emu.deliveries if d.attempt > 1)
    answers: dict[str, float] = {}
    for user, at in answered_members(emu).items():
        if user in pushed_at:
            answers[user] = at - pushed_at[user]
    sends = [c for c in emu.calls if c["route"] == "/cgi-bin/message/send"]
    refused = [c for c in sends if c["status"] >= 400]
    latencies = [d.latency for d in first if d.status == 200]
    print()
    print_table(
        [
            ["figure", "value"],
            ["URL check answered (within 1 s)", f"{url_ok} ({url_check * 1000:.0f} ms)"],
            ["callbacks pushed", str(total)],
            ["pushed rate /s", f"{total / pushed_for:,.0f}"],
            [
                "answered 200 within 5 s (first POST)",
                f"{len(in_time)} / {total} ({len(in_time) / total:.1%})",
            ],
            [
                "callback HTTP latency p50/p99/max ms",
                f"{pct(latencies, 0.5, 1000)} / {pct(latencies, 0.99, 1000)} / "
                f"{pct(latencies, 1.0, 1000)}",
            ],
            ["retries WeCom made", str(retries)],
            ["callbacks never answered 200", str(total - len(answered_ids))],
            [
                "robot: received / duplicates / forged",
                f"{robot['received']} / {robot['duplicates']} / {robot['forged']}",
            ],
            ["answers that reached the member", f"{len(answers)} / {total}"],
            [
                "answer after its callback p50/p99 s",
                f"{pct(list(answers.values()), 0.5)} / {pct(list(answers.values()), 0.99)}",
            ],
            ["message/send calls / refused", f"{len(sends)} / {len(refused)}"],
            ["robot: answered / failed", f"{robot['answered']} / {robot['failed']}"],
        ]
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="callbacks per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of callbacks")
    parser.add_argument("--chunks", type=int, default=20, help="chunks per answer")
    parser.add_argument("--chunk-delay", type=float, default=0.05, help="seconds between chunks")
    parser.add_argument("--app-rate", type=float, default=50.0, help="the plugin's app_rate")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for answers")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(run_robot(json.loads(args.child), args.chunks, args.chunk_delay))
    else:
        asyncio.run(main(args))
