"""The Feishu platform against its emulator over real sockets: responses before work,
fragments, quotes, and many concurrent answers without refused calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from imrobots import Robot
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
