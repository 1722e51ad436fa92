"""The client-side rate limiter: a sliding window per declared scope, shared by all answers.

A platform declares its limits as :class:`~imrobots.platform.RateLimit`\\ s with a
scope (app, API, conversation, card/message, member). The limiter keeps one
sliding window per scope and key in the :class:`~imrobots.store.Store`, so every
conversation (and, with a shared store, every replica) draws from the same
budget. A call goes at once when its windows have room (so the first update of
a new answer does not wait for a slot) and the window is never exceeded. A call
first waits for its narrow scopes (its conversation, its card, its member), then
takes its turn in the wide ones (the app, the API): a busy conversation waits
for its own window without holding app turns, so it never
delays another conversation beyond the app scope's fair share. Reservations
are granted in arrival order, so answers share a budget fairly and none starves.
Intermediate updates and final cards queue in the limiter (finals first) and take a slot
only where a window has room now, so a new answer's first update takes the next slot
that frees instead of queueing behind them (:class:`Priority`).
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TypeVar

import attrs

from .clock import Clock, SystemClock
from .errors import RateLimited
from .platform import Capabilities, Op, RateLimit, Scope
from .retry import RetryPolicy, retry_call
from .store import Store

T = TypeVar("T")

__all__ = ["CallScope", "Priority", "RateLimiter", "RateLimiterStats"]

_NARROW = (Scope.CONVERSATION, Scope.CARD, Scope.MEMBER)
BURST_PARTS = 10
"""Each window's calls are spread over its tenths (see :meth:`RateLimiter._windows`)."""
LATE_TOLERANCE = 0.05
"""Seconds a call may leave after its granted time before it takes a fresh slot."""
LATE_RETRIES = 3
SPREAD_UP_TO = 2.0
"""Seconds: only windows this short or shorter are spread over their tenths."""
_MARK = "\x00"
"""A key :meth:`RateLimiter._windows` is asked about to learn its windows' suffixes."""

_Spec = tuple[str, int, float]
_Plan = tuple[Sequence[_Spec], Sequence[_Spec], Sequence[_Spec]]
"""A call's narrow windows, all its windows, and all of them once each."""


@attrs.frozen
class _Layout:
    """The windows counting one operation, as far as they do not depend on the call."""

    parts: tuple[tuple[Scope | None, str, tuple[tuple[str, int, float], ...]], ...]
    """Per window group: its narrow scope (``None``: a wide one, whose key is complete),
    its key (a prefix, for a narrow scope) and its windows' (suffix, limit, seconds)."""
    limits: tuple[RateLimit, ...]
    """The limit of each of :attr:`parts` (for :meth:`RateLimiter._applicable`)."""
    times: int
    """Calls the operation makes (each counted in every window)."""
    fixed: _Plan | None
    """The plan of every call, when no narrow scope counts the operation."""


class Priority(enum.IntEnum):
    """How a call takes its turn (:meth:`RateLimiter.acquire`)."""

    FIRST = 0
    """Reserve the earliest free slot, ahead in time if need be, in arrival order: sends,
    openings, an answer's first update, button answers (the default)."""
    FINAL = 1
    """Wait for a slot with room now, before any ``BACKGROUND`` call: final cards."""
    BACKGROUND = 2
    """Wait for a slot with room now, after every other call: intermediate updates,
    which coalesce (the update that waits shows the text so far)."""


class _Gate:
    """One holder at a time; waiters served by (priority, arrival)."""

    def __init__(self) -> None:
        self._busy = False
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    async def acquire(self, priority: int) -> None:
        if not self._busy and not self._waiters:
            self._busy = True
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # handed the gate as it was cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)  # the gate passes to it, still busy
                return
        self._busy = False


@attrs.define
class RateLimiterStats:
    """Counters for benchmarks and status lines."""

    granted: int = 0
    waited: float = 0.0
    penalties: int = 0
    late: int = 0
    """Grants not used because the caller woke too late for them (a busy loop)."""


@attrs.frozen(kw_only=True)
class CallScope:
    """What one call touches, for keying the scoped limits."""

    op: Op = Op.SEND_CARD
    conversation: str | None = None
    """The conversation key (``Target.key``)."""
    card: str | None = None
    """The card's or message's id."""
    member: str | None = None
    """The user the call sends to."""

    def ident(self, scope: Scope) -> str | None:
        """The key of ``scope`` for this call (``Scope.API`` is keyed by the limiter)."""
        if scope is Scope.APP:
            return "app"
        if scope is Scope.API:
            return str(self.op)
        if scope is Scope.CONVERSATION:
            return self.conversation
        if scope is Scope.CARD:
            return self.card
        return self.member


_NO_SCOPE = CallScope()


class RateLimiter:
    """Scoped token buckets in a :class:`Store`. See the module docstring.

    ``RateLimiter(store, key, rate=20)`` is one app-wide window of 20 calls a second;
    :meth:`for_capabilities` builds one from what a platform declares.
    """

    def __init__(
        self,
        store: Store,
        key: str,
        *,
        rate: float | None = None,
        limits: Iterable[RateLimit] | None = None,
        headroom: float = 1.0,
        api_names: Mapping[Op, str | tuple[str, ...]] | None = None,
        op_calls: Mapping[Op, int] | None = None,
        clock: Clock | None = None,
    ) -> None:
        if limits is None:
            if rate is None or rate <= 0:
                raise ValueError("rate must be positive")
            limits = (RateLimit(scope=Scope.APP, rate=rate),)
        self.store = store
        self.key = key
        self.limits = tuple(limits)
        self.headroom = headroom
        self.api_names: Mapping[Op, str | tuple[str, ...]] = dict(api_names or {})
        self.op_calls: Mapping[Op, int] = dict(op_calls or {})
        self._op_limits: dict[Op, list[tuple[RateLimit, str]]] = {}
        self._layouts: dict[Op, _Layout] = {}
        """Per operation, what :meth:`_plan` needs that does not change from call to call."""
        self.clock: Clock = clock or SystemClock()
        self.stats = RateLimiterStats()
        self._gate = _Gate()
        """Final cards and intermediate updates take their turns one at a time, finals
        first, each kind in arrival order, and only where a window has room now."""

    @classmethod
    def for_capabilities(
        cls, store: Store, key: str, capabilities: Capabilities, *, clock: Clock | None = None
    ) -> RateLimiter:
        return cls(
            store,
            key,
            limits=capabilities.limits(),
            headroom=capabilities.rate_headroom,
            api_names=capabilities.api_names,
            op_calls=capabilities.op_calls,
            clock=clock,
        )

    def use_capabilities(self, capabilities: Capabilities) -> None:
        """Count calls under ``capabilities``' ``api_names`` and ``op_calls`` from the next
        reservation on (a platform switched the APIs it calls:
        :meth:`Platform.change_capabilities`). Slots already reserved stay where they
        were counted. The limits themselves do not change."""
        self.api_names = dict(capabilities.api_names)
        self.op_calls = dict(capabilities.op_calls)
        self._layouts.clear()

    def _per_op(self, op: Op) -> list[tuple[RateLimit, str]]:
        """The limits counting ``op``, with their key prefixes (cached: called per call)."""
        cached = self._op_limits.get(op)
        if cached is None:
            cached = self._op_limits[op] = [
                (limit, f"{self.key}:{index}:{limit.scope}:")
                for index, limit in enumerate(self.limits)
                if limit.counts(op)
            ]
        return cached

    def _windows(self, limit: RateLimit, key: str) -> list[tuple[str, int, float]]:
        """The windows a limit is kept in: the limit's own, and a tenth of it over a tenth
        of its length. A platform that counts calls in fixed windows (DingTalk's "calls in
        the current second") would see a whole window's worth granted at once, then sent a
        little late across its window's edge, land in the same window as the next ones:
        spreading each window's calls over its tenths bounds that to about the headroom.
        A call still goes at once while both have room."""
        allowed = limit.allowed(self.headroom)
        burst = max(1, -(-allowed // BURST_PARTS))
        if burst >= allowed or limit.window > SPREAD_UP_TO:
            # a long window (30 a minute to one member) is not spread: a lateness of a
            # fraction of a second is nothing to it, and spreading would delay a split
            # answer's parts by seconds
            return [(key, allowed, limit.window)]
        return [(key, allowed, limit.window), (key + "~", burst, limit.window / BURST_PARTS)]

    def _apis(self, op: Op) -> tuple[str, ...]:
        names = self.api_names.get(op, str(op))
        return (names,) if isinstance(names, str) else names

    def _applicable(self, scope: CallScope) -> list[tuple[RateLimit, str]]:
        """The limits counting one call, each with its window group's key, in the order
        :meth:`_plan` lists their windows and as often (read from the same :meth:`_layout`;
        for :meth:`carries` and :meth:`backoff`, off the hot path)."""
        layout = self._layout(scope.op)
        found: list[tuple[RateLimit, str]] = []
        for limit, (kind, key, _) in zip(layout.limits, layout.parts, strict=True):
            if kind is not None:
                ident = scope.ident(kind)
                if ident is None:
                    continue
                key += ident
            found.append((limit, key))
        # an operation making n calls takes n slots of each window (the store reserves a
        # window listed n times n times, at once)
        return found * layout.times

    def _layout(self, op: Op) -> _Layout:
        """The one description of the windows counting ``op``, which :meth:`_plan` (the hot
        path) and :meth:`_applicable` both read; cached (the limits, API names and call
        counts do not change between calls; :meth:`use_capabilities` clears it): the
        windows of every wide scope, complete; per narrow scope, its key prefix and window
        shapes; and each group's limit."""
        layout = self._layouts.get(op)
        if layout is not None:
            return layout
        parts: list[tuple[Scope | None, str, tuple[tuple[str, int, float], ...]]] = []
        limits: list[RateLimit] = []
        for limit, prefix in self._per_op(op):
            shapes = tuple(
                (suffix[len(_MARK) :], allowed, window)
                for suffix, allowed, window in self._windows(limit, _MARK)
            )
            if limit.scope is Scope.API:  # a window per API the operation calls
                for api in self._apis(op):
                    parts.append((None, prefix + api, shapes))
                    limits.append(limit)
            elif limit.scope is Scope.APP:
                parts.append((None, prefix + "app", shapes))
                limits.append(limit)
            else:  # keyed per call by its conversation, card or member
                parts.append((limit.scope, prefix, shapes))
                limits.append(limit)
        times = max(1, self.op_calls.get(op, 1))
        if all(scope is None for scope, _, _ in parts):
            windows = (
                tuple(
                    (key + suffix, allowed, window)
                    for _, key, shapes in parts
                    for suffix, allowed, window in shapes
                )
                * times
            )
            fixed: _Plan | None = ((), windows, tuple(dict.fromkeys(windows)))
        else:
            fixed = None
        layout = self._layouts[op] = _Layout(
            parts=tuple(parts), limits=tuple(limits), times=times, fixed=fixed
        )
        return layout

    def _plan(self, scope: CallScope) -> _Plan:
        """The windows of one call: its narrow ones (waited for first), all of them in the
        order :meth:`_applicable` lists them (each operation's call counted as often as it
        makes calls), and those distinct: :meth:`_windows` of each of :meth:`_applicable`,
        expanded from the cached :meth:`_layout` instead of built on every call."""
        layout = self._layout(scope.op)
        if layout.fixed is not None:
            return layout.fixed
        narrow: list[tuple[str, int, float]] = []
        windows: list[tuple[str, int, float]] = []
        for kind, key, shapes in layout.parts:
            if kind is not None:
                ident = scope.ident(kind)
                if ident is None:
                    continue
                key += ident
                for suffix, allowed, window in shapes:
                    narrow.append((key + suffix, allowed, window))
                    windows.append((key + suffix, allowed, window))
            else:
                for suffix, allowed, window in shapes:
                    windows.append((key + suffix, allowed, window))
        if layout.times > 1:
            narrow *= layout.times
            windows *= layout.times
        return narrow, windows, list(dict.fromkeys(windows))

    def carries(self, taken: CallScope, call: CallScope) -> bool:
        """Whether a turn taken for ``taken`` may carry ``call`` instead: only if it was
        counted in every window that counts ``call`` (as often). A turn of one API's window
        spent on a call of another would leave that call counted nowhere, and its API's
        window overfilled (Feishu: a card update's turn spent on the final card's close)."""
        if taken == call:
            return True
        have = Counter(key for _, key in self._applicable(taken))
        return Counter(key for _, key in self._applicable(call)) <= have

    async def acquire(
        self, scope: CallScope | None = None, *, priority: Priority = Priority.FIRST
    ) -> float:
        """Wait until one call may be sent; return how many seconds that took.

        First the call waits, without reserving, until its narrow windows (its
        conversation, card, member) have room, so a busy chat waits on its own and
        holds no turn of the app's. Then it reserves one slot in every window that
        counts it, narrow and wide, at one common time (the earliest at which all
        have room, in arrival order): the slot is recorded when the call is made,
        so no window ever holds more calls than it allows.

        ``priority`` (:class:`Priority`): ``FIRST`` calls (sends, an answer's first
        update) reserve ahead as described. ``FINAL`` and ``BACKGROUND`` calls (final
        cards, intermediate updates) queue in this limiter, one at a time, finals first
        and each kind in arrival order, and reserve a slot only once every window has
        room now; they never hold a slot ahead in time. So a ``FIRST`` call arriving
        while the windows are busy takes the next slot that frees instead of queueing
        behind every running answer's updates and finals. No window is ever exceeded
        either way.
        """
        narrow, windows, distinct = self._plan(scope or _NO_SCOPE)
        waited = 0.0
        for _ in range(100):  # bounded: each pass sleeps until the busiest has room
            if not narrow:
                break
            longest = await self.store.room_in_all(narrow)
            if longest <= 0:
                break
            await self.clock.sleep(longest)
            waited += longest
        if priority is Priority.FIRST:
            return await self._reserve(windows, waited)
        await self._gate.acquire(priority)
        try:
            waited += await self._room_now(distinct)
            return await self._reserve(windows, waited)
        finally:
            self._gate.release()

    async def _room_now(self, distinct: Sequence[tuple[str, int, float]]) -> float:
        """Sleep, reserving nothing, until every one of ``distinct`` (windows, each once)
        has room now (after any slot reserved ahead in them); return the seconds slept."""
        waited = 0.0
        for _ in range(1000):  # bounded: each pass sleeps until the busiest has room
            longest = await self.store.room_in_all(distinct)
            if longest <= 0:
                break
            await self.clock.sleep(longest)
            waited += longest
        return waited

    async def _reserve(self, windows: Sequence[tuple[str, int, float]], waited: float) -> float:
        for _ in range(LATE_RETRIES + 1):
            wait = await self.store.reserve_all(windows)
            if wait <= 0:
                break
            due = self.clock.now() + wait
            await self.clock.sleep(wait)
            waited += wait
            if self.clock.now() - due <= LATE_TOLERANCE:
                break
            # Woken late (a busy loop): sending now would put this call in a later window
            # than its slot, beside that window's own calls. Its slot is left unused (the
            # windows stay conservative) and a fresh one is taken.
            self.stats.late += 1
        self.stats.granted += 1
        self.stats.waited += waited
        return waited

    async def backoff(self, seconds: float, scope: CallScope | None = None) -> None:
        """The platform answered "rate limited": hold the call's wide scopes (app, API)
        back for ``seconds``, so every caller waits instead of being refused too."""
        self.stats.penalties += 1
        for limit, bucket in self._applicable(scope or CallScope()):
            if limit.scope not in _NARROW:
                await self.store.penalize(bucket, seconds=seconds)

    async def call(
        self,
        func: Callable[[], Awaitable[T]],
        *,
        scope: CallScope | None = None,
        policy: RetryPolicy | None = None,
        deadline: float | None = None,
        idempotent: bool = True,
        take_turn: Callable[[], Awaitable[object]] | None = None,
    ) -> T:
        """Make one platform call under this limiter with the one retry policy
        (:func:`~imrobots.retry.retry_call`). Past the deadline: ``TimeoutError``."""
        policy = policy or RetryPolicy()

        async def turn() -> object:
            return await self.acquire(scope)

        async def limited(exc: RateLimited) -> None:
            await self.backoff(exc.retry_after or policy.rate_limit_backoff, scope)

        return await retry_call(
            func,
            policy=policy,
            take_turn=take_turn or turn,
            on_rate_limited=limited,
            idempotent=idempotent,
            deadline=deadline,
            clock=self.clock,
        )

    def __repr__(self) -> str:
        return f"RateLimiter(key={self.key!r}, limits={len(self.limits)})"
