"""A :class:`~imrobots.store.Store` on a Redis server, shared by replicas on any number of hosts.

Every operation that reads and then writes is one Lua script, which Redis runs
atomically: no other command of any client runs between its steps. Expiry
(dedupe marks, locks, records, history) is Redis's own key expiry, and the
rate-limit windows read the server's clock (``TIME``) inside their scripts, so
every replica works on one clock whatever its host's clock says. Reads of several
windows at once (:meth:`RedisStore.room_in_all`, which the rate limiter asks on every
wait) are one script too: one round trip, whatever the number of windows.

Needs the ``redis`` extra (``pip install "imrobots[redis]"``) and Redis 5.0 or
later, a single server (or a primary with replicas behind Sentinel), not Redis
Cluster: the scripts touch keys that Cluster may place on different nodes.

Keys, all under the configured prefix ``P`` (``imrobots:`` by default)::

    P dedupe:KEY        "in_flight" or "done", expiring         (claim/complete/release)
    P dedupe-by:KEY     the token of KEY's claim, expiring with its in-flight mark
    P dedupe-index      sorted set: done keys by completion order (the max_keys bound)
    P lock:KEY          hash {owner, token}, expiring           (acquire_lock/release_lock)
    P lock-token        the last fencing token issued
    P window:KEY        list of grant times, µs of server time  (reserve)
    P window-block:KEY  the penalty's end, µs of server time    (penalize)
    P feedback          list of feedback records (JSON), oldest first
    P feedback-seen     hash: the (robot, message, sender, platform) already rated
    P history:KEY       list of turns (JSON), expiring
    P value:KEY         a small record, expiring unless stored by setdefault_value
    P value-index       sorted set: expiring records by write order (the max_keys bound)
    P seq               the order of completions and writes, for the two indexes
    P turns:KEY         sorted set: a conversation's messages waiting or answered now,
                        by the time they were sent (take_turn/end_turn), expiring
"""

from __future__ import annotations

import asyncio
import json
import math
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

from .errors import ConfigError
from .models import Feedback
from .sqlite_store import _feedback_from_row, _feedback_row
from .store import ClaimResult, Fence, LockLost, Store, StoreUnavailable, Turn

__all__ = ["DEFAULT_PREFIX", "DEFAULT_URL", "RedisStore", "redact_url"]

_T = TypeVar("_T")

DEFAULT_URL: Final = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX: Final = "imrobots:"

_SCAN_COUNT: Final = 1000
"""Keys asked of each ``SCAN`` step, and values of each ``MGET``."""

# --- Lua scripts ---------------------------------------------------------------------------
# Each runs atomically in Redis. Times are integers: milliseconds for key expiry (PX,
# PEXPIRE), microseconds of the server's clock for windows. Numbers that may exceed 14
# digits are formatted with string.format: Lua's own tostring would round them.

_CLAIM: Final = """
-- KEYS: dedupe key, its claimer key. ARGV: in-flight ttl (ms), the claim's token.
-- Returns claimed | in_flight | done. The same token claiming again (a repeat after a lost
-- reply) gets claimed again.
local state = redis.call('GET', KEYS[1])
if state == 'in_flight' and redis.call('GET', KEYS[2]) == ARGV[2] then
  return 'claimed'
end
if state == 'done' or state == 'in_flight' then
  return state
end
redis.call('SET', KEYS[1], 'in_flight', 'PX', ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[1])
return 'claimed'
"""

_COMPLETE: Final = """
-- KEYS: dedupe key, done index, seq. ARGV: done ttl (ms), key, max_keys, dedupe key prefix.
-- Marks the key done; beyond max_keys done keys, forgets the ones completed longest ago.
redis.call('SET', KEYS[1], 'done', 'PX', ARGV[1])
redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[2])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if over > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #oldest, 2 do
    local key = ARGV[4] .. oldest[i]
    if redis.call('GET', key) == 'done' then
      redis.call('DEL', key)
    end
  end
end
return 1
"""

_RELEASE: Final = """
-- KEYS: dedupe key. Forgets an in-flight mark; a done key stays done.
if redis.call('GET', KEYS[1]) == 'in_flight' then
  redis.call('DEL', KEYS[1])
end
return 1
"""

_ACQUIRE_LOCK: Final = """
-- KEYS: lock key, token counter. ARGV: owner, ttl (ms).
-- Returns the fencing token (a string of digits), or nil if another owner holds the lock.
-- A free (or expired: gone) lock gets a new token; its owner taking it again keeps it.
local held = redis.call('HMGET', KEYS[1], 'owner', 'token')
local token
if held[1] then
  if held[1] ~= ARGV[1] then
    return false
  end
  token = held[2]
else
  if redis.call('EXISTS', KEYS[2]) == 0 then
    -- The first token is the server's clock in µs: tokens keep growing even after
    -- Redis lost its data (a restart without persistence).
    local now = redis.call('TIME')
    redis.call('SET', KEYS[2], now[1] .. string.format('%06d', tonumber(now[2])))
  end
  token = string.format('%d', redis.call('INCR', KEYS[2]))
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', token)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return token
"""

_RELEASE_LOCK: Final = """
-- KEYS: lock key. ARGV: owner. Deletes the lock if the owner holds it.
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
"""

_EARLIEST: Final = """
-- The earliest time (µs) at or after `now` at which the window (grant list `times`, penalty
-- key `block`) has room for one call, never ahead of an earlier grant (arrival order): the
-- rule of imrobots.store.window_earliest. Drops the grants that have left the window.
local function earliest(times, block, limit, window, now, calls)
  -- room for `calls` calls (at most `limit`): once all but limit - calls grants have left
  local keep = limit - math.min(calls or 1, limit) + 1
  local edge = now - window
  while true do
    local first = redis.call('LINDEX', times, 0)
    if not first or tonumber(first) > edge then
      break
    end
    redis.call('LPOP', times)
  end
  local at = now
  local blocked = tonumber(redis.call('GET', block))
  if blocked and blocked > at then
    at = blocked
  end
  local n = redis.call('LLEN', times)
  if n > 0 then
    local last = tonumber(redis.call('LINDEX', times, -1))
    if last > at then
      at = last
    end
    if n >= keep then
      local room = tonumber(redis.call('LINDEX', times, -keep)) + window
      if room > at then
        at = room
      end
    end
  end
  return at
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""

_RESERVE_ALL: Final = (
    """
-- KEYS: per window, its grant list and its penalty. ARGV: per window, limit and window (µs).
-- Reserves one call in every window at one time, the earliest (by the server's TIME) at which
-- all have room; returns the µs from now to it (imrobots.store.windows_reserve). A window
-- listed n times gets n calls.
"""
    + _EARLIEST
    + """
local calls, first = {}, {}
for i = 1, #KEYS / 2 do
  local key = KEYS[2 * i - 1]
  if calls[key] then
    calls[key] = calls[key] + 1
  else
    calls[key] = 1
    first[#first + 1] = i
  end
end
local at = now
for _, i in ipairs(first) do
  local e = earliest(KEYS[2 * i - 1], KEYS[2 * i], tonumber(ARGV[2 * i - 1]),
    tonumber(ARGV[2 * i]), now, calls[KEYS[2 * i - 1]])
  if e > at then
    at = e
  end
end
local granted = string.format('%.0f', at)
for _, i in ipairs(first) do
  for _ = 1, calls[KEYS[2 * i - 1]] do
    redis.call('RPUSH', KEYS[2 * i - 1], granted)
  end
  -- No grant matters once the last one has left the window.
  redis.call('PEXPIRE', KEYS[2 * i - 1], math.floor((at + tonumber(ARGV[2 * i]) - now) / 1000) + 1)
end
return at - now
"""
)

_ROOM_IN: Final = (
    """
-- KEYS: the window's grant list and penalty. ARGV: limit, window (µs).
-- Returns the µs from now until the window has room, reserving nothing.
"""
    + _EARLIEST
    + """
return earliest(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), now) - now
"""
)

_ROOM_IN_ALL: Final = (
    """
-- KEYS: per window, its grant list and its penalty. ARGV: per window, limit and window (µs).
-- Returns the µs from now until every window has room for one call, reserving nothing: the
-- longest of room_in's answers for each window (at one server TIME); a window listed more
-- than once is asked once per listing, as room_in would be.
"""
    + _EARLIEST
    + """
local at = now
for i = 1, #KEYS / 2 do
  local e = earliest(KEYS[2 * i - 1], KEYS[2 * i], tonumber(ARGV[2 * i - 1]),
    tonumber(ARGV[2 * i]), now)
  if e > at then
    at = e
  end
end
return at - now
"""
)

_PENALIZE: Final = """
-- KEYS: window's penalty. ARGV: seconds (µs). Nothing is granted before now + seconds
-- (server TIME); a later penalty already there is kept. The key expires when it ends.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local till = now + tonumber(ARGV[1])
if till <= now then
  return 0
end
local current = tonumber(redis.call('GET', KEYS[1]))
if current and current >= till then
  return 0
end
redis.call('SET', KEYS[1], string.format('%.0f', till), 'PX',
  math.floor((till - now) / 1000) + 1)
return 1
"""

_ADD_FEEDBACK: Final = """
-- KEYS: seen hash, feedback list. ARGV: identity, record. Returns 1 if stored, 0 if the
-- same user already rated the same answer.
if redis.call('HSETNX', KEYS[1], ARGV[1], '1') == 0 then
  return 0
end
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
"""

_APPEND_HISTORY: Final = """
-- KEYS: history list. ARGV: limit, ttl (ms, or '' to keep), turns...
-- Appends the turns, keeps the last `limit`, and sets the whole history's expiry.
local limit = tonumber(ARGV[1])
if limit <= 0 then
  redis.call('DEL', KEYS[1])
  return 1
end
for i = 3, #ARGV do
  redis.call('RPUSH', KEYS[1], ARGV[i])
end
redis.call('LTRIM', KEYS[1], -limit, -1)
if ARGV[2] == '' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""

_FENCE_CHECK: Final = """
if ARGV[1] ~= '' and redis.call('HGET', KEYS[#KEYS], 'token') ~= ARGV[1] then
  return 0
end
"""
"""The start of a fenced script: ARGV[1] is the fence's token ('' for none), the last key
its lock. Returns 0 (nothing written) unless the lock is held under that token."""

_PUT_VALUE: Final = (
    """
-- KEYS: value key, value index, seq[, fence lock].
-- ARGV: fence token or '', value, ttl (ms), key, max_keys, value key prefix.
-- Returns 1, or 0 if fenced out. Beyond max_keys expiring records, forgets the ones written
-- longest ago (records stored by setdefault_value are not in the index: never evicted).
"""
    + _FENCE_CHECK
    + """
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[4])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if over > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #oldest, 2 do
    redis.call('DEL', ARGV[6] .. oldest[i])
  end
end
return 1
"""
)

_DELETE_VALUE: Final = (
    """
-- KEYS: value key, value index[, fence lock]. ARGV: fence token or '', key.
-- Returns 1, or 0 if fenced out.
"""
    + _FENCE_CHECK
    + """
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""
)

_SETDEFAULT_VALUE: Final = """
-- KEYS: value key, value index. ARGV: value, key. Returns the stored value: the one there,
-- or ARGV[1], then stored without expiry and out of the eviction index.
local current = redis.call('GET', KEYS[1])
if current then
  return current
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return ARGV[1]
"""


_TAKE_TURN: Final = """
-- KEYS: turn queue (sorted set). ARGV: member, score, ttl (ms), take ('1' or '0').
-- Queues the member unless queued; returns the head (lowest score, then member). A head
-- that takes its turn gets score 0 (below every send time): it stays the head until it
-- leaves, whatever is queued after it.
redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local head = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
if head == ARGV[1] and ARGV[4] == '1' then
  redis.call('ZADD', KEYS[1], 'XX', 0, ARGV[1])
end
return head
"""


def url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a Redis URL, checked without connecting (redis-py's
    words, with the URL's password redacted), or ``None``."""
    try:
        parse_url(url)
    except ValueError as error:
        return f"bad Redis URL {redact_url(url)!r}: {error}"
    parts = urllib.parse.urlsplit(url)
    database = urllib.parse.unquote(parts.path).replace("/", "")
    if parts.scheme in ("redis", "rediss") and database and not database.isdecimal():
        # redis-py ignores a path that is no number and uses database 0, another
        # deployment's perhaps
        return (
            f"bad Redis URL {redact_url(url)!r}: the path names the database by its number "
            f"(redis://host:6379/0), not {parts.path!r}"
        )
    return None


def redact_url(url: str) -> str:
    """``url`` without its password (in the user part or a ``password=`` query parameter)."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, has_password, _ = userinfo.partition(":")
            netloc = f"{user}:***@{hostport}" if has_password else f"{user}@{hostport}"
        query = urllib.parse.urlencode(
            [
                (name, "***" if name.lower() == "password" else value)
                for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            ],
            safe="*",
        )
        text = f"{parts.scheme}://{netloc}{parts.path}" if "//" in url else url.split("?")[0]
        return text + (f"?{query}" if query else "")
    except ValueError:
        return "<unparsable Redis URL>"


def _reconnectable(error: BaseException) -> bool:
    """Whether ``error`` is a lost or refused connection (the server stopped, is restarting
    or closed the connection), worth trying again on a new connection; not a time-out, a
    refused password or a server error."""
    cause: BaseException | None = error
    while cause is not None:  # redis-py 8 raises a refused password as a ConnectionError
        if isinstance(cause, AuthenticationError | AuthorizationError):  # from this one
            return False
        cause = cause.__cause__
    if isinstance(error, RedisConnectionError):
        return True
    return isinstance(error, ConnectionRefusedError | ConnectionResetError)


def _text(value: bytes | str) -> str:
    """A reply as text (the client decodes replies already; this narrows the type)."""
    return value.decode() if isinstance(value, bytes) else value


def _ms(seconds: float) -> int:
    """A positive whole number of milliseconds, for Redis expiry (at least 1 ms)."""
    return max(1, math.ceil(seconds * 1000))


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a ``SCAN MATCH`` pattern."""
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)


class RedisStore(Store):
    """A store on a Redis server, shared by every process (replica) that uses the same
    server and ``prefix``; each operation is atomic across all of them.

    ``url`` is ``redis://[[user]:password@]host:port/db`` (``rediss://`` for TLS,
    ``unix:///path?db=0``); its password never shows in a repr, a log line or an error.
    Nothing connects before the first operation. An operation that cannot reach the
    server within ``timeout`` seconds, or that the server refuses, raises
    :class:`~imrobots.store.StoreUnavailable`; it is not retried (it may have taken
    effect), and the next operation connects again. The exception is a refused or lost
    connection (a server being restarted, or one that closed the connection): the
    operation is tried again on a new connection for up to ``reconnect_for`` seconds
    (backing off from 50 ms to 1 s) before it raises. Operations are harmless to repeat:
    a claim carries a token of its own, so the repeat of a claim that took effect returns
    ``CLAIMED`` again; a repeated reservation only costs a slot; a repeated
    :meth:`add_feedback` returns False. ``max_keys`` bounds the completed
    dedupe keys and, separately, the expiring records, like the other stores.
    Call :meth:`close` when done.
    """

    shared = True

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        prefix: str = DEFAULT_PREFIX,
        max_keys: int = 100_000,
        timeout: float = 5.0,
        reconnect_for: float = 10.0,
    ) -> None:
        self.url = redact_url(url)
        """The server's URL, without its password."""
        self.prefix = prefix
        """Every key of this store starts with it."""
        self._max_keys = max_keys
        self._reconnect_for = reconnect_for
        self._closed = False
        problem = url_problem(url)
        if problem is not None:
            raise ConfigError(problem)
        try:
            self._redis: aioredis.Redis = aioredis.Redis.from_url(
                url,
                decode_responses=True,
                protocol=2,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as error:  # redis-py names the problem, never the password
            raise ConfigError(f"bad Redis URL {self.url!r}: {error}") from None
        register = self._redis.register_script
        self._claim = register(_CLAIM)
        self._complete = register(_COMPLETE)
        self._release = register(_RELEASE)
        self._acquire_lock = register(_ACQUIRE_LOCK)
        self._release_lock = register(_RELEASE_LOCK)
        self._reserve_all = register(_RESERVE_ALL)
        self._room_in = register(_ROOM_IN)
        self._room_in_all = register(_ROOM_IN_ALL)
        self._penalize = register(_PENALIZE)
        self._add_feedback = register(_ADD_FEEDBACK)
        self._append_history = register(_APPEND_HISTORY)
        self._put_value = register(_PUT_VALUE)
        self._delete_value = register(_DELETE_VALUE)
        self._setdefault_value = register(_SETDEFAULT_VALUE)
        self._take_turn = register(_TAKE_TURN)

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, prefix={self.prefix!r})"

    # --- plumbing -------------------------------------------------------------------------
    def _key(self, kind: str, key: str = "") -> str:
        return f"{self.prefix}{kind}{key}"

    async def _do(self, what: str, operation: Callable[[], Awaitable[_T]]) -> _T:
        """Run one Redis call, turning every Redis failure into :class:`StoreUnavailable`."""
        if self._closed:
            raise RuntimeError("RedisStore is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._reconnect_for
        pause = 0.05
        while True:
            try:
                return await operation()
            except (RedisError, OSError) as error:
                if _reconnectable(error) and loop.time() + pause < deadline:
                    # The connection was refused or lost (a restarting server): tried again
                    # on a new one. Every operation is harmless to repeat (see the class).
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 1.0)
                    continue
                # redis-py's messages name the host and port, never the password; the
                # original exception is not chained, so nothing else it holds is printed.
                reason = str(error) or type(error).__name__
                raise StoreUnavailable(
                    f"Redis store {self.url} failed ({what}): {reason}"
                ) from None

    async def _script(
        self, what: str, script: AsyncScript, keys: Sequence[str], args: Sequence[str | int]
    ) -> Any:
        return await self._do(what, lambda: script(keys=list(keys), args=list(args)))

    async def ping(self) -> None:
        """Check that the server answers; raise :class:`StoreUnavailable` if not."""
        await self._do("ping", self._redis.ping)

    # --- dedupe ---------------------------------------------------------------------------
    async def claim(self, key: str, *, in_flight_ttl: float) -> ClaimResult:
        result = await self._script(
            "claim",
            self._claim,
            [self._key("dedupe:", key), self._key("dedupe-by:", key)],
            [_ms(in_flight_ttl), uuid.uuid4().hex],
        )
        return ClaimResult(result)

    async def complete(self, key: str, *, done_ttl: float) -> None:
        """Move ``key`` from in flight to the completed cache for ``done_ttl`` seconds.

        Beyond ``max_keys`` completed keys, the oldest completions are forgotten.
        """
        await self._script(
            "complete",
            self._complete,
            [self._key("dedupe:", key), self._key("dedupe-index"), self._key("seq")],
            [_ms(done_ttl), key, self._max_keys, self._key("dedupe:")],
        )

    async def release(self, key: str) -> None:
        await self._script("release", self._release, [self._key("dedupe:", key)], [])

    # --- locks ----------------------------------------------------------------------------
    async def acquire_lock(self, key: str, owner: str, *, ttl: float) -> int | None:
        """Take the lock ``key`` for ``owner``; return its fencing token or ``None`` (see
        :meth:`Store.acquire_lock`). The lock expires by Redis's clock."""
        token = await self._script(
            "acquire_lock",
            self._acquire_lock,
            [self._key("lock:", key), self._key("lock-token")],
            [owner, _ms(ttl)],
        )
        return None if token is None else int(token)

    async def release_lock(self, key: str, owner: str) -> None:
        await self._script("release_lock", self._release_lock, [self._key("lock:", key)], [owner])

    async def holds_lock(self, key: str, token: int) -> bool:
        held = await self._do(
            "holds_lock", lambda: self._redis.hget(self._key("lock:", key), "token")
        )
        return held == str(token)

    # --- sliding windows ------------------------------------------------------------------
    async def reserve_all(self, windows: Sequence[tuple[str, int, float]]) -> float:
        """Reserve one call in every window at one time (see :meth:`Store.reserve_all`), by
        the Redis server's clock, so replicas on hosts with different clocks share them."""
        return await self._over_windows("reserve", self._reserve_all, windows)

    async def room_in(self, key: str, *, limit: int, window: float) -> float:
        """Seconds until the window ``key`` has room (see :meth:`Store.room_in`)."""
        micros = await self._script(
            "room_in",
            self._room_in,
            [self._key("window:", key), self._key("window-block:", key)],
            [limit, round(window * 1_000_000)],
        )
        return int(micros) / 1_000_000

    async def room_in_all(self, windows: Sequence[tuple[str, int, float]]) -> float:
        """Seconds until every one of ``windows`` (``(key, limit, window seconds)``) has
        room for one call (``0.0``: now), reserving nothing (see :meth:`Store.room_in_all`):
        one script over all their keys, so one round trip to the server, answering what
        :meth:`room_in` of each would (the longest of them), all at one server time. No
        windows: ``0.0`` without asking the server. Raises :class:`StoreUnavailable` as
        every operation does."""
        return await self._over_windows("room_in_all", self._room_in_all, windows)

    async def _over_windows(
        self, name: str, script: AsyncScript, windows: Sequence[tuple[str, int, float]]
    ) -> float:
        """Run a windows script (``reserve_all``, ``room_in_all``) over each window's
        grant and penalty keys with its limit and length (µs); its answer in seconds."""
        if not windows:
            return 0.0
        keys: list[str] = []
        args: list[str | int] = []
        for key, limit, window in windows:
            keys += [self._key("window:", key), self._key("window-block:", key)]
            args += [limit, round(window * 1_000_000)]
        micros = await self._script(name, script, keys, args)
        return int(micros) / 1_000_000

    async def penalize(self, key: str, *, seconds: float) -> None:
        await self._script(
            "penalize",
            self._penalize,
            [self._key("window-block:", key)],
            [round(seconds * 1_000_000)],
        )

    # --- feedback -------------------------------------------------------------------------
    async def add_feedback(self, feedback: Feedback) -> bool:
        """Store feedback; return False if the same user already rated the same answer
        (same robot, message id, sender id and platform). Its durability is the server's
        (configure Redis's AOF or snapshots to keep feedback across a Redis restart)."""
        identity = json.dumps(
            [feedback.robot, feedback.message_id, feedback.sender.id, feedback.platform],
            ensure_ascii=False,
        )
        record = json.dumps(_feedback_row(feedback), ensure_ascii=False)
        stored = await self._script(
            "add_feedback",
            self._add_feedback,
            [self._key("feedback-seen"), self._key("feedback")],
            [identity, record],
        )
        return bool(stored)

    async def list_feedback(self, *, robot: str | None = None) -> list[Feedback]:
        """All stored feedback, in the order it was added, optionally for one robot.

        Times come back timezone-aware, in UTC.
        """
        records = await self._do(
            "list_feedback", lambda: self._redis.lrange(self._key("feedback"), 0, -1)
        )
        found = (_feedback_from_row(tuple(json.loads(_text(record)))) for record in records)
        return [f for f in found if robot is None or f.robot == robot]

    # --- history --------------------------------------------------------------------------
    async def append_history(
        self, key: str, turns: Sequence[Turn], *, limit: int, ttl: float | None = None
    ) -> None:
        """Append turns to a conversation's history, keeping only the last ``limit``; the
        history is forgotten ``ttl`` seconds after its last turn (``None``: kept)."""
        if limit < 0:
            raise ValueError("limit must be >= 0")
        kept = list(turns)[-limit:] if limit else []  # only the last `limit` can remain
        encoded = [json.dumps([t.role, t.text], ensure_ascii=False) for t in kept]
        await self._script(
            "append_history",
            self._append_history,
            [self._key("history:", key)],
            [limit, "" if ttl is None else _ms(ttl), *encoded],
        )

    async def history(self, key: str) -> list[Turn]:
        items = await self._do(
            "history", lambda: self._redis.lrange(self._key("history:", key), 0, -1)
        )
        turns = []
        for item in items:
            role, text = json.loads(_text(item))
            turns.append(Turn(role=role, text=text))
        return turns

    # --- small records --------------------------------------------------------------------
    def _fenced(self, keys: list[str], fence: Fence | None) -> tuple[list[str], list[str | int]]:
        if fence is None:
            return keys, [""]
        return [*keys, self._key("lock:", fence.key)], [str(fence.token)]

    @staticmethod
    def _check_fenced(written: Any, fence: Fence | None) -> None:
        if not written and fence is not None:
            raise LockLost(f"lock {fence.key!r} is no longer held under token {fence.token}")

    async def put_value(
        self, key: str, value: str, *, ttl: float, fence: Fence | None = None
    ) -> None:
        """Remember ``value`` under ``key`` for ``ttl`` seconds (see :meth:`Store.put_value`).

        Beyond ``max_keys`` records, the ones put longest ago are forgotten first.
        """
        keys, args = self._fenced(
            [self._key("value:", key), self._key("value-index"), self._key("seq")], fence
        )
        written = await self._script(
            "put_value",
            self._put_value,
            keys,
            [*args, value, _ms(ttl), key, self._max_keys, self._key("value:")],
        )
        self._check_fenced(written, fence)

    async def get_value(self, key: str) -> str | None:
        value = await self._do("get_value", lambda: self._redis.get(self._key("value:", key)))
        return None if value is None else _text(value)

    async def setdefault_value(self, key: str, value: str) -> str:
        """Atomically store ``value`` under ``key`` unless a value is there; return the stored one.

        The value never expires and is never evicted. Kept across a Redis restart only if
        the server persists its data (AOF or snapshots).
        """
        stored = await self._script(
            "setdefault_value",
            self._setdefault_value,
            [self._key("value:", key), self._key("value-index")],
            [value, key],
        )
        return str(stored)

    async def delete_value(self, key: str, *, fence: Fence | None = None) -> None:
        keys, args = self._fenced([self._key("value:", key), self._key("value-index")], fence)
        written = await self._script("delete_value", self._delete_value, keys, [*args, key])
        self._check_fenced(written, fence)

    async def scan_values(self, prefix: str) -> dict[str, str]:
        """Every unexpired value whose key starts with ``prefix``, by key.

        Walks the keys with ``SCAN`` (never ``KEYS``, which would stall the server), so it
        is not one atomic snapshot: a value written or deleted meanwhile may or may not
        be in the result.
        """
        head = self._key("value:")
        pattern = _glob_escape(head + prefix) + "*"

        async def scan() -> dict[str, str]:
            names: set[str] = set()  # SCAN may return a key more than once
            async for name in self._redis.scan_iter(match=pattern, count=_SCAN_COUNT):
                names.add(_text(name))
            ordered = sorted(names)
            found: dict[str, str] = {}
            for start in range(0, len(ordered), _SCAN_COUNT):
                chunk = ordered[start : start + _SCAN_COUNT]
                for name, value in zip(chunk, await self._redis.mget(chunk), strict=True):
                    if value is not None:  # expired or deleted since the scan
                        found[name[len(head) :]] = _text(value)
            return found

        return await self._do("scan_values", scan)

    # --- turns ----------------------------------------------------------------------------
    async def take_turn(
        self, key: str, member: str, score: float, *, ttl: float, take: bool = True
    ) -> str | None:
        """Queue ``member`` in the turn queue ``key`` and return its head (see
        :meth:`Store.take_turn`): a sorted set, which Redis orders by score, then member."""
        head = await self._script(
            "take_turn",
            self._take_turn,
            [self._key("turns:", key)],
            [member, repr(score), _ms(ttl), "1" if take else "0"],
        )
        return None if head is None else _text(head)

    async def end_turn(self, key: str, member: str) -> None:
        await self._do("end_turn", lambda: self._redis.zrem(self._key("turns:", key), member))

    # --- maintenance ----------------------------------------------------------------------
    async def close(self) -> None:
        """Close the connections. Safe to call more than once; operations after it raise
        ``RuntimeError``."""
        if self._closed:
            return
        self._closed = True
        await self._redis.aclose()
