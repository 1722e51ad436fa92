"""Helpers of the DingTalk tests: settings pointing at the emulator and a running robot.

The ``emu`` fixture is in ``conftest.py``. Nothing here sleeps to wait: tests wait on
emulator events (``emu.wait_for``) or on the runtime (``wait_idle``), with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from imrobots import RobotRuntime, RuntimeOptions, Secret
from imrobots.demo_agent import DemoAgent
from imrobots.examples import SupportRobot
from imrobots.store import Store
from imrobots_dingtalk.emulator import CardRecord, DingTalkEmulator, PushedMessage
from imrobots_dingtalk.platform import DingTalkPlatform, DingTalkSettings

APP = "dingsupportapp"
SECRET = "support-secret-value-0123456789"
QUESTION = "How do I get a refund?"
CardMode = Literal["standard", "ai"]
MODES: tuple[CardMode, ...] = ("standard", "ai")


def make_settings(
    emu: DingTalkEmulator, mode: CardMode = "standard", **overrides: Any
) -> DingTalkSettings:
    """Settings of the tests' app on ``emu``. ``mode="ai"`` uses a template of one's own
    (``imrobots-answer.schema``, the plugin's own variables); ``card_mode=None`` in
    ``overrides`` leaves the card settings at their defaults (AI cards on DingTalk's
    built-in template)."""
    host = emu.base_url.split("//", 1)[1]
    values: dict[str, Any] = {
        "client_id": APP,
        "client_secret": Secret(SECRET),
        "openapi_endpoint": emu.base_url,
        "oapi_endpoint": emu.base_url,
        "webhook_hosts": (host,),
        "download_hosts": (host,),
        "card_mode": mode,
        "update_interval": 0.2,
        "reconnect_initial": 0.05,
    }
    if mode == "ai":
        values["ai_template_id"] = "imrobots-answer.schema"
    values.update(overrides)
    if values["card_mode"] is None:
        del values["card_mode"]
    return DingTalkSettings(**values)


@contextlib.asynccontextmanager
async def running(
    emu: DingTalkEmulator,
    mode: CardMode = "standard",
    *,
    robot: Any = None,
    delay: float = 0.01,
    options: RuntimeOptions | None = None,
    store: Store | None = None,
    **overrides: Any,
) -> AsyncIterator[RobotRuntime]:
    """A started runtime with the example robot (or ``robot``) on the emulator."""
    platform = DingTalkPlatform(make_settings(emu, mode, **overrides))
    runtime = RobotRuntime(
        name="support",
        robot=robot or SupportRobot(agent=DemoAgent(delay=delay)),
        platform=platform,
        options=options,
        store=store,
        feedback_secret="test-feedback-secret",
    )
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop(timeout=5)


def cards_for(emu: DingTalkEmulator, pushed: PushedMessage) -> list[CardRecord]:
    return [c for c in emu.cards.values() if c.conversation_id == pushed.conversation_id]


def final(card: CardRecord) -> bool:
    """The card shows the final answer with its four feedback buttons (an AI card: and its
    streaming was closed, the call that brings the final text)."""
    if card.kind == "instance" and card.streaming_state not in ("finished", "failed"):
        return False
    return len(card.view.get("buttons") or []) == 4


def card_calls(emu: DingTalkEmulator) -> int:
    """Calls the robot made to card APIs (StandardCard and card instances)."""
    return sum(1 for c in emu.calls if c.route.startswith(("interactiveCards.", "card.")))


def write_robots_toml(
    emu: DingTalkEmulator,
    directory: Path,
    *,
    openapi: str | None = None,
    robot: str = "",
    settings: str = "",
    agent: str = 'use = "demo"',
    before: str = "",
    after: str = "",
) -> Path:
    """``directory/robots.toml``: the tests' app on ``emu`` as ``imrobots run`` reads it,
    the robot ``support`` with fast updates and reconnects. ``robot``, ``settings`` and
    ``agent`` are lines added to those tables; ``before`` and ``after`` are whole tables
    before and after them; ``openapi`` replaces the OpenAPI endpoint."""
    host = emu.base_url.split("//", 1)[1]
    path = directory / "robots.toml"
    path.write_text(
        f"""{before}
[robots.support]
platform = "dingtalk"
{robot}

[robots.support.settings]
client_id = "{APP}"
client_secret = "{SECRET}"
openapi_endpoint = "{openapi or emu.base_url}"
oapi_endpoint = "{emu.base_url}"
webhook_hosts = ["{host}"]
download_hosts = ["{host}"]
update_interval = 0.1
reconnect_initial = 0.05
{settings}

[robots.support.agent]
{agent}
{after}
""",
        encoding="utf-8",
    )
    return path


async def start_run(
    config: Path,
    *args: str,
    output: Any,
    before: tuple[str, ...] = (),
    cwd: str | None = None,
) -> asyncio.subprocess.Process:
    """``python -m imrobots [BEFORE] run --config CONFIG [ARGS]`` in a subprocess of its own,
    this checkout importable, its stdout and stderr to ``output`` (a file, or
    ``asyncio.subprocess.PIPE``)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "imrobots",
        *before,
        "run",
        "--config",
        str(config),
        *args,
        cwd=cwd,
        stdout=output,
        stderr=output if output is not asyncio.subprocess.PIPE else asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.getcwd()},
    )
