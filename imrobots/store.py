"""State stores: dedupe, conversation locks, rate-limit windows, feedback, history.

Every operation that must be atomic across concurrent callers (and, with the
Redis backend, across replicas) is one method here, so a backend implements it
with one atomic primitive (a lock, a transaction, a Lua script).

Locks are leases with fencing: :meth:`Store.acquire_lock` returns a token that grows with
every acquisition, and a write given a :class:`Fence` is refused with :class:`LockLost` once
the lock is no longer held under that token (it expired, was released or taken over).
"""

from __future__ import annotations

import abc
import enum
import time
from collections import OrderedDict, deque
from collections.abc import Sequence

import attrs

from .errors import ImrobotsError
from .models import Feedback

__all__ = [
    "ClaimResult",
    "Fence",
    "LockLost",
    "MemoryStore",
    "Store",
    "StoreUnavailable",
    "Turn",
]


class StoreUnavailable(ImrobotsError):
    """The store's server cannot be reached, timed out or refused the operation (a Redis
    restart, a network fault, a wrong password). The message says which store and why,
    never its credentials. The operation may or may not have taken effect."""


class LockLost(ImrobotsError):
    """A write fenced by a lock (see :class:`Fence`) was refused: the lock is no longer held
    under the fence's token, because it expired, was released or another owner took it."""


@attrs.frozen
class Fence:
    """A lock held under a fencing token, given to a write so that it happens only while
    the lock is still held under that token (otherwise the write raises :class:`LockLost`)."""

    key: str
    """The lock's key."""
    token: int
    """The token :meth:`Store.acquire_lock` returned."""


class ClaimResult(enum.StrEnum):
    """The answer of :meth:`Store.claim`."""

    CLAIMED = "claimed"
    """Nobody handled this key yet: the caller now owns it."""
    IN_FLIGHT = "in_flight"
    """Another handler is working on it right now."""
    DONE = "done"
    """It was handled already (within the completed cache's lifetime)."""


@attrs.frozen(kw_only=True)
class Turn:
    """One turn of conversation history passed to agents."""

    role: str
    """``user`` or ``assistant``."""
    text: str


class Store(abc.ABC):
    """The state interface. Methods are coroutines and must never block the loop."""

    shared: bool = False
    """Whether processes on other hosts (replicas of a robot) share this store's state.
    A runtime on a shared store takes each conversation's answers in turns across all
    replicas (:meth:`take_turn`), so that a conversation's order holds among them."""

    # --- dedupe: two phases, in-flight then completed -----------------------------------
    @abc.abstractmethod
    async def claim(self, key: str, *, in_flight_ttl: float) -> ClaimResult:
        """Atomically mark ``key`` in flight unless it is in flight or done already."""

    @abc.abstractmethod
    async def complete(self, key: str, *, done_ttl: float) -> None:
        """Move ``key`` from in flight to the completed cache for ``done_ttl`` seconds."""

    @abc.abstractmethod
    async def release(self, key: str) -> None:
        """Forget an in-flight ``key`` (its handling failed) so a redelivery can be handled."""

    # --- locks ----------------------------------------------------------------------------
    @abc.abstractmethod
    async def acquire_lock(self, key: str, owner: str, *, ttl: float) -> int | None:
        """Take the lock ``key`` for ``owner`` for ``ttl`` seconds if free (or expired, or
        already ``owner``'s); return its fencing token, or ``None`` if another owner holds it.

        The token is a positive integer, greater than every token issued before by this
        store (so, for one key, than every earlier holder's). Taking the lock again while
        holding it extends it and keeps the token; a changed token tells the owner that its
        hold lapsed in between (it expired), so another owner may have acted meanwhile.
        """

    @abc.abstractmethod
    async def release_lock(self, key: str, owner: str) -> None:
        """Release the lock if ``owner`` holds it."""

    @abc.abstractmethod
    async def holds_lock(self, key: str, token: int) -> bool:
        """Whether the lock ``key`` is held under ``token`` now (not expired, released or
        taken over since that token was issued)."""

    # --- sliding windows (rate limits) ---------------------------------------------------
    async def reserve(self, key: str, *, limit: int, window: float) -> float:
        """Reserve one call in the sliding window ``key``; return the seconds to wait
        before making it.

        At most ``limit`` calls are granted in any ``window`` seconds. A call is
        granted at once when the window has room; otherwise at the first moment
        it has, in arrival order (reservations are never reordered, which makes
        the window fair). A reservation is always granted.
        """
        return await self.reserve_all(((key, limit, window),))

    @abc.abstractmethod
    async def reserve_all(self, windows: Sequence[tuple[str, int, float]]) -> float:
        """Reserve one call in each of ``windows`` (``(key, limit, window seconds)``) at one
        and the same time, the earliest at which every one of them has room (in arrival
        order in each); return the seconds to wait. A key listed n times gets n calls
        (room for all n, at most its limit, is waited for). One call counted by several limits
        (its chat's and its app's) must be recorded in all of them at the time it is made:
        a slot reserved earlier in one window than the call happens would let that window
        overfill later. Atomic across callers sharing the store."""

    @abc.abstractmethod
    async def room_in(self, key: str, *, limit: int, window: float) -> float:
        """Seconds until the window ``key`` has room for one call (``0.0``: now), in
        arrival order, without reserving anything."""

    async def room_in_all(self, windows: Sequence[tuple[str, int, float]]) -> float:
        """Seconds until every one of ``windows`` (``(key, limit, window seconds)``) has
        room for one call (``0.0``: now): the longest :meth:`room_in` of them, reserving
        nothing. A store may answer it in one step (the in-memory store does, and the Redis
        store in one script: one round trip); this one asks :meth:`room_in` per window."""
        longest = 0.0
        for key, limit, window in windows:
            room = await self.room_in(key, limit=limit, window=window)
            if room > longest:
                longest = room
        return longest

    @abc.abstractmethod
    async def penalize(self, key: str, *, seconds: float) -> None:
        """The platform said "rate limited": grant nothing from ``key`` for ``seconds``
        (calls already granted later than that keep their place)."""

    # --- feedback -------------------------------------------------------------------------
    @abc.abstractmethod
    async def add_feedback(self, feedback: Feedback) -> bool:
        """Store feedback; return False if the same user already rated the same answer."""

    @abc.abstractmethod
    async def list_feedback(self, *, robot: str | None = None) -> list[Feedback]:
        """All stored feedback, oldest first, optionally for one robot."""

    # --- history --------------------------------------------------------------------------
    @abc.abstractmethod
    async def append_history(
        self, key: str, turns: Sequence[Turn], *, limit: int, ttl: float | None = None
    ) -> None:
        """Append turns to a conversation's history, keeping only the last ``limit``; the
        whole history is forgotten ``ttl`` seconds after its last turn (``None``: kept)."""

    @abc.abstractmethod
    async def history(self, key: str) -> list[Turn]:
        """The conversation's history, oldest first."""

    # --- small records ----------------------------------------------------------------------
    @abc.abstractmethod
    async def put_value(
        self, key: str, value: str, *, ttl: float, fence: Fence | None = None
    ) -> None:
        """Remember ``value`` under ``key`` for ``ttl`` seconds (answers for feedback).

        With ``fence``, atomically: only while that lock is held under its token; else
        nothing is written and :class:`LockLost` is raised.
        """

    @abc.abstractmethod
    async def get_value(self, key: str) -> str | None:
        """The value stored under ``key``, or ``None`` if absent or expired."""

    @abc.abstractmethod
    async def setdefault_value(self, key: str, value: str) -> str:
        """Atomically store ``value`` under ``key`` unless a value is there; return the stored one.

        A value stored here never expires and is never evicted to make room (it is
        meant for a few long-lived records, like a robot's feedback signing key);
        :meth:`put_value` on the same key replaces it with an expiring one. Of
        concurrent callers (and, with a shared backend, processes), one wins and
        all get its value.
        """

    @abc.abstractmethod
    async def delete_value(self, key: str, *, fence: Fence | None = None) -> None:
        """Forget the value under ``key``, if any (with ``fence``: as in :meth:`put_value`)."""

    @abc.abstractmethod
    async def scan_values(self, prefix: str) -> dict[str, str]:
        """Every unexpired value whose key starts with ``prefix``, by key."""

    # --- turns: one conversation's answers in order across replicas ----------------------
    async def take_turn(
        self, key: str, member: str, score: float, *, ttl: float, take: bool = True
    ) -> str | None:
        """Queue ``member`` in the turn queue ``key`` (unless it is queued already) at
        ``score`` (a positive number; lower goes first, equal scores by ``member``); return
        the queue's head, the member whose turn it is. With ``take``, a ``member`` found at
        the head takes its turn: it stays the head until :meth:`end_turn`, even if a member
        with a lower score is queued meanwhile. The queue is forgotten ``ttl`` seconds after
        its last change. Needed by shared stores (:attr:`shared`); others raise
        ``NotImplementedError``."""
        raise NotImplementedError(f"{type(self).__name__} has no turn queues")

    async def end_turn(self, key: str, member: str) -> None:
        """Take ``member`` out of the turn queue ``key`` (its turn ended, or it is gone)."""
        raise NotImplementedError(f"{type(self).__name__} has no turn queues")

    async def close(self) -> None:
        """Release resources (connections, files)."""


@attrs.define
class _Window:
    """The grants of one sliding window: their times (ascending, some in the future)."""

    times: deque[float] = attrs.field(factory=deque)
    blocked_until: float = float("-inf")
    idle_after: float = float("-inf")
    """When its last grant has left the window: from then on it is empty and may be dropped."""


def window_earliest(w: _Window, now: float, limit: int, window: float, calls: int = 1) -> float:
    """The earliest time at or after ``now`` at which window ``w`` has room for ``calls``
    calls (at most ``limit``), never ahead of an earlier reservation (arrival order). Any
    later time has room too."""
    times = w.times
    while times and times[0] <= now - window:
        times.popleft()
    at = now if now > w.blocked_until else w.blocked_until
    if times:
        if times[-1] > at:
            at = times[-1]
        keep = limit - (calls if calls < limit else limit) + 1  # room once all but keep - 1 left
        if len(times) >= keep:
            room = times[-keep] + window
            if room > at:
                at = room
    return at


def windows_reserve(records: Sequence[tuple[_Window, int, float]], now: float) -> float:
    """Reserve one call in every window at one time, the earliest all have room; a window
    listed n times gets n calls (an operation making n calls of one API)."""
    if len({id(record[0]) for record in records}) == len(records):  # each listed once
        at = now
        for w, limit, window in records:
            earliest = window_earliest(w, now, limit, window)
            if earliest > at:
                at = earliest
        for w, _, window in records:
            w.times.append(at)
            if at + window > w.idle_after:
                w.idle_after = at + window
        return at - now
    last: dict[int, tuple[_Window, int, float]] = {}
    """Per window, its last listing (whose limit and length count)."""
    repeated: dict[int, int] = {}
    """Per window listed more than once, how many times."""
    for record in records:
        ident = id(record[0])
        if ident in last:
            repeated[ident] = repeated.get(ident, 1) + 1
        last[ident] = record
    at = now
    for ident, (w, limit, window) in last.items():
        earliest = window_earliest(w, now, limit, window, repeated.get(ident, 1))
        if earliest > at:
            at = earliest
    for ident, (w, _, window) in last.items():
        n = repeated.get(ident, 1)
        if n == 1:
            w.times.append(at)
        else:
            w.times.extend([at] * n)
        if at + window > w.idle_after:
            w.idle_after = at + window
    return at - now


def window_penalize(w: _Window, now: float, seconds: float) -> None:
    w.blocked_until = max(w.blocked_until, now + seconds)


class MemoryStore(Store):
    """The default store: everything in this process's memory, gone on exit."""

    def __init__(self, *, max_keys: int = 100_000, max_histories: int = 10_000) -> None:
        """``max_keys`` bounds dedupe keys and records; ``max_histories`` the conversations
        whose history is kept (the least recently used are forgotten first)."""
        self._max_keys = max_keys
        self._max_histories = max_histories
        self._in_flight: dict[str, float] = {}
        self._done: OrderedDict[str, float] = OrderedDict()
        self._locks: dict[str, tuple[str, float, int]] = {}
        """Per lock: its owner, when it expires and its fencing token."""
        self._last_token = 0
        self._windows: dict[str, _Window] = {}
        self._feedback: list[Feedback] = []
        self._feedback_keys: set[tuple[str, str, str, str]] = set()
        self._history: OrderedDict[str, tuple[float, tuple[Turn, ...]]] = OrderedDict()
        """Per conversation: when it expires, and its turns."""
        self._values: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._permanent: dict[str, str] = {}
        """Values stored by :meth:`setdefault_value`: never expired, never evicted."""
        self._next_sweep = 0.0

    @staticmethod
    def _now() -> float:
        return time.monotonic()

    def _sweep(self, now: float) -> None:
        """Forget expired in-flight keys, locks and rate-limit windows that are empty and
        unpenalized (at most once a minute): a window per conversation, card or member
        would otherwise stay for the life of the process."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + 60.0
        self._in_flight = {k: t for k, t in self._in_flight.items() if t > now}
        self._locks = {k: v for k, v in self._locks.items() if v[1] > now}
        self._windows = {
            k: w for k, w in self._windows.items() if w.idle_after > now or w.blocked_until > now
        }

    async def claim(self, key: str, *, in_flight_ttl: float) -> ClaimResult:
        now = self._now()
        self._sweep(now)
        expiry = self._done.get(key)
        if expiry is not None:
            if expiry > now:
                return ClaimResult.DONE
            del self._done[key]
        started = self._in_flight.get(key)
        if started is not None and started > now:
            return ClaimResult.IN_FLIGHT
        self._in_flight[key] = now + in_flight_ttl
        return ClaimResult.CLAIMED

    async def complete(self, key: str, *, done_ttl: float) -> None:
        self._in_flight.pop(key, None)
        self._done[key] = self._now() + done_ttl
        self._done.move_to_end(key)
        while len(self._done) > self._max_keys:
            self._done.popitem(last=False)

    async def release(self, key: str) -> None:
        self._in_flight.pop(key, None)

    async def acquire_lock(self, key: str, owner: str, *, ttl: float) -> int | None:
        now = self._now()
        held = self._locks.get(key)
        if held is not None and held[1] > now:
            if held[0] != owner:
                return None
            token = held[2]  # still held: extended, same token
        else:
            self._last_token += 1
            token = self._last_token
        self._locks[key] = (owner, now + ttl, token)
        return token

    async def release_lock(self, key: str, owner: str) -> None:
        held = self._locks.get(key)
        if held is not None and held[0] == owner:
            del self._locks[key]

    async def holds_lock(self, key: str, token: int) -> bool:
        held = self._locks.get(key)
        return held is not None and held[2] == token and held[1] > self._now()

    async def _check_fence(self, fence: Fence | None) -> None:
        if fence is not None and not await self.holds_lock(fence.key, fence.token):
            raise LockLost(f"lock {fence.key!r} is no longer held under token {fence.token}")

    def _window(self, key: str) -> _Window:
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = _Window()
        return w

    async def reserve_all(self, windows: Sequence[tuple[str, int, float]]) -> float:
        now = self._now()
        if now >= self._next_sweep:
            self._sweep(now)
        found = self._windows
        records = []
        for key, limit, window in windows:
            w = found.get(key)
            if w is None:
                w = found[key] = _Window()
            records.append((w, limit, window))
        return windows_reserve(records, now)

    async def room_in(self, key: str, *, limit: int, window: float) -> float:
        now = self._now()
        return window_earliest(self._window(key), now, limit, window) - now

    async def room_in_all(self, windows: Sequence[tuple[str, int, float]]) -> float:
        now = self._now()
        found = self._windows
        at = now
        for key, limit, window in windows:
            w = found.get(key)
            if w is None:
                w = found[key] = _Window()
            earliest = window_earliest(w, now, limit, window)
            if earliest > at:
                at = earliest
        return at - now

    async def penalize(self, key: str, *, seconds: float) -> None:
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = _Window()
        window_penalize(w, self._now(), seconds)

    async def add_feedback(self, feedback: Feedback) -> bool:
        identity = (feedback.robot, feedback.message_id, feedback.sender.id, feedback.platform)
        if identity in self._feedback_keys:
            return False
        self._feedback_keys.add(identity)
        self._feedback.append(feedback)
        return True

    async def list_feedback(self, *, robot: str | None = None) -> list[Feedback]:
        return [f for f in self._feedback if robot is None or f.robot == robot]

    async def append_history(
        self, key: str, turns: Sequence[Turn], *, limit: int, ttl: float | None = None
    ) -> None:
        now = self._now()
        entry = self._history.pop(key, None)
        history = entry[1] if entry is not None and entry[0] > now else ()
        # a tuple, not a deque: a deque takes about 600 bytes however few turns it holds,
        # and most conversations hold a few (bench/engine.py row 9)
        history = (*history, *turns)[-limit:] if limit > 0 else ()
        self._history[key] = (now + ttl if ttl is not None else float("inf"), history)
        while len(self._history) > self._max_histories:
            self._history.popitem(last=False)

    async def history(self, key: str) -> list[Turn]:
        entry = self._history.get(key)
        if entry is None:
            return []
        if entry[0] <= self._now():
            del self._history[key]
            return []
        return list(entry[1])

    async def put_value(
        self, key: str, value: str, *, ttl: float, fence: Fence | None = None
    ) -> None:
        await self._check_fence(fence)
        self._permanent.pop(key, None)
        self._values[key] = (value, self._now() + ttl)
        self._values.move_to_end(key)
        while len(self._values) > self._max_keys:
            self._values.popitem(last=False)

    def _get(self, key: str) -> str | None:
        permanent = self._permanent.get(key)
        if permanent is not None:
            return permanent
        item = self._values.get(key)
        if item is None:
            return None
        if item[1] <= self._now():
            del self._values[key]
            return None
        return item[0]

    async def get_value(self, key: str) -> str | None:
        return self._get(key)

    async def setdefault_value(self, key: str, value: str) -> str:
        current = self._get(key)
        if current is not None:
            return current
        self._values.pop(key, None)
        self._permanent[key] = value
        return value

    async def delete_value(self, key: str, *, fence: Fence | None = None) -> None:
        await self._check_fence(fence)
        self._permanent.pop(key, None)
        self._values.pop(key, None)

    async def scan_values(self, prefix: str) -> dict[str, str]:
        now = self._now()
        found = {k: v for k, v in self._permanent.items() if k.startswith(prefix)}
        for key, (value, expires) in self._values.items():
            if expires > now and key.startswith(prefix):
                found[key] = value
        return found
