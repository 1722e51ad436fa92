"""Regression tests of the generalized platform contract (issue 8), on the memory platform.

Each test names the fault found on the old main and the value it showed there.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import attrs
import pytest

from imrobots.agents import AgentRequest
from imrobots.cards import Actions, Button, Card, CardStatus, Markdown
from imrobots.clock import FakeClock
from imrobots.errors import NotSupported
from imrobots.memory import MemoryPlatform, MemorySettings
from imrobots.models import CardAction, Message, Target
from imrobots.platform import Op, RateLimit, Scope, SizeUnit, measure
from imrobots.ratelimit import CallScope, RateLimiter
from imrobots.robot import ActionReply, Reply, Robot
from imrobots.runtime import RobotRuntime, RuntimeOptions
from imrobots.store import MemoryStore
from imrobots.streaming import CONTINUED_NOTE, EMPTY_ANSWER, StreamPolicy, split_text

from .conftest import FAST, AgentRobot, Factory, answer_cards, eventually, streaming_agent, words


def reply(text: str):
    async def agent(request: AgentRequest) -> str:
        return text

    return agent


# --- item 1: a send that timed out after the platform acted -------------------------------
async def test_send_that_timed_out_after_acting_makes_one_card(make_runtime: Factory) -> None:
    """Old main: retried under a new card id, one card stayed "thinking" beside the final."""
    platform, runtime = await make_runtime(
        agent=streaming_agent(words(6), seconds=0.1),
        timeout_after_act=1.0,
        timeout_after_act_ops=("send_card",),
        stream=StreamPolicy(min_interval=0.01, retry_backoff=0.01, max_backoff=0.02),
        **FAST,
    )
    message = await platform.say("hello")
    await runtime.wait_idle(10)
    cards = answer_cards(platform, message)
    assert len(cards) == 1
    assert cards[0].status is CardStatus.FINAL
    assert "w5" in cards[0].text


async def test_text_retried_after_a_time_out_is_posted_once(make_runtime: Factory) -> None:
    """Old main: a retried send_text posted twice."""

    class Texter(Robot):
        async def on_message(self, message: Message, reply: Reply) -> None:
            await reply.text("only once")

    platform, runtime = await make_runtime(
        robot=Texter(), timeout_after_act=1.0, timeout_after_act_ops=("send_text",), **FAST
    )
    await platform.say("hello")
    await runtime.wait_idle(10)
    assert platform.texts == [("conversation-1", "only once")]


# --- item 2: dedupe keys scoped by robot ----------------------------------------------------
async def test_two_robots_on_one_store_both_answer_the_same_message() -> None:
    """Old main: ``sales cards: 1, support cards: 0`` (the second robot dropped it)."""
    store = MemoryStore()
    runtimes = []
    platforms = []
    for name in ("sales", "support"):
        platform = MemoryPlatform(MemorySettings(**FAST))
        runtime = RobotRuntime(
            name=name,
            robot=AgentRobot(agent=reply(f"{name} here")),
            platform=platform,
            store=store,
            feedback_secret="s",
        )
        await runtime.start()
        runtimes.append(runtime)
        platforms.append(platform)
    try:
        for platform in platforms:
            await platform.say("hi", message_id="same-id")
        for runtime in runtimes:
            await runtime.wait_idle(10)
        assert [len(p.cards) for p in platforms] == [1, 1]
        assert [r.stats.duplicates for r in runtimes] == [0, 0]
    finally:
        for runtime in runtimes:
            await runtime.stop()


# --- item 4: size limits in bytes ---------------------------------------------------------
def test_split_text_counts_bytes_and_never_breaks_a_character() -> None:
    text = ("数据" * 3000 + "\n") * 3  # 18,003 characters, 54,003 bytes
    head, rest = split_text(text, 20_000, SizeUnit.BYTES)
    assert measure(head, SizeUnit.BYTES) <= 20_000
    assert head.encode("utf-8").decode("utf-8") == head
    assert head + "\n" + rest == text or head + rest == text


def test_a_lone_surrogate_is_measured_as_its_json_escape_and_split_without_error() -> None:
    assert measure("a\ud800", SizeUnit.BYTES) == 1 + 6  # sent as a \ud800 escape
    assert measure("a\ud800", SizeUnit.CHARACTERS) == 2
    head, rest = split_text("word \udc00" * 10, 30, SizeUnit.BYTES)
    assert head and rest and measure(head, SizeUnit.BYTES) <= 30


async def test_a_27000_byte_answer_is_delivered_whole_within_a_byte_cap(
    make_runtime: Factory,
) -> None:
    """Old main counted characters: a 27,000-byte answer (9,000 CJK characters) passed a
    20,000 "character" check, was refused by the platform and lost whole."""
    answer = "\n".join("第" + "答" * 99 for _ in range(90))  # 90 lines x 300 bytes
    assert 26_000 < measure(answer, SizeUnit.BYTES) < 28_000
    platform, runtime = await make_runtime(
        agent=reply(answer), text_unit="bytes", max_text=20_000, **FAST
    )
    message = await platform.say("long please")
    await runtime.wait_idle(10)
    cards = answer_cards(platform, message)
    assert len(cards) >= 2
    assert all(measure(c.text, SizeUnit.BYTES) <= 20_000 for c in cards)
    assert "".join(c.text.replace("\n", "") for c in cards) == answer.replace("\n", "")
    assert cards[-1].status is CardStatus.FINAL
    assert all(c.ok for c in platform.calls)


async def test_long_text_messages_are_split_by_the_message_cap(make_runtime: Factory) -> None:
    class Texter(Robot):
        async def on_message(self, message: Message, reply: Reply) -> None:
            await reply.markdown("é" * 150)  # 300 bytes

    platform, runtime = await make_runtime(
        robot=Texter(), text_unit="bytes", max_message_text=100, **FAST
    )
    await platform.say("hi")
    await runtime.wait_idle(10)
    parts = [text for _, text in platform.texts]
    assert len(parts) == 3 and "".join(parts) == "é" * 150


# --- item 5: proactive sends, answers to presses, threads -----------------------------------
async def test_proactive_sends_to_a_user_and_a_group(make_runtime: Factory) -> None:
    robot = AgentRobot(agent=reply("x"))
    platform, _ = await make_runtime(robot=robot, **FAST)
    await robot.send(Target.to_user("memory", "boss"), "report ready")
    await robot.send(Target.to_group("memory", "team-chat"), Card(title="Deploy done"))
    assert platform.texts == [("boss", "report ready")]
    assert [c.conversation_id for c in platform.cards.values()] == ["team-chat"]


async def test_on_action_answers_a_button_press(make_runtime: Factory) -> None:
    pressed: list[CardAction] = []

    class Approver(Robot):
        async def on_message(self, message: Message, reply: Reply) -> None:
            await reply.card(
                Card(
                    title="Approve?",
                    elements=(Actions(buttons=(Button(label="Approve", value="approve"),)),),
                )
            )

        async def on_action(self, action: CardAction, reply: ActionReply) -> None:
            pressed.append(action)
            await reply.replace(Card(title="Approved", elements=(Markdown(text="by you"),)))
            await reply.text("done")

    platform, runtime = await make_runtime(robot=Approver(), **FAST)
    await platform.say("deploy?")
    await runtime.wait_idle(10)
    (card,) = platform.cards.values()
    await platform.press(card.id, "Approve")
    await runtime.wait_idle(10)
    assert [a.value for a in pressed] == ["approve"]
    assert isinstance(card.current, Card) and card.current.title == "Approved"
    assert platform.texts == [("conversation-1", "done")]


async def test_old_style_on_action_with_one_argument_still_runs(make_runtime: Factory) -> None:
    seen: list[str] = []

    class Old(Robot):
        async def on_message(self, message: Message, reply: Reply) -> None:
            await reply.card(
                Card(title="x", elements=(Actions(buttons=(Button(label="Go", value="go"),)),))
            )

        async def on_action(self, action: CardAction) -> None:  # type: ignore[override]
            seen.append(action.action_id)

    platform, runtime = await make_runtime(robot=Old(), **FAST)
    await platform.say("x")
    await runtime.wait_idle(10)
    await platform.press(next(iter(platform.cards)), "Go")
    await runtime.wait_idle(10)
    assert len(seen) == 1


async def test_reply_in_a_thread(make_runtime: Factory) -> None:
    class Threaded(Robot):
        async def on_message(self, message: Message, reply: Reply) -> None:
            await reply.in_thread().stream("in the thread")

    platform, runtime = await make_runtime(robot=Threaded(), **FAST)
    message = await platform.say("start a thread")
    await runtime.wait_idle(10)
    (card,) = platform.cards.values()
    assert card.thread == message.id and card.status is CardStatus.FINAL


async def test_attachments_are_read_through_the_platform(make_runtime: Factory) -> None:
    got: list[bytes] = []

    class Reader(Robot):
        async def on_message(self, message: Message, reply: Reply) -> None:
            for attachment in message.attachments:
                got.append(await attachment.read())
            await reply.image(b"\x89PNG...", name="chart.png")

    platform, runtime = await make_runtime(robot=Reader(), **FAST)
    await platform.say("see this", attachments=[("image", "photo.jpg", b"JPEGDATA")])
    await runtime.wait_idle(10)
    assert got == [b"JPEGDATA"]
    assert [(kind, u.name) for _, kind, u in platform.uploads] == [("image", "chart.png")]


# --- item 6: lifetime remedies and scoped limits -------------------------------------------
async def test_a_renewable_stream_is_renewed_not_rotated(make_runtime: Factory) -> None:
    platform, runtime = await make_runtime(
        agent=streaming_agent(words(30), seconds=1.5),
        stream_lifetime=0.5,
        lifetime_remedy="renew",
        stream=StreamPolicy(min_interval=0.05, lifetime_margin=0.2),
        **FAST,
    )
    message = await platform.say("long")
    await runtime.wait_idle(10)
    (card,) = answer_cards(platform, message)
    assert card.renewals >= 1
    assert card.status is CardStatus.FINAL and "w29" in card.text


async def test_a_busy_conversation_does_not_slow_another() -> None:
    """Per-conversation limits are waited for outside the app's queue."""
    limiter = RateLimiter(
        MemoryStore(),
        "t",
        limits=(
            RateLimit(scope=Scope.APP, rate=200.0),
            RateLimit(scope=Scope.CONVERSATION, rate=5.0),
        ),
    )
    busy = [
        asyncio.ensure_future(limiter.acquire(CallScope(op=Op.PUSH, conversation="busy")))
        for _ in range(10)
    ]
    await asyncio.sleep(0)  # the busy conversation's ten calls are queued first
    started = time.monotonic()
    await limiter.acquire(CallScope(op=Op.PUSH, conversation="quiet"))
    quiet_wait = time.monotonic() - started
    assert quiet_wait < 0.1  # the busy one's 10 calls take 1.8 s at 5/s
    await asyncio.gather(*busy)


# --- item 11: degradation -------------------------------------------------------------------
async def test_refused_cards_degrade_to_a_message_and_are_skipped_later(
    make_runtime: Factory,
) -> None:
    """Old main: the user heard nothing and the stats said "answered"."""
    platform, runtime = await make_runtime(agent=reply("the answer"), refuse_cards=True, **FAST)
    await platform.say("q1")
    await runtime.wait_idle(10)
    assert [text for _, text in platform.texts] and "the answer" in platform.texts[0][1]
    assert runtime.stats.answered == 1 and runtime.stats.degraded == 1
    refused_before = len([c for c in platform.calls if not c.ok])
    await platform.say("q2")
    await runtime.wait_idle(10)
    assert len(platform.texts) == 2
    assert len([c for c in platform.calls if not c.ok]) == refused_before  # no card attempt


async def test_an_answer_delivered_nowhere_is_counted_failed(make_runtime: Factory) -> None:
    platform, runtime = await make_runtime(
        agent=reply("lost"),
        failure_rate=1.0,
        failure_kind="5xx",
        stream=StreamPolicy(final_deadline=0.3, retry_backoff=0.01, max_backoff=0.02),
        **FAST,
    )
    await platform.say("q")
    await runtime.wait_idle(10)
    assert runtime.stats.answered == 0 and runtime.stats.failed == 1


# --- item 12: empty in, empty out -----------------------------------------------------------
async def test_a_message_without_text_gets_the_default_reply(make_runtime: Factory) -> None:
    asked: list[str] = []

    async def agent(request: AgentRequest) -> str:
        asked.append(request.text)
        return "answer"

    platform, runtime = await make_runtime(agent=agent, **FAST)
    await platform.say("", attachments=[("image", "p.png", b"x")])
    await platform.say("   ")
    await runtime.wait_idle(10)
    assert asked == []
    assert [t for _, t in platform.texts] == [Robot.empty_message_reply] * 2
    assert platform.cards == {}


async def test_a_whitespace_answer_is_an_empty_answer(make_runtime: Factory) -> None:
    platform, runtime = await make_runtime(agent=reply("  \n "), **FAST)
    message = await platform.say("q")
    await runtime.wait_idle(10)
    (card,) = answer_cards(platform, message)
    assert isinstance(card.current, Card)
    assert EMPTY_ANSWER in card.text and card.current.buttons == ()
    assert await runtime.store.history(message.conversation_key) == []


# --- items 9 and 10: keys and restarts ------------------------------------------------------
async def test_an_answer_left_open_by_a_dead_runtime_is_closed_as_interrupted(tmp_path) -> None:
    """A crash leaves the answer's record in the store; once the dead runtime's lease lapses,
    a live runtime of the robot closes its card as interrupted with the text it showed."""
    from imrobots.sqlite_store import SQLiteStore

    store = SQLiteStore(tmp_path / "state.db")
    platform = MemoryPlatform(MemorySettings(**FAST))
    hang = asyncio.Event()

    async def slow(request: AgentRequest) -> AsyncIterator[str]:
        yield "half an answer"
        await hang.wait()

    options = RuntimeOptions(stream=StreamPolicy(min_interval=0.01), liveness_ttl=0.3)
    first = RobotRuntime(
        name="bot", robot=AgentRobot(agent=slow), platform=platform, store=store, options=options
    )
    await first.start()
    message = await platform.say("q")
    await eventually(lambda: any("half" in c.text for c in platform.cards.values()))
    records = await store.scan_values("open:bot:")
    assert len(records) == 1 and first.owner in next(iter(records.values()))
    # The "crash": the first runtime stops renewing its lease and never finishes its answer.
    assert first._watcher is not None
    first._watcher.cancel()
    for task in list(first._tasks):
        task.remove_done_callback(first._task_done)

    second = RobotRuntime(
        name="bot",
        robot=AgentRobot(agent=reply("x")),
        platform=platform,
        store=store,
        options=options,
    )
    await second.start()
    (card,) = answer_cards(platform, message)
    assert card.status is CardStatus.STREAMING  # the first one's lease still holds: alive
    await eventually(lambda: second.stats.recovered == 1)  # its lease lapsed: closed
    assert card.status is CardStatus.INTERRUPTED and "half an answer" in card.text
    assert await store.scan_values("open:bot:") == {}
    await second.stop()
    await first.stop()
    await store.close()


async def test_a_second_worker_leaves_the_first_ones_answers_alone(tmp_path) -> None:
    """Review finding: a second worker on a shared SQLite store closed the first worker's
    live answers as "left open by a crash"."""
    from imrobots.sqlite_store import SQLiteStore

    store = SQLiteStore(tmp_path / "state.db")
    platform = MemoryPlatform(MemorySettings(**FAST))
    release = asyncio.Event()

    async def slow(request: AgentRequest) -> AsyncIterator[str]:
        yield "working "
        await release.wait()
        yield "done"

    options = RuntimeOptions(stream=StreamPolicy(min_interval=0.01), liveness_ttl=0.3)
    first = RobotRuntime(
        name="bot", robot=AgentRobot(agent=slow), platform=platform, store=store, options=options
    )
    await first.start()
    message = await platform.say("q")
    await eventually(lambda: any("working" in c.text for c in platform.cards.values()))
    second = RobotRuntime(
        name="bot",
        robot=AgentRobot(agent=reply("x")),
        platform=platform,
        store=store,
        options=options,
    )
    await second.start()
    recoveries = [await second.recover_open_answers() for _ in range(3)]
    release.set()
    await first.wait_idle(10)
    (card,) = answer_cards(platform, message)
    assert recoveries == [0, 0, 0] and card.status is CardStatus.FINAL
    assert card.text == "working done"
    await second.stop()
    await first.stop()
    await store.close()


async def test_a_restarted_replica_closes_its_own_answers_at_once(tmp_path) -> None:
    from imrobots.sqlite_store import SQLiteStore

    store = SQLiteStore(tmp_path / "state.db")
    platform = MemoryPlatform(MemorySettings(**FAST))

    async def slow(request: AgentRequest) -> AsyncIterator[str]:
        yield "half"
        await asyncio.Event().wait()

    options = RuntimeOptions(stream=StreamPolicy(min_interval=0.01), replica="worker-1")
    first = RobotRuntime(
        name="bot", robot=AgentRobot(agent=slow), platform=platform, store=store, options=options
    )
    await first.start()
    message = await platform.say("q")
    await eventually(lambda: any("half" in c.text for c in platform.cards.values()))
    assert first._watcher is not None
    first._watcher.cancel()
    for task in list(first._tasks):
        task.remove_done_callback(first._task_done)
    second = RobotRuntime(
        name="bot",
        robot=AgentRobot(agent=reply("x")),
        platform=platform,
        store=store,
        options=options,
    )
    await second.start()  # the same replica name: its answers from before are closed at once
    (card,) = answer_cards(platform, message)
    assert card.status is CardStatus.INTERRUPTED and second.stats.recovered == 1
    await second.stop()
    await first.stop()
    await store.close()


def _two_processes_named(replica: str) -> list[RobotRuntime]:
    """Two runtimes of robot ``bot`` with one replica name on one store, as two
    processes of one name would be."""
    store = MemoryStore()
    options = RuntimeOptions(replica=replica)
    return [
        RobotRuntime(
            name="bot",
            robot=AgentRobot(agent=reply("x")),
            platform=MemoryPlatform(MemorySettings(**FAST)),
            store=store,
            options=options,
        )
        for _ in range(2)
    ]


async def test_two_live_processes_with_one_replica_name_are_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The lease is held under the replica name, so a second live process of the same
    name renewed it as its own and the documented error never came (while the second,
    at its start, took the first one's running answers for a previous process's). Each
    renewal now finds the other process's mark and says so, in both processes."""
    runtimes = _two_processes_named("worker-1")
    for runtime in runtimes:
        await runtime.start()
    try:
        error = "another live process of robot bot uses the replica name 'worker-1'"
        assert error not in caplog.text
        for runtime in runtimes:  # each one's next renewal (every third of liveness_ttl)
            await runtime._keep_alive()
        assert caplog.text.count(error) == 2
    finally:
        for runtime in runtimes:
            await runtime.stop()


async def test_a_restarted_replica_is_not_taken_for_a_second_live_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second = _two_processes_named("worker-1")
    await first.start()
    await first._keep_alive()
    assert first._watcher is not None
    first._watcher.cancel()  # the "crash": it renews no more; its lease and mark remain
    await second.start()
    try:
        await second._keep_alive()
        await second._keep_alive()
        assert "uses the replica name" not in caplog.text
    finally:
        await second.stop()
        await first.stop()


async def test_feedback_buttons_survive_a_restart(tmp_path) -> None:
    from imrobots.sqlite_store import SQLiteStore

    path = tmp_path / "state.db"
    platform = MemoryPlatform(MemorySettings(**FAST))
    store = SQLiteStore(path)
    first = RobotRuntime(
        name="bot", robot=AgentRobot(agent=reply("hi")), platform=platform, store=store
    )
    await first.start()
    await platform.say("q")
    await first.wait_idle(10)
    await first.stop()
    await store.close()

    store = SQLiteStore(path)
    second = RobotRuntime(
        name="bot", robot=AgentRobot(agent=reply("hi")), platform=platform, store=store
    )
    await second.start()
    (card,) = platform.cards.values()
    await platform.press(card.id, "Helpful")
    await second.wait_idle(10)
    assert second.stats.forged == 0 and second.stats.feedback == 1
    await second.stop()
    await store.close()


# --- the clock ------------------------------------------------------------------------------
async def test_the_engine_runs_on_an_injected_clock() -> None:
    """Ten virtual seconds of streaming take no wall-clock time."""
    clock = FakeClock()
    chunks = asyncio.Queue[str]()

    async def agent(request: AgentRequest) -> AsyncIterator[str]:
        while (chunk := await chunks.get()) != "":
            yield chunk

    platform = MemoryPlatform(MemorySettings(**FAST))
    runtime = RobotRuntime(
        name="bot",
        robot=AgentRobot(agent=agent),
        platform=platform,
        clock=clock,
        options=RuntimeOptions(stream=StreamPolicy(min_interval=5.0, agent_timeout=60.0)),
    )
    await runtime.start()
    started = time.monotonic()
    message = await platform.say("q")
    await clock.settle()
    for second in range(10):
        chunks.put_nowait(f"s{second} ")
        await clock.advance(1.0)
    (card,) = answer_cards(platform, message)
    shown = [v.markdown if isinstance(v, Card) else v for _, v in card.history[1:]]
    # the first text at once, then one update every 5 virtual seconds with the latest text
    assert shown == ["s0 ", "s0 s1 s2 s3 s4 ", "s0 s1 s2 s3 s4 s5 s6 s7 s8 s9 "]
    chunks.put_nowait("")
    await runtime.wait_idle(5)
    assert card.status is CardStatus.FINAL and "s9" in card.text
    assert time.monotonic() - started < 2.0
    await runtime.stop()


async def test_a_robot_greets_a_user_who_opens_the_chat(make_runtime: Factory) -> None:
    from imrobots.models import ChatEntered

    greeted: list[str] = []

    class Greeter(Robot):
        async def on_enter_chat(self, event: ChatEntered, reply: Reply) -> None:
            greeted.append(event.sender.id)
            await reply.text("Hello! Ask me anything.")

    platform, runtime = await make_runtime(robot=Greeter(), **FAST)
    await platform.enter(sender="newcomer")
    await runtime.wait_idle(10)
    assert greeted == ["newcomer"]
    assert platform.texts == [("newcomer", "Hello! Ask me anything.")]


async def test_an_operation_calling_two_apis_takes_a_turn_in_each() -> None:
    limiter = RateLimiter(
        MemoryStore(),
        "t",
        limits=(RateLimit(scope=Scope.API, rate=1.0),),  # one call a second per API
        api_names={Op.CLOSE: ("card.streaming", "card.instances"), Op.PUSH: "card.streaming"},
    )
    assert await limiter.acquire(CallScope(op=Op.CLOSE)) == 0.0
    # the close took the one turn of both APIs: card.instances is full for a second too
    room = await limiter.store.room_in("t:0:api:card.instances", limit=1, window=1.0)
    assert room == pytest.approx(1.0, abs=0.05)
    # and a push (card.streaming only) waits for its API's next turn
    assert await limiter.acquire(CallScope(op=Op.PUSH)) == pytest.approx(1.0, abs=0.05)


async def test_a_text_whose_answer_was_lost_is_taken_as_delivered(make_runtime: Factory) -> None:
    """A platform that cannot repeat a send safely: the robot's code does not see an error
    and the text is not posted twice."""

    class Texter(Robot):
        async def on_message(self, message: Message, reply: Reply) -> None:
            await reply.text("once")
            await reply.text("twice?")

    platform, runtime = await make_runtime(
        robot=Texter(), timeout_after_act=1.0, timeout_after_act_ops=("send_text",), **FAST
    )
    platform.capabilities = attrs.evolve(
        platform.capabilities, idempotent=frozenset({Op.SEND_CARD, Op.UPDATE_CARD})
    )
    await platform.say("hi")
    await runtime.wait_idle(10)
    assert [t for _, t in platform.texts] == ["once", "twice?"]
    assert runtime.stats.failed == 0 and runtime.stats.answered == 1


async def test_finals_of_answers_ending_together_stay_within_the_window(
    make_runtime: Factory,
) -> None:
    """Found with Feishu: turns the pumps kept for their final cards were used long after
    they were granted, all at once, and overfilled the platform's window (429s)."""
    finish = asyncio.Event()

    async def agent(request: AgentRequest) -> AsyncIterator[str]:
        for i in range(3):
            yield f"part{i} "
            await asyncio.sleep(0.01)
        await finish.wait()
        yield "end"

    platform, runtime = await make_runtime(
        agent=agent,
        app_rate=12.0,  # the client allows 10 a second
        quota=12,  # the platform refuses the 13th call within a second
        stream=StreamPolicy(min_interval=0.05, retry_backoff=0.01, max_backoff=0.02),
    )
    for i in range(30):
        await platform.say(f"q{i}", conversation=f"c{i}")
    await eventually(lambda: len(platform.cards) == 30, within=20)
    finish.set()
    await runtime.wait_idle(60)
    assert platform.rejected_calls == 0
    assert all(c.status is CardStatus.FINAL for c in platform.cards.values())


async def test_a_call_under_several_limits_is_recorded_when_it_is_made() -> None:
    """Found with Feishu: a chat's slot was recorded when its own window had room, but the
    call waited longer for the app's; the chat's next call then came too soon."""
    limiter = RateLimiter(
        MemoryStore(),
        "t",
        limits=(
            RateLimit(scope=Scope.APP, rate=20.0, window=0.1),  # 2 per 0.1 s
            RateLimit(scope=Scope.CONVERSATION, rate=10.0, window=0.1),  # 1 per 0.1 s
        ),
    )
    made: list[float] = []

    async def call(conversation: str) -> None:
        await limiter.acquire(CallScope(op=Op.PUSH, conversation=conversation))
        if conversation == "x":
            made.append(time.monotonic())

    busy = [asyncio.ensure_future(call(f"other{i}")) for i in range(10)]  # app busy ~0.5 s
    await asyncio.sleep(0)
    await asyncio.gather(*(call("x") for _ in range(3)), *busy)
    gaps = [b - a for a, b in itertools.pairwise(made)]
    assert len(made) == 3 and all(gap >= 0.1 - 0.005 for gap in gaps), gaps


@pytest.mark.parametrize("remedy", ["renew", "new_message", "keep_alive"])
async def test_a_thinking_card_never_outlives_its_stream(
    make_runtime: Factory, remedy: str
) -> None:
    """Review finding: an agent whose first text came after the stream lifetime left the
    thinking card on "thinking" for ever (and keep-alive pushes blanked it)."""

    async def slow(request: AgentRequest) -> AsyncIterator[str]:
        await asyncio.sleep(1.0)  # longer than the 0.6 s lifetime: the model thinking
        yield "at last"

    platform, runtime = await make_runtime(
        agent=slow,
        stream_lifetime=0.6,
        lifetime_remedy=remedy,
        keep_alive=0.2,
        stream=StreamPolicy(min_interval=0.05, lifetime_margin=0.2),
        **FAST,
    )
    message = await platform.say("q")
    await runtime.wait_idle(10)
    cards = answer_cards(platform, message)
    assert all(c.status is not None and c.status.is_terminal for c in cards), [
        c.status for c in cards
    ]
    assert all(c.text.strip() for c in cards)  # never a blank card
    assert cards[-1].status is CardStatus.FINAL and "at last" in cards[-1].text
    assert not [c for c in platform.calls if c.error == "CardExpired"]


async def test_renewals_that_fail_leave_no_card_streaming_and_no_text_twice(
    make_runtime: Factory,
) -> None:
    """Review finding: failing renews used the whole margin; the card then expired on
    "streaming" and the next card repeated its text."""
    chunks = words(40)
    platform, runtime = await make_runtime(
        agent=streaming_agent(chunks, seconds=2.0),
        stream_lifetime=0.6,
        lifetime_remedy="renew",
        failure_rate=0.25,
        failure_kind="5xx",
        seed=3,
        stream=StreamPolicy(
            min_interval=0.05, lifetime_margin=0.3, retry_backoff=0.02, max_backoff=0.05
        ),
        **FAST,
    )
    message = await platform.say("q")
    await runtime.wait_idle(20)
    cards = answer_cards(platform, message)
    shown = "".join(c.text.replace(CONTINUED_NOTE, "") for c in cards)
    for chunk in chunks:
        assert shown.count(chunk) == 1, chunk  # every word once, none twice
    assert cards[-1].status is CardStatus.FINAL


# --- from the newcomer review -----------------------------------------------------------


async def test_stats_count_streams_sent_through_any_reply(make_runtime: Factory) -> None:
    """Review finding: an answer streamed through reply.in_thread() that reached nobody
    was counted answered (answered 1, failed 0)."""

    class Threaded(Robot):
        async def on_message(self, message: Message, reply: Reply) -> None:
            await reply.in_thread().stream("lost")

    platform, runtime = await make_runtime(
        robot=Threaded(),
        failure_rate=1.0,
        failure_kind="5xx",
        stream=StreamPolicy(final_deadline=0.3, retry_backoff=0.01, max_backoff=0.02),
        **FAST,
    )
    await platform.say("q")
    await runtime.wait_idle(10)
    assert (runtime.stats.answered, runtime.stats.failed) == (0, 1)


async def test_two_answers_to_one_message_are_rated_apart(make_runtime: Factory) -> None:
    """Review finding: both cards were signed with the message's id; rating the first
    stored the second's answer and the second rating was dropped as a repeat."""

    class Twice(Robot):
        async def on_message(self, message: Message, reply: Reply) -> None:
            await reply.stream("first answer")
            await reply.stream("second answer: details")

    platform, runtime = await make_runtime(robot=Twice(), **FAST)
    message = await platform.say("q")
    await runtime.wait_idle(10)
    first, second = answer_cards(platform, message)
    await platform.press(first.id, "No help")
    await platform.press(second.id, "Helpful")
    await runtime.wait_idle(10)
    stored = {f.answer: f.rating.value for f in await runtime.store.list_feedback()}
    assert stored == {"first answer": "no_help", "second answer: details": "helpful"}


async def test_blank_texts_are_not_sent(make_runtime: Factory) -> None:
    class Blank(Robot):
        async def on_message(self, message: Message, reply: Reply) -> None:
            await reply.text("")
            await reply.markdown("   ")
            await reply.text("real")

    platform, runtime = await make_runtime(robot=Blank(), **FAST)
    await platform.say("q")
    await runtime.wait_idle(10)
    assert [t for _, t in platform.texts] == ["real"]


async def test_proactive_sends_are_checked_in_the_core(make_runtime: Factory) -> None:
    robot = AgentRobot(agent=reply("x"))
    platform, runtime = await make_runtime(robot=robot, **FAST)
    with pytest.raises(ValueError, match="platform 'dingtalk'"):
        await robot.send(Target.to_user("dingtalk", "x"), "wrong platform")
    with pytest.raises(ValueError, match="neither a conversation nor a user"):
        await robot.send(Target(platform="memory"), "nowhere")
    with pytest.raises(ValueError, match="no thread"):
        robot.to(Target.to_user("memory", "x")).in_thread()
    platform.capabilities = attrs.evolve(platform.capabilities, proactive=False, mentions=False)
    with pytest.raises(NotSupported, match="send first"):
        await robot.send(Target.to_user("memory", "x"), "hello")
    await runtime.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        await robot.send(Target.to_group("memory", "g"), "after the end")
    assert platform.texts == []


async def test_a_degraded_answer_is_the_answer_alone(make_runtime: Factory) -> None:
    """Review finding: with cards refused, the text repeated the question, listed the
    buttons as text, and sent "(continued below)" as a message of its own."""
    answer = "\n".join(f"line {i} of the answer" for i in range(6))
    platform, runtime = await make_runtime(
        agent=reply(answer), refuse_cards=True, max_text=60, max_message_text=80, **FAST
    )
    await platform.say("the question")
    await runtime.wait_idle(10)
    texts = [t for _, t in platform.texts]
    joined = "\n".join(texts)
    assert "the question" not in joined and "Helpful" not in joined
    assert CONTINUED_NOTE not in joined and all(len(t) <= 80 for t in texts)
    assert joined.replace("\n", "") == answer.replace("\n", "")


async def test_a_lone_surrogate_from_the_agent_becomes_a_replacement_character(
    make_runtime: Factory,
) -> None:
    """A lone surrogate (half of a UTF-16 pair, as a stream cut between the two halves of
    an emoji leaves it) cannot be encoded as UTF-8: measuring the answer in bytes raised
    UnicodeEncodeError and the answer failed. It is shown as U+FFFD, the rest intact."""

    async def agent(request: object) -> AsyncIterator[str]:
        for chunk in ("Hello ", "\ud83d", " and ", "snapshot\udc00 end"):
            yield chunk

    platform, runtime = await make_runtime(agent=agent, text_unit="bytes", max_text=20_000, **FAST)
    message = await platform.say("emoji please")
    await runtime.wait_idle(10)
    [card] = answer_cards(platform, message)[-1:]
    assert card.status is CardStatus.FINAL
    assert card.text == "Hello \ufffd and snapshot\ufffd end"
    assert runtime.stats.answered == 1 and runtime.stats.failed == 0
