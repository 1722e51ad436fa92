"""``enter_chat``: a user opens the robot's chat; the robot's greeting goes out as WeCom's
welcome reply (``aibot_respond_welcome_msg``) within 5 s, or proactively when it cannot."""

from __future__ import annotations

import time

from imrobots import ChatEntered, Reply, Robot
from imrobots.cards import Card, Markdown
from imrobots.emulation import EmulatorAdapter
from imrobots.platform import ConversationKind, Platform
from imrobots.testing.conformance import card_text, open_rig
from imrobots_wecom.console import WeComConsoleAdapter


def _platform(emulator: EmulatorAdapter) -> Platform:
    platform = emulator.create_platform()
    assert platform is not None
    return platform


class Greeter(Robot):
    def __init__(self, *, times: int = 1, card: bool = False) -> None:
        super().__init__()
        self.times = times
        self.card = card
        self.entered: list[ChatEntered] = []

    async def on_enter_chat(self, event: ChatEntered, reply: Reply) -> None:
        self.entered.append(event)
        if self.card:
            await reply.card(Card(title="Support", elements=(Markdown(text="Ask me anything"),)))
            return
        for i in range(self.times):
            await reply.text(f"Welcome {event.sender.id} #{i}")


def _calls(adapter: WeComConsoleAdapter, route: str) -> list[dict[str, object]]:
    return [c for c in adapter.state()["calls"] if c["route"] == route]


async def test_entering_the_chat_is_greeted_with_the_welcome_reply_within_5s() -> None:
    robot = Greeter()
    adapter = WeComConsoleAdapter()
    async with open_rig(lambda: adapter, robot, make_platform=_platform) as rig:
        entered_at = time.time()
        await adapter.enter(user_id="alice", conversation_id="d-welcome")
        message = await rig.robot_message("d-welcome", "Welcome alice #0")
        [event] = robot.entered
        assert event.sender.id == "alice" and event.platform == "wecom"
        assert event.conversation is not None
        assert event.conversation.kind is ConversationKind.DIRECT
        [welcome] = _calls(adapter, "aibot_respond_welcome_msg")
        # the emulator refuses a welcome later than 5 s (846605), so 200 is "in time"
        assert welcome["status"] == 200
        assert float(welcome["time"]) - entered_at < 5.0  # type: ignore[arg-type]
        assert not _calls(adapter, "aibot_send_msg")
        assert message["from_robot"]


async def test_a_greeting_card_is_a_welcome_template_card() -> None:
    adapter = WeComConsoleAdapter()
    async with open_rig(lambda: adapter, Greeter(card=True), make_platform=_platform) as rig:
        await adapter.enter(user_id="bob", conversation_id="d-card")
        card = await rig.until(
            "the welcome card", lambda: next(iter(rig.cards("d-card")), None), timeout=5
        )
        assert card["title"] == "Support" and "Ask me anything" in card_text(card)
        assert [c["status"] for c in _calls(adapter, "aibot_respond_welcome_msg")] == [200]


async def test_a_greeting_too_late_for_the_welcome_goes_proactively() -> None:
    """WeCom refuses the welcome after its window (here: at once); the greeting is
    then sent with ``aibot_send_msg``, and so is a second greeting on one event."""
    adapter = WeComConsoleAdapter()
    adapter.emulator.welcome_window = 0.0
    async with open_rig(lambda: adapter, Greeter(times=2), make_platform=_platform) as rig:
        await adapter.enter(user_id="carol", conversation_id="d-late")
        await rig.robot_message("d-late", "Welcome carol #0")
        await rig.robot_message("d-late", "Welcome carol #1")
        assert [c["status"] for c in _calls(adapter, "aibot_respond_welcome_msg")] == [400]
        assert [c["status"] for c in _calls(adapter, "aibot_send_msg")] == [200, 200]


async def test_one_welcome_per_event_then_proactive() -> None:
    adapter = WeComConsoleAdapter()
    async with open_rig(lambda: adapter, Greeter(times=2), make_platform=_platform) as rig:
        await adapter.enter(user_id="dave", conversation_id="d-twice")
        await rig.robot_message("d-twice", "Welcome dave #1")
        assert len(_calls(adapter, "aibot_respond_welcome_msg")) == 1
        assert len(_calls(adapter, "aibot_send_msg")) == 1


async def test_a_robot_that_does_not_greet_sends_nothing() -> None:
    robot = Greeter(times=0)
    adapter = WeComConsoleAdapter()
    async with open_rig(lambda: adapter, robot, make_platform=_platform) as rig:
        await adapter.enter(user_id="erin")
        await rig.until("the event handled", lambda: robot.entered or None)
        await rig.runtime.wait_idle(timeout=5)
        assert not [c for c in adapter.state()["calls"] if c["route"].startswith("aibot_")]
