"""The DingTalk platform end to end: the example robot against the emulator, over real sockets.

Every test runs the plugin (``DingTalkPlatform``) inside a core ``RobotRuntime``
with the seed's ``SupportRobot`` and the offline demo agent, and drives it as a
DingTalk user would, through the emulator. Waits are on emulator events or on
runtime state with deadlines, never on fixed sleeps.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest

from imrobots import (
    FatalPlatformError,
    FeedbackRating,
    Message,
    RobotRuntime,
    RuntimeOptions,
    Secret,
)
from imrobots.examples import SupportRobot
from imrobots_dingtalk.emulator import DingTalkEmulator
from imrobots_dingtalk.platform import DingTalkPlatform

from .support import (
    APP,
    MODES,
    QUESTION,
    SECRET,
    CardMode,
    cards_for,
    final,
    make_settings,
    running,
)


async def wait_idle(runtime: RobotRuntime, timeout: float = 10.0) -> None:
    await runtime.wait_idle(timeout)


# --------------------------------------------------------------------------- lifecycle


@pytest.mark.parametrize("mode", MODES)
async def test_example_robot_answers_and_takes_feedback(
    emu: DingTalkEmulator, mode: CardMode
) -> None:
    async with running(emu, mode) as runtime:
        pushed = await emu.push_message(
            APP, text=QUESTION, sender_staff_id="staff42", sender_nick="Bob"
        )
        await emu.wait_for(lambda: bool(cards_for(emu, pushed)), 2, what="thinking card")
        (card,) = cards_for(emu, pushed)
        assert card.at - pushed.at < 0.3, "the thinking card must appear within 300 ms"
        assert pushed.ack.acked and pushed.ack.code == 200
        assert pushed.ack.latency is not None and pushed.ack.latency < 0.1
        first = card.updates[0].content
        await emu.wait_for(lambda: final(card), 10, what="final card")

        # thinking -> streaming updates -> final, all on the same card
        assert card.at_user_ids == ["staff42"]  # the sender is @-mentioned in the group
        if mode == "standard":
            assert card.kind == "standard" and card.template_id == "StandardCard"
            assert first["header"]["title"]["text"] == QUESTION
            assert first["contents"][0]["text"].startswith("[thinking]")
            partial = [
                u
                for u in card.updates[1:-1]
                if u.content["contents"][0]["text"]
                and not u.content["contents"][0]["text"].startswith("[thinking]")
            ]
            assert partial, "no streaming update between thinking and final"
            last = card.content
            kinds = [c["type"] for c in last["contents"]]
            assert kinds == ["markdown", "divider", "action"]
            buttons = last["contents"][2]["actions"]
            assert all(b["actionType"] == "request" for b in buttons)
            ids = [c["id"] for c in last["contents"]]
            ids += [b["id"] for b in buttons] + [b["label"]["id"] for b in buttons]
            assert len(ids) == len(set(ids)), "element ids must be unique"
        else:
            assert card.kind == "instance" and card.template_id == "imrobots-answer.schema"
            assert first["flowStatus"] == "1" and first["title"] == QUESTION
            assert first["msgContent"].startswith("[thinking]")
            routes = [u.route for u in card.updates]
            assert routes[0] == "card.instances.createAndDeliver"
            assert routes.count("card.streaming") >= 2
            flow = [u.content.get("flowStatus") for u in card.updates]
            assert flow[0] == "1" and "2" in flow and flow[-1] == "3"  # thinking, inputing, done
            # the streaming call that closes it, then the data (flowStatus, buttons)
            assert routes[-2:] == ["card.streaming", "card.instances.update"]
            assert card.finalized and not card.error
            assert card.view["status"] == "finished"
            assert card.content["flowStatus"] == "3"
        assert "refund" in (card.view["markdown"] or "")
        labels = [b["label"] for b in card.view["buttons"]]
        assert labels == [r.label for r in FeedbackRating]

        # pressing "Helpful" stores feedback; the callback is answered at once
        button = card.view["buttons"][1]
        pressed = await emu.press_button(
            APP,
            card_id=card.card_id,
            action_id=button["id"],
            params={"value": button["value"]},
            user_id="staff42",
        )
        await emu.wait_for(lambda: pressed.ack.acked, 2, what="callback ack")
        assert pressed.ack.code == 200 and not pressed.ack.timed_out
        assert pressed.ack.latency is not None and pressed.ack.latency < 0.5
        assert pressed.ack.response == {}
        await wait_idle(runtime)
        (feedback,) = await runtime.store.list_feedback(robot="support")
        assert feedback.rating is FeedbackRating.HELPFUL
        assert feedback.sender.id == "staff42"
        assert feedback.message_id == pushed.msg_id
        assert feedback.question == QUESTION and "refund" in feedback.answer
        assert feedback.card_id == card.card_id
        assert runtime.stats.answered == 1 and runtime.stats.feedback == 1


async def test_forged_feedback_is_rejected(emu: DingTalkEmulator) -> None:
    async with running(emu) as runtime:
        pushed = await emu.push_message(APP, text=QUESTION)
        await emu.wait_for(lambda: any(final(c) for c in cards_for(emu, pushed)), 10)
        (card,) = cards_for(emu, pushed)
        button = card.view["buttons"][0]
        forged = button["value"][:-4] + "AAAA"
        pressed = await emu.press_button(
            APP, card_id=card.card_id, action_id=button["id"], params={"value": forged}
        )
        await emu.wait_for(lambda: pressed.ack.acked, 2)
        await wait_idle(runtime)
        assert await runtime.store.list_feedback() == []
        assert runtime.stats.forged == 1


@pytest.mark.parametrize("mode", MODES)
async def test_direct_chat_cards_go_to_the_user(emu: DingTalkEmulator, mode: CardMode) -> None:
    async with running(emu, mode):
        pushed = await emu.push_message(
            APP, text="hello", conversation_type="direct", sender_staff_id="staff9"
        )
        await emu.wait_for(lambda: any(final(c) for c in emu.cards.values()), 10)
        (card,) = emu.cards.values()
        assert card.conversation_type == "direct"
        assert card.receiver_user_ids == ["staff9"]
        assert card.at_user_ids == []
        assert pushed.ack.code == 200


async def test_ack_never_waits_for_the_answer(emu: DingTalkEmulator) -> None:
    release = asyncio.Event()

    async def slow_agent(request: Any) -> str:
        await release.wait()
        return "done"

    async with running(emu, robot=SupportRobot(agent=slow_agent)) as runtime:
        pushed = await emu.push_message(APP, text="take your time")
        await emu.wait_for(lambda: pushed.ack.acked and bool(emu.cards), 2)
        assert pushed.ack.latency is not None and pushed.ack.latency < 0.1
        assert runtime.stats.answered == 0  # still answering
        second = await emu.push_message(APP, text="another", conversation_id="cid-other")
        await emu.wait_for(lambda: second.ack.acked, 2)
        release.set()
        await emu.wait_for(lambda: sum(final(c) for c in emu.cards.values()) == 2, 10)


async def test_agent_error_ends_in_an_error_card(emu: DingTalkEmulator) -> None:
    async def broken(request: Any) -> str:
        raise RuntimeError("model exploded")

    async with running(emu, "ai", robot=SupportRobot(agent=broken)):
        await emu.push_message(APP, text="boom")
        await emu.wait_for(
            lambda: any(
                c.streaming_state == "failed" and c.content.get("stopReason")
                for c in emu.cards.values()
            ),
            10,
        )
        (card,) = emu.cards.values()
        assert card.content["stopReason"] == "error"
        assert card.view["status"] == "failed"
        assert card.content["flowStatus"] == "5"
        assert "went wrong" in card.content["msgContent"]


# --------------------------------------------------------------------------- limits


async def test_qps_403_is_met_and_survived(emu: DingTalkEmulator) -> None:
    emu.qps_limit = 4  # far below what the client-side budget (18/s) allows
    count = 12
    async with running(emu, delay=0.0, update_interval=0.3) as runtime:
        pushed = [
            await emu.push_message(APP, text=QUESTION, conversation_id=f"cid-qps-{i}")
            for i in range(count)
        ]
        await emu.wait_for(
            lambda: sum(final(c) for c in emu.cards.values()) == count, 30, what="every final"
        )
        await wait_idle(runtime)
    refused = [c for c in emu.calls if c.status == 403]
    assert refused, "the emulator never answered 403; the test did not test anything"
    assert {c.error_code for c in refused} == {"Forbidden.AccessDenied.QpsLimitForAppkeyAndApi"}
    for push in pushed:
        cards = cards_for(emu, push)
        assert len(cards) == 1 and final(cards[0]), "each message gets exactly one final card"
    assert runtime.stats.answered == count and runtime.stats.failed == 0
    assert runtime.limiter.stats.penalties >= 1


async def test_server_errors_and_token_expiry_are_retried(emu: DingTalkEmulator) -> None:
    async with running(emu, "ai", delay=0.0) as runtime:
        platform = runtime.platform
        assert isinstance(platform, DingTalkPlatform)
        emu.set_failure_rate(0.3, kind="5xx")
        emu.expire_tokens()
        pushes = [
            await emu.push_message(APP, text=QUESTION, conversation_id=f"cid-5xx-{i}")
            for i in range(4)
        ]
        await emu.wait_for(lambda: sum(final(c) for c in emu.cards.values()) == 4, 30)
        emu.set_failure_rate(0.0)
        await wait_idle(runtime)
        assert any(c.status == 500 for c in emu.calls)
        assert any(c.status == 401 for c in emu.calls)
        assert platform.api.token_fetches == 2  # one at start, one after the expiry
        for push in pushes:
            assert len(cards_for(emu, push)) == 1


# --------------------------------------------------------------------------- webhook


class EchoRobot(SupportRobot):
    """Answers with plain text through the sessionWebhook."""

    def __init__(self, markdown: bool = False) -> None:
        super().__init__()
        self.markdown = markdown
        self.errors: list[BaseException] = []

    async def on_message(self, message: Message, reply: Any) -> None:
        try:
            if self.markdown:
                await reply.markdown(f"**echo**: {message.text}")
            else:
                await reply.text(f"echo: {message.text}")
        except Exception as exc:
            self.errors.append(exc)


async def test_session_webhook_reply(emu: DingTalkEmulator) -> None:
    async with running(emu, robot=EchoRobot()) as runtime:
        pushed = await emu.push_message(APP, text="ping", sender_staff_id="staff1")
        await emu.wait_for(lambda: len(emu.webhook_messages) == 1, 5)
        await wait_idle(runtime)
    (sent,) = emu.webhook_messages
    assert sent.ok and sent.msgtype == "text" and sent.text == "echo: ping"
    assert sent.msg_id == pushed.msg_id
    assert sent.at_user_ids == ["staff1"]  # group replies @-mention the sender
    assert not emu.cards


async def test_session_webhook_markdown_in_direct_chat(emu: DingTalkEmulator) -> None:
    async with running(emu, robot=EchoRobot(markdown=True)) as runtime:
        await emu.push_message(APP, text="md", conversation_type="direct")
        await emu.wait_for(lambda: len(emu.webhook_messages) == 1, 5)
        await wait_idle(runtime)
    (sent,) = emu.webhook_messages
    assert sent.ok and sent.msgtype == "markdown" and sent.text == "**echo**: md"
    assert sent.at_user_ids == []


async def test_webhook_host_not_allow_listed_is_refused(emu: DingTalkEmulator) -> None:
    robot = EchoRobot()
    async with running(emu, robot=robot, webhook_hosts=()) as runtime:
        await emu.push_message(APP, text="ping")
        await emu.wait_for(lambda: bool(robot.errors), 5)
        await wait_idle(runtime)
    (error,) = robot.errors
    assert isinstance(error, FatalPlatformError)
    assert "127.0.0.1" in str(error) and "webhook_hosts" in str(error)
    assert "session=" not in str(error)  # the session token is not leaked
    assert emu.webhook_messages == [] and emu.sent_messages == []


async def test_expired_webhook_falls_back_to_the_openapi(emu: DingTalkEmulator) -> None:
    emu.webhook_lifetime = 0.001  # the session is gone before the reply
    async with running(emu, robot=EchoRobot()) as runtime:
        await emu.push_message(APP, text="late", conversation_id="cid-late")
        await emu.wait_for(lambda: len(emu.sent_messages) == 1, 5)
        await wait_idle(runtime)
    (sent,) = emu.sent_messages
    assert sent.route == "robot.groupMessages.send"
    assert sent.msg_key == "sampleText" and sent.msg_param == {"content": "echo: late"}
    assert sent.conversation_id == "cid-late"


# --------------------------------------------------------------------------- connection


async def test_connection_drop_mid_answer(emu: DingTalkEmulator) -> None:
    async with running(emu, delay=0.02) as runtime:
        platform = runtime.platform
        assert isinstance(platform, DingTalkPlatform) and platform.connection is not None
        first = await emu.push_message(APP, text=QUESTION, conversation_id="cid-drop-1")
        await emu.wait_for(
            lambda: any(len(c.updates) >= 2 for c in cards_for(emu, first)), 5, what="streaming"
        )
        assert await emu.drop_connections(APP) == 1
        await emu.wait_for(
            lambda: len(emu.connections) == 2 and len(emu.live_connections(APP)) == 1,
            5,
            what="reconnected",
        )
        assert emu.connections[0].close_reason == "dropped" and emu.connections[1].live
        second = await emu.push_message(APP, text=QUESTION, conversation_id="cid-drop-2")
        await emu.wait_for(
            lambda: all(any(final(c) for c in cards_for(emu, p)) for p in (first, second)), 10
        )
        await wait_idle(runtime)
        for push in (first, second):
            assert len(cards_for(emu, push)) == 1, "nothing answered twice"
            assert push.ack.code == 200 and push.ack.deliveries == 1
        assert runtime.stats.answered == 2 and runtime.stats.duplicates == 0
        assert platform.connection.stats.opened == 2


async def test_disconnect_reconnects_warm(emu: DingTalkEmulator) -> None:
    async with running(emu) as runtime:
        platform = runtime.platform
        assert isinstance(platform, DingTalkPlatform) and platform.connection is not None
        (old,) = emu.live_connections(APP)
        sent_at = time.monotonic()
        await emu.send_system(APP, "disconnect")
        await emu.wait_for(lambda: len(emu.connections) == 2, 2, what="second connection")
        new = emu.connections[1]
        assert new.at - sent_at < 0.5, "reconnect at once after disconnect"
        assert old.live, "the old connection is still open (draining) when the new one is up"
        pushed = await emu.push_message(APP, text=QUESTION)
        await emu.wait_for(lambda: any(final(c) for c in emu.cards.values()), 10)
        assert pushed.ack.connection_id == new.connection_id
        await emu.wait_for(lambda: not old.live, 5, what="old connection closed")
        assert len(emu.live_connections(APP)) == 1
        assert platform.connection.stats.disconnects == 1


async def test_system_ping_is_echoed(emu: DingTalkEmulator) -> None:
    async with running(emu):
        (ids,) = [await emu.send_system(APP, "ping", opaque="opaque-123")]
        ack = emu.acks[ids[0]]
        await emu.wait_for(lambda: ack.acked, 2)
        assert ack.echoed and ack.code == 200
        assert ack.data == {"opaque": "opaque-123"}


async def test_bad_credentials_fail_start_with_one_clear_line(emu: DingTalkEmulator) -> None:
    platform = DingTalkPlatform(make_settings(emu, client_secret=Secret("wrong-secret")))

    async def sink(event: Any) -> None:
        pass

    with pytest.raises(FatalPlatformError) as info:
        await platform.start(sink)
    text = str(info.value)
    assert "\n" not in text and APP in text and "invalidClientIdOrSecret" in text
    assert "wrong-secret" not in text and SECRET not in text
    await platform.close()


async def test_unknown_msgtype_is_acked_and_nothing_is_lost(emu: DingTalkEmulator) -> None:
    seen: list[Message] = []

    class Recorder(SupportRobot):
        async def on_message(self, message: Message, reply: Any) -> None:
            seen.append(message)

        async def on_empty_message(self, message: Message, reply: Any) -> None:
            seen.append(message)  # a picture alone, or a type without text

    async with running(emu, robot=Recorder()) as runtime:
        odd = await emu.push_message(
            APP, msgtype="interactiveCard", content={"cardUrl": "https://example.invalid"}
        )
        picture = await emu.push_message(
            APP, msgtype="picture", content={"downloadCode": "dc-1"}, conversation_type="direct"
        )
        text = await emu.push_message(APP, text="still here")
        await emu.wait_for(lambda: all(p.ack.acked for p in (odd, picture, text)), 2)
        await runtime.wait_idle(5)
    assert [p.ack.code for p in (odd, picture, text)] == [200, 200, 200]
    # the picture is a direct chat, answered concurrently with the group: no order between them
    assert sorted(m.kind.value for m in seen) == ["image", "text", "unsupported"]
    assert [m.text for m in seen if m.kind.value == "text"] == ["still here"]


# --------------------------------------------------------------------------- the loop


async def test_loop_lag_stays_low_during_50_answers(emu: DingTalkEmulator) -> None:
    emu.qps_limit = 10_000
    lags: list[float] = []
    stop = asyncio.Event()

    async def monitor() -> None:
        tick = 0.005
        while not stop.is_set():
            started = time.perf_counter()
            await asyncio.sleep(tick)
            lags.append(time.perf_counter() - started - tick)

    count = 50
    options = RuntimeOptions(max_concurrent=100)
    async with running(emu, delay=0.005, app_rate=400.0, options=options) as runtime:
        watcher = asyncio.create_task(monitor())
        pushes = [
            await emu.push_message(APP, text=QUESTION, conversation_id=f"cid-lag-{i}")
            for i in range(count)
        ]
        await emu.wait_for(
            lambda: sum(final(c) for c in emu.cards.values()) == count, 30, what="50 finals"
        )
        await runtime.wait_idle(10)
        stop.set()
        await watcher
    # Catches a blocked loop (a blocking call shows as seconds), not a speed target (those
    # are in bench/engine.py): a loaded CI machine may add tens of milliseconds.
    assert len(lags) > 20
    assert max(lags) < 0.5, f"loop lag {max(lags) * 1000:.1f} ms"
    assert all(p.ack.latency is not None and p.ack.latency < 1.0 for p in pushes)
    assert runtime.stats.answered == count


# --------------------------------------------------------------------------- secrets


async def test_secrets_stay_out_of_logs_and_reprs(
    emu: DingTalkEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running(emu) as runtime:
        platform = runtime.platform
        await emu.push_message(APP, text=QUESTION)
        await emu.wait_for(lambda: any(final(c) for c in emu.cards.values()), 10)
        texts = [repr(platform), platform.describe(), repr(make_settings(emu))]
        assert isinstance(platform, DingTalkPlatform)
        texts += [repr(platform.api), repr(platform.connection)]
    texts.append(caplog.text)
    for text in texts:
        assert SECRET not in text
    recorded = json.dumps([c.request for c in emu.calls], ensure_ascii=False)
    assert SECRET not in recorded
