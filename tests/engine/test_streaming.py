"""The streaming engine: coalescing, the update cap, first text, splitting, rotation, modes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from imrobots.agents import AgentRequest
from imrobots.cards import Card, CardStatus, Note
from imrobots.models import Message
from imrobots.robot import Reply, Robot
from imrobots.streaming import CONTINUED_NOTE, AnswerStatus, StreamPolicy

from .conftest import (
    FAST,
    Factory,
    Recorder,
    answer_cards,
    joined_text,
    markdown_of,
    ops,
    squash,
    streaming_agent,
    words,
)


async def test_coalescing_a_fast_agent_gives_a_handful_of_updates(make_runtime: Factory) -> None:
    chunks = words(1000)
    hooks = Recorder()
    platform, runtime = await make_runtime(
        agent=streaming_agent(chunks, seconds=1.0), hooks=hooks, update_interval=0.5, **FAST
    )
    message = await platform.say("count to a thousand")
    await runtime.wait_idle(timeout=10)

    [(_, result)] = hooks.finished
    assert result.status is AnswerStatus.FINAL
    # ~1 s of streaming at one update per 0.5 s: the first text, then one or two more
    assert 1 <= result.updates <= 5, result.updates
    [card] = answer_cards(platform, message)
    assert card.status is CardStatus.FINAL
    assert card.text == "".join(chunks)
    # each update carried the latest text, a prefix of the answer, never a stale one
    shown = [markdown_of(version) for _, version in card.history[1:-1]]
    assert all("".join(chunks).startswith(text) for text in shown)
    assert [len(t) for t in shown] == sorted(len(t) for t in shown)


async def test_seed_policy_caps_updates_and_keeps_the_last_for_the_final(
    make_runtime: Factory,
) -> None:
    # 200 chunks: the seed's "every 5 chunks" would give 40 updates; the cap of 20 holds
    chunks = words(200)
    hooks = Recorder()
    platform, runtime = await make_runtime(
        agent=streaming_agent(chunks, seconds=0.6),
        hooks=hooks,
        stream=StreamPolicy.seed(),
        **FAST,
    )
    message = await platform.say("long answer")
    await runtime.wait_idle(timeout=10)

    [(_, result)] = hooks.finished
    assert result.updates == 19
    [card] = answer_cards(platform, message)
    statuses = [v.status for _, v in card.history if isinstance(v, Card)]
    assert statuses[0] is CardStatus.THINKING
    assert statuses[1:] == [CardStatus.STREAMING] * 19 + [CardStatus.FINAL]
    # 20 updates of the card, the last one being the final card with the whole text
    assert len(card.history) - 1 == 20
    assert card.text == "".join(chunks)


async def test_first_text_shows_at_once(make_runtime: Factory) -> None:
    release = asyncio.Event()

    async def agent(request: AgentRequest) -> AsyncIterator[str]:
        yield "Hello"
        await release.wait()
        yield " world"

    hooks = Recorder()
    # an update interval of 60 s: only the "first text at once" rule can show it now
    platform, runtime = await make_runtime(
        agent=agent, hooks=hooks, stream=StreamPolicy(min_interval=60.0), **FAST
    )
    message = await platform.say("hi")
    await platform.wait_for(
        lambda: any(
            c.status is CardStatus.STREAMING and c.text == "Hello"
            for c in answer_cards(platform, message)
        ),
        timeout=2.0,
    )
    release.set()
    await runtime.wait_idle(timeout=5)
    [card] = answer_cards(platform, message)
    assert card.status is CardStatus.FINAL
    assert card.text == "Hello world"
    [(_, result)] = hooks.finished
    assert result.first_update_latency is not None
    assert result.first_update_latency < 1.0


def _is_continued(version: Card | str) -> bool:
    return isinstance(version, Card) and any(
        isinstance(e, Note) and e.text == CONTINUED_NOTE for e in version.elements
    )


async def _check_split(make_runtime: Factory, chunks: list[str], **settings: object) -> None:
    hooks = Recorder()
    platform, runtime = await make_runtime(
        agent=streaming_agent(chunks, seconds=0.5), hooks=hooks, max_text=100, **FAST, **settings
    )
    message = await platform.say("write a lot")
    await runtime.wait_idle(timeout=10)

    answer = "".join(chunks)
    [(_, result)] = hooks.finished
    assert result.status is AnswerStatus.FINAL
    cards = answer_cards(platform, message)
    assert len(cards) >= len(answer) // 100 + 1
    assert result.cards == len(cards)
    # every version of every card fits the platform's limit (the platform refuses more)
    for card in cards:
        for _, version in card.history:
            assert len(markdown_of(version)) <= 100
    # all but the last say "continued below"; the last is the final card with buttons
    assert all(_is_continued(c.current) for c in cards[:-1])
    last = cards[-1].current
    assert isinstance(last, Card) and last.status is CardStatus.FINAL and last.buttons
    # and together they hold the whole answer, in order
    assert squash(joined_text(cards)) == squash(answer)
    assert platform.rejected_calls == 0
    assert all(c.ok for c in platform.calls)


async def test_oversize_text_is_split_into_several_cards(make_runtime: Factory) -> None:
    await _check_split(make_runtime, words(120))


async def test_oversize_text_arriving_in_one_chunk_is_split(make_runtime: Factory) -> None:
    # 1,000 characters at once: more than the limit must never reach one card
    await _check_split(make_runtime, ["start ", " ".join(["abcdefghi"] * 100)])


async def test_oversize_text_native_mode(make_runtime: Factory) -> None:
    await _check_split(make_runtime, words(120), streaming="native")


async def test_stream_lifetime_rotates_cards_before_they_expire(make_runtime: Factory) -> None:
    chunks = words(60)
    hooks = Recorder()
    # the platform refuses updates to a card older than 0.6 s; rotate 0.2 s before that
    platform, runtime = await make_runtime(
        agent=streaming_agent(chunks, seconds=1.4),
        hooks=hooks,
        stream_lifetime=0.6,
        update_interval=0.05,
        stream=StreamPolicy(min_interval=0.05, lifetime_margin=0.2),
        **FAST,
    )
    message = await platform.say("take your time")
    await runtime.wait_idle(timeout=10)

    [(_, result)] = hooks.finished
    assert result.status is AnswerStatus.FINAL
    cards = answer_cards(platform, message)
    assert len(cards) >= 3
    for card in cards:
        opened = card.history[0][0]
        assert all(at - opened <= 0.6 for at, _ in card.history), "updated after its lifetime"
        assert card.status is not None and card.status.is_terminal
    assert all(_is_continued(c.current) for c in cards[:-1])
    assert cards[-1].status is CardStatus.FINAL
    assert squash(joined_text(cards)) == squash("".join(chunks))


async def test_card_gone_on_update_sends_the_final_as_a_new_card(make_runtime: Factory) -> None:
    release = asyncio.Event()

    async def agent(request: AgentRequest) -> AsyncIterator[str]:
        yield "part one, "
        await release.wait()
        for word in words(20):
            yield word

    hooks = Recorder()
    platform, runtime = await make_runtime(
        agent=agent, hooks=hooks, stream=StreamPolicy(min_interval=0.01), **FAST
    )
    message = await platform.say("question")
    await platform.wait_for(
        lambda: any(c.status is CardStatus.STREAMING for c in answer_cards(platform, message))
    )
    [first] = answer_cards(platform, message)
    first.gone = True  # deleted by a user, or expired
    release.set()
    await runtime.wait_idle(timeout=5)

    [(_, result)] = hooks.finished
    assert result.status is AnswerStatus.FINAL
    old, new = answer_cards(platform, message)
    assert old is first
    assert new.status is CardStatus.FINAL
    assert new.text == "part one, " + "".join(words(20))
    assert isinstance(new.current, Card) and new.current.buttons


async def test_native_mode_streams_with_stream_update(make_runtime: Factory) -> None:
    chunks = words(30)
    platform, runtime = await make_runtime(
        agent=streaming_agent(chunks, seconds=0.5), streaming="native", update_interval=0.1, **FAST
    )
    message = await platform.say("native")
    await runtime.wait_idle(timeout=5)

    calls = ops(platform)
    assert calls[0] == "send_card"
    assert calls[-1] == "update_card"  # the final card, with its buttons
    middle = calls[1:-1]
    assert middle and set(middle) == {"stream_update"}
    [card] = answer_cards(platform, message)
    streamed = [v for _, v in card.history if isinstance(v, str)]
    assert streamed and all("".join(chunks).startswith(t) for t in streamed)
    assert card.status is CardStatus.FINAL and card.text == "".join(chunks)


async def test_buffered_mode_sends_only_the_final_card(make_runtime: Factory) -> None:
    chunks = words(30)
    hooks = Recorder()
    platform, runtime = await make_runtime(
        agent=streaming_agent(chunks, seconds=0.3), hooks=hooks, streaming="buffered", **FAST
    )
    message = await platform.say("buffered")
    await runtime.wait_idle(timeout=5)

    assert ops(platform) == ["send_card"]
    [card] = answer_cards(platform, message)
    assert len(card.history) == 1
    assert card.status is CardStatus.FINAL and card.text == "".join(chunks)
    [(_, result)] = hooks.finished
    assert result.updates == 0 and result.first_update_latency is None


class _PolicyRobot(Robot):
    """Streams with a per-call policy, as a robot author may."""

    async def on_message(self, message: Message, reply: Reply) -> None:
        await reply.stream(self.ask(message), policy=StreamPolicy(min_interval=0.0, min_gap=0.0))


async def test_an_answer_complete_before_its_turn_sends_no_thinking_card(
    make_runtime: Factory,
) -> None:
    # A slow quota (one call a second): the first answer's thinking card goes out at once;
    # the others' turns come after their (instant) answers are complete, so the final card
    # takes the turn instead of a thinking card it would overwrite at once.
    platform, runtime = await make_runtime(
        robot=_PolicyRobot(agent=streaming_agent(["done"])), app_rate=1.0
    )
    messages = [await platform.say(f"q{i}", conversation=f"c{i}") for i in range(3)]
    await runtime.wait_idle(timeout=10)
    first, *others = (answer_cards(platform, m) for m in messages)
    [card] = first
    assert [v.status for _, v in card.history if isinstance(v, Card)] == [
        CardStatus.THINKING,
        CardStatus.FINAL,
    ]
    for cards in others:
        [card] = cards
        assert len(card.history) == 1
        assert card.status is CardStatus.FINAL and card.text == "done"
    assert len(platform.calls) == 4  # not 6


async def test_a_card_at_its_update_cap_is_still_rotated_before_it_expires(
    make_runtime: Factory,
) -> None:
    chunks = words(60)
    hooks = Recorder()
    # two updates per card (the last kept for the final), and cards that expire after 0.6 s
    platform, runtime = await make_runtime(
        agent=streaming_agent(chunks, seconds=1.4),
        hooks=hooks,
        stream_lifetime=0.6,
        stream=StreamPolicy(min_interval=0.05, max_updates=3, lifetime_margin=0.2),
        **FAST,
    )
    message = await platform.say("long and slow")
    await runtime.wait_idle(timeout=10)

    [(_, result)] = hooks.finished
    assert result.status is AnswerStatus.FINAL
    cards = answer_cards(platform, message)
    assert len(cards) >= 3
    for card in cards:
        assert card.status is not None and card.status.is_terminal, "a card expired mid-stream"
        assert len(card.history) - 1 <= 3  # the cap holds, closing update included
    assert all(c.ok for c in platform.calls)
    assert squash(joined_text(cards)) == squash("".join(chunks))
