"""Take the tutorial's screenshots of the console (docs/images/tutorial-*.png) in headless
Chromium: the robot `imrobots new robot support-desk` writes, run with
`imrobots console --config` on the DingTalk emulator with the built-in FAQ agent.

    python -m tests.console.docs_screenshots

Not a test (nothing asserts): it regenerates images the docs show. It needs the DingTalk
extra, playwright and Debian's chromium (never a downloaded browser).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from playwright.async_api import async_playwright

from imrobots.demo import ConfigConsole
from imrobots.scaffold import scaffold
from tests.console.browser import CHROMIUM, CHROMIUM_ARGS

IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"

CONFIG = """
[robots.support-desk]
robot = "support_desk.robot:SupportDeskRobot"
platform = "dingtalk"

[robots.support-desk.settings]
client_id = "{{DINGTALK_CLIENT_ID}}"
client_secret = "{{DINGTALK_CLIENT_SECRET}}"

[robots.support-desk.agent]
use = "demo"
delay = 0.03
"""


async def _ask(page: Any, text: str, *, mention: bool = True) -> None:
    if await page.is_checked("#mention") != mention:
        await page.click("#mention")
    await page.fill("#message-input", text)
    await page.press("#message-input", "Enter")


async def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        scaffold("robot", "support-desk", root / "support-desk")
        sys.path.insert(0, str(root / "support-desk"))
        (root / "robots.toml").write_text(CONFIG, encoding="utf-8")
        console = ConfigConsole(root / "robots.toml", env={})
        url = await console.start()
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
                )
                page = await browser.new_page(viewport={"width": 1280, "height": 800})
                await page.goto(url)
                await page.wait_for_selector("#connection.ok")
                await _ask(page, "How do I get a refund?")
                await page.wait_for_selector(".card[data-status='final']", timeout=30_000)
                card = page.locator(".card[data-status='final']").last
                await card.locator(".card-buttons button", has_text="Very helpful").click()
                await page.wait_for_selector(".card-feedback .recorded")
                await _ask(page, "Lunch at noon, anyone?", mention=False)
                await page.wait_for_selector(".bubble[data-outcome='rejected']")
                await _ask(page, "What are your opening hours?")
                await page.wait_for_function(
                    "document.querySelectorAll(\".card[data-status='final']\").length >= 2",
                    timeout=30_000,
                )
                await page.screenshot(path=str(IMAGES / "tutorial-console.png"))
                await page.close()
                phone = await browser.new_page(viewport={"width": 390, "height": 844})
                await phone.goto(url)
                await phone.wait_for_selector("#connection.ok")
                await phone.wait_for_selector(".card[data-status='final']")
                await phone.screenshot(path=str(IMAGES / "tutorial-phone.png"))
                await browser.close()
        finally:
            await console.stop()
    for name in ("tutorial-console", "tutorial-phone"):
        print(IMAGES / f"{name}.png")


if __name__ == "__main__":
    asyncio.run(main())
