"""The runtime that runs one robot on one platform.

It receives events from the platform (already acknowledged), drops duplicates,
stale and rejected messages, keeps each conversation's answers in order, caps
how many answers run at once, and streams answers through the scoped rate
limiter. Blocking agent code runs in a bounded thread pool of the runtime's
own, sized ``max_concurrent``. Open answers are recorded in the store, so a
restart closes what a crash left open (as interrupted, with the text so far).
Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import inspect
import json
import logging
import math
import os
import socket
import time
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import attrs
import cattrs
import cattrs.gen

from .agents import AnswerSource, accumulate, agent_executor, use_executor
from .agents import _executor as _executor_var
from .cards import error_card, interrupted_card
from .clock import Clock, SystemClock
from .environment import GC_TUNING, env_flag
from .errors import PlatformError, UserCodeExit, classified
from .feedback import FeedbackSigner, InvalidFeedback
from .health import Histogram, observing_calls
from .models import (
    Attachment,
    CardAction,
    ChatEntered,
    ConversationKind,
    Feedback,
    FeedbackRating,
    Message,
    Target,
)
from .payloads import dumps
from .platform import Capabilities, Op, Platform, Scope, StreamHandle
from .policy import AccessPolicy
from .ratelimit import CallScope, RateLimiter
from .robot import (
    ActionReply,
    AgentAnswer,
    HandlerTally,
    Reply,
    Robot,
    current_tally,
)
from .robot import _tally as _tally_var
from .secret import redact_text
from .store import ClaimResult, MemoryStore, Store, StoreUnavailable
from .streaming import (
    AnswerResult,
    AnswerStatus,
    AnswerStream,
    Degradation,
    StreamPolicy,
    body_text,
)

_targets = cattrs.Converter()

_messages = cattrs.Converter()
"""Messages as JSON-able dicts, for the inbox records of a shared store (attachments
without their downloader: the runtime that answers binds its own)."""
_messages.register_unstructure_hook(datetime, lambda value: value.isoformat())
_messages.register_structure_hook(datetime, lambda value, _: datetime.fromisoformat(value))
_messages.register_unstructure_hook(
    Attachment,
    cattrs.gen.make_dict_unstructure_fn(
        Attachment, _messages, downloader=cattrs.gen.override(omit=True)
    ),
)
_messages.register_structure_hook(
    Attachment,
    cattrs.gen.make_dict_structure_fn(
        Attachment, _messages, downloader=cattrs.gen.override(omit=True)
    ),
)

_SEPARATOR = "\x1f"
"""Between a message id and its replica in a turn queue's members."""

__all__ = ["RobotRuntime", "RuntimeOptions", "default_concurrency", "tune_gc"]

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
    max_concurrent: int | None = None
    """Answers running at once across the robot; more wait (backpressure). ``None``
    (the default) derives it from the platform: a minute of its app-wide call budget,
    between 256 and 4,096 (:func:`default_concurrency`). Answers in flight mostly wait
    (for the agent, for their turn at the limiter), so the cap bounds memory, not speed."""
    max_pending: int = 10_000
    """Messages accepted but not finished; beyond this new ones are rejected as overloaded."""
    max_queue: int = 50
    """Messages waiting in one conversation."""
    stale_after: float | None = 600.0
    """Drop messages older than this many seconds (replays after a reconnect)."""
    dedupe_ttl: float = 86_400.0
    in_flight_ttl: float = 900.0
    handler_timeout: float | None = 600.0
    """Seconds one handler (``on_message``, ``on_action``, ``on_enter_chat``) may run
    before it is cut: its answer ends as interrupted (or an error card is shown when it
    had sent nothing), the message counts failed, and the conversation's next message is
    answered. ``None``: no limit. Keep it above the stream's ``agent_timeout`` (300 s)."""
    history_limit: int = 20
    """Turns of conversation history kept per conversation for the agent."""
    history_ttl: float = 86_400.0
    """Seconds a conversation's history is kept after its last turn."""
    answer_ttl: float = 30 * 86_400.0
    """How long an answer is remembered for its feedback buttons."""
    stream: StreamPolicy | None = None
    """Streaming policy; ``None`` derives it from the platform's capabilities."""
    liveness_ttl: float = 30.0
    """Seconds a runtime's "alive" lease in the store lasts (renewed every third of it).
    Answers whose runtime's lease lapsed (a crash, a killed replica) are closed as
    interrupted by any runtime of the robot: at its start and every ``liveness_ttl``."""
    replica: str | None = None
    """A stable name for this process among the robot's replicas (e.g. ``worker-1``): a
    restarted process with the same name closes the answers it left open at once, instead
    of after its old lease lapses. Default: a name unique to the process. Two live
    processes must never share one."""
    turn_grace: float = 0.3
    """On a store shared by replicas: seconds after a message was sent (the platform's
    time) before its answer may start, so that the conversation's earlier messages, which
    the platform may have handed to other replicas, take their turns first. A message
    older than this starts at once."""
    refusal_hold: float = 300.0
    """Seconds answers skip cards after the platform refused cards app-wide (no permission)."""


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
    """What one robot did since it started (``/metrics`` serves these; the runtime logs a
    summary when it stops). It is also the robot's :class:`~imrobots.health.CallObserver`."""

    received: int = 0
    duplicates: int = 0
    rejected: int = 0
    answered: int = 0
    """Messages whose answer reached the user."""
    failed: int = 0
    """Messages whose handling raised or timed out, or whose answer reached the user by
    no means."""
    handler_timeouts: int = 0
    """Handlers cut by ``handler_timeout``."""
    unanswered: int = 0
    """Messages whose handler returned without sending anything (not counted answered)."""
    interrupted: int = 0
    """Messages whose handling was cut by :meth:`RobotRuntime.stop` (or, with
    ``interrupt``, by a newer message of the conversation), and those still waiting their
    turn when the runtime stopped. Once it stopped, ``received + adopted`` is ``answered
    + failed + unanswered + interrupted + rejected + duplicates``."""
    degraded: int = 0
    """Answers delivered by a lesser means (a text message instead of a card)."""
    recovered: int = 0
    """Answers a crash left open, closed as interrupted at start."""
    adopted: int = 0
    """Messages another replica had taken in and not answered when it died, answered here
    (a shared store)."""
    feedback: int = 0
    forged: int = 0
    """Feedback presses rejected: forged, altered, or replayed on another card or chat."""
    card_updates: int = 0
    """Card updates sent while streaming answers."""
    rate_limited: int = 0
    """Platform calls the platform answered "rate limited"."""
    retries: int = 0
    """Platform call attempts that repeated a failed one."""
    call_errors: int = 0
    """Platform call attempts that failed (rate-limited ones included)."""
    answer_latency: Histogram = attrs.field(factory=Histogram)
    """Seconds from a message's arrival to the end of its handling, for answered ones."""
    first_update_latency: Histogram = attrs.field(factory=Histogram)
    """Seconds from an agent's first text to the first card update showing it."""

    def call_rate_limited(self) -> None:
        self.rate_limited += 1

    def call_failed(self) -> None:
        self.call_errors += 1

    def call_retried(self) -> None:
        self.retries += 1


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
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self.robot = robot
        self.platform = platform
        self.store = store or MemoryStore()
        self.options = options or RuntimeOptions()
        self.policy = policy or AccessPolicy()
        self._feedback_secret = feedback_secret
        self.signer = FeedbackSigner.from_secret(feedback_secret)
        """Replaced at :meth:`start` by the key from config or the store (see feedback)."""
        self.hooks = hooks
        self.app_id = app_id or name
        self.clock: Clock = clock or SystemClock()
        self.degradation = Degradation(hold=self.options.refusal_hold, clock=self.clock)
        key = f"ratelimit:{platform.name}:{self.app_id}"
        limiter = _limiters.get((id(self.store), key))
        if limiter is None:
            limiter = RateLimiter.for_capabilities(
                self.store, key, platform.capabilities, clock=self.clock
            )
            _limiters[(id(self.store), key)] = limiter
        # a platform that switches the APIs it calls (Platform.change_capabilities) tells
        # the limiter, which counts calls under the new names from then on
        platform.watch_capabilities(limiter.use_capabilities)
        self.limiter = limiter
        self.max_concurrent = self.options.max_concurrent or default_concurrency(
            platform.capabilities
        )
        """The cap on answers running at once (``options.max_concurrent`` or derived)."""
        self.executor = agent_executor(self.max_concurrent)
        """The bounded thread pool blocking agent code runs in."""
        self.owner = (
            self.options.replica or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        )
        """Who answers here: open answers are recorded under it, and its lease says it lives."""
        self._process_mark = uuid.uuid4().hex
        """This process's own mark under its replica name (see :meth:`_keep_alive`)."""
        self._marked = False
        self._shared_name_reported = False
        self._watcher: asyncio.Task[None] | None = None
        self._recovered = False
        """Whether the pass of :meth:`recover_open_answers` at start is done."""
        self._adopted: set[str] = set()
        """Ids of the messages adopted from a replica now gone, not yet answered."""
        self._inbox: set[str] = set()
        """Ids of the messages whose inbox records this runtime wrote and still waits on."""
        self._suspects: dict[str, float] = {}
        """Replicas seen without their lease, and since when (see :meth:`_owner_gone`)."""
        self._open: dict[str, bool] = {}
        """The open-answer records of answers running in this runtime."""
        self.stats = RuntimeStats()
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._semaphore = asyncio.Semaphore(self.max_concurrent)
        self._pending = 0
        self._accepted = 0  # messages accepted and not finished (queued or being answered)
        self._idle = asyncio.Event()
        self._idle.set()
        self._arrivals: dict[str, float] = {}
        """When each accepted message arrived (monotonic), for the answer latency."""
        self._started = False
        self._stopping = False
        self._dedupe_prefix = self._key("dedupe", "")
        self._deadlines = _Deadlines(self.options.handler_timeout)
        """The time limits of running message handlers (``options.handler_timeout``)."""
        robot.bind(self)

    # ----------------------------------------------------------------- lifecycle
    @property
    def history_limit(self) -> int:
        return self.options.history_limit

    @property
    def history_ttl(self) -> float:
        return self.options.history_ttl

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping

    def _key(self, kind: str, ident: str) -> str:
        """A store key scoped by robot, platform and app."""
        return f"{kind}:{self.name}:{self.platform.name}:{self.app_id}:{ident}"

    async def start(self) -> None:
        """Start the robot and connect the platform; then close the answers a crash left open."""
        self.signer = await FeedbackSigner.for_robot(self.store, self.name, self._feedback_secret)
        await self.robot.startup()
        self._started = True
        await self.platform.start(self.handle)
        connection = self.platform.connection_status
        if not connection.reported:  # a plugin that does not report: up once started
            connection.connected()
        tune_gc()
        log.info("robot %s is up on %s", self.name, self.describe())
        await self._keep_alive()
        await asyncio.get_running_loop().create_task(
            self.recover_open_answers(), context=observing_calls(self.stats)
        )
        self._watcher = asyncio.get_running_loop().create_task(
            self._watch(), name=f"imrobots-watch-{self.name}", context=observing_calls(self.stats)
        )

    def describe(self) -> str:
        """The platform's description with secrets in any URL redacted (for logs)."""
        return redact_text(self.platform.describe())

    async def stop(self, *, timeout: float = 10.0) -> None:
        """Stop taking messages, interrupt running answers (they end in an interrupted card),
        disconnect the platform and shut the robot down."""
        if self._stopping:
            return
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        # Threads still running blocking agent code are not waited for (they are daemon
        # threads: the process may exit while they block).
        self.executor.shutdown(wait=False, cancel_futures=True)
        await self.platform.close()
        self.platform.connection_status.closed()
        if self._started:
            await self.robot.shutdown()
        if self.robot.agent is not None:
            await self.robot.agent.aclose()
        if self._marked:  # never leased (stopped while starting): nothing to release, and
            # the store may be what kept it from starting (a Redis retried for 10 s)
            await self.store.release_lock(self._alive_key(self.owner), self.owner)
        log.info("robot %s on %s stopped: %s", self.name, self.platform.name, self.summary())

    def summary(self) -> str:
        """One line of what this robot did, the faults it met included (logged at stop)."""
        s = self.stats
        return (
            f"{s.received} received, {s.answered} answered, {s.failed} failed, "
            f"{s.unanswered} unanswered, {s.interrupted} interrupted, {s.rejected} rejected, "
            f"{self.platform.connection_status.rejections} inbound requests rejected "
            f"(forged or malformed), {s.duplicates} deduplicated, "
            f"{s.feedback} feedback "
            f"({s.forged} rejected), {s.handler_timeouts} handler timeouts; platform faults: "
            f"{s.rate_limited} rate-limited responses, {s.retries} retries, "
            f"{s.call_errors} failed calls, {self.platform.connection_status.reconnects} reconnects"
        )

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until every accepted message and button press has been handled."""
        async with asyncio.timeout(timeout):
            await self._idle.wait()

    # ----------------------------------------------------------------- hooks
    async def fire(self, hook: str, **kwargs: Any) -> None:
        """Call an event hook; implementations may be sync or async. Each plugin's
        implementation is called (and awaited) on its own, in pluggy's order, so that one
        that raises is logged, naming its plugin, and the others still run (called
        together, pluggy stopped at the first exception, and the coroutines of async
        implementations after a failing one were never awaited)."""
        caller = getattr(self.hooks, hook, None)
        if caller is None:
            return
        get_impls = getattr(caller, "get_hookimpls", None)
        impls = get_impls() if get_impls is not None else None
        if impls is None or any(i.hookwrapper or i.wrapper for i in impls):
            try:
                for result in caller(**kwargs):
                    await _maybe_await(result)
            except Exception:
                log.exception("a %s hook failed", hook)
            return
        for impl in reversed(impls):  # pluggy calls the last registered first
            try:
                await _maybe_await(impl.function(*(kwargs[name] for name in impl.argnames)))
            except Exception:
                log.exception("the %s hook of plugin %r failed", hook, impl.plugin_name)

    # ----------------------------------------------------------------- inbound
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        # Each task runs in a context where this robot observes its platform calls.
        task = asyncio.get_running_loop().create_task(coro, context=observing_calls(self.stats))
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

    async def handle(self, event: Message | CardAction | ChatEntered) -> None:
        """The platform's sink: take an event and return at once; work happens in tasks."""
        if self._stopping:
            log.info("robot %s is stopping; ignoring %s", self.name, getattr(event, "id", "?"))
            return
        if isinstance(event, CardAction):
            self._spawn(self._handle_action(attrs.evolve(event, robot=self.name)))
        elif isinstance(event, ChatEntered):
            self._spawn(self._handle_entered(attrs.evolve(event, robot=self.name)))
        else:
            self.submit(self._bind(event))

    def _bind(self, message: Message) -> Message:
        """Name the robot, and let the message's attachments download through the platform.

        A message the platform made without a robot's name and without attachments (what
        nearly every push is) gets the name set on itself, once: it is the platform's
        fresh object, handed to this runtime alone, and stays frozen to everyone else (a
        copy per message cost about 5 % of its intake CPU). Any other message is copied
        with the changes (a message named for another robot keeps its name)."""
        changes: dict[str, Any] = {}
        if self.platform.capabilities.downloads:
            download = self.platform.download
            if message.attachments:
                changes["attachments"] = _bind_all(message.attachments, download)
            if message.quote is not None and message.quote.attachments:
                changes["quote"] = attrs.evolve(
                    message.quote, attachments=_bind_all(message.quote.attachments, download)
                )
        robot = message.robot
        if not changes:
            if robot is None:
                object.__setattr__(message, "robot", self.name)
                return message
            if robot == self.name:
                return message
        changes["robot"] = self.name
        return attrs.evolve(message, **changes)

    def _reject(self, message: Message, reason: str) -> None:
        self.stats.rejected += 1
        log.info("rejected message %s from %s: %s", message.id, message.sender.id, reason)
        self._spawn(self.fire("message_rejected", robot=self.name, message=message, reason=reason))

    def submit(self, message: Message, *, adopted: bool = False) -> None:
        """Route a message to its conversation lane (synchronously, so arrival order holds).
        ``adopted``: a message another replica received (counted in ``stats.adopted``, not
        again in ``stats.received``)."""
        if not adopted:
            self.stats.received += 1
        arrived = time.monotonic()
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
        key = message.conversation_key
        lane = self._lanes.get(key)
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
        if opts.strategy == "concurrent" or (
            self.store.shared and opts.strategy == "queue" and not opts.interrupt
        ):
            # (On a shared store, "queue" is kept by the store's turn queue of the
            # conversation, for the messages of every replica: each message waits there, its
            # inbox record written at once, so that none is lost with this process.)
            self._accepted += 1
            self._arrivals.setdefault(message.id, arrived)
            self._spawn(self._process(message)).add_done_callback(self._message_done)
            return
        if lane is None:
            lane = self._lanes[key] = _Lane()
        busy = lane.worker is not None and not lane.worker.done()
        if opts.strategy == "drop" and busy:
            self._reject(message, "busy answering an earlier message")
            return
        if opts.strategy == "debounce":
            for dropped in lane.queue:
                self._accepted -= 1
                self._arrivals.pop(dropped.id, None)
                self._reject(dropped, "superseded by a newer message")
            lane.queue.clear()
        elif len(lane.queue) >= opts.max_queue:
            self._reject(message, "conversation queue is full")
            return
        self._accepted += 1
        # (Recorded only for an accepted message: a redelivery dropped or refused above
        # neither leaves an entry nor touches its original's.)
        self._arrivals.setdefault(message.id, arrived)
        lane.queue.append(message)
        lane.last_arrival = arrived
        if opts.interrupt and lane.current is not None and not lane.current.done():
            lane.current.cancel()
        if not busy:
            lane.worker = self._spawn(self._run_lane(key, lane))

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
                if self.options.interrupt:
                    # its own task, so that a newer message can cancel it alone
                    lane.current = asyncio.ensure_future(self._process(message))
                    lane.current.add_done_callback(self._message_done)
                    with contextlib.suppress(asyncio.CancelledError):
                        await lane.current  # cancelled by an interrupt or by stop()
                else:
                    # answered in the lane's own task: one task less per message
                    try:
                        await self._process(message)
                    except asyncio.CancelledError:
                        return  # stop() cancelled the lane
                    finally:
                        self._accepted -= 1
                lane.current_message = None
                if self._stopping:
                    return
        finally:
            if self._stopping:  # the messages still waiting here are never answered
                self.stats.interrupted += len(lane.queue)
            lane.current = None
            lane.current_message = None
            if not lane.queue and self._lanes.get(key) is lane:
                del self._lanes[key]

    def _message_done(self, _: asyncio.Future[None]) -> None:
        # a done callback, not a `finally`: it runs even for a task cancelled before it started
        self._accepted -= 1

    @property
    def _shared_turns(self) -> bool:
        """Whether conversations take turns across replicas (a shared store, answers of
        one conversation one at a time)."""
        return self.store.shared and self.options.strategy != "concurrent"

    async def _process(self, message: Message) -> None:
        """Answer ``message`` (in its turn, with a shared store). A store that stays
        unreachable (``StoreUnavailable``: Redis down past its ``reconnect_for``) fails the
        message: counted failed, one line logged, and the next messages are tried again."""
        try:
            if self._shared_turns:
                await self._process_in_turn(message)
            else:
                await self._answer(message)  # (one coroutine less per message)
        except asyncio.CancelledError:
            self.stats.interrupted += 1  # stop(), or a newer message with `interrupt`
            raise
        except StoreUnavailable as exc:
            self.stats.failed += 1
            log.error(
                "robot %s: message %s failed (counted failed): %s",
                self.name,
                message.id,
                redact_text(str(exc)),
            )

    async def _process_in_turn(self, message: Message) -> None:
        if not self._shared_turns:
            await self._answer(message)
            return
        # Several replicas share the store: the platform may hand a conversation's messages
        # to different replicas, so its answers take turns in the store, in the order the
        # messages were sent. The message is kept in the store's inbox meanwhile, so that
        # another replica answers it if this one dies before its turn.
        if message.id in self._inbox:
            # A redelivery of a message waiting or being answered here: its turn is taken.
            self.stats.duplicates += 1
            log.info("dropped duplicate message %s (waiting)", message.id)
            return
        queue = self._key("turns", message.conversation_key)
        member = f"{message.id}{_SEPARATOR}{self.owner}"
        inbox = self._key("inbox", message.id)
        record = {"owner": self.owner, "message": _messages.unstructure(message)}
        started = False
        self._inbox.add(message.id)  # before the record exists: it is this runtime's own
        try:
            await self.store.put_value(
                inbox, dumps(record).decode(), ttl=self.options.in_flight_ttl
            )
            await self._wait_turn(queue, member, message.time.timestamp())
            started = True
            await self._answer(message)
        finally:
            # Not yet started (the runtime stops): the inbox record stays, for another
            # replica to answer the message once this one's lease is gone.
            with contextlib.suppress(Exception):
                await self.store.end_turn(queue, member)
                if started:
                    await self.store.delete_value(inbox)
            self._inbox.discard(message.id)  # after: a record here is never taken for a leftover

    async def _wait_turn(self, queue: str, member: str, score: float) -> None:
        """Wait until ``member`` heads the conversation's turn queue, and the message is
        ``turn_grace`` seconds old (so that the conversation's earlier messages, handed to
        other replicas, are queued before it takes its turn). A head whose replica is gone
        is taken out, and its message adopted (answered here)."""
        pause = 0.02
        checked = 0.0
        loop = asyncio.get_running_loop()
        # (At most turn_grace from now: a host clock behind the platform's delays no more.)
        ready_at = min(score, time.time()) + self.options.turn_grace
        while True:
            early = ready_at - time.time()
            head = await self.store.take_turn(
                queue, member, score, ttl=self.options.in_flight_ttl, take=early <= 0
            )
            if head is None:
                return  # the queue is gone (a store that lost its data): go ahead
            if head == member:
                if early <= 0:
                    return
                await asyncio.sleep(min(early, self.options.turn_grace))
                continue
            message_id, _, owner = head.rpartition(_SEPARATOR)
            if loop.time() - checked >= self.options.liveness_ttl / 6:
                checked = loop.time()
                # Our own name on a message we are not handling: a previous process of
                # this replica name left it.
                if owner == self.owner:
                    gone = message_id not in self._inbox
                else:
                    gone = await self._owner_gone(owner)
                if gone:
                    await self.store.end_turn(queue, head)
                    adopted = await self._adopt(message_id, owner)
                    if adopted is not None:
                        await self._process_in_turn(adopted)  # its turn came first: answered first
                    continue
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 0.25)

    async def _adopt(self, message_id: str, owner: str) -> Message | None:
        """Take over a message that the replica ``owner``, now gone, had taken in but not
        answered (its inbox record), to answer it here; ``None`` if another replica did."""
        claim = await self.store.claim(self._key("adopt", message_id), in_flight_ttl=60.0)
        if claim is not ClaimResult.CLAIMED:
            return None  # another replica adopts it
        raw = await self.store.get_value(self._key("inbox", message_id))
        if raw is None:
            return None
        try:
            record = json.loads(raw)
            if record.get("owner") != owner:
                return None  # adopted already
            message = _messages.structure(record["message"], Message)
        except (ValueError, KeyError, TypeError, cattrs.BaseValidationError) as exc:
            log.warning("could not read the inbox record of message %s: %s", message_id, exc)
            return None
        log.info("answering message %s, taken in by replica %s which is gone", message_id, owner)
        self.stats.adopted += 1
        self._adopted.add(message_id)
        return self._bind(message)

    async def _answer(self, message: Message) -> None:
        arrived = self._arrivals.pop(message.id, None)
        key = self._dedupe_prefix + message.id  # self._key("dedupe", message.id)
        if message.id in self._adopted:
            # Its replica died after claiming it and before its answer's card opened: the
            # claim is that dead replica's (a finished answer stays "done").
            self._adopted.discard(message.id)
            await self.store.release(key)
            log.debug("released the claim of adopted message %s", message.id)
        claim = await self.store.claim(key, in_flight_ttl=self.options.in_flight_ttl)
        if claim is not ClaimResult.CLAIMED:
            self.stats.duplicates += 1
            log.info("dropped duplicate message %s (%s)", message.id, claim.value)
            return
        if self.hooks is not None:
            await self.fire("message_received", robot=self.name, message=message)
        reply = Reply(self, message.target, message=message)
        tally = HandlerTally()
        try:
            await self._semaphore.acquire()  # (async with, without its two coroutines)
            # what use_executor() and handler_tally() do, without their generators
            executor_token = _executor_var.set(self.executor)
            tally_token = _tally_var.set(tally)
            deadline = self._deadlines.enter()
            try:
                try:
                    if message.has_text:
                        await self.robot.on_message(message, reply)
                    else:
                        await self.robot.on_empty_message(message, reply)
                except SystemExit as exc:  # it would stop the event loop, every robot's
                    raise UserCodeExit(exc) from exc
            except BaseException as exc:
                # (TimeoutError from the CancelledError when the limit cut it)
                deadline.exit(exc if isinstance(exc, asyncio.CancelledError) else None)
                raise
            else:
                deadline.exit(None)
            finally:
                _tally_var.reset(tally_token)
                _executor_var.reset(executor_token)
                self._semaphore.release()
        except asyncio.CancelledError:
            await self.store.complete(key, done_ttl=self.options.dedupe_ttl)
            raise
        except Exception as exc:
            self.stats.failed += 1
            timed_out = isinstance(exc, TimeoutError) and deadline.expired()
            if timed_out:
                self.stats.handler_timeouts += 1
                log.error(
                    "robot %s: the handler of message %s ran past handler_timeout (%ss) "
                    "and was cut",
                    self.name,
                    message.id,
                    self.options.handler_timeout,
                )
            elif (line := classified(exc)) is not None:  # a platform refusal: one line
                log.error("robot %s failed to handle message %s: %s", self.name, message.id, line)
            else:
                log.exception("robot %s failed to handle message %s", self.name, message.id)
            await self._show_failure(message, tally, timed_out=timed_out)
            if timed_out:  # never run a hanging handler again for a redelivery
                await self.store.complete(key, done_ttl=self.options.dedupe_ttl)
            else:
                await self.store.release(key)
            return
        if tally.undelivered:
            self.stats.failed += 1
            log.error(
                "the answer to message %s reached the user by no means (counted failed)",
                message.id,
            )
        elif tally.errors:
            # the user sees an error card: shown, but not an answer (the agent failed)
            self.stats.failed += 1
            log.warning(
                "the answer to message %s ended in an error card (counted failed)", message.id
            )
        elif not (tally.streams or tally.sent):
            self.stats.unanswered += 1
            log.debug("robot %s sent nothing for message %s", self.name, message.id)
        else:
            self.stats.answered += 1
            if arrived is not None:
                self.stats.answer_latency.observe(time.monotonic() - arrived)
        await self.store.complete(key, done_ttl=self.options.dedupe_ttl)

    def _handler_deadline(self) -> asyncio.Timeout:
        """The handler's time limit (``options.handler_timeout``)."""
        limit = self.options.handler_timeout
        return asyncio.timeout(None if limit is None else limit)

    async def _show_failure(
        self, message: Message, tally: HandlerTally, *, timed_out: bool
    ) -> None:
        """Tell the user a handler failed, when nothing it sent already did: an error card
        (or a markdown message where cards cannot be sent). A stream the handler had open
        ended on its own (error or interrupted card), so nothing more is sent then."""
        if tally.streams or tally.sent:
            return
        reason = (
            "Sorry, the answer took too long and was stopped."
            if timed_out
            else "Sorry, something went wrong while answering. Please try again."
        )
        card = error_card(message.text, reason=reason)
        reply = Reply(self, message.target, message=message)
        try:
            async with asyncio.timeout(self._final_deadline()):
                if self.platform.capabilities.cards and not self.degradation.cards_refused():
                    await reply.card(card)
                else:
                    await reply.markdown(body_text(card))
        except Exception as exc:
            log.warning(
                "could not show the error of message %s to its sender: %s",
                message.id,
                redact_text(str(exc)),
            )

    def _final_deadline(self) -> float:
        return (self.options.stream or StreamPolicy()).final_deadline

    async def _handle_entered(self, event: ChatEntered) -> None:
        key = self._key("entered", event.id)
        if await self.store.claim(key, in_flight_ttl=60.0) is not ClaimResult.CLAIMED:
            return
        try:
            with use_executor(self.executor):
                async with self._handler_deadline():
                    await self.robot.on_enter_chat(event, Reply(self, event.target, answering=True))
        except Exception as exc:
            line = classified(exc)
            if line is None:
                log.exception("robot %s failed to greet %s", self.name, event.sender.id)
            else:
                log.error("robot %s failed to greet %s: %s", self.name, event.sender.id, line)
        finally:
            await self.store.complete(key, done_ttl=self.options.dedupe_ttl)

    # ----------------------------------------------------------------- actions
    async def _handle_action(self, action: CardAction) -> None:
        key = self._key("action", action.id)
        if await self.store.claim(key, in_flight_ttl=60.0) is not ClaimResult.CLAIMED:
            return
        try:
            if FeedbackSigner.looks_like_feedback(action.value):
                await self._handle_feedback(action)
            else:
                started = self.clock.now()
                handler: Any = self.robot.on_action
                with use_executor(self.executor):
                    async with self._handler_deadline():
                        if _positional_arity(handler) >= 2:
                            await handler(action, ActionReply(self, action))
                        else:  # an on_action(action) written before replies to presses existed
                            await handler(action)
                deadline = self.platform.capabilities.action_deadline
                if deadline is not None and self.clock.now() - started > deadline:
                    log.warning(
                        "on_action took %.1fs for press %s; %s expects an answer within %ss",
                        self.clock.now() - started,
                        action.id,
                        self.platform.name,
                        deadline,
                    )
        except TimeoutError:
            self.stats.handler_timeouts += 1
            log.error(
                "robot %s: on_action for press %s ran past handler_timeout (%ss) and was cut",
                self.name,
                action.id,
                self.options.handler_timeout,
            )
        finally:
            await self.store.complete(key, done_ttl=self.options.dedupe_ttl)

    def _reject_feedback(self, action: CardAction, why: str) -> None:
        self.stats.forged += 1
        log.warning(
            "rejected feedback on card %s from %s: %s", action.card_id, action.sender.id, why
        )

    async def _handle_feedback(self, action: CardAction) -> None:
        """Verify a feedback press and store it. The signed value names the robot, the
        answer, the rating, the conversation (and in direct chats the user) and the card it
        was put on; a press is stored only on that card (or a card its answer was moved to),
        in that conversation. Anything else is rejected and logged, nothing is stored."""
        try:
            token = self.signer.verify(action.value)
        except InvalidFeedback as exc:
            self._reject_feedback(action, str(exc))
            return
        if token.robot != self.name:
            self._reject_feedback(action, f"signed for robot {token.robot!r}, not {self.name!r}")
            return
        if token.conversation is None:
            self._reject_feedback(action, "the value binds no conversation (an old format)")
            return
        record: dict[str, Any] = {}
        raw = await self.store.get_value(self._key("answer", token.message_id))
        if raw is not None:
            with contextlib.suppress(ValueError):
                loaded = json.loads(raw)
                record = loaded if isinstance(loaded, dict) else {}
        cards = record.get("cards")
        known_cards = {str(c) for c in cards} if isinstance(cards, list) else set()
        if action.card_id != token.card and action.card_id not in known_cards:
            self._reject_feedback(
                action, f"the value belongs to another card (answer {token.message_id})"
            )
            return
        in_conversation = (
            action.conversation is not None and action.conversation.id == token.conversation
        ) or (token.user is not None and action.sender.id == token.user)
        if not in_conversation:
            self._reject_feedback(
                action, f"the value belongs to another conversation (answer {token.message_id})"
            )
            return
        feedback = Feedback(
            robot=self.name,
            platform=action.platform,
            message_id=token.message_id,
            rating=token.rating,
            sender=action.sender,
            question=record.get("question", ""),
            answer=record.get("answer", ""),
            conversation_id=record.get("conversation_id") or token.conversation,
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
    async def call(
        self, op: Op, target: Target, func: Callable[[], Awaitable[T]], *, card: str | None = None
    ) -> T:
        """Make one platform call under the scoped rate limiter and the one retry policy.
        ``func`` must reuse one idempotency key on every attempt."""
        scope = CallScope(
            op=op,
            conversation=target.key,
            card=card,
            member=target.user.id if target.user is not None else None,
        )
        policy = (self.options.stream or StreamPolicy()).retry
        return await self.limiter.call(
            func,
            scope=scope,
            policy=attrs.evolve(policy, deadline=60.0),
            idempotent=op in self.platform.capabilities.idempotent,
        )

    async def stream_answer(
        self,
        target: Target,
        source: AnswerSource,
        *,
        question: str,
        message: Message | None = None,
        policy: StreamPolicy | None = None,
        feedback: bool = True,
    ) -> AnswerResult:
        """Stream ``source`` into a card at ``target`` (see :meth:`Reply.stream`)."""
        stream = AnswerStream(
            platform=self.platform,
            limiter=self.limiter,
            target=target,
            question=question,
            policy=policy or self.options.stream,
            clock=self.clock,
            degradation=self.degradation,
        )
        # Feedback ids: the message's id for its first answer, then "ID#2", "ID#3"... for
        # more answers streamed while handling it, so that each card is rated on its own.
        tally = current_tally()
        count = tally.streams if tally is not None else 1
        if message is None:
            answer_id = stream.key
        else:
            answer_id = message.id if count <= 1 else f"{message.id}#{count}"
        record_key = self._key("open", stream.key)

        head = ""  # the record's JSON up to its text: encoded once per stream

        async def on_open(stream: AnswerStream, handle: StreamHandle) -> None:
            nonlocal head
            if message is not None and self._shared_turns:
                # The open answer's record (below) takes over from the inbox record: from
                # now on, a replica that dies leaves an answer to close, not to give.
                await self.store.delete_value(self._key("inbox", message.id))
            record = {
                "target": _targets.unstructure(stream.target),
                "state": handle.state(),
                "question": question,
                "owner": self.owner,
            }
            self._open[record_key] = True
            head = dumps(record).decode()[:-1] + ',"text":'
            await on_push(stream)

        async def on_push(stream: AnswerStream) -> None:
            # The text so far, so that a restart after a crash closes the card with what it
            # showed. (A handle whose state changes per update records it in on_open's
            # state only; plugins keep restore-relevant state stable, see restore_stream.)
            await self.store.put_value(
                record_key,
                head + dumps(stream.latest).decode() + "}",
                ttl=self.options.answer_ttl,
            )

        async def on_final(result: AnswerResult, handle: StreamHandle | None) -> None:
            self._open.pop(record_key, None)
            await self.store.delete_value(record_key)
            self.stats.card_updates += result.updates
            if result.first_update_latency is not None:
                self.stats.first_update_latency.observe(result.first_update_latency)
            if result.degraded:
                self.stats.degraded += 1
            if result.status is AnswerStatus.FINAL:
                cards = [c for c in (signed_card, stream.final_card_id) if c is not None]
                if handle is not None:
                    cards.append(handle.ref.id)
                record = {
                    "question": question,
                    "answer": result.text,
                    "conversation_id": target.conversation.id if target.conversation else None,
                    "cards": sorted(set(cards)),
                }
                await self.store.put_value(
                    self._key("answer", answer_id),
                    dumps(record).decode(),
                    ttl=self.options.answer_ttl,
                )
            await self.fire("reply_finished", robot=self.name, message=message, result=result)

        stream.on_open = on_open
        stream.on_push = on_push
        stream.on_final = on_final
        signed_card: str | None = None

        def feedback_values() -> dict[FeedbackRating, str]:
            # Bound to the card the final text goes to (the stream's, when it has one), and
            # to the conversation; presses elsewhere are rejected (_handle_feedback).
            nonlocal signed_card
            handle = stream.handle
            signed_card = handle.ref.id if handle is not None else None
            conversation = target.conversation
            direct = conversation is None or conversation.kind is ConversationKind.DIRECT
            return self.signer.values(
                self.name,
                answer_id,
                conversation=conversation.id if conversation is not None else "",
                user=target.user.id if direct and target.user is not None else None,
                card=signed_card,
            )

        if feedback:
            stream.feedback = feedback_values
        # The robot's own agent answer is already accumulated text: streamed as it is.
        chunks = source if isinstance(source, AgentAnswer) else accumulate(source)
        return await stream.run(chunks)

    def _alive_key(self, owner: str) -> str:
        return self._key("alive", owner)

    async def _keep_alive(self) -> None:
        """Take (or renew) this runtime's lease in the store, and check that no other live
        process uses its replica name.

        The lease is held under the replica name, which two processes of one name share
        (and must, so that a restart finds what its previous process left): it cannot tell
        them apart. So each renewal also reads the process mark stored under the name
        and writes its own: a mark of another process found after this one wrote its own
        means a second live process uses the name (a process restarted under the name
        writes its mark at start without looking, so it is never taken for one)."""
        ttl = self.options.liveness_ttl
        shared = (
            await self.store.acquire_lock(self._alive_key(self.owner), self.owner, ttl=ttl) is None
        )
        mark = self._key("alive-process", self.owner)
        if self._marked and not shared:
            shared = await self.store.get_value(mark) not in (None, self._process_mark)
        await self.store.put_value(mark, self._process_mark, ttl=ttl)
        self._marked = True
        if shared and not self._shared_name_reported:
            self._shared_name_reported = True
            log.error(
                "another live process of robot %s uses the replica name %r: give each its own",
                self.name,
                self.owner,
            )

    async def _watch(self) -> None:
        """Renew the lease every third of its lifetime; close dead owners' answers every
        lifetime, in a task of its own (closing answers waits for the rate limiter, which
        must not delay the lease: a lapsed lease makes this runtime look gone)."""
        period = self.options.liveness_ttl / 3
        recovery = asyncio.create_task(self._recover_regularly())
        try:
            while True:
                await self.clock.sleep(period)
                try:
                    await self._keep_alive()
                except StoreUnavailable as exc:  # one line: the store says what is wrong
                    log.error("robot %s: renewing its lease failed: %s", self.name, exc)
                except Exception:
                    log.exception("robot %s: renewing its lease failed", self.name)
        finally:
            recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recovery

    async def _recover_regularly(self) -> None:
        while True:
            await self.clock.sleep(self.options.liveness_ttl)
            try:
                await self.recover_open_answers()
            except StoreUnavailable as exc:
                log.error("robot %s: recovering answers failed: %s", self.name, exc)
            except Exception:
                log.exception("robot %s: recovering answers failed", self.name)

    async def _owner_gone(self, owner: str) -> bool:
        """Whether the runtime ``owner`` is gone: its lease is missing now and was missing
        ``liveness_ttl`` seconds ago already (a live runtime renews its lease every third
        of that, also after a store that lost its data, such as a Redis restarted without
        persistence). This very runtime's name counts as gone: what it finds under its name
        and did not open, a previous process of the same replica name left."""
        if owner == self.owner:
            return True
        probe = f"probe:{self.owner}"
        key = self._alive_key(owner)
        if await self.store.acquire_lock(key, probe, ttl=0.001) is None:
            self._suspects.pop(owner, None)
            return False  # its lease is held
        await self.store.release_lock(key, probe)
        now = self.clock.now()
        since = self._suspects.setdefault(owner, now)
        return now - since >= self.options.liveness_ttl

    async def recover_open_answers(self) -> int:
        """Close every answer of this robot left open by a runtime that is gone (its lease
        in the store lapsed: a crash, a killed replica), as interrupted, showing the text it
        had. Answers of live runtimes are left alone. Returns how many were closed."""
        prefix = self._key("open", "")
        closed = 0
        for key, raw in (await self.store.scan_values(prefix)).items():
            try:
                record = json.loads(raw)
                owner = record.get("owner")
                if owner == self.owner and (self._recovered or self._open.get(key)):
                    # This runtime's own answer. Only the pass at start closes records of
                    # this name (a previous process's): later, one is ours, running or just
                    # finished since the scan.
                    continue
                if isinstance(owner, str) and not await self._owner_gone(owner):
                    continue
                claim = await self.store.claim(key + ":closing", in_flight_ttl=60.0)
                if claim is not ClaimResult.CLAIMED:
                    continue  # another replica is closing it
                fresh = await self.store.get_value(key)
                if fresh is None:
                    continue  # finished since the scan
                record = json.loads(fresh)
                target = _targets.structure(record["target"], Target)
                handle = await self.platform.restore_stream(target, record.get("state") or {})
                card = interrupted_card(record.get("question") or "", record.get("text") or "")
                await self.call(Op.CLOSE, target, functools.partial(handle.close, card))
                closed += 1
                self.stats.recovered += 1  # at once: /metrics is not behind a long pass
            except (PlatformError, TimeoutError, ValueError, KeyError, TypeError) as exc:
                log.warning("could not close the answer %s a crash left open: %s", key, exc)
            await self.store.delete_value(key)
        if closed:
            log.info("closed %d answer(s) a crash left open, as interrupted", closed)
        if self._shared_turns:
            await self._adopt_inbox()
        self._recovered = True
        return closed

    async def _adopt_inbox(self) -> None:
        """Answer the messages that replicas now gone had taken in and not answered."""
        for key, raw in (await self.store.scan_values(self._key("inbox", ""))).items():
            try:
                owner = json.loads(raw).get("owner")
            except (ValueError, AttributeError):
                continue
            message_id = key.removeprefix(self._key("inbox", ""))
            if not isinstance(owner, str) or message_id in self._inbox:
                continue  # waiting for its turn here
            if owner == self.owner and self._recovered:
                continue  # ours, finished since the scan (see recover_open_answers)
            if await self._owner_gone(owner):
                adopted = await self._adopt(message_id, owner)
                if adopted is not None:
                    self.submit(adopted, adopted=True)


def default_concurrency(capabilities: Capabilities) -> int:
    """The default cap on answers running at once: a minute of the platform's widest call
    budget (its app or API limit), between 256 and 4,096."""
    wide = [lim.rate for lim in capabilities.limits() if lim.scope in (Scope.APP, Scope.API)]
    rate = max(wide) if wide else capabilities.app_rate
    return max(256, min(4096, int(rate * 60)))


GC_THRESHOLDS = (10_000, 20, 100)
"""The collector's thresholds while robots run (Python's default is ``(700, 10, 10)``).

A young collection every 10,000 container allocations takes about 5 ms with 1,000 answers
in flight (50,000 took about 24 ms, a stall of the loop that long, for the same total
time); older generations are collected 20 and 2,000 times less often than that. Measured
with the collector's callbacks over ``bench/engine_micro.py``'s answers."""

_gc_tuned = False


def tune_gc() -> bool:
    """Set the garbage collector up for a robot process, once (the first runtime start).

    An answer makes many small, short-lived objects per chunk (strings, generator
    frames), freed by reference counting; the collector's default thresholds still
    run a young collection every 700 container allocations and, with thousands of
    answers in flight, full collections of every live object that stall the event
    loop for 100-250 ms. So: everything alive once the robot is up (modules,
    classes, the platform's tables) is moved out of the collector's way
    (:func:`gc.freeze`), and collections run less often (:data:`GC_THRESHOLDS`).
    Cycles are still collected. ``IMROBOTS_GC_TUNING=0`` (or ``false``, ``no``,
    ``off``) leaves the collector alone. Returns whether it changed anything.
    ``bench/engine.py`` measures the effect.

    :raises ConfigError: ``IMROBOTS_GC_TUNING`` is not an on/off value
        (:func:`imrobots.environment.env_flag`).
    """
    global _gc_tuned
    if _gc_tuned or not env_flag(GC_TUNING, default=True):
        return False
    _gc_tuned = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return True


class _Deadline:
    """One handler's time limit in :class:`_Deadlines`, with ``asyncio.Timeout``'s states."""

    __slots__ = ("cancelling", "running", "state", "task", "when")

    def __init__(
        self, task: asyncio.Task[Any] | None, when: float, running: dict[_Deadline, None]
    ) -> None:
        self.task = task
        self.when = when
        self.running = running
        self.cancelling = task.cancelling() if task is not None else 0
        self.state = _RUNNING

    def expired(self) -> bool:
        """Whether the limit cut the handler (as ``asyncio.Timeout.expired``)."""
        return self.state is _EXPIRING or self.state is _EXPIRED

    def exit(self, cancelled: asyncio.CancelledError | None) -> None:
        """The handler ended (``cancelled``: by that exception). Raises
        :class:`TimeoutError` from it when the limit cancelled the task and nothing else
        asked to cancel it since, as leaving ``asyncio.timeout`` does."""
        if self.state is _RUNNING:
            self.state = _EXITED
            self.running.pop(self, None)
        elif self.state is _EXPIRING:
            self.state = _EXPIRED
            task = self.task
            assert task is not None
            if task.uncancel() <= self.cancelling and cancelled is not None:
                raise TimeoutError from cancelled
        self.task = None


_RUNNING, _EXPIRING, _EXPIRED, _EXITED = "running", "expiring", "expired", "exited"


class _Deadlines:
    """The time limits of a runtime's running message handlers, on one loop timer.

    ``asyncio.timeout`` arms and cancels a timer per handler (about 5 % of a message's
    intake CPU). Every limit here has the same length, so limits expire in the order
    their handlers started: the running ones are kept in start order (a dict, which a
    handler that ends leaves at once), and one timer is armed for the oldest. When it
    fires, it cuts the handlers whose time is up (cancels their tasks, as
    ``asyncio.timeout`` does: see :meth:`_Deadline.exit`) and is armed again for the
    oldest left. It may fire early (that handler ended), never late."""

    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        self._running: dict[_Deadline, None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._armed = 0.0
        """The loop time the timer was armed for."""
        self._loop: asyncio.AbstractEventLoop | None = None

    def enter(self) -> _Deadline:
        """Start the current task's limit; the handler leaves it with :meth:`_Deadline.exit`."""
        if self.limit is None:
            return _Deadline(None, math.inf, self._running)
        loop = asyncio.get_running_loop()
        entry = _Deadline(asyncio.current_task(loop), loop.time() + self.limit, self._running)
        self._running[entry] = None
        if self._timer is None or self._loop is not loop:
            self._loop = loop
            self._arm(entry.when)
        return entry

    def _arm(self, when: float) -> None:
        assert self._loop is not None
        self._armed = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None
        # due: what the timer was armed for (a loop may run a timer a little before its
        # time, as it would run asyncio.timeout's) and whatever is up since
        now = max(loop.time(), self._armed)
        running = self._running
        due: list[_Deadline] = []
        for entry in running:
            if entry.when > now:
                self._arm(entry.when)
                break
            due.append(entry)
        for entry in due:
            del running[entry]
            if entry.task is not None:
                entry.state = _EXPIRING
                entry.task.cancel()


def _bind_all(
    attachments: tuple[Attachment, ...], download: Callable[[Attachment], Awaitable[bytes]]
) -> tuple[Attachment, ...]:
    return tuple(attrs.evolve(a, downloader=download) for a in attachments)


@functools.cache
def _arity_of(func: Any) -> int:
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return 2
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return 2
    return sum(1 for p in parameters if p.kind in positional)


def _positional_arity(method: Any) -> int:
    """How many positional arguments a bound handler takes (cached per function)."""
    return _arity_of(getattr(method, "__func__", method)) - (
        1 if hasattr(method, "__self__") else 0
    )
