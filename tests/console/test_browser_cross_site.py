"""A hostile page in real headless Chromium tries the console (issue 12, item 11): its
cross-origin POSTs and websocket are refused, while the console's own page, opened in
the same browser, keeps working. The hostile page is served from 127.0.0.1 on another
port (same site: the browser sends the console's cookie, only the Origin check stops
it) and from localhost (another site: no cookie at all)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from imrobots.demo import Demo
from imrobots.demo_agent import DemoAgent
from imrobots.plugins import PluginManager
from tests.console.browser import CHROMIUM, CHROMIUM_ARGS, require_browser

ATTACK = """<!doctype html><title>cute cats</title><script>
window.attack = async (target) => {
  const results = {};
  const body = JSON.stringify({text: "forged by another site", conversation_id: "direct"});
  try {  // a "simple" request: no preflight, the cookie goes along if the browser sends it
    await fetch(target + "api/memory/messages",
                {method: "POST", mode: "no-cors", credentials: "include",
                 headers: {"Content-Type": "text/plain"}, body});
    results.post = "sent";
  } catch (e) { results.post = "failed"; }
  results.ws = await new Promise((resolve) => {
    const ws = new WebSocket(target.replace("http", "ws") + "api/events");
    ws.onopen = () => { resolve("open"); ws.close(); };
    ws.onerror = () => resolve("refused");
  });
  return results;
};
</script>"""


@pytest.fixture
async def demo(manager: PluginManager) -> AsyncIterator[Demo]:
    running = Demo(platforms=["memory"], manager=manager, agent=DemoAgent(delay=0.002))
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def hostile_site() -> AsyncIterator[int]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=ATTACK, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield int(runner.addresses[0][1])
    await runner.cleanup()


async def test_a_hostile_page_cannot_drive_the_console(demo: Demo, hostile_site: int) -> None:
    async_playwright = require_browser()
    assert demo.console is not None
    console = demo.console.url
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context()
            own = await context.new_page()
            await own.goto(console)  # the user has the console open: the browser has its cookie
            await own.wait_for_selector("#connection.ok")
            cookies = await context.cookies(console)
            assert [c["name"] for c in cookies] == [demo.console.guard.cookie_name]

            for origin in (
                f"http://127.0.0.1:{hostile_site}/",
                f"http://localhost:{hostile_site}/",
            ):
                evil = await context.new_page()
                await evil.goto(origin)
                results = await evil.evaluate("(target) => window.attack(target)", console)
                assert results == {"post": "sent", "ws": "refused"}, origin
                await evil.close()
            assert demo.robots[0].emulator.messages == []  # nothing reached the robot

            # the console's own page still sends messages (its POSTs carry the cookie)
            emulator = demo.robots[0].emulator
            await own.fill("#message-input", "hello from the real page")
            await own.keyboard.press("Enter")
            await emulator.wait_for(lambda: bool(emulator.messages), timeout=15)
            assert "hello from the real page" in emulator.messages[0]["text"]
        finally:
            await browser.close()
