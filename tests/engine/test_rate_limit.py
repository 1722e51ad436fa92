"""The app-wide rate limit: no refusals, the quota used, fair turns; and flaky platforms."""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import time
import weakref
from collections.abc import AsyncIterator

import attrs
import pytest

from imrobots.cards import Card, CardStatus
from imrobots.clock import FakeClock
from imrobots.errors import RateLimited
from imrobots.memory import MemoryPlatform, MemorySettings
from imrobots.models import Sender, Target
from imrobots.platform import CardRef, Op, RateLimit, Scope
from imrobots.ratelimit import CallScope, Priority, RateLimiter
from imrobots.robot import Robot
from imrobots.runtime import RobotRuntime
from imrobots.store import MemoryStore
from imrobots.streaming import AnswerStatus, AnswerStream, StreamPolicy

from .conftest import FAST, AgentRobot, Factory, Recorder, answer_cards, streaming_agent, words

QUOTA = 20.0


def _longest_gap(platform: MemoryPlatform) -> float:
    """The longest time any answer's card waited between two of its versions."""
    longest = 0.0
    for card in platform.cards.values():
        stamps = [at for at, _ in card.history]
        for before, after in itertools.pairwise(stamps):
            longest = max(longest, after - before)
    return longest


async def test_a_hundred_answers_share_a_quota_of_twenty_per_second(
    make_runtime: Factory,
) -> None:
    answers = 100
    chunks = words(80)
    hooks = Recorder()
    platform, runtime = await make_runtime(
        agent=streaming_agent(chunks, seconds=8.0),
        hooks=hooks,
        quota=QUOTA,
        app_rate=QUOTA,
        max_concurrent=answers,
    )
    messages = [await platform.say(f"q{i}", conversation=f"c{i}") for i in range(answers)]
    await runtime.wait_idle(timeout=60)

    # the platform never had to refuse a call
    assert platform.rejected_calls == 0
    assert all(call.ok for call in platform.calls)
    # every answer has its final card, with the whole text
    for message in messages:
        [card] = answer_cards(platform, message)
        assert card.status is CardStatus.FINAL and card.text == "".join(chunks)
    # the quota was used while answers were active
    window = platform.calls[-1].time - platform.calls[0].time
    used = len(platform.calls) / (window * QUOTA)
    # fairness: with one shared budget of 18 calls/s (20 less the 10% headroom), each of
    # 100 answers gets a turn every 100 / 18 = 5.6 s; no answer waited much longer
    fair_share = answers / (QUOTA * platform.capabilities.rate_headroom)
    longest = _longest_gap(platform)
    print(
        f"\n{answers} answers, quota {QUOTA:.0f}/s: {len(platform.calls)} calls in {window:.1f} s, "
        f"{used:.0%} of the quota used, 0 refused; longest wait between updates "
        f"{longest:.2f} s = {longest / fair_share:.2f} x the fair share of {fair_share:.2f} s"
    )
    assert used >= 0.8
    assert longest <= 3 * fair_share
    streamed = sum(
        any(isinstance(v, Card) and v.status is CardStatus.STREAMING for _, v in c.history)
        for c in platform.cards.values()
    )
    assert streamed >= answers // 4, "answers should stream, not only end"


@pytest.mark.parametrize(("failure_rate", "answers"), [(0.1, 40), (0.3, 12)])
async def test_every_final_lands_when_calls_fail(
    make_runtime: Factory, failure_rate: float, answers: int
) -> None:
    chunks = words(15)
    hooks = Recorder()
    platform, runtime = await make_runtime(
        agent=streaming_agent(chunks, seconds=1.5),
        hooks=hooks,
        app_rate=200.0,
        update_interval=0.2,
        failure_rate=failure_rate,
        failure_kind="mixed",
        seed=7,
        max_concurrent=answers,
    )
    messages = [await platform.say(f"q{i}", conversation=f"c{i}") for i in range(answers)]
    await runtime.wait_idle(timeout=40)

    failed = [call for call in platform.calls if not call.ok]
    assert {call.error for call in failed} == {"5xx", "rate_limited"}
    assert len(failed) >= answers * failure_rate
    # no card is left thinking or streaming, and every answer's last card is its final
    for card in platform.cards.values():
        assert card.status is not None and card.status.is_terminal, card.status
    for message in messages:
        cards = answer_cards(platform, message)
        assert len(cards) == 1  # failed calls create nothing, retries find the same card
        final = cards[0].current
        assert isinstance(final, Card) and final.status is CardStatus.FINAL
        assert final.markdown == "".join(chunks) and len(final.buttons) == 4
    assert len(hooks.finished) == answers


async def test_the_limiter_grants_turns_in_arrival_order_within_its_window() -> None:
    """A sliding window, its calls spread over its tenths: the first call goes at once,
    never more than the rate in any second nor a tenth of it in any tenth of a second
    (a fixed-window platform never sees a late bunch), in arrival order."""
    limiter = RateLimiter(MemoryStore(), "test", rate=5.0)
    granted: list[tuple[int, float]] = []

    async def take(index: int) -> None:
        waited = await limiter.acquire()
        granted.append((index, waited))

    await asyncio.gather(*(take(i) for i in range(12)))
    assert [index for index, _ in granted] == list(range(12))  # in arrival order
    waits = [waited for _, waited in granted]
    assert waits[0] == 0.0  # room: at once
    expected = [0.0, 0.1, 0.2, 0.3, 0.4, 1.0, 1.1, 1.2, 1.3, 1.4, 2.0, 2.1]
    assert waits == pytest.approx(expected, abs=0.05)
    for first, later in zip(waits, waits[5:], strict=False):
        assert later - first >= 1.0 - 0.05  # never 6 grants within one second


async def test_the_limiter_holds_everyone_back_after_a_rate_limit_answer() -> None:
    limiter = RateLimiter(MemoryStore(), "test", rate=1000.0)
    await limiter.acquire()
    await limiter.backoff(0.3)  # the platform said: try again in 0.3 s
    started = time.monotonic()
    await limiter.acquire()
    assert time.monotonic() - started >= 0.29
    assert limiter.stats.penalties == 1


class _RefusesOnce(MemoryPlatform):
    """Answers the first card update with "rate limited, retry after 0.3 s"."""

    refused_at: float | None = None

    async def update_card(self, ref: CardRef, card: Card) -> None:
        if self.refused_at is None:
            self.refused_at = time.monotonic()
            raise RateLimited("slow down", code="QpsLimit", status=429, retry_after=0.3)
        await super().update_card(ref, card)


async def test_a_rate_limit_answer_holds_back_every_call_for_its_retry_after() -> None:
    platform = _RefusesOnce(MemorySettings(app_rate=FAST["app_rate"]))
    chunks = words(30)
    runtime = RobotRuntime(
        name="bot", robot=AgentRobot(agent=streaming_agent(chunks, seconds=0.6)), platform=platform
    )
    await runtime.start()
    try:
        message = await platform.say("q")
        await runtime.wait_idle(timeout=5)
    finally:
        await runtime.stop()
    assert platform.refused_at is not None
    # nothing was sent to the platform during the pause it asked for
    after = [c.time for c in platform.calls if c.time > platform.refused_at]
    assert after and min(after) - platform.refused_at >= 0.29
    [card] = answer_cards(platform, message)
    assert card.status is CardStatus.FINAL and card.text == "".join(chunks)


async def test_failed_calls_are_reported_to_listeners_and_waiters(make_runtime: Factory) -> None:
    seen: list[str] = []
    platform, runtime = await make_runtime(
        agent=streaming_agent(["the answer"]),
        failure_rate=1.0,
        failure_kind="5xx",
        stream=StreamPolicy(retry_backoff=0.02, max_backoff=0.05),
        **FAST,
    )
    platform.on_change(lambda op, card: seen.append(op))
    message = await platform.say("anyone there?")
    # every call fails: a console must still see them, and a waiter be woken
    await platform.wait_for(lambda: any(not call.ok for call in platform.calls), timeout=5)
    assert seen and all(op.endswith(":failed") for op in seen)
    assert platform.cards == {}
    # the platform recovers: the answer still lands
    platform.settings = attrs.evolve(platform.settings, failure_rate=0.0)
    await runtime.wait_idle(timeout=5)
    [card] = answer_cards(platform, message)
    assert card.status is CardStatus.FINAL and card.text == "the answer"


def test_runtimes_of_one_app_share_a_limiter_without_keeping_the_store_alive() -> None:
    store = MemoryStore()
    alive = weakref.ref(store)
    one = RobotRuntime(name="a", robot=Robot(), platform=MemoryPlatform(), store=store, app_id="x")
    two = RobotRuntime(name="b", robot=Robot(), platform=MemoryPlatform(), store=store, app_id="x")
    other = RobotRuntime(name="c", robot=Robot(), platform=MemoryPlatform(), store=store)
    assert one.limiter is two.limiter
    assert other.limiter is not one.limiter
    del one, two, other, store
    gc.collect()
    assert alive() is None


class _FakeTimeStore(MemoryStore):
    """The memory store on a test's virtual clock (its windows are kept in that time)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self._clock = clock

    def _now(self) -> float:  # type: ignore[override]
        return self._clock.now()


def _most_in_a_window(times: list[float], window: float) -> int:
    """The most of ``times`` (sorted) within any ``window`` seconds (half-open)."""
    most = 0
    for first, at in enumerate(times):
        last = first
        while last + 1 < len(times) and times[last + 1] < at + window - 1e-9:
            last += 1
        most = max(most, last - first + 1)
    return most


@pytest.mark.parametrize("answers", [30])
async def test_no_api_gets_more_calls_in_a_window_than_declared_when_answers_end_together(
    answers: int,
) -> None:
    """Found with Feishu (CardKit): updates and the final card's close call different
    APIs. A pump that took a turn for an update and then saw the answer end kept it for
    the final card, whose close then went out on the update API's turn, never counted by
    the close API's window: with many answers ending together, the close API got more
    calls in a window than declared (429s). Virtual time: deterministic, no lateness."""
    clock = FakeClock()
    platform = MemoryPlatform(MemorySettings(streaming="native"))
    platform.capabilities = attrs.evolve(
        platform.capabilities,
        rate_limits=(RateLimit(scope=Scope.API, rate=40.0, window=0.1),),  # 4 per 0.1 s
        rate_headroom=1.0,
        api_names={Op.PUSH: "stream_update", Op.CLOSE: "update_card", Op.RENEW: "renew"},
    )
    limiter = RateLimiter.for_capabilities(
        _FakeTimeStore(clock), "t", platform.capabilities, clock=clock
    )
    sent: dict[str, list[float]] = {}
    platform.on_change(lambda op, card: sent.setdefault(op, []).append(clock.now()))

    async def agent() -> AsyncIterator[str]:
        text = ""
        for i in range(20):
            text += f"w{i} "
            yield text
            await clock.sleep(0.05)

    streams = [
        AnswerStream(
            platform=platform,
            limiter=limiter,
            target=Target(platform="memory", user=Sender(id=f"u{i}")),
            question=f"q{i}",
            # half of them update often (their pumps are queued for a turn when the answers
            # end), half seldom (their pumps are idle then)
            policy=StreamPolicy(min_interval=0.05 if i % 2 else 60.0, agent_timeout=None),
            clock=clock,
        )
        for i in range(answers)
    ]
    tasks = [asyncio.ensure_future(stream.run(agent())) for stream in streams]
    for _ in range(2000):
        if all(task.done() for task in tasks):
            break
        await clock.advance(0.01)
    results = [task.result() for task in tasks]
    assert all(r.status is AnswerStatus.FINAL for r in results)
    assert all(c.status is CardStatus.FINAL for c in platform.cards.values())
    assert not any(op.endswith(":failed") for op in sent)
    assert len(sent["update_card"]) == answers  # one close per answer
    # the client never sends more calls of one API in any window than it declared
    most = {op: _most_in_a_window(sorted(times), 0.1) for op, times in sent.items()}
    assert all(count <= 4 for count in most.values()), most


async def test_an_operation_making_two_calls_takes_two_slots_in_each_of_its_windows() -> None:
    """Feishu's renewal turns streaming mode off, then on: two calls of one API, and two
    operations on the card entity. Counted once, renewals of many cards would send twice
    what the API's window allows."""
    minute = 60.0  # long windows: not spread over tenths, so the counts read plainly
    limiter = RateLimiter(
        MemoryStore(),
        "t",
        limits=(
            RateLimit(scope=Scope.API, rate=3 / minute, window=minute),
            RateLimit(scope=Scope.CARD, rate=2 / minute, window=minute),
        ),
        api_names={Op.RENEW: "cards", Op.CLOSE: "cards", Op.PUSH: "elements"},
        op_calls={Op.RENEW: 2},
    )
    renew = CallScope(op=Op.RENEW, card="c1")
    assert await limiter.acquire(renew) == 0.0
    # both calls counted: the card's window (2) is full, the API's (3) has one left
    assert await limiter.store.room_in("t:1:card:c1", limit=2, window=minute) > minute - 1
    assert await limiter.store.room_in("t:0:api:cards", limit=3, window=minute) == 0.0
    assert await limiter.acquire(CallScope(op=Op.CLOSE, card="c2")) == 0.0
    assert await limiter.store.room_in("t:0:api:cards", limit=3, window=minute) > minute - 1
    # a renewal's turn may carry a close of its card, not the other way round, and no
    # turn carries a call of another API
    close = CallScope(op=Op.CLOSE, card="c1")
    assert limiter.carries(renew, close) and not limiter.carries(close, renew)
    assert not limiter.carries(CallScope(op=Op.PUSH, card="c1"), close)


def _windows_built_per_call(
    limiter: RateLimiter, scope: CallScope
) -> tuple[list[tuple[str, int, float]], list[tuple[str, int, float]]]:
    """A call's narrow windows and all its windows, built by ``_windows`` from each limit and
    key ``_applicable`` lists (as acquire() built them on every call before the plan was
    cached): not from the window shapes the plan expands."""
    applicable = limiter._applicable(scope)
    narrow = [
        w
        for limit, key in applicable
        if limit.scope in (Scope.CONVERSATION, Scope.CARD, Scope.MEMBER)
        for w in limiter._windows(limit, key)
    ]
    return narrow, [w for limit, key in applicable for w in limiter._windows(limit, key)]


def test_the_cached_plan_of_a_call_lists_the_windows_acquire_built_per_call() -> None:
    """acquire() takes each call's windows from a plan cached per operation; it must list
    the same windows, in the same order and as often, as ``_windows`` builds from the
    limits and keys ``_applicable`` lists (which carries() and backoff() use), for every
    scope and operation, after the platform switches APIs too. Both read one layout per
    operation; this checks the plan's expansion of it (window shapes cut from a marker key,
    narrow scopes keyed per call, calls repeated) against ``_windows`` itself."""
    limiter = RateLimiter(
        MemoryStore(),
        "t",
        limits=(
            RateLimit(scope=Scope.API, rate=50.0),
            RateLimit(scope=Scope.API, rate=0.5, window=60.0),
            RateLimit(scope=Scope.APP, rate=100.0, ops=frozenset({Op.SEND_CARD, Op.OPEN})),
            RateLimit(scope=Scope.CONVERSATION, rate=20.0, window=0.25),
            RateLimit(scope=Scope.CARD, rate=5.0, window=0.25, ops=frozenset({Op.PUSH})),
            RateLimit(scope=Scope.MEMBER, rate=0.5, window=60.0, ops=frozenset({Op.SEND_TEXT})),
        ),
        headroom=0.9,
        api_names={Op.RENEW: ("cards", "elements"), Op.CLOSE: "cards", Op.PUSH: "elements"},
        op_calls={Op.RENEW: 2},
    )
    scopes = [
        CallScope(op=op, conversation=conversation, card=card, member=member)
        for op in Op
        for conversation in (None, "dingtalk:group:c1")
        for card in (None, "k1")
        for member in (None, "u1")
    ]

    def check() -> None:
        for scope in scopes:
            narrow, windows, distinct = limiter._plan(scope)
            assert (list(narrow), list(windows)) == _windows_built_per_call(limiter, scope)
            assert list(distinct) == list(dict.fromkeys(windows))

    check()
    check()  # from the cache
    limiter.use_capabilities(
        attrs.evolve(
            MemoryPlatform().capabilities,
            api_names={Op.PUSH: "patch", Op.CLOSE: "patch"},
            op_calls={Op.CLOSE: 3},
        )
    )
    check()
    assert limiter._plan(CallScope(op=Op.CLOSE))[1][0][0] == "t:0:api:patch"


async def test_a_platform_that_switches_apis_is_counted_under_the_new_names() -> None:
    """A platform that stops calling two APIs and calls one instead (Feishu falling back
    from CardKit to PATCH) announces it; the runtime's limiter then counts the operations
    that now share an API in that API's one window, never in two."""
    clock = FakeClock()
    platform = MemoryPlatform()
    minute = 60.0  # a long window: not spread over tenths, so the counts read plainly
    platform.capabilities = attrs.evolve(
        platform.capabilities,
        rate_limits=(RateLimit(scope=Scope.API, rate=2 / minute, window=minute),),
        rate_headroom=1.0,
        api_names={Op.PUSH: "elements", Op.CLOSE: "cards"},
    )
    runtime = RobotRuntime(
        name="s", robot=Robot(), platform=platform, store=_FakeTimeStore(clock), clock=clock
    )
    limiter = runtime.limiter
    push, close = CallScope(op=Op.PUSH, card="c1"), CallScope(op=Op.CLOSE, card="c2")
    for scope in (push, push, close, close):  # two APIs: two windows of 2
        assert await limiter.acquire(scope) == 0.0
    assert not limiter.carries(CallScope(op=Op.PUSH, card="c2"), close)
    changed = platform.change_capabilities(api_names={Op.PUSH: "patch", Op.CLOSE: "patch"})
    assert changed is platform.capabilities and limiter.api_names == changed.api_names
    assert await limiter.acquire(push) == 0.0
    assert await limiter.acquire(close) == 0.0
    # the one API's window is full: the next close waits for its window, whichever op
    # took the slots
    task = asyncio.create_task(limiter.acquire(close))
    await clock.advance(minute - 1)
    assert not task.done()
    await clock.advance(2)
    assert await task == pytest.approx(minute, abs=0.1)
    # a push's turn may now carry its card's close: both are counted in the one window
    assert limiter.carries(CallScope(op=Op.PUSH, card="c2"), close)
    with pytest.raises(ValueError, match="rate_limits"):
        platform.change_capabilities(rate_limits=())


async def _grant_times(
    arrivals: list[tuple[float, str, Priority]], *, priority: bool
) -> dict[str, float]:
    """When each of ``arrivals`` (at, name, priority) is granted by one limiter of 10
    calls a second (one a tenth) on virtual time; ``priority=False`` takes every call in
    arrival order, as without priorities."""
    clock = FakeClock()
    limiter = RateLimiter(
        _FakeTimeStore(clock),
        "p",
        limits=(RateLimit(scope=Scope.API, rate=10.0),),
        headroom=1.0,
        clock=clock,
    )
    granted: dict[str, float] = {}

    async def take(name: str, rank: Priority) -> None:
        await limiter.acquire(CallScope(op=Op.PUSH, card=name), priority=rank)
        granted[name] = clock.now()

    tasks = []
    for at, name, rank in sorted(arrivals):
        await clock.advance(at - clock.now())
        tasks.append(asyncio.create_task(take(name, rank if priority else Priority.FIRST)))
        await clock.settle()
    while not all(task.done() for task in tasks):
        await clock.advance(0.05)
    await asyncio.gather(*tasks)
    return granted


async def test_a_first_update_goes_ahead_of_running_answers_updates() -> None:
    """Thirty intermediate updates queue at once, then two final cards (0.25 s); a new
    answer's first update arriving at 0.35 s takes the next slot that frees (0.4 s)
    instead of waiting behind all of them (3.2 s): finals and intermediate updates
    reserve no slot ahead in time. The finals go next (0.5, 0.6 s), ahead of the waiting
    updates, which keep their arrival order, and neither window (10 a second, 1 a
    tenth) is exceeded."""
    arrivals = [(0.0, f"b{i:02}", Priority.BACKGROUND) for i in range(30)]
    arrivals += [(0.25, "final1", Priority.FINAL), (0.26, "final2", Priority.FINAL)]
    arrivals += [(0.35, "first", Priority.FIRST)]
    fifo = await _grant_times(arrivals, priority=False)
    assert fifo["first"] == pytest.approx(3.2, abs=0.01)  # behind every other call
    granted = await _grant_times(arrivals, priority=True)
    assert granted["first"] == pytest.approx(0.4, abs=0.01)
    assert (granted["final1"], granted["final2"]) == pytest.approx((0.5, 0.6), abs=0.01)
    background = sorted((at, name) for name, at in granted.items() if name.startswith("b"))
    assert [name for _, name in background] == [f"b{i:02}" for i in range(30)]
    times = sorted(granted.values())
    assert _most_in_a_window(times, 1.0) <= 10
    assert _most_in_a_window(times, 0.1) <= 1
    assert max(times) == pytest.approx(3.2, abs=0.01)  # no slot was lost


@pytest.mark.parametrize("seed", range(5))
async def test_priority_never_exceeds_a_window_under_mixed_arrivals(seed: int) -> None:
    """Random arrivals of first updates, final cards and intermediate updates: no window
    is ever exceeded, every call is granted, and no priority call waits longer than it
    would in one arrival-order queue."""
    rng = random.Random(seed)
    ranks = list(Priority)
    arrivals = [
        (round(rng.uniform(0, 3), 3), f"c{i:03}", rng.choices(ranks, (2, 1, 7))[0])
        for i in range(60)
    ]
    fifo = await _grant_times(arrivals, priority=False)
    granted = await _grant_times(arrivals, priority=True)
    assert set(granted) == {name for _, name, _ in arrivals}
    times = sorted(granted.values())
    assert _most_in_a_window(times, 1.0) <= 10
    assert _most_in_a_window(times, 0.1) <= 1
    for at, name, rank in arrivals:
        assert granted[name] >= at - 1e-9
        if rank is Priority.FIRST:
            assert granted[name] <= fifo[name] + 1e-9
