"""The app-wide rate limiter shared by every answer of one platform app."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs

from .errors import RateLimited, RetryableError
from .store import Store

T = TypeVar("T")

__all__ = ["RateLimiter", "RateLimiterStats"]


@attrs.define
class RateLimiterStats:
    """Counters for benchmarks and status lines."""

    granted: int = 0
    waited: float = 0.0
    penalties: int = 0


class RateLimiter:
    """A token bucket in a :class:`Store`, so that every conversation (and, with a
    shared store, every replica) draws from the same budget.

    Reservations are granted in arrival order, so answers share the budget fairly
    and none starves; when the bucket is empty callers wait instead of calling
    the platform and being refused.
    """

    def __init__(self, store: Store, key: str, *, rate: float, burst: int) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.store = store
        self.key = key
        self.rate = rate
        self.burst = max(1, burst)
        self.stats = RateLimiterStats()

    async def acquire(self) -> float:
        """Wait until one request may be sent; return how many seconds that took."""
        wait = await self.store.reserve(self.key, rate=self.rate, burst=self.burst)
        self.stats.granted += 1
        if wait > 0:
            self.stats.waited += wait
            await asyncio.sleep(wait)
        return max(wait, 0.0)

    async def backoff(self, seconds: float) -> None:
        """The platform answered "rate limited": hold every caller back for ``seconds``."""
        self.stats.penalties += 1
        await self.store.penalize(self.key, seconds=seconds, rate=self.rate, burst=self.burst)

    async def call(
        self,
        func: Callable[[], Awaitable[T]],
        *,
        deadline: float,
        take_turn: Callable[[], Awaitable[object]] | None = None,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        rate_limit_backoff: float = 1.0,
    ) -> T:
        """Make one platform call under this limiter, retrying until ``deadline`` seconds pass.

        "Rate limited" holds the whole bucket back (by the platform's hint, else
        ``rate_limit_backoff``); transient failures are retried after an exponential
        ``backoff``; fatal errors propagate at once. Past the deadline: ``TimeoutError``.
        ``take_turn`` replaces :meth:`acquire` for callers that keep their own turns.
        """
        end = time.monotonic() + deadline
        delay = backoff
        while True:
            await (take_turn or self.acquire)()
            try:
                return await func()
            except RateLimited as exc:
                await self.backoff(exc.retry_after or rate_limit_backoff)
            except RetryableError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_backoff)
            if time.monotonic() > end:
                raise TimeoutError("platform call kept failing until its deadline")

    def __repr__(self) -> str:
        return f"RateLimiter(key={self.key!r}, rate={self.rate}, burst={self.burst})"
