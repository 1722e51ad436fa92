"""The command line: --version, platforms, run (stops cleanly on SIGINT and SIGTERM), demo."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import imrobots
import imrobots_feishu.plugin
import imrobots_wecom.plugin
from imrobots.cli import cli
from imrobots.demo import Demo
from imrobots.demo_agent import DemoAgent
from imrobots.plugins import PluginManager

CONFIG = """
[robots.helper]
platform = "memory"
[robots.helper.agent]
use = "demo"
delay = 0
"""


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and imrobots.__version__ in result.output


def test_platforms_lists_memory_as_available() -> None:
    result = CliRunner().invoke(cli, ["platforms"])
    assert result.exit_code == 0
    line = next(line for line in result.output.splitlines() if line.startswith("memory"))
    assert "available" in line


class _Planned:
    """A plugin registering a platform as planned (as a new plugin's skeleton does)."""

    @imrobots.hookimpl
    def register_platforms(self, register):  # type: ignore[no-untyped-def]
        register(
            imrobots.PlatformSpec(
                name="later", factory="imrobots.memory:MemoryPlatform", status="planned"
            )
        )


@pytest.fixture
def with_plugins(manager: PluginManager) -> PluginManager:
    """The process-wide manager, with the Feishu and WeCom plugins and a planned platform
    registered."""
    manager.register(imrobots_feishu.plugin, name="feishu")
    manager.register(imrobots_wecom.plugin, name="wecom")
    manager.register(_Planned(), name="later")
    return manager


def test_platforms_lists_feishu_and_wecom_as_available_and_a_planned_one_as_planned(
    with_plugins: PluginManager,
) -> None:
    result = CliRunner().invoke(cli, ["platforms"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()}
    assert re.match(r"^later +planned: not implemented in this version", rows["later"])
    for name, modules in (
        ("feishu", ("lark_oapi", "httpx")),
        ("wecom", ("cryptography", "wechatpy")),
    ):
        installed = all(importlib.util.find_spec(m) for m in modules)
        state = "available" if installed else f'not installed: pip install "imrobots\\[{name}\\]"'
        assert re.match(rf"^{name} +{state}", rows[name]), rows[name]
    assert "Feishu/Lark" in rows["feishu"] and "planned" not in rows["feishu"]
    assert re.match(r"^memory +available", rows["memory"])
    # one column layout: every status word starts at the same offset
    offsets = {len(row) - len(row[len(name) :].lstrip()) for name, row in rows.items()}
    assert len(offsets) == 1


def test_check_refuses_a_planned_platform_in_one_line(
    with_plugins: PluginManager, tmp_path: Path
) -> None:
    config = tmp_path / "robots.toml"
    config.write_text(CONFIG.replace('"memory"', '"later"'), encoding="utf-8")
    result = CliRunner().invoke(cli, ["check", str(config)])
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: ") and "robots.helper.platform" in line
    assert "platform 'later' is planned, not available in this version" in line


def test_run_refuses_a_planned_platform_in_one_line(
    with_plugins: PluginManager, tmp_path: Path
) -> None:
    config = tmp_path / "robots.toml"
    config.write_text(CONFIG.replace('"memory"', '"later"'), encoding="utf-8")
    result = CliRunner().invoke(cli, ["run", "--config", str(config)])
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: ")
    assert "platform 'later' is planned, not available in this version" in line


def _wait_for_line(
    process: subprocess.Popen[str], text: str, deadline: float, *, stdout: bool = False
) -> list[str]:
    """The lines of the process's standard error (or output) up to one holding ``text``."""
    stream = process.stdout if stdout else process.stderr
    assert stream is not None
    seen = []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"{text!r} not printed; got: {''.join(seen)}")


def _interrupted(arguments: list[str], after: str, *, loop: str) -> tuple[int, str, str]:
    """Run ``imrobots ARGUMENTS`` on ``loop``, send SIGINT once a line of its standard
    output holds ``after``: its exit status, standard output and standard error."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "100", "IMROBOTS_LOOP": loop}
    process = subprocess.Popen(
        [sys.executable, "-m", "imrobots", *arguments],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        seen = _wait_for_line(process, after, time.monotonic() + 30, stdout=True)
        process.send_signal(signal.SIGINT)
        rest, errors = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, "".join(seen) + rest, errors


_BLOCKING_MODULE = """
import os, sys

sys.stderr.write("{ready}\\n")
sys.stderr.flush()
with open(os.environ["IMROBOTS_TEST_GATE"]) as gate:  # a FIFO no one writes: blocks
    gate.read()
"""

_SLOW_ROBOT = """
from imrobots import Robot


class Bot(Robot):
    async def on_message(self, message, reply):
        await reply.text("hi")
"""

_SLOW_PLUGIN = """
import imrobots


@imrobots.hookimpl
def register_platforms(register):
    register(imrobots.PlatformSpec(name="slowdemo", factory="imrobots.memory:MemoryPlatform"))


@imrobots.hookimpl
def register_emulators(register):
    register("slowdemo", "slowdemo_emulator:SlowEmulator")
"""


def _interrupted_while_importing(
    tmp_path: Path, arguments: list[str], ready: str, extra_env: dict[str, str]
) -> tuple[int, str, str]:
    """Run ``imrobots ARGUMENTS`` in ``tmp_path``, where a module blocks at import (on a
    FIFO) after printing ``ready``; send SIGINT then: exit status, standard output, and
    standard error after ``ready``."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "IMROBOTS_TEST_GATE": str(gate),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        **extra_env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "imrobots", *arguments],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _wait_for_line(process, ready, time.monotonic() + 60)
        process.send_signal(signal.SIGINT)
        output, errors = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, output, errors


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_run_interrupted_while_importing_a_robot_exits_130_quietly(
    tmp_path: Path, log_format: str
) -> None:
    """Ctrl-C while `run` imports the robots' modules (a slow import: a model, a big
    SDK): no traceback nor click's "Aborted!" (status 1), but status 130 and one line."""
    (tmp_path / "slow_robot.py").write_text(
        _BLOCKING_MODULE.format(ready="slow_robot importing") + _SLOW_ROBOT, encoding="utf-8"
    )
    (tmp_path / "robots.toml").write_text(
        '[robots.a]\nplatform = "memory"\nrobot = "slow_robot:Bot"\n', encoding="utf-8"
    )
    status, output, errors = _interrupted_while_importing(
        tmp_path,
        ["--log-format", log_format, "run", "--config", "robots.toml"],
        "slow_robot importing",
        {"IMROBOTS_LOAD_PLUGINS": ""},
    )
    assert status == 130, output + errors
    assert output == ""
    lines = errors.splitlines()
    if log_format == "json":
        assert [json.loads(line)["message"] for line in lines] == ["interrupted"], errors
    else:
        assert lines == ["interrupted"], errors


def test_demo_interrupted_while_importing_an_emulator_exits_130_quietly(tmp_path: Path) -> None:
    """Ctrl-C while `demo` imports a platform's emulator (Feishu's imports lark-oapi: a
    few seconds): the demo ends at once with status 130 and one line. (The import ran
    inside the event loop, whose handler only noted the Ctrl-C: the demo went on to
    start everything once the import was done.)"""
    (tmp_path / "slowdemo_plugin.py").write_text(_SLOW_PLUGIN, encoding="utf-8")
    (tmp_path / "slowdemo_emulator.py").write_text(
        _BLOCKING_MODULE.format(ready="slowdemo emulator importing"), encoding="utf-8"
    )
    info = tmp_path / "slowdemo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: slowdemo\nVersion: 0.1\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        "[imrobots]\nslowdemo = slowdemo_plugin\n", encoding="utf-8"
    )
    status, output, errors = _interrupted_while_importing(
        tmp_path,
        ["demo", "--port", "0", "--platform", "slowdemo"],
        "slowdemo emulator importing",
        {"IMROBOTS_LOAD_PLUGINS": "slowdemo"},
    )
    assert status == 130, output + errors
    assert errors.splitlines() == ["interrupted"], errors
    assert "Traceback" not in output and "console:" not in output, output


@pytest.mark.parametrize("command", ["demo", "console"])
def test_demo_and_console_write_status_on_standard_error(tmp_path: Path, command: str) -> None:
    """What a script reads (the robots and emulators, the console's URL) is standard
    output; the command's status lines (its banner, "Press Ctrl-C", "stopping...",
    "stopped") are standard error, as `run` writes them (were standard output)."""
    (tmp_path / "robots.toml").write_text(CONFIG, encoding="utf-8")
    arguments = (
        ["demo", "--platform", "memory"] if command == "demo" else ["console", "-c", "robots.toml"]
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "imrobots", *arguments, "--port", "0"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "IMROBOTS_LOAD_PLUGINS": ""},
    )
    try:
        seen = _wait_for_line(
            process, "console: http://127.0.0.1:", time.monotonic() + 60, stdout=True
        )
        process.send_signal(signal.SIGINT)
        rest, errors = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, errors
    output = ("".join(seen) + rest).splitlines()
    assert output[-1].startswith("console: http://127.0.0.1:"), output
    assert all(line.startswith("  ") for line in output[:-1]), output
    assert output[0].startswith("  robot helper" if command == "console" else "  memory: ")
    lines = errors.splitlines()
    assert lines[0].startswith(f"imrobots {command}: "), errors
    assert any(line.endswith("Press Ctrl-C to stop.") for line in lines), errors
    assert "stopping..." in lines and lines[-1] == "stopped", errors


@pytest.mark.parametrize(
    ("sig", "loop"),
    [(signal.SIGINT, "uvloop"), (signal.SIGTERM, "uvloop"), (signal.SIGTERM, "asyncio")],
)
def test_run_connects_and_stops_cleanly_on_signal(
    tmp_path: Path, sig: signal.Signals, loop: str
) -> None:
    config = tmp_path / "robots.toml"
    config.write_text(CONFIG, encoding="utf-8")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("IMROBOTS_LOOP", None)
    if loop == "asyncio":  # uvloop is the default where installed (a required package)
        env["IMROBOTS_LOOP"] = "asyncio"
    process = subprocess.Popen(
        [sys.executable, "-m", "imrobots", "run", "--config", str(config)],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        seen = _wait_for_line(process, "press Ctrl-C to stop", time.monotonic() + 30)
        assert any("robot helper: connected to memory" in line for line in seen)
        assert f"running on the {loop} event loop" in seen[-1]
        process.send_signal(sig)
        _, rest = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert "stopped" in rest


def test_run_with_an_unknown_loop_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "robots.toml"
    config.write_text(CONFIG, encoding="utf-8")
    result = CliRunner().invoke(
        cli, ["run", "--config", str(config)], env={"IMROBOTS_LOOP": "trio"}
    )
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: IMROBOTS_LOOP='trio' is not a loop this knows")
    assert "auto" in line and "uvloop" in line and "asyncio" in line


@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--delay", "0", "-q", "How do I get a refund?"],
        ["check", "{config}"],
        ["feedback", "export", "--config", "{config}"],
    ],
)
def test_every_command_refuses_an_unknown_loop_in_one_line(tmp_path: Path, args: list[str]) -> None:
    config = tmp_path / "robots.toml"
    config.write_text(CONFIG, encoding="utf-8")
    args = [a.replace("{config}", str(config)) for a in args]
    result = CliRunner().invoke(cli, args, env={"IMROBOTS_LOOP": "Bogus"})
    assert result.exit_code == 2, result.output
    assert "error: IMROBOTS_LOOP='Bogus' is not a loop this knows" in result.output
    assert "Traceback" not in result.output


def test_a_missing_uvloop_is_a_warning_under_auto_and_an_error_when_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "robots.toml"
    config.write_text(CONFIG, encoding="utf-8")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as on a broken install
    result = CliRunner().invoke(cli, ["check", str(config)], env={"IMROBOTS_LOOP": ""})
    assert result.exit_code == 0, result.output
    assert "warning: uvloop is not installed (a required package here)" in result.output
    result = CliRunner().invoke(cli, ["check", str(config)], env={"IMROBOTS_LOOP": "asyncio"})
    assert result.exit_code == 0 and "warning" not in result.output
    result = CliRunner().invoke(cli, ["check", str(config)], env={"IMROBOTS_LOOP": "uvloop"})
    assert result.exit_code == 2 and 'pip install "uvloop>=0.19"' in result.output


def test_run_with_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "robots.toml"
    config.write_text(CONFIG.replace('"memory"', '"nowhere"'), encoding="utf-8")
    result = CliRunner().invoke(cli, ["run", "--config", str(config)])
    assert result.exit_code == 2
    assert (
        result.output.strip().startswith("error: ")
        and "unknown platform 'nowhere'" in result.output
    )


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("lark", "feishu"),
        ("Feishu", "feishu"),
        ("larksuite", "feishu"),
        ("dingding", "dingtalk"),
        ("ding-talk", "dingtalk"),
        ("wechat-work", "wecom"),
        ("weixin", "wecom"),
        ("wxwork", "wecom"),
        ("WeWork", "wecom"),
    ],
)
def test_check_suggests_the_platform_a_near_miss_means(
    with_plugins: PluginManager, tmp_path: Path, written: str, meant: str
) -> None:
    """Each plugin declares the other names its platform goes by (Lark, Feishu's
    international brand; WeChat Work, WeCom's former name...): a config naming one, or
    a near miss of a name, gets a hint, not only the list of names."""
    with_plugins.register(importlib.import_module("imrobots_dingtalk.plugin"), name="dingtalk")
    config = tmp_path / "robots.toml"
    config.write_text(CONFIG.replace('"memory"', f'"{written}"'), encoding="utf-8")
    result = CliRunner().invoke(cli, ["check", str(config)])
    assert result.exit_code == 2, result.output
    assert (
        f"robots.helper.platform: unknown platform {written!r} (did you mean {meant}?); "
        "choose one of: dingtalk, feishu, later, memory, wecom"
    ) in result.output


def test_emulate_and_demo_suggest_the_platform_a_near_miss_means(
    with_plugins: PluginManager,
) -> None:
    result = CliRunner().invoke(cli, ["emulate", "lark"])
    assert result.exit_code == 2
    assert "no emulator for platform 'lark' (did you mean feishu?); emulators:" in result.output
    result = CliRunner().invoke(cli, ["demo", "--platform", "wechat-work"])
    assert result.exit_code == 2
    assert "no emulator for wechat-work (did you mean wecom?); emulators:" in result.output


_SHARED_APP = """
[robots.{a}]
platform = "{platform}"
[robots.{a}.agent]
use = "demo"
[robots.{a}.settings]
{settings_a}
[robots.{b}]
platform = "{platform}"
[robots.{b}.agent]
use = "demo"
[robots.{b}.settings]
{settings_b}
"""


@pytest.mark.parametrize(
    ("platform", "field", "settings_a", "settings_b", "other_app"),
    [
        (
            "dingtalk",
            "client_id",
            'client_id = "ding-app"\nclient_secret = "s3cret-one"',
            'client_id = "ding-app"\nclient_secret = "s3cret-two"',
            'client_id = "ding-other"\nclient_secret = "s3cret-two"',
        ),
        (
            "feishu",
            "app_id",
            'app_id = "cli_app"\napp_secret = "s3cret-one"',
            'app_id = "cli_app"\napp_secret = "s3cret-two"',
            'app_id = "cli_app"\napp_secret = "s3cret-two"\ndomain = "https://open.larksuite.com"',
        ),
        (
            "wecom",
            "bot_id",
            'bot_id = "bot-1"\nsecret = "s3cret-one"',
            'bot_id = "bot-1"\nsecret = "s3cret-two"',
            'bot_id = "bot-2"\nsecret = "s3cret-two"',
        ),
        (
            "wecom",
            "agent_id",
            'mode = "app"\ncorp_id = "corp"\ncorp_secret = "s3cret-one"\nagent_id = 1000002\n'
            'token = "s3cret-tok"\nencoding_aes_key = "' + "a" * 43 + '"',
            'mode = "app"\ncorp_id = "corp"\ncorp_secret = "s3cret-two"\nagent_id = 1000002\n'
            'token = "s3cret-tok"\nencoding_aes_key = "' + "a" * 43 + '"',
            'mode = "app"\ncorp_id = "corp"\ncorp_secret = "s3cret-two"\nagent_id = 1000003\n'
            'token = "s3cret-tok"\nencoding_aes_key = "' + "a" * 43 + '"',
        ),
    ],
    ids=["dingtalk", "feishu", "wecom-robot", "wecom-app"],
)
def test_check_warns_of_two_robots_sharing_one_app(
    with_plugins: PluginManager,
    tmp_path: Path,
    platform: str,
    field: str,
    settings_a: str,
    settings_b: str,
    other_app: str,
) -> None:
    """Two robots on one app split its messages between their connections (DingTalk and
    Feishu hand each push to one of them; a WeCom bot's newer connection closes the
    older): `check` warns, in one line naming both robots and the shared field but no
    value, and still passes. Another app, or the same ID on another domain, is no warning."""
    sdk = {"feishu": "lark_oapi", "wecom": "wechatpy"}.get(platform)
    if sdk is not None:
        pytest.importorskip(sdk)  # the core-only CI job runs without the platforms' SDKs
    with_plugins.register(importlib.import_module("imrobots_dingtalk.plugin"), name="dingtalk")
    config = tmp_path / "robots.toml"
    text = _SHARED_APP.format(
        a="support", b="helper", platform=platform, settings_a=settings_a, settings_b=settings_b
    )
    config.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(cli, ["check", str(config)])
    assert result.exit_code == 0, result.output
    [warning] = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warning.startswith(
        f"warning: {config}: robots.helper.settings.{field}: the same as robots.support's: "
        f"robots support and helper would be one {platform} app"
    ), warning
    for value in ("s3cret", "ding-app", "cli_app", "bot-1", "1000002", "corp"):
        assert value not in warning
    config.write_text(text.replace(settings_b, other_app), encoding="utf-8")
    result = CliRunner().invoke(cli, ["check", str(config)])
    assert result.exit_code == 0 and "warning" not in result.output, result.output


def test_demo_runs_a_conversation() -> None:
    result = CliRunner().invoke(cli, ["demo", "--delay", "0", "-q", "How do I get a refund?"])
    assert result.exit_code == 0, result.output
    assert "thinking" in result.output and "final" in result.output
    assert "[Very helpful] [Helpful] [Not much help] [No help]" in result.output
    assert "feedback stored: very_helpful" in result.output


def test_demo_in_the_terminal_prints_answers_whole() -> None:
    result = CliRunner().invoke(
        cli, ["demo", "--delay", "0", "-q", "How do I get a refund?"], env={"COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    # the last sentence of the answer, far past 90 characters, is there in full
    words = " ".join(result.output.split())
    assert "Shipping costs are refunded too if the item was faulty." in words
    assert "..." not in result.output.replace("please wait...", "")
    # wrapped to the terminal, not cut
    answer = [line for line in result.output.splitlines() if line.startswith("    ")]
    assert answer and max(len(line) for line in answer) <= 80


async def test_the_console_demo_names_the_platform_in_each_stop_summary(
    with_plugins: PluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    """The console's demo runs the support robot once per platform: each stop summary says
    which platform it is about (they were four identical ``robot support stopped:`` lines)."""
    # DingTalk's plugin imports no SDK: a second platform even with no extra installed
    with_plugins.register(importlib.import_module("imrobots_dingtalk.plugin"), name="dingtalk")
    demo = Demo(manager=with_plugins, agent=DemoAgent(delay=0))
    await demo.start()
    names = [robot.platform for robot in demo.robots]
    assert "memory" in names and len(names) >= 2, demo.skipped
    with caplog.at_level(logging.INFO, logger="imrobots.runtime"):
        await demo.stop()
    lines = [r.getMessage() for r in caplog.records if " stopped: " in r.getMessage()]
    assert sorted(line.split(" stopped: ")[0] for line in lines) == sorted(
        f"robot support on {name}" for name in names
    )


@pytest.mark.parametrize(
    ("loop", "log_format"), [("uvloop", "text"), ("asyncio", "text"), ("uvloop", "json")]
)
def test_demo_in_the_terminal_stops_cleanly_on_ctrl_c(loop: str, log_format: str) -> None:
    """SIGINT mid-answer stops the terminal demo as it stops the console's and `run`:
    the answer ends interrupted, the runtime's summary counts it, exit status 0, and no
    click "Aborted!"; stopping... and stopped are the command's own lines, on standard
    error as `run` writes them (JSON records under --log-format json)."""
    arguments = ["--log-format", log_format, "demo", "--delay", "0.5"]
    status, output, errors = _interrupted(
        [*arguments, "-q", "How do I get a refund?"], "streaming]", loop=loop
    )
    rest = output.split("streaming]", 1)[1]
    assert status == 0, output + errors
    assert "Aborted!" not in output + errors
    assert "interrupted]" in rest and "done in" not in rest
    assert "stopping..." not in output and "stopped" not in output
    summary = "robot support on memory stopped: 1 received, 0 answered, 0 failed, 0 unanswered, "
    if log_format == "json":
        messages = [json.loads(line)["message"] for line in errors.splitlines()]
        assert "stopping..." in messages and messages[-1] == "stopped", errors
        assert any(m.startswith(summary + "1 interrupted") for m in messages), errors
    else:
        assert errors.rstrip().endswith("stopped") and "stopping...\n" in errors
        assert summary + "1 interrupted" in errors


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_demo_in_the_terminal_stops_cleanly_on_ctrl_c_right_after_the_banner(loop: str) -> None:
    """SIGINT as soon as the banner is out, before the conversation's loop runs (or as it
    starts): a clean stop all the same (was "coroutine ... was never awaited" and click's
    "Aborted!", exit 1)."""
    status, output, errors = _interrupted(
        ["demo", "--delay", "0.5", "-q", "refund"], "imrobots demo:", loop=loop
    )
    output += errors
    assert status == 0, output
    for bad in ("Aborted!", "RuntimeWarning", "never awaited", "Traceback", "done in"):
        assert bad not in output, output
    assert "stopping...\n" in errors and errors.rstrip().endswith("\nstopped"), errors


def test_demo_in_the_terminal_stops_quietly_when_its_output_is_closed() -> None:
    """`demo -q ... | head -3`: the reader goes away mid-answer. No BrokenPipeError
    tracebacks (from the display callback, which broke the platform's send_card too):
    the robot stops, its summary shows no failed call, exit status 1 (click's for a
    closed pipe)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "100"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imrobots",
            "demo",
            "--delay",
            "0.05",
            "-q",
            "How fast is delivery?",
            "-q",
            "refund",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _wait_for_line(process, "Alice: @support", time.monotonic() + 30, stdout=True)
        assert process.stdout is not None
        process.stdout.close()  # as head does after its lines
        _, errors = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, errors
    for bad in ("Traceback", "BrokenPipeError", "Exception ignored", "error"):
        assert bad not in errors, errors
    assert "standard output closed; stopping...\n" in errors
    assert errors.rstrip().endswith("stopped")
    assert "0 failed, " in errors and " 0 failed calls," in errors


def test_demo_in_the_terminal_prints_a_text_reply_and_goes_on() -> None:
    """`-q ""` and `-q "   "`: the robot answers a message without text with a text
    message, not a card: printed, no feedback to press (was an IndexError, the robot
    never stopped, exit 1)."""
    result = CliRunner().invoke(
        cli, ["demo", "--delay", "0", "-q", "", "-q", "   ", "-q", "refund"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("  [text]\n    Please send your question as text.") == 2
    assert result.output.count("Alice pressed [Very helpful]") == 1
    assert "robot support on memory stopped: 3 received, 3 answered, 0 failed" in result.output
    assert "done in" in result.output


def test_demo_in_the_terminal_stops_the_robot_when_the_conversation_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever the conversation raises, the robot stops (its summary logged) and the
    command exits 1 with one error line, no traceback."""
    from imrobots.memory import MemoryPlatform

    async def broken_press(self: MemoryPlatform, *args: object, **kwargs: object) -> None:
        raise RuntimeError("the button came off")

    monkeypatch.setattr(MemoryPlatform, "press", broken_press)
    result = CliRunner().invoke(cli, ["demo", "--delay", "0", "-q", "refund"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.exception is not None
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == ["error: the demo failed: RuntimeError: the button came off"]
    assert "robot support on memory stopped: 1 received, 1 answered" in result.output


def test_demo_in_the_terminal_prints_every_recorded_card_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each state the platform recorded is printed once, in order, at any --delay. (A
    later answer done before its thinking card's turn came has no thinking state: the
    engine sends its final card instead, docs/streaming.md.)"""
    from imrobots.memory import MemoryPlatform

    platforms: list[MemoryPlatform] = []
    on_change = MemoryPlatform.on_change

    def recording(self: MemoryPlatform, listener: Any) -> None:
        platforms.append(self)
        on_change(self, listener)

    monkeypatch.setattr(MemoryPlatform, "on_change", recording)
    result = CliRunner().invoke(
        cli, ["demo", "--delay", "0", "-q", "How fast is delivery?", "-q", "refund"]
    )
    assert result.exit_code == 0, result.output
    [platform] = platforms
    recorded = sorted(
        (time, card.id, str(getattr(state, "status", "streaming")))
        for card in platform.cards.values()
        for time, state in card.history
    )
    headers = re.findall(r"^  \[(card-\d+) (\w+)\]", result.output, flags=re.MULTILINE)
    assert headers == [(card_id, status) for _, card_id, status in recorded]
    assert len(headers) >= 3


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--platform", "dingtalk"], "--platform: the web console's option;"),
        (["--port", "9000"], "--port: the web console's option;"),
        (["--host", "0.0.0.0"], "--host: the web console's option;"),
        (["--token", "abc"], "--token: the web console's option;"),
        (["--public-host", "chat.example.com"], "--public-host: the web console's option;"),
        (["--port", "0", "--token", "abc"], "--port, --token: the web console's options;"),
    ],
)
def test_demo_refuses_the_consoles_options_with_questions(options: list[str], named: str) -> None:
    """Every console option given with -q is a usage error naming it (only --platform was;
    --port, --host, --token and --public-host were silently ignored)."""
    result = CliRunner().invoke(cli, ["demo", *options, "-q", "Hello?"])
    assert result.exit_code == 2, result.output
    assert f"Error: {named} -q asks on the in-memory platform in the terminal" in result.output
    assert "Traceback" not in result.output and "Alice" not in result.output


def test_demo_with_questions_ignores_a_console_token_in_the_environment() -> None:
    """IMROBOTS_CONSOLE_TOKEN set for the console is the environment's, not an option."""
    result = CliRunner().invoke(
        cli, ["demo", "--delay", "0", "-q", "refund"], env={"IMROBOTS_CONSOLE_TOKEN": "abc"}
    )
    assert result.exit_code == 0, result.output


def test_demo_refuses_delay_without_questions() -> None:
    """--delay paces the terminal demo only: without -q it was silently ignored."""
    result = CliRunner().invoke(cli, ["demo", "--delay", "0", "--host", "0.0.0.0"])
    assert result.exit_code == 2, result.output
    assert "--delay is the terminal demo's (-q)" in result.output


@pytest.mark.parametrize("delay", ["nan", "inf", "-1"])
def test_demo_refuses_a_non_finite_or_negative_delay(delay: str) -> None:
    """--delay nan acted as 0 and --delay inf never streamed: refused as -1 is, naming the
    option, before anything is printed on standard output."""
    result = CliRunner().invoke(cli, ["demo", "--delay", delay, "-q", "Hello?"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--delay': give a finite number of seconds, 0 or more" in (
        result.output
    )
    assert "Traceback" not in result.output and "imrobots demo:" not in result.output


@pytest.mark.parametrize("closed", ["<&-", ">&-", "2>&-"])
def test_a_command_started_without_a_standard_stream_runs(closed: str) -> None:
    """`imrobots ... >&-`: a socket took the free file descriptor 1 (or 0, or 2) and uvloop
    aborted the process when it closed it (a C assertion, exit 134). /dev/null is opened
    on a missing one at start."""
    command = f"{shlex.quote(sys.executable)} -m imrobots demo -q refund --delay 0 {closed}"
    env = {**os.environ, "IMROBOTS_LOOP": "uvloop"}
    done = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Assertion" not in done.stderr


def test_demo_in_the_terminal_prints_no_control_character() -> None:
    """A question's or an answer's escape sequences would recolour the terminal or retitle
    its window: printed as U+FFFD; a question's further lines are indented."""
    question = "refund\x1b[31m red\x1b]0;pwned\x07\nand a second line"
    result = CliRunner().invoke(cli, ["demo", "--delay", "0", "-q", question])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "Alice: @support refund\ufffd[31m red\ufffd]0;pwned\ufffd\n" in result.output
    assert "\n    and a second line\n" in result.output


def test_check_refuses_a_non_finite_delay_in_a_config(tmp_path: Path) -> None:
    """TOML's nan literal in the demo agent's table: refused as the option is."""
    config = tmp_path / "robots.toml"
    config.write_text(CONFIG.replace("delay = 0", "delay = nan"), encoding="utf-8")
    result = CliRunner().invoke(cli, ["check", str(config)])
    assert result.exit_code == 2, result.output
    assert "delay must be a finite number of seconds" in result.output


def test_demo_in_the_terminal_prints_streamed_updates_as_what_they_add() -> None:
    """As docs/cli.md says: each streamed update prints only the text it adds (a pipe gets
    the answer once, not once per update), the final card whole."""
    result = CliRunner().invoke(
        cli, ["demo", "--delay", "0.03", "-q", "How do I get a refund?"], env={"COLUMNS": "100"}
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert sum("streaming] ..." in line for line in lines) >= 2  # updates as deltas
    first = next(i for i, line in enumerate(lines) if line.endswith(" streaming]"))
    final = next(i for i, line in enumerate(lines) if line.endswith(" final]"))
    streamed = " ".join(lines[first + 1 : final]).replace("[card-2 streaming] ...", " ")
    whole = " ".join(" ".join(lines[final + 1 : final + 9]).split())
    assert whole.startswith("You can ask for a refund **within 30 days** of delivery:")
    # the deltas add up to the answer so far: each piece printed once
    assert whole.startswith(" ".join(streamed.split()))
    # and every line is indented as the card's text, none at the margin
    assert all(line.startswith("  ") for line in lines[first:final] if line)


def test_feedback_export_warns_when_the_config_keeps_state_in_memory(tmp_path: Path) -> None:
    config = tmp_path / "robots.toml"
    config.write_text(
        '[robots.support]\nplatform = "dingtalk"\n[robots.support.settings]\n'
        'client_id = "{{UNSET_ID}}"\nclient_secret = "{{UNSET_SECRET}}"\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(cli, ["feedback", "export", "--config", str(config)])
    # the robots' credentials are not needed to read the store
    assert result.exit_code == 0, result.output
    assert "warning: " in result.output and "keeps state in memory" in result.output
    assert 'Add [store] with backend = "sqlite"' in result.output
    assert "exported 0 feedback records" in result.output
    stored = tmp_path / "stored.toml"
    stored.write_text(
        config.read_text(encoding="utf-8")
        + f'[store]\nbackend = "sqlite"\npath = "{tmp_path / "state.sqlite3"}"\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(cli, ["feedback", "export", "--config", str(stored)])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output


def test_every_command_is_in_the_command_line_page() -> None:
    import click

    page = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text(encoding="utf-8")

    def commands(group: click.Group, prefix: str) -> list[str]:
        found = []
        for name, command in group.commands.items():
            found.append(f"{prefix} {name}")
            if isinstance(command, click.Group):
                found.extend(commands(command, f"{prefix} {name}"))
        return found

    missing = [c for c in commands(cli, "imrobots") if f"`{c}" not in page]
    assert missing == [], f"docs/cli.md does not document {missing}"


@pytest.mark.parametrize(("level", "shown"), [("info", False), ("debug", True)])
def test_http_clients_do_not_log_every_request_below_debug(level: str, shown: bool) -> None:
    """httpx logs each request at INFO (the Feishu plugin's API calls: a line per card
    update); the CLI keeps that out of the log unless --log-level debug."""
    code = (
        "import logging\n"
        "from imrobots.cli import _setup_logging\n"
        f"_setup_logging({level!r}, 'text')\n"
        "logging.getLogger('httpx').info('HTTP Request: PUT /cards')\n"
        "logging.getLogger('httpx').warning('a warning of httpx')\n"
        "logging.getLogger('imrobots.x').info('an info of imrobots')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert ("HTTP Request: PUT /cards" in result.stderr) is shown
    assert "a warning of httpx" in result.stderr
    assert "an info of imrobots" in result.stderr


def test_a_usage_error_under_log_format_json_is_a_json_line() -> None:
    """``--log-format json`` promises that every line on standard error is JSON. Before: a
    bad option value of a command (``--health-port 99999``) printed click's plain
    three-line usage error."""
    import json as _json

    command = [sys.executable, "-m", "imrobots", "--log-format", "json", "run"]
    process = subprocess.run(
        [*command, "--config", "x.toml", "--health-port", "99999"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 2
    lines = process.stderr.splitlines()
    assert lines, process.stderr
    records = [_json.loads(line) for line in lines]  # every line is JSON
    assert records[-1]["level"] == "error" and "--health-port" in records[-1]["message"]


@pytest.mark.parametrize(
    "command",
    [
        ["config", "schema", "-o", "{missing}/robots.schema.json"],
        ["feedback", "export", "--config", "{config}", "-o", "{missing}/feedback.csv"],
        ["new", "robot", "helpdesk", "-d", "{blocked}/helpdesk"],
        ["new", "platform", "chatx", "-d", "{blocked}/chatx"],
    ],
)
def test_an_output_that_cannot_be_written_is_one_error_line(
    tmp_path: Path, command: list[str]
) -> None:
    config = tmp_path / "robots.toml"
    config.write_text(
        f'[store]\nbackend = "sqlite"\npath = "{tmp_path}/state.sqlite3"\n\n'
        '[robots.x]\nplatform = "memory"\n\n[robots.x.agent]\nuse = "demo"\n',
        encoding="utf-8",
    )
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory", encoding="utf-8")
    places = {"missing": str(tmp_path / "missing"), "config": str(config), "blocked": str(blocked)}
    args = [part.format(**places) for part in command]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert re.search(rf"error: cannot write {re.escape(str(tmp_path))}/\S+: ", result.output)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["console", "--config", "{config}", "--port", "70000"], "--port"),
        (["demo", "--port", "-1"], "--port"),
        (["emulate", "dingtalk", "--port", "70000"], "--port"),
        (["emulate", "dingtalk", "--console-port", "65536"], "--console-port"),
        (["run", "--config", "{config}", "--grace", "nan"], "--grace"),
        (["run", "--config", "{config}", "--grace", "inf"], "--grace"),
    ],
)
def test_a_port_out_of_range_or_a_non_finite_grace_is_a_usage_error(
    tmp_path: Path, args: list[str], option: str
) -> None:
    """A port above 65535 was wrapped around by the socket (console --port 70000 listened
    on 4464) or a traceback; --grace nan started the robots and crashed when stopping."""
    config = tmp_path / "robots.toml"
    config.write_text(
        '[robots.x]\nplatform = "memory"\n\n[robots.x.agent]\nuse = "demo"\n', encoding="utf-8"
    )
    result = subprocess.run(
        [sys.executable, "-m", "imrobots", *(a.format(config=config) for a in args)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stderr
    assert f"Invalid value for '{option}'" in result.stderr
    assert "Traceback" not in result.stderr


def test_feedback_export_of_a_robot_without_feedback_says_which_robots_have_some(
    tmp_path: Path,
) -> None:
    """``--robot suport`` (misspelt) exported 0 records and said nothing more, as if the
    robot had no feedback; now a warning names the robots the store holds feedback of."""
    import asyncio
    from datetime import UTC, datetime

    from imrobots.models import Feedback, FeedbackRating, Sender
    from imrobots.sqlite_store import SQLiteStore

    path = tmp_path / "state.sqlite3"

    async def store_one() -> None:
        store = SQLiteStore(path)
        try:
            await store.add_feedback(
                Feedback(
                    robot="support",
                    platform="memory",
                    message_id="m1",
                    rating=FeedbackRating.HELPFUL,
                    sender=Sender(id="u1"),
                    question="q",
                    answer="a",
                    time=datetime(2026, 1, 1, tzinfo=UTC),
                )
            )
        finally:
            await store.close()

    asyncio.run(store_one())
    config = tmp_path / "robots.toml"
    config.write_text(
        f'[store]\nbackend = "sqlite"\npath = "{path}"\n[robots.support]\nplatform = "memory"\n',
        encoding="utf-8",
    )
    export = ["feedback", "export", "--config", str(config), "--format", "json", "--robot"]
    result = CliRunner().invoke(cli, [*export, "suport"])
    assert result.exit_code == 0, result.output
    assert (
        "warning: the store holds no feedback of robot 'suport'; it holds feedback of: support"
        in result.output
    )
    result = CliRunner().invoke(cli, [*export, "support"])
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    assert "exported 1 feedback record" in result.output
