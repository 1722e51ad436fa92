"""App mode: answers as template cards with feedback buttons, presses as encrypted
``template_card_event`` callbacks, cards replaced with ``update_template_card`` and the
press's ``ResponseCode`` (once, within its lifetime), on the WeCom emulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from imrobots import ActionReply, CardAction, Message, Reply, Robot
from imrobots.agents import AgentRequest
from imrobots.cards import Actions, Button, Card, Markdown
from imrobots.emulation import EmulatorAdapter
from imrobots.models import FeedbackRating
from imrobots.platform import CardGone, FatalPlatformError, Platform, Target
from imrobots.testing.conformance import USER, card_buttons, card_text, open_rig
from imrobots_wecom.api import WeComApi
from imrobots_wecom.console import WeComConsoleAdapter
from imrobots_wecom.platform import FEEDBACK_THANKS, WeComPlatform, app_task_id


def _calls(adapter: WeComConsoleAdapter, route: str) -> list[dict[str, Any]]:
    return [c for c in adapter.state()["calls"] if c["route"] == route]


def _platform(**overrides: Any) -> Any:
    def make(emulator: EmulatorAdapter) -> Platform:
        assert isinstance(emulator, WeComConsoleAdapter)
        platform = emulator.create_platform(**overrides)
        assert platform is not None
        return platform

    return make


class _Agent:
    async def __call__(self, request: AgentRequest) -> AsyncIterator[str]:
        for word in ("one", "two", "three"):
            yield f"{word} "


class _Approver(Robot):
    def __init__(self) -> None:
        super().__init__()
        self.actions: list[CardAction] = []

    async def on_message(self, message: Message, reply: Reply) -> None:
        buttons = (Button(label="Approve", value="approve"), Button(label="Reject", value="no"))
        await reply.card(
            Card(title="Approval", elements=(Markdown(text="Approve?"), Actions(buttons=buttons)))
        )

    async def on_action(self, action: CardAction, reply: ActionReply) -> None:
        self.actions.append(action)
        await reply.replace(Card(title=f"Approved by {action.sender.id}", elements=()))


async def test_feedback_goes_from_template_card_to_event_to_updated_card() -> None:
    adapter = WeComConsoleAdapter(mode="app")
    async with open_rig(lambda: adapter, Robot(agent=_Agent())) as rig:
        await rig.say("Rate me", conversation_id="d-rate", group=False)
        final = await rig.final_card("d-rate", "three")
        record = adapter.emulator.cards[final["id"]]
        assert record.kind == "template_card" and record.template is not None
        assert record.template["card_type"] == "button_interaction"
        assert record.template["task_id"] == final["id"]
        assert [b["label"] for b in card_buttons(final)] == [r.label for r in FeedbackRating]
        sends = [c for c in _calls(adapter, "/cgi-bin/message/send") if c["status"] == 200]
        assert len(sends) == 1, sends
        await rig.press(final, FeedbackRating.HELPFUL.label)

        def thanked() -> dict[str, Any] | None:
            card = next(c for c in rig.cards("d-rate") if c["id"] == final["id"])
            return card if FEEDBACK_THANKS in card_text(card) else None

        card = await rig.until("the card thanked", thanked, conversation_id="d-rate")
        assert not card_buttons(card), "the thanked card keeps no buttons"
        assert "one two three" in card_text(card), "the thanked card keeps the answer"
        assert adapter.emulator.cards[final["id"]].replaced == FEEDBACK_THANKS
        [update] = _calls(adapter, "/cgi-bin/message/update_template_card")
        assert update["status"] == 200
        feedback = await rig.runtime.store.list_feedback(robot=rig.runtime.name)
        assert [f.rating for f in feedback] == [FeedbackRating.HELPFUL]
        assert feedback[0].sender.id == USER and feedback[0].card_id == final["id"]
        # the thanked card has no button left to press
        with pytest.raises(ValueError):
            await adapter.emulator.press_app(
                adapter.corp_id, card_id=final["id"], key="x", user_id=USER
            )


async def test_a_press_is_answered_by_replacing_the_card_without_a_link() -> None:
    """No card_url: the replacement (no buttons) greys the buttons out with its title."""
    robot = _Approver()
    adapter = WeComConsoleAdapter(mode="app")
    async with open_rig(lambda: adapter, robot, make_platform=_platform(card_url=None)) as rig:
        await rig.say("ok?", conversation_id="d-approve", group=False)
        card = await rig.until(
            "the approval card",
            lambda: next((c for c in rig.cards("d-approve") if card_buttons(c)), None),
        )
        await rig.press(card, "Approve")
        await rig.until(
            "the buttons greyed out",
            lambda: any(
                c["id"] == card["id"] and not card_buttons(c) and "Approved by" in card_text(c)
                for c in rig.cards("d-approve")
            ),
        )
        assert [a.value for a in robot.actions] == ["approve"]
        assert robot.actions[0].card_id == card["id"]
        assert adapter.emulator.cards[card["id"]].replaced == f"Approved by {USER}"


async def test_a_card_without_buttons_and_no_link_goes_as_markdown() -> None:
    adapter = WeComConsoleAdapter(mode="app")
    await adapter.start()
    platform = adapter.create_platform(card_url=None)
    assert isinstance(platform, WeComPlatform)
    try:
        await platform.start(lambda event: asyncio.sleep(0))
        target = Target.to_user("r", "bob")
        await platform.send_card(
            target, Card(title="Note", elements=(Markdown(text="hi"),)), key="k1"
        )
        assert adapter.emulator.cards == {}
        assert [m["text"] for m in adapter.emulator.messages] == ["hi"]
    finally:
        await platform.close()
        await adapter.stop()


async def test_long_text_goes_first_as_markdown_and_a_retry_does_not_repeat_it() -> None:
    adapter = WeComConsoleAdapter(mode="app")
    await adapter.start()
    platform = adapter.create_platform()
    assert isinstance(platform, WeComPlatform)
    try:
        await platform.start(lambda event: asyncio.sleep(0))
        text = "长" * 200  # 600 bytes: over card_text_bytes (480)
        card = Card(
            title="Q",
            elements=(Markdown(text=text), Actions(buttons=(Button(label="Go", value="go"),))),
        )
        target = Target.to_user("r", "bob")
        ref = await platform.send_card(target, card, key="answer-1")
        record = adapter.emulator.cards[ref.id]
        assert record.template is not None and "sub_title_text" not in record.template
        assert [m["text"] for m in adapter.emulator.messages] == [text]
        # the same key again: the markdown part is known sent; the card is refused as a
        # repeated task_id (WeCom: task_ids do not repeat), nothing is shown twice
        with pytest.raises(FatalPlatformError):
            await platform.send_card(target, card, key="answer-1")
        assert [m["text"] for m in adapter.emulator.messages] == [text]
        assert len(adapter.emulator.cards) == 1
    finally:
        await platform.close()
        await adapter.stop()


def test_task_ids_follow_wecom_rules() -> None:
    assert app_task_id("answer-1_x@y") == "answer-1_x@y"
    hashed = app_task_id("a.b")  # '.' is not allowed in a task_id
    assert len(hashed) == 64 and hashed.isalnum()
    assert len(app_task_id("k" * 129)) == 64


async def test_update_template_card_takes_a_response_code_once_and_in_time() -> None:
    adapter = WeComConsoleAdapter(mode="app")
    emulator = adapter.emulator
    await adapter.start()
    app = adapter.app
    try:
        async with aiohttp.ClientSession() as session:
            from imrobots.platform import Secret

            api = WeComApi(
                session, endpoint=emulator.base_url, corp_id=app.corp_id, secret=Secret(app.secret)
            )
            template = {
                "card_type": "button_interaction",
                "main_title": {"title": "T"},
                "task_id": "task-1",
                "button_list": [{"text": "A", "key": "a"}],
            }
            sent = await api.post(
                "/cgi-bin/message/send",
                {
                    "touser": "bob",
                    "agentid": app.agent_id,
                    "msgtype": "template_card",
                    "template_card": template,
                },
            )
            code = sent["response_code"]
            update = {
                "userids": ["bob"],
                "agentid": app.agent_id,
                "response_code": code,
                "button": {"replace_name": "Done"},
            }
            await api.post("/cgi-bin/message/update_template_card", update)
            assert emulator.cards["task-1"].replaced == "Done"
            with pytest.raises(FatalPlatformError, match="40058"):  # used already
                await api.post("/cgi-bin/message/update_template_card", update)
            with pytest.raises(FatalPlatformError, match="40058"):  # unknown
                await api.post(
                    "/cgi-bin/message/update_template_card", {**update, "response_code": "nope"}
                )
            # a press's own code, used after its lifetime (72 hours; here none at all)
            emulator.cards["task-1"].replaced = None
            emulator.response_code_ttl = 0.0
            press_code = await emulator.press_app(
                app.corp_id, card_id="task-1", key="a", user_id="bob"
            )
            with pytest.raises(FatalPlatformError, match="40058"):
                await api.post(
                    "/cgi-bin/message/update_template_card",
                    {**update, "response_code": press_code},
                )
            # task_ids: WeCom's characters only, never twice
            for bad in ({**template, "task_id": "a.b"}, template):
                with pytest.raises(FatalPlatformError, match="40058"):
                    await api.post(
                        "/cgi-bin/message/send",
                        {
                            "touser": "bob",
                            "agentid": app.agent_id,
                            "msgtype": "template_card",
                            "template_card": bad,
                        },
                    )
    finally:
        await adapter.stop()


async def test_a_forged_card_event_is_rejected_and_nothing_is_pressed() -> None:
    robot = _Approver()
    adapter = WeComConsoleAdapter(mode="app")
    async with open_rig(lambda: adapter, robot) as rig:
        await rig.say("ok?", conversation_id="d-forged", group=False)
        card = await rig.until(
            "the approval card",
            lambda: next((c for c in rig.cards("d-forged") if card_buttons(c)), None),
        )
        emulator = adapter.emulator
        app = adapter.app
        fields = (
            f"<xml><ToUserName><![CDATA[{app.corp_id}]]></ToUserName>"
            "<FromUserName><![CDATA[mallory]]></FromUserName><CreateTime>1</CreateTime>"
            "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[template_card_event]]></Event>"
            f"<EventKey><![CDATA[approve]]></EventKey><TaskId><![CDATA[{card['id']}]]></TaskId>"
            "<ResponseCode><![CDATA[forged]]></ResponseCode></xml>"
        )
        query, body = emulator.encrypt_callback(app, fields)
        query["msg_signature"] = "0" * 40
        assert app.callback_url is not None
        async with (
            aiohttp.ClientSession() as session,
            session.post(app.callback_url, params=query, data=body) as response,
        ):
            assert response.status == 403
        platform = rig.platform
        assert isinstance(platform, WeComPlatform) and platform.forged == 1
        await rig.runtime.wait_idle(timeout=5)
        assert robot.actions == []
        assert not _calls(adapter, "/cgi-bin/message/update_template_card")


async def test_a_sent_card_can_be_updated_once_with_its_response_code() -> None:
    adapter = WeComConsoleAdapter(mode="app")
    await adapter.start()
    platform = adapter.create_platform()
    assert isinstance(platform, WeComPlatform)
    try:
        await platform.start(lambda event: asyncio.sleep(0))
        target = Target.to_user("r", "bob")
        buttons = Actions(buttons=(Button(label="Go", value="go"),))
        ref = await platform.send_card(
            target, Card(title="Job", elements=(Markdown(text="running"), buttons)), key="job-1"
        )
        await platform.update_card(ref, Card(title="Job", elements=(Markdown(text="done"),)))
        record = adapter.emulator.cards[ref.id]
        assert record.template is not None and record.template["sub_title_text"] == "done"
        assert record.template["card_type"] == "text_notice"  # no buttons: a linked notice
        with pytest.raises(CardGone):  # WeCom's response_code is single use
            await platform.update_card(ref, Card(title="Job", elements=(Markdown(text="x"),)))
    finally:
        await platform.close()
        await adapter.stop()
