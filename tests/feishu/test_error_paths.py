"""Feishu's error answers, met by a robot over real sockets on the emulator (issue 13,
items 4-6): each test injects the fault through the emulator and asserts what the user
sees (one final answer, in its chat, whole and in order, no card left streaming) and
the emulator's record of the calls.

- 230011: the user's message is withdrawn before the reply: the answer goes to the chat.
- 230099/11310: a card with too many tables: the tables are drawn as code blocks.
- 99991663: the tenant token is revoked mid-answer: one new token, the call repeated;
  and the token is refreshed before it expires.
- 429/99991400 with ``x-ogw-ratelimit-reset``, and 230020: the next call waits the reset.
- 200850 (streaming mode ended early) and 300317 (another writer's sequence).
- Answers over 30 KB continue in new cards, in order.
- Downloads are lazy, stay on the configured domain, and fail cleanly; uploads that
  fail are retried without a second upload, or reported to the robot.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from imrobots import Robot
from imrobots.config import structure
from imrobots.emulation import EmulatorAdapter
from imrobots.models import Message
from imrobots.platform import Platform
from imrobots.robot import Reply
from imrobots.testing.conformance import (
    FEEDBACK_LABELS,
    TERMINAL,
    ConformanceRig,
    _in_order,
    card_buttons,
    card_text,
    numbered,
    open_rig,
)

pytest.importorskip("lark_oapi")

from imrobots_feishu.console import FeishuConsoleAdapter
from imrobots_feishu.emulator import FeishuEmulator
from imrobots_feishu.emulator.errors import ApiError
from imrobots_feishu.platform import FeishuPlatform, FeishuSettings

View = dict[str, Any]


def make_platform(adapter: EmulatorAdapter) -> Platform:
    return FeishuPlatform(structure(adapter.robot_settings(), FeishuSettings, path="feishu"))


def emulator_of(rig: ConformanceRig) -> FeishuEmulator:
    adapter = rig.emulator
    assert isinstance(adapter, FeishuConsoleAdapter)
    return adapter.emulator


def calls(rig: ConformanceRig, route: str, method: str | None = None) -> list[View]:
    """The recorded calls whose route matches the regular expression ``route``."""
    return [
        c
        for c in rig.emulator.state()["calls"]
        if re.fullmatch(route, c["route"]) and (method is None or c["method"] == method)
    ]


def words_agent(
    prefix: str,
    count: int,
    *,
    gate: asyncio.Event | None = None,
    filler: str = "",
    pause: float = 0.0,
) -> Callable[[str], AsyncIterator[str]]:
    """Yields ``prefix000``... (each followed by ``filler``, ``pause`` seconds apart);
    waits for ``gate`` after the first word."""

    async def agent(text: str) -> AsyncIterator[str]:
        for index, word in enumerate(numbered(prefix, count)):
            yield f"{word} {filler}"
            if index == 0 and gate is not None:
                await gate.wait()
            await asyncio.sleep(pause)

    return agent


async def one_final_card(rig: ConformanceRig, chat: str, prefix: str, count: int) -> View:
    """Wait for the answer; check it is one card, final, whole, in order, with the
    feedback buttons, and nothing left streaming."""
    words = numbered(prefix, count)
    card = await rig.final_card(chat, words[-1])
    await rig.runtime.wait_idle(timeout=10.0)
    cards = rig.cards(chat)
    assert [c["id"] for c in cards] == [card["id"]], rig.describe(chat)
    _in_order(card_text(card), prefix, words, "the card")
    assert [b.get("label") for b in card_buttons(card)] == FEEDBACK_LABELS
    return card


@pytest.fixture(params=["cardkit", "patch"])
def card_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def rig_for(card_mode: str, robot: Robot, **options: Any) -> Any:
    mode: Any = card_mode
    factory = lambda: FeishuConsoleAdapter(card_mode=mode, **options)  # noqa: E731
    return open_rig(factory, robot, make_platform=make_platform, timeout=20.0)


# ---------------------------------------------------------------------- 230011
async def test_withdrawn_message_is_answered_in_its_chat(card_mode: str) -> None:
    async with rig_for(card_mode, Robot(agent=words_agent("wd", 5))) as rig:
        chat = rig.conversation("withdrawn")
        message_id = await rig.say("a question", conversation_id=chat)
        emulator_of(rig).api_withdraw(message_id)  # before the event reaches the robot
        card = await one_final_card(rig, chat, "wd", 5)
        assert card["reply_to"] is None  # in the chat, not a reply
        replies = calls(rig, f"/open-apis/im/v1/messages/{message_id}/reply")
        assert [(c["status"], c["error"]) for c in replies] == [(400, 230011)]
        sends = calls(rig, "/open-apis/im/v1/messages", "POST")
        assert [c["status"] for c in sends] == [200]
        assert not rig.robot_messages(chat)


# ---------------------------------------------------------------------- 230099
def table(index: int) -> str:
    return f"\n\n| tab{index:03d} | value |\n|---|---|\n| row | {index} |\n\n"


async def test_too_many_tables_are_drawn_as_text(card_mode: str) -> None:
    count = 7  # the emulator takes 5 tables per card

    async def agent(text: str) -> AsyncIterator[str]:
        for index in range(count):
            yield table(index)
            await asyncio.sleep(0.05)  # some updates go out with the tables so far

    async with rig_for(card_mode, Robot(agent=agent)) as rig:
        chat = rig.conversation("tables")
        await rig.say("compare them all", conversation_id=chat)
        card = await one_final_card(rig, chat, "tab", count)
        assert "```" in card_text(card)  # drawn as code blocks
        refused = [c for c in rig.emulator.state()["calls"] if c["error"] == 230099]
        assert len(refused) == 1, refused  # the card is drawn without tables from then on
        assert all(c["status"] in TERMINAL for c in rig.cards(chat))


async def test_few_tables_stay_tables() -> None:
    async def agent(text: str) -> AsyncIterator[str]:
        yield "tab000 and tab001" + table(900) + table(901)

    async with rig_for("cardkit", Robot(agent=agent)) as rig:
        chat = rig.conversation("two-tables")
        await rig.say("compare two", conversation_id=chat)
        card = await rig.final_card(chat, "tab001")
        assert "```" not in card_text(card) and "|---|" in card_text(card)
        assert not [c for c in rig.emulator.state()["calls"] if c["error"] == 230099]


# ---------------------------------------------------------------------- tokens
async def test_token_revoked_mid_answer_is_fetched_again(card_mode: str) -> None:
    gate = asyncio.Event()
    async with rig_for(card_mode, Robot(agent=words_agent("tok", 4, gate=gate))) as rig:
        chat = rig.conversation("token")
        await rig.say("go", conversation_id=chat)
        await rig.until("the first word shown", lambda: "tok000" in rig.describe(chat))
        platform = rig.platform
        assert isinstance(platform, FeishuPlatform)
        fetched = platform.api.token_fetches
        assert emulator_of(rig).revoke_tokens(platform.settings.app_id) >= 1
        tokens_before = len(calls(rig, "/open-apis/auth/v3/tenant_access_token/internal"))
        gate.set()
        await one_final_card(rig, chat, "tok", 4)
        invalid = [c for c in rig.emulator.state()["calls"] if c["error"] == 99991663]
        assert len(invalid) == 1, invalid  # one call met the revoked token ...
        assert platform.api.token_fetches == fetched + 1  # ... one new token ...
        after = calls(rig, "/open-apis/auth/v3/tenant_access_token/internal")
        assert len(after) == tokens_before + 1
        later = [c for c in rig.emulator.state()["calls"] if c["time"] > invalid[0]["time"]]
        assert later and all(c["status"] == 200 for c in later)  # ... and the call repeated


async def test_token_is_refreshed_before_it_expires() -> None:
    adapter = FeishuConsoleAdapter(token_ttl=2)  # refreshed at half its life
    await adapter.start()
    platform = FeishuPlatform(structure(adapter.robot_settings(), FeishuSettings, path="feishu"))
    try:
        first = await platform.api.token()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while (second := await platform.api.token()) == first:
            assert loop.time() < deadline, "the token was never refreshed"
            await asyncio.sleep(0.05)
        owner, expires = adapter.emulator.tokens[first]
        assert expires > time.time()  # the old one was still valid
        assert adapter.emulator.app_for_token(f"Bearer {second}").app_id == owner
        assert platform.api.token_fetches == 2
    finally:
        await platform.close()
        await adapter.stop()


# ---------------------------------------------------------------------- 429, 230020
@pytest.mark.parametrize(
    ("mode", "api", "route", "method", "error"),
    [
        (
            "cardkit",
            "cardkit.card.update",
            r"/open-apis/cardkit/v1/cards/[^/]+",
            "PUT",
            ApiError.frequency_limit(50, 1.0),
        ),
        (
            "patch",
            "im.message.patch",
            r"/open-apis/im/v1/messages/[^/]+",
            "PATCH",
            ApiError.frequency_limit(50, 1.0),
        ),
        (
            "cardkit",
            "im.message.reply",
            r"/open-apis/im/v1/messages/[^/]+/reply",
            "POST",
            ApiError.message_frequency(),
        ),
    ],
    ids=["429-cardkit-update", "429-patch", "230020-reply"],
)
async def test_rate_limit_answer_waits_its_reset(
    mode: str, api: str, route: str, method: str, error: ApiError
) -> None:
    async with rig_for(mode, Robot(agent=words_agent("rl", 4))) as rig:
        emulator_of(rig).fail_next(api, error)
        chat = rig.conversation("limited")
        await rig.say("go", conversation_id=chat)
        await one_final_card(rig, chat, "rl", 4)
        seen = calls(rig, route, method)
        assert seen[0]["error"] == error.code and seen[0]["status"] == error.status, seen
        assert seen[1]["status"] == 200, seen
        reset = float(error.headers.get("x-ogw-ratelimit-reset", "1"))  # 230020: 1 s
        started = seen[1]["time"] - seen[1]["latency_ms"] / 1000
        assert started - seen[0]["time"] >= reset - 0.05, (started - seen[0]["time"], reset)


# ---------------------------------------------------------------------- 200850, 300317
def entity_of(rig: ConformanceRig, chat: str) -> str:
    emulator = emulator_of(rig)
    [card] = rig.cards(chat)
    card_id = emulator.messages[card["id"]].card_id
    assert card_id is not None
    return card_id


@pytest.mark.parametrize("fault", ["200850", "300317"])
async def test_cardkit_stream_survives(fault: str) -> None:
    gate = asyncio.Event()
    async with rig_for("cardkit", Robot(agent=words_agent("cs", 6, gate=gate, pause=0.15))) as rig:
        chat = rig.conversation(fault)
        await rig.say("go", conversation_id=chat)
        await rig.until("the first word shown", lambda: "cs000" in rig.describe(chat))
        card_id = entity_of(rig, chat)
        if fault == "200850":
            emulator_of(rig).end_streaming(card_id)  # streaming mode ended early
        else:
            emulator_of(rig).bump_sequence(card_id, 50)  # another writer's updates
        gate.set()
        await one_final_card(rig, chat, "cs", 6)
        failed = [c for c in rig.emulator.state()["calls"] if int(c["status"]) >= 400]
        assert [c["error"] for c in failed] == [int(fault)], failed
        if fault == "200850":
            settings = calls(rig, rf"/open-apis/cardkit/v1/cards/{card_id}/settings")
            assert [c["status"] for c in settings] == [200]  # turned on again, once


# ---------------------------------------------------------------------- 30 KB
async def test_answer_over_30_kb_continues_in_new_cards() -> None:
    count = 900
    filler = "x" * 70 + " "  # about 80 bytes a word: 72 KB in all
    agent = words_agent("big", count, filler=filler)
    async with rig_for("cardkit", Robot(agent=agent)) as rig:
        chat = rig.conversation("big")
        await rig.say("tell me everything", conversation_id=chat)
        words = numbered("big", count)
        await rig.final_card(chat, words[-1])
        await rig.runtime.wait_idle(timeout=10.0)
        cards = rig.cards(chat)
        assert len(cards) >= 3, rig.describe(chat)
        assert all(c["status"] == "final" for c in cards), rig.describe(chat)
        _in_order("\n".join(card_text(c) for c in cards), "big", words, "the cards")
        assert all(len(card_text(c).encode()) <= 30 * 1024 for c in cards)
        assert [b.get("label") for b in card_buttons(cards[-1])] == FEEDBACK_LABELS
        assert all(not card_buttons(c) for c in cards[:-1])
        failed = [c for c in rig.emulator.state()["calls"] if int(c["status"]) >= 400]
        assert not failed, failed


# ---------------------------------------------------------------------- downloads
class ReadingRobot(Robot):
    """Reads attachments only when asked to, and says what came of it."""

    async def on_message(self, message: Message, reply: Reply) -> None:
        if "read" not in message.text:
            await reply.text(f"not read: {len(message.attachments)}")
            return
        for attachment in message.attachments:
            try:
                data = await attachment.read()
            except Exception as exc:
                await reply.text(f"could not read: {getattr(exc, 'code', None)}")
            else:
                await reply.text(f"read {len(data)} bytes")


async def test_downloads_are_lazy_stay_on_the_domain_and_fail_cleanly() -> None:
    hits: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=b"not from Feishu")

    other = web.Application()
    other.router.add_get("/{tail:.*}", elsewhere)
    runner = web.AppRunner(other)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with rig_for("cardkit", ReadingRobot()) as rig:
            emulator = emulator_of(rig)
            chat = rig.conversation("download")
            resource_route = r"/open-apis/im/v1/messages/[^/]+/resources/[^/]+"

            async def send(text: str) -> str:
                return await rig.say(  # type: ignore[no-any-return]
                    text,
                    conversation_id=chat,
                    group=False,
                    attachments=[("image", "a.png", b"twelve bytes")],  # text + image: a post
                )

            await send("just look")
            await rig.robot_message(chat, "not read: 1")
            assert calls(rig, resource_route) == []  # lazy: never fetched

            await send("read it")
            await rig.robot_message(chat, "read 12 bytes")
            assert [c["status"] for c in calls(rig, resource_route)] == [200]

            emulator.resource_redirect = f"http://127.0.0.1:{port}/stolen"
            await send("read it again")
            await rig.robot_message(chat, "could not read: redirect")
            assert hits == []  # the redirect off the domain was not followed
            assert calls(rig, resource_route)[-1]["status"] == 302
            emulator.resource_redirect = None

            message_id = await send("read the missing one")
            for key, resource in list(emulator.resources.items()):
                if resource.message_id == message_id:
                    del emulator.resources[key]  # gone before the robot reads it
            await rig.robot_message(chat, "could not read: 230002")
            texts = [m["text"] for m in rig.robot_messages(chat)]
            assert texts == [
                "not read: 1",
                "read 12 bytes",
                "could not read: redirect",
                "could not read: 230002",
            ], texts
    finally:
        await runner.cleanup()


async def test_an_attachment_over_max_download_bytes_fails_cleanly() -> None:
    def small_cap(adapter: EmulatorAdapter) -> Platform:
        settings = {**adapter.robot_settings(), "max_download_bytes": 8}
        return FeishuPlatform(structure(settings, FeishuSettings, path="feishu"))

    factory = lambda: FeishuConsoleAdapter(card_mode="cardkit")  # noqa: E731
    async with open_rig(factory, ReadingRobot(), make_platform=small_cap, timeout=20.0) as rig:
        chat = rig.conversation("too-big")
        for size in (8, 9):
            await rig.say(
                "read it",
                conversation_id=chat,
                group=False,
                attachments=[("image", "a.png", b"z" * size)],
            )
        await rig.robot_message(chat, "could not read: download.too_large")
        texts = [m["text"] for m in rig.robot_messages(chat)]
        assert texts == ["read 8 bytes", "could not read: download.too_large"], texts


# ---------------------------------------------------------------------- uploads
class UploadingRobot(Robot):
    async def on_message(self, message: Message, reply: Reply) -> None:
        try:
            if "image" in message.text:
                await reply.image(b"\x89PNG\r\n\x1a\n" + b"\0" * 64, name="chart.png")
            else:
                await reply.file(b"report body", name="report.txt")
        except Exception as exc:
            await reply.text(f"upload failed: {getattr(exc, 'code', None)}")
        else:
            await reply.text("sent")


async def test_failed_uploads_are_retried_once_uploaded_or_reported() -> None:
    async with rig_for("cardkit", UploadingRobot()) as rig:
        emulator = emulator_of(rig)
        # a server error on the upload, then 230020 on the send: retried, uploaded once
        emulator.fail_next("im.image.create", ApiError.system_busy())
        emulator.fail_next("im.message.reply", ApiError.message_frequency())
        chat = rig.conversation("upload")
        await rig.say("an image please", conversation_id=chat)
        await rig.robot_message(chat, "sent")
        uploads = calls(rig, "/open-apis/im/v1/images")
        assert [c["status"] for c in uploads] == [500, 200]
        replies = calls(rig, r"/open-apis/im/v1/messages/[^/]+/reply")
        assert [c["error"] for c in replies] == [230020, None, None], replies
        images = [m for m in emulator.messages.values() if m.from_app and m.msg_type == "image"]
        assert len(images) == 1 and len(rig.emulator.uploads()) == 1

        # a refused upload reaches the robot, and nothing is sent
        emulator.fail_next("im.file.create", ApiError.bad_request("file type not allowed"))
        await rig.say("the file please", conversation_id=chat)
        await rig.robot_message(chat, "upload failed: 230001")
        files = [m for m in emulator.messages.values() if m.from_app and m.msg_type == "file"]
        assert files == [] and len(rig.emulator.uploads()) == 1
