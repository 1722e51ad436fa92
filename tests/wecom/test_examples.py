"""The example support robot on WeCom, by config alone, in both modes
(``examples/wecom_support``): ``imrobots check`` validates each, with one line per
settings error naming the field, and each answers on the emulator
(``imrobots console --config``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import CliRunner

import imrobots_wecom.plugin
from imrobots.cli import cli
from imrobots.demo import ConfigConsole
from imrobots.plugins import PluginManager
from imrobots.testing.conformance import card_text

EXAMPLE = Path(__file__).parents[2] / "examples" / "wecom_support"
ENV = {
    "WECOM_BOT_ID": "aibXXXXXXXX",
    "WECOM_BOT_SECRET": "bot-secret-value",
    "WECOM_CORP_ID": "ww0123456789abcdef",
    "WECOM_APP_SECRET": "app-secret-value",
    "WECOM_CALLBACK_TOKEN": "callback-token-value",
    "WECOM_CALLBACK_AES_KEY": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
}


@pytest.fixture
def wecom(manager: PluginManager) -> PluginManager:
    manager.register(imrobots_wecom.plugin, name="wecom")
    return manager


def _check(path: Path, env: dict[str, str]) -> tuple[int, list[str]]:
    cleared = {key: None for key in ENV} | env  # none of the host's WECOM_* leak in
    result = CliRunner().invoke(cli, ["check", str(path)], env=cleared)  # type: ignore[arg-type]
    return result.exit_code, result.output.strip().splitlines()


@pytest.mark.parametrize("name", ["robot.toml", "app.toml"])
def test_check_accepts_each_mode(wecom: PluginManager, name: str) -> None:
    code, lines = _check(EXAMPLE / name, ENV)
    assert code == 0, lines
    assert lines[0] == "ok: robot 'support' (SupportRobot) on wecom, agent demo"
    assert not any(value in "\n".join(lines) for value in ENV.values())


def test_check_names_each_unset_variable_on_its_own_line(wecom: PluginManager) -> None:
    code, lines = _check(EXAMPLE / "app.toml", {})
    assert code == 2
    errors = [line for line in lines if line.startswith("error: ")]
    fields = ["corp_id", "corp_secret", "token", "encoding_aes_key"]
    assert len(errors) == len(fields), lines
    for field, line in zip(fields, errors, strict=True):
        assert f"robots.support.settings.{field} uses {{{{" in line


BAD = """
[robots.bare]
platform = "wecom"
[robots.bare.settings]
mode = "robot"
ws_url = "ws://example.com"
[robots.bare.agent]
use = "demo"

[robots.app]
platform = "wecom"
[robots.app.settings]
mode = "app"
corp_id = "ww1"
corp_secret = "x"
agent_id = 1000002
token = "t"
encoding_aes_key = "too-short"
callback_port = 70000
callback_path = "wecom"
keep_alive = 0
callback_max_age = 0
api_endpoint = "http://qyapi.weixin.qq.com"
[robots.app.agent]
use = "demo"

[robots.typo]
platform = "wecom"
[robots.typo.settings]
mode = "bot"
[robots.typo.agent]
use = "demo"
"""


def test_settings_errors_are_one_line_each_naming_the_field(
    wecom: PluginManager, tmp_path: Path
) -> None:
    config = tmp_path / "robots.toml"
    config.write_text(BAD, encoding="utf-8")
    code, lines = _check(config, {})
    assert code == 2
    prefix = f"error: {config}: robots."
    assert lines[:-1] == [
        f"{prefix}bare.settings.bot_id: required in mode 'robot'",
        f"{prefix}bare.settings.secret: required in mode 'robot'",
        f"{prefix}bare.settings.ws_url: must use wss:// for a remote host (ws:// only for a "
        "loopback host: 127.0.0.0/8, ::1, localhost), got 'ws://example.com'",
        f"{prefix}app.settings.callback_max_age: must be positive, got 0.0",
        f"{prefix}app.settings.keep_alive: must be positive, got 0.0",
        f"{prefix}app.settings.encoding_aes_key: must be 43 characters (WeCom's EncodingAESKey)",
        f"{prefix}app.settings.api_endpoint: must use https:// for a remote host (http:// only "
        "for a loopback host: 127.0.0.0/8, ::1, localhost), got 'http://qyapi.weixin.qq.com'",
        f"{prefix}app.settings.callback_port: must be 0..65535, got 70000",
        f"{prefix}app.settings.callback_path: must start with /, got 'wecom'",
        f"{prefix}typo.settings.mode: expected one of 'robot', 'app'",
    ]
    assert lines[-1] == f"{config}: 10 errors"


WRONG_TYPE = """
[robots.app]
platform = "wecom"
[robots.app.settings]
mode = "app"
corp_id = "ww1"
agent_id = "1000002"
token = "t"
encoding_aes_key = "too-short"
callback_path = "wecom"
[robots.app.agent]
use = "demo"

[robots.typo]
platform = "wecom"
[robots.typo.settings]
mode = "bot"
corp_id = "ww1"
[robots.typo.agent]
use = "demo"
"""


def test_a_wrong_type_does_not_hide_the_other_errors(wecom: PluginManager, tmp_path: Path) -> None:
    """A value of the wrong type stops the conversion before the settings' own checks;
    ``check`` still reports what those checks find in the keys the table sets, and
    nothing that follows from the default standing in for the wrong value (a misspelt
    mode does not make the default mode's keys "required")."""
    config = tmp_path / "robots.toml"
    config.write_text(WRONG_TYPE, encoding="utf-8")
    code, lines = _check(config, {})
    assert code == 2
    prefix = f"error: {config}: robots."
    assert lines[:-1] == [
        f"{prefix}app.settings.agent_id: expected int, got str",
        f"{prefix}app.settings.encoding_aes_key: must be 43 characters (WeCom's EncodingAESKey)",
        f"{prefix}app.settings.callback_path: must start with /, got 'wecom'",
        f"{prefix}typo.settings.mode: expected one of 'robot', 'app'",
    ]
    assert lines[-1] == f"{config}: 4 errors"


@pytest.mark.parametrize("key", ["abcdefghijklmnopqrstuvwxyz0123456789ABCDEF!", "a" * 42 + "="])
def test_an_aes_key_that_is_not_base64_is_a_settings_error(
    wecom: PluginManager, tmp_path: Path, key: str
) -> None:
    """A 43-character EncodingAESKey with a character base64 does not have passed
    ``check``, and ``run`` then stopped on wechatpy's ``binascii.Error: Incorrect
    padding`` traceback. Now it is one line naming the field, without the key."""
    config = tmp_path / "robots.toml"
    config.write_text((EXAMPLE / "app.toml").read_text(encoding="utf-8"), encoding="utf-8")
    code, lines = _check(config, ENV | {"WECOM_CALLBACK_AES_KEY": key})
    assert code == 2
    assert lines == [
        f"error: {config}: robots.support.settings.encoding_aes_key: must be letters and "
        "digits (WeCom's EncodingAESKey: the base64 of a 32-byte key without its '='); "
        "it has another character",
    ]
    result = CliRunner().invoke(
        cli,
        ["run", "--config", str(config)],
        env={k: None for k in ENV} | ENV | {"WECOM_CALLBACK_AES_KEY": key},  # type: ignore[arg-type]
    )
    assert result.exit_code == 2, result.output
    assert "encoding_aes_key: must be letters and digits" in result.output
    assert "Traceback" not in result.output


def test_a_blank_callback_host_is_an_error(wecom: PluginManager, tmp_path: Path) -> None:
    """A blank ``callback_host`` (a ``{{VAR}}`` set to nothing) passed check, and the
    endpoint listened on every interface, logging ``callbacks at http://:PORT/...``."""
    config = tmp_path / "robots.toml"
    text = (EXAMPLE / "app.toml").read_text(encoding="utf-8")
    config.write_text(
        text.replace('callback_host = "0.0.0.0"', 'callback_host = " "'), encoding="utf-8"
    )
    code, lines = _check(config, ENV)
    assert code == 2, lines
    assert lines == [
        f"error: {config}: robots.support.settings.callback_host: is blank (which listens on "
        "every interface); give an address: 127.0.0.1, or 0.0.0.0 for every interface"
    ]


@pytest.mark.parametrize("agent_id", ["0", "-3"])
def test_an_agent_id_not_above_zero_is_an_error_saying_so(
    wecom: PluginManager, tmp_path: Path, agent_id: str
) -> None:
    """``agent_id = -3`` passed check (WeCom's AgentIds are positive: 1000002...), and
    ``agent_id = 0`` was reported as "required", which it was: it was set."""
    config = tmp_path / "robots.toml"
    text = (EXAMPLE / "app.toml").read_text(encoding="utf-8")
    assert "agent_id = 1000002" in text
    config.write_text(text.replace("agent_id = 1000002", f"agent_id = {agent_id}"), "utf-8")
    code, lines = _check(config, ENV)
    assert code == 2, lines
    assert lines == [
        f"error: {config}: robots.support.settings.agent_id: must be positive, got {agent_id}"
    ]


def test_credentials_of_white_space_are_missing(wecom: PluginManager) -> None:
    """``WECOM_BOT_ID`` and ``WECOM_BOT_SECRET`` exported as a space passed check, and run
    failed only when WeCom refused the subscription (Feishu's App ID and DingTalk's Client
    ID were already checked so)."""
    code, lines = _check(
        EXAMPLE / "robot.toml", ENV | {"WECOM_BOT_ID": " ", "WECOM_BOT_SECRET": "\t"}
    )
    assert code == 2, lines
    prefix = f"error: {EXAMPLE / 'robot.toml'}: robots.support.settings."
    assert lines[:2] == [
        f"{prefix}bot_id: required in mode 'robot'",
        f"{prefix}secret: required in mode 'robot'",
    ]


@pytest.mark.parametrize(("name", "mode"), [("robot.toml", "robot"), ("app.toml", "app")])
async def test_each_example_answers_on_the_emulator(
    wecom: PluginManager, name: str, mode: str
) -> None:
    """``imrobots console --config`` runs the example on the WeCom emulator of its mode,
    with no WeCom variable set (the emulator's credentials are used)."""
    console = ConfigConsole(EXAMPLE / name, manager=wecom, env={})
    await console.start()
    try:
        [robot] = console.robots
        emulator = robot.emulator
        assert getattr(emulator, "mode", None) == mode
        await emulator.say(
            text="How do I get a refund?",
            conversation_id="direct",
            group=False,
            user_id="alice",
            user_name="Alice",
            mention=True,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            state = emulator.state()
            answers = [card_text(c) for c in state["cards"] if c["status"] == "final"]
            answers += [m["text"] for m in state["messages"] if m.get("from_robot")]
            if any("refund" in a for a in answers):
                break
            assert loop.time() < deadline, f"no answer; the emulator shows {state}"
            await asyncio.sleep(0.02)
    finally:
        await console.stop()


MIXED = """
[robots.app]
platform = "wecom"
[robots.app.settings]
mode = "app"
corp_id = "ww1"
corp_secret = "x"
agent_id = 1000002
token = "t"
encoding_aes_key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
bot_id = "aib1"
secret = "bot-secret-xyz"
[robots.app.agent]
use = "demo"

[robots.bot]
platform = "wecom"
[robots.bot.settings]
bot_id = "aib1"
secret = "s"
corp_id = "ww1"
callback_port = 9000
[robots.bot.agent]
use = "demo"
"""


def test_keys_of_the_other_mode_are_warned_about_not_refused(
    wecom: PluginManager, tmp_path: Path
) -> None:
    config = tmp_path / "robots.toml"
    config.write_text(MIXED, encoding="utf-8")
    code, lines = _check(config, {})
    assert code == 0, lines
    prefix = f"warning: {config}: robots."
    assert [line for line in lines if line.startswith("warning:")] == [
        f"{prefix}app.settings.bot_id: belongs to mode 'robot'; ignored in mode 'app'",
        f"{prefix}app.settings.secret: belongs to mode 'robot'; ignored in mode 'app'",
        f"{prefix}bot.settings.corp_id: belongs to mode 'app'; ignored in mode 'robot'",
        f"{prefix}bot.settings.callback_port: belongs to mode 'app'; ignored in mode 'robot'",
    ]
    assert "ok: robot 'app'" in "\n".join(lines) and "ok: robot 'bot'" in "\n".join(lines)
    assert "bot-secret-xyz" not in "\n".join(lines)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        # nan compares false with everything, so ``value <= 0`` let it through
        ("ping_interval = nan", "ping_interval: must be positive, got nan"),
        # inf > 0: a request that may never time out passed as positive
        ("request_timeout = inf", "request_timeout: must be finite, got inf"),
    ],
)
def test_a_nan_or_infinite_setting_is_refused(
    wecom: PluginManager, tmp_path: Path, setting: str, message: str
) -> None:
    config = tmp_path / "robots.toml"
    config.write_text(
        '[robots.x]\nplatform = "wecom"\n[robots.x.settings]\nbot_id = "b"\nsecret = "s"\n'
        f'{setting}\n[robots.x.agent]\nuse = "demo"\n',
        encoding="utf-8",
    )
    code, lines = _check(config, {})
    assert code == 2, lines
    assert f"error: {config}: robots.x.settings.{message}" in lines


def test_a_reconnect_max_below_reconnect_initial_is_an_error(
    wecom: PluginManager, tmp_path: Path
) -> None:
    """``reconnect_max = 2`` with ``reconnect_initial = 5`` passed check: the backoff's cap
    was below its first delay."""
    config = tmp_path / "robots.toml"
    config.write_text(
        '[robots.x]\nplatform = "wecom"\n[robots.x.settings]\nbot_id = "b"\nsecret = "s"\n'
        'reconnect_initial = 5\nreconnect_max = 2\n[robots.x.agent]\nuse = "demo"\n',
        encoding="utf-8",
    )
    code, lines = _check(config, {})
    assert code == 2, lines
    assert [line for line in lines if line.startswith("error: ")] == [
        f"error: {config}: robots.x.settings.reconnect_max: must be at least "
        "reconnect_initial (5 s), got 2"
    ], lines
