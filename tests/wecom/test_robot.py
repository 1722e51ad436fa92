"""Robot mode (intelligent robot, long connection) against the emulator over real sockets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest

from imrobots import Message, Reply, Robot
from imrobots.agents import AgentRequest
from imrobots.cards import Actions, Button, Card, Markdown
from imrobots.emulation import EmulatorAdapter
from imrobots.platform import FatalPlatformError, Platform, Secret, thinking_card
from imrobots.streaming import StreamPolicy
from imrobots.testing.conformance import card_text, open_rig
from imrobots_wecom.console import WeComConsoleAdapter
from imrobots_wecom.emulator.emulator import ERR_SYSTEM_BUSY
from imrobots_wecom.platform import WeComPlatform, WeComSettings
from imrobots_wecom.streaming import WeComStream
from tests.engine.conftest import eventually


def _platform(emulator: EmulatorAdapter) -> Platform:
    platform = emulator.create_platform()
    assert platform is not None
    return platform


def _agent(words: list[str], pause: float) -> object:
    async def agent(request: AgentRequest) -> AsyncIterator[str]:
        for word in words:
            yield f"{word} "
            await asyncio.sleep(pause)

    return agent


async def test_a_stream_past_its_expiry_still_delivers_the_whole_answer() -> None:
    """The emulator expires streams after 0.6 s (846608 past it); an answer streaming for
    about 1.5 s still arrives whole, the stream closed in time and continued by a
    proactive message, with no refused call."""
    words = [f"w{i:03d}" for i in range(30)]
    adapter = WeComConsoleAdapter()
    adapter.configure(stream_lifetime=0.6)
    async with open_rig(
        lambda: adapter, Robot(agent=_agent(words, 0.05)), make_platform=_platform
    ) as rig:
        await rig.say("tell me a long story", conversation_id="g-expiry")
        await rig.final_card("g-expiry", words[-1])
        await rig.runtime.wait_idle(timeout=10)
        cards = rig.cards("g-expiry")
        text = "\n".join(card_text(c) for c in cards)
        assert [w for w in text.split() if w.startswith("w")] == words
        assert len(cards) >= 2
        assert all(c["status"] == "final" for c in cards)
        assert not [c for c in rig.emulator.state()["calls"] if c["status"] >= 400]
        routes = {c["route"] for c in rig.emulator.state()["calls"]}
        assert {"aibot_respond_msg", "aibot_send_msg"} <= routes


async def test_a_reply_after_a_reconnect_falls_back_to_a_proactive_send() -> None:
    """The connection drops while the answer is written: the req_id is invalid on the new
    connection (846605), so the answer is delivered by ``aibot_send_msg``."""
    release = asyncio.Event()

    async def agent(request: AgentRequest) -> AsyncIterator[str]:
        yield "before-drop "
        await release.wait()
        yield "after-drop"

    async with open_rig(
        lambda: WeComConsoleAdapter(), Robot(agent=agent), make_platform=_platform
    ) as rig:
        await rig.say("question", conversation_id="g-drop")
        await rig.card_with_status("g-drop", "streaming")
        platform = rig.platform
        assert isinstance(platform, WeComPlatform) and platform.connection is not None
        generation = platform.connection.generation
        await rig.emulator.fault("drop")
        await eventually(lambda: platform.connection.generation > generation, within=5.0)  # type: ignore[union-attr]
        release.set()
        card = await rig.final_card("g-drop", "after-drop")
        assert "before-drop" in card_text(card)
        calls = [c for c in rig.emulator.state()["calls"] if c["route"] == "aibot_send_msg"]
        assert calls and calls[-1]["status"] == 200


async def test_a_takeover_leaves_one_connection_and_no_reconnect_storm(
    caplog: pytest.LogCaptureFixture,
) -> None:
    adapter = WeComConsoleAdapter()
    await adapter.start()
    first = _platform(adapter)
    second = _platform(adapter)
    assert isinstance(first, WeComPlatform) and isinstance(second, WeComPlatform)

    async def sink(event: object) -> None:
        return None

    try:
        await first.start(sink)
        with caplog.at_level(logging.ERROR, logger="imrobots.wecom.connection"):
            await second.start(sink)
            await eventually(
                lambda: first.connection is not None and first.connection.taken_over, within=5.0
            )
            await eventually(lambda: adapter.emulator.live_sockets(adapter.bot_id) == 1, within=5.0)
        assert "took over" in caplog.text and "will NOT reconnect" in caplog.text
        assert first.connection is not None and first.connection.reconnects == 0
        assert adapter.emulator.bots[adapter.bot_id].subscriptions == 2
        assert second.connection is not None and second.connection.connected
    finally:
        await first.close()
        await second.close()
        await adapter.stop()


async def test_missed_ping_acks_reconnect() -> None:
    adapter = WeComConsoleAdapter()
    await adapter.start()
    settings = WeComSettings(
        bot_id=adapter.bot_id,
        secret=Secret(adapter._secret),
        ws_url=adapter.emulator.ws_url,
        ping_interval=0.05,
        reconnect_initial=0.01,
    )
    platform = WeComPlatform(settings)

    async def sink(event: object) -> None:
        return None

    try:
        await platform.start(sink)
        adapter.emulator.ack_pings = False
        await eventually(
            lambda: adapter.emulator.bots[adapter.bot_id].subscriptions >= 2, within=5.0
        )
        adapter.emulator.ack_pings = True
        assert platform.connection is not None
        await eventually(
            lambda: platform.connection is not None and platform.connection.connected, within=5.0
        )
    finally:
        await platform.close()
        await adapter.stop()


async def test_a_wrong_secret_fails_start_in_one_line() -> None:
    adapter = WeComConsoleAdapter()
    await adapter.start()
    settings = WeComSettings(
        bot_id=adapter.bot_id,
        secret=Secret("wrong-secret"),
        ws_url=adapter.emulator.ws_url,
    )
    platform = WeComPlatform(settings)

    async def sink(event: object) -> None:
        return None

    try:
        with pytest.raises(FatalPlatformError) as caught:
            await platform.start(sink)
        assert "wrong-secret" not in str(caught.value)
        assert "40001" in str(caught.value)
    finally:
        await platform.close()
        await adapter.stop()


async def test_feedback_press_is_answered_with_an_update_within_5s() -> None:
    async def agent(request: AgentRequest) -> AsyncIterator[str]:
        yield "answer000"

    async with open_rig(
        lambda: WeComConsoleAdapter(), Robot(agent=agent), make_platform=_platform
    ) as rig:
        await rig.say("rate me", conversation_id="g-fb")
        final = await rig.final_card("g-fb", "answer000")
        await rig.press(final, "Helpful")
        await rig.until(
            "the card updated with thanks",
            lambda: any("Thanks for your feedback" in card_text(c) for c in rig.cards("g-fb")),
        )
        update = [
            c for c in rig.emulator.state()["calls"] if c["route"] == "aibot_respond_update_msg"
        ]
        assert update and update[0]["status"] == 200


async def test_stream_frames_are_one_at_a_time_per_req_id() -> None:
    """Concurrent pushes on one stream go out one after the other, each after its ack."""
    messages: list[Message] = []

    class Keeper(Robot):
        async def on_message(self, message: Message, reply: Reply) -> None:
            messages.append(message)

    async with open_rig(lambda: WeComConsoleAdapter(), Keeper(), make_platform=_platform) as rig:
        platform = rig.platform
        assert isinstance(platform, WeComPlatform) and platform.connection is not None
        await rig.say("hello", conversation_id="g-serial")
        await eventually(lambda: bool(messages), within=5.0)
        connection = platform.connection
        original = connection._exchange
        in_flight, most = 0, 0

        async def counting(cmd: str, rid: str, body: dict[str, Any]) -> dict[str, Any]:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            try:
                return await original(cmd, rid, body)
            finally:
                in_flight -= 1

        connection._exchange = counting  # type: ignore[method-assign]
        handle = await platform.open_stream(messages[0].target, thinking_card("q"), key="serial")
        assert isinstance(handle, WeComStream)
        await asyncio.gather(*(handle.push(f"text {i}") for i in range(10)))
        assert most == 1
        assert rig.emulator.emulator.cards["serial"].updates == 10


async def test_a_card_answering_a_message_is_a_finished_stream_with_its_buttons() -> None:
    """A card sent whole on a message (e.g. an answer complete before its first update)
    is one finished stream reply: the text as markdown in the stream (up to 20,480
    bytes), the title and buttons in its template card, which carries no text."""
    text = ("Refunds take **five days**. " * 200).strip()  # 5,599 bytes: long for card text

    class Carder(Robot):
        async def on_message(self, message: Message, reply: Reply) -> None:
            await reply.card(
                Card(
                    title="Refunds",
                    elements=(
                        Markdown(text=text),
                        Actions(buttons=(Button(label="OK", value="ok"),)),
                    ),
                )
            )

    adapter = WeComConsoleAdapter()
    async with open_rig(lambda: adapter, Carder(), make_platform=_platform) as rig:
        await rig.say("refund?", conversation_id="g-card")
        card = await rig.until("the card", lambda: next(iter(rig.cards("g-card")), None))
        [record] = adapter.emulator.cards.values()
        assert (record.kind, record.finished, record.content) == ("stream", True, text)
        assert record.template is not None and "sub_title_text" not in record.template
        assert record.template["main_title"] == {"title": "Refunds"}
        assert [b["text"] for b in record.template["button_list"]] == ["OK"]
        assert card["title"] == "Refunds" and card_text(card) == text
        calls = [c["route"] for c in adapter.state()["calls"]]
        assert calls == ["aibot_respond_msg"]


async def test_close_lets_frames_in_flight_get_their_acks() -> None:
    """Closing while stream frames wait for their acks (the bench's shutdown) lets them
    land instead of failing them as a lost connection (OutcomeUnknown); pushes that
    arrive while closing are not started."""
    adapter = WeComConsoleAdapter()
    await adapter.start()
    platform = adapter.create_platform()
    assert isinstance(platform, WeComPlatform)
    started = asyncio.Event()
    done: list[str] = []
    failed: list[BaseException] = []

    async def sink(event: object) -> None:
        if not isinstance(event, Message):
            return
        started.set()
        try:
            handle = await platform.open_stream(
                event.target, thinking_card("q"), key=f"close-{event.id}"
            )
            await handle.close(Card(elements=(Markdown(text="landed"),)))
            done.append(event.id)
        except BaseException as exc:
            failed.append(exc)
            raise

    try:
        await platform.start(sink)
        adapter.emulator.set_latency(0.2)  # every frame's ack takes 0.2 s
        await adapter.say(
            text="hi",
            conversation_id="g-close",
            group=True,
            user_id="u",
            user_name="U",
            mention=True,
        )
        async with asyncio.timeout(5):
            await started.wait()
        await platform.close()
        assert failed == [] and len(done) == 1
        card = next(iter(adapter.emulator.cards.values()))
        assert card.finished and card.content == "landed"
    finally:
        await platform.close()
        await adapter.stop()


_SECOND_PROCESS = """
import asyncio, sys
from imrobots.platform import Secret
from imrobots_wecom.platform import WeComPlatform, WeComSettings

async def main() -> None:
    settings = WeComSettings(bot_id=sys.argv[1], secret=Secret(sys.argv[2]), ws_url=sys.argv[3])
    platform = WeComPlatform(settings)
    async def sink(event: object) -> None:
        return None
    await platform.start(sink)
    print("connected", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await platform.close()

asyncio.run(main())
"""


async def test_a_second_process_takes_over_and_the_first_stops_for_good() -> None:
    """A second process subscribing the same bot: exactly one connection stays live (the
    newer one), and the first process's connection loop has ended (it cannot reconnect,
    so there is no storm), its reconnect count 0."""
    import os
    import sys
    from pathlib import Path

    adapter = WeComConsoleAdapter()
    await adapter.start()
    first = adapter.create_platform()
    assert isinstance(first, WeComPlatform)
    root = str(Path(__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc: asyncio.subprocess.Process | None = None
    try:
        await first.start(lambda event: asyncio.sleep(0))
        settings = adapter.robot_settings()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _SECOND_PROCESS,
            settings["bot_id"],
            settings["secret"],
            settings["ws_url"],
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            assert (await proc.stdout.readline()).strip() == b"connected"
        connection = first.connection
        assert connection is not None
        await eventually(lambda: connection.taken_over, within=5.0)
        runner = connection._runner
        assert runner is not None
        async with asyncio.timeout(5):
            await asyncio.shield(runner)  # the loop ends: nothing left to reconnect
        assert connection.reconnects == 0 and not connection.connected
        assert adapter.emulator.live_sockets(adapter.bot_id) == 1
        assert adapter.emulator.bots[adapter.bot_id].subscriptions == 2
        assert proc.returncode is None  # the newer process stays connected
    finally:
        if proc is not None and proc.returncode is None:
            assert proc.stdin is not None
            proc.stdin.close()
            async with asyncio.timeout(20):
                await proc.wait()
        await first.close()
        await adapter.stop()


async def test_a_press_on_a_card_that_is_no_feedback_is_answered_once_by_the_robot() -> None:
    """Only the four feedback buttons are thanked by the plugin; any other press is the
    robot's to answer (one aibot_respond_update_msg, its own card)."""

    class Approver(Robot):
        async def on_message(self, message: Message, reply: Reply) -> None:
            buttons = (Button(label="Approve", value="approve"),)
            await reply.card(
                Card(title="Approval", elements=(Markdown(text="ok?"), Actions(buttons=buttons)))
            )

        async def on_action(self, action: Any, reply: Any) -> None:
            await reply.replace(Card(title="Approved", elements=(Markdown(text="approved"),)))

    adapter = WeComConsoleAdapter()
    async with open_rig(lambda: adapter, Approver(), make_platform=_platform) as rig:
        await rig.say("ok?", conversation_id="g-approve")
        card = await rig.until(
            "the approval card",
            lambda: next(
                (c for c in rig.cards("g-approve") if c["blocks"][-1]["type"] == "buttons"), None
            ),
        )
        await rig.press(card, "Approve")
        await rig.until(
            "the card replaced",
            lambda: any("approved" in card_text(c) for c in rig.cards("g-approve")),
        )
        await rig.runtime.wait_idle(timeout=5)
        updates = [c for c in adapter.state()["calls"] if c["route"] == "aibot_respond_update_msg"]
        assert [c["status"] for c in updates] == [200]
        assert "Thanks for your feedback" not in card_text(rig.cards("g-approve")[0])


async def test_an_open_whose_ack_was_lost_ends_in_one_final_card() -> None:
    """The open (the first stream frame, which makes the thinking card) takes effect and
    its ack is lost; its repeats are answered -1 "system busy" until the agent is done and
    twice more. Before: the open gave up when the agent was done, its card stayed
    unfinished and the final went out as a second card (``aibot_send_msg``)."""
    adapter = WeComConsoleAdapter()
    refused, done = asyncio.Event(), asyncio.Event()
    seen = {"opens": 0, "refused_after_done": 0}
    words = [f"w{i}" for i in range(5)]

    def fault(cmd: str, body: dict[str, Any]) -> int | Literal["lost"] | None:
        stream = body.get("stream")
        if cmd != "aibot_respond_msg" or not isinstance(stream, dict) or stream.get("finish"):
            return None
        seen["opens"] += 1
        if seen["opens"] == 1:
            return "lost"
        if done.is_set():
            if seen["refused_after_done"] == 2:
                return None
            seen["refused_after_done"] += 1
        refused.set()
        return ERR_SYSTEM_BUSY

    async def agent(request: AgentRequest) -> AsyncIterator[str]:
        await refused.wait()  # the open's ack was lost and a repeat refused
        for word in words:
            yield f"{word} "
        done.set()

    def quick_acks(emulator: EmulatorAdapter) -> Platform:
        assert isinstance(emulator, WeComConsoleAdapter)
        platform = emulator.create_platform(ack_timeout=0.3)  # a lost ack costs 0.3 s
        assert platform is not None
        return platform

    adapter.emulator.call_fault = fault
    policy = StreamPolicy(min_interval=0.05, retry_backoff=0.02, max_backoff=0.1)
    async with open_rig(
        lambda: adapter, Robot(agent=agent), policy=policy, make_platform=quick_acks
    ) as rig:
        await rig.say("are you there?", conversation_id="g-lost-open")
        await rig.final_card("g-lost-open", words[-1])
        await rig.runtime.wait_idle(timeout=10)
        cards = rig.cards("g-lost-open")
        assert len(cards) == 1, rig.describe("g-lost-open")
        assert cards[0]["status"] == "final", rig.describe("g-lost-open")
        assert card_text(cards[0]).split() == words
        routes = [c["route"] for c in rig.emulator.state()["calls"]]
        assert "aibot_send_msg" not in routes
        assert seen["refused_after_done"] == 2  # opened again, same stream id, past "busy"
