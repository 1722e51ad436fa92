"""The platform conformance suite: what every platform plugin must pass on its own emulator.

A plugin runs it by subclassing :class:`PlatformConformance` in one of its test
modules and providing one fixture, ``emulator_factory``: a callable that makes a
fresh, not yet started :class:`~imrobots.emulation.EmulatorAdapter` of its
platform. Parametrize the fixture to run the suite in each of the plugin's modes::

    import pytest

    from imrobots.testing.conformance import EmulatorFactory, PlatformConformance
    from imrobots_dingtalk.console import DingTalkConsoleAdapter


    class TestDingTalkConformance(PlatformConformance):
        @pytest.fixture(params=["standard", "ai"])
        def emulator_factory(self, request: pytest.FixtureRequest) -> EmulatorFactory:
            return lambda: DingTalkConsoleAdapter(card_mode=request.param)

Each check starts the emulator, connects a robot to it through a
:class:`~imrobots.runtime.RobotRuntime` (with a fresh
:class:`~imrobots.store.MemoryStore`), makes users talk through the adapter, and
reads what the platform shows from the adapter's views, never from the robot's
side. A check skips, saying why, only when the platform's ``capabilities`` say it
lacks the feature (no images, no stream lifetime...); an adapter method the
suite needs and the plugin has not implemented fails with what to implement.

The suite needs pytest and pytest-asyncio (any mode: its tests carry the
``asyncio`` mark).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import itertools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, ClassVar, TypeVar

import pytest

from ..agents import AgentRequest
from ..cards import Actions, Button, Card, Markdown
from ..emulation import EmulatorAdapter
from ..models import CardAction, Feedback, FeedbackRating, Message, Target
from ..platform import Capabilities, LifetimeRemedy, Platform, StreamingMode
from ..plugins import get_plugin_manager
from ..robot import ActionReply, Reply, Robot
from ..runtime import RobotRuntime, RuntimeOptions
from ..store import MemoryStore
from ..streaming import StreamPolicy

__all__ = [
    "PNG_PIXEL",
    "ConformanceFailure",
    "ConformanceRig",
    "EmulatorFactory",
    "PlatformConformance",
    "card_buttons",
    "card_text",
    "default_platform",
    "open_rig",
]

T = TypeVar("T")
View = dict[str, Any]

EmulatorFactory = Callable[[], EmulatorAdapter]
"""Makes a fresh, not yet started emulator adapter (the fixture a plugin provides)."""

PNG_PIXEL = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000b49444154789c6360000200000500017a5eab3f0000000049454e44ae426082"
)
"""A valid 1x1 PNG image."""

USER = "conformance-user"
USER_NAME = "Conformance Tester"
FEEDBACK_LABELS = [rating.label for rating in FeedbackRating]
TERMINAL = ("final", "error", "interrupted")

_HAS_PYTEST_ASYNCIO = importlib.util.find_spec("pytest_asyncio") is not None
_conversations = itertools.count(1)


class ConformanceFailure(AssertionError):
    """A check's expectation was not met in time; the message says what the emulator showed."""


# ---------------------------------------------------------------------- views
def card_text(card: View) -> str:
    """The markdown (and notes) a card view shows, joined by blank lines."""
    return "\n\n".join(
        str(block.get("text", ""))
        for block in card.get("blocks", ())
        if block.get("type") in ("markdown", "note")
    )


def card_buttons(card: View) -> list[View]:
    """The buttons of a card view, in order."""
    return [
        button
        for block in card.get("blocks", ())
        if block.get("type") == "buttons"
        for button in block.get("buttons", ())
    ]


def tokens(text: str, prefix: str) -> list[str]:
    """The words ``prefix`` + three digits in ``text``, in order."""
    return re.findall(rf"\b{re.escape(prefix)}\d{{3}}\b", text)


def numbered(prefix: str, count: int) -> list[str]:
    """``count`` distinct words ``prefix000``, ``prefix001``..."""
    return [f"{prefix}{i:03d}" for i in range(count)]


# ---------------------------------------------------------------------- the rig
class ConformanceRig:
    """One robot on one started emulator, seen from the emulator's side."""

    def __init__(self, emulator: EmulatorAdapter, runtime: RobotRuntime, *, timeout: float):
        self.emulator = emulator
        self.runtime = runtime
        self.timeout = timeout
        self.events: list[View] = []
        """Every event the emulator emitted since the robot was connected, in order."""
        self._queue = emulator.subscribe()

    @property
    def platform(self) -> Platform:
        return self.runtime.platform

    @property
    def capabilities(self) -> Capabilities:
        return self.runtime.platform.capabilities

    def conversation(self, label: str) -> str:
        """A conversation id no other check uses."""
        return f"conformance-{label}-{next(_conversations)}"

    def close(self) -> None:
        self.emulator.unsubscribe(self._queue)

    def user_for(self, conversation_id: str) -> str:
        """Who speaks in ``conversation_id`` in the checks that talk in several
        conversations at once: :data:`USER`, or where the emulator has one chat per user
        (:attr:`EmulatorAdapter.one_chat_per_user`) a user of that conversation's own."""
        if getattr(self.emulator, "one_chat_per_user", False):
            return f"{USER}-{conversation_id}"
        return USER

    # ------------------------------------------------------------------ users
    async def say(
        self,
        text: str,
        *,
        conversation_id: str,
        group: bool = True,
        mention: bool = True,
        user_id: str = USER,
        attachments: Sequence[tuple[str, str, bytes]] | None = None,
    ) -> str:
        """A user says ``text`` (with ``attachments``); returns the platform message id.
        By default in a group, @-mentioning the robot."""
        if attachments is not None:
            return await self.emulator.say_with_attachments(
                attachments=attachments,
                text=text,
                conversation_id=conversation_id,
                group=group,
                user_id=user_id,
                user_name=USER_NAME,
                mention=mention,
            )
        return await self.emulator.say(
            text=text,
            conversation_id=conversation_id,
            group=group,
            user_id=user_id,
            user_name=USER_NAME,
            mention=mention,
        )

    async def press(self, card: View, label: str, *, user_id: str = USER) -> None:
        """Press the button labelled ``label`` on ``card`` (a card view)."""
        for button in card_buttons(card):
            if button.get("label") == label:
                await self.emulator.press(
                    card_id=card["id"], button_id=button["id"], user_id=user_id
                )
                return
        raise ConformanceFailure(
            f"card {card.get('id')} has no button {label!r}; it shows "
            f"{[b.get('label') for b in card_buttons(card)]}"
        )

    # ------------------------------------------------------------------ views
    def drain(self) -> None:
        """Move the events received so far into :attr:`events`."""
        while True:
            try:
                self.events.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    def cards(self, conversation_id: str) -> list[View]:
        """The cards of a conversation in their current state, oldest first."""
        return [
            c for c in self.emulator.state()["cards"] if c.get("conversation_id") == conversation_id
        ]

    def history(self, card_id: str) -> list[View]:
        """Every state a card was seen in (from the emulator's events), oldest first."""
        self.drain()
        return [
            e["card"]
            for e in self.events
            if e.get("type") == "card" and e["card"].get("id") == card_id
        ]

    def robot_messages(self, conversation_id: str | None = None) -> list[View]:
        """Plain messages the robot sent (to ``conversation_id``), oldest first."""
        return [
            m
            for m in self.emulator.state()["messages"]
            if m.get("from_robot")
            and (conversation_id is None or m.get("conversation_id") == conversation_id)
        ]

    def describe(self, conversation_id: str | None = None) -> str:
        """What the emulator shows (in one conversation), for failure messages."""
        self.drain()
        parts = []
        for card in self.emulator.state()["cards"]:
            if conversation_id is not None and card.get("conversation_id") != conversation_id:
                continue
            states = " -> ".join(str(v.get("status")) for v in self.history(card["id"]))
            parts.append(f"card {card['id']} [{states}] {card_text(card)[:80]!r}")
        for message in self.robot_messages(conversation_id):
            parts.append(f"robot message {str(message.get('text'))[:80]!r}")
        return "; ".join(parts) or "nothing"

    # ------------------------------------------------------------------ waiting
    async def until(
        self,
        what: str,
        check: Callable[[], T | None],
        *,
        conversation_id: str | None = None,
        timeout: float | None = None,
    ) -> T:
        """Wait until ``check()`` returns something other than ``None`` or ``False`` and
        return it; re-checked on every emulator event (and at least every 50 ms). Fails
        with what the emulator shows (in ``conversation_id``) after ``timeout`` seconds."""

        async def checked() -> T | None:
            return check()

        return await self.until_async(
            what, checked, conversation_id=conversation_id, timeout=timeout
        )

    async def until_async(
        self,
        what: str,
        check: Callable[[], Awaitable[T | None]],
        *,
        conversation_id: str | None = None,
        timeout: float | None = None,
    ) -> T:
        """:meth:`until` with an async ``check`` (e.g. one that reads the store)."""
        limit = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            self.drain()
            found = await check()
            if found is not None and found is not False:
                return found
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ConformanceFailure(
                    f"expected {what} within {limit}s; the emulator shows: "
                    f"{self.describe(conversation_id)}"
                )
            with contextlib.suppress(TimeoutError):
                self.events.append(await asyncio.wait_for(self._queue.get(), min(remaining, 0.05)))

    async def final_card(self, conversation_id: str, contains: str = "") -> View:
        """Wait for a card of the conversation that is final and contains ``contains``."""

        def find() -> View | None:
            for card in self.cards(conversation_id):
                if card.get("status") == "final" and contains in card_text(card):
                    return card
            return None

        found: View = await self.until(
            f"a final card containing {contains!r}", find, conversation_id=conversation_id
        )
        return found

    async def card_with_status(self, conversation_id: str, status: str) -> View:
        """Wait for a card of the conversation whose current status is ``status``."""

        def find() -> View | None:
            return next((c for c in self.cards(conversation_id) if c["status"] == status), None)

        found: View = await self.until(
            f"a card with status {status!r}", find, conversation_id=conversation_id
        )
        return found

    async def robot_message(self, conversation_id: str | None, contains: str) -> View:
        """Wait for a plain robot message (to ``conversation_id``) containing ``contains``."""

        def find() -> View | None:
            return next(
                (m for m in self.robot_messages(conversation_id) if contains in m["text"]),
                None,
            )

        found: View = await self.until(
            f"a robot message containing {contains!r}", find, conversation_id=conversation_id
        )
        return found


def default_platform(emulator: EmulatorAdapter) -> Platform:
    """The platform connection for a robot on ``emulator``: the adapter's
    :meth:`~EmulatorAdapter.create_platform`, else the registered platform built from its
    :meth:`~EmulatorAdapter.robot_settings` (with the config's converter). A platform
    registered as ``planned`` is built too: the suite is how it earns ``available``."""
    from ..config import structure
    from ..platform import resolve_object

    platform = emulator.create_platform()
    if platform is not None:
        return platform
    manager = get_plugin_manager()
    name = emulator.platform
    spec = manager.platform_spec(name, planned=True)
    settings: object = None
    if spec.settings is not None:
        settings = structure(
            emulator.robot_settings(),
            resolve_object(spec.settings),
            path=f"{name} emulator settings",
            source="conformance",
        )
    return manager.create_platform(name, settings, planned=True)


@contextlib.asynccontextmanager
async def open_rig(
    factory: EmulatorFactory,
    robot: Robot,
    *,
    limits: dict[str, Any] | None = None,
    policy: StreamPolicy | None = None,
    timeout: float = 10.0,
    make_platform: Callable[[EmulatorAdapter], Platform] = default_platform,
) -> AsyncIterator[ConformanceRig]:
    """Start an emulator from ``factory`` (configured with ``limits``), connect ``robot``
    to it, yield the rig, and stop both."""
    emulator = factory()
    if not isinstance(emulator, EmulatorAdapter):
        raise TypeError(f"emulator_factory returned {emulator!r}, not an EmulatorAdapter")
    if limits:
        emulator.configure(**limits)
    await emulator.start()
    runtime: RobotRuntime | None = None
    rig: ConformanceRig | None = None
    try:
        runtime = RobotRuntime(
            name="conformance",
            robot=robot,
            platform=make_platform(emulator),
            store=MemoryStore(),
            options=RuntimeOptions(stale_after=None, stream=policy),
            feedback_secret="conformance-secret",
        )
        rig = ConformanceRig(emulator, runtime, timeout=timeout)
        try:
            async with asyncio.timeout(timeout):
                await runtime.start()
        except TimeoutError:
            raise ConformanceFailure(
                f"the robot did not connect to the {emulator.platform} emulator within "
                f"{timeout}s (RobotRuntime.start() -> Platform.start() did not return)"
            ) from None
        yield rig
    finally:
        if rig is not None:
            rig.close()
        if runtime is not None:
            await runtime.stop(timeout=5.0)
        await emulator.stop()


# ---------------------------------------------------------------------- robots
class _Agent:
    """An agent the checks script: ``script(request)`` yields deltas; calls are counted."""

    def __init__(self, script: Callable[[AgentRequest], AsyncIterator[str]]) -> None:
        self.script = script
        self.questions: list[str] = []

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        self.questions.append(request.text)
        async for delta in self.script(request):
            yield delta


def _words_agent(prefix: str, count: int, *, pause: float = 0.0, per_chunk: int = 1) -> _Agent:
    """An agent answering ``count`` numbered words, ``per_chunk`` words per delta."""
    words = numbered(prefix, count)

    async def script(request: AgentRequest) -> AsyncIterator[str]:
        for start in range(0, count, per_chunk):
            yield "".join(f"{w} " for w in words[start : start + per_chunk])
            if pause:
                await asyncio.sleep(pause)

    return _Agent(script)


class _PongRobot(Robot):
    async def on_message(self, message: Message, reply: Reply) -> None:
        await reply.text(f"pong {message.text}")


class _SilentRobot(Robot):
    async def on_message(self, message: Message, reply: Reply) -> None:
        return None


class _ButtonRobot(Robot):
    """Answers with a card of two (non-feedback) buttons; Approve replaces the card,
    Reject answers with a text message."""

    def __init__(self) -> None:
        super().__init__()
        self.actions: list[CardAction] = []

    async def on_message(self, message: Message, reply: Reply) -> None:
        await reply.card(
            Card(
                title="Approval",
                elements=(
                    Markdown(text=f"Request {message.text}"),
                    Actions(
                        buttons=(
                            Button(label="Approve", value="approve", style="primary"),
                            Button(label="Reject", value="reject", style="danger"),
                        )
                    ),
                ),
            )
        )

    async def on_action(self, action: CardAction, reply: ActionReply) -> None:
        self.actions.append(action)
        if action.value == "approve":
            await reply.replace(
                Card(title="Approval", elements=(Markdown(text=f"Approved by {action.sender.id}"),))
            )
        else:
            await reply.text(f"Rejected by {action.sender.id}")


class _ReaderRobot(Robot):
    """Reads every attachment and says its size and SHA-256."""

    async def on_message(self, message: Message, reply: Reply) -> None:
        await self._read(message, reply)

    async def on_empty_message(self, message: Message, reply: Reply) -> None:
        await self._read(message, reply)

    async def _read(self, message: Message, reply: Reply) -> None:
        seen = []
        for attachment in message.attachments:
            data = await attachment.read()
            digest = hashlib.sha256(data).hexdigest()
            seen.append(f"{attachment.kind} {len(data)} bytes sha256={digest}")
        await reply.text("; ".join(seen) or "no attachments")


class _UploadRobot(Robot):
    """Sends an image (``image``) or a file (``file``)."""

    file_content = b"conformance report\n" * 8

    async def on_message(self, message: Message, reply: Reply) -> None:
        if message.text == "file":
            await reply.file(self.file_content, name="report.txt")
        else:
            await reply.image(PNG_PIXEL, name="chart.png")


class _LongTextRobot(Robot):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    async def on_message(self, message: Message, reply: Reply) -> None:
        await reply.text(self.text)


# ---------------------------------------------------------------------- the suite
def _skip_without_cards(caps: Capabilities) -> None:
    if not caps.cards:
        pytest.skip("the platform has no cards (Capabilities.cards is False)")


def _skip_unless_streaming(caps: Capabilities) -> None:
    _skip_without_cards(caps)
    if caps.streaming is StreamingMode.BUFFERED:
        pytest.skip("the platform shows answers only when done (StreamingMode.BUFFERED)")


def _expect_limit(caps: Capabilities, name: str, wanted: float) -> None:
    """Skip when the platform has no such limit; fail when configure() did not reach it."""
    declared = getattr(caps, name)
    if declared is None:
        pytest.skip(f"the platform declares no {name} (Capabilities.{name} is None)")
    if declared != wanted:
        raise ConformanceFailure(
            f"EmulatorAdapter.configure({name}={wanted!r}) did not reach the platform: its "
            f"Capabilities.{name} is {declared!r}"
        )


def _in_order(text: str, prefix: str, expected: list[str], where: str) -> None:
    seen = tokens(text, prefix)
    if seen != expected:
        missing = [t for t in expected if t not in seen]
        raise ConformanceFailure(
            f"{where}: expected the {len(expected)} words {expected[0]}..{expected[-1]} once "
            f"each, in order; got {len(seen)} (missing {missing[:5]}, first seen {seen[:5]})"
        )


class PlatformConformance:
    """The conformance checks. Subclass it as ``Test...`` and override ``emulator_factory``.

    Class attributes tune the checks for a platform: :attr:`timeout` (seconds any one
    expectation may take), :attr:`concurrent_answers`, :attr:`stream_policy`,
    :attr:`inbound_attachment`, :attr:`small_text` and :attr:`short_lifetime`.
    Override :meth:`make_platform` when the platform is not built from the adapter's
    ``create_platform()`` or ``robot_settings()`` and the registered platform spec.
    """

    if _HAS_PYTEST_ASYNCIO:
        pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.asyncio]

    timeout: ClassVar[float] = 10.0
    concurrent_answers: ClassVar[int] = 50
    """Conversations answered at once by the concurrency check."""
    stream_policy: ClassVar[StreamPolicy] = StreamPolicy(
        min_interval=0.05,
        agent_timeout=20.0,
        final_deadline=10.0,
        retry_backoff=0.02,
        max_backoff=0.2,
        rate_limit_backoff=0.05,
    )
    """Small intervals and backoffs keep the suite fast; the platform's rate limits still
    apply through the limiter."""
    inbound_attachment: ClassVar[tuple[str, str, bytes]] = ("image", "pixel.png", PNG_PIXEL)
    """What the attachment check sends: ``(kind, name, content)``."""
    small_text: ClassVar[int] = 300
    """The card (and message) size limit the splitting checks configure, in ``text_unit``."""
    short_lifetime: ClassVar[float] = 1.0
    """The stream lifetime, in seconds, the lifetime check configures."""

    @pytest.fixture
    def emulator_factory(self) -> EmulatorFactory:
        """Override: return a callable that makes a fresh, unstarted emulator adapter."""
        raise NotImplementedError(
            f"{type(self).__name__} must override the emulator_factory fixture: "
            "return a callable making a fresh EmulatorAdapter of your platform"
        )

    def make_platform(self, emulator: EmulatorAdapter) -> Platform:
        """The platform connection of the robot under test (see :func:`default_platform`)."""
        return default_platform(emulator)

    def rig(
        self,
        factory: EmulatorFactory,
        robot: Robot,
        *,
        limits: dict[str, Any] | None = None,
        policy: StreamPolicy | None = None,
    ) -> contextlib.AbstractAsyncContextManager[ConformanceRig]:
        """A started emulator with ``robot`` connected (see :func:`open_rig`)."""
        return open_rig(
            factory,
            robot,
            limits=limits,
            policy=policy or self.stream_policy,
            timeout=self.timeout,
            make_platform=self.make_platform,
        )

    # ------------------------------------------------------------------ connection
    async def test_connects_and_closes(self, emulator_factory: EmulatorFactory) -> None:
        """The robot connects, a message goes in and a reply comes out, and the platform
        closes (twice without error)."""
        async with self.rig(emulator_factory, _PongRobot()) as rig:
            assert rig.platform.describe(), "Platform.describe() returned nothing"
            conversation = rig.conversation("connect")
            await rig.say("ping", conversation_id=conversation)
            await rig.robot_message(conversation, "pong ping")
            await rig.runtime.stop()
            await rig.platform.close()  # idempotent

    # ------------------------------------------------------------------ answers
    @pytest.mark.parametrize("where", ["group", "direct"])
    async def test_answer_lifecycle(self, emulator_factory: EmulatorFactory, where: str) -> None:
        """A message (@-mentioning the robot in a group, or one-to-one) gets a thinking card,
        streamed updates, then the final card with the whole answer and the four feedback
        buttons, in one card."""
        first_shown = asyncio.Event()
        words = numbered("life", 8)

        async def script(request: AgentRequest) -> AsyncIterator[str]:
            yield f"{words[0]} "
            await first_shown.wait()  # until the emulator showed it as an update
            for word in words[1:]:
                yield f"{word} "
                await asyncio.sleep(0.01)

        agent = _Agent(script)
        async with self.rig(emulator_factory, Robot(agent=agent)) as rig:
            _skip_unless_streaming(rig.capabilities)
            conversation = rig.conversation(where)
            await rig.say(
                "How does the lifecycle go?", conversation_id=conversation, group=where == "group"
            )

            def update() -> View | None:
                for card in rig.cards(conversation):
                    for view in rig.history(card["id"]):
                        if view["status"] == "streaming" and words[0] in card_text(view):
                            return view
                return None

            await rig.until(
                f"a streaming update showing {words[0]!r}", update, conversation_id=conversation
            )
            first_shown.set()
            final = await rig.final_card(conversation, words[-1])
            history = rig.history(final["id"])
            assert history and history[0]["status"] == "thinking", (
                f"the answer card's first state is {history[0]['status'] if history else None},"
                " not thinking"
            )
            _in_order(card_text(final), "life", words, "the final card")
            labels = [b.get("label") for b in card_buttons(final)]
            assert labels == FEEDBACK_LABELS, f"final card buttons are {labels}"
            assert len(rig.cards(conversation)) == 1, rig.describe(conversation)
            assert agent.questions == ["How does the lifecycle go?"], agent.questions

    async def test_feedback_is_stored(self, emulator_factory: EmulatorFactory) -> None:
        """Pressing a feedback button of the final card stores verified feedback with the
        question, the answer and the card."""
        async with self.rig(emulator_factory, Robot(agent=_words_agent("fb", 3))) as rig:
            _skip_without_cards(rig.capabilities)
            conversation = rig.conversation("feedback")
            await rig.say("Rate me", conversation_id=conversation, group=True)
            final = await rig.final_card(conversation, "fb002")
            await rig.press(final, FeedbackRating.VERY_HELPFUL.label)

            async def stored() -> list[Feedback] | None:
                return await rig.runtime.store.list_feedback(robot=rig.runtime.name) or None

            feedback = await rig.until_async("the feedback in the store", stored)
            assert len(feedback) == 1, feedback
            item = feedback[0]
            assert item.rating is FeedbackRating.VERY_HELPFUL, item.rating
            assert item.sender.id == USER, item.sender
            assert item.question == "Rate me", item.question
            _in_order(item.answer, "fb", numbered("fb", 3), "the stored answer")
            assert item.card_id == final["id"], (item.card_id, final["id"])
            assert rig.runtime.stats.forged == 0

    async def test_agent_error_ends_in_error_card(self, emulator_factory: EmulatorFactory) -> None:
        """An agent that raises ends in an error card that keeps the text so far."""

        async def script(request: AgentRequest) -> AsyncIterator[str]:
            yield "partial000 "
            raise RuntimeError("conformance: the agent failed on purpose")

        async with self.rig(emulator_factory, Robot(agent=_Agent(script))) as rig:
            _skip_without_cards(rig.capabilities)
            conversation = rig.conversation("error")
            await rig.say("Fail please", conversation_id=conversation)
            card = await rig.card_with_status(conversation, "error")
            assert "partial000" in card_text(card), card_text(card)
            assert not card_buttons(card), "an error card carries no feedback buttons"

    async def test_agent_timeout_ends_in_error_card(
        self, emulator_factory: EmulatorFactory
    ) -> None:
        """An agent that takes longer than ``agent_timeout`` ends in an error card."""
        never = asyncio.Event()

        async def script(request: AgentRequest) -> AsyncIterator[str]:
            yield "slow000 "
            await never.wait()

        policy = StreamPolicy(
            min_interval=self.stream_policy.min_interval,
            agent_timeout=0.3,
            retry_backoff=0.02,
            max_backoff=0.2,
        )
        async with self.rig(emulator_factory, Robot(agent=_Agent(script)), policy=policy) as rig:
            _skip_without_cards(rig.capabilities)
            conversation = rig.conversation("timeout")
            await rig.say("Take your time", conversation_id=conversation)
            card = await rig.card_with_status(conversation, "error")
            assert "slow000" in card_text(card), card_text(card)

    async def test_shutdown_mid_answer_ends_in_interrupted_card(
        self, emulator_factory: EmulatorFactory
    ) -> None:
        """Stopping the runtime while an answer streams closes its card as interrupted,
        with the text so far."""
        never = asyncio.Event()

        async def script(request: AgentRequest) -> AsyncIterator[str]:
            yield "cut000 cut001 "
            await never.wait()

        async with self.rig(emulator_factory, Robot(agent=_Agent(script))) as rig:
            _skip_unless_streaming(rig.capabilities)
            conversation = rig.conversation("shutdown")
            await rig.say("Keep talking", conversation_id=conversation)

            def streaming() -> bool:
                return any(
                    c["status"] == "streaming" and "cut001" in card_text(c)
                    for c in rig.cards(conversation)
                )

            await rig.until("the answer streaming", streaming, conversation_id=conversation)
            async with asyncio.timeout(self.timeout):
                await rig.runtime.stop()
            card = await rig.card_with_status(conversation, "interrupted")
            assert "cut001" in card_text(card), card_text(card)

    async def test_empty_message_gets_the_default_reply(
        self, emulator_factory: EmulatorFactory
    ) -> None:
        """A message with no text (a bare @-mention) gets the robot's request for text; the
        agent is not called and no card is sent."""
        agent = _words_agent("empty", 2)
        robot = Robot(agent=agent)
        async with self.rig(emulator_factory, robot) as rig:
            conversation = rig.conversation("empty")
            await rig.say("", conversation_id=conversation, group=True, mention=True)
            await rig.robot_message(conversation, robot.empty_message_reply)
            await rig.runtime.wait_idle(timeout=self.timeout)
            assert agent.questions == [], f"the agent was called with {agent.questions}"
            assert rig.cards(conversation) == [], rig.describe(conversation)

    # ------------------------------------------------------------------ outbound
    async def test_proactive_send_arrives(self, emulator_factory: EmulatorFactory) -> None:
        """``robot.to(Target.to_user(...))`` and ``robot.send(Target.to_group(...))`` arrive
        where they were sent, without any message to answer."""
        robot = _SilentRobot()
        async with self.rig(emulator_factory, robot) as rig:
            if not rig.capabilities.proactive:
                pytest.skip("the platform cannot speak first (Capabilities.proactive is False)")
            name = rig.platform.name
            user = "conformance-proactive-user"
            group = rig.conversation("proactive-group")
            # the user and the group exist on the platform before the robot speaks first
            await rig.say(
                "hello", conversation_id=rig.conversation("proactive-dm"), group=False, user_id=user
            )
            await rig.say("hello", conversation_id=group, group=True)
            await rig.runtime.wait_idle(timeout=self.timeout)

            await robot.to(Target.to_user(name, user)).markdown("proactive000 to the user")
            message = await rig.robot_message(None, "proactive000")
            assert message["conversation_id"] == user or user in message.get("receivers", ()), (
                f"the direct message went to {message['conversation_id']!r} "
                f"(receivers {message.get('receivers')}), not to user {user!r}"
            )
            await robot.send(Target.to_group(name, group), "proactive001 to the group")
            await rig.robot_message(group, "proactive001")

    async def test_button_press_replaces_the_card(self, emulator_factory: EmulatorFactory) -> None:
        """A press of a (non-feedback) button reaches ``on_action``, and
        ``reply.replace(card)`` replaces the pressed card."""
        robot = _ButtonRobot()
        async with self.rig(emulator_factory, robot) as rig:
            _skip_without_cards(rig.capabilities)
            conversation = rig.conversation("replace")
            await rig.say("r000", conversation_id=conversation, group=True)
            card = await rig.until(
                "the card with buttons",
                lambda: next((c for c in rig.cards(conversation) if card_buttons(c)), None),
                conversation_id=conversation,
            )
            await rig.press(card, "Approve")
            await rig.until(
                "the pressed card replaced by 'Approved by ...'",
                lambda: any(
                    c["id"] == card["id"] and f"Approved by {USER}" in card_text(c)
                    for c in rig.cards(conversation)
                ),
                conversation_id=conversation,
            )
            assert [a.value for a in robot.actions] == ["approve"], robot.actions
            assert robot.actions[0].card_id == card["id"], (robot.actions[0].card_id, card["id"])

    async def test_button_press_answered_with_text(self, emulator_factory: EmulatorFactory) -> None:
        """``reply.text`` in ``on_action`` speaks into the pressed card's conversation."""
        robot = _ButtonRobot()
        async with self.rig(emulator_factory, robot) as rig:
            _skip_without_cards(rig.capabilities)
            conversation = rig.conversation("press-text")
            await rig.say("t000", conversation_id=conversation, group=True)
            card = await rig.until(
                "the card with buttons",
                lambda: next((c for c in rig.cards(conversation) if card_buttons(c)), None),
                conversation_id=conversation,
            )
            await rig.press(card, "Reject")
            await rig.robot_message(conversation, f"Rejected by {USER}")

    async def test_attachment_is_read(self, emulator_factory: EmulatorFactory) -> None:
        """An attachment a user sends is read by the robot: ``attachment.read()`` returns the
        very bytes sent."""
        async with self.rig(emulator_factory, _ReaderRobot()) as rig:
            if not rig.capabilities.downloads:
                pytest.skip("the platform cannot download attachments (Capabilities.downloads)")
            kind, name, data = self.inbound_attachment
            conversation = rig.conversation("attachment")
            await rig.say(
                "", conversation_id=conversation, group=False, attachments=[(kind, name, data)]
            )
            digest = hashlib.sha256(data).hexdigest()
            await rig.robot_message(conversation, f"{kind} {len(data)} bytes sha256={digest}")

    async def test_image_is_sent(self, emulator_factory: EmulatorFactory) -> None:
        """``reply.image(...)`` reaches the platform as an image of the right size."""
        async with self.rig(emulator_factory, _UploadRobot()) as rig:
            if not rig.capabilities.images:
                pytest.skip("the platform cannot send images (Capabilities.images is False)")
            await self._expect_upload(rig, "image", "image", "chart.png", len(PNG_PIXEL))

    async def test_file_is_sent(self, emulator_factory: EmulatorFactory) -> None:
        """``reply.file(...)`` reaches the platform as a file of the right size."""
        async with self.rig(emulator_factory, _UploadRobot()) as rig:
            if not rig.capabilities.files:
                pytest.skip("the platform cannot send files (Capabilities.files is False)")
            size = len(_UploadRobot.file_content)
            await self._expect_upload(rig, "file", "file", "report.txt", size)

    async def _expect_upload(
        self, rig: ConformanceRig, text: str, kind: str, name: str, size: int
    ) -> None:
        conversation = rig.conversation(f"upload-{kind}")
        await rig.say(text, conversation_id=conversation)
        upload = await rig.until(
            f"an uploaded {kind} in the conversation",
            lambda: next(
                (u for u in rig.emulator.uploads() if u.get("conversation_id") == conversation),
                None,
            ),
            conversation_id=conversation,
        )
        assert upload["kind"] == kind, upload
        assert upload["size"] == size, f"uploaded {upload['size']} bytes, sent {size}"
        assert upload.get("name") in (None, name), upload

    # ------------------------------------------------------------------ limits
    async def test_long_answer_is_split(self, emulator_factory: EmulatorFactory) -> None:
        """An answer longer than the card size limit (configured small) is delivered whole,
        in order, over several cards; the last one is final with the feedback buttons."""
        words = numbered("seg", 150)
        agent = _words_agent("seg", len(words), per_chunk=25)
        limits = {"max_text": self.small_text}
        async with self.rig(emulator_factory, Robot(agent=agent), limits=limits) as rig:
            _skip_without_cards(rig.capabilities)
            _expect_limit(rig.capabilities, "max_text", self.small_text)
            conversation = rig.conversation("split")
            await rig.say("Tell me everything", conversation_id=conversation)
            await rig.final_card(conversation, words[-1])
            await rig.runtime.wait_idle(timeout=self.timeout)
            cards = rig.cards(conversation)
            assert len(cards) >= 2, f"one card held the whole answer: {rig.describe(conversation)}"
            assert all(c["status"] in TERMINAL for c in cards), rig.describe(conversation)
            _in_order("\n".join(card_text(c) for c in cards), "seg", words, "the cards")
            labels = [b.get("label") for b in card_buttons(cards[-1])]
            assert labels == FEEDBACK_LABELS, f"the last card's buttons are {labels}"

    async def test_long_text_message_is_split(self, emulator_factory: EmulatorFactory) -> None:
        """A text longer than the message size limit (configured small) arrives whole, in
        order, over several messages."""
        words = numbered("msg", 120)
        robot = _LongTextRobot(" ".join(words))
        limits = {"max_message_text": self.small_text}
        async with self.rig(emulator_factory, robot, limits=limits) as rig:
            _expect_limit(rig.capabilities, "max_message_text", self.small_text)
            conversation = rig.conversation("split-text")
            await rig.say("Send the log", conversation_id=conversation)
            await rig.robot_message(conversation, words[-1])
            messages = rig.robot_messages(conversation)
            assert len(messages) >= 2, f"one message held the whole text: {messages}"
            _in_order("\n".join(m["text"] for m in messages), "msg", words, "the messages")

    async def test_stream_outlives_its_lifetime(self, emulator_factory: EmulatorFactory) -> None:
        """An answer that streams for longer than the platform's stream lifetime (configured
        short) is completed: the whole text, in order, ending in a final card, with no call
        refused for an expired stream."""
        lifetime = self.short_lifetime
        words = numbered("life", 10)
        agent = _words_agent("life", len(words), pause=2 * lifetime / len(words))
        limits = {"stream_lifetime": lifetime}
        async with self.rig(emulator_factory, Robot(agent=agent), limits=limits) as rig:
            _skip_unless_streaming(rig.capabilities)
            _expect_limit(rig.capabilities, "stream_lifetime", lifetime)
            conversation = rig.conversation("lifetime")
            await rig.say("A long story", conversation_id=conversation)
            await rig.final_card(conversation, words[-1])
            await rig.runtime.wait_idle(timeout=self.timeout)
            cards = rig.cards(conversation)
            assert all(c["status"] in TERMINAL for c in cards), rig.describe(conversation)
            _in_order("\n".join(card_text(c) for c in cards), "life", words, "the cards")
            labels = [b.get("label") for b in card_buttons(cards[-1])]
            assert labels == FEEDBACK_LABELS, f"the last card's buttons are {labels}"
            if rig.capabilities.lifetime_remedy is LifetimeRemedy.RENEW:
                assert len(cards) == 1, f"a renewed stream needs one card: {len(cards)}"
            else:
                assert len(cards) >= 2, "the answer outlived its card without a new one"
            refused = [c for c in rig.emulator.state()["calls"] if int(c["status"]) >= 400]
            assert not refused, f"calls were refused: {refused}"

    async def test_concurrent_answers_stay_within_rate_limits(
        self, emulator_factory: EmulatorFactory
    ) -> None:
        """Many conversations answered at once all end in a final card, and the platform
        refused no call for its rate limits (the client-side limiter kept under them)."""
        count = self.concurrent_answers
        agent = _words_agent("many", 3, pause=0.02)
        async with self.rig(emulator_factory, Robot(agent=agent)) as rig:
            _skip_without_cards(rig.capabilities)
            conversations = [rig.conversation("many") for _ in range(count)]
            await asyncio.gather(
                *(
                    rig.say("Hi all", conversation_id=c, group=True, user_id=rig.user_for(c))
                    for c in conversations
                )
            )
            wanted = set(conversations)

            def finals() -> list[View] | None:
                done = [
                    c
                    for c in rig.emulator.state()["cards"]
                    if c.get("conversation_id") in wanted and c.get("status") == "final"
                ]
                return done if len(done) >= count else None

            done = await rig.until(
                f"{count} final cards", finals, timeout=max(self.timeout, count * 0.5)
            )
            await rig.runtime.wait_idle(timeout=self.timeout)
            assert {c["conversation_id"] for c in done} == wanted
            for card in done:
                _in_order(card_text(card), "many", numbered("many", 3), f"card {card['id']}")
                labels = [b.get("label") for b in card_buttons(card)]
                assert labels == FEEDBACK_LABELS, f"card {card['id']} buttons are {labels}"
            limited = [c for c in rig.emulator.state()["calls"] if c.get("rate_limited")]
            assert not limited, f"{len(limited)} calls were refused as rate limited: {limited[:3]}"
            assert rig.runtime.stats.answered == count, rig.runtime.stats

    # ------------------------------------------------------------------ delivery
    async def test_redelivery_is_answered_once(self, emulator_factory: EmulatorFactory) -> None:
        """A message the platform pushes again (while answered, and after) gets one answer."""
        release = asyncio.Event()

        async def script(request: AgentRequest) -> AsyncIterator[str]:
            yield f"re-{request.text}-000 "
            if request.text == "first":
                await release.wait()
            yield f"re-{request.text}-001 "

        agent = _Agent(script)
        async with self.rig(emulator_factory, Robot(agent=agent)) as rig:
            conversation = rig.conversation("redeliver")
            cards = rig.capabilities.cards

            def answers() -> list[str]:
                if cards:
                    return [card_text(c) for c in rig.cards(conversation)]
                return [m["text"] for m in rig.robot_messages(conversation)]

            async def answered(text: str) -> None:
                if cards:
                    await rig.final_card(conversation, text)
                else:  # a platform without cards answers with messages
                    await rig.robot_message(conversation, text)

            message_id = await rig.say("first", conversation_id=conversation)
            await rig.until(
                "the first answer under way",
                lambda: bool(agent.questions) or None,
                conversation_id=conversation,
            )
            await rig.emulator.redeliver(message_id)  # while it is being answered
            release.set()
            await answered("re-first-001")
            await rig.emulator.redeliver(message_id)  # after it was answered
            await rig.say("second", conversation_id=conversation)
            await answered("re-second-001")
            await rig.runtime.wait_idle(timeout=self.timeout)
            assert agent.questions == ["first", "second"], f"the agent was asked {agent.questions}"
            firsts = [a for a in answers() if "re-first" in a]
            assert len(firsts) == 1, rig.describe(conversation)

    async def test_reconnects_after_a_drop(self, emulator_factory: EmulatorFactory) -> None:
        """After the emulator drops the connection, the platform reconnects on its own and
        messages are answered again."""
        async with self.rig(emulator_factory, _PongRobot()) as rig:
            conversation = rig.conversation("drop")
            await rig.say("before", conversation_id=conversation)
            await rig.robot_message(conversation, "pong before")
            await rig.emulator.fault("drop")
            await rig.say("after", conversation_id=conversation)
            await rig.robot_message(conversation, "pong after")
            await rig.emulator.fault("drop")
            await rig.say("again", conversation_id=conversation)
            await rig.robot_message(conversation, "pong again")

    async def test_lost_answers_never_show_twice(self, emulator_factory: EmulatorFactory) -> None:
        """With a share of calls taking effect but their answers lost (a time-out after the
        platform acted), every answer still ends in exactly one final card with the whole
        text, and no text is posted twice: the plugin maps the core's idempotency key to
        the platform's field, or declares the operation not idempotent."""
        agent = _words_agent("lost", 4, pause=0.01)
        async with self.rig(emulator_factory, Robot(agent=agent)) as rig:
            _skip_without_cards(rig.capabilities)
            try:
                await rig.emulator.fault("lost_answers", 0.3)
            except (NotImplementedError, ValueError) as exc:  # no such fault in this emulator
                pytest.skip(f"the emulator cannot lose answers: {exc}")
            conversations = [rig.conversation("lost") for _ in range(8)]
            for conversation in conversations:
                await rig.say(
                    "Still there?",
                    conversation_id=conversation,
                    user_id=rig.user_for(conversation),
                )
            for conversation in conversations:
                card = await rig.final_card(conversation, "lost003")
                _in_order(card_text(card), "lost", numbered("lost", 4), f"card {card['id']}")
            await rig.runtime.wait_idle(timeout=self.timeout)
            await rig.emulator.fault("lost_answers", 0.0)
            for conversation in conversations:
                cards = rig.cards(conversation)
                assert len(cards) == 1, rig.describe(conversation)

    async def test_lost_open_then_failing_calls_leave_one_card(
        self, emulator_factory: EmulatorFactory
    ) -> None:
        """The first call of an answer (the one that opens its card) takes effect and its
        answer is lost; then every call fails (server errors) until the agent is done and
        two more calls failed. The answer still ends in exactly one card, final, with the
        whole text: a card the lost call may have made is reached again under the same
        key and closed, never left thinking beside a second card."""
        release, done = asyncio.Event(), asyncio.Event()

        async def script(request: AgentRequest) -> AsyncIterator[str]:
            await release.wait()
            for word in numbered("open", 4):
                yield f"{word} "
            done.set()

        async with self.rig(emulator_factory, Robot(agent=_Agent(script))) as rig:
            _skip_unless_streaming(rig.capabilities)

            def calls() -> list[View]:
                return list(rig.emulator.state()["calls"])

            def failed() -> int:
                return sum(1 for c in calls() if int(c["status"]) >= 400)

            try:
                await rig.emulator.fault("lost_answers", 1.0)
            except (NotImplementedError, ValueError) as exc:  # no such fault in this emulator
                pytest.skip(f"the emulator cannot lose answers: {exc}")
            conversation = rig.conversation("lostopen")
            before = len(calls())
            await rig.say(
                "Still there?", conversation_id=conversation, user_id=rig.user_for(conversation)
            )
            await rig.until("the answer's first call", lambda: len(calls()) > before)
            await rig.emulator.fault("errors", 1.0)
            await rig.emulator.fault("lost_answers", 0.0)
            release.set()
            await rig.until("the agent's end", done.is_set)
            refused = failed()
            await rig.until("two more failed calls", lambda: failed() >= refused + 2)
            await rig.emulator.fault("errors", 0.0)
            card = await rig.final_card(conversation, "open003")
            _in_order(card_text(card), "open", numbered("open", 4), f"card {card['id']}")
            await rig.runtime.wait_idle(timeout=self.timeout)
            cards = rig.cards(conversation)
            if len(cards) != 1 or cards[0].get("status") != "final":
                raise ConformanceFailure(
                    "after a lost open and failing calls, expected exactly one card, final; "
                    f"the emulator shows: {rig.describe(conversation)}"
                )

    @pytest.mark.parametrize("fault", ["errors", "rate_limit"])
    async def test_answers_survive_failing_calls(
        self, emulator_factory: EmulatorFactory, fault: str
    ) -> None:
        """With a share of API calls failing (server errors, or refused as rate limited),
        every answer still ends in its final card with the whole text."""
        agent = _words_agent("ok", 4, pause=0.01)
        async with self.rig(emulator_factory, Robot(agent=agent)) as rig:
            _skip_without_cards(rig.capabilities)
            await rig.emulator.fault(fault, 0.3)

            def failed_calls() -> int:
                return sum(1 for c in rig.emulator.state()["calls"] if int(c["status"]) >= 400)

            for _ in range(6):  # batches of 5 answers, until the fault made calls fail
                conversations = [rig.conversation(fault) for _ in range(5)]
                for conversation in conversations:
                    await rig.say(
                        "Still there?",
                        conversation_id=conversation,
                        user_id=rig.user_for(conversation),
                    )
                for conversation in conversations:
                    card = await rig.final_card(conversation, "ok003")
                    _in_order(card_text(card), "ok", numbered("ok", 4), f"card {card['id']}")
                if failed_calls():
                    break
            await rig.emulator.fault(fault, 0.0)
            assert failed_calls(), f"fault {fault!r} with value 0.3 made no call fail"
