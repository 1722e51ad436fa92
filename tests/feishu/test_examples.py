"""The example support robot on Feishu by config alone (``examples/feishu_support``):
``imrobots check`` validates it, naming each unset variable on its own line; it answers
on the Feishu emulator (``imrobots console --config``); and ``imrobots demo`` has a
Feishu chat, found through the plugin's emulator like every other platform's."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import imrobots_feishu.plugin
from imrobots.cli import cli
from imrobots.demo import ConfigConsole, Demo
from imrobots.demo_agent import DemoAgent
from imrobots.emulation import EmulatorAdapter
from imrobots.plugins import PluginManager
from imrobots.testing.conformance import card_text

EXAMPLE = Path(__file__).parents[2] / "examples" / "feishu_support" / "robots.toml"
ENV = {"FEISHU_APP_ID": "cli_a1b2c3d4e5f6a7b8", "FEISHU_APP_SECRET": "app-secret-value"}


@pytest.fixture
def feishu(manager: PluginManager) -> PluginManager:
    manager.register(imrobots_feishu.plugin, name="feishu")
    return manager


def _check(env: dict[str, str]) -> tuple[int, list[str]]:
    cleared = {key: None for key in ENV} | env  # none of the host's FEISHU_* leak in
    result = CliRunner().invoke(cli, ["check", str(EXAMPLE)], env=cleared)  # type: ignore[arg-type]
    return result.exit_code, result.output.strip().splitlines()


def test_check_accepts_the_example(feishu: PluginManager) -> None:
    code, lines = _check(ENV)
    assert code == 0, lines
    assert lines[0] == "ok: robot 'support' (SupportRobot) on feishu, agent demo"
    assert ENV["FEISHU_APP_SECRET"] not in "\n".join(lines)


def test_check_names_each_unset_variable_on_its_own_line(feishu: PluginManager) -> None:
    code, lines = _check({})
    assert code == 2
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 2, lines
    for field, line in zip(("app_id", "app_secret"), errors, strict=True):
        assert f"robots.support.settings.{field} uses {{{{" in line


async def _answer(emulator: EmulatorAdapter, conversation_id: str, group: bool) -> None:
    await emulator.say(
        text="How do I get a refund?",
        conversation_id=conversation_id,
        group=group,
        user_id="alice",
        user_name="Alice",
        mention=True,
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        state: dict[str, Any] = emulator.state()
        finals = [
            c
            for c in state["cards"]
            if c["status"] == "final" and c["conversation_id"] == conversation_id
        ]
        if any("refund" in card_text(c) for c in finals):
            return
        assert loop.time() < deadline, f"no final card; the emulator shows {state}"
        await asyncio.sleep(0.02)


async def test_the_example_answers_on_the_emulator(feishu: PluginManager) -> None:
    """With no FEISHU_* variable set: the emulator's credentials are used."""
    console = ConfigConsole(EXAMPLE, manager=feishu, env={})
    await console.start()
    try:
        [robot] = console.robots
        assert robot.platform == "feishu" and robot.emulator.platform == "feishu"
        assert getattr(robot.emulator, "card_mode", None) == "cardkit"
        await _answer(robot.emulator, "group-support", group=True)
    finally:
        await console.stop()


async def test_the_demo_has_a_feishu_chat(feishu: PluginManager) -> None:
    demo = Demo(manager=feishu, agent=DemoAgent(delay=0))
    await demo.start()
    try:
        assert "feishu" not in demo.skipped, demo.skipped
        assert [r.platform for r in demo.robots] == ["memory", "feishu"]
        assert demo.console is not None
        feishu_robot = demo.robots[1]
        assert feishu_robot.emulator.title == "Feishu"
        await _answer(feishu_robot.emulator, "direct", group=False)
    finally:
        await demo.stop()
