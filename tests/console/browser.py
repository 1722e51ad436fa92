"""What the console's browser tests share: Debian's chromium driven by Playwright (never
downloaded), the slow agent that makes every card state visible, and one platform's
support robot on its emulator behind the console.

Outside CI a test is skipped when chromium, playwright or a platform's extra is
missing; in CI it fails instead."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import os
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from imrobots.agents import AgentRequest
from imrobots.demo import Demo
from imrobots.plugins import PluginManager

__all__ = [
    "ARTIFACTS",
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "FEEDBACK_LABELS",
    "SlowAgent",
    "console_page",
    "platform_console",
    "require_browser",
    "require_modules",
]

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
FEEDBACK_LABELS = ["Very helpful", "Helpful", "Not much help", "No help"]
"""The support robot's feedback buttons, in order."""


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def require_browser() -> Any:
    """Playwright's ``async_playwright``, or skip (fail in CI) when it or chromium is
    missing."""
    missing = []
    if not shutil.which(CHROMIUM):
        missing.append("chromium (apt-get install chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        missing.append("playwright (pip install playwright)")
        async_playwright = None
    if missing:
        _missing("needs " + " and ".join(missing))
    return async_playwright


def require_modules(modules: Sequence[str], install: str) -> None:
    """Skip (fail in CI) unless every module of ``modules`` is importable."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        _missing(f"needs {', '.join(missing)} ({install})")


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


@contextlib.asynccontextmanager
async def platform_console(
    manager: PluginManager, platform: str, agent: object | None = None
) -> AsyncIterator[Demo]:
    """The support robot on ``platform``'s emulator (its plugin ``imrobots_<platform>``
    registered on ``manager``) and the console, as ``imrobots demo`` runs them; the agent
    is a :class:`SlowAgent` unless given."""
    manager.register(importlib.import_module(f"imrobots_{platform}.plugin"), name=platform)
    demo = Demo(platforms=[platform], manager=manager, agent=agent or SlowAgent())
    await demo.start()
    try:
        assert demo.skipped == {}, demo.skipped
        yield demo
    finally:
        await demo.stop()


@contextlib.asynccontextmanager
async def console_page(demo: Demo, viewport: tuple[int, int] = (1400, 900)) -> AsyncIterator[Any]:
    """A headless chromium page on ``demo``'s console, once its event stream is open."""
    assert demo.console is not None
    async with open_console(demo.console.url, viewport) as page:
        yield page


@contextlib.asynccontextmanager
async def open_console(url: str, viewport: tuple[int, int] = (1400, 900)) -> AsyncIterator[Any]:
    """A headless chromium page on the console at ``url``, once its event stream is open."""
    async_playwright = require_browser()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            await page.goto(url)
            await page.wait_for_selector("#connection.ok")
            yield page
        finally:
            await browser.close()
