"""Issue 12 on the core runtime: handlers that raise or hang (item 6), feedback replayed
onto other cards or chats (item 7), what ``answered`` counts and the summary of faults a
stopping robot logs (item 10)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest

from imrobots.agents import AgentRequest
from imrobots.cards import Card, CardStatus, Note
from imrobots.errors import OutcomeUnknown, RetryableError
from imrobots.memory import MemoryCard, MemoryPlatform, MemorySettings
from imrobots.models import (
    CardAction,
    Conversation,
    Feedback,
    FeedbackRating,
    Message,
    Sender,
    Target,
)
from imrobots.platform import StreamHandle
from imrobots.robot import Reply, Robot
from imrobots.runtime import RobotRuntime, RuntimeOptions
from imrobots.streaming import StreamPolicy

from .conftest import FAST, Factory, answer_cards, eventually, streaming_agent


def _notes(card: MemoryCard) -> list[str]:
    current = card.current
    assert isinstance(current, Card)
    return [e.text for e in current.elements if isinstance(e, Note)]


# --- item 6: a handler that raises or hangs -------------------------------------------------


class Raising(Robot):
    async def on_message(self, message: Message, reply: Reply) -> None:
        raise RuntimeError("the CRM is down")


async def test_a_handler_that_raises_shows_an_error_card(make_runtime: Factory) -> None:
    """Before: nothing was shown, the user waited for an answer that never came."""
    platform, runtime = await make_runtime(robot=Raising(), **FAST)
    message = await platform.say("where is my order?")
    await runtime.wait_idle(5)
    [card] = answer_cards(platform, message)
    assert card.status is CardStatus.ERROR
    assert any("went wrong" in note for note in _notes(card))
    assert runtime.stats.failed == 1 and runtime.stats.answered == 0


class Hanging(Robot):
    """Hangs forever on messages saying "hang"; answers the others."""

    def __init__(self) -> None:
        super().__init__(agent=lambda request: f"answer to {request.text}")
        self.cancelled = asyncio.Event()

    async def on_message(self, message: Message, reply: Reply) -> None:
        if message.text == "hang":
            try:
                await asyncio.Event().wait()
            finally:
                self.cancelled.set()
        await super().on_message(message, reply)


async def test_a_hanging_handler_is_cut_and_its_chat_answers_the_next_message(
    make_runtime: Factory,
) -> None:
    """Before: the conversation's lane stayed blocked behind the hung handler for good."""
    robot = Hanging()
    platform, runtime = await make_runtime(robot=robot, handler_timeout=0.5, **FAST)
    hung = await platform.say("hang", message_id="m-hang")
    after = await platform.say("hello", message_id="m-next")  # the same conversation
    await eventually(lambda: bool(answer_cards(platform, after)))
    await runtime.wait_idle(5)
    assert robot.cancelled.is_set()
    [error] = answer_cards(platform, hung)
    assert error.status is CardStatus.ERROR
    assert any("too long" in note for note in _notes(error))
    [card] = answer_cards(platform, after)
    assert card.status is CardStatus.FINAL and card.text == "answer to hello"
    assert runtime.stats.handler_timeouts == 1
    assert (runtime.stats.failed, runtime.stats.answered) == (1, 1)


class StreamsThenHangs(Robot):
    async def on_message(self, message: Message, reply: Reply) -> None:
        async def agent() -> AsyncIterator[str]:
            yield "Looking it up"
            await asyncio.Event().wait()
            yield "never"

        await reply.stream(agent())


async def test_a_handler_hanging_mid_stream_ends_its_card_interrupted(
    make_runtime: Factory,
) -> None:
    platform, runtime = await make_runtime(
        robot=StreamsThenHangs(),
        handler_timeout=0.5,
        stream=StreamPolicy(agent_timeout=None, min_interval=0.05),
        **FAST,
    )
    message = await platform.say("question")
    await runtime.wait_idle(5)
    [card] = answer_cards(platform, message)  # no second (error) card
    assert card.status is CardStatus.INTERRUPTED
    assert card.text.startswith("Looking it up")
    assert runtime.stats.handler_timeouts == 1 and runtime.stats.failed == 1


class HangsOnRequest(Robot):
    """Hangs on messages saying "hang" (recording when, in loop time, each started and was
    cut); answers nothing to the others."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: dict[str, tuple[float, float]] = {}

    async def on_message(self, message: Message, reply: Reply) -> None:
        if message.text != "hang":
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await asyncio.Event().wait()
        finally:
            self.spans[message.id] = (started, loop.time())


async def test_handlers_are_cut_each_at_its_own_time_whatever_ended_before(
    make_runtime: Factory,
) -> None:
    """The runtime keeps every handler's limit on one timer (armed for the oldest running
    one): a handler that ends early must not cut or spare the ones started after it."""
    robot = HangsOnRequest()
    platform, runtime = await make_runtime(robot=robot, handler_timeout=0.4, **FAST)
    await platform.say("quick", conversation="c0", message_id="m-quick")
    await platform.say("hang", conversation="c1", message_id="m-1")
    await asyncio.sleep(0.15)  # the second hanging handler starts later: its own limit
    await platform.say("quick", conversation="c2", message_id="m-quick-2")
    await platform.say("hang", conversation="c3", message_id="m-2")
    await runtime.wait_idle(5)
    assert sorted(robot.spans) == ["m-1", "m-2"]
    for started, ended in robot.spans.values():
        # 10 ms of slack under the limit: uvloop's clock counts whole milliseconds (a span
        # of exactly 0.4 s can subtract to 0.39999...), and the limit starts a little before
        # the handler's body reads the clock. A limit cut short by the other handlers would
        # show 0.25 s here.
        assert 0.39 <= ended - started < 1.5
    assert robot.spans["m-2"][1] > robot.spans["m-1"][1]
    assert runtime.stats.handler_timeouts == 2 and runtime.stats.unanswered == 2
    # a later hanging handler is cut too (the timer is armed again)
    await platform.say("hang", conversation="c4", message_id="m-3")
    await runtime.wait_idle(5)
    assert runtime.stats.handler_timeouts == 3


async def test_stopping_cancels_a_handler_as_stopped_not_timed_out(
    make_runtime: Factory,
) -> None:
    robot = HangsOnRequest()
    platform, runtime = await make_runtime(robot=robot, handler_timeout=30, **FAST)
    await platform.say("hang", message_id="m-hang")
    await eventually(lambda: runtime._pending == 1 and runtime._accepted == 1)
    await asyncio.sleep(0.05)
    await runtime.stop(timeout=5)
    assert "m-hang" in robot.spans and runtime.stats.handler_timeouts == 0


async def test_a_hanging_action_handler_is_cut(make_runtime: Factory) -> None:
    pressed = asyncio.Event()

    class Presses(Robot):
        async def on_action(self, action: CardAction, reply: Reply) -> None:
            pressed.set()
            await asyncio.Event().wait()

    platform, runtime = await make_runtime(robot=Presses(), handler_timeout=0.3, **FAST)
    await runtime.handle(
        CardAction(
            id="press-1",
            platform=platform.name,
            card_id="card-x",
            action_id="b1",
            value="approve",
            sender=Sender(id="user-1"),
            conversation=Conversation(id="conversation-1"),
        )
    )
    await runtime.wait_idle(5)
    assert pressed.is_set() and runtime.stats.handler_timeouts == 1


# --- item 7: feedback replayed onto another card, chat or rating ----------------------------

SECRET = "test-secret"


class Kept(Robot):
    def __init__(self) -> None:
        super().__init__(agent=lambda request: f"answer to {request.text}")
        self.given: list[Feedback] = []

    async def on_feedback(self, feedback: Feedback) -> None:
        self.given.append(feedback)


def _value(card: MemoryCard, rating: FeedbackRating) -> str:
    current = card.current
    assert isinstance(current, Card)
    [button] = [b for b in current.buttons if b.label == rating.label]
    return button.value


async def _two_answers(
    make_runtime: Factory,
) -> tuple[MemoryPlatform, RobotRuntime, Kept, MemoryCard, MemoryCard, MemoryCard]:
    """Card A and B in Alice's conversation, card C in Bob's."""
    robot = Kept()
    platform, runtime = await make_runtime(
        robot=robot, feedback_secret=SECRET, name="support", **FAST
    )
    a = await platform.say("first", message_id="m-a", conversation="alice", sender="alice")
    b = await platform.say("second", message_id="m-b", conversation="alice", sender="alice")
    c = await platform.say("third", message_id="m-c", conversation="bob", sender="bob")
    await runtime.wait_idle(5)
    [card_a], [card_b], [card_c] = (answer_cards(platform, m) for m in (a, b, c))
    assert all(x.status is CardStatus.FINAL for x in (card_a, card_b, card_c))
    return platform, runtime, robot, card_a, card_b, card_c


REPLAYS = ["A's value on card B", "A's value by a user of another chat", "A's rating on card C"]


@pytest.mark.parametrize("replay", REPLAYS)
async def test_a_replayed_feedback_value_is_rejected_and_logged(
    make_runtime: Factory, caplog: pytest.LogCaptureFixture, replay: str
) -> None:
    """Before: 3/3 replays stored (the value named only robot, message and rating)."""
    platform, runtime, robot, card_a, card_b, card_c = await _two_answers(make_runtime)
    with caplog.at_level(logging.WARNING, logger="imrobots.runtime"):
        if replay == "A's value on card B":
            await platform.press(
                card_b.id, FeedbackRating.HELPFUL, value=_value(card_a, FeedbackRating.HELPFUL)
            )
        elif replay == "A's value by a user of another chat":
            await platform.press(
                card_c.id,
                FeedbackRating.HELPFUL,
                sender="bob",
                value=_value(card_a, FeedbackRating.HELPFUL),
            )
        else:
            await platform.press(
                card_c.id,
                FeedbackRating.VERY_HELPFUL,
                sender="bob",
                value=_value(card_a, FeedbackRating.NO_HELP),
            )
        await runtime.wait_idle(5)
    assert await runtime.store.list_feedback() == [] and robot.given == []
    assert runtime.stats.forged == 1 and runtime.stats.feedback == 0
    assert any("rejected feedback" in r.getMessage() for r in caplog.records)


async def test_a_press_claiming_the_right_card_from_another_chat_is_rejected(
    make_runtime: Factory,
) -> None:
    """A forged callback naming card A but coming from Bob's conversation."""
    platform, runtime, _, card_a, _, _ = await _two_answers(make_runtime)
    await runtime.handle(
        CardAction(
            id="forged-1",
            platform=platform.name,
            card_id=card_a.id,
            action_id="x",
            value=_value(card_a, FeedbackRating.HELPFUL),
            sender=Sender(id="bob"),
            conversation=Conversation(id="bob"),
        )
    )
    await runtime.wait_idle(5)
    assert await runtime.store.list_feedback() == [] and runtime.stats.forged == 1


async def test_genuine_presses_on_each_card_are_stored(make_runtime: Factory) -> None:
    platform, runtime, _, card_a, card_b, card_c = await _two_answers(make_runtime)
    await platform.press(card_a.id, FeedbackRating.HELPFUL, sender="alice")
    await platform.press(card_b.id, FeedbackRating.NO_HELP, sender="alice")
    await platform.press(card_c.id, FeedbackRating.VERY_HELPFUL, sender="bob")
    await runtime.wait_idle(5)
    stored = {(f.message_id, f.rating, f.card_id) for f in await runtime.store.list_feedback()}
    assert stored == {
        ("m-a", FeedbackRating.HELPFUL, card_a.id),
        ("m-b", FeedbackRating.NO_HELP, card_b.id),
        ("m-c", FeedbackRating.VERY_HELPFUL, card_c.id),
    }
    assert runtime.stats.forged == 0


# --- item 10: answered means delivered; the summary names the faults ------------------------


class Silent(Robot):
    async def on_message(self, message: Message, reply: Reply) -> None:
        with contextlib.suppress(Exception):  # a robot that swallows its send errors
            await reply.card(Card(title="answer", elements=()))


async def test_answered_counts_only_answers_that_reached_the_user(make_runtime: Factory) -> None:
    """Before: a handler whose send was refused (the error swallowed) counted answered."""
    platform, runtime = await make_runtime(robot=Silent(), refuse_cards=True, **FAST)
    await platform.say("q")
    await runtime.wait_idle(10)
    assert not platform.cards and not platform.texts
    assert runtime.stats.answered == 0 and runtime.stats.unanswered == 1
    assert runtime.stats.call_errors == 1


async def test_the_stop_summary_names_the_faults_met(
    make_runtime: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: a run with injected faults ended with "robot bot stopped" and nothing more."""

    async def agent(request: AgentRequest) -> str:
        return "fine"

    platform, runtime = await make_runtime(
        agent=agent,
        failure_rate=0.5,
        failure_kind="rate_limited",
        seed=12,  # the same draws each run (an unlucky run could exhaust an answer's retries)
        stream=StreamPolicy(retry_backoff=0.01, max_backoff=0.02, rate_limit_backoff=0.01),
        **FAST,
    )
    for i in range(6):
        await platform.say(f"q{i}", conversation=f"c{i}")
    await runtime.wait_idle(20)
    failed_calls = len([c for c in platform.calls if not c.ok])
    assert failed_calls > 0
    with caplog.at_level(logging.INFO, logger="imrobots.runtime"):
        await runtime.stop()
    [line] = [r.getMessage() for r in caplog.records if "stopped:" in r.getMessage()]
    assert f"{runtime.stats.rate_limited} rate-limited responses" in line
    assert runtime.stats.rate_limited == failed_calls
    assert f"{runtime.stats.retries} retries" in line and runtime.stats.retries >= 1
    assert f"{failed_calls} failed calls" in line and "0 reconnects" in line
    assert "6 answered" in line


# --- an open whose answer was lost, then refused until the answer was done ----------------


class LostOpen(MemoryPlatform):
    """The first open takes effect and its answer is lost (``OutcomeUnknown``); the next
    opens are refused as "system busy" until the agent is done and two more were refused
    (so the open gives up after an unknown outcome); later opens answer as usual."""

    def __init__(self) -> None:
        super().__init__(MemorySettings(app_rate=FAST["app_rate"]))
        self.opens = 0
        self.refused = asyncio.Event()
        self.agent_done = asyncio.Event()
        self.refused_after_done = 0

    async def open_stream(self, target: Target, card: Card, *, key: str) -> StreamHandle:
        self.opens += 1
        if self.opens == 1:
            await super().open_stream(target, card, key=key)
            raise OutcomeUnknown("simulated: the open took effect, its answer was lost")
        if not self.agent_done.is_set() or self.refused_after_done < 2:
            self.refused_after_done += self.agent_done.is_set()
            self.refused.set()
            raise RetryableError("simulated: system busy", code="-1")
        return await super().open_stream(target, card, key=key)


async def test_an_open_lost_then_refused_until_the_end_still_ends_in_one_final_card() -> None:
    """Before: the open gave up when the agent was done (the last attempt "busy"), so its
    thinking card stayed stuck and the final went out as a second card."""
    platform = LostOpen()
    chunks = [f"w{i} " for i in range(5)]

    async def agent(request: AgentRequest) -> AsyncIterator[str]:
        await platform.refused.wait()  # the open's answer was lost and a retry refused
        for chunk in chunks:
            yield chunk
        platform.agent_done.set()

    runtime = RobotRuntime(
        name="bot",
        robot=Robot(agent=agent),
        platform=platform,
        options=RuntimeOptions(
            stream=StreamPolicy(min_interval=0.01, retry_backoff=0.01, max_backoff=0.02)
        ),
    )
    await runtime.start()
    try:
        message = await platform.say("hello")
        await runtime.wait_idle(10)
    finally:
        await runtime.stop(timeout=5.0)
    cards = answer_cards(platform, message)
    assert len(cards) == 1, [(c.id, c.status) for c in cards]
    assert cards[0].status is CardStatus.FINAL
    assert cards[0].text.split() == [c.strip() for c in chunks]
    assert platform.refused_after_done == 2  # opened again (same key) through the refusals


async def test_a_listener_that_raises_breaks_no_call_of_the_platform(
    make_runtime: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """A console's listener on the memory platform fails (a closed terminal, a bug): it is
    logged, and the answer it was watching still ends in its final card."""
    platform, runtime = await make_runtime(agent=streaming_agent(["an ", "answer"]), **FAST)
    seen: list[str] = []

    def broken(op: str, card: object) -> None:
        seen.append(op)
        raise BrokenPipeError("the terminal went away")

    platform.on_change(broken)
    message = await platform.say("question")
    await runtime.wait_idle(5)
    [card] = answer_cards(platform, message)
    assert card.status is CardStatus.FINAL and card.text == "an answer"
    assert seen and runtime.stats.failed == 0
    assert "a memory platform listener failed on" in caplog.text
