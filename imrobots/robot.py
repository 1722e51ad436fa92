"""The :class:`Robot` base class users subclass, and the :class:`Reply` it answers with.

A :class:`Reply` is a view over a :class:`~imrobots.models.Target`: where to speak.
Every call goes through the robot's scoped rate limiter and the one retry
policy, with one idempotency key per logical send. This module does not import
the runtime: a running robot talks to it through the :class:`Outbound` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import mimetypes
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import attrs

from .agents import Agent, AgentRequest, AnswerSource, as_agent
from .cards import Card
from .errors import ConfigError, NotSupported, OutcomeUnknown
from .models import CardAction, ChatEntered, Feedback, Message, Target
from .payloads import displayable
from .platform import CardRef, Op, Platform, Upload
from .store import Store, Turn
from .streaming import AnswerResult, AnswerStatus, StreamPolicy, split_all

__all__ = ["ActionReply", "AgentAnswer", "Outbound", "Reply", "Robot"]

log = logging.getLogger("imrobots.robot")

T = TypeVar("T")

EMPTY_MESSAGE_REPLY = "Please send your question as text."


class Outbound(Protocol):
    """What a :class:`Reply` needs from the running robot (the runtime implements it)."""

    name: str
    platform: Platform
    store: Store

    async def call(
        self, op: Op, target: Target, func: Callable[[], Awaitable[T]], *, card: str | None = None
    ) -> T: ...

    async def stream_answer(
        self,
        target: Target,
        source: AnswerSource,
        *,
        question: str,
        message: Message | None = None,
        policy: StreamPolicy | None = None,
        feedback: bool = True,
    ) -> AnswerResult: ...

    @property
    def history_limit(self) -> int: ...

    @property
    def history_ttl(self) -> float: ...

    @property
    def stopping(self) -> bool: ...


def _new_key() -> str:
    return uuid.uuid4().hex


@attrs.define
class HandlerTally:
    """What every :class:`Reply` made while one message is handled did, together (the
    runtime reads it to count the message answered or failed)."""

    streams: int = 0
    undelivered: int = 0
    errors: int = 0
    """Streamed answers that ended in an error card (the agent failed or timed out)."""
    sent: int = 0
    """Messages and cards (not streams) that reached the platform."""


def _count_sent() -> None:
    tally = _tally.get()
    if tally is not None:
        tally.sent += 1


_tally: contextvars.ContextVar[HandlerTally | None] = contextvars.ContextVar(
    "imrobots_handler_tally", default=None
)


@contextlib.contextmanager
def handler_tally() -> Iterator[HandlerTally]:
    """Count what the replies made inside this block did (the runtime's, per message)."""
    tally = HandlerTally()
    token = _tally.set(tally)
    try:
        yield tally
    finally:
        _tally.reset(token)


def current_tally() -> HandlerTally | None:
    return _tally.get()


async def _upload(
    data: bytes | str | Path | Upload, name: str | None, mime_type: str | None
) -> Upload:
    if isinstance(data, Upload):
        return data
    if isinstance(data, bytes):
        if not name:
            raise ValueError("give a name for in-memory data, e.g. name='report.pdf'")
        content = data
    else:
        path = Path(data)
        content = await asyncio.to_thread(path.read_bytes)  # never a blocking read on the loop
        name = name or path.name
    guessed = mimetypes.guess_type(name)[0]
    return Upload(name=name, data=content, mime_type=mime_type or guessed)


class Reply:
    """How a robot speaks to one :class:`Target`: text, markdown, cards, images, files
    and streamed answers. See the module docstring."""

    def __init__(
        self,
        outbound: Outbound,
        target: Target,
        *,
        message: Message | None = None,
        answering: bool | None = None,
    ):
        self.outbound = outbound
        self.target = target
        self.message = message
        """The message being answered, when there is one."""
        self.answering = message is not None if answering is None else answering
        """Whether this answers something the user did (a message, a press, opening the
        chat); otherwise the robot speaks first, which the platform must allow."""
        self.results: list[AnswerResult] = []
        """How each streamed answer ended."""
        self.undelivered = 0
        """Sends that reached the user by no means."""

    @property
    def platform(self) -> Platform:
        return self.outbound.platform

    def _needs(self, feature: bool, what: str) -> None:
        if not feature:
            raise NotSupported(f"platform {self.platform.name!r} cannot {what}")

    def _check_target(self) -> None:
        """Refuse, in one clear line, what the target asks and the platform cannot do."""
        target, platform = self.target, self.platform
        if self.outbound.stopping:
            raise RuntimeError(f"robot {self.outbound.name!r} has stopped: nothing can be sent")
        if target.platform != platform.name:
            raise ValueError(
                f"target is on platform {target.platform!r}, but this robot runs on "
                f"{platform.name!r}"
            )
        if target.conversation is None and target.user is None:
            raise ValueError("target has neither a conversation nor a user to send to")
        caps = platform.capabilities
        if not self.answering:
            self._needs(caps.proactive, "send first (proactive messages)")
        if target.mentions:
            self._needs(caps.mentions, "@-mention users")
        if target.thread is not None:
            self._needs(caps.threads, "reply in threads")

    async def _send_text(self, text: str, markdown: bool) -> None:
        text = displayable(text)  # a lone surrogate: U+FFFD, as in streamed answers
        if not text.strip():
            log.info("not sending an empty message to %s", self.target.key)
            return
        self._check_target()
        caps = self.platform.capabilities
        for part in split_all(text, caps.max_message_text, caps.text_unit):
            key = _new_key()
            await self._once(
                Op.SEND_TEXT,
                lambda part=part, key=key: self.platform.send_text(  # type: ignore[misc]
                    self.target, part, markdown=markdown, key=key
                ),
            )

    async def _once(self, op: Op, func: Callable[[], Awaitable[None]]) -> None:
        """A send with no result: if it was sent but its answer was lost and the platform
        cannot repeat it safely, it is taken as delivered (logged), never sent twice."""
        try:
            await self.outbound.call(op, self.target, func)
        except OutcomeUnknown as exc:
            log.warning("%s to %s: no answer (%s); taken as delivered", op, self.target.key, exc)
        _count_sent()

    async def text(self, text: str) -> None:
        """Send plain text (split at the platform's message size limit, in order)."""
        await self._send_text(text, False)

    async def markdown(self, text: str) -> None:
        """Send markdown (split at the platform's message size limit, in order)."""
        await self._send_text(text, True)

    async def card(self, card: Card) -> CardRef:
        """Send a card; keep the returned ref to :meth:`update` it.
        Raises :class:`NotSupported` on a platform without cards."""
        self._needs(self.platform.capabilities.cards, "send cards")
        self._check_target()
        key = _new_key()
        ref = await self.outbound.call(
            Op.SEND_CARD, self.target, lambda: self.platform.send_card(self.target, card, key=key)
        )
        _count_sent()
        return ref

    async def update(self, ref: CardRef, card: Card) -> None:
        """Replace a card sent with :meth:`card`."""
        await self.outbound.call(
            Op.UPDATE_CARD, self.target, lambda: self.platform.update_card(ref, card), card=ref.id
        )
        _count_sent()

    async def image(self, image: bytes | str | Path | Upload, *, name: str | None = None) -> None:
        """Send an image: bytes (with ``name``), a file path, or an :class:`Upload`.

        Raises :class:`NotSupported` where the platform cannot, and ``ValueError`` when it
        is larger than ``capabilities.max_image_bytes``."""
        caps = self.platform.capabilities
        self._needs(caps.images, "send images")
        self._check_target()
        upload = await _upload(
            image, name or ("image.png" if isinstance(image, bytes) else None), None
        )
        if caps.max_image_bytes is not None and upload.size > caps.max_image_bytes:
            raise ValueError(
                f"image {upload.name!r} is {upload.size} bytes; {self.platform.name} accepts "
                f"at most {caps.max_image_bytes} bytes"
            )
        key = _new_key()
        await self._once(
            Op.SEND_IMAGE, lambda: self.platform.send_image(self.target, upload, key=key)
        )

    async def file(self, file: bytes | str | Path | Upload, *, name: str | None = None) -> None:
        """Send a file: bytes (with ``name``), a file path, or an :class:`Upload`.

        Raises :class:`NotSupported` where the platform cannot, and ``ValueError`` when it
        is larger than ``capabilities.max_file_bytes``."""
        caps = self.platform.capabilities
        self._needs(caps.files, "send files")
        self._check_target()
        upload = await _upload(file, name, None)
        if caps.max_file_bytes is not None and upload.size > caps.max_file_bytes:
            raise ValueError(
                f"file {upload.name!r} is {upload.size} bytes; {self.platform.name} accepts "
                f"at most {caps.max_file_bytes} bytes"
            )
        key = _new_key()
        await self._once(
            Op.SEND_FILE, lambda: self.platform.send_file(self.target, upload, key=key)
        )

    async def stream(
        self,
        source: AnswerSource,
        *,
        question: str | None = None,
        policy: StreamPolicy | None = None,
        feedback: bool = True,
    ) -> AnswerResult:
        """Stream an answer: a thinking card at once, throttled updates, then the final card.

        ``source`` is a string, an awaitable of one, or a (sync or async) iterable of
        text deltas. The final card carries the four feedback buttons unless
        ``feedback`` is false. Agent errors and timeouts end in an error card,
        cancellation in an interrupted card; where cards are refused the answer
        goes as a markdown message. The result says how it ended.
        """
        if question is None:
            question = self.message.text if self.message is not None else ""
        self._check_target()
        tally = current_tally()
        if tally is not None:
            tally.streams += 1
        result = await self.outbound.stream_answer(
            self.target,
            source,
            question=question,
            message=self.message,
            policy=policy,
            feedback=feedback,
        )
        self.results.append(result)
        if result.status is AnswerStatus.UNDELIVERED:
            self.undelivered += 1
            if tally is not None:
                tally.undelivered += 1
        elif result.status is AnswerStatus.ERROR and tally is not None:
            tally.errors += 1
        return result

    @property
    def result(self) -> AnswerResult | None:
        """How the last streamed answer ended."""
        return self.results[-1] if self.results else None

    def in_thread(self, thread: str | None = None) -> Reply:
        """A reply into a thread: ``thread``, or the one the message started.
        Raises :class:`NotSupported` on a platform without threads."""
        self._needs(self.platform.capabilities.threads, "reply in threads")
        anchor = thread or self.target.thread or (self.message.id if self.message else None)
        if anchor is None:
            raise ValueError("no thread to answer in: give in_thread(thread=...) a thread id")
        target = Target(
            platform=self.target.platform,
            conversation=self.target.conversation,
            user=self.target.user,
            thread=anchor,
            reply_to=self.target.reply_to,
            mentions=self.target.mentions,
            app=self.target.app,
            context=self.target.context,
        )
        return Reply(self.outbound, target, message=self.message, answering=self.answering)


class ActionReply(Reply):
    """The reply to a button press: speak into the card's conversation, or
    :meth:`replace` the pressed card (within ``capabilities.action_deadline``)."""

    def __init__(self, outbound: Outbound, action: CardAction) -> None:
        super().__init__(outbound, action.target, answering=True)
        self.action = action

    async def replace(self, card: Card) -> None:
        """Replace the pressed card with ``card``."""
        key = _new_key()
        await self.outbound.call(
            Op.ANSWER_ACTION,
            self.target,
            lambda: self.platform.answer_action(self.action, card, key=key),
            card=self.action.card_id,
        )
        _count_sent()


class AgentAnswer(AsyncIterator[str]):
    """What :meth:`Robot.ask` returns: the agent's accumulated answer, as an async iterator.

    A class rather than an async generator: it is on the path of every chunk of every
    answer, and the runtime streams it as it is (its items are already the whole text
    so far), saving a layer of re-accumulation per chunk.
    """

    def __init__(self, robot: Robot, message: Message) -> None:
        self.robot = robot
        self.message = message
        self.answer = ""
        """The answer so far: the last text yielded (the whole answer once iterated to
        its end)."""
        self._chunks: AsyncIterator[str] | None = None

    def __aiter__(self) -> AgentAnswer:
        return self

    def __anext__(self) -> Awaitable[str]:
        # Once started, the accumulating generator's own awaitable: no frame of this
        # class's per chunk. The generator sets ``answer`` and calls _finish at the end.
        chunks = self._chunks
        if chunks is None:
            return self._first()
        return chunks.__anext__()

    async def _first(self) -> str:
        chunks = self._chunks = await self._start()
        return await chunks.__anext__()

    async def _start(self) -> AsyncIterator[str]:
        agent = self.robot.agent
        if agent is None:
            raise ConfigError(
                f"robot {type(self.robot).__name__} has no agent: set [robots.NAME.agent] "
                "in the config"
            )
        store = self.robot.runtime.store
        history = await store.history(self.message.conversation_key)
        return agent._stream_into(AgentRequest.from_message(self.message, history), self)

    async def _finish(self) -> None:
        if not self.answer.strip():
            return
        runtime = self.robot.runtime
        await runtime.store.append_history(
            self.message.conversation_key,
            [Turn(role="user", text=self.message.text), Turn(role="assistant", text=self.answer)],
            limit=runtime.history_limit,
            ttl=runtime.history_ttl,
        )

    async def aclose(self) -> None:
        """Close the agent's stream (an answer left early, e.g. interrupted)."""
        close = getattr(self._chunks, "aclose", None)
        if close is not None:
            await close()


class Robot:
    """Base class of a robot. Subclass it and override what you need.

    The default :meth:`on_message` streams the configured agent's answer, which
    is the seed's whole robot::

        class SupportRobot(Robot):
            async def on_message(self, message, reply):
                await reply.stream(self.ask(message))
    """

    description: ClassVar[str] = ""
    empty_message_reply: ClassVar[str] = EMPTY_MESSAGE_REPLY
    """What :meth:`on_empty_message` answers by default."""

    def __init__(self, *, agent: object | None = None, **settings: Any) -> None:
        self.agent: Agent | None = as_agent(agent) if agent is not None else None
        self.settings = settings
        self._outbound: Outbound | None = None

    @property
    def runtime(self) -> Outbound:
        if self._outbound is None:
            raise RuntimeError(
                "this robot is not running: start it with imrobots run or a RobotRuntime"
            )
        return self._outbound

    def bind(self, outbound: Outbound) -> None:
        """Called by the runtime that runs this robot."""
        self._outbound = outbound

    def to(self, target: Target) -> Reply:
        """A :class:`Reply` for a proactive send, e.g.
        ``await robot.to(Target.to_user("dingtalk", "manager01")).markdown("Done")``.

        Sends through it raise ``ValueError`` for a target on another platform or with
        neither conversation nor user, :class:`NotSupported` for what the platform cannot
        do (speak first, @-mention, threads), ``RuntimeError`` once the robot stopped."""
        return Reply(self.runtime, target)

    async def send(self, target: Target, content: str | Card, *, markdown: bool = True) -> None:
        """Speak first: send ``content`` (markdown text, or a card) to ``target``."""
        reply = self.to(target)
        if isinstance(content, Card):
            await reply.card(content)
        elif markdown:
            await reply.markdown(content)
        else:
            await reply.text(content)

    def ask(self, message: Message) -> AgentAnswer:
        """Ask the configured agent about ``message``, with the conversation's history.

        Returns an async iterator of the accumulated answer as it grows
        (:class:`~imrobots.agents.AccumulatedText`); a finished, non-empty answer is
        added to the conversation history. Raises :class:`ConfigError` (when iterated)
        if the robot has no agent.
        """
        return AgentAnswer(self, message)

    async def on_message(self, message: Message, reply: Reply) -> None:
        """Answer a message. The default streams the agent's answer."""
        await reply.stream(self.ask(message))

    async def on_empty_message(self, message: Message, reply: Reply) -> None:
        """A message with no text (a picture alone, a bare @-mention, a voice note nobody
        could recognise). The default asks for text (:attr:`empty_message_reply`) and
        never calls the agent; override to handle attachments."""
        await reply.text(self.empty_message_reply)

    async def on_enter_chat(self, event: ChatEntered, reply: Reply) -> None:
        """A user opened a chat with the robot, on platforms that say so (WeCom
        ``enter_chat``). Greet them with ``reply`` if you like; the default says nothing."""

    async def on_feedback(self, feedback: Feedback) -> None:
        """A user pressed a feedback button (verified and already stored)."""

    async def on_action(self, action: CardAction, reply: ActionReply) -> None:
        """A user pressed a card button that is not a feedback button. ``reply`` speaks
        into the card's conversation or :meth:`ActionReply.replace`\\ s the card."""

    async def startup(self) -> None:
        """Called once before the robot receives messages."""

    async def shutdown(self) -> None:
        """Called once after the robot stopped receiving messages."""
