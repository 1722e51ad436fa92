"""Issue 12, items 6 and 7 on DingTalk over real sockets: a handler that hangs is cut and
its chat answers the next message; a feedback value replayed on another card, by a user of
another chat or with another card's rating is rejected (groups and direct chats), while
genuine presses are stored."""

from __future__ import annotations

import asyncio
from typing import Literal

import pytest

from imrobots import Message, Reply, RuntimeOptions
from imrobots.demo_agent import DemoAgent
from imrobots.examples import SupportRobot
from imrobots.models import FeedbackRating
from imrobots_dingtalk.emulator import CardRecord, DingTalkEmulator, PushedMessage

from .support import APP, QUESTION, cards_for, final, running


class HangsOnce(SupportRobot):
    """Hangs on messages saying "hang"; answers the others as the example robot does."""

    async def on_message(self, message: Message, reply: Reply) -> None:
        if message.text.strip() == "hang":
            await asyncio.Event().wait()
        await super().on_message(message, reply)


async def test_a_hung_handler_is_cut_and_the_chat_answers_the_next_message(
    emu: DingTalkEmulator,
) -> None:
    robot = HangsOnce(agent=DemoAgent(delay=0.005))
    options = RuntimeOptions(handler_timeout=0.5)
    async with running(emu, "standard", robot=robot, options=options) as runtime:
        hung = await emu.push_message(APP, text="hang", conversation_id="cid-one")
        after = await emu.push_message(APP, text=QUESTION, conversation_id="cid-one")
        await emu.wait_for(lambda: any(map(final, cards_for(emu, after))), 15, what="answer")
        await runtime.wait_idle(10)
    [error, answer] = sorted(cards_for(emu, hung), key=lambda c: c.at)
    assert "too long" in (error.view["markdown"] or "") and not error.view["buttons"]
    assert final(answer) and "refund" in (answer.view["markdown"] or "")
    assert runtime.stats.handler_timeouts == 1 and runtime.stats.answered == 1


def _button(card: CardRecord, rating: FeedbackRating) -> dict[str, str]:
    [button] = [b for b in card.view["buttons"] if b["label"] == rating.label]
    return button


@pytest.mark.parametrize("kind", ["group", "direct"])
async def test_replayed_feedback_is_rejected_and_genuine_presses_are_stored(
    emu: DingTalkEmulator, kind: Literal["group", "direct"]
) -> None:
    async with running(emu, "ai") as runtime:
        pushed: list[PushedMessage] = []
        for user in ("alice", "alice", "bob"):
            pushed.append(
                await emu.push_message(
                    APP,
                    text=QUESTION,
                    conversation_type=kind,
                    conversation_id=None if kind == "direct" else f"cid-{user}",
                    sender_staff_id=user,
                )
            )
        await emu.wait_for(lambda: sum(map(final, emu.cards.values())) == 3, 20)
        # Alice's two answers are in one chat (A then B), Bob's in another (C)
        card_a, card_b = sorted(cards_for(emu, pushed[0]), key=lambda c: c.at)
        [card_c] = cards_for(emu, pushed[2])
        value_a = _button(card_a, FeedbackRating.HELPFUL)["value"]
        replays = [
            (card_b, "alice", value_a),  # A's value on card B
            (card_c, "bob", value_a),  # by a user of another chat, on their card
            (card_c, "bob", _button(card_a, FeedbackRating.NO_HELP)["value"]),  # other rating
        ]
        for card, user, value in replays:
            await emu.press_button(
                APP,
                card_id=card.card_id,
                action_id=_button(card, FeedbackRating.HELPFUL)["id"],
                params={"value": value},
                user_id=user,
            )
        await emu.wait_for(lambda: runtime.stats.forged == 3, 10, what="3 rejections")
        assert await runtime.store.list_feedback() == []

        for card, user in ((card_a, "alice"), (card_c, "bob")):
            button = _button(card, FeedbackRating.HELPFUL)
            await emu.press_button(
                APP,
                card_id=card.card_id,
                action_id=button["id"],
                params={"value": button["value"]},
                user_id=user,
            )
        await emu.wait_for(lambda: runtime.stats.feedback == 2, 10, what="2 stored")
    stored = {(f.sender.id, f.card_id) for f in await runtime.store.list_feedback()}
    assert stored == {("alice", card_a.card_id), ("bob", card_c.card_id)}
    assert runtime.stats.forged == 3
