"""Many answers at once: they stream side by side, and every one ends in a final card."""

from __future__ import annotations

import time

from imrobots.cards import Card, CardStatus

from .conftest import FAST, Factory, Recorder, answer_cards, streaming_agent, words


async def test_fifty_two_second_answers_run_side_by_side(make_runtime: Factory) -> None:
    chunks = words(20)
    hooks = Recorder()
    platform, runtime = await make_runtime(
        agent=streaming_agent(chunks, seconds=2.0), hooks=hooks, **FAST
    )
    started = time.monotonic()
    messages = [await platform.say(f"question {i}", conversation=f"c{i}") for i in range(50)]
    await runtime.wait_idle(timeout=30)
    elapsed = time.monotonic() - started

    # one after the other this would take 50 x 2 s = 100 s
    assert elapsed < 10.0, f"50 answers of 2 s took {elapsed:.1f} s"
    assert elapsed >= 2.0
    for message in messages:
        [card] = answer_cards(platform, message)
        final = card.current
        assert isinstance(final, Card) and final.status is CardStatus.FINAL
        assert final.markdown == "".join(chunks)
        assert len(final.buttons) == 4
        # it streamed: at least one update with partial text before the final card
        assert any(
            isinstance(v, Card) and v.status is CardStatus.STREAMING for _, v in card.history
        )
    assert len(hooks.finished) == 50
    assert runtime.stats.answered == 50
