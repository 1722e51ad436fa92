"""``imrobots check`` validates Feishu settings, callback mode's included, one line per
problem naming its field, and never prints a secret.

The platform is registered here as available (its own plugin still says planned until
the status change lands), with the plugin's factory and settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

import imrobots
from imrobots.cli import cli
from imrobots.plugins import PluginManager

pytest.importorskip("lark_oapi")


class _Available:
    @imrobots.hookimpl
    def register_platforms(self, register: Callable[[imrobots.PlatformSpec], None]) -> None:
        register(
            imrobots.PlatformSpec(
                name="feishu",
                factory="imrobots_feishu.platform:FeishuPlatform",
                settings="imrobots_feishu.platform:FeishuSettings",
                requires=("lark_oapi",),
            )
        )


@pytest.fixture
def feishu(manager: PluginManager) -> PluginManager:
    manager.register(_Available(), name="feishu-test")
    return manager


GOOD = """
[robots.cb]
platform = "feishu"
[robots.cb.settings]
app_id = "cli_a1"
app_secret = "{{FEISHU_APP_SECRET}}"
mode = "callback"
verification_token = "{{FEISHU_VERIFICATION_TOKEN}}"
encrypt_key = "{{FEISHU_ENCRYPT_KEY}}"
callback_host = "0.0.0.0"
callback_port = 9000
callback_path = "/feishu/events"
[robots.cb.agent]
use = "demo"
"""

BAD = """
[robots.cb]
platform = "feishu"
[robots.cb.settings]
app_id = "cli_a1"
app_secret = "s3cr3t-value"
mode = "callback"
encrypt_key = ""
callback_port = 70000
callback_path = "feishu"
callback_max_age = 0
domain = "http://open.feishu.cn"
[robots.cb.agent]
use = "demo"

[robots.typo]
platform = "feishu"
[robots.typo.settings]
app_id = "cli_a2"
app_secret = "x"
mode = "webhook"
[robots.typo.agent]
use = "demo"
"""

ENV = {
    "FEISHU_APP_SECRET": "app-secret-value",
    "FEISHU_VERIFICATION_TOKEN": "verification-token-value",
    "FEISHU_ENCRYPT_KEY": "encrypt-key-value",
}


def _check(path: Path, env: dict[str, str]) -> tuple[int, list[str]]:
    cleared = {key: None for key in ENV} | env
    result = CliRunner().invoke(cli, ["check", str(path)], env=cleared)  # type: ignore[arg-type]
    return result.exit_code, result.output.strip().splitlines()


def test_check_accepts_callback_mode(feishu: PluginManager, tmp_path: Path) -> None:
    config = tmp_path / "robots.toml"
    config.write_text(GOOD, encoding="utf-8")
    code, lines = _check(config, ENV)
    assert code == 0, lines
    assert not any(value in "\n".join(lines) for value in ENV.values())
    assert not [line for line in lines if line.startswith("warning: ")], lines


def test_check_warns_without_an_encrypt_key(feishu: PluginManager, tmp_path: Path) -> None:
    config = tmp_path / "robots.toml"
    config.write_text(GOOD.replace('encrypt_key = "{{FEISHU_ENCRYPT_KEY}}"\n', ""), "utf-8")
    code, lines = _check(config, ENV)
    assert code == 0, lines
    assert f"warning: {config}: robots.cb.settings.encrypt_key: not set: callbacks come " in (
        "\n".join(lines)
    )


def test_check_warns_of_callback_settings_in_long_connection_mode(
    feishu: PluginManager, tmp_path: Path
) -> None:
    """Callback settings without ``mode = "callback"`` do nothing: a warning names each,
    and the config stays valid (no secret printed)."""
    config = tmp_path / "robots.toml"
    config.write_text(GOOD.replace('mode = "callback"\n', ""), "utf-8")
    code, lines = _check(config, ENV)
    assert code == 0, lines
    warnings = [line for line in lines if line.startswith("warning: ")]
    prefix = f"warning: {config}: robots.cb.settings."
    suffix = ": belongs to mode 'callback'; ignored in mode 'long_connection'"
    assert f"{prefix}verification_token{suffix}" in warnings
    assert f"{prefix}encrypt_key{suffix}" in warnings
    assert not any(value in "\n".join(lines) for value in ENV.values())


def test_an_unknown_key_or_a_wrong_choice_does_not_hide_a_bad_domain(
    feishu: PluginManager, tmp_path: Path
) -> None:
    config = tmp_path / "robots.toml"
    config.write_text(
        GOOD.replace('mode = "callback"', 'mode = "websocket"').replace(
            'app_id = "cli_a1"', 'app_id = "cli_a1"\napp_sercet = "x"\ndomain = "open.feishu.cn"'
        ),
        "utf-8",
    )
    code, lines = _check(config, ENV)
    assert code == 2, lines
    prefix = f"error: {config}: robots.cb.settings"
    assert sorted(lines[:-1]) == sorted(
        [
            f"{prefix}: unknown key: app_sercet (did you mean app_secret?)",
            f"{prefix}.mode: expected one of 'long_connection', 'callback'",
            f"{prefix}.domain: must start with https://, got 'open.feishu.cn'",
        ]
    )
    assert lines[-1] == f"{config}: 3 errors"


def test_check_names_each_callback_problem(feishu: PluginManager, tmp_path: Path) -> None:
    config = tmp_path / "robots.toml"
    config.write_text(BAD, encoding="utf-8")
    code, lines = _check(config, {})
    assert code == 2, lines
    prefix = f"error: {config}: robots."
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [
        f"{prefix}cb.settings.domain: must use https:// for a remote host (http:// only "
        "for a loopback host: 127.0.0.0/8, ::1, localhost), got 'http://open.feishu.cn'",
        f"{prefix}cb.settings.callback_max_age: must be positive, got 0.0",
        f"{prefix}cb.settings.verification_token: required in mode 'callback' (the developer "
        "console's Verification Token, under Events & Callbacks > Encryption Strategy)",
        f"{prefix}cb.settings.encrypt_key: is empty; set the Encrypt Key or leave it out",
        f"{prefix}cb.settings.callback_port: must be 0..65535, got 70000",
        f"{prefix}cb.settings.callback_path: must start with /, got 'feishu'",
        f"{prefix}typo.settings.mode: expected one of 'long_connection', 'callback'",
    ], lines
    assert "s3cr3t-value" not in "\n".join(lines)


def test_empty_credentials_are_errors_naming_their_fields(
    feishu: PluginManager, tmp_path: Path
) -> None:
    """``app_secret = "{{FEISHU_APP_SECRET}}"`` with the variable exported empty passed
    check, and the robot failed only when Feishu refused it."""
    config = tmp_path / "robots.toml"
    config.write_text(GOOD.replace('app_id = "cli_a1"', 'app_id = " "'), encoding="utf-8")
    for secret in ("", " "):  # a secret of white space passed too
        code, lines = _check(config, {**ENV, "FEISHU_APP_SECRET": secret})
        assert code == 2, lines
        assert (
            f"error: {config}: robots.cb.settings.app_id: is empty: the app's App ID" in (lines[0])
        )
        assert f"error: {config}: robots.cb.settings.app_secret: is empty: " in lines[1]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        # nan compares false with everything, so ``value <= 0`` let it through
        ("update_interval = nan", "update_interval: must be positive, got nan"),
        # inf > 0: a request that may never time out passed as positive
        ("request_timeout = inf", "request_timeout: must be finite, got inf"),
    ],
)
def test_a_nan_or_infinite_setting_is_refused(
    feishu: PluginManager, tmp_path: Path, setting: str, message: str
) -> None:
    config = tmp_path / "robots.toml"
    config.write_text(
        '[robots.x]\nplatform = "feishu"\n[robots.x.settings]\napp_id = "cli_a"\n'
        f'app_secret = "s"\n{setting}\n[robots.x.agent]\nuse = "demo"\n',
        encoding="utf-8",
    )
    code, lines = _check(config, {})
    assert code == 2, lines
    assert f"error: {config}: robots.x.settings.{message}" in lines


def test_a_blank_callback_host_is_an_error(feishu: PluginManager, tmp_path: Path) -> None:
    """``callback_host = "{{HOST}}"`` with the variable set to nothing passed check, and the
    endpoint listened on every interface (``bind(("", port))``), logging ``callbacks at
    http://:PORT/...``, where the default is 127.0.0.1 alone."""
    config = tmp_path / "robots.toml"
    config.write_text(GOOD.replace('callback_host = "0.0.0.0"', 'callback_host = ""'), "utf-8")
    code, lines = _check(config, ENV)
    assert code == 2, lines
    assert lines == [
        f"error: {config}: robots.cb.settings.callback_host: is blank (which listens on "
        "every interface); give an address: 127.0.0.1, or 0.0.0.0 for every interface"
    ]


def test_a_reconnect_max_below_reconnect_initial_is_an_error(
    feishu: PluginManager, tmp_path: Path
) -> None:
    """``reconnect_max = 2`` with ``reconnect_initial = 5`` passed check: the backoff's cap
    was below its first delay."""
    config = tmp_path / "robots.toml"
    config.write_text(
        '[robots.x]\nplatform = "feishu"\n[robots.x.settings]\napp_id = "cli_a"\n'
        'app_secret = "s"\nreconnect_initial = 5\nreconnect_max = 2\n'
        '[robots.x.agent]\nuse = "demo"\n',
        encoding="utf-8",
    )
    code, lines = _check(config, {})
    assert code == 2, lines
    assert [line for line in lines if line.startswith("error: ")] == [
        f"error: {config}: robots.x.settings.reconnect_max: must be at least "
        "reconnect_initial (5 s), got 2"
    ], lines
