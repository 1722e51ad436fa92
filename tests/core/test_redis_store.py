"""Redis-only behaviour of RedisStore: replicas sharing one server, restarts and outages,
secrets, key layout. The Store contract itself runs against Redis in test_store.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from imrobots.app import build_store
from imrobots.config import load_config
from imrobots.errors import ConfigError
from imrobots.models import Feedback, FeedbackRating, Sender
from imrobots.store import (
    ClaimResult,
    Fence,
    LockLost,
    MemoryStore,
    Store,
    StoreUnavailable,
    Turn,
)

pytest.importorskip("redis.asyncio", reason='the redis package is not installed: "imrobots[redis]"')

import redis
import redis.asyncio as aioredis

from imrobots.redis_store import RedisStore, redact_url

if TYPE_CHECKING:
    from tests.conftest import RedisServer

PASSWORD = "s3cret-Redis-pw"


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex}:"


@pytest.fixture
async def replicas(redis_server: RedisServer, prefix: str) -> AsyncIterator[list[RedisStore]]:
    """Two stores on one server and prefix: two replicas of one robot."""
    stores = [RedisStore(redis_server.url, prefix=prefix) for _ in range(2)]
    yield stores
    for store in stores:
        await store.close()


def feedback(message_id: str, *, sender: str = "u1") -> Feedback:
    return Feedback(
        robot="helper",
        platform="dingtalk",
        message_id=message_id,
        rating=FeedbackRating.HELPFUL,
        sender=Sender(id=sender, name=None, is_admin=False),
        question="q",
        answer="a",
    )


async def test_two_replicas_share_dedupe_windows_locks_and_records(
    replicas: list[RedisStore],
) -> None:
    first, second = replicas
    claims = await asyncio.gather(
        *(s.claim(f"m{i % 5}", in_flight_ttl=60) for i in range(40) for s in (first, second))
    )
    assert claims.count(ClaimResult.CLAIMED) == 5  # one replica per message
    await first.complete("m0", done_ttl=60)
    assert await second.claim("m0", in_flight_ttl=60) is ClaimResult.DONE
    await second.release("m1")
    assert await first.claim("m1", in_flight_ttl=60) is ClaimResult.CLAIMED

    waits = await asyncio.gather(
        *(s.reserve("app", limit=2, window=1.0) for _ in range(10) for s in (first, second))
    )
    expected = [float(i // 2) for i in range(20)]  # two a second across both replicas
    assert sorted(waits) == pytest.approx(expected, abs=0.1)
    # one call counted by its chat's window and the app's, from both replicas at once
    both = await asyncio.gather(
        *(
            replicas[i % 2].reserve_all(((f"chat{i}", 1, 1.0), ("app-wide", 3, 1.0)))
            for i in range(12)
        )
    )
    assert sorted(both) == pytest.approx([0.0] * 3 + [1.0] * 3 + [2.0] * 3 + [3.0] * 3, abs=0.1)
    assert await second.room_in("app-wide", limit=3, window=1.0) == pytest.approx(4.0, abs=0.1)
    await first.penalize("card", seconds=5)
    assert await second.reserve("card", limit=10, window=1.0) == pytest.approx(5, abs=0.1)

    token = await first.acquire_lock("conv", "replica-1", ttl=60)
    assert token is not None
    assert await second.acquire_lock("conv", "replica-2", ttl=60) is None
    assert await second.holds_lock("conv", token)
    await second.put_value("open:conv", "by 1", ttl=60, fence=Fence("conv", token))
    await first.release_lock("conv", "replica-1")
    taken = await second.acquire_lock("conv", "replica-2", ttl=60)
    assert taken is not None and taken > token
    with pytest.raises(LockLost):
        await first.put_value("open:conv", "stale", ttl=60, fence=Fence("conv", token))
    assert await first.get_value("open:conv") == "by 1"

    assert await first.add_feedback(feedback("m1"))
    assert not await second.add_feedback(feedback("m1"))
    assert await second.add_feedback(feedback("m1", sender="u2"))
    assert [f.sender.id for f in await first.list_feedback()] == ["u1", "u2"]
    keys = await asyncio.gather(
        *(s.setdefault_value("feedback-key:helper", f"{i}") for i in range(10) for s in replicas)
    )
    assert len(set(keys)) == 1


async def test_replicas_with_other_prefixes_share_nothing(redis_server: RedisServer) -> None:
    one = RedisStore(redis_server.url, prefix=f"a-{uuid.uuid4().hex}:")
    two = RedisStore(redis_server.url, prefix=f"b-{uuid.uuid4().hex}:")
    try:
        assert await one.claim("m", in_flight_ttl=60) is ClaimResult.CLAIMED
        assert await two.claim("m", in_flight_ttl=60) is ClaimResult.CLAIMED
        await one.put_value("k", "one", ttl=60)
        assert await two.get_value("k") is None
        assert await two.scan_values("") == {}
    finally:
        await one.close()
        await two.close()


async def test_keys_live_under_the_prefix_and_expire(
    redis_server: RedisServer, prefix: str
) -> None:
    store = RedisStore(redis_server.url, prefix=prefix)
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await store.claim("in-flight", in_flight_ttl=60)
        await store.complete("done", done_ttl=60)
        await store.acquire_lock("conv", "a", ttl=60)
        await store.reserve("app", limit=2, window=1.0)
        await store.penalize("app", seconds=3)
        await store.append_history("h", [], limit=4, ttl=60)  # empty: no key at all
        await store.append_history("c", [Turn(role="user", text="hi")], limit=4, ttl=60)
        await store.append_history("kept", [Turn(role="user", text="hi")], limit=4)
        await store.put_value("v", "x", ttl=60)
        await store.setdefault_value("permanent", "x")
        await store.add_feedback(feedback("m1"))
        names = {name async for name in client.scan_iter(match="*")}
        ours = {name for name in names if name.startswith(prefix)}
        expiring = {
            "dedupe:in-flight": 60_000,
            "dedupe-by:in-flight": 60_000,
            "dedupe:done": 60_000,
            "lock:conv": 60_000,
            "window:app": 1_000,
            "window-block:app": 3_000,
            "history:c": 60_000,
            "value:v": 60_000,
        }
        kept = {"history:kept", "value:permanent", "feedback", "feedback-seen"}
        kept |= {"dedupe-index", "value-index", "seq", "lock-token"}
        assert {name.removeprefix(prefix) for name in ours} == set(expiring) | kept
        for name, ttl in expiring.items():
            assert 0 < await client.pttl(prefix + name) <= ttl + 1, name
        for name in kept:
            assert await client.pttl(prefix + name) == -1, name  # -1: no expiry
        assert len(await client.lrange(prefix + "window:app", 0, -1)) == 1
    finally:
        await store.close()
        await client.aclose()


async def test_scan_values_walks_many_keys(redis_server: RedisServer, prefix: str) -> None:
    store = RedisStore(redis_server.url, prefix=prefix)
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for i in range(2500):  # more than one SCAN step and one MGET
                pipe.set(f"{prefix}value:answer:{i}", str(i), px=60_000)
                pipe.set(f"{prefix}value:other:{i}", str(i), px=60_000)
            await pipe.execute()
        found = await store.scan_values("answer:")
        assert found == {f"answer:{i}": str(i) for i in range(2500)}
    finally:
        await store.close()
        await client.aclose()


async def test_a_redis_restart_gives_a_clear_error_then_works_again(
    make_redis_server: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = make_redis_server(password=PASSWORD)
    store = RedisStore(server.url, prefix="app:", timeout=2.0, reconnect_for=0.3)
    try:
        assert await store.claim("m1", in_flight_ttl=60) is ClaimResult.CLAIMED
        old = await store.acquire_lock("conv", "a", ttl=60)
        assert old is not None
        assert await store.reserve("api", limit=5, window=1.0) == 0.0

        server.stop()
        for operation in (
            store.claim("m2", in_flight_ttl=60),
            store.reserve("api", limit=5, window=1.0),
            store.get_value("k"),
        ):
            with pytest.raises(StoreUnavailable) as info:
                await operation
            message = str(info.value)
            assert f"Redis store redis://:***@127.0.0.1:{server.port}/0 failed" in message
            assert "onnect" in message  # redis-py's reason: connecting, refused, closed...
            assert PASSWORD not in message
            assert info.value.__cause__ is None and info.value.__suppress_context__

        server.start()  # same port; the keys (and the scripts' cache) are gone
        assert await store.claim("m2", in_flight_ttl=60) is ClaimResult.CLAIMED
        assert await store.claim("m1", in_flight_ttl=60) is ClaimResult.CLAIMED  # data lost
        assert await store.reserve("api", limit=5, window=1.0) == 0.0
        new = await store.acquire_lock("conv", "b", ttl=60)
        assert new is not None and new > old  # fencing tokens still grow after the loss
        with pytest.raises(LockLost):
            await store.put_value("open:conv", "stale", ttl=60, fence=Fence("conv", old))
    finally:
        await store.close()
    assert PASSWORD not in caplog.text
    assert PASSWORD not in repr(store)


async def test_an_operation_during_a_redis_restart_waits_for_the_server(
    make_redis_server: Callable[..., RedisServer],
) -> None:
    """While the server refuses connections (a restart), an operation is tried again on a
    new connection, within ``reconnect_for``: the robot's work goes on after the restart."""
    server = make_redis_server()
    store = RedisStore(server.url, prefix="app:", reconnect_for=30.0)
    try:
        assert await store.claim("m1", in_flight_ttl=60) is ClaimResult.CLAIMED
        server.stop()
        claim = asyncio.create_task(store.claim("m2", in_flight_ttl=60))
        reserve = asyncio.create_task(store.reserve("api", limit=5, window=1.0))
        done, _ = await asyncio.wait({claim, reserve}, timeout=0.3)
        assert not done  # refused: waiting, not failed
        await asyncio.to_thread(server.start)  # same port
        assert await claim is ClaimResult.CLAIMED
        assert await reserve == 0.0
        assert await store.claim("m2", in_flight_ttl=60) is ClaimResult.IN_FLIGHT  # once
    finally:
        await store.close()


async def test_a_frozen_redis_times_out_with_a_clear_error(
    make_redis_server: Callable[..., RedisServer],
) -> None:
    server = make_redis_server()
    assert server.process is not None
    store = RedisStore(server.url, prefix="app:", timeout=0.3)
    try:
        await store.ping()
        os.kill(server.process.pid, signal.SIGSTOP)  # alive but silent: a black hole
        started = time.monotonic()
        try:
            with pytest.raises(StoreUnavailable, match=r"failed \(claim\): Timeout"):
                await store.claim("m1", in_flight_ttl=60)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert time.monotonic() - started < 5
        assert await store.claim("m2", in_flight_ttl=60) is ClaimResult.CLAIMED
    finally:
        await store.close()


@contextlib.contextmanager
def _redis_on_a_unix_socket() -> Iterator[tuple[str, redis.Redis]]:
    """A password-protected redis-server listening on a unix socket only: its path and an
    admin client."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("redis-server is not installed")
    with tempfile.TemporaryDirectory(prefix="imr") as directory:  # a short socket path
        path = os.path.join(directory, "redis.sock")
        args = [executable, "--port", "0", "--unixsocket", path, "--requirepass", PASSWORD]
        args += ["--save", "", "--appendonly", "no", "--dir", directory]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        admin = redis.Redis(unix_socket_path=path, password=PASSWORD)
        try:
            deadline = time.monotonic() + 30
            while True:  # polling the new server's socket, not waiting for time to pass
                try:
                    admin.ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, "redis-server did not start"
                    time.sleep(0.01)
            yield path, admin
        finally:
            admin.close()
            process.terminate()
            process.wait(timeout=30)


async def test_a_wrong_password_on_a_unix_socket_fails_at_once_without_reconnecting() -> None:
    """On a unix socket, redis-py 8 raises a refused password as a ConnectionError (caused
    by an AuthenticationError): it was taken for a lost connection and tried again for
    ``reconnect_for``, so ``imrobots run`` said nothing for 10 s."""
    with _redis_on_a_unix_socket() as (path, admin):
        before = int(admin.info("stats")["total_connections_received"])
        wrong = RedisStore(
            f"unix://:not-the-password@{path}?db=0", prefix="app:", reconnect_for=3.0
        )
        try:
            with pytest.raises(StoreUnavailable, match="password") as info:
                await wrong.ping()
            assert "not-the-password" not in str(info.value)
        finally:
            await wrong.close()
        after = int(admin.info("stats")["total_connections_received"])
        assert after - before == 1  # the one refused connection, not one per 50 ms-1 s


async def test_wrong_password_and_unreachable_server_are_clear_errors(
    make_redis_server: Callable[..., RedisServer],
) -> None:
    server = make_redis_server(password=PASSWORD)
    wrong = RedisStore(server.url.replace(PASSWORD, "not-the-password"), prefix="app:")
    try:
        with pytest.raises(StoreUnavailable) as info:
            await wrong.claim("m", in_flight_ttl=60)
        assert "not-the-password" not in str(info.value)
        assert "password" in str(info.value).lower()  # redis-py: invalid username-password
    finally:
        await wrong.close()
    missing = RedisStore(
        f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0", prefix="app:", reconnect_for=0.2
    )
    server.stop()
    try:
        with pytest.raises(StoreUnavailable, match=r"connecting to 127\.0\.0\.1") as info:
            await missing.ping()
        assert PASSWORD not in str(info.value)
    finally:
        await missing.close()


async def test_closed_store_refuses_work(redis_server: RedisServer, prefix: str) -> None:
    store = RedisStore(redis_server.url, prefix=prefix)
    await store.ping()
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await store.claim("k", in_flight_ttl=60)


def test_the_password_never_shows() -> None:
    assert redact_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("redis://user:pw@host/0") == "redis://user:***@host/0"
    assert redact_url("redis://user@host/0") == "redis://user@host/0"
    assert redact_url("redis://:p@ss:w@rd@host/0") == "redis://:***@host/0"
    assert redact_url("rediss://host:6380/1") == "rediss://host:6380/1"
    assert redact_url("unix:///run/redis.sock?db=1&password=pw") == (
        "unix:///run/redis.sock?db=1&password=***"
    )
    store = RedisStore(f"redis://admin:{PASSWORD}@127.0.0.1:1/0", prefix="p:")
    assert PASSWORD not in repr(store)
    assert repr(store) == "RedisStore('redis://admin:***@127.0.0.1:1/0', prefix='p:')"


def test_a_bad_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="bad Redis URL") as info:
        RedisStore(f"http://:{PASSWORD}@127.0.0.1/0")
    assert PASSWORD not in str(info.value)
    with pytest.raises(ConfigError, match="names the database by its number") as info:
        RedisStore(f"redis://:{PASSWORD}@127.0.0.1:1/abc")
    assert PASSWORD not in str(info.value)


async def test_config_selects_the_redis_store(tmp_path: Path) -> None:
    path = tmp_path / "robots.toml"
    path.write_text(
        '[store]\nbackend = "redis"\nurl = "{{IMROBOTS_REDIS_URL}}"\nprefix = "support:"\n\n'
        '[robots.support]\nplatform = "memory"\n',
        encoding="utf-8",
    )
    config = load_config(path, env={"IMROBOTS_REDIS_URL": f"redis://:{PASSWORD}@10.0.0.5:6379/2"})
    assert config.store.url == f"redis://:{PASSWORD}@10.0.0.5:6379/2"
    assert PASSWORD not in repr(config)
    store = build_store(config)
    try:
        assert isinstance(store, RedisStore)
        assert store.url == "redis://:***@10.0.0.5:6379/2"
        assert store.prefix == "support:"
    finally:
        await store.close()
    default = load_config(path, env={"IMROBOTS_REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert default.store.backend == "redis"


def test_config_without_the_redis_package_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "robots.toml"
    path.write_text('[store]\nbackend = "redis"\n\n[robots.support]\nplatform = "memory"\n')
    config = load_config(path, env={})
    monkeypatch.delitem(sys.modules, "imrobots.redis_store")
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ConfigError, match=r'pip install "imrobots\[redis\]"'):
        build_store(config)


async def test_turn_queues_order_by_send_time_and_a_taken_turn_holds(
    replicas: list[RedisStore],
) -> None:
    """A conversation's turn queue, shared by two replicas: the earliest-sent message heads
    it; once it takes its turn it stays the head, even when an earlier-sent message (handed
    to another replica a moment later) is queued meanwhile; end_turn passes the turn on."""
    first, second = replicas
    assert await first.take_turn("chat", "m2|a", 2.0, ttl=60, take=False) == "m2|a"
    assert await second.take_turn("chat", "m3|b", 3.0, ttl=60) == "m2|a"
    assert await first.take_turn("chat", "m2|a", 2.0, ttl=60) == "m2|a"  # takes it
    assert await second.take_turn("chat", "m1|b", 1.0, ttl=60) == "m2|a"  # holds
    await first.end_turn("chat", "m2|a")
    assert await second.take_turn("chat", "m3|b", 3.0, ttl=60) == "m1|b"  # earliest next
    await second.end_turn("chat", "m1|b")
    assert await second.take_turn("chat", "m3|b", 3.0, ttl=60) == "m3|b"
    await second.end_turn("chat", "m3|b")
    assert await first.take_turn("other", "x|a", 5.0, ttl=60) == "x|a"  # queues are apart
    assert first.shared and not MemoryStore.shared
    with pytest.raises(NotImplementedError):
        await MemoryStore().take_turn("chat", "m", 1.0, ttl=60)


async def _scripts_run(client: aioredis.Redis) -> int:
    """Scripts the server ran so far (``EVALSHA`` and ``EVAL`` in ``INFO commandstats``;
    the commands a script calls are counted there too, so only these tell calls apart)."""
    stats = await client.info("commandstats")
    return sum(
        int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval")
    )


async def test_room_in_all_is_one_script_that_answers_as_room_in_of_each_window(
    redis_server: RedisServer, prefix: str
) -> None:
    """The Redis store answers room_in_all in one round trip (one script over every
    window's keys) with what the base class's room_in per window answers: the longest
    wait, one call's room in each (a window listed twice is not asked for two calls, as
    reserve_all would), and drops grants that have left their windows as room_in does."""
    store = RedisStore(redis_server.url, prefix=prefix)
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        minute = 60.0
        await store.reserve("partly", limit=3, window=minute)  # 1 of 3: room now
        await store.reserve_all((("full", 2, minute), ("full", 2, minute)))  # room in 60 s
        # "ahead": one grant now, one reserved a minute ahead: room in 120 s
        await store.reserve("ahead", limit=1, window=minute)
        assert await store.reserve("ahead", limit=1, window=minute) > minute - 1  # ahead
        await store.penalize("blocked", seconds=30.0)  # room in 30 s, no grant
        # grants that left their window long ago, and one 20 s ago: the window's room is in
        # 40 s; the stale ones are dropped by whoever reads the window first. Each twice
        # over, for the one script and for room_in per window to find them
        seconds, micros = await client.time()
        now = seconds * 1_000_000 + micros
        stale = [str(now - 300_000_000), str(now - 200_000_000), str(now - 20_000_000)]
        for twin in ("", "-twin"):
            await client.rpush(f"{prefix}window:stale{twin}", *stale)
            await client.rpush(f"{prefix}window:gone{twin}", stale[0])
        cases: list[tuple[tuple[str, int, float], ...]] = [
            (),
            (("empty", 2, minute),),
            (("empty", 2, minute), ("partly", 3, minute)),
            (("partly", 3, minute),) * 3,  # room for one call, asked three times: now
            (("partly", 1, minute), ("partly", 3, minute)),  # per listing's limit: 60 s
            (("partly", 3, minute), ("full", 2, minute)),
            (("full", 2, minute), ("empty", 2, minute), ("ahead", 1, minute)),
            (("blocked", 5, minute), ("partly", 3, minute)),
            (("gone", 1, minute), ("empty", 1, minute)),
            (("stale", 1, minute), ("partly", 3, minute)),
            (("full", 2, minute), ("blocked", 5, minute), ("stale", 1, minute)),
        ]
        expected = [0.0, 0.0, 0.0, 0.0, 60.0, 60.0, 120.0, 30.0, 0.0, 40.0, 60.0]
        sent: list[str] = []  # the commands the store's client sends: one round trip each
        execute = store._redis.execute_command

        async def counted(*args: Any, **options: Any) -> Any:
            sent.append(str(args[0]))
            return await execute(*args, **options)

        store._redis.execute_command = counted  # type: ignore[method-assign]
        # connected, and both scripts loaded (a script's first run may load it: 3 commands)
        assert await store.room_in_all(cases[1]) == 0.0
        assert await store.room_in("empty", limit=2, window=minute) == 0.0
        sent.clear()
        before = await _scripts_run(client)
        one = await store.room_in_all(
            (("stale", 1, minute), ("partly", 3, minute), ("gone", 1, minute))
        )
        assert sent == ["EVALSHA"]  # one round trip for three windows
        assert await _scripts_run(client) - before == 1  # and the server ran one script
        sent.clear()
        before = await _scripts_run(client)
        each = await Store.room_in_all(  # the base class: room_in per window
            store, (("stale-twin", 1, minute), ("partly", 3, minute), ("gone-twin", 1, minute))
        )
        assert sent == ["EVALSHA"] * 3
        assert await _scripts_run(client) - before == 3
        assert one == pytest.approx(each, abs=0.5) and one == pytest.approx(40.0, abs=0.5)
        for twin in ("", "-twin"):  # both dropped the grants that left the window
            assert await client.lrange(f"{prefix}window:stale{twin}", 0, -1) == stale[2:]
            assert await client.llen(f"{prefix}window:gone{twin}") == 0
        for windows, wait in zip(cases, expected, strict=True):
            one = await store.room_in_all(windows)
            each = await Store.room_in_all(store, windows)
            assert one == pytest.approx(wait, abs=0.5), windows
            assert one == pytest.approx(each, abs=0.5), windows
            assert (one == 0.0) == (each == 0.0), windows
        sent.clear()
        assert await store.room_in_all(()) == 0.0  # nothing to ask: no round trip
        assert sent == []
        # nothing was reserved by any of it
        assert await client.llen(prefix + "window:partly") == 1
        assert await client.llen(prefix + "window:empty") == 0
    finally:
        await store.close()
        await client.aclose()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://user:pw-secret@x:1/0", "must specify one of the following schemes"),
        ("redis://:pw-secret@host:notaport/0", "Port could not be cast to integer"),
        # redis-py took these for database 0: a typo landed in another deployment's data
        ("redis://:pw-secret@host:6379/abc", "names the database by its number"),
        ("rediss://:pw-secret@host:6379/1O", "(redis://host:6379/0), not '/1O'"),
    ],
)
def test_check_refuses_a_url_that_is_no_redis_url(tmp_path: Path, url: str, reason: str) -> None:
    """check said the file was valid; only run refused it."""
    from click.testing import CliRunner

    from imrobots.cli import cli

    config = tmp_path / "robots.toml"
    config.write_text(
        f'[store]\nbackend = "redis"\nurl = "{url}"\n\n'
        '[robots.x]\nplatform = "memory"\n\n[robots.x.agent]\nuse = "demo"\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(cli, ["check", str(config)])
    assert result.exit_code == 2, result.output
    assert f"error: {config}: store.url: bad Redis URL " in result.output
    assert reason in result.output and "pw-secret" not in result.output


async def test_a_runtime_stopped_while_starting_does_not_wait_for_an_unreachable_redis() -> None:
    """SIGTERM while Redis could not be reached at start: the start was cancelled, but
    ``stop()`` then released a lease the runtime never took, retrying the unreachable
    Redis for ``reconnect_for`` seconds, so ``imrobots run`` used its whole grace period
    and warned "1 robot(s) did not finish stopping"."""
    import socket

    import imrobots
    from imrobots.memory import MemoryPlatform
    from imrobots.runtime import RobotRuntime

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: every connection is refused
    store = RedisStore(f"redis://127.0.0.1:{port}/0", reconnect_for=30.0)
    runtime = RobotRuntime(
        name="r",
        robot=imrobots.Robot(agent=lambda r: "x"),
        platform=MemoryPlatform(),
        store=store,
    )
    starting = asyncio.ensure_future(runtime.start())
    await asyncio.sleep(0)  # the start is under way, retrying the store
    starting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await starting
    async with asyncio.timeout(5):  # it made no store call: far less than reconnect_for
        await runtime.stop()
    await store.close()
