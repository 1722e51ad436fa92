"""The migration path from the seed's code: an app that owns a ``dingtalk_stream``
``DingTalkStreamClient`` hands its messages to an imrobots robot through
:class:`imrobots_dingtalk.sdk.RobotHandler`, and answers with the robot's streaming cards,
dedupe and feedback. The official client runs unchanged, in a subprocess
(``_sdk_handler_runner.py``), against the emulator in the test's loop."""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

import pytest
import pytest_asyncio

from imrobots_dingtalk.emulator import DingTalkEmulator
from imrobots_dingtalk.platform import BUILTIN_AI_TEMPLATE

from .support import QUESTION, cards_for, final

pytest.importorskip("dingtalk_stream")

RUNNER = Path(__file__).with_name("_sdk_handler_runner.py")
APP = "dingseedapp"
SECRET = "seed-app-secret-value"


class App:
    def __init__(self, proc: asyncio.subprocess.Process, log: IO[bytes]) -> None:
        self.proc = proc
        self.log = log

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode("utf-8", errors="replace")

    async def wait_output(self, text: str, timeout: float) -> None:
        """Poll the app's output (every 50 ms) until it holds ``text``, with a deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while text not in self.output():
            if loop.time() > deadline:
                pytest.fail(f"the app never printed {text!r}; it said:\n{self.output()[-4000:]}")
            await asyncio.sleep(0.05)


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[DingTalkEmulator]:
    async with DingTalkEmulator(seed=21, ping_interval=None) as emulator:
        emulator.add_app(APP, SECRET)
        yield emulator


@pytest_asyncio.fixture
async def app(emu: DingTalkEmulator) -> AsyncIterator[App]:
    with tempfile.TemporaryFile() as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(RUNNER), emu.base_url, APP, SECRET, stdout=log, stderr=log
        )
        running = App(proc, log)
        try:
            await emu.wait_for(lambda: bool(emu.live_connections(APP)), 20, what="SDK connected")
            yield running
        except TimeoutError:
            pytest.fail(f"the app did not connect; its output:\n{running.output()[-4000:]}")
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


async def test_a_seed_style_app_answers_with_the_robots_streaming_card(
    emu: DingTalkEmulator, app: App
) -> None:
    (conn,) = emu.live_connections(APP)
    assert conn.ua is not None and conn.ua.startswith("dingtalk-sdk-python/")  # the SDK's own
    pushed = await emu.push_message(APP, text=QUESTION, sender_staff_id="staff3")
    try:
        await emu.wait_for(lambda: any(final(c) for c in cards_for(emu, pushed)), 20)
    except TimeoutError:
        pytest.fail(f"no final card; the app said:\n{app.output()[-4000:]}")
    (card,) = cards_for(emu, pushed)
    # acked at once, while the answer is worked on (the seed acked after the whole answer)
    assert pushed.ack.code == 200 and pushed.ack.latency is not None
    assert pushed.ack.latency < 0.5, pushed.ack.latency
    streamed = [u for u in card.updates if u.route == "card.streaming"]
    assert pushed.ack.acked_at is not None and pushed.ack.acked_at < streamed[0].at
    # the robot's streaming card: an AI card on the built-in template, thinking, streamed
    # text, final with the four feedback buttons, finalized through card/streaming
    assert card.kind == "instance" and card.template_id == BUILTIN_AI_TEMPLATE
    routes = [u.route for u in card.updates]
    assert routes[0] == "card.instances.createAndDeliver"
    assert routes.count("card.streaming") >= 2 and card.finalized
    assert card.updates[0].content["msgContent"].startswith("[thinking]")
    assert "within 30 days" in (card.view["markdown"] or "")
    assert len(card.view["buttons"]) == 4
    assert card.at_user_ids == ["staff3"]
    # the robot's HTTP calls are its own (aiohttp): none made through the SDK's requests
    assert not any(c.route.startswith("interactiveCards.") for c in emu.calls)

    # dedupe: DingTalk pushing the message again does not answer it twice
    await emu.redeliver_message(APP, pushed.msg_id)
    await emu.wait_for(lambda: pushed.ack.deliveries == 2, 5, what="the redelivery acked")
    follow = await emu.push_message(APP, text="When will my parcel arrive?")
    await emu.wait_for(lambda: any(final(c) for c in cards_for(emu, follow)), 20)
    assert len(cards_for(emu, pushed)) == 1, "a redelivered message was answered twice"

    # a feedback button press reaches the robot, through the same handler
    button = card.view["buttons"][0]
    pressed = await emu.press_button(
        APP,
        card_id=card.card_id,
        action_id=button["id"],
        params={"value": button["value"]},
        user_id="staff3",
    )
    await emu.wait_for(lambda: pressed.ack.acked, 5, what="the press acked")
    assert pressed.ack.code == 200 and pressed.ack.response == {}
    await app.wait_output(f"FEEDBACK very_helpful {QUESTION}", 10)
    assert "Traceback" not in app.output()


async def test_sigterm_closes_a_running_answer_as_interrupted(
    emu: DingTalkEmulator, app: App
) -> None:
    """Review finding: SIGTERM to a seed-style app left the card "inputting" for ever."""
    pushed = await emu.push_message(APP, text=QUESTION, sender_staff_id="staff3")
    await emu.wait_for(
        lambda: any(u.route == "card.streaming" for c in cards_for(emu, pushed) for u in c.updates),
        20,
        what="the answer streaming",
    )
    app.proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(app.proc.wait(), 20)
    (card,) = cards_for(emu, pushed)
    assert card.streaming_state == "failed", app.output()[-2000:]
    assert card.content.get("stopReason") == "interrupted"
