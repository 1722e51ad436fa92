"""One Feishu conversation in the console, in real headless Chromium (Debian's chromium,
driven by Playwright; never downloaded): @-mention the robot in a group, watch the
CardKit card go from thinking to streaming to final as Feishu draws it, press a
feedback button (the console sends ``card.action.trigger`` over the long connection)
and find the feedback stored.

Skipped outside CI when chromium, playwright or the Feishu extra is missing; in CI it
fails instead (see ``browser.py``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from imrobots import FeedbackRating
from imrobots.demo import Demo
from imrobots.plugins import PluginManager
from tests.console.browser import (
    ARTIFACTS,
    FEEDBACK_LABELS,
    console_page,
    platform_console,
    require_modules,
)


@pytest.fixture
async def console(manager: PluginManager) -> AsyncIterator[Demo]:
    require_modules(("lark_oapi", "httpx"), 'pip install "imrobots[feishu]"')
    async with platform_console(manager, "feishu") as demo:
        yield demo


@pytest.fixture
async def page(console: Demo) -> AsyncIterator[Any]:
    async with console_page(console) as page:
        yield page


async def test_ask_the_feishu_robot_watch_the_cardkit_card_and_give_feedback(
    page: Any, console: Demo
) -> None:
    await page.click("#platform-tabs button[data-platform='feishu']")
    assert await page.inner_text("#platform-tabs button.active") == "Feishu"
    await page.click("#conversations li[data-conversation='group-support']")
    assert await page.is_checked("#mention")
    await page.fill("#message-input", "How do I get a refund?")
    await page.click("#send")
    # the user's message as Feishu shows it, then the reply card: thinking, streaming, final
    await page.wait_for_selector(".bubble.user:has-text('@Robot How do I get a refund?')")
    await page.wait_for_selector(".card[data-status='thinking']", timeout=10_000)
    await page.wait_for_selector(".card[data-status='streaming'] .md strong", timeout=10_000)
    await page.wait_for_selector(".card[data-status='final']", timeout=20_000)
    card = page.locator(".card[data-status='final']")
    assert await card.count() == 1
    assert "within 5 days" in await card.inner_text()
    assert await card.locator(".card-buttons button").all_inner_texts() == FEEDBACK_LABELS
    # the text streamed into the CardKit card entity (its markdown element), none refused
    await page.wait_for_selector("#calls td:has-text('/cardkit/v1/cards/')")
    await page.wait_for_selector("#calls td:has-text('/elements/')")
    statuses = await page.locator("#calls td:nth-child(3)").all_inner_texts()
    assert statuses and all(s == "200" for s in statuses), statuses

    await card.locator(".card-buttons button", has_text="Very helpful").click()
    await page.wait_for_selector(
        "#feedback-list li:has-text('on feishu: Very helpful')", timeout=10_000
    )
    # the press reached the robot as Feishu sends it: card.action.trigger, answered
    (robot,) = console.robots
    emulator = robot.emulator.emulator
    presses = [
        d
        for d in emulator.deliveries.values()
        if json.loads(d.payload)["header"]["event_type"] == "card.action.trigger"
    ]
    assert len(presses) == 1 and presses[0].done.done()
    # stored by the robot, for the answer the card showed
    (feedback,) = await robot.runtime.store.list_feedback()
    assert feedback.platform == "feishu" and feedback.rating is FeedbackRating.VERY_HELPFUL
    assert feedback.conversation_id == "group-support"
    assert "within 5 days" in feedback.answer and feedback.question == "How do I get a refund?"
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "console-feishu.png"), full_page=True)
