"""The console in real headless Chromium (Debian's chromium, driven by Playwright).

CI installs chromium with apt; the browser is never downloaded. Outside CI the
test is skipped when chromium or playwright is missing; in CI it fails instead
(``tests/console/browser.py``).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from imrobots.agents import AgentRequest
from imrobots.demo import ConfigConsole, Demo
from imrobots.plugins import PluginManager
from tests.console.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, SlowAgent, require_browser

ROOT = Path(__file__).resolve().parents[2]
VIEWPORTS = {"desktop": (1280, 800), "phone": (390, 844)}


class QuickAgent:
    """A few lines of markdown, streamed quickly: a list, a paragraph over two source lines
    and a long unbroken word."""

    stream_mode = "delta"

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        answer = (
            f"About **{request.text}**:\n\n- the first point\n- the second point\n\n"
            "This sentence starts on one line\nand ends on the next.\n\n"
            f"{'x' * 180}\n\nAnswer to: {request.text}"
        )
        for piece in answer.split(" "):
            await asyncio.sleep(0.005)
            yield piece + " "


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
async def browser() -> AsyncIterator[Any]:
    async_playwright = require_browser()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


async def _open(browser: Any, url: str, viewport: tuple[int, int] = (1400, 900)) -> Any:
    page = await browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    await page.goto(url)
    await page.wait_for_selector("#connection.ok")
    return page


@pytest.fixture
async def page(console: Demo, browser: Any) -> Any:
    assert console.console is not None
    return await _open(browser, console.console.url)


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


# --- a chat app: layout, input, rendering ------------------------------------------------


@pytest.fixture
async def quick(manager: PluginManager) -> AsyncIterator[Demo]:
    demo = Demo(platforms=["memory"], manager=manager, agent=QuickAgent())
    await demo.start()
    yield demo
    await demo.stop()


async def _in_view(page: Any, selector: str) -> bool:
    """Whether the element is inside both the viewport and its scrolling timeline (looked up
    when measured: a streaming card's element is replaced on every update)."""
    result: bool = await page.evaluate(
        """selector => {
            const el = document.querySelector(selector);
            if (!el) return false;
            const r = el.getBoundingClientRect();
            const t = document.getElementById('timeline').getBoundingClientRect();
            const top = Math.max(0, t.top), bottom = Math.min(window.innerHeight, t.bottom);
            return r.height > 0 && r.bottom > top + 4 && r.top < bottom - 4;
        }""",
        selector,
    )
    return result


async def _input_visible(page: Any) -> bool:
    result: bool = await page.eval_on_selector(
        "#message-input",
        """el => {
            const r = el.getBoundingClientRect();
            return r.height > 0 && r.width > 100 && r.top >= 0 && r.bottom <= window.innerHeight
                && document.scrollingElement.scrollHeight <= window.innerHeight + 1;
        }""",
    )
    return result


@pytest.mark.parametrize("viewport", sorted(VIEWPORTS))
async def test_after_ten_exchanges_the_input_and_the_last_answer_are_in_view(
    quick: Demo, browser: Any, viewport: str
) -> None:
    assert quick.console is not None
    page = await _open(browser, quick.console.url, VIEWPORTS[viewport])
    for number in range(1, 11):
        await page.fill("#message-input", f"question number {number}")
        await page.press("#message-input", "Enter")  # Enter sends
        await page.wait_for_function(
            f"document.querySelectorAll(\".card[data-status='final']\").length >= {number}",
            timeout=20_000,
        )
        assert await page.input_value("#message-input") == ""
    await page.wait_for_selector(
        ".card[data-status='final']:last-child:has-text('question number 10')"
    )
    assert await _input_visible(page), "the input scrolled away"
    assert await _in_view(page, ".card:last-child"), "the last answer is not in view"
    # the timeline scrolls, not the page, and its width is the viewport's at most
    scroll = await page.eval_on_selector(
        "#timeline", "t => [t.scrollHeight > t.clientHeight, t.scrollWidth <= t.clientWidth]"
    )
    assert scroll == [True, True]
    # rendered markdown: a list, a paragraph joined over its source lines, long words wrapped
    last = page.locator(".card:last-child")
    assert await last.locator(".md ul li").count() == 2
    assert await last.locator(".md p", has_text="starts on one line and ends on the next").count()
    widths = await last.evaluate("c => [c.scrollWidth, c.clientWidth]")
    assert widths[0] <= widths[1], widths
    # timestamps on messages and cards
    assert await page.locator(".bubble.user .item-time").count() == 10
    assert await page.locator(".card .item-time").count() == 10
    # scrolled up, the timeline stays where the user is while others talk
    await page.eval_on_selector("#timeline", "t => { t.scrollTop = 0; }")
    await page.evaluate(
        """() => fetch('/api/memory/messages', {method: 'POST', body: JSON.stringify(
            {text: 'one more', conversation_id: 'group-support', user_id: 'bob'})})"""
    )
    await page.wait_for_selector(".card:last-child:has-text('one more')", state="attached")
    await page.wait_for_selector("#jump:not([hidden])")
    assert await page.eval_on_selector("#timeline", "t => t.scrollTop") < 50
    await page.wait_for_selector(
        ".card:last-child[data-status='final']:has-text('one more')", state="attached"
    )
    await page.click("#jump")
    assert await _in_view(page, ".card:last-child")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"console-chat-{viewport}.png"))


async def test_phone_panels_are_tabs(quick: Demo, browser: Any) -> None:
    assert quick.console is not None
    page = await _open(browser, quick.console.url, VIEWPORTS["phone"])
    assert await page.is_visible("#timeline") and not await page.is_visible("#conversations")
    chat_width = await page.eval_on_selector("#chat", "c => c.getBoundingClientRect().width")
    assert chat_width >= 380
    await page.click("#view-tabs button[data-view='sidebar']")
    assert await page.is_visible("#conversations") and not await page.is_visible("#timeline")
    await page.click("#conversations li[data-conversation='direct']")  # back to the chat
    assert await page.is_visible("#timeline")
    assert "Direct chat" in await page.inner_text("#chat-title")
    await page.click("#view-tabs button[data-view='inspector']")
    assert await page.is_visible("#fault-drop") and not await page.is_visible("#message-input")


async def test_multi_line_input_ignored_messages_and_a_failed_send(
    quick: Demo, browser: Any
) -> None:
    assert quick.console is not None
    page = await _open(browser, quick.console.url, VIEWPORTS["desktop"])
    await page.click("#message-input")
    await page.keyboard.type("first line")
    await page.keyboard.press("Shift+Enter")  # a line break, not a send
    await page.keyboard.type("second line")
    assert await page.input_value("#message-input") == "first line\nsecond line"
    await page.keyboard.press("Enter")
    bubble = page.locator(".bubble.user").last
    await bubble.wait_for()
    assert "first line\nsecond line" in await bubble.locator(".text").inner_text()
    await page.wait_for_selector(".bubble.user[data-outcome='answered']")
    # a group message without the @-mention is visibly ignored
    await page.uncheck("#mention")
    await page.fill("#message-input", "just chatting")
    await page.press("#message-input", "Enter")
    ignored = page.locator(".bubble.user[data-outcome='rejected']")
    await ignored.wait_for()
    assert "ignored: not mentioned" in await ignored.inner_text()
    # a send that fails keeps what was typed, and says why
    await page.route(
        "**/api/*/messages",
        lambda route: route.fulfill(
            status=503, content_type="application/json", body=json.dumps({"error": "overloaded"})
        ),
    )
    await page.fill("#message-input", "please keep me")
    await page.press("#message-input", "Enter")
    await page.wait_for_selector("#send-error:not([hidden]):has-text('overloaded')")
    assert await page.input_value("#message-input") == "please keep me"


async def test_a_feedback_press_shows_on_the_card_and_a_second_one_too(
    quick: Demo, browser: Any
) -> None:
    assert quick.console is not None
    page = await _open(browser, quick.console.url, VIEWPORTS["desktop"])
    await page.fill("#message-input", "rate me")
    await page.press("#message-input", "Enter")
    card = page.locator(".card[data-status='final']")
    await card.wait_for(timeout=20_000)
    await card.locator(".card-buttons button", has_text="Very helpful").click()
    await page.wait_for_selector(
        ".card .card-feedback .recorded:has-text('Alice rated “Very helpful”')"
    )
    chosen = card.locator(".card-buttons button.chosen")
    assert await chosen.inner_text() == "Very helpful"
    # a second rating of the same answer is not recorded, and the card says so
    await card.locator(".card-buttons button", has_text="No help").click()
    refused = page.locator(".card .card-feedback .refused")
    await refused.wait_for()
    assert "not recorded, already rated “Very helpful”" in await refused.inner_text()
    assert await card.locator(".card-buttons button.chosen").inner_text() == "Very helpful"
    assert await card.locator(".card-buttons button.refused").inner_text() == "No help"
    ARTIFACTS.mkdir(exist_ok=True)
    await card.screenshot(path=str(ARTIFACTS / "console-feedback.png"))


async def test_the_call_inspector_opens(quick: Demo, browser: Any) -> None:
    assert quick.console is not None
    page = await _open(browser, quick.console.url, VIEWPORTS["desktop"])
    await page.fill("#message-input", "inspect me")
    await page.press("#message-input", "Enter")
    await page.wait_for_selector(".card[data-status='final']", timeout=20_000)
    await page.click("#calls tr:first-child")
    dialog = page.locator("#call-detail")
    await dialog.wait_for(state="visible")
    summary = await page.inner_text("#call-detail-summary")
    assert "latency" in summary and "status" in summary
    raw = json.loads(await page.text_content("#call-detail-raw") or "{}")
    assert raw["status"] == 200 and "route" in raw
    await page.click("#call-detail-close")
    await dialog.wait_for(state="hidden")


async def test_system_events_transcripts_and_clearing(
    quick: Demo, browser: Any, tmp_path: Path
) -> None:
    assert quick.console is not None
    page = await _open(browser, quick.console.url, VIEWPORTS["desktop"])
    await page.fill("#message-input", "remember this")
    await page.press("#message-input", "Enter")
    await page.wait_for_selector(".card[data-status='final']", timeout=20_000)
    # the emulator's system events are buttons
    await page.click("#redeliver-last")
    await page.wait_for_selector("#fault-status:has-text('redelivered')")
    await page.click("#fault-drop")
    await page.wait_for_selector("#fault-status:has-text('connection dropped')")
    # save the conversation as a transcript
    async with page.expect_download() as download_info:
        await page.click("#save-transcript")
    download = await download_info.value
    saved = tmp_path / "transcript.json"
    await download.save_as(saved)
    transcript = json.loads(saved.read_text(encoding="utf-8"))
    kinds = [item["kind"] for item in transcript["items"]]
    assert kinds == ["message", "card"] and transcript["robot"] == "support"
    # clear the conversation: a fresh one, empty
    await page.click("#clear-conversation")
    await page.wait_for_selector("#timeline .empty")
    assert await page.locator("#timeline .card").count() == 0
    # load the transcript: shown read-only, then replayed to the robot
    await page.set_input_files("#load-transcript", str(saved))
    await page.wait_for_selector("#transcript-banner:not([hidden])")
    assert await page.locator("#timeline .card").count() == 1
    assert await page.is_disabled("#message-input")
    await page.click("#replay-transcript")
    await page.wait_for_selector(
        "#transcript-status:has-text('replayed 1 messages')", timeout=20_000
    )
    await page.wait_for_selector(".card[data-status='final']:has-text('remember this')")


async def test_your_own_robot_from_console_config_answers(
    manager: PluginManager, browser: Any
) -> None:
    config = ConfigConsole(ROOT / "examples" / "custom_robot" / "robots.toml", manager=manager)
    url = await config.start()
    try:
        for viewport in sorted(VIEWPORTS):
            page = await _open(browser, url, VIEWPORTS[viewport])
            tab = page.locator("#platform-tabs button.active")
            assert await tab.inner_text() == "helpdesk · In-memory"
            if await page.is_visible("#view-tabs"):  # a phone: the chats are behind a tab
                await page.click("#view-tabs button[data-view='sidebar']")
            await page.click("#conversations li[data-conversation='direct']")
            await page.fill("#message-input", "/status")
            await page.press("#message-input", "Enter")
            # the robot's own command, answered in markdown...
            await page.wait_for_selector(".bubble.robot:has-text('All systems operational')")
            await page.fill("#message-input", "When will you answer?")
            await page.press("#message-input", "Enter")
            # ...and its own agent, streamed into a card
            await page.wait_for_selector(
                ".card[data-status='final']:has-text('one business day')", timeout=20_000
            )
            assert await _input_visible(page)
            await page.close()
    finally:
        await config.stop()
