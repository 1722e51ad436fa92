"""Regression tests of the DingTalk plugin on the generalized platform contract.

Each test names the fault the plugin had before the port and the value it showed
there. They run the plugin inside a real ``RobotRuntime`` against the emulator over
real sockets; waits are on emulator events or the runtime, with deadlines.
"""

from __future__ import annotations

from typing import Any

import pytest

from imrobots import Message, Reply, Robot, RuntimeOptions
from imrobots.examples import SupportRobot
from imrobots.streaming import StreamPolicy
from imrobots_dingtalk.emulator import DingTalkEmulator
from imrobots_dingtalk.messages import WEBHOOK_TEXT_BYTES, utf8_size

from .support import APP, MODES, QUESTION, CardMode, card_calls, cards_for, final, running

FAST_RETRY = RuntimeOptions(
    stream=StreamPolicy(min_interval=0.1, retry_backoff=0.02, max_backoff=0.05)
)
CREATE_ROUTE = {
    "standard": "interactiveCards.send",
    "ai": "card.instances.createAndDeliver",
}


def cjk_text(size: int) -> str:
    """About ``size`` bytes of Chinese paragraphs (3 bytes a character)."""
    sentence = "退款将在七个工作日内原路返回到您的账户，请留意银行通知。"
    paragraphs: list[str] = []
    total = 0
    number = 0
    while total < size:
        number += 1
        paragraph = f"第{number}段：" + sentence * 6
        paragraphs.append(paragraph)
        total += utf8_size(paragraph) + 2
    return "\n\n".join(paragraphs)


class Texter(Robot):
    """Answers every message with one text or markdown message."""

    def __init__(self, text: str, *, markdown: bool = False) -> None:
        super().__init__()
        self.text = text
        self.markdown = markdown
        self.errors: list[BaseException] = []

    async def on_message(self, message: Message, reply: Reply) -> None:
        try:
            if self.markdown:
                await reply.markdown(self.text)
            else:
                await reply.text(self.text)
        except Exception as exc:
            self.errors.append(exc)


# --------------------------------------------------------------------------- item 4


@pytest.mark.parametrize("mode", MODES)
async def test_send_that_timed_out_after_acting_makes_one_card(
    emu: DingTalkEmulator, mode: CardMode
) -> None:
    """Before: "A send that times out after the server accepted it is retried under a new
    card id: one card stays on 'thinking' beside the final one"."""
    emu.withhold_responses(CREATE_ROUTE[mode], count=1)  # held until the emulator stops
    async with running(emu, mode, request_timeout=0.3, options=FAST_RETRY) as runtime:
        pushed = await emu.push_message(APP, text=QUESTION, conversation_id="cid-timeout")
        await emu.wait_for(lambda: any(final(c) for c in cards_for(emu, pushed)), 10)
        await runtime.wait_idle(10)
        creates = [c for c in emu.calls if c.route == CREATE_ROUTE[mode]]
        assert len(creates) == 2, "the create whose answer was withheld was retried"
        assert "response withheld" in " ".join(creates[0].notes)
        if mode == "ai":
            assert creates[1].error_code == "param.cardAlreadyExist"  # taken as success
        (card,) = cards_for(emu, pushed)
        assert final(card)
        assert runtime.stats.answered == 1 and runtime.stats.failed == 0


async def test_text_whose_answer_was_withheld_is_posted_once(emu: DingTalkEmulator) -> None:
    """Before: "a retried send_text posts twice"."""
    emu.withhold_responses("sessionWebhook", count=1)
    robot = Texter("only once")
    async with running(emu, robot=robot, request_timeout=0.3, options=FAST_RETRY) as runtime:
        await emu.push_message(APP, text="hello")
        await emu.wait_for(lambda: bool(emu.webhook_messages), 10, what="the text")
        await runtime.wait_idle(10)
    assert [m.text for m in emu.webhook_messages] == ["only once"]
    # sent, its answer lost, not repeatable: taken as delivered, never an error in robot code
    assert robot.errors == [] and runtime.stats.answered == 1


async def test_a_dropped_connection_after_acting_is_an_unknown_outcome(
    emu: DingTalkEmulator,
) -> None:
    emu.withhold_responses("sessionWebhook", count=1, mode="disconnect")
    robot = Texter("dropped")
    async with running(emu, robot=robot, options=FAST_RETRY) as runtime:
        await emu.push_message(APP, text="hello")
        await emu.wait_for(lambda: bool(emu.webhook_messages), 10, what="the text")
        await runtime.wait_idle(10)
    assert [m.text for m in emu.webhook_messages] == ["dropped"]
    assert robot.errors == [] and runtime.stats.answered == 1


# --------------------------------------------------------------------------- item 6


async def test_27000_byte_answer_is_split_by_bytes_in_order(emu: DingTalkEmulator) -> None:
    """Before: "A 27,000-byte answer on DingTalk is refused (460101) and lost whole"."""
    text = cjk_text(27_000)
    assert utf8_size(text) >= 27_000 and len(text) < 10_000  # bytes, not characters
    robot = Texter(text, markdown=True)
    async with running(emu, robot=robot) as runtime:
        await emu.push_message(APP, text="the long one")
        await emu.wait_for(lambda: len(emu.webhook_messages) >= 2, 10, what="two messages")
        await runtime.wait_idle(10)
    assert robot.errors == []
    sent = emu.webhook_messages
    assert len(sent) == 2 and all(m.ok for m in sent), [m.errcode for m in sent]
    parts = [m.text or "" for m in sent]
    assert all(utf8_size(p) <= WEBHOOK_TEXT_BYTES for p in parts)
    assert "\n\n".join(parts) == text  # in order, cut at a paragraph, nothing lost
    assert all(p.startswith("第") for p in parts)  # each part starts a paragraph
    assert all("\ufffd" not in p for p in parts)  # no broken UTF-8


async def test_the_emulator_refuses_a_webhook_text_over_20000_bytes(
    emu: DingTalkEmulator,
) -> None:
    """What the robot met before the port: 460101 for the whole answer."""
    pushed = await emu.push_message(APP, text="x")
    import aiohttp

    async with aiohttp.ClientSession() as http:
        body = {"msgtype": "text", "text": {"content": "字" * 6_667}}  # 20,001 bytes
        async with http.post(pushed.session_webhook, json=body) as response:
            answer = await response.json()
    assert answer == {"errcode": 460101, "errmsg": "message too long, exceed 20000 bytes"}


@pytest.mark.parametrize("mode", MODES)
async def test_a_long_streamed_answer_continues_in_cards_split_by_bytes(
    emu: DingTalkEmulator, mode: CardMode
) -> None:
    text = cjk_text(27_000)

    async def agent(request: Any) -> str:
        return text

    async with running(emu, mode, robot=SupportRobot(agent=agent)) as runtime:
        pushed = await emu.push_message(APP, text=QUESTION, conversation_id="cid-long")
        await emu.wait_for(lambda: any(final(c) for c in cards_for(emu, pushed)), 10)
        await runtime.wait_idle(10)
        cards = sorted(cards_for(emu, pushed), key=lambda c: c.at)
    assert len(cards) == 2
    shown = [c.view["markdown"] or "" for c in cards]
    assert all(utf8_size(s) <= 20_000 for s in shown)
    assert shown[0].endswith("(continued below)") and final(cards[1])
    assert text.startswith(shown[0].split("\n\n(continued below)")[0])
    assert "\ufffd" not in "".join(shown)


# --------------------------------------------------------------------------- item 7


@pytest.mark.parametrize("mode", MODES)
async def test_without_card_permission_the_answer_comes_as_markdown(
    emu: DingTalkEmulator, mode: CardMode
) -> None:
    """Before: "the user hears nothing and the stats say answered"."""
    emu.revoke_card_permissions(APP)
    async with running(emu, mode) as runtime:
        first = await emu.push_message(APP, text=QUESTION, sender_staff_id="staff3")
        await emu.wait_for(lambda: len(emu.webhook_messages) == 1, 10, what="markdown answer")
        await runtime.wait_idle(10)
        (answer,) = emu.webhook_messages
        assert answer.ok and answer.msgtype == "markdown" and answer.msg_id == first.msg_id
        assert "refund" in (answer.text or "")
        assert answer.at_user_ids == ["staff3"]
        refused = [c for c in emu.calls if c.status == 403]
        assert refused and all(
            c.error_code == "Forbidden.AccessDenied.AccessTokenPermissionDenied" for c in refused
        )
        assert runtime.stats.answered == 1 and runtime.stats.degraded == 1
        calls_after_first = card_calls(emu)

        await emu.push_message(APP, text="And shipping?", conversation_id="cid-second")
        await emu.wait_for(lambda: len(emu.webhook_messages) == 2, 10)
        await runtime.wait_idle(10)
        assert card_calls(emu) == calls_after_first, "the second answer tried a card again"
        assert runtime.stats.answered == 2 and runtime.stats.degraded == 2
    assert not emu.cards


async def test_the_refusal_names_the_permission_and_where_to_grant_it(
    emu: DingTalkEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    emu.revoke_permission(APP, "Card.Instance.Write")
    async with running(emu, "ai") as runtime:
        await emu.push_message(APP, text=QUESTION)
        await emu.wait_for(lambda: len(emu.webhook_messages) == 1, 10)
        await runtime.wait_idle(10)
    assert "Card.Instance.Write" in caplog.text
    assert "developer console" in caplog.text


@pytest.mark.parametrize("mode", MODES)
async def test_unpublished_robot_answers_through_the_webhook(
    emu: DingTalkEmulator, mode: CardMode
) -> None:
    """Before: a 1:1 message with senderStaffId "" got no answer (no user to send a card to)."""
    async with running(emu, mode) as runtime:
        pushed = await emu.push_message(
            APP, text=QUESTION, conversation_type="direct", sender_staff_id=""
        )
        assert pushed.data["senderStaffId"] == ""
        await emu.wait_for(lambda: len(emu.webhook_messages) == 1, 10)
        await runtime.wait_idle(10)
    (answer,) = emu.webhook_messages
    assert answer.ok and answer.msgtype == "markdown" and "refund" in (answer.text or "")
    assert card_calls(emu) == 0 and not emu.cards
    assert runtime.stats.answered == 1 and runtime.stats.degraded == 1
