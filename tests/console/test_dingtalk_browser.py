"""The DingTalk direct chat in the console, in real headless Chromium (Debian's chromium,
driven by Playwright; never downloaded).

A user writes to the robot 1:1: the answer shows in the console's direct chat (DingTalk
files a 1:1 card under the robot's own conversation with the user; the adapter maps it
back), streams from thinking to final in an AI card, and takes a feedback press. Then
an answer cut short by the robot stopping shows as interrupted: the state DingTalk
shows (the card failed, closed with ``isError``, its ``stopReason`` interrupted), with
the text it had.

Skipped outside CI when chromium or playwright is missing; in CI it fails instead (see
``browser.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from imrobots.demo import Demo
from imrobots.plugins import PluginManager
from tests.console.browser import (
    ARTIFACTS,
    FEEDBACK_LABELS,
    console_page,
    platform_console,
)


@pytest.fixture
async def console(manager: PluginManager) -> AsyncIterator[Demo]:
    async with platform_console(manager, "dingtalk") as demo:
        yield demo


@pytest.fixture
async def page(console: Demo) -> AsyncIterator[Any]:
    async with console_page(console) as page:
        yield page


async def test_the_dingtalk_direct_chat_shows_the_answer_and_an_interrupted_one(
    page: Any, console: Demo
) -> None:
    await page.click("#platform-tabs button[data-platform='dingtalk']")
    assert await page.inner_text("#platform-tabs button.active") == "DingTalk"
    await page.click("#conversations li[data-conversation='direct']")
    assert not await page.is_visible("#mention")  # no @-mention in a 1:1 chat
    await page.fill("#message-input", "How do I get a refund?")
    await page.click("#send")
    # the question, then the answer card in the same (direct) chat: thinking, streaming, final
    await page.wait_for_selector(".bubble.user:has-text('How do I get a refund?')")
    await page.wait_for_selector(".card[data-status='thinking']", timeout=10_000)
    await page.wait_for_selector(".card[data-status='streaming'] .md strong", timeout=10_000)
    await page.wait_for_selector(".card[data-status='final']", timeout=20_000)
    card = page.locator(".card[data-status='final']")
    assert await card.count() == 1
    assert "within 5 days" in await card.inner_text()
    assert await card.locator(".card-buttons button").all_inner_texts() == FEEDBACK_LABELS
    # AI cards on the app's card APIs, none refused
    await page.wait_for_selector("#calls td:has-text('/v1.0/card/streaming')")
    statuses = await page.locator("#calls td:nth-child(3)").all_inner_texts()
    assert statuses and all(s in ("101", "200") for s in statuses), statuses
    await card.locator(".card-buttons button", has_text="Very helpful").click()
    await page.wait_for_selector(
        "#feedback-list li:has-text('on dingtalk: Very helpful')", timeout=10_000
    )

    # a second answer, cut short by the robot stopping mid-stream
    await page.fill("#message-input", "When will my parcel arrive?")
    await page.click("#send")
    await page.wait_for_selector(
        ".card[data-status='streaming']:has-text('parcel')", timeout=10_000
    )
    (robot,) = console.robots
    await robot.runtime.stop(timeout=5)
    interrupted = page.locator(".card[data-status='interrupted']")
    await interrupted.wait_for(timeout=10_000)
    assert "Refunds are" in await interrupted.inner_text()  # the text it had
    assert await interrupted.locator(".status").inner_text() == "interrupted"
    # and on the wire, what DingTalk shows: the card failed (isError), flowStatus 5
    emulator = robot.emulator
    (view,) = [c for c in emulator.state()["cards"] if c["status"] == "interrupted"]
    assert view["state"] == "failed" and view["conversation_id"] == "direct"
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "console-dingtalk-direct.png"), full_page=True)
