"""The Feishu platform against its emulator over real sockets: responses before work,
fragments, quotes, and many concurrent answers without refused calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from imrobots import Robot
from imrobots.agents import AgentRequest
from imrobots.config import structure
from imrobots.emulation import EmulatorAdapter
from imrobots.platform import CardAction, Message, Platform
from imrobots.testing.conformance import card_text, numbered, open_rig

pytest.importorskip("lark_oapi")

from imrobots_feishu.console import FeishuConsoleAdapter
from imrobots_feishu.platform import FeishuPlatform, FeishuSettings


def make_platform(emulator: EmulatorAdapter) -> Platform:
    return FeishuPlatform(structure(emulator.robot_settings(), FeishuSettings, path="feishu"))


async def test_response_frame_goes_before_the_work_and_fragments_join() -> None:
    adapter = FeishuConsoleAdapter(fragment_size=64)
    await adapter.start()
    platform = make_platform(adapter)
    release = asyncio.Event()
    seen: list[Message | CardAction] = []

    async def sink(event: Message | CardAction) -> None:
        seen.append(event)
        await release.wait()  # the robot is busy for as long as it likes

    try:
        await platform.start(sink)
        long_text = "a fragmented message " * 10
        _, delivery = adapter.emulator.push_message(
            adapter.app_id,
            chat_id="oc_1",
            chat_type="p2p",
            sender="ou_alice",
            message_type="text",
            content={"text": long_text},
        )
        assert delivery.done is not None
        answer = await asyncio.wait_for(delivery.done, 3.0)  # the 3 s deadline
        assert answer["code"] == 200
        await adapter.emulator.wait_for(lambda: bool(seen))
        [message] = seen
        assert isinstance(message, Message) and message.text == long_text.strip()
        assert not release.is_set()  # answered while the work was still going on
    finally:
        release.set()
        await platform.close()
        await adapter.stop()


async def test_quote_is_resolved() -> None:
    adapter = FeishuConsoleAdapter()
    await adapter.start()
    platform = make_platform(adapter)
    seen: list[Message | CardAction] = []

    async def sink(event: Message | CardAction) -> None:
        seen.append(event)

    try:
        await platform.start(sink)
        first, _ = adapter.emulator.push_message(
            adapter.app_id,
            chat_id="oc_q",
            chat_type="p2p",
            sender="ou_alice",
            message_type="text",
            content={"text": "the original"},
        )
        adapter.emulator.push_message(
            adapter.app_id,
            chat_id="oc_q",
            chat_type="p2p",
            sender="ou_alice",
            message_type="text",
            content={"text": "about that"},
            parent_id=first.message_id,
        )
        await adapter.emulator.wait_for(lambda: len(seen) == 2)
        quoted = [m for m in seen if isinstance(m, Message) and m.quote is not None]
        assert quoted and quoted[0].quote is not None
        assert quoted[0].quote.text == "the original"
    finally:
        await platform.close()
        await adapter.stop()


@pytest.fixture(params=["cardkit", "patch"])
def card_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_many_concurrent_answers_get_no_error(card_mode: str) -> None:
    """50 answers at once (CardKit or PATCH) end final with no sequence error (300317), no
    app-level rate limit (429, 99991400) and no per-chat or per-message limit (230020);
    10 answers in one chat never get 230020."""

    async def agent(text: str) -> AsyncIterator[str]:
        for word in numbered("w", 6):
            yield f"{word} "
            await asyncio.sleep(0.02)

    factory = lambda: FeishuConsoleAdapter(card_mode=card_mode)  # noqa: E731
    async with open_rig(
        factory, Robot(agent=agent), make_platform=make_platform, timeout=60.0
    ) as rig:
        chats = [rig.conversation("many") for _ in range(50)]
        one = rig.conversation("one")
        for chat in chats:
            await rig.say("go", conversation_id=chat, group=True)
        for _ in range(10):
            await rig.say("again", conversation_id=one, group=True)

        def finals() -> bool:
            cards = rig.emulator.state()["cards"]
            done = [c for c in cards if c["status"] == "final" and "w005" in card_text(c)]
            return len(done) >= 60

        await rig.until("60 final cards", finals, timeout=60.0)
        calls = rig.emulator.state()["calls"]
        refused = [c for c in calls if c["error"] in (300317, 230020) or c["rate_limited"]]
        assert refused == [], [(c["method"], c["route"], c["error"]) for c in refused]


def _most_in_a_second(times: list[float]) -> int:
    """The most of ``times`` (seconds) that fall within any one second."""
    times = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


async def test_patch_fallback_counts_updates_and_closes_in_one_window() -> None:
    """After Feishu refuses CardKit (99991672) the robot PATCHes messages: its updates and
    its final cards then call one API, ``im.message.patch``, and must share that API's
    50/s. Many answers ending over a couple of seconds while others still stream need both
    at once; before the platform announced the switch the limiter counted them in two
    CardKit windows and the emulator refused PATCHes (429, 99991400)."""

    async def agent(request: AgentRequest) -> AsyncIterator[str]:
        n = int(request.text.split()[-1])
        for word in numbered("w", 30 + n % 30):
            yield f"{word} "
            await asyncio.sleep(0.1)

    def factory() -> FeishuConsoleAdapter:
        adapter = FeishuConsoleAdapter(card_mode="cardkit")
        adapter.emulator.cardkit_refused = True
        return adapter

    async with open_rig(
        factory, Robot(agent=agent), make_platform=make_platform, timeout=60.0
    ) as rig:
        for n in range(120):
            await rig.say(f"go {n}", conversation_id=rig.conversation("fb"), group=True)

        def finals() -> bool:
            cards = rig.emulator.state()["cards"]
            return sum(c["status"] == "final" and "w029" in card_text(c) for c in cards) >= 120

        await rig.until("120 final cards", finals, timeout=60.0)
        assert isinstance(rig.emulator, FeishuConsoleAdapter)
        calls = rig.emulator.emulator.calls  # as the emulator counts them
        patches = [c for c in calls if c.method == "PATCH" and "/im/v1/messages/" in c.path]
        assert len(patches) > 120  # every answer PATCHed: the fallback happened
        refused = [c for c in calls if c.rate_limited]
        assert refused == [], [(c.method, c.path, c.code) for c in refused[:5]]
        assert _most_in_a_second([c.wall for c in patches]) <= 50
