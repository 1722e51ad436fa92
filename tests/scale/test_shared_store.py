"""The runtime on a shared store (Redis), in one process on the memory platform: what the
replica tests do not isolate. A message redelivered while it waits for its turn is answered
once; messages of one conversation are answered one at a time in the order they were sent
even when they reach the runtime out of order; a message's inbox record, adopted from a
replica that is gone, comes back whole (sender, conversation, time, attachments); a message
adopted from a gone replica counts as adopted and answered here, not received again (the gone
replica received it)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from imrobots.agents import AgentRequest
from imrobots.memory import MemoryPlatform, MemorySettings
from imrobots.models import (
    Attachment,
    Conversation,
    ConversationKind,
    Message,
    MessageKind,
    Quote,
    Sender,
)
from imrobots.runtime import RobotRuntime, RuntimeOptions, _messages
from tests.engine.conftest import FAST, AgentRobot, answer_cards, eventually

if TYPE_CHECKING:
    from tests.conftest import RedisServer

pytest.importorskip("redis.asyncio", reason='needs "imrobots[redis]"')

from imrobots.redis_store import RedisStore


async def slow(request: AgentRequest) -> AsyncIterator[str]:
    yield f"answer to {request.text} "
    await asyncio.sleep(0.2)
    yield "done"


def slow_robot_on(store: RedisStore, **options: Any) -> tuple[MemoryPlatform, RobotRuntime]:
    """The ``slow`` agent's robot ``bot`` on a fresh in-memory platform, on ``store``."""
    platform = MemoryPlatform(MemorySettings(**FAST))
    runtime = RobotRuntime(
        name="bot",
        robot=AgentRobot(agent=slow),
        platform=platform,
        store=store,
        options=RuntimeOptions(**options),
    )
    return platform, runtime


async def test_one_runtime_on_redis_orders_by_send_time_and_drops_a_waiting_redelivery(
    redis_server: RedisServer,
) -> None:
    store = RedisStore(redis_server.url, prefix=f"shared-{uuid.uuid4().hex}:")
    platform, runtime = slow_robot_on(store, turn_grace=0.2)
    await runtime.start()
    try:
        now = datetime.now(UTC)
        # sent in the order a, b, c; they reach the robot as c, a, b (c twice)
        c = await platform.say("c", message_id="m-c", time=now)
        a = await platform.say("a", message_id="m-a", time=now - timedelta(milliseconds=150))
        await platform.say("c", message_id="m-c", time=now)  # redelivered while waiting
        b = await platform.say("b", message_id="m-b", time=now - timedelta(milliseconds=100))
        await runtime.wait_idle(20)
    finally:
        await runtime.stop()
        await store.close()
    cards = [answer_cards(platform, m) for m in (a, b, c)]
    assert [len(found) for found in cards] == [1, 1, 1]
    (first,), (second,), (third,) = cards
    # one at a time, a then b then c: each card created after the previous one's last update
    assert first.history[-1][0] <= second.history[0][0]
    assert second.history[-1][0] <= third.history[0][0]
    assert runtime.stats.duplicates == 1


def test_an_inbox_record_brings_the_message_back_whole() -> None:
    async def download(_: Attachment) -> bytes:
        return b"%PDF"

    message = Message(
        id="m-1",
        platform="dingtalk",
        text="see attached",
        conversation=Conversation(id="cid1", kind=ConversationKind.GROUP, title="Team"),
        sender=Sender(id="u7", name="Bob"),
        kind=MessageKind.FILE,
        mentioned=True,
        mentions=(Sender(id="u8"),),
        attachments=(
            Attachment(kind="file", name="report.pdf", download_code="dc", downloader=download),
        ),
        raw={"sessionWebhook": "https://example.invalid/hook", "n": [1, 2]},
        quote=Quote(id="q1", text="earlier words", sender=Sender(id="u8")),
        robot="support",
    )
    record = json.loads(json.dumps(_messages.unstructure(message)))
    back = _messages.structure(record, Message)
    assert back == message
    assert back.raw == message.raw and back.time == message.time
    assert back.attachments[0].download_code == "dc"
    assert back.attachments[0].downloader is None  # the adopting runtime binds its own


async def test_a_message_adopted_from_a_gone_replica_is_not_counted_received_again(
    redis_server: RedisServer,
) -> None:
    store = RedisStore(redis_server.url, prefix=f"adopt-{uuid.uuid4().hex}:")
    platform, runtime = slow_robot_on(store, liveness_ttl=0.3, turn_grace=0.0)
    message = Message(
        id="m-left",
        platform=platform.name,
        text="left behind",
        conversation=Conversation(id="conversation-1", kind=ConversationKind.DIRECT),
        sender=Sender(id="user-1", name="Alice"),
        robot="bot",
    )
    # the inbox record of a replica that received the message and died (no lease)
    record = {"owner": "gone-replica", "message": _messages.unstructure(message)}
    await store.put_value(runtime._key("inbox", message.id), json.dumps(record), ttl=60)
    await runtime.start()
    try:
        await eventually(lambda: runtime.stats.answered == 1, within=20)
    finally:
        await runtime.stop()
        await store.close()
    (card,) = answer_cards(platform, message)
    assert "answer to left behind done" in card.text
    assert runtime.stats.adopted == 1
    assert runtime.stats.received == 0  # the gone replica received it (and counted it)


async def test_a_message_waiting_for_its_turn_while_redis_stays_down_is_counted_failed(
    make_redis_server: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    """Redis down past ``reconnect_for`` while messages wait for their turn. Before: the
    store's error escaped the answer's task, logged as "unexpected error in bot" with a
    traceback, and the message was counted nowhere (received, but neither answered nor
    failed). Now each is counted failed with one line naming the store's reason, and the
    robot answers again once Redis is back."""
    server = make_redis_server()
    store = RedisStore(server.url, prefix="down:", timeout=1.0, reconnect_for=0.3)
    platform, runtime = slow_robot_on(store, turn_grace=0.2)
    await runtime.start()
    try:
        server.stop()
        await platform.say("first", message_id="m-1")
        await platform.say("second", message_id="m-2")
        await runtime.wait_idle(20)
        assert runtime.stats.received == 2
        assert runtime.stats.failed == 2
        assert runtime.stats.answered == 0
        failures = [r.getMessage() for r in caplog.records if "counted failed" in r.getMessage()]
        assert len(failures) == 2, failures
        assert all("Redis store redis://127.0.0.1:" in line for line in failures), failures
        assert all(r.exc_info is None for r in caplog.records if r.levelno >= logging.ERROR)
        assert not any("unexpected error" in r.getMessage() for r in caplog.records)
        server.start()  # same port: Redis is back
        back = await platform.say("third", message_id="m-3")
        await runtime.wait_idle(20)
        assert runtime.stats.answered == 1
        assert len(answer_cards(platform, back)) == 1
    finally:
        await runtime.stop()
        await store.close()
        server.stop()
