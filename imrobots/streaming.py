"""The answer-streaming engine (hand-written: it is the project's own heart).

One :class:`AnswerStream` carries one answer through a small state machine::

    OPENING --(handle)--> STREAMING --(agent done)--> CLOSING --> DONE
       |                     |  ^                        |
       |                     v  |  lifetime / size       +--> card gone: a new card
       |                   ROTATING (renew, or close         +--> cards refused: a text message
       |                    and continue in a new card)      +--> nothing left: UNDELIVERED
       +--(refused)--> the answer is sent once, at the end, by the best means left

The agent's output is read as fast as it comes (into ``latest``); a separate
pump pushes the **latest** whole text to the plugin's :class:`StreamHandle`, so
a slow platform never builds a backlog of stale snapshots. Every platform call
takes its turn at the scoped :class:`~imrobots.ratelimit.RateLimiter` and goes
through the one :func:`~imrobots.retry.retry_call` policy with one idempotency
key per logical send. The final card is guaranteed: retried, then sent as a new
card if the stream is gone, then as a markdown message if cards are refused; an
answer delivered nowhere ends ``UNDELIVERED``, never "answered".
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

import attrs

from .cards import (
    THINKING_TEXT,
    Card,
    Markdown,
    Note,
    error_card,
    final_card,
    interrupted_card,
    streaming_card,
    thinking_card,
)
from .clock import Clock, SystemClock
from .errors import (
    CardGone,
    FatalPlatformError,
    NotSupported,
    OutcomeUnknown,
    PlatformError,
    RateLimited,
    Refused,
    RetryableError,
    UserCodeExit,
    classified,
)
from .models import FeedbackRating, Target
from .platform import (
    Capabilities,
    LifetimeRemedy,
    Op,
    Platform,
    SizeUnit,
    StreamHandle,
    StreamingMode,
    measure,
)
from .ratelimit import CallScope, Priority, RateLimiter
from .retry import RetryPolicy, retry_call

__all__ = [
    "AnswerResult",
    "AnswerStatus",
    "AnswerStream",
    "Degradation",
    "Delivery",
    "StreamPolicy",
    "split_text",
]

log = logging.getLogger("imrobots.streaming")

T = TypeVar("T")

CONTINUED_NOTE = "(continued below)"
SPARE_TURN_TTL = 0.02
"""Seconds a limiter turn taken but not used stays good for the next call of the answer."""
EMPTY_ANSWER = "Sorry, I have no answer to that."
AGENT_CANCEL_GRACE = 1.0
"""Seconds an async agent cancelled (past ``agent_timeout``, or its answer interrupted or
cut) has to end, its cleanup included, before the answer ends without it."""


def _resolver(future: asyncio.Future[None]) -> Callable[[], None]:
    """A callback that resolves ``future`` unless it is done already."""

    def resolve() -> None:
        if not future.done():
            future.set_result(None)

    return resolve


def _retrieve(task: asyncio.Task[None]) -> None:
    """Read a let-go reader's outcome when it ends at last, so none is reported unread."""
    if not task.cancelled():
        task.exception()


@attrs.frozen(kw_only=True)
class StreamPolicy:
    """When the pump sends an update, and how calls are retried.

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
    """Act this many seconds before the platform's stream lifetime ends (at the latest
    at half the lifetime)."""

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

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy these settings describe."""
        return RetryPolicy(
            backoff=self.retry_backoff,
            max_backoff=self.max_backoff,
            rate_limit_backoff=self.rate_limit_backoff,
            deadline=self.final_deadline,
        )


class AnswerStatus(enum.StrEnum):
    FINAL = "final"
    EMPTY = "empty"
    """The agent answered nothing (or only white space): a short card says so, no buttons."""
    ERROR = "error"
    INTERRUPTED = "interrupted"
    UNDELIVERED = "undelivered"
    """The answer reached the user by no means within ``final_deadline``."""


class Delivery(enum.StrEnum):
    """How the end of an answer reached the user."""

    STREAM = "stream"
    """The streaming card was closed with it."""
    CARD = "card"
    """A new card carried it."""
    TEXT = "text"
    """A markdown/text message carried it (cards refused or impossible)."""
    NONE = "none"


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
    delivery: Delivery = Delivery.STREAM
    degraded: bool = False
    """Whether the answer had to fall back from the platform's best means."""

    @property
    def delivered(self) -> bool:
        return self.status is not AnswerStatus.UNDELIVERED


def split_text(text: str, limit: int, unit: SizeUnit = SizeUnit.CHARACTERS) -> tuple[str, str]:
    """Cut ``text`` into a head of at most ``limit`` (in ``unit``) and the rest.

    The cut falls at a paragraph, line or word boundary in the second half of
    the window when there is one, and never inside a character (a UTF-8
    sequence is never broken). ``head + rest`` loses only the newlines at the cut.
    """
    if limit <= 0:
        raise ValueError("limit must be positive")
    if measure(text, unit) <= limit:
        return text, ""
    if unit is SizeUnit.BYTES:
        try:
            window = text.encode("utf-8")[:limit].decode("utf-8", "ignore")
        except UnicodeEncodeError:  # a lone surrogate: counted as measure() counts it
            window = _byte_window(text, limit)
    else:
        window = text[:limit]
    size = len(window)
    for separator in ("\n\n", "\n", " "):
        cut = window.rfind(separator)
        if cut > size // 2:
            return text[:cut], text[cut:].lstrip("\n")
    if size == 0:  # a single character larger than the limit: keep going, one character
        size = 1
    return text[:size], text[size:]


def _byte_window(text: str, limit: int) -> str:
    """The longest head of ``text`` of at most ``limit`` bytes as :func:`measure` counts
    them, character by character (for text holding a lone surrogate: rare)."""
    total = 0
    for index, char in enumerate(text):
        total += measure(char, SizeUnit.BYTES)
        if total > limit:
            return text[:index]
    return text


def body_text(card: Card) -> str:
    """What a card says, as a message: its markdown and notes, without its title (the
    user's own question), its buttons (which a message cannot carry) or the
    "(continued below)" note between parts."""
    parts = []
    for element in card.elements:
        text = element.text if isinstance(element, Markdown | Note) else ""
        if text.strip() and text != CONTINUED_NOTE:
            parts.append(text)
    return "\n\n".join(parts)


def split_all(text: str, limit: int | None, unit: SizeUnit) -> list[str]:
    """Every part of ``text`` cut with :func:`split_text`, in order (one part if no limit)."""
    if limit is None:
        return [text]
    parts = []
    while measure(text, unit) > limit:
        head, text = split_text(text, limit, unit)
        parts.append(head)
    parts.append(text)
    return parts


class Degradation:
    """What the platform refused lately, shared by the answers of one robot.

    After an app-wide :class:`Refused` for cards (no permission), later answers
    skip cards for ``hold`` seconds instead of failing each time.
    """

    def __init__(self, *, hold: float = 300.0, clock: Clock | None = None) -> None:
        self.hold = hold
        self.clock: Clock = clock or SystemClock()
        self._cards_until = float("-inf")
        self.refusals = 0

    def cards_refused(self) -> bool:
        return self.clock.now() < self._cards_until

    def refused(self, exc: Refused) -> None:
        self.refusals += 1
        if exc.app_wide:
            first = not self.cards_refused()
            self._cards_until = self.clock.now() + self.hold
            if first:
                log.error("the platform refuses cards for this app: %s", exc)


class AnswerStream:
    """Streams one answer to one target on one platform."""

    def __init__(
        self,
        *,
        platform: Platform,
        limiter: RateLimiter,
        target: Target,
        question: str = "",
        policy: StreamPolicy | None = None,
        feedback: Callable[[], Mapping[FeedbackRating, str]] | None = None,
        on_open: Callable[[AnswerStream, StreamHandle], Awaitable[None]] | None = None,
        on_final: Callable[[AnswerResult, StreamHandle | None], Awaitable[None]] | None = None,
        on_push: Callable[[AnswerStream], Awaitable[None]] | None = None,
        key: str | None = None,
        clock: Clock | None = None,
        degradation: Degradation | None = None,
    ) -> None:
        self.platform = platform
        self.capabilities = platform.capabilities
        self.limiter = limiter
        self.target = target
        self.question = question
        self.policy = policy or StreamPolicy.for_platform(self.capabilities)
        self.retry = self.policy.retry
        self.feedback = feedback
        self.on_open = on_open
        self.on_final = on_final
        self.on_push = on_push
        """Called after each update the platform took (the runtime records the text so far)."""
        self.key = key or uuid.uuid4().hex
        """The answer's idempotency key; every logical send derives its own from it."""
        self.clock: Clock = clock or SystemClock()
        self.degradation = degradation or Degradation(clock=self.clock)
        caps = self.capabilities
        self.mode = caps.streaming if caps.cards else StreamingMode.BUFFERED
        self.degraded = False
        if caps.cards and self.degradation.cards_refused():
            self.mode, self.degraded = StreamingMode.BUFFERED, True

        self.latest = ""
        self._offset = 0  # the current card shows latest[_offset:]
        self._sent_len = 0  # length of latest that the current card shows
        self._chunks_pending = 0
        self._first_text_at: float | None = None
        self._last_update_at: float | None = None
        self._last_push_at = 0.0
        self._updates_this_card = 0
        self._opened_at = 0.0
        self._done_flag = False
        self._wake = asyncio.Event()
        # The pump is woken by a chunk only when it waits for text (nothing pending), or
        # when a chars/chunks threshold is crossed: never per chunk while an update is not
        # due yet. That is most chunks of a fast agent.
        self._idle = True
        self._eager = self.policy.min_chars is not None or self.policy.min_chunks is not None
        self._handle: StreamHandle | None = None
        self._ref_ready = asyncio.Event()
        # The card and key of an open whose last outcome was unknown and that no attempt
        # has answered since: its card may exist (see _resolve_open).
        self._unresolved: tuple[Card, str] | None = None
        self._gone = False
        # A limiter turn taken but not used, when it was granted and for what: the next call
        # uses it if it comes at once and is counted in the same windows, else takes a fresh
        # turn (a slot of a sliding window is only good at its time and in its window: kept
        # turns used later, or by a call of another API, would overfill a window).
        self._spare: tuple[float, CallScope] | None = None
        self._sends = 0

        self.updates = 0
        self.cards = 0
        self.first_update_latency: float | None = None
        self.max_update_gap = 0.0
        self.final_card_id: str | None = None
        """The id of the last card :meth:`_deliver` sent anew (the stream's card was gone)."""

    # ------------------------------------------------------------------ public
    @property
    def handle(self) -> StreamHandle | None:
        return self._handle

    async def run(self, source: AsyncIterator[str]) -> AnswerResult:
        """Consume ``source`` (accumulated text) and carry the answer to its end.

        Cancellation ends the answer as interrupted, then re-raises.
        """
        opener: asyncio.Task[None] | None = None
        if self.mode is not StreamingMode.BUFFERED:
            opener = asyncio.create_task(self._open())
        pump = asyncio.create_task(self._pump())
        status = AnswerStatus.FINAL
        error: BaseException | None = None
        cancelled: asyncio.CancelledError | None = None
        try:
            # The agent is read in a task of its own. Each chunk then resumes only the
            # reader and the agent's own frames, not every frame between the handler's task
            # and here (the runtime's lane, the robot's handler, Reply.stream...): about
            # a dozen per chunk of every answer. What the agent raises is raised here; a
            # cancel of this task, or agent_timeout, cancels the reader.
            await self._until_read(asyncio.create_task(self._read(source)))
        except TimeoutError as exc:
            status, error = AnswerStatus.ERROR, exc
            log.warning("answer to %s timed out after %ss", self._what, self.policy.agent_timeout)
        except asyncio.CancelledError as exc:
            status, cancelled = AnswerStatus.INTERRUPTED, exc
        except Exception as exc:
            status, error = AnswerStatus.ERROR, exc
            log.exception("agent failed while answering %s", self._what)
        self._done_flag = True
        self._wake.set()

        # The end of the answer is delivered even when this task is cancelled (by an
        # interrupt or shutdown) while the agent was running or while the end is under way;
        # a further cancel stops waiting for it, but the delivery goes on.
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

    async def _read(self, source: AsyncIterator[str]) -> None:
        """Consume ``source`` into :meth:`_on_text` (the reader task's body)."""
        try:
            on_text = self._on_text
            async for text in source:
                on_text(text)
        except SystemExit as exc:  # out of this task it would stop the event loop
            raise UserCodeExit(exc) from exc
        finally:
            close = getattr(source, "aclose", None)
            if close is not None:
                await close()  # an agent left early runs its cleanup now
            # Done, before this task ends: a pump woken by the last text must see it, or
            # it would push that text as an update of its own before the final card.
            self._done_flag = True
            self._wake.set()

    async def _until_read(self, reader: asyncio.Task[None]) -> None:
        """Wait for the reader task to end; raise what the agent raised.

        Past ``policy.agent_timeout``, or when this task is cancelled, the reader is
        cancelled and given :data:`AGENT_CANCEL_GRACE` seconds to end (its cleanup runs);
        an agent that ignores the cancel is then let go, as a blocked sync agent's thread
        is, and the answer ends without it.

        :raises TimeoutError: the agent ran past ``agent_timeout``."""
        expired = asyncio.get_running_loop().create_future()
        timer = None
        if self.policy.agent_timeout is not None:
            timer = self.clock.call_later(self.policy.agent_timeout, _resolver(expired))
        try:
            # waiting on a set, not on the task: a cancel of this task stops this wait
            # only, and the reader is cancelled here, with a bound on its cleanup
            await asyncio.wait((reader, expired), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            with contextlib.suppress(asyncio.CancelledError):  # a second cancel: go on
                await self._let_go(reader)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            expired.cancel()
        if not reader.done():
            await self._let_go(reader)
            raise TimeoutError(f"the agent ran past agent_timeout ({self.policy.agent_timeout}s)")
        reader.result()

    async def _let_go(self, reader: asyncio.Task[None]) -> None:
        """Cancel the reader and wait up to :data:`AGENT_CANCEL_GRACE` seconds for it."""
        reader.cancel()
        grace = asyncio.get_running_loop().create_future()
        timer = self.clock.call_later(AGENT_CANCEL_GRACE, _resolver(grace))
        try:
            await asyncio.wait((reader, grace), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            grace.cancel()
        if not reader.done():
            log.warning(
                "the agent answering %s ignored its cancellation for %ss: left running, "
                "the answer ends without it",
                self._what,
                AGENT_CANCEL_GRACE,
            )
            reader.add_done_callback(_retrieve)
        elif not reader.cancelled() and reader.exception() is not None:
            log.debug("the agent answering %s failed while stopping", self._what)

    @property
    def _what(self) -> str:
        return self.target.reply_to or self.target.key

    # ------------------------------------------------------------------ agent side
    def _agent_done(self) -> bool:
        return self._done_flag

    def _on_text(self, text: str) -> None:
        if self._first_text_at is None:
            self._first_text_at = self.clock.now()
        self.latest = text
        self._chunks_pending += 1
        if self._idle or (self._eager and self._threshold_crossed()):
            self._wake.set()

    def _threshold_crossed(self) -> bool:
        p = self.policy
        return (p.min_chars is not None and len(self.latest) - self._sent_len >= p.min_chars) or (
            p.min_chunks is not None and self._chunks_pending >= p.min_chunks
        )

    # ------------------------------------------------------------------ calls
    def _next_key(self, kind: str) -> str:
        """A new idempotency key for one logical send (reused on each of its retries)."""
        self._sends += 1
        return self.key if self._sends == 1 and kind == "open" else f"{self.key}-{self._sends}"

    def _scope(self, op: Op) -> CallScope:
        handle = self._handle
        user = self.target.user
        return CallScope(
            op=op,
            conversation=self.target.key,
            card=handle.ref.id if handle is not None else None,
            member=user.id if user is not None else None,
        )

    async def _take_turn(self, op: Op, *, background: bool = False) -> float:
        """Wait for this answer's turn at the limiter (or use one it kept); return the
        seconds waited. ``background``: an intermediate update, which yields to first
        updates and final cards; a close yields to first updates (:class:`Priority`)."""
        spare, self._spare = self._spare, None
        scope = self._scope(op)
        if (
            spare is not None
            and self.clock.now() - spare[0] <= SPARE_TURN_TTL
            and self.limiter.carries(spare[1], scope)  # a turn of another API's: not this
        ):
            return 0.0
        priority = (
            Priority.BACKGROUND
            if background
            else Priority.FINAL
            if op is Op.CLOSE
            else Priority.FIRST
        )
        return await self.limiter.acquire(scope, priority=priority)

    def _keep_turn(self, op: Op) -> None:
        """Keep the turn just taken for ``op`` for this answer's next call."""
        self._spare = (self.clock.now(), self._scope(op))

    async def _retrying(
        self,
        op: Op,
        func: Callable[[], Awaitable[T]],
        *,
        deadline: float | None = None,
        give_up: Callable[[], bool] | None = None,
    ) -> T:
        """One logical call under the limiter and the one retry policy."""

        async def turn() -> object:
            return await self._take_turn(op)

        async def limited(exc: RateLimited) -> None:
            await self.limiter.backoff(
                exc.retry_after or self.retry.rate_limit_backoff, self._scope(op)
            )

        return await retry_call(
            func,
            policy=self.retry,
            take_turn=turn,
            on_rate_limited=limited,
            idempotent=op in self.capabilities.idempotent,
            give_up=give_up,
            deadline=deadline,
            clock=self.clock,
        )

    # ------------------------------------------------------------------ opening
    async def _open(self) -> None:
        card = thinking_card(self.question)
        key = self._next_key("open")
        try:
            waited = await self._take_turn(Op.OPEN)
            if waited > 0 and self._agent_done():
                # The answer was completed while this turn was queued behind others:
                # the final card takes the turn, as a new message, instead of a
                # thinking card that it would overwrite at once.
                self._keep_turn(Op.OPEN)
                return
            self._keep_turn(Op.OPEN)  # the first attempt uses the turn just taken
            handle = await self._retrying(
                Op.OPEN, self._open_call(card, key), give_up=self._agent_done
            )
        except Refused as exc:
            self._refused(exc)
            return
        except OutcomeUnknown:
            log.warning(
                "the thinking card for %s may or may not have been sent (no answer, and "
                "the platform cannot repeat it safely); the answer follows as a new message",
                self._what,
            )
            return
        except TimeoutError as exc:
            # retried until the answer was done (or the deadline): the final card follows
            # as a new card, or closes the card of an attempt whose outcome was unknown
            # (_resolve_open); the cause was logged where it happened
            log.warning("could not open the answer card for %s in time (%s)", self._what, exc)
            return
        except PlatformError as exc:  # classified by the plugin: one line, no traceback
            log.warning(
                "could not open the answer card for %s: %s; the final card follows",
                self._what,
                classified(exc),
            )
            return
        finally:
            self._ref_ready.set()
        await self._opened(handle)

    def _open_call(self, card: Card, key: str) -> Callable[[], Awaitable[StreamHandle]]:
        """One attempt at opening ``card`` under ``key``. An attempt whose outcome is
        unknown leaves the open unresolved (its card may exist) until one answers."""

        async def attempt() -> StreamHandle:
            try:
                handle = await self.platform.open_stream(self.target, card, key=key)
            except OutcomeUnknown:
                self._unresolved = (card, key)
                raise
            self._unresolved = None
            return handle

        return attempt

    async def _resolve_open(self) -> None:
        """An open that ended unresolved (its outcome unknown, then retries failing until
        the agent was done or the deadline) may have made a card. Where opens are
        idempotent, open it again under the same key, within ``final_deadline``: the
        platform continues that card (or makes the one card), and the end of the answer
        closes it, instead of leaving it stuck beside a second card."""
        unresolved, self._unresolved = self._unresolved, None
        if unresolved is None or Op.OPEN not in self.capabilities.idempotent:
            return
        card, key = unresolved
        try:
            handle = await self._retrying(Op.OPEN, self._open_call(card, key))
        except (PlatformError, NotSupported, TimeoutError) as exc:
            log.warning(
                "the card of %s may exist but could not be reached (%s); the answer follows "
                "as a new message",
                self._what,
                exc,
            )
            return
        await self._opened(handle)

    async def _opened(self, handle: StreamHandle) -> None:
        self._handle = handle
        self._gone = False
        self.cards += 1
        self._opened_at = self._last_push_at = self.clock.now()
        self._updates_this_card = 0
        if self.on_open is not None:
            try:
                await self.on_open(self, handle)
            except Exception:
                log.exception("recording the open answer %s failed", self._what)

    def _refused(self, exc: Refused) -> None:
        log.warning("cards refused for %s (%s); the answer goes as a message", self._what, exc)
        self.degradation.refused(exc)
        self.degraded = True

    # ------------------------------------------------------------------ pump
    def _due_in(self, now: float) -> float:
        """Seconds until an update may fire (0 = now), given pending text."""
        if self._last_update_at is None:
            return 0.0  # the first text goes out at once
        since = now - self._last_update_at
        gap = max(0.0, self.policy.min_gap - since)
        if self._threshold_crossed():
            return gap
        return max(gap, self.policy.min_interval - since)

    async def _wait_wake(self, timeout: float | None) -> None:
        """Sleep until text, the end of the agent, or ``timeout`` seconds. The timeout is
        one timer that sets the wake event (cheaper than a cancelling timeout context,
        and the pump re-reads its state after any wake anyway)."""
        self._wake.clear()
        if timeout is None:
            await self._wake.wait()
            return
        timer = self.clock.call_later(timeout, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()

    def _lifetime_left(self, now: float) -> float | None:
        """Seconds until the current stream must be renewed or rotated, if it has a lifetime
        (also while it still shows "thinking": an agent slower than the lifetime must not
        leave an expired card behind)."""
        lifetime = self.capabilities.stream_lifetime
        if lifetime is None:
            return None
        act_at = lifetime - self._margin()
        return self._opened_at + act_at - now

    def _keep_alive_left(self, now: float) -> float | None:
        caps = self.capabilities
        if caps.lifetime_remedy is not LifetimeRemedy.KEEP_ALIVE or caps.keep_alive is None:
            return None
        return self._last_push_at + caps.keep_alive - now

    def _too_big(self) -> bool:
        limit = self.capabilities.max_text
        if limit is None:
            return False
        return measure(self.latest[self._offset :], self.capabilities.text_unit) > limit

    async def _pump(self) -> None:
        if self.mode is StreamingMode.BUFFERED:
            return
        await self._ref_ready.wait()
        backoff = 0
        while not self._agent_done():
            if self._handle is None or self._gone:
                return
            now = self.clock.now()
            left = self._lifetime_left(now)
            if self._too_big() or (left is not None and left <= 0):
                if not (left is not None and left <= 0 and await self._renewed()):
                    await self._rotate()
                continue
            keep_alive = self._keep_alive_left(now)
            cap = self.policy.max_updates
            fresh = len(self.latest) > self._sent_len and (
                cap is None or self._updates_this_card < cap - 1
            )
            if not fresh and not (keep_alive is not None and keep_alive <= 0):
                # Nothing new to show, or the card keeps its last update for the final card:
                # wait for text, or until the stream needs renewing or a keep-alive.
                timers = [t for t in (left, keep_alive) if t is not None]
                self._idle = True
                await self._wait_wake(min(timers) if timers else None)
                self._idle = False
                continue
            if fresh and (due := self._due_in(now)) > 0:
                self._idle = False
                await self._wait_wake(due if keep_alive is None else min(due, keep_alive))
                continue
            # the first visible update goes ahead of running answers' later updates (they
            # coalesce: whatever waits shows the text so far when its turn comes)
            await self._take_turn(Op.PUSH, background=self.first_update_latency is not None)
            if self._agent_done():
                self._keep_turn(Op.PUSH)  # the final card uses it, if it comes at once
                return
            text = self._clip(self.latest[self._offset :])
            shown = self._offset + len(text)
            try:
                # a keep-alive before any text keeps showing "thinking", never a blank card
                await self._handle.push(text or THINKING_TEXT)
            except RateLimited as exc:
                await self.limiter.backoff(
                    exc.retry_after or self.retry.rate_limit_backoff, self._scope(Op.PUSH)
                )
                continue  # the backlog folds into the next update
            except CardGone:
                self._gone = True
                return
            except RetryableError as exc:  # OutcomeUnknown too: the next push repeats it whole
                backoff += 1
                await self._wait_wake(exc.retry_after or self.retry.delay(backoff))
                continue
            except (FatalPlatformError, NotSupported) as exc:
                log.warning(
                    "card update failed for %s: %s; waiting for the final card",
                    self._what,
                    classified(exc),
                )
                return
            backoff = 0
            self._record_update(shown)
            if self.on_push is not None:
                try:
                    await self.on_push(self)
                except Exception:
                    log.exception("recording the progress of %s failed", self._what)

    def _clip(self, text: str) -> str:
        """The part of ``text`` one card can hold (the rest goes to the next card)."""
        limit = self.capabilities.max_text
        return split_text(text, limit, self.capabilities.text_unit)[0] if limit else text

    def _record_update(self, shown: int) -> None:
        now = self.clock.now()
        reference = (
            self._last_update_at if self._last_update_at is not None else self._first_text_at
        )
        if reference is not None:
            self.max_update_gap = max(self.max_update_gap, now - reference)
        if self.first_update_latency is None and self._first_text_at is not None:
            self.first_update_latency = now - self._first_text_at
        self._last_update_at = self._last_push_at = now
        self._sent_len = shown
        self._chunks_pending = 0
        self._updates_this_card += 1
        self.updates += 1

    # ------------------------------------------------------------------ lifetime
    async def _renewed(self) -> bool:
        """Extend the stream where the platform can; False if it cannot (then rotate)."""
        handle = self._handle
        if handle is None or self.capabilities.lifetime_remedy is not LifetimeRemedy.RENEW:
            return False
        try:
            # half the margin for renewing, so that the other half is left to close the
            # card and continue in a new one if renewing keeps failing
            await self._retrying(Op.RENEW, handle.renew, deadline=self._margin() / 2)
        except (PlatformError, NotSupported, TimeoutError) as exc:
            log.warning(
                "could not renew the stream of %s (%s); continuing in a new card", self._what, exc
            )
            return False
        self._opened_at = self.clock.now()
        return True

    def _margin(self) -> float:
        """Seconds before the end of a stream's lifetime at which it is renewed or rotated."""
        lifetime = self.capabilities.stream_lifetime or 0.0
        return min(self.policy.lifetime_margin, lifetime / 2)

    async def _rotate(self) -> None:
        """Close the current card with the text so far and continue in a new card.

        The close is tried only while the card can still take it (until the end of its
        lifetime). If it cannot be closed, the card keeps what it last showed and the next
        card continues from there: no text is shown twice.
        """
        limit = self.capabilities.max_text
        unit = self.capabilities.text_unit
        body = self.latest[self._offset :]
        head = split_text(body, limit, unit)[0] if limit else body
        # a card closed before any text keeps its "thinking" line, never a blank body
        shown = Markdown(text=head or THINKING_TEXT)
        closing = Card(title=self.question, elements=(shown, Note(text=CONTINUED_NOTE)))
        handle = self._handle
        closed = False
        if handle is not None and not self._gone:
            lifetime = self.capabilities.stream_lifetime
            left = self._opened_at + lifetime - self.clock.now() if lifetime is not None else None
            close = handle.close
            try:
                await self._retrying(
                    Op.CLOSE,
                    lambda: close(closing),
                    deadline=max(0.5, left) if left is not None else None,
                )
                closed = True
            except OutcomeUnknown:
                closed = True  # a close cannot be repeated safely: taken as done
            except (PlatformError, NotSupported, TimeoutError) as exc:
                log.warning(
                    "could not close the card of %s before it expired (%s); it keeps what it "
                    "showed and the answer continues in a new card",
                    self._what,
                    exc,
                )
        # The closed card is done with: from here on the answer lives in the next card
        # (if opening it fails, the final card is sent as a new message).
        self._handle = None
        if closed:
            self._offset += len(head)
        else:
            self._offset = max(self._offset, self._sent_len)
        while self._offset < len(self.latest) and self.latest[self._offset] == "\n":
            self._offset += 1
        rest = self._clip(self.latest[self._offset :])
        opening = streaming_card(self.question, rest) if rest else thinking_card(self.question)
        key = self._next_key("open")
        handle = await self._retrying(Op.OPEN, self._open_call(opening, key))
        await self._opened(handle)
        self._sent_len = self._offset + len(rest)

    # ------------------------------------------------------------------ final
    def _final_cards(self, status: AnswerStatus, error: BaseException | None) -> list[Card]:
        """The cards that end the answer: the text the current card does not show yet,
        split to the platform's size limit, the last card being final, error or interrupted."""
        caps = self.capabilities
        parts = split_all(self.latest[self._offset :], caps.max_text, caps.text_unit)
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
        elif status is AnswerStatus.EMPTY:
            cards.append(final_card(self.question, EMPTY_ANSWER, feedback=None))
        else:
            feedback = self.feedback() if self.feedback else None
            cards.append(final_card(self.question, last, feedback=feedback))
        return cards

    async def _deliver(self, card: Card, *, use_handle: bool) -> Delivery:
        """Put ``card`` in front of the user by the best means left: close the stream with
        it, else a new card, else a markdown message. Raises when every means failed."""
        handle = self._handle
        if use_handle and handle is not None and not self._gone:
            try:
                await self._retrying(Op.CLOSE, lambda: handle.close(card))
                return Delivery.STREAM
            except CardGone:
                self._gone = True
            except OutcomeUnknown:
                return Delivery.STREAM  # a close cannot be repeated safely: taken as done
            except Refused as exc:
                self._refused(exc)
            except (FatalPlatformError, NotSupported, TimeoutError) as exc:
                log.warning(
                    "closing the card of %s failed (%s); sending a new message", self._what, exc
                )
                self._gone = True
        if self.capabilities.cards and not self.degraded:
            key = self._next_key("card")
            try:
                ref = await self._retrying(
                    Op.SEND_CARD, lambda: self.platform.send_card(self.target, card, key=key)
                )
                self.final_card_id = ref.id
                self.cards += 1
                return Delivery.CARD
            except OutcomeUnknown:
                return Delivery.CARD
            except Refused as exc:
                self._refused(exc)
            except (FatalPlatformError, NotSupported) as exc:
                log.warning(
                    "sending a card for %s failed (%s); sending markdown instead", self._what, exc
                )
        await self._send_text(body_text(card))
        return Delivery.TEXT

    async def _send_text(self, text: str) -> None:
        caps = self.capabilities
        for part in split_all(text, caps.max_message_text, caps.text_unit):
            key = self._next_key("text")
            try:
                await self._retrying(
                    Op.SEND_TEXT,
                    lambda part=part, key=key: self.platform.send_text(  # type: ignore[misc]
                        self.target, part, markdown=True, key=key
                    ),
                )
            except OutcomeUnknown:
                continue  # not repeatable safely: taken as delivered

    async def _finish(
        self,
        status: AnswerStatus,
        error: BaseException | None,
        opener: asyncio.Task[None] | None,
        pump: asyncio.Task[None],
    ) -> AnswerResult:
        # Whatever happened to the pump or the opener, the end of the answer goes out.
        for helper in (pump, opener):
            if helper is None:
                continue
            try:
                await helper
            except Exception as exc:
                line = classified(exc)
                if line is None:
                    log.exception("streaming %s failed; sending the final card", self._what)
                else:
                    log.warning("streaming %s failed: %s; sending the final card", self._what, line)
        if status is AnswerStatus.FINAL and not self.latest.strip():
            status = AnswerStatus.EMPTY
        cards = self._final_cards(status, error)
        delivery = Delivery.NONE
        try:
            if self._handle is None and not self.degraded:
                await self._resolve_open()
            if self._handle is None and (self.degraded or not self.capabilities.cards):
                # No card to close and none to send: the whole end of the answer as one
                # text, split only at the platform's message size (no card's pieces).
                await self._send_text("\n\n".join(filter(None, map(body_text, cards))))
                delivery = Delivery.TEXT
            for index, card in enumerate(cards if delivery is Delivery.NONE else ()):
                got = await self._deliver(card, use_handle=index == 0)
                if index == len(cards) - 1:
                    delivery = got
        except (PlatformError, NotSupported, TimeoutError) as exc:
            # classified refusals and the deadline: expected, one line without traceback
            log.error(
                "could not deliver the answer to %s by any means: %s",
                self._what,
                classified(exc) or f"timed out ({exc or 'deadline reached'})",
            )
            delivery = Delivery.NONE
        result = AnswerResult(
            status=status if delivery is not Delivery.NONE else AnswerStatus.UNDELIVERED,
            text=self.latest,
            updates=self.updates,
            cards=self.cards,
            error=error,
            first_update_latency=self.first_update_latency,
            max_update_gap=self.max_update_gap,
            delivery=delivery,
            degraded=self.degraded or delivery is Delivery.TEXT,
        )
        if self.on_final is not None:
            await self.on_final(result, self._handle)
        return result
