"""Soak: 3 replicas on Redis against one DingTalk emulator app, under faults.

Three robot processes (``python -m imrobots run``, the demo agent streaming into AI
cards) share one ``redis-server`` and one emulated app; the emulator spreads messages
across their connections. Users send a steady ``--rate`` of messages a second for
``--seconds``, over ``--conversations`` (60) group chats, each question unique (it is the
card's title, so every card is traced to its message). Meanwhile:

- every 10 s one live connection (a random replica's) is aborted (no close frame);
- at 35 % of the run one replica is killed with SIGKILL, and started again 2 s later;
- at 60 % Redis is restarted on the same port (without persistence: every key is
  lost); the store reconnects on its next operation.

Then the run settles (every card final or failed, or a deadline) and prints:

- **sent**; **answered** = final + interrupted, where *interrupted* counts answers the
  killed replica was streaming, closed as interrupted (the text so far and a note) by
  another replica once the killed one's lease lapsed: the user sees an ended answer and
  can ask again; the message is not lost and nothing hangs. They are listed apart;
- **duplicated**: messages with more than one card; **lost**: messages with no card (of
  them, those pushed to the killed replica and never acknowledged: DingTalk does not
  redeliver robot messages, PROTOCOLS 1.7);
- **rate-limit errors**: calls the emulator refused with 403 QpsLimitForAppkeyAndApi
  (20 calls per second per API for the app: all replicas together);
- **stuck cards**: cards still thinking or streaming;
- **p50/p99 answer latency**: from the push to the final card.

Goal: answered = sent, 0 duplicated, 0 lost, 0 rate-limit errors, 0 stuck.

    python bench/soak.py                   # 2 minutes
    python bench/soak.py --seconds 20      # what tests/scale/test_soak.py runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.replicas import (
    APP,
    SECRET,
    RedisProcess,
    Replica,
    Sent,
    Tally,
    tally,
    wait_connected,
    wait_settled,
    write_config,
)
from imrobots_dingtalk.emulator import DingTalkEmulator


async def soak(
    *,
    seconds: float = 120.0,
    rate: float = 4.0,
    conversations: int = 60,
    replicas: int = 3,
    drop_every: float = 10.0,
    kill: bool = True,
    redis_restart: bool = True,
    seed: int = 7,
    directory: Path | None = None,
    verbose: bool = True,
) -> tuple[Tally, list[str]]:
    """Run the soak; return the tally and a log of what was done when."""
    rng = random.Random(seed)
    events: list[str] = []
    start = time.monotonic()

    def note(text: str) -> None:
        line = f"{time.monotonic() - start:6.1f}s  {text}"
        events.append(line)
        if verbose:
            print(line, flush=True)

    with contextlib.ExitStack() as stack:
        work = directory or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        redis = RedisProcess(work)
        redis.start()
        stack.callback(redis.stop)
        async with DingTalkEmulator(seed=seed, disconnect_grace=1.0) as emu:
            emu.add_app(APP, SECRET)
            config = write_config(work / "robots.toml", emu, redis.url)
            procs = [Replica(f"replica-{i + 1}", config, work) for i in range(replicas)]
            try:
                for proc in procs:
                    await proc.start()
                await wait_connected(emu, replicas)
                note(f"{replicas} replicas connected; redis on port {redis.port}")
                sent, killed = await _drive(
                    emu,
                    procs,
                    redis,
                    rng,
                    note,
                    seconds=seconds,
                    rate=rate,
                    conversations=conversations,
                    drop_every=drop_every,
                    kill=kill,
                    redis_restart=redis_restart,
                )
                note(f"sent {len(sent)}; waiting for every answer to settle")
                ok = await wait_settled(emu, sent, timeout=60.0)
                note("settled" if ok else "NOT settled within 60 s")
            finally:
                for proc in procs:
                    code = await proc.stop()
                    if code not in (0, None):
                        note(f"{proc.name} exited with {code}")
            result = tally(emu, sent, killed_connections=killed)
    return result, events


async def _drive(
    emu: DingTalkEmulator,
    procs: list[Replica],
    redis: RedisProcess,
    rng: random.Random,
    note: object,
    *,
    seconds: float,
    rate: float,
    conversations: int,
    drop_every: float,
    kill: bool,
    redis_restart: bool,
) -> tuple[list[Sent], set[str]]:
    assert callable(note)
    sent: list[Sent] = []
    killed: set[str] = set()
    loop = asyncio.get_running_loop()
    begin = loop.time()
    chats = [f"cidsoak{i:03d}" for i in range(conversations)]

    async def faults() -> None:
        kill_at = seconds * 0.35 if kill else None
        redis_at = seconds * 0.60 if redis_restart else None
        next_drop = drop_every
        while True:
            now = loop.time() - begin
            if now >= seconds:
                return
            if kill_at is not None and now >= kill_at:
                kill_at = None
                victim = rng.choice(procs)
                before = {c.connection_id for c in emu.live_connections(APP)}
                await victim.kill()

                def closed(before: set[str] = before) -> bool:
                    return {c.connection_id for c in emu.live_connections(APP)} != before

                with contextlib.suppress(TimeoutError):
                    await emu.wait_for(closed, 5, what="the killed replica's connection closed")
                gone = before - {c.connection_id for c in emu.live_connections(APP)}
                killed.update(gone)
                note(f"SIGKILL {victim.name} (connections {sorted(gone)})")
                await asyncio.sleep(2.0)
                await victim.start()
                note(f"restarted {victim.name}")
                continue
            if redis_at is not None and now >= redis_at:
                redis_at = None
                await asyncio.to_thread(redis.restart)
                note("redis restarted (same port; its append-only file kept the keys)")
                continue
            if now >= next_drop:
                next_drop += drop_every
                live = emu.live_connections(APP)
                if live:
                    chosen = rng.choice(live)
                    await emu.drop_connections(APP, connection_id=chosen.connection_id)
                    note(f"dropped connection {chosen.connection_id}")
                continue
            await asyncio.sleep(0.1)

    fault_task = asyncio.create_task(faults())
    try:
        n = 0
        while (due := begin + n / rate) < begin + seconds:
            await asyncio.sleep(max(0.0, due - loop.time()))
            conversation = chats[rng.randrange(len(chats))]
            question = f"soak question {n} in {conversation}"
            at = time.monotonic()
            pushed = await emu.push_message(
                APP,
                text=question,
                conversation_id=conversation,
                conversation_title=conversation,
                sender_staff_id=f"user{n % 7}",
                sender_nick=f"User {n % 7}",
            )
            sent.append(Sent(question, conversation, at, pushed.msg_id))
            n += 1
        await fault_task
    finally:
        fault_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await fault_task
    return sent, killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="sending time (120)")
    parser.add_argument("--rate", type=float, default=4.0, help="messages a second (4)")
    parser.add_argument("--conversations", type=int, default=60, help="group chats (60)")
    parser.add_argument("--replicas", type=int, default=3, help="robot processes (3)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", type=Path, default=None, help="keep logs in this directory")
    args = parser.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    result, _ = asyncio.run(
        soak(
            seconds=args.seconds,
            rate=args.rate,
            conversations=args.conversations,
            replicas=args.replicas,
            seed=args.seed,
            directory=args.keep,
        )
    )
    print()
    for line in result.lines():
        print(line)
    if result.stuck_questions:
        print("stuck:", ", ".join(result.stuck_questions[:10]))
    if result.slow:
        print("over 15 s:", ", ".join(result.slow[:10]))
    if result.lost_questions:
        print("lost:", ", ".join(result.lost_questions[:10]))
    goal = (
        result.answered == result.sent
        and result.duplicated == result.lost == result.rate_limited == result.stuck == 0
    )
    print("goal met" if goal else "GOAL NOT MET")


if __name__ == "__main__":
    main()
