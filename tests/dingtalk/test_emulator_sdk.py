"""The official ``dingtalk_stream`` SDK, unchanged, against the DingTalk emulator.

The SDK makes blocking ``requests`` calls on its event loop, so it runs in a
subprocess (``_sdk_runner.py``) while the emulator runs in the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

import pytest
import pytest_asyncio

from imrobots_dingtalk.emulator import DingTalkEmulator

pytest.importorskip("dingtalk_stream")

pytestmark = pytest.mark.asyncio

RUNNER = Path(__file__).with_name("_sdk_runner.py")
APP = "dingsdkapp"
SECRET = "sdk-secret-value"


class SdkProcess:
    def __init__(self, proc: asyncio.subprocess.Process, log: IO[bytes]) -> None:
        self.proc = proc
        self.log = log

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode("utf-8", errors="replace")[-4000:]


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[DingTalkEmulator]:
    async with DingTalkEmulator(seed=11) as emulator:
        emulator.add_app(APP, SECRET)
        yield emulator


@pytest_asyncio.fixture
async def sdk(emu: DingTalkEmulator) -> AsyncIterator[SdkProcess]:
    with tempfile.TemporaryFile() as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(RUNNER),
            emu.base_url,
            APP,
            SECRET,
            stdout=log,
            stderr=log,
        )
        running = SdkProcess(proc, log)
        try:
            await emu.wait_for(lambda: bool(emu.live_connections(APP)), 20, what="SDK connected")
            yield running
        except TimeoutError:
            pytest.fail(f"the SDK did not connect; its output:\n{running.output()}")
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


async def test_sdk_reply_text_via_session_webhook(emu: DingTalkEmulator, sdk: SdkProcess) -> None:
    conn = emu.live_connections(APP)[0]
    assert conn.ua is not None and conn.ua.startswith("dingtalk-sdk-python/")
    assert {"type": "CALLBACK", "topic": "/v1.0/im/bot/messages/get"} in conn.subscriptions

    pushed = await emu.push_message(APP, text="hello", sender_staff_id="u42")
    try:
        await emu.wait_for(
            lambda: pushed.ack.acked and len(emu.webhook_messages) == 1, 10, what="reply + ack"
        )
    except TimeoutError:
        pytest.fail(f"no reply; SDK output:\n{sdk.output()}")

    reply = emu.webhook_messages[0]
    assert reply.ok
    assert reply.msgtype == "text"
    assert reply.text == "echo: hello"
    assert reply.at_user_ids == ["u42"]
    assert reply.msg_id == pushed.msg_id
    assert reply.conversation_id == pushed.conversation_id
    assert pushed.ack.code == 200
    assert pushed.ack.data == {"response": "OK"}
    assert pushed.ack.latency is not None
    # secrets are never recorded
    assert SECRET not in json.dumps([c.request for c in emu.calls])


async def test_sdk_reply_card_then_update(emu: DingTalkEmulator, sdk: SdkProcess) -> None:
    pushed = await emu.push_message(APP, text="card please", conversation_title="Team")
    try:
        await emu.wait_for(
            lambda: any(len(c.updates) >= 2 for c in emu.cards.values()) and pushed.ack.acked,
            10,
            what="card sent and updated",
        )
    except TimeoutError:
        pytest.fail(f"no card; SDK output:\n{sdk.output()}")

    (card,) = emu.cards.values()
    assert card.kind == "standard"
    assert card.template_id == "StandardCard"
    assert card.conversation_type == "group"
    assert card.conversation_id == pushed.conversation_id
    first, second = card.updates[0], card.updates[1]
    assert first.route == "interactiveCards.send"
    assert first.content["header"]["title"]["text"] == "Thinking"
    assert second.route == "interactiveCards.update"
    assert second.content["contents"][0]["text"] == "answer to card please"
    assert card.content == second.content
    assert card.view["title"] == "Done"
    assert card.view["markdown"] == "answer to card please"
    routes = [c.route for c in emu.calls if c.status == 200]
    assert "oauth2.accessToken" in routes
    assert pushed.ack.code == 200


async def test_sdk_ai_card_stream_and_button(emu: DingTalkEmulator, sdk: SdkProcess) -> None:
    pushed = await emu.push_message(APP, text="ai please", conversation_type="direct")
    try:
        await emu.wait_for(
            lambda: any(c.flow_status == "3" for c in emu.cards.values()), 10, what="AI card done"
        )
    except TimeoutError:
        pytest.fail(f"no AI card; SDK output:\n{sdk.output()}")

    (card,) = emu.cards.values()
    assert card.kind == "instance" and card.callback_type == "STREAM"
    assert card.conversation_type == "direct"
    assert card.receiver_user_ids == [pushed.sender_staff_id]
    assert [u.route for u in card.updates] == [
        "card.instances.create",
        "card.instances.deliver",
        "card.instances.update",
        "card.streaming",
        "card.streaming",
        "card.instances.update",
    ]
    assert [u.content.get("flowStatus") for u in card.updates] == ["1", "1", "2", "2", "2", "3"]
    assert card.updates[4].content["msgContent"] == "Hello"
    assert card.view["title"] == "AI answer" and card.view["status"] == "finished"
    assert card.finalized

    clicked = await emu.press_button(APP, card_id=card.card_id, action_id="like")
    await emu.wait_for(lambda: card.content.get("clicked") == "like", 10, what="button handled")
    assert clicked.ack.code == 200
    assert clicked.ack.response == {
        "cardData": {"cardParamMap": {"clicked": "like"}},
        "cardUpdateOptions": {"updateCardDataByKey": True},
    }
    assert card.updates[-1].route == "callback"
    assert card.content["msgContent"] == "Hello"  # kept by updateCardDataByKey
