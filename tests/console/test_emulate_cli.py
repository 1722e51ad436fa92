"""`imrobots emulate PLATFORM` and how the demo picks its agent."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from imrobots.app import build_runtimes
from imrobots.cli import cli
from imrobots.config import check_config
from imrobots.demo import demo_agent
from imrobots.demo_agent import DemoAgent


def _start_emulate(*args: str) -> tuple[subprocess.Popen[str], str]:
    """Start `imrobots emulate ARGS` and return it with what it printed up to "Press Ctrl-C"."""
    process = subprocess.Popen(
        [sys.executable, "-m", "imrobots", "emulate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line or line.startswith("Press Ctrl-C"):
            break
        lines.append(line)
    return process, "".join(lines)


def _stop(process: subprocess.Popen[str]) -> str:
    """SIGINT: the command stops (status 0); what it wrote on standard error."""
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0
    assert "stopped" not in out  # a status line: standard error, not the printed config's stream
    return err


async def _ask_through_the_console(
    config: Path, console: str, platform: str, token: str
) -> dict[str, Any]:
    """Run the printed config's robot here; send a message through the emulate console's API
    (with the token its curl line shows); return the final card, read from the console's
    event stream."""
    result = check_config(config)
    assert result.ok, result.errors
    assert result.config is not None
    [runtime] = build_runtimes(result.config)
    await runtime.start()
    try:
        async with (
            aiohttp.ClientSession(headers={"X-Imrobots-Token": token}) as session,
            session.ws_connect(console + "api/events") as events,
        ):
            response = await session.post(
                console + f"api/{platform}/messages",
                json={
                    "text": "How do I get a refund?",
                    "conversation_id": "group-support",
                    "mention": True,
                },
            )
            assert response.status == 200, await response.text()
            async with asyncio.timeout(30):
                async for frame in events:
                    event = frame.json()
                    card = event.get("card") or {}
                    if event["type"] == "card" and card.get("status") == "final":
                        return dict(card)
    finally:
        await runtime.stop()
    raise AssertionError("the console's event stream ended")


def _available(platform: str) -> None:
    from imrobots.plugins import get_plugin_manager

    status = get_plugin_manager().platforms().get(platform)
    if status is None or not status.available:
        pytest.skip(f"the {platform} platform is not available here")


def _config(text: str) -> str:
    return text[text.index("[robots.support]") : text.index("2. In another terminal")]


@pytest.mark.parametrize("platform", ["dingtalk", "feishu", "wecom"])
def test_emulate_prints_a_working_config_and_how_to_talk_to_it(
    tmp_path: Path, platform: str
) -> None:
    _available(platform)
    process, text = _start_emulate(platform)
    try:
        base_url = re.search(r"listening at (http://127\.0\.0\.1:\d+)", text)
        console = re.search(r"console: (http://127\.0\.0\.1:\d+/)", text)
        assert base_url and console, text
        snippet = _config(text)
        robot = tomllib.loads(snippet)["robots"]["support"]
        assert robot["agent"] == {"use": "demo"}  # a complete config: it answers
        assert base_url.group(1).split("//", 1)[1] in snippet  # the emulator's host and port
        assert f"curl -s {console.group(1)}api/{platform}/messages" in text
        token = re.search(r"-H 'X-Imrobots-Token: ([\w-]+)'", text)
        assert token, text
        if platform == "dingtalk":
            assert f"export DINGTALK_OPENAPI_ENDPOINT={base_url.group(1)}" in text
        # the emulator's control API: its own token, printed, which its POSTs accept
        control = re.search(r"control API \((http://\S+/_emulator/),.*\n.*Token: ([\w-]+)'", text)
        if platform == "dingtalk":  # the platform whose emulator has a control API
            assert control, text
            assert control.group(2) != token.group(1)  # not the console's token
            assert asyncio.run(_control_post(control.group(1), control.group(2))) == 200
            assert asyncio.run(_control_post(control.group(1), token.group(1))) == 403
        else:
            assert control is None, text
        config = tmp_path / "robots.toml"
        config.write_text(snippet, encoding="utf-8")
        card = asyncio.run(
            _ask_through_the_console(config, console.group(1), platform, token.group(1))
        )
        assert "refund" in card_text(card).lower()
        assert "stopped" in _stop(process)
    finally:
        if process.poll() is None:
            process.kill()


async def _control_post(control: str, token: str) -> int:
    """The status of a harmless POST to an emulator's control API (no latency added)."""
    async with (
        aiohttp.ClientSession(headers={"X-Imrobots-Token": token}) as session,
        session.post(control + "faults", json={"action": "latency", "seconds": 0}) as response,
    ):
        return response.status


def card_text(card: dict[str, Any]) -> str:
    return " ".join(str(b.get("text", "")) for b in card.get("blocks", ()))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize("platform", ["dingtalk", "feishu", "wecom"])
def test_client_secret_keeps_a_saved_config_valid_or_is_refused_in_one_line(
    tmp_path: Path, platform: str
) -> None:
    _available(platform)
    from imrobots.demo import emulator_takes
    from imrobots.plugins import get_plugin_manager

    if not emulator_takes(platform, get_plugin_manager(), "client_secret"):
        result = CliRunner().invoke(cli, ["emulate", platform, "--client-secret", "s3cret"])
        assert result.exit_code == 2
        assert f"the {platform} emulator cannot keep a fixed client secret" in result.output
        return
    args = [platform, "--client-secret", "s3cret-s3cret", "--port", str(_free_port())]
    config = tmp_path / "robots.toml"
    process, text = _start_emulate(*args, "-o", str(config))
    try:
        assert "s3cret-s3cret" in config.read_text(encoding="utf-8")
        _stop(process)
    finally:
        if process.poll() is None:
            process.kill()
    # a restart with the same options: the saved config still connects and answers
    process, text = _start_emulate(*args)
    try:
        console = re.search(r"console: (http://127\.0\.0\.1:\d+/)", text)
        token = re.search(r"-H 'X-Imrobots-Token: ([\w-]+)'", text)
        assert console and token, text
        card = asyncio.run(
            _ask_through_the_console(config, console.group(1), platform, token.group(1))
        )
        assert "refund" in card_text(card).lower()
        _stop(process)
    finally:
        if process.poll() is None:
            process.kill()


def test_emulate_unknown_or_in_process_platform_is_a_clear_error() -> None:
    result = CliRunner().invoke(cli, ["emulate", "telex"])
    assert result.exit_code == 2 and "no emulator for platform 'telex'" in result.output
    result = CliRunner().invoke(cli, ["emulate", "memory"])
    assert result.exit_code == 2 and "nothing to emulate" in result.output


def test_demo_uses_the_demo_agent_offline_and_openai_when_configured() -> None:
    agent, description = demo_agent({})
    assert isinstance(agent, DemoAgent) and "built-in demo agent" in description
    pytest.importorskip("openai")
    from imrobots.openai_agent import OpenAIAgent

    agent, description = demo_agent(
        {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_MODEL": "local-model"}
    )
    assert isinstance(agent, OpenAIAgent) and agent.model == "local-model"
    assert "local-model" in description and "127.0.0.1:9" in description


@pytest.mark.parametrize("platform", ["dingtalk", "feishu", "wecom"])
@pytest.mark.parametrize("option", ["--port", "--console-port"])
def test_a_busy_port_is_one_error_line_naming_the_option(platform: str, option: str) -> None:
    _available(platform)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "imrobots", "emulate", platform, option, str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    what = f"the {platform} emulator" if option == "--port" else "the console"
    assert f"error: cannot start {what} on 127.0.0.1:{port}: " in result.stderr
    assert f"try {option} 0" in result.stderr


def test_an_output_file_that_cannot_be_written_is_one_error_line(tmp_path: Path) -> None:
    _available("dingtalk")
    target = tmp_path / "missing" / "robots.toml"
    result = subprocess.run(
        [sys.executable, "-m", "imrobots", "emulate", "dingtalk", "-o", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"error: cannot write {target}: No such file or directory" in result.stderr


_OWN_CREDENTIALS = """
[robots.support]
platform = "dingtalk"
[robots.support.settings]
client_id = "{{DT_CLIENT_ID}}"
client_secret = "{{DT_CLIENT_SECRET}}"
robot_names = ["{{DT_ROBOT_NAME}}"]
[robots.support.agent]
use = "demo"
"""


@pytest.mark.parametrize("exported", [True, False])
def test_console_says_which_credentials_it_replaced_whether_or_not_they_are_set(
    tmp_path: Path, exported: bool
) -> None:
    """`imrobots console --config` replaces the robot's Client Secret with the emulator's
    either way; it said so only when the variable was unset (then, for every setting
    whose variable was unset, that "the emulator's value is used", though a robot name is
    kept as written). It names each setting replaced, never a value."""
    _available("dingtalk")
    (tmp_path / "robots.toml").write_text(_OWN_CREDENTIALS, encoding="utf-8")
    real = {
        "DT_CLIENT_ID": "dingrealclient",
        "DT_CLIENT_SECRET": "real-client-secret-value",
        "DT_ROBOT_NAME": "Helper",
    }
    env = {k: v for k, v in os.environ.items() if k not in real}
    process = subprocess.Popen(
        [sys.executable, "-m", "imrobots", "console", "-c", "robots.toml", "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, **(real if exported else {}), "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line or line.startswith("console: "):
                break
            lines.append(line.rstrip("\n"))
        errors = _stop(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    notes = [line.removeprefix("  note: ") for line in lines if line.startswith("  note: ")]
    where = "robots.support.settings"
    if exported:  # the Client ID goes to the emulator's app; the secret is replaced
        assert notes == [f"{where}.client_secret: replaced by the emulator's"], lines
    else:
        unset = " (its environment variable is not set)"
        assert notes == [
            f"{where}.client_id: replaced by the emulator's{unset}",
            f"{where}.client_secret: replaced by the emulator's{unset}",
            f"{where}.robot_names[0]: its environment variable is not set; used as written",
        ], lines
    assert real["DT_CLIENT_SECRET"] not in "\n".join(lines) + errors


def test_settings_an_emulator_builds_over_are_named_as_not_used() -> None:
    """An emulator that builds the robot's platform from its own settings (WeCom's, say)
    leaves the file's other settings unused: each is named, never silently dropped."""
    from imrobots.demo import replaced_settings_notes

    where = "robots.bot.settings"
    notes = replaced_settings_notes(
        where,
        {"bot_id": "aib1", "secret": "{{S}}", "update_interval": 0.7},
        {"bot_id": "aib1", "secret": "emulator-secret", "ws_url": "ws://127.0.0.1:1"},
        [f"{where}.secret"],
        own_platform=True,
    )
    assert notes == [
        f"{where}.secret: replaced by the emulator's (its environment variable is not set)",
        f"{where}.update_interval: not used: the emulator builds this robot's platform from "
        "its own settings",
    ]
