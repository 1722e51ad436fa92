"""Time for the engine: a :class:`Clock` it reads and sleeps on, injectable in tests.

:class:`SystemClock` is the loop's monotonic time. :class:`FakeClock` is virtual
time for tests: nothing waits on the wall clock; :meth:`FakeClock.advance` moves
time forward and fires what was due, in order.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock", "TimerHandle"]


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What the engine needs of time. Seconds everywhere."""

    def now(self) -> float:
        """Monotonic seconds."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle:
        """Run ``callback`` on the loop after ``delay`` seconds."""
        ...


class SystemClock:
    """Monotonic time (:func:`time.monotonic`), and the running loop's timers.

    Not ``loop.time()``: asyncio's is :func:`time.monotonic`, but uvloop's is read once
    per loop iteration, in milliseconds, so within a busy iteration it lags by as long as
    the iteration has run; a call granted a rate-limit slot "now" would be recorded
    earlier than it is sent. Timers take delays, so both clocks agree on them."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)


class _FakeTimer:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], object]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Virtual time for tests. Time stands still until :meth:`advance`.

    ``await clock.advance(5)`` fires every timer due within the next 5 seconds, in
    order, letting the loop run after each, and leaves :meth:`now` 5 seconds later.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle:
        timer = _FakeTimer(callback)
        when = self._now + max(0.0, delay)
        if delay > 0 and when <= self._now:
            # a delay below the float resolution of now: still later, as on a real loop
            # (else a caller that re-arms until time has moved would spin for ever)
            when = math.nextafter(self._now, math.inf)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        timer = self.call_later(seconds, wake)
        try:
            await future
        finally:
            timer.cancel()

    @property
    def next_timer(self) -> float | None:
        """When the earliest pending timer fires, if any."""
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    async def settle(self, rounds: int = 20) -> None:
        """Let the loop run until it has nothing ready (bounded by ``rounds`` passes)."""
        for _ in range(rounds):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing due timers in order."""
        end = self._now + seconds
        await self.settle()
        while (when := self.next_timer) is not None and when <= end:
            _, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, when)
            timer.callback()
            await self.settle()
        self._now = end
        await self.settle()
