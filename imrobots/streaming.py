"""The answer-streaming engine.

One :class:`AnswerStream` carries one answer through its lifecycle:

    thinking card -> throttled updates -> final card with feedback buttons
                                       -> or an error / interrupted card

The agent's output is read as fast as it comes (into ``latest``); a separate
pump sends card updates that always carry the **latest** text, so a slow
platform never builds a backlog of stale snapshots. Every platform call first
takes a token from the app-wide :class:`~imrobots.ratelimit.RateLimiter`. The
final card is guaranteed: it is retried under backoff and, if the card is gone,
sent as a new message.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

import attrs

from .cards import (
    Card,
    Markdown,
    Note,
    error_card,
    final_card,
    interrupted_card,
    streaming_card,
    thinking_card,
)
from .errors import CardGone, FatalPlatformError, PlatformError, RateLimited, RetryableError
from .models import FeedbackRating, Message
from .platform import Capabilities, CardRef, Platform, StreamingMode
from .ratelimit import RateLimiter

__all__ = ["AnswerResult", "AnswerStatus", "AnswerStream", "StreamPolicy", "split_text"]

log = logging.getLogger("imrobots.streaming")

T = TypeVar("T")

CONTINUED_NOTE = "(continued below)"
TRUNCATED_NOTE = "(answer truncated: too long for one card)"


@attrs.frozen(kw_only=True)
class StreamPolicy:
    """When the pump sends an update.

    An update fires when there is new text and either ``min_interval`` seconds
    passed since the last update, or ``min_chars`` new characters or
    ``min_chunks`` new chunks are pending (never sooner than ``min_gap``). The
    first text is sent as soon as it arrives. ``max_updates`` caps the updates
    of one card, the final one included, so the last is always kept for it.
    """

    min_interval: float = 1.0
    min_chars: int | None = None
    min_chunks: int | None = None
    min_gap: float = 0.0
    max_updates: int | None = None
    agent_timeout: float | None = 300.0
    """Seconds an answer may take before it ends in an error card."""
    final_deadline: float = 120.0
    """Seconds the final update is retried for before giving up (and logging)."""
    retry_backoff: float = 0.5
    """First backoff after a failed call; doubles up to ``max_backoff``."""
    max_backoff: float = 10.0
    rate_limit_backoff: float = 1.0
    """Backoff after "rate limited" when the platform gives no reset hint."""
    lifetime_margin: float = 30.0
    """Rotate a streaming card this many seconds before the platform's stream lifetime."""

    @classmethod
    def seed(cls) -> StreamPolicy:
        """The seed tutorial's policy: every 2 s or 5 chunks, at most 20 updates per card."""
        return cls(min_interval=2.0, min_chunks=5, max_updates=20)

    @classmethod
    def for_platform(cls, capabilities: Capabilities) -> StreamPolicy:
        """Defaults derived from what the platform declares."""
        return cls(
            min_interval=capabilities.update_interval,
            min_gap=capabilities.update_interval / 4,
            max_updates=capabilities.max_updates,
        )


class AnswerStatus(enum.StrEnum):
    FINAL = "final"
    ERROR = "error"
    INTERRUPTED = "interrupted"
    UNDELIVERED = "undelivered"
    """The final card could not be delivered within ``final_deadline``."""


@attrs.frozen(kw_only=True)
class AnswerResult:
    """How an answer ended."""

    status: AnswerStatus
    text: str
    updates: int
    """Card updates sent while streaming (not counting the thinking and final cards)."""
    cards: int
    """Cards used (more than one after rotation or splitting)."""
    error: BaseException | None = attrs.field(default=None, repr=False)
    first_update_latency: float | None = None
    """Seconds from the agent's first text to the first update carrying text."""
    max_update_gap: float = 0.0
    """Longest wait between two updates (or from first text to first update)."""


def split_text(text: str, limit: int) -> tuple[str, str]:
    """Cut ``text`` at a paragraph or line boundary at most ``limit`` characters in."""
    if len(text) <= limit:
        return text, ""
    window = text[:limit]
    for separator in ("\n\n", "\n", " "):
        cut = window.rfind(separator)
        if cut > limit // 2:
            return text[:cut], text[cut:].lstrip("\n")
    return window, text[limit:]


class AnswerStream:
    """Streams one answer into a card on one platform."""

    def __init__(
        self,
        *,
        platform: Platform,
        limiter: RateLimiter,
        message: Message,
        question: str | None = None,
        policy: StreamPolicy | None = None,
        feedback: Callable[[], Mapping[FeedbackRating, str]] | None = None,
        on_final: Callable[[AnswerResult, CardRef | None], Awaitable[None]] | None = None,
    ) -> None:
        self.platform = platform
        self.capabilities = platform.capabilities
        self.limiter = limiter
        self.message = message
        self.question = question if question is not None else message.text
        self.policy = policy or StreamPolicy.for_platform(self.capabilities)
        self.feedback = feedback
        self.on_final = on_final
        self.mode = (
            self.capabilities.streaming if self.capabilities.cards else StreamingMode.BUFFERED
        )

        self.latest = ""
        self._offset = 0  # the current card shows latest[_offset:]
        self._sent_len = 0  # length of latest that the current card shows
        self._chunks_pending = 0
        self._first_text_at: float | None = None
        self._last_update_at: float | None = None
        self._updates_this_card = 0
        self._card_opened_at = 0.0
        self._done_flag = False
        self._wake = asyncio.Event()
        self._ref: CardRef | None = None
        self._ref_ready = asyncio.Event()
        self._card_gone = False
        self._spare_token = False  # a limiter turn taken but not used; the next call uses it

        self.updates = 0
        self.cards = 0
        self.first_update_latency: float | None = None
        self.max_update_gap = 0.0

    # ------------------------------------------------------------------ public
    @property
    def card(self) -> CardRef | None:
        return self._ref

    async def run(self, source: AsyncIterator[str]) -> AnswerResult:
        """Consume ``source`` (accumulated text) and carry the card to its final state.

        Cancellation finalizes the card as interrupted, then re-raises.
        """
        opener: asyncio.Task[None] | None = None
        if self.mode is not StreamingMode.BUFFERED:
            opener = asyncio.create_task(self._open_card())
        pump = asyncio.create_task(self._pump())
        status = AnswerStatus.FINAL
        error: BaseException | None = None
        cancelled: asyncio.CancelledError | None = None
        try:
            async with asyncio.timeout(self.policy.agent_timeout):
                async for text in source:
                    self._on_text(text)
        except TimeoutError as exc:
            status, error = AnswerStatus.ERROR, exc
            log.warning(
                "answer to %s timed out after %ss", self.message.id, self.policy.agent_timeout
            )
        except asyncio.CancelledError as exc:
            status, cancelled = AnswerStatus.INTERRUPTED, exc
        except Exception as exc:
            status, error = AnswerStatus.ERROR, exc
            log.exception("agent failed while answering %s", self.message.id)
        self._done_flag = True
        self._wake.set()

        # The final card is delivered even when this task is cancelled (by an interrupt or
        # shutdown) while the agent was running or while the final is under way; a further
        # cancel stops waiting for it, but the delivery goes on.
        finish = asyncio.create_task(self._finish(status, error, opener, pump))
        try:
            result = await asyncio.shield(finish)
        except asyncio.CancelledError:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(finish)
            raise
        if cancelled is not None:
            raise cancelled
        return result

    # ------------------------------------------------------------------ agent side
    def _agent_done(self) -> bool:
        return self._done_flag

    def _on_text(self, text: str) -> None:
        if self._first_text_at is None:
            self._first_text_at = time.monotonic()
        self.latest = text
        self._chunks_pending += 1
        self._wake.set()

    # ------------------------------------------------------------------ calls
    async def _take_turn(self) -> float:
        """Wait for this answer's turn at the app-wide limiter (or use one it kept);
        return the seconds waited."""
        if self._spare_token:
            self._spare_token = False
            return 0.0
        return await self.limiter.acquire()

    async def _call(self, func: Callable[[], Awaitable[T]]) -> T:
        """One platform call under the app-wide limiter; rate-limit answers back off the bucket."""
        await self._take_turn()
        try:
            return await func()
        except RateLimited as exc:
            await self.limiter.backoff(exc.retry_after or self.policy.rate_limit_backoff)
            raise

    async def _open_card(self) -> None:
        card = thinking_card(self.question)
        delay = self.policy.retry_backoff
        deadline = time.monotonic() + self.policy.final_deadline
        try:
            while True:
                waited = await self._take_turn()
                if waited > 0 and self._agent_done():
                    # The answer was completed while this turn was queued behind others:
                    # the final card takes the turn, as a new message, instead of a
                    # thinking card that it would overwrite at once.
                    self._spare_token = True
                    return
                try:
                    try:
                        self._ref = await self.platform.send_card(self.message, card)
                    except RateLimited as exc:
                        await self.limiter.backoff(
                            exc.retry_after or self.policy.rate_limit_backoff
                        )
                        raise
                    self.cards += 1
                    self._card_opened_at = time.monotonic()
                    return
                except RetryableError as exc:
                    if self._agent_done() or time.monotonic() > deadline:
                        return  # the final card will be sent as a new message
                    if not isinstance(exc, RateLimited):
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, self.policy.max_backoff)
                except PlatformError:
                    log.exception("could not send the thinking card for %s", self.message.id)
                    return
        finally:
            self._ref_ready.set()

    # ------------------------------------------------------------------ pump
    def _due_in(self, now: float) -> float:
        """Seconds until an update may fire (0 = now), given pending text."""
        if self._last_update_at is None:
            return 0.0  # the first text goes out at once
        since = now - self._last_update_at
        gap = max(0.0, self.policy.min_gap - since)
        pending_chars = len(self.latest) - self._sent_len
        if (self.policy.min_chars is not None and pending_chars >= self.policy.min_chars) or (
            self.policy.min_chunks is not None and self._chunks_pending >= self.policy.min_chunks
        ):
            return gap
        return max(gap, self.policy.min_interval - since)

    async def _wait_wake(self, timeout: float | None) -> None:
        self._wake.clear()
        if timeout is None:
            await self._wake.wait()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    async def _pump(self) -> None:
        if self.mode is StreamingMode.BUFFERED:
            return
        await self._ref_ready.wait()
        backoff = self.policy.retry_backoff
        while not self._agent_done():
            if self._ref is None or self._card_gone:
                return
            now = time.monotonic()
            if self._needs_rotation(now):
                await self._rotate()
                continue
            cap = self.policy.max_updates
            if len(self.latest) <= self._sent_len or (
                cap is not None and self._updates_this_card >= cap - 1
            ):
                # Nothing new to show, or the card keeps its last update for the final
                # card: wait for text, or until the card must be rotated before it expires.
                await self._wait_wake(self._until_rotation(now))
                continue
            due = self._due_in(now)
            if due > 0:
                await self._wait_wake(due)
                continue
            await self._take_turn()
            if self._agent_done():
                self._spare_token = True  # the final card uses this turn
                return
            text = self._clip(self.latest[self._offset :])
            shown = self._offset + len(text)
            try:
                await self._send_shown(text)
            except RateLimited as exc:
                await self.limiter.backoff(exc.retry_after or self.policy.rate_limit_backoff)
                continue  # the backlog folds into the next update
            except CardGone:
                self._card_gone = True
                return
            except RetryableError:
                await self._wait_wake(backoff)
                backoff = min(backoff * 2, self.policy.max_backoff)
                continue
            except FatalPlatformError:
                log.exception(
                    "card update failed for %s; waiting for the final card", self.message.id
                )
                return
            backoff = self.policy.retry_backoff
            self._record_update(shown)

    def _clip(self, text: str) -> str:
        """The part of ``text`` one card can hold (the rest goes to the next card)."""
        limit = self.capabilities.max_text
        return split_text(text, limit)[0] if limit is not None else text

    async def _send_shown(self, text: str) -> None:
        """Send ``text`` without taking a token (the pump took it already)."""
        ref = self._ref
        assert ref is not None
        if self.mode is StreamingMode.NATIVE:
            await self.platform.stream_update(ref, text)
        else:
            await self.platform.update_card(ref, streaming_card(self.question, text))

    def _record_update(self, shown: int) -> None:
        now = time.monotonic()
        reference = (
            self._last_update_at if self._last_update_at is not None else self._first_text_at
        )
        if reference is not None:
            self.max_update_gap = max(self.max_update_gap, now - reference)
        if self.first_update_latency is None and self._first_text_at is not None:
            self.first_update_latency = now - self._first_text_at
        self._last_update_at = now
        self._sent_len = shown
        self._chunks_pending = 0
        self._updates_this_card += 1
        self.updates += 1

    def _needs_rotation(self, now: float) -> bool:
        """Whether the current card must be closed and the answer continued in a new one:
        its text outgrew ``max_text``, or it nears its stream lifetime (if it shows text)."""
        limit = self.capabilities.max_text
        if limit is not None and len(self.latest) - self._offset > limit:
            return True
        until = self._until_rotation(now)
        return until is not None and until <= 0

    def _until_rotation(self, now: float) -> float | None:
        """Seconds until the current card reaches its rotation time, if it has one."""
        lifetime = self.capabilities.stream_lifetime
        if lifetime is None or len(self.latest) <= self._offset:
            return None  # no lifetime, or nothing to close the card with
        rotate_at = max(lifetime - self.policy.lifetime_margin, lifetime / 2)
        return self._card_opened_at + rotate_at - now

    async def _rotate(self) -> None:
        """Close the current card with the text so far and continue in a new card."""
        ref = self._ref
        assert ref is not None
        limit = self.capabilities.max_text
        body = self.latest[self._offset :]
        head, _ = split_text(body, limit) if limit is not None else (body, "")
        closing = Card(
            title=self.question,
            elements=(Markdown(text=head), Note(text=CONTINUED_NOTE)),
        )
        await self._deliver(closing, ref)
        # The closed card is done with: from here on the answer lives in the next card
        # (if opening it fails, the final card is sent as a new message).
        self._ref = None
        self._card_gone = False
        self._offset += len(head)
        while self._offset < len(self.latest) and self.latest[self._offset] == "\n":
            self._offset += 1
        rest = self._clip(self.latest[self._offset :])
        opening = streaming_card(self.question, rest or "...")
        self._ref = await self._retrying(lambda: self.platform.send_card(self.message, opening))
        self.cards += 1
        self._card_opened_at = time.monotonic()
        self._updates_this_card = 0
        self._sent_len = self._offset + len(rest)

    async def _retrying(self, func: Callable[[], Awaitable[T]]) -> T:
        """Retry a call under backoff until it succeeds or ``final_deadline`` passes."""
        p = self.policy
        return await self.limiter.call(
            func,
            deadline=p.final_deadline,
            take_turn=self._take_turn,
            backoff=p.retry_backoff,
            max_backoff=p.max_backoff,
            rate_limit_backoff=p.rate_limit_backoff,
        )

    # ------------------------------------------------------------------ final
    def _final_cards(self, status: AnswerStatus, error: BaseException | None) -> list[Card]:
        """The cards that end the answer: the text the current card does not show yet,
        split to the platform's size limit, the last card being final, error or interrupted."""
        text = self.latest[self._offset :]
        parts: list[str] = []
        limit = self.capabilities.max_text
        while limit is not None and len(text) > limit:
            head, text = split_text(text, limit)
            parts.append(head)
        parts.append(text)
        cards = [
            Card(title=self.question, elements=(Markdown(text=p), Note(text=CONTINUED_NOTE)))
            for p in parts[:-1]
        ]
        last = parts[-1]
        if status is AnswerStatus.INTERRUPTED:
            cards.append(interrupted_card(self.question, last))
        elif status is AnswerStatus.ERROR:
            reason = (
                "Sorry, the answer took too long and was stopped."
                if isinstance(error, TimeoutError)
                else "Sorry, something went wrong while answering. Please try again."
            )
            cards.append(error_card(self.question, last, reason=reason))
        else:
            feedback = self.feedback() if self.feedback else None
            cards.append(final_card(self.question, last or "(no answer)", feedback=feedback))
        return cards

    async def _deliver(self, card: Card, ref: CardRef | None) -> CardRef | None:
        """Put ``card`` into ``ref`` (or a new message if there is none or it is gone)."""
        deadline = time.monotonic() + self.policy.final_deadline
        delay = self.policy.retry_backoff
        target = ref
        while True:
            try:
                if target is not None and not self._card_gone:
                    await self._call(lambda: self.platform.update_card(target, card))
                    return target
                if self.capabilities.cards:
                    new = await self._call(lambda: self.platform.send_card(self.message, card))
                    self.cards += 1
                    return new
                await self._call(
                    lambda: self.platform.send_text(self.message, card.plain_text(), markdown=True)
                )
                return None
            except RateLimited:
                pass
            except CardGone:
                self._card_gone = True
                continue
            except RetryableError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.policy.max_backoff)
            except FatalPlatformError:
                if target is not None and not self._card_gone:
                    log.warning("final update of %s failed; sending a new message", self.message.id)
                    self._card_gone = True
                    continue
                raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"final card for {self.message.id} not delivered in time")

    async def _finish(
        self,
        status: AnswerStatus,
        error: BaseException | None,
        opener: asyncio.Task[None] | None,
        pump: asyncio.Task[None],
    ) -> AnswerResult:
        # Whatever happened to the pump or the opener, the final card goes out.
        for helper in (pump, opener):
            if helper is None:
                continue
            try:
                await helper
            except Exception:
                log.exception("streaming %s failed; sending the final card", self.message.id)
        cards = self._final_cards(status, error)
        ref = self._ref
        delivered = True
        try:
            for index, card in enumerate(cards):
                ref = await self._deliver(card, ref if index == 0 else None)
        except (PlatformError, TimeoutError):
            log.exception("could not deliver the final card for %s", self.message.id)
            delivered = False
        result = AnswerResult(
            status=status if delivered else AnswerStatus.UNDELIVERED,
            text=self.latest,
            updates=self.updates,
            cards=self.cards,
            error=error,
            first_update_latency=self.first_update_latency,
            max_update_gap=self.max_update_gap,
        )
        if self.on_final is not None:
            await self.on_final(result, ref)
        return result
