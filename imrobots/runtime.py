"""The runtime that runs one robot on one platform.

It receives events from the platform (already acknowledged), drops duplicates,
stale and rejected messages, keeps each conversation's answers in order, caps
how many answers run at once, and streams answers through the app-wide rate
limiter. Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import attrs

from .agents import AnswerSource, accumulate
from .feedback import FeedbackSigner, InvalidFeedback
from .models import CardAction, Feedback, Message
from .platform import CardRef, Platform
from .policy import AccessPolicy
from .ratelimit import RateLimiter
from .robot import Reply, Robot
from .store import ClaimResult, MemoryStore, Store
from .streaming import AnswerResult, AnswerStatus, AnswerStream, StreamPolicy

__all__ = ["RobotRuntime", "RuntimeOptions"]

log = logging.getLogger("imrobots.runtime")

T = TypeVar("T")
Strategy = Literal["queue", "concurrent", "drop", "debounce"]

_limiters: weakref.WeakValueDictionary[tuple[int, str], RateLimiter] = weakref.WeakValueDictionary()
"""Limiters shared by the runtimes of one store and platform app. An entry lives as long as
a runtime holds its limiter, and the limiter holds the store, so the store's id is not reused
meanwhile."""


@attrs.frozen(kw_only=True)
class RuntimeOptions:
    """How a robot takes in messages. Every field can be set in the robot's config."""

    strategy: Strategy = "queue"
    """Per conversation: ``queue`` (one answer at a time, in arrival order), ``concurrent``,
    ``drop`` (ignore messages while busy) or ``debounce`` (answer the last of a burst)."""
    interrupt: bool = False
    """With ``queue``: a newer message in the conversation cancels the running answer."""
    debounce: float = 1.5
    max_concurrent: int = 100
    """Answers running at once across the robot; more wait (backpressure)."""
    max_pending: int = 2000
    """Messages accepted but not finished; beyond this new ones are rejected as overloaded."""
    max_queue: int = 50
    """Messages waiting in one conversation."""
    stale_after: float | None = 600.0
    """Drop messages older than this many seconds (replays after a reconnect)."""
    dedupe_ttl: float = 86_400.0
    in_flight_ttl: float = 900.0
    history_limit: int = 20
    answer_ttl: float = 30 * 86_400.0
    """How long an answer is remembered for its feedback buttons."""
    stream: StreamPolicy | None = None
    """Streaming policy; ``None`` derives it from the platform's capabilities."""


@attrs.define
class _Lane:
    queue: deque[Message] = attrs.field(factory=deque)
    worker: asyncio.Task[None] | None = None
    current: asyncio.Task[None] | None = None
    current_message: Message | None = None
    last_arrival: float = 0.0

    def holds(self, message: Message) -> bool:
        """Whether a message with the same id is queued or being answered here."""
        if self.current_message is not None and self.current_message.id == message.id:
            return True
        return any(queued.id == message.id for queued in self.queue)


@attrs.define
class RuntimeStats:
    received: int = 0
    duplicates: int = 0
    rejected: int = 0
    answered: int = 0
    failed: int = 0
    feedback: int = 0
    forged: int = 0


async def _maybe_await(value: object) -> None:
    if inspect.isawaitable(value):
        await value


class RobotRuntime:
    """Runs one :class:`Robot` on one :class:`Platform`."""

    def __init__(
        self,
        *,
        name: str,
        robot: Robot,
        platform: Platform,
        store: Store | None = None,
        options: RuntimeOptions | None = None,
        policy: AccessPolicy | None = None,
        feedback_secret: str | bytes | None = None,
        hooks: Any = None,
        app_id: str | None = None,
    ) -> None:
        self.name = name
        self.robot = robot
        self.platform = platform
        self.store = store or MemoryStore()
        self.options = options or RuntimeOptions()
        self.policy = policy or AccessPolicy()
        self.signer = FeedbackSigner.from_secret(feedback_secret)
        self.hooks = hooks
        caps = platform.capabilities
        key = f"ratelimit:{platform.name}:{app_id or name}"
        limiter = _limiters.get((id(self.store), key))
        if limiter is None:
            limiter = RateLimiter(self.store, key, rate=caps.budget, burst=caps.burst)
            _limiters[(id(self.store), key)] = limiter
        self.limiter = limiter
        self.stats = RuntimeStats()
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._semaphore = asyncio.Semaphore(self.options.max_concurrent)
        self._pending = 0
        self._accepted = 0  # messages accepted and not finished (queued or being answered)
        self._idle = asyncio.Event()
        self._idle.set()
        self._started = False
        self._stopping = False
        robot.bind(self)

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Start the robot and connect the platform."""
        await self.robot.startup()
        self._started = True
        await self.platform.start(self.handle)
        log.info("robot %s is up on %s", self.name, self.platform.describe())

    async def stop(self, *, timeout: float = 10.0) -> None:
        """Stop taking messages, interrupt running answers (they end in an interrupted card),
        disconnect the platform and shut the robot down."""
        if self._stopping:
            return
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        await self.platform.close()
        if self._started:
            await self.robot.shutdown()
        if self.robot.agent is not None:
            await self.robot.agent.aclose()
        log.info("robot %s stopped", self.name)

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until every accepted message and button press has been handled."""
        async with asyncio.timeout(timeout):
            await self._idle.wait()

    # ----------------------------------------------------------------- hooks
    async def fire(self, hook: str, **kwargs: Any) -> None:
        """Call an event hook; implementations may be sync or async. Failures are logged."""
        caller = getattr(self.hooks, hook, None)
        if caller is None:
            return
        try:
            results = caller(**kwargs)
            for result in results:
                await _maybe_await(result)
        except Exception:
            log.exception("a %s hook failed", hook)

    # ----------------------------------------------------------------- inbound
    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        self._pending += 1
        self._idle.clear()
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._pending -= 1
        if self._pending == 0:
            self._idle.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("unexpected error in %s", self.name, exc_info=task.exception())

    async def handle(self, event: Message | CardAction) -> None:
        """The platform's sink: take an event and return at once; work happens in tasks."""
        if self._stopping:
            log.info("robot %s is stopping; ignoring %s", self.name, getattr(event, "id", "?"))
            return
        if isinstance(event, CardAction):
            self._spawn(self._handle_action(attrs.evolve(event, robot=self.name)))
        else:
            self.submit(attrs.evolve(event, robot=self.name))

    def _reject(self, message: Message, reason: str) -> None:
        self.stats.rejected += 1
        log.info("rejected message %s from %s: %s", message.id, message.sender.id, reason)
        self._spawn(self.fire("message_rejected", robot=self.name, message=message, reason=reason))

    def submit(self, message: Message) -> None:
        """Route a message to its conversation lane (synchronously, so arrival order holds)."""
        self.stats.received += 1
        opts = self.options
        if opts.stale_after is not None:
            age = (datetime.now(UTC) - message.time).total_seconds()
            if age > opts.stale_after:
                self._reject(message, f"stale ({age:.0f}s old)")
                return
        reason = self.policy.check(message)
        if reason is not None:
            self._reject(message, reason)
            return
        lane = self._lanes.get(message.conversation_key)
        if lane is not None and lane.holds(message):
            # A redelivery of a message waiting or being answered in its lane: drop it here,
            # before it can interrupt, supersede or be refused as "busy" in its original's
            # place. (Redeliveries from elsewhere are caught by the store's dedupe.)
            self.stats.duplicates += 1
            log.info("dropped duplicate message %s (queued)", message.id)
            return
        if self._accepted >= opts.max_pending:
            self._reject(message, "overloaded")
            return
        if opts.strategy == "concurrent":
            self._accepted += 1
            self._spawn(self._process(message)).add_done_callback(self._message_done)
            return
        if lane is None:
            lane = self._lanes[message.conversation_key] = _Lane()
        busy = lane.worker is not None and not lane.worker.done()
        if opts.strategy == "drop" and busy:
            self._reject(message, "busy answering an earlier message")
            return
        if opts.strategy == "debounce":
            for dropped in lane.queue:
                self._accepted -= 1
                self._reject(dropped, "superseded by a newer message")
            lane.queue.clear()
        elif len(lane.queue) >= opts.max_queue:
            self._reject(message, "conversation queue is full")
            return
        self._accepted += 1
        lane.queue.append(message)
        lane.last_arrival = time.monotonic()
        if opts.interrupt and lane.current is not None and not lane.current.done():
            lane.current.cancel()
        if not busy:
            lane.worker = self._spawn(self._run_lane(message.conversation_key, lane))

    async def _run_lane(self, key: str, lane: _Lane) -> None:
        try:
            while lane.queue:
                if self.options.strategy == "debounce":
                    # wait until no message arrived for `debounce` seconds
                    debounce = self.options.debounce
                    while (wait := lane.last_arrival + debounce - time.monotonic()) > 0:  # noqa: ASYNC110
                        await asyncio.sleep(wait)
                message = lane.queue.popleft()
                lane.current_message = message
                lane.current = asyncio.ensure_future(self._process(message))
                lane.current.add_done_callback(self._message_done)
                with contextlib.suppress(asyncio.CancelledError):
                    await lane.current  # cancelled by an interrupt or by stop()
                lane.current_message = None
                if self._stopping:
                    return
        finally:
            lane.current = None
            lane.current_message = None
            if not lane.queue and self._lanes.get(key) is lane:
                del self._lanes[key]

    def _message_done(self, _: asyncio.Future[None]) -> None:
        # a done callback, not a `finally`: it runs even for a task cancelled before it started
        self._accepted -= 1

    async def _process(self, message: Message) -> None:
        key = f"dedupe:{message.platform}:{message.id}"
        claim = await self.store.claim(key, in_flight_ttl=self.options.in_flight_ttl)
        if claim is not ClaimResult.CLAIMED:
            self.stats.duplicates += 1
            log.info("dropped duplicate message %s (%s)", message.id, claim.value)
            return
        await self.fire("message_received", robot=self.name, message=message)
        try:
            async with self._semaphore:
                await self.robot.on_message(message, Reply(self, message))
        except asyncio.CancelledError:
            await self.store.complete(key, done_ttl=self.options.dedupe_ttl)
            raise
        except Exception:
            self.stats.failed += 1
            log.exception("robot %s failed to handle message %s", self.name, message.id)
            await self.store.release(key)
            return
        self.stats.answered += 1
        await self.store.complete(key, done_ttl=self.options.dedupe_ttl)

    # ----------------------------------------------------------------- actions
    async def _handle_action(self, action: CardAction) -> None:
        key = f"action:{action.platform}:{action.id}"
        if await self.store.claim(key, in_flight_ttl=60.0) is not ClaimResult.CLAIMED:
            return
        try:
            if FeedbackSigner.looks_like_feedback(action.value):
                await self._handle_feedback(action)
            else:
                await self.robot.on_action(action)
        finally:
            await self.store.complete(key, done_ttl=self.options.dedupe_ttl)

    async def _handle_feedback(self, action: CardAction) -> None:
        try:
            token = self.signer.verify(action.value)
        except InvalidFeedback as exc:
            self.stats.forged += 1
            log.warning(
                "rejected feedback on card %s from %s: %s", action.card_id, action.sender.id, exc
            )
            return
        if token.robot != self.name:
            self.stats.forged += 1
            log.warning("rejected feedback for robot %r sent to %r", token.robot, self.name)
            return
        record: dict[str, Any] = {}
        raw = await self.store.get_value(f"answer:{self.name}:{token.message_id}")
        if raw is not None:
            record = json.loads(raw)
        feedback = Feedback(
            robot=self.name,
            platform=action.platform,
            message_id=token.message_id,
            rating=token.rating,
            sender=action.sender,
            question=record.get("question", ""),
            answer=record.get("answer", ""),
            conversation_id=record.get("conversation_id")
            or (action.conversation.id if action.conversation else None),
            card_id=action.card_id,
            time=action.time,
        )
        if not await self.store.add_feedback(feedback):
            log.info("feedback from %s on %s already recorded", action.sender.id, token.message_id)
            return
        self.stats.feedback += 1
        await self.fire("feedback_received", robot=self.name, feedback=feedback)
        await self.robot.on_feedback(feedback)

    # ----------------------------------------------------------------- outbound
    async def call(self, func: Callable[[], Awaitable[T]], *, deadline: float = 60.0) -> T:
        """Make one platform call under the rate limiter, retrying transient failures."""
        return await self.limiter.call(func, deadline=deadline)

    async def stream_answer(
        self,
        message: Message,
        source: AnswerSource,
        *,
        question: str | None = None,
        policy: StreamPolicy | None = None,
        feedback: bool = True,
    ) -> AnswerResult:
        """Stream ``source`` into a card answering ``message`` (see :meth:`Reply.stream`)."""

        async def on_final(result: AnswerResult, ref: CardRef | None) -> None:
            if result.status is AnswerStatus.FINAL:
                record = {
                    "question": question if question is not None else message.text,
                    "answer": result.text,
                    "conversation_id": message.conversation.id,
                }
                await self.store.put_value(
                    f"answer:{self.name}:{message.id}",
                    json.dumps(record, ensure_ascii=False),
                    ttl=self.options.answer_ttl,
                )
            await self.fire("reply_finished", robot=self.name, message=message, result=result)

        stream = AnswerStream(
            platform=self.platform,
            limiter=self.limiter,
            message=message,
            question=question,
            policy=policy or self.options.stream,
            feedback=(lambda: self.signer.values(self.name, message.id)) if feedback else None,
            on_final=on_final,
        )
        return await stream.run(accumulate(source))
