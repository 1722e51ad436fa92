"""The app-wide rate limiter shared by every answer of one platform app."""

from __future__ import annotations

import asyncio

import attrs

from .store import Store

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

    def __repr__(self) -> str:
        return f"RateLimiter(key={self.key!r}, rate={self.rate}, burst={self.burst})"
