"""The command line: --version, platforms, run (stops cleanly on SIGINT and SIGTERM), demo."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    if importlib.util.find_spec("dingtalk_stream") is not None:
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


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_demo_in_the_terminal_stops_cleanly_on_ctrl_c(loop: str) -> None:
    """SIGINT mid-answer stops the terminal demo as it stops the console's and `run`:
    the answer ends interrupted, the runtime's summary counts it, exit status 0, and no
    click "Aborted!"."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "100", "IMROBOTS_LOOP": loop}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imrobots",
            "demo",
            "--delay",
            "0.5",
            "-q",
            "How do I get a refund?",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        seen = _wait_for_line(process, "streaming]", time.monotonic() + 30, stdout=True)
        process.send_signal(signal.SIGINT)
        rest, errors = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    output = "".join(seen) + rest
    assert process.returncode == 0, output + errors
    assert "Aborted!" not in output + errors
    assert "stopping..." in rest and "interrupted]" in rest
    assert rest.rstrip().endswith("stopped") and "done in" not in rest
    summary = "robot support on memory stopped: 1 received, 0 answered, 0 failed, 0 unanswered, "
    assert summary + "1 interrupted" in errors


def test_demo_refuses_platform_with_questions() -> None:
    result = CliRunner().invoke(cli, ["demo", "--platform", "dingtalk", "-q", "Hello?"])
    assert result.exit_code == 2
    assert "--platform chooses the console's emulators; -q asks on the in-memory" in result.output
    assert "Traceback" not in result.output


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
