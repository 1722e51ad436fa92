"""The on/off ``IMROBOTS_*`` variables: one reading of their values, and a clear error
(never a guess, never a traceback) for a value none of the commands takes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from imrobots.cli import cli
from imrobots.environment import (
    DISABLE_PLUGIN_AUTOLOAD,
    FLAGS,
    GC_TUNING,
    STRICT_PLUGINS,
    env_flag,
    environment_problems,
)
from imrobots.errors import ConfigError
from imrobots.plugins import PluginManager, get_plugin_manager, reset_plugin_manager

CONFIG = """
[robots.helper]
platform = "memory"
[robots.helper.agent]
use = "demo"
delay = 0
"""


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        (" Yes ", True),
        ("ON", True),
        ("0", False),
        ("False", False),
        ("no", False),
        (" off", False),
    ],
)
def test_a_flag_takes_the_usual_on_and_off_words(raw: str, expected: bool) -> None:
    for default in (True, False):
        assert env_flag("IMROBOTS_X", default=default, env={"IMROBOTS_X": raw}) is expected


def test_an_unset_or_empty_flag_is_its_default() -> None:
    for default in (True, False):
        assert env_flag("IMROBOTS_X", default=default, env={}) is default
        assert env_flag("IMROBOTS_X", default=default, env={"IMROBOTS_X": "  "}) is default


@pytest.mark.parametrize("raw", ["2", "maybe", "enabled", "0.0", "y"])
def test_any_other_value_is_an_error_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        env_flag("IMROBOTS_X", default=False, env={"IMROBOTS_X": raw})
    assert str(caught.value) == (
        f"IMROBOTS_X={raw!r} is not an on/off value: use 1, true, yes or on, or 0, false, no or off"
    )


def test_strict_plugins_false_means_off() -> None:
    """Before: any value but "" and "0" turned strict loading on, "false" included."""
    manager = PluginManager(load_entry_points=False)
    assert manager.strict is False
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(STRICT_PLUGINS, "false")
        assert PluginManager(load_entry_points=False).strict is False
        patch.setenv(STRICT_PLUGINS, "on")
        assert PluginManager(load_entry_points=False).strict is True


def test_disable_plugin_autoload_false_still_loads_the_installed_plugins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: "false" (any value but "" and "0") turned autoloading off."""
    monkeypatch.setenv(DISABLE_PLUGIN_AUTOLOAD, "false")
    reset_plugin_manager()
    try:
        assert "dingtalk" in get_plugin_manager().platforms()
        monkeypatch.setenv(DISABLE_PLUGIN_AUTOLOAD, "yes")
        reset_plugin_manager()
        assert set(get_plugin_manager().platforms()) == {"memory"}
    finally:
        reset_plugin_manager()


def _thresholds_after_a_runtime_start(value: str | None) -> str:
    """The collector's thresholds after the first runtime started, in a fresh process
    (the tuning is once per process): ``IMROBOTS_GC_TUNING`` set to ``value``."""
    script = (
        "import asyncio, gc\n"
        "from imrobots import Robot, RobotRuntime\n"
        "from imrobots.memory import MemoryPlatform\n"
        "async def main():\n"
        "    runtime = RobotRuntime(name='r', robot=Robot(), platform=MemoryPlatform())\n"
        "    await runtime.start()\n"
        "    await runtime.stop()\n"
        "asyncio.run(main())\n"
        "print(gc.get_threshold())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != GC_TUNING}
    if value is not None:
        env[GC_TUNING] = value
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_gc_tuning_is_on_by_default_and_off_with_any_off_word() -> None:
    from imrobots.runtime import GC_THRESHOLDS

    assert _thresholds_after_a_runtime_start(None) == str(GC_THRESHOLDS)
    untouched = subprocess.run(
        [sys.executable, "-c", "import gc; print(gc.get_threshold())"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()  # this Python's own defaults
    assert untouched != str(GC_THRESHOLDS)
    assert _thresholds_after_a_runtime_start("off") == untouched
    assert _thresholds_after_a_runtime_start("false") == untouched


def test_environment_problems_lists_every_bad_variable() -> None:
    env = {GC_TUNING: "nope", STRICT_PLUGINS: "1", "IMROBOTS_LOOP": "trio"}
    problems = environment_problems(env)
    assert [p.split("=")[0] for p in problems] == [GC_TUNING, "IMROBOTS_LOOP"]
    assert environment_problems({}) == []
    assert set(FLAGS) == {STRICT_PLUGINS, DISABLE_PLUGIN_AUTOLOAD, GC_TUNING}


def test_a_command_refuses_a_bad_flag_in_one_line_without_a_traceback() -> None:
    result = CliRunner().invoke(cli, ["platforms"], env={STRICT_PLUGINS: "maybe"})
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        "error: IMROBOTS_STRICT_PLUGINS='maybe' is not an on/off value: use 1, true, yes "
        "or on, or 0, false, no or off"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--delay", "0", "-q", "How do I get a refund?"],
        ["run", "--config", "{config}"],
        ["feedback", "export", "--config", "{config}"],
    ],
)
def test_commands_that_run_robots_refuse_a_bad_flag_before_starting(
    tmp_path: Path, args: list[str]
) -> None:
    config = tmp_path / "robots.toml"
    config.write_text(CONFIG, encoding="utf-8")
    args = [a.replace("{config}", str(config)) for a in args]
    result = CliRunner().invoke(cli, args, env={GC_TUNING: "nope"})
    assert result.exit_code == 2, result.output
    assert "error: IMROBOTS_GC_TUNING='nope' is not an on/off value" in result.output
    assert "Traceback" not in result.output
    assert "robot helper" not in result.output  # nothing started


def test_check_reports_a_bad_flag_as_an_error(tmp_path: Path) -> None:
    config = tmp_path / "robots.toml"
    config.write_text(CONFIG, encoding="utf-8")
    result = CliRunner().invoke(cli, ["check", str(config)], env={GC_TUNING: "nope"})
    assert result.exit_code == 2, result.output
    assert "error: IMROBOTS_GC_TUNING='nope' is not an on/off value" in result.output
    result = CliRunner().invoke(cli, ["check", str(config)], env={GC_TUNING: "off"})
    assert result.exit_code == 0, result.output


def test_every_variable_the_code_reads_is_in_the_configuration_docs() -> None:
    root = Path(__file__).resolve().parents[2]
    read = set()
    for package in ("imrobots", "imrobots_dingtalk", "imrobots_feishu", "imrobots_wecom"):
        for source in (root / package).rglob("*.py"):
            read |= set(re.findall(r"\bIMROBOTS_[A-Z_]+\b", source.read_text(encoding="utf-8")))
    assert {"IMROBOTS_LOOP", GC_TUNING, STRICT_PLUGINS} <= read  # the scan finds them
    docs = (root / "docs" / "configuration.md").read_text(encoding="utf-8")
    table = docs.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    missing = sorted(name for name in read if f"`{name}`" not in table)
    assert missing == [], f"docs/configuration.md's environment variables lack {missing}"
