"""The one retry policy every platform call of the core goes through.

Exponential backoff with jitter, the platform's reset hint when it gives one,
and a deadline. Rate-limit answers hold the limiter's scopes back (so every
caller waits, not just this one); :class:`~imrobots.errors.OutcomeUnknown` is
retried only for idempotent operations, because only then does a retry with
the same key never act twice.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs

from .clock import Clock, SystemClock
from .errors import OutcomeUnknown, RateLimited, RetryableError
from .health import call_observer

__all__ = ["RetryPolicy", "retry_call"]

T = TypeVar("T")


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How a failing platform call is retried. Seconds everywhere."""

    backoff: float = 0.5
    """First wait after a transient failure."""
    max_backoff: float = 10.0
    """Longest wait between two attempts."""
    multiplier: float = 2.0
    jitter: float = 0.2
    """Each wait is multiplied by a random factor in ``[1 - jitter, 1 + jitter]``."""
    rate_limit_backoff: float = 1.0
    """How long "rate limited" holds the limiter back when the platform gives no hint."""
    deadline: float = 120.0
    """Seconds after the first attempt past which no new attempt starts."""

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_backoff, self.backoff * self.multiplier ** max(0, attempt - 1))
        if self.jitter:
            base *= random.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        return max(0.0, base)


async def retry_call(
    func: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    take_turn: Callable[[], Awaitable[object]] | None = None,
    on_rate_limited: Callable[[RateLimited], Awaitable[object]] | None = None,
    idempotent: bool = True,
    give_up: Callable[[], bool] | None = None,
    deadline: float | None = None,
    clock: Clock | None = None,
) -> T:
    """Call ``func`` until it succeeds, under ``policy``.

    Before each attempt ``take_turn`` waits for the rate limiter. A
    :class:`RateLimited` answer calls ``on_rate_limited`` (which holds the
    limiter back) and tries again at the next turn; other
    :class:`RetryableError`\\ s wait the backoff (or the error's ``retry_after``).
    :class:`OutcomeUnknown` is re-raised at once unless ``idempotent`` (then it
    is repeated, even past ``give_up``). Fatal errors propagate at once. When
    ``give_up()`` turns true, or ``deadline``
    (default ``policy.deadline``) seconds have passed, the last error is raised
    as :class:`TimeoutError` (from it).
    """
    clock = clock or SystemClock()
    end = clock.now() + (policy.deadline if deadline is None else deadline)
    observer = call_observer()
    attempt = 0
    while True:
        if take_turn is not None:
            await take_turn()
        attempt += 1
        if attempt > 1 and observer is not None:
            observer.call_retried()
        try:
            return await func()
        except RateLimited as exc:
            if observer is not None:
                observer.call_rate_limited()
                observer.call_failed()
            last: RetryableError = exc
            if on_rate_limited is not None:
                await on_rate_limited(exc)
            elif exc.retry_after:
                await clock.sleep(exc.retry_after)
        except OutcomeUnknown as exc:
            if observer is not None:
                observer.call_failed()
            if not idempotent:
                raise
            last = exc
            await clock.sleep(policy.delay(attempt))
        except RetryableError as exc:
            if observer is not None:
                observer.call_failed()
            last = exc
            await clock.sleep(exc.retry_after or policy.delay(attempt))
        except Exception:
            if observer is not None:
                observer.call_failed()
            raise
        # After an outcome-unknown attempt the call may have taken effect: it is repeated
        # (same key) whatever give_up says. A later attempt that fails (busy, rate
        # limited) lets give_up apply again; the caller then still holds an unknown
        # outcome (the streaming engine opens again under the same key at the end).
        gave_up = give_up is not None and not isinstance(last, OutcomeUnknown) and give_up()
        if gave_up or clock.now() > end:
            raise TimeoutError(f"platform call kept failing until its deadline: {last}") from last
