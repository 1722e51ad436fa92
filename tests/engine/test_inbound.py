"""The inbound pipeline: dedupe, strategies, the access policy, stale drop, backpressure."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import attrs
import pytest

from imrobots.agents import AgentRequest
from imrobots.cards import CardStatus
from imrobots.models import Message
from imrobots.plugins import PluginManager
from imrobots.policy import AccessPolicy
from imrobots.robot import Reply, Robot
from imrobots.streaming import AnswerStatus

from .conftest import FAST, Factory, Recorder, answer_cards, eventually


class Gate:
    """An agent that starts answering at once and finishes once the test opens its gate."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.started: list[str] = []
        self.running = 0
        self.most_running = 0

    async def __call__(self, request: AgentRequest) -> AsyncIterator[str]:
        self.started.append(request.text)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            yield f"working on {request.text}"
            await self.open.wait()
            yield f", answer to {request.text}"  # a delta: the answer is now final_text()
        finally:
            self.running -= 1

    @staticmethod
    def final_text(text: str) -> str:
        return f"working on {text}, answer to {text}"


# --------------------------------------------------------------------------- dedupe


@pytest.mark.parametrize("strategy", ["queue", "concurrent"])
async def test_a_redelivery_while_in_flight_is_handled_once(
    make_runtime: Factory, strategy: str
) -> None:
    gate = Gate()
    hooks = Recorder()
    platform, runtime = await make_runtime(agent=gate, hooks=hooks, strategy=strategy, **FAST)
    message = await platform.say("hello", message_id="m-1")
    await eventually(lambda: gate.started == ["hello"])
    again = await platform.say("hello", message_id="m-1")  # the platform redelivers
    gate.open.set()
    await runtime.wait_idle(timeout=5)

    assert gate.started == ["hello"]
    assert [m.id for m in hooks.received] == ["m-1"]
    [card] = answer_cards(platform, message)
    assert answer_cards(platform, again) == [card]
    assert card.status is CardStatus.FINAL
    assert runtime.stats.duplicates == 1
    assert runtime.stats.answered == 1


@pytest.mark.parametrize("strategy", ["queue", "concurrent", "drop", "debounce"])
async def test_a_redelivery_after_completion_is_dropped(
    make_runtime: Factory, strategy: str
) -> None:
    gate = Gate()
    gate.open.set()
    platform, runtime = await make_runtime(agent=gate, strategy=strategy, debounce=0.01, **FAST)
    await platform.say("hello", message_id="m-1")
    await runtime.wait_idle(timeout=5)
    await platform.say("hello", message_id="m-1")
    await runtime.wait_idle(timeout=5)
    assert gate.started == ["hello"]
    assert len(platform.cards) == 1
    assert runtime.stats.duplicates == 1


async def test_a_redelivery_does_not_interrupt_its_own_answer(make_runtime: Factory) -> None:
    gate = Gate()
    hooks = Recorder()
    platform, runtime = await make_runtime(agent=gate, hooks=hooks, interrupt=True, **FAST)
    message = await platform.say("hello", message_id="m-1")
    await eventually(lambda: gate.started == ["hello"])
    await platform.say("hello", message_id="m-1")  # redelivered: not a newer message
    gate.open.set()
    await runtime.wait_idle(timeout=5)

    [card] = answer_cards(platform, message)
    assert card.status is CardStatus.FINAL and card.text == Gate.final_text("hello")
    assert [r.status for _, r in hooks.finished] == [AnswerStatus.FINAL]
    assert runtime.stats.duplicates == 1


async def test_a_redelivery_is_not_refused_as_busy_under_drop(make_runtime: Factory) -> None:
    gate = Gate()
    hooks = Recorder()
    platform, runtime = await make_runtime(agent=gate, hooks=hooks, strategy="drop", **FAST)
    await platform.say("hello", message_id="m-1")
    await eventually(lambda: gate.started == ["hello"])
    await platform.say("hello", message_id="m-1")
    gate.open.set()
    await runtime.wait_idle(timeout=5)
    assert hooks.rejected == []
    assert runtime.stats.duplicates == 1


@pytest.mark.parametrize("strategy", ["queue", "drop", "debounce"])
async def test_a_redelivery_mid_answer_leaves_no_arrival_behind(
    make_runtime: Factory, strategy: str
) -> None:
    """A redelivery dropped while its original is being answered (the original's arrival
    already taken by its answer) records no arrival of its own, which nothing would take."""
    gate = Gate()
    platform, runtime = await make_runtime(agent=gate, strategy=strategy, debounce=0.01, **FAST)
    await platform.say("hello", message_id="m-1")
    await eventually(lambda: gate.started == ["hello"])
    await platform.say("hello", message_id="m-1")
    gate.open.set()
    await runtime.wait_idle(timeout=5)
    assert runtime.stats.duplicates == 1 and runtime.stats.answered == 1
    assert runtime._arrivals == {}


async def test_a_refused_redelivery_keeps_its_waiting_originals_arrival(
    make_runtime: Factory,
) -> None:
    """A redelivery of a message still waiting in its lane, dropped or refused (stale),
    leaves the original's arrival time as it was: its latency counts from its arrival."""
    gate = Gate()
    platform, runtime = await make_runtime(agent=gate, stale_after=60.0, **FAST)
    await platform.say("first", message_id="m-1")
    await eventually(lambda: gate.started == ["first"])
    await platform.say("second", message_id="m-2")  # waits behind m-1
    arrived = runtime._arrivals["m-2"]
    await platform.say("second", message_id="m-2")  # dropped: m-2 is queued
    old = datetime.now(UTC) - timedelta(minutes=5)
    await platform.say("second", message_id="m-2", time=old)  # refused: stale
    assert runtime._arrivals == {"m-2": arrived}
    gate.open.set()
    await runtime.wait_idle(timeout=5)
    assert runtime.stats.answered == 2 and runtime.stats.answer_latency.count == 2
    assert runtime._arrivals == {}


class FlakyRobot(Robot):
    """Fails to handle the first delivery of every message."""

    def __init__(self) -> None:
        super().__init__(agent=lambda request: f"answer to {request.text}")
        self.attempts: list[str] = []

    async def on_message(self, message: Message, reply: Reply) -> None:
        self.attempts.append(message.id)
        if self.attempts.count(message.id) == 1:
            raise ConnectionError("the database is down")
        await super().on_message(message, reply)


async def test_a_redelivery_after_a_failed_handling_is_handled(make_runtime: Factory) -> None:
    robot = FlakyRobot()
    platform, runtime = await make_runtime(robot=robot, **FAST)
    message = await platform.say("hello", message_id="m-1")
    await runtime.wait_idle(timeout=5)
    assert runtime.stats.failed == 1
    [error] = answer_cards(platform, message)  # the user is told (issue 12, item 6)
    assert error.status is CardStatus.ERROR

    await platform.say("hello", message_id="m-1")  # the platform redelivers
    await runtime.wait_idle(timeout=5)
    assert robot.attempts == ["m-1", "m-1"]
    [_, card] = answer_cards(platform, message)
    assert card.status is CardStatus.FINAL and card.text == "answer to hello"
    assert runtime.stats.answered == 1 and runtime.stats.duplicates == 0


# --------------------------------------------------------------------------- strategies


async def test_queue_answers_one_conversation_in_arrival_order(make_runtime: Factory) -> None:
    spans: list[tuple[str, float, float]] = []
    texts = [f"q{i}" for i in range(5)]

    async def agent(request: AgentRequest) -> AsyncIterator[str]:
        start = time.monotonic()
        # the earliest question takes longest: concurrency would reorder the answers
        if request.text in texts:
            await asyncio.sleep(0.05 * (5 - texts.index(request.text)))
        yield f"answer to {request.text}"
        spans.append((request.text, start, time.monotonic()))

    hooks = Recorder()
    platform, runtime = await make_runtime(agent=agent, hooks=hooks, **FAST)
    other = await platform.say("other", conversation="elsewhere")
    for text in texts:
        await platform.say(text)
    await runtime.wait_idle(timeout=10)

    in_order = [name for name, _, _ in spans if name != "other"]
    assert in_order == texts
    ours = [span for span in spans if span[0] != "other"]
    for (_, _, end), (_, start, _) in itertools.pairwise(ours):
        assert start >= end, "two answers of one conversation overlapped"
    finished = [m.text for m, _ in hooks.finished if m.conversation.id == "conversation-1"]
    assert finished == texts
    # another conversation is not held up by this one
    assert hooks.finished[0][0].id == other.id


async def test_drop_ignores_messages_while_busy(make_runtime: Factory) -> None:
    gate = Gate()
    hooks = Recorder()
    platform, runtime = await make_runtime(agent=gate, hooks=hooks, strategy="drop", **FAST)
    first = await platform.say("first")
    await eventually(lambda: gate.started == ["first"])
    second = await platform.say("second")
    elsewhere = await platform.say("elsewhere", conversation="other")
    gate.open.set()
    await runtime.wait_idle(timeout=5)

    assert [(m.id, reason) for m, reason in hooks.rejected] == [
        (second.id, "busy answering an earlier message")
    ]
    assert answer_cards(platform, second) == []
    assert answer_cards(platform, first)[0].status is CardStatus.FINAL
    assert answer_cards(platform, elsewhere)[0].status is CardStatus.FINAL
    # not busy any more: the next message is answered
    third = await platform.say("third")
    await runtime.wait_idle(timeout=5)
    assert answer_cards(platform, third)[0].text == Gate.final_text("third")


async def test_debounce_answers_the_last_of_a_burst(make_runtime: Factory) -> None:
    gate = Gate()
    gate.open.set()
    hooks = Recorder()
    platform, runtime = await make_runtime(
        agent=gate, hooks=hooks, strategy="debounce", debounce=0.2, **FAST
    )
    said = time.monotonic()
    burst = [await platform.say(text) for text in ("I have", "a question", "about refunds")]
    await runtime.wait_idle(timeout=5)

    assert gate.started == ["about refunds"]
    assert time.monotonic() - said >= 0.2
    assert [(m.id, r) for m, r in hooks.rejected] == [
        (burst[0].id, "superseded by a newer message"),
        (burst[1].id, "superseded by a newer message"),
    ]
    assert [answer_cards(platform, m) for m in burst[:2]] == [[], []]
    [card] = answer_cards(platform, burst[2])
    assert card.text == Gate.final_text("about refunds")


# --------------------------------------------------------------------------- policy, stale


async def test_policy_rejected_messages_fire_the_hook_and_get_no_card(
    make_runtime: Factory,
) -> None:
    gate = Gate()
    gate.open.set()
    hooks = Recorder()
    policy = AccessPolicy(deny_users=("mallory",), require_mention=True)
    platform, runtime = await make_runtime(agent=gate, hooks=hooks, policy=policy, **FAST)
    denied = await platform.say("hi", sender="mallory")
    unmentioned = await platform.say("chatting", conversation="g", group=True, mentioned=False)
    allowed = await platform.say("@bot help", conversation="g", group=True, mentioned=True)
    await runtime.wait_idle(timeout=5)

    assert [(m.id, r) for m, r in hooks.rejected] == [
        (denied.id, "user is denied"),
        (unmentioned.id, "robot not mentioned"),
    ]
    assert [m.id for m in hooks.received] == [allowed.id]
    assert gate.started == ["@bot help"]
    assert [c.reply_to for c in platform.cards.values()] == [allowed.id]
    assert runtime.stats.rejected == 2


async def test_policy_rejection_reaches_a_pluggy_hook(make_runtime: Factory) -> None:
    import imrobots

    class Plugin:
        def __init__(self) -> None:
            self.reasons: list[str] = []

        @imrobots.hookimpl
        def message_rejected(self, robot: str, message: Message, reason: str) -> None:
            self.reasons.append(reason)

    plugin = Plugin()
    manager = PluginManager(load_entry_points=False)
    manager.register(plugin)
    platform, runtime = await make_runtime(
        agent=Gate(), hooks=manager.hook, policy=AccessPolicy(direct=False), **FAST
    )
    await platform.say("hi")
    await runtime.wait_idle(timeout=5)
    assert plugin.reasons == ["direct messages are disabled"]
    assert platform.cards == {}


async def test_stale_messages_are_dropped(make_runtime: Factory) -> None:
    gate = Gate()
    gate.open.set()
    hooks = Recorder()
    platform, runtime = await make_runtime(agent=gate, hooks=hooks, stale_after=60.0, **FAST)
    old = await platform.say("replayed", time=datetime.now(UTC) - timedelta(minutes=5))
    fresh = await platform.say("fresh", time=datetime.now(UTC) - timedelta(seconds=5))
    await runtime.wait_idle(timeout=5)

    [(rejected, reason)] = hooks.rejected
    assert rejected.id == old.id and reason.startswith("stale")
    assert answer_cards(platform, old) == []
    assert answer_cards(platform, fresh)[0].status is CardStatus.FINAL


# --------------------------------------------------------------------------- backpressure


async def test_max_concurrent_caps_running_answers(make_runtime: Factory) -> None:
    gate = Gate()
    platform, runtime = await make_runtime(
        agent=gate, strategy="concurrent", max_concurrent=2, **FAST
    )
    for i in range(6):
        await platform.say(f"q{i}", conversation=f"c{i}")
    await eventually(lambda: len(gate.started) == 2)
    gate.open.set()
    await runtime.wait_idle(timeout=5)
    assert len(gate.started) == 6
    assert gate.most_running == 2
    assert sum(c.status is CardStatus.FINAL for c in platform.cards.values()) == 6


@pytest.mark.parametrize("strategy", ["queue", "concurrent"])
async def test_max_pending_counts_messages_not_conversations(
    make_runtime: Factory, strategy: str
) -> None:
    gate = Gate()
    hooks = Recorder()
    platform, runtime = await make_runtime(
        agent=gate, hooks=hooks, strategy=strategy, max_pending=3, **FAST
    )
    said = [await platform.say(f"q{i}") for i in range(5)]
    gate.open.set()
    await runtime.wait_idle(timeout=5)
    assert [(m.id, r) for m, r in hooks.rejected] == [
        (said[3].id, "overloaded"),
        (said[4].id, "overloaded"),
    ]
    assert len(platform.cards) == 3
    # finished messages no longer count: new ones are accepted again
    later = await platform.say("later")
    await runtime.wait_idle(timeout=5)
    assert answer_cards(platform, later)[0].status is CardStatus.FINAL


class Keeps(Robot):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[Message] = []

    async def on_message(self, message: Message, reply: Reply) -> None:
        self.messages.append(message)


async def test_the_robot_gets_each_message_named_for_it(make_runtime: Factory) -> None:
    """The runtime names the robot on a platform's fresh message; a message already named
    for another robot is copied, not renamed; attachments still download."""
    robot = Keeps()
    platform, runtime = await make_runtime(robot=robot, **FAST)
    plain = await platform.say("hello", message_id="m-plain")
    await platform.say("see file", message_id="m-file", attachments=[("file", "a.txt", b"abc")])
    await runtime.wait_idle(5)
    first, second = robot.messages
    assert first.id == "m-plain" and first.robot == runtime.name and plain.robot == runtime.name
    assert second.robot == runtime.name
    assert await second.attachments[0].read() == b"abc"
    other = attrs.evolve(plain, id="m-other", robot="another-robot")
    await runtime.handle(other)
    await runtime.wait_idle(5)
    assert robot.messages[-1].robot == runtime.name and other.robot == "another-robot"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        robot.messages[-1].robot = "x"  # type: ignore[misc]
