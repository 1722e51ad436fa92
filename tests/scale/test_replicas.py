"""Replicas: several robot processes (real ``imrobots run`` subprocesses) on one DingTalk
emulator app, sharing one redis-server (issue 12, build item 2).

The emulator hands each message to one live connection of the app, at random, as DingTalk
spreads pushes over an app's connections. With the Redis store:

- each message is answered exactly once, whichever replica it reached;
- a conversation's answers take turns across replicas, in the order the messages were sent;
- every rate scope holds for all replicas together (the windows are in Redis);
- an answer whose replica dies is closed as interrupted by another replica, and a message
  the dead replica had taken in but not started is answered by another replica.

Each test starts its own redis-server (a free port) and emulator, so they run in parallel.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.replicas import (
    APP,
    SECRET,
    RedisProcess,
    Replica,
    card_status,
    wait_connected,
    write_config,
)
from imrobots_dingtalk.emulator import CardRecord, DingTalkEmulator

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")


@pytest.fixture
def redis_process(tmp_path: Path) -> RedisProcess:
    pytest.importorskip("redis.asyncio", reason='needs "imrobots[redis]"')
    redis = RedisProcess(tmp_path)
    try:
        redis.start()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    return redis


@contextlib.asynccontextmanager
async def cluster(
    tmp_path: Path, redis: RedisProcess, emu: DingTalkEmulator, count: int, **config: object
) -> AsyncIterator[list[Replica]]:
    path = write_config(tmp_path / "robots.toml", emu, redis.url, **config)  # type: ignore[arg-type]
    replicas = [Replica(f"replica-{i + 1}", path, tmp_path) for i in range(count)]
    try:
        yield replicas
    except BaseException:
        for replica in replicas:
            print(f"===== {replica.name}\n{replica.tail()}")
        raise
    finally:
        for replica in replicas:
            await replica.stop()
        redis.stop()


def cards_by_title(emu: DingTalkEmulator) -> dict[str, list[CardRecord]]:
    found: dict[str, list[CardRecord]] = collections.defaultdict(list)
    for card in emu.cards.values():
        found[str(card.view.get("title"))].append(card)
    return found


async def test_replicas_answer_each_message_once_in_order_within_the_shared_rate(
    tmp_path: Path, redis_process: RedisProcess
) -> None:
    async with DingTalkEmulator(seed=3, qps_limit=10, disconnect_grace=1.0) as emu:
        emu.add_app(APP, SECRET)
        # 10 calls a second per API for the app: what each replica declares too. Three
        # replicas each pacing alone to 10/s would make up to 30/s and be refused.
        settings = "app_rate = 10.0\nupdate_interval = 0.1"
        async with cluster(
            tmp_path, redis_process, emu, 3, delay=0.02, extra_settings=settings
        ) as replicas:
            for replica in replicas:
                await replica.start()
            await wait_connected(emu, 3)

            questions = [f"question {i} in chat {i % 12}" for i in range(24)]
            for i, question in enumerate(questions):
                await emu.push_message(
                    APP, text=question, conversation_id=f"cidchat{i % 12}", sender_staff_id="u1"
                )
            # one conversation, six messages in quick succession
            ordered = [f"ordered {i}" for i in range(6)]
            for question in ordered:
                await emu.push_message(APP, text=question, conversation_id="cidorder")
                await asyncio.sleep(0.03)  # a user typing fast: sent 30 ms apart

            everything = questions + ordered

            def all_final() -> bool:
                found = cards_by_title(emu)
                return all(
                    any(card_status(c) == "finished" for c in found.get(q, [])) for q in everything
                )

            await emu.wait_for(all_final, 120, what="every answer final")

    # spread: every replica's connection got messages
    deliveries = [c.deliveries for c in emu.connections if c.deliveries]
    assert len(deliveries) == 3, deliveries
    # exactly once
    found = cards_by_title(emu)
    assert {q: len(found[q]) for q in everything} == dict.fromkeys(everything, 1)
    # every scope in aggregate: nothing refused, and no second with more than 10 calls of a route
    refused = [c for c in emu.calls if "QpsLimit" in (c.error_code or "")]
    assert refused == []
    per_second = collections.Counter((c.route, int(c.wall)) for c in emu.calls if c.status == 200)
    assert max(per_second.values()) <= 10
    # order: each answer of the conversation started after the previous one ended
    cards = [found[q][0] for q in ordered]
    for before, after in itertools.pairwise(cards):
        assert after.at >= before.updated_at, (before.view, after.view)


async def test_a_dead_replicas_answer_is_closed_as_interrupted_and_its_queue_answered(
    tmp_path: Path, redis_process: RedisProcess
) -> None:
    async with DingTalkEmulator(seed=4, disconnect_grace=1.0) as emu:
        emu.add_app(APP, SECRET)
        async with cluster(
            tmp_path, redis_process, emu, 2, delay=0.15, liveness_ttl=1.0
        ) as replicas:
            victim, survivor = replicas
            await victim.start()
            await wait_connected(emu, 1)
            # both messages reach the victim: the second waits for the first's answer
            await emu.push_message(APP, text="first question", conversation_id="cidkill")
            await emu.push_message(APP, text="second question", conversation_id="cidkill")

            def streaming() -> bool:
                cards = cards_by_title(emu).get("first question", [])
                return any(len(c.updates) >= 3 for c in cards)

            await emu.wait_for(streaming, 30, what="the first answer streaming")
            await survivor.start()
            await wait_connected(emu, 2)
            await victim.kill()

            def settled() -> bool:
                found = cards_by_title(emu)
                first, second = found.get("first question"), found.get("second question")
                return bool(
                    first
                    and second
                    and card_status(first[0]) == "failed"
                    and card_status(second[0]) == "finished"
                )

            await emu.wait_for(settled, 30, what="first interrupted, second answered")
            log = survivor.tail(20_000)

    found = cards_by_title(emu)
    (first,), (second,) = found["first question"], found["second question"]
    assert first.content.get("stopReason") == "interrupted"
    assert "(answer interrupted)" in (first.view.get("markdown") or "")
    assert second.at >= first.updated_at  # order kept: the second started after the first ended
    assert "closed 1 answer(s) a crash left open" in log
    assert "answering message" in log and "which is gone" in log
