"""The Store contract, run against every backend, plus SQLite-only behaviour."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import imrobots.store
from imrobots import sqlite_store
from imrobots.cli import cli
from imrobots.errors import ImrobotsError
from imrobots.models import Feedback, FeedbackRating, Sender
from imrobots.sqlite_store import SCHEMA_VERSION, SQLiteStore
from imrobots.store import (
    ClaimResult,
    Fence,
    LockLost,
    MemoryStore,
    Store,
    StoreUnavailable,
    Turn,
)

StoreFactory = Callable[..., Store]

ROOT = Path(imrobots.store.__file__).resolve().parents[1]
"""The directory holding the ``imrobots`` package, for child processes."""

DEADLINE = 5.0
"""Seconds a polled condition may take before the test fails."""


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = DEADLINE) -> None:
    """Poll ``check`` until it is true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(0.005)


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """A factory of fresh, empty stores of one backend; all closed at teardown.

    Redis stores use the session's redis-server (``redis_server`` in ``tests/conftest.py``),
    each under a key prefix of its own.
    """
    created: list[Store] = []
    redis_url = request.getfixturevalue("redis_server").url if request.param == "redis" else ""

    def make(**kwargs: Any) -> Store:
        store: Store
        if request.param == "memory":
            store = MemoryStore(**kwargs)
        elif request.param == "sqlite":
            store = SQLiteStore(tmp_path / f"store{len(created)}.sqlite3", **kwargs)
        else:
            from imrobots.redis_store import RedisStore

            store = RedisStore(redis_url, prefix=f"test-{uuid.uuid4().hex}:", **kwargs)
        created.append(store)
        return store

    yield make
    for store in created:
        await store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> Store:
    return make_store()


def feedback(
    message_id: str = "m1",
    *,
    robot: str = "helper",
    sender: str = "u1",
    platform: str = "dingtalk",
    rating: FeedbackRating = FeedbackRating.HELPFUL,
    question: str = "How do I reset my password?",
    time: datetime | None = None,
) -> Feedback:
    return Feedback(
        robot=robot,
        platform=platform,
        message_id=message_id,
        rating=rating,
        sender=Sender(id=sender, name=f"User {sender}", is_admin=sender == "admin"),
        question=question,
        answer="Use the portal, then “Forgot password”.",
        conversation_id="c1",
        card_id=f"card-{message_id}",
        time=time or datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC),
    )


# --- dedupe ---------------------------------------------------------------------------------


async def test_claim_then_in_flight_then_done(store: Store) -> None:
    assert await store.claim("k", in_flight_ttl=60) is ClaimResult.CLAIMED
    assert await store.claim("k", in_flight_ttl=60) is ClaimResult.IN_FLIGHT
    await store.complete("k", done_ttl=60)
    assert await store.claim("k", in_flight_ttl=60) is ClaimResult.DONE
    assert await store.claim("other", in_flight_ttl=60) is ClaimResult.CLAIMED


async def test_release_lets_a_redelivery_claim(store: Store) -> None:
    assert await store.claim("k", in_flight_ttl=60) is ClaimResult.CLAIMED
    await store.release("k")
    assert await store.claim("k", in_flight_ttl=60) is ClaimResult.CLAIMED
    await store.release("never-claimed")  # a no-op


async def test_release_does_not_forget_done(store: Store) -> None:
    await store.claim("k", in_flight_ttl=60)
    await store.complete("k", done_ttl=60)
    await store.release("k")
    assert await store.claim("k", in_flight_ttl=60) is ClaimResult.DONE


async def test_expired_in_flight_is_claimed_again(store: Store) -> None:
    ttl = 0.1
    started = time.monotonic()
    assert await store.claim("k", in_flight_ttl=ttl) is ClaimResult.CLAIMED

    async def claimed() -> bool:
        return await store.claim("k", in_flight_ttl=60) is ClaimResult.CLAIMED

    await eventually(claimed)
    assert time.monotonic() - started >= ttl * 0.9
    assert await store.claim("k", in_flight_ttl=60) is ClaimResult.IN_FLIGHT


async def test_done_expires_after_its_ttl(store: Store) -> None:
    ttl = 0.1
    await store.claim("k", in_flight_ttl=60)
    started = time.monotonic()
    await store.complete("k", done_ttl=ttl)

    async def claimed() -> bool:
        result = await store.claim("k", in_flight_ttl=60)
        assert result is not ClaimResult.IN_FLIGHT  # complete() ended the in-flight phase
        return result is ClaimResult.CLAIMED

    await eventually(claimed)
    assert time.monotonic() - started >= ttl * 0.9


async def test_done_cache_is_bounded_oldest_first(make_store: StoreFactory) -> None:
    store = make_store(max_keys=3)
    for key in ("a", "b", "c"):
        await store.complete(key, done_ttl=60)
    await store.complete("a", done_ttl=60)  # completed again: now the newest
    await store.complete("d", done_ttl=60)  # evicts "b", the oldest
    assert await store.claim("b", in_flight_ttl=60) is ClaimResult.CLAIMED
    for key in ("a", "c", "d"):
        assert await store.claim(key, in_flight_ttl=60) is ClaimResult.DONE


async def test_concurrent_claims_of_one_key_have_one_winner(store: Store) -> None:
    results = await asyncio.gather(*(store.claim("k", in_flight_ttl=60) for _ in range(50)))
    assert results.count(ClaimResult.CLAIMED) == 1
    assert results.count(ClaimResult.IN_FLIGHT) == 49


# --- locks ----------------------------------------------------------------------------------


async def test_lock_has_one_owner_and_is_reentrant(store: Store) -> None:
    assert await store.acquire_lock("conv", "a", ttl=60)
    assert not await store.acquire_lock("conv", "b", ttl=60)
    assert await store.acquire_lock("conv", "a", ttl=60)  # re-entrant
    await store.release_lock("conv", "b")  # not b's: no effect
    assert not await store.acquire_lock("conv", "b", ttl=60)
    assert await store.acquire_lock("other", "b", ttl=60)
    await store.release_lock("conv", "a")
    assert await store.acquire_lock("conv", "b", ttl=60)
    assert not await store.acquire_lock("conv", "a", ttl=60)


async def test_expired_lock_can_be_taken(store: Store) -> None:
    ttl = 0.1
    started = time.monotonic()
    assert await store.acquire_lock("conv", "a", ttl=ttl)

    async def taken() -> bool:
        return await store.acquire_lock("conv", "b", ttl=60)

    await eventually(taken)
    assert time.monotonic() - started >= ttl * 0.9
    assert not await store.acquire_lock("conv", "a", ttl=60)


async def test_concurrent_lock_attempts_have_one_winner(store: Store) -> None:
    results = await asyncio.gather(
        *(store.acquire_lock("conv", f"owner{i}", ttl=60) for i in range(30))
    )
    assert len([token for token in results if token is not None]) == 1


# --- fencing --------------------------------------------------------------------------------


async def test_lock_tokens_grow_and_stay_while_held(store: Store) -> None:
    first = await store.acquire_lock("conv", "a", ttl=60)
    assert first is not None and first > 0
    assert await store.acquire_lock("conv", "a", ttl=60) == first  # extended: same token
    assert await store.acquire_lock("conv", "b", ttl=60) is None
    assert await store.holds_lock("conv", first)
    assert not await store.holds_lock("conv", first + 1)
    await store.release_lock("conv", "a")
    assert not await store.holds_lock("conv", first)
    second = await store.acquire_lock("conv", "b", ttl=60)
    assert second is not None and second > first
    other = await store.acquire_lock("other", "a", ttl=60)
    assert other is not None and other > second


async def test_a_stale_holder_is_fenced_out_after_expiry(store: Store) -> None:
    stale = await store.acquire_lock("conv", "a", ttl=0.1)
    assert stale is not None
    await store.put_value("open:conv", "a's", ttl=60, fence=Fence("conv", stale))

    async def taken() -> bool:
        return await store.acquire_lock("conv", "b", ttl=60) is not None

    await eventually(taken)
    current = await store.acquire_lock("conv", "b", ttl=60)
    assert current is not None and current > stale
    assert not await store.holds_lock("conv", stale)
    assert await store.holds_lock("conv", current)
    with pytest.raises(LockLost, match="conv"):
        await store.put_value("open:conv", "stale", ttl=60, fence=Fence("conv", stale))
    with pytest.raises(LockLost):
        await store.delete_value("open:conv", fence=Fence("conv", stale))
    assert await store.get_value("open:conv") == "a's"  # the stale holder changed nothing
    await store.put_value("open:conv", "b's", ttl=60, fence=Fence("conv", current))
    assert await store.get_value("open:conv") == "b's"
    await store.delete_value("open:conv", fence=Fence("conv", current))
    assert await store.get_value("open:conv") is None


async def test_a_lapsed_hold_gets_a_new_token(store: Store) -> None:
    first = await store.acquire_lock("conv", "a", ttl=0.05)
    assert first is not None

    async def lapsed() -> bool:
        return not await store.holds_lock("conv", first)

    await eventually(lapsed)
    again = await store.acquire_lock("conv", "a", ttl=60)  # nobody took it meanwhile...
    assert again is not None and again > first  # ...but the owner learns its hold lapsed
    with pytest.raises(LockLost):
        await store.put_value("k", "v", ttl=60, fence=Fence("conv", first))
    await store.release_lock("conv", "a")
    with pytest.raises(LockLost):  # released: no write fenced by it passes
        await store.put_value("k", "v", ttl=60, fence=Fence("conv", again))
    with pytest.raises(LockLost):  # a lock never taken fences everything out
        await store.put_value("k", "v", ttl=60, fence=Fence("never", 1))
    assert await store.get_value("k") is None


async def test_concurrent_fenced_writes_of_two_holders_keep_the_current_one(store: Store) -> None:
    stale = await store.acquire_lock("conv", "a", ttl=0.05)
    assert stale is not None

    async def taken() -> bool:
        return await store.acquire_lock("conv", "b", ttl=60) is not None

    await eventually(taken)
    current = await store.acquire_lock("conv", "b", ttl=60)
    assert current is not None
    writes = [
        store.put_value("open:conv", f"{who}{i}", ttl=60, fence=Fence("conv", token))
        for i in range(10)
        for who, token in (("a", stale), ("b", current))
    ]
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert [isinstance(r, LockLost) for r in results] == [True, False] * 10
    value = await store.get_value("open:conv")
    assert value is not None and value.startswith("b")  # one of the holder's (any order)


# --- sliding windows ------------------------------------------------------------------------


async def test_window_grants_its_limit_at_once_then_waits_for_room(store: Store) -> None:
    limit, window = 3, 1.0
    waits = [await store.reserve("app", limit=limit, window=window) for _ in range(7)]
    assert waits[:3] == [0.0] * 3  # room in the window: at once
    # the 4th-6th when the first three leave the window, the 7th a window later
    assert waits[3:6] == pytest.approx([1.0] * 3, abs=0.05)
    assert waits[6] == pytest.approx(2.0, abs=0.05)
    assert await store.reserve("other", limit=limit, window=window) == 0.0


async def test_concurrent_reservations_never_overfill_a_window(store: Store) -> None:
    limit, window = 4, 1.0
    waits = sorted(
        await asyncio.gather(*(store.reserve("app", limit=limit, window=window) for _ in range(20)))
    )
    assert waits[:limit] == [0.0] * limit
    for first, later in zip(waits, waits[limit:], strict=False):
        assert later - first >= window - 0.05  # at most `limit` grants in any window


async def test_window_frees_room_with_time(store: Store) -> None:
    assert await store.reserve("app", limit=1, window=0.1) == 0.0
    assert await store.reserve("app", limit=1, window=0.1) > 0
    await asyncio.sleep(0.25)  # both grants have left the window
    assert await store.reserve("app", limit=1, window=0.1) == 0.0


async def test_reserve_all_takes_one_common_time_in_every_window(store: Store) -> None:
    assert await store.reserve("a", limit=1, window=1.0) == 0.0  # "a" is full for a second
    wait = await store.reserve_all((("a", 1, 1.0), ("b", 5, 1.0)))
    assert wait == pytest.approx(1.0, abs=0.05)  # "b" has room now, "a" only in a second
    # the call is recorded in "b" at the time it is made, not now
    assert await store.room_in("b", limit=5, window=1.0) == pytest.approx(1.0, abs=0.05)


async def test_memory_store_forgets_windows_once_empty_and_keeps_busy_and_penalized_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A window per conversation, card or member (Feishu's per chat and per message, WeCom's
    per member) stayed for the life of the process: 10,000 cards, 10,000 windows."""
    store = MemoryStore()
    now = [1000.0]
    monkeypatch.setattr(store, "_now", lambda: now[0])
    for card in range(1000):
        await store.reserve(f"card:{card}", limit=5, window=1.0)
    await store.reserve("app", limit=50, window=60.0)
    await store.penalize("api:update", seconds=300.0)
    now[0] += 120.0  # the card windows emptied a minute ago; a sweep is due
    await store.reserve("card:new", limit=5, window=1.0)
    assert set(store._windows) == {"api:update", "card:new"}  # the app's also emptied
    # the penalty still holds after the sweep
    assert await store.room_in("api:update", limit=5, window=1.0) == pytest.approx(180.0)


async def test_a_window_listed_twice_gets_two_calls_at_once(store: Store) -> None:
    """An operation making two calls of one API (Feishu's renewal: streaming off, on)."""
    assert await store.reserve("a", limit=2, window=1.0) == 0.0
    # room for two calls at once only when the first grant has left the window
    wait = await store.reserve_all((("a", 2, 1.0), ("a", 2, 1.0)))
    assert wait == pytest.approx(1.0, abs=0.05)
    # both were recorded: the window is full until they leave
    assert await store.room_in("a", limit=2, window=1.0) == pytest.approx(2.0, abs=0.05)
    # a pair in an empty window goes at once; more than the limit waits for the limit only
    assert await store.reserve_all((("b", 1, 1.0), ("b", 1, 1.0))) == 0.0
    assert await store.room_in("b", limit=2, window=1.0) == pytest.approx(1.0, abs=0.05)


async def test_room_in_reserves_nothing(store: Store) -> None:
    assert await store.room_in("a", limit=1, window=1.0) == 0.0
    assert await store.room_in("a", limit=1, window=1.0) == 0.0
    assert await store.reserve("a", limit=1, window=1.0) == 0.0
    assert await store.room_in("a", limit=1, window=1.0) == pytest.approx(1.0, abs=0.05)


async def test_room_in_all_is_the_longest_room_in_and_reserves_nothing(store: Store) -> None:
    assert await store.room_in_all(()) == 0.0
    assert await store.room_in_all((("a", 1, 1.0), ("b", 2, 3.0))) == 0.0
    assert await store.reserve_all((("a", 1, 1.0), ("b", 1, 3.0))) == 0.0
    await store.penalize("c", seconds=2.0)
    for windows in ((("a", 1, 1.0), ("b", 2, 3.0)), (("a", 1, 1.0), ("c", 1, 1.0))):
        rooms = [await store.room_in(key, limit=n, window=w) for key, n, w in windows]
        assert await store.room_in_all(windows) == pytest.approx(max(rooms), abs=0.05)
    assert await store.room_in_all((("b", 1, 3.0), ("a", 1, 1.0))) == pytest.approx(3.0, abs=0.05)
    assert await store.room_in_all((("b", 2, 3.0),)) == 0.0  # nothing was reserved


async def test_penalize_pushes_the_next_grant_out(store: Store) -> None:
    limit, window, seconds = 5, 1.0, 3.0
    assert await store.reserve("app", limit=limit, window=window) == 0.0
    await store.penalize("app", seconds=seconds)
    first = await store.reserve("app", limit=limit, window=window)
    second = await store.reserve("app", limit=limit, window=window)
    assert first == pytest.approx(seconds, abs=0.05)
    assert second == pytest.approx(first, abs=0.05)  # the window has room at that time
    assert await store.reserve("other", limit=limit, window=window) == 0.0


async def test_penalize_does_not_shorten_a_longer_queue(store: Store) -> None:
    for _ in range(10):
        await store.reserve("app", limit=1, window=1.0)  # queued about 9 s ahead
    await store.penalize("app", seconds=2)
    assert await store.reserve("app", limit=1, window=1.0) == pytest.approx(10.0, abs=0.1)


# --- feedback -------------------------------------------------------------------------------


async def test_feedback_is_deduplicated_per_user_answer_and_platform(store: Store) -> None:
    assert await store.add_feedback(feedback("m1"))
    # Same user, same answer: refused even with another rating.
    assert not await store.add_feedback(feedback("m1", rating=FeedbackRating.NO_HELP))
    assert await store.add_feedback(feedback("m1", sender="u2"))
    assert await store.add_feedback(feedback("m2"))
    assert await store.add_feedback(feedback("m1", robot="other"))
    assert await store.add_feedback(feedback("m1", platform="feishu"))
    assert len(await store.list_feedback()) == 5
    assert (await store.list_feedback())[0].rating is FeedbackRating.HELPFUL


async def test_feedback_is_listed_oldest_first_and_filtered_by_robot(store: Store) -> None:
    items = [
        feedback("m1", robot="a"),
        feedback("m2", robot="b", rating=FeedbackRating.VERY_HELPFUL),
        feedback("m3", robot="a", sender="admin", rating=FeedbackRating.NOT_MUCH_HELP),
        feedback("m4", robot="b", question="multi\nline, “quoted” 中文"),
    ]
    for item in items:
        assert await store.add_feedback(item)
    assert await store.list_feedback() == items
    assert await store.list_feedback(robot="a") == [items[0], items[2]]
    assert await store.list_feedback(robot="b") == [items[1], items[3]]
    assert await store.list_feedback(robot="nobody") == []


async def test_feedback_comes_back_whole(store: Store) -> None:
    china = timezone(timedelta(hours=8))
    original = feedback("m1", sender="admin", time=datetime(2024, 2, 29, 23, 59, 1, 5, china))
    await store.add_feedback(original)
    (listed,) = await store.list_feedback()
    assert listed == original
    assert listed.time == original.time
    assert listed.time.utcoffset() is not None
    assert listed.rating is FeedbackRating.HELPFUL
    assert listed.sender == Sender(id="admin", name="User admin", is_admin=True)
    assert listed.helpful


# --- history --------------------------------------------------------------------------------


async def test_history_is_forgotten_after_its_ttl(store: Store) -> None:
    await store.append_history("c", [Turn(role="user", text="old")], limit=4, ttl=0.05)
    assert [t.text for t in await store.history("c")] == ["old"]
    await asyncio.sleep(0.1)  # past the ttl: this is the behaviour under test
    assert await store.history("c") == []
    await store.append_history("c", [Turn(role="user", text="new")], limit=4, ttl=60)
    assert [t.text for t in await store.history("c")] == ["new"]


async def test_memory_store_bounds_the_number_of_histories() -> None:
    store = MemoryStore(max_histories=3)
    for i in range(5):
        await store.append_history(f"c{i}", [Turn(role="user", text=str(i))], limit=2)
    await store.append_history("c2", [Turn(role="user", text="again")], limit=2)  # recently used
    await store.append_history("c5", [Turn(role="user", text="5")], limit=2)
    kept = [k for k in ("c0", "c1", "c2", "c3", "c4", "c5") if await store.history(k)]
    assert kept == ["c2", "c4", "c5"]


async def test_history_keeps_the_last_turns(store: Store) -> None:
    def turns(*texts: str) -> list[Turn]:
        return [
            Turn(role="user" if i % 2 == 0 else "assistant", text=t) for i, t in enumerate(texts)
        ]

    assert await store.history("c") == []
    await store.append_history("c", turns("1", "2", "3"), limit=4)
    assert [t.text for t in await store.history("c")] == ["1", "2", "3"]
    await store.append_history("c", turns("4", "5", "6"), limit=4)
    assert [t.text for t in await store.history("c")] == ["3", "4", "5", "6"]
    assert (await store.history("c"))[0] == Turn(role="user", text="3")
    await store.append_history("c", [], limit=2)  # a smaller limit trims at once
    assert [t.text for t in await store.history("c")] == ["5", "6"]
    await store.append_history("d", turns("x"), limit=4)
    assert [t.text for t in await store.history("c")] == ["5", "6"]
    assert await store.history("d") == [Turn(role="user", text="x")]


# --- small records --------------------------------------------------------------------------


async def test_values_are_stored_replaced_and_isolated(store: Store) -> None:
    record = json.dumps({"question": 'Q, "x"\n', "answer": "中文"}, ensure_ascii=False)
    assert await store.get_value("answer:m1") is None
    await store.put_value("answer:m1", record, ttl=60)
    await store.put_value("answer:m2", "two", ttl=60)
    assert await store.get_value("answer:m1") == record
    await store.put_value("answer:m1", "replaced", ttl=60)
    assert await store.get_value("answer:m1") == "replaced"
    assert await store.get_value("answer:m2") == "two"


async def test_value_expires_after_its_ttl(store: Store) -> None:
    ttl = 0.1
    started = time.monotonic()
    await store.put_value("k", "v", ttl=ttl)

    async def gone() -> bool:
        return await store.get_value("k") is None

    await eventually(gone)
    assert time.monotonic() - started >= ttl * 0.9
    await store.put_value("k", "again", ttl=60)
    assert await store.get_value("k") == "again"


async def test_values_are_bounded_oldest_first(make_store: StoreFactory) -> None:
    store = make_store(max_keys=3)
    for key in ("a", "b", "c"):
        await store.put_value(key, key, ttl=60)
    await store.put_value("a", "a2", ttl=60)  # rewritten: now the newest
    await store.put_value("d", "d", ttl=60)  # evicts "b", the oldest
    assert await store.get_value("b") is None
    assert [await store.get_value(k) for k in ("a", "c", "d")] == ["a2", "c", "d"]


async def test_setdefault_value_keeps_the_first_value(store: Store) -> None:
    assert await store.setdefault_value("key", "first") == "first"
    assert await store.setdefault_value("key", "second") == "first"
    assert await store.get_value("key") == "first"
    await store.put_value("answer", "recorded", ttl=60)
    assert await store.setdefault_value("answer", "other") == "recorded"  # an unexpired value


async def test_setdefault_value_replaces_an_expired_value_and_never_expires(store: Store) -> None:
    await store.put_value("k", "old", ttl=0.05)

    async def replaced() -> bool:
        return await store.setdefault_value("k", "new") == "new"

    await eventually(replaced)
    assert await store.get_value("k") == "new"
    await store.put_value("k", "expiring", ttl=60)  # put_value replaces it
    assert await store.get_value("k") == "expiring"


async def test_setdefault_values_are_not_evicted_by_max_keys(make_store: StoreFactory) -> None:
    store = make_store(max_keys=2)
    assert await store.setdefault_value("feedback-key:a", "secret") == "secret"
    for key in ("x", "y", "z"):
        await store.put_value(key, key, ttl=60)
    assert await store.get_value("feedback-key:a") == "secret"
    assert await store.get_value("x") is None  # the oldest expiring value made room
    assert [await store.get_value(k) for k in ("y", "z")] == ["y", "z"]


async def test_concurrent_setdefault_values_have_one_winner(store: Store) -> None:
    results = await asyncio.gather(*(store.setdefault_value("k", f"v{i}") for i in range(30)))
    assert len(set(results)) == 1
    assert await store.get_value("k") == results[0]


async def test_delete_value(store: Store) -> None:
    await store.setdefault_value("permanent", "p")
    await store.put_value("expiring", "e", ttl=60)
    await store.delete_value("permanent")
    await store.delete_value("expiring")
    await store.delete_value("never-stored")  # a no-op
    assert await store.get_value("permanent") is None
    assert await store.get_value("expiring") is None
    assert await store.setdefault_value("permanent", "again") == "again"


async def test_scan_values_prefix_is_literal(store: Store) -> None:
    keys = ["a*", "a*b", "ab", "a?", "a[b]", "a\\b", "a[", "%a_"]
    for key in keys:
        await store.put_value(key, key, ttl=60)
    assert await store.scan_values("a*") == {"a*": "a*", "a*b": "a*b"}
    assert await store.scan_values("a?") == {"a?": "a?"}
    assert await store.scan_values("a[") == {"a[b]": "a[b]", "a[": "a["}
    assert await store.scan_values("a\\") == {"a\\b": "a\\b"}
    assert await store.scan_values("%") == {"%a_": "%a_"}
    assert set(await store.scan_values("a")) == set(keys) - {"%a_"}


async def test_scan_values_by_prefix(store: Store) -> None:
    assert await store.scan_values("answer:") == {}
    await store.put_value("answer:m1", "one", ttl=60)
    await store.put_value("answer:m2", "two", ttl=60)
    await store.put_value("answer:gone", "expired", ttl=0.05)
    await store.setdefault_value("answer:m3", "three")
    await store.put_value("answers", "not under the prefix", ttl=60)
    await store.put_value("other:m1", "other", ttl=60)
    await store.put_value("answer:中文", "unicode", ttl=60)
    expected = {"answer:m1": "one", "answer:m2": "two", "answer:m3": "three"}
    expected["answer:中文"] = "unicode"

    async def expired() -> bool:
        return await store.scan_values("answer:") == expected

    await eventually(expired)
    assert len(await store.scan_values("")) == 6
    assert await store.scan_values("answer:m") == {k: v for k, v in expected.items() if "m" in k}


# --- SQLite only ----------------------------------------------------------------------------


async def test_sqlite_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    items = [feedback("m1"), feedback("m2", robot="other")]
    store = SQLiteStore(path)
    for item in items:
        await store.add_feedback(item)
    await store.claim("done", in_flight_ttl=60)
    await store.complete("done", done_ttl=3600)
    await store.claim("busy", in_flight_ttl=3600)
    await store.acquire_lock("conv", "a", ttl=3600)
    await store.append_history("c", [Turn(role="user", text="hi")], limit=10)
    await store.put_value("answer:m1", "record", ttl=3600)
    await store.setdefault_value("feedback-key:helper", "0123abcd")
    await store.close()

    store = SQLiteStore(path)
    try:
        assert await store.list_feedback() == items
        assert not await store.add_feedback(feedback("m1"))
        assert await store.claim("done", in_flight_ttl=60) is ClaimResult.DONE
        assert await store.claim("busy", in_flight_ttl=60) is ClaimResult.IN_FLIGHT
        assert not await store.acquire_lock("conv", "b", ttl=60)
        assert await store.history("c") == [Turn(role="user", text="hi")]
        assert await store.get_value("answer:m1") == "record"
        assert await store.setdefault_value("feedback-key:helper", "new") == "0123abcd"
        assert await store.scan_values("feedback-key:") == {"feedback-key:helper": "0123abcd"}
    finally:
        await store.close()


async def test_sqlite_schema_version_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = SQLiteStore(path)
    await store.history("warm-up")
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    newer = SQLiteStore(path)
    with pytest.raises(ImrobotsError, match="schema version"):
        await newer.history("k")
    await newer.close()


async def test_sqlite_version_2_file_gains_fencing_tokens(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    with sqlite3.connect(path) as conn:  # a lock held in a file written by schema version 2
        conn.execute(
            "CREATE TABLE locks (key TEXT PRIMARY KEY, owner TEXT NOT NULL,"
            " expires REAL NOT NULL) WITHOUT ROWID"
        )
        conn.execute(
            "CREATE TABLE history (id INTEGER PRIMARY KEY, key TEXT NOT NULL,"
            " role TEXT NOT NULL, text TEXT NOT NULL,"
            " expires REAL NOT NULL DEFAULT 1e999)"
        )
        conn.execute("INSERT INTO locks VALUES ('conv', 'a', ?)", (time.time() + 3600,))
        conn.execute("PRAGMA user_version = 2")
    conn.close()
    store = SQLiteStore(path)
    try:
        assert await store.acquire_lock("conv", "b", ttl=60) is None  # a's lock is kept
        token = await store.acquire_lock("conv", "a", ttl=60)
        assert token == 0  # held since before tokens: it keeps the token it had, 0
        await store.release_lock("conv", "a")
        fresh = await store.acquire_lock("conv", "b", ttl=60)
        assert fresh is not None and fresh > 0
        assert await store.holds_lock("conv", fresh)
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


async def test_sqlite_open_error_is_raised_by_operations(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "state.sqlite3"
    store = SQLiteStore(path)
    with pytest.raises(StoreUnavailable) as info:
        await store.claim("k", in_flight_ttl=1)
    message = str(info.value)
    assert message.startswith(f"SQLite store {path}: cannot open the file: ")
    assert f"the directory {tmp_path / 'missing-dir'} does not exist" in message
    await store.close()
    not_a_database = tmp_path / "notes.txt"
    not_a_database.write_text("hello, this is not SQLite\n" * 100, encoding="utf-8")
    store = SQLiteStore(not_a_database)
    with pytest.raises(StoreUnavailable, match=r"notes\.txt: cannot open the file: .*database"):
        await store.list_feedback()
    await store.close()


def _config_with_a_missing_directory(tmp_path: Path) -> Path:
    """A config file whose SQLite store lies in a directory that does not exist."""
    config = tmp_path / "robots.toml"
    config.write_text(
        f'[store]\nbackend = "sqlite"\npath = "{tmp_path}/missing-dir/x.sqlite3"\n\n'
        '[robots.x]\nplatform = "memory"\n\n[robots.x.agent]\nuse = "demo"\n',
        encoding="utf-8",
    )
    return config


def test_check_refuses_a_sqlite_path_whose_directory_does_not_exist(tmp_path: Path) -> None:
    config = _config_with_a_missing_directory(tmp_path)
    result = CliRunner().invoke(cli, ["check", str(config)])
    assert result.exit_code == 2, result.output
    assert (
        f"error: {config}: store.path: the directory {tmp_path}/missing-dir does not exist"
        in result.output
    )
    config.write_text(config.read_text("utf-8").replace("missing-dir/", ""), "utf-8")
    assert CliRunner().invoke(cli, ["check", str(config)]).exit_code == 0


def test_an_unopenable_sqlite_store_is_one_error_line_of_run_and_export(tmp_path: Path) -> None:
    config = _config_with_a_missing_directory(tmp_path)
    for command in (["run", "--no-status"], ["feedback", "export"]):
        result = subprocess.run(
            [sys.executable, "-m", "imrobots", *command, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert "Traceback" not in result.stderr, result.stderr
        assert result.returncode == 2, result.stderr
        # run refuses it at its check (store.path), export when it opens the store
        assert result.stderr.startswith("error: "), result.stderr
        assert "missing-dir does not exist" in result.stderr


async def test_sqlite_close_stops_the_thread_and_refuses_work(tmp_path: Path) -> None:
    def workers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("imrobots-sqlite")}

    before = workers()
    store = SQLiteStore(tmp_path / "state.sqlite3")
    pending = asyncio.ensure_future(store.claim("k", in_flight_ttl=60))
    await asyncio.sleep(0)
    await store.close()
    await store.close()  # idempotent
    assert await pending is ClaimResult.CLAIMED  # queued before close: finished
    with pytest.raises(RuntimeError, match="closed"):
        await store.claim("k", in_flight_ttl=60)

    async def stopped() -> bool:
        return workers() <= before

    await eventually(stopped)


async def test_sqlite_two_stores_on_one_file_have_one_winner(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    first, second = SQLiteStore(path), SQLiteStore(path)
    try:
        claims = [
            s.claim(f"k{i % 5}", in_flight_ttl=60) for i in range(60) for s in (first, second)
        ]
        results = await asyncio.gather(*claims)
        assert results.count(ClaimResult.CLAIMED) == 5
        waits = await asyncio.gather(
            *(s.reserve("app", limit=2, window=1.0) for _ in range(10) for s in (first, second))
        )
        expected = [float(i // 2) for i in range(20)]  # two a second, across both processes
        assert sorted(waits) == pytest.approx(expected, abs=0.2)
        keys = await asyncio.gather(
            *(s.setdefault_value("key", f"{i}") for i in range(10) for s in (first, second))
        )
        assert len(set(keys)) == 1
    finally:
        await first.close()
        await second.close()


_CLAIMER = """
import asyncio, json, sys
from imrobots.sqlite_store import SQLiteStore

async def main(path: str, keys: int) -> None:
    store = SQLiteStore(path)
    await store.history("warm-up")
    print("ready", flush=True)
    sys.stdin.readline()  # wait for "go": every process starts claiming together
    results = [await store.claim(f"k{i}", in_flight_ttl=60) for i in range(keys)]
    await store.close()
    print(json.dumps(results), flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_sqlite_processes_sharing_a_file_have_one_winner_per_key(tmp_path: Path) -> None:
    path, processes, keys = tmp_path / "shared.sqlite3", 3, 150
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CLAIMER,
            str(path),
            str(keys),
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), timeout=30)
            assert line.strip() == b"ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            await child.stdin.drain()
        outputs = [await asyncio.wait_for(child.communicate(), timeout=30) for child in children]
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
    assert [child.returncode for child in children] == [0] * processes
    results = [json.loads(stdout) for stdout, _ in outputs]
    for index in range(keys):
        per_key = [result[index] for result in results]
        assert sorted(per_key) == ["claimed"] + ["in_flight"] * (processes - 1)


async def test_sqlite_work_runs_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    statement_threads: set[int] = set()
    connect = sqlite3.connect

    def traced_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = connect(*args, **kwargs)
        conn.set_trace_callback(lambda _: statement_threads.add(threading.get_ident()))
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced_connect)
    store = SQLiteStore(tmp_path / "state.sqlite3")
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    try:
        for index in range(500):
            await store.add_feedback(feedback(f"m{index}"))
    finally:
        stop.set()
        await ticking
        await store.close()
    assert ticks >= 500  # the loop ran the ticker while every write was under way
    assert len(statement_threads) == 1  # one dedicated thread...
    assert threading.get_ident() not in statement_threads  # ...which is not the loop's


def _row_counts(path: Path) -> dict[str, int]:
    tables = ("in_flight", "done", "locks", "windows", "kv", "feedback")
    with sqlite3.connect(path) as conn:
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
    conn.close()
    return counts


async def _fill_with_expiring_rows(store: SQLiteStore) -> None:
    await store.claim("in-flight", in_flight_ttl=0.05)
    await store.complete("done", done_ttl=0.05)
    await store.acquire_lock("conv", "a", ttl=0.05)
    await store.reserve("app", limit=2, window=0.01)  # no grant matters 10 ms later
    await store.put_value("record", "v", ttl=0.05)
    await store.complete("kept", done_ttl=3600)
    await store.put_value("kept", "v", ttl=3600)
    await store.setdefault_value("permanent", "v")  # never expires: never purged
    await store.add_feedback(feedback("m1"))


PURGED = {"in_flight": 0, "done": 1, "locks": 0, "windows": 0, "kv": 2, "feedback": 1}


async def test_sqlite_purge_expired_deletes_expired_rows(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = SQLiteStore(path)
    try:
        await _fill_with_expiring_rows(store)
        assert _row_counts(path)["in_flight"] == 1

        async def purged() -> bool:
            await store.purge_expired()
            return _row_counts(path) == PURGED

        await eventually(purged)
        assert await store.claim("kept", in_flight_ttl=60) is ClaimResult.DONE
    finally:
        await store.close()


async def test_sqlite_writes_purge_expired_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "_PURGE_INTERVAL", 0.0)  # purge on every write
    path = tmp_path / "state.sqlite3"
    store = SQLiteStore(path)
    try:
        await _fill_with_expiring_rows(store)

        async def purged() -> bool:
            await store.release("unrelated")  # any write
            return _row_counts(path) == PURGED

        await eventually(purged)
    finally:
        await store.close()


def test_an_empty_or_directory_sqlite_path_is_refused(tmp_path: Path) -> None:
    """``path = "{{STORE_PATH}}"`` with the variable set to nothing passed check, and run
    kept its state in SQLite's temporary database, deleted at exit: dedupe, feedback and
    history lost at every restart without a word. A directory passed check too."""
    config = tmp_path / "robots.toml"
    config.write_text(
        '[store]\nbackend = "sqlite"\npath = "{{STORE_PATH}}"\n\n'
        '[robots.x]\nplatform = "memory"\n\n[robots.x.agent]\nuse = "demo"\n',
        encoding="utf-8",
    )
    empty = (
        "store.path: is empty: SQLite would keep the store in a temporary file, deleted "
        "when it closes; give the file's path"
    )
    directory = f"store.path: {tmp_path} is a directory; give the path of a file"
    for value, error in (("", empty), (" ", empty), (str(tmp_path), directory)):
        for command in (["check", str(config)], ["run", "--no-status", "--config", str(config)]):
            result = CliRunner().invoke(cli, command, env={"STORE_PATH": value})
            assert result.exit_code == 2, result.output
            assert f"error: {config}: {error}" in result.output


async def test_an_sqlite_store_with_an_empty_path_refuses_operations() -> None:
    store = SQLiteStore("")
    with pytest.raises(StoreUnavailable, match="SQLite store path is empty: "):
        await store.claim("k", in_flight_ttl=1)
    await store.close()
