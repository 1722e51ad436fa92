"""How answers end: error, timeout and interruption cards; blocking agents; cancellation."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from imrobots.agents import AgentRequest
from imrobots.cards import Card, CardStatus, Note
from imrobots.memory import MemoryPlatform
from imrobots.models import Target
from imrobots.platform import CardRef
from imrobots.robot import Robot
from imrobots.runtime import RobotRuntime
from imrobots.streaming import AGENT_CANCEL_GRACE, AnswerStatus, StreamPolicy

from .conftest import FAST, AgentRobot, Factory, Recorder, answer_cards, eventually, words


def _notes(card: Card | str) -> list[str]:
    assert isinstance(card, Card)
    return [e.text for e in card.elements if isinstance(e, Note)]


async def test_agent_raising_ends_in_an_error_card(make_runtime: Factory) -> None:
    async def agent(request: AgentRequest) -> AsyncIterator[str]:
        yield "Let me check"
        raise RuntimeError("the model server went away")

    hooks = Recorder()
    platform, runtime = await make_runtime(agent=agent, hooks=hooks, **FAST)
    message = await platform.say("question")
    await runtime.wait_idle(timeout=5)

    [card] = answer_cards(platform, message)
    assert card.status is CardStatus.ERROR
    assert "Let me check" in card.text  # the partial answer stays visible
    assert any("went wrong" in note for note in _notes(card.current))
    [(_, result)] = hooks.finished
    assert result.status is AnswerStatus.ERROR
    assert isinstance(result.error, RuntimeError)
    # shown to the user, but the agent failed: counted failed, not answered (an alert on
    # imrobots_failed_total must fire for agent failures)
    assert runtime.stats.failed == 1 and runtime.stats.answered == 0


async def test_sync_agent_raising_ends_in_an_error_card(make_runtime: Factory) -> None:
    def agent(request: AgentRequest) -> str:
        raise ValueError("bad prompt")

    platform, runtime = await make_runtime(agent=agent, **FAST)
    message = await platform.say("question")
    await runtime.wait_idle(timeout=5)
    [card] = answer_cards(platform, message)
    assert card.status is CardStatus.ERROR


async def test_agent_hanging_past_its_timeout_ends_in_an_error_card(
    make_runtime: Factory,
) -> None:
    never = asyncio.Event()

    async def agent(request: AgentRequest) -> AsyncIterator[str]:
        yield "Thinking about it"
        await never.wait()
        yield "never shown"

    hooks = Recorder()
    platform, runtime = await make_runtime(
        agent=agent, hooks=hooks, stream=StreamPolicy(agent_timeout=0.3), **FAST
    )
    started = time.monotonic()
    message = await platform.say("question")
    await runtime.wait_idle(timeout=5)

    assert time.monotonic() - started < 3.0
    [card] = answer_cards(platform, message)
    assert card.status is CardStatus.ERROR
    assert "Thinking about it" in card.text
    assert any("too long" in note for note in _notes(card.current))
    [(_, result)] = hooks.finished
    assert result.status is AnswerStatus.ERROR
    assert isinstance(result.error, TimeoutError)


def _stubborn_agent(cancels: list[str]) -> object:
    """An agent that swallows its first cancellation and goes on streaming (for 30 s); a
    second one (the test's teardown) stops it."""

    async def agent(request: AgentRequest) -> AsyncIterator[str]:
        for i in range(300):
            try:
                await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                if cancels:
                    raise
                cancels.append(f"ignored at {i}")
            yield f"w{i} "

    return agent


async def test_agent_ignoring_its_cancellation_past_its_timeout_still_ends_in_an_error_card(
    make_runtime: Factory,
) -> None:
    cancels: list[str] = []
    hooks = Recorder()
    platform, runtime = await make_runtime(
        agent=_stubborn_agent(cancels), hooks=hooks, stream=StreamPolicy(agent_timeout=0.3), **FAST
    )
    started = time.monotonic()
    message = await platform.say("question")
    await runtime.wait_idle(timeout=10)
    assert time.monotonic() - started < 0.3 + AGENT_CANCEL_GRACE + 1.5  # not its 30 s
    assert cancels  # it was cancelled, and ignored it
    [card] = answer_cards(platform, message)
    assert card.status is CardStatus.ERROR
    assert card.text.startswith("w0 ")
    assert any("too long" in note for note in _notes(card.current))
    [(_, result)] = hooks.finished
    assert result.status is AnswerStatus.ERROR and isinstance(result.error, TimeoutError)


async def test_agent_ignoring_its_cancellation_is_let_go_when_the_handler_is_cut(
    make_runtime: Factory,
) -> None:
    cancels: list[str] = []
    platform, runtime = await make_runtime(
        agent=_stubborn_agent(cancels),
        stream=StreamPolicy(agent_timeout=None),
        handler_timeout=0.3,
        **FAST,
    )
    started = time.monotonic()
    message = await platform.say("question")
    await runtime.wait_idle(timeout=10)
    assert time.monotonic() - started < 0.3 + AGENT_CANCEL_GRACE + 1.5
    assert cancels
    [card] = answer_cards(platform, message)
    assert card.status is CardStatus.INTERRUPTED
    assert runtime.stats.handler_timeouts == 1


async def test_sync_agent_hanging_past_its_timeout_ends_in_an_error_card(
    make_runtime: Factory,
) -> None:
    def agent(request: AgentRequest) -> Iterator[str]:
        yield "slow "
        time.sleep(0.6)  # a blocking call in a sync generator: runs in a worker thread
        yield "too late"

    platform, runtime = await make_runtime(
        agent=agent, stream=StreamPolicy(agent_timeout=0.2), **FAST
    )
    started = time.monotonic()
    message = await platform.say("question")
    await runtime.wait_idle(timeout=5)
    assert time.monotonic() - started < 0.55  # did not wait for the thread
    [card] = answer_cards(platform, message)
    assert card.status is CardStatus.ERROR and card.text.startswith("slow")


def _hanging_agent(started: asyncio.Event) -> object:
    never = asyncio.Event()

    async def agent(request: AgentRequest) -> AsyncIterator[str]:
        yield f"Answering {request.text}"
        started.set()
        await never.wait()
        yield "never"

    return agent


async def test_stop_during_an_answer_ends_in_an_interrupted_card(make_runtime: Factory) -> None:
    started = asyncio.Event()
    hooks = Recorder()
    platform, runtime = await make_runtime(agent=_hanging_agent(started), hooks=hooks, **FAST)
    message = await platform.say("one")
    async with asyncio.timeout(5):
        await started.wait()
    await platform.wait_for(lambda: any(c.text for c in answer_cards(platform, message)))

    await runtime.stop(timeout=5)

    [card] = answer_cards(platform, message)
    assert card.status is CardStatus.INTERRUPTED
    assert card.text == "Answering one"
    [(_, result)] = hooks.finished
    assert result.status is AnswerStatus.INTERRUPTED


def _outcomes(runtime: RobotRuntime) -> int:
    s = runtime.stats
    return s.answered + s.failed + s.unanswered + s.interrupted + s.rejected + s.duplicates


async def test_stop_counts_the_cut_answer_and_the_waiting_ones_interrupted(
    make_runtime: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """Every message received ends in one bucket of the stop summary: the answer stop cut
    and the message still waiting behind it are ``interrupted``."""
    started = asyncio.Event()
    platform, runtime = await make_runtime(agent=_hanging_agent(started), **FAST)
    message = await platform.say("one")
    await platform.say("two")  # waits behind "one" in the conversation's lane
    async with asyncio.timeout(5):
        await started.wait()
    await platform.wait_for(lambda: any(c.text for c in answer_cards(platform, message)))

    with caplog.at_level("INFO", logger="imrobots.runtime"):
        await runtime.stop(timeout=5)

    assert runtime.stats.received == 2 and runtime.stats.interrupted == 2
    assert _outcomes(runtime) == runtime.stats.received
    [line] = [r.getMessage() for r in caplog.records if "stopped:" in r.getMessage()]
    assert "2 received, 0 answered, 0 failed, 0 unanswered, 2 interrupted" in line


async def test_a_newer_message_interrupts_with_interrupt_true(make_runtime: Factory) -> None:
    first_started = asyncio.Event()
    calls = 0

    async def agent(request: AgentRequest) -> AsyncIterator[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            yield "working on the first"
            first_started.set()
            await asyncio.Event().wait()
        yield f"answer to {request.text}"

    hooks = Recorder()
    platform, runtime = await make_runtime(agent=agent, hooks=hooks, interrupt=True, **FAST)
    first = await platform.say("first")
    async with asyncio.timeout(5):
        await first_started.wait()
    second = await platform.say("second")
    await runtime.wait_idle(timeout=5)

    [old] = answer_cards(platform, first)
    assert old.status is CardStatus.INTERRUPTED
    assert old.text == "working on the first"
    [new] = answer_cards(platform, second)
    assert new.status is CardStatus.FINAL and new.text == "answer to second"
    assert [r.status for _, r in hooks.finished] == [AnswerStatus.INTERRUPTED, AnswerStatus.FINAL]
    assert runtime.stats.interrupted == 1 and runtime.stats.answered == 1
    assert _outcomes(runtime) == runtime.stats.received == 2


async def test_without_interrupt_a_newer_message_waits_its_turn(make_runtime: Factory) -> None:
    release = asyncio.Event()

    async def agent(request: AgentRequest) -> AsyncIterator[str]:
        yield f"answer to {request.text}"
        if request.text == "first":
            await release.wait()

    platform, runtime = await make_runtime(agent=agent, **FAST)
    first = await platform.say("first")
    await platform.wait_for(lambda: any(c.text for c in answer_cards(platform, first)))
    second = await platform.say("second")
    assert answer_cards(platform, second) == []
    release.set()
    await runtime.wait_idle(timeout=5)
    assert answer_cards(platform, first)[0].status is CardStatus.FINAL
    assert answer_cards(platform, second)[0].status is CardStatus.FINAL


class _GatedPlatform(MemoryPlatform):
    """Holds the final update until the test lets it through."""

    def __init__(self) -> None:
        super().__init__()
        self.final_entered = asyncio.Event()
        self.release = asyncio.Event()

    async def _gate(self, card: Card) -> None:
        if card.status is CardStatus.FINAL:
            self.final_entered.set()
            await self.release.wait()

    async def send_card(self, target: Target, card: Card, *, key: str) -> CardRef:
        await self._gate(card)
        return await super().send_card(target, card, key=key)

    async def update_card(self, ref: CardRef, card: Card) -> None:
        await self._gate(card)
        await super().update_card(ref, card)


async def test_stop_while_the_final_card_is_being_sent_still_delivers_it() -> None:
    platform = _GatedPlatform()
    runtime = RobotRuntime(
        name="bot",
        robot=AgentRobot(agent=_words_agent),
        platform=platform,
    )
    await runtime.start()
    try:
        message = await platform.say("question")
        async with asyncio.timeout(5):
            await platform.final_entered.wait()
        stopping = asyncio.create_task(runtime.stop(timeout=5))
        await eventually(lambda: runtime._stopping)
        # stop() has cancelled the answer's task while its final card was in flight
        platform.release.set()
        await stopping
        [card] = answer_cards(platform, message)
        assert card.status is CardStatus.FINAL
        assert card.text == "".join(words(5))
    finally:
        platform.release.set()
        await runtime.stop()


async def _words_agent(request: AgentRequest) -> AsyncIterator[str]:
    for word in words(5):
        yield word


async def test_a_sync_blocking_agent_does_not_block_the_loop(make_runtime: Factory) -> None:
    def agent(request: AgentRequest) -> Iterator[str]:
        for word in words(3):
            time.sleep(0.2)  # blocking, as sync SDKs do
            yield word

    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    hooks = Recorder()
    platform, runtime = await make_runtime(agent=agent, hooks=hooks, **FAST)
    task = asyncio.create_task(ticker())
    try:
        started = time.monotonic()
        await platform.say("q1", conversation="a")
        await platform.say("q2", conversation="b")
        await runtime.wait_idle(timeout=5)
        elapsed = time.monotonic() - started
    finally:
        task.cancel()
    assert [r.status for _, r in hooks.finished] == [AnswerStatus.FINAL] * 2
    # two 0.6 s answers ran side by side, and the loop kept ticking all along (on the
    # loop, each blocking chunk would have stopped it for 0.2 s)
    assert elapsed < 1.15
    during = [t for t in ticks if t >= started]
    assert len(during) >= 10
    longest = max(b - a for a, b in itertools.pairwise(during))
    assert longest < 0.12, f"the loop was blocked for {longest:.3f} s"


@pytest.mark.parametrize("kind", ["async_fn", "sync_fn", "seed_callback"])
async def test_every_agent_shape_ends_in_a_final_card(make_runtime: Factory, kind: str) -> None:
    agent: object
    if kind == "async_fn":

        async def agent(request: AgentRequest) -> str:
            return "the answer"

    elif kind == "sync_fn":

        def agent(request: AgentRequest) -> str:
            time.sleep(0.01)
            return "the answer"

    else:

        def agent(params: str, chatId: str, stream_callback: object) -> None:
            assert callable(stream_callback)
            for piece in ("the ", "answer"):
                stream_callback({"data": {"content": piece}})

    platform, runtime = await make_runtime(robot=Robot(agent=agent), **FAST)
    message = await platform.say("q")
    await runtime.wait_idle(timeout=5)
    [card] = answer_cards(platform, message)
    assert card.status is CardStatus.FINAL and card.text == "the answer"
