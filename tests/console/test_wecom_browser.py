"""One WeCom conversation in the console, in real headless Chromium (Debian's chromium,
driven by Playwright; never downloaded): ask the intelligent robot in a group, watch the
stream reply go from thinking to streaming to final, press a feedback button.

Skipped outside CI when chromium, playwright or the WeCom extra is missing; in CI it
fails instead (see ``browser.py``)."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from imrobots.demo import ConfigConsole, Demo
from imrobots.plugins import PluginManager
from tests.console.browser import (
    ARTIFACTS,
    FEEDBACK_LABELS,
    console_page,
    open_console,
    platform_console,
    require_modules,
)


@pytest.fixture
async def console(manager: PluginManager) -> AsyncIterator[Demo]:
    require_modules(("wechatpy", "cryptography"), 'pip install "imrobots[wecom]"')
    async with platform_console(manager, "wecom") as demo:
        yield demo


@pytest.fixture
async def page(console: Demo) -> AsyncIterator[Any]:
    async with console_page(console) as page:
        yield page


async def test_ask_the_wecom_robot_watch_the_stream_and_give_feedback(page: Any) -> None:
    await page.click("#platform-tabs button[data-platform='wecom']")
    assert await page.inner_text("#platform-tabs button.active") == "WeCom"
    await page.click("#conversations li[data-conversation='group-support']")
    assert await page.is_checked("#mention")
    await page.fill("#message-input", "How do I get a refund?")
    await page.click("#send")
    # the user's message as WeCom shows it, then the stream reply: thinking, streaming, final
    await page.wait_for_selector(".bubble.user:has-text('@robot How do I get a refund?')")
    await page.wait_for_selector(".card[data-status='thinking']", timeout=10_000)
    await page.wait_for_selector(".card[data-status='streaming'] .md strong", timeout=10_000)
    await page.wait_for_selector(".card[data-status='final']", timeout=20_000)
    card = page.locator(".card[data-status='final']")
    assert await card.count() == 1
    assert "within 5 days" in await card.inner_text()
    assert await card.locator(".card-buttons button").all_inner_texts() == FEEDBACK_LABELS
    # every frame of the answer went over the long connection, none refused
    await page.wait_for_selector("#calls td:has-text('WS aibot_respond_msg')")
    statuses = await page.locator("#calls td:nth-child(3)").all_inner_texts()
    assert statuses and all(s == "200" for s in statuses), statuses

    await card.locator(".card-buttons button", has_text="Very helpful").click()
    # WeCom's answer to the press (aibot_respond_update_msg within 5 s) replaces the buttons
    await page.wait_for_selector(
        ".card[data-status='final'] .note:has-text('Thanks for your feedback!')", timeout=10_000
    )
    assert await page.locator(".card[data-status='final'] .card-buttons button").count() == 0
    await page.wait_for_selector("#calls td:has-text('WS aibot_respond_update_msg')")
    await page.wait_for_selector(
        "#feedback-list li:has-text('on wecom: Very helpful')", timeout=10_000
    )
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "console-wecom.png"), full_page=True)


@pytest.fixture
async def app_page(manager: PluginManager) -> AsyncIterator[Any]:
    """The example support robot in app mode (``imrobots console --config app.toml``)."""
    require_modules(("wechatpy", "cryptography"), 'pip install "imrobots[wecom]"')
    manager.register(importlib.import_module("imrobots_wecom.plugin"), name="wecom")
    example = Path(__file__).parents[2] / "examples" / "wecom_support" / "app.toml"
    console = ConfigConsole(example, manager=manager, env={})
    url = await console.start()
    try:
        async with open_console(url) as page:
            yield page
    finally:
        await console.stop()


async def test_app_mode_answer_is_a_template_card_whose_feedback_updates_it(app_page: Any) -> None:
    page = app_page
    await page.click("#conversations li[data-conversation='direct']")
    await page.fill("#message-input", "How do I get a refund?")
    await page.click("#send")
    # a self-built app answers once, when done: a template card with the feedback buttons
    card = page.locator(".card[data-status='final']")
    await page.wait_for_selector(".card[data-status='final'] .card-buttons button", timeout=20_000)
    assert await card.count() == 1
    assert await card.locator(".card-buttons button").all_inner_texts() == FEEDBACK_LABELS
    assert "within 30 days of delivery" in await card.inner_text()
    await page.wait_for_selector("#calls td:has-text('/cgi-bin/message/send')")

    await card.get_by_role("button", name="Helpful", exact=True).click()
    # the press comes back as an encrypted template_card_event; the card is replaced with
    # update_template_card and the press's ResponseCode
    await page.wait_for_selector(
        ".card[data-status='final']:has-text('Thanks for your feedback!')", timeout=10_000
    )
    assert await page.locator(".card[data-status='final'] .card-buttons button").count() == 0
    await page.wait_for_selector("#calls td:has-text('/cgi-bin/message/update_template_card')")
    statuses = await page.locator("#calls td:nth-child(3)").all_inner_texts()
    assert statuses and all(s == "200" for s in statuses), statuses
    await page.wait_for_selector("#feedback-list li:has-text('Helpful')", timeout=10_000)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "console-wecom-app.png"), full_page=True)
