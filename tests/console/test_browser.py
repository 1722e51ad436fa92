"""The console in real headless Chromium (Debian's chromium, driven by Playwright).

CI installs chromium with apt; the browser is never downloaded. Outside CI the
test is skipped when chromium or playwright is missing; in CI it fails instead.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from imrobots.agents import AgentRequest
from imrobots.demo import Demo
from imrobots.plugins import PluginManager

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _require_browser() -> Any:
    missing = []
    if not shutil.which(CHROMIUM):
        missing.append("chromium (apt-get install chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        missing.append("playwright (pip install playwright)")
        async_playwright = None
    if missing:
        reason = "needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return async_playwright


class SlowAgent:
    """Thinks for a moment, then streams word by word, so every card state is visible."""

    stream_mode = "delta"

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        await asyncio.sleep(1.0)
        for (
            word
        ) in f"Refunds are paid **within 5 days** of your request about: {request.text}".split():
            await asyncio.sleep(0.12)
            yield word + " "


PLATFORMS = ["memory"]
if importlib.util.find_spec("dingtalk_stream") is not None:
    PLATFORMS.append("dingtalk")


@pytest.fixture(params=PLATFORMS)
def platform(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def console(manager: PluginManager) -> AsyncIterator[Demo]:
    if "dingtalk" in PLATFORMS:
        manager.register(importlib.import_module("imrobots_dingtalk.plugin"), name="dingtalk")
    demo = Demo(platforms=PLATFORMS, manager=manager, agent=SlowAgent())
    await demo.start()
    yield demo
    await demo.stop()


@pytest.fixture
async def page(console: Demo) -> AsyncIterator[Any]:
    async_playwright = _require_browser()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            assert console.console is not None
            await page.goto(console.console.url)
            await page.wait_for_selector("#connection.ok")
            yield page
        finally:
            await browser.close()


async def test_mention_the_robot_and_watch_the_card_stream_then_give_feedback(
    page: Any, platform: str
) -> None:
    await page.click(f"#platform-tabs button[data-platform='{platform}']")
    await page.click("#conversations li[data-conversation='group-support']")
    assert await page.is_checked("#mention")
    await page.fill("#message-input", "How do I get a refund?")
    await page.click("#send")
    # the thinking card, then streamed text, then the final card
    await page.wait_for_selector(".card[data-status='thinking']", timeout=10_000)
    await page.wait_for_selector(".card[data-status='streaming'] .md strong", timeout=10_000)
    await page.wait_for_selector(".card[data-status='final']", timeout=20_000)
    card = page.locator(".card[data-status='final']")
    assert "within 5 days" in await card.inner_text()
    labels = await card.locator(".card-buttons button").all_inner_texts()
    assert labels == ["Very helpful", "Helpful", "Not much help", "No help"]
    await card.locator(".card-buttons button", has_text="Very helpful").click()
    await page.wait_for_selector(
        f"#feedback-list li:has-text('on {platform}: Very helpful')", timeout=10_000
    )
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"console-{platform}.png"), full_page=True)


async def test_injected_errors_show_in_the_api_call_panel(page: Any, platform: str) -> None:
    await page.click(f"#platform-tabs button[data-platform='{platform}']")
    await page.select_option("#fault-errors", "1")
    await page.wait_for_selector("#fault-status:has-text('errors set to 1')")
    await page.fill("#message-input", "Anyone there?")
    await page.click("#send")
    await page.wait_for_selector("#calls tr.failed, #calls tr.rate-limited", timeout=10_000)
    # the panel shows each failed call with its error status
    bad_rows = page.locator("#calls tr.failed, #calls tr.rate-limited")
    statuses = await bad_rows.locator("td:nth-child(3)").all_inner_texts()
    assert statuses and all(int(s.split()[0]) >= 400 for s in statuses), statuses
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"console-errors-{platform}.png"), full_page=True)
    # recovering: errors off, the answer still lands
    await page.select_option("#fault-errors", "0")
    await page.wait_for_selector(".card[data-status='final']", timeout=40_000)
